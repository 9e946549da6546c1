package manager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/internal/cli"
	"github.com/drover-hpc/drover/internal/manager"
)

// asDrover makes the test binary run as the drover binary: the local
// agents of these tests are real `drover agent` processes.
const asDrover = "DROVER_MANAGER_TEST_AS_DROVER"

func TestMain(m *testing.M) {
	if os.Getenv(asDrover) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// writeScript puts an executable script at path atomically (a running
// copy is never written to).
func writeScript(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\n"+text), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A node whose agent dies is relaunched; while relaunches keep failing the
// waits between them double from 1s and stay at 60s.
func TestRelaunchBackoff(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "drover")
	pids := filepath.Join(dir, "pids")
	writeScript(t, exe, fmt.Sprintf("echo $$ >>%s\nexec env %s=1 %s \"$@\"\n", pids, asDrover, self))

	const want = 9 // waits recorded before the test stops the relaunches
	var (
		mu       sync.Mutex
		waits    []time.Duration
		failures []manager.LaunchFailure
	)
	enough := make(chan struct{})
	after := func(d time.Duration) <-chan time.Time {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, d)
		if len(waits) == want {
			close(enough)
		}
		if len(waits) >= want {
			return nil // never: Close ends the wait
		}
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}
	m, err := manager.New(manager.Options{
		AgentExe: exe,
		Relaunch: true,
		After:    after,
		Grace:    time.Second,
		OnLaunchFailure: func(f manager.LaunchFailure) {
			mu.Lock()
			defer mu.Unlock()
			failures = append(failures, f)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	closeM := func() {
		if closed {
			return
		}
		closed = true
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	defer closeM()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.LaunchLocal("n1"); err != nil {
		t.Fatal(err)
	}
	nodes, err := m.WaitNodes(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}

	// From now on the agent cannot start; then the one running dies.
	writeScript(t, exe, "echo agent cannot start >&2\nexit 3\n")
	data, err := os.ReadFile(pids)
	if err != nil {
		t.Fatal(err)
	}
	guard, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	// Any thread of the guard may have forked it.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", guard))
	var kids []string
	for _, task := range tasks {
		data, _ := os.ReadFile(task)
		kids = append(kids, strings.Fields(string(data))...)
	}
	if len(kids) != 1 {
		t.Fatalf("agent below guard %d: %q", guard, kids)
	}
	agent, _ := strconv.Atoi(kids[0])
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-nodes[0].(interface{ Gone() <-chan struct{} }).Gone():
	case <-ctx.Done():
		t.Fatal("the node was not lost")
	}
	select {
	case <-enough:
	case <-ctx.Done():
		mu.Lock()
		t.Fatalf("waits so far %v", waits)
	}
	closeM()

	s := time.Second
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(waits, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s}) {
		t.Errorf("waits between relaunches %v", waits)
	}
	// Every relaunch but the last (cut short by Close) failed, and said so.
	if len(failures) != want-1 {
		t.Errorf("%d failures reported, want %d: %+v", len(failures), want-1, failures)
	}
	for _, f := range failures {
		if f.Node != "n1" || !strings.Contains(f.Reason, "relaunch") {
			t.Errorf("failure %+v", f)
		}
	}
}
