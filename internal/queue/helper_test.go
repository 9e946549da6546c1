package queue_test

// The test binary doubles as the child program of these tests (package
// childtest); these names keep the tests short.

import (
	"testing"

	"github.com/drover-hpc/drover/internal/childtest"
)

func TestMain(m *testing.M) { childtest.Main(m) }

var (
	helper    = childtest.Argv
	helperEnv = childtest.Env
	waitFile  = childtest.WaitFile
	alive     = childtest.Alive
	waitGone  = childtest.WaitGone
	lines     = childtest.Lines
	readFile  = childtest.ReadFile
	cpuSet    = childtest.CPUSet
)
