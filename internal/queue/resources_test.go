package queue_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/cores"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// No GPU is on the test machine: nodes get GPUs (and memory, and counted
// resources) through the resources their agent reports, as an agent given
// --gpus, --resource or CUDA_VISIBLE_DEVICES would. The processes are real.

// resAgent starts an in-process agent for this machine whose reported
// resources mod changes.
func resAgent(t *testing.T, name string, mod func(*topology.Resources)) *agent.Agent {
	t.Helper()
	res := detect(t)
	res.Node = name
	mod(&res)
	a, err := agent.New(agent.Options{Name: name, Resources: res, Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(5 * time.Second); err != nil {
			t.Errorf("close agent %s: %v", name, err)
		}
	})
	return a
}

func gpus(vendor string, ids ...string) []topology.GPU {
	var out []topology.GPU
	for _, id := range ids {
		out = append(out, topology.GPU{Vendor: vendor, ID: id, NUMA: -1})
	}
	return out
}

// envOf reads the "KEY=value" lines the helper's env= steps printed.
func envOf(t *testing.T, o *outcome, inst string) map[string]string {
	t.Helper()
	return lines(o.file(t, inst, "stdout"))
}

// oneAtATime fails unless the instances ran one after another: by the
// node's own clock, none started before another had ended.
func oneAtATime(t *testing.T, o *outcome, names ...string) {
	t.Helper()
	for i, a := range names {
		ia := o.instance(t, a)
		for _, b := range names[i+1:] {
			ib := o.instance(t, b)
			if ia.Start.Before(ib.End) && ib.Start.Before(ia.End) {
				t.Errorf("%s (%s to %s) and %s (%s to %s) ran at the same time",
					a, ia.Start.Format(time.StampMicro), ia.End.Format(time.StampMicro), b, ib.Start.Format(time.StampMicro), ib.End.Format(time.StampMicro))
			}
		}
	}
}

var gpuEnvSteps = []string{"env=CUDA_VISIBLE_DEVICES", "env=ROCR_VISIBLE_DEVICES", "env=HIP_VISIBLE_DEVICES", "env=DROVER_GPUS"}

func TestGPUJobsTakeWholeGPUs(t *testing.T) {
	n := resAgent(t, "n1", func(r *topology.Resources) { r.GPUs = gpus(topology.VendorNVIDIA, "0", "1") })
	// Each instance asks for both GPUs: they must run one at a time, even
	// though the cores would let them run together.
	both := job(t, "both", func(j *jobfile.Job) { j.Repeat = 2; j.GPUs = 2 }, append(gpuEnvSteps, "sleep=300ms")...)
	o := run(t, context.Background(), []*jobfile.Job{both}, queue.Options{Nodes: []node.Node{n}})
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	oneAtATime(t, o, "both.0", "both.1")
	for _, inst := range []string{"both.0", "both.1"} {
		env := envOf(t, o, inst)
		if env["CUDA_VISIBLE_DEVICES"] != "0,1" || env["DROVER_GPUS"] != "0,1" || env["ROCR_VISIBLE_DEVICES"] != "" {
			t.Errorf("%s saw %v", inst, env)
		}
	}

	// One GPU each: both run, each on its own GPU.
	one := job(t, "one", func(j *jobfile.Job) { j.Repeat = 2; j.GPUs = 1 }, gpuEnvSteps...)
	o = run(t, context.Background(), []*jobfile.Job{one}, queue.Options{Nodes: []node.Node{n}})
	e0, e1 := envOf(t, o, "one.0"), envOf(t, o, "one.1")
	if !o.sum.OK() || e0["CUDA_VISIBLE_DEVICES"] == "" || e0["CUDA_VISIBLE_DEVICES"] == e1["CUDA_VISIBLE_DEVICES"] ||
		e0["DROVER_GPUS"] != e0["CUDA_VISIBLE_DEVICES"] {
		t.Errorf("summary %+v; one.0 saw %v, one.1 saw %v", *o.sum, e0, e1)
	}
}

func TestAMDGPUsExported(t *testing.T) {
	n := resAgent(t, "n1", func(r *topology.Resources) { r.GPUs = gpus(topology.VendorAMD, "2", "3") })
	j := job(t, "a", func(j *jobfile.Job) { j.GPUs = 2 }, gpuEnvSteps...)
	o := run(t, context.Background(), []*jobfile.Job{j}, queue.Options{Nodes: []node.Node{n}})
	env := envOf(t, o, "a")
	// HIP numbers the GPUs ROCR lets through from 0.
	if !o.sum.OK() || env["ROCR_VISIBLE_DEVICES"] != "2,3" || env["HIP_VISIBLE_DEVICES"] != "0,1" || env["DROVER_GPUS"] != "2,3" ||
		env["CUDA_VISIBLE_DEVICES"] != "" {
		t.Errorf("summary %+v; saw %v", *o.sum, env)
	}
}

func TestMemoryNeverOvercommitted(t *testing.T) {
	n := resAgent(t, "n1", func(r *topology.Resources) { r.MemoryBytes = 3 << 30 })
	// Two instances of 2 GiB do not fit in 3 GiB together.
	j := job(t, "m", func(j *jobfile.Job) { j.Repeat = 2; j.Memory = 2 << 30 }, "sleep=300ms")
	o := run(t, context.Background(), []*jobfile.Job{j}, queue.Options{Nodes: []node.Node{n}})
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	oneAtATime(t, o, "m.0", "m.1")
}

func TestCustomResourcesHonoured(t *testing.T) {
	n := resAgent(t, "n1", func(r *topology.Resources) { r.Custom = map[string]int64{"license": 1} })
	dir := t.TempDir()
	// The first attempt of each fails: a retry takes the license again,
	// and the failed attempt must have given it back.
	lic := job(t, "lic", func(j *jobfile.Job) {
		j.Repeat = 2
		j.Resources = map[string]int64{"license": 1}
		j.Retries = retries(1)
	}, "sleep=200ms", "marker="+filepath.Join(dir, "{index}")+"=3")
	fpga := job(t, "fpga", func(j *jobfile.Job) { j.Resources = map[string]int64{"fpga": 1} })
	o := run(t, context.Background(), []*jobfile.Job{lic, fpga}, queue.Options{Nodes: []node.Node{n}})
	if o.sum.Succeeded != 2 || o.sum.Failed != 1 {
		t.Fatalf("summary %+v", *o.sum)
	}
	oneAtATime(t, o, "lic.0", "lic.1")
	for _, inst := range []string{"lic.0", "lic.1"} {
		if in := o.instance(t, inst); in.Attempts != 2 {
			t.Errorf("%s: %d attempts, want 2", inst, in.Attempts)
		}
	}
	if e := o.only(t, "fpga"); e.State != results.StateFailed || e.Error != "needs 1 of resource fpga; no node has any" {
		t.Errorf("fpga: %+v", e)
	}
}

// TestReservationsReturnedOnNodeLoss: what instances on a lost node held
// goes back to the pool shared with others (drover serve's), and their
// retries elsewhere give back what they took there.
func TestReservationsReturnedOnNodeLoss(t *testing.T) {
	mod := func(r *topology.Resources) {
		r.GPUs = gpus(topology.VendorNVIDIA, "0")
		r.MemoryBytes = 1 << 30
		r.Custom = map[string]int64{"license": 1}
	}
	a1 := resAgent(t, "n1", mod)
	f := newFake(t, a1)
	a2 := resAgent(t, "n2", mod)
	pool := cores.NewPool()
	pool.AddNode("n1", a1.Resources())
	pool.AddNode("n2", a2.Resources())
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")
	// One instance fits on each node; once both run, n1 is lost.
	j := job(t, "g", func(j *jobfile.Job) {
		j.Repeat = 2
		j.GPUs, j.Memory, j.Resources = 1, 1<<30, map[string]int64{"license": 1}
		j.Retries = retries(1)
	}, "touch="+filepath.Join(dir, "{index}.ready"), "waitfile="+goFile)
	go func() {
		if err := waitReady(dir, 2); err != nil {
			t.Error(err)
		}
		f.lose()
		os.WriteFile(goFile, nil, 0o644)
	}()
	o := run(t, context.Background(), []*jobfile.Job{j}, queue.Options{Nodes: []node.Node{f, a2}, Cores: pool})
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	whole := cores.Need{Cores: len(a1.Resources().Cores), GPUs: 1, Memory: 1 << 30, Custom: map[string]int64{"license": 1}}
	for _, name := range []string{"n1", "n2"} {
		if !pool.Fits(name, whole) || len(pool.BusyGPUs(name)) != 0 {
			t.Errorf("after the run, %s is not wholly free: busy GPUs %v", name, pool.BusyGPUs(name))
		}
	}
}

func TestCheckFits(t *testing.T) {
	nodes := []topology.Resources{
		{Node: "small", GPUs: gpus("nvidia", "0"), MemoryBytes: 2 << 30, Custom: map[string]int64{"license": 1}},
		{Node: "big", GPUs: gpus("nvidia", "0", "1"), MemoryBytes: 8 << 30},
	}
	ok := []*jobfile.Job{
		{Name: "a", GPUs: 2, Memory: 8 << 30},
		{Name: "b", Resources: map[string]int64{"license": 1}, Memory: 1 << 30},
	}
	if err := queue.CheckFits(ok, nodes); err != nil {
		t.Errorf("CheckFits of jobs that fit: %v", err)
	}
	for _, tc := range []struct {
		j    *jobfile.Job
		want string
	}{
		{&jobfile.Job{Name: "g", GPUs: 3}, "job g needs 3 GPUs; the largest node has 2"},
		{&jobfile.Job{Name: "m", Memory: 9 << 30}, "job m needs 9G of memory; the largest node has 8G"},
		{&jobfile.Job{Name: "r", Resources: map[string]int64{"license": 2}}, "job r needs 2 of resource license; the most a node has is 1"},
		{&jobfile.Job{Name: "f", Resources: map[string]int64{"fpga": 1}}, "job f needs 1 of resource fpga; no node has any"},
		{&jobfile.Job{Name: "both", GPUs: 2, Resources: map[string]int64{"license": 1}}, "job both: no node has all of its GPUs, memory and resources"},
		{&jobfile.Job{Name: "on", GPUs: 2, Node: "small"}, "job on needs 2 GPUs; node small has 1"},
	} {
		err := queue.CheckFits([]*jobfile.Job{tc.j}, nodes)
		if err == nil || err.Error() != tc.want {
			t.Errorf("CheckFits(%s) = %v, want %q", tc.j.Name, err, tc.want)
		}
	}
}
