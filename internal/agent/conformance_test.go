package agent_test

import (
	"testing"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// The in-process agent passes the node seam's conformance suite.
func TestNodeConformance(t *testing.T) {
	nodetest.Run(t, func(t *testing.T) node.Node {
		a, _ := newAgent(t)
		return a
	})
}
