// Package nodetest is the conformance suite of the node seam: the same
// cases run against every implementation of node.Node (the in-process
// agent, a remote node over real gRPC, a submission's view in the
// cluster), so that the queue and the cluster can rely on one behaviour.
// The cases start real processes (/bin/sh and friends).
package nodetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
)

// patience bounds every wait of the suite; it is never reached when the
// node behaves.
const patience = time.Minute

// Run runs every case as a subtest, each on a fresh node from newNode.
func Run(t *testing.T, newNode func(t *testing.T) node.Node) {
	for _, c := range []struct {
		name string
		run  func(t *testing.T, n node.Node, x *Exits)
	}{
		{"Describe", describe},
		{"ExitsExactlyOnce", exitsExactlyOnce},
		{"PollReportsEachName", pollEachName},
		{"TypedErrors", typedErrors},
		{"StopAndKill", stopAndKill},
		{"StdinSendAndClose", stdin},
		{"EnvAndPorts", envAndPorts},
		{"CancelAll", cancelAll},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			c.run(t, n, NewExits(t, n))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

func sh(name, script string) node.ProcessSpec {
	return node.ProcessSpec{Name: name, Args: []string{"/bin/sh", "-c", script}}
}

func start(t *testing.T, n node.Node, spec node.ProcessSpec) node.Started {
	t.Helper()
	st, err := n.Start(ctxT(t), spec)
	if err != nil {
		t.Fatalf("start %s: %v", spec.Name, err)
	}
	return st
}

func describe(t *testing.T, n node.Node, _ *Exits) {
	if n.Name() == "" || len(n.Resources().Cores) == 0 {
		t.Errorf("name %q, resources %+v", n.Name(), n.Resources())
	}
	if h := n.Health(); h.State != "up" || h.Err != nil || h.Lost() {
		t.Errorf("a fresh node's health: %+v", h)
	}
}

func exitsExactlyOnce(t *testing.T, n node.Node, x *Exits) {
	var names []string
	for i := range 20 {
		name := fmt.Sprintf("x%d", i)
		names = append(names, name)
		start(t, n, sh(name, fmt.Sprintf("exit %d", i%4)))
	}
	for i, e := range x.Wait(names...) {
		if name := names[i]; e.Code != i%4 || e.Signal != 0 || e.Node != n.Name() || e.End.Before(e.Start) {
			t.Errorf("%s: %+v, want exit %d on %s", name, e, i%4, n.Name())
		}
	}
	if more := n.Finished(); len(more) != 0 {
		t.Errorf("exits reported again: %+v", more)
	}
}

func pollEachName(t *testing.T, n node.Node, x *Exits) {
	start(t, n, sh("p-run", "exec sleep 600"))
	start(t, n, sh("p-done", "exit 3"))
	x.Wait("p-done")
	st, err := n.Poll(ctxT(t), "p-run", "p-done", "p-nope")
	if err != nil || len(st) != 3 {
		t.Fatalf("poll: %+v %v", st, err)
	}
	if st[0].State != node.Running || st[1].State != node.Exited || st[1].Exit.Code != 3 ||
		st[2].State != node.Unknown || !errors.Is(st[2].Err, errdefs.ErrUnknownProcess) {
		t.Errorf("poll p-run p-done p-nope: %+v", st)
	}
	if err := n.Kill(ctxT(t), "p-run"); err != nil {
		t.Fatal(err)
	}
	x.Wait("p-run")
}

func typedErrors(t *testing.T, n node.Node, x *Exits) {
	ctx := ctxT(t)
	start(t, n, sh("t-run", "exec sleep 600"))
	if _, err := n.Start(ctx, sh("t-run", "true")); !errors.Is(err, errdefs.ErrDuplicate) {
		t.Errorf("duplicate start: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "no-such-program")
	_, err := n.Start(ctx, node.ProcessSpec{Name: "t-missing", Args: []string{missing}})
	var se *errdefs.SpawnError
	if !errors.Is(err, errdefs.ErrSpawnFailed) || !errors.As(err, &se) || se.Errno != syscall.ENOENT || se.Path != missing {
		t.Errorf("missing executable: %v (%+v)", err, se)
	}
	if !strings.Contains(fmt.Sprint(err), "t-missing") {
		t.Errorf("error %q does not name the process", err)
	}
	if err := n.Stop(ctx, "t-nope", time.Second); !errors.Is(err, errdefs.ErrUnknownProcess) {
		t.Errorf("stop unknown: %v", err)
	}
	if err := n.Purge(ctx, "t-run"); !errors.Is(err, errdefs.ErrRunning) {
		t.Errorf("purge running: %v", err)
	}
	if err := n.Kill(ctx, "t-run"); err != nil {
		t.Fatal(err)
	}
	x.Wait("t-run")
	if err := n.Send(ctx, "t-run", []byte("x")); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("send to an exited process: %v", err)
	}
}

func stopAndKill(t *testing.T, n node.Node, x *Exits) {
	ctx := ctxT(t)
	// The shell's child is in its process group: a stop reaches both,
	// and the shell's trap says it got SIGTERM.
	dir := t.TempDir()
	spec := sh("s-term", "trap 'echo term > "+filepath.Join(dir, "term")+"; exit 7' TERM; sleep 600 & wait")
	start(t, n, spec)
	start(t, n, sh("s-kill", "trap '' TERM; exec sleep 600"))
	waitRunning(t, n, "s-term", "s-kill")
	if err := n.Stop(ctx, "s-term", patience); err != nil {
		t.Fatal(err)
	}
	if err := n.Kill(ctx, "s-kill"); err != nil {
		t.Fatal(err)
	}
	got := x.Wait("s-term", "s-kill")
	if e := got[1]; e.Signal != syscall.SIGKILL {
		t.Errorf("killed: %+v", e)
	}
	if e := got[0]; !(e.Signal == syscall.SIGTERM || e.Code == 7) {
		t.Errorf("stopped: %+v, want SIGTERM or the trap's exit 7", e)
	}
}

func waitRunning(t *testing.T, n node.Node, names ...string) {
	t.Helper()
	for end := time.Now().Add(patience); ; time.Sleep(10 * time.Millisecond) {
		st, err := n.Poll(ctxT(t), names...)
		if err == nil && !slices.ContainsFunc(st, func(s node.Status) bool { return s.State != node.Running }) {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%v not running: %+v %v", names, st, err)
		}
	}
}

func stdin(t *testing.T, n node.Node, x *Exits) {
	ctx := ctxT(t)
	out := filepath.Join(t.TempDir(), "out")
	spec := sh("i-cat", "cat; echo eof")
	spec.Stdout = out
	start(t, n, spec)
	waitRunning(t, n, "i-cat")
	if err := n.Send(ctx, "i-cat", []byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if err := n.CloseStdin(ctx, "i-cat"); err != nil {
		t.Fatal(err)
	}
	if e := x.One("i-cat"); !e.Success() {
		t.Errorf("cat after its stdin was closed: %+v", e)
	}
	if got, err := os.ReadFile(out); err != nil || string(got) != "one\neof\n" {
		t.Errorf("output %q %v", got, err)
	}
}

func envAndPorts(t *testing.T, n node.Node, x *Exits) {
	ctx := ctxT(t)
	if err := n.SetEnv(ctx, "DROVER_NODETEST", "v1"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := n.GetEnv(ctx, "DROVER_NODETEST"); err != nil || !ok || v != "v1" {
		t.Errorf("get env: %q %v %v", v, ok, err)
	}
	out := filepath.Join(t.TempDir(), "out")
	spec := sh("e-env", `echo "$DROVER_NODETEST $DROVER_PORT_CTL"`)
	spec.Stdout, spec.PortNames = out, []string{"ctl"}
	st := start(t, n, spec)
	x.Wait("e-env")
	if got, _ := os.ReadFile(out); string(got) != fmt.Sprintf("v1 %d\n", st.Ports["ctl"]) || st.Ports["ctl"] == 0 {
		t.Errorf("env and port in the process: %q, started %+v", got, st)
	}
	ports, err := n.BindPorts(ctx, false, 2)
	if err != nil || len(ports) != 2 || ports[0] == ports[1] {
		t.Fatalf("bind ports: %v %v", ports, err)
	}
	if err := n.ReleasePorts(ctx, false, ports); err != nil {
		t.Fatal(err)
	}
}

func cancelAll(t *testing.T, n node.Node, x *Exits) {
	start(t, n, sh("c-1", "exec sleep 600"))
	start(t, n, sh("c-2", "exec sleep 600"))
	waitRunning(t, n, "c-1", "c-2")
	if err := n.CancelAll(ctxT(t), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, e := range x.Wait("c-1", "c-2") {
		if e.Signal == 0 {
			t.Errorf("%s after cancel all: %+v", e.Name, e)
		}
	}
}
