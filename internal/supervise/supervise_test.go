//go:build linux

package supervise

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

func TestExitCode(t *testing.T) {
	s := newSup(t, Options{Node: "n1"})
	x := nodetest.NewExits(t, s)
	before := time.Now()
	pid, err := s.Start(helper(t, "three", "exit", "3"))
	if err != nil {
		t.Fatal(err)
	}
	if pid <= 0 {
		t.Fatalf("pid %d", pid)
	}
	e := x.One("three")
	if e.Code != 3 || e.Signal != 0 || e.Success() {
		t.Errorf("exit = %+v, want code 3", e)
	}
	if e.Name != "three" || e.Node != "n1" {
		t.Errorf("name/node = %q/%q", e.Name, e.Node)
	}
	if e.Start.Before(before) || e.End.Before(e.Start) {
		t.Errorf("times: start %v end %v (test began %v)", e.Start, e.End, before)
	}
	if e.String() != "exit 3" {
		t.Errorf("String = %q", e.String())
	}
	if _, err := s.Start(helper(t, "zero", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	if e := x.One("zero"); !e.Success() {
		t.Errorf("exit = %+v, want success", e)
	}
	if n := s.Running(); n != 0 {
		t.Errorf("Running = %d", n)
	}
}

func TestSignalExit(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		name := "self-" + node.SignalName(sig)
		if _, err := s.Start(helper(t, name, "killself", fmt.Sprint(int(sig)))); err != nil {
			t.Fatal(err)
		}
		e := x.One(name)
		if e.Signal != sig || e.Code != -1 {
			t.Errorf("%s: exit = %+v, want signal %v and code -1", name, e, sig)
		}
		if want := "signal " + node.SignalName(sig); e.String() != want {
			t.Errorf("%s: String = %q, want %q", name, e.String(), want)
		}
	}
}

func TestOutputEnvDir(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	dir := t.TempDir()
	outPath := filepath.Join(dir, "out.txt")
	errPath := filepath.Join(t.TempDir(), "err.txt")
	stale := bytes.Repeat([]byte("stale content that must go\n"), 100)
	for _, p := range []string{outPath, errPath} {
		if err := os.WriteFile(p, stale, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spec := helper(t, "print", "print", "a b", "", "c")
	spec.Env = append(spec.Env, "FOO=bar baz")
	spec.Dir = dir
	spec.Stdout = "out.txt" // relative to Dir
	spec.Stderr = errPath
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if e := x.One("print"); !e.Success() {
		t.Fatalf("exit = %+v", e)
	}
	got, _ := os.ReadFile(outPath)
	want := fmt.Sprintf("args=a b||c\nFOO=bar baz\nenvlen=3\ncwd=%s\n", dir)
	if string(got) != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, _ := os.ReadFile(errPath); string(got) != "to stderr\n" {
		t.Errorf("stderr = %q", got)
	}

	// Same path for both: one shared descriptor, nothing overwritten.
	both := filepath.Join(dir, "both.txt")
	if err := os.WriteFile(both, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	spec.Name, spec.Stdout, spec.Stderr = "print2", both, both
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if e := x.One("print2"); !e.Success() {
		t.Fatalf("exit = %+v", e)
	}
	if got, _ := os.ReadFile(both); string(got) != want+"to stderr\n" {
		t.Errorf("shared output = %q", got)
	}
	if fi, err := os.Stat(both); err != nil || fi.Mode().Perm()&0o600 != 0o600 {
		t.Errorf("stat: %v %v", fi, err)
	}

	// No paths: /dev/null, and the start still works.
	spec.Name, spec.Stdout, spec.Stderr = "print3", "", ""
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if e := x.One("print3"); !e.Success() {
		t.Fatalf("exit = %+v", e)
	}
}

func TestPathLookup(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	bin := t.TempDir()
	if err := os.Symlink(testExe(t), filepath.Join(bin, "drover-test-helper")); err != nil {
		t.Fatal(err)
	}
	// Also a non-executable file of the same name earlier in PATH: skipped.
	decoy := t.TempDir()
	if err := os.WriteFile(filepath.Join(decoy, "drover-test-helper"), []byte("no"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec{
		Name: "viaenv",
		Args: []string{"drover-test-helper", "exit", "7"},
		Env:  append(helperEnvList(), "PATH="+decoy+":"+bin),
	}
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if e := x.One("viaenv"); e.Code != 7 {
		t.Errorf("exit = %+v", e)
	}

	// No PATH in Env: this process's PATH.
	t.Setenv("PATH", bin)
	spec.Name, spec.Env = "viaown", helperEnvList()
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if e := x.One("viaown"); e.Code != 7 {
		t.Errorf("exit = %+v", e)
	}

	// A PATH in Env that lacks it wins over ours.
	spec.Name, spec.Env = "notfound", append(helperEnvList(), "PATH="+decoy)
	_, err := s.Start(spec)
	wd, _ := os.Getwd() // no Dir: the child's is ours
	if want := `start notfound: executable "drover-test-helper" not found in PATH=` + decoy + ` (work dir ` + wd + `)`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func TestStopKillsGroup(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	out := newFIFO(t)
	spec := helper(t, "tree", "grandchild")
	spec.Stdout = out.Path
	pid, err := s.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	var gpid, pgid int
	if _, err := fmt.Sscanf(out.line(), "gpid %d pgid %d", &gpid, &pgid); err != nil {
		t.Fatal(err)
	}
	if pgid != pid {
		t.Fatalf("grandchild in group %d, want %d (the leader)", pgid, pid)
	}
	if err := s.Stop("tree", time.Minute); err != nil {
		t.Fatal(err)
	}
	e := x.One("tree")
	if e.Signal != syscall.SIGTERM {
		t.Errorf("exit = %+v, want SIGTERM", e)
	}
	out.eof() // the grandchild held the write end too
	waitDead(t, gpid)
	if err := s.Stop("tree", 0); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("Stop after exit = %v, want errdefs.ErrNotRunning", err)
	}
}

// TestStopKillsStragglers: the leader dies of SIGTERM at once, a grandchild
// ignores it; the grandchild is killed when the leader exits, not an hour
// later when the grace would end.
func TestStopKillsStragglers(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	out := newFIFO(t)
	spec := helper(t, "tree", "grandchild", "gignore")
	spec.Stdout = out.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	var gpid int
	if _, err := fmt.Sscanf(out.line(), "gpid %d", &gpid); err != nil { // SIGTERM ignored from now on
		t.Fatal(err)
	}
	if err := s.Stop("tree", time.Hour); err != nil {
		t.Fatal(err)
	}
	if e := x.One("tree"); e.Signal != syscall.SIGTERM {
		t.Errorf("exit = %+v, want SIGTERM", e)
	}
	out.eof()
	waitDead(t, gpid)
}

func TestStopEscalatesToKill(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	out := newFIFO(t)
	spec := helper(t, "stubborn", "ignoreterm")
	spec.Stdout = out.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if l := out.line(); l != "ready" { // SIGTERM is ignored from now on
		t.Fatalf("line %q", l)
	}
	const grace = 300 * time.Millisecond
	t0 := time.Now()
	if err := s.Stop("stubborn", grace); err != nil {
		t.Fatal(err)
	}
	e := x.One("stubborn")
	if e.Signal != syscall.SIGKILL {
		t.Errorf("exit = %+v, want SIGKILL", e)
	}
	if d := time.Since(t0); d < grace { // a lower bound cannot flake
		t.Errorf("killed after %v, before the grace of %v", d, grace)
	}
}

func TestKill(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	if _, err := s.Start(helper(t, "k", "sleep")); err != nil {
		t.Fatal(err)
	}
	if err := s.Kill("k"); err != nil {
		t.Fatal(err)
	}
	if e := x.One("k"); e.Signal != syscall.SIGKILL || e.Code != -1 {
		t.Errorf("exit = %+v", e)
	}
	if err := s.Kill("k"); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("Kill after exit = %v", err)
	}
	err := s.Kill("nope")
	if !errors.Is(err, errdefs.ErrUnknownProcess) || err.Error() != "kill nope: unknown process" {
		t.Errorf("Kill unknown = %v", err)
	}
	err = s.Stop("sim.9", time.Second)
	if !errors.Is(err, errdefs.ErrUnknownProcess) || err.Error() != "stop sim.9: unknown process" {
		t.Errorf("Stop unknown = %v", err)
	}
}

func TestPurgeAndRestart(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	pid1, err := s.Start(helper(t, "p", "sleep"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(helper(t, "p", "exit", "0")); !errors.Is(err, errdefs.ErrDuplicate) {
		t.Errorf("Start while running = %v, want errdefs.ErrDuplicate", err)
	}
	if err := s.Purge("p"); !errors.Is(err, errdefs.ErrRunning) {
		t.Errorf("Purge while running = %v, want errdefs.ErrRunning", err)
	}
	if err := s.Purge("nope"); !errors.Is(err, errdefs.ErrUnknownProcess) {
		t.Errorf("Purge unknown = %v, want errdefs.ErrUnknownProcess", err)
	}
	if err := s.Kill("p"); err != nil {
		t.Fatal(err)
	}
	x.One("p")
	if _, err := s.Start(helper(t, "p", "exit", "0")); !errors.Is(err, errdefs.ErrDuplicate) {
		t.Errorf("Start after exit, before purge = %v, want errdefs.ErrDuplicate", err)
	}
	if err := s.Purge("p"); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Poll("p"); err != nil || len(st) != 1 || st[0].State != node.Unknown || !errors.Is(st[0].Err, errdefs.ErrUnknownProcess) {
		t.Errorf("Poll after purge = %+v, %v", st, err)
	}
	if err := s.Purge("p"); !errors.Is(err, errdefs.ErrUnknownProcess) {
		t.Errorf("second Purge = %v", err)
	}
	x.Forget("p") // started anew: its exit is reported again
	pid2, err := s.Start(helper(t, "p", "exit", "4"))
	if err != nil {
		t.Fatal(err)
	}
	if pid2 == pid1 {
		t.Logf("pid reused: %d", pid1)
	}
	if e := x.One("p"); e.Code != 4 {
		t.Errorf("restarted exit = %+v", e)
	}
}

// A process started with NoStdin reads end of input at once: nobody has
// to close a pipe for it, and Send is refused.
func TestNoStdinReadsEndOfInput(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	dir := t.TempDir()
	spec := helper(t, "echo", "echo")
	spec.Stdout = filepath.Join(dir, "out")
	spec.NoStdin = true
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), "echo", []byte("x\n")); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("Send to a process without stdin = %v, want EPIPE or not running", err)
	} else if err == nil {
		t.Error("Send to a process without stdin succeeded")
	}
	if e := x.One("echo"); !e.Success() {
		t.Errorf("exit %+v, want 0 after end of input", e)
	}
	if out, err := os.ReadFile(spec.Stdout); err != nil || string(out) != "eof\n" {
		t.Errorf("stdout %q (%v), want eof", out, err)
	}
}

func TestSend(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	out := newFIFO(t)
	spec := helper(t, "echo", "echo")
	spec.Stdout = out.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, msg := range []string{"hello", "world"} {
		if err := s.Send(ctx, "echo", []byte(msg+"\n")); err != nil {
			t.Fatal(err)
		}
		if l := out.line(); l != "echo: "+msg {
			t.Errorf("line %q", l)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Send(cctx, "echo", []byte("x\n")); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with cancelled ctx = %v", err)
	}
	if err := s.Send(ctx, "nope", nil); !errors.Is(err, errdefs.ErrUnknownProcess) {
		t.Errorf("Send unknown = %v", err)
	}
	if err := s.Kill("echo"); err != nil {
		t.Fatal(err)
	}
	x.One("echo")
	if err := s.Send(ctx, "echo", []byte("late\n")); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("Send after exit = %v, want errdefs.ErrNotRunning", err)
	}

	// A child that never reads: the pipe fills and the deadline ends Send.
	if _, err := s.Start(helper(t, "deaf", "sleep")); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer dcancel()
	err := s.Send(dctx, "deaf", make([]byte, 4<<20))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Send to a full pipe = %v, want deadline exceeded", err)
	}
	// A blocked Send is released when the child exits: by EPIPE when the
	// dying child closed the pipe first, else by errdefs.ErrNotRunning.
	errc := make(chan error, 1)
	go func() { errc <- s.Send(ctx, "deaf", make([]byte, 4<<20)) }()
	if err := s.Kill("deaf"); err != nil {
		t.Fatal(err)
	}
	x.One("deaf")
	select {
	case err := <-errc:
		if !errors.Is(err, errdefs.ErrNotRunning) && !errors.Is(err, syscall.EPIPE) {
			t.Errorf("blocked Send = %v, want errdefs.ErrNotRunning or EPIPE", err)
		}
	case <-time.After(patience):
		t.Fatal("blocked Send not released")
	}
}

func TestPoll(t *testing.T) {
	s := newSup(t, Options{Node: "n"})
	x := nodetest.NewExits(t, s)
	if _, err := s.Start(helper(t, "b-run", "sleep")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(helper(t, "a-exit", "exit", "2")); err != nil {
		t.Fatal(err)
	}
	x.One("a-exit")
	st, err := s.Poll()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Name != "a-exit" || st[1].Name != "b-run" {
		t.Fatalf("Poll() = %+v", st)
	}
	if st[0].State != node.Exited || st[0].Exit.Code != 2 || st[0].Exit.Node != "n" {
		t.Errorf("a-exit: %+v", st[0])
	}
	if st[1].State != node.Running {
		t.Errorf("b-run: %+v", st[1])
	}
	st, err = s.Poll("b-run")
	if err != nil || len(st) != 1 || st[0].State != node.Running {
		t.Errorf("Poll(b-run) = %+v, %v", st, err)
	}
	// An unknown name is reported for itself; the others still are.
	st, err = s.Poll("b-run", "zzz")
	if err != nil || len(st) != 2 || st[0].State != node.Running || st[1].State != node.Unknown ||
		!errors.Is(st[1].Err, errdefs.ErrUnknownProcess) || st[1].Err.Error() != "poll zzz: unknown process" {
		t.Errorf("Poll unknown = %+v, %v", st, err)
	}
	if n := s.Running(); n != 1 {
		t.Errorf("Running = %d", n)
	}
}

func TestStartErrors(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	dir := t.TempDir()
	file := filepath.Join(dir, "regular")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	badInterp := filepath.Join(dir, "badinterp")
	if err := os.WriteFile(badInterp, []byte("#!/drover/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := helper(t, "sim.3", "exit", "0")
	with := func(f func(*Spec)) Spec {
		sp := good
		sp.Args = slices.Clone(good.Args)
		f(&sp)
		return sp
	}
	tests := []struct {
		name string
		spec Spec
		want string
		is   error
	}{
		{"missing executable", with(func(s *Spec) { s.Args[0] = "./nope"; s.Dir = dir }),
			`start sim.3: executable "./nope" not found in ` + dir + ` (work dir); PATH=` + os.Getenv("PATH"), fs.ErrNotExist},
		{"missing in PATH", with(func(s *Spec) { s.Args[0] = "drover-no-such-program"; s.Env = []string{"PATH=" + dir}; s.Dir = dir }),
			`start sim.3: executable "drover-no-such-program" not found in PATH=` + dir + ` (work dir ` + dir + `)`, fs.ErrNotExist},
		{"missing interpreter", with(func(s *Spec) { s.Args[0] = badInterp }),
			fmt.Sprintf("start sim.3: executable %q: the interpreter on its #! line: no such file or directory", badInterp), fs.ErrNotExist},
		{"not executable", with(func(s *Spec) { s.Args[0] = noexec }),
			fmt.Sprintf("start sim.3: executable %q: permission denied", noexec), fs.ErrPermission},
		{"missing work dir", with(func(s *Spec) { s.Dir = missing }),
			fmt.Sprintf("start sim.3: work dir %s: no such file or directory", missing), fs.ErrNotExist},
		{"work dir is a file", with(func(s *Spec) { s.Dir = file }),
			fmt.Sprintf("start sim.3: work dir %s: not a directory", file), syscall.ENOTDIR},
		{"stdout under a file", with(func(s *Spec) { s.Stdout = file + "/out" }),
			fmt.Sprintf("start sim.3: open stdout %s/out: not a directory", file), syscall.ENOTDIR},
		{"stderr in a missing dir", with(func(s *Spec) { s.Stderr = missing + "/err" }),
			fmt.Sprintf("start sim.3: open stderr %s/err: no such file or directory", missing), fs.ErrNotExist},
		{"no args", with(func(s *Spec) { s.Args = nil }), "start sim.3: no command", nil},
		{"cpu out of range", with(func(s *Spec) { s.HWThreads = []int{-1} }),
			"start sim.3: cpu affinity [-1]: cpu -1 out of range", nil},
		{"cpu not available", with(func(s *Spec) { s.HWThreads = []int{maxCPUs - 1} }),
			fmt.Sprintf("start sim.3: cpu affinity [%d]: invalid argument", maxCPUs-1), syscall.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Start(tc.spec)
			if err == nil {
				t.Fatal("no error")
			}
			if err.Error() != tc.want {
				t.Errorf("err = %q\nwant  %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, not %v", err, tc.is)
			}
			// The name is free again and the supervisor keeps serving.
			if _, err := s.Start(good); err != nil {
				t.Fatalf("good start after a bad one: %v", err)
			}
			if e := x.One("sim.3"); !e.Success() {
				t.Errorf("good exit = %+v", e)
			}
			if err := s.Purge("sim.3"); err != nil {
				t.Fatal(err)
			}
			x.Forget("sim.3") // the next case starts it anew
		})
	}
	if _, err := s.Start(Spec{Args: good.Args}); err == nil {
		t.Error("empty name accepted")
	}
	if n := len(s.Finished()); n != 0 {
		t.Errorf("%d unexpected exits (failed starts must not report)", n)
	}
}

func TestFIFOWithoutReader(t *testing.T) {
	s := newSup(t, Options{})
	path := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := helper(t, "f", "exit", "0")
	spec.Stdout = path
	_, err := s.Start(spec) // must not block a spawner forever
	if !errors.Is(err, syscall.ENXIO) {
		t.Errorf("err = %v, want ENXIO", err)
	}
}

func TestManyStarts(t *testing.T) {
	const goroutines, total = 16, 500
	s := newSup(t, Options{})
	args := []string{"true"}
	env := []string{"PATH=" + os.Getenv("PATH")}
	if _, err := exec.LookPath("true"); err != nil {
		args, env = []string{testExe(t), "exit", "0"}, helperEnvList()
	}
	want := make(map[string]bool, total)
	var wg sync.WaitGroup
	errc := make(chan error, goroutines)
	for g := range goroutines {
		per := total / goroutines
		if g < total%goroutines {
			per++
		}
		for i := range per {
			want[fmt.Sprintf("m%d.%d", g, i)] = true
		}
		wg.Go(func() {
			for i := range per {
				if _, err := s.Start(Spec{Name: fmt.Sprintf("m%d.%d", g, i), Args: args, Env: env}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	got := make(map[string]int, total)
	n := 0
	deadline := time.NewTimer(5 * patience)
	defer deadline.Stop()
	for n < total {
		select {
		case <-s.Ready():
			for _, e := range s.Finished() {
				got[e.Name]++
				n++
				if !e.Success() {
					t.Errorf("%s: %v", e.Name, e)
				}
			}
		case err := <-errc:
			t.Fatal(err)
		case <-deadline.C:
			t.Fatalf("only %d of %d exits", n, total)
		}
	}
	wg.Wait()
	for name, c := range got {
		if c != 1 || !want[name] {
			t.Errorf("%s reported %d times (expected: %v)", name, c, want[name])
		}
	}
	if len(got) != total {
		t.Errorf("%d distinct names, want %d", len(got), total)
	}
	if extra := s.Finished(); len(extra) != 0 {
		t.Errorf("extra exits: %v", extra)
	}
	if r := s.Running(); r != 0 {
		t.Errorf("Running = %d", r)
	}
}

func TestHWThreads(t *testing.T) {
	var mask unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &mask); err != nil {
		t.Fatal(err)
	}
	if !mask.IsSet(0) || !mask.IsSet(1) {
		t.Skip("needs CPUs 0 and 1 in this process's affinity")
	}
	status, _ := os.ReadFile("/proc/self/status")
	orig := cpusAllowed(status)
	// One spawner: every start goes through the same thread, so this also
	// checks that the thread's mask is put back after a bound start.
	s := newSup(t, Options{Spawners: 1})
	x := nodetest.NewExits(t, s)
	dir := t.TempDir()
	for i, tc := range []struct {
		hw   []int
		want string
	}{{[]int{1}, "1"}, {nil, orig}, {[]int{0}, "0"}, {[]int{0, 1}, "0-1"}, {nil, orig}} {
		spec := helper(t, fmt.Sprintf("cpus%d", i), "cpus")
		spec.HWThreads = tc.hw
		spec.Stdout = filepath.Join(dir, spec.Name)
		if _, err := s.Start(spec); err != nil {
			t.Fatal(err)
		}
		if e := x.One(spec.Name); !e.Success() {
			t.Fatalf("exit = %+v", e)
		}
		got, _ := os.ReadFile(spec.Stdout)
		if strings.TrimSpace(string(got)) != tc.want {
			t.Errorf("HWThreads %v: child Cpus_allowed_list %q, want %q", tc.hw, got, tc.want)
		}
	}
}

// TestPdeathsig kills, with SIGKILL, a process that runs a Supervisor, and
// checks that its child dies too.
func TestPdeathsig(t *testing.T) { testHostKilled(t, "") }

// TestKeeper kills, with SIGKILL, a process that runs a Supervisor with a
// keeper, and checks that the grandchild its child left in its group dies
// too: Pdeathsig alone would orphan it.
func TestKeeper(t *testing.T) { testHostKilled(t, "keeper") }

// TestKeeperFindsDaemons: as TestKeeper, but the child left a
// double-forked daemon in a session of its own and there is no cgroup:
// the keeper finds the daemon by the mark in its environment.
func TestKeeperFindsDaemons(t *testing.T) { testHostKilled(t, "daemon") }

func testHostKilled(t *testing.T, mode string) {
	out := newFIFO(t) // stdout of the child (and grandchild): EOF when all are gone
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// No Supervisor is open in this process now, so os/exec may be used.
	cmd := exec.Command(testExe(t), "supervisor", out.Path, mode)
	cmd.Env = helperEnvList()
	cmd.Stdout = w
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	}()
	_ = r.SetReadDeadline(time.Now().Add(patience))
	var pid int
	if _, err := fmt.Fscanf(r, "pid %d\n", &pid); err != nil {
		t.Fatalf("reading the child pid: %v", err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("child %d not running: %v", pid, err)
	}
	gpid := 0
	if mode != "" {
		// The grandchild says hello: it runs.
		l := out.line()
		if _, err := fmt.Sscanf(l, "gpid %d", &gpid); err != nil {
			t.Fatalf("grandchild said %q", l)
		}
		t.Cleanup(func() { _ = syscall.Kill(gpid, syscall.SIGKILL) }) // if the test fails
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	out.eof()
	waitDead(t, pid)
	if gpid != 0 {
		waitDead(t, gpid)
	}
}

func TestCancelAll(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	tree := newFIFO(t)
	stubborn := newFIFO(t)
	var names []string
	var pids []int
	start := func(spec Spec) {
		t.Helper()
		pid, err := s.Start(spec)
		if err != nil {
			t.Fatal(err)
		}
		names, pids = append(names, spec.Name), append(pids, pid)
	}
	for i := range 3 {
		start(helper(t, fmt.Sprintf("sleep%d", i), "sleep"))
	}
	spec := helper(t, "tree", "grandchild")
	spec.Stdout = tree.Path
	start(spec)
	spec = helper(t, "stubborn", "ignoreterm")
	spec.Stdout = stubborn.Path
	start(spec)
	var gpid int
	if _, err := fmt.Sscanf(tree.line(), "gpid %d", &gpid); err != nil {
		t.Fatal(err)
	}
	if l := stubborn.line(); l != "ready" {
		t.Fatal(l)
	}
	if _, err := s.Start(helper(t, "done", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	x.One("done")

	s.CancelAll(200 * time.Millisecond)
	for _, n := range names {
		e := x.One(n)
		want := syscall.SIGTERM
		if n == "stubborn" {
			want = syscall.SIGKILL
		}
		if e.Signal != want {
			t.Errorf("%s: %+v, want %v", n, e, want)
		}
	}
	if n := s.Running(); n != 0 {
		t.Errorf("Running = %d", n)
	}
	for _, pid := range pids { // our children, reaped: gone
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("pid %d: kill 0 = %v, want ESRCH", pid, err)
		}
	}
	tree.eof()
	waitDead(t, gpid)
	// The supervisor still serves.
	if _, err := s.Start(helper(t, "after", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	x.One("after")
}

func TestClose(t *testing.T) {
	s, err := New(Options{Spawners: 3})
	if err != nil {
		t.Fatal(err)
	}
	tree := newFIFO(t)
	stubborn := newFIFO(t)
	var pids []int
	for i := range 4 {
		pid, err := s.Start(helper(t, fmt.Sprintf("s%d", i), "sleep"))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	spec := helper(t, "tree", "grandchild")
	spec.Stdout = tree.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	spec = helper(t, "stubborn", "ignoreterm")
	spec.Stdout = stubborn.Path
	if _, err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	var gpid int
	if _, err := fmt.Sscanf(tree.line(), "gpid %d", &gpid); err != nil {
		t.Fatal(err)
	}
	if l := stubborn.line(); l != "ready" {
		t.Fatal(l)
	}
	if err := s.Close(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := s.Running(); n != 0 {
		t.Errorf("Running after Close = %d", n)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("pid %d: kill 0 = %v, want ESRCH", pid, err)
		}
	}
	tree.eof()
	waitDead(t, gpid)
	fin := s.Finished()
	if len(fin) != 6 {
		t.Errorf("Finished after Close: %v", fin)
	}
	if _, err := s.Start(helper(t, "late", "exit", "0")); !errors.Is(err, errdefs.ErrClosed) {
		t.Errorf("Start after Close = %v, want errdefs.ErrClosed", err)
	}
	if err := s.Close(0); err != nil { // idempotent
		t.Errorf("second Close = %v", err)
	}
	if st, err := s.Poll(); err != nil || len(st) != 6 {
		t.Errorf("Poll after Close = %v, %v", st, err)
	}
}

func TestConcurrentClose(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := s.Start(helper(t, fmt.Sprint(i), "sleep")); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := s.Close(0); err != nil {
				t.Error(err)
			}
			if n := s.Running(); n != 0 {
				t.Errorf("Running = %d after Close returned", n)
			}
		})
	}
	// Starts racing with Close either succeed (and are stopped) or fail
	// with errdefs.ErrClosed.
	for i := range 8 {
		wg.Go(func() {
			_, err := s.Start(helper(t, fmt.Sprint("r", i), "sleep"))
			if err != nil && !errors.Is(err, errdefs.ErrClosed) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := s.Close(0); err != nil {
		t.Fatal(err)
	}
	if n := s.Running(); n != 0 {
		t.Errorf("Running = %d", n)
	}
}

func TestTwoSupervisors(t *testing.T) {
	a := newSup(t, Options{Node: "a"})
	b, err := New(Options{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	xa, xb := nodetest.NewExits(t, a), nodetest.NewExits(t, b)
	if _, err := a.Start(helper(t, "same", "exit", "1")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Start(helper(t, "same", "exit", "2")); err != nil {
		t.Fatal(err)
	}
	if e := xa.One("same"); e.Code != 1 || e.Node != "a" {
		t.Errorf("a: %+v", e)
	}
	if e := xb.One("same"); e.Code != 2 || e.Node != "b" {
		t.Errorf("b: %+v", e)
	}
	if err := b.Close(0); err != nil {
		t.Fatal(err)
	}
	// a keeps its reaper after b closed.
	if _, err := a.Start(helper(t, "again", "exit", "5")); err != nil {
		t.Fatal(err)
	}
	if e := xa.One("again"); e.Code != 5 {
		t.Errorf("a after b closed: %+v", e)
	}
}

// chanHandler passes log records' messages and pids to a channel.
type chanHandler struct{ c chan<- string }

func (h chanHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h chanHandler) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "pid" {
			msg += fmt.Sprintf(" %v", a.Value)
		}
		return true
	})
	select {
	case h.c <- msg:
	default:
	}
	return nil
}
func (h chanHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h chanHandler) WithGroup(string) slog.Handler      { return h }

func TestUnknownChildReaped(t *testing.T) {
	logs := make(chan string, 100)
	s := newSup(t, Options{Logger: slog.New(chanHandler{logs})})
	// A child that is not the supervisor's (what the package comment
	// forbids): it is reaped and logged, and nothing breaks.
	pid, err := syscall.ForkExec(testExe(t), []string{testExe(t), "exit", "0"},
		&syscall.ProcAttr{Env: helperEnvList()})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("reaped unknown child %d", pid)
	timeout := time.After(patience)
	for found := false; !found; {
		select {
		case m := <-logs:
			found = m == want
		case <-timeout:
			t.Fatalf("no %q logged", want)
		}
	}
	x := nodetest.NewExits(t, s)
	if _, err := s.Start(helper(t, "ok", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	if e := x.One("ok"); !e.Success() {
		t.Errorf("%+v", e)
	}
}

func TestSpawnersOption(t *testing.T) {
	if _, err := New(Options{Spawners: -1}); err == nil {
		t.Error("negative Spawners accepted")
	}
}

// TestExitBeforeRecorded: the child has exited, and the reaper has met its
// pid, before the spawner records it. The reaper must wait for the record,
// not drop the pid as unknown.
func TestExitBeforeRecorded(t *testing.T) {
	s := newSup(t, Options{})
	x := nodetest.NewExits(t, s)
	met := make(chan int, 100)
	unknown := func(pid int) { met <- pid }
	forked := func(pid int) {
		// Wait until the child is a zombie (without reaping it) and the
		// reaper has found its pid unregistered.
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				if err != nil {
					t.Errorf("waitid: %v", err)
				}
				break
			}
		}
		timeout := time.After(patience)
		for {
			select {
			case p := <-met:
				if p == pid {
					return
				}
			case <-timeout:
				t.Errorf("reaper did not meet pid %d", pid)
				return
			}
		}
	}
	testHookUnknown.Store(&unknown)
	testHookForked.Store(&forked)
	defer testHookForked.Store(nil)
	defer testHookUnknown.Store(nil)
	for i := range 5 {
		name := fmt.Sprint("early", i)
		if _, err := s.Start(helper(t, name, "exit", fmt.Sprint(10+i))); err != nil {
			t.Fatal(err)
		}
		if e := x.One(name); e.Code != 10+i {
			t.Errorf("%s: %+v", name, e)
		}
	}
}

// TestKeeperToldInOrder records what the keeper is told over many short
// lives: every group must be added before it is removed, and none may be
// left at the end, or the keeper would kill a dead group's (maybe reused)
// id when it ends.
func TestKeeperToldInOrder(t *testing.T) { testKeeperTold(t, false) }

// TestKeeperNotToldOfCgroupMembers: with a cgroup, which the keeper kills
// whole, the keeper is told nothing per process.
func TestKeeperNotToldOfCgroupMembers(t *testing.T) {
	needCgroup(t)
	testKeeperTold(t, true)
}

func testKeeperTold(t *testing.T, cgroup bool) {
	record := filepath.Join(t.TempDir(), "keeper")
	saved := keeperScript
	keeperScript = "exec cat > " + record
	t.Cleanup(func() { keeperScript = saved })
	s, err := New(Options{Keeper: true, Cgroup: cgroup})
	if err != nil {
		t.Fatal(err)
	}
	x := nodetest.NewExits(t, s)
	const n, batch = 2000, 40
	for i := 0; i < n; i += batch {
		for j := i; j < i+batch; j++ {
			if _, err := s.Start(Spec{Name: fmt.Sprintf("true%d", j), Args: []string{"/bin/true"}}); err != nil {
				t.Fatal(err)
			}
		}
		for j := i; j < i+batch; j++ {
			x.One(fmt.Sprintf("true%d", j))
		}
	}
	if err := s.Close(0); err != nil {
		t.Fatal(err)
	}
	// Close waited for the keeper, so its record is complete.
	data, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	if cgroup {
		if s.cgroup == nil {
			t.Fatal("no cgroup made")
		}
		if len(data) > 0 {
			t.Fatalf("keeper told of processes in the cgroup: %q...", data[:min(len(data), 40)])
		}
		return
	}
	added := map[string]bool{}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for _, l := range lines {
		op, pgid, _ := strings.Cut(l, " ")
		switch {
		case op == "+" && !added[pgid]:
			added[pgid] = true
		case op == "-" && added[pgid]:
			delete(added, pgid)
		default:
			t.Fatalf("keeper told %q out of order", l)
		}
	}
	if len(lines) != 2*n || len(added) != 0 {
		t.Errorf("keeper told %d lines, %d groups left registered; want %d, 0", len(lines), len(added), 2*n)
	}
}
