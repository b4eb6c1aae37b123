package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for every parser of untrusted or user input, and a differential target for the
// tracker. CI runs each briefly; a crasher the fuzzer finds is saved under testdata/fuzz and
// becomes a regression test. (FuzzKnockdConfig and FuzzOneTimeSequences are in knockd_test.go.)

// FuzzWireFormat: any datagram, to a server with keys. Nothing panics, nothing but a genuine
// message is accepted, and no answer is larger than the datagram that caused it.
func FuzzWireFormat(f *testing.F) {
	key := newUserKey("alice", []byte("fuzzing-secret-0123456789abcdef"))
	m := newMACScratch()
	var hello, tok [wireLen]byte
	encodeHello(hello[:], m, key, 1000, time.Now().UnixMilli(), make([]byte, nonceLen))
	encodeKnock(tok[:], m, key, 0, 1000, make([]byte, nonceLen), netip.MustParseAddr("192.0.2.1"))
	f.Add(hello[:])
	f.Add(tok[:])
	f.Add([]byte{})
	f.Add([]byte("KK\x02H"))
	f.Add(bytes.Repeat([]byte{0xff}, wireLen))
	c := testConfig(1000, 2000)
	c.maxClients = 1024 // small tables: many runs a second
	c.keys = &keyring{byID: map[[keyIDLen]byte]*userKey{key.id: key}}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec := &recorder{}
		tr := newTracker(c, rec.emit)
		in := newIntake(c, tr)
		sc := newScratch(1)
		k := knock{from: key4("192.0.2.1"), srcPort: 5000, port: up(1000), ts: time.Now().UnixNano()}
		if n := in.accept(&k, b, sc); n > len(b) {
			t.Fatalf("a %d-byte datagram got a %d-byte answer", len(b), n)
		} else if n > 0 && !bytes.Equal(b, hello[:]) {
			if _, _, why := decodeHello(b, m, c.keys, 1000); why != dropNone {
				t.Fatalf("answered a datagram that is no genuine hello: %x", b)
			}
		}
		if len(rec.events) > 0 {
			t.Fatalf("a datagram without a challenge made events: %+v", rec.events)
		}
		decodeKnock(b)
		decodeChallenge(b, m, &key.mac, make([]byte, nonceLen))
		decodeConfirm(b, m, &key.mac, make([]byte, nonceLen))
	})
}

func key4(s string) addrKey { return keyOf(netip.MustParseAddr(s)) }

func FuzzParsePortSpecs(f *testing.F) {
	for _, s := range []string{"123,456,789", "", "0", "65535", "1,,2", " 7 , 7 ", "7000:tcp,8000:UDP", "1:", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := parsePortSpecs(s, protoUDP)
		if err != nil {
			return
		}
		for _, p := range ports {
			if p.port == 0 || p.proto > protoTCP {
				t.Fatalf("%q gave %v", s, p)
			}
		}
		again, err := parsePortSpecs(formatSpecs(ports), protoTCP)
		if err != nil || !slices.Equal(again, ports) {
			t.Fatalf("%q: round trip gave %v, %v", s, again, err)
		}
	})
}

func FuzzParseDoorSpec(f *testing.F) {
	for _, s := range []string{"ssh=7000:tcp,8000", "a=1 timeout=2s seq-timeout=3 tcp-flags=syn,!ack", "=", "a=1 x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDoorSpec(s, time.Second)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if checkDoorName(d.name) != nil || len(d.seq) == 0 || len(d.seq) > maxSequenceLen || d.tcpFlags.set&d.tcpFlags.clear != 0 {
			t.Fatalf("%q gave %+v", s, d)
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

// FuzzKeysFile: the --keys file parser and the key strength check.
func FuzzKeysFile(f *testing.F) {
	f.Add("alice 0123456789abcdef0123456789abcdef\n# comment\n\nbob fedcba9876543210fedcba9876543210\n")
	f.Add("alice\n")
	f.Add("alice aaaaaaaaaaaaaaaaaaaaaaaa\n")
	f.Add("a b\r\nc d\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, text string) {
		path := filepath.Join(dir, "keys")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := loadKeys(keySource{"--keys", path})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for _, k := range r.byID {
			if checkUserName(k.name) != nil || r.lookup(k.id[:]) != k {
				t.Fatalf("bad key %+v", k)
			}
		}
	})
}

func FuzzConfigFile(f *testing.F) {
	f.Add("[Application Options]\nports = 1000,2000\ntimeout = 3s\n")
	f.Add("[Application Options]\ndoor = a=1,2 timeout=1s\ndoor = b=3:tcp\ncapture = true\n")
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
		if c, err := buildConfig(&cl.global); err == nil && len(c.doors) == 0 {
			t.Fatal("a config without doors was accepted")
		}
	})
}

func FuzzParseControl(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, oob []byte) {
		parseControl(oob)
	})
}

func FuzzParseTransport(f *testing.F) {
	f.Add([]byte{0x9c, 0x40, 0x1b, 0x58, 0, 10, 0, 0, 'h', 'i'}, false)
	f.Add(make([]byte, 20), true)
	f.Fuzz(func(t *testing.T, b []byte, isTCP bool) {
		p := protoUDP
		if isTCP {
			p = protoTCP
		}
		k, payload, ok := parseTransport(b, p)
		if ok && (k.port.proto != p || len(payload) > len(b)) {
			t.Fatalf("%x: %+v %x", b, k, payload)
		}
	})
}

// FuzzTracker feeds arbitrary knocks (3 bytes each: client, port index, gap) and checks that the
// tracker stays within its bounds.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 1, 1, 0, 2, 1})
	f.Add([]byte{1, 2, 0, 1, 1, 0, 1, 0, 0, 2, 0, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := testConfig(10, 20, 10, 30)
		c.doors = append(c.doors, testDoor("two", 30, 20))
		c.decoys = udp(25)
		c.maxClients = 4
		c.banAfter = 3
		tr, _ := newTestTracker(c)
		ports := []uint16{10, 20, 30, 25, 99}
		now := int64(1e18)
		for i := 0; i+2 < len(data); i += 3 {
			now += int64(data[i+2]) * int64(50*time.Millisecond)
			feed(tr, knock{from: addrKey{15: data[i] % 8}, port: up(ports[int(data[i+1])%len(ports)]), ts: now})
			if n := tr.clients(); n > 4 {
				t.Fatalf("%d clients tracked, the cap is 4", n)
			}
		}
		tr.sweep(now + int64(time.Hour))
		if n := tr.clients(); n != 0 {
			t.Fatalf("%d clients left an hour after the last knock", n)
		}
	})
}

// FuzzTrackerAgreesWithRules is a differential test: the tracker, fed knocks reordered (each
// moved at most two places among knocks a few milliseconds apart, as readers of different
// sockets see them) and duplicated (as networks and clients repeat datagrams), must unlock the
// same doors, for the same clients, at the same knocks, as the rules applied to the same knocks
// sorted by time. For one door and for several.
func FuzzTrackerAgreesWithRules(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 1, 1, 0, 2, 1}, false)
	f.Add([]byte{0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 2, 1, 1, 2, 1}, true)
	f.Add([]byte{0, 3, 1, 0, 0, 0, 0, 1, 0, 0, 2, 0, 2, 2, 200}, true)
	f.Fuzz(func(t *testing.T, data []byte, doors bool) {
		c := testConfig(10, 20, 30)
		c.maxClients = 1024 // small tables: many runs a second
		if doors {
			c.doors = append(c.doors, testDoor("back", 30, 20, 10), testDoor("short", 20, 40), testDoor("rep", 40, 40, 10))
		}
		c.decoys = udp(25)
		ports := []uint16{10, 20, 30, 40, 25, 99}
		// Each 3 bytes: client, port, gap (in 2 ms steps, or 0.5 s steps past 200), with bit 7 of
		// the port byte asking for a duplicate.
		var knocks []knock
		now := int64(1e18)
		for i := 0; i+2 < len(data) && len(knocks) < 200; i += 3 {
			gap := int64(data[i+2]) * int64(2*time.Millisecond)
			if data[i+2] > 200 {
				gap = int64(data[i+2]-200) * int64(500*time.Millisecond)
			}
			now += gap + 1
			k := knock{from: addrKey{0: 0x20, 15: data[i] % 3}, port: up(ports[int(data[i+1]&0x7f)%len(ports)]), ts: now}
			knocks = append(knocks, k)
			if data[i+1]&0x80 != 0 {
				dup := k
				dup.ts++
				knocks = append(knocks, dup)
				now++
			}
		}
		final := map[portSpec]bool{}
		for _, d := range c.doors {
			final[d.seq[len(d.seq)-1]] = true
		}
		// The oracle: the rules, per client and door, in time order.
		type unlock struct {
			from addrKey
			door uint16
			ts   int64
		}
		var want []unlock
		completes := map[int]bool{}               // the knocks that complete a door
		oracle := newTracker(c, func([]event) {}) // for its compiled rules only
		progs := map[addrKey][]progress{}
		for i, k := range knocks {
			ps := progs[k.from]
			if ps == nil {
				ps = make([]progress, len(c.doors))
				progs[k.from] = ps
			}
			pk := oracle.pending(&k)
			for d := range oracle.doors {
				if v, _ := oracle.doors[d].apply(&ps[d], &pk); v == verdictUnlocked {
					want = append(want, unlock{k.from, uint16(d), k.ts})
					completes[i] = true
				}
			}
		}
		// The tracker, fed the knocks as they might be read. An unlock never waits for a straggler,
		// so no knock is read after a later knock of its client on a door's final port (which
		// may complete the door, given the knocks read so far).
		fed := slices.Clone(knocks)
		index := make([]int, len(fed)) // fed[i] is knocks[index[i]]
		for i := range index {
			index[i] = i
		}
		for i := 0; i+1 < len(fed); i++ {
			j := i + 1 + int(data[i%len(data)]%2)
			if j >= len(fed) || fed[j].ts-fed[i].ts >= int64(5*time.Millisecond) || data[(i+1)%len(data)]&1 == 0 {
				continue
			}
			// Swapping i and j: fed[i] is then read after fed[i+1..j], and fed[i+1..j-1] after fed[j].
			mayComplete := func(m int) bool { return completes[index[m]] || final[fed[m].port] }
			passes := false
			for m := i + 1; m <= j; m++ {
				passes = passes || fed[m].from == fed[i].from && mayComplete(m)
				passes = passes || m < j && fed[m].from == fed[j].from && mayComplete(j)
			}
			if !passes {
				fed[i], fed[j] = fed[j], fed[i]
				index[i], index[j] = index[j], index[i]
				i = j // each knock moves once
			}
		}
		rec := &recorder{}
		tr := newTracker(c, rec.emit)
		for _, k := range fed {
			feed(tr, k)
		}
		tr.sweep(now + int64(time.Hour))
		var got []unlock
		for _, e := range rec.events {
			if e.kind == eventUnlock {
				got = append(got, unlock{e.from, e.door, e.ts})
			}
		}
		order := func(u []unlock) {
			sort.Slice(u, func(i, j int) bool {
				if u[i].ts != u[j].ts {
					return u[i].ts < u[j].ts
				}
				return u[i].door < u[j].door
			})
		}
		order(want)
		order(got)
		if !slices.Equal(got, want) {
			show := func(ks []knock) string { // client:port@ns
				var b strings.Builder
				for _, k := range ks {
					fmt.Fprintf(&b, " %d:%d@%d", k.from[15], k.port.port, k.ts-1e18)
				}
				return b.String()
			}
			t.Fatalf("tracker unlocked %+v\nrules unlock   %+v\nknocks%s\nfed   %s", got, want, show(knocks), show(fed))
		}
	})
}
