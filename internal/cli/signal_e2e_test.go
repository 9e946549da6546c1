package cli_test

import (
	"fmt"
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

type interruptCase struct {
	name       string
	sig        os.Signal
	ignoreTerm bool   // the jobs ignore SIGTERM
	grace      string // --grace
	resend     bool   // keep sending sig until drover exits
	wantSignal string // what ends the instances
}

var interruptCases = []interruptCase{
	// A grace of an hour would outlast the backstop: drover must not wait
	// it out once the processes have gone.
	{name: "SIGINT ends them with SIGTERM", sig: os.Interrupt, grace: "1h", wantSignal: "SIGTERM"},
	{name: "SIGTERM to drover", sig: syscall.SIGTERM, grace: "1h", wantSignal: "SIGTERM"},
	{name: "SIGKILL after the grace", sig: os.Interrupt, ignoreTerm: true, grace: "1s", wantSignal: "SIGKILL"},
	{name: "second SIGINT kills at once", sig: os.Interrupt, ignoreTerm: true, grace: "1h", resend: true, wantSignal: "SIGKILL"},
}

// Ctrl-C (or SIGTERM) to drover run stops every instance's whole process
// group, still writes the summary and exits 1; no process it started
// survives it.
func TestRunInterrupt(t *testing.T) {
	t.Parallel()
	for _, tc := range interruptCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, _ = runInterrupted(t, tc)
		})
	}
}

// The final progress line agrees with summary.json after an interrupt.
func TestRunInterruptProgressCounts(t *testing.T) {
	t.Parallel()
	s, stderr, out := runInterrupted(t, interruptCases[0])
	// The last progress line should agree with the summary.
	lines := regexp.MustCompile(`(?m)^(\d+)/(\d+) done(?:, (\d+) failed)?`).FindAllStringSubmatch(stderr, -1)
	if len(lines) == 0 {
		t.Fatalf("no progress line with --progress plain\n%s", stderr)
	}
	last := lines[len(lines)-1]
	if failed, _ := strconv.Atoi(last[3]); failed != s.Failed {
		t.Errorf("the final progress line %q counts %d failed, summary.json %d failed and %d cancelled",
			last[0], failed, s.Failed, s.Cancelled)
	}
	// Interrupted is not done: the line (and the bar) show what ran.
	if done, _ := strconv.Atoi(last[1]); done != s.Succeeded+s.Failed+s.Lost+s.Skipped {
		t.Errorf("the final progress line %q counts %d done after the interrupt; summary.json: %d cancelled of %d",
			last[0], done, s.Cancelled, s.Total)
	}
	if !strings.Contains(stderr, fmt.Sprintf("%d cancelled", s.Cancelled)) {
		t.Errorf("no progress line says %d cancelled:\n%s", s.Cancelled, stderr)
	}
	// The dashboard's model reads the same from the events alone: a report
	// of a directory holding only events.jsonl counts them from there.
	replay := filepath.Join(t.TempDir(), "replay")
	if err := os.Mkdir(replay, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, replay, "events.jsonl", readFile(t, filepath.Join(out, "events.jsonl")))
	r := drover(t, replay, "report", replay)
	wantCode(t, r, 0)
	html := readFile(t, filepath.Join(replay, "report.html"))
	row := fmt.Sprintf(`<td class="num">%d</td><td class="num">%d</td><td class="num">%d</td><td class="num">%d</td><td class="num">%d</td>`,
		s.Total, s.Succeeded, s.Failed, s.Lost, s.Cancelled)
	if s.Cancelled == 0 || !strings.Contains(html, row) {
		t.Errorf("the report from the events lacks the counts of summary.json (%d cancelled, %d failed): want %s in\n%s", s.Cancelled, s.Failed, row, html)
	}
}

// runInterrupted runs long sleeps, interrupts drover as tc says and checks
// the outcome. It returns the summary, drover's stderr and the results dir.
func runInterrupted(t *testing.T, tc interruptCase) (*summary, string, string) {
	res := localResources(t)
	cores := max(1, len(res.Cores)/4)
	running := len(res.Cores) / cores // instances that fit at once
	total := running + 2              // the rest never start

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	pidDir := filepath.Join(dir, "pids")
	if err := os.Mkdir(pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	killSleepsAtCleanup(t, filepath.Join(pidDir, "*"))
	trap := ":"
	if tc.ignoreTerm {
		trap = `trap "" TERM`
	}
	// The shell records its own pid (then becomes sleep) and that of
	// a background sleep in its process group; pid.N appears last.
	jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: long
    repeat: %d
    cores: %d
    env: {PIDDIR: %q}
    shell: |
      %s
      sleep 1000 &
      echo $! > "$PIDDIR/bg.$DROVER_INDEX"
      echo $$ > "$PIDDIR/tmp.$DROVER_INDEX"
      mv "$PIDDIR/tmp.$DROVER_INDEX" "$PIDDIR/pid.$DROVER_INDEX"
      exec sleep 1000
`, total, cores, pidDir, trap))

	args := []string{"run", "--progress", "plain", "--grace", tc.grace, "--out", out, jobs}
	if tc.resend {
		// To see when the first signal has been taken (see below).
		args = append([]string{"--log-level", "info"}, args...)
	}
	cmd := exec.Command(droverBin, args...)
	cmd.Dir = dir
	cmd.Env = testEnv()
	var stdout, stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
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
	output := func() string { return "--- stdout:\n" + stdout.String() + "--- stderr:\n" + stderr.String() }

	// Wait until every instance that fits is running. (More may run:
	// TestRunInstancesDoNotShareCores is about that.)
	deadline := time.After(backstop)
	for {
		pids, _ := filepath.Glob(filepath.Join(pidDir, "pid.*"))
		if len(pids) >= running {
			break
		}
		select {
		case err := <-done:
			exited = true
			t.Fatalf("drover exited (%v) before its instances started\n%s", err, output())
		case <-deadline:
			t.Fatalf("instances did not start within %s\n%s", backstop, output())
		case <-time.After(20 * time.Millisecond):
		}
	}

	if err := cmd.Process.Signal(tc.sig); err != nil {
		t.Fatal(err)
	}
	// A second signal sent before drover took the first could merge with
	// it, so it goes once drover says it is stopping, and again only if
	// drover still runs long after.
	var resend <-chan time.Time
	firstTaken := func() bool { return strings.Contains(stderr.String(), "stopping every instance") }
	if tc.resend {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		resend = tick.C
	}
	sent, lastSent := 1, time.Now()
	deadline = time.After(backstop)
wait:
	for {
		select {
		case <-done:
			exited = true
			break wait
		case <-resend:
			if (sent == 1 && (firstTaken() || time.Since(lastSent) > 10*time.Second)) ||
				(sent > 1 && time.Since(lastSent) > 10*time.Second) {
				cmd.Process.Signal(tc.sig)
				sent, lastSent = sent+1, time.Now()
			}
		case <-deadline:
			t.Fatalf("drover did not exit within %s of %v\n%s", backstop, tc.sig, output())
		}
	}
	if st := cmd.ProcessState; !st.Exited() || st.ExitCode() != 1 {
		t.Errorf("drover ended with %v, want exit status 1\n%s", st, output())
	}

	s := readSummary(t, out)
	// Interrupted is not failed: the running ones and the rest alike.
	if s.Total != total || s.Succeeded != 0 || s.Lost != 0 || s.Skipped != 0 ||
		s.Failed != 0 || s.Cancelled != total {
		t.Errorf("summary: total %d, succeeded %d, failed %d, lost %d, cancelled %d, skipped %d; "+
			"want %d instances, all cancelled (%d of them stopped while running)",
			s.Total, s.Succeeded, s.Failed, s.Lost, s.Cancelled, s.Skipped, total, running)
	}
	if !strings.Contains(s.StoppedBecause, "interrupt") {
		t.Errorf("stopped_because = %q, want it to say interrupted", s.StoppedBecause)
	}
	var names []string
	for i := range total {
		names = append(names, fmt.Sprintf("long.%d", i))
	}
	wantSameNames(t, "summary instances", s.names(), names)
	for i, name := range names {
		in := s.instance(t, name)
		_, err := os.Stat(filepath.Join(pidDir, fmt.Sprintf("pid.%d", i)))
		switch {
		case err == nil && (in.State != "cancelled" || in.Signal != tc.wantSignal):
			t.Errorf("%s was running: %+v, want cancelled, ended by %s", name, in, tc.wantSignal)
		case in.State != "cancelled":
			t.Errorf("%s: %+v, want cancelled", name, in)
		}
	}
	checkOneFinalEach(t, readEvents(t, out), names)

	pids := readPIDs(t, filepath.Join(pidDir, "pid.*"))
	bg := readPIDs(t, filepath.Join(pidDir, "bg.*"))
	if len(pids) < running || len(bg) < running {
		t.Fatalf("%d instance pids and %d background pids, want at least %d each", len(pids), len(bg), running)
	}
	if alive := waitGone(append(pids, bg...), 20*time.Second); len(alive) > 0 {
		t.Errorf("processes still running after drover exited: %v", alive)
	}

	return s, stderr.String(), out
}

// No two instances run on the same core at the same time: each holds a
// marker for its hwthreads while it runs and looks for another's.
func TestRunInstancesDoNotShareCores(t *testing.T) {
	t.Parallel()
	res := localResources(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	held := filepath.Join(dir, "held")
	if err := os.Mkdir(held, 0o755); err != nil {
		t.Fatal(err)
	}
	total := 4 * len(res.Cores)
	jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: hold
    repeat: %d
    env: {HELD: %q}
    shell: |
      key=$(echo "$DROVER_HWTHREADS" | tr ',' '_')
      mkdir -p "$HELD/$key"
      touch "$HELD/$key/$DROVER_INSTANCE"
      if [ "$(ls "$HELD/$key" | wc -l)" -gt 1 ]; then
        ls "$HELD/$key" | tr '\n' ' ' > "$HELD/overlap.$DROVER_INSTANCE"
      fi
      sleep 0.2
      rm "$HELD/$key/$DROVER_INSTANCE"
`, total, held))
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 0)
	wantCounts(t, readSummary(t, out), total, total, 0, 0, 0)
	overlaps, _ := filepath.Glob(filepath.Join(held, "overlap.*"))
	if len(overlaps) > 0 {
		var seen []string
		for _, f := range overlaps {
			seen = append(seen, filepath.Base(f)+": "+readFile(t, f))
		}
		t.Errorf("instances ran on the same hwthreads at once: %q", seen)
	}
}
