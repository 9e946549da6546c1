package results_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/results"
)

// smallFS mounts a tmpfs of size bytes at a fresh dir, unmounted at the end.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount a %s tmpfs (the test needs root): %v", size, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range 1 << 12 { // bounded: 16 MiB at most
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("the file system never filled")
}

// The log's reserve takes events once the disk is full; past it, writes
// fail: the error is kept and reported, the file holds whole lines only,
// and the events not written go in once there is room again.
func TestLogOnAFullDisk(t *testing.T) {
	dir := smallFS(t, "256k")
	l, err := results.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, filepath.Join(dir, "filler"))
	// A line is about 100 bytes: the 64 KiB reserve takes a few hundred.
	if err := l.Append(results.Event{Event: results.Finished, Job: "in-reserve"}); err != nil {
		t.Fatalf("an event within the reserve: %v", err)
	}
	var failed error
	n := 1
	for ; n < 4000 && failed == nil; n++ {
		failed = l.Append(results.Event{Event: results.Started, Job: strings.Repeat("x", 200)})
	}
	if !errors.Is(failed, syscall.ENOSPC) {
		t.Fatalf("after %d appends past the reserve: %v, want ENOSPC", n, failed)
	}
	if err := l.Err(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Err = %v, want ENOSPC", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, results.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		t.Errorf("the log ends with a torn line after a failed write")
	}
	written := bytes.Count(data, []byte("\n"))

	// Room again: the held events go in with the next one.
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	l.Append(results.Event{Event: results.Finished, Job: "after"})
	err = l.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Close = %v: want the failed write reported", err)
	}
	f, err := os.Open(filepath.Join(dir, results.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var jobs []string
	if err := results.ReadEvents(f, func(e results.Event) { jobs = append(jobs, e.Job) }); err != nil {
		t.Fatalf("the log is not whole lines: %v", err)
	}
	if len(jobs) != n+1 || jobs[0] != "in-reserve" || jobs[len(jobs)-1] != "after" {
		t.Errorf("the log holds %d events (%d before room was made), want %d, in-reserve first and after last", len(jobs), written, n+1)
	}
}

func TestOpenLogRefusesASymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, results.EventsFile)); err != nil {
		t.Fatal(err)
	}
	if l, err := results.OpenLog(dir); err == nil {
		l.Close()
		t.Fatal("OpenLog opened a symlinked events.jsonl")
	}
	if data, _ := os.ReadFile(victim); string(data) != "keep\n" {
		t.Errorf("the symlink's target holds %q", data)
	}
}

func TestOwnName(t *testing.T) {
	for rel, want := range map[string]bool{
		"stdout": true, "stderr": true, "attempt-1": true, "attempt-12/stdout": true, "./stdout": true,
		"stdout.txt": false, "attempt-": false, "attempt-x": false, "sub/stdout": false, "a.csv": false,
	} {
		if got := results.OwnName(rel); got != want {
			t.Errorf("OwnName(%q) = %v, want %v", rel, got, want)
		}
	}
}

func TestCheckFresh(t *testing.T) {
	dir := t.TempDir()
	if err := results.CheckFresh(dir); err != nil {
		t.Fatalf("an empty dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "unrelated"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := results.CheckFresh(dir); err != nil {
		t.Fatalf("a dir without a run: %v", err)
	}
	for _, name := range []string{results.SummaryFile, results.EventsFile} {
		sub := filepath.Join(dir, name+".d")
		os.Mkdir(sub, 0o755)
		if err := os.WriteFile(filepath.Join(sub, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := results.CheckFresh(sub); !errors.Is(err, results.ErrHoldsRun) {
			t.Errorf("a dir with %s: %v, want ErrHoldsRun", name, err)
		}
	}
}
