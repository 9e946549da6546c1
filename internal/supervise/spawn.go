//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/drover-hpc/drover/internal/errdefs"
	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/nofollow"
)

// maxCPUs is the number of CPUs a unix.CPUSet can hold.
const maxCPUs = int(unsafe.Sizeof(unix.CPUSet{})) * 8

// Test hooks: testHookForked runs in a spawner between fork and record,
// testHookUnknown in the reaper when it meets a pid not registered (yet).
var testHookForked, testHookUnknown atomic.Pointer[func(pid int)]

type spawnReq struct {
	spec *Spec
	p    *proc
	done chan error // capacity 1
}

// spawner serves spawn requests on a thread it never gives back: children
// forked here get Pdeathsig from this thread, which lives until every child
// has been reaped (Close), and it is the thread whose affinity they inherit.
func (s *Supervisor) spawner() {
	defer s.spawnWG.Done()
	runtime.LockOSThread()
	// No UnlockOSThread: the thread exits with this goroutine.
	cur := s.origMask
	if err := unix.SchedSetaffinity(0, &cur); err != nil {
		s.log.Warn("spawner: set cpu affinity", "err", err)
		cur = unix.CPUSet{} // unknown: set it before the next fork
	}
	for {
		select {
		case req := <-s.reqs:
			req.done <- s.spawn(req.spec, req.p, &cur)
		case <-s.quit:
			return
		}
	}
}

// notFoundError is the error for a missing executable: it says where it
// was looked for, since that is rarely where the user thought.
type notFoundError struct {
	name  string
	where string // " in DIR (work dir); PATH=..." and the like; "" for an absolute name
}

func (e *notFoundError) Error() string {
	return fmt.Sprintf("executable %q not found%s", e.name, e.where)
}
func (e *notFoundError) Unwrap() error { return fs.ErrNotExist }

// notFound is the error for name, looked for as spec would run it.
func notFound(spec *Spec, name string) error {
	dir := spec.Dir
	if dir == "" {
		dir, _ = os.Getwd() // the child would have inherited ours
	}
	path, ok := envPath(spec.Env)
	if !ok {
		path = os.Getenv("PATH")
	}
	var where string
	switch {
	case filepath.IsAbs(name):
	case strings.Contains(name, "/"):
		where = fmt.Sprintf(" in %s (work dir); PATH=%s", dir, path)
	default:
		where = fmt.Sprintf(" in PATH=%s (work dir %s)", path, dir)
	}
	return &errdefs.SpawnError{Op: "exec", Path: name, Errno: unix.ENOENT, Err: &notFoundError{name, where}}
}

// spawn forks and execs one child on the calling (locked) spawner thread
// and records it. cur is the thread's current affinity.
func (s *Supervisor) spawn(spec *Spec, p *proc, cur *unix.CPUSet) error {
	if spec.Dir != "" {
		var st unix.Stat_t
		if err := unix.Stat(spec.Dir, &st); err != nil {
			return errdefs.NewSpawnError("work dir", spec.Dir, fmt.Errorf("work dir %s: %w", spec.Dir, err))
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return errdefs.NewSpawnError("work dir", spec.Dir, fmt.Errorf("work dir %s: %w", spec.Dir, unix.ENOTDIR))
		}
	}
	exe, err := findExecutable(spec)
	if err != nil {
		return err
	}
	want := s.origMask
	if len(spec.HWThreads) > 0 {
		want.Zero()
		for _, c := range spec.HWThreads {
			if c < 0 || c >= maxCPUs {
				return fmt.Errorf("cpu affinity %v: cpu %d out of range", spec.HWThreads, c)
			}
			want.Set(c)
		}
	}

	// Child ends of stdin, stdout, stderr; the parent's copies are closed
	// right after the fork.
	stdout, stderr := s.devNull, s.devNull
	defer func() {
		if stdout != s.devNull {
			_ = unix.Close(stdout)
		}
		if stderr != s.devNull && stderr != stdout {
			_ = unix.Close(stderr)
		}
	}()
	outPath := relTo(spec.Dir, spec.Stdout)
	errPath := relTo(spec.Dir, spec.Stderr)
	if outPath != "" {
		if stdout, err = openOutput(spec.OutputRoot, outPath, spec.StdoutFile); err != nil {
			stdout = s.devNull
			return errdefs.NewSpawnError("open stdout", outPath, &fs.PathError{Op: "open stdout", Path: outPath, Err: err})
		}
	}
	switch {
	case errPath == "":
	case errPath == outPath:
		stderr = stdout
	default:
		if stderr, err = openOutput(spec.OutputRoot, errPath, spec.StderrFile); err != nil {
			stderr = s.devNull
			return errdefs.NewSpawnError("open stderr", errPath, &fs.PathError{Op: "open stderr", Path: errPath, Err: err})
		}
	}
	// stdin: a pipe for Send, or /dev/null when nobody will write to it.
	stdin, stdinW := s.devNull, -1
	if !spec.NoStdin {
		var pipe [2]int
		if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("stdin pipe: %w", err)
		}
		defer unix.Close(pipe[0])
		stdin, stdinW = pipe[0], pipe[1]
	}
	closeStdinW := func() {
		if stdinW >= 0 {
			_ = unix.Close(stdinW)
		}
	}

	var mem *memCgroup
	if spec.MemoryMax > 0 && s.mem != nil {
		if mem, err = s.mem.make(spec.MemoryMax); err != nil {
			s.log.Warn("memory limit not enforced", "name", spec.Name, "err", err)
		}
	}
	if want != *cur {
		if err := unix.SchedSetaffinity(0, &want); err != nil {
			if mem != nil {
				_ = mem.remove()
			}
			closeStdinW()
			*cur = unix.CPUSet{} // unknown now
			return fmt.Errorf("cpu affinity %v: %w", spec.HWThreads, err)
		}
		*cur = want
	}
	env := spec.Env
	if s.treeVar != "" {
		env = append(env[:len(env):len(env)], s.treeVar)
	}
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: []uintptr{uintptr(stdin), uintptr(stdout), uintptr(stderr)},
		Sys: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}

	// Hold forkMu for reading from fork until the pid is registered: the
	// reaper takes it for writing before it decides that a pid is not ours,
	// so a child that exits at once is still dispatched to its process.
	forkMu.RLock()
	forking.Add(1)
	start := time.Now()
	p.startTick = bootTicks()
	if mem != nil {
		if err := s.mem.enter(mem); err != nil {
			s.log.Warn("memory limit not enforced", "name", spec.Name, "err", err)
			_ = mem.remove()
			mem = nil
		}
	}
	pid, inCgroup, err := s.forkExec(exe, spec.Args, attr, mem)
	if mem != nil {
		if err := s.mem.leave(); err != nil {
			s.log.Error("spawner thread stays in a process's memory cgroup", "err", err)
		}
	}
	if err == nil {
		if h := testHookForked.Load(); h != nil {
			(*h)(pid)
		}
		s.mu.Lock()
		p.pid, p.start, p.stdinFD, p.state, p.mem = pid, start, stdinW, stateRunning, mem
		p.stdinClosed = spec.NoStdin
		// The keeper ends what is in the cgroup as a whole (cgroup.kill):
		// only a group forked outside it is told by its id, which spares
		// the keeper a wake-up per start and per exit.
		kept := s.keeper != nil && !inCgroup
		p.kept = kept
		s.running++
		switch {
		case p.killPending:
			s.signalLocked(p, unix.SIGKILL)
		case p.termPending:
			s.signalLocked(p, unix.SIGTERM)
			s.armKillLocked(p, p.killAt)
		}
		s.mu.Unlock()
		// The keeper hears of the group before the reaper can dispatch
		// its exit: a removal written before the addition would leave a
		// dead group on the keeper, to be killed (reused id and all) when
		// the keeper ends.
		if kept {
			s.keeper.add(pid)
		}
		register(pid, s, p)
	}
	forking.Add(-1)
	forkMu.RUnlock()

	if *cur != s.origMask {
		if err := unix.SchedSetaffinity(0, &s.origMask); err != nil {
			*cur = unix.CPUSet{}
		} else {
			*cur = s.origMask
		}
	}
	if err != nil {
		closeStdinW()
		if mem != nil {
			_ = mem.remove()
		}
		return execError(spec, exe, err)
	}
	return nil
}

// forkExec forks into the Supervisor's cgroup, if it has one, or into
// mem's below it, and says whether it did. If that fork fails but one
// outside succeeds, it was the cgroup (no clone3, no right to move
// processes into it): later forks go without it.
func (s *Supervisor) forkExec(exe string, args []string, attr *syscall.ProcAttr, mem *memCgroup) (pid int, inCgroup bool, err error) {
	cg := s.cgroup
	if cg == nil || !cg.on.Load() {
		pid, err = syscall.ForkExec(exe, args, attr)
		return pid, false, err
	}
	attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, cg.fd
	if mem != nil && mem.fd >= 0 {
		attr.Sys.CgroupFD = mem.fd
	}
	if pid, err = syscall.ForkExec(exe, args, attr); err == nil {
		return pid, true, nil
	}
	attr.Sys.UseCgroupFD = false
	pid, err2 := syscall.ForkExec(exe, args, attr)
	if err2 == nil && cg.on.CompareAndSwap(true, false) {
		s.log.Info("processes run without a cgroup of their own", "cgroup", cg.path, "reason", err)
	}
	return pid, false, err2
}

// execError explains a failed fork and exec of exe, which spec.Args[0]
// resolved to.
func execError(spec *Spec, exe string, err error) error {
	arg0 := spec.Args[0]
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.ENOENT:
			// The work dir was checked before: it is the executable, or
			// the interpreter its #! line names, that is missing.
			if isExecutable(relTo(spec.Dir, exe)) {
				return errdefs.NewSpawnError("exec", arg0, fmt.Errorf("executable %q: the interpreter on its #! line: %w", arg0, errno))
			}
			return notFound(spec, arg0)
		case unix.EACCES, unix.ENOEXEC, unix.ENOTDIR, unix.ELOOP, unix.ENAMETOOLONG:
			return errdefs.NewSpawnError("exec", arg0, fmt.Errorf("executable %q: %w", arg0, errno))
		}
	}
	return errdefs.NewSpawnError("exec", arg0, fmt.Errorf("fork/exec %q: %w", arg0, err))
}

// findExecutable resolves Args[0]: as given when it has a slash, else by
// the PATH of the child's environment (this process's when it has none).
// Relative results are relative to Dir, where the child will exec them.
func findExecutable(spec *Spec) (string, error) {
	name := spec.Args[0]
	if strings.Contains(name, "/") {
		return name, nil
	}
	path, ok := envPath(spec.Env)
	if !ok {
		path = os.Getenv("PATH")
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "." // POSIX: an empty PATH entry is the current directory
		}
		cand := filepath.Join(dir, name)
		if !filepath.IsAbs(cand) {
			cand = "./" + cand // keep it a path for execve
		}
		if isExecutable(relTo(spec.Dir, cand)) {
			return cand, nil
		}
	}
	return "", notFound(spec, name)
}

// envPath is the first PATH in env, as getenv in the child would find it.
func envPath(env []string) (string, bool) {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			return v, true
		}
	}
	return "", false
}

func isExecutable(path string) bool {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0
}

// relTo resolves a relative path against dir.
func relTo(dir, path string) string {
	if path == "" || dir == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

// OpenOutput opens an output file for a child ahead of its start, as
// the supervisor would (Spec.StdoutFile).
func OpenOutput(root, path string) (*os.File, error) {
	fd, err := openOutput(root, path, nil)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openOutput creates or truncates an output file for a child, or takes a
// copy of opened (OpenOutput) if it was opened ahead. It opens without
// blocking, so a FIFO without a reader is an error (ENXIO) rather than a
// spawner stuck forever, then makes the descriptor blocking for the
// child. A path inside root is opened without following a symlink there.
func openOutput(root, path string, opened *os.File) (int, error) {
	if opened != nil {
		return unix.FcntlInt(opened.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	}
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NONBLOCK
	var fd int
	var err error
	if rel, ok := nofollow.Within(root, path); ok {
		fd, err = nofollow.Open(root, rel, flags, 0o644)
	} else {
		fd, err = unix.Open(path, flags, 0o644)
	}
	if err != nil {
		return -1, err
	}
	// Clear O_NONBLOCK (and the other F_SETFL flags, none of which we set).
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
