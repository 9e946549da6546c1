package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
)

// createOutput creates (or truncates) outDir/rel for a copied output,
// without following a symlink below outDir. Names that are drover's own
// captured output are refused.
func createOutput(outDir, rel string, perm os.FileMode) (*os.File, error) {
	rel = path.Clean(rel)
	if results.OwnName(rel) {
		return nil, results.ErrOwnName
	}
	// outDir itself is the caller's to name; below it, nofollow.
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	name := filepath.FromSlash(rel)
	if err := nofollow.MkdirAll(outDir, filepath.Dir(name), 0o755); err != nil {
		return nil, err
	}
	return nofollow.OpenFile(outDir, name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
}

// fullBelow is the free space under which a file system counts as full:
// a write that failed for want of space left at most about this much.
const fullBelow = 64 << 10

// checkCaptured looks, after an exit, whether the captured output may
// have been cut short. The process wrote those files itself, so a write
// that failed (ENOSPC) was its own to see, and it may have ignored it:
// what drover can see is the file system holding them full now.
func checkCaptured(paths []string) error {
	var errs []string
	for _, p := range paths {
		if err := checkFull(p); err != nil {
			errs = append(errs, fmt.Sprintf("%s may be incomplete: %v", filepath.Base(p), err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// ErrFull says a file system was full.
var ErrFull = errors.New("file system full")

// checkFull fails with ErrFull when the file system holding the regular
// file p has less than fullBelow free (for this user: root may use the
// blocks reserved for it).
func checkFull(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // gone, or not a file (/dev/null): nothing to say
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil || fs.Blocks == 0 {
		return nil
	}
	free := fs.Bavail
	if os.Geteuid() == 0 {
		free = fs.Bfree
	}
	if bytes := free * uint64(fs.Bsize); bytes < fullBelow {
		return fmt.Errorf("%w (%d bytes free) when the process exited, at %s", ErrFull, bytes, filepath.Dir(p))
	}
	return nil
}

// ownDir checks that dir is a directory (not a symlink) of this user's
// that no one else may write to.
func ownDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%s: %w", dir, nofollow.ErrSymlink)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s: not a directory", dir)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s belongs to uid %d, not to this user", dir, st.Uid)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%s is writable by others (mode %o)", dir, st.Mode&0o777)
	}
	return nil
}
