package cores

import (
	"slices"
	"sync"
	"testing"
)

func TestTakeRelease(t *testing.T) {
	p := NewPool()
	p.AddNode("n1", [][]int{{0, 4}, {1, 5}, {2, 6}})
	idx, hw, ok := p.Take("n1", 2)
	if !ok || !slices.Equal(idx, []int{0, 1}) || !slices.Equal(hw, []int{0, 4, 1, 5}) {
		t.Fatalf("Take 2 = %v %v %v", idx, hw, ok)
	}
	if _, _, ok := p.Take("n1", 2); ok {
		t.Fatal("took 2 cores when only 1 was free")
	}
	if got := p.Busy("n1"); !slices.Equal(got, []int{0, 4, 1, 5}) {
		t.Fatalf("Busy = %v", got)
	}
	changed := p.Changed()
	p.Release("n1", []int{0})
	select {
	case <-changed:
	default:
		t.Fatal("Release did not signal Changed")
	}
	if p.Free("n1") != 2 {
		t.Fatalf("Free = %d, want 2", p.Free("n1"))
	}
	// A double release must not make a core count twice.
	p.Release("n1", []int{0})
	if p.Free("n1") != 2 {
		t.Fatalf("Free after double release = %d, want 2", p.Free("n1"))
	}
	if _, _, ok := p.Take("nope", 1); ok {
		t.Fatal("took a core on an unknown node")
	}
	p.RemoveNode("n1")
	p.Release("n1", []int{1}) // no-op, no panic
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
	p.AddNode("n", hw)
	var mu sync.Mutex
	held := make(map[int]bool)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for range 500 {
				changed := p.Changed() // before Take, so no release is missed
				idx, _, ok := p.Take("n", 1+g%3)
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
				p.Release("n", idx)
			}
		})
	}
	wg.Wait()
	if p.Free("n") != cores {
		t.Fatalf("Free = %d after all released, want %d", p.Free("n"), cores)
	}
}
