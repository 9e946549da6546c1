//go:build linux

package supervise

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// trivialBinary is a static program that exits 0 at once: compiled with
// gcc when there is one, else /bin/true.
func trivialBinary(b *testing.B) string {
	b.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "/bin/true"
	}
	dir := b.TempDir()
	src := filepath.Join(dir, "trivial.c")
	if err := os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(dir, "trivial")
	if out, err := exec.Command(gcc, "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		b.Logf("gcc -static failed, using /bin/true: %v\n%s", err, out)
		return "/bin/true"
	}
	return bin
}

const benchParallel = 2

// rawNsPerOp is BenchmarkRawExec's last figure, for the ratio reported by
// BenchmarkStartWait (which runs after it: same file, later in the source).
var rawNsPerOp atomic.Int64

// BenchmarkRawExec: os/exec Run of the trivial program from 2 goroutines.
func BenchmarkRawExec(b *testing.B) {
	bin := trivialBinary(b) // uses os/exec: no Supervisor is open here
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range benchParallel {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := exec.Command(bin).Run(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	rawNsPerOp.Store(b.Elapsed().Nanoseconds() / int64(b.N))
}

// BenchmarkStartWait: Start the trivial program and wait for its exit via
// Ready/Finished (then Purge it), 2 processes in flight, 2 starting
// goroutines.
func BenchmarkStartWait(b *testing.B) { benchStartWait(b, Options{Node: "bench"}) }

// BenchmarkStartWaitSubreaper: the same as a child subreaper, which looks
// for orphans at every exit.
func BenchmarkStartWaitSubreaper(b *testing.B) {
	benchStartWait(b, Options{Node: "bench", Subreaper: true})
}

// BenchmarkStartWaitKeeper: the same with a keeper and no cgroup, as an
// agent runs where it may not make one: a pipe write to the keeper per
// start and per exit, and the DROVER_TREE mark added to each environment.
func BenchmarkStartWaitKeeper(b *testing.B) {
	benchStartWait(b, Options{Node: "bench", Keeper: true})
}

func benchStartWait(b *testing.B, opts Options) {
	bin := trivialBinary(b)
	s, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(0)
	slots := make(chan struct{}, benchParallel)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, benchParallel)
	stop := make(chan struct{})
	defer func() { close(stop); wg.Wait() }()
	b.ResetTimer()
	for range benchParallel {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				select {
				case slots <- struct{}{}:
				case <-stop:
					return
				}
				if _, err := s.Start(Spec{Name: "b" + strconv.FormatInt(i, 10), Args: []string{bin}}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	for done := 0; done < b.N; {
		select {
		case <-s.Ready():
			for _, e := range s.Finished() {
				if !e.Success() {
					b.Fatalf("%s: %v", e.Name, e)
				}
				if err := s.Purge(e.Name); err != nil {
					b.Fatal(err)
				}
				<-slots
				done++
			}
		case err := <-errc:
			b.Fatal(err)
		}
	}
	b.StopTimer()
	ours := b.Elapsed().Nanoseconds() / int64(b.N)
	if raw := rawNsPerOp.Load(); raw > 0 && b.N > 1 {
		ratio := float64(ours) / float64(raw)
		b.ReportMetric(ratio, "x-rawexec-time")
		b.Logf("N=%d: Start+wait %d ns/op, raw os/exec %d ns/op: %.2fx the time (%.0f vs %.0f starts/s)",
			b.N, ours, raw, ratio, 1e9/float64(ours), 1e9/float64(raw))
	}
}

// BenchmarkOrphanScan: what a subreaper adds to every exit when there is
// no orphan, one read of the main thread's children.
func BenchmarkOrphanScan(b *testing.B) {
	for b.Loop() {
		if o := orphans(false); len(o) != 0 {
			b.Fatalf("orphans %v", o)
		}
	}
}
