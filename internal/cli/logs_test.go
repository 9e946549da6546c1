package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

// TestPrefixWriter: lines from several writers come out whole, each behind
// its writer's prefix, however the bytes were split; an unfinished last
// line is ended by flush.
func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	var mu sync.Mutex
	a := &prefixWriter{prefix: "a | ", mu: &mu, out: &out}
	b := &prefixWriter{prefix: "b | ", mu: &mu, out: &out}
	a.Write([]byte("one\ntw"))
	b.Write([]byte("x"))
	a.Write([]byte("o\n"))
	b.Write([]byte("y\nz"))
	a.flush()
	b.flush()
	got := out.String()
	want := "a | one\na | two\nb | xy\nb | z\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if !strings.HasPrefix(l, "a | ") && !strings.HasPrefix(l, "b | ") {
			t.Errorf("torn line %q", l)
		}
	}
}
