package nodetest

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/node"
)

// Source reports exits as node.Node does: Finished hands each out once,
// Ready is signalled when there is something new and closed when no more
// will come. The supervisor, every node.Node and the tests' adapters of
// serve's mailbox are Sources. A Source whose Ready is nil is polled: its
// Finished must then wait a little itself when it has nothing.
type Source interface {
	Finished() []node.Exit
	Ready() <-chan struct{}
}

// Exits gathers the exits a Source reports, by name, for the tests of
// every layer; an exit reported twice fails the test. It is safe for
// concurrent use.
type Exits struct {
	t   testing.TB
	src Source

	mu   sync.Mutex
	got  map[string]node.Exit
	gone bool // Ready was closed
}

// NewExits gathers what src reports.
func NewExits(t testing.TB, src Source) *Exits {
	return &Exits{t: t, src: src, got: map[string]node.Exit{}}
}

// Take gathers what src has now.
func (x *Exits) Take() {
	x.t.Helper()
	exits := x.src.Finished()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range exits {
		if prev, dup := x.got[e.Name]; dup {
			x.t.Errorf("exit of %s reported twice: %v, then %v", e.Name, prev, e)
		}
		x.got[e.Name] = e
	}
}

// Forget lets names be reported again (purged and started anew).
func (x *Exits) Forget(names ...string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, n := range names {
		delete(x.got, n)
	}
}

// Got is every exit gathered so far, by name.
func (x *Exits) Got() map[string]node.Exit {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.got)
}

// Wait waits (bounded) for an exit of each name and returns them in the
// order named. Without names it gathers what is there, failing on
// duplicates.
func (x *Exits) Wait(names ...string) []node.Exit {
	x.t.Helper()
	x.until(func(got map[string]node.Exit) string {
		if i := slices.IndexFunc(names, func(n string) bool { _, ok := got[n]; return !ok }); i >= 0 {
			return "an exit of " + names[i]
		}
		return ""
	})
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]node.Exit, len(names))
	for i, n := range names {
		out[i] = x.got[n]
	}
	return out
}

// One waits for the exit of name and returns it.
func (x *Exits) One(name string) node.Exit {
	x.t.Helper()
	return x.Wait(name)[0]
}

// WaitGone gathers exits until Ready is closed (the node is gone).
func (x *Exits) WaitGone() {
	x.t.Helper()
	x.until(func(map[string]node.Exit) string {
		if x.gone {
			return ""
		}
		return "the end of the node"
	})
}

// WaitCount waits until exits of n distinct names were gathered.
func (x *Exits) WaitCount(n int) {
	x.t.Helper()
	x.until(func(got map[string]node.Exit) string {
		if len(got) < n {
			return fmt.Sprintf("exits beyond %d of %d", len(got), n)
		}
		return ""
	})
}

// until takes exits until missing (called under x.mu) returns "", failing
// with what it returned when src is gone or patience runs out.
func (x *Exits) until(missing func(map[string]node.Exit) string) {
	x.t.Helper()
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	ready := x.src.Ready()
	for {
		x.Take()
		x.mu.Lock()
		what, gone := missing(x.got), x.gone
		x.mu.Unlock()
		switch {
		case what == "":
			return
		case gone:
			x.t.Fatalf("%s never came: the node is gone", what)
		}
		if ready == nil {
			select {
			case <-deadline.C:
				x.t.Fatalf("%s did not come within %v", what, patience)
			default:
			}
			continue
		}
		select {
		case _, ok := <-ready:
			if !ok {
				x.mu.Lock()
				x.gone = true // one more Take, then give up
				x.mu.Unlock()
			}
		case <-deadline.C:
			x.t.Fatalf("%s did not come within %v", what, patience)
		}
	}
}
