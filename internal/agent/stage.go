package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/stagefile"
)

// stageIn copies one file into the work dir. Dst is resolved inside the
// work dir through os.Root, so "../" or a symlink cannot lead out of it.
// Only a regular source is copied (stagefile.Open), a chunk at a time
// until ctx ends. The copy goes to a new file that is then renamed over
// Dst: a file at Dst is replaced, never truncated or written through (it
// may be a hard link or a symlink to a file elsewhere), and a staging cut
// short leaves nothing half-written. A source that already is Dst (the
// work dir is where the file lives) is left as it is.
func stageIn(ctx context.Context, f node.StageFile, dir string) error {
	if !filepath.IsLocal(f.Dst) {
		return fmt.Errorf("stage %s: destination %q leaves the work dir", f.Src, f.Dst)
	}
	src, info, err := stagefile.Open(f.Src)
	if err != nil {
		return wrapStage(f.Src, err)
	}
	defer src.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return wrapStage(f.Src, err)
	}
	defer root.Close()
	if st, err := root.Stat(f.Dst); err == nil && os.SameFile(st, info) {
		return nil
	}
	d := filepath.Dir(f.Dst)
	if d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return wrapStage(f.Src, err)
		}
	}
	perm := info.Mode().Perm()
	if f.Mode != 0 {
		perm = f.Mode.Perm()
	}
	tmp := filepath.Join(d, fmt.Sprintf(".drover-stage-%016x", rand.Uint64()))
	dst, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return wrapStage(f.Src, err)
	}
	err = dst.Chmod(perm) // the umask may have narrowed it
	if err == nil {
		err = stagefile.Copy(ctx, dst, src, info.Size())
	}
	err = errors.Join(err, dst.Close())
	if err == nil {
		err = root.Rename(tmp, f.Dst)
	}
	if err != nil {
		root.Remove(tmp)
		return wrapStage(f.Src, err)
	}
	return nil
}

func wrapStage(src string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("stage %s: %w", src, err)
}

// collectOutputs copies the regular files matching patterns (relative to
// dir, path.Match syntax) into outDir, keeping their relative paths. It
// reads through os.Root so that a symlink cannot export a file from outside
// the work dir.
func collectOutputs(dir string, patterns []string, outDir string) error {
	if len(patterns) == 0 {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("collect outputs: %w", err)
	}
	defer root.Close()
	var errs []error
	for _, pat := range patterns {
		var matches []string
		if !strings.ContainsAny(pat, `*?[\`) {
			// A literal name: fs.Glob would Stat it, and a symlink out of
			// the work dir would silently match nothing. Lstat it instead,
			// so copyOut reports it.
			name := path.Clean(pat)
			if !fs.ValidPath(name) {
				errs = append(errs, fmt.Errorf("collect outputs %q: not a path inside the work dir", pat))
				continue
			}
			if _, err := root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			matches = []string{name}
		} else {
			var err error
			matches, err = fs.Glob(root.FS(), pat)
			if err != nil {
				errs = append(errs, fmt.Errorf("collect outputs %q: %w", pat, err))
				continue
			}
		}
		for _, m := range matches {
			if err := copyOut(root, m, outDir); err != nil {
				errs = append(errs, fmt.Errorf("collect output %s: %w", m, err))
			}
		}
	}
	return errors.Join(errs...)
}

func copyOut(root *os.Root, name, outDir string) error {
	info, err := root.Lstat(name)
	if err != nil {
		return err
	}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		return errors.New("is a symlink; outputs must be regular files")
	case info.IsDir():
		return fs.WalkDir(root.FS(), name, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			return copyOut(root, p, outDir)
		})
	case !info.Mode().IsRegular():
		return errors.New("not a regular file")
	}
	// Not blocking, and checked again once open: a FIFO put in its place
	// meanwhile must not hang the agent.
	src, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	if info, err = src.Stat(); err != nil {
		return err
	}
	if err := stagefile.Regular(info); err != nil {
		return err
	}
	dst, err := createOutput(outDir, name, info.Mode().Perm())
	if err != nil {
		return err
	}
	// No further than its size now: a file something still appends to
	// would otherwise never end.
	_, err = io.Copy(dst, io.LimitReader(src, info.Size()))
	return errors.Join(err, dst.Close())
}
