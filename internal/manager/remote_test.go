package manager

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLaunchSSHFailuresAreReported runs LaunchSSH against an "ssh" that
// fails as an unreachable host does: every host is a launch failure with
// ssh's reason, and WaitLaunched reports them all.
func TestLaunchSSHFailuresAreReported(t *testing.T) {
	dir := t.TempDir()
	ssh := filepath.Join(dir, "ssh")
	script := "#!/bin/sh\nfor a; do host=$prev; prev=$a; done\necho \"ssh: connect to host $host port 22: No route to host\" >&2\nexit 255\n"
	if err := os.WriteFile(ssh, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "drover")
	if err := os.WriteFile(exe, []byte("not really"), 0o755); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		hooked []LaunchFailure
	)
	m, err := New(Options{AgentExe: exe, OnLaunchFailure: func(f LaunchFailure) {
		mu.Lock() // called from several launches at once
		defer mu.Unlock()
		hooked = append(hooked, f)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := m.LaunchSSH(ctx, []string{"a", "b", "a"}, SSHLaunch{SSH: ssh, MaxParallel: 1})
	if n != 0 || err == nil || !strings.Contains(err.Error(), "a: ssh: connect to host a port 22: No route to host") {
		t.Errorf("LaunchSSH = %d, %v", n, err)
	}
	fs := m.LaunchFailures()
	mu.Lock()
	defer mu.Unlock()
	if len(fs) != 2 || len(hooked) != 2 {
		t.Fatalf("failures %v, hooked %v", fs, hooked)
	}
	for _, f := range fs {
		if f.Reason != "ssh: connect to host "+f.Node+" port 22: No route to host" {
			t.Errorf("failure %+v", f)
		}
	}
	if _, err := m.WaitLaunched(ctx); err == nil || !strings.Contains(err.Error(), "b: ssh: connect") {
		t.Errorf("WaitLaunched: %v", err)
	}
}
