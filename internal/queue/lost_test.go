package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

// fakeNode is a real agent whose Ready channel the test can close, as if
// the node had gone away, and whose Start the test can hold back.
//
// Like a remote node that is lost, a fakeNode fails the calls in flight
// (a start waiting for its predecessor) and new starts once lost.
type fakeNode struct {
	*agent.Agent
	ready    chan struct{}
	lost     chan struct{}
	lostCtx  context.Context
	setLost  context.CancelFunc
	loseOnce sync.Once
	done     chan struct{} // the forwarder has ended

	gate      chan struct{} // when non-nil, Start waits until it is closed
	entered   chan string   // a Start is waiting at the gate
	cancelled chan struct{} // CancelAll was called (capacity 1)
	// cancelHeld: CancelAll does its work, then hangs (an unanswered call)
	// until its context ends; cancelOver counts those that returned.
	cancelHeld bool
	cancelOver atomic.Int32

	stopGate    chan struct{} // when non-nil, Stop waits until it is closed
	stopEntered chan string
	stopDone    chan error // what the agent's Stop returned
}

func newFake(t *testing.T, a *agent.Agent) *fakeNode {
	f := &fakeNode{
		Agent:     a,
		ready:     make(chan struct{}, 1),
		lost:      make(chan struct{}),
		done:      make(chan struct{}),
		entered:   make(chan string, 16),
		cancelled: make(chan struct{}, 1),

		stopEntered: make(chan string, 16),
		stopDone:    make(chan error, 16),
	}
	f.lostCtx, f.setLost = context.WithCancel(context.Background())
	go f.forward()
	t.Cleanup(func() {
		f.lose()
		<-f.done
	})
	return f
}

func (f *fakeNode) forward() {
	defer close(f.done)
	defer close(f.ready)
	for {
		select {
		case _, ok := <-f.Agent.Ready():
			if !ok {
				return
			}
			select {
			case f.ready <- struct{}{}:
			default:
			}
		case <-f.lost:
			return
		}
	}
}

// lose makes the node look gone: its Ready channel is closed.
func (f *fakeNode) lose() {
	f.loseOnce.Do(func() {
		f.setLost()
		close(f.lost)
	})
}

func (f *fakeNode) Ready() <-chan struct{} { return f.ready }
func (f *fakeNode) Health() node.Health    { return node.Health{State: "up"} }

func (f *fakeNode) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	if f.gate != nil {
		f.entered <- spec.Name
		<-f.gate
	}
	if f.lostCtx.Err() != nil {
		return node.Started{}, fmt.Errorf("start %s on %s: %w", spec.Name, f.Name(), errdefs.ErrNodeLost)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(f.lostCtx, cancel)()
	st, err := f.Agent.Start(ctx, spec)
	if err != nil && f.lostCtx.Err() != nil {
		return st, fmt.Errorf("start %s on %s: %w", spec.Name, f.Name(), errdefs.ErrNodeLost)
	}
	return st, err
}

func (f *fakeNode) Stop(ctx context.Context, name string, grace time.Duration) error {
	if f.stopGate == nil {
		return f.Agent.Stop(ctx, name, grace)
	}
	f.stopEntered <- name
	<-f.stopGate
	err := f.Agent.Stop(ctx, name, grace)
	f.stopDone <- err
	return err
}

func (f *fakeNode) CancelAll(ctx context.Context, grace time.Duration) error {
	select {
	case f.cancelled <- struct{}{}:
	default:
	}
	err := f.Agent.CancelAll(ctx, grace)
	if f.cancelHeld {
		<-ctx.Done()
		f.cancelOver.Add(1)
	}
	return err
}

var _ node.Node = (*fakeNode)(nil)

// waitReady waits for n files ending in ".ready" in dir. It may run on
// any goroutine.
func waitReady(dir string, n int) error {
	deadline := time.Now().Add(backstop)
	for {
		entries, _ := os.ReadDir(dir)
		ready := 0
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".ready") {
				ready++
			}
		}
		if ready >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d instances ready", ready, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLostNodeLosesItsInstances(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	a := newAgent(t, "n1")
	f := newFake(t, a)
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "l", func(j *jobfile.Job) { j.Repeat = n + 2 },
			"touch="+filepath.Join(dir, "{index}.ready"), "sleep=2m"),
	}
	go func() {
		if err := waitReady(dir, n); err != nil {
			t.Error(err)
		}
		f.lose()
	}()
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{f}})
	s := o.sum
	// The two that do not fit are either queued behind a running one on
	// n1 (lost with it, never started) or not placed yet (failed: no node).
	if s.Lost < n || s.Lost+s.Failed != n+2 || s.Total != n+2 {
		t.Errorf("summary %+v", *s)
	}
	lostEvents := 0
	for _, e := range o.events {
		if e.Event == results.NodeLost {
			lostEvents++
			if e.Node != "n1" {
				t.Errorf("node-lost %+v", e)
			}
		}
	}
	if lostEvents != 1 {
		t.Errorf("%d node-lost events", lostEvents)
	}
	for _, in := range o.disk.Instances {
		e := o.only(t, in.Name)
		switch in.State {
		case results.StateLost:
			if e.Event != results.Lost || e.Node != "n1" || len(o.of(in.Name, results.Started)) > 1 {
				t.Errorf("%s: %+v", in.Name, e)
			}
		case results.StateFailed: // never started: no node left, or queued there
			if e.Event != results.Failed || e.Error == "" || len(o.of(in.Name, results.Started)) != 0 {
				t.Errorf("%s: %+v", in.Name, e)
			}
		default:
			t.Errorf("%s: state %s", in.Name, in.State)
		}
	}
	// The processes on the lost node are the node's business; closing it
	// ends them.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	o.noChildLeft(t)
}

func TestLostNodeInstancesAreRetriedElsewhere(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	a1 := newAgent(t, "n1")
	f := newFake(t, a1)
	a2 := newAgent(t, "n2")
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")
	// 2n instances fill both nodes; they end once the go file exists.
	jobs := []*jobfile.Job{
		job(t, "m", func(j *jobfile.Job) { j.Repeat = 2 * n; j.Retries = retries(1) },
			"touch="+filepath.Join(dir, "{index}.ready"), "waitfile="+goFile, "out=done"),
	}
	go func() {
		if err := waitReady(dir, 2*n); err != nil {
			t.Error(err)
		}
		f.lose()
		// Whatever the queue does next, n1's processes may now end; their
		// exits must not be reported a second time.
		os.WriteFile(goFile, nil, 0o644)
	}()
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{f, a2}})
	s := o.sum
	if s.Succeeded != 2*n || !s.OK() {
		t.Errorf("summary %+v", *s)
	}
	retried := 0
	for _, in := range o.disk.Instances {
		e := o.only(t, in.Name)
		if e.Event != results.Finished || e.Node != "n2" || in.Node != "n2" {
			t.Errorf("%s: %+v, want finished on n2", in.Name, e)
		}
		af := o.of(in.Name, results.AttemptFailed)
		switch len(af) {
		case 0:
			if in.Attempts != 1 {
				t.Errorf("%s: %d attempts", in.Name, in.Attempts)
			}
		case 1:
			retried++
			if af[0].Node != "n1" || af[0].Error == "" || in.Attempts != 2 {
				t.Errorf("%s: attempt-failed %+v, attempts %d", in.Name, af[0], in.Attempts)
			}
			st := o.of(in.Name, results.Started)
			if len(st) != 2 || st[0].Node != "n1" || st[1].Node != "n2" {
				t.Errorf("%s: started %+v", in.Name, st)
			}
		default:
			t.Errorf("%s: attempt-failed %+v", in.Name, af)
		}
	}
	if retried != n {
		t.Errorf("%d instances retried, want the %d that ran on n1", retried, n)
	}
	if err := a1.Close(); err != nil {
		t.Fatal(err)
	}
	o.noChildLeft(t)
}

// Closing a real agent mid-run: it stops its processes and reports their
// exits, then closes Ready. Every instance still ends exactly once.
func TestClosedAgentMidRun(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	a := newAgent(t, "n1")
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "c", func(j *jobfile.Job) { j.Repeat = n + 2 },
			"touch="+filepath.Join(dir, "{index}.ready"), "sleep=2m"),
	}
	closed := make(chan error, 1)
	go func() {
		if err := waitReady(dir, n); err != nil {
			t.Error(err)
		}
		closed <- a.Close()
	}()
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{a}})
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	s := o.sum
	if s.Succeeded != 0 || s.Total != n+2 || s.Failed+s.Lost != n+2 {
		t.Errorf("summary %+v", *s)
	}
	for _, in := range o.disk.Instances {
		e := o.only(t, in.Name)
		ran := len(o.of(in.Name, results.Started)) > 0
		switch {
		case e.Event == results.Finished && ran:
			if e.Signal == "" {
				t.Errorf("%s: %+v, want a signal", in.Name, e)
			}
		case e.Event == results.Lost:
			// Ran, or its start was on the way when the node went.
		case e.Event == results.Failed && !ran:
		default:
			t.Errorf("%s: %+v (started: %v)", in.Name, e, ran)
		}
	}
	o.noChildLeft(t)
}

// A start that completes after the run was cancelled must be stopped too.
func TestCancelWhileStarting(t *testing.T) {
	a := newAgent(t, "n1")
	f := newFake(t, a)
	f.gate = make(chan struct{})
	jobs := []*jobfile.Job{job(t, "late", nil, "sleep=2m")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	done := make(chan *results.Summary, 1)
	out := filepath.Join(t.TempDir(), "out")
	go func() {
		sum, _ := queue.Run(ctx, jobs, queue.Options{Nodes: []node.Node{f}, OutDir: out, Grace: time.Second})
		done <- sum
	}()
	<-f.entered   // the start is in flight
	cancel()      // the user interrupts
	<-f.cancelled // the queue has told the node to stop everything
	close(f.gate) // only now does the process start
	select {
	case sum := <-done:
		// Stopped with the run: cancelled, not failed.
		if sum.Cancelled != 1 || sum.Failed != 0 || len(sum.Instances) != 1 || sum.Instances[0].Signal == "" {
			t.Errorf("summary %+v", *sum)
		}
	case <-time.After(30 * time.Second):
		t.Error("Run did not return after cancel: the late-started instance was never stopped")
		a.Close()
		<-done
	}
}

// Run waits for the calls it sent off: a CancelAll that hangs ends with
// the run instead of outliving it.
func TestRunOwnsItsCalls(t *testing.T) {
	a := newAgent(t, "n1")
	f := newFake(t, a)
	f.cancelHeld = true
	dir := t.TempDir()
	jobs := []*jobfile.Job{job(t, "x", nil, "touch="+filepath.Join(dir, "x.ready"), "sleep=2m")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := waitReady(dir, 1); err != nil {
			t.Error(err)
		}
		cancel()
	}()
	o := run(t, ctx, jobs, queue.Options{Nodes: []node.Node{f}, Grace: time.Second})
	if got := f.cancelOver.Load(); got != 1 {
		t.Errorf("after Run returned, %d of 1 CancelAll calls had returned", got)
	}
	if o.sum.Cancelled != 1 {
		t.Errorf("summary %+v", *o.sum)
	}
}

// A run whose context is already cancelled starts nothing, and returns.
func TestRunWithCancelledContext(t *testing.T) {
	a := newAgent(t, "n1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	jobs := []*jobfile.Job{job(t, "x", func(j *jobfile.Job) { j.Repeat = 4 }, "sleep=2m")}
	out := filepath.Join(t.TempDir(), "out")
	done := make(chan *results.Summary, 1)
	go func() {
		sum, _ := queue.Run(ctx, jobs, queue.Options{Nodes: []node.Node{a}, OutDir: out, Grace: time.Second})
		done <- sum
	}()
	var sum *results.Summary
	select {
	case sum = <-done:
	case <-time.After(30 * time.Second):
		t.Error("Run did not return with a cancelled context")
		a.Close()
		sum = <-done
	}
	if sum.Cancelled != 4 {
		t.Errorf("with a cancelled context, %d of 4 instances were not cancelled: %+v", 4-sum.Cancelled, *sum)
	}
}

// The second Ctrl-C (Hard) after the cancellation kills what ignores SIGTERM
// instead of waiting out the grace.
func TestHardStopKills(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	a := newAgent(t, "n1")
	f := newFake(t, a)
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "stub", func(j *jobfile.Job) { j.Repeat = n + 1 },
			"ignoreterm", "touch="+filepath.Join(dir, "{index}.ready"), "sleep=2m"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hard := make(chan struct{})
	go func() {
		if err := waitReady(dir, n); err != nil {
			t.Error(err)
		}
		cancel()
		<-f.cancelled // the loop has seen the cancellation
		close(hard)
	}()
	o := run(t, ctx, jobs, queue.Options{Nodes: []node.Node{f}, Grace: time.Hour, Hard: hard})
	if s := o.sum; s.Failed != 0 || s.Cancelled != n+1 {
		t.Errorf("summary %+v", *s)
	}
	for _, in := range o.disk.Instances {
		if !in.Start.IsZero() && in.Signal != "SIGKILL" { // those that ran
			t.Errorf("%s: %+v, want SIGKILL", in.Name, in)
		}
	}
	o.noChildLeft(t)
}

// When the cancellation and the second Ctrl-C arrive together, the loop may
// see Hard first; it must not forget it.
func TestHardStopArrivingWithTheCancel(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	if n < 2 {
		t.Skip("needs two cores")
	}
	for iter := range 8 {
		a := newAgent(t, fmt.Sprintf("n%d", iter))
		dir := t.TempDir()
		goFile := filepath.Join(dir, "go")
		jobs := []*jobfile.Job{
			job(t, "stub", func(j *jobfile.Job) { j.Repeat = n - 1 },
				"ignoreterm", "touch="+filepath.Join(dir, "{index}.ready"), "sleep=2m"),
			job(t, "quick", nil, "touch="+filepath.Join(dir, "quick.ready"), "waitfile="+goFile),
		}
		ctx, cancel := context.WithCancel(context.Background())
		hard := make(chan struct{})
		// Progress runs on the queue's loop: blocking it there holds the
		// loop while both signals arrive.
		var armed sync.Once
		var arm = make(chan struct{})
		blocked, release := make(chan struct{}), make(chan struct{})
		progress := func(queue.Counts) {
			select {
			case <-arm:
				armed.Do(func() {
					close(blocked)
					<-release
				})
			default:
			}
		}
		done := make(chan *results.Summary, 1)
		go func() {
			sum, _ := queue.Run(ctx, jobs, queue.Options{Nodes: []node.Node{a}, OutDir: filepath.Join(dir, "out"),
				Grace: time.Hour, Hard: hard, Progress: progress})
			done <- sum
		}()
		if err := waitReady(dir, n); err != nil {
			t.Fatal(err)
		}
		close(arm)
		os.WriteFile(goFile, nil, 0o644) // quick exits: the loop wakes up and blocks
		<-blocked
		cancel()
		close(hard)
		close(release)
		select {
		case sum := <-done:
			for _, in := range sum.Instances {
				if strings.HasPrefix(in.Name, "stub") && in.Signal != "SIGKILL" {
					t.Errorf("iteration %d: %s: %+v", iter, in.Name, in)
				}
			}
		case <-time.After(20 * time.Second):
			t.Errorf("iteration %d: Hard was lost; the run waits out the grace", iter)
			a.Close()
			<-done
			cancel()
			return
		}
		cancel()
	}
}

// A timeout's Stop that reaches the node late must not stop the next
// attempt, which runs under the same name.
func TestLateTimeoutStopSparesTheRetry(t *testing.T) {
	a := newAgent(t, "n1")
	f := newFake(t, a)
	f.stopGate = make(chan struct{})
	wd := t.TempDir()
	dir := t.TempDir()
	go1, go2 := filepath.Join(dir, "go1"), filepath.Join(dir, "go2")
	// Attempt 1 waits for go1 and fails; attempt 2 says it is ready and
	// waits for go2, then succeeds.
	jobs := []*jobfile.Job{
		job(t, "t", func(j *jobfile.Job) { j.Workdir = wd; j.Retries = retries(1); j.Timeout = 500 * time.Millisecond },
			"waitfile="+go1, "marker=m=1", "touch="+filepath.Join(dir, "2.ready"), "waitfile="+go2),
	}
	go func() {
		<-f.stopEntered // the timeout fired for attempt 1
		os.WriteFile(go1, nil, 0o644)
		if err := waitReady(dir, 1); err != nil { // attempt 2 runs
			t.Error(err)
		}
		close(f.stopGate) // the late Stop reaches the node
		<-f.stopDone
		os.WriteFile(go2, nil, 0o644)
	}()
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{f}, Grace: time.Second})
	// Attempt 2 may itself time out on a slow machine, but it must not
	// have been stopped by attempt 1's timeout.
	in := o.instance(t, "t")
	if in.Attempts != 2 || (in.State != results.StateSucceeded && !strings.Contains(in.Error, "timed out")) {
		t.Errorf("second attempt: %+v", in)
	}
}
