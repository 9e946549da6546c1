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

// jobCgroup is a cgroup (v2) made below this process's own, into which
// every child is forked (CLONE_INTO_CGROUP). A process cannot leave a
// cgroup by setsid or a double fork, so writing cgroup.kill ends all that
// the children ever started: the keeper does that when this process dies
// without stopping them (SIGKILL), and Close does it before removing the
// cgroup. It is the last line under the process-group kills and the
// subreaper, and only where the node lets this process make a cgroup.
type jobCgroup struct {
	path string
	fd   int         // the directory (or its leaf "procs"), for CLONE_INTO_CGROUP
	on   atomic.Bool // false once forking into it has failed
	// memory: the memory controller is on for the cgroup's children, so
	// processes with a memory limit get a child cgroup each (memcg.go);
	// the others then go into the leaf "procs", as a cgroup that hands
	// controllers to children may hold no process itself.
	memory bool
}

// newJobCgroup makes the cgroup, or says why it cannot.
func newJobCgroup() (*jobCgroup, error) {
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	removeOrphanCgroups(own)
	path := filepath.Join(own, jobCgroupPrefix(os.Getpid())+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := unix.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("make cgroup %s: %w", path, err)
	}
	if err := unix.Access(filepath.Join(path, "cgroup.kill"), unix.W_OK); err != nil {
		_ = unix.Rmdir(path)
		return nil, fmt.Errorf("cgroup %s has no cgroup.kill (Linux 5.14 or later): %w", path, err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = unix.Rmdir(path)
		return nil, fmt.Errorf("open cgroup %s: %w", path, err)
	}
	c := &jobCgroup{path: path, fd: fd}
	c.on.Store(true)
	c.enableMemory()
	return c, nil
}

// enableMemory turns the memory controller on for c's children, where the
// parent hands it down to c, and moves c's forks into the leaf "procs".
func (c *jobCgroup) enableMemory() {
	ctrl, err := os.ReadFile(filepath.Join(c.path, "cgroup.controllers"))
	if err != nil || !hasField(string(ctrl), "memory", " ") {
		return
	}
	if os.WriteFile(filepath.Join(c.path, "cgroup.subtree_control"), []byte("+memory"), 0) != nil {
		return
	}
	leaf := filepath.Join(c.path, "procs")
	if unix.Mkdir(leaf, 0o755) != nil {
		return
	}
	fd, err := unix.Open(leaf, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = unix.Rmdir(leaf)
		return
	}
	_ = unix.Close(c.fd)
	c.fd, c.memory = fd, true
}

// jobCgroupPrefix begins the name of every cgroup the process pid makes,
// so that its guard can find what it left.
func jobCgroupPrefix(pid int) string { return fmt.Sprintf("drover-%d-", pid) }

// removeOrphanCgroups removes the empty job cgroups in dir whose maker is
// gone: a process that died with nobody left to remove its cgroup (its
// keeper and guard killed too) leaves an empty one behind, and the next
// agent on the node clears it. One whose maker's pid lives (or was
// reused) is left alone; one with processes in it (or in a cgroup below)
// cannot be removed.
func removeOrphanCgroups(dir string) {
	left, _ := filepath.Glob(filepath.Join(dir, "drover-*-*"))
	for _, path := range left {
		f := strings.Split(filepath.Base(path), "-")
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 0 {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			_ = removeCgroupTree(path)
		}
	}
}

// ownCgroup is this process's cgroup v2 directory.
func ownCgroup() (string, error) {
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	return ownCgroupDir(mountinfo, self)
}

// removeCgroupsOf removes the cgroups that the process pid, a child of
// this one in the same cgroup, made and left behind: its guard calls it
// once it has killed everything below, the keeper included, which would
// otherwise have removed them.
func removeCgroupsOf(pid int) error {
	own, err := ownCgroup()
	if err != nil {
		return nil // then pid made none either
	}
	left, err := filepath.Glob(filepath.Join(own, jobCgroupPrefix(pid)+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, path := range left {
		errs = append(errs, removeCgroup(path))
	}
	return errors.Join(errs...)
}

// ownCgroupDir finds this process's cgroup v2 directory from the texts of
// /proc/self/mountinfo and /proc/self/cgroup.
func ownCgroupDir(mountinfo, self []byte) (string, error) {
	var rel string
	found := false
	for line := range bytes.Lines(self) {
		if p, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("0::")); ok {
			rel, found = string(p), true
		}
	}
	if !found {
		return "", errors.New("no cgroup v2 in /proc/self/cgroup")
	}
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		root, mnt := unescapeMount(f[3]), unescapeMount(f[4])
		// The mount shows the hierarchy from root down; our cgroup must
		// be inside what it shows.
		sub, ok := strings.CutPrefix(rel, root)
		if !ok || (sub != "" && root != "/" && !strings.HasPrefix(sub, "/")) {
			continue
		}
		return filepath.Join(mnt, sub), nil
	}
	return "", errors.New("no cgroup v2 mount shows this process's cgroup")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// remove closes the cgroup and removes it with whatever is left in it.
func (c *jobCgroup) remove() error {
	_ = unix.Close(c.fd)
	return removeCgroup(c.path)
}

// removeCgroup kills what is left in the cgroup at path and removes it,
// waiting (boundedly) for the killed to exit. Its descendants go first: a
// job may itself run drover (or anything else that makes cgroups), and
// once killed, nothing is left to remove those; a cgroup with children
// cannot be removed.
func removeCgroup(path string) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if err = removeCgroupTree(path); err != unix.EBUSY {
			break
		}
		time.Sleep(2 * time.Millisecond) // shutdown only: the killed are exiting
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	return nil
}

// removeCgroupTree removes the cgroup at path and its descendants, the
// deepest first. In a cgroup file system the directories are the child
// cgroups; everything else is an interface file, which goes with its
// cgroup.
func removeCgroupTree(path string) error {
	entries, err := os.ReadDir(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // removed meanwhile (its own maker, or the keeper)
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(path, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(path); err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}
