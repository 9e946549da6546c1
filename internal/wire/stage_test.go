package wire

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// hugeSparse makes a regular file that takes hours to read, 64 TiB of
// holes, on a tiny tmpfs of its own.
func hugeSparse(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	p := filepath.Join(dir, "huge")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 40); err != nil {
		t.Fatal(err)
	}
	return p
}

// On a node without our filesystem, the staged files are read and sent
// here, before the start reaches the agent: CancelAll and the stage
// timeout end that too, and the node goes on working.
func TestRemoteStageEnds(t *testing.T) {
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	huge := hugeSparse(t)
	for _, c := range []struct {
		name    string
		timeout time.Duration
		want    error
	}{
		{"cancel-all", 0, errStageCancelled},
		{"timeout", 200 * time.Millisecond, errdefs.ErrStageTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := helperSpec(t, "huge-"+c.name, "exit", "0")
			spec.Files = []node.StageFile{{Src: huge, Dst: "huge"}}
			spec.StageTimeout = c.timeout
			errc := make(chan error, 1)
			go func() {
				_, err := rs.n.Start(context.Background(), spec)
				errc <- err
			}()
			deadline := time.After(patience)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case err := <-errc:
					if !errors.Is(err, c.want) {
						t.Fatalf("start: %v; want %v", err, c.want)
					}
					return
				case <-tick.C:
					if c.timeout == 0 {
						// Whenever the start has got as far as staging.
						if err := rs.n.CancelAll(ctxT(t), time.Second); err != nil {
							t.Fatal(err)
						}
					}
				case <-deadline:
					t.Fatalf("staging not ended after %v", patience)
				}
			}
		})
	}
	spec := helperSpec(t, "after", "files", "cat=small")
	spec.Files = []node.StageFile{{Src: rs.write(t, "small", []byte("s"), 0o644), Dst: "small"}}
	if _, err := rs.n.Start(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	wantSuccess(t, x.One("after"))
}

// A FIFO or a device is refused on the manager's side, never opened.
func TestRemoteStageRefusesNonRegular(t *testing.T) {
	rs := newRemote(t, quick, nil)
	fifo := rs.path(t, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{fifo, "/dev/zero"} {
		spec := helperSpec(t, "bad", "exit", "0")
		spec.Files = []node.StageFile{{Src: src, Dst: "in"}}
		_, err := rs.n.Start(ctxT(t), spec)
		if err == nil || !strings.Contains(err.Error(), "only regular files can be staged") {
			t.Errorf("staging %s: %v", src, err)
		}
	}
}
