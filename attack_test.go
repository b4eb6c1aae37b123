//go:build linux

package main

// Issue 11, "Under attack": each attack of the issue against the real server process, over real
// sockets, from many 127.0.0.0/8 source addresses on loopback (IP_PKTINFO picks each datagram's
// source address on one socket). These are the cheap versions, for CI; scripts/attack.sh runs
// the heavy ones (100,000-sequence floods, a sustained 100,000 first knocks a second, ...).
// Every figure a test checks comes from the server: its log, its hook's output file,
// /proc/PID/status, /proc/net/udp, /proc/net/tcp.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// atkSlow divides flood rates and sizes under the race detector: the server under test is then
// built with -race too, and is several times slower.
func atkSlow() int {
	if raceEnabled {
		return 4
	}
	return 1
}

// atkKnock is one datagram: a source address and a destination port on 127.0.0.1.
type atkKnock struct {
	src  netip.Addr
	port uint16
}

// atkSender sends knocks from any source address of 127.0.0.0/8 through one socket, in batches
// (sendmmsg).
type atkSender struct {
	conn *net.UDPConn
	pc   *ipv4.PacketConn
	dst  netip.Addr
}

func atkNewSender(t *testing.T) *atkSender {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetWriteBuffer(8 << 20)
	t.Cleanup(func() { conn.Close() })
	return &atkSender{conn: conn, pc: ipv4.NewPacketConn(conn), dst: netip.MustParseAddr("127.0.0.1")}
}

// send sends the knocks in order, paced to rate datagrams a second (0: as fast as it goes), until
// stop is closed (nil: never). It returns how many it sent.
func (s *atkSender) send(knocks []atkKnock, rate int, stop <-chan struct{}) int {
	const batch = 64
	msgs := make([]ipv4.Message, 0, batch)
	start := time.Now()
	sent := 0
	flush := func() {
		for off := 0; off < len(msgs); {
			n, err := s.pc.WriteBatch(msgs[off:], 0)
			if err != nil {
				if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
					time.Sleep(50 * time.Microsecond)
					continue
				}
				break
			}
			off += n
			sent += n
		}
		msgs = msgs[:0]
	}
	for i, k := range knocks {
		if i%batch == 0 && stop != nil {
			select {
			case <-stop:
				flush()
				return sent
			default:
			}
		}
		cm := &ipv4.ControlMessage{Src: k.src.AsSlice()}
		msgs = append(msgs, ipv4.Message{Buffers: [][]byte{{}}, OOB: cm.Marshal(), Addr: &net.UDPAddr{IP: s.dst.AsSlice(), Port: int(k.port)}})
		if len(msgs) == batch {
			flush()
		}
		if rate > 0 && len(msgs) == 0 {
			if d := time.Until(start.Add(time.Duration(float64(sent) * float64(time.Second) / float64(rate)))); d > time.Millisecond {
				time.Sleep(d)
			}
		}
	}
	flush()
	return sent
}

// one sends a single knock at once. (t.Errorf: it may run on another goroutine.)
func (s *atkSender) one(t *testing.T, src string, port uint16) {
	t.Helper()
	if s.send([]atkKnock{{netip.MustParseAddr(src), port}}, 0, nil) != 1 {
		t.Errorf("knock from %s to %d not sent", src, port)
	}
}

// atkAddr is the i-th address from first, inside 127.0.0.0/8.
func atkAddr(first string, i int) netip.Addr {
	b := netip.MustParseAddr(first).As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n += uint32(i)
	return netip.AddrFrom4([4]byte{127, byte(n >> 16), byte(n >> 8), byte(n)})
}

// atkClients makes n clients from first on, each sending ports back to back: client by client.
func atkClients(first string, n int, ports ...uint16) []atkKnock {
	ks := make([]atkKnock, 0, n*len(ports))
	for i := range n {
		src := atkAddr(first, i)
		for _, p := range ports {
			ks = append(ks, atkKnock{src, p})
		}
	}
	return ks
}

// atkRepeat is p, k times.
func atkRepeat(p uint16, k int) []uint16 {
	ps := make([]uint16, k)
	for i := range ps {
		ps[i] = p
	}
	return ps
}

// atkHook writes a hook file and returns its path.
func atkHook(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hook.lua")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// atkEventHook records unlocks (and bans) in a file: "unlock IP" and "banned IP" lines, and
// "total N" (unlocks the hook saw) at on_stop. It appends every unlock's ip to a table: a hook
// that does little.
const atkEventHook = `
local knock = require("knock")
ips = {}
local function line(s)
  local f = assert(io.open(knock.args.out, "a"))
  f:write(s .. "\n")
  f:close()
end
function on_unlock(ev)
  ips[#ips + 1] = ev.ip
  if knock.args.watch == nil or string.find(ev.ip, knock.args.watch, 1, true) == 1 then
    line("unlock " .. ev.ip)
  end
end
function on_fail(ev)
  if ev.reason == "banned" and (knock.args.watch == nil or string.find(ev.ip, knock.args.watch, 1, true) == 1) then
    line("banned " .. ev.ip)
  end
end
function on_stop() line("total " .. #ips) end
`

// atkServer is a server on three free ports with atkEventHook writing to out.
type atkServer struct {
	*proc
	ports []uint16
	out   recording
}

func atkStart(t *testing.T, watch string, extra ...string) *atkServer {
	t.Helper()
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	out := recording(filepath.Join(t.TempDir(), "events"))
	args := []string{"-p", portList(ports), "--hook", atkHook(t, atkEventHook), "--hook-arg", "out=" + string(out)}
	if watch != "" {
		args = append(args, "--hook-arg", "watch="+watch)
	}
	return &atkServer{proc: startServer(t, append(args, extra...)...), ports: ports, out: out}
}

// unlocked counts the hook's unlock lines for ip (a prefix ending in "." counts a range).
func (s *atkServer) unlocked(ip string) int { return atkCount(s.out, "unlock", ip) }

func (s *atkServer) banned(ip string) int { return atkCount(s.out, "banned", ip) }

func atkCount(r recording, kind, ip string) int {
	n := 0
	for _, l := range r.lines() {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == kind && (f[1] == ip || strings.HasSuffix(ip, ".") && strings.HasPrefix(f[1], ip) || strings.HasSuffix(ip, ":") && strings.HasPrefix(f[1], ip)) {
			n++
		}
	}
	return n
}

// atkStop stops the server and returns the fields of its "stopped" line.
func atkStop(t *testing.T, p *proc) map[string]string {
	t.Helper()
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	return atkLogLine(p.stderr.String(), "msg=stopped ")
}

// atkLogLine returns the fields of the last log line containing needle (nil if none).
func atkLogLine(log, needle string) map[string]string {
	var last map[string]string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, needle) {
			last = fields(l)
		}
	}
	return last
}

func atkNum(m map[string]string, k string) int64 {
	n, _ := strconv.ParseInt(m[k], 10, 64)
	return n
}

// atkMemKB reads VmRSS and VmHWM (peak RSS) of a process, in KiB.
func atkMemKB(t *testing.T, pid int) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			peak, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, peak
}

// atkWaitUntil polls cond every 5 ms until limit; it reports whether cond came true.
func atkWaitUntil(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// Attack 1: a flood of spoofed complete sequences. With a hook that does little, no unlock is
// lost unless the hook queue sheds it (counted and logged), and a genuine client from another
// /24 is unlocked within 5 s of its last knock, during the flood.
func TestAttackSequenceFloodLosesNoUnlock(t *testing.T) {
	n := 30000 / atkSlow()
	s := atkStart(t, "127.0.0.")
	flood := atkClients("127.1.0.1", n, s.ports...)
	snd := atkNewSender(t)
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Paced so that the kernel keeps every datagram: a drop would break a sequence, and
		// what is measured here is the server, not the socket buffer.
		sent.Store(int64(snd.send(flood, 90000/atkSlow(), nil)))
	}()
	time.Sleep(300 * time.Millisecond) // the flood is under way
	genuine := atkNewSender(t)
	for _, p := range s.ports {
		genuine.one(t, "127.0.0.1", p)
	}
	last := time.Now()
	if !atkWaitUntil(5*time.Second, func() bool { return s.unlocked("127.0.0.1") == 1 }) {
		t.Errorf("genuine client not unlocked within 5s of its last knock during a flood of %d spoofed sequences", n)
	}
	latency := time.Since(last)
	select {
	case <-done:
		t.Logf("note: the flood had ended %v before the genuine unlock was seen", latency)
	default:
	}
	<-done
	// The server has read every datagram (it stops reading at SIGTERM: a backlog left in the
	// socket buffers on a busy machine would be unlocks lost), then the reorder window passes
	// and the hook queue drains.
	atkWaitUntil(30*time.Second, func() bool { return udpUnread(s.ports...) == 0 })
	time.Sleep(settled)
	drops := udpDrops(s.ports...)
	stopped := atkStop(t, s.proc)
	shed := atkLogLine(s.stderr.String(), "msg=\"hook queue full")
	dispatched, shedUnlocks := atkNum(stopped, "unlocks"), atkNum(shed, "unlocks")
	total := int64(-1)
	for _, l := range s.out.lines() {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "total" {
			total, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	want := sent.Load()/3 + 1
	t.Logf("%d spoofed sequences (%d datagrams) + 1 genuine: hook saw %d, server dispatched %d, shed %d unlocks (%d events in all); kernel dropped %d datagrams; genuine unlocked %v after its last knock",
		n, sent.Load(), total, dispatched, shedUnlocks, atkNum(stopped, "hook_events_shed"), drops, latency.Round(time.Millisecond))
	if total != dispatched {
		t.Errorf("the hook saw %d unlocks, the server dispatched %d", total, dispatched)
	}
	if got := dispatched + shedUnlocks; got > want || got < want-drops {
		t.Errorf("%d unlocks dispatched + %d shed, want %d (less at most %d kernel drops): unlocks lost without being counted", dispatched, shedUnlocks, want, drops)
	}
}

// Attack 2: a genuine first knock, then 70,000 spoofed first knocks in about half a second, then
// the genuine second and third knocks: unlocked.
func TestAttackFirstKnockFloodBetweenGenuineKnocks(t *testing.T) {
	s := atkStart(t, "127.0.0.")
	snd := atkNewSender(t)
	snd.one(t, "127.0.0.1", s.ports[0])
	flood := atkClients("127.2.0.1", 70000, s.ports[0])
	start := time.Now()
	sent := snd.send(flood, 0, nil)
	took := time.Since(start)
	snd.one(t, "127.0.0.1", s.ports[1])
	snd.one(t, "127.0.0.1", s.ports[2])
	last := time.Now()
	ok := atkWaitUntil(5*time.Second, func() bool { return s.unlocked("127.0.0.1") == 1 })
	t.Logf("%d spoofed first knocks in %v (kernel dropped %d); genuine unlocked: %v (after %v)", sent, took.Round(time.Millisecond),
		udpDrops(s.ports...), ok, time.Since(last).Round(time.Millisecond))
	if !ok {
		t.Fatal("the genuine client was not unlocked after 70,000 spoofed first knocks between its first and second knock")
	}
}

// Attack 2, sustained: spoofed first knocks at a steady rate (100,000 a second in attack.sh), and
// a genuine three-knock sequence with the knocks 1 s apart during it. Memory stays bounded.
func TestAttackSustainedFirstKnockFlood(t *testing.T) {
	rate := 60000 / atkSlow()
	s := atkStart(t, "127.0.0.")
	pid := s.cmd.Process.Pid
	_, before := atkMemKB(t, pid)
	ports := s.ports
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	snd := atkNewSender(t)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i += 50000 {
			n := snd.send(atkClients(atkAddr("127.16.0.1", i).String(), 50000, ports[0]), rate, stop)
			sent.Add(int64(n))
			if n < 50000 {
				return
			}
		}
	}()
	start := time.Now()
	genuine := atkNewSender(t)
	for _, p := range ports {
		time.Sleep(time.Second)
		genuine.one(t, "127.0.0.1", p)
	}
	last := time.Now()
	ok := atkWaitUntil(5*time.Second, func() bool { return s.unlocked("127.0.0.1") == 1 })
	latency := time.Since(last)
	close(stop)
	wg.Wait()
	secs := time.Since(start).Seconds()
	rss, peak := atkMemKB(t, pid)
	t.Logf("%d spoofed first knocks in %.1fs (%.0f/s; kernel dropped %d); genuine knocks 1s apart unlocked: %v (%v after the last); RSS %d MiB, peak %d MiB (%d MiB at start)",
		sent.Load(), secs, float64(sent.Load())/secs, udpDrops(ports...), ok, latency.Round(time.Millisecond), rss>>10, peak>>10, before>>10)
	if !ok {
		t.Error("the genuine client was not unlocked during a sustained first-knock flood")
	}
	if limit := int64(64 << 10 * atkSlow()); peak > limit {
		t.Errorf("peak RSS %d MiB, over %d MiB", peak>>10, limit>>10)
	}
}

// atkWrong is a wrong knock pattern that never repeats the knock before it: the sequence's
// second and third ports in turn.
func atkWrong(s *atkServer, n int) []uint16 {
	ps := make([]uint16, n)
	for i := range ps {
		ps[i] = s.ports[1+i%2]
	}
	return ps
}

// atkGuess sends ports from src with a gap between knocks.
func atkGuess(t *testing.T, snd *atkSender, src string, gap time.Duration, ports ...uint16) {
	t.Helper()
	for i, p := range ports {
		if i > 0 {
			time.Sleep(gap)
		}
		snd.one(t, src, p)
	}
}

// Attack 3: --ban-after 3. A flood of spoofed wrong knocks, one per source (the 200,000;
// here 8 times the ban table, which --max-clients 1024 makes 1,024 records), then an address that
// fails 40 times and then knocks the sequence: it is banned, and not unlocked.
func TestAttackWrongKnockFloodThenGuessing(t *testing.T) {
	s := atkStart(t, "127.0.0.", "--ban-after", "3", "--max-clients", "1024")
	snd := atkNewSender(t)
	sent := snd.send(atkClients("127.3.0.1", 8192, s.ports[1]), 0, nil)
	time.Sleep(settled) // the wrong knocks settle: the ban table is full
	atkGuess(t, snd, "127.0.0.2", 10*time.Millisecond, append(atkWrong(s, 40), s.ports...)...)
	time.Sleep(settled) // the failures settle
	stopped := atkStop(t, s.proc)
	t.Logf("%d spoofed wrong knocks; then 127.0.0.2 failed 40 times: banned %d times, unlocked %d; %s knocks dropped as banned",
		sent, s.banned("127.0.0.2"), s.unlocked("127.0.0.2"), stopped["dropped.banned"])
	if s.banned("127.0.0.2") == 0 || s.unlocked("127.0.0.2") != 0 {
		t.Fatalf("after a flood of wrong knocks, an address that failed 40 times was banned %d times and unlocked %d times; want banned, not unlocked",
			s.banned("127.0.0.2"), s.unlocked("127.0.0.2"))
	}
}

// Attack 3, the ban table filled with bans: spoofed sources that each fail 3 times (3 wrong
// knocks each: the second port, the third, a decoy; 3,600 datagrams; about 200,000 fill the
// default table) take every record of
// the ban table (--max-clients 1024: 1,024 records) with an active ban. Then an address fails 40
// times and knocks the sequence: it must be banned, not unlocked. An address banned before the
// flood stays banned.
func TestAttackBanTableFullOfBans(t *testing.T) {
	decoy := freePort(t)
	s := atkStart(t, "", "--ban-after", "3", "--max-clients", "1024", "--decoys", strconv.Itoa(int(decoy)))
	snd := atkNewSender(t)
	atkGuess(t, snd, "127.0.0.3", 10*time.Millisecond, atkWrong(s, 3)...) // banned before the flood
	sent := 0
	for wave, base := range []string{"127.4.0.1", "127.4.10.1"} { // 600 at a time: the client table holds 1,024 attempts
		sent += snd.send(atkClients(base, 600, s.ports[1], s.ports[2], decoy), 0, nil)
		want := 600 * (wave + 1)
		if wave == 1 {
			want = 1000 // 1,023 records are left for the 1,200 sources
		}
		if !atkWaitUntil(5*time.Second, func() bool { return s.banned("127.4.") >= want }) {
			t.Fatalf("setup: %d spoofed sources banned after wave %d, want %d", s.banned("127.4."), wave+1, want)
		}
	}
	time.Sleep(500 * time.Millisecond) // the last of them settle
	if s.banned("127.0.0.3") == 0 {
		t.Fatal("setup: 127.0.0.3 was not banned by 3 failures")
	}
	atkGuess(t, snd, "127.0.0.2", 10*time.Millisecond, append(atkWrong(s, 40), s.ports...)...)
	atkGuess(t, snd, "127.0.0.3", 10*time.Millisecond, s.ports...)
	time.Sleep(settled) // the failures settle
	stopped := atkStop(t, s.proc)
	t.Logf("%d spoofed wrong knocks, 3 per source: %d sources banned; then 127.0.0.2 failed 40 times: banned %d times, unlocked %d; 127.0.0.3 (banned before) unlocked %d; %s knocks dropped as banned",
		sent, s.banned("127.4."), s.banned("127.0.0.2"), s.unlocked("127.0.0.2"), s.unlocked("127.0.0.3"), stopped["dropped.banned"])
	if s.unlocked("127.0.0.3") != 0 {
		t.Error("the flood lifted the ban of an address banned before it")
	}
	if s.banned("127.0.0.2") == 0 || s.unlocked("127.0.0.2") != 0 {
		t.Fatalf("with the ban table full of bans, an address that failed 40 times was banned %d times and unlocked %d times; want banned, not unlocked",
			s.banned("127.0.0.2"), s.unlocked("127.0.0.2"))
	}
}

// Attack 3, churn: --ban-after 2, and a steady flood of spoofed one-failure sources (5,000 a
// second, so the ban table of --max-clients 1024 turns over in a fraction of a second) while an
// address fails every second, 4 times, then knocks the sequence. Each of its failures must
// count: it is banned, not unlocked. (attack.sh: the default table, --ban-after 3, two-failure
// sources at 100,000 datagrams a second, a failure every 1.5 s.)
func TestAttackBanChurnByFlood(t *testing.T) {
	s := atkStart(t, "127.0.0.", "--ban-after", "2", "--max-clients", "1024")
	snd := atkNewSender(t)
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i += 1000 {
			n := snd.send(atkClients(atkAddr("127.8.0.1", i).String(), 1000, s.ports[1]), 5000, stop)
			sent.Add(int64(n))
			if n < 1000 {
				return
			}
		}
	}()
	start := time.Now()
	time.Sleep(1200 * time.Millisecond) // the table fills
	guesser := atkNewSender(t)
	atkGuess(t, guesser, "127.0.0.2", time.Second, atkWrong(s, 4)...)
	time.Sleep(300 * time.Millisecond)
	atkGuess(t, guesser, "127.0.0.2", 10*time.Millisecond, s.ports...)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	secs := time.Since(start).Seconds()
	time.Sleep(settled) // the last failures settle
	stopped := atkStop(t, s.proc)
	t.Logf("%d spoofed wrong knocks in %.1fs (%.0f/s); 127.0.0.2 failed 4 times, 1s apart: banned %d times, unlocked %d; %s knocks dropped as banned",
		sent.Load(), secs, float64(sent.Load())/secs, s.banned("127.0.0.2"), s.unlocked("127.0.0.2"), stopped["dropped.banned"])
	if s.banned("127.0.0.2") == 0 || s.unlocked("127.0.0.2") != 0 {
		t.Fatalf("during a flood of one-failure sources, an address that failed 4 times (--ban-after 2) was banned %d times and unlocked %d times; want banned, not unlocked",
			s.banned("127.0.0.2"), s.unlocked("127.0.0.2"))
	}
}

// Attack 3, the knocks behind a ban: addresses that fail 3 times (--ban-after 3) and send the
// sequence right behind (2 ms apart), before the failures have settled. The ban must stop the
// sequence: none unlocks.
func TestAttackBanStopsTheSequenceBehindIt(t *testing.T) {
	s := atkStart(t, "127.0.9.", "--ban-after", "3")
	p1, p2, p3 := s.ports[0], s.ports[1], s.ports[2]
	var wg sync.WaitGroup
	// If a sender cannot be made (t.Fatal), the goroutines already started still report through
	// t: they must end before the test does, and before its cleanup closes their sockets.
	defer wg.Wait()
	for i := range 10 {
		snd := atkNewSender(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			atkGuess(t, snd, atkAddr("127.0.9.1", i).String(), 2*time.Millisecond, p2, p3, p2, p1, p2, p3)
		}()
	}
	wg.Wait()
	time.Sleep(settled) // the failures settle
	atkStop(t, s.proc)
	banned, unlocked := 0, 0
	for i := range 10 {
		ip := atkAddr("127.0.9.1", i).String()
		if s.banned(ip) > 0 {
			banned++
			if s.unlocked(ip) > 0 {
				unlocked++
			}
		}
	}
	t.Logf("10 addresses failed 3 times and knocked the sequence right behind: %d banned, %d of them unlocked", banned, unlocked)
	if banned != 10 || unlocked != 0 {
		t.Fatalf("%d of 10 addresses banned, and %d of them unlocked by the sequence they sent right behind the failures", banned, unlocked)
	}
}

// atkNetns is a network namespace of the test's own with lo up: the server runs in it, and the
// test makes sockets in it.
type atkNetns struct{ name string }

func atkNewNetns(t *testing.T) atkNetns {
	t.Helper()
	needTools(t, "ip")
	ns := atkNetns{fmt.Sprintf("kk-atk-%d", os.Getpid()%100000)}
	exec.Command("ip", "netns", "del", ns.name).Run()
	sh(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.name).Run() })
	sh(t, "ip", "-n", ns.name, "link", "set", "lo", "up")
	return ns
}

// do runs fn on a thread that has entered the namespace: sockets fn makes live there.
func (ns atkNetns) do(t *testing.T, fn func()) {
	t.Helper()
	if err := inNetns("/run/netns/"+ns.name, func() error { fn(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// Attack 3, IPv6: a ban covers the source's /64 (the default --ban-prefix6 64), so a host that
// rotates its address inside its /64 stays banned; another /64 is not.
func TestAttackIPv6BanCoversThePrefix(t *testing.T) {
	ns := atkNewNetns(t)
	sh(t, "ip", "-n", ns.name, "-6", "addr", "add", "2001:db8:1::1/64", "dev", "lo", "nodad")
	sh(t, "ip", "-n", ns.name, "-6", "addr", "add", "2001:db8:2::1/64", "dev", "lo", "nodad")
	// Every address of 2001:db8:1::/64 is local (AnyIP), and sockets may bind any of them.
	sh(t, "ip", "-n", ns.name, "-6", "route", "add", "local", "2001:db8:1::/64", "dev", "lo")
	sh(t, "ip", "netns", "exec", ns.name, "sysctl", "-q", "-w", "net.ipv6.ip_nonlocal_bind=1")
	ports := []uint16{freePort(t), freePort(t), freePort(t)}
	out := recording(filepath.Join(t.TempDir(), "events"))
	p := startIn(t, exec.Command("ip", "netns", "exec", ns.name, binPath, "-p", portList(ports), "--ban-after", "3",
		"--hook", atkHook(t, atkEventHook), "--hook-arg", "out="+string(out)))
	srv := &atkServer{proc: p, ports: ports, out: out}
	// One socket per source address, made in the namespace.
	socks := map[string]*net.UDPConn{}
	srcs := []string{"2001:db8:1::a", "2001:db8:2::1"}
	for i := range 20 {
		srcs = append(srcs, fmt.Sprintf("2001:db8:1::%x:%x:%x", 0x100+i, i*7919, i*104729+1))
	}
	ns.do(t, func() {
		for _, src := range srcs {
			c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.ParseIP(src)})
			if err != nil {
				t.Errorf("bind %s: %v", src, err)
				continue
			}
			socks[src] = c
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range socks {
		defer c.Close()
	}
	knock := func(src string, gap time.Duration, ports ...uint16) {
		for i, port := range ports {
			if i > 0 {
				time.Sleep(gap)
			}
			if _, err := socks[src].WriteToUDP(nil, &net.UDPAddr{IP: net.ParseIP("2001:db8:1::1"), Port: int(port)}); err != nil {
				t.Fatalf("knock from %s: %v", src, err)
			}
		}
	}
	knock("2001:db8:1::a", 10*time.Millisecond, ports[1], ports[2], ports[1]) // 3 failures
	waitFor(t, "the ban of 2001:db8:1::a", func() bool { return srv.banned("2001:db8:1::a") > 0 })
	for _, src := range srcs[2:] { // rotating inside the /64
		knock(src, 5*time.Millisecond, ports...)
	}
	knock("2001:db8:2::1", 5*time.Millisecond, ports...) // another /64
	waitFor(t, "the other /64's unlock", func() bool { return srv.unlocked("2001:db8:2::1") == 1 })
	time.Sleep(300 * time.Millisecond)
	stopped := atkStop(t, srv.proc)
	rotated := atkCount(out, "unlock", "2001:db8:1:")
	t.Logf("banned 2001:db8:1::a; %d rotated addresses of its /64 knocked the sequence: %d unlocked, %s knocks dropped as banned; another /64 unlocked %d",
		len(srcs)-2, rotated, stopped["dropped.banned"], srv.unlocked("2001:db8:2::1"))
	if rotated != 0 || atkNum(stopped, "dropped.banned") != int64(3*(len(srcs)-2)) {
		t.Fatalf("a host rotating its address in a banned /64 unlocked %d times (dropped as banned: %s, want %d)",
			rotated, stopped["dropped.banned"], 3*(len(srcs)-2))
	}
}

// atkServiceHook starts the built-in service on port=ARG from on_start.
const atkServiceHook = `
function on_start()
  assert(knock.serve{ port = tonumber(knock.args.port), proto = "tcp", allow = knock.args.allow })
end
function on_unlock(ev) knock.allow(ev.ip, 60) end
`

// atkTCPConns counts the established TCP connections whose local port is port (the server's
// ends of its service connections, and the accept queue).
func atkTCPConns(port uint16) int {
	n := 0
	for _, c := range procSockets("tcp") {
		if c.local == port && c.state == "01" {
			n++
		}
	}
	return n
}

// atkDialFrom connects to 127.0.0.1:port from src.
func atkDialFrom(src netip.Addr, port uint16) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	return d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}

// atkAlive reports whether the server has not closed conn: it reads what is there without
// waiting, and sees an end of file or a reset.
func atkAlive(conn net.Conn) bool {
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	rc.Read(func(fd uintptr) bool {
		var buf [4096]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EAGAIN:
				alive = true
				return true
			case err != nil || n == 0:
				return true
			}
		}
	})
	return alive
}

// atkGet makes one HTTP request from src on a fresh connection and returns the body.
func atkGet(src netip.Addr, port uint16) (string, error) {
	conn, err := atkDialFrom(src, port)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	if err != nil && len(b) == 0 {
		return "", err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		return "", fmt.Errorf("answer %q", b)
	}
	return string(b), nil
}

// Attack 4: the built-in service under a connection flood: idle keep-alive connections (one
// request, then silence), connections that never send a byte, and slow-body POSTs, from many
// addresses. The server keeps at most 256 connections, its memory stays bounded, and a normal
// client is served once the attack ends.
func TestAttackServiceConnectionFlood(t *testing.T) {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	idle := min(2000, int(lim.Cur)-300)
	port := freePort(t)
	p := startServer(t, "-p", portList([]uint16{freePort(t), freePort(t), freePort(t)}), "--hook", atkHook(t, atkServiceHook), "--hook-arg", fmt.Sprintf("port=%d", port))
	waitFor(t, "the service", func() bool { return strings.Contains(p.stderr.String(), "service started") })
	pid := p.cmd.Process.Pid
	rssBefore, _ := atkMemKB(t, pid)
	if _, err := atkGet(netip.MustParseAddr("127.0.0.1"), port); err != nil {
		t.Fatalf("the service does not answer before the attack: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var refused atomic.Int64
	keep := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() { // on a t.Fatal path too: 2,000 descriptors held for the rest of the run
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	var wg sync.WaitGroup
	for w := range 8 { // idle connections: half keep-alive after a request, half silent
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < idle; i += 8 {
				c, err := atkDialFrom(atkAddr("127.5.0.1", i/8), port) // 8 per address
				if err != nil {
					refused.Add(1)
					continue
				}
				if i%2 == 0 {
					io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				}
				keep(c)
			}
		}()
	}
	for i := range 100 { // slow-body POSTs: headers, then a byte now and then
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := atkDialFrom(atkAddr("127.6.0.1", i/4), port)
			if err != nil {
				refused.Add(1)
				return
			}
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nx")
			keep(c)
		}()
	}
	wg.Wait()
	// The server accepts or resets what is queued: a connection still in the accept queue looks
	// open at the client. Then a moment for the closes the server makes aside.
	atkWaitUntil(30*time.Second, func() bool {
		for _, c := range procSockets("tcp") {
			if c.local == port && c.state == "0A" {
				return c.queued == 0
			}
		}
		return false
	})
	time.Sleep(200 * time.Millisecond)
	open := 0
	mu.Lock()
	for _, c := range conns {
		if atkAlive(c) {
			open++
		}
	}
	mu.Unlock()
	serverSide := atkTCPConns(port)
	during, duringErr := atkGet(netip.MustParseAddr("127.0.0.1"), port)
	rss, peak := atkMemKB(t, pid)
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	var after string
	var afterErr error
	atkWaitUntil(3*time.Second, func() bool {
		after, afterErr = atkGet(netip.MustParseAddr("127.0.0.1"), port)
		return afterErr == nil
	})
	t.Logf("%d idle + 100 slow-POST connections from %d addresses: %d still open at the client, %d established at the server's port (%d refused); RSS %d -> %d MiB (peak %d MiB); a normal client during the attack: %v; after: %v",
		idle, idle/8+25, open, serverSide, refused.Load(), rssBefore>>10, rss>>10, peak>>10, errString(duringErr, during), errString(afterErr, after))
	if open > serviceMaxConns || serverSide > serviceMaxConns+16 {
		t.Errorf("%d connections held open (server side %d), more than the limit %d", open, serverSide, serviceMaxConns)
	}
	if limit := int64(64 << 10 * atkSlow()); peak > limit {
		t.Errorf("peak RSS %d MiB under the connection flood, over %d MiB", peak>>10, limit>>10)
	}
	if afterErr != nil {
		t.Errorf("a normal client is not served after the attack ended: %v", afterErr)
	}
}

func errString(err error, ok string) string {
	if err != nil {
		return "refused (" + err.Error() + ")"
	}
	if strings.Contains(ok, "Hello") {
		return "served"
	}
	return "answered"
}

// Attack 4, allow="clients": a client the hook has not granted is reset right after the TCP
// handshake (so a scan sees the port open: only a firewall hook hides it); once it knocks, it
// is served.
func TestAttackServiceAllowClientsResetsStrangers(t *testing.T) {
	port := freePort(t)
	knockPorts := []uint16{freePort(t), freePort(t), freePort(t)}
	p := startServer(t, "-p", portList(knockPorts), "--hook", atkHook(t, atkServiceHook), "--hook-arg", fmt.Sprintf("port=%d", port), "--hook-arg", "allow=clients")
	waitFor(t, "the service", func() bool { return strings.Contains(p.stderr.String(), "service started") })
	stranger := netip.MustParseAddr("127.0.0.7")
	// The server's reset reaches the client's socket at a moment of its own: before connect()
	// returns, or before the request is written, or after. The first call after it fails with
	// ECONNRESET and takes the error: a read after a write that failed sees an end of file. So
	// the test wants ECONNRESET from one of the three calls and no byte read. A closed port
	// would refuse the SYN instead (ECONNREFUSED): a reset of an established connection means
	// that the handshake completed, and a scan sees it open.
	var n int
	var dialErr, writeErr, readErr error
	conn, dialErr := atkDialFrom(stranger, port)
	if dialErr == nil {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, writeErr = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		n, readErr = conn.Read(make([]byte, 100))
		conn.Close()
	}
	t.Logf("a stranger's connection: connect %v, write %v, read %d bytes, %v", dialErr, writeErr, n, readErr)
	reset := false
	for _, err := range []error{dialErr, writeErr, readErr} {
		reset = reset || errors.Is(err, syscall.ECONNRESET)
	}
	if n != 0 || !reset {
		t.Fatalf("a stranger's connection: connect %v, write %v, read %d bytes, %v; want a reset after the handshake", dialErr, writeErr, n, readErr)
	}
	snd := atkNewSender(t)
	for _, kp := range knockPorts {
		snd.one(t, "127.0.0.7", kp)
	}
	var body string
	var err error
	if !atkWaitUntil(5*time.Second, func() bool { body, err = atkGet(stranger, port); return err == nil }) || !strings.Contains(body, "Hello 127.0.0.7") {
		t.Fatalf("after knocking, the client is not served: %v %q", err, body)
	}
}

// Attack 5: duplicates, over real sockets, 100 clients at once from distinct addresses for each
// case: every port knocked 5 times with no gap; a wrong knock (the sequence's second or third
// port) or a decoy knock sent 5 times, then the sequence. All 100 of 100 must unlock, once.
func TestAttackDuplicateKnocks(t *testing.T) {
	decoy := freePort(t)
	s := atkStart(t, "", "--decoys", strconv.Itoa(int(decoy)))
	p1, p2, p3 := s.ports[0], s.ports[1], s.ports[2]
	cases := []struct {
		name, base string
		ports      []uint16
	}{
		{"each port 5 times", "127.20.0.1", append(append(atkRepeat(p1, 5), atkRepeat(p2, 5)...), atkRepeat(p3, 5)...)},
		{"second port 5 times, then the sequence", "127.21.0.1", append(atkRepeat(p2, 5), p1, p2, p3)},
		{"last port 5 times, then the sequence", "127.22.0.1", append(atkRepeat(p3, 5), p1, p2, p3)},
		{"decoy 5 times, then the sequence", "127.23.0.1", append(atkRepeat(decoy, 5), p1, p2, p3)},
		{"first port 5 times, then the sequence", "127.24.0.1", append(atkRepeat(p1, 5), p1, p2, p3)},
	}
	snd := atkNewSender(t)
	for _, c := range cases {
		snd.send(atkClients(c.base, 100, c.ports...), 0, nil)
	}
	// Every datagram read (see TestAttackSequenceFloodLosesNoUnlock), then the reorder window.
	atkWaitUntil(30*time.Second, func() bool { return udpUnread(append([]uint16{decoy}, s.ports...)...) == 0 })
	time.Sleep(settled)
	drops := udpDrops(append([]uint16{decoy}, s.ports...)...)
	atkStop(t, s.proc)
	for _, c := range cases {
		prefix := strings.TrimSuffix(c.base, "0.1")
		once, twice := 0, 0
		for i := range 100 {
			switch s.unlocked(atkAddr(c.base, i).String()) {
			case 1:
				once++
			case 0:
			default:
				twice++
			}
		}
		t.Logf("%-40s (%sx): unlocked %d of 100, more than once %d", c.name, prefix, once, twice)
		if once != 100 || twice != 0 {
			t.Errorf("%s: %d of 100 clients unlocked once, %d more than once (kernel drops %d)", c.name, once, twice, drops)
		}
	}
}

// atkExecCase is one command a hook runs, and which of its processes (the files their PIDs are
// written to, one PID a line) outlive the call.
type atkExecCase struct {
	name, lua string
	survive   map[string]bool
	timedOut  bool // the call is cancelled at the hook timeout, rather than returning
}

// Attack 6: knock.exec and os.execute at the hook timeout (1.5 s here). The server kills the
// command's process group and, as the subreaper of what its hooks run (Linux), every process
// descended from the command: what left the group (setsid, job control, a daemon's double fork)
// dies too. What a command leaves running when it returns before the timeout outlives the call.
// A detached process that keeps forking at the moment of the timeout must not leave any child
// behind. Each case is a knock.after callback, a hook call of its own with its own timeout, and
// writes its processes' PIDs to files; two servers share the cases, to halve the time.
func TestAttackExecTimeoutSurvivors(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("SKIP: setsid is not installed")
	}
	dir := t.TempDir()
	marker := fmt.Sprintf("59.%06d", os.Getpid()%1000000) // every sleep of this test sleeps this long
	quiet := "exec >/dev/null 2>&1; "                     // a survivor that kept the output pipe would delay the call's end by cmd.WaitDelay
	cases := [][]atkExecCase{{
		{"group", `knock.exec("sh", "-c", "echo $$ > D/group.sh; sleep 60 & echo $! > D/group.child; wait")`,
			map[string]bool{"group.sh": false, "group.child": false}, true},
		{"setsid-w", `knock.exec("setsid", "-w", "sh", "-c", "` + quiet + `echo $$ > D/setsidw.sh; sleep 60 & echo $! > D/setsidw.child; wait")`,
			map[string]bool{"setsidw.sh": false, "setsidw.child": false}, true},
		{"job-control", `knock.exec("sh", "-c", "set -m; echo $$ > D/jc.sh; sleep 60 >/dev/null 2>&1 & echo $! > D/jc.child; wait")`,
			map[string]bool{"jc.sh": false, "jc.child": false}, true},
		{"fork-loop", `knock.exec("sh", "-c", "for i in 1 2; do setsid sh -c '` + quiet + `sleep 1.2; while :; do sleep 60 & done' & done; wait")`,
			map[string]bool{}, true}, // checked below: every process with the marker that no other case expects alive
		{"background", `knock.exec("sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $! > D/bg.child")`,
			map[string]bool{"bg.child": true}, false},
	}, {
		{"os.execute", `os.execute("echo $$ > D/osx.sh; sleep 60 & echo $! > D/osx.child; wait")`,
			map[string]bool{"osx.sh": false, "osx.child": false}, true},
		{"setsid-grandchild", `knock.exec("sh", "-c", "echo $$ > D/gs.sh; setsid sh -c '` + quiet + `echo $$ > D/gs.child; exec sleep 60' & wait")`,
			map[string]bool{"gs.sh": false, "gs.child": false}, true},
		{"daemonized", `knock.exec("sh", "-c", "(setsid sh -c '` + quiet + `sleep 60 & echo $! > D/daemon.child' &); sleep 30")`,
			map[string]bool{"daemon.child": false}, true},
		{"setsid-fork", `knock.exec("setsid", "sh", "-c", "` + quiet + `echo $$ > D/setsid.child; exec sleep 60")`,
			map[string]bool{"setsid.child": true}, false},
		{"background-pipe", `knock.exec("sh", "-c", "sleep 60 & echo $! > D/bgp.child")`,
			map[string]bool{"bgp.child": true}, false},
	}}
	var servers []*proc
	for _, group := range cases {
		var hook strings.Builder
		hook.WriteString("function on_unlock(ev) end\nfunction on_start()\n")
		for i, c := range group { // 10 ms apart: the callbacks queue in this order
			lua := strings.ReplaceAll(strings.ReplaceAll(c.lua, "D/", dir+"/"), "sleep 60", "sleep "+marker)
			fmt.Fprintf(&hook, "  knock.after(%d * 0.01, function() knock.log(\"case start\", {case=%q}); %s; knock.log(\"case end\", {case=%q}) end)\n",
				i, c.name, lua, c.name)
		}
		hook.WriteString("end\n")
		servers = append(servers, startServer(t, "-p", portList([]uint16{freePort(t), freePort(t), freePort(t)}),
			"--hook", atkHook(t, hook.String()), "--hook-timeout", "1.5s"))
	}
	t.Cleanup(func() { // whatever outlived its call; then the servers, their subreaper, reap them
		for _, pid := range atkSleepers(marker) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(400 * time.Millisecond)
	})
	expected := map[int]bool{} // the processes expected to outlive their calls
	for g, group := range cases {
		p := servers[g]
		waitFor(t, "every case", func() bool { return len(atkExecCalls(p.stderr.String())) == len(group) })
	}
	// The kills land: the call ends once every process it killed is dead, but a process may take a
	// moment to die on a busy machine. (One that outlives its call wrongly sleeps for a minute.)
	atkWaitUntil(5*time.Second, func() bool {
		for _, group := range cases {
			for _, c := range group {
				for file, want := range c.survive {
					b, _ := os.ReadFile(filepath.Join(dir, file))
					for _, f := range strings.Fields(string(b)) {
						if pid, _ := strconv.Atoi(f); !want && atkProcAlive(pid) {
							return false
						}
					}
				}
			}
		}
		return true
	})
	for _, group := range cases { // every process expected to outlive its call, before any check
		for _, c := range group {
			for file, want := range c.survive {
				b, _ := os.ReadFile(filepath.Join(dir, file))
				for _, f := range strings.Fields(string(b)) {
					pid, _ := strconv.Atoi(f)
					expected[pid] = want
				}
			}
		}
	}
	for g, group := range cases {
		calls := atkExecCalls(servers[g].stderr.String())
		for _, c := range group {
			var got []string
			for file, want := range c.survive {
				b, err := os.ReadFile(filepath.Join(dir, file))
				if err != nil {
					t.Errorf("%s: %s wrote no PID", c.name, file)
					continue
				}
				alive, all := 0, 0
				for _, f := range strings.Fields(string(b)) {
					pid, _ := strconv.Atoi(f)
					expected[pid] = want
					all++
					if atkProcAlive(pid) {
						alive++
					}
				}
				switch {
				case all == 1 && alive == 1:
					got = append(got, file+" OUTLIVES the call")
				case all == 1:
					got = append(got, file+" killed")
				default:
					got = append(got, fmt.Sprintf("%s: %d of %d OUTLIVE the call", file, alive, all))
				}
				if want && alive != all || !want && alive != 0 {
					t.Errorf("%s: %d of the %d processes in %s outlived the call, want %v", c.name, alive, all, file, map[bool]string{true: "all", false: "none"}[want])
				}
			}
			if c.name == "fork-loop" {
				var escaped []int
				for _, pid := range atkSleepers(marker) {
					if !expected[pid] {
						escaped = append(escaped, pid)
					}
				}
				got = append(got, fmt.Sprintf("%d children forked while it was being killed OUTLIVE the call", len(escaped)))
				if len(escaped) > 0 {
					t.Errorf("fork-loop: %d processes it forked outlived the hook timeout (pids %v): the kill is not atomic", len(escaped), escaped[:min(len(escaped), 5)])
				}
			}
			call := calls[c.name]
			t.Logf("%-18s %-9s after %-6v %s", c.name, call.outcome, call.took, strings.Join(got, ", "))
			if (call.outcome == "cancelled") != c.timedOut {
				t.Errorf("%s: the call %s, want cancelled %v", c.name, call.outcome, c.timedOut)
			}
		}
	}
}

type atkCall struct {
	outcome string // returned, cancelled
	took    time.Duration
}

// atkExecCalls reads, from a server log, how each case's hook call ended and how long it took.
func atkExecCalls(log string) map[string]atkCall {
	calls := map[string]atkCall{}
	var current string
	var start time.Time
	for _, l := range strings.Split(log, "\n") {
		f := fields("x " + l)
		at, _ := time.Parse(time.RFC3339Nano, f["time"])
		switch {
		case strings.Contains(l, `msg="case start"`):
			current, start = f["case"], at
		case strings.Contains(l, `msg="case end"`) && current != "":
			calls[current] = atkCall{"returned", at.Sub(start)}
			current = ""
		case strings.Contains(l, "event=hook_error") && strings.Contains(l, "cancelled") && current != "":
			calls[current] = atkCall{"cancelled", at.Sub(start)}
			current = ""
		}
	}
	return calls
}

// atkSleepers lists the live processes that run "sleep DURATION".
func atkSleepers(duration string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline"); string(b) == "sleep\x00"+duration+"\x00" && atkProcAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// atkProcAlive reports whether pid is a live process (a zombie is dead).
func atkProcAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}
