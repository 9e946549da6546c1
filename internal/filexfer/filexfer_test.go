package filexfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/internal/node"
)

// These tests join the two sides directly, chunk by chunk, as the session
// (internal/wire) does over gRPC.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func randomFile(t *testing.T, dir, name string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o640); err != nil {
		t.Fatal(err)
	}
	return data
}

// A staged file crosses once, a chunk at a time, also when many starts
// stage it at once, and the agent's start then reads it from its cache.
func TestStageOnceThenPrepare(t *testing.T) {
	src := t.TempDir()
	data := randomFile(t, src, "input", 3*ChunkSize+1234)
	space := NewSpace(t.TempDir())
	defer space.Remove()
	st := NewPool().Stager(func(_ context.Context, p Put) error { return space.Put(p) })

	const starts = 8
	var wg sync.WaitGroup
	staged := make([]StagedFile, starts)
	errs := make([]error, starts)
	for i := range starts {
		wg.Go(func() {
			staged[i], errs[i] = st.Stage(context.Background(), node.StageFile{Src: filepath.Join(src, "input"), Dst: "in/data"})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || staged[i] != staged[0] {
			t.Fatalf("stage %d: %+v %v", i, staged[i], err)
		}
	}
	if got := st.Chunks(); got != 4 {
		t.Errorf("%d chunks for a 4-chunk file staged by %d starts, want 4", got, starts)
	}
	if staged[0].Mode != 0o640 {
		t.Errorf("mode %v, want the source's 0640", staged[0].Mode)
	}

	spec := node.ProcessSpec{Name: "p", Files: []node.StageFile{{Dst: "in/data", Mode: staged[0].Mode}}}
	if _, err := space.Prepare(&spec, [][]byte{staged[0].Sum[:]}, nil); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, spec.Files[0].Src); got != string(data) {
		t.Errorf("cached content of %d bytes, want %d", len(got), len(data))
	}
	if spec.Files[0].Dst != "in/data" {
		t.Errorf("destination %q", spec.Files[0].Dst)
	}
}

// A chunk the node did not take fails the staging; the next start sends
// the content again instead of trusting a half-sent one.
func TestFailedStagingIsSentAgain(t *testing.T) {
	src := t.TempDir()
	randomFile(t, src, "input", 2*ChunkSize+7)
	space := NewSpace(t.TempDir())
	defer space.Remove()
	var mu sync.Mutex
	refuse := true
	st := NewPool().Stager(func(_ context.Context, p Put) error {
		mu.Lock()
		defer mu.Unlock()
		if refuse && p.Last {
			return errors.New("the node is gone")
		}
		return space.Put(p)
	})
	f := node.StageFile{Src: filepath.Join(src, "input"), Dst: "x"}
	if _, err := st.Stage(context.Background(), f); err == nil || !strings.Contains(err.Error(), "the node is gone") {
		t.Fatalf("stage with a refused chunk: %v", err)
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	sf, err := st.Stage(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	spec := node.ProcessSpec{Name: "p", Files: []node.StageFile{{Dst: "x"}}}
	if _, err := space.Prepare(&spec, [][]byte{sf.Sum[:]}, nil); err != nil {
		t.Fatalf("after the second staging: %v", err)
	}
}

// The agent keeps only content whose hash is what the manager said, and a
// start naming content it never got fails, saying so.
func TestWrongContentIsRefused(t *testing.T) {
	space := NewSpace(t.TempDir())
	defer space.Remove()
	var sum Digest
	sum[0] = 1
	err := space.Put(Put{Sum: sum, Data: []byte("not that"), Last: true, Size: 8})
	if err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("wrong content: %v", err)
	}
	spec := node.ProcessSpec{Name: "p", Files: []node.StageFile{{Dst: "x"}}}
	if _, err := space.Prepare(&spec, [][]byte{sum[:]}, nil); err == nil || !strings.Contains(err.Error(), "never reached") {
		t.Fatalf("start with content never received: %v", err)
	}
}

// stream sends what s has to r, at most max chunks (all when max < 0),
// and returns the errors Next reported.
func stream(s *Sender, r *Receiver, max int) []string {
	var errs []string
	for n := 0; !s.Done() && n != max; n++ {
		c, err := s.Next()
		if err != nil {
			errs = append(errs, err.Error())
		}
		if c != nil {
			r.Write(*c)
		}
	}
	return errs
}

// Results go from the agent's spool to where the manager's spec asked,
// outputs with their paths and modes, also when the stream is cut mid-way
// and the agent starts over.
func TestResultsComeBackAcrossACut(t *testing.T) {
	out := t.TempDir()
	spec := node.ProcessSpec{Name: "p", Stdout: filepath.Join(out, "stdout"), Stderr: filepath.Join(out, "stderr"),
		OutputDir: out, Outputs: []string{"*.dat"}}
	recv := NewReceiver()
	rs, err := recv.Expect(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Stdout || !rs.Stderr || rs.StderrIsStdout || !rs.Outputs {
		t.Fatalf("asked for %+v", rs)
	}

	space := NewSpace(t.TempDir())
	defer space.Remove()
	agentSpec := spec
	sp, err := space.Prepare(&agentSpec, nil, &rs)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(agentSpec.Stdout, out) || agentSpec.OutputDir == out {
		t.Fatalf("the agent writes into the manager's paths: %+v", agentSpec)
	}
	// The process writes its results on the agent.
	stdout := randomFile(t, filepath.Dir(agentSpec.Stdout), "stdout", 2*ChunkSize+5)
	if err := os.WriteFile(agentSpec.Stderr, []byte("warning\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(agentSpec.OutputDir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	dat := randomFile(t, filepath.Join(agentSpec.OutputDir, "sub"), "r.dat", ChunkSize+1)
	if err := os.Chmod(filepath.Join(agentSpec.OutputDir, "sub", "r.dat"), 0o600); err != nil {
		t.Fatal(err)
	}

	if got := space.Take("p"); got != sp {
		t.Fatalf("take: %v, want the spool of p", got)
	}
	s, err := sp.Sender()
	if err != nil {
		t.Fatal(err)
	}
	if errs := stream(s, recv, 2); len(errs) > 0 {
		t.Fatal(errs)
	}
	s.Reset() // the stream was cut: everything again
	if errs := stream(s, recv, -1); len(errs) > 0 {
		t.Fatal(errs)
	}
	if msg := recv.Finish(rs.ID); msg != "" {
		t.Fatalf("finish: %s", msg)
	}
	if got := readFile(t, spec.Stdout); !bytes.Equal([]byte(got), stdout) {
		t.Errorf("stdout of %d bytes, want %d", len(got), len(stdout))
	}
	if got := readFile(t, spec.Stderr); got != "warning\n" {
		t.Errorf("stderr %q", got)
	}
	p := filepath.Join(out, "sub", "r.dat")
	if got := readFile(t, p); !bytes.Equal([]byte(got), dat) {
		t.Errorf("output of %d bytes, want %d", len(got), len(dat))
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("output mode: %v %v", fi, err)
	}
	if err := sp.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(agentSpec.Stdout)); !os.IsNotExist(err) {
		t.Errorf("spool still there after Remove: %v", err)
	}
}

// A result the agent cannot read is named once, however often the stream
// starts over; one that ends without its last chunk is incomplete on the
// manager's side.
func TestMissingAndIncompleteResults(t *testing.T) {
	out := t.TempDir()
	spec := node.ProcessSpec{Name: "p", Stdout: filepath.Join(out, "stdout"), Stderr: filepath.Join(out, "stderr")}
	recv := NewReceiver()
	rs, err := recv.Expect(spec)
	if err != nil {
		t.Fatal(err)
	}
	space := NewSpace(t.TempDir())
	defer space.Remove()
	agentSpec := spec
	sp, err := space.Prepare(&agentSpec, nil, &rs)
	if err != nil {
		t.Fatal(err)
	}
	randomFile(t, filepath.Dir(agentSpec.Stdout), "stdout", 2*ChunkSize)
	// No stderr: the process never wrote one.
	s, err := sp.Sender()
	if err != nil {
		t.Fatal(err)
	}
	var errs []string
	for range 2 {
		errs = append(errs, stream(s, recv, -1)...)
		s.Reset()
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "result stderr not sent") {
		t.Errorf("errors %q, want stderr named once", errs)
	}
	if msg := recv.Finish(rs.ID); msg != "" {
		t.Errorf("finish after a full stdout: %q", msg)
	}

	rs2, err := recv.Expect(spec)
	if err != nil {
		t.Fatal(err)
	}
	recv.Write(Result{ID: rs2.ID, Kind: Stdout, Data: []byte("part")})
	if msg := recv.Finish(rs2.ID); !strings.Contains(msg, "stdout: incomplete") {
		t.Errorf("finish without a last chunk: %q", msg)
	}
	// Chunks of results no longer expected are ignored.
	recv.Write(Result{ID: rs2.ID, Kind: Stdout, Data: []byte("late"), Last: true})
	if got := readFile(t, spec.Stdout); got != "part" {
		t.Errorf("stdout %q after a late chunk", got)
	}
}

// An unwritable stdout fails the start at once, before anything runs.
func TestExpectFailsOnAnUnwritablePath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewReceiver().Expect(node.ProcessSpec{Name: "p", Stdout: filepath.Join(file, "stdout")}); err == nil {
		t.Fatal("stdout under a regular file accepted")
	}
}
