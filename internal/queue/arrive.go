package queue

import (
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/results"
)

// Arrival is news of a node while the run goes on (Options.Joining): one
// that has come up, or one that never will.
type Arrival struct {
	Node node.Node // the node that came up; nil for a failure
	Name string    // the node (or host) that failed
	Err  string    // why it failed
}

// addNode makes n one of the run's nodes: its cores are placed on from
// the next turn of the loop.
func (r *runner) addNode(n node.Node) {
	res := n.Resources()
	ns := &nodeState{n: n, name: n.Name(), idx: len(r.nodes), res: res, running: make(map[string]*instance)}
	if r.ownPool {
		r.pool.AddNode(ns.name, res)
	}
	r.nodes = append(r.nodes, ns)
	r.byName[ns.name] = ns
	r.emit(results.Event{Event: results.NodeUp, Node: ns.name, Cores: len(res.Cores)})
	r.watchers.Add(1)
	go func() {
		defer r.watchers.Done()
		r.watch(ns)
	}()
}

// arrive takes one Arrival. A name seen already (a node that rejoined)
// is not added twice.
func (r *runner) arrive(a Arrival) {
	if a.Node == nil {
		r.emit(results.Event{Event: results.NodeFailed, Node: a.Name, Error: a.Err})
		return
	}
	if ns := r.byName[a.Node.Name()]; ns != nil && !ns.gone {
		return
	}
	r.addNode(a.Node)
}
