package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/manager"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/web"
)

// defaultDashboard is where --dashboard without a value listens.
const defaultDashboard = "127.0.0.1:0"

// serveDashboard makes the dashboard of drover serve: it follows cl until
// ctx ends.
func serveDashboard(ctx context.Context, cl cluster.API, m *manager.Manager) http.Handler {
	src := web.NewClusterSource(cl, web.ClusterOptions{Title: "drover serve", RTT: rttOf(m)})
	go src.Run(ctx)
	return web.Handler(src)
}

// rttOf looks up a node's heartbeat round trip among the manager's nodes.
func rttOf(m *manager.Manager) func(string) (time.Duration, bool) {
	return func(name string) (time.Duration, bool) {
		for _, n := range m.Nodes() {
			if n.Name() == name {
				return n.RTT(), true
			}
		}
		return 0, false
	}
}

// runDashboard is the dashboard of one drover run (--dashboard).
type runDashboard struct {
	src    *web.RunSource
	srv    *http.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// startRunDashboard listens on addr and serves the dashboard of the run
// of jobs on nodes. It returns nil (and no error) when addr is "".
func startRunDashboard(addr, out string, jobs []*jobfile.Job, skip map[string]bool, nodes []node.Node, log *slog.Logger) (*runDashboard, string, error) {
	if addr == "" {
		return nil, "", nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--dashboard: %w", err)
	}
	var names []string
	for _, j := range jobs {
		for k := range max(j.Repeat, 1) {
			names = append(names, j.Instance(k).Name)
		}
	}
	src := web.NewRunSource(web.RunOptions{Title: "drover run " + out, OutDir: out, Nodes: nodes, Instances: names, Skipped: skip})
	ctx, cancel := context.WithCancel(context.Background())
	d := &runDashboard{src: src, cancel: cancel, done: make(chan struct{}),
		srv: &http.Server{Handler: web.Handler(src), ReadHeaderTimeout: 10 * time.Second,
			// Ending ctx ends the event streams and followed logs too.
			BaseContext: func(net.Listener) context.Context { return ctx }}}
	go src.Run(ctx)
	go func() {
		defer close(d.done)
		if err := d.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dashboard", "err", err)
		}
	}()
	return d, "http://" + dialable(lis.Addr().String()) + "/", nil
}

// onEvent is the queue's OnEvent hook (nil without a dashboard).
func (d *runDashboard) onEvent() func(results.Event) {
	if d == nil {
		return nil
	}
	return d.src.OnEvent
}

// stop shows the final states, then closes the dashboard.
func (d *runDashboard) stop(sum *results.Summary) {
	if d == nil {
		return
	}
	d.src.Finish(sum)
	d.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// Event streams and followed logs never end by themselves.
	if d.srv.Shutdown(ctx) != nil {
		d.srv.Close()
	}
	<-d.done
}
