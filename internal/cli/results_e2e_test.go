package cli_test

// The results directory keeps what it holds: a job's outputs or a second
// run never replace captured output, nothing is written through a
// symlink there, and output cut short by a full disk is reported.

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/e2e"
)

// A job whose outputs ("*") include files named like drover's own
// (stdout, stderr, attempt-1/stdout) keeps its captured output; those
// files are refused by name and the instance fails saying so.
func TestRunOutputsNeverReplaceCapturedOutput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: clash
    outputs: ["*"]
    shell: 'echo job-stdout-file > stdout; echo job-stderr-file > stderr; mkdir attempt-1; echo job-attempt > attempt-1/stdout; echo fine > keep.csv; echo captured; echo captured-err >&2'
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	for name, want := range map[string]string{"stdout": "captured\n", "stderr": "captured-err\n", "keep.csv": "fine\n"} {
		if got := readFile(t, filepath.Join(out, "clash", name)); got != want {
			t.Errorf("clash/%s = %q, want %q", name, got, want)
		}
	}
	wantNotExist(t, filepath.Join(out, "clash", "attempt-1"))
	fin := checkOneFinalEach(t, readEvents(t, out), []string{"clash"})["clash"]
	for _, name := range []string{"stdout", "stderr", "attempt-1"} {
		if !strings.Contains(fin.Error, "collect output "+name+": not copied") {
			t.Errorf("final event error %q does not say that %s was not copied", fin.Error, name)
		}
	}
	if in := readSummary(t, out).instance(t, "clash"); in.State != "failed" {
		t.Errorf("clash is %q, want failed", in.State)
	}
}

// A second run into a results dir that holds one is refused (exit 2)
// and changes nothing there; with --resume it goes on.
func TestRunSecondRunIntoSameOutRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: a\n    shell: echo first-$MARK\n    env: {MARK: one}\n")
	wantCode(t, drover(t, dir, "run", "--progress", "none", "--out", out, jobs), 0)
	events := readFile(t, filepath.Join(out, "events.jsonl"))

	writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: a\n    shell: echo second\n")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "already holds a run") || !strings.Contains(r.stderr, "--resume") {
		t.Errorf("the refusal does not say why or what to do:\n%s", r)
	}
	if got := readFile(t, filepath.Join(out, "a", "stdout")); got != "first-one\n" {
		t.Errorf("a/stdout = %q after the refused run", got)
	}
	if got := readFile(t, filepath.Join(out, "events.jsonl")); got != events {
		t.Errorf("the refused run changed events.jsonl:\n%s", got)
	}
	// The default --out is never written over either: a second run goes
	// to drover-out.2 and says so.
	wantCode(t, drover(t, dir, "run", "--progress", "none", jobs), 0)
	first := readFile(t, filepath.Join(dir, "drover-out", "a", "stdout"))
	r = drover(t, dir, "run", "--progress", "none", jobs)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "drover-out.2") {
		t.Errorf("the second run does not say where its results went:\n%s", r)
	}
	if got := readFile(t, filepath.Join(dir, "drover-out", "a", "stdout")); got != first {
		t.Errorf("drover-out/a/stdout = %q after a second run, want %q", got, first)
	}
	if got := readFile(t, filepath.Join(dir, "drover-out.2", "a", "stdout")); got != "second\n" {
		t.Errorf("drover-out.2/a/stdout = %q", got)
	}

	r = drover(t, dir, "run", "--progress", "none", "--resume", "--out", out, jobs)
	wantCode(t, r, 0)
	if got := readFile(t, filepath.Join(out, "a", "stdout")); got != "first-one\n" {
		t.Errorf("a/stdout = %q after --resume (a had succeeded)", got)
	}
}

// Symlinks in the results dir are never followed: not a stdout leading
// elsewhere, not an instance dir, not events.jsonl.
func TestRunNoWriteThroughSymlinks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	elsewhere := filepath.Join(dir, "elsewhere")
	if err := os.Mkdir(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := writeFile(t, elsewhere, "victim", "precious\n")
	out := filepath.Join(dir, "out")
	for _, d := range []string{out, filepath.Join(out, "a")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(victim, filepath.Join(out, "a", "stdout")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(out, "b")); err != nil {
		t.Fatal(err)
	}
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: a
    shell: echo overwritten
  - name: b
    shell: echo overwritten
  - name: c
    shell: echo fine
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	fin := checkOneFinalEach(t, readEvents(t, out), []string{"a", "b", "c"})
	for _, n := range []string{"a", "b"} {
		if e := fin[n]; e.Event != "failed" || !strings.Contains(e.Error, "symlink") {
			t.Errorf("%s: %+v, want failed naming the symlink", n, e)
		}
	}
	if e := fin["c"]; e.Event != "finished" || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("c: %+v, want finished with exit 0", e)
	}
	entries, _ := os.ReadDir(elsewhere)
	if got := readFile(t, victim); got != "precious\n" || len(entries) != 1 {
		t.Errorf("the symlinks' target dir changed: victim %q, %d entries", got, len(entries))
	}

	// events.jsonl a symlink: --resume reads it but never appends there.
	out2 := filepath.Join(dir, "out2")
	if err := os.Mkdir(out2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(out2, "events.jsonl")); err != nil {
		t.Fatal(err)
	}
	r = drover(t, dir, "run", "--progress", "none", "--resume", "--out", out2, jobs)
	if r.code == 0 || !strings.Contains(r.stderr, "symlink") {
		t.Errorf("a run whose events.jsonl is a symlink: want a failure naming the symlink, got:\n%s", r)
	}
	if got := readFile(t, victim); got != "precious\n" {
		t.Errorf("the events log was appended through its symlink: %q", got)
	}
}

// With --out on a 1 MiB file system, an instance that writes 2 MB to
// stdout and ignores the write errors, exiting 0, is not a success: its
// final event says its output may be incomplete and the run exits 1.
func TestRunFullDiskReported(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", out, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs at %s (the test needs root): %v", out, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(out, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", out, err)
		}
	})
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: big
    shell: 'head -c 2000000 /dev/zero 2>/dev/null; exit 0'
`)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "may be incomplete") {
		t.Errorf("drover does not say the output may be incomplete:\n%s", r)
	}
	info, err := os.Stat(filepath.Join(out, "big", "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() >= 2000000 {
		t.Fatalf("stdout holds %d bytes: the file system did not fill, nothing was tested", info.Size())
	}
	t.Logf("drover said:\n%s", r.stderr)
	fin := checkOneFinalEach(t, readEvents(t, out), []string{"big"})["big"]
	if fin.ExitCode == nil || *fin.ExitCode != 0 || !strings.Contains(fin.Error, "stdout may be incomplete") {
		t.Errorf("final event %+v: want exit 0 with an error saying stdout may be incomplete", fin)
	}
}

// The disk full only for a while: the job's output is cut while another
// file fills the disk, which is removed before the job exits 0. At the
// exit there is room again; drover still reports the output incomplete,
// having seen the file system full while the job ran (and said so as it
// happened).
func TestRunMomentarilyFullDiskReported(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", out, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs at %s (the test needs root): %v", out, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(out, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", out, err)
		}
	})
	marks := filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	// Bounded: the job gives up waiting after 60 s (and the test fails).
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: cut
    env: {MARKS: `+marks+`}
    shell: 'i=0; while [ ! -e "$MARKS/filled" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; head -c 590000 /dev/zero 2>/dev/null; touch "$MARKS/wrote"; i=0; while [ ! -e "$MARKS/freed" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; exit 0'
`)
	d := e2e.Start(t, droverBin, dir, testEnv(), "run", "--progress", "none", "--out", out, jobs)
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) || !d.Running() {
				t.Fatalf("no %s:\n%s", what, d.Out)
			}
		}
	}
	exists := func(p string) func() bool {
		return func() bool { _, err := os.Stat(p); return err == nil }
	}
	waitFor("started instance", exists(filepath.Join(out, "cut", "stdout")))
	filler := filepath.Join(out, "filler")
	fillFS(t, filler, 1<<20-500<<10) // leaves the job less than its 590,000 bytes
	writeFile(t, marks, "filled", "")
	waitFor("write by the job", exists(filepath.Join(marks, "wrote")))
	waitFor("warning that the disk is full", func() bool { return strings.Contains(d.Out.String(), "file system full") })
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	writeFile(t, marks, "freed", "")
	if code := d.Wait(t, time.Minute); code != 1 {
		t.Errorf("exit %d, want 1:\n%s", code, d.Out)
	}
	info, err := os.Stat(filepath.Join(out, "cut", "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drover said:\n%s", d.Out)
	if info.Size() >= 590000 {
		t.Fatalf("stdout holds %d bytes: the disk did not fill, nothing was tested", info.Size())
	}
	fin := checkOneFinalEach(t, readEvents(t, out), []string{"cut"})["cut"]
	if fin.ExitCode == nil || *fin.ExitCode != 0 || !strings.Contains(fin.Error, "may be incomplete") {
		t.Errorf("final event %+v: want exit 0 with an error saying the output may be incomplete", fin)
	}
	if in := readSummary(t, out).instance(t, "cut"); in.State != "failed" {
		t.Errorf("cut is %q, want failed", in.State)
	}
}

// fillFS writes up to max bytes to path, stopping when the disk is full.
func fillFS(t *testing.T, path string, max int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, max)); err != nil && !errors.Is(err, unix.ENOSPC) {
		t.Fatal(err)
	}
}
