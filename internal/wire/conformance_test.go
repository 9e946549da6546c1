package wire

import (
	"testing"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// A remote node over real gRPC passes the node seam's conformance suite.
func TestNodeConformance(t *testing.T) {
	nodetest.Run(t, func(t *testing.T) node.Node {
		m := newManager(t, ServerOptions{})
		runAgent(t, "n1", m.addr, AgentOptions{})
		return m.node(t)
	})
}
