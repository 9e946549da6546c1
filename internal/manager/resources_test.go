package manager

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/launch"
)

// TestAgentConfigResources: the counted resources every node declares
// reach each agent's config, and a host's own (a hostfile's columns) add
// to them and win.
func TestAgentConfigResources(t *testing.T) {
	m, err := New(Options{Listen: "127.0.0.1:0", Resources: map[string]int64{"license": 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	}()
	local, err := m.AgentConfig("n0")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(local.Resources, map[string]int64{"license": 1}) {
		t.Errorf("local agent's resources %v", local.Resources)
	}
	ssh, err := m.sshConfig("user@h1", launch.Hello{Hostname: "n1"}, map[string]int64{"license": 3, "fpga": 2})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(ssh.Resources, map[string]int64{"license": 3, "fpga": 2}) {
		t.Errorf("ssh agent's resources %v, want the host's license 3 and fpga 2", ssh.Resources)
	}
	if !maps.Equal(m.opts.Resources, map[string]int64{"license": 1}) {
		t.Errorf("a host's resources changed every node's: %v", m.opts.Resources)
	}
}
