package wire

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/node"
)

// BenchmarkStartExitOverWire measures start→exit latency of a trivial
// process over an agent session on loopback, and the same through the
// in-process agent directly: each iteration starts one process, waits for
// its exit report and purges it, on each path in turn.
func BenchmarkStartExitOverWire(b *testing.B) {
	args := []string{"/bin/true"}
	if _, err := os.Stat(args[0]); err != nil {
		args = []string{testExe(b), "exit", "0"}
	}
	ctx := context.Background()
	m := newManager(b, ServerOptions{NodeTimeout: patience})
	runAgent(b, "wire", m.addr, AgentOptions{})
	remote := m.node(b)
	direct := newAgent(b, "direct")

	once := func(n node.Node, name string) time.Duration {
		t0 := time.Now()
		if _, err := n.Start(ctx, node.ProcessSpec{Name: name, Args: args}); err != nil {
			b.Fatal(err)
		}
		for {
			f := n.Finished()
			if len(f) > 0 {
				if f[0].Name != name || len(f) != 1 {
					b.Fatalf("exits %+v", f)
				}
				break
			}
			if _, ok := <-n.Ready(); !ok {
				b.Fatal("node gone")
			}
		}
		d := time.Since(t0)
		if err := n.Purge(ctx, name); err != nil {
			b.Fatal(err)
		}
		return d
	}
	// Warm up both paths (first fork, page cache).
	once(remote, "warm")
	once(direct.Agent, "warm")

	var wire, local []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("p%d", i)
		wire = append(wire, once(remote, name))
		local = append(local, once(direct.Agent, name))
	}
	b.StopTimer()
	pw, pl := p50(wire), p50(local)
	b.ReportMetric(float64(pw.Microseconds()), "wire-p50-µs")
	b.ReportMetric(float64(pl.Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(pw)/float64(pl), "wire/direct")
}

func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
