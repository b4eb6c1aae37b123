package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// syncBuffer is a log destination that tests may read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a port for a server under test, free for UDP and TCP, IPv4 and IPv6, and
// never returned twice in one test run.
//
// A port the kernel picked (bind to port 0) and the test then closed is a bad choice: the kernel
// may hand it to any other socket, a connect's or a bind's, before the server binds it. So the
// ports come from below the kernel's ephemeral range (net.ipv4.ip_local_port_range), which the
// kernel never picks by itself: only a process that asks for that very number can take it. In
// this process a counter under a lock hands each port out once, so tests never collide; the
// counter starts at an offset drawn from the process id, so that test runs side by side (in
// other checkouts, or -race beside a plain run) use different ports; and each port is checked
// free (bound and released, UDP and TCP, dual-stack) before it is handed out.
func freePort(t testing.TB) uint16 {
	t.Helper()
	testPorts.Lock()
	defer testPorts.Unlock()
	if testPorts.hi == 0 {
		testPorts.lo, testPorts.hi = testPortRange()
		if testPorts.hi-testPorts.lo < 1024 {
			t.Fatalf("no room for test ports around the ephemeral range (ports %d-%d)", testPorts.lo, testPorts.hi-1)
		}
		testPorts.next = testPorts.lo + os.Getpid()*97%(testPorts.hi-testPorts.lo)
	}
	for range testPorts.hi - testPorts.lo {
		port := testPorts.next
		if testPorts.next++; testPorts.next == testPorts.hi {
			testPorts.next = testPorts.lo
		}
		if portFreeBoth(uint16(port)) {
			return uint16(port)
		}
	}
	t.Fatalf("no free port in %d-%d", testPorts.lo, testPorts.hi-1)
	return 0
}

var testPorts struct {
	sync.Mutex
	lo, hi, next int // ports lo to hi-1; next is the next to try
}

// testPortRange is where freePort takes its ports: the larger of the two gaps around the
// kernel's ephemeral range, from 16384 (below that: well-known ports, and the demo's 10123 to
// 10789) to its start, or from its end to 65535.
func testPortRange() (lo, hi int) {
	first, last := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &first, &last)
	}
	if first-16384 >= 65535-last {
		return 16384, first
	}
	return last + 1, 65536
}

// portFreeBoth reports whether port can be bound for UDP and for TCP, on every address.
func portFreeBoth(port uint16) bool {
	u, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return false
	}
	defer u.Close()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{Port: int(port)})
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// luaServer is a server in this process with a hook made from src; its runtime is not started,
// so a test may run the hook's top level and read its globals.
type luaServer struct {
	*server
	logs *syncBuffer
	hook *luaHook
}

func newLuaServer(t *testing.T, src string, tweak func(*config)) (*luaServer, error) {
	t.Helper()
	c := testConfig(freePort(t), freePort(t))
	c.hookTimeout = 2 * time.Second
	c.hookName = "test.lua"
	c.hookArgs = [][2]string{{"greeting", "hi"}}
	if tweak != nil {
		tweak(c)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	proto, err := compileHook(c.hookName, []byte(src))
	if err != nil {
		return nil, err
	}
	s := newServer(c, log, proto)
	t.Cleanup(func() {
		s.closeKnockPorts()
		s.stopServices()
	})
	hook, err := s.hooks.load(proto)
	if err != nil {
		return nil, err
	}
	return &luaServer{server: s, logs: logs, hook: hook}, nil
}

func mustLuaServer(t *testing.T, src string, tweak func(*config)) *luaServer {
	t.Helper()
	s, err := newLuaServer(t, src, tweak)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *luaServer) global(name string) lua.LValue { return s.hook.L.GetGlobal(name) }

const unlockStub = "function on_unlock(ev) end\n"

func TestLuaModuleIsGlobalAndRequired(t *testing.T) {
	s := mustLuaServer(t, unlockStub+`
same = require("knock") == knock
timeout = knock.config.timeout
nports = #knock.config.ports
greeting = knock.args.greeting
ok, err = pcall(function() knock.config.timeout = 1 end)
written = ok
`, nil)
	if s.global("same") != lua.LTrue {
		t.Error(`require("knock") is not the global knock`)
	}
	if s.global("timeout") != lua.LNumber(5) || s.global("nports") != lua.LNumber(2) {
		t.Errorf("knock.config: timeout %v ports %v", s.global("timeout"), s.global("nports"))
	}
	if s.global("greeting") != lua.LString("hi") {
		t.Errorf("knock.args.greeting = %v", s.global("greeting"))
	}
	if s.global("written") != lua.LFalse || !strings.Contains(s.global("err").String(), "read-only") {
		t.Errorf("knock.config was writable: %v", s.global("err"))
	}
}

func TestLuaServeAndStopService(t *testing.T) {
	port := freePort(t)
	s := mustLuaServer(t, unlockStub+fmt.Sprintf(`
first = knock.serve{port=%d, greeting="welcome {ip}"}
again = knock.serve{port=%d, greeting="welcome {ip}"}
`, port, port), nil)
	if s.global("first") != lua.LTrue || s.global("again") != lua.LTrue {
		t.Fatalf("knock.serve returned %v then %v, want true twice", s.global("first"), s.global("again"))
	}
	body := httpGet(t, port)
	if body != "welcome 127.0.0.1\n" {
		t.Fatalf("HTTP body %q", body)
	}
	if reply := udpAsk(t, port); reply != "welcome 127.0.0.1\n" {
		t.Fatalf("UDP reply %q", reply)
	}
	call(t, s, fmt.Sprintf("knock.stop_service(%d)", port))
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		t.Fatal("the service still accepts connections after knock.stop_service")
	}
}

func TestLuaServeRejectsBadArguments(t *testing.T) {
	for _, arg := range []string{`{port=0}`, `{port=70000}`, `{port="x"}`, `{proto="sctp"}`, `{allow="everyone"}`, `{greeting=5}`} {
		_, err := newLuaServer(t, unlockStub+"knock.serve"+arg, nil)
		if err == nil || !strings.Contains(err.Error(), "test.lua:2:") {
			t.Errorf("knock.serve%s: error %v, want one naming test.lua:2", arg, err)
		}
	}
}

func TestLuaServeReportsPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	s := mustLuaServer(t, unlockStub+fmt.Sprintf(`ok, err = knock.serve{port=%d, proto="tcp"}`, port), nil)
	if s.global("ok") != lua.LNil || !strings.Contains(s.global("err").String(), fmt.Sprintf("TCP port %d: address already in use", port)) {
		t.Fatalf("knock.serve on a busy port returned %v, %v", s.global("ok"), s.global("err"))
	}
}

func TestLuaAllowModeAdmitsOnlyGrantedClients(t *testing.T) {
	port := freePort(t)
	s := mustLuaServer(t, unlockStub+fmt.Sprintf(`knock.serve{port=%d, allow="clients"}`, port), nil)
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("allow mode let an unknown client through over TCP")
	}
	if reply := udpAskTimeout(t, port, 300*time.Millisecond); reply != "" {
		t.Fatalf("allow mode answered an unknown client over UDP: %q", reply)
	}
	call(t, s, `knock.allow("127.0.0.1", 30)`)
	if body := httpGet(t, port); !strings.Contains(body, "127.0.0.1") {
		t.Fatalf("granted client got %q", body)
	}
	if reply := udpAsk(t, port); reply == "" {
		t.Fatal("granted client got no UDP greeting")
	}
	call(t, s, `knock.revoke("127.0.0.1")`)
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("a revoked client still got through")
	}
	// A short grant: served within it, refused once it has expired. A GET refused after the
	// grant's end (a busy machine) tells nothing: the grant is made again, longer.
	for grant := 200 * time.Millisecond; ; grant *= 4 {
		start := time.Now()
		call(t, s, fmt.Sprintf(`knock.allow("127.0.0.1", %g)`, grant.Seconds()))
		granted := time.Now()
		_, err := tryHTTPGet(port)
		if err == nil {
			time.Sleep(time.Until(granted.Add(grant + 100*time.Millisecond)))
			break
		}
		if time.Since(start) < grant || grant > 10*time.Second {
			t.Fatalf("a client granted for %v was refused %v after the grant: %v", grant, time.Since(start), err)
		}
	}
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("access did not expire")
	}
	for _, bad := range []string{`knock.allow("not-an-ip", 5)`, `knock.allow("127.0.0.1", -1)`, `knock.revoke(5)`} {
		if err := callErr(s, bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestLuaExec(t *testing.T) {
	s := mustLuaServer(t, unlockStub+`
code, out = knock.exec("sh", "-c", "echo hello $0; exit 3", "arg")
nocode, nerr = knock.exec("/nonexistent/program")
status = os.execute("exit 4")
`, nil)
	if s.global("code") != lua.LNumber(3) || s.global("out") != lua.LString("hello arg\n") {
		t.Errorf("knock.exec returned %v, %q", s.global("code"), s.global("out"))
	}
	if s.global("nocode") != lua.LNil || !strings.Contains(s.global("nerr").String(), "no such file") {
		t.Errorf("missing program: %v, %v", s.global("nocode"), s.global("nerr"))
	}
	if s.global("status") != lua.LNumber(4) {
		t.Errorf("os.execute returned %v, want 4", s.global("status"))
	}
}

func TestLuaExecIsCancelledAtTheHookTimeout(t *testing.T) {
	for _, code := range []string{`knock.exec("sh", "-c", "sleep 30")`, `os.execute("sleep 30")`, `while true do end`} {
		start := time.Now()
		_, err := newLuaServer(t, unlockStub+code, func(c *config) { c.hookTimeout = 300 * time.Millisecond })
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: ran %v past a 300ms hook timeout", code, took)
		}
		if err == nil || !strings.Contains(err.Error(), "cancel") {
			t.Errorf("%s: error %v, want a cancellation", code, err)
		}
	}
}

func TestLuaAfterAndLog(t *testing.T) {
	s := mustLuaServer(t, `
function on_unlock(ev) end
function on_start()
  knock.log("started", {answer = 42, level = "warn"})
  knock.after(0.05, function() knock.log("later", {n = 1}) end)
end
`, nil)
	if err := s.hooks.start(s.hook, "start"); err != nil {
		t.Fatal(err)
	}
	go s.hooks.run(s.hook)
	defer s.hooks.stop()
	waitFor(t, "the knock.after callback", func() bool { return strings.Contains(s.logs.String(), "msg=later") })
	logs := s.logs.String()
	if !strings.Contains(logs, "level=WARN msg=started event=hook answer=42") {
		t.Fatalf("knock.log output:\n%s", logs)
	}
}

func TestLuaCloseAndOpenKnockPorts(t *testing.T) {
	s := mustLuaServer(t, unlockStub, nil)
	if err := s.openKnockPorts(); err != nil {
		t.Fatal(err)
	}
	port := s.cfg.doors[0].seq[0].port
	if portFree(port) {
		t.Fatal("knock port not bound")
	}
	call(t, s, "knock.close_knock_ports()")
	if !portFree(port) {
		t.Fatal("knock port still bound after close_knock_ports")
	}
	call(t, s, "reopened = knock.open_knock_ports()")
	if s.global("reopened") != lua.LTrue || portFree(port) {
		t.Fatal("open_knock_ports did not bind again")
	}
}

func TestHookErrorsAreLoggedWithFileAndLine(t *testing.T) {
	s := mustLuaServer(t, `
function on_unlock(ev)
  error("boom for " .. ev.ip)
end
`, nil)
	go s.hooks.run(s.hook)
	s.hooks.queue.push([]event{{kind: eventUnlock, from: key("192.0.2.7"), port: up(1)}})
	waitFor(t, "the hook error in the log", func() bool { return strings.Contains(s.logs.String(), "hook_error") })
	s.hooks.stop()
	if logs := s.logs.String(); !strings.Contains(logs, "test.lua:3: boom for 192.0.2.7") {
		t.Fatalf("log does not name test.lua:3:\n%s", logs)
	}
}

func TestHookLoadErrors(t *testing.T) {
	cases := map[string]string{
		"syntax error":      "function on_unlock(ev",
		"no on_unlock":      "x = 1",
		"not a function":    "on_unlock = 5",
		"error at load":     unlockStub + "error('at load')",
		"on_fail not a fn":  unlockStub + "on_fail = 5",
		"unknown door":      "on_unlock = { nosuchdoor = function() end }",
		"runaway top level": unlockStub + "while true do end",
	}
	for name, src := range cases {
		_, err := newLuaServer(t, src, func(c *config) { c.hookTimeout = 200 * time.Millisecond })
		if err == nil {
			t.Errorf("%s: loaded", name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "test.lua") || strings.Contains(msg, "\n") {
			t.Errorf("%s: %q should be one line naming test.lua", name, msg)
		}
	}
}

// call runs a Lua statement in the hook's state and fails the test on error.
func call(t *testing.T, s *luaServer, code string) {
	t.Helper()
	if err := callErr(s, code); err != nil {
		t.Fatalf("%s: %v", code, err)
	}
}

func callErr(s *luaServer, code string) error {
	return s.hooks.protect(s.hook, func() error { return s.hook.L.DoString(code) })
}

func tryHTTPGet(port uint16) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), err
}

func httpGet(t *testing.T, port uint16) string {
	t.Helper()
	body, err := tryHTTPGet(port)
	if err != nil {
		t.Fatalf("GET :%d: %v", port, err)
	}
	return body
}

func udpAsk(t *testing.T, port uint16) string {
	t.Helper()
	reply := udpAskTimeout(t, port, 2*time.Second)
	if reply == "" {
		t.Fatalf("no UDP reply from port %d", port)
	}
	return reply
}

func udpAskTimeout(t *testing.T, port uint16, wait time.Duration) string {
	t.Helper()
	return askFrom(t, "127.0.0.1", port, wait)
}

func portFree(port uint16) bool {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestShippedHooksLoad(t *testing.T) {
	for _, path := range []string{"hooks/unlock.lua", "hooks/allow-client.lua", "hooks/log-only.lua", "hooks/nftables.lua", "hooks/iptables.lua",
		"hooks/ssh-doors.lua", "hooks/knockd.lua", "scripts/bench.lua", "testdata/record.lua"} {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(src), "--") {
			t.Errorf("%s does not start with a comment saying what it does", path)
		}
		proto, err := compileHook(path, src)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		s := &server{cfg: testConfig(1, 2), log: slog.New(slog.DiscardHandler)}
		if path == "hooks/ssh-doors.lua" {
			s.cfg.doors = []door{testDoor("openSSH", 1, 2), testDoor("closeSSH", 2, 1)}
		}
		s.cfg.hookTimeout, s.cfg.hookName = time.Second, path
		if _, err := newHookRuntime(s.cfg, s.log, proto, &recordingEffects{}).load(proto); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	if embedded, _ := os.ReadFile(defaultHookPath); !bytes.Equal(embedded, embeddedHook) {
		t.Error("the embedded default hook differs from hooks/unlock.lua")
	}
	if embedded, _ := os.ReadFile(defaultKnockdHook); !bytes.Equal(embedded, embeddedKnockdHook) {
		t.Error("the embedded knockd hook differs from hooks/knockd.lua")
	}
}

func TestAllowClientHook(t *testing.T) {
	port := freePort(t)
	src, _ := os.ReadFile("hooks/allow-client.lua")
	s := mustLuaServer(t, string(src), func(c *config) {
		c.hookArgs = [][2]string{{"port", fmt.Sprint(port)}, {"seconds", "0.5"}}
	})
	if err := s.hooks.start(s.hook, "start"); err != nil {
		t.Fatal(err)
	}
	go s.hooks.run(s.hook)
	defer s.hooks.stop()
	waitFor(t, "the service", func() bool { return strings.Contains(s.logs.String(), "service started") })
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("a client that did not knock got through")
	}
	// The hook grants 0.5 s. A GET refused after the grant's end (a busy machine) tells
	// nothing: the client unlocks again.
	for n := 1; ; n++ {
		start := time.Now()
		s.hooks.queue.push([]event{{kind: eventUnlock, from: key("127.0.0.1"), port: up(1)}})
		waitFor(t, "access granted", func() bool { return strings.Count(s.logs.String(), "access granted") == n })
		granted := time.Now()
		_, err := tryHTTPGet(port)
		if err == nil {
			time.Sleep(time.Until(granted.Add(600 * time.Millisecond)))
			break
		}
		if time.Since(start) < 500*time.Millisecond || n == 5 {
			t.Fatalf("a client granted for 0.5s was refused %v after its unlock: %v", time.Since(start), err)
		}
	}
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("access did not expire after 0.5 s")
	}
}

func TestFailureLogIsRateLimited(t *testing.T) {
	s := mustLuaServer(t, unlockStub+"fails = 0\nfunction on_fail(ev) fails = fails + 1 end\n", nil)
	s.hooks.hook = s.hook
	e := event{kind: eventFail, reason: reasonWrongPort, from: key("192.0.2.9"), port: up(1)}
	for range 1000 {
		s.hooks.dispatch(&e)
	}
	if n := strings.Count(s.logs.String(), "knock failed"); n > failLogsPerSecond*2 {
		t.Fatalf("%d failure lines for 1000 failures; the limit is %d a second", n, failLogsPerSecond)
	}
	if s.global("fails") != lua.LNumber(1000) {
		t.Fatalf("on_fail saw %v of 1000 failures", s.global("fails"))
	}
}

// The shipped SSH doors hook: a handler per door, without an if-chain, and a clear error for a
// door without one. nft is replaced by a script that records its arguments.
func TestSSHDoorsHook(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	fake := filepath.Join(dir, "nft")
	os.WriteFile(fake, []byte("#!/bin/sh\nprintf '%s\\n' \"$*\" >> "+calls+"\n"), 0o755)
	src, err := os.ReadFile("hooks/ssh-doors.lua")
	if err != nil {
		t.Fatal(err)
	}
	s := mustLuaServer(t, string(src), func(c *config) {
		c.doors = []door{testDoor("openSSH", 7000, 8000, 9000), testDoor("closeSSH", 9000, 8000, 7000)}
		c.hookArgs = [][2]string{{"nft", fake}}
	})
	if err := s.hooks.start(s.hook, "start"); err != nil {
		t.Fatal(err)
	}
	go s.hooks.run(s.hook)
	s.hooks.queue.push([]event{
		{kind: eventUnlock, door: 0, from: key("192.0.2.7"), port: up(9000)},
		{kind: eventUnlock, door: 1, from: key("2001:db8::7"), port: up(7000)},
	})
	waitFor(t, "both doors' handlers", func() bool { return strings.Count(s.logs.String(), "ssh-doors: ") >= 3 })
	s.hooks.stop()
	b, _ := os.ReadFile(calls)
	got := string(b)
	for _, want := range []string{"drop", "add element inet knockknock_ssh allowed4 { 192.0.2.7 timeout 8h }",
		"delete element inet knockknock_ssh allowed6 { 2001:db8::7 }", "flush set inet knockknock_ssh allowed4"} {
		if !strings.Contains(got, want) {
			t.Errorf("nft calls lack %q:\n%s", want, got)
		}
	}
	// A door the hook has no handler for, and a handler for no door (a typo), are errors at
	// load that name them.
	_, err = newLuaServer(t, string(src), func(c *config) {
		c.doors = []door{testDoor("openSSH", 7000, 8000), testDoor("closeSSH", 8000, 7000), testDoor("https", 1, 2)}
	})
	if err == nil || !strings.Contains(err.Error(), "no on_unlock for door https") {
		t.Errorf("a door without a handler: %v", err)
	}
	_, err = newLuaServer(t, string(src), func(c *config) { c.doors = []door{testDoor("openSSH", 7000, 8000)} })
	if err == nil || !strings.Contains(err.Error(), "on_unlock[closeSSH]: no door has that name (doors: openSSH)") {
		t.Errorf("a handler for no door: %v", err)
	}
}

// A handler that never uses its ev gets no table; every way of using it is seen.
func TestReadsFirstParam(t *testing.T) {
	uses := []string{
		"return ev", "local x = ev.ip", "print(ev)", "x = ev", "local t = {ev}", "local t = {a = ev}",
		"local t = {}; t[ev] = 1", "if ev then end", `local s = "a" .. ev.ip`, "knock.after(1, function() print(ev.ip) end)",
		"local e = ev; print(e)", "for k, v in pairs(ev) do end", "ev.x = 1", "local y = ev == nil", "local y = #ev",
		"local y = -ev", "local y = not ev", "local a, b = ev, 1", "return print(ev)", "ev:method()",
		"local a = 1 + ev", "local a = {1, 2, ev}", "while ev do break end", "return ev and 1 or 2",
		"local function g() return ev end", "repeat until ev", "local a, b, c = 1, 2, ev",
	}
	ignores := []string{
		"", "unlocks = (unlocks or 0) + 1", "local x = 5; print(x)", `knock.log("hi")`, "local function g() end",
		"knock.after(1, function() print(1) end)", "for i = 1, 10 do end", "local t = {1, 2}", "return 1",
		"local ev2 = {}; ev2.x = 1", "pending[#pending + 1] = 1",
	}
	check := func(body string, want bool) {
		proto, err := compileHook("t.lua", []byte("pending = {}\nfunction f(ev)\n"+body+"\nend\n"))
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if got := readsFirstParam(proto.FunctionPrototypes[0]); got != want {
			t.Errorf("%q: readsFirstParam = %v, want %v", body, got, want)
		}
	}
	for _, body := range uses {
		check(body, true)
	}
	for _, body := range ignores {
		check(body, false)
	}
	proto, _ := compileHook("t.lua", []byte("function f(...) local ev = ... end"))
	if !readsFirstParam(proto.FunctionPrototypes[0]) {
		t.Error("a handler that takes ... may use ev")
	}
}
