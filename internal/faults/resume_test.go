package faults_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestManagerSIGKILLThenResume: drover run is SIGKILLed mid-run (its
// events log may end in a torn line); `drover run --resume` with the same
// --out runs only what did not finish with exit 0, and in the whole log no
// instance has two successful final events: nothing ran twice and counted
// twice.
func TestManagerSIGKILLThenResume(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	const n = 400
	// The second half of the instances wait (bounded) for the gate, which
	// opens only for the resumed run: the first run cannot finish before
	// the kill, however the machine is loaded.
	gate := filepath.Join(dir, "gate")
	shell := fmt.Sprintf(`sleep 0.02; [ "$DROVER_INDEX" -lt %d ] && exit 0; `+
		`for i in $(seq 1200); do [ -e %q ] && exit 0; sleep 0.05; done; exit 1`, n/2, gate)
	args := []string{"run", "--progress", "none", "--out", out, "--repeat", strconv.Itoa(n), "--", "sh", "-c", shell}
	d := startDrover(t, dir, nil, args...)
	// Let part of the run finish, then, while the log shows an instance
	// running (the gated ones run until the kill), kill the manager
	// outright.
	deadline := time.Now().Add(2 * time.Minute)
	for c := countEvents(out); c["finished"] < n/4 || c["started"] <= c["finished"]+c["failed"]; c = countEvents(out) {
		if time.Now().After(deadline) || !d.Running() {
			t.Fatalf("the first run did not get going:\n%s", d.Out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := unix.Kill(d.PID(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.Wait(t, slack)
	before := countEvents(out)["finished"]
	if before >= n {
		t.Fatalf("the run finished before it was killed (%d finished)", before)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves a torn last line: the next run drops it.
	f, err := os.OpenFile(filepath.Join(out, "events.jsonl"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2026-01-01T00:00:00Z","event":"finis`)
	f.Close()

	r := startDrover(t, dir, nil, append([]string{"run", "--resume"}, args[1:]...)...)
	if code := r.Wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("the resumed run exited %d:\n%s", code, r.Out)
	}
	if !strings.Contains(r.Out.String(), "skipped (already done)") {
		t.Errorf("the resumed run skipped nothing:\n%s", r.Out)
	}
	// The torn line is gone (readEvents wants whole lines only).
	ok := map[string]int{}
	// Instances cut short by the kill (started, no final event) go on with
	// attempt 2, their first attempt's output moved aside, not truncated.
	runs, cut := 0, map[string]bool{}
	for _, e := range readEvents(t, out) {
		switch {
		case e.Event == "run-start":
			runs++
		case runs == 1 && e.Event == "started":
			cut[e.Job] = true
		case runs == 1 && e.final():
			delete(cut, e.Job)
		case runs == 2 && e.Event == "started" && cut[e.Job] && e.Attempt != 2:
			t.Errorf("%s, cut short by the kill, resumed as attempt %d, want 2", e.Job, e.Attempt)
		}
		if e.Event == "finished" && e.ExitCode != nil && *e.ExitCode == 0 && e.Error == "" {
			ok[e.Job]++
		}
	}
	for name := range cut {
		if _, err := os.Stat(filepath.Join(out, name, "attempt-1")); err != nil {
			t.Errorf("%s, cut short by the kill: its first attempt's output is not kept: %v", name, err)
		}
	}
	if len(cut) == 0 {
		t.Errorf("no instance was logged running at the kill")
	}
	for _, name := range instanceNames("sh", n) {
		switch ok[name] {
		case 1:
		case 0:
			t.Errorf("%s never succeeded", name)
		default:
			t.Errorf("%s succeeded %d times: it ran again after it had counted", name, ok[name])
		}
	}
	t.Logf("killed with %d of %d finished (%d running); resume ran the rest", before, n, len(cut))
}
