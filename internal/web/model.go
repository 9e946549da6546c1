// Package web is drover's read-only dashboard and metrics endpoint: an
// HTTP handler that serves an embedded single-page app at /, its data as
// JSON and server-sent events under /api/, and Prometheus metrics at
// /metrics.
//
// It knows nothing about where the data comes from: a Source gives a
// snapshot, a stream of coalesced updates and the output of instances.
// Two adapters exist: ClusterSource follows a running cluster (drover
// serve) and RunSource is fed by a queue run's OnEvent hook (drover run
// --dashboard). Both keep their state in a Model.
//
// The hot path is Model.Apply, which a queue calls from its loop: it takes
// one mutex, replaces one immutable record and marks it dirty for every
// subscriber, never blocking on a browser. Each subscriber has its own
// goroutine that turns the dirty set into an Update; a subscriber that
// falls far behind gets a Resync (a fresh snapshot) instead of a backlog.
package web

import (
	"context"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/topology"
)

// Instance states shown by the dashboard: the summary's final states plus
// these two.
const (
	StatePending = "pending" // not started yet, or waiting for a retry
	StateRunning = "running"
)

// State is everything the dashboard shows, at one moment.
type State struct {
	Title     string     `json:"title"`
	Mode      string     `json:"mode"` // "serve" or "run"
	Started   time.Time  `json:"started"`
	Now       time.Time  `json:"now"`
	Ended     bool       `json:"ended"` // a run is over: nothing changes any more
	Nodes     []Node     `json:"nodes"`
	Instances []Instance `json:"instances"`
}

// Node is one node of the cluster.
type Node struct {
	Name        string  `json:"name"`
	State       string  `json:"state"` // up, busy, disconnected, lost
	Error       string  `json:"error,omitempty"`
	Cores       [][]int `json:"cores"`
	MemoryBytes int64   `json:"memory_bytes,omitempty"`
	// Busy are hwthreads reserved on the node, also by processes that are
	// not instances the dashboard knows (drover start --cores).
	Busy       []int   `json:"busy"`
	GPUs       int     `json:"gpus,omitempty"`      // GPUs the node offers
	BusyGPUs   int     `json:"busy_gpus,omitempty"` // of them, reserved
	Processes  int     `json:"processes"`
	RTTSeconds float64 `json:"rtt_seconds,omitempty"`
}

// Instance is one instance (or process) and its attempts. Records held by
// a Model are never modified once published; changes replace them.
type Instance struct {
	Name       string `json:"name"` // unique; under drover serve "N.INSTANCE"
	Submission int    `json:"submission,omitempty"`
	State      string `json:"state"`
	Node       string `json:"node,omitempty"`
	HWThreads  []int  `json:"hwthreads,omitempty"`
	GPUs       int    `json:"gpus,omitempty"` // of the latest attempt
	// Reserved are the hwthreads of the cores a process of drover start
	// holds while it runs: those it is bound to and their cores' siblings,
	// which nobody else may take.
	Reserved []int     `json:"reserved,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Signal   string    `json:"signal,omitempty"`
	Error    string    `json:"error,omitempty"`
	Outcome  string    `json:"outcome,omitempty"`
	Start    time.Time `json:"start,omitzero"` // of the latest attempt
	End      time.Time `json:"end,omitzero"`
	Runs     []Attempt `json:"runs,omitempty"`
}

// Final reports whether the instance has ended for good.
func (in *Instance) Final() bool {
	return in.State != StatePending && in.State != StateRunning
}

// Attempt is one attempt of an instance: a bar of the timeline.
type Attempt struct {
	Attempt   int       `json:"attempt"`
	Node      string    `json:"node,omitempty"`
	HWThreads []int     `json:"hwthreads,omitempty"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end,omitzero"` // zero while running
	Result    string    `json:"result"`       // running, succeeded, failed, lost, cancelled
	Detail    string    `json:"detail,omitempty"`
}

// Event is an event of the results log under the name the dashboard
// knows its instance by.
type Event struct {
	results.Event
	Name string `json:"name,omitempty"`
}

// Update is what changed since a subscriber's previous Update.
type Update struct {
	Instances []Instance `json:"instances,omitempty"` // current records of the changed ones
	Nodes     []Node     `json:"nodes,omitempty"`     // every node, when any changed
	Events    []Event    `json:"events,omitempty"`    // new events, the latest ones at most
	// Removed are instances that are gone (purged processes). An instance
	// both removed and in Instances was removed and then came back.
	Removed []string `json:"removed,omitempty"`
	Ended   bool     `json:"ended,omitempty"`
	// Resync: too much changed to list; take a new Snapshot instead.
	Resync bool `json:"resync,omitempty"`
}

// Source is what the dashboard shows.
type Source interface {
	Snapshot() State
	// Subscribe delivers coalesced updates until ctx ends, then closes
	// the channel. Updates are built when the receiver is ready, so a
	// slow receiver gets fewer, bigger ones, never a backlog.
	Subscribe(ctx context.Context) <-chan Update
	// Instance is one instance's record and its latest events.
	Instance(name string) (Instance, []Event, bool)
	// Logs writes an instance's stdout (or stderr) to w from the start;
	// with follow, until it has ended and everything is written.
	Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error
	// Metrics gathers the source's Prometheus metrics.
	Metrics() prometheus.Gatherer
}

// Limits of the Model.
const (
	maxEventsPerInstance = 64   // the instance page shows these
	maxDirty             = 4096 // a subscriber with more pending changes resyncs
	maxEventsPerUpdate   = 256
	// minUpdateGap spaces a subscriber's updates, so bursts coalesce.
	minUpdateGap = 200 * time.Millisecond
)

// Model is the state shared by the adapters: instances, nodes,
// subscribers and metrics. Its methods are safe for concurrent use.
type Model struct {
	title, mode string
	started     time.Time
	metrics     *metrics

	mu     sync.Mutex
	ended  bool
	nodes  []Node
	byName map[string]*Instance
	order  []string
	events map[string][]Event
	subs   map[*subscriber]struct{}
	// freeSince is when each node's hwthread became free, for the launch
	// latency: "node/hwthread" -> time.
	freeSince map[string]time.Time
	runStart  map[int]time.Time // by submission
}

type subscriber struct {
	wake   chan struct{}
	dirty  map[string]struct{}
	nodes  bool
	ended  bool
	resync bool
	events []Event
	// removed since the last update, in order (the dirty set forgets them)
	removed []string
}

// NewModel makes an empty model; mode is "serve" or "run".
func NewModel(title, mode string) *Model {
	m := &Model{
		title:     title,
		mode:      mode,
		started:   time.Now(),
		byName:    make(map[string]*Instance),
		events:    make(map[string][]Event),
		subs:      make(map[*subscriber]struct{}),
		freeSince: make(map[string]time.Time),
		runStart:  make(map[int]time.Time),
	}
	m.metrics = newMetrics(m)
	return m
}

// Metrics is the model's private registry.
func (m *Model) Metrics() prometheus.Gatherer { return m.metrics.reg }

// Snapshot returns the current state. Instance records are shared, not
// copied: they are immutable.
func (m *Model) Snapshot() State {
	m.mu.Lock()
	ptrs := make([]*Instance, len(m.order))
	for i, name := range m.order {
		ptrs[i] = m.byName[name]
	}
	st := State{Title: m.title, Mode: m.mode, Started: m.started, Now: time.Now(), Ended: m.ended, Nodes: slices.Clone(m.nodes)}
	m.mu.Unlock()
	st.Instances = make([]Instance, len(ptrs))
	for i, p := range ptrs {
		st.Instances[i] = *p
	}
	if st.Nodes == nil {
		st.Nodes = []Node{}
	}
	return st
}

// Instance returns one instance and its latest events.
func (m *Model) Instance(name string) (Instance, []Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.byName[name]
	if p == nil {
		return Instance{}, nil, false
	}
	return *p, slices.Clone(m.events[name]), true
}

// lookup returns the current record of name (nil if unknown).
func (m *Model) lookup(name string) *Instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byName[name]
}

// Add makes instances known as pending (a run's or submission's list).
func (m *Model) Add(submission int, names ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range names {
		if m.byName[n] != nil {
			continue
		}
		m.byName[n] = &Instance{Name: n, Submission: submission, State: StatePending}
		m.order = append(m.order, n)
		m.dirtyLocked(n)
	}
}

// SetState sets the state of a known instance when it differs (the
// adapters correct states the events do not tell, e.g. cancelled).
func (m *Model) SetState(name, state, outcome string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.byName[name]
	if p == nil || (p.State == state && (outcome == "" || p.Outcome == outcome)) {
		return
	}
	in := *p
	in.State = state
	if outcome != "" {
		in.Outcome = outcome
	}
	if in.Final() {
		in.Reserved = nil // its cores are free again
	}
	if in.Final() && len(in.Runs) > 0 && in.Runs[len(in.Runs)-1].End.IsZero() {
		in.Runs = slices.Clone(in.Runs)
		last := &in.Runs[len(in.Runs)-1]
		last.End, last.Result = time.Now(), state
	}
	m.putLocked(&in)
}

// SetReserved sets the hwthreads of the cores an instance holds (see
// Instance.Reserved).
func (m *Model) SetReserved(name string, hw []int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.byName[name]
	if p == nil || slices.Equal(p.Reserved, hw) {
		return
	}
	in := *p
	in.Reserved = slices.Clone(hw)
	m.putLocked(&in)
}

// Remove forgets instances: they are gone for good (a purged process).
func (m *Model) Remove(names ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(names)
}

// RemoveOthers forgets the instances of a submission that keep does not
// name.
func (m *Model) RemoveOthers(submission int, keep map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var gone []string
	for _, n := range m.order {
		if m.byName[n].Submission == submission && !keep[n] {
			gone = append(gone, n)
		}
	}
	m.removeLocked(gone)
}

func (m *Model) removeLocked(names []string) {
	gone := make(map[string]bool, len(names))
	for _, n := range names {
		if m.byName[n] == nil {
			continue
		}
		gone[n] = true
		delete(m.byName, n)
		delete(m.events, n)
		for s := range m.subs {
			if s.resync {
				continue
			}
			delete(s.dirty, n)
			if len(s.removed) >= maxDirty {
				s.resync, s.dirty, s.events, s.removed = true, nil, nil, nil
			} else {
				s.removed = append(s.removed, n)
			}
			s.poke()
		}
	}
	if len(gone) > 0 {
		m.order = slices.DeleteFunc(m.order, func(n string) bool { return gone[n] })
	}
}

// End marks a run as over.
func (m *Model) End() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ended = true
	for s := range m.subs {
		s.ended = true
		s.poke()
	}
}

// SetNodes replaces the node list when it changed.
func (m *Model) SetNodes(nodes []Node) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if nodesEqual(m.nodes, nodes) {
		return
	}
	m.nodes = nodes
	for s := range m.subs {
		s.nodes = true
		s.poke()
	}
}

// updateNodeLocked changes one node in place (copy on write).
func (m *Model) updateNodeLocked(name string, f func(*Node)) {
	i := slices.IndexFunc(m.nodes, func(n Node) bool { return n.Name == name })
	nodes := slices.Clone(m.nodes)
	if i < 0 {
		nodes = append(nodes, Node{Name: name, State: "up", Busy: []int{}})
		i = len(nodes) - 1
	}
	f(&nodes[i])
	m.nodes = nodes
	for s := range m.subs {
		s.nodes = true
		s.poke()
	}
}

func nodesEqual(a, b []Node) bool {
	return slices.EqualFunc(a, b, func(x, y Node) bool {
		return x.Name == y.Name && x.State == y.State && x.Error == y.Error && x.Processes == y.Processes &&
			x.MemoryBytes == y.MemoryBytes && x.RTTSeconds == y.RTTSeconds && slices.Equal(x.Busy, y.Busy) &&
			x.GPUs == y.GPUs && x.BusyGPUs == y.BusyGPUs &&
			slices.EqualFunc(x.Cores, y.Cores, slices.Equal[[]int])
	})
}

// Apply takes one event of a results log; name is the instance as the
// dashboard knows it (for events of an instance), submission the
// submission it belongs to (0 under drover run). Quick and non-blocking:
// a queue calls it from its loop.
func (m *Model) Apply(submission int, name string, e results.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Event {
	case results.RunStart:
		m.runStart[submission] = e.Time
		return
	case results.RunEnd:
		return
	case results.NodeUp:
		if m.mode == "run" {
			m.updateNodeLocked(e.Node, func(n *Node) { n.State = "up" })
		}
		return
	case results.NodeLost:
		m.updateNodeLocked(e.Node, func(n *Node) { n.State, n.Error = "lost", "node lost" })
		return
	}
	if name == "" {
		return
	}
	p := m.byName[name]
	var in Instance
	if p == nil {
		in = Instance{Name: name, Submission: submission, State: StatePending}
	} else {
		in = *p
	}
	ev := Event{Event: e, Name: name}
	evs := append(m.events[name], ev)
	if len(evs) > maxEventsPerInstance {
		evs = slices.Delete(evs, 0, len(evs)-maxEventsPerInstance)
	}
	m.events[name] = evs
	if e.Node != "" {
		in.Node = e.Node
	}
	if e.Attempt > 0 {
		in.Attempts = e.Attempt
	}
	in.Runs = slices.Clone(in.Runs)
	switch e.Event {
	case results.Started:
		hw, _ := topology.ParseCPUList(e.HWThreads)
		in.State, in.HWThreads, in.Start, in.End = StateRunning, hw, e.Time, time.Time{}
		in.GPUs = 0
		if e.GPUs != "" {
			in.GPUs = strings.Count(e.GPUs, ",") + 1
		}
		in.ExitCode, in.Signal, in.Error, in.Outcome = nil, "", "", ""
		in.Runs = append(in.Runs, Attempt{Attempt: e.Attempt, Node: e.Node, HWThreads: hw, Start: e.Time, Result: StateRunning})
		m.metrics.starts.Inc()
		m.observeLaunchLocked(submission, e.Node, hw, e.Time)
	case results.AttemptFailed, results.Finished, results.Failed, results.Lost:
		state := e.Outcome()
		r := results.InstanceResult{State: state, ExitCode: e.ExitCode, Signal: e.Signal, Error: e.Error}
		in.ExitCode, in.Signal, in.Error, in.End = e.ExitCode, e.Signal, e.Error, e.Time
		if e.Event == results.AttemptFailed {
			r.State = "attempt " + itoa(e.Attempt) + " " + state
			in.State = StatePending
			m.metrics.attemptFailures.Inc()
		} else {
			in.State = state
			m.metrics.finishes.WithLabelValues(state).Inc()
		}
		in.Reserved = nil // its cores are free again
		in.Outcome = r.Outcome()
		n := len(in.Runs)
		if n > 0 && in.Runs[n-1].End.IsZero() && in.Runs[n-1].Attempt == e.Attempt {
			in.Runs[n-1].End, in.Runs[n-1].Result, in.Runs[n-1].Detail = e.Time, state, r.Outcome()
		} else if state != results.StateCancelled {
			// It never ran (could not start): an instant on the timeline.
			in.Runs = append(in.Runs, Attempt{Attempt: e.Attempt, Node: e.Node, Start: e.Time, End: e.Time, Result: state, Detail: r.Outcome()})
		}
		if in.Node != "" {
			for _, h := range in.HWThreads {
				m.freeSince[in.Node+"/"+itoa(h)] = e.Time
			}
		}
	default:
		return
	}
	m.putLocked(&in)
	for s := range m.subs {
		if s.resync {
			continue
		}
		if len(s.events) >= maxEventsPerUpdate {
			s.events = slices.Delete(s.events, 0, 1)
		}
		s.events = append(s.events, ev)
	}
}

// observeLaunchLocked records the time from the hwthreads becoming free
// (the previous instance on them ended, or the run started) to this start.
func (m *Model) observeLaunchLocked(submission int, nodeName string, hw []int, at time.Time) {
	var from time.Time
	for _, h := range hw {
		if t, ok := m.freeSince[nodeName+"/"+itoa(h)]; ok && t.After(from) {
			from = t
		}
	}
	if rs, ok := m.runStart[submission]; ok && rs.After(from) {
		from = rs
	}
	if !from.IsZero() && !at.Before(from) {
		m.metrics.launch.Observe(at.Sub(from).Seconds())
	}
}

func (m *Model) putLocked(in *Instance) {
	if m.byName[in.Name] == nil {
		m.order = append(m.order, in.Name)
	}
	m.byName[in.Name] = in
	m.dirtyLocked(in.Name)
}

func (m *Model) dirtyLocked(name string) {
	for s := range m.subs {
		if s.resync {
			continue
		}
		if len(s.dirty) >= maxDirty {
			s.resync, s.dirty, s.events, s.removed = true, nil, nil, nil
		} else {
			s.dirty[name] = struct{}{}
		}
		s.poke()
	}
}

func (s *subscriber) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Subscribe implements Source.
func (m *Model) Subscribe(ctx context.Context) <-chan Update {
	s := &subscriber{wake: make(chan struct{}, 1), dirty: make(map[string]struct{})}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	s.ended = m.ended
	m.mu.Unlock()
	out := make(chan Update)
	go func() {
		defer close(out)
		defer func() {
			m.mu.Lock()
			delete(m.subs, s)
			m.mu.Unlock()
		}()
		gap := time.NewTimer(0)
		defer gap.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
			// Let a burst gather before building the update.
			select {
			case <-ctx.Done():
				return
			case <-gap.C:
			}
			u, ok := m.take(s)
			if ok {
				select {
				case out <- u:
				case <-ctx.Done():
					return
				}
			}
			gap.Reset(minUpdateGap)
		}
	}()
	return out
}

// take builds a subscriber's update and clears its dirty state.
func (m *Model) take(s *subscriber) (Update, bool) {
	m.mu.Lock()
	var u Update
	u.Ended = s.ended
	if s.resync {
		s.resync, s.nodes, s.dirty, s.events, s.removed = false, false, make(map[string]struct{}), nil, nil
		m.mu.Unlock()
		u.Resync = true
		return u, true
	}
	names := slices.Collect(maps.Keys(s.dirty))
	ptrs := make([]*Instance, 0, len(names))
	for _, n := range names {
		if p := m.byName[n]; p != nil {
			ptrs = append(ptrs, p)
		}
	}
	if s.nodes {
		u.Nodes = slices.Clone(m.nodes)
	}
	u.Events, u.Removed = s.events, s.removed
	s.events, s.nodes, s.removed = nil, false, nil
	clear(s.dirty)
	m.mu.Unlock()
	for _, p := range ptrs {
		u.Instances = append(u.Instances, *p)
	}
	return u, len(u.Instances) > 0 || u.Nodes != nil || len(u.Events) > 0 || len(u.Removed) > 0 || u.Ended
}

func itoa(i int) string { return strconv.Itoa(i) }
