//go:build linux

package supervise

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary run helperMain instead of the tests.
const helperEnv = "DROVER_SUPERVISE_HELPER"

// helperEnvList is the whole environment of a helper child. Under -race, a
// child would otherwise sleep a second at exit (atexit_sleep_ms).
func helperEnvList() []string {
	return []string{helperEnv + "=1", "GORACE=atexit_sleep_ms=0"}
}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	// goleak knows about os/signal's own goroutine.
	goleak.VerifyTestMain(m)
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// helperMain is the child side of the tests; args[0] is the mode.
func helperMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no mode")
		return 100
	}
	switch mode := args[0]; mode {
	case "exit": // exit N
		n, _ := strconv.Atoi(args[1])
		return n
	case "sleep":
		sleepForever()
	case "alloc": // alloc MiB: allocate and touch that much memory, then exit 0
		n, _ := strconv.Atoi(args[1])
		keep := make([][]byte, 0, n)
		for range n {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
		}
		fmt.Printf("allocated %d MiB\n", len(keep))
	case "killself": // killself SIGNUM
		n, _ := strconv.Atoi(args[1])
		_ = syscall.Kill(os.Getpid(), syscall.Signal(n))
		sleepForever()
	case "print": // argv, one env var, cwd to stdout; a line to stderr
		wd, _ := os.Getwd()
		fmt.Printf("args=%s\n", strings.Join(args[1:], "|"))
		fmt.Printf("FOO=%s\n", os.Getenv("FOO"))
		fmt.Printf("envlen=%d\n", len(os.Environ()))
		fmt.Printf("cwd=%s\n", wd)
		fmt.Fprintf(os.Stderr, "to stderr\n")
	case "grandchild": // grandchild [MODE]: start a grandchild in our group, then sleep
		exe, _ := os.Executable()
		gmode := "gsleep"
		if len(args) > 1 {
			gmode = args[1]
		}
		cmd := exec.Command(exe, gmode)
		cmd.Stdout = os.Stdout // the very file: no copying goroutine
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 101
		}
		sleepForever()
	case "gsleep", "gignore": // print pid and group, then sleep; gignore ignores SIGTERM
		if mode == "gignore" {
			signal.Ignore(syscall.SIGTERM)
		}
		pgid, _ := syscall.Getpgid(0)
		fmt.Printf("gpid %d pgid %d\n", os.Getpid(), pgid)
		sleepForever()
	case "escape": // escape setsid|daemon sleep|exit: leave a grandchild outside our group
		// setsid: a child in a new session; daemon: a double fork (a child
		// in a new session starts the grandchild and exits at once). The
		// grandchild (gignore: only SIGKILL ends it) says hello, which we
		// pass on before sleeping or exiting.
		exe, _ := os.Executable()
		r, w, err := os.Pipe()
		if err != nil {
			return 105
		}
		first := []string{"gignore"}
		if args[1] == "daemon" {
			first = []string{"fork1", "gignore"}
		}
		cmd := exec.Command(exe, first...)
		cmd.Stdout = w
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 106
		}
		w.Close()
		if args[1] == "daemon" {
			if err := cmd.Wait(); err != nil { // the middle one is gone
				fmt.Fprintln(os.Stderr, err)
				return 107
			}
		}
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 108
		}
		fmt.Print(line)
		if args[2] == "exit" {
			return 0
		}
		sleepForever()
	case "fork1": // fork1 MODE: start MODE with our stdout and exit at once
		exe, _ := os.Executable()
		cmd := exec.Command(exe, args[1])
		cmd.Stdout = os.Stdout
		if err := cmd.Start(); err != nil {
			return 109
		}
	case "echo": // stdin lines to stdout until EOF
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Printf("echo: %s\n", sc.Text())
		}
		fmt.Println("eof")
	case "cpus":
		st, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return 102
		}
		fmt.Println(cpusAllowed(st))
	case "ignoreterm":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		sleepForever()
	case "supervisor": // supervisor FIFO [keeper|cgroup|daemon]: a Supervisor whose child sleeps
		// With "keeper", the Supervisor has a keeper and its child leaves a
		// grandchild in its group; with "cgroup", also a cgroup, and the
		// child leaves a double-forked daemon outside its group; with
		// "daemon", the same daemon and a keeper, but no cgroup.
		mode := ""
		if len(args) > 2 {
			mode = args[2]
		}
		s, err := New(Options{Node: "helper", Keeper: mode != "", Cgroup: mode == "cgroup"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 103
		}
		exe, _ := os.Executable()
		child := []string{exe, "sleep"}
		switch mode {
		case "keeper":
			child = []string{exe, "grandchild"}
		case "cgroup", "daemon":
			child = []string{exe, "escape", "daemon", "sleep"}
		}
		pid, err := s.Start(Spec{Name: "sleeper", Args: child, Env: helperEnvList(), Stdout: args[1]})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 104
		}
		fmt.Printf("pid %d\n", pid)
		sleepForever()
	case "guard": // guard MODE...: run MODE under Guard, then report
		exe, _ := os.Executable()
		status, killed, err := Guard(slog.New(slog.NewTextHandler(os.Stderr, nil)), exe, append([]string{exe}, args[1:]...), os.Environ())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 110
		}
		fmt.Printf("guarded child signalled %v, killed %d\n", status.Signaled(), killed)
	default:
		fmt.Fprintf(os.Stderr, "helper: unknown mode %q\n", mode)
		return 100
	}
	return 0
}

func cpusAllowed(status []byte) string {
	for line := range bytes.Lines(status) {
		if v, ok := bytes.CutPrefix(line, []byte("Cpus_allowed_list:")); ok {
			return string(bytes.TrimSpace(v))
		}
	}
	return "?"
}

// ---- test utilities ----

const patience = 60 * time.Second // generous: we wait for events, not for time

func testExe(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// helper is a Spec that runs the test binary in a helper mode.
func helper(t testing.TB, name string, args ...string) Spec {
	return Spec{
		Name: name,
		Args: append([]string{testExe(t)}, args...),
		Env:  helperEnvList(),
	}
}

// newSup opens a Supervisor that is closed (and checked) when the test ends.
func newSup(t *testing.T, opts Options) *Supervisor {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(0); err != nil {
			t.Errorf("Close: %v", err)
		}
		if n := s.Running(); n != 0 {
			t.Errorf("Running after Close = %d", n)
		}
	})
	return s
}

// fifo makes a named pipe and opens its read end without blocking; a
// child writing into it is seen line by line, and its end (with all its
// group holding the write end) as EOF.
type fifo struct {
	t    *testing.T
	Path string
	f    *os.File
	r    *bufio.Reader
}

func newFIFO(t *testing.T) *fifo {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fifo{t: t, Path: path, f: f, r: bufio.NewReader(f)}
}

// line reads one line. Call it only once a writer has opened the FIFO
// (after Start returned): with no writer at all, a read is EOF.
func (ff *fifo) line() string {
	ff.t.Helper()
	_ = ff.f.SetReadDeadline(time.Now().Add(patience))
	s, err := ff.r.ReadString('\n')
	if err != nil {
		ff.t.Fatalf("read fifo: %q, %v", s, err)
	}
	return strings.TrimSuffix(s, "\n")
}

// eof waits until every writer has closed the FIFO: every process that
// held it has exited.
func (ff *fifo) eof() {
	ff.t.Helper()
	_ = ff.f.SetReadDeadline(time.Now().Add(patience))
	rest, err := io.ReadAll(ff.r)
	if err != nil {
		ff.t.Fatalf("waiting for EOF: %v (read %q)", err, rest)
	}
}

// procDead reports whether pid has exited: no /proc entry, or a zombie.
func procDead(pid int) (bool, string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return true, "gone"
	}
	if err != nil {
		return false, err.Error()
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false, string(b)
	}
	st := b[i+2]
	return st == 'Z' || st == 'X', string(st)
}

// waitDead waits for a process we cannot wait for (not our child) to be
// dead. Its exit has already been observed (EOF on its output), so this
// only covers the moment between closing its files and becoming a zombie.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		dead, st := procDead(pid)
		if dead {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive (state %s)", pid, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// procStart is the start time of pid (clock ticks since boot) and its
// state, or ok false when there is no such process.
func procStart(pid int) (start uint64, state byte, ppid, pgid int, ok bool) {
	st, ok := readStat(pid)
	return st.start, st.state, st.ppid, st.pgid, ok
}

// waitGone waits until the process pid that started at start no longer
// exists: not even as a zombie (it has been reaped).
func waitGone(t *testing.T, pid int, start uint64) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		st, state, _, _, ok := procStart(pid)
		if !ok || st != start {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still there (state %c)", pid, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
