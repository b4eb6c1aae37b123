// Command knockknock is a port-knocking server with Lua unlock hooks.
//
// The server listens on a sequence of UDP ports. A client that sends one datagram to each port,
// in order, each within --timeout of the previous one, unlocks: the server then calls on_unlock
// in a Lua hook (gopher-lua). Progress is tracked per source address, so knockers never disturb
// each other. See README.md for usage and ../SPEC for the contract.
//
// The file reads in the order data flows: options, the knock tracker, authenticated knocks and
// listeners, the hook runtime and the `knock` module, the built-in service, the client, main.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
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
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	flags "github.com/jessevdk/go-flags"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

//go:embed hooks/unlock.lua
var embeddedHook []byte

const defaultHookPath = "hooks/unlock.lua"

// Exit codes, as SPEC gives them.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// ---------------------------------------------------------------------------------------------
// Options

// globalOptions are the server options. They sit on the top-level parser so that a plain
// `knockknock -p 1,2,3` runs the server, and the subcommands share them (the client reads
// --ports and --secret-file, check validates all of them).
type globalOptions struct {
	Ports       string   `short:"p" long:"ports" default:"123,456,789" value-name:"LIST" description:"knock sequence: comma-separated UDP ports in knock order (1-65535, repeats allowed)"`
	Timeout     string   `short:"t" long:"timeout" default:"5s" value-name:"DUR" description:"longest gap allowed between two knocks (a bare number is seconds)"`
	Hook        string   `long:"hook" default:"hooks/unlock.lua" value-name:"FILE" description:"Lua hook; when the default file is absent, the embedded copy"`
	Listen      string   `short:"l" long:"listen" value-name:"ADDR" description:"IP address the knock listeners bind (default: all addresses, IPv4 and IPv6)"`
	HookTimeout string   `long:"hook-timeout" default:"10s" value-name:"DUR" description:"a hook call, and anything it runs, is cancelled after this"`
	HookArgs    []string `long:"hook-arg" value-name:"KEY=VALUE" description:"repeatable; the hook reads them as strings in knock.args"`
	LogFormat   string   `long:"log-format" default:"text" value-name:"text|json" description:"log output format on stderr"`
	Decoys      string   `long:"decoys" value-name:"LIST" description:"extra listening ports; a knock on one resets that client"`
	Verbose     bool     `short:"v" long:"verbose" description:"log every knock"`
	SecretFile  string   `long:"secret-file" value-name:"FILE" description:"shared secret: only authenticated knocks count (mode 0600, at least 16 bytes)"`
	MaxSkew     string   `long:"max-skew" default:"30s" value-name:"DUR" description:"authenticated knocks: largest clock difference accepted"`
	MaxClients  string   `long:"max-clients" default:"65536" value-name:"N" description:"most clients tracked at once; when full, one without an attempt in progress makes room first"`
	BanAfter    string   `long:"ban-after" default:"0" value-name:"N" description:"ban a source after N failed attempts within --ban-window (0: off)"`
	BanWindow   string   `long:"ban-window" default:"10m" value-name:"DUR" description:"window in which failed attempts are counted"`
	BanTime     string   `long:"ban-time" default:"1h" value-name:"DUR" description:"how long a ban lasts"`
	Config      string   `long:"config" value-name:"FILE" no-ini:"true" description:"INI file with these options ([Application Options] section); flags override it"`
}

type serveCommand struct{}

type checkCommand struct{}

type knockCommand struct {
	Delay string `short:"d" long:"delay" default:"10ms" value-name:"DUR" description:"pause between knocks"`
	IPv4  bool   `short:"4" description:"knock over IPv4 only"`
	IPv6  bool   `short:"6" description:"knock over IPv6 only"`
	Args  struct {
		Host  string   `positional-arg-name:"HOST"`
		Ports []string `positional-arg-name:"PORT"`
	} `positional-args:"yes"`
}

type keygenCommand struct {
	Args struct {
		File string `positional-arg-name:"FILE"`
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

func newParser(cl *commandLine) *flags.Parser {
	p := flags.NewNamedParser("knockknock", flags.HelpFlag|flags.PassDoubleDash)
	p.SubcommandsOptional = true
	if _, err := p.AddGroup("Application Options", "", &cl.global); err != nil {
		panic(err) // a tag error in the structs above: a programming error
	}
	p.AddCommand("serve", "run the server (the default)", "Run the port-knocking server.", &cl.serve)
	p.AddCommand("check", "validate options and the hook, print the settings", "Validate the options, the config file and the hook; print the effective settings. Exit 0 when valid, 2 when not.", &cl.check)
	p.AddCommand("knock", "send a knock sequence", "Send one UDP datagram to each port of the sequence (default: --ports).", &cl.knock)
	p.AddCommand("keygen", "print a new random secret", "Print a new random secret for --secret-file, or write it to FILE with mode 0600.", &cl.keygen)
	return p
}

// helpRequest is returned by parseCommandLine when --help was asked for; it carries the text.
type helpRequest struct{ text string }

func (h *helpRequest) Error() string { return h.text }

// parseCommandLine parses args twice when --config is given: the INI file first, then the
// command line again on top, so that flags override the file.
func parseCommandLine(args []string) (*commandLine, error) {
	cl := &commandLine{}
	p := newParser(cl)
	rest, err := p.ParseArgs(args)
	if err != nil {
		return nil, flagsError(err)
	}
	if cl.global.Config != "" {
		path := cl.global.Config
		cl = &commandLine{}
		p = newParser(cl)
		if err := flags.NewIniParser(p).ParseFile(path); err != nil {
			return nil, iniError(path, err)
		}
		if rest, err = p.ParseArgs(args); err != nil {
			return nil, flagsError(err)
		}
	}
	if len(rest) > 0 {
		return nil, usagef("unexpected argument %q (see knockknock --help)", rest[0])
	}
	cl.command = "serve"
	if p.Active != nil {
		cl.command = p.Active.Name
	}
	return cl, nil
}

func flagsError(err error) error {
	var ferr *flags.Error
	if errors.As(err, &ferr) && ferr.Type == flags.ErrHelp {
		return &helpRequest{ferr.Message}
	}
	return usagef("%s (see knockknock --help)", oneLine(err.Error()))
}

func iniError(path string, err error) error {
	var ierr *flags.IniError
	if errors.As(err, &ierr) {
		return usagef("config %s line %d: %s", path, ierr.LineNumber, oneLine(ierr.Message))
	}
	var perr *os.PathError
	if errors.As(err, &perr) {
		return usagef("config %s: %v", path, perr.Err)
	}
	return usagef("config %s: %s", path, oneLine(err.Error()))
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// config holds the validated settings the server and the client run with.
type config struct {
	ports       []uint16
	timeout     time.Duration
	hookPath    string // the file, or "" for the embedded default
	hookName    string // as errors and logs name it
	hookSource  []byte
	listen      netip.Addr // invalid: all addresses
	hookTimeout time.Duration
	hookArgs    [][2]string // in the order given
	logFormat   string
	decoys      []uint16
	verbose     bool
	secret      []byte // nil: plain knocks
	secretFile  string
	maxSkew     time.Duration
	maxClients  int
	banAfter    int
	banWindow   time.Duration
	banTime     time.Duration
}

const (
	maxSequenceLen = 64
	maxDecoys      = 256
	maxTimeout     = 24 * time.Hour
)

// buildConfig validates every option; the error names the option, the bad value and what is
// allowed, in one line.
func buildConfig(o *globalOptions) (*config, error) {
	c := &config{verbose: o.Verbose, logFormat: o.LogFormat, secretFile: o.SecretFile}
	var err error
	if c.ports, err = parsePortList(o.Ports); err != nil {
		return nil, usagef("invalid --ports %q: %v", o.Ports, err)
	}
	if len(c.ports) == 0 {
		return nil, usagef("invalid --ports %q: the knock sequence needs at least one port", o.Ports)
	}
	if len(c.ports) > maxSequenceLen {
		return nil, usagef("invalid --ports %q: at most %d ports", o.Ports, maxSequenceLen)
	}
	if c.decoys, err = parsePortList(o.Decoys); err != nil {
		return nil, usagef("invalid --decoys %q: %v", o.Decoys, err)
	}
	if len(c.decoys) > maxDecoys {
		return nil, usagef("invalid --decoys %q: at most %d ports", o.Decoys, maxDecoys)
	}
	for _, d := range c.decoys {
		if containsPort(c.ports, d) {
			return nil, usagef("invalid --decoys %q: port %d is also a knock port", o.Decoys, d)
		}
	}
	durations := []struct {
		name     string
		value    string
		dst      *time.Duration
		min, max time.Duration
	}{
		{"--timeout", o.Timeout, &c.timeout, time.Millisecond, maxTimeout},
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
	if c.maxClients, err = parseCount(o.MaxClients, 1, 1<<26); err != nil {
		return nil, usagef("invalid --max-clients %q: %v", o.MaxClients, err)
	}
	if c.banAfter, err = parseCount(o.BanAfter, 0, 1<<20); err != nil {
		return nil, usagef("invalid --ban-after %q: %v", o.BanAfter, err)
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		return nil, usagef("invalid --log-format %q: use text or json", o.LogFormat)
	}
	if o.Listen != "" {
		if c.listen, err = netip.ParseAddr(strings.Trim(o.Listen, "[]")); err != nil {
			return nil, usagef("invalid --listen %q: want an IP address such as 127.0.0.1 or ::1", o.Listen)
		}
	}
	for _, kv := range o.HookArgs {
		k, v, err := parseHookArg(kv)
		if err != nil {
			return nil, usagef("invalid --hook-arg %q: %v", kv, err)
		}
		c.hookArgs = append(c.hookArgs, [2]string{k, v})
	}
	if o.SecretFile != "" {
		if c.secret, err = loadSecret(o.SecretFile); err != nil {
			return nil, usagef("invalid --secret-file: %v", err)
		}
	}
	if err := c.loadHook(o.Hook); err != nil {
		return nil, err
	}
	return c, nil
}

// parsePortList parses "123,456,789". Spaces around items are allowed; an empty string is an
// empty list (the caller decides whether that is allowed).
func parsePortList(s string) ([]uint16, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	if len(items) > maxDecoys+maxSequenceLen {
		return nil, fmt.Errorf("too many ports")
	}
	ports := make([]uint16, 0, len(items))
	for _, item := range items {
		p, err := parsePort(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
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

const minSecretLen = 16

// loadSecret reads the shared secret: the file's bytes without surrounding white space. It
// refuses a file that others can read, as ssh does with private keys.
func loadSecret(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, errors.Unwrap(err))
	}
	if info.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: group and others must have no access (chmod 600 %s)", path, info.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, errors.Unwrap(err))
	}
	secret := bytes.TrimSpace(raw)
	if len(secret) < minSecretLen {
		return nil, fmt.Errorf("%s holds %d bytes: a secret needs at least %d (make one with knockknock keygen)", path, len(secret), minSecretLen)
	}
	return secret, nil
}

// loadHook reads and compiles the hook so that a bad hook is a usage error before anything binds.
func (c *config) loadHook(path string) error {
	src, err := os.ReadFile(path)
	switch {
	case err == nil:
		c.hookPath, c.hookName, c.hookSource = path, path, src
	case errors.Is(err, os.ErrNotExist) && path == defaultHookPath:
		c.hookName, c.hookSource = "embedded:"+defaultHookPath, embeddedHook
	default:
		return usagef("invalid --hook %q: %v", path, errors.Unwrap(err))
	}
	return nil
}

func containsPort(ports []uint16, p uint16) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

func formatPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// ---------------------------------------------------------------------------------------------
// The knock tracker

// addrKey is a client's address as a map key: 16 bytes, IPv4 in its IPv4-mapped form. It has no
// pointer, so a map of a million clients costs the garbage collector nothing to scan.
type addrKey [16]byte

func keyOf(a netip.Addr) addrKey { return addrKey(a.Unmap().As16()) }

func (k addrKey) addr() netip.Addr { return netip.AddrFrom16(k).Unmap() }

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
	verdictIgnored  verdict = iota // a retransmission
	verdictAdvanced                // the expected port: one step further
	verdictUnlocked                // the final port: the sequence is complete
	verdictRejected                // a wrong port that does not start a new attempt
)

// progress is one client's position in the sequence.
type progress struct {
	first    int64  // when the attempt's first knock arrived (unix ns)
	last     int64  // when the previous counted knock arrived
	step     uint8  // ports matched so far
	lastPort uint16 // the port of the previous knock (last is 0 before the first)
}

// rules are the knock semantics of SPEC, applied to one client's knocks in time order.
type rules struct {
	seq        []uint16
	timeout    int64 // ns
	retransmit int64 // ns: a repeat of the last port within this is a duplicate datagram
	decoys     []uint16
}

// apply evaluates one knock. The verdict says what the knock did; a reason other than
// reasonNone means that it ended an attempt in progress (or, for a fresh client, that it was a
// wrong knock).
func (r *rules) apply(p *progress, port uint16, ts int64) (verdict, failReason) {
	why := reasonNone
	if p.step > 0 && ts-p.last > r.timeout {
		p.step, why = 0, reasonTimeout
	}
	if port != r.seq[p.step] {
		if why == reasonNone && p.last != 0 && port == p.lastPort && ts-p.last <= r.retransmit {
			return verdictIgnored, reasonNone
		}
		if why == reasonNone {
			why = reasonWrongPort
			if containsPort(r.decoys, port) {
				why = reasonDecoy
			}
		}
		p.step = 0
		if port != r.seq[0] {
			p.last, p.lastPort = ts, port
			return verdictRejected, why
		}
	}
	if p.step == 0 {
		p.first = ts
	}
	p.step++
	p.last, p.lastPort = ts, port
	if int(p.step) == len(r.seq) {
		p.step = 0
		return verdictUnlocked, why
	}
	return verdictAdvanced, why
}

// A knock is one datagram on a knock or decoy port.
type knock struct {
	from    addrKey
	srcPort uint16
	port    uint16
	ts      int64 // when the kernel received it (unix ns)
}

type eventKind uint8

const (
	eventKnock eventKind = iota
	eventUnlock
	eventFail
)

// event is what the tracker reports to the hook runtime. It is a plain value: sending it on a
// channel allocates nothing.
type event struct {
	kind    eventKind
	reason  failReason
	from    addrKey
	srcPort uint16
	port    uint16
	ts      int64
	elapsed int64 // ns from the attempt's first knock to this one
}

// Knocks sent back to back arrive on different sockets, and the goroutines reading them may
// see them out of order. So each client keeps its recent knocks in a small buffer sorted by the
// kernel's receive time: a sequence completes as soon as the buffer, read in time order, completes
// it; a failure only becomes final once the knocks behind it are older than reorderWindow.
const (
	pendingMax    = 4
	reorderWindow = int64(time.Second)
)

type pendingKnock struct {
	ts      int64
	port    uint16
	srcPort uint16
}

// client is one tracked source address: its settled progress, the knocks not yet settled, and
// its place in the shard's least-recently-seen list.
type client struct {
	key        addrKey
	progress   progress
	pending    [pendingMax]pendingKnock
	npending   uint8
	prev, next int32
}

type banRecord struct {
	failures    int32
	windowStart int64
	until       int64
}

// shard is one lock's worth of clients: an index, client slots allocated in fixed chunks (a
// growing slice would waste up to half its capacity), a free list, and a doubly linked list
// through the slots in order of last activity (head: most recent).
type shard struct {
	mu         sync.Mutex
	index      map[addrKey]int32
	chunks     [][]client
	used       int32 // slots handed out so far
	free       []int32
	head, tail int32
	limit      int
	bans       map[addrKey]banRecord
	_          [64]byte // keep neighbouring shards' locks off one cache line
}

const (
	noSlot             = -1
	chunkBits          = 6
	chunkSize          = 1 << chunkBits
	preallocateClients = 1 << 17
)

func (s *shard) slot(i int32) *client { return &s.chunks[i>>chunkBits][i&(chunkSize-1)] }

// tracker holds every client's progress, sharded by address so that listeners rarely contend.
type tracker struct {
	rules     rules
	shards    []shard
	mask      uint64
	seed      maphash.Seed
	emit      func(event) // called without any shard lock held; never blocks
	wantKnock atomic.Bool // report every knock (on_knock or --verbose)
	banAfter  int32
	banWindow int64
	banTime   int64
	evicted   atomic.Uint64 // clients whose attempt in progress was dropped to make room
}

func newTracker(c *config, emit func(event)) *tracker {
	nshards := 1
	for nshards < 64 && c.maxClients/(nshards*2) >= 1024 {
		nshards *= 2
	}
	t := &tracker{
		rules: rules{
			seq:        c.ports,
			timeout:    int64(c.timeout),
			retransmit: int64(min(time.Second, c.timeout)),
			decoys:     c.decoys,
		},
		shards:    make([]shard, nshards),
		mask:      uint64(nshards - 1),
		seed:      maphash.MakeSeed(),
		emit:      emit,
		banAfter:  int32(c.banAfter),
		banWindow: int64(c.banWindow),
		banTime:   int64(c.banTime),
	}
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
			s.chunks = append(s.chunks, make([]client, chunkSize))
		}
		s.head, s.tail = noSlot, noSlot
		s.bans = make(map[addrKey]banRecord)
	}
	return t
}

func (t *tracker) shardOf(k addrKey) *shard {
	return &t.shards[maphash.Comparable(t.seed, k)&t.mask]
}

// outbox collects the events of one knock while the shard is locked; they are emitted after.
type outbox struct {
	events [2 * (pendingMax + 1)]event // each knock settled reports at most two
	n      int
}

func (o *outbox) add(e event) {
	if o.n < len(o.events) {
		o.events[o.n] = e
		o.n++
	}
}

// knock records one knock and reports what it caused.
func (t *tracker) knock(k knock) {
	var out outbox
	s := t.shardOf(k.from)
	s.mu.Lock()
	if t.isBanned(s, k.from, k.ts) {
		s.mu.Unlock()
		return
	}
	c := s.lookup(k.from, t)
	if c.npending == pendingMax {
		t.settleOldest(s, c, &out)
	}
	c.insert(pendingKnock{ts: k.ts, port: k.port, srcPort: k.srcPort})
	t.settle(s, c, k.ts-reorderWindow, &out)
	s.mu.Unlock()
	if t.wantKnock.Load() {
		t.emit(event{kind: eventKnock, from: k.from, srcPort: k.srcPort, port: k.port, ts: k.ts})
	}
	for i := 0; i < out.n; i++ {
		t.emit(out.events[i])
	}
}

// lookup finds or creates the client and marks it most recently seen.
func (s *shard) lookup(k addrKey, t *tracker) *client {
	if i, ok := s.index[k]; ok {
		s.unlink(i)
		s.pushFront(i)
		return s.slot(i)
	}
	if len(s.index) >= s.limit {
		s.evict(t)
	}
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		if int(s.used) == len(s.chunks)*chunkSize {
			s.chunks = append(s.chunks, make([]client, chunkSize))
		}
		i = s.used
		s.used++
	}
	c := s.slot(i)
	*c = client{key: k}
	s.index[k] = i
	s.pushFront(i)
	return c
}

// evict makes room for one client. It prefers, among the least recently seen, one with no
// attempt in progress (it is only remembered to recognise retransmissions); failing that, the
// least recently seen client loses its attempt.
func (s *shard) evict(t *tracker) {
	victim := s.tail
	for n, j := 0, s.tail; n < 16 && j != noSlot; n, j = n+1, s.slot(j).prev {
		if c := s.slot(j); c.npending == 0 && c.progress.step == 0 {
			s.remove(j)
			return
		}
	}
	s.remove(victim)
	t.evicted.Add(1)
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

// insert keeps the pending knocks sorted by receive time.
func (c *client) insert(pk pendingKnock) {
	i := int(c.npending)
	for i > 0 && c.pending[i-1].ts > pk.ts {
		c.pending[i] = c.pending[i-1]
		i--
	}
	c.pending[i] = pk
	c.npending++
}

// settle makes pending knocks final: all of them up to the first that completes the sequence
// (an unlock never waits), and those received before horizon.
func (t *tracker) settle(s *shard, c *client, horizon int64, out *outbox) {
	trial := c.progress
	cut := 0
	for i := 0; i < int(c.npending); i++ {
		if v, _ := t.rules.apply(&trial, c.pending[i].port, c.pending[i].ts); v == verdictUnlocked {
			cut = i + 1
			break
		}
	}
	for cut < int(c.npending) && c.pending[cut].ts < horizon {
		cut++
	}
	for i := 0; i < cut && c.npending > 0; i++ {
		t.settleOldest(s, c, out)
	}
}

func (t *tracker) settleOldest(s *shard, c *client, out *outbox) {
	pk := c.pending[0]
	copy(c.pending[:], c.pending[1:c.npending])
	c.npending--
	v, why := t.rules.apply(&c.progress, pk.port, pk.ts)
	if why != reasonNone {
		out.add(event{kind: eventFail, reason: why, from: c.key, srcPort: pk.srcPort, port: pk.port, ts: pk.ts})
		if t.recordFailure(s, c.key, pk.ts) {
			out.add(event{kind: eventFail, reason: reasonBanned, from: c.key, srcPort: pk.srcPort, port: pk.port, ts: pk.ts})
			c.progress, c.npending = progress{}, 0
			return
		}
	}
	if v == verdictUnlocked {
		out.add(event{kind: eventUnlock, from: c.key, srcPort: pk.srcPort, port: pk.port, ts: pk.ts, elapsed: pk.ts - c.progress.first})
	}
}

// recordFailure counts a failed attempt and reports whether it bans the source.
func (t *tracker) recordFailure(s *shard, k addrKey, ts int64) bool {
	if t.banAfter == 0 {
		return false
	}
	b, ok := s.bans[k]
	if !ok && len(s.bans) >= s.limit {
		return false // the ban table is full: counting stops rather than memory growing
	}
	if ts-b.windowStart > t.banWindow {
		b = banRecord{windowStart: ts}
	}
	b.failures++
	banned := b.failures >= t.banAfter
	if banned {
		b.until = ts + t.banTime
		b.failures = 0
	}
	s.bans[k] = b
	return banned
}

func (t *tracker) isBanned(s *shard, k addrKey, ts int64) bool {
	if t.banAfter == 0 {
		return false
	}
	b, ok := s.bans[k]
	return ok && ts < b.until
}

// sweep settles what the reorder window has passed and forgets clients with nothing left to
// remember: stale entries expire on their own, not only when the same client knocks again.
func (t *tracker) sweep(now int64) {
	for i := range t.shards {
		s := &t.shards[i]
		var out outbox
		s.mu.Lock()
		for j := s.head; j != noSlot; {
			c := s.slot(j)
			next := c.next
			if c.npending > 0 {
				out.n = 0
				t.settle(s, c, now-reorderWindow, &out)
				for e := range out.n { // emit never blocks, so the lock may stay held
					t.emit(out.events[e])
				}
			}
			if c.npending == 0 && t.idle(&c.progress, now) {
				s.remove(j)
			}
			j = next
		}
		for k, b := range s.bans {
			if now >= b.until && now-b.windowStart > t.banWindow {
				delete(s.bans, k)
			}
		}
		s.mu.Unlock()
	}
}

// idle reports whether a client has nothing left to remember. An attempt in progress is kept for
// twice the timeout, so that a late knock is still reported as a timeout rather than a wrong port.
func (t *tracker) idle(p *progress, now int64) bool {
	since := now - p.last
	if p.step > 0 {
		return since > 2*t.rules.timeout
	}
	return since > t.rules.retransmit
}

// clients reports how many clients are tracked now.
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

// scanWarning says when a sequential port scan could complete the sequence by itself.
func scanWarning(seq, decoys []uint16) string {
	if len(seq) < 2 {
		return "a one-port sequence is completed by any scan that touches the port; use a longer sequence or --secret-file"
	}
	asc, desc := true, true
	lo, hi := seq[0], seq[0]
	for i := 1; i < len(seq); i++ {
		asc = asc && seq[i] > seq[i-1]
		desc = desc && seq[i] < seq[i-1]
		lo, hi = min(lo, seq[i]), max(hi, seq[i])
	}
	if !asc && !desc {
		return ""
	}
	for _, d := range decoys {
		if d > lo && d < hi {
			return ""
		}
	}
	order := "ascending"
	if desc {
		order = "descending"
	}
	return fmt.Sprintf("the sequence %s is %s: a sequential port scan completes it; reorder it, add --decoys between the knock ports, or use --secret-file", formatPorts(seq), order)
}

// ---------------------------------------------------------------------------------------------
// Authenticated knocks
//
// With --secret-file every knock datagram carries a token (big-endian integers):
//
//	offset  size  field
//	0       2     magic "KK"
//	2       1     version, 1
//	3       1     position of this knock in the sequence, from 0
//	4       8     client time, unix milliseconds
//	12      16    nonce, random
//	28      32    HMAC-SHA256(secret, bytes 0-27 || destination port as 2 bytes)
//
// The server checks the MAC (constant time) before anything else, then the time against
// --max-skew, the position against the port, and last the nonce against a replay cache.

const (
	tokenLen     = 60
	tokenMACAt   = 28
	tokenVersion = 1
)

// tokenMAC computes token MACs. A hash is not safe for concurrent use, so each listener and
// each client owns one.
type tokenMAC struct {
	mac  hash.Hash
	port [2]byte
	sum  [sha256.Size]byte
}

func newTokenMAC(secret []byte) *tokenMAC { return &tokenMAC{mac: hmac.New(sha256.New, secret)} }

func (m *tokenMAC) compute(head []byte, port uint16) []byte {
	m.mac.Reset()
	m.mac.Write(head)
	binary.BigEndian.PutUint16(m.port[:], port)
	m.mac.Write(m.port[:])
	return m.mac.Sum(m.sum[:0])
}

// tokenFields are a token's parts; parseToken checks only the shape, not the MAC.
type tokenFields struct {
	pos   int
	milli int64
	nonce [16]byte
}

func parseToken(b []byte) (tokenFields, bool) {
	if len(b) != tokenLen || b[0] != 'K' || b[1] != 'K' || b[2] != tokenVersion {
		return tokenFields{}, false
	}
	f := tokenFields{pos: int(b[3]), milli: int64(binary.BigEndian.Uint64(b[4:12]))}
	copy(f.nonce[:], b[12:28])
	return f, true
}

// appendToken builds the token for the knock at position pos on port.
func appendToken(dst []byte, m *tokenMAC, pos int, port uint16, now time.Time) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 'K', 'K', tokenVersion, byte(pos))
	dst = binary.BigEndian.AppendUint64(dst, uint64(now.UnixMilli()))
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	dst = append(dst, nonce[:]...)
	return append(dst, m.compute(dst[start:], port)...), nil
}

// authenticator decides whether a datagram is a genuine, fresh knock.
type authenticator struct {
	secret  []byte
	seq     []uint16
	decoys  []uint16
	maxSkew int64 // ms
	replay  replayCache
}

func newAuthenticator(c *config) *authenticator {
	return &authenticator{
		secret:  c.secret,
		seq:     c.ports,
		decoys:  c.decoys,
		maxSkew: c.maxSkew.Milliseconds(),
		replay:  newReplayCache(2*c.maxSkew, replayCacheLimit),
	}
}

const replayCacheLimit = 1 << 18

func (a *authenticator) verify(m *tokenMAC, b []byte, port uint16, now int64) bool {
	f, ok := parseToken(b)
	if !ok || subtle.ConstantTimeCompare(m.compute(b[:tokenMACAt], port), b[tokenMACAt:]) != 1 {
		return false
	}
	if skew := now/int64(time.Millisecond) - f.milli; skew > a.maxSkew || -skew > a.maxSkew {
		return false
	}
	if f.pos >= len(a.seq) || a.seq[f.pos] != port {
		if !containsPort(a.decoys, port) {
			return false
		}
	}
	return a.replay.firstSeen(f.nonce, now)
}

// replayCache remembers nonces in two generations that each live span (twice --max-skew): a
// token is valid for at most span after it is first seen, and a nonce stays in the cache for at
// least span. When a generation is full, new knocks are refused rather than old nonces forgotten:
// memory stays bounded and a replay never gets through.
type replayCache struct {
	mu       sync.Mutex
	cur, old map[[16]byte]struct{}
	rotated  int64
	span     int64
	limit    int
}

func newReplayCache(span time.Duration, limit int) replayCache {
	return replayCache{cur: map[[16]byte]struct{}{}, old: map[[16]byte]struct{}{}, span: int64(span), limit: limit}
}

func (r *replayCache) firstSeen(nonce [16]byte, now int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now-r.rotated >= r.span {
		clear(r.old)
		if now-r.rotated >= 2*r.span {
			clear(r.cur)
		}
		r.old, r.cur, r.rotated = r.cur, r.old, now
	}
	if _, ok := r.cur[nonce]; ok {
		return false
	}
	if _, ok := r.old[nonce]; ok {
		return false
	}
	if len(r.cur) >= r.limit {
		return false
	}
	r.cur[nonce] = struct{}{}
	return true
}

// ---------------------------------------------------------------------------------------------
// Listeners

const (
	receiveBuffer = 8 << 20
	soRcvbufForce = 33 // Linux SO_RCVBUFFORCE: lets root raise the buffer past net.core.rmem_max
)

// timestampOption is Linux's SO_TIMESTAMPNS on the ports where it is 35, a cmsghdr takes 16
// bytes and a timespec two int64s. Elsewhere knocks are timed when they are read.
var timestampOption = func() int {
	if runtime.GOOS != "linux" {
		return 0
	}
	switch runtime.GOARCH {
	case "amd64", "arm64", "riscv64", "ppc64le", "ppc64", "s390x", "loong64":
		return 35
	}
	return 0
}()

// knockListener reads one knock or decoy port. Its buffers and MAC are its own, so the read
// loop allocates nothing.
type knockListener struct {
	port uint16
	conn *net.UDPConn
	buf  [128]byte // tokens are 60 bytes; a longer datagram is not a token
	oob  [64]byte
	mac  *tokenMAC
}

func (s *server) listen(port uint16) (*knockListener, error) {
	addr := &net.UDPAddr{Port: int(port)}
	if s.cfg.listen.IsValid() {
		addr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.listen, port))
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, bindError("UDP", int(port), err)
	}
	tuneSocket(conn)
	l := &knockListener{port: port, conn: conn}
	if s.auth != nil {
		l.mac = newTokenMAC(s.auth.secret)
	}
	return l, nil
}

func tuneSocket(conn *net.UDPConn) {
	_ = conn.SetReadBuffer(receiveBuffer) // the kernel caps it at net.core.rmem_max
	if timestampOption == 0 {
		return
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soRcvbufForce, receiveBuffer)
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, timestampOption, 1)
	})
}

// receiveBufferSize is the socket's receive buffer as the kernel reports it (Linux reports twice
// the size set, the rest being its bookkeeping).
func receiveBufferSize(conn *net.UDPConn) int {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0
	}
	size := 0
	_ = raw.Control(func(fd uintptr) {
		size, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	return size
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

func (l *knockListener) run(s *server) {
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
		ts := receiveTime(l.oob[:oobn])
		if s.auth != nil && !s.auth.verify(l.mac, l.buf[:n], l.port, ts) {
			s.rejected.Add(1)
			continue
		}
		s.tracker.knock(knock{from: keyOf(from.Addr()), srcPort: from.Port(), port: l.port, ts: ts})
	}
}

// receiveTime reads the kernel's receive time from the control data, or takes the time now.
func receiveTime(oob []byte) int64 {
	for len(oob) >= 16 {
		size := binary.NativeEndian.Uint64(oob[0:8])
		level := int32(binary.NativeEndian.Uint32(oob[8:12]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:16]))
		if size < 16 || size > uint64(len(oob)) {
			break
		}
		if level == syscall.SOL_SOCKET && int(typ) == timestampOption && size >= 32 {
			sec := int64(binary.NativeEndian.Uint64(oob[16:24]))
			nsec := int64(binary.NativeEndian.Uint64(oob[24:32]))
			return sec*int64(time.Second) + nsec
		}
		next := (size + 7) &^ 7
		if next > uint64(len(oob)) {
			break
		}
		oob = oob[next:]
	}
	return time.Now().UnixNano()
}

// server ties the pieces together: listeners feed the tracker, the tracker feeds the hook runtime,
// and the hook runtime drives the listeners and the built-in services through the knock module.
type server struct {
	cfg      *config
	log      *slog.Logger
	tracker  *tracker
	auth     *authenticator
	hooks    *hookRuntime
	allow    allowList
	rejected atomic.Uint64 // datagrams that were not valid authenticated knocks

	mu        sync.Mutex
	listeners []*knockListener
	readers   sync.WaitGroup
	services  map[int]*service
}

func newServer(cfg *config, log *slog.Logger, proto *lua.FunctionProto) *server {
	s := &server{cfg: cfg, log: log, services: map[int]*service{}, allow: allowList{until: map[addrKey]int64{}}}
	if cfg.secret != nil {
		s.auth = newAuthenticator(cfg)
	}
	s.hooks = newHookRuntime(s, proto, false)
	s.tracker = newTracker(cfg, s.hooks.enqueue)
	return s
}

// knockPorts lists each port to listen on once: the sequence, then the decoys.
func (c *config) knockPorts() []uint16 {
	var ports []uint16
	for _, p := range append(append([]uint16{}, c.ports...), c.decoys...) {
		if !containsPort(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
}

// openKnockPorts binds every knock and decoy port and starts one reader goroutine per port.
// It binds all of them or none.
func (s *server) openKnockPorts() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.listeners) > 0 {
		return nil
	}
	var opened []*knockListener
	for _, p := range s.cfg.knockPorts() {
		l, err := s.listen(p)
		if err != nil {
			for _, o := range opened {
				o.conn.Close()
			}
			return err
		}
		opened = append(opened, l)
	}
	s.listeners = opened
	if runtime.GOOS == "linux" { // elsewhere SO_RCVBUF does not report the same thing
		if n := receiveBufferSize(opened[0].conn); n > 0 && n < receiveBuffer {
			s.log.Warn("small UDP receive buffers: a burst of knocks may be dropped; raise net.core.rmem_max (sysctl -w net.core.rmem_max=8388608) or run as root",
				"event", "start", "receive_buffer", n)
		}
	}
	for _, l := range opened {
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			l.run(s)
		}()
	}
	return nil
}

func (s *server) closeKnockPorts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		l.conn.Close()
	}
	s.listeners = nil
}

// janitor runs the periodic work that must not wait for the next knock.
func (s *server) janitor(stop <-chan struct{}) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var reportedDrops, reportedEvictions uint64
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			s.tracker.sweep(now.UnixNano())
			s.allow.sweep(now.UnixNano())
			if d := s.hooks.dropped.Load(); d != reportedDrops {
				s.log.Warn("hook queue full: events dropped", "event", "overload", "dropped", d-reportedDrops, "total", d)
				reportedDrops = d
			}
			if e := s.tracker.evicted.Load(); e != reportedEvictions {
				s.log.Warn("client table full: attempts in progress dropped", "event", "overload", "evicted", e-reportedEvictions, "max_clients", s.cfg.maxClients)
				reportedEvictions = e
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// The hook runtime and the knock module
//
// One goroutine owns the Lua state and handles events one at a time, in the order they were
// queued, so a hook never sees two calls at once and its globals persist between calls. The
// knock path only queues events, and never waits: when the queue is full the event is counted
// as dropped.

const (
	hookQueueLen   = 1 << 16
	maxExecOutput  = 1 << 20
	shutdownGrace  = 2 * time.Second
	defaultAllow   = 30 // seconds, for knock.allow(ip) without a duration
	defaultService = 8080
)

type hookFuncs struct{ unlock, knock, fail, start, stop *lua.LFunction }

// luaHook is one loaded hook file: its state and the functions it defines.
type luaHook struct {
	L   *lua.LState
	fns hookFuncs
}

type afterCall struct {
	L  *lua.LState // the state fn belongs to: a reload does not orphan a pending callback
	fn *lua.LFunction
}

type hookRuntime struct {
	srv        *server
	log        *slog.Logger
	proto      *lua.FunctionProto
	dry        bool // check: load the hook without side effects
	hook       *luaHook
	seqLua     []lua.LValue
	events     chan event
	afters     chan afterCall
	reloads    chan chan error
	quit       chan struct{}
	done       chan struct{}
	dropped    atomic.Uint64
	failLog    rateLimit // a flood of wrong knocks must not flood the log
	unlocks    atomic.Uint64
	lastUnlock atomic.Int64     // when on_unlock last started (unix ns)
	latency    latencyHistogram // from the final knock's receive time to on_unlock's start
}

func newHookRuntime(s *server, proto *lua.FunctionProto, dry bool) *hookRuntime {
	h := &hookRuntime{
		srv: s, log: s.log, proto: proto, dry: dry,
		events:  make(chan event, hookQueueLen),
		afters:  make(chan afterCall, 1024),
		reloads: make(chan chan error),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		failLog: rateLimit{log: s.log},
	}
	for _, p := range s.cfg.ports {
		h.seqLua = append(h.seqLua, lua.LNumber(p))
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

// load makes a fresh Lua state, runs the hook's top level in it and finds its functions.
func (h *hookRuntime) load(proto *lua.FunctionProto) (*luaHook, error) {
	L := lua.NewState(lua.Options{RegistryMaxSize: 1 << 22})
	h.installModule(L)
	err := h.protect(L, h.srv.cfg.hookTimeout, func() error {
		L.Push(L.NewFunctionFromProto(proto))
		return L.PCall(0, 0, nil)
	})
	if err != nil {
		L.Close()
		return nil, usagef("hook %s: %s", h.srv.cfg.hookName, err)
	}
	hook := &luaHook{L: L}
	for _, f := range []struct {
		name string
		dst  **lua.LFunction
	}{
		{"on_unlock", &hook.fns.unlock}, {"on_knock", &hook.fns.knock}, {"on_fail", &hook.fns.fail},
		{"on_start", &hook.fns.start}, {"on_stop", &hook.fns.stop},
	} {
		switch v := L.GetGlobal(f.name).(type) {
		case *lua.LFunction:
			*f.dst = v
		case *lua.LNilType:
		default:
			L.Close()
			return nil, usagef("hook %s: %s is a %s, not a function", h.srv.cfg.hookName, f.name, v.Type())
		}
	}
	if hook.fns.unlock == nil {
		L.Close()
		return nil, usagef("hook %s defines no on_unlock function", h.srv.cfg.hookName)
	}
	return hook, nil
}

// protect runs fn under the hook timeout and turns a Lua error, a cancellation or a panic in the
// Lua runtime into one line of text.
func (h *hookRuntime) protect(L *lua.LState, timeout time.Duration, fn func() error) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	L.SetContext(ctx)
	defer L.RemoveContext()
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

// runtimePanic marks a state that may be corrupt (gopher-lua #282): it is replaced.
type runtimePanic struct{ msg string }

func (p *runtimePanic) Error() string { return p.msg }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\nstack traceback:")
	return oneLine(s)
}

// enqueue is the tracker's emit function: it never blocks. Knock and fail events only use half
// of the queue, so that a flood of them cannot crowd out unlocks.
func (h *hookRuntime) enqueue(e event) {
	if e.kind != eventUnlock && len(h.events) >= hookQueueLen/2 {
		h.dropped.Add(1)
		return
	}
	select {
	case h.events <- e:
	default:
		h.dropped.Add(1)
	}
}

// run handles events until stop is called.
func (h *hookRuntime) run(hook *luaHook) {
	defer close(h.done)
	h.hook = hook
	h.call("on_start", hook.L, hook.fns.start, lua.LString("start"))
	for {
		select {
		case e := <-h.events:
			h.dispatch(&e)
		case a := <-h.afters:
			h.call("knock.after callback", a.L, a.fn)
		case reply := <-h.reloads:
			reply <- h.reload()
		case <-h.quit:
			h.drain()
			h.call("on_stop", h.hook.L, h.hook.fns.stop, lua.LString("shutdown"))
			return
		}
	}
}

// drain gives the events already queued a moment to be handled at shutdown.
func (h *hookRuntime) drain() {
	deadline := time.Now().Add(shutdownGrace)
	for time.Now().Before(deadline) {
		select {
		case e := <-h.events:
			h.dispatch(&e)
		default:
			return
		}
	}
	if n := len(h.events); n > 0 {
		h.log.Warn("shutdown: queued hook events not handled", "event", "shutdown", "count", n)
	}
}

func (h *hookRuntime) stop() {
	close(h.quit)
	<-h.done
}

func (h *hookRuntime) dispatch(e *event) {
	ip := e.from.addr().String()
	switch e.kind {
	case eventUnlock:
		now := time.Now().UnixNano()
		h.unlocks.Add(1)
		h.lastUnlock.Store(now)
		h.latency.record(now - e.ts)
		h.log.Info("unlock", "event", "unlock", "ip", ip, "port", e.port, "source_port", e.srcPort, "elapsed", time.Duration(e.elapsed).Round(time.Microsecond).String())
		h.callEvent("on_unlock", h.hook.fns.unlock, e, ip)
	case eventFail:
		if h.failLog.allow(time.Now()) {
			h.log.Info("knock failed", "event", "fail", "ip", ip, "port", e.port, "reason", e.reason.String())
		}
		h.callEvent("on_fail", h.hook.fns.fail, e, ip)
	case eventKnock:
		if h.srv.cfg.verbose {
			h.log.Info("knock", "event", "knock", "ip", ip, "port", e.port, "source_port", e.srcPort)
		}
		h.callEvent("on_knock", h.hook.fns.knock, e, ip)
	}
}

func (h *hookRuntime) callEvent(name string, fn *lua.LFunction, e *event, ip string) {
	if fn == nil {
		return
	}
	h.call(name, h.hook.L, fn, h.eventTable(h.hook.L, e, ip))
}

// eventTable is the ev argument of a hook call.
func (h *hookRuntime) eventTable(L *lua.LState, e *event, ip string) *lua.LTable {
	t := L.CreateTable(0, 7)
	t.RawSetString("ip", lua.LString(ip))
	t.RawSetString("source_port", lua.LNumber(e.srcPort))
	t.RawSetString("port", lua.LNumber(e.port))
	seq := L.CreateTable(len(h.seqLua), 0)
	for i, p := range h.seqLua {
		seq.RawSetInt(i+1, p)
	}
	t.RawSetString("sequence", seq)
	t.RawSetString("time", lua.LNumber(float64(e.ts)/1e9))
	t.RawSetString("elapsed", lua.LNumber(float64(e.elapsed)/1e9))
	if e.kind == eventFail {
		t.RawSetString("reason", lua.LString(e.reason.String()))
	}
	return t
}

// call runs one hook function; a failure is logged and the server goes on.
func (h *hookRuntime) call(name string, L *lua.LState, fn *lua.LFunction, args ...lua.LValue) {
	if fn == nil {
		return
	}
	err := h.protect(L, h.srv.cfg.hookTimeout, func() error {
		return L.CallByParam(lua.P{Fn: fn, NRet: 0, Protect: true}, args...)
	})
	if err == nil {
		return
	}
	h.log.Error("hook failed", "event", "hook_error", "hook", name, "err", err.Error())
	var p *runtimePanic
	if errors.As(err, &p) && L == h.hook.L {
		h.replaceState()
	}
}

// replaceState starts the hook afresh after a panic inside the Lua runtime. Its globals are lost.
func (h *hookRuntime) replaceState() {
	fresh, err := h.load(h.proto)
	if err != nil {
		h.log.Error("hook could not be restarted; keeping the old state", "event", "hook_error", "err", err.Error())
		return
	}
	h.hook = fresh
	h.log.Warn("hook state replaced after a runtime panic: its globals were reset", "event", "hook_reload")
}

// reload re-reads the hook file. A hook that fails to load leaves the running one in place.
// Callbacks the old state scheduled with knock.after still run, in the old state.
func (h *hookRuntime) reload() error {
	cfg := h.srv.cfg
	if cfg.hookPath == "" {
		return errors.New("the embedded default hook has no file to reload")
	}
	src, err := os.ReadFile(cfg.hookPath)
	if err != nil {
		return err
	}
	proto, err := compileHook(cfg.hookName, src)
	if err != nil {
		return err
	}
	fresh, err := h.load(proto)
	if err != nil {
		return err
	}
	// The reason lets a firewall hook keep its rules across a reload: removing them and adding
	// them again would leave the protected port open in between.
	h.call("on_stop", h.hook.L, h.hook.fns.stop, lua.LString("reload"))
	h.proto, h.hook = proto, fresh
	h.call("on_start", fresh.L, fresh.fns.start, lua.LString("reload"))
	return nil
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
	second     int64
	used       int
	suppressed int
	log        *slog.Logger
}

const failLogsPerSecond = 200

func (r *rateLimit) allow(now time.Time) bool {
	if sec := now.Unix(); sec != r.second {
		if r.suppressed > 0 {
			r.log.Warn("knock failures not logged: over the rate limit", "event", "overload", "count", r.suppressed, "limit_per_second", failLogsPerSecond)
		}
		r.second, r.used, r.suppressed = sec, 0, 0
	}
	if r.used < failLogsPerSecond {
		r.used++
		return true
	}
	r.suppressed++
	return false
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

// quantile returns an upper bound for the q-quantile, or 0 when nothing was recorded.
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
			return time.Duration(bucketUpper(i))
		}
	}
	return 0
}

// installModule makes `knock` a global and require-able, and replaces os.execute with a version
// that honours the hook timeout.
func (h *hookRuntime) installModule(L *lua.LState) {
	mod := L.NewTable()
	L.SetFuncs(mod, map[string]lua.LGFunction{
		"close_knock_ports": h.luaCloseKnockPorts,
		"open_knock_ports":  h.luaOpenKnockPorts,
		"serve":             h.luaServe,
		"stop_service":      h.luaStopService,
		"allow":             h.luaAllow,
		"revoke":            h.luaRevoke,
		"exec":              h.luaExec,
		"after":             h.luaAfter,
		"log":               h.luaLog,
	})
	mod.RawSetString("config", h.configTable(L))
	args := L.NewTable()
	for _, kv := range h.srv.cfg.hookArgs {
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
	}
}

// configTable is knock.config: a read-only view of the settings.
func (h *hookRuntime) configTable(L *lua.LState) *lua.LTable {
	cfg := h.srv.cfg
	data := L.NewTable()
	ports := L.NewTable()
	for _, p := range cfg.ports {
		ports.Append(lua.LNumber(p))
	}
	decoys := L.NewTable()
	for _, p := range cfg.decoys {
		decoys.Append(lua.LNumber(p))
	}
	data.RawSetString("ports", ports)
	data.RawSetString("decoys", decoys)
	data.RawSetString("timeout", lua.LNumber(cfg.timeout.Seconds()))
	data.RawSetString("hook_timeout", lua.LNumber(cfg.hookTimeout.Seconds()))
	data.RawSetString("listen", lua.LString(listenString(cfg.listen)))
	data.RawSetString("authenticated", lua.LBool(cfg.secret != nil))
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

func listenString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func (h *hookRuntime) luaCloseKnockPorts(L *lua.LState) int {
	if !h.dry {
		h.srv.closeKnockPorts()
		h.log.Info("knock ports closed", "event", "close_knock_ports")
	}
	return 0
}

func (h *hookRuntime) luaOpenKnockPorts(L *lua.LState) int {
	if !h.dry {
		if err := h.srv.openKnockPorts(); err != nil {
			return pushError(L, err)
		}
		h.log.Info("knock ports open", "event", "open_knock_ports", "ports", formatPorts(h.srv.cfg.knockPorts()))
	}
	L.Push(lua.LTrue)
	return 1
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
	if !h.dry {
		if err := h.srv.startService(spec); err != nil {
			h.log.Error("service not started", "event", "hook_error", "port", spec.port, "err", err.Error())
			return pushError(L, err)
		}
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
	if !h.dry {
		h.srv.stopService(port)
	}
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
	if !h.dry {
		h.srv.allow.grant(k, time.Duration(secs*float64(time.Second)))
	}
	return 0
}

func (h *hookRuntime) luaRevoke(L *lua.LState) int {
	k := checkAddr(L, 1)
	if !h.dry {
		h.srv.allow.revoke(k)
	}
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
	if h.dry {
		L.Push(lua.LNumber(0))
		L.Push(lua.LString(""))
		return 2
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
	if h.dry {
		L.Push(lua.LNumber(0))
		return 1
	}
	h.runCommand(L, cmd)
	if L.Get(-2) == lua.LNil { // it could not start: nil and the message
		return 2
	}
	L.Pop(1) // os.execute returns only the status
	return 1
}

func (h *hookRuntime) runCommand(L *lua.LState, cmd *exec.Cmd) int {
	ctx := L.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return pushError(L, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	stop()
	if ctx.Err() != nil {
		L.RaiseError("%s cancelled at the hook timeout", cmd.Path)
	}
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	} else if err != nil {
		return pushError(L, err)
	}
	L.Push(lua.LNumber(code))
	L.Push(lua.LString(out.String()))
	return 2
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

func (h *hookRuntime) luaAfter(L *lua.LState) int {
	secs := float64(L.CheckNumber(1))
	fn := L.CheckFunction(2)
	if !(secs >= 0 && secs <= 365*24*3600) {
		L.ArgError(1, "seconds must be from 0 to a year")
	}
	if h.dry {
		return 0
	}
	for L.Parent != nil { // called in a coroutine: run fn on the hook's own state
		L = L.Parent
	}
	time.AfterFunc(time.Duration(secs*float64(time.Second)), func() {
		select {
		case h.afters <- afterCall{L: L, fn: fn}:
		case <-h.done:
		}
	})
	return 0
}

// luaLog is knock.log(msg [, fields]): fields become attributes; fields.level may be
// "debug", "info", "warn" or "error".
func (h *hookRuntime) luaLog(L *lua.LState) int {
	msg := L.CheckString(1)
	level := slog.LevelInfo
	attrs := []any{"event", "hook"}
	if fields := L.OptTable(2, nil); fields != nil {
		fields.ForEach(func(k, v lua.LValue) {
			key := k.String()
			if key == "level" {
				_ = level.UnmarshalText([]byte(v.String()))
				return
			}
			attrs = append(attrs, key, luaToAttr(v))
		})
	}
	h.log.Log(context.Background(), level, msg, attrs...)
	return 0
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

// ---------------------------------------------------------------------------------------------
// The built-in service
//
// knock.serve starts it: TCP answers HTTP (so curl works) and UDP replies with the greeting. In
// allow mode only addresses granted by knock.allow get through; TCP connections from others are
// reset and their UDP datagrams dropped.

const defaultGreeting = "Hello {ip}: you knocked the right way, the door is open."

type serviceSpec struct {
	port      int
	proto     string // tcp, udp or both
	allowOnly bool
	greeting  string // {ip} becomes the client's address
}

type service struct {
	spec serviceSpec
	http *http.Server
	udp  *net.UDPConn
}

func (s *server) startService(spec serviceSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, running := s.services[spec.port]; running {
		return nil
	}
	svc := &service{spec: spec}
	if spec.proto != "udp" {
		ln, err := net.Listen("tcp", s.serviceAddr(spec.port))
		if err != nil {
			return bindError("TCP", spec.port, err)
		}
		svc.http = &http.Server{
			Handler:           http.HandlerFunc(svc.serveHTTP),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		var accept net.Listener = ln
		if spec.allowOnly {
			accept = &allowListener{Listener: ln, allow: &s.allow}
			svc.http.SetKeepAlivesEnabled(false) // so that every request is checked at accept
		}
		go svc.http.Serve(accept)
	}
	if spec.proto != "tcp" {
		addr, _ := net.ResolveUDPAddr("udp", s.serviceAddr(spec.port))
		conn, err := net.ListenUDP("udp", addr)
		if err != nil {
			if svc.http != nil {
				svc.http.Close()
			}
			return bindError("UDP", spec.port, err)
		}
		svc.udp = conn
		go svc.serveUDP(&s.allow)
	}
	s.services[spec.port] = svc
	s.log.Info("service started", "event", "serve", "port", spec.port, "proto", spec.proto, "allow", map[bool]string{true: "clients", false: "all"}[spec.allowOnly])
	return nil
}

func (s *server) serviceAddr(port int) string {
	if s.cfg.listen.IsValid() {
		return netip.AddrPortFrom(s.cfg.listen, uint16(port)).String()
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

func (svc *service) close() {
	if svc.http != nil {
		svc.http.Close()
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
	io.WriteString(w, svc.greetingFor(ip))
}

func (svc *service) serveUDP(allow *allowList) {
	buf := make([]byte, 2048)
	for {
		_, from, err := svc.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if svc.spec.allowOnly && !allow.allowed(keyOf(from.Addr()), time.Now().UnixNano()) {
			continue
		}
		svc.udp.WriteToUDPAddrPort([]byte(svc.greetingFor(from.Addr().Unmap().String())), from)
	}
}

// allowListener resets TCP connections from addresses that knock.allow has not granted.
type allowListener struct {
	net.Listener
	allow *allowList
}

func (l *allowListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ap, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil && l.allow.allowed(keyOf(ap.Addr()), time.Now().UnixNano()) {
			return conn, nil
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		conn.Close()
	}
}

// allowList is the set of clients granted by knock.allow, each until a deadline (unix ns).
type allowList struct {
	mu    sync.Mutex
	until map[addrKey]int64
}

func (a *allowList) grant(k addrKey, d time.Duration) {
	a.mu.Lock()
	a.until[k] = time.Now().Add(d).UnixNano()
	a.mu.Unlock()
}

func (a *allowList) revoke(k addrKey) {
	a.mu.Lock()
	delete(a.until, k)
	a.mu.Unlock()
}

func (a *allowList) allowed(k addrKey, now int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return now < a.until[k]
}

func (a *allowList) sweep(now int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, t := range a.until {
		if now >= t {
			delete(a.until, k)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// The client

// knockPlan is what `knockknock knock` sends.
type knockPlan struct {
	host    string
	network string // ip, ip4 or ip6
	ports   []uint16
	delay   time.Duration
	secret  []byte
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
	var err error
	if len(k.Args.Ports) > 0 {
		if plan.ports, err = parsePortList(strings.Join(k.Args.Ports, ",")); err != nil {
			return nil, usagef("invalid PORT %q: %v", strings.Join(k.Args.Ports, " "), err)
		}
	} else if plan.ports, err = parsePortList(cl.global.Ports); err != nil || len(plan.ports) == 0 {
		return nil, usagef("invalid --ports %q: want a comma-separated list of ports 1-65535", cl.global.Ports)
	}
	if len(plan.ports) > maxSequenceLen {
		return nil, usagef("knock: at most %d ports", maxSequenceLen)
	}
	if plan.delay, err = parseDuration(k.Delay); err != nil || plan.delay > time.Minute {
		return nil, usagef("invalid --delay %q: want a duration from 0 to 1m, such as 10ms or 0.5", k.Delay)
	}
	if cl.global.SecretFile != "" {
		if plan.secret, err = loadSecret(cl.global.SecretFile); err != nil {
			return nil, usagef("invalid --secret-file: %v", err)
		}
	}
	return plan, nil
}

// send resolves the host and knocks each port in turn from one socket.
func (k *knockPlan) send(ctx context.Context) (netip.Addr, error) {
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
		return netip.Addr{}, fmt.Errorf("cannot resolve %q%s: %v", k.host, family, err)
	}
	dst := addrs[0].Unmap()
	network := "udp4"
	if dst.Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return dst, fmt.Errorf("cannot open a UDP socket: %v", err)
	}
	defer conn.Close()
	var mac *tokenMAC
	if k.secret != nil {
		mac = newTokenMAC(k.secret)
	}
	var payload []byte
	for i, port := range k.ports {
		if i > 0 && k.delay > 0 {
			time.Sleep(k.delay)
		}
		payload = payload[:0]
		if mac != nil {
			if payload, err = appendToken(payload, mac, i, port, time.Now()); err != nil {
				return dst, err
			}
		}
		if _, err := conn.WriteToUDPAddrPort(payload, netip.AddrPortFrom(dst, port)); err != nil {
			return dst, fmt.Errorf("knock on %s port %d failed: %v", dst, port, syscallCause(err))
		}
	}
	return dst, nil
}

// ---------------------------------------------------------------------------------------------
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
			err = runKeygen(cl.keygen.Args.File, stdout)
		default:
			return runServer(cl, stdout, stderr)
		}
	}
	return report(err, stdout, stderr)
}

// report prints an error as one line and maps it to an exit code.
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
		fmt.Fprintf(stderr, "knockknock: %s\n", oneLine(usage.msg))
		return exitUsage
	default:
		fmt.Fprintf(stderr, "knockknock: %s\n", oneLine(err.Error()))
		return exitRuntime
	}
}

func runKnock(cl *commandLine, stdout, stderr io.Writer) int {
	plan, err := newKnockPlan(cl)
	if err != nil {
		return report(err, stdout, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dst, err := plan.send(ctx)
	if err != nil {
		return report(err, stdout, stderr)
	}
	mode := "plain"
	if plan.secret != nil {
		mode = "authenticated"
	}
	fmt.Fprintf(stdout, "knocked %s on %s (%s)\n", dst, formatPorts(plan.ports), mode)
	return exitOK
}

func runKeygen(path string, stdout io.Writer) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	secret := hex.EncodeToString(key[:]) + "\n"
	if path == "" {
		_, err := io.WriteString(stdout, secret)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return usagef("keygen: %v", err)
	}
	if _, err := f.WriteString(secret); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runServer validates everything; then `check` prints the settings and `serve` runs.
func runServer(cl *commandLine, stdout, stderr io.Writer) int {
	cfg, err := buildConfig(&cl.global)
	if err != nil {
		return report(err, stdout, stderr)
	}
	proto, err := compileHook(cfg.hookName, cfg.hookSource)
	if err != nil {
		return report(err, stdout, stderr)
	}
	log := newLogger(cfg, stderr)
	if cl.command == "check" {
		return runCheck(cfg, proto, log, stdout, stderr)
	}
	return serve(cfg, proto, log, stdout, stderr)
}

// runCheck loads the hook without side effects and prints the effective settings.
func runCheck(cfg *config, proto *lua.FunctionProto, log *slog.Logger, stdout, stderr io.Writer) int {
	s := &server{cfg: cfg, log: log}
	h := newHookRuntime(s, proto, true)
	hook, err := h.load(proto)
	if err != nil {
		return report(err, stdout, stderr)
	}
	hook.L.Close()
	var defined []string
	for name, fn := range map[string]*lua.LFunction{"on_unlock": hook.fns.unlock, "on_knock": hook.fns.knock, "on_fail": hook.fns.fail, "on_start": hook.fns.start, "on_stop": hook.fns.stop} {
		if fn != nil {
			defined = append(defined, name)
		}
	}
	sort.Strings(defined)
	listen := listenOrAll(cfg.listen)
	mode := "plain (knockd-compatible): anyone who sees a knock can replay it"
	if cfg.secret != nil {
		mode = fmt.Sprintf("authenticated (HMAC-SHA256, --secret-file %s, --max-skew %v)", cfg.secretFile, cfg.maxSkew)
	}
	bans := "off"
	if cfg.banAfter > 0 {
		bans = fmt.Sprintf("after %d failures within %v, for %v", cfg.banAfter, cfg.banWindow, cfg.banTime)
	}
	w := stdout
	fmt.Fprintf(w, "ports:        %s\n", formatPorts(cfg.ports))
	fmt.Fprintf(w, "decoys:       %s\n", orNone(formatPorts(cfg.decoys)))
	fmt.Fprintf(w, "timeout:      %v\n", cfg.timeout)
	fmt.Fprintf(w, "listen:       %s\n", listen)
	fmt.Fprintf(w, "hook:         %s (%s)\n", cfg.hookName, strings.Join(defined, ", "))
	fmt.Fprintf(w, "hook-timeout: %v\n", cfg.hookTimeout)
	for _, kv := range cfg.hookArgs {
		fmt.Fprintf(w, "hook-arg:     %s=%s\n", kv[0], kv[1])
	}
	fmt.Fprintf(w, "knocks:       %s\n", mode)
	fmt.Fprintf(w, "max-clients:  %d\n", cfg.maxClients)
	fmt.Fprintf(w, "bans:         %s\n", bans)
	fmt.Fprintf(w, "log-format:   %s\n", cfg.logFormat)
	if msg := scanWarning(cfg.ports, cfg.decoys); msg != "" {
		fmt.Fprintf(w, "warning: %s\n", msg)
	}
	if cfg.secret == nil && len(cfg.ports) <= 4 {
		fmt.Fprintf(w, "warning: a %d-port plain sequence has few orders: a UDP scan of the knock ports can complete it by chance and a listener can replay it; use --secret-file, a longer sequence, or --decoys\n", len(cfg.ports))
	}
	fmt.Fprintln(w, "ok")
	return exitOK
}

func listenOrAll(a netip.Addr) string {
	if !a.IsValid() {
		return "all addresses, IPv4 and IPv6"
	}
	return a.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// serve runs the server until SIGINT or SIGTERM. SIGHUP reloads the hook.
func serve(cfg *config, proto *lua.FunctionProto, log *slog.Logger, stdout, stderr io.Writer) int {
	s := newServer(cfg, log, proto)
	hook, err := s.hooks.load(proto)
	if err != nil {
		return report(err, stdout, stderr)
	}
	s.tracker.wantKnock.Store(hook.fns.knock != nil || cfg.verbose)
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)
	if err := s.openKnockPorts(); err != nil {
		hook.L.Close()
		return report(err, stdout, stderr)
	}
	stopJanitor := make(chan struct{})
	go s.janitor(stopJanitor)
	go s.hooks.run(hook)
	mode := "plain"
	if s.auth != nil {
		mode = "authenticated"
	}
	log.Info("listening", "event", "start", "ports", formatPorts(cfg.ports), "decoys", orNone(formatPorts(cfg.decoys)),
		"timeout", cfg.timeout.String(), "hook", cfg.hookName, "knocks", mode, "listen", listenOrAll(cfg.listen))
	for sig := range signals {
		if sig != syscall.SIGHUP {
			log.Info("shutting down", "event", "stop", "signal", sig.String())
			break
		}
		if err := s.hooks.requestReload(); err != nil {
			log.Error("hook reload failed; keeping the running hook", "event", "hook_reload", "err", oneLine(err.Error()))
		} else {
			log.Info("hook reloaded", "event", "hook_reload", "hook", cfg.hookName)
		}
	}
	s.closeKnockPorts()
	s.readers.Wait()
	close(stopJanitor)
	s.hooks.stop()
	s.stopServices()
	log.Info("stopped", "event", "stopped", "unlocks", s.hooks.unlocks.Load(), "hook_events_dropped", s.hooks.dropped.Load(),
		"rejected", s.rejected.Load(), "last_unlock_unix_ns", s.hooks.lastUnlock.Load(), "hook_latency_p50", s.hooks.latency.quantile(0.5).String(), "hook_latency_p99", s.hooks.latency.quantile(0.99).String())
	return exitOK
}
