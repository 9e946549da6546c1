package queue_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

// Nodes that come up while the run goes on: work starts on the first one
// at once, a job pinned to a later one waits for it instead of failing,
// a launch that failed is an event, and only once no more nodes can come
// is a job that no node can take failed.
func TestNodesJoinWhileTheRunGoesOn(t *testing.T) {
	first, late := newAgent(t, "first"), newAgent(t, "late")
	jobs := []*jobfile.Job{
		job(t, "any", func(j *jobfile.Job) { j.Repeat = 3 }, "out=any"),
		job(t, "pinned", func(j *jobfile.Job) { j.Node = "late" }, "out=pinned"),
		job(t, "nowhere", func(j *jobfile.Job) { j.Node = "never" }, "out=nowhere"),
	}
	joining := make(chan queue.Arrival)
	anyDone := make(chan struct{})
	finished := 0
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		defer close(joining)
		joining <- queue.Arrival{Node: first}
		joining <- queue.Arrival{Name: "bad", Err: "ssh: no answer within 1s"}
		<-anyDone // the late node comes only once the first did all it could
		joining <- queue.Arrival{Node: late}
	}()
	o := run(t, context.Background(), jobs, queue.Options{
		Nodes:   []node.Node{},
		Joining: joining,
		OnEvent: func(e results.Event) {
			if strings.HasPrefix(e.Job, "any.") && e.Final() {
				if finished++; finished == 3 {
					close(anyDone)
				}
			}
		},
	})
	<-feederDone

	if s := o.sum; s.Total != 5 || s.Succeeded != 4 || s.Failed != 1 {
		t.Errorf("summary %+v", *s)
	}
	for _, name := range []string{"any.0", "any.1", "any.2"} {
		if e := o.only(t, name); e.Outcome() != results.StateSucceeded || e.Node != "first" {
			t.Errorf("%s: %+v", name, e)
		}
	}
	if e := o.only(t, "pinned"); e.Outcome() != results.StateSucceeded || e.Node != "late" {
		t.Errorf("pinned: %+v", e)
	}
	if e := o.only(t, "nowhere"); e.Event != results.Failed || !strings.Contains(e.Error, `no node named "never"`) {
		t.Errorf("nowhere: %+v", e)
	}
	var seq []string
	for _, e := range o.events {
		switch e.Event {
		case results.NodeUp, results.NodeFailed:
			seq = append(seq, e.Event+" "+e.Node)
			if e.Event == results.NodeFailed && e.Error != "ssh: no answer within 1s" {
				t.Errorf("node-failed event %+v", e)
			}
		}
	}
	if want := []string{"node-up first", "node-failed bad", "node-up late"}; !slices.Equal(seq, want) {
		t.Errorf("node events %q, want %q", seq, want)
	}
	o.noChildLeft(t)
}
