package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/drover-hpc/drover/internal/logtail"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/results"
)

// RunSource is the Source of a queue run (drover run --dashboard): the
// queue's OnEvent feeds it, the nodes' resources come from the nodes, and
// the output is read from the results directory.
type RunSource struct {
	*Model
	out   string
	nodes []node.Node
}

// RunOptions configure a RunSource.
type RunOptions struct {
	Title  string
	OutDir string // the results directory
	Nodes  []node.Node
	// Instances lists every instance of the run, in order; Skipped those
	// that --resume skips.
	Instances []string
	Skipped   map[string]bool
}

// NewRunSource makes the source; call OnEvent from the queue, Run in a
// goroutine for the nodes' state, and Finish with the summary.
func NewRunSource(opts RunOptions) *RunSource {
	s := &RunSource{Model: NewModel(opts.Title, "run"), out: opts.OutDir, nodes: opts.Nodes}
	s.Add(0, opts.Instances...)
	for name := range opts.Skipped {
		s.SetState(name, results.StateSkipped, "skipped (already done)")
	}
	s.refreshNodes()
	return s
}

// AddNode adds a node that came up after the run started (drover run
// starts with the nodes up and takes the others as they come).
func (s *RunSource) AddNode(n node.Node) {
	s.mu.Lock()
	if !slices.ContainsFunc(s.nodes, func(o node.Node) bool { return o == n }) {
		s.nodes = append(s.nodes, n)
	}
	s.mu.Unlock()
	s.refreshNodes()
}

// OnEvent is the queue's hook: quick, never blocks.
func (s *RunSource) OnEvent(e results.Event) { s.Apply(0, e.Job, e) }

// Finish takes the final states from the run's summary and ends the run.
func (s *RunSource) Finish(sum *results.Summary) {
	if sum != nil {
		for in := range sum.NotSucceeded() {
			s.SetState(in.Name, in.State, in.Outcome())
		}
	}
	s.refreshNodes()
	s.End()
}

// Run refreshes the nodes' state (connection, heartbeat RTT, busy
// hwthreads) every second until ctx ends.
func (s *RunSource) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.refreshNodes()
		}
	}
}

func (s *RunSource) refreshNodes() {
	busy := map[string][]int{}
	procs, gpus := map[string]int{}, map[string]int{}
	s.mu.Lock()
	for _, p := range s.byName {
		if p.State == StateRunning {
			busy[p.Node] = append(busy[p.Node], p.HWThreads...)
			procs[p.Node]++
			gpus[p.Node] += p.GPUs
		}
	}
	all := slices.Clone(s.nodes)
	lost := map[string]bool{}
	for _, n := range all {
		if s.nodeLostLocked(n.Name()) {
			lost[n.Name()] = true
		}
	}
	s.mu.Unlock()
	nodes := make([]Node, 0, len(all))
	for _, n := range all {
		res := n.Resources()
		b := busy[n.Name()]
		slices.Sort(b)
		if b == nil {
			b = []int{}
		}
		info := Node{Name: n.Name(), State: "up", Cores: res.Cores, MemoryBytes: res.MemoryBytes, Busy: b, Processes: procs[n.Name()],
			GPUs: len(res.GPUs), BusyGPUs: gpus[n.Name()]}
		h := n.Health()
		if h.State != "" {
			info.State = h.State
		}
		if lost[n.Name()] {
			info.State = "lost"
		}
		if info.State == "lost" {
			info.Error = "node lost"
			if h.Err != nil {
				info.Error = h.Err.Error()
			}
		} else if hw := len(res.HWThreads()); hw > 0 && len(b) >= hw {
			info.State = "busy"
		}
		info.RTTSeconds = h.RTT.Seconds()
		nodes = append(nodes, info)
	}
	s.SetNodes(nodes)
}

func (s *RunSource) nodeLostLocked(name string) bool {
	for _, n := range s.Model.nodes {
		if n.Name == name {
			return n.State == "lost"
		}
	}
	return false
}

// Logs implements Source: DIR/<instance>/stdout or stderr.
func (s *RunSource) Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error {
	if s.lookup(name) == nil {
		return fmt.Errorf("logs %s: %w", name, errUnknown)
	}
	which := "stdout"
	if stderr {
		which = "stderr"
	}
	path := filepath.Join(s.out, name, which)
	return logtail.File(ctx, path, w, func() bool {
		in := s.lookup(name)
		return !follow || in == nil || in.Final() || s.isEnded()
	}, nil)
}

func (m *Model) isEnded() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ended
}

var errUnknown = errors.New("unknown instance")
