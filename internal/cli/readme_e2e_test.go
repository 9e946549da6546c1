package cli_test

// The README's shell examples, run as a user would type them, and its Go
// example held equal to the client package's Example, which runs.
//
// Every ```sh or ```console block of README.md has a marker right above it:
//
//	<!-- readme-test: local
//	exit 1 "./drover run examples/hello.yaml"
//	interrupt "drover logs -f sim": why
//	skip "scripts/test": why
//	serve
//	needs grpcurl jq
//	-->
//
// or <!-- readme-test: skip: why -->. A bed block runs like a local one
// on the multi-host test bed: `hosts node1 node2` names the bed's hosts in
// the block, and `file NAME: CONTENT` writes a one-line file for it. A local block runs in a fresh
// directory that looks like a checkout of this module (its top-level
// entries linked in) with a small ./sim in it, a fresh HOME, and the drover
// built for these tests first on PATH. Each command runs on its own with
// bash and must exit 0 unless `exit N "PREFIX"` says otherwise for the
// commands starting with PREFIX. A command ending in & runs in the
// background; the next one starts once it has printed something (serve
// does when it is ready), and it must have ended when the block has.
// `interrupt` sends Ctrl-C once the command has printed something. `serve`
// starts a drover serve for the block (and shuts it down after); `needs`
// names programs the block runs, and the block skips without them. Each
// directive must match a command of its block, so that a marker and its
// block cannot drift apart.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// snippet is one marked shell block of the README.
type snippet struct {
	line      int // of the opening fence
	mode      string
	why       string   // of a skipped block
	commands  []string // continuation lines joined
	exits     map[string]int
	interrupt map[string]string
	skips     map[string]string
	serve     bool
	needs     []string
	hosts     []string          // placeholders for the bed's hosts, in order
	files     map[string]string // written into the directory first
}

var (
	markerStart = regexp.MustCompile(`^<!-- readme-test: (local|bed|skip: (.+?))(?: -->)?$`)
	directive   = regexp.MustCompile(`^(exit (\d+)|interrupt|skip) "([^"]+)"(?:: (.+))?$`)
)

// readmeSnippets parses README.md's shell blocks and their markers.
func readmeSnippets(t *testing.T, readme string) []*snippet {
	t.Helper()
	lines := strings.Split(readme, "\n")
	var out []*snippet
	var marked *snippet
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if m := markerStart.FindStringSubmatch(l); m != nil {
			marked = &snippet{mode: m[1], exits: map[string]int{}, interrupt: map[string]string{}, skips: map[string]string{}, files: map[string]string{}}
			if m[2] != "" {
				marked.mode, marked.why = "skip", m[2]
			}
			for !strings.HasSuffix(lines[i], "-->") {
				i++
				if i == len(lines) {
					t.Fatalf("README.md:%d: the readme-test marker is not closed", i)
				}
				d := strings.TrimSpace(lines[i])
				switch dm := directive.FindStringSubmatch(d); {
				case d == "-->":
				case d == "serve":
					marked.serve = true
				case strings.HasPrefix(d, "needs "):
					marked.needs = strings.Fields(d)[1:]
				case strings.HasPrefix(d, "hosts "):
					marked.hosts = strings.Fields(d)[1:]
				case strings.HasPrefix(d, "file ") && strings.Contains(d, ": "):
					name, content, _ := strings.Cut(strings.TrimPrefix(d, "file "), ": ")
					marked.files[name] = content + "\n"
				case dm == nil:
					t.Fatalf("README.md:%d: unknown readme-test directive %q", i+1, d)
				case dm[1] == "interrupt":
					marked.interrupt[dm[3]] = dm[4]
				case dm[1] == "skip":
					if dm[4] == "" {
						t.Fatalf("README.md:%d: a skip needs its reason: skip \"PREFIX\": why", i+1)
					}
					marked.skips[dm[3]] = dm[4]
				default:
					marked.exits[dm[3]], _ = strconv.Atoi(dm[2])
				}
			}
			continue
		}
		if !strings.HasPrefix(l, "```") {
			continue
		}
		lang := strings.TrimPrefix(l, "```")
		start := i
		var body []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		if lang != "sh" && lang != "console" {
			marked = nil
			continue
		}
		if marked == nil {
			t.Errorf("README.md:%d: a shell block without a readme-test marker above it", start+1)
			continue
		}
		s := marked
		marked = nil
		s.line = start + 1
		cmd := ""
		for _, b := range body {
			if strings.HasSuffix(b, "\\") {
				cmd += strings.TrimSuffix(b, "\\")
				continue
			}
			cmd += b
			if c := strings.TrimSpace(cmd); c != "" && !strings.HasPrefix(c, "#") {
				s.commands = append(s.commands, c)
			}
			cmd = ""
		}
		out = append(out, s)
	}
	return out
}

// withoutComment drops a trailing "# ..." outside quotes.
func withoutComment(cmd string) string {
	var quote rune
	for i, c := range cmd {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || cmd[i-1] == ' '):
			return strings.TrimSpace(cmd[:i])
		}
	}
	return strings.TrimSpace(cmd)
}

// simScript stands for the user's program ./sim: "./sim N" computes step
// N and ends; "./sim --seed S" runs until stopped, echoing the lines sent
// to its stdin.
const simScript = `#!/bin/sh
echo "sim $*"
[ "$1" = --seed ] || exit 0
while read -r line; do echo "sim got: $line"; done
`

func TestREADMEShellExamples(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	snippets := readmeSnippets(t, string(data))
	if len(snippets) == 0 {
		t.Fatal("README.md has no shell blocks")
	}
	goEnv := map[string]string{}
	for _, k := range []string{"GOCACHE", "GOPATH", "GOMODCACHE"} {
		out, err := exec.Command("go", "env", k).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", k, err)
		}
		goEnv[k] = strings.TrimSpace(string(out))
	}
	for _, s := range snippets {
		t.Run(fmt.Sprintf("README.md:%d", s.line), func(t *testing.T) {
			if s.mode == "skip" {
				t.Logf("not run: %s", s.why)
				return
			}
			// One block at a time: the first go build of a fresh
			// directory compiles the module, and the next one finds it
			// in the build cache.
			runSnippet(t, s, goEnv)
		})
	}
}

func runSnippet(t *testing.T, s *snippet, goEnv map[string]string) {
	for _, prog := range s.needs {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("needs %s, which is not on PATH", prog)
		}
	}
	used := map[string]bool{}
	match := func(cmd string, set map[string]string) (string, bool) {
		for p, v := range set {
			if strings.HasPrefix(cmd, p) {
				used[p] = true
				return v, true
			}
		}
		return "", false
	}

	dir, home := t.TempDir(), t.TempDir()
	entries, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n != ".git" && n != "drover" && !strings.HasPrefix(n, "drover-out") {
			if err := os.Symlink(filepath.Join(repoRoot, n), filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeFile(t, dir, "sim", simScript)
	if err := os.Chmod(filepath.Join(dir, "sim"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(testEnv(), "HOME="+home, "PATH="+filepath.Dir(droverBin)+":"+os.Getenv("PATH"),
		// Without the directory in the build, the module's packages
		// compile once for every fresh directory, not once for each.
		"GOFLAGS=-trimpath", "CGO_ENABLED=0")
	for k, v := range goEnv {
		env = append(env, k+"="+v)
	}
	for name, content := range s.files {
		writeFile(t, dir, name, content)
	}
	if s.mode == "bed" {
		env = bedEnv(t, s, env)
	}

	var background []*shellCmd
	if s.serve {
		background = append(background, startShell(t, dir, env, "drover serve"))
		background[0].waitOutput(t)
	}
	for _, cmd := range s.commands {
		if why, ok := match(cmd, s.skips); ok {
			t.Logf("not run: %s: %s", cmd, why)
			continue
		}
		want := 0
		for p, code := range s.exits {
			if strings.HasPrefix(cmd, p) {
				used[p], want = true, code
			}
		}
		line := withoutComment(cmd)
		if bg, ok := strings.CutSuffix(line, "&"); ok && !strings.HasSuffix(bg, "&") {
			c := startShell(t, dir, env, bg)
			background = append(background, c)
			if !c.waitOutput(t) {
				t.Errorf("%s\nended before it printed anything: exit %d\n%s", cmd, c.status(), c.out)
			}
			continue
		}
		c := startShell(t, dir, env, line)
		if _, ok := match(cmd, s.interrupt); ok && c.waitOutput(t) {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
		}
		if code := c.wait(t); code != want {
			t.Errorf("%s\nexited %d, want %d; its output:\n%s", cmd, code, want, c.out)
		} else {
			t.Logf("%s: exit %d", cmd, code)
		}
	}
	if s.serve {
		if c := startShell(t, dir, env, "drover shutdown"); c.wait(t) != 0 {
			t.Errorf("drover shutdown after the block:\n%s", c.out)
		}
	}
	for _, c := range background {
		if code := c.wait(t); code != 0 {
			t.Errorf("%s (in the background) exited %d; its output:\n%s", c.line, code, c.out)
		}
	}
	for _, set := range []map[string]string{s.interrupt, s.skips} {
		for p := range set {
			if !used[p] {
				t.Errorf("the marker names %q, which no command of the block starts with", p)
			}
		}
	}
	for p := range s.exits {
		if !used[p] {
			t.Errorf("the marker names %q, which no command of the block starts with", p)
		}
	}
}

// bedEnv is env for a block run on the test bed: its hosts answer to the
// block's placeholder names through an ssh first on PATH that reads a
// config naming them (as the user's ~/.ssh/config would), and Slurm
// commands reach the bed's cluster.
func bedEnv(t *testing.T, s *snippet, env []string) []string {
	bed := testbed.Require(t)
	if len(s.hosts) > len(bed.Hosts) {
		t.Fatalf("the block names %d hosts, the bed has %d", len(s.hosts), len(bed.Hosts))
	}
	realSSH, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("needs ssh")
	}
	base, err := os.ReadFile(bed.SSHConfig)
	if err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	for i, name := range s.hosts {
		fmt.Fprintf(&cfg, "Host %s\n  HostName %s\n", name, bed.Hosts[i].Addr)
	}
	cfg.Write(base)
	bin := t.TempDir()
	config := writeFile(t, bin, "ssh_config", cfg.String())
	writeFile(t, bin, "ssh", fmt.Sprintf("#!/bin/sh\nexec %s -F %s \"$@\"\n", realSSH, config))
	if err := os.Chmod(filepath.Join(bin, "ssh"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range env {
		switch {
		case strings.HasPrefix(kv, "PATH="):
			out = append(out, "PATH="+bin+":"+strings.TrimPrefix(kv, "PATH="))
		case !strings.HasPrefix(kv, "SLURM_"):
			out = append(out, kv)
		}
	}
	return append(out, "SLURM_CONF="+bed.SlurmConf)
}

// shellCmd is one README command running under bash in a process group
// of its own.
type shellCmd struct {
	line string
	cmd  *exec.Cmd
	out  *safeBuffer
	done chan struct{}
	err  error
}

func startShell(t *testing.T, dir string, env []string, line string) *shellCmd {
	t.Helper()
	c := &shellCmd{line: line, cmd: exec.Command("bash", "-c", line), out: &safeBuffer{}, done: make(chan struct{})}
	c.cmd.Dir, c.cmd.Env = dir, env
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
	return c
}

// readmeBackstop bounds one command; a first `go build` of the module on
// a busy machine is the slowest.
const readmeBackstop = 10 * time.Minute

// waitOutput waits until the command has printed something (true) or
// ended (false).
func (c *shellCmd) waitOutput(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(readmeBackstop)
	for c.out.String() == "" {
		select {
		case <-c.done:
			return c.out.String() != ""
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed nothing within %s", c.line, readmeBackstop)
		}
	}
	return true
}

// wait returns the exit status, -1 for a signal.
func (c *shellCmd) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(readmeBackstop):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGQUIT)
		<-c.done
		t.Fatalf("%s did not end within %s:\n%s", c.line, readmeBackstop, c.out)
	}
	return c.status()
}

func (c *shellCmd) status() int {
	var ee *exec.ExitError
	switch {
	case c.err == nil:
		return 0
	case errors.As(c.err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// The README's Go block is the body of the client package's Example (which
// go test runs against a serve of its own), so it compiles and works.
func TestREADMEGoExampleIsTheClientExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot, "client", "example_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	sc := bufio.NewScanner(strings.NewReader(string(readme)))
	for sc.Scan() {
		if sc.Text() != "```go" {
			continue
		}
		var b []string
		for sc.Scan() && sc.Text() != "```" {
			b = append(b, sc.Text())
		}
		blocks = append(blocks, strings.Join(b, "\n"))
	}
	_, body, ok := strings.Cut(string(src), "\nfunc Example() {\n")
	body, _, ok2 := strings.Cut(body, "\n\t// Output:")
	if !ok || !ok2 {
		t.Fatal("client/example_test.go has no func Example with an // Output: check")
	}
	var want []string
	for _, l := range strings.Split(body, "\n") {
		want = append(want, strings.TrimPrefix(l, "\t"))
	}
	if len(blocks) != 1 || blocks[0] != strings.Join(want, "\n") {
		t.Errorf("README.md's Go block is not the body of client.Example:\nREADME:\n%s\nExample:\n%s", strings.Join(blocks, "\n---\n"), strings.Join(want, "\n"))
	}
}
