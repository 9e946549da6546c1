package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
)

// followTick is how often a followed log is looked at for new output.
// Following is not a hot path; a modest tick keeps it simple and portable.
const followTick = 100 * time.Millisecond

// Logs writes a process's stdout (or stderr) file to w from the start.
// With follow it keeps writing what is appended until the process has
// exited (or its start failed) and the file is drained, or ctx ends.
// The file is read on the Cluster's machine (see the package notes).
func (c *Cluster) Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error {
	which := "stdout"
	if stderr {
		which = "stderr"
	}
	op := fmt.Sprintf("logs %s", name)
	c.mu.Lock()
	p := c.procs[name]
	var path string
	var over <-chan struct{}
	if p != nil {
		path, over = p.stdout, p.over
		if stderr {
			path = p.stderr
		}
	}
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s: %w", op, errdefs.ErrUnknownProcess)
	}
	if path == "" {
		return fmt.Errorf("%s: its %s goes to /dev/null", op, which)
	}
	if !follow {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		defer f.Close()
		if _, err := io.Copy(w, f); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return nil
	}

	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	tick := time.NewTicker(followTick)
	defer tick.Stop()
	for {
		// Take the state before reading, so output written just before the
		// exit is read after the exit is seen.
		ended := false
		select {
		case <-over:
			ended = true
		default:
		}
		if f == nil {
			var err error
			f, err = os.Open(path)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				f = nil // not created yet (the process is still starting)
			case err != nil:
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		if ended {
			return nil
		}
		select {
		case <-over:
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", op, ctx.Err())
		}
	}
}
