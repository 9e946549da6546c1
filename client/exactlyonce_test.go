package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/topology"
)

// realServe is a real Cluster with one in-process agent behind the real
// control service over mutual TLS.
func realServe(t *testing.T, visibility time.Duration) (*served, topology.Resources) {
	t.Helper()
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res.Node = "n1"
	a, err := agent.New(agent.Options{Name: "n1", Resources: res, Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c := cluster.New(cluster.Options{Home: t.TempDir(), Grace: time.Second, Visibility: visibility})
	c.AddNode(a)
	s := serveAPI(t, c)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if err := a.Shutdown(time.Second); err != nil {
			t.Errorf("shut down agent: %v", err)
		}
	})
	return s, res
}

func dialGroup(t *testing.T, s *served, group string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Options{Home: s.home, Group: group})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func startTrue(t *testing.T, c *client.Client, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: name, Args: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
}

// Replies cut by client deadlines of 0.2-1.6 ms lose nothing: every exit
// reaches the client exactly once (before, the server emptied its queue
// into replies that never arrived).
func TestFinishedExactlyOnceUnderTinyDeadlines(t *testing.T) {
	s, _ := realServe(t, 5*time.Second)
	c := dialGroup(t, s, "")
	const n = 200
	for i := range n {
		startTrue(t, c, fmt.Sprintf("p%d", i))
	}
	seen := map[string]int{}
	cut := 0
	deadline := time.Now().Add(time.Minute)
	for i := 0; len(seen) < n && time.Now().Before(deadline); i++ {
		d := time.Duration(200+(i%8)*200) * time.Microsecond
		ctx, cancel := context.WithTimeout(context.Background(), d)
		exits, err := c.Finished(ctx, 0)
		cancel()
		if err != nil {
			cut++
			continue
		}
		for _, e := range exits {
			seen[e.Name]++
		}
	}
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		if seen[name] != 1 {
			t.Errorf("%s returned %d times", name, seen[name])
		}
	}
	t.Logf("%d calls cut by their deadline", cut)
	// Nothing is left to hand out once the last ones are acknowledged.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if more, err := c.Finished(ctx, 100*time.Millisecond); err != nil || len(more) != 0 {
		t.Errorf("after all: %v %v", more, err)
	}
}

// A client that takes exits and never acknowledges them (it died): another
// client gets them once the visibility timeout has passed; the late ack of
// the first changes nothing.
func TestUnacknowledgedExitsGoToTheNextClient(t *testing.T) {
	s, _ := realServe(t, 300*time.Millisecond)
	dead := dialGroup(t, s, "")
	next := dialGroup(t, s, "")
	startTrue(t, dead, "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := dead.Finished(ctx, time.Minute)
	if err != nil || len(got) != 1 || got[0].Name != "a" {
		t.Fatalf("first client: %v %v", got, err)
	}
	// Within the timeout the other client sees nothing of it.
	if other, err := next.Finished(ctx, 0); err != nil || len(other) != 0 {
		t.Fatalf("second client took %v %v before the visibility timeout", other, err)
	}
	again, err := next.Finished(ctx, 10*time.Second)
	if err != nil || len(again) != 1 || again[0].Name != "a" || again[0].Seq != got[0].Seq {
		t.Fatalf("second client after the timeout: %v %v, want %v", again, err, got)
	}
	if err := dead.Ack(ctx, got[0].Seq); err != nil {
		t.Fatal(err)
	}
	// The second client never acknowledged it either: it is still kept.
	third := dialGroup(t, s, "")
	if kept, err := third.Finished(ctx, 10*time.Second); err != nil || len(kept) != 1 {
		t.Fatalf("the first client's late ack removed the exit: %v %v", kept, err)
	}
}

// WatchFinished pushes exits as they come; what it passed on is
// acknowledged, so neither it nor Finished returns them again.
func TestWatchFinishedPushesEachOnce(t *testing.T) {
	s, _ := realServe(t, 5*time.Second)
	c := dialGroup(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan error, 1)
	wctx, stop := context.WithCancel(ctx)
	go func() {
		done <- c.WatchFinished(wctx, func(e client.Exit) error {
			mu.Lock()
			seen[e.Name]++
			all := len(seen) == 3
			mu.Unlock()
			if all {
				stop()
			}
			return nil
		})
	}()
	for _, n := range []string{"w1", "w2", "w3"} {
		startTrue(t, c, n)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"w1", "w2", "w3"} {
		if seen[n] != 1 {
			t.Errorf("%s pushed %d times", n, seen[n])
		}
	}
	other := dialGroup(t, s, "")
	if more, err := other.Finished(ctx, 700*time.Millisecond); err != nil || len(more) != 0 {
		t.Errorf("exits pushed and acknowledged were handed out again: %#v %v (seen %v)", more, err, seen)
	}
}

// Two programs on one serve, each with its group, never take each other's
// exits, and cancel-all of one stops only its own processes.
func TestGroupsKeepProgramsApart(t *testing.T) {
	s, _ := realServe(t, 5*time.Second)
	g1, g2 := dialGroup(t, s, "g1"), dialGroup(t, s, "g2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []*client.Client{g1, g2} {
		if _, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: "sleep-" + groupOf(c, g1), Args: []string{"sleep", "600"}}); err != nil {
			t.Fatal(err)
		}
	}
	startTrue(t, g1, "true-g1")
	startTrue(t, g2, "true-g2")
	e1, err := g1.Finished(ctx, 10*time.Second)
	if err != nil || len(e1) != 1 || e1[0].Name != "true-g1" {
		t.Fatalf("g1 finished: %v %v", e1, err)
	}
	if err := g1.CancelAll(ctx, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	e1, err = g1.Finished(ctx, 10*time.Second)
	if err != nil || len(e1) != 1 || e1[0].Name != "sleep-g1" || e1[0].Signal != "SIGTERM" {
		t.Fatalf("g1 after cancel-all: %v %v", e1, err)
	}
	st, err := g2.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	running := map[string]bool{}
	for _, x := range st {
		running[x.Name] = x.Running
	}
	if !running["sleep-g2"] || len(st) != 2 {
		t.Fatalf("g2's poll after g1's cancel-all: %v", st)
	}
	e2, err := g2.Finished(ctx, 10*time.Second)
	if err != nil || len(e2) != 1 || e2[0].Name != "true-g2" {
		t.Fatalf("g2 finished: %v %v", e2, err)
	}
	if err := g2.Kill(ctx, "sleep-g2"); err != nil {
		t.Fatal(err)
	}
}

func groupOf(c, g1 *client.Client) string {
	if c == g1 {
		return "g1"
	}
	return "g2"
}

// A spawn failure is typed, with errno and path; explicit hwthreads bind
// exactly those threads, are Busy while taken and Invalid when not on the
// node; poll reports an unknown name for itself.
func TestTypedStartsAndHWThreads(t *testing.T) {
	s, res := realServe(t, 5*time.Second)
	c := dialGroup(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: "ghost", Args: []string{"/nonexistent/sim"}})
	var se *client.SpawnError
	if !errors.Is(err, client.ErrSpawnFailed) || !errors.As(err, &se) || se.Errno != syscall.ENOENT || se.Path != "/nonexistent/sim" {
		t.Fatalf("missing executable: %v (%+v)", err, se)
	}
	_, err = c.Start(ctx, client.StartRequest{Node: "n1", Name: "nodir", Args: []string{"true"}, Dir: "/nonexistent/dir"})
	if !errors.As(err, &se) || se.Errno != syscall.ENOENT || se.Path != "/nonexistent/dir" {
		t.Fatalf("missing work dir: %v (%+v)", err, se)
	}

	hw := res.Cores[len(res.Cores)-1][0]
	out := filepath.Join(t.TempDir(), "out")
	r, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: "bound", Stdout: out, HWThreads: []int{hw},
		Args: []string{"sh", "-c", "grep Cpus_allowed_list /proc/self/status; exec sleep 600"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.HWThreads) != 1 || r.HWThreads[0] != hw {
		t.Errorf("start reports hwthreads %v, want [%d]", r.HWThreads, hw)
	}
	want := fmt.Sprintf("Cpus_allowed_list:\t%d\n", hw)
	for end := time.Now().Add(30 * time.Second); ; {
		got, _ := os.ReadFile(out)
		if string(got) == want {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("bound process says %q, want %q", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err = c.Start(ctx, client.StartRequest{Node: "n1", Name: "clash", Args: []string{"true"}, HWThreads: []int{hw}})
	if !errors.Is(err, client.ErrBusy) {
		t.Errorf("hwthread taken: %v, want ErrBusy", err)
	}
	_, err = c.Start(ctx, client.StartRequest{Node: "n1", Name: "far", Args: []string{"true"}, HWThreads: []int{100000}})
	if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), "100000") {
		t.Errorf("hwthread not on the node: %v, want ErrInvalid", err)
	}

	st, err := c.Poll(ctx, "bound", "nope")
	if err != nil || len(st) != 2 || !st[0].Running || !errors.Is(st[1].Err, client.ErrNotFound) {
		t.Errorf("poll bound nope: %+v %v", st, err)
	}
	if err := c.Kill(ctx, "bound"); err != nil {
		t.Fatal(err)
	}
}

// CloseStdin ends the process's input after what was sent; a later Send
// fails.
func TestCloseStdin(t *testing.T) {
	s, _ := realServe(t, 5*time.Second)
	c := dialGroup(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := c.Start(ctx, client.StartRequest{Node: "n1", Name: "cat", Stdout: out, Args: []string{"sh", "-c", "cat; echo eof"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, "cat", []byte("a line\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseStdin(ctx, "cat"); err != nil {
		t.Fatal(err)
	}
	exits, err := c.Finished(ctx, 30*time.Second)
	if err != nil || len(exits) != 1 || !exits[0].Success() {
		t.Fatalf("cat did not end after its stdin was closed: %v %v", exits, err)
	}
	if got, _ := os.ReadFile(out); string(got) != "a line\neof\n" {
		t.Errorf("output %q", got)
	}
}
