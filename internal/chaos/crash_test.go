package chaos_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// The agent proper on h2 SIGKILLed while its instances run, each of which
// has left a daemon in a session of its own: the manager declares h2 lost
// within --node-timeout, the instances that ran there fail that attempt
// once and succeed on the other hosts, and nothing of the run is left on
// h2, the daemons included.
func TestAgentSIGKILLOnHost(t *testing.T) { testAgentSIGKILLOnHost(t, false, false) }

// The same with the guard SIGKILLed together with the agent proper (as
// `pkill -9 drover` on the host would): no guard is left to walk the tree,
// so the daemons go through the agent's cgroup, which its keeper kills;
// the remote shell passes the guard's death on through ssh.
func TestAgentAndGuardSIGKILLOnHost(t *testing.T) { testAgentSIGKILLOnHost(t, true, false) }

// The same inside a Slurm allocation: the agents are the tasks of one srun
// step, which goes on with the others; srun's report of the task's end
// makes the node lost at once.
func TestAgentSIGKILLUnderSlurm(t *testing.T) { testAgentSIGKILLOnHost(t, false, true) }

func testAgentSIGKILLOnHost(t *testing.T, guardToo, slurm bool) {
	bed := testbed.Require(t)
	const (
		n, victim   = 12, "h2"
		nodeTimeout = 2 * time.Second
		// gone bounds how long after the kill anything of the run may be
		// left on the victim: well under the daemons' 600 s and the jobs'
		// run, so only a kill makes it.
		gone = 3 * time.Second
		// An attempt on the victim runs until the kill (at most stuck, so
		// a kill that never comes still ends); elsewhere it takes run
		// seconds. Timing alone (every job 8 s) let the kill land after
		// the victim's jobs had ended on a loaded CI machine.
		stuck, run = 120, 2
	)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("agentkill")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	daemon := sleep + " 600"
	shell := fmt.Sprintf(`setsid %s </dev/null >/dev/null 2>&1 & if [ "$DROVER_NODE" = %s ]; then %s %d; else %s %d; fi`,
		daemon, victim, sleep, stuck, sleep, run)
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: k1\n    shell: %q\n    repeat: %d\n", shell, n))

	flags := []string{"--node-timeout", nodeTimeout.String(), "--retries", "1", "--grace", "1s", "--out", out, job}
	var d *proc
	if slurm {
		d = startSallocRun(t, bed, dir, flags...)
	} else {
		d = startRun(t, bed, dir, nil, flags...)
	}
	// The precondition, before the kill: instances run on the victim,
	// each stuck in its sleep there. Anchored: the job's shell has the
	// sleep's command line in its own.
	running := waitRunningOn(t, bed, d, out, victim, "^"+pattern(fmt.Sprintf("%s %d", sleep, stuck)), 2*time.Minute)
	for deadline := time.Now().Add(30 * time.Second); len(pgrep(t, bed, victim, "^"+pattern(daemon))) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no daemon on %s within 30s of an instance starting there", victim)
		}
		time.Sleep(50 * time.Millisecond)
	}
	agent := agentProper(t, bed, victim)
	var killAt time.Time
	if guardToo {
		killAt = killWithParent(t, bed, victim, agent)
	} else {
		killAt = sendSignal(t, bed, victim, "KILL", agent)
	}
	jobsLeft := waitNone(t, bed, victim, pattern(marker), killAt.Add(gone))
	jobsGone := time.Since(killAt)
	agentsLeft := waitNone(t, bed, victim, agentPattern(), killAt.Add(gone))
	agentsGone := time.Since(killAt)
	if len(jobsLeft) > 0 {
		t.Errorf("job processes (daemons: %q) still on %s %v after its agent was SIGKILLed:\n%s",
			daemon, victim, jobsGone.Round(time.Millisecond), strings.Join(jobsLeft, "\n"))
	}
	if len(agentsLeft) > 0 {
		t.Errorf("agent processes still on %s %v after its agent was SIGKILLed:\n%s",
			victim, agentsGone.Round(time.Millisecond), strings.Join(agentsLeft, "\n"))
	}

	if code := d.Wait(t, backstop); code != 0 {
		t.Errorf("drover run exited %d, want 0 (every instance retried and succeeded)\n%s", code, tail(d.Out.String()))
	}
	a := checkAccounting(t, out, instanceNames("k1", n))
	onVictim := runningOn(a.evs, victim, killAt)
	for _, name := range running {
		if !slices.Contains(onVictim, name) {
			t.Errorf("%s ran on %s before the kill and never ended there, but the log does not have it running at the kill (%v)",
				name, victim, onVictim)
		}
	}
	lostAt := checkNodeLost(t, a, victim, onVictim)
	detect := lostAt.Sub(killAt)
	if detect > nodeTimeout+slack {
		t.Errorf("node-lost %v after the SIGKILL, beyond node-timeout %v + %v", detect, nodeTimeout, slack)
	}
	// Lost because ssh (or srun) passed on the agent's end, not after the
	// timeout: a guard killed by a signal reaches ssh as its shell's
	// status 137, not as ssh's own 255.
	for _, e := range a.evs {
		if e.Event == "node-lost" && !strings.Contains(e.Error, "its agent ended") {
			t.Errorf("node-lost because %q, want its agent ended", e.Error)
		}
	}
	if a.sum.Succeeded != n {
		t.Errorf("summary: %d of %d succeeded: %+v", a.sum.Succeeded, n, a.sum.Instances)
	}
	for line := range strings.Lines(d.Out.String()) {
		if strings.Contains(line, "agent guard") {
			t.Logf("drover: %s", strings.TrimSpace(line))
		}
	}
	t.Logf("MEASURE: node-lost %v after agent SIGKILL (node-timeout %v)", detect.Round(time.Millisecond), nodeTimeout)
	t.Logf("MEASURE: %s clear of job processes and daemons %s, of agent processes %s of the SIGKILL",
		victim, within(jobsLeft, jobsGone), within(agentsLeft, agentsGone))
	t.Logf("%d instances ran on %s at the kill and were retried; run took %v",
		len(onVictim), victim, d.Exited.Sub(d.Started).Round(time.Millisecond))
	noneLeft(t, bed, marker)
}

// waitRunningOn waits, while drover runs and at most within, until
// instances run on host: the log has them started there and not ended,
// and a process matching pat runs there. It returns those instances. A
// fault goes in only then, however slow the machine is to get there.
func waitRunningOn(t *testing.T, bed *testbed.Bed, d *proc, out, host, pat string, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		running := runningOn(eventsSoFar(out), host, time.Now())
		if len(running) > 0 && len(pgrep(t, bed, host, pat)) > 0 {
			return running
		}
		if !d.Running() {
			t.Fatalf("drover exited before an instance ran on %s\n%s", host, tail(d.Out.String()))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no instance running on %s within %v (logged running there: %v; processes %q there: none)\n%s",
				host, within, running, pat, tail(d.Out.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// within says how soon what waitNone waited for was gone: within took,
// unless something was left.
func within(left []string, took time.Duration) string {
	if len(left) > 0 {
		return fmt.Sprintf("NOT within %v (%d left)", took.Round(time.Millisecond), len(left))
	}
	return "within " + took.Round(time.Millisecond).String()
}

// drover run SIGKILLed in the middle of 300 short instances over the
// hosts: each agent sees its lifeline (stdin, over ssh) end, stops its jobs
// and exits; then `drover run --resume` with the same --out and job file
// runs only what had not succeeded, and in the whole events log every
// instance succeeded exactly once.
func TestManagerSIGKILLOnBedThenResume(t *testing.T) {
	bed := testbed.Require(t)
	const n, gone = 300, 15 * time.Second
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("resume")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: r1\n    shell: %q\n    repeat: %d\n", sleep+" 0.2", n))
	names := instanceNames("r1", n)

	d := startRun(t, bed, dir, nil, "--out", out, job)
	waitEvents(t, d, out, 2*time.Minute, "a quarter finished", func(evs []event) bool {
		k := 0
		for _, e := range evs {
			if e.Event == "finished" {
				k++
			}
		}
		return k >= n/4
	})
	if err := d.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killAt := time.Now()
	d.Wait(t, slack)
	done := map[string]bool{}
	for _, e := range eventsSoFar(out) {
		if e.Event == "finished" && e.ExitCode != nil && *e.ExitCode == 0 && e.Error == "" {
			done[e.Job] = true
		}
	}
	if len(done) >= n {
		t.Fatalf("the run was over before the manager was killed")
	}
	for what, pat := range map[string]string{"drover agent": agentPattern(), "job process": pattern(marker)} {
		for h, ps := range leftovers(t, bed, pat, gone-time.Since(killAt)) {
			t.Errorf("on %s, %s still running %v after the manager was SIGKILLed:\n%s",
				h, what, time.Since(killAt).Round(time.Millisecond), strings.Join(ps, "\n"))
		}
	}
	cleared := time.Since(killAt)

	r := startRun(t, bed, dir, nil, "--resume", "--out", out, job)
	if code := r.Wait(t, backstop); code != 0 {
		t.Errorf("the resumed run exited %d, want 0\n%s", code, tail(r.Out.String()))
	}
	a := checkResumed(t, out, names, r.Started, done)
	if a.sum.Skipped != len(done) || a.sum.Succeeded != n-len(done) {
		t.Errorf("summary of the resumed run: %d skipped, %d succeeded; want %d and %d", a.sum.Skipped, a.sum.Succeeded, len(done), n-len(done))
	}
	succeeded := map[string]int{}
	for _, e := range readEvents(t, out) {
		if e.Event == "finished" && e.ExitCode != nil && *e.ExitCode == 0 && e.Error == "" {
			succeeded[e.Job]++
		}
	}
	for _, name := range names {
		if k := succeeded[name]; k != 1 {
			t.Errorf("%s succeeded %d times in the whole log, want exactly once", name, k)
		}
	}
	t.Logf("MEASURE: no agent and no job process left on any host %v after the manager SIGKILL", cleared.Round(time.Millisecond))
	t.Logf("MEASURE: killed with %d of %d succeeded; the resumed run ran the other %d in %v",
		len(done), n, n-len(done), r.Exited.Sub(r.Started).Round(time.Millisecond))
	noneLeft(t, bed, marker)
}

// The agent proper on h2 stopped (SIGSTOP) for longer than --node-timeout,
// then continued: the manager declares h2 lost and runs its instances again
// elsewhere. Its jobs ran on meanwhile (a stopped process's children are
// not stopped); continued, the agent learns it was given up, stops them and
// exits, long before --monitor-timeout, and nothing it reports late
// becomes a second final.
func TestAgentSIGSTOPOnHost(t *testing.T) {
	bed := testbed.Require(t)
	const (
		n, victim      = 6, "h2"
		nodeTimeout    = 2 * time.Second
		monitorTimeout = 30 * time.Second
		pause          = 5 * time.Second
		grace          = time.Second
	)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("agentstop")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	// 6 instances fill the 6 cores; each runs 15 s, so those on the victim
	// still run when it is continued, and would for another 10 s.
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: p1\n    shell: %q\n    repeat: %d\n", sleep+" 15", n))

	d := startRun(t, bed, dir, nil, "--node-timeout", nodeTimeout.String(), "--monitor-timeout", monitorTimeout.String(),
		"--grace", grace.String(), "--retries", "1", "--out", out, job)
	running := waitRunningOn(t, bed, d, out, victim, "^"+pattern(sleep+" 15"), 2*time.Minute)
	pid := agentProper(t, bed, victim)
	stopAt := sendSignal(t, bed, victim, "STOP", pid)
	continued := false
	t.Cleanup(func() {
		if !continued {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = bed.SSH(ctx, victim, fmt.Sprintf("kill -CONT %d", pid)).Run()
		}
	})
	waitEvents(t, d, out, nodeTimeout+slack, "node-lost", func(evs []event) bool {
		return slices.ContainsFunc(evs, func(e event) bool { return e.Event == "node-lost" })
	})
	time.Sleep(time.Until(stopAt.Add(pause)))
	jobsThen := pgrep(t, bed, victim, pattern(marker))
	contAt := sendSignal(t, bed, victim, "CONT", pid)
	continued = true
	jobsLeft := waitNone(t, bed, victim, pattern(marker), contAt.Add(slack))
	jobsGone := time.Since(contAt)
	agentsLeft := waitNone(t, bed, victim, agentPattern(), contAt.Add(slack))
	agentsGone := time.Since(contAt)
	if len(jobsThen) == 0 {
		t.Errorf("no job process ran on %s when its agent was continued: the scenario did not happen", victim)
	}
	if len(jobsLeft) > 0 {
		t.Errorf("job processes still on %s %v after its given-up agent was continued:\n%s",
			victim, jobsGone.Round(time.Millisecond), strings.Join(jobsLeft, "\n"))
	}
	if len(agentsLeft) > 0 {
		t.Errorf("agent processes still on %s %v after it was continued, given up (monitor-timeout %v):\n%s",
			victim, agentsGone.Round(time.Millisecond), monitorTimeout, strings.Join(agentsLeft, "\n"))
	}

	if code := d.Wait(t, backstop); code != 0 {
		t.Errorf("drover run exited %d, want 0 (every instance retried and succeeded)\n%s", code, tail(d.Out.String()))
	}
	a := checkAccounting(t, out, instanceNames("p1", n))
	onVictim := runningOn(a.evs, victim, stopAt)
	if len(onVictim) == 0 {
		t.Fatalf("%v ran on %s just before its agent was stopped, but the log has nothing running there at the stop", running, victim)
	}
	lostAt := checkNodeLost(t, a, victim, onVictim)
	// The manager counts from the agent's last message, which may be up to
	// a heartbeat (1 s) older than the stop.
	detect := lostAt.Sub(stopAt)
	if detect < nodeTimeout-time.Second-100*time.Millisecond || detect > nodeTimeout+slack {
		t.Errorf("node-lost %v after SIGSTOP, want about node-timeout %v", detect, nodeTimeout)
	}
	if a.sum.Succeeded != n {
		t.Errorf("summary: %d of %d succeeded: %+v", a.sum.Succeeded, n, a.sum.Instances)
	}
	// Why the agent went: it was told it had been given up (not the
	// monitor timeout, nor its lifeline).
	givenUp := false
	for line := range strings.Lines(d.Out.String()) {
		if strings.Contains(line, "node="+victim) && strings.Contains(line, "gave this node up") {
			givenUp = true
			t.Logf("drover: %s", strings.TrimSpace(line))
		}
	}
	if !givenUp {
		t.Errorf("the agent on %s never said it was given up:\n%s", victim, tail(d.Out.String()))
	}
	t.Logf("MEASURE: node-lost %v after agent SIGSTOP (node-timeout %v)", detect.Round(time.Millisecond), nodeTimeout)
	t.Logf("MEASURE: after SIGCONT (stopped %v), %s clear of job processes %s, of agent processes %s (monitor-timeout %v, grace %v)",
		contAt.Sub(stopAt).Round(time.Millisecond), victim, within(jobsLeft, jobsGone), within(agentsLeft, agentsGone), monitorTimeout, grace)
	t.Logf("%d instances ran on %s at the stop and were retried; run took %v",
		len(onVictim), victim, d.Exited.Sub(d.Started).Round(time.Millisecond))
	noneLeft(t, bed, marker)
}
