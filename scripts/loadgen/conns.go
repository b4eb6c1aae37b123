package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// connsMain is `loadgen conns`: a connection flood against an HTTP service on loopback (the
// built-in service of knock.serve). From -per connections per source address (127.x.y.z from
// -base), it opens -idle idle connections (half send one keep-alive request and then nothing,
// half never send a byte) and -slow slow-body POSTs (headers announcing a body, then a byte a
// second; spread among the others), holds them for -hold (with -refill, dialling again every
// connection the server closed, as a persistent attacker would), and at each -at time reports how
// many the server still keeps open, how many it holds at its end (/proc/net/tcp), and whether a
// normal client from -probe is served. Then it closes everything and probes once more. It prints
// one JSON object.
func connsMain(args []string) {
	fs := flag.NewFlagSet("conns", flag.ExitOnError)
	port := fs.Int("port", 8080, "the service's TCP port on -host")
	host := fs.String("host", "127.0.0.1", "target (loopback only)")
	idle := fs.Int("idle", 5000, "idle connections")
	slow := fs.Int("slow", 200, "slow-body POST connections")
	per := fs.Int("per", 8, "connections per source address")
	base := fs.String("base", "127.7.0.1", "first source address")
	probe := fs.String("probe", "127.0.0.1", "the normal client's address")
	hold := fs.Duration("hold", 12*time.Second, "how long to hold the connections")
	at := fs.String("at", "1s,6s,11s", "when to sample, from the moment all are open")
	refill := fs.Bool("refill", false, "dial again, every 500ms, the connections the server closed")
	fs.Parse(args)
	dst, err := netip.ParseAddr(*host)
	if err != nil || !dst.Is4() || !dst.IsLoopback() {
		fail(fmt.Errorf("-host must be an IPv4 loopback address, not %q", *host))
	}
	first, err := netip.ParseAddr(*base)
	if err != nil || !first.Is4() || !first.IsLoopback() {
		fail(fmt.Errorf("-base must be an IPv4 loopback address, not %q", *base))
	}
	probeAddr, err := netip.ParseAddr(*probe)
	if err != nil || !probeAddr.Is4() || !probeAddr.IsLoopback() {
		fail(fmt.Errorf("-probe must be an IPv4 loopback address, not %q", *probe))
	}
	var samples []time.Duration
	for _, f := range strings.Split(*at, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			fail(fmt.Errorf("-at: %v", err))
		}
		samples = append(samples, d)
	}
	target := netip.AddrPortFrom(dst, uint16(*port))

	kinds := []string{"keepalive", "silent", "slow"}
	total := *idle + *slow
	every := total + 1 // one connection in every is a slow POST
	if *slow > 0 {
		every = max(1, total / *slow)
	}
	kindOf := func(i int) int {
		if i%every == every-1 && i/every < *slow {
			return 2
		}
		return i % 2
	}
	conn := make([]net.Conn, total) // nil: closed by the server, or never opened
	var mu sync.Mutex
	var dialErrs, redials atomic.Int64
	// open dials connection i; it reports whether the server took it.
	open := func(i int) bool {
		c, err := connsDial(source(first, i / *per), target)
		if err != nil {
			dialErrs.Add(1)
			return false
		}
		switch kindOf(i) {
		case 0:
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		case 2:
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nx")
		}
		mu.Lock()
		conn[i] = c
		mu.Unlock()
		return true
	}
	dialAll := func(which []int) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := int(next.Add(1) - 1); j < len(which); j = int(next.Add(1) - 1) {
					open(which[j])
				}
			}()
		}
		wg.Wait()
	}
	all := make([]int, total)
	for i := range all {
		all[i] = i
	}
	start := time.Now()
	dialAll(all)
	opened := time.Now()
	// closedOnes finds the connections the server has closed, and forgets them.
	closedOnes := func() []int {
		var closed []int
		mu.Lock()
		defer mu.Unlock()
		for i, c := range conn {
			if c == nil || !connsAlive(c) {
				if c != nil {
					c.Close()
					conn[i] = nil
				}
				closed = append(closed, i)
			}
		}
		return closed
	}
	stopTrickle := make(chan struct{})
	go func() { // the slow bodies: a byte a second on every slow connection
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopTrickle:
				return
			case <-tick.C:
				mu.Lock()
				for i, c := range conn {
					if c != nil && kindOf(i) == 2 {
						c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
						c.Write([]byte("x"))
					}
				}
				mu.Unlock()
			}
		}
	}()
	if *refill {
		go func() {
			for {
				select {
				case <-stopTrickle:
					return
				case <-time.After(500 * time.Millisecond):
				}
				closed := closedOnes()
				redials.Add(int64(len(closed)))
				dialAll(closed)
			}
		}()
	}
	type sample struct {
		At         string         `json:"at"`
		Open       map[string]int `json:"open"`
		ServerSide int            `json:"server_established"`
		Probe      string         `json:"probe"`
	}
	var out []sample
	for _, d := range samples {
		if d > *hold {
			break
		}
		time.Sleep(time.Until(opened.Add(d)))
		s := sample{At: d.String(), Open: map[string]int{}}
		mu.Lock()
		for i, c := range conn {
			if c != nil && connsAlive(c) {
				s.Open[kinds[kindOf(i)]]++
			}
		}
		mu.Unlock()
		s.ServerSide = connsEstablished(uint16(*port))
		s.Probe = connsProbe(probeAddr, target)
		out = append(out, s)
	}
	time.Sleep(time.Until(opened.Add(*hold)))
	close(stopTrickle)
	mu.Lock()
	for _, c := range conn {
		if c != nil {
			c.Close()
		}
	}
	mu.Unlock()
	after := "refused"
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if after = connsProbe(probeAddr, target); after == "served" {
			break
		}
	}
	report(struct {
		Idle       int      `json:"idle"`
		Slow       int      `json:"slow"`
		Sources    int      `json:"sources"`
		DialErrors int64    `json:"dial_errors"`
		Redials    int64    `json:"redials"`
		OpenSecs   float64  `json:"open_seconds"`
		Samples    []sample `json:"samples"`
		After      string   `json:"probe_after"`
	}{*idle, *slow, (total + *per - 1) / *per, dialErrs.Load(), redials.Load(), opened.Sub(start).Seconds(), out, after})
}

func connsDial(src netip.Addr, to netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	return d.Dial("tcp", to.String())
}

// connsAlive reads what the server sent without waiting: an end of file or a reset means that
// the server closed the connection.
func connsAlive(c net.Conn) bool {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	rc.Read(func(fd uintptr) bool {
		var buf [4096]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			switch {
			case errors.Is(err, syscall.EAGAIN):
				alive = true
				return true
			case err != nil || n == 0:
				return true
			}
		}
	})
	return alive
}

// connsProbe is a normal client: one GET on a fresh connection.
func connsProbe(src netip.Addr, to netip.AddrPort) string {
	c, err := connsDial(src, to)
	if err != nil {
		return "refused: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	b, err := io.ReadAll(c)
	switch {
	case strings.HasPrefix(string(b), "HTTP/1.1 200"):
		return "served"
	case len(b) > 0:
		return "answered " + strconv.Quote(string(b[:min(len(b), 40)]))
	case err != nil:
		return "refused: " + err.Error()
	}
	return "closed without an answer"
}

// connsEstablished counts the established TCP connections whose local port is port.
func connsEstablished(port uint16) int {
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(file)
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) < 4 || f[3] != "01" {
				continue
			}
			if _, hexPort, ok := strings.Cut(f[1], ":"); ok {
				if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && uint16(p) == port {
					n++
				}
			}
		}
	}
	return n
}
