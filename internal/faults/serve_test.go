package faults_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/creds"
)

// serveInfo is what the tests need of $DROVER_HOME/serve.json.
type serveInfo struct {
	Address     string `json:"address"`
	PID         int    `json:"pid"`
	Host        string `json:"host"`
	Credentials struct {
		CA   string `json:"ca"`
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"credentials"`
}

// server is a drover serve in the background with its own DROVER_HOME.
type server struct {
	*proc
	home string
	info serveInfo
}

// startServe starts drover serve with a fresh DROVER_HOME and waits for
// its serve.json.
func startServe(t *testing.T, flags ...string) *server {
	t.Helper()
	home := t.TempDir()
	p := startDrover(t, t.TempDir(), []string{"DROVER_HOME=" + home}, append([]string{"serve"}, flags...)...)
	s := &server{proc: p, home: home}
	deadline := time.Now().Add(backstop)
	for {
		data, err := os.ReadFile(filepath.Join(home, "serve.json"))
		if err == nil && json.Unmarshal(data, &s.info) == nil && s.info.PID == p.PID() {
			return s
		}
		if !p.Running() || time.Now().After(deadline) {
			t.Fatalf("drover serve wrote no serve.json\n%s", p.Out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verb runs a control verb against s to completion.
func (s *server) verb(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, droverBin, args...)
	cmd.Env = append(baseEnv(), "DROVER_HOME="+s.home)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("drover %q did not finish within %s:\n%s", args, backstop, out)
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("drover %q: %v\n%s", args, err, out)
	}
	return -1, ""
}

// mustVerb runs a verb that must succeed.
func (s *server) mustVerb(t *testing.T, args ...string) string {
	t.Helper()
	code, out := s.verb(t, args...)
	if code != 0 {
		t.Fatalf("drover %q exited %d:\n%s\n--- serve:\n%s", args, code, out, s.Out)
	}
	return out
}

// startSleepers starts n sleeper processes p0, p1, ... with drover start
// and waits until they run.
func (s *server) startSleepers(t *testing.T, n int) ([]string, []jobProc) {
	t.Helper()
	pids := t.TempDir()
	var names []string
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		names = append(names, name)
		s.mustVerb(t, "start", "--node", s.info.Host, "--name", name, "--", "sh", "-c", sleeperScript(pids, name))
	}
	return names, waitJobs(t, s.proc, pids, n)
}

// drover serve SIGKILLed: the agent stops every process and exits.
func TestServeSIGKILL(t *testing.T) {
	t.Parallel()
	const monitor, grace = 3 * time.Second, time.Second
	s := startServe(t, "--monitor-timeout", monitor.String(), "--grace", grace.String())
	_, jobs := s.startSleepers(t, 3)
	agent := findAgent(t, s.proc)

	killed := time.Now()
	if err := s.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	s.Wait(t, backstop)
	agentGone := waitAgentGone(t, agent, monitor+grace+slack)
	alive, _ := waitGone(jobs, monitor+grace+slack-time.Since(killed))
	t.Logf("drover serve SIGKILLed: agent exited %v later, job processes gone %v later (monitor-timeout %v, grace %v)",
		agentGone.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), monitor, grace)
	if len(alive) > 0 {
		t.Errorf("processes still alive %v after serve was killed: %v", time.Since(killed), alive)
	}
}

// A serve's agent stopped for longer than --node-timeout: serve declares
// the node lost and reports each process once; the agent, resumed, is
// refused as given up (its stdin lifeline is still open: serve lives),
// stops its processes and exits.
func TestServeAgentSIGSTOPLong(t *testing.T) {
	t.Parallel()
	const nodeTimeout, monitor, pause = time.Second, 30 * time.Second, 3 * time.Second
	s := startServe(t, "--log-level", "info", "--node-timeout", nodeTimeout.String(), "--monitor-timeout", monitor.String(), "--grace", "1s")
	names, jobs := s.startSleepers(t, 2)
	agent := findAgent(t, s.proc)

	if err := unix.Kill(agent, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	time.Sleep(pause)
	if err := unix.Kill(agent, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	waitAgentGone(t, agent, slack)
	t.Logf("agent stopped %v (node-timeout %v, monitor-timeout %v); it exited %v after SIGCONT",
		resumed.Sub(stopped).Round(time.Millisecond), nodeTimeout, monitor, time.Since(resumed).Round(time.Millisecond))
	if alive, _ := waitGone(jobs, slack); len(alive) > 0 {
		t.Errorf("processes still alive after the agent exited: %v", alive)
	}
	for line := range strings.Lines(s.Out.String()) {
		if strings.Contains(line, "stopping every process") || strings.Contains(line, "given up") || strings.Contains(line, "node lost") {
			t.Logf("serve/agent: %s", strings.TrimSpace(line))
		}
	}

	// Each process finished exactly once, over two calls of finished.
	seen := map[string]int{}
	for range 2 {
		for line := range strings.Lines(s.mustVerb(t, "finished")) {
			if f := strings.Fields(line); len(f) > 0 {
				seen[f[0]]++
			}
		}
	}
	for _, n := range names {
		if seen[n] != 1 {
			t.Errorf("drover finished reported %s %d times, want once (all: %v)", n, seen[n], seen)
		}
	}
	nodes := s.mustVerb(t, "nodes")
	t.Logf("drover nodes after the loss:\n%s", nodes)
	// Lost, or relaunched already: either way the reason shows.
	if !strings.Contains(nodes, "no message from its agent") {
		t.Errorf("drover nodes does not show why the node was lost:\n%s", nodes)
	}
	if !s.Running() {
		t.Errorf("drover serve exited after losing its node:\n%s", s.Out)
	}
}

// Garbage and unauthenticated TLS on serve's address are refused, and
// serve goes on working.
func TestServeRefusesStrangers(t *testing.T) {
	t.Parallel()
	s := startServe(t)
	addr := s.info.Address

	// refused checks that the server ends conn (or the TLS handshake
	// fails) without answering anything that looks like a service.
	refused := func(what string, conn net.Conn) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(backstop))
		data, err := io.ReadAll(conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the server neither answered nor closed the connection within %s", what, backstop)
		}
		t.Logf("%s: refused (%d bytes back, %v)", what, len(data), err)
		conn.Close()
	}

	// An idle connection stays open through all of it: it must not
	// block anyone.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close() // closed before SIGTERM below: see TestServeStopsWithIdleConnection

	for _, garbage := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: drover\r\n\r\n"),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
		[]byte("\x16\x03\x01\xff\xff" + strings.Repeat("\xde\xad\xbe\xef", 4096)),
		make([]byte, 1<<16),
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(garbage); err != nil {
			t.Logf("write garbage: %v", err)
		}
		refused(fmt.Sprintf("%d bytes of garbage (%q...)", len(garbage), garbage[:min(8, len(garbage))]), conn)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(s.info.Credentials.CA)) {
		t.Fatal("serve.json: no CA certificate")
	}
	otherCA, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := otherCA.Issue(creds.RoleClient, "drover-client", nil)
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, err := stranger.TLS()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		cert *tls.Certificate
	}{
		{"TLS without a client certificate", nil},
		{"TLS with a client certificate of another CA", &strangerCert},
	} {
		conf := &tls.Config{RootCAs: pool, ServerName: creds.ManagerName, NextProtos: []string{"h2"}}
		if tc.cert != nil {
			// Sent even though the server asks for another CA's.
			conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.cert, nil }
		}
		conn, err := tls.Dial("tcp", addr, conf)
		if err != nil {
			t.Logf("%s: handshake refused: %v", tc.what, err)
			continue
		}
		// TLS 1.3: the client's handshake completes before the server
		// has checked the client's certificate; the refusal (an alert)
		// comes on the first read.
		_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		buf := make([]byte, 1)
		_ = conn.SetDeadline(time.Now().Add(backstop))
		_, err = conn.Read(buf)
		var ne net.Error
		switch {
		case err == nil:
			t.Errorf("%s: the server answered", tc.what)
		case errors.As(err, &ne) && ne.Timeout():
			t.Errorf("%s: neither answered nor refused within %s", tc.what, backstop)
		default:
			t.Logf("%s: refused: %v", tc.what, err)
		}
		conn.Close()
	}

	// Serve still works, with the idle connection still open.
	if out := s.mustVerb(t, "nodes"); !strings.Contains(out, s.info.Host) {
		t.Errorf("drover nodes does not list %s:\n%s", s.info.Host, out)
	}
	s.mustVerb(t, "start", "--node", s.info.Host, "--name", "after", "--", "true")
	if !s.Running() {
		t.Fatalf("drover serve exited:\n%s", s.Out)
	}
	idle.Close()
	_ = s.Cmd.Process.Signal(syscall.SIGTERM)
	s.Wait(t, backstop)
}

// The contract: a connection without the run's credentials is refused
// and logged.
func TestServeLogsRefusals(t *testing.T) {
	t.Parallel()
	s := startServe(t, "--log-level", "debug")
	conn, err := net.Dial("tcp", s.info.Address)
	if err != nil {
		t.Fatal(err)
	}
	from := conn.LocalAddr().String()
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: drover\r\n\r\n"))
	_ = conn.SetDeadline(time.Now().Add(backstop))
	_, _ = io.ReadAll(conn)
	conn.Close()
	s.mustVerb(t, "nodes")
	_ = s.Cmd.Process.Signal(syscall.SIGTERM)
	s.Wait(t, backstop)
	_, port, _ := net.SplitHostPort(from)
	log := s.Out.String()
	if !strings.Contains(log, ":"+port) && !strings.Contains(strings.ToLower(log), "handshake") {
		t.Errorf("a plain-TCP connection from %s was refused but serve logged nothing about it, even with "+
			"--log-level debug (the contract: \"Anything else is refused, logged, and runs nothing\"):\n%s", from, log)
	}
}

// A connection that never says anything (a port scanner, a client that
// hung before its TLS handshake) must not hold up serve's shutdown.
func TestServeStopsWithIdleConnection(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	s := startServe(t, "--grace", grace.String())
	idle, err := net.Dial("tcp", s.info.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	s.mustVerb(t, "nodes") // serve works, the idle connection aside
	sent := time.Now()
	_ = s.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.Done:
		t.Logf("serve exited %v after SIGTERM with an idle connection open", time.Since(sent).Round(time.Millisecond))
		return
	case <-time.After(grace + slack):
	}
	idle.Close()
	select {
	case <-s.Done:
	case <-time.After(slack):
		t.Fatalf("serve still runs %v after SIGTERM, even with the idle connection closed:\n%s", time.Since(sent), s.Out)
	}
	t.Errorf("drover serve did not exit within grace %v + %v of SIGTERM while one TCP connection to its "+
		"address sat idle; it exited %v after SIGTERM, at once when that connection was closed",
		grace, slack, time.Since(sent).Round(time.Millisecond))
}
