package faults_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/e2e"
	"golang.org/x/sys/unix"
)

// runSleepers starts `drover run` of one sleeper job per core (each a
// shell with a background sleep in its process group) and waits until all
// run. It returns drover, the results dir and the jobs' processes.
func runSleepers(t *testing.T, flags ...string) (*proc, string, []string, []jobProc) {
	t.Helper()
	return runSleepersAs(t, false, flags...)
}

// runSleepersAs is runSleepers, as user nobody when unprivileged (the
// test runs as root): then the agent may not make a cgroup, as for most
// users of a shared cluster.
func runSleepersAs(t *testing.T, unprivileged bool, flags ...string) (*proc, string, []string, []jobProc) {
	t.Helper()
	n := numCores(t)
	dir, bin, prefix, env := t.TempDir(), droverBin, []string(nil), []string(nil)
	if unprivileged {
		dir, bin, prefix, env = asNobody(t)
	}
	out := filepath.Join(dir, "out")
	pids := filepath.Join(dir, "pids")
	if err := os.Mkdir(pids, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pids, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	args := append(prefix, "run", "--progress", "none", "--out", out)
	args = append(args, flags...)
	args = append(args, "--repeat", strconv.Itoa(n), "--", "sh", "-c", sleeperScript(pids, "$DROVER_INDEX"))
	d := e2e.Start(t, bin, dir, env, args...)
	jobs := waitJobs(t, d, pids, n)
	return d, out, instanceNames("sh", n), jobs
}

// asNobody prepares to run drover as user nobody: a directory that user
// may write (and everyone reach), a copy of the binary in it, and the
// command (setpriv) and environment that switch to that user.
func asNobody(t *testing.T) (dir, bin string, prefix, env []string) {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if os.Getuid() != 0 || err != nil {
		t.Skip("needs root and setpriv to run drover as user nobody")
	}
	dir, err = os.MkdirTemp("", "drover-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(droverBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "drover"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	prefix = []string{"--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", filepath.Join(dir, "drover")}
	return dir, setpriv, prefix, []string{"HOME=" + dir, "TMPDIR=" + dir}
}

// An agent that is SIGKILLed: the manager declares its node lost within
// --node-timeout, reports every running instance lost (once), exits 1, and
// nothing the jobs started survives the agent.
func TestAgentSIGKILL(t *testing.T) { testAgentSIGKILL(t, agentOnly) }

// The guard SIGKILLed with the agent proper, as `pkill -9 drover` on the
// node would: nothing is left to walk the tree, so the setsid daemons go
// only through the agent's cgroup, which its keeper kills. Needs a node
// that lets the agent make a cgroup (root here).
func TestAgentAndGuardSIGKILL(t *testing.T) {
	if os.Getenv("DROVER_TEST_CGROUP") != "1" {
		t.Skip("needs a cgroup for the agent: DROVER_TEST_CGROUP=1 (scripts/test sets it as root with cgroup v2)")
	}
	testAgentSIGKILL(t, guardAlso)
}

// The same for a user the node gives no cgroup (nobody here): the keeper
// finds the setsid daemons by the mark in their environment.
func TestAgentAndGuardSIGKILLUnprivileged(t *testing.T) { testAgentSIGKILL(t, guardAlsoUnprivileged) }

// Which processes testAgentSIGKILL kills, and as whom drover runs.
const (
	agentOnly = iota
	guardAlso
	guardAlsoUnprivileged
)

func testAgentSIGKILL(t *testing.T, mode int) {
	t.Parallel()
	const nodeTimeout = time.Second
	killGuard := mode != agentOnly
	d, out, names, jobs := runSleepersAs(t, mode == guardAlsoUnprivileged, "--node-timeout", nodeTimeout.String(), "--retries", "0")
	agent := findAgent(t, d)
	victims := []int{agent}
	if killGuard {
		st, ok := statOf(agent)
		if !ok {
			t.Fatal("the agent is gone before the test killed it")
		}
		victims = []int{st.ppid, agent}
	}

	cgroup := ""
	if mode == guardAlsoUnprivileged {
		if c := jobCgroup(t, jobs[0].pid, false); c != "" {
			t.Fatalf("the agent of user nobody made cgroup %s: the case without one is not tested", c)
		}
	} else {
		cgroup = jobCgroup(t, jobs[0].pid, os.Getenv("DROVER_TEST_CGROUP") == "1")
	}

	killed := time.Now()
	for _, pid := range victims {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	if code := d.Wait(t, nodeTimeout+slack); code != 1 {
		t.Errorf("drover run exited %d after its agent was killed, want 1\n%s", code, d.Out)
	}
	t.Logf("agent SIGKILLed: drover run exited %v later (node-timeout %v)", d.Exited.Sub(killed).Round(time.Millisecond), nodeTimeout)

	evs := readEvents(t, out)
	lost, ok := firstEvent(evs, "node-lost")
	if !ok {
		t.Errorf("no node-lost event:\n%+v", evs)
	} else {
		detect := lost.Time.Sub(killed)
		t.Logf("node-lost %v after the SIGKILL (node-timeout %v): %s", detect.Round(time.Millisecond), nodeTimeout, lost.Error)
		if detect > nodeTimeout+slack {
			t.Errorf("node-lost %v after the SIGKILL, beyond node-timeout %v + %v", detect, nodeTimeout, slack)
		}
		// Lost because the agent was seen to end, not after the timeout.
		if !strings.Contains(lost.Error, "its agent ended") {
			t.Errorf("node-lost because %q, want its agent ended", lost.Error)
		}
	}
	for name, e := range finalsOf(t, evs, names) {
		if e.Event != "lost" {
			t.Errorf("%s: final event %+v, want lost", name, e)
		}
	}
	noDuplicateStarts(t, evs)

	// Everything the jobs started goes with the agent: the leaders
	// (Pdeathsig), their groups (the keeper) and the setsid daemons (the
	// guard, a subreaper above the agent; else the keeper, through the
	// cgroup).
	alive, took := waitGone(jobs, 2*time.Second)
	t.Logf("job processes: %d of %d gone %v after drover exited", len(jobs)-len(alive), len(jobs), took.Round(time.Millisecond))
	if len(alive) > 0 {
		t.Errorf("processes of the jobs still alive 2s after drover exited: %v", alive)
	}
	// Nor is the cgroup they ran in left: the guard removes it before it
	// exits; without a guard the keeper does, once it has killed what was
	// in it, which may be a moment after drover exited.
	if cgroup != "" {
		waitCgroupGone(t, cgroup)
	}
}

// waitCgroupGone waits, up to cgroupPatience after drover exited, until
// the jobs' cgroup at path is removed.
func waitCgroupGone(t *testing.T, path string) {
	t.Helper()
	start := time.Now()
	for {
		_, err := os.Stat(path)
		if os.IsNotExist(err) {
			t.Logf("the jobs' cgroup removed %v after drover exited", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > cgroupPatience {
			t.Errorf("the jobs' cgroup %s is still there %v after drover exited: %v", path, cgroupPatience, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cgroupPatience is how long a keeper may take to remove the cgroup: its
// rmdir retries for up to 5 s while the killed are exiting.
const cgroupPatience = 10 * time.Second

// jobCgroup is the directory of the cgroup the agent made for its jobs,
// as the job process pid shows it, or "" when the agent made none, which
// fails the test if it must have made one.
func jobCgroup(t *testing.T, pid int, must bool) string {
	t.Helper()
	self, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var rel string
	for _, line := range strings.Split(string(self), "\n") {
		if r, ok := strings.CutPrefix(line, "0::"); ok {
			rel = r
		}
	}
	if !strings.HasPrefix(filepath.Base(rel), "drover-") {
		if must {
			t.Fatalf("job %d runs in cgroup %q, not one of the agent's", pid, rel)
		}
		return ""
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		if pre, post, ok := strings.Cut(line, " - "); ok && strings.HasPrefix(post, "cgroup2 ") {
			if f := strings.Fields(pre); len(f) >= 5 && f[3] == "/" {
				return filepath.Join(f[4], rel)
			}
		}
	}
	t.Fatalf("no cgroup2 mount for %q", rel)
	return ""
}

// drover run SIGKILLed: its agent sees stdin close (and would see the
// manager silent for --monitor-timeout), stops every process and exits.
func TestManagerSIGKILL(t *testing.T) {
	t.Parallel()
	const monitor, grace = 3 * time.Second, time.Second
	d, _, _, jobs := runSleepers(t, "--monitor-timeout", monitor.String(), "--grace", grace.String())
	agent := findAgent(t, d)

	killed := time.Now()
	if err := d.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.Wait(t, backstop)
	agentGone := waitAgentGone(t, agent, monitor+grace+slack)
	alive, _ := waitGone(jobs, monitor+grace+slack-time.Since(killed))
	t.Logf("drover run SIGKILLed: agent exited %v later, job processes gone %v later (monitor-timeout %v, grace %v)",
		agentGone.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), monitor, grace)
	if len(alive) > 0 {
		t.Errorf("processes of the jobs still alive %v after the manager was killed: %v", time.Since(killed), alive)
	}
}

// An agent stopped for less than --node-timeout in the middle of many
// short instances: the run goes on as if nothing happened.
func TestAgentSIGSTOPShort(t *testing.T) {
	t.Parallel()
	const nodeTimeout, pause, total = 3 * time.Second, time.Second, 300
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// sleep 0.02 rather than true: 300 trues take ~0.3s here, which leaves
	// no room to stop the agent in the middle of the run.
	d := startDrover(t, dir, nil, "run", "--progress", "none", "--out", out, "--node-timeout", nodeTimeout.String(),
		"--repeat", strconv.Itoa(total), "--", "sleep", "0.02")
	agent := findAgent(t, d)
	deadline := time.Now().Add(backstop)
	for countEvents(out)["started"] < 20 {
		if !d.Running() || time.Now().After(deadline) {
			t.Fatalf("20 instances did not start\n%s", d.Out)
		}
		time.Sleep(time.Millisecond)
	}
	if err := unix.Kill(agent, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	atStop := countEvents(out)
	time.Sleep(pause)
	if err := unix.Kill(agent, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent stopped for %v with %d started and %d finished of %d (node-timeout %v)",
		time.Since(stopped).Round(time.Millisecond), atStop["started"], atStop["finished"], total, nodeTimeout)
	if atStop["finished"] >= total {
		t.Fatalf("the run was over before the agent was stopped")
	}

	if code := d.Wait(t, backstop); code != 0 {
		t.Errorf("drover run exited %d, want 0\n%s", code, d.Out)
	}
	evs := readEvents(t, out)
	if _, ok := firstEvent(evs, "node-lost"); ok {
		t.Errorf("node lost although it was stopped for %v only, less than node-timeout %v", pause, nodeTimeout)
	}
	for name, e := range finalsOf(t, evs, instanceNames("sleep", total)) {
		if e.Event != "finished" || e.ExitCode == nil || *e.ExitCode != 0 {
			t.Errorf("%s: final event %+v, want finished with exit 0", name, e)
		}
	}
	noDuplicateStarts(t, evs)
}

// An agent stopped for longer than --node-timeout but shorter than
// --monitor-timeout: drover reports its instances lost and exits 1; once
// the agent runs again it learns it was given up (or that its manager has
// gone), stops its processes and exits, and no late exit of it becomes a
// second final event.
func TestAgentSIGSTOPLong(t *testing.T) {
	t.Parallel()
	const nodeTimeout, monitor, pause = time.Second, 30 * time.Second, 3 * time.Second
	d, out, names, jobs := runSleepers(t, "--log-level", "info", "--node-timeout", nodeTimeout.String(),
		"--monitor-timeout", monitor.String(), "--retries", "0", "--grace", "1s")
	agent := findAgent(t, d)

	if err := unix.Kill(agent, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// Wait for the node-lost event (backstop: node-timeout + slack), then
	// the rest of the pause.
	for countEvents(out)["node-lost"] == 0 && time.Since(stopped) < nodeTimeout+slack {
		time.Sleep(10 * time.Millisecond)
	}
	if d := pause - time.Since(stopped); d > 0 {
		time.Sleep(d)
	}
	if err := unix.Kill(agent, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	t.Logf("agent stopped for %v (node-timeout %v, monitor-timeout %v)", resumed.Sub(stopped).Round(time.Millisecond), nodeTimeout, monitor)

	if code := d.Wait(t, backstop); code != 1 {
		t.Errorf("drover run exited %d, want 1\n%s", code, d.Out)
	}
	waitAgentGone(t, agent, slack)
	agentExited := time.Since(resumed)
	alive, _ := waitGone(jobs, slack)
	t.Logf("after SIGCONT: drover exited %v later, the agent %v later",
		d.Exited.Sub(resumed).Round(time.Millisecond), agentExited.Round(time.Millisecond))
	if len(alive) > 0 {
		t.Errorf("processes of the jobs still alive after the agent exited: %v", alive)
	}
	for line := range strings.Lines(d.Out.String()) {
		if strings.Contains(line, "stopping every process") || strings.Contains(line, "stdin closed") {
			t.Logf("agent: %s", strings.TrimSpace(line))
		}
	}

	evs := readEvents(t, out)
	lost, ok := firstEvent(evs, "node-lost")
	if !ok {
		t.Fatalf("no node-lost event:\n%+v", evs)
	}
	detect := lost.Time.Sub(stopped)
	t.Logf("node-lost %v after SIGSTOP (node-timeout %v)", detect.Round(time.Millisecond), nodeTimeout)
	if detect > nodeTimeout+slack {
		t.Errorf("node-lost %v after SIGSTOP, beyond node-timeout %v + %v", detect, nodeTimeout, slack)
	}
	for name, e := range finalsOf(t, evs, names) {
		if e.Event != "lost" {
			t.Errorf("%s: final event %+v, want lost", name, e)
		}
	}
	noDuplicateStarts(t, evs)
}

// drover run stopped (SIGSTOP) for longer than --monitor-timeout: its
// stdin lifeline stays open, so only the monitor timeout can tell the
// agent; it stops every process and exits while the manager is still
// stopped. Resumed, drover reports each instance once and exits 1.
func TestManagerSIGSTOPLong(t *testing.T) {
	t.Parallel()
	const monitor, grace = 3 * time.Second, time.Second
	d, out, names, jobs := runSleepers(t, "--monitor-timeout", monitor.String(), "--grace", grace.String(), "--retries", "0")
	agent := findAgent(t, d)

	if err := unix.Kill(d.PID(), unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = unix.Kill(d.PID(), unix.SIGCONT)
		}
	}
	defer resume()
	agentGone := waitAgentGone(t, agent, monitor+grace+slack)
	alive, took := waitGone(jobs, monitor+grace+slack-agentGone)
	t.Logf("manager stopped: agent exited %v later, job processes gone %v later (monitor-timeout %v, grace %v)",
		agentGone.Round(time.Millisecond), (agentGone + took).Round(time.Millisecond), monitor, grace)
	if len(alive) > 0 {
		t.Errorf("processes still alive %v after the manager stopped: %v", time.Since(stopped), alive)
	}
	resume()
	resumedAt := time.Now()
	if code := d.Wait(t, backstop); code != 1 {
		t.Errorf("drover run exited %d, want 1\n%s", code, d.Out)
	}
	t.Logf("manager resumed: drover run exited %v later", d.Exited.Sub(resumedAt).Round(time.Millisecond))
	evs := readEvents(t, out)
	for name, e := range finalsOf(t, evs, names) {
		t.Logf("%s: %s %s %s", name, e.Event, e.Signal, e.Error)
	}
	noDuplicateStarts(t, evs)
}
