package main

// `loadgen bench` is the cost-per-knock benchmark of scripts/bench.sh (issue 8, item 5): the CPU a
// receiver spends on one burst (100,000 clients, zero gap, 3 knocks each: 300,000 datagrams from
// 127.1.0.1 + i), for a bare sink (the floor: the kernel's work per datagram and a read loop) and
// for knockknock with a given hook and log format, in socket and capture mode, with the receiver
// started in the load generator's session ("plain") or in its own ("setsid", as a daemon runs).
//
//	loadgen bench -knockknock BIN [-out DIR] [-reps 5] [-cases LIST] [-styles plain,setsid]
//	              [-slow 0.8] [-sender-check LIST] [-profile DIR] [-knockd BIN]
//	loadgen bench sink-udp -ports LIST    (the bare UDP sink: a child process of the benchmark)
//	loadgen bench sink-raw -ports LIST    (the bare raw sink: ip4:udp behind knockknock's filter)
//
// One run: start the receiver, wait until it is listening and idle, read its CPU (utime + stime
// from /proc/PID/stat), send the burst from this process (one socket, IP_PKTINFO for the source
// address, on a thread of its own), wait until the receiver's sockets are empty and its CPU has
// stopped growing, read its CPU again, then stop it with SIGTERM and check what it counted
// (datagrams, unlocks in the "stopped" line, the hook's own count, the lines the hook wrote).
// Each run also records what could spoil it: datagrams dropped anywhere (RcvbufErrors, the
// sockets' drop counters, the loopback backlog), the sender's rate and CPU, and the CPU that
// other processes used meanwhile (other engineers build and test on this machine): a disturbed
// run is repeated.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv4"
)

var benchPorts = []uint16{40123, 40456, 40789}

const userHZ = 100 // clock ticks per second in /proc (USER_HZ, 100 on every Linux ABI Go supports)

// writesFile reports whether a receiver's hook writes a line per unlock to a file.
func writesFile(recv string) bool { return recv == "all-in" || recv == "reopen" }

// receiverCase is one receiving process.
type receiverCase struct {
	id     string // socket-sink, socket-noop, ...
	mode   string // socket or capture
	recv   string // sink, noop, all-in, knockd
	hook   string // knockknock's hook
	format string // knockknock's log format
}

var receiverCases = []receiverCase{
	{"socket-sink", "socket", "sink", "", ""},
	{"socket-noop", "socket", "noop", "scripts/bench.lua", "text"},
	{"socket-allin", "socket", "all-in", "scripts/bench-append.lua", "json"},
	{"socket-reopen", "socket", "reopen", "scripts/bench-reopen.lua", "json"},
	{"capture-sink", "capture", "sink", "", ""},
	{"capture-noop", "capture", "noop", "scripts/bench.lua", "text"},
	{"capture-allin", "capture", "all-in", "scripts/bench-append.lua", "json"},
	{"capture-reopen", "capture", "reopen", "scripts/bench-reopen.lua", "json"},
	{"capture-knockd", "capture", "knockd", "", ""},
}

// load is how the burst reaches the receiver:
//
//	burst      as fast as the sender goes (the table's figures)
//	slowed     the sender held to a fraction of the rate it reached in the burst runs (the check
//	           that the sender is not what is measured)
//	prequeued  the receiver stopped (SIGSTOP) while each slice of 5,000 clients is sent, then let
//	           go (SIGCONT) to drain it: it never waits for a datagram, so its CPU is its own work
//	           per datagram with no wake-ups, whatever the sender does
type load struct {
	name string
	pace float64
}

var burstLoad = load{"burst", 1}

const prequeueSlice = 5000 // clients: 15,000 datagrams, under a capture socket's 16 MiB buffer

// runResult is one run of one case.
type runResult struct {
	Case         string  `json:"case"`
	Mode         string  `json:"mode"`
	Receiver     string  `json:"receiver"`
	Style        string  `json:"launch"`
	Rep          int     `json:"rep"`
	Load         string  `json:"load"`               // burst, slowed or prequeued (see loads)
	Pace         float64 `json:"sender_pace"`        // slowed: the fraction of the free rate
	User         float64 `json:"user_seconds"`       // receiver, during the burst
	Sys          float64 `json:"system_seconds"`     //
	CPU          float64 `json:"cpu_seconds"`        // user + system
	Runtime      float64 `json:"runtime_seconds"`    // the same from the threads' schedstat (ns)
	Vol          int64   `json:"voluntary_switches"` // the receiver's threads went to sleep this often
	Invol        int64   `json:"involuntary_switches"`
	PeakRSS      int64   `json:"peak_rss_kib"`
	Datagrams    int64   `json:"datagrams_sent"`
	SendErrors   int64   `json:"send_errors"`
	SendSecs     float64 `json:"send_seconds"`
	SendRate     float64 `json:"send_rate"`        // datagrams per second
	SendCPU      float64 `json:"send_cpu_seconds"` // the sending thread (user + system, softirq included)
	Lag          float64 `json:"lag_seconds"`      // from the last datagram sent to the receiver idle
	Expected     int64   `json:"expected"`         // datagrams (sink) or unlocks (knockknock)
	Got          int64   `json:"got"`              // what the receiver counted
	LogUnlocks   int64   `json:"log_unlocks"`      // unlock lines in knockknock's log
	HookCount    int64   `json:"hook_unlocks"`     // the hook's own count (on_stop)
	FileLines    int64   `json:"file_lines"`       // lines the all-in hook wrote
	Shed         int64   `json:"hook_events_shed"` //
	Dropped      int64   `json:"dropped"`          // RcvbufErrors + socket drops + backlog drops
	Other        float64 `json:"other_cpu_seconds"`
	Others       string  `json:"other_processes"`                // the other processes that used the most CPU
	Unattributed float64 `json:"unattributed_cpu_seconds"`       // busy, charged to no process
	RecvWait     float64 `json:"receiver_runqueue_wait_seconds"` // ready to run, the CPU busy elsewhere
	SendWait     float64 `json:"sender_runqueue_wait_seconds"`
	Softirqd     float64 `json:"ksoftirqd_seconds"`
	Steal        float64 `json:"steal_seconds"`
	Autogroup    string  `json:"autogroup"` // the receiver's, and its nice
	Nice         int     `json:"autogroup_nice"`
	Tries        int     `json:"tries"`
	Disturbed    bool    `json:"disturbed"`
	Err          string  `json:"error,omitempty"`
}

func (r runResult) ok() bool {
	if r.Receiver == "knockd" { // a comparison: its share unlocked is the result, not a check
		return r.Err == "" && r.SendErrors == 0
	}
	return r.Err == "" && r.Dropped == 0 && r.Got == r.Expected && r.SendErrors == 0 &&
		(r.Receiver == "sink" || r.Receiver == "knockd" || r.HookCount == r.Expected && r.LogUnlocks == r.Expected) &&
		(!writesFile(r.Receiver) || r.FileLines == r.Expected)
}

type benchOptions struct {
	kk, knockd, out, profile string
	clients, reps            int
	cases, styles, check     []string
	prequeue, prequeueStyles []string
	slow, maxOther           float64
	tries, nice              int
	keepLogs                 bool
}

func benchMain(args []string) {
	if len(args) > 0 && (args[0] == "sink-udp" || args[0] == "sink-raw") {
		benchSink(args[0], args[1:])
		return
	}
	if len(args) > 0 && args[0] == "perf-components" {
		perfComponents(os.Stdin, os.Stdout, 100000)
		return
	}
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	var o benchOptions
	var cases, styles, check string
	fs.StringVar(&o.kk, "knockknock", "", "knockknock binary (built fresh by scripts/bench.sh)")
	fs.StringVar(&o.knockd, "knockd", "", "knockd binary: adds the capture-knockd case (one run per launch style)")
	fs.StringVar(&o.out, "out", "bench-out", "directory for logs and results")
	fs.IntVar(&o.clients, "clients", 100000, "clients in the burst (3 knocks each, no gap)")
	fs.IntVar(&o.reps, "reps", 5, "runs of each case and launch style")
	fs.StringVar(&cases, "cases", "socket-sink,socket-noop,socket-allin,socket-reopen,capture-sink,capture-noop,capture-allin,capture-reopen", "cases to run")
	fs.StringVar(&styles, "styles", "plain,setsid", "launch styles: plain (the receiver in this process's session) and setsid (its own)")
	fs.StringVar(&check, "sender-check", "socket-sink,socket-noop", "cases run again with the sender slowed to -slow of its rate (empty: none)")
	fs.Float64Var(&o.slow, "slow", 0.8, "the slowed sender's pace, a fraction of its free rate")
	var prequeue, prequeueStyles string
	fs.StringVar(&prequeue, "prequeue", "socket-sink,socket-noop,socket-allin,capture-sink,capture-noop,capture-allin", "cases run again prequeued (empty: none)")
	fs.StringVar(&prequeueStyles, "prequeue-styles", "setsid", "launch styles of the prequeued runs")
	fs.IntVar(&o.tries, "tries", 3, "most tries of a run that other processes disturb")
	fs.IntVar(&o.nice, "nice", 0, "autogroup nice (-20..19) of this process's session and of each receiver's: on a shared machine, -20 keeps other sessions' work from taking the cores mid-run (0: leave it)")
	fs.Float64Var(&o.maxOther, "max-other", 0.5, "CPU seconds other processes may use during a run before it is repeated")
	fs.StringVar(&o.profile, "profile", "", "directory: record `perf record -g` of each knockknock case instead of measuring (one run)")
	fs.BoolVar(&o.keepLogs, "keep-logs", false, "keep each run's full logs (about 20 MB each)")
	fs.Parse(args)
	if o.kk == "" {
		fail(errors.New("-knockknock is required"))
	}
	o.cases, o.styles, o.check = splitList(cases), splitList(styles), splitList(check)
	o.prequeue, o.prequeueStyles = splitList(prequeue), splitList(prequeueStyles)
	if o.knockd != "" && !slices.Contains(o.cases, "capture-knockd") {
		o.cases = append(o.cases, "capture-knockd")
	}
	for _, s := range o.styles {
		if s != "plain" && s != "setsid" {
			fail(fmt.Errorf("unknown launch style %q", s))
		}
	}
	for _, c := range slices.Concat(o.cases, o.check, o.prequeue) {
		if _, ok := caseByID(c); !ok {
			fail(fmt.Errorf("unknown case %q", c))
		}
	}
	if err := os.MkdirAll(filepath.Join(o.out, "runs"), 0o755); err != nil {
		fail(err)
	}
	b := newBench(o)
	defer b.cleanup()
	if o.nice != 0 {
		b.oldNice = autogroupNice(os.Getpid())
		if err := setAutogroupNice(os.Getpid(), o.nice); err != nil {
			fail(err)
		}
	}
	go func() { // a Ctrl-C must not leave a receiver holding the ports
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		b.cleanup()
		os.Exit(1)
	}()
	if o.profile != "" {
		b.profileAll()
		return
	}
	b.runAll()
}

func splitList(s string) []string {
	var l []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			l = append(l, f)
		}
	}
	return l
}

func caseByID(id string) (receiverCase, bool) {
	for _, c := range receiverCases {
		if c.id == id {
			return c, true
		}
	}
	return receiverCase{}, false
}

type bench struct {
	o       benchOptions
	self    string
	snd     *burstSender
	softirq []int
	live    atomic.Pointer[exec.Cmd]
	results []runResult
	jsonl   *os.File
	oldNice int
}

func newBench(o benchOptions) *bench {
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	f, err := os.Create(filepath.Join(o.out, "runs.jsonl"))
	if err != nil {
		fail(err)
	}
	return &bench{o: o, self: self, snd: newBurstSender(o.clients), softirq: pidsNamed("ksoftirqd/"), jsonl: f}
}

// fail stops the benchmark: the receiver killed, the autogroup's nice put back.
func (b *bench) fail(err error) {
	b.cleanup()
	fail(err)
}

func (b *bench) cleanup() {
	if cmd := b.live.Load(); cmd != nil && cmd.Process != nil {
		cmd.Process.Kill()
	}
	if b.o.nice != 0 {
		setAutogroupNice(os.Getpid(), b.oldNice)
	}
}

func (b *bench) runAll() {
	fmt.Printf("burst: %d clients x %d knocks = %d datagrams, no gap, one sending socket; %d runs of each case and launch style\n",
		b.o.clients, len(benchPorts), b.o.clients*len(benchPorts), b.o.reps)
	start := time.Now()
	// Runs are interleaved (rep, launch style, case), so that a slow drift of the machine touches
	// every case alike.
	for rep := 1; rep <= b.o.reps; rep++ {
		for _, style := range b.o.styles {
			for _, id := range b.o.cases {
				c, _ := caseByID(id)
				if c.recv == "knockd" && rep > 1 {
					continue // one knockd run per launch style: it takes long and varies anyway
				}
				b.record(b.measure(c, style, rep, burstLoad))
			}
		}
		fmt.Fprintf(os.Stderr, "rep %d done after %.0f s\n", rep, time.Since(start).Seconds())
	}
	reps := min(3, b.o.reps)
	if len(b.o.check) > 0 && b.o.slow > 0 && b.o.slow < 1 {
		for rep := 1; rep <= reps; rep++ {
			for _, style := range b.o.styles {
				for _, id := range b.o.check {
					c, _ := caseByID(id)
					b.record(b.measure(c, style, rep, load{"slowed", b.o.slow}))
				}
			}
		}
		fmt.Fprintf(os.Stderr, "sender check done after %.0f s\n", time.Since(start).Seconds())
	}
	if len(b.o.prequeue) > 0 {
		for rep := 1; rep <= reps; rep++ {
			for _, style := range b.o.prequeueStyles {
				for _, id := range b.o.prequeue {
					c, _ := caseByID(id)
					b.record(b.measure(c, style, rep, load{"prequeued", 1}))
				}
			}
		}
		fmt.Fprintf(os.Stderr, "prequeued runs done after %.0f s\n", time.Since(start).Seconds())
	}
	b.jsonl.Close()
	sum := summarize(b.results)
	printSummary(os.Stdout, sum, b.results, b.o)
	writeSummary(filepath.Join(b.o.out, "summary.json"), sum)
	writePlotData(b.o.out, sum, b.o.styles, b.o.prequeueStyles)
	for _, r := range b.results {
		if !r.ok() {
			fmt.Println("FAILED: not every case received or unlocked everything (see above and runs.jsonl)")
			b.cleanup() // os.Exit skips the deferred one
			os.Exit(1)
		}
	}
}

func (b *bench) record(r runResult) {
	b.results = append(b.results, r)
	json.NewEncoder(b.jsonl).Encode(r)
	status := "ok"
	if !r.ok() {
		status = "FAILED " + r.Err
	}
	if r.Disturbed {
		status += " (disturbed)"
	}
	if r.Others != "" {
		status += "; others: " + r.Others
	}
	fmt.Fprintf(os.Stderr, "  %-14s %-6s %-9s rep %d: cpu %.3f s (user %.3f sys %.3f) send %.2f s %.0f/s lag %3.0f ms got %d/%d other %.2f s waits %.3f/%.3f s tries %d %s\n",
		r.Case, r.Style, r.Load, r.Rep, r.CPU, r.User, r.Sys, r.SendSecs, r.SendRate, r.Lag*1000, r.Got, r.Expected, r.Other, r.RecvWait, r.SendWait, r.Tries, status)
}

// measure runs one case, again while other processes disturb it (up to -tries times).
func (b *bench) measure(c receiverCase, style string, rep int, ld load) runResult {
	var r runResult
	for try := 1; try <= b.o.tries; try++ {
		gate := 20 * time.Second
		if b.o.nice < 0 {
			gate = 3 * time.Second // the receivers outweigh other sessions anyway
		}
		waitMachineQuiet(gate)
		r = b.runOnce(c, style, rep, ld)
		r.Tries = try
		if r.Err != "" || r.Other <= b.o.maxOther {
			return r
		}
		r.Disturbed = true
		time.Sleep(time.Second)
	}
	return r
}

// interval is the sender's pause per datagram for a slowed load: the free rate of the same case
// and launch style, measured in the burst runs, times pace.
func (b *bench) interval(c receiverCase, style string, ld load) time.Duration {
	if ld.name != "slowed" {
		return 0
	}
	pace := ld.pace
	var rates []float64
	for _, r := range b.results {
		if r.Case == c.id && r.Style == style && r.Load == "burst" && r.SendRate > 0 {
			rates = append(rates, r.SendRate)
		}
	}
	if len(rates) == 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / (median(rates) * pace))
}

func (b *bench) runDir(c receiverCase, style string, rep int, ld load) string {
	name := fmt.Sprintf("%s-%s-%s-%d", c.id, style, ld.name, rep)
	return filepath.Join(b.o.out, "runs", name)
}

// start launches the receiver of a case and waits until it listens.
func (b *bench) start(c receiverCase, style, dir string) (*exec.Cmd, error) {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var name string
	var args []string
	ready := ""
	switch c.recv {
	case "sink":
		name, args, ready = b.self, []string{"bench", "sink-udp", "-ports", portList()}, "sink: listening"
		if c.mode == "capture" {
			args[1] = "sink-raw"
		}
	case "knockd":
		conf := filepath.Join(dir, "knockd.conf")
		seq := make([]string, len(benchPorts))
		for i, p := range benchPorts {
			seq[i] = fmt.Sprintf("%d:udp", p)
		}
		os.WriteFile(conf, []byte(fmt.Sprintf("[options]\n\tLogFile = %s\n[bench]\n\tsequence    = %s\n\tseq_timeout = 5\n\tcommand     = echo %%IP%% >> %s\n",
			filepath.Join(dir, "knockd.events"), strings.Join(seq, ","), filepath.Join(dir, "unlocks"))), 0o644)
		name, args = b.o.knockd, []string{"-c", conf, "-i", "lo"}
	default:
		name = b.o.kk
		args = []string{"-p", portList(), "--hook", c.hook, "--log-format", c.format, "--timeout", "5s"}
		if writesFile(c.recv) {
			args = append(args, "--hook-arg", "out="+filepath.Join(dir, "unlocks"))
		}
		if c.mode == "capture" {
			args = append(args, "--capture")
		}
		ready = "msg=listening"
		if c.format == "json" {
			ready = `"msg":"listening"`
		}
	}
	stdout, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		return nil, err
	}
	stderr, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: style == "setsid"}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	stdout.Close()
	stderr.Close()
	b.live.Store(cmd)
	if b.o.nice != 0 && style == "setsid" {
		setAutogroupNice(cmd.Process.Pid, b.o.nice) // plain: it shares this process's autogroup
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if ready == "" {
			time.Sleep(time.Second) // knockd: no line to wait for
			break
		}
		if data, _ := os.ReadFile(filepath.Join(dir, "log")); bytes.Contains(data, []byte(ready)) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			data, _ := os.ReadFile(filepath.Join(dir, "log"))
			return nil, fmt.Errorf("%s did not start: %s", c.id, lastLines(data, 3))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd, nil
}

// snapshot is what is read before and after the burst.
type snapshot struct {
	utime, stime int64 // receiver, ticks
	runtime      int64 // receiver, ns
	wait         int64 // receiver, ns waiting for a CPU
	vol, invol   int64
	self         int64 // this process, ticks
	busy, steal  int64 // the machine, ticks
	softirqd     int64 // ksoftirqd threads, ticks
	drops        int64 // RcvbufErrors + InErrors + the receiver's socket drops + backlog drops
	procs        map[int]procCPU
}

// procCPU is one process's CPU so far, to name the other processes that ran during a run.
type procCPU struct {
	comm  string
	ticks int64
}

func allProcs() map[int]procCPU {
	m := map[int]procCPU{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
		if open < 0 || end < open {
			continue
		}
		// utime, stime, cutime, cstime: a child's CPU moves to its parent when it is reaped
		f := strings.Fields(string(data[end+1:]))
		var t int64
		for i := 11; i <= 14 && i < len(f); i++ {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			t += n
		}
		m[pid] = procCPU{string(data[open+1 : end]), t}
	}
	return m
}

// others sums the CPU of the processes other than skip between two snapshots (ticks, with what
// their reaped children used) and names those that used the most.
func others(before, after map[int]procCPU, skip ...int) (int64, string) {
	type use struct {
		name  string
		ticks int64
	}
	var uses []use
	var total int64
	for pid, a := range after {
		if slices.Contains(skip, pid) {
			continue
		}
		d := a.ticks - before[pid].ticks
		total += d
		if d >= 5 {
			uses = append(uses, use{fmt.Sprintf("%s[%d]", a.comm, pid), d})
		}
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].ticks > uses[j].ticks })
	var parts []string
	for _, u := range uses[:min(4, len(uses))] {
		parts = append(parts, fmt.Sprintf("%s %.2fs", u.name, float64(u.ticks)/userHZ))
	}
	return total, strings.Join(parts, ", ")
}

func (b *bench) snap(pid int, inodes map[uint64]bool) snapshot {
	var s snapshot
	s.utime, s.stime = procTicks(pid)
	s.runtime, s.wait = taskSchedstat(pid)
	s.vol, s.invol = ctxSwitches(pid)
	u, st := procTicks(os.Getpid())
	s.self = u + st
	s.busy, s.steal = machineTicks()
	for _, p := range b.softirq {
		u, st := procTicks(p)
		s.softirqd += u + st
	}
	_, sockDrops := socketQueues(inodes)
	s.drops = snmpDrops() + sockDrops + backlogDrops()
	s.procs = allProcs()
	return s
}

func (b *bench) runOnce(c receiverCase, style string, rep int, ld load) runResult {
	r := runResult{Case: c.id, Mode: c.mode, Receiver: c.recv, Style: style, Rep: rep, Load: ld.name, Pace: ld.pace}
	dir := b.runDir(c, style, rep, ld)
	cmd, err := b.start(c, style, dir)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	pid := cmd.Process.Pid
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			r.Err = "did not stop within 20 s of SIGTERM"
		}
		b.live.Store(nil)
	}
	ag, _ := os.ReadFile(fmt.Sprintf("/proc/%d/autogroup", pid))
	r.Autogroup = strings.Fields(string(ag) + " ?")[0]
	r.Nice = autogroupNice(pid)
	inodes := socketInodes(pid)
	if _, ok := waitIdle(pid, nil, 200*time.Millisecond, 20*time.Second); !ok {
		r.Err = "receiver not idle after its start"
	}
	runtime.GC()
	before := b.snap(pid, inodes)
	var sent sendStats
	var done idleSample
	ok := true
	if ld.name == "prequeued" {
		sent, done, ok = b.prequeued(pid, inodes, before)
	} else {
		sent = b.snd.send(0, b.o.clients, b.interval(c, style, ld))
		done, ok = waitIdle(pid, inodes, 200*time.Millisecond, 60*time.Second)
	}
	after := b.snap(pid, inodes)
	r.PeakRSS = peakRSS(pid)
	if !ok {
		r.Err = "receiver still busy 60 s after the burst"
	}
	stop()
	// The receiver's CPU up to where its quiet began (done), not to the later snapshot.
	r.User = float64(done.utime-before.utime) / userHZ
	r.Sys = float64(done.stime-before.stime) / userHZ
	r.CPU = r.User + r.Sys
	r.Runtime = float64(done.runtime-before.runtime) / 1e9
	if ld.name == "prequeued" {
		r.CPU = r.Runtime // 20 drains: ticks would add up 20 roundings; schedstat counts ns
	}
	r.Vol, r.Invol = after.vol-before.vol, after.invol-before.invol
	r.Datagrams, r.SendErrors, r.SendSecs, r.SendCPU = sent.datagrams, sent.errors, sent.seconds, sent.cpu
	r.SendRate = float64(sent.datagrams) / sent.seconds
	if ld.name != "prequeued" {
		r.Lag = max(0, done.at.Sub(sent.end).Seconds())
	}
	r.Softirqd = float64(after.softirqd-before.softirqd) / userHZ
	r.Steal = float64(after.steal-before.steal) / userHZ
	// Other processes, and the machine's busy time that no process was charged for (interrupts
	// on idle CPUs, such as the ones that wake a receiver; steal).
	other, names := others(before.procs, after.procs, append([]int{pid, os.Getpid()}, b.softirq...)...)
	r.Other, r.Others = float64(other)/userHZ, names
	r.Unattributed = float64((after.busy-before.busy)-(after.utime+after.stime-before.utime-before.stime)-(after.self-before.self)-(after.softirqd-before.softirqd)-other) / userHZ
	r.Dropped = after.drops - before.drops
	r.RecvWait = float64(after.wait-before.wait) / 1e9
	r.SendWait = sent.wait
	b.verify(&r, c, dir)
	return r
}

// verify reads what the receiver counted, and trims its logs.
func (b *bench) verify(r *runResult, c receiverCase, dir string) {
	logPath := filepath.Join(dir, "log")
	switch c.recv {
	case "sink":
		r.Expected = r.Datagrams
		var rep struct{ Datagrams int64 }
		data, _ := os.ReadFile(filepath.Join(dir, "stdout"))
		if err := json.Unmarshal(data, &rep); err != nil && r.Err == "" {
			r.Err = "no count from the sink"
		}
		r.Got = rep.Datagrams
	case "knockd":
		r.Expected = int64(b.o.clients)
		r.Got = countLines(filepath.Join(dir, "unlocks"))
	default:
		r.Expected = int64(b.o.clients)
		st := scanKnockknockLog(logPath, c.format)
		r.Got, r.Shed, r.HookCount, r.LogUnlocks = st.unlocks, st.shed, st.hook, st.logUnlocks
		if !st.stopped && r.Err == "" {
			r.Err = "no stopped line in the log"
		}
		if writesFile(c.recv) {
			r.FileLines = countLines(filepath.Join(dir, "unlocks"))
		}
	}
	if !b.o.keepLogs {
		trimFile(logPath, 4)
		os.Remove(filepath.Join(dir, "unlocks"))
	}
}

type kkLog struct {
	stopped                         bool
	unlocks, shed, hook, logUnlocks int64
}

func scanKnockknockLog(path, format string) kkLog {
	var st kkLog
	f, err := os.Open(path)
	if err != nil {
		return st
	}
	defer f.Close()
	unlockLine := []byte("msg=unlock ")
	if format == "json" {
		unlockLine = []byte(`"msg":"unlock"`)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.Contains(line, unlockLine):
			st.logUnlocks++
		case bytes.Contains(line, []byte("stopped")):
			if m := logFields(line, format); m["msg"] == "stopped" {
				st.stopped = true
				st.unlocks, _ = strconv.ParseInt(m["unlocks"], 10, 64)
				st.shed, _ = strconv.ParseInt(m["hook_events_shed"], 10, 64)
			}
		case bytes.Contains(line, []byte("bench hook")):
			if m := logFields(line, format); m["msg"] == "bench hook" {
				st.hook, _ = strconv.ParseInt(m["unlocks"], 10, 64)
			}
		}
	}
	return st
}

// logFields reads a log line's top-level fields as strings: slog's text (key=value, values
// quoted when they hold spaces) or JSON.
func logFields(line []byte, format string) map[string]string {
	m := map[string]string{}
	if format == "json" {
		var v map[string]any
		if json.Unmarshal(line, &v) == nil {
			for k, x := range v {
				switch x := x.(type) {
				case string:
					m[k] = x
				case float64:
					m[k] = strconv.FormatFloat(x, 'f', -1, 64)
				}
			}
		}
		return m
	}
	s := string(line)
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			break
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			if q, err := strconv.QuotedPrefix(s); err == nil {
				val, _ = strconv.Unquote(q)
				s = s[len(q):]
			}
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		m[key] = val
	}
	return m
}

// prequeued sends the burst slice by slice to the stopped receiver and lets it drain each
// slice. It returns the receiver's CPU as an idle sample: before plus the CPU of every drain,
// each counted from the SIGCONT to the quiet after it (the quiet itself is left out).
func (b *bench) prequeued(pid int, inodes map[uint64]bool, before snapshot) (sendStats, idleSample, bool) {
	var st sendStats
	acc := idleSample{utime: before.utime, stime: before.stime, runtime: before.runtime}
	for lo := 0; lo < b.o.clients; lo += prequeueSlice {
		syscall.Kill(pid, syscall.SIGSTOP)
		if !waitStopped(pid, 5*time.Second) {
			syscall.Kill(pid, syscall.SIGCONT)
			return st, acc, false
		}
		s := b.snd.send(lo, min(lo+prequeueSlice, b.o.clients), 0)
		st.datagrams += s.datagrams
		st.errors += s.errors
		st.seconds += s.seconds
		st.cpu += s.cpu
		st.wait += s.wait
		st.end = s.end
		u0, s0 := procTicks(pid)
		r0 := taskRuntime(pid)
		syscall.Kill(pid, syscall.SIGCONT)
		done, ok := waitIdle(pid, inodes, 150*time.Millisecond, 30*time.Second)
		if !ok {
			return st, acc, false
		}
		acc.utime += done.utime - u0
		acc.stime += done.stime - s0
		acc.runtime += done.runtime - r0
		acc.at = done.at
	}
	return st, acc, true
}

// waitStopped waits until every thread of the process is stopped (state T).
func waitStopped(pid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		stopped := true
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, t := range tasks {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
			if i := bytes.LastIndexByte(data, ')'); i < 0 || i+2 >= len(data) || data[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// profileAll records, for each knockknock case and launch style, one burst under perf, writes
// `perf report` of it, and measures nothing.
func (b *bench) profileAll() {
	os.MkdirAll(b.o.profile, 0o755)
	for _, style := range b.o.styles {
		for _, id := range b.o.cases {
			c, _ := caseByID(id)
			if c.recv == "knockd" {
				continue
			}
			dir := b.runDir(c, style, 0, burstLoad)
			cmd, err := b.start(c, style, dir)
			if err != nil {
				b.fail(err)
			}
			pid := cmd.Process.Pid
			waitIdle(pid, nil, 200*time.Millisecond, 20*time.Second)
			data := filepath.Join(b.o.profile, c.id+"-"+style+".perf.data")
			perf := exec.Command("perf", "record", "-F", strconv.Itoa(perfHz), "-g", "-p", strconv.Itoa(pid), "-o", data)
			perfLog, _ := os.Create(data + ".log")
			perf.Stdout, perf.Stderr = perfLog, perfLog
			if err := perf.Start(); err != nil {
				b.fail(fmt.Errorf("perf: %v", err))
			}
			time.Sleep(time.Second)
			sent := b.snd.send(0, b.o.clients, 0)
			waitIdle(pid, socketInodes(pid), 200*time.Millisecond, 60*time.Second)
			perf.Process.Signal(os.Interrupt)
			perf.Wait()
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			b.live.Store(nil)
			perfLog.Close()
			trimFile(filepath.Join(dir, "log"), 4)
			os.Remove(filepath.Join(dir, "unlocks"))
			fmt.Printf("%s %s: %d datagrams in %.2f s; perf data %s\n", c.id, style, sent.datagrams, sent.seconds, data)
		}
	}
}

const perfHz = 4999 // perf record's sampling rate: one sample per 200 µs of CPU

// perfComponents reads `perf script -F ip,sym` of a knockknock process and sorts its samples
// into the parts of the server they were taken in, by the frames on their stacks: the first rule
// that matches wins. Samples are taken at a fixed rate of CPU time, so shares are shares of CPU.
func perfComponents(in io.Reader, w io.Writer, unlocks int) {
	type rule struct {
		name string
		any  []string // the stack holds one of these frames...
		also []string // ...and, if given, one of these
	}
	rules := []rule{
		{"janitor (tracker sweep, timers)", []string{"main.(*tracker).sweep", "main.(*server).janitor"}, nil},
		{"GC (background workers)", []string{"runtime.gcBgMarkWorker"}, nil},
		{"unlock: log line (slog, buffered writes)", []string{"main.(*hookRuntime).dispatch"}, []string{"log/slog", "main.(*logWriter)"}},
		{"unlock: ev table for the hook", []string{"main.(*hookRuntime).eventTable"}, nil},
		{"unlock: hook timeout timer", []string{"main.(*hookRuntime).dispatch"}, []string{"main.(*callTimer)", "time.(*Timer)"}},
		{"unlock: Lua call (the hook itself)", []string{"main.(*hookRuntime).dispatch"}, []string{"gopher-lua"}},
		{"unlock: rest of dispatch", []string{"main.(*hookRuntime).dispatch"}, nil},
		{"hand-off: queue push and wake (knock side)", []string{"main.(*eventQueue).push"}, nil},
		{"hand-off: queue pop (hook side)", []string{"main.(*eventQueue).pop"}, nil},
		{"hook runtime: batches, waiting", []string{"main.(*hookRuntime).run", "main.(*hookRuntime).wait", "main.(*hookRuntime).handleBatch"}, nil},
		{"knock path: intake and tracker", []string{"main.(*udpSource).run", "main.(*rawSource).run"}, []string{"main.(*intake)", "main.(*tracker)", "main.parseControl", "main.keyOf", "main.parseTransport"}},
		{"read: recvmsg and parking the reader", []string{"main.(*udpSource).run", "main.(*rawSource).run"}, nil},
		{"log writer flush (its own goroutine)", []string{"main.(*logWriter)"}, nil},
		{"Go scheduler: sleeping, waking, netpoll, sysmon", []string{"runtime.schedule", "runtime.findRunnable", "runtime.netpoll", "runtime.stopm", "runtime.mPark", "runtime.sysmon", "runtime.mstart", "runtime.park_m", "runtime.wakep", "runtime.notewakeup"}, nil},
	}
	counts := make([]int, len(rules)+1)
	total := 0
	var stack []string
	classify := func() {
		if len(stack) == 0 {
			return
		}
		total++
		has := func(names []string) bool {
			for _, f := range stack {
				for _, n := range names {
					if strings.Contains(f, n) {
						return true
					}
				}
			}
			return false
		}
		for i, r := range rules {
			if has(r.any) && (r.also == nil || has(r.also)) {
				counts[i]++
				return
			}
		}
		counts[len(rules)]++
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			classify()
			stack = stack[:0]
			continue
		}
		if _, sym, ok := strings.Cut(line, " "); ok {
			stack = append(stack, sym)
		}
	}
	classify()
	if total == 0 {
		fmt.Fprintln(w, "no samples")
		return
	}
	order := make([]int, len(counts))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return counts[order[a]] > counts[order[b]] })
	for _, i := range order {
		name := "other"
		if i < len(rules) {
			name = rules[i].name
		}
		if counts[i] > 0 {
			secs := float64(counts[i]) / perfHz
			fmt.Fprintf(w, "  %5.1f %%  %6.3f s  %5.2f µs/unlock  %s\n", 100*float64(counts[i])/float64(total), secs, 1e6*secs/float64(unlocks), name)
		}
	}
	fmt.Fprintf(w, "  %d samples: %.3f s of CPU\n", total, float64(total)/perfHz)
}

// -----------------------------------------------------------------------------------------
// The sender

// burstSender sends the burst: client i's three knocks, back to back, from 127.1.0.1 + i, on
// one socket, each datagram's source chosen with IP_PKTINFO (as `loadgen send -gap 0` does).
type burstSender struct {
	conn *net.UDPConn
	oobs [][]byte
	dsts []netip.AddrPort
}

type sendStats struct {
	datagrams, errors int64
	seconds, cpu      float64
	wait              float64 // the sending thread's run-queue wait
	end               time.Time
}

func newBurstSender(clients int) *burstSender {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		fail(err)
	}
	conn.SetWriteBuffer(8 << 20)
	s := &burstSender{conn: conn}
	first := netip.MustParseAddr("127.1.0.1")
	for i := range clients {
		s.oobs = append(s.oobs, pktinfo(source(first, i)))
	}
	for _, p := range benchPorts {
		s.dsts = append(s.dsts, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p))
	}
	return s
}

// send sends clients [lo, hi) of the burst on a thread of its own, waiting interval between
// datagrams when it is not zero (a busy wait: the sender stays on its core either way).
func (s *burstSender) send(lo, hi int, interval time.Duration) sendStats {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	gc := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(gc)
	var st sendStats
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(1, &ru0) // RUSAGE_THREAD
	w0 := threadWait()
	start := time.Now()
	n := 0
	for _, oob := range s.oobs[lo:hi] {
		for _, dst := range s.dsts {
			if interval > 0 {
				for next := start.Add(time.Duration(n) * interval); time.Now().Before(next); {
				}
			}
			n++
			if _, _, err := s.conn.WriteMsgUDPAddrPort(nil, oob, dst); err != nil {
				st.errors++
				continue
			}
			st.datagrams++
		}
	}
	st.end = time.Now()
	syscall.Getrusage(1, &ru1)
	st.seconds = st.end.Sub(start).Seconds()
	st.cpu = tv(ru1.Utime) + tv(ru1.Stime) - tv(ru0.Utime) - tv(ru0.Stime)
	st.wait = float64(threadWait()-w0) / 1e9
	return st
}

// threadWait is the calling thread's run-queue wait so far (ns).
func threadWait() int64 {
	data, _ := os.ReadFile("/proc/thread-self/schedstat")
	if f := strings.Fields(string(data)); len(f) > 1 {
		n, _ := strconv.ParseInt(f[1], 10, 64)
		return n
	}
	return 0
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// -----------------------------------------------------------------------------------------
// The sinks: the floor. Each sets its sockets up as knockknock does (8 MiB buffers forced,
// kernel receive times, destination addresses), so that the kernel does the same work per
// datagram for both, and only counts what it reads, one datagram per system call.

func benchSink(kind string, args []string) {
	fs := flag.NewFlagSet(kind, flag.ExitOnError)
	portsFlag := fs.String("ports", portList(), "ports")
	fs.Parse(args)
	ports, err := parsePorts(*portsFlag)
	if err != nil {
		fail(err)
	}
	var counts []*paddedCount
	if kind == "sink-udp" {
		for _, p := range ports {
			// "udp" and no address: a dual-stack socket, as knockknock binds without --listen.
			conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(p)})
			if err != nil {
				fail(err)
			}
			rc, _ := conn.SyscallConn()
			tuneLikeServer(rc, syscall.AF_INET6, 8<<20)
			n := &paddedCount{}
			counts = append(counts, n)
			go func() {
				var buf [256]byte
				var oob [128]byte
				for {
					if _, _, _, _, err := conn.ReadMsgUDPAddrPort(buf[:], oob[:]); err != nil {
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue
					}
					n.n.Add(1)
				}
			}()
		}
	} else {
		n := &paddedCount{}
		counts = append(counts, n)
		rs, err := newRawSink(ports)
		if err != nil {
			fail(err)
		}
		go rs.run(n)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	fmt.Fprintln(os.Stderr, "sink: listening")
	<-sig
	var total int64
	for _, n := range counts {
		total += n.n.Load()
	}
	report(struct {
		Datagrams int64 `json:"datagrams"`
	}{total})
}

type paddedCount struct {
	n atomic.Int64
	_ [56]byte
}

// tuneLikeServer sets the receive options knockknock sets (tuneReceive): size is its
// receiveBuffer (8 MiB) for a UDP socket, its captureBuffer (32 MiB) for a raw one.
func tuneLikeServer(rc syscall.RawConn, family, size int) {
	rc.Control(func(fd uintptr) {
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 33, size) != nil { // SO_RCVBUFFORCE
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		}
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 35, 1) // SO_TIMESTAMPNS
		if family == syscall.AF_INET6 {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, 49, 1) // IPV6_RECVPKTINFO
		}
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1)
	})
}

// rawSink is an ip4:udp raw socket behind the filter knockknock attaches in capture mode
// (captureFilter for IPv4 UDP: first fragments to a watched port, 512 bytes kept), read with
// one recvmsg per packet as knockknock's capture reader does.
type rawSink struct {
	conn *net.IPConn
	rc   syscall.RawConn
	msg  syscall.Msghdr
	iov  syscall.Iovec
	name syscall.RawSockaddrAny
	buf  [2048]byte
	oob  [128]byte
	err  syscall.Errno
}

func newRawSink(ports []uint16) (*rawSink, error) {
	conn, err := net.ListenIP("ip4:udp", nil)
	if err != nil {
		return nil, err
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: uint8(len(ports)*2 + 4)},
		bpf.LoadMemShift{Off: 0},
		bpf.LoadConstant{Dst: bpf.RegA, Val: 0}, bpf.LoadConstant{Dst: bpf.RegA, Val: 0}, bpf.LoadConstant{Dst: bpf.RegA, Val: 0},
		bpf.LoadIndirect{Off: 2, Size: 2},
	}
	for _, p := range ports {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(p), SkipTrue: 1}, bpf.RetConstant{Val: 512})
	}
	prog = append(prog, bpf.RetConstant{Val: 0})
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	if err := ipv4.NewPacketConn(conn).SetBPF(raw); err != nil {
		return nil, err
	}
	tuneLikeServer(rc, syscall.AF_INET, 32<<20)
	s := &rawSink{conn: conn, rc: rc}
	s.iov.Base = &s.buf[0]
	s.iov.SetLen(len(s.buf))
	s.msg.Iov = &s.iov
	s.msg.Iovlen = 1
	rc.Read(func(fd uintptr) bool { // what was queued before the filter passed no filter
		for {
			_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)), syscall.MSG_DONTWAIT, 0, 0)
			if errno != 0 {
				return true
			}
		}
	})
	return s, nil
}

func (s *rawSink) read(fd uintptr) bool {
	s.msg.Name = (*byte)(unsafe.Pointer(&s.name))
	s.msg.Namelen = uint32(unsafe.Sizeof(s.name))
	s.msg.Control = &s.oob[0]
	s.msg.SetControllen(len(s.oob))
	_, _, errno := syscall.Syscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&s.msg)), 0)
	if errno == syscall.EAGAIN || errno == syscall.EINTR {
		return false
	}
	s.err = errno
	return true
}

func (s *rawSink) run(n *paddedCount) {
	read := s.read
	for {
		if err := s.rc.Read(read); err != nil {
			return
		}
		if s.err == 0 {
			n.n.Add(1)
		}
	}
}

// -----------------------------------------------------------------------------------------
// What /proc says

// autogroupNice reads the nice value of a process's autogroup ("/autogroup-N nice K").
func autogroupNice(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/autogroup", pid))
	f := strings.Fields(string(data))
	if len(f) == 3 {
		n, _ := strconv.Atoi(f[2])
		return n
	}
	return 0
}

// setAutogroupNice sets it: the weight of the process's whole session against other sessions.
func setAutogroupNice(pid, nice int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", pid), []byte(strconv.Itoa(nice)), 0)
}

func procTicks(pid int) (utime, stime int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3 (state): utime is field 14, stime 15
	if len(f) < 13 {
		return 0, 0
	}
	utime, _ = strconv.ParseInt(f[11], 10, 64)
	stime, _ = strconv.ParseInt(f[12], 10, 64)
	return utime, stime
}

// taskRuntime sums the threads' run time (schedstat, ns): finer than ticks, for idleness.
func taskRuntime(pid int) int64 {
	run, _ := taskSchedstat(pid)
	return run
}

// taskSchedstat sums the threads' run time and run-queue wait (ns): the time they were ready to
// run while the CPU ran something else.
func taskSchedstat(pid int) (run, wait int64) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(data)); len(f) > 1 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			w, _ := strconv.ParseInt(f[1], 10, 64)
			run, wait = run+n, wait+w
		}
	}
	return run, wait
}

func ctxSwitches(pid int) (vol, invol int64) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "voluntary_ctxt_switches":
				vol += n
			case "nonvoluntary_ctxt_switches":
				invol += n
			}
		}
	}
	return vol, invol
}

func peakRSS(pid int) int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// machineTicks is the machine's busy time and steal, in ticks: the time elapsed on all CPUs less
// idle and iowait from /proc/stat. The idle times are exact (the kernel keeps them when a CPU
// sleeps); the user and system columns are sampled at each tick, and miss a task that runs
// briefly between ticks many times a second, as a receiver does.
func machineTicks() (busy, steal int64) {
	data, _ := os.ReadFile("/proc/stat")
	now := time.Now()
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	var idle int64
	for i := 4; i < len(f) && i <= 8; i++ {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		switch i {
		case 4, 5:
			idle += n
		case 8:
			steal = n
		}
	}
	return now.UnixNano()/(1e9/userHZ)*int64(runtime.NumCPU()) - idle, steal
}

func pidsNamed(prefix string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.HasPrefix(string(comm), prefix) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func socketInodes(pid int) map[uint64]bool {
	inodes := map[uint64]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if s, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				inodes[n] = true
			}
		}
	}
	return inodes
}

// socketQueues sums the receive queues (bytes) and drop counters of the sockets with these
// inodes, from /proc/net/{udp,udp6,raw,raw6}.
func socketQueues(inodes map[uint64]bool) (rxq, drops int64) {
	for _, table := range []string{"udp", "udp6", "raw", "raw6"} {
		data, _ := os.ReadFile("/proc/net/" + table)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 13 {
				continue
			}
			inode, _ := strconv.ParseUint(f[9], 10, 64)
			if !inodes[inode] {
				continue
			}
			if _, q, ok := strings.Cut(f[4], ":"); ok {
				n, _ := strconv.ParseInt(q, 16, 64)
				rxq += n
			}
			d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			drops += d
		}
	}
	return rxq, drops
}

// snmpDrops is UDP's RcvbufErrors + InErrors (IPv4 and IPv6) since boot.
func snmpDrops() int64 {
	var total int64
	for _, file := range []string{"/proc/net/snmp", "/proc/net/snmp6"} {
		data, _ := os.ReadFile(file)
		lines := strings.Split(string(data), "\n")
		for i, line := range lines {
			f := strings.Fields(line)
			if file == "/proc/net/snmp6" {
				if len(f) == 2 && (f[0] == "Udp6RcvbufErrors" || f[0] == "Udp6InErrors") {
					n, _ := strconv.ParseInt(f[1], 10, 64)
					total += n
				}
				continue
			}
			if len(f) > 0 && f[0] == "Udp:" && i+1 < len(lines) && !strings.ContainsAny(lines[i+1], "abcdefghijklmnopqrstuvwxyz") {
				vals := strings.Fields(lines[i+1])
				for j, name := range f {
					if (name == "RcvbufErrors" || name == "InErrors") && j < len(vals) {
						n, _ := strconv.ParseInt(vals[j], 10, 64)
						total += n
					}
				}
			}
		}
	}
	return total
}

// backlogDrops is the packets the kernel dropped from full per-CPU backlogs (the loopback path).
func backlogDrops() int64 {
	data, _ := os.ReadFile("/proc/net/softnet_stat")
	var total int64
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			n, _ := strconv.ParseInt(f[1], 16, 64)
			total += n
		}
	}
	return total
}

// idleSample is the receiver seen at one moment by waitIdle.
type idleSample struct {
	at           time.Time
	runtime      int64 // ns, all threads
	utime, stime int64 // ticks
	rxq          int64 // bytes queued on its sockets
}

// waitIdle waits until the receiver has been idle for quiet: its sockets empty and its threads
// running less than a tenth of one core (knockknock's janitor and log flusher wake it a few times
// a second even when there is nothing to do). It returns the sample where that quiet began: the
// receiver's CPU when it was done with the burst.
func waitIdle(pid int, inodes map[uint64]bool, quiet, limit time.Duration) (idleSample, bool) {
	const tick = 10 * time.Millisecond
	sample := func() idleSample {
		s := idleSample{at: time.Now(), runtime: taskRuntime(pid)}
		s.utime, s.stime = procTicks(pid)
		if inodes != nil {
			s.rxq, _ = socketQueues(inodes)
		}
		return s
	}
	samples := []idleSample{sample()}
	deadline := samples[0].at.Add(limit)
	for time.Now().Before(deadline) {
		time.Sleep(tick)
		now := sample()
		samples = append(samples, now)
		if now.rxq > 0 {
			samples = samples[len(samples)-1:] // the quiet starts again, from here at the earliest
			continue
		}
		first := 0
		for first < len(samples)-1 && now.at.Sub(samples[first+1].at) >= quiet {
			first++
		}
		start := samples[first]
		if now.at.Sub(start.at) >= quiet && now.runtime-start.runtime < int64(quiet)/10 {
			return start, true
		}
		samples = samples[first:]
	}
	return sample(), false
}

// waitMachineQuiet waits, up to limit, until the machine has been nearly idle (under 5 % of its
// CPUs busy) for a second: other engineers build and run tests here.
func waitMachineQuiet(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	quietSince := time.Time{}
	busy0, _ := machineTicks()
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		busy1, _ := machineTicks()
		if float64(busy1-busy0)/userHZ < 0.05*0.25*float64(runtime.NumCPU()) {
			if quietSince.IsZero() {
				quietSince = time.Now()
			}
			if time.Since(quietSince) >= time.Second {
				return true
			}
		} else {
			quietSince = time.Time{}
		}
		busy0 = busy1
	}
	return false
}

// -----------------------------------------------------------------------------------------
// Files

func portList() string {
	s := make([]string, len(benchPorts))
	for i, p := range benchPorts {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

func countLines(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	var n int64
	buf := make([]byte, 1<<16)
	for {
		k, err := f.Read(buf)
		n += int64(bytes.Count(buf[:k], []byte{'\n'}))
		if err != nil {
			return n
		}
	}
}

func lastLines(data []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// trimFile keeps a file's first and last n lines.
func trimFile(path string, n int) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	info, _ := f.Stat()
	if info.Size() < 1<<16 {
		f.Close()
		return
	}
	head := make([]byte, 8<<10)
	k, _ := io.ReadFull(f, head)
	tail := make([]byte, 16<<10)
	m, _ := f.ReadAt(tail, max(0, info.Size()-int64(len(tail))))
	f.Close()
	hl := strings.SplitAfter(string(head[:k]), "\n")
	tl := strings.SplitAfter(string(tail[:m]), "\n")
	out := strings.Join(hl[:min(n, len(hl))], "") + "[... trimmed by loadgen bench ...]\n" + strings.Join(tl[max(1, len(tl)-n-1):], "")
	os.WriteFile(path, []byte(out), 0o644)
}

// -----------------------------------------------------------------------------------------
// Summary

type caseSummary struct {
	Case, Mode, Receiver, Style, Load string
	Runs                              int
	CPU, CPUMin, CPUMax               float64 // receiver CPU seconds: median, min, max
	User, Sys                         float64 // medians
	Ratio, RatioMin, RatioMax         float64 // to the same rep's sink of the same mode, launch style and load
	PerDatagram                       float64 // µs of receiver CPU per datagram
	PerUnlockOver                     float64 // µs per unlock above the sink
	WakePerK                          float64 // voluntary switches per 1,000 datagrams
	PeakRSS                           int64   // KiB, largest
	Unlocked                          string  // got/expected, worst run
	AllOK                             bool
	SendRate, SendCPU, Lag            float64 // medians
	Busy                              float64 // receiver CPU / (send time + lag): cores used, median
	Other                             float64 // largest
	RecvWait, SendWait                float64 // medians, seconds
	Unattributed                      float64 // median, seconds
	Disturbed                         int
}

func summarize(results []runResult) []caseSummary {
	type key struct{ c, s, l string }
	groups := map[key][]runResult{}
	var order []key
	for _, r := range results {
		k := key{r.Case, r.Style, r.Load}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	sinkOf := func(r runResult) (runResult, bool) {
		for _, s := range groups[key{r.Mode + "-sink", r.Style, r.Load}] {
			if s.Rep == r.Rep {
				return s, true
			}
		}
		return runResult{}, false
	}
	var out []caseSummary
	for _, k := range order {
		rs := groups[k]
		s := caseSummary{Case: k.c, Mode: rs[0].Mode, Receiver: rs[0].Receiver, Style: k.s, Load: k.l, Runs: len(rs), AllOK: true}
		var cpu, user, sys, ratio, wake, rate, scpu, lag, busy, rw, sw, un []float64
		worst := rs[0]
		for _, r := range rs {
			cpu, user, sys = append(cpu, r.CPU), append(user, r.User), append(sys, r.Sys)
			wake = append(wake, 1000*float64(r.Vol)/float64(max(r.Datagrams, 1)))
			rate, scpu, lag = append(rate, r.SendRate), append(scpu, r.SendCPU), append(lag, r.Lag)
			busy = append(busy, r.CPU/(r.SendSecs+r.Lag))
			rw, sw = append(rw, r.RecvWait), append(sw, r.SendWait)
			un = append(un, r.Unattributed)
			if sk, ok := sinkOf(r); ok && sk.CPU > 0 {
				ratio = append(ratio, r.CPU/sk.CPU)
			}
			s.PeakRSS = max(s.PeakRSS, r.PeakRSS)
			s.Other = max(s.Other, r.Other)
			if r.Disturbed {
				s.Disturbed++
			}
			if !r.ok() {
				s.AllOK = false
			}
			if r.Got-r.Expected < worst.Got-worst.Expected {
				worst = r
			}
		}
		s.CPU, s.CPUMin, s.CPUMax = median(cpu), slices.Min(cpu), slices.Max(cpu)
		s.User, s.Sys = median(user), median(sys)
		if len(ratio) > 0 {
			s.Ratio, s.RatioMin, s.RatioMax = median(ratio), slices.Min(ratio), slices.Max(ratio)
		}
		s.PerDatagram = 1e6 * s.CPU / float64(max(rs[0].Datagrams, 1))
		s.WakePerK = median(wake)
		s.SendRate, s.SendCPU, s.Lag, s.Busy = median(rate), median(scpu), median(lag), median(busy)
		s.RecvWait, s.SendWait, s.Unattributed = median(rw), median(sw), median(un)
		s.Unlocked = fmt.Sprintf("%d/%d", worst.Got, worst.Expected)
		out = append(out, s)
	}
	// µs per unlock above the sink: (median CPU - the sink's median CPU) / clients.
	for i := range out {
		if out[i].Receiver == "sink" {
			continue
		}
		if sk, ok := findSummary(out, out[i].Mode+"-sink", out[i].Style, out[i].Load); ok {
			clients := float64(groups[key{out[i].Case, out[i].Style, out[i].Load}][0].Expected)
			out[i].PerUnlockOver = 1e6 * (out[i].CPU - sk.CPU) / clients
		}
	}
	return out
}

func findSummary(sum []caseSummary, id, style, load string) (caseSummary, bool) {
	for _, s := range sum {
		if s.Case == id && s.Style == style && s.Load == load {
			return s, true
		}
	}
	return caseSummary{}, false
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64{}, v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printSummary(w io.Writer, sum []caseSummary, results []runResult, o benchOptions) {
	cpuTable := func(load, title string) {
		var rows []caseSummary
		for _, s := range sum {
			if s.Load == load {
				rows = append(rows, s)
			}
		}
		if len(rows) == 0 {
			return
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "mode\treceiver\tlaunch\truns\tCPU s\t[min-max]\tuser\tsys\tx sink\t[min-max]\tµs/datagram\t+µs/unlock\twakeups/1k datagrams\tpeak RSS MiB\tunlocked\t")
		for _, s := range rows {
			ratio, rr, over := "1", "", ""
			if s.Receiver != "sink" {
				ratio, rr, over = fmt.Sprintf("%.2f", s.Ratio), fmt.Sprintf("[%.2f-%.2f]", s.RatioMin, s.RatioMax), fmt.Sprintf("%.1f", s.PerUnlockOver)
			}
			ok := ""
			if !s.AllOK {
				ok = " FAILED"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.3f\t[%.3f-%.3f]\t%.2f\t%.2f\t%s\t%s\t%.2f\t%s\t%.0f\t%.1f\t%s%s\t\n",
				s.Mode, s.Receiver, s.Style, s.Runs, s.CPU, s.CPUMin, s.CPUMax, s.User, s.Sys, ratio, rr, s.PerDatagram, over, s.WakePerK, float64(s.PeakRSS)/1024, s.Unlocked, ok)
		}
		tw.Flush()
	}
	cpuTable("burst", fmt.Sprintf("Burst (%d clients, %d datagrams, no gap): receiver CPU (user + system, /proc/PID/stat), median [min-max];\n"+
		"x sink: the ratio to the sink of the same mode and launch style in the same rep, median [min-max].", o.clients, 3*o.clients))
	cpuTable("prequeued", fmt.Sprintf("Prequeued (the receiver stopped while each slice of %d clients is sent, then let go to drain it):\n"+
		"its CPU with no wake-ups, from schedstat (ns).", prequeueSlice))

	fmt.Fprintln(w)
	fmt.Fprintln(w, "The sender (this process, one thread) and the receiver, medians: 'waited' is run-queue wait (ready, CPU taken), 'receiver cores'")
	fmt.Fprintln(w, "its CPU over the send time plus lag, 'lag' from the last datagram sent to the receiver idle, 'kernel' busy time charged to no")
	fmt.Fprintln(w, "process (interrupts on idle CPUs: wake-ups; steal); 'other' is the most CPU other processes used in one run:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\treceiver\tlaunch\tload\tsend s\tdatagrams/s\tsender CPU s\tsender waited s\treceiver cores\treceiver waited s\tlag ms\tkernel s\tother s\tdisturbed\t")
	for _, s := range sum {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%.0f\t%.2f\t%.3f\t%.2f\t%.3f\t%.0f\t%.2f\t%.2f\t%d\t\n",
			s.Mode, s.Receiver, s.Style, s.Load, 3*float64(o.clients)/s.SendRate, s.SendRate, s.SendCPU, s.SendWait, s.Busy, s.RecvWait, s.Lag*1000, s.Unattributed, s.Other, s.Disturbed)
	}
	tw.Flush()
	var slowed []caseSummary
	for _, s := range sum {
		if s.Load == "slowed" {
			slowed = append(slowed, s)
		}
	}
	if len(slowed) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Sender check: the same burst with the sender held to %.0f %% of its free rate (busy-waiting between datagrams):\n", o.slow*100)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "mode\treceiver\tlaunch\tCPU s free\tCPU s slowed\tchange\twakeups/1k free\twakeups/1k slowed\tx sink free\tx sink slowed\t")
		for _, s := range slowed {
			if f, ok := findSummary(sum, s.Case, s.Style, "burst"); ok {
				rf, rs := "-", "-"
				if s.Receiver != "sink" {
					rf, rs = fmt.Sprintf("%.2f", f.Ratio), fmt.Sprintf("%.2f", s.Ratio)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%.3f\t%+.1f%%\t%.0f\t%.0f\t%s\t%s\t\n", s.Mode, s.Receiver, s.Style, f.CPU, s.CPU, 100*(s.CPU/f.CPU-1), f.WakePerK, s.WakePerK, rf, rs)
			}
		}
		tw.Flush()
	}
	var dropped int64
	for _, r := range results {
		dropped += r.Dropped
	}
	fmt.Fprintf(w, "\nDatagrams dropped in all %d runs (UDP RcvbufErrors and InErrors, the receivers' socket drop counters, backlog drops): %d\n", len(results), dropped)
}

func writeSummary(path string, sum []caseSummary) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	enc.Encode(sum)
}

// writePlotData writes cpu.dat for gnuplot: one row per case, and for each launch style of the
// burst, then the prequeued runs, the median CPU, its min and max, and the ratio to the sink.
func writePlotData(out string, sum []caseSummary, styles, preStyles []string) {
	type col struct{ style, load string }
	var cols []col
	for _, st := range styles {
		cols = append(cols, col{st, "burst"})
	}
	for _, st := range preStyles {
		cols = append(cols, col{st, "prequeued"})
	}
	var b strings.Builder
	b.WriteString("# titles:") // scripts/bench.sh reads the key's titles from this line
	for _, c := range cols {
		fmt.Fprintf(&b, " %s/%s", c.load, c.style)
	}
	b.WriteString("\n")
	for _, c := range receiverCases {
		row := c.mode + "/" + c.recv
		found := false
		for _, cl := range cols {
			cell := " NaN NaN NaN NaN"
			if s, ok := findSummary(sum, c.id, cl.style, cl.load); ok {
				r := s.Ratio
				if s.Receiver == "sink" {
					r = 1
				}
				cell, found = fmt.Sprintf(" %.3f %.3f %.3f %.2f", s.CPU, s.CPUMin, s.CPUMax, r), true
			}
			row += cell
		}
		if found {
			b.WriteString(row + "\n")
		}
	}
	os.WriteFile(filepath.Join(out, "cpu.dat"), []byte(b.String()), 0o644)
}
