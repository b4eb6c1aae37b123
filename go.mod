module knockknock

go 1.24

require (
	github.com/jessevdk/go-flags v1.6.1
	github.com/yuin/gopher-lua v1.1.2
)

require golang.org/x/sys v0.21.0 // indirect
