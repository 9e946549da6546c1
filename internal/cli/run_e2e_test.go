package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The shipped example, run as the README says, from the repository root.
func TestRunHelloExample(t *testing.T) {
	t.Parallel()
	res := localResources(t)
	allowed := res.hwthreads()
	out := t.TempDir()
	r := drover(t, repoRoot, "run", "--progress", "plain", "--out", out, "examples/hello.yaml")
	wantCode(t, r, 1) // broken fails on purpose

	wideFits := len(res.Cores) >= 2
	names := []string{"hello.0", "hello.1", "hello.2", "hello.3", "wide", "setup", "server", "broken"}

	stdout := func(inst string) string { return readFile(t, filepath.Join(out, inst, "stdout")) }
	checkHW := func(inst, list string) {
		for _, h := range parseCPUList(t, list) {
			if !allowed[h] {
				t.Errorf("%s: hwthread %d is not one of this node's %v", inst, h, res.Cores)
			}
		}
	}
	for i := range 4 {
		inst := fmt.Sprintf("hello.%d", i)
		re := regexp.MustCompile(fmt.Sprintf(`^hello from %s \(index %d\) on %s, hwthreads ([0-9,-]+)\n$`,
			regexp.QuoteMeta(inst), i, regexp.QuoteMeta(res.Node)))
		got := stdout(inst)
		m := re.FindStringSubmatch(got)
		if m == nil {
			t.Errorf("%s/stdout = %q, want a match of %s", inst, got, re)
			continue
		}
		checkHW(inst, m[1])
	}
	if wideFits {
		got := stdout("wide")
		m := regexp.MustCompile(`^cores ([0-9,-]+), OMP_NUM_THREADS=2\nCpus_allowed_list:\s*([0-9,-]+)\n$`).FindStringSubmatch(got)
		if m == nil {
			t.Errorf("wide/stdout = %q", got)
		} else {
			checkHW("wide", m[1])
			if !slices.Equal(parseCPUList(t, m[1]), parseCPUList(t, m[2])) {
				t.Errorf("wide: DROVER_HWTHREADS %s but bound to %s", m[1], m[2])
			}
			if n := len(parseCPUList(t, m[1])); n < 2 {
				t.Errorf("wide: 2 cores but %d hwthreads: %s", n, m[1])
			}
		}
	}
	if got := stdout("setup"); got != "stage is ready\n" {
		t.Errorf("setup/stdout = %q", got)
	}
	port := regexp.MustCompile(`^my port is (\d+) = (\d+)\n$`).FindStringSubmatch(stdout("server"))
	if port == nil || port[1] != port[2] || port[1] == "0" {
		t.Errorf("server/stdout = %q, want the same non-zero port twice", stdout("server"))
	}
	if got := stdout("broken"); got != "" {
		t.Errorf("broken/stdout = %q, want nothing", got)
	}
	if got := readFile(t, filepath.Join(out, "broken", "stderr")); got != "about to fail\n" {
		t.Errorf("broken/stderr = %q", got)
	}

	evs := readEvents(t, out)
	fin := checkOneFinalEach(t, evs, names)
	if e := fin["broken"]; e.Event != "finished" || e.ExitCode == nil || *e.ExitCode != 3 {
		t.Errorf("broken's final event: %+v, want finished with exit_code 3", e)
	}
	for _, n := range names {
		e := fin[n]
		if n == "broken" || (n == "wide" && !wideFits) {
			continue
		}
		if e.Event != "finished" || e.ExitCode == nil || *e.ExitCode != 0 || e.Node != res.Node {
			t.Errorf("%s's final event: %+v, want finished with exit_code 0 on %s", n, e, res.Node)
		}
	}
	started := startedNames(evs)
	for _, n := range names {
		if (n != "wide" || wideFits) && !slices.Contains(started, n) {
			t.Errorf("no started event for %s", n)
		}
	}

	s := readSummary(t, out)
	wantSameNames(t, "summary instances", s.names(), names)
	if wideFits {
		wantCounts(t, s, 8, 7, 1, 0, 0)
	} else {
		wantCounts(t, s, 8, 6, 2, 0, 0)
		if w := s.instance(t, "wide"); !strings.Contains(w.Error, "cores") {
			t.Errorf("wide cannot fit on %d core(s), but its error is %q", len(res.Cores), w.Error)
		}
	}
	if b := s.instance(t, "broken"); b.State != "failed" || b.ExitCode == nil || *b.ExitCode != 3 {
		t.Errorf("summary: broken = %+v, want failed with exit_code 3", b)
	}
	if !regexp.MustCompile(`(?m)^\s*broken\b.*\bexit 3\b`).MatchString(r.stderr) {
		t.Errorf("stderr does not name the failing instance broken with its exit status:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "8/8 done") {
		t.Errorf("--progress plain printed no final progress line:\n%s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("drover run wrote to stdout: %q", r.stdout)
	}
}

func TestRunExitStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		jobs      string   // a job file, or
		cmd       []string // an ad-hoc command
		code      int
		succeeded int
		failed    []string // instances that fail, named in stderr
	}{
		{name: "all succeed", code: 0, succeeded: 3, jobs: `
jobs:
  - name: one
    command: [sh, -c, "echo one"]
  - name: two
    shell: echo two
    repeat: 2
`},
		{name: "one fails", code: 1, succeeded: 2, failed: []string{"bad"}, jobs: `
jobs:
  - name: good
    shell: echo good
    repeat: 2
  - name: bad
    shell: exit 4
`},
		{name: "killed by a signal", code: 1, succeeded: 1, failed: []string{"selfkill"}, jobs: `
jobs:
  - name: fine
    command: ["true"]
  - name: selfkill
    shell: kill -KILL $$
`},
		{name: "ad-hoc succeeds", code: 0, succeeded: 1, cmd: []string{"true"}},
		{name: "ad-hoc fails", code: 1, failed: []string{"false"}, cmd: []string{"false"}},
		{name: "ad-hoc repeat, one fails", code: 1, succeeded: 2, failed: []string{"sh.1"},
			cmd: []string{"--repeat", "3", "--", "sh", "-c", `[ "$DROVER_INDEX" != 1 ]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			args := []string{"run", "--progress", "none", "--out", out}
			switch {
			case tc.jobs != "":
				args = append(args, writeFile(t, dir, "jobs.yaml", tc.jobs))
			case tc.cmd[0] == "--repeat":
				args = append(args, tc.cmd...)
			default:
				args = append(append(args, "--"), tc.cmd...)
			}
			r := drover(t, dir, args...)
			wantCode(t, r, tc.code)
			// A run that went well logs nothing: no warning from the agent
			// or its guard (a record, or a plain "drover: ..." line), only
			// the summary.
			if tc.code == 0 && (strings.Contains(r.stderr, "level=") || strings.Contains(r.stderr, "drover: ")) {
				t.Errorf("a clean run logged:\n%s", r.stderr)
			}
			s := readSummary(t, out)
			wantCounts(t, s, tc.succeeded+len(tc.failed), tc.succeeded, len(tc.failed), 0, 0)
			checkOneFinalEach(t, readEvents(t, out), s.names())
			for _, f := range tc.failed {
				if in := s.instance(t, f); in.State != "failed" {
					t.Errorf("%s: state %q, want failed", f, in.State)
				}
				if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(f) + `\s+failed`).MatchString(r.stderr) {
					t.Errorf("stderr does not name the failed instance %s:\n%s", f, r.stderr)
				}
			}
			if tc.name == "killed by a signal" {
				if in := s.instance(t, "selfkill"); in.Signal != "SIGKILL" {
					t.Errorf("selfkill: %+v, want signal SIGKILL", in)
				}
			}
		})
	}
}

// A job file may be JSON; the default results directory is drover-out in
// the current directory.
func TestRunJSONJobFileAndDefaultOut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	jobs := writeFile(t, dir, "jobs.json", `{"jobs": [{"name": "j", "command": ["echo", "from json"]}]}`)
	r := drover(t, dir, "run", "--progress", "none", jobs)
	wantCode(t, r, 0)
	out := filepath.Join(dir, "drover-out")
	if got := readFile(t, filepath.Join(out, "j", "stdout")); got != "from json\n" {
		t.Errorf("j/stdout = %q", got)
	}
	wantCounts(t, readSummary(t, out), 1, 1, 0, 0, 0)
}

// What every instance sees, and that it is bound to the hwthreads it is told.
func TestRunInstanceEnvironment(t *testing.T) {
	t.Parallel()
	res := localResources(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: envy
    repeat: 2
    env: {MY_VAR: "my value"}
    shell: |
      echo "job=$DROVER_JOB instance=$DROVER_INSTANCE index=$DROVER_INDEX node=$DROVER_NODE omp=$OMP_NUM_THREADS my=$MY_VAR"
      echo "hw=$DROVER_HWTHREADS"
      grep Cpus_allowed_list /proc/self/status
      [ "$DROVER_WORKDIR" = "$(pwd -P)" ] || [ "$DROVER_WORKDIR" = "$(pwd)" ] && echo workdir ok
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 0)
	allowed := res.hwthreads()
	for i := range 2 {
		inst := "envy." + strconv.Itoa(i)
		got := readFile(t, filepath.Join(out, inst, "stdout"))
		lines := strings.Split(got, "\n")
		want := fmt.Sprintf("job=envy instance=%s index=%d node=%s omp=1 my=my value", inst, i, res.Node)
		if len(lines) != 5 || lines[0] != want || lines[3] != "workdir ok" {
			t.Errorf("%s/stdout = %q, want first line %q and \"workdir ok\"", inst, got, want)
			continue
		}
		hw := parseCPUList(t, strings.TrimPrefix(lines[1], "hw="))
		bound := parseCPUList(t, strings.TrimSpace(strings.TrimPrefix(lines[2], "Cpus_allowed_list:")))
		if !slices.Equal(hw, bound) {
			t.Errorf("%s: DROVER_HWTHREADS %v, but bound to %v", inst, hw, bound)
		}
		for _, h := range hw {
			if !allowed[h] {
				t.Errorf("%s: hwthread %d is not one of this node's", inst, h)
			}
		}
	}
}

// files are found next to the job file, not in the current directory;
// outputs come back into the results directory.
func TestRunFilesAndOutputs(t *testing.T) {
	t.Parallel()
	jobDir, cwd := t.TempDir(), t.TempDir()
	out := filepath.Join(cwd, "out")
	writeFile(t, jobDir, "input.txt", "staged input\n")
	jobs := writeFile(t, jobDir, "jobs.yaml", `
jobs:
  - name: stage
    files: [input.txt]
    outputs: ["*.csv"]
    shell: 'tr a-z A-Z < input.txt > result.csv; echo scratch > not-an-output.txt'
`)
	r := drover(t, cwd, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 0)
	if got := readFile(t, filepath.Join(out, "stage", "result.csv")); got != "STAGED INPUT\n" {
		t.Errorf("stage/result.csv = %q", got)
	}
	wantNotExist(t, filepath.Join(out, "stage", "not-an-output.txt"))
}

func TestRunAdHocRepeat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--repeat", "3", "--",
		"sh", "-c", `echo $DROVER_INDEX $DROVER_INSTANCE $DROVER_JOB`)
	wantCode(t, r, 0)
	names := []string{"sh.0", "sh.1", "sh.2"}
	s := readSummary(t, out)
	wantSameNames(t, "instances", s.names(), names)
	wantCounts(t, s, 3, 3, 0, 0, 0)
	checkOneFinalEach(t, readEvents(t, out), names)
	for i, n := range names {
		want := fmt.Sprintf("%d %s sh\n", i, n)
		if got := readFile(t, filepath.Join(out, n, "stdout")); got != want {
			t.Errorf("%s/stdout = %q, want %q", n, got, want)
		}
	}
}

// A batch instance reads end of input at once: nobody writes to its stdin,
// so a program that reads it must not wait (the timeout would end it).
func TestRunInstanceStdinIsEmpty(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `jobs:
  - name: reader
    timeout: 60s
    shell: 'if read x; then echo "read [$x]"; else echo "end of input"; fi'
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 0)
	if got := readFile(t, filepath.Join(out, "reader", "stdout")); got != "end of input\n" {
		t.Errorf("reader/stdout = %q, want end of input", got)
	}
}

func TestRunAdHocSingleAndIndex(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	// One instance is named after the command, without an index.
	out := filepath.Join(dir, "one")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--", "sh", "-c", "echo single")
	wantCode(t, r, 0)
	wantSameNames(t, "instances", readSummary(t, out).names(), []string{"sh"})
	if got := readFile(t, filepath.Join(out, "sh", "stdout")); got != "single\n" {
		t.Errorf("sh/stdout = %q", got)
	}

	// {index} is replaced in the command; a path is named by its base name.
	out = filepath.Join(dir, "idx")
	echo, err := lookPath("echo")
	if err != nil {
		t.Skipf("needs an echo program: %v", err)
	}
	r = drover(t, dir, "run", "--progress", "none", "--out", out, "--repeat", "2", "--", echo, "x{index}y")
	wantCode(t, r, 0)
	wantSameNames(t, "instances", readSummary(t, out).names(), []string{"echo.0", "echo.1"})
	for i := range 2 {
		if got := readFile(t, filepath.Join(out, fmt.Sprintf("echo.%d", i), "stdout")); got != fmt.Sprintf("x%dy\n", i) {
			t.Errorf("echo.%d/stdout = %q", i, got)
		}
	}
}

func lookPath(name string) (string, error) {
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 && filepath.IsAbs(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH", name)
}

func TestRunAdHocEachNode(t *testing.T) {
	t.Parallel()
	res := localResources(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--each-node", "--",
		"sh", "-c", `echo "$DROVER_NODE"`)
	wantCode(t, r, 0)
	// The local launcher has one node: this machine.
	inst := "sh." + unsafeChars.ReplaceAllString(res.Node, "_")
	s := readSummary(t, out)
	wantSameNames(t, "instances", s.names(), []string{inst})
	wantCounts(t, s, 1, 1, 0, 0, 0)
	if in := s.instance(t, inst); in.Node != res.Node {
		t.Errorf("%s ran on %q, want %q", inst, in.Node, res.Node)
	}
	if got := readFile(t, filepath.Join(out, inst, "stdout")); got != res.Node+"\n" {
		t.Errorf("%s/stdout = %q, want the node name %q", inst, got, res.Node)
	}
}

func TestRunResume(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := filepath.Join(dir, "marker")
	jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: part
    repeat: 3
    env: {MARKER: %q}
    shell: 'if [ "$DROVER_INDEX" = 1 ] && [ ! -e "$MARKER" ]; then echo "no marker" >&2; exit 7; fi; echo "done $DROVER_INDEX"'
`, marker))
	names := []string{"part.0", "part.1", "part.2"}

	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	s := readSummary(t, out)
	wantCounts(t, s, 3, 2, 1, 0, 0)
	if in := s.instance(t, "part.1"); in.State != "failed" || in.ExitCode == nil || *in.ExitCode != 7 {
		t.Fatalf("first run: part.1 = %+v, want failed with exit 7", in)
	}
	checkOneFinalEach(t, lastRun(t, readEvents(t, out)), names)

	// Fix the cause; only the failed instance runs again.
	writeFile(t, dir, "marker", "")
	r = drover(t, dir, "run", "--progress", "none", "--resume", "--out", out, jobs)
	wantCode(t, r, 0)
	evs := readEvents(t, out)
	second := lastRun(t, evs)
	if got := startedNames(second); !slices.Equal(got, []string{"part.1"}) {
		t.Errorf("resumed run started %q, want only part.1", got)
	}
	checkOneFinalEach(t, second, []string{"part.1"})
	if got := len(finals(evs)["part.0"]); got != 1 {
		t.Errorf("part.0 has %d final events over both runs, want 1", got)
	}
	s = readSummary(t, out)
	wantCounts(t, s, 3, 1, 0, 0, 2)
	for n, want := range map[string]string{"part.0": "skipped", "part.1": "succeeded", "part.2": "skipped"} {
		if in := s.instance(t, n); in.State != want {
			t.Errorf("resumed summary: %s is %q, want %q", n, in.State, want)
		}
	}
	for i, n := range names {
		if got := readFile(t, filepath.Join(out, n, "stdout")); got != fmt.Sprintf("done %d\n", i) {
			t.Errorf("%s/stdout = %q", n, got)
		}
	}

	// Everything is done now: nothing runs at all.
	r = drover(t, dir, "run", "--progress", "none", "--resume", "--out", out, jobs)
	wantCode(t, r, 0)
	third := lastRun(t, readEvents(t, out))
	if got := startedNames(third); len(got) != 0 {
		t.Errorf("third run started %q, want nothing", got)
	}
	if got := finals(third); len(got) != 0 {
		t.Errorf("third run wrote final events %v, want none", got)
	}
	wantCounts(t, readSummary(t, out), 3, 0, 0, 0, 3)
}

// A manager killed after its node started an instance on its own (queued
// behind another) but before it logged that start leaves output and no
// started event: the resumed run must number its attempt past that one
// and keep its output, not truncate it.
func TestRunResumeKeepsUnloggedAttempt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: cut\n    shell: echo done\n")
	if err := os.MkdirAll(filepath.Join(out, "cut"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, out, "events.jsonl", "")
	writeFile(t, filepath.Join(out, "cut"), "stdout", "cut short\n")

	r := drover(t, dir, "run", "--progress", "none", "--resume", "--out", out, jobs)
	wantCode(t, r, 0)
	fin := checkOneFinalEach(t, lastRun(t, readEvents(t, out)), []string{"cut"})
	if fin["cut"].Attempt != 2 {
		t.Errorf("resumed attempt %d, want 2 (attempt 1 left output without an event)", fin["cut"].Attempt)
	}
	if got := readFile(t, filepath.Join(out, "cut", "attempt-1", "stdout")); got != "cut short\n" {
		t.Errorf("attempt-1/stdout = %q, want the unlogged attempt's output", got)
	}
	if got := readFile(t, filepath.Join(out, "cut", "stdout")); got != "done\n" {
		t.Errorf("stdout = %q", got)
	}
}

func TestRunRetries(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--retries", "1", "--", "sh", "-c",
		fmt.Sprintf(`if [ ! -e %q ]; then touch %q; echo first; exit 9; fi; echo second`,
			filepath.Join(dir, "tried"), filepath.Join(dir, "tried")))
	wantCode(t, r, 0)
	s := readSummary(t, out)
	wantCounts(t, s, 1, 1, 0, 0, 0)
	if in := s.instance(t, "sh"); in.Attempts != 2 {
		t.Errorf("sh: %+v, want 2 attempts", in)
	}
	evs := readEvents(t, out)
	fin := checkOneFinalEach(t, evs, []string{"sh"})
	if e := fin["sh"]; e.Attempt != 2 || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("final event %+v, want attempt 2 with exit 0", e)
	}
	if got := startedNames(evs); len(got) != 2 {
		t.Errorf("started events for %q, want two attempts of sh", got)
	}
	if got := readFile(t, filepath.Join(out, "sh", "stdout")); got != "second\n" {
		t.Errorf("sh/stdout = %q", got)
	}
	if got := readFile(t, filepath.Join(out, "sh", "attempt-1", "stdout")); got != "first\n" {
		t.Errorf("sh/attempt-1/stdout = %q", got)
	}
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	killSleepsAtCleanup(t, filepath.Join(dir, "pid"))
	jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: slow
    timeout: 1s
    shell: 'echo $$ > %q; exec sleep 1000'
  - name: quick
    shell: echo quick
`, filepath.Join(dir, "pid")))
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	s := readSummary(t, out)
	wantCounts(t, s, 2, 1, 1, 0, 0)
	if in := s.instance(t, "slow"); in.State != "failed" || !strings.Contains(in.Error, "timed out") {
		t.Errorf("slow: %+v, want failed: timed out", in)
	}
	if alive := waitGone(readPIDs(t, filepath.Join(dir, "pid")), 20*time.Second); len(alive) > 0 {
		t.Errorf("timed-out process still running after drover exited: %v", alive)
	}
}

// A missing executable, a missing work dir: that instance fails with the
// reason, and the rest of the run goes on.
func TestRunMissingExecutable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: ghost
    command: [/nonexistent/drover-test-ghost, arg]
  - name: ghostpath
    command: [drover-test-no-such-program]
  - name: nodir
    workdir: /nonexistent/drover-test-dir
    shell: echo never
  - name: fine
    repeat: 2
    shell: 'echo fine {index}'
  - name: ghostsetup
    setup: ["true"]
    command: [drover-test-missing-after-setup]
  - name: ghostshell
    shell: drover-test-missing-in-shell
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	names := []string{"ghost", "ghostpath", "nodir", "fine.0", "fine.1", "ghostsetup", "ghostshell"}
	s := readSummary(t, out)
	wantSameNames(t, "instances", s.names(), names)
	wantCounts(t, s, 7, 2, 5, 0, 0)
	for i := range 2 {
		inst := fmt.Sprintf("fine.%d", i)
		if got := readFile(t, filepath.Join(out, inst, "stdout")); got != fmt.Sprintf("fine %d\n", i) {
			t.Errorf("%s/stdout = %q", inst, got)
		}
	}
	fin := checkOneFinalEach(t, readEvents(t, out), names)
	notFound := regexp.MustCompile(`(?i)not found|no such file`)
	for inst, missing := range map[string]string{
		"ghost":     "/nonexistent/drover-test-ghost",
		"ghostpath": "drover-test-no-such-program",
		"nodir":     "/nonexistent/drover-test-dir",
	} {
		in := s.instance(t, inst)
		if in.State != "failed" || !strings.Contains(in.Error, missing) || !notFound.MatchString(in.Error) {
			t.Errorf("summary: %s = %+v, want failed with an error saying %s is not found", inst, in, missing)
		}
		if e := fin[inst]; e.Event != "failed" || !strings.Contains(e.Error, missing) {
			t.Errorf("final event of %s: %+v, want failed naming %s", inst, e, missing)
		}
		if !regexp.MustCompile(`(?m)^\s*` + inst + `\s+failed.*` + regexp.QuoteMeta(missing)).MatchString(r.stderr) {
			t.Errorf("stderr does not name %s and what is missing:\n%s", inst, r.stderr)
		}
	}
	// Found missing by the shell: it says so on the instance's stderr.
	for inst, missing := range map[string]string{
		"ghostsetup": "drover-test-missing-after-setup",
		"ghostshell": "drover-test-missing-in-shell",
	} {
		in := s.instance(t, inst)
		if in.State != "failed" || in.ExitCode == nil || *in.ExitCode != 127 {
			t.Errorf("summary: %s = %+v, want failed with exit 127", inst, in)
		}
		if got := readFile(t, filepath.Join(out, inst, "stderr")); !strings.Contains(got, missing) || !notFound.MatchString(got) {
			t.Errorf("%s/stderr = %q, want it to say %s is not found", inst, got, missing)
		}
	}
}

// An instance that leaves a background process behind: when drover run
// exits, nothing it started should still run (SPEC: "when an agent dies ...
// everything it started goes").
func TestRunLeavesNoBackgroundProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	pidfile := filepath.Join(dir, "bgpid")
	killSleepsAtCleanup(t, pidfile)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--", "sh", "-c",
		fmt.Sprintf(`sleep 1000 & echo $! > %q`, pidfile))
	wantCode(t, r, 0)
	if alive := waitGone(readPIDs(t, pidfile), 5*time.Second); len(alive) > 0 {
		t.Errorf("drover run exited and left the instance's background child running: %v", alive)
	}
}
