// Package privdir makes, or checks, a directory that only this user may
// use: drover's scratch root and DROVER_HOME. A directory someone else
// made first at the expected name (in a shared /tmp, say) could be read or
// have its entries swapped for symlinks by that user, so it is not used.
package privdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrNotOwned is wrapped when the directory belongs to another user.
var ErrNotOwned = errors.New("owned by another user")

// ErrNotDir is wrapped when the name is not a directory (or, where
// symlinks are not followed, is a symlink).
var ErrNotDir = errors.New("not a directory")

// Ensure makes dir with mode 0700 (and any missing parents, 0755), or
// checks the directory already there: it must be owned by this process's
// effective user, and then a mode that lets group or others write in it
// (add, rename or remove its entries) is narrowed to 0700 (narrowed
// tells). One they may only read is left as the user made it: what drover
// puts there is private by its own mode. With follow false a symlink at dir is refused;
// with it, the directory it leads to is checked. The check and the chmod
// go through one open descriptor, so a rename in between cannot redirect
// them.
func Ensure(dir string, follow bool) (narrowed bool, err error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return false, err
	}
	if err := os.Mkdir(dir, 0o700); err == nil {
		// A umask cannot have widened it; an existing dir is checked below.
	} else if !errors.Is(err, fs.ErrExist) {
		return false, err
	}
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(dir, flags, 0)
	switch {
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return false, fmt.Errorf("%s: %w", dir, ErrNotDir)
	case err != nil:
		return false, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return false, fmt.Errorf("%s: %w (uid %d, not %d)", dir, ErrNotOwned, st.Uid, uid)
	}
	if st.Mode&0o022 == 0 {
		return false, nil
	}
	if err := unix.Fchmod(fd, 0o700); err != nil {
		return false, &fs.PathError{Op: "chmod", Path: dir, Err: err}
	}
	return true, nil
}
