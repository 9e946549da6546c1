package wire

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/filexfer"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// A "remote" agent: it does not share the manager's filesystem. Both run
// in this process, on one machine, so "the agent never touches a manager
// path" is checked on what reaches the agent: no spec it is given names
// anything under the manager's directory (it could not open what it is
// never told), and its scratch space is elsewhere.
type remoteSetup struct {
	m      *manager
	ta     *testAgent
	n      *RemoteNode
	mgrDir string // the manager's files: sources and results
}

func newRemote(t *testing.T, opts ServerOptions, via func(addr string) string) *remoteSetup {
	t.Helper()
	m := newManager(t, opts)
	addr := m.addr
	if via != nil {
		addr = via(addr)
	}
	ta := runAgent(t, "n1", addr, AgentOptions{RemoteFS: true, Scratch: t.TempDir(), MonitorTimeout: patience})
	n := m.node(t)
	if n.SharedFS() {
		t.Fatal("the node says it shares our filesystem")
	}
	rs := &remoteSetup{m: m, ta: ta, n: n, mgrDir: t.TempDir()}
	t.Cleanup(func() { rs.checkAgentSpecs(t) })
	return rs
}

func (rs *remoteSetup) checkAgentSpecs(t *testing.T) {
	rs.ta.mu.Lock()
	defer rs.ta.mu.Unlock()
	for _, s := range rs.ta.specs {
		paths := []string{s.Stdout, s.Stderr, s.OutputDir, s.Dir}
		for _, f := range s.Files {
			paths = append(paths, f.Src)
		}
		for _, p := range paths {
			if p != "" && strings.HasPrefix(p, rs.mgrDir) {
				t.Errorf("the agent was given the manager's path %s (spec %s)", p, s.Name)
			}
		}
	}
}

// path makes a path under the manager's dir, with its parent dir.
func (rs *remoteSetup) path(t *testing.T, rel string) string {
	t.Helper()
	p := filepath.Join(rs.mgrDir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func (rs *remoteSetup) write(t *testing.T, rel string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := rs.path(t, rel)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantSuccess(t *testing.T, e node.Exit) {
	t.Helper()
	if !e.Success() {
		t.Fatalf("exit of %s: %v, err %q", e.Name, e, e.Err)
	}
}

func TestRemoteStageAndResults(t *testing.T) {
	ctx := ctxT(t)
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	data := randomBytes(t, 3*filexfer.ChunkSize+1234) // several chunks
	src := rs.write(t, "src/data.bin", data, 0o644)
	tool := rs.write(t, "src/tool", []byte("#!/bin/sh\n"), 0o755)
	out := rs.path(t, "results/r1/x")
	out = filepath.Dir(out)

	spec := helperSpec(t, "r1", "files", "cat=in/data.bin", "mode=bin/tool", "mode=in/data.bin",
		"write=a.csv=A", "write=res/deep/b.csv=B", "write=res/c.txt=C", "write=skip.txt=S")
	spec.Files = []node.StageFile{{Src: src, Dst: "in/data.bin"}, {Src: tool, Dst: "bin/tool"}}
	spec.Stdout = filepath.Join(out, "stdout")
	spec.Stderr = filepath.Join(out, "stderr")
	spec.Outputs = []string{"*.csv", "res"}
	spec.OutputDir = out
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	wantSuccess(t, x.One("r1"))
	if got := readFile(t, spec.Stdout); got != string(data) {
		t.Errorf("stdout: %d bytes, want the %d staged", len(got), len(data))
	}
	if got, want := readFile(t, spec.Stderr), "bin/tool 755\nin/data.bin 644\n"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
	for rel, want := range map[string]string{"a.csv": "A", "res/deep/b.csv": "B", "res/c.txt": "C"} {
		p := filepath.Join(out, rel)
		if got := readFile(t, p); got != want {
			t.Errorf("%s = %q, want %q", rel, got, want)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
			t.Errorf("%s mode %o, want 640", rel, st.Mode().Perm())
		}
	}
	if _, err := os.Stat(filepath.Join(out, "skip.txt")); err == nil {
		t.Error("skip.txt matched no output pattern but came back")
	}

	// 2>&1: one file.
	spec = helperSpec(t, "r2", "pattern", "1000", "500")
	spec.Stdout = filepath.Join(out, "both")
	spec.Stderr = spec.Stdout
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	wantSuccess(t, x.One("r2"))
	if got := len(readFile(t, spec.Stdout)); got != 1500 {
		t.Errorf("stdout and stderr in one file: %d bytes, want 1500", got)
	}
}

// A file needed by many instances crosses once per node, also when they
// start at the same time.
func TestRemoteStageOncePerNode(t *testing.T) {
	const count = 20
	ctx := ctxT(t)
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	data := randomBytes(t, 2*filexfer.ChunkSize+77)
	src := rs.write(t, "src/shared.bin", data, 0o644)
	small := rs.write(t, "src/small", []byte("s"), 0o600)
	var wg sync.WaitGroup
	errs := make(chan error, count)
	for i := range count {
		wg.Go(func() {
			name := fmt.Sprintf("s%02d", i)
			spec := helperSpec(t, name, "files", "cat=shared.bin", "cat=small")
			spec.Files = []node.StageFile{{Src: src, Dst: "shared.bin"}, {Src: small, Dst: "small"}}
			spec.Stdout = rs.path(t, "out/"+name)
			_, err := rs.n.Start(ctx, spec)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	x.WaitCount(count)
	for name, e := range x.Got() {
		wantSuccess(t, e)
		if got := readFile(t, filepath.Join(rs.mgrDir, "out", name)); got != string(data)+"s" {
			t.Errorf("%s: stdout of %d bytes, want %d", name, len(got), len(data)+1)
		}
	}
	if got := rs.n.stager.Chunks(); got != 3+1 {
		t.Errorf("%d PutFile chunks for a 3-chunk and a 1-chunk file used by %d instances, want 4", got, count)
	}
}

func TestRemoteBigStdout(t *testing.T) {
	const out, errN = 5 << 20, 1<<20 + 3
	ctx := ctxT(t)
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	spec := helperSpec(t, "big", "pattern", fmt.Sprint(out), fmt.Sprint(errN))
	spec.Stdout = rs.path(t, "big/stdout")
	spec.Stderr = rs.path(t, "big/stderr")
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	wantSuccess(t, x.One("big"))
	checkPattern(t, spec.Stdout, out)
	checkPattern(t, spec.Stderr, errN)
}

// checkPattern compares a file with the first n bytes of the pattern,
// streaming.
func checkPattern(t *testing.T, p string, n int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := io.LimitReader(&patternReader{}, n)
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	var off int64
	for {
		na, ea := io.ReadFull(f, a)
		nb, _ := io.ReadFull(want, b)
		if na != nb || !bytes.Equal(a[:na], b[:nb]) {
			t.Fatalf("%s differs from the pattern in the 64 KiB at %d (%d bytes, want %d)", p, off, na, nb)
		}
		off += int64(na)
		if ea != nil {
			break
		}
	}
	if off != n {
		t.Fatalf("%s: %d bytes, want %d", p, off, n)
	}
}

func TestRemoteEscapesRefused(t *testing.T) {
	ctx := ctxT(t)
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	src := rs.write(t, "src/f", []byte("f"), 0o644)
	for _, dst := range []string{"../f", "/tmp/f", "a/../../f"} {
		spec := helperSpec(t, "esc", "exit", "0")
		spec.Files = []node.StageFile{{Src: src, Dst: dst}}
		_, err := rs.n.Start(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "leaves the work dir") {
			t.Errorf("destination %q: %v", dst, err)
		}
	}
	if got := rs.n.stager.Chunks(); got != 0 {
		t.Errorf("%d chunks sent for refused starts", got)
	}
	spec := helperSpec(t, "esc", "exit", "0")
	spec.Files = []node.StageFile{{Src: filepath.Join(rs.mgrDir, "missing"), Dst: "m"}}
	if _, err := rs.n.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing source: %v", err)
	}

	// The child links outputs to a manager-only secret; the agent refuses
	// to export them.
	secret := rs.write(t, "secret", []byte("secret"), 0o644)
	out := filepath.Dir(rs.path(t, "leak/x"))
	spec = helperSpec(t, "leak", "files", "link=leak.csv="+secret, "write=good.csv=G")
	spec.Outputs, spec.OutputDir = []string{"*.csv"}, out
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	e := x.One("leak")
	if e.Success() || !strings.Contains(e.Err, "leak.csv") {
		t.Errorf("symlink output: exit %v err %q", e, e.Err)
	}
	if got := readFile(t, filepath.Join(out, "good.csv")); got != "G" {
		t.Errorf("good.csv = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(out, "leak.csv")); err == nil {
		t.Error("leak.csv exported")
	}
}

// Cuts in the middle of a result transfer lose and duplicate nothing.
func TestRemoteResultsAcrossReconnect(t *testing.T) {
	const size = 24 << 20
	ctx := ctxT(t)
	var px *proxy
	rs := newRemote(t, quick, func(addr string) string { px = newProxy(t, addr); return px.addr() })
	x := nodetest.NewExits(t, rs.n)
	if _, err := rs.n.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	// Other exits, with small results, around the big one.
	spec := helperSpec(t, "big", "pattern", fmt.Sprint(size), "10")
	spec.Stdout = rs.path(t, "big/stdout")
	spec.Stderr = rs.path(t, "big/stderr")
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		s := helperSpec(t, fmt.Sprintf("small%d", i), "pattern", "100", "0")
		s.Stdout = rs.path(t, fmt.Sprintf("small/%d", i))
		if _, err := rs.n.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// Cut whenever the stdout has grown since the last cut, until it is
	// complete: each cut is mid-transfer.
	cuts := 0
	var last int64
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		x.Take()
		if _, done := x.Got()["big"]; done {
			break
		}
		st, err := os.Stat(spec.Stdout)
		if err == nil && st.Size() > last {
			px.freeze()
			last = st.Size()
			if px.cut() > 0 {
				cuts++
			}
			px.thaw()
		}
		time.Sleep(2 * time.Millisecond)
	}
	x.WaitCount(11)
	if cuts == 0 {
		t.Error("no cut happened during the transfer")
	}
	t.Logf("%d cuts during the transfer", cuts)
	wantSuccess(t, x.Got()["big"])
	checkPattern(t, spec.Stdout, size)
	checkPattern(t, spec.Stderr, 10)
	for i := range 10 {
		wantSuccess(t, x.Got()[fmt.Sprintf("small%d", i)])
		checkPattern(t, filepath.Join(rs.mgrDir, "small", fmt.Sprint(i)), 100)
	}
	if _, err := rs.n.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	x.Take()
	if len(x.Got()) != 11 {
		t.Fatalf("%d exits", len(x.Got()))
	}
}

// A 200 MB stdout streams through both sides (one process here) without
// their heaps growing with it.
func TestRemoteBigStdoutMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("200 MB")
	}
	const size = 200 << 20
	ctx := ctxT(t)
	rs := newRemote(t, quick, nil)
	x := nodetest.NewExits(t, rs.n)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	spec := helperSpec(t, "huge", "pattern", fmt.Sprint(size), "0")
	spec.Stdout = rs.path(t, "huge/stdout")
	if _, err := rs.n.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	e := x.One("huge")
	close(stop)
	<-sampled
	wantSuccess(t, e)
	if st, err := os.Stat(spec.Stdout); err != nil || st.Size() != size {
		t.Fatalf("stdout: %v %v", st, err)
	}
	grew := int64(peak.Load()) - int64(before)
	t.Logf("heap %d MiB before, peak %d MiB during", before>>20, peak.Load()>>20)
	if grew > 64<<20 {
		t.Errorf("the heap grew by %d MiB for a %d MiB stdout", grew>>20, size>>20)
	}
}
