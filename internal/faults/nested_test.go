package faults_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A job that runs drover itself, stopped by its timeout: the inner agent
// made a cgroup below the job's and is killed with everything else in the
// job's cgroup, before it can remove its own. Nothing may be left: no
// process of the inner run and neither cgroup.
func TestNestedRunTimedOut(t *testing.T) {
	if os.Getenv("DROVER_TEST_CGROUP") != "1" {
		t.Skip("needs a cgroup for the agent: DROVER_TEST_CGROUP=1 (scripts/test sets it as root with cgroup v2)")
	}
	t.Parallel()
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	if err := os.Mkdir(pids, 0o755); err != nil {
		t.Fatal(err)
	}
	// Not exec: the shell, the job's leader, dies of the timeout's SIGTERM
	// at once, and with the leader gone its whole tree is SIGKILLed while
	// the inner run is still stopping.
	inner := fmt.Sprintf("%s run --progress none --out %s -- sh -c '%s'",
		droverBin, filepath.Join(dir, "inner"), sleeperScript(pids, "0"))
	jobs := filepath.Join(dir, "jobs.yaml")
	if err := os.WriteFile(jobs, fmt.Appendf(nil, "jobs:\n  - name: outer\n    shell: %q\n    timeout: 3s\n", inner), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDrover(t, dir, nil, "run", "--progress", "none", "--grace", "1s", "--out", filepath.Join(dir, "out"), jobs)
	procs := waitJobs(t, d, pids, 1)
	innerCgroup := jobCgroup(t, procs[0].pid, true)
	outerCgroup := filepath.Dir(innerCgroup)
	if innerCgroup == "" || !strings.HasPrefix(filepath.Base(outerCgroup), "drover-") {
		t.Fatalf("the inner run's job is in cgroup %q, want one below the outer run's job cgroup", innerCgroup)
	}

	if code := d.Wait(t, backstop); code != 1 {
		t.Errorf("drover run exited %d, want 1 (the outer job timed out)\n%s", code, d.Out)
	}
	if alive, _ := waitGone(procs, 2*time.Second); len(alive) > 0 {
		t.Errorf("processes of the inner run still alive 2s after drover exited: %v", alive)
	}
	waitCgroupGone(t, outerCgroup)
	if out := d.Out.String(); strings.Contains(out, "agent guard") {
		t.Errorf("the agent left processes for its guard to kill:\n%s", out)
	}
}
