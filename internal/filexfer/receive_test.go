package filexfer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Results coming back from a remote agent never replace the captured
// output (outputs named stdout, stderr, attempt-N), never go through a
// symlink in the results dir, and a write cut short by a full disk is an
// error of the exit.
func TestResultsKeepCapturedOutput(t *testing.T) {
	base := t.TempDir()
	out := filepath.Join(base, "out", "inst")
	elsewhere := filepath.Join(base, "elsewhere")
	for _, d := range []string{out, elsewhere} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	victim := filepath.Join(elsewhere, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(out, "stderr")); err != nil {
		t.Fatal(err)
	}
	tg := newTarget(filepath.Join(out, "stdout"), filepath.Join(out, "stderr"), out)
	defer tg.close()
	tg.write(Result{Kind: Stdout, Data: []byte("captured"), Last: true})
	tg.write(Result{Kind: Stderr, Data: []byte("through the link"), Last: true})
	for _, p := range []string{"stdout", "stderr", "attempt-1/stdout"} {
		tg.write(Result{Kind: Output, Path: p, Data: []byte("job file"), Last: true})
	}
	if got := readFile(t, filepath.Join(out, "stdout")); got != "captured" {
		t.Errorf("stdout = %q", got)
	}
	if got := readFile(t, victim); got != "keep" {
		t.Errorf("written through the stderr symlink: %q", got)
	}
	if _, err := os.Lstat(filepath.Join(out, "attempt-1")); err == nil {
		t.Error("an output made attempt-1")
	}
	errs := strings.Join(tg.errs, "\n")
	for _, want := range []string{"stderr: open", "symlink", "output stdout: not copied", "output stderr: not copied", "output attempt-1/stdout: not copied"} {
		if !strings.Contains(errs, want) {
			t.Errorf("errors %q do not say %q", tg.errs, want)
		}
	}

	// A full disk.
	small := filepath.Join(base, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=128k"); err != nil {
		t.Fatalf("mount a small tmpfs (the test needs root): %v", err)
	}
	defer unix.Unmount(small, unix.MNT_DETACH)
	full := newTarget(filepath.Join(small, "stdout"), "", small)
	defer full.close()
	chunk := make([]byte, ChunkSize)
	full.write(Result{Kind: Stdout, Data: chunk})
	full.write(Result{Kind: Stdout, Offset: ChunkSize, Data: chunk, Last: true})
	if len(full.errs) != 1 || !strings.Contains(full.errs[0], "no space left") {
		t.Errorf("errors %q: want the stdout write cut short by the full disk", full.errs)
	}
}

// The manager refuses a result path from the agent that leaves OutputDir,
// by name or through a symlink there.
func TestResultPathsCannotEscape(t *testing.T) {
	base := t.TempDir()
	out := filepath.Join(base, "out")
	outside := filepath.Join(base, "outside")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(out, "link")); err != nil {
		t.Fatal(err)
	}
	tg := newTarget("", "", out)
	defer tg.close()
	bad := []string{"../evil", "/abs/evil", "a/../../evil", "link/evil", "", "."}
	for _, p := range bad {
		tg.write(Result{Kind: Output, Path: p, Data: []byte("x"), Last: true})
	}
	tg.write(Result{Kind: Output, Path: "ok/fine", Data: []byte("ok"), Last: true})
	tg.write(Result{Kind: Stdout, Data: []byte("x"), Last: true})
	if len(tg.errs) != len(bad)+1 {
		t.Errorf("errors %q, want one for each of %q and the stdout nobody asked for", tg.errs, bad)
	}
	for _, e := range tg.errs[:3] {
		if !strings.Contains(e, "leaves the output dir") {
			t.Errorf("unclear error %q", e)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("written outside: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(base, "evil")); err == nil {
		t.Error("written outside")
	}
	if got := readFile(t, filepath.Join(out, "ok", "fine")); got != "ok" {
		t.Errorf("ok/fine = %q", got)
	}
}
