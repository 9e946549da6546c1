//go:build linux

package supervise

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// memCgroups gives each process started with a memory limit
// (Spec.MemoryMax) a cgroup of its own with that limit, and tells after
// its exit whether the OOM killer ended anything in it. It uses cgroup v2
// where the job cgroup could enable the memory controller for its
// children, else the v1 memory hierarchy of a hybrid host (still common
// on HPC clusters); with neither, limits are not enforced.
type memCgroups struct {
	dir string // the per-process cgroups are made here
	v1  bool
	// home is, on v1, this process's own memory cgroup: a spawner thread
	// steps into a process's cgroup for the fork (the child is born
	// there, with no moment outside it) and back here after.
	home string
	seq  atomic.Uint64
}

// memCgroup is one process's cgroup.
type memCgroup struct {
	path  string
	fd    int // v2: the directory, for CLONE_INTO_CGROUP; -1 on v1
	limit int64
}

// newMemCgroups finds where per-process memory limits can be set, or
// says why they cannot.
func newMemCgroups(job *jobCgroup) (*memCgroups, error) {
	if job != nil && job.memory {
		return &memCgroups{dir: job.path}, nil
	}
	why := "no cgroup v2 of its own with the memory controller"
	if job == nil {
		why = "no cgroup v2 of its own"
	}
	own, err := ownV1Memory()
	if err != nil {
		return nil, fmt.Errorf("%s, and no cgroup v1 memory hierarchy: %w", why, err)
	}
	removeOrphanCgroups(own)
	dir := filepath.Join(own, jobCgroupPrefix(os.Getpid())+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := unix.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s; make v1 memory cgroup %s: %w", why, dir, err)
	}
	return &memCgroups{dir: dir, v1: true, home: own}, nil
}

// ownV1Memory is this process's cgroup in the v1 memory hierarchy.
func ownV1Memory() (string, error) {
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	rel, found := "", false
	for line := range bytes.Lines(self) {
		f := strings.SplitN(strings.TrimSpace(string(line)), ":", 3)
		if len(f) == 3 && f[0] != "0" && hasField(f[1], "memory", ",") {
			rel, found = f[2], true
		}
	}
	if !found {
		return "", errors.New("no memory controller in /proc/self/cgroup")
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 3 || qf[0] != "cgroup" || !hasField(qf[2], "memory", ",") {
			continue
		}
		root, mnt := unescapeMount(pf[3]), unescapeMount(pf[4])
		sub, ok := strings.CutPrefix(rel, root)
		if !ok || (sub != "" && root != "/" && !strings.HasPrefix(sub, "/")) {
			continue
		}
		dir := filepath.Join(mnt, sub)
		if err := unix.Access(filepath.Join(dir, "tasks"), unix.W_OK); err != nil {
			return "", fmt.Errorf("v1 memory cgroup %s: %w", dir, err)
		}
		return dir, nil
	}
	return "", errors.New("no cgroup v1 memory mount shows this process's cgroup")
}

func hasField(s, word, sep string) bool {
	for f := range strings.SplitSeq(strings.TrimSpace(s), sep) {
		if f == word {
			return true
		}
	}
	return false
}

// make makes a cgroup limited to limit bytes. Swap is limited too where
// the kernel lets it be, so the limit is one of memory, not of RAM.
func (m *memCgroups) make(limit int64) (*memCgroup, error) {
	path := filepath.Join(m.dir, "p-"+strconv.FormatUint(m.seq.Add(1), 10))
	if err := unix.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("make memory cgroup %s: %w", path, err)
	}
	c := &memCgroup{path: path, fd: -1, limit: limit}
	v := []byte(strconv.FormatInt(limit, 10))
	var err error
	if m.v1 {
		err = os.WriteFile(filepath.Join(path, "memory.limit_in_bytes"), v, 0)
		_ = os.WriteFile(filepath.Join(path, "memory.memsw.limit_in_bytes"), v, 0) // only with swap accounting
	} else {
		err = os.WriteFile(filepath.Join(path, "memory.max"), v, 0)
		_ = os.WriteFile(filepath.Join(path, "memory.swap.max"), []byte("0"), 0)
		// One process killed for memory takes its whole tree with it,
		// as the instance is one unit.
		_ = os.WriteFile(filepath.Join(path, "memory.oom.group"), []byte("1"), 0)
		if err == nil {
			c.fd, err = unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		_ = unix.Rmdir(path)
		return nil, fmt.Errorf("limit memory cgroup %s to %d bytes: %w", path, limit, err)
	}
	return c, nil
}

// enter and leave move the calling (locked) thread into c and back, on v1,
// around a fork: the child starts in the cgroup of the thread that forked
// it.
func (m *memCgroups) enter(c *memCgroup) error {
	if !m.v1 {
		return nil
	}
	return writeTID(c.path)
}

func (m *memCgroups) leave() error {
	if !m.v1 {
		return nil
	}
	return writeTID(m.home)
}

func writeTID(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte(strconv.Itoa(unix.Gettid())), 0); err != nil {
		return fmt.Errorf("move thread into cgroup %s: %w", dir, err)
	}
	return nil
}

// oomKilled reports whether the OOM killer ended a process in c: the
// oom_kill count of memory.events (v2) or memory.oom_control (v1).
func (c *memCgroup) oomKilled() bool {
	for _, name := range []string{"memory.events", "memory.oom_control"} {
		data, err := os.ReadFile(filepath.Join(c.path, name))
		if err != nil {
			continue
		}
		for line := range bytes.Lines(data) {
			f := strings.Fields(string(line))
			if len(f) == 2 && f[0] == "oom_kill" {
				n, _ := strconv.ParseUint(f[1], 10, 64)
				return n > 0
			}
		}
	}
	return false
}

// remove removes c once its processes are gone (the caller killed them),
// waiting boundedly for the kernel to let the last of them go.
func (c *memCgroup) remove() error {
	if c.fd >= 0 {
		_ = unix.Close(c.fd)
		c.fd = -1
	}
	var err error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if err = unix.Rmdir(c.path); err != unix.EBUSY {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove memory cgroup %s: %w", c.path, err)
	}
	return nil
}

// close removes the v1 directory of the per-process cgroups (v2's goes
// with the job cgroup).
func (m *memCgroups) close() error {
	if !m.v1 {
		return nil
	}
	return removeCgroupTree(m.dir)
}
