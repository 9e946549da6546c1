package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/childtest"
	"github.com/drover-hpc/drover/internal/e2e"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
	"github.com/drover-hpc/drover/internal/topology"
)

const nodeName = "n1"

// backstop bounds every wait; the tests assert outcomes, never durations.
const backstop = 60 * time.Second

var _ node.Node = (*agent.Agent)(nil)

func detect(t *testing.T) topology.Resources {
	t.Helper()
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cores) == 0 {
		t.Fatal("no cores detected")
	}
	return res
}

// newAgent starts an agent with its scratch space in a temporary directory
// and closes it when the test ends. The scratch root is returned too.
func newAgent(t *testing.T, mod ...func(*agent.Options)) (*agent.Agent, string) {
	t.Helper()
	scratch := t.TempDir()
	opts := agent.Options{Name: nodeName, Resources: detect(t), Scratch: scratch}
	for _, m := range mod {
		m(&opts)
	}
	a, err := agent.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(5 * time.Second); err != nil {
			t.Errorf("close agent: %v", err)
		}
	})
	return a, scratch
}

func start(t *testing.T, a node.Node, spec node.ProcessSpec) node.Started {
	t.Helper()
	st, err := a.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("start %s: %v", spec.Name, err)
	}
	if st.PID <= 0 {
		t.Fatalf("start %s: pid %d", spec.Name, st.PID)
	}
	return st
}

func wantExit(t *testing.T, e node.Exit, code int, sig syscall.Signal) {
	t.Helper()
	if e.Code != code || e.Signal != sig {
		t.Errorf("%s: got %v (code %d, signal %d), want code %d signal %v", e.Name, e, e.Code, e.Signal, code, sig)
	}
	if e.Node != nodeName {
		t.Errorf("%s: exit names node %q, want %q", e.Name, e.Node, nodeName)
	}
}

func canonical(t *testing.T, p string) string {
	t.Helper()
	c, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func TestStartFinishedExactlyOnce(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	dir := t.TempDir()

	start(t, a, node.ProcessSpec{Name: "zero", Args: helper("exit=0")})
	start(t, a, node.ProcessSpec{Name: "three", Args: helper("exit=3")})
	start(t, a, node.ProcessSpec{Name: "killed", Args: helper("kill=9")})
	start(t, a, node.ProcessSpec{Name: "out", Args: helper("out=hello", "err=oops"),
		Stdout: filepath.Join(dir, "out"), Stderr: filepath.Join(dir, "err")})

	e := r.Wait("zero", "three", "killed", "out")
	wantExit(t, e[0], 0, 0)
	wantExit(t, e[1], 3, 0)
	wantExit(t, e[2], -1, syscall.SIGKILL)
	wantExit(t, e[3], 0, 0)
	if !e[0].Success() || e[1].Success() || e[2].Success() {
		t.Errorf("Success wrong: %v %v %v", e[0].Success(), e[1].Success(), e[2].Success())
	}
	if got := e[2].String(); got != "signal SIGKILL" {
		t.Errorf("killed exit prints %q", got)
	}
	for _, x := range e {
		if x.Start.IsZero() || x.End.IsZero() || x.End.Before(x.Start) || x.Err != "" {
			t.Errorf("%s: start %v end %v err %q", x.Name, x.Start, x.End, x.Err)
		}
	}
	if got := readFile(t, filepath.Join(dir, "out")); got != "hello\n" {
		t.Errorf("stdout %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "err")); got != "oops\n" {
		t.Errorf("stderr %q", got)
	}

	// Poll still knows the exited processes until they are purged.
	st, err := a.Poll(context.Background(), "three")
	if err != nil || len(st) != 1 || st[0].State != node.Exited || st[0].Exit.Code != 3 {
		t.Errorf("poll three: %v %v", st, err)
	}
	if err := a.Purge(context.Background(), "three"); err != nil {
		t.Errorf("purge: %v", err)
	}
	if pollErr(a, context.Background(), "three") == nil {
		t.Error("poll of a purged process did not fail")
	}
	if err := a.Purge(context.Background(), "three"); err == nil {
		t.Error("second purge did not fail")
	}
	r.Take()
}

func TestConcurrentStartsReportEachExitOnce(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("c.%d", i)
			_, err := a.Start(context.Background(), node.ProcessSpec{Name: name, Args: helper("exit=" + strconv.Itoa(i%4))})
			if err != nil {
				errs <- err
			}
			// Concurrent readers must not disturb the reports.
			a.Poll(context.Background())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("c.%d", i)
	}
	for i, e := range r.Wait(names...) {
		wantExit(t, e, i%4, 0)
	}
	r.Take()
	if len(r.Got()) != n {
		t.Errorf("%d processes reported, want %d", len(r.Got()), n)
	}
}

func TestEnvMerging(t *testing.T) {
	a, _ := newAgent(t, func(o *agent.Options) {
		o.BaseEnv = helperEnv("A=base", "B=base")
	})
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	if err := a.SetEnv(ctx, "E", "set later"); err != nil {
		t.Fatal(err)
	}
	hw := detect(t).Cores[0][0]
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{
		Name:      "env",
		Args:      helper("env=A", "env=B", "env=C", "env=E", "env=DROVER_NODE", "env=DROVER_WORKDIR", "env=DROVER_HWTHREADS", "cwd", "envcount=B"),
		Env:       map[string]string{"B": "spec", "C": "spec"},
		Stdout:    out,
		HWThreads: []int{hw},
	})
	wantExit(t, r.One("env"), 0, 0)
	got := lines(readFile(t, out))
	want := map[string]string{
		"A": "base", "B": "spec", "C": "spec", "E": "set later",
		"DROVER_NODE": nodeName, "DROVER_HWTHREADS": strconv.Itoa(hw),
		"B count": "1",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%q, want %q", k, got[k], v)
		}
	}
	if got["DROVER_WORKDIR"] == "" || got["DROVER_WORKDIR"] != got["cwd"] {
		t.Errorf("DROVER_WORKDIR=%q, cwd=%q", got["DROVER_WORKDIR"], got["cwd"])
	}

	// Without HWThreads there is no DROVER_HWTHREADS, and the spec env of
	// the previous process is not left behind.
	start(t, a, node.ProcessSpec{Name: "env2", Args: helper("env=DROVER_HWTHREADS", "env=C"), Stdout: out})
	wantExit(t, r.One("env2"), 0, 0)
	if got := readFile(t, out); got != "DROVER_HWTHREADS unset\nC unset\n" {
		t.Errorf("second process printed %q", got)
	}
}

// The agent's own variables must win over stale ones in the base
// environment, e.g. when the agent itself runs under drover.
func TestEnvNodeVarsOverrideBaseEnv(t *testing.T) {
	a, _ := newAgent(t, func(o *agent.Options) {
		o.BaseEnv = helperEnv("DROVER_NODE=stale", "DROVER_WORKDIR=/stale", "DROVER_HWTHREADS=999", "DROVER_PORT_CTL=1")
	})
	r := nodetest.NewExits(t, a)
	hw := detect(t).Cores[0][0]
	out := filepath.Join(t.TempDir(), "out")
	st := start(t, a, node.ProcessSpec{
		Name:      "env",
		Args:      helper("env=DROVER_NODE", "env=DROVER_WORKDIR", "env=DROVER_HWTHREADS", "env=DROVER_PORT_CTL", "cwd"),
		Stdout:    out,
		HWThreads: []int{hw},
		PortNames: []string{"ctl"},
	})
	wantExit(t, r.One("env"), 0, 0)
	got := lines(readFile(t, out))
	if got["DROVER_NODE"] != nodeName {
		t.Errorf("DROVER_NODE=%q, want %q", got["DROVER_NODE"], nodeName)
	}
	if got["DROVER_WORKDIR"] != got["cwd"] {
		t.Errorf("DROVER_WORKDIR=%q, cwd %q", got["DROVER_WORKDIR"], got["cwd"])
	}
	if got["DROVER_HWTHREADS"] != strconv.Itoa(hw) {
		t.Errorf("DROVER_HWTHREADS=%q, want %d", got["DROVER_HWTHREADS"], hw)
	}
	if got["DROVER_PORT_CTL"] != strconv.Itoa(st.Ports["ctl"]) {
		t.Errorf("DROVER_PORT_CTL=%q, want %d", got["DROVER_PORT_CTL"], st.Ports["ctl"])
	}
}

// SPEC.md: DROVER_HWTHREADS is a "comma list of the hwthreads it is bound to".
func TestHWThreadsEnvIsCommaList(t *testing.T) {
	res := detect(t)
	all := res.HWThreads()
	slices.Sort(all)
	if len(all) < 2 || all[1] != all[0]+1 {
		t.Skip("needs two consecutive hwthreads")
	}
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{Name: "hw", Args: helper("env=DROVER_HWTHREADS"), Stdout: out, HWThreads: all[:2]})
	wantExit(t, r.One("hw"), 0, 0)
	want := fmt.Sprintf("%d,%d", all[0], all[1])
	if got := lines(readFile(t, out))["DROVER_HWTHREADS"]; got != want {
		t.Errorf("DROVER_HWTHREADS=%q, want %q", got, want)
	}
}

func TestFreshWorkDirIsMadeAndRemoved(t *testing.T) {
	a, scratch := newAgent(t)
	r := nodetest.NewExits(t, a)
	out := t.TempDir()
	for _, name := range []string{"w1", "w2"} {
		start(t, a, node.ProcessSpec{
			Name:   name,
			Args:   helper("cwd", "env=DROVER_WORKDIR", "write=made.txt=x", "cat=made.txt"),
			Stdout: filepath.Join(out, name),
		})
	}
	r.Wait("w1", "w2")
	dirs := map[string]bool{}
	for _, name := range []string{"w1", "w2"} {
		text := readFile(t, filepath.Join(out, name))
		got := lines(text)
		wd := got["cwd"]
		if wd == "" || got["DROVER_WORKDIR"] != wd {
			t.Fatalf("%s: cwd %q, DROVER_WORKDIR %q", name, wd, got["DROVER_WORKDIR"])
		}
		if !strings.Contains(text, `content="x"`) {
			t.Errorf("%s could not write into its work dir: %q", name, text)
		}
		if rel, err := filepath.Rel(canonical(t, scratch), wd); err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("%s: work dir %s is not under the scratch dir %s", name, wd, scratch)
		}
		if exists(wd) {
			t.Errorf("%s: work dir %s was not removed after the exit", name, wd)
		}
		dirs[wd] = true
	}
	if len(dirs) != 2 {
		t.Errorf("the two processes shared a work dir: %v", dirs)
	}
	r.Take()
}

func TestGivenWorkDirIsUsedAndKept(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	wd := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{
		Name:   "given",
		Dir:    wd,
		Args:   helper("cwd", "env=DROVER_WORKDIR", "write=kept.txt=kept"),
		Stdout: out,
	})
	wantExit(t, r.One("given"), 0, 0)
	got := lines(readFile(t, out))
	if canonical(t, got["cwd"]) != canonical(t, wd) {
		t.Errorf("cwd %q, want %q", got["cwd"], wd)
	}
	if got["DROVER_WORKDIR"] != wd {
		t.Errorf("DROVER_WORKDIR %q, want %q", got["DROVER_WORKDIR"], wd)
	}
	if data, err := os.ReadFile(filepath.Join(wd, "kept.txt")); err != nil || string(data) != "kept" {
		t.Errorf("the given work dir was not kept: %q %v", data, err)
	}
}

func writeSrc(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // no umask
		t.Fatal(err)
	}
	return p
}

func TestStageFiles(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	src := t.TempDir()
	alpha := writeSrc(t, src, "alpha.txt", "alpha\n", 0o640)
	beta := writeSrc(t, src, "beta.bin", "beta", 0o755)
	files := []node.StageFile{{Src: alpha, Dst: "alpha.txt"}, {Src: beta, Dst: "sub/deep/beta.bin"}}

	t.Run("fresh", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		start(t, a, node.ProcessSpec{Name: "stage-fresh", Files: files, Stdout: out,
			Args: helper("cat=alpha.txt", "cat=sub/deep/beta.bin")})
		wantExit(t, r.One("stage-fresh"), 0, 0)
		want := "cat alpha.txt mode=640 content=\"alpha\\n\"\ncat sub/deep/beta.bin mode=755 content=\"beta\"\n"
		if got := readFile(t, out); got != want {
			t.Errorf("child saw\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("given", func(t *testing.T) {
		wd := t.TempDir()
		start(t, a, node.ProcessSpec{Name: "stage-given", Dir: wd, Files: files, Args: helper("exit=0")})
		wantExit(t, r.One("stage-given"), 0, 0)
		for _, f := range []struct {
			path, content string
			mode          os.FileMode
		}{{"alpha.txt", "alpha\n", 0o640}, {"sub/deep/beta.bin", "beta", 0o755}} {
			p := filepath.Join(wd, f.path)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != f.mode {
				t.Errorf("%s: mode %o, want %o", f.path, st.Mode().Perm(), f.mode)
			}
			if got := readFile(t, p); got != f.content {
				t.Errorf("%s: %q, want %q", f.path, got, f.content)
			}
		}
	})
	t.Run("executable", func(t *testing.T) {
		// A staged program can be run from the work dir.
		exe, err := os.ReadFile(childtest.Exe())
		if err != nil {
			t.Fatal(err)
		}
		prog := writeSrc(t, t.TempDir(), "prog", string(exe), 0o755)
		start(t, a, node.ProcessSpec{Name: "stage-exe", Files: []node.StageFile{{Src: prog, Dst: "bin/prog"}},
			Args: []string{"./bin/prog", "exit=7"}})
		wantExit(t, r.One("stage-exe"), 7, 0)
	})
	r.Take()
}

// Staging over a file left in a given work dir (say, by an earlier
// attempt) must give it the source's mode, or an executable stays unrunnable.
func TestStageOverExistingFileTakesSourceMode(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	wd := t.TempDir()
	if err := os.WriteFile(filepath.Join(wd, "tool"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := writeSrc(t, t.TempDir(), "tool", "new", 0o755)
	start(t, a, node.ProcessSpec{Name: "restage", Dir: wd, Files: []node.StageFile{{Src: src, Dst: "tool"}}, Args: helper("exit=0")})
	r.Wait("restage")
	st, err := os.Stat(filepath.Join(wd, "tool"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("staged over an existing file: mode %o, want 755", st.Mode().Perm())
	}
}

func TestStageRejectsEscapes(t *testing.T) {
	a, scratch := newAgent(t)
	r := nodetest.NewExits(t, a)
	src := writeSrc(t, t.TempDir(), "x.txt", "x", 0o644)
	outside := t.TempDir()
	wd := filepath.Join(t.TempDir(), "wd")
	if err := os.Mkdir(wd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(wd, "link")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, dir, dst string
	}{
		{"dotdot-fresh", "", "../escape.txt"},
		{"dotdot-given", wd, "../escape.txt"},
		{"abs", wd, filepath.Join(outside, "abs.txt")},
		{"symlink", wd, "link/escape.txt"},
		{"empty", wd, ""},
	}
	for _, c := range cases {
		_, err := a.Start(context.Background(), node.ProcessSpec{
			Name: c.name, Dir: c.dir, Args: helper("exit=0"),
			Files: []node.StageFile{{Src: src, Dst: c.dst}},
		})
		if err == nil {
			t.Errorf("%s: staging to %q was accepted", c.name, c.dst)
			continue
		}
		if !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: error does not name the process: %v", c.name, err)
		}
	}
	// A missing source is an error too.
	if _, err := a.Start(context.Background(), node.ProcessSpec{Name: "nosrc", Args: helper("exit=0"),
		Files: []node.StageFile{{Src: filepath.Join(outside, "missing"), Dst: "m"}}}); err == nil ||
		!strings.Contains(err.Error(), "nosrc") || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing source: %v", err)
	}
	for _, p := range []string{
		filepath.Join(filepath.Dir(wd), "escape.txt"),
		filepath.Join(outside, "escape.txt"),
		filepath.Join(outside, "abs.txt"),
	} {
		if exists(p) {
			t.Errorf("%s was written outside the work dir", p)
		}
	}
	// Nothing escaped the fresh work dir either, and nothing is left in
	// scratch but empty work dirs kept for reuse.
	if left := filesUnder(t, scratch); len(left) != 0 {
		t.Errorf("scratch holds %v", left)
	}
	// The agent keeps working.
	start(t, a, node.ProcessSpec{Name: "after", Args: helper("exit=0")})
	wantExit(t, r.One("after"), 0, 0)
	r.Take()
	if len(r.Got()) != 1 {
		t.Errorf("exits reported for processes that never started: %v", r.Got())
	}
}

func TestOutputsCollected(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	secret := writeSrc(t, t.TempDir(), "secret.csv", "secret", 0o644)
	secretDir := filepath.Dir(secret)

	t.Run("ok", func(t *testing.T) {
		outDir := filepath.Join(t.TempDir(), "results", "inst")
		start(t, a, node.ProcessSpec{
			Name: "outputs-ok",
			Args: helper("write=a.csv=A", "write=b.txt=B", "write=sub/c.csv=C", "write=sub/d.txt=D",
				"write=deep/x/y.dat=Y", "write=deep/z.dat=Z"),
			Outputs:   []string{"*.csv", "sub/*.csv", "deep"},
			OutputDir: outDir,
		})
		e := r.One("outputs-ok")
		wantExit(t, e, 0, 0)
		if e.Err != "" || !e.Success() {
			t.Errorf("exit err %q", e.Err)
		}
		for p, want := range map[string]string{"a.csv": "A", "sub/c.csv": "C", "deep/x/y.dat": "Y", "deep/z.dat": "Z"} {
			if data, err := os.ReadFile(filepath.Join(outDir, p)); err != nil || string(data) != want {
				t.Errorf("output %s: %q %v", p, data, err)
			}
		}
		for _, p := range []string{"b.txt", "sub/d.txt"} {
			if exists(filepath.Join(outDir, p)) {
				t.Errorf("%s was collected but matches no pattern", p)
			}
		}
	})
	t.Run("symlinks", func(t *testing.T) {
		outDir := filepath.Join(t.TempDir(), "out")
		start(t, a, node.ProcessSpec{
			Name:      "outputs-leak",
			Args:      helper("write=good.csv=G", "symlink=leak.csv="+secret, "symlink=leakdir="+secretDir),
			Outputs:   []string{"*.csv", "leak*"},
			OutputDir: outDir,
		})
		e := r.One("outputs-leak")
		if e.Code != 0 || e.Signal != 0 {
			t.Errorf("exit %v", e)
		}
		if e.Success() || !strings.Contains(e.Err, "leak.csv") || !strings.Contains(e.Err, "leakdir") {
			t.Errorf("symlinks pointing outside not reported in Exit.Err: %q", e.Err)
		}
		if data, err := os.ReadFile(filepath.Join(outDir, "good.csv")); err != nil || string(data) != "G" {
			t.Errorf("the regular output was not collected: %q %v", data, err)
		}
		for _, p := range []string{"leak.csv", "leakdir", "leakdir/secret.csv"} {
			if exists(filepath.Join(outDir, p)) {
				t.Errorf("%s was exported through a symlink", p)
			}
		}
	})
	r.Take()
}

// An output named literally (no glob metacharacters) that is a symlink out
// of the work dir must be reported like one matched by a wildcard.
func TestOutputLiteralSymlinkIsReported(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	secret := writeSrc(t, t.TempDir(), "secret.csv", "secret", 0o644)
	outDir := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{
		Name:      "literal",
		Args:      helper("symlink=result.csv=" + secret),
		Outputs:   []string{"result.csv"},
		OutputDir: outDir,
	})
	e := r.One("literal")
	if exists(filepath.Join(outDir, "result.csv")) {
		t.Error("exported through a symlink")
	}
	if !strings.Contains(e.Err, "result.csv") {
		t.Errorf("Exit.Err = %q, want it to name result.csv", e.Err)
	}
}

func TestPorts(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	out := filepath.Join(t.TempDir(), "out")
	st := start(t, a, node.ProcessSpec{
		Name:      "ports",
		PortNames: []string{"ctl", "Data"},
		Args: helper("out=arg-ctl={port:ctl}", "out=arg-data={port:Data}", "env=DROVER_PORT_CTL", "env=DROVER_PORT_DATA",
			"listen={port:ctl}", "listenenv=DROVER_PORT_DATA"),
		Stdout: out,
		Stderr: out + ".err",
	})
	e := r.One("ports")
	if e.Code != 0 {
		t.Fatalf("child could not bind its ports: %v: %s", e, readFile(t, out+".err"))
	}
	ctl, data := st.Ports["ctl"], st.Ports["Data"]
	if len(st.Ports) != 2 || ctl <= 0 || data <= 0 || ctl == data {
		t.Fatalf("Started.Ports = %v", st.Ports)
	}
	got := lines(readFile(t, out))
	for k, v := range map[string]int{"arg-ctl": ctl, "arg-data": data, "DROVER_PORT_CTL": ctl, "DROVER_PORT_DATA": data} {
		if got[k] != strconv.Itoa(v) {
			t.Errorf("%s=%q, want %d", k, got[k], v)
		}
	}
	if held := a.HeldPorts(false); len(held) != 0 {
		t.Errorf("ports still held after the start: %v", held)
	}
}

func TestHWThreadsBinding(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	res := detect(t)
	dir := t.TempDir()
	var names []string
	sets := map[string][]int{}
	for i, hw := range res.HWThreads() {
		name := fmt.Sprintf("hw%d", i)
		sets[name] = []int{hw}
		names = append(names, name)
	}
	sets["all"] = res.HWThreads()
	names = append(names, "all")
	for _, name := range names {
		start(t, a, node.ProcessSpec{Name: name, Args: helper("cpus", "env=DROVER_HWTHREADS"),
			Stdout: filepath.Join(dir, name), HWThreads: sets[name]})
	}
	start(t, a, node.ProcessSpec{Name: "inherit", Args: helper("cpus"), Stdout: filepath.Join(dir, "inherit")})
	r.Wait(append(names, "inherit")...)
	for _, name := range names {
		got := lines(readFile(t, filepath.Join(dir, name)))
		want := slices.Sorted(slices.Values(sets[name]))
		if c := cpuSet(t, got["cpus"]); !slices.Equal(c, want) {
			t.Errorf("%s: Cpus_allowed_list %q, want %v", name, got["cpus"], want)
		}
		if c := cpuSet(t, got["DROVER_HWTHREADS"]); !slices.Equal(c, want) {
			t.Errorf("%s: DROVER_HWTHREADS %q, want %v", name, got["DROVER_HWTHREADS"], want)
		}
	}
	own, err := childtest.ProcStatus("Cpus_allowed_list")
	if err != nil {
		t.Fatal(err)
	}
	if got := lines(readFile(t, filepath.Join(dir, "inherit")))["cpus"]; !slices.Equal(cpuSet(t, got), cpuSet(t, own)) {
		t.Errorf("without HWThreads the child runs on %q, the agent on %q", got, own)
	}
	r.Take()
}

func TestBadStartsAreErrorsAndTheAgentGoesOn(t *testing.T) {
	a, scratch := newAgent(t)
	r := nodetest.NewExits(t, a)
	tmp := t.TempDir()
	regular := writeSrc(t, tmp, "regular", "", 0o644)
	cases := []struct {
		spec node.ProcessSpec
		want string
	}{
		{node.ProcessSpec{Name: "noexe", Args: []string{filepath.Join(tmp, "no-such-program")}}, "not found"},
		{node.ProcessSpec{Name: "noexe-path", Args: []string{"drover-test-no-such-program"}}, "not found"},
		{node.ProcessSpec{Name: "noexe-given", Dir: tmp, Args: []string{"./no-such-program"}}, "not found"},
		{node.ProcessSpec{Name: "notexec", Args: []string{regular}}, "regular"},
		{node.ProcessSpec{Name: "nodir", Dir: filepath.Join(tmp, "missing"), Args: helper("exit=0")}, "missing"},
		{node.ProcessSpec{Name: "dirisfile", Dir: regular, Args: helper("exit=0")}, "regular"},
		{node.ProcessSpec{Name: "badstdout", Args: helper("exit=0"), Stdout: filepath.Join(regular, "out")}, "stdout"},
		{node.ProcessSpec{Name: "badstderr", Args: helper("exit=0"), Stderr: filepath.Join(regular, "err")}, "stderr"},
		{node.ProcessSpec{Name: "badhw", Args: helper("exit=0"), HWThreads: []int{1 << 20}}, "cpu"},
	}
	for _, c := range cases {
		st, err := a.Start(context.Background(), c.spec)
		if err == nil {
			t.Errorf("%s: start succeeded (pid %d)", c.spec.Name, st.PID)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.spec.Name) || !strings.Contains(msg, nodeName) || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q should name the process, the node and %q", c.spec.Name, msg, c.want)
		}
		if pollErr(a, context.Background(), c.spec.Name) == nil {
			t.Errorf("%s: a failed start is known to Poll", c.spec.Name)
		}
	}
	// The agent goes on, and a failed name can be used again.
	start(t, a, node.ProcessSpec{Name: "good", Args: helper("exit=0")})
	start(t, a, node.ProcessSpec{Name: "nodir", Args: helper("exit=5")})
	e := r.Wait("good", "nodir")
	wantExit(t, e[0], 0, 0)
	wantExit(t, e[1], 5, 0)
	r.Take()
	if len(r.Got()) != 2 {
		t.Errorf("exits reported for failed starts: %v", r.Got())
	}
	// Failed starts leave nothing in scratch but empty work dirs kept for
	// reuse.
	if left := filesUnder(t, scratch); len(left) != 0 {
		t.Errorf("files left in scratch: %v", left)
	}
}

// filesUnder lists everything under root that is not a directory.
func filesUnder(t *testing.T, root string) []string {
	t.Helper()
	var left []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// A start that does not start a process must be an error: otherwise no exit
// is ever reported for it and a caller waits forever.
func TestStartWithoutCommandIsAnError(t *testing.T) {
	a, _ := newAgent(t)
	for _, spec := range []node.ProcessSpec{
		{Name: "noargs", Dir: t.TempDir()},
		{Name: "emptyarg0", Args: []string{""}},
		{Name: "", Dir: t.TempDir(), Args: helper("exit=0")},
	} {
		st, err := a.Start(context.Background(), spec)
		if err == nil {
			t.Errorf("start %q with args %q: no error (pid %d)", spec.Name, spec.Args, st.PID)
		}
	}
}

func TestDuplicateName(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	ready := filepath.Join(t.TempDir(), "ready")
	start(t, a, node.ProcessSpec{Name: "dup", Args: helper("touch="+ready, "sleep=2m")})
	waitFile(t, ready)
	_, err := a.Start(ctx, node.ProcessSpec{Name: "dup", Args: helper("exit=0")})
	if err == nil || !errors.Is(err, errdefs.ErrDuplicate) || !strings.Contains(err.Error(), "dup") {
		t.Fatalf("second start of a running name: %v", err)
	}
	st, err := a.Poll(ctx, "dup")
	if err != nil || st[0].State != node.Running {
		t.Fatalf("the first dup is not running any more: %v %v", st, err)
	}
	if err := a.Purge(ctx, "dup"); err == nil {
		t.Error("purge of a running process did not fail")
	}
	if err := a.Stop(ctx, "dup", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	wantExit(t, r.One("dup"), -1, syscall.SIGTERM)
	if err := a.Purge(ctx, "dup"); err != nil {
		t.Fatal(err)
	}
	start(t, a, node.ProcessSpec{Name: "dup", Args: helper("exit=4")})
	// The second run's exit is reported too, once.
	r.Forget("dup")
	wantExit(t, r.One("dup"), 4, 0)
	r.Take()
}

func TestStopAndKillReachTheProcessGroup(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	cases := []struct {
		name  string
		steps []string
		do    func(name string) error
		sig   syscall.Signal
	}{
		{"stop", nil, func(n string) error { return a.Stop(ctx, n, 30*time.Second) }, syscall.SIGTERM},
		{"kill", nil, func(n string) error { return a.Kill(ctx, n) }, syscall.SIGKILL},
		{"stop-stubborn", []string{"ignoreterm"}, func(n string) error { return a.Stop(ctx, n, 100*time.Millisecond) }, syscall.SIGKILL},
		{"cancel-all", nil, func(string) error { return a.CancelAll(ctx, 30*time.Second) }, syscall.SIGTERM},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			pidfile, ready := filepath.Join(dir, "pid"), filepath.Join(dir, "ready")
			steps := append(slices.Clone(c.steps), "grandchild="+pidfile, "touch="+ready, "sleep=2m")
			st := start(t, a, node.ProcessSpec{Name: c.name, Args: helper(steps...)})
			waitFile(t, ready)
			gpid, err := strconv.Atoi(waitFile(t, pidfile))
			if err != nil {
				t.Fatal(err)
			}
			if !alive(gpid) {
				t.Fatalf("grandchild %d is not running", gpid)
			}
			if err := c.do(c.name); err != nil {
				t.Fatal(err)
			}
			wantExit(t, r.One(c.name), -1, c.sig)
			waitGone(t, gpid)
			waitGone(t, st.PID)
			if err := a.Stop(ctx, c.name, time.Second); err == nil {
				t.Error("stop of an exited process did not fail")
			}
		})
	}
	for _, op := range []func() error{
		func() error { return a.Stop(ctx, "nobody", time.Second) },
		func() error { return a.Kill(ctx, "nobody") },
		func() error { return a.Purge(ctx, "nobody") },
		func() error { return a.Send(ctx, "nobody", []byte("x")) },
		func() error { return pollErr(a, ctx, "nobody") },
	} {
		if err := op(); err == nil || !strings.Contains(err.Error(), "nobody") {
			t.Errorf("operation on an unknown name: %v", err)
		}
	}
	r.Take()
}

func TestSendFeedsStdin(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{Name: "echo", Args: helper("stdin", "out=bye"), Stdout: out})
	for _, line := range []string{"hello\n", "world\n", "quit\n"} {
		if err := a.Send(ctx, "echo", []byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	wantExit(t, r.One("echo"), 0, 0)
	if got := readFile(t, out); got != "got hello\ngot world\nbye\n" {
		t.Errorf("stdout %q", got)
	}
	if err := a.Send(ctx, "echo", []byte("late\n")); err == nil {
		t.Error("send to an exited process did not fail")
	}
}

func TestSetGetEnv(t *testing.T) {
	a, _ := newAgent(t)
	ctx := context.Background()
	if v, ok, err := a.GetEnv(ctx, "PATH"); err != nil || !ok || v != os.Getenv("PATH") {
		t.Errorf("default base env: PATH=%q %v %v", v, ok, err)
	}
	if _, ok, err := a.GetEnv(ctx, "DROVER_TEST_NO_SUCH_VAR"); ok || err != nil {
		t.Errorf("unset variable: %v %v", ok, err)
	}
	if err := a.SetEnv(ctx, "K", "v=1"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetEnv(ctx, "EMPTY", ""); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := a.GetEnv(ctx, "K"); v != "v=1" || !ok || err != nil {
		t.Errorf("GetEnv K = %q %v %v", v, ok, err)
	}
	if v, ok, _ := a.GetEnv(ctx, "EMPTY"); v != "" || !ok {
		t.Errorf("GetEnv EMPTY = %q %v", v, ok)
	}
	for _, bad := range []string{"", "A=B", "A\x00B"} {
		if err := a.SetEnv(ctx, bad, "x"); err == nil {
			t.Errorf("SetEnv(%q) accepted", bad)
		}
	}
	r := nodetest.NewExits(t, a)
	out := filepath.Join(t.TempDir(), "out")
	start(t, a, node.ProcessSpec{Name: "env", Args: helper("env=K", "env=EMPTY"), Stdout: out})
	r.Wait("env")
	if got := readFile(t, out); got != "K=v=1\nEMPTY=\n" {
		t.Errorf("child saw %q", got)
	}
}

// syncBuffer is safe for the logger's concurrent writes.
type syncBuffer = e2e.Buffer

func TestSetLogLevel(t *testing.T) {
	var buf syncBuffer
	lv := new(slog.LevelVar)
	a, _ := newAgent(t, func(o *agent.Options) {
		o.Level = lv
		o.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: lv}))
	})
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	start(t, a, node.ProcessSpec{Name: "quiet", Args: helper("exit=0")})
	r.Wait("quiet")
	if strings.Contains(buf.String(), "name=quiet") {
		t.Errorf("debug logged at level info:\n%s", buf.String())
	}
	if err := a.SetLogLevel(ctx, "debug"); err != nil {
		t.Fatal(err)
	}
	if lv.Level() != slog.LevelDebug {
		t.Errorf("level %v after SetLogLevel(debug)", lv.Level())
	}
	start(t, a, node.ProcessSpec{Name: "loud", Args: helper("exit=0")})
	r.Wait("loud")
	if !strings.Contains(buf.String(), "name=loud") {
		t.Errorf("nothing logged about loud at level debug:\n%s", buf.String())
	}
	for _, c := range []struct {
		level string
		want  slog.Level
	}{{"warn", slog.LevelWarn}, {"ERROR", slog.LevelError}, {"info", slog.LevelInfo}} {
		if err := a.SetLogLevel(ctx, c.level); err != nil || lv.Level() != c.want {
			t.Errorf("SetLogLevel(%q): %v, level %v", c.level, err, lv.Level())
		}
	}
	if err := a.SetLogLevel(ctx, "chatty"); err == nil || !strings.Contains(err.Error(), nodeName) {
		t.Errorf("SetLogLevel(chatty): %v", err)
	}
	if lv.Level() != slog.LevelInfo {
		t.Errorf("a bad level changed the level to %v", lv.Level())
	}
}

func TestBindAndReleasePorts(t *testing.T) {
	a, _ := newAgent(t)
	ctx := context.Background()
	tcp, err := a.BindPorts(ctx, false, 3)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := a.BindPorts(ctx, true, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(tcp) != 3 || len(udp) != 2 || len(slices.Compact(slices.Sorted(slices.Values(tcp)))) != 3 {
		t.Fatalf("tcp %v udp %v", tcp, udp)
	}
	if got := a.HeldPorts(false); !slices.Equal(got, slices.Sorted(slices.Values(tcp))) {
		t.Errorf("HeldPorts(tcp) = %v, want %v", got, tcp)
	}
	if got := a.HeldPorts(true); !slices.Equal(got, slices.Sorted(slices.Values(udp))) {
		t.Errorf("HeldPorts(udp) = %v, want %v", got, udp)
	}
	for _, p := range tcp {
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", p)); err == nil {
			l.Close()
			t.Errorf("tcp port %d is bound but not held", p)
		}
	}
	for _, p := range udp {
		if c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p)); err == nil {
			c.Close()
			t.Errorf("udp port %d is bound but not held", p)
		}
	}
	if err := a.ReleasePorts(ctx, false, tcp[:2]); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleasePorts(ctx, true, udp); err != nil {
		t.Fatal(err)
	}
	for _, p := range tcp[:2] {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			t.Errorf("released tcp port %d: %v", p, err)
			continue
		}
		l.Close()
	}
	for _, p := range udp {
		c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			t.Errorf("released udp port %d: %v", p, err)
			continue
		}
		c.Close()
	}
	if got := a.HeldPorts(false); !slices.Equal(got, tcp[2:]) {
		t.Errorf("HeldPorts after release = %v, want %v", got, tcp[2:])
	}
	if err := a.ReleasePorts(ctx, false, tcp[:1]); err == nil || !strings.Contains(err.Error(), nodeName) {
		t.Errorf("second release: %v", err)
	}
	if _, err := a.BindPorts(ctx, false, 0); err == nil {
		t.Error("BindPorts(0) accepted")
	}
	// tcp[2] is still held: Close releases it.
}

func TestCloseStopsEverything(t *testing.T) {
	scratch := t.TempDir()
	a, err := agent.New(agent.Options{Name: nodeName, Resources: detect(t), Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	r := nodetest.NewExits(t, a)
	dir := t.TempDir()
	names := []string{"s1", "s2", "s3"}
	var pids, gpids []int
	for _, n := range names {
		pidfile, ready := filepath.Join(dir, n+".pid"), filepath.Join(dir, n+".ready")
		st := start(t, a, node.ProcessSpec{Name: n, Args: helper("grandchild="+pidfile, "touch="+ready, "sleep=2m")})
		pids = append(pids, st.PID)
		waitFile(t, ready)
		g, _ := strconv.Atoi(waitFile(t, pidfile))
		gpids = append(gpids, g)
	}
	if _, err := a.BindPorts(context.Background(), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, e := range r.Wait(names...) {
		wantExit(t, e, -1, syscall.SIGTERM)
	}
	r.WaitGone() // Ready is closed once everything is reported
	r.Take()
	for _, p := range append(pids, gpids...) {
		waitGone(t, p)
	}
	if _, err := a.Start(context.Background(), node.ProcessSpec{Name: "late", Args: helper("exit=0")}); err == nil || !strings.Contains(err.Error(), "late") {
		t.Errorf("start after close: %v", err)
	}
	if held := a.HeldPorts(false); len(held) != 0 {
		t.Errorf("ports held after close: %v", held)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if entries, _ := os.ReadDir(scratch); len(entries) != 0 {
		t.Errorf("scratch not cleaned: %v", entries)
	}
}

func TestShutdownKillsStubbornProcesses(t *testing.T) {
	a, err := agent.New(agent.Options{Name: nodeName, Resources: detect(t), Scratch: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := nodetest.NewExits(t, a)
	ready := filepath.Join(t.TempDir(), "ready")
	st := start(t, a, node.ProcessSpec{Name: "stubborn", Args: helper("ignoreterm", "touch="+ready, "sleep=2m")})
	waitFile(t, ready)
	if err := a.Shutdown(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	wantExit(t, r.One("stubborn"), -1, syscall.SIGKILL)
	waitGone(t, st.PID)
}

func TestAutoPurgeFreesTheName(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	ctx := context.Background()
	start(t, a, node.ProcessSpec{Name: "auto", AutoPurge: true, Args: helper("exit=2")})
	wantExit(t, r.One("auto"), 2, 0)
	if pollErr(a, ctx, "auto") == nil {
		t.Error("an auto-purged process is still known after its exit was reported")
	}
	start(t, a, node.ProcessSpec{Name: "auto", AutoPurge: true, Args: helper("exit=3")})
	r.Forget("auto")
	wantExit(t, r.One("auto"), 3, 0)
	r.Take()
}

// A start After another process begins only once that process's exit has
// been collected: its outputs are in place.
func TestAfterWaitsForTheCollectedExit(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	dir := t.TempDir()
	outDir, goFile := filepath.Join(dir, "out"), filepath.Join(dir, "go")
	start(t, a, node.ProcessSpec{Name: "pred", Args: helper("waitfile="+goFile, "write=result.csv=R"),
		Outputs: []string{"*.csv"}, OutputDir: outDir})
	type res struct {
		st  node.Started
		err error
	}
	got := make(chan res, 1)
	succOut := filepath.Join(dir, "succ.out")
	go func() {
		st, err := a.Start(context.Background(), node.ProcessSpec{Name: "succ", After: "pred",
			Args: helper("cat=" + filepath.Join(outDir, "result.csv")), Stdout: succOut})
		got <- res{st, err}
	}()
	// Give the start a chance to wait (the outcome does not depend on it).
	time.Sleep(50 * time.Millisecond)
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var rs res
	select {
	case rs = <-got:
	case <-time.After(backstop):
		t.Fatal("the start after pred never returned")
	}
	if rs.err != nil || rs.st.PID <= 0 {
		t.Fatalf("start after pred: %v %v", rs.st, rs.err)
	}
	e := r.Wait("pred", "succ")
	wantExit(t, e[0], 0, 0)
	wantExit(t, e[1], 0, 0)
	if got := readFile(t, succOut); !strings.Contains(got, `content="R"`) {
		t.Errorf("the successor did not find its predecessor's output: %q", got)
	}
	// After a process that is not running starts at once.
	start(t, a, node.ProcessSpec{Name: "free", After: "nobody", Args: helper("exit=0")})
	r.Wait("free")
	r.Take()
}

func TestAfterWaitEndsWithCancelAllCloseOrContext(t *testing.T) {
	startAfter := func(ctx context.Context, a *agent.Agent, name string) chan error {
		errc := make(chan error, 1)
		go func() {
			_, err := a.Start(ctx, node.ProcessSpec{Name: name, After: "pred", Args: helper("exit=0")})
			errc <- err
		}()
		return errc
	}
	running := func(t *testing.T, a *agent.Agent, steps ...string) {
		ready := filepath.Join(t.TempDir(), "ready")
		start(t, a, node.ProcessSpec{Name: "pred", Args: helper(append(steps, "touch="+ready, "sleep=2m")...)})
		waitFile(t, ready)
	}

	t.Run("cancel-all", func(t *testing.T) {
		a, _ := newAgent(t)
		r := nodetest.NewExits(t, a)
		running(t, a, "ignoreterm") // outlives CancelAll's SIGTERM
		errc := startAfter(context.Background(), a, "succ")
		var err error
		timeout := time.After(backstop)
	wait:
		for {
			// Repeat: the start may not be waiting yet.
			a.CancelAll(context.Background(), time.Hour)
			select {
			case err = <-errc:
				break wait
			case <-time.After(20 * time.Millisecond):
			case <-timeout:
				t.Fatal("the waiting start did not end")
			}
		}
		if !errors.Is(err, agent.ErrCancelled) || !strings.Contains(err.Error(), "succ") {
			t.Errorf("waiting start after CancelAll: %v", err)
		}
		if err := a.Kill(context.Background(), "pred"); err != nil {
			t.Fatal(err)
		}
		wantExit(t, r.One("pred"), -1, syscall.SIGKILL)
		r.Take()
		if len(r.Got()) != 1 {
			t.Errorf("exits of processes that never started: %v", r.Got())
		}
	})
	t.Run("close", func(t *testing.T) {
		a, _ := newAgent(t)
		running(t, a)
		errc := startAfter(context.Background(), a, "succ")
		time.Sleep(20 * time.Millisecond) // likely waiting by now; either way it must fail
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if err == nil {
				t.Error("a start waiting at Close succeeded")
			}
		case <-time.After(backstop):
			t.Fatal("the waiting start did not end at Close")
		}
	})
	t.Run("context", func(t *testing.T) {
		a, _ := newAgent(t)
		r := nodetest.NewExits(t, a)
		running(t, a)
		ctx, cancel := context.WithCancel(context.Background())
		errc := startAfter(ctx, a, "succ")
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("waiting start after its context ended: %v", err)
			}
		case <-time.After(backstop):
			t.Fatal("the waiting start did not end with its context")
		}
		if err := a.Stop(context.Background(), "pred", time.Second); err != nil {
			t.Fatal(err)
		}
		r.Wait("pred")
		r.Take()
	})
}

// A process name is not a path: a fresh work dir must stay inside the
// agent's scratch space whatever the name.
func TestFreshWorkDirStaysInScratch(t *testing.T) {
	top := t.TempDir()
	scratch := filepath.Join(top, "scratch")
	a, err := agent.New(agent.Options{Name: nodeName, Resources: detect(t), Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r := nodetest.NewExits(t, a)
	out := filepath.Join(top, "out")
	_, err = a.Start(context.Background(), node.ProcessSpec{Name: "../../escaped", Args: helper("cwd"), Stdout: out})
	if err != nil {
		return // refusing such a name is fine
	}
	r.Wait("../../escaped")
	wd := lines(readFile(t, out))["cwd"]
	if rel, err := filepath.Rel(canonical(t, scratch), wd); err != nil || strings.HasPrefix(rel, "..") {
		t.Errorf("the work dir of %q is %s, outside the scratch dir %s", "../../escaped", wd, scratch)
	}
}

// TestWorkDirReuse: a work dir its process left empty is handed out again,
// one it wrote into is removed, so every process still starts in an empty
// directory.
func TestWorkDirReuse(t *testing.T) {
	scratch := t.TempDir()
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Name: "n", Resources: res, Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r := nodetest.NewExits(t, a)
	dirOf := func(name string, steps ...string) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		start(t, a, node.ProcessSpec{Name: name, Args: helper(append([]string{"cwd"}, steps...)...), Stdout: out})
		r.Wait(name)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimPrefix(strings.TrimSpace(string(b)), "cwd=")
	}
	first := dirOf("clean")
	if again := dirOf("again"); again != first {
		t.Errorf("an empty work dir was not reused: %s then %s", first, again)
	}
	dirty := dirOf("dirty", "write=junk=x")
	if exists(dirty) {
		t.Errorf("a work dir with files in it was kept: %s", dirty)
	}
	if next := dirOf("next"); next == dirty {
		t.Errorf("the dirty work dir %s was handed out again", next)
	}
}

// TestAfterWaitsForANameNotSeenYet: a start queued behind a process whose
// own start has not arrived yet waits for it (it must not take its core
// first), and gives up with ErrAfterTimeout when that process never comes.
func TestAfterWaitsForANameNotSeenYet(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	done := make(chan error, 1)
	go func() {
		_, err := a.Start(context.Background(), node.ProcessSpec{Name: "second", Args: helper("exit=0"),
			After: "first", AfterTimeout: time.Minute})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the start behind an unseen name went ahead: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	start(t, a, node.ProcessSpec{Name: "first", Args: helper("exit=0")})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e := r.Wait("first", "second")
	if e[1].Start.Before(e[0].End) {
		t.Errorf("second started at %v, before first ended at %v", e[1].Start, e[0].End)
	}
	_, err := a.Start(context.Background(), node.ProcessSpec{Name: "orphan", Args: helper("exit=0"),
		After: "never", AfterTimeout: 50 * time.Millisecond})
	if !errors.Is(err, errdefs.ErrAfterTimeout) {
		t.Fatalf("start behind a name that never comes: %v, want ErrAfterTimeout", err)
	}
}

// pollErr polls one name and returns why it could not be (nil when known).
func pollErr(a node.Node, ctx context.Context, name string) error {
	st, err := a.Poll(ctx, name)
	if err != nil {
		return err
	}
	if len(st) != 1 {
		return fmt.Errorf("poll %s: %d statuses", name, len(st))
	}
	return st[0].Err
}

// TestQueuedLine: starts queued several deep behind a running process
// start one after another as each exits; one in the line that fails
// before its turn hands its place on (the one behind it waits for what it
// waited for, never running beside it); AfterTimeout counts the
// predecessor's run, not the wait in line; CancelAll withdraws the rest.
func TestQueuedLine(t *testing.T) {
	a, _ := newAgent(t)
	r := nodetest.NewExits(t, a)
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")
	start(t, a, node.ProcessSpec{Name: "head", Args: helper("waitfile=" + goFile)})
	queue := func(spec node.ProcessSpec) chan error {
		errc := make(chan error, 1)
		go func() {
			_, err := a.Start(context.Background(), spec)
			errc <- err
		}()
		return errc
	}
	// broken fails staging before its turn; second is queued behind it
	// and third behind second with a bound far shorter than head's run.
	broken := queue(node.ProcessSpec{Name: "broken", Args: helper("exit=0"), After: "head", AfterTimeout: time.Minute,
		Files: []node.StageFile{{Src: filepath.Join(dir, "missing"), Dst: "x"}}})
	if err := <-broken; err == nil {
		t.Fatal("broken started")
	}
	second := queue(node.ProcessSpec{Name: "second", Args: helper("exit=0"), After: "broken", AfterTimeout: time.Minute})
	third := queue(node.ProcessSpec{Name: "third", Args: helper("exit=0"), After: "second", AfterTimeout: 300 * time.Millisecond})
	select {
	case err := <-second:
		t.Fatalf("second went ahead while head ran: %v", err)
	case err := <-third:
		t.Fatalf("third went ahead while head ran: %v", err)
	case <-time.After(600 * time.Millisecond): // longer than third's bound: it must not count the wait in line
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	// third may give up now if second, once running, ran past its bound
	// (a slow machine); if it ran, it ran after second.
	if err := <-third; err == nil {
		e := r.Wait("head", "second", "third")
		if e[1].Start.Before(e[0].End) || e[2].Start.Before(e[1].End) {
			t.Errorf("the line overlapped: head ended %v, second ran %v–%v, third started %v",
				e[0].End, e[1].Start, e[1].End, e[2].Start)
		}
	} else if !errors.Is(err, errdefs.ErrAfterTimeout) {
		t.Fatal(err)
	} else if e := r.Wait("head", "second"); e[1].Start.Before(e[0].End) {
		t.Errorf("second started at %v, before head ended at %v", e[1].Start, e[0].End)
	}

	// AfterTimeout counts the predecessor's run: a start queued behind a
	// process that has run past it gives up, and so does the one behind.
	goFile2 := filepath.Join(dir, "go2")
	start(t, a, node.ProcessSpec{Name: "long", Args: helper("waitfile=" + goFile2)})
	first := queue(node.ProcessSpec{Name: "behind-long", Args: helper("exit=0"), After: "long", AfterTimeout: 100 * time.Millisecond})
	next := queue(node.ProcessSpec{Name: "behind-that", Args: helper("exit=0"), After: "behind-long", AfterTimeout: time.Minute})
	if err := <-first; !errors.Is(err, errdefs.ErrAfterTimeout) {
		t.Fatalf("start behind a long run: %v, want ErrAfterTimeout", err)
	}
	select {
	case err := <-next:
		t.Fatalf("the start behind the one that gave up went ahead while long ran: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	// CancelAll withdraws what waits in line, even once long has exited.
	if err := a.CancelAll(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-next; !errors.Is(err, agent.ErrCancelled) {
		t.Fatalf("queued start after CancelAll: %v, want ErrCancelled", err)
	}
	r.Wait("long")
	r.Take()
	for _, name := range []string{"broken", "behind-long", "behind-that"} {
		if _, ok := r.Got()[name]; ok {
			t.Errorf("an exit of %s, which never started", name)
		}
	}
}
