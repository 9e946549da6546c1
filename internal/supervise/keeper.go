//go:build linux

package supervise

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// keeperScript kills, when its stdin ends, every process group still
// registered on it ("+ PGID" registers, "- PGID" forgets), then, when the
// Supervisor has a cgroup ($CG) that is still there, everything in it, and
// removes it with any cgroups made below it (deepest first). Without a
// cgroup, what left its group (a setsid daemon) is found by the mark in
// its environment ($TREE, see treeEnv), a few rounds in case one forks
// meanwhile. It ignores the signals a dying session sends, so it outlives
// the supervisor's process. A variable so that a test can record what the
// keeper is told.
var keeperScript = `trap '' HUP INT TERM QUIT PIPE
awk '$1 == "+" { g[$2] = 1; next } $1 == "-" { delete g[$2]; next } END { for (k in g) system("kill -9 -" k " 2>/dev/null") }'
i=0
while [ -n "$TREE" ] && [ $i -lt 5 ]; do
  found=$(grep -lsxzF "` + treeEnv + `=$TREE" /proc/[0-9]*/environ)
  [ -n "$found" ] || break
  for f in $found; do f=${f#/proc/}; kill -9 "${f%/environ}" 2>/dev/null; done
  i=$((i+1))
done
[ -n "$CG" ] && [ -d "$CG" ] || exit 0
echo 1 > "$CG/cgroup.kill"
i=0
until { find "$CG" -depth -type d -exec rmdir {} + ; [ ! -d "$CG" ]; } 2>/dev/null || [ $i -ge 500 ]; do sleep 0.01; i=$((i+1)); done`

// keeper is a small process outside the supervisor that kills what is
// left of every group when the supervisor's process dies, however it dies
// (SIGKILL included): Pdeathsig reaches only the direct children, not what
// they started in their groups. One pipe write per start and per exit of
// a group forked outside the Supervisor's cgroup; a cgroup it kills whole.
type keeper struct {
	mu  sync.Mutex
	w   *os.File
	pid int
	fd  int // pidfd of the keeper, -1 without pidfds
}

// treeEnv names the variable that marks every process a Supervisor with a
// keeper but no cgroup starts; its value (crypto/rand.Text) is the
// Supervisor's own, so one keeper never touches another's processes.
// Processes inherit it, so it follows even those that left their process
// group; a keeper finds them by it once the agent is gone and no guard is
// left to walk the tree.
const treeEnv = "DROVER_TREE"

// startKeeper starts the keeper of a Supervisor whose processes run in
// cgroup (or "") and carry token (or "") in their environment.
func startKeeper(devNull int, cgroup, token string) (*keeper, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start keeper: %w", err)
	}
	defer r.Close()
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", keeperScript}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=/usr/bin:/bin", "CG=" + cgroup, "TREE=" + token},
		Files: []uintptr{r.Fd(), uintptr(devNull), uintptr(devNull)},
		// Its own group, so that signals to ours do not reach it.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("start keeper: %w", err)
	}
	regMu.Lock()
	keepers[pid] = struct{}{}
	regMu.Unlock()
	// The keeper is our child and unreaped until the reaper sees it end,
	// so the pid is still the keeper's here.
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fd = -1
	}
	return &keeper{w: w, pid: pid, fd: fd}, nil
}

func (k *keeper) send(op byte, pgid int) {
	if k == nil {
		return
	}
	line := append([]byte{op, ' '}, strconv.Itoa(pgid)...)
	line = append(line, '\n')
	k.mu.Lock()
	defer k.mu.Unlock()
	_, _ = k.w.Write(line) // a dead keeper cannot be helped here
}

func (k *keeper) add(pgid int)    { k.send('+', pgid) }
func (k *keeper) remove(pgid int) { k.send('-', pgid) }

// close ends the keeper; with every group removed it kills nothing. It
// waits (boundedly) until the keeper has exited, so that a process that
// exits after Close leaves nothing running behind it: its guard would
// otherwise find the keeper still there and kill it.
func (k *keeper) close() {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.w.Close()
	if k.fd < 0 {
		return
	}
	fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
	for deadline := time.Now().Add(keeperPatience); ; {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != unix.EINTR {
			break
		}
	}
	_ = unix.Close(k.fd)
}

// keeperPatience bounds close's wait for the keeper: with no group left
// it exits at once.
const keeperPatience = time.Second
