// Package mailbox keeps final reports (exits) until their reader says it
// has them: every item gets a sequence number, is handed out to a named
// reader and stays until that reader acknowledges it. An item handed out
// but never acknowledged goes to the same reader again on its next call
// (its reply was lost) and to any reader once the visibility timeout has
// passed (the reader died): nothing is lost, and a reader that remembers
// the sequence numbers it returned never returns one twice.
//
// Every layer that reports exits keeps them in one: the supervisor and the
// agent (an in-process consumer takes with TakeAll), the agent's outbox to
// its manager (one reader, acknowledged cumulatively with AckThrough, sent
// again on a new stream) and serve's per-group exits for its clients.
package mailbox

import (
	"sync"
	"time"
)

// Letter is one item with its sequence number.
type Letter[T any] struct {
	Seq  uint64
	Item T
}

type entry[T any] struct {
	Letter[T]
	box    string
	holder string    // reader it was last handed to; "" = never handed
	handed time.Time // when
	acked  bool
}

// Mailbox holds items under box names (a program's group), each box read
// on its own. Safe for concurrent use.
type Mailbox[T any] struct {
	visibility time.Duration
	now        func() time.Time

	mu      sync.Mutex
	next    uint64
	boxes   map[string][]*entry[T] // in seq order; acked entries are dropped lazily
	bySeq   map[uint64]*entry[T]
	changed chan struct{} // closed on Put (or Release); nil when no one waits
}

// New makes a Mailbox whose handed-out items become visible to every reader
// again after visibility; 0: only Release makes them visible again (a
// single reader, which takes them again itself).
func New[T any](visibility time.Duration) *Mailbox[T] {
	return &Mailbox[T]{visibility: visibility, now: time.Now, boxes: map[string][]*entry[T]{}, bySeq: map[uint64]*entry[T]{}}
}

// Put adds an item to a box and returns its sequence number.
func (m *Mailbox[T]) Put(box string, item T) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	e := &entry[T]{Letter: Letter[T]{Seq: m.next, Item: item}, box: box}
	m.boxes[box] = append(m.boxes[box], e)
	m.bySeq[e.Seq] = e
	m.wakeLocked()
	return e.Seq
}

func (m *Mailbox[T]) wakeLocked() {
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
}

// Ack removes the items reader was handed. Sequence numbers never handed
// out, already acknowledged, or handed to another reader are ignored.
func (m *Mailbox[T]) Ack(reader string, seqs []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ackLocked(reader, seqs)
}

func (m *Mailbox[T]) ackLocked(reader string, seqs []uint64) {
	for _, s := range seqs {
		e := m.bySeq[s]
		if e == nil || e.holder != reader || reader == "" {
			continue
		}
		e.acked = true
		delete(m.bySeq, s)
	}
}

// Take acknowledges ack, then hands reader the items of box it may have, in
// sequence order: those never handed out, those whose visibility timeout
// has passed, and, with again, those it was handed before and has not
// acknowledged. An anonymous reader ("") cannot acknowledge: what it is
// handed counts as acknowledged at once (at most once).
func (m *Mailbox[T]) Take(reader, box string, ack []uint64, again bool) []Letter[T] {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ackLocked(reader, ack)
	now := m.now()
	q := m.boxes[box]
	var out []Letter[T]
	kept := q[:0]
	for _, e := range q {
		if e.acked {
			continue
		}
		switch {
		case e.holder == "",
			e.holder == reader && again,
			m.visible(e, now):
			e.holder, e.handed = reader, now
			out = append(out, e.Letter)
			if reader == "" {
				e.acked = true
				delete(m.bySeq, e.Seq)
				continue
			}
		}
		kept = append(kept, e)
	}
	clear(q[len(kept):])
	if len(kept) == 0 {
		delete(m.boxes, box)
	} else {
		m.boxes[box] = kept
	}
	return out
}

func (m *Mailbox[T]) visible(e *entry[T], now time.Time) bool {
	return (m.visibility > 0 || e.handed.IsZero()) && now.Sub(e.handed) >= m.visibility
}

// TakeAll hands every item of box to an anonymous reader and returns them
// in sequence order: each is handed out once. It is the in-process form,
// for a single consumer that cannot lose what it is given.
func (m *Mailbox[T]) TakeAll(box string) []T {
	ls := m.Take("", box, nil, false)
	if len(ls) == 0 {
		return nil
	}
	out := make([]T, len(ls))
	for i, l := range ls {
		out[i] = l.Item
	}
	return out
}

// AckThrough acknowledges every item of box handed to reader whose
// sequence number is at most seq (a cumulative acknowledgement), and
// returns them in sequence order.
func (m *Mailbox[T]) AckThrough(reader, box string, seq uint64) []T {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []T
	for _, e := range m.boxes[box] {
		if e.Seq > seq {
			break
		}
		if e.acked || e.holder != reader || reader == "" {
			continue
		}
		e.acked = true
		delete(m.bySeq, e.Seq)
		out = append(out, e.Item)
	}
	return out
}

// Len is the number of items of box not acknowledged yet.
func (m *Mailbox[T]) Len(box string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.boxes[box] {
		if !e.acked {
			n++
		}
	}
	return n
}

// Release makes every item handed to reader and not acknowledged visible
// to all readers at once (the reader's stream ended). Until another reader
// takes one, the reader's own late acknowledgement still counts.
func (m *Mailbox[T]) Release(reader string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.bySeq {
		if e.holder == reader {
			e.handed = time.Time{}
		}
	}
	m.wakeLocked()
}

// Wait returns a channel that is closed when something is put, and how
// long until the next handed-out item of box becomes visible again (0:
// none is pending).
func (m *Mailbox[T]) Wait(box string) (<-chan struct{}, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.changed == nil {
		m.changed = make(chan struct{})
	}
	var next time.Duration
	now := m.now()
	for _, e := range m.boxes[box] {
		if e.acked || e.holder == "" || m.visibility == 0 {
			continue
		}
		d := max(e.handed.Add(m.visibility).Sub(now), time.Millisecond)
		if next == 0 || d < next {
			next = d
		}
	}
	return m.changed, next
}
