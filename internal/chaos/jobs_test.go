package chaos_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// A job that forks a daemon into a session of its own (setsid) and exits:
// "no orphans" means that daemon must not survive the run on any host.
func TestSetsidDaemon(t *testing.T) {
	bed := testbed.Require(t)
	const n = 6
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("setsid")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	// The daemon keeps the job's stdout and stderr open, as a careless
	// daemon does.
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s3\n    shell: %q\n    repeat: %d\n",
		"setsid "+sleep+" 1000 & echo forked", n))

	d := startRun(t, bed, dir, nil, "--grace", "1s", "--out", out, job)
	const within = 90 * time.Second
	select {
	case <-d.Done:
	case <-time.After(within):
		stuck := eventsSoFar(out)
		killLeftovers(t, bed, marker)
		code := d.Wait(t, time.Minute)
		t.Fatalf("drover run did not end within %v when its jobs left a setsid daemon holding their stdout "+
			"(it ended, exit %d, only once the daemons were killed by the test); events so far: %v", within, code, stuck)
	}
	if code := d.Wait(t, time.Minute); code != 0 {
		t.Errorf("drover run exited %d, want 0\n%s", code, tail(d.Out.String()))
	}
	a := checkAccounting(t, out, instanceNames("s3", n))
	hosts := map[string]bool{}
	for name, f := range a.finals {
		hosts[f.Node] = true
		if f.Event != "finished" || f.ExitCode == nil || *f.ExitCode != 0 {
			t.Errorf("%s: %v, want exit 0", name, f)
		}
		if data, err := os.ReadFile(filepath.Join(out, name, "stdout")); err != nil || string(data) != "forked\n" {
			t.Errorf("%s stdout: %q, %v", name, data, err)
		}
	}
	t.Logf("instances ran on %d hosts; run took %v", len(hosts), d.Exited.Sub(d.Started).Round(time.Millisecond))
	for h, ps := range leftovers(t, bed, agentPattern(), 10*time.Second) {
		t.Errorf("on %s, drover agent still running after the run: %q", h, ps)
	}
	left := leftovers(t, bed, pattern(marker), 10*time.Second)
	if len(left) > 0 {
		var b strings.Builder
		for h, ps := range left {
			fmt.Fprintf(&b, " %s: %q;", h, ps)
		}
		t.Errorf("setsid daemons started by %d jobs survive the run and their agents (10s after drover exited):%s",
			n, b.String())
	}
}

// A job that ignores SIGTERM, with a timeout: at the timeout it gets
// SIGTERM, ignores it, and is SIGKILLed after --grace; the instance ends
// failed, "timed out".
func TestTimeoutIgnoresSIGTERM(t *testing.T) {
	bed := testbed.Require(t)
	const n, timeout, grace = 3, 2 * time.Second, 2 * time.Second
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("term")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s4\n    shell: %q\n    repeat: %d\n    timeout: %s\n",
		"trap '' TERM; "+sleep+" 60", n, timeout))

	d := startRun(t, bed, dir, nil, "--grace", grace.String(), "--out", out, job)
	if code := d.Wait(t, backstop); code != 1 {
		t.Errorf("drover run exited %d, want 1\n%s", code, tail(d.Out.String()))
	}
	a := checkAccounting(t, out, instanceNames("s4", n))
	started := map[string]event{}
	for _, e := range a.evs {
		if e.Event == "started" {
			started[e.Job] = e
		}
	}
	var took []string
	for name, f := range a.finals {
		if f.Event != "finished" || f.Signal != "SIGKILL" || !strings.Contains(f.Error, "timed out") {
			t.Errorf("%s: final %v, want finished by SIGKILL, timed out", name, f)
		}
		if in := a.entries[name]; in.State != "failed" || !strings.Contains(in.Error, "timed out") || in.Signal != "SIGKILL" {
			t.Errorf("%s in summary: %+v, want failed, SIGKILL, timed out", name, in)
		}
		s, ok := started[name]
		if !ok {
			continue
		}
		dt := f.Time.Sub(s.Time)
		took = append(took, fmt.Sprintf("%s on %s %v", name, f.Node, dt.Round(time.Millisecond)))
		if dt < timeout+grace-500*time.Millisecond || dt > timeout+grace+slack {
			t.Errorf("%s: started to final %v, want about timeout %v + grace %v", name, dt, timeout, grace)
		}
	}
	t.Logf("MEASURE: timeout %v + grace %v; started to SIGKILL report: %s", timeout, grace, strings.Join(took, ", "))
	noneLeft(t, bed, marker)
}

// A job on a remote host writes 1 GiB to stdout: it arrives whole in
// DIR/<inst>/stdout, and the manager's memory stays bounded.
func TestGigabyteStdout(t *testing.T) {
	bed := testbed.Require(t)
	const size, maxRSS, host = 1 << 30, 200 << 20, "h2"
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("gig")
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s5\n    shell: %q\n    node: %s\n",
		": "+marker+"; head -c 1G /dev/zero", host))

	d := startRun(t, bed, dir, nil, "--out", out, job)
	pid := d.Cmd.Process.Pid
	var peak int64
	samples := 0
	deadline := time.After(backstop)
sample:
	for {
		if v, ok := vmHWM(pid); ok {
			peak = max(peak, v)
			samples++
		}
		select {
		case <-d.Done:
			break sample
		case <-deadline:
			break sample
		case <-time.After(50 * time.Millisecond):
		}
	}
	if code := d.Wait(t, time.Minute); code != 0 {
		t.Errorf("drover run exited %d, want 0\n%s", code, tail(d.Out.String()))
	}
	elapsed := d.Exited.Sub(d.Started)
	a := checkAccounting(t, out, []string{"s5"})
	if f := a.finals["s5"]; f.Event != "finished" || f.ExitCode == nil || *f.ExitCode != 0 || f.Node != host {
		t.Errorf("s5: %v, want exit 0 on %s", f, host)
	}
	path := filepath.Join(out, "s5", "stdout")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Errorf("%s is %d bytes, want %d", path, st.Size(), size)
	} else if f, err := os.Open(path); err != nil {
		t.Error(err)
	} else {
		zeros, err := isZeros(f)
		f.Close()
		if err != nil || !zeros {
			t.Errorf("%s is not all zero bytes (%v)", path, err)
		}
	}
	t.Logf("MEASURE: 1 GiB stdout from %s over ssh: run took %v (%.0f MB/s); manager peak RSS (VmHWM, %d samples) %.1f MiB",
		host, elapsed.Round(time.Millisecond), float64(size)/1e6/elapsed.Seconds(), samples, float64(peak)/(1<<20))
	if peak == 0 {
		t.Errorf("could not read the manager's VmHWM")
	} else if peak > maxRSS {
		t.Errorf("manager peak RSS %d MiB, want under %d MiB", peak>>20, maxRSS>>20)
	}
	noneLeft(t, bed, marker)
}

// A host whose agent scratch directory (os.TempDir(), so $TMPDIR) is on a
// read-only file system. Arranged without touching drover: an ssh wrapper
// first in drover's PATH runs the remote command for that host in a
// private mount namespace where $TMPDIR is a read-only bind mount. The
// agent cannot make its scratch dir: that node is reported not used, the
// run goes on with the others and succeeds, and nothing is left behind.
func TestReadOnlyScratch(t *testing.T) {
	bed := testbed.Require(t)
	const n, victim = 6, "h3"
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	marker := newMarker("rosc")
	sleep := markedSleep(t, dir, marker)
	t.Cleanup(func() { killLeftovers(t, bed, marker) })
	ro := filepath.Join(dir, "ro-scratch")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	wrap := filepath.Join(dir, "wrapbin")
	if err := os.Mkdir(wrap, 0o755); err != nil {
		t.Fatal(err)
	}
	// The remote command is ssh's last argument, the host the one before.
	writeFile(t, wrap, "ssh", fmt.Sprintf(`#!/bin/bash
args=("$@")
n=${#args[@]}
if [ "$n" -ge 2 ] && [ "${args[n-2]}" = %[1]s ]; then
  args[n-1]="unshare -m --propagation private sh -c 'mount --bind %[2]s %[2]s && mount -o remount,bind,ro %[2]s && export TMPDIR=%[2]s && exec \"\$0\" \"\$@\"' ${args[n-1]}"
fi
exec /usr/bin/ssh "${args[@]}"
`, victim, ro))
	if err := os.Chmod(filepath.Join(wrap, "ssh"), 0o755); err != nil {
		t.Fatal(err)
	}
	job := writeFile(t, dir, "jobs.yaml", fmt.Sprintf("jobs:\n  - name: s6\n    shell: %q\n    repeat: %d\n",
		sleep+" 0.5; touch \"$DROVER_WORKDIR/x\"; echo ok", n))

	d := startRun(t, bed, dir, []string{"PATH=" + wrap + ":" + os.Getenv("PATH")}, "--out", out, job)
	code := d.Wait(t, backstop)
	stderr := d.Out.String()
	if code != 0 {
		t.Errorf("drover run exited %d, want 0 (the other hosts do the work)\n%s", code, tail(stderr))
	}
	if !strings.Contains(stderr, victim) || !strings.Contains(stderr, "read-only file system") {
		t.Errorf("drover's log does not name %s and its read-only scratch:\n%s", victim, tail(stderr))
	}
	a := checkAccounting(t, out, instanceNames("s6", n))
	used := map[string]int{}
	for name, f := range a.finals {
		used[f.Node]++
		if f.Event != "finished" || f.ExitCode == nil || *f.ExitCode != 0 {
			t.Errorf("%s: %v, want exit 0", name, f)
		}
	}
	if used[victim] > 0 {
		t.Errorf("instances ran on %s, whose scratch is read-only: %v", victim, used)
	}
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, victim) && strings.Contains(line, "read-only") {
			t.Logf("drover: %s", strings.TrimSpace(line))
			break
		}
	}
	t.Logf("instances per host: %v", used)
	if entries, err := os.ReadDir(ro); err != nil || len(entries) != 0 {
		t.Errorf("the read-only scratch dir was written to: %v %v", entries, err)
	}
	noneLeft(t, bed, marker)
}
