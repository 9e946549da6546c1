package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
	"github.com/drover-hpc/drover/internal/pbconv"
)

// Short timeouts for tests; every wait below is for an event, with a
// generous backstop.
var quick = ServerOptions{NodeTimeout: 5 * time.Second, HeartbeatInterval: 50 * time.Millisecond}

func TestStartExitReportedOnce(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, quick)
	runAgent(t, "n1", m.addr, AgentOptions{Version: "test"})
	n := m.node(t)
	if n.Name() != "n1" || n.Version() != "test" || len(n.Resources().Cores) != 2 || n.Resources().MemoryBytes != 1<<30 {
		t.Fatalf("node %s %q resources %+v", n.Name(), n.Version(), n.Resources())
	}
	if s := n.State(); s != "up" {
		t.Fatalf("state %q, want up", s)
	}
	x := nodetest.NewExits(t, n)
	st, err := n.Start(ctx, helperSpec(t, "e3", "exit", "3"))
	if err != nil {
		t.Fatal(err)
	}
	if st.PID <= 0 {
		t.Fatalf("pid %d", st.PID)
	}
	e := x.One("e3")
	if e.Code != 3 || e.Signal != 0 || e.Node != "n1" || e.Start.IsZero() || e.End.Before(e.Start) {
		t.Fatalf("exit %+v", e)
	}
	ps, err := n.Poll(ctx, "e3")
	if err != nil || len(ps) != 1 || ps[0].State != node.Exited || ps[0].Exit.Code != 3 {
		t.Fatalf("poll: %+v, %v", ps, err)
	}
	if err := n.Purge(ctx, "e3"); err != nil {
		t.Fatal(err)
	}
	// The same name again: a new process, a new exit.
	if _, err := n.Start(ctx, helperSpec(t, "e3", "exit", "4")); err != nil {
		t.Fatal(err)
	}
	x.Forget("e3")
	if e := x.One("e3"); e.Code != 4 {
		t.Fatalf("second exit %+v", e)
	}
	// Heartbeats make a round trip.
	deadline := time.Now().Add(patience)
	for n.RTT() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no RTT measured")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEveryOperationOverTheWire(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, quick)
	runAgent(t, "n1", m.addr, AgentOptions{})
	n := m.node(t)
	x := nodetest.NewExits(t, n)

	// Start, Poll, typed errors.
	if _, err := n.Start(ctx, helperSpec(t, "s1", "sleep")); err != nil {
		t.Fatal(err)
	}
	ps, err := n.Poll(ctx, "s1")
	if err != nil || len(ps) != 1 || ps[0].State != node.Running {
		t.Fatalf("poll s1: %+v %v", ps, err)
	}
	_, err = n.Start(ctx, helperSpec(t, "s1", "sleep"))
	if !errors.Is(err, errdefs.ErrDuplicate) || !strings.Contains(err.Error(), "start s1 on n1") {
		t.Fatalf("duplicate start: %v", err)
	}
	if err := n.Purge(ctx, "s1"); !errors.Is(err, errdefs.ErrRunning) {
		t.Fatalf("purge running: %v", err)
	}
	if err := n.Stop(ctx, "nope", time.Second); !errors.Is(err, errdefs.ErrUnknownProcess) {
		t.Fatalf("stop unknown: %v", err)
	}
	if st, err := n.Poll(ctx, "nope"); err != nil || len(st) != 1 || st[0].State != node.Unknown ||
		!errors.Is(st[0].Err, errdefs.ErrUnknownProcess) || errors.Is(st[0].Err, errdefs.ErrRunning) {
		t.Fatalf("poll unknown: %+v, %v", st, err)
	}
	// The message is the agent's own.
	direct := newAgent(t, "n1")
	dst, _ := direct.Poll(ctx, "nope")
	if st, _ := n.Poll(ctx, "nope"); len(st) != 1 || len(dst) != 1 || st[0].Err == nil || dst[0].Err == nil || st[0].Err.Error() != dst[0].Err.Error() {
		t.Fatalf("message over the wire %+v, in process %+v", st, dst)
	}

	// Kill, then the errors of an exited process.
	if err := n.Kill(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if e := x.One("s1"); e.Signal != syscall.SIGKILL || e.Code != -1 {
		t.Fatalf("killed: %+v", e)
	}
	if err := n.Stop(ctx, "s1", 0); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Fatalf("stop exited: %v", err)
	}
	if err := n.Send(ctx, "s1", []byte("x")); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Fatalf("send to exited: %v", err)
	}
	if err := n.Purge(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if st, err := n.Poll(ctx, "s1"); err != nil || len(st) != 1 || !errors.Is(st[0].Err, errdefs.ErrUnknownProcess) {
		t.Fatalf("poll purged: %+v %v", st, err)
	}

	// Stop with a grace: SIGTERM does it.
	if _, err := n.Start(ctx, helperSpec(t, "s2", "sleep")); err != nil {
		t.Fatal(err)
	}
	if err := n.Stop(ctx, "s2", patience); err != nil {
		t.Fatal(err)
	}
	if e := x.One("s2"); e.Signal != syscall.SIGTERM {
		t.Fatalf("stopped: %+v", e)
	}

	// Send reaches stdin.
	if _, err := n.Start(ctx, helperSpec(t, "r1", "readline")); err != nil {
		t.Fatal(err)
	}
	if err := n.Send(ctx, "r1", []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if e := x.One("r1"); e.Code != 7 {
		t.Fatalf("readline: %+v", e)
	}

	// A Send that cannot finish ends with its caller's context; the agent
	// cancels its side.
	if _, err := n.Start(ctx, helperSpec(t, "deaf", "sleep")); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = n.Send(sctx, "deaf", bytes.Repeat([]byte("x"), MaxSendBytes)) // far more than a pipe holds
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked send: %v", err)
	}
	if err := n.Send(ctx, "deaf", make([]byte, MaxSendBytes+1)); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("too large a send: %v", err)
	}

	// CancelAll stops everything.
	if _, err := n.Start(ctx, helperSpec(t, "s3", "sleep")); err != nil {
		t.Fatal(err)
	}
	if err := n.CancelAll(ctx, patience); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"deaf", "s3"} {
		if e := x.One(name); e.Signal != syscall.SIGTERM {
			t.Fatalf("cancelled %s: %+v", name, e)
		}
	}
	all, err := n.Poll(ctx)
	if err != nil || len(all) != 4 { // r1, deaf, s2, s3
		t.Fatalf("poll all: %+v %v", all, err)
	}

	// A bad spec fails this start only.
	_, err = n.Start(ctx, node.ProcessSpec{Name: "bad", Args: []string{"/nonexistent/prog"}})
	if err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("bad start: %v", err)
	}

	// Environment.
	if err := n.SetEnv(ctx, "FOO", "bar"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := n.GetEnv(ctx, "FOO"); v != "bar" || !ok || err != nil {
		t.Fatalf("get FOO: %q %v %v", v, ok, err)
	}
	if v, ok, err := n.GetEnv(ctx, "NOPE"); v != "" || ok || err != nil {
		t.Fatalf("get NOPE: %q %v %v", v, ok, err)
	}
	if err := n.SetEnv(ctx, "A=B", "x"); err == nil || !strings.Contains(err.Error(), "invalid name") {
		t.Fatalf("set bad env: %v", err)
	}

	// Ports.
	p, err := n.BindPorts(ctx, false, 2)
	if err != nil || len(p) != 2 || p[0] == p[1] || p[0] <= 0 {
		t.Fatalf("bind: %v %v", p, err)
	}
	if err := n.ReleasePorts(ctx, false, p); err != nil {
		t.Fatal(err)
	}
	if err := n.ReleasePorts(ctx, false, p); err == nil {
		t.Fatal("releasing twice succeeded")
	}
	if _, err := n.BindPorts(ctx, true, 0); err == nil {
		t.Fatal("binding 0 ports succeeded")
	}
	st, err := n.Start(ctx, node.ProcessSpec{Name: "port", Args: []string{testExe(t), "exit", "0"}, PortNames: []string{"ctl"}})
	if err != nil || st.Ports["ctl"] <= 0 {
		t.Fatalf("start with a port: %+v %v", st, err)
	}
	x.One("port")

	// Log level.
	if err := n.SetLogLevel(ctx, "debug"); err != nil {
		t.Fatal(err)
	}
	if err := n.SetLogLevel(ctx, "loud"); err == nil {
		t.Fatal("bogus log level accepted")
	}

	// A context that is already done never reaches the agent.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := n.Start(done, helperSpec(t, "never", "exit", "0")); !errors.Is(err, context.Canceled) {
		t.Fatalf("start with a done context: %v", err)
	}
	if st, err := n.Poll(ctx, "never"); err != nil || len(st) != 1 || !errors.Is(st[0].Err, errdefs.ErrUnknownProcess) {
		t.Fatalf("never started: %+v %v", st, err)
	}
}

func TestManyConcurrentStarts(t *testing.T) {
	const count = 300
	ctx := ctxT(t)
	m := newManager(t, quick)
	ta := runAgent(t, "n1", m.addr, AgentOptions{})
	n := m.node(t)
	x := nodetest.NewExits(t, n)

	errs := make(chan error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			_, err := n.Start(ctx, helperSpec(t, fmt.Sprintf("p%03d", i), "exit", fmt.Sprint(i%5)))
			errs <- err
		})
	}
	x.WaitCount(count)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range count {
		name := fmt.Sprintf("p%03d", i)
		if e := x.Got()[name]; e.Code != i%5 {
			t.Errorf("%s: %+v", name, e)
		}
	}
	for name, c := range ta.startCounts() {
		if c != 1 {
			t.Errorf("%s started %d times", name, c)
		}
	}
	x.Take()
	if len(x.Got()) != count {
		t.Fatalf("%d exits, want %d", len(x.Got()), count)
	}
}

// The agent goes silent (its bytes stop flowing) for longer than
// NodeTimeout: the node is lost, calls fail, and when the agent comes back
// it is told to give up and stops its processes.
func TestNodeTimeoutThenGivenUp(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, ServerOptions{NodeTimeout: 500 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond})
	px := newProxy(t, m.addr)
	ta := runAgent(t, "n1", px.addr(), AgentOptions{MonitorTimeout: patience})
	n := m.node(t)
	x := nodetest.NewExits(t, n)
	if _, err := n.Start(ctx, helperSpec(t, "done", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	x.One("done")
	if _, err := n.Start(ctx, helperSpec(t, "sleeper", "sleep")); err != nil {
		t.Fatal(err)
	}

	px.freeze()
	pending := make(chan error, 1)
	go func() {
		_, err := n.Poll(ctx)
		pending <- err
	}()
	waitGone(t, n)
	if err := <-pending; !errors.Is(err, errdefs.ErrNodeLost) || !strings.Contains(err.Error(), "poll on n1") {
		t.Fatalf("pending call: %v", err)
	}
	if s := n.State(); s != "lost" {
		t.Fatalf("state %q", s)
	}
	if err := n.Kill(ctx, "sleeper"); !errors.Is(err, errdefs.ErrNodeLost) {
		t.Fatalf("call after loss: %v", err)
	}
	if f := n.Finished(); len(f) != 0 {
		t.Fatalf("finished after loss: %+v", f)
	}

	// The agent reconnects and is told to give up.
	px.thaw()
	px.cut()
	if err := ta.wait(t); !errors.Is(err, ErrGivenUp) {
		t.Fatalf("RunAgent: %v", err)
	}
	ps, err := ta.Agent.Poll(ctx, "sleeper")
	if err != nil || ps[0].State != node.Exited {
		t.Fatalf("sleeper after give-up: %+v %v", ps, err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close of a lost node: %v", err)
	}
}

// The stream breaks again and again while processes start and exit: every
// start runs once, every exit arrives once.
func TestReconnectLosesNothing(t *testing.T) {
	const count = 120
	ctx := ctxT(t)
	m := newManager(t, quick)
	px := newProxy(t, m.addr)
	ta := runAgent(t, "n1", px.addr(), AgentOptions{MonitorTimeout: patience})
	n := m.node(t)
	x := nodetest.NewExits(t, n)
	// Once a call was answered, the agent has its session. (An agent cut
	// off before its Welcome comes back as a new agent, and the node that
	// never got going is lost after NodeTimeout.)
	if _, err := n.Poll(ctx); err != nil {
		t.Fatal(err)
	}

	errs := make(chan error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			name := fmt.Sprintf("p%03d", i)
			_, err := n.Start(ctx, helperSpec(t, name, "sleepms", fmt.Sprint(10*(i%7))))
			errs <- err
		})
	}
	cuts := 0
	for cuts < 6 {
		if px.cut() > 0 {
			cuts++
		}
		// Also calls made while disconnected go through once it is back.
		if _, err := n.Poll(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(40 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	x.WaitCount(count)
	for name, c := range ta.startCounts() {
		if c != 1 {
			t.Errorf("%s started %d times", name, c)
		}
	}
	// Resumed, never lost: one OnNode only.
	select {
	case n2 := <-m.nodes:
		t.Fatalf("a second node %s appeared", n2.Name())
	default:
	}
	if n.State() == "lost" {
		t.Fatal("node lost")
	}
	// Nothing more arrives: a repeat would show as a duplicate in take.
	if _, err := n.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	x.Take()
	if len(x.Got()) != count {
		t.Fatalf("%d exits, want %d", len(x.Got()), count)
	}
}

// The manager vanishes (connections refused): the agent stops its
// processes when the monitor timeout passes and returns.
func TestMonitorTimeoutManagerGone(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, ServerOptions{NodeTimeout: patience, HeartbeatInterval: 50 * time.Millisecond, MonitorTimeout: 700 * time.Millisecond})
	ta := runAgent(t, "n1", m.addr, AgentOptions{})
	n := m.node(t)
	if _, err := n.Start(ctx, helperSpec(t, "sleeper", "sleep")); err != nil {
		t.Fatal(err)
	}
	m.kill()
	if err := ta.wait(t); !errors.Is(err, ErrMonitorTimeout) {
		t.Fatalf("RunAgent: %v", err)
	}
	ps, err := ta.Agent.Poll(ctx, "sleeper")
	if err != nil || ps[0].State != node.Exited || ps[0].Exit.Signal != syscall.SIGTERM {
		t.Fatalf("sleeper after monitor timeout: %+v %v", ps, err)
	}
}

// The stream stays up but nothing comes through: same dead-man switch.
func TestMonitorTimeoutSilentStream(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, ServerOptions{NodeTimeout: patience, HeartbeatInterval: 50 * time.Millisecond})
	px := newProxy(t, m.addr)
	ta := runAgent(t, "n1", px.addr(), AgentOptions{MonitorTimeout: 700 * time.Millisecond})
	n := m.node(t)
	if _, err := n.Start(ctx, helperSpec(t, "sleeper", "sleep")); err != nil {
		t.Fatal(err)
	}
	px.freeze()
	if err := ta.wait(t); !errors.Is(err, ErrMonitorTimeout) {
		t.Fatalf("RunAgent: %v", err)
	}
	ps, err := ta.Agent.Poll(ctx, "sleeper")
	if err != nil || ps[0].State != node.Exited {
		t.Fatalf("sleeper after monitor timeout: %+v %v", ps, err)
	}
	px.thaw()
}

// The manager restarts: the agent's session is unknown to the new one, so
// it gives up (the new manager reruns what is needed).
func TestManagerRestartGivesUp(t *testing.T) {
	m := newManager(t, quick)
	ta := runAgent(t, "n1", m.addr, AgentOptions{MonitorTimeout: patience})
	if _, err := m.node(t).Poll(ctxT(t)); err != nil { // the agent has its Welcome
		t.Fatal(err)
	}
	m.kill() // gone without a word, its sessions with it
	lis, err := listenAgain(m.addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", m.addr, err)
	}
	m2 := serveManager(t, lis, quick)
	if err := ta.wait(t); !errors.Is(err, ErrGivenUp) {
		t.Fatalf("RunAgent: %v", err)
	}
	select {
	case <-m2.nodes:
		t.Fatal("the old agent became a node of the new manager")
	default:
	}
}

// Close sends Shutdown: the agent stops its processes, reports them, and
// RunAgent returns nil; Finished has the last exits, then Ready closes.
func TestShutdownCommand(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, quick)
	ta := runAgent(t, "n1", m.addr, AgentOptions{Grace: patience})
	n := m.node(t)
	x := nodetest.NewExits(t, n)
	for _, name := range []string{"a", "b"} {
		if _, err := n.Start(ctx, helperSpec(t, name, "sleep")); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ta.wait(t); err != nil {
		t.Fatalf("RunAgent: %v", err)
	}
	x.Take()
	for _, name := range []string{"a", "b"} {
		if e, ok := x.Got()[name]; !ok || e.Signal != syscall.SIGTERM {
			t.Errorf("exit of %s: %+v (reported %v)", name, e, ok)
		}
	}
	waitGone(t, n)
	if s := n.State(); s != "lost" {
		t.Fatalf("state %q", s)
	}
	if _, err := n.Poll(ctx); !errors.Is(err, errdefs.ErrNodeLost) {
		t.Fatalf("call after close: %v", err)
	}
}

func TestAuthorizeRefuses(t *testing.T) {
	m := newManager(t, ServerOptions{
		NodeTimeout:       quick.NodeTimeout,
		HeartbeatInterval: quick.HeartbeatInterval,
		Authorize: func(ctx context.Context, h *droverpb.Hello) error {
			if h.GetNode() != "good" {
				return fmt.Errorf("no certificate for %s", h.GetNode())
			}
			return nil
		},
	})
	evil := runAgent(t, "evil", m.addr, AgentOptions{})
	err := evil.wait(t)
	if status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("RunAgent of a refused agent: %v", err)
	}
	runAgent(t, "good", m.addr, AgentOptions{})
	if n := m.node(t); n.Name() != "good" {
		t.Fatalf("node %s", n.Name())
	}
}

func TestAgentContextCancelled(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, ServerOptions{NodeTimeout: 500 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond})
	ta := runAgent(t, "n1", m.addr, AgentOptions{})
	n := m.node(t)
	if _, err := n.Start(ctx, helperSpec(t, "sleeper", "sleep")); err != nil {
		t.Fatal(err)
	}
	ta.cancel()
	if err := ta.wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("RunAgent: %v", err)
	}
	ps, err := ta.Agent.Poll(ctx, "sleeper")
	if err != nil || ps[0].State != node.Exited {
		t.Fatalf("sleeper: %+v %v", ps, err)
	}
	// The manager notices within NodeTimeout.
	waitGone(t, n)
}

// A command whose caller gives up while the stream is broken never runs:
// after the reconnect the manager sends its cancellation, not the command.
func TestAbandonedCommandNeverRuns(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, quick)
	px := newProxy(t, m.addr)
	ta := runAgent(t, "n1", px.addr(), AgentOptions{MonitorTimeout: patience})
	n := m.node(t)
	if _, err := n.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	px.freeze() // the Start goes into the void
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := n.Start(sctx, helperSpec(t, "ghost", "sleep"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start: %v", err)
	}
	px.cut()
	px.thaw()
	if st, err := n.Poll(ctx, "ghost"); err != nil || len(st) != 1 || !errors.Is(st[0].Err, errdefs.ErrUnknownProcess) {
		t.Fatalf("poll ghost: %+v, %v", st, err)
	}
	// The agent answers the cancellation; the manager forgets the call.
	deadline := time.Now().Add(patience)
	for {
		n.mu.Lock()
		pending := len(n.calls)
		n.mu.Unlock()
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls still pending", pending)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := ta.startCounts()["ghost"]; c != 0 {
		t.Fatalf("ghost started %d times", c)
	}
}

// Server.Close loses every node; an agent that comes back is told to give up.
func TestServerCloseGivesUp(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, quick)
	ta := runAgent(t, "n1", m.addr, AgentOptions{MonitorTimeout: patience})
	n := m.node(t)
	if _, err := n.Start(ctx, helperSpec(t, "sleeper", "sleep")); err != nil {
		t.Fatal(err)
	}
	m.srv.Close()
	waitGone(t, n)
	if err := ta.wait(t); !errors.Is(err, ErrGivenUp) {
		t.Fatalf("RunAgent: %v", err)
	}
	if ps, err := ta.Agent.Poll(ctx, "sleeper"); err != nil || ps[0].State != node.Exited {
		t.Fatalf("sleeper: %+v %v", ps, err)
	}
	if got := m.srv.Nodes(); len(got) != 1 || got[0] != n || n.State() != "lost" {
		t.Fatalf("nodes after close: %v", got)
	}
}

// A peer that opens a stream and says nothing is dropped after NodeTimeout.
func TestNoHello(t *testing.T) {
	ctx := ctxT(t)
	m := newManager(t, ServerOptions{NodeTimeout: 200 * time.Millisecond})
	conn, err := dialer(m.addr)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := droverpb.NewAgentSessionClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent peer: %v", err)
	}
	// And one whose Hello names no node is refused.
	stream, err = droverpb.NewAgentSessionClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&droverpb.AgentMsg{Hello: &droverpb.Hello{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nameless hello: %v", err)
	}
}

// Batches stay well under gRPC's 4 MiB message limit, in order, each item
// once.
func TestBatchesAreBounded(t *testing.T) {
	const limit = 4 << 20
	s := NewServer(quick)
	n := newRemoteNode(s, "sess", &droverpb.Hello{Node: "n1"})
	defer n.lose("test over")
	att := n.resume(s.opts)
	n.mu.Lock()
	for range 10 {
		n.nextID++
		cmd := &droverpb.Command{Id: n.nextID, Op: &droverpb.Command_Send{Send: &droverpb.SendInput{Name: "x", Data: make([]byte, MaxSendBytes)}}}
		n.calls[cmd.Id] = &call{op: "send", cmd: cmd, size: proto.Size(cmd), done: make(chan struct{})}
		n.unsent = append(n.unsent, cmd.Id)
	}
	n.mu.Unlock()
	var ids []uint64
	for {
		m := n.collect(att, false)
		if m == nil {
			break
		}
		if sz := proto.Size(m); sz >= limit {
			t.Fatalf("manager message of %d bytes", sz)
		}
		for _, c := range m.GetCommands() {
			ids = append(ids, c.GetId())
		}
	}
	if len(ids) != 10 || !slices.IsSorted(ids) || ids[0] != 1 {
		t.Fatalf("commands sent: %v", ids)
	}

	a := &agentRun{outbox: mailbox.New[*outItem](0)}
	for i := range 100000 {
		it := &outItem{report: &droverpb.ExitReport{Exit: pbconv.Exit(node.Exit{
			Name: fmt.Sprintf("job-with-a-longish-name.%d", i), Node: "n1", Code: 1, Start: time.Now(), End: time.Now(), Err: "outputs: " + strings.Repeat("e", 40)})}}
		it.report.Seq = a.outbox.Put("", it)
		a.replyQ = append(a.replyQ, &droverpb.Reply{Id: uint64(i + 1), Error: strings.Repeat("r", 30)})
	}
	var seqs, replies int
	for {
		m, _ := a.collect(false)
		if m == nil {
			break
		}
		if sz := proto.Size(m); sz >= limit {
			t.Fatalf("agent message of %d bytes", sz)
		}
		for _, x := range m.GetExits() {
			seqs++
			if x.GetSeq() != uint64(seqs) {
				t.Fatalf("exit seq %d, want %d", x.GetSeq(), seqs)
			}
		}
		replies += len(m.GetReplies())
	}
	if seqs != 100000 || replies != 100000 {
		t.Fatalf("%d exits, %d replies", seqs, replies)
	}
}

// TestGatherEndsWhenHalfStarted: while starts are queued, exits wait for
// company, but only until half of what was queued has started, since the
// manager tops a line up once half of it has run.
func TestGatherEndsWhenHalfStarted(t *testing.T) {
	a := &agentRun{running: map[uint64]inflight{}, cache: map[uint64]*droverpb.Reply{}, wake: make(chan struct{}, 1)}
	if _, ok := a.gather(); ok {
		t.Fatal("gathering with nothing queued: a lone exit must go at once")
	}
	for id := uint64(1); id <= 4; id++ {
		a.running[id] = inflight{start: true, queued: true}
		a.queued++
	}
	a.running[5] = inflight{start: true} // not queued: it starts at once
	drained, ok := a.gather()
	if !ok {
		t.Fatal("not gathering with 4 starts queued")
	}
	isClosed := func() bool {
		select {
		case <-drained:
			return true
		default:
			return false
		}
	}
	a.answer(5, &droverpb.Reply{Id: 5})
	a.answer(1, &droverpb.Reply{Id: 1})
	if isClosed() {
		t.Fatal("gathering ended after 1 of 4 queued starts")
	}
	a.answer(2, &droverpb.Reply{Id: 2})
	if !isClosed() {
		t.Fatal("gathering goes on after 2 of 4 queued starts")
	}
	a.gathered()
	a.answer(3, &droverpb.Reply{Id: 3}) // no gathering: nothing to close twice
	if a.queued != 1 {
		t.Fatalf("queued %d, want 1", a.queued)
	}
}

// TestHeartbeatDefault: without an interval of its own, a heartbeat goes
// every third of NodeTimeout, so a node is lost after about three missed.
func TestHeartbeatDefault(t *testing.T) {
	for _, c := range []struct{ timeout, want time.Duration }{
		{0, 5 * time.Second / 3},
		{3 * time.Second, time.Second},
		{30 * time.Second, 10 * time.Second},
	} {
		if got := NewServer(ServerOptions{NodeTimeout: c.timeout}).opts.HeartbeatInterval; got != c.want {
			t.Errorf("NodeTimeout %v: heartbeat every %v, want %v", c.timeout, got, c.want)
		}
	}
	if got := NewServer(ServerOptions{NodeTimeout: time.Second, HeartbeatInterval: time.Second}).opts.HeartbeatInterval; got != time.Second {
		t.Errorf("a chosen interval was changed to %v", got)
	}
}
