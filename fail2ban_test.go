package main

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scripts/fail2ban/knockknock.conf, run by fail2ban's own fail2ban-regex, matches every "knock
// failed" line the server writes, in both log formats, and finds the address that knocked.
func TestE2EFail2banFilterMatchesFailLines(t *testing.T) {
	if _, err := exec.LookPath("fail2ban-regex"); err != nil {
		t.Skip("SKIP: fail2ban-regex is not installed (apt-get install fail2ban)")
	}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			s := startRecording(t, "--log-format", format)
			sources := []string{"127.0.0.2", "127.0.0.3"}
			for _, src := range sources {
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)))
				if err != nil {
					t.Fatal(err)
				}
				// The second port first: wrong, a failure for this source.
				if _, err := c.WriteToUDPAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.ports[1])); err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			waitFor(t, "two fail events", func() bool { return s.rec.count("fail ") == 2 })
			s.stop(t)
			log := filepath.Join(t.TempDir(), "knockknock.log")
			logs := s.stderr.String()
			if err := os.WriteFile(log, []byte(logs), 0o644); err != nil {
				t.Fatal(err)
			}
			fails := strings.Count(logs, "knock failed")
			if fails != 2 {
				t.Fatalf("%d knock failed lines, want 2:\n%s", fails, logs)
			}
			out, err := exec.Command("fail2ban-regex", "--print-all-matched", log, "scripts/fail2ban/knockknock.conf").CombinedOutput()
			if err != nil {
				t.Fatalf("fail2ban-regex: %v\n%s", err, out)
			}
			m := regexp.MustCompile(`Lines: \d+ lines, \d+ ignored, (\d+) matched`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("no Lines: summary in\n%s", out)
			}
			if n, _ := strconv.Atoi(string(m[1])); n != fails {
				t.Errorf("the filter matched %d lines, want the %d knock failed lines:\n%s", n, fails, out)
			}
			for _, src := range sources {
				if !strings.Contains(string(out), src) {
					t.Errorf("no matched line from %s:\n%s", src, out)
				}
			}
		})
	}
}

// Two doors share their first port: a client knocking one of them ends its attempt on the other,
// and the server logs that failure with right_for naming the door the knock was right for. Such
// a line is no failure (the server's own --ban-after does not count it), and the filter ignores
// it: an honest client is never banned for knocking its door. ev.right_for says the same to
// on_fail. A real wrong knock is still matched.
func TestE2EFail2banIgnoresAKnockRightForAnotherDoor(t *testing.T) {
	if _, err := exec.LookPath("fail2ban-regex"); err != nil {
		t.Skip("SKIP: fail2ban-regex is not installed (apt-get install fail2ban)")
	}
	hook := filepath.Join(t.TempDir(), "fails.lua")
	out := filepath.Join(t.TempDir(), "fails")
	os.WriteFile(hook, []byte(`local knock = require("knock")
function on_unlock(ev) end
function on_fail(ev)
  local f = assert(io.open(knock.args.out, "a"))
  f:write(string.format("fail ip=%s door=%s reason=%s right_for=%s\n", ev.ip, ev.door, ev.reason, tostring(ev.right_for)))
  f:close()
end
`), 0o644)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			os.Remove(out)
			p := []uint16{freePort(t), freePort(t), freePort(t), freePort(t)}
			srv := startServer(t, "--log-format", format, "--ban-after", "1", "--hook", hook, "--hook-arg", "out="+out,
				"--door", "open="+portList(p[:3]), "--door", "close="+portList([]uint16{p[0], p[3]}))
			send := func(src string, port uint16) {
				t.Helper()
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.WriteToUDPAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)); err != nil {
					t.Fatal(err)
				}
			}
			// 127.0.0.4 knocks door open twice: each time its second knock ends its attempt on
			// door close. With --ban-after 1 a counted failure would ban it before the second.
			for range 2 {
				for _, port := range p[:3] {
					send("127.0.0.4", port)
				}
				time.Sleep(50 * time.Millisecond)
			}
			send("127.0.0.5", p[2]) // a wrong knock: a failure, and with --ban-after 1 a ban
			want := []string{
				"fail ip=127.0.0.4 door=close reason=wrong_port right_for=open",
				"fail ip=127.0.0.4 door=close reason=wrong_port right_for=open",
				"fail ip=127.0.0.5 door=open reason=wrong_port right_for=nil",
				"fail ip=127.0.0.5 door=open reason=banned right_for=nil",
			}
			waitFor(t, "four failures", func() bool { b, _ := os.ReadFile(out); return strings.Count(string(b), "\n") >= 4 })
			srv.stop(t)
			got, _ := os.ReadFile(out)
			logs := srv.stderr.String()
			if strings.Join(want, "\n")+"\n" != string(got) || strings.Count(logs, `"msg":"unlock"`)+strings.Count(logs, "msg=unlock ") != 2 {
				t.Fatalf("on_fail saw\n%s\nwant\n%s\nand two unlocks of door open in the log:\n%s", got, strings.Join(want, "\n"), logs)
			}
			log := filepath.Join(t.TempDir(), "knockknock.log")
			if err := os.WriteFile(log, []byte(logs), 0o644); err != nil {
				t.Fatal(err)
			}
			res, err := exec.Command("fail2ban-regex", "--print-all-matched", log, "scripts/fail2ban/knockknock.conf").CombinedOutput()
			if err != nil {
				t.Fatalf("fail2ban-regex: %v\n%s", err, res)
			}
			m := regexp.MustCompile(`Lines: \d+ lines, (\d+) ignored, (\d+) matched`).FindSubmatch(res)
			matched := regexp.MustCompile(`(?s)Matched line\(s\):(.*?)\n\s*` + "`" + `-`).FindSubmatch(res)
			if m == nil || string(m[1]) != "2" || string(m[2]) != "2" || matched == nil ||
				strings.Count(string(matched[1]), "127.0.0.5") != 2 || strings.Contains(string(matched[1]), "127.0.0.4") {
				t.Fatalf("want the two right_for lines ignored and 127.0.0.5's two lines matched:\n%s", res)
			}
		})
	}
}
