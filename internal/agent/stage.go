package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/drover-hpc/drover/internal/node"
)

// stageIn copies one file into the work dir. Dst is resolved inside the
// work dir through os.Root, so "../" or a symlink cannot lead out of it.
func stageIn(f node.StageFile, dir string) error {
	if !filepath.IsLocal(f.Dst) {
		return fmt.Errorf("stage %s: destination %q leaves the work dir", f.Src, f.Dst)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("stage %s: %w", f.Src, err)
	}
	defer root.Close()
	src, err := os.Open(f.Src)
	if err != nil {
		return fmt.Errorf("stage %w", err)
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return fmt.Errorf("stage %w", err)
	}
	if info.IsDir() {
		return fmt.Errorf("stage %s: is a directory", f.Src)
	}
	if d := filepath.Dir(f.Dst); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("stage %s: %w", f.Src, err)
		}
	}
	perm := info.Mode().Perm()
	if f.Mode != 0 {
		perm = f.Mode.Perm()
	}
	dst, err := root.OpenFile(f.Dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("stage %s: %w", f.Src, err)
	}
	// A file already there (an earlier attempt's) keeps its mode through
	// O_CREATE; the copy must have the source's.
	err = dst.Chmod(perm)
	if err == nil {
		_, err = io.Copy(dst, src)
	}
	return errors.Join(wrapStage(f.Src, err), wrapStage(f.Src, dst.Close()))
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
	src, err := root.Open(name)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := createOutput(outDir, name, info.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	return errors.Join(err, dst.Close())
}
