package stagefile_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/stagefile"
)

func TestOpenRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", link); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{fifo: "FIFO", link: "character device", dir: "directory"} {
		f, _, err := stagefile.Open(p)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, stagefile.ErrNotRegular) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrNotRegular saying %q", p, err, want)
		}
	}
}

// Copy takes exactly the size given: a source that turns out longer or
// shorter fails with ErrChanged, and a cancelled context stops it.
func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	copyN := func(ctx context.Context, size int64) (string, error) {
		f, _, err := stagefile.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dst, err := os.CreateTemp(dir, "dst")
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		err = stagefile.Copy(ctx, dst, f, size)
		data, _ := os.ReadFile(dst.Name())
		return string(data), err
	}
	if got, err := copyN(context.Background(), 10); err != nil || got != "0123456789" {
		t.Errorf("whole: %q %v", got, err)
	}
	if _, err := copyN(context.Background(), 4); !errors.Is(err, stagefile.ErrChanged) {
		t.Errorf("grown: %v, want ErrChanged", err)
	}
	if _, err := copyN(context.Background(), 20); !errors.Is(err, stagefile.ErrChanged) {
		t.Errorf("shrunk: %v, want ErrChanged", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := copyN(ctx, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
