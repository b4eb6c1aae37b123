package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math"
	"net/netip"
	"strings"
	"sync"
	"syscall"
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
			// The sequence always expects 9 next, so a duplicate is a new knock, as SPEC says.
			{9, 0, verdictUnlocked, reasonNone}, {9, 1 * ms, verdictUnlocked, reasonNone}}},
		{"two unlocks in a row", []uint16{1, 2}, nil, []knockStep{
			{1, 0, verdictAdvanced, reasonNone}, {2, 1 * ms, verdictUnlocked, reasonNone},
			{1, 2 * ms, verdictAdvanced, reasonNone}, {2, 3 * ms, verdictUnlocked, reasonNone}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rules{seq: tc.seq, decoys: tc.decoys, timeout: int64(5 * time.Second), retransmit: int64(time.Second)}
			var p progress
			base := time.Now().UnixNano()
			for i, s := range tc.steps {
				v, why := r.apply(&p, s.port, base+int64(s.at))
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

func (r *recorder) emit(e event) {
	r.mu.Lock()
	r.events = append(r.events, e)
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

func testConfig(ports ...uint16) *config {
	return &config{ports: ports, timeout: 5 * time.Second, maxClients: 65536, banWindow: time.Minute, banTime: time.Hour}
}

func newTestTracker(c *config) (*tracker, *recorder) {
	rec := &recorder{}
	return newTracker(c, rec.emit), rec
}

func key(s string) addrKey { return keyOf(netip.MustParseAddr(s)) }

func TestTrackerClientsAreIndependent(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	a, b, c := key("127.0.0.2"), key("::1"), key("2001:db8::7")
	// Interleaved: each client's knocks are in order, and b's wrong knock must not reset a or c.
	for i, k := range []knock{
		{from: a, port: 1}, {from: b, port: 1}, {from: c, port: 1},
		{from: a, port: 2}, {from: b, port: 3}, {from: c, port: 2},
		{from: a, port: 3}, {from: b, port: 2}, {from: c, port: 3},
	} {
		k.ts = t0 + int64(i)*int64(ms)
		tr.knock(k)
	}
	if rec.unlocked("127.0.0.2") != 1 || rec.unlocked("2001:db8::7") != 1 || rec.unlocked("::1") != 0 {
		t.Fatalf("unlocks: a=%d b=%d c=%d, want 1 0 1", rec.unlocked("127.0.0.2"), rec.unlocked("::1"), rec.unlocked("2001:db8::7"))
	}
}

func TestTrackerIPv4MappedIsTheSameClient(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2))
	t0 := time.Now().UnixNano()
	tr.knock(knock{from: key("::ffff:127.0.0.1"), port: 1, ts: t0})
	tr.knock(knock{from: key("127.0.0.1"), port: 2, ts: t0 + int64(ms)})
	if rec.unlocked("127.0.0.1") != 1 {
		t.Fatalf("an IPv4-mapped address and its IPv4 form must be one client; events %+v", rec.events)
	}
}

// Knocks sent back to back can be read out of order; the kernel's receive times put them back.
func TestTrackerReordersByReceiveTime(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	a := key("127.1.0.1")
	for _, k := range []knock{{port: 3, ts: t0 + 20}, {port: 1, ts: t0}, {port: 2, ts: t0 + 10}} {
		k.from = a
		tr.knock(k)
	}
	if rec.unlocked("127.1.0.1") != 1 {
		t.Fatalf("a sequence read out of order did not unlock: %+v", rec.events)
	}
	tr.sweep(t0 + int64(time.Second))
	if n := rec.count(eventFail, reasonNone); n != 0 {
		t.Fatalf("a sequence read out of order reported %d failures", n)
	}
}

func TestTrackerFailureSettlesAfterReorderWindow(t *testing.T) {
	tr, rec := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	tr.knock(knock{from: key("127.0.0.9"), port: 2, ts: t0})
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
		tr.knock(knock{from: key("10.0.0.1"), srcPort: 4000 + p, port: p, ts: t0 + int64(i)*int64(100*ms)})
	}
	if len(rec.events) != 1 {
		t.Fatalf("events %+v, want one unlock", rec.events)
	}
	e := rec.events[0]
	if e.kind != eventUnlock || e.port != 3 || e.srcPort != 4003 || e.elapsed != int64(200*ms) || e.ts != t0+int64(200*ms) {
		t.Fatalf("unlock event %+v", e)
	}
}

func TestTrackerForgetsStaleClients(t *testing.T) {
	tr, _ := newTestTracker(testConfig(1, 2, 3))
	t0 := time.Now().UnixNano()
	for i := range 100 {
		tr.knock(knock{from: keyOf(netip.AddrFrom4([4]byte{127, 2, 0, byte(i)})), port: 1, ts: t0})
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

func TestTrackerBoundedByMaxClients(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.maxClients = 1000
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	for i := range 20000 {
		tr.knock(knock{from: keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})), port: 1, ts: t0 + int64(i)})
	}
	if n := tr.clients(); n > 1000 {
		t.Fatalf("tracking %d clients, the cap is 1000", n)
	}
	if tr.evicted.Load() < 19000 {
		t.Fatalf("evicted %d, want at least 19000", tr.evicted.Load())
	}
	legit := key("192.0.2.1")
	for i, p := range []uint16{1, 2, 3} {
		tr.knock(knock{from: legit, port: p, ts: t0 + int64(time.Second) + int64(i)})
	}
	if rec.unlocked("192.0.2.1") != 1 {
		t.Fatal("a legitimate client did not unlock right after the flood")
	}
}

func TestTrackerBans(t *testing.T) {
	c := testConfig(1, 2, 3)
	c.banAfter, c.banTime = 2, 10*time.Second
	tr, rec := newTestTracker(c)
	t0 := time.Now().UnixNano()
	at := func(d time.Duration) int64 { return t0 + int64(d) }
	ip := key("198.51.100.4")
	tr.knock(knock{from: ip, port: 2, ts: at(0)})
	tr.knock(knock{from: ip, port: 3, ts: at(2 * time.Second)})
	tr.sweep(at(2*time.Second) + reorderWindow + 1)
	if n := rec.count(eventFail, reasonBanned); n != 1 {
		t.Fatalf("got %d bans after 2 failures, want 1: %+v", n, rec.events)
	}
	for i, p := range []uint16{1, 2, 3} {
		tr.knock(knock{from: ip, port: p, ts: at(4*time.Second + time.Duration(i))})
	}
	if rec.unlocked("198.51.100.4") != 0 {
		t.Fatal("a banned client unlocked")
	}
	for i, p := range []uint16{1, 2, 3} {
		tr.knock(knock{from: ip, port: p, ts: at(13*time.Second + time.Duration(i))})
	}
	if rec.unlocked("198.51.100.4") != 1 {
		t.Fatal("the client did not unlock after its ban ended")
	}
	if rec.unlocked("198.51.100.5") != 0 {
		t.Fatal("impossible")
	}
}

func TestParsePortList(t *testing.T) {
	cases := []struct {
		in   string
		want string // formatted ports, or "error: substring"
	}{
		{"123,456,789", "123,456,789"},
		{" 1 , 65535 ", "1,65535"},
		{"7,7,8", "7,7,8"},
		{"", ""},
		{"0", "error: out of range"},
		{"65536", "error: out of range"},
		{"70000", "error: out of range"},
		{"abc", "error: not a port number"},
		{"-1", "error: not a port number"},
		{"+5", "error: not a port number"},
		{"1,,2", "error: empty item"},
		{"1,", "error: empty item"},
		{"99999999999999999999", "error: out of range"},
		{"0x10", "error: not a port number"},
	}
	for _, tc := range cases {
		got, err := parsePortList(tc.in)
		if strings.HasPrefix(tc.want, "error: ") {
			if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
				t.Errorf("parsePortList(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.want)
			}
			continue
		}
		if err != nil || formatPorts(got) != tc.want {
			t.Errorf("parsePortList(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
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
		if got := scanWarning(tc.seq, tc.decoys) != ""; got != tc.warn {
			t.Errorf("scanWarning(%v, decoys %v) warns %v, want %v", tc.seq, tc.decoys, got, tc.warn)
		}
	}
}

func TestTokens(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	c := testConfig(1000, 2000, 1000)
	c.secret, c.maxSkew = secret, 30*time.Second
	a := newAuthenticator(c)
	client, srv := newTokenMAC(secret), newTokenMAC(secret)
	now := time.Now()
	tok, err := appendToken(nil, client, 2, 1000, now)
	if err != nil || len(tok) != tokenLen {
		t.Fatalf("token %x, %v", tok, err)
	}
	if !a.verify(srv, tok, 1000, now.UnixNano()) {
		t.Fatal("a fresh token was refused")
	}
	if a.verify(srv, tok, 1000, now.UnixNano()) {
		t.Fatal("a replayed token was accepted")
	}
	mustRefuse := func(name string, tok []byte, port uint16, at time.Time) {
		t.Helper()
		if a.verify(srv, tok, port, at.UnixNano()) {
			t.Errorf("%s: accepted", name)
		}
	}
	fresh := func(pos int, port uint16, at time.Time) []byte {
		tok, _ := appendToken(nil, client, pos, port, at)
		return tok
	}
	mustRefuse("wrong port", fresh(0, 1000, now), 2000, now)
	mustRefuse("position does not match the port", fresh(1, 1000, now), 1000, now)
	mustRefuse("position past the end", fresh(3, 1000, now), 1000, now)
	mustRefuse("too old", fresh(0, 1000, now.Add(-31*time.Second)), 1000, now)
	mustRefuse("too new", fresh(0, 1000, now.Add(31*time.Second)), 1000, now)
	other, _ := appendToken(nil, newTokenMAC([]byte("another secret, 32 bytes long!!!")), 0, 1000, now)
	mustRefuse("another secret", other, 1000, now)
	for i := range tokenLen {
		tok := fresh(0, 1000, now)
		tok[i] ^= 0x40
		mustRefuse("tampered byte "+string(rune('0'+i%10)), tok, 1000, now)
	}
	mustRefuse("truncated", fresh(0, 1000, now)[:tokenLen-1], 1000, now)
	mustRefuse("extended", append(fresh(0, 1000, now), 0), 1000, now)
	mustRefuse("empty", nil, 1000, now)
	if !a.verify(srv, fresh(0, 1000, now.Add(-29*time.Second)), 1000, now.UnixNano()) {
		t.Error("a token within the skew was refused")
	}
}

func TestReplayCacheRemembersForTheWholeValidity(t *testing.T) {
	span := 60 * time.Second
	r := newReplayCache(span, 10)
	t0 := int64(1e18)
	n := [16]byte{1}
	if !r.firstSeen(n, t0) {
		t.Fatal("first sighting refused")
	}
	for _, d := range []time.Duration{time.Second, 59 * time.Second, 61 * time.Second, 119 * time.Second} {
		if r.firstSeen(n, t0+int64(d)) {
			t.Fatalf("nonce forgotten after %v (a token is valid for %v)", d, span)
		}
	}
	for i := range 20 {
		r.firstSeen([16]byte{2, byte(i)}, t0+int64(119*time.Second))
	}
	if len(r.cur) > 10 || len(r.old) > 10 {
		t.Fatalf("cache grew past its limit: %d + %d", len(r.cur), len(r.old))
	}
}

func TestReceiveTime(t *testing.T) {
	if timestampOption == 0 {
		t.Skip("no kernel receive timestamps on this platform")
	}
	oob := make([]byte, 32)
	ne := binary.NativeEndian
	ne.PutUint64(oob[0:], 32)
	ne.PutUint32(oob[8:], syscall.SOL_SOCKET)
	ne.PutUint32(oob[12:], uint32(timestampOption))
	ne.PutUint64(oob[16:], 1700000000)
	ne.PutUint64(oob[24:], 123)
	if got := receiveTime(oob); got != 1700000000*int64(time.Second)+123 {
		t.Fatalf("receiveTime = %d", got)
	}
	now := time.Now().UnixNano()
	if got := receiveTime(oob[:20]); got < now {
		t.Fatalf("truncated control data should fall back to the time now, got %d", got)
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

// The test vector in README, so that other clients can check themselves against it.
func TestTokenTestVector(t *testing.T) {
	secret := []byte("knockknock-test-vector-secret")
	want, _ := hex.DecodeString("4b4b01000000018bcfe56800000102030405060708090a0b0c0d0e0f" +
		"2067c6ef15a185d3b3a16e634ad838d5c3e2097895b2d4a20eebf32c303058fa")
	m := newTokenMAC(secret)
	if got := m.compute(want[:tokenMACAt], 7000); !bytes.Equal(got, want[tokenMACAt:]) {
		t.Fatalf("MAC %x, want %x", got, want[tokenMACAt:])
	}
	c := testConfig(7000, 9000)
	c.secret, c.maxSkew = secret, 30*time.Second
	if !newAuthenticator(c).verify(m, want, 7000, time.UnixMilli(1700000000000).UnixNano()) {
		t.Fatal("the test vector is refused")
	}
	f, ok := parseToken(want)
	if !ok || f.pos != 0 || f.milli != 1700000000000 || f.nonce != [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} {
		t.Fatalf("parsed %+v", f)
	}
}
