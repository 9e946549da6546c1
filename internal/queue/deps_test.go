package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

func after(names ...string) func(*jobfile.Job) {
	return func(j *jobfile.Job) { j.After = names }
}

// firstIndex is the position in o.events of the first event of kind for
// an instance of job (name or name.N); -1 if none.
func (o *outcome) firstIndex(job, kind string) int {
	for i, e := range o.events {
		if e.Event == kind && (e.Job == job || strings.HasPrefix(e.Job, job+".")) {
			return i
		}
	}
	return -1
}

// lastIndex is the position of the last final event of an instance of job.
func (o *outcome) lastFinal(job string) int {
	last := -1
	for i, e := range o.events {
		if e.Final() && (e.Job == job || strings.HasPrefix(e.Job, job+".")) {
			last = i
		}
	}
	return last
}

// A job starts only once every instance of every job it is after has
// ended, succeeded: seen in the events log and in the processes' own
// monotonic clocks. The dependents come first in the list, so without
// the dependencies they would start first.
func TestAfterWaitsForEveryPrerequisite(t *testing.T) {
	log := filepath.Join(t.TempDir(), "stamps")
	steps := func(tag string) []string {
		return []string{"stamp=" + log + "=start", "sleep=50ms", "stamp=" + log + "=end"}
	}
	jobs := []*jobfile.Job{
		job(t, "post", after("sim"), steps("post")...),
		job(t, "sim", func(j *jobfile.Job) { j.Repeat = 3; j.After = []string{"prep", "mesh"} }, steps("sim")...),
		job(t, "prep", func(j *jobfile.Job) { j.Repeat = 3 }, steps("prep")...),
		job(t, "mesh", nil, steps("mesh")...),
	}
	o := run(t, context.Background(), jobs, queue.Options{})
	if !o.sum.OK() || o.sum.Succeeded != 8 {
		t.Fatalf("summary %+v", *o.sum)
	}
	for _, c := range []struct{ job, before []string }{
		{[]string{"sim"}, []string{"prep", "mesh"}},
		{[]string{"post"}, []string{"sim"}},
	} {
		first := o.firstIndex(c.job[0], results.Started)
		for _, b := range c.before {
			if last := o.lastFinal(b); first < 0 || last < 0 || first < last {
				t.Errorf("%s started (event %d) before %s ended (event %d)", c.job[0], first, b, last)
			}
		}
	}
	stamps := readStamps(t, log)
	startOf := func(job string) (min int64) {
		for inst, s := range stamps {
			if inst == job || strings.HasPrefix(inst, job+".") {
				if min == 0 || s["start"].mono < min {
					min = s["start"].mono
				}
			}
		}
		return min
	}
	endOf := func(job string) (max int64) {
		for inst, s := range stamps {
			if inst == job || strings.HasPrefix(inst, job+".") {
				max = maxInt(max, s["end"].mono)
			}
		}
		return max
	}
	if len(stamps) != 8 {
		t.Fatalf("stamps of %d instances, want 8", len(stamps))
	}
	for _, c := range [][2]string{{"sim", "prep"}, {"sim", "mesh"}, {"post", "sim"}} {
		if s, e := startOf(c[0]), endOf(c[1]); s <= e {
			t.Errorf("an instance of %s started at %d, before the last of %s ended at %d", c[0], s, c[1], e)
		}
	}
	o.noChildLeft(t)
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// An instance whose dependency did not succeed never starts and gets one
// final event, state skipped, naming the dependency; so do the jobs
// after it, while a job that waits for nothing runs.
func TestAfterFailureSkipsDependents(t *testing.T) {
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "sim", func(j *jobfile.Job) { j.Repeat = 2; j.After = []string{"prep"} }, "touch="+filepath.Join(dir, "sim-ran-{index}")),
		job(t, "post", after("sim", "other"), "touch="+filepath.Join(dir, "post-ran")),
		// prep.1 exits 3.
		job(t, "prep", func(j *jobfile.Job) { j.Matrix = []jobfile.Axis{{Name: "code", Values: []string{"0", "3"}}} }, "exit={code}"),
		job(t, "other", nil, "exit=0"),
		// big can never be placed: its dependent is skipped, naming it.
		job(t, "big", func(j *jobfile.Job) { j.Node = "nosuch" }, "exit=0"),
		job(t, "after-big", after("big"), "exit=0"),
	}
	o := run(t, context.Background(), jobs, queue.Options{})
	want := map[string]string{
		"sim.0":     "dependency prep failed (prep.1: exit 3)",
		"sim.1":     "dependency prep failed (prep.1: exit 3)",
		"post":      "dependency sim skipped (sim.0: dependency prep failed (prep.1: exit 3))",
		"after-big": `dependency big failed (big: no node named "nosuch")`,
	}
	for name, why := range want {
		e := o.only(t, name)
		if e.Event != results.Failed || e.State != results.StateSkipped || e.Error != why {
			t.Errorf("%s: final event %+v, want failed, state skipped, error %q", name, e, why)
		}
		if st := o.of(name, results.Started); len(st) != 0 {
			t.Errorf("%s started: %+v", name, st)
		}
		if in := o.instance(t, name); in.State != results.StateSkipped || in.Error != why {
			t.Errorf("summary.json %s: %+v", name, in)
		}
	}
	for _, f := range []string{"sim-ran-0", "sim-ran-1", "post-ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s exists: a skipped instance ran", f)
		}
	}
	if e := o.only(t, "other"); e.State != results.StateSucceeded {
		t.Errorf("other: %+v", e)
	}
	if e := o.only(t, "prep.1"); e.State != results.StateFailed || !equalPtr(e.ExitCode, code(3)) {
		t.Errorf("prep.1: %+v", e)
	}
	if s := o.sum; s.Skipped != 4 || s.Failed != 2 || s.Succeeded != 2 || s.OK() {
		t.Errorf("summary %+v", *s)
	}
	// The returned summary lists the skipped-for-a-dependency instances
	// (drover run prints them apart from those --resume skipped).
	var listed []string
	for in := range o.sum.NotSucceeded() {
		if in.State == results.StateSkipped {
			listed = append(listed, in.Name)
		}
	}
	slices.Sort(listed)
	if w := []string{"after-big", "post", "sim.0", "sim.1"}; !slices.Equal(listed, w) {
		t.Errorf("skipped instances returned %v, want %v", listed, w)
	}
	o.noChildLeft(t)
}

// --resume: prerequisites that succeeded in the earlier run count as
// succeeded, so the dependent runs once the rest of them succeed now.
func TestAfterResume(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	opts := queue.Options{OutDir: out, Nodes: []node.Node{newAgent(t, "n1")}}
	// prep.0 succeeds at once; prep.1 fails the first time only.
	if err := os.WriteFile(filepath.Join(dir, "m0"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "stamps")
	jobs := []*jobfile.Job{
		job(t, "sim", after("prep"), "stamp="+log+"=start"),
		job(t, "prep", func(j *jobfile.Job) { j.Repeat = 2 },
			"stamp="+log+"=start", "marker="+filepath.Join(dir, "m{index}")+"=3", "stamp="+log+"=end"),
	}
	o := run(t, context.Background(), jobs, opts)
	if e := o.only(t, "sim"); e.State != results.StateSkipped || e.Error != "dependency prep failed (prep.1: exit 3)" {
		t.Fatalf("first run: sim %+v", e)
	}
	prior, err := results.ReadPrior(out)
	if err != nil {
		t.Fatal(err)
	}
	if !prior.Succeeded["prep.0"] || prior.Succeeded["prep.1"] || prior.Succeeded["sim"] {
		t.Fatalf("prior succeeded %v", prior.Succeeded)
	}
	opts.Skip, opts.Prior = prior.Succeeded, prior.Attempts
	o = run(t, context.Background(), jobs, opts)
	if s := o.sum; !s.OK() || s.Skipped != 1 || s.Succeeded != 2 {
		t.Errorf("second run: summary %+v", *s)
	}
	if st := o.of("prep.0", results.Started); len(st) != 0 {
		t.Errorf("prep.0 ran again: %+v", st)
	}
	if e := o.only(t, "sim"); e.State != results.StateSucceeded {
		t.Errorf("second run: sim %+v", e)
	}
	if first, last := o.firstIndex("sim", results.Started), o.lastFinal("prep"); first < last {
		t.Errorf("sim started (event %d) before prep.1 ended (event %d)", first, last)
	}
	if s := readStamps(t, log); s["prep.1"]["end"].mono == 0 || s["sim"]["start"].mono <= s["prep.1"]["end"].mono {
		t.Errorf("stamps: sim did not start after prep.1 ended: %+v", s)
	}
	o.noChildLeft(t)
}

// Jobs built in code are checked like a file's: a dependency on no job
// or a cycle is refused before anything starts.
func TestAfterRefusedInRun(t *testing.T) {
	for _, c := range []struct {
		name string
		jobs []*jobfile.Job
		want string
	}{
		{"unknown", []*jobfile.Job{job(t, "a", after("nope"), "exit=0")}, `after[0] names no job "nope"`},
		{"cycle", []*jobfile.Job{job(t, "a", after("b"), "exit=0"), job(t, "b", after("a"), "exit=0")},
			`closes a cycle of jobs waiting for each other: "a" after "b" after "a"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			_, err := queue.Run(context.Background(), c.jobs, queue.Options{OutDir: out, Nodes: []node.Node{newAgent(t, "n1")}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run: %v, want an error with %q", err, c.want)
			}
			if _, err := os.Stat(filepath.Join(out, results.EventsFile)); err == nil {
				t.Errorf("a refused run wrote %s", results.EventsFile)
			}
		})
	}
}

// concurrency is the most instances that ran at once, from the start and
// end stamps of the processes, for the instances match accepts.
func concurrency(t *testing.T, log string, match func(inst string) bool) int {
	t.Helper()
	type edge struct {
		mono  int64
		delta int
	}
	var edges []edge
	for inst, s := range readStamps(t, log) {
		if !match(inst) {
			continue
		}
		st, en := s["start"], s["end"]
		if st.inst == "" || en.inst == "" {
			t.Fatalf("%s left no start or end stamp", inst)
		}
		edges = append(edges, edge{st.mono, 1}, edge{en.mono, -1})
	}
	// An end before a start at the same instant: those did not overlap.
	sort.Slice(edges, func(i, j int) bool {
		return edges[i].mono < edges[j].mono || edges[i].mono == edges[j].mono && edges[i].delta < edges[j].delta
	})
	now, most := 0, 0
	for _, e := range edges {
		now += e.delta
		most = max(most, now)
	}
	return most
}

// openGate creates gate once log holds n start stamps of instances whose
// names begin with prefix (or the run is over), so the first instances,
// which wait for gate, are seen running together: the limit is reached,
// not only kept.
func openGate(t *testing.T, log, gate, prefix string, n int) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer os.WriteFile(gate, nil, 0o644)
		deadline := time.After(backstop)
		for {
			data, _ := os.ReadFile(log)
			started := 0
			for _, l := range strings.Split(string(data), "\n") {
				if f := strings.Fields(l); len(f) == 6 && f[0] == "start" && strings.HasPrefix(f[2], prefix) {
					started++
				}
			}
			if started >= n {
				return
			}
			select {
			case <-done:
				return
			case <-deadline:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-finished }
}

// nodes starts n agents on this machine, each with all of its cores, so
// that the cores are no limit on how many instances run at once.
func nodes(t *testing.T, n int) []node.Node {
	var out []node.Node
	for i := range n {
		out = append(out, newAgent(t, fmt.Sprintf("n%d", i+1)))
	}
	return out
}

// max_running: never more instances of the job at once than it says,
// and that many do run together. A job without a limit beside it is not
// held back by it.
func TestMaxRunning(t *testing.T) {
	dir := t.TempDir()
	log, gate := filepath.Join(dir, "stamps"), filepath.Join(dir, "gate")
	steps := []string{"stamp=" + log + "=start", "waitfile=" + gate, "sleep=100ms", "stamp=" + log + "=end"}
	jobs := []*jobfile.Job{
		job(t, "lim", func(j *jobfile.Job) { j.Repeat = 6; j.MaxRunning = 2 }, steps...),
		// Short ones, so that instances are queued behind others
		// (prefetching), which must not get around the limit.
		job(t, "one", func(j *jobfile.Job) { j.Repeat = 20; j.MaxRunning = 1 }, "stamp="+log+"=start", "stamp="+log+"=end"),
	}
	stop := openGate(t, log, gate, "lim.", 2)
	o := run(t, context.Background(), jobs, queue.Options{Nodes: nodes(t, 3)})
	stop()
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	isJob := func(job string) func(string) bool {
		return func(inst string) bool { return strings.HasPrefix(inst, job+".") }
	}
	if got := concurrency(t, log, isJob("lim")); got != 2 {
		t.Errorf("at most %d instances of lim ran at once, want 2 (max_running)", got)
	}
	if got := concurrency(t, log, isJob("one")); got != 1 {
		t.Errorf("at most %d instances of one ran at once, want 1 (max_running)", got)
	}
	o.noChildLeft(t)
}

// The run's limit (drover run -j) holds across jobs, and is reached.
func TestRunMaxRunning(t *testing.T) {
	dir := t.TempDir()
	log, gate := filepath.Join(dir, "stamps"), filepath.Join(dir, "gate")
	slow := []string{"stamp=" + log + "=start", "waitfile=" + gate, "sleep=100ms", "stamp=" + log + "=end"}
	fast := []string{"stamp=" + log + "=start", "stamp=" + log + "=end"}
	jobs := []*jobfile.Job{
		job(t, "slow-a", func(j *jobfile.Job) { j.Repeat = 4 }, slow...),
		job(t, "slow-b", func(j *jobfile.Job) { j.Repeat = 4 }, slow...),
		job(t, "fast", func(j *jobfile.Job) { j.Repeat = 20 }, fast...),
	}
	stop := openGate(t, log, gate, "slow-", 3)
	o := run(t, context.Background(), jobs, queue.Options{Nodes: nodes(t, 3), MaxRunning: 3})
	stop()
	if !o.sum.OK() {
		t.Fatalf("summary %+v", *o.sum)
	}
	if got := concurrency(t, log, func(string) bool { return true }); got != 3 {
		t.Errorf("at most %d instances ran at once, want 3 (the run's limit)", got)
	}
	o.noChildLeft(t)
}

// Sweeps: each instance gets its parameters in its command and as
// DROVER_PARAM_*; the names follow the documented order.
func TestMatrixAndParamsInstances(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "sweep.csv")
	if err := os.WriteFile(csv, []byte("alpha,mode\n0.1,fast\n0.2,\"slow, careful\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := `jobs:
  - name: m
    command: [` + childExe(t) + `, "out=x={x} y={y} i={index} lit={{x}}", env=DROVER_PARAM_X, env=DROVER_PARAM_Y]
    matrix: {x: [1, 2, 3], y: [a, b]}
  - name: p
    command: [` + childExe(t) + `, "out=alpha={alpha} mode={mode}", env=DROVER_PARAM_ALPHA, env=DROVER_PARAM_MODE]
    params: sweep.csv
`
	f, err := jobfile.Parse(filepath.Join(dir, "jobs.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	jobs := []*jobfile.Job{&f.Jobs[0], &f.Jobs[1]}
	o := run(t, context.Background(), jobs, queue.Options{BaseDir: dir})
	if !o.sum.OK() || o.sum.Total != 8 {
		t.Fatalf("summary %+v", *o.sum)
	}
	i := 0
	for _, x := range []string{"1", "2", "3"} {
		for _, y := range []string{"a", "b"} {
			name := fmt.Sprintf("m.%d", i)
			want := fmt.Sprintf("x=%s y=%s i=%d lit={x}\nDROVER_PARAM_X=%s\nDROVER_PARAM_Y=%s\n", x, y, i, x, y)
			if got := o.file(t, name, "stdout"); got != want {
				t.Errorf("%s: stdout %q, want %q", name, got, want)
			}
			i++
		}
	}
	for i, want := range []string{
		"alpha=0.1 mode=fast\nDROVER_PARAM_ALPHA=0.1\nDROVER_PARAM_MODE=fast\n",
		"alpha=0.2 mode=slow, careful\nDROVER_PARAM_ALPHA=0.2\nDROVER_PARAM_MODE=slow, careful\n",
	} {
		if got := o.file(t, fmt.Sprintf("p.%d", i), "stdout"); got != want {
			t.Errorf("p.%d: stdout %q, want %q", i, got, want)
		}
	}
}

// childExe is the test binary, quoted for a YAML flow list.
func childExe(t *testing.T) string {
	return fmt.Sprintf("%q", helper()[0])
}

// A prerequisite lost with its node skips its dependents too, naming it.
func TestAfterLostPrerequisite(t *testing.T) {
	a := newAgent(t, "n1")
	f := newFake(t, a)
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "sim", func(j *jobfile.Job) { j.Repeat = 2; j.After = []string{"prep"} }, "exit=0"),
		job(t, "prep", func(j *jobfile.Job) { j.Node = "n1" }, "touch="+filepath.Join(dir, "prep.ready"), "sleep=2m"),
	}
	go func() {
		if err := waitReady(dir, 1); err != nil {
			t.Error(err)
		}
		f.lose()
	}()
	o := run(t, context.Background(), jobs, queue.Options{Nodes: []node.Node{f, newAgent(t, "n2")}})
	if e := o.only(t, "prep"); e.State != results.StateLost {
		t.Fatalf("prep: %+v", e)
	}
	for _, name := range []string{"sim.0", "sim.1"} {
		e := o.only(t, name)
		if e.State != results.StateSkipped || e.Error != "dependency prep lost (prep: node lost)" || len(o.of(name, results.Started)) != 0 {
			t.Errorf("%s: %+v", name, e)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	o.noChildLeft(t)
}

// A run stopped while a prerequisite runs cancels it, and its dependents
// with everything else that never started: one final event each.
func TestAfterInterrupted(t *testing.T) {
	dir := t.TempDir()
	jobs := []*jobfile.Job{
		job(t, "prep", nil, "touch="+filepath.Join(dir, "prep.ready"), "sleep=2m"),
		job(t, "sim", func(j *jobfile.Job) { j.Repeat = 2; j.After = []string{"prep"} }, "exit=0"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := waitReady(dir, 1); err != nil {
			t.Error(err)
		}
		cancel()
	}()
	o := run(t, ctx, jobs, queue.Options{Grace: time.Second})
	if e := o.only(t, "prep"); e.State != results.StateCancelled {
		t.Errorf("prep: %+v", e)
	}
	for _, name := range []string{"sim.0", "sim.1"} {
		if e := o.only(t, name); e.State != results.StateCancelled || e.Error != "not started: interrupted" {
			t.Errorf("%s: %+v", name, e)
		}
	}
	o.noChildLeft(t)
}
