package queue

import (
	"slices"
	"time"

	"github.com/drover-hpc/drover/internal/cores"
)

// A node's window: behind each running instance of a job whose attempts
// have proved short, the queue lines up a few more on the node
// (ProcessSpec.After), and the node starts each the moment the one before
// it exits, on the same cores, with no round trip to the manager. The
// line is as deep as covers Options.Window (W) of the job's average run,
// at most maxDepth, and is topped up in one go once half of it has run,
// so that starts travel to the node in batches. Only jobs averaging under
// 5 W get lines, and a queued start gives up (to be placed anew, without
// counting as an attempt) once the one before it has run for 10 W, so an
// unusually long instance cannot hold back its line while other cores
// idle; those behind it follow. With the default W of 100 ms: lines of up
// to 32 behind jobs under 500 ms, given up after 1 s. The deeper a line,
// the more exits an agent reports per message (it gathers them until half
// of what it has queued has started): a message costs each side a gRPC
// send or receive, about 100 µs of CPU on a small VM.
const (
	defaultWindow = 100 * time.Millisecond
	maxDepth      = 32
)

func (r *runner) window() time.Duration {
	if r.opts.Window > 0 {
		return r.opts.Window
	}
	return defaultWindow
}

// short reports whether the job's instances have so far run briefly
// enough to queue successors behind them.
func (r *runner) short(j *jobState) bool {
	return j.ran > 0 && j.ranFor < time.Duration(j.ran)*5*r.window()
}

// giveUp is how long a queued start waits while the one before it runs.
func (r *runner) giveUp() time.Duration { return 10 * r.window() }

// depth is how many of the job's instances may wait behind a running one.
func (r *runner) depth(j *jobState) int {
	if j.ran == 0 {
		return 1
	}
	mean := j.ranFor / time.Duration(j.ran)
	if mean <= 0 {
		return maxDepth
	}
	return int(min(max(r.window()/mean, 1), maxDepth))
}

// lineEnd reports whether more may be queued behind inst: it is starting
// or running on a node still there, with nothing queued behind it yet.
func (inst *instance) lineEnd() bool {
	return (inst.phase == starting || inst.phase == running) && inst.next == nil && !inst.node.gone
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
// more (handoff), each line up to its job's depth, one instance per line
// in turn, so that what is pending spreads over every core's line.
func (r *runner) prefetch() {
	for len(r.handoff) > 0 {
		asked := r.handoff
		r.handoff = nil
		for i, pred := range asked {
			if !pred.lineEnd() || queuedBehind(pred) >= r.depth(pred.job) {
				continue
			}
			if !r.short(pred.job) {
				pred.job.keepUnlined(pred) // asked again should the job prove short (proved)
				continue
			}
			js := r.successorJob(pred)
			if js == nil {
				// Nothing pending fits behind it; the rest wait for
				// the next turn of the loop.
				r.handoff = append(r.handoff, asked[i:]...)
				return
			}
			inst := r.take(js)
			if inst == nil {
				r.handoff = append(r.handoff, pred) // only skipped instances were left in that job
				continue
			}
			r.launch(inst, pred.node, cores.Grant{}, pred) // asks for more behind inst
		}
	}
}

// proved: js's instances have run one more attempt; if they are short
// now, the running ones that could not have lines so far may.
func (r *runner) proved(js *jobState) {
	if len(js.unlined) > 0 && r.short(js) {
		r.handoff = append(r.handoff, js.unlined...)
		js.unlined = nil
	}
}

// keepUnlined remembers inst for proved, dropping from time to time those
// that have ended meanwhile: a long job's instances are not kept past
// their run.
func (j *jobState) keepUnlined(inst *instance) {
	if n := len(j.unlined); n >= 64 && n >= 2*j.unlinedKept {
		j.unlined = slices.DeleteFunc(j.unlined, func(in *instance) bool { return !in.lineEnd() })
		j.unlinedKept = len(j.unlined)
	}
	j.unlined = append(j.unlined, inst)
}
