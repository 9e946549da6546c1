// Package launch starts drover agents on nodes: as child processes on this
// machine, and (later) over SSH or with srun. An agent gets its whole
// configuration, credentials included, as one JSON object on its stdin, so
// nothing secret is on a command line or in an environment variable; the
// stdin stays open afterwards as a lifeline whose end tells the agent that
// its manager is gone.
package launch

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/drover-hpc/drover/internal/creds"
)

// AgentConfig is what a manager hands an agent.
type AgentConfig struct {
	Manager        string        `json:"manager"` // host:port to dial
	Node           string        `json:"node"`    // the node name the agent reports
	Credentials    *creds.Bundle `json:"credentials"`
	MonitorTimeout time.Duration `json:"monitor_timeout"`
	Grace          time.Duration `json:"grace"`
	LogLevel       string        `json:"log_level"`
	Scratch        string        `json:"scratch,omitempty"`
	// RemoteFS: the agent does not share the manager's filesystem, so
	// files and results travel over its session.
	RemoteFS bool `json:"remote_fs,omitempty"`
	// Resources are counted resources the node declares (drover run and
	// serve --resource, a hostfile's columns), added to those the agent's
	// own --resource gives.
	Resources map[string]int64 `json:"resources,omitempty"`

	// Many-node form, for launchers that broadcast one stdin to every
	// node's agent (srun --input=all): each agent takes its own entry of
	// Nodes by its node name, matched exactly (see Select); Node and
	// Credentials are then empty.
	Nodes map[string]*creds.Bundle `json:"nodes,omitempty"`
	// CPUs is the number of CPUs the allocation gives the job on each node
	// (SLURM_JOB_CPUS_PER_NODE), by node name; 0 or missing = unknown.
	CPUs map[string]int `json:"cpus,omitempty"`
	// ManagerAddrs are more host:port candidates for the manager, tried
	// when Manager cannot be reached (the agent picks the first that
	// completes a TLS handshake with the run's manager).
	ManagerAddrs []string `json:"manager_addrs,omitempty"`
	// ExpectCPUs is what Select sets from CPUs for the chosen node.
	ExpectCPUs int `json:"expect_cpus,omitempty"`
}

// Select turns a many-node config into the one for the first of names
// that has an entry in Nodes, matched exactly (node1 never takes node10's
// credentials). A single-node config is returned as it is.
func (c *AgentConfig) Select(names ...string) (*AgentConfig, error) {
	if len(c.Nodes) == 0 {
		return c, nil
	}
	for _, n := range names {
		b, ok := c.Nodes[n]
		if n == "" || !ok || b == nil {
			continue
		}
		one := *c
		one.Node, one.Credentials, one.Nodes, one.CPUs = n, b, nil, nil
		one.ExpectCPUs = c.CPUs[n]
		return &one, nil
	}
	return nil, fmt.Errorf("agent config: none of the node names %q is in this run's node list", names)
}

// ReadConfig reads the one JSON object a launcher writes first on the
// agent's stdin, leaving the rest of the stream unread.
func ReadConfig(r io.Reader) (*AgentConfig, error) {
	var c AgentConfig
	if err := json.NewDecoder(r).Decode(&c); err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	if c.Manager == "" || (len(c.Nodes) == 0 && (c.Node == "" || c.Credentials == nil)) {
		return nil, fmt.Errorf("read agent config: manager, and node and credentials (or nodes) are required")
	}
	return &c, nil
}
