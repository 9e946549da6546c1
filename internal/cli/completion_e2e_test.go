package cli_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// completions runs drover's hidden __complete command, as the shell
// scripts do, and returns the values offered and the directive line.
func completions(t *testing.T, home string, args ...string) ([]string, string) {
	t.Helper()
	r := droverHome(t, home, t.TempDir(), append([]string{"__complete"}, args...)...)
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], ":") {
		t.Fatalf("__complete %q: no directive line:\n%s", args, r)
	}
	var values []string
	for _, l := range lines[:len(lines)-1] {
		v, _, _ := strings.Cut(l, "\t") // a value may carry a description
		values = append(values, v)
	}
	return values, lines[len(lines)-1]
}

func wantCompletions(t *testing.T, home string, want []string, args ...string) {
	t.Helper()
	got, directive := completions(t, home, args...)
	if !slices.Equal(got, want) {
		t.Errorf("completing %q: got %q, want %q", args, got, want)
	}
	if directive != ":4" { // no file names either
		t.Errorf("completing %q: directive %s, want :4 (no file completion)", args, directive)
	}
}

func TestCompletionOfFlagValues(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home") // no serve: fixed values need none
	wantCompletions(t, home, []string{"local", "ssh", "slurm"}, "run", "--launcher", "")
	wantCompletions(t, home, []string{"slurm"}, "serve", "--launcher", "sl")
	wantCompletions(t, home, []string{"debug", "info", "warn", "error"}, "run", "--log-level", "")
	wantCompletions(t, home, []string{"debug"}, "--log-level", "d")
	wantCompletions(t, home, []string{"auto", "plain", "none"}, "run", "--progress", "")
	wantCompletions(t, home, []string{"debug", "info", "warn", "error"}, "log-level", "--node", "n", "")
	// Without a serve, names complete to nothing, silently.
	r := droverHome(t, home, t.TempDir(), "__complete", "stop", "")
	wantCode(t, r, 0)
	if r.stdout != ":4\n" || strings.Contains(r.stderr, "drover") {
		t.Errorf("completing a name without a serve:\n%s", r)
	}
}

func TestCompletionOfNamesFromServe(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	startServe(t, home)
	nodes, _ := completions(t, home, "start", "--node", "")
	if len(nodes) != 1 || nodes[0] == "" {
		t.Fatalf("completing --node: %q, want the one node", nodes)
	}
	node := nodes[0]
	wantCompletions(t, home, []string{node}, "env", "get", "--node", node[:1])
	wantCompletions(t, home, nil, "start", "--node", node+"x")

	for _, name := range []string{"sim-a", "sim-b", "other"} {
		wantCode(t, droverHome(t, home, work, "start", "--node", node, "--name", name, "--", "sleep", "300"), 0)
	}
	t.Cleanup(func() { droverHome(t, home, work, "cancel-all", "--grace", "0s") })
	wantCode(t, droverHome(t, home, work, "kill", "other"), 0)
	eventually(t, func() string {
		if r := droverHome(t, home, work, "poll", "other"); !strings.Contains(r.stdout, "other") || strings.Contains(r.stdout, "running") {
			return "other still running: " + r.stdout
		}
		return ""
	})

	wantCompletions(t, home, []string{"sim-a", "sim-b"}, "stop", "")
	wantCompletions(t, home, []string{"sim-a", "sim-b"}, "send", "sim")
	wantCompletions(t, home, nil, "send", "sim-a", "") // the TEXT is the user's
	wantCompletions(t, home, []string{"other"}, "purge", "")
	wantCompletions(t, home, []string{"other", "sim-a", "sim-b"}, "poll", "")
	wantCompletions(t, home, []string{"other", "sim-b"}, "logs", "sim-a", "")
	wantCompletions(t, home, []string{"sim-b"}, "kill", "sim-b")
}
