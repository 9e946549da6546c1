package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/supervise"
)

// Start starts a process on a node. Of req.Spec it uses Name, Args, Env,
// Dir, Stdout and Stderr. An output path left empty becomes
// Home/procs/<name>/stdout (or stderr), so every process has logs; a
// relative one is relative to Dir, and needs one. With Cores > 0 that
// many whole cores of the node are reserved (ErrNoCores when fewer are
// free) and the process is bound to their hwthreads until its exit.
func (c *Cluster) Start(ctx context.Context, req StartRequest) (StartResult, error) {
	spec := req.Spec
	// The name is checked first: it goes into every message below.
	if err := CheckName(spec.Name); err != nil {
		return StartResult{}, fmt.Errorf("start on %q: %w", req.Node, err)
	}
	op := fmt.Sprintf("start %s on %s", spec.Name, req.Node)
	if err := ctx.Err(); err != nil {
		return StartResult{}, fmt.Errorf("%s: %w", op, err)
	}
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return StartResult{}, fmt.Errorf("%s: %w: no command", op, ErrInvalid)
	}
	if req.Cores < 0 {
		return StartResult{}, fmt.Errorf("%s: %w: %d cores", op, ErrInvalid, req.Cores)
	}
	procDir := filepath.Join(c.opts.Home, "procs", spec.Name)
	stdout, err := outputPath(spec.Stdout, spec.Dir, filepath.Join(procDir, "stdout"))
	if err != nil {
		return StartResult{}, fmt.Errorf("%s: stdout: %w", op, err)
	}
	stderr, err := outputPath(spec.Stderr, spec.Dir, filepath.Join(procDir, "stderr"))
	if err != nil {
		return StartResult{}, fmt.Errorf("%s: stderr: %w", op, err)
	}

	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return StartResult{}, fmt.Errorf("%s: %w", op, ErrShuttingDown)
	}
	m, err := c.memberLocked("start "+spec.Name, req.Node)
	if err != nil {
		c.mu.Unlock()
		return StartResult{}, err
	}
	if c.procs[spec.Name] != nil || c.reservedLocked(spec.Name) {
		c.mu.Unlock()
		return StartResult{}, fmt.Errorf("%s: %w", op, supervise.ErrDuplicate)
	}
	p := &proc{name: spec.Name, m: m, stdout: stdout, stderr: stderr}
	if req.Cores > 0 {
		idx, hw, ok := c.pool.Take(m.name, req.Cores)
		if !ok {
			free, total := c.pool.Free(m.name), len(m.res.Cores)
			c.mu.Unlock()
			if req.Cores > total {
				return StartResult{}, fmt.Errorf("%s: %w: needs %d, the node has %d", op, ErrNoCores, req.Cores, total)
			}
			return StartResult{}, fmt.Errorf("%s: %w: needs %d, %d of %d free", op, ErrNoCores, req.Cores, free, total)
		}
		p.cores, p.hw = idx, hw
	}
	c.registerLocked(p)
	c.mu.Unlock()

	nspec := node.ProcessSpec{
		Name:      spec.Name,
		Args:      spec.Args,
		Env:       spec.Env,
		Dir:       spec.Dir,
		Stdout:    stdout,
		Stderr:    stderr,
		HWThreads: slices.Clone(p.hw),
		AutoPurge: true, // the Cluster keeps the record until Purge
	}
	var st node.Started
	if spec.Stdout == "" || spec.Stderr == "" {
		if err = os.MkdirAll(procDir, 0o755); err != nil {
			err = fmt.Errorf("%s: output dir: %w", op, err)
		}
	}
	if err == nil {
		// Once asked, a start runs to its answer even if the caller goes
		// away: otherwise a remote node might start the process after the
		// call was given up, and its exit would have no owner.
		st, err = m.n.Start(context.WithoutCancel(ctx), nspec)
	}
	if err = c.startDone(p, st, err); err != nil {
		return StartResult{}, err
	}
	c.log.Debug("started", "name", spec.Name, "node", m.name, "pid", st.PID, "cores", req.Cores)
	return StartResult{Node: m.name, PID: st.PID, HWThreads: slices.Clone(p.hw)}, nil
}

// outputPath is the absolute path of an output file: def when none is
// given, a relative one against dir.
func outputPath(path, dir, def string) (string, error) {
	switch {
	case path == "":
		return def, nil
	case filepath.IsAbs(path):
		return filepath.Clean(path), nil
	case dir == "":
		return "", fmt.Errorf("%w: relative path %q without a work dir", ErrInvalid, path)
	case !filepath.IsAbs(dir):
		return "", fmt.Errorf("%w: relative work dir %q", ErrInvalid, dir)
	}
	return filepath.Join(dir, path), nil
}

func (p *proc) status() node.Status {
	if p.state == exited {
		return node.Status{Name: p.name, State: node.Exited, Exit: p.exit}
	}
	return node.Status{Name: p.name, State: node.Running}
}

// Poll reports the named processes (any the Cluster knows, submission
// instances "N.INSTANCE" too), or, with no names, every process started
// with Start and not purged, sorted by name. A process is running until
// its exit has reached the Cluster.
func (c *Cluster) Poll(ctx context.Context, names ...string) ([]node.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("poll: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(names) == 0 {
		out := []node.Status{}
		for _, p := range c.procs {
			if p.view == nil {
				out = append(out, p.status())
			}
		}
		slices.SortFunc(out, func(a, b node.Status) int { return strings.Compare(a.Name, b.Name) })
		return out, nil
	}
	out := make([]node.Status, 0, len(names))
	for _, n := range names {
		p := c.procs[n]
		if p == nil {
			return nil, fmt.Errorf("poll %s: %w", n, supervise.ErrUnknown)
		}
		out = append(out, p.status())
	}
	return out, nil
}

// live finds a process for a verb that needs it running. It returns a nil
// proc (and no error) when the process is still starting and the stop or
// kill was recorded for when it runs.
func (c *Cluster) live(op, name string, record func(*proc)) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[name]
	switch {
	case p == nil:
		return nil, fmt.Errorf("%s %s: %w", op, name, supervise.ErrUnknown)
	case p.state == exited:
		return nil, fmt.Errorf("%s %s: %w", op, name, supervise.ErrNotRunning)
	case p.state == starting:
		if record == nil {
			return nil, fmt.Errorf("%s %s: %w (still starting)", op, name, supervise.ErrNotRunning)
		}
		record(p)
		return nil, nil
	}
	return p, nil
}

// nodeErr turns what a node answered for a running process into the
// Cluster's view: a node that no longer knows the process has just
// reported (or is about to report) its exit.
func (c *Cluster) nodeErr(op string, p *proc, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, supervise.ErrUnknown) {
		return fmt.Errorf("%s %s: %w", op, p.name, supervise.ErrNotRunning)
	}
	c.mu.Lock()
	lost := p.m.lost
	c.mu.Unlock()
	return c.lostErr(p.m, lost, err)
}

// recordStop returns what Stop does to a process still starting: the stop
// is applied once it runs. (A queue's pipelined start, waiting on its node
// for its predecessor, keeps waiting: giving it up alone would let the
// next one in its chain start early.)
func recordStop(grace time.Duration) func(*proc) {
	return func(p *proc) {
		if !p.stopAsked || grace < p.stopGrace {
			p.stopGrace = grace
		}
		p.stopAsked = true
	}
}

// giveUpStart ends the wait of a pipelined start (ProcessSpec.After).
func (p *proc) giveUpStart() {
	if p.cancelStart != nil && !p.startGivenUp {
		p.startGivenUp = true
		p.cancelStart()
	}
}

// Stop sends SIGTERM to the process group, SIGKILL after grace. A process
// that is still starting is stopped as soon as it runs. Stopping a
// submission's instance counts as its failure (it may be retried).
func (c *Cluster) Stop(ctx context.Context, name string, grace time.Duration) error {
	p, err := c.live("stop", name, recordStop(grace))
	if p == nil {
		return err
	}
	return c.nodeErr("stop", p, p.m.n.Stop(ctx, name, grace))
}

// Kill sends SIGKILL to the process group.
func (c *Cluster) Kill(ctx context.Context, name string) error {
	p, err := c.live("kill", name, func(p *proc) { p.killAsked = true })
	if p == nil {
		return err
	}
	return c.nodeErr("kill", p, p.m.n.Kill(ctx, name))
}

// Send writes data to the process's stdin.
func (c *Cluster) Send(ctx context.Context, name string, data []byte) error {
	p, err := c.live("send", name, nil)
	if p == nil {
		return err
	}
	return c.nodeErr("send", p, p.m.n.Send(ctx, name, data))
}

// Purge forgets a process whose exit has arrived, so its name can be used
// again (names of a submission's instances stay reserved for it). An exit
// not yet returned by Finished still is.
func (c *Cluster) Purge(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("purge %s: %w", name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[name]
	switch {
	case p == nil:
		return fmt.Errorf("purge %s: %w", name, supervise.ErrUnknown)
	case p.state != exited:
		return fmt.Errorf("purge %s: %w", name, supervise.ErrRunning)
	}
	delete(c.procs, name)
	return nil
}

// Finished returns the exits of processes started with Start since the
// last call, each exactly once, in the order they arrived. A process whose
// node was lost before it reported gets Exit{Code: -1, Err: "node lost"}.
func (c *Cluster) Finished(ctx context.Context, wait time.Duration) ([]node.Exit, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("finished: %w", err)
	}
	c.mu.Lock()
	if len(c.finished) == 0 && wait > 0 {
		if c.exitCame == nil {
			c.exitCame = make(chan struct{})
		}
		came := c.exitCame
		c.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-came:
		case <-timer.C:
		case <-ctx.Done():
		case <-c.done:
		}
		timer.Stop()
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	f := c.finished
	c.finished = nil
	if f == nil {
		f = []node.Exit{}
	}
	return f, nil
}

// CancelAll stops every process on every node (SIGTERM, SIGKILL after
// grace): those started with Start and every submission's instances. It
// also cancels every submission that is still running, so their queues
// start nothing more and retry nothing: instances not yet started end as
// cancelled, the stopped ones as failed. Processes still starting are
// stopped as soon as they run. It returns once every node has been told.
func (c *Cluster) CancelAll(ctx context.Context, grace time.Duration) error {
	// First the queues: once each has taken in its cancellation it starts
	// and retries nothing, so what the nodes' CancelAll fails below (starts
	// waiting for another process) ends as cancelled, not retried.
	c.mu.Lock()
	subs := slices.Clone(c.subs)
	c.mu.Unlock()
	for _, s := range subs {
		s.cancel()
	}
	for _, s := range subs {
		select {
		case <-s.stopped:
		case <-ctx.Done():
			return fmt.Errorf("cancel all: %w", ctx.Err())
		}
	}

	c.mu.Lock()
	var members []*member
	for _, m := range c.byName {
		if !m.lost {
			members = append(members, m)
		}
	}
	for _, p := range c.procs {
		if p.state == starting {
			recordStop(grace)(p)
		}
	}
	c.mu.Unlock()
	c.log.Info("cancel all", "grace", grace, "nodes", len(members))

	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			if err := m.n.CancelAll(ctx, grace); err != nil {
				c.mu.Lock()
				lost := m.lost
				c.mu.Unlock()
				if lost || nodeState(m.n) == "lost" {
					return // nothing of it is running any more as far as we know
				}
				errs[i] = fmt.Errorf("cancel all on %s: %w", m.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Shutdown stops everything: it refuses new starts and submissions,
// cancels all with the default grace, and waits (as long as ctx allows)
// until every submission has ended and every started process has
// reported its exit. Then Done is closed, whatever the outcome; the
// caller shuts the manager and its agents down.
func (c *Cluster) Shutdown(ctx context.Context) error {
	defer c.doneOnce.Do(func() { close(c.done) })
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.log.Info("shutting down", "grace", c.opts.Grace)
	err := c.CancelAll(ctx, c.opts.Grace)

	c.mu.Lock()
	var waits []<-chan struct{}
	for _, s := range c.subs {
		waits = append(waits, s.done)
	}
	for _, p := range c.procs {
		if p.state != exited {
			waits = append(waits, p.over)
		}
	}
	c.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return errors.Join(err, fmt.Errorf("shutdown: %w", ctx.Err()))
		}
	}
	return err
}

// GetEnv reads a variable of the node's base environment.
func (c *Cluster) GetEnv(ctx context.Context, nodeName, key string) (string, bool, error) {
	m, err := c.member("get env "+key, nodeName)
	if err != nil {
		return "", false, err
	}
	v, ok, err := m.n.GetEnv(ctx, key)
	return v, ok, c.nodeCallErr(m, err)
}

// SetEnv sets a variable of the node's base environment for later starts.
func (c *Cluster) SetEnv(ctx context.Context, nodeName, key, value string) error {
	m, err := c.member("set env "+key, nodeName)
	if err != nil {
		return err
	}
	return c.nodeCallErr(m, m.n.SetEnv(ctx, key, value))
}

// BindPorts reserves n free ports on the node.
func (c *Cluster) BindPorts(ctx context.Context, nodeName string, udp bool, n int) ([]int, error) {
	m, err := c.member("bind ports", nodeName)
	if err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, fmt.Errorf("bind ports on %s: %w: %d ports", nodeName, ErrInvalid, n)
	}
	p, err := m.n.BindPorts(ctx, udp, n)
	return p, c.nodeCallErr(m, err)
}

// ReleasePorts gives reserved ports back.
func (c *Cluster) ReleasePorts(ctx context.Context, nodeName string, udp bool, ports []int) error {
	m, err := c.member("release ports", nodeName)
	if err != nil {
		return err
	}
	return c.nodeCallErr(m, m.n.ReleasePorts(ctx, udp, ports))
}

// SetLogLevel sets the agent's log level (debug, info, warn, error).
func (c *Cluster) SetLogLevel(ctx context.Context, nodeName, level string) error {
	m, err := c.member("set log level", nodeName)
	if err != nil {
		return err
	}
	return c.nodeCallErr(m, m.n.SetLogLevel(ctx, level))
}

func (c *Cluster) nodeCallErr(m *member, err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	lost := m.lost
	c.mu.Unlock()
	return c.lostErr(m, lost, err)
}
