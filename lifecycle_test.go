package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The hook's lifecycle: load, reload, replacement after a panic, shutdown; and the knock module
// on recorded effects.

// recordingRuntime is a hook runtime whose effects are only recorded, with hook src loaded.
func recordingRuntime(t *testing.T, src string) (*hookRuntime, *luaHook, *recordingEffects, *syncBuffer) {
	t.Helper()
	c := testConfig(1000, 2000)
	logs := &syncBuffer{}
	proto, err := compileHook(c.hookName, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	fx := &recordingEffects{}
	h := newHookRuntime(c, slog.New(slog.NewTextHandler(logs, nil)), proto, fx)
	hook, err := h.load(proto)
	if err != nil {
		t.Fatal(err)
	}
	return h, hook, fx, logs
}

// Every effect of the knock module goes through the effects: on the recording fake nothing
// happens and each call is recorded.
func TestKnockModuleOnRecordedEffects(t *testing.T) {
	for _, tc := range []struct {
		code string
		want []string
	}{
		{"knock.close_knock_ports()", []string{"close_knock_ports"}},
		{"assert(knock.open_knock_ports() == true)", nil}, // open already: nothing to do
		{"knock.close_knock_ports(); knock.close_knock_ports(); assert(knock.open_knock_ports() == true)",
			[]string{"close_knock_ports", "open_knock_ports"}},
		{`assert(knock.serve{port = 9000, proto = "tcp", allow = "clients", greeting = "hi {ip}"})`,
			[]string{`serve port=9000 proto=tcp allow_only=true greeting="hi {ip}"`}},
		{"knock.stop_service(9000)", []string{"stop_service 9000"}},
		{`knock.allow("192.0.2.1", 5)`, []string{"allow 192.0.2.1 5s"}},
		{`knock.allow("2001:db8::1")`, []string{"allow 2001:db8::1 30s"}},
		{`knock.revoke("192.0.2.1")`, []string{"revoke 192.0.2.1"}},
		{`local code, out = knock.exec("nft", "add", "element", "x"); assert(code == 0 and out == "")`,
			[]string{"exec nft add element x"}},
		{`assert(os.execute("rm -rf /nonexistent") == 0)`, []string{"exec /bin/sh -c rm -rf /nonexistent"}},
		{`knock.allow("nonsense")`, nil}, // an argument error: no effect
	} {
		h, hook, fx, _ := recordingRuntime(t, unlockStub)
		h.protect(hook, func() error { return hook.L.DoString(tc.code) })
		if got := fx.recorded(); !slices.Equal(got, tc.want) {
			t.Errorf("%s: recorded %q, want %q", tc.code, got, tc.want)
		}
		h.closeAll()
	}
}

// A handler's effects are recorded in order, through dispatch, as the runtime makes them.
func TestKnockModuleHandlerEffectsInOrder(t *testing.T) {
	h, hook, fx, _ := recordingRuntime(t, `
function on_unlock(ev)
  knock.allow(ev.ip, 60)
  knock.exec("open-door", ev.ip, ev.door)
end
function on_fail(ev) knock.revoke(ev.ip) end
`)
	h.installHook(hook, false)
	h.dispatch(&event{kind: eventUnlock, from: key("192.0.2.7"), port: up(2000)})
	h.dispatch(&event{kind: eventFail, reason: reasonWrongPort, from: key("192.0.2.8"), port: up(1000)})
	want := []string{"allow 192.0.2.7 1m0s", "exec open-door 192.0.2.7 default", "revoke 192.0.2.8"}
	if got := fx.recorded(); !slices.Equal(got, want) {
		t.Fatalf("recorded %q, want %q", got, want)
	}
	h.closeAll()
	if !hook.L.IsClosed() {
		t.Fatal("closeAll left the hook's state open")
	}
}

// check runs a hook's top level on recorded effects: nothing it asks for happens.
func TestE2ECheckHasNoSideEffects(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	marks := []string{filepath.Join(dir, "os-execute"), filepath.Join(dir, "exec"), filepath.Join(dir, "after")}
	hook := filepath.Join(dir, "hook.lua")
	os.WriteFile(hook, []byte(fmt.Sprintf(`
os.execute("touch %s")
knock.exec("touch", %q)
knock.after(0, function() knock.exec("touch", %q) end)
assert(knock.serve{port = %d, proto = "tcp"})
function on_unlock(ev) end
`, marks[0], marks[1], marks[2], port)), 0o644)
	stdout, stderr, code := runKK(t, "check", "--hook", hook)
	if code != 0 || !strings.Contains(stdout, "\nok\n") {
		t.Fatalf("check: exit %d\n%s%s", code, stdout, stderr)
	}
	time.Sleep(100 * time.Millisecond)
	for _, m := range marks {
		if _, err := os.Stat(m); err == nil {
			t.Errorf("check ran a command: %s exists", filepath.Base(m))
		}
	}
	if !portFree(port) {
		t.Errorf("check left port %d bound", port)
	}
}

// The tracker reports every knock exactly when the running hook has an on_knock (or --verbose):
// a reload that adds or removes on_knock changes it.
func TestInstallHookSetsWantKnock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hook.lua")
	write := func(src string) {
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := mustLuaServer(t, unlockStub, func(c *config) { c.hookPath, c.hookName = path, "hook.lua" })
	s.hooks.installHook(s.hook, false)
	for _, step := range []struct {
		src     string
		verbose bool
		want    bool
	}{
		{unlockStub + "function on_knock(ev) end\n", false, true},
		{unlockStub, false, false},
		{unlockStub, true, true},
		{`on_unlock = function(ev) end; on_knock = {["*"] = function(ev) end}`, false, true},
	} {
		s.cfg.verbose = step.verbose
		write(step.src)
		if err := s.hooks.reload(); err != nil {
			t.Fatal(err)
		}
		if got := s.tracker.wantKnock.Load(); got != step.want {
			t.Errorf("after reloading %q (verbose %v): wantKnock %v, want %v", step.src, step.verbose, got, step.want)
		}
	}
	s.hooks.closeAll()
}

// A reload closes the old state once no callback of it is pending: at once without one; with
// one, after it has run (at shutdown, early), in the old state.
func TestReloadClosesTheOldState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hook.lua")
	os.WriteFile(path, []byte(unlockStub), 0o644)
	s := mustLuaServer(t, unlockStub+`
function on_start() knock.after(30, function() knock.log("old callback ran", {v = version}) end) end
version = 1
`, func(c *config) { c.hookPath, c.hookName = path, "hook.lua" })
	first := s.hook
	if err := s.hooks.start(first, "start"); err != nil {
		t.Fatal(err)
	}
	go s.hooks.run(first)
	if err := s.hooks.requestReload(); err != nil {
		t.Fatal(err)
	}
	if err := s.hooks.requestReload(); err != nil {
		t.Fatal(err)
	}
	s.hooks.stop()
	h := s.hooks
	if !first.L.IsClosed() {
		t.Error("the first state is still open")
	}
	if len(h.retired) != 0 || !h.hook.L.IsClosed() {
		t.Errorf("after shutdown: %d retired hooks, running state closed %v", len(h.retired), h.hook.L.IsClosed())
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `msg="old callback ran" event=hook v=1`) || !strings.Contains(logs, "knock.after callback run early") {
		t.Errorf("the first hook's pending callback did not run, early, in its own state:\n%s", logs)
	}
}

// The unit part of the above: without a pending callback the old state is closed at the reload;
// with one it stays open until the callback has run.
func TestReloadKeepsAStateWithPendingCallbacks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hook.lua")
	os.WriteFile(path, []byte(unlockStub), 0o644)
	s := mustLuaServer(t, unlockStub+"knock.after(30, function() end)\n", func(c *config) { c.hookPath, c.hookName = path, "hook.lua" })
	h, first := s.hooks, s.hook
	h.installHook(first, false)
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	second := h.hook
	if first.L.IsClosed() || !slices.Contains(h.retired, first) {
		t.Fatal("a state with a pending callback was closed at the reload")
	}
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	if !second.L.IsClosed() || slices.Contains(h.retired, second) {
		t.Fatal("a state without pending callbacks was not closed at the reload")
	}
	for a := range first.afters {
		a.timer.Stop()
		h.runAfter(a)
	}
	if !first.L.IsClosed() || len(h.retired) != 0 {
		t.Fatal("the retired state was not closed after its last callback")
	}
	h.closeAll()
}

// panicky panics when printed, and again when its panic is printed: gopher-lua's PCall cannot
// turn that into a Lua error, so it reaches protect as a panic in the Lua runtime. From the
// third time on it prints.
type panicky struct{ printed *int }

func (p panicky) String() string {
	if *p.printed++; *p.printed <= 2 {
		panic(p)
	}
	return "panicky"
}

// A panic in the Lua runtime replaces the state and closes the broken one; its pending
// callbacks are dropped, each logged.
func TestPanicClosesTheBrokenState(t *testing.T) {
	s := mustLuaServer(t, `
calls = 0
function on_unlock(ev) calls = calls + 1; if ev.ip == "192.0.2.66" then gopanic() end end
knock.after(30, function() end)
`, nil)
	h, broken := s.hooks, s.hook
	broken.L.SetGlobal("gopanic", broken.L.NewFunction(func(*lua.LState) int { panic(panicky{new(int)}) }))
	h.installHook(broken, false)
	if !h.dispatch(&event{kind: eventUnlock, from: key("192.0.2.1"), port: up(1)}) {
		t.Fatal("a plain unlock failed")
	}
	if h.dispatch(&event{kind: eventUnlock, from: key("192.0.2.66"), port: up(1)}) {
		t.Fatal("the panicking call succeeded")
	}
	if h.hook == broken || !broken.L.IsClosed() {
		t.Fatalf("after a runtime panic: replaced %v, broken state closed %v", h.hook != broken, broken.L.IsClosed())
	}
	if h.hook.L.GetGlobal("calls") != lua.LNumber(0) {
		t.Error("the fresh state did not start afresh")
	}
	if !h.dispatch(&event{kind: eventUnlock, from: key("192.0.2.1"), port: up(1)}) || h.hook.L.GetGlobal("calls") != lua.LNumber(1) {
		t.Error("the fresh state does not handle unlocks")
	}
	logs := s.logs.String()
	for _, want := range []string{"panic in the Lua runtime", "knock.after callback dropped: its Lua state was replaced after a runtime panic", "hook state replaced"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	h.closeAll()
}

// emit is called with no shard lock held, sweep included: the events go to the hook queue, and
// a hook runtime's push must never wait for a knock in progress.
func TestTrackerEmitsWithNoShardLockHeld(t *testing.T) {
	var tr *tracker
	held, events := 0, 0
	tr = newTracker(testConfig(1, 2, 3), func(evs []event) {
		events += len(evs)
		for i := range tr.shards {
			if !tr.shards[i].mu.TryLock() {
				held++
				continue
			}
			tr.shards[i].mu.Unlock()
		}
	})
	tr.wantKnock.Store(true)
	t0 := time.Now().UnixNano()
	for i := range 64 {
		from := key(fmt.Sprintf("192.0.2.%d", i))
		feed(tr, knock{from: from, port: up(1), ts: t0})
		if i%2 == 0 {
			feed(tr, knock{from: from, port: up(2), ts: t0 + 1})
			feed(tr, knock{from: from, port: up(3), ts: t0 + 2}) // unlock
		} else {
			feed(tr, knock{from: from, port: up(3), ts: t0 + 1}) // wrong port, settled by sweep
		}
	}
	tr.sweep(t0 + reorderWindow + int64(time.Second))
	if events == 0 || held != 0 {
		t.Fatalf("%d events emitted, %d times with a shard lock held", events, held)
	}
}

// A knock.after callback pending at SIGTERM runs before on_stop: what the hook opened is closed.
func TestE2EPendingAfterRunsBeforeOnStop(t *testing.T) {
	out := filepath.Join(t.TempDir(), "lines")
	hook := filepath.Join(t.TempDir(), "hook.lua")
	os.WriteFile(hook, []byte(noteLua+`
function on_unlock(ev)
  note("open " .. ev.ip)
  knock.after(60, function() note("close " .. ev.ip) end)
end
function on_stop(reason) note("stop " .. reason) end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "out="+out)
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the unlock", func() bool { b, _ := os.ReadFile(out); return string(b) == "open 127.0.0.1\n" })
	start := time.Now()
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("shutdown took %v", took)
	}
	b, _ := os.ReadFile(out)
	if want := "open 127.0.0.1\nclose 127.0.0.1\nstop shutdown\n"; string(b) != want {
		t.Errorf("hook wrote %q, want %q", b, want)
	}
	if logs := p.stderr.String(); !strings.Contains(logs, `msg="knock.after callback run early: shutting down" event=shutdown`) {
		t.Errorf("the early callback is not logged:\n%s", logs)
	}
}

// Once shutdown has begun, open_knock_ports is refused, from a callback run early and from
// on_stop, and knock.after schedules nothing.
func TestE2EOpenKnockPortsRefusedAtShutdown(t *testing.T) {
	out := filepath.Join(t.TempDir(), "lines")
	hook := filepath.Join(t.TempDir(), "hook.lua")
	os.WriteFile(hook, []byte(noteLua+`
function on_unlock(ev)
  knock.close_knock_ports()
  knock.after(60, function() note("after " .. tostring(knock.open_knock_ports())) end)
end
function on_stop(reason)
  local ok, err = knock.open_knock_ports()
  note("on_stop " .. tostring(ok) .. " " .. tostring(err))
  knock.after(0, function() note("never") end)
end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "out="+out)
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the knock ports closed", func() bool { return strings.Contains(p.stderr.String(), "knock ports closed") })
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b, _ := os.ReadFile(out)
	if want := "after nil\non_stop nil the server is shutting down\n"; string(b) != want {
		t.Errorf("hook wrote %q, want %q", b, want)
	}
	logs := p.stderr.String()
	if n := strings.Count(logs, `msg="knock ports not reopened: the server is shutting down" event=open_knock_ports`); n != 2 {
		t.Errorf("%d refusals logged, want 2:\n%s", n, logs)
	}
	if strings.Contains(logs, "msg=\"knock ports open\"") {
		t.Errorf("the knock ports were reopened:\n%s", logs)
	}
	if !strings.Contains(logs, `msg="knock.after at shutdown: the callback will not run" event=shutdown seconds=0`) {
		t.Errorf("knock.after from on_stop is not refused with a log line:\n%s", logs)
	}
	for _, port := range ports {
		if !portFree(port) {
			t.Errorf("knock port %d still bound", port)
		}
	}
}

// A hook file that gains on_knock gets on_knock calls after SIGHUP.
func TestE2EReloadGainsOnKnock(t *testing.T) {
	out := filepath.Join(t.TempDir(), "lines")
	hook := filepath.Join(t.TempDir(), "hook.lua")
	os.WriteFile(hook, []byte(noteLua+`function on_unlock(ev) note("unlock") end`+"\n"), 0o644)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-arg", "out="+out)
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the first unlock", func() bool { b, _ := os.ReadFile(out); return string(b) == "unlock\n" })
	os.WriteFile(hook, []byte(noteLua+`
function on_unlock(ev) note("unlock") end
function on_knock(ev) note("knock " .. ev.port) end
`), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { return strings.Contains(p.stderr.String(), `msg="hook reloaded"`) })
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	want := fmt.Sprintf("unlock\nknock %d\nknock %d\nknock %d\nunlock\n", ports[0], ports[1], ports[2])
	waitFor(t, "on_knock calls", func() bool { b, _ := os.ReadFile(out); return string(b) == want })
}

// noteLua defines note(line): append a line to knock.args.out.
const noteLua = `local function note(line)
  local f = assert(io.open(knock.args.out, "a")); f:write(line .. "\n"); f:close()
end
`

// A reload of hooks/allow-client.lua keeps its service: the old file's on_stop("reload") runs
// after the new one's on_start has served the same port, and must not stop it.
func TestE2EReloadKeepsTheAllowClientService(t *testing.T) {
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	svc := freePort(t)
	p := startServer(t, "-p", portList(ports), "--hook", "hooks/allow-client.lua", "--hook-arg", fmt.Sprintf("port=%d", svc))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { return strings.Contains(p.stderr.String(), `msg="hook reloaded"`) })
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the grant", func() bool { return strings.Contains(p.stderr.String(), `msg="access granted"`) })
	if _, err := tryHTTPGet(svc); err != nil {
		t.Fatalf("the service is gone after a reload: %v\n%s", err, p.stderr.String())
	}
}

// Pending knock.after callbacks are bounded: past the bound, the one due soonest runs at once
// (it closes what an unlock opened, so the door shuts early rather than staying open), and the
// runtime holds no more than the bound.
func TestKnockAfterPendingIsBounded(t *testing.T) {
	h, hook, fx, logs := recordingRuntime(t, `
function on_unlock(ev)
  knock.after(tonumber(ev.door == "default" and 1000 - ev.port or 0), function() knock.revoke(ev.ip) end)
end
`)
	h.installHook(hook, false)
	h.maxAfters = 4
	// Unlock i schedules a callback due in 1000-port seconds: ports 10, 30, 20, 50, 40, 60, 5.
	ports := []uint16{10, 30, 20, 50, 40, 60, 5}
	var want []string
	type pend struct {
		due uint16
		ip  string
	}
	var model []pend // what should be pending, by hand: the soonest due (largest port) runs first
	for i, p := range ports {
		ip := fmt.Sprintf("192.0.2.%d", i+1)
		if len(model) == 4 {
			j := 0
			for k := range model {
				if model[k].due < model[j].due {
					j = k
				}
			}
			want = append(want, "revoke "+model[j].ip)
			model = slices.Delete(model, j, j+1)
		}
		model = append(model, pend{1000 - p, ip})
		h.dispatch(&event{kind: eventUnlock, from: key(ip), port: up(p)})
		h.runOverdue()
		if len(h.pending) > 4 {
			t.Fatalf("%d callbacks pending, the bound is 4", len(h.pending))
		}
	}
	if got := fx.recorded(); !slices.Equal(got, want) {
		t.Fatalf("ran early %q, want %q", got, want)
	}
	h.earlyLog = time.Time{}
	h.runOverdue()
	// The first early run is logged at once, the next two a second later (here: now) together.
	if !strings.Contains(logs.String(), `msg="knock.after: too many callbacks pending; those due soonest ran early" event=overload count=2 max_pending=4`) {
		t.Errorf("no overload line:\n%s", logs)
	}
	h.runEarly() // shutdown: the four still pending run, soonest first, none twice
	if got := fx.recorded(); len(got) != len(ports) {
		t.Fatalf("after shutdown %d callbacks ran, want %d: %q", len(got), len(ports), got)
	}
	h.closeAll()
}

// stuckLua is a call that gopher-lua cannot cancel: one string.find that backtracks for minutes.
const stuckLua = `string.find(string.rep('a', 30000), string.rep('a?', 30000) .. string.rep('a', 30000))`

// A hook call stuck inside a Lua built-in ignores its cancellation; stuckGrace after the hook
// timeout the server exits 1 saying so (it does not hang, not even on SIGTERM), and check exits
// 2 with one line.
func TestE2EStuckHookCallEndsTheProcess(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "stuck.lua")
	os.WriteFile(hook, []byte("function on_unlock(ev) "+stuckLua+" end\n"), 0o644)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook, "--hook-timeout", "1s")
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the unlock", func() bool { return strings.Contains(p.stderr.String(), "msg=unlock") })
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stuckGrace + 5*time.Second):
		t.Fatalf("the server still runs %v after a stuck call and SIGTERM:\n%s", stuckGrace+5*time.Second, p.stderr.String())
	}
	const want = `level=ERROR msg="a hook call is stuck inside a Lua built-in: it ignored its cancellation at --hook-timeout (1s) for 5s; exiting`
	if code := p.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(p.stderr.String(), want) {
		t.Fatalf("exit %d, want 1 and %s:\n%s", code, want, p.stderr.String())
	}

	top := filepath.Join(t.TempDir(), "stuck-top.lua")
	os.WriteFile(top, []byte(stuckLua+"\nfunction on_unlock(ev) end\n"), 0o644)
	_, stderr, code := runKK(t, "check", "--hook", top, "--hook-timeout", "1s", "-p", portList(ports))
	wantCheck := fmt.Sprintf("knockknock: hook %s: a hook call is stuck inside a Lua built-in: it ignored its cancellation at --hook-timeout (1s) for 5s\n", top)
	if code != 2 || stderr != wantCheck {
		t.Fatalf("check: exit %d, stderr %q; want 2 and %q", code, stderr, wantCheck)
	}
}

// Signals queued behind a slow reload: a SIGTERM wins over the SIGHUPs before it, which are
// not run one after another. The reload waits on a gate file, so that the signals surely come
// while it is under way, and only then does it end.
func TestE2ESIGTERMDoesNotWaitForQueuedReloads(t *testing.T) {
	dir := t.TempDir()
	gate, started := filepath.Join(dir, "gate"), filepath.Join(dir, "started")
	os.WriteFile(gate, nil, 0o644)
	hook := filepath.Join(dir, "slow.lua")
	os.WriteFile(hook, []byte(fmt.Sprintf(`
function on_start(reason)
  if reason == "reload" then os.execute("touch %s; while [ -e %s ]; do sleep 0.01; done") end
end
function on_unlock(ev) end
`, started, gate)), 0o644)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload under way", func() bool { _, err := os.Stat(started); return err == nil })
	for _, sig := range []os.Signal{syscall.SIGHUP, syscall.SIGHUP, syscall.SIGTERM} {
		p.cmd.Process.Signal(sig)
	}
	// The kernel has handed the signals to the server's handler once none is pending; the Go
	// runtime queues them for the main loop a moment later.
	waitFor(t, "the signals delivered", func() bool { return signalsPending(p.cmd.Process.Pid) == 0 })
	time.Sleep(200 * time.Millisecond)
	os.Remove(gate)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the server did not stop within 15s of SIGTERM:\n%s", p.stderr.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if n := strings.Count(p.stderr.String(), `msg="hook reloaded"`); n != 1 {
		t.Fatalf("%d reloads ran, want the one under way when SIGTERM came:\n%s", n, p.stderr.String())
	}
}

// signalsPending is the set of signals sent to a process and not yet delivered to it (ShdPnd
// in /proc/PID/status, Linux; 0 elsewhere).
func signalsPending(pid int) uint64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ShdPnd:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n
		}
	}
	return 0
}

// A call after a cancelled one is cancelled at its own timeout, not after the stuck grace the
// timer gave the first.
func TestCallAfterACancelledCallKeepsItsTimeout(t *testing.T) {
	c := testConfig(1000, 2000)
	c.hookTimeout = 200 * time.Millisecond
	proto, err := compileHook(c.hookName, []byte("function spin() while true do end end\nfunction on_unlock(ev) end\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := newHookRuntime(c, slog.New(slog.NewTextHandler(io.Discard, nil)), proto, &recordingEffects{})
	hook, err := h.load(proto)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		start := time.Now()
		err := h.call("spin", hook, hook.L.GetGlobal("spin").(*lua.LFunction))
		if took := time.Since(start); err == nil || took > time.Second {
			t.Fatalf("call %d: %v after %v, want cancelled after 200ms", i+1, err, took)
		}
	}
	h.closeAll()
}

// A periodic job (a knock.after callback that schedules itself again) runs in the newest hook
// only: the version a reload replaced finishes its pending callback, and schedules no more.
func TestE2EReloadStopsTheOldPeriodicJob(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "tick.lua")
	os.WriteFile(hook, []byte(`
local gen = tostring(math.random(1, 1000000000))
local function tick()
  knock.log("tick", { gen = gen })
  knock.after(0.1, tick)
end
function on_start() tick() end
function on_unlock(ev) end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook)
	const ended = `msg="knock.after from a hook a reload replaced: the callback will not run"`
	for i := range 2 {
		p.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "the reload", func() bool { return strings.Count(p.stderr.String(), `msg="hook reloaded"`) == i+1 })
	}
	// Each replaced version runs its pending tick, whose knock.after is refused: from then on
	// only the newest ticks.
	waitFor(t, "the end of both old jobs", func() bool { return strings.Count(p.stderr.String(), ended) == 2 })
	from := len(p.stderr.String())
	time.Sleep(time.Second)
	gens := map[string]bool{}
	for _, l := range strings.Split(p.stderr.String()[from:], "\n") {
		if strings.Contains(l, "msg=tick") {
			gens[fields(l)["gen"]] = true
		}
	}
	if len(gens) != 1 {
		t.Fatalf("after two reloads %d versions of the hook tick (want 1): %v\n%s", len(gens), gens, p.stderr.String())
	}
}

// The shutdown grace bounds the batch under way too: with 200 knock events of 20 ms each queued
// (4 s of work, one batch), SIGTERM ends the server about shutdownGrace later, saying how many
// events were left.
func TestE2EShutdownGraceCoversTheBatchUnderWay(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "busy.lua")
	os.WriteFile(hook, []byte(`
function on_knock(ev) local t = os.clock() while os.clock() - t < 0.02 do end end
function on_unlock(ev) end
`), 0o644)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", hook)
	for i := range 200 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		c.WriteToUDPAddrPort(nil, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ports[0]))
		c.Close()
	}
	// The server has read them all (the knock ports stop first at SIGTERM: what is unread then
	// never reaches the queue), and the batch is under way.
	waitFor(t, "the knocks read", func() bool { return udpUnread(ports[0]) == 0 })
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(shutdownGrace + 3*time.Second):
		t.Fatalf("still running %v after SIGTERM", shutdownGrace+3*time.Second)
	}
	if took := time.Since(start); took > shutdownGrace+time.Second {
		t.Errorf("stopped %v after SIGTERM, want about %v", took, shutdownGrace)
	}
	if !strings.Contains(p.stderr.String(), `msg="shutdown: queued hook events not handled" event=shutdown count=`) {
		t.Errorf("the events left are not logged:\n%s", p.stderr.String())
	}
}
