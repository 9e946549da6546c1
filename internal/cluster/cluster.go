package cluster

// # Design
//
// The Cluster is the only consumer of each real node's Finished and Ready:
// one watcher goroutine per node drains its exits and routes each one by
// process name to whoever started the process. Every process the Cluster
// knows has a record (proc) that is made before the node is asked to start
// it, so an exit that overtakes its Start reply still finds its owner.
//
//   - Processes started with API.Start belong to the Cluster: their exits
//     go to its mailbox, in the box of the start's group, which Finished
//     and WatchFinished hand out and keep until acknowledged.
//   - Processes started by a submission's queue belong to a view: a small
//     node.Node around the real node (see view.go), one per node and
//     submission. A view's Finished and Ready carry only its own exits, and
//     its Ready is closed when the real node is lost, so queue.Run works
//     on views unchanged.
//
// # Names
//
// Process names are unique across the cluster. Instance "sim.0" of
// submission 3 runs on its node as process "3.sim.0" (the view renames it
// on the way in and back on the way out, so the queue, its events and its
// results directory Home/runs/3/sim.0/ keep the plain instance name);
// the verbs (poll, logs, stop, ...) know it as "3.sim.0". A submission's
// names stay reserved for it for as long as the Cluster lives: a Start of
// "3.sim.0" fails with errdefs.ErrDuplicate even before that instance
// runs or after it ended. Submission numbers count from 1, skipping any
// number whose results directory already exists under Home/runs (an
// earlier serve with the same home) or that is the prefix "N." of a name
// already started with Start.
//
// # Exits
//
// Every process started with Start gets exactly one node.Exit in Finished:
// its real exit, or, when its node is lost before reporting it, an Exit
// with Code -1, Signal 0 and Err "node lost" (the Exit.Err field says the
// result is not a real exit status). Records of exited processes stay
// until Purge, so Poll and Logs still answer for them; the nodes themselves
// forget processes as soon as their exit is reported (AutoPurge), so Purge
// needs no node and works on lost nodes too.
//
// Cores taken for a Start come from the one pool that every submission's
// queue shares; they go back when the exit arrives (or the start fails).
//
// Logs reads the output files on the machine of the Cluster, which is
// right for nodes started by the local launcher; output files of processes
// on other machines are on those machines.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/cores"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// The Cluster's errors are errdefs kinds: UnknownNode, NodeLost, Busy (not
// enough free cores), Invalid, Closed (shutting down), and the supervisor's.

// lostExitErr is the Err of the Exit made for a process whose node was
// lost before it reported the exit.
const lostExitErr = "node lost"

// Options configure a Cluster.
type Options struct {
	Logger *slog.Logger
	// Home holds what the Cluster writes: Home/runs/<submission>/ (the
	// batch results layout of each submission) and Home/procs/ (the
	// <name>.stdout and <name>.stderr of processes started without output
	// paths).
	// "" means drover-home under os.TempDir().
	Home string
	// Grace is the default time between SIGTERM and SIGKILL: for
	// Shutdown, and for submissions' queues. 0 means 10s.
	Grace time.Duration
	// Visibility is how long an exit handed out by Finished and not
	// acknowledged stays with its reader before any reader may take it.
	// 0 means DefaultVisibility.
	Visibility time.Duration
}

// DefaultVisibility is the visibility timeout of handed-out exits.
const DefaultVisibility = 5 * time.Second

// Cluster implements API over the nodes given to AddNode.
type Cluster struct {
	opts Options
	log  *slog.Logger
	pool *cores.Pool

	base       context.Context // ends at Close: watchers stop
	cancelBase context.CancelFunc
	wg         sync.WaitGroup // watchers and submissions
	done       chan struct{}  // closed by Shutdown
	asked      chan struct{}  // closed when Shutdown begins
	askedOnce  sync.Once
	doneOnce   sync.Once

	mu       sync.Mutex
	closed   bool // Close was called: no more nodes
	stopping bool // Shutdown or Close was called: no new starts or submissions
	members  []*member
	byName   map[string]*member          // the current member of each name
	procs    map[string]*proc            // every known process, by cluster-wide name
	mail     *mailbox.Mailbox[node.Exit] // exits of Start-ed processes, by group, until acknowledged
	subs     []*submission
	subByNum map[int]*submission
	lastSub  int
	failed   []NodeInfo // nodes that could not be launched (AddFailedNode)
}

var _ API = (*Cluster)(nil)

// member is one node that joined.
type member struct {
	n     node.Node
	name  string
	res   topology.Resources
	lost  bool
	procs map[string]*proc // not yet exited (starting or running)
	views map[*view]struct{}
	// restarts and reason: see NodeInfo.Restarts and LastReason.
	restarts int
	reason   string
}

type procState uint8

const (
	starting procState = iota // registered, the node's Start has not returned
	running
	exited
)

// proc is the Cluster's record of one process.
type proc struct {
	name  string // cluster-wide, as on the node
	m     *member
	view  *view // nil: started with Start
	group string
	state procState
	grant cores.Grant // what it holds in the pool until the exit
	hw    []int
	pid   int
	since time.Time
	exit  node.Exit
	// over is closed when the process has exited or its start failed.
	over           chan struct{}
	stdout, stderr string // absolute paths on the Cluster's machine; "" = none
	// A stop or kill asked for while starting, applied once it runs.
	stopAsked, killAsked bool
	stopGrace            time.Duration
	// cancelStart gives up a start that waits on its node for another
	// process (ProcessSpec.After); startGivenUp says it was called.
	cancelStart  context.CancelFunc
	startGivenUp bool
}

// New makes a Cluster without nodes; AddNode adds them.
func New(opts Options) *Cluster {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Home == "" {
		opts.Home = filepath.Join(os.TempDir(), "drover-home")
	}
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	base, cancel := context.WithCancel(context.Background())
	return &Cluster{
		opts:       opts,
		log:        opts.Logger,
		pool:       cores.NewPool(),
		base:       base,
		cancelBase: cancel,
		done:       make(chan struct{}),
		asked:      make(chan struct{}),
		byName:     make(map[string]*member),
		procs:      make(map[string]*proc),
		subByNum:   make(map[int]*submission),
		mail:       mailbox.New[node.Exit](cmp.Or(opts.Visibility, DefaultVisibility)),
	}
}

// Pool is the core pool shared by Start and every submission.
func (c *Cluster) Pool() *cores.Pool { return c.pool }

// AddNode takes a node that joined: its cores join the pool and the
// Cluster becomes the consumer of its Finished and Ready. A node with the
// name of an earlier one replaces it (the earlier one is still followed
// until it is lost, but can no longer be addressed). Safe at any time;
// after Close the node is ignored.
func (c *Cluster) AddNode(n node.Node) {
	res := n.Resources()
	m := &member{n: n, name: n.Name(), res: res, procs: make(map[string]*proc), views: make(map[*view]struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.log.Warn("node joined after close; ignored", "node", m.name)
		return
	}
	if old := c.byName[m.name]; old != nil {
		// A new incarnation: the old one's processes stay its own (their
		// exits, "node lost" ones included, are delivered once); new
		// starts of that name go to this one.
		m.restarts, m.reason = old.restarts+1, old.reason
		if !old.lost {
			c.log.Warn("node joined again; the new one replaces the old", "node", m.name)
		}
		if m.reason == "" {
			m.reason = lostReason(old.n.Health().Err)
		}
	}
	c.members = append(c.members, m)
	c.byName[m.name] = m
	c.pool.AddNode(m.name, res)
	c.wg.Add(1)
	c.mu.Unlock()
	c.log.Info("node up", "node", m.name, "cores", len(res.Cores))
	go c.watch(m)
}

// Done is closed once Shutdown has been asked for and has done its work.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// ShutdownAsked is closed as soon as Shutdown begins, before its grace:
// health probes can say NOT_SERVING while the processes are stopped.
func (c *Cluster) ShutdownAsked() <-chan struct{} { return c.asked }

// Close stops every submission (as if cancelled) and waits for them while
// ctx allows; after that their queues are told every node is lost so they
// end at once. Then it stops consuming the nodes and waits for its
// goroutines. It neither stops processes started with Start nor closes
// the nodes: that is the manager's shutdown.
func (c *Cluster) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed, c.stopping = true, true
	subs := slices.Clone(c.subs)
	c.mu.Unlock()
	for _, s := range subs {
		s.cancel()
	}
	var err error
	for _, s := range subs {
		select {
		case <-s.done:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("close: waiting for submission %d: %w", s.num, ctx.Err())
		}
		break
	}
	if err != nil {
		c.mu.Lock()
		for _, m := range c.members {
			for v := range m.views {
				v.lose()
			}
		}
		c.mu.Unlock()
	}
	c.cancelBase()
	c.wg.Wait()
	return err
}

// watch consumes one node's Finished and Ready until the node is lost or
// the Cluster is closed.
func (c *Cluster) watch(m *member) {
	defer c.wg.Done()
	for {
		select {
		case _, ok := <-m.n.Ready():
			c.route(m, m.n.Finished())
			if !ok {
				c.lose(m)
				return
			}
		case <-c.base.Done():
			return
		}
	}
}

// route hands every exit to the owner of its process.
func (c *Cluster) route(m *member, exits []node.Exit) {
	if len(exits) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range exits {
		p := c.procs[e.Name]
		if p == nil || p.m != m || p.state == exited {
			c.log.Warn("exit of an unknown process", "node", m.name, "name", e.Name, "exit", e.String())
			continue
		}
		c.exitedLocked(p, e, true)
	}
}

// exitedLocked records the final exit of p and delivers it to its owner.
// A made-up "node lost" exit (real false) is not delivered to a view: the
// queue learns of a lost node from the view's Ready, and loses its
// instances itself.
func (c *Cluster) exitedLocked(p *proc, e node.Exit, real bool) {
	p.state = exited
	p.exit = e
	close(p.over)
	delete(p.m.procs, p.name)
	c.releaseLocked(p)
	if p.view == nil {
		c.mail.Put(p.group, e)
		return
	}
	delete(p.view.procs, p.name)
	if real {
		p.view.deliver(e)
	}
}

// releaseLocked gives p's cores back to the pool, unless its node has
// been replaced meanwhile (the pool's entry is the new node's then).
func (c *Cluster) releaseLocked(p *proc) {
	if !p.grant.Empty() && c.byName[p.m.name] == p.m {
		c.pool.Release(p.m.name, p.grant)
	}
	p.grant = cores.Grant{}
}

// lose handles a node whose Ready was closed: every process on it that has
// not reported its exit gets a "node lost" exit, its cores leave the pool
// and the queues' views of it are closed.
func (c *Cluster) lose(m *member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m.lost = true
	m.reason = lostReason(m.n.Health().Err)
	if c.byName[m.name] == m {
		c.pool.RemoveNode(m.name)
	}
	now := time.Now()
	n := 0
	for _, p := range m.procs {
		if p.state == running {
			c.exitedLocked(p, lostExit(p, now), false)
			n++
		}
		// A process still starting is settled when its Start returns.
	}
	for v := range m.views {
		v.lose()
	}
	c.log.Warn("node lost", "node", m.name, "processes", n)
}

// lostReason is why a node was lost, without the "node lost: " every
// such error starts with.
func lostReason(err error) string {
	if err == nil {
		return lostExitErr
	}
	return strings.TrimPrefix(err.Error(), errdefs.ErrNodeLost.Error()+": ")
}

func lostExit(p *proc, now time.Time) node.Exit {
	return node.Exit{Name: p.name, Node: p.m.name, Code: -1, Start: p.since, End: now, Err: lostExitErr}
}

// register makes the record of a process about to be started on m. The
// caller holds c.mu and has checked the name.
func (c *Cluster) registerLocked(p *proc) {
	p.state = starting
	p.over = make(chan struct{})
	c.procs[p.name] = p
	p.m.procs[p.name] = p
	if p.view != nil {
		p.view.procs[p.name] = p
	}
}

// startDone settles the record of p once the node's Start returned.
func (c *Cluster) startDone(p *proc, st node.Started, err error) error {
	c.mu.Lock()
	if err != nil {
		if p.state == starting {
			if c.procs[p.name] == p {
				delete(c.procs, p.name)
			}
			delete(p.m.procs, p.name)
			if p.view != nil {
				delete(p.view.procs, p.name)
			}
			c.releaseLocked(p)
			close(p.over)
			p.state = exited
		}
		lost := p.m.lost
		c.mu.Unlock()
		return c.lostErr(p.m, lost, err)
	}
	p.pid, p.since = st.PID, time.Now()
	var stop func()
	if p.state == starting {
		switch {
		case p.m.lost:
			// Its node was lost while the start was in flight: it may run,
			// but nobody can report its exit any more.
			c.exitedLocked(p, lostExit(p, p.since), false)
		default:
			p.state = running
			if p.killAsked || p.stopAsked {
				n, name, grace, kill := p.m.n, p.name, p.stopGrace, p.killAsked
				stop = func() {
					var err error
					if kill {
						err = n.Kill(context.Background(), name)
					} else {
						err = n.Stop(context.Background(), name, grace)
					}
					if err != nil && !errors.Is(err, errdefs.ErrNotRunning) && !errors.Is(err, errdefs.ErrUnknownProcess) {
						c.log.Warn("stop asked for while starting", "name", name, "err", err)
					}
				}
			}
		}
	}
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
	return nil
}

// lostErr makes err match errdefs.ErrNodeLost when the node is lost, keeping its
// message (which already names the operation, process and node).
func (c *Cluster) lostErr(m *member, lost bool, err error) error {
	if err == nil || errors.Is(err, errdefs.ErrNodeLost) {
		return err
	}
	if lost || m.n.Health().Lost() {
		return &lostError{err}
	}
	return err
}

type lostError struct{ err error }

func (e *lostError) Error() string   { return e.err.Error() }
func (e *lostError) Unwrap() []error { return []error{e.err, errdefs.ErrNodeLost} }

// nodeState is the node's own State() ("up", "disconnected", "lost"), or
// "" when it has none.
// member returns the current, not lost, node of that name.
func (c *Cluster) memberLocked(op, name string) (*member, error) {
	m := c.byName[name]
	if m == nil {
		return nil, fmt.Errorf("%s on %s: %w", op, name, errdefs.ErrUnknownNode)
	}
	if m.lost || m.n.Health().Lost() {
		return nil, fmt.Errorf("%s on %s: %w", op, name, errdefs.ErrNodeLost)
	}
	return m, nil
}

func (c *Cluster) member(op, name string) (*member, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.memberLocked(op, name)
}

// Nodes lists every node that joined (the newest of each name), in the
// order they joined: "lost" once lost, "busy" when all its cores are
// reserved, "up" otherwise (a node that is only disconnected for a while
// is still up).
func (c *Cluster) Nodes(ctx context.Context) ([]NodeInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]NodeInfo, 0, len(c.byName))
	for _, m := range c.members {
		if c.byName[m.name] != m {
			continue
		}
		h := m.n.Health()
		info := NodeInfo{Name: m.name, Resources: m.res, BusyHWThreads: []int{}, BusyGPUs: []string{}, Processes: len(m.procs),
			Restarts: m.restarts, LastReason: m.reason, RTT: h.RTT}
		switch {
		case m.lost || h.Lost():
			info.State = "lost"
			info.Error = "node lost"
			if err := h.Err; err != nil {
				info.Error = err.Error()
			}
			if info.LastReason == "" {
				info.LastReason = lostReason(h.Err)
			}
		default:
			info.BusyHWThreads = append(info.BusyHWThreads, c.pool.Busy(m.name)...)
			slices.Sort(info.BusyHWThreads)
			info.BusyGPUs = c.pool.BusyGPUs(m.name)
			info.State = "up"
			if len(m.res.Cores) > 0 && c.pool.Free(m.name) == 0 {
				info.State = "busy"
			}
		}
		out = append(out, info)
	}
	for _, f := range c.failed {
		if c.byName[f.Name] == nil {
			out = append(out, f)
		}
	}
	return out, nil
}

// AddFailedNode lists a node that could not be launched, in state error
// with the reason, until a node of that name joins. For a node that
// joined before (a failed relaunch) it counts a restart and keeps the
// reason as its last.
func (c *Cluster) AddFailedNode(name, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m := c.byName[name]; m != nil {
		m.restarts++
		m.reason = reason
		return
	}
	c.failed = append(c.failed, NodeInfo{Name: name, State: "error", Error: reason, BusyHWThreads: []int{}, BusyGPUs: []string{}})
}

// reservedLocked reports whether name is "N.INSTANCE" of submission N.
func (c *Cluster) reservedLocked(name string) bool {
	num, inst, ok := strings.Cut(name, ".")
	if !ok {
		return false
	}
	n := 0
	for _, r := range num {
		if r < '0' || r > '9' || n > 1<<30 {
			return false
		}
		n = n*10 + int(r-'0')
	}
	s := c.subByNum[n]
	return s != nil && num == fmt.Sprint(n) && s.has(inst)
}
