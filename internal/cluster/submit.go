package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// Instance states in JobInfo.State besides the summary's final ones
// (results.StateSucceeded, StateFailed, StateLost, StateCancelled).
const (
	JobPending = "pending" // not started yet, or waiting for a retry
	JobRunning = "running"
)

// MaxSubmitInstances bounds one submission: the serve keeps a record of
// each instance for `drover jobs`, and the reply names them all.
const MaxSubmitInstances = 100_000

// submission is one Submit: a queue.Run over views of the nodes.
type submission struct {
	num    int
	prefix string // "N."
	dir    string // Home/runs/N
	base   string // the job file's directory
	jobs   []*jobfile.Job
	views  []*view
	cancel context.CancelFunc
	done   chan struct{} // closed when its queue.Run has returned
	// stopped is closed once its queue has stopped placing work after a
	// cancel (it called CancelAll on a view) or has ended.
	stopped  chan struct{}
	stopOnce sync.Once

	// byInst is filled before the submission is published and never
	// changes; the JobInfos in it are guarded by mu.
	byInst map[string]*JobInfo
	mu     sync.Mutex
	order  []*JobInfo
}

func (s *submission) markStopped() { s.stopOnce.Do(func() { close(s.stopped) }) }

func (s *submission) procName(inst string) string { return s.prefix + inst }
func (s *submission) instance(proc string) string { return strings.TrimPrefix(proc, s.prefix) }
func (s *submission) has(inst string) bool        { return s.byInst[inst] != nil }

// Submit queues the file's jobs as submission N (1, 2, ... for this
// Cluster): a batch run with the results layout of `drover run` in
// Home/runs/N/, on views of every node that is up now (nodes that join
// later are not used by it), placing through the shared core pool beside
// the processes started with Start. It returns the cluster-wide names of
// the instances, "N.INSTANCE", which the verbs (poll, logs, stop, ...)
// take; Jobs lists them with the plain instance names too.
func (c *Cluster) Submit(ctx context.Context, file *jobfile.File) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	if file == nil || len(file.Jobs) == 0 {
		return nil, fmt.Errorf("submit: %w: no jobs", errdefs.ErrInvalid)
	}
	total := 0
	for i := range file.Jobs {
		total += max(file.Jobs[i].Repeat, 1)
	}
	if total > MaxSubmitInstances {
		return nil, fmt.Errorf("submit: %w: %d instances, at most %d in one submission (drover run takes up to %d)",
			errdefs.ErrInvalid, total, MaxSubmitInstances, jobfile.MaxInstances)
	}
	s := &submission{base: file.Dir, byInst: make(map[string]*JobInfo), done: make(chan struct{}), stopped: make(chan struct{})}
	for i := range file.Jobs {
		j := file.Jobs[i] // a copy: the caller keeps its file
		s.jobs = append(s.jobs, &j)
		for k := range max(j.Repeat, 1) {
			name := j.Instance(k).Name
			if s.byInst[name] != nil {
				return nil, fmt.Errorf("submit: %w: instance %s appears twice", errdefs.ErrInvalid, name)
			}
			info := &JobInfo{Instance: name, State: JobPending}
			s.byInst[name] = info
			s.order = append(s.order, info)
		}
	}
	if err := queue.CheckFiles(file.Path, s.jobs, file.Dir); err != nil {
		return nil, fmt.Errorf("submit: %w: %w", errdefs.ErrInvalid, err)
	}
	runs := filepath.Join(c.opts.Home, "runs")
	if err := os.MkdirAll(runs, 0o755); err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}

	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return nil, fmt.Errorf("submit: %w", errdefs.ErrClosed)
	}
	var up []*member
	for _, m := range c.members {
		if c.byName[m.name] == m && !m.lost && !m.n.Health().Lost() {
			up = append(up, m)
		}
	}
	if len(up) == 0 {
		c.mu.Unlock()
		return nil, fmt.Errorf("submit: %w: no node is up", errdefs.ErrNodeLost)
	}
	var offered []topology.Resources
	for _, m := range up {
		offered = append(offered, m.res)
	}
	if err := queue.CheckFits(s.jobs, offered); err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("submit: %w: %w", errdefs.ErrInvalid, err)
	}
	for n := c.lastSub + 1; ; n++ {
		if c.prefixUsedLocked(strconv.Itoa(n) + ".") {
			continue
		}
		dir := filepath.Join(runs, strconv.Itoa(n))
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("submit: results dir: %w", err)
		}
		c.lastSub = n
		s.num, s.prefix, s.dir = n, strconv.Itoa(n)+".", dir
		break
	}
	names := make([]string, len(s.order))
	for i, info := range s.order {
		info.Submission = s.num
		info.Process = s.procName(info.Instance)
		info.OutDir = filepath.Join(s.dir, info.Instance)
		names[i] = info.Process
	}
	nodes := make([]node.Node, len(up))
	for i, m := range up {
		v := newView(c, m, s)
		m.views[v] = struct{}{}
		s.views = append(s.views, v)
		nodes[i] = v
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	c.subs = append(c.subs, s)
	c.subByNum[s.num] = s
	c.wg.Add(1)
	c.mu.Unlock()

	c.log.Info("submission", "number", s.num, "instances", len(names), "nodes", len(nodes), "dir", s.dir)
	go c.run(runCtx, s, nodes)
	return names, nil
}

// prefixUsedLocked reports whether a known process name starts with prefix.
func (c *Cluster) prefixUsedLocked(prefix string) bool {
	for name := range c.procs {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// run is the goroutine of one submission.
func (c *Cluster) run(ctx context.Context, s *submission, nodes []node.Node) {
	defer c.wg.Done()
	defer close(s.done)
	defer s.markStopped()
	log := c.log.With("submission", s.num)
	sum, err := queue.Run(ctx, s.jobs, queue.Options{
		Nodes:   nodes,
		OutDir:  s.dir,
		BaseDir: s.base,
		Grace:   c.opts.Grace,
		Logger:  log,
		Cores:   c.pool,
		OnEvent: s.onEvent,
		// drover send reaches a submitted instance too.
		Stdin: true,
	})
	s.cancel()
	s.end(sum, err)
	c.mu.Lock()
	for _, v := range s.views {
		delete(v.m.views, v)
	}
	c.mu.Unlock()
	for _, v := range s.views {
		v.cancel()
	}
	switch {
	case err != nil:
		log.Error("submission ended", "err", err)
	case sum != nil:
		log.Info("submission ended", "succeeded", sum.Succeeded, "failed", sum.Failed, "lost", sum.Lost, "cancelled", sum.Cancelled)
	}
}

// onEvent follows the queue's events (called from its loop: quick).
func (s *submission) onEvent(e results.Event) {
	if e.Job == "" {
		return
	}
	info := s.byInst[e.Job]
	if info == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Node != "" {
		info.Node = e.Node
	}
	if e.Attempt > 0 {
		info.Attempts = e.Attempt
	}
	switch e.Event {
	case results.Started:
		info.State, info.Outcome = JobRunning, ""
	case results.AttemptFailed:
		r := results.InstanceResult{State: "attempt " + strconv.Itoa(e.Attempt) + " failed", ExitCode: e.ExitCode, Signal: e.Signal, Error: e.Error}
		info.State, info.Outcome = JobPending, r.Outcome()
	case results.Finished, results.Failed, results.Lost:
		state := e.Outcome()
		r := results.InstanceResult{State: state, ExitCode: e.ExitCode, Signal: e.Signal, Error: e.Error}
		info.State, info.Outcome = state, r.Outcome()
	}
}

// end takes the final states from the summary (which also tells the
// cancelled ones from the failed).
func (s *submission) end(sum *results.Summary, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sum != nil {
		for in := range sum.NotSucceeded() {
			info := s.byInst[in.Name]
			if info == nil {
				continue
			}
			info.State, info.Outcome = in.State, in.Outcome()
			if in.Node != "" {
				info.Node = in.Node
			}
			if in.Attempts > 0 {
				info.Attempts = in.Attempts
			}
		}
	}
	for _, info := range s.order {
		if info.State == JobPending || info.State == JobRunning {
			info.State = results.StateFailed
			info.Outcome = "failed: the submission ended without a result for it"
			if err != nil {
				info.Outcome = "failed: " + err.Error()
			}
		}
	}
}

// Jobs lists every instance of every submission, in submission and file
// order.
func (c *Cluster) Jobs(ctx context.Context) ([]JobInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	c.mu.Lock()
	subs := slices.Clone(c.subs)
	c.mu.Unlock()
	out := []JobInfo{}
	for _, s := range subs {
		s.mu.Lock()
		for _, info := range s.order {
			out = append(out, *info)
		}
		s.mu.Unlock()
	}
	return out, nil
}
