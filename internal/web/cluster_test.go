package web

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/childtest"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

const backstop = time.Minute

// smtCluster is a cluster of one node "n1" whose one core holds two of
// this machine's hwthreads (declared, so that the test shows a core's
// sibling held with it on any machine of two hwthreads or more).
func smtCluster(t *testing.T) (*cluster.Cluster, []int) {
	t.Helper()
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hw := res.HWThreads()
	if len(hw) < 2 {
		t.Skipf("needs two hwthreads, this machine offers %v", hw)
	}
	core := hw[:2]
	a, err := agent.New(agent.Options{Name: "n1", Resources: topology.Resources{Node: "n1", Cores: [][]int{core}}, Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(time.Second); err != nil {
			t.Errorf("shut down agent: %v", err)
		}
	})
	c := cluster.New(cluster.Options{Home: t.TempDir(), Grace: time.Second})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), backstop)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	c.AddNode(a)
	return c, core
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	t.Cleanup(cancel)
	return ctx
}

func instanceOf(st State, name string) (Instance, bool) {
	i := slices.IndexFunc(st.Instances, func(in Instance) bool { return in.Name == name })
	if i < 0 {
		return Instance{}, false
	}
	return st.Instances[i], true
}

// The processes of drover start as the dashboard's model holds them:
// where they run from the first poll on, one attempt each, the core a
// bound one holds, and gone once purged (also from a subscriber's view).
func TestClusterSourceStartedProcesses(t *testing.T) {
	c, core := smtCluster(t)
	ctx := ctxT(t)
	start := func(name string, hw ...int) {
		t.Helper()
		_, err := c.Start(ctx, cluster.StartRequest{Node: "n1", HWThreads: hw, Spec: node.ProcessSpec{Name: name, Args: childtest.Argv("sleep=1m")}})
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
	}
	start("held", core[0])
	start("free")
	start("gone")
	src := NewClusterSource(c, ClusterOptions{Title: "t"})
	sub := src.Subscribe(ctx)
	src.Poll(ctx)
	st := src.Model.Snapshot()
	for _, want := range []Instance{
		{Name: "held", State: StateRunning, Node: "n1", HWThreads: core[:1], Reserved: core, Attempts: 1},
		{Name: "free", State: StateRunning, Node: "n1", Attempts: 1},
		{Name: "gone", State: StateRunning, Node: "n1", Attempts: 1},
	} {
		in, _ := instanceOf(st, want.Name)
		if in.State != want.State || in.Node != want.Node || !slices.Equal(in.HWThreads, want.HWThreads) ||
			!slices.Equal(in.Reserved, want.Reserved) || in.Attempts != want.Attempts || len(in.Runs) != 1 || in.Runs[0].Node != "n1" {
			t.Errorf("%s: %+v\nwant %+v", want.Name, in, want)
		}
	}

	// Stopped and purged between two polls: the dashboard never saw it
	// end, and it leaves all the same.
	if err := c.Stop(ctx, "gone", time.Second); err != nil {
		t.Fatal(err)
	}
	for {
		ps, err := c.Poll(ctx, "", []string{"gone"})
		if err != nil {
			t.Fatal(err)
		}
		if ps[0].State == node.Exited {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("gone did not end")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.Purge(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	src.Poll(ctx)
	st = src.Model.Snapshot()
	if in, ok := instanceOf(st, "gone"); ok {
		t.Errorf("purged gone is still shown: %+v", in)
	}
	if _, _, ok := src.Instance("gone"); ok {
		t.Errorf("/api/instance still knows the purged gone")
	}
	for removed := false; !removed; {
		select {
		case u := <-sub:
			removed = slices.Contains(u.Removed, "gone")
			if _, ok := instanceOf(State{Instances: u.Instances}, "gone"); ok && removed {
				t.Errorf("an update both removes gone and lists it: %+v", u)
			}
		case <-ctx.Done():
			t.Fatal("no update removed gone")
		}
	}

	// What is left matches drover poll (sorted by name, as it is): two
	// running processes.
	ps, err := c.Poll(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, in := range st.Instances {
		names = append(names, in.Name+" "+in.State)
	}
	if len(ps) != 2 || !slices.Equal(names, []string{"free running", "held running"}) {
		t.Errorf("dashboard %v, drover poll %v", names, ps)
	}

	// Its name again, for a new process: one attempt, not a second one of
	// the purged process.
	start("gone")
	src.Poll(ctx)
	if in, _, _ := src.Instance("gone"); in.State != StateRunning || len(in.Runs) != 1 || in.Attempts != 1 {
		t.Errorf("gone started again: %+v", in)
	}

	// Its cores are free once it ends: the holder holds nothing more.
	if err := c.Stop(ctx, "held", time.Second); err != nil {
		t.Fatal(err)
	}
	for {
		src.Poll(ctx)
		if in, _, _ := src.Instance("held"); in.Final() {
			if len(in.Reserved) != 0 || !slices.Equal(in.HWThreads, core[:1]) || in.Node != "n1" {
				t.Errorf("held after its end: %+v", in)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("held did not end")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
