package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/cores"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// Start starts a process on a node. Of req.Spec it uses Name, Args, Env,
// Dir, Stdout and Stderr. An output path left empty becomes
// Home/procs/<name>.stdout (or .stderr), so every process has logs; a
// relative one is relative to Dir, and needs one. With Cores > 0 that
// many whole cores of the node are reserved (errdefs.ErrBusy when fewer are
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
		return StartResult{}, fmt.Errorf("%s: %w: no command", op, errdefs.ErrInvalid)
	}
	if req.Cores < 0 {
		return StartResult{}, fmt.Errorf("%s: %w: %d cores", op, errdefs.ErrInvalid, req.Cores)
	}
	if req.GPUs < 0 {
		return StartResult{}, fmt.Errorf("%s: %w: %d GPUs", op, errdefs.ErrInvalid, req.GPUs)
	}
	if req.Cores > 0 && len(req.HWThreads) > 0 {
		return StartResult{}, fmt.Errorf("%s: %w: cores and hwthreads together", op, errdefs.ErrInvalid)
	}
	// A start the session cannot carry would break the node's session, and
	// every other process on the node would be reported lost.
	if n := jobfile.ArgsEnvBytes(spec.Args, spec.Env); n > jobfile.MaxArgsEnvBytes {
		return StartResult{}, fmt.Errorf("%s: %w: %s of arguments and environment, at most %s can be passed to a process",
			op, errdefs.ErrInvalid, jobfile.SizeString(n), jobfile.SizeString(jobfile.MaxArgsEnvBytes))
	}
	// Files, not a directory per process: a mkdir costs a start more
	// than the two files do (an inode and a block).
	procDir := filepath.Join(c.opts.Home, "procs")
	stdout, err := outputPath(spec.Stdout, spec.Dir, filepath.Join(procDir, spec.Name+".stdout"))
	if err != nil {
		return StartResult{}, fmt.Errorf("%s: stdout: %w", op, err)
	}
	stderr, err := outputPath(spec.Stderr, spec.Dir, filepath.Join(procDir, spec.Name+".stderr"))
	if err != nil {
		return StartResult{}, fmt.Errorf("%s: stderr: %w", op, err)
	}

	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return StartResult{}, fmt.Errorf("%s: %w", op, errdefs.ErrClosed)
	}
	m, err := c.memberLocked("start "+spec.Name, req.Node)
	if err != nil {
		c.mu.Unlock()
		return StartResult{}, err
	}
	if c.procs[spec.Name] != nil || c.reservedLocked(spec.Name) {
		c.mu.Unlock()
		return StartResult{}, fmt.Errorf("%s: %w", op, errdefs.ErrDuplicate)
	}
	p := &proc{name: spec.Name, m: m, group: req.Group, stdout: stdout, stderr: stderr}
	need := cores.Need{GPUs: req.GPUs}
	if len(req.HWThreads) > 0 {
		g, err := c.pool.TakeThreads(m.name, req.HWThreads, need)
		if err != nil {
			c.mu.Unlock()
			return StartResult{}, fmt.Errorf("%s: %w", op, err)
		}
		p.grant, p.hw = g, g.HW
	} else if req.Cores > 0 || req.GPUs > 0 {
		need.Cores = req.Cores
		g, ok := c.pool.Take(m.name, need)
		if !ok {
			free, total := c.pool.Free(m.name), len(m.res.Cores)
			c.mu.Unlock()
			switch {
			case req.GPUs > len(m.res.GPUs):
				return StartResult{}, fmt.Errorf("%s: %w: needs %d GPUs, the node has %d", op, errdefs.ErrInvalid, req.GPUs, len(m.res.GPUs))
			case req.Cores > total:
				return StartResult{}, fmt.Errorf("%s: %w: needs %d, the node has %d", op, errdefs.ErrBusy, req.Cores, total)
			case req.Cores > free:
				return StartResult{}, fmt.Errorf("%s: %w: needs %d, %d of %d free", op, errdefs.ErrBusy, req.Cores, free, total)
			}
			return StartResult{}, fmt.Errorf("%s: %w: needs %d GPUs, too few are free", op, errdefs.ErrBusy, req.GPUs)
		}
		p.grant, p.hw = g, g.HW
	}
	granted := p.grant.GPUs // p.grant is the lock's once p is registered
	c.registerLocked(p)
	c.mu.Unlock()

	env := spec.Env
	if gpuEnv := topology.GPUEnv(granted); gpuEnv != nil {
		env = maps.Clone(env)
		if env == nil {
			env = make(map[string]string)
		}
		maps.Copy(env, gpuEnv)
	}
	nspec := node.ProcessSpec{
		Name:      spec.Name,
		Args:      spec.Args,
		Env:       env,
		Dir:       spec.Dir,
		Stdout:    stdout,
		Stderr:    stderr,
		HWThreads: slices.Clone(p.hw),
		AutoPurge: true, // the Cluster keeps the record until Purge
	}
	if req.Program != nil {
		nspec.UseProgram(0, *req.Program, node.SharesFS(m.n))
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
	var gpus []string
	for _, g := range granted {
		gpus = append(gpus, g.ID)
	}
	return StartResult{Node: m.name, PID: st.PID, HWThreads: slices.Clone(p.hw), GPUs: gpus}, nil
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
		return "", fmt.Errorf("%w: relative path %q without a work dir", errdefs.ErrInvalid, path)
	case !filepath.IsAbs(dir):
		return "", fmt.Errorf("%w: relative work dir %q", errdefs.ErrInvalid, dir)
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
func (c *Cluster) Poll(ctx context.Context, group string, names []string) ([]node.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("poll: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(names) == 0 {
		out := []node.Status{}
		for _, p := range c.procs {
			if p.view == nil && (group == "" || p.group == group) {
				out = append(out, p.status())
			}
		}
		slices.SortFunc(out, func(a, b node.Status) int { return strings.Compare(a.Name, b.Name) })
		return out, nil
	}
	out := make([]node.Status, 0, len(names))
	for _, n := range names {
		p := c.procs[n]
		if p == nil || group != "" && p.group != group {
			out = append(out, node.Status{Name: n, State: node.Unknown, Err: fmt.Errorf("poll %s: %w", n, errdefs.ErrUnknownProcess)})
			continue
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
		return nil, fmt.Errorf("%s %s: %w", op, name, errdefs.ErrUnknownProcess)
	case p.state == exited:
		return nil, fmt.Errorf("%s %s: %w", op, name, errdefs.ErrNotRunning)
	case p.state == starting:
		if record == nil {
			return nil, fmt.Errorf("%s %s: %w (still starting)", op, name, errdefs.ErrNotRunning)
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
	if errors.Is(err, errdefs.ErrUnknownProcess) {
		return fmt.Errorf("%s %s: %w", op, p.name, errdefs.ErrNotRunning)
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

// CloseStdin closes a running process's stdin.
func (c *Cluster) CloseStdin(ctx context.Context, name string) error {
	p, err := c.live("close stdin", name, nil)
	if p == nil {
		return err
	}
	return c.nodeErr("close stdin", p, p.m.n.CloseStdin(ctx, name))
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
		return fmt.Errorf("purge %s: %w", name, errdefs.ErrUnknownProcess)
	case p.state != exited:
		return fmt.Errorf("purge %s: %w", name, errdefs.ErrRunning)
	}
	delete(c.procs, name)
	return nil
}

// cancelGroup stops the processes of one group (SIGTERM, SIGKILL after
// grace); the rest, and the submissions, go on.
func (c *Cluster) cancelGroup(ctx context.Context, group string, grace time.Duration) error {
	c.mu.Lock()
	var names []string
	for _, p := range c.procs {
		switch {
		case p.view != nil || p.group != group:
		case p.state == starting:
			recordStop(grace)(p)
		case p.state == running:
			names = append(names, p.name)
		}
	}
	c.mu.Unlock()
	c.log.Info("cancel all", "group", group, "grace", grace, "processes", len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			// One that exited meanwhile is done with.
			if err := c.Stop(ctx, name, grace); err != nil && !errors.Is(err, errdefs.ErrNotRunning) {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Finished implements API.
func (c *Cluster) Finished(ctx context.Context, req FinishedRequest) ([]Receipt, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("finished: %w", err)
	}
	var timer *time.Timer
	for ack := req.Ack; ; ack = nil {
		changed, expiry := c.mail.Wait(req.Group)
		if out := c.take(req.Reader, req.Group, ack, true); len(out) > 0 || req.Wait <= 0 {
			return out, nil
		}
		if timer == nil {
			timer = time.NewTimer(req.Wait)
			defer timer.Stop()
		}
		if err := c.waitMail(ctx, changed, expiry, timer.C); err != nil {
			return []Receipt{}, nil
		}
	}
}

// WatchFinished implements API.
func (c *Cluster) WatchFinished(ctx context.Context, reader, group string, send func([]Receipt) error) error {
	if reader == "" {
		return fmt.Errorf("watch finished: %w: a reader name is needed to acknowledge", errdefs.ErrInvalid)
	}
	// What this reader held from an earlier watch is sent again first.
	defer c.mail.Release(reader)
	again := true
	for {
		changed, expiry := c.mail.Wait(group)
		if out := c.take(reader, group, nil, again); len(out) > 0 {
			if err := send(out); err != nil {
				return fmt.Errorf("watch finished: %w", err)
			}
		}
		again = false
		if err := c.waitMail(ctx, changed, expiry, nil); err != nil {
			return nil
		}
	}
}

// Ack implements API.
func (c *Cluster) Ack(ctx context.Context, reader string, seqs []uint64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	c.mail.Ack(reader, seqs)
	return nil
}

func (c *Cluster) take(reader, group string, ack []uint64, again bool) []Receipt {
	letters := c.mail.Take(reader, group, ack, again)
	out := make([]Receipt, len(letters))
	for i, l := range letters {
		out[i] = Receipt{Seq: l.Seq, Group: group, Exit: l.Item}
	}
	return out
}

// waitMail waits for a change of the mailbox, the next visibility
// timeout, or stop; an error when ctx ends or the Cluster shuts down.
func (c *Cluster) waitMail(ctx context.Context, changed <-chan struct{}, expiry time.Duration, stop <-chan time.Time) error {
	var expired <-chan time.Time
	if expiry > 0 {
		t := time.NewTimer(expiry)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-changed:
	case <-expired:
	case <-stop:
		return context.DeadlineExceeded
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errdefs.ErrClosed
	}
	return nil
}

// CancelAll stops every process on every node (SIGTERM, SIGKILL after
// grace): those started with Start and every submission's instances. It
// also cancels every submission that is still running, so their queues
// start nothing more and retry nothing: instances not yet started end as
// cancelled, the stopped ones as failed. Processes still starting are
// stopped as soon as they run. It returns once every node has been told.
func (c *Cluster) CancelAll(ctx context.Context, group string, grace time.Duration) error {
	if group != "" {
		return c.cancelGroup(ctx, group, grace)
	}
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
				if lost || m.n.Health().Lost() {
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
	c.askedOnce.Do(func() { close(c.asked) })
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.log.Info("shutting down", "grace", c.opts.Grace)
	err := c.CancelAll(ctx, "", c.opts.Grace)

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
	if n := len(key) + len(value) + 2; n > jobfile.MaxArgsEnvBytes {
		return fmt.Errorf("set env %s on %s: %w: %s, at most %s can be passed to a process",
			key, nodeName, errdefs.ErrInvalid, jobfile.SizeString(n), jobfile.SizeString(jobfile.MaxArgsEnvBytes))
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
		return nil, fmt.Errorf("bind ports on %s: %w: %d ports", nodeName, errdefs.ErrInvalid, n)
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
