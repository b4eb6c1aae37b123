package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// writeHook writes a hook file for a test and returns its path.
func writeHook(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hook.lua")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// logLines are a server's log lines that contain all of the given strings.
func logLines(log string, all ...string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		ok := l != ""
		for _, s := range all {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// The default hook with its service port taken: the knock ports stay open and the log says why;
// once the port is free, the next knock starts the service and only then closes the knock ports.
func TestE2EDefaultHookKeepsKnockPortsWhenTheServiceCannotStart(t *testing.T) {
	// A port from freePort, not one the kernel picks: once released, the server binds it, UDP
	// and TCP, and no connection of another test may have taken it from the ephemeral range.
	port := freePort(t)
	held, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	knocks := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(knocks), "--hook", "hooks/unlock.lua", "--hook-arg", fmt.Sprintf("port=%d", port))
	knockWith(t, "-p", portList(knocks), "127.0.0.1")
	waitFor(t, "the hook's warning", func() bool { return strings.Contains(p.stderr.String(), "the knock ports stay open") })
	logs := p.stderr.String()
	wantLines := []string{
		fmt.Sprintf(`level=ERROR msg="service not started" event=hook_error port=%d err="cannot listen on TCP port %d: address already in use (another process holds it)"`, port, port),
		fmt.Sprintf(`level=WARN msg="the knock ports stay open: the service did not start" event=hook port=%d`, port),
	}
	for _, want := range wantLines {
		if len(logLines(logs, want)) != 1 {
			t.Errorf("log lacks %q once:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "knock ports closed") {
		t.Errorf("the knock ports were closed although the service did not start:\n%s", logs)
	}
	for _, k := range knocks {
		if portFree(k) {
			t.Errorf("knock port %d is no longer bound", k)
		}
	}
	held.Close()
	knockWith(t, "-p", portList(knocks), "127.0.0.1")
	waitFor(t, "knock ports closed", func() bool { return strings.Contains(p.stderr.String(), `msg="knock ports closed"`) })
	logs = p.stderr.String()
	if started, closed := strings.Index(logs, `msg="service started"`), strings.Index(logs, `msg="knock ports closed"`); started < 0 || started > closed {
		t.Errorf("the service did not start before the knock ports closed:\n%s", logs)
	}
	if body := httpGet(t, port); !strings.HasPrefix(body, "Hello 127.0.0.1") {
		t.Errorf("service answered %q", body)
	}
	for _, k := range knocks {
		if !portFree(k) {
			t.Errorf("knock port %d still bound after the service started", k)
		}
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// knock.serve on a port served already applies a new proto and allow mode.
func TestE2EServeAppliesChangedSettings(t *testing.T) {
	port := freePort(t)
	hook := writeHook(t, `
local knock = require("knock")
local port = knock.arg("port", { type = "port" })
local n = 0
function on_unlock(ev)
  n = n + 1
  if n == 1 then assert(knock.serve{ port = port, proto = "udp" }) end
  if n == 2 then assert(knock.serve{ port = port, proto = "both", allow = "clients" }) end
  if n == 3 then knock.allow(ev.ip, 60) end
  if n == 4 then assert(knock.serve{ port = port, proto = "both", allow = "clients" }) end
  knock.log("unlock handled", { n = n })
end
`)
	knocks := []uint16{freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(knocks), "--hook", hook, "--hook-arg", fmt.Sprintf("port=%d", port))
	unlock := func(n int) {
		t.Helper()
		knockWith(t, "-p", portList(knocks), "127.0.0.1")
		waitFor(t, fmt.Sprintf("unlock %d handled", n), func() bool {
			return len(logLines(p.stderr.String(), `msg="unlock handled"`, fmt.Sprintf("n=%d", n))) == 1
		})
	}
	unlock(1)
	if reply := udpAsk(t, port); !strings.HasPrefix(reply, "Hello 127.0.0.1") {
		t.Fatalf("UDP reply %q", reply)
	}
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		t.Fatal("proto=udp accepts TCP connections")
	}
	unlock(2)
	if len(logLines(p.stderr.String(), `msg="service changed"`, fmt.Sprintf("port=%d proto=both allow=clients", port))) != 1 {
		t.Fatalf("no service changed line:\n%s", p.stderr.String())
	}
	// A listener: the handshake completes (and allow mode resets the connection at once, which
	// the dial may already see), where a port without one refuses it.
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		conn.Close()
	} else if errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("proto changed to both, but no TCP listener: %v", err)
	}
	if _, err := tryHTTPGet(port); err == nil {
		t.Fatal("allow=clients let a client that was not granted through")
	}
	if reply := udpAskTimeout(t, port, 300*time.Millisecond); reply != "" {
		t.Fatalf("allow=clients answered UDP from a client that was not granted: %q", reply)
	}
	unlock(3)
	if body := httpGet(t, port); !strings.HasPrefix(body, "Hello 127.0.0.1") {
		t.Fatalf("granted client got %q", body)
	}
	unlock(4) // the same settings again: nothing changes
	if n := len(logLines(p.stderr.String(), "event=serve")); n != 2 {
		t.Fatalf("%d service lines for two changes and a repeat:\n%s", n, p.stderr.String())
	}
	p.stop(t)
}

// A change that cannot be applied returns nil, err and leaves the service as it was.
func TestLuaServeChangeThatFailsKeepsTheOldService(t *testing.T) {
	// The service binds UDP on the port the test holds for TCP: a port from freePort, free for
	// UDP, not one the kernel picks, which another socket may hold for UDP.
	port := int(freePort(t))
	held, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	s := mustLuaServer(t, unlockStub+fmt.Sprintf(`
first = knock.serve{port=%d, proto="udp"}
ok, err = knock.serve{port=%d, proto="both"}
`, port, port), nil)
	if s.global("first") != lua.LTrue || s.global("ok") != lua.LNil ||
		s.global("err").String() != fmt.Sprintf("cannot listen on TCP port %d: address already in use (another process holds it); the service goes on with its previous settings", port) {
		t.Fatalf("serve returned %v, then %v, %v", s.global("first"), s.global("ok"), s.global("err"))
	}
	if reply := udpAsk(t, uint16(port)); !strings.HasPrefix(reply, "Hello 127.0.0.1") {
		t.Fatalf("the old UDP service is gone: %q", reply)
	}
}

// recordHook writes one line per event: kind, ip, port, time and elapsed, for the tests below.
const recordHook = `
local knock = require("knock")
local function record(kind, ev)
  local f = assert(io.open(knock.arg("out"), "a"))
  f:write(string.format("%s ip=%s port=%d time=%.9f elapsed=%.9f reason=%s\n", kind, ev.ip, ev.port, ev.time, ev.elapsed, tostring(ev.reason)))
  f:close()
end
function on_knock(ev) record("knock", ev) end
function on_fail(ev) record("fail", ev) end
function on_unlock(ev)
  record("unlock", ev)
  knock.log("hook saw", { ip = ev.ip, elapsed = ev.elapsed })
  if ev.ip == "127.0.0.1" and knock.args.gate then
    knock.exec("sh", "-c", "while [ ! -e " .. knock.args.gate .. " ]; do sleep 0.01; done; sleep 0.6")
  end
end
`

// ev.elapsed is the time from the attempt's first knock in on_knock, on_fail and on_unlock.
func TestE2EElapsedInEveryHandler(t *testing.T) {
	out := recording(filepath.Join(t.TempDir(), "events"))
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(ports), "--hook", writeHook(t, recordHook), "--hook-arg", "out="+string(out))
	knockWith(t, "-d", "150ms", "-p", portList(ports), "::1")
	knockWith(t, "-d", "150ms", "-p", portList([]uint16{ports[0], ports[2]}), "::1") // a wrong port in an attempt
	waitFor(t, "the failure", func() bool { return out.count("fail") == 1 })
	type want struct {
		kind     string
		port     uint16
		min, max float64
	}
	cases := []want{
		{"knock", ports[0], 0, 0}, {"knock", ports[1], 0.14, 0.6}, {"knock", ports[2], 0.29, 0.9}, {"unlock", ports[2], 0.29, 0.9},
		{"knock", ports[0], 0, 0}, {"knock", ports[2], 0.14, 0.6}, {"fail", ports[2], 0.14, 0.6},
	}
	lines := out.lines()
	if len(lines) != len(cases) {
		t.Fatalf("%d events, want %d:\n%s", len(lines), len(cases), strings.Join(lines, "\n"))
	}
	for i, c := range cases {
		f := fields(lines[i])
		elapsed, err := strconv.ParseFloat(f["elapsed"], 64)
		if !strings.HasPrefix(lines[i], c.kind+" ") || f["port"] != strconv.Itoa(int(c.port)) || err != nil || elapsed < c.min || elapsed > c.max {
			t.Errorf("event %d: %s, want %s on port %d with elapsed from %v to %v", i, lines[i], c.kind, c.port, c.min, c.max)
		}
	}
	p.stop(t)
}

// The unlock line carries the final knock's receive time and elapsed in seconds as a number, as
// the hook's own line does; the stopped line's latencies have two significant digits.
func TestE2EUnlockLineTimeElapsedAndLatency(t *testing.T) {
	out := recording(filepath.Join(t.TempDir(), "events"))
	ports := []uint16{freePort(t), freePort(t)}
	gate := filepath.Join(t.TempDir(), "gate")
	p := startServer(t, "-p", portList(ports), "--hook", writeHook(t, recordHook), "--hook-arg", "out="+string(out), "--log-format", "json",
		"--hook-arg", "gate="+gate)
	// 127.0.0.1's on_unlock waits for the gate, then 0.6 s: ::1's unlock, knocked meanwhile,
	// waits in the queue at least that long.
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the first unlock's call", func() bool { return out.count("unlock") == 1 })
	knockWith(t, "-p", portList(ports), "::1")
	os.WriteFile(gate, nil, 0o644)
	waitFor(t, "both unlocks", func() bool { return out.count("unlock") == 2 })
	p.stop(t)

	evTime := map[string]float64{}
	for _, l := range out.lines() {
		if f := fields(l); strings.HasPrefix(l, "unlock ") {
			evTime[f["ip"]], _ = strconv.ParseFloat(f["time"], 64)
		}
	}
	var unlockElapsed, hookElapsed any
	var waited float64 // from ::1's final knock to its hook's line
	var stopped map[string]any
	for _, line := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		stamp, err := time.Parse(time.RFC3339Nano, rec["time"].(string))
		if err != nil {
			t.Fatalf("time %v: %v", rec["time"], err)
		}
		switch {
		case rec["event"] == "unlock" && rec["ip"] == "::1":
			unlockElapsed = rec["elapsed"]
			if d := float64(stamp.UnixNano())/1e9 - evTime["::1"]; d < -0.002 || d > 0.002 {
				t.Errorf("the unlock line is stamped %.3fs after the final knock (a second-long hook call before it): %s", d, line)
			}
		case rec["msg"] == "hook saw" && rec["ip"] == "::1":
			hookElapsed = rec["elapsed"]
			if waited = float64(stamp.UnixNano())/1e9 - evTime["::1"]; waited < 0.5 {
				t.Errorf("the hook's line is only %.3fs after the knock: the test did not make it wait", waited)
			}
		case rec["msg"] == "stopped":
			stopped = rec
		}
	}
	if e, ok := unlockElapsed.(float64); !ok || e <= 0 || e > 2 || hookElapsed != unlockElapsed {
		t.Errorf("elapsed on the unlock line %#v, on the hook's line %#v: want the same number of seconds", unlockElapsed, hookElapsed)
	}
	for _, k := range []string{"hook_latency_p50", "hook_latency_p99"} {
		s, _ := stopped[k].(string)
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || significantDigits(s) > 2 {
			t.Errorf("%s = %q: want a duration with at most two significant digits", k, s)
		}
	}
	// The second unlock waited in the queue until just before its hook's line; the histogram
	// is exact to within 25 %.
	w := time.Duration(waited * 1e9)
	if p99, _ := time.ParseDuration(stopped["hook_latency_p99"].(string)); p99 < 500*time.Millisecond || p99 < w-50*time.Millisecond || p99 > w*5/4+50*time.Millisecond {
		t.Errorf("hook_latency_p99 = %v: the second unlock waited %v", p99, w.Round(time.Millisecond))
	}
}

// significantDigits counts the significant digits of a duration string such as "1.2s" or "120µs".
func significantDigits(s string) int {
	digits := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
	return len(strings.TrimRight(strings.TrimLeft(digits, "0"), "0"))
}

func TestRoundUp2(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{
		{0, 0}, {7, 7}, {99, 99}, {100, 100}, {101, 110}, {2147483648, 2200000000}, {114688, 120000},
		{5242880, 5300000}, {1 << 62, 4700000000000000000}, {9223372036854775807, 9223372036854775807},
	} {
		if got := roundUp2(c.in); got != c.want {
			t.Errorf("roundUp2(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}

// Bad uses of the knock module at a hook's top level stop check and the server's start with one
// line, exit 2.
func TestE2EHookTopLevelErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"close_knock_ports", "knock.close_knock_ports()",
			"hook.lua:2: knock.close_knock_ports: only inside a handler (on_start, on_unlock, ...), not at the hook's top level: the knock ports open after the hook has loaded"},
		{"open_knock_ports", "knock.open_knock_ports()",
			"hook.lua:2: knock.open_knock_ports: only inside a handler (on_start, on_unlock, ...), not at the hook's top level: the knock ports open after the hook has loaded"},
		{"log level", `knock.log("hi", { level = "shout" })`, `hook.lua:2: bad argument #2 to log (level "shout": use debug, info, warn or error)`},
		{"log level not a string", `knock.log("hi", { level = 3 })`, `hook.lua:2: bad argument #2 to log (level 3: use debug, info, warn or error)`},
		{"arg", `knock.arg("port", { type = "port" })`, "hook.lua:2: --hook-arg port=2222x: want a port number from 1 to 65535"},
	}
	ports := portList([]uint16{freePort(t), freePort(t)})
	for _, c := range cases {
		hook := writeHook(t, "function on_unlock(ev) end\n"+c.src+"\n")
		for _, cmd := range []string{"check", "serve"} {
			_, stderr, code := runKK(t, cmd, "-p", ports, "--hook", hook, "--hook-arg", "port=2222x")
			want := "knockknock: hook " + hook + ": " + filepath.Dir(hook) + "/" + c.want + "\n"
			if code != 2 || stderr != want {
				t.Errorf("%s, %s: exit %d, stderr\n%q\nwant exit 2 and\n%q", c.name, cmd, code, stderr, want)
			}
		}
	}
}

// close_knock_ports and open_knock_ports in a handler work, and log only what they changed.
func TestLuaKnockPortsLogOnlyChanges(t *testing.T) {
	s := mustLuaServer(t, unlockStub, nil)
	if err := s.openKnockPorts(); err != nil {
		t.Fatal(err)
	}
	port := s.cfg.doors[0].seq[0].port
	call(t, s, "knock.close_knock_ports(); knock.close_knock_ports()")
	if !portFree(port) {
		t.Fatal("knock port still bound after close_knock_ports")
	}
	call(t, s, "a = knock.open_knock_ports(); b = knock.open_knock_ports()")
	if portFree(port) || s.global("a") != lua.LTrue || s.global("b") != lua.LTrue {
		t.Fatalf("open_knock_ports returned %v, %v; bound: %v", s.global("a"), s.global("b"), !portFree(port))
	}
	logs := s.logs.String()
	if n, m := strings.Count(logs, `msg="knock ports closed"`), strings.Count(logs, `msg="knock ports open"`); n != 1 || m != 1 {
		t.Fatalf("%d closed and %d open lines for one change each:\n%s", n, m, logs)
	}
}

func TestLuaLogLevels(t *testing.T) {
	s := mustLuaServer(t, unlockStub, nil)
	for _, c := range []struct{ level, want string }{
		{"nil", "level=INFO"}, {`"debug"`, ""}, {`"info"`, "level=INFO"}, {`"warn"`, "level=WARN"}, {`"error"`, "level=ERROR"},
		{`"WARN"`, "level=WARN"},
		{`"shout"`, `bad argument #2 to log (level "shout": use debug, info, warn or error)`},
		{`"warning"`, `bad argument #2 to log (level "warning": use debug, info, warn or error)`},
		{`"INFO+2"`, `bad argument #2 to log (level "INFO+2": use debug, info, warn or error)`},
		{"true", `bad argument #2 to log (level true: use debug, info, warn or error)`},
	} {
		before := len(s.logs.String())
		err := callErr(s, fmt.Sprintf(`knock.log("m", { level = %s, k = 1 })`, c.level))
		logged := s.logs.String()[before:]
		switch {
		case strings.HasPrefix(c.want, "bad argument"):
			if err == nil || !strings.Contains(err.Error(), c.want) || logged != "" {
				t.Errorf("level %s: error %v, logged %q; want the error %q", c.level, err, logged, c.want)
			}
		case c.want == "": // debug: below the logger's level
			if err != nil || logged != "" {
				t.Errorf("level %s: error %v, logged %q", c.level, err, logged)
			}
		default:
			if err != nil || !strings.Contains(logged, c.want+" msg=") || !strings.Contains(logged, "k=1") {
				t.Errorf("level %s: error %v, logged %q, want %s", c.level, err, logged, c.want)
			}
		}
	}
}

func TestLuaArg(t *testing.T) {
	cases := []struct {
		value, opts string
		want        string // the result as Lua prints it, or the error
	}{
		{"absent", `{ type = "port", default = 22 }`, "22"},
		{"absent", `{ type = "port" }`, "nil"},
		{"absent", ``, "nil"},
		{"absent", `{ default = "x" }`, "x"},
		{"2222", `{ type = "port", default = 22 }`, "2222"},
		{"2222x", `{ type = "port", default = 22 }`, "--hook-arg a=2222x: want a port number from 1 to 65535"},
		{"0", `{ type = "port" }`, "--hook-arg a=0: want a port number from 1 to 65535"},
		{"65536", `{ type = "port" }`, "--hook-arg a=65536: want a port number from 1 to 65535"},
		{"", `{ type = "port" }`, "--hook-arg a=: want a port number from 1 to 65535"},
		{"2222", `{ type = "port", min = 1024 }`, "2222"},
		{"22", `{ type = "port", min = 1024 }`, "--hook-arg a=22: want a port number from 1024 to 65535"},
		{"1.5", `{ type = "number" }`, "1.5"},
		{"-3", `{ type = "number" }`, "-3"},
		{"1e3", `{ type = "number" }`, "--hook-arg a=1e3: want a number"},
		{"NaN", `{ type = "number" }`, "--hook-arg a=NaN: want a number"},
		{"0x10", `{ type = "number" }`, "--hook-arg a=0x10: want a number"},
		{"1.5", `{ type = "number", whole = true }`, "--hook-arg a=1.5: want a whole number"},
		{"2000", `{ type = "number", min = 1, max = 1024, whole = true }`, "--hook-arg a=2000: want a whole number from 1 to 1024"},
		{"-1", `{ type = "number", min = 0 }`, "--hook-arg a=-1: want a number from 0"},
		{"11", `{ type = "number", max = 10 }`, "--hook-arg a=11: want a number up to 10"},
		{"1.5", `{ type = "duration" }`, "1.5"},
		{"250ms", `{ type = "duration" }`, "0.25"},
		{"2m", `{ type = "duration", whole = true }`, "120"},
		{"1.5", `{ type = "duration", whole = true, min = 1, max = 60 }`, "--hook-arg a=1.5: want a whole number of seconds from 1 to 60"},
		{"soon", `{ type = "duration" }`, "--hook-arg a=soon: want a duration: seconds (30, 1.5) or with a unit (250ms, 2m)"},
		{"-5", `{ type = "duration" }`, "--hook-arg a=-5: want a duration: seconds (30, 1.5) or with a unit (250ms, 2m)"},
		{"0", `{ type = "duration", min = 0.5, max = 60 }`, "--hook-arg a=0: want a duration: seconds (30, 1.5) or with a unit (250ms, 2m) from 0.5 to 60 seconds"},
		{"anything at all", `{ type = "string", default = "x" }`, "anything at all"},
		{"", `{ default = "x" }`, ""},
		{"22", `{ type = "integer" }`, `bad argument #2 to arg (type "integer": use string, number, port or duration)`},
		{"22", `{ type = "number", min = "1" }`, "bad argument #2 to arg (min must be a number)"},
	}
	for _, c := range cases {
		s := mustLuaServer(t, unlockStub, func(cfg *config) {
			cfg.hookArgs = nil
			if c.value != "absent" {
				cfg.hookArgs = [][2]string{{"a", "ignored: the last one counts"}, {"a", c.value}}
			}
		})
		opts := ""
		if c.opts != "" {
			opts = ", " + c.opts
		}
		err := callErr(s, fmt.Sprintf(`v = tostring(knock.arg("a"%s))`, opts))
		got := ""
		if err != nil {
			got = err.Error()
			if _, msg, ok := strings.Cut(got, ":1: "); ok { // the position of the call
				got = msg
			}
		} else {
			got = s.global("v").String()
		}
		if got != c.want {
			t.Errorf("knock.arg(%q%s) with a=%q: %q, want %q", "a", opts, c.value, got, c.want)
		}
	}
}

// A malformed argument to a shipped hook stops check, and the server's start, with one line.
func TestE2EShippedHooksRejectMalformedArgs(t *testing.T) {
	cases := []struct {
		hook, arg, want string
	}{
		{"hooks/nftables.lua", "port=2222x", "--hook-arg port=2222x: want a port number from 1 to 65535"},
		{"hooks/nftables.lua", "seconds=1.5", "--hook-arg seconds=1.5: want a whole number of seconds from 1 to 31536000"},
		{"hooks/iptables.lua", "port=2222x", "--hook-arg port=2222x: want a port number from 1 to 65535"},
		{"hooks/iptables.lua", "seconds=1.5", "--hook-arg seconds=1.5: want a whole number of seconds from 1 to 31536000"},
		{"hooks/iptables.lua", "tables=0", "--hook-arg tables=0: want a whole number from 1 to 1024"},
		{"hooks/unlock.lua", "port=8080x", "--hook-arg port=8080x: want a port number from 1 to 65535"},
		{"hooks/allow-client.lua", "seconds=soon", "--hook-arg seconds=soon: want a duration: seconds (30, 1.5) or with a unit (250ms, 2m) from 0.001 to 31536000 seconds"},
		{"hooks/ssh-doors.lua", "hours=1.5", "--hook-arg hours=1.5: want a whole number from 1 to 8760"},
	}
	for _, c := range cases {
		args := []string{"--hook", c.hook, "--hook-arg", c.arg}
		if c.hook == "hooks/ssh-doors.lua" {
			args = append(args, "--door", "openSSH=7000,8000", "--door", "closeSSH=8000,7000")
		}
		_, stderr, code := runKK(t, append([]string{"check"}, args...)...)
		name, _, _ := strings.Cut(c.arg, "=")
		at := fmt.Sprintf("%s:%d: ", c.hook, lineOf(t, c.hook, `knock.arg("`+name+`"`))
		if want := "knockknock: hook " + c.hook + ": " + at + c.want + "\n"; code != 2 || stderr != want {
			t.Errorf("check %v: exit %d, stderr %q; want exit 2 and %q", args, code, stderr, want)
		}
	}
	// Well-formed values load; nothing is applied by check.
	for _, args := range [][]string{
		{"--hook", "hooks/nftables.lua", "--hook-arg", "port=2222", "--hook-arg", "seconds=2m"},
		{"--hook", "hooks/iptables.lua", "--hook-arg", "port=2222", "--hook-arg", "seconds=45", "--hook-arg", "tables=8"},
	} {
		if stdout, stderr, code := runKK(t, append([]string{"check"}, args...)...); code != 0 {
			t.Errorf("check %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	// The server's start stops the same way, before it binds anything.
	_, stderr, code := runKK(t, "-p", portList([]uint16{freePort(t), freePort(t)}), "--hook", "hooks/nftables.lua", "--hook-arg", "seconds=1.5")
	at := fmt.Sprintf("hooks/nftables.lua:%d: ", lineOf(t, "hooks/nftables.lua", `knock.arg("seconds"`))
	if want := "knockknock: hook hooks/nftables.lua: " + at + "--hook-arg seconds=1.5: want a whole number of seconds from 1 to 31536000\n"; code != 2 || stderr != want {
		t.Errorf("serve: exit %d, stderr %q", code, stderr)
	}
}

// lineOf is the number of the first line of a file that contains s.
func lineOf(t *testing.T, path, s string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%s has no line with %q", path, s)
	return 0
}

// The built-in service logs the UDP replies it could not send, at most a line a second.
func TestE2EServiceLogsUDPReplyErrors(t *testing.T) {
	port := freePort(t)
	hook := writeHook(t, `
local knock = require("knock")
function on_start()
  -- A greeting larger than a UDP datagram can be: every reply fails.
  assert(knock.serve{ port = knock.arg("port", { type = "port" }), proto = "udp", greeting = string.rep("x", 70000) })
end
function on_unlock(ev) end
`)
	p := startServer(t, "-p", portList([]uint16{freePort(t), freePort(t)}), "--hook", hook, "--hook-arg", fmt.Sprintf("port=%d", port))
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 50 {
		conn.Write([]byte("hi"))
	}
	want := fmt.Sprintf(`level=WARN msg="service: UDP reply not sent" event=service_error port=%d ip=127.0.0.1 err=`, port)
	waitFor(t, "the error line", func() bool { return len(logLines(p.stderr.String(), want)) > 0 })
	time.Sleep(1100 * time.Millisecond)
	conn.Write([]byte("hi"))
	waitFor(t, "the next second's line", func() bool { return len(logLines(p.stderr.String(), want)) > 1 })
	lines := logLines(p.stderr.String(), want)
	if len(lines) > 3 || !strings.Contains(lines[0], "message too long") || !strings.Contains(lines[len(lines)-1], "errors_not_logged=") {
		t.Fatalf("%d lines for 51 failed replies in two seconds, want one a second with a count:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	p.stop(t)
}

// os.exit in a hook is a Lua error, not the end of the process: at the top level it stops check
// and the server's start with one line, exit 2; in a handler the call fails, is logged, and the
// server goes on serving (and stops cleanly, running on_stop).
func TestE2EHookOSExitIsAnError(t *testing.T) {
	const msg = "os.exit is not available in a hook: return from the handler, or call error() to fail it"
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	for _, src := range []string{"os.exit(0)", "os.exit(7)", "require('os').exit()", "os.exit(true, true)"} {
		hook := writeHook(t, "function on_unlock(ev) end\n"+src+"\n")
		want := "knockknock: hook " + hook + ": " + hook + ":2: " + msg + "\n"
		for _, cmd := range []string{"check", "serve"} {
			stdout, stderr, code := runKK(t, cmd, "-p", portList(ports), "--hook", hook)
			if code != 2 || stderr != want || stdout != "" {
				t.Errorf("%s with %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", cmd, src, code, stdout, stderr, want)
			}
		}
	}
	hook := writeHook(t, `local knock = require("knock")
local n = 0
function on_unlock(ev)
  n = n + 1
  if n == 1 then os.exit(7) end
  knock.log("unlock number " .. n)
end
function on_stop(why) knock.log("on_stop ran: " .. why) end
`)
	p := startServer(t, "-p", portList(ports), "--hook", hook)
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	failed := `level=ERROR msg="hook failed" event=hook_error hook=on_unlock err="` + hook + `:5: ` + msg + `"`
	waitFor(t, "the failed on_unlock", func() bool { return strings.Contains(p.stderr.String(), failed) })
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	waitFor(t, "the second unlock", func() bool { return strings.Contains(p.stderr.String(), `msg="unlock number 2"`) })
	if code := p.stop(t); code != 0 {
		t.Errorf("the server exited %d, want 0", code)
	}
	logs := p.stderr.String()
	for _, want := range []string{`msg="on_stop ran: shutdown"`, `msg=stopped event=stopped`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
}

// math.random follows Lua 5.1, with its argument errors as Lua errors: gopher-lua's own panicked
// in Go on an empty interval, which cost the hook its state (and its globals).
func TestLuaMathRandom(t *testing.T) {
	s := mustLuaServer(t, unlockStub, nil)
	for _, c := range []struct{ code, err string }{
		{`local x = math.random(); assert(x >= 0 and x < 1)`, ""},
		{`for _ = 1, 200 do local x = math.random(3); assert(x >= 1 and x <= 3 and x == math.floor(x)) end`, ""},
		{`for _ = 1, 200 do local x = math.random(-2, 2); assert(x >= -2 and x <= 2) end`, ""},
		{`assert(math.random(5, 5) == 5)`, ""},
		{`math.random(0)`, "bad argument #1 to random (interval is empty)"},
		{`math.random(3, 1)`, "bad argument #2 to random (interval is empty)"},
		{`math.random(1, 2^60)`, "bad argument #2 to random (interval is too large)"},
		{`math.random(-2^63, 2^63)`, "bad argument #1 to random (interval is too large)"},
		{`math.random(1e300)`, "bad argument #1 to random (interval is too large)"},
		{`math.random(0/0)`, "bad argument #1 to random (interval is too large)"},
		{`for _ = 1, 100 do local x = math.random(2.7); assert(x == 1 or x == 2) end`, ""},
		{`math.random(1, 2, 3)`, "wrong number of arguments to 'random'"},
		{`math.random("x")`, "bad argument #1 to random (number expected, got string)"},
	} {
		err := callErr(s, c.code)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.code, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "panic")):
			t.Errorf("%s: error %v, want %q", c.code, err, c.err)
		}
	}
	s.hook.L.SetGlobal("kept", lua.LString("yes"))
	callErr(s, `math.random(0)`)
	if got := s.global("kept"); got.String() != "yes" {
		t.Fatalf("after math.random(0) the hook's globals are gone: kept = %v", got)
	}
}

// io.popen is refused: a read from it blocks in Go, out of the hook timeout's reach.
func TestE2EHookIOPopenIsAnError(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "popen.lua")
	os.WriteFile(hook, []byte("local f = io.popen('sleep 8')\nfunction on_unlock(ev) end\n"), 0o644)
	_, stderr, code := runKK(t, "check", "--hook", hook)
	want := fmt.Sprintf("knockknock: hook %s: %s:1: io.popen is not available in a hook: use knock.exec, which the hook timeout can cancel\n", hook, hook)
	if code != 2 || stderr != want {
		t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, want)
	}
}
