package cluster

import (
	"errors"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
)

// A start whose argv and env a node's session cannot carry is refused
// before it reaches the node, which goes on with what it runs.
func TestStartTooLargeRefused(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	ctx := ctxT(t)
	start(t, c, "n1", "a", helper("sleep=30s")...)
	big := strings.Repeat("x", jobfile.MaxArgsEnvBytes)
	for _, spec := range []node.ProcessSpec{
		{Name: "env", Args: helper(), Env: map[string]string{"BIG": big}},
		{Name: "args", Args: append(helper(), big)},
	} {
		_, err := c.Start(ctx, StartRequest{Node: "n1", Spec: spec})
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "at most 1.0 MiB") {
			t.Errorf("start %s: %v", spec.Name, err)
		}
	}
	if err := c.SetEnv(ctx, "n1", "BIG", big); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("set env: %v", err)
	}
	if st, err := c.Poll(ctx, "", []string{"a"}); err != nil || len(st) != 1 || st[0].State != node.Running {
		t.Errorf("poll a: %+v, %v", st, err)
	}
}

// A submission is bounded: the serve keeps a record of each instance.
func TestSubmitTooManyInstancesRefused(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	file := &jobfile.File{Dir: t.TempDir(), Jobs: []jobfile.Job{{Name: "a", Command: []string{"true"}, Repeat: MaxSubmitInstances + 1, Cores: 1}}}
	if _, err := c.Submit(ctxT(t), file); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "at most 100000") {
		t.Fatalf("submit: %v", err)
	}
}
