package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/control"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/join"
	"github.com/drover-hpc/drover/internal/manager"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/privdir"
	"github.com/drover-hpc/drover/internal/procs"
)

type serveFlags struct {
	listen         string
	http           string
	httpHosts      []string
	metricsOpen    bool
	launcher       string
	hosts          []string
	hostfile       string
	sshConfig      string
	sshTimeout     time.Duration
	monitorTimeout time.Duration
	nodeTimeout    time.Duration
	grace          time.Duration
	joinListen     string
	relaunch       bool
	resources      []string
}

func newServe(e *env) *cobra.Command {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Run the manager as a daemon that the control verbs drive",
		Long: `Runs the manager and its agents until Ctrl-C, SIGTERM or drover shutdown.
The control verbs (drover nodes, start, poll, stop, ..., submit, jobs) and
the Go package github.com/drover-hpc/drover/client drive it.

It writes $DROVER_HOME/serve.json (default ~/.drover; mode 0600) with the
address, the status page's URL, its pid and the client credentials of the
run; the verbs find it there. Every connection is mutual TLS: only holders
of those credentials get in; grpc.health.v1 and server reflection (grpcurl)
answer there too. Nodes it cannot launch on join it with a one-time token
from drover token (drover agent --join, at --join-listen).

A node whose agent dies or falls silent (--node-timeout) is lost: its
processes finish as lost, once each. Serve then launches its agent again
(after 1s, doubling to 60s while relaunches fail; --relaunch=false turns
this off) and the node rejoins under its name; drover nodes shows its
restarts and the last reason.

--http serves a read-only web dashboard at / (cluster map, jobs, instance
output, timeline; live) and Prometheus metrics at /metrics. They show
names, arguments and output, so they need the token of serve.json: open
the "dashboard" URL it prints (with ?token=; the browser then keeps a
cookie), or send "Authorization: Bearer TOKEN" (Prometheus: the
authorization setting of the scrape config). --metrics-open serves
/metrics without it. Requests must name the dashboard in their Host header
(a loopback name, the --http address, or a --http-host name), so pages of
other sites cannot read it through a DNS name pointed at it. An --http
address other than loopback prints a warning: others can then connect.

On the way out every process is stopped (SIGTERM, then SIGKILL after
--grace), the agents exit and serve.json is removed. Only one serve runs
per DROVER_HOME.`,
		Example: `  drover serve &
  drover nodes
  drover start --node "$(hostname)" --name sim -- ./sim --fast
  drover shutdown

  DROVER_HOME=/tmp/d drover serve --listen 0.0.0.0:7700 --http 127.0.0.1:8080
  drover serve --http 0.0.0.0:8080 --http-host node1.example.org
  curl -H "Authorization: Bearer $(jq -r .token ~/.drover/serve.json)" "$(jq -r .http ~/.drover/serve.json)/api/state"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(e, f, cmd.Flags().Changed("listen"))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:0", "address for agents and clients (mutual TLS)")
	fl.StringVar(&f.http, "http", "127.0.0.1:0", "address of the read-only web dashboard and /metrics")
	fl.StringSliceVar(&f.httpHosts, "http-host", nil, "host names the dashboard answers to besides loopback and the --http address, NAME,...")
	fl.BoolVar(&f.metricsOpen, "metrics-open", false, "serve /metrics without the token")
	fl.StringVar(&f.launcher, "launcher", "", "how agents reach the nodes: local, ssh or slurm (default: slurm inside an allocation, ssh with --hosts, else local)")
	fl.StringSliceVar(&f.hosts, "hosts", nil, "SSH nodes, [user@]host,...")
	fl.StringVar(&f.hostfile, "hostfile", "", "file with one SSH node per line, optionally followed by its counted resources: node7 license=2,fpga=1")
	fl.StringArrayVar(&f.resources, "resource", nil, "counted resources every node declares, NAME=N,... (license=2); repeatable; a hostfile's columns add per host")
	fl.StringVarP(&f.sshConfig, "ssh-config", "F", "", "ssh config file for the ssh launcher (ssh -F)")
	fl.DurationVar(&f.sshTimeout, "ssh-timeout", defaultSSHTimeout, "give up connecting to an SSH host after this long (ssh ConnectTimeout; 0 leaves it to the ssh config)")
	fl.DurationVar(&f.monitorTimeout, "monitor-timeout", 30*time.Second, "an agent stops its processes and exits after this long without the manager (which sends a heartbeat every third of it)")
	fl.DurationVar(&f.nodeTimeout, "node-timeout", 5*time.Second, "the manager declares a silent node lost after this long (agents send a heartbeat every third of it)")
	fl.DurationVar(&f.grace, "grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping processes")
	fl.StringVar(&f.joinListen, "join-listen", "", "address where nodes join with a token from drover token (default: the --listen host, a free port)")
	fl.BoolVar(&f.relaunch, "relaunch", true, "launch the agent of a lost node again (after 1s, doubling to 60s while relaunches fail); it rejoins under its name")
	return cmd
}

func runServe(e *env, f *serveFlags, listenChanged bool) error {
	launcher, err := pickLauncher(&runFlags{launcher: f.launcher, hosts: f.hosts, hostfile: f.hostfile})
	if err != nil {
		return err
	}
	where, err := clusterPlan(launcher, f.hosts, f.hostfile, f.sshConfig, f.resources)
	if err != nil {
		return err
	}
	if f.sshTimeout < 0 {
		return usageError("--ssh-timeout must be >= 0")
	}
	where.sshTimeout = f.sshTimeout
	listen := f.listen
	if !listenChanged {
		listen = where.listen("")
		if listen == "" {
			listen = f.listen
		}
	}
	if f.http == "" {
		return usageError("--http needs HOST:PORT (port 0 for a free one)")
	}
	if f.grace < 0 || f.monitorTimeout <= 0 || f.nodeTimeout <= 0 {
		return usageError("--grace must be >= 0, --monitor-timeout and --node-timeout > 0")
	}
	home, err := client.Home("")
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	log := e.logger(e.stderr)
	// It will hold the credentials of the cluster: no one else's.
	if narrowed, err := privdir.Ensure(home, true); err != nil {
		return &exitError{ExitFailed, fmt.Errorf("DROVER_HOME: %w; it holds the cluster's credentials: use a directory of your own", err)}
	} else if narrowed {
		log.Warn("others could write in DROVER_HOME; made it private (0700)", "dir", home)
	}

	unlock, err := claimHome(home, log)
	if err != nil {
		return err
	}
	defer unlock()

	httpLis, err := listenDashboard("--http", f.http, f.httpHosts, f.metricsOpen)
	if err != nil {
		return err
	}
	defer httpLis.Close()

	cl := cluster.New(cluster.Options{Logger: log, Home: home, Grace: f.grace})
	// The feed tells when the first node is up, and says at once which
	// hosts failed to launch; once the launch is over it says no more
	// (later relaunch failures go to the log and drover nodes).
	feed := newNodeFeed(func(lf manager.LaunchFailure) {
		fmt.Fprintf(e.stderr, "drover: node %s not used: %s\n", lf.Node, lf.Reason)
	})
	ctl := control.New(cl, control.Options{Logger: log, Grace: f.grace})
	joins := join.New(join.Options{Logger: log, NameTaken: func(name string) bool { return nodeUp(cl, name) }})
	// grpc.health.v1 and server reflection, for probes and grpcurl; they
	// sit behind the same mutual TLS as everything else.
	health := grpchealth.NewServer()
	health.SetServingStatus(droverpb.Control_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	sizer := procs.NewManager()
	m, err := manager.New(manager.Options{
		Listen:         listen,
		NodeTimeout:    f.nodeTimeout,
		MonitorTimeout: f.monitorTimeout,
		Grace:          f.grace,
		Logger:         log,
		AgentLogLevel:  e.logLevel,
		AgentLogs:      e.stderr,
		Resources:      where.resources,
		Register: func(s *grpc.Server) {
			ctl.Register(s)
			joins.Register(s)
			healthpb.RegisterHealthServer(s, health)
			reflection.Register(s)
		},
		OnNode: func(n node.Node) {
			sizer.Joined()
			cl.AddNode(n)
			feed.node(n)
		},
		// A node lost under serve comes back: programs keep their cluster.
		Relaunch: f.relaunch,
		OnLaunchFailure: func(lf manager.LaunchFailure) {
			// In the cluster first: drover nodes shows what stderr says.
			cl.AddFailedNode(lf.Node, lf.Reason)
			feed.fail(lf)
		},
	})
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return &exitError{ExitFailed, errors.Join(err, cl.Close(ctx))}
	}
	// endLaunch ends the launch of hosts still connecting and waits for it;
	// set once the launch has begun.
	endLaunch := func() {}
	// stop takes everything down, in order; it is safe to call twice.
	stopped := false
	stop := func(ctx context.Context, shutdown bool) error {
		if stopped {
			return nil
		}
		stopped = true
		// No node joins a cluster on its way down.
		endLaunch()
		// Probes see the end coming while the processes are stopped.
		health.Shutdown()
		joins.Close()
		var errs []error
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := ctl.Drain(dctx); err != nil {
			log.Warn("serve: control calls still running", "err", err)
		}
		cancel()
		if shutdown {
			if err := cl.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shutdown: %w", err))
			}
		}
		if err := cl.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close cluster: %w", err))
		}
		if err := m.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close manager: %w", err))
		}
		return errors.Join(errs...)
	}
	// Nodes join only once the run's CA exists; before the agents start,
	// so a bad --join-listen fails early.
	if err := joins.Start(m.CA(), joinListen(f.joinListen, m.Addr()), m.Addr()); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), f.grace+30*time.Second)
		defer cancel()
		return &exitError{ExitFailed, errors.Join(fmt.Errorf("--join-listen: %w", err), stop(ctx, true))}
	}

	// Signals are caught from here on: one before the first node is up
	// ends the start, and serve takes down what it started.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	host, _ := os.Hostname()
	endLaunch, err = launchNodes(m, where, feed, sigs, log)
	var bundle *creds.Bundle
	if err == nil {
		bundle, err = m.CA().Issue(creds.RoleClient, "drover-client", nil)
	}
	info := &client.ServeInfo{
		Address:   dialable(m.Addr()),
		HTTP:      httpLis.base,
		PID:       os.Getpid(),
		Host:      host,
		Started:   time.Now().UTC().Truncate(time.Second),
		Token:     httpLis.access.Token,
		Dashboard: httpLis.url(),
	}
	if err == nil {
		info.Credentials = &client.Credentials{CA: bundle.CA, Cert: bundle.Cert, Key: bundle.Key}
		err = client.WriteServeInfo(home, info)
	}
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), f.grace+30*time.Second)
		defer cancel()
		return &exitError{ExitFailed, errors.Join(err, stop(ctx, true))}
	}
	serveFile := filepath.Join(home, client.ServeFile)
	defer removeServeFile(serveFile, info.PID, log)

	dashCtx, stopDash := context.WithCancel(context.Background())
	defer stopDash()
	web := &http.Server{Handler: serveDashboard(dashCtx, cl, m, httpLis.access), ReadHeaderTimeout: 10 * time.Second,
		// stopDash ends the dashboard's event streams and followed logs.
		BaseContext: func(net.Listener) context.Context { return dashCtx }}
	go func() {
		if err := web.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve: status page", "err", err)
		}
	}()

	if httpLis.warning != "" {
		fmt.Fprintf(e.stderr, "drover serve: warning: %s\n", httpLis.warning)
	}
	fmt.Fprintf(e.stderr, "drover serve: manager at %s, nodes join at %s (drover token), pid %d; credentials in %s\ndrover serve: dashboard at %s\n",
		info.Address, joins.Addr(), info.PID, serveFile, info.Dashboard)

	// Probes see a shutdown coming from its start, through its grace.
	go func() {
		select {
		case <-cl.ShutdownAsked():
			health.Shutdown()
		case <-cl.Done():
		case <-dashCtx.Done():
		}
	}()
	viaSignal := false
	select {
	case s := <-sigs:
		log.Info("serve: shutting down", "signal", s)
		viaSignal = true
	case <-cl.Done():
		log.Info("serve: shutting down: asked by a client")
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.grace+30*time.Second)
	defer cancel()
	// A second signal cuts the grace short: SIGKILL for every process now.
	// (Cancelling ctx instead would leave them to their agents.)
	go func() {
		select {
		case <-sigs:
			log.Warn("serve: second signal: killing every process")
			if err := cl.CancelAll(ctx, "", 0); err != nil {
				log.Warn("serve: kill every process", "err", err)
			}
		case <-ctx.Done():
		}
	}()
	stopDash()
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	_ = web.Shutdown(wctx)
	wcancel()
	if err := stop(ctx, viaSignal); err != nil {
		fmt.Fprintln(e.stderr, "drover serve:", err)
		return errFailed
	}
	return nil
}

// errServeEnded ends the launch of hosts still connecting when serve ends.
var errServeEnded = errors.New("serve ended before it came up")

// launchNodes launches the agents and returns once the first node is up:
// the other hosts join the cluster as they come up, through the manager's
// OnNode, while serve already answers. It fails when no node came up, or
// on a signal before one did. end ends the launch still going on and
// waits for it; it is safe to call more than once.
func launchNodes(m *manager.Manager, where *plan, feed *nodeFeed, sigs <-chan os.Signal, log *slog.Logger) (end func(), err error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan struct{})
	var launchErr error
	go func() {
		defer close(done)
		tctx, tcancel := context.WithTimeout(ctx, agentStartTimeout)
		defer tcancel()
		_, launchErr = where.launch(tctx, m, log)
		feed.settle(m)
	}()
	end = func() {
		cancel(errServeEnded)
		<-done
	}
	select {
	case <-feed.firstUp:
		return end, nil
	case <-done:
	case s := <-sigs:
		cancel(fmt.Errorf("%s while the agents were starting", s))
		<-done
		return end, context.Cause(ctx)
	}
	if feed.nodes() > 0 {
		return end, nil
	}
	if len(m.LaunchFailures()) == 0 && launchErr != nil {
		return end, launchErr // nothing said why yet
	}
	return end, errors.New("no node came up")
}

// claimHome makes sure no other serve uses home: it takes home/serve.lock
// (held until unlock, released by the kernel should this process die) and
// refuses when another process holds it. Where the file system has no
// locks it falls back to serve.json's pid. A stale serve.json is removed.
func claimHome(home string, log *slog.Logger) (unlock func(), err error) {
	serveFile := filepath.Join(home, client.ServeFile)
	old, readErr := client.ReadServeInfo(home)
	running := func() error {
		if old != nil {
			return &exitError{ExitFailed, fmt.Errorf("a drover serve is already running (pid %d, %s); stop it with drover shutdown, or use another DROVER_HOME", old.PID, old.Address)}
		}
		return &exitError{ExitFailed, fmt.Errorf("a drover serve is already running with DROVER_HOME=%s; stop it with drover shutdown, or use another DROVER_HOME", home)}
	}
	lock, err := os.OpenFile(filepath.Join(home, "serve.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, &exitError{ExitFailed, fmt.Errorf("DROVER_HOME: %w", err)}
	}
	unlock = func() { lock.Close() }
	switch err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); {
	case err == nil:
	case errors.Is(err, unix.EWOULDBLOCK):
		unlock()
		return nil, running()
	case errors.Is(err, unix.ENOLCK), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
		// No locks here: serve.json is all there is to go by.
	default:
		unlock()
		return nil, &exitError{ExitFailed, fmt.Errorf("lock DROVER_HOME: %w", err)}
	}
	// Even with the lock ours, a serve.json whose process lives (or, from
	// another host, whose address answers) may be a serve whose lock we
	// cannot see: on another host over a file system without shared
	// locks, say. A live pid alone may have been reused: it must answer.
	if old != nil {
		if dead, _ := old.Stale(); !dead && serveAnswers(old.Address) {
			unlock()
			return nil, running()
		}
	}
	switch {
	case old != nil:
		log.Warn("serve: replacing a stale serve.json", "pid", old.PID, "address", old.Address)
		_ = os.Remove(serveFile)
	case readErr != nil && !errors.Is(readErr, os.ErrNotExist):
		log.Warn("serve: replacing an unreadable serve.json", "err", readErr)
		_ = os.Remove(serveFile)
	}
	return unlock, nil
}

// serveAnswers reports whether something accepts connections at addr.
func serveAnswers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// removeServeFile removes serve.json if it is still the one of pid.
func removeServeFile(path string, pid int, log *slog.Logger) {
	info, err := client.ReadServeInfo(filepath.Dir(path))
	if err != nil || info.PID != pid {
		return
	}
	if err := os.Remove(path); err != nil {
		log.Warn("serve: remove serve.json", "err", err)
	}
}

// joinListen is where the enrolment listener listens: flag, else the
// manager's host with a free port.
func joinListen(flag, managerAddr string) string {
	if flag != "" {
		return flag
	}
	host, _, err := net.SplitHostPort(managerAddr)
	if err != nil {
		return "127.0.0.1:0"
	}
	return net.JoinHostPort(host, "0")
}

// nodeUp tells whether a node of that name is in the cluster and not lost
// or failed: a node may not join under its name.
func nodeUp(cl *cluster.Cluster, name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return true // cannot tell: refuse rather than shadow a node
	}
	for _, n := range nodes {
		if n.Name == name && n.State != "lost" && n.State != "error" {
			return true
		}
	}
	return false
}

// dialable turns a listener's address into one to dial: an unspecified
// host (0.0.0.0, ::) becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
