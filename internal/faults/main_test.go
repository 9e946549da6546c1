package faults_test

// Fault-injection tests of the real drover binary. TestMain builds it once;
// every test runs it with os/exec, injects one fault (SIGKILL or SIGSTOP of
// an agent or a manager, garbage on the manager's port) and checks the
// outcome: exit statuses, events.jsonl, and that no process a job started
// is left. The only deadlines are backstops of the form "the configured
// timeout plus generous slack"; the measured times are logged.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/e2e"

	"golang.org/x/sys/unix"
)

var droverBin string

// backstop bounds anything that should take a few seconds at most.
const backstop = 2 * time.Minute

// slack is added to a configured timeout to make a backstop of it.
const slack = 10 * time.Second

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "drover-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if droverBin, err = e2e.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	return m.Run()
}

var baseEnv = e2e.Env

type safeBuffer = e2e.Buffer

type proc = e2e.Proc

// startDrover starts the binary under test in dir with extra environment.
func startDrover(t *testing.T, dir string, env []string, args ...string) *proc {
	t.Helper()
	return e2e.Start(t, droverBin, dir, env, args...)
}

// procStat is what /proc/PID/stat says of a process.
type procStat struct {
	comm  string
	state byte
	ppid  int
}

func statOf(pid int) (procStat, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	s := string(data)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return procStat{}, false
	}
	fields := strings.Fields(s[closing+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	return procStat{comm: s[open+1 : closing], state: fields[0][0], ppid: ppid}, true
}

// live reports whether pid is a live (neither gone nor zombie) process
// named comm. Another name means the pid was reused: the process is gone.
func live(pid int, comm string) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	st, ok := statOf(pid)
	return ok && st.state != 'Z' && st.state != 'X' && st.comm == comm
}

// children lists the live children of pid.
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := statOf(p); ok && st.ppid == pid && st.state != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// findAgent returns the pid of the agent proper, the `drover agent
// --guarded` child of the `drover agent` guard that drover started,
// waiting for it up to the backstop. That is the process an OOM kill or a
// crash would end; the guard only waits for it.
func findAgent(t *testing.T, drover *proc) int {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		for _, guard := range children(drover.PID()) {
			if args := cmdline(guard); len(args) < 2 || filepath.Base(args[0]) != "drover" || args[1] != "agent" {
				continue
			}
			for _, c := range children(guard) {
				if !slices.Contains(cmdline(c), "--guarded") {
					continue
				}
				t.Cleanup(func() {
					if live(c, "drover") {
						_ = unix.Kill(c, unix.SIGCONT)
						_ = unix.Kill(c, unix.SIGKILL)
					}
				})
				return c
			}
		}
		if !drover.Running() || time.Now().After(deadline) {
			t.Fatalf("no `drover agent --guarded` below drover (pid %d)\n%s", drover.PID(), drover.Out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// jobProc is one process a job started, as the job recorded it.
type jobProc struct {
	pid  int
	comm string // "sh" for the leader, "sleep" for its background child
	what string
}

func (j jobProc) String() string { return fmt.Sprintf("%s %d (%s)", j.what, j.pid, j.comm) }

// sleeperScript is a job's shell script: it starts a background sleep in
// its process group and a daemon sleep that leaves it (setsid), records
// its own pid and theirs in DIR/pids.TAG (written whole, by rename) and
// waits.
func sleeperScript(dir, tag string) string {
	tmp := filepath.Join(dir, "tmp."+tag)
	return fmt.Sprintf(`sleep 600 & b=$!; setsid sleep 600 & echo $$ $b $! > %q; mv %q %q; wait`, tmp, tmp, filepath.Join(dir, "pids."+tag))
}

// waitJobs waits until n pids.* files are in dir and returns their
// processes. It fails if drover exits first. The test's cleanup kills
// whatever of them is still alive.
func waitJobs(t *testing.T, drover *proc, dir string, n int) []jobProc {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "pids.*"))
		if len(files) >= n {
			var jobs []jobProc
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				fields := strings.Fields(string(data))
				if len(fields) != 3 {
					t.Fatalf("%s: %q, want three pids", f, data)
				}
				tag := strings.TrimPrefix(filepath.Base(f), "pids.")
				for i, what := range []string{"sh", "sleep", "setsid-sleep"} {
					pid, err := strconv.Atoi(fields[i])
					if err != nil || pid <= 1 {
						t.Fatalf("%s: bad pid %q", f, fields[i])
					}
					comm := strings.TrimPrefix(what, "setsid-")
					jobs = append(jobs, jobProc{pid: pid, comm: comm, what: tag + "/" + what})
				}
			}
			t.Cleanup(func() {
				for _, j := range jobs {
					if live(j.pid, j.comm) {
						_ = unix.Kill(j.pid, unix.SIGKILL)
					}
				}
			})
			return jobs
		}
		if !drover.Running() {
			t.Fatalf("drover exited before %d jobs ran\n%s", n, drover.Out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs did not start within %s\n%s", n, backstop, drover.Out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits up to within until none of jobs is alive and returns
// those that still are, and how long the wait took.
func waitGone(jobs []jobProc, within time.Duration) ([]jobProc, time.Duration) {
	start := time.Now()
	deadline := start.Add(within)
	for {
		var alive []jobProc
		for _, j := range jobs {
			if live(j.pid, j.comm) {
				alive = append(alive, j)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive, time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAgentGone waits up to within for the agent process to exit and
// returns how long that took, failing the test on the backstop.
func waitAgentGone(t *testing.T, agent int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for live(agent, "drover") {
		if time.Since(start) > within {
			t.Fatalf("the agent (pid %d) still runs %s later", agent, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// numCores is the number of cores drover sees on this machine.
func numCores(t *testing.T) int {
	t.Helper()
	out, err := exec.Command(droverBin, "resources", "--json").Output()
	if err != nil {
		t.Fatalf("drover resources: %v", err)
	}
	var res struct {
		Cores [][]int `json:"cores"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Cores) == 0 {
		t.Fatalf("drover resources --json: %v: %s", err, out)
	}
	return len(res.Cores)
}

// event is one line of events.jsonl.
type event struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"`
	Job      string    `json:"job"`
	Node     string    `json:"node"`
	Attempt  int       `json:"attempt"`
	ExitCode *int      `json:"exit_code"`
	Signal   string    `json:"signal"`
	Error    string    `json:"error"`
	PID      int       `json:"pid"`
}

func (e event) final() bool {
	return e.Event == "finished" || e.Event == "failed" || e.Event == "lost"
}

// readEvents reads OUT/events.jsonl; every line must be a whole event.
func readEvents(t *testing.T, out string) []event {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 || data[len(data)-1] != '\n' {
		t.Fatalf("events.jsonl is empty or its last line is torn:\n%s", data)
	}
	var evs []event
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		var e event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events.jsonl line %d: %v: %s", i+1, err, line)
		}
		evs = append(evs, e)
	}
	return evs
}

// countEvents counts the lines of OUT/events.jsonl with each event name,
// tolerating a file that is being written.
func countEvents(out string) map[string]int {
	data, _ := os.ReadFile(filepath.Join(out, "events.jsonl"))
	n := map[string]int{}
	for line := range strings.Lines(string(data)) {
		var e event
		if json.Unmarshal([]byte(line), &e) == nil {
			n[e.Event]++
		}
	}
	return n
}

// finalsOf maps each instance to its final events and checks that names
// have exactly one each and nothing else has any.
func finalsOf(t *testing.T, evs []event, names []string) map[string]event {
	t.Helper()
	all := map[string][]event{}
	for _, e := range evs {
		if e.final() {
			all[e.Job] = append(all[e.Job], e)
		}
	}
	one := map[string]event{}
	for _, n := range names {
		if fs := all[n]; len(fs) == 1 {
			one[n] = fs[0]
		} else {
			t.Errorf("instance %s has %d final events, want exactly 1: %+v", n, len(fs), fs)
		}
	}
	for n, fs := range all {
		if !slices.Contains(names, n) {
			t.Errorf("final events of an unexpected instance %q: %+v", n, fs)
		}
	}
	return one
}

// noDuplicateStarts checks that no attempt of an instance started twice.
func noDuplicateStarts(t *testing.T, evs []event) {
	t.Helper()
	seen := map[string]int{}
	for _, e := range evs {
		if e.Event == "started" {
			seen[fmt.Sprintf("%s attempt %d", e.Job, e.Attempt)]++
		}
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("%s has %d started events", k, n)
		}
	}
}

// firstEvent returns the first event named name, or false.
func firstEvent(evs []event, name string) (event, bool) {
	for _, e := range evs {
		if e.Event == name {
			return e, true
		}
	}
	return event{}, false
}

func instanceNames(prefix string, n int) []string {
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("%s.%d", prefix, i))
	}
	return names
}
