package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// DROVER_RUSAGE_FILE gets one line per process at exit, appended, with
// the process's own CPU time: internal/bench splits a run's CPU by it.
func TestRusageFileAppendsOneLinePerProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rusage.jsonl")
	if err := os.WriteFile(path, []byte("{\"pid\":1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DROVER_RUSAGE_FILE", path)
	var stderr bytes.Buffer
	startProfiles(&stderr)()
	if stderr.Len() > 0 {
		t.Fatalf("stderr: %s", stderr.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 || lines[0] != `{"pid":1}` {
		t.Fatalf("want the earlier line and one more, got %q", lines)
	}
	var got struct {
		PID    int      `json:"pid"`
		PPID   int      `json:"ppid"`
		Args   []string `json:"args"`
		UserUS int64    `json:"user_us"`
		SysUS  int64    `json:"sys_us"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	if got.PID != os.Getpid() || got.PPID != os.Getppid() || !slices.Equal(got.Args, os.Args[1:]) {
		t.Errorf("line %s: want pid %d, ppid %d, args %q", lines[1], os.Getpid(), os.Getppid(), os.Args[1:])
	}
	// This test process has run a while: its CPU time cannot be zero.
	if got.UserUS < 0 || got.SysUS < 0 || got.UserUS+got.SysUS == 0 {
		t.Errorf("line %s: want a positive CPU time", lines[1])
	}
}
