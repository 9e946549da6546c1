package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

// lineNode is a node that records how deep starts queue on it: a start is
// waiting while its Start call has not returned, and its depth is the
// number of waiting starts in its After chain, itself included.
type lineNode struct {
	node.Node
	mu      sync.Mutex
	after   map[string]string // waiting start -> its After
	deepest int
	deep    chan struct{} // closed once a start queued two deep
}

func newLines(n node.Node) *lineNode {
	return &lineNode{Node: n, after: map[string]string{}, deep: make(chan struct{})}
}

func (l *lineNode) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	l.mu.Lock()
	if spec.After != "" {
		l.after[spec.Name] = spec.After
		d := 1
		for p, ok := l.after[spec.After]; ok; p, ok = l.after[p] {
			d++
		}
		if d > l.deepest {
			if d >= 2 && l.deepest < 2 {
				close(l.deep)
			}
			l.deepest = d
		}
	}
	l.mu.Unlock()
	st, err := l.Node.Start(ctx, spec)
	l.mu.Lock()
	delete(l.after, spec.Name)
	l.mu.Unlock()
	return st, err
}

func (l *lineNode) depth() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deepest
}

// waitDeep waits (bounded) until a start has queued two deep on l.
func (l *lineNode) waitDeep() error {
	select {
	case <-l.deep:
		return nil
	case <-time.After(backstop):
		return fmt.Errorf("no start queued two deep on %s", l.Name())
	}
}

// TestWindowQueuesSeveralDeep: once a job's instances have proved short,
// the node holds several queued behind each running one, and each
// instance still runs once, on cores nobody else used at the time.
func TestWindowQueuesSeveralDeep(t *testing.T) {
	res := detect(t)
	l := newLines(newAgent(t, "n1"))
	jobs := []*jobfile.Job{job(t, "q", func(j *jobfile.Job) { j.Repeat = 40 * len(res.Cores) }, "out=i{index}", "err=e{index}")}
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{l}, Window: time.Hour})
	if o.sum.Succeeded != 40*len(res.Cores) {
		t.Fatalf("summary %+v", *o.sum)
	}
	if d := l.depth(); d < 2 {
		t.Errorf("starts queued at most %d deep, want several", d)
	}
	for _, in := range o.disk.Instances {
		if in.Attempts != 1 {
			t.Errorf("%s: %d attempts", in.Name, in.Attempts)
		}
		// The node made the results dir and opened a queued start's
		// files ahead: each holds its own instance's output, whole.
		idx := strings.TrimPrefix(in.Name, "q.")
		if got := o.file(t, in.Name, "stdout"); got != "i"+idx+"\n" {
			t.Errorf("%s: stdout %q", in.Name, got)
		}
		if got := o.file(t, in.Name, "stderr"); got != "e"+idx+"\n" {
			t.Errorf("%s: stderr %q", in.Name, got)
		}
	}
	o.noChildLeft(t)
}

// TestHaltWithdrawsTheWindows: when the run halts, what is queued on the
// nodes is withdrawn and never starts, even as the instances ahead of it
// are stopped and their cores free.
func TestHaltWithdrawsTheWindows(t *testing.T) {
	res := detect(t)
	if len(res.Cores) < 2 {
		t.Skip("needs two cores")
	}
	dir := t.TempDir()
	n := len(res.Cores)
	early := 4 * n // the first instances end at once, so the job proves short
	for i := range early {
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)+".go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	failGo := filepath.Join(dir, "fail.go")
	fail := job(t, "fail", nil, "waitfile="+failGo, "exit=1")
	w := job(t, "w", func(j *jobfile.Job) { j.Repeat = 40 * n }, "waitfile="+filepath.Join(dir, "{index}.go"))
	l := newLines(newAgent(t, "n1"))
	go func() {
		if err := l.waitDeep(); err != nil {
			t.Error(err)
		}
		os.WriteFile(failGo, nil, 0o644) // the failure halts the run
	}()
	o := run(t, context.Background(), []*jobfile.Job{fail, w}, queue.Options{Nodes: []node.Node{l}, Window: time.Hour,
		Halt: queue.Halt{Mode: queue.HaltNow, Fails: 1}})
	if !strings.HasPrefix(o.sum.StoppedBecause, "halt now") {
		t.Fatalf("stopped because %q (summary %+v)", o.sum.StoppedBecause, *o.sum)
	}
	// Besides those that ran to the end, only those running at the halt
	// started: one per core that fail did not hold. Without the
	// withdrawal, each stopped one's successor would start in turn.
	stopped := 0
	for i := range w.Repeat {
		name := w.InstanceName(i)
		if len(o.of(name, results.Started)) > 0 && o.instance(t, name).State != results.StateSucceeded {
			stopped++
		}
	}
	t.Logf("lines went %d deep; %d instances started and were stopped", l.depth(), stopped)
	if stopped > n-1 {
		t.Errorf("%d instances started and were stopped; at most %d were running at the halt", stopped, n-1)
	}
	for _, in := range o.disk.Instances {
		if in.Name != "fail" && in.State != results.StateSucceeded && in.State != results.StateCancelled {
			t.Errorf("%s: %s", in.Name, in.State)
		}
	}
	o.noChildLeft(t)
}

// TestLostWindowPlacedAgainOnce: the instances queued in a lost node's
// window (starts not confirmed) never ran there: each is placed again
// once, on another node, and that does not count against its retries
// (none here); those that were running there are lost.
func TestLostWindowPlacedAgainOnce(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	dir := t.TempDir()
	early := 4 * n
	for i := range early {
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)+".go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The first ones end at once; the rest wait for their own file,
	// written once n1 is lost.
	w := job(t, "w", func(j *jobfile.Job) { j.Repeat = 12 * n },
		"waitfile="+filepath.Join(dir, "{index}.go"))
	f := newFake(t, newAgent(t, "n1"))
	l1 := newLines(f)
	a2 := newAgent(t, "n2")
	go func() {
		if err := l1.waitDeep(); err != nil {
			t.Error(err) // and let the run end
		}
		f.lose()
		// Everything left may end now.
		for i := early; i < w.Repeat; i++ {
			os.WriteFile(filepath.Join(dir, strconv.Itoa(i)+".go"), nil, 0o644)
		}
	}()
	o := run(t, context.Background(), []*jobfile.Job{w}, queue.Options{Nodes: []node.Node{l1, a2}, Window: time.Hour})
	replaced := 0
	for _, in := range o.disk.Instances {
		st := o.of(in.Name, results.Started)
		af := o.of(in.Name, results.AttemptFailed)
		switch in.State {
		case results.StateSucceeded:
			if len(af) == 1 {
				// Its start on n1 was not confirmed when n1 was lost.
				replaced++
				if af[0].Node != "n1" || af[0].State != results.StateLost || len(st) != 1 || st[0].Node != "n2" {
					t.Errorf("%s: attempt-failed %+v, started %+v", in.Name, af[0], st)
				}
			} else if len(af) > 1 {
				t.Errorf("%s: placed again %d times", in.Name, len(af))
			}
		case results.StateLost:
			// Running on n1 when it was lost.
			if len(st) != 1 || st[0].Node != "n1" || len(af) != 0 {
				t.Errorf("%s lost, but started %+v, attempt-failed %+v", in.Name, st, af)
			}
		default:
			t.Errorf("%s: %s", in.Name, in.State)
		}
	}
	if replaced == 0 {
		t.Errorf("no queued instance was placed again (n1's lines went %d deep)", l1.depth())
	}
	if err := f.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	o.noChildLeft(t)
}
