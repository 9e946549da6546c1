package wire

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/api/droverpb"
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
	tg := &resultsTarget{stdout: filepath.Join(out, "stdout"), stderr: filepath.Join(out, "stderr"), outDir: out,
		open: map[string]*os.File{}, failed: map[string]bool{}}
	defer tg.close()
	tg.write(&droverpb.FileData{Kind: droverpb.FileKind_FILE_KIND_STDOUT, Data: []byte("captured"), Last: true})
	tg.write(&droverpb.FileData{Kind: droverpb.FileKind_FILE_KIND_STDERR, Data: []byte("through the link"), Last: true})
	for _, p := range []string{"stdout", "stderr", "attempt-1/stdout"} {
		tg.write(&droverpb.FileData{Kind: droverpb.FileKind_FILE_KIND_OUTPUT, Path: p, Data: []byte("job file"), Last: true})
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
	full := &resultsTarget{stdout: filepath.Join(small, "stdout"), outDir: small, open: map[string]*os.File{}, failed: map[string]bool{}}
	defer full.close()
	chunk := make([]byte, fileChunk)
	full.write(&droverpb.FileData{Kind: droverpb.FileKind_FILE_KIND_STDOUT, Data: chunk})
	full.write(&droverpb.FileData{Kind: droverpb.FileKind_FILE_KIND_STDOUT, Offset: fileChunk, Data: chunk, Last: true})
	if len(full.errs) != 1 || !strings.Contains(full.errs[0], "no space left") {
		t.Errorf("errors %q: want the stdout write cut short by the full disk", full.errs)
	}
}
