// Command loadgen knocks a port-knocking server from many loopback source addresses, or counts
// what arrives (a bare UDP sink: the ceiling for any knock server on the same ports).
//
//	loadgen send -ports 40123,40456,40789 -clients 100000 -gap 0
//	loadgen send -ports ... -clients 2000 -gap 2ms -concurrency 16
//	loadgen send -ports ... -clients 200000 -partial     (a flood of first knocks only)
//	loadgen sink -ports ...                               (counts until -idle passes quietly)
//	loadgen bench -knockknock BIN [-knockd BIN] -out DIR   (scripts/bench.sh: all cases, 3 servers)
//
// Client i sends from 127.1.0.1 + i (Linux: IP_PKTINFO picks each datagram's source address on one
// socket, so 100,000 clients need no 100,000 sockets). Both modes print one JSON object.
// Loopback only: the target must be in 127.0.0.0/8.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "send" && os.Args[1] != "sink" && os.Args[1] != "bench") {
		fmt.Fprintln(os.Stderr, "usage: loadgen send|sink|bench [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	if mode == "bench" {
		benchMain(os.Args[2:])
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
	report(send(dst, first, ports, *clients, *concurrency, *gap))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}

func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		ports = append(ports, uint16(p))
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
