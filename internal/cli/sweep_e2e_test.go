package cli_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// overlap is the most intervals in log ("start NS" and "end NS" lines of
// one instance each, in wall-clock nanoseconds) open at once.
func overlap(t *testing.T, log string) int {
	t.Helper()
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, l := range strings.Split(strings.TrimSpace(readFile(t, log)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("bad line %q in %s", l, log)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatalf("bad line %q in %s", l, log)
		}
		d := 1
		if f[0] == "end" {
			d = -1
		}
		edges = append(edges, edge{ns, d})
	}
	sort.Slice(edges, func(i, j int) bool {
		return edges[i].at < edges[j].at || edges[i].at == edges[j].at && edges[i].delta < edges[j].delta
	})
	now, most := 0, 0
	for _, e := range edges {
		now += e.delta
		most = max(most, now)
	}
	return most
}

// drover run --matrix sweeps an ad-hoc command: one instance per
// combination, first flag outermost, {x} replaced and DROVER_PARAM_X set;
// -j 1 runs them one at a time although the node has cores for more.
func TestRunMatrixAndJobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, log := filepath.Join(dir, "out"), filepath.Join(dir, "log")
	script := `echo "start $(date +%s%N)" >> ` + log + `; echo "{x}{y} $DROVER_PARAM_X $DROVER_PARAM_Y {{x}}"; sleep 0.2; echo "end $(date +%s%N)" >> ` + log
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "-j", "1",
		"--matrix", "x=1,2,3", "--matrix", "y=a,b", "--", "sh", "-c", script)
	wantCode(t, r, 0)
	var names []string
	i := 0
	for _, x := range []string{"1", "2", "3"} {
		for _, y := range []string{"a", "b"} {
			name := fmt.Sprintf("sh.%d", i)
			names = append(names, name)
			want := fmt.Sprintf("%s%s %s %s {x}\n", x, y, x, y)
			if got := readFile(t, filepath.Join(out, name, "stdout")); got != want {
				t.Errorf("%s: stdout %q, want %q", name, got, want)
			}
			i++
		}
	}
	checkOneFinalEach(t, readEvents(t, out), names)
	wantCounts(t, readSummary(t, out), 6, 6, 0, 0, 0)
	if n := overlap(t, log); n != 1 {
		t.Errorf("%d instances ran at once with -j 1", n)
	}

	// Bad sweeps are usage errors, before anything starts.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--matrix", "x", "--", "true"}, `--matrix wants NAME=V1,V2,..., got "x"`},
		{[]string{"--matrix", "x=", "--", "true"}, "matrix x has no values"},
		{[]string{"--matrix", "x=1", "--", "echo", "{y}"}, "command[1] uses {y}, which is no placeholder"},
		{[]string{"--matrix", "x=1", "--repeat", "2", "--", "true"}, "--matrix goes with neither --repeat nor --each-node"},
		{[]string{"-j", "-1", "--", "true"}, "-j/--jobs must be >= 0"},
	} {
		bad := filepath.Join(dir, "bad")
		r := drover(t, dir, append([]string{"run", "--out", bad}, c.args...)...)
		wantCode(t, r, 2)
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("drover run %q: stderr lacks %q:\n%s", c.args, c.want, r.stderr)
		}
		wantNotExist(t, filepath.Join(bad, "events.jsonl"))
	}
}

// A job file with dependencies: drover check shows the order; a failed
// prerequisite skips its dependents, each with one final event naming it,
// and the summary line tells them apart from what --resume skips.
func TestRunAfter(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	jobs := writeFile(t, dir, "jobs.yaml", `jobs:
  - name: post
    command: [touch, post-ran]
    after: [sim]
  - name: sim
    command: [sh, -c, "exit {code}"]
    matrix: {code: [0, 3]}
    after: [prep]
  - name: prep
    command: ["true"]
`)
	r := drover(t, dir, "check", jobs)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "order: prep → sim → post") {
		t.Errorf("check does not show the order:\n%s", r.stdout)
	}
	out := filepath.Join(dir, "out")
	r = drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	fin := checkOneFinalEach(t, readEvents(t, out), []string{"prep", "sim.0", "sim.1", "post"})
	if e := fin["post"]; e.Event != "failed" || e.Error != "dependency sim failed (sim.1: exit 3)" {
		t.Errorf("post: %+v", e)
	}
	s := readSummary(t, out)
	wantCounts(t, s, 4, 2, 1, 0, 1)
	if in := s.instance(t, "post"); in.State != "skipped" {
		t.Errorf("post: %+v", in)
	}
	wantNotExist(t, filepath.Join(dir, "post-ran"))
	if !strings.Contains(r.stderr, "1 skipped (a dependency did not succeed)") {
		t.Errorf("summary line:\n%s", r.stderr)
	}

	// A cycle and a ragged CSV: exit 2 with FILE:LINE:COL.
	writeFile(t, dir, "sweep.csv", "x,y\n1,a\n2\n")
	bad := writeFile(t, dir, "bad.yaml", "jobs:\n  - name: a\n    command: [x]\n    after: [b]\n  - name: b\n    command: [x]\n    after: [a]\n    params: sweep.csv\n")
	r = drover(t, dir, "run", "--out", filepath.Join(dir, "bad-out"), bad)
	wantCode(t, r, 2)
	for _, want := range []string{
		"bad.yaml:7:13: after[0] closes a cycle of jobs waiting for each other: \"a\" after \"b\" after \"a\"",
		"bad.yaml:8:13: params sweep.csv: the row on line 3 has 1 fields, the header has 2",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}
