package cli_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/client"
)

// Probe 6: a 200 KB file of 100,000 nested lists took the parser 15 GB;
// drover run refuses it at once, with its position.
func TestLimitsDeepJobFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const n = 100_000
	jobs := writeFile(t, dir, "deep.yaml", "jobs:\n  - name: a\n    command: [x]\n    env: "+
		strings.Repeat("[", n)+strings.Repeat("]", n)+"\n")
	r := drover(t, dir, "run", "--out", filepath.Join(dir, "out"), jobs)
	wantOneLineError(t, r, 2, `deep\.yaml:4:\d+: nesting deeper than 64 levels`)
}

// Probe 7, drover run: more than 4 MB of env in one instance broke the
// node's session. It is refused before anything starts (exit 2).
func TestLimitsHugeEnvRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: small\n    command: [\"true\"]\n  - name: big\n    command: [\"true\"]\n    env: {BIG: "+
		strings.Repeat("x", 5<<20)+"}\n")
	r := drover(t, dir, "run", "--out", out, jobs)
	wantOneLineError(t, r, 2, `jobs\.yaml:6:10: each instance would pass 5\.0 MiB .* at most 1\.0 MiB`)
	if _, err := os.Stat(filepath.Join(out, "small")); !os.IsNotExist(err) {
		t.Errorf("an instance started: %v", err)
	}
}

// Probe 7, Control API: a start with more than 4 MB of env is refused with
// INVALID_ARGUMENT, and the other processes on the node go on running.
func TestLimitsHugeEnvControlAPI(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	startServe(t, home)
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{Home: home})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes %v: %v", nodes, err)
	}
	node := nodes[0].Name
	if _, err := c.Start(ctx, client.StartRequest{Node: node, Name: "sleeper", Args: []string{"sleep", "300"}, Dir: work}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{2 << 20, 5 << 20} {
		_, err = c.Start(ctx, client.StartRequest{Node: node, Name: "big", Args: []string{"true"}, Dir: work,
			Env: map[string]string{"BIG": strings.Repeat("x", size)}})
		if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), "at most 1.0 MiB") {
			t.Fatalf("start with %d bytes of env: %v, want invalid", size, err)
		}
	}
	// The node's session survived: its process runs, it takes new starts.
	st, err := c.Poll(ctx, "sleeper")
	if err != nil || len(st) != 1 || !st[0].Running {
		t.Fatalf("poll sleeper after the refused start: %+v, %v", st, err)
	}
	if _, err := c.Start(ctx, client.StartRequest{Node: node, Name: "after", Args: []string{"true"}, Dir: work}); err != nil {
		t.Fatalf("start after the refused one: %v", err)
	}
	ns, err := c.Nodes(ctx)
	if err != nil || len(ns) != 1 || ns[0].State != "up" {
		t.Fatalf("nodes after: %+v, %v", ns, err)
	}
	if err := c.Stop(ctx, "sleeper", time.Second); err != nil {
		t.Fatal(err)
	}
}

// Probe 8: Ctrl-C on a queue of millions of `true` grew drover from 22 MB
// past 9 GB, and wrote no summary. 1,000,000 instances show the bug (it
// took 1.1 GB); now the memory stays with what ran, a second Ctrl-C is
// taken, and summary.json and a final event for every instance are
// written.
func TestLimitsInterruptHugeBatch(t *testing.T) {
	t.Parallel()
	const total = 1_000_000
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: t\n    repeat: 1000000\n    command: [\"true\"]\n")
	cmd := exec.Command(droverBin, "run", "--progress", "none", "--out", out, jobs)
	cmd.Dir = dir
	cmd.Env = testEnv()
	var stderr safeBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
	})
	// Interrupt once some instances have ended.
	deadline := time.After(backstop)
	for {
		data, _ := os.ReadFile(filepath.Join(out, "events.jsonl"))
		if bytes.Count(data, []byte(`"event":"finished"`)) >= 100 {
			break
		}
		select {
		case err := <-done:
			exited = true
			t.Fatalf("drover exited early: %v\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("no instance finished within %s\n%s", backstop, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cmd.Process.Signal(os.Interrupt)
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt) // a second Ctrl-C is honoured too
	var err error
	select {
	case err = <-done:
		exited = true
	case <-time.After(backstop):
		t.Fatalf("drover did not exit within %s of Ctrl-C\n%s", backstop, stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1\n%s", err, stderr.String())
	}
	// ru_maxrss is in KiB. Before, 1.1 GB.
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	t.Logf("peak RSS %d MiB", rss>>10)
	if rss > 300<<10 {
		t.Errorf("drover's peak RSS %d MiB", rss>>10)
	}

	s := readSummary(t, out)
	if s.Total != total || s.Cancelled < total/2 || s.Succeeded+s.Failed+s.Cancelled != total || len(s.Instances) != total {
		t.Errorf("summary: total %d, %d succeeded, %d failed, %d cancelled, %d listed",
			s.Total, s.Succeeded, s.Failed, s.Cancelled, len(s.Instances))
	}
	if in := s.instance(t, "t.999999"); in.State != "cancelled" || in.Error != "not started: interrupted" {
		t.Errorf("the last instance: %+v", in)
	}
	data, err := os.ReadFile(filepath.Join(out, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	final := bytes.Count(data, []byte(`"event":"finished"`)) + bytes.Count(data, []byte(`"event":"failed"`))
	if final != total {
		t.Errorf("%d final events, want %d", final, total)
	}
}
