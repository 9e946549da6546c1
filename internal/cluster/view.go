package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// view is one submission's node.Node around a real node. It speaks in
// instance names ("sim.0"); on the real node its processes are named
// "<submission>.<instance>". Its Finished and Ready carry the exits of its
// own processes only, and its Ready is closed when the real node is lost
// (or the Cluster gives up on the submission at Close), which the queue
// takes as the node being lost.
type view struct {
	c   *Cluster
	m   *member
	sub *submission

	ctx    context.Context // ends when the view is lost: starts in flight give up
	cancel context.CancelFunc

	// Guarded by c.mu:
	procs     map[string]*proc // not yet exited, by cluster-wide name
	cancelled bool             // CancelAll: refuse further starts

	exits  *mailbox.Mailbox[node.Exit] // delivered, not yet taken by Finished
	mu     sync.Mutex
	ready  chan struct{}
	closed bool
}

var _ node.Node = (*view)(nil)

func newView(c *Cluster, m *member, s *submission) *view {
	ctx, cancel := context.WithCancel(context.Background())
	return &view{c: c, m: m, sub: s, ctx: ctx, cancel: cancel, procs: make(map[string]*proc),
		exits: mailbox.New[node.Exit](0), ready: make(chan struct{}, 1)}
}

// deliver hands an exit of one of the view's processes to the queue.
func (v *view) deliver(e node.Exit) {
	e.Name = v.sub.instance(e.Name)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	v.exits.Put("", e)
	select {
	case v.ready <- struct{}{}:
	default:
	}
}

// lose closes Ready (once): the queue treats the node as lost.
func (v *view) lose() {
	v.mu.Lock()
	if !v.closed {
		v.closed = true
		close(v.ready)
	}
	v.mu.Unlock()
	v.cancel()
}

func (v *view) Name() string                  { return v.m.name }
func (v *view) Resources() topology.Resources { return v.m.res }
func (v *view) Ready() <-chan struct{}        { return v.ready }
func (v *view) Health() node.Health           { return v.m.n.Health() }

// SharedFS is the node's: whether a program is run in place or shipped.
func (v *view) SharedFS() bool { return node.SharesFS(v.m.n) }

func (v *view) Finished() []node.Exit { return v.exits.TakeAll("") }

// Start registers the process as the view's under its cluster-wide name
// before the real node starts it, so its exit finds its way back here.
func (v *view) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	c := v.c
	inst := spec.Name
	spec.Name = v.sub.procName(inst)
	if spec.After != "" {
		spec.After = v.sub.procName(spec.After)
	}
	op := fmt.Sprintf("start %s on %s", spec.Name, v.m.name)
	c.mu.Lock()
	if v.cancelled {
		c.mu.Unlock()
		return node.Started{}, fmt.Errorf("%s: cancelled before it started", op)
	}
	if v.m.lost {
		c.mu.Unlock()
		return node.Started{}, fmt.Errorf("%s: %w", op, errdefs.ErrNodeLost)
	}
	// A retry of the same instance replaces the record of the attempt
	// before; anything else of that name is a duplicate.
	if old := c.procs[spec.Name]; old != nil && (old.view == nil || old.view.sub != v.sub || old.state != exited) {
		c.mu.Unlock()
		return node.Started{}, fmt.Errorf("%s: %w", op, errdefs.ErrDuplicate)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &proc{name: spec.Name, m: v.m, view: v, stdout: spec.Stdout, stderr: spec.Stderr}
	if spec.After != "" {
		// It may wait on the node for a long time: CancelAll gives up
		// the wait rather than let it start only to be stopped.
		p.cancelStart = cancel
	}
	c.registerLocked(p)
	c.mu.Unlock()

	stop := context.AfterFunc(v.ctx, cancel)
	st, err := v.m.n.Start(ctx, spec)
	stop()
	c.mu.Lock()
	gaveUp := p.startGivenUp
	c.mu.Unlock()
	if err = c.startDone(p, st, err); err != nil {
		if gaveUp {
			// Over the wire a start can win the race with its
			// cancellation; make sure nothing of it keeps running.
			_ = v.m.n.Stop(context.WithoutCancel(ctx), spec.Name, 0)
		}
		return node.Started{}, err
	}
	return st, nil
}

func (v *view) Poll(ctx context.Context, names ...string) ([]node.Status, error) {
	if len(names) == 0 {
		v.c.mu.Lock()
		for name := range v.procs {
			names = append(names, name)
		}
		v.c.mu.Unlock()
		if len(names) == 0 {
			return []node.Status{}, nil
		}
	} else {
		mapped := make([]string, len(names))
		for i, n := range names {
			mapped[i] = v.sub.procName(n)
		}
		names = mapped
	}
	st, err := v.c.Poll(ctx, "", names)
	for i := range st {
		st[i].Name = v.sub.instance(st[i].Name)
		st[i].Exit.Name = v.sub.instance(st[i].Exit.Name)
	}
	return st, err
}

func (v *view) Stop(ctx context.Context, name string, grace time.Duration) error {
	return v.c.Stop(ctx, v.sub.procName(name), grace)
}

func (v *view) Kill(ctx context.Context, name string) error {
	return v.c.Kill(ctx, v.sub.procName(name))
}

func (v *view) Purge(ctx context.Context, name string) error {
	return v.c.Purge(ctx, v.sub.procName(name))
}

func (v *view) Send(ctx context.Context, name string, data []byte) error {
	return v.c.Send(ctx, v.sub.procName(name), data)
}

func (v *view) CloseStdin(ctx context.Context, name string) error {
	return v.c.CloseStdin(ctx, v.sub.procName(name))
}

// CancelAll stops the view's processes only (the node runs others too),
// and refuses later starts.
func (v *view) CancelAll(ctx context.Context, grace time.Duration) error {
	c := v.c
	// The queue calls this once it has stopped placing work.
	v.sub.markStopped()
	c.mu.Lock()
	v.cancelled = true
	var run []string
	for name, p := range v.procs {
		switch p.state {
		case starting:
			recordStop(grace)(p)
			p.giveUpStart() // the whole chain goes: the queue is stopping
		case running:
			run = append(run, name)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, name := range run {
		err := v.m.n.Stop(ctx, name, grace)
		if err != nil && !errors.Is(err, errdefs.ErrNotRunning) && !errors.Is(err, errdefs.ErrUnknownProcess) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (v *view) GetEnv(ctx context.Context, key string) (string, bool, error) {
	return v.m.n.GetEnv(ctx, key)
}

func (v *view) SetEnv(ctx context.Context, key, value string) error {
	return v.m.n.SetEnv(ctx, key, value)
}

func (v *view) BindPorts(ctx context.Context, udp bool, n int) ([]int, error) {
	return v.m.n.BindPorts(ctx, udp, n)
}

func (v *view) ReleasePorts(ctx context.Context, udp bool, ports []int) error {
	return v.m.n.ReleasePorts(ctx, udp, ports)
}

func (v *view) SetLogLevel(ctx context.Context, level string) error {
	return v.m.n.SetLogLevel(ctx, level)
}

// Close does nothing: the view does not own the node.
func (v *view) Close() error { return nil }
