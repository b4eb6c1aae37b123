package main

// Issue 12, "What a new user trips over": the command line, help, check, config files, -v and
// --max-clients, as a new user meets them: the built binary, its exact lines and exit codes.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeFile writes a file in a test directory and returns its path.
func writeFile(t *testing.T, dir, name, body string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCase runs the binary and compares its exit code and its whole stderr (one line, or none).
func runCase(t *testing.T, args []string, wantCode int, wantStderr string) (stdout string) {
	t.Helper()
	stdout, stderr, code := runKK(t, args...)
	if code != wantCode || stderr != wantStderr {
		t.Errorf("knockknock %q: exit %d, stderr %q; want exit %d, stderr %q", args, code, stderr, wantCode, wantStderr)
	}
	return stdout
}

// Item 5: an empty port list is an error everywhere, and nothing is sent.
func TestCLIEmptyPortListIsAnError(t *testing.T) {
	dir := t.TempDir()
	emptyINI := writeFile(t, dir, "empty.ini", "[Application Options]\nports =\n", 0o644)
	const noPorts = "knockknock: invalid --ports \"\": the knock sequence needs at least one port\n"
	const emptyArg = "knockknock: invalid PORT \"\": empty; give port numbers, such as 7000 8000:tcp\n"
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"knock", "127.0.0.1", ""}, emptyArg},
		{[]string{"knock", "127.0.0.1", "", "7000"}, emptyArg},
		{[]string{"knock", "127.0.0.1", " "}, "knockknock: invalid PORT \" \": empty; give port numbers, such as 7000 8000:tcp\n"},
		{[]string{"knock", "-p", "", "127.0.0.1"}, noPorts},
		{[]string{"knock", "--config", emptyINI, "127.0.0.1"}, noPorts},
		{[]string{"-p", ""}, noPorts},
		{[]string{"serve", "--ports="}, noPorts},
		{[]string{"check", "-p", ""}, noPorts},
		{[]string{"check", "--config", emptyINI}, noPorts},
		{[]string{"check", "-p", ","}, "knockknock: invalid --ports \",\": empty item in the port list\n"},
		{[]string{"check", "-p", "", "--door", "a=1,2"}, "knockknock: use either --ports (one door) or --door (named doors), not both\n"},
	} {
		if out := runCase(t, tc.args, 2, tc.stderr); out != "" {
			t.Errorf("knockknock %q printed %q", tc.args, out)
		}
	}
}

func TestParseSequence(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    []portSpec
	}{
		{"", "the knock sequence needs at least one port", nil},
		{" ", "the knock sequence needs at least one port", nil},
		{"1,", "empty item in the port list", nil},
		{"7000, 8000:tcp", "", []portSpec{up(7000), {8000, protoTCP}}},
		{strings.Repeat("1,", 64) + "1", "at most 64 ports", nil},
	} {
		got, err := parseSequence(tc.in)
		if tc.err != "" && (err == nil || err.Error() != tc.err) || tc.err == "" && (err != nil || !slices.Equal(got, tc.want)) {
			t.Errorf("parseSequence(%q) = %v, %v; want %v, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// Item 7: check prints the settings and "ok" on stdout, each warning as one line on stderr, in
// words that fit the sequence; authenticated knocks get no scan warnings.
func TestCLICheckWarnings(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	runKK(t, "keygen", secret)
	const few = "knockknock: warning: door default: a plain sequence of %d knocks has %s: a scan of those ports in random order completes it by chance, and anyone who sees a knock can replay it; use authenticated knocks (--secret-file or --keys), a longer sequence, or --decoys\n"
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"-p", "5000"}, "knockknock: warning: door default: a one-port sequence is completed by any scan that touches the port; use a longer sequence or authenticated knocks\n"},
		{[]string{"-p", "5000,4000"}, "knockknock: warning: door default: the sequence 5000:udp,4000:udp is descending: a sequential port scan completes it; reorder it, add --decoys between the knock ports, or use authenticated knocks\n" + fmt.Sprintf(few, 2, "only 2 orders")},
		{[]string{"-p", "5000,5000"}, fmt.Sprintf(few, 2, "one order")},
		{[]string{"-p", "4000,2000,3000"}, fmt.Sprintf(few, 3, "only 6 orders")},
		{[]string{"-p", "4000,2000,4000"}, fmt.Sprintf(few, 3, "only 3 orders")},
		{[]string{"-p", "4000,2000,3000,1000"}, ""},
		{[]string{"-p", "1000,2000,3000,4000"}, "knockknock: warning: door default: the sequence 1000:udp,2000:udp,3000:udp,4000:udp is ascending: a sequential port scan completes it; reorder it, add --decoys between the knock ports, or use authenticated knocks\n"},
		{[]string{"-p", "1000,2000,3000,4000", "--decoys", "2500"}, ""},
		{[]string{"-p", "1000,2000,3000", "--secret-file", secret}, ""},
		{[]string{"-p", "5000", "--secret-file", secret}, ""},
	} {
		args := append([]string{"check"}, tc.args...)
		out := runCase(t, args, 0, tc.stderr)
		if !strings.HasSuffix(out, "\nok\n") || strings.Contains(out, "warning") {
			t.Errorf("knockknock %q: stdout %q; want the settings and ok, no warning", args, out)
		}
	}
}

func TestFewOrdersWarning(t *testing.T) {
	for _, tc := range []struct {
		seq  []uint16
		want string // the part that depends on the sequence; "" for no warning
	}{
		{[]uint16{1}, ""},
		{[]uint16{1, 2}, "a plain sequence of 2 knocks has only 2 orders"},
		{[]uint16{1, 1}, "a plain sequence of 2 knocks has one order"},
		{[]uint16{3, 1, 2}, "a plain sequence of 3 knocks has only 6 orders"},
		{[]uint16{1, 2, 1}, "a plain sequence of 3 knocks has only 3 orders"},
		{[]uint16{1, 1, 1}, "a plain sequence of 3 knocks has one order"},
		{[]uint16{4, 1, 3, 2}, ""},
	} {
		got := fewOrdersWarning(udp(tc.seq...))
		if tc.want == "" && got != "" || tc.want != "" && !strings.HasPrefix(got, tc.want+": ") {
			t.Errorf("fewOrdersWarning(%v) = %q, want %q...", tc.seq, got, tc.want)
		}
	}
}

// Item 7: check warns, on stderr, when this process could not serve for want of a capability; it
// still says ok (the configuration is valid), and serve then fails as the warning says.
func TestCLICheckWarnsWithoutPrivilege(t *testing.T) {
	start := unprivilegedPortStart()
	if start <= 123 {
		t.Skipf("net.ipv4.ip_unprivileged_port_start is %d: anyone may bind port 123", start)
	}
	// A copy of the binary in a directory others may enter but not read, run as nobody there:
	// no hooks/ in it, so the embedded hook.
	dir, err := os.MkdirTemp("", "knockknock-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "knockknock", string(bin), 0o755)
	os.Chmod(dir, 0o711)
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(filepath.Join(dir, "knockknock"), args...)
		cmd.Dir = dir
		if os.Geteuid() == 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		} else if caps, ok := effectiveCaps(); !ok || caps&(1<<capNetBindService|1<<capNetRaw) != 0 {
			t.Skip("not root, and this process has capabilities or cannot read them")
		}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if cmd.ProcessState == nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
	few := "knockknock: warning: door default: " + fewOrdersWarning(udp(456, 123, 789)) + "\n"
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"check", "-p", "456,123,789"}, few + fmt.Sprintf("knockknock: warning: binding UDP ports 456, 123, 789 needs root or CAP_NET_BIND_SERVICE (ports below %d do), and this process has neither: serve would exit 1\n", start)},
		{[]string{"check", "-p", "456,5000,7890,1000", "--decoys", "99"}, fmt.Sprintf("knockknock: warning: binding UDP ports 456, 1000, 99 needs root or CAP_NET_BIND_SERVICE (ports below %d do), and this process has neither: serve would exit 1\n", start)},
		{[]string{"check", "-p", "4560,1230,7890"}, fewOrdersWarningLine(4560, 1230, 7890)},
		{[]string{"check", "--capture", "-p", "4560,1230,7890,1000"}, "knockknock: warning: capture mode needs root or CAP_NET_RAW, and this process has neither: serve would exit 1\n"},
	} {
		stdout, stderr, code := run(tc.args...)
		if code != 0 || stderr != tc.stderr || !strings.HasSuffix(stdout, "\nok\n") {
			t.Errorf("as nobody, knockknock %q: exit %d, stderr %q, stdout %q; want exit 0, stderr %q and ok", tc.args, code, stderr, stdout, tc.stderr)
		}
	}
	// What the warning foretells.
	if _, stderr, code := run("-p", "456,123,789"); code != 1 || !strings.Contains(stderr, "ports below 1024 need root or CAP_NET_BIND_SERVICE") {
		t.Errorf("as nobody, serve on port 456: exit %d, stderr %q", code, stderr)
	}
	// This process (root, or whatever it may do) gets no such warning where it can bind.
	if caps, ok := effectiveCaps(); ok && caps&(1<<capNetBindService) != 0 {
		runCase(t, []string{"check", "-p", "456,123,789"}, 0, few)
	}
}

func fewOrdersWarningLine(ports ...uint16) string {
	return "knockknock: warning: door default: " + fewOrdersWarning(udp(ports...)) + "\n"
}

func TestPrivilegeWarnings(t *testing.T) {
	caps := func(c uint64) func() (uint64, bool) { return func() (uint64, bool) { return c, true } }
	low := &config{doors: []door{testDoor(defaultDoor, 7000, 80, 443)}}
	high := &config{doors: []door{testDoor(defaultDoor, 7000, 8000)}}
	capture := &config{doors: []door{testDoor(defaultDoor, 80, 443)}, capture: true}
	for _, tc := range []struct {
		name  string
		cfg   *config
		caps  func() (uint64, bool)
		start int
		want  string
	}{
		{"none, low ports", low, caps(0), 1024, "binding UDP ports 80, 443 needs root or CAP_NET_BIND_SERVICE (ports below 1024 do), and this process has neither: serve would exit 1"},
		{"none, one low port", low, caps(0), 100, "binding UDP port 80 needs root or CAP_NET_BIND_SERVICE (ports below 100 do), and this process has neither: serve would exit 1"},
		{"none, start lowered to 0", low, caps(0), 0, ""},
		{"CAP_NET_BIND_SERVICE", low, caps(1 << capNetBindService), 1024, ""},
		{"root", low, caps(0x1ffffffffff), 1024, ""},
		{"high ports", high, caps(0), 1024, ""},
		{"capture without CAP_NET_RAW", capture, caps(1 << capNetBindService), 1024, "capture mode needs root or CAP_NET_RAW, and this process has neither: serve would exit 1"},
		{"capture with CAP_NET_RAW", capture, caps(1 << capNetRaw), 1024, ""},
		{"capabilities unknown (not Linux)", low, func() (uint64, bool) { return 0, false }, 1024, ""},
	} {
		got := strings.Join(privilegeWarnings(tc.cfg, tc.caps, tc.start), "|")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct {
		status string
		caps   uint64
		ok     bool
	}{
		{"Name:\tknockknock\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n", 0x1ffffffffff, true},
		{"CapEff:\t0000000000000400\n", 1 << capNetBindService, true},
		{"CapEff:\t0000000000000000", 0, true},
		{"Name:\tx\n", 0, false},
		{"CapEff:\tzz\n", 0, false},
	} {
		if caps, ok := parseCapEff(tc.status); caps != tc.caps || ok != tc.ok {
			t.Errorf("parseCapEff(%q) = %#x, %v; want %#x, %v", tc.status, caps, ok, tc.caps, tc.ok)
		}
	}
}

// Item 9: help and help COMMAND as in the go tool; each command's help lists its own options
// first, then only the server options it reads; a server option given to knock or keygen is an
// error rather than ignored.
func TestCLIHelp(t *testing.T) {
	overview := runCase(t, []string{"help"}, 0, "")
	for _, want := range []string{
		"Usage:\n",
		"  knockknock [serve] [options]                run the server (the default)\n",
		"  knockknock knock [options] HOST [PORT...]   send a knock sequence\n",
		"  knockknock check [options]                  validate the options, the doors and the hook; print them\n",
		"  knockknock keygen [--user NAME] [FILE]      make a new random key\n",
		"  knockknock help [COMMAND]                   this overview, or a command's usage and options\n",
		"Run \"knockknock help COMMAND\" for a command's options (serve: the server's).\n",
	} {
		if !strings.Contains(overview, want) {
			t.Errorf("help lacks %q:\n%s", want, overview)
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}} {
		if out := runCase(t, args, 0, ""); out != overview {
			t.Errorf("knockknock %q differs from knockknock help:\n%s", args, out)
		}
	}
	for _, tc := range []struct {
		command string
		has     []string // in this order
		hasNot  []string
	}{
		{"knock", []string{"Usage:\n  knockknock knock [options] HOST [PORT...]\n", "  -d, --delay DUR             pause between knocks (default 10ms)\n",
			"      --wait DUR", "      --expect-address ADDR|local\n", "  -4  ", "  -6  ", "  -p, --ports LIST  ", "      --door NAME=LIST", "      --secret-file FILE  ",
			"      --config FILE  ", "  -h, --help                  this help\n"},
			[]string{"--capture ", "--timeout DUR", "--hook FILE", "--max-clients N", "--keys FILE", "--verbose ", "--user NAME"}},
		{"keygen", []string{"Usage:\n  knockknock keygen [--user NAME] [FILE]\n", "      --user NAME  ", "  -h, --help"},
			[]string{"--ports LIST", "--secret-file FILE", "--config FILE", "--delay DUR"}},
		{"check", []string{"Usage:\n  knockknock check [options]\n", "warnings go to stderr", "  -p, --ports LIST", "      --capture", "      --max-clients N",
			"      --config FILE", "  -h, --help"}, []string{"--delay DUR", "--user NAME"}},
		{"serve", []string{"Usage:\n  knockknock [serve] [options]\n", "  -p, --ports LIST", "  -t, --timeout DUR", "      --ban-prefix6 BITS", "  -h, --help"},
			[]string{"--delay DUR", "--user NAME"}},
		{"help", []string{"Usage:\n  knockknock help [COMMAND]\n", "  -h, --help"}, []string{"--ports LIST"}},
	} {
		out := runCase(t, []string{"help", tc.command}, 0, "")
		at := 0
		for _, want := range tc.has {
			i := strings.Index(out[at:], want)
			if i < 0 {
				t.Errorf("help %s lacks %q after byte %d:\n%s", tc.command, want, at, out)
				break
			}
			at += i + len(want)
		}
		for _, not := range tc.hasNot {
			if strings.Contains(out, not) {
				t.Errorf("help %s lists %s, which %s does not read:\n%s", tc.command, not, tc.command, out)
			}
		}
		for _, line := range strings.Split(out, "\n") {
			if len(line) > helpWidth {
				t.Errorf("help %s: a line of %d characters: %q", tc.command, len(line), line)
			}
		}
		if tc.command == "help" {
			continue
		}
		for _, args := range [][]string{{tc.command, "--help"}, {tc.command, "-h"}} {
			if got := runCase(t, args, 0, ""); got != out {
				t.Errorf("knockknock %q differs from knockknock help %s:\n%s", args, tc.command, got)
			}
		}
	}
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"help", "nosuch"}, "knockknock: help nosuch: unknown command; the commands are serve, knock, check, keygen and help\n"},
		{[]string{"help", "knock", "check"}, "knockknock: help takes one command at most, such as: knockknock help knock\n"},
		{[]string{"knock", "--timeout", "3", "127.0.0.1"}, "knockknock: --timeout is a server option: knock reads only --ports, --door, --secret-file and --config of them (see knockknock help knock)\n"},
		{[]string{"--capture", "knock", "127.0.0.1"}, "knockknock: --capture is a server option: knock reads only --ports, --door, --secret-file and --config of them (see knockknock help knock)\n"},
		{[]string{"keygen", "-p", "1,2,3"}, "knockknock: keygen takes no server options: --ports does not apply to it (see knockknock help keygen)\n"},
		{[]string{"knock", "--bogus"}, "knockknock: unknown flag `bogus' (see knockknock help knock)\n"},
		{[]string{"check", "stray"}, "knockknock: unexpected argument \"stray\" (see knockknock help check)\n"},
	} {
		runCase(t, tc.args, 2, tc.stderr)
	}
}

// Item 8: a config value that is not allowed says what is; check validates the [knock] section
// that knock --config reads.
func TestCLIConfigValueErrors(t *testing.T) {
	dir := t.TempDir()
	ini := func(name, body string) string { return writeFile(t, dir, name, body, 0o644) }
	verbose := ini("verbose.ini", "[Application Options]\nports = 2000,1000,3000\nverbose = yes\n")
	capture := ini("capture.ini", "[Application Options]\ncapture = on\n")
	delay := ini("delay.ini", "[Application Options]\nports = 2000,1000,3000\n[knock]\ndelay = abc\n")
	wait := ini("wait.ini", "[Application Options]\nports = 2000,1000,3000\n[knock]\nwait = 1h\n")
	expect := ini("expect.ini", "[Application Options]\nports = 2000,1000,3000\n[knock]\nexpect-address = nowhere\n")
	count := ini("count.ini", "[Application Options]\nports = 2000,1000,3000\nmax-clients = abc\n")
	const delayMsg = "invalid delay \"abc\": want a duration from 0 to 1m, such as 10ms or 0.5\n"
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"check", "--config", verbose}, "knockknock: config " + verbose + " line 3: invalid verbose \"yes\": want true or false\n"},
		{[]string{"--config", verbose}, "knockknock: config " + verbose + " line 3: invalid verbose \"yes\": want true or false\n"},
		{[]string{"check", "--config", capture}, "knockknock: config " + capture + " line 2: invalid capture \"on\": want true or false\n"},
		{[]string{"check", "--config", count}, "knockknock: invalid --max-clients \"abc\": want a whole number from 1 to 16777216\n"},
		{[]string{"check", "--config", delay}, "knockknock: config " + delay + " line 4: " + delayMsg},
		{[]string{"knock", "--config", delay, "127.0.0.1"}, "knockknock: config " + delay + " line 4: " + delayMsg},
		{[]string{"check", "--config", wait}, "knockknock: config " + wait + " line 4: invalid wait \"1h\": want a duration from 10ms to 10m, such as 3s\n"},
		{[]string{"check", "--config", expect}, "knockknock: config " + expect + " line 4: invalid expect-address \"nowhere\": want an IP address or local\n"},
	} {
		runCase(t, tc.args, 2, tc.stderr)
	}
	good := ini("good.ini", "[Application Options]\nports = 2000,1000,3000,4000\nverbose = true\n[knock]\ndelay = 5ms\nwait = 2s\nexpect-address = local\n")
	if out := runCase(t, []string{"check", "--config", good}, 0, ""); !strings.HasSuffix(out, "\nok\n") {
		t.Errorf("check --config good.ini: %q", out)
	}
}

// Item 8: --hook-arg on the command line adds to the config file's hook-arg lines; a key given
// again takes the later value, the command line's. check shows it, and the hook reads it.
func TestCLIHookArgsAddToTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	ports := []uint16{freePort(t), freePort(t), freePort(t), freePort(t)}
	ini := writeFile(t, dir, "kk.ini", fmt.Sprintf("[Application Options]\nports = %d,%d,%d,%d\nhook-arg = a=1\nhook-arg = b=2\n", ports[1], ports[0], ports[3], ports[2]), 0o644)
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, "hook-arg:     a=1\nhook-arg:     b=2\nknocks:"},
		{[]string{"--hook-arg", "c=3"}, "hook-arg:     a=1\nhook-arg:     b=2\nhook-arg:     c=3\nknocks:"},
		{[]string{"--hook-arg", "a=9", "--hook-arg", "c=3"}, "hook-arg:     a=9\nhook-arg:     b=2\nhook-arg:     c=3\nknocks:"},
		{[]string{"--hook-arg", "c=3", "--hook-arg", "c=4"}, "hook-arg:     a=1\nhook-arg:     b=2\nhook-arg:     c=4\nknocks:"},
	} {
		args := append([]string{"check", "--config", ini}, tc.flags...)
		if out := runCase(t, args, 0, ""); !strings.Contains(out, tc.want) {
			t.Errorf("knockknock %q:\n%s\nwant %q", args, out, tc.want)
		}
	}
	// The hook's own view: knock.args at on_start.
	out := filepath.Join(dir, "args")
	hook := writeFile(t, dir, "args.lua", `local knock = require("knock")
function on_start()
  local f = assert(io.open(knock.args.out, "w"))
  f:write(string.format("a=%s b=%s c=%s\n", knock.args.a, knock.args.b, tostring(knock.args.c)))
  f:close()
end
function on_unlock(ev) end
`, 0o644)
	p := startServer(t, "--config", ini, "--hook", hook, "--hook-arg", "a=9", "--hook-arg", "out="+out)
	p.stop(t)
	if got, _ := os.ReadFile(out); string(got) != "a=9 b=2 c=nil\n" {
		t.Fatalf("the hook read knock.args %q, want a=9 b=2 c=nil", got)
	}
}

// Item 10: the example file checks as it is, in the repository: the command its header gives.
func TestCLIExampleConfigChecksInTheRepository(t *testing.T) {
	stdout, stderr, code := runKK(t, "check", "--config", "knockknock.ini")
	if code != 0 || stderr != "" || !strings.HasSuffix(stdout, "\nok\n") {
		t.Fatalf("knockknock check --config knockknock.ini: exit %d\nstdout:\n%sstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"door default: 7000:udp,9000:udp,8000:udp,7500:udp (timeout 5s)\n",
		"decoys:       7200:udp,8500:udp\n",
		"hook:         hooks/nftables.lua (",
		"hook-arg:     port=22\nhook-arg:     seconds=30\n",
		"knocks:       plain (knockd-compatible)",
		"log-format:   json\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, stdout)
		}
	}
	header, _ := os.ReadFile("knockknock.ini")
	if !strings.Contains(string(header), ";   knockknock check --config knockknock.ini\n") {
		t.Errorf("knockknock.ini's header no longer gives the command this test runs")
	}
}

// Item 11: with -v, each authenticated datagram the server rejects is logged with its source
// and reason, at most 200 lines a second; without -v, none is.
func TestCLIVerboseLogsRejectedAuthenticatedDatagrams(t *testing.T) {
	dir := t.TempDir()
	secret, other := filepath.Join(dir, "secret"), filepath.Join(dir, "other")
	runKK(t, "keygen", secret)
	runKK(t, "keygen", other)
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-v", "-p", portList(ports), "--secret-file", secret, "--hook", "hooks/log-only.lua")
	quietPorts := []uint16{freePort(t), freePort(t), freePort(t)}
	quiet := startServer(t, "-p", portList(quietPorts), "--secret-file", secret, "--hook", "hooks/log-only.lua")

	line := func(port uint16, reason, hint string) string {
		return fmt.Sprintf(`level=INFO msg="authenticated datagram rejected" event=reject ip=127.0.0.1 port=%d reason=%s hint="%s"`, port, reason, hint)
	}
	// A wrong key: the hello is rejected (and the client says no answer).
	if _, _, code := runKK(t, "knock", "--wait", "300ms", "--secret-file", other, "-p", portList(ports), "127.0.0.1"); code != 1 {
		t.Errorf("knock with a wrong key: exit %d", code)
	}
	// Plain knocks.
	knockWith(t, "-p", portList(ports), "127.0.0.1")
	// A hello from a client whose clock is 10 minutes behind.
	key, err := readSecretFile(secret)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(ports[0])})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hello [wireLen]byte
	encodeHello(hello[:], newMACScratch(), newUserKey("", key), ports[0], time.Now().Add(-10*time.Minute).UnixMilli(), make([]byte, 16))
	conn.Write(hello[:])
	for _, want := range []string{
		line(ports[0], "unknown_key", "the key is not in the server's keys (or was revoked): the client's key differs"),
		line(ports[0], "unauthenticated", "a plain knock: the client must knock with the key (knock --secret-file)"),
		line(ports[1], "unauthenticated", "a plain knock: the client must knock with the key (knock --secret-file)"),
		line(ports[2], "unauthenticated", "a plain knock: the client must knock with the key (knock --secret-file)"),
		fmt.Sprintf(`level=INFO msg="authenticated datagram rejected" event=reject ip=127.0.0.1 port=%d reason=clock_skew skew=10m0`, ports[0]),
		`hint="the client's clock differs from the server's by more than --max-skew"`,
	} {
		waitFor(t, want, func() bool { return strings.Contains(p.stderr.String(), want) })
	}

	// A burst of 450 malformed datagrams: at most 200 lines a second; the rest are counted in one
	// line when the next one comes in a later second.
	for range 450 {
		conn.Write([]byte("hello?"))
	}
	waitFor(t, "the server to read the burst", func() bool { return udpUnread(ports[0]) == 0 })
	time.Sleep(1100 * time.Millisecond)
	conn.Write([]byte("hello?"))
	const held = `level=WARN msg="rejected datagrams not logged: over the rate limit" event=overload count=`
	waitFor(t, "the over-the-limit line", func() bool { return strings.Contains(p.stderr.String(), held) })
	p.stop(t)
	logged, heldBack, perSecond := 0, 0, map[string]int{}
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, "reason=malformed") {
			logged++
		}
		if strings.Contains(l, `msg="authenticated datagram rejected"`) {
			perSecond[l[:len("time=2006-01-02T15:04:05")]]++
		}
		if _, n, ok := strings.Cut(l, held); ok {
			c, _ := strconv.Atoi(strings.Fields(n)[0])
			heldBack += c
		}
	}
	if logged+heldBack != 451 || logged == 451 {
		t.Errorf("%d malformed datagrams logged and %d counted as held back, want 451 in all, some held back", logged, heldBack)
	}
	// A line is counted in the second its reader let it through and stamped a moment later: one
	// a reader (one a knock port) may carry over into the next second.
	for sec, n := range perSecond {
		if n > 200+len(ports) {
			t.Errorf("%d rejections logged in the second %s, the limit is 200", n, sec)
		}
	}

	knockWith(t, "-p", portList(quietPorts), "127.0.0.1")
	quiet.stop(t)
	if logs := quiet.stderr.String(); strings.Contains(logs, "rejected") || !strings.Contains(logs, "dropped.unauthenticated=3") {
		t.Errorf("without -v:\n%s", logs)
	}
}

// Item 11: three clients knocking interleaved with room for two: the first two unlock, the third
// is refused, and that is logged once. Before, each new client pushed out the oldest one's
// attempt in turn, and none unlocked.
func TestCLIMaxClientsThreeInterleavedClients(t *testing.T) {
	ports := []uint16{freePort(t), freePort(t), freePort(t), freePort(t)}
	rec := recording(filepath.Join(t.TempDir(), "events"))
	p := startServer(t, "-p", portList(ports), "--max-clients", "2", "--hook", "testdata/record.lua", "--hook-arg", "out="+string(rec))
	var conns []*net.UDPConn
	for i := range 3 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for _, port := range ports {
		for _, c := range conns {
			if _, err := c.WriteToUDPAddrPort(nil, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(t, "two unlocks", func() bool { return rec.count("unlock") >= 2 })
	time.Sleep(1500 * time.Millisecond) // the reorder window, and a janitor tick or more
	var unlocked []string
	for _, l := range rec.lines() {
		if strings.HasPrefix(l, "unlock ") {
			unlocked = append(unlocked, fields(l)["ip"])
		}
	}
	slices.Sort(unlocked)
	if !slices.Equal(unlocked, []string{"127.0.0.1", "127.0.0.2"}) {
		t.Errorf("unlocked %v, want 127.0.0.1 and 127.0.0.2", unlocked)
	}
	p.stop(t)
	logs := p.stderr.String()
	const refused = `level=WARN msg="client table full: knocks from new clients refused" event=overload refused=`
	if n := strings.Count(logs, refused); n != 1 || !strings.Contains(logs, "max_clients=2") || strings.Contains(logs, "attempts in progress dropped") {
		t.Errorf("want one refusal line and no eviction:\n%s", logs)
	}
}

// Item 11, the tracker: with room for two, three clients knocking interleaved do not push each
// other out in turn: the first two unlock, whatever the sequence's length; with room for three,
// all do. A newcomer whose knocks complete a door is never refused.
func TestTrackerMaxClientsInterleavedClients(t *testing.T) {
	for _, tc := range []struct {
		seqLen, maxClients int
		want               []int // unlocks of 127.0.0.1, .2, .3
		refused            bool
	}{
		{3, 2, []int{1, 1, 0}, true},
		{4, 2, []int{1, 1, 0}, true},
		{6, 2, []int{1, 1, 0}, true},
		{4, 3, []int{1, 1, 1}, false},
		{4, 1, []int{1, 0, 0}, true},
	} {
		t.Run(fmt.Sprintf("%d ports, room for %d", tc.seqLen, tc.maxClients), func(t *testing.T) {
			seq := []uint16{11, 12, 13, 14, 15, 16}[:tc.seqLen]
			c := testConfig(seq...)
			c.maxClients = tc.maxClients
			tr, rec := newTestTracker(c)
			t0 := time.Now().UnixNano()
			ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
			i := 0
			for _, p := range seq {
				for _, ip := range ips {
					feed(tr, knock{from: key(ip), port: up(p), ts: t0 + int64(i)*int64(5*ms)})
					i++
				}
			}
			tr.sweep(t0 + int64(2*time.Second))
			var got []int
			for _, ip := range ips {
				got = append(got, rec.unlocked(ip))
			}
			if !slices.Equal(got, tc.want) || tr.evicted.Load() != 0 || (tr.refused.Load() > 0) != tc.refused {
				t.Fatalf("unlocks %v (want %v), evicted %d (want 0), refused %d", got, tc.want, tr.evicted.Load(), tr.refused.Load())
			}
		})
	}
	// Two clients halfway through a four-port door fill the table; a third completes a two-port
	// door with its second knock: it unlocks, and one attempt in progress gives way.
	c := testConfig(1, 2, 3, 4)
	c.doors = append(c.doors, testDoor("short", 7, 8))
	c.maxClients = 2
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	for i, k := range []knock{{from: key("10.0.0.1"), port: up(1)}, {from: key("10.0.0.2"), port: up(1)}, {from: key("10.0.0.1"), port: up(2)},
		{from: key("10.0.0.2"), port: up(2)}, {from: key("10.0.0.3"), port: up(7)}, {from: key("10.0.0.3"), port: up(8)}} {
		k.ts = t0 + int64(i)*int64(ms)
		feed(tr, k)
	}
	if rec.unlocked("10.0.0.3") != 1 || tr.refused.Load() != 0 || tr.evicted.Load() != 1 {
		t.Fatalf("a completing newcomer: unlocked %d, refused %d, evicted %d; want 1, 0, 1", rec.unlocked("10.0.0.3"), tr.refused.Load(), tr.evicted.Load())
	}
}

// Item 10: README's INI example checks in the repository as README says.
func TestCLIReadmeINIExampleChecks(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "saved as `ssh.ini`")
	_, block, ok2 := strings.Cut(rest, "```ini\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README has no INI example saved as ssh.ini")
	}
	ini := writeFile(t, t.TempDir(), "ssh.ini", block, 0o644)
	stdout, stderr, code := runKK(t, "check", "--config", ini)
	if code != 0 || !strings.HasSuffix(stdout, "\nok\n") || !strings.Contains(stdout, "hook:         hooks/ssh-doors.lua (") {
		t.Fatalf("check --config ssh.ini: exit %d\n%s%s", code, stdout, stderr)
	}
}

// Hook and config files must be regular files of a bounded size: a device, a FIFO or a directory
// is refused at once (never read or waited on), with one line, exit 2; so is a SIGHUP reload of
// a hook file that has become a FIFO, and the running hook goes on.
func TestCLIHookAndConfigMustBeRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	const hookHead = "function on_unlock(ev) end\n"
	pad := func(n int) string { return hookHead + "--" + strings.Repeat("x", n-len(hookHead)-3) + "\n" }
	bigHook := writeFile(t, dir, "big.lua", pad(4<<20+1), 0o644)
	fullHook := writeFile(t, dir, "full.lua", pad(4<<20), 0o644)
	bigINI := writeFile(t, dir, "big.ini", "[Application Options]\nports = 4000,2000,3000,1000\n;"+strings.Repeat("x", 1<<20)+"\n", 0o644)
	ports := []string{"-p", "4000,2000,3000,1000"}
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--hook", "/dev/zero"}, "knockknock: hook /dev/zero: not a regular file (a device)\n"},
		{[]string{"--hook", fifo}, "knockknock: hook " + fifo + ": not a regular file (a FIFO)\n"},
		{[]string{"--hook", dir}, "knockknock: hook " + dir + ": not a regular file (a directory)\n"},
		{[]string{"--hook", bigHook}, "knockknock: hook " + bigHook + ": larger than 4194304 bytes\n"},
		{[]string{"--hook", filepath.Join(dir, "none.lua")}, "knockknock: hook " + filepath.Join(dir, "none.lua") + ": no such file or directory\n"},
		{[]string{"--config", "/dev/zero"}, "knockknock: config /dev/zero: not a regular file (a device)\n"},
		{[]string{"--config", fifo}, "knockknock: config " + fifo + ": not a regular file (a FIFO)\n"},
		{[]string{"--config", bigINI}, "knockknock: config " + bigINI + ": larger than 1048576 bytes\n"},
	} {
		for _, cmd := range []string{"check", "serve"} {
			start := time.Now()
			runCase(t, append(append([]string{cmd}, ports...), tc.args...), 2, tc.stderr)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("knockknock %s %q took %v", cmd, tc.args, d)
			}
		}
	}
	if out := runCase(t, append([]string{"check", "--hook", fullHook}, ports...), 0, ""); !strings.HasSuffix(out, "\nok\n") {
		t.Errorf("a hook of exactly 4 MiB: %q", out)
	}

	// A SIGHUP reload reads the hook file again, with the same rule.
	hook := writeFile(t, dir, "record.lua", string(must(os.ReadFile("testdata/record.lua"))), 0o644)
	rec := recording(filepath.Join(dir, "events"))
	knocks := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(knocks), "--hook", hook, "--hook-arg", "out="+string(rec))
	os.Remove(hook)
	if err := syscall.Mkfifo(hook, 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	want := `level=ERROR msg="hook reload failed; the running hook goes on" event=hook_reload err="hook ` + hook + `: not a regular file (a FIFO)"`
	waitFor(t, "the refused reload", func() bool { return strings.Contains(p.stderr.String(), want) })
	knockWith(t, "-p", portList(knocks), "127.0.0.1")
	waitFor(t, "an unlock by the running hook", func() bool { return rec.count("unlock") == 1 })
	if code := p.stop(t); code != 0 {
		t.Errorf("the server exited %d", code)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A switch in a config file is exactly true or false; anything else, empty too, names its line.
func TestCLIConfigBooleans(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range []struct {
		line string
		ok   bool
	}{
		{"capture = true", true}, {"capture = false", true}, {`verbose = "true"`, true}, {"verbose = false", true},
		{"capture =", false}, {"capture = 1", false}, {"capture = 0", false}, {"capture = t", false}, {"verbose = F", false},
		{"capture = TRUE", false}, {"verbose = True", false}, {"verbose = yes", false}, {`capture = ""`, false},
	} {
		ini := writeFile(t, dir, fmt.Sprintf("b%d.ini", i), "[Application Options]\nports = 4000,2000,3000,1000\n"+tc.line+"\n", 0o644)
		if tc.ok {
			if out := runCase(t, []string{"check", "--config", ini}, 0, ""); !strings.HasSuffix(out, "\nok\n") {
				t.Errorf("%q: %q", tc.line, out)
			}
			continue
		}
		key, value, _ := strings.Cut(tc.line, "=")
		value = strings.Trim(strings.TrimSpace(value), `"`)
		want := fmt.Sprintf("knockknock: config %s line 3: invalid %s %q: want true or false\n", ini, strings.TrimSpace(key), value)
		runCase(t, []string{"check", "--config", ini}, 2, want)
		runCase(t, []string{"knock", "--config", ini, "127.0.0.1"}, 2, want)
	}
}

// Every config file error names the file and the line, and echoes the file's text quoted where
// it is not printable.
func TestCLIConfigFileErrorsNameTheLine(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range []struct {
		body, stderr string // stderr: after "knockknock: config FILE "
	}{
		{"[Foo]\nx = 1\n", `line 1: unknown section [Foo] (sections: [Application Options], [knock])`},
		{"[Application Options]\nports = 4000,2000,3000,1000\n[serve]\n", `line 3: unknown section [serve] (sections: [Application Options], [knock])`},
		{"[Appl\xffcation Options]\n", `line 1: unknown section ["Appl\xffcation Options"] (sections: [Application Options], [knock])`},
		{"[Application Options\n", `line 1: malformed section header "[Application Options": want [NAME]`},
		{"[Application Options]\nports 4000\n", `line 2: "ports 4000": want KEY = VALUE`},
		{"[Application Options]\nports = \"4000\n", `line 2: malformed quoted value "\"4000"`},
		{"[Application Options]\nportz = 1,2,3\n", `line 2: unknown option: portz`},
		{"[Application Options]\npo\x00rts = 1,2,3\n", `line 2: unknown option: "po\x00rts"`},
		{"[Application Options]\nports = 4000,2000,3000,1000\n[knock]\nwait = abc\n", `line 4: invalid wait "abc": want a duration from 10ms to 10m, such as 3s`},
		{"[knock]\n-d = 1s\ndelay = abc\n", `line 2: unknown option: -d`},
		{"[knock]\ndelay = 1s\nd = 2s\n", `line 3: d is given again (first on line 2): it takes one value`},
		{"[Application Options]\nhook-arg = port\n", `line 2: invalid hook-arg "port": want KEY=VALUE`},
		{"[Application Options]\nhook-arg = 1x=2\n", `line 2: invalid hook-arg "1x=2": key "1x": use letters, digits and _, not starting with a digit`},
		{"[Application Options]\nports = 4000,2000,3000,1000\nports = 5000,1000,3000,2000\n", `line 3: ports is given again (first on line 2): it takes one value`},
		{"ports = 4000,2000,3000,1000\n[Application Options]\nports = 5000,1000,3000,2000\n", `line 3: ports is given again (first on line 1): it takes one value`},
		{"[Application Options]\nhook = a.lua\nhook = b.lua\n", `line 3: hook is given again (first on line 2): it takes one value`},
		{"[knock]\nexpect-address = nowhere\n", `line 2: invalid expect-address "nowhere": want an IP address or local`},
	} {
		ini := writeFile(t, dir, fmt.Sprintf("e%d.ini", i), tc.body, 0o644)
		want := "knockknock: config " + ini + " " + tc.stderr + "\n"
		runCase(t, []string{"check", "--config", ini}, 2, want)
		runCase(t, []string{"knock", "--config", ini, "127.0.0.1"}, 2, want)
	}
	// A value that the file gives, with control bytes: quoted.
	ini := writeFile(t, dir, "nul.ini", "[Application Options]\nports = 4\x00\xff,2\n", 0o644)
	runCase(t, []string{"check", "--config", ini}, 2, `knockknock: invalid --ports "4\x00\xff,2": "4\x00\xff" is not a port number (1-65535)`+"\n")
	// A path that the file gives, with control bytes: escaped wherever an error names it.
	ini = writeFile(t, dir, "paths.ini", "[Application Options]\nports = 4000,2000,3000,1000\nhook = a\x00b\xff\u200b.lua\n", 0o644)
	runCase(t, []string{"check", "--config", ini}, 2, `knockknock: hook a\x00b\xff\u200b.lua: invalid argument`+"\n")
	runCase(t, []string{"check", "--config", ini, "--hook", "hooks/log-only.lua", "--secret-file", "s\x01\x7f"}, 2, `knockknock: invalid --secret-file: s\x01\x7f: no such file or directory`+"\n")
	// What is repeatable may repeat.
	ok := writeFile(t, dir, "ok.ini", "[Application Options]\ndoor = a=4000,2000,3000,1000\ndoor = b=5000,1000,3000,2000\nhook-arg = a=1\nhook-arg = a=2\n[knock]\ndelay = 5ms\n", 0o644)
	if out := runCase(t, []string{"check", "--config", ok}, 0, ""); !strings.Contains(out, "hook-arg:     a=2\n") {
		t.Errorf("check --config ok.ini: %q", out)
	}
}

// A command line's first word that is no command, and empty keygen names, and client options
// that do nothing without a key or with another sequence: one line, exit 2, nothing done.
func TestCLIRefusedCommandLines(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	runKK(t, "keygen", secret)
	waitINI := writeFile(t, dir, "wait.ini", "[knock]\nwait = 2s\n", 0o644)
	bothINI := writeFile(t, dir, "both.ini", "[Application Options]\nports = 3,4\ndoor = a=1,2\n", 0o644)
	const unknown = "knockknock: unknown command %q (commands: serve, knock, check, keygen, help)\n"
	const needsKey = "knockknock: knock: --%s needs --secret-file: only an authenticated knock %s\n"
	expectMsg := fmt.Sprintf(needsKey, "expect-address", "learns the address the server sees")
	waitMsg := fmt.Sprintf(needsKey, "wait", "waits for the server's confirmation")
	const both = "knockknock: use either --ports (one door) or --door (named doors), not both\n"
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"bogus"}, fmt.Sprintf(unknown, "bogus")},
		{[]string{"-p", "4000,2000,3000,1000", "chek"}, fmt.Sprintf(unknown, "chek")},
		{[]string{""}, fmt.Sprintf(unknown, "")},
		{[]string{"check", "stray"}, "knockknock: unexpected argument \"stray\" (see knockknock help check)\n"},
		{[]string{"keygen", "--user", ""}, "knockknock: keygen --user: a user name has 1 to 64 characters\n"},
		{[]string{"keygen", "--user="}, "knockknock: keygen --user: a user name has 1 to 64 characters\n"},
		{[]string{"keygen", ""}, "knockknock: keygen: FILE is empty: name the file to write, or leave it out to print the key\n"},
		{[]string{"keygen", "--user", "alice", ""}, "knockknock: keygen: FILE is empty: name the file to write, or leave it out to print the key\n"},
		{[]string{"knock", "--expect-address", "local", "127.0.0.1"}, expectMsg},
		{[]string{"knock", "--expect-address", "", "127.0.0.1"}, expectMsg},
		{[]string{"knock", "--wait", "1s", "127.0.0.1"}, waitMsg},
		{[]string{"knock", "--wait", "3s", "127.0.0.1"}, waitMsg},
		{[]string{"knock", "--config", waitINI, "127.0.0.1"}, waitMsg},
		{[]string{"knock", "--door", "a=1,2", "-p", "3,4", "127.0.0.1"}, both},
		{[]string{"knock", "--door", "a=1,2", "-p", "3,4", "127.0.0.1", "5"}, both},
		{[]string{"knock", "--config", bothINI, "127.0.0.1"}, both},
	} {
		if out := runCase(t, tc.args, 2, tc.stderr); out != "" {
			t.Errorf("knockknock %q printed %q", tc.args, out)
		}
	}
	// keygen wrote nothing for the refused lines; the same lines with names work.
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("files in the test directory: %v", entries)
	}
	if out := runCase(t, []string{"keygen", "--user", "alice"}, 0, ""); !strings.HasPrefix(out, "alice ") {
		t.Errorf("keygen --user alice: %q", out)
	}
	// With the key, --wait and --expect-address apply: an authenticated knock to a server that
	// is not there waits --wait, then says so.
	port := freePort(t)
	start := time.Now()
	_, stderr, code := runKK(t, "knock", "--secret-file", secret, "--wait", "300ms", "--expect-address", "local", "127.0.0.1", strconv.Itoa(int(port)))
	if code != 1 || !strings.Contains(stderr, "no answer from 127.0.0.1:"+strconv.Itoa(int(port))+" within 300ms") || time.Since(start) > 3*time.Second {
		t.Errorf("knock with a key, --wait 300ms: exit %d after %v, %q", code, time.Since(start), stderr)
	}
}
