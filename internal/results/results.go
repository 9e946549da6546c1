// Package results owns the results directory of a run: the append-only
// events log (events.jsonl), the summary (summary.json) and the per-instance
// output directories.
package results

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/nofollow"
)

// Event kinds written to events.jsonl.
const (
	RunStart      = "run-start"
	RunEnd        = "run-end"
	NodeUp        = "node-up"
	NodeLost      = "node-lost"
	NodeFailed    = "node-failed" // a node (or host) that never came up; error says why
	Started       = "started"
	AttemptFailed = "attempt-failed" // a failed attempt that will be retried
	Finished      = "finished"       // final: the process ran
	Failed        = "failed"         // final: it could not start
	Lost          = "lost"           // final: its node was lost
)

// Event is one line of events.jsonl.
type Event struct {
	Time      time.Time `json:"time"`
	Event     string    `json:"event"`
	Job       string    `json:"job,omitempty"` // the instance name
	Node      string    `json:"node,omitempty"`
	Attempt   int       `json:"attempt,omitempty"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Signal    string    `json:"signal,omitempty"`
	Error     string    `json:"error,omitempty"`
	PID       int       `json:"pid,omitempty"`
	HWThreads string    `json:"hwthreads,omitempty"`
	GPUs      string    `json:"gpus,omitempty"`  // started: ids of its GPUs, comma-separated
	Cores     int       `json:"cores,omitempty"` // node-up: cores it offers
	// State is the instance's final state on its final event (succeeded,
	// failed, lost, cancelled), and the attempt's on attempt-failed:
	// decided once, by the queue; readers take it as it is (Outcome).
	State string `json:"state,omitempty"`
}

// Outcome is the state e gives its instance (on a final event) or its
// attempt (attempt-failed): the State the queue wrote; for a log written
// before events carried it, what the event's kind and exit say.
func (e Event) Outcome() string {
	switch {
	case e.State != "":
		return e.State
	case e.Event == Lost:
		return StateLost
	case e.Event == Finished && e.Signal == "" && e.ExitCode != nil && *e.ExitCode == 0 && e.Error == "":
		return StateSucceeded
	}
	return StateFailed
}

// Final reports whether e ends an instance.
func (e Event) Final() bool {
	return e.Event == Finished || e.Event == Failed || e.Event == Lost
}

// Log appends events to DIR/events.jsonl. Each Append is one write(2), so
// once Append returns its lines are wholly in the file, and survive a crash
// of this process. A background group commit makes them durable against a
// crash of the machine: one fdatasync covers whatever was appended before
// it began, and syncs are at least syncEvery apart, so a power cut loses at
// most the events of about that long (never a torn or reordered log), and
// the caller never waits for the disk. Waiting for a sync before acting on
// each event, or syncing back to back, costs more than a trivial job on a
// journaling file system (every sync is a journal commit, which the jobs'
// own file creations then wait on); what a lost tail costs is that
// --resume runs those instances again, since a run counts only through its
// final event in the log.
//
// A write that fails (a full disk) is cut back out of the file, so the log
// holds whole lines only, and its events are tried again with the next
// Append and at Close. Any failure is kept and reported by Append, Err and
// Close: a run whose log could not be written is not a clean one. Some
// space is reserved ahead of the log's end (fallocate), so that a disk
// the jobs' output filled still takes the events that say so.
type Log struct {
	mu       sync.Mutex
	f        *os.File
	buf      bytes.Buffer
	size     int64  // the length of the whole lines written
	reserved int64  // the file's space is reserved up to here
	pending  []byte // events whose write failed, to try again
	dropped  int    // events given up for good
	writeErr error  // the first failed write; guarded by mu

	dirty     chan struct{} // holds a token while appends await a sync
	closing   chan struct{} // closed by Close: sync no more
	synced    chan struct{} // closed when the syncer has stopped
	syncErr   error         // the first failed sync; guarded by mu
	closeOnce sync.Once
}

// syncEvery is the least time between two syncs of the events log.
const syncEvery = 200 * time.Millisecond

// EventsFile and SummaryFile are the names inside the results directory.
const (
	EventsFile  = "events.jsonl"
	SummaryFile = "summary.json"
)

// OpenLog opens (creating or appending) the events log in dir.
func OpenLog(dir string) (*Log, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open results dir: %w", err)
	}
	// Not through a symlink: the log is appended to, never elsewhere.
	f, err := nofollow.OpenFile(dir, EventsFile, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open events log: %w", err)
	}
	if err := dropTornLine(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("open events log: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open events log: %w", err)
	}
	l := &Log{f: f, size: info.Size(), dirty: make(chan struct{}, 1), closing: make(chan struct{}), synced: make(chan struct{})}
	l.reserve()
	go l.syncer()
	return l, nil
}

// syncer is the group commit: one fdatasync for whatever was appended
// since the last one began, at most one every syncEvery.
func (l *Log) syncer() {
	defer close(l.synced)
	wait := time.NewTimer(0)
	defer wait.Stop()
	for {
		select {
		case <-l.dirty:
		case <-l.closing:
			return // Close syncs the rest
		}
		start := time.Now()
		if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
			l.mu.Lock()
			if l.syncErr == nil {
				l.syncErr = fmt.Errorf("sync events log: %w", err)
			}
			l.mu.Unlock()
		}
		wait.Reset(syncEvery - time.Since(start))
		select {
		case <-wait.C:
		case <-l.closing:
			return
		}
	}
}

// dropTornLine cuts a last line that a crash left half-written, so that
// what is appended next starts a line of its own. That event was never
// wholly in the log, so nothing acted on it as recorded.
func dropTornLine(f *os.File) error {
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		return err
	}
	size := info.Size()
	buf := make([]byte, min(size, 64*1024))
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		chunk := buf[:end-start]
		if _, err := f.ReadAt(chunk, start); err != nil {
			return err
		}
		if end == size && chunk[len(chunk)-1] == '\n' {
			return nil // ends with a whole line
		}
		if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
			return f.Truncate(start + int64(i) + 1)
		}
		end = start
	}
	return f.Truncate(0)
}

// Append writes the events, in order, with one system call.
func (l *Log) Append(evs ...Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Reset()
	enc := json.NewEncoder(&l.buf)
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = time.Now()
		}
		if err := enc.Encode(&evs[i]); err != nil {
			return fmt.Errorf("encode %s event: %w", evs[i].Event, err)
		}
	}
	if len(l.pending) > 0 {
		l.pending = append(l.pending, l.buf.Bytes()...)
		l.buf.Reset()
		l.buf.Write(l.pending)
		l.pending = l.pending[:0]
	}
	l.write(l.buf.Bytes())
	select {
	case l.dirty <- struct{}{}:
	default: // a sync is already due, and will cover these lines
	}
	return l.errLocked()
}

// maxPending bounds the events held for another try while the disk is
// full; past it the oldest are given up.
const maxPending = 1 << 20

// reserveAhead is the space kept reserved past the log's end.
const reserveAhead = 64 << 10

// write appends whole lines. A failed or short write is cut back out, and
// its lines kept for another try.
func (l *Log) write(data []byte) {
	n, err := l.f.Write(data)
	if err == nil {
		l.size += int64(n)
		if l.size+reserveAhead/2 > l.reserved {
			l.reserve()
		}
		return
	}
	if l.writeErr == nil {
		l.writeErr = fmt.Errorf("append to events log: %w", err)
	}
	if n > 0 {
		if terr := l.f.Truncate(l.size); terr != nil {
			// The torn part stays: end it, so later lines are whole.
			l.size += int64(n)
			if m, _ := l.f.Write([]byte("\n")); m == 1 {
				l.size++
			}
		}
	}
	if len(data) > maxPending {
		// Keep the newest whole lines that fit.
		keep := 0 // the newest line alone is too long
		if i := bytes.IndexByte(data[len(data)-maxPending:], '\n'); i >= 0 {
			keep = maxPending - i - 1
		}
		l.dropped += bytes.Count(data[:len(data)-keep], []byte("\n"))
		data = data[len(data)-keep:]
	}
	l.pending = append(l.pending[:0], data...)
}

// reserve asks the file system for the space of the next events, so
// that they fit even once the jobs' output has filled the disk. Where
// fallocate is not supported that is simply not done.
func (l *Log) reserve() {
	if unix.Fallocate(int(l.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, l.size, reserveAhead) == nil {
		l.reserved = l.size + reserveAhead
	}
}

// errLocked is the log's error so far: a failed write or sync.
func (l *Log) errLocked() error {
	var werr error
	if l.writeErr != nil {
		lost := ""
		switch {
		case l.dropped > 0:
			lost = fmt.Sprintf(" (%d events lost)", l.dropped)
		case len(l.pending) > 0:
			lost = fmt.Sprintf(" (%d events not written)", bytes.Count(l.pending, []byte("\n")))
		}
		werr = fmt.Errorf("%w%s", l.writeErr, lost)
	}
	return errors.Join(werr, l.syncErr)
}

// Err reports a write or sync of the log that failed so far.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errLocked()
}

// Close writes what is still pending, syncs and closes the log, and
// reports a write or sync that failed on the way.
func (l *Log) Close() error {
	l.closeOnce.Do(func() { close(l.closing) })
	<-l.synced
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) > 0 {
		l.write(append([]byte(nil), l.pending...))
	}
	if l.reserved > l.size {
		// Give back the space reserved past the end.
		_ = unix.Fallocate(int(l.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, l.size, l.reserved-l.size)
	}
	return errors.Join(l.errLocked(), l.f.Sync(), l.f.Close())
}

// ReadEvents reads an events log. A torn last line (a crash mid-write) is
// ignored; a malformed line elsewhere is an error.
func ReadEvents(r io.Reader, fn func(Event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	var bad error
	line := 0
	for sc.Scan() {
		line++
		if bad != nil {
			return bad // the malformed line was not the last one
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			bad = fmt.Errorf("events log line %d: %w", line, err)
			continue
		}
		fn(e)
	}
	return sc.Err()
}

// Prior is what earlier runs into a results dir left, as --resume needs it.
type Prior struct {
	// Succeeded names the instances whose latest final event is
	// `finished` with exit code 0: they are not run again.
	Succeeded map[string]bool
	// Attempts is, for every other instance that ever started, its
	// highest attempt number, logged or found in its output dir: a
	// resumed run goes on from there, so the output of an attempt cut
	// short by a crash is kept, not overwritten.
	Attempts map[string]int
}

// ReadPrior reads DIR's events log. A missing log means nothing has run.
func ReadPrior(dir string) (Prior, error) {
	p := Prior{Succeeded: map[string]bool{}, Attempts: map[string]int{}}
	f, err := os.Open(filepath.Join(dir, EventsFile))
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return Prior{}, fmt.Errorf("resume: %w", err)
	}
	defer f.Close()
	err = ReadEvents(f, func(e Event) {
		if e.Attempt > p.Attempts[e.Job] {
			p.Attempts[e.Job] = e.Attempt
		}
		if e.Final() {
			p.Succeeded[e.Job] = e.Event == Finished && e.ExitCode != nil && *e.ExitCode == 0 && e.Error == ""
		}
	})
	if err != nil {
		return Prior{}, fmt.Errorf("resume from %s: %w", dir, err)
	}
	for k, ok := range p.Succeeded {
		if !ok {
			delete(p.Succeeded, k)
		}
	}
	if err := countUnloggedAttempts(dir, p); err != nil {
		return Prior{}, fmt.Errorf("resume from %s: %w", dir, err)
	}
	for k := range p.Succeeded {
		delete(p.Attempts, k)
	}
	return p, nil
}

// countUnloggedAttempts adds the attempts the log does not show but the
// instances' output dirs do. A start the agent made on its own (an
// instance queued behind another on the node starts the moment that one
// exits) is logged only once the manager hears of it; a manager crash in
// between leaves output without a started event. The next attempt must
// not take that attempt's number, or it would truncate what it wrote.
// An attempt started after attempt N moved N's output to attempt-N/; the
// first one created stdout or stderr.
func countUnloggedAttempts(dir string, p Prior) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || p.Succeeded[name] {
			continue
		}
		n := p.Attempts[name]
		var evidence []string
		if n == 0 {
			evidence = []string{"stdout", "stderr"}
		} else {
			evidence = []string{fmt.Sprintf("attempt-%d", n)}
		}
		for _, f := range evidence {
			if _, err := os.Lstat(filepath.Join(dir, name, f)); err == nil {
				p.Attempts[name] = n + 1
				break
			}
		}
	}
	return nil
}

// Instance states in the summary.
const (
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateLost      = "lost"
	StateCancelled = "cancelled" // never started: the run was stopped first
	StateSkipped   = "skipped"   // already succeeded in an earlier run (--resume)
)

// InstanceResult is one instance's final state in summary.json.
type InstanceResult struct {
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Node      string    `json:"node,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Signal    string    `json:"signal,omitempty"`
	Error     string    `json:"error,omitempty"`
	Start     time.Time `json:"start,omitzero"`
	End       time.Time `json:"end,omitzero"`
	HWThreads string    `json:"hwthreads,omitempty"`
}

// Outcome says how the instance ended, e.g. "failed, exit 3: timed out".
func (in InstanceResult) Outcome() string {
	what := in.State
	switch {
	case in.Signal != "":
		what += ", signal " + in.Signal
	case in.ExitCode != nil:
		what += ", exit " + strconv.Itoa(*in.ExitCode)
	}
	if in.Error != "" {
		what += ": " + in.Error
	}
	return what
}

// Summary is summary.json. The one a queue run returns lists in Instances
// only the instances that did not succeed, so a run of millions holds no
// list of them all; summary.json itself lists every instance.
type Summary struct {
	Start          time.Time        `json:"start"`
	End            time.Time        `json:"end"`
	Total          int              `json:"total"`
	Succeeded      int              `json:"succeeded"`
	Failed         int              `json:"failed"`
	Lost           int              `json:"lost"`
	Cancelled      int              `json:"cancelled"`
	Skipped        int              `json:"skipped"`
	StoppedBecause string           `json:"stopped_because,omitempty"`
	Instances      []InstanceResult `json:"instances"`
	// Untried, when set, yields the instances a queue run never tried
	// (cancelled, or failed because no node could take them), which
	// Instances leaves out: there may be millions.
	Untried iter.Seq[InstanceResult] `json:"-"`
}

// NotSucceeded yields Instances, then Untried.
func (s *Summary) NotSucceeded() iter.Seq[InstanceResult] {
	return func(yield func(InstanceResult) bool) {
		for _, in := range s.Instances {
			if !yield(in) {
				return
			}
		}
		if s.Untried != nil {
			s.Untried(yield)
		}
	}
}

// OK reports whether every instance succeeded (or had already).
func (s *Summary) OK() bool {
	return s.Failed == 0 && s.Lost == 0 && s.Cancelled == 0
}

// WriteSummary writes DIR/summary.json atomically (temp file and rename),
// with s's totals and every instance that all yields, streamed so that no
// list of them is built in memory.
func WriteSummary(dir string, s *Summary, all iter.Seq[InstanceResult]) error {
	tmp, err := os.CreateTemp(dir, ".summary-*.json")
	if err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	w := bufio.NewWriterSize(tmp, 64*1024)
	head := *s
	head.Instances, head.Untried = nil, nil
	data, err := json.MarshalIndent(&head, "", "  ")
	if err == nil {
		// Reopen the object to append the instances to it.
		data = bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("}")), []byte("\n"))
		data = bytes.Replace(data, []byte(`"instances": null`), []byte(`"instances": [`), 1)
		_, err = w.Write(data)
	}
	first := true
	for in := range all {
		if err != nil {
			break
		}
		var line []byte
		if line, err = json.Marshal(in); err == nil {
			sep := ",\n    "
			if first {
				sep, first = "\n    ", false
			}
			w.WriteString(sep)
			_, err = w.Write(line)
		}
	}
	if err == nil {
		if !first {
			w.WriteString("\n  ")
		}
		_, err = w.WriteString("]\n}\n")
	}
	if err == nil {
		err = w.Flush()
	}
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, SummaryFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}
