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

	lua "github.com/yuin/gopher-lua"
)

// Benchmarks for the knock path. Targets (issue 4): 0 allocs/op for the tracker and the listener
// loop, and under 200 bytes of memory per tracked client.

func clientKey(i int) addrKey {
	return keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
}

// BenchmarkKnockTracker: one op is one knock; clients complete the sequence in turn.
func BenchmarkKnockTracker(b *testing.B) {
	var unlocks atomic.Int64
	tr := newTracker(testConfig(1000, 2000, 3000), func(e event) {
		if e.kind == eventUnlock {
			unlocks.Add(1)
		}
	})
	const clients = 4096
	seq := []uint16{1000, 2000, 3000}
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := (i / 3) % clients
		tr.knock(knock{from: clientKey(c), port: seq[i%3], ts: now + int64(i)})
	}
	b.StopTimer()
	if want := int64(b.N / 3); unlocks.Load() != want {
		b.Fatalf("%d unlocks, want %d", unlocks.Load(), want)
	}
}

// BenchmarkKnockTrackerParallel: the same from as many goroutines as GOMAXPROCS.
func BenchmarkKnockTrackerParallel(b *testing.B) {
	tr := newTracker(testConfig(1000, 2000, 3000), func(event) {})
	seq := []uint16{1000, 2000, 3000}
	var worker atomic.Int32
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		base := int(worker.Add(1)) << 16
		for i := 0; pb.Next(); i++ {
			tr.knock(knock{from: clientKey(base + (i/3)%4096), port: seq[i%3], ts: now + int64(i)})
		}
	})
}

// BenchmarkKnockListener: one op is one datagram through a real loopback socket, the listener's
// read loop, the tracker and the hook queue (a one-port sequence, so every datagram unlocks).
func BenchmarkKnockListener(b *testing.B) {
	port := uint16(0)
	probe, _ := net.ListenUDP("udp", &net.UDPAddr{})
	port = uint16(probe.LocalAddr().(*net.UDPAddr).Port)
	probe.Close()
	c := testConfig(port)
	c.listen = netip.MustParseAddr("127.0.0.1")
	c.hookTimeout = time.Second
	s := &server{cfg: c, log: slog.New(slog.DiscardHandler), services: map[int]*service{}}
	var processed atomic.Int64
	s.tracker = newTracker(c, func(event) { processed.Add(1) })
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

// BenchmarkTrackerMemory reports the heap held per tracked client when the table is full: twice
// as many clients as --max-clients knock, so that every shard is at its limit.
func BenchmarkTrackerMemory(b *testing.B) {
	for _, n := range []int{10000, 65536} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var perClient float64
			for range b.N {
				c := testConfig(1000, 2000, 3000)
				c.maxClients = n
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				tr := newTracker(c, func(event) {})
				now := time.Now().UnixNano()
				for i := range 2 * n {
					tr.knock(knock{from: clientKey(i), port: 1000, ts: now})
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				if tr.clients() != n {
					b.Fatalf("%d clients tracked, want %d", tr.clients(), n)
				}
				perClient = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
				runtime.KeepAlive(tr)
			}
			b.ReportMetric(perClient, "bytes/client")
		})
	}
}

// BenchmarkVerifyToken: the cost of checking an authenticated knock.
func BenchmarkVerifyToken(b *testing.B) {
	secret := []byte("benchmark-secret-0123456789abcdef")
	c := testConfig(1000, 2000, 3000)
	c.secret, c.maxSkew = secret, 30*time.Second
	a := newAuthenticator(c)
	a.replay.limit = 1 << 30
	m := newTokenMAC(secret)
	client := newTokenMAC(secret)
	tokens := make([][]byte, 1024)
	for i := range tokens {
		tokens[i], _ = appendToken(nil, client, 0, 1000, time.Now())
	}
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok := tokens[i%len(tokens)]
		tok[12] = byte(i >> 8) // a fresh nonce each time (the MAC then fails: the cost measured is
		tok[13] = byte(i)      // the full MAC check, which every datagram pays)
		a.verify(m, tok, 1000, now)
	}
}

// BenchmarkHookUnlock: one unlock through the hook runtime: the log line, the ev table and a
// Lua call to on_unlock (scripts/bench.lua counts it).
func BenchmarkHookUnlock(b *testing.B) {
	src, err := os.ReadFile("scripts/bench.lua")
	if err != nil {
		b.Fatal(err)
	}
	c := testConfig(1000, 2000, 3000)
	c.hookTimeout, c.hookName = time.Second, "scripts/bench.lua"
	proto, err := compileHook(c.hookName, src)
	if err != nil {
		b.Fatal(err)
	}
	s := newServer(c, slog.New(slog.NewJSONHandler(io.Discard, nil)), proto)
	hook, err := s.hooks.load(proto)
	if err != nil {
		b.Fatal(err)
	}
	s.hooks.hook = hook
	e := event{kind: eventUnlock, from: clientKey(7), srcPort: 40000, port: 3000, ts: time.Now().UnixNano(), elapsed: 20e6}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s.hooks.dispatch(&e)
	}
	b.StopTimer()
	if n := hook.L.GetGlobal("unlocks"); n != lua.LNumber(b.N) {
		b.Fatalf("on_unlock counted %v, want %d", n, b.N)
	}
}
