package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// Issue 8, end to end: capture mode (--capture) and TCP knocks, as root, on loopback and
// between two network namespaces. Helpers are prefixed cap; doors_test.go (issue 9) uses them.

// ---------------------------------------------------------------------------------------------
// Helpers

// capNeedRoot skips a test that needs raw sockets (root, Linux), and the named tools.
func capNeedRoot(t *testing.T, tools ...string) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("SKIP: capture mode is Linux-only")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: capture mode needs root (CAP_NET_RAW)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: %s is not installed", tool)
		}
	}
}

// capPorts returns n different ports from freePort.
func capPorts(t *testing.T, n int) []uint16 {
	t.Helper()
	seen := map[uint16]bool{}
	var ports []uint16
	for len(ports) < n {
		if p := freePort(t); !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports
}

// capSeq formats a knock sequence: capSeq("%d:tcp,%d,%d:tcp", a, b, c).
func capSeq(format string, ports ...uint16) string {
	args := make([]any, len(ports))
	for i, p := range ports {
		args[i] = p
	}
	return fmt.Sprintf(format, args...)
}

// capSpecs parses a sequence as knockknock does (a bare port is UDP).
func capSpecs(t *testing.T, s string) []portSpec {
	t.Helper()
	specs, err := parsePortSpecs(s, protoUDP)
	if err != nil {
		t.Fatal(err)
	}
	return specs
}

// capQuietHook is a hook that does nothing on unlock: the server's own log says what happened.
func capQuietHook(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "quiet.lua")
	if err := os.WriteFile(path, []byte("function on_unlock(ev) end\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// capRecords parses a text log as slog's text handler writes it: one map per line.
func capRecords(log string) []map[string]string {
	var recs []map[string]string
	for _, line := range strings.Split(log, "\n") {
		rec := map[string]string{}
		s := strings.TrimSpace(line)
		for s != "" {
			k, rest, ok := strings.Cut(s, "=")
			if !ok || strings.ContainsAny(k, " \"") {
				break
			}
			var v string
			if strings.HasPrefix(rest, `"`) {
				q, err := strconv.QuotedPrefix(rest)
				if err != nil {
					break
				}
				v, _ = strconv.Unquote(q)
				rest = rest[len(q):]
			} else {
				v, rest, _ = strings.Cut(rest, " ")
			}
			rec[k] = v
			s = strings.TrimLeft(rest, " ")
		}
		if len(rec) > 0 {
			recs = append(recs, rec)
		}
	}
	return recs
}

// capFind lists the server's log records with message msg and the given key=value pairs.
func capFind(p *proc, msg string, kv ...string) []map[string]string {
	var out []map[string]string
next:
	for _, r := range capRecords(p.stderr.String()) {
		if r["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if r[kv[i]] != kv[i+1] {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

// capCount is len(capFind(...)).
func capCount(p *proc, msg string, kv ...string) int { return len(capFind(p, msg, kv...)) }

// capUnlocks lists the unlocks in the log as "door ip".
func capUnlocks(p *proc) []string {
	var out []string
	for _, r := range capFind(p, "unlock") {
		out = append(out, r["door"]+" "+r["ip"])
	}
	return out
}

// capWaitUnlocks waits until the log has n unlocks of door from ip.
func capWaitUnlocks(t *testing.T, p *proc, n int, door, ip string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d unlocks of door %s from %s", n, door, ip), func() bool {
		return capCount(p, "unlock", "door", door, "ip", ip) >= n
	})
	if got := capCount(p, "unlock", "door", door, "ip", ip); got != n {
		t.Fatalf("%d unlocks of door %s from %s, want %d: %q", got, door, ip, n, capUnlocks(p))
	}
}

// capStop stops the server with SIGTERM and returns the fields of its "stopped" line.
func capStop(t *testing.T, p *proc) map[string]string {
	t.Helper()
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.stderr.String())
	}
	if strings.Contains(p.stderr.String(), "DATA RACE") {
		t.Fatalf("the race detector reported a data race in the server:\n%s", p.stderr.String())
	}
	recs := capFind(p, "stopped")
	if len(recs) != 1 {
		t.Fatalf("no stopped line:\n%s", p.stderr.String())
	}
	return recs[0]
}

// capNum reads a numeric field of a log record.
func capNum(t *testing.T, rec map[string]string, key string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(rec[key], 10, 64)
	if err != nil {
		t.Fatalf("field %s of %v: %v", key, rec, err)
	}
	return n
}

// capStartupDrops waits for a -v server's first drop report and returns its filtered count:
// what the raw sockets queued before their filters were attached, which the server drains and
// counts as filtered (other processes' traffic of the same protocol, on a busy host). Tests
// subtract it from the final dropped.filtered.
func capStartupDrops(t *testing.T, p *proc) uint64 {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // the janitor reports within 250ms; the log is flushed every 50ms
	var n uint64
	for _, r := range capFind(p, "datagrams dropped") {
		if v, err := strconv.ParseUint(r["filtered"], 10, 64); err == nil {
			n += v
		}
	}
	return n
}

// capKnockFrom knocks seq on dst from the local address src, so that tests can play several
// clients over loopback: a TCP knock is a connection attempt (refused: the port is closed), a
// UDP knock an empty datagram.
func capKnockFrom(t *testing.T, src, dst string, seq []portSpec) {
	t.Helper()
	for _, p := range seq {
		to := netip.AddrPortFrom(netip.MustParseAddr(dst), p.port)
		if p.proto == protoTCP {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
			c, err := d.Dial("tcp", to.String())
			if err == nil {
				c.Close()
				t.Fatalf("%s accepted a connection: a knock port must answer as a closed port", to)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("TCP knock from %s on %s: %v", src, to, err)
			}
			continue
		}
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(to))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(nil); err != nil {
			t.Fatalf("UDP knock from %s on %s: %v", src, to, err)
		}
		c.Close()
	}
}

// capRun runs a command (a knock client) and fails the test if it fails.
func capRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// capNmap scans one port of host with nmap (-sS or -sU) and returns its state. wrap runs nmap
// elsewhere (ip netns exec NS).
func capNmap(t *testing.T, wrap []string, scan, host string, port uint16) string {
	t.Helper()
	args := append(append([]string{}, wrap...), "nmap", "-n", "-Pn", scan, "-p", strconv.Itoa(int(port)))
	if strings.Contains(host, ":") {
		args = append(args, "-6")
	}
	args = append(args, host)
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	want := fmt.Sprintf("%d/%s", port, map[string]string{"-sS": "tcp", "-sU": "udp"}[scan])
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == want {
			return f[1]
		}
	}
	t.Fatalf("nmap output has no line for %s:\n%s", want, out)
	return ""
}

// capRawSockets counts the raw sockets process pid holds, from its descriptors and its
// namespace's /proc/net/raw and raw6.
func capRawSockets(t *testing.T, pid int) int {
	t.Helper()
	raw := map[string]bool{}
	for _, f := range []string{"raw", "raw6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if fs := strings.Fields(line); len(fs) > 9 {
				raw[fs[9]] = true
			}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok && raw[strings.TrimSuffix(inode, "]")] {
			n++
		}
	}
	return n
}

// capCPU is the user+system time of process pid (all its threads), from /proc/PID/stat.
func capCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:])) // from field 3, the state
	utime, err1 := strconv.ParseInt(f[11], 10, 64)                 // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64)                 // field 15
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	const clockTick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(utime+stime) * clockTick
}

// capNet is a pair of network namespaces joined by a veth pair, with documentation addresses:
// a server side and a client side.
type capNet struct{ srv, cli string }

const (
	capSrv4, capCli4 = "198.51.100.1", "198.51.100.2"
	capSrv6, capCli6 = "2001:db8:51::1", "2001:db8:51::2"
)

var capNetSerial atomic.Int32

func capNewNet(t *testing.T) capNet {
	t.Helper()
	capNeedRoot(t, "ip")
	id := fmt.Sprintf("%d%d", os.Getpid()%10000, capNetSerial.Add(1)%10)
	n := capNet{srv: "kkcap-srv-" + id, cli: "kkcap-cli-" + id}
	for _, ns := range []string{n.srv, n.cli} {
		exec.Command("ip", "netns", "del", ns).Run()
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	vs, vc := "kkcs"+id, "kkcc"+id
	sh(t, "ip", "link", "add", vs, "netns", n.srv, "type", "veth", "peer", "name", vc, "netns", n.cli)
	for _, side := range []struct{ ns, dev, v4, v6 string }{{n.srv, vs, capSrv4, capSrv6}, {n.cli, vc, capCli4, capCli6}} {
		sh(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
		sh(t, "ip", "-n", side.ns, "addr", "add", side.v4+"/24", "dev", side.dev)
		sh(t, "ip", "-n", side.ns, "-6", "addr", "add", side.v6+"/64", "dev", side.dev, "nodad")
		sh(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
		// One scan probe a run never meets the ICMP rate limit, but a test must not depend on
		// how fast the previous run was: a closed UDP port always answers here.
		sh(t, "ip", "netns", "exec", side.ns, "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
	}
	return n
}

func (n capNet) wrap(ns string) []string { return []string{"ip", "netns", "exec", ns} }

func (n capNet) in(ns string, args ...string) *exec.Cmd {
	w := n.wrap(ns)
	return exec.Command(w[0], append(w[1:], args...)...)
}

// ---------------------------------------------------------------------------------------------
// 1. A scan cannot tell the knock ports from closed ones

// capScan is one nmap run: a port and a scan type.
type capScan struct {
	port uint16
	scan string // -sS or -sU
}

// capScanAll scans each port in order, one nmap run each, and checks that every port, knock
// port or not, is "closed".
func capScanAll(t *testing.T, wrap []string, host string, scans []capScan) []string {
	t.Helper()
	var seen []string
	for _, s := range scans {
		state := capNmap(t, wrap, s.scan, host, s.port)
		seen = append(seen, fmt.Sprintf("%d/%s %s", s.port, map[string]string{"-sS": "tcp", "-sU": "udp"}[s.scan], state))
		if state != "closed" {
			t.Errorf("%s: nmap %s port %d: %s, want closed like every unused port", host, s.scan, s.port, state)
		}
	}
	return seen
}

// A server in capture mode with a door of TCP and UDP ports. nmap, one port per run, scans each
// knock port and an unused port with -sS and -sU, over IPv4 and IPv6: every one is closed. The
// order of the runs is the doors' sequences backwards, so nmap's retries cannot complete one.
// The server did see the probes (it logs them as knocks), and none unlocked.
func TestCaptureScanCannotTellKnockPorts(t *testing.T) {
	capNeedRoot(t, "nmap")
	p := capPorts(t, 4)
	a, b, c, unused := p[0], p[1], p[2], p[3]
	srv := startServer(t, "--capture", "-v", "--door", capSeq("d=%d:tcp,%d:udp,%d:tcp", a, b, c), "--hook", capQuietHook(t))
	scans := []capScan{{unused, "-sS"}, {c, "-sS"}, {unused, "-sU"}, {b, "-sU"}, {a, "-sS"}}
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Logf("%s: %s", host, strings.Join(capScanAll(t, nil, host, scans), ", "))
	}
	waitFor(t, "the probes in the log", func() bool { return capCount(srv, "knock") >= 6 })
	for _, host := range []string{"127.0.0.1", "::1"} {
		for _, port := range []uint16{a, b, c} {
			if capCount(srv, "knock", "ip", host, "port", strconv.Itoa(int(port))) == 0 {
				t.Errorf("the server did not see nmap's probe of %d from %s", port, host)
			}
		}
		if capCount(srv, "knock", "port", strconv.Itoa(int(unused))) != 0 {
			t.Errorf("the server saw a probe of the unused port %d: its filter lets other ports in", unused)
		}
	}
	time.Sleep(300 * time.Millisecond) // an unlock never waits for the reorder window; the log is flushed
	if u := capUnlocks(srv); len(u) != 0 {
		t.Fatalf("the scans unlocked: %q", u)
	}
	if rec := capStop(t, srv); rec["unlocks"] != "0" {
		t.Fatalf("unlocks=%s after the scans", rec["unlocks"])
	}
}

// ---------------------------------------------------------------------------------------------
// 2. TCP knocks: knockd's client and knockknock's

// knockd's knock client (TCP unless told otherwise) and knockknock's own client unlock a TCP
// door and a mixed door in capture mode, over IPv4 and IPv6.
func TestCaptureTCPKnocksUnlock(t *testing.T) {
	capNeedRoot(t, "knock")
	p := capPorts(t, 6)
	srv := startServer(t, "--capture", "-v", "--hook", capQuietHook(t),
		"--door", capSeq("tcp=%d:tcp,%d:tcp,%d:tcp", p[0], p[2], p[1]),
		"--door", capSeq("mixed=%d:tcp,%d:udp,%d:udp", p[3], p[5], p[4]))
	tcpDoor := []string{capSeq("%d", p[0]), capSeq("%d", p[2]), capSeq("%d", p[1])}
	knockdMixed := []string{capSeq("%d", p[3]), capSeq("%d:udp", p[5]), capSeq("%d:udp", p[4])}
	kkTCP := []string{capSeq("%d:tcp", p[0]), capSeq("%d:tcp", p[2]), capSeq("%d:tcp", p[1])}
	kkMixed := []string{capSeq("%d:tcp", p[3]), capSeq("%d", p[5]), capSeq("%d", p[4])} // a bare port is UDP
	for _, c := range []struct {
		family, host string
	}{{"-4", "127.0.0.1"}, {"-6", "::1"}} {
		capRun(t, append([]string{"knock", c.family, c.host}, tcpDoor...)...)
		capWaitUnlocks(t, srv, 1, "tcp", c.host)
		capRun(t, append([]string{"knock", c.family, c.host}, knockdMixed...)...)
		capWaitUnlocks(t, srv, 1, "mixed", c.host)
		capRun(t, append([]string{binPath, "knock", c.family, c.host}, kkTCP...)...)
		capWaitUnlocks(t, srv, 2, "tcp", c.host)
		capRun(t, append([]string{binPath, "knock", c.family, c.host}, kkMixed...)...)
		capWaitUnlocks(t, srv, 2, "mixed", c.host)
	}
	rec := capStop(t, srv)
	if rec["unlocks"] != "8" || capCount(srv, "knock") != 24 {
		t.Fatalf("unlocks=%s, %d knocks logged; want 8 unlocks of 24 knocks", rec["unlocks"], capCount(srv, "knock"))
	}
}

// The same from another network namespace, over a veth link: scans first (nothing to tell
// apart, nothing unlocked), then knockd's client and knockknock's, over IPv4 and IPv6.
func TestCaptureNetnsScanThenKnock(t *testing.T) {
	capNeedRoot(t, "ip", "nmap", "knock")
	n := capNewNet(t)
	srv := startIn(t, n.in(n.srv, binPath, "--capture", "-v", "--hook", capQuietHook(t),
		"--door", "tcp=7001:tcp,7003:tcp,7002:tcp", "--door", "mixed=7004:tcp,7006:udp,7005:udp"))
	// The doors' sequences backwards, interleaved: no order of these runs completes one.
	scans := []capScan{{7500, "-sS"}, {7002, "-sS"}, {7500, "-sU"}, {7005, "-sU"}, {7006, "-sU"}, {7001, "-sS"}}
	for _, host := range []string{capSrv4, capSrv6} {
		t.Logf("%s: %s", host, strings.Join(capScanAll(t, n.wrap(n.cli), host, scans), ", "))
	}
	for _, ip := range []string{capCli4, capCli6} {
		waitFor(t, "the probes from "+ip, func() bool { return capCount(srv, "knock", "ip", ip) >= 4 })
	}
	time.Sleep(300 * time.Millisecond)
	if u := capUnlocks(srv); len(u) != 0 {
		t.Fatalf("the scans unlocked: %q", u)
	}
	for _, c := range []struct{ family, srv, cli string }{{"-4", capSrv4, capCli4}, {"-6", capSrv6, capCli6}} {
		for i, args := range [][]string{
			{"knock", c.family, c.srv, "7001", "7003", "7002"},
			{"knock", c.family, c.srv, "7004", "7006:udp", "7005:udp"},
			{binPath, "knock", c.family, c.srv, "7001:tcp", "7003:tcp", "7002:tcp"},
			{binPath, "knock", c.family, c.srv, "7004:tcp", "7006", "7005"},
		} {
			if out, err := n.in(n.cli, args...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
			capWaitUnlocks(t, srv, i/2+1, []string{"tcp", "mixed"}[i%2], c.cli)
		}
	}
	if rec := capStop(t, srv); rec["unlocks"] != "8" {
		t.Fatalf("unlocks=%s, want 8", rec["unlocks"])
	}
}

// ---------------------------------------------------------------------------------------------
// 3. Only a SYN without ACK is a knock

// capSegment sends one crafted TCP segment from src:sport to dst:dport (IPv4), with a valid
// checksum, through a raw socket.
func capSegment(t *testing.T, src, dst netip.Addr, sport, dport uint16, flags uint8, payload []byte) {
	t.Helper()
	conn, err := net.ListenIP("ip4:tcp", &net.IPAddr{IP: src.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seg := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(seg[0:], sport)
	binary.BigEndian.PutUint16(seg[2:], dport)
	binary.BigEndian.PutUint32(seg[4:], 0x01020304) // sequence
	binary.BigEndian.PutUint32(seg[8:], 0x05060708) // acknowledgment
	seg[12] = 5 << 4                                // header length: 5 words
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 65535) // window
	copy(seg[20:], payload)
	pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, syscall.IPPROTO_TCP, byte(len(seg)>>8), byte(len(seg)))
	var sum uint32
	for _, b := range [][]byte{pseudo, seg} {
		for i := 0; i < len(b); i += 2 {
			w := uint32(b[i]) << 8
			if i+1 < len(b) {
				w |= uint32(b[i+1])
			}
			sum += w
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(seg[16:], ^uint16(sum))
	if _, err := conn.WriteToIP(seg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

// A TCP service runs on a port that is also a knock port. An established connection's
// segments to it (data, ACKs, FIN) and crafted segments with other flags (ACK, PSH, FIN, RST,
// SYN+ACK, URG) are never knocks: no knock, failure or unlock. Only a new connection's SYN is. With one flag rule
// for every TCP port, the kernel's filter drops them (dropped.filtered stays 0); with two rules,
// the intake drops them, and counts each in dropped.filtered.
func TestCaptureEstablishedTCPNeverCounts(t *testing.T) {
	capNeedRoot(t)
	for _, c := range []struct {
		name   string
		doors  func(k, u, t2, x, y uint16) []string
		inProc bool // the segments reach the process, to be dropped there
	}{
		{"kernel filter", func(k, u, t2, _, _ uint16) []string {
			return []string{"--door", capSeq("d=%d:tcp,%d:udp,%d:tcp", k, u, t2)}
		}, false},
		{"intake filter", func(k, u, t2, x, y uint16) []string {
			return []string{"--door", capSeq("d=%d:tcp,%d:udp,%d:tcp", k, u, t2), "--door", capSeq("e=%d:tcp,%d:tcp tcp-flags=syn,!ack,!rst", x, y)}
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := capPorts(t, 5)
			knockPort := p[0]
			ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", knockPort))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() { // an echo service
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(conn, conn); conn.Close() }()
				}
			}()
			dial := func() (net.Conn, *bufio.Reader) {
				conn, err := net.Dial("tcp4", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				return conn, bufio.NewReader(conn)
			}
			exchange := func(conn net.Conn, r *bufio.Reader, rounds int) {
				for i := range rounds {
					msg := fmt.Sprintf("line %d of an established connection\n", i)
					if _, err := conn.Write([]byte(msg)); err != nil {
						t.Fatal(err)
					}
					if got, err := r.ReadString('\n'); err != nil || got != msg {
						t.Fatalf("echo: %q, %v", got, err)
					}
				}
			}
			old, oldR := dial() // established before the server starts: its SYN came before
			exchange(old, oldR, 1)
			args := append([]string{"--capture", "-v", "--hook", capQuietHook(t)}, c.doors(p[0], p[1], p[2], p[3], p[4])...)
			srv := startServer(t, args...)
			drained := capStartupDrops(t, srv)

			const rounds = 20
			exchange(old, oldR, rounds)
			lo := netip.MustParseAddr("127.0.0.1")
			crafted := []uint8{tcpACK, tcpPSH | tcpACK, tcpFIN | tcpACK, tcpRST, tcpRST | tcpACK, tcpSYN | tcpACK, tcpFIN, tcpURG | tcpACK}
			for _, f := range crafted {
				capSegment(t, lo, lo, 40000+uint16(f), knockPort, f, []byte("x"))
			}
			old.Close()
			time.Sleep(300 * time.Millisecond) // -v logs a knock as it comes, before the tracker
			if n := capCount(srv, "knock") + capCount(srv, "knock failed") + capCount(srv, "unlock"); n != 0 {
				t.Fatalf("%d knock, failure or unlock lines for segments that are not SYNs:\n%s", n, srv.stderr.String())
			}

			// A new connection: its SYN is one knock, the rest of it nothing.
			conn, r := dial()
			exchange(conn, r, rounds)
			conn.Close()
			srcPort := strconv.Itoa(conn.LocalAddr().(*net.TCPAddr).Port)
			waitFor(t, "the new connection's SYN", func() bool { return capCount(srv, "knock", "source_port", srcPort) >= 1 })
			time.Sleep(300 * time.Millisecond)
			if n := capCount(srv, "knock"); n != 1 || capCount(srv, "knock", "source_port", srcPort, "port", strconv.Itoa(int(knockPort)), "proto", "tcp") != 1 {
				t.Fatalf("%d knocks, want 1, the new connection's SYN:\n%s", n, srv.stderr.String())
			}
			rec := capStop(t, srv)
			filtered := capNum(t, rec, "dropped.filtered") - drained
			// Non-SYN segments to the knock port, at least: each connection's data segments (one a
			// round: each waits for its echo), and the crafted ones; ACKs and FINs come on top.
			least := uint64(2*rounds + len(crafted))
			t.Logf("%s: dropped.filtered=%d besides %d drained at start (at least %d non-SYN segments to the knock port)", c.name, filtered, drained, least)
			if c.inProc && filtered < least {
				t.Errorf("dropped.filtered=%d, want at least %d: the intake must count what it drops", filtered, least)
			}
			if !c.inProc && filtered > 2 {
				t.Errorf("dropped.filtered=%d, want ~0: with one flag rule, the kernel filter keeps non-SYN segments out", filtered)
			}
		})
	}
}

// ---------------------------------------------------------------------------------------------
// 4. The filter keeps other traffic out of the process

// The unfiltered raw reader is this test binary run again: init runs it before TestMain (which
// would build knockknock again) when KKCAP_RAW_READER is set. It reads a raw UDP socket with no
// filter as the server reads its own, and reports how many packets it read on SIGTERM.
func init() {
	if os.Getenv("KKCAP_RAW_READER") == "1" {
		capRawReader()
	}
}

func capRawReader() {
	conn, err := net.ListenIP("ip4:udp", nil)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if rc, err := conn.SyscallConn(); err == nil {
		tuneReceive(rc, syscall.AF_INET, captureBuffer) // the server's buffer, timestamps and pktinfo
	}
	var n atomic.Int64
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Printf("received %d\n", n.Load())
		os.Exit(0)
	}()
	fmt.Println("ready")
	buf, oob := make([]byte, 2048), make([]byte, 128)
	for {
		if _, _, _, _, err := conn.ReadMsgIP(buf, oob); err == nil {
			n.Add(1)
		}
	}
}

// capFlood sends n datagrams from 127.0.0.1 to the ports of 127.0.0.1, in turn, in batches
// (sendmmsg) so that the sender is quick.
func capFlood(t *testing.T, n int, ports []uint16) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := ipv4.NewPacketConn(conn)
	payload := make([]byte, 32)
	batch := make([]ipv4.Message, 256)
	sent := 0
	for sent < n {
		m := batch[:min(len(batch), n-sent)]
		for i := range m {
			m[i] = ipv4.Message{Buffers: [][]byte{payload}, Addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(ports[(sent+i)%len(ports)])}}
		}
		k, err := pc.WriteBatch(m, 0)
		if err != nil {
			t.Fatalf("flood: %d of %d sent: %v", sent, n, err)
		}
		sent += k
	}
}

// capSettle waits until process pid stops using CPU (two readings 200ms apart agree), at most 10s.
func capSettle(t *testing.T, pid int) time.Duration {
	t.Helper()
	last := capCPU(t, pid)
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		now := capCPU(t, pid)
		if now == last {
			return now
		}
		last = now
	}
	return last
}

// 200,000 datagrams to ports the server does not watch: the BPF filter drops them in the
// kernel, so they cost the server next to no CPU (compared with the same time idle), and never
// reach its intake (dropped.filtered stays ~0). A raw reader without a filter, started the same
// way (this test binary, built as the server is), reads the same flood and pays for every
// packet. Then a quarter of the flood on a knock port, which the filter lets in, shows what the
// server pays when packets reach it. (Other processes' loopback traffic only adds to what the raw
// reader reads; the server's filter keeps it out.)
func TestCaptureFilterKeepsFloodOut(t *testing.T) {
	capNeedRoot(t)
	const flood = 200_000
	p := capPorts(t, 3+8)
	srv := startServer(t, "--capture", "--hook", capQuietHook(t), "--door", capSeq("d=%d,%d:tcp,%d", p[0], p[1], p[2]))
	reader := exec.Command(os.Args[0])
	reader.Env = append(os.Environ(), "KKCAP_RAW_READER=1")
	out, err := reader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	reader.Stderr = os.Stderr
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	defer reader.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		reader.Wait()
		t.Fatalf("the raw reader did not start: %q", lines.Text())
	}
	srvPid, readerPid := srv.cmd.Process.Pid, reader.Process.Pid
	time.Sleep(300 * time.Millisecond) // both past their start
	// The unwatched ports are bound by sockets nobody reads, so that the kernel drops the flood
	// there (a full receive buffer) instead of answering each datagram with an ICMP error.
	for _, port := range p[3:] {
		sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
		if err != nil {
			t.Fatal(err)
		}
		defer sink.Close()
	}
	s0, r0 := capCPU(t, srvPid), capCPU(t, readerPid)
	start := time.Now()
	capFlood(t, flood, p[3:])
	sent := time.Since(start)
	time.Sleep(300 * time.Millisecond) // the reader drains its queue
	s1, r1 := capCPU(t, srvPid), capCPU(t, readerPid)
	window := time.Since(start)
	reader.Process.Signal(syscall.SIGTERM)
	var received int
	if lines.Scan() {
		fmt.Sscanf(lines.Text(), "received %d", &received)
	}
	reader.Wait()
	// The server's own housekeeping (the janitor's sweeps) when idle, over as long a window: a
	// shorter one scaled up multiplies its noise (a race-built server's idle CPU varies).
	time.Sleep(window)
	idle := capCPU(t, srvPid) - s1

	s2 := capCPU(t, srvPid)
	capFlood(t, flood/4, p[:1]) // the first knock port: every datagram passes the filter
	quarter := capSettle(t, srvPid) - s2
	open := quarter * 4
	rec := capStop(t, srv)
	filtered := capNum(t, rec, "dropped.filtered")
	server, raw := s1-s0, r1-r0
	t.Logf("%d datagrams to 8 unwatched ports, sent in %v: server CPU %v (%v when idle as long; dropped.filtered=%d); unfiltered raw reader CPU %v (read %d packets); a quarter of it to a knock port: server CPU %v (%v for the whole flood)",
		flood, sent.Round(time.Millisecond), server, idle.Round(time.Millisecond), filtered, raw, received, quarter, open)
	if received < flood*9/10 {
		t.Errorf("the raw reader read %d of %d datagrams: the comparison needs it to see the flood", received, flood)
	}
	if raw < 100*time.Millisecond || open < 100*time.Millisecond {
		t.Errorf("reading the flood cost the raw reader %v and the server %v on a knock port: too little to compare with", raw, open)
	}
	if excess := server - idle; excess > 30*time.Millisecond || excess > raw/20 || excess > open/20 {
		t.Errorf("a flood its filter drops cost the server %v over its idle %v; an unfiltered reader %v, the server on a knock port %v", excess, idle, raw, open)
	}
	if filtered > flood/1000 { // ~0: at most what was drained at start on a busy host
		t.Errorf("dropped.filtered=%d: the flood to unwatched ports reached the process", filtered)
	}
}

// ---------------------------------------------------------------------------------------------
// 5. Clear failures

// Without CAP_NET_RAW (as nobody), capture mode exits 1 with one line naming the capability and
// root; --knockd-config, which implies capture, too. TCP knocks without --capture are a usage
// error: exit 2, one line saying they need --capture.
func TestCaptureFailuresAreClear(t *testing.T) {
	for _, args := range [][]string{
		{"--door", "ssh=7000:tcp,8000,9000"},
		{"-p", "7000,8000:tcp,9000"},
		{"-p", "7000,8000,9000", "--decoys", "7500:tcp"},
	} {
		_, stderr, code := runKK(t, args...)
		if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "need --capture") {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line saying TCP knocks need --capture", args, code, stderr)
		}
	}
	if os.Geteuid() != 0 || runtime.GOOS != "linux" {
		t.Skip("SKIP: running without CAP_NET_RAW takes root (to become nobody)")
	}
	os.Chmod(filepath.Dir(binPath), 0o755) // nobody must reach the binary
	conf, err := filepath.Abs("testdata/knockd.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--capture", "-p", "7000:tcp,8000,9000"},
		{"--capture", "--door", "u=7000,8000,9000"},
		{"--knockd-config", conf},
	} {
		cmd := exec.Command(binPath, args...)
		cmd.Dir = filepath.Dir(binPath) // no hooks/ there: the embedded hooks
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if cmd.ProcessState == nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		last := lines[len(lines)-1]
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.HasPrefix(last, "knockknock: capture mode cannot open a raw") ||
			!strings.Contains(last, "CAP_NET_RAW") || !strings.Contains(last, "root") {
			t.Errorf("%q as nobody: exit %d, stderr %q; want exit 1 and a line naming CAP_NET_RAW and root", args, code, stderr.String())
		}
		if args[0] == "--capture" && len(lines) != 1 {
			t.Errorf("%q as nobody: %d lines on stderr, want 1: %q", args, len(lines), stderr.String())
		}
	}
}

// ---------------------------------------------------------------------------------------------
// 6. The other features, in capture mode

// A knock on a decoy (TCP or UDP) resets the client's attempt; the next clean knock unlocks.
func TestCaptureDecoys(t *testing.T) {
	capNeedRoot(t)
	p := capPorts(t, 5)
	door := capSeq("%d:tcp,%d,%d:tcp", p[0], p[1], p[2])
	srv := startServer(t, "--capture", "-v", "--hook", capQuietHook(t), "--door", "d="+door, "--decoys", capSeq("%d:tcp,%d", p[3], p[4]))
	seq, decoys := capSpecs(t, door), capSpecs(t, capSeq("%d:tcp,%d", p[3], p[4]))
	for i, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		capKnockFrom(t, ip, "127.0.0.1", []portSpec{seq[0], decoys[i], seq[1], seq[2]})
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		waitFor(t, "a decoy failure from "+ip, func() bool { return capCount(srv, "knock failed", "ip", ip, "reason", "decoy") == 1 })
	}
	if u := capUnlocks(srv); len(u) != 0 {
		t.Fatalf("a knock with a decoy in it unlocked: %q", u)
	}
	capKnockFrom(t, "127.0.0.2", "127.0.0.1", seq)
	capWaitUnlocks(t, srv, 1, "d", "127.0.0.2")
	capStop(t, srv)
}

// After --ban-after wrong knocks, a source's knocks are dropped, the right sequence too; another
// source still gets in.
func TestCaptureBans(t *testing.T) {
	capNeedRoot(t)
	p := capPorts(t, 3)
	srv := startServer(t, "--capture", "-v", "--hook", capQuietHook(t), "--door", capSeq("d=%d:tcp,%d,%d:tcp", p[0], p[1], p[2]),
		"--ban-after", "2", "--ban-time", "1m")
	seq := capSpecs(t, capSeq("%d:tcp,%d,%d:tcp", p[0], p[1], p[2]))
	capKnockFrom(t, "127.0.0.2", "127.0.0.1", seq[1:2]) // wrong: not the first port
	capKnockFrom(t, "127.0.0.2", "127.0.0.1", seq[2:3]) // wrong again
	waitFor(t, "the ban", func() bool { return capCount(srv, "knock failed", "ip", "127.0.0.2", "reason", "banned") == 1 })
	capKnockFrom(t, "127.0.0.2", "127.0.0.1", seq)
	capKnockFrom(t, "127.0.0.3", "127.0.0.1", seq)
	capWaitUnlocks(t, srv, 1, "d", "127.0.0.3")
	time.Sleep(300 * time.Millisecond)
	if capCount(srv, "unlock", "ip", "127.0.0.2") != 0 {
		t.Fatalf("a banned source unlocked: %q", capUnlocks(srv))
	}
	if rec := capStop(t, srv); capNum(t, rec, "dropped.banned") != 3 {
		t.Fatalf("dropped.banned=%s, want the banned source's 3 knocks", rec["dropped.banned"])
	}
}

// Authenticated knocks (UDP) in capture mode: the challenge and the confirmation leave from the
// knock ports through the raw sockets, over IPv4 and IPv6; a plain knock or a wrong key gets
// nothing, and the ports still scan as closed.
func TestCaptureAuthenticatedKnocks(t *testing.T) {
	capNeedRoot(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if _, _, code := runKK(t, "keygen", secret); code != 0 {
		t.Fatal("keygen failed")
	}
	p := capPorts(t, 3)
	seq := capSeq("%d,%d,%d", p[0], p[2], p[1])
	srv := startServer(t, "--capture", "--hook", capQuietHook(t), "--secret-file", secret, "-p", seq)
	capKnockFrom(t, "127.0.0.1", "127.0.0.1", capSpecs(t, seq)) // plain knocks
	for _, host := range []string{"127.0.0.1", "::1"} {
		out, errOut, code := runKK(t, "knock", "--secret-file", secret, "-p", seq, host)
		if code != 0 || !strings.Contains(out, fmt.Sprintf("unlocked door default on %s for %s", host, host)) {
			t.Fatalf("authenticated knock on %s: exit %d, %q %q", host, code, out, errOut)
		}
	}
	other := filepath.Join(t.TempDir(), "other")
	runKK(t, "keygen", other)
	if _, errOut, code := runKK(t, "knock", "--wait", "500ms", "--secret-file", other, "-p", seq, "127.0.0.1"); code != 1 || !strings.Contains(errOut, "no answer") {
		t.Fatalf("wrong key: exit %d, %q", code, errOut)
	}
	if _, err := exec.LookPath("nmap"); err == nil {
		if state := capNmap(t, nil, "-sU", "127.0.0.1", p[0]); state != "closed" {
			t.Errorf("nmap -sU: the first knock port is %s, want closed", state)
		}
	}
	rec := capStop(t, srv)
	if rec["unlocks"] != "2" || capNum(t, rec, "dropped.unauthenticated") < 3 || capNum(t, rec, "dropped.unknown_key") == 0 {
		t.Fatalf("unlocks=%s dropped.unauthenticated=%s dropped.unknown_key=%s; want 2, at least 3, some",
			rec["unlocks"], rec["dropped.unauthenticated"], rec["dropped.unknown_key"])
	}
}

// hooks/unlock.lua closes the knock ports on unlock: in capture mode the raw sockets close, and
// knocks are no longer seen. A hook that opens them again a moment later gets them back.
func TestCaptureCloseAndOpenKnockPorts(t *testing.T) {
	capNeedRoot(t)
	p := capPorts(t, 4)
	door := capSeq("d=%d:tcp,%d,%d:tcp", p[0], p[1], p[2])
	seq := capSpecs(t, strings.TrimPrefix(door, "d="))
	srv := startServer(t, "--capture", "-v", "--door", door, "--hook", "hooks/unlock.lua", "--hook-arg", fmt.Sprintf("port=%d", p[3]))
	pid := srv.cmd.Process.Pid
	if n := capRawSockets(t, pid); n != 4 {
		t.Fatalf("%d raw sockets before the knock, want 4 (UDP and TCP, IPv4 and IPv6)", n)
	}
	capKnockFrom(t, "127.0.0.1", "127.0.0.1", seq)
	waitFor(t, "the service", func() bool { return capCount(srv, "service started") == 1 })
	// The hook starts the service, then closes the knock ports; a socket's descriptor is
	// released once its reader has woken up.
	waitFor(t, "the knock ports closed", func() bool { return capCount(srv, "knock ports closed") == 1 })
	waitFor(t, "no raw socket after close_knock_ports", func() bool { return capRawSockets(t, pid) == 0 })
	if body := httpGet(t, p[3]); !strings.Contains(body, "127.0.0.1") {
		t.Fatalf("the service answered %q", body)
	}
	knocks := capCount(srv, "knock")
	capKnockFrom(t, "127.0.0.2", "127.0.0.1", seq)
	time.Sleep(300 * time.Millisecond)
	if capCount(srv, "knock") != knocks || len(capUnlocks(srv)) != 1 {
		t.Fatalf("knocks seen after close_knock_ports:\n%s", srv.stderr.String())
	}
	capStop(t, srv)

	hook := filepath.Join(t.TempDir(), "reopen.lua")
	os.WriteFile(hook, []byte(`function on_unlock(ev)
  knock.close_knock_ports()
  knock.after(1, function() assert(knock.open_knock_ports()) end)
end
`), 0o644)
	srv = startServer(t, "--capture", "-v", "--door", door, "--hook", hook)
	pid = srv.cmd.Process.Pid
	capKnockFrom(t, "127.0.0.1", "127.0.0.1", seq)
	waitFor(t, "the raw sockets closed", func() bool { return capRawSockets(t, pid) == 0 })
	waitFor(t, "the raw sockets open again", func() bool { return capRawSockets(t, pid) == 4 })
	waitFor(t, "the log of it", func() bool { return capCount(srv, "knock ports open") == 1 })
	capKnockFrom(t, "::1", "::1", seq)
	capWaitUnlocks(t, srv, 1, "d", "::1")
	capStop(t, srv)
}

// With --listen, only knocks sent to that address count: the same knocks to another local
// address are dropped as filtered; no raw socket of the other family is opened.
func TestCaptureListenAddress(t *testing.T) {
	capNeedRoot(t)
	p := capPorts(t, 3)
	door := capSeq("%d:tcp,%d,%d:tcp", p[0], p[1], p[2])
	srv := startServer(t, "--capture", "-v", "--listen", "127.0.0.2", "--hook", capQuietHook(t), "--door", "d="+door)
	if n := capRawSockets(t, srv.cmd.Process.Pid); n != 2 {
		t.Fatalf("%d raw sockets with --listen 127.0.0.2, want 2 (IPv4 UDP and TCP)", n)
	}
	drained := capStartupDrops(t, srv)
	capKnockFrom(t, "127.0.0.1", "127.0.0.1", capSpecs(t, door))
	time.Sleep(300 * time.Millisecond) // -v logs a knock as it comes, before the tracker
	if capCount(srv, "knock") != 0 || len(capUnlocks(srv)) != 0 {
		t.Fatalf("knocks sent to 127.0.0.1 counted:\n%s", srv.stderr.String())
	}
	capKnockFrom(t, "127.0.0.1", "127.0.0.2", capSpecs(t, door))
	capWaitUnlocks(t, srv, 1, "d", "127.0.0.1")
	if rec := capStop(t, srv); capNum(t, rec, "dropped.filtered")-drained != 3 {
		t.Fatalf("dropped.filtered=%s with %d drained at start, want 3 more (the knocks sent to 127.0.0.1)", rec["dropped.filtered"], drained)
	}
}
