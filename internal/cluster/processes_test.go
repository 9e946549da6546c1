package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/node"
)

// Processes tells where each process of Start runs, from its start on:
// node, pid, bound hwthreads and the cores it holds, until it is purged;
// a group sees its own only.
func TestProcesses(t *testing.T) {
	a := newAgent(t, "n1")
	c := newCluster(t, a)
	ctx := ctxT(t)
	core := a.Resources().Cores[0]
	if _, err := c.Start(ctx, StartRequest{Node: "n1", HWThreads: core[:1], Group: "g",
		Spec: node.ProcessSpec{Name: "held", Args: helper("sleep=30s")}}); err != nil {
		t.Fatal(err)
	}
	start(t, c, "n1", "free", helper("sleep=30s")...)
	ps, err := c.Processes(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Name != "free" || ps[1].Name != "held" {
		t.Fatalf("processes %+v", ps)
	}
	free, held := ps[0], ps[1]
	if held.State != node.Running || held.Node != "n1" || held.Group != "g" || held.PID <= 0 || held.Since.IsZero() ||
		!slices.Equal(held.HWThreads, core[:1]) || !slices.Equal(held.Reserved, core) {
		t.Errorf("held: %+v, want running on n1 bound to %v holding %v", held, core[:1], core)
	}
	if free.State != node.Running || free.Node != "n1" || free.PID <= 0 || len(free.HWThreads) != 0 || len(free.Reserved) != 0 {
		t.Errorf("free: %+v, want running on n1, unbound", free)
	}
	if ps, _ := c.Processes(ctx, "g"); len(ps) != 1 || ps[0].Name != "held" {
		t.Errorf("group g: %+v", ps)
	}

	// Ended: where it ran stays, its cores are free; purged: gone.
	if err := c.Stop(ctx, "held", time.Second); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := c.Poll(ctx, "g", []string{"held"})
		if err != nil {
			t.Fatal(err)
		}
		if st[0].State == node.Exited {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("held did not end")
		case <-time.After(10 * time.Millisecond):
		}
	}
	ps, _ = c.Processes(ctx, "g")
	if len(ps) != 1 || ps[0].State != node.Exited || ps[0].Node != "n1" || !slices.Equal(ps[0].HWThreads, core[:1]) || len(ps[0].Reserved) != 0 {
		t.Errorf("held after its exit: %+v", ps)
	}
	if err := c.Purge(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	if ps, _ := c.Processes(ctx, ""); len(ps) != 1 || ps[0].Name != "free" {
		t.Errorf("after the purge: %+v", ps)
	}
}
