package results

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLogAndPrior(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	zero, three := 0, 3
	err = l.Append(
		Event{Event: Started, Job: "a", Attempt: 1},
		Event{Event: Finished, Job: "a", ExitCode: &zero, Attempt: 1},
		Event{Event: Started, Job: "b", Attempt: 1},
		Event{Event: AttemptFailed, Job: "b", ExitCode: &three, Attempt: 1},
		Event{Event: Started, Job: "b", Attempt: 2},
		Event{Event: Finished, Job: "b", ExitCode: &three, Attempt: 2},
		Event{Event: Started, Job: "e", Attempt: 1}, // cut short by a crash
		Event{Event: Finished, Job: "c", ExitCode: &zero},
		Event{Event: Lost, Job: "c"}, // a later final event wins
		Event{Event: Finished, Job: "d", ExitCode: &zero, Error: "outputs not collected"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A torn last line, as a crash mid-write leaves it, is ignored.
	f, _ := os.OpenFile(filepath.Join(dir, EventsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"time":"2026-01-01T00:00:00Z","event":"fin`)
	f.Close()
	prior, err := ReadPrior(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(prior.Succeeded) != 1 || !prior.Succeeded["a"] {
		t.Fatalf("Succeeded = %v, want only a", prior.Succeeded)
	}
	if want := map[string]int{"b": 2, "e": 1}; !maps.Equal(prior.Attempts, want) {
		t.Fatalf("Attempts = %v, want %v", prior.Attempts, want)
	}
	// A malformed line that is not the last one is an error.
	f, _ = os.OpenFile(filepath.Join(dir, EventsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("\n{}\n")
	f.Close()
	if _, err := ReadPrior(dir); err == nil {
		t.Fatal("a malformed line in the middle was accepted")
	}
}

// Starts the manager never logged (it crashed before hearing of them)
// count through what they left in the instances' output dirs.
func TestPriorCountsUnloggedAttempts(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	zero := 0
	err = l.Append(
		Event{Event: Started, Job: "a", Attempt: 1},
		Event{Event: Finished, Job: "a", ExitCode: &zero, Attempt: 1},
		Event{Event: Started, Job: "b", Attempt: 1},
		Event{Event: Started, Job: "e", Attempt: 1},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		"a/stdout",           // succeeded: not run again, whatever its dir holds
		"b/attempt-1/stdout", // attempt 2 moved attempt 1 aside and started
		"b/stdout",
		"e/stdout", // only the logged attempt
		"f/stderr", // an attempt with no event at all
		"g/.keep",  // a dir made, nothing started
	} {
		path := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("partial\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prior, err := ReadPrior(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"b": 2, "e": 1, "f": 1}; !maps.Equal(prior.Attempts, want) {
		t.Fatalf("Attempts = %v, want %v", prior.Attempts, want)
	}
	if !maps.Equal(prior.Succeeded, map[string]bool{"a": true}) {
		t.Fatalf("Succeeded = %v, want only a", prior.Succeeded)
	}
}

func TestReadPriorWithoutLog(t *testing.T) {
	prior, err := ReadPrior(t.TempDir())
	if err != nil || len(prior.Succeeded) != 0 || len(prior.Attempts) != 0 {
		t.Fatalf("ReadPrior of an empty dir = %+v, %v", prior, err)
	}
}

func TestWriteSummaryStreams(t *testing.T) {
	for _, n := range []int{0, 1, 3} {
		dir := t.TempDir()
		s := &Summary{Start: time.Now(), End: time.Now(), Total: n, Succeeded: n}
		all := func(yield func(InstanceResult) bool) {
			for i := range n {
				if !yield(InstanceResult{Name: "x." + strings.Repeat("i", i), State: StateSucceeded}) {
					return
				}
			}
		}
		if err := WriteSummary(dir, s, all); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, SummaryFile))
		if err != nil {
			t.Fatal(err)
		}
		var back Summary
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("n=%d: summary.json is not JSON: %v\n%s", n, err, data)
		}
		if back.Total != n || len(back.Instances) != n {
			t.Fatalf("n=%d: total %d, %d instances", n, back.Total, len(back.Instances))
		}
		var names []string
		for _, in := range back.Instances {
			names = append(names, in.Name)
		}
		if n == 3 && !slices.Equal(names, []string{"x.", "x.i", "x.ii"}) {
			t.Fatalf("names = %v", names)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, ".summary-*")); len(m) != 0 {
			t.Fatalf("temp files left: %v", m)
		}
	}
}

func TestOutcome(t *testing.T) {
	three := 3
	cases := []struct {
		in   InstanceResult
		want string
	}{
		{InstanceResult{State: StateFailed, ExitCode: &three}, "failed, exit 3"},
		{InstanceResult{State: StateFailed, Signal: "SIGKILL", Error: "timed out after 1s"}, "failed, signal SIGKILL: timed out after 1s"},
		{InstanceResult{State: StateLost, Error: "node lost"}, "lost: node lost"},
	}
	for _, c := range cases {
		if got := c.in.Outcome(); got != c.want {
			t.Errorf("Outcome() = %q, want %q", got, c.want)
		}
	}
}

// TestOpenLogDropsATornLine: a crash mid-write leaves half a line; the next
// run's events must start on a line of their own, so the log stays whole.
func TestOpenLogDropsATornLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, EventsFile)
	whole := `{"time":"2026-01-01T00:00:00Z","event":"run-start"}` + "\n"
	if err := os.WriteFile(path, []byte(whole+`{"time":"2026-01-01T00:00:01Z","event":"fin`), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Event{Event: RunStart}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	f, _ := os.Open(path)
	defer f.Close()
	n := 0
	if err := ReadEvents(f, func(Event) { n++ }); err != nil {
		t.Fatalf("log after the torn line: %v", err)
	}
	if n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), `"fin`) {
		t.Fatalf("the torn line is still there:\n%s", data)
	}
}

// Appends from many goroutines while the group commit syncs: every line
// is whole and present after Close, and the syncer has stopped (goleak).
func TestLogConcurrentAppendsAndClose(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := l.Append(Event{Event: Started, Job: fmt.Sprintf("w%d.%d", w, i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	if err := ReadEvents(f, func(e Event) { seen[e.Job] = true }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct events in the log, want %d", len(seen), writers*each)
	}
}
