package cli

import (
	"sync"

	"github.com/drover-hpc/drover/internal/manager"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
)

// nodeFeed passes the nodes that come up, and the launches that fail, to
// the queue as they happen, in order and each once: the manager's
// callbacks push, the queue takes through forward. It never blocks a
// pusher (the manager calls from its sessions and launchers).
type nodeFeed struct {
	onFail func(manager.LaunchFailure) // told of each failure as it is pushed

	mu       sync.Mutex
	items    []queue.Arrival
	seen     map[node.Node]bool
	failed   map[string]bool
	up       int
	settled  bool
	wake     chan struct{} // capacity 1: something was pushed, or settled
	firstUp  chan struct{} // closed when the first node is up
	launched chan struct{} // closed by settle
}

func newNodeFeed(onFail func(manager.LaunchFailure)) *nodeFeed {
	return &nodeFeed{onFail: onFail, seen: make(map[node.Node]bool), failed: make(map[string]bool),
		wake: make(chan struct{}, 1), firstUp: make(chan struct{}), launched: make(chan struct{})}
}

// node is manager.Options.OnNode.
func (f *nodeFeed) node(n node.Node) {
	f.mu.Lock()
	if f.seen[n] || f.settled {
		f.mu.Unlock()
		return
	}
	f.seen[n] = true
	f.items = append(f.items, queue.Arrival{Node: n})
	if f.up++; f.up == 1 {
		close(f.firstUp)
	}
	f.mu.Unlock()
	f.poke()
}

// fail is manager.Options.OnLaunchFailure.
func (f *nodeFeed) fail(lf manager.LaunchFailure) {
	f.mu.Lock()
	if f.failed[lf.Node] || f.settled {
		f.mu.Unlock()
		return
	}
	f.failed[lf.Node] = true
	f.items = append(f.items, queue.Arrival{Name: lf.Node, Err: lf.Reason})
	f.mu.Unlock()
	if f.onFail != nil {
		f.onFail(lf)
	}
	f.poke()
}

func (f *nodeFeed) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// settle ends the feed once the launch is over: whatever joined or failed
// and was not pushed yet (a callback still on its way) is pushed now.
func (f *nodeFeed) settle(m *manager.Manager) {
	for _, n := range m.Nodes() {
		f.node(n)
	}
	for _, lf := range m.LaunchFailures() {
		f.fail(lf)
	}
	f.mu.Lock()
	f.settled = true
	f.mu.Unlock()
	close(f.launched)
	f.poke()
}

// nodes is how many nodes came up so far.
func (f *nodeFeed) nodes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up
}

// forward sends everything pushed to out, then closes out once settled,
// or returns when stop is closed.
func (f *nodeFeed) forward(out chan<- queue.Arrival, stop <-chan struct{}) {
	for {
		f.mu.Lock()
		items, settled := f.items, f.settled
		f.items = nil
		f.mu.Unlock()
		for _, a := range items {
			select {
			case out <- a:
			case <-stop:
				return
			}
		}
		if settled && len(items) == 0 {
			close(out)
			return
		}
		select {
		case <-f.wake:
		case <-stop:
			return
		}
	}
}
