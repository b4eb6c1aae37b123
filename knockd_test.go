package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tcp builds a sequence of TCP knocks.
func tcp(ports ...uint16) []portSpec {
	var s []portSpec
	for _, p := range ports {
		s = append(s, portSpec{p, protoTCP})
	}
	return s
}

// doorDiff compares two doors field by field and describes each difference.
func doorDiff(got, want door) []string {
	var d []string
	check := func(field string, g, w any) {
		if fmt.Sprint(g) != fmt.Sprint(w) {
			d = append(d, fmt.Sprintf("%s = %q, want %q", field, fmt.Sprint(g), fmt.Sprint(w)))
		}
	}
	check("name", got.name, want.name)
	check("line", got.line, want.line)
	check("seq", got.seq, want.seq)
	check("timeout", got.timeout, want.timeout)
	check("seqTimeout", got.seqTimeout, want.seqTimeout)
	check("tcpFlags", got.tcpFlags, want.tcpFlags)
	check("target", got.target, want.target)
	check("oneTime", got.oneTime, want.oneTime)
	check("action.start", got.action.start, want.action.start)
	check("action.start6", got.action.start6, want.action.start6)
	check("action.hasStart6", got.action.hasStart6, want.action.hasStart6)
	check("action.stop", got.action.stop, want.action.stop)
	check("action.stop6", got.action.stop6, want.action.stop6)
	check("action.hasStop6", got.action.hasStop6, want.action.hasStop6)
	check("action.cmdTimeout", got.action.cmdTimeout, want.action.cmdTimeout)
	if got.target != want.target { // fmt hides the difference between invalid and zero values
		d = append(d, fmt.Sprintf("target = %#v, want %#v", got.target, want.target))
	}
	return d
}

// checkConfig compares a parsed configuration with the one wanted, field by field.
func checkConfig(t *testing.T, got, want *knockdConfig) {
	t.Helper()
	if got.useSyslog != want.useSyslog || got.logFile != want.logFile || got.pidFile != want.pidFile || got.iface != want.iface {
		t.Errorf("options = {syslog %v, log %q, pid %q, iface %q}, want {syslog %v, log %q, pid %q, iface %q}",
			got.useSyslog, got.logFile, got.pidFile, got.iface, want.useSyslog, want.logFile, want.pidFile, want.iface)
	}
	if len(got.doors) != len(want.doors) {
		t.Fatalf("%d doors, want %d", len(got.doors), len(want.doors))
	}
	for i := range want.doors {
		for _, diff := range doorDiff(got.doors[i], want.doors[i]) {
			t.Errorf("door %d (%s): %s", i, want.doors[i].name, diff)
		}
	}
}

// knockdDoor is a door with knockd's defaults, as the parser completes it.
func knockdDoor(name string, line int, seq []portSpec, start, stop string) door {
	return door{
		name: name, line: line, seq: seq,
		timeout: 25 * time.Second, seqTimeout: 25 * time.Second, tcpFlags: defaultTCPFlags,
		action: doorAction{start: start, start6: start, stop: stop, stop6: stop, cmdTimeout: 10 * time.Second},
	}
}

func withSeqTimeout(d door, s time.Duration) door {
	d.timeout, d.seqTimeout = s, s
	return d
}

func TestDebianKnockdConf(t *testing.T) {
	cfg, err := parseKnockdConfig(readTestdata(t, "knockd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	syn := tcpFlagRule{set: tcpSYN}
	synDoor := func(name string, line int, seq []portSpec, cmd string) door {
		d := withSeqTimeout(knockdDoor(name, line, seq, cmd, ""), 5*time.Second)
		d.tcpFlags = syn
		return d
	}
	checkConfig(t, cfg, &knockdConfig{useSyslog: true, doors: []door{
		synDoor("openSSH", 4, tcp(7000, 8000, 9000), "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"),
		synDoor("closeSSH", 10, tcp(9000, 8000, 7000), "/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"),
		synDoor("openHTTPS", 16, tcp(12345, 54321, 24680, 13579), "/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%"),
	}})
}

func TestKnockdManPageExamples(t *testing.T) {
	const (
		smtpAdd  = "/usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT"
		smtpDel  = "/usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT"
		smtpAdd6 = "/usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT"
		smtpDel6 = "/usr/sbin/ip6tables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT"
		seqFile  = "/etc/knockd/smtp_sequences"
		logFile  = "/var/log/knockd.log"
	)
	ex1 := func(name string, line int, seq []portSpec, cmd string) door {
		d := withSeqTimeout(knockdDoor(name, line, seq, cmd, ""), 10*time.Second)
		d.tcpFlags = tcpFlagRule{set: tcpSYN}
		return d
	}
	ex2 := withSeqTimeout(knockdDoor("opencloseSSH", 4, []portSpec{up(2222), {3333, protoTCP}, up(4444)},
		"/usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT",
		"/usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn -j ACCEPT"), 15*time.Second)
	ex2.tcpFlags = tcpFlagRule{set: tcpSYN | tcpACK}
	ex2.action.cmdTimeout = 5 * time.Second

	ex3 := withSeqTimeout(knockdDoor("opencloseSMTP", 4, nil, smtpAdd, smtpDel), 15*time.Second)
	ex3.oneTime = seqFile
	ex3.tcpFlags = tcpFlagRule{set: tcpFIN, clear: tcpACK}
	ex3.action.cmdTimeout = 5 * time.Second

	ex4 := ex3
	ex4.action.start6, ex4.action.hasStart6 = smtpAdd6, true
	ex4.action.stop6, ex4.action.hasStop6 = smtpDel6, true

	for file, doors := range map[string][]door{
		"knockd-man-1.conf": {
			ex1("openSSH", 4, tcp(7000, 8000, 9000), "/sbin/iptables -A INPUT -s %IP% --dport 22 -j ACCEPT"),
			ex1("closeSSH", 10, tcp(9000, 8000, 7000), "/sbin/iptables -D INPUT -s %IP% --dport 22 -j ACCEPT"),
		},
		"knockd-man-2.conf": {ex2},
		"knockd-man-3.conf": {ex3},
		"knockd-man-4.conf": {ex4},
	} {
		t.Run(file, func(t *testing.T) {
			cfg, err := parseKnockdConfig(readTestdata(t, file))
			if err != nil {
				t.Fatal(err)
			}
			checkConfig(t, cfg, &knockdConfig{logFile: logFile, doors: doors})
		})
	}
}

func TestKnockdAllKeys(t *testing.T) {
	cfg, err := parseKnockdConfig(readTestdata(t, "knockd-all.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ssh := withSeqTimeout(knockdDoor("openSSH", 11,
		[]portSpec{{7000, protoTCP}, up(8000), {9000, protoTCP}},
		"/usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT # not a comment",
		"/usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"), 12*time.Second)
	ssh.tcpFlags = tcpFlagRule{set: tcpSYN, clear: tcpACK}
	ssh.action.start6, ssh.action.hasStart6 = "", true // empty: do nothing for IPv6
	ssh.action.stop6, ssh.action.hasStop6 = `logger "door=%IP% closed"`, true
	ssh.action.cmdTimeout = 30 * time.Second
	ssh.target = netip.MustParseAddr("192.0.2.10")

	nas := withSeqTimeout(knockdDoor("wake-NAS", 22, nil, "/usr/bin/etherwake -i eth1 00:11:22:33:44:55", ""), 3*time.Second)
	nas.oneTime = "/etc/knockd/nas_sequences"
	nas.tcpFlags = tcpFlagRule{set: tcpFIN | tcpPSH | tcpURG, clear: tcpRST}
	nas.action.start6, nas.action.hasStart6 = "/usr/bin/etherwake -i eth1 00:11:22:33:44:55 && echo v6", true
	nas.target = netip.MustParseAddr("2001:db8::10")

	logOnly := knockdDoor("log.only", 30, []portSpec{up(1)}, "", "")

	checkConfig(t, cfg, &knockdConfig{
		useSyslog: true, logFile: "/var/log/knockd.log", pidFile: "/run/knockd.pid", iface: "eth0",
		doors: []door{ssh, nas, logOnly},
	})
}

func TestKnockdBadFiles(t *testing.T) {
	for file, want := range map[string][]string{
		"knockd-bad-unknown-key.conf":    {"line 6: ", `"seq_timout"`, "Seq_Timeout"},
		"knockd-bad-sequence.conf":       {"line 2: ", "icmp", "tcp or udp"},
		"knockd-bad-port.conf":           {"line 2: ", "65536", "1-65535"},
		"knockd-bad-flags.conf":          {"line 3: ", `"fyn"`, "fin, syn"},
		"knockd-bad-no-sequence.conf":    {"line 4: ", "[openSSH]", "no sequence"},
		"knockd-bad-duplicate-door.conf": {"line 5: ", "[OpenSSH]", "first at line 1"},
	} {
		cfg, err := parseKnockdConfig(readTestdata(t, file))
		if err == nil {
			t.Errorf("%s: no error, got %+v", file, cfg)
			continue
		}
		t.Logf("%s: %v", file, err)
		checkError(t, file, err, want)
	}
}

// checkError checks that err is one line, starts with want[0], and holds all of want.
func checkError(t *testing.T, name string, err error, want []string) {
	t.Helper()
	msg := err.Error()
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("%s: error has a line break: %q", name, msg)
	}
	if !strings.HasPrefix(msg, want[0]) {
		t.Errorf("%s: error %q does not start with %q", name, msg, want[0])
	}
	for _, w := range want[1:] {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: error %q does not mention %q", name, msg, w)
		}
	}
}

func TestParseKnockdConfigTable(t *testing.T) {
	const d1 = "[d]\nsequence = 1\n"
	tests := []struct {
		name string
		text string
		err  []string                              // "line N: " then culprits; nil: success
		ok   func(t *testing.T, cfg *knockdConfig) // checks on success
	}{
		{name: "empty file", text: "", ok: func(t *testing.T, c *knockdConfig) {
			if len(c.doors) != 0 {
				t.Errorf("doors = %v", c.doors)
			}
		}},
		{name: "CRLF and BOM", text: "\uFEFF[options]\r\nUseSyslog\r\n[d]\r\nsequence = 1,2:udp\r\ncommand = a b  c\r\n", ok: func(t *testing.T, c *knockdConfig) {
			if !c.useSyslog || len(c.doors) != 1 || c.doors[0].action.start != "a b  c" || !slices.Equal(c.doors[0].seq, []portSpec{{1, protoTCP}, up(2)}) {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "hash inside a value is kept", text: d1 + "command = echo a#b # c\n", ok: func(t *testing.T, c *knockdConfig) {
			if got := c.doors[0].action.start; got != "echo a#b # c" {
				t.Errorf("command = %q", got)
			}
		}},
		{name: "equals inside a value", text: d1 + "command=x=1 y==2\n", ok: func(t *testing.T, c *knockdConfig) {
			if got := c.doors[0].action.start; got != "x=1 y==2" {
				t.Errorf("command = %q", got)
			}
		}},
		{name: "defaults", text: d1, ok: func(t *testing.T, c *knockdConfig) {
			d := c.doors[0]
			if d.seqTimeout != 25*time.Second || d.timeout != d.seqTimeout || d.action.cmdTimeout != 10*time.Second ||
				d.tcpFlags != defaultTCPFlags || d.target.IsValid() || d.action.hasStart6 || d.action.hasStop6 {
				t.Errorf("got %+v", d)
			}
		}},
		{name: "stop without cmd_timeout", text: d1 + "start_command = a\nstop_command = b\n", ok: func(t *testing.T, c *knockdConfig) {
			if a := c.doors[0].action; a.cmdTimeout != 10*time.Second || a.stop != "b" || a.stop6 != "b" || a.start6 != "a" {
				t.Errorf("action = %+v", a)
			}
		}},
		{name: "cmd_timeout without stop", text: d1 + "cmd_timeout = 7\n", ok: func(t *testing.T, c *knockdConfig) {
			if c.doors[0].action.cmdTimeout != 7*time.Second {
				t.Errorf("cmdTimeout = %v", c.doors[0].action.cmdTimeout)
			}
		}},
		{name: "longest sequence", text: "[d]\nsequence = " + strings.Repeat("1,", maxSequenceLen-1) + "2\n"},
		{name: "unicode door name", text: "[porte-ü]\nsequence = 1\n[Porte-Ü2]\nsequence = 2\n"},
		{name: "all flags", text: d1 + "tcpflags = FIN,syn,Rst,psh,!ACK,!urg,syn\n", ok: func(t *testing.T, c *knockdConfig) {
			if r := c.doors[0].tcpFlags; r != (tcpFlagRule{set: tcpFIN | tcpSYN | tcpRST | tcpPSH, clear: tcpACK | tcpURG}) {
				t.Errorf("tcpFlags = %+v", r)
			}
		}},
		{name: "IPv6 target", text: d1 + "target = ::1\n", ok: func(t *testing.T, c *knockdConfig) {
			if c.doors[0].target != netip.IPv6Loopback() {
				t.Errorf("target = %v", c.doors[0].target)
			}
		}},

		{name: "key before any section", text: "sequence = 1\n", err: []string{"line 1: ", `"sequence"`, "before any section"}},
		{name: "comment then key before section", text: "# c\n\nlogfile = x\n", err: []string{"line 3: ", `"logfile"`}},
		{name: "unknown key", text: d1 + "colour = red\n", err: []string{"line 3: ", `"colour"`, "Sequence, One_Time_Sequences"}},
		{name: "unknown option", text: "[options]\nverbose = 1\n", err: []string{"line 2: ", `"verbose"`, "UseSyslog, LogFile, PidFile, Interface"}},
		{name: "door key in options", text: "[options]\nsequence = 1\n", err: []string{"line 2: ", "sequence", "door section"}},
		{name: "option key in door", text: d1 + "LogFile = /x\n", err: []string{"line 3: ", "LogFile", "[options]"}},
		{name: "usesyslog in door", text: d1 + "usesyslog\n", err: []string{"line 3: ", "usesyslog", "[options]"}},
		{name: "key without =", text: d1 + "command /bin/true\n", err: []string{"line 3: ", `"command /bin/true"`, "no '='"}},
		{name: "known key without =", text: d1 + "Stop_Command\n", err: []string{"line 3: ", "Stop_Command", "no '='"}},
		{name: "usesyslog with value", text: "[options]\nUseSyslog = yes\n", err: []string{"line 2: ", "UseSyslog", "no value"}},
		{name: "empty key", text: d1 + " = 5\n", err: []string{"line 3: ", "no key"}},
		{name: "duplicate key", text: d1 + "Sequence = 2\n", err: []string{"line 3: ", "Sequence", "first at line 2"}},
		{name: "duplicate via alias", text: d1 + "command = a\nStart_Command = b\n", err: []string{"line 4: ", "Start_Command", "first at line 3"}},
		{name: "duplicate timeout alias", text: d1 + "timeout = 3\nseq_timeout = 4\n", err: []string{"line 4: ", "seq_timeout", "first at line 3"}},
		{name: "duplicate options", text: "[options]\n[options]\n", err: []string{"line 2: ", "[options]", "first at line 1"}},
		{name: "duplicate door", text: d1 + "[D]\nsequence = 2\n", err: []string{"line 3: ", "[D]", "first at line 1"}},
		{name: "Options spelled wrong", text: "[Options]\nlogfile = x\n", err: []string{"line 1: ", "[Options]", "[options]"}},
		{name: "empty section", text: "[]\n", err: []string{"line 1: ", `""`, "door name"}},
		{name: "space in name", text: "[open ssh]\nsequence = 1\n", err: []string{"line 1: ", `"open ssh"`, "no spaces"}},
		{name: "long name", text: "[" + strings.Repeat("n", 65) + "]\nsequence = 1\n", err: []string{"line 1: ", strings.Repeat("n", 65), "1-64 bytes"}},
		{name: "unclosed section", text: "[door\nsequence = 1\n", err: []string{"line 1: ", `"[door"`, "']'"}},
		{name: "no sequence", text: "[a]\nsequence = 1\n[b]\ncommand = x\n", err: []string{"line 3: ", "[b]", "no sequence"}},
		{name: "no sequence at end", text: "[options]\n[b]\n", err: []string{"line 2: ", "[b]", "no sequence"}},
		{name: "both sequences", text: d1 + "one_time_sequences = /f\n", err: []string{"line 3: ", "one_time_sequences", "not both"}},
		{name: "both sequences reversed", text: "[d]\none_time_sequences = /f\nsequence = 1\n", err: []string{"line 3: ", "sequence", "not both"}},
		{name: "empty one_time_sequences", text: "[d]\none_time_sequences =\n", err: []string{"line 2: ", "one_time_sequences", "empty"}},
		{name: "empty sequence", text: "[d]\nsequence =\n", err: []string{"line 2: ", "sequence", "empty sequence"}},
		{name: "empty sequence item", text: "[d]\nsequence = 1,,2\n", err: []string{"line 2: ", "sequence", "empty item"}},
		{name: "port 0", text: "[d]\nsequence = 1,0\n", err: []string{"line 2: ", "port 0", "1-65535"}},
		{name: "port too big", text: "[d]\nsequence = 70000:udp\n", err: []string{"line 2: ", "70000", "1-65535"}},
		{name: "port not a number", text: "[d]\nsequence = 22,ssh\n", err: []string{"line 2: ", `"ssh"`, "1-65535"}},
		{name: "bad protocol", text: "[d]\nsequence = 1:sctp\n", err: []string{"line 2: ", "sctp", "tcp or udp"}},
		{name: "sequence too long", text: "[d]\nsequence = " + strings.Repeat("1,", maxSequenceLen) + "2\n", err: []string{"line 2: ", "65 ports", "at most 64"}},
		{name: "seq_timeout zero", text: d1 + "seq_timeout = 0\n", err: []string{"line 3: ", "seq_timeout", `"0"`, "whole number"}},
		{name: "seq_timeout fraction", text: d1 + "SEQ_TIMEOUT = 1.5\n", err: []string{"line 3: ", "SEQ_TIMEOUT", `"1.5"`}},
		{name: "cmd_timeout negative", text: d1 + "cmd_timeout = -5\n", err: []string{"line 3: ", "cmd_timeout", `"-5"`}},
		{name: "cmd_timeout huge", text: d1 + "cmd_timeout = 99999999999\n", err: []string{"line 3: ", "cmd_timeout", "99999999999"}},
		{name: "unknown flag", text: d1 + "tcpflags = syn,xmas\n", err: []string{"line 3: ", `"xmas"`, "fin, syn, rst"}},
		{name: "flag set and cleared", text: d1 + "tcpflags = ack,!ACK\n", err: []string{"line 3: ", "ack", "both required and excluded"}},
		{name: "empty flag item", text: d1 + "tcpflags = syn,\n", err: []string{"line 3: ", "tcpflags", "empty item"}},
		{name: "empty flags", text: d1 + "tcpflags =\n", err: []string{"line 3: ", "tcpflags", "empty item"}},
		{name: "double bang", text: d1 + "tcpflags = !!syn\n", err: []string{"line 3: ", `"!!syn"`}},
		{name: "bad target", text: d1 + "target = 10.0.0.256\n", err: []string{"line 3: ", `"10.0.0.256"`, "IP address"}},
		{name: "hostname target", text: d1 + "target = example.com\n", err: []string{"line 3: ", `"example.com"`, "IP address"}},
		{name: "zoned target", text: d1 + "target = fe80::1%eth0\n", err: []string{"line 3: ", `"fe80::1%eth0"`, "zone"}},
		{name: "bad interface", text: "[options]\ninterface = /dev/eth0\n", err: []string{"line 2: ", `"/dev/eth0"`, "interface name"}},
		{name: "empty logfile", text: "[options]\nlogfile =\n", err: []string{"line 2: ", "logfile", "empty"}},
		{name: "NUL byte", text: d1 + "command = a\x00b\n", err: []string{"line 3: ", "NUL"}},
		{name: "newline-free quoting", text: d1 + "col\rour = x\n", err: []string{"line 3: ", `"col\rour"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseKnockdConfig(tt.text)
			if tt.err != nil {
				if err == nil {
					t.Fatalf("no error, want %q", tt.err)
				}
				t.Log(err)
				checkError(t, tt.name, err, tt.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkProperties(t, cfg)
			if tt.ok != nil {
				tt.ok(t, cfg)
			}
		})
	}
}

// checkProperties checks what every parsed configuration guarantees.
func checkProperties(t testing.TB, cfg *knockdConfig) {
	t.Helper()
	names := map[string]bool{}
	for _, d := range cfg.doors {
		if d.name == "" || names[strings.ToLower(d.name)] {
			t.Fatalf("door name %q empty or not unique", d.name)
		}
		names[strings.ToLower(d.name)] = true
		if d.oneTime == "" && (len(d.seq) < 1 || len(d.seq) > maxSequenceLen) || d.oneTime != "" && len(d.seq) != 0 {
			t.Fatalf("door %s: sequence %v, oneTime %q", d.name, d.seq, d.oneTime)
		}
		for _, p := range d.seq {
			if p.port == 0 {
				t.Fatalf("door %s: port 0 in %v", d.name, d.seq)
			}
		}
		if d.seqTimeout <= 0 || d.timeout != d.seqTimeout || d.action.cmdTimeout <= 0 {
			t.Fatalf("door %s: seqTimeout %v, timeout %v, cmdTimeout %v", d.name, d.seqTimeout, d.timeout, d.action.cmdTimeout)
		}
		if d.tcpFlags.set&d.tcpFlags.clear != 0 {
			t.Fatalf("door %s: tcpFlags %+v", d.name, d.tcpFlags)
		}
		if !d.action.hasStart6 && d.action.start6 != d.action.start || !d.action.hasStop6 && d.action.stop6 != d.action.stop {
			t.Fatalf("door %s: action %+v", d.name, d.action)
		}
	}
}

func TestKnockdOneTimeSequences(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []oneTimeLine
		err  []string
	}{
		{name: "empty", text: ""},
		{name: "only used and comments", text: "#1,2,3\n  # comment\n\n"},
		{name: "file", text: readTestdata(t, "onetime-sequences.txt"), want: []oneTimeLine{
			{offset: 84, line: 3, seq: []portSpec{up(2222), {3333, protoTCP}, up(4444)}},
			{offset: 109, line: 5, seq: tcp(5555, 6666, 7777)},
			{offset: 125, line: 6, seq: []portSpec{{8888, protoTCP}, up(9999)}},
		}},
		{name: "CRLF, BOM, no final newline", text: "\uFEFF 1,2\r\n\r\n\t3:udp", want: []oneTimeLine{
			{offset: 3, line: 1, seq: tcp(1, 2)},
			{offset: 11, line: 3, seq: []portSpec{up(3)}},
		}},
		{name: "bad port", text: " 1,2\n 3,99999\n", err: []string{"line 2: ", "99999"}},
		{name: "bad protocol", text: "\n\n 1:icmp\n", err: []string{"line 3: ", "icmp"}},
		{name: "too long", text: strings.Repeat("1,", maxSequenceLen) + "1\n", err: []string{"line 1: ", "65 ports"}},
		{name: "empty item", text: ",\n", err: []string{"line 1: ", "empty item"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOneTimeSequences(tt.text)
			if tt.err != nil {
				if err == nil {
					t.Fatalf("no error, got %v", got)
				}
				checkError(t, tt.name, err, tt.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			for _, l := range got { // every offset is the line's first byte
				if l.offset != 0 && tt.text[l.offset-1] != '\n' && tt.text[:l.offset] != "\uFEFF" {
					t.Errorf("offset %d is not at the start of line %d", l.offset, l.line)
				}
			}
		})
	}
}

func TestKnockdMarkSequenceUsed(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		offset  int
		want    string
		nextSeq []portSpec // the first unused sequence after marking; nil: none
	}{
		// The man page's advice: a leading space takes the '#', the sequence is kept.
		{name: "leading space", text: " 1,2\n 3,4\n", offset: 0, want: "#1,2\n 3,4\n", nextSeq: tcp(3, 4)},
		{name: "second line", text: "#1,2\n 3,4\n 5\n", offset: 5, want: "#1,2\n#3,4\n 5\n", nextSeq: tcp(5)},
		// Without the space, knockd overwrites the first digit: "7000,8000" becomes "#000,8000",
		// which now starts with '#' and so is a used line, skipped by the parser.
		{name: "no leading space", text: "7000,8000\n9000\n", offset: 0, want: "#000,8000\n9000\n", nextSeq: tcp(9000)},
		{name: "last sequence", text: "1\n", offset: 0, want: "#\n"},
		{name: "CRLF", text: " 1\r\n 2\r\n", offset: 4, want: " 1\r\n#2\r\n", nextSeq: tcp(1)},
		{name: "leading CR", text: "\r1\n 2\n", offset: 0, want: "#1\n 2\n", nextSeq: tcp(2)}, // found by the fuzzer
		{name: "offset out of range", text: " 1\n", offset: 3, want: " 1\n", nextSeq: tcp(1)},
		{name: "negative offset", text: " 1\n", offset: -1, want: " 1\n", nextSeq: tcp(1)},
		{name: "offset on a line break", text: " 1\n\n 2\n", offset: 3, want: " 1\n\n 2\n", nextSeq: tcp(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.text)
			got := markSequenceUsed(in, tt.offset)
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if string(in) != tt.text {
				t.Errorf("input modified: %q", in)
			}
			lines, err := parseOneTimeSequences(string(got))
			if err != nil {
				t.Fatal(err)
			}
			var next []portSpec
			if len(lines) > 0 {
				next = lines[0].seq
			}
			if !slices.Equal(next, tt.nextSeq) {
				t.Errorf("next sequence %v, want %v", next, tt.nextSeq)
			}
		})
	}
}

// testdataSeeds returns the contents of every file in testdata.
func testdataSeeds(f *testing.F) []string {
	files, err := filepath.Glob(filepath.Join("testdata", "*"))
	if err != nil {
		f.Fatal(err)
	}
	var seeds []string
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil { // directories fail, and are skipped
			seeds = append(seeds, string(b))
		}
	}
	if len(seeds) == 0 {
		f.Fatal("no seeds in testdata")
	}
	return seeds
}

func FuzzKnockdConfig(f *testing.F) {
	for _, s := range testdataSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := parseKnockdConfig(text)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "line ") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("bad error %q", msg)
			}
			return
		}
		checkProperties(t, cfg)
	})
}

func FuzzOneTimeSequences(f *testing.F) {
	for _, s := range testdataSeeds(f) {
		f.Add(s, 0)
	}
	f.Fuzz(func(t *testing.T, text string, offset int) {
		lines, err := parseOneTimeSequences(text)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "line ") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("bad error %q", msg)
			}
			return
		}
		for i, l := range lines {
			if len(l.seq) < 1 || len(l.seq) > maxSequenceLen || i > 0 && l.line <= lines[i-1].line {
				t.Fatalf("bad line %+v", l)
			}
			if l.offset != 0 && text[l.offset-1] != '\n' && text[:l.offset] != "\uFEFF" {
				t.Fatalf("offset %d is not a line start", l.offset)
			}
		}
		marked := markSequenceUsed([]byte(text), offset)
		if len(marked) != len(text) {
			t.Fatalf("marking changed the length")
		}
		if len(lines) == 0 {
			return
		}
		// Marking the first unused line uses it up: the next one comes first, or nothing.
		after, err := parseOneTimeSequences(string(markSequenceUsed([]byte(text), lines[0].offset)))
		if err != nil || len(after) != len(lines)-1 || len(after) > 0 && (after[0].offset != lines[1].offset || !slices.Equal(after[0].seq, lines[1].seq)) {
			t.Fatalf("after marking line %d: %v, %v; before %v", lines[0].line, after, err, lines)
		}
	})
}

// check reads knockd.conf's Interface as serve does: one that does not exist is a warning that
// says serve would exit 1 (check may run where the interface is not up yet).
func TestCheckWarnsOfAMissingKnockdInterface(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "knockd.conf")
	os.WriteFile(conf, []byte("[options]\n  Interface = nonexist0\n[openSSH]\n  sequence = 7000,9000,8000\n  command = /bin/true\n"), 0o644)
	_, stderr, code := runKK(t, "check", "--knockd-config", conf)
	const want = "knockknock: warning: knockd config [options] Interface: interface nonexist0: "
	if code != 0 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "serve would exit 1\n") {
		t.Fatalf("exit %d, stderr:\n%s\nwant a line starting %q", code, stderr, want)
	}
}
