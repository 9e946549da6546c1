package queue

import (
	"time"

	"github.com/drover-hpc/drover/internal/cores"
)

// A node's window: behind each running instance of a job whose attempts
// have proved short, the queue lines up a few more on the node
// (ProcessSpec.After), and the node starts each the moment the one before
// it exits, on the same cores, with no round trip to the manager. The
// line is as deep as covers Options.Window of the job's average run, and is
// topped up in one go once half of it has run, so that starts travel to
// the node in batches. A queued start gives up (to be placed anew,
// without counting as an attempt) if the one before it has run past
// prefetchWait, so an unusually long instance cannot hold back the line
// while other cores idle; those behind it follow.
const (
	prefetchBelow = 250 * time.Millisecond
	prefetchWait  = 500 * time.Millisecond
	defaultWindow = 50 * time.Millisecond
	maxDepth      = 16
)

// short reports whether the job's instances have so far run briefly
// enough to queue successors behind them.
func (j *jobState) short() bool {
	return j.ran > 0 && j.ranFor < time.Duration(j.ran)*prefetchBelow
}

// depth is how many of the job's instances may wait behind a running one.
func (r *runner) depth(j *jobState) int {
	if j.ran == 0 {
		return 1
	}
	mean := j.ranFor / time.Duration(j.ran)
	if mean <= 0 {
		return maxDepth
	}
	window := r.opts.Window
	if window <= 0 {
		window = defaultWindow
	}
	return int(min(max(window/mean, 1), maxDepth))
}

// queuedBehind counts the instances queued between inst and the running
// one at the head of its line.
func queuedBehind(inst *instance) int {
	n := 0
	for p := inst.prev; p != nil; p = p.prev {
		n++
	}
	return n
}

// topUp asks for more behind head's line once half of it has gone.
func (r *runner) topUp(head *instance) {
	tail, n := head, 0
	for tail.next != nil {
		tail = tail.next
		n++
	}
	if n <= r.depth(head.job)/2 {
		r.handoff = append(r.handoff, tail)
	}
}

// prefetch queues pending instances at the ends of lines that asked for
// more (handoff), each line up to its job's depth.
func (r *runner) prefetch() {
	for len(r.handoff) > 0 {
		pred := r.handoff[len(r.handoff)-1]
		if (pred.phase != starting && pred.phase != running) || pred.next != nil || pred.node.gone ||
			!pred.job.short() || queuedBehind(pred) >= r.depth(pred.job) {
			r.handoff = r.handoff[:len(r.handoff)-1]
			continue
		}
		js := r.successorJob(pred)
		if js == nil {
			return // nothing pending fits behind it; neither behind the rest, mostly
		}
		inst := r.take(js)
		if inst == nil {
			continue // only skipped instances were left in that job
		}
		r.handoff = r.handoff[:len(r.handoff)-1]
		r.launch(inst, pred.node, cores.Grant{}, pred)
	}
}
