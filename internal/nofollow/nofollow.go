//go:build linux

// Package nofollow opens and makes files below a directory without
// following a symlink anywhere below it. drover writes into its results
// dir and its scratch dirs; a symlink there (left by a job, or by anyone
// who can write there) must not make it truncate or append to a file
// elsewhere. The directory itself is opened as named: it is the user's
// (--out) or drover's own choice.
//
// It uses openat2(2) with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the
// kernel has it (Linux 5.6), else walks the path one component at a time
// with O_NOFOLLOW.
package nofollow

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrSymlink is the error for a path that a symlink is on.
var ErrSymlink = errors.New("a symlink is on the path; drover does not follow symlinks in its own directories")

// noOpenat2 is set once openat2 turned out to be missing (ENOSYS, or
// EPERM from a seccomp filter that does not know it).
var noOpenat2 atomic.Bool

// Open opens root/rel, rel a local path (no "..", not absolute), without
// following a symlink in rel, and returns the descriptor. flags are
// open(2) flags; O_CLOEXEC is added. Its errors do not repeat the path.
func Open(root, rel string, flags int, perm uint32) (int, error) {
	if err := checkRel(rel); err != nil {
		return -1, err
	}
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(dfd)
	fd, err := openBeneath(dfd, rel, flags|unix.O_CLOEXEC, perm)
	if err != nil {
		return -1, symlinkErr(err)
	}
	return fd, nil
}

// OpenFile is Open returning an *os.File, its errors *fs.PathError.
func OpenFile(root, rel string, flags int, perm os.FileMode) (*os.File, error) {
	fd, err := Open(root, rel, flags, uint32(perm.Perm()))
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(root, rel), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
}

// MkdirAll makes root/rel and its parents below root, like os.MkdirAll,
// failing on a symlink or a non-directory on the way.
func MkdirAll(root, rel string, perm os.FileMode) error {
	if rel == "." || rel == "" {
		return nil
	}
	if err := checkRel(rel); err != nil {
		return &fs.PathError{Op: "mkdir", Path: filepath.Join(root, rel), Err: err}
	}
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "mkdir", Path: root, Err: err}
	}
	for _, c := range strings.Split(filepath.Clean(rel), "/") {
		if err := unix.Mkdirat(dfd, c, uint32(perm.Perm())); err != nil && err != unix.EEXIST {
			unix.Close(dfd)
			return &fs.PathError{Op: "mkdir", Path: filepath.Join(root, rel), Err: err}
		}
		next, err := openDir(dfd, c)
		unix.Close(dfd)
		if err != nil {
			return &fs.PathError{Op: "mkdir", Path: filepath.Join(root, rel), Err: symlinkErr(err)}
		}
		dfd = next
	}
	unix.Close(dfd)
	return nil
}

// Within returns p relative to dir when p lies below dir (lexically),
// for callers that know a path is in one of drover's own directories.
func Within(dir, p string) (string, bool) {
	if dir == "" || p == "" {
		return "", false
	}
	rel, err := filepath.Rel(dir, p)
	if err != nil || !filepath.IsLocal(rel) || rel == "." {
		return "", false
	}
	return rel, true
}

func checkRel(rel string) error {
	if !filepath.IsLocal(rel) || rel == "." {
		return errors.New("not a path inside the directory")
	}
	return nil
}

func openBeneath(dfd int, rel string, flags int, perm uint32) (int, error) {
	if !noOpenat2.Load() {
		how := unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		if flags&(unix.O_CREAT|unix.O_TMPFILE) != 0 {
			how.Mode = uint64(perm)
		}
		var err error
		for range 16 {
			var fd int
			fd, err = unix.Openat2(dfd, rel, &how)
			// EAGAIN: a rename somewhere raced the lookup; try again.
			if err != unix.EINTR && err != unix.EAGAIN {
				if err == nil {
					return fd, nil
				}
				break
			}
		}
		if err != unix.ENOSYS && (err != unix.EPERM || !seccompEPERM(dfd)) {
			return -1, err
		}
		noOpenat2.Store(true)
	}
	return walkOpen(dfd, rel, flags, perm)
}

// seccompEPERM tells an EPERM from a filter that blocks openat2 from one
// the file itself earned, by a harmless openat2 of ".".
func seccompEPERM(dfd int) bool {
	fd, err := unix.Openat2(dfd, ".", &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC})
	if err == nil {
		unix.Close(fd)
		return false
	}
	return err == unix.EPERM || err == unix.ENOSYS
}

// walkOpen is the fallback: one component at a time, each opened with
// O_NOFOLLOW.
func walkOpen(dfd int, rel string, flags int, perm uint32) (int, error) {
	parts := strings.Split(filepath.Clean(rel), "/")
	cur := dfd
	for _, c := range parts[:len(parts)-1] {
		next, err := openDir(cur, c)
		if cur != dfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = next
	}
	fd, err := unix.Openat(cur, parts[len(parts)-1], flags|unix.O_NOFOLLOW, perm)
	if cur != dfd {
		unix.Close(cur)
	}
	return fd, err
}

// openDir opens the directory name in dfd, not through a symlink. With
// O_DIRECTORY a symlink fails with ENOTDIR, not ELOOP: look which it was.
func openDir(dfd int, name string) (int, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOTDIR {
		var st unix.Stat_t
		if unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			err = unix.ELOOP
		}
	}
	return fd, err
}

// symlinkErr makes ELOOP (what both ways give for a symlink) say so.
func symlinkErr(err error) error {
	if err == unix.ELOOP {
		return fmt.Errorf("%w (%w)", ErrSymlink, err)
	}
	return err
}

// OpenPath opens the file p: without following a symlink below root when
// p lies below root, else as os.OpenFile would. root "" is no root.
func OpenPath(root, p string, flags int, perm os.FileMode) (*os.File, error) {
	if rel, ok := Within(root, p); ok {
		return OpenFile(root, rel, flags, perm)
	}
	return os.OpenFile(p, flags, perm)
}
