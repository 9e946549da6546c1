// Package agent is one node's agent: it turns node.Node operations into
// work for the process supervisor, the port pool and the work-dir stager.
// The same Agent runs in-process for tests and behind the wire in the
// `drover agent` process.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/ports"
	"github.com/drover-hpc/drover/internal/privdir"
	"github.com/drover-hpc/drover/internal/supervise"
	"github.com/drover-hpc/drover/internal/topology"
)

// Options configure an Agent.
type Options struct {
	Name      string
	Resources topology.Resources
	// BaseEnv is the environment every process starts from; nil means this
	// process's environment.
	BaseEnv []string
	// Scratch is where fresh work dirs are made; "" means a private
	// directory under os.TempDir(). The agent removes what it made there.
	Scratch  string
	Logger   *slog.Logger
	Level    *slog.LevelVar // changed by SetLogLevel; may be nil
	Spawners int
}

// Agent implements node.Node on this machine.
type Agent struct {
	name    string
	res     topology.Resources
	log     *slog.Logger
	level   *slog.LevelVar
	sup     *supervise.Supervisor
	ports   *ports.Pool
	scratch string
	full    *fullWatch

	mu       sync.Mutex
	freeDirs []string // empty work dirs to hand out again
	dirs     int      // work dirs made, for their names
	env      map[string]string
	pending  map[string]*afterExit // per running process: what to do once it exits
	closed   bool
	// cancelled is closed (and replaced) by CancelAll and Close, failing
	// starts that wait for another process (ProcessSpec.After).
	cancelled chan struct{}
	// changed is closed (and replaced) whenever a name is claimed or is
	// over, for starts waiting on a name not seen yet.
	changed chan struct{}
	// over remembers recent names whose process has exited ("") or never
	// ran (the name it was queued behind, if any), so a start that waits
	// on one knows it need not, or waits for what that one waited for: a
	// queued start that failed hands its place in the line on.
	over     map[string]string
	overRing []string

	exits     *mailbox.Mailbox[node.Exit] // collected, not yet taken by Finished
	ready     chan struct{}
	stopPump  chan struct{}
	pumpDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// afterExit is the work an exit triggers before it is reported.
type afterExit struct {
	dir       string // work dir
	freshDir  bool   // made by us: remove after outputs are collected
	outputs   []string
	outputDir string
	captured  []string // stdout and stderr paths, checked after the exit
	// running is closed once the process has started; runningAt is then
	// when (a start queued behind it counts its AfterTimeout from there).
	running   chan struct{}
	runningAt time.Time
	marks     []fsMark // their file systems, watched while it runs
	autoPurge bool
	done      chan struct{} // closed when it has exited (before its outputs are collected) or the start failed
}

// ErrCancelled fails a start that waited for another process when
// everything was cancelled first.
var ErrCancelled = errors.New("cancelled before it started")

// New starts an agent with its supervisor.
func New(opts Options) (*Agent, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	level := opts.Level
	if level == nil {
		// SetLogLevel must work on any logger: filter it by our own level.
		level = new(slog.LevelVar)
		level.Set(slog.LevelDebug - 4) // filters nothing until SetLogLevel
		log = slog.New(levelHandler{log.Handler(), level})
	}
	scratchRoot, ownRoot, err := privateRoot(opts.Scratch, log)
	if err != nil {
		return nil, fmt.Errorf("agent %s: scratch dir: %w", opts.Name, err)
	}
	scratch := scratchRoot // a fresh root is this agent's alone
	if !ownRoot {
		if scratch, err = os.MkdirTemp(scratchRoot, "agent-"); err != nil {
			return nil, fmt.Errorf("agent %s: scratch dir: %w", opts.Name, err)
		}
	}
	sup, err := supervise.New(supervise.Options{Node: opts.Name, Logger: log, Spawners: opts.Spawners, Keeper: true, Subreaper: true, Cgroup: true})
	if err != nil {
		os.RemoveAll(scratch)
		return nil, fmt.Errorf("agent %s: %w", opts.Name, err)
	}
	base := opts.BaseEnv
	if base == nil {
		base = os.Environ()
	}
	a := &Agent{
		name:      opts.Name,
		res:       opts.Resources,
		log:       log,
		level:     level,
		sup:       sup,
		ports:     ports.New(),
		scratch:   scratch,
		env:       envMap(base),
		pending:   make(map[string]*afterExit),
		cancelled: make(chan struct{}),
		changed:   make(chan struct{}),
		over:      make(map[string]string),
		exits:     mailbox.New[node.Exit](0),
		ready:     make(chan struct{}, 1),
		stopPump:  make(chan struct{}),
		pumpDone:  make(chan struct{}),
		full:      newFullWatch(log),
	}
	go a.pump()
	return a, nil
}

// privateRoot is the scratch root: dir, or $TMPDIR/drover-<uid>, made
// 0700, or checked to be this user's own (privdir.Ensure). One that is not
// (another user made it first, to read or swap what is staged there) is
// left alone for a fresh private directory (fresh true), with a warning.
func privateRoot(dir string, log *slog.Logger) (root string, fresh bool, err error) {
	if dir == "" {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("drover-%d", os.Getuid()))
	}
	narrowed, err := privdir.Ensure(dir, false)
	switch {
	case err == nil:
		if narrowed {
			log.Warn("others could write in the scratch root; made it private (0700)", "dir", dir)
		}
		return dir, false, nil
	case errors.Is(err, privdir.ErrNotOwned), errors.Is(err, privdir.ErrNotDir):
		root, merr := os.MkdirTemp(os.TempDir(), fmt.Sprintf("drover-%d-", os.Getuid()))
		if merr != nil {
			return "", false, merr
		}
		log.Warn("scratch root not used: it is not a directory of this user's own; using a fresh private one", "reason", err, "instead", root)
		return root, true, nil
	}
	return "", false, err
}

func envMap(kv []string) map[string]string {
	m := make(map[string]string, len(kv))
	for _, e := range kv {
		if k, v, ok := strings.Cut(e, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (a *Agent) Name() string                  { return a.name }
func (a *Agent) Resources() topology.Resources { return a.res }
func (a *Agent) Ready() <-chan struct{}        { return a.ready }

// Health implements node.Node: an agent in this process is up.
func (a *Agent) Health() node.Health { return node.Health{State: "up"} }

// Start stages the work dir, hands over reserved ports and starts the process.
func (a *Agent) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	if err := ctx.Err(); err != nil {
		return node.Started{}, fmt.Errorf("start %s on %s: %w", spec.Name, a.name, err)
	}
	st, err := a.start(ctx, spec)
	if err != nil {
		return node.Started{}, fmt.Errorf("start %s on %s: %w", spec.Name, a.name, err)
	}
	return st, nil
}

// waitFor blocks until the named process has exited. With
// a limit (0: none), it gives up once that process has run for longer
// than limit, and a name not seen yet is waited for too: the queue may
// send a start behind one whose own start is still on its way, and queue
// several deep behind one that has not started yet. A process that never
// ran hands the wait on to the one it was itself queued behind.
func (a *Agent) waitFor(ctx context.Context, name string, limit time.Duration) error {
	var timer *time.Timer
	var expired <-chan time.Time
	timed := "" // what the timer measures: a name's run, or the wait for an unseen one
	bound := func(what string, d time.Duration) {
		if limit == 0 || timed == what {
			return
		}
		if timer != nil {
			timer.Stop()
		}
		timed, timer = what, time.NewTimer(d)
		expired = timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		a.mu.Lock()
		pred, changed, cancelled := a.pending[name], a.changed, a.cancelled
		heir, over := a.over[name]
		a.mu.Unlock()
		if over && heir != "" {
			name = heir // it never ran: wait for what it waited for
			continue
		}
		if over || (pred == nil && limit == 0) {
			// Over, or never seen with no bound on the wait: go ahead.
			return nil
		}
		var done, running <-chan struct{}
		if pred == nil {
			bound("unseen "+name, limit)
		} else {
			done, changed = pred.done, nil
			select {
			case <-pred.running:
				bound("run "+name, limit-time.Since(pred.runningAt))
			default:
				running = pred.running // queued itself: no bound yet
				if timer != nil {
					timer.Stop()
					timed, timer, expired = "", nil, nil
				}
			}
		}
		select {
		case <-done: // over now: look again whether it ran
		case <-running:
		case <-changed:
		case <-cancelled:
			return ErrCancelled
		case <-expired:
			return errdefs.ErrAfterTimeout
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// maxOver bounds the names remembered as over.
const maxOver = 4096

// claimedLocked and overLocked wake the starts waiting on a name.
func (a *Agent) claimedLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// overLocked records that name is over; heir is, for a process that
// never ran, the one it was queued behind.
func (a *Agent) overLocked(name, heir string) {
	if _, seen := a.over[name]; !seen {
		a.over[name] = heir
		a.overRing = append(a.overRing, name)
		if len(a.overRing) > maxOver {
			delete(a.over, a.overRing[0])
			a.overRing = a.overRing[1:]
		}
	}
	delete(a.pending, name)
	a.claimedLocked()
}

func (a *Agent) start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return node.Started{}, errdefs.ErrClosed
	}
	if _, dup := a.pending[spec.Name]; dup {
		a.mu.Unlock()
		return node.Started{}, errdefs.ErrDuplicate
	}
	after := &afterExit{dir: spec.Dir, outputs: spec.Outputs, outputDir: spec.OutputDir, autoPurge: spec.AutoPurge,
		running: make(chan struct{}), done: make(chan struct{})}
	a.pending[spec.Name] = after // claims the name while we stage
	a.claimedLocked()
	cancelled := a.cancelled // CancelAll and Close end the staging too
	// Later layers win: the base environment, the spec's, then the
	// agent's own variables. Each name appears once, since a child's
	// getenv takes the first of duplicates.
	own := map[string]bool{"DROVER_NODE": true, "DROVER_WORKDIR": true, "DROVER_HWTHREADS": true}
	for _, p := range spec.PortNames {
		own["DROVER_PORT_"+strings.ToUpper(p)] = true
	}
	env := make([]string, 0, len(a.env)+len(spec.Env)+8)
	for k, v := range a.env {
		if _, overridden := spec.Env[k]; !overridden && !own[k] {
			env = append(env, k+"="+v)
		}
	}
	a.mu.Unlock()

	ok := false
	defer func() {
		if !ok {
			if after.freshDir {
				a.dropWorkDir(after.dir)
			}
			a.mu.Lock()
			a.overLocked(spec.Name, spec.After)
			a.mu.Unlock()
			close(after.done)
		}
	}()

	if after.dir == "" {
		dir, err := a.newWorkDir()
		if err != nil {
			return node.Started{}, fmt.Errorf("work dir: %w", err)
		}
		after.dir, after.freshDir = dir, true
	}
	if spec.MakeOutputDir && spec.OutputDir != "" {
		dir := filepath.Clean(spec.OutputDir)
		if err := nofollow.MkdirAll(filepath.Dir(dir), filepath.Base(dir), 0o755); err != nil {
			return node.Started{}, fmt.Errorf("results dir: %w", err)
		}
	}
	if err := a.stage(ctx, spec, after.dir, cancelled); err != nil {
		return node.Started{}, err
	}
	for k, v := range spec.Env {
		if !own[k] {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "DROVER_NODE="+a.name, "DROVER_WORKDIR="+after.dir)
	if len(spec.HWThreads) > 0 {
		env = append(env, "DROVER_HWTHREADS="+commaList(spec.HWThreads))
	}

	// Stdout and Stderr as the supervisor resolves them: relative to the
	// work dir.
	inDir := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(after.dir, p)
		}
		return p
	}
	outPath, errPath := inDir(spec.Stdout), inDir(spec.Stderr)
	var stdoutFile, stderrFile *os.File
	defer func() {
		for _, f := range []*os.File{stdoutFile, stderrFile} {
			if f != nil {
				f.Close() // the child has its copy
			}
		}
	}()
	if spec.After != "" {
		// Everything above is done while the process before it still
		// runs; once it exits only the fork and exec are left. Opening
		// the output files now is part of that: on a slow file system an
		// inode costs more than a short process's whole run. (An error
		// shows when the supervisor opens the path itself.)
		open := func(p string) *os.File {
			if p == "" {
				return nil
			}
			f, _ := supervise.OpenOutput(spec.OutputDir, p)
			return f
		}
		stdoutFile = open(outPath)
		if errPath != outPath {
			stderrFile = open(errPath)
		}
		if err := a.waitFor(ctx, spec.After, spec.AfterTimeout); err != nil {
			return node.Started{}, err
		}
		select {
		case <-cancelled:
			// Everything was cancelled while it waited: the queue withdrew
			// it, even if its predecessor's exit came first.
			return node.Started{}, ErrCancelled
		default:
		}
	}

	args := spec.Args
	var held []int
	var byName map[string]int
	if len(spec.PortNames) > 0 {
		var err error
		held, err = a.ports.Reserve(false, len(spec.PortNames))
		if err != nil {
			return node.Started{}, err
		}
		byName = make(map[string]int, len(held))
		args = append([]string(nil), spec.Args...)
		for i, name := range spec.PortNames {
			byName[name] = held[i]
			env = append(env, fmt.Sprintf("DROVER_PORT_%s=%d", strings.ToUpper(name), held[i]))
			for j := range args {
				args[j] = strings.ReplaceAll(args[j], "{port:"+name+"}", fmt.Sprint(held[i]))
			}
		}
		// Handed over as late as possible: the child binds them itself.
		if err := a.ports.Release(false, held); err != nil {
			return node.Started{}, err
		}
	}

	for _, p := range []string{outPath, errPath} {
		if p != "" && !slices.Contains(after.captured, p) {
			after.captured = append(after.captured, p)
		}
	}
	after.marks = a.full.add(after.captured)
	pid, err := a.sup.Start(supervise.Spec{
		Name:   spec.Name,
		Args:   args,
		Env:    env,
		Dir:    after.dir,
		Stdout: spec.Stdout,
		Stderr: spec.Stderr,
		// The results dir is drover's: no symlink there is followed.
		OutputRoot: spec.OutputDir,
		StdoutFile: stdoutFile,
		StderrFile: stderrFile,
		HWThreads:  spec.HWThreads,
		MemoryMax:  spec.MemoryMax,
		NoStdin:    spec.NoStdin,
	})
	if err != nil {
		a.full.drop(after.marks)
		if inner := errors.Unwrap(err); inner != nil {
			err = inner // the supervisor's message repeats "start NAME"
		}
		return node.Started{}, err
	}
	ok = true
	after.runningAt = time.Now() // read once running is seen closed
	close(after.running)
	return node.Started{PID: pid, Ports: byName}, nil
}

// stage copies spec's files into dir until ctx ends, cancelled is closed
// (CancelAll, Close) or spec.StageTimeout has passed.
func (a *Agent) stage(ctx context.Context, spec node.ProcessSpec, dir string, cancelled <-chan struct{}) error {
	if len(spec.Files) == 0 {
		return nil
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-cancelled:
			cancel(ErrCancelled)
		case <-cctx.Done():
		}
	}()
	ctx = cctx
	if t := spec.StageTimeout; t > 0 {
		var cancelT context.CancelFunc
		ctx, cancelT = context.WithTimeoutCause(ctx, t, fmt.Errorf("%w (%v)", errdefs.ErrStageTimeout, t))
		defer cancelT()
	}
	for _, f := range spec.Files {
		if err := stageIn(ctx, f, dir); err != nil {
			return err
		}
	}
	return nil
}

// maxFreeDirs bounds the empty work dirs kept for reuse.
const maxFreeDirs = 256

// newWorkDir hands out an empty work dir: one left empty by an earlier
// process, or a new one. On a slow file system a mkdir and an rmdir cost
// more than the fork and exec of a short process.
func (a *Agent) newWorkDir() (string, error) {
	a.mu.Lock()
	if n := len(a.freeDirs); n > 0 {
		dir := a.freeDirs[n-1]
		a.freeDirs = a.freeDirs[:n-1]
		a.mu.Unlock()
		return dir, nil
	}
	a.dirs++
	dir := filepath.Join(a.scratch, "w"+strconv.Itoa(a.dirs))
	a.mu.Unlock()
	return dir, os.Mkdir(dir, 0o755)
}

// dropWorkDir keeps a work dir for reuse if the process left it as it
// found it (empty, mode 0755), else removes it.
func (a *Agent) dropWorkDir(dir string) {
	if pristine(dir) {
		a.mu.Lock()
		if len(a.freeDirs) < maxFreeDirs && !a.closed {
			a.freeDirs = append(a.freeDirs, dir)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
	}
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("remove work dir", "dir", dir, "err", err)
	}
}

func pristine(dir string) bool {
	info, err := os.Lstat(dir)
	if err != nil || !info.IsDir() || info.Mode().Perm() != 0o755 {
		return false
	}
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	return err == io.EOF
}

// commaList is the DROVER_HWTHREADS form: "0,1,8".
func commaList(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ",")
}

// pump moves exits from the supervisor to our mailbox, collecting
// outputs and removing fresh work dirs first, so that an exit report means
// the results are in place.
func (a *Agent) pump() {
	defer close(a.pumpDone)
	for {
		select {
		case <-a.sup.Ready():
			a.collect()
		case <-a.stopPump:
			a.collect()
			return
		}
	}
}

func (a *Agent) collect() {
	exits := a.sup.Finished()
	if len(exits) == 0 {
		return
	}
	// The starts queued behind these go first: they wait for the exits,
	// not for the outputs, which are collected below while they start.
	afters := make([]*afterExit, len(exits))
	a.mu.Lock()
	for i := range exits {
		if afters[i] = a.pending[exits[i].Name]; afters[i] != nil {
			a.overLocked(exits[i].Name, "")
		}
	}
	a.mu.Unlock()
	for _, after := range afters {
		if after != nil {
			close(after.done)
		}
	}
	for i, after := range afters {
		if after == nil {
			continue
		}
		var errs []string
		if exits[i].Err != "" {
			errs = append(errs, exits[i].Err)
		}
		if err := collectOutputs(after.dir, after.outputs, after.outputDir); err != nil {
			errs = append(errs, err.Error())
		}
		cut := a.full.drop(after.marks)
		if err := checkCaptured(after.captured); err != nil {
			errs = append(errs, err.Error())
		} else if cut {
			errs = append(errs, "output may be incomplete: the file system holding its stdout or stderr was full while it ran")
		}
		exits[i].Err = strings.Join(errs, "; ")
		if after.freshDir {
			a.dropWorkDir(after.dir)
		}
		if after.autoPurge {
			if err := a.sup.Purge(exits[i].Name); err != nil {
				a.log.Warn("purge", "name", exits[i].Name, "err", err)
			}
		}
	}
	for _, e := range exits {
		a.exits.Put("", e)
	}
	select {
	case a.ready <- struct{}{}:
	default:
	}
}

// Finished returns the exits not yet returned, each exactly once.
func (a *Agent) Finished() []node.Exit { return a.exits.TakeAll("") }

func (a *Agent) Poll(_ context.Context, names ...string) ([]node.Status, error) {
	st, err := a.sup.Poll(names...)
	if err != nil {
		return nil, fmt.Errorf("poll on %s: %w", a.name, err)
	}
	return st, nil
}

func (a *Agent) Stop(_ context.Context, name string, grace time.Duration) error {
	return a.wrap(a.sup.Stop(name, grace))
}

func (a *Agent) Kill(_ context.Context, name string) error { return a.wrap(a.sup.Kill(name)) }

func (a *Agent) Purge(_ context.Context, name string) error { return a.wrap(a.sup.Purge(name)) }

func (a *Agent) Send(ctx context.Context, name string, data []byte) error {
	return a.wrap(a.sup.Send(ctx, name, data))
}

func (a *Agent) CloseStdin(_ context.Context, name string) error {
	return a.wrap(a.sup.CloseStdin(name))
}

func (a *Agent) CancelAll(_ context.Context, grace time.Duration) error {
	a.mu.Lock()
	a.cancelWaitingLocked()
	a.mu.Unlock()
	a.sup.CancelAll(grace)
	return nil
}

func (a *Agent) cancelWaitingLocked() {
	close(a.cancelled)
	a.cancelled = make(chan struct{})
}

func (a *Agent) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w on %s", err, a.name)
}

func (a *Agent) GetEnv(_ context.Context, key string) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.env[key]
	return v, ok, nil
}

func (a *Agent) SetEnv(_ context.Context, key, value string) error {
	if key == "" || strings.ContainsAny(key, "=\x00") {
		return fmt.Errorf("set env on %s: invalid name %q", a.name, key)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.env[key] = value
	return nil
}

func (a *Agent) BindPorts(_ context.Context, udp bool, n int) ([]int, error) {
	p, err := a.ports.Reserve(udp, n)
	if err != nil {
		return nil, fmt.Errorf("%w on %s", err, a.name)
	}
	return p, nil
}

func (a *Agent) ReleasePorts(_ context.Context, udp bool, p []int) error {
	return a.wrap(a.ports.Release(udp, p))
}

func (a *Agent) SetLogLevel(_ context.Context, level string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("set log level on %s: %w", a.name, err)
	}
	a.level.Set(l)
	return nil
}

// HeldPorts lists the reserved ports, for status displays.
func (a *Agent) HeldPorts(udp bool) []int {
	p := a.ports.Held(udp)
	sort.Ints(p)
	return p
}

// Close stops every process (SIGTERM, grace, SIGKILL), reports their exits,
// then releases ports and scratch space. Ready is closed afterwards.
func (a *Agent) Close() error { return a.Shutdown(10 * time.Second) }

// Shutdown is Close with an explicit grace.
func (a *Agent) Shutdown(grace time.Duration) error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		a.cancelWaitingLocked()
		a.mu.Unlock()
		err := a.sup.Close(grace)
		close(a.stopPump)
		<-a.pumpDone
		a.full.close()
		close(a.ready)
		a.closeErr = errors.Join(err, a.ports.Close(), os.RemoveAll(a.scratch))
	})
	return a.closeErr
}

// levelHandler drops records below a level that can change at run time.
type levelHandler struct {
	slog.Handler
	level *slog.LevelVar
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level.Level() && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return levelHandler{h.Handler.WithAttrs(attrs), h.level}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{h.Handler.WithGroup(name), h.level}
}
