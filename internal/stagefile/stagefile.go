// Package stagefile opens and copies the files staged into work dirs, in
// the way every side of drover must: regular files only (a device, FIFO or
// socket behind a name, or a symlink to one, would block or never end),
// opened without blocking, copied a chunk at a time so that a cancellation
// or a deadline ends the copy, and never past the size the file had when
// it was opened.
package stagefile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is wrapped by the errors for anything but a regular file.
var ErrNotRegular = errors.New("only regular files can be staged")

// ErrChanged is wrapped when a file changed while it was opened or copied.
var ErrChanged = errors.New("changed while it was being staged")

// Check tells whether path (after symlinks) is a regular file that can be
// staged; the error says what it is otherwise.
func Check(path string) (fs.FileInfo, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := Regular(info); err != nil {
		return nil, err
	}
	return info, nil
}

// Regular is nil for a regular file, else an error that says what it is.
func Regular(info fs.FileInfo) error {
	if info.Mode().IsRegular() {
		return nil
	}
	return fmt.Errorf("%s: %w", Kind(info.Mode()), ErrNotRegular)
}

// Kind names what a non-regular file is, for error messages.
func Kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "is a directory"
	case m&fs.ModeNamedPipe != 0:
		return "is a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "is a socket"
	case m&fs.ModeCharDevice != 0:
		return "is a character device"
	case m&fs.ModeDevice != 0:
		return "is a block device"
	case m&fs.ModeSymlink != 0:
		return "is a symlink"
	case m.IsRegular():
		return "is a regular file"
	}
	return "is not a regular file"
}

// Open opens path for reading if it is a regular file (after symlinks).
// It looks before it opens, so that a device is never opened (opening one
// may have effects, a tape rewinds), and opens without blocking, so that a
// FIFO swapped in meanwhile cannot hang it; the file opened must be the
// one looked at. The info returned is of the open file.
func Open(path string) (*os.File, fs.FileInfo, error) {
	before, err := Check(path)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err == nil && (!os.SameFile(before, info) || !info.Mode().IsRegular()) {
		err = ErrChanged
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info, nil
}

// chunk is what Copy reads and writes at a time, checking ctx in between.
const chunk = 256 << 10

// Copy copies the first size bytes of src into dst, which must be empty,
// a chunk at a time; it stops with ctx's cause once ctx is done. Chunks of
// zeros are skipped, not written, so a sparse file stays sparse. It fails
// with ErrChanged when src has fewer than size bytes, or more: a source
// that grows while it is read (a log being written) is not copied without
// end.
func Copy(ctx context.Context, dst, src *os.File, size int64) error {
	buf := make([]byte, min(size, chunk))
	zero := make([]byte, len(buf))
	for off := int64(0); off < size; {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		b := buf[:min(int64(len(buf)), size-off)]
		n, err := io.ReadFull(src, b)
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: %d bytes, not %d", ErrChanged, off+int64(n), size)
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(b, zero[:n]) {
			if _, err := dst.WriteAt(b, off); err != nil {
				return err
			}
		}
		off += int64(n)
	}
	// The length, should the file end in zeros that were skipped.
	if err := dst.Truncate(size); err != nil {
		return err
	}
	var one [1]byte
	if n, _ := src.Read(one[:]); n > 0 {
		return fmt.Errorf("%w: it grew past %d bytes", ErrChanged, size)
	}
	return nil
}
