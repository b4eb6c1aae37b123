package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The firewall hooks, for real: two network namespaces joined by a veth pair, addresses from the
// documentation ranges, nothing leaves them. knockknock's own HTTP service runs in "srv" on port
// 2222 and the hook under test guards it; in "cli", a client knocks from 192.0.2.2 and
// 2001:db8::2, and a stranger (192.0.2.3, 2001:db8::3) never knocks. Every claim is a connection
// from "cli": the door is closed once the hook is up, opens after a knock for the access time and
// no longer (a second knock starts it again), stays open across a reload, is closed to everyone
// after a clean stop, and after kill -9 once the grant has expired by itself, stays closed when a
// start fails (the server exits 1), and never lets the stranger in across crash-restart cycles.
// The commands each hook's header gives to open the port on purpose are run last.

const (
	srvV4, cliV4           = "192.0.2.1", "192.0.2.2"
	srvV6, cliV6           = "2001:db8::1", "2001:db8::2"
	strangerV4, strangerV6 = "192.0.2.3", "2001:db8::3"
	protected              = 2222
	accessSeconds          = 2
	fwKnockPorts           = "7001,7003,7002"
	crashCycles            = 8
)

type netnsPair struct{ srv, cli string }

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: %s is not installed", tool)
		}
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newNetnsPair(t *testing.T) netnsPair {
	t.Helper()
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	n := netnsPair{srv: "kk-srv-" + id, cli: "kk-cli-" + id}
	exec.Command("ip", "netns", "del", n.srv).Run()
	exec.Command("ip", "netns", "del", n.cli).Run()
	sh(t, "ip", "netns", "add", n.srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.srv).Run() })
	sh(t, "ip", "netns", "add", n.cli)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.cli).Run() })
	vs, vc := "kks"+id, "kkc"+id
	sh(t, "ip", "link", "add", vs, "netns", n.srv, "type", "veth", "peer", "name", vc, "netns", n.cli)
	for _, side := range []struct{ ns, dev, v4, v6 string }{{n.srv, vs, srvV4, srvV6}, {n.cli, vc, cliV4, cliV6}} {
		sh(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
		sh(t, "ip", "-n", side.ns, "addr", "add", side.v4+"/24", "dev", side.dev)
		sh(t, "ip", "-n", side.ns, "-6", "addr", "add", side.v6+"/64", "dev", side.dev, "nodad")
		sh(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
	}
	return n
}

// addStranger gives the client side the addresses that never knock: a secondary IPv4 address and
// a deprecated IPv6 one, so that neither is ever chosen as the source of the knocks.
func (n netnsPair) addStranger(t *testing.T) {
	t.Helper()
	dev := "kkc" + strings.TrimPrefix(n.cli, "kk-cli-")
	sh(t, "ip", "-n", n.cli, "addr", "add", strangerV4+"/24", "dev", dev)
	sh(t, "ip", "-n", n.cli, "-6", "addr", "add", strangerV6+"/64", "dev", dev, "nodad", "preferred_lft", "0")
}

// in runs a command in a namespace.
func (n netnsPair) in(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// kk runs knockknock in a namespace. A binary built with -race sleeps a second as it exits
// unless told not to: a knock would then take longer than some of the access times here.
func (n netnsPair) kk(ns string, args ...string) *exec.Cmd {
	cmd := n.in(ns, append([]string{binPath}, args...)...)
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// connects reports whether a TCP connection from the client namespace to addr gets an answer.
func (n netnsPair) connects(t *testing.T, addr string) bool {
	t.Helper()
	return n.connectsFrom(t, "", addr)
}

// connectsFrom is connects from a given source address ("" for the default one). A dropped SYN
// costs the connect timeout; once connected, a loaded machine has seconds to answer.
func (n netnsPair) connectsFrom(t *testing.T, from, addr string) bool {
	t.Helper()
	host := addr
	if strings.Contains(addr, ":") {
		host = "[" + addr + "]"
	}
	args := []string{"curl", "-s", "--connect-timeout", "0.5", "--max-time", "5"}
	if from != "" {
		args = append(args, "--interface", from)
	}
	cmd := n.in(n.cli, append(args, fmt.Sprintf("http://%s:%d/", host, protected))...)
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "Hello")
}

// startIn starts a knockknock server through cmd (an ip netns exec command line), waits until it
// is ready (startReady), and checks that its hook reported no error and that the log has each of
// logged: what the hook's on_start logs, which is written before the server is ready.
func startIn(t *testing.T, cmd *exec.Cmd, logged ...string) *proc {
	t.Helper()
	p := startReady(t, cmd)
	if strings.Contains(p.stderr.String(), "hook_error") {
		t.Fatalf("hook failed: %s", p.stderr.String())
	}
	for _, want := range logged {
		if !strings.Contains(p.stderr.String(), want) {
			t.Fatalf("ready, but the log does not say %q:\n%s", want, p.stderr.String())
		}
	}
	return p
}

// firewallHook is a shipped firewall hook, as the tests see it.
type firewallHook struct {
	path   string
	bad    string                           // a --hook-arg with which on_start cannot close the door
	grants func(n netnsPair, ip string) int // the hook's entries for ip, read from the kernel
	remove [][]string                       // the hook header's commands to open the port on purpose
}

func TestNetnsNftablesHook(t *testing.T) {
	needTools(t, "ip", "nft", "curl")
	testFirewallHook(t, firewallHook{
		path: "hooks/nftables.lua",
		bad:  "nft=/nonexistent/nft",
		grants: func(n netnsPair, ip string) int {
			set := "allowed4"
			if strings.Contains(ip, ":") {
				set = "allowed6"
			}
			out, _ := n.in(n.srv, "nft", "list", "set", "inet", "knockknock", set).CombinedOutput()
			return strings.Count(string(out), " "+ip+" timeout")
		},
		remove: [][]string{{"nft", "delete", "table", "inet", "knockknock"}},
	})
}

func TestNetnsIptablesHook(t *testing.T) {
	needTools(t, "ip", "iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "curl")
	var remove [][]string
	for _, tool := range []string{"iptables", "ip6tables"} {
		remove = append(remove,
			[]string{tool, "-D", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(protected), "-m", "conntrack", "--ctstate", "NEW", "-j", "knockknock"},
			[]string{tool, "-F", "knockknock"}, []string{tool, "-X", "knockknock"})
	}
	testFirewallHook(t, firewallHook{
		path: "hooks/iptables.lua",
		bad:  "iptables=/nonexistent/iptables",
		grants: func(n netnsPair, ip string) int {
			// Entries stay in a recent table after they expire (they no longer match): this
			// counts entries, and the connections tell whether they still admit anyone.
			out, _ := n.in(n.srv, "sh", "-c", "cat /proc/net/xt_recent/knockknock-*").CombinedOutput()
			return strings.Count(string(out), "src="+netip.MustParseAddr(ip).StringExpanded()+" ")
		},
		remove: remove,
	})
}

func testFirewallHook(t *testing.T, h firewallHook) {
	began := time.Now()
	n := newNetnsPair(t)
	n.addStranger(t)
	// The protected service: knockknock's own HTTP service, started by a tiny hook.
	svcHook := t.TempDir() + "/service.lua"
	os.WriteFile(svcHook, []byte(fmt.Sprintf("function on_unlock(ev) end\nfunction on_start() assert(knock.serve{port=%d, proto=\"tcp\"}) end\n", protected)), 0o644)
	startIn(t, n.kk(n.srv, "-p", "3001", "--hook", svcHook), "service started")
	for _, addr := range []string{srvV4, srvV6} {
		if !n.connects(t, addr) {
			t.Fatalf("the service on %s is not reachable without the firewall hook", addr)
		}
	}
	// The prober gets through when nothing stops it: its zero below means something.
	if _, through := n.probe(t, 300*time.Millisecond); through == 0 {
		t.Fatal("the prober did not get through to the open port")
	}

	start := func(seconds int) *proc {
		return startIn(t, n.kk(n.srv, "-p", fwKnockPorts, "--hook", h.path,
			"--hook-arg", fmt.Sprintf("port=%d", protected), "--hook-arg", fmt.Sprintf("seconds=%d", seconds)), "port closed")
	}
	knock := func(family, srv string) time.Time {
		t.Helper()
		at := time.Now()
		if out, err := n.kk(n.cli, "knock", family, "-p", fwKnockPorts, srv).CombinedOutput(); err != nil {
			t.Fatalf("knock: %v %s", err, out)
		}
		return at
	}
	reachable := func(srv string, kk *proc) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !n.connects(t, srv) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: port %d not reachable after the knock\n%s", srv, protected, kk.stderr.String())
			}
		}
	}
	closedToAll := func(when string) { // the client and the stranger, IPv4 and IPv6, at once
		t.Helper()
		pairs := []struct{ from, srv string }{{"", srvV4}, {"", srvV6}, {strangerV4, srvV4}, {strangerV6, srvV6}}
		open := make([]bool, len(pairs))
		var wg sync.WaitGroup
		for i, c := range pairs {
			wg.Go(func() { open[i] = n.connectsFrom(t, c.from, c.srv) })
		}
		wg.Wait()
		for i, c := range pairs {
			if open[i] {
				t.Fatalf("%s: port %d on %s reachable from %q", when, protected, c.srv, c.from)
			}
		}
	}
	sleepUntil := func(at time.Time) { time.Sleep(time.Until(at)) }
	access := time.Duration(accessSeconds) * time.Second
	// Times are taken once a grant is seen to work (the connection, or the hook's line): the
	// grant was made by then, so it surely ends access later. A time taken before the knock
	// would miss the knock client's start and the hook's command, seconds on a busy machine.

	// Up: closed to everyone; a knock opens it for that client, for the access time.
	kk := start(accessSeconds)
	closedToAll("hook up, no knock yet")
	knock("-4", srvV4)
	reachable(srvV4, kk)
	t0 := time.Now()
	if n.connectsFrom(t, strangerV4, srvV4) {
		t.Fatal("the client's knock let the stranger in")
	}
	// A second knock starts the access time again, and is still one grant.
	sleepUntil(t0.Add(access * 6 / 10))
	t1knock := knock("-4", srvV4) // the second grant is made after this
	waitFor(t, "the second grant", func() bool { return flushedAfter(kk.stderr.String(), cliV4, 2) })
	t1 := time.Now()
	if g := h.grants(n, cliV4); g != 1 {
		t.Fatalf("%d grants for %s after two knocks, want 1", g, cliV4)
	}
	// A reload keeps the rules and the grant: the port is never open to all in between, and the
	// client keeps its access until it expires.
	kk.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { return strings.Contains(kk.stderr.String(), `msg="hook reloaded"`) })
	if !n.connects(t, srvV4) {
		t.Fatalf("the client lost its access at the reload\n%s", kk.stderr.String())
	}
	if n.connectsFrom(t, strangerV4, srvV4) {
		t.Fatal("the stranger got in after the reload")
	}
	// The first grant has ended; the second holds until t1knock+access at the earliest. A check
	// that comes later than that (a busy machine) can tell nothing.
	sleepUntil(t0.Add(access + 400*time.Millisecond))
	if time.Until(t1knock.Add(access)) < 300*time.Millisecond {
		t.Logf("not checked: the second grant lasts till %v at the earliest, and it is too late", t1knock.Add(access).Format(time.StampMilli))
	} else if !n.connects(t, srvV4) {
		t.Fatal("the second knock did not start the access time again")
	}
	sleepUntil(t1.Add(access + 500*time.Millisecond))
	if n.connects(t, srvV4) {
		t.Fatalf("%s: port %d still reachable after the access time", srvV4, protected)
	}
	knock("-6", srvV6)
	reachable(srvV6, kk)
	t2 := time.Now()
	if n.connectsFrom(t, strangerV6, srvV6) {
		t.Fatal("the client's knock let the IPv6 stranger in")
	}
	sleepUntil(t2.Add(access + 500*time.Millisecond))
	if n.connects(t, srvV6) {
		t.Fatalf("%s: port %d still reachable after the access time", srvV6, protected)
	}

	if code := kk.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, kk.stderr.String())
	}

	// A clean stop ends the grants that are running (here for 60 s) and leaves the door closed
	// to everyone.
	kk = start(60)
	knock("-4", srvV4)
	reachable(srvV4, kk)
	knock("-6", srvV6)
	reachable(srvV6, kk)
	if code := kk.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, kk.stderr.String())
	}
	if g4, g6 := h.grants(n, cliV4), h.grants(n, cliV6); g4+g6 != 0 {
		t.Fatalf("after SIGTERM: %d grants for %s, %d for %s", g4, cliV4, g6, cliV6)
	}
	closedToAll("after SIGTERM")

	// kill -9: nothing runs on_stop, and the grant expires by itself.
	kk = start(accessSeconds)
	knock("-4", srvV4)
	reachable(srvV4, kk)
	t3 := time.Now()
	kk.stopWith(t, syscall.SIGKILL)
	if n.connectsFrom(t, strangerV4, srvV4) {
		t.Fatal("after kill -9 the stranger got in")
	}
	for {
		at := time.Now()
		if !n.connects(t, srvV4) {
			break
		}
		if at.Sub(t3) > access+time.Second {
			t.Fatalf("after kill -9 the grant was still open %v after the client got in", at.Sub(t3).Round(time.Millisecond))
		}
	}
	t.Logf("after kill -9 the grant ended %v after the client got in (access time %v)", time.Since(t3).Round(10*time.Millisecond), access)
	closedToAll("after kill -9, once the grant expired")

	// A start whose on_start cannot close the door: exit 1 with one line that says so, and the
	// rules the killed server left stay in place.
	failed := launch(t, n.kk(n.srv, "-p", fwKnockPorts, "--hook", h.path, "--hook-arg", fmt.Sprintf("port=%d", protected), "--hook-arg", h.bad))
	select {
	case <-failed.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("with --hook-arg %s the server is still running", h.bad)
	}
	out := failed.stderr.String()
	if code := failed.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("with --hook-arg %s: exit %d, want 1\n%s", h.bad, code, out)
	}
	var doorLines []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "door could not be closed") {
			doorLines = append(doorLines, line)
		}
	}
	if len(doorLines) != 1 || !strings.HasPrefix(doorLines[0], "knockknock: ") || !strings.Contains(doorLines[0], "/nonexistent/") {
		t.Fatalf("with --hook-arg %s: want one line saying the door could not be closed, naming the program; got:\n%s", h.bad, out)
	}
	n.kk(n.cli, "knock", "-4", "-p", fwKnockPorts, srvV4).Run()
	closedToAll("after a failed start")

	// Crash-restart cycles while the stranger tries to connect as fast as it can.
	p := n.startProbe(t)
	for range crashCycles {
		kk = start(accessSeconds)
		kk.stopWith(t, syscall.SIGKILL)
	}
	attempts, through := p.stop(t)
	t.Logf("%d crash-restart cycles: %d connects attempted by an address that never knocked, %d got through", crashCycles, attempts, through)
	if through != 0 || attempts < 100 {
		t.Fatalf("crash-restart: %d of %d connects got through (want 0, of 100 or more)", through, attempts)
	}

	// The header's commands open the port on purpose.
	for _, c := range h.remove {
		sh(t, append([]string{"ip", "netns", "exec", n.srv}, c...)...)
	}
	for _, c := range []struct{ from, srv string }{{strangerV4, srvV4}, {strangerV6, srvV6}} {
		if !n.connectsFrom(t, c.from, c.srv) {
			t.Fatalf("%s still closed after the header's commands to remove the rules", c.srv)
		}
	}
	t.Logf("%s: %v", h.path, time.Since(began).Round(100*time.Millisecond))
}

// flushedAfter reports whether on_flush has run after the k-th unlock from ip: the hook logs
// "access granted" once the batch's grants are in the kernel.
func flushedAfter(log, ip string, k int) bool {
	seen := 0
	for _, line := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(line, "msg=unlock") && strings.Contains(line+" ", " ip="+ip+" "):
			seen++
		case seen >= k && strings.Contains(line, "access granted"):
			return true
		}
	}
	return false
}

// A prober is the test binary run again inside the client namespace (see init below): it
// connects from the stranger's addresses to the protected port as fast as it can until its
// standard input closes, and counts the connections that got an answer (a connection, or a
// reset: either way the SYN went through).
type prober struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer
	done  chan struct{}
}

const probeEnv = "KNOCKKNOCK_NETNS_PROBE"

func (n netnsPair) startProbe(t *testing.T) *prober {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf("%s>%s %s>%s", strangerV4, net.JoinHostPort(srvV4, fmt.Sprint(protected)), strangerV6, net.JoinHostPort(srvV6, fmt.Sprint(protected)))
	p := &prober{cmd: n.in(n.cli, exe), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), probeEnv+"="+spec)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	waitFor(t, "the prober", func() bool { return strings.Contains(p.out.String(), "probing") })
	return p
}

// stop ends the prober and returns how many connects it attempted and how many got through.
func (p *prober) stop(t *testing.T) (attempts, through int) {
	t.Helper()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the prober did not stop")
	}
	out := p.out.String()
	if _, err := fmt.Sscanf(out[max(strings.Index(out, "attempts="), 0):], "attempts=%d through=%d", &attempts, &through); err != nil {
		t.Fatalf("prober: %v\n%s", err, p.out.String())
	}
	return attempts, through
}

// probe runs a prober for d.
func (n netnsPair) probe(t *testing.T, d time.Duration) (attempts, through int) {
	t.Helper()
	p := n.startProbe(t)
	time.Sleep(d)
	return p.stop(t)
}

func init() {
	if spec := os.Getenv(probeEnv); spec != "" {
		os.Exit(probeMain(spec))
	}
}

// probeMain is the prober: spec is "FROM>HOST:PORT ...". Each target gets 16 connecting
// goroutines; a connect that hears nothing for 10 ms is a dropped SYN.
func probeMain(spec string) int {
	var attempts, through atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, pair := range strings.Fields(spec) {
		from, to, _ := strings.Cut(pair, ">")
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Millisecond}
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					attempts.Add(1)
					c, err := d.Dial("tcp", to)
					if err == nil {
						c.Close()
					}
					if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
						through.Add(1)
					}
				}
			}()
		}
	}
	fmt.Println("probing")
	io.Copy(io.Discard, os.Stdin)
	stop.Store(true)
	wg.Wait()
	fmt.Printf("attempts=%d through=%d\n", attempts.Load(), through.Load())
	return 0
}

// inNetns hands its thread back in the test's namespace: after many calls (some of which land on
// the process's main thread, which a locked goroutine cannot end), every thread of the test
// process is still in the namespace it started in, and so is /proc/net. Before, a call that ran
// on the main thread left it in the namespace, and tests reading /proc/net saw its sockets
// instead of theirs (a full run under load failed that way twice in two).
func TestInNetnsLeavesNoThreadInTheNamespace(t *testing.T) {
	needTools(t, "ip")
	name := fmt.Sprintf("kk-inns-%d", os.Getpid()%100000)
	exec.Command("ip", "netns", "del", name).Run()
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	home, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				var in string
				err := inNetns("/run/netns/"+name, func() (err error) {
					in, err = os.Readlink("/proc/thread-self/ns/net")
					return err
				})
				if err != nil || in == home {
					t.Errorf("inNetns: the function ran in %s (the test's is %s): %v", in, home, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		// A thread may be ending as it is read; its link is then gone.
		if ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && ns != home {
			t.Errorf("thread %s is left in %s, not in the test's %s", task.Name(), ns, home)
		}
	}
	if main, _ := os.Readlink("/proc/self/ns/net"); main != home {
		t.Errorf("the main thread (and /proc/net) is in %s, not in the test's %s", main, home)
	}
}
