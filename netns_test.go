package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The firewall hooks, for real: two network namespaces joined by a veth pair, addresses from the
// documentation ranges, nothing leaves them. knockknock and a TCP service run in "srv"; a client
// in "cli" connects before the knock (refused by the firewall), after it (allowed), and after
// the access time (refused again). After SIGTERM no rule of the hook's is left.

const (
	srvV4, cliV4 = "192.0.2.1", "192.0.2.2"
	srvV6, cliV6 = "2001:db8::1", "2001:db8::2"
	protected    = 2222
)

type netnsPair struct{ srv, cli string }

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: %s is not installed", tool)
		}
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newNetnsPair(t *testing.T) netnsPair {
	t.Helper()
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	n := netnsPair{srv: "kk-srv-" + id, cli: "kk-cli-" + id}
	exec.Command("ip", "netns", "del", n.srv).Run()
	exec.Command("ip", "netns", "del", n.cli).Run()
	sh(t, "ip", "netns", "add", n.srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.srv).Run() })
	sh(t, "ip", "netns", "add", n.cli)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.cli).Run() })
	vs, vc := "kks"+id, "kkc"+id
	sh(t, "ip", "link", "add", vs, "netns", n.srv, "type", "veth", "peer", "name", vc, "netns", n.cli)
	for _, side := range []struct{ ns, dev, v4, v6 string }{{n.srv, vs, srvV4, srvV6}, {n.cli, vc, cliV4, cliV6}} {
		sh(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
		sh(t, "ip", "-n", side.ns, "addr", "add", side.v4+"/24", "dev", side.dev)
		sh(t, "ip", "-n", side.ns, "-6", "addr", "add", side.v6+"/64", "dev", side.dev, "nodad")
		sh(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
	}
	return n
}

// in runs a command in a namespace.
func (n netnsPair) in(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// connects reports whether a TCP connection from the client namespace to addr gets an answer.
func (n netnsPair) connects(t *testing.T, addr string) bool {
	t.Helper()
	host := addr
	if strings.Contains(addr, ":") {
		host = "[" + addr + "]"
	}
	cmd := n.in(n.cli, "curl", "-s", "--max-time", "1", fmt.Sprintf("http://%s:%d/", host, protected))
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "Hello")
}

// testFirewallHook runs the scenario; grants counts the rules or set elements that admit the
// IPv4 client, and leftover lists what of the hook's is left in the ruleset.
func testFirewallHook(t *testing.T, hook string, grants func(n netnsPair) int, leftover func(n netnsPair) string) {
	n := newNetnsPair(t)
	// The protected service: knockknock's own HTTP service, started by a tiny hook.
	svcHook := t.TempDir() + "/service.lua"
	os.WriteFile(svcHook, []byte(fmt.Sprintf("function on_unlock(ev) end\nfunction on_start() assert(knock.serve{port=%d, proto=\"tcp\"}) end\n", protected)), 0o644)
	startIn(t, n.in(n.srv, binPath, "-p", "3001", "--hook", svcHook), "service started")
	for _, addr := range []string{srvV4, srvV6} {
		if !n.connects(t, addr) {
			t.Fatalf("the service on %s is not reachable without the firewall hook", addr)
		}
	}

	kk := startIn(t, n.in(n.srv, binPath, "-p", "7001,7003,7002", "--hook", hook,
		"--hook-arg", fmt.Sprintf("port=%d", protected), "--hook-arg", "seconds=2"), "port closed")
	for _, c := range []struct{ srv, family string }{{srvV4, "-4"}, {srvV6, "-6"}} {
		if n.connects(t, c.srv) {
			t.Fatalf("%s: port %d reachable before the knock", c.srv, protected)
		}
		for range 2 { // a repeated knock extends access; it must not stack rules
			if out, err := n.in(n.cli, binPath, "knock", c.family, "-p", "7001,7003,7002", c.srv).CombinedOutput(); err != nil {
				t.Fatalf("knock: %v %s", err, out)
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		for !n.connects(t, c.srv) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: port %d not reachable after the knock\n%s", c.srv, protected, kk.stderr.String())
			}
		}
		if c.srv == srvV4 {
			waitFor(t, "two grants", func() bool {
				granted := 0
				for _, line := range strings.Split(kk.stderr.String(), "\n") {
					if strings.Contains(line, "access granted") && strings.Contains(line+" ", " ip="+cliV4+" ") {
						granted++
					}
				}
				return granted == 2
			})
			if g := grants(n); g != 1 {
				t.Fatalf("%d grants for %s after two knocks, want 1", g, cliV4)
			}
			// A reload keeps the rules and the grant: the port is never open to all in between,
			// and the client keeps its access until it expires.
			kk.cmd.Process.Signal(syscall.SIGHUP)
			waitFor(t, "the reload", func() bool { return strings.Contains(kk.stderr.String(), `msg="hook reloaded"`) })
			if !n.connects(t, c.srv) {
				t.Fatalf("the client lost its access at the reload\n%s", kk.stderr.String())
			}
		}
		time.Sleep(2500 * time.Millisecond)
		if n.connects(t, c.srv) {
			t.Fatalf("%s: port %d still reachable after the access time", c.srv, protected)
		}
	}
	if code := kk.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, kk.stderr.String())
	}
	if left := leftover(n); left != "" {
		t.Fatalf("rules left after SIGTERM:\n%s", left)
	}
}

// startIn starts a knockknock server through cmd (an ip netns exec command line) and waits for
// ready in its log.
func startIn(t *testing.T, cmd *exec.Cmd, ready string) *proc {
	t.Helper()
	p := launch(t, cmd)
	waitFor(t, ready, func() bool {
		select {
		case <-p.done:
			t.Fatalf("server exited: %s", p.stderr.String())
		default:
		}
		if strings.Contains(p.stderr.String(), "hook_error") {
			t.Fatalf("hook failed: %s", p.stderr.String())
		}
		return strings.Contains(p.stderr.String(), ready)
	})
	return p
}

func TestNetnsNftablesHook(t *testing.T) {
	needTools(t, "ip", "nft", "curl")
	testFirewallHook(t, "hooks/nftables.lua", func(n netnsPair) int {
		out, _ := n.in(n.srv, "nft", "list", "set", "inet", "knockknock", "allowed4").CombinedOutput()
		return strings.Count(string(out), cliV4)
	}, func(n netnsPair) string {
		out, _ := n.in(n.srv, "nft", "list", "ruleset").CombinedOutput()
		if strings.Contains(string(out), "knockknock") {
			return string(out)
		}
		return ""
	})
}

func TestNetnsIptablesHook(t *testing.T) {
	needTools(t, "ip", "iptables", "ip6tables", "curl")
	testFirewallHook(t, "hooks/iptables.lua", func(n netnsPair) int {
		out, _ := n.in(n.srv, "iptables", "-S", "knockknock").CombinedOutput()
		return strings.Count(string(out), cliV4)
	}, func(n netnsPair) string {
		var left string
		for _, tool := range []string{"iptables", "ip6tables"} {
			out, _ := n.in(n.srv, tool, "-S").CombinedOutput()
			if strings.Contains(string(out), "knockknock") {
				left += string(out)
			}
		}
		return left
	})
}
