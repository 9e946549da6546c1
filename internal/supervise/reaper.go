//go:build linux

package supervise

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The reaper is shared by all open Supervisors of the process: there can be
// only one owner of wait(-1).
var (
	// forkMu: spawners hold it for reading from fork until the pid is
	// registered; the reaper holds it for writing to decide that a pid is
	// not ours.
	forkMu sync.RWMutex

	regMu    sync.Mutex
	registry = map[int]regEntry{}         // pid of every running child
	sups     = map[*Supervisor]struct{}{} // open Supervisors, for logging

	reaper struct {
		mu   sync.Mutex
		refs int
		sig  chan os.Signal
		stop chan struct{}
		done chan struct{}
	}
)

type regEntry struct {
	s *Supervisor
	p *proc
}

func register(pid int, s *Supervisor, p *proc) {
	regMu.Lock()
	registry[pid] = regEntry{s, p}
	regMu.Unlock()
}

func acquireReaper(s *Supervisor) error {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	if s.subreaper {
		if subreaper == 0 {
			if err := setSubreaper(true); err != nil {
				return fmt.Errorf("become child subreaper: %w", err)
			}
			subreaperOn.Store(true)
		}
		subreaper++
	}
	regMu.Lock()
	sups[s] = struct{}{}
	regMu.Unlock()
	if reaper.refs == 0 {
		reaper.sig = make(chan os.Signal, 1) // coalescing is fine: each wakeup drains everything
		reaper.stop = make(chan struct{})
		reaper.done = make(chan struct{})
		signal.Notify(reaper.sig, syscall.SIGCHLD)
		go reapLoop(reaper.sig, reaper.stop, reaper.done)
	}
	reaper.refs++
	return nil
}

func releaseReaper(s *Supervisor) {
	reaper.mu.Lock()
	if s.subreaper {
		subreaper--
		if subreaper == 0 {
			subreaperOn.Store(false)
			if err := setSubreaper(false); err != nil {
				s.log.Warn("stop being a child subreaper", "err", err)
			}
		}
	}
	reaper.refs--
	if reaper.refs == 0 {
		signal.Stop(reaper.sig)
		close(reaper.stop)
		<-reaper.done
		reaper.sig, reaper.stop, reaper.done = nil, nil, nil
		if s.subreaper {
			// Reap what Close swept and the reaper had no time for.
			drain()
		}
	}
	reaper.mu.Unlock()
	regMu.Lock()
	delete(sups, s)
	regMu.Unlock()
}

func reapLoop(sig <-chan os.Signal, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-sig:
			drain()
		case <-stop:
			return
		}
	}
}

// drain collects every exited child. A child is first seen with WNOWAIT, so
// that a stopped process's group can still be killed safely while its
// leader is a zombie, and then reaped.
//
// A pid that is not registered may belong to a spawn that has forked but
// not yet recorded its child. forkMu settles it: once the reaper holds it
// for writing, every spawn in flight has recorded its child (or, when the
// exec failed, reaped it itself), so a pid still unknown then is not ours.
// Only that rare case takes the lock; a known pid is dispatched at once,
// without waiting for spawns in flight.
func drain() {
	for {
		var info chldInfo
		if err := waitidPeek(&info); err != nil || info.pid == 0 {
			return // ECHILD: no children; pid 0: none has exited
		}
		pid := int(info.pid)
		e, ok := take(pid)
		if !ok {
			if h := testHookUnknown.Load(); h != nil {
				(*h)(pid)
			}
			forkMu.Lock()
			if e, ok = take(pid); !ok {
				reapUnknown(pid)
			}
			forkMu.Unlock()
		}
		if ok {
			e.s.exited(e.p, &info)
		}
	}
}

// take removes pid from the registry and returns its entry.
func take(pid int) (regEntry, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	e, ok := registry[pid]
	delete(registry, pid)
	return e, ok
}

// reapUnknown reaps a child that is not ours: a reparented grandchild (when
// this process is a subreaper) or a child someone else started. Called
// with forkMu held for writing.
func reapUnknown(pid int) {
	var ws unix.WaitStatus
	wpid, err := wait4(pid, &ws)
	if err == unix.ECHILD || (err == nil && wpid != pid) {
		return // a failed spawn whose ForkExec reaped it meanwhile
	}
	regMu.Lock()
	delete(keepers, pid)
	logTo := make([]*Supervisor, 0, len(sups))
	for s := range sups {
		logTo = append(logTo, s)
	}
	regMu.Unlock()
	for _, s := range logTo {
		s.log.Debug("reaped unknown child", "pid", pid, "err", err)
	}
}

const (
	cldKilled = 2 // CLD_KILLED; CLD_EXITED is 1
	cldDumped = 3 // CLD_DUMPED
)

// chldInfo is the start of the kernel's siginfo_t as waitid fills it in
// for a child: three ints, then the union, which is pointer-aligned.
type chldInfo struct {
	signo, errno, code int32
	_                  [0]uintptr // align the union as the kernel does
	pid                int32
	uid                uint32
	status             int32
	_                  [128]byte // room for the rest of siginfo_t
}

// waitidPeek finds an exited child without reaping it; info.pid stays 0
// when there is none.
func waitidPeek(info *chldInfo) error {
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, unix.P_ALL, 0,
			uintptr(unsafe.Pointer(info)), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, 0, 0)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return e
	}
}

// wait4 reaps pid, which has exited.
func wait4(pid int, ws *unix.WaitStatus) (int, error) {
	for {
		wpid, err := unix.Wait4(pid, ws, unix.WNOHANG, nil)
		if err != unix.EINTR {
			return wpid, err
		}
	}
}
