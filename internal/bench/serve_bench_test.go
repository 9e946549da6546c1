package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/client"
)

// serveProc is a drover serve started by a benchmark, with its own
// DROVER_HOME.
type serveProc struct {
	cmd  *exec.Cmd
	home string
	done chan struct{}
}

// startServe starts drover serve and waits (up to a minute) for its
// serve.json. The benchmark's cleanup stops it.
func startServe(b *testing.B, drover string) *serveProc {
	b.Helper()
	home := b.TempDir()
	cmd := exec.Command(drover, "serve", "--grace", "1s")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DROVER_") && !strings.HasPrefix(kv, "SLURM_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "DROVER_HOME="+home)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &serveProc{cmd: cmd, home: home, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-s.done
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := client.ReadServeInfo(home)
		if err == nil && info.PID == cmd.Process.Pid {
			return s
		}
		select {
		case <-s.done:
			b.Fatalf("drover serve exited before writing serve.json:\n%s", out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatal("drover serve wrote no serve.json within a minute")
		}
	}
}

// agentPID finds the `drover agent` child of pid: the guard when pid is
// the manager, the agent proper (`--guarded`) when pid is the guard.
func agentPID(b *testing.B, pid int) int {
	b.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) >= 2 && args[1] == "agent" {
			return p
		}
	}
	b.Fatalf("no drover agent child of %d", pid)
	return 0
}

// statusKB reads a "Field:  N kB" line of /proc/PID/status.
func statusKB(pid int, field string) int64 { return procKB(pid, "status", field) }

// procKB reads a "Field:  N kB" line of /proc/PID/FILE.
func procKB(pid int, file, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func latencyN(b *testing.B) int {
	if s := os.Getenv("DROVER_BENCH_LATENCY_N"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("DROVER_BENCH_LATENCY_N=%q", s)
		}
		return n
	}
	return 300
}

// BenchmarkServeLatency measures one process's round trip through drover
// serve with the Go client: Start of a trivial static program until
// Finished (waiting, not polling) returns its exit, then until the push
// stream (WatchFinished) delivers it, one at a time, beside a raw os/exec
// Run of the same program. It reports p50 and p99 of both and the p50 overhead.
// DROVER_BENCH_LATENCY_N sets the count (default 300).
func BenchmarkServeLatency(b *testing.B) {
	t := setup(b)
	n := latencyN(b)
	for b.Loop() {
		s := startServe(b, t.drover)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		c, err := client.Dial(ctx, client.Options{Home: s.home})
		if err != nil {
			b.Fatal(err)
		}
		nodes, err := c.Nodes(ctx)
		if err != nil || len(nodes) == 0 {
			b.Fatalf("nodes: %v %v", nodes, err)
		}
		node := nodes[0].Name
		// Finished waits for the next exit; a few calls per process at most
		// (an exit of an earlier process cannot be left over: each is
		// awaited before the next starts).
		const maxCalls = 10
		served := make([]time.Duration, 0, n)
		calls := 0
		for i := range n {
			name := "lat" + strconv.Itoa(i)
			start := time.Now()
			if _, err := c.Start(ctx, client.StartRequest{Node: node, Name: name, Args: []string{t.trivial}}); err != nil {
				b.Fatal(err)
			}
			found := false
			for p := 0; p < maxCalls && !found; p++ {
				exits, err := c.Finished(ctx, time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				calls++
				for _, e := range exits {
					if e.Name == name {
						if !e.Success() {
							b.Fatalf("%s: %v %s", name, e, e.Err)
						}
						found = true
					}
				}
			}
			if !found {
				b.Fatalf("%s did not finish within %d calls of Finished", name, maxCalls)
			}
			served = append(served, time.Since(start))
			if err := c.Purge(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
		// The same through the push stream: WatchFinished delivers each
		// exit as it comes.
		pushed := make(chan client.Exit, 16)
		wctx, stopWatch := context.WithCancel(ctx)
		watchDone := make(chan error, 1)
		go func() {
			watchDone <- c.WatchFinished(wctx, func(e client.Exit) error { pushed <- e; return nil })
		}()
		streamed := make([]time.Duration, 0, n)
		for i := range n {
			name := "push" + strconv.Itoa(i)
			start := time.Now()
			if _, err := c.Start(ctx, client.StartRequest{Node: node, Name: name, Args: []string{t.trivial}}); err != nil {
				b.Fatal(err)
			}
			select {
			case e := <-pushed:
				if e.Name != name || !e.Success() {
					b.Fatalf("pushed %s %v %s, want %s", e.Name, e, e.Err, name)
				}
			case err := <-watchDone:
				b.Fatalf("watch ended: %v", err)
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
			streamed = append(streamed, time.Since(start))
			if err := c.Purge(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
		stopWatch()
		if err := <-watchDone; err != nil {
			b.Fatal(err)
		}
		c.Close()
		cancel()

		// Two baselines: a bare Run, and one that also does what serve
		// does for a process's output (a directory of its own with stdout
		// and stderr files, on the same file system as serve's home), so
		// the disk's cost is told apart from drover's.
		bare := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			if err := exec.Command(t.trivial).Run(); err != nil {
				b.Fatal(err)
			}
			bare = append(bare, time.Since(start))
		}
		rawDir := filepath.Join(b.TempDir(), "raw")
		files := make([]time.Duration, 0, n)
		for i := range n {
			start := time.Now()
			if err := runWithOutputFiles(t.trivial, filepath.Join(rawDir, strconv.Itoa(i))); err != nil {
				b.Fatal(err)
			}
			files = append(files, time.Since(start))
		}
		slices.Sort(served)
		slices.Sort(streamed)
		slices.Sort(bare)
		slices.Sort(files)
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
		sp50, sp99 := percentile(served, 50), percentile(served, 99)
		bp50, fp50 := percentile(bare, 50), percentile(files, 50)
		b.ReportMetric(us(sp50), "serve-p50-µs")
		b.ReportMetric(us(sp99), "serve-p99-µs")
		b.ReportMetric(us(bp50), "raw-p50-µs")
		b.ReportMetric(us(fp50), "raw-files-p50-µs")
		b.ReportMetric(us(sp50-fp50), "overhead-p50-µs")
		pp50, pp99 := percentile(streamed, 50), percentile(streamed, 99)
		b.ReportMetric(us(pp50), "push-p50-µs")
		b.ReportMetric(us(pp99), "push-p99-µs")
		b.ReportMetric(us(pp50-fp50), "push-overhead-p50-µs")
		b.Logf("n=%d start→finished via serve: p50 %v p99 %v (%.1f Finished calls each); via the push stream: p50 %v p99 %v; raw os/exec Run: p50 %v, with output files: p50 %v; p50 overhead over the latter %v (Finished), %v (push)",
			n, sp50, sp99, float64(calls)/float64(n), pp50, pp99, bp50, fp50, sp50-fp50, pp50-fp50)
		overhead := pp50 - fp50
		figure(b, "serve-push", "serve start->finished p50, push stream",
			fmt.Sprintf("%.0f us", us(pp50)), fmt.Sprintf("raw fork with files %.0f us", us(fp50)),
			fmt.Sprintf("%.2fx", us(pp50)/us(fp50)), fmt.Sprintf("overhead < 300 us (is %.0f)", us(overhead)),
			yesNo(overhead < 300*time.Microsecond))
	}
}

// BenchmarkIdleAgentRSS starts drover serve and reports its agent's
// resident set size once it has been idle for 2 s, the guard's (its whole
// RSS, and what is its own: most of the rest is the binary's pages,
// shared with the agent) and the manager's.
func BenchmarkIdleAgentRSS(b *testing.B) {
	t := setup(b)
	for b.Loop() {
		s := startServe(b, t.drover)
		guard := agentPID(b, s.cmd.Process.Pid)
		agent := agentPID(b, guard)
		time.Sleep(2 * time.Second)
		rss := statusKB(agent, "VmRSS")
		guardRSS := statusKB(guard, "VmRSS")
		guardOwn := procKB(guard, "smaps_rollup", "Private_Dirty") + procKB(guard, "smaps_rollup", "Private_Clean")
		mgr := statusKB(s.cmd.Process.Pid, "VmRSS")
		if rss == 0 || guardRSS == 0 {
			b.Fatalf("no VmRSS for agent %d or guard %d", agent, guard)
		}
		b.ReportMetric(float64(rss)/1024, "agent-RSS-MB")
		b.ReportMetric(float64(guardRSS)/1024, "guard-RSS-MB")
		b.ReportMetric(float64(guardOwn)/1024, "guard-private-MB")
		b.ReportMetric(float64(mgr)/1024, "serve-RSS-MB")
		b.Logf("idle agent (pid %d) VmRSS %.1f MiB; its guard VmRSS %.1f MiB, private %.1f MiB; drover serve VmRSS %.1f MiB",
			agent, float64(rss)/1024, float64(guardRSS)/1024, float64(guardOwn)/1024, float64(mgr)/1024)
	}
}

// runWithOutputFiles runs prog with its stdout and stderr in new files in
// a new directory dir, as serve does for a process.
func runWithOutputFiles(prog, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stdout, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		return err
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd := exec.Command(prog)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd.Run()
}
