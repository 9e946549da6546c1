package web

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// ClusterAPI is what a ClusterSource reads: the cluster API, and where
// each process started with Start runs (*cluster.Cluster has both).
type ClusterAPI interface {
	cluster.API
	Processes(ctx context.Context, group string) ([]cluster.ProcessInfo, error)
}

// ClusterSource is the Source of a running cluster (drover serve). It
// polls the cluster API for nodes and jobs and follows the events log of
// each submission (Home/runs/N/events.jsonl: the results layout of a
// batch run), which tells the hwthreads, attempts and times the API does
// not. Processes started with `drover start` are shown too, as
// submission 0, while the cluster knows them: a purged one leaves.
type ClusterSource struct {
	*Model
	api    ClusterAPI
	opts   ClusterOptions
	pollMu sync.Mutex // one Poll at a time; guards what follows
	last   time.Time  // of the latest Poll
	subs   map[int]*tail
	// pendingReport are finished instances whose exit time to ask for.
	pendingReport map[string]time.Time
}

// ClusterOptions configure a ClusterSource.
type ClusterOptions struct {
	Title string
	// Every is the polling interval; 0 means 500ms.
	Every time.Duration
	// RTT, if set, gives a node's latest heartbeat round trip.
	RTT func(node string) (time.Duration, bool)
}

// tail follows one submission's events log.
type tail struct {
	num     int
	path    string
	off     int64
	partial []byte
}

// NewClusterSource makes the source; Run polls until its context ends.
func NewClusterSource(api ClusterAPI, opts ClusterOptions) *ClusterSource {
	if opts.Every <= 0 {
		opts.Every = 500 * time.Millisecond
	}
	return &ClusterSource{Model: NewModel(opts.Title, "serve"), api: api, opts: opts, subs: make(map[int]*tail), pendingReport: make(map[string]time.Time)}
}

// Run polls the cluster until ctx ends.
func (s *ClusterSource) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Every)
	defer t.Stop()
	for {
		s.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Snapshot implements Source: up to date, also between polls (a page
// loaded right after a change shows it).
func (s *ClusterSource) Snapshot() State {
	s.pollMu.Lock()
	fresh := time.Since(s.last) < 50*time.Millisecond
	s.pollMu.Unlock()
	if !fresh {
		s.Poll(context.Background())
	}
	return s.Model.Snapshot()
}

// Poll brings the model up to date once.
func (s *ClusterSource) Poll(ctx context.Context) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	defer func() { s.last = time.Now() }()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if nodes, err := s.api.Nodes(ctx); err == nil {
		out := make([]Node, len(nodes))
		for i, n := range nodes {
			out[i] = Node{Name: n.Name, State: n.State, Error: n.Error, Cores: n.Resources.Cores,
				MemoryBytes: n.Resources.MemoryBytes, Busy: n.BusyHWThreads, Processes: n.Processes,
				GPUs: len(n.Resources.GPUs), BusyGPUs: len(n.BusyGPUs)}
			if s.opts.RTT != nil {
				if rtt, ok := s.opts.RTT(n.Name); ok {
					out[i].RTTSeconds = rtt.Seconds()
				}
			}
		}
		s.SetNodes(out)
	}
	// Jobs before the logs: the logs are written before the jobs'
	// states change, so what the logs say is at least as new.
	jobs, err := s.api.Jobs(ctx)
	if err != nil {
		return
	}
	for _, j := range jobs {
		if s.subs[j.Submission] == nil && j.OutDir != "" {
			s.subs[j.Submission] = &tail{num: j.Submission, path: filepath.Join(filepath.Dir(j.OutDir), results.EventsFile)}
		}
		s.Add(j.Submission, j.Process)
	}
	for _, t := range s.subs {
		s.follow(t)
	}
	for _, j := range jobs {
		switch j.State {
		case results.StateSucceeded, results.StateFailed, results.StateLost, results.StateCancelled:
			s.SetState(j.Process, j.State, j.Outcome)
		}
	}
	s.pollStarted(ctx)
	s.timeToReport(ctx)
}

// follow reads what was appended to a submission's events log.
func (s *ClusterSource) follow(t *tail) {
	f, err := os.Open(t.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil || len(data) == 0 {
		return
	}
	t.off += int64(len(data))
	data = append(t.partial, data...)
	last := bytes.LastIndexByte(data, '\n')
	if last < 0 {
		t.partial = data
		return
	}
	t.partial = append([]byte(nil), data[last+1:]...)
	prefix := strconv.Itoa(t.num) + "."
	for line := range bytes.SplitSeq(data[:last], []byte("\n")) {
		var e results.Event
		if len(line) == 0 || json.Unmarshal(line, &e) != nil {
			continue
		}
		name := ""
		if e.Job != "" {
			name = prefix + e.Job
		}
		if e.Event == results.Finished {
			s.pendingReport[name] = e.Time
		}
		s.Apply(t.num, name, e)
	}
}

// pollStarted follows the processes started with `drover start`: each
// has one attempt, which starts when the cluster first reports it.
func (s *ClusterSource) pollStarted(ctx context.Context) {
	procs, err := s.api.Processes(ctx, "")
	if err != nil {
		return
	}
	known := make(map[string]bool, len(procs))
	for _, p := range procs {
		known[p.Name] = true
		cur := s.lookup(p.Name)
		if cur != nil && cur.Final() && p.State == node.Running {
			// Purged and started again under its name between two polls:
			// a new process.
			s.Remove(p.Name)
			cur = nil
		}
		if cur == nil {
			s.Add(0, p.Name)
		}
		started := results.Event{Time: p.Since, Event: results.Started, Node: p.Node, Attempt: 1, HWThreads: topology.FormatCPUList(p.HWThreads)}
		if p.State == node.Running {
			if cur == nil || cur.State != StateRunning {
				if started.Time.IsZero() {
					started.Time = time.Now() // still starting
				}
				s.Apply(0, p.Name, started)
			}
			s.SetReserved(p.Name, p.Reserved)
			continue
		}
		if cur != nil && cur.Final() {
			continue
		}
		e := results.Event{Time: p.Exit.End, Event: results.Finished, Node: p.Node, Attempt: 1, Error: p.Exit.Err}
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		if p.Exit.Signal != 0 {
			e.Signal = node.SignalName(p.Exit.Signal)
		} else {
			code := p.Exit.Code
			e.ExitCode = &code
		}
		if cur == nil || cur.State != StateRunning {
			started.Time = cmp.Or(p.Exit.Start, p.Since, e.Time)
			s.Apply(0, p.Name, started)
		}
		s.Apply(0, p.Name, e)
	}
	s.RemoveOthers(0, known)
}

// timeToReport asks for the exit times of the instances that finished
// since the last poll: the time from the exit on the node to the final
// event is the time to report.
func (s *ClusterSource) timeToReport(ctx context.Context) {
	if len(s.pendingReport) == 0 {
		return
	}
	names := make([]string, 0, len(s.pendingReport))
	for n := range s.pendingReport {
		names = append(names, n)
	}
	for _, n := range names {
		st, err := s.api.Poll(ctx, "", []string{n})
		if err != nil || len(st) != 1 {
			if err == nil || !strings.Contains(err.Error(), "context") {
				delete(s.pendingReport, n)
			}
			continue
		}
		if st[0].State == node.Exited {
			if end := st[0].Exit.End; !end.IsZero() {
				if d := s.pendingReport[n].Sub(end); d >= 0 {
					s.ObserveReport(d.Seconds())
				}
			}
			delete(s.pendingReport, n)
		}
	}
}

// Logs implements Source through the cluster API (the process's name is
// the instance's name under serve).
func (s *ClusterSource) Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error {
	return s.api.Logs(ctx, name, stderr, follow, w)
}
