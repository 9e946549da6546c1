package queue

import (
	"fmt"
	"strconv"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/results"
)

// Dependencies and concurrency limits.
//
// A job with an after list waits until every instance of those jobs has
// succeeded (in this run, or in an earlier one that --resume goes on
// with). When one of them ends any other way, the waiting job's instances
// never start: each gets one final event, state skipped, whose error names
// the dependency, and so do the jobs that wait for it in turn. A run that
// was stopped (Ctrl-C, --halt) cancels what waits instead, like whatever
// else it did not start.
//
// Limits count slots: an instance holds one of the run's (Options.
// MaxRunning) and one of its job's (max_running) from its launch until its
// end. An instance queued on a node behind another (prefetching) runs only
// once that one has ended, so it takes over the run slot of its
// predecessor, and its job slot when both are of the same job.

// linkDeps links each job to the jobs it waits for and to those waiting
// for it; jobfile.CheckAfter has vouched for the names.
func (r *runner) linkDeps() {
	byName := make(map[string]*jobState, len(r.jobs))
	for _, js := range r.jobs {
		if _, dup := byName[js.job.Name]; !dup {
			byName[js.job.Name] = js
		}
	}
	for _, js := range r.jobs {
		for _, a := range js.job.After {
			p := byName[a]
			js.after = append(js.after, p)
			p.dependents = append(p.dependents, js)
		}
	}
}

// waiting reports whether some instance of a job js waits for has not
// succeeded yet.
func (js *jobState) waiting() bool {
	for _, p := range js.after {
		if p.ok < p.job.Repeat {
			return true
		}
	}
	return false
}

// mayLaunch reports whether an instance of js may be launched now, on
// cores of its own: its dependencies have succeeded and neither the run
// nor the job is at its limit.
func (r *runner) mayLaunch(js *jobState) bool {
	return !js.waiting() && !r.runFull() && (js.job.MaxRunning == 0 || js.slots < js.job.MaxRunning)
}

// runFull reports whether the run is at its limit.
func (r *runner) runFull() bool {
	return r.opts.MaxRunning > 0 && r.slots >= r.opts.MaxRunning
}

// mayFollow reports whether an instance of js may be queued behind pred.
func (r *runner) mayFollow(js *jobState, pred *instance) bool {
	return !js.waiting() && (js == pred.job || js.job.MaxRunning == 0 || js.slots < js.job.MaxRunning)
}

// takeSlots counts the slots inst takes at its launch (behind pred, if
// not nil).
func (r *runner) takeSlots(inst, pred *instance) {
	if pred == nil {
		r.slots++
	}
	if pred == nil || pred.job != inst.job {
		inst.job.slots++
	}
}

// freeSlots gives back the slots inst holds as it ends, or passes them to
// the instance queued behind it. It runs before release unlinks them.
func (r *runner) freeSlots(inst *instance) {
	if prev := inst.prev; prev != nil {
		// It never ran: it held a job slot of its own only when it
		// followed an instance of another job, and so does the one
		// behind it, which follows prev from now on.
		if prev.job != inst.job {
			inst.job.slots--
		}
		if next := inst.next; next != nil {
			if next.job != inst.job {
				next.job.slots--
			}
			if next.job != prev.job {
				next.job.slots++
			}
		}
		return
	}
	next := inst.next
	if next == nil {
		r.slots--
	}
	if next == nil || next.job != inst.job {
		inst.job.slots--
	}
}

// dependencyFailed ends, once, every job that waits for js (and those
// waiting for them) after an instance of js ended other than succeeded;
// inst is that instance, how its end ("exit 3", or why it never ran).
func (r *runner) dependencyFailed(js *jobState, inst, state, how string) {
	if js.broken || r.stopped != "" {
		return
	}
	js.broken = true
	why := fmt.Sprintf("dependency %s %s (%s: %s)", js.job.Name, state, inst, how)
	for _, d := range js.dependents {
		if d.next < d.job.Repeat {
			r.endUntried(d, results.StateSkipped, why)
		}
	}
}

// endHow says how an instance ended, for a dependency's reason: "exit 3",
// "signal SIGKILL", "node lost".
func endHow(ev results.Event) string {
	how := ""
	switch {
	case ev.Signal != "":
		how = "signal " + ev.Signal
	case ev.ExitCode != nil:
		how = "exit " + strconv.Itoa(*ev.ExitCode)
	}
	if ev.Error != "" {
		if how != "" {
			how += ": "
		}
		how += ev.Error
	}
	return how
}

// checkJobs checks what Parse checks across the jobs of a file, for jobs
// built in code.
func checkJobs(jobs []*jobfile.Job) error {
	if err := jobfile.CheckAfter(jobs); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	return nil
}
