// Package childtest lets a test binary double as the child program of its
// tests, like Go's own os/exec tests: TestMain calls Main, which runs the
// child's steps instead of the tests when the binary was started as a
// child. It is shared by the packages whose tests start processes through
// an agent (the supervisor reaps every child of the test process, so those
// tests may start processes by no other means).
package childtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

const (
	helperVar = "DROVER_TEST_HELPER"
	// ownerVar holds the pid of the test process: a helper (grandchildren
	// in particular, which have no parent-death signal) ends when the test
	// process is gone, so a crashed test leaves nothing behind for long.
	ownerVar = "DROVER_TEST_OWNER"
)

// exe is the absolute path of the test binary.
var exe string

// Exe is the absolute path of the test binary, the child program.
func Exe() string { return exe }

// Main is TestMain: it runs the child when started as one, else the tests
// (with goleak).
func Main(m *testing.M) {
	if os.Getenv(helperVar) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	abs, err := filepath.Abs(os.Args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "test binary path:", err)
		os.Exit(2)
	}
	exe = abs
	// Children inherit these through the agent's default base environment.
	// Under -race a child would otherwise sleep a second at exit.
	os.Setenv(helperVar, "1")
	os.Setenv(ownerVar, strconv.Itoa(os.Getpid()))
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	goleak.VerifyTestMain(m)
}

// Env is a complete environment for a helper child, for agents given
// an explicit BaseEnv.
func Env(extra ...string) []string {
	return append([]string{
		helperVar + "=1",
		ownerVar + "=" + strconv.Itoa(os.Getpid()),
		"GORACE=atexit_sleep_ms=0",
		"PATH=" + os.Getenv("PATH"),
	}, extra...)
}

// Argv returns the argv that runs the helper with the given steps.
func Argv(steps ...string) []string {
	return append([]string{exe}, steps...)
}

// helperMain runs the steps in args in order; each step is "verb" or
// "verb=arg". It returns the exit status.
func helperMain(args []string) int {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	fail := func(format string, a ...any) int {
		out.Flush()
		fmt.Fprintf(os.Stderr, "helper: "+format+"\n", a...)
		return 100
	}
	for _, step := range args {
		verb, arg, _ := strings.Cut(step, "=")
		switch verb {
		case "out": // out=TEXT: a line to stdout
			fmt.Fprintln(out, arg)
		case "err": // err=TEXT: a line to stderr
			fmt.Fprintln(os.Stderr, arg)
		case "env": // env=KEY: "KEY=value" or "KEY unset"
			if v, ok := os.LookupEnv(arg); ok {
				fmt.Fprintf(out, "%s=%s\n", arg, v)
			} else {
				fmt.Fprintf(out, "%s unset\n", arg)
			}
		case "envcount": // envcount=KEY: how often KEY appears in the raw environment
			raw, err := os.ReadFile("/proc/self/environ")
			if err != nil {
				return fail("%v", err)
			}
			n := 0
			for _, kv := range strings.Split(string(raw), "\x00") {
				if strings.HasPrefix(kv, arg+"=") {
					n++
				}
			}
			fmt.Fprintf(out, "%s count=%d\n", arg, n)
		case "cwd":
			wd, err := os.Getwd()
			if err != nil {
				return fail("%v", err)
			}
			fmt.Fprintf(out, "cwd=%s\n", wd)
		case "cpus": // the CPU affinity as the kernel shows it
			v, err := ProcStatus("Cpus_allowed_list")
			if err != nil {
				return fail("%v", err)
			}
			fmt.Fprintf(out, "cpus=%s\n", v)
		case "pgid":
			fmt.Fprintf(out, "pgid=%d pid=%d\n", syscall.Getpgrp(), os.Getpid())
		case "write": // write=NAME=CONTENT, relative to the work dir
			name, content, _ := strings.Cut(arg, "=")
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return fail("%v", err)
			}
			if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
				return fail("%v", err)
			}
		case "symlink": // symlink=NAME=TARGET
			name, target, _ := strings.Cut(arg, "=")
			if err := os.Symlink(target, name); err != nil {
				return fail("%v", err)
			}
		case "cat": // cat=NAME: the file's content and mode
			data, err := os.ReadFile(arg)
			if err != nil {
				return fail("%v", err)
			}
			st, err := os.Stat(arg)
			if err != nil {
				return fail("%v", err)
			}
			fmt.Fprintf(out, "cat %s mode=%o content=%q\n", arg, st.Mode().Perm(), data)
		case "touch": // touch=PATH: create PATH atomically (a readiness signal)
			if err := atomicWrite(arg, ""); err != nil {
				return fail("%v", err)
			}
		case "ignoreterm":
			signal.Ignore(syscall.SIGTERM)
		case "grandchild": // grandchild=PIDFILE: a sleeping child in our process group
			out.Flush()
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				return fail("%v", err)
			}
			p, err := os.StartProcess(os.Args[0], []string{os.Args[0], "sleep=2m"}, &os.ProcAttr{
				Env:   os.Environ(),
				Files: []*os.File{null, null, null},
			})
			null.Close()
			if err != nil {
				return fail("start grandchild: %v", err)
			}
			if err := atomicWrite(arg, strconv.Itoa(p.Pid)); err != nil {
				return fail("%v", err)
			}
			p.Release()
		case "sleep": // sleep=DURATION, cut short when the test process is gone
			d, err := time.ParseDuration(arg)
			if err != nil {
				return fail("%v", err)
			}
			out.Flush()
			helperSleep(d)
		case "stdin": // copy stdin to stdout line by line until EOF or "quit"
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() {
				if sc.Text() == "quit" {
					break
				}
				fmt.Fprintf(out, "got %s\n", sc.Text())
				out.Flush()
			}
		case "listen": // listen=PORT: bind a TCP port
			l, err := net.Listen("tcp", ":"+arg)
			if err != nil {
				return fail("listen: %v", err)
			}
			l.Close()
			fmt.Fprintf(out, "listened %s\n", arg)
		case "listenenv": // listenenv=VAR: bind the TCP port named by $VAR
			l, err := net.Listen("tcp", ":"+os.Getenv(arg))
			if err != nil {
				return fail("listen: %v", err)
			}
			l.Close()
			fmt.Fprintf(out, "listened %s=%s\n", arg, os.Getenv(arg))
		case "kill": // kill=SIGNUM: kill ourselves
			n, err := strconv.Atoi(arg)
			if err != nil {
				return fail("%v", err)
			}
			out.Flush()
			signal.Reset()
			syscall.Kill(os.Getpid(), syscall.Signal(n))
			helperSleep(time.Minute)
			return fail("still alive after signal %d", n)
		case "marker": // marker=NAME=N: the first time, create NAME and exit N
			name, code, _ := strings.Cut(arg, "=")
			n, err := strconv.Atoi(code)
			if err != nil {
				return fail("%v", err)
			}
			if _, err := os.Stat(name); err == nil {
				fmt.Fprintln(out, "later attempt")
				continue
			}
			if err := atomicWrite(name, ""); err != nil {
				return fail("%v", err)
			}
			fmt.Fprintln(out, "first attempt")
			return n
		case "stamp": // stamp=FILE=TAG: append a line about this process to FILE
			file, tag, _ := strings.Cut(arg, "=")
			var ts unix.Timespec
			if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
				return fail("%v", err)
			}
			cpus, err := ProcStatus("Cpus_allowed_list")
			if err != nil {
				return fail("%v", err)
			}
			line := fmt.Sprintf("%s %d %s %s %s %d\n", tag, ts.Nano(), os.Getenv("DROVER_INSTANCE"),
				os.Getenv("DROVER_HWTHREADS"), cpus, os.Getpid())
			f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return fail("%v", err)
			}
			_, err = f.WriteString(line) // one write(2): lines do not interleave
			f.Close()
			if err != nil {
				return fail("%v", err)
			}
		case "waitfile": // waitfile=PATH: wait until PATH exists
			owner, _ := strconv.Atoi(os.Getenv(ownerVar))
			out.Flush()
			for {
				if _, err := os.Stat(arg); err == nil {
					break
				}
				if owner > 0 && syscall.Kill(owner, 0) == syscall.ESRCH {
					return 99
				}
				time.Sleep(10 * time.Millisecond)
			}
		case "exit": // exit=N
			n, err := strconv.Atoi(arg)
			if err != nil {
				return fail("%v", err)
			}
			return n
		default:
			return fail("unknown step %q", step)
		}
	}
	return 0
}

// helperSleep sleeps for d, or less when the test process has gone.
func helperSleep(d time.Duration) {
	owner, _ := strconv.Atoi(os.Getenv(ownerVar))
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if owner > 0 && syscall.Kill(owner, 0) == syscall.ESRCH {
			os.Exit(99)
		}
		time.Sleep(min(100*time.Millisecond, time.Until(end)))
	}
}

// ProcStatus reads a field of /proc/self/status.
func ProcStatus(key string) (string, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no %s in /proc/self/status", key)
}

func atomicWrite(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// --- test-side helpers ---

// WaitFile waits for path to exist and returns its content.
func WaitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			return string(data)
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("read %s: %v", path, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Alive reports whether pid names a process that has not yet died (a
// zombie counts as dead).
func Alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...; comm may contain spaces and parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// WaitGone waits until pid is dead; it fails the test if it never is.
func WaitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for Alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d is still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Lines parses "KEY=VALUE" lines of helper output into a map.
func Lines(text string) map[string]string {
	m := make(map[string]string)
	for _, l := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// ReadFile reads a file the test needs.
func ReadFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// CPUSet parses a cpu list such as "0-2,5" into a sorted slice.
func CPUSet(t *testing.T, list string) []int {
	t.Helper()
	var out []int
	for _, part := range strings.Split(strings.TrimSpace(list), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			t.Fatalf("bad cpu list %q", list)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				t.Fatalf("bad cpu list %q", list)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	sort.Ints(out)
	return out
}
