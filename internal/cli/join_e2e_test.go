package cli_test

// End-to-end tests of the static join: a real drover serve, `drover token`
// and real `drover agent --join` processes, all on loopback.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// joinToken is what `drover token --json` prints.
type joinToken struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
	Address string    `json:"address"`
}

func newJoinToken(t *testing.T, home string, args ...string) joinToken {
	t.Helper()
	r := droverHome(t, home, t.TempDir(), append([]string{"token", "--json"}, args...)...)
	wantCode(t, r, 0)
	var tok joinToken
	if err := json.Unmarshal([]byte(r.stdout), &tok); err != nil {
		t.Fatalf("token --json: %v\n%s", err, r)
	}
	if !strings.HasPrefix(tok.Token, "drover1.") || tok.Address == "" || tok.Expires.IsZero() {
		t.Fatalf("token --json lacks something: %+v", tok)
	}
	return tok
}

// secretOf is the secret part of a token, what must never show.
func secretOf(tok string) string { return strings.Split(tok, ".")[2] }

// joinedAgent is a `drover agent --join` running in the background.
type joinedAgent struct {
	cmd    *exec.Cmd
	stderr *safeBuffer
	done   chan struct{}
	err    error
}

// startJoin starts `drover agent --join` with DROVER_HOME=home (its state
// directory is under it) and stdin from in; the test's cleanup stops it.
func startJoin(t *testing.T, home string, in io.Reader, args ...string) *joinedAgent {
	t.Helper()
	return startJoinAt(t, "info", home, in, args...)
}

// startJoinAt is startJoin with a log level.
func startJoinAt(t *testing.T, level, home string, in io.Reader, args ...string) *joinedAgent {
	t.Helper()
	cmd := exec.Command(droverBin, append([]string{"agent", "--log-level", level, "--join"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(testEnv(), "DROVER_HOME="+home)
	cmd.Stdin = in
	a := &joinedAgent{cmd: cmd, stderr: &safeBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = a.stderr, a.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop ends the agent with SIGTERM and returns its exit status.
func (a *joinedAgent) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-a.done:
	default:
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(backstop):
			_ = a.cmd.Process.Signal(syscall.SIGQUIT)
			<-a.done
			t.Errorf("drover agent --join did not exit on SIGTERM:\n%s", a.stderr)
		}
	}
	var ee *exec.ExitError
	if errors.As(a.err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// proper is the pid of the agent proper, the guard's child.
func (a *joinedAgent) proper(t *testing.T) int {
	t.Helper()
	var pid int
	eventually(t, func() string {
		// The guard's only drover descendant: its jobs run below it.
		for p, comm := range descendants(a.cmd.Process.Pid) {
			if comm == "drover" {
				pid = p
				return ""
			}
		}
		return "the agent guard has no child"
	})
	return pid
}

// nodeStates is `drover nodes --json` as name -> state.
func nodeStates(t *testing.T, home string) map[string]string {
	t.Helper()
	r := droverHome(t, home, t.TempDir(), "nodes", "--json")
	wantCode(t, r, 0)
	var nodes []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil {
		t.Fatalf("nodes --json: %v\n%s", err, r)
	}
	out := map[string]string{}
	for _, n := range nodes {
		out[n.Name] = n.State
	}
	return out
}

func waitNodeState(t *testing.T, home, name, state string, a *joinedAgent) {
	t.Helper()
	eventually(t, func() string {
		if got := nodeStates(t, home)[name]; got != state {
			return fmt.Sprintf("node %s is %q, want %q; agent:\n%s", name, got, state, a.stderr)
		}
		return ""
	})
}

// runsOn starts a sleep named name on node and checks that it runs below
// the agent a, then kills it.
func runsOn(t *testing.T, home, node, name string, a *joinedAgent) {
	t.Helper()
	work := t.TempDir()
	r := droverHome(t, home, work, "start", "--node", node, "--name", name, "--", "sleep", "300")
	wantCode(t, r, 0)
	m := pidRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("start prints no pid:\n%s", r)
	}
	pid, _ := strconv.Atoi(m[1])
	if _, ok := descendants(a.cmd.Process.Pid)[pid]; !ok {
		t.Fatalf("process %s (pid %d) does not run below the joined agent %d", name, pid, a.cmd.Process.Pid)
	}
	wantCode(t, droverHome(t, home, work, "kill", name), 0)
	eventually(t, func() string {
		if r := droverHome(t, home, work, "poll", name); r.stdout != name+" signal SIGKILL\n" {
			return fmt.Sprintf("poll %s after kill: %q", name, r.stdout)
		}
		return ""
	})
}

// A node joins with a token under its --name and runs what is started on
// it; the token is spent, and nothing of it shows in the agent's argv or
// environment.
func TestJoinRunsProcessAndTokenServesOnce(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "serve")
	s := startServe(t, home, "--log-level", "info")
	tok := newJoinToken(t, home)
	if d := time.Until(tok.Expires); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("default token expires in %v, want 10m", d)
	}
	agentHome := filepath.Join(t.TempDir(), "node")
	a := startJoin(t, agentHome, strings.NewReader(tok.Token+"\n"), tok.Address, "--name", "joined1")
	waitNodeState(t, home, "joined1", "up", a)
	runsOn(t, home, "joined1", "j1sleep", a)

	secret := secretOf(tok.Token)
	for _, pid := range []int{a.cmd.Process.Pid, a.proper(t)} {
		for _, f := range []string{"cmdline", "environ"} {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), secret) {
				t.Errorf("the token is in /proc/%d/%s", pid, f)
			}
		}
	}
	state := filepath.Join(agentHome, "join", "agent.json")
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stored credentials %s: %v (want mode 0600)", state, err)
	}
	if strings.Contains(readFile(t, state), secret) {
		t.Error("the token's secret is stored")
	}
	if strings.Contains(s.stderr.String(), secret) || strings.Contains(a.stderr.String(), secret) {
		t.Error("the token's secret is in a log")
	}

	// The same token again: refused, one line, nothing joins.
	r := joinOnce(t, filepath.Join(t.TempDir(), "node2"), tok.Token+"\n", tok.Address, "--name", "joined2")
	wantOneLineError(t, r, 1, `^drover: join .*: enrolment refused: the token was used already`)
	if st, ok := nodeStates(t, home)["joined2"]; ok {
		t.Errorf("joined2 is in the nodes (%s) after a refused join", st)
	}
	if !strings.Contains(s.stderr.String(), "join: enrolment refused") {
		t.Errorf("serve did not log the refusal:\n%s", s.stderr)
	}

	// Plain output: the token alone on stdout, where and when on stderr.
	r = droverHome(t, home, t.TempDir(), "token", "--ttl", "1m")
	wantCode(t, r, 0)
	if !regexp.MustCompile(`^drover1\.[^.\s]+\.[^.\s]+\.[^.\s]+\n$`).MatchString(r.stdout) || !strings.Contains(r.stderr, tok.Address) {
		t.Errorf("token:\n%s", r)
	}
	wantOneLineError(t, droverHome(t, home, t.TempDir(), "token", "--ttl", "0s"), 2, `--ttl`)
}

// joinOnce runs `drover agent --join` to completion with stdin in.
func joinOnce(t *testing.T, home, in string, args ...string) result {
	t.Helper()
	a := startJoinAt(t, "warn", home, strings.NewReader(in), args...)
	select {
	case <-a.done:
	case <-time.After(backstop):
		t.Fatalf("drover agent --join %q did not finish:\n%s", args, a.stderr)
	}
	r := result{stderr: a.stderr.String()}
	var ee *exec.ExitError
	if errors.As(a.err, &ee) {
		r.code = ee.ExitCode()
	}
	return r
}

// Expired tokens, another serve's token, garbage and no token at all are
// refused with one line, and nothing joins.
func TestJoinRefusals(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "serve")
	s := startServe(t, home, "--log-level", "info")
	otherHome := filepath.Join(t.TempDir(), "other")
	startServe(t, otherHome)

	expired := newJoinToken(t, home, "--ttl", "1s")
	for time.Now().Before(expired.Expires.Add(100 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}
	r := joinOnce(t, filepath.Join(t.TempDir(), "n1"), expired.Token, expired.Address, "--name", "late")
	wantOneLineError(t, r, 1, `^drover: join .*: enrolment refused: the token expired`)

	// A token of the other serve, given to this one: the agent finds the
	// CA is not the token's and sends nothing.
	foreign := newJoinToken(t, otherHome)
	addr := newJoinToken(t, home).Address
	before := strings.Count(s.stderr.String(), "enrolment attempt")
	r = joinOnce(t, filepath.Join(t.TempDir(), "n2"), foreign.Token, addr, "--name", "foreign")
	wantOneLineError(t, r, 1, `^drover: join .*: the server is not the serve that made the token`)
	if after := strings.Count(s.stderr.String(), "enrolment attempt"); after != before {
		t.Errorf("serve saw an enrolment with another serve's token:\n%s", s.stderr)
	}

	for _, in := range []string{"garbage\n", "drover1.a.b.c\n", strings.Repeat("x", 10000)} {
		r = joinOnce(t, filepath.Join(t.TempDir(), "n3"), in, addr, "--name", "junk")
		wantOneLineError(t, r, 2, `^drover: the token on stdin: not a drover join token`)
	}
	r = joinOnce(t, filepath.Join(t.TempDir(), "n4"), "", addr, "--name", "none")
	wantOneLineError(t, r, 2, `^drover: no token`)
	r = joinOnce(t, filepath.Join(t.TempDir(), "n5"), "", "nowhere", "--name", "none")
	wantOneLineError(t, r, 2, `--join`)
	// Without --name a node is named by its host name, here that of
	// serve's own node, which is up: the name cannot be taken.
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := nodeStates(t, home)[host]; !ok {
		t.Fatalf("serve's node is not named %s: %v", host, nodeStates(t, home))
	}
	tok := newJoinToken(t, home)
	r = joinOnce(t, filepath.Join(t.TempDir(), "n6"), tok.Token, tok.Address)
	wantOneLineError(t, r, 1, `enrolment refused: node `+regexp.QuoteMeta(host)+` is up already`)

	states := nodeStates(t, home)
	if len(states) != 1 {
		t.Errorf("nodes after refused joins: %v", states)
	}
	if strings.Count(s.stderr.String(), "node enrolled") != 0 {
		t.Errorf("serve enrolled a node:\n%s", s.stderr)
	}
}

// A joined node that serve gives up (it was stopped longer than the node
// timeout) joins again by itself with its stored certificate, and a new
// agent process of that node joins with it too, without a token.
func TestJoinedNodeRejoins(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "serve")
	s := startServe(t, home, "--log-level", "info", "--node-timeout", "2s")
	tok := newJoinToken(t, home)
	agentHome := filepath.Join(t.TempDir(), "node")
	a := startJoin(t, agentHome, strings.NewReader(tok.Token), tok.Address, "--name", "rj")
	waitNodeState(t, home, "rj", "up", a)

	pid := a.proper(t)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitNodeState(t, home, "rj", "lost", a)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitNodeState(t, home, "rj", "up", a)
	runsOn(t, home, "rj", "after-drop", a)
	if a.proper(t) != pid {
		t.Error("the agent proper was replaced; it should have rejoined by itself")
	}

	// A new agent process with no token: the stored credentials.
	if code := a.stop(t); code != 0 {
		t.Errorf("agent exit status %d on SIGTERM:\n%s", code, a.stderr)
	}
	waitNodeState(t, home, "rj", "lost", a)
	b := startJoin(t, agentHome, strings.NewReader(""), tok.Address)
	waitNodeState(t, home, "rj", "up", b)
	runsOn(t, home, "rj", "after-restart", b)
	if n := strings.Count(s.stderr.String(), "join: node enrolled"); n != 1 {
		t.Errorf("%d enrolments, want 1 (rejoins use the stored certificate)", n)
	}
}

// A node's stored certificate is of its serve's CA: a new serve at the
// same addresses refuses it, and the agent says so in one line.
func TestJoinedNodeAfterNewServe(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "serve")
	listen, joinAt := closedPort(t), closedPort(t)
	s := startServe(t, home, "--listen", listen, "--join-listen", joinAt)
	tok := newJoinToken(t, home)
	if tok.Address != joinAt {
		t.Errorf("token address %s, want --join-listen %s", tok.Address, joinAt)
	}
	agentHome := filepath.Join(t.TempDir(), "node")
	tokenFile := writeFile(t, t.TempDir(), "token", tok.Token+"\n")
	a := startJoin(t, agentHome, strings.NewReader(""), tok.Address, "--name", "nj", "--token-file", tokenFile)
	waitNodeState(t, home, "nj", "up", a)
	wantCode(t, droverHome(t, home, t.TempDir(), "shutdown"), 0)
	if code := s.wait(t); code != 0 {
		t.Fatalf("serve exit status %d", code)
	}
	select {
	case <-a.done:
	case <-time.After(backstop):
		t.Fatalf("the joined agent did not exit when serve shut down:\n%s", a.stderr)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("joined agent exit status %d after serve's shutdown:\n%s", code, a.stderr)
	}

	startServe(t, home, "--listen", listen, "--join-listen", joinAt)
	r := joinOnce(t, agentHome, "", joinAt)
	wantOneLineError(t, r, 1, `^drover: serve at .* no longer accepts node nj's certificate .*new token`)
	if _, ok := nodeStates(t, home)["nj"]; ok {
		t.Error("nj joined the new serve with the old certificate")
	}
}
