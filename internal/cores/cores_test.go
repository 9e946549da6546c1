package cores

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/topology"
)

func coresOnly(hw [][]int) topology.Resources { return topology.Resources{Cores: hw} }

func TestTakeRelease(t *testing.T) {
	p := NewPool()
	p.AddNode("n1", coresOnly([][]int{{0, 4}, {1, 5}, {2, 6}}))
	g, ok := p.Take("n1", Need{Cores: 2})
	if !ok || !slices.Equal(g.Cores, []int{0, 1}) || !slices.Equal(g.HW, []int{0, 4, 1, 5}) {
		t.Fatalf("Take 2 = %+v %v", g, ok)
	}
	if _, ok := p.Take("n1", Need{Cores: 2}); ok {
		t.Fatal("took 2 cores when only 1 was free")
	}
	if got := p.Busy("n1"); !slices.Equal(got, []int{0, 4, 1, 5}) {
		t.Fatalf("Busy = %v", got)
	}
	changed := p.Changed()
	p.Release("n1", Grant{Cores: []int{0}})
	select {
	case <-changed:
	default:
		t.Fatal("Release did not signal Changed")
	}
	if p.Free("n1") != 2 {
		t.Fatalf("Free = %d, want 2", p.Free("n1"))
	}
	// A double release must not make a core count twice.
	p.Release("n1", Grant{Cores: []int{0}})
	if p.Free("n1") != 2 {
		t.Fatalf("Free after double release = %d, want 2", p.Free("n1"))
	}
	if _, ok := p.Take("nope", Need{Cores: 1}); ok {
		t.Fatal("took a core on an unknown node")
	}
	p.RemoveNode("n1")
	p.Release("n1", Grant{Cores: []int{1}}) // no-op, no panic
	if p.Free("n1") != 0 {
		t.Fatal("a removed node still has free cores")
	}
}

// TestNoCoreTwice hammers the pool from many goroutines: a core is never
// held by two takers at once.
func TestNoCoreTwice(t *testing.T) {
	p := NewPool()
	const cores = 8
	hw := make([][]int, cores)
	for i := range hw {
		hw[i] = []int{i}
	}
	p.AddNode("n", coresOnly(hw))
	var mu sync.Mutex
	held := make(map[int]bool)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for range 500 {
				changed := p.Changed() // before Take, so no release is missed
				gr, ok := p.Take("n", Need{Cores: 1 + g%3})
				idx := gr.Cores
				if !ok {
					<-changed
					continue
				}
				mu.Lock()
				for _, c := range idx {
					if held[c] {
						t.Errorf("core %d handed out twice", c)
					}
					held[c] = true
				}
				mu.Unlock()
				mu.Lock()
				for _, c := range idx {
					delete(held, c)
				}
				mu.Unlock()
				p.Release("n", gr)
			}
		})
	}
	wg.Wait()
	if p.Free("n") != cores {
		t.Fatalf("Free = %d after all released, want %d", p.Free("n"), cores)
	}
}

// gpuNode has four cores, two per NUMA node, and four GPUs, listed so that
// the first two sit on NUMA node 1, the last two on node 0.
func gpuNode() topology.Resources {
	return topology.Resources{
		Cores:       [][]int{{0}, {1}, {2}, {3}},
		NUMA:        []int{0, 0, 1, 1},
		MemoryBytes: 8 << 30,
		GPUs: []topology.GPU{
			{Vendor: "nvidia", ID: "0", NUMA: 1}, {Vendor: "nvidia", ID: "1", NUMA: 1},
			{Vendor: "nvidia", ID: "2", NUMA: 0}, {Vendor: "nvidia", ID: "3", NUMA: 0},
		},
		Custom: map[string]int64{"license": 2},
	}
}

func gpuIDs(g Grant) []string {
	var ids []string
	for _, x := range g.GPUs {
		ids = append(ids, x.ID)
	}
	return ids
}

func TestTakeGPUsNearTheirCores(t *testing.T) {
	p := NewPool()
	p.AddNode("n", gpuNode())
	// Cores 0 and 1 are on NUMA node 0: GPUs 2 and 3 are theirs.
	a, ok := p.Take("n", Need{Cores: 2, GPUs: 2})
	if !ok || !slices.Equal(gpuIDs(a), []string{"2", "3"}) {
		t.Fatalf("Take = %+v %v, want GPUs 2,3 near cores 0,1", a, ok)
	}
	// Core 2 is on node 1: GPU 0 is free there.
	b, ok := p.Take("n", Need{Cores: 1, GPUs: 1})
	if !ok || !slices.Equal(gpuIDs(b), []string{"0"}) {
		t.Fatalf("Take = %+v %v, want GPU 0", b, ok)
	}
	if _, ok := p.Take("n", Need{Cores: 1, GPUs: 2}); ok {
		t.Fatal("took 2 GPUs with 1 free")
	}
	if p.Free("n") != 1 {
		t.Fatal("a failed Take kept cores")
	}
	if got := p.BusyGPUs("n"); !slices.Equal(got, []string{"0", "2", "3"}) {
		t.Fatalf("BusyGPUs = %v", got)
	}
	p.Release("n", a)
	c, ok := p.Take("n", Need{GPUs: 3})
	if !ok || !slices.Equal(gpuIDs(c), []string{"1", "2", "3"}) {
		t.Fatalf("Take 3 GPUs without cores = %+v %v", c, ok)
	}
}

func TestMemoryAndCustomNeverOvercommitted(t *testing.T) {
	p := NewPool()
	p.AddNode("n", gpuNode())
	a, ok := p.Take("n", Need{Cores: 1, Memory: 5 << 30, Custom: map[string]int64{"license": 1}})
	if !ok {
		t.Fatal("first take failed")
	}
	if p.Fits("n", Need{Cores: 1, Memory: 4 << 30}) {
		t.Fatal("4 GiB fits beside 5 GiB on an 8 GiB node")
	}
	b, ok := p.Take("n", Need{Cores: 1, Memory: 3 << 30, Custom: map[string]int64{"license": 1}})
	if !ok {
		t.Fatal("3 GiB and the second license did not fit")
	}
	if _, ok := p.Take("n", Need{Cores: 1, Custom: map[string]int64{"license": 1}}); ok {
		t.Fatal("a third license was handed out")
	}
	if _, ok := p.Take("n", Need{Cores: 1, Custom: map[string]int64{"fpga": 1}}); ok {
		t.Fatal("a resource the node lacks was handed out")
	}
	p.Release("n", a)
	p.Release("n", a) // twice: nothing becomes more free than the node has
	p.Release("n", b)
	if !p.Fits("n", Need{Memory: 8 << 30, Custom: map[string]int64{"license": 2}}) {
		t.Fatal("everything released, yet the whole node does not fit")
	}
	if p.Fits("n", Need{Memory: 8<<30 + 1}) || p.Fits("n", Need{Custom: map[string]int64{"license": 3}}) {
		t.Fatal("a double release made more free than the node has")
	}
}

func TestTakeThreadsWithGPUs(t *testing.T) {
	p := NewPool()
	p.AddNode("n", gpuNode())
	g, err := p.TakeThreads("n", []int{3}, Need{GPUs: 1})
	if err != nil || !slices.Equal(g.Cores, []int{3}) || !slices.Equal(gpuIDs(g), []string{"0"}) {
		t.Fatalf("TakeThreads = %+v, %v; want core 3 and GPU 0 (NUMA 1)", g, err)
	}
	if _, err := p.TakeThreads("n", []int{0}, Need{GPUs: 5}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("5 GPUs of 4: %v, want invalid", err)
	}
	if _, err := p.TakeThreads("n", []int{0}, Need{GPUs: 4}); !errors.Is(err, errdefs.ErrBusy) {
		t.Fatalf("4 GPUs with 3 free: %v, want busy", err)
	}
	if p.Free("n") != 3 {
		t.Fatal("a refused TakeThreads kept a core")
	}
}
