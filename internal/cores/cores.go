// Package cores hands out whole cores of nodes. One Pool is shared by
// everything that places processes on a cluster's nodes (each batch queue,
// the start verb), so no two running processes share a core unless a user
// asks for unbound processes.
package cores

import (
	"fmt"
	"slices"
	"sync"

	"github.com/drover-hpc/drover/internal/errdefs"
)

// Pool tracks free cores per node. Safe for concurrent use.
type Pool struct {
	mu      sync.Mutex
	nodes   map[string]*nodeCores
	changed chan struct{} // closed and replaced on every change
}

type nodeCores struct {
	hw    [][]int // hwthreads per core
	free  []bool
	nFree int
}

// NewPool makes an empty pool.
func NewPool() *Pool {
	return &Pool{nodes: make(map[string]*nodeCores), changed: make(chan struct{})}
}

// AddNode offers a node's cores (hwthread ids per core). Adding a node
// again replaces it with all cores free.
func (p *Pool) AddNode(name string, hw [][]int) {
	nc := &nodeCores{hw: hw, free: make([]bool, len(hw)), nFree: len(hw)}
	for i := range nc.free {
		nc.free[i] = true
	}
	p.mu.Lock()
	p.nodes[name] = nc
	p.signalLocked()
	p.mu.Unlock()
}

// RemoveNode forgets a node (it was lost); its cores are gone.
func (p *Pool) RemoveNode(name string) {
	p.mu.Lock()
	delete(p.nodes, name)
	p.mu.Unlock()
}

// Free is the number of free cores on a node (0 for an unknown one).
func (p *Pool) Free(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if nc := p.nodes[name]; nc != nil {
		return nc.nFree
	}
	return 0
}

// Take reserves n free cores on a node, lowest first, and returns their
// indices and hwthreads; ok is false when fewer than n are free.
func (p *Pool) Take(name string, n int) (idx, hw []int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	nc := p.nodes[name]
	if nc == nil || nc.nFree < n {
		return nil, nil, false
	}
	for c := 0; c < len(nc.free) && len(idx) < n; c++ {
		if nc.free[c] {
			nc.free[c] = false
			idx = append(idx, c)
			hw = append(hw, nc.hw[c]...)
		}
	}
	nc.nFree -= n
	return idx, hw, true
}

// TakeThreads reserves the cores that hold the given hwthreads of a node
// (binding to a thread takes its whole core, so no two processes share
// one) and returns their indices. A thread not on the node is
// errdefs.ErrInvalid; a thread whose core is taken is errdefs.ErrBusy.
func (p *Pool) TakeThreads(name string, hw []int) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	nc := p.nodes[name]
	if nc == nil {
		return nil, fmt.Errorf("%w: node %s has no cores", errdefs.ErrInvalid, name)
	}
	var idx []int
	for _, t := range hw {
		c := slices.IndexFunc(nc.hw, func(core []int) bool { return slices.Contains(core, t) })
		switch {
		case c < 0:
			return nil, fmt.Errorf("%w: hwthread %d is not on node %s", errdefs.ErrInvalid, t, name)
		case !nc.free[c]:
			return nil, fmt.Errorf("%w: hwthread %d: its core is reserved by another process", errdefs.ErrBusy, t)
		case !slices.Contains(idx, c):
			idx = append(idx, c)
		}
	}
	for _, c := range idx {
		nc.free[c] = false
	}
	nc.nFree -= len(idx)
	return idx, nil
}

// Release gives cores back and wakes whoever waits on Changed. Releasing
// on a removed node is a no-op.
func (p *Pool) Release(name string, idx []int) {
	if len(idx) == 0 {
		return
	}
	p.mu.Lock()
	if nc := p.nodes[name]; nc != nil {
		for _, c := range idx {
			if !nc.free[c] {
				nc.free[c] = true
				nc.nFree++
			}
		}
	}
	p.signalLocked()
	p.mu.Unlock()
}

// Busy lists the hwthreads of a node's reserved cores.
func (p *Pool) Busy(name string) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	nc := p.nodes[name]
	if nc == nil {
		return nil
	}
	var busy []int
	for c, free := range nc.free {
		if !free {
			busy = append(busy, nc.hw[c]...)
		}
	}
	return busy
}

// Changed returns a channel that is closed at the next release of cores
// or addition of a node: every waiter wakes. Take it before looking at
// the pool so that no change is missed.
func (p *Pool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

func (p *Pool) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}
