package chaos_test

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// slack is added to a configured timeout to make a backstop of it.
const slack = 5 * time.Second

// startedOn reports whether evs has a started event on host.
func startedOn(host string) func([]event) bool {
	return func(evs []event) bool {
		return slices.ContainsFunc(evs, func(e event) bool { return e.Event == "started" && e.Node == host })
	}
}

// runningOn lists the instances that ran on host at the time at: started
// there before it, and no attempt-failed or final event of theirs since.
func runningOn(evs []event, host string, at time.Time) []string {
	run := map[string]bool{}
	for _, e := range evs {
		switch {
		case !e.Time.Before(at):
		case e.Event == "started" && e.Node == host:
			run[e.Job] = true
		case e.Event == "attempt-failed" || e.final():
			delete(run, e.Job)
		}
	}
	return slices.Sorted(maps.Keys(run))
}

// checkNodeLost checks a run with --retries 1 in which victim was lost
// while the instances onVictim ran on it: one node-lost event, for victim;
// nothing from victim after it (no second final); each of onVictim lost
// its attempt there once (attempt-failed), then ran again elsewhere and
// succeeded. It returns when the node was declared lost.
func checkNodeLost(t *testing.T, a accounted, victim string, onVictim []string) time.Time {
	t.Helper()
	var lost []event
	for _, e := range a.evs {
		if e.Event == "node-lost" {
			lost = append(lost, e)
		}
	}
	if len(lost) != 1 || lost[0].Node != victim {
		t.Fatalf("node-lost events %v, want exactly one, for %s", lost, victim)
	}
	lostAt := lost[0].Time
	for _, e := range a.evs {
		if e.Time.After(lostAt) && e.Node == victim && e.Event != "node-lost" && e.Error != "node lost" {
			t.Errorf("event from %s after it was declared lost: %v", victim, e)
		}
	}
	for _, name := range onVictim {
		failed, restarted := 0, false
		for _, e := range a.evs {
			switch {
			case e.Job != name:
			case e.Event == "attempt-failed" && e.Node == victim:
				failed++
			case e.Event == "started" && e.Attempt == 2 && failed > 0:
				restarted = true
				if e.Node == victim {
					t.Errorf("%s retried on the lost node: %v", name, e)
				}
			}
		}
		f := a.finals[name]
		if failed != 1 || !restarted || f.Event != "finished" || f.ExitCode == nil || *f.ExitCode != 0 || f.Node == victim {
			t.Errorf("%s ran on %s: want one attempt-failed there, a second attempt elsewhere and success; got %d attempt-failed, restarted %v, final %v",
				name, victim, failed, restarted, f)
		}
	}
	return lostAt
}

// A link cut for 2 s, well under --node-timeout 5s, in the middle of a
// run: nothing is lost, nothing is retried, every instance succeeds.
func TestLinkCutShort(t *testing.T) {
	bed := testbed.Require(t)
	const n, cut, nodeTimeout, victim = 12, 2 * time.Second, 5 * time.Second, "h2"
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("short")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s1\n    shell: %q\n    repeat: %d\n", sleep+" 3", n))

	d := startRun(t, bed, dir, nil, "--node-timeout", nodeTimeout.String(), "--out", out, job)
	waitEvents(t, d, out, 2*time.Minute, "start on "+victim, startedOn(victim))
	restore := cutLink(t, victim)
	cutAt := time.Now()
	time.Sleep(cut)
	restore()
	upAt := time.Now()
	if code := d.Wait(t, backstop); code != 0 {
		t.Errorf("drover run exited %d, want 0\n%s", code, tail(d.Out.String()))
	}

	a := checkAccounting(t, out, instanceNames("s1", n))
	for _, e := range a.evs {
		switch e.Event {
		case "node-lost", "lost", "attempt-failed":
			t.Errorf("a %v cut of %s (node-timeout %v) gave %v", cut, victim, nodeTimeout, e)
		}
	}
	if a.sum.Succeeded != n {
		t.Errorf("summary: %d of %d succeeded: %+v", a.sum.Succeeded, n, a.sum)
	}
	// How late the victim's exits came through: those of instances that
	// ran across the cut are delivered once the link is back.
	started := map[string]event{}
	var across, after int
	var worst time.Duration
	for _, e := range a.evs {
		if e.Event == "started" {
			started[e.Job] = e
		}
		if e.Event != "finished" || e.Node != victim {
			continue
		}
		s := started[e.Job]
		switch {
		case s.Time.Before(cutAt) && e.Time.After(cutAt):
			across++
			if late := e.Time.Sub(s.Time) - 3*time.Second; late > worst {
				worst = late
			}
		case s.Time.After(upAt):
			after++
		}
	}
	t.Logf("MEASURE: %s cut for %v: %d instances ran across the cut (exit reported at most %v later than the 3s run), %d started on it after; run took %v",
		victim, cut, across, worst.Round(time.Millisecond), after, d.Exited.Sub(d.Started).Round(time.Millisecond))
	if across == 0 {
		t.Errorf("no instance on %s ran across the cut: the scenario did not happen", victim)
	}
	noneLeft(t, bed, marker)
}

// A link cut for 20 s with --node-timeout 3s, --monitor-timeout 10s and
// --retries 1: the manager declares the node lost, its instances get an
// attempt-failed and run again elsewhere, each ends with exactly one final
// event; the cut-off agent stops its processes after the monitor timeout,
// before the link is back, and nothing from it is reported afterwards.
func TestLinkCutLong(t *testing.T) {
	bed := testbed.Require(t)
	const (
		n, victim      = 6, "h2"
		cut            = 20 * time.Second
		nodeTimeout    = 3 * time.Second
		monitorTimeout = 10 * time.Second
		grace          = time.Second
	)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("long")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	// 6 instances fill the 6 cores (2 a host); a retry waits for a core,
	// so the run still goes on when the link comes back.
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s2\n    shell: %q\n    repeat: %d\n", sleep+" 15", n))

	d := startRun(t, bed, dir, nil, "--node-timeout", nodeTimeout.String(), "--monitor-timeout", monitorTimeout.String(),
		"--grace", grace.String(), "--retries", "1", "--out", out, job)
	evs := waitEvents(t, d, out, 2*time.Minute, "all started", func(evs []event) bool {
		k := 0
		for _, e := range evs {
			if e.Event == "started" {
				k++
			}
		}
		return k == n
	})
	onVictim := runningOn(evs, victim, time.Now())
	if len(onVictim) == 0 {
		t.Fatalf("nothing started on %s: %v", victim, evs)
	}
	if procs := netnsProcs(victim, marker); len(procs) == 0 {
		t.Fatalf("no job process found in %s's network namespace", victim)
	}

	restore := cutLink(t, victim)
	cutAt := time.Now()
	// While the link is down, watch the victim from here (shared pid
	// namespace) for its job processes to go.
	var goneAfter time.Duration
	for time.Since(cutAt) < cut {
		if goneAfter == 0 && len(netnsProcs(victim, marker)) == 0 {
			goneAfter = time.Since(cutAt)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stillThere := netnsProcs(victim, marker)
	restore()
	upAt := time.Now()
	// Right after the link is back, over ssh: the old agent must already
	// have stopped everything (and itself).
	jobsLeft := pgrep(t, bed, victim, pattern(marker))
	agentsLeft := pgrep(t, bed, victim, agentPattern())
	if len(stillThere) > 0 || len(jobsLeft) > 0 {
		t.Errorf("when the link came back (%v after the cut, monitor-timeout %v) job processes still ran on %s: %v %q",
			cut, monitorTimeout, victim, stillThere, jobsLeft)
	}
	if len(agentsLeft) > 0 {
		t.Errorf("when the link came back the old agent still ran on %s: %q", victim, agentsLeft)
	}

	if code := d.Wait(t, backstop); code != 0 {
		t.Errorf("drover run exited %d, want 0 (every instance retried and succeeded)\n%s", code, tail(d.Out.String()))
	}
	names := instanceNames("s2", n)
	a := checkAccounting(t, out, names)
	lostAt := checkNodeLost(t, a, victim, onVictim)
	detect := lostAt.Sub(cutAt)
	if detect < nodeTimeout-time.Second || detect > nodeTimeout+slack {
		t.Errorf("node-lost %v after the cut, want about node-timeout %v", detect, nodeTimeout)
	}
	if a.sum.Succeeded != n {
		t.Errorf("summary: %d of %d succeeded: %+v", a.sum.Succeeded, n, a.sum.Instances)
	}
	gone := "never while the link was down"
	if goneAfter > 0 {
		gone = goneAfter.Round(100 * time.Millisecond).String()
	}
	t.Logf("MEASURE: %s cut for %v: node-lost %v after the cut (node-timeout %v); its job processes gone %s after the cut (monitor-timeout %v, grace %v); %d instances retried; link up %v before the run ended",
		victim, cut, detect.Round(time.Millisecond), nodeTimeout, gone, monitorTimeout, grace, len(onVictim), d.Exited.Sub(upAt).Round(time.Millisecond))
	noneLeft(t, bed, marker)
}
