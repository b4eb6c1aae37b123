package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	lua "github.com/yuin/gopher-lua"
)

// Benchmarks for the knock path. Targets: 0 allocs/op for the tracker and the listener loop;
// under 200 bytes of memory per tracked client with one door, and a small, stated amount more
// per door; an authenticated knock within 2 x the old single-key check with 1,000 users.

func clientKey(i int) addrKey {
	return keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
}

// doorsConfig has n doors of three ports each; door 0 is 1000, 2000, 3000.
func doorsConfig(n int) *config {
	c := testConfig()
	c.doors = nil
	for d := range n {
		base := uint16(1000 + 10*d)
		if d == 0 {
			c.doors = append(c.doors, testDoor("d0", 1000, 2000, 3000))
			continue
		}
		c.doors = append(c.doors, testDoor(fmt.Sprintf("d%d", d), base+1, base+2, base+3))
	}
	return c
}

// BenchmarkKnockTracker: one op is one knock; clients complete door 0 in turn.
func BenchmarkKnockTracker(b *testing.B) {
	for _, doors := range []int{1, 8} {
		b.Run(fmt.Sprintf("doors=%d", doors), func(b *testing.B) {
			var unlocks atomic.Int64
			tr := newTracker(doorsConfig(doors), func(es []event) {
				for _, e := range es {
					if e.kind == eventUnlock {
						unlocks.Add(1)
					}
				}
			})
			out := newOutbox(doors)
			const clients = 4096
			seq := udp(1000, 2000, 3000)
			now := time.Now().UnixNano()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := knock{from: clientKey((i / 3) % clients), port: seq[i%3], ts: now + int64(i)}
				tr.knock(&k, out)
			}
			b.StopTimer()
			if want := int64(b.N / 3); unlocks.Load() != want {
				b.Fatalf("%d unlocks, want %d", unlocks.Load(), want)
			}
		})
	}
}

// BenchmarkKnockTrackerParallel: the same from as many goroutines as GOMAXPROCS.
func BenchmarkKnockTrackerParallel(b *testing.B) {
	tr := newTracker(testConfig(1000, 2000, 3000), func([]event) {})
	seq := udp(1000, 2000, 3000)
	var worker atomic.Int32
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		base := int(worker.Add(1)) << 16
		out := newOutbox(1)
		for i := 0; pb.Next(); i++ {
			k := knock{from: clientKey(base + (i/3)%4096), port: seq[i%3], ts: now + int64(i)}
			tr.knock(&k, out)
		}
	})
}

// BenchmarkKnockListener: one op is one datagram through a real loopback socket, the read
// loop, the intake, the tracker and the hook queue (a one-port sequence: every datagram unlocks).
func BenchmarkKnockListener(b *testing.B) {
	port := freePort(b)
	c := testConfig(port)
	c.listen = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	s := &server{cfg: c, log: slog.New(slog.DiscardHandler), services: map[int]*service{}}
	var processed atomic.Int64
	s.tracker = newTracker(c, func(es []event) { processed.Add(int64(len(es))) })
	s.intake = newIntake(c, s.tracker)
	if err := s.openKnockPorts(); err != nil {
		b.Fatal(err)
	}
	defer s.closeKnockPorts()
	conn, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	payload := []byte{}
	const window = 64 // datagrams in flight: well within the receive buffer
	b.ReportAllocs()
	b.ResetTimer()
	wait := func(upTo int64) {
		deadline := time.Now().Add(5 * time.Second)
		for processed.Load() < upTo {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d datagrams processed after 5s", processed.Load(), upTo)
			}
			runtime.Gosched()
		}
	}
	for i := 0; i < b.N; i++ {
		if i >= window {
			wait(int64(i - window))
		}
		if _, err := conn.Write(payload); err != nil {
			b.Fatal(err)
		}
	}
	wait(int64(b.N))
}

// BenchmarkTrackerMemory reports the heap held per client record when the table is full: twice
// as many clients as --max-clients knock twice each, so that every shard is at its limit. The
// compact first-knock table (40 bytes a slot, 6 slots per --max-clients) is made whole at start,
// off the heap, and counted apart.
func BenchmarkTrackerMemory(b *testing.B) {
	for _, doors := range []int{1, 8} {
		for _, n := range []int{10000, 65536} {
			b.Run(fmt.Sprintf("doors=%d/clients=%d", doors, n), func(b *testing.B) {
				var perClient, compact float64
				for range b.N {
					c := doorsConfig(doors)
					c.maxClients = n
					var before, empty, after runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&before)
					tr := newTracker(c, func([]event) {})
					runtime.GC()
					runtime.ReadMemStats(&empty)
					out := newOutbox(doors)
					now := time.Now().UnixNano()
					for i := range 2 * n {
						for _, p := range []uint16{1000, 2000} {
							k := knock{from: clientKey(i), port: up(p), ts: now}
							tr.knock(&k, out)
						}
					}
					runtime.GC()
					runtime.ReadMemStats(&after)
					if tr.clients() != n {
						b.Fatalf("%d clients tracked, want %d", tr.clients(), n)
					}
					var firsts int
					for i := range tr.shards {
						firsts += len(tr.shards[i].firsts)
					}
					// The client table is preallocated too, up to 131,072 clients: count from
					// before the tracker existed. The compact table is off the heap.
					perClient = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
					compact = float64(firsts) * float64(unsafe.Sizeof(firstKnock{})) / float64(n)
					runtime.KeepAlive(tr)
				}
				b.ReportMetric(perClient, "bytes/client")
				b.ReportMetric(compact, "compact-bytes/client")
			})
		}
	}
}

// BenchmarkVerifyToken: the cost of checking an authenticated knock, with 1 and 1,000 user
// keys: the key id lookup, the challenge of the address and the MAC. Each datagram's MAC fails
// (a fresh attacker's token every time), which is the cost every datagram pays.
func BenchmarkVerifyToken(b *testing.B) {
	for _, users := range []int{1, 1000} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			c := testConfig(1000, 2000, 3000)
			c.keys = &keyring{byID: map[[keyIDLen]byte]*userKey{}}
			var keys []*userKey
			for i := range users {
				k := newUserKey(fmt.Sprintf("user%d", i), []byte(fmt.Sprintf("benchmark-secret-%04d-0123456789abcdef", i)))
				c.keys.byID[k.id] = k
				keys = append(keys, k)
			}
			tr := newTracker(c, func([]event) {})
			m := newMACScratch()
			from := netip.MustParseAddrPort("192.0.2.1:40000")
			key := keys[len(keys)-1]
			var reply [wireLen]byte
			var hello [wireLen]byte
			encodeHello(hello[:], m, key, 1000, time.Now().UnixMilli(), make([]byte, nonceLen))
			h, k, _ := decodeHello(hello[:], m, c.keys, 1000)
			if why := tr.hello(from, netip.Addr{}, &h, k, time.Now().UnixNano(), reply[:], m); why != dropNone {
				b.Fatal(why)
			}
			var tok [wireLen]byte
			encodeKnock(tok[:], m, key, 0, 1000, make([]byte, nonceLen), from.Addr())
			in := newIntake(c, tr)
			sc := newScratch(1)
			kn := knock{from: keyOf(from.Addr()), srcPort: from.Port(), port: up(1000), ts: time.Now().UnixNano()}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tok[wireMACAt+i%macLen] = byte(i >> 4) // a token the MAC check refuses
				in.accept(&kn, tok[:], sc)
			}
			b.StopTimer()
			if checked := in.drops[dropBadMAC].Load(); checked < uint64(b.N)*9/10 {
				b.Fatalf("%d of %d tokens reached the MAC check", checked, b.N)
			}
		})
	}
}

// BenchmarkHookUnlock: one unlock through the hook runtime: the log line, the ev table and a
// Lua call to on_unlock: scripts/bench.lua counts unlocks without reading ev (so it gets none),
// the other hook reads a field of it.
func BenchmarkHookUnlock(b *testing.B) {
	counts, err := os.ReadFile("scripts/bench.lua")
	if err != nil {
		b.Fatal(err)
	}
	for _, hc := range []struct{ name, src string }{
		{"ignores-ev", string(counts)},
		{"reads-ev", "unlocks = 0\nfunction on_unlock(ev) unlocks = unlocks + 1; last = ev.ip end\n"},
	} {
		b.Run(hc.name, func(b *testing.B) {
			c := testConfig(1000, 2000, 3000)
			c.hookTimeout, c.hookName = time.Second, "bench.lua"
			proto, err := compileHook(c.hookName, []byte(hc.src))
			if err != nil {
				b.Fatal(err)
			}
			s := newServer(c, slog.New(slog.NewJSONHandler(io.Discard, nil)), proto)
			hook, err := s.hooks.load(proto)
			if err != nil {
				b.Fatal(err)
			}
			s.hooks.hook = hook
			e := event{kind: eventUnlock, from: clientKey(7), srcPort: 40000, port: up(3000), ts: time.Now().UnixNano(), elapsed: 20e6}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s.hooks.dispatch(&e)
			}
			b.StopTimer()
			if n := hook.L.GetGlobal("unlocks"); n != lua.LNumber(b.N) {
				b.Fatalf("on_unlock counted %v, want %d", n, b.N)
			}
		})
	}
}
