package queue_test

import (
	"context"
	"testing"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

// TestLongInstanceDoesNotHoldBackItsSuccessor: once a job's instances have
// proved short, the next ones are queued on the node behind running ones.
// One instance that runs long must not keep the instance queued behind it
// waiting while the other core is free: the queued one gives up and runs
// elsewhere, and that withdrawn start is not an attempt.
func TestLongInstanceDoesNotHoldBackItsSuccessor(t *testing.T) {
	if len(detect(t).Cores) < 2 {
		t.Skip("needs two cores")
	}
	j := &jobfile.Job{Name: "mix", Shell: "if [ {index} = 6 ]; then sleep 3; fi", Repeat: 16}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	o := run(t, context.Background(), []*jobfile.Job{j}, queue.Options{})
	if o.sum.Succeeded != 16 {
		t.Fatalf("summary %+v", *o.sum)
	}
	var long results.InstanceResult
	for _, in := range o.disk.Instances {
		if in.Name == "mix.6" {
			long = in
		}
	}
	for _, in := range o.disk.Instances {
		if in.Attempts != 1 {
			t.Errorf("%s: %d attempts, want 1 (a withdrawn start is not an attempt)", in.Name, in.Attempts)
		}
		if in.Name != "mix.6" && !in.End.Before(long.End) {
			t.Errorf("%s ended at %v, after the long mix.6 (%v): it waited behind it", in.Name, in.End, long.End)
		}
	}
}
