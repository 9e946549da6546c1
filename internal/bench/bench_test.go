// Package bench measures drover against the floor and its peers in the same
// run: a raw os/exec loop with the same parallelism (each child's stdout and
// stderr in new files of its own, as drover's are) and GNU Parallel. Figures
// are reported as ratios, never asserted; run them with scripts/bench.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/e2e"
	"github.com/drover-hpc/drover/internal/topology"
)

// tools builds the drover binary and a trivial static program once.
type tools struct {
	drover, trivial string
}

var (
	toolsOnce sync.Once
	built     tools
	buildErr  error
	toolsDir  string
)

// TestMain removes the built tools once every benchmark has used them.
func TestMain(m *testing.M) {
	code := m.Run()
	if toolsDir != "" {
		os.RemoveAll(toolsDir)
	}
	os.Exit(code)
}

func setup(b *testing.B) tools {
	toolsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-bench-")
		if err != nil {
			buildErr = err
			return
		}
		toolsDir = dir
		if built.drover, buildErr = e2e.Build(dir); buildErr != nil {
			return
		}
		built.trivial, buildErr = trivialProgram(dir)
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return built
}

// trivialProgram is a static binary that exits 0: a C one when gcc can
// link statically, else a Go one.
func trivialProgram(dir string) (string, error) {
	bin := filepath.Join(dir, "trivial")
	src := filepath.Join(dir, "trivial.c")
	if err := os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644); err != nil {
		return "", err
	}
	if exec.Command("gcc", "-static", "-O2", "-o", bin, src).Run() == nil {
		return bin, nil
	}
	gosrc := filepath.Join(dir, "trivial.go")
	if err := os.WriteFile(gosrc, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", bin, gosrc)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build trivial program: %v\n%s", err, out)
	}
	return bin, nil
}

// figureMark starts a line of scripts/bench's summary table in a
// benchmark's output.
const figureMark = "@figure"

// figure logs one row of scripts/bench's summary table of the targets of
// issue 15: its id (scripts/bench orders rows by it), what is measured,
// drover's value, the baseline measured in the same run, their ratio, the
// target and whether it was reached. Fields are "|"-separated, so none
// may hold a "|".
func figure(b *testing.B, id, what, drover, baseline, ratio, target, reached string) {
	b.Helper()
	fields := []string{id, what, drover, baseline, ratio, target, reached}
	for _, f := range fields {
		if strings.Contains(f, "|") {
			b.Fatalf("figure field %q holds a |", f)
		}
	}
	b.Logf("%s|%s", figureMark, strings.Join(fields, "|"))
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func instances(b *testing.B) int {
	if s := os.Getenv("DROVER_BENCH_N"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	return 2000
}

// parallelism is what drover uses by default: one instance per core.
func parallelism(b *testing.B) int {
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return len(res.Cores)
}

// rawLoop is the floor: P workers doing mkdir, two new files and an
// os/exec run per instance. It returns the wall time and the CPU time of
// this process (the loop's own, as nothing else runs meanwhile) and of the
// programs it ran (its reaped children), from getrusage before and after.
func rawLoop(b *testing.B, trivial string, n, p int) (wall, self, programs time.Duration) {
	out := b.TempDir()
	var next atomic.Int64
	var wg sync.WaitGroup
	self0, children0 := rusage(b, syscall.RUSAGE_SELF), rusage(b, syscall.RUSAGE_CHILDREN)
	start := time.Now()
	for range p {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				dir := filepath.Join(out, strconv.FormatInt(i, 10))
				if err := os.Mkdir(dir, 0o755); err != nil {
					b.Error(err)
					return
				}
				so, err1 := os.Create(filepath.Join(dir, "stdout"))
				se, err2 := os.Create(filepath.Join(dir, "stderr"))
				if err1 != nil || err2 != nil {
					b.Error(err1, err2)
					return
				}
				cmd := exec.Command(trivial)
				cmd.Stdout, cmd.Stderr = so, se
				if err := cmd.Run(); err != nil {
					b.Error(err)
				}
				so.Close()
				se.Close()
			}
		})
	}
	wg.Wait()
	wall = time.Since(start)
	self = rusage(b, syscall.RUSAGE_SELF) - self0
	programs = rusage(b, syscall.RUSAGE_CHILDREN) - children0
	return wall, self, programs
}

// rusage is the user+sys CPU time getrusage reports for who.
func rusage(b *testing.B, who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return cpuTime(&ru)
}

func cpuTime(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// droverCPU is the user+sys CPU time of one drover run, split by process.
type droverCPU struct {
	manager  time.Duration // the drover run process itself
	agent    time.Duration // drover agent: its guard and the agent proper
	programs time.Duration // all below the agent: the instances and the agent's keeper
}

// droverRun runs n trivial instances through drover run and returns the
// wall time and where the CPU went.
//
// How the CPU is split: the rusage of drover run's exit (wait4) sums the
// manager and every descendant it reaped (the agent's guard, which reaped
// the agent proper, which reaped the instances), so alone it cannot tell
// the manager from the agent. Reading /proc/PID/stat of each just before
// it exits would race with its exit (the manager alone could be read as a
// zombie, after waitid with WNOWAIT, but the agent is its guard's to reap,
// out of reach). So DROVER_RUSAGE_FILE makes each
// drover process append its own RUSAGE_SELF at exit, exactly (see
// internal/cli/profile.go), and what is left of the total is the programs
// below the agent. Subtracting the raw loop's program CPU instead would
// bury the agent's figure in the noise of two runs.
func droverRun(b *testing.B, t tools, n int, extra ...string) (time.Duration, droverCPU) {
	dir := b.TempDir()
	out, usage := filepath.Join(dir, "out"), filepath.Join(dir, "rusage.jsonl")
	args := append([]string{"run", "--progress", "none", "--out", out}, extra...)
	args = append(args, "--repeat", strconv.Itoa(n), "--", t.trivial)
	start := time.Now()
	cmd := exec.Command(t.drover, args...)
	cmd.Env = append(os.Environ(), "DROVER_RUSAGE_FILE="+usage)
	if outb, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("drover run: %v\n%s", err, outb)
	}
	wall := time.Since(start)
	total := cpuTime(cmd.ProcessState.SysUsage().(*syscall.Rusage))
	cpu := splitCPU(b, usage, cmd.Process.Pid)
	cpu.programs = total - cpu.manager - cpu.agent
	return wall, cpu
}

// splitCPU reads the lines DROVER_RUSAGE_FILE made: the manager's (pid)
// and its agent's two processes.
func splitCPU(b *testing.B, path string, manager int) droverCPU {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("drover run wrote no CPU times: %v", err)
	}
	var cpu droverCPU
	var seen []string
	for line := range strings.Lines(string(data)) {
		var p struct {
			PID    int      `json:"pid"`
			Args   []string `json:"args"`
			UserUS int64    `json:"user_us"`
			SysUS  int64    `json:"sys_us"`
		}
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			b.Fatalf("%s: %v", path, err)
		}
		d := time.Duration(p.UserUS+p.SysUS) * time.Microsecond
		switch {
		case p.PID == manager:
			cpu.manager += d
		case len(p.Args) > 0 && p.Args[0] == "agent":
			cpu.agent += d
		default:
			b.Fatalf("%s: a drover process neither the manager nor its agent: %s", path, line)
		}
		seen = append(seen, strings.Join(p.Args, " "))
	}
	if len(seen) != 3 {
		b.Fatalf("%s: want the manager, the agent guard and the agent, got %q", path, seen)
	}
	return cpu
}

func gnuParallel(b *testing.B, trivial string, n, p int) time.Duration {
	if _, err := exec.LookPath("parallel"); err != nil {
		b.Skip("GNU Parallel not installed (Debian package parallel)")
	}
	out := b.TempDir()
	input := strings.Repeat("x\n", n)
	cmd := exec.Command("parallel", "--will-cite", "-j", strconv.Itoa(p), "--results", out, trivial)
	cmd.Stdin = strings.NewReader(input)
	start := time.Now()
	if outb, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("parallel: %v\n%s", err, outb)
	}
	return time.Since(start)
}

// BenchmarkThroughput runs N trivial instances through drover run, the raw
// loop and GNU Parallel, and reports instances/s and drover's ratios, and
// the CPU per instance (user+sys, µs) of drover's manager, of its agent and
// of the programs below it, beside the raw loop's own and its programs'.
func BenchmarkThroughput(b *testing.B) {
	t := setup(b)
	n, p := instances(b), parallelism(b)
	for b.Loop() {
		raw, rawSelf, rawProgs := rawLoop(b, t.trivial, n, p)
		dr, cpu := droverRun(b, t, n)
		rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
		perInst := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
		b.ReportMetric(rate(raw), "raw-inst/s")
		b.ReportMetric(rate(dr), "drover-inst/s")
		b.ReportMetric(raw.Seconds()/dr.Seconds(), "drover/raw")
		b.ReportMetric(perInst(rawSelf), "raw-cpu-us/inst")
		b.ReportMetric(perInst(rawProgs), "raw-progs-cpu-us/inst")
		b.ReportMetric(perInst(cpu.manager), "manager-cpu-us/inst")
		b.ReportMetric(perInst(cpu.agent), "agent-cpu-us/inst")
		b.ReportMetric(perInst(cpu.programs), "drover-progs-cpu-us/inst")
		b.Logf("n=%d parallelism=%d raw %.0f/s drover %.0f/s ratio %.2f", n, p, rate(raw), rate(dr), raw.Seconds()/dr.Seconds())
		b.Logf("CPU per instance (user+sys): raw loop %.0f µs (its programs %.0f µs); drover manager %.0f µs, agent %.0f µs (its programs and keeper %.0f µs)",
			perInst(rawSelf), perInst(rawProgs), perInst(cpu.manager), perInst(cpu.agent), perInst(cpu.programs))
		ratio := raw.Seconds() / dr.Seconds()
		figure(b, "local", fmt.Sprintf("%d trivial instances, %d at a time", n, p),
			fmt.Sprintf("%.0f inst/s", rate(dr)), fmt.Sprintf("raw loop %.0f inst/s", rate(raw)),
			fmt.Sprintf("%.2fx", ratio), ">= 0.9x raw loop", yesNo(ratio >= 0.9))
		if _, err := exec.LookPath("parallel"); err == nil {
			gp := gnuParallel(b, t.trivial, n, p)
			b.ReportMetric(rate(gp), "parallel-inst/s")
			b.ReportMetric(gp.Seconds()/dr.Seconds(), "drover/parallel")
			b.Logf("GNU Parallel %.0f/s; drover is %.1fx", rate(gp), gp.Seconds()/dr.Seconds())
			figure(b, "local-parallel", "the same, GNU Parallel beside",
				fmt.Sprintf("%.0f inst/s", rate(dr)), fmt.Sprintf("GNU Parallel %.0f inst/s", rate(gp)),
				fmt.Sprintf("%.2fx", gp.Seconds()/dr.Seconds()), "beside", "-")
		}
		mgr, own := perInst(cpu.manager), perInst(rawSelf)
		figure(b, "manager-cpu", "manager CPU per instance (user+sys)",
			fmt.Sprintf("%.0f us", mgr), fmt.Sprintf("raw loop's own %.0f us", own),
			fmt.Sprintf("%.2fx", mgr/own), "<= 100 us", yesNo(mgr <= 100))
		agent := perInst(cpu.agent)
		figure(b, "agent-cpu", "agent CPU per instance (user+sys)",
			fmt.Sprintf("%.0f us", agent), fmt.Sprintf("raw loop's own %.0f us", own),
			fmt.Sprintf("%.2fx", agent/own), "report", "reported")
	}
}

// BenchmarkQueueMemory runs DROVER_BENCH_QUEUED (default 100,000) trivial
// instances through drover run and reports the manager's peak RSS.
func BenchmarkQueueMemory(b *testing.B) {
	t := setup(b)
	n := 100000
	if s := os.Getenv("DROVER_BENCH_QUEUED"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		out := filepath.Join(b.TempDir(), "out")
		cmd := exec.Command(t.drover, "run", "--progress", "none", "--out", out, "--repeat", strconv.Itoa(n), "--", t.trivial)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		peak := int64(0)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		tick := time.NewTicker(200 * time.Millisecond)
	wait:
		for {
			select {
			case err := <-done:
				if err != nil {
					b.Fatal(err)
				}
				break wait
			case <-tick.C:
				peak = max(peak, hwm(cmd.Process.Pid))
			case <-ctx.Done():
				cmd.Process.Kill()
				b.Fatal("timed out")
			}
		}
		tick.Stop()
		cancel()
		b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
		b.Logf("%d instances: manager peak RSS %.1f MiB", n, float64(peak)/(1<<20))
	}
}

// hwm reads a process's peak resident set size in bytes.
func hwm(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
