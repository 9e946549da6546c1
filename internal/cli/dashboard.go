package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

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
func serveDashboard(ctx context.Context, cl web.ClusterAPI, m *manager.Manager, acc web.Access) http.Handler {
	src := web.NewClusterSource(cl, web.ClusterOptions{Title: "drover serve", RTT: rttOf(m)})
	go src.Run(ctx)
	return web.Handler(src, acc)
}

// dashListener is where a dashboard listens, with who may read it.
type dashListener struct {
	net.Listener
	base    string // http://HOST:PORT: where it listens
	access  web.Access
	warning string // who else can reach it, when not only this host
}

// url is the dashboard's address for a browser, token included.
func (d *dashListener) url() string { return d.base + "/?token=" + d.access.Token }

// listenDashboard listens on addr (the value of flag) for a dashboard
// with a fresh token. Its Host header check accepts loopback names, the
// address it listens on (every address of this host and its name, when
// that is every interface) and hosts.
func listenDashboard(flag, addr string, hosts []string, metricsOpen bool) (*dashListener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usageError("%s %q: want HOST:PORT (port 0 for a free one)", flag, addr)
	}
	// An address of one family listens on that family only: 0.0.0.0 is
	// every IPv4 interface, not IPv6's as well.
	network := "tcp"
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		network = "tcp4"
	} else if ip != nil {
		network = "tcp6"
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		return nil, &exitError{ExitFailed, fmt.Errorf("%s: %w", flag, err)}
	}
	token, err := web.NewToken()
	if err != nil {
		lis.Close()
		return nil, &exitError{ExitFailed, fmt.Errorf("%s: token: %w", flag, err)}
	}
	la := lis.Addr().(*net.TCPAddr)
	port := strconv.Itoa(la.Port)
	allowed := slices.Clone(hosts)
	urlHost := la.IP.String()
	d := &dashListener{Listener: lis}
	switch {
	case la.IP.IsUnspecified():
		d.warning = fmt.Sprintf("%s %s listens on every interface: anyone who can reach port %s of this host can connect (the pages still need the token, which plain HTTP carries unencrypted)", flag, lis.Addr(), port)
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok {
					allowed = append(allowed, ipn.IP.String())
				}
			}
		}
		if name, err := os.Hostname(); err == nil && name != "" {
			allowed = append(allowed, name)
			urlHost = name
		}
	case !la.IP.IsLoopback():
		d.warning = fmt.Sprintf("%s %s is not loopback: anyone who can reach that address can connect (the pages still need the token, which plain HTTP carries unencrypted)", flag, lis.Addr())
		allowed = append(allowed, la.IP.String())
	}
	d.base = "http://" + net.JoinHostPort(urlHost, port)
	// Cookies go to every port of a host: the name keeps two dashboards
	// on one host apart.
	d.access = web.Access{Token: token, Cookie: "drover-" + port, Hosts: allowed, MetricsOpen: metricsOpen}
	return d, nil
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
	lis    *dashListener
	cancel context.CancelFunc
	done   chan struct{}
}

// startRunDashboard listens on addr and serves the dashboard of the run
// of jobs on nodes. It returns nil (and no error) when addr is "".
func startRunDashboard(addr, out string, jobs []*jobfile.Job, skip map[string]bool, nodes []node.Node, log *slog.Logger) (*runDashboard, error) {
	if addr == "" {
		return nil, nil
	}
	lis, err := listenDashboard("--dashboard", addr, nil, false)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, j := range jobs {
		for k := range max(j.Repeat, 1) {
			names = append(names, j.Instance(k).Name)
		}
	}
	src := web.NewRunSource(web.RunOptions{Title: "drover run " + out, OutDir: out, Nodes: nodes, Instances: names, Skipped: skip})
	ctx, cancel := context.WithCancel(context.Background())
	d := &runDashboard{src: src, lis: lis, cancel: cancel, done: make(chan struct{}),
		srv: &http.Server{Handler: web.Handler(src, lis.access), ReadHeaderTimeout: 10 * time.Second,
			// Ending ctx ends the event streams and followed logs too.
			BaseContext: func(net.Listener) context.Context { return ctx }}}
	go src.Run(ctx)
	go func() {
		defer close(d.done)
		if err := d.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dashboard", "err", err)
		}
	}()
	return d, nil
}

// announce tells where the dashboard is, token included, and who else can
// reach it.
func (d *runDashboard) announce(w io.Writer) {
	fmt.Fprintf(w, "drover: dashboard at %s\n", d.lis.url())
	if d.lis.warning != "" {
		fmt.Fprintf(w, "drover: warning: %s\n", d.lis.warning)
	}
}

// onEvent is the queue's OnEvent hook (nil without a dashboard). A node
// that comes up while the run goes on is found with byName and shown too.
func (d *runDashboard) onEvent(byName func(string) node.Node) func(results.Event) {
	if d == nil {
		return nil
	}
	return func(e results.Event) {
		if e.Event == results.NodeUp {
			if n := byName(e.Node); n != nil {
				d.src.AddNode(n)
			}
		}
		d.src.OnEvent(e)
	}
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
