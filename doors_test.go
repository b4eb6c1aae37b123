package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Issue 9, end to end: doors, and knockknock as a drop-in for knockd (--knockd-config, which
// implies capture mode). Helpers come from capture_test.go (prefixed cap).

// capIptablesRule is the rule testdata/knockd.conf's openSSH adds for a client, as iptables -S
// prints it.
func capIptablesRule(ip string) string {
	return fmt.Sprintf("-A INPUT -s %s/32 -p tcp -m tcp --dport 22 -j ACCEPT", ip)
}

// Debian's sample knockd.conf, unchanged, served in a network namespace: knockd's knock client,
// from another namespace, opens door openSSH (its iptables rule for the client appears in the
// server's namespace) and closes it with closeSSH (the rule goes).
func TestDoorsKnockdConfInNetns(t *testing.T) {
	capNeedRoot(t, "ip", "knock", "iptables")
	if _, err := os.Stat("/sbin/iptables"); err != nil {
		t.Skip("SKIP: testdata/knockd.conf runs /sbin/iptables, which is absent")
	}
	n := capNewNet(t)
	rules := func() string {
		out, err := n.in(n.srv, "iptables", "-S", "INPUT").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables -S INPUT: %v\n%s", err, out)
		}
		return string(out)
	}
	if strings.Contains(rules(), capCli4) {
		t.Fatalf("a rule for %s before the knock:\n%s", capCli4, rules())
	}
	srv := startIn(t, n.in(n.srv, binPath, "serve", "--knockd-config", "testdata/knockd.conf"))
	knock := func(ports ...string) {
		if out, err := n.in(n.cli, append([]string{"knock", capSrv4}, ports...)...).CombinedOutput(); err != nil {
			t.Fatalf("knock %v: %v\n%s", ports, err, out)
		}
	}
	knock("7000", "8000", "9000")
	waitFor(t, "openSSH's rule for "+capCli4, func() bool { return strings.Contains(rules(), capIptablesRule(capCli4)) })
	t.Logf("after openSSH: %s", strings.TrimSpace(rules()))
	knock("9000", "8000", "7000")
	waitFor(t, "closeSSH to delete the rule", func() bool { return !strings.Contains(rules(), capCli4) })
	if root, _ := exec.Command("iptables", "-S", "INPUT").CombinedOutput(); strings.Contains(string(root), capCli4) {
		t.Fatalf("the namespace's command reached the host's iptables:\n%s", root)
	}
	capStop(t, srv) // and so the log is complete
	if n := capCount(srv, "knockd command", "status", "0"); n != 2 {
		t.Fatalf("%d knockd commands succeeded, want 2:\n%s", n, srv.stderr.String())
	}
	if u := capUnlocks(srv); strings.Join(u, ",") != "openSSH "+capCli4+",closeSSH "+capCli4 {
		t.Fatalf("unlocks %q, want openSSH then closeSSH from %s", u, capCli4)
	}
}

// A knockd.conf door with start_command, stop_command (and their _6 variants) and cmd_timeout:
// the start command runs at once with %IP% the client's address, the stop command cmd_timeout
// seconds later; an IPv6 client gets the _6 commands.
func TestDoorsKnockdStartAndStopCommands(t *testing.T) {
	capNeedRoot(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "commands")
	p := capPorts(t, 3)
	conf := filepath.Join(dir, "knockd.conf")
	now := "$(date +%s.%N)"
	os.WriteFile(conf, []byte(fmt.Sprintf(`[options]
	UseSyslog

[timed]
	sequence        = %d,%d:udp,%d
	seq_timeout     = 5
	tcpflags        = syn
	start_command   = echo start %%IP%% %s >> %s
	stop_command    = echo stop %%IP%% %s >> %s
	start_command_6 = echo start6 %%IP%% %s >> %s
	stop_command_6  = echo stop6 %%IP%% %s >> %s
	cmd_timeout     = 2
`, p[0], p[1], p[2], now, out, now, out, now, out, now, out)), 0o644)
	srv := startServer(t, "--knockd-config", conf)
	seq := capSpecs(t, capSeq("%d:tcp,%d:udp,%d:tcp", p[0], p[1], p[2]))
	capKnockFrom(t, "127.0.0.7", "127.0.0.1", seq)
	capKnockFrom(t, "::1", "::1", seq)
	lines := func() map[string]float64 {
		b, _ := os.ReadFile(out)
		m := map[string]float64{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(l); len(f) == 3 {
				m[f[0]+" "+f[1]], _ = strconv.ParseFloat(f[2], 64)
			}
		}
		return m
	}
	waitFor(t, "both start commands", func() bool { return len(lines()) == 2 })
	got := lines()
	if got["start 127.0.0.7"] == 0 || got["start6 ::1"] == 0 {
		t.Fatalf("start commands: %v, want start 127.0.0.7 and start6 ::1", got)
	}
	waitFor(t, "both stop commands", func() bool { return len(lines()) == 4 })
	got = lines()
	for _, c := range [][2]string{{"start 127.0.0.7", "stop 127.0.0.7"}, {"start6 ::1", "stop6 ::1"}} {
		gap := got[c[1]] - got[c[0]]
		if gap < 1.9 || gap > 3.5 {
			t.Errorf("%q ran %.2fs after %q, want cmd_timeout (2s)", c[1], gap, c[0])
		}
	}
	t.Logf("commands: %v", got)
	capStop(t, srv)
}

// Several clients (distinct 127/8 addresses and ::1) knock several doors at once, their knocks
// interleaved: the doors share their ports, in different orders. Each client unlocks the door it
// knocked, and no other.
func TestDoorsInterleavedClients(t *testing.T) {
	capNeedRoot(t)
	p := capPorts(t, 5)
	doors := map[string]string{
		"a": capSeq("%d:tcp,%d:udp,%d:tcp", p[0], p[1], p[2]),
		"b": capSeq("%d:tcp,%d:tcp,%d:udp", p[2], p[0], p[1]),
		"c": capSeq("%d:udp,%d:tcp,%d:tcp", p[1], p[2], p[0]),
		"d": capSeq("%d:udp,%d:tcp,%d:udp,%d:tcp", p[3], p[0], p[4], p[2]),
	}
	args := []string{"--capture", "-v", "--hook", capQuietHook(t)}
	for _, name := range []string{"a", "b", "c", "d"} {
		args = append(args, "--door", name+"="+doors[name])
	}
	srv := startServer(t, args...)
	type client struct{ ip, door string }
	clients := []client{{"127.0.0.11", "a"}, {"127.0.0.12", "b"}, {"127.0.0.13", "c"}, {"127.0.0.14", "d"},
		{"127.0.0.15", "a"}, {"127.0.0.16", "b"}, {"::1", "c"}, {"127.0.0.17", "d"}}
	for step := range 4 { // round robin, each round in another order
		for i := range clients {
			c := clients[(i+step*3)%len(clients)]
			seq := capSpecs(t, doors[c.door])
			if step < len(seq) {
				dst := "127.0.0.1"
				if c.ip == "::1" {
					dst = "::1"
				}
				capKnockFrom(t, c.ip, dst, seq[step:step+1])
			}
		}
	}
	waitFor(t, "every client's unlock", func() bool { return len(capUnlocks(srv)) >= len(clients) })
	time.Sleep(300 * time.Millisecond)
	want := map[string]bool{}
	for _, c := range clients {
		want[c.door+" "+c.ip] = true
	}
	got := capUnlocks(srv)
	for _, u := range got {
		if !want[u] {
			t.Errorf("unexpected unlock %q", u)
		}
		delete(want, u)
	}
	if len(want) > 0 || len(got) != len(clients) {
		t.Fatalf("unlocks %q; missing %v", got, want)
	}
	capStop(t, srv)
}

// knockd's one_time_sequences: a door's sequences come from a file, one a line. The sequence in
// use is used up on unlock ('#' written over the first character of its line, as knockd does),
// the next line's sequence opens the door next, and the used one no longer does. When the last
// is used, the door stays shut.
func TestDoorsOneTimeSequences(t *testing.T) {
	capNeedRoot(t)
	dir := t.TempDir()
	p := capPorts(t, 12)
	seqs := filepath.Join(dir, "sequences")
	opened := filepath.Join(dir, "opened")
	lines := []string{
		"# Used sequences start with #; keep a space before each unused one.",
		capSeq("#%d,%d,%d", p[0], p[1], p[2]),
		capSeq(" %d:udp,%d,%d:udp", p[3], p[4], p[5]),
		capSeq(" %d,%d:udp,%d", p[6], p[7], p[8]),
		capSeq("%d,%d,%d:udp", p[9], p[10], p[11]), // no space: its first digit is lost on use
	}
	os.WriteFile(seqs, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	conf := filepath.Join(dir, "knockd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("[onetime]\n\tone_time_sequences = %s\n\tseq_timeout = 5\n\tstart_command = echo %%IP%% >> %s\n", seqs, opened)), 0o644)
	srv := startServer(t, "--knockd-config", conf, "-v")
	knockd := func(s string) []portSpec { // knockd's syntax: a bare port is TCP
		specs, err := parsePortSpecs(strings.TrimSpace(strings.TrimPrefix(s, "#")), protoTCP)
		if err != nil {
			t.Fatal(err)
		}
		return specs
	}
	file := func() []string {
		b, _ := os.ReadFile(seqs)
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	unlocks := 0
	check := func(what string, seq []portSpec, opens bool) {
		t.Helper()
		capKnockFrom(t, "127.0.0.1", "127.0.0.1", seq)
		if !opens {
			time.Sleep(400 * time.Millisecond)
			if u := capUnlocks(srv); len(u) != unlocks {
				t.Fatalf("%s unlocked: %q", what, u)
			}
			return
		}
		unlocks++
		capWaitUnlocks(t, srv, unlocks, "onetime", "127.0.0.1")
	}
	check("the used sequence of line 2", knockd(lines[1]), false)
	check("line 3's sequence", knockd(lines[2]), true)
	waitFor(t, "line 3 used up", func() bool { return file()[2] == "#"+lines[2][1:] })
	waitFor(t, "the next sequence", func() bool { return capCount(srv, "next one-time sequence") == 1 })
	check("line 3's sequence again", knockd(lines[2]), false)
	check("line 4's sequence", knockd(lines[3]), true)
	waitFor(t, "line 4 used up", func() bool { return file()[3] == "#"+lines[3][1:] })
	waitFor(t, "the next sequence", func() bool { return capCount(srv, "next one-time sequence") == 2 })
	check("line 4's sequence again", knockd(lines[3]), false)
	check("line 5's sequence", knockd(lines[4]), true)
	waitFor(t, "line 5 used up, its first digit lost", func() bool { return file()[4] == "#"+lines[4][1:] })
	waitFor(t, "the warning that none is left", func() bool {
		return capCount(srv, "no one-time sequence left: the door stays shut until the file has new lines and knockknock restarts") == 1
	})
	check("line 5's sequence again", knockd(lines[4]), false)
	if got := file(); got[0] != lines[0] || got[1] != lines[1] {
		t.Fatalf("lines 1 and 2 changed: %q", got)
	}
	if b, _ := os.ReadFile(opened); string(b) != "127.0.0.1\n127.0.0.1\n127.0.0.1\n" {
		t.Fatalf("start_command ran %q, want three times for 127.0.0.1", b)
	}
	capStop(t, srv)
}
