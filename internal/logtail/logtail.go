// Package logtail writes a growing output file to a writer as it grows
// (tail -f), for `drover logs -f` and the dashboard alike: one tick, one
// way of waiting for a file not created yet and of noticing one replaced.
package logtail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// Tick is how often a followed file is looked at for new output.
// Following is not a hot path; a modest tick keeps it simple and portable
// (no inotify, works on shared file systems).
const Tick = 100 * time.Millisecond

// Replaced is written between the end of a file and the start of the file
// that replaced it under the same path (a retry moves the old output
// aside and starts a new one).
const Replaced = "\n--- drover: a new attempt's output ---\n"

// File writes the file at path to w from its start, then whatever is
// appended, until done reports that its writer has finished and what the
// file holds is written, or ctx ends (ctx.Err() is returned). done is
// asked before each read, so output written just before the end is read
// after the end is seen. A file not there yet is waited for (its writer
// is still starting); if it is still missing once done holds, there was
// nothing to show. wake, if not nil, cuts a tick short (the writer ended).
// w is flushed after each read when it has a Flush method.
func File(ctx context.Context, path string, w io.Writer, done func() bool, wake <-chan struct{}) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	tick := time.NewTicker(Tick)
	defer tick.Stop()
	for {
		ended := done()
		if f != nil && replaced(path, f) {
			if _, err := io.Copy(w, f); err != nil { // what the old file still had
				return fmt.Errorf("follow %s: %w", path, err)
			}
			f.Close()
			f = nil
			if _, err := io.WriteString(w, Replaced); err != nil {
				return fmt.Errorf("follow %s: %w", path, err)
			}
		}
		if f == nil {
			var err error
			f, err = os.Open(path)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				f = nil
			case err != nil:
				return fmt.Errorf("follow %s: %w", path, err)
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return fmt.Errorf("follow %s: %w", path, err)
			}
			if fl, ok := w.(interface{ Flush() }); ok {
				fl.Flush()
			}
		}
		if ended {
			return nil
		}
		select {
		case <-tick.C:
		case <-wake:
			wake = nil // closed for good once the writer ended
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// replaced tells whether path now names another file than f.
func replaced(path string, f *os.File) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	cur, err := f.Stat()
	return err == nil && !os.SameFile(fi, cur)
}
