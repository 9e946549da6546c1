package agent

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
)

func TestCreateOutputRefusesOwnNamesAndSymlinks(t *testing.T) {
	out := t.TempDir()
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(out, "sub")); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"stdout", "stderr", "attempt-2/stdout"} {
		if _, err := createOutput(out, rel, 0o644); !errors.Is(err, results.ErrOwnName) {
			t.Errorf("%s: %v, want ErrOwnName", rel, err)
		}
	}
	if _, err := createOutput(out, "sub/x.csv", 0o644); !errors.Is(err, nofollow.ErrSymlink) {
		t.Errorf("through a symlinked dir: %v, want ErrSymlink", err)
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) > 0 {
		t.Errorf("written through the symlink: %v", entries)
	}
	f, err := createOutput(out, "deep/er/x.csv", 0o640)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestCheckCapturedOnAFullFileSystem(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs (the test needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	stdout := filepath.Join(dir, "stdout")
	if err := os.WriteFile(stdout, []byte("whole\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkCaptured([]string{stdout, "/dev/null"}); err != nil {
		t.Fatalf("room left: %v", err)
	}
	f, err := os.OpenFile(stdout, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.Write(make([]byte, 1<<20))
	f.Close()
	if werr == nil {
		t.Fatal("1 MiB fit into 256 KiB")
	}
	err = checkCaptured([]string{stdout})
	if err == nil || !strings.Contains(err.Error(), "stdout may be incomplete") || !strings.Contains(err.Error(), ErrFull.Error()) {
		t.Errorf("full: %v, want stdout may be incomplete", err)
	}
}

// A look that finds the file system full while a process runs marks it,
// also once there is room again; one that came before its start does not.
func TestFullWatchSeesAMomentarilyFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs (the test needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	// Without its goroutine: the looks are the test's.
	w := &fullWatch{log: slog.New(slog.DiscardHandler), devs: map[uint64]*fsState{}, wake: make(chan struct{}, 1)}
	stdout := filepath.Join(dir, "stdout")
	filler := filepath.Join(dir, "filler")

	quiet := w.add([]string{stdout})
	w.look()
	if w.drop(quiet) {
		t.Error("marked with room all along")
	}

	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o644); err == nil {
		t.Fatal("1 MiB fit into 256 KiB")
	}
	w.look() // full before the next process starts
	marks := w.add([]string{stdout})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	w.look()
	if w.drop(marks) {
		t.Error("marked for a full disk seen before it started")
	}

	marks = w.add([]string{stdout})
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o644); err == nil {
		t.Fatal("1 MiB fit into 256 KiB")
	}
	w.look()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	w.look()
	if !w.drop(marks) {
		t.Error("not marked for a disk seen full while it ran")
	}
	if n := len(w.devs); n != 0 {
		t.Errorf("%d file systems still watched after every drop", n)
	}
}
