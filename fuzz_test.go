package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for every parser of untrusted or user input. CI runs each briefly; a crasher that
// the fuzzer finds is saved under testdata/fuzz and becomes a regression test.

func FuzzToken(f *testing.F) {
	secret := []byte("fuzzing-secret-0123456789abcdef")
	good, _ := appendToken(nil, newTokenMAC(secret), 0, 1000, time.Now())
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("KK\x01"))
	f.Add(bytes.Repeat([]byte{0xff}, tokenLen))
	c := testConfig(1000, 2000)
	c.secret, c.maxSkew = secret, 30*time.Second
	f.Fuzz(func(t *testing.T, b []byte) {
		a := newAuthenticator(c)
		m := newTokenMAC(secret)
		ok := a.verify(m, b, 1000, time.Now().UnixNano())
		if ok && !bytes.Equal(m.compute(b[:tokenMACAt], 1000), b[tokenMACAt:]) {
			t.Fatalf("accepted a token whose MAC does not match: %x", b)
		}
		if ok && a.verify(m, b, 1000, time.Now().UnixNano()) {
			t.Fatalf("accepted the same token twice: %x", b)
		}
	})
}

func FuzzParsePortList(f *testing.F) {
	for _, s := range []string{"123,456,789", "", "0", "65535", "1,,2", " 7 , 7 ", "99999999999999999999", "1,2,3,4,5,6,7,8,9,10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := parsePortList(s)
		if err != nil {
			return
		}
		for _, p := range ports {
			if p == 0 {
				t.Fatalf("%q gave port 0", s)
			}
		}
		again, err := parsePortList(formatPorts(ports))
		if err != nil || formatPorts(again) != formatPorts(ports) {
			t.Fatalf("%q: round trip gave %v, %v", s, again, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"5s", "5", "0.5", "-1", "1m30s", "NaN", "1e9", "", "9999999999999999999s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseDuration(s); err == nil && d < 0 {
			t.Fatalf("%q gave a negative duration %v", s, d)
		}
	})
}

func FuzzParseHookArg(f *testing.F) {
	for _, s := range []string{"port=22", "=x", "a==b", "k", "k=\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := parseHookArg(s)
		if err == nil && k+"="+v != s {
			t.Fatalf("%q split into %q and %q", s, k, v)
		}
	})
}

func FuzzConfigFile(f *testing.F) {
	f.Add("[Application Options]\nports = 1000,2000\ntimeout = 3s\n")
	f.Add("ports = 1\n[knock]\ndelay = 5\n")
	f.Add("[Application Options]\nhook-arg = a=b\nhook-arg = c\n")
	f.Add("[nonsense\n=\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, ini string) {
		path := filepath.Join(dir, "fuzz.ini")
		if err := os.WriteFile(path, []byte(ini), 0o600); err != nil {
			t.Fatal(err)
		}
		cl, err := parseCommandLine([]string{"check", "--config", path})
		if err != nil {
			if msg := err.Error(); strings.Contains(msg, "\n") && !strings.Contains(msg, "Usage") {
				t.Fatalf("multi-line error: %q", msg)
			}
			return
		}
		if c, err := buildConfig(&cl.global); err == nil && len(c.ports) == 0 {
			t.Fatal("a config without ports was accepted")
		}
	})
}

func FuzzReceiveTime(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, oob []byte) {
		receiveTime(oob)
	})
}

// FuzzTracker feeds arbitrary knocks (3 bytes each: client, port index, gap) and checks that the
// tracker stays within its bounds.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 1, 1, 0, 2, 1})
	f.Add([]byte{1, 2, 0, 1, 1, 0, 1, 0, 0, 2, 0, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := testConfig(10, 20, 10, 30)
		c.decoys = []uint16{25}
		c.maxClients = 4
		c.banAfter = 3
		tr, rec := newTestTracker(c)
		ports := []uint16{10, 20, 30, 25, 99}
		now := int64(1e18)
		for i := 0; i+2 < len(data); i += 3 {
			now += int64(data[i+2]) * int64(50*time.Millisecond)
			tr.knock(knock{from: addrKey{15: data[i] % 8}, port: ports[int(data[i+1])%len(ports)], ts: now})
			if n := tr.clients(); n > 4 {
				t.Fatalf("%d clients tracked, the cap is 4", n)
			}
		}
		tr.sweep(now + int64(time.Hour))
		if n := tr.clients(); n != 0 {
			t.Fatalf("%d clients left an hour after the last knock", n)
		}
		_ = rec
	})
}
