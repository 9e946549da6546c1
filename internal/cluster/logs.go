package cluster

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/logtail"
)

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

	done := func() bool {
		select {
		case <-over:
			return true
		default:
			return false
		}
	}
	if err := logtail.File(ctx, path, w, done, over); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
