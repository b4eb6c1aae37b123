package main

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestRules(t *testing.T) {
	type knockStep struct {
		port uint16
		at   time.Duration // since the first knock of the case
		want verdict
		why  failReason
	}
	cases := []struct {
		name   string
		seq    []uint16
		decoys []uint16
		steps  []knockStep
	}{
		{"in order unlocks", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 10 * ms, verdictAdvanced, reasonNone}, {3, 20 * ms, verdictUnlocked, reasonNone}}},
		{"fresh wrong port is rejected", []uint16{1, 2, 3}, nil, []knockStep{
			{2, 0, verdictRejected, reasonWrongPort}, {3, 10 * ms, verdictRejected, reasonWrongPort}}},
		{"wrong port resets", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {3, 10 * ms, verdictRejected, reasonWrongPort},
			{2, 20 * ms, verdictRejected, reasonWrongPort}, {3, 30 * ms, verdictRejected, reasonWrongPort}}},
		{"wrong order never unlocks", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {3, 10 * ms, verdictRejected, reasonWrongPort}, {2, 20 * ms, verdictRejected, reasonWrongPort}}},
		{"the first port restarts a failed attempt at once", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 10 * ms, verdictAdvanced, reasonNone},
			{1, 20 * ms, verdictAdvanced, reasonWrongPort}, {2, 30 * ms, verdictAdvanced, reasonNone}, {3, 40 * ms, verdictUnlocked, reasonNone}}},
		{"retry right after a wrong port", []uint16{1, 2, 3}, nil, []knockStep{
			{9, 0, verdictRejected, reasonWrongPort}, {1, 10 * ms, verdictAdvanced, reasonNone},
			{2, 20 * ms, verdictAdvanced, reasonNone}, {3, 30 * ms, verdictUnlocked, reasonNone}}},
		{"retransmissions are ignored", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {1, 1 * ms, verdictIgnored, reasonNone}, {2, 10 * ms, verdictAdvanced, reasonNone},
			{2, 11 * ms, verdictIgnored, reasonNone}, {3, 20 * ms, verdictUnlocked, reasonNone}, {3, 21 * ms, verdictIgnored, reasonNone}}},
		{"a repeat after the retransmission window is a new knock", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {1, 1500 * ms, verdictAdvanced, reasonWrongPort},
			{2, 1510 * ms, verdictAdvanced, reasonNone}, {3, 1520 * ms, verdictUnlocked, reasonNone}}},
		{"a late knock resets, then counts as fresh", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 1 * time.Second, verdictAdvanced, reasonNone},
			{3, 6100 * ms, verdictRejected, reasonTimeout}}},
		{"a late first port starts a new attempt", []uint16{1, 2, 3}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 10 * ms, verdictAdvanced, reasonNone},
			{1, 5100 * ms, verdictAdvanced, reasonTimeout}, {2, 5110 * ms, verdictAdvanced, reasonNone}, {3, 5120 * ms, verdictUnlocked, reasonNone}}},
		{"a gap of exactly the timeout is in time", []uint16{1, 2}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 5 * time.Second, verdictUnlocked, reasonNone}}},
		{"each gap counts, not the total", []uint16{1, 2, 3, 4}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 4 * time.Second, verdictAdvanced, reasonNone},
			{3, 8 * time.Second, verdictAdvanced, reasonNone}, {4, 12 * time.Second, verdictUnlocked, reasonNone}}},
		{"a repeated port the sequence expects advances", []uint16{7, 7, 8}, nil, []knockStep{
			{7, 0, verdictAdvanced, reasonNone}, {7, 1 * ms, verdictAdvanced, reasonNone}, {8, 2 * ms, verdictUnlocked, reasonNone}}},
		{"a third repeat is a retransmission", []uint16{7, 7, 8}, nil, []knockStep{
			{7, 0, verdictAdvanced, reasonNone}, {7, 1 * ms, verdictAdvanced, reasonNone},
			{7, 2 * ms, verdictIgnored, reasonNone}, {8, 3 * ms, verdictUnlocked, reasonNone}}},
		{"a sequence returning to its first port", []uint16{1, 2, 1}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 1 * ms, verdictAdvanced, reasonNone}, {1, 2 * ms, verdictUnlocked, reasonNone}}},
		{"a decoy resets", []uint16{1, 2, 3}, []uint16{5}, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {5, 1 * ms, verdictRejected, reasonDecoy},
			{2, 2 * ms, verdictRejected, reasonWrongPort}, {3, 3 * ms, verdictRejected, reasonWrongPort}}},
		{"a one-port sequence unlocks at once", []uint16{9}, nil, []knockStep{
			// The sequence always expects 9 next, so a duplicate is a new knock, as README says.
			{9, 0, verdictUnlocked, reasonNone}, {9, 1 * ms, verdictUnlocked, reasonNone}}},
		{"two unlocks in a row", []uint16{1, 2}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 1 * ms, verdictUnlocked, reasonNone},
			{1, 2 * ms, verdictAdvanced, reasonNone}, {2, 3 * ms, verdictUnlocked, reasonNone}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rules{seq: udp(tc.seq...), decoys: udp(tc.decoys...), timeout: int64(5 * time.Second), retransmit: int64(time.Second), flags: defaultTCPFlags}
			var p progress
			base := time.Now().UnixNano()
			for i, s := range tc.steps {
				k := newPending(base+int64(s.at), up(s.port), 0, 0, 0)
				v, why := r.apply(&p, &k)
				if v != s.want || why != s.why {
					t.Fatalf("knock %d (port %d at %v): got verdict %d reason %q, want verdict %d reason %q", i, s.port, s.at, v, why, s.want, s.why)
				}
			}
		})
	}
}

// recorder collects a tracker's events.
type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) emit(events []event) {
	r.mu.Lock()
	r.events = append(r.events, events...)
	r.mu.Unlock()
}

func (r *recorder) count(kind eventKind, reason failReason) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.kind == kind && (kind != eventFail || reason == reasonNone || e.reason == reason) {
			n++
		}
	}
	return n
}

func (r *recorder) unlocked(ip string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.kind == eventUnlock && e.from.addr().String() == ip {
			n++
		}
	}
	return n
}

// udp makes a sequence of UDP knocks.
func udp(ports ...uint16) []portSpec {
	specs := make([]portSpec, len(ports))
	for i, p := range ports {
		specs[i] = portSpec{p, protoUDP}
	}
	return specs
}

func up(p uint16) portSpec { return portSpec{p, protoUDP} }

func testDoor(name string, ports ...uint16) door {
	return door{name: name, seq: udp(ports...), timeout: 5 * time.Second, tcpFlags: defaultTCPFlags}
}

func testConfig(ports ...uint16) *config {
	return &config{doors: []door{testDoor(defaultDoor, ports...)}, maxClients: 65536, banWindow: time.Minute, banTime: time.Hour,
		banPrefix6: 64, hookTimeout: 2 * time.Second, maxSkew: 30 * time.Second, hookName: "test.lua"}
}

func newTestTracker(c *config) (*tracker, *recorder) {
	rec := &recorder{}
	return newTracker(c, rec.emit), rec
}

// feed hands the tracker one knock, as the intake does.
func feed(tr *tracker, k knock) dropReason {
	return tr.knock(&k, newOutbox(len(tr.doors)))
}

func key(s string) addrKey { return keyOf(netip.MustParseAddr(s)) }

func TestTrackerClientsAreIndependent(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	a, b, c := key("127.0.0.2"), key("::1"), key("2001:db8::7")
	// Interleaved: each client's knocks are in order, and b's wrong knock must not reset a or c.
	for i, k := range []knock{
		{from: a, port: up(1)}, {from: b, port: up(1)}, {from: c, port: up(1)},
		{from: a, port: up(2)}, {from: b, port: up(3)}, {from: c, port: up(2)},
		{from: a, port: up(3)}, {from: b, port: up(2)}, {from: c, port: up(3)},
	} {
		k.ts = t0 + int64(i)*int64(ms)
		feed(tr, k)
	}
	if rec.unlocked("127.0.0.2") != 1 || rec.unlocked("2001:db8::7") != 1 || rec.unlocked("::1") != 0 {
		t.Fatalf("unlocks: a=%d b=%d c=%d, want 1 0 1", rec.unlocked("127.0.0.2"), rec.unlocked("::1"), rec.unlocked("2001:db8::7"))
	}
}

func TestTrackerIPv4MappedIsTheSameClient(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2))
	t0 := time.Now().UnixNano()
	feed(tr, knock{from: key("::ffff:127.0.0.1"), port: up(1), ts: t0})
	feed(tr, knock{from: key("127.0.0.1"), port: up(2), ts: t0 + int64(ms)})
	if rec.unlocked("127.0.0.1") != 1 {
		t.Fatalf("an IPv4-mapped address and its IPv4 form must be one client; events %+v", rec.events)
	}
}

// Knocks sent back to back can be read out of order; the kernel's receive times put them back.
func TestTrackerReordersByReceiveTime(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	a := key("127.1.0.1")
	for _, k := range []knock{{port: up(3), ts: t0 + 20}, {port: up(1), ts: t0}, {port: up(2), ts: t0 + 10}} {
		k.from = a
		feed(tr, k)
	}
	if rec.unlocked("127.1.0.1") != 1 {
		t.Fatalf("a sequence read out of order did not unlock: %+v", rec.events)
	}
	tr.sweep(t0 + reorderWindow + 20)
	if n := rec.count(eventFail, reasonNone); n != 0 {
		t.Fatalf("a sequence read out of order reported %d failures", n)
	}
}

func TestTrackerFailureSettlesAfterReorderWindow(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	feed(tr, knock{from: key("127.0.0.9"), port: up(2), ts: t0})
	if n := rec.count(eventFail, reasonNone); n != 0 {
		t.Fatalf("failure reported before the reorder window passed")
	}
	tr.sweep(t0 + reorderWindow + 1)
	if n := rec.count(eventFail, reasonWrongPort); n != 1 {
		t.Fatalf("got %d wrong_port failures after the window, want 1", n)
	}
}

func TestTrackerUnlockReportsElapsedAndPort(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	for i, p := range []uint16{1, 2, 3} {
		feed(tr, knock{from: key("192.0.2.1"), srcPort: 4000 + p, port: up(p), ts: t0 + int64(i)*int64(100*ms)})
	}
	if len(rec.events) != 1 {
		t.Fatalf("events %+v, want one unlock", rec.events)
	}
	e := rec.events[0]
	if e.kind != eventUnlock || e.port != up(3) || e.srcPort != 4003 || e.elapsed != int64(200*ms) || e.ts != t0+int64(200*ms) || e.door != 0 {
		t.Fatalf("unlock event %+v", e)
	}
}

func TestTrackerForgetsStaleClients(t *testing.T) {
	tr, _ := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	for i := range 100 {
		from := keyOf(netip.AddrFrom4([4]byte{127, 2, 0, byte(i)}))
		feed(tr, knock{from: from, port: up(1), ts: t0})
		feed(tr, knock{from: from, port: up(2), ts: t0 + 1})
	}
	if n := tr.clients(); n != 100 {
		t.Fatalf("tracking %d clients, want 100", n)
	}
	tr.sweep(t0 + int64(4*time.Second))
	if n := tr.clients(); n != 100 {
		t.Fatalf("clients within the timeout were dropped: %d left", n)
	}
	tr.sweep(t0 + int64(11*time.Second))
	if n := tr.clients(); n != 0 {
		t.Fatalf("%d stale clients left after the timeout", n)
	}
}

// A client record is made only at a second knock, and client records are only evicted by each
// other: the table stays within --max-clients under a flood of two-knock clients. A blind flood
// (wrong ports) takes only records without progress, so a legitimate client unlocks right after
// it; a flood that knows the first two ports fills the table with attempts in progress, which
// a newcomer cannot push out within evictGrace of their last knock (it is refused), and can after.
func TestTrackerBoundedByMaxClients(t *testing.T) {
	for _, tc := range []struct {
		name        string
		flood       [2]uint16
		legitAfter  time.Duration // when the legitimate client knocks, after the flood
		refusedMin  uint64
		unlockAfter bool
		evicted     uint64 // attempts in progress pushed out by the legitimate client
	}{
		{"blind flood, legit right after", [2]uint16{3, 2}, time.Second, 0, true, 0},
		{"sighted flood, legit within the grace", [2]uint16{1, 2}, time.Duration(evictGrace) / 5, 19000, false, 0},
		{"sighted flood, legit after the grace", [2]uint16{1, 2}, time.Second, 19000, true, 1},
		{"sighted flood, legit once they time out", [2]uint16{1, 2}, 6 * time.Second, 19000, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(1, 2, 3)
			c.maxClients = 1000
			tr, rec := newTestTracker(c)
			t0 := time.Now().UnixNano()
			for i := range 20000 {
				from := keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
				feed(tr, knock{from: from, port: up(tc.flood[0]), ts: t0 + int64(i)})
				feed(tr, knock{from: from, port: up(tc.flood[1]), ts: t0 + int64(i) + 1})
			}
			if n := tr.clients(); n > 1000 {
				t.Fatalf("tracking %d clients, the cap is 1000", n)
			}
			if tr.evicted.Load() != 0 || tr.refused.Load() < tc.refusedMin {
				t.Fatalf("evicted %d attempts in progress (want 0), refused %d (want at least %d)", tr.evicted.Load(), tr.refused.Load(), tc.refusedMin)
			}
			legit := key("192.0.2.1")
			for i, p := range []uint16{1, 2, 3} {
				feed(tr, knock{from: legit, port: up(p), ts: t0 + int64(tc.legitAfter) + int64(i)})
			}
			if got := rec.unlocked("192.0.2.1") == 1; got != tc.unlockAfter {
				t.Fatalf("legitimate client unlocked: %v, want %v", got, tc.unlockAfter)
			}
			if got := tr.evicted.Load(); got != tc.evicted {
				t.Fatalf("evicted %d attempts in progress, want %d", got, tc.evicted)
			}
		})
	}
}

// Issue 11: a genuine first knock, a flood of spoofed first knocks, then the genuine second and
// third knocks a second apart each: the genuine client unlocks, and clients with progress are
// never evicted by first knocks.
func TestTrackerFirstKnockFloodEvictsNoProgress(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	legit, halfway := key("192.0.2.1"), key("192.0.2.2")
	feed(tr, knock{from: halfway, port: up(1), ts: t0})
	feed(tr, knock{from: halfway, port: up(2), ts: t0 + 1})
	flood := func(from int, at int64) {
		for i := range 100000 {
			feed(tr, knock{from: keyOf(netip.AddrFrom4([4]byte{10, byte((from + i) >> 16), byte((from + i) >> 8), byte(from + i)})), port: up(1), ts: at + int64(i)})
		}
	}
	feed(tr, knock{from: legit, port: up(1), ts: t0 + 2})
	flood(0, t0+3)
	feed(tr, knock{from: legit, port: up(2), ts: t0 + int64(time.Second)})
	flood(100000, t0+int64(time.Second)+1)
	feed(tr, knock{from: legit, port: up(3), ts: t0 + int64(2*time.Second)})
	feed(tr, knock{from: halfway, port: up(3), ts: t0 + int64(2*time.Second)})
	if rec.unlocked("192.0.2.1") != 1 || rec.unlocked("192.0.2.2") != 1 {
		t.Fatalf("after 200,000 spoofed first knocks: legit unlocked %d, halfway %d; want 1 and 1", rec.unlocked("192.0.2.1"), rec.unlocked("192.0.2.2"))
	}
	if tr.evicted.Load() != 0 || tr.clients() != 2 {
		t.Fatalf("first knocks made %d client records and evicted %d", tr.clients(), tr.evicted.Load())
	}
}

// Issue 11: each port of the sequence 5 times with no gap unlocks, in any read order; a wrong or
// decoy knock sent 5 times, then the sequence, unlocks too.
func TestTrackerDuplicatesNeverBreakASequence(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.decoys = udp(9)
	for trial := range 100 {
		tr, rec := newTestTracker(c)
		t0 := time.Now().UnixNano()
		var knocks []knock
		for i, p := range []uint16{1, 2, 3} {
			for j := range 5 {
				knocks = append(knocks, knock{from: key("192.0.2.1"), port: up(p), ts: t0 + int64(i*5+j)*1000})
			}
		}
		for j := range 5 {
			knocks = append(knocks, knock{from: key("192.0.2.2"), port: up(9 - uint16(j%2)*5), ts: t0 + int64(j)*1000}) // 9 (decoy) and 4 (wrong)
		}
		for i, p := range []uint16{1, 2, 3} {
			knocks = append(knocks, knock{from: key("192.0.2.2"), port: up(p), ts: t0 + int64(10+i)*1000})
		}
		// A sequence port knocked 5 times out of turn, then the sequence: the copies are not all
		// duplicates, the last is the sequence's own knock on that port.
		for c, wrong := range []uint16{2, 3} {
			from := keyOf(netip.AddrFrom4([4]byte{192, 0, 2, byte(3 + c)}))
			for j := range 5 {
				knocks = append(knocks, knock{from: from, port: up(wrong), ts: t0 + int64(j)*1000})
			}
			for i, p := range []uint16{1, 2, 3} {
				knocks = append(knocks, knock{from: from, port: up(p), ts: t0 + int64(10+i)*1000})
			}
		}
		shuffleWithin(knocks, trial, 6) // as readers on different sockets would see them
		for _, k := range knocks {
			feed(tr, k)
		}
		tr.sweep(t0 + 2*reorderWindow)
		for _, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"} {
			if n := rec.unlocked(ip); n != 1 {
				t.Fatalf("trial %d: %s unlocked %d times, want 1; events %+v", trial, ip, n, rec.events)
			}
		}
	}
}

// shuffleWithin moves each element at most span places, deterministically from seed.
func shuffleWithin(ks []knock, seed, span int) {
	x := uint32(seed*2654435761 + 1)
	for i := range ks {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		j := i + int(x%uint32(span))
		if j < len(ks) {
			ks[i], ks[j] = ks[j], ks[i]
		}
	}
}

func TestTrackerBans(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.banAfter, c.banTime = 2, 10*time.Second
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	at := func(d time.Duration) int64 { return t0 + int64(d) }
	ip := key("198.51.100.4")
	feed(tr, knock{from: ip, port: up(2), ts: at(0)})
	tr.sweep(at(0) + reorderWindow + 1)
	feed(tr, knock{from: ip, port: up(3), ts: at(2 * time.Second)})
	tr.sweep(at(2*time.Second) + reorderWindow + 1)
	if n := rec.count(eventFail, reasonBanned); n != 1 {
		t.Fatalf("got %d bans after 2 failures, want 1: %+v", n, rec.events)
	}
	for i, p := range []uint16{1, 2, 3} {
		if why := feed(tr, knock{from: ip, port: up(p), ts: at(4*time.Second + time.Duration(i))}); why != dropBanned {
			t.Fatalf("a banned client's knock: %v", why)
		}
	}
	if rec.unlocked("198.51.100.4") != 0 {
		t.Fatal("a banned client unlocked")
	}
	for i, p := range []uint16{1, 2, 3} {
		feed(tr, knock{from: ip, port: up(p), ts: at(13*time.Second + time.Duration(i))})
	}
	if rec.unlocked("198.51.100.4") != 1 {
		t.Fatal("the client did not unlock after its ban ended")
	}
}

// Starting over is no failed guess: a client whose attempt broke off (a lost datagram, or a
// pause past the timeout) knocks the sequence again, and the first port that ends the old attempt
// starts the new one. The failure is reported, marked right_for its own door, and not counted for
// --ban-after, even at 1. A wrong port other than the first is counted.
func TestTrackerStartingOverIsNoBanFailure(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.banAfter, c.banTime = 1, 10*time.Second
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	at := func(d time.Duration) int64 { return t0 + int64(d) }
	ip := key("198.51.100.5")
	for _, k := range []knock{
		{port: up(1), ts: at(0)}, {port: up(2), ts: at(10 * ms)}, // the 3 is lost
		{port: up(1), ts: at(2 * time.Second)}, {port: up(2), ts: at(2*time.Second + 10*ms)}, {port: up(3), ts: at(2*time.Second + 20*ms)},
		{port: up(1), ts: at(4 * time.Second)}, // a pause past the 5 s timeout
		{port: up(1), ts: at(10 * time.Second)}, {port: up(2), ts: at(10*time.Second + 10*ms)}, {port: up(3), ts: at(10*time.Second + 20*ms)},
	} {
		k.from = ip
		if why := feed(tr, k); why != dropNone {
			t.Fatalf("knock at %v: %v: %+v", time.Duration(k.ts-t0), why, rec.events)
		}
	}
	tr.sweep(at(12 * time.Second))
	if rec.unlocked("198.51.100.5") != 2 || rec.count(eventFail, reasonWrongPort) != 1 || rec.count(eventFail, reasonTimeout) != 1 || rec.count(eventFail, reasonBanned) != 0 {
		t.Fatalf("want 2 unlocks, a wrong_port and a timeout, no ban: %+v", rec.events)
	}
	for _, e := range rec.events {
		if e.kind == eventFail && e.rightFor != 1 {
			t.Fatalf("a failure whose knock started the door over without right_for: %+v", e)
		}
	}
	// A wrong port that is not the first: a failure, and at --ban-after 1 a ban.
	for _, k := range []knock{{port: up(1), ts: at(20 * time.Second)}, {port: up(3), ts: at(20*time.Second + 10*ms)}} {
		k.from = ip
		feed(tr, k)
	}
	tr.sweep(at(22 * time.Second))
	if rec.count(eventFail, reasonBanned) != 1 {
		t.Fatalf("a wrong port that starts nothing did not ban at --ban-after 1: %+v", rec.events)
	}
}

// Issue 11: a flood of spoofed wrong knocks (one each, from 200,000 sources) neither lifts a ban
// nor lets a guessing address escape one; an IPv6 ban covers the /64.
func TestBansSurviveFloods(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.banAfter, c.banTime = 3, time.Hour // and the default --max-clients, which sizes the sketches
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	now := t0
	var n uint16
	wrong := func(from addrKey) { // 2 and 3 in turn, so that no knock repeats the one before
		now += 1000
		n++
		feed(tr, knock{from: from, port: up(2 + n%2), ts: now})
	}
	banned, guesser := key("198.51.100.1"), key("198.51.100.2")
	for range 3 {
		wrong(banned)
		tr.sweep(now + reorderWindow + 1)
	}
	wrong(guesser)
	wrong(guesser)
	tr.sweep(now + reorderWindow + 1)
	for i := range 200000 {
		wrong(keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})))
		if i%1000 == 999 {
			tr.sweep(now + reorderWindow + 1)
		}
	}
	tr.sweep(now + reorderWindow + 1)
	if why := feed(tr, knock{from: banned, port: up(1), ts: now + 2*reorderWindow}); why != dropBanned {
		t.Fatalf("the flood lifted a ban: %v", why)
	}
	wrong(guesser)
	tr.sweep(now + reorderWindow + 1)
	if why := feed(tr, knock{from: guesser, port: up(1), ts: now + 2*reorderWindow}); why != dropBanned {
		t.Fatalf("the guessing address escaped its ban after the flood: %v; bans %d", why, rec.count(eventFail, reasonBanned))
	}
	// IPv6: three failures from three addresses of one /64 ban the /64.
	for i := range 3 {
		wrong(keyOf(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)})))
	}
	tr.sweep(now + reorderWindow + 1)
	if why := feed(tr, knock{from: key("2001:db8::ffff"), port: up(1), ts: now + 2*reorderWindow}); why != dropBanned {
		t.Fatalf("an address of a banned /64 was not banned: %v", why)
	}
	if why := feed(tr, knock{from: key("2001:db8:0:1::1"), port: up(1), ts: now + 2*reorderWindow}); why != dropNone {
		t.Fatalf("another /64 was banned: %v", why)
	}
}

// Doors: a client is tracked per door; a knock wrong for one door never resets another where it
// is right; two doors may share ports and prefixes.
func TestTrackerDoorsAreIndependent(t *testing.T) {
	c := testConfig()
	c.doors = []door{testDoor("open", 7000, 8000, 9000), testDoor("close", 9000, 8000, 7000), testDoor("https", 12345, 54321)}
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	send := func(from string, ports ...uint16) {
		for _, p := range ports {
			t0 += int64(ms)
			feed(tr, knock{from: key(from), port: up(p), ts: t0})
		}
	}
	send("192.0.2.1", 7000, 8000, 9000) // opens "open", starts "close" with its last knock
	send("192.0.2.1", 8000, 7000)       // completes "close"
	send("192.0.2.2", 12345)
	send("192.0.2.3", 9000, 8000)
	send("192.0.2.2", 54321)
	send("192.0.2.3", 7000)
	doorsOf := func(ip string) []string {
		var names []string
		for _, e := range rec.events {
			if e.kind == eventUnlock && e.from == key(ip) {
				names = append(names, c.doors[e.door].name)
			}
		}
		return names
	}
	for ip, want := range map[string]string{"192.0.2.1": "open,close", "192.0.2.2": "https", "192.0.2.3": "close"} {
		if got := strings.Join(doorsOf(ip), ","); got != want {
			t.Errorf("%s unlocked %q, want %q", ip, got, want)
		}
	}
	if n := rec.count(eventFail, reasonNone); n != 0 {
		t.Errorf("%d failures reported for knocks that were right for some door: %+v", n, rec.events)
	}
}

// TCP flags: segments without the door's flags are ignored, neither advancing nor resetting.
func TestRulesTCPFlagsAndTargets(t *testing.T) {
	d := door{name: "d", seq: []portSpec{{1, protoTCP}, {2, protoUDP}, {3, protoTCP}}, timeout: 5 * time.Second, seqTimeout: time.Second, tcpFlags: defaultTCPFlags}
	r := newRules(d, 1, nil)
	var p progress
	steps := []struct {
		k    pendingKnock
		want verdict
		why  failReason
	}{
		{newPending(0, portSpec{1, protoTCP}, tcpSYN, 0, 1), verdictAdvanced, reasonNone},
		{newPending(0, portSpec{3, protoTCP}, tcpSYN|tcpACK, 0, 1), verdictIgnored, reasonNone}, // established traffic
		{newPending(0, portSpec{3, protoTCP}, tcpRST, 0, 1), verdictIgnored, reasonNone},
		{newPending(0, portSpec{2, protoUDP}, 0, 0, 2), verdictIgnored, reasonNone}, // sent to another address
		{newPending(0, portSpec{2, protoTCP}, tcpSYN, 0, 1), verdictRejected, reasonWrongPort},
		{newPending(0, portSpec{1, protoTCP}, tcpSYN, 0, 1), verdictAdvanced, reasonNone},
		{newPending(0, portSpec{2, protoUDP}, 0, 0, 1), verdictAdvanced, reasonNone},
		{newPending(int64(1100*ms), portSpec{3, protoTCP}, tcpSYN, 0, 1), verdictRejected, reasonTimeout}, // seq_timeout
	}
	for i, s := range steps {
		if s.k.ts == 0 {
			s.k.ts = int64(i+1) * int64(ms)
		}
		if v, why := r.apply(&p, &s.k); v != s.want || why != s.why {
			t.Fatalf("step %d: verdict %d reason %q, want %d %q", i, v, why, s.want, s.why)
		}
	}
}

func TestParsePortSpecs(t *testing.T) {
	cases := []struct {
		in   string
		bare proto
		want string // formatted, or "error: substring"
	}{
		{"123,456,789", protoUDP, "123:udp,456:udp,789:udp"},
		{"7000:tcp,8000:UDP, 9000", protoUDP, "7000:tcp,8000:udp,9000:udp"},
		{"7000,8000:udp", protoTCP, "7000:tcp,8000:udp"},
		{" 1 , 65535 ", protoUDP, "1:udp,65535:udp"},
		{"7,7,8", protoUDP, "7:udp,7:udp,8:udp"},
		{"", protoUDP, ""},
		{"0", protoUDP, "error: out of range"},
		{"65536", protoUDP, "error: out of range"},
		{"abc", protoUDP, "error: not a port number"},
		{"-1", protoUDP, "error: not a port number"},
		{"1,,2", protoUDP, "error: empty item"},
		{"1:sctp", protoUDP, "error: tcp or udp"},
		{"1:", protoUDP, "error: tcp or udp"},
		{":tcp", protoUDP, "error: empty item"},
		{"99999999999999999999", protoUDP, "error: out of range"},
	}
	for _, tc := range cases {
		got, err := parsePortSpecs(tc.in, tc.bare)
		if strings.HasPrefix(tc.want, "error: ") {
			if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
				t.Errorf("parsePortSpecs(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.want)
			}
			continue
		}
		if err != nil || formatSpecs(got) != tc.want {
			t.Errorf("parsePortSpecs(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestParseDoorSpec(t *testing.T) {
	cases := []struct {
		in, want string // want: describeDoor's text, or "error: substring"
	}{
		{"ssh=7000:tcp,8000,9000", "7000:tcp,8000:udp,9000:udp (timeout 5s, tcp flags syn,!ack)"},
		{"a=1,2 timeout=2s seq-timeout=3", "1:udp,2:udp (timeout 2s, whole sequence within 3s)"},
		{"t=1:tcp tcp-flags=fin,!ack", "1:tcp (timeout 5s, tcp flags fin,!ack)"},
		{"noports", "error: NAME=PORTS"},
		{"=1,2", "error: 1 to 32 characters"},
		{"bad name=1", "error: NAME=PORTS"},
		{"a=1 b", "error: KEY=VALUE"},
		{"x=1 colour=red", "error: unknown field"},
		{"x=1 timeout=-1", "error: negative"},
		{"x=1:tcp tcp-flags=syn,!syn", "error: both required and excluded"},
		{"x=1 tcp-flags=ece", "error: unknown flag"},
		{"ü=1", "error: door name"},
	}
	for _, tc := range cases {
		d, err := parseDoorSpec(tc.in, 5*time.Second)
		if strings.HasPrefix(tc.want, "error: ") {
			if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
				t.Errorf("parseDoorSpec(%q) = %v; want an error containing %q", tc.in, err, tc.want)
			}
			continue
		}
		if err != nil || describeDoor(d) != tc.want {
			t.Errorf("parseDoorSpec(%q) = %q, %v; want %q", tc.in, describeDoor(d), err, tc.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"5s", 5 * time.Second, false},
		{"5", 5 * time.Second, false},
		{"0.5", 500 * ms, false},
		{"250ms", 250 * ms, false},
		{"1m30s", 90 * time.Second, false},
		{" 2 ", 2 * time.Second, false},
		{"-1", 0, true},
		{"-1s", 0, true},
		{"abc", 0, true},
		{"", 0, true},
		{"NaN", 0, true},
		{"Inf", 0, true},
		{"1e3", 0, true},
		{"5 s", 0, true},
		{"1.2.3", 0, true},
		{"99999999999999999999", 0, true},
	}
	for _, tc := range cases {
		got, err := parseDuration(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseHookArg(t *testing.T) {
	cases := []struct {
		in         string
		key, value string
		err        bool
	}{
		{"port=22", "port", "22", false},
		{"cmd=a=b", "cmd", "a=b", false},
		{"empty=", "empty", "", false},
		{"_x1=y", "_x1", "y", false},
		{"noequals", "", "", true},
		{"=v", "", "", true},
		{"1x=v", "", "", true},
		{"a-b=v", "", "", true},
		{"k=\xff", "", "", true},
	}
	for _, tc := range cases {
		k, v, err := parseHookArg(tc.in)
		if (err != nil) != tc.err || k != tc.key || v != tc.value {
			t.Errorf("parseHookArg(%q) = %q, %q, %v", tc.in, k, v, err)
		}
	}
}

func TestScanWarning(t *testing.T) {
	cases := []struct {
		seq, decoys []uint16
		warn        bool
	}{
		{[]uint16{123, 456, 789}, nil, true},
		{[]uint16{789, 456, 123}, nil, true},
		{[]uint16{456, 123, 789}, nil, false},
		{[]uint16{123, 456, 789}, []uint16{500}, false},
		{[]uint16{123, 456, 789}, []uint16{1000}, true},
		{[]uint16{7, 7, 8}, nil, false},
		{[]uint16{9}, nil, true},
	}
	for _, tc := range cases {
		if got := scanWarning(udp(tc.seq...), udp(tc.decoys...)) != ""; got != tc.warn {
			t.Errorf("scanWarning(%v, decoys %v) warns %v, want %v", tc.seq, tc.decoys, got, tc.warn)
		}
	}
}

func TestCheckPortsRejectsAmbiguousDoors(t *testing.T) {
	c := testConfig()
	c.doors = []door{testDoor("a", 1, 2, 3), testDoor("b", 1, 2, 3)}
	if err := c.checkPorts(); err == nil || !strings.Contains(err.Error(), "same sequence") {
		t.Errorf("two doors with one sequence: %v", err)
	}
	c.doors = []door{testDoor("a", 1, 2), testDoor("b", 1, 2, 3)}
	if err := c.checkPorts(); err != nil || len(c.warnings) == 0 || !strings.Contains(strings.Join(c.warnings, "\n"), "prefix") {
		t.Errorf("a prefix: %v, warnings %q", err, c.warnings)
	}
	c.doors = []door{{name: "t", seq: []portSpec{{1, protoTCP}}, timeout: time.Second}}
	if err := c.checkPorts(); err == nil || !strings.Contains(err.Error(), "--capture") {
		t.Errorf("a TCP knock without capture: %v", err)
	}
}

// Once the stamp guard has waited, the kernel stamps datagrams on arrival: the knocks of a
// burst sent the moment the server is ready keep their order across sockets. (Whether the guard
// had to wait depends on the host: another program asking for receive times keeps them on.)
func TestStampGuardWaitsForArrivalStamps(t *testing.T) {
	if !linux64 {
		t.Skip("SKIP: kernel receive times are read on Linux only")
	}
	g, err := newStampGuard()
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	start := time.Now()
	if !g.wait() {
		t.Fatalf("no stamps on arrival after %v", stampWait)
	}
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	rc, _ := probe.SyscallConn()
	if err := setSockopt(rc, solSocket, soTimestampNS, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if on, sure := stampsOnArrival(probe); !on || !sure {
			t.Fatalf("probe %d after the guard waited %v: stamped on arrival %v (probe worked %v)", i, time.Since(start), on, sure)
		}
	}
}

func TestParseControl(t *testing.T) {
	if !linux64 {
		t.Skip("SKIP: kernel receive times and destinations are read on 64-bit Linux only")
	}
	oob := make([]byte, 64)
	ne := binary.NativeEndian
	ne.PutUint64(oob[0:], 32)
	ne.PutUint32(oob[8:], solSocket)
	ne.PutUint32(oob[12:], soTimestampNS)
	ne.PutUint64(oob[16:], 1700000000)
	ne.PutUint64(oob[24:], 123)
	ne.PutUint64(oob[32:], 28)
	ne.PutUint32(oob[40:], ipprotoIP)
	ne.PutUint32(oob[44:], ipPktinfo)
	copy(oob[56:60], []byte{192, 0, 2, 9})
	cd := parseControl(oob)
	if cd.ts != 1700000000*int64(time.Second)+123 || cd.to != netip.MustParseAddr("192.0.2.9") {
		t.Fatalf("parseControl = %+v", cd)
	}
	now := time.Now().UnixNano()
	if got := parseControl(oob[:20]); got.ts < now || got.to.IsValid() {
		t.Fatalf("truncated control data should fall back to the time now, got %+v", got)
	}
}

func TestLatencyHistogram(t *testing.T) {
	var h latencyHistogram
	if h.quantile(0.5) != 0 {
		t.Fatal("an empty histogram has a median")
	}
	for range 980 {
		h.record(int64(100 * time.Microsecond))
	}
	for range 20 {
		h.record(int64(5 * time.Millisecond))
	}
	within := func(got, want time.Duration) bool { return got >= want && got <= want*5/4 }
	if p50 := h.quantile(0.5); !within(p50, 100*time.Microsecond) {
		t.Errorf("p50 = %v, want 100µs to 125µs", p50)
	}
	if p99 := h.quantile(0.99); !within(p99, 5*time.Millisecond) {
		t.Errorf("p99 = %v, want 5ms to 6.25ms", p99)
	}
	for _, ns := range []int64{-5, 0, 1, 2, 3, 7, 1 << 40, math.MaxInt64} {
		if b := latencyBucket(ns); b < 0 || b > 255 || (ns > 0 && bucketUpper(b) < ns && b < 255) {
			t.Errorf("latencyBucket(%d) = %d, upper %d", ns, b, bucketUpper(b))
		}
	}
}

func TestEventQueueIsFairUnderOverload(t *testing.T) {
	q := newEventQueue(1000, 500)
	flood := make([]event, 0, 5000)
	for i := range 5000 {
		flood = append(flood, event{kind: eventUnlock, from: keyOf(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))})
	}
	q.push(flood)
	q.push([]event{{kind: eventKnock, from: key("192.0.2.1")}})
	q.push([]event{{kind: eventUnlock, from: key("192.0.2.1")}})
	if q.length() != 1000 {
		t.Fatalf("queue holds %d events, the limit is 1000", q.length())
	}
	if q.shedTotal() != 4000+2 || q.shed[eventKnock].Load() != 1 {
		t.Fatalf("shed %d (%d knocks), want 4002: 4000 spoofed unlocks, the knock (never in place of an unlock), and one spoofed unlock for the genuine one", q.shedTotal(), q.shed[eventKnock].Load())
	}
	// Prefixes take turns, prefixQuantum events each: the genuine client's unlock comes out in
	// the first round, within 21 prefixes' worth, not after the 1,000 queued before it.
	got := q.pop(nil, 1000)
	at := -1
	for i, e := range got {
		if e.from == key("192.0.2.1") && e.kind == eventUnlock {
			at = i
		}
	}
	if at < 0 || at >= 21*prefixQuantum {
		t.Fatalf("the genuine unlock came out at position %d of %d, want within the first round (%d)", at, len(got), 21*prefixQuantum)
	}
}

// sendHello hands tr, at now, a hello to port 1000 from from, made with key, dated at, its nonce
// made of the byte nonce; it returns the tracker's verdict and the reply (a challenge) it wrote.
func sendHello(t *testing.T, tr *tracker, keys *keyring, m *macScratch, from netip.AddrPort, key *userKey, at, now time.Time, nonce byte) (dropReason, []byte) {
	t.Helper()
	var b, reply [wireLen]byte
	encodeHello(b[:], m, key, 1000, at.UnixMilli(), bytes.Repeat([]byte{nonce}, nonceLen))
	h, k, why := decodeHello(b[:], m, keys, 1000)
	if why != dropNone {
		t.Fatal(why)
	}
	why = tr.hello(from, netip.Addr{}, &h, k, now.UnixNano(), reply[:], m)
	return why, reply[:]
}

// sendKnock hands tr the authenticated knock at position pos on port, made with key against
// the challenge's server nonce, from from, received at; it returns the tracker's verdict.
func sendKnock(tr *tracker, m *macScratch, from netip.AddrPort, key *userKey, nonceS []byte, pos int, port uint16, at time.Time) dropReason {
	var b [wireLen]byte
	encodeKnock(b[:], m, key, pos, port, nonceS, from.Addr())
	tok, _ := decodeKnock(b[:])
	k := knock{from: keyOf(from.Addr()), srcPort: from.Port(), port: up(port), ts: at.UnixNano()}
	return tr.authKnock(&k, &tok, m, newOutbox(1))
}

// aliceTracker is a tracker for the door 1000, 2000, 3000 with one user's key, alice's.
func aliceTracker() (*tracker, *recorder, *keyring, *userKey) {
	c := testConfig(1000, 2000, 3000)
	alice := newUserKey("alice", []byte("alice-key-0123456789abcdef0123456789"))
	c.keys = &keyring{byID: map[[keyIDLen]byte]*userKey{alice.id: alice}}
	tr, rec := newTestTracker(c)
	return tr, rec, c.keys, alice
}

// Another key's hello dated ahead, sent from a client's address, does not hold that address
// off until its date: a hello with the client's own key replaces an attempt that has not knocked,
// both while it is only a challenge and once it is a client record. Once the attempt has knocked,
// an older hello of another key is stale.
func TestHelloOfAnotherKeyDatedAheadDoesNotLockOut(t *testing.T) {
	c := testConfig(1000, 2000, 3000)
	alice := newUserKey("alice", []byte("alice-key-0123456789abcdef0123456789"))
	mallory := newUserKey("mallory", []byte("mallory-key-0123456789abcdef01234567"))
	c.keys = &keyring{byID: map[[keyIDLen]byte]*userKey{alice.id: alice, mallory.id: mallory}}
	tr, _ := newTestTracker(c)
	m := newMACScratch()
	from := netip.MustParseAddrPort("192.0.2.1:40000")
	now := time.Now()
	nonce := byte(0)
	hello := func(key *userKey, at time.Time) (dropReason, []byte) {
		nonce++
		return sendHello(t, tr, c.keys, m, from, key, at, now, nonce)
	}
	if why, _ := hello(mallory, now.Add(28*time.Second)); why != dropNone {
		t.Fatalf("mallory's hello: %v", why)
	}
	why, reply := hello(alice, now)
	if why != dropNone {
		t.Fatalf("alice's hello after mallory's, dated ahead, from her address: %v, want a challenge", why)
	}
	chal, ok := decodeChallenge(reply, m, &alice.mac, bytes.Repeat([]byte{nonce}, nonceLen))
	if !ok {
		t.Fatal("alice's challenge does not verify")
	}
	// Alice knocks: her attempt is now a client record that has knocked.
	if why := sendKnock(tr, m, from, alice, chal.nonceS, 0, 1000, now); why != dropNone {
		t.Fatalf("alice's first knock: %v", why)
	}
	if why, _ := hello(mallory, now.Add(-time.Second)); why != dropStaleHello {
		t.Fatalf("an older hello of another key against an attempt that has knocked: %v, want stale_hello", why)
	}
}

// An attempt is restarted only by a later hello: a captured hello sent again cannot reset it.
func TestHelloOnlyALaterOneRestartsAnAttempt(t *testing.T) {
	tr, rec, keys, alice := aliceTracker()
	m := newMACScratch()
	from := netip.MustParseAddrPort("192.0.2.1:40000")
	now := time.Now()
	hello := func(at time.Time, nonce byte) (dropReason, []byte) {
		return sendHello(t, tr, keys, m, from, alice, at, now, nonce)
	}
	_, old := hello(now.Add(-time.Second), 1)
	why, first := hello(now, 2)
	chal, ok := decodeChallenge(first, m, &alice.mac, bytes.Repeat([]byte{2}, nonceLen))
	if why != dropNone || !ok {
		t.Fatalf("a later hello: %v, challenge ok %v", why, ok)
	}
	knockAt := func(pos int, port uint16) dropReason {
		return sendKnock(tr, m, from, alice, chal.nonceS, pos, port, time.Now())
	}
	if why := knockAt(0, 1000); why != dropNone {
		t.Fatal(why)
	}
	if why, _ := hello(now.Add(-time.Second), 1); why != dropStaleHello {
		t.Fatalf("an older hello sent again: %v, want stale_hello", why)
	}
	if why, again := hello(now, 2); why != dropNone || !bytes.Equal(again, first) {
		t.Fatalf("a retransmitted hello must get the same challenge: %v", why)
	}
	if knockAt(1, 2000) != dropNone || knockAt(2, 3000) != dropNone || rec.unlocked("192.0.2.1") != 1 {
		t.Fatalf("the attempt did not survive the replayed hello: %+v", rec.events)
	}
	if bytes.Equal(old, first) {
		t.Fatal("two hellos got one challenge")
	}
}

// A client's second attempt, begun right after its first unlocked: the hello puts the new
// challenge in the client record the first attempt left, and the tracker's sweep must not forget
// that record (its progress is over, so it looks idle) between the hello and the knocks. Found
// by knocking 200 times in a row: one attempt in about 200 had its three knocks dropped as
// no_challenge.
func TestSweepKeepsAChallengeInAClientRecord(t *testing.T) {
	tr, rec, keys, alice := aliceTracker()
	m := newMACScratch()
	from := netip.MustParseAddrPort("192.0.2.1:40000")
	start := time.Now()
	at := func(d time.Duration) time.Time { return start.Add(d) }
	attempt := func(nonce byte, hello, knocks time.Duration) []dropReason {
		why, reply := sendHello(t, tr, keys, m, from, alice, at(hello), at(hello), nonce)
		chal, ok := decodeChallenge(reply, m, &alice.mac, bytes.Repeat([]byte{nonce}, nonceLen))
		if why != dropNone || !ok {
			t.Fatalf("hello %d: %v, challenge ok %v", nonce, why, ok)
		}
		tr.sweep(at(hello + time.Millisecond).UnixNano())
		var whys []dropReason
		for pos, port := range []uint16{1000, 2000, 3000} {
			whys = append(whys, sendKnock(tr, m, from, alice, chal.nonceS, pos, port, at(knocks+time.Duration(pos)*time.Millisecond)))
		}
		return whys
	}
	for i, a := range []struct{ hello, knocks time.Duration }{
		{0, 10 * time.Millisecond},                             // a challenge in the compact table
		{20 * time.Millisecond, 30 * time.Millisecond},         // in the record the first attempt left
		{3 * time.Second, 3*time.Second + 10*time.Millisecond}, // the record swept long before
	} {
		if whys := attempt(byte(i+1), a.hello, a.knocks); !slices.Equal(whys, []dropReason{dropNone, dropNone, dropNone}) {
			t.Fatalf("attempt %d: knocks dropped as %v", i+1, whys)
		}
		if got := rec.unlocked("192.0.2.1"); got != i+1 {
			t.Fatalf("attempt %d: %d unlocks, want %d", i+1, got, i+1)
		}
	}
}

func TestWirePaddingMustBeZero(t *testing.T) {
	k := newUserKey("", []byte("padding-key-0123456789abcdef0123456789"))
	m := newMACScratch()
	var b [wireLen]byte
	encodeKnock(b[:], m, k, 0, 1000, make([]byte, nonceLen), netip.MustParseAddr("192.0.2.1"))
	if _, ok := decodeKnock(b[:]); !ok {
		t.Fatal("a good knock refused")
	}
	b[20] = 1
	if _, ok := decodeKnock(b[:]); ok {
		t.Fatal("a knock with non-zero padding accepted")
	}
	encodeHello(b[:], m, k, 1000, 1, make([]byte, nonceLen))
	b[40] = 1
	keys := &keyring{byID: map[[keyIDLen]byte]*userKey{k.id: k}}
	if _, _, why := decodeHello(b[:], m, keys, 1000); why != dropMalformed {
		t.Fatalf("a hello with non-zero padding: %v", why)
	}
}

func TestPublicAddresses(t *testing.T) {
	for addr, want := range map[string]bool{"8.8.8.8": true, "2a00:1450::1": true, "10.1.2.3": false, "192.168.1.1": false,
		"100.64.1.1": false, "127.0.0.1": false, "192.0.2.1": false, "2001:db8::1": false, "fe80::1": false, "fd00::1": false} {
		if got := public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("public(%s) = %v, want %v", addr, got, want)
		}
	}
}

// rateLimit lets perSecond lines through in a second and, at the first call of a later second,
// logs how many it held back.
func TestRateLimit(t *testing.T) {
	logs := &syncBuffer{}
	r := rateLimit{log: slog.New(slog.NewTextHandler(logs, nil)), what: "knock failures", perSecond: 3}
	t0 := time.Unix(1000, 0)
	var got []bool
	for range 5 {
		got = append(got, r.allow(t0))
	}
	if want := []bool{true, true, true, false, false}; !slices.Equal(got, want) {
		t.Fatalf("in one second: %v, want %v", got, want)
	}
	if logs.String() != "" {
		t.Fatalf("logged before the second ended: %s", logs)
	}
	if !r.allow(t0.Add(time.Second)) {
		t.Fatal("the next second starts afresh")
	}
	const want = `level=WARN msg="knock failures not logged: over the rate limit" event=overload count=2 limit_per_second=3`
	if !strings.Contains(logs.String(), want) {
		t.Fatalf("logged %q, want %q", logs, want)
	}
}
