package wire

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/node"
)

// BenchmarkHeartbeatUnderLoad measures the longest time the manager goes
// without hearing from a healthy agent (what its node timeout is compared
// with) while 2,000 trivial instances run through the session, 200 at a
// time, with their stdout crossing the session as files do for a remote
// agent. Run it with -benchtime=1x: one iteration is the whole load.
//
//	go test -run '^$' -bench HeartbeatUnderLoad -benchtime=1x ./internal/wire/
func BenchmarkHeartbeatUnderLoad(b *testing.B) {
	const total, inFlight = 2000, 200
	args := []string{"/bin/true"}
	if _, err := os.Stat(args[0]); err != nil {
		args = []string{testExe(b), "exit", "0"}
	}
	out := b.TempDir()
	for i := 0; i < b.N; i++ {
		m := newManager(b, ServerOptions{NodeTimeout: patience})
		ta := runAgent(b, fmt.Sprintf("hb%d", i), m.addr, AgentOptions{RemoteFS: true})
		n := m.node(b)

		// The watchdog's view: how long since the last message.
		var worst time.Duration
		quit, sampled := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(sampled)
			t := time.NewTicker(2 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-quit:
					return
				case <-t.C:
				}
				n.mu.Lock()
				idle := time.Since(n.lastHeard)
				if n.receiving {
					idle = 0 // the watchdog waits for our own processing
				}
				n.mu.Unlock()
				worst = max(worst, idle)
			}
		}()

		ctx := context.Background()
		t0 := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, inFlight)
		exited := make(chan struct{})
		go func() {
			defer close(exited)
			got := 0
			for got < total {
				if _, ok := <-n.Ready(); !ok {
					return
				}
				got += len(n.Finished())
			}
		}()
		for j := range total {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				name := fmt.Sprintf("p%d", j)
				spec := node.ProcessSpec{Name: name, Args: args, Stdout: filepath.Join(out, name+".out"), AutoPurge: true}
				if _, err := n.Start(ctx, spec); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		<-exited
		took := time.Since(t0)
		close(quit)
		<-sampled
		b.ReportMetric(float64(worst.Milliseconds()), "worst-silence-ms")
		b.ReportMetric(float64(took.Milliseconds()), "load-ms")
		ta.cancel()
		ta.wait(b)
		m.stop()
	}
}
