package main

import (
	"bytes"
	"container/heap"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// The tracker's lifecycle under honest traffic: many clients, each doing attempt after attempt
// (back to back, or after a pause around the one second a finished record is kept), with random
// small and large gaps between knocks, knocks read out of receive-time order within the reorder
// window, duplicate datagrams, and the janitor's sweep at random moments. Every honest attempt
// must unlock exactly once, at its final knock, and no honest client may ever fail or be banned.
// FuzzTrackerAgreesWithRules checks the rules on reordered knocks; this drives the sweep, the
// compact tables, the challenges and the client records being removed and made again.

// simEvent is one thing that happens to the tracker, at wall time at.
type simEvent struct {
	at     int64
	order  int // ties: in the order they were made
	kind   uint8
	cl     int
	att    int            // the client's attempt
	pos    int            // the knock's position in the attempt
	ts     int64          // a knock's kernel time
	final  bool           // the attempt's last knock (not a duplicate)
	dup    bool           // a copy of a knock
	copied bool           // a knock that has a copy: either may be dropped (an authenticated one as a replay)
	nonce  [nonceLen]byte // a hello's
	milli  int64          // a hello's client time
}

const (
	simSweep uint8 = iota
	simHello
	simKnock
)

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].order < q[j].order
}
func (q simQueue) Swap(i, j int)   { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)     { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any       { old := *q; e := old[len(old)-1]; *q = old[:len(old)-1]; return e }
func (q *simQueue) add(e simEvent) { e.order = len(*q) + int(e.at&0xffff); heap.Push(q, &e) }

type simClient struct {
	addr        netip.AddrPort
	key         *userKey
	doors       []int     // the door of each attempt
	finals      []int64   // each attempt's final knock's kernel time, once known
	lastDeliv   int64     // the latest delivery of any knock so far: a final knock is read after it
	lastTs      int64     // the next attempt starts after this
	finalCopies [][]int64 // the times of the copies of each attempt's final knock
	nonceS      [][]byte
}

type simCase struct {
	name     string
	doors    []door
	auth     bool
	clients  int
	attempts int
	shared   bool // doors share a first port: a knock right for one fails another, which is reported
}

// simRun runs one seeded simulation and returns what went wrong, or "".
func simRun(tc simCase, seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, 0x6b6e6f636b))
	c := testConfig(1)
	c.doors = tc.doors
	c.banAfter = 2 // an honest failure shows as lost attempts too
	c.maxClients = 4096
	var keys *keyring
	if tc.auth {
		keys = &keyring{byID: map[[keyIDLen]byte]*userKey{}}
		c.keys = keys
	}
	tr, rec := newTestTracker(c)
	m := newMACScratch()
	out := newOutbox(len(tr.doors))
	t0 := int64(1_800_000_000) * int64(time.Second)
	var q simQueue
	clients := make([]*simClient, tc.clients)
	byKey := map[addrKey]int{}
	for i := range clients {
		var a netip.Addr
		if i%2 == 0 {
			a = netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 6: byte(i >> 8), 7: byte(i), 15: 1})
		}
		cl := &simClient{addr: netip.AddrPortFrom(a, uint16(40000+i))}
		if tc.auth {
			secret := fmt.Appendf(nil, "sim-key-%04d-0123456789abcdef0123456789", i)
			cl.key = newUserKey("u"+strconv.Itoa(i), secret)
			keys.byID[cl.key.id] = cl.key
		}
		for range tc.attempts {
			cl.doors = append(cl.doors, rng.IntN(len(tc.doors)))
		}
		cl.finals = make([]int64, tc.attempts)
		cl.finalCopies = make([][]int64, tc.attempts)
		cl.nonceS = make([][]byte, tc.attempts)
		clients[i] = cl
		byKey[keyOf(a)] = i
	}
	// gap is a pause between two knocks of an attempt: mostly none or a few ms, sometimes up to
	// most of the door's timeout.
	gap := func(d int) int64 {
		switch r := rng.IntN(10); {
		case r < 5:
			return 1 + rng.Int64N(int64(2*time.Millisecond))
		case r < 8:
			return 1 + rng.Int64N(int64(1500*time.Millisecond))
		default:
			return 1 + rng.Int64N(int64(tc.doors[d].timeout)*8/10)
		}
	}
	// pause is the time between an attempt and the next: back to back, around the second a
	// finished record is kept, or longer.
	pause := func() int64 {
		switch r := rng.IntN(10); {
		case r < 4:
			return 1 + rng.Int64N(int64(3*time.Millisecond))
		case r < 7:
			return int64(800*time.Millisecond) + rng.Int64N(int64(800*time.Millisecond))
		default:
			return rng.Int64N(int64(4 * time.Second))
		}
	}
	// delay is how late a reader hands a knock to the tracker: under the reorder window.
	delay := func() int64 {
		switch r := rng.IntN(20); {
		case r < 14:
			return rng.Int64N(int64(2 * time.Millisecond))
		case r < 19:
			return rng.Int64N(int64(50 * time.Millisecond))
		default:
			return rng.Int64N(int64(950 * time.Millisecond))
		}
	}
	// schedule makes the knocks of client i's attempt a, the first sent at start, and copies of
	// some of them: a repeat of a port before the next knock, within a second.
	schedule := func(i, a int, start int64) {
		cl := clients[i]
		d := cl.doors[a]
		seq := tc.doors[d].seq
		ts := make([]int64, len(seq)+1)
		ts[0] = start
		for pos := 1; pos < len(seq); pos++ {
			ts[pos] = ts[pos-1] + gap(d)
		}
		ts[len(seq)] = ts[len(seq)-1] + 1 + rng.Int64N(int64(300*time.Millisecond)) // the next attempt starts after
		retransmit := min(int64(time.Second), int64(tc.doors[d].timeout))
		for pos, p := range seq {
			final := pos == len(seq)-1
			at := ts[pos] + delay()
			if final {
				at = max(at, cl.lastDeliv+1) // an unlock never waits: nothing of the client is read after it
				cl.finals[a] = ts[pos]
			}
			cl.lastDeliv = max(cl.lastDeliv, at)
			room := min(ts[pos+1]-ts[pos], retransmit)
			copied := room > 1 && rng.IntN(6) == 0 && !tr.roles.of(p).repeatable
			q.add(simEvent{at: at, kind: simKnock, cl: i, att: a, pos: pos, ts: ts[pos], final: final, copied: copied})
			if copied {
				dts := ts[pos] + 1 + rng.Int64N(room-1)
				if rng.IntN(2) == 0 {
					dts = ts[pos] + 1 + rng.Int64N(min(room-1, int64(time.Millisecond)))
				}
				dat := dts + delay()
				if final {
					// A copy of the final knock may complete the sequence in its stead.
					dat = max(dat, cl.lastDeliv+1)
					cl.finalCopies[a] = append(cl.finalCopies[a], dts)
				} else {
					cl.lastDeliv = max(cl.lastDeliv, dat)
				}
				q.add(simEvent{at: dat, kind: simKnock, cl: i, att: a, pos: pos, ts: dts, dup: true, copied: true})
			}
		}
		cl.lastTs = ts[len(seq)]
	}
	// The clients start within the first two seconds.
	for i, cl := range clients {
		start := t0 + rng.Int64N(int64(2*time.Second))
		if tc.auth {
			q.add(simEvent{at: start, kind: simHello, cl: i, att: 0, milli: start / int64(time.Millisecond), nonce: simNonce(i, 0)})
		} else {
			cl.lastDeliv = start
			schedule(i, 0, start)
		}
	}
	for at := t0; at < t0+int64(time.Duration(tc.attempts)*8*time.Second); at += rng.Int64N(int64(300 * time.Millisecond)) {
		q.add(simEvent{at: at, kind: simSweep})
	}
	var last int64
	var problems []string
	fail := func(format string, args ...any) {
		if len(problems) < 5 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for q.Len() > 0 {
		e := heap.Pop(&q).(*simEvent)
		last = max(last, e.at)
		switch e.kind {
		case simSweep:
			tr.sweep(e.at)
			if simTrace >= 0 {
				fmt.Printf("sweep at %v\n", time.Duration(e.at-t0))
			}
		case simHello:
			cl := clients[e.cl]
			var b, reply [wireLen]byte
			encodeHello(b[:], m, cl.key, 1000, e.milli, e.nonce[:])
			h, k, why := decodeHello(b[:], m, keys, 1000)
			if why == dropNone {
				why = tr.hello(cl.addr, netip.Addr{}, &h, k, e.at, reply[:], m)
			}
			if e.dup {
				continue // a retransmitted hello: answered again, or stale; either way harmless
			}
			chal, ok := decodeChallenge(reply[:], m, &cl.key.mac, e.nonce[:])
			if why != dropNone || !ok {
				fail("client %d attempt %d: hello at %v: %v", e.cl, e.att, time.Duration(e.at-t0), why)
				continue
			}
			cl.nonceS[e.att] = append([]byte(nil), chal.nonceS...)
			cl.lastDeliv = e.at
			schedule(e.cl, e.att, e.at+1+rng.Int64N(int64(time.Millisecond)))
			if rng.IntN(8) == 0 { // the hello sent again, its answer lost
				d := e
				dup := *d
				dup.dup, dup.at = true, e.at+rng.Int64N(int64(1500*time.Millisecond))
				q.add(dup)
			}
		case simKnock:
			cl := clients[e.cl]
			d := cl.doors[e.att]
			p := tc.doors[d].seq[e.pos]
			k := knock{from: keyOf(cl.addr.Addr()), srcPort: cl.addr.Port(), port: p, ts: e.ts}
			if p.proto == protoTCP {
				k.flags = tcpSYN
			}
			var why dropReason
			if tc.auth {
				var b [wireLen]byte
				encodeKnock(b[:], m, cl.key, e.pos, p.port, cl.nonceS[e.att], cl.addr.Addr())
				tok, _ := decodeKnock(b[:])
				why = tr.authKnock(&k, &tok, m, out)
			} else {
				why = tr.knock(&k, out)
			}
			if e.cl == simTrace {
				fmt.Printf("knock pos %d port %v ts %v at %v dup %v final %v -> %v; events %d\n", e.pos, p, time.Duration(e.ts-t0), time.Duration(e.at-t0), e.dup, e.final, why, len(rec.events))
			}
			if why != dropNone && !e.copied {
				fail("client %d attempt %d (door %s) knock %d at %v: dropped as %v", e.cl, e.att, tc.doors[d].name, e.pos, time.Duration(e.ts-t0), why)
			}
			if e.final && e.att+1 < len(cl.doors) {
				next := e.at + pause()
				if tc.auth {
					// The client waits for the confirmation, then says hello again.
					q.add(simEvent{at: next, kind: simHello, cl: e.cl, att: e.att + 1, milli: next / int64(time.Millisecond), nonce: simNonce(e.cl, e.att+1)})
				} else {
					schedule(e.cl, e.att+1, max(next-delay(), cl.lastTs))
				}
			}
		}
	}
	tr.sweep(last + int64(time.Hour))
	// Each attempt unlocks its door once, at its final knock; nothing else happens to anyone.
	type unlock struct {
		door uint16
		ts   int64
	}
	got := map[int][]unlock{}
	for _, ev := range rec.events {
		i, ok := byKey[ev.from]
		switch {
		case !ok:
			fail("an event from an unknown client %v", ev.from.addr())
		case ev.kind == eventFail && tc.shared && ev.reason != reasonBanned:
		case ev.kind == eventFail:
			fail("client %d: %s on door %s at %v (port %v)", i, ev.reason, tc.doors[ev.door].name, time.Duration(ev.ts-t0), ev.port)
		case ev.kind == eventUnlock:
			got[i] = append(got[i], unlock{ev.door, ev.ts})
		}
	}
	for i, cl := range clients {
		want := map[unlock]int{}
		copyOf := map[unlock]unlock{} // a copy of a final knock: it may unlock in the final's stead
		for a, d := range cl.doors {
			want[unlock{uint16(d), cl.finals[a]}]++
			for _, ts := range cl.finalCopies[a] {
				copyOf[unlock{uint16(d), ts}] = unlock{uint16(d), cl.finals[a]}
			}
		}
		for _, u := range got[i] {
			if o, ok := copyOf[u]; ok {
				u = o
			}
			if want[u] == 0 {
				fail("client %d: unexpected unlock of door %s at %v", i, tc.doors[u.door].name, time.Duration(u.ts-t0))
			}
			want[u]--
		}
		for u, n := range want {
			if n > 0 {
				fail("client %d: the attempt on door %s ending at %v never unlocked", i, tc.doors[u.door].name, time.Duration(u.ts-t0))
			}
		}
	}
	if n := tr.clients(); n != 0 {
		fail("%d client records left an hour after the last event", n)
	}
	if len(problems) == 0 {
		return ""
	}
	return fmt.Sprint(problems)
}

func simCases() []simCase {
	return []simCase{
		{name: "plain one door", doors: []door{simDoor("a", 5*time.Second, up(1000), up(2000), up(3000))}, clients: 40, attempts: 12},
		{name: "plain doors", doors: []door{
			simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)),
			simDoor("tcp", 3*time.Second, tp(4000), up(4100), tp(4200), up(4300)),
			simDoor("twice", 5*time.Second, up(5000), up(5000), up(5100)),
			simDoor("one", 2*time.Second, up(6000)),
		}, clients: 40, attempts: 12},
		{name: "plain repeat apart", doors: []door{simDoor("r", 5*time.Second, up(1000), up(2000), up(1000), up(3000))}, clients: 40, attempts: 12},
		{name: "auth one door", auth: true, doors: []door{simDoor("a", 5*time.Second, up(1000), up(2000), up(3000))}, clients: 40, attempts: 12},
		{name: "auth doors", auth: true, doors: []door{
			simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)),
			simDoor("b", 3*time.Second, up(4000), up(4100), up(4200), up(4300), up(4400)),
			simDoor("one", 2*time.Second, up(6000)),
		}, clients: 40, attempts: 12},
		{name: "plain shared first port", shared: true, doors: []door{
			simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)),
			simDoor("b", 4*time.Second, up(1000), up(3000), up(2000), up(4000)),
		}, clients: 40, attempts: 12},
		{name: "auth shared first port", auth: true, shared: true, doors: []door{
			simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)),
			simDoor("b", 4*time.Second, up(1000), up(3000), up(2000), up(4000)),
		}, clients: 40, attempts: 12},
	}
}

var simTrace = -1 // a client whose knocks to print (TRACKER_SIM_TRACE)

func simNonce(client, attempt int) (n [nonceLen]byte) {
	binary.BigEndian.PutUint64(n[:], uint64(client))
	binary.BigEndian.PutUint64(n[8:], uint64(attempt))
	return n
}

func simDoor(name string, timeout time.Duration, seq ...portSpec) door {
	return door{name: name, seq: seq, timeout: timeout, tcpFlags: defaultTCPFlags}
}

func tp(p uint16) portSpec { return portSpec{p, protoTCP} }

func TestTrackerSimulatedHonestClients(t *testing.T) {
	// By hand: TRACKER_SIM_SEEDS=500 runs more seeds; TRACKER_SIM_SEED=12 TRACKER_SIM_TRACE=24 runs seed 12 alone and
	// prints client 24's knocks and the sweeps.
	first, seeds := uint64(0), uint64(4)
	if s := os.Getenv("TRACKER_SIM_SEEDS"); s != "" {
		seeds, _ = strconv.ParseUint(s, 10, 64)
	}
	if s := os.Getenv("TRACKER_SIM_SEED"); s != "" {
		first, _ = strconv.ParseUint(s, 10, 64)
		seeds = first + 1
	}
	if s := os.Getenv("TRACKER_SIM_TRACE"); s != "" {
		simTrace, _ = strconv.Atoi(s)
		defer func() { simTrace = -1 }()
	}
	for _, tc := range simCases() {
		t.Run(tc.name, func(t *testing.T) {
			bad := 0
			for seed := first; seed < seeds; seed++ {
				if msg := simRun(tc, seed); msg != "" {
					bad++
					if bad <= 3 {
						t.Errorf("seed %d: %s", seed, msg)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d seeds went wrong", bad, seeds-first)
			}
		})
	}
}

// A port the sequence repeats, not back to back (1000, 2000, 1000, 3000), its second knock read
// before the 2000 between them: it is merged into the first 1000 as a copy, and put back in its
// place when the 2000 comes. A sweep between the two, once the first 1000 is past the reorder
// window but its copy is not, must not settle the first 1000 without its copy: else the copy is
// lost and the 3000 is a wrong port. Found by TestTrackerSimulatedHonestClients. With the first knock in
// the compact table and in a client record (a second attempt right behind the first).
// repeatedPortClient is one client of a tracker for the door 1000, 2000, 1000, 3000, whose port
// 1000 comes twice: its knocks are timed from a fixed t0; with before, an attempt right before
// t0 has unlocked once, so that its next knocks go to a client record, not the compact table.
type repeatedPortClient struct {
	tr     *tracker
	rec    *recorder
	t0     int64
	before int // unlocks before t0
}

const repeatedPortIP = "192.0.2.7"

func newRepeatedPortClient(before bool) *repeatedPortClient {
	tr, rec := newTestTracker(testConfig(1000, 2000, 1000, 3000))
	r := &repeatedPortClient{tr: tr, rec: rec, t0: int64(1_800_000_000) * int64(time.Second)}
	if before {
		for i, p := range []uint16{1000, 2000, 1000, 3000} {
			r.feed(knock{port: up(p), ts: r.at(time.Duration(i-5) * ms)})
		}
		r.before = 1
	}
	return r
}

func (r *repeatedPortClient) at(d time.Duration) int64 { return r.t0 + int64(d) }

// feed hands the tracker knocks from the client, in the order given (the order they were read).
func (r *repeatedPortClient) feed(ks ...knock) {
	for _, k := range ks {
		k.from = key(repeatedPortIP)
		feed(r.tr, k)
	}
}

// wantOneMoreUnlock checks that the client unlocked once since newRepeatedPortClient, and
// never failed.
func (r *repeatedPortClient) wantOneMoreUnlock(t *testing.T) {
	t.Helper()
	if got, want := r.rec.unlocked(repeatedPortIP), r.before+1; got != want || r.rec.count(eventFail, reasonNone) != 0 {
		t.Fatalf("%d unlocks, %d failures; want %d unlocks and no failure; events %+v", got, r.rec.count(eventFail, reasonNone), want, r.rec.events)
	}
}

// inBothPlaces runs f for a client whose knocks go to the compact first-knock table, and for one
// whose knocks go to a client record (an attempt right before).
func inBothPlaces(t *testing.T, f func(t *testing.T, r *repeatedPortClient)) {
	for _, before := range []bool{false, true} {
		name := "first knock"
		if before {
			name = "client record"
		}
		t.Run(name, func(t *testing.T) { f(t, newRepeatedPortClient(before)) })
	}
}

func TestTrackerSettleKeepsACopyWithinTheWindow(t *testing.T) {
	inBothPlaces(t, func(t *testing.T, r *repeatedPortClient) {
		r.feed(
			knock{port: up(1000), ts: r.at(0)},
			knock{port: up(1000), ts: r.at(900 * ms)}, // read before the 2000 received just before it
		)
		r.tr.sweep(r.at(1050 * ms)) // the first 1000 is past the reorder window; its copy is not
		r.feed(knock{port: up(2000), ts: r.at(899 * ms)}, knock{port: up(3000), ts: r.at(910 * ms)})
		r.wantOneMoreUnlock(t)
	})
}

// A copy of a sequence's final knock, sent within the retransmission second and read late
// (within the reorder window), after the sweep's next pass: the client's record must still be
// there to tell it is a copy. Forgotten one second after the final knock, the copy was a first
// knock on a wrong port: a failure (and with --ban-after, a step towards a ban) for an honest
// client. Found by TestTrackerSimulatedHonestClients.
func TestTrackerSweepKeepsARecordForALateCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		next bool // the client's next attempt has begun when the copy is read
	}{{"copy alone", false}, {"next attempt begun", true}} {
		t.Run(tc.name, func(t *testing.T) {
			tr, rec := newTestTracker(testConfig(1000, 2000, 3000))
			from := key("2001:db8::9")
			t0 := int64(1_800_000_000) * int64(time.Second)
			at := func(d time.Duration) int64 { return t0 + int64(d) }
			for i, p := range []uint16{1000, 2000, 3000} {
				feed(tr, knock{from: from, port: up(p), ts: at(time.Duration(i) * ms)})
			}
			for d := 250 * ms; d <= 1500*ms; d += 250 * ms {
				tr.sweep(at(d))
			}
			if tc.next {
				feed(tr, knock{from: from, port: up(1000), ts: at(1400 * ms)})
			}
			feed(tr, knock{from: from, port: up(3000), ts: at(800 * ms)}) // a copy of the final knock, read 0.7 s late
			tr.sweep(at(3 * time.Second))
			if n := rec.count(eventFail, reasonNone); n != 0 || rec.unlocked("2001:db8::9") != 1 {
				t.Fatalf("%d failures and %d unlocks, want none and one: %+v", n, rec.unlocked("2001:db8::9"), rec.events)
			}
		})
	}
}

// The same repeated port (1000, 2000, 1000, 3000), the first 1000 settled by a sweep before the
// second arrives, read just before the 2000 sent before it: within a second of the first, it looks
// like a copy of it, but a knock may still come between them (the reorder window). It must wait
// for that, not be dropped as a copy: the rules ignore a copy anyway when it is settled. Found by
// TestTrackerSimulatedHonestClients. With the first 1000 in the compact table and in a client record.
func TestTrackerACopyOfASettledKnockWaits(t *testing.T) {
	inBothPlaces(t, func(t *testing.T, r *repeatedPortClient) {
		r.feed(knock{port: up(1000), ts: r.at(0)})
		r.tr.sweep(r.at(1010 * ms)) // the first 1000 is settled
		r.feed(
			knock{port: up(1000), ts: r.at(990 * ms)}, // read before the 2000 received just before it
			knock{port: up(2000), ts: r.at(980 * ms)},
			knock{port: up(3000), ts: r.at(995 * ms)},
		)
		r.tr.sweep(r.at(3 * time.Second))
		r.wantOneMoreUnlock(t)
	})
}

// Doors that share a first port or a prefix, or where one door's sequence lies inside another's:
// knocking one door is wrong for another, or completes it on the way. Each door is evaluated on
// its own (README: a knock wrong for one door never resets the progress on another where it is
// right), so the door knocked opens, and so does a door whose whole sequence was knocked on the
// way, with keys as without. With keys, the first door to open or fail ended the attempt: with a
// shared first port no door could open at all; with a prefix, only the shorter door. And a knock
// right for the door being knocked counted as a failed attempt for the bans: knocking one door
// twice, with --ban-after 2, banned the client. Found by reading applyAll.
func TestTrackerDoorsThatShareKnocks(t *testing.T) {
	ab := []door{simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)), simDoor("b", 5*time.Second, up(1000), up(3000), up(2000))}
	prefix := []door{simDoor("short", 5*time.Second, up(1000), up(2000)), simDoor("long", 5*time.Second, up(1000), up(2000), up(3000))}
	inner := []door{simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)), simDoor("one", 5*time.Second, up(2000))}
	// knockd's own example: each door's last port is the other's first, so opening leaves a
	// started attempt on closeSSH, and closing one on openSSH; the next knock of the other door
	// starts it over (after a wrong port, or after its timeout).
	knockd := []door{simDoor("openSSH", 5*time.Second, up(7000), up(8000), up(9000)), simDoor("closeSSH", 5*time.Second, up(9000), up(8000), up(7000))}
	s := time.Second
	for _, tc := range []struct {
		name  string
		doors []door
		knock []int           // the doors knocked in turn (a one-door list: that door three times)
		at    []time.Duration // when each attempt starts (nil: 3 s apart)
		opens []string        // the doors each attempt opens, in turn
	}{
		{"shared first port: a", ab, []int{0}, nil, []string{"a"}},
		{"shared first port: b", ab, []int{1}, nil, []string{"b"}},
		{"prefix: long", prefix, []int{1}, nil, []string{"short", "long"}},
		{"prefix: short", prefix, []int{0}, nil, []string{"short"}},
		{"inside: a", inner, []int{0}, nil, []string{"one", "a"}},
		{"knockd's open and close", knockd, []int{0, 1, 0}, []time.Duration{0, 3 * s / 2, 17 * s / 2}, []string{"openSSH", "closeSSH", "openSSH"}},
		{"knockd's open and close, slowly", knockd, []int{0, 1, 0, 1}, []time.Duration{0, 7 * s, 14 * s, 15 * s}, []string{"openSSH", "closeSSH", "openSSH", "closeSSH"}},
	} {
		for _, auth := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s auth %v", tc.name, auth), func(t *testing.T) {
				c := testConfig(1)
				c.doors = tc.doors
				c.banAfter = 2
				alice := newUserKey("alice", []byte("alice-key-0123456789abcdef0123456789"))
				if auth {
					c.keys = &keyring{byID: map[[keyIDLen]byte]*userKey{alice.id: alice}}
				}
				tr, rec := newTestTracker(c)
				m := newMACScratch()
				from := netip.MustParseAddrPort("192.0.2.1:40000")
				t0 := time.Unix(1_800_000_000, 0)
				var want []string
				attempts := max(len(tc.knock), 3)
				for a := range attempts {
					start := t0.Add(time.Duration(a) * 3 * time.Second)
					if tc.at != nil {
						start = t0.Add(tc.at[a])
					}
					knocked := tc.knock[a%len(tc.knock)]
					var nonceS []byte
					if auth {
						why, reply := sendHello(t, tr, c.keys, m, from, alice, start, start, byte(a+1))
						chal, ok := decodeChallenge(reply, m, &alice.mac, bytes.Repeat([]byte{byte(a + 1)}, nonceLen))
						if why != dropNone || !ok {
							t.Fatalf("attempt %d: hello: %v", a, why)
						}
						nonceS = chal.nonceS
					}
					for pos, p := range tc.doors[knocked].seq {
						k := knock{from: keyOf(from.Addr()), srcPort: from.Port(), port: p, ts: start.Add(time.Duration(pos+1) * ms).UnixNano()}
						why := dropNone
						if auth {
							var b [wireLen]byte
							encodeKnock(b[:], m, alice, pos, p.port, nonceS, from.Addr())
							tok, _ := decodeKnock(b[:])
							why = tr.authKnock(&k, &tok, m, newOutbox(len(tc.doors)))
						} else {
							why = tr.knock(&k, newOutbox(len(tc.doors)))
						}
						if why != dropNone {
							t.Fatalf("attempt %d: knock %d dropped as %v", a, pos, why)
						}
					}
					tr.sweep(start.Add(2 * time.Second).UnixNano())
					if len(tc.knock) == 1 {
						want = append(want, tc.opens...)
					} else {
						want = append(want, tc.opens[a])
					}
				}
				var got []string
				for _, e := range rec.events {
					switch {
					case e.kind == eventUnlock:
						got = append(got, tc.doors[e.door].name)
					case e.kind == eventFail && e.reason == reasonBanned:
						t.Fatalf("the client was banned: %+v", rec.events)
					case e.kind == eventFail && e.rightFor == 0:
						t.Fatalf("a failure of door %s without right_for (fail2ban would count it): %+v", tc.doors[e.door].name, e)
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("opened %v, want %v", got, want)
				}
			})
		}
	}
}

// A knock read before the knock received just before it, on the port of the knock before that
// (2000, 3000, 2000 received; the second 2000 read before the 3000): it is first taken for a copy
// of the first 2000, then put back in its place when the 3000 is read. When the 3000 completed a
// door, every pending knock was settled, and the knock put back was dropped: it was taken for
// the end of a banned client's knocks. So a door that needed it (here 3000, 2000, 1000) did not
// open. Found by FuzzTrackerAgreesWithRules.
func TestTrackerAKnockPutBackOutlivesAnUnlock(t *testing.T) {
	c := testConfig(1)
	c.doors = []door{simDoor("a", 5*time.Second, up(1000), up(2000), up(3000)), simDoor("back", 5*time.Second, up(3000), up(2000), up(1000))}
	tr, rec := newTestTracker(c)
	ip := key("192.0.2.1")
	t0 := time.Unix(1_800_000_000, 0).UnixNano()
	for _, k := range []knock{
		{port: up(1000), ts: t0},
		{port: up(2000), ts: t0 + int64(100*ms)},
		{port: up(2000), ts: t0 + int64(202*ms)}, // read before the 3000 received just before it
		{port: up(3000), ts: t0 + int64(200*ms)}, // opens a
		{port: up(1000), ts: t0 + int64(400*ms)}, // opens back: 3000, 2000, 1000
	} {
		k.from = ip
		if why := feed(tr, k); why != dropNone {
			t.Fatalf("knock %v dropped as %v", k, why)
		}
	}
	tr.sweep(t0 + int64(3*time.Second))
	var got []string
	for _, e := range rec.events {
		if e.kind == eventUnlock {
			got = append(got, c.doors[e.door].name)
		}
	}
	if want := []string{"a", "back"}; !slices.Equal(got, want) {
		t.Fatalf("opened %v, want %v: %+v", got, want, rec.events)
	}
}
