package chaos_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/testbed"
)

// 10,000 short instances over the 3 hosts with --retries 2 while a killer
// SIGKILLs random job processes (a bounded number): every instance has
// exactly one final event, a killed attempt shows as attempt-failed
// followed by a later attempt, and an instance that fails for good has
// used all its attempts.
func TestRandomKillStorm(t *testing.T) {
	bed := testbed.Require(t)
	const (
		n        = 10000
		retries  = 2
		maxKills = 200
		every    = 100 * time.Millisecond
	)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("storm")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s7\n    shell: %q\n    repeat: %d\n", sleep+" 0.02", n))

	d := startRun(t, bed, dir, nil, "--retries", fmt.Sprint(retries), "--grace", "1s", "--out", out, job)

	// The killer: until drover ends, maxKills kills or the backstop.
	var (
		kills  []string
		misses int
	)
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		hosts := bed.Names()
		stop := time.Now().Add(backstop)
		for len(kills) < maxKills && time.Now().Before(stop) {
			select {
			case <-d.Done:
				return
			case <-time.After(every):
			}
			h := hosts[rand.IntN(len(hosts))]
			if pid, ok := killRandom(h, marker); ok {
				kills = append(kills, fmt.Sprintf("%s %d", h, pid))
			} else {
				misses++ // nothing running there just then, or it exited in between
			}
		}
	}()

	code := d.Wait(t, backstop)
	<-killerDone
	a := checkAccounting(t, out, instanceNames("s7", n))
	if want := map[bool]int{true: 0, false: 1}[a.sum.Failed == 0]; code != want {
		t.Errorf("drover run exited %d with %d failed, want %d\n%s", code, a.sum.Failed, want, tail(d.Out.String()))
	}
	if a.sum.Lost != 0 || a.sum.Cancelled != 0 {
		t.Errorf("summary: %d lost, %d cancelled, want none", a.sum.Lost, a.sum.Cancelled)
	}

	// Per instance, in log order: started 1, (attempt-failed k, started
	// k+1)*, final; the final's attempt is the last started.
	type hist struct{ evs []event }
	per := map[string]*hist{}
	attemptFailed, bySignal := 0, 0
	for _, e := range a.evs {
		if e.Job == "" {
			if e.Event == "node-lost" {
				t.Errorf("unexpected %v", e)
			}
			continue
		}
		h := per[e.Job]
		if h == nil {
			h = &hist{}
			per[e.Job] = h
		}
		h.evs = append(h.evs, e)
		if e.Event == "attempt-failed" {
			attemptFailed++
			if e.Signal == "SIGKILL" {
				bySignal++
			}
		}
	}
	retried, failedForGood, shown := 0, 0, 0
	for name, h := range per {
		attempt, afs, bad := 0, 0, ""
		for _, e := range h.evs {
			switch e.Event {
			case "started":
				if e.Attempt != attempt+1 {
					bad = fmt.Sprintf("started attempt %d after attempt %d", e.Attempt, attempt)
				}
				attempt = e.Attempt
			case "attempt-failed":
				afs++
				if e.Attempt != attempt {
					bad = fmt.Sprintf("attempt-failed of attempt %d while attempt %d ran", e.Attempt, attempt)
				}
				if e.ExitCode != nil && *e.ExitCode == 0 && e.Error == "" {
					bad = "attempt-failed of a successful attempt"
				}
			case "finished", "failed", "lost":
				if e.Attempt != 0 && e.Attempt != attempt {
					bad = fmt.Sprintf("final of attempt %d, last started %d", e.Attempt, attempt)
				}
				if afs != attempt-1 {
					bad = fmt.Sprintf("%d attempts started, %d attempt-failed before the final", attempt, afs)
				}
			}
		}
		if last := h.evs[len(h.evs)-1]; !last.final() {
			bad = fmt.Sprintf("last event %v is not final", last)
		}
		if afs > retries {
			bad = fmt.Sprintf("%d attempt-failed, more than --retries %d", afs, retries)
		}
		f := a.finals[name]
		ok := f.Event == "finished" && f.ExitCode != nil && *f.ExitCode == 0
		if !ok {
			failedForGood++
			if afs != retries {
				bad = fmt.Sprintf("failed for good (%v) after %d retries, want %d", f, afs, retries)
			}
		}
		if afs > 0 {
			retried++
		}
		if in := a.entries[name]; in.Attempts != 0 && in.Attempts != attempt {
			bad = fmt.Sprintf("summary says %d attempts, the log %d", in.Attempts, attempt)
		}
		if bad != "" && shown < 10 {
			shown++
			t.Errorf("%s: %s: %v", name, bad, h.evs)
		}
	}
	if len(kills) < maxKills/4 {
		t.Errorf("only %d job processes SIGKILLed (%d misses): the storm did not happen", len(kills), misses)
	}
	if len(kills) >= 3 && attemptFailed == 0 {
		t.Errorf("%d job processes SIGKILLed, yet no attempt-failed event", len(kills))
	}
	if attemptFailed > len(kills) {
		t.Errorf("%d attempt-failed events, more than the %d kills", attemptFailed, len(kills))
	}
	t.Logf("MEASURE: %d instances in %v; %d kills (%d misses), %d attempt-failed (%d by SIGKILL of the leader, the rest by exit 137), %d instances retried, %d failed for good; summary %d succeeded, %d failed",
		n, d.Exited.Sub(d.Started).Round(time.Millisecond), len(kills), misses, attemptFailed, bySignal, retried, failedForGood, a.sum.Succeeded, a.sum.Failed)
	noneLeft(t, bed, marker)
}

// killRandom SIGKILLs a random live process of marker's on host. It looks
// in this machine's /proc (the hosts share its pid namespace): these jobs
// live for less than an ssh round trip. A pidfd pins the process from
// before the check that it is still one of marker's to the kill.
func killRandom(host, marker string) (int, bool) {
	pids := netnsProcs(host, marker)
	if len(pids) == 0 {
		return 0, false
	}
	pid := pids[rand.IntN(len(pids))]
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return pid, false
	}
	defer unix.Close(fd)
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !bytes.Contains(cmdline, []byte(marker)) {
		return pid, false
	}
	return pid, unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}
