package agent_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// startErr starts spec and returns its error, failing the test if the
// start does not return within the backstop (a staging that hangs).
func startErr(t *testing.T, a node.Node, ctx context.Context, spec node.ProcessSpec) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := a.Start(ctx, spec)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(backstop):
		t.Fatalf("start %s still staging after %v", spec.Name, backstop)
		return nil
	}
}

// A FIFO, a symlink to /dev/zero, a directory and a socket are refused,
// saying what they are, without opening (a FIFO with no writer would block
// forever, /dev/zero never ends); the agent goes on working.
func TestStageRefusesNonRegular(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	devzero := filepath.Join(dir, "devzero")
	if err := os.Symlink("/dev/zero", devzero); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, src, want string }{
		{"fifo", fifo, "FIFO"},
		{"devzero", devzero, "character device"},
		{"dir", t.TempDir(), "directory"},
		{"sock", sock, "socket"},
	} {
		wd := tmpfs(t, "2m") // should /dev/zero be copied after all, it ends here
		err := startErr(t, a, context.Background(), node.ProcessSpec{Name: c.name, Dir: wd, Args: helper("exit=0"),
			Files: []node.StageFile{{Src: c.src, Dst: "in"}}})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "only regular files") {
			t.Errorf("%s: staging %s: %v; want a refusal saying %q", c.name, c.src, err, c.want)
		}
		if entries, _ := os.ReadDir(wd); len(entries) != 0 {
			t.Errorf("%s: the work dir holds %v", c.name, entries)
		}
	}
	start(t, a, node.ProcessSpec{Name: "after", Args: helper("exit=0")})
	wantExit(t, r.One("after"), 0, 0)
	r.Take()
}

// Staging a file onto itself (the work dir is where it lives, directly or
// by a hard link) leaves it as it is: it used to be truncated to 0 bytes
// by the open of the destination, and the run reported success.
func TestStageOntoItselfKeepsIt(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	wd := t.TempDir()
	data := writeSrc(t, wd, "data.txt", "precious\n", 0o640)
	if err := os.Link(data, filepath.Join(wd, "hard.txt")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{Name: "self", Dir: wd, Stdout: out,
		Files: []node.StageFile{{Src: data, Dst: "data.txt"}, {Src: data, Dst: "hard.txt"}},
		Args:  helper("cat=data.txt")})
	wantExit(t, r.One("self"), 0, 0)
	if got := readFile(t, data); got != "precious\n" {
		t.Errorf("the source now holds %q", got)
	}
	if got := readFile(t, out); !strings.Contains(got, `content="precious\n"`) {
		t.Errorf("the process saw %q", got)
	}
}

// A file at the destination is replaced, never written through: neither
// the file a symlink there points to nor another name of a hard link
// there changes.
func TestStageReplacesLinksAtDestination(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	wd := t.TempDir()
	outside := writeSrc(t, t.TempDir(), "victim", "victim\n", 0o644)
	if err := os.Symlink(outside, filepath.Join(wd, "sym")); err != nil {
		t.Fatal(err)
	}
	other := writeSrc(t, wd, "other", "other\n", 0o644)
	if err := os.Link(other, filepath.Join(wd, "hard")); err != nil {
		t.Fatal(err)
	}
	src := writeSrc(t, t.TempDir(), "new", "new\n", 0o644)
	start(t, a, node.ProcessSpec{Name: "links", Dir: wd, Args: helper("exit=0"),
		Files: []node.StageFile{{Src: src, Dst: "sym"}, {Src: src, Dst: "hard"}}})
	wantExit(t, r.One("links"), 0, 0)
	if got := readFile(t, outside); got != "victim\n" {
		t.Errorf("written through the symlink: %q", got)
	}
	if got := readFile(t, other); got != "other\n" {
		t.Errorf("written through the hard link: %q", got)
	}
	for _, n := range []string{"sym", "hard"} {
		p := filepath.Join(wd, n)
		if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() || readFile(t, p) != "new\n" {
			t.Errorf("%s: not the staged copy (%v)", n, err)
		}
	}
}

// tmpfs mounts a small tmpfs on a new directory until the test ends.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// slowSource is a regular file that takes hours to read: 64 TiB of holes
// on a tiny tmpfs. The work dir is a tiny tmpfs too: staging it sparse
// takes no room, and a copy that wrote it out would fail at once instead
// of going on.
func slowSource(t *testing.T) (src, wd string) {
	t.Helper()
	src = filepath.Join(tmpfs(t, "1m"), "huge")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 40); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return src, tmpfs(t, "2m")
}

// waitStaging waits until the copy into wd has begun.
func waitStaging(t *testing.T, wd string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(wd, ".drover-stage-*")); len(m) > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no staging began in %s", wd)
}

// CancelAll, Shutdown, the caller's context and the stage timeout each
// end a staging that would go on for hours, leaving nothing in the work
// dir; nothing starts.
func TestStageEnds(t *testing.T) {
	cases := []struct {
		name    string
		timeout time.Duration
		end     func(a *agent.Agent, cancel context.CancelFunc)
		want    error
	}{
		{"cancel-all", 0, func(a *agent.Agent, _ context.CancelFunc) { a.CancelAll(context.Background(), time.Second) }, agent.ErrCancelled},
		{"shutdown", 0, func(a *agent.Agent, _ context.CancelFunc) { go a.Shutdown(time.Second) }, agent.ErrCancelled},
		{"context", 0, func(_ *agent.Agent, cancel context.CancelFunc) { cancel() }, context.Canceled},
		{"timeout", 200 * time.Millisecond, func(*agent.Agent, context.CancelFunc) {}, errdefs.ErrStageTimeout},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, _ := newAgent(t)
			src, wd := slowSource(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := a.Start(ctx, node.ProcessSpec{Name: "slow", Dir: wd, Args: helper("exit=0"),
					StageTimeout: c.timeout, Files: []node.StageFile{{Src: src, Dst: "huge"}}})
				errc <- err
			}()
			if c.timeout == 0 {
				waitStaging(t, wd)
				c.end(a, cancel)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, c.want) {
					t.Errorf("start: %v; want %v", err, c.want)
				}
			case <-time.After(backstop):
				t.Fatalf("staging not ended after %v", backstop)
			}
			if entries, _ := os.ReadDir(wd); len(entries) != 0 {
				t.Errorf("the work dir holds %v", entries)
			}
		})
	}
}

// A sparse file is staged whole and stays sparse.
func TestStageSparse(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	src := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(128 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wd := t.TempDir()
	start(t, a, node.ProcessSpec{Name: "sparse", Dir: wd, Args: helper("exit=0"), Files: []node.StageFile{{Src: src, Dst: "s"}}})
	wantExit(t, r.One("sparse"), 0, 0)
	got, err := os.ReadFile(filepath.Join(wd, "s"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 128<<20 || string(got[64<<20:64<<20+6]) != "middle" {
		t.Fatalf("staged copy: %d bytes, %q at 64 MiB", len(got), got[64<<20:64<<20+6])
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(wd, "s"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 16<<20 {
		t.Errorf("the copy takes %d bytes on disk; the source's 128 MiB are nearly all holes", st.Blocks*512)
	}
}

// A scratch root made beforehand by another user, open to all (0777), is
// not used: that user could read the staged files, or swap a work dir for
// a symlink. The agent works in a fresh private dir instead, says so, and
// removes it when it closes.
func TestScratchRootOfAnotherUserNotUsed(t *testing.T) {
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	theirs := filepath.Join(t.TempDir(), "drover-0")
	if err := os.Mkdir(theirs, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(theirs, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, uid, gid); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	a, _ := newAgent(t, func(o *agent.Options) {
		o.Scratch = theirs
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	r := nodetest.NewExits(t, a)
	src := writeSrc(t, t.TempDir(), "secret", "secret\n", 0o600)
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{Name: "wd", Stdout: out, Args: helper("env=DROVER_WORKDIR"),
		Files: []node.StageFile{{Src: src, Dst: "secret"}}})
	wantExit(t, r.One("wd"), 0, 0)
	wd := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(readFile(t, out)), "DROVER_WORKDIR="))
	if wd == "" || strings.HasPrefix(wd, theirs+"/") {
		t.Errorf("the work dir %q is in the other user's scratch root %s", wd, theirs)
	}
	if entries, _ := os.ReadDir(theirs); len(entries) != 0 {
		t.Errorf("the other user's dir holds %v", entries)
	}
	mu.Lock()
	got := logs.String()
	mu.Unlock()
	if !strings.Contains(got, "scratch root not used") || !strings.Contains(got, theirs) {
		t.Errorf("no warning about %s in the log:\n%s", theirs, got)
	}
	root := filepath.Dir(wd)
	if err := a.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the fresh scratch root %s is left after Close: %v", root, err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
