package cli_test

// Staging through the real binary: what files: may name, what staging may
// never do to a source, that every way of stopping drover ends a staging
// that would go on for hours, and whose scratch root is used.

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/e2e"
	"github.com/drover-hpc/drover/internal/testbed"
)

// A files: entry that is a FIFO or a symlink to /dev/zero is refused
// before anything starts (exit 2, naming what it is); the probe had the
// agent write 39 GB in 25 s for /dev/zero, and hang for ever on the FIFO.
func TestStageDeviceOrFIFORefusedBeforeStart(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, want string }{
		{"devzero", "devzero: is a character device: only regular files can be staged"},
		{"fifo", "fifo: is a FIFO (named pipe): only regular files can be staged"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.Symlink("/dev/zero", filepath.Join(dir, "devzero")); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: in
    command: [cat, %s]
    files: [%s]
`, c.name, c.name))
			out := filepath.Join(dir, "out")
			r := drover(t, dir, "run", "--out", out, jobs)
			wantCode(t, r, 2)
			if !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "jobs.yaml:3:5: job in") {
				t.Errorf("stderr does not say %q at the job:\n%s", c.want, r)
			}
			wantNotExist(t, out)
		})
	}
}

// workdir "." with files: [data.txt] stages data.txt onto itself: it stays
// as it was (the probe found it truncated to 0 bytes, and a success).
func TestStageOntoItselfKeepsSource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := writeFile(t, dir, "data.txt", "precious data\n")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: self
    command: [cat, data.txt]
    workdir: "."
    files: [data.txt]
`)
	out := filepath.Join(dir, "out")
	r := drover(t, dir, "run", "--out", out, jobs)
	wantCode(t, r, 0)
	if got := readFile(t, data); got != "precious data\n" {
		t.Errorf("data.txt now holds %q", got)
	}
	if got := readFile(t, filepath.Join(out, "self", "stdout")); got != "precious data\n" {
		t.Errorf("the job read %q", got)
	}
}

// mountTmpfs mounts a small tmpfs on a new directory until the test ends.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// slowStaging makes a job dir whose job stages a regular file that takes
// hours to read (64 TiB of holes on a tiny tmpfs), and a TMPDIR (a tiny
// tmpfs: a copy written out rather than kept sparse fails at once, never
// fills a disk) for drover's scratch space.
func slowStaging(t *testing.T, timeout string) (dir, tmp, jobs string) {
	t.Helper()
	dir = mountTmpfs(t, "1m")
	f, err := os.Create(filepath.Join(dir, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 40); err != nil {
		t.Fatal(err)
	}
	f.Close()
	extra := ""
	if timeout != "" {
		extra = "\n    timeout: " + timeout
	}
	jobs = writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: slow
    command: ["true"]
    files: [huge]`+extra+"\n")
	return dir, mountTmpfs(t, "2m"), jobs
}

// waitStagingIn waits until a staging has begun under tmp (its temporary
// file is there), failing if p exits first.
func waitStagingIn(t *testing.T, p *e2e.Proc, tmp string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(tmp, "drover-*", "agent-*", "w*", ".drover-stage-*")); len(m) > 0 {
			return
		}
		if !p.Running() {
			t.Fatalf("drover exited before the staging began: %v\n%s", p.Err, p.Out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no staging began under %s within %v\n%s", tmp, backstop, p.Out)
}

// procsWithEnv lists the live processes whose environment holds kv: the
// drover processes of one test, told apart by their TMPDIR.
func procsWithEnv(kv string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, v := range strings.Split(string(env), "\x00") {
			if v == kv {
				if state, comm, ok := procState(pid); ok && state != 'Z' && state != 'X' {
					found = append(found, fmt.Sprintf("%d (%s)", pid, comm))
				}
				break
			}
		}
	}
	return found
}

// wantNoProcs waits (a backstop) until no process has kv in its
// environment.
func wantNoProcs(t *testing.T, kv string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		left := procsWithEnv(kv)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left with %s: %v", kv, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctrl-C, SIGTERM and a second Ctrl-C end drover run during a staging that
// would take hours; the instance is cancelled, the summary written, and no
// process or scratch dir is left. In the probe drover ignored all three
// for 26 minutes.
func TestStageInterruptedByRun(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		sigs []os.Signal
	}{
		{"SIGINT", []os.Signal{os.Interrupt}},
		{"SIGTERM", []os.Signal{syscall.SIGTERM}},
		{"second SIGINT", []os.Signal{os.Interrupt, os.Interrupt}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir, tmp, jobs := slowStaging(t, "")
			out := filepath.Join(t.TempDir(), "out")
			p := e2e.Start(t, droverBin, dir, []string{"TMPDIR=" + tmp}, "run", "--grace", "1h", "--out", out, jobs)
			waitStagingIn(t, p, tmp)
			for _, s := range c.sigs {
				if err := p.Cmd.Process.Signal(s); err != nil {
					t.Fatal(err)
				}
			}
			if code := p.Wait(t, backstop); code != 1 {
				t.Errorf("exit %d, want 1\n%s", code, p.Out)
			}
			s := readSummary(t, out)
			if in := s.instance(t, "slow"); in.State != "cancelled" {
				t.Errorf("instance %+v, want cancelled", in)
			}
			wantNoProcs(t, "TMPDIR="+tmp)
			if m, _ := filepath.Glob(filepath.Join(tmp, "drover-*", "*")); len(m) != 0 {
				t.Errorf("scratch left: %v", m)
			}
		})
	}
}

// The job's timeout bounds its staging: the instance fails saying so and
// drover run ends by itself (in the probe the timeout did not apply).
func TestStageTimeout(t *testing.T) {
	t.Parallel()
	dir, tmp, jobs := slowStaging(t, "1s")
	out := filepath.Join(t.TempDir(), "out")
	p := e2e.Start(t, droverBin, dir, []string{"TMPDIR=" + tmp}, "run", "--out", out, jobs)
	if code := p.Wait(t, backstop); code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, p.Out)
	}
	s := readSummary(t, out)
	in := s.instance(t, "slow")
	if in.State != "failed" || !strings.Contains(in.Error, "staging took longer than the timeout (1s)") {
		t.Errorf("instance %+v, want failed, staging past the timeout", in)
	}
	wantNoProcs(t, "TMPDIR="+tmp)
}

// With drover run SIGKILLed during a staging, its agent (which loses the
// manager) ends the staging and exits: in the probe it was re-parented to
// PID 1 and went on past --monitor-timeout.
func TestStageAgentEndsWhenRunKilled(t *testing.T) {
	t.Parallel()
	dir, tmp, jobs := slowStaging(t, "")
	out := filepath.Join(t.TempDir(), "out")
	p := e2e.Start(t, droverBin, dir, []string{"TMPDIR=" + tmp}, "run", "--monitor-timeout", "2s", "--out", out, jobs)
	waitStagingIn(t, p, tmp)
	if err := p.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait(t, backstop)
	wantNoProcs(t, "TMPDIR="+tmp)
	if m, _ := filepath.Glob(filepath.Join(tmp, "drover-*", "*")); len(m) != 0 {
		t.Errorf("scratch left: %v", m)
	}
}

// drover serve: cancel-all ends a submitted job's staging, and shutdown or
// SIGTERM ends serve with no process left; in the probe serve ignored all
// three.
func TestStageEndedByServe(t *testing.T) {
	t.Parallel()
	for _, verb := range []string{"cancel-all", "shutdown", "SIGTERM"} {
		t.Run(verb, func(t *testing.T) {
			t.Parallel()
			dir, tmp, jobs := slowStaging(t, "")
			home := filepath.Join(t.TempDir(), "home")
			p := e2e.Start(t, droverBin, dir, []string{"TMPDIR=" + tmp, "DROVER_HOME=" + home}, "serve")
			waitServeJSON(t, p, home)
			wantCode(t, droverHome(t, home, dir, "submit", jobs), 0)
			waitStagingIn(t, p, tmp)
			if verb == "cancel-all" {
				wantCode(t, droverHome(t, home, dir, "cancel-all"), 0)
				if jobs := waitJobsDone(t, home, dir); !strings.Contains(jobs, "cancelled") {
					t.Errorf("after cancel-all, drover jobs shows:\n%s", jobs)
				}
				if !p.Running() {
					t.Fatalf("serve exited on cancel-all\n%s", p.Out)
				}
			}
			if verb == "SIGTERM" {
				if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			} else {
				wantCode(t, droverHome(t, home, dir, "shutdown"), 0)
			}
			p.Wait(t, backstop)
			wantNoProcs(t, "TMPDIR="+tmp)
		})
	}
}

func waitServeJSON(t *testing.T, p *e2e.Proc, home string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(home, "serve.json")); err == nil {
			return
		}
		if !p.Running() {
			t.Fatalf("serve exited: %v\n%s", p.Err, p.Out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no serve.json within %v\n%s", backstop, p.Out)
}

// waitJobsDone waits until `drover jobs` shows no instance pending or
// running, and returns what it shows.
func waitJobsDone(t *testing.T, home, dir string) string {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		r := droverHome(t, home, dir, "jobs")
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "running") && !strings.Contains(r.stdout, "pending") && !strings.Contains(r.stdout, "starting") {
			return r.stdout
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs still not over after cancel-all:\n%s", r.stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A scratch root $TMPDIR/drover-<uid> made beforehand by another user
// (nobody), mode 0777, is not used: the work dir is elsewhere, nothing is
// put in it, and drover warns. In the probe its owner swapped an agent dir
// for a symlink and read the staged files.
func TestStageScratchRootOfAnotherUserNotUsed(t *testing.T) {
	t.Parallel()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	tmp := t.TempDir()
	theirs := filepath.Join(tmp, fmt.Sprintf("drover-%d", os.Getuid()))
	if err := os.Mkdir(theirs, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(theirs, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, uid, gid); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "input.txt", "secret\n")
	seen := filepath.Join(dir, "workdir.txt")
	jobs := writeFile(t, dir, "jobs.yaml", fmt.Sprintf(`
jobs:
  - name: where
    shell: 'cat input.txt && echo "$DROVER_WORKDIR" > %s'
    files: [input.txt]
`, seen))
	out := filepath.Join(dir, "out")
	p := e2e.Start(t, droverBin, dir, []string{"TMPDIR=" + tmp}, "run", "--out", out, jobs)
	if code := p.Wait(t, backstop); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.Out)
	}
	wd := strings.TrimSpace(readFile(t, seen))
	if wd == "" || strings.HasPrefix(wd, theirs+"/") {
		t.Errorf("the work dir %q is in the other user's %s", wd, theirs)
	}
	if entries, _ := os.ReadDir(theirs); len(entries) != 0 {
		t.Errorf("the other user's dir holds %v", entries)
	}
	if !strings.Contains(p.Out.String(), "scratch root not used") {
		t.Errorf("no warning:\n%s", p.Out)
	}
	if got := readFile(t, filepath.Join(out, "where", "stdout")); got != "secret\n" {
		t.Errorf("the job read %q", got)
	}
	if m, _ := filepath.Glob(filepath.Join(tmp, fmt.Sprintf("drover-%d-*", os.Getuid()))); len(m) != 0 {
		t.Errorf("the fresh scratch root is left: %v", m)
	}
}

// drover serve refuses a DROVER_HOME of another user's.
func TestServeRefusesAnotherUsersHome(t *testing.T) {
	t.Parallel()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	home := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(home, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	r := droverHome(t, home, t.TempDir(), "serve")
	if r.code == 0 || !strings.Contains(r.stderr, "owned by another user") {
		t.Errorf("serve with another user's DROVER_HOME:\n%s", r)
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Errorf("serve wrote into it: %v", entries)
	}
}

// Over ssh (the bed; an agent that does not share our files, so the
// manager reads and sends them): the job's timeout ends a staging that
// would take hours, a FIFO is refused before anything starts, and no
// agent is left on the host.
func TestSSHStageTimeoutAndFIFO(t *testing.T) {
	bed := testbed.Require(t)
	host := bed.Names()[0]
	dir, _, jobs := slowStaging(t, "2s")
	out := filepath.Join(t.TempDir(), "out")
	r := drover(t, dir, "run", "--hosts", host, "--ssh-config", bed.SSHConfig, "--out", out, "--progress", "none", jobs)
	wantCode(t, r, 1)
	in := readSummary(t, out).instance(t, "slow")
	if in.State != "failed" || !strings.Contains(in.Error, "staging took longer than the timeout (2s)") {
		t.Errorf("instance %+v, want failed, staging past the timeout\n%s", in, r)
	}
	noneLeft(t, bed, []string{host}, ourAgents(t))

	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifoJobs := writeFile(t, dir, "fifo.yaml", "jobs:\n  - name: f\n    command: [\"true\"]\n    files: [fifo]\n")
	out2 := filepath.Join(t.TempDir(), "out2")
	r = drover(t, dir, "run", "--hosts", host, "--ssh-config", bed.SSHConfig, "--out", out2, "--progress", "none", fifoJobs)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "fifo: is a FIFO (named pipe): only regular files can be staged") {
		t.Errorf("stderr:\n%s", r)
	}
	wantNotExist(t, out2)
}
