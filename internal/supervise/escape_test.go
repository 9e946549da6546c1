//go:build linux

package supervise

import (
	"fmt"
	"os"
	"testing"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// escapee starts name in helper mode "escape how after" and returns the
// pid and start time of the grandchild it left outside its group, checked
// to be running in another process group (and, for a daemon, to have been
// reparented to this process, the subreaper) unless the job exits at once.
func escapee(t *testing.T, s *Supervisor, name, how, after string) (gpid int, gstart uint64) {
	t.Helper()
	out := newFIFO(t)
	spec := helper(t, name, "escape", how, after)
	spec.Stdout = out.Path
	pid, err := s.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	var gpgid int
	if _, err := fmt.Sscanf(out.line(), "gpid %d pgid %d", &gpid, &gpgid); err != nil {
		t.Fatal(err)
	}
	if gpgid == pid {
		t.Fatalf("grandchild %d in the group of the job", gpid)
	}
	start, state, ppid, pgid, ok := procStart(gpid)
	if after == "exit" {
		// The job may have exited already, and its grandchild gone with it.
		return gpid, start
	}
	if !ok || state == 'Z' {
		t.Fatalf("grandchild %d not running (state %c)", gpid, state)
	}
	if pgid != gpgid {
		t.Fatalf("grandchild %d in group %d, says %d", gpid, pgid, gpgid)
	}
	if how == "daemon" && ppid != os.Getpid() {
		t.Fatalf("daemon %d has parent %d, not us (%d)", gpid, ppid, os.Getpid())
	}
	return gpid, start
}

// TestEscapees: a descendant that left the process group (setsid, or a
// double-forked daemon), and ignores SIGTERM, goes with its process when
// that is stopped, killed, or exits by itself.
func TestEscapees(t *testing.T) {
	for _, how := range []string{"setsid", "daemon"} {
		for _, end := range []string{"stop", "kill", "exit"} {
			t.Run(how+"/"+end, func(t *testing.T) {
				s := newSup(t, Options{Subreaper: true})
				x := nodetest.NewExits(t, s)
				after := "sleep"
				if end == "exit" {
					after = "exit"
				}
				gpid, gstart := escapee(t, s, "job", how, after)
				switch end {
				case "stop":
					if err := s.Stop("job", patience); err != nil {
						t.Fatal(err)
					}
				case "kill":
					if err := s.Kill("job"); err != nil {
						t.Fatal(err)
					}
				}
				e := x.One("job")
				if end == "exit" && !e.Success() {
					t.Fatalf("job: %v", e)
				}
				waitGone(t, gpid, gstart)
			})
		}
	}
}

// TestEscapeeAmongOthers: a setsid descendant seen in its process's tree
// is that process's own, so it goes when that process is stopped although
// another process that might have left it still runs.
func TestEscapeeAmongOthers(t *testing.T) {
	s := newSup(t, Options{Subreaper: true})
	x := nodetest.NewExits(t, s)
	if _, err := s.Start(helper(t, "other", "sleep")); err != nil {
		t.Fatal(err)
	}
	gpid, gstart := escapee(t, s, "job", "setsid", "sleep")
	if err := s.Stop("job", patience); err != nil {
		t.Fatal(err)
	}
	x.One("job")
	waitGone(t, gpid, gstart)
	if st, err := s.Poll("other"); err != nil || st[0].State != node.Running {
		t.Fatalf("other: %v %v", st, err)
	}
}

// TestOrphanWaitsForPossibleOwners: a daemon whose origin is lost is not
// killed while a process that was already running when it was forked
// still runs (it may be that one's); it goes when that one ends.
func TestOrphanWaitsForPossibleOwners(t *testing.T) {
	s := newSup(t, Options{Subreaper: true})
	x := nodetest.NewExits(t, s)
	if _, err := s.Start(helper(t, "other", "sleep")); err != nil {
		t.Fatal(err)
	}
	gpid, gstart := escapee(t, s, "job", "daemon", "exit")
	x.One("job")
	if _, state, ppid, _, ok := procStart(gpid); !ok || state == 'Z' {
		t.Fatalf("daemon %d killed while its possible owner runs", gpid)
	} else if ppid != os.Getpid() {
		t.Fatalf("daemon %d has parent %d, not us (%d)", gpid, ppid, os.Getpid())
	}
	if err := s.Kill("other"); err != nil {
		t.Fatal(err)
	}
	x.One("other")
	waitGone(t, gpid, gstart)
}

// TestCloseSweepsEscapees: after Close nothing that left a group is left,
// not even a zombie.
func TestCloseSweepsEscapees(t *testing.T) {
	s, err := New(Options{Subreaper: true})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	var starts []uint64
	for i, how := range []string{"setsid", "daemon", "daemon"} {
		after := "sleep"
		if i == 2 {
			after = "exit"
		}
		gpid, gstart := escapee(t, s, fmt.Sprint("job", i), how, after)
		pids, starts = append(pids, gpid), append(starts, gstart)
	}
	if err := s.Close(0); err != nil {
		t.Fatal(err)
	}
	for i, pid := range pids {
		if st, state, _, _, ok := procStart(pid); ok && st == starts[i] {
			t.Errorf("pid %d left after Close (state %c)", pid, state)
		}
	}
}
