package cli

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestReadHostfileResourceColumns(t *testing.T) {
	p := &plan{}
	text := "# nodes\nnode1 license=2,fpga=1\nuser@node2   # none\nnode3 license=1 gpu.slots=4 node4\n"
	if err := p.readHostfile("hosts", text); err != nil {
		t.Fatal(err)
	}
	if want := []string{"node1", "user@node2", "node3", "node4"}; !slices.Equal(p.hosts, want) {
		t.Errorf("hosts %q, want %q", p.hosts, want)
	}
	want := map[string]map[string]int64{
		"node1": {"license": 2, "fpga": 1},
		"node3": {"license": 1, "gpu.slots": 4},
	}
	if !maps.EqualFunc(p.hostRes, want, maps.Equal) {
		t.Errorf("resources %v, want %v", p.hostRes, want)
	}
	for _, bad := range []string{"license=1 node1\n", "node1 license=\n", "node1 license=-1\n", "node1 9x=1\n"} {
		err := (&plan{}).readHostfile("hosts", bad)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != ExitUsage || !strings.Contains(err.Error(), "hosts:1") {
			t.Errorf("hostfile %q: %v, want a usage error at hosts:1", bad, err)
		}
	}
}
