// Package e2e is what the end-to-end tests and benchmarks share: building
// the real drover binary, an environment that does not steer it, and a
// buffer a running process may write while the test reads.
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ModuleRoot finds the drover module's root above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(data, []byte("module github.com/drover-hpc/drover\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the drover module root above the test's directory")
		}
		dir = parent
	}
}

// Build builds drover into dir with CGO_ENABLED=0 (the contract wants
// such builds to work, so that is the binary under test) and returns its
// path.
func Build(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "drover")
	// The build ID names the test binary (cli.test, chaos.test), so each
	// package's drover differs by content and so by the path the SSH
	// launcher caches it at: a test that looks for agents left on a bed
	// host finds its own package's, not those of a package running beside.
	cmd := exec.Command("go", "build", "-ldflags=-buildid="+filepath.Base(os.Args[0]), "-o", bin, "github.com/drover-hpc/drover/cmd/drover")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build drover: %v\n%s", err, out)
	}
	return bin, nil
}

// Env is this process's environment without what would change the
// launcher drover picks (a Slurm allocation) or leak into its jobs.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SLURM_") || strings.HasPrefix(kv, "DROVER_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Buffer is a bytes.Buffer that may be read while a process writes to it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Proc is a drover process running in the background of a test.
type Proc struct {
	Cmd     *exec.Cmd
	Out     *Buffer // stdout and stderr
	Done    chan struct{}
	Err     error // from Wait, valid after Done
	Started time.Time
	Exited  time.Time
}

// Start starts bin with args in dir, with Env() plus env. The test's
// cleanup SIGKILLs it if it still runs.
func Start(t testing.TB, bin, dir string, env []string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(Env(), env...)
	p := &Proc{Cmd: cmd, Out: &Buffer{}, Done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	p.Started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.Err = cmd.Wait()
		p.Exited = time.Now()
		close(p.Done)
	}()
	t.Cleanup(func() {
		if p.Running() {
			_ = cmd.Process.Kill()
			<-p.Done
		}
	})
	return p
}

// PID is the process's pid.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Running reports whether it has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.Done:
		return false
	default:
		return true
	}
}

// Wait waits up to within for it to exit and returns its exit status (-1
// when a signal ended it). On the backstop it asks for a goroutine dump
// (SIGQUIT), then fails the test.
func (p *Proc) Wait(t testing.TB, within time.Duration) int {
	t.Helper()
	select {
	case <-p.Done:
	case <-time.After(within):
		_ = p.Cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.Done:
		case <-time.After(10 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.Done
		}
		t.Fatalf("%q did not exit within %s\n%s", p.Cmd.Args, within, Tail(p.Out.String()))
	}
	var ee *exec.ExitError
	switch {
	case p.Err == nil:
		return 0
	case errors.As(p.Err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%q: %v\n%s", p.Cmd.Args, p.Err, Tail(p.Out.String()))
	return -1
}

// Tail is the end of a long log, for failure messages.
func Tail(s string) string {
	const max = 8000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}
