package cli_test

// End-to-end tests of drover serve and the control verbs: a real serve in
// the background with DROVER_HOME in a temporary directory, driven by the
// real binary's verbs.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/creds"
)

// serveJSON is what the verbs read from $DROVER_HOME/serve.json.
type serveJSON struct {
	Address     string          `json:"address"`
	HTTP        string          `json:"http"`
	PID         int             `json:"pid"`
	Host        string          `json:"host"`
	Credentials json.RawMessage `json:"credentials"`
	Token       string          `json:"token"`
	Dashboard   string          `json:"dashboard"`
}

// droverHome runs the binary in dir with DROVER_HOME=home to completion.
func droverHome(t *testing.T, home, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, droverBin, args...)
	cmd.Dir = dir
	cmd.Env = append(testEnv(), "DROVER_HOME="+home)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("drover %q did not finish within the %s backstop\n%s", args, backstop, r)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("drover %q: %v\n%s", args, err, r)
	}
	return r
}

// wantOneLineError checks that r failed with code and one line on stderr
// that matches re.
func wantOneLineError(t *testing.T, r result, code int, re string) {
	t.Helper()
	wantCode(t, r, code)
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !regexp.MustCompile(re).MatchString(lines[0]) {
		t.Errorf("want one line on stderr matching %q, got:\n%s", re, r)
	}
}

// server is a drover serve running in the background.
type server struct {
	cmd    *exec.Cmd
	home   string
	stderr *safeBuffer
	done   chan struct{}
	err    error
	info   serveJSON
}

// startServe starts drover serve with DROVER_HOME=home and waits for its
// serve.json. The test's cleanup stops it if the test did not.
func startServe(t *testing.T, home string, args ...string) *server {
	t.Helper()
	return startServeEnv(t, home, testEnv(), args...)
}

// startServeEnv is startServe with the environment env (DROVER_HOME added).
func startServeEnv(t *testing.T, home string, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(droverBin, append([]string{"serve"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(env, "DROVER_HOME="+home)
	s := &server{cmd: cmd, home: home, stderr: &safeBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.stderr, s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(backstop):
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			<-s.done
			t.Errorf("drover serve did not exit on SIGTERM:\n%s", s.stderr)
		}
	})
	deadline := time.Now().Add(backstop)
	for {
		data, err := os.ReadFile(filepath.Join(home, "serve.json"))
		if err == nil && json.Unmarshal(data, &s.info) == nil && s.info.PID == cmd.Process.Pid {
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("drover serve exited before it wrote serve.json: %v\n%s", s.err, s.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no serve.json within %s\n%s", backstop, s.stderr)
		}
	}
}

// wait waits for serve to exit and returns its exit status.
func (s *server) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(backstop):
		_ = s.cmd.Process.Signal(syscall.SIGQUIT)
		<-s.done
		t.Fatalf("drover serve did not exit within %s:\n%s", backstop, s.stderr)
	}
	var ee *exec.ExitError
	switch {
	case s.err == nil:
		return 0
	case errors.As(s.err, &ee) && ee.Exited():
		return ee.ExitCode()
	}
	t.Fatalf("drover serve: %v\n%s", s.err, s.stderr)
	return -1
}

// descendants lists the live processes below pid, with their names.
func descendants(pid int) map[int]string {
	children := map[int][]int{}
	comm := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(data)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 || fields[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		children[ppid] = append(children[ppid], p)
		comm[p] = s[open+1 : closing]
	}
	out := map[int]string{}
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out[c] = comm[c]
			walk(c)
		}
	}
	walk(pid)
	return out
}

// stillAlive returns those of procs that are still live processes of the
// same name, waiting up to within for them to go.
func stillAlive(procs map[int]string, within time.Duration) []string {
	deadline := time.Now().Add(within)
	for {
		var alive []string
		for pid, name := range procs {
			if state, comm, ok := procState(pid); ok && comm == name && state != 'Z' && state != 'X' {
				alive = append(alive, fmt.Sprintf("%d (%s)", pid, name))
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually retries f until it returns "" or the backstop passes, and
// fails with its last complaint.
func eventually(t *testing.T, f func() string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var pidRE = regexp.MustCompile(`pid (\d+)`)

// Every verb end to end against one serve, then shutdown.
func TestServeVerbs(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	s := startServe(t, home)
	run := func(args ...string) result {
		t.Helper()
		return droverHome(t, home, work, args...)
	}
	ok := func(args ...string) result {
		t.Helper()
		r := run(args...)
		wantCode(t, r, 0)
		return r
	}
	fi, err := os.Stat(filepath.Join(home, "serve.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("serve.json: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if !strings.HasPrefix(s.info.HTTP, "http://") || s.info.Address == "" || len(s.info.Credentials) == 0 {
		t.Fatalf("serve.json lacks something: %+v", s.info)
	}

	// nodes
	var nodes []struct {
		Name      string `json:"name"`
		State     string `json:"state"`
		Resources struct {
			Cores [][]int `json:"cores"`
		} `json:"resources"`
	}
	if err := json.Unmarshal([]byte(ok("nodes", "--json").stdout), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].State != "up" || len(nodes[0].Resources.Cores) == 0 {
		t.Fatalf("nodes --json: %+v", nodes)
	}
	nodeName := nodes[0].Name
	if r := ok("nodes"); !strings.Contains(r.stdout, nodeName) || !strings.Contains(r.stdout, "up") {
		t.Errorf("nodes:\n%s", r)
	}

	// start, poll
	r := ok("start", "--node", nodeName, "--name", "sleeper", "--", "sleep", "300")
	m := pidRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("start prints no pid:\n%s", r)
	}
	sleeperPID, _ := strconv.Atoi(m[1])
	if ok, why := sleepAlive(sleeperPID); !ok {
		t.Fatalf("the sleep started is not running: %s", why)
	}
	if r := ok("poll", "sleeper"); r.stdout != "sleeper running\n" {
		t.Errorf("poll sleeper: %q", r.stdout)
	}
	wantOneLineError(t, run("start", "--node", nodeName, "--name", "sleeper", "--", "true"), 2, `sleeper`)

	// send, logs
	ok("start", "--node", nodeName, "--name", "echo", "--", "cat")
	ok("send", "echo", "hello drover")
	eventually(t, func() string {
		if r := ok("logs", "echo"); r.stdout != "hello drover\n" {
			return fmt.Sprintf("logs echo after send: %q", r.stdout)
		}
		return ""
	})
	ok("start", "--node", nodeName, "--name", "talker", "--", "sh", "-c", "echo out; echo err >&2; sleep 0.3; echo more")
	if r := ok("logs", "-f", "talker"); r.stdout != "out\nmore\n" {
		t.Errorf("logs -f talker: %q", r.stdout)
	}
	if r := ok("logs", "--stderr", "talker"); r.stdout != "err\n" {
		t.Errorf("logs --stderr talker: %q", r.stdout)
	}

	// env, and a relative --stdout lands here
	ok("env", "set", "--node", nodeName, "DROVER_E2E_VAR", "forty two")
	if r := ok("env", "get", "--node", nodeName, "DROVER_E2E_VAR"); r.stdout != "forty two\n" {
		t.Errorf("env get: %q", r.stdout)
	}
	wantCode(t, run("env", "get", "--node", nodeName, "DROVER_E2E_UNSET"), 1)
	ok("start", "--node", nodeName, "--name", "env", "--stdout", "env.out", "--env", "MINE=own", "--",
		"sh", "-c", `echo "$DROVER_E2E_VAR/$MINE"`)

	// stop, kill, finished, purge
	ok("stop", "sleeper")
	eventually(t, func() string {
		if r := ok("poll", "sleeper"); r.stdout != "sleeper signal SIGTERM\n" {
			return fmt.Sprintf("poll after stop: %q", r.stdout)
		}
		return ""
	})
	ok("kill", "echo")
	eventually(t, func() string {
		if r := ok("poll", "echo", "env", "talker"); r.stdout != "echo signal SIGKILL\nenv exit 0\ntalker exit 0\n" {
			return fmt.Sprintf("poll after kill: %q", r.stdout)
		}
		return ""
	})
	got := strings.Split(strings.TrimSpace(ok("finished").stdout), "\n")
	slices.Sort(got)
	if want := []string{"echo signal SIGKILL", "env exit 0", "sleeper signal SIGTERM", "talker exit 0"}; !slices.Equal(got, want) {
		t.Errorf("finished: %q, want %q", got, want)
	}
	if r := ok("finished"); r.stdout != "" {
		t.Errorf("a second finished repeats exits: %q", r.stdout)
	}
	// --wait returns the next exit as it comes (a minute is only a bound).
	ok("start", "--node", nodeName, "--name", "later", "--", "sh", "-c", "sleep 0.3; exit 4")
	if r := ok("finished", "--wait", "1m"); r.stdout != "later exit 4\n" {
		t.Errorf("finished --wait: %q", r.stdout)
	}
	wantCode(t, run("finished", "--wait", "-1s"), 2)
	if data := readFile(t, filepath.Join(work, "env.out")); data != "forty two/own\n" {
		t.Errorf("env.out (relative --stdout): %q", data)
	}
	ok("purge", "sleeper")
	wantOneLineError(t, run("poll", "sleeper"), 2, `unknown process`)
	ok("start", "--node", nodeName, "--name", "sleeper", "--", "sleep", "300") // the name is free again
	wantOneLineError(t, run("purge", "sleeper"), 1, `running`)

	// ports, log level
	ports := strings.Fields(ok("ports", "bind", "--node", nodeName, "-n", "2").stdout)
	if len(ports) != 2 || ports[0] == ports[1] {
		t.Fatalf("ports bind -n 2: %q", ports)
	}
	for _, p := range ports {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			t.Errorf("not a port: %q", p)
		}
	}
	ok(append([]string{"ports", "release", "--node", nodeName}, ports...)...)
	if r := run(append([]string{"ports", "release", "--node", nodeName}, ports...)...); r.code == 0 {
		t.Errorf("releasing ports twice succeeded:\n%s", r)
	}
	ok("log-level", "--node", nodeName, "debug")
	ok("log-level", "--node", nodeName, "warn")
	wantOneLineError(t, run("log-level", "--node", nodeName, "loud"), 2, `debug, info, warn or error`)

	// unknown names and nodes
	for _, args := range [][]string{
		{"stop", "nosuch"}, {"kill", "nosuch"}, {"purge", "nosuch"}, {"send", "nosuch", "x"},
		{"logs", "nosuch"}, {"poll", "nosuch"},
	} {
		wantOneLineError(t, run(args...), 2, `nosuch.*unknown process|unknown process.*nosuch`)
	}
	for _, args := range [][]string{
		{"start", "--node", "nosuchnode", "--name", "x", "--", "true"},
		{"env", "get", "--node", "nosuchnode", "K"},
		{"env", "set", "--node", "nosuchnode", "K", "V"},
		{"ports", "bind", "--node", "nosuchnode"},
		{"log-level", "--node", "nosuchnode", "info"},
	} {
		wantOneLineError(t, run(args...), 2, `nosuchnode.*unknown node|unknown node.*nosuchnode`)
	}

	// submit, jobs
	jobDir := t.TempDir()
	writeFile(t, jobDir, "jobs.yaml", "jobs:\n  - name: greet\n    command: [sh, -c, 'echo hello $DROVER_INSTANCE']\n")
	if r := droverHome(t, home, jobDir, "submit", "jobs.yaml"); r.code != 0 || !strings.Contains(r.stdout, "greet") {
		t.Fatalf("submit:\n%s", r)
	}
	type job struct {
		Instance string `json:"instance"`
		State    string `json:"state"`
		OutDir   string `json:"out_dir"`
	}
	var jobs []job
	eventually(t, func() string {
		jobs = nil
		if err := json.Unmarshal([]byte(ok("jobs", "--json").stdout), &jobs); err != nil {
			return err.Error()
		}
		if len(jobs) != 1 || jobs[0].State != "succeeded" {
			return fmt.Sprintf("jobs: %+v, want greet succeeded", jobs)
		}
		return ""
	})
	if out := readFile(t, filepath.Join(jobs[0].OutDir, "stdout")); out != "hello greet\n" {
		t.Errorf("the job's stdout: %q", out)
	}
	if r := ok("jobs"); !strings.Contains(r.stdout, "greet") || !strings.Contains(r.stdout, "succeeded") {
		t.Errorf("jobs:\n%s", r)
	}
	writeFile(t, jobDir, "bad.yaml", "jobs:\n  - name: bad\n    command: [x]\n    cores: many\n")
	if r := droverHome(t, home, jobDir, "submit", "bad.yaml"); r.code != 2 || !strings.Contains(r.stderr, "bad.yaml:4:") {
		t.Errorf("submit of a bad job file: want exit 2 with bad.yaml:4:COL\n%s", r)
	}

	// cancel-all
	ok("start", "--node", nodeName, "--name", "c1", "--", "sleep", "300")
	ok("start", "--node", nodeName, "--name", "c2", "--", "sleep", "300")
	ok("cancel-all", "--grace", "5s")
	eventually(t, func() string {
		if r := ok("poll", "c1", "c2", "sleeper"); r.stdout != "c1 signal SIGTERM\nc2 signal SIGTERM\nsleeper signal SIGTERM\n" {
			return fmt.Sprintf("poll after cancel-all: %q", r.stdout)
		}
		return ""
	})

	// the status page
	resp := s.dash().get(t, "/")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), nodeName) || !strings.Contains(string(body), "greet") {
		t.Errorf("status page: %s\n%s", resp.Status, body)
	}
	for _, req := range []struct{ method, path string }{{"GET", "/nope"}, {"POST", "/"}} {
		hr, _ := http.NewRequest(req.method, s.info.HTTP+req.path, nil)
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s: %s", req.method, req.path, resp.Status)
		}
	}

	// A second serve on the same home is refused.
	r = droverHome(t, home, work, "serve")
	wantOneLineError(t, r, 1, fmt.Sprintf(`already running \(pid %d, %s\)`, s.info.PID, regexp.QuoteMeta(s.info.Address)))

	// Credentials of another run are refused.
	for _, keepCA := range []bool{false, true} {
		other := filepath.Join(t.TempDir(), "other")
		tamperCredentials(t, home, other, keepCA)
		wantOneLineError(t, droverHome(t, other, work, "nodes"), 1, `refused`)
		wantOneLineError(t, droverHome(t, other, work, "nodes", "--manager", s.info.Address), 1, `refused`)
	}

	// --manager with the right credentials works.
	ok("poll", "--manager", s.info.Address)

	// Garbage on the manager's port is refused and serve goes on.
	for _, junk := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00"} {
		conn, err := net.Dial("tcp", s.info.Address)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		_, _ = io.WriteString(conn, junk)
		_, err = io.Copy(io.Discard, conn)
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("serve kept a garbage connection open")
		}
	}
	ok("nodes")

	// shutdown: processes, agent and serve go; serve.json is removed.
	ok("start", "--node", nodeName, "--name", "last", "--", "sleep", "300")
	procs := descendants(s.info.PID)
	if !slices.Contains(slices.Collect(maps.Values(procs)), "sleep") {
		t.Fatalf("no sleep below serve: %v", procs)
	}
	ok("shutdown")
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exited %d after shutdown:\n%s", code, s.stderr)
	}
	if alive := stillAlive(procs, 10*time.Second); len(alive) > 0 {
		t.Errorf("left behind after shutdown: %v", alive)
	}
	wantNotExist(t, filepath.Join(home, "serve.json"))
	wantOneLineError(t, run("nodes"), 1, `no drover serve is running .*start one with drover serve`)
}

// tamperCredentials writes to dst/serve.json a copy of src's with a client
// certificate of another CA, and that CA too unless keepCA.
func tamperCredentials(t *testing.T, src, dst string, keepCA bool) {
	t.Helper()
	var info map[string]any
	if err := creds.ReadFile(filepath.Join(src, "serve.json"), &info); err != nil {
		t.Fatal(err)
	}
	ca, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Issue(creds.RoleClient, "mallory", nil)
	if err != nil {
		t.Fatal(err)
	}
	if keepCA {
		b.CA = info["credentials"].(map[string]any)["ca"].(string)
	}
	info["credentials"] = b
	if err := creds.WriteFile(filepath.Join(dst, "serve.json"), info); err != nil {
		t.Fatal(err)
	}
}

// SIGINT (or SIGTERM) to serve stops everything and exits 0.
func TestServeSignal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		grace string
		twice bool // a second signal kills at once
	}{
		{"SIGINT", syscall.SIGINT, "2s", false},
		{"SIGTERM", syscall.SIGTERM, "2s", false},
		{"second SIGINT", syscall.SIGINT, "1h", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			s := startServe(t, home, "--grace", tc.grace)
			r := droverHome(t, home, home, "nodes", "--json")
			wantCode(t, r, 0)
			var nodes []struct{ Name string }
			if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil || len(nodes) != 1 {
				t.Fatalf("nodes: %v\n%s", err, r)
			}
			// One ignores SIGTERM: the grace ends it.
			wantCode(t, droverHome(t, home, home, "start", "--node", nodes[0].Name, "--name", "stubborn", "--",
				"sh", "-c", `trap "" TERM; sleep 300 & wait; sleep 300`), 0)
			wantCode(t, droverHome(t, home, home, "start", "--node", nodes[0].Name, "--name", "plain", "--", "sleep", "300"), 0)
			procs := descendants(s.info.PID)
			if len(procs) < 3 {
				t.Fatalf("want an agent and its processes below serve, got %v", procs)
			}
			if err := s.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			if tc.twice {
				time.Sleep(200 * time.Millisecond)
				if err := s.cmd.Process.Signal(tc.sig); err != nil {
					t.Fatal(err)
				}
			}
			if code := s.wait(t); code != 0 {
				t.Errorf("serve exited %d on %s:\n%s", code, tc.name, s.stderr)
			}
			if alive := stillAlive(procs, 10*time.Second); len(alive) > 0 {
				t.Errorf("left behind: %v", alive)
			}
			wantNotExist(t, filepath.Join(home, "serve.json"))
		})
	}
}

// writeServeJSON writes a serve.json for a serve that is not there.
func writeServeJSON(t *testing.T, home string, pid int, addr string) {
	t.Helper()
	ca, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Issue(creds.RoleClient, "client", nil)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if err := creds.WriteFile(filepath.Join(home, "serve.json"), map[string]any{
		"address": addr, "http": "http://127.0.0.1:1", "pid": pid, "host": host, "credentials": b,
	}); err != nil {
		t.Fatal(err)
	}
}

// deadPID is the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// Without a serve every verb exits 1 and says what to do.
func TestVerbsWithoutServe(t *testing.T) {
	t.Parallel()
	t.Run("no serve.json", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		for _, args := range [][]string{{"nodes"}, {"poll"}, {"finished"}, {"shutdown"}, {"stop", "x"}} {
			wantOneLineError(t, droverHome(t, home, home, args...), 1,
				`no drover serve is running \(DROVER_HOME=`+regexp.QuoteMeta(home)+`\): start one with drover serve`)
		}
	})
	t.Run("stale serve.json", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		pid := deadPID(t)
		writeServeJSON(t, home, pid, closedPort(t))
		wantOneLineError(t, droverHome(t, home, home, "nodes"), 1,
			fmt.Sprintf(`no drover serve is running .*stale: pid %d has exited.*start one with drover serve`, pid))
	})
	t.Run("nothing listening", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		// A live pid, but no serve at the address.
		writeServeJSON(t, home, os.Getpid(), closedPort(t))
		wantOneLineError(t, droverHome(t, home, home, "poll"), 1, `no drover serve answers at .*start one with drover serve`)
	})
	t.Run("bad usage before anything", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		for _, args := range [][]string{
			{"start", "--name", "x", "--", "true"},
			{"start", "--node", "n", "--", "true"},
			{"start", "--node", "n", "--name", "x"},
			{"start", "--node", "n", "--name", "x", "--env", "NOEQUALS", "--", "true"},
			{"stop"}, {"kill", "a", "b"}, {"send", "x"}, {"logs"},
			{"env"}, {"env", "get", "K"}, {"env", "set", "--node", "n", "K"},
			{"ports"}, {"ports", "bind"}, {"ports", "bind", "--node", "n", "-n", "0"},
			{"ports", "release", "--node", "n", "http"},
			{"log-level", "--node", "n", "loud"},
			{"submit"}, {"finished", "x"}, {"nodes", "--bogus"},
		} {
			r := droverHome(t, home, home, args...)
			if r.code != 2 {
				t.Errorf("drover %q: want exit 2\n%s", args, r)
			}
		}
		writeFile(t, home, "bad.yaml", "jobs:\n  - name: a\n")
		wantOneLineError(t, droverHome(t, home, home, "submit", "bad.yaml"), 2, `bad\.yaml:2:\d+: `)
	})
}

// A stale serve.json does not keep a new serve from starting.
func TestServeReplacesStaleServeJSON(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	writeServeJSON(t, home, deadPID(t), closedPort(t))
	s := startServe(t, home)
	wantCode(t, droverHome(t, home, home, "nodes"), 0)
	wantCode(t, droverHome(t, home, home, "shutdown"), 0)
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exited %d:\n%s", code, s.stderr)
	}
}

// A serve.json whose process lives and whose address answers keeps a new
// serve from starting, even when no lock says so.
func TestServeRefusesWhenServeJSONIsLive(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	writeServeJSON(t, home, os.Getpid(), lis.Addr().String())
	r := droverHome(t, home, home, "serve")
	wantOneLineError(t, r, 1, fmt.Sprintf(`a drover serve is already running \(pid %d, %s\)`, os.Getpid(), regexp.QuoteMeta(lis.Addr().String())))
}
