package cluster

// The test binary is also the child program of these tests: with
// DROVER_TEST_HELPER=1 in its environment, TestMain runs helperMain on its
// arguments instead of the tests. The supervisor reaps every child of the
// test process while an agent is open, so no test here starts a process
// any other way than through an agent.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
	"github.com/drover-hpc/drover/internal/topology"
)

const (
	helperVar = "DROVER_TEST_HELPER"
	parentVar = "DROVER_TEST_PARENT" // the test process: helpers end when it is gone
)

// backstop bounds every wait; tests assert outcomes, not durations.
const backstop = 60 * time.Second

var helperExe string

func TestMain(m *testing.M) {
	if os.Getenv(helperVar) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	exe, err := filepath.Abs(os.Args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	helperExe = exe
	// Agents pass this environment on to their children.
	os.Setenv(helperVar, "1")
	os.Setenv(parentVar, strconv.Itoa(os.Getpid()))
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	goleak.VerifyTestMain(m)
}

// helperMain runs its steps in order: "out=TEXT" and "err=TEXT" print a
// line, "env=KEY" prints KEY=value or "KEY unset", "cpus" prints the
// affinity, "sleep=D" sleeps, "stdin" echoes stdin lines as "got LINE"
// until EOF or "quit", "ignoreterm" ignores SIGTERM, "exit=N" exits.
func helperMain(args []string) int {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for _, step := range args {
		verb, arg, _ := strings.Cut(step, "=")
		switch verb {
		case "out":
			fmt.Fprintln(out, arg)
			out.Flush()
		case "err":
			fmt.Fprintln(os.Stderr, arg)
		case "env":
			if v, ok := os.LookupEnv(arg); ok {
				fmt.Fprintf(out, "%s=%s\n", arg, v)
			} else {
				fmt.Fprintf(out, "%s unset\n", arg)
			}
		case "cpus":
			data, err := os.ReadFile("/proc/self/status")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 100
			}
			for _, l := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
					fmt.Fprintf(out, "cpus=%s\n", strings.TrimSpace(v))
				}
			}
		case "sleep":
			d, err := time.ParseDuration(arg)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 100
			}
			out.Flush()
			parent, _ := strconv.Atoi(os.Getenv(parentVar))
			for end := time.Now().Add(d); time.Now().Before(end); {
				if parent > 0 && syscall.Kill(parent, 0) == syscall.ESRCH {
					return 99
				}
				time.Sleep(min(50*time.Millisecond, time.Until(end)))
			}
		case "stdin":
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() && sc.Text() != "quit" {
				fmt.Fprintf(out, "got %s\n", sc.Text())
				out.Flush()
			}
		case "ignoreterm":
			signal.Ignore(syscall.SIGTERM)
		case "exit":
			n, _ := strconv.Atoi(arg)
			return n
		default:
			fmt.Fprintf(os.Stderr, "helper: unknown step %q\n", step)
			return 100
		}
	}
	return 0
}

func helper(steps ...string) []string { return append([]string{helperExe}, steps...) }

func detect(t *testing.T) topology.Resources {
	t.Helper()
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cores) == 0 {
		t.Fatal("no cores detected")
	}
	return res
}

// newAgent starts an in-process agent named name for this machine; it is
// shut down when the test ends.
func newAgent(t *testing.T, name string) *agent.Agent {
	t.Helper()
	res := detect(t)
	res.Node = name
	a, err := agent.New(agent.Options{Name: name, Resources: res, Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(time.Second); err != nil {
			t.Errorf("shut down agent %s: %v", name, err)
		}
	})
	return a
}

// newCluster makes a Cluster over the given nodes, closed when the test
// ends (after the agents made later are shut down).
func newCluster(t *testing.T, nodes ...node.Node) *Cluster {
	t.Helper()
	c := New(Options{Home: t.TempDir(), Grace: time.Second})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), backstop)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	for _, n := range nodes {
		c.AddNode(n)
	}
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	t.Cleanup(cancel)
	return ctx
}

func start(t *testing.T, c *Cluster, nodeName, name string, args ...string) StartResult {
	t.Helper()
	r, err := c.Start(ctxT(t), StartRequest{Node: nodeName, Spec: node.ProcessSpec{Name: name, Args: args}})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return r
}

// exitsOf takes exits as an anonymous reader: each is handed out once.
func exitsOf(c *Cluster, ctx context.Context, wait time.Duration) ([]node.Exit, error) {
	rs, err := c.Finished(ctx, FinishedRequest{Wait: wait})
	out := make([]node.Exit, len(rs))
	for i, r := range rs {
		out[i] = r.Exit
	}
	return out, err
}

// anonReader is the Cluster's mailbox read by an anonymous reader, as a
// nodetest.Source. It has no Ready: its Finished waits a little itself.
type anonReader struct {
	t *testing.T
	c *Cluster
}

func (a anonReader) Finished() []node.Exit {
	exits, err := exitsOf(a.c, context.Background(), time.Second)
	if err != nil {
		a.t.Error(err)
	}
	return exits
}

func (anonReader) Ready() <-chan struct{} { return nil }

// clusterExits gathers the exits of processes started with Start.
func clusterExits(t *testing.T, c *Cluster) *nodetest.Exits {
	return nodetest.NewExits(t, anonReader{t, c})
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitOutput waits until the process's stdout contains text.
func waitOutput(t *testing.T, c *Cluster, name, text string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%q in the stdout of %s", text, name), func() bool {
		var b strings.Builder
		err := c.Logs(context.Background(), name, false, false, &b)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errdefs.ErrUnknownProcess) {
			t.Fatalf("logs %s: %v", name, err)
		}
		return strings.Contains(b.String(), text)
	})
}

// lossyNode is an agent whose loss can be simulated the way a remote node
// is lost: Ready closes and nothing more is reported, while the agent's
// processes carry on (until the agent is shut down at the end).
type lossyNode struct {
	*agent.Agent
	ready    chan struct{}
	lost     chan struct{}
	done     chan struct{}
	loseOnce sync.Once
	mu       sync.Mutex
}

func newLossy(t *testing.T, name string) *lossyNode {
	l := &lossyNode{Agent: newAgent(t, name), ready: make(chan struct{}, 1), lost: make(chan struct{}), done: make(chan struct{})}
	go l.forward()
	t.Cleanup(func() { l.lose(); <-l.done })
	return l
}

func (l *lossyNode) forward() {
	defer close(l.done)
	for {
		select {
		case _, ok := <-l.Agent.Ready():
			if !ok {
				l.lose()
				return
			}
			l.mu.Lock()
			select {
			case <-l.lost:
			case l.ready <- struct{}{}:
			default:
			}
			l.mu.Unlock()
		case <-l.lost:
			return
		}
	}
}

func (l *lossyNode) lose() {
	l.loseOnce.Do(func() {
		l.mu.Lock()
		close(l.lost)
		close(l.ready)
		l.mu.Unlock()
	})
}

func (l *lossyNode) Ready() <-chan struct{} { return l.ready }

func (l *lossyNode) Finished() []node.Exit {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.lost:
		return nil // a lost node reports nothing more
	default:
	}
	return l.Agent.Finished()
}
