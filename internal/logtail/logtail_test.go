package logtail

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// patience bounds every wait; it is never reached when File behaves.
const patience = time.Minute

// sink is a writer the test can read while File writes to it.
type sink struct {
	mu      sync.Mutex
	b       strings.Builder
	flushes int
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *sink) Flush() {
	s.mu.Lock()
	s.flushes++
	s.mu.Unlock()
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *sink) waitFor(t *testing.T, want string) {
	t.Helper()
	for end := time.Now().Add(patience); s.String() != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("followed %q, want %q", s.String(), want)
		}
	}
}

func appendTo(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// follow runs File in the background; its result comes on the channel.
func follow(ctx context.Context, path string, w *sink, done *atomic.Bool, wake <-chan struct{}) <-chan error {
	res := make(chan error, 1)
	go func() { res <- File(ctx, path, w, done.Load, wake) }()
	return res
}

func result(t *testing.T, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(patience):
		t.Fatal("File did not return")
		return nil
	}
}

// A file that does not exist yet is waited for, what is appended is
// written as it comes, and output written just before the end is not
// lost.
func TestFollowsUntilDone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	var w sink
	var done atomic.Bool
	res := follow(context.Background(), path, &w, &done, nil)
	appendTo(t, path, "one\n")
	w.waitFor(t, "one\n")
	appendTo(t, path, "two\n")
	w.waitFor(t, "one\ntwo\n")
	appendTo(t, path, "last\n")
	done.Store(true)
	if err := result(t, res); err != nil {
		t.Fatal(err)
	}
	if got := w.String(); got != "one\ntwo\nlast\n" {
		t.Errorf("followed %q", got)
	}
	if w.flushes == 0 {
		t.Error("the writer was never flushed")
	}
}

// A file replaced under its path (a retry) is drained, then the new one
// is followed after a marker.
func TestFollowsAReplacedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stdout")
	appendTo(t, path, "old\n")
	var w sink
	var done atomic.Bool
	res := follow(context.Background(), path, &w, &done, nil)
	w.waitFor(t, "old\n")
	appendTo(t, path, "old tail\n")
	if err := os.Rename(path, filepath.Join(dir, "stdout.1")); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, "new\n")
	w.waitFor(t, "old\nold tail\n"+Replaced+"new\n")
	done.Store(true)
	if err := result(t, res); err != nil {
		t.Fatal(err)
	}
}

// A file still missing when its writer is done: nothing to show.
func TestMissingFileOnceDone(t *testing.T) {
	var w sink
	var done atomic.Bool
	done.Store(true)
	err := result(t, follow(context.Background(), filepath.Join(t.TempDir(), "none"), &w, &done, nil))
	if err != nil || w.String() != "" {
		t.Errorf("got %q, %v", w.String(), err)
	}
}

// The end of the context ends the following, with its error.
func TestContextEndsFollowing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	appendTo(t, path, "x")
	var w sink
	var done atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	res := follow(ctx, path, &w, &done, nil)
	w.waitFor(t, "x")
	cancel()
	if err := result(t, res); !errors.Is(err, context.Canceled) {
		t.Errorf("after cancel: %v", err)
	}
}

// The wake channel (closed when the writer ends) is no reason to stop by
// itself: File ends only once done holds.
func TestWakeWithoutDone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	var w sink
	var done atomic.Bool
	wake := make(chan struct{})
	close(wake)
	res := follow(context.Background(), path, &w, &done, wake)
	appendTo(t, path, "after the wake\n")
	w.waitFor(t, "after the wake\n")
	done.Store(true)
	if err := result(t, res); err != nil {
		t.Fatal(err)
	}
}

// A path that cannot be read is an error naming it.
func TestUnreadablePath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stdout")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	var w sink
	var done atomic.Bool
	err := result(t, follow(context.Background(), path, &w, &done, nil))
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("following a directory: %v", err)
	}
}
