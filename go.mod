module knockknock

go 1.26.0

require (
	github.com/jessevdk/go-flags v1.6.1
	github.com/yuin/gopher-lua v1.1.2
	golang.org/x/net v0.62.0
)

require golang.org/x/sys v0.49.0 // indirect
