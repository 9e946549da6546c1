// Package queue places the instances of a batch of jobs on nodes, whole
// cores at a time, starts them, follows them to exactly one final result
// each, retries failures, enforces timeouts and writes the results
// directory. It talks to nodes only through node.Node.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/drover-hpc/drover/internal/cores"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// Options configure a Run.
type Options struct {
	Nodes   []node.Node
	OutDir  string
	BaseDir string // relative `files` resolve against it
	// Retries applies to jobs that do not set their own.
	Retries int
	// Grace is the time between SIGTERM and SIGKILL when stopping.
	Grace time.Duration
	// Skip names instances that already succeeded (--resume).
	Skip map[string]bool
	// Prior gives, by instance, the attempts made in earlier runs into
	// OutDir (--resume): attempt numbers go on from there, the output
	// already there is moved aside like a retry's, and Retries counts
	// the attempts of this run only.
	Prior map[string]int
	// Hard, when it fires after ctx is cancelled, kills instead of waiting
	// out the grace (a second Ctrl-C).
	Hard <-chan struct{}
	// Stdin keeps each instance's stdin open for Send (serve, where a
	// program may talk to a submitted instance); otherwise it is
	// /dev/null, as nobody writes to a batch instance.
	Stdin    bool
	Progress func(Counts)
	Logger   *slog.Logger
	// Cores is shared with whoever else places processes on these nodes;
	// nil makes a private pool of every node's cores.
	Cores *cores.Pool
	// Halt stops the run early once enough instances have failed.
	Halt Halt
	// MaxRunning bounds the instances running at once in the whole run
	// (drover run -j); 0 = no bound.
	MaxRunning int
	// OnEvent, if set, sees every event right after it was written to
	// the events log, in order, from the queue's loop: it must return
	// quickly.
	OnEvent func(results.Event)
	// Window is how much of a job's average run each node holds queued
	// behind each running instance, once its instances have proved short
	// (window.go); 0: defaultWindow.
	Window time.Duration
	// Joining, when set, brings nodes that come up after the run started
	// (Nodes may then be empty) and launches that failed (node-failed
	// events); it is closed once no more will come. Until then a job that
	// no node can take waits instead of failing.
	Joining <-chan Arrival
}

// Counts is a snapshot for progress displays.
type Counts struct {
	Total, Succeeded, Failed, Lost, Cancelled, Skipped, Running int
	Start                                                       time.Time
}

// Done is the number of instances that reached a final state.
func (c Counts) Done() int { return c.Succeeded + c.Failed + c.Lost + c.Cancelled + c.Skipped }

type phase int

const (
	pending phase = iota
	starting
	running
	final
)

type instance struct {
	job     *jobState
	index   int
	name    string
	attempt int
	// prior is the attempts made in earlier runs (Options.Prior).
	prior int
	// proc is the process name on the node: the instance name, with
	// "~N" for attempt N > 1 so that nothing meant for an earlier attempt
	// (a late timeout stop) can reach a later one.
	proc  string
	phase phase
	node  *nodeState
	grant cores.Grant // what it holds in the pool (or its predecessor's, once handed over)
	hw    []int
	gpus  []topology.GPU // of the current attempt
	// usedCores are the cores of the current attempt, kept for the summary.
	usedCores []int
	// prepared is the attempt whose results dir is set up.
	prepared   int
	start, end time.Time
	timer      *time.Timer
	timedOut   bool
	// early holds an exit that arrived before the start was acknowledged.
	early *node.Exit
	// lostOn is where the previous attempt was lost; retries avoid it.
	lostOn *nodeState
	// next waits on the node to take over this instance's cores the
	// moment it exits (ProcessSpec.After); prev is the reverse link until
	// the hand-over. A line of them, headed by the one holding the cores,
	// is the node's window of this core (window.go).
	next, prev *instance
	// replaced: an attempt on a node that was lost before its start was
	// confirmed (most likely queued in the node's window, never run) was
	// placed again without counting against its retries; once per
	// instance.
	replaced bool
}

// outcome is an instance's final state, packed into 48 bytes: a run of
// millions of instances holds one of these each and nothing more. The
// rare long parts (an error, the cores of a multi-core instance) live in
// the runner's extras.
type outcome struct {
	job      *jobState
	index    int32
	node     int32 // index into runner.nodes; -1 if it never ran
	core     int32 // its one core's index on the node; -1: none or see extras
	exitCode int32 // valid when hasCode is set
	attempts uint16
	state    uint8 // index into outcomeStates
	flags    uint8
	signal   uint8
	start    int64 // unix nano; 0 = never started
	end      int64
}

const hasCode = 1

var outcomeStates = []string{results.StateSucceeded, results.StateFailed, results.StateLost, results.StateCancelled, results.StateSkipped}

func stateIndex(state string) uint8 { return uint8(slices.Index(outcomeStates, state)) }

// outcomeExtra holds what does not fit in an outcome.
type outcomeExtra struct {
	err   string
	cores []int
}

func (r *runner) result(i int) results.InstanceResult {
	o := &r.done[i]
	in := results.InstanceResult{
		Name: o.job.job.InstanceName(int(o.index)), State: outcomeStates[o.state], Attempts: int(o.attempts),
	}
	if o.signal != 0 {
		in.Signal = node.SignalName(syscall.Signal(o.signal))
	}
	if o.flags&hasCode != 0 {
		code := int(o.exitCode)
		in.ExitCode = &code
	}
	x := r.extras[i]
	in.Error = x.err
	if o.node >= 0 {
		ns := r.nodes[o.node]
		in.Node = ns.name
		var hw []int
		if o.core >= 0 {
			hw = ns.res.Cores[o.core]
		}
		for _, c := range x.cores {
			hw = append(hw, ns.res.Cores[c]...)
		}
		in.HWThreads = topology.FormatCPUList(hw)
	}
	if o.start != 0 {
		in.Start, in.End = time.Unix(0, o.start), time.Unix(0, o.end)
	}
	return in
}

type jobState struct {
	order   int // position in the job list
	job     *jobfile.Job
	next    int         // next index never tried
	retry   []*instance // failed attempts waiting for another go
	retries int
	skip    map[string]bool
	// never, when set, ends every instance from index never.from on that
	// was never tried: they are counted and logged, but hold no record
	// each, so stopping a queue of millions costs no memory per instance.
	never *neverRun
	// ran and ranFor observe finished attempts: prefetching pays off only
	// behind instances that finish soon.
	ran    int
	ranFor time.Duration
	// after are the jobs it waits for, dependents those waiting for it
	// (deps.go); ok counts its instances that succeeded, in this run or
	// an earlier one; broken is set once one ended otherwise.
	after, dependents []*jobState
	ok                int
	broken            bool
	// slots counts the instances that hold one of its max_running.
	slots int
	// unlined are running instances that asked for a line behind them
	// before the job had proved short (window.go).
	unlined     []*instance
	unlinedKept int // how many were left at the last sweep
	// prog is the program its command names in the caller's directory;
	// nil when none (findProgram).
	prog *node.Program
}

func (j *jobState) hasPending() bool { return len(j.retry) > 0 || j.next < j.job.Repeat }

// neverRun is the final state of a job's instances that were never tried.
type neverRun struct {
	from  int
	state string
	err   string
}

// neverChunk is how many final events of never-tried instances are
// written at a time.
const neverChunk = 4096

// endUntried makes every instance of js that was never tried final with
// state and reason: its final event is logged (in chunks, so the events
// are never all in memory), and the counts and summary.json take the rest
// from js.never. Those that --resume skips are skipped.
func (r *runner) endUntried(js *jobState, state, reason string) {
	from := js.next
	js.never = &neverRun{from: from, state: state, err: reason}
	js.next = js.job.Repeat
	now := time.Now()
	first := ""
	for i := from; i < js.job.Repeat; i++ {
		r.pending--
		name := js.job.InstanceName(i)
		if js.skip[name] {
			r.counts.Skipped++
			js.ok++
			continue
		}
		if first == "" {
			first = name
		}
		r.emit(results.Event{Time: now, Event: results.Failed, Job: name, Error: reason, State: state})
		switch state {
		case results.StateCancelled:
			r.counts.Cancelled++
		case results.StateSkipped:
			r.counts.Skipped++
		default:
			r.counts.Failed++
		}
		if len(r.evbuf) >= neverChunk {
			r.flush()
		}
	}
	r.flush()
	if first != "" {
		r.dependencyFailed(js, first, state, reason)
	}
}

// neverResult is instance i of js, which was never tried.
func (js *jobState) neverResult(i int) results.InstanceResult {
	name := js.job.InstanceName(i)
	if js.skip[name] {
		return results.InstanceResult{Name: name, State: results.StateSkipped}
	}
	return results.InstanceResult{Name: name, State: js.never.state, Error: js.never.err}
}

type nodeState struct {
	n       node.Node
	name    string
	idx     int
	res     topology.Resources
	running map[string]*instance
	gone    bool
}

type startResult struct {
	inst *instance
	st   node.Started
	err  error
}

// timeoutAt names the attempt a timer was set for, so a late timer cannot
// stop a later attempt.
type timeoutAt struct {
	inst    *instance
	attempt int
}

type signal struct {
	node int
	gone bool
}

type runner struct {
	opts    Options
	log     *slog.Logger
	pool    *cores.Pool
	ownPool bool
	events  *results.Log
	jobs    []*jobState
	nodes   []*nodeState
	byName  map[string]*nodeState
	done    []outcome // every instance's final state, in the order they ended
	extras  map[int]outcomeExtra
	counts  Counts
	live    int // instances starting or running
	slots   int // of Options.MaxRunning, held (deps.go)
	pending int // instances not yet final, not live
	stopped string
	// killing: every instance is being stopped (interrupt, halt now), not
	// only the launching (halt soon).
	killing bool
	// stopGrace is the grace of the latest stop, for instances whose start
	// completes after it.
	stopGrace time.Duration

	// handoff lists instances that may get a successor queued behind them.
	handoff  []*instance
	starts   chan startResult
	ready    chan signal
	timeouts chan timeoutAt
	quit     chan struct{}
	// bg: the starts, stops and cancels sent off to the nodes; Run waits
	// for them, and cancels bgCtx first once nothing is live any more.
	bg    sync.WaitGroup
	bgCtx context.Context
	evbuf []results.Event
	// eventsFailed: a write of the events log failed (and was logged).
	eventsFailed bool
	// settled: no more nodes will join (Options.Joining is closed or nil).
	settled bool
	// watchers are the goroutines of watch, one a node.
	watchers sync.WaitGroup
}

// Run runs jobs to completion (or until ctx is cancelled, then stops them)
// and returns the summary, which it has also written to OutDir.
func Run(ctx context.Context, jobs []*jobfile.Job, opts Options) (*results.Summary, error) {
	if len(opts.Nodes) == 0 && opts.Joining == nil {
		return nil, errors.New("run: no nodes")
	}
	if err := checkJobs(jobs); err != nil {
		return nil, err
	}
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	events, err := results.OpenLog(opts.OutDir)
	if err != nil {
		return nil, err
	}
	r := &runner{
		extras:   make(map[int]outcomeExtra),
		opts:     opts,
		log:      log,
		events:   events,
		byName:   make(map[string]*nodeState),
		starts:   make(chan startResult, 64),
		ready:    make(chan signal, len(opts.Nodes)),
		timeouts: make(chan timeoutAt, 16),
		quit:     make(chan struct{}),
		settled:  opts.Joining == nil,
	}
	r.counts.Start = time.Now()
	if r.pool = opts.Cores; r.pool == nil {
		r.pool, r.ownPool = cores.NewPool(), true
	}
	for _, j := range jobs {
		js := &jobState{order: len(r.jobs), job: j, retries: opts.Retries, skip: opts.Skip, prog: findProgram(j, opts.BaseDir)}
		if j.Retries != nil {
			js.retries = *j.Retries
		}
		r.jobs = append(r.jobs, js)
		r.counts.Total += j.Repeat
	}
	r.linkDeps()
	r.pending = r.counts.Total
	r.emit(results.Event{Event: results.RunStart})
	for _, n := range opts.Nodes {
		r.addNode(n)
	}
	var cancelBG context.CancelFunc
	r.bgCtx, cancelBG = context.WithCancel(context.Background())
	r.loop(ctx)
	close(r.quit)
	r.watchers.Wait()
	cancelBG()
	r.bg.Wait()
	sum := r.summary()
	r.emit(results.Event{Event: results.RunEnd, Error: r.stopped})
	r.flush()
	err = errors.Join(results.WriteSummary(opts.OutDir, sum, r.all), events.Close())
	return sum, err
}

// watch forwards a node's readiness into the single scheduler loop, and
// tells it when the node is gone.
func (r *runner) watch(ns *nodeState) {
	for {
		select {
		case _, ok := <-ns.n.Ready():
			select {
			case r.ready <- signal{node: ns.idx, gone: !ok}:
			case <-r.quit:
				return
			}
			if !ok {
				return
			}
		case <-r.quit:
			return
		}
	}
}

func (r *runner) loop(ctx context.Context) {
	hard := r.opts.Hard
	done := ctx.Done()
	joining := r.opts.Joining
	for {
		changed := r.pool.Changed() // before dispatch, so no release is missed
		if !r.killing && ctx.Err() != nil {
			r.stop(r.opts.Grace)
		}
		// What the last turn learnt is in the log before anything acts on
		// it: cores freed by an exit go to the next instance only once the
		// exit is recorded.
		r.flush()
		if r.stopped == "" {
			r.dispatch()
		}
		r.flush()
		r.progress()
		if r.live == 0 && (r.pending == 0 || r.stopped != "") {
			break
		}
		select {
		case <-done:
			done = nil
			if !r.killing {
				r.stop(r.opts.Grace)
			}
		case <-hard:
			hard = nil
			// A second Ctrl-C may win the race with the first one.
			r.stop(0)
		case res := <-r.starts:
			r.started(res)
		case sig := <-r.ready:
			r.signalled(sig)
		case t := <-r.timeouts:
			r.timeout(t)
		case a, ok := <-joining:
			if !ok {
				joining, r.settled = nil, true
				continue
			}
			r.arrive(a)
		case <-changed:
		}
		r.absorb()
	}
	// Whatever never started is final now.
	reason := "not started: " + r.stopped
	for _, js := range r.jobs {
		for len(js.retry) > 0 {
			r.finish(r.take(js), results.Event{Event: results.Failed, Error: reason}, results.StateCancelled)
		}
		if js.next < js.job.Repeat {
			r.endUntried(js, results.StateCancelled, reason)
		}
	}
	r.flush()
	r.progress()
}

// stop ends the run: nothing more starts, and every instance is stopped
// (SIGTERM, then SIGKILL after grace).
func (r *runner) stop(grace time.Duration) {
	if r.stopped == "" {
		r.stopped = "interrupted"
	}
	if !r.killing {
		r.log.Info("stopping every instance", "grace", grace, "because", r.stopped)
	}
	r.killing = true
	r.stopGrace = grace
	r.cancelAll(grace)
}

func (r *runner) cancelAll(grace time.Duration) {
	for _, ns := range r.nodes {
		if ns.gone {
			continue
		}
		n := ns.n
		r.bg.Go(func() {
			if err := n.CancelAll(r.bgCtx, grace); err != nil && r.bgCtx.Err() == nil {
				r.log.Warn("cancel all", "node", n.Name(), "err", err)
			}
		})
	}
}

// take returns the next instance of js to place (a retry first), skipping
// and finalising instances that already succeeded in an earlier run.
func (r *runner) take(js *jobState) *instance {
	if n := len(js.retry); n > 0 {
		inst := js.retry[0]
		js.retry = js.retry[1:]
		return inst
	}
	for js.next < js.job.Repeat {
		i := js.next
		js.next++
		name := js.job.InstanceName(i)
		if js.skip[name] {
			r.done = append(r.done, outcome{job: js, index: int32(i), node: -1, core: -1, state: stateIndex(results.StateSkipped)})
			r.pending--
			r.counts.Skipped++
			js.ok++
			continue
		}
		p := r.opts.Prior[name]
		// prepared: the prior attempt's output is in place, so the next
		// attempt moves it aside.
		return &instance{job: js, index: i, name: name, attempt: p, prior: p, prepared: p}
	}
	return nil
}

// dispatch places every pending instance that fits now, in job order,
// letting smaller instances fill cores a larger one cannot use yet.
func (r *runner) dispatch() {
	for _, js := range r.jobs {
		if r.runFull() {
			break
		}
		for js.hasPending() && r.mayLaunch(js) {
			ns, why := r.place(js)
			if why != "" {
				// It can never run: finish every pending instance of the job.
				for len(js.retry) > 0 {
					r.finish(r.take(js), results.Event{Event: results.Failed, Error: why}, results.StateFailed)
				}
				if js.next < js.job.Repeat {
					r.endUntried(js, results.StateFailed, why)
				}
				break
			}
			if ns == nil {
				break
			}
			g, ok := r.pool.Take(ns.name, needOf(js.job))
			if !ok {
				break // taken by another user of the pool meanwhile
			}
			inst := r.take(js)
			if inst == nil {
				r.pool.Release(ns.name, g)
				break
			}
			r.launch(inst, ns, g, nil)
		}
	}
	r.prefetch()
}

// successorJob finds the first job with pending instances that could run
// on what pred holds: the same cores, GPUs, memory and resources.
func (r *runner) successorJob(pred *instance) *jobState {
	need := needOf(pred.job.job)
	for _, js := range r.jobs {
		j := js.job
		if js.hasPending() && sameNeed(needOf(j), need) && (j.Node == "" || j.Node == pred.node.name) &&
			(len(js.retry) == 0 || js.retry[0].lostOn != pred.node) && r.mayFollow(js, pred) {
			return js
		}
	}
	return nil
}

// place picks the node with the most free cores that can take one
// instance of js now. It returns a reason when no node ever could.
func (r *runner) place(js *jobState) (*nodeState, string) {
	need := js.job.Cores
	want := needOf(js.job)
	var best, lostOn *nodeState
	bestFree := 0
	if len(js.retry) > 0 {
		lostOn = js.retry[0].lostOn
	}
	possible := false
	for _, ns := range r.nodes {
		if ns.gone || (js.job.Node != "" && ns.n.Name() != js.job.Node) || len(ns.res.Cores) < need || lacks(ns.res, js.job) != "" {
			continue
		}
		possible = true
		free := r.pool.Free(ns.name)
		if free < need || !r.pool.Fits(ns.name, want) {
			continue
		}
		if best == nil || (best == lostOn && ns != lostOn) || (ns != lostOn && free > bestFree) {
			best, bestFree = ns, free
		}
	}
	if !possible {
		if !r.settled {
			return nil, "" // a node that can take it may still come up
		}
		return nil, r.unplaceable(js)
	}
	return best, ""
}

func (r *runner) unplaceable(js *jobState) string {
	if js.job.Node != "" {
		ns := r.byName[js.job.Node]
		switch {
		case ns == nil:
			return fmt.Sprintf("no node named %q", js.job.Node)
		case ns.gone:
			return fmt.Sprintf("node %s was lost", js.job.Node)
		case len(ns.res.Cores) < js.job.Cores:
			return fmt.Sprintf("needs %d cores; node %s has %d", js.job.Cores, js.job.Node, len(ns.res.Cores))
		default:
			return lacks(ns.res, js.job)
		}
	}
	most := 0
	var up []topology.Resources
	for _, ns := range r.nodes {
		if !ns.gone {
			most = max(most, len(ns.res.Cores))
			up = append(up, ns.res)
		}
	}
	if most == 0 {
		return "every node was lost"
	}
	if most >= js.job.Cores {
		if why := largestLacks(up, js.job); why != "" {
			return why
		}
		return "no node has all it needs at once"
	}
	return fmt.Sprintf("needs %d cores; the largest node has %d", js.job.Cores, most)
}

// launch starts the instance on the cores reserved for it, or behind
// pred on pred's cores, without blocking the loop.
func (r *runner) launch(inst *instance, ns *nodeState, g cores.Grant, pred *instance) {
	inst.grant, inst.hw, inst.gpus, inst.usedCores = g, g.HW, g.GPUs, g.Cores
	inst.node = ns
	if pred != nil {
		inst.prev, pred.next = pred, inst
		inst.hw, inst.gpus, inst.usedCores = pred.hw, pred.gpus, pred.usedCores
		if queuedBehind(inst) < r.depth(inst.job) {
			r.handoff = append(r.handoff, inst)
		}
	} else {
		// A successor may queue behind it even before its start is
		// confirmed: the node waits for a name it has not seen yet
		// (bounded by AfterTimeout), so the two cannot race.
		r.handoff = append(r.handoff, inst)
	}
	inst.attempt++
	inst.phase = starting
	inst.proc = inst.name
	if inst.attempt > 1 {
		inst.proc += "~" + strconv.Itoa(inst.attempt)
	}
	ns.running[inst.proc] = inst
	r.pending--
	r.live++
	r.takeSlots(inst, pred)
	spec := r.spec(inst)
	if pred != nil {
		spec.After = pred.proc
		spec.AfterTimeout = r.giveUp()
	}
	// An attempt whose start was withdrawn is launched again: its output
	// dir is ready, and moving it aside again would bury the previous
	// attempt's output under an empty one.
	keepPrev := inst.attempt > 1 && inst.prepared < inst.attempt
	inst.prepared = inst.attempt
	// A first attempt's results dir is a plain mkdir: a node on this
	// file system makes it, so the queue does no file work per instance.
	spec.MakeOutputDir = inst.attempt == 1 && node.SharesFS(ns.n)
	r.bg.Go(func() {
		var st node.Started
		var err error
		if !spec.MakeOutputDir {
			err = prepare(r.opts.OutDir, keepPrev, inst.attempt, spec)
		}
		if err == nil {
			st, err = ns.n.Start(r.bgCtx, spec)
		}
		r.starts <- startResult{inst: inst, st: st, err: err}
	})
}

// prepare makes the instance's results dir; a retry first moves the
// previous attempt's output aside so nothing is lost. Below out (--out)
// no symlink is followed: none may lead drover's writes elsewhere.
func prepare(out string, keepPrev bool, attempt int, spec node.ProcessSpec) error {
	dir := spec.OutputDir
	inst, ok := nofollow.Within(out, dir)
	if !ok {
		return fmt.Errorf("results dir %s is not inside %s", dir, out)
	}
	if keepPrev {
		prevRel := filepath.Join(inst, fmt.Sprintf("attempt-%d", attempt-1))
		prev := filepath.Join(out, prevRel)
		if err := nofollow.MkdirAll(out, prevRel, 0o755); err != nil {
			return fmt.Errorf("keep attempt %d output: %w", attempt-1, err)
		}
		for _, f := range []string{"stdout", "stderr"} {
			if err := os.Rename(filepath.Join(dir, f), filepath.Join(prev, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("keep attempt %d output: %w", attempt-1, err)
			}
		}
		return nil
	}
	if err := nofollow.MkdirAll(out, inst, 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	return nil
}

func (r *runner) spec(inst *instance) node.ProcessSpec {
	j := inst.job.job
	env := make(map[string]string, len(j.Env)+5+len(j.Matrix))
	for k, v := range j.Env {
		env[k] = v
	}
	env["DROVER_JOB"] = j.Name
	env["DROVER_INSTANCE"] = inst.name
	env["DROVER_INDEX"] = strconv.Itoa(inst.index)
	if _, set := env["OMP_NUM_THREADS"]; !set {
		env["OMP_NUM_THREADS"] = strconv.Itoa(j.Cores)
	}
	maps.Copy(env, topology.GPUEnv(inst.gpus))
	in := j.Instance(inst.index)
	for _, p := range in.Params {
		env[p.EnvName()] = p.Value
	}
	out := filepath.Join(r.opts.OutDir, inst.name)
	spec := node.ProcessSpec{
		Name:      inst.proc,
		Args:      in.Args,
		Env:       env,
		Dir:       j.Workdir,
		Stdout:    filepath.Join(out, "stdout"),
		Stderr:    filepath.Join(out, "stderr"),
		Outputs:   j.Outputs,
		OutputDir: out,
		HWThreads: slices.Clone(inst.hw),
		PortNames: j.Ports,
		AutoPurge: true,
		NoStdin:   !r.opts.Stdin,
		// The job's timeout bounds the staging as well as the run.
		StageTimeout: j.Timeout,
		MemoryMax:    j.Memory,
	}
	for _, f := range j.Files {
		spec.Files = append(spec.Files, node.StageFile{Src: filepath.Join(r.opts.BaseDir, f), Dst: f})
	}
	if p := inst.job.prog; p != nil {
		spec.UseProgram(len(spec.Args)-len(j.Command), *p, node.SharesFS(inst.node.n))
	}
	return spec
}

func (r *runner) started(res startResult) {
	inst := res.inst
	if errors.Is(res.err, errdefs.ErrAfterTimeout) {
		// Its predecessor ran long: place it anew; this was no attempt.
		r.release(inst)
		inst.attempt--
		inst.phase = pending
		inst.job.retry = append([]*instance{inst}, inst.job.retry...)
		r.pending++
		return
	}
	if errors.Is(res.err, errdefs.ErrNodeLost) && !inst.node.gone {
		// The node is lost, and its start failed before its Ready was
		// seen closed: take what it delivered, then lose the rest.
		r.signalled(signal{node: inst.node.idx, gone: true})
	}
	if res.err != nil && inst.node.gone {
		// Most likely queued in the lost node's window, never run: placed
		// again once, not charged to its retries (attemptOver).
		inst.replaced = true
		r.lose(inst)
		return
	}
	if res.err != nil {
		r.release(inst)
		state := results.StateFailed
		if r.stopped != "" {
			state = results.StateCancelled
		}
		r.attemptOver(inst, results.Event{Event: results.Failed, Node: inst.node.n.Name(), Error: res.err.Error()}, state)
		return
	}
	inst.phase = running
	inst.start = time.Now()
	r.emit(results.Event{Event: results.Started, Job: inst.name, Node: inst.node.n.Name(), Attempt: inst.attempt,
		PID: res.st.PID, HWThreads: topology.FormatCPUList(inst.hw), GPUs: topology.GPUEnv(inst.gpus)["DROVER_GPUS"]})
	if inst.node.gone && inst.early == nil {
		r.lose(inst) // it started, but its node was lost meanwhile
		return
	}
	if r.killing {
		// It started after the run was stopped: stop it too.
		n, name, grace := inst.node.n, inst.proc, r.stopGrace
		r.bg.Go(func() {
			if err := n.Stop(r.bgCtx, name, grace); err != nil {
				r.log.Debug("stop a late start", "node", n.Name(), "name", name, "err", err)
			}
		})
	}
	if t := inst.job.job.Timeout; t > 0 {
		at := timeoutAt{inst, inst.attempt}
		inst.timer = time.AfterFunc(t, func() {
			select {
			case r.timeouts <- at:
			case <-r.quit:
			}
		})
	}
	if e := inst.early; e != nil {
		inst.early = nil
		r.exited(inst, *e)
	}
}

// absorb takes the starts and exits that are already waiting, a bounded
// number, so that one turn of the loop writes their events together and
// tops the windows up in one go.
func (r *runner) absorb() {
	for range 256 {
		select {
		case res := <-r.starts:
			r.started(res)
		case sig := <-r.ready:
			r.signalled(sig)
		default:
			return
		}
	}
}

func (r *runner) signalled(sig signal) {
	r.drain(r.nodes[sig.node])
	if sig.gone {
		r.nodeGone(r.nodes[sig.node])
	}
}

// drain takes a node's finished exits.
func (r *runner) drain(ns *nodeState) {
	for _, e := range ns.n.Finished() {
		inst := ns.running[e.Name]
		if inst == nil {
			r.log.Warn("exit of an unknown process", "node", ns.n.Name(), "name", e.Name)
			continue
		}
		if inst.phase == starting {
			e := e
			inst.early = &e
			continue
		}
		r.exited(inst, e)
	}
}

func (r *runner) exited(inst *instance, e node.Exit) {
	ns := inst.node
	if inst.timer != nil {
		inst.timer.Stop()
	}
	ev := results.Event{Event: results.Finished, Node: ns.n.Name(), Error: e.Err}
	if e.Signal != 0 {
		ev.Signal = node.SignalName(e.Signal)
	} else {
		code := e.Code
		ev.ExitCode = &code
	}
	if inst.timedOut {
		ev.Error = fmt.Sprintf("timed out after %s", inst.job.job.Timeout)
	}
	if !e.Start.IsZero() {
		// The node's own clock, when the process really ran: the queue
		// hears of starts and exits a little later, and not in order.
		inst.start, inst.end = e.Start, e.End
		inst.job.ran++
		inst.job.ranFor += e.End.Sub(e.Start)
		r.proved(inst.job)
	}
	r.release(inst)
	state := results.StateSucceeded
	switch {
	case !e.Success() && r.killing && !inst.timedOut:
		state = results.StateCancelled // stopped by Ctrl-C, SIGTERM or --halt now
	case !e.Success() || inst.timedOut:
		state = results.StateFailed
	}
	r.attemptOver(inst, ev, state)
}

// release gives the instance's cores back, or hands them to the
// successor waiting for them.
func (r *runner) release(inst *instance) {
	ns := inst.node
	r.freeSlots(inst)
	prev, next := inst.prev, inst.next
	inst.prev, inst.next = nil, nil
	switch {
	case prev != nil:
		// It never got its predecessor's cores: nothing to give back.
		// The one behind it now waits for prev, as the node's does.
		prev.next = next
		if next != nil {
			next.prev = prev
		} else {
			r.handoff = append(r.handoff, prev)
		}
	case next != nil:
		next.grant, next.prev = inst.grant, nil
		r.topUp(next)
	default:
		r.pool.Release(ns.name, inst.grant)
	}
	inst.grant = cores.Grant{}
	delete(ns.running, inst.proc)
	r.live--
}

// attemptOver ends an attempt: a failure with retries left goes back to
// the queue, anything else is final.
func (r *runner) attemptOver(inst *instance, ev results.Event, state string) {
	charged := inst.attempt - inst.prior
	if inst.replaced {
		charged--
	}
	if state != results.StateSucceeded && charged <= inst.job.retries && r.stopped == "" {
		ev.Event, ev.Job, ev.Attempt, ev.State = results.AttemptFailed, inst.name, inst.attempt, state
		r.emit(ev)
		inst.phase = pending
		inst.timedOut = false
		inst.end = time.Time{}
		inst.job.retry = append(inst.job.retry, inst)
		r.pending++
		return
	}
	r.finish(inst, ev, state)
}

func (r *runner) finish(inst *instance, ev results.Event, state string) {
	if inst.phase == pending {
		r.pending-- // a launched attempt already left the pending count
	}
	inst.phase = final
	ev.Job, ev.Attempt, ev.State = inst.name, inst.attempt, state
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	r.emit(ev)
	o := outcome{job: inst.job, index: int32(inst.index), node: -1, core: -1, state: stateIndex(state), attempts: uint16(inst.attempt)}
	if sig, ok := node.ParseSignal(ev.Signal); ok && ev.Signal != "" {
		o.signal = uint8(sig)
	}
	if ev.ExitCode != nil {
		o.exitCode, o.flags = int32(*ev.ExitCode), o.flags|hasCode
	}
	var x outcomeExtra
	if inst.node != nil {
		o.node = int32(inst.node.idx)
		if len(inst.usedCores) == 1 {
			o.core = int32(inst.usedCores[0])
		} else {
			x.cores = inst.usedCores
		}
	}
	if !inst.start.IsZero() {
		end := inst.end
		if end.IsZero() {
			end = ev.Time
		}
		o.start, o.end = inst.start.UnixNano(), end.UnixNano()
	}
	x.err = ev.Error
	if x.err != "" || x.cores != nil {
		r.extras[len(r.done)] = x
	}
	r.done = append(r.done, o)
	if state == results.StateFailed || state == results.StateLost {
		res := r.result(len(r.done) - 1)
		// An outcome of the user's program, not a warning of drover's: the
		// summary and the progress line tell it at the default level.
		r.log.Info(inst.name+" "+res.Outcome(), "node", res.Node, "attempts", inst.attempt)
	}
	switch state {
	case results.StateSucceeded:
		r.counts.Succeeded++
		inst.job.ok++
	case results.StateLost:
		r.counts.Lost++
	case results.StateCancelled:
		r.counts.Cancelled++
	default:
		r.counts.Failed++
	}
	if state == results.StateFailed || state == results.StateLost {
		r.checkHalt()
	}
	if state != results.StateSucceeded {
		r.dependencyFailed(inst.job, inst.name, state, endHow(ev))
	}
}

// checkHalt applies the halt policy after a failure.
func (r *runner) checkHalt() {
	h := r.opts.Halt
	failed := r.counts.Failed + r.counts.Lost
	if r.stopped != "" || !h.reached(failed, r.counts.Done()-r.counts.Skipped) {
		return
	}
	r.stopped = fmt.Sprintf("halt %s: %d instances failed", h, failed)
	r.log.Info("halting", "policy", h.String(), "failed", failed)
	if h.Mode == HaltNow {
		r.stop(r.opts.Grace)
	}
}

func (r *runner) timeout(t timeoutAt) {
	inst := t.inst
	if inst.phase != running || inst.attempt != t.attempt {
		return
	}
	inst.timedOut = true
	n, name, grace := inst.node.n, inst.proc, r.opts.Grace
	r.bg.Go(func() {
		if err := n.Stop(r.bgCtx, name, grace); err != nil && r.bgCtx.Err() == nil {
			r.log.Warn("stop after timeout", "node", n.Name(), "name", name, "err", err)
		}
	})
}

// nodeGone makes everything still on a lost node `lost` (or retried).
func (r *runner) nodeGone(ns *nodeState) {
	if ns.gone {
		return
	}
	ns.gone = true
	if r.ownPool {
		r.pool.RemoveNode(ns.name)
	}
	ev := results.Event{Event: results.NodeLost, Node: ns.n.Name()}
	if why := ns.n.Health().Err; why != nil {
		ev.Error = why.Error() // say why: silence, or the agent's end
	}
	r.emit(ev)
	for _, inst := range ns.running {
		if inst.phase == starting {
			continue // its start will fail and be handled then
		}
		r.lose(inst)
	}
}

func (r *runner) lose(inst *instance) {
	if inst.timer != nil {
		inst.timer.Stop()
	}
	r.release(inst)
	inst.lostOn = inst.node
	r.attemptOver(inst, results.Event{Event: results.Lost, Node: inst.node.n.Name(), Error: "node lost"}, results.StateLost)
}

func (r *runner) emit(e results.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	r.evbuf = append(r.evbuf, e)
}

// flush writes the events gathered in one turn of the loop with one write.
func (r *runner) flush() {
	if len(r.evbuf) == 0 {
		return
	}
	if err := r.events.Append(r.evbuf...); err != nil && !r.eventsFailed {
		// Said once here; Run returns it at the end.
		r.eventsFailed = true
		r.log.Error("events log", "err", err)
	}
	if r.opts.OnEvent != nil {
		for _, e := range r.evbuf {
			r.opts.OnEvent(e)
		}
	}
	r.evbuf = r.evbuf[:0]
}

func (r *runner) progress() {
	if r.opts.Progress == nil {
		return
	}
	c := r.counts
	c.Running = r.live
	r.opts.Progress(c)
}

// summary counts the outcomes and lists those that did not succeed.
func (r *runner) summary() *results.Summary {
	c := r.counts
	s := &results.Summary{Start: c.Start, End: time.Now(), StoppedBecause: r.stopped,
		Total:     c.Succeeded + c.Failed + c.Lost + c.Cancelled + c.Skipped,
		Succeeded: c.Succeeded, Failed: c.Failed, Lost: c.Lost, Cancelled: c.Cancelled, Skipped: c.Skipped}
	for _, i := range r.inOrder() {
		if st := outcomeStates[r.done[i].state]; st != results.StateSucceeded && st != results.StateSkipped {
			s.Instances = append(s.Instances, r.result(i))
		}
	}
	s.Untried = func(yield func(results.InstanceResult) bool) {
		for _, js := range r.jobs {
			if js.never == nil {
				continue
			}
			for i := js.never.from; i < js.job.Repeat; i++ {
				// Those --resume skipped succeeded before; a dependency's
				// failure skips with a reason.
				if in := js.neverResult(i); (in.State != results.StateSkipped || in.Error != "") && !yield(in) {
					return
				}
			}
		}
	}
	return s
}

// inOrder lists the outcomes' positions in job order, then index order.
func (r *runner) inOrder() []int {
	order := make([]int, len(r.done))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		oa, ob := &r.done[a], &r.done[b]
		if oa.job != ob.job {
			return oa.job.order - ob.job.order
		}
		return int(oa.index - ob.index)
	})
	return order
}

// all yields every instance's result, in job order, for summary.json:
// those that were tried (or skipped), then those never tried, which come
// last in their job.
func (r *runner) all(yield func(results.InstanceResult) bool) {
	order := r.inOrder()
	k := 0
	for _, js := range r.jobs {
		for ; k < len(order) && r.done[order[k]].job == js; k++ {
			if !yield(r.result(order[k])) {
				return
			}
		}
		if js.never == nil {
			continue
		}
		for i := js.never.from; i < js.job.Repeat; i++ {
			if !yield(js.neverResult(i)) {
				return
			}
		}
	}
}
