package cli_test

import (
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// drover --version names the version, the commit and the Go version.
func TestVersion(t *testing.T) {
	r := drover(t, t.TempDir(), "--version")
	wantCode(t, r, 0)
	if !regexp.MustCompile(`^drover \d+\.\d+\.\d+ \(commit \S+, go\S+ \S+/\S+\)\n$`).MatchString(r.stdout) || !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("--version printed %q", r.stdout)
	}
}

// drover check validates a job file and prints its plan without starting
// anything; a bad file is FILE:LINE:COL with exit 2.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "jobs.yaml", `jobs:
  - name: sim
    command: [touch, ran]
    repeat: 3
    cores: 1
  - name: post
    shell: touch ran
    node: n2
  - name: gpu
    command: [touch, ran]
    gpus: 2
    memory: 4G
    resources: {license: 1}
`)
	r := drover(t, dir, "check", good)
	wantCode(t, r, 0)
	for _, want := range []string{"valid, 3 jobs, 5 instances", "sim ", "post ", "n2", "2 GPUs,4G,license=1", "this machine"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("plan lacks %q:\n%s", want, r.stdout)
		}
	}
	wantNotExist(t, filepath.Join(dir, "ran"))
	wantNotExist(t, filepath.Join(dir, "drover-out"))

	bad := writeFile(t, dir, "bad.yaml", "jobs:\n  - name: a\n    comand: [x]\n")
	r = drover(t, dir, "check", bad)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "bad.yaml:3:5: unknown key \"comand\"") {
		t.Errorf("bad file: %s", r)
	}

	// A file to stage that is not there: check and run both stop at it,
	// before anything starts.
	nofile := writeFile(t, dir, "nofile.yaml", "jobs:\n  - name: a\n    files: [nope.txt]\n    command: [touch, ran]\n")
	for _, verb := range []string{"check", "run"} {
		r = drover(t, dir, verb, nofile)
		wantCode(t, r, 2)
		if !strings.Contains(r.stderr, "nofile.yaml:2:5: job a: files: nope.txt") {
			t.Errorf("%s of a job with a missing file: %s", verb, r)
		}
	}
	wantNotExist(t, filepath.Join(dir, "ran"))
	wantNotExist(t, filepath.Join(dir, "drover-out"))
}
