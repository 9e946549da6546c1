// Package cores hands out what processes reserve on the nodes: whole
// cores, whole GPUs, memory, and the counted resources nodes declare. One
// Pool is shared by everything that places processes on a cluster's nodes
// (each batch queue, the start verb), so no two running processes share a
// core or a GPU unless a user asks for unbound processes, and no node's
// memory or resources are promised twice.
//
// GPUs, memory and custom resources live here beside the cores rather
// than in a package of their own because a placement must take all of
// them at once, under one lock, or none: two pools would let one caller
// hold a node's cores while another holds its GPUs, and neither start.
package cores

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/topology"
)

// Need is what one process reserves on one node besides its cores.
type Need struct {
	Cores  int
	GPUs   int
	Memory int64            // bytes; 0 reserves none
	Custom map[string]int64 // counted resources by name
}

// Grant is what a Take reserved; Release gives it back.
type Grant struct {
	Cores  []int // indices of the node's cores
	HW     []int // the hwthreads of those cores
	GPUs   []topology.GPU
	gpus   []int // indices of the node's GPUs
	Memory int64
	Custom map[string]int64
}

// Empty reports whether the grant holds nothing.
func (g Grant) Empty() bool {
	return len(g.Cores) == 0 && len(g.gpus) == 0 && g.Memory == 0 && len(g.Custom) == 0
}

// Pool tracks what is free per node. Safe for concurrent use.
type Pool struct {
	mu      sync.Mutex
	nodes   map[string]*nodeFree
	changed chan struct{} // closed and replaced on every change
}

type nodeFree struct {
	res      topology.Resources
	free     []bool // per core
	nFree    int
	gpuFree  []bool
	memFree  int64
	custFree map[string]int64
}

// NewPool makes an empty pool.
func NewPool() *Pool {
	return &Pool{nodes: make(map[string]*nodeFree), changed: make(chan struct{})}
}

// AddNode offers a node's resources. Adding a node again replaces it with
// everything free.
func (p *Pool) AddNode(name string, res topology.Resources) {
	nf := &nodeFree{res: res, free: make([]bool, len(res.Cores)), nFree: len(res.Cores),
		gpuFree: make([]bool, len(res.GPUs)), memFree: res.MemoryBytes, custFree: maps.Clone(res.Custom)}
	for i := range nf.free {
		nf.free[i] = true
	}
	for i := range nf.gpuFree {
		nf.gpuFree[i] = true
	}
	p.mu.Lock()
	p.nodes[name] = nf
	p.signalLocked()
	p.mu.Unlock()
}

// RemoveNode forgets a node (it was lost); what it had is gone.
func (p *Pool) RemoveNode(name string) {
	p.mu.Lock()
	delete(p.nodes, name)
	p.mu.Unlock()
}

// Free is the number of free cores on a node (0 for an unknown one).
func (p *Pool) Free(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if nf := p.nodes[name]; nf != nil {
		return nf.nFree
	}
	return 0
}

// Fits reports whether need could be taken on the node now.
func (p *Pool) Fits(name string, need Need) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	nf := p.nodes[name]
	return nf != nil && nf.nFree >= need.Cores && nf.othersShort(need) == ""
}

// othersShort says what of need besides cores is not free, or "".
func (nf *nodeFree) othersShort(need Need) string {
	if free := countTrue(nf.gpuFree); need.GPUs > free {
		return fmt.Sprintf("needs %d GPUs, %d of %d free", need.GPUs, free, len(nf.gpuFree))
	}
	if need.Memory > nf.memFree {
		return fmt.Sprintf("needs %d bytes of memory, %d of %d free", need.Memory, nf.memFree, nf.res.MemoryBytes)
	}
	for _, k := range slices.Sorted(maps.Keys(need.Custom)) {
		if v := need.Custom[k]; v > nf.custFree[k] {
			return fmt.Sprintf("needs %d of resource %s, %d of %d free", v, k, nf.custFree[k], nf.res.Custom[k])
		}
	}
	return ""
}

// Take reserves need on a node: its cores lowest first, and GPUs near
// those cores (on their NUMA nodes) first. ok is false, and nothing is
// taken, when any of it is not free.
func (p *Pool) Take(name string, need Need) (g Grant, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	nf := p.nodes[name]
	if nf == nil || nf.nFree < need.Cores || nf.othersShort(need) != "" {
		return Grant{}, false
	}
	for c := 0; c < len(nf.free) && len(g.Cores) < need.Cores; c++ {
		if nf.free[c] {
			g.Cores = append(g.Cores, c)
			g.HW = append(g.HW, nf.res.Cores[c]...)
		}
	}
	nf.takeLocked(&g, need)
	return g, true
}

// TakeThreads reserves the cores that hold the given hwthreads of a node
// (binding to a thread takes its whole core, so no two processes share
// one), and the rest of need (its Cores are ignored). A thread not on the
// node, or more of anything than the node has, is errdefs.ErrInvalid; a
// thread whose core is taken, or too little free, is errdefs.ErrBusy.
func (p *Pool) TakeThreads(name string, hw []int, need Need) (Grant, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	nf := p.nodes[name]
	if nf == nil {
		return Grant{}, fmt.Errorf("%w: node %s has no cores", errdefs.ErrInvalid, name)
	}
	var g Grant
	for _, t := range hw {
		c := slices.IndexFunc(nf.res.Cores, func(core []int) bool { return slices.Contains(core, t) })
		switch {
		case c < 0:
			return Grant{}, fmt.Errorf("%w: hwthread %d is not on node %s", errdefs.ErrInvalid, t, name)
		case !nf.free[c]:
			return Grant{}, fmt.Errorf("%w: hwthread %d: its core is reserved by another process", errdefs.ErrBusy, t)
		case !slices.Contains(g.Cores, c):
			g.Cores = append(g.Cores, c)
		}
	}
	if why := nf.exceeds(need); why != "" {
		return Grant{}, fmt.Errorf("%w: %s", errdefs.ErrInvalid, why)
	}
	if why := nf.othersShort(need); why != "" {
		return Grant{}, fmt.Errorf("%w: %s", errdefs.ErrBusy, why)
	}
	g.HW = slices.Clone(hw)
	nf.takeLocked(&g, need)
	return g, nil
}

// exceeds says what of need besides cores the node does not have at all.
func (nf *nodeFree) exceeds(need Need) string {
	switch {
	case need.GPUs > len(nf.gpuFree):
		return fmt.Sprintf("needs %d GPUs, the node has %d", need.GPUs, len(nf.gpuFree))
	case need.Memory > nf.res.MemoryBytes:
		return fmt.Sprintf("needs %d bytes of memory, the node has %d", need.Memory, nf.res.MemoryBytes)
	}
	for _, k := range slices.Sorted(maps.Keys(need.Custom)) {
		if need.Custom[k] > nf.res.Custom[k] {
			return fmt.Sprintf("needs %d of resource %s, the node has %d", need.Custom[k], k, nf.res.Custom[k])
		}
	}
	return ""
}

// takeLocked marks g's cores taken and takes the rest of need, which
// must be free.
func (nf *nodeFree) takeLocked(g *Grant, need Need) {
	for _, c := range g.Cores {
		nf.free[c] = false
	}
	nf.nFree -= len(g.Cores)
	if need.GPUs > 0 {
		near := make(map[int]bool)
		for _, c := range g.Cores {
			if n := nf.res.CoreNUMA(c); n >= 0 {
				near[n] = true
			}
		}
		// Two passes: GPUs on the cores' NUMA nodes, then any.
		for pass := 0; pass < 2 && len(g.gpus) < need.GPUs; pass++ {
			for i, free := range nf.gpuFree {
				if free && len(g.gpus) < need.GPUs && (pass == 1 || near[nf.res.GPUs[i].NUMA]) {
					nf.gpuFree[i] = false
					g.gpus = append(g.gpus, i)
				}
			}
		}
		slices.Sort(g.gpus)
		for _, i := range g.gpus {
			g.GPUs = append(g.GPUs, nf.res.GPUs[i])
		}
	}
	if need.Memory > 0 {
		nf.memFree -= need.Memory
		g.Memory = need.Memory
	}
	for k, v := range need.Custom {
		if v > 0 {
			nf.custFree[k] -= v
			if g.Custom == nil {
				g.Custom = make(map[string]int64)
			}
			g.Custom[k] = v
		}
	}
}

// Release gives a grant back and wakes whoever waits on Changed.
// Releasing on a removed node is a no-op; nothing ever becomes more free
// than the node has.
func (p *Pool) Release(name string, g Grant) {
	if g.Empty() {
		return
	}
	p.mu.Lock()
	if nf := p.nodes[name]; nf != nil {
		for _, c := range g.Cores {
			if c < len(nf.free) && !nf.free[c] {
				nf.free[c] = true
				nf.nFree++
			}
		}
		for _, i := range g.gpus {
			if i < len(nf.gpuFree) {
				nf.gpuFree[i] = true
			}
		}
		nf.memFree = min(nf.memFree+g.Memory, nf.res.MemoryBytes)
		for k, v := range g.Custom {
			nf.custFree[k] = min(nf.custFree[k]+v, nf.res.Custom[k])
		}
	}
	p.signalLocked()
	p.mu.Unlock()
}

// Busy lists the hwthreads of a node's reserved cores.
func (p *Pool) Busy(name string) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	nf := p.nodes[name]
	if nf == nil {
		return nil
	}
	var busy []int
	for c, free := range nf.free {
		if !free {
			busy = append(busy, nf.res.Cores[c]...)
		}
	}
	return busy
}

// BusyGPUs lists the ids of a node's reserved GPUs.
func (p *Pool) BusyGPUs(name string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := []string{}
	if nf := p.nodes[name]; nf != nil {
		for i, free := range nf.gpuFree {
			if !free {
				busy = append(busy, nf.res.GPUs[i].ID)
			}
		}
	}
	return busy
}

// Changed returns a channel that is closed at the next release or
// addition of a node: every waiter wakes. Take it before looking at the
// pool so that no change is missed.
func (p *Pool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

func (p *Pool) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
