package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/control"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
)

// fake is the part of cluster.API these tests use; the rest panics.
type fake struct {
	cluster.API
	mu    sync.Mutex
	err   error
	start cluster.StartRequest
	grace time.Duration
	file  *jobfile.File
}

func (f *fake) fail() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fake) Start(_ context.Context, req cluster.StartRequest) (cluster.StartResult, error) {
	f.mu.Lock()
	f.start = req
	f.mu.Unlock()
	if err := f.fail(); err != nil {
		return cluster.StartResult{}, err
	}
	return cluster.StartResult{Node: req.Node, PID: 99, HWThreads: []int{2}}, nil
}

func (f *fake) Poll(_ context.Context, _ string, names []string) ([]node.Status, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return []node.Status{
		{Name: "a", State: node.Running},
		{Name: "b", State: node.Exited, Exit: node.Exit{Name: "b", Code: 2}},
		{Name: "c", State: node.Exited, Exit: node.Exit{Name: "c", Code: -1, Signal: syscall.SIGTERM}},
	}, nil
}

func (f *fake) Stop(_ context.Context, name string, grace time.Duration) error {
	f.mu.Lock()
	f.grace = grace
	f.mu.Unlock()
	return f.fail()
}

func (f *fake) Logs(_ context.Context, name string, stderr, follow bool, w io.Writer) error {
	if err := f.fail(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "log of %s stderr=%v follow=%v\n", name, stderr, follow)
	return err
}

func (f *fake) Finished(context.Context, cluster.FinishedRequest) ([]cluster.Receipt, error) {
	return []cluster.Receipt{{Seq: 1, Exit: node.Exit{Name: "c", Node: "n1", Code: -1, Signal: syscall.SIGKILL}}}, f.fail()
}

func (f *fake) Submit(_ context.Context, file *jobfile.File) ([]string, error) {
	f.mu.Lock()
	f.file = file
	f.mu.Unlock()
	return []string{"sim"}, f.fail()
}

func (f *fake) Shutdown(context.Context) error { return f.fail() }

func (f *fake) Ack(context.Context, string, []uint64) error { return nil }

func (f *fake) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// served is a Control server over api with the serve.json of a home.
type served struct {
	home string
	info *client.ServeInfo
	ca   *creds.CA
}

func serveAPI(t *testing.T, api cluster.API) *served {
	t.Helper()
	ca, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ca.Issue(creds.RoleManager, "manager", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLS(mgr))))
	control.New(api, control.Options{}).Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	host, _ := os.Hostname()
	s := &served{home: t.TempDir(), ca: ca, info: &client.ServeInfo{
		Address: lis.Addr().String(), HTTP: "http://127.0.0.1:1", PID: os.Getpid(), Host: host,
		Credentials: clientCreds(t, ca),
	}}
	s.write(t)
	return s
}

func clientCreds(t *testing.T, ca *creds.CA) *client.Credentials {
	t.Helper()
	b, err := ca.Issue(creds.RoleClient, "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &client.Credentials{CA: b.CA, Cert: b.Cert, Key: b.Key}
}

func (s *served) write(t *testing.T) {
	t.Helper()
	if err := client.WriteServeInfo(s.home, s.info); err != nil {
		t.Fatal(err)
	}
}

func (s *served) dial(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Options{Home: s.home})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestCalls(t *testing.T) {
	api := &fake{}
	s := serveAPI(t, api)
	c := s.dial(t)
	ctx := ctx(t)

	wd, _ := os.Getwd()
	res, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: "a", Args: []string{"sleep", "1"}, Dir: "w", Stdout: "o", Stderr: "/abs/e", Cores: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Node != "n1" || res.PID != 99 || len(res.HWThreads) != 1 || res.HWThreads[0] != 2 {
		t.Errorf("start result %+v", res)
	}
	sp := api.start.Spec
	if sp.Dir != filepath.Join(wd, "w") || sp.Stdout != filepath.Join(wd, "o") || sp.Stderr != "/abs/e" {
		t.Errorf("relative paths not made absolute here: dir %q stdout %q stderr %q", sp.Dir, sp.Stdout, sp.Stderr)
	}

	sts, err := c.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, st := range sts {
		lines = append(lines, st.Name+" "+st.String())
	}
	if got, want := strings.Join(lines, "; "), "a running; b exit 2; c signal SIGTERM"; got != want {
		t.Errorf("poll: %s, want %s", got, want)
	}

	if err := c.Stop(ctx, "a", 1500*time.Microsecond); err != nil {
		t.Fatal(err)
	}
	if api.grace != 2*time.Millisecond {
		t.Errorf("grace %s: want it rounded up to whole ms", api.grace)
	}

	var buf bytes.Buffer
	if err := c.Logs(ctx, "a", true, false, &buf); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "log of a stderr=true follow=false\n" {
		t.Errorf("logs: %q", buf.String())
	}

	exits, err := c.Finished(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(exits) != 1 || exits[0].String() != "signal SIGKILL" || exits[0].Node != "n1" || exits[0].Success() {
		t.Errorf("finished: %+v", exits)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "jobs.yaml")
	if err := os.WriteFile(path, []byte("jobs:\n  - name: sim\n    command: [x]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	names, err := c.Submit(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "sim" || api.file.Dir != dir {
		t.Errorf("submit: %v, dir %s", names, api.file.Dir)
	}

	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// Errors of the manager come back as the client's typed errors.
func TestErrorsMapBack(t *testing.T) {
	api := &fake{}
	s := serveAPI(t, api)
	c := s.dial(t)
	for _, tc := range []struct{ core, want error }{
		{errdefs.ErrUnknownProcess, client.ErrNotFound},
		{errdefs.ErrUnknownNode, client.ErrUnknownNode},
		{errdefs.ErrDuplicate, client.ErrExists},
		{errdefs.ErrRunning, client.ErrRunning},
		{errdefs.ErrNotRunning, client.ErrNotRunning},
		{errdefs.ErrBusy, client.ErrBusy},
		{errdefs.ErrInvalid, client.ErrInvalid},
		{errdefs.ErrNodeLost, client.ErrNodeLost},
		{errdefs.ErrClosed, client.ErrShuttingDown},
	} {
		api.setErr(fmt.Errorf("op on n1: %w", tc.core))
		err := c.Stop(ctx(t), "a", 0)
		if !errors.Is(err, tc.want) {
			t.Errorf("core %v: got %v, want errors.Is %v", tc.core, err, tc.want)
		}
		if err.Error() != "op on n1: "+tc.core.Error() {
			t.Errorf("message %q", err)
		}
		var buf bytes.Buffer
		if err := c.Logs(ctx(t), "a", false, true, &buf); !errors.Is(err, tc.want) {
			t.Errorf("logs, core %v: got %v", tc.core, err)
		}
	}
	api.setErr(errors.New("something else"))
	err := c.Stop(ctx(t), "a", 0)
	var e *client.Error
	if !errors.As(err, &e) || e.Kind != nil || e.Msg != "something else" {
		t.Errorf("untyped: %#v", err)
	}
}

func TestSubmitChecksLocally(t *testing.T) {
	api := &fake{}
	s := serveAPI(t, api)
	c := s.dial(t)
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("jobs:\n  - name: sim\n    command: [x]\n    repeat: -1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := c.Submit(ctx(t), path)
	if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), path+":4:") {
		t.Errorf("got %v, want ErrInvalid with FILE:4:COL", err)
	}
	var jerrs jobfile.Errors
	if !errors.As(err, &jerrs) {
		t.Errorf("the job file's errors are not there to inspect: %#v", err)
	}
	if api.file != nil {
		t.Error("an invalid job file was sent")
	}
	_, err = c.Submit(ctx(t), filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, client.ErrInvalid) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestNoServe(t *testing.T) {
	home := t.TempDir()
	_, err := client.Dial(ctx(t), client.Options{Home: home})
	if !errors.Is(err, client.ErrNoServe) || !strings.Contains(err.Error(), "DROVER_HOME="+home) ||
		!strings.Contains(err.Error(), "drover serve") {
		t.Errorf("no serve.json: %v", err)
	}
	t.Setenv("DROVER_HOME", home)
	if _, err := client.Dial(ctx(t), client.Options{}); !strings.Contains(fmt.Sprint(err), home) {
		t.Errorf("$DROVER_HOME not used: %v", err)
	}
}

func TestStaleServeFile(t *testing.T) {
	s := serveAPI(t, &fake{})
	// A process that has exited (and been reaped).
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	s.info.PID = cmd.Process.Pid
	s.write(t)
	_, err := client.Dial(ctx(t), client.Options{Home: s.home})
	if !errors.Is(err, client.ErrNoServe) || !strings.Contains(err.Error(), "stale") ||
		!strings.Contains(err.Error(), fmt.Sprint(cmd.Process.Pid)) {
		t.Errorf("stale serve.json: %v", err)
	}
	// --manager skips the pid check: it may be anywhere.
	c, err := client.Dial(ctx(t), client.Options{Home: s.home, Manager: s.info.Address})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Poll(ctx(t)); err != nil {
		t.Errorf("with --manager: %v", err)
	}
}

func TestConnectionRefused(t *testing.T) {
	s := serveAPI(t, &fake{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.info.Address = lis.Addr().String()
	lis.Close()
	s.write(t)
	c := s.dial(t)
	_, err = c.Poll(ctx(t))
	if !errors.Is(err, client.ErrNoServe) || !strings.Contains(err.Error(), "start one with drover serve") {
		t.Errorf("nothing listening: %v", err)
	}
	if err := c.Shutdown(ctx(t)); !errors.Is(err, client.ErrNoServe) {
		t.Errorf("shutdown with nothing listening: %v", err)
	}
}

func TestWrongCredentialsRefused(t *testing.T) {
	s := serveAPI(t, &fake{})
	other, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for name, cr := range map[string]*client.Credentials{
		"all of another CA": clientCreds(t, other),
		"a certificate of another CA": func() *client.Credentials {
			cr := clientCreds(t, other)
			cr.CA = s.ca.CertPEM()
			return cr
		}(),
		// The manager refuses it after the handshake (TLS 1.3), which
		// the client sees as a broken connection first.
		"a manager certificate of the run": func() *client.Credentials {
			b, err := s.ca.Issue(creds.RoleManager, "manager", nil)
			if err != nil {
				t.Fatal(err)
			}
			return &client.Credentials{CA: b.CA, Cert: b.Cert, Key: b.Key}
		}(),
		"an agent certificate of the run": func() *client.Credentials {
			b, err := s.ca.Issue(creds.RoleAgent, "n1", nil)
			if err != nil {
				t.Fatal(err)
			}
			return &client.Credentials{CA: b.CA, Cert: b.Cert, Key: b.Key}
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			s.info.Credentials = cr
			s.write(t)
			c := s.dial(t)
			_, err := c.Poll(ctx(t))
			t.Log(err)
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "refused") {
				t.Errorf("got %v, want ErrRefused", err)
			}
		})
	}
}

func TestServeFileIsPrivate(t *testing.T) {
	s := serveAPI(t, &fake{})
	fi, err := os.Stat(filepath.Join(s.home, client.ServeFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("serve.json mode %v", fi.Mode().Perm())
	}
	if err := os.Chmod(filepath.Join(s.home, client.ServeFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Dial(ctx(t), client.Options{Home: s.home}); !errors.Is(err, creds.ErrInsecureFile) {
		t.Errorf("a readable serve.json: %v", err)
	}
}

func TestProcessAlive(t *testing.T) {
	if !client.ProcessAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !client.ProcessAlive(cmd.Process.Pid) {
		t.Error("a sleeping child is not alive")
	}
	cmd.Process.Kill()
	// Dead but not reaped: a zombie is not alive.
	deadline := time.Now().Add(10 * time.Second)
	for client.ProcessAlive(cmd.Process.Pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if client.ProcessAlive(cmd.Process.Pid) {
		t.Error("a killed child (a zombie) is alive")
	}
	cmd.Wait()
	if client.ProcessAlive(0) || client.ProcessAlive(-1) {
		t.Error("pid 0 or -1 is alive")
	}
}
