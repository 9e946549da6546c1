package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drover-hpc/drover/internal/node"
)

// ProcessInfo is a process started with Start as the dashboard shows it:
// what Poll tells, and where it runs.
type ProcessInfo struct {
	node.Status
	Node  string
	Group string
	PID   int       // 0 while starting
	Since time.Time // when its start returned; zero while starting
	// HWThreads are the hwthreads it is bound to (none: unbound).
	HWThreads []int
	// Reserved are the hwthreads of the cores it holds until its exit:
	// its own and their cores' siblings, which nobody else may take.
	Reserved []int
}

// Processes reports what Poll without names reports (every process
// started with Start and not purged, of group when it is not empty), with
// the node, pid and hwthreads of each, sorted by name.
func (c *Cluster) Processes(ctx context.Context, group string) ([]ProcessInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []ProcessInfo{}
	for _, p := range c.procs {
		if p.view != nil || group != "" && p.group != group {
			continue
		}
		info := ProcessInfo{Status: p.status(), Node: p.m.name, Group: p.group, PID: p.pid, Since: p.since, HWThreads: slices.Clone(p.hw)}
		for _, i := range p.grant.Cores {
			if i < len(p.m.res.Cores) {
				info.Reserved = append(info.Reserved, p.m.res.Cores[i]...)
			}
		}
		slices.Sort(info.Reserved)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b ProcessInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
