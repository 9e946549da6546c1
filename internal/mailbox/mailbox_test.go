package mailbox

import (
	"slices"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newBox(t *testing.T) (*Mailbox[string], *clock) {
	t.Helper()
	c := &clock{time.Unix(1000, 0)}
	m := New[string](5 * time.Second)
	m.now = c.now
	return m, c
}

func seqs(ls []Letter[string]) []uint64 {
	var out []uint64
	for _, l := range ls {
		out = append(out, l.Seq)
	}
	return out
}

func items(ls []Letter[string]) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Item)
	}
	return out
}

// A reply that never reached its reader is handed to it again on its next
// call; once acknowledged it is gone.
func TestUnacknowledgedGoesToSameReaderAgain(t *testing.T) {
	m, _ := newBox(t)
	m.Put("", "a")
	m.Put("", "b")
	first := m.Take("r1", "", nil, true)
	if got := items(first); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first take %v", got)
	}
	// The reply was lost: the next call acknowledges nothing.
	again := m.Take("r1", "", nil, true)
	if !slices.Equal(seqs(again), seqs(first)) {
		t.Fatalf("after a lost reply got %v, want %v again", seqs(again), seqs(first))
	}
	m.Put("", "c")
	next := m.Take("r1", "", seqs(again), true)
	if got := items(next); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("after the ack got %v, want [c]", got)
	}
	// Another reader sees nothing while r1 holds c, even with again.
	if got := m.Take("r2", "", nil, true); len(got) != 0 {
		t.Fatalf("r2 took %v held by r1", items(got))
	}
}

// A reader that dies holding items: they go to any reader once the
// visibility timeout has passed, not before.
func TestVisibilityTimeoutRedelivers(t *testing.T) {
	m, c := newBox(t)
	m.Put("", "a")
	if got := m.Take("dead", "", nil, true); len(got) != 1 {
		t.Fatalf("took %v", got)
	}
	c.advance(4 * time.Second)
	if got := m.Take("r2", "", nil, true); len(got) != 0 {
		t.Fatalf("r2 took %v before the timeout", items(got))
	}
	if _, d := m.Wait(""); d != time.Second {
		t.Fatalf("next visibility in %v, want 1s", d)
	}
	c.advance(time.Second)
	got := m.Take("r2", "", nil, true)
	if !slices.Equal(items(got), []string{"a"}) {
		t.Fatalf("r2 took %v after the timeout, want [a]", items(got))
	}
	// The dead reader's late ack is not r2's: ignored, r2 still holds it.
	m.Ack("dead", seqs(got))
	c.advance(5 * time.Second)
	if got2 := m.Take("r3", "", nil, true); !slices.Equal(seqs(got2), seqs(got)) {
		t.Fatalf("the dead reader's ack removed r2's item: %v", got2)
	}
}

// Acknowledging numbers never handed out, or another reader's, is
// ignored: nothing is lost.
func TestBadAcksLoseNothing(t *testing.T) {
	m, _ := newBox(t)
	m.Put("", "a")
	m.Put("", "b")
	m.Ack("r1", []uint64{1, 2, 99})
	got := m.Take("r1", "", []uint64{1, 2, 0, 7}, true)
	if !slices.Equal(items(got), []string{"a", "b"}) {
		t.Fatalf("took %v after bad acks", items(got))
	}
	m.Ack("r2", seqs(got))
	if again := m.Take("r1", "", nil, true); len(again) != 2 {
		t.Fatalf("r2's ack of r1's items removed them: %v", again)
	}
}

// Boxes are read on their own: a reader of one box never takes another's.
func TestBoxesKeepApart(t *testing.T) {
	m, _ := newBox(t)
	m.Put("g1", "a")
	m.Put("g2", "b")
	m.Put("", "c")
	if got := items(m.Take("r", "g1", nil, true)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("g1: %v", got)
	}
	if got := items(m.Take("r", "", nil, true)); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("default box: %v", got)
	}
}

// Without again (a push stream that has sent them already), items held by
// the reader are not sent twice; Release makes them visible to all at once.
func TestNoAgainAndRelease(t *testing.T) {
	m, _ := newBox(t)
	m.Put("", "a")
	if got := m.Take("s", "", nil, false); len(got) != 1 {
		t.Fatalf("took %v", got)
	}
	if got := m.Take("s", "", nil, false); len(got) != 0 {
		t.Fatalf("pushed %v twice", items(got))
	}
	ch, _ := m.Wait("")
	m.Release("s")
	select {
	case <-ch:
	default:
		t.Fatal("Release did not wake waiters")
	}
	if got := items(m.Take("r2", "", nil, true)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after Release r2 took %v", got)
	}
}

// A stream that ended before its reader's acknowledgement arrived: the
// late ack still removes what no one else took meanwhile.
func TestAckAfterRelease(t *testing.T) {
	m, _ := newBox(t)
	m.Put("", "a")
	got := m.Take("s", "", nil, false)
	m.Release("s")
	m.Ack("s", seqs(got))
	if again := m.Take("r2", "", nil, true); len(again) != 0 {
		t.Fatalf("acknowledged after release, then taken by r2: %v", items(again))
	}
}

// An anonymous reader cannot acknowledge: what it takes is gone.
func TestAnonymousReaderIsAtMostOnce(t *testing.T) {
	m, c := newBox(t)
	m.Put("", "a")
	if got := m.Take("", "", nil, true); len(got) != 1 {
		t.Fatalf("took %v", got)
	}
	c.advance(time.Minute)
	if got := m.Take("r", "", nil, true); len(got) != 0 {
		t.Fatalf("taken again: %v", items(got))
	}
}

// TakeAll is the in-process hand-out: every item once, in order.
func TestTakeAllHandsOutOnce(t *testing.T) {
	m, _ := newBox(t)
	if got := m.TakeAll(""); got != nil {
		t.Fatalf("empty mailbox gave %v", got)
	}
	m.Put("", "a")
	m.Put("g", "x")
	m.Put("", "b")
	if got := m.TakeAll(""); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("took %v, want [a b]", got)
	}
	if got := m.TakeAll(""); got != nil {
		t.Fatalf("taken twice: %v", got)
	}
	if n := m.Len(""); n != 0 {
		t.Fatalf("%d left after TakeAll", n)
	}
	if got := m.TakeAll("g"); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("box g: %v", got)
	}
}

// A cumulative acknowledgement removes what the reader was handed up to
// its number, and returns it; nothing beyond it, nothing of another reader.
func TestAckThrough(t *testing.T) {
	m, _ := newBox(t)
	for _, s := range []string{"a", "b", "c"} {
		m.Put("", s)
	}
	got := m.Take("r", "", nil, false)
	m.Put("", "d") // not handed out yet
	if acked := m.AckThrough("other", "", 4); acked != nil {
		t.Fatalf("another reader acknowledged %v", acked)
	}
	if acked := m.AckThrough("r", "", got[1].Seq); !slices.Equal(acked, []string{"a", "b"}) {
		t.Fatalf("acknowledged %v, want [a b]", acked)
	}
	if n := m.Len(""); n != 2 {
		t.Fatalf("Len %d, want 2 (c handed, d not)", n)
	}
	if acked := m.AckThrough("r", "", 99); !slices.Equal(acked, []string{"c"}) {
		t.Fatalf("acknowledged %v, want [c] (d was never handed to r)", acked)
	}
	if again := items(m.Take("r", "", nil, true)); !slices.Equal(again, []string{"d"}) {
		t.Fatalf("after the acks r takes %v, want [d]", again)
	}
}

// Without a visibility timeout a held item stays with its reader however
// long it takes, until the reader takes it again or it is released.
func TestNoVisibilityTimeout(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	m := New[string](0)
	m.now = c.now
	m.Put("", "a")
	first := m.Take("r", "", nil, false)
	c.advance(24 * time.Hour)
	if got := m.Take("r", "", nil, false); len(got) != 0 {
		t.Fatalf("handed again without again: %v", items(got))
	}
	if got := m.Take("r2", "", nil, true); len(got) != 0 {
		t.Fatalf("another reader took %v", items(got))
	}
	if _, d := m.Wait(""); d != 0 {
		t.Fatalf("Wait says an item becomes visible in %v", d)
	}
	if got := m.Take("r", "", nil, true); !slices.Equal(seqs(got), seqs(first)) {
		t.Fatalf("again gave %v, want %v", seqs(got), seqs(first))
	}
	m.Release("r")
	if got := items(m.Take("r2", "", nil, false)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after Release r2 took %v", got)
	}
}
