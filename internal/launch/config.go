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
}

// ReadConfig reads the one JSON object a launcher writes first on the
// agent's stdin, leaving the rest of the stream unread.
func ReadConfig(r io.Reader) (*AgentConfig, error) {
	var c AgentConfig
	if err := json.NewDecoder(r).Decode(&c); err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	if c.Manager == "" || c.Node == "" || c.Credentials == nil {
		return nil, fmt.Errorf("read agent config: manager, node and credentials are required")
	}
	return &c, nil
}
