package cluster

import (
	"testing"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// A submission's view of a node, through the Cluster, passes the node
// seam's conformance suite.
func TestNodeConformance(t *testing.T) {
	nodetest.Run(t, func(t *testing.T) node.Node {
		c := newCluster(t, newAgent(t, "n1"))
		s := &submission{num: 99, prefix: "99.", byInst: map[string]*JobInfo{}, stopped: make(chan struct{}), done: make(chan struct{})}
		c.mu.Lock()
		defer c.mu.Unlock()
		m := c.byName["n1"]
		v := newView(c, m, s)
		m.views[v] = struct{}{}
		return v
	})
}
