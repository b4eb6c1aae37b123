package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serviceSetting is one of the settings knock.serve takes on a port: a proto, and whether only
// granted clients get through.
type serviceSetting struct {
	proto   string
	clients bool
}

func (v serviceSetting) lua(port uint16) string {
	if v.clients {
		return fmt.Sprintf(`{port=%d, proto=%q, allow="clients"}`, port, v.proto)
	}
	return fmt.Sprintf(`{port=%d, proto=%q}`, port, v.proto)
}

func (v serviceSetting) String() string {
	if v.clients {
		return v.proto + "+clients"
	}
	return v.proto
}

var serviceSettings = []serviceSetting{
	{"tcp", false}, {"udp", false}, {"both", false},
	{"tcp", true}, {"udp", true}, {"both", true},
}

// getFrom sends one HTTP GET to the service from host (127.0.0.1 or ::1).
func getFrom(host string, port uint16) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + net.JoinHostPort(host, fmt.Sprint(port)) + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// askFrom sends one datagram to the service from host and returns the reply, "" for none.
func askFrom(t *testing.T, host string, port uint16, wait time.Duration) string {
	t.Helper()
	conn, err := net.Dial("udp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("hello"))
	conn.SetReadDeadline(time.Now().Add(wait))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return line
}

// checkServes checks that the service on port does what v says, over real sockets: 127.0.0.1 is
// granted, ::1 is not.
func checkServes(t *testing.T, port uint16, v serviceSetting) {
	t.Helper()
	if v.proto == "udp" {
		if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%v: TCP connect: %v, want refused", v, err)
		}
	} else {
		if body, err := getFrom("127.0.0.1", port); err != nil || body != "Hello 127.0.0.1: you knocked the right way, the door is open.\n" {
			t.Errorf("%v: GET from 127.0.0.1: %q, %v", v, body, err)
		}
		body, err := getFrom("::1", port)
		if v.clients && err == nil {
			t.Errorf("%v: GET from ::1, not granted, got through: %q", v, body)
		}
		if !v.clients && (err != nil || body != "Hello ::1: you knocked the right way, the door is open.\n") {
			t.Errorf("%v: GET from ::1: %q, %v", v, body, err)
		}
	}
	if v.proto == "tcp" {
		if reply := askFrom(t, "127.0.0.1", port, 300*time.Millisecond); reply != "" {
			t.Errorf("%v: UDP answered: %q", v, reply)
		}
	} else {
		if reply := askFrom(t, "127.0.0.1", port, 2*time.Second); reply != "Hello 127.0.0.1: you knocked the right way, the door is open.\n" {
			t.Errorf("%v: UDP reply to 127.0.0.1: %q", v, reply)
		}
		reply := askFrom(t, "::1", port, 300*time.Millisecond)
		if v.clients && reply != "" {
			t.Errorf("%v: UDP answered ::1, not granted: %q", v, reply)
		}
		if !v.clients && reply != "Hello ::1: you knocked the right way, the door is open.\n" {
			t.Errorf("%v: UDP reply to ::1: %q", v, reply)
		}
	}
}

// knock.serve on a port it serves already applies any new proto and allow mode: every change
// between tcp, udp and both, with and without allow="clients", made at once after the first
// serve and again once the service has served, and checked over real sockets each time.
func TestServeChangesEverySetting(t *testing.T) {
	for _, from := range serviceSettings {
		for _, to := range serviceSettings {
			if from == to {
				continue
			}
			t.Run(from.String()+"_to_"+to.String(), func(t *testing.T) {
				t.Parallel()
				port := freePort(t)
				s := mustLuaServer(t, unlockStub, nil)
				call(t, s, `knock.allow("127.0.0.1", 60)`)
				call(t, s, fmt.Sprintf(`ok1, err1 = knock.serve%s; ok2, err2 = knock.serve%s`, from.lua(port), to.lua(port)))
				if s.global("ok1").String() != "true" || s.global("ok2").String() != "true" {
					t.Fatalf("knock.serve returned %v, %v then %v, %v\n%s", s.global("ok1"), s.global("err1"), s.global("ok2"), s.global("err2"), s.logs)
				}
				checkServes(t, port, to)
				call(t, s, fmt.Sprintf(`ok3, err3 = knock.serve%s`, from.lua(port)))
				if s.global("ok3").String() != "true" {
					t.Fatalf("knock.serve back to %v returned %v, %v\n%s", from, s.global("ok3"), s.global("err3"), s.logs)
				}
				checkServes(t, port, from)
				if strings.Contains(s.logs.String(), "level=ERROR") {
					t.Errorf("errors logged:\n%s", s.logs)
				}
			})
		}
	}
}

// A source prefix's connection limit behaves like the total: a newcomer from a full prefix takes
// the place of that prefix's longest-idle connection, so that idle connections from one address
// (a NAT, say) cannot lock out the rest of it. Idle there is between requests, or silent from
// the start: a newcomer right after 8 silent connections is served.
func TestServicePerPrefixLimitMakesRoom(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  bool // make one keep-alive request, then stay silent
	}{{"silent", false}, {"kept alive", true}} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			s := mustLuaServer(t, unlockStub+fmt.Sprintf(`assert(knock.serve{port=%d, proto="tcp"})`, port), nil)
			var idle []net.Conn
			for range serviceMaxPerClient {
				conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if tc.req {
					fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
					resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
					if err != nil {
						t.Fatal(err)
					}
					io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				idle = append(idle, conn)
			}
			// The server accepts in order: these 8 before the GET's connection.
			if body, err := getFrom("127.0.0.1", port); err != nil || body != "Hello 127.0.0.1: you knocked the right way, the door is open.\n" {
				t.Fatalf("GET from 127.0.0.1 beside %d idle connections from it: %q, %v\n%s", serviceMaxPerClient, body, err, s.logs)
			}
			// One made room: the longest-idle, which for silent ones is the first accepted (a
			// kept-alive one is idle from when the server has sent its response, an order the
			// client does not see); the others are still open.
			// The server closes it aside, a moment later: wait for a close, then look at the rest.
			var closed []int
			isClosed := func(c net.Conn, wait time.Duration) bool {
				c.SetReadDeadline(time.Now().Add(wait))
				_, err := c.Read(make([]byte, 1))
				return !errors.Is(err, os.ErrDeadlineExceeded)
			}
			for deadline := time.Now().Add(5 * time.Second); len(closed) == 0 && time.Now().Before(deadline); {
				for i, c := range idle {
					if isClosed(c, 10*time.Millisecond) {
						closed = append(closed, i)
					}
				}
			}
			for i, c := range idle {
				if !slices.Contains(closed, i) && isClosed(c, 200*time.Millisecond) {
					closed = append(closed, i)
				}
			}
			if len(closed) != 1 || !tc.req && closed[0] != 0 {
				t.Errorf("idle connections closed: %v, want one (the first, if silent)", closed)
			}
		})
	}
}

// A client still sending its request's headers is not the one that makes room while silent
// connections from its prefix are there: 8 silent connections after it take turns, and it is
// served when it finishes.
func TestServicePerPrefixLimitSparesARequestUnderWay(t *testing.T) {
	port := freePort(t)
	s := mustLuaServer(t, unlockStub+fmt.Sprintf(`assert(knock.serve{port=%d, proto="tcp"})`, port), nil)
	slow, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET / HTTP/1.1\r\nHost: x\r\n")
	// Read by the server (accepted, and nothing left unread on its side): the request is under way.
	from := uint16(slow.LocalAddr().(*net.TCPAddr).Port)
	waitFor(t, "the server to read the request's start", func() bool {
		for _, c := range procSockets("tcp") {
			if c.local == port && c.remote == from {
				return c.queued == 0
			}
		}
		return false
	})
	for range serviceMaxPerClient + 4 {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(slow, "\r\n")
	slow.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil {
		t.Fatalf("the request under way was closed by silent connections from its prefix: %v\n%s", err, s.logs)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// grantKey is the i-th of many distinct client addresses.
func grantKey(i int) addrKey {
	return keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
}

// The grants table holds at most maxGrants: past that, the grant ending soonest ends now (the
// new one, if it would), so the table keeps the grants that end last, and each is counted.
func TestGrantsTableIsCapped(t *testing.T) {
	var a allowList
	a.grants.pos = map[addrKey]int{}
	now := time.Now().UnixNano()
	const n = maxGrants + 1000
	rng := rand.New(rand.NewPCG(1, 2))
	until := make([]int64, n)
	for i := range n {
		until[i] = now + int64(time.Minute) + rng.Int64N(int64(time.Hour))
		a.add(grantKey(i), until[i], now)
		if l := a.grants.Len(); l > maxGrants || l != len(a.grants.pos) {
			t.Fatalf("after %d grants: %d in the heap, %d in its index", i+1, l, len(a.grants.pos))
		}
	}
	if l := a.grants.Len(); l != maxGrants {
		t.Fatalf("%d grants kept, want %d", l, maxGrants)
	}
	if e := a.evicted.Load(); e != 1000 {
		t.Fatalf("%d grants counted as ended early, want 1000", e)
	}
	// Kept: exactly the maxGrants that end last.
	sorted := slices.Clone(until)
	slices.Sort(sorted)
	cut := sorted[n-maxGrants] // the soonest deadline kept
	for i := range n {
		if kept, want := a.allowed(grantKey(i), now), until[i] >= cut; kept != want {
			t.Fatalf("grant %d ending %v after the first: kept %v, want %v", i, time.Duration(until[i]-sorted[0]), kept, want)
		}
	}
	// A renewal replaces a grant: nothing grows, nothing is counted.
	a.add(grantKey(n-1), now+int64(2*time.Hour), now)
	if a.grants.Len() != maxGrants || a.evicted.Load() != 1000 || !a.allowed(grantKey(n-1), now) {
		t.Fatalf("a renewal: %d grants, %d ended early", a.grants.Len(), a.evicted.Load())
	}
	// Expired grants make room first, without counting; revoked ones are gone at once.
	later := now + int64(time.Minute) + int64(30*time.Minute)
	a.add(grantKey(n), later+int64(time.Hour), later)
	if a.evicted.Load() != 1000 || a.grants.Len() >= maxGrants || !a.allowed(grantKey(n), later) {
		t.Fatalf("after the earliest expired: %d grants, %d ended early", a.grants.Len(), a.evicted.Load())
	}
	a.revoke(grantKey(n))
	if a.allowed(grantKey(n), later) {
		t.Fatal("a revoked grant still allows")
	}
	a.sweep(now + int64(3*time.Hour))
	if a.grants.Len() != 0 || len(a.grants.pos) != 0 {
		t.Fatalf("%d grants (%d indexed) left after every deadline passed", a.grants.Len(), len(a.grants.pos))
	}
}

// A hook that fills the grants table through knock.allow: the grants ended early are logged, at
// most once a second, with their count.
func TestGrantsTableFullIsLogged(t *testing.T) {
	s := mustLuaServer(t, unlockStub, func(c *config) { c.hookTimeout = time.Minute }) // -race is slow
	call(t, s, fmt.Sprintf(`for i = 0, %d do knock.allow(string.format("10.%%d.%%d.%%d", math.floor(i / 65536), math.floor(i / 256) %% 256, i %% 256), 3600) end`, maxGrants+99))
	stop := make(chan struct{})
	defer close(stop)
	go s.janitor(stop)
	waitFor(t, "the log line", func() bool { return strings.Contains(s.logs.String(), "grants table full") })
	line := logLines(s.logs.String(), "grants table full")
	want := fmt.Sprintf(`level=WARN msg="grants table full: the grant ending soonest ended early" event=overload ended=100 max_grants=%d`, maxGrants)
	if len(line) != 1 || !strings.HasSuffix(line[0], want) {
		t.Fatalf("log: %q, want one line ending %q", line, want)
	}
	if !s.allow.allowed(key(fmt.Sprintf("10.1.0.%d", maxGrants+99-65536)), time.Now().UnixNano()) {
		t.Fatal("the newest grant is not in the table")
	}
}
