package procs

import (
	"runtime"
	"testing"
)

// restore puts GOMAXPROCS back as it was before the test.
func restore(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

func TestOnePUntilAThousandNodes(t *testing.T) {
	restore(t)
	runtime.GOMAXPROCS(2) // as on a machine of two cores
	t.Setenv("GOMAXPROCS", "")
	s := NewManager()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("a manager with no node: GOMAXPROCS %d, want 1", got)
	}
	for range NodesPerP - 1 {
		s.Joined()
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("%d nodes: GOMAXPROCS %d, want 1", NodesPerP-1, got)
	}
	s.Joined()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("%d nodes: GOMAXPROCS %d, want 2", NodesPerP, got)
	}
	for range 3 * NodesPerP {
		s.Joined()
	}
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("%d nodes on two cores: GOMAXPROCS %d, want 2 (never more than the default)", 4*NodesPerP, got)
	}
}

func TestUserChoiceLeftAlone(t *testing.T) {
	restore(t)
	runtime.GOMAXPROCS(2)
	t.Setenv("GOMAXPROCS", "2")
	s := NewManager()
	s.Joined()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("GOMAXPROCS=2 in the environment: got %d", got)
	}
}
