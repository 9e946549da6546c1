//go:build linux

package supervise

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Guard runs the program at path as a child of this process, which it
// first makes a child subreaper, and waits for it. Once the child has
// ended, however it ended, Guard kills and reaps every process still below
// this one, removes the cgroups the child made for its processes (see
// Options.Cgroup), and returns the child's wait status and how many it
// killed.
//
// This is what makes "nothing outlives the agent" hold when the agent
// itself is SIGKILLed (say by the OOM killer): its keeper kills its jobs'
// process groups, but a descendant that left its group with setsid, or
// was orphaned to the agent (a subreaper) before it died, would go to
// init. Below a living subreaper nothing can escape: an orphan is
// reparented to the nearest subreaper above it, which is this process.
//
// SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to this process are passed on
// to the child, so the guard is transparent to whoever started it.
func Guard(log *slog.Logger, path string, argv, env []string) (status unix.WaitStatus, killed int, err error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, 0, fmt.Errorf("guard: become a subreaper: %w", err)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2},
		// If the guard is killed, the child goes too (its keeper then
		// kills its jobs' groups).
		Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("guard: start %s: %w", path, err)
	}
	done := make(chan struct{})
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case s := <-sigs:
				_ = unix.Kill(pid, s.(syscall.Signal))
			case <-done:
				return
			}
		}
	}()
	for {
		_, err = unix.Wait4(pid, &status, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	close(done)
	<-forwarded
	if err != nil {
		return 0, 0, fmt.Errorf("guard: wait for %s: %w", path, err)
	}
	killed = killBelow()
	if err := removeCgroupsOf(pid); err != nil {
		log.Warn("guard: a cgroup of the processes is left", "err", err)
	}
	return status, killed, nil
}

// killBelow kills every descendant of this process and reaps them all,
// returning how many it killed. Each round walks the tree (pinning each
// process with a pidfd) and kills what it found; what a dying process
// forked meanwhile is orphaned to this process and found next round.
func killBelow() int {
	killed := 0
	// Bounded: a fork bomb must not keep the guard here for ever.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		found := walk(selfPid, map[int]bool{}, nil)
		for i := range found {
			found[i].signal(unix.SIGKILL)
			found[i].close()
		}
		killed += len(found)
		var ws unix.WaitStatus
		flags := 0
		if len(found) == 0 {
			flags = unix.WNOHANG // only zombies may be left: reap them
		}
		_, err := unix.Wait4(-1, &ws, flags, nil)
		switch {
		case err == unix.ECHILD:
			return killed
		case err == nil || err == unix.EINTR:
			for { // reap whatever else is ready
				if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
		}
		if len(found) == 0 && len(childrenOf(selfPid, nil)) > 0 {
			// A child not yet seen dead nor alive by the walk (it is
			// between states): give it a moment.
			time.Sleep(time.Millisecond)
		}
	}
	return killed
}
