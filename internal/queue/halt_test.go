package queue_test

import (
	"context"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

func TestParseHalt(t *testing.T) {
	good := map[string]queue.Halt{
		"never":        {},
		"now,fail=3":   {Mode: queue.HaltNow, Fails: 3},
		"soon,fail=1":  {Mode: queue.HaltSoon, Fails: 1},
		"now,fail=10%": {Mode: queue.HaltNow, Percent: 10},
	}
	for s, want := range good {
		got, err := queue.ParseHalt(s)
		if err != nil || got != want {
			t.Errorf("ParseHalt(%q) = %+v, %v; want %+v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%+v prints as %q, want %q", got, got.String(), s)
		}
	}
	for _, s := range []string{"now", "later,fail=1", "now,fail=0", "soon,fail=x", "now,fail=101%", "now,success=1"} {
		if _, err := queue.ParseHalt(s); err == nil {
			t.Errorf("ParseHalt(%q) accepted", s)
		}
	}
}

// TestHaltSoon: after the first failure nothing more starts; what runs
// finishes on its own; the rest is cancelled and the summary says why.
func TestHaltSoon(t *testing.T) {
	j := &jobfile.Job{Name: "h", Shell: "exit 1", Repeat: 30}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	o := run(t, context.Background(), []*jobfile.Job{j}, queue.Options{Halt: queue.Halt{Mode: queue.HaltSoon, Fails: 1}})
	s := o.sum
	if !strings.HasPrefix(s.StoppedBecause, "halt soon,fail=1") {
		t.Errorf("stopped because %q", s.StoppedBecause)
	}
	if s.Cancelled == 0 || s.Failed+s.Cancelled != 30 {
		t.Errorf("summary %+v", *s)
	}
	for _, in := range o.disk.Instances {
		if in.State == results.StateFailed && in.Signal != "" {
			t.Errorf("%s was stopped (%s): halt soon must let running instances end", in.Name, in.Signal)
		}
	}
}

// TestHaltNow: once the threshold is passed, running instances are
// stopped too.
func TestHaltNow(t *testing.T) {
	if len(detect(t).Cores) < 2 {
		t.Skip("needs two cores")
	}
	fail := &jobfile.Job{Name: "fail", Shell: "exit 1"}
	slow := &jobfile.Job{Name: "slow", Shell: "sleep 60", Repeat: 8}
	for _, j := range []*jobfile.Job{fail, slow} {
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	// fail takes one core, a slow instance the other: it runs when fail fails.
	o := run(t, context.Background(), []*jobfile.Job{fail, slow}, queue.Options{Halt: queue.Halt{Mode: queue.HaltNow, Fails: 1}})
	s := o.sum
	if !strings.HasPrefix(s.StoppedBecause, "halt now,fail=1") {
		t.Fatalf("stopped because %q (summary %+v)", s.StoppedBecause, *s)
	}
	stopped := 0
	for _, in := range o.disk.Instances {
		if strings.HasPrefix(in.Name, "slow") && in.Signal != "" {
			stopped++
		}
	}
	if stopped == 0 {
		t.Errorf("no running instance was stopped: %+v", o.disk.Instances)
	}
}
