package cli_test

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// At the default level a failing instance is told by the summary, not by a
// log record; --log-level debug shows the records.
func TestRunQuietAtDefaultLevel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	jobs := writeFile(t, dir, "jobs.yaml", `jobs:
  - name: broken
    shell: "exit 3"
  - name: fine
    command: ["true"]
`)
	record := regexp.MustCompile(`(?m)(^|\s)(time|level|msg)=`)

	r := drover(t, dir, "run", "--progress", "plain", "--out", filepath.Join(dir, "quiet"), jobs)
	wantCode(t, r, 1)
	if record.MatchString(r.stderr) {
		t.Errorf("default level printed log records:\n%s", r.stderr)
	}
	for _, w := range []string{"2 instances: 1 succeeded, 1 failed", "broken failed, exit 3"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks the summary's %q:\n%s", w, r.stderr)
		}
	}

	r = drover(t, dir, "--log-level", "debug", "run", "--progress", "plain", "--out", filepath.Join(dir, "loud"), jobs)
	wantCode(t, r, 1)
	for _, w := range []string{"level=INFO", `msg="broken failed, exit 3"`} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("--log-level debug: stderr lacks %q:\n%s", w, r.stderr)
		}
	}
}
