//go:build linux

package supervise

import (
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Descendants that leave their process group
//
// A process group misses every descendant that called setsid or setpgid,
// and, once its parent has died, the kernel no longer shows where it came
// from. Two things make up for it:
//
//   - Members: whenever a process is signalled (Stop, Kill, the SIGKILL
//     after the grace), its whole tree is walked first through
//     /proc/PID/task/TID/children, every descendant is pinned with a pidfd
//     and signalled along with the group, and the pidfds are kept until the
//     leader exits, when each of them gets SIGKILL.
//
//   - Orphans: with Options.Subreaper this process is a child subreaper, so
//     a descendant whose parent dies is reparented to it instead of to init.
//     The kernel reparents the children of a dying process before it turns
//     into a zombie, so even the zombie leader the reaper peeks at has no
//     children left to read: ancestry is gone by then. An orphan (a child
//     of this process that no Supervisor started) is therefore attributed
//     when a process ends (is signalled, or its leader exits) as follows:
//     a recorded member belongs to its process; one in the process group of
//     a running process belongs to it; otherwise it may belong to any
//     process still running that started no later than it did (start times
//     in clock ticks since boot, as /proc shows them), and it is killed as
//     soon as there is none left. An orphan is never killed while a process
//     that may own it runs; one of a process that ended may live until the
//     last process that was running when it was forked ends. Close kills
//     every orphan no running process may own, and waits for them.
//
// Every signal to a descendant goes through a pidfd opened before its
// parent is checked, so a pid that was reused meanwhile is never hit.

// userHZ is the unit of the start times in /proc/PID/stat.
const userHZ = 100

var (
	// subreaper: Supervisors with Options.Subreaper open; guarded by
	// reaper.mu. subreaperOn mirrors subreaper > 0.
	subreaper   int
	subreaperOn atomic.Bool

	// forking counts spawns between fork and register: their orphans
	// cannot be attributed yet, so none is killed by the time rule then.
	forking atomic.Int32

	// Guarded by regMu, like registry.
	members = map[int]memberRef{} // recorded descendants, by pid
	keepers = map[int]struct{}{}  // keeper pids: children that are not orphans

	selfPid          = os.Getpid()
	selfChildrenPath = "/proc/" + strconv.Itoa(selfPid) + "/task/" + strconv.Itoa(selfPid) + "/children"
)

type memberRef struct {
	p     *proc
	start uint64
}

// target is a process found by a walk, pinned by a pidfd (fd -1 when the
// kernel has no pidfd_open: then it is signalled by pid).
type target struct {
	pid    int
	ppid   int
	pgid   int
	start  uint64 // clock ticks since boot
	fd     int
	zombie bool // when pinned
}

func (t *target) signal(sig unix.Signal) {
	if t.fd >= 0 {
		_ = unix.PidfdSendSignal(t.fd, sig, nil, 0)
		return
	}
	_ = unix.Kill(t.pid, sig)
}

func (t *target) close() {
	if t.fd >= 0 {
		_ = unix.Close(t.fd)
		t.fd = -1
	}
}

// bootTicks is now in the clock of the start times in /proc/PID/stat.
func bootTicks() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0 // never: 0 makes every orphan a candidate of this process
	}
	return uint64(ts.Sec)*userHZ + uint64(ts.Nsec)/(1e9/userHZ)
}

// readProc reads a small /proc file into buf (grown as needed).
func readProc(path string, buf []byte) ([]byte, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return buf[:0], false
	}
	defer unix.Close(fd)
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf[:0], false
		}
		if n == 0 {
			return buf, true
		}
		buf = buf[:len(buf)+n]
	}
}

// parsePids appends the space-separated pids of a children file to out.
func parsePids(b []byte, out []int) []int {
	n, in := 0, false
	for _, c := range b {
		if c >= '0' && c <= '9' {
			n, in = n*10+int(c-'0'), true
			continue
		}
		if in {
			out = append(out, n)
		}
		n, in = 0, false
	}
	if in {
		out = append(out, n)
	}
	return out
}

// childrenOf appends the children of every thread of pid to out.
func childrenOf(pid int, out []int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	var buf [256]byte
	for _, e := range ents {
		if b, ok := readProc(dir+e.Name()+"/children", buf[:0]); ok {
			out = parsePids(b, out)
		}
	}
	return out
}

type procStat struct {
	state byte
	ppid  int
	pgid  int
	start uint64
}

// readStat reads the fields of /proc/PID/stat that matter here.
func readStat(pid int) (procStat, bool) {
	var buf [512]byte
	b, ok := readProc("/proc/"+strconv.Itoa(pid)+"/stat", buf[:0])
	if !ok {
		return procStat{}, false
	}
	// pid (comm) state ppid pgrp session ... starttime is field 22; comm
	// may hold anything, so the fields start after the last ')'.
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	if i < 0 {
		return procStat{}, false
	}
	var st procStat
	field := 3
	var n uint64
	in := false
	for _, c := range b[i+1:] {
		if c == ' ' || c == '\n' {
			if in {
				switch field {
				case 4:
					st.ppid = int(n)
				case 5:
					st.pgid = int(n)
				case 22:
					st.start = n
					return st, true
				}
				field++
			}
			n, in = 0, false
			continue
		}
		if field == 3 {
			st.state, in = c, true
			continue
		}
		if c >= '0' && c <= '9' {
			n = n*10 + uint64(c-'0')
		}
		in = true
	}
	return procStat{}, false
}

// pin opens a pidfd for pid and checks, after opening it, that pid is a
// child of ppid, live unless zombieOK: a pid reused before the pidfd was
// opened would fail the check, and the pidfd keeps later reuse away. (The
// main thread of a process shows as a zombie while its other threads are
// still exiting; only then can it be reaped.)
func pin(pid, ppid int, zombieOK bool) (target, bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch err {
	case nil:
	case unix.ENOSYS:
		fd = -1
	default:
		return target{}, false
	}
	st, ok := readStat(pid)
	if !ok || st.ppid != ppid || !zombieOK && (st.state == 'Z' || st.state == 'X') {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return target{}, false
	}
	zombie := st.state == 'Z' || st.state == 'X'
	return target{pid: pid, ppid: ppid, pgid: st.pgid, start: st.start, fd: fd, zombie: zombie}, true
}

// maxWalk bounds one walk (a fork bomb must not make it endless).
const maxWalk = 1 << 15

// walk appends the live descendants of root (not root itself) that are not
// in seen, pinned, to out, parents before children.
func walk(root int, seen map[int]bool, out []target) []target {
	queue := []int{root}
	var kids []int
	for len(queue) > 0 && len(out) < maxWalk {
		pid := queue[0]
		queue = queue[1:]
		kids = childrenOf(pid, kids[:0])
		for _, c := range kids {
			if seen[c] {
				continue
			}
			t, ok := pin(c, pid, false)
			if !ok {
				continue
			}
			seen[c] = true
			out = append(out, t)
			queue = append(queue, c)
		}
	}
	return out
}

// collectLocked walks the tree of the running process p and records every
// descendant not yet known as a member. Called with s.mu held, so the
// leader is not reaped meanwhile.
func (s *Supervisor) collectLocked(p *proc) {
	seen := make(map[int]bool, len(p.members)+1)
	for _, m := range p.members {
		seen[m.pid] = true
	}
	n := len(p.members)
	p.members = walk(p.pid, seen, p.members)
	if len(p.members) == n {
		return
	}
	regMu.Lock()
	for _, m := range p.members[n:] {
		members[m.pid] = memberRef{p, m.start}
	}
	regMu.Unlock()
}

// killMembersLocked sends SIGKILL to every recorded member of p, whose
// leader has exited, and forgets them.
func (s *Supervisor) killMembersLocked(p *proc) {
	if len(p.members) == 0 {
		return
	}
	regMu.Lock()
	for i := range p.members {
		m := &p.members[i]
		if r, ok := members[m.pid]; ok && r.p == p {
			delete(members, m.pid)
		}
	}
	regMu.Unlock()
	for i := range p.members {
		p.members[i].signal(unix.SIGKILL)
		p.members[i].close()
	}
	p.members = nil
}

// orphans returns the children of this process that no Supervisor started
// and that are not keepers: with a subreaper, orphaned descendants. With
// allThreads false it reads only the main thread's children, which is
// where the kernel puts the orphans it reparents.
func orphans(allThreads bool) []int {
	var pids []int
	if allThreads {
		pids = childrenOf(selfPid, nil)
	} else {
		var buf [256]byte
		b, ok := readProc(selfChildrenPath, buf[:0])
		if !ok || len(b) == 0 {
			return nil
		}
		pids = parsePids(b, nil)
	}
	if len(pids) == 0 {
		return nil
	}
	regMu.Lock()
	defer regMu.Unlock()
	out := pids[:0]
	for _, pid := range pids {
		if _, ok := registry[pid]; ok {
			continue
		}
		if _, ok := keepers[pid]; ok {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// signalOrphans signals, with their trees, the orphans of this process
// that belong to ending (see the top of this file), or, with ending nil,
// that no running process may own. It returns the signalled targets when
// keep is set (the caller closes them), else closes them itself.
func signalOrphans(ending *proc, sig unix.Signal, allThreads, keep bool) []target {
	pids := orphans(allThreads)
	if len(pids) == 0 {
		return nil
	}
	roots := make([]target, 0, len(pids))
	for _, pid := range pids {
		// Those Close waits for (keep) may be exiting already.
		if t, ok := pin(pid, selfPid, keep); ok {
			roots = append(roots, t)
		}
	}
	n := 0
	regMu.Lock()
	for _, r := range roots {
		if owned(r, ending) {
			roots[n] = r
			n++
		} else {
			r.close()
		}
	}
	regMu.Unlock()
	roots = roots[:n]
	if n == 0 {
		return nil
	}
	seen := make(map[int]bool, n)
	for _, r := range roots {
		seen[r.pid] = true
	}
	all := roots
	for _, r := range roots {
		all = walk(r.pid, seen, all)
	}
	// Children first: they are all pinned, so the order only keeps a
	// parent from reacting to its child's death before its own.
	for i := len(all) - 1; i >= 0; i-- {
		all[i].signal(sig)
	}
	if keep {
		return all
	}
	for i := range all {
		all[i].close()
	}
	return nil
}

// owned tells whether the orphan r goes with ending (nil: with no one).
// Called with regMu held.
func owned(r target, ending *proc) bool {
	if m, ok := members[r.pid]; ok && m.start == r.start {
		return m.p == ending || !isRegistered(m.p)
	}
	if e, ok := registry[r.pgid]; ok {
		return e.p == ending
	}
	if ending != nil && r.pgid == ending.pid {
		return true
	}
	if forking.Load() > 0 {
		return false
	}
	for _, e := range registry {
		if e.p != ending && !e.p.ending.Load() && e.p.startTick <= r.start {
			return false // may be its
		}
	}
	return true
}

// isRegistered: p is running (not yet reaped). Called with regMu held.
func isRegistered(p *proc) bool {
	e, ok := registry[p.pid]
	return ok && e.p == p
}

// sweep kills every orphan no running process may own, with its tree, and
// waits until they have all exited; orphans they leave are swept too.
func sweep() {
	for range 64 { // each round leaves only what was forked during it
		all := signalOrphans(nil, unix.SIGKILL, true, true)
		live := false
		for _, t := range all {
			live = live || !t.zombie
		}
		waitExited(all)
		if !live {
			return // only zombies left: the reaper's
		}
	}
}

// waitExited waits until every pinned target has exited and closes them.
func waitExited(ts []target) {
	fds := make([]unix.PollFd, 0, len(ts))
	for i := range ts {
		if ts[i].fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(ts[i].fd), Events: unix.POLLIN})
		}
	}
	for len(fds) > 0 {
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			break
		}
		n := 0
		for _, f := range fds {
			if f.Revents == 0 {
				fds[n] = f
				n++
			}
		}
		fds = fds[:n]
	}
	for i := range ts {
		ts[i].close()
	}
}

// setSubreaper makes this process a child subreaper (or not).
func setSubreaper(on bool) error {
	v := uintptr(0)
	if on {
		v = 1
	}
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, v, 0, 0, 0)
}
