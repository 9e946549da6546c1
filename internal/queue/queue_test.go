package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// backstop bounds every wait; the tests assert outcomes, never durations.
const backstop = 90 * time.Second

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

// newAgent starts an in-process agent for this machine under the given
// node name; it is closed when the test ends.
func newAgent(t *testing.T, name string) *agent.Agent {
	t.Helper()
	res := detect(t)
	res.Node = name
	a, err := agent.New(agent.Options{Name: name, Resources: res, Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(5 * time.Second); err != nil {
			t.Errorf("close agent %s: %v", name, err)
		}
	})
	return a
}

// job builds a validated job running the helper with steps.
func job(t *testing.T, name string, mod func(*jobfile.Job), steps ...string) *jobfile.Job {
	t.Helper()
	j := &jobfile.Job{Name: name, Command: helper(steps...)}
	if mod != nil {
		mod(j)
	}
	if err := j.Validate(); err != nil {
		t.Fatalf("job %s: %v", name, err)
	}
	return j
}

func retries(n int) *int { return &n }

// outcome is what a Run left behind.
type outcome struct {
	sum    *results.Summary // as returned
	disk   results.Summary  // summary.json, which lists every instance
	events []results.Event  // of this run only: from its run-start on
	all    []results.Event  // the whole log
	out    string
	last   queue.Counts
}

// final returns the final events of the instance in this run.
func (o *outcome) final(name string) []results.Event {
	var f []results.Event
	for _, e := range o.events {
		if e.Job == name && e.Final() {
			f = append(f, e)
		}
	}
	return f
}

// only returns the one final event of name, failing the test otherwise.
func (o *outcome) only(t *testing.T, name string) results.Event {
	t.Helper()
	f := o.final(name)
	if len(f) != 1 {
		t.Fatalf("%s: %d final events: %+v", name, len(f), f)
	}
	return f[0]
}

func (o *outcome) of(name, kind string) []results.Event {
	var f []results.Event
	for _, e := range o.events {
		if e.Job == name && e.Event == kind {
			f = append(f, e)
		}
	}
	return f
}

// attempts lists name's events of this run as "event/attempt".
func (o *outcome) attempts(name string) []string {
	var seq []string
	for _, e := range o.events {
		if e.Job == name {
			seq = append(seq, fmt.Sprintf("%s/%d", e.Event, e.Attempt))
		}
	}
	return seq
}

func (o *outcome) instance(t *testing.T, name string) results.InstanceResult {
	t.Helper()
	for _, in := range o.disk.Instances {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("no instance %s in summary.json", name)
	return results.InstanceResult{}
}

func (o *outcome) file(t *testing.T, parts ...string) string {
	t.Helper()
	return readFile(t, filepath.Join(append([]string{o.out}, parts...)...))
}

// run runs jobs to completion and checks what must hold after every run:
// exactly one final event per instance run, a summary that matches the
// events and the file, and no process left running.
func run(t *testing.T, ctx context.Context, jobs []*jobfile.Job, opts queue.Options) *outcome {
	t.Helper()
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(t.TempDir(), "out")
	}
	if opts.Nodes == nil {
		opts.Nodes = []node.Node{newAgent(t, "n1")}
	}
	o := &outcome{out: opts.OutDir}
	var mu sync.Mutex
	opts.Progress = func(c queue.Counts) {
		mu.Lock()
		o.last = c
		mu.Unlock()
	}
	type ran struct {
		sum *results.Summary
		err error
	}
	done := make(chan ran, 1)
	go func() {
		sum, err := queue.Run(ctx, jobs, opts)
		done <- ran{sum, err}
	}()
	var r ran
	select {
	case r = <-done:
	case <-time.After(backstop):
		t.Errorf("queue.Run did not return; closing the nodes")
		for _, n := range opts.Nodes {
			n.Close()
		}
		r = <-done
	}
	if r.err != nil {
		t.Fatalf("queue.Run: %v", r.err)
	}
	o.sum = r.sum
	o.check(t)
	return o
}

func (o *outcome) check(t *testing.T) {
	t.Helper()
	f, err := os.Open(filepath.Join(o.out, results.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := results.ReadEvents(f, func(e results.Event) { o.all = append(o.all, e) }); err != nil {
		t.Fatal(err)
	}
	startAt := -1
	for i, e := range o.all {
		if e.Event == results.RunStart {
			startAt = i
		}
	}
	if startAt < 0 {
		t.Fatal("no run-start event")
	}
	o.events = o.all[startAt:]
	if last := o.events[len(o.events)-1]; last.Event != results.RunEnd {
		t.Errorf("the log does not end with run-end: %+v", last)
	}
	for _, e := range o.events {
		if e.Time.IsZero() {
			t.Errorf("event without time: %+v", e)
		}
	}

	// The summary on disk has the counts returned, and lists every instance.
	disk := &o.disk
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(o.out, results.SummaryFile))), disk); err != nil {
		t.Fatal(err)
	}
	s := o.sum
	if disk.Total != s.Total || disk.Succeeded != s.Succeeded || disk.Failed != s.Failed || disk.Lost != s.Lost ||
		disk.Cancelled != s.Cancelled || disk.Skipped != s.Skipped || disk.StoppedBecause != s.StoppedBecause {
		t.Errorf("summary.json %+v differs from the returned summary %+v", *disk, *s)
	}
	count := map[string]int{}
	for _, in := range disk.Instances {
		count[in.State]++
	}
	if len(disk.Instances) != s.Total || count[results.StateSucceeded] != s.Succeeded || count[results.StateFailed] != s.Failed ||
		count[results.StateLost] != s.Lost || count[results.StateCancelled] != s.Cancelled || count[results.StateSkipped] != s.Skipped {
		t.Errorf("summary counts %+v do not match its %d instances %v", *s, len(disk.Instances), count)
	}
	if s.Total != s.Succeeded+s.Failed+s.Lost+s.Cancelled+s.Skipped {
		t.Errorf("summary total %d, counts %+v", s.Total, *s)
	}
	// The returned summary yields (at least) every instance that did not succeed.
	returned := map[string]results.InstanceResult{}
	for in := range s.NotSucceeded() {
		returned[in.Name] = in
	}
	for _, in := range disk.Instances {
		if in.State == results.StateSucceeded || in.State == results.StateSkipped {
			continue
		}
		if r, ok := returned[in.Name]; !ok || r.State != in.State || r.Attempts != in.Attempts || r.Error != in.Error {
			t.Errorf("%s: returned %+v, summary.json %+v", in.Name, r, in)
		}
	}
	if o.last.Done() != s.Total || o.last.Running != 0 {
		t.Errorf("last progress %+v, total %d", o.last, s.Total)
	}

	// Exactly one final event per instance (none for skipped ones), and it
	// agrees with the summary.
	names := map[string]bool{}
	for _, in := range disk.Instances {
		if names[in.Name] {
			t.Errorf("%s twice in the summary", in.Name)
		}
		names[in.Name] = true
		f := o.final(in.Name)
		if in.State == results.StateSkipped && in.Error == "" { // done before (--resume)
			if len(f) != 0 || len(o.of(in.Name, results.Started)) != 0 {
				t.Errorf("skipped %s has events: %+v", in.Name, f)
			}
			continue
		}
		if len(f) != 1 {
			t.Errorf("%s: %d final events, want 1: %+v", in.Name, len(f), f)
			continue
		}
		e := f[0]
		var want string
		switch e.Event {
		case results.Finished:
			want = results.StateFailed
			switch {
			case e.ExitCode != nil && *e.ExitCode == 0 && e.Signal == "" && e.Error == "":
				want = results.StateSucceeded
			case in.State == results.StateCancelled && s.StoppedBecause != "":
				want = results.StateCancelled // stopped with the run
			}
			if (e.ExitCode == nil) == (e.Signal == "") {
				t.Errorf("%s: finished needs exit_code or signal: %+v", in.Name, e)
			}
		case results.Failed:
			want = results.StateFailed
			if in.State == results.StateCancelled || in.State == results.StateSkipped {
				want = in.State // stopped with the run; a dependency did not succeed
			}
			if e.Error == "" {
				t.Errorf("%s: failed event without error", in.Name)
			}
		case results.Lost:
			want = results.StateLost
		}
		if in.State != want || e.State != in.State {
			t.Errorf("%s: state %s, but final event %+v", in.Name, in.State, e)
		}
		if e.Attempt != in.Attempts {
			t.Errorf("%s: final event attempt %d, summary attempts %d", in.Name, e.Attempt, in.Attempts)
		}
		if !equalPtr(e.ExitCode, in.ExitCode) || e.Signal != in.Signal || e.Error != in.Error {
			t.Errorf("%s: summary %+v disagrees with final event %+v", in.Name, in, e)
		}
	}
	for _, e := range o.events {
		if e.Job != "" && !names[e.Job] {
			t.Errorf("event for an instance not in the summary: %+v", e)
		}
	}
}

func equalPtr(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// noChildLeft checks that no process the run started is alive.
func (o *outcome) noChildLeft(t *testing.T) {
	t.Helper()
	for _, e := range o.events {
		if e.Event == results.Started {
			if e.PID <= 0 {
				t.Errorf("started event without pid: %+v", e)
				continue
			}
			waitGone(t, e.PID)
		}
	}
}

func code(n int) *int { return &n }

func TestRunBasics(t *testing.T) {
	jobs := []*jobfile.Job{
		job(t, "ok", func(j *jobfile.Job) { j.Repeat = 3 }, "out=hello {index}", "err=E{index}"),
		job(t, "fail", nil, "out=failing", "exit=3"),
		job(t, "sig", nil, "kill=9"),
	}
	o := run(t, context.Background(), jobs, queue.Options{})
	s := o.sum
	if s.Total != 5 || s.Succeeded != 3 || s.Failed != 2 || s.OK() {
		t.Errorf("summary %+v", *s)
	}
	for i := range 3 {
		name := fmt.Sprintf("ok.%d", i)
		e := o.only(t, name)
		if e.Event != results.Finished || !equalPtr(e.ExitCode, code(0)) || e.Node != "n1" || e.Attempt != 1 {
			t.Errorf("%s: %+v", name, e)
		}
		if got := o.file(t, name, "stdout"); got != fmt.Sprintf("hello %d\n", i) {
			t.Errorf("%s stdout %q", name, got)
		}
		if got := o.file(t, name, "stderr"); got != fmt.Sprintf("E%d\n", i) {
			t.Errorf("%s stderr %q", name, got)
		}
		if st := o.of(name, results.Started); len(st) != 1 || st[0].Node != "n1" || st[0].HWThreads == "" {
			t.Errorf("%s started events %+v", name, st)
		}
		if in := o.instance(t, name); in.State != results.StateSucceeded || in.Node != "n1" || in.Attempts != 1 ||
			in.Start.IsZero() || in.End.IsZero() {
			t.Errorf("%s summary %+v", name, in)
		}
	}
	e := o.only(t, "fail")
	if e.Event != results.Finished || !equalPtr(e.ExitCode, code(3)) || e.Signal != "" {
		t.Errorf("fail: %+v", e)
	}
	if in := o.instance(t, "fail"); in.State != results.StateFailed || !equalPtr(in.ExitCode, code(3)) {
		t.Errorf("fail summary %+v", in)
	}
	if got := o.file(t, "fail", "stdout"); got != "failing\n" {
		t.Errorf("fail stdout %q", got)
	}
	e = o.only(t, "sig")
	if e.Event != results.Finished || e.Signal != "SIGKILL" || e.ExitCode != nil {
		t.Errorf("sig: %+v", e)
	}
	if in := o.instance(t, "sig"); in.State != results.StateFailed || in.Signal != "SIGKILL" {
		t.Errorf("sig summary %+v", in)
	}
	var up []string
	for _, e := range o.events {
		if e.Event == results.NodeUp {
			up = append(up, e.Node)
			if e.Cores != len(detect(t).Cores) {
				t.Errorf("node-up %+v", e)
			}
		}
	}
	if !slices.Equal(up, []string{"n1"}) {
		t.Errorf("node-up events for %v", up)
	}
	o.noChildLeft(t)
}

func TestInstanceEnvironmentAndCommand(t *testing.T) {
	res := detect(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "input.txt"), []byte("staged"), 0o644); err != nil {
		t.Fatal(err)
	}
	wide := len(res.Cores)
	vars := []string{"env=DROVER_JOB", "env=DROVER_INSTANCE", "env=DROVER_INDEX", "env=OMP_NUM_THREADS",
		"env=DROVER_NODE", "env=DROVER_WORKDIR", "env=DROVER_HWTHREADS", "env=DROVER_PORT_CTL", "env=MINE", "cpus", "cwd"}
	jobs := []*jobfile.Job{
		job(t, "e", func(j *jobfile.Job) {
			j.Repeat = 3
			j.Env = map[string]string{"MINE": "mine"}
		}, append([]string{"out=arg={index}", "out=x{index}y={index}"}, vars...)...),
		job(t, "omp", func(j *jobfile.Job) { j.Env = map[string]string{"OMP_NUM_THREADS": "7"} }, vars...),
		job(t, "wide", func(j *jobfile.Job) { j.Cores = wide }, vars...),
		job(t, "port", func(j *jobfile.Job) {
			j.Ports = []string{"ctl"}
			j.Command = helper(append([]string{"listen={port:ctl}", "out=port={port:ctl}"}, vars...)...)
		}),
		job(t, "files", func(j *jobfile.Job) {
			j.Files = []string{"input.txt"}
			j.Outputs = []string{"*.csv"}
		}, "cat=input.txt", "write=result.csv=computed", "write=scratch.txt=no"),
		job(t, "setup", func(j *jobfile.Job) {
			j.Setup = []string{"export FROM_SETUP=yes{index}"}
		}, "env=FROM_SETUP"),
		{Name: "shell", Shell: `echo "$DROVER_INSTANCE {index}"; exit 4`, Repeat: 2},
	}
	if err := jobs[len(jobs)-1].Validate(); err != nil {
		t.Fatal(err)
	}
	o := run(t, context.Background(), jobs, queue.Options{BaseDir: src})
	if o.sum.Succeeded != o.sum.Total-2 {
		t.Errorf("summary %+v", *o.sum)
	}
	check := func(inst string, want map[string]string) map[string]string {
		t.Helper()
		got := lines(o.file(t, inst, "stdout"))
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s=%q, want %q", inst, k, got[k], v)
			}
		}
		if got["DROVER_WORKDIR"] == "" || got["DROVER_WORKDIR"] != got["cwd"] {
			t.Errorf("%s: DROVER_WORKDIR %q, cwd %q", inst, got["DROVER_WORKDIR"], got["cwd"])
		}
		if hw, cpus := got["DROVER_HWTHREADS"], got["cpus"]; hw == "" || !slices.Equal(cpuSet(t, hw), cpuSet(t, cpus)) {
			t.Errorf("%s: DROVER_HWTHREADS %q but bound to %q", inst, hw, cpus)
		}
		return got
	}
	for i := range 3 {
		idx := strconv.Itoa(i)
		check("e."+idx, map[string]string{
			"arg": idx, "x" + idx + "y": idx,
			"DROVER_JOB": "e", "DROVER_INSTANCE": "e." + idx, "DROVER_INDEX": idx,
			"OMP_NUM_THREADS": "1", "DROVER_NODE": "n1", "MINE": "mine",
		})
	}
	check("omp", map[string]string{"DROVER_JOB": "omp", "DROVER_INSTANCE": "omp", "DROVER_INDEX": "0", "OMP_NUM_THREADS": "7"})
	got := check("wide", map[string]string{"OMP_NUM_THREADS": strconv.Itoa(wide)})
	if all := slices.Sorted(slices.Values(res.HWThreads())); !slices.Equal(cpuSet(t, got["cpus"]), all) {
		t.Errorf("wide (cores=%d) bound to %q, want every hwthread %v", wide, got["cpus"], all)
	}
	got = check("port", nil)
	if p := got["port"]; p == "" || p != got["DROVER_PORT_CTL"] || !strings.Contains(o.file(t, "port", "stdout"), "listened "+p) {
		t.Errorf("port: {port:ctl}=%q, DROVER_PORT_CTL=%q", p, got["DROVER_PORT_CTL"])
	}
	if got := o.file(t, "files", "stdout"); got != "cat input.txt mode=644 content=\"staged\"\n" {
		t.Errorf("files: staged file seen as %q", got)
	}
	if got := o.file(t, "files", "result.csv"); got != "computed" {
		t.Errorf("files: output %q", got)
	}
	if _, err := os.Stat(filepath.Join(o.out, "files", "scratch.txt")); err == nil {
		t.Error("files: a file matching no output pattern was copied back")
	}
	if got := o.file(t, "setup", "stdout"); got != "FROM_SETUP=yes0\n" {
		t.Errorf("setup: %q", got)
	}
	for i := range 2 {
		name := fmt.Sprintf("shell.%d", i)
		if got := o.file(t, name, "stdout"); got != fmt.Sprintf("%s %d\n", name, i) {
			t.Errorf("%s: %q", name, got)
		}
		if e := o.only(t, name); !equalPtr(e.ExitCode, code(4)) {
			t.Errorf("%s: %+v", name, e)
		}
	}
	o.noChildLeft(t)
}

func TestBadInputsFailAlone(t *testing.T) {
	res := detect(t)
	tmp := t.TempDir()
	regular := filepath.Join(tmp, "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	jobs := []*jobfile.Job{
		{Name: "noexe", Command: []string{filepath.Join(tmp, "no-such-program")}},
		{Name: "nopath", Command: []string{"drover-test-no-such-program"}},
		job(t, "nodir", func(j *jobfile.Job) { j.Workdir = filepath.Join(tmp, "missing-dir") }, "exit=0"),
		job(t, "nonode", func(j *jobfile.Job) { j.Node = "nope"; j.Repeat = 2 }, "exit=0"),
		job(t, "toobig", func(j *jobfile.Job) { j.Cores = len(res.Cores) + 1 }, "exit=0"),
		job(t, "toobig-here", func(j *jobfile.Job) { j.Cores = len(res.Cores) + 1; j.Node = "n1" }, "exit=0"),
		job(t, "nofile", func(j *jobfile.Job) { j.Files = []string{"missing.txt"} }, "exit=0"),
		job(t, "good", func(j *jobfile.Job) { j.Repeat = 4 }, "out=fine"),
	}
	for _, j := range jobs[:2] {
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	o := run(t, context.Background(), jobs, queue.Options{BaseDir: tmp})
	wantErr := map[string]string{
		"noexe":       "not found",
		"nopath":      "not found",
		"nodir":       "missing-dir",
		"nonode.0":    `no node named "nope"`,
		"nonode.1":    `no node named "nope"`,
		"toobig":      fmt.Sprintf("needs %d cores", len(res.Cores)+1),
		"toobig-here": fmt.Sprintf("node n1 has %d", len(res.Cores)),
		"nofile":      "missing.txt",
	}
	for name, want := range wantErr {
		e := o.only(t, name)
		if e.Event != results.Failed || !strings.Contains(e.Error, want) {
			t.Errorf("%s: %+v, want a failed event with %q", name, e, want)
		}
		if in := o.instance(t, name); in.State != results.StateFailed {
			t.Errorf("%s: state %s", name, in.State)
		}
		if st := o.of(name, results.Started); len(st) != 0 {
			t.Errorf("%s: started %+v", name, st)
		}
	}
	for i := range 4 {
		name := fmt.Sprintf("good.%d", i)
		if in := o.instance(t, name); in.State != results.StateSucceeded {
			t.Errorf("%s: %+v", name, in)
		}
		if got := o.file(t, name, "stdout"); got != "fine\n" {
			t.Errorf("%s stdout %q", name, got)
		}
	}
	if s := o.sum; s.Failed != len(wantErr) || s.Succeeded != 4 {
		t.Errorf("summary %+v", *s)
	}
	o.noChildLeft(t)
}

func TestRetries(t *testing.T) {
	wd := t.TempDir()
	jobs := []*jobfile.Job{
		// Fails the first time (no marker yet in its fixed work dir).
		job(t, "flaky", func(j *jobfile.Job) { j.Workdir = wd; j.Retries = retries(1) }, "marker=flaky.marker=3", "exit=0"),
		job(t, "hopeless", func(j *jobfile.Job) { j.Retries = retries(2) }, "out=try", "exit=5"),
		job(t, "default", nil, "exit=6"),                                             // Options.Retries applies
		job(t, "noretry", func(j *jobfile.Job) { j.Retries = retries(0) }, "exit=7"), // overrides it
	}
	o := run(t, context.Background(), jobs, queue.Options{Retries: 1})

	e := o.only(t, "flaky")
	if e.Event != results.Finished || !equalPtr(e.ExitCode, code(0)) || e.Attempt != 2 {
		t.Errorf("flaky final %+v", e)
	}
	if in := o.instance(t, "flaky"); in.State != results.StateSucceeded || in.Attempts != 2 {
		t.Errorf("flaky summary %+v", in)
	}
	af := o.of("flaky", results.AttemptFailed)
	if len(af) != 1 || af[0].Attempt != 1 || !equalPtr(af[0].ExitCode, code(3)) {
		t.Errorf("flaky attempt-failed events %+v", af)
	}
	if st := o.of("flaky", results.Started); len(st) != 2 || st[0].Attempt != 1 || st[1].Attempt != 2 {
		t.Errorf("flaky started events %+v", st)
	}
	if got := o.file(t, "flaky", "attempt-1", "stdout"); got != "first attempt\n" {
		t.Errorf("first attempt's stdout %q", got)
	}
	if got := o.file(t, "flaky", "stdout"); got != "later attempt\n" {
		t.Errorf("second attempt's stdout %q", got)
	}
	// The order in the log: attempt 1 fails before attempt 2 starts.
	if seq, want := o.attempts("flaky"), []string{"started/1", "attempt-failed/1", "started/2", "finished/2"}; !slices.Equal(seq, want) {
		t.Errorf("flaky events %v, want %v", seq, want)
	}

	for name, want := range map[string]struct{ attempts, code int }{"hopeless": {3, 5}, "default": {2, 6}, "noretry": {1, 7}} {
		in := o.instance(t, name)
		if in.State != results.StateFailed || in.Attempts != want.attempts || !equalPtr(in.ExitCode, code(want.code)) {
			t.Errorf("%s: %+v, want %d attempts", name, in, want.attempts)
		}
		if af := o.of(name, results.AttemptFailed); len(af) != want.attempts-1 {
			t.Errorf("%s: %d attempt-failed events", name, len(af))
		}
	}
	for i := 1; i <= 2; i++ {
		if got := o.file(t, "hopeless", fmt.Sprintf("attempt-%d", i), "stdout"); got != "try\n" {
			t.Errorf("hopeless attempt %d stdout %q", i, got)
		}
	}
	o.noChildLeft(t)
}

func TestTimeout(t *testing.T) {
	dir := t.TempDir()
	gpid := func(name string) string { return filepath.Join(dir, name+".pid") }
	// slow and stubborn must have made their grandchild (and stubborn
	// must ignore SIGTERM) before the timeout strikes: a loaded machine
	// can take more than a second to start a race-built helper.
	jobs := []*jobfile.Job{
		job(t, "slow", func(j *jobfile.Job) { j.Timeout = 3 * time.Second },
			"grandchild="+gpid("slow"), "sleep=2m"),
		job(t, "stubborn", func(j *jobfile.Job) { j.Timeout = 3 * time.Second },
			"ignoreterm", "grandchild="+gpid("stubborn"), "sleep=2m"),
		job(t, "again", func(j *jobfile.Job) { j.Timeout = 300 * time.Millisecond; j.Retries = retries(1) }, "sleep=2m"),
		job(t, "quick", func(j *jobfile.Job) { j.Timeout = time.Hour }, "exit=0"),
	}
	o := run(t, context.Background(), jobs, queue.Options{Grace: 500 * time.Millisecond})
	for name, sig := range map[string]string{"slow": "SIGTERM", "stubborn": "SIGKILL", "again": "SIGTERM"} {
		e := o.only(t, name)
		if e.Event != results.Finished || e.Signal != sig || !strings.Contains(e.Error, "timed out") {
			t.Errorf("%s: %+v, want finished with %s and \"timed out\"", name, e, sig)
		}
		if in := o.instance(t, name); in.State != results.StateFailed {
			t.Errorf("%s: state %s", name, in.State)
		}
	}
	if in := o.instance(t, "again"); in.Attempts != 2 {
		t.Errorf("again: %d attempts", in.Attempts)
	}
	if af := o.of("again", results.AttemptFailed); len(af) != 1 || !strings.Contains(af[0].Error, "timed out") {
		t.Errorf("again: attempt-failed %+v", af)
	}
	if in := o.instance(t, "quick"); in.State != results.StateSucceeded {
		t.Errorf("quick: %+v", in)
	}
	o.noChildLeft(t)
	for _, name := range []string{"slow", "stubborn"} {
		pid, err := strconv.Atoi(readFile(t, gpid(name)))
		if err != nil {
			t.Fatal(err)
		}
		waitGone(t, pid)
	}
}

func TestCancelStopsTheRun(t *testing.T) {
	res := detect(t)
	n := len(res.Cores)
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "long", func(j *jobfile.Job) { j.Repeat = n + 3; j.Retries = retries(2) },
			"grandchild="+filepath.Join(dir, "{index}.pid"), "touch="+filepath.Join(dir, "{index}.ready"), "sleep=2m"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Cancel once every core is busy.
		for {
			entries, _ := os.ReadDir(dir)
			ready := 0
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".ready") {
					ready++
				}
			}
			if ready >= n || ctx.Err() != nil {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	o := run(t, ctx, jobs, queue.Options{Grace: 5 * time.Second})
	s := o.sum
	// Running or not, every instance is cancelled: not failed.
	if s.StoppedBecause == "" || s.Cancelled != n+3 || s.Failed != 0 || s.Succeeded != 0 {
		t.Errorf("summary %+v", *s)
	}
	stopped := 0
	for _, in := range o.disk.Instances {
		e := o.only(t, in.Name)
		switch {
		case in.State != results.StateCancelled:
			t.Errorf("%s: state %s, want cancelled", in.Name, in.State)
		case len(o.of(in.Name, results.Started)) != 0: // was running: stopped, not retried
			stopped++
			if e.Event != results.Finished || e.Signal != "SIGTERM" || in.Attempts != 1 {
				t.Errorf("%s: %+v", in.Name, e)
			}
		default:
			if e.Event != results.Failed || e.Error == "" {
				t.Errorf("%s: %+v", in.Name, e)
			}
		}
	}
	if stopped != n {
		t.Errorf("%d instances stopped, want %d", stopped, n)
	}
	if end := o.events[len(o.events)-1]; end.Event != results.RunEnd || end.Error == "" {
		t.Errorf("run-end %+v", end)
	}
	o.noChildLeft(t)
	for i := range n + 3 {
		if data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d.pid", i))); err == nil {
			pid, _ := strconv.Atoi(string(data))
			waitGone(t, pid)
		}
	}
}

func TestResume(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	a := newAgent(t, "n1")
	opts := queue.Options{OutDir: out, Nodes: []node.Node{a}}
	log := filepath.Join(t.TempDir(), "ran")
	// Instance i exits with status i: only r.0 succeeds.
	first := []*jobfile.Job{job(t, "r", func(j *jobfile.Job) { j.Repeat = 4 }, "stamp="+log+"=first", "out=first {index}", "exit={index}")}
	o := run(t, context.Background(), first, opts)
	for i := range 4 {
		e := o.only(t, fmt.Sprintf("r.%d", i))
		if !equalPtr(e.ExitCode, code(i)) {
			t.Errorf("r.%d: %+v ({index} not replaced?)", i, e)
		}
	}
	prior, err := results.ReadPrior(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(prior.Succeeded) != 1 || !prior.Succeeded["r.0"] {
		t.Fatalf("succeeded %v", prior.Succeeded)
	}
	if want := map[string]int{"r.1": 1, "r.2": 1, "r.3": 1}; !maps.Equal(prior.Attempts, want) {
		t.Fatalf("prior attempts %v, want %v", prior.Attempts, want)
	}

	// The second run (a fixed job) does not run r.0 again; the others go
	// on with attempt 2, the first run's output kept aside.
	second := []*jobfile.Job{job(t, "r", func(j *jobfile.Job) { j.Repeat = 4 }, "stamp="+log+"=second", "out=second {index}", "exit=0")}
	opts.Skip, opts.Prior = prior.Succeeded, prior.Attempts
	o = run(t, context.Background(), second, opts)
	for i := 1; i < 4; i++ {
		name := fmt.Sprintf("r.%d", i)
		if st := o.of(name, results.Started); len(st) != 1 || st[0].Attempt != 2 {
			t.Errorf("%s: started events %+v, want one of attempt 2", name, st)
		}
		if got, want := o.file(t, name, "attempt-1", "stdout"), fmt.Sprintf("first %d\n", i); got != want {
			t.Errorf("%s: the first run's stdout %q, want %q", name, got, want)
		}
		if got, want := o.file(t, name, "stdout"), fmt.Sprintf("second %d\n", i); got != want {
			t.Errorf("%s: stdout %q, want %q", name, got, want)
		}
	}
	if got := o.file(t, "r.0", "stdout"); got != "first 0\n" {
		t.Errorf("r.0 (skipped): stdout %q", got)
	}
	if s := o.sum; s.Skipped != 1 || s.Succeeded != 3 || s.Total != 4 || !s.OK() {
		t.Errorf("second summary %+v", *s)
	}
	if in := o.instance(t, "r.0"); in.State != results.StateSkipped {
		t.Errorf("r.0: %+v", in)
	}
	var ran []string
	for _, l := range strings.Split(strings.TrimSpace(readFile(t, log)), "\n") {
		f := strings.Fields(l)
		ran = append(ran, f[0]+" "+f[2])
	}
	slices.Sort(ran)
	want := []string{"first r.0", "first r.1", "first r.2", "first r.3", "second r.1", "second r.2", "second r.3"}
	if !slices.Equal(ran, want) {
		t.Errorf("ran %v, want %v", ran, want)
	}
	starts := 0
	for _, e := range o.all {
		if e.Event == results.RunStart {
			starts++
		}
	}
	if starts != 2 {
		t.Errorf("%d runs in the log, want 2 (appended)", starts)
	}

	// Everything done: a third run runs nothing.
	if prior, err = results.ReadPrior(out); err != nil {
		t.Fatal(err)
	}
	opts.Skip, opts.Prior = prior.Succeeded, prior.Attempts
	if len(prior.Attempts) != 0 {
		t.Errorf("prior attempts %v after every instance succeeded", prior.Attempts)
	}
	o = run(t, context.Background(), second, opts)
	if s := o.sum; s.Skipped != 4 || s.Total != 4 {
		t.Errorf("third summary %+v", *s)
	}
	if n := len(strings.Split(strings.TrimSpace(readFile(t, log)), "\n")); n != 7 {
		t.Errorf("third run ran something: %d lines", n)
	}
}

// Retries count the attempts of this run: an instance resumed after three
// attempts still gets its one retry, numbered 4 and 5.
func TestResumeRetriesCountThisRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(filepath.Join(out, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "x", "stdout"), []byte("cut short\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	jobs := []*jobfile.Job{job(t, "x", nil, "out=again", "exit=4")}
	o := run(t, context.Background(), jobs, queue.Options{OutDir: out, Retries: 1, Prior: map[string]int{"x": 3}})
	if seq, want := o.attempts("x"), []string{"started/4", "attempt-failed/4", "started/5", "finished/5"}; !slices.Equal(seq, want) {
		t.Errorf("x events %v, want %v", seq, want)
	}
	if in := o.instance(t, "x"); in.State != results.StateFailed || in.Attempts != 5 {
		t.Errorf("x summary %+v", in)
	}
	for dir, want := range map[string]string{"attempt-3": "cut short\n", "attempt-4": "again\n", ".": "again\n"} {
		if got := o.file(t, "x", dir, "stdout"); got != want {
			t.Errorf("x/%s/stdout %q, want %q", dir, got, want)
		}
	}
}

// stamp is one line the helper's stamp step wrote.
type stamp struct {
	tag, inst, hw, cpus string
	mono                int64
}

func readStamps(t *testing.T, path string) map[string]map[string]stamp {
	t.Helper()
	by := map[string]map[string]stamp{}
	for _, l := range strings.Split(strings.TrimSpace(readFile(t, path)), "\n") {
		f := strings.Fields(l)
		if len(f) != 6 {
			t.Fatalf("bad stamp line %q", l)
		}
		mono, _ := strconv.ParseInt(f[1], 10, 64)
		s := stamp{tag: f[0], mono: mono, inst: f[2], hw: f[3], cpus: f[4]}
		if by[s.inst] == nil {
			by[s.inst] = map[string]stamp{}
		}
		by[s.inst][s.tag] = s
	}
	return by
}

func TestCoresAreExclusive(t *testing.T) {
	res := detect(t)
	log := filepath.Join(t.TempDir(), "stamps")
	steps := []string{"stamp=" + log + "=start", "sleep=30ms", "stamp=" + log + "=end"}
	jobs := []*jobfile.Job{
		job(t, "one", func(j *jobfile.Job) { j.Repeat = 4 * len(res.Cores) }, steps...),
	}
	if len(res.Cores) >= 2 {
		jobs = append(jobs,
			job(t, "two", func(j *jobfile.Job) { j.Repeat = 3; j.Cores = 2 }, steps...),
			job(t, "one-more", func(j *jobfile.Job) { j.Repeat = 2 * len(res.Cores) }, steps...))
	}
	o := run(t, context.Background(), jobs, queue.Options{})
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	coreOf := map[int]int{}
	for c, threads := range res.Cores {
		for _, h := range threads {
			coreOf[h] = c
		}
	}

	// From the events: every instance gets whole cores, as many as it asked.
	// (Which instance holds a hwthread cannot be read from the order of the
	// events: a start queued behind a running instance may be reported
	// before that instance's exit.)
	for _, e := range o.events {
		if e.Event != results.Started {
			continue
		}
		hw := cpuSet(t, e.HWThreads)
		cores := map[int]bool{}
		for _, h := range hw {
			cores[coreOf[h]] = true
		}
		want := 1
		if strings.HasPrefix(e.Job, "two.") {
			want = 2
		}
		if len(cores) != want {
			t.Errorf("%s got cores %v, want %d", e.Job, cores, want)
		}
		for c := range cores {
			for _, h := range res.Cores[c] {
				if !slices.Contains(hw, h) {
					t.Errorf("%s got part of core %d: %v", e.Job, c, hw)
				}
			}
		}
	}

	// From the processes themselves: bound to what they were told, and no
	// two that shared a hwthread ran at the same time.
	stamps := readStamps(t, log)
	type span struct {
		inst       string
		start, end int64
	}
	byHW := map[int][]span{}
	for _, in := range o.disk.Instances {
		s, ok := stamps[in.Name]
		if !ok || s["start"].inst == "" || s["end"].inst == "" {
			t.Errorf("%s left no stamps", in.Name)
			continue
		}
		if !slices.Equal(cpuSet(t, s["start"].hw), cpuSet(t, s["start"].cpus)) {
			t.Errorf("%s: DROVER_HWTHREADS %s, bound to %s", in.Name, s["start"].hw, s["start"].cpus)
		}
		if !slices.Equal(cpuSet(t, s["start"].hw), cpuSet(t, in.HWThreads)) {
			t.Errorf("%s: DROVER_HWTHREADS %s, summary %s", in.Name, s["start"].hw, in.HWThreads)
		}
		for _, h := range cpuSet(t, s["start"].hw) {
			byHW[h] = append(byHW[h], span{in.Name, s["start"].mono, s["end"].mono})
		}
	}
	for h, spans := range byHW {
		for i := range spans {
			for j := i + 1; j < len(spans); j++ {
				a, b := spans[i], spans[j]
				if a.start < b.end && b.start < a.end {
					t.Errorf("%s and %s ran on hwthread %d at the same time", a.inst, b.inst, h)
				}
			}
		}
	}
	o.noChildLeft(t)
}

// summary.json's start and end times of instances that shared a hwthread
// must not overlap: they did not run at the same time.
func TestSummaryTimesDoNotOverlapOnAHWThread(t *testing.T) {
	res := detect(t)
	jobs := []*jobfile.Job{job(t, "q", func(j *jobfile.Job) { j.Repeat = 30 * len(res.Cores) }, "exit=0")}
	o := run(t, context.Background(), jobs, queue.Options{})
	type span struct {
		name       string
		start, end time.Time
	}
	byHW := map[int][]span{}
	for _, in := range o.disk.Instances {
		for _, h := range cpuSet(t, in.HWThreads) {
			byHW[h] = append(byHW[h], span{in.Name, in.Start, in.End})
		}
	}
	for h, spans := range byHW {
		for i := range spans {
			for j := i + 1; j < len(spans); j++ {
				a, b := spans[i], spans[j]
				if a.start.Before(b.end) && b.start.Before(a.end) {
					t.Errorf("summary.json: %s and %s overlap on hwthread %d", a.name, b.name, h)
				}
			}
		}
	}
}
