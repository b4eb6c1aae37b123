package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
			var closed []int
			for i, c := range idle {
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
					closed = append(closed, i)
				}
			}
			if len(closed) != 1 || !tc.req && closed[0] != 0 {
				t.Errorf("idle connections closed: %v, want one (the first, if silent)", closed)
			}
		})
	}
}
