//go:build linux

package supervise

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/nodetest"
	"golang.org/x/sys/unix"
)

func TestOwnCgroupDir(t *testing.T) {
	hybrid := `25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`
	unified := `40 30 0:35 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
`
	nested := `40 30 0:35 /user.slice /mnt/my\040cg rw - cgroup2 cgroup2 rw
`
	for _, tc := range []struct {
		name, mountinfo, self, want string
	}{
		{"hybrid, root", hybrid, "4:memory:/x\n0::/\n", "/sys/fs/cgroup/unified"},
		{"unified", unified, "0::/user.slice/user-0.slice/session-3.scope\n", "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope"},
		{"mount of a subtree, escaped space", nested, "0::/user.slice/u1\n", "/mnt/my cg/u1"},
		{"outside the mounted subtree", nested, "0::/system.slice\n", ""},
		{"prefix is not a parent", nested, "0::/user.slicex\n", ""},
		{"no v2 line", unified, "4:memory:/x\n", ""},
		{"no v2 mount", "36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "0::/\n", ""},
	} {
		got, err := ownCgroupDir([]byte(tc.mountinfo), []byte(tc.self))
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: got %q, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

// needCgroup skips unless this process may make cgroups; where the suite
// says it must (DROVER_TEST_CGROUP=1, set by scripts/test as root on a
// machine with cgroup v2), it fails instead.
func needCgroup(t *testing.T) {
	t.Helper()
	c, err := newJobCgroup()
	if err != nil {
		if os.Getenv("DROVER_TEST_CGROUP") == "1" {
			t.Fatalf("no cgroup: %v", err)
		}
		t.Skipf("no cgroup: %v", err)
	}
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
}

// TestCgroupClose: a child's setsid-ed grandchild, orphaned to init (no
// subreaper here), is in the Supervisor's cgroup, and Close ends it and
// removes the cgroup.
func TestCgroupClose(t *testing.T) {
	needCgroup(t)
	s, err := New(Options{Cgroup: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.cgroup == nil {
		s.Close(0)
		t.Fatal("no cgroup although one can be made")
	}
	path := s.cgroup.path
	x := nodetest.NewExits(t, s)
	out := newFIFO(t)
	spec := helper(t, "escaper", "escape", "setsid", "exit")
	spec.Stdout = out.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	line := out.line()
	var gpid, pgid int
	if _, err := fmt.Sscanf(line, "gpid %d pgid %d", &gpid, &pgid); err != nil {
		t.Fatalf("grandchild said %q", line)
	}
	t.Cleanup(func() { _ = syscall.Kill(gpid, syscall.SIGKILL) }) // if the test fails
	if e := x.One("escaper"); !e.Success() {
		t.Fatalf("escaper: %+v", e)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", gpid))
	if err != nil {
		t.Fatal(err)
	}
	// With the memory controller on, processes sit in the leaf "procs".
	if own := strings.TrimSuffix(strings.TrimSpace(string(cg)), "/procs"); !strings.Contains(string(cg), "0::") || !strings.HasSuffix(own, "/"+filepath.Base(path)) {
		t.Fatalf("grandchild's cgroup %q, want %s", cg, path)
	}
	if err := s.Close(0); err != nil {
		t.Fatal(err)
	}
	waitDead(t, gpid)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still there after Close: %v", path, err)
	}
}

// TestCgroupKeeper kills, with SIGKILL, a process that runs a Supervisor
// with a keeper and a cgroup, whose child left a double-forked daemon in
// a session of its own: the keeper ends it through the cgroup (a keeper
// alone kills process groups, which the daemon left).
func TestCgroupKeeper(t *testing.T) {
	needCgroup(t)
	testHostKilled(t, "cgroup")
}

// TestGuardRemovesCgroup: the guarded process made a cgroup for its
// processes and is SIGKILLed; the guard kills everything below, its keeper
// too, and then removes the cgroup the keeper would have removed.
func TestGuardRemovesCgroup(t *testing.T) {
	needCgroup(t)
	out := newFIFO(t)
	cmd := exec.Command(testExe(t), "guard", "supervisor", out.Path, "cgroup")
	cmd.Env = helperEnvList()
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "pid ") {
		t.Fatalf("supervisor helper said %q", lines.Text())
	}
	var gpid int
	if _, err := fmt.Sscanf(out.line(), "gpid %d", &gpid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(gpid, syscall.SIGKILL) })
	host := slices.DeleteFunc(childrenOf(cmd.Process.Pid, nil), func(p int) bool { return p == gpid })
	if len(host) != 1 {
		t.Fatalf("guard %d has children %v besides %d, want one", cmd.Process.Pid, host, gpid)
	}
	own, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	made, _ := filepath.Glob(filepath.Join(own, jobCgroupPrefix(host[0])+"*"))
	if len(made) != 1 {
		t.Fatalf("cgroups of the supervisor helper: %v, want one", made)
	}
	if err := syscall.Kill(host[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() {
		t.Fatal("guard helper ended without a report")
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("guard helper: %v", err)
	}
	waitDead(t, gpid)
	if _, err := os.Stat(made[0]); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still there after the guard returned: %v", made[0], err)
	}
}

// TestCgroupRefused: when forking into the cgroup fails (here: its fd is
// not a cgroup's) but forking without succeeds, the start succeeds and
// later starts go without the cgroup.
func TestCgroupRefused(t *testing.T) {
	needCgroup(t)
	s := newSup(t, Options{Cgroup: true})
	if s.cgroup == nil {
		t.Fatal("no cgroup although one can be made")
	}
	notCgroup, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	real := s.cgroup.fd
	s.cgroup.fd = notCgroup
	t.Cleanup(func() { unix.Close(real) })
	x := nodetest.NewExits(t, s)
	for i := range 2 {
		name := fmt.Sprintf("true%d", i)
		if _, err := s.Start(Spec{Name: name, Args: []string{"/bin/true"}}); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		if e := x.One(name); !e.Success() {
			t.Fatalf("%s: %+v", name, e)
		}
	}
	if s.cgroup.on.Load() {
		t.Error("the cgroup is still used after a fork into it failed")
	}
}

// TestOrphanCgroupsRemoved: a job cgroup whose maker is gone is removed
// when the next one is made; one whose maker lives is not.
func TestOrphanCgroupsRemoved(t *testing.T) {
	needCgroup(t)
	own, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("/bin/true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(own, jobCgroupPrefix(gone.Process.Pid)+"1")
	alive := filepath.Join(own, jobCgroupPrefix(os.Getpid())+"1")
	for _, dir := range []string{orphan, alive} {
		t.Cleanup(func() { _ = removeCgroupTree(dir) })
		// An empty cgroup below does not keep an orphan.
		if err := os.MkdirAll(filepath.Join(dir, "inner"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c, err := newJobCgroup()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan cgroup %s still there: %v", orphan, err)
	}
	if _, err := os.Stat(alive); err != nil {
		t.Errorf("the cgroup of a live maker was removed: %v", err)
	}
}

// TestCgroupTreeRemoved: a job made cgroups below the jobs' cgroup (it
// ran drover itself, say) and put a process in the deepest; killing the
// job's cgroup killed whatever would have removed them. Both Close's
// removal and the keeper's remove the whole tree, the process killed.
func TestCgroupTreeRemoved(t *testing.T) {
	needCgroup(t)
	for _, by := range []string{"close", "keeper"} {
		t.Run(by, func(t *testing.T) {
			c, err := newJobCgroup()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = removeCgroupTree(c.path) }) // if the test fails
			deepest := filepath.Join(c.path, "drover-1-1", "deeper")
			if err := os.MkdirAll(deepest, 0o755); err != nil {
				t.Fatal(err)
			}
			// No Supervisor is open in this process now, so os/exec may be used.
			sleeper := exec.Command("sleep", "600")
			if err := sleeper.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan struct{})
			go func() { _ = sleeper.Wait(); close(waited) }()
			t.Cleanup(func() { _ = sleeper.Process.Kill(); <-waited })
			if err := os.WriteFile(filepath.Join(deepest, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0); err != nil {
				t.Fatal(err)
			}
			switch by {
			case "close":
				if err := c.remove(); err != nil {
					t.Fatal(err)
				}
			case "keeper":
				_ = unix.Close(c.fd)
				devNull, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(devNull)
				k, err := startKeeper(devNull, c.path, "")
				if err != nil {
					t.Fatal(err)
				}
				k.close() // stdin ends: the keeper kills and removes, then exits
				var ws unix.WaitStatus
				if _, err := unix.Wait4(k.pid, &ws, 0, nil); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-waited:
			case <-time.After(patience):
				t.Fatalf("the process in the nested cgroup %s still runs", deepest)
			}
			if _, err := os.Stat(c.path); !os.IsNotExist(err) {
				t.Errorf("cgroup %s still there: %v", c.path, err)
			}
		})
	}
}
