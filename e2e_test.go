package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// raceEnabled is set by race_test.go: the server under test is then built with -race too.
var raceEnabled bool

// binPath is the knockknock binary the end-to-end tests run, built once by TestMain.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "knockknock-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "knockknock")
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		args = append(args, "-race")
		os.Setenv("GORACE", "atexit_sleep_ms=0") // a race-built server otherwise sleeps a second at exit
	}
	if out, err := exec.Command("go", append(args, "knockknock.go")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building knockknock: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// settled is how long after a knock the failure it caused is surely final and reported: a failure
// becomes final once the knocks behind it are older than the tracker's reorderWindow, at the
// janitor's next sweep (every 250 ms); then the hook queue and the log flush (logFlushInterval)
// take a moment more.
const settled = time.Duration(reorderWindow) + 250*time.Millisecond + logFlushInterval + 200*time.Millisecond

// proc is a knockknock server process.
type proc struct {
	cmd    *exec.Cmd
	stderr *procOutput // its stdout and stderr
	done   chan struct{}
}

// procOutput is where a process writes its output: a file, so that a write is there to read as
// soon as it returns. (With a pipe, a copying goroutine could still hold what the server logged
// before it said it was ready.)
type procOutput struct{ f *os.File }

func newProcOutput(t *testing.T) *procOutput {
	t.Helper()
	// O_APPEND: a server's children (and a shell's) write to it too.
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "output"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &procOutput{f}
}

// String is everything written so far.
func (o *procOutput) String() string {
	b, _ := os.ReadFile(o.f.Name())
	return string(b)
}

// startServer starts knockknock with args and returns once it is ready (see startReady).
func startServer(t *testing.T, args ...string) *proc {
	t.Helper()
	return startReady(t, exec.Command(binPath, args...))
}

// startReady starts a knockknock server through cmd (the binary, or ip netns exec running it) and
// returns once the server says it is ready. Readiness is not read from the log: the server
// sends READY=1 to the datagram socket named by NOTIFY_SOCKET (as for systemd's Type=notify)
// once its knock sources are open, its hook's on_start has returned and its "listening" line is
// written, whatever the log format. A pathname socket works through ip netns exec too.
func startReady(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	dir, err := os.MkdirTemp("", "kk-ready-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cmd.Env = append(cmd.Environ(), "NOTIFY_SOCKET="+sock)
	p := launch(t, cmd)
	ready := make(chan error, 1)
	go func() {
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					ready <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("server not ready after 30s (%v):\n%s", err, p.stderr.String())
		}
	case <-p.done:
		t.Fatalf("server exited with %v before it was ready:\n%s", p.cmd.ProcessState, p.stderr.String())
	}
	return p
}

// launch starts cmd with its output captured, and kills it when the test ends.
func launch(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: newProcOutput(t), done: make(chan struct{})}
	cmd.Stderr, cmd.Stdout = p.stderr.f, p.stderr.f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		killTree(cmd.Process)
		<-p.done
		if t.Failed() {
			t.Logf("server log:\n%s", p.stderr.String())
		}
	})
	return p
}

// killTree kills a process that is still running and every process under it. What a server's
// hook runs has a process group of its own, and the server is the subreaper of what leaves it:
// killing the server alone would leave them to init, running past the test (a hook command
// waiting for a file that a failed test never wrote loops forever), loading the machine and
// holding ports for the tests after it. The server is stopped first, so that it starts nothing
// more, and its children, as they die, stay zombies it cannot reap: their PIDs are not reused
// while the tree is killed. What forks meanwhile is orphaned to the server: the next pass finds it.
func killTree(p *os.Process) {
	if p.Signal(syscall.SIGSTOP) != nil {
		return // it has exited: its PID may be another process's now
	}
	for range 50 {
		tree, alive := procTree(), 0
		for _, pid := range tree.descendants(p.Pid) {
			if !tree.zombie[pid] {
				alive++
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if alive == 0 {
			break
		}
	}
	p.Kill()
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	return p.stopWith(t, syscall.SIGTERM)
}

func (p *proc) stopWith(t *testing.T, sig os.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("server did not stop within 15s of SIGTERM:\n%s", p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// runKK runs the binary to completion.
func runKK(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runProgram(t, 30*time.Second, binPath, args...)
}

// runProgram runs a program to completion, at most limit, and returns its output and exit code.
func runProgram(t *testing.T, limit time.Duration, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish", filepath.Base(name), args)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func knockWith(t *testing.T, args ...string) {
	t.Helper()
	if out, errOut, code := runKK(t, append([]string{"knock"}, args...)...); code != 0 {
		t.Fatalf("knockknock knock %v: exit %d\n%s%s", args, code, out, errOut)
	}
}

// portList formats ports as a knock sequence: "1,2,3".
func portList(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// recording is the file testdata/record.lua writes.
type recording string

func (r recording) lines() []string {
	b, _ := os.ReadFile(string(r))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (r recording) count(prefix string) int {
	n := 0
	for _, l := range r.lines() {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// fields parses "kind k=v k=v" lines.
func fields(line string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

// procSocket is one line of /proc/net/udp, udp6, tcp or tcp6: the local and remote ports, the
// state (hex, "0A" is a listening TCP socket), and what waits there to be read: bytes, or for a
// listening socket the connections in its accept queue.
type procSocket struct {
	local, remote uint16
	state         string
	queued        int64
	drops         int64 // UDP: datagrams dropped, the receive buffer full
}

// procSockets reads the sockets of the test's network namespace (none without /proc). It reads
// them through the thread it runs on, not /proc/net: that is the namespace of the process's main
// thread, which a goroutine that joined another namespace could have left there (see inNetns).
func procSockets(proto string) []procSocket {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var out []procSocket
	for _, file := range []string{"/proc/thread-self/net/" + proto, "/proc/thread-self/net/" + proto + "6"} {
		b, _ := os.ReadFile(file)
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			_, lp, _ := strings.Cut(f[1], ":")
			_, rp, _ := strings.Cut(f[2], ":")
			_, rxq, _ := strings.Cut(f[4], ":")
			local, _ := strconv.ParseUint(lp, 16, 16)
			remote, _ := strconv.ParseUint(rp, 16, 16)
			queued, _ := strconv.ParseInt(rxq, 16, 64)
			var drops int64
			if proto == "udp" {
				drops, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
			}
			out = append(out, procSocket{uint16(local), uint16(remote), f[3], queued, drops})
		}
	}
	return out
}

// udpUnread is how much datagrams wait unread at the UDP sockets bound to ports (bytes of
// receive buffer: an empty datagram counts too). A test that sent knocks waits for 0 before it
// counts on the server having read them: a busy machine may leave a burst queued for a while.
func udpUnread(ports ...uint16) int64 {
	return udpSum(ports, func(s procSocket) int64 { return s.queued })
}

// udpDrops is how many datagrams the kernel dropped at the UDP sockets bound to ports.
func udpDrops(ports ...uint16) int64 {
	return udpSum(ports, func(s procSocket) int64 { return s.drops })
}

// udpSum adds up one figure of the UDP sockets bound to ports.
func udpSum(ports []uint16, figure func(procSocket) int64) int64 {
	var n int64
	for _, s := range procSockets("udp") {
		if slices.Contains(ports, s.local) {
			n += figure(s)
		}
	}
	return n
}

// inNetns runs fn on a thread that has joined the network namespace at path (/run/netns/NAME,
// or /proc/PID/ns/net): the sockets fn opens belong to that namespace and may then be used from
// any goroutine. The thread then rejoins the test's namespace before it goes back to the
// scheduler. If it cannot, it stays locked and ends with the goroutine; but on the process's
// main thread Go cannot end it, and that thread would stay in the namespace, with /proc/net
// (which is /proc/self/net, the main thread's) showing that namespace's sockets.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

type knockServer struct {
	*proc
	ports []uint16
	rec   recording
}

func (s *knockServer) portList() string { return portList(s.ports) }

// startRecording starts a server on three free ports with the recording hook.
func startRecording(t *testing.T, extra ...string) *knockServer {
	t.Helper()
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	rec := recording(filepath.Join(t.TempDir(), "events"))
	args := append([]string{"-p", portList(ports), "--hook", "testdata/record.lua", "--hook-arg", "out=" + string(rec)}, extra...)
	return &knockServer{proc: startServer(t, args...), ports: ports, rec: rec}
}

func TestE2EUnlockReachesTheHook(t *testing.T) {
	s := startRecording(t)
	for _, host := range []string{"127.0.0.1", "::1"} {
		before := time.Now()
		knockWith(t, "-p", s.portList(), host)
		waitFor(t, "unlock from "+host, func() bool { return s.rec.count("unlock ip="+host+" ") == 1 })
		var line string
		for _, l := range s.rec.lines() {
			if strings.HasPrefix(l, "unlock ip="+host+" ") {
				line = l
			}
		}
		f := fields(line)
		ts, _ := strconv.ParseFloat(f["time"], 64)
		elapsed, _ := strconv.ParseFloat(f["elapsed"], 64)
		srcPort, _ := strconv.Atoi(f["source_port"])
		if f["port"] != strconv.Itoa(int(s.ports[2])) || f["sequence"] != s.portList() || srcPort == 0 ||
			ts < float64(before.Add(-time.Second).UnixNano())/1e9 || ts > float64(time.Now().UnixNano())/1e9 ||
			elapsed < 0.015 || elapsed > 2 || f["reason"] != "nil" {
			t.Errorf("ev fields from %s: %s", host, line)
		}
	}
	var knocks []string
	for _, l := range s.rec.lines() {
		if strings.HasPrefix(l, "knock ip=127.0.0.1 ") {
			knocks = append(knocks, fields(l)["port"])
		}
	}
	if want := strings.Split(s.portList(), ","); strings.Join(knocks, ",") != strings.Join(want, ",") {
		t.Errorf("on_knock saw ports %v, want %v", knocks, want)
	}
	if code := s.stopWith(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d after SIGINT, want 0", code)
	}
	lines := s.rec.lines()
	if lines[0] != "start" || lines[len(lines)-1] != "stop" {
		t.Fatalf("on_start and on_stop not called first and last: %q", lines)
	}
}

func TestE2EWrongOrderAndLateKnocksDoNotUnlock(t *testing.T) {
	s := startRecording(t, "--timeout", "0.5")
	p := s.ports
	knockWith(t, "-p", portList([]uint16{p[0], p[2], p[1]}), "127.0.0.1")
	waitFor(t, "the wrong-order failure", func() bool { return s.rec.count("fail") >= 1 })
	if s.rec.count("unlock") != 0 || !strings.Contains(strings.Join(s.rec.lines(), "\n"), "reason=wrong_port") {
		t.Fatalf("wrong order: %q", s.rec.lines())
	}
	// Sent from this process: starting a client process could take longer than the timeout.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i, port := range p {
		if i == 2 {
			time.Sleep(700 * time.Millisecond)
		}
		conn.WriteToUDPAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	}
	waitFor(t, "the timeout failure", func() bool { return strings.Contains(strings.Join(s.rec.lines(), "\n"), "reason=timeout") })
	if s.rec.count("unlock") != 0 {
		t.Fatalf("a late knock unlocked: %q", s.rec.lines())
	}
	knockWith(t, "-p", s.portList(), "127.0.0.1")
	waitFor(t, "the unlock after the failures", func() bool { return s.rec.count("unlock") == 1 })
}

func TestE2EFailingAndHangingHooksLeaveTheServerServing(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "moody.lua")
	out := filepath.Join(t.TempDir(), "events")
	os.WriteFile(hook, []byte(`
calls = 0
function on_unlock(ev)
  calls = calls + 1
  if calls == 1 then error("first call fails") end
  if calls == 2 then while true do end end
  if calls == 3 then knock.exec("sleep", "60") end
  local f = assert(io.open(knock.args.out, "a"))
  f:write("unlock " .. calls .. "\n")
  f:close()
end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "out="+out, "--hook-timeout", "300ms")
	for range 4 {
		knockWith(t, "-p", portList(ports), "127.0.0.1")
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, "the fourth unlock", func() bool { b, _ := os.ReadFile(out); return string(b) == "unlock 4\n" })
	waitFor(t, "moody.lua:5 named once and two cancellations in the log", func() bool {
		logs := p.stderr.String()
		return strings.Contains(logs, "moody.lua:5: first call fails") && strings.Count(logs, "cancelled after 300ms (--hook-timeout)") == 2
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestE2EBadInputExits2WithOneLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(body), 0o644)
		return path
	}
	syntax := write("syntax.lua", "function on_unlock(ev\n")
	noUnlock := write("nounlock.lua", "function on_knock(ev) end\n")
	badINI := write("bad.ini", "[Application Options]\nportz = 1,2,3\n")
	loose := write("loose.secret", "0123456789abcdef0123456789abcdef\n")
	short := write("short.secret", "tooshort\n")
	os.Chmod(short, 0o600)
	weak := write("weak.secret", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
	os.Chmod(weak, 0o600)
	noDoors := write("nodoors.conf", "[options]\n  UseSyslog\n")
	badKeys := write("keys", "alice 0123456789abcdef0123456789abcdef\nbob\n")
	os.Chmod(badKeys, 0o600)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-p", "0"}, "port 0 is out of range"},
		{[]string{"-p", "70000"}, "port 70000 is out of range"},
		{[]string{"-p", "abc"}, `"abc" is not a port number`},
		{[]string{"-p", "1:sctp"}, "tcp or udp"},
		{[]string{"-p", "7000:tcp"}, "need --capture"},
		{[]string{"--door", "a=1,2", "--door", "a=3"}, "defined twice"},
		{[]string{"--door", "a=1,2", "--door", "b=1,2"}, "same sequence"},
		{[]string{"--door", "a=1,2", "-p", "3,4"}, "not both"},
		{[]string{"--door", "a=1 bogus=2"}, "unknown field"},
		{[]string{"--knockd-config", "testdata/knockd-bad-unknown-key.conf"}, "line"},
		{[]string{"--knockd-config", filepath.Join(dir, "none.conf")}, "none.conf"},
		{[]string{"--knockd-config", noDoors}, "no doors"},
		{[]string{"--knockd-config", "/dev/null"}, "regular file"},
		{[]string{"--secret-file", weak}, "entropy"},
		{[]string{"--secret-file", "/dev/null"}, "regular file"},
		{[]string{"--keys", badKeys}, "line 2"},
		{[]string{"-t", "-1s"}, "--timeout"},
		{[]string{"--timeout=-1"}, "must not be negative"},
		{[]string{"-t", "5x"}, "not a duration"},
		{[]string{"-t", "0"}, "must be between"},
		{[]string{"--hook", filepath.Join(dir, "missing.lua")}, "missing.lua"},
		{[]string{"--hook", syntax}, "syntax.lua"},
		{[]string{"--hook", noUnlock}, "defines no on_unlock"},
		{[]string{"--log-format", "xml"}, "use text or json"},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"stray"}, `"stray"`}, // an unknown command; after check, an unexpected argument
		{[]string{"--listen", "nowhere"}, "invalid --listen"},
		{[]string{"--hook-arg", "novalue"}, "want KEY=VALUE"},
		{[]string{"--decoys", "123"}, "also a knock port"},
		{[]string{"--max-clients", "0"}, "--max-clients"},
		{[]string{"--config", badINI}, "unknown option: portz"},
		{[]string{"--config", filepath.Join(dir, "none.ini")}, "none.ini"},
		{[]string{"--secret-file", loose}, "chmod 600"},
		{[]string{"--secret-file", short}, "at least 16"},
		{[]string{"knock"}, "needs a HOST"},
		{[]string{"knock", "-d", "x", "127.0.0.1"}, "--delay"},
		{[]string{"knock", "127.0.0.1", "99999"}, "out of range"},
	}
	for _, tc := range cases {
		for _, cmd := range [][]string{nil, {"check"}} {
			args := append(append([]string{}, cmd...), tc.args...)
			if len(tc.args) > 0 && tc.args[0] == "knock" {
				if cmd != nil {
					continue
				}
				args = tc.args
			}
			_, stderr, code := runKK(t, args...)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(stderr, tc.want) || !strings.HasPrefix(stderr, "knockknock: ") {
				t.Errorf("knockknock %q: exit %d, stderr %q; want exit 2 and one line with %q", args, code, stderr, tc.want)
			}
		}
	}
}

func TestE2EPortInUseExits1NamingIt(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.LocalAddr().(*net.UDPAddr).Port
	_, stderr, code := runKK(t, "-p", fmt.Sprintf("%d,%d", freePort(t), port))
	if code != 1 || !strings.Contains(stderr, fmt.Sprintf("UDP port %d: address already in use", port)) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestE2EPrivilegedPortNamesTheCapability(t *testing.T) {
	cmd := exec.Command(binPath, "-p", "1,2,3")
	cmd.Dir = filepath.Dir(binPath) // no hooks/ there: the embedded default hook
	if os.Geteuid() == 0 {
		// As root, run it as nobody: the binary's directory must be reachable for that.
		os.Chmod(filepath.Dir(binPath), 0o755)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), "UDP port 1: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestE2EExampleConfig(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	runKK(t, "keygen", secret)
	// The example's secret-file line is commented out: a flag adds a key.
	stdout, stderr, code := runKK(t, "check", "--config", "knockknock.ini", "--hook", "hooks/nftables.lua", "--secret-file", secret)
	if code != 0 {
		t.Fatalf("check --config knockknock.ini: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"door default: 7000:udp,9000:udp,8000:udp,7500:udp", "decoys:       7200:udp,8500:udp", "hook-arg:     port=22", "authenticated", "log-format:   json"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestE2EKnockReportsAnUnresolvableHost(t *testing.T) {
	// Names the resolver refuses without asking the network.
	for _, args := range [][]string{{"knock", "bad..name"}, {"knock", "-6", "127.0.0.1"}} {
		_, stderr, code := runKK(t, args...)
		if code != 1 || !strings.HasPrefix(stderr, "knockknock: cannot resolve") || strings.Contains(stderr, "<nil>") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestE2EHelpExits0(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"knock", "--help"}, {"check", "--help"}} {
		stdout, _, code := runKK(t, args...)
		if code != 0 || !strings.Contains(stdout, "Usage:") {
			t.Errorf("%v: exit %d, stdout %q", args, code, stdout)
		}
	}
}

func TestE2ECheck(t *testing.T) {
	stdout, stderr, code := runKK(t, "check")
	for _, want := range []string{"mode:         socket", "door default: 123:udp,456:udp,789:udp (timeout 5s)", "hook:         hooks/unlock.lua (on_unlock)", "ok"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "is ascending") { // warnings go to stderr
		t.Errorf("check warnings lack %q:\n%s", "is ascending", stderr)
	}
	if code != 0 {
		t.Fatalf("check exit %d", code)
	}
	_, stderr, _ = runKK(t, "check", "--decoys", "300,600")
	if strings.Contains(stderr, "ascending") {
		t.Errorf("check warns about an ascending sequence with decoys between its ports:\n%s", stderr)
	}
	_, stderr, _ = runKK(t, "check", "-p", "456,123,789")
	if strings.Contains(stderr, "ascending") || strings.Contains(stderr, "descending") {
		t.Errorf("check warns about a shuffled sequence:\n%s", stderr)
	}
}

func TestE2EConfigFile(t *testing.T) {
	ini := filepath.Join(t.TempDir(), "kk.ini")
	os.WriteFile(ini, []byte("[Application Options]\nports = 2000,1000,3000\ntimeout = 7s\nhook-arg = a=1\nhook-arg = b=2\n"), 0o644)
	stdout, stderr, code := runKK(t, "check", "--config", ini)
	if code != 0 || !strings.Contains(stdout, "door default: 2000:udp,1000:udp,3000:udp (timeout 7s)") || !strings.Contains(stdout, "hook-arg:     b=2") {
		t.Fatalf("check --config: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, _, _ = runKK(t, "check", "--config", ini, "-t", "9")
	if !strings.Contains(stdout, "(timeout 9s)") {
		t.Fatalf("a flag did not override the config file:\n%s", stdout)
	}
	os.WriteFile(ini, []byte("[Application Options]\nports = 2000,0\n"), 0o644)
	_, stderr, code = runKK(t, "check", "--config", ini)
	if code != 2 || !strings.Contains(stderr, "port 0 is out of range") {
		t.Fatalf("bad value in config: exit %d %q", code, stderr)
	}
}

func TestE2EKeygenWritesAPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	if _, stderr, code := runKK(t, "keygen", path); code != 0 {
		t.Fatalf("keygen: %d %s", code, stderr)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, %v", info.Mode(), err)
	}
	if secret, err := readSecretFile(path); err != nil || len(secret) != 64 {
		t.Fatalf("secret %q, %v", secret, err)
	}
	if _, _, code := runKK(t, "keygen", path); code != 2 {
		t.Fatal("keygen overwrote an existing file")
	}
}

func TestE2EJSONLogs(t *testing.T) {
	s := startRecording(t, "--log-format", "json")
	knockWith(t, "-p", s.portList(), "127.0.0.1")
	waitFor(t, "unlock", func() bool { return s.rec.count("unlock") == 1 })
	s.stop(t)
	sawUnlock := false
	for _, line := range strings.Split(strings.TrimSpace(s.stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		for _, k := range []string{"time", "level", "msg", "event"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("line lacks %q: %s", k, line)
			}
		}
		if rec["event"] == "unlock" {
			sawUnlock = rec["ip"] == "127.0.0.1" && rec["port"] == float64(s.ports[2])
		}
	}
	if !sawUnlock {
		t.Fatalf("no unlock line with ip and port:\n%s", s.stderr.String())
	}
}

func TestE2EReloadOnSIGHUP(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "hook.lua")
	out := filepath.Join(t.TempDir(), "events")
	version := func(v string) {
		os.WriteFile(hook, []byte(`function on_unlock(ev)
  local f = assert(io.open(knock.args.out, "a")); f:write("`+v+`\n"); f:close()
end
`), 0o644)
	}
	version("v1")
	ports := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "out="+out)
	os.WriteFile(hook, []byte("function on_unlock(ev"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the failed reload", func() bool { return strings.Contains(p.stderr.String(), "reload failed") })
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "v1 still running", func() bool { b, _ := os.ReadFile(out); return string(b) == "v1\n" })
	version("v2")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { return strings.Contains(p.stderr.String(), "msg=\"hook reloaded\"") })
	time.Sleep(50 * time.Millisecond)
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "v2 running", func() bool { b, _ := os.ReadFile(out); return string(b) == "v1\nv2\n" })
}

// knockd's client speaks plain knocks: it must unlock knockknock.
func TestE2EKnockdClientUnlocks(t *testing.T) {
	knockd, err := exec.LookPath("knock")
	if err != nil {
		t.Skip("SKIP: knockd's knock client is not installed (apt-get install knockd)")
	}
	s := startRecording(t)
	args := []string{"-u", "127.0.0.1"}
	for _, p := range s.ports {
		args = append(args, strconv.Itoa(int(p)))
	}
	if out, err := exec.Command(knockd, args...).CombinedOutput(); err != nil {
		t.Fatalf("knock %v: %v\n%s", args, err, out)
	}
	waitFor(t, "unlock by knockd's client", func() bool { return s.rec.count("unlock ip=127.0.0.1 ") == 1 })
}

// nmap must see what README says before and after the knock. Each run scans one port, in an order
// that cannot complete the sequence.
func TestE2ENmapSeesThePortsChange(t *testing.T) {
	if _, err := exec.LookPath("nmap"); err != nil {
		t.Skip("SKIP: nmap is not installed (apt-get install nmap)")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: nmap -sU needs root")
	}
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	svc := freePort(t)
	p := startServer(t, "-p", portList(ports), "--hook", "hooks/unlock.lua", "--hook-arg", fmt.Sprintf("port=%d", svc))
	scan := func(port uint16) string {
		out, err := exec.Command("nmap", "-n", "-Pn", "-sU", "-p", strconv.Itoa(int(port)), "127.0.0.1").CombinedOutput()
		if err != nil {
			t.Fatalf("nmap: %v\n%s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == fmt.Sprintf("%d/udp", port) {
				return f[1]
			}
		}
		t.Fatalf("nmap output has no line for %d:\n%s", port, out)
		return ""
	}
	order := []uint16{svc, ports[2], ports[1], ports[0]}
	expect := func(when, knockPorts, service string) {
		for _, port := range order {
			want := knockPorts
			if port == svc {
				want = service
			}
			if got := scan(port); got != want {
				t.Errorf("%s the knock: port %d is %s, want %s", when, port, got, want)
			}
		}
	}
	expect("before", "open|filtered", "closed")
	if strings.Contains(p.stderr.String(), "msg=unlock") {
		t.Fatal("the scans unlocked the server")
	}
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the service, then the knock ports closed", func() bool { return strings.Contains(p.stderr.String(), "knock ports closed") })
	expect("after", "closed", "open")
	if body := httpGet(t, svc); !strings.Contains(body, "127.0.0.1") {
		t.Errorf("service answered %q", body)
	}
}

func TestE2EAuthenticatedKnocks(t *testing.T) {
	secretPath := filepath.Join(t.TempDir(), "secret")
	if _, _, code := runKK(t, "keygen", secretPath); code != 0 {
		t.Fatal("keygen failed")
	}
	s := startRecording(t, "--secret-file", secretPath, "--timeout", "2s")

	// Plain knocks do nothing: not even on_knock sees them.
	knockWith(t, "-p", s.portList(), "127.0.0.1")
	time.Sleep(300 * time.Millisecond)
	if n := len(s.rec.lines()); n != 1 {
		t.Fatalf("plain knocks reached the hook in authenticated mode: %q", s.rec.lines())
	}
	// The client authenticates, and reports the confirmation: the door and the address seen.
	out, errOut, code := runKK(t, "knock", "--secret-file", secretPath, "-p", s.portList(), "127.0.0.1")
	if code != 0 || !strings.Contains(out, "unlocked door default on 127.0.0.1 for 127.0.0.1") {
		t.Fatalf("authenticated knock: exit %d, %q %q", code, out, errOut)
	}
	if s.rec.count("unlock") != 1 {
		t.Fatalf("the confirmation came before on_unlock ran: %q", s.rec.lines())
	}
	// A wrong key gets no answer at all, and the client says so.
	other := filepath.Join(t.TempDir(), "other")
	runKK(t, "keygen", other)
	_, errOut, code = runKK(t, "knock", "--wait", "500ms", "--secret-file", other, "-p", s.portList(), "127.0.0.1")
	if code != 1 || !strings.Contains(errOut, "no answer") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("wrong key: exit %d, %q", code, errOut)
	}
	s.stop(t)
	if logs := s.stderr.String(); !strings.Contains(logs, "dropped.unauthenticated=3") || !strings.Contains(logs, "dropped.unknown_key=") {
		t.Fatalf("drops not counted by reason:\n%s", logs)
	}
}

// A burst with no gap between knocks, from many clients at once: the listeners read the three
// ports out of order, and kernel receive times must put every sequence back in order.
func TestE2EZeroGapBurstAllUnlock(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SKIP: choosing each datagram's source address needs Linux IP_PKTINFO")
	}
	const clients = 5000
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", "scripts/bench.lua", "--log-format", "json")
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	oob := make([]byte, 32) // IP_PKTINFO: in_pktinfo.ipi_spec_dst is the source address
	binary.NativeEndian.PutUint64(oob[0:], 28)
	binary.NativeEndian.PutUint32(oob[12:], 8)
	for i := range clients {
		src := [4]byte{127, 3, byte(i >> 8), byte(i + 1)}
		copy(oob[20:24], src[:])
		for _, port := range ports {
			if _, _, err := conn.WriteMsgUDPAddrPort(nil, oob, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The server has read every knock (a busy machine may hold a burst in the socket buffers for
	// a while: the server stops reading at SIGTERM), and the failures, if any, have settled.
	waitFor(t, "the server to read the burst", func() bool { return udpUnread(ports...) == 0 })
	time.Sleep(settled)
	drops := udpDrops(ports...)
	p.stop(t)
	var stopped struct {
		Unlocks uint64 `json:"unlocks"`
		Dropped uint64 `json:"hook_events_shed"`
	}
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, `"msg":"stopped"`) {
			json.Unmarshal([]byte(line), &stopped)
		}
	}
	if stopped.Unlocks != clients || stopped.Dropped != 0 || strings.Contains(p.stderr.String(), `"event":"fail"`) {
		t.Fatalf("%d of %d clients unlocked, %d hook events dropped, failures: %v (datagrams the kernel dropped: %d)", stopped.Unlocks, clients, stopped.Dropped,
			strings.Contains(p.stderr.String(), `"event":"fail"`), drops)
	}
}

// A hook command that starts its own session, or daemonizes, is still ended at the hook
// timeout: the server is the subreaper of what its hooks run (Linux). One started on purpose that
// returns in time keeps running.
func TestE2EHookTimeoutEndsDetachedCommands(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SKIP: the subreaper is Linux-only")
	}
	dir := t.TempDir()
	hook := filepath.Join(dir, "detach.lua")
	os.WriteFile(hook, []byte(`
calls = 0
function on_unlock(ev)
  calls = calls + 1
  local dir = knock.args.dir
  if calls == 1 then
    -- leaves its process group with setsid, then hangs past the timeout
    knock.exec("sh", "-c", "setsid sleep 301 & echo $! > " .. dir .. "/setsid.pid; sleep 30")
  elseif calls == 2 then
    -- daemonizes (fork, setsid, fork; the middle process exits), then hangs
    knock.exec("sh", "-c", "(setsid sh -c 'sleep 302 & echo $! > " .. dir .. "/daemon.pid' &); sleep 30")
  else
    -- a daemon started on purpose, its output closed, returning in time
    knock.exec("sh", "-c", "(setsid sh -c 'sleep 303 >/dev/null 2>&1 & echo $! > " .. dir .. "/kept.pid' >/dev/null 2>&1 &)")
  end
end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "dir="+dir, "--hook-timeout", "1s")
	pidOf := func(name string) int {
		var pid int
		waitFor(t, name, func() bool {
			b, _ := os.ReadFile(filepath.Join(dir, name))
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return pid > 0
		})
		return pid
	}
	alive := func(pid int) bool { // a zombie counts as gone
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err == nil && !strings.Contains(string(b), ") Z ")
	}
	for i, name := range []string{"setsid.pid", "daemon.pid", "kept.pid"} {
		knockWith(t, "-p", portList(ports), "127.0.0.1")
		pid := pidOf(name)
		if i < 2 {
			waitFor(t, name+" ended at the hook timeout", func() bool { return !alive(pid) })
			waitFor(t, name+" reaped", func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); return err != nil })
		} else {
			time.Sleep(1500 * time.Millisecond)
			if !alive(pid) {
				t.Fatalf("a daemon started on purpose, by a call that returned in time, was killed")
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n := strings.Count(p.stderr.String(), "cancelled after 1s (--hook-timeout)"); n != 2 {
		t.Errorf("%d cancellations logged, want 2", n)
	}
}
