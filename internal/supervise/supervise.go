//go:build linux

// Package supervise is the per-node process supervisor: it starts named
// processes, reports every exit exactly once, and stops, kills, feeds and
// forgets them on request.
//
// # Design
//
// Every child leads its own process group, so Stop and Kill reach the whole
// group, grandchildren included. When a process exits, whatever is left of
// its group is killed with SIGKILL while the leader is still an unreaped
// zombie, so the group id cannot have been reused. Descendants that left the
// group (setsid, setpgid, a double fork) are found through /proc and, with
// Options.Subreaper, by adopting orphans; see descend.go.
//
// Children are forked by a small pool of spawner goroutines that are locked
// to their OS threads for good: Pdeathsig is tied to the forking thread
// (golang/go#27505), so a child dies with the supervisor's process but never
// because some Go thread went away. The spawner thread also sets the CPU
// affinity just before the fork, so the child inherits it without an extra
// exec, and puts its own mask back afterwards.
//
// One reaper goroutine per process, woken by SIGCHLD, collects every exited
// child with waitid(P_ALL)/wait4 and dispatches by pid. A spawner holds a
// read lock from fork until the pid is recorded; before the reaper treats a
// pid as not its own, it takes the write lock and looks again, so a child
// that exits before its Start has recorded it is never lost.
//
// # The supervisor owns reaping
//
// While any Supervisor is open, the reaper reaps every child of the process,
// not just its own. Nothing else in the process may start child processes
// (os/exec, os.StartProcess, syscall.ForkExec) while a Supervisor is open:
// their Wait would find the status already taken. Several Supervisors may be
// open at once; they share the reaper.
package supervise

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
)

// The Supervisor's methods return errdefs kinds (Duplicate, UnknownProcess,
// Running, NotRunning, Closed, SpawnFailed), wrapped with the operation and
// the process name. Test with errors.Is.

// Options configures a Supervisor.
type Options struct {
	Node     string       // node name written into every node.Exit
	Logger   *slog.Logger // nil: discard
	Spawners int          // spawner threads; 0: max(2, min(runtime.NumCPU(), 8))
	// Keeper starts a small watcher process that kills what is left of
	// every process group if this process dies without stopping them
	// (SIGKILL): an agent's promise that nothing it started outlives it.
	Keeper bool
	// Subreaper makes this process a child subreaper while the Supervisor
	// is open (PR_SET_CHILD_SUBREAPER), so that descendants whose parent
	// dies are reparented to it rather than to init: then even those that
	// left their process group (setsid, double fork) die with the process
	// they came from (see descend.go), and Close leaves none behind. Every
	// child of this process that no Supervisor started is taken for such
	// an orphan.
	Subreaper bool
	// Cgroup forks every child into a cgroup (v2) made for this
	// Supervisor below this process's own, where the node allows it, so
	// that nothing they start can outlive it: Close and the keeper end the
	// whole cgroup. Without the right to make one, it is left out (logged).
	Cgroup bool
}

// Spec describes one process to start.
type Spec struct {
	Name string
	// Args is the argv. Args[0] without a slash is looked up in the PATH of
	// Env (or, when Env has no PATH, in this process's PATH); a relative
	// path is relative to Dir.
	Args []string
	// Env is the complete environment, "K=V" each; nil is an empty one.
	Env []string
	// Dir is the work dir and must exist; "" is this process's work dir.
	Dir string
	// Stdout is a file path, created or truncated (mode 0644 before umask);
	// "" is /dev/null. A relative path is relative to Dir.
	Stdout string
	// Stderr is like Stdout. The same path as Stdout shares one file
	// descriptor, like 2>&1.
	Stderr string
	// OutputRoot, when set, is a directory of drover's own (results,
	// spool) that Stdout and Stderr lie in: they are opened below it
	// without following any symlink there.
	OutputRoot string
	// StdoutFile and StderrFile, when set, are Stdout and Stderr opened
	// ahead with OpenOutput (while an earlier process still held the
	// cores): the child gets copies of them instead of the paths opened
	// again. The caller keeps and closes them.
	StdoutFile, StderrFile *os.File
	// HWThreads is the CPU affinity of the child (logical CPU numbers);
	// empty is the affinity this process had when New was called.
	HWThreads []int
	// MemoryMax, when above 0, puts the child in a cgroup of its own
	// limited to that many bytes, where the node allows (Options.Cgroup):
	// an exit after the OOM killer struck there says "out of memory".
	MemoryMax int64
	// NoStdin makes the child's stdin /dev/null instead of a pipe for
	// Send: it reads end of input at once.
	NoStdin bool
}

type procState uint8

const (
	stateStarting procState = iota // name reserved, spawn in flight
	stateRunning                   // forked, not yet reaped
	stateExited                    // reaped
)

type proc struct {
	name  string
	state procState
	pid   int
	start time.Time
	exit  node.Exit
	// The write end of the child's stdin: a bare descriptor until the first
	// Send makes it a pollable *os.File (most processes are never sent
	// anything). Both are closed when the child exits.
	stdinFD     int
	stdin       *os.File
	stdinClosed bool // by CloseStdin: the child has seen end of input

	sendMu sync.Mutex // one Send at a time

	// While starting, signals that are due once the pid is known.
	termPending, killPending bool
	killAt                   time.Time   // SIGKILL deadline of a Stop
	timer                    *time.Timer // fires at killAt

	startTick uint64      // boot time in clock ticks before the fork; set before register
	ending    atomic.Bool // signalled: it no longer owns orphans it may have left
	members   []target    // descendants seen when it was signalled, pinned
	mem       *memCgroup  // its memory-limited cgroup, until its exit
	kept      bool        // its group is registered on the keeper
}

// Supervisor starts and supervises processes. Its methods are safe for
// concurrent use.
type Supervisor struct {
	node     string
	log      *slog.Logger
	origMask unix.CPUSet
	devNull  int

	reqs    chan *spawnReq
	quit    chan struct{} // closed to stop the spawners
	spawnWG sync.WaitGroup
	ready   chan struct{}
	// exits: reaped, not yet taken by Finished; put in reaping order
	// (under mu), taken without it.
	exits *mailbox.Mailbox[node.Exit]

	mu       sync.Mutex
	cond     sync.Cond // on mu: running or inflight dropped while closing
	procs    map[string]*proc
	running  int // forked and not yet reaped
	inflight int // Start calls between reservation and answer
	closing  bool

	closeOnce sync.Once
	closed    chan struct{}
	keeper    *keeper     // nil unless Options.Keeper
	subreaper bool        // Options.Subreaper
	cgroup    *jobCgroup  // nil unless Options.Cgroup and the node allows it
	mem       *memCgroups // nil unless Options.Cgroup and memory can be limited
	// treeVar ("DROVER_TREE=token") marks the environment of every process
	// started, for a keeper without a cgroup (see keeperScript); "" when
	// there is no such keeper.
	treeVar string
}

// New starts a Supervisor: its spawner threads and, if it is the first open
// Supervisor of the process, the reaper (see the package comment: from now
// on the Supervisor reaps every child of the process).
func New(opts Options) (*Supervisor, error) {
	n := opts.Spawners
	if n < 0 {
		return nil, fmt.Errorf("supervise: invalid number of spawners %d", n)
	}
	if n == 0 {
		n = max(2, min(runtime.NumCPU(), 8))
	}
	s := &Supervisor{
		node:    opts.Node,
		log:     opts.Logger,
		reqs:    make(chan *spawnReq),
		quit:    make(chan struct{}),
		ready:   make(chan struct{}, 1),
		procs:   make(map[string]*proc),
		exits:   mailbox.New[node.Exit](0),
		closed:  make(chan struct{}),
		devNull: -1,

		subreaper: opts.Subreaper,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.cond.L = &s.mu
	// The affinity of the main thread is the process's affinity as tools
	// such as taskset show it.
	if err := unix.SchedGetaffinity(os.Getpid(), &s.origMask); err != nil {
		return nil, fmt.Errorf("supervise: get cpu affinity: %w", err)
	}
	fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("supervise: open /dev/null: %w", err)
	}
	s.devNull = fd
	if err := acquireReaper(s); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("supervise: %w", err)
	}
	if opts.Cgroup {
		if s.cgroup, err = newJobCgroup(); err != nil {
			s.log.Info("processes run without a cgroup of their own", "reason", err)
		} else {
			s.log.Debug("processes run in a cgroup of their own", "cgroup", s.cgroup.path)
		}
		if s.mem, err = newMemCgroups(s.cgroup); err != nil {
			s.log.Debug("memory limits of processes are not enforced; placement still counts them", "reason", err)
		} else {
			s.log.Debug("processes with a memory limit get a cgroup of their own", "dir", s.mem.dir, "v1", s.mem.v1)
		}
	}
	if opts.Keeper {
		cgPath, token := "", ""
		if s.cgroup != nil {
			cgPath = s.cgroup.path
		} else {
			token = rand.Text()
			s.treeVar = treeEnv + "=" + token
		}
		if s.keeper, err = startKeeper(fd, cgPath, token); err != nil {
			s.removeCgroup()
			releaseReaper(s)
			unix.Close(fd)
			return nil, fmt.Errorf("supervise: %w", err)
		}
	}
	s.spawnWG.Add(n)
	for range n {
		go s.spawner()
	}
	return s, nil
}

// Start starts a process and returns its pid once it runs (the exec
// succeeded). A bad spec is an error for this start only.
func (s *Supervisor) Start(spec Spec) (pid int, err error) {
	if spec.Name == "" {
		return 0, errors.New("start: empty process name")
	}
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return 0, fmt.Errorf("start %s: no command", spec.Name)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return 0, fmt.Errorf("start %s: %w", spec.Name, errdefs.ErrClosed)
	}
	if _, ok := s.procs[spec.Name]; ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("start %s: %w", spec.Name, errdefs.ErrDuplicate)
	}
	p := &proc{name: spec.Name, state: stateStarting, stdinFD: -1}
	s.procs[spec.Name] = p
	s.inflight++
	s.mu.Unlock()

	req := &spawnReq{spec: &spec, p: p, done: make(chan error, 1)}
	s.reqs <- req // spawners live until inflight is back to 0 after closing
	err = <-req.done

	s.mu.Lock()
	s.inflight--
	if err != nil {
		delete(s.procs, spec.Name)
	} else {
		pid = p.pid
	}
	if s.closing {
		s.cond.Broadcast()
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Debug("start failed", "name", spec.Name, "err", err)
		return 0, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	s.log.Debug("started", "name", spec.Name, "pid", pid)
	return pid, nil
}

// Poll reports the named processes, or every known one (sorted by name)
// when no names are given. A process whose Start has not returned yet is
// reported as running.
func (s *Supervisor) Poll(names ...string) ([]node.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(names) == 0 {
		out := make([]node.Status, 0, len(s.procs))
		for _, p := range s.procs {
			out = append(out, p.status())
		}
		slices.SortFunc(out, func(a, b node.Status) int {
			switch {
			case a.Name < b.Name:
				return -1
			case a.Name > b.Name:
				return 1
			}
			return 0
		})
		return out, nil
	}
	out := make([]node.Status, 0, len(names))
	for _, n := range names {
		p, ok := s.procs[n]
		if !ok {
			out = append(out, node.Status{Name: n, State: node.Unknown, Err: fmt.Errorf("poll %s: %w", n, errdefs.ErrUnknownProcess)})
			continue
		}
		out = append(out, p.status())
	}
	return out, nil
}

func (p *proc) status() node.Status {
	if p.state == stateExited {
		return node.Status{Name: p.name, State: node.Exited, Exit: p.exit}
	}
	return node.Status{Name: p.name, State: node.Running}
}

// Stop sends SIGTERM to the process group now and SIGKILL to the group
// after grace if the leader is still running; it returns at once. When the
// leader exits, what is left of its group is killed. Stopping a process that
// has already exited is errdefs.ErrNotRunning; one whose Start has not returned yet
// is signalled as soon as it runs. A second Stop can only bring the SIGKILL
// forward.
func (s *Supervisor) Stop(name string, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.liveLocked("stop", name)
	if err != nil {
		return err
	}
	s.stopLocked(p, grace)
	return nil
}

// Kill sends SIGKILL to the process group (see Stop for the details).
func (s *Supervisor) Kill(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.liveLocked("kill", name)
	if err != nil {
		return err
	}
	if p.state == stateStarting {
		p.killPending = true
		return nil
	}
	s.signalLocked(p, unix.SIGKILL)
	return nil
}

func (s *Supervisor) liveLocked(op, name string) (*proc, error) {
	p, ok := s.procs[name]
	if !ok {
		return nil, fmt.Errorf("%s %s: %w", op, name, errdefs.ErrUnknownProcess)
	}
	if p.state == stateExited {
		return nil, fmt.Errorf("%s %s: %w", op, name, errdefs.ErrNotRunning)
	}
	return p, nil
}

func (s *Supervisor) stopLocked(p *proc, grace time.Duration) {
	deadline := time.Now().Add(max(grace, 0))
	if p.state == stateStarting {
		p.termPending = true
		if p.killAt.IsZero() || deadline.Before(p.killAt) {
			p.killAt = deadline
		}
		return
	}
	s.signalLocked(p, unix.SIGTERM)
	s.armKillLocked(p, deadline)
}

// armKillLocked makes sure SIGKILL follows no later than deadline.
func (s *Supervisor) armKillLocked(p *proc, deadline time.Time) {
	if p.timer != nil {
		if !deadline.Before(p.killAt) {
			return
		}
		p.timer.Stop()
	}
	p.killAt = deadline
	p.timer = time.AfterFunc(time.Until(deadline), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p.state == stateRunning {
			s.log.Debug("grace expired", "name", p.name, "pid", p.pid)
			s.signalLocked(p, unix.SIGKILL)
		}
	})
}

// signalLocked signals the process group of a running (unreaped) process.
// Holding mu keeps the reaper from reaping the leader meanwhile, so neither
// the pid nor the group id can have been reused.
//
// Every descendant is signalled too, including those that left the group:
// the tree is walked first and its members recorded (see descend.go).
func (s *Supervisor) signalLocked(p *proc, sig unix.Signal) {
	p.ending.Store(true)
	s.collectLocked(p)
	err := unix.Kill(-p.pid, sig)
	if err == unix.ESRCH {
		// The leader left its group (setpgid/setsid): signal it alone.
		err = unix.Kill(p.pid, sig)
	}
	if err != nil {
		s.log.Debug("signal failed", "name", p.name, "pid", p.pid, "signal", node.SignalName(sig), "err", err)
	}
	for i := range p.members {
		if m := &p.members[i]; sig == unix.SIGKILL || m.pgid != p.pid {
			m.signal(sig)
		}
	}
	if subreaperOn.Load() {
		signalOrphans(p, sig, false, false)
	}
}

// Purge forgets a process that has exited, so that its name may be started
// again. Its exit is still delivered by Finished if it was not yet.
func (s *Supervisor) Purge(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.procs[name]
	if !ok {
		return fmt.Errorf("purge %s: %w", name, errdefs.ErrUnknownProcess)
	}
	if p.state != stateExited {
		return fmt.Errorf("purge %s: %w", name, errdefs.ErrRunning)
	}
	delete(s.procs, name)
	return nil
}

// Send writes data to the process's stdin. It honours the deadline and the
// cancellation of ctx; it fails with errdefs.ErrNotRunning once the process exited
// (its stdin is closed then), and with syscall.EPIPE when nothing reads the
// stdin any more while the process has not been reaped (it closed its stdin,
// or it is just dying).
func (s *Supervisor) Send(ctx context.Context, name string, data []byte) error {
	s.mu.Lock()
	p, err := s.liveLocked("send", name)
	if err == nil && p.state == stateStarting {
		err = fmt.Errorf("send %s: %w", name, errdefs.ErrNotRunning)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	s.mu.Lock()
	w, err := p.stdinFile()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("send %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("send %s: %w", name, err)
	}
	dl, _ := ctx.Deadline()
	_ = w.SetWriteDeadline(dl) // zero: none
	var fired chan struct{}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			_ = w.SetWriteDeadline(time.Unix(1, 0))
			close(fired)
		})
	}
	_, err = w.Write(data)
	if !stop() {
		<-fired // do not let a late callback hit the next Send
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		<-ctx.Done() // the deadline came from ctx, which is done or about to be
		return fmt.Errorf("send %s: %w", name, ctx.Err())
	case errors.Is(err, os.ErrClosed): // closed because the child exited
		return fmt.Errorf("send %s: %w", name, errdefs.ErrNotRunning)
	case errors.Is(err, syscall.EPIPE):
		s.mu.Lock()
		exited := p.state == stateExited
		s.mu.Unlock()
		if exited {
			return fmt.Errorf("send %s: %w", name, errdefs.ErrNotRunning)
		}
		// Nothing reads the process's stdin any more; it may still run.
		return fmt.Errorf("send %s: stdin closed: %w", name, syscall.EPIPE)
	}
	return fmt.Errorf("send %s: %w", name, err)
}

// stdinFile returns the write end of p's stdin as a non-blocking, pollable
// *os.File, so writes honour deadlines. Called with mu held.
func (p *proc) stdinFile() (*os.File, error) {
	if p.stdinClosed {
		return nil, fmt.Errorf("stdin closed: %w", syscall.EPIPE)
	}
	if p.stdin == nil {
		if p.stdinFD < 0 {
			return nil, errdefs.ErrNotRunning
		}
		if err := unix.SetNonblock(p.stdinFD, true); err != nil {
			return nil, err
		}
		p.stdin = os.NewFile(uintptr(p.stdinFD), "stdin of "+p.name)
		p.stdinFD = -1
	}
	return p.stdin, nil
}

// CloseStdin closes the write end of the process's stdin, so that it reads
// end of input once it has read what was sent; later Sends fail.
func (s *Supervisor) CloseStdin(name string) error {
	s.mu.Lock()
	p, err := s.liveLocked("close stdin", name)
	if err == nil && p.state == stateStarting {
		err = fmt.Errorf("close stdin %s: %w", name, errdefs.ErrNotRunning)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	p.sendMu.Lock() // after a Send in progress
	defer p.sendMu.Unlock()
	s.mu.Lock()
	stdin, stdinFD := p.stdin, p.stdinFD
	p.stdin, p.stdinFD, p.stdinClosed = nil, -1, true
	s.mu.Unlock()
	switch {
	case stdin != nil:
		err = stdin.Close()
	case stdinFD >= 0:
		err = unix.Close(stdinFD)
	}
	if err != nil {
		return fmt.Errorf("close stdin %s: %w", name, err)
	}
	return nil
}

// CancelAll stops every running process (see Stop); it returns at once.
func (s *Supervisor) CancelAll(grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelAllLocked(grace)
}

func (s *Supervisor) cancelAllLocked(grace time.Duration) {
	for _, p := range s.procs {
		if p.state != stateExited {
			s.stopLocked(p, grace)
		}
	}
}

// Finished returns the exits since the last call, each exactly once, in the
// order the processes were reaped.
func (s *Supervisor) Finished() []node.Exit {
	return s.exits.TakeAll("")
}

// Ready is signalled (capacity 1, never blocking the supervisor) whenever
// Finished has something new. It is never closed.
func (s *Supervisor) Ready() <-chan struct{} { return s.ready }

// Running is the number of processes that have been started and have not
// exited yet.
func (s *Supervisor) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Close stops every process (SIGTERM, then SIGKILL after grace), waits until
// all of them are reaped (with Options.Subreaper, also until every orphan
// that no running process may own has been killed), and stops the spawner
// threads and, when this is the last open Supervisor, the reaper. Starts are refused with errdefs.ErrClosed
// from the moment Close begins. Poll, Purge and Finished keep working on
// what is known. Close is idempotent; later calls wait for the first.
func (s *Supervisor) Close(grace time.Duration) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.cancelAllLocked(grace)
		for s.running > 0 || s.inflight > 0 {
			s.cond.Wait()
		}
		s.mu.Unlock()
		close(s.quit)
		s.spawnWG.Wait()
		if s.subreaper {
			sweep()
		}
		s.removeCgroup()
		if s.mem != nil {
			if err := s.mem.close(); err != nil {
				s.log.Warn("memory cgroups of the processes", "err", err)
			}
		}
		s.keeper.close()
		releaseReaper(s)
		_ = unix.Close(s.devNull)
		close(s.closed)
	})
	<-s.closed
	return nil
}

// removeCgroup ends whatever is left in the cgroup (without a subreaper,
// what escaped the process groups) and removes it.
func (s *Supervisor) removeCgroup() {
	if s.cgroup == nil {
		return
	}
	if err := s.cgroup.remove(); err != nil {
		s.log.Warn("cgroup of the processes", "err", err)
	}
}

// exited records the exit of p, whose leader pid is an unreaped zombie, and
// reaps it. Called by the reaper.
func (s *Supervisor) exited(p *proc, info *chldInfo) {
	s.mu.Lock()
	pid := p.pid
	// A process is over when its leader is, so nothing it left behind in
	// its group may outlive it (no orphans). The zombie leader still holds
	// the group id, so the id cannot have been reused.
	if err := unix.Kill(-pid, unix.SIGKILL); err != nil && err != unix.ESRCH {
		s.log.Debug("kill group", "name", p.name, "pid", pid, "err", err)
	}
	// So may nothing that left the group: the members recorded when it
	// was signalled, and the orphans that are its (its children have
	// already been reparented to us: a zombie has none left to walk).
	s.killMembersLocked(p)
	if subreaperOn.Load() {
		signalOrphans(p, unix.SIGKILL, false, false)
	}
	if p.kept {
		s.keeper.remove(pid)
	}
	e := node.Exit{Name: p.name, Node: s.node, Start: p.start}
	var ws unix.WaitStatus
	wpid, err := wait4(pid, &ws)
	e.End = time.Now()
	reaped := err == nil && wpid == pid
	switch {
	case reaped && ws.Signaled():
		e.Code, e.Signal = -1, syscall.Signal(ws.Signal())
	case reaped:
		e.Code = ws.ExitStatus()
	case info.code == cldKilled || info.code == cldDumped:
		// Reaped by someone else: fall back to what waitid saw.
		e.Code, e.Signal = -1, syscall.Signal(info.status)
	default: // cldExited
		e.Code = int(info.status)
	}
	if !reaped {
		s.log.Warn("child reaped elsewhere", "name", p.name, "pid", pid, "err", err)
	}
	mem := p.mem
	p.mem = nil
	if mem != nil && mem.oomKilled() {
		e.Err = fmt.Sprintf("out of memory: the OOM killer ended it at its limit of %d bytes", mem.limit)
	}
	p.state = stateExited
	p.exit = e
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	stdin, stdinFD := p.stdin, p.stdinFD
	p.stdin, p.stdinFD = nil, -1
	s.running--
	s.exits.Put("", e)
	if s.closing {
		s.cond.Broadcast()
	}
	s.mu.Unlock()
	if stdin != nil {
		_ = stdin.Close() // also ends a Send blocked on a full pipe
	} else if stdinFD >= 0 {
		_ = unix.Close(stdinFD)
	}
	if mem != nil {
		if err := mem.remove(); err != nil {
			s.log.Warn("memory cgroup", "name", e.Name, "err", err)
		}
	}
	select {
	case s.ready <- struct{}{}:
	default:
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("exited", "name", e.Name, "pid", pid, "exit", e.String())
	}
}
