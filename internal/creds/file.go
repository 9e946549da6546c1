package creds

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrInsecureFile is returned (wrapped) by ReadFile for a file that group or
// others may access.
var ErrInsecureFile = errors.New("accessible by group or others")

// maxFileSize bounds what ReadFile reads; credential files are a few KiB.
const maxFileSize = 16 << 20

// WriteFile writes v as JSON to path, readable by its owner only (0600).
// The data goes to a new temporary file (O_EXCL, 0600) in the same
// directory that is then renamed over path, so the content is never visible
// with wider permissions nor half-written. A missing parent directory is
// created with mode 0700.
func WriteFile(path string, v any) (err error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("creds: write %s: encode: %w", path, err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	// os.CreateTemp opens with O_CREATE|O_EXCL and mode 0600.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// The umask can only have narrowed 0600; make sure the owner can read.
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("creds: write %s: %w", path, err)
	}
	// Make the rename durable; failing to sync the directory loses nothing
	// that was asked for, so it is not an error.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// ReadFile decodes the JSON file at path into v. It refuses a file that is
// not a regular file or that group or others may access (mode & 0o077 != 0),
// wrapping ErrInsecureFile. Through a symlink the mode checked is that of the
// file it points to.
func ReadFile(path string, v any) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("creds: read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("creds: read %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("creds: read %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("creds: read %s: %w (mode %#o); it holds credentials: chmod 600 it or make it anew",
			path, ErrInsecureFile, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return fmt.Errorf("creds: read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return fmt.Errorf("creds: read %s: larger than %d bytes", path, maxFileSize)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("creds: read %s: decode: %w", path, err)
	}
	return nil
}
