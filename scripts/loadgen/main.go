// Command loadgen knocks a port-knocking server from many loopback source addresses, or counts
// what arrives (a bare UDP sink: the ceiling for any knock server on the same ports).
//
//	loadgen send -ports 40123,40456,40789 -clients 100000 -gap 0
//	loadgen send -ports ... -clients 2000 -gap 2ms -concurrency 16
//	loadgen send -ports ... -clients 200000 -partial     (a flood of first knocks only)
//	loadgen send -ports ... -partial -rate 100000 -duration 10s   (a sustained flood)
//	loadgen send -ports 40456x5,40123,40456,40789 -clients 100   (PORTxK: that knock K times)
//	loadgen send -ports ... -repeat 5                      (every knock 5 times, no gap)
//	loadgen sink -ports ...                               (counts until -idle passes quietly)
//	loadgen bench -knockknock BIN [-knockd BIN] -out DIR   (scripts/bench.sh: all cases, 3 servers)
//	loadgen conns -port 8080 -idle 5000 -slow 200         (holds connections to a TCP service: conns.go)
//
// Client i sends from 127.1.0.1 + i (Linux: IP_PKTINFO picks each datagram's source address on one
// socket, so 100,000 clients need no 100,000 sockets). Both modes print one JSON object.
// With -rate, -duration or -workers, datagrams go out in batches (sendmmsg) from -workers
// sockets, paced to -rate datagrams a second, for -duration (new clients keep coming: after the
// last address of 127.0.0.0/8 it wraps round to -base). Loopback only: the target must be in 127.0.0.0/8.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "send" && os.Args[1] != "sink" && os.Args[1] != "bench" && os.Args[1] != "conns") {
		fmt.Fprintln(os.Stderr, "usage: loadgen send|sink|bench|conns [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	if mode == "bench" {
		benchMain(os.Args[2:])
		return
	}
	if mode == "conns" {
		connsMain(os.Args[2:])
		return
	}
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	portsFlag := fs.String("ports", "40123,40456,40789", "knock sequence")
	host := fs.String("host", "127.0.0.1", "target (loopback only)")
	clients := fs.Int("clients", 1000, "number of distinct clients")
	base := fs.String("base", "127.1.0.1", "first source address")
	gap := fs.Duration("gap", 0, "pause between one client's knocks")
	concurrency := fs.Int("concurrency", 1, "clients knocking at once (with -gap)")
	partial := fs.Bool("partial", false, "send only each client's first knock (a flood)")
	idle := fs.Duration("idle", 2*time.Second, "sink: stop after this long without a datagram")
	repeat := fs.Int("repeat", 1, "send each knock this many times in a row, no gap")
	rate := fs.Int("rate", 0, "datagrams per second, in batches (0: as fast as possible); implies batch mode")
	duration := fs.Duration("duration", 0, "keep sending new clients for this long (batch mode); 0: -clients clients once")
	workers := fs.Int("workers", 0, "batch mode with this many sending sockets at once (default 1)")
	fs.Parse(os.Args[2:])
	ports, err := parsePorts(*portsFlag)
	if err != nil {
		fail(err)
	}
	if mode == "sink" {
		sink(ports, *idle)
		return
	}
	dst, err := netip.ParseAddr(*host)
	if err != nil || !dst.Is4() || !dst.IsLoopback() {
		fail(fmt.Errorf("-host must be an IPv4 loopback address, not %q", *host))
	}
	first, err := netip.ParseAddr(*base)
	if err != nil || !first.Is4() || !first.IsLoopback() {
		fail(fmt.Errorf("-base must be an IPv4 loopback address, not %q", *base))
	}
	if *partial {
		ports = ports[:1]
	}
	if *repeat > 1 {
		var rep []uint16
		for _, p := range ports {
			for range *repeat {
				rep = append(rep, p)
			}
		}
		ports = rep
	}
	if *rate > 0 || *duration > 0 || *workers > 0 {
		report(blast(dst, first, ports, *clients, *rate, *workers, *duration))
		return
	}
	report(send(dst, first, ports, *clients, *concurrency, *gap))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}

// parsePorts reads PORT,PORT,...; PORTxK stands for the port K times in a row.
func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		times := uint64(1)
		if before, after, ok := strings.Cut(f, "x"); ok {
			k, err := strconv.ParseUint(after, 10, 16)
			if err != nil || k == 0 {
				return nil, fmt.Errorf("bad repeat count in %q", f)
			}
			f, times = before, k
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		for range times {
			ports = append(ports, uint16(p))
		}
	}
	return ports, nil
}

// source returns the i-th source address after first, staying inside 127.0.0.0/8.
func source(first netip.Addr, i int) netip.Addr {
	b := first.As4()
	n := binary.BigEndian.Uint32(b[:]) + uint32(i)
	binary.BigEndian.PutUint32(b[:], n)
	if b[0] != 127 {
		fail(fmt.Errorf("too many clients for 127.0.0.0/8 from %v", first))
	}
	return netip.AddrFrom4(b)
}

// pktinfo is the control message that sets a datagram's source address (Linux IP_PKTINFO).
func pktinfo(src netip.Addr) []byte {
	oob := make([]byte, 32)
	binary.NativeEndian.PutUint64(oob[0:], 28) // cmsg_len: header 16 + in_pktinfo 12
	binary.NativeEndian.PutUint32(oob[8:], 0)  // IPPROTO_IP
	binary.NativeEndian.PutUint32(oob[12:], 8) // IP_PKTINFO
	a := src.As4()
	copy(oob[20:24], a[:]) // ipi_spec_dst
	return oob
}

type sendReport struct {
	Mode        string  `json:"mode"`
	Clients     int     `json:"clients"`
	Datagrams   int64   `json:"datagrams"`
	Errors      int64   `json:"errors"`
	Gap         string  `json:"gap"`
	Concurrency int     `json:"concurrency"`
	Start       int64   `json:"start_unix_ns"`
	End         int64   `json:"end_unix_ns"`
	Seconds     float64 `json:"send_seconds"`
}

func send(dst, first netip.Addr, ports []uint16, clients, concurrency int, gap time.Duration) sendReport {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		fail(err)
	}
	conn.SetWriteBuffer(8 << 20)
	var sent, errs atomic.Int64
	knockClient := func(i int, oob []byte) {
		for j, p := range ports {
			if j > 0 && gap > 0 {
				time.Sleep(gap)
			}
			if _, _, err := conn.WriteMsgUDPAddrPort(nil, oob, netip.AddrPortFrom(dst, p)); err != nil {
				errs.Add(1)
				continue
			}
			sent.Add(1)
		}
	}
	start := time.Now()
	if gap == 0 {
		for i := range clients {
			knockClient(i, pktinfo(source(first, i)))
		}
	} else {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range max(concurrency, 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < clients; i = int(next.Add(1) - 1) {
					knockClient(i, pktinfo(source(first, i)))
				}
			}()
		}
		wg.Wait()
	}
	end := time.Now()
	mode := "sequences"
	if len(ports) == 1 {
		mode = "first-knocks"
	}
	return sendReport{Mode: mode, Clients: clients, Datagrams: sent.Load(), Errors: errs.Load(), Gap: gap.String(),
		Concurrency: concurrency, Start: start.UnixNano(), End: end.UnixNano(), Seconds: end.Sub(start).Seconds()}
}

// blastReport is what batch mode sends.
type blastReport struct {
	sendReport
	Rate     int     `json:"rate_asked"`
	Achieved float64 `json:"datagrams_per_second"`
	Duration string  `json:"duration"`
	Sources  int64   `json:"sources"`
}

// blast sends every client's ports back to back, in batches (sendmmsg), from workers sockets
// at once, paced to rate datagrams a second in all (0: as fast as they go): clients clients
// once, or with duration > 0, new clients until duration has passed.
func blast(dst, first netip.Addr, ports []uint16, clients, rate, workers int, duration time.Duration) blastReport {
	workers = max(workers, 1)
	span := addressesFrom(first)
	addrs := make([]*net.UDPAddr, len(ports))
	for j, p := range ports {
		addrs[j] = &net.UDPAddr{IP: dst.AsSlice(), Port: int(p)}
	}
	var next, sent, errs, sources atomic.Int64
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for range workers {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		if err != nil {
			fail(err)
		}
		defer conn.Close()
		conn.SetWriteBuffer(8 << 20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			blastWorker(ipv4.NewPacketConn(conn), first, span, addrs, clients, float64(rate)/float64(workers), duration, start, deadline, &next, &sent, &errs, &sources)
		}()
	}
	wg.Wait()
	end := time.Now()
	mode := "sequences"
	if len(ports) == 1 {
		mode = "first-knocks"
	}
	secs := end.Sub(start).Seconds()
	return blastReport{
		sendReport: sendReport{Mode: mode, Clients: int(sources.Load()), Datagrams: sent.Load(), Errors: errs.Load(), Gap: "0s",
			Concurrency: workers, Start: start.UnixNano(), End: end.UnixNano(), Seconds: secs},
		Rate: rate, Achieved: float64(sent.Load()) / secs, Duration: duration.String(), Sources: sources.Load(),
	}
}

func blastWorker(pc *ipv4.PacketConn, first netip.Addr, span int64, addrs []*net.UDPAddr, clients int, rate float64,
	duration time.Duration, start, deadline time.Time, next, sent, errs, sources *atomic.Int64) {
	const batch = 64
	msgs := make([]ipv4.Message, 0, batch)
	oobs := make([][]byte, batch)
	for i := range oobs {
		oobs[i] = make([]byte, 32)
	}
	var mine int64 // datagrams this worker sent: its own pace
	flush := func() {
		for off := 0; off < len(msgs); {
			n, err := pc.WriteBatch(msgs[off:], 0)
			if err != nil {
				if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
					time.Sleep(50 * time.Microsecond)
					continue
				}
				errs.Add(int64(len(msgs) - off))
				break
			}
			off += n
			mine += int64(n)
			sent.Add(int64(n))
		}
		msgs = msgs[:0]
	}
	for {
		client := next.Add(1) - 1
		if duration > 0 && time.Now().After(deadline) || duration == 0 && client >= int64(clients) {
			break
		}
		src := source(first, int(client%span))
		for j := range addrs {
			if len(msgs) == batch {
				flush()
			}
			oob := oobs[len(msgs)]
			copy(oob, pktinfo(src))
			msgs = append(msgs, ipv4.Message{Buffers: [][]byte{{}}, OOB: oob, Addr: addrs[j]})
		}
		sources.Add(1)
		if len(msgs) > batch-len(addrs) {
			flush()
		}
		if rate > 0 { // pace: what is sent may not run ahead of the clock
			due := start.Add(time.Duration(float64(mine+int64(len(msgs))) * float64(time.Second) / rate))
			if d := time.Until(due); d > time.Millisecond {
				flush()
				time.Sleep(d)
			}
		}
	}
	flush()
}

// addressesFrom is how many addresses 127.0.0.0/8 has from first on (127.255.255.255 excluded).
func addressesFrom(first netip.Addr) int64 {
	b := first.As4()
	return max(1, int64(0x7fffffff-binary.BigEndian.Uint32(b[:])))
}

type sinkReport struct {
	Datagrams int64 `json:"datagrams"`
	First     int64 `json:"first_unix_ns"`
	Last      int64 `json:"last_unix_ns"`
}

// sink counts datagrams on the ports, one goroutine per port as a knock server would, with the
// same 8 MiB receive buffers, and stops after idle without a datagram.
func sink(ports []uint16, idle time.Duration) {
	var count, first, last atomic.Int64
	for _, p := range ports {
		conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(p)})
		if err != nil {
			fail(err)
		}
		conn.SetReadBuffer(8 << 20)
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := conn.ReadFromUDPAddrPort(buf); err != nil {
					continue
				}
				now := time.Now().UnixNano()
				if count.Add(1) == 1 {
					first.Store(now)
				}
				last.Store(now)
			}
		}()
	}
	fmt.Fprintln(os.Stderr, "sink: listening")
	for {
		time.Sleep(100 * time.Millisecond)
		if l := last.Load(); l != 0 && time.Since(time.Unix(0, l)) > idle {
			break
		}
	}
	report(sinkReport{Datagrams: count.Load(), First: first.Load(), Last: last.Load()})
}

func report(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}
