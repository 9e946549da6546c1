package cli_test

// End-to-end tests of the real drover binary. TestMain builds it once; every
// test runs it with os/exec (never cli.Main in-process for `run`: the
// process supervisor reaps every child of the process it lives in, which
// would include the test binary's own children).
//
// The assertions are on outcomes only: exit statuses, the results
// directory, events.jsonl, summary.json and what is printed. The only
// deadlines are generous backstops that turn a hang into a failure.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/e2e"
)

var (
	droverBin string // the binary under test
	repoRoot  string // the module root, where examples/ lives
)

// backstop bounds one drover invocation; nothing in these tests should
// come near it.
const backstop = 2 * time.Minute

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	root, err := e2e.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "drover-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := e2e.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	droverBin, repoRoot = bin, root
	return m.Run()
}

var testEnv = e2e.Env

type safeBuffer = e2e.Buffer

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// drover runs the binary in dir with args to completion.
func drover(t *testing.T, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, droverBin, args...)
	cmd.Dir = dir
	cmd.Env = testEnv()
	// On the backstop, SIGQUIT makes the Go runtime print every goroutine
	// of a hung drover to its stderr, which the failure shows.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		events := ""
		if i := slices.Index(args, "--out"); i >= 0 && i+1 < len(args) {
			out := args[i+1]
			if !filepath.IsAbs(out) {
				out = filepath.Join(dir, out)
			}
			data, _ := os.ReadFile(filepath.Join(out, "events.jsonl"))
			events = "--- events.jsonl:\n" + string(data)
		}
		t.Fatalf("drover %q did not finish within the %s backstop\n%s%s", args, backstop, r, events)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("drover %q: %v\n%s", args, err, r)
	}
	return r
}

// wantCode fails the test unless r ended with code.
func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit status %d, got:\n%s", code, r)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// event is one line of events.jsonl, as the contract describes it.
type event struct {
	Time     string `json:"time"`
	Event    string `json:"event"`
	Job      string `json:"job"`
	Node     string `json:"node"`
	Attempt  int    `json:"attempt"`
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal"`
	Error    string `json:"error"`
	PID      int    `json:"pid"`
}

func (e event) final() bool {
	return e.Event == "finished" || e.Event == "failed" || e.Event == "lost"
}

// readEvents reads OUT/events.jsonl, checking that every line is a JSON
// object with an RFC 3339 time and an event name.
func readEvents(t *testing.T, out string) []event {
	t.Helper()
	data := readFile(t, filepath.Join(out, "events.jsonl"))
	if data == "" || !strings.HasSuffix(data, "\n") {
		t.Fatalf("events.jsonl is empty or its last line is torn:\n%s", data)
	}
	var evs []event
	for i, line := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		var e event
		dec := json.NewDecoder(strings.NewReader(line))
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("events.jsonl line %d: %v: %s", i+1, err, line)
		}
		if _, err := time.Parse(time.RFC3339, e.Time); err != nil {
			t.Errorf("events.jsonl line %d: time is not RFC 3339: %v", i+1, err)
		}
		if e.Event == "" {
			t.Errorf("events.jsonl line %d has no event: %s", i+1, line)
		}
		evs = append(evs, e)
	}
	return evs
}

// lastRun is the events from the last run-start on: what the latest run
// (of several into one results directory) appended.
func lastRun(t *testing.T, evs []event) []event {
	t.Helper()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Event == "run-start" {
			return evs[i:]
		}
	}
	t.Fatalf("no run-start event in %v", evs)
	return nil
}

// finals maps each instance to its final events.
func finals(evs []event) map[string][]event {
	m := make(map[string][]event)
	for _, e := range evs {
		if e.final() {
			m[e.Job] = append(m[e.Job], e)
		}
	}
	return m
}

// startedNames lists the instances with a started event, in order.
func startedNames(evs []event) []string {
	var names []string
	for _, e := range evs {
		if e.Event == "started" {
			names = append(names, e.Job)
		}
	}
	return names
}

// checkOneFinalEach checks that evs hold exactly one final event for each
// of names and none for anything else, and returns them by instance.
func checkOneFinalEach(t *testing.T, evs []event, names []string) map[string]event {
	t.Helper()
	got := finals(evs)
	one := make(map[string]event)
	for _, n := range names {
		switch fs := got[n]; len(fs) {
		case 1:
			one[n] = fs[0]
		default:
			t.Errorf("instance %s has %d final events, want exactly 1: %+v", n, len(fs), fs)
		}
	}
	for n, fs := range got {
		if !slices.Contains(names, n) {
			t.Errorf("final events for unexpected instance %q: %+v", n, fs)
		}
	}
	return one
}

type instanceResult struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Node     string `json:"node"`
	Attempts int    `json:"attempts"`
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal"`
	Error    string `json:"error"`
}

type summary struct {
	Total          int              `json:"total"`
	Succeeded      int              `json:"succeeded"`
	Failed         int              `json:"failed"`
	Lost           int              `json:"lost"`
	Cancelled      int              `json:"cancelled"`
	Skipped        int              `json:"skipped"`
	StoppedBecause string           `json:"stopped_because"`
	Instances      []instanceResult `json:"instances"`
}

func (s *summary) instance(t *testing.T, name string) instanceResult {
	t.Helper()
	for _, in := range s.Instances {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("summary.json has no instance %q: %+v", name, s.Instances)
	return instanceResult{}
}

func (s *summary) names() []string {
	var n []string
	for _, in := range s.Instances {
		n = append(n, in.Name)
	}
	return n
}

// readSummary reads OUT/summary.json and checks that its counts agree
// with its instances.
func readSummary(t *testing.T, out string) *summary {
	t.Helper()
	var s summary
	data := readFile(t, filepath.Join(out, "summary.json"))
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		t.Fatalf("summary.json: %v\n%s", err, data)
	}
	tally := map[string]int{}
	seen := map[string]bool{}
	for _, in := range s.Instances {
		tally[in.State]++
		if seen[in.Name] {
			t.Errorf("summary.json lists instance %q twice", in.Name)
		}
		seen[in.Name] = true
	}
	if s.Total != len(s.Instances) || s.Succeeded != tally["succeeded"] || s.Failed != tally["failed"] ||
		s.Lost != tally["lost"] || s.Cancelled != tally["cancelled"] || s.Skipped != tally["skipped"] {
		t.Errorf("summary.json counts disagree with its instances (states %v):\n%s", tally, data)
	}
	return &s
}

// wantCounts checks the summary's totals.
func wantCounts(t *testing.T, s *summary, total, succeeded, failed, cancelled, skipped int) {
	t.Helper()
	if s.Total != total || s.Succeeded != succeeded || s.Failed != failed || s.Lost != 0 ||
		s.Cancelled != cancelled || s.Skipped != skipped {
		t.Errorf("summary counts: total %d succeeded %d failed %d lost %d cancelled %d skipped %d; "+
			"want %d %d %d 0 %d %d", s.Total, s.Succeeded, s.Failed, s.Lost, s.Cancelled, s.Skipped,
			total, succeeded, failed, cancelled, skipped)
	}
}

func wantSameNames(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("%s: got %q, want %q", what, g, w)
	}
}

// wantNotExist checks that path was not created: nothing started.
func wantNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(path)
		t.Errorf("%s exists (err %v, entries %v): something was started", path, err, entries)
	}
}

// resources is `drover resources --json`.
type resources struct {
	Node        string            `json:"node"`
	Cores       [][]int           `json:"cores"`
	MemoryBytes int64             `json:"memory_bytes"`
	GPUs        []json.RawMessage `json:"gpus"`
}

func localResources(t *testing.T) resources {
	t.Helper()
	r := drover(t, t.TempDir(), "resources", "--json")
	wantCode(t, r, 0)
	var res resources
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("resources --json: %v\n%s", err, r)
	}
	if res.Node == "" || len(res.Cores) == 0 {
		t.Fatalf("resources --json: no node name or no cores:\n%s", r)
	}
	return res
}

func (r resources) hwthreads() map[int]bool {
	m := make(map[int]bool)
	for _, c := range r.Cores {
		for _, h := range c {
			m[h] = true
		}
	}
	return m
}

// affinity is this process's CPU affinity mask, which drover inherits.
func affinity(t *testing.T) map[int]bool {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	m := make(map[int]bool)
	for cpu := 0; cpu < len(set)*64; cpu++ {
		if set.IsSet(cpu) {
			m[cpu] = true
		}
	}
	return m
}

// parseCPUList parses a Linux CPU list such as "0-3,8".
func parseCPUList(t *testing.T, s string) []int {
	t.Helper()
	var out []int
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || b < a {
			t.Fatalf("bad CPU list %q", s)
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// readPIDs reads the pids the jobs wrote, one per file matching glob.
func readPIDs(t *testing.T, glob string) []int {
	t.Helper()
	files, err := filepath.Glob(glob)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range files {
		pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, f)))
		if err != nil || pid <= 1 {
			t.Fatalf("%s: bad pid %q", f, readFile(t, f))
		}
		pids = append(pids, pid)
	}
	return pids
}

// procState is the state letter and command name of pid from
// /proc/PID/stat, or ok false when there is no such process.
func procState(pid int) (state byte, comm string, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", false
	}
	s := string(data)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open || closing+2 >= len(s) {
		return 0, "", false
	}
	return s[closing+2], s[open+1 : closing], true
}

// sleepAlive reports whether pid is still a live (not zombie) sleep
// process: one of the test jobs' processes that drover failed to end. A
// zombie is dead: drover has exited, so a child it did not reap is
// reparented, and in a container the new parent may never reap it.
func sleepAlive(pid int) (bool, string) {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false, "gone"
	}
	state, comm, ok := procState(pid)
	switch {
	case !ok:
		return false, "gone"
	case state == 'Z' || state == 'X':
		return false, "zombie"
	case comm != "sleep":
		return false, "pid reused by " + comm
	}
	return true, fmt.Sprintf("alive: %s, state %c", comm, state)
}

// waitGone waits (up to a backstop: a SIGKILLed process may take a moment
// to die) until none of pids is a live sleep, and returns those that are.
func waitGone(pids []int, within time.Duration) []string {
	deadline := time.Now().Add(within)
	for {
		var alive []string
		for _, pid := range pids {
			if ok, why := sleepAlive(pid); ok {
				alive = append(alive, fmt.Sprintf("%d (%s)", pid, why))
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killSleepsAtCleanup SIGKILLs, when the test ends, whichever of the pids
// in the files matching glob is still a live sleep: a failing test must not
// leave its jobs behind.
func killSleepsAtCleanup(t *testing.T, glob string) {
	t.Cleanup(func() {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil || pid <= 1 {
				continue
			}
			if ok, _ := sleepAlive(pid); ok {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
}
