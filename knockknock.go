// Command knockknock is a port-knocking server with Lua unlock hooks.
//
// The server watches one or more doors: named sequences of UDP and TCP ports. A client that
// knocks a door's ports in order, each within the door's timeout of the previous one, unlocks
// it: the server then calls on_unlock in a Lua hook (gopher-lua). Progress is tracked per
// source address and per door, so knockers never disturb each other. Knocks are read from bound
// UDP sockets, or, with --capture (Linux, CAP_NET_RAW), from raw sockets behind a BPF filter so
// that the knock ports answer exactly like closed ports. With --secret-file or --keys, knocks
// are authenticated: each attempt is bound to a fresh server challenge and to the address the
// server sees, and the client gets an authenticated confirmation. --knockd-config serves an
// existing knockd.conf. README.md is the reference.
//
// The file reads in the order data flows: options and configuration; the knock rules; the
// knockd.conf reader (text to doors); the tracker and bans; tokens (the authenticated wire
// format and keys); the intake that every knock passes through; platform details; the knock
// sources (bound sockets, capture) and replies; the hook runtime and the `knock` module; the
// built-in service; the client; main. Each part says what it owns. Mutable state has one owner:
// a tracker or ban shard's lock, the event queue's lock, the hook runtime's goroutine, or the
// server's lock for sources and services.
package main

import (
	"bytes"
	"cmp"
	"container/heap"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"math/bits"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
	"unsafe"

	flags "github.com/jessevdk/go-flags"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

//go:embed hooks/unlock.lua
var embeddedHook []byte

//go:embed hooks/knockd.lua
var embeddedKnockdHook []byte

const (
	defaultHookPath   = "hooks/unlock.lua"
	defaultKnockdHook = "hooks/knockd.lua"
	defaultPorts      = "123,456,789"
	defaultDoor       = "default"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// =============================================================================================
// Options and configuration
//
// Options are parsed once (go-flags; an INI file with --config first, then the command line on
// top) and validated into a config: doors, sources, keys and hook. Everything here is a pure
// function of the options and the files they name.

// globalOptions are the server options. They sit on the top-level parser so that a plain
// `knockknock -p 1,2,3` runs the server, and the subcommands share them (the client reads
// --ports and --secret-file, check validates all of them).
type globalOptions struct {
	Ports        string   `short:"p" long:"ports" value-name:"LIST" description:"the knock sequence of the one door: PORT[:tcp|:udp],... in knock order (a bare port is UDP; default 123,456,789)"`
	Doors        []string `long:"door" value-name:"NAME=LIST [timeout=DUR] [seq-timeout=DUR] [tcp-flags=FLAGS]" description:"repeatable: a named door with its own sequence and timeouts, instead of --ports"`
	Timeout      string   `short:"t" long:"timeout" default:"5s" value-name:"DUR" description:"longest gap allowed between two knocks (a bare number is seconds); the default for every door"`
	Capture      bool     `long:"capture" description:"Linux, CAP_NET_RAW: read knocks from raw sockets instead of binding the ports, so they answer like closed ports; allows TCP knocks"`
	KnockdConfig string   `long:"knockd-config" value-name:"FILE" description:"serve the doors of a knockd.conf, with knockd's meanings (implies --capture)"`
	Hook         string   `long:"hook" value-name:"FILE" description:"Lua hook (default hooks/unlock.lua, or hooks/knockd.lua with --knockd-config; when that file is absent, the embedded copy)"`
	Listen       string   `short:"l" long:"listen" value-name:"ADDR" description:"only knocks sent to this address count; the listeners and services bind it (default: all addresses, IPv4 and IPv6)"`
	HookTimeout  string   `long:"hook-timeout" default:"10s" value-name:"DUR" description:"a hook call, and anything it runs, is cancelled after this"`
	HookArgs     []string `long:"hook-arg" value-name:"KEY=VALUE" description:"repeatable; the hook reads them as strings in knock.args; a key given again takes the later value"`
	LogFormat    string   `long:"log-format" default:"text" value-name:"text|json" description:"log output format on stderr"`
	Decoys       string   `long:"decoys" value-name:"LIST" description:"extra watched ports (PORT[:tcp|:udp],...); a knock on one resets that client on every door"`
	Verbose      bool     `short:"v" long:"verbose" description:"log every knock, each rejected authenticated datagram with its reason, and once a second the dropped datagrams by reason (rate-limited)"`
	SecretFile   string   `long:"secret-file" value-name:"FILE" description:"shared key: only authenticated knocks count (mode 0600, owned by this user)"`
	Keys         string   `long:"keys" value-name:"FILE|DIR" description:"per-user keys: 'NAME KEY' lines, or a directory of key files named after their users (mode 0600)"`
	MaxSkew      string   `long:"max-skew" default:"30s" value-name:"DUR" description:"authenticated knocks: how old or new a client's hello may be"`
	MaxClients   string   `long:"max-clients" default:"65536" value-name:"N" description:"most clients with an attempt in progress tracked at once (when full, new clients are refused rather than attempts pushed out); first knocks get 6 times as many compact slots, challenges twice as many"`
	BanAfter     string   `long:"ban-after" default:"0" value-name:"N" description:"ban a source after N failed attempts within --ban-window (0: off)"`
	BanWindow    string   `long:"ban-window" default:"10m" value-name:"DUR" description:"window in which failed attempts are counted"`
	BanTime      string   `long:"ban-time" default:"1h" value-name:"DUR" description:"how long a ban lasts"`
	BanPrefix6   string   `long:"ban-prefix6" default:"64" value-name:"BITS" description:"an IPv6 ban covers the source's prefix of this length (128: the address only)"`
	Config       string   `long:"config" value-name:"FILE" no-ini:"true" description:"INI file with these options ([Application Options] section); flags override it, except --hook-arg, which adds to it"`

	portsGiven bool // --ports was given (on the command line or in the file), even empty
}

type serveCommand struct{}

type checkCommand struct{}

type knockCommand struct {
	Delay  string `short:"d" long:"delay" default:"10ms" value-name:"DUR" description:"pause between knocks"`
	Wait   string `long:"wait" default:"3s" value-name:"DUR" description:"authenticated knocks: how long to wait for the server's confirmation"`
	Expect string `long:"expect-address" value-name:"ADDR|local" description:"authenticated knocks: knock only if the server sees this address (local: this host's own), else exit 1: a relay would show another"`
	IPv4   bool   `short:"4" description:"knock over IPv4 only"`
	IPv6   bool   `short:"6" description:"knock over IPv6 only"`
	Args   struct {
		Host  string   `positional-arg-name:"HOST"`
		Ports []string `positional-arg-name:"PORT"`
	} `positional-args:"yes"`

	waitGiven, expectGiven bool // --wait, --expect-address given (on the command line or in the file)
}

type keygenCommand struct {
	User *string `long:"user" value-name:"NAME" description:"write a per-user key for --keys, and print the line to add to the server's keys file"`
	Args struct {
		File *string `positional-arg-name:"FILE"` // nil: not given
	} `positional-args:"yes"`
}

type commandLine struct {
	global  globalOptions
	serve   serveCommand
	check   checkCommand
	knock   knockCommand
	keygen  keygenCommand
	command string // "serve", "check", "knock" or "keygen"
}

// usageError is bad input from the user: one line on stderr, exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// commandInfo is what help says about a command. shared lists the server options it reads, with
// what each means to it ("": the server's description); nil: every server option.
type commandInfo struct {
	name, usage, short, long string
	shared                   []sharedOption
}

type sharedOption struct{ long, description string }

var commandInfos = []commandInfo{
	{name: "serve", usage: "knockknock [serve] [options]", short: "run the server (the default)",
		long: "Run the port-knocking server: watch the doors' ports, and call the hook when a client knocks a door's sequence."},
	{name: "knock", usage: "knockknock knock [options] HOST [PORT...]", short: "send a knock sequence",
		long: "Knock each port of the sequence (the PORT arguments, else --ports, else the one --door, else 123,456,789): a UDP datagram, or for PORT:tcp a connection attempt abandoned at once. With --secret-file, authenticate and wait for the server's confirmation.",
		shared: []sharedOption{
			{"ports", "the sequence when no PORT is given: PORT[:tcp|:udp],... in knock order"},
			{"door", "or the sequence of this one door, written as for the server"},
			{"secret-file", "knock with this key (authenticated), and wait for the server's confirmation"},
			{"config", "INI file: ports, door and secret-file under [Application Options], the options above under [knock]; flags override it"},
		}},
	{name: "check", usage: "knockknock check [options]", short: "validate the options, the doors and the hook; print them",
		long: "Validate the options, the config file (its [knock] section too) and the hook; print the effective settings and every door on stdout, then ok; warnings go to stderr. Exit 0 when valid, 2 when not."},
	{name: "keygen", usage: "knockknock keygen [--user NAME] [FILE]", short: "make a new random key",
		long:   "Print a new random key for --secret-file, or write it to FILE with mode 0600 (never overwriting). With --user NAME, write NAME's key and print the line for the server's --keys file.",
		shared: []sharedOption{}},
	{name: "help", usage: "knockknock help [COMMAND]", short: "this overview, or a command's usage and options",
		long: "Print an overview of the commands, or one command's usage and the options it reads.", shared: []sharedOption{}},
}

func commandInfoOf(name string) *commandInfo {
	for i := range commandInfos {
		if commandInfos[i].name == name {
			return &commandInfos[i]
		}
	}
	return nil
}

func newParser(cl *commandLine) *flags.Parser {
	p := flags.NewNamedParser("knockknock", flags.HelpFlag|flags.PassDoubleDash)
	p.SubcommandsOptional = true
	if _, err := p.AddGroup("Application Options", "", &cl.global); err != nil {
		panic(err) // a tag error in the structs above: a programming error
	}
	for _, c := range []struct {
		name string
		data any
	}{{"serve", &cl.serve}, {"check", &cl.check}, {"knock", &cl.knock}, {"keygen", &cl.keygen}} {
		info := commandInfoOf(c.name)
		if _, err := p.AddCommand(c.name, info.short, info.long, c.data); err != nil {
			panic(err)
		}
	}
	return p
}

// helpRequest is returned by parseCommandLine when help was asked for; it carries the text.
type helpRequest struct{ text string }

func (h *helpRequest) Error() string { return h.text }

// parseCommandLine parses args twice when --config is given: the INI file first, then the
// command line again on top, so that flags override the file; --hook-arg values add to the
// file's. `help [COMMAND]` and --help return a helpRequest.
func parseCommandLine(args []string) (*commandLine, error) {
	if len(args) > 0 && args[0] == "help" {
		return nil, helpCommand(args[1:])
	}
	cl := &commandLine{}
	p := newParser(cl)
	rest, err := p.ParseArgs(args)
	if err != nil {
		return nil, flagsError(p, err)
	}
	if err := checkSharedOptions(p); err != nil {
		return nil, err
	}
	if cl.global.Config != "" {
		path, cmdHookArgs := cl.global.Config, cl.global.HookArgs
		cl = &commandLine{}
		p = newParser(cl)
		text, err := readSmallFile(path, maxConfigFile)
		if err != nil {
			return nil, usagef("config %v", err)
		}
		if err := checkConfigFile(p, path, string(text)); err != nil {
			return nil, err
		}
		if err := flags.NewIniParser(p).Parse(bytes.NewReader(text)); err != nil {
			return nil, iniError(path, err)
		}
		fileHookArgs := slices.Clone(cl.global.HookArgs)
		if rest, err = p.ParseArgs(args); err != nil {
			return nil, flagsError(p, err)
		}
		if len(cmdHookArgs) > 0 {
			cl.global.HookArgs = append(fileHookArgs, cmdHookArgs...)
		}
	}
	cl.command = "serve"
	if p.Active != nil {
		cl.command = p.Active.Name
	}
	switch {
	case len(rest) > 0 && p.Active == nil:
		return nil, usagef("unknown command %q (commands: serve, knock, check, keygen, help)", rest[0])
	case len(rest) > 0:
		return nil, usagef("unexpected argument %q (see knockknock help %s)", rest[0], cl.command)
	}
	cl.global.portsGiven = p.FindOptionByLongName("ports").IsSet()
	given := func(o *flags.Option) bool { return o.IsSet() && !o.IsSetDefault() }
	knock := p.Find("knock")
	cl.knock.waitGiven, cl.knock.expectGiven = given(knock.FindOptionByLongName("wait")), given(knock.FindOptionByLongName("expect-address"))
	return cl, nil
}

// helpCommand is `knockknock help [COMMAND]`, as in the go tool.
func helpCommand(args []string) error {
	p := newParser(&commandLine{})
	switch {
	case len(args) == 0:
		return &helpRequest{helpText(p, "")}
	case len(args) == 1 && (args[0] == "-h" || args[0] == "--help"):
		return &helpRequest{helpText(p, "help")}
	case len(args) == 1 && commandInfoOf(args[0]) != nil:
		return &helpRequest{helpText(p, args[0])}
	case len(args) == 1:
		return usagef("help %s: unknown command; the commands are serve, knock, check, keygen and help", args[0])
	}
	return usagef("help takes one command at most, such as: knockknock help knock")
}

// checkSharedOptions refuses a server option given on the command line to a command that does
// not read it (`knock --timeout 3` would be silently ignored).
func checkSharedOptions(p *flags.Parser) error {
	if p.Active == nil {
		return nil
	}
	info := commandInfoOf(p.Active.Name)
	if info == nil || info.shared == nil {
		return nil
	}
	var reads []string
	for _, o := range info.shared {
		reads = append(reads, "--"+o.long)
	}
	for _, o := range p.Group.Find("Application Options").Options() {
		if !o.IsSet() || o.IsSetDefault() || slices.Contains(reads, "--"+o.LongName) {
			continue
		}
		if len(reads) == 0 {
			return usagef("%s takes no server options: --%s does not apply to it (see knockknock help %s)", info.name, o.LongName, info.name)
		}
		return usagef("--%s is a server option: %s reads only %s and %s of them (see knockknock help %s)", o.LongName, info.name,
			strings.Join(reads[:len(reads)-1], ", "), reads[len(reads)-1], info.name)
	}
	return nil
}

// helpText is an overview of the commands (name ""), or one command's usage and the options it
// reads: its own first, then the server options it shares.
func helpText(p *flags.Parser, name string) string {
	var b strings.Builder
	if name == "" {
		b.WriteString("knockknock: a port-knocking server with Lua unlock hooks.\n\nUsage:\n")
		for _, c := range commandInfos {
			fmt.Fprintf(&b, "  %-43s %s\n", c.usage, c.short)
		}
		b.WriteString("\nRun \"knockknock help COMMAND\" for a command's options (serve: the server's).\n")
		return b.String()
	}
	info := commandInfoOf(name)
	fmt.Fprintf(&b, "Usage:\n  %s\n\n%s\n\nOptions:\n", info.usage, wrapText(info.long, helpWidth, ""))
	var opts [][2]string
	if cmd := p.Find(name); cmd != nil {
		for _, o := range cmd.Options() {
			opts = append(opts, optionHelp(o, o.Description))
		}
	}
	for _, o := range p.Group.Find("Application Options").Options() {
		if info.shared == nil {
			opts = append(opts, optionHelp(o, o.Description))
		}
		for _, s := range info.shared {
			if s.long == o.LongName {
				opts = append(opts, optionHelp(o, cmp.Or(s.description, o.Description)))
			}
		}
	}
	opts = append(opts, [2]string{"-h, --help", "this help"})
	const column = 30
	indent := strings.Repeat(" ", column)
	for _, o := range opts {
		text := wrapText(o[1], helpWidth, indent)
		if len(o[0])+2 < column-1 {
			fmt.Fprintf(&b, "  %-*s%s\n", column-2, o[0], text[column:])
		} else {
			fmt.Fprintf(&b, "  %s\n%s\n", o[0], text)
		}
	}
	return b.String()
}

const helpWidth = 100

// optionHelp is an option's names and value, and its description with its default.
func optionHelp(o *flags.Option, description string) [2]string {
	names := "    "
	if o.ShortName != 0 {
		names = "-" + string(o.ShortName)
		if o.LongName != "" {
			names += ", "
		}
	}
	if o.LongName != "" {
		names += "--" + o.LongName
	}
	if o.ValueName != "" {
		names += " " + o.ValueName
	}
	if len(o.Default) > 0 {
		description += " (default " + strings.Join(o.Default, ",") + ")"
	}
	return [2]string{names, description}
}

// wrapText breaks s into lines of at most width characters, each starting with indent.
func wrapText(s string, width int, indent string) string {
	var b strings.Builder
	line := indent
	for _, w := range strings.Fields(s) {
		if len(line) > len(indent) && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	b.WriteString(line)
	return b.String()
}

func flagsError(p *flags.Parser, err error) error {
	name := ""
	if p.Active != nil {
		name = p.Active.Name
	}
	var ferr *flags.Error
	if errors.As(err, &ferr) && ferr.Type == flags.ErrHelp {
		return &helpRequest{helpText(p, name)}
	}
	return usagef("%s (see knockknock help %s)", oneLine(err.Error()), cmp.Or(name, "serve"))
}

// iniError is what go-flags finds wrong with a config file that checkConfigFile passed.
func iniError(path string, err error) error {
	var ierr *flags.IniError
	if errors.As(err, &ierr) {
		return usagef("config %s line %d: %s", path, ierr.LineNumber, printable(oneLine(ierr.Message)))
	}
	return usagef("config %s: %s", path, printable(oneLine(err.Error())))
}

const (
	maxConfigFile = 1 << 20 // bytes
	maxHookFile   = 4 << 20
)

// iniEntry is one KEY = VALUE line of a config file, or a section's header.
type iniEntry struct {
	line                int
	section, key, value string // section "": before any section header
	header              bool
}

// scanINI splits a config file into its section headers and KEY = VALUE lines as go-flags reads
// them: blank lines and lines starting with ';' or '#' are skipped, "[NAME]" starts a section,
// and a value in double quotes is unquoted. The error names the line.
func scanINI(text string) ([]iniEntry, error) {
	var entries []iniEntry
	section := ""
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == ';' || line[0] == '#':
			continue
		case line[0] == '[':
			name, ok := strings.CutSuffix(line[1:], "]")
			if section = strings.TrimSpace(name); !ok || section == "" {
				return nil, fmt.Errorf("line %d: malformed section header %q: want [NAME]", n+1, line)
			}
			entries = append(entries, iniEntry{line: n + 1, section: section, header: true})
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q: want KEY = VALUE", n+1, line)
		}
		e := iniEntry{line: n + 1, section: section, key: strings.TrimSpace(key), value: strings.TrimSpace(value)}
		if strings.HasPrefix(e.value, `"`) {
			v, err := strconv.Unquote(e.value)
			if err != nil {
				return nil, fmt.Errorf("line %d: malformed quoted value %q", n+1, e.value)
			}
			e.value = v
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// checkConfigFile checks a config file's lines before go-flags sets the options from them, so
// that each error names its line: the sections and keys; a key given twice for an option that
// takes one value; exactly true or false for a switch; the hook-arg values (which the command
// line's add to); and the client's [knock] values. The server's other values are checked later,
// with the command line's.
func checkConfigFile(p *flags.Parser, path, text string) error {
	entries, err := scanINI(text)
	if err != nil {
		return usagef("config %s %v", path, err)
	}
	server, client := p.Group.Find("Application Options").Options(), p.Find("knock").Options()
	first := map[*flags.Option]int{}
	for _, e := range entries {
		fail := func(format string, args ...any) error {
			return usagef("config %s line %d: %s", path, e.line, fmt.Sprintf(format, args...))
		}
		var opt *flags.Option
		switch e.section {
		case "": // go-flags looks in every group
			opt = cmp.Or(iniOption(server, e.key), iniOption(client, e.key))
		case "Application Options":
			opt = iniOption(server, e.key)
		case "knock":
			opt = iniOption(client, e.key)
		default:
			return fail("unknown section [%s] (sections: [Application Options], [knock])", printable(e.section))
		}
		if e.header {
			continue
		}
		if opt == nil {
			return fail("unknown option: %s", printable(e.key))
		}
		if _, repeatable := opt.Value().([]string); !repeatable {
			if n, ok := first[opt]; ok {
				return fail("%s is given again (first on line %d): it takes one value", e.key, n)
			}
			first[opt] = e.line
		}
		var bad error
		switch _, isBool := opt.Value().(bool); {
		case isBool && e.value != "true" && e.value != "false":
			bad = errors.New("want true or false")
		case opt.LongName == "hook-arg":
			_, _, bad = parseHookArg(e.value)
		case slices.Contains(client, opt) && !isBool:
			bad = setKnockOption(&knockPlan{}, opt.LongName, e.value)
		}
		if bad != nil {
			return fail("invalid %s %q: %v", e.key, e.value, bad)
		}
	}
	return nil
}

// iniOption finds a config file's key among options as go-flags does: by long name, field name
// or short name; --config is no key.
func iniOption(options []*flags.Option, key string) *flags.Option {
	for _, o := range options {
		f := o.Field()
		if f.Tag.Get("no-ini") == "" && (key == o.LongName || key == f.Name || o.ShortName != 0 && key == string(o.ShortName)) {
			return o
		}
	}
	return nil
}

// printable is s as it is when every character is printable, else quoted: a config file's text
// is echoed without its control bytes.
func printable(s string) string {
	if q := strconv.QuoteToGraphic(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// config holds the validated settings the server and the client run with.
type config struct {
	doors       []door
	decoys      []portSpec
	capture     bool
	listen      []netip.Addr // empty: all addresses
	hookPath    string       // the file, or "" for an embedded hook
	hookName    string       // as errors and logs name it
	hookSource  []byte
	hookTimeout time.Duration
	hookArgs    [][2]string // in the order given
	logFormat   string
	verbose     bool
	keys        *keyring // nil: plain knocks
	keySource   keySource
	maxSkew     time.Duration
	maxClients  int
	banAfter    int
	banWindow   time.Duration
	banTime     time.Duration
	banPrefix6  int
	knockd      *knockdConfig // --knockd-config: its [options] and doors
	knockdPath  string
	warnings    []string // said by check and logged at start
}

// keySource is where the keys came from, so that SIGHUP can read them again.
type keySource struct {
	flag, path string // "--secret-file" or "--keys"; "" for none
}

const (
	maxSequenceLen = 64
	maxDecoys      = 256
	maxDoors       = 256
	maxDoorName    = 32
	maxTimeout     = 24 * time.Hour
	maxWatched     = 1024 // distinct watched ports, over every door and the decoys
)

// buildConfig validates every option; the error names the option, the bad value and what is
// allowed, in one line.
func buildConfig(o *globalOptions) (*config, error) {
	c := &config{verbose: o.Verbose, logFormat: o.LogFormat, capture: o.Capture}
	durations := []struct {
		name     string
		value    string
		dst      *time.Duration
		min, max time.Duration
	}{
		{"--timeout", o.Timeout, new(time.Duration), time.Millisecond, maxTimeout},
		{"--hook-timeout", o.HookTimeout, &c.hookTimeout, time.Millisecond, maxTimeout},
		{"--max-skew", o.MaxSkew, &c.maxSkew, time.Second, time.Hour},
		{"--ban-window", o.BanWindow, &c.banWindow, time.Second, 30 * 24 * time.Hour},
		{"--ban-time", o.BanTime, &c.banTime, time.Second, 365 * 24 * time.Hour},
	}
	for _, d := range durations {
		v, err := parseDuration(d.value)
		if err == nil && (v < d.min || v > d.max) {
			err = fmt.Errorf("must be between %v and %v", d.min, d.max)
		}
		if err != nil {
			return nil, usagef("invalid %s %q: %v", d.name, d.value, err)
		}
		*d.dst = v
	}
	timeout := *durations[0].dst
	var err error
	if c.maxClients, err = parseCount(o.MaxClients, 1, 1<<24); err != nil {
		return nil, usagef("invalid --max-clients %q: %v", o.MaxClients, err)
	}
	if c.banAfter, err = parseCount(o.BanAfter, 0, 1000); err != nil {
		return nil, usagef("invalid --ban-after %q: %v", o.BanAfter, err)
	}
	if c.banPrefix6, err = parseCount(o.BanPrefix6, 1, 128); err != nil {
		return nil, usagef("invalid --ban-prefix6 %q: %v", o.BanPrefix6, err)
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		return nil, usagef("invalid --log-format %q: use text or json", o.LogFormat)
	}
	if o.Listen != "" {
		a, err := netip.ParseAddr(strings.Trim(o.Listen, "[]"))
		if err != nil || a.Zone() != "" {
			return nil, usagef("invalid --listen %q: want an IP address such as 127.0.0.1 or ::1", o.Listen)
		}
		c.listen = []netip.Addr{a.Unmap()}
	}
	for _, kv := range o.HookArgs {
		k, v, err := parseHookArg(kv)
		if err != nil {
			return nil, usagef("invalid --hook-arg %q: %v", kv, err)
		}
		if i := slices.IndexFunc(c.hookArgs, func(a [2]string) bool { return a[0] == k }); i >= 0 {
			c.hookArgs[i][1] = v // given again: the later value wins (the command line's over the file's)
			continue
		}
		c.hookArgs = append(c.hookArgs, [2]string{k, v})
	}
	if err := c.buildDoors(o, timeout); err != nil {
		return nil, err
	}
	if c.decoys, err = parsePortSpecs(o.Decoys, protoUDP); err != nil {
		return nil, usagef("invalid --decoys %q: %v", o.Decoys, err)
	}
	if len(c.decoys) > maxDecoys {
		return nil, usagef("invalid --decoys %q: at most %d ports", o.Decoys, maxDecoys)
	}
	switch {
	case o.SecretFile != "" && o.Keys != "":
		return nil, usagef("--secret-file and --keys exclude each other: one shared key, or one key per user")
	case o.SecretFile != "":
		c.keySource = keySource{"--secret-file", o.SecretFile}
	case o.Keys != "":
		c.keySource = keySource{"--keys", o.Keys}
	}
	if c.keySource.flag != "" {
		if c.keys, err = loadKeys(c.keySource); err != nil {
			return nil, usagef("invalid %s: %v", c.keySource.flag, err)
		}
		for _, d := range c.doors {
			for _, p := range d.seq {
				if p.proto == protoTCP {
					return nil, usagef("door %s: authenticated knocks are UDP datagrams: %s cannot carry a token (use udp ports with %s)", d.name, p, c.keySource.flag)
				}
			}
			if d.oneTime != "" {
				return nil, usagef("door %s: one-time sequences and %s exclude each other (authenticated knocks cannot be replayed anyway)", d.name, c.keySource.flag)
			}
		}
	}
	if err := c.checkPorts(); err != nil {
		return nil, err
	}
	hook := o.Hook
	if hook == "" {
		hook = defaultHookPath
		if c.knockd != nil {
			hook = defaultKnockdHook
		}
	}
	if err := c.loadHook(hook); err != nil {
		return nil, err
	}
	return c, nil
}

// buildDoors makes the doors: from --knockd-config, from --door, or the one door of --ports.
func (c *config) buildDoors(o *globalOptions, timeout time.Duration) error {
	switch {
	case o.KnockdConfig != "" && (len(o.Doors) > 0 || o.portsGiven):
		return usagef("--knockd-config brings its own doors: leave out --ports and --door")
	case len(o.Doors) > 0 && o.portsGiven:
		return usagef("use either --ports (one door) or --door (named doors), not both")
	case o.KnockdConfig != "":
		text, err := readSmallFile(o.KnockdConfig, 1<<20)
		if err != nil {
			return usagef("invalid --knockd-config: %v", err)
		}
		kc, err := parseKnockdConfig(string(text))
		if err != nil {
			return usagef("knockd config %s: %v", o.KnockdConfig, err)
		}
		if len(kc.doors) == 0 {
			return usagef("knockd config %s: no doors: add a section such as [openSSH] with a sequence", o.KnockdConfig)
		}
		c.knockd, c.knockdPath, c.capture = kc, o.KnockdConfig, true
		for _, d := range kc.doors {
			if d.oneTime != "" {
				lines, err := loadOneTimeSequences(d.oneTime)
				if err != nil {
					return usagef("knockd config %s: door %s: %v", o.KnockdConfig, d.name, err)
				}
				d.seq = lines[0].seq
				for _, l := range lines[1:] {
					d.spare = append(d.spare, l.seq...)
				}
			}
			c.doors = append(c.doors, d)
		}
	case len(o.Doors) > 0:
		for _, spec := range o.Doors {
			d, err := parseDoorSpec(spec, timeout)
			if err != nil {
				return usagef("invalid --door %q: %v", spec, err)
			}
			c.doors = append(c.doors, d)
		}
	default:
		ports := o.Ports
		if !o.portsGiven && ports == "" {
			ports = defaultPorts
		}
		seq, err := parseSequence(ports)
		if err != nil {
			return usagef("invalid --ports %q: %v", o.Ports, err)
		}
		c.doors = []door{{name: defaultDoor, seq: seq, timeout: timeout, tcpFlags: defaultTCPFlags}}
	}
	if len(c.doors) > maxDoors {
		return usagef("at most %d doors", maxDoors)
	}
	return nil
}

// parseDoorSpec parses a --door value: NAME=LIST followed by optional KEY=VALUE fields.
func parseDoorSpec(spec string, timeout time.Duration) (door, error) {
	d := door{timeout: timeout, tcpFlags: defaultTCPFlags}
	fields := strings.Fields(spec)
	if len(fields) == 0 {
		return d, errors.New("want NAME=PORTS [timeout=DUR] [seq-timeout=DUR] [tcp-flags=FLAGS]")
	}
	name, list, ok := strings.Cut(fields[0], "=")
	if !ok || list == "" {
		return d, errors.New("want NAME=PORTS, such as ssh=7000:tcp,8000,9000")
	}
	if err := checkDoorName(name); err != nil {
		return d, err
	}
	d.name = name
	var err error
	if d.seq, err = parsePortSpecs(list, protoUDP); err != nil {
		return d, err
	}
	if len(d.seq) == 0 || len(d.seq) > maxSequenceLen {
		return d, fmt.Errorf("a sequence has 1 to %d ports", maxSequenceLen)
	}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return d, fmt.Errorf("%q: want KEY=VALUE (timeout, seq-timeout or tcp-flags)", f)
		}
		switch k {
		case "timeout", "seq-timeout":
			dur, err := parseDuration(v)
			if err == nil && (dur < time.Millisecond || dur > maxTimeout) {
				err = fmt.Errorf("must be between %v and %v", time.Millisecond, maxTimeout)
			}
			if err != nil {
				return d, fmt.Errorf("%s %q: %v", k, v, err)
			}
			if k == "timeout" {
				d.timeout = dur
			} else {
				d.seqTimeout = dur
			}
		case "tcp-flags":
			if d.tcpFlags, err = parseTCPFlags(v); err != nil {
				return d, err
			}
		default:
			return d, fmt.Errorf("unknown field %q: use timeout, seq-timeout or tcp-flags", k)
		}
	}
	return d, nil
}

// checkDoorName keeps names usable as Lua table keys, log values and on the wire.
func checkDoorName(name string) error {
	if name == "" || len(name) > maxDoorName {
		return fmt.Errorf("a door name has 1 to %d characters", maxDoorName)
	}
	for _, r := range name {
		if !(r == '_' || r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("door name %q: use letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// checkPorts validates the doors and decoys together: unique names, no decoy that is a knock
// port, TCP only with capture, a bounded number of watched ports. It records the warnings that
// check prints: sequences a port scan completes, and doors that overlap.
func (c *config) checkPorts() error {
	names := map[string]bool{}
	for _, d := range c.doors {
		lower := strings.ToLower(d.name)
		if names[lower] {
			return usagef("door %q is defined twice", d.name)
		}
		names[lower] = true
	}
	watched := map[portSpec]bool{}
	for _, d := range c.doors {
		for _, p := range slices.Concat(d.seq, d.spare) {
			watched[p] = true
		}
	}
	for _, p := range c.decoys {
		if watched[p] {
			return usagef("invalid --decoys: %s is also a knock port", p)
		}
	}
	for _, p := range c.decoys {
		watched[p] = true
	}
	if len(watched) > maxWatched {
		return usagef("%d distinct ports watched: at most %d", len(watched), maxWatched)
	}
	if !c.capture {
		for p := range watched {
			if p.proto == protoTCP {
				return usagef("%s is a TCP knock: TCP knocks need --capture (Linux, root or CAP_NET_RAW), since a bound TCP port would accept connections", p)
			}
		}
	}
	for i, a := range c.doors {
		if msg := scanWarning(a.seq, c.decoys); msg != "" && c.keys == nil { // a scan cannot forge tokens
			c.warnings = append(c.warnings, fmt.Sprintf("door %s: %s", a.name, msg))
		}
		for _, b := range c.doors[i+1:] {
			switch {
			case a.target == b.target && equalSeq(a.seq, b.seq):
				return usagef("doors %s and %s have the same sequence %s: a knock would open both; give one another sequence or a different target", a.name, b.name, formatSpecs(a.seq))
			case a.target == b.target && isPrefix(a.seq, b.seq):
				c.warnings = append(c.warnings, fmt.Sprintf("door %s's sequence is a prefix of door %s's: knocking %s also opens %s", a.name, b.name, b.name, a.name))
			case a.target == b.target && isPrefix(b.seq, a.seq):
				c.warnings = append(c.warnings, fmt.Sprintf("door %s's sequence is a prefix of door %s's: knocking %s also opens %s", b.name, a.name, a.name, b.name))
			}
		}
	}
	return nil
}

func equalSeq(a, b []portSpec) bool {
	return len(a) == len(b) && isPrefix(a, b)
}

func isPrefix(a, b []portSpec) bool {
	if len(a) > len(b) || len(a) == 0 {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// parseSequence parses a knock sequence: a port list of 1 to maxSequenceLen ports, a bare port
// UDP. An empty list is an error wherever a sequence is given.
func parseSequence(s string) ([]portSpec, error) {
	seq, err := parsePortSpecs(s, protoUDP)
	switch {
	case err != nil:
		return nil, err
	case len(seq) == 0:
		return nil, errors.New("the knock sequence needs at least one port")
	case len(seq) > maxSequenceLen:
		return nil, fmt.Errorf("at most %d ports", maxSequenceLen)
	}
	return seq, nil
}

// parsePortSpecs parses "7000:tcp,8000:udp,9000": ports 1-65535, each optionally ":tcp" or
// ":udp" (case-insensitive); a bare port takes the protocol bare. Spaces around items are
// allowed. An empty string is an empty list.
func parsePortSpecs(s string, bare proto) ([]portSpec, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	if len(items) > maxWatched {
		return nil, errors.New("too many ports")
	}
	specs := make([]portSpec, 0, len(items))
	for _, item := range items {
		item = strings.TrimSpace(item)
		num, name, hasProto := strings.Cut(item, ":")
		spec := portSpec{proto: bare}
		if hasProto {
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "tcp":
				spec.proto = protoTCP
			case "udp":
				spec.proto = protoUDP
			default:
				return nil, fmt.Errorf("%q: the protocol must be tcp or udp", item)
			}
		}
		p, err := parsePort(strings.TrimSpace(num))
		if err != nil {
			return nil, err
		}
		spec.port = p
		specs = append(specs, spec)
	}
	return specs, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("empty item in the port list")
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range 1-65535", s)
	}
	return uint16(n), nil
}

// parseDuration accepts Go durations ("5s", "1m30s", "250ms") and bare numbers of seconds
// ("5", "0.5").
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty duration")
	}
	if strings.HasPrefix(s, "-") {
		return 0, errors.New("must not be negative")
	}
	if isDecimal(s) {
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil || secs > float64(math.MaxInt64/int64(time.Second)) {
			return 0, errors.New("number of seconds out of range")
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration (examples: 5s, 1.5, 250ms, 2m)")
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

// isDecimal reports whether s is digits with at most one dot: what "a bare number" means here
// (ParseFloat alone would also take "NaN", "Inf", "1e9" and hex).
func isDecimal(s string) bool {
	dots, digits := 0, 0
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digits++
		case r == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

func parseCount(s string, min, max int) (int, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < int64(min) || n > int64(max) {
		return 0, fmt.Errorf("want a whole number from %d to %d", min, max)
	}
	return int(n), nil
}

// parseHookArg splits KEY=VALUE. Keys are identifiers so that hooks can write knock.args.key.
func parseHookArg(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", errors.New("want KEY=VALUE")
	}
	if key == "" {
		return "", "", errors.New("empty key")
	}
	for i, r := range key {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return "", "", fmt.Errorf("key %q: use letters, digits and _, not starting with a digit", key)
		}
	}
	if !utf8Valid(value) {
		return "", "", errors.New("value is not valid UTF-8")
	}
	return key, value, nil
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// loadHook reads the hook so that a bad hook is a usage error before anything binds: a regular
// file of at most maxHookFile bytes. The default hooks fall back to their embedded copies when
// the file is absent.
func (c *config) loadHook(path string) error {
	src, err := readSmallFile(path, maxHookFile)
	switch {
	case err == nil:
		c.hookPath, c.hookName, c.hookSource = path, path, src
	case errors.Is(err, os.ErrNotExist) && path == defaultHookPath:
		c.hookName, c.hookSource = "embedded:"+defaultHookPath, embeddedHook
	case errors.Is(err, os.ErrNotExist) && path == defaultKnockdHook:
		c.hookName, c.hookSource = "embedded:"+defaultKnockdHook, embeddedKnockdHook
	default:
		return usagef("hook %v", err)
	}
	return nil
}

// watchedPorts lists each watched port once: every door's sequence in order, then the decoys.
func (c *config) watchedPorts() []portSpec {
	var ports []portSpec
	seen := map[portSpec]bool{}
	add := func(p portSpec) {
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	for _, d := range c.doors {
		for _, p := range slices.Concat(d.seq, d.spare) {
			add(p)
		}
	}
	for _, p := range c.decoys {
		add(p)
	}
	return ports
}

func formatSpecs(ports []portSpec) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// readSmallFile reads a configuration file of at most limit bytes, refusing what is not a
// regular file (a FIFO or device is never waited on).
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, errors.Unwrap(err))
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fileKind(info.Mode()))
	}
	if info.Size() > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not regular"
}

// =============================================================================================
// Knock rules
//
// Pure functions and plain values: what a door is, and what one knock does to one client's
// progress on one door. The tracker applies them; tests apply them directly.

// proto is a knock's transport protocol.
type proto uint8

const (
	protoUDP proto = iota
	protoTCP
)

func (p proto) String() string {
	if p == protoTCP {
		return "tcp"
	}
	return "udp"
}

// portSpec is one knock: a port and its protocol.
type portSpec struct {
	port  uint16
	proto proto
}

func (p portSpec) String() string { return strconv.Itoa(int(p.port)) + ":" + p.proto.String() }

// TCP header flag bits (byte 13 of the TCP header).
const (
	tcpFIN uint8 = 0x01
	tcpSYN uint8 = 0x02
	tcpRST uint8 = 0x04
	tcpPSH uint8 = 0x08
	tcpACK uint8 = 0x10
	tcpURG uint8 = 0x20
)

var tcpFlagNames = []struct {
	name string
	bit  uint8
}{{"fin", tcpFIN}, {"syn", tcpSYN}, {"rst", tcpRST}, {"psh", tcpPSH}, {"ack", tcpACK}, {"urg", tcpURG}}

// tcpFlagRule: a TCP segment counts as a knock when it has every flag in set and none in
// clear; other TCP segments are ignored (they neither advance nor reset anything).
type tcpFlagRule struct{ set, clear uint8 }

// defaultTCPFlags is a TCP knock when nothing says otherwise: a SYN without ACK, so that the
// segments of established connections, ACKs and RSTs never count.
var defaultTCPFlags = tcpFlagRule{set: tcpSYN, clear: tcpACK}

func (r tcpFlagRule) match(flags uint8) bool { return flags&r.set == r.set && flags&r.clear == 0 }

func (r tcpFlagRule) String() string {
	var s []string
	for _, f := range tcpFlagNames {
		if r.set&f.bit != 0 {
			s = append(s, f.name)
		}
	}
	for _, f := range tcpFlagNames {
		if r.clear&f.bit != 0 {
			s = append(s, "!"+f.name)
		}
	}
	return strings.Join(s, ",")
}

// doorAction is what knockd.conf says to run for a door: commands run through /bin/sh -c
// with %IP% replaced by the client's address.
type doorAction struct {
	start, start6 string // start6 == start when the file gives no *_6 variant
	hasStart6     bool   // start_command_6 (or command_6) was given, possibly empty
	stop, stop6   string
	hasStop6      bool
	cmdTimeout    time.Duration // between start and stop
}

// door is one named knock sequence and what it opens.
type door struct {
	name       string
	seq        []portSpec
	timeout    time.Duration // longest gap between two knocks
	seqTimeout time.Duration // longest time for the whole sequence; 0: no limit
	tcpFlags   tcpFlagRule
	target     netip.Addr // knocks count only when sent to this address; invalid: any
	oneTime    string     // knockd's one_time_sequences file, or ""
	spare      []portSpec // the ports of its later one-time sequences: watched from the start
	action     doorAction
	line       int // the line of the knockd.conf where the door starts
}

type failReason uint8

const (
	reasonNone failReason = iota
	reasonWrongPort
	reasonTimeout
	reasonDecoy
	reasonBanned
)

var reasonNames = [...]string{"", "wrong_port", "timeout", "decoy", "banned"}

func (r failReason) String() string { return reasonNames[r] }

type verdict uint8

const (
	verdictIgnored  verdict = iota // not a knock for this door, or a retransmission
	verdictAdvanced                // the expected port: one step further
	verdictUnlocked                // the final port: the sequence is complete
	verdictRejected                // a wrong port that does not start a new attempt
)

// progress is one client's position in one door's sequence.
type progress struct {
	first    int64    // when the attempt's first knock arrived (unix ns)
	last     int64    // when the previous counted knock arrived
	step     uint8    // ports matched so far
	lastPort portSpec // the port of the previous knock (last is 0 before the first)
}

// pendingKnock is a knock as the tracker handles it: a plain value, no pointers. Client records
// keep their pending knocks packed (see pendingSlots).
type pendingKnock struct {
	ts      int64 // when the kernel received it (unix ns)
	later   int64 // when the latest duplicate merged into it was received; 0: none
	port    uint16
	srcPort uint16
	flags   uint8 // TCP flags
	meta    uint8 // bit 7: settled (a compact first knock whose effect was applied); bit 6: TCP; bits 0-5: target
}

const (
	metaSettled = 0x80
	metaTCP     = 0x40
	metaTarget  = 0x3f
	maxTargets  = metaTarget // distinct door targets
)

func newPending(ts int64, p portSpec, flags uint8, srcPort uint16, target uint8) pendingKnock {
	meta := target & metaTarget
	if p.proto == protoTCP {
		meta |= metaTCP
	}
	return pendingKnock{ts: ts, port: p.port, srcPort: srcPort, flags: flags, meta: meta}
}

func (k *pendingKnock) proto() proto {
	if k.meta&metaTCP != 0 {
		return protoTCP
	}
	return protoUDP
}

func (k *pendingKnock) spec() portSpec { return portSpec{k.port, k.proto()} }

// target is the index+1 of the door target it was sent to, or 0.
func (k *pendingKnock) target() uint8 { return k.meta & metaTarget }

func (k *pendingKnock) settled() bool { return k.meta&metaSettled != 0 }

// latest is when its latest copy was received.
func (k *pendingKnock) latest() int64 { return max(k.ts, k.later) }

// mergeCopy records a duplicate received at ts, before or after this knock: the knock keeps
// the earlier time, and remembers the latest, so that a knock that turns out to lie between
// them can put a copy back after itself (see tracker.add).
func (k *pendingKnock) mergeCopy(ts int64, srcPort uint16) {
	latest := max(k.later, k.ts, ts)
	if ts < k.ts {
		k.ts, k.srcPort = ts, srcPort
	}
	k.later = 0
	if latest > k.ts {
		k.later = latest
	}
}

// pendingSlots are a client's knocks not yet settled, sorted by receive time, packed field by
// field: 72 bytes for four, where an array of pendingKnock would take 96. A merged duplicate's
// time is kept as an offset: copies are at most a second apart.
type pendingSlots struct {
	ts    [pendingMax]int64
	later [pendingMax]uint32 // ns after ts; 0: none
	port  [pendingMax]uint16
	src   [pendingMax]uint16
	flags [pendingMax]uint8
	meta  [pendingMax]uint8
}

func (p *pendingSlots) get(i int) pendingKnock {
	k := pendingKnock{ts: p.ts[i], port: p.port[i], srcPort: p.src[i], flags: p.flags[i], meta: p.meta[i]}
	if p.later[i] != 0 {
		k.later = k.ts + int64(p.later[i])
	}
	return k
}

func (p *pendingSlots) set(i int, k pendingKnock) {
	p.ts[i], p.port[i], p.src[i], p.flags[i], p.meta[i], p.later[i] = k.ts, k.port, k.srcPort, k.flags, k.meta, 0
	if d := k.later - k.ts; k.later != 0 && d > 0 {
		p.later[i] = uint32(min(d, math.MaxUint32))
	}
}

// insert puts k at i, moving the n knocks from i on up one place.
func (p *pendingSlots) insert(i, n int, k pendingKnock) {
	for j := n; j > i; j-- {
		p.set(j, p.get(j-1))
	}
	p.set(i, k)
}

// latest is when the latest copy of knock i was received.
func (p *pendingSlots) latest(i int) int64 { return p.ts[i] + int64(p.later[i]) }

// shift removes the first of n knocks and returns it.
func (p *pendingSlots) shift(n int) pendingKnock {
	k := p.get(0)
	for j := 1; j < n; j++ {
		p.set(j-1, p.get(j))
	}
	return k
}

// rules are one door's semantics, applied to one client's knocks in time order.
type rules struct {
	seq        []portSpec
	timeout    int64 // ns
	seqTimeout int64 // ns, 0: none
	retransmit int64 // ns: a repeat of the last port within this is a duplicate datagram
	flags      tcpFlagRule
	target     uint8 // 0: any destination; else the index+1 of the door's target
	decoys     []portSpec
	spent      *atomic.Bool // a one-time door, open once until its next sequence is set
}

func newRules(d door, target uint8, decoys []portSpec) rules {
	r := rules{
		seq:        d.seq,
		timeout:    int64(d.timeout),
		seqTimeout: int64(d.seqTimeout),
		retransmit: int64(min(time.Second, d.timeout)),
		flags:      d.tcpFlags,
		target:     target,
		decoys:     decoys,
	}
	if d.oneTime != "" {
		r.spent = new(atomic.Bool)
	}
	return r
}

// counts reports whether a knock is one for this door at all: a TCP segment without the
// door's flags, or a knock sent to another address than the door's target, is not.
func (r *rules) counts(k *pendingKnock) bool {
	return (k.proto() != protoTCP || r.flags.match(k.flags)) && (r.target == 0 || k.target() == r.target)
}

// apply evaluates one knock. The verdict says what the knock did; a reason other than
// reasonNone means that it ended an attempt in progress (or, for a client with no progress,
// that it was a wrong knock).
func (r *rules) apply(p *progress, k *pendingKnock) (verdict, failReason) {
	if !r.counts(k) {
		return verdictIgnored, reasonNone
	}
	port := k.spec()
	why := reasonNone
	if p.step > 0 && (k.ts-p.last > r.timeout || r.seqTimeout > 0 && k.ts-p.first > r.seqTimeout) {
		p.step, why = 0, reasonTimeout
	}
	if port != r.seq[p.step] {
		if why == reasonNone && p.last != 0 && port == p.lastPort && k.ts-p.last <= r.retransmit {
			return verdictIgnored, reasonNone
		}
		if why == reasonNone {
			why = reasonWrongPort
			if containsSpec(r.decoys, port) {
				why = reasonDecoy
			}
		}
		p.step = 0
		if port != r.seq[0] {
			p.last, p.lastPort = k.ts, port
			return verdictRejected, why
		}
	}
	if p.step == 0 {
		p.first = k.ts
	}
	p.step++
	p.last, p.lastPort = k.ts, port
	if int(p.step) == len(r.seq) {
		p.step = 0
		return verdictUnlocked, why
	}
	return verdictAdvanced, why
}

func containsSpec(ports []portSpec, p portSpec) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// scanWarning says when a sequential port scan could complete a sequence by itself.
func scanWarning(seq, decoys []portSpec) string {
	if len(seq) < 2 {
		return "a one-port sequence is completed by any scan that touches the port; use a longer sequence or authenticated knocks"
	}
	asc, desc := true, true
	lo, hi := seq[0].port, seq[0].port
	for i := 1; i < len(seq); i++ {
		asc = asc && seq[i].port > seq[i-1].port
		desc = desc && seq[i].port < seq[i-1].port
		lo, hi = min(lo, seq[i].port), max(hi, seq[i].port)
	}
	if !asc && !desc {
		return ""
	}
	for _, d := range decoys {
		if d.port > lo && d.port < hi {
			return ""
		}
	}
	order := "ascending"
	if desc {
		order = "descending"
	}
	return fmt.Sprintf("the sequence %s is %s: a sequential port scan completes it; reorder it, add --decoys between the knock ports, or use authenticated knocks", formatSpecs(seq), order)
}

// fewOrdersWarning says when a plain sequence has so few orders (3 ports or fewer: at most 6) that
// a scan of its ports in random order completes it by chance. A one-port sequence is
// scanWarning's.
func fewOrdersWarning(seq []portSpec) string {
	if len(seq) < 2 || len(seq) > 3 {
		return ""
	}
	orders := 1 // n! over the factorial of each port's repeats
	seen := map[portSpec]int{}
	for i, p := range seq {
		seen[p]++
		orders = orders * (i + 1) / seen[p]
	}
	what := fmt.Sprintf("only %d orders", orders)
	if orders == 1 {
		what = "one order"
	}
	return fmt.Sprintf("a plain sequence of %d knocks has %s: a scan of those ports in random order completes it by chance, and anyone who sees a knock can replay it; use authenticated knocks (--secret-file or --keys), a longer sequence, or --decoys", len(seq), what)
}

// portRole is what the tracker needs to know about a port without a map lookup.
type portRole struct {
	watched    bool
	decoy      bool
	repeatable bool   // some door expects it twice in a row, or ends and starts with it
	door       uint16 // the first door that watches it (a decoy: door 0)
}

// portRoles indexes every port of both protocols.
type portRoles [2][65536]portRole

func newPortRoles(doors []door, decoys []portSpec) *portRoles {
	roles := new(portRoles)
	for i := len(doors) - 1; i >= 0; i-- { // the first door that watches a port wins
		seq := doors[i].seq
		for _, p := range doors[i].spare { // a later one-time sequence may repeat any of them
			roles[p.proto][p.port] = portRole{watched: true, repeatable: true, door: uint16(i)}
		}
		for j, p := range seq {
			r := &roles[p.proto][p.port]
			r.watched, r.door = true, uint16(i)
			if j > 0 && seq[j-1] == p || j == len(seq)-1 && seq[0] == p {
				r.repeatable = true
			}
		}
	}
	for _, p := range decoys {
		roles[p.proto][p.port] = portRole{watched: true, decoy: true}
	}
	return roles
}

func (r *portRoles) of(p portSpec) *portRole { return &r[p.proto&1][p.port] }

// =============================================================================================
// knockd.conf
//
// A pure reader of knockd 0.8's configuration file, following its man page knockd(1) and, where
// the man page is silent, knockd.c. Where knockd is lax (atoi, mistakes silently ignored), it
// takes the strict reading and reports an error with its line number.
const (
	knockdSeqTimeout = 25 * time.Second // knockd.c SEQ_TIMEOUT
	knockdCmdTimeout = 10 * time.Second // knockd.c CMD_TIMEOUT
	knockdMaxName    = 64               // bytes in a door name
	knockdSpace      = " \t\n\v\f\r"    // what knockd's trim() removes: C isspace
)

// knockdConfig is what a knockd.conf holds.
type knockdConfig struct {
	doors     []door
	useSyslog bool
	logFile   string
	pidFile   string
	iface     string // [options] Interface
}

// knockdKey is a key of knockd.conf and how to store its value.
type knockdKey struct {
	name, alias string // as the man page spells it; another spelling knockd accepts, or ""
	door        bool   // a door key, else an [options] key
	bare        bool   // a lone word, never "key = value"
	set         func(c *knockdConfig, d *door, v string) error
}

// knockdKeys lists the keys knockd 0.8 accepts. knockd.c also takes "Timeout", an undocumented
// alias of Seq_Timeout, and so do we. It takes UseSyslog inside a door too (making it global
// all the same): we refuse that as misleading. An empty *_6 command is kept, and means "do
// nothing for IPv6" (knockd(1)); an absent one falls back to the IPv4 command (see endDoor).
func knockdKeys() []knockdKey {
	return []knockdKey{
		{name: "UseSyslog", bare: true, set: func(c *knockdConfig, _ *door, _ string) error { c.useSyslog = true; return nil }},
		{name: "LogFile", set: func(c *knockdConfig, _ *door, v string) error { return knockdPath(&c.logFile, v) }},
		{name: "PidFile", set: func(c *knockdConfig, _ *door, v string) error { return knockdPath(&c.pidFile, v) }},
		{name: "Interface", set: func(c *knockdConfig, _ *door, v string) error { return knockdIface(&c.iface, v) }},
		{name: "Sequence", door: true, set: func(_ *knockdConfig, d *door, v string) (err error) {
			if d.oneTime != "" {
				return errors.New("a door has Sequence or One_Time_Sequences, not both")
			}
			d.seq, err = knockdSequence(v)
			return err
		}},
		{name: "One_Time_Sequences", door: true, set: func(_ *knockdConfig, d *door, v string) error {
			if len(d.seq) > 0 {
				return errors.New("a door has Sequence or One_Time_Sequences, not both")
			}
			return knockdPath(&d.oneTime, v)
		}},
		{name: "Seq_Timeout", alias: "Timeout", door: true, set: func(_ *knockdConfig, d *door, v string) error { return knockdSeconds(&d.seqTimeout, v) }},
		{name: "TCPFlags", door: true, set: func(_ *knockdConfig, d *door, v string) (err error) { d.tcpFlags, err = parseTCPFlags(v); return err }},
		{name: "Start_Command", alias: "Command", door: true, set: func(_ *knockdConfig, d *door, v string) error { d.action.start = v; return nil }},
		{name: "Start_Command_6", alias: "Command_6", door: true, set: func(_ *knockdConfig, d *door, v string) error {
			d.action.start6, d.action.hasStart6 = v, true
			return nil
		}},
		{name: "Stop_Command", door: true, set: func(_ *knockdConfig, d *door, v string) error { d.action.stop = v; return nil }},
		{name: "Stop_Command_6", door: true, set: func(_ *knockdConfig, d *door, v string) error {
			d.action.stop6, d.action.hasStop6 = v, true
			return nil
		}},
		{name: "Cmd_Timeout", door: true, set: func(_ *knockdConfig, d *door, v string) error { return knockdSeconds(&d.action.cmdTimeout, v) }},
		{name: "Target", door: true, set: func(_ *knockdConfig, d *door, v string) error {
			// knockd compares Target as text with inet_ntop's output, which has no zone.
			a, err := netip.ParseAddr(v)
			if err != nil || a.Zone() != "" {
				return fmt.Errorf("%q is not an IP address (IPv4 or IPv6, without a zone)", v)
			}
			d.target = a
			return nil
		}},
	}
}

// knockdParser holds the state of one parseKnockdConfig call.
type knockdParser struct {
	cfg      knockdConfig
	keys     []knockdKey
	section  string         // the current section's name; "" before the first one
	door     *door          // the current door; nil in [options]
	seen     map[string]int // key name -> its line, in the current section
	sections map[string]int // lower-case section name -> the line of its header
}

// parseKnockdConfig reads knockd.conf text. It is a pure function: no file or network access
// (one_time_sequences only records the path in door.oneTime). Errors are one line, of the
// form "line N: what is wrong (what is allowed)", naming the offending key, value or flag.
// A file without doors is valid, as in knockd; the caller decides whether that is useful.
func parseKnockdConfig(text string) (*knockdConfig, error) {
	p := &knockdParser{keys: knockdKeys(), sections: map[string]int{}}
	n := 0
	for line := range strings.Lines(strings.TrimPrefix(text, "\uFEFF")) {
		n++
		if err := p.line(n, strings.Trim(line, knockdSpace)); err != nil {
			return nil, err
		}
	}
	if err := p.endDoor(); err != nil {
		return nil, err
	}
	return &p.cfg, nil
}

// line handles line n, trimmed of surrounding white space (and so of a CR before the LF).
func (p *knockdParser) line(n int, s string) error {
	switch {
	case s == "" || s[0] == '#': // only a whole line is a comment: a command may hold '#'
		return nil
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("line %d: NUL byte (the file must be text)", n)
	case s[0] == '[':
		return p.startSection(n, s)
	}
	k, v, hasValue := strings.Cut(s, "=") // at the first '=': a value may hold more
	k, v = strings.Trim(k, knockdSpace), strings.Trim(v, knockdSpace)
	key, known := p.lookup(k)
	switch {
	case p.section == "":
		return fmt.Errorf("line %d: key %q before any section (start with [options] or [doorname])", n, k)
	case k == "":
		return fmt.Errorf("line %d: no key before '=' (key = value)", n)
	case !known && !hasValue:
		return fmt.Errorf("line %d: %q has no '=' (key = value, or UseSyslog alone)", n, k)
	case !known:
		var names []string
		for _, key := range p.keys {
			if key.door == (p.door != nil) {
				names = append(names, key.name)
				if key.alias != "" {
					names = append(names, key.alias)
				}
			}
		}
		return fmt.Errorf("line %d: unknown key %q in [%s] (known: %s)", n, k, p.section, strings.Join(names, ", "))
	case key.door && p.door == nil:
		return fmt.Errorf("line %d: %s belongs in a door section, not in [options]", n, k)
	case !key.door && p.door != nil:
		return fmt.Errorf("line %d: %s belongs in [options], not in door [%s]", n, k, p.section)
	case key.bare && hasValue:
		return fmt.Errorf("line %d: %s takes no value (write %s alone)", n, k, key.name)
	case !key.bare && !hasValue:
		return fmt.Errorf("line %d: %s has no '=' (%s = value)", n, k, key.name)
	}
	if first, dup := p.seen[key.name]; dup {
		return fmt.Errorf("line %d: %s given again in [%s] (first at line %d; once per section, aliases included)", n, k, p.section, first)
	}
	p.seen[key.name] = n
	if err := key.set(&p.cfg, p.door, v); err != nil {
		return fmt.Errorf("line %d: %s: %v", n, k, err)
	}
	return nil
}

// lookup finds the key named k, ignoring case.
func (p *knockdParser) lookup(k string) (knockdKey, bool) {
	for _, key := range p.keys {
		for _, name := range []string{key.name, key.alias} {
			if name != "" && knockdEqual(k, name) {
				return key, true
			}
		}
	}
	return knockdKey{}, false
}

// knockdEqual reports whether s is the ASCII word w, ignoring ASCII case as knockd's toupper
// does. (Equal lengths keep strings.EqualFold from matching the Kelvin sign to 'k', 'ſ' to 's'.)
func knockdEqual(s, w string) bool { return len(s) == len(w) && strings.EqualFold(s, w) }

// startSection starts the section whose header "[name]" is s, on line n. Only "[options]" is
// the global section, as in knockd (which compares it case-sensitively); we refuse any other
// spelling of it rather than take it for a door. A section, door or [options], appears once.
func (p *knockdParser) startSection(n int, s string) error {
	if err := p.endDoor(); err != nil {
		return err
	}
	if len(s) < 2 || s[len(s)-1] != ']' {
		return fmt.Errorf("line %d: section header %q does not end with ']' ([name] alone on its line)", n, s)
	}
	name := s[1 : len(s)-1]
	switch {
	case name != "options" && knockdEqual(name, "options"):
		return fmt.Errorf("line %d: section %q: the global section is spelled [options]", n, s)
	case name != "options" && !knockdDoorName(name):
		return fmt.Errorf("line %d: bad door name %q (1-%d bytes of printable UTF-8, no spaces or brackets)", n, name, knockdMaxName)
	}
	if first, dup := p.sections[strings.ToLower(name)]; dup {
		return fmt.Errorf("line %d: section [%s] given again (first at line %d; names are case-insensitive)", n, name, first)
	}
	p.sections[strings.ToLower(name)] = n
	p.section, p.seen = name, map[string]int{}
	if name != "options" {
		p.door = &door{name: name, line: n, seqTimeout: knockdSeqTimeout, tcpFlags: defaultTCPFlags,
			action: doorAction{cmdTimeout: knockdCmdTimeout}}
	}
	return nil
}

// endDoor checks and completes the current door, if any, and adds it to the configuration.
// A door needs a sequence but no command: knockd accepts a door that only logs its opening.
func (p *knockdParser) endDoor() error {
	d := p.door
	if d == nil {
		return nil
	}
	p.door = nil
	if len(d.seq) == 0 && d.oneTime == "" {
		return fmt.Errorf("line %d: door [%s] has no sequence (give Sequence or One_Time_Sequences)", d.line, d.name)
	}
	d.timeout = d.seqTimeout // knockd limits only the whole sequence, so no gap can exceed it
	if !d.action.hasStart6 {
		d.action.start6 = d.action.start
	}
	if !d.action.hasStop6 {
		d.action.stop6 = d.action.stop
	}
	p.cfg.doors = append(p.cfg.doors, *d)
	return nil
}

// knockdDoorName reports whether name is a valid door name. knockd takes any non-empty text
// (cut to 127 bytes); we keep names short and easy to log: 1-64 bytes of printable UTF-8,
// without white space, '[' or ']'.
func knockdDoorName(name string) bool {
	return name != "" && len(name) <= knockdMaxName && utf8.ValidString(name) &&
		!strings.ContainsFunc(name, func(r rune) bool { return r == ' ' || r == '[' || r == ']' || !unicode.IsPrint(r) })
}

// knockdIface stores a network interface name, valid by Linux's rules (dev_valid_name: at
// most IFNAMSIZ-1 bytes, not "." or "..", no '/', ':' or white space) and printable ASCII.
func knockdIface(dst *string, v string) error {
	bad := v == "" || len(v) > 15 || v == "." || v == ".."
	for i := 0; i < len(v); i++ {
		bad = bad || v[i] <= ' ' || v[i] >= 0x7f || v[i] == '/' || v[i] == ':'
	}
	if bad {
		return fmt.Errorf("%q is not an interface name (1-15 printable ASCII bytes, no spaces, '/' or ':'; e.g. eth0)", v)
	}
	*dst = v
	return nil
}

// knockdPath stores a file path, which must not be empty (knockd would fail later instead).
func knockdPath(dst *string, v string) error {
	if v == "" {
		return errors.New("empty value (a file path)")
	}
	*dst = v
	return nil
}

// knockdSeconds stores a timeout in whole seconds. knockd uses atoi, so that "abc" or "0"
// would make every knock time out at once; we require 1 to 2^31-1 (atoi's range).
func knockdSeconds(dst *time.Duration, v string) error {
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil || n == 0 {
		return fmt.Errorf("%q is not a whole number of seconds (1-2147483647)", v)
	}
	*dst = time.Duration(n) * time.Second
	return nil
}

// knockdSequence parses a knock sequence of 1 to maxSequenceLen ports; a bare port is TCP, as
// in knockd. (knockd allows 32 ports, and takes a port that atoi cannot read for port 0.)
func knockdSequence(v string) ([]portSpec, error) {
	seq, err := parsePortSpecs(v, protoTCP)
	switch {
	case err != nil:
		return nil, err
	case len(seq) == 0:
		return nil, errors.New("empty sequence (port[:tcp|udp],...)")
	case len(seq) > maxSequenceLen:
		return nil, fmt.Errorf("%d ports in the sequence (at most %d)", len(seq), maxSequenceLen)
	}
	return seq, nil
}

// parseTCPFlags parses knockd's TCPFlags (and --door's tcp-flags), like "syn,!ack". Unlike knockd, it allows spaces around
// items, and refuses a flag both required and excluded (knockd keeps the last). Repeating a
// flag the same way is harmless and allowed.
func parseTCPFlags(v string) (tcpFlagRule, error) {
	const allowed = "(comma-separated fin, syn, rst, psh, ack, urg, each may be prefixed by '!')"
	names := [...]string{"fin", "syn", "rst", "psh", "ack", "urg"}
	bits := [...]uint8{tcpFIN, tcpSYN, tcpRST, tcpPSH, tcpACK, tcpURG}
	var r tcpFlagRule
	for _, item := range strings.Split(v, ",") {
		item = strings.Trim(item, knockdSpace)
		name, exclude := strings.CutPrefix(item, "!")
		var bit uint8
		for i := range names {
			if knockdEqual(name, names[i]) {
				name, bit = names[i], bits[i]
			}
		}
		switch {
		case item == "":
			return tcpFlagRule{}, errors.New("empty item " + allowed)
		case bit == 0:
			return tcpFlagRule{}, fmt.Errorf("unknown flag %q %s", item, allowed)
		case exclude:
			r.clear |= bit
		default:
			r.set |= bit
		}
		if r.set&r.clear != 0 {
			return tcpFlagRule{}, fmt.Errorf("flag %s is both required and excluded (give it once, with or without '!')", name)
		}
	}
	return r, nil
}

// oneTimeLine is an unused sequence of a one-time sequences file.
type oneTimeLine struct {
	offset int // byte offset of the line's first character in the file
	line   int // 1-based line number
	seq    []portSpec
}

// parseOneTimeSequences reads a one-time sequences file (knockd's one_time_sequences): one
// sequence per line, in the syntax of Sequence. As in knockd, a line is trimmed first; then an
// empty line is skipped and one starting with '#' is a used sequence or a comment. It returns
// the unused lines in file order. knockd skips a line it cannot parse (and then marks the
// wrong line as used); here that is an error with its line number.
func parseOneTimeSequences(text string) ([]oneTimeLine, error) {
	var out []oneTimeLine
	offset, n := 0, 0
	if strings.HasPrefix(text, "\uFEFF") {
		offset = len("\uFEFF")
	}
	for line := range strings.Lines(text[offset:]) {
		n++
		start := offset
		offset += len(line)
		if s := strings.Trim(line, knockdSpace); s != "" && s[0] != '#' {
			seq, err := knockdSequence(s)
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", n, err)
			}
			out = append(out, oneTimeLine{offset: start, line: n, seq: seq})
		}
	}
	return out, nil
}

// markSequenceUsed does knockd's rewrite of a used one-time sequence: it writes '#' over the
// first character of the line at offset (an oneTimeLine.offset) and returns the new content,
// a copy. Hence the man page's advice to start each line with a space: else the first digit is
// lost. Any first byte is overwritten, as by knockd, white space or not (a CR too: "\r1" becomes
// "#1"); but an offset outside text, or on a '\n' (which would join two lines), changes nothing.
func markSequenceUsed(text []byte, offset int) []byte {
	out := append([]byte(nil), text...)
	if offset >= 0 && offset < len(out) && out[offset] != '\n' {
		out[offset] = '#'
	}
	return out
}

// loadOneTimeSequences reads a one-time sequences file: its unused sequences, in order.
func loadOneTimeSequences(path string) ([]oneTimeLine, error) {
	text, err := readSmallFile(path, 1<<20)
	if err != nil {
		return nil, err
	}
	lines, err := parseOneTimeSequences(string(text))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s has no unused sequence left", path)
	}
	return lines, nil
}

// useOneTimeSequence marks the file's first unused sequence as used, as knockd does ('#' over
// the first character of its line), and returns the next one, or nil when none is left.
func useOneTimeSequence(path string) ([]portSpec, error) {
	lines, err := loadOneTimeSequences(path)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteAt([]byte{'#'}, int64(lines[0].offset)); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if len(lines) < 2 {
		return nil, nil
	}
	return lines[1].seq, nil
}

// =============================================================================================
// The tracker
//
// Every client's progress on every door, sharded by source address: each shard's lock owns its
// clients, its compact first-knock and challenge slots, and its ban records. Listener goroutines
// call into it directly; it never blocks on anything but a shard lock and never allocates on the
// knock path (tables are made whole at start).
//
// A client's first knock, or the challenge an authenticated client was issued, takes a compact
// slot (32 or 104 bytes) in a set-associative table where a newcomer replaces the oldest entry
// of its bucket. Only a second knock (or a first authenticated one) makes a client record, and
// client records are only ever evicted by other client records, and then only those that have
// come less far than the newcomer: when every candidate has an attempt in progress as far along,
// the newcomer is refused (counted in refused). So a flood of spoofed first knocks or of hellos
// churns the compact slots, never the clients with real progress, a genuine first knock survives
// a flood of several hundred thousand first knocks a second in its 16-way bucket for many
// seconds, and more clients at once than --max-clients do not push each other out in turn.

// addrKey is a client's address as a map key: 16 bytes, IPv4 in its IPv4-mapped form. It has no
// pointer, so a map of a million clients costs the garbage collector nothing to scan.
type addrKey [16]byte

func keyOf(a netip.Addr) addrKey { return addrKey(a.Unmap().As16()) }

func (k addrKey) addr() netip.Addr { return netip.AddrFrom16(k).Unmap() }

func (k addrKey) is4() bool { return k.addr().Is4() }

type eventKind uint8

const (
	eventKnock eventKind = iota
	eventUnlock
	eventFail
)

// confirmInfo is what the hook runtime needs to confirm an authenticated unlock.
type confirmInfo struct {
	nonceS [16]byte
	keyID  [8]byte
	local  addrKey // the address the client knocked: the confirmation comes from it
}

// event is what the tracker reports to the hook runtime. It is a plain value: queueing it
// allocates nothing.
type event struct {
	kind    eventKind
	reason  failReason
	door    uint16
	port    portSpec
	srcPort uint16
	from    addrKey
	ts      int64
	elapsed int64        // ns from the attempt's first knock to this one
	conf    *confirmInfo // an authenticated unlock's: how to confirm it
	// rightFor is, for a failure, 1 + the door for which the same knock was right (another door
	// that shares the port, or the failed door's own first port, starting it over): no failure
	// of the client's for bans, nor for fail2ban. 0: for no door.
	rightFor uint16
}

// Knocks sent back to back arrive on different sockets, and the goroutines reading them may
// see them out of order. So each client keeps its recent knocks in a small buffer sorted by the
// kernel's receive time: a sequence completes as soon as the buffer, read in time order, completes
// it; a failure only becomes final once the knocks behind it are older than reorderWindow.
const (
	pendingMax         = 4
	reorderWindow      = int64(time.Second)
	noSlot             = -1
	chunkBits          = 6
	chunkSize          = 1 << chunkBits
	preallocateClients = 1 << 17
	compactWays        = 16 // slots per bucket of the compact tables
	firstKnockFactor   = 6  // compact first-knock slots per --max-clients
	challengeFactor    = 2  // challenge slots per --max-clients
)

// client is a tracked source address with two knocks or more: its knocks not yet settled and
// its place in the shard's least-recently-seen list. Its progress on each door (which also
// tells its last settled knock), and its authentication state, live in parallel chunks.
type client struct {
	key        addrKey
	prev, next int32
	npending   uint8
	pending    pendingSlots
}

// firstKnock is a compact slot: a source address that has knocked once.
type firstKnock struct {
	key addrKey
	pk  pendingKnock // pk.ts == 0: free
}

// authState binds an authenticated attempt to its challenge and to the client's address.
type authState struct {
	nonceS [16]byte // the server's nonce: every token of the attempt is bound to it
	nonceC [16]byte // the hello's nonce: a replayed hello gets the same challenge back
	keyID  [8]byte
	local  addrKey // where the hello was sent: replies come from there
	issued int64
	hello  int64  // the hello's client time (unix ms): only a later hello starts a new attempt
	used   uint64 // positions knocked already: each is accepted once
}

// challenge is a compact slot: an address that was issued a challenge and has not knocked yet.
type challenge struct {
	key   addrKey
	state authState // state.issued == 0: free
}

// shard is one lock's worth of clients: an index, client slots allocated in fixed chunks (a
// growing slice would waste up to half its capacity), a free list, a doubly linked list through
// the slots in order of last activity (head: most recent), and the compact tables.
type shard struct {
	mu         sync.Mutex
	index      map[addrKey]int32
	chunks     [][]client
	progs      [][]progress  // chunk i holds chunkSize × the number of doors
	auths      [][]authState // only with keys
	used       int32         // slots handed out so far
	free       []int32
	head, tail int32
	limit      int
	firsts     []firstKnock // compactWays-way buckets, each a ring: a newcomer takes the oldest slot
	firstTags  []uint8      // per slot: a byte of its key's hash, 0 when free, to look a key up in one cache line
	firstNext  []uint8      // per bucket: the slot the next newcomer takes
	chals      []challenge  // compactWays-way buckets, only with keys
	_          [64]byte     // keep neighbouring shards' locks off one cache line
}

func (s *shard) slot(i int32) *client { return &s.chunks[i>>chunkBits][i&(chunkSize-1)] }

// tracker holds every client's progress, sharded by address so that listeners rarely contend.
type tracker struct {
	doors     []rules
	roles     *portRoles
	targets   []netip.Addr // the doors' target addresses; pendingKnock.to indexes them from 1
	shards    []shard
	mask      uint64
	seed      maphash.Seed
	emit      func([]event) // called with no shard lock held (an outbox is flushed after the unlock); never blocks
	wantKnock atomic.Bool   // report every knock (on_knock or --verbose)
	bans      *bans
	auth      bool
	keys      atomic.Pointer[keyring]
	maxSkew   int64
	maxGap    int64 // the longest door timeout: how long a first knock or challenge is kept
	tcpDecoys bool  // some decoy is a TCP port
	evicted   atomic.Uint64

	// refused counts knocks that found no room for a new client record (evicted: client
	// records with an attempt in progress pushed out).
	refused atomic.Uint64
}

func newTracker(c *config, emit func([]event)) *tracker {
	nshards := 1
	for nshards < 64 && c.maxClients/(nshards*2) >= 1024 {
		nshards *= 2
	}
	t := &tracker{
		roles:   newPortRoles(c.doors, c.decoys),
		shards:  make([]shard, nshards),
		mask:    uint64(nshards - 1),
		seed:    maphash.MakeSeed(),
		emit:    emit,
		bans:    newBans(c, nshards),
		auth:    c.keys != nil,
		maxSkew: int64(c.maxSkew),
	}
	t.keys.Store(c.keys)
	for _, p := range c.decoys {
		t.tcpDecoys = t.tcpDecoys || p.proto == protoTCP
	}
	for _, d := range c.doors {
		target := uint8(0)
		if d.target.IsValid() {
			i := indexOfAddr(t.targets, d.target)
			if i < 0 {
				t.targets = append(t.targets, d.target)
				i = len(t.targets) - 1
			}
			target = uint8(i + 1)
		}
		t.doors = append(t.doors, newRules(d, target, c.decoys))
		t.maxGap = max(t.maxGap, int64(d.timeout))
	}
	nd := len(t.doors)
	for i := range t.shards {
		s := &t.shards[i]
		s.limit = c.maxClients / nshards
		if i < c.maxClients%nshards {
			s.limit++
		}
		// Up to preallocateClients the table is made whole now, so that a burst of new clients
		// neither allocates nor waits for the garbage collector on the knock path.
		prealloc := min(s.limit, preallocateClients/nshards)
		s.index = make(map[addrKey]int32, prealloc)
		for range (prealloc + chunkSize - 1) / chunkSize {
			s.grow(nd, t.auth)
		}
		s.head, s.tail = noSlot, noSlot
		buckets := max(1, (s.limit*firstKnockFactor+compactWays-1)/compactWays)
		if t.auth {
			s.chals = offHeap[challenge](t, max(1, (s.limit*challengeFactor+compactWays-1)/compactWays)*compactWays)
		} else {
			s.firsts = offHeap[firstKnock](t, buckets*compactWays)
			s.firstTags = offHeap[uint8](t, buckets*compactWays)
			s.firstNext = offHeap[uint8](t, buckets)
		}
	}
	return t
}

func indexOfAddr(list []netip.Addr, a netip.Addr) int {
	for i, b := range list {
		if a == b {
			return i
		}
	}
	return -1
}

// targetIndex is a knock's destination as pendingKnock.to: the index+1 of the door target it
// was sent to, or 0.
func (t *tracker) targetIndex(to netip.Addr) uint8 {
	if len(t.targets) == 0 || !to.IsValid() {
		return 0
	}
	return uint8(indexOfAddr(t.targets, to.Unmap()) + 1)
}

func (s *shard) grow(ndoors int, auth bool) {
	s.chunks = append(s.chunks, make([]client, chunkSize))
	s.progs = append(s.progs, make([]progress, chunkSize*ndoors))
	if auth {
		s.auths = append(s.auths, make([]authState, chunkSize))
	}
}

// progress returns client slot i's progress on every door.
func (s *shard) progress(i int32, ndoors int) []progress {
	base := int(i&(chunkSize-1)) * ndoors
	return s.progs[i>>chunkBits][base : base+ndoors]
}

func (s *shard) authOf(i int32) *authState { return &s.auths[i>>chunkBits][i&(chunkSize-1)] }

func (t *tracker) hash(k addrKey) uint64 { return maphash.Comparable(t.seed, k) }

func (t *tracker) shardOf(h uint64) *shard { return &t.shards[h&t.mask] }

// bucket is the compactWays slots where a key may live, chosen by hash bits the shard index
// does not use.
func bucket[E any](table []E, h uint64) []E {
	n := uint64(len(table) / compactWays)
	b := int((h>>32)%n) * compactWays
	return table[b : b+compactWays]
}

// outbox collects the events of one knock while a shard is locked; they are emitted after.
// Each caller owns one, so filling it allocates nothing. It also holds the caller's scratch
// progress for trying pending knocks.
type outbox struct {
	events []event
	trial  []progress
}

func newOutbox(ndoors int) *outbox {
	return &outbox{events: make([]event, 0, (pendingMax+2)*(2*ndoors+2)), trial: make([]progress, ndoors)}
}

func (o *outbox) add(e event) { o.events = append(o.events, e) }

func (t *tracker) flush(o *outbox) {
	if len(o.events) > 0 {
		t.emit(o.events)
		o.events = o.events[:0]
	}
}

// knock records one plain knock (or, with keys, one already verified authenticated knock
// through authKnock) and reports what it caused into out.
func (t *tracker) knock(k *knock, out *outbox) dropReason {
	if t.bans.banned(k.from, k.ts) {
		return dropBanned
	}
	h := t.hash(k.from)
	s := t.shardOf(h)
	pk := t.pending(k)
	s.mu.Lock()
	t.reportKnock(s, h, k, &pk, out)
	if i, ok := s.index[k.from]; ok {
		s.touch(i)
		t.add(s, i, pk, out)
	} else {
		t.addFirst(s, h, k.from, pk, out)
	}
	s.mu.Unlock()
	t.flush(out)
	return dropNone
}

func (t *tracker) pending(k *knock) pendingKnock {
	return newPending(k.ts, k.port, k.flags, k.srcPort, t.targetIndex(k.to))
}

// reportKnock reports a knock itself, before what it causes, when a hook or -v wants it.
func (t *tracker) reportKnock(s *shard, h uint64, k *knock, pk *pendingKnock, out *outbox) {
	if t.wantKnock.Load() {
		d := t.roles.of(k.port).door
		out.add(event{kind: eventKnock, door: d, from: k.from, srcPort: k.srcPort, port: k.port, ts: k.ts, elapsed: t.elapsed(s, h, k.from, int(d), pk)})
	}
}

// elapsed is the time from the first knock of a client's attempt on door d to pk, which has not
// been added yet: the door's progress, then the client's pending knocks received before pk, then
// pk. It is 0 when pk starts an attempt, or is a wrong knock outside one.
func (t *tracker) elapsed(s *shard, h uint64, from addrKey, d int, pk *pendingKnock) int64 {
	r := &t.doors[d]
	var p progress
	if i, ok := s.index[from]; ok {
		p = s.progress(i, len(t.doors))[d]
		c := s.slot(i)
		for j := 0; j < int(c.npending); j++ {
			if q := c.pending.get(j); q.ts <= pk.ts {
				r.apply(&p, &q)
			}
		}
	} else {
		base, tag := s.firstBucket(h)
		for j, tg := range s.firstTags[base : base+compactWays] {
			if f := &s.firsts[base+j]; tg == tag && f.key == from && f.pk.ts <= pk.ts {
				q := f.pk
				r.apply(&p, &q)
			}
		}
	}
	before := p
	if v, _ := r.apply(&p, pk); v == verdictAdvanced || v == verdictUnlocked {
		return pk.ts - p.first
	}
	if before.step > 0 {
		return pk.ts - before.first
	}
	return 0
}

// addFirst handles a knock from an address without a client record: it is a duplicate of the
// address's first knock, its second knock (the address becomes a client), or its first.
func (t *tracker) addFirst(s *shard, h uint64, from addrKey, pk pendingKnock, out *outbox) {
	base, tag := s.firstBucket(h)
	for j, tg := range s.firstTags[base : base+compactWays] {
		f := &s.firsts[base+j]
		if tg != tag || f.key != from {
			continue
		}
		dup := t.duplicate(&f.pk, &pk)
		if dup && !f.pk.settled() {
			f.pk.mergeCopy(pk.ts, pk.srcPort)
			return
		}
		// A copy of a settled first knock goes in a client record like a second knock: a knock
		// between them may still come (see add).
		reach := t.reach(f.pk, pk, out.trial)
		i := t.newClient(s, from, reach, pk.ts, out.trial)
		if i == noSlot {
			// No room: the first knock stays where it is. A knock that takes no door anywhere
			// is a failure all the same, so that a full table shelters no guessing from bans;
			// a retransmission of a wrong first knock was counted once already.
			if reach == 0 && !dup {
				t.strayFailure(s, from, &pk, out)
			}
			return
		}
		c := s.slot(i)
		if f.pk.settled() { // its effect was applied when it was settled: replay it silently
			t.applyAll(s, i, c, f.pk, nil)
		} else {
			c.pending.set(0, f.pk)
			c.npending = 1
		}
		s.clearFirst(base + j)
		t.add(s, i, pk, out)
		return
	}
	// The address's first knock: it takes the bucket's oldest slot.
	b := base / compactWays
	j := base + int(s.firstNext[b])
	s.firstNext[b] = uint8((int(s.firstNext[b]) + 1) % compactWays)
	s.firsts[j], s.firstTags[j] = firstKnock{key: from, pk: pk}, tag
	// An unlock never waits: a one-knock door opens now.
	for d := range t.doors {
		if r := &t.doors[d]; t.open(d) && len(r.seq) == 1 && r.counts(&pk) && r.seq[0] == pk.spec() {
			t.settleFirst(s, j, out)
			return
		}
	}
}

// firstBucket is where a hash's first knock lives: the bucket's first slot, and the tag that
// marks it (never 0).
func (s *shard) firstBucket(h uint64) (base int, tag uint8) {
	b := int((h >> 32) % uint64(len(s.firstNext)))
	return b * compactWays, uint8(h>>56) | 1
}

func (s *shard) clearFirst(j int) {
	s.firsts[j], s.firstTags[j] = firstKnock{}, 0
}

// settleFirst applies compact first knock j to fresh progress on every door: it opens a
// one-knock door, starts an attempt, or is a wrong knock.
func (t *tracker) settleFirst(s *shard, j int, out *outbox) {
	f := &s.firsts[j]
	var p progress
	stray := true
	for d := range t.doors {
		if !t.open(d) {
			continue
		}
		p = progress{}
		v, _ := t.doors[d].apply(&p, &f.pk)
		if v != verdictRejected {
			stray = false
		}
		if v == verdictUnlocked && t.take(d) {
			out.add(event{kind: eventUnlock, door: uint16(d), from: f.key, srcPort: f.pk.srcPort, port: f.pk.spec(), ts: f.pk.ts})
		}
	}
	f.pk.meta |= metaSettled
	if stray {
		t.strayFailure(s, f.key, &f.pk, out)
		s.clearFirst(j) // nothing left to remember once the retransmission window is past
	}
}

// strayFailure reports a wrong knock from a client with no attempt on any door, and whether
// it banned the client.
func (t *tracker) strayFailure(s *shard, key addrKey, pk *pendingKnock, out *outbox) bool {
	role := t.roles.of(pk.spec())
	why := reasonWrongPort
	if role.decoy {
		why = reasonDecoy
	}
	out.add(event{kind: eventFail, reason: why, door: role.door, from: key, srcPort: pk.srcPort, port: pk.spec(), ts: pk.ts})
	if !t.bans.fail(key, pk.ts) {
		return false
	}
	out.add(event{kind: eventFail, reason: reasonBanned, door: role.door, from: key, srcPort: pk.srcPort, port: pk.spec(), ts: pk.ts})
	return true
}

// duplicate reports whether b repeats a, a knock on the same port moments before or after it,
// where no door expects that port twice in a row (then it is the network or the client
// repeating itself, and the rules would ignore it anyway).
func (t *tracker) duplicate(a, b *pendingKnock) bool {
	if a.spec() != b.spec() || t.roles.of(a.spec()).repeatable {
		return false
	}
	gap := a.ts - b.ts
	if gap < 0 {
		gap = -gap
	}
	return gap <= int64(time.Second) && gap <= t.doors[t.roles.of(a.spec()).door].retransmit
}

// reach is how far a newcomer's first two knocks, a and b, take it on its best door; one that
// completes a door outranks every attempt in progress. trial is scratch.
func (t *tracker) reach(a, b pendingKnock, trial []progress) int {
	if b.ts < a.ts {
		a, b = b, a
	}
	clear(trial)
	best := 0
	for d := range t.doors {
		if !t.open(d) {
			continue
		}
		for _, k := range []*pendingKnock{&a, &b} {
			if v, _ := t.doors[d].apply(&trial[d], k); v == verdictUnlocked {
				best = maxSequenceLen + 1
			}
		}
		best = max(best, int(trial[d].step))
	}
	return best
}

// newClient makes a client record for a newcomer that has come as far as reach (see evict),
// or returns noSlot when the shard is full and nothing may make room for it.
func (t *tracker) newClient(s *shard, k addrKey, reach int, now int64, trial []progress) int32 {
	if len(s.index) >= s.limit && !s.evict(t, reach, now, trial) {
		t.refused.Add(1)
		return noSlot
	}
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		if int(s.used) == len(s.chunks)*chunkSize {
			s.grow(len(t.doors), t.auth)
		}
		i = s.used
		s.used++
	}
	*s.slot(i) = client{key: k}
	clear(s.progress(i, len(t.doors)))
	if t.auth {
		*s.authOf(i) = authState{}
	}
	s.index[k] = i
	s.pushFront(i)
	return i
}

func (s *shard) touch(i int32) {
	if s.head != i {
		s.unlink(i)
		s.pushFront(i)
	}
}

// evictGrace is how long after its last knock a client record with an attempt in progress is
// safe from a newcomer that has come no further. Within it a full table refuses the newcomer
// rather than push the attempt out: otherwise clients knocking in turn push each other out and
// none unlocks. Past it the attempt may go, so that a flood of spoofed knock pairs cannot hold
// the table and keep every new client out: to do that, it would have to fill the table within
// the grace, --max-clients pairs every 0.5 s (131,072 a second, 262,144 datagrams, for the default).
const evictGrace = int64(500 * time.Millisecond)

// evict makes room for a newcomer that has come as far as reach: among the 16 least recently
// seen, the least advanced, the least recently seen of those. It reports false, and evicts
// nothing, when that one has an attempt in progress as far along as the newcomer's or further
// and knocked within evictGrace. One with an attempt in progress counts as evicted.
func (s *shard) evict(t *tracker, reach int, now int64, trial []progress) bool {
	victim, least, seen := s.tail, math.MaxInt, int64(0)
	for n, j := 0, s.tail; n < 16 && j != noSlot; n, j = n+1, s.slot(j).prev {
		if a, at := t.advance(s.slot(j), s.progress(j, len(t.doors)), now, trial); a < least {
			victim, least, seen = j, a, at
		}
	}
	if least > 0 && least >= reach && now-seen < evictGrace {
		return false
	}
	s.remove(victim)
	if least > 0 {
		t.evicted.Add(1)
	}
	return true
}

// advance is how far a client has come at now: the furthest step on a door that its settled and
// pending knocks take it to, where an attempt past its door's timeout counts for nothing; and
// when it last knocked. trial is scratch.
func (t *tracker) advance(c *client, ps []progress, now int64, trial []progress) (best int, seen int64) {
	copy(trial, ps)
	for j := range int(c.npending) {
		pk := c.pending.get(j)
		seen = max(seen, pk.ts)
		for d := range t.doors {
			t.doors[d].apply(&trial[d], &pk)
		}
	}
	for d := range trial {
		seen = max(seen, trial[d].last)
		if t.underWay(d, &trial[d], now) {
			best = max(best, int(trial[d].step))
		}
	}
	return best, seen
}

func (s *shard) pushFront(i int32) {
	c := s.slot(i)
	c.prev, c.next = noSlot, s.head
	if s.head != noSlot {
		s.slot(s.head).prev = i
	}
	s.head = i
	if s.tail == noSlot {
		s.tail = i
	}
}

func (s *shard) unlink(i int32) {
	c := s.slot(i)
	if c.prev != noSlot {
		s.slot(c.prev).next = c.next
	} else {
		s.head = c.next
	}
	if c.next != noSlot {
		s.slot(c.next).prev = c.prev
	} else {
		s.tail = c.prev
	}
}

func (s *shard) remove(i int32) {
	s.unlink(i)
	delete(s.index, s.slot(i).key)
	s.free = append(s.free, i)
}

// add inserts a knock into a client's pending knocks, in receive-time order, unless it
// duplicates its neighbour in time; then settles what can be settled.
func (t *tracker) add(s *shard, i int32, pk pendingKnock, out *outbox) {
	c := s.slot(i)
	pos := int(c.npending)
	for pos > 0 && c.pending.ts[pos-1] > pk.ts {
		pos--
	}
	if pos > 0 {
		if prev := c.pending.get(pos - 1); t.duplicate(&prev, &pk) {
			prev.mergeCopy(pk.ts, pk.srcPort)
			c.pending.set(pos-1, prev)
			return
		}
	}
	if pos < int(c.npending) {
		if next := c.pending.get(pos); t.duplicate(&next, &pk) {
			next.mergeCopy(pk.ts, pk.srcPort) // the earlier copy is the original
			c.pending.set(pos, next)
			return
		}
	}
	if lastTs, _ := lastSettled(s.progress(i, len(t.doors))); pos == 0 && pk.ts < lastTs {
		// Older than a knock already settled: it comes too late to be put in its place (a
		// sequence completed without it, or it is more than the reorder window late). In time
		// order it was a duplicate or a knock that must not undo what is settled: drop it. A
		// copy of the settled knock received after it waits like any knock, since one between
		// them may still come (a port the sequence repeats, not back to back); if none does,
		// settleOldest drops it.
		return
	}
	if c.npending == pendingMax {
		if t.settleOldest(s, i, out) {
			return // a ban, or the end of an authenticated attempt: this knock ends with them
		}
		pos = max(pos-1, 0)
	}
	// A knock that lands among the copies of the knock before it (a port knocked five times,
	// this knock read before the last copies): the copies after it were not duplicates of the
	// knock before, but a knock of their own after this one. Put the latest back.
	var split pendingKnock
	if pos > 0 {
		if prev := c.pending.get(pos - 1); prev.later > pk.ts {
			split = prev
			split.ts, split.later = prev.later, 0
			prev.later = 0
			c.pending.set(pos-1, prev)
		}
	}
	c.pending.insert(pos, int(c.npending), pk)
	c.npending++
	if ended := t.settle(s, i, pk.ts-reorderWindow, out); split.ts != 0 && !ended {
		t.add(s, i, split, out)
	}
}

// settle makes pending knocks final: all of them up to the first that completes a door (an
// unlock never waits), and those received before horizon, every copy of them: a knock that lies
// between a knock and its latest copy may still come, and put the copy back in its place. It
// reports whether a knock ended the client's knocks (see applyAll).
func (t *tracker) settle(s *shard, i int32, horizon int64, out *outbox) bool {
	c := s.slot(i)
	if c.npending == 0 {
		return false
	}
	trial := out.trial
	copy(trial, s.progress(i, len(t.doors)))
	cut := 0
	for j := 0; j < int(c.npending) && cut == 0; j++ {
		pk := c.pending.get(j)
		for d := range t.doors {
			if v, _ := t.doors[d].apply(&trial[d], &pk); v == verdictUnlocked && t.open(d) {
				cut = j + 1
			}
		}
	}
	for cut < int(c.npending) && c.pending.latest(cut) < horizon {
		cut++
	}
	for range cut {
		if t.settleOldest(s, i, out) {
			return true
		}
	}
	return false
}

// settleOldest applies a client's oldest pending knock to every door, unless it is a copy of the
// knock settled last; it reports whether the knock ended the client's knocks (see applyAll).
func (t *tracker) settleOldest(s *shard, i int32, out *outbox) bool {
	c := s.slot(i)
	pk := c.pending.shift(int(c.npending))
	c.npending--
	if lastTs, lastPort := lastSettled(s.progress(i, len(t.doors))); lastTs != 0 {
		// A copy of the knock settled last, read after it was settled, with nothing between.
		if last := newPending(lastTs, lastPort, 0, 0, 0); t.duplicate(&last, &pk) {
			return false
		}
	}
	return t.applyAll(s, i, c, pk, out)
}

// applyAll applies one knock to every door of a client, and reports whether it ended the
// client's knocks: a ban, or with keys the end of its attempt. Its progress and its knocks still
// pending end then, so that nothing queued behind the ban, or sent with the spent challenge, can
// unlock. With out nil it replays a knock whose events were reported already.
func (t *tracker) applyAll(s *shard, i int32, c *client, pk pendingKnock, out *outbox) bool {
	ps := s.progress(i, len(t.doors))
	stray, failed, unlocked := true, false, false
	rightFor := -1        // the first door for which this knock was right (or its first port, starting it over)
	var failElapsed int64 // of the attempt this knock ended
	var mark int          // this knock's events start here
	if out != nil {
		mark = len(out.events)
	}
	for d := range t.doors {
		if !t.open(d) {
			continue
		}
		had := ps[d].step > 0
		first := ps[d].first
		v, why := t.doors[d].apply(&ps[d], &pk)
		if v != verdictRejected || had {
			stray = false
		}
		if (v == verdictAdvanced || v == verdictUnlocked) && rightFor < 0 {
			rightFor = d // with a failure reason: the door's first port, after a wrong or late knock
		}
		if out == nil {
			continue
		}
		if why != reasonNone && had {
			failed = true
			failElapsed = max(failElapsed, pk.ts-first)
			out.add(event{kind: eventFail, reason: why, door: uint16(d), from: c.key, srcPort: pk.srcPort, port: pk.spec(), ts: pk.ts, elapsed: pk.ts - first})
		}
		if v == verdictUnlocked && t.take(d) {
			unlocked = true
			e := event{kind: eventUnlock, door: uint16(d), from: c.key, srcPort: pk.srcPort, port: pk.spec(), ts: pk.ts, elapsed: pk.ts - ps[d].first}
			if t.auth {
				a := s.authOf(i)
				e.conf = &confirmInfo{nonceS: a.nonceS, keyID: a.keyID, local: a.local}
			}
			out.add(e)
		}
	}
	if out == nil {
		return false
	}
	if failed && rightFor >= 0 { // failed: this knock added a fail event to mark
		for j := range out.events[mark:] {
			if e := &out.events[mark+j]; e.kind == eventFail {
				e.rightFor = uint16(rightFor + 1)
			}
		}
	}
	banned := false
	if stray {
		banned = t.strayFailure(s, c.key, &pk, out)
		failed = true
	} else if failed && rightFor < 0 && t.bans.fail(c.key, pk.ts) {
		// A knock that is right for some door (another that shares the port, or the first port
		// starting its own door over) is no failed guess: else knocking one door, or starting
		// over after a broken attempt, would ban an honest client in time.
		banned = true
		out.add(event{kind: eventFail, reason: reasonBanned, door: t.roles.of(pk.spec()).door, from: c.key, srcPort: pk.srcPort, port: pk.spec(), ts: pk.ts, elapsed: failElapsed})
	}
	ended := banned || t.auth && (unlocked || failed) && !t.inProgress(ps, pk.ts)
	if ended {
		// The attempt is over (unless it goes on at another door, one that shares a first port
		// or a prefix with the door it opened or failed). With keys its challenge is spent:
		// another needs a new hello.
		if t.auth {
			*s.authOf(i) = authState{}
		}
		clear(ps)
		c.npending = 0
	}
	return ended
}

// inProgress reports whether a client has an attempt under way at now on some door.
func (t *tracker) inProgress(ps []progress, now int64) bool {
	for d := range ps {
		if t.underWay(d, &ps[d], now) {
			return true
		}
	}
	return false
}

// underWay reports whether p is an attempt on door d still in force at now: begun, within the
// door's timeouts, on a door that can open.
func (t *tracker) underWay(d int, p *progress, now int64) bool {
	r := &t.doors[d]
	return p.step > 0 && t.open(d) && now-p.last <= r.timeout && (r.seqTimeout == 0 || now-p.first <= r.seqTimeout)
}

// open reports whether door d can unlock: a one-time door cannot between its unlock and its
// next sequence.
func (t *tracker) open(d int) bool { return t.doors[d].spent == nil || !t.doors[d].spent.Load() }

// take claims door d's unlock: for a one-time door, only the first unlock of a sequence.
func (t *tracker) take(d int) bool {
	return t.doors[d].spent == nil || t.doors[d].spent.CompareAndSwap(false, true)
}

// setSequence gives a one-time door its next sequence: every shard is locked, so no knock sees
// half of it, and every client's progress on the door starts over.
func (t *tracker) setSequence(d int, seq []portSpec) {
	for i := range t.shards {
		t.shards[i].mu.Lock()
	}
	t.doors[d].seq = seq
	for i := range t.shards {
		s := &t.shards[i]
		for j := s.head; j != noSlot; j = s.slot(j).next {
			s.progress(j, len(t.doors))[d] = progress{}
		}
	}
	t.doors[d].spent.Store(false)
	for i := range t.shards {
		t.shards[i].mu.Unlock()
	}
}

// sweep settles what the reorder window has passed and forgets what there is no need to
// remember: stale entries expire on their own, not only when the same client knocks again.
func (t *tracker) sweep(now int64) {
	out := newOutbox(len(t.doors))
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for j := s.head; j != noSlot; {
			c := s.slot(j)
			next := c.next
			if c.npending > 0 {
				t.settle(s, j, now-reorderWindow, out)
			}
			if c.npending == 0 && t.idle(c, s.progress(j, len(t.doors)), now) && !t.challenged(s, j, now) {
				s.remove(j)
			}
			j = next
		}
		for j, tag := range s.firstTags { // a byte a slot: the free ones cost nothing more
			if tag == 0 {
				continue
			}
			switch f := &s.firsts[j]; {
			case !f.pk.settled() && f.pk.latest() < now-reorderWindow:
				t.settleFirst(s, j, out)
			case f.pk.settled() && now-f.pk.ts > 2*t.maxGap:
				s.clearFirst(j)
			}
		}
		for j := range s.chals {
			if c := &s.chals[j]; c.state.issued != 0 && now-c.state.issued > t.maxGap+t.maxSkew {
				c.state = authState{}
			}
		}
		s.mu.Unlock()
		t.flush(out) // outside the lock, like every emit
	}
}

// idle reports whether a client has nothing left to remember. An attempt in progress is kept for
// twice its door's timeout, so that a late knock is still reported as a timeout rather than a
// wrong port; a client without one only as long as a retransmission could follow and be read
// (a second, and the reorder window): else a late copy of its last knock is a wrong first knock.
func (t *tracker) idle(c *client, ps []progress, now int64) bool {
	for d := range ps {
		if ps[d].step > 0 && now-ps[d].last <= 2*t.doors[d].timeout {
			return false
		}
	}
	last, _ := lastSettled(ps)
	return now-last > int64(time.Second)+reorderWindow
}

// challenged reports whether a client record holds a challenge still in force: a hello from
// an address with a record (an attempt just over, say) puts its challenge there, and forgetting
// the record would drop the challenge between the hello and its knocks.
func (t *tracker) challenged(s *shard, i int32, now int64) bool {
	if !t.auth {
		return false
	}
	a := s.authOf(i)
	return a.issued != 0 && now-a.issued <= t.maxGap+t.maxSkew
}

// lastSettled is a client's last settled knock that some door counted or refused: every door
// keeps its own last knock, and the latest of them is the client's.
func lastSettled(ps []progress) (int64, portSpec) {
	var last int64
	var port portSpec
	for i := range ps {
		if ps[i].last > last {
			last, port = ps[i].last, ps[i].lastPort
		}
	}
	return last, port
}

// clients reports how many client records exist now.
func (t *tracker) clients() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.index)
		s.mu.Unlock()
	}
	return n
}

// =============================================================================================
// Bans
//
// Failures are counted per source (an IPv6 source counts as its --ban-prefix6 prefix) in a
// count-min sketch, and bans kept in a second sketch of end times: fixed tables, made at start,
// in which nothing is ever evicted. A sketch never undercounts: a flood of spoofed wrong knocks
// can neither lift a ban nor push a guessing address's failures out; each further
// --ban-after failures ban it again. What a flood can do is make innocent addresses share cells
// with the flood's, and so count or ban some of them wrongly: with a width of four times
// --max-clients cells per row and four rows, an innocent's first failure during a flood of
// 200,000 spoofed wrong knocks bans it with a probability near 0.1 %. In plain mode a spoofer
// can ban any address it likes anyway, by sending wrong knocks from it; with keys only
// authenticated knocks can fail, so only key holders count.

const banRows = 4

type banKey addrKey

type bans struct {
	after   uint32
	window  int64
	length  int64
	prefix6 int
	epoch   int64 // the time bans' end times count from (unix ns)
	seeds   [banRows]maphash.Seed
	mask    uint64

	mu       sync.Mutex // the failure counts
	cur, old [][]uint16 // [row][cell]: this window's failures and the last one's
	rotated  int64

	until [][]atomic.Uint32 // [row][cell]: a ban's end, in seconds after epoch
}

func newBans(c *config, _ int) *bans {
	b := &bans{after: uint32(c.banAfter), window: int64(c.banWindow), length: int64(c.banTime), prefix6: c.banPrefix6, epoch: time.Now().UnixNano()}
	if b.after == 0 {
		return b
	}
	width := 4096
	for width < 4*c.maxClients {
		width *= 2
	}
	b.mask = uint64(width - 1)
	for r := range banRows {
		b.seeds[r] = maphash.MakeSeed()
		b.cur = append(b.cur, offHeap[uint16](b, width))
		b.old = append(b.old, offHeap[uint16](b, width))
		b.until = append(b.until, offHeap[atomic.Uint32](b, width))
	}
	return b
}

// keyOf is what a ban covers: an IPv4 address, or an IPv6 address's --ban-prefix6 prefix.
func (b *bans) keyOf(k addrKey) banKey {
	if k.is4() {
		return banKey(k)
	}
	if pfx, err := k.addr().Prefix(b.prefix6); err == nil {
		return banKey(keyOf(pfx.Addr()))
	}
	return banKey(k)
}

func (b *bans) cell(r int, k banKey) uint64 { return maphash.Comparable(b.seeds[r], k) & b.mask }

// banned reports whether a source is banned at ts: every one of its cells says so.
func (b *bans) banned(from addrKey, ts int64) bool {
	if b.after == 0 {
		return false
	}
	k, now := b.keyOf(from), b.seconds(ts)
	for r := range banRows {
		if b.until[r][b.cell(r, k)].Load() <= now {
			return false
		}
	}
	return true
}

func (b *bans) seconds(ts int64) uint32 { return uint32(max(0, (ts-b.epoch)/int64(time.Second))) }

// fail counts a failed attempt and reports whether it bans the source: at every --ban-after
// failures within --ban-window (counted over this window and the last one).
func (b *bans) fail(from addrKey, ts int64) bool {
	if b.after == 0 {
		return false
	}
	k := b.keyOf(from)
	b.mu.Lock()
	b.rotate(ts)
	var cells [banRows]uint64
	estimate := uint32(math.MaxUint32)
	for r := range banRows {
		cells[r] = b.cell(r, k)
		estimate = min(estimate, uint32(b.cur[r][cells[r]])+uint32(b.old[r][cells[r]]))
	}
	for r := range banRows { // conservative update: only the cells that hold the estimate grow
		if c := &b.cur[r][cells[r]]; uint32(*c)+uint32(b.old[r][cells[r]]) == estimate && *c < math.MaxUint16 {
			*c++
		}
	}
	b.mu.Unlock()
	if (estimate+1)%b.after != 0 {
		return false
	}
	until := b.seconds(ts+b.length) + 1
	for r := range banRows {
		u := &b.until[r][cells[r]]
		for old := u.Load(); old < until && !u.CompareAndSwap(old, until); old = u.Load() {
		}
	}
	return true
}

// rotate starts a new counting window when the current one is over.
func (b *bans) rotate(ts int64) {
	if ts-b.rotated < b.window {
		return
	}
	stale := ts-b.rotated >= 2*b.window
	b.cur, b.old = b.old, b.cur
	for r := range banRows {
		clear(b.cur[r])
		if stale {
			clear(b.old[r])
		}
	}
	b.rotated = ts
}

// =============================================================================================
// Tokens: the authenticated wire format and keys
//
// With --secret-file (one shared key) or --keys (one key per user), every knock is a 64-byte
// UDP datagram, and an attempt runs in four steps (big-endian integers; MAC is the first 16
// bytes of HMAC-SHA256 keyed by the key file's bytes, white space around them removed):
//
//	HELLO      client -> server, to the door's first port
//	 0  2 "KK"   2 1 version 2   3 1 'H'
//	 4  8 key id: the first 8 bytes of SHA-256("knockknock key id" || key)
//	12  8 client time, unix milliseconds (the server accepts it within --max-skew)
//	20 16 client nonce, random
//	36 12 zero
//	48 16 MAC('H' || destination port (2) || bytes 4-35)
//
//	CHALLENGE  server -> client, from that port, to the hello's source
//	 0 "KK" 2 'C'   4 16 server nonce, random, fresh for this attempt
//	20 16 the client's address as the server saw it (IPv4 as ::ffff:a.b.c.d)
//	36  2 the client's source port as the server saw it
//	38 10 zero
//	48 16 MAC('C' || client nonce (16) || bytes 4-37)
//
//	KNOCK      client -> server, one to each port of the sequence, in order
//	 0 "KK" 2 'K'   4 8 key id   12 1 position in the sequence, from 0   13 35 zero
//	48 16 MAC('K' || position (1) || destination port (2) || server nonce (16) || client address as seen (16))
//
//	CONFIRM    server -> client, from the final port, to the final knock's source, once
//	           on_unlock (and on_flush) returned
//	 0 "KK" 2 'A'   4 1 status: 0 unlocked, 1 the hook failed
//	 5 1 door name length   6 32 door name, zero padded   38 10 zero
//	48 16 MAC('A' || server nonce (16) || bytes 4-37)
//
// Every MAC input fits one SHA-256 block, so a check costs two compressions. The server looks a
// key up by its id, keeps the server nonce of each address's attempt in the tracker, and
// answers nothing that fails a check. A token is bound to the server nonce (worthless after its
// attempt, after a restart, at another server) and to the address that sent the hello (worthless
// from anywhere else); each position is accepted once. Answers are never larger than the
// datagram that caused them.

const (
	wireLen     = 64
	wireVersion = 2
	wireMACAt   = 48
	macLen      = 16
	keyIDLen    = 8
	nonceLen    = 16
)

const (
	msgHello     = 'H'
	msgChallenge = 'C'
	msgKnock     = 'K'
	msgConfirm   = 'A'
)

const (
	confirmUnlocked   = 0
	confirmHookFailed = 1
)

const keyIDLabel = "knockknock key id"

// macKey is a key's HMAC-SHA256 state after the inner and outer pads, marshalled, so that a MAC
// costs two compressions and no allocation.
type macKey struct{ inner, outer []byte }

func newMACKey(key []byte) macKey {
	if len(key) > sha256.BlockSize {
		sum := sha256.Sum256(key)
		key = sum[:]
	}
	var ipad, opad [sha256.BlockSize]byte
	copy(ipad[:], key)
	copy(opad[:], key)
	for i := range ipad {
		ipad[i] ^= 0x36
		opad[i] ^= 0x5c
	}
	state := func(pad []byte) []byte {
		h := sha256.New()
		h.Write(pad)
		b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			panic(err) // crypto/sha256 always marshals
		}
		return b
	}
	return macKey{inner: state(ipad[:]), outer: state(opad[:])}
}

// macScratch computes MACs with any macKey. It is not safe for concurrent use: each listener
// and each client owns one.
type macScratch struct {
	in, out hash.Hash
	buf     [64]byte
	sum     [sha256.Size]byte
}

func newMACScratch() *macScratch { return &macScratch{in: sha256.New(), out: sha256.New()} }

// mac returns the first macLen bytes of HMAC-SHA256 over msg.
func (m *macScratch) mac(k *macKey, msg []byte) []byte {
	m.in.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.inner)
	m.in.Write(msg)
	inner := m.in.Sum(m.sum[:0])
	m.out.(encoding.BinaryUnmarshaler).UnmarshalBinary(k.outer)
	m.out.Write(inner)
	return m.out.Sum(m.sum[:0])[:macLen]
}

// userKey is one key: a user's, or the one shared key (name "").
type userKey struct {
	name string
	id   [keyIDLen]byte
	mac  macKey
}

func newUserKey(name string, secret []byte) *userKey {
	sum := sha256.Sum256(append([]byte(keyIDLabel), secret...))
	k := &userKey{name: name, mac: newMACKey(secret)}
	copy(k.id[:], sum[:keyIDLen])
	return k
}

// keyring is the set of keys, immutable once made: SIGHUP swaps in a new one.
type keyring struct {
	byID   map[[keyIDLen]byte]*userKey
	shared bool // --secret-file: one key without a user name
}

func (r *keyring) lookup(id []byte) *userKey {
	if r == nil {
		return nil
	}
	return r.byID[[keyIDLen]byte(id)]
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding: pure functions of their arguments.

func wireHeader(b []byte, typ byte) {
	b[0], b[1], b[2], b[3] = 'K', 'K', wireVersion, typ
}

// wireType returns a datagram's message type, or 0 when it is not a version-2 message.
func wireType(b []byte) byte {
	if len(b) != wireLen || b[0] != 'K' || b[1] != 'K' || b[2] != wireVersion {
		return 0
	}
	return b[3]
}

// zero reports whether b is all zero bytes: padding must be, so that no field hides in it.
func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// helloMAC, challengeMAC, knockMAC and confirmMAC assemble each message's MAC input.
func helloMAC(m *macScratch, k *macKey, b []byte, dstPort uint16) []byte {
	in := append(m.buf[:0], msgHello)
	in = binary.BigEndian.AppendUint16(in, dstPort)
	return m.mac(k, append(in, b[4:36]...))
}

func challengeMAC(m *macScratch, k *macKey, b []byte, nonceC []byte) []byte {
	in := append(m.buf[:0], msgChallenge)
	in = append(in, nonceC...)
	return m.mac(k, append(in, b[4:38]...))
}

func knockMAC(m *macScratch, k *macKey, pos byte, dstPort uint16, nonceS []byte, client addrKey) []byte {
	in := append(m.buf[:0], msgKnock, pos)
	in = binary.BigEndian.AppendUint16(in, dstPort)
	in = append(in, nonceS...)
	return m.mac(k, append(in, client[:]...))
}

func confirmMAC(m *macScratch, k *macKey, b []byte, nonceS []byte) []byte {
	in := append(m.buf[:0], msgConfirm)
	in = append(in, nonceS...)
	return m.mac(k, append(in, b[4:38]...))
}

// encodeHello writes a hello into b (wireLen bytes).
func encodeHello(b []byte, m *macScratch, k *userKey, dstPort uint16, unixMilli int64, nonceC []byte) {
	clear(b[:wireLen])
	wireHeader(b, msgHello)
	copy(b[4:12], k.id[:])
	binary.BigEndian.PutUint64(b[12:20], uint64(unixMilli))
	copy(b[20:36], nonceC)
	copy(b[wireMACAt:], helloMAC(m, &k.mac, b, dstPort))
}

type hello struct {
	keyID     []byte
	unixMilli int64
	nonceC    []byte
}

// decodeHello checks a hello's MAC with the key its id names; keys may be nil.
func decodeHello(b []byte, m *macScratch, keys *keyring, dstPort uint16) (hello, *userKey, dropReason) {
	if wireType(b) != msgHello || !zero(b[36:wireMACAt]) {
		return hello{}, nil, dropMalformed
	}
	h := hello{keyID: b[4:12], unixMilli: int64(binary.BigEndian.Uint64(b[12:20])), nonceC: b[20:36]}
	k := keys.lookup(h.keyID)
	if k == nil {
		return h, nil, dropUnknownKey
	}
	if subtle.ConstantTimeCompare(helloMAC(m, &k.mac, b, dstPort), b[wireMACAt:]) != 1 {
		return h, nil, dropBadMAC
	}
	return h, k, dropNone
}

// encodeChallenge writes a challenge into b (wireLen bytes).
func encodeChallenge(b []byte, m *macScratch, k *macKey, nonceC, nonceS []byte, client netip.AddrPort) {
	clear(b[:wireLen])
	wireHeader(b, msgChallenge)
	copy(b[4:20], nonceS)
	a := keyOf(client.Addr())
	copy(b[20:36], a[:])
	binary.BigEndian.PutUint16(b[36:38], client.Port())
	copy(b[wireMACAt:], challengeMAC(m, k, b, nonceC))
}

type challengeMsg struct {
	nonceS []byte
	seen   netip.AddrPort
}

// decodeChallenge is the client's side: it checks the MAC against the hello it sent.
func decodeChallenge(b []byte, m *macScratch, k *macKey, nonceC []byte) (challengeMsg, bool) {
	if wireType(b) != msgChallenge || !zero(b[38:wireMACAt]) || subtle.ConstantTimeCompare(challengeMAC(m, k, b, nonceC), b[wireMACAt:]) != 1 {
		return challengeMsg{}, false
	}
	seen := netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[20:36])).Unmap(), binary.BigEndian.Uint16(b[36:38]))
	return challengeMsg{nonceS: b[4:20], seen: seen}, true
}

// encodeKnock writes the token for the knock at position pos on dstPort into b.
func encodeKnock(b []byte, m *macScratch, k *userKey, pos int, dstPort uint16, nonceS []byte, seen netip.Addr) {
	clear(b[:wireLen])
	wireHeader(b, msgKnock)
	copy(b[4:12], k.id[:])
	b[12] = byte(pos)
	copy(b[wireMACAt:], knockMAC(m, &k.mac, byte(pos), dstPort, nonceS, keyOf(seen)))
}

// knockToken is a knock datagram's fields; its MAC is checked against the client's challenge.
type knockToken struct {
	keyID []byte
	pos   byte
	mac   []byte
}

func decodeKnock(b []byte) (knockToken, bool) {
	if wireType(b) != msgKnock || !zero(b[13:wireMACAt]) {
		return knockToken{}, false
	}
	return knockToken{keyID: b[4:12], pos: b[12], mac: b[wireMACAt:]}, true
}

// encodeConfirm writes a confirmation into b.
func encodeConfirm(b []byte, m *macScratch, k *macKey, nonceS []byte, status byte, doorName string) {
	clear(b[:wireLen])
	wireHeader(b, msgConfirm)
	b[4] = status
	n := copy(b[6:38], doorName)
	b[5] = byte(n)
	copy(b[wireMACAt:], confirmMAC(m, k, b, nonceS))
}

type confirmMsg struct {
	status byte
	door   string
}

func decodeConfirm(b []byte, m *macScratch, k *macKey, nonceS []byte) (confirmMsg, bool) {
	if wireType(b) != msgConfirm || b[5] > 32 || !zero(b[6+b[5]:wireMACAt]) || subtle.ConstantTimeCompare(confirmMAC(m, k, b, nonceS), b[wireMACAt:]) != 1 {
		return confirmMsg{}, false
	}
	return confirmMsg{status: b[4], door: string(b[6 : 6+b[5]])}, true
}

// ---------------------------------------------------------------------------------------------
// The tracker's side: hellos make challenges, knocks are checked against them.

// hello answers an authenticated hello: a new challenge for the address, or, for a hello it has
// seen (a retransmission or a replay), the challenge it already issued. A new hello from a
// client with an attempt in progress starts the attempt afresh.
func (t *tracker) hello(from netip.AddrPort, local netip.Addr, h *hello, k *userKey, now int64, reply []byte, m *macScratch) dropReason {
	if skew := now/int64(time.Millisecond) - h.unixMilli; skew > t.maxSkew/int64(time.Millisecond) || -skew > t.maxSkew/int64(time.Millisecond) {
		return dropSkew
	}
	key := keyOf(from.Addr())
	if t.bans.banned(key, now) {
		return dropBanned
	}
	hs := t.hash(key)
	s := t.shardOf(hs)
	s.mu.Lock()
	defer s.mu.Unlock()
	var st *authState
	if i, ok := s.index[key]; ok {
		st = s.authOf(i)
		if st.issued != 0 && !bytes.Equal(st.nonceC[:], h.nonceC) {
			if h.unixMilli <= st.hello && (st.used != 0 || bytes.Equal(st.keyID[:], k.id[:])) {
				// An older hello, captured and sent again, must not reset the attempt. Another
				// key's hello may replace an attempt that has not knocked yet: else one key
				// holder's hello dated ahead, sent from another's address, would hold that
				// address off until its date.
				return dropStaleHello
			}
			clear(s.progress(i, len(t.doors)))
			s.slot(i).npending = 0
			*st = authState{}
		}
	} else {
		b := bucket(s.chals, hs)
		victim := &b[0]
		for j := range b {
			c := &b[j]
			if c.state.issued != 0 && c.key == key {
				victim = c
				break
			}
			if victim.state.issued != 0 && (c.state.issued == 0 || c.state.issued < victim.state.issued) {
				victim = c
			}
		}
		switch {
		case victim.key == key && victim.state.issued != 0 && bytes.Equal(victim.state.nonceC[:], h.nonceC):
		case victim.key == key && victim.state.issued != 0 && h.unixMilli <= victim.state.hello && bytes.Equal(victim.state.keyID[:], k.id[:]):
			return dropStaleHello // only a knock moves a challenge to a client record: no attempt here has knocked
		default:
			*victim = challenge{key: key}
		}
		st = &victim.state
	}
	if st.issued == 0 {
		if _, err := rand.Read(st.nonceS[:]); err != nil {
			return dropMalformed
		}
		copy(st.nonceC[:], h.nonceC)
		st.keyID, st.local, st.issued, st.hello = k.id, keyOf(local), now, h.unixMilli
	}
	encodeChallenge(reply, m, &k.mac, h.nonceC, st.nonceS[:], from)
	return dropNone
}

// authKnock checks an authenticated knock against the challenge of the address it came from,
// then records it as a knock. A challenge becomes a client record at its first good knock.
func (t *tracker) authKnock(k *knock, tok *knockToken, m *macScratch, out *outbox) dropReason {
	if t.bans.banned(k.from, k.ts) {
		return dropBanned
	}
	h := t.hash(k.from)
	s := t.shardOf(h)
	s.mu.Lock()
	i, isClient := s.index[k.from]
	var st *authState
	var chal *challenge
	if isClient {
		st = s.authOf(i)
	} else {
		b := bucket(s.chals, h)
		for j := range b {
			if b[j].state.issued != 0 && b[j].key == k.from {
				chal = &b[j]
				st = &chal.state
			}
		}
	}
	why := t.checkToken(st, k, tok, m)
	if why != dropNone {
		s.mu.Unlock()
		return why
	}
	if chal != nil {
		if i = t.newClient(s, k.from, 1, k.ts, out.trial); i == noSlot {
			s.mu.Unlock()
			return dropNone // counted in refused; the challenge stays for a later knock
		}
		chal.state.used |= 1 << tok.pos
		*s.authOf(i) = chal.state
		chal.state = authState{}
	} else {
		st.used |= 1 << tok.pos
		s.touch(i)
	}
	pk := t.pending(k)
	t.reportKnock(s, h, k, &pk, out)
	t.add(s, i, pk, out)
	s.mu.Unlock()
	t.flush(out)
	return dropNone
}

// checkToken runs the checks in order of cost; the MAC is last but one, so that nothing but a
// genuine token of this attempt reaches the tracker.
func (t *tracker) checkToken(st *authState, k *knock, tok *knockToken, m *macScratch) dropReason {
	switch {
	case st == nil || st.issued == 0:
		return dropNoChallenge
	case !bytes.Equal(st.keyID[:], tok.keyID):
		return dropNoChallenge
	case tok.pos >= 64:
		return dropPosition
	}
	key := t.keys.Load().lookup(tok.keyID)
	if key == nil {
		return dropUnknownKey // revoked since the hello
	}
	if subtle.ConstantTimeCompare(knockMAC(m, &key.mac, tok.pos, k.port.port, st.nonceS[:], k.from), tok.mac) != 1 {
		return dropBadMAC
	}
	fits := false
	for d := range t.doors {
		seq := t.doors[d].seq
		fits = fits || int(tok.pos) < len(seq) && seq[tok.pos] == k.port
	}
	switch {
	case !fits:
		return dropPosition
	case st.used&(1<<tok.pos) != 0:
		return dropReplay
	}
	return dropNone
}

// ---------------------------------------------------------------------------------------------
// Key files

const (
	minKeyLen     = 16
	minKeyEntropy = 56 // bits, estimated from the key's own byte frequencies
	maxKeyFile    = 64 << 10
	maxUsers      = 100000
)

// loadKeys reads --secret-file (one shared key) or --keys (a file of "NAME KEY" lines, or a
// directory of key files named after their users).
func loadKeys(src keySource) (*keyring, error) {
	r := &keyring{byID: map[[keyIDLen]byte]*userKey{}}
	add := func(name string, secret []byte) error {
		if err := checkKeyStrength(secret); err != nil {
			if name != "" {
				return fmt.Errorf("user %s: %v", name, err)
			}
			return err
		}
		k := newUserKey(name, secret)
		if other, dup := r.byID[k.id]; dup {
			return fmt.Errorf("users %s and %s have the same key", other.name, name)
		}
		if len(r.byID) >= maxUsers {
			return fmt.Errorf("more than %d keys", maxUsers)
		}
		r.byID[k.id] = k
		return nil
	}
	if src.flag == "--secret-file" {
		secret, err := readSecretFile(src.path)
		if err != nil {
			return nil, err
		}
		r.shared = true
		return r, add("", secret)
	}
	f, info, err := openPrivate(src.path, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if info.IsDir() {
		entries, err := f.ReadDir(-1)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", src.path, err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			if err := checkUserName(e.Name()); err != nil {
				return nil, fmt.Errorf("%s: %v", filepath.Join(src.path, e.Name()), err)
			}
			secret, err := readSecretFile(filepath.Join(src.path, e.Name()))
			if err != nil {
				return nil, err
			}
			if err := add(e.Name(), secret); err != nil {
				return nil, fmt.Errorf("%s: %v", src.path, err)
			}
		}
	} else {
		text, err := io.ReadAll(io.LimitReader(f, 64<<20))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", src.path, err)
		}
		names := map[string]bool{}
		for n, line := range strings.Split(string(text), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, secret, _ := strings.Cut(line, " ")
			secret = strings.TrimSpace(secret)
			err := checkUserName(name)
			switch {
			case err != nil:
			case secret == "":
				err = errors.New("want NAME KEY")
			case names[name]:
				err = fmt.Errorf("user %s appears twice", name)
			default:
				err = add(name, []byte(secret))
			}
			if err != nil {
				return nil, fmt.Errorf("%s line %d: %v", src.path, n+1, err)
			}
			names[name] = true
		}
	}
	if len(r.byID) == 0 {
		return nil, fmt.Errorf("%s holds no key", src.path)
	}
	return r, nil
}

func checkUserName(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("a user name has 1 to 64 characters")
	}
	for _, r := range name {
		if !(r == '_' || r == '-' || r == '.' || r == '@' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("user name %q: use letters, digits, '_', '-', '.' and '@'", name)
		}
	}
	return nil
}

// readSecretFile reads one key: the file's bytes without surrounding white space.
func readSecretFile(path string) ([]byte, error) {
	f, _, err := openPrivate(path, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(raw) > maxKeyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key", path, maxKeyFile)
	}
	secret := bytes.TrimSpace(raw)
	if err := checkKeyStrength(secret); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return secret, nil
}

// openPrivate opens a key file or directory once and checks the open file, not the name: it
// must be a regular file (or, where dirOK, a directory), owned by this user, with no access
// for group or others. It never blocks on a FIFO or device.
func openPrivate(path string, dirOK bool) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, errors.Unwrap(err))
	}
	info, err := f.Stat()
	if err == nil {
		err = checkPrivate(path, info, dirOK)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info, nil
}

func checkPrivate(path string, info os.FileInfo, dirOK bool) error {
	if !info.Mode().IsRegular() && !(dirOK && info.IsDir()) {
		return fmt.Errorf("%s is %s: a key must be a regular file", path, fileKind(info.Mode()))
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d: it must belong to the server's user (uid %d)", path, st.Uid, os.Geteuid())
	}
	perm := info.Mode().Perm()
	if info.IsDir() && perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: group and others must have no access (chmod 700 %s)", path, perm, path)
	}
	if !info.IsDir() && perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	return nil
}

// checkKeyStrength refuses short keys and keys whose bytes are too repetitive to be random
// (16 equal bytes, "abababab..."): the estimate is the key's length times the Shannon entropy of
// its own byte frequencies. A key from keygen has about 250 bits.
func checkKeyStrength(key []byte) error {
	if len(key) < minKeyLen {
		return fmt.Errorf("the key has %d bytes: at least %d (make one with knockknock keygen)", len(key), minKeyLen)
	}
	if bitsOf := keyEntropy(key); bitsOf < minKeyEntropy {
		return fmt.Errorf("the key has about %.0f bits of entropy: at least %d (make one with knockknock keygen)", bitsOf, minKeyEntropy)
	}
	return nil
}

func keyEntropy(key []byte) float64 {
	var counts [256]int
	for _, b := range key {
		counts[b]++
	}
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / float64(len(key))
			h -= p * math.Log2(p)
		}
	}
	return h * float64(len(key))
}

// =============================================================================================
// The intake
//
// Both sources, bound sockets and capture, turn what they read into the same knock value and
// hand it to intake.accept: the one place that filters, authenticates and counts what it drops,
// by reason, before the tracker sees anything.

// knock is one datagram or segment on a watched port.
type knock struct {
	from    addrKey
	to      netip.Addr // the address it was sent to; invalid when the platform cannot say
	srcPort uint16
	port    portSpec
	flags   uint8 // TCP flags
	ts      int64 // when the kernel received it (unix ns)
}

type dropReason uint8

const (
	dropNone            dropReason = iota
	dropFiltered                   // not a watched port or listen address, a TCP segment no door counts, a fragment
	dropUnauthenticated            // a plain knock where keys are required
	dropMalformed                  // not a well-formed message
	dropUnknownKey                 // a key id that is not (or no longer) in the keys
	dropBadMAC                     // a MAC that does not match
	dropSkew                       // a hello outside --max-skew
	dropNoChallenge                // a knock from an address without a challenge for its key
	dropPosition                   // a position that does not name this port in any door
	dropReplay                     // a position this attempt has knocked already
	dropStaleHello                 // a hello no later than the one the address's attempt began with
	dropBanned                     // from a banned source
	nDropReasons
)

var dropNames = [nDropReasons]string{"", "filtered", "unauthenticated", "malformed", "unknown_key", "bad_mac", "clock_skew", "no_challenge", "wrong_position", "replay", "stale_hello", "banned"}

func (d dropReason) String() string { return dropNames[d] }

type intake struct {
	tracker   *tracker
	roles     *portRoles
	listen    []netip.Addr
	tcpCounts [256]bool // whether any door counts a TCP segment with these flags
	auth      bool
	drops     [nDropReasons]atomic.Uint64
	rejects   *rejectLog // -v with keys: log each rejected authenticated datagram; nil: don't
}

func newIntake(c *config, t *tracker) *intake {
	in := &intake{tracker: t, roles: t.roles, listen: c.listen, auth: c.keys != nil}
	for f := range in.tcpCounts {
		for d := range t.doors {
			in.tcpCounts[f] = in.tcpCounts[f] || t.doors[d].flags.match(uint8(f))
		}
		in.tcpCounts[f] = in.tcpCounts[f] || defaultTCPFlags.match(uint8(f)) // decoys
	}
	return in
}

// scratch is what one reader goroutine owns for the intake: nothing here is shared.
type scratch struct {
	out   *outbox
	mac   *macScratch
	reply [wireLen]byte
}

func newScratch(ndoors int) *scratch { return &scratch{out: newOutbox(ndoors), mac: newMACScratch()} }

// accept handles one knock; payload is its UDP payload (nil for TCP). When it returns n > 0,
// sc.reply[:n] is to be sent back to the knock's source, from the port it was sent to.
func (in *intake) accept(k *knock, payload []byte, sc *scratch) int {
	n, why := in.check(k, payload, sc)
	if why != dropNone {
		in.drops[why].Add(1)
		if in.rejects != nil && why != dropFiltered && why != dropBanned {
			in.rejects.record(k, why, payload)
		}
	}
	return n
}

// rejectLog logs, with -v, each authenticated datagram the intake rejects and why: at most
// rejectLogsPerSecond lines a second, the rest counted in one line. Reader goroutines share it.
type rejectLog struct {
	log   *slog.Logger
	limit rateLimit
}

func newRejectLog(log *slog.Logger) *rejectLog {
	return &rejectLog{log: log, limit: rateLimit{log: log, what: "rejected datagrams", perSecond: rejectLogsPerSecond}}
}

const rejectLogsPerSecond = 200

// rejectHints say what a rejection usually means, in the log line.
var rejectHints = [nDropReasons]string{
	dropUnauthenticated: "a plain knock: the client must knock with the key (knock --secret-file)",
	dropMalformed:       "not a knockknock message of this version",
	dropUnknownKey:      "the key is not in the server's keys (or was revoked): the client's key differs",
	dropBadMAC:          "the MAC does not match the key its id names: another key, or a damaged datagram",
	dropSkew:            "the client's clock differs from the server's by more than --max-skew",
	dropNoChallenge:     "no challenge for this address and key: the hello was lost or expired, the attempt is over, or the knock comes from another address than its hello",
	dropPosition:        "the token names a position that is not this port in any door: the client knocks another sequence",
	dropReplay:          "this position was knocked already in this attempt: a retransmission or a replay",
	dropStaleHello:      "a hello no later than the one this address's attempt began with (same key, or an attempt that has knocked): a replay, or a client behind the same address (a NAT) whose clock is behind; a new attempt can begin once that one ends or is older than --max-skew",
}

func (r *rejectLog) record(k *knock, why dropReason, payload []byte) {
	if !r.limit.allow(time.Now()) {
		return
	}
	attrs := []any{"event", "reject", "ip", k.from.addr().String(), "port", int(k.port.port), "reason", why.String()}
	if why == dropSkew && len(payload) >= 20 { // a hello: its client time is at bytes 12-20
		sent := int64(binary.BigEndian.Uint64(payload[12:20]))
		attrs = append(attrs, "skew", (time.Duration(k.ts/int64(time.Millisecond)-sent) * time.Millisecond).String())
	}
	r.log.Info("authenticated datagram rejected", append(attrs, "hint", rejectHints[why])...)
}

func (in *intake) check(k *knock, payload []byte, sc *scratch) (int, dropReason) {
	if !in.roles.of(k.port).watched || k.port.proto == protoTCP && !in.tcpCounts[k.flags] {
		return 0, dropFiltered
	}
	if len(in.listen) > 0 && k.to.IsValid() && indexOfAddr(in.listen, k.to.Unmap()) < 0 {
		return 0, dropFiltered
	}
	if !in.auth {
		return 0, in.tracker.knock(k, sc.out)
	}
	switch wireType(payload) {
	case msgHello:
		h, key, why := decodeHello(payload, sc.mac, in.tracker.keys.Load(), k.port.port)
		if why == dropNone {
			why = in.tracker.hello(netip.AddrPortFrom(k.from.addr(), k.srcPort), k.to, &h, key, k.ts, sc.reply[:], sc.mac)
		}
		if why != dropNone {
			return 0, why
		}
		return wireLen, dropNone
	case msgKnock:
		tok, ok := decodeKnock(payload)
		if !ok {
			return 0, dropMalformed
		}
		return 0, in.tracker.authKnock(k, &tok, sc.mac, sc.out)
	case 0:
		if len(payload) == 0 {
			return 0, dropUnauthenticated
		}
	}
	return 0, dropMalformed
}

// =============================================================================================
// Platform details
//
// Socket options, control messages and system calls that differ between systems. Everything
// else is portable; these are chosen at run time, so that the one file builds for Linux, macOS
// and FreeBSD. Capture mode, kernel receive times, destination addresses are
// Linux-only; elsewhere knocks are timed when read.

const (
	receiveBuffer   = 8 << 20  // a bound knock socket's, one per port
	captureBuffer   = 32 << 20 // a raw socket's, which carries the knocks of every port
	solSocket       = 0x1      // Linux SOL_SOCKET
	soRcvbufForce   = 33       // Linux SO_RCVBUFFORCE: lets root raise the buffer past net.core.rmem_max
	soTimestampNS   = 35       // Linux SO_TIMESTAMPNS
	ipprotoIP       = 0
	ipprotoIPv6     = 41
	ipPktinfo       = 8  // Linux IP_PKTINFO
	ipv6RecvPktinfo = 49 // Linux IPV6_RECVPKTINFO
	ipv6Pktinfo     = 50 // Linux IPV6_PKTINFO
	ipv6Checksum    = 7  // Linux IPV6_CHECKSUM
	cmsgHeaderLen   = 16 // a cmsghdr on 64-bit Linux
)

// linux64 is true where the constants above, and 16-byte control message headers, hold.
var linux64 = runtime.GOOS == "linux" && map[string]bool{
	"amd64": true, "arm64": true, "riscv64": true, "ppc64le": true, "ppc64": true, "s390x": true, "loong64": true,
}[runtime.GOARCH]

// setSockopt sets an integer socket option through a syscall.RawConn.
func setSockopt(rc syscall.RawConn, level, opt, value int) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), level, opt, value) }); err != nil {
		return err
	}
	return serr
}

func getSockopt(rc syscall.RawConn, level, opt int) int {
	v := 0
	_ = rc.Control(func(fd uintptr) { v, _ = syscall.GetsockoptInt(int(fd), level, opt) })
	return v
}

// tuneReceive gives a socket a receive buffer of size bytes, kernel receive times and
// destination addresses (Linux); it reports the buffer the kernel granted (twice the size, on
// Linux), so that a caller can warn when it got less.
func tuneReceive(rc syscall.RawConn, family, size int) int {
	if !linux64 {
		return 0
	}
	if setSockopt(rc, solSocket, soRcvbufForce, size) != nil {
		_ = setSockopt(rc, solSocket, syscall.SO_RCVBUF, size) // capped at net.core.rmem_max
	}
	_ = setSockopt(rc, solSocket, soTimestampNS, 1)
	if family == syscall.AF_INET6 {
		_ = setSockopt(rc, ipprotoIPv6, ipv6RecvPktinfo, 1)
	}
	_ = setSockopt(rc, ipprotoIP, ipPktinfo, 1) // IPv4, and IPv4 on a dual-stack socket
	return getSockopt(rc, solSocket, syscall.SO_RCVBUF)
}

// stampGuard keeps kernel receive times on. Linux switches them on for the whole system when
// the first socket asks for them, a moment later, from a work queue, and off again when the
// last socket that asked closes. Meanwhile a datagram is stamped when it is read, not when it
// arrived, so knocks read from different sockets can come out of order: on a quiet host a
// server would misorder the knocks of its first milliseconds, and those right after a hook
// reopens the knock ports. The guard is a UDP socket, never bound (no port, nothing to read),
// that asks for receive times for the server's whole life; at start, wait probes until the
// kernel stamps on arrival.
type stampGuard struct{ fd int }

const stampWait = time.Second

func newStampGuard() (*stampGuard, error) {
	if !linux64 {
		return nil, nil
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		fd, err = syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open a UDP socket: %v", err)
	}
	syscall.CloseOnExec(fd) // the commands hooks run do not inherit it
	if err := syscall.SetsockoptInt(fd, solSocket, soTimestampNS, 1); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("cannot ask for kernel receive times: %v", err)
	}
	return &stampGuard{fd}, nil
}

// wait returns once a datagram sent over loopback is stamped on arrival, or reports false after
// stampWait. Where loopback cannot be used (a namespace whose lo is down) it does not wait.
func (g *stampGuard) wait() bool {
	if g == nil {
		return true
	}
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		if probe, err = net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
			return true
		}
	}
	defer probe.Close()
	rc, err := probe.SyscallConn()
	if err != nil || setSockopt(rc, solSocket, soTimestampNS, 1) != nil {
		return true
	}
	for deadline := time.Now().Add(stampWait); ; {
		if on, sure := stampsOnArrival(probe); on || !sure {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// stampsOnArrival sends a datagram to the probe's own socket and reads it a moment later:
// stamped on arrival, its time is within a millisecond of the send; stamped when read, it is
// later. sure is false when the probe itself failed.
func stampsOnArrival(probe *net.UDPConn) (on, sure bool) {
	const pause = 2 * time.Millisecond
	sent := time.Now()
	if _, err := probe.WriteToUDPAddrPort([]byte{0}, probe.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		return false, false
	}
	time.Sleep(pause)
	var b [1]byte
	var oob [128]byte
	_ = probe.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, oobn, _, _, err := probe.ReadMsgUDPAddrPort(b[:], oob[:])
	if err != nil {
		return false, false
	}
	return parseControl(oob[:oobn]).ts-sent.UnixNano() < int64(pause/2), true
}

func (g *stampGuard) close() {
	if g != nil {
		syscall.Close(g.fd)
	}
}

// controlData is what the kernel said about a datagram: when it arrived and where it was sent.
type controlData struct {
	ts int64
	to netip.Addr
}

// parseControl reads the control messages of a received datagram (linux64 layout). Anything
// it does not know, or that is cut short, is skipped.
func parseControl(oob []byte) controlData {
	var cd controlData
	for linux64 && len(oob) >= cmsgHeaderLen {
		size := binary.NativeEndian.Uint64(oob[0:8])
		level := int32(binary.NativeEndian.Uint32(oob[8:12]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:16]))
		if size < cmsgHeaderLen || size > uint64(len(oob)) {
			break
		}
		data := oob[cmsgHeaderLen:size]
		switch {
		case level == solSocket && typ == soTimestampNS && len(data) >= 16:
			sec := int64(binary.NativeEndian.Uint64(data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(data[8:16]))
			cd.ts = sec*int64(time.Second) + nsec
		case level == ipprotoIP && typ == ipPktinfo && len(data) >= 12: // in_pktinfo: ifindex, spec_dst, addr
			cd.to = netip.AddrFrom4([4]byte(data[8:12]))
		case level == ipprotoIPv6 && typ == ipv6Pktinfo && len(data) >= 16: // in6_pktinfo: addr, ifindex
			cd.to = netip.AddrFrom16([16]byte(data[0:16])).Unmap()
		}
		next := (size + 7) &^ 7
		if next > uint64(len(oob)) {
			break
		}
		oob = oob[next:]
	}
	if cd.ts == 0 {
		cd.ts = time.Now().UnixNano()
	}
	return cd
}

// sourceControl is the control message that sends a reply from a given local address: the
// address the client knocked (IPV6_PKTINFO takes IPv4-mapped addresses on a dual-stack
// socket; IP_PKTINFO on an IPv4 one). Elsewhere it is nil and the kernel chooses.
func sourceControl(from netip.Addr, family int) []byte {
	if !linux64 || !from.IsValid() {
		return nil
	}
	if family == syscall.AF_INET {
		b := make([]byte, cmsgHeaderLen+16) // in_pktinfo (12 bytes) padded to 8
		binary.NativeEndian.PutUint64(b[0:], cmsgHeaderLen+12)
		binary.NativeEndian.PutUint32(b[8:], ipprotoIP)
		binary.NativeEndian.PutUint32(b[12:], ipPktinfo)
		a := from.Unmap().As4()
		copy(b[cmsgHeaderLen+4:], a[:]) // ipi_spec_dst: the source address
		return b
	}
	b := make([]byte, cmsgHeaderLen+24) // in6_pktinfo (20 bytes) padded to 8
	binary.NativeEndian.PutUint64(b[0:], cmsgHeaderLen+20)
	binary.NativeEndian.PutUint32(b[8:], ipprotoIPv6)
	binary.NativeEndian.PutUint32(b[12:], ipv6Pktinfo)
	a := from.As16()
	copy(b[cmsgHeaderLen:], a[:])
	return b
}

// syscallCause is the system call's own error ("connection refused") without the operation and
// addresses around it, or err itself.
func syscallCause(err error) error {
	var serr *os.SyscallError
	if errors.As(err, &serr) {
		return serr.Err
	}
	return err
}

// bindError says which port failed and why, in words a user can act on.
func bindError(proto string, port int, err error) error {
	why := syscallCause(err).Error()
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		why = "address already in use (another process holds it)"
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		why = "permission denied"
		if port < 1024 {
			why += ": ports below 1024 need root or CAP_NET_BIND_SERVICE"
		}
	}
	return fmt.Errorf("cannot listen on %s port %d: %s", proto, port, why)
}

// procTracker owns what this process knows of the commands hooks run. On Linux the server is
// their subreaper (PR_SET_CHILD_SUBREAPER): a command's descendant whose parent exits, as a
// daemon's does, is adopted by the server instead of by init. So at the hook timeout kill finds
// and ends a command's whole tree, including what left its process group by setsid or by
// daemonizing, and reap collects the adopted processes that exit later (a daemon a hook started
// on purpose, and that returned in time, keeps running). Elsewhere only the group is killed.
type procTracker struct {
	mu        sync.Mutex
	subreaper bool
	used      bool         // a command has run: there may be orphans to reap
	waiting   map[int]bool // children an exec.Cmd waits for: never reaped here
}

var procs = &procTracker{waiting: map[int]bool{}}

const prSetChildSubreaper = 36

// prctlSyscall is SYS_PRCTL on the linux64 architectures.
var prctlSyscall = map[string]uintptr{"amd64": 157, "arm64": 167, "riscv64": 167, "loong64": 167, "ppc64": 171, "ppc64le": 171, "s390x": 172}[runtime.GOARCH]

// adoptOrphans makes this process the subreaper of its descendants (Linux).
func (p *procTracker) adoptOrphans() {
	if !linux64 || prctlSyscall == 0 {
		return
	}
	_, _, errno := syscall.RawSyscall(prctlSyscall, prSetChildSubreaper, 1, 0)
	p.mu.Lock()
	p.subreaper = errno == 0
	p.mu.Unlock()
}

// start starts cmd and returns its start time (clock ticks since boot, Linux; else 0). The
// lock keeps reap from taking the new child for an orphan before it is known.
func (p *procTracker) start(cmd *exec.Cmd) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	p.waiting[pid], p.used = true, true
	_, started, _, _ := procStat(pid)
	return started, nil
}

func (p *procTracker) done(pid int) {
	p.mu.Lock()
	delete(p.waiting, pid)
	p.mu.Unlock()
}

// kill ends a command that timed out: its process group, its descendants wherever they are,
// and, as subreaper, the orphans adopted since it started, with their descendants. What it
// finds may fork while it kills, so it looks again until a pass finds nothing left alive.
func (p *procTracker) kill(pid int, started uint64) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.subreaper {
		return
	}
	for pass := 0; pass < 50; pass++ {
		tree := procTree()
		victims := tree.descendants(pid)
		for _, child := range tree.children[os.Getpid()] {
			if !p.waiting[child] && tree.start[child] >= started && !tree.zombie[child] {
				victims = append(append(victims, child), tree.descendants(child)...)
			}
		}
		alive := 0
		for _, v := range victims {
			if !tree.zombie[v] {
				alive++
				_ = syscall.Kill(v, syscall.SIGKILL)
			}
		}
		if alive == 0 {
			return
		}
	}
}

// reap collects adopted orphans that have exited, so that none stays a zombie.
func (p *procTracker) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.subreaper || !p.used {
		return
	}
	for _, child := range ownChildren() {
		if p.waiting[child] {
			continue
		}
		var status syscall.WaitStatus
		_, _ = syscall.Wait4(child, &status, syscall.WNOHANG, nil)
	}
}

// ownChildren lists this process's children, from /proc/self/task/*/children (Linux).
func ownChildren() []int {
	var kids []int
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				kids = append(kids, pid)
			}
		}
	}
	return kids
}

// processTree is every process's parent, start time and whether it is a zombie, read from
// /proc at one moment.
type processTree struct {
	children map[int][]int
	start    map[int]uint64
	zombie   map[int]bool
}

func procTree() processTree {
	t := processTree{children: map[int][]int{}, start: map[int]uint64{}, zombie: map[int]bool{}}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, start, state, ok := procStat(pid); ok {
			t.children[ppid] = append(t.children[ppid], pid)
			t.start[pid] = start
			t.zombie[pid] = state == 'Z' || state == 'X'
		}
	}
	return t
}

func (t processTree) descendants(pid int) []int {
	var out []int
	for _, c := range t.children[pid] {
		out = append(append(out, c), t.descendants(c)...)
	}
	return out
}

// procStat reads a process's parent, start time and state from /proc/PID/stat (Linux).
func procStat(pid int) (ppid int, start uint64, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')') // the command's name may hold spaces and parentheses
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:])) // state ppid pgrp session ...; starttime is the 20th
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	return ppid, start, f[0][0], err1 == nil && err2 == nil
}

// offHeap returns n zeroed T's in memory the garbage collector neither manages nor scans: an
// anonymous mapping, whose pages take memory only once written. The compact tables and the ban
// sketches are made whole at start and hold no pointers; on the heap they would count as live
// data, and the collector would let the heap grow to twice their size before collecting. The
// mapping is returned to the system once owner is unreachable (owner must be the only way to
// reach the slice); where mapping fails, the slice is on the heap. T must hold no pointers.
func offHeap[T, O any](owner *O, n int) []T {
	var zero T
	size := int(unsafe.Sizeof(zero)) * n
	if size < 1<<16 {
		return make([]T, n)
	}
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]T, n)
	}
	runtime.AddCleanup(owner, func(b []byte) { _ = syscall.Munmap(b) }, b)
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), n)
}

// recvmsgBuf is a reusable recvmsg call for raw sockets: its buffers, and a function made once,
// so that reading a packet allocates nothing.
type recvmsgBuf struct {
	msg   syscall.Msghdr
	iov   syscall.Iovec
	name  syscall.RawSockaddrAny
	buf   [2048]byte
	oob   [128]byte
	n     int
	oobn  int
	errno syscall.Errno
	read  func(fd uintptr) bool
}

func newRecvmsgBuf() *recvmsgBuf {
	r := &recvmsgBuf{}
	r.iov.Base = &r.buf[0]
	r.iov.SetLen(len(r.buf))
	r.msg.Iov = &r.iov
	r.msg.Iovlen = 1
	r.read = func(fd uintptr) bool {
		r.msg.Name = (*byte)(unsafe.Pointer(&r.name))
		r.msg.Namelen = uint32(unsafe.Sizeof(r.name))
		r.msg.Control = &r.oob[0]
		r.msg.SetControllen(len(r.oob))
		n, _, errno := syscall.Syscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&r.msg)), 0)
		if errno == syscall.EAGAIN || errno == syscall.EINTR {
			return false
		}
		r.n, r.errno = int(n), errno
		r.oobn = int(r.msg.Controllen)
		return true
	}
	return r
}

// sourceAddr is the sender's address from the last recvmsg, for an IPv6 raw socket.
func (r *recvmsgBuf) sourceAddr6() netip.Addr {
	sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(&r.name))
	return netip.AddrFrom16(sa.Addr).Unmap()
}

// =============================================================================================
// Knock sources and replies
//
// Bound UDP sockets (the default) or raw sockets behind a BPF filter (--capture). Each reader
// goroutine owns its socket's buffers and its intake scratch; the server's lock owns the set of
// sources (close_knock_ports and open_knock_ports replace it) and the services.

// source is one open way in: a bound UDP socket or a raw socket.
type source interface {
	run(s *server)
	close()
	// reply sends payload to a client from a knock port (from: the address it knocked).
	reply(port uint16, to netip.AddrPort, from netip.Addr, payload []byte) (bool, error)
}

// udpSource reads one bound UDP knock or decoy port. Its buffers are its own, so the read
// loop allocates nothing.
type udpSource struct {
	port uint16
	conn *net.UDPConn
	fam  int
	buf  [256]byte // authenticated knocks are 64 bytes; longer datagrams are not knocks
	oob  [128]byte
	sc   *scratch
}

func (s *server) listenUDP(port uint16) (*udpSource, error) {
	addr := &net.UDPAddr{Port: int(port)}
	fam := syscall.AF_INET6
	if len(s.cfg.listen) > 0 {
		addr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.listen[0], port))
		if s.cfg.listen[0].Is4() {
			fam = syscall.AF_INET
		}
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, bindError("UDP", int(port), err)
	}
	if rc, err := conn.SyscallConn(); err == nil {
		if got := tuneReceive(rc, fam, receiveBuffer); got > 0 && got < receiveBuffer {
			s.smallBuffers.Store(int64(got))
		}
	}
	return &udpSource{port: port, conn: conn, fam: fam, sc: newScratch(len(s.cfg.doors))}, nil
}

func (l *udpSource) run(s *server) {
	for {
		n, oobn, _, from, err := l.conn.ReadMsgUDPAddrPort(l.buf[:], l.oob[:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("read failed", "event", "error", "port", l.port, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		cd := parseControl(l.oob[:oobn])
		k := knock{from: keyOf(from.Addr()), to: cd.to, srcPort: from.Port(), port: portSpec{l.port, protoUDP}, ts: cd.ts}
		if r := s.intake.accept(&k, l.buf[:n], l.sc); r > 0 {
			_, _, _ = l.conn.WriteMsgUDPAddrPort(l.sc.reply[:r], sourceControl(cd.to, l.fam), from)
		}
	}
}

func (l *udpSource) close() { l.conn.Close() }

func (l *udpSource) reply(port uint16, to netip.AddrPort, from netip.Addr, payload []byte) (bool, error) {
	if port != l.port {
		return false, nil
	}
	_, _, err := l.conn.WriteMsgUDPAddrPort(payload, sourceControl(from, l.fam), to)
	return true, err
}

// rawSource captures one protocol of one address family (--capture): a raw socket that sees
// the host's packets of that protocol, behind a BPF filter that passes only watched ports, so
// the kernel goes on answering those ports as closed (TCP reset, ICMP port unreachable).
type rawSource struct {
	conn  *net.IPConn
	rc    syscall.RawConn
	fam   int
	proto proto
	rb    *recvmsgBuf
	sc    *scratch
}

// captureNetworks are the raw sockets capture mode may open.
var captureNetworks = []struct {
	network string
	fam     int
	proto   proto
}{
	{"ip4:udp", syscall.AF_INET, protoUDP}, {"ip4:tcp", syscall.AF_INET, protoTCP},
	{"ip6:udp", syscall.AF_INET6, protoUDP}, {"ip6:tcp", syscall.AF_INET6, protoTCP},
}

func (s *server) listenRaw(network string, fam int, p proto, ports []uint16) (*rawSource, error) {
	prog, err := bpf.Assemble(captureFilter(fam, p, ports, s.tracker))
	if err != nil {
		return nil, fmt.Errorf("capture mode cannot build its filter for %s: %v", network, err)
	}
	conn, err := net.ListenIP(network, nil)
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("capture mode cannot open a raw %s socket: permission denied: it needs root or CAP_NET_RAW", network)
		}
		return nil, fmt.Errorf("capture mode cannot open a raw %s socket: %v", network, syscallCause(err))
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	if fam == syscall.AF_INET {
		err = ipv4.NewPacketConn(conn).SetBPF(prog)
	} else {
		err = ipv6.NewPacketConn(conn).SetBPF(prog)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("capture mode cannot attach its filter to the raw %s socket: %v", network, err)
	}
	if fam == syscall.AF_INET6 && p == protoUDP {
		_ = setSockopt(rc, ipprotoIPv6, ipv6Checksum, 6) // the kernel checks and fills UDP checksums
	}
	if got := tuneReceive(rc, fam, captureBuffer); got > 0 && got < captureBuffer {
		s.smallBuffers.Store(int64(got))
	}
	r := &rawSource{conn: conn, rc: rc, fam: fam, proto: p, rb: newRecvmsgBuf(), sc: newScratch(len(s.cfg.doors))}
	r.drain()
	return r, nil
}

// drain discards what the socket queued in the moment between its creation and the filter:
// those packets passed no filter, so they are not looked at, nor counted as knocks' drops.
func (r *rawSource) drain() {
	_ = r.rc.Read(func(fd uintptr) bool {
		for {
			_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&r.rb.buf[0])), uintptr(len(r.rb.buf)), uintptr(syscall.MSG_DONTWAIT), 0, 0)
			if errno != 0 {
				return true
			}
		}
	})
}

// captureFilter is the BPF program of a raw socket: it passes first fragments (or whole
// packets) to a watched port of its protocol and drops everything else, so that other traffic
// never reaches the process. For IPv4 the program sees the IP header; for IPv6 the transport
// header. Where every watched TCP port uses one flag rule, the filter applies it too.
func captureFilter(fam int, p proto, ports []uint16, t *tracker) []bpf.Instruction {
	const accept = 512 // bytes kept of a passed packet: headers and a 64-byte token
	var prog []bpf.Instruction
	if fam == syscall.AF_INET {
		prog = append(prog,
			bpf.LoadAbsolute{Off: 6, Size: 2}, // flags and fragment offset
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: uint8(len(ports)*2 + 4)},
			bpf.LoadMemShift{Off: 0}, // X = the IP header's length
		)
	} else {
		prog = append(prog, bpf.LoadConstant{Dst: bpf.RegX, Val: 0})
	}
	if rule, ok := t.singleTCPRule(p); ok {
		prog = append(prog,
			bpf.LoadIndirect{Off: 13, Size: 1},
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: uint32(rule.set | rule.clear)},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(rule.set), SkipTrue: uint8(len(ports)*2 + 1)},
		)
	} else {
		prog = append(prog, bpf.LoadConstant{Dst: bpf.RegA, Val: 0}, bpf.LoadConstant{Dst: bpf.RegA, Val: 0}, bpf.LoadConstant{Dst: bpf.RegA, Val: 0})
	}
	prog = append(prog, bpf.LoadIndirect{Off: 2, Size: 2}) // the destination port
	for _, port := range ports {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(port), SkipTrue: 1},
			bpf.RetConstant{Val: accept},
		)
	}
	return append(prog, bpf.RetConstant{Val: 0})
}

// singleTCPRule reports the one flag rule every watched TCP port uses, if there is one.
func (t *tracker) singleTCPRule(p proto) (tcpFlagRule, bool) {
	if p != protoTCP {
		return tcpFlagRule{}, false
	}
	rule, seen := defaultTCPFlags, false
	for d := range t.doors {
		for _, q := range t.doors[d].seq {
			if q.proto != protoTCP {
				continue
			}
			if seen && t.doors[d].flags != rule {
				return tcpFlagRule{}, false
			}
			rule, seen = t.doors[d].flags, true
		}
	}
	if seen && rule != defaultTCPFlags && t.tcpDecoys {
		return tcpFlagRule{}, false // TCP decoys count as plain SYNs
	}
	return rule, true
}

func (r *rawSource) run(s *server) {
	for {
		if err := r.rc.Read(r.rb.read); err != nil {
			return // closed
		}
		if r.rb.errno != 0 {
			if r.rb.errno == syscall.EBADF {
				return
			}
			s.log.Warn("capture read failed", "event", "error", "err", r.rb.errno.Error())
			time.Sleep(10 * time.Millisecond)
			continue
		}
		pkt := r.rb.buf[:min(r.rb.n, len(r.rb.buf))]
		cd := parseControl(r.rb.oob[:r.rb.oobn])
		var from netip.Addr
		if r.fam == syscall.AF_INET {
			if len(pkt) < 20 || pkt[0]>>4 != 4 || int(pkt[0]&0xf)*4 > len(pkt) {
				continue
			}
			from, cd.to = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
			pkt = pkt[int(pkt[0]&0xf)*4:]
		} else {
			from = r.rb.sourceAddr6()
		}
		k, payload, ok := parseTransport(pkt, r.proto)
		if !ok {
			s.intake.drops[dropFiltered].Add(1)
			continue
		}
		k.from, k.to, k.ts = keyOf(from), cd.to, cd.ts
		if n := s.intake.accept(&k, payload, r.sc); n > 0 {
			_, _ = r.reply(k.port.port, netip.AddrPortFrom(from, k.srcPort), cd.to, r.sc.reply[:n])
		}
	}
}

// parseTransport reads the ports and flags of a TCP or UDP header, and a UDP datagram's payload.
func parseTransport(b []byte, p proto) (knock, []byte, bool) {
	if p == protoTCP {
		if len(b) < 14 {
			return knock{}, nil, false
		}
		return knock{srcPort: binary.BigEndian.Uint16(b[0:2]), port: portSpec{binary.BigEndian.Uint16(b[2:4]), protoTCP}, flags: b[13]}, nil, true
	}
	if len(b) < 8 {
		return knock{}, nil, false
	}
	end := min(int(binary.BigEndian.Uint16(b[4:6])), len(b))
	if end < 8 {
		return knock{}, nil, false
	}
	return knock{srcPort: binary.BigEndian.Uint16(b[0:2]), port: portSpec{binary.BigEndian.Uint16(b[2:4]), protoUDP}}, b[8:end], true
}

func (r *rawSource) close() { r.conn.Close() }

// reply sends a UDP datagram from a knock port that nothing is bound to: the raw socket
// writes the UDP header itself (IPv4: no checksum, which UDP over IPv4 allows; IPv6: the
// kernel fills it in). Nobody else ever gets an answer, so the port still looks closed.
func (r *rawSource) reply(port uint16, to netip.AddrPort, from netip.Addr, payload []byte) (bool, error) {
	if r.proto != protoUDP || (r.fam == syscall.AF_INET) != to.Addr().Is4() {
		return false, nil
	}
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], port)
	binary.BigEndian.PutUint16(b[2:], to.Port())
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	_, _, err := r.conn.WriteMsgIP(b, sourceControl(from, r.fam), &net.IPAddr{IP: to.Addr().AsSlice()})
	return true, err
}

// server ties the pieces together: sources feed the intake, the intake the tracker, the
// tracker the hook runtime, and the hook runtime drives the sources and the built-in services
// through the knock module: the server is its effects.
type server struct {
	cfg          *config
	log          *slog.Logger
	tracker      *tracker
	intake       *intake
	hooks        *hookRuntime
	allow        allowList
	smallBuffers atomic.Int64 // a receive buffer smaller than asked for, to warn about once

	mu       sync.Mutex
	sources  []source
	closed   bool // the knock ports are closed for good: the server is shutting down
	readers  sync.WaitGroup
	services map[int]*service
}

func newServer(cfg *config, log *slog.Logger, proto *lua.FunctionProto) *server {
	s := &server{cfg: cfg, log: log, services: map[int]*service{}, allow: allowList{grants: grantHeap{pos: map[addrKey]int{}}}}
	s.hooks = newHookRuntime(cfg, log, proto, s)
	s.tracker = newTracker(cfg, s.hooks.queue.push)
	s.hooks.tracker = s.tracker
	s.intake = newIntake(cfg, s.tracker)
	if cfg.verbose && cfg.keys != nil {
		s.intake.rejects = newRejectLog(log)
	}
	return s
}

// openKnockPorts opens every source and starts one reader goroutine each: all or none. Once the
// server is shutting down it refuses.
func (s *server) openKnockPorts() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.log.Warn("knock ports not reopened: the server is shutting down", "event", "open_knock_ports")
		return errors.New("the server is shutting down")
	}
	if len(s.sources) > 0 {
		return nil
	}
	var opened []source
	fail := func(err error) error {
		for _, o := range opened {
			o.close()
		}
		return err
	}
	if s.cfg.capture {
		byNet := map[string][]uint16{}
		for _, p := range s.cfg.watchedPorts() {
			for _, n := range captureNetworks {
				if n.proto == p.proto && s.wantsFamily(n.fam) {
					byNet[n.network] = append(byNet[n.network], p.port)
				}
			}
		}
		for _, n := range captureNetworks {
			if ports := byNet[n.network]; len(ports) > 0 {
				r, err := s.listenRaw(n.network, n.fam, n.proto, ports)
				if err != nil {
					return fail(err)
				}
				opened = append(opened, r)
			}
		}
	} else {
		for _, p := range s.cfg.watchedPorts() {
			l, err := s.listenUDP(p.port)
			if err != nil {
				return fail(err)
			}
			opened = append(opened, l)
		}
	}
	s.sources = opened
	for _, src := range opened {
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			src.run(s)
		}()
	}
	return nil
}

// wantsFamily reports whether a --listen address (if any) is of the family.
func (s *server) wantsFamily(fam int) bool {
	if len(s.cfg.listen) == 0 {
		return true
	}
	for _, a := range s.cfg.listen {
		if a.Is4() == (fam == syscall.AF_INET) {
			return true
		}
	}
	return false
}

// knockPortsOpen reports whether the server is listening (or capturing) on the knock ports.
func (s *server) knockPortsOpen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sources) > 0
}

func (s *server) closeKnockPorts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, src := range s.sources {
		src.close()
	}
	s.sources = nil
}

// stopKnocks closes the knock ports for good, at shutdown, and waits for their readers: no
// knock is taken after it returns, and open_knock_ports is refused.
func (s *server) stopKnocks() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.closeKnockPorts()
	s.readers.Wait()
}

// reply sends a datagram from a knock port: the bound socket, or a raw socket in capture mode.
// When the hook has closed the knock ports, a socket is opened for the one datagram.
func (s *server) reply(port uint16, to netip.AddrPort, from netip.Addr, payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, src := range s.sources {
		if sent, err := src.reply(port, to, from, payload); sent {
			return err
		}
	}
	if s.cfg.capture {
		network, fam := "ip6:udp", syscall.AF_INET6
		if to.Addr().Is4() {
			network, fam = "ip4:udp", syscall.AF_INET
		}
		conn, err := net.ListenIP(network, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		r := &rawSource{conn: conn, fam: fam, proto: protoUDP}
		if rc, err := conn.SyscallConn(); err == nil && fam == syscall.AF_INET6 {
			_ = setSockopt(rc, ipprotoIPv6, ipv6Checksum, 6)
		}
		_, err = r.reply(port, to, from, payload)
		return err
	}
	local := netip.AddrPortFrom(netip.IPv6Unspecified(), port)
	if from.IsValid() {
		local = netip.AddrPortFrom(from, port)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return fmt.Errorf("knock port %d is closed and cannot be bound for the reply: %v", port, syscallCause(err))
	}
	defer conn.Close()
	_, err = conn.WriteToUDPAddrPort(payload, to)
	return err
}

// janitor runs the periodic work that must not wait for the next knock.
func (s *server) janitor(stop <-chan struct{}) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var reportedShed, reportedEvictions, reportedRefusals, reportedGrants uint64
	var reportedDrops [nDropReasons]uint64
	lastDropLog, lastRefusalLog, lastGrantsLog := time.Time{}, time.Time{}, time.Time{}
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			s.tracker.sweep(now.UnixNano())
			s.allow.sweep(now.UnixNano())
			procs.reap()
			if d := s.hooks.queue.shedTotal(); d != reportedShed {
				s.log.Warn("hook queue full: events shed, fairly across source prefixes", append([]any{"event", "overload", "shed", d - reportedShed, "total", d}, s.hooks.queue.shedCounts()...)...)
				reportedShed = d
			}
			if e := s.tracker.evicted.Load(); e != reportedEvictions {
				s.log.Warn("client table full: attempts in progress dropped", "event", "overload", "evicted", e-reportedEvictions, "max_clients", s.cfg.maxClients)
				reportedEvictions = e
			}
			if r := s.tracker.refused.Load(); r != reportedRefusals && now.Sub(lastRefusalLog) >= time.Second {
				s.log.Warn("client table full: knocks from new clients refused", "event", "overload", "refused", r-reportedRefusals, "max_clients", s.cfg.maxClients)
				reportedRefusals, lastRefusalLog = r, now
			}
			if g := s.allow.evicted.Load(); g != reportedGrants && now.Sub(lastGrantsLog) >= time.Second {
				s.log.Warn("grants table full: the grant ending soonest ended early", "event", "overload", "ended", g-reportedGrants, "max_grants", maxGrants)
				reportedGrants, lastGrantsLog = g, now
			}
			if s.cfg.verbose && now.Sub(lastDropLog) >= time.Second {
				var attrs []any
				for r := dropReason(1); r < nDropReasons; r++ {
					if n := s.intake.drops[r].Load(); n != reportedDrops[r] {
						attrs = append(attrs, r.String(), n-reportedDrops[r])
						reportedDrops[r] = n
					}
				}
				if attrs != nil {
					s.log.Info("datagrams dropped", append([]any{"event", "drop"}, attrs...)...)
					lastDropLog = now
				}
			}
		}
	}
}

// =============================================================================================
// The hook runtime and the knock module
//
// One goroutine owns the Lua state and handles events one at a time. Events wait in a fair
// queue: one FIFO per source prefix (IPv4 /24, IPv6 /48), served in turn, so a flood from some
// prefixes cannot hold back a client from another, and the events of one client keep their
// order. The knock path only queues and never waits. It holds 262,144 events, of which at most
// 32,768 knock and fail events: those are refused first. When it is full, the newest event of
// the longest prefix queue makes room for an unlock: shedding is fair, counted and logged, and
// an unlock is never refused for a knock or fail event. The runtime takes events in batches; after each batch it calls the
// hook's optional on_flush (where a firewall hook applies the batch's grants in one command) and
// then sends the confirmations of the batch's authenticated unlocks.

const (
	hookQueueLen   = 1 << 18 // events waiting for the hook, at most
	hookQueueLow   = 1 << 15 // of which knock and fail events
	batchMax       = 512
	prefixQuantum  = 16 // events a prefix may hand over per turn
	maxExecOutput  = 1 << 20
	shutdownGrace  = 2 * time.Second
	defaultAllow   = 30 // seconds, for knock.allow(ip) without a duration
	defaultService = 8080
)

// prefixKey is a source's fairness group: its /24 (IPv4) or /48 (IPv6).
type prefixKey [6]byte

func prefixOf(k addrKey) prefixKey {
	if k.is4() {
		return prefixKey{0xff, 0xff, 0xff, k[12], k[13], k[14]}
	}
	return prefixKey(k[:6])
}

type prefixQueue struct {
	key    prefixKey
	events []event // waiting: events[head:]
	head   int
}

func (p *prefixQueue) len() int { return len(p.events) - p.head }

// eventQueue is the fair queue between the tracker and the hook runtime. Its lock owns it.
type eventQueue struct {
	mu       sync.Mutex
	wake     chan struct{} // one token: there is something to take
	queues   map[prefixKey]*prefixQueue
	ring     []*prefixQueue // the prefixes with events, in turn order
	total    int
	low      int // knock and fail events queued
	limit    int
	lowLimit int          // most knock and fail events queued
	largest  *prefixQueue // a guess at the longest queue, the first to shed from
	pool     []*prefixQueue
	shed     [3]atomic.Uint64 // by event kind
}

func newEventQueue(limit, lowLimit int) *eventQueue {
	return &eventQueue{wake: make(chan struct{}, 1), queues: map[prefixKey]*prefixQueue{}, limit: limit, lowLimit: lowLimit}
}

// push queues events without ever blocking (the tracker's emit function). It wakes the runtime
// only when the queue was empty: otherwise the runtime is busy and takes them next.
func (q *eventQueue) push(events []event) {
	q.mu.Lock()
	wasEmpty := q.total == 0
	for i := range events {
		q.push1(&events[i])
	}
	q.mu.Unlock()
	if wasEmpty {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

func (q *eventQueue) push1(e *event) {
	low := e.kind != eventUnlock
	if low && q.low >= q.lowLimit {
		q.shed[e.kind].Add(1)
		return
	}
	pq := q.queues[prefixOf(e.from)]
	if q.total >= q.limit && (low || !q.makeRoom(pq)) {
		q.shed[e.kind].Add(1)
		return
	}
	if pq == nil {
		pq = q.newPrefixQueue(prefixOf(e.from))
	}
	pq.events = append(pq.events, *e)
	q.total++
	if low {
		q.low++
	}
	if q.largest == nil || pq.len() > q.largest.len() {
		q.largest = pq
	}
}

// makeRoom sheds the newest event of the longest queue, if it is longer than the queue of the
// event that wants in.
func (q *eventQueue) makeRoom(want *prefixQueue) bool {
	victim := q.largest
	if victim == nil || victim.len() == 0 {
		for _, pq := range q.ring {
			if pq.len() > 0 {
				victim = pq
				break
			}
		}
	}
	wantLen := 0
	if want != nil {
		wantLen = want.len()
	}
	if victim == nil || victim.len() <= wantLen {
		return false
	}
	last := len(victim.events) - 1
	kind := victim.events[last].kind
	victim.events = victim.events[:last]
	q.total--
	if kind != eventUnlock {
		q.low--
	}
	q.shed[kind].Add(1)
	return true
}

func (q *eventQueue) newPrefixQueue(k prefixKey) *prefixQueue {
	var pq *prefixQueue
	if n := len(q.pool); n > 0 {
		pq, q.pool = q.pool[n-1], q.pool[:n-1]
	} else {
		pq = &prefixQueue{}
	}
	pq.key = k
	q.queues[k] = pq
	q.ring = append(q.ring, pq)
	return pq
}

// pop appends up to max events to dst, prefixQuantum at a time from each prefix in turn.
func (q *eventQueue) pop(dst []event, max int) []event {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(dst) < max && len(q.ring) > 0 {
		pq := q.ring[0]
		q.ring = q.ring[1:]
		n := min(pq.len(), prefixQuantum, max-len(dst))
		for _, e := range pq.events[pq.head : pq.head+n] {
			if e.kind != eventUnlock {
				q.low--
			}
		}
		dst = append(dst, pq.events[pq.head:pq.head+n]...)
		pq.head += n
		q.total -= n
		if pq.len() > 0 {
			q.ring = append(q.ring, pq)
			continue
		}
		delete(q.queues, pq.key)
		if q.largest == pq {
			q.largest = nil
		}
		pq.head = 0
		if cap(pq.events) <= 1024 {
			pq.events = pq.events[:0]
			q.pool = append(q.pool, pq)
		}
	}
	if len(q.ring) == 0 {
		q.ring = q.ring[:0:0] // let the backing array go
	}
	return dst
}

func (q *eventQueue) length() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}

func (q *eventQueue) shedTotal() uint64 {
	return q.shed[eventKnock].Load() + q.shed[eventUnlock].Load() + q.shed[eventFail].Load()
}

func (q *eventQueue) shedCounts() []any {
	return []any{"unlocks", q.shed[eventUnlock].Load(), "knocks", q.shed[eventKnock].Load(), "fails", q.shed[eventFail].Load()}
}

// hookKind indexes a door's handlers.
type hookKind uint8

const (
	hookUnlock hookKind = iota
	hookKnock
	hookFail
	nHookKinds
)

var hookNames = [nHookKinds]string{"on_unlock", "on_knock", "on_fail"}

var hookOfEvent = [...]hookKind{eventKnock: hookKnock, eventUnlock: hookUnlock, eventFail: hookFail}

// luaHook is one loaded hook file: its state, each door's handlers and the other functions.
type luaHook struct {
	L                  *lua.LState
	doors              [][nHookKinds]*lua.LFunction
	start, stop, flush *lua.LFunction
	timer              *callTimer
	readsEvent         map[*lua.LFunction]bool // whether a handler uses its ev argument at all
	afters             map[*afterCall]bool     // its knock.after callbacks not yet run
}

// afterCall is a knock.after callback waiting for its time. Its timer hands it to the runtime.
type afterCall struct {
	hook     *luaHook // the hook fn belongs to: a reload does not orphan a pending callback
	fn       *lua.LFunction
	due      time.Time
	timer    *time.Timer
	index    int  // in the runtime's afterHeap; -1 once out of it
	inFlight bool // taken out to run early after its timer had fired: a copy is on its way
}

// maxPendingAfters bounds the knock.after callbacks pending at once, over every hook: a hook
// that schedules one per unlock must not grow without bound under a flood of (spoofed, plain)
// unlocks. When it is reached, the callback due soonest runs now: it is what closes a grant
// later, so the bound fails closed (the door shuts early), never open.
const maxPendingAfters = 1 << 16

// afterHeap is the pending knock.after callbacks, the one due soonest first.
type afterHeap []*afterCall

func (q afterHeap) Len() int           { return len(q) }
func (q afterHeap) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q afterHeap) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *afterHeap) Push(x any) {
	a := x.(*afterCall)
	a.index = len(*q)
	*q = append(*q, a)
}
func (q *afterHeap) Pop() any {
	old := *q
	a := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	a.index = -1
	return a
}

// effects are what the knock module does to the world: knock ports, services, grants, programs
// and confirmations. The server is the real one; check loads a hook with a recordingEffects,
// which does nothing, and unit tests of the knock module read what it recorded.
type effects interface {
	knockPortsOpen() bool
	openKnockPorts() error
	closeKnockPorts()
	startService(spec serviceSpec) error
	stopService(port int)
	grant(k addrKey, d time.Duration)
	revoke(k addrKey)
	exec(ctx context.Context, cmd *exec.Cmd) (code int, output string, err error)
	reply(port uint16, to netip.AddrPort, from netip.Addr, payload []byte) error
}

// recordingEffects records each effect a hook asks for, one line each, and does none of them:
// everything succeeds, and a program exits 0 with no output.
type recordingEffects struct {
	mu     sync.Mutex
	calls  []string
	closed bool // close_knock_ports was the last of the two called
}

func (r *recordingEffects) record(format string, args ...any) {
	r.mu.Lock()
	r.calls = append(r.calls, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// recorded returns the calls so far.
func (r *recordingEffects) recorded() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recordingEffects) knockPortsOpen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.closed
}

func (r *recordingEffects) openKnockPorts() error {
	r.record("open_knock_ports")
	r.mu.Lock()
	r.closed = false
	r.mu.Unlock()
	return nil
}

func (r *recordingEffects) closeKnockPorts() {
	r.record("close_knock_ports")
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}
func (r *recordingEffects) stopService(port int) { r.record("stop_service %d", port) }
func (r *recordingEffects) revoke(k addrKey)     { r.record("revoke %s", k.addr()) }

func (r *recordingEffects) startService(spec serviceSpec) error {
	r.record("serve port=%d proto=%s allow_only=%v greeting=%q", spec.port, spec.proto, spec.allowOnly, spec.greeting)
	return nil
}

func (r *recordingEffects) grant(k addrKey, d time.Duration) { r.record("allow %s %v", k.addr(), d) }

func (r *recordingEffects) exec(_ context.Context, cmd *exec.Cmd) (int, string, error) {
	r.record("exec %s", strings.Join(cmd.Args, " "))
	return 0, "", nil
}

func (r *recordingEffects) reply(port uint16, to netip.AddrPort, _ netip.Addr, payload []byte) error {
	r.record("reply from %d to %s, %d bytes", port, to, len(payload))
	return nil
}

// hookRuntime runs the hook. Its goroutine owns the running hook, the hooks a reload retired
// whose knock.after callbacks are still pending, and every Lua state.
type hookRuntime struct {
	cfg        *config
	log        *slog.Logger
	fx         effects
	tracker    *tracker // for keys, one-time sequences and wantKnock; nil for check
	proto      *lua.FunctionProto
	topLevel   bool             // a hook's top level is running (load)
	exit       func(why string) // ends the process when a call is stuck (see stuck); set by main
	hook       *luaHook
	retired    []*luaHook   // replaced by a reload, kept until their pending callbacks have run
	stopping   bool         // shutdown has begun: knock.after schedules nothing more
	quitAt     atomic.Int64 // when stop was called (unix ns); 0 before
	unhandled  int          // events of a batch under way left at the end of the shutdown grace
	queue      *eventQueue
	afters     chan *afterCall
	pending    afterHeap    // every hook's pending knock.after callbacks, at most maxAfters
	maxAfters  int          // maxPendingAfters; smaller in tests
	overdue    []*afterCall // taken out of pending to make room: they run next
	earlyRuns  int          // how many ran early to make room since the last log line
	earlyLog   time.Time    // when that was last logged
	reloads    chan chan error
	quit       chan struct{}
	done       chan struct{}
	failLog    rateLimit // a flood of wrong knocks must not flood the log
	unlocks    atomic.Uint64
	lastUnlock atomic.Int64     // when on_unlock last started (unix ns)
	latency    latencyHistogram // from the final knock's receive time to on_unlock's start
	batch      []event
	attrs      []slog.Attr // the log line being made: the runtime goroutine's own
	confirms   []pendingConfirm
	mac        *macScratch
	values     luaValues
}

// pendingConfirm is an authenticated unlock of the current batch, waiting for on_flush.
type pendingConfirm struct {
	e      *event
	status byte
}

// luaValues are the Lua values every event shares, made once: converting a Go value to a
// lua.LValue allocates.
type luaValues struct {
	doors   []lua.LValue
	seqs    [][]lua.LValue
	protos  [2]lua.LValue
	reasons [len(reasonNames)]lua.LValue
	ports   []lua.LValue // by port number, filled as they are met
}

// newHookRuntime makes the runtime of a hook compiled from proto, doing its effects through fx.
func newHookRuntime(cfg *config, log *slog.Logger, proto *lua.FunctionProto, fx effects) *hookRuntime {
	h := &hookRuntime{
		cfg: cfg, log: log, fx: fx, proto: proto,
		queue:     newEventQueue(hookQueueLen, hookQueueLow),
		afters:    make(chan *afterCall, 1024),
		maxAfters: maxPendingAfters,
		reloads:   make(chan chan error),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		failLog:   rateLimit{log: log, what: "knock failures", perSecond: failLogsPerSecond},
		batch:     make([]event, 0, batchMax),
		mac:       newMACScratch(),
	}
	v := &h.values
	v.ports = make([]lua.LValue, 65536)
	for _, d := range cfg.doors {
		v.doors = append(v.doors, lua.LString(d.name))
		var seq []lua.LValue
		for _, p := range d.seq {
			seq = append(seq, h.portValue(p.port))
		}
		v.seqs = append(v.seqs, seq)
	}
	v.protos = [2]lua.LValue{lua.LString("udp"), lua.LString("tcp")}
	for i, r := range reasonNames {
		v.reasons[i] = lua.LString(r)
	}
	return h
}

// compileHook parses and compiles a hook once; every state made from it shares the result.
func compileHook(name string, src []byte) (*lua.FunctionProto, error) {
	chunk, err := parse.Parse(bytes.NewReader(src), name)
	if err != nil {
		return nil, usagef("hook %s: %s", name, oneLine(err.Error()))
	}
	proto, err := lua.Compile(chunk, name)
	if err != nil {
		return nil, usagef("hook %s: %s", name, oneLine(err.Error()))
	}
	return proto, nil
}

// load makes a fresh Lua state, runs the hook's top level in it and finds its functions: each
// of on_unlock, on_knock and on_fail is a function for every door, or a table of functions by
// door name (with "*" for the doors it does not name). Every door needs an on_unlock.
func (h *hookRuntime) load(proto *lua.FunctionProto) (*luaHook, error) {
	L := lua.NewState(lua.Options{RegistryMaxSize: 1 << 22})
	hook := &luaHook{L: L, timer: newCallTimer(h.stuck), afters: map[*afterCall]bool{}}
	h.installModule(hook)
	err := h.protect(hook, func() error {
		L.Push(L.NewFunctionFromProto(proto))
		h.topLevel = true
		defer func() { h.topLevel = false }()
		return L.PCall(0, 0, nil)
	})
	if err == nil {
		err = h.resolve(hook)
	}
	if err != nil {
		h.discard(hook, "")
		return nil, usagef("hook %s: %s", h.cfg.hookName, err)
	}
	return hook, nil
}

func (h *hookRuntime) resolve(hook *luaHook) error {
	L, doors := hook.L, h.cfg.doors
	hook.doors = make([][nHookKinds]*lua.LFunction, len(doors))
	for kind, name := range hookNames {
		switch v := L.GetGlobal(name).(type) {
		case *lua.LNilType:
		case *lua.LFunction:
			for d := range doors {
				hook.doors[d][kind] = v
			}
		case *lua.LTable:
			var err error
			v.ForEach(func(k, fn lua.LValue) {
				f, isFn := fn.(*lua.LFunction)
				d := doorIndex(doors, k.String())
				switch {
				case err != nil:
				case k.Type() != lua.LTString || d < 0 && k.String() != "*":
					err = fmt.Errorf("%s[%s]: no door has that name (doors: %s)", name, k.String(), doorNames(doors))
				case !isFn:
					err = fmt.Errorf("%s.%s is a %s, not a function", name, k.String(), fn.Type())
				}
				if err == nil && isFn && d >= 0 {
					hook.doors[d][kind] = f
				}
			})
			if err != nil {
				return err
			}
			if all, ok := v.RawGetString("*").(*lua.LFunction); ok {
				for d := range doors {
					if hook.doors[d][kind] == nil {
						hook.doors[d][kind] = all
					}
				}
			}
		default:
			return fmt.Errorf("%s is a %s: make it a function, or a table of functions by door name", name, v.Type())
		}
	}
	for _, f := range []struct {
		name string
		dst  **lua.LFunction
	}{{"on_start", &hook.start}, {"on_stop", &hook.stop}, {"on_flush", &hook.flush}} {
		switch v := L.GetGlobal(f.name).(type) {
		case *lua.LFunction:
			*f.dst = v
		case *lua.LNilType:
		default:
			return fmt.Errorf("%s is a %s, not a function", f.name, v.Type())
		}
	}
	hook.readsEvent = map[*lua.LFunction]bool{}
	for d := range hook.doors {
		for _, fn := range hook.doors[d] {
			if fn != nil {
				hook.readsEvent[fn] = fn.Proto == nil || readsFirstParam(fn.Proto)
			}
		}
	}
	for d, door := range doors {
		if hook.doors[d][hookUnlock] == nil {
			if len(doors) == 1 {
				return errors.New("defines no on_unlock function")
			}
			return fmt.Errorf("defines no on_unlock for door %s (give on_unlock a function, or a table with an entry for %s or \"*\")", door.name, door.name)
		}
	}
	return nil
}

func doorIndex(doors []door, name string) int {
	for i, d := range doors {
		if d.name == name {
			return i
		}
	}
	return -1
}

func doorNames(doors []door) string {
	names := make([]string, len(doors))
	for i, d := range doors {
		names[i] = d.name
	}
	return strings.Join(names, ", ")
}

// callTimer cancels a hook call, and what it runs, at the hook timeout. It keeps one context
// until a call times out, and one timer that stays armed while calls follow each other, so a
// call costs it two atomic stores.
type callTimer struct {
	mu        sync.Mutex
	ctx       context.Context
	cancel    context.CancelFunc
	deadline  atomic.Int64 // of the call running now (monoNow); 0 when none
	cancelled int64        // the deadline of a call cancelled that has not returned yet
	armed     bool
	timer     *time.Timer
	stuck     func() // a cancelled call has not returned stuckGrace later
}

// stuckGrace is how long a cancelled hook call has to return. gopher-lua checks for
// cancellation between instructions, so a call stuck inside one built-in (a pathological
// string.find, say) cannot be stopped: past the grace the runtime gives up on it (see
// hookRuntime.stuck).
const stuckGrace = 5 * time.Second

func newCallTimer(stuck func()) *callTimer {
	t := &callTimer{stuck: stuck}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.timer = time.AfterFunc(time.Hour, t.expire)
	t.timer.Stop()
	return t
}

// monoNow is nanoseconds on the monotonic clock (since the program started, plus one so that it
// is never 0): a hook's deadline must not move when the wall clock is set.
func monoNow() int64 { return int64(time.Since(monoStart)) + 1 }

var monoStart = time.Now()

func (t *callTimer) begin(timeout time.Duration) context.Context {
	deadline := monoNow() + int64(timeout)
	t.mu.Lock()
	if t.ctx.Err() != nil {
		t.ctx, t.cancel = context.WithCancel(context.Background())
	}
	ctx := t.ctx
	t.deadline.Store(deadline)
	// A call begins only once the one before it has returned: a grace for that one, if it was
	// cancelled, is over, and the timer must wake at this call's deadline.
	if !t.armed || t.cancelled != 0 {
		t.armed, t.cancelled = true, 0
		t.timer.Reset(timeout)
	}
	t.mu.Unlock()
	return ctx
}

func (t *callTimer) end() { t.deadline.Store(0) }

// expire cancels the call running now if it is past its deadline, or waits for that deadline,
// or, with no call running, disarms.
func (t *callTimer) expire() {
	t.mu.Lock()
	d := t.deadline.Load()
	stuck := false
	switch now := monoNow(); {
	case d == 0:
		t.armed, t.cancelled = false, 0
	case d == t.cancelled: // cancelled stuckGrace ago, and still running
		t.armed, stuck = false, true
	case now >= d:
		t.cancel()
		t.cancelled = d
		t.timer.Reset(stuckGrace)
	default:
		t.timer.Reset(time.Duration(d - now))
	}
	t.mu.Unlock()
	if stuck && t.stuck != nil {
		t.stuck()
	}
}

// protect runs fn under the hook timeout and turns a Lua error, a cancellation or a panic in the
// Lua runtime into one line of text.
func (h *hookRuntime) protect(hook *luaHook, fn func() error) (err error) {
	timeout := h.cfg.hookTimeout
	ctx := hook.timer.begin(timeout)
	hook.L.SetContext(ctx)
	defer func() {
		hook.L.RemoveContext()
		hook.timer.end()
	}()
	defer func() {
		if p := recover(); p != nil {
			err = &runtimePanic{fmt.Sprintf("panic in the Lua runtime: %v", p)}
		}
	}()
	if err = fn(); err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("cancelled after %v (--hook-timeout)", timeout)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Object != nil {
		return errors.New(firstLine(apiErr.Object.String()))
	}
	return errors.New(firstLine(err.Error()))
}

// stuck is called, from a timer, when a hook call has ignored its cancellation for stuckGrace:
// it is inside one Lua built-in that no context reaches, and the runtime goroutine with it.
// Nothing else can run the hook, so the process ends (h.exit): a supervisor restarts it, and
// the fresh on_start closes the door again. Without h.exit (tests) it is only logged.
func (h *hookRuntime) stuck() {
	why := fmt.Sprintf("a hook call is stuck inside a Lua built-in: it ignored its cancellation at --hook-timeout (%v) for %v", h.cfg.hookTimeout, stuckGrace)
	if h.exit != nil {
		h.exit(why)
		return
	}
	h.log.Error(why, "event", "hook_error")
}

// runtimePanic marks a state that may be corrupt (gopher-lua #282): it is replaced.
type runtimePanic struct{ msg string }

func (p *runtimePanic) Error() string { return p.msg }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\nstack traceback:")
	return oneLine(s)
}

// start calls on_start. At startup an error stops the server: a firewall hook that could not
// close the door must not leave a server pretending to guard it.
func (h *hookRuntime) start(hook *luaHook, reason string) error {
	return h.call("on_start", hook, hook.start, lua.LString(reason))
}

// run installs hook, unless it is the running hook already, and handles events until stop is
// called. The hook's on_start has run already.
func (h *hookRuntime) run(hook *luaHook) {
	defer close(h.done)
	if h.hook != hook {
		h.installHook(hook, false)
	}
	for {
		h.batch = h.queue.pop(h.batch[:0], batchMax)
		if len(h.batch) > 0 {
			h.handleBatch()
		}
		h.runOverdue()
		if h.wait(len(h.batch) == 0) {
			return
		}
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// wait handles one timer callback, reload or stop: with block, it waits for one (or for more
// events); without, it only takes what is there already. It reports whether to stop.
func (h *hookRuntime) wait(block bool) bool {
	wake := h.queue.wake
	if !block {
		wake = closedChan
	}
	select {
	case <-h.quit:
		h.shutdown()
		return true
	case a := <-h.afters:
		h.runAfter(a)
	case reply := <-h.reloads:
		reply <- h.reload()
	case <-wake:
	}
	return false
}

// handleBatch dispatches the batch's events, calls on_flush, then confirms the authenticated
// unlocks: a confirmation says the door is open only once the hook has opened it.
func (h *hookRuntime) handleBatch() {
	h.confirms = h.confirms[:0]
	for i := range h.batch {
		if h.pastGrace() {
			h.unhandled += len(h.batch) - i
			h.batch = h.batch[:i]
			break
		}
		e := &h.batch[i]
		ok := h.dispatch(e)
		if e.kind == eventUnlock && e.conf != nil {
			status := byte(confirmUnlocked)
			if !ok {
				status = confirmHookFailed
			}
			h.confirms = append(h.confirms, pendingConfirm{e, status})
		}
	}
	if h.hook.flush != nil {
		if err := h.call("on_flush", h.hook, h.hook.flush); err != nil {
			for i := range h.confirms {
				h.confirms[i].status = confirmHookFailed
			}
		}
	}
	for _, c := range h.confirms {
		h.confirm(c.e, c.status)
	}
}

// confirm sends an authenticated unlock's confirmation from the final knock's port.
func (h *hookRuntime) confirm(e *event, status byte) {
	key := h.tracker.keys.Load().lookup(e.conf.keyID[:])
	if key == nil {
		return
	}
	var b [wireLen]byte
	encodeConfirm(b[:], h.mac, &key.mac, e.conf.nonceS[:], status, h.cfg.doors[e.door].name)
	to := netip.AddrPortFrom(e.from.addr(), e.srcPort)
	if err := h.fx.reply(e.port.port, to, e.conf.local.addr(), b[:]); err != nil {
		h.log.Warn("confirmation not sent", "event", "confirm", "ip", to.Addr().String(), "door", h.cfg.doors[e.door].name, "err", err.Error())
	}
}

// drain gives the events already queued a moment to be handled at shutdown.
func (h *hookRuntime) drain() {
	for !h.pastGrace() {
		h.batch = h.queue.pop(h.batch[:0], batchMax)
		if len(h.batch) == 0 {
			break
		}
		h.handleBatch()
	}
	if n := h.unhandled + h.queue.length(); n > 0 {
		h.log.Warn("shutdown: queued hook events not handled", "event", "shutdown", "count", n)
	}
}

// shutdown ends the runtime: the queued events are handled first (for at most shutdownGrace);
// then every knock.after callback still pending runs now, in the order they were due, so that
// what a hook meant to close later is closed; then on_stop("shutdown"); then every Lua state is
// closed. From the first early callback on, knock.after schedules nothing.
func (h *hookRuntime) shutdown() {
	h.drain()
	h.stopping = true
	h.runEarly()
	h.call("on_stop", h.hook, h.hook.stop, lua.LString("shutdown"))
	h.closeAll()
}

// runEarly runs every pending knock.after callback, of the running hook and of retired ones,
// each under the hook timeout and logged.
func (h *hookRuntime) runEarly() {
	var early []*afterCall
	inFlight := map[*afterCall]bool{}
	for _, hook := range append(slices.Clone(h.retired), h.hook) {
		for a := range hook.afters {
			if a.index < 0 { // overdue: its timer was stopped when it was taken out
				if a.inFlight {
					inFlight[a] = true
				}
			} else if !a.timer.Stop() {
				inFlight[a] = true // its timer fired: it is on its way to h.afters
			}
			early = append(early, a)
		}
	}
	h.overdue = h.overdue[:0]
	for len(inFlight) > 0 {
		delete(inFlight, <-h.afters)
	}
	slices.SortFunc(early, func(a, b *afterCall) int { return a.due.Compare(b.due) })
	for _, a := range early {
		if a.hook.afters[a] {
			h.log.Info("knock.after callback run early: shutting down", "event", "shutdown", "due_in", time.Until(a.due).Round(time.Millisecond).String())
		}
		h.runAfter(a)
	}
}

// runAfter runs a knock.after callback in the state of the hook that scheduled it, unless it
// was dropped with that hook.
func (h *hookRuntime) runAfter(a *afterCall) {
	if !a.hook.afters[a] {
		return
	}
	delete(a.hook.afters, a)
	if a.index >= 0 {
		heap.Remove(&h.pending, a.index)
	}
	h.call("knock.after callback", a.hook, a.fn)
	h.release(a.hook)
}

// runOverdue runs the callbacks taken out of pending to make room, and logs, at most once a
// second, how many ran early.
func (h *hookRuntime) runOverdue() {
	for len(h.overdue) > 0 {
		a := h.overdue[0]
		h.overdue = h.overdue[1:]
		h.runAfter(a)
	}
	if h.earlyRuns > 0 && time.Since(h.earlyLog) >= time.Second {
		h.log.Warn("knock.after: too many callbacks pending; those due soonest ran early", "event", "overload",
			"count", h.earlyRuns, "max_pending", h.maxAfters)
		h.earlyRuns, h.earlyLog = 0, time.Now()
	}
}

func (h *hookRuntime) stop() {
	h.quitAt.Store(time.Now().UnixNano())
	close(h.quit)
	<-h.done
}

// pastGrace reports whether shutdown began more than shutdownGrace ago: the events still queued,
// even in the batch under way, are then left unhandled.
func (h *hookRuntime) pastGrace() bool {
	at := h.quitAt.Load()
	return at != 0 && time.Now().UnixNano()-at > int64(shutdownGrace)
}

// installHook makes fresh the running hook and sets what derives from it: the tracker reports
// every knock if --verbose is on or some door has an on_knock. It retires the hook it replaces:
// a broken one (a runtime panic) is closed at once and its pending knock.after callbacks are
// dropped, each logged; any other keeps its state until its pending callbacks have run in it.
func (h *hookRuntime) installHook(fresh *luaHook, oldBroken bool) {
	old := h.hook
	h.hook = fresh
	if h.tracker != nil {
		want := h.cfg.verbose
		for d := range fresh.doors {
			want = want || fresh.doors[d][hookKnock] != nil
		}
		h.tracker.wantKnock.Store(want)
	}
	switch {
	case old == nil || old == fresh:
	case oldBroken:
		h.discard(old, "its Lua state was replaced after a runtime panic")
	default:
		h.retired = append(h.retired, old)
		h.release(old)
	}
}

// release closes a retired hook's state once none of its callbacks is pending.
func (h *hookRuntime) release(hook *luaHook) {
	if hook == h.hook || len(hook.afters) > 0 || hook.L.IsClosed() {
		return
	}
	hook.L.Close()
	h.retired = slices.DeleteFunc(h.retired, func(r *luaHook) bool { return r == hook })
}

// discard closes a hook's state now, dropping the callbacks it has pending; why, unless empty,
// is logged for each.
func (h *hookRuntime) discard(hook *luaHook, why string) {
	for a := range hook.afters {
		a.timer.Stop() // one that fired already is dropped when it arrives
		if a.index >= 0 {
			heap.Remove(&h.pending, a.index)
		}
		if why != "" {
			h.log.Warn("knock.after callback dropped: "+why, "event", "hook_error", "due_in", time.Until(a.due).Round(time.Millisecond).String())
		}
	}
	clear(hook.afters)
	if !hook.L.IsClosed() {
		hook.L.Close()
	}
	h.retired = slices.DeleteFunc(h.retired, func(r *luaHook) bool { return r == hook })
}

// closeAll closes every state, the running hook's and the retired ones'.
func (h *hookRuntime) closeAll() {
	for _, hook := range slices.Clone(h.retired) {
		h.discard(hook, "the server is shutting down")
	}
	if h.hook != nil {
		h.discard(h.hook, "the server is shutting down")
	}
}

// dispatch logs an event and calls its door's handler; it reports whether the call succeeded.
func (h *hookRuntime) dispatch(e *event) bool {
	d := h.cfg.doors[e.door]
	ip := e.from.addr().String()
	user := h.userOf(e)
	a := h.attrs[:0]
	switch e.kind {
	case eventUnlock:
		if d.oneTime != "" {
			h.nextSequence(int(e.door))
		}
		now := time.Now().UnixNano()
		h.unlocks.Add(1)
		h.lastUnlock.Store(now)
		h.latency.record(now - e.ts)
		a = append(a, slog.String("event", "unlock"), slog.String("door", d.name), slog.String("ip", ip), slog.Int("port", int(e.port.port)),
			slog.String("proto", e.port.proto.String()), slog.Int("source_port", int(e.srcPort)), slog.Float64("elapsed", float64(e.elapsed)/1e9))
		if user != "" {
			a = append(a, slog.String("user", user))
		}
		h.logRecord(e.ts, "unlock", a)
	case eventFail:
		if h.failLog.allow(time.Now()) {
			a = append(a, slog.String("event", "fail"), slog.String("door", d.name), slog.String("ip", ip), slog.Int("port", int(e.port.port)),
				slog.String("proto", e.port.proto.String()), slog.String("reason", e.reason.String()))
			if e.rightFor != 0 {
				a = append(a, slog.String("right_for", h.cfg.doors[e.rightFor-1].name))
			}
			h.logRecord(e.ts, "knock failed", a)
		}
	case eventKnock:
		if h.cfg.verbose {
			a = append(a, slog.String("event", "knock"), slog.String("ip", ip), slog.Int("port", int(e.port.port)),
				slog.String("proto", e.port.proto.String()), slog.Int("source_port", int(e.srcPort)))
			h.logRecord(e.ts, "knock", a)
		}
	}
	h.attrs = a
	kind := hookOfEvent[e.kind]
	fn := h.hook.doors[e.door][kind]
	if fn == nil {
		return true
	}
	arg := lua.LValue(lua.LNil)
	if h.hook.readsEvent[fn] {
		arg = h.eventTable(h.hook.L, e, ip, user)
	}
	return h.call(hookNames[kind], h.hook, fn, arg) == nil
}

// readsFirstParam reports whether a compiled Lua function may use its first parameter: read
// register 0 in any instruction, capture it in a closure, or reach it through "...". A handler
// that never names its ev gets no table: building one is most of what an unlock costs a hook
// that only counts, or that collects nothing per event. It errs on the side of yes.
func readsFirstParam(p *lua.FunctionProto) bool {
	if p.NumParameters == 0 {
		return p.IsVarArg != 0
	}
	code := p.Code
	for pc := 0; pc < len(code); pc++ {
		inst := code[pc]
		op, a, b, c := int(inst>>26), int(inst>>18)&0xff, int(inst&0x1ff), int(inst>>9)&0x1ff
		reads := false
		switch op {
		case lua.OP_LOADK, lua.OP_LOADBOOL, lua.OP_LOADNIL, lua.OP_GETUPVAL, lua.OP_GETGLOBAL,
			lua.OP_NEWTABLE, lua.OP_JMP, lua.OP_VARARG, lua.OP_NOP, lua.OP_CLOSE:
		case lua.OP_MOVE, lua.OP_UNM, lua.OP_NOT, lua.OP_LEN, lua.OP_GETTABLEKS, lua.OP_TESTSET, lua.OP_CONCAT:
			reads = b == 0 // CONCAT reads B to C
		case lua.OP_MOVEN: // MOVE, then C more moves packed in the instructions that follow
			reads = b == 0
			for i := 1; i <= c && pc+i < len(code); i++ {
				reads = reads || int(code[pc+i]&0x1ff) == 0
			}
			pc += c
		case lua.OP_GETTABLE, lua.OP_SELF, lua.OP_ADD, lua.OP_SUB, lua.OP_MUL, lua.OP_DIV, lua.OP_MOD,
			lua.OP_POW, lua.OP_EQ, lua.OP_LT, lua.OP_LE:
			reads = b == 0 || c == 0 // register 0, or a constant (RK operands have bit 8 set)
		case lua.OP_SETTABLE:
			reads = a == 0 || b == 0 || c == 0
		case lua.OP_SETTABLEKS:
			reads = a == 0 || c == 0
		case lua.OP_SETGLOBAL, lua.OP_SETUPVAL, lua.OP_TEST, lua.OP_CALL, lua.OP_TAILCALL,
			lua.OP_FORLOOP, lua.OP_FORPREP, lua.OP_TFORLOOP, lua.OP_SETLIST:
			reads = a == 0 // each reads A, or a range that starts at A
		case lua.OP_RETURN:
			reads = a == 0 && b != 1
		case lua.OP_CLOSURE: // then one MOVE (a local) or GETUPVAL per upvalue of the closure
			n := int(p.FunctionPrototypes[inst&0x3ffff].NumUpvalues)
			for i := 1; i <= n && pc+i < len(code); i++ {
				reads = reads || int(code[pc+i]>>26) == lua.OP_MOVE && int(code[pc+i]&0x1ff) == 0
			}
			pc += n
		default:
			reads = true
		}
		if reads {
			return true
		}
	}
	return false
}

// logRecord logs at info level without asking the runtime for the caller's program counter,
// which slog's Logger methods do on every line. The record's time is unixNano: for an event,
// when the kernel received the knock it reports, however long the event waited for the hook.
func (h *hookRuntime) logRecord(unixNano int64, msg string, attrs []slog.Attr) {
	handler := h.log.Handler()
	if !handler.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	stamp := time.Now()
	if unixNano != 0 {
		stamp = time.Unix(0, unixNano)
	}
	r := slog.NewRecord(stamp, slog.LevelInfo, msg, 0)
	r.AddAttrs(attrs...)
	_ = handler.Handle(context.Background(), r)
}

// nextSequence uses up a one-time door's sequence, as knockd does, and sets the next one.
func (h *hookRuntime) nextSequence(d int) {
	door := &h.cfg.doors[d]
	seq, err := useOneTimeSequence(door.oneTime)
	switch {
	case err != nil:
		h.log.Error("one-time sequence not used up: the door stays shut", "event", "hook_error", "door", door.name, "err", err.Error())
	case seq == nil:
		h.log.Warn("no one-time sequence left: the door stays shut until the file has new lines and knockknock restarts", "event", "overload", "door", door.name, "file", door.oneTime)
	default:
		door.seq = seq
		h.values.seqs[d] = h.values.seqs[d][:0]
		for _, p := range seq {
			h.values.seqs[d] = append(h.values.seqs[d], lua.LNumber(p.port))
		}
		h.tracker.setSequence(d, seq)
		h.log.Info("next one-time sequence", "event", "sequence", "door", door.name, "file", door.oneTime)
	}
}

func (h *hookRuntime) userOf(e *event) string {
	if e.conf == nil {
		return ""
	}
	if k := h.tracker.keys.Load().lookup(e.conf.keyID[:]); k != nil {
		return k.name
	}
	return ""
}

// eventTable is the ev argument of a hook call: a fresh table each time (a hook may keep it).
func (h *hookRuntime) eventTable(L *lua.LState, e *event, ip, user string) *lua.LTable {
	v := &h.values
	t := L.CreateTable(0, 10)
	t.RawSetString("ip", lua.LString(ip))
	t.RawSetString("source_port", h.portValue(e.srcPort))
	t.RawSetString("port", h.portValue(e.port.port))
	t.RawSetString("proto", v.protos[e.port.proto&1])
	t.RawSetString("door", v.doors[e.door])
	seq := L.CreateTable(len(v.seqs[e.door]), 0)
	for i, p := range v.seqs[e.door] {
		seq.RawSetInt(i+1, p)
	}
	t.RawSetString("sequence", seq)
	t.RawSetString("time", lua.LNumber(float64(e.ts)/1e9))
	t.RawSetString("elapsed", lua.LNumber(float64(e.elapsed)/1e9))
	if user != "" {
		t.RawSetString("user", lua.LString(user))
	}
	if e.kind == eventFail {
		t.RawSetString("reason", v.reasons[e.reason])
		if e.rightFor != 0 {
			t.RawSetString("right_for", v.doors[e.rightFor-1])
		}
	}
	return t
}

// portValue is a port as a Lua number, made once per port.
func (h *hookRuntime) portValue(p uint16) lua.LValue {
	if h.values.ports[p] == nil {
		h.values.ports[p] = lua.LNumber(p)
	}
	return h.values.ports[p]
}

// call runs one hook function; a failure is logged and the server goes on.
func (h *hookRuntime) call(name string, hook *luaHook, fn *lua.LFunction, args ...lua.LValue) error {
	if fn == nil {
		return nil
	}
	err := h.protect(hook, func() error {
		return hook.L.CallByParam(lua.P{Fn: fn, NRet: 0, Protect: true}, args...)
	})
	if err == nil {
		return nil
	}
	h.log.Error("hook failed", "event", "hook_error", "hook", name, "err", err.Error())
	var p *runtimePanic
	if errors.As(err, &p) && !h.stopping {
		if hook == h.hook {
			h.replaceState()
		} else if slices.Contains(h.retired, hook) {
			h.discard(hook, "its Lua state was closed after a runtime panic")
		}
	}
	return err
}

// replaceState starts the hook afresh after a panic inside the Lua runtime, and closes the
// broken state. Its globals are lost.
func (h *hookRuntime) replaceState() {
	fresh, err := h.load(h.proto)
	if err != nil {
		h.log.Error("hook could not be restarted; keeping the old state", "event", "hook_error", "err", err.Error())
		return
	}
	h.installHook(fresh, true)
	h.log.Warn("hook state replaced after a runtime panic: its globals were reset", "event", "hook_reload")
}

// reload re-reads the hook file. The new hook's on_start("reload") runs first: if it fails,
// the new hook is dropped and the old one goes on, its rules in place. Only then does the old
// hook's on_stop("reload") run. Callbacks the old state scheduled with knock.after still run,
// in the old state, which is closed after the last of them.
func (h *hookRuntime) reload() error {
	cfg := h.cfg
	if cfg.hookPath == "" {
		return nil // an embedded hook has no file to read again
	}
	src, err := readSmallFile(cfg.hookPath, maxHookFile)
	if err != nil {
		return fmt.Errorf("hook %v", err)
	}
	proto, err := compileHook(cfg.hookName, src)
	if err != nil {
		return err
	}
	fresh, err := h.load(proto)
	if err != nil {
		return err
	}
	if err := h.start(fresh, "reload"); err != nil {
		h.discard(fresh, "the new hook's on_start failed")
		return fmt.Errorf("the new hook's on_start failed: %v", err)
	}
	h.call("on_stop", h.hook, h.hook.stop, lua.LString("reload"))
	h.proto = proto
	h.installHook(fresh, false)
	return nil
}

// reloadKeys reads the keys again, on their own: a revocation must not depend on the hook file
// being good. A keys file that does not load leaves the running keys in place.
func (s *server) reloadKeys() {
	src := s.cfg.keySource
	if src.flag == "" {
		return
	}
	keys, err := loadKeys(src)
	if err != nil {
		s.log.Error("keys reload failed; the running keys stay in force", "event", "keys_reload", "err", oneLine(err.Error()))
		return
	}
	s.tracker.keys.Store(keys)
	s.log.Info("keys reloaded", "event", "keys_reload", "keys", len(keys.byID), "from", src.path)
}

// requestReload asks the runtime goroutine to reload and waits for the answer.
func (h *hookRuntime) requestReload() error {
	reply := make(chan error, 1)
	select {
	case h.reloads <- reply:
		return <-reply
	case <-h.done:
		return errors.New("the hook runtime has stopped")
	}
}

// rateLimit allows failLogsPerSecond lines a second and reports how many it held back.
type rateLimit struct {
	log        *slog.Logger
	what       string // what it holds back, for the line that counts them
	perSecond  int
	mu         sync.Mutex // allow may be called from several goroutines
	second     int64
	used       int
	suppressed int
}

const failLogsPerSecond = 200

// allow reports whether one more line may be logged now; the first call in a new second first
// logs how many the last one held back.
func (r *rateLimit) allow(now time.Time) bool {
	r.mu.Lock()
	held := 0
	if sec := now.Unix(); sec != r.second {
		held, r.second, r.used, r.suppressed = r.suppressed, sec, 0, 0
	}
	ok := r.used < r.perSecond
	if ok {
		r.used++
	} else {
		r.suppressed++
	}
	r.mu.Unlock()
	if held > 0 {
		r.log.Warn(r.what+" not logged: over the rate limit", "event", "overload", "count", held, "limit_per_second", r.perSecond)
	}
	return ok
}

// latencyHistogram counts durations in buckets a quarter of a power of two wide, so a quantile
// is known to within 25 %.
type latencyHistogram struct {
	buckets [256]atomic.Uint64
}

func latencyBucket(ns int64) int {
	if ns < 1 {
		return 0
	}
	exp := 63 - bits.LeadingZeros64(uint64(ns))
	frac := 0
	if exp >= 2 {
		frac = int((uint64(ns) >> (exp - 2)) & 3)
	}
	return min(exp*4+frac, 255)
}

func bucketUpper(b int) int64 {
	exp, frac := b/4, b%4
	if exp < 2 {
		return int64(1) << (exp + 1)
	}
	if upper := uint64(4+frac+1) << (exp - 2); upper <= math.MaxInt64 {
		return int64(upper)
	}
	return math.MaxInt64
}

func (l *latencyHistogram) record(ns int64) { l.buckets[latencyBucket(ns)].Add(1) }

// roundUp2 rounds n up to two significant digits: 2147483648 to 2200000000.
func roundUp2(n int64) int64 {
	unit := int64(1)
	for n/unit >= 100 {
		unit *= 10
	}
	if n > math.MaxInt64-unit {
		return n
	}
	return (n + unit - 1) / unit * unit
}

// quantile returns an upper bound for the q-quantile, rounded up to two significant digits
// (the buckets are 25 % wide: more digits would be false precision), or 0 when nothing was
// recorded.
func (l *latencyHistogram) quantile(q float64) time.Duration {
	var total uint64
	for i := range l.buckets {
		total += l.buckets[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i := range l.buckets {
		if seen += l.buckets[i].Load(); seen >= rank {
			return time.Duration(roundUp2(bucketUpper(i)))
		}
	}
	return 0
}

// installModule makes `knock` a global and require-able, and replaces os.execute with a version
// that honours the hook timeout.
func (h *hookRuntime) installModule(hook *luaHook) {
	L := hook.L
	mod := L.NewTable()
	L.SetFuncs(mod, map[string]lua.LGFunction{
		"close_knock_ports": h.luaCloseKnockPorts,
		"open_knock_ports":  h.luaOpenKnockPorts,
		"serve":             h.luaServe,
		"stop_service":      h.luaStopService,
		"allow":             h.luaAllow,
		"revoke":            h.luaRevoke,
		"exec":              h.luaExec,
		"after":             func(L *lua.LState) int { return h.luaAfter(hook, L) },
		"log":               h.luaLog,
		"arg":               h.luaArg,
	})
	mod.RawSetString("config", h.configTable(L))
	args := L.NewTable()
	for _, kv := range h.cfg.hookArgs {
		args.RawSetString(kv[0], lua.LString(kv[1]))
	}
	mod.RawSetString("args", args)
	L.SetGlobal("knock", mod)
	L.PreloadModule("knock", func(L *lua.LState) int {
		L.Push(mod)
		return 1
	})
	if osTable, ok := L.GetGlobal("os").(*lua.LTable); ok {
		osTable.RawSetString("execute", L.NewFunction(h.luaOSExecute))
		osTable.RawSetString("exit", L.NewFunction(func(L *lua.LState) int {
			L.RaiseError("os.exit is not available in a hook: return from the handler, or call error() to fail it")
			return 0
		}))
	}
	if ioTable, ok := L.GetGlobal("io").(*lua.LTable); ok {
		// A program read through io.popen is out of the hook timeout's reach (a read that
		// blocks in Go cannot be cancelled): knock.exec runs one under it.
		ioTable.RawSetString("popen", L.NewFunction(func(L *lua.LState) int {
			L.RaiseError("io.popen is not available in a hook: use knock.exec, which the hook timeout can cancel")
			return 0
		}))
	}
	if mathTable, ok := L.GetGlobal("math").(*lua.LTable); ok {
		mathTable.RawSetString("random", L.NewFunction(luaMathRandom))
	}
}

// luaMathRandom is math.random as Lua 5.1 defines it, with its argument errors: gopher-lua's
// own panics in Go on an empty interval (math.random(0)), which would cost the hook its state.
func luaMathRandom(L *lua.LState) int {
	switch L.GetTop() {
	case 0:
		L.Push(lua.LNumber(mrand.Float64()))
		return 1
	case 1, 2:
	default:
		L.RaiseError("wrong number of arguments to 'random'")
	}
	arg := func(n int) int64 {
		f := math.Floor(float64(L.CheckNumber(n)))
		if !(f >= -(1<<53) && f <= 1<<53) { // NaN too
			L.ArgError(n, "interval is too large")
		}
		return int64(f)
	}
	lo, hi := int64(1), arg(1)
	if L.GetTop() == 2 {
		lo, hi = hi, arg(2)
	}
	if lo > hi {
		L.ArgError(L.GetTop(), "interval is empty")
	}
	n := hi - lo + 1
	if n <= 0 || n > 1<<53 {
		L.ArgError(L.GetTop(), "interval is too large")
	}
	L.Push(lua.LNumber(lo + mrand.Int64N(n)))
	return 1
}

// configTable is knock.config: a read-only view of the settings and the doors.
func (h *hookRuntime) configTable(L *lua.LState) *lua.LTable {
	cfg := h.cfg
	numbers := func(ports []portSpec) *lua.LTable {
		t := L.NewTable()
		for _, p := range ports {
			t.Append(lua.LNumber(p.port))
		}
		return t
	}
	data := L.NewTable()
	doors := L.NewTable()
	for _, d := range cfg.doors {
		dt := L.NewTable()
		dt.RawSetString("name", lua.LString(d.name))
		dt.RawSetString("ports", numbers(d.seq))
		protos := L.NewTable()
		for _, p := range d.seq {
			protos.Append(lua.LString(p.proto.String()))
		}
		dt.RawSetString("protos", protos)
		dt.RawSetString("sequence", lua.LString(formatSpecs(d.seq)))
		dt.RawSetString("timeout", lua.LNumber(d.timeout.Seconds()))
		dt.RawSetString("seq_timeout", lua.LNumber(d.seqTimeout.Seconds()))
		if d.target.IsValid() {
			dt.RawSetString("target", lua.LString(d.target.String()))
		}
		a := d.action
		for k, v := range map[string]string{"start_command": a.start, "start_command_6": a.start6, "stop_command": a.stop, "stop_command_6": a.stop6} {
			if v != "" {
				dt.RawSetString(k, lua.LString(v))
			}
		}
		if a.cmdTimeout > 0 {
			dt.RawSetString("cmd_timeout", lua.LNumber(a.cmdTimeout.Seconds()))
		}
		doors.Append(dt)
		doors.RawSetString(d.name, dt)
	}
	data.RawSetString("doors", doors)
	data.RawSetString("ports", numbers(cfg.doors[0].seq)) // the first door's, as before doors
	data.RawSetString("decoys", numbers(cfg.decoys))
	data.RawSetString("timeout", lua.LNumber(cfg.doors[0].timeout.Seconds()))
	data.RawSetString("hook_timeout", lua.LNumber(cfg.hookTimeout.Seconds()))
	listen := ""
	if len(cfg.listen) > 0 {
		listen = cfg.listen[0].String()
	}
	data.RawSetString("listen", lua.LString(listen))
	data.RawSetString("capture", lua.LBool(cfg.capture))
	data.RawSetString("authenticated", lua.LBool(cfg.keys != nil))
	return readOnly(L, data)
}

// readOnly wraps a table so that hooks can read it but not change it.
func readOnly(L *lua.LState, data *lua.LTable) *lua.LTable {
	view := L.NewTable()
	meta := L.NewTable()
	meta.RawSetString("__index", data)
	meta.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("knock.config is read-only")
		return 0
	}))
	meta.RawSetString("__metatable", lua.LString("read-only"))
	L.SetMetatable(view, meta)
	return view
}

// luaCloseKnockPorts is knock.close_knock_ports(). At a hook's top level it is an error: the
// knock ports open after the hook has loaded, so closing them there would close nothing.
func (h *hookRuntime) luaCloseKnockPorts(L *lua.LState) int {
	h.onlyInHandler(L, "close_knock_ports")
	if h.fx.knockPortsOpen() {
		h.fx.closeKnockPorts()
		h.log.Info("knock ports closed", "event", "close_knock_ports")
	}
	return 0
}

func (h *hookRuntime) luaOpenKnockPorts(L *lua.LState) int {
	h.onlyInHandler(L, "open_knock_ports")
	if !h.fx.knockPortsOpen() {
		if err := h.fx.openKnockPorts(); err != nil {
			return pushError(L, err)
		}
		h.log.Info("knock ports open", "event", "open_knock_ports", "ports", formatSpecs(h.cfg.watchedPorts()))
	}
	L.Push(lua.LTrue)
	return 1
}

// onlyInHandler raises a Lua error when fn is called from a hook's top level (while it loads).
func (h *hookRuntime) onlyInHandler(L *lua.LState, fn string) {
	if h.topLevel {
		L.RaiseError("knock.%s: only inside a handler (on_start, on_unlock, ...), not at the hook's top level: the knock ports open after the hook has loaded", fn)
	}
}

// pushError returns nil, message: the Lua convention for a failure the caller may handle.
func pushError(L *lua.LState, err error) int {
	L.Push(lua.LNil)
	L.Push(lua.LString(err.Error()))
	return 2
}

func (h *hookRuntime) luaServe(L *lua.LState) int {
	opts := L.OptTable(1, L.NewTable())
	spec := serviceSpec{port: defaultService, proto: "both", greeting: defaultGreeting}
	switch v := opts.RawGetString("port").(type) {
	case *lua.LNilType:
	case lua.LNumber:
		if v < 1 || v > 65535 || v != lua.LNumber(math.Trunc(float64(v))) {
			L.ArgError(1, fmt.Sprintf("port must be a whole number from 1 to 65535, not %v", v))
		}
		spec.port = int(v)
	default:
		L.ArgError(1, "port must be a number")
	}
	spec.proto = stringField(L, opts, "proto", spec.proto)
	if spec.proto != "tcp" && spec.proto != "udp" && spec.proto != "both" {
		L.ArgError(1, fmt.Sprintf("proto must be tcp, udp or both, not %q", spec.proto))
	}
	switch allow := opts.RawGetString("allow"); allow {
	case lua.LNil, lua.LFalse:
	case lua.LString("clients"):
		spec.allowOnly = true
	default:
		L.ArgError(1, fmt.Sprintf("allow must be nil or \"clients\", not %s", allow.String()))
	}
	spec.greeting = stringField(L, opts, "greeting", spec.greeting)
	if err := h.fx.startService(spec); err != nil {
		h.log.Error("service not started", "event", "hook_error", "port", spec.port, "err", err.Error())
		return pushError(L, err)
	}
	L.Push(lua.LTrue)
	return 1
}

func stringField(L *lua.LState, t *lua.LTable, key, def string) string {
	switch v := t.RawGetString(key).(type) {
	case *lua.LNilType:
		return def
	case lua.LString:
		return string(v)
	default:
		L.ArgError(1, fmt.Sprintf("%s must be a string", key))
		return ""
	}
}

func (h *hookRuntime) luaStopService(L *lua.LState) int {
	port := L.CheckInt(1)
	h.fx.stopService(port)
	return 0
}

func checkAddr(L *lua.LState, n int) addrKey {
	s := L.CheckString(n)
	a, err := netip.ParseAddr(s)
	if err != nil {
		L.ArgError(n, fmt.Sprintf("%q is not an IP address", s))
	}
	return keyOf(a)
}

func (h *hookRuntime) luaAllow(L *lua.LState) int {
	k := checkAddr(L, 1)
	secs := float64(L.OptNumber(2, defaultAllow))
	if !(secs > 0 && secs <= 365*24*3600) {
		L.ArgError(2, "seconds must be positive (at most a year)")
	}
	h.fx.grant(k, time.Duration(secs*float64(time.Second)))
	return 0
}

func (h *hookRuntime) luaRevoke(L *lua.LState) int {
	k := checkAddr(L, 1)
	h.fx.revoke(k)
	return 0
}

// luaExec runs a program directly, without a shell: knock.exec("nft", "add", "element", ...).
// It returns the exit code and the combined output, or nil and a message when the program could
// not start. It is killed, with its process group, when the hook call times out.
func (h *hookRuntime) luaExec(L *lua.LState) int {
	name := L.CheckString(1)
	args := make([]string, L.GetTop()-1)
	for i := range args {
		args[i] = L.CheckString(i + 2)
	}
	return h.runCommand(L, exec.Command(name, args...))
}

// luaOSExecute is os.execute(cmd) through /bin/sh, as in standard Lua, but under the hook timeout.
func (h *hookRuntime) luaOSExecute(L *lua.LState) int {
	if L.GetTop() == 0 {
		L.Push(lua.LTrue) // a shell is available
		return 1
	}
	cmd := exec.Command("/bin/sh", "-c", L.CheckString(1))
	h.runCommand(L, cmd)
	if L.Get(-2) == lua.LNil { // it could not start: nil and the message
		return 2
	}
	L.Pop(1) // os.execute returns only the status
	return 1
}

// runCommand runs cmd for a hook call, through the effects: it pushes the exit code and the
// output, or nil and a message when the command could not start, and raises an error when the
// call was cancelled.
func (h *hookRuntime) runCommand(L *lua.LState, cmd *exec.Cmd) int {
	ctx := L.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	code, out, err := h.fx.exec(ctx, cmd)
	if ctx.Err() != nil {
		L.RaiseError("%s cancelled at the hook timeout", cmd.Path)
	}
	if err != nil {
		return pushError(L, err)
	}
	L.Push(lua.LNumber(code))
	L.Push(lua.LString(out))
	return 2
}

func (s *server) exec(ctx context.Context, cmd *exec.Cmd) (int, string, error) {
	return runCommand(ctx, cmd)
}

// runCommand runs cmd in a process group of its own and returns its exit code and output. When
// ctx is cancelled it kills the group and, on Linux, every process the command started, even
// one that left the group (setsid, daemonizing): see procTracker.
func runCommand(ctx context.Context, cmd *exec.Cmd) (int, string, error) {
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	started, err := procs.start(cmd)
	if err != nil {
		return 0, "", err
	}
	killed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(killed)
		procs.kill(cmd.Process.Pid, started)
	})
	err = cmd.Wait()
	if !stop() {
		<-killed // the call ends when everything it started has
	}
	procs.done(cmd.Process.Pid)
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	} else if err != nil {
		return 0, "", err
	}
	return code, out.String(), nil
}

// limitedBuffer keeps the first maxExecOutput bytes of a command's output and discards the rest.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxExecOutput - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (h *hookRuntime) luaAfter(hook *luaHook, L *lua.LState) int {
	secs := float64(L.CheckNumber(1))
	fn := L.CheckFunction(2)
	if !(secs >= 0 && secs <= 365*24*3600) {
		L.ArgError(1, "seconds must be from 0 to a year")
	}
	if h.stopping {
		h.log.Warn("knock.after at shutdown: the callback will not run", "event", "shutdown", "seconds", secs)
		return 0
	}
	if slices.Contains(h.retired, hook) {
		// A hook a reload replaced only finishes what it had pending: a periodic job that
		// schedules itself again would run every old version of the hook side by side.
		h.log.Warn("knock.after from a hook a reload replaced: the callback will not run", "event", "hook_reload", "seconds", secs)
		return 0
	}
	d := time.Duration(secs * float64(time.Second))
	if len(h.pending) >= h.maxAfters {
		soonest := heap.Pop(&h.pending).(*afterCall)
		soonest.inFlight = !soonest.timer.Stop()
		h.overdue = append(h.overdue, soonest)
		h.earlyRuns++
	}
	a := &afterCall{hook: hook, fn: fn, due: time.Now().Add(d)}
	hook.afters[a] = true
	heap.Push(&h.pending, a)
	a.timer = time.AfterFunc(d, func() {
		select {
		case h.afters <- a:
		case <-h.done:
		}
	})
	return 0
}

// luaLog is knock.log(msg [, fields]): fields become attributes; fields.level may be
// "debug", "info", "warn" or "error" (any other level is a Lua error).
func (h *hookRuntime) luaLog(L *lua.LState) int {
	msg := L.CheckString(1)
	level := slog.LevelInfo
	attrs := []any{"event", "hook"}
	if fields := L.OptTable(2, nil); fields != nil {
		fields.ForEach(func(k, v lua.LValue) {
			key := k.String()
			if key == "level" {
				var ok bool
				if level, ok = logLevels[strings.ToLower(v.String())]; !ok || v.Type() != lua.LTString {
					L.ArgError(2, fmt.Sprintf("level %s: use debug, info, warn or error", luaQuote(v)))
				}
				return
			}
			attrs = append(attrs, key, luaToAttr(v))
		})
	}
	h.log.Log(context.Background(), level, msg, attrs...)
	return 0
}

var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// luaQuote shows a Lua value in an error message: a string quoted, anything else as Lua prints it.
func luaQuote(v lua.LValue) string {
	if s, ok := v.(lua.LString); ok {
		return strconv.Quote(string(s))
	}
	return v.String()
}

// luaArg is knock.arg(name [, {type=, default=, min=, max=, whole=}]): the --hook-arg value of
// that name, checked and converted. type is "string" (the default), "number", "port" (a whole
// number from 1 to 65535) or "duration" (seconds, as a number: "30", "1.5", "250ms", "2m");
// min and max bound a number or a duration, whole asks for a whole number. An absent argument
// is the default (nil without one); a malformed one is a Lua error naming the argument, its value
// and what is allowed, so a hook that reads it at its top level fails to load.
func (h *hookRuntime) luaArg(L *lua.LState) int {
	name := L.CheckString(1)
	opts := L.OptTable(2, L.NewTable())
	field := func(key string) lua.LValue { return opts.RawGetString(key) }
	typ := "string"
	switch v := field("type").(type) {
	case *lua.LNilType:
	case lua.LString:
		typ = string(v)
	default:
		L.ArgError(2, "type must be a string")
	}
	bound := func(key string, def float64) float64 {
		switch v := field(key).(type) {
		case *lua.LNilType:
			return def
		case lua.LNumber:
			return float64(v)
		default:
			L.ArgError(2, key+" must be a number")
			return 0
		}
	}
	lo, hi := bound("min", math.Inf(-1)), bound("max", math.Inf(1))
	whole := lua.LVAsBool(field("whole"))
	switch typ {
	case "string", "number", "duration":
	case "port":
		lo, hi = max(lo, 1), min(hi, 65535)
	default:
		L.ArgError(2, fmt.Sprintf("type %q: use string, number, port or duration", typ))
	}
	raw, present := "", false
	for _, kv := range h.cfg.hookArgs {
		if kv[0] == name {
			raw, present = kv[1], true
		}
	}
	if !present {
		L.Push(field("default"))
		return 1
	}
	if typ == "string" {
		L.Push(lua.LString(raw))
		return 1
	}
	n, ok := parseArgNumber(typ, raw)
	if !ok || n < lo || n > hi || whole && n != math.Trunc(n) {
		L.RaiseError("--hook-arg %s=%s: want %s", name, raw, argWant(typ, lo, hi, whole))
	}
	L.Push(lua.LNumber(n))
	return 1
}

// argWant says what knock.arg allows.
func argWant(typ string, lo, hi float64, whole bool) string {
	var want string
	switch {
	case typ == "port":
		want = "a port number"
	case typ == "duration" && whole:
		want = "a whole number of seconds"
	case typ == "duration":
		want = "a duration: seconds (30, 1.5) or with a unit (250ms, 2m)"
	case whole:
		want = "a whole number"
	default:
		want = "a number"
	}
	if !math.IsInf(lo, -1) || !math.IsInf(hi, 1) {
		want += " " + rangeText(lo, hi)
		if typ == "duration" && !whole {
			want += " seconds"
		}
	}
	return want
}

// parseArgNumber reads a hook argument as a number of its type: a decimal number (with an
// optional sign), a port, or a duration in seconds.
func parseArgNumber(typ, s string) (float64, bool) {
	switch typ {
	case "duration":
		d, err := parseDuration(s)
		return d.Seconds(), err == nil
	case "port":
		p, err := parsePort(s)
		return float64(p), err == nil
	}
	if !isDecimal(strings.TrimPrefix(s, "-")) {
		return 0, false
	}
	n, err := strconv.ParseFloat(s, 64)
	return n, err == nil && !math.IsInf(n, 0)
}

// rangeText says which numbers are allowed: "from 1 to 10", "from 0", "up to 10".
func rangeText(lo, hi float64) string {
	num := func(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
	switch {
	case math.IsInf(hi, 1):
		return "from " + num(lo)
	case math.IsInf(lo, -1):
		return "up to " + num(hi)
	}
	return "from " + num(lo) + " to " + num(hi)
}

func luaToAttr(v lua.LValue) any {
	switch v := v.(type) {
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	default:
		return v.String()
	}
}

// =============================================================================================
// The built-in service
//
// knock.serve starts it: TCP answers HTTP (so curl works) and UDP replies with the greeting. It
// is bounded: read, header, write and idle timeouts, at most serviceMaxConns connections and
// serviceMaxPerClient from one source prefix (see limitListener). In allow mode only addresses
// granted by knock.allow get through: TCP connections from others are reset right after the
// handshake (so a scan sees the port open: only a firewall hook makes a port invisible) and
// their UDP datagrams are dropped.

const (
	defaultGreeting     = "Hello {ip}: you knocked the right way, the door is open."
	serviceMaxConns     = 256
	serviceMaxPerClient = 8
	serviceTimeout      = 10 * time.Second
	serviceIdleTimeout  = 30 * time.Second
)

type serviceSpec struct {
	port      int
	proto     string // tcp, udp or both
	allowOnly bool
	greeting  string // {ip} becomes the client's address
}

type service struct {
	spec    serviceSpec
	http    *http.Server
	tcp     net.Listener  // http's listener, closed by close itself
	served  chan struct{} // closed when http's Serve has returned
	udp     *net.UDPConn
	udpErrs errorLog // the UDP goroutine's
}

// startService starts the service a spec describes. On a port served already it does nothing
// when the spec is the same; otherwise it restarts the service with the new spec, and if that
// fails, restores the old one and returns the error.
func (s *server) startService(spec serviceSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, running := s.services[spec.port]
	if running && old.spec == spec {
		return nil
	}
	if running {
		old.close()
		delete(s.services, spec.port)
	}
	svc, err := s.openService(spec)
	if err != nil {
		if running {
			prev, rerr := s.openService(old.spec)
			if rerr == nil {
				s.services[spec.port] = prev
				return fmt.Errorf("%w; the service goes on with its previous settings", err)
			}
			s.log.Error("service stopped: neither the new settings nor the old could be applied", "event", "hook_error", "port", spec.port, "err", rerr.Error())
		}
		return err
	}
	s.services[spec.port] = svc
	msg := "service started"
	if running {
		msg = "service changed"
	}
	s.log.Info(msg, "event", "serve", "port", spec.port, "proto", spec.proto, "allow", map[bool]string{true: "clients", false: "all"}[spec.allowOnly])
	return nil
}

// openService binds a service's sockets and starts serving them: all or none.
func (s *server) openService(spec serviceSpec) (*service, error) {
	svc := &service{spec: spec, udpErrs: errorLog{log: s.log}}
	if spec.proto != "udp" {
		ln, err := net.Listen("tcp", s.serviceAddr(spec.port))
		if err != nil {
			return nil, bindError("TCP", spec.port, err)
		}
		svc.http = &http.Server{
			Handler:           http.HandlerFunc(svc.serveHTTP),
			ReadHeaderTimeout: serviceTimeout / 2,
			ReadTimeout:       serviceTimeout,
			WriteTimeout:      serviceTimeout,
			IdleTimeout:       serviceIdleTimeout,
			MaxHeaderBytes:    8 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		var allow *allowList
		if spec.allowOnly {
			allow = &s.allow
			svc.http.SetKeepAlivesEnabled(false) // so that every request is checked at accept
		}
		limited := newLimitListener(ln, allow)
		svc.http.ConnState = limited.connState
		svc.tcp, svc.served = ln, make(chan struct{})
		go func() {
			defer close(svc.served)
			if err := svc.http.Serve(limited); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				s.log.Error("service stopped accepting TCP connections", "event", "hook_error", "port", spec.port, "err", err.Error())
			}
		}()
	}
	if spec.proto != "tcp" {
		addr, err := net.ResolveUDPAddr("udp", s.serviceAddr(spec.port))
		var conn *net.UDPConn
		if err == nil {
			conn, err = net.ListenUDP("udp", addr)
		}
		if err != nil {
			svc.close()
			return nil, bindError("UDP", spec.port, err)
		}
		svc.udp = conn
		go svc.serveUDP(&s.allow)
	}
	return svc, nil
}

func (s *server) serviceAddr(port int) string {
	if len(s.cfg.listen) == 1 {
		return netip.AddrPortFrom(s.cfg.listen[0], uint16(port)).String()
	}
	return ":" + strconv.Itoa(port)
}

func (s *server) stopService(port int) {
	s.mu.Lock()
	svc := s.services[port]
	delete(s.services, port)
	s.mu.Unlock()
	if svc != nil {
		svc.close()
		s.log.Info("service stopped", "event", "stop_service", "port", port)
	}
}

func (s *server) stopServices() {
	s.mu.Lock()
	ports := make([]int, 0, len(s.services))
	for p := range s.services {
		ports = append(ports, p)
	}
	s.mu.Unlock()
	for _, p := range ports {
		s.stopService(p)
	}
}

// close closes the service's sockets and returns once they are closed and the TCP Serve has
// returned, so that the port can be bound again at once. It closes the listener itself: Serve
// may not have taken it yet (http.Server.Close closes only the listeners Serve has taken).
func (svc *service) close() {
	if svc.http != nil {
		svc.http.Close()
		svc.tcp.Close()
		<-svc.served
	}
	if svc.udp != nil {
		svc.udp.Close()
	}
}

func (svc *service) greetingFor(ip string) string {
	return strings.ReplaceAll(svc.spec.greeting, "{ip}", ip) + "\n"
}

func (svc *service) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ip := r.RemoteAddr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		ip = ap.Addr().Unmap().String()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close") // an unread body is not worth keeping a connection for
	}
	io.WriteString(w, svc.greetingFor(ip))
}

// serveUDP answers each datagram with the greeting. Its errors are logged, at most one line a
// second: a client can cause them (a reply to an address that cannot be reached).
func (svc *service) serveUDP(allow *allowList) {
	buf := make([]byte, 2048)
	for {
		_, from, err := svc.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			svc.udpErrs.error(time.Now(), "service: UDP read failed", "port", svc.spec.port, "err", err.Error())
			time.Sleep(10 * time.Millisecond) // a lasting error must not spin
			continue
		}
		if svc.spec.allowOnly && !allow.allowed(keyOf(from.Addr()), time.Now().UnixNano()) {
			continue
		}
		if _, err := svc.udp.WriteToUDPAddrPort([]byte(svc.greetingFor(from.Addr().Unmap().String())), from); err != nil {
			svc.udpErrs.error(time.Now(), "service: UDP reply not sent", "port", svc.spec.port, "ip", from.Addr().Unmap().String(), "err", err.Error())
		}
	}
}

// errorLog logs errors at most once a second, and says how many it held back. One goroutine
// owns it.
type errorLog struct {
	log    *slog.Logger
	second int64
	held   int
}

func (e *errorLog) error(now time.Time, msg string, args ...any) {
	if sec := now.Unix(); sec != e.second {
		e.second = sec
		if e.held > 0 {
			args = append(args, "errors_not_logged", e.held)
		}
		e.held = 0
		e.log.Warn(msg, append([]any{"event", "service_error"}, args...)...)
		return
	}
	e.held++
}

// limitListener bounds the service's connections, in all and per source prefix (an IPv4 /24,
// an IPv6 /64), and in allow mode resets those from addresses knock.allow has not granted. When
// a bound is reached, a newcomer takes the place of the longest-idle connection, so that a flood
// of idle connections cannot lock others out; only when every connection is busy is the
// newcomer reset. For its prefix's bound, idle is one between requests or one that has sent
// nothing yet; for the total, one between requests or one that has sent nothing for a second, so
// that a flood from elsewhere cannot push out a client between its connect and its request.
type limitListener struct {
	net.Listener
	allow    *allowList // nil: everyone
	mu       sync.Mutex
	conns    map[*limitedConn]struct{}
	perGroup map[[8]byte]int
}

type limitedConn struct {
	net.Conn
	group [8]byte
	once  sync.Once
	l     *limitListener
	state http.ConnState // guarded by l.mu
	since time.Time      // when it entered state
	began atomic.Bool    // it has sent a byte: a request under way, even before its headers end
}

func (c *limitedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.began.Store(true)
	}
	return n, err
}

func newLimitListener(ln net.Listener, allow *allowList) *limitListener {
	return &limitListener{Listener: ln, allow: allow, conns: map[*limitedConn]struct{}{}, perGroup: map[[8]byte]int{}}
}

// connGroup is the source prefix a connection counts against.
func connGroup(a netip.Addr) [8]byte {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return [8]byte{4, b[0], b[1], b[2]}
	}
	b := a.As16()
	return [8]byte(b[:8])
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
		if err != nil || l.allow != nil && !l.allow.allowed(keyOf(ap.Addr()), time.Now().UnixNano()) {
			reset(conn)
			continue
		}
		if c := l.admit(conn, connGroup(ap.Addr())); c != nil {
			return c, nil
		}
		reset(conn)
	}
}

// admit counts a new connection in, making room if it must, or returns nil.
func (l *limitListener) admit(conn net.Conn, group [8]byte) *limitedConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perGroup[group] >= serviceMaxPerClient && !l.closeIdle(group, true) {
		return nil
	}
	if len(l.conns) >= serviceMaxConns && !l.closeIdle(group, false) {
		return nil
	}
	c := &limitedConn{Conn: conn, group: group, l: l, state: http.StateNew, since: time.Now()}
	l.conns[c] = struct{}{}
	l.perGroup[group]++
	return c
}

// closeIdle closes the longest-idle connection (of the group, when sameGroup) and reports
// whether there was one. It holds l.mu: the connection is forgotten here and closed aside.
func (l *limitListener) closeIdle(group [8]byte, sameGroup bool) bool {
	var victim *limitedConn
	victimRank := 2
	now := time.Now()
	for c := range l.conns {
		if sameGroup && c.group != group {
			continue
		}
		// Rank 0: between requests, or silent; rank 1, only when there is no rank 0: still
		// sending its request's headers (so a slow sender cannot hold a slot against a flood).
		rank := 2
		switch {
		case c.state == http.StateIdle:
			rank = 0
		case c.state == http.StateNew && (sameGroup || now.Sub(c.since) > time.Second):
			rank = 0
			if c.began.Load() {
				rank = 1
			}
		}
		if rank < victimRank || rank == victimRank && rank < 2 && c.since.Before(victim.since) {
			victim, victimRank = c, rank
		}
	}
	if victim == nil {
		return false
	}
	l.forget(victim)
	go victim.Conn.Close()
	return true
}

func (l *limitListener) forget(c *limitedConn) {
	if _, ok := l.conns[c]; !ok {
		return
	}
	delete(l.conns, c)
	if l.perGroup[c.group]--; l.perGroup[c.group] <= 0 {
		delete(l.perGroup, c.group)
	}
}

// connState is the http.Server's ConnState hook: it keeps each connection's state.
func (l *limitListener) connState(conn net.Conn, st http.ConnState) {
	c, ok := conn.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c.state, c.since = st, time.Now()
	if st == http.StateClosed || st == http.StateHijacked {
		l.forget(c)
	}
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.forget(c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// reset closes a TCP connection with a reset rather than a goodbye.
func reset(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// maxGrants bounds the grants knock.allow keeps: a hook that grants every unlock, plain ones
// from spoofed sources included, must not grow memory without end.
const maxGrants = 65536

// allowList is the set of clients granted by knock.allow, each until a deadline (unix ns): at
// most maxGrants, in a heap by deadline, so that expired grants end in deadline order and, when
// the table is full, the grant ending soonest (a new one, if it would) ends now: it fails
// closed. Each grant, renewal or revocation costs O(log n).
type allowList struct {
	mu      sync.Mutex
	grants  grantHeap
	evicted atomic.Uint64 // grants ended early because the table was full
}

type grantEntry struct {
	key   addrKey
	until int64
}

// grantHeap is a min-heap of grants by deadline (container/heap), with each key's position.
type grantHeap struct {
	items []grantEntry
	pos   map[addrKey]int
}

func (h *grantHeap) Len() int           { return len(h.items) }
func (h *grantHeap) Less(i, j int) bool { return h.items[i].until < h.items[j].until }
func (h *grantHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.pos[h.items[i].key], h.pos[h.items[j].key] = i, j
}
func (h *grantHeap) Push(x any) {
	g := x.(grantEntry)
	h.pos[g.key] = len(h.items)
	h.items = append(h.items, g)
}
func (h *grantHeap) Pop() any {
	g := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	delete(h.pos, g.key)
	return g
}

func (s *server) grant(k addrKey, d time.Duration) { s.allow.grant(k, d) }
func (s *server) revoke(k addrKey)                 { s.allow.revoke(k) }

func (a *allowList) grant(k addrKey, d time.Duration) {
	now := time.Now().UnixNano()
	a.add(k, now+int64(d), now)
}

// add grants k until the deadline; a grant k has already is replaced.
func (a *allowList) add(k addrKey, until, now int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := &a.grants
	if i, ok := h.pos[k]; ok {
		h.items[i].until = until
		heap.Fix(h, i)
		return
	}
	a.expire(now)
	if h.Len() >= maxGrants {
		a.evicted.Add(1)
		if until <= h.items[0].until {
			return // the new grant is the one ending soonest
		}
		heap.Pop(h)
	}
	heap.Push(h, grantEntry{k, until})
}

func (a *allowList) revoke(k addrKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.grants.pos[k]; ok {
		heap.Remove(&a.grants, i)
	}
}

func (a *allowList) allowed(k addrKey, now int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.grants.pos[k]
	return ok && now < a.grants.items[i].until
}

func (a *allowList) sweep(now int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(now)
}

// expire ends the grants whose deadline has passed. It holds a.mu.
func (a *allowList) expire(now int64) {
	for h := &a.grants; h.Len() > 0 && h.items[0].until <= now; {
		heap.Pop(h)
	}
}

// =============================================================================================
// The client

// knockPlan is what `knockknock knock` sends.
type knockPlan struct {
	host    string
	network string // ip, ip4 or ip6
	ports   []portSpec
	delay   time.Duration
	wait    time.Duration
	key     *userKey   // nil: plain knocks
	expect  netip.Addr // --expect-address: the address the server must see
	local   bool       // --expect-address local
	warn    io.Writer  // where a warning goes
}

func newKnockPlan(cl *commandLine) (*knockPlan, error) {
	k := &cl.knock
	plan := &knockPlan{host: k.Args.Host, network: "ip"}
	if plan.host == "" {
		return nil, usagef("knock needs a HOST: knockknock knock HOST [PORT...]")
	}
	switch {
	case k.IPv4 && k.IPv6:
		return nil, usagef("knock: -4 and -6 exclude each other")
	case k.IPv4:
		plan.network = "ip4"
	case k.IPv6:
		plan.network = "ip6"
	}
	switch {
	case len(cl.global.Doors) > 0 && cl.global.portsGiven:
		return nil, usagef("use either --ports (one door) or --door (named doors), not both")
	case cl.global.SecretFile == "" && k.expectGiven:
		return nil, usagef("knock: --expect-address needs --secret-file: only an authenticated knock learns the address the server sees")
	case cl.global.SecretFile == "" && k.waitGiven:
		return nil, usagef("knock: --wait needs --secret-file: only an authenticated knock waits for the server's confirmation")
	}
	var err error
	switch {
	case len(k.Args.Ports) > 0:
		for _, a := range k.Args.Ports {
			if strings.TrimSpace(a) == "" {
				return nil, usagef("invalid PORT %q: empty; give port numbers, such as 7000 8000:tcp", a)
			}
		}
		if plan.ports, err = parseSequence(strings.Join(k.Args.Ports, ",")); err != nil {
			return nil, usagef("invalid PORT %q: %v", strings.Join(k.Args.Ports, " "), err)
		}
	case cl.global.portsGiven:
		if plan.ports, err = parseSequence(cl.global.Ports); err != nil {
			return nil, usagef("invalid --ports %q: %v", cl.global.Ports, err)
		}
	case len(cl.global.Doors) == 1:
		d, err := parseDoorSpec(cl.global.Doors[0], time.Second)
		if err != nil {
			return nil, usagef("invalid --door %q: %v", cl.global.Doors[0], err)
		}
		plan.ports = d.seq
	case len(cl.global.Doors) > 1:
		return nil, usagef("knock: several doors are configured: name the ports to knock (knockknock knock HOST PORT...)")
	default:
		plan.ports, _ = parsePortSpecs(defaultPorts, protoUDP)
	}
	if err := k.parseOptions(plan); err != nil {
		return nil, err
	}
	if cl.global.SecretFile != "" {
		secret, err := readSecretFile(cl.global.SecretFile)
		if err != nil {
			return nil, usagef("invalid --secret-file: %v", err)
		}
		plan.key = newUserKey("", secret)
		for _, p := range plan.ports {
			if p.proto == protoTCP {
				return nil, usagef("knock: authenticated knocks are UDP datagrams: %s cannot carry a token", p)
			}
		}
	}
	return plan, nil
}

// parseOptions validates the client's own options (on the command line or in a config file's
// [knock] section) into plan.
func (k *knockCommand) parseOptions(plan *knockPlan) error {
	for _, o := range []struct{ name, value string }{{"delay", k.Delay}, {"wait", k.Wait}, {"expect-address", k.Expect}} {
		if err := setKnockOption(plan, o.name, o.value); err != nil {
			return usagef("invalid --%s %q: %v", o.name, o.value, err)
		}
	}
	return nil
}

// setKnockOption validates one of the client's own options, by its long name, into plan; the
// error says what is allowed. checkConfigFile checks a [knock] line with it.
func setKnockOption(plan *knockPlan, name, value string) error {
	var err error
	switch name {
	case "delay":
		if plan.delay, err = parseDuration(value); err != nil || plan.delay > time.Minute {
			return errors.New("want a duration from 0 to 1m, such as 10ms or 0.5")
		}
	case "wait":
		if plan.wait, err = parseDuration(value); err != nil || plan.wait < 10*time.Millisecond || plan.wait > 10*time.Minute {
			return errors.New("want a duration from 10ms to 10m, such as 3s")
		}
	case "expect-address":
		plan.local, plan.expect = value == "local", netip.Addr{}
		if value != "" && value != "local" {
			if plan.expect, err = netip.ParseAddr(strings.Trim(value, "[]")); err != nil {
				return errors.New("want an IP address or local")
			}
			plan.expect = plan.expect.Unmap()
		}
	}
	return nil
}

// knockResult is what a knock achieved, as the client can tell.
type knockResult struct {
	dst  netip.Addr
	seen netip.AddrPort // authenticated: the address the server saw
	door string         // authenticated: the door the server opened
}

// send resolves the host and knocks each port in turn: a UDP datagram from one socket, or a
// TCP connection attempt abandoned at once (the SYN is the knock). With a key it runs the
// authenticated exchange and waits for the server's confirmation.
func (k *knockPlan) send(ctx context.Context) (knockResult, error) {
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, k.network, k.host)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			err = errors.New(dnsErr.Err)
		}
		family := map[string]string{"ip": "", "ip4": " (IPv4)", "ip6": " (IPv6)"}[k.network]
		return knockResult{}, fmt.Errorf("cannot resolve %q%s: %v", k.host, family, err)
	}
	res := knockResult{dst: addrs[0].Unmap()}
	network := "udp4"
	if res.dst.Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return res, fmt.Errorf("cannot open a UDP socket: %v", err)
	}
	defer conn.Close()
	if k.key != nil {
		return res, k.authenticated(conn, &res)
	}
	for i, port := range k.ports {
		if i > 0 && k.delay > 0 {
			time.Sleep(k.delay)
		}
		if port.proto == protoTCP {
			err = tcpKnock(res.dst, port.port)
		} else {
			_, err = conn.WriteToUDPAddrPort(nil, netip.AddrPortFrom(res.dst, port.port))
		}
		if err != nil {
			return res, fmt.Errorf("knock on %s port %s failed: %v", res.dst, port, syscallCause(err))
		}
	}
	return res, nil
}

// tcpKnock sends one SYN: a non-blocking connect, then close before any answer. Closing a
// socket whose handshake has not completed sends nothing more.
func tcpKnock(dst netip.Addr, port uint16) error {
	fam := syscall.AF_INET6
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: int(port), Addr: dst.As16()}
	if dst.Is4() {
		fam, sa = syscall.AF_INET, &syscall.SockaddrInet4{Port: int(port), Addr: dst.As4()}
	}
	fd, err := syscall.Socket(fam, syscall.SOCK_STREAM, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer syscall.Close(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return os.NewSyscallError("setnonblock", err)
	}
	if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS && err != syscall.ECONNREFUSED {
		return os.NewSyscallError("connect", err)
	}
	return nil
}

// authenticated runs hello, challenge, knocks and confirmation over one UDP socket.
func (k *knockPlan) authenticated(conn *net.UDPConn, res *knockResult) error {
	m := newMACScratch()
	var nonceC [nonceLen]byte
	if _, err := rand.Read(nonceC[:]); err != nil {
		return err
	}
	first, last := netip.AddrPortFrom(res.dst, k.ports[0].port), netip.AddrPortFrom(res.dst, k.ports[len(k.ports)-1].port)
	var out, in [wireLen]byte
	encodeHello(out[:], m, k.key, first.Port(), time.Now().UnixMilli(), nonceC[:])
	deadline := time.Now().Add(k.wait)
	var chal challengeMsg
	for got := false; !got; {
		if _, err := conn.WriteToUDPAddrPort(out[:], first); err != nil {
			return fmt.Errorf("hello to %s failed: %v", first, syscallCause(err))
		}
		retry := time.Now().Add(500 * time.Millisecond)
		if retry.After(deadline) {
			retry = deadline
		}
		got = receive(conn, in[:], first, retry, func(b []byte) bool {
			c, ok := decodeChallenge(b, m, &k.key.mac, nonceC[:])
			chal = challengeMsg{nonceS: bytes.Clone(c.nonceS), seen: c.seen}
			return ok
		})
		if !got && !time.Now().Before(deadline) {
			return fmt.Errorf("no answer from %s within %v: likely causes: the key is not in the server's keys (or was revoked), "+
				"the clocks differ by more than the server's --max-skew, a firewall drops UDP to port %d, or the server is not running "+
				"or not authenticated", first, k.wait, first.Port())
		}
	}
	res.seen = chal.seen
	if err := k.checkSeen(res.dst, first, chal.seen.Addr()); err != nil {
		return err
	}
	for i, port := range k.ports {
		if i > 0 && k.delay > 0 {
			time.Sleep(k.delay)
		}
		encodeKnock(out[:], m, k.key, i, port.port, chal.nonceS, chal.seen.Addr())
		if _, err := conn.WriteToUDPAddrPort(out[:], netip.AddrPortFrom(res.dst, port.port)); err != nil {
			return fmt.Errorf("knock on %s port %s failed: %v", res.dst, port, syscallCause(err))
		}
	}
	var conf confirmMsg
	if !receive(conn, in[:], last, time.Now().Add(k.wait), func(b []byte) bool {
		var ok bool
		conf, ok = decodeConfirm(b, m, &k.key.mac, chal.nonceS)
		return ok
	}) {
		return fmt.Errorf("no confirmation from %s within %v: likely causes: these ports are no door's sequence, a knock was lost "+
			"or arrived out of order, the hook takes longer than --wait, or this address is banned", res.dst, k.wait)
	}
	res.door = conf.door
	if conf.status != confirmUnlocked {
		return fmt.Errorf("%s: the server's hook failed to open door %s for %s (see the server's log)", res.dst, conf.door, chal.seen.Addr())
	}
	return nil
}

// checkSeen compares the address the server saw with the one this host knocks from. Behind a
// NAT they differ, and that is fine; but a host with a public address of its own that is seen as
// another has someone relaying its knocks, and the door would open for the relay. With
// --expect-address that is an error, before any knock is sent; without, a warning.
func (k *knockPlan) checkSeen(dst netip.Addr, first netip.AddrPort, seen netip.Addr) error {
	local := localAddrFor(first)
	want := k.expect
	if k.local {
		want = local
	}
	if want.IsValid() && seen != want {
		return fmt.Errorf("the server sees this client as %s, not %s: a NAT or a relay is on the way; not knocking (--expect-address)", seen, want)
	}
	if !want.IsValid() && public(local) && seen != local && k.warn != nil {
		fmt.Fprintf(k.warn, "knockknock: warning: %s sees this client as %s, not as its own public address %s: a relay may be on the way (--expect-address local refuses to knock then)\n", dst, seen, local)
	}
	return nil
}

// localAddrFor is the source address this host uses to reach dst (a connected UDP socket sends
// nothing).
func localAddrFor(dst netip.AddrPort) netip.Addr {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

// public reports whether an address is globally routable: not private, loopback, link-local,
// shared (100.64.0.0/10, carrier-grade NAT) or a documentation range.
func public(a netip.Addr) bool {
	if !a.IsValid() || !a.IsGlobalUnicast() || a.IsPrivate() {
		return false
	}
	for _, p := range []string{"100.64.0.0/10", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"} {
		if netip.MustParsePrefix(p).Contains(a) {
			return false
		}
	}
	return true
}

// receive reads datagrams from want until one is accepted or the deadline passes.
func receive(conn *net.UDPConn, buf []byte, want netip.AddrPort, deadline time.Time, accept func([]byte) bool) bool {
	conn.SetReadDeadline(deadline)
	defer conn.SetReadDeadline(time.Time{})
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false
			}
			continue // an ICMP error for the hello: the port is closed in capture mode
		}
		if from.Addr().Unmap() == want.Addr() && from.Port() == want.Port() && accept(buf[:n]) {
			return true
		}
	}
}

// =============================================================================================
// main

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cl, err := parseCommandLine(args)
	if err == nil {
		switch cl.command {
		case "knock":
			return runKnock(cl, stdout, stderr)
		case "keygen":
			err = runKeygen(&cl.keygen, stdout)
		default:
			return runServer(cl, stdout, stderr)
		}
	}
	return report(err, stdout, stderr)
}

// report prints an error as one line and maps it to an exit code. What is not printable in it
// (a path or value from a file, say) is escaped, as %q would.
func report(err error, stdout, stderr io.Writer) int {
	var help *helpRequest
	var usage *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &help):
		fmt.Fprintln(stdout, help.text)
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "knockknock: %s\n", escapeControls(oneLine(usage.msg)))
		return exitUsage
	default:
		fmt.Fprintf(stderr, "knockknock: %s\n", escapeControls(oneLine(err.Error())))
		return exitRuntime
	}
}

// escapeControls writes each character of s that is not printable, and each byte that is not
// UTF-8, as a Go escape (\x00, \xff, \u200b).
func escapeControls(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case unicode.IsPrint(r):
			b.WriteString(s[:n])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		s = s[n:]
	}
	return b.String()
}

func runKnock(cl *commandLine, stdout, stderr io.Writer) int {
	plan, err := newKnockPlan(cl)
	if err != nil {
		return report(err, stdout, stderr)
	}
	plan.warn = stderr
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := plan.send(ctx)
	if err != nil {
		return report(err, stdout, stderr)
	}
	if plan.key == nil {
		fmt.Fprintf(stdout, "knocked %s on %s (plain: no confirmation)\n", res.dst, formatSpecs(plan.ports))
	} else {
		fmt.Fprintf(stdout, "unlocked door %s on %s for %s (the address the server sees)\n", res.door, res.dst, res.seen.Addr())
	}
	return exitOK
}

// runKeygen makes a key from 32 random bytes, written as 64 hex digits.
func runKeygen(k *keygenCommand, stdout io.Writer) error {
	if k.User != nil {
		if err := checkUserName(*k.User); err != nil {
			return usagef("keygen --user: %v", err)
		}
	}
	if k.Args.File != nil && *k.Args.File == "" {
		return usagef("keygen: FILE is empty: name the file to write, or leave it out to print the key")
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	secret := hex.EncodeToString(key[:])
	if k.Args.File != nil {
		f, err := os.OpenFile(*k.Args.File, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return usagef("keygen: %v", err)
		}
		if _, err := f.WriteString(secret + "\n"); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if k.User == nil {
			return nil
		}
	}
	if k.User != nil {
		_, err := fmt.Fprintf(stdout, "%s %s\n", *k.User, secret)
		return err
	}
	_, err := fmt.Fprintln(stdout, secret)
	return err
}

// logWriter buffers log lines and writes them every logFlushInterval, or when a buffer fills,
// or at once for a warning or an error: one write per line would cost a system call per unlock
// under load.
type logWriter struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	stop chan struct{}
	done chan struct{}
}

const logFlushInterval = 50 * time.Millisecond

func newLogWriter(w io.Writer) *logWriter {
	l := &logWriter{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(logFlushInterval)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				l.Flush()
			case <-l.stop:
				l.Flush()
				return
			}
		}
	}()
	return l
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) >= 64<<10 {
		l.flushLocked()
	}
	return len(p), nil
}

func (l *logWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *logWriter) flushLocked() {
	if len(l.buf) > 0 {
		_, _ = l.w.Write(l.buf)
		l.buf = l.buf[:0]
	}
}

// Close writes what is buffered and stops the writer.
func (l *logWriter) Close() {
	close(l.stop)
	<-l.done
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	if lw, ok := w.(*logWriter); ok {
		h = urgentHandler{h, lw}
	}
	return slog.New(h)
}

// urgentHandler writes warnings and errors out at once; other lines wait for the next flush.
type urgentHandler struct {
	slog.Handler
	lw *logWriter
}

func (u urgentHandler) Handle(ctx context.Context, r slog.Record) error {
	err := u.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		u.lw.Flush()
	}
	return err
}

func (u urgentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return urgentHandler{u.Handler.WithAttrs(attrs), u.lw}
}

func (u urgentHandler) WithGroup(name string) slog.Handler {
	return urgentHandler{u.Handler.WithGroup(name), u.lw}
}

// runServer validates everything; then `check` prints the settings and `serve` runs.
func runServer(cl *commandLine, stdout, stderr io.Writer) int {
	if (cl.global.Capture || cl.global.KnockdConfig != "") && runtime.GOOS != "linux" {
		return report(usagef("capture mode needs Linux raw sockets (this is %s): without --capture and --knockd-config, knockknock binds UDP ports", runtime.GOOS), stdout, stderr)
	}
	cfg, err := buildConfig(&cl.global)
	if err != nil {
		return report(err, stdout, stderr)
	}
	proto, err := compileHook(cfg.hookName, cfg.hookSource)
	if err != nil {
		return report(err, stdout, stderr)
	}
	if cl.command == "check" { // checkConfigFile has checked the config file's [knock] section
		return runCheck(cfg, proto, newLogger(cfg, stderr), stdout, stderr)
	}
	lw := newLogWriter(stderr)
	defer lw.Close()
	return serve(cfg, proto, newLogger(cfg, lw), lw, stdout, stderr)
}

// runCheck loads the hook without side effects and prints the effective settings on stdout,
// and warnings on stderr.
func runCheck(cfg *config, proto *lua.FunctionProto, log *slog.Logger, stdout, stderr io.Writer) int {
	h := newHookRuntime(cfg, log, proto, &recordingEffects{})
	h.exit = func(why string) {
		fmt.Fprintf(stderr, "knockknock: hook %s: %s\n", cfg.hookName, why)
		os.Exit(2)
	}
	hook, err := h.load(proto)
	if err != nil {
		return report(err, stdout, stderr)
	}
	var defined []string
	for _, name := range hookNames {
		if hook.L.GetGlobal(name) != lua.LNil {
			defined = append(defined, name)
		}
	}
	h.discard(hook, "")
	for _, f := range []struct {
		name string
		fn   *lua.LFunction
	}{{"on_start", hook.start}, {"on_stop", hook.stop}, {"on_flush", hook.flush}} {
		if f.fn != nil {
			defined = append(defined, f.name)
		}
	}
	sort.Strings(defined)
	w := stdout
	mode := "socket: bound UDP ports (a UDP scan sees them open|filtered)"
	if cfg.capture {
		mode = "capture: raw sockets behind a BPF filter (the ports answer like closed ports)"
	}
	if cfg.knockd != nil {
		mode += ", knockd.conf " + cfg.knockdPath
	}
	knocks := "plain (knockd-compatible): anyone who sees a knock can replay it"
	if cfg.keys != nil {
		who := "one shared key"
		if !cfg.keys.shared {
			who = fmt.Sprintf("%d user keys", len(cfg.keys.byID))
		}
		knocks = fmt.Sprintf("authenticated (%s %s: %s), challenge-bound, --max-skew %v", cfg.keySource.flag, cfg.keySource.path, who, cfg.maxSkew)
	}
	bans := "off"
	if cfg.banAfter > 0 {
		bans = fmt.Sprintf("after %d failures within %v, for %v (IPv6: per /%d)", cfg.banAfter, cfg.banWindow, cfg.banTime, cfg.banPrefix6)
	}
	fmt.Fprintf(w, "mode:         %s\n", mode)
	for _, d := range cfg.doors {
		fmt.Fprintf(w, "door %s: %s\n", d.name, describeDoor(d))
	}
	fmt.Fprintf(w, "decoys:       %s\n", orNone(formatSpecs(cfg.decoys)))
	fmt.Fprintf(w, "listen:       %s\n", listenOrAll(cfg.listen))
	fmt.Fprintf(w, "hook:         %s (%s)\n", cfg.hookName, strings.Join(defined, ", "))
	fmt.Fprintf(w, "hook-timeout: %v\n", cfg.hookTimeout)
	for _, kv := range cfg.hookArgs {
		fmt.Fprintf(w, "hook-arg:     %s=%s\n", kv[0], kv[1])
	}
	fmt.Fprintf(w, "knocks:       %s\n", knocks)
	fmt.Fprintf(w, "max-clients:  %d\n", cfg.maxClients)
	fmt.Fprintf(w, "bans:         %s\n", bans)
	fmt.Fprintf(w, "log-format:   %s\n", cfg.logFormat)
	warnings := slices.Clone(cfg.warnings)
	for _, d := range cfg.doors {
		if msg := fewOrdersWarning(d.seq); msg != "" && cfg.keys == nil {
			warnings = append(warnings, fmt.Sprintf("door %s: %s", d.name, msg))
		}
	}
	warnings = append(warnings, privilegeWarnings(cfg, effectiveCaps, unprivilegedPortStart())...)
	if cfg.knockd != nil && cfg.knockd.iface != "" && len(cfg.listen) == 0 {
		if _, err := interfaceAddrs(cfg.knockd.iface); err != nil {
			warnings = append(warnings, fmt.Sprintf("knockd config [options] Interface: %v: serve would exit 1", err))
		}
	}
	for _, msg := range warnings {
		fmt.Fprintf(stderr, "knockknock: warning: %s\n", msg)
	}
	if cfg.knockd != nil {
		for _, note := range knockdNotes(cfg.knockd) {
			fmt.Fprintf(w, "note: %s\n", note)
		}
	}
	fmt.Fprintln(w, "ok")
	return exitOK
}

// Linux capabilities (capability.h) that serve may need.
const (
	capNetBindService = 10
	capNetRaw         = 13
)

// effectiveCaps reads this process's effective capabilities; ok is false where /proc/self/status
// does not say (not Linux).
func effectiveCaps() (caps uint64, ok bool) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	return parseCapEff(string(status))
}

// parseCapEff finds the CapEff line of a /proc/PID/status text: a bit set in hex.
func parseCapEff(status string) (uint64, bool) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return caps, err == nil
		}
	}
	return 0, false
}

// unprivilegedPortStart is the lowest port anyone may bind (Linux:
// net.ipv4.ip_unprivileged_port_start, 1024 unless lowered; it covers IPv6 too).
func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}

// privilegeWarnings says what serve would be refused for want of a capability: capture needs
// CAP_NET_RAW; binding a port below portStart needs CAP_NET_BIND_SERVICE. It says nothing when
// the capabilities cannot be read (not Linux).
func privilegeWarnings(cfg *config, caps func() (uint64, bool), portStart int) []string {
	eff, ok := caps()
	if !ok {
		return nil
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if cfg.capture {
		if has(capNetRaw) {
			return nil
		}
		return []string{"capture mode needs root or CAP_NET_RAW, and this process has neither: serve would exit 1"}
	}
	if has(capNetBindService) {
		return nil
	}
	var low []string
	for _, p := range cfg.watchedPorts() {
		if int(p.port) < portStart {
			low = append(low, strconv.Itoa(int(p.port)))
		}
	}
	if len(low) == 0 {
		return nil
	}
	what := "port " + low[0]
	if len(low) > 1 {
		what = "ports " + strings.Join(low, ", ")
	}
	return []string{fmt.Sprintf("binding UDP %s needs root or CAP_NET_BIND_SERVICE (ports below %d do), and this process has neither: serve would exit 1", what, portStart)}
}

// describeDoor is a door in one line, for check.
func describeDoor(d door) string {
	s := fmt.Sprintf("%s (timeout %v", formatSpecs(d.seq), d.timeout)
	if d.seqTimeout > 0 {
		s += fmt.Sprintf(", whole sequence within %v", d.seqTimeout)
	}
	for _, p := range d.seq {
		if p.proto == protoTCP {
			s += ", tcp flags " + d.tcpFlags.String()
			break
		}
	}
	if d.target.IsValid() {
		s += ", sent to " + d.target.String()
	}
	if d.oneTime != "" {
		s += ", one-time sequences from " + d.oneTime
	}
	if a := d.action; a.start != "" || a.start6 != "" {
		s += fmt.Sprintf(", start %q", a.start)
		if a.start6 != a.start {
			s += fmt.Sprintf(", IPv6 start %q", a.start6)
		}
		if a.stop != "" || a.stop6 != "" {
			s += fmt.Sprintf(", after %v stop %q", a.cmdTimeout, a.stop)
		}
	}
	return s + ")"
}

// knockdNotes says what becomes of knockd's [options].
func knockdNotes(k *knockdConfig) []string {
	var notes []string
	if k.useSyslog {
		notes = append(notes, "knockd UseSyslog ignored: knockknock logs to stderr (under systemd, to the journal)")
	}
	if k.logFile != "" {
		notes = append(notes, fmt.Sprintf("knockd LogFile %s ignored: knockknock logs to stderr (under systemd, to the journal)", k.logFile))
	}
	if k.pidFile != "" {
		notes = append(notes, fmt.Sprintf("knockd PidFile %s ignored: knockknock does not daemonize (systemd tracks it)", k.pidFile))
	}
	if k.iface != "" {
		notes = append(notes, fmt.Sprintf("knockd Interface %s: only knocks sent to that interface's addresses count", k.iface))
	}
	return notes
}

func listenOrAll(a []netip.Addr) string {
	if len(a) == 0 {
		return "all addresses, IPv4 and IPv6"
	}
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// interfaceAddrs lists a network interface's addresses (knockd's Interface).
func interfaceAddrs(name string) ([]netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %v", name, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("interface %s: %v", name, err)
	}
	var list []netip.Addr
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil {
			list = append(list, pfx.Addr().Unmap())
		}
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("interface %s has no address", name)
	}
	return list, nil
}

// serve runs the server until SIGINT or SIGTERM. SIGHUP reloads the hook and the keys.
func serve(cfg *config, proto *lua.FunctionProto, log *slog.Logger, lw *logWriter, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		lw.Flush()
		return report(err, stdout, stderr)
	}
	if cfg.knockd != nil {
		if cfg.knockd.iface != "" && len(cfg.listen) == 0 {
			addrs, err := interfaceAddrs(cfg.knockd.iface)
			if err != nil {
				return fail(err)
			}
			cfg.listen = addrs
		}
	}
	procs.adoptOrphans()
	s := newServer(cfg, log, proto)
	s.hooks.exit = func(why string) {
		log.Error(why+"; exiting (a supervisor's restart runs on_start, which closes the door again)", "event", "hook_error")
		lw.Flush()
		os.Exit(1)
	}
	hook, err := s.hooks.load(proto)
	if err != nil {
		return fail(err)
	}
	s.hooks.installHook(hook, false)
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)
	stamps, err := newStampGuard()
	if err != nil {
		s.hooks.closeAll()
		return fail(err)
	}
	defer stamps.close()
	if !stamps.wait() {
		log.Warn("the kernel does not stamp datagrams on arrival: knocks are timed when read, and knocks sent together to different ports may be taken out of order",
			"event", "start", "waited", stampWait.String())
	}
	if err := s.openKnockPorts(); err != nil {
		s.hooks.closeAll()
		return fail(err)
	}
	if n := s.smallBuffers.Load(); n > 0 {
		log.Warn("small receive buffers: a burst of knocks may be dropped; raise net.core.rmem_max (sysctl -w net.core.rmem_max=8388608) or run as root",
			"event", "start", "receive_buffer", n)
	}
	if err := s.hooks.start(hook, "start"); err != nil {
		s.stopKnocks()
		s.hooks.closeAll()
		s.stopServices()
		return fail(fmt.Errorf("the hook's on_start failed, so the door could not be closed; stopping: %v", err))
	}
	stopJanitor := make(chan struct{})
	go s.janitor(stopJanitor)
	go s.hooks.run(hook)
	mode, knocks := "socket", "plain"
	if cfg.capture {
		mode = "capture"
	}
	if cfg.keys != nil {
		knocks = "authenticated"
	}
	for _, msg := range cfg.warnings {
		log.Warn(msg, "event", "start")
	}
	if cfg.knockd != nil {
		for _, note := range knockdNotes(cfg.knockd) {
			log.Info(note, "event", "start")
		}
	}
	doors := make([]string, len(cfg.doors))
	for i, d := range cfg.doors {
		doors[i] = d.name + "=" + formatSpecs(d.seq)
	}
	log.Info("listening", "event", "start", "mode", mode, "doors", strings.Join(doors, " "), "decoys", orNone(formatSpecs(cfg.decoys)),
		"hook", cfg.hookName, "knocks", knocks, "listen", listenOrAll(cfg.listen))
	lw.Flush()
	notifyReady(log)
	for sig := range signals {
		// What arrived during the last reload: a stop wins over reloads, and reloads queued
		// behind one another are one reload.
		for more := true; more && sig == syscall.SIGHUP; {
			select {
			case next := <-signals:
				sig = next
			default:
				more = false
			}
		}
		if sig != syscall.SIGHUP {
			log.Info("shutting down", "event", "stop", "signal", sig.String())
			break
		}
		s.reloadKeys()
		if err := s.hooks.requestReload(); err != nil {
			log.Error("hook reload failed; the running hook goes on", "event", "hook_reload", "err", oneLine(err.Error()))
		} else {
			log.Info("hook reloaded", "event", "hook_reload", "hook", cfg.hookName)
		}
	}
	// Knocks stop first; then the hook runtime ends (queued events, pending knock.after
	// callbacks, on_stop) while the services still run; only then do the services stop.
	s.stopKnocks()
	close(stopJanitor)
	s.hooks.stop()
	s.stopServices()
	attrs := []any{"event", "stopped", "unlocks", s.hooks.unlocks.Load(), "hook_events_shed", s.hooks.queue.shedTotal(),
		"last_unlock_unix_ns", s.hooks.lastUnlock.Load(), "hook_latency_p50", s.hooks.latency.quantile(0.5).String(),
		"hook_latency_p99", s.hooks.latency.quantile(0.99).String()}
	log.Info("stopped", append(attrs, append([]any{"dropped"}, slog.GroupValue(dropAttrs(s.intake)...))...)...)
	return exitOK
}

// notifyReady tells a supervisor that the server is up: the knock sources are open, the hook's
// on_start has returned, and the "listening" line is written. With NOTIFY_SOCKET set (systemd's
// Type=notify, and the tests), it sends READY=1 to that datagram socket, as sd_notify does.
func notifyReady(log *slog.Logger) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	os.Unsetenv("NOTIFY_SOCKET") // the programs hooks run are not the service
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte("READY=1"))
		c.Close()
	}
	if err != nil {
		log.Warn("cannot notify NOTIFY_SOCKET that the server is ready", "event", "start", "err", err)
	}
}

// dropAttrs are the intake's drop counters as log attributes.
func dropAttrs(in *intake) []slog.Attr {
	var attrs []slog.Attr
	for r := dropReason(1); r < nDropReasons; r++ {
		attrs = append(attrs, slog.Uint64(r.String(), in.drops[r].Load()))
	}
	return attrs
}
