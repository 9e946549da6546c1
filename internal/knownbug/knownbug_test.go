package knownbug_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/knownbug"
)

// TestBugShows is run by TestSeen in a child process with the bug to
// report in KNOWNBUG_CHILD; otherwise it passes.
func TestBugShows(t *testing.T) {
	if bug := os.Getenv("KNOWNBUG_CHILD"); bug != "" {
		knownbug.Seen(t, bug, "want %d, got %d", 2, 1)
		t.Error("Seen returned")
	}
}

func TestSeen(t *testing.T) {
	for _, tc := range []struct {
		env, want string
		fails     bool
	}{
		{env: "", want: "--- FAIL: TestBugShows", fails: true},
		{env: "no", want: "--- FAIL: TestBugShows", fails: true},
		{env: "allow", want: "--- SKIP: TestBugShows"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBugShows$", "-test.v")
		cmd.Env = append(os.Environ(), "KNOWNBUG_CHILD=serve-idle-conn", knownbug.Env+"="+tc.env)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.fails {
			t.Errorf("%s=%q: failed %v, want %v:\n%s", knownbug.Env, tc.env, failed, tc.fails, out)
		}
		for _, want := range []string{tc.want, "known bug serve-idle-conn: want 2, got 1"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s=%q: output lacks %q:\n%s", knownbug.Env, tc.env, want, out)
			}
		}
		if strings.Contains(string(out), "Seen returned") {
			t.Errorf("%s=%q: the test went on after Seen:\n%s", knownbug.Env, tc.env, out)
		}
	}
}
