package web

import (
	"testing"

	"github.com/drover-hpc/drover/internal/childtest"
)

// The test binary is also the child program of the tests that start
// processes through an agent.
func TestMain(m *testing.M) { childtest.Main(m) }
