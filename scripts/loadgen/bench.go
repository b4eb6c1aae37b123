package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// benchCase is one load: clients knocking with a gap between knocks, concurrency in flight.
type benchCase struct {
	name        string
	clients     int
	gap         time.Duration
	concurrency int
}

var benchCases = []benchCase{
	{"burst", 100000, 0, 1},
	{"paced-16", 2000, 2 * time.Millisecond, 16},
	{"paced-64", 10000, 2 * time.Millisecond, 64},
}

// benchResult is one server's outcome on one case.
type benchResult struct {
	Case      string  `json:"case"`
	Server    string  `json:"server"`
	Clients   int     `json:"clients"`
	Unlocked  int     `json:"unlocked"`
	Seconds   float64 `json:"seconds"` // from the first datagram sent to the last unlock (sink: datagram)
	Rate      float64 `json:"unlocks_per_second"`
	P50       string  `json:"hook_p50,omitempty"`
	P99       string  `json:"hook_p99,omitempty"`
	Dropped   float64 `json:"hook_events_dropped"`
	SendSecs  float64 `json:"send_seconds"`
	Datagrams int64   `json:"datagrams"`
}

func (r benchResult) success() float64 { return 100 * float64(r.Unlocked) / float64(r.Clients) }

var benchPorts = []uint16{40123, 40456, 40789}

func benchMain(args []string) {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	kk := fs.String("knockknock", "", "knockknock binary")
	knockd := fs.String("knockd", "", "knockd binary (empty: skip knockd)")
	hook := fs.String("hook", "scripts/bench.lua", "knockknock's hook")
	out := fs.String("out", "bench-out", "directory for logs and results")
	only := fs.String("cases", "", "comma-separated case names (default: all)")
	fs.Parse(args)
	if *kk == "" {
		fail(fmt.Errorf("-knockknock is required"))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	self, _ := os.Executable()
	var results []benchResult
	for _, c := range benchCases {
		if *only != "" && !strings.Contains(","+*only+",", ","+c.name+",") {
			continue
		}
		results = append(results, benchKnockknock(c, *kk, *hook, *out))
		results = append(results, benchSink(c, self, *out))
		if *knockd != "" {
			results = append(results, benchKnockd(c, *knockd, *out))
		}
	}
	f, err := os.Create(filepath.Join(*out, "results.json"))
	if err != nil {
		fail(err)
	}
	enc := json.NewEncoder(f)
	for _, r := range results {
		enc.Encode(r)
	}
	f.Close()
	printTable(results)
	writePlotData(results, *out)
}

func sendCase(c benchCase) sendReport {
	return send(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.1.0.1"), benchPorts, c.clients, c.concurrency, c.gap)
}

func portList() string {
	s := make([]string, len(benchPorts))
	for i, p := range benchPorts {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

func startProc(logPath string, name string, args ...string) *exec.Cmd {
	logf, err := os.Create(logPath)
	if err != nil {
		fail(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		fail(fmt.Errorf("%s: %v", name, err))
	}
	return cmd
}

func waitForLine(path, needle string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), needle) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	fail(fmt.Errorf("%q not in %s after %v", needle, path, limit))
}

func benchKnockknock(c benchCase, bin, hook, out string) benchResult {
	logPath := filepath.Join(out, "knockknock-"+c.name+".log")
	cmd := startProc(logPath, bin, "-p", portList(), "--hook", hook, "--log-format", "json", "--timeout", "5s")
	waitForLine(logPath, `"msg":"listening"`, 10*time.Second)
	sent := sendCase(c)
	time.Sleep(2 * time.Second) // the reorder window settles, the hook queue drains
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	stopped := findJSON(logPath, "stopped")
	r := benchResult{Case: c.name, Server: "knockknock", Clients: c.clients, SendSecs: sent.Seconds, Datagrams: sent.Datagrams}
	r.Unlocked = int(num(stopped["unlocks"]))
	r.Dropped = num(stopped["hook_events_dropped"])
	last := int64(num(stopped["last_unlock_unix_ns"]))
	r.Seconds = float64(last-sent.Start) / 1e9
	r.P50, _ = stopped["hook_latency_p50"].(string)
	r.P99, _ = stopped["hook_latency_p99"].(string)
	r.Rate = rate(r.Unlocked, r.Seconds)
	return r
}

func benchSink(c benchCase, self, out string) benchResult {
	logPath := filepath.Join(out, "sink-"+c.name+".log")
	cmd := exec.Command(self, "sink", "-ports", portList(), "-idle", "1500ms")
	stdout, _ := cmd.StdoutPipe()
	errLog, _ := os.Create(logPath)
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	waitForLine(logPath, "sink: listening", 10*time.Second)
	sent := sendCase(c)
	var rep sinkReport
	json.NewDecoder(stdout).Decode(&rep)
	cmd.Wait()
	r := benchResult{Case: c.name, Server: "sink", Clients: c.clients, SendSecs: sent.Seconds, Datagrams: sent.Datagrams}
	r.Unlocked = min(int(rep.Datagrams)/len(benchPorts), c.clients) // sequences received whole, at best
	r.Seconds = float64(rep.Last-sent.Start) / 1e9
	r.Rate = rate(r.Unlocked, r.Seconds)
	return r
}

func benchKnockd(c benchCase, bin, out string) benchResult {
	unlocks := filepath.Join(out, "knockd-unlocks-"+c.name)
	os.Remove(unlocks)
	conf := filepath.Join(out, "knockd-"+c.name+".conf")
	seq := make([]string, len(benchPorts))
	for i, p := range benchPorts {
		seq[i] = fmt.Sprintf("%d:udp", p)
	}
	os.WriteFile(conf, []byte(fmt.Sprintf(`[options]
	LogFile = %s
[bench]
	sequence    = %s
	seq_timeout = 5
	command     = echo %%IP%% >> %s
`, filepath.Join(out, "knockd-"+c.name+".events"), strings.Join(seq, ","), unlocks)), 0o644)
	logPath := filepath.Join(out, "knockd-"+c.name+".log")
	cmd := startProc(logPath, bin, "-c", conf, "-i", "lo")
	time.Sleep(time.Second)
	sent := sendCase(c)
	// knockd forks a shell per unlock: wait until the file stops growing.
	var lines int
	var lastMod time.Time
	for stable, deadline := 0, time.Now().Add(120*time.Second); stable < 20 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		n, mod := countLines(unlocks)
		if n == lines {
			stable++
		} else {
			stable = 0
		}
		lines, lastMod = n, mod
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	r := benchResult{Case: c.name, Server: "knockd", Clients: c.clients, SendSecs: sent.Seconds, Datagrams: sent.Datagrams, Unlocked: lines}
	if lines > 0 {
		r.Seconds = float64(lastMod.UnixNano()-sent.Start) / 1e9
	}
	r.Rate = rate(r.Unlocked, r.Seconds)
	return r
}

func countLines(path string) (int, time.Time) {
	f, err := os.Open(path)
	if err != nil {
		return 0, time.Time{}
	}
	defer f.Close()
	info, _ := f.Stat()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		n++
	}
	return n, info.ModTime()
}

func findJSON(path, msg string) map[string]any {
	f, err := os.Open(path)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	fail(fmt.Errorf("no %q line in %s", msg, path))
	return nil
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

func rate(n int, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(n) / secs
}

func printTable(results []benchResult) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "case\tserver\tclients\tunlocked\tsuccess\tseconds\tunlocks/s\thook p50\thook p99\tdropped\t")
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%.1f%%\t%.3f\t%.0f\t%s\t%s\t%.0f\t\n", r.Case, r.Server, r.Clients, r.Unlocked, r.success(), r.Seconds, r.Rate, dash(r.P50), dash(r.P99), r.Dropped)
	}
	w.Flush()
	fmt.Println()
	by := map[string]map[string]benchResult{}
	for _, r := range results {
		if by[r.Case] == nil {
			by[r.Case] = map[string]benchResult{}
		}
		by[r.Case][r.Server] = r
	}
	for _, c := range benchCases {
		m := by[c.name]
		kk, ok := m["knockknock"]
		if !ok {
			continue
		}
		line := fmt.Sprintf("%-9s knockknock/sink time %.3f", c.name, ratio(kk.Seconds, m["sink"].Seconds))
		if kd, ok := m["knockd"]; ok {
			line += fmt.Sprintf("   knockknock/knockd unlocks per second %.1f", ratio(kk.Rate, kd.Rate))
		}
		fmt.Println(line)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return a / b
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writePlotData writes one file per server for gnuplot: clients, unlocks/s, success %.
func writePlotData(results []benchResult, out string) {
	sorted := append([]benchResult{}, results...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Clients < sorted[j].Clients })
	for _, server := range []string{"knockknock", "sink", "knockd"} {
		var b strings.Builder
		for _, r := range sorted {
			if r.Server == server {
				fmt.Fprintf(&b, "%d %.1f %.2f %s\n", r.Clients, r.Rate, r.success(), r.Case)
			}
		}
		if b.Len() > 0 {
			os.WriteFile(filepath.Join(out, server+".dat"), []byte(b.String()), 0o644)
		}
	}
}
