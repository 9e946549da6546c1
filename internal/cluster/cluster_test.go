package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

func TestStartOnNamedNodeAndFinishedOnce(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"), newAgent(t, "n2"))
	col := clusterExits(t, c)
	r := start(t, c, "n2", "three", helper("env=DROVER_NODE", "exit=3")...)
	if r.Node != "n2" || r.PID <= 0 || len(r.HWThreads) != 0 {
		t.Fatalf("start result %+v", r)
	}
	e := col.One("three")
	if e.Node != "n2" || e.Code != 3 || e.Signal != 0 || e.Err != "" {
		t.Fatalf("exit %+v", e)
	}
	var out bytes.Buffer
	if err := c.Logs(ctxT(t), "three", false, false, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "DROVER_NODE=n2\n" {
		t.Fatalf("stdout %q", out.String())
	}
	// Default output files live in Home/procs/.
	if _, err := os.Stat(filepath.Join(c.opts.Home, "procs", "three.stderr")); err != nil {
		t.Fatal(err)
	}
	if f, _ := exitsOf(c, ctxT(t), 0); len(f) != 0 {
		t.Fatalf("reported again: %+v", f)
	}

	// Many concurrent starts over both nodes: every exit exactly once.
	const n = 40
	var wg sync.WaitGroup
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("p%d", i)
		wg.Go(func() {
			_, err := c.Start(context.Background(), StartRequest{
				Node: []string{"n1", "n2"}[i%2],
				Spec: node.ProcessSpec{Name: names[i], Args: helper("exit=" + strconv.Itoa(i%7))},
			})
			if err != nil {
				t.Errorf("start %s: %v", names[i], err)
			}
		})
	}
	wg.Wait()
	for i, e := range col.Wait(names...) {
		if name := names[i]; e.Code != i%7 || e.Node != []string{"n1", "n2"}[i%2] {
			t.Errorf("%s: %+v", name, e)
		}
	}
	time.Sleep(100 * time.Millisecond)
	col.Wait() // nothing reported twice meanwhile
	if len(col.Got()) != n+1 {
		t.Fatalf("%d exits, want %d", len(col.Got()), n+1)
	}
}

func TestStartErrors(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	col := clusterExits(t, c)
	ctx := ctxT(t)
	start(t, c, "n1", "a", helper("sleep=30s")...)

	_, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "a", Args: helper()}})
	if !errors.Is(err, errdefs.ErrDuplicate) || !strings.Contains(err.Error(), "start a on n1") {
		t.Fatalf("duplicate: %v", err)
	}
	_, err = c.Start(ctx, StartRequest{Node: "n9", Spec: node.ProcessSpec{Name: "b", Args: helper()}})
	if !errors.Is(err, errdefs.ErrUnknownNode) || !strings.Contains(err.Error(), "n9") {
		t.Fatalf("unknown node: %v", err)
	}
	for _, bad := range []string{"", "..", "x/y"} {
		if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: bad, Args: helper()}}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "rel", Args: helper(), Stdout: "out.txt"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("relative stdout without a work dir: %v", err)
	}
	// A start the node refuses leaves the name free.
	_, err = c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "missing", Args: []string{"/no/such/program"}}})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing executable: %v", err)
	}
	start(t, c, "n1", "missing", helper()...)
	col.Wait("missing")

	// After the exit the name is still taken until Purge.
	if err := c.Kill(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if e := col.One("a"); e.Signal != syscall.SIGKILL {
		t.Fatalf("exit %+v", e)
	}
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "a", Args: helper()}}); !errors.Is(err, errdefs.ErrDuplicate) {
		t.Fatalf("start over an exited process: %v", err)
	}
	if err := c.Purge(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	col.Forget("a")
	start(t, c, "n1", "a", helper("exit=4")...)
	if e := col.One("a"); e.Code != 4 {
		t.Fatalf("second a: %+v", e)
	}
}

func TestCoresReservedAndBound(t *testing.T) {
	a := newAgent(t, "n1")
	c := newCluster(t, a)
	col := clusterExits(t, c)
	ctx := ctxT(t)
	total := len(a.Resources().Cores)

	r, err := c.Start(ctx, StartRequest{Node: "n1", Cores: 1, Spec: node.ProcessSpec{Name: "bound", Args: helper("env=DROVER_HWTHREADS", "cpus", "out=ready", "sleep=30s")}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.HWThreads, a.Resources().Cores[0]) {
		t.Fatalf("hwthreads %v, want core 0 %v", r.HWThreads, a.Resources().Cores[0])
	}
	waitOutput(t, c, "bound", "ready")
	var out bytes.Buffer
	if err := c.Logs(ctx, "bound", false, false, &out); err != nil {
		t.Fatal(err)
	}
	list := topology.FormatCPUList(r.HWThreads)
	if !strings.Contains(out.String(), "DROVER_HWTHREADS="+list+"\n") || !strings.Contains(out.String(), "cpus="+list+"\n") {
		t.Fatalf("child output %q, want it bound to %s", out.String(), list)
	}
	nodes, _ := c.Nodes(ctx)
	if !slices.Equal(nodes[0].BusyHWThreads, r.HWThreads) || nodes[0].Processes != 1 {
		t.Fatalf("nodes %+v", nodes)
	}
	if want := map[bool]string{true: "busy", false: "up"}[total == 1]; nodes[0].State != want {
		t.Fatalf("state %s, want %s", nodes[0].State, want)
	}

	// All cores are more than are free now.
	_, err = c.Start(ctx, StartRequest{Node: "n1", Cores: total, Spec: node.ProcessSpec{Name: "big", Args: helper()}})
	if !errors.Is(err, errdefs.ErrBusy) || !strings.Contains(err.Error(), "start big on n1") {
		t.Fatalf("want errdefs.ErrBusy: %v", err)
	}
	_, err = c.Start(ctx, StartRequest{Node: "n1", Cores: total + 1, Spec: node.ProcessSpec{Name: "huge", Args: helper()}})
	if !errors.Is(err, errdefs.ErrBusy) {
		t.Fatalf("want errdefs.ErrBusy: %v", err)
	}
	// Unbound processes need no cores.
	start(t, c, "n1", "free", helper()...)

	if err := c.Stop(ctx, "bound", time.Second); err != nil {
		t.Fatal(err)
	}
	col.Wait("bound", "free")
	if got := c.pool.Free("n1"); got != total {
		t.Fatalf("%d cores free after the exit, want %d", got, total)
	}
	r, err = c.Start(ctx, StartRequest{Node: "n1", Cores: total, Spec: node.ProcessSpec{Name: "big", Args: helper("cpus")}})
	if err != nil {
		t.Fatalf("after the exit: %v", err)
	}
	if !slices.Equal(r.HWThreads, a.Resources().HWThreads()) {
		t.Fatalf("hwthreads %v", r.HWThreads)
	}
	col.Wait("big")
}

func TestVerbs(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	col := clusterExits(t, c)
	ctx := ctxT(t)

	start(t, c, "n1", "echo", helper("stdin", "out=bye")...)
	start(t, c, "n1", "sleeper", helper("sleep=30s")...)
	start(t, c, "n1", "stubborn", helper("ignoreterm", "out=ready", "sleep=30s")...)

	st, err := c.Poll(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range st {
		names = append(names, s.Name)
		if s.State != node.Running {
			t.Errorf("%s not running: %+v", s.Name, s)
		}
	}
	if !slices.Equal(names, []string{"echo", "sleeper", "stubborn"}) {
		t.Fatalf("poll all: %v", names)
	}
	if st, err := c.Poll(ctx, "", []string{"echo", "nope"}); err != nil || len(st) != 2 || st[0].State == node.Unknown ||
		st[1].State != node.Unknown || !errors.Is(st[1].Err, errdefs.ErrUnknownProcess) {
		t.Fatalf("poll unknown: %+v, %v", st, err)
	}

	if err := c.Send(ctx, "echo", []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, c, "echo", "got hello")
	if err := c.Purge(ctx, "echo"); !errors.Is(err, errdefs.ErrRunning) {
		t.Fatalf("purge running: %v", err)
	}
	if err := c.Send(ctx, "echo", []byte("quit\n")); err != nil {
		t.Fatal(err)
	}
	if e := col.One("echo"); e.Code != 0 || e.Signal != 0 {
		t.Fatalf("echo: %+v", e)
	}
	st, _ = c.Poll(ctx, "", []string{"echo"})
	if st[0].State != node.Exited || st[0].Exit.String() != "exit 0" {
		t.Fatalf("poll echo: %+v", st)
	}
	if err := c.Send(ctx, "echo", []byte("x\n")); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Fatalf("send after exit: %v", err)
	}
	if err := c.Stop(ctx, "echo", 0); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Fatalf("stop after exit: %v", err)
	}

	if err := c.Stop(ctx, "sleeper", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if e := col.One("sleeper"); e.Signal != syscall.SIGTERM {
		t.Fatalf("sleeper: %+v", e)
	}
	waitOutput(t, c, "stubborn", "ready")
	if err := c.Kill(ctx, "stubborn"); err != nil {
		t.Fatal(err)
	}
	if e := col.One("stubborn"); e.Signal != syscall.SIGKILL || e.String() != "signal SIGKILL" {
		t.Fatalf("stubborn: %+v", e)
	}

	for _, n := range []string{"echo", "sleeper", "stubborn"} {
		if err := c.Purge(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := c.Poll(ctx, "", nil); len(st) != 0 {
		t.Fatalf("after purge: %+v", st)
	}
	for name, err := range map[string]error{
		"stop":  c.Stop(ctx, "echo", 0),
		"kill":  c.Kill(ctx, "echo"),
		"send":  c.Send(ctx, "echo", nil),
		"purge": c.Purge(ctx, "echo"),
		"logs":  c.Logs(ctx, "echo", false, false, &bytes.Buffer{}),
	} {
		if !errors.Is(err, errdefs.ErrUnknownProcess) || !strings.Contains(err.Error(), name+" echo") {
			t.Errorf("%s unknown: %v", name, err)
		}
	}
}

func TestLogs(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	col := clusterExits(t, c)
	ctx := ctxT(t)
	dir := t.TempDir()

	// Explicit output paths, relative to the work dir.
	_, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{
		Name: "slow", Dir: dir, Stdout: "o.txt", Stderr: filepath.Join(dir, "e.txt"),
		Args: helper("out=one", "err=uh", "sleep=300ms", "out=two", "sleep=300ms", "out=three", "err=oh"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Logs(ctx, "slow", true, true, &errOut); err != nil {
			t.Error(err)
		}
	})
	if err := c.Logs(ctx, "slow", false, true, &out); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if out.String() != "one\ntwo\nthree\n" || errOut.String() != "uh\noh\n" {
		t.Fatalf("followed stdout %q, stderr %q", out.String(), errOut.String())
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "o.txt")); string(data) != out.String() {
		t.Fatalf("o.txt %q", data)
	}
	col.Wait("slow")

	// Without follow, and following an exited process: all there is, at once.
	for _, follow := range []bool{false, true} {
		var b bytes.Buffer
		if err := c.Logs(ctx, "slow", false, follow, &b); err != nil || b.String() != "one\ntwo\nthree\n" {
			t.Fatalf("follow=%v: %q, %v", follow, b.String(), err)
		}
	}

	// Following stops with its context.
	start(t, c, "n1", "long", helper("out=x", "sleep=30s")...)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var b bytes.Buffer
	if err := c.Logs(short, "long", false, true, &b); !errors.Is(err, context.DeadlineExceeded) || b.String() != "x\n" {
		t.Fatalf("follow until ctx ends: %q, %v", b.String(), err)
	}
	if err := c.Kill(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	col.Wait("long")
}

func TestCancelAll(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"), newAgent(t, "n2"))
	col := clusterExits(t, c)
	var names []string
	for i := range 6 {
		name := fmt.Sprintf("s%d", i)
		names = append(names, name)
		start(t, c, []string{"n1", "n2"}[i%2], name, helper("sleep=30s")...)
	}
	start(t, c, "n1", "stubborn", helper("ignoreterm", "out=ready", "sleep=30s")...)
	waitOutput(t, c, "stubborn", "ready")
	if err := c.CancelAll(ctxT(t), "", 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	exits := col.Wait(append(names, "stubborn")...)
	for _, e := range exits[:len(names)] {
		if e.Signal != syscall.SIGTERM {
			t.Errorf("%s: %+v", e.Name, e)
		}
	}
	if exits[len(names)].Signal != syscall.SIGKILL {
		t.Errorf("stubborn: %+v", exits[len(names)])
	}
	// Later starts run as usual.
	start(t, c, "n2", "after", helper()...)
	if e := col.One("after"); e.Code != 0 {
		t.Fatalf("after: %+v", e)
	}
}

func TestNodeVerbs(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"), newAgent(t, "n2"))
	col := clusterExits(t, c)
	ctx := ctxT(t)

	if err := c.SetEnv(ctx, "n1", "DROVER_TEST_X", "on-n1"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := c.GetEnv(ctx, "n1", "DROVER_TEST_X"); err != nil || !ok || v != "on-n1" {
		t.Fatalf("get env n1: %q %v %v", v, ok, err)
	}
	if _, ok, err := c.GetEnv(ctx, "n2", "DROVER_TEST_X"); err != nil || ok {
		t.Fatalf("get env n2: %v %v", ok, err)
	}
	start(t, c, "n1", "e1", helper("env=DROVER_TEST_X")...)
	start(t, c, "n2", "e2", helper("env=DROVER_TEST_X")...)
	col.Wait("e1", "e2")
	for name, want := range map[string]string{"e1": "DROVER_TEST_X=on-n1\n", "e2": "DROVER_TEST_X unset\n"} {
		var b bytes.Buffer
		if err := c.Logs(ctx, name, false, false, &b); err != nil || b.String() != want {
			t.Errorf("%s: %q %v", name, b.String(), err)
		}
	}

	ports, err := c.BindPorts(ctx, "n2", false, 2)
	if err != nil || len(ports) != 2 || ports[0] == ports[1] {
		t.Fatalf("bind: %v %v", ports, err)
	}
	if err := c.ReleasePorts(ctx, "n2", false, ports); err != nil {
		t.Fatal(err)
	}
	if err := c.ReleasePorts(ctx, "n2", false, ports); err == nil {
		t.Fatal("released twice")
	}
	udp, err := c.BindPorts(ctx, "n1", true, 1)
	if err != nil || len(udp) != 1 {
		t.Fatalf("bind udp: %v %v", udp, err)
	}
	if err := c.ReleasePorts(ctx, "n1", true, udp); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLogLevel(ctx, "n1", "debug"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLogLevel(ctx, "n1", "loud"); err == nil {
		t.Fatal("bad log level accepted")
	}

	for name, err := range map[string]error{
		"get env": func() error { _, _, err := c.GetEnv(ctx, "n9", "K"); return err }(),
		"set env": c.SetEnv(ctx, "n9", "K", "V"),
		"bind":    func() error { _, err := c.BindPorts(ctx, "n9", false, 1); return err }(),
		"release": c.ReleasePorts(ctx, "n9", false, []int{1}),
		"level":   c.SetLogLevel(ctx, "n9", "info"),
	} {
		if !errors.Is(err, errdefs.ErrUnknownNode) || !strings.Contains(err.Error(), "n9") {
			t.Errorf("%s on an unknown node: %v", name, err)
		}
	}
}

// parseJobs builds a job file from YAML text; the helper is the command.
func parseJobs(t *testing.T, text string) *jobfile.File {
	t.Helper()
	text = strings.ReplaceAll(text, "HELPER", strconv.Quote(helperExe))
	f, err := jobfile.Parse(filepath.Join(t.TempDir(), "jobs.yaml"), []byte(text))
	if err != nil {
		t.Fatalf("job file: %v", err)
	}
	return f
}

func (c *Cluster) waitSubmission(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	s := c.subByNum[n]
	c.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(backstop):
		t.Fatalf("submission %d did not end", n)
	}
}

func jobStates(t *testing.T, c *Cluster) map[string]JobInfo {
	t.Helper()
	jobs, err := c.Jobs(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]JobInfo)
	for _, j := range jobs {
		m[j.Process] = j
	}
	return m
}

func readEvents(t *testing.T, dir string) []results.Event {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, results.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []results.Event
	if err := results.ReadEvents(f, func(e results.Event) { evs = append(evs, e) }); err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestSubmitBesideStartedProcesses(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"), newAgent(t, "n2"))
	col := clusterExits(t, c)
	ctx := ctxT(t)
	// A process started with Start holds a core meanwhile.
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Cores: 1, Spec: node.ProcessSpec{Name: "side", Args: helper("sleep=30s")}}); err != nil {
		t.Fatal(err)
	}
	// A name in the way of a later submission's numbering: submission 1
	// must not take it.
	start(t, c, "n2", "1.sim.0", helper("exit=0")...)
	col.Wait("1.sim.0")

	f := parseJobs(t, `
jobs:
  - name: sim
    command: [HELPER, "out=sim {index}", "sleep=200ms"]
    repeat: 4
  - name: bad
    command: [HELPER, "err=oops", "exit=2"]
  - name: gate
    command: [HELPER, "stdin"]
`)
	names, err := c.Submit(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"2.sim.0", "2.sim.1", "2.sim.2", "2.sim.3", "2.bad", "2.gate"}
	if !slices.Equal(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
	// The submission's names are reserved, before and after they run.
	for _, n := range []string{"2.sim.3", "2.gate"} {
		if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: n, Args: helper()}}); !errors.Is(err, errdefs.ErrDuplicate) {
			t.Fatalf("start %s: %v", n, err)
		}
	}
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "2.other", Args: helper()}}); err != nil {
		t.Fatalf("2.other is no instance of submission 2: %v", err)
	}
	col.Wait("2.other")

	// The instances are verbs' processes under their cluster-wide names.
	waitFor(t, "2.gate running", func() bool { return jobStates(t, c)["2.gate"].State == JobRunning })
	if err := c.Send(ctx, "2.gate", []byte("through the gate\nquit\n")); err != nil {
		t.Fatal(err)
	}
	c.waitSubmission(t, 2)

	jobs := jobStates(t, c)
	for _, n := range want {
		j := jobs[n]
		wantState := results.StateSucceeded
		if n == "2.bad" {
			wantState = results.StateFailed
		}
		inst := strings.TrimPrefix(n, "2.")
		if j.State != wantState || j.Submission != 2 || j.Instance != inst || j.Attempts != 1 || j.Node == "" ||
			j.OutDir != filepath.Join(c.opts.Home, "runs", "2", inst) {
			t.Errorf("%s: %+v", n, j)
		}
	}
	if jobs["2.bad"].Outcome != "failed, exit 2" {
		t.Errorf("bad outcome %q", jobs["2.bad"].Outcome)
	}

	// The batch results layout in Home/runs/2/.
	dir := filepath.Join(c.opts.Home, "runs", "2")
	for i := range 4 {
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("sim.%d", i), "stdout"))
		if err != nil || string(data) != fmt.Sprintf("sim %d\n", i) {
			t.Errorf("sim.%d stdout %q %v", i, data, err)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "gate", "stdout")); string(data) != "got through the gate\n" {
		t.Errorf("gate stdout %q", data)
	}
	var sum results.Summary
	data, err := os.ReadFile(filepath.Join(dir, results.SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Total != 6 || sum.Succeeded != 5 || sum.Failed != 1 {
		t.Fatalf("summary %+v", sum)
	}
	// The queue saw its own instances only.
	for _, e := range readEvents(t, dir) {
		if e.Job != "" && !slices.Contains(want, "2."+e.Job) {
			t.Errorf("event of a foreign process in the submission's log: %+v", e)
		}
	}
	var b bytes.Buffer
	if err := c.Logs(ctx, "2.bad", true, false, &b); err != nil || b.String() != "oops\n" {
		t.Fatalf("logs 2.bad: %q %v", b.String(), err)
	}
	if st, err := c.Poll(ctx, "", []string{"2.bad"}); err != nil || st[0].State != node.Exited || st[0].Exit.Code != 2 {
		t.Fatalf("poll 2.bad: %+v %v", st, err)
	}
	// Submission exits never reach Finished; Poll lists Start-ed processes only.
	time.Sleep(100 * time.Millisecond)
	col.Wait()
	for n := range col.Got() {
		if strings.HasPrefix(n, "2.") && n != "2.other" {
			t.Errorf("submission instance %s in Finished", n)
		}
	}
	all, _ := c.Poll(ctx, "", nil)
	for _, s := range all {
		if slices.Contains(want, s.Name) {
			t.Errorf("poll lists instance %s", s.Name)
		}
	}
	// The side process was not disturbed and still holds its core.
	if st, _ := c.Poll(ctx, "", []string{"side"}); st[0].State != node.Running {
		t.Fatalf("side: %+v", st)
	}
	if err := c.Stop(ctx, "side", time.Second); err != nil {
		t.Fatal(err)
	}
	col.Wait("side")

	// A second submission gets the next number.
	names, err = c.Submit(ctx, parseJobs(t, "jobs:\n  - name: again\n    command: [HELPER]\n"))
	if err != nil || !slices.Equal(names, []string{"3.again"}) {
		t.Fatalf("second submission: %v %v", names, err)
	}
	c.waitSubmission(t, 3)
	if j := jobStates(t, c)["3.again"]; j.State != results.StateSucceeded {
		t.Fatalf("3.again: %+v", j)
	}
}

func TestSubmitQueuesBehindCores(t *testing.T) {
	a := newAgent(t, "n1")
	c := newCluster(t, a)
	col := clusterExits(t, c)
	ctx := ctxT(t)
	total := len(a.Resources().Cores)
	// Start holds every core: the submission must wait for them.
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Cores: total, Spec: node.ProcessSpec{Name: "hog", Args: helper("sleep=30s")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: w\n    command: [HELPER]\n    repeat: 3\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for n, j := range jobStates(t, c) {
		if j.State != JobPending {
			t.Fatalf("%s ran while every core was taken: %+v", n, j)
		}
	}
	if err := c.Kill(ctx, "hog"); err != nil {
		t.Fatal(err)
	}
	col.Wait("hog")
	c.waitSubmission(t, 1)
	for n, j := range jobStates(t, c) {
		if j.State != results.StateSucceeded {
			t.Errorf("%s: %+v", n, j)
		}
	}
}

func TestClosedAgentIsLost(t *testing.T) {
	a2 := newAgent(t, "n2")
	c := newCluster(t, newAgent(t, "n1"), a2)
	col := clusterExits(t, c)
	ctx := ctxT(t)
	start(t, c, "n2", "victim", helper("sleep=30s")...)
	if err := a2.Shutdown(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// The agent reported the exit itself before it went.
	if e := col.One("victim"); e.Signal != syscall.SIGTERM || e.Err != "" {
		t.Fatalf("victim: %+v", e)
	}
	waitFor(t, "n2 lost", func() bool {
		nodes, _ := c.Nodes(ctx)
		return len(nodes) == 2 && nodes[1].State == "lost"
	})
	if _, err := c.Start(ctx, StartRequest{Node: "n2", Spec: node.ProcessSpec{Name: "x", Args: helper()}}); !errors.Is(err, errdefs.ErrNodeLost) {
		t.Fatalf("start on a lost node: %v", err)
	}
	if err := c.SetEnv(ctx, "n2", "K", "V"); !errors.Is(err, errdefs.ErrNodeLost) {
		t.Fatalf("set env on a lost node: %v", err)
	}
	if nodes, _ := c.Nodes(ctx); nodes[0].State != "up" {
		t.Fatalf("n1: %+v", nodes[0])
	}
}

func TestLostNodeReportsItsProcessesLost(t *testing.T) {
	l := newLossy(t, "n2")
	c := newCluster(t, newAgent(t, "n1"), l)
	col := clusterExits(t, c)
	ctx := ctxT(t)
	if _, err := c.Start(ctx, StartRequest{Node: "n2", Cores: 1, Spec: node.ProcessSpec{Name: "gone", Args: helper("sleep=30s")}}); err != nil {
		t.Fatal(err)
	}
	start(t, c, "n1", "stays", helper("sleep=30s")...)
	// A submission with an instance on each node; the lost one is retried on n1.
	if _, err := c.Submit(ctx, parseJobs(t, `
jobs:
  - name: pinned
    command: [HELPER, "sleep=30s"]
    node: n2
  - name: roam
    command: [HELPER, "out=ok"]
    node: n1
`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1.pinned running", func() bool { return jobStates(t, c)["1.pinned"].State == JobRunning })

	l.lose()
	e := col.One("gone")
	if e.Code != -1 || e.Signal != 0 || e.Err != "node lost" || e.Node != "n2" {
		t.Fatalf("gone: %+v", e)
	}
	if st, _ := c.Poll(ctx, "", []string{"gone"}); st[0].State != node.Exited || st[0].Exit.Err != "node lost" {
		t.Fatalf("poll gone: %+v", st)
	}
	nodes, _ := c.Nodes(ctx)
	if nodes[1].Name != "n2" || nodes[1].State != "lost" || nodes[1].Processes != 0 || nodes[1].Error == "" {
		t.Fatalf("nodes %+v", nodes)
	}
	if c.pool.Free("n2") != 0 || c.pool.Busy("n2") != nil {
		t.Fatal("a lost node's cores are still in the pool")
	}
	c.waitSubmission(t, 1)
	jobs := jobStates(t, c)
	if j := jobs["1.pinned"]; j.State != results.StateLost || j.Node != "n2" {
		t.Errorf("pinned: %+v", j)
	}
	if j := jobs["1.roam"]; j.State != results.StateSucceeded {
		t.Errorf("roam: %+v", j)
	}
	if _, err := c.Start(ctx, StartRequest{Node: "n2", Spec: node.ProcessSpec{Name: "x", Args: helper()}}); !errors.Is(err, errdefs.ErrNodeLost) {
		t.Fatalf("start on a lost node: %v", err)
	}
	// A submission now runs on the nodes still up.
	names, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: later\n    command: [HELPER]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.waitSubmission(t, 2)
	if j := jobStates(t, c)[names[0]]; j.State != results.StateSucceeded || j.Node != "n1" {
		t.Fatalf("later: %+v", j)
	}
	if err := c.Kill(ctx, "stays"); err != nil {
		t.Fatal(err)
	}
	col.Wait("stays")
	time.Sleep(100 * time.Millisecond)
	col.Wait()
	if _, ok := col.Got()["1.pinned"]; ok {
		t.Fatal("a submission instance reached Finished")
	}
}

func TestShutdown(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"), newAgent(t, "n2"))
	col := clusterExits(t, c)
	ctx := ctxT(t)
	start(t, c, "n1", "a", helper("sleep=30s")...)
	start(t, c, "n2", "b", helper("ignoreterm", "out=ready", "sleep=30s")...)
	waitOutput(t, c, "b", "ready")
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: long\n    command: [HELPER, \"sleep=30s\"]\n    repeat: 8\n    retries: 3\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an instance running", func() bool {
		for _, j := range jobStates(t, c) {
			if j.State == JobRunning {
				return true
			}
		}
		return false
	})
	select {
	case <-c.Done():
		t.Fatal("done before shutdown")
	default:
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("not done after shutdown")
	}
	exits := col.Wait("a", "b")
	if exits[0].Signal != syscall.SIGTERM || exits[1].Signal != syscall.SIGKILL {
		t.Fatalf("exits %+v", exits)
	}
	running, cancelled := 0, 0
	for n, j := range jobStates(t, c) {
		switch {
		case j.State == results.StateCancelled && j.Attempts > 0:
			running++ // stopped while running
		case j.State == results.StateCancelled:
			cancelled++
		default:
			t.Errorf("%s: %+v", n, j)
		}
		if j.Attempts > 1 {
			t.Errorf("%s retried after the shutdown: %+v", n, j)
		}
	}
	if running == 0 || cancelled == 0 {
		t.Errorf("%d stopped, %d cancelled", running, cancelled)
	}
	if _, err := c.Start(ctx, StartRequest{Node: "n1", Spec: node.ProcessSpec{Name: "late", Args: helper()}}); !errors.Is(err, errdefs.ErrClosed) {
		t.Fatalf("start after shutdown: %v", err)
	}
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: late\n    command: [HELPER]\n")); !errors.Is(err, errdefs.ErrClosed) {
		t.Fatalf("submit after shutdown: %v", err)
	}
}

func TestHomeNumbersSkipExistingRuns(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	if err := os.MkdirAll(filepath.Join(c.opts.Home, "runs", "1"), 0o755); err != nil {
		t.Fatal(err)
	}
	names, err := c.Submit(ctxT(t), parseJobs(t, "jobs:\n  - name: j\n    command: [HELPER]\n"))
	if err != nil || !slices.Equal(names, []string{"2.j"}) {
		t.Fatalf("%v %v", names, err)
	}
	c.waitSubmission(t, 2)
	if _, err := os.Stat(filepath.Join(c.opts.Home, "runs", "2", results.SummaryFile)); err != nil {
		t.Fatal(err)
	}
}

func TestSubmitTimeoutAndRetry(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	ctx := ctxT(t)
	if _, err := c.Submit(ctx, parseJobs(t, `
jobs:
  - name: slow
    command: [HELPER, "sleep=30s"]
    timeout: 300ms
  - name: flaky
    command: [HELPER, "exit=5"]
    retries: 2
`)); err != nil {
		t.Fatal(err)
	}
	c.waitSubmission(t, 1)
	jobs := jobStates(t, c)
	if j := jobs["1.slow"]; j.State != results.StateFailed || !strings.Contains(j.Outcome, "timed out") || !strings.Contains(j.Outcome, "SIGTERM") {
		t.Errorf("slow: %+v", j)
	}
	if j := jobs["1.flaky"]; j.State != results.StateFailed || j.Attempts != 3 || j.Outcome != "failed, exit 5" {
		t.Errorf("flaky: %+v", j)
	}
	if st, err := c.Poll(ctx, "", []string{"1.flaky"}); err != nil || st[0].Exit.Code != 5 {
		t.Fatalf("poll: %+v %v", st, err)
	}
}

func TestCloseStopsSubmissions(t *testing.T) {
	c := New(Options{Home: t.TempDir(), Grace: time.Second})
	c.AddNode(newAgent(t, "n1"))
	ctx := ctxT(t)
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: long\n    command: [HELPER, \"sleep=30s\"]\n    repeat: 3\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1.long.0 running", func() bool { return jobStates(t, c)["1.long.0"].State == JobRunning })
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for n, j := range jobStates(t, c) {
		if j.State != results.StateFailed && j.State != results.StateCancelled {
			t.Errorf("%s: %+v", n, j)
		}
	}
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: late\n    command: [HELPER]\n")); !errors.Is(err, errdefs.ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
}

func TestCloseGivesUpOnSubmissions(t *testing.T) {
	c := New(Options{Home: t.TempDir(), Grace: 30 * time.Second})
	c.AddNode(newAgent(t, "n1"))
	ctx := ctxT(t)
	if _, err := c.Submit(ctx, parseJobs(t, "jobs:\n  - name: stubborn\n    command: [HELPER, ignoreterm, out=ready, \"sleep=30s\"]\n")); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, c, "1.stubborn", "ready")
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close: %v", err)
	}
	if j := jobStates(t, c)["1.stubborn"]; j.State != results.StateLost {
		t.Fatalf("stubborn: %+v", j)
	}
}

// Finished with a wait blocks until an exit comes and returns it then; with
// nothing to come it returns none once the wait is over.
func TestFinishedWaits(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	if f, err := exitsOf(c, ctxT(t), 20*time.Millisecond); err != nil || len(f) != 0 {
		t.Fatalf("Finished with nothing running: %+v %v", f, err)
	}
	start(t, c, "n1", "waiter", helper("stdin")...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan []node.Exit, 1)
	go func() {
		f, err := exitsOf(c, ctx, time.Hour)
		if err != nil {
			t.Error(err)
		}
		got <- f
	}()
	if err := c.Send(ctx, "waiter", []byte("quit\n")); err != nil {
		t.Fatal(err)
	}
	f := <-got
	if ctx.Err() != nil {
		t.Fatalf("Finished returned only when its context ended: %+v", f)
	}
	if len(f) != 1 || f[0].Name != "waiter" || f[0].Code != 0 {
		t.Fatalf("Finished returned %+v, want the exit of waiter", f)
	}
}

// The longest name a process may have still names its default output
// files, and each process's go to its own.
func TestLongestNameHasItsOwnOutputFiles(t *testing.T) {
	c := newCluster(t, newAgent(t, "n1"))
	col := clusterExits(t, c)
	long := strings.Repeat("n", MaxNameLen)
	start(t, c, "n1", long, helper("out=long")...)
	start(t, c, "n1", "n", helper("out=short")...)
	for name, want := range map[string]string{long: "long", "n": "short"} {
		if e := col.One(name); e.Code != 0 || e.Err != "" {
			t.Fatalf("exit of %.10s…: %+v", name, e)
		}
		var out bytes.Buffer
		if err := c.Logs(ctxT(t), name, false, false, &out); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out.String()) != want {
			t.Errorf("stdout of %.10s…: %q, want %q", name, out.String(), want)
		}
	}
}
