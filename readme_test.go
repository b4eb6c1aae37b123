//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// README.md's commands, run as a new user would run them: from a fresh copy of the repository
// (its tracked files only), in README order. Every command in a shell block of README.md (and in
// its indented command examples) must match one of readmeRules, which says how the test runs it
// or why it cannot; a command that matches none fails the test, so a new command cannot be left
// untried by accident.
//
// As root each shell runs in a network namespace of its own (unshare --net), with only loopback:
// the README's fixed ports (123, 456, 789, 8080, ...) cannot meet another process's, and the hooks'
// firewall rules stay in a namespace that ends with the test.

// readmeCommand is one command of README.md: a line of a shell block, lines joined at a trailing
// backslash, without its comment.
type readmeCommand struct {
	line    int    // in README.md
	text    string // the command
	comment string // what follows "  #", which may say what the command prints
}

// readmeBlock is a code block of README.md.
type readmeBlock struct {
	line     int    // of its first line of code
	lang     string // sh, ini, lua; "" for an indented block
	lines    []string
	commands []readmeCommand // for sh blocks and indented command examples
}

// readmeBlocks parses README.md's fenced and indented code blocks.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var blocks []readmeBlock
	for i := 0; i < len(lines); i++ {
		switch {
		case strings.HasPrefix(lines[i], "```"):
			blk := readmeBlock{line: i + 2, lang: strings.TrimPrefix(lines[i], "```")}
			for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
				blk.lines = append(blk.lines, lines[i])
			}
			if blk.lang == "sh" {
				blk.commands = shellCommands(blk.line, blk.lines)
			}
			blocks = append(blocks, blk)
		case strings.HasPrefix(lines[i], "    ") && i > 0 && strings.TrimSpace(lines[i-1]) == "":
			blk := readmeBlock{line: i + 1}
			for ; i < len(lines) && (strings.HasPrefix(lines[i], "    ") || strings.TrimSpace(lines[i]) == ""); i++ {
				blk.lines = append(blk.lines, strings.TrimPrefix(lines[i], "    "))
			}
			blk.commands = indentedCommands(blk.line, blk.lines)
			blocks = append(blocks, blk)
		}
	}
	return blocks
}

var shellComment = regexp.MustCompile(`\s{2,}#\s?(.*)$`)

// shellCommands splits a shell block into commands: comment lines are skipped, a comment after
// two spaces is kept apart, and a line ending in a backslash goes on with the next.
func shellCommands(first int, lines []string) []readmeCommand {
	var cmds []readmeCommand
	for i := 0; i < len(lines); i++ {
		start, text := i, lines[i]
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) {
			i++
			text = strings.TrimSuffix(text, `\`) + " " + strings.TrimSpace(lines[i])
		}
		if s := strings.TrimSpace(text); s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		c := readmeCommand{line: first + start, text: text}
		if m := shellComment.FindStringSubmatchIndex(text); m != nil {
			c.text, c.comment = text[:m[0]], text[m[2]:m[3]]
		}
		c.text = strings.Join(strings.Fields(c.text), " ")
		cmds = append(cmds, c)
	}
	return cmds
}

var (
	indentedCommand = regexp.MustCompile(`^(\$ |knockknock |go |scripts/|bash )`)
	indentedComment = regexp.MustCompile(`\s{2,}`) // between a command and what it does
)

// indentedCommands finds the commands of an indented block that shows commands: "$ CMD" lines
// (the lines after them are output), or "CMD   what it does" lines, or one command over several
// lines. Other indented blocks (tables of values) have none.
func indentedCommands(first int, lines []string) []readmeCommand {
	if len(lines) == 0 || !indentedCommand.MatchString(lines[0]) {
		return nil
	}
	if strings.HasSuffix(lines[0], `\`) {
		return shellCommands(first, lines)
	}
	var cmds []readmeCommand
	for i, l := range lines {
		if l == "" || strings.HasPrefix(l, " ") {
			continue // a description going on
		}
		if strings.HasPrefix(lines[0], "$ ") {
			if !strings.HasPrefix(l, "$ ") {
				continue // output
			}
			l = strings.TrimPrefix(l, "$ ")
		}
		c := readmeCommand{line: first + i, text: l}
		if m := indentedComment.FindStringIndex(l); m != nil {
			c.text, c.comment = l[:m[0]], l[m[1]:]
		}
		c.text = strings.Join(strings.Fields(c.text), " ")
		cmds = append(cmds, c)
	}
	return cmds
}

// How the test treats a README command.
type readmeAction int

const (
	readmeSkip       readmeAction = iota // cannot be run here: why says so
	readmeRun                            // run in the shell; exit 0
	readmeServer                         // a server in the foreground: start it, wait until it is ready, Ctrl-C
	readmeBackground                     // "CMD &": run in the shell, then wait until the server is ready
	readmeFetch                          // curl: once the port answers (a person types slower than a script); prints the comment
)

type readmeRule struct {
	match  *regexp.Regexp
	action readmeAction
	root   bool     // needs root (ports below 1024, raw sockets, namespaces)
	tools  []string // needs these programs
	why    string   // for readmeSkip: what the test cannot have
}

var readmeRules = []readmeRule{
	{match: regexp.MustCompile(`^go test .*-fuzz `), why: "fuzzing runs until stopped"},
	{match: regexp.MustCompile(`^go test .*-bench `), why: "benchmarks: minutes of load"},
	{match: regexp.MustCompile(`^go test `), why: "the tests: this test is one of them"},
	{match: regexp.MustCompile(`^go run knockknock\.go$`), action: readmeServer, root: true},
	{match: regexp.MustCompile(`^go build -o knockknock knockknock\.go$`), action: readmeRun},
	{match: regexp.MustCompile(`^\./knockknock &$`), action: readmeBackground, root: true},
	{match: regexp.MustCompile(`^\./knockknock knock 127\.0\.0\.1$`), action: readmeRun, root: true},
	{match: regexp.MustCompile(`^curl http://127\.0\.0\.1:8080/$`), action: readmeFetch, root: true, tools: []string{"curl"}},
	{match: regexp.MustCompile(`^kill %1; wait$`), action: readmeRun, root: true},
	{match: regexp.MustCompile(`^\./demo\.sh$`), action: readmeRun, tools: []string{"curl", "ss"}},
	{match: regexp.MustCompile(`^knockknock (\[|knock \[|check \[|keygen \[|help \[)`), why: "the commands' syntax, not a command"},
	{match: regexp.MustCompile(`^knockknock --capture --door `), action: readmeServer, root: true, tools: []string{"nft"}},
	{match: regexp.MustCompile(`^(nft delete table|for t in iptables ip6tables; do|\$t -[DFX] |done$)`),
		why: "it removes what hooks/nftables.lua or hooks/iptables.lua installed in the host's firewall (TestNetns* run those hooks in namespaces)"},
	{match: regexp.MustCompile(`^install `), action: readmeRun},
	{match: regexp.MustCompile(`^knockknock keygen /etc/knockknock/secret$`), action: readmeRun},
	{match: regexp.MustCompile(`^knockknock check --config /etc/knockknock/knockknock\.ini$`), action: readmeRun},
	{match: regexp.MustCompile(`^\(cd /etc/knockknock && knockknock check --config knockknock\.ini\)$`), action: readmeRun},
	{match: regexp.MustCompile(`^(systemctl|journalctl) `), why: "systemd"},
	{match: regexp.MustCompile(`server\.example`), why: "a real server (server.example) and SSH"},
	{match: regexp.MustCompile(`^knockknock check --knockd-config /etc/knockd\.conf$`), action: readmeRun},
	{match: regexp.MustCompile(`^knockknock serve --knockd-config /etc/knockd\.conf$`), action: readmeServer, root: true},
	{match: regexp.MustCompile(`^python3 scripts/kkclient\.py --selftest$`), action: readmeRun, tools: []string{"python3"}},
	{match: regexp.MustCompile(`^scripts/(flood|attack|grant-rate|bench)\.sh$`), why: "root, and minutes of load on the whole machine"},
	{match: regexp.MustCompile(`^bash \.ci/run$`), why: "CI: installs packages, then runs all of the above"},
}

// readmeRewrites make the install commands write under a temporary root instead of the system's,
// and serve the repository's sample knockd.conf for /etc/knockd.conf.
func readmeRewrites(root string) *strings.Replacer {
	return strings.NewReplacer(
		"/usr/local/bin/", root+"/usr/local/bin/",
		"/etc/knockknock", root+"/etc/knockknock",
		"/etc/systemd/system/", root+"/etc/systemd/system/",
		"/etc/knockd.conf", "testdata/knockd.conf",
	)
}

func TestREADMECommands(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	clone := readmeClone(t)
	root := t.TempDir() // what the install commands write to: /usr/local/bin, /etc
	for _, d := range []string{"usr/local/bin", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rw := readmeRewrites(root)
	sh := newReadmeShell(t, clone, "PATH="+root+"/usr/local/bin:"+clone+":"+os.Getenv("PATH"))
	isRoot := os.Geteuid() == 0
	var skipped []string
	var server, fetch, reply, alternative string // the Try it block's, for its alternative knock
	for _, blk := range readmeBlocks(t, filepath.Join(clone, "README.md")) {
		switch {
		case blk.lang == "ini" && strings.HasPrefix(blk.lines[0], "[Application Options]"):
			readmeConfigExample(t, sh, blk)
			continue
		case blk.lang == "ini":
			skipped = append(skipped, fmt.Sprintf("README.md:%d: the ini block %q: a systemd drop-in", blk.line, blk.lines[0]))
			continue
		case blk.lang == "lua":
			readmeLuaExample(t, sh, blk)
			continue
		}
		for _, c := range blk.commands {
			where := fmt.Sprintf("README.md:%d: %s", c.line, c.text)
			rule := readmeRuleFor(c.text)
			if rule == nil {
				t.Errorf("%s: no rule in readmeRules says how to run this command or why it cannot be run", where)
				continue
			}
			missing := ""
			for _, tool := range rule.tools {
				if _, err := exec.LookPath(tool); err != nil {
					missing = tool
				}
			}
			switch {
			case rule.action == readmeSkip:
				skipped = append(skipped, where+": "+rule.why)
				continue
			case rule.root && !isRoot:
				skipped = append(skipped, where+": needs root (ports below 1024, raw sockets)")
				continue
			case missing != "":
				skipped = append(skipped, where+": needs "+missing)
				continue
			}
			t.Logf("%s", where)
			cmd := rw.Replace(c.text)
			switch rule.action {
			case readmeRun:
				out := sh.mustRun(where, cmd, 3*time.Minute)
				readmeAfter(t, sh, root, c, out)
				if m := knockdAlternative.FindStringSubmatch(c.comment); m != nil {
					alternative = m[1]
				}
				if c.text == "kill %1; wait" && alternative != "" {
					readmeAlternativeKnock(t, sh, server, alternative, fetch, reply, c.text)
				}
			case readmeBackground:
				sh.drainReady()
				sh.mustRun(where, cmd, 10*time.Second)
				sh.waitReady(where, 60*time.Second)
				server = cmd
			case readmeFetch:
				readmeFetchOnce(t, sh, where, cmd, c.comment)
				fetch, reply = cmd, c.comment
			case readmeServer:
				readmeForeground(t, clone, sh.env, where, cmd)
			}
		}
	}
	for _, s := range skipped {
		t.Logf("not run: %s", s)
	}
}

// knockdAlternative is the other client that a knock command's comment offers.
var knockdAlternative = regexp.MustCompile(`knockd's client: (knock -u [0-9. ]+)`)

// readmeFetchOnce runs a curl command once the port answers (a person types slower than a
// script) and checks that it prints what README says, in the command's comment.
func readmeFetchOnce(t *testing.T, sh *readmeShell, where, cmd, want string) {
	t.Helper()
	sh.mustRun(where+" (waiting for port 8080)", "for i in $(seq 100); do curl -so /dev/null http://127.0.0.1:8080/ && break; sleep 0.05; done", 10*time.Second)
	if out := sh.mustRun(where, cmd, 10*time.Second); strings.TrimSpace(out) != want {
		t.Errorf("%s printed %q; README says %q", where, strings.TrimSpace(out), want)
	}
}

// readmeAlternativeKnock goes through the Try it block again with the knock client its comment
// offers instead (knockd's, when installed).
func readmeAlternativeKnock(t *testing.T, sh *readmeShell, server, knock, fetch, reply, stop string) {
	t.Helper()
	if _, err := exec.LookPath("knock"); err != nil {
		t.Logf("not run: %s (the alternative in a comment): needs knockd's knock", knock)
		return
	}
	where := "README.md: the Try it block with " + knock
	t.Logf("%s", where)
	sh.drainReady()
	sh.mustRun(where, server, 10*time.Second)
	sh.waitReady(where, 60*time.Second)
	sh.mustRun(where, knock, 10*time.Second)
	readmeFetchOnce(t, sh, where, fetch, reply)
	sh.mustRun(where, stop, 10*time.Second)
}

// readmeRuleFor is the first rule matching a command.
func readmeRuleFor(cmd string) *readmeRule {
	for i := range readmeRules {
		if readmeRules[i].match.MatchString(cmd) {
			return &readmeRules[i]
		}
	}
	return nil
}

// readmeAfter checks what a command's comment promises, and does what README says to do next.
func readmeAfter(t *testing.T, sh *readmeShell, root string, c readmeCommand, out string) {
	t.Helper()
	switch {
	case c.text == "./demo.sh":
		if !strings.Contains(out, "== Done: every step held") {
			t.Errorf("./demo.sh exited 0 without finishing:\n%s", out)
		}
	case strings.HasPrefix(c.text, "install -m 600 knockknock.ini "):
		// "then edit": the sample's paths are the system's; here they are under root.
		path := filepath.Join(root, "etc/knockknock/knockknock.ini")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), "/etc/knockknock", root+"/etc/knockknock")), 0o600); err != nil {
			t.Fatal(err)
		}
	case strings.HasPrefix(c.text, "knockknock keygen "):
		fi, err := os.Stat(filepath.Join(root, "etc/knockknock/secret"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: the key file: %v, %v; README says mode 0600", c.text, fi.Mode(), err)
		}
	case strings.HasPrefix(c.text, "knockknock check --knockd-config"):
		if !strings.Contains(out, "openSSH") || !strings.Contains(out, "closeSSH") {
			t.Errorf("%s does not list the doors it found:\n%s", c.text, out)
		}
	}
}

// readmeConfigExample checks the config file example with `check`: its hook path is the
// installed one, here the repository's.
func readmeConfigExample(t *testing.T, sh *readmeShell, blk readmeBlock) {
	t.Helper()
	conf := strings.ReplaceAll(strings.Join(blk.lines, "\n")+"\n", "/etc/knockknock/hooks/", "hooks/")
	path := filepath.Join(t.TempDir(), "example.ini")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	where := fmt.Sprintf("README.md:%d: the config file example", blk.line)
	t.Logf("%s", where)
	out := sh.mustRun(where, "knockknock check --config "+path, 30*time.Second)
	for _, want := range []string{`openSSH\W+7000:tcp,8000:tcp,9000:tcp\W+timeout 3s`, `closeSSH\W+9000:tcp,8000:tcp,7000:tcp\W+timeout 5s`, `mode:\s+capture`, `log-format:\s+json`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("%s: check does not say %s:\n%s", where, want, out)
		}
	}
}

// readmeLuaExample compiles a hook example and runs its top level with `check`, for the doors
// the examples name.
func readmeLuaExample(t *testing.T, sh *readmeShell, blk readmeBlock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "example.lua")
	if err := os.WriteFile(path, []byte(strings.Join(blk.lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	where := fmt.Sprintf("README.md:%d: the hook example", blk.line)
	t.Logf("%s", where)
	sh.mustRun(where, "knockknock check --door openSSH=7000,8000,9000 --door closeSSH=9000,8000,7000 --hook "+path, 30*time.Second)
}

// readmeForeground runs a server command as a person would in a terminal of its own: it starts,
// is ready, and stops cleanly at Ctrl-C (SIGINT to its process group): exit 0 and a "stopped"
// line. (`go run` itself exits 1 after an interrupt, whatever the program did: for it, only the
// line counts.)
func readmeForeground(t *testing.T, dir string, env []string, where, command string) {
	t.Helper()
	cmd := readmeIsolated("bash", "-c", command)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startReady(t, cmd)
	t.Cleanup(func() { syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) })
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: still running 15s after Ctrl-C:\n%s", where, p.stderr.String())
	}
	code := p.cmd.ProcessState.ExitCode()
	if !strings.HasPrefix(command, "go run ") && code != 0 || !strings.Contains(p.stderr.String(), "msg=stopped ") {
		t.Errorf("%s: exit %d after Ctrl-C; want 0 and a stopped line:\n%s", where, code, p.stderr.String())
	}
}

// readmeIsolated is a command line that runs args in a network namespace of its own with only
// loopback up, as root; as another user it is args.
func readmeIsolated(args ...string) *exec.Cmd {
	if os.Geteuid() != 0 {
		return exec.Command(args[0], args[1:]...)
	}
	return exec.Command("unshare", append([]string{"--net", "--", "sh", "-c", `ip link set lo up && exec "$@"`, "sh"}, args...)...)
}

// readmeClone copies the repository's tracked files (git ls-files) into a temporary directory:
// what a fresh clone has, with the working tree's edits, and without untracked files.
func readmeClone(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("SKIP: not a git checkout, or no git: %v", err)
	}
	dir := t.TempDir()
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		fi, err := os.Lstat(name)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		src, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_EXCL, fi.Mode().Perm())
		if err == nil {
			_, err = io.Copy(dst, src)
			if cerr := dst.Close(); err == nil {
				err = cerr
			}
		}
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// readmeShell is one bash session, as in a terminal: commands run one at a time in the same shell,
// so `&`, `%1` and `wait` mean what they mean there. Its knockknock servers report readiness to
// its NOTIFY_SOCKET.
type readmeShell struct {
	t      *testing.T
	p      *proc       // its stderr, and that of the servers it starts, is in p.stderr
	out    *syncBuffer // its stdout
	env    []string
	in     *os.File // the shell reads one command a line from this pipe
	ready  *net.UnixConn
	marker string
	n      int // commands run
	seen   int // output read up to here
}

func newReadmeShell(t *testing.T, dir string, env ...string) *readmeShell {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	if len(sock) > 100 {
		d, err := os.MkdirTemp("", "kk-readme-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		sock = filepath.Join(d, "notify")
	}
	ready, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ready.Close() })
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &readmeShell{t: t, in: w, ready: ready, marker: fmt.Sprintf("::readme-done-%d", time.Now().UnixNano())}
	s.env = append(os.Environ(), append(env, "NOTIFY_SOCKET="+sock)...)
	loop := fmt.Sprintf(`while IFS= read -r -u 3 line; do eval "$line"; printf '\n%s %%d\n' $?; done`, s.marker)
	cmd := readmeIsolated("bash", "--noprofile", "--norc", "-c", loop)
	cmd.Dir, cmd.Env, cmd.ExtraFiles = dir, s.env, []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.out = &syncBuffer{}
	s.p = &proc{cmd: cmd, stderr: newProcOutput(t), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.out, s.p.stderr.f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	go func() {
		cmd.Wait()
		close(s.p.done)
	}()
	t.Cleanup(func() {
		w.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // and whatever it left running
		<-s.p.done
		if t.Failed() {
			t.Logf("the shell's stderr (and its servers' logs):\n%s", s.p.stderr.String())
		}
	})
	return s
}

// run runs one command line in the shell and returns its standard output, what the shell's
// standard error got meanwhile (its own, and its background servers' logs), and its status.
func (s *readmeShell) run(command string, limit time.Duration) (stdout, stderr string, code int) {
	s.t.Helper()
	s.n++
	errFrom := len(s.p.stderr.String())
	if _, err := io.WriteString(s.in, command+"\n"); err != nil {
		s.t.Fatalf("the shell is gone (%v): %s", err, s.p.stderr.String())
	}
	deadline := time.Now().Add(limit)
	for {
		all := s.out.String()
		if i := strings.Index(all[s.seen:], "\n"+s.marker+" "); i >= 0 {
			end := s.seen + i
			rest := all[end+len(s.marker)+2:]
			nl := strings.IndexByte(rest, '\n')
			if nl >= 0 {
				code, _ := strconv.Atoi(rest[:nl])
				out := all[s.seen:end]
				s.seen = end + len(s.marker) + 2 + nl + 1
				return out, s.p.stderr.String()[errFrom:], code
			}
		}
		select {
		case <-s.p.done:
			s.t.Fatalf("the shell exited running %q:\n%s%s", command, all[s.seen:], s.p.stderr.String()[errFrom:])
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%q did not finish within %v:\n%s%s", command, limit, all[s.seen:], s.p.stderr.String()[errFrom:])
		}
	}
}

// mustRun is run, failing the test unless the command exits 0.
func (s *readmeShell) mustRun(where, command string, limit time.Duration) string {
	s.t.Helper()
	out, errs, code := s.run(command, limit)
	if code != 0 {
		s.t.Fatalf("%s: exit %d:\n%s%s", where, code, out, errs)
	}
	return out
}

// drainReady forgets earlier READY=1 messages (a server that demo.sh started, say).
func (s *readmeShell) drainReady() {
	buf := make([]byte, 256)
	for {
		s.ready.SetReadDeadline(time.Now())
		if _, err := s.ready.Read(buf); err != nil {
			return
		}
	}
}

// waitReady waits for a server that the shell started to say it is ready.
func (s *readmeShell) waitReady(where string, limit time.Duration) {
	s.t.Helper()
	buf := make([]byte, 256)
	s.ready.SetReadDeadline(time.Now().Add(limit))
	for {
		n, err := s.ready.Read(buf)
		if err != nil {
			s.t.Fatalf("%s: the server did not get ready (%v):\n%s", where, err, s.p.stderr.String())
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return
		}
	}
}

// readmeInShellNetns runs fn with the sockets it opens in the shell's network namespace.
func readmeInShellNetns(t *testing.T, sh *readmeShell, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := fn(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := inNetns(fmt.Sprintf("/proc/%d/ns/net", sh.p.cmd.Process.Pid), fn); err != nil {
		t.Fatal(err)
	}
}

// A port that demo.sh needs, held by another process before it starts: the demo names the port,
// the process and its pid, says how to find it, starts nothing and exits 1.
func TestDemoNamesAPortHeldByAnotherProcess(t *testing.T) {
	for _, tool := range []string{"ss", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP: demo.sh needs %s", tool)
		}
	}
	knockPort := 10456
	if os.Geteuid() == 0 {
		knockPort = 456
	}
	clone := readmeClone(t)
	sh := newReadmeShell(t, clone)
	sh.mustRun("build", "go build -o knockknock knockknock.go", 2*time.Minute)
	type held struct {
		port  int
		proto string
	}
	for _, c := range []struct {
		name  string
		setup func() (holder string, pid int, release func()) // nil when it cannot run here
		held  []held
	}{
		{
			// The case: the README's server, left running after its knock, holds 8080.
			name: "a knockknock server left running",
			setup: func() (string, int, func()) {
				if os.Geteuid() != 0 {
					t.Log("not run: a knockknock server left running: the default knock ports need root")
					return "", 0, nil
				}
				sh.drainReady()
				sh.mustRun("server", "./knockknock &", 10*time.Second)
				sh.waitReady("server", 30*time.Second)
				sh.mustRun("knock", "./knockknock knock 127.0.0.1", 10*time.Second)
				sh.mustRun("service", "for i in $(seq 100); do curl -so /dev/null http://127.0.0.1:8080/ && break; sleep 0.05; done", 10*time.Second)
				pid, _ := strconv.Atoi(strings.TrimSpace(sh.mustRun("pid", "echo $!", time.Second)))
				return "knockknock", pid, func() { sh.mustRun("stop", "kill %1; wait", 10*time.Second) }
			},
			held: []held{{8080, "udp"}, {8080, "tcp"}},
		},
		{
			name: "listeners of another program",
			setup: func() (string, int, func()) {
				var tl net.Listener
				var ul *net.UDPConn
				readmeInShellNetns(t, sh, func() (err error) {
					if tl, err = net.Listen("tcp", ":8080"); err != nil {
						return err
					}
					ul, err = net.ListenUDP("udp", &net.UDPAddr{Port: knockPort})
					return err
				})
				name := filepath.Base(os.Args[0]) // as ss names it: the first 15 bytes
				return name[:min(15, len(name))], os.Getpid(), func() { tl.Close(); ul.Close() }
			},
			held: []held{{knockPort, "udp"}, {8080, "tcp"}},
		},
	} {
		holder, pid, release := c.setup()
		if release == nil {
			continue
		}
		stdout, out, code := sh.run("./demo.sh", time.Minute)
		release()
		want := []string{"demo.sh: another process holds ports the demo needs; the demo has started nothing:"}
		for _, h := range c.held {
			want = append(want, fmt.Sprintf("   %-9s held by %s (pid %d)", fmt.Sprintf("%d/%s", h.port, h.proto), holder, pid))
		}
		want = append(want,
			fmt.Sprintf("Stop it (kill %d) and run ./demo.sh again.", pid),
			fmt.Sprintf("To see what holds a port: ss -lntup 'sport = :%d' (as root, to see the process).", c.held[0].port))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 1 || len(lines) < len(want)+1 || strings.Join(lines[len(lines)-len(want)-1:len(lines)-1], "\n") != strings.Join(want, "\n") ||
			!strings.HasPrefix(lines[len(lines)-1], "The demo needs these ports free, UDP and TCP: ") ||
			strings.Contains(out, "FAILED") || strings.Contains(stdout, "== ") {
			t.Errorf("%s: demo.sh: exit %d, output:\n%s%s\nwant exit 1 and, at the end:\n%s\nThe demo needs these ports free, UDP and TCP: ...",
				c.name, code, stdout, out, strings.Join(want, "\n"))
		}
	}
}

// The readiness signal that the tests wait for, as a supervisor sees it: READY=1 on NOTIFY_SOCKET
// (a path, or an abstract name as systemd may give), sent when the listening line is already
// written; a socket that cannot be reached costs a warning, not the server.
func TestServeNotifiesReadiness(t *testing.T) {
	listening := func(log string) bool { // the JSON log's listening record
		for _, line := range strings.Split(log, "\n") {
			var rec struct{ Msg, Event string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" && rec.Event == "start" {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		name, socket string
		ready        bool
	}{
		{"a path", filepath.Join(t.TempDir(), "notify"), true},
		{"an abstract name", fmt.Sprintf("@knockknock-test-%d", os.Getpid()), true},
		{"nothing there", filepath.Join(t.TempDir(), "absent"), false},
	} {
		var conn *net.UnixConn
		if c.ready {
			var err error
			if conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: c.socket, Net: "unixgram"}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
		}
		cmd := exec.Command(binPath, "-p", portList([]uint16{freePort(t), freePort(t)}), "--hook", "hooks/log-only.lua", "--log-format", "json")
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+c.socket)
		p := launch(t, cmd)
		if c.ready {
			buf := make([]byte, 64)
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != "READY=1" || !listening(p.stderr.String()) {
				t.Errorf("%s: got %q (%v); want READY=1 after the listening record:\n%s", c.name, buf[:n], err, p.stderr.String())
			}
		} else {
			// The warning follows the listening record: wait for it too, not only for the record.
			waitFor(t, "the listening record", func() bool { return listening(p.stderr.String()) })
			want := `"msg":"cannot notify NOTIFY_SOCKET that the server is ready"`
			waitFor(t, "the warning "+want, func() bool { return strings.Contains(p.stderr.String(), want) })
		}
		if code := p.stop(t); code != 0 {
			t.Errorf("%s: exit %d, want 0:\n%s", c.name, code, p.stderr.String())
		}
	}
}
