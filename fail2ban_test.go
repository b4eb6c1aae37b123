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
