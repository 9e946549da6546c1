// Package manager is drover's manager: it makes the run's credentials,
// listens for agents (mutual TLS only), launches them, and hands their
// nodes to whoever drives the work (the batch queue of `drover run`, the
// control API of `drover serve`). Batch and daemon share this one path.
package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/launch"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/wire"
)

// Options configure a Manager.
type Options struct {
	Listen         string // host:port for agents and clients; "" = 127.0.0.1:0
	NodeTimeout    time.Duration
	MonitorTimeout time.Duration
	Grace          time.Duration // SIGTERM to SIGKILL when agents stop processes
	Logger         *slog.Logger
	AgentLogLevel  string
	AgentExe       string    // the drover binary for local agents; "" = this one
	AgentLogs      io.Writer // where local agents' own logs go; nil = discard
	// Register adds more services (the control API) to the gRPC server.
	Register func(*grpc.Server)
	// OnNode is told of every node that joins (drover serve's cluster).
	OnNode func(node.Node)
	// OnLaunchFailure is told of every node that could not be launched or
	// whose agent ended before it joined, and of every failed relaunch; it
	// may be called from several goroutines at once.
	OnLaunchFailure func(LaunchFailure)
	// Relaunch: a node that joined and is then lost (its agent died or
	// fell silent) is launched again by its launcher, after a delay that
	// starts at RelaunchMin and doubles up to RelaunchMax while relaunches
	// fail. It rejoins under its name as a new node (OnNode again).
	Relaunch bool
	// After waits between relaunches; nil is time.After. Tests count the
	// delays with it.
	After func(time.Duration) <-chan time.Time
	// Resources are counted resources every launched node declares
	// (--resource); SSHLaunch.Resources adds per host.
	Resources map[string]int64
}

// Relaunch delays: the first relaunch waits RelaunchMin, each one that
// fails doubles the wait, up to RelaunchMax. A node that stayed up for
// RelaunchMax starts again from RelaunchMin.
const (
	RelaunchMin = time.Second
	RelaunchMax = time.Minute
)

// relaunchJoin bounds the wait for a relaunched agent to join.
const relaunchJoin = 30 * time.Second

// LaunchFailure is a node (or, for ssh, the host as given) that did not
// join, and why.
type LaunchFailure struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// expected is a node a launcher started an agent for.
type expected struct {
	agent  launch.Agent
	joined bool
	failed bool
	own    bool // agent serves this node only: it may be stopped for it
	// relaunched: started by the node's keeper, which reports its failure.
	relaunched bool
	node       *wire.RemoteNode // once joined
	up         chan struct{}    // closed once joined
}

// relauncher starts a new agent for one node.
type relauncher func(ctx context.Context) (launch.Agent, error)

// Manager owns the listener, the agent sessions and the launched agents.
type Manager struct {
	opts   Options
	log    *slog.Logger
	ca     *creds.CA
	lis    net.Listener
	grpc   *grpc.Server
	server *wire.Server
	served chan struct{}

	mu       sync.Mutex
	children []launch.Agent
	exited   int // launched agents that have exited
	joined   []*wire.RemoteNode
	changed  chan struct{} // signalled on every join and agent exit
	expect   map[string]*expected
	failures []LaunchFailure
	claimed  map[string]string // node name -> host it was launched on (ssh)

	relaunch map[string]relauncher // by node name, when Options.Relaunch
	keeping  map[string]bool       // node names whose keeper runs
	quit     chan struct{}         // closed by Close: no more relaunches
	quitOnce sync.Once
	keepers  sync.WaitGroup
}

// New makes the credentials, listens and starts serving.
func New(opts Options) (*Manager, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.AgentLogs == nil {
		opts.AgentLogs = io.Discard
	}
	ca, err := creds.NewCA()
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	lis, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("manager: listen on %s: %w", opts.Listen, err)
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if host, _, err := net.SplitHostPort(lis.Addr().String()); err == nil {
		hosts = append(hosts, host)
	}
	mine, err := ca.Issue(creds.RoleManager, "manager", hosts)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("manager: %w", err)
	}
	m := &Manager{opts: opts, log: log, ca: ca, lis: lis, served: make(chan struct{}), changed: make(chan struct{}, 1),
		expect: make(map[string]*expected), claimed: make(map[string]string),
		relaunch: make(map[string]relauncher), keeping: make(map[string]bool), quit: make(chan struct{})}
	if m.opts.After == nil {
		m.opts.After = time.After
	}
	m.server = wire.NewServer(wire.ServerOptions{
		NodeTimeout:    opts.NodeTimeout,
		MonitorTimeout: opts.MonitorTimeout,
		Logger:         log,
		Authorize:      authorizeAgent,
		OnNode:         m.join,
	})
	m.grpc = grpc.NewServer(
		grpc.Creds(&loggedCreds{TransportCredentials: credentials.NewTLS(ca.ServerTLS(mine)), log: log}),
		// A connection that never finishes its handshake (a port scan, a
		// hung client) must not hold up Close for gRPC's default 120 s.
		grpc.ConnectionTimeout(5*time.Second),
		// Dead connections are found by our own heartbeats; these only
		// keep idle clients' connections from being dropped as abusive.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Room for a submitted job file of jobfile.MaxFileBytes, and for a
		// start too large to run to reach the checks that refuse it with
		// INVALID_ARGUMENT rather than gRPC's RESOURCE_EXHAUSTED.
		grpc.MaxRecvMsgSize(2*jobfile.MaxFileBytes),
	)
	m.server.Register(m.grpc)
	if opts.Register != nil {
		opts.Register(m.grpc)
	}
	go func() {
		defer close(m.served)
		if err := m.grpc.Serve(lis); err != nil {
			log.Error("manager: serve", "err", err)
		}
	}()
	return m, nil
}

// authorizeAgent lets a session in only with an agent certificate made
// for the node it claims to be.
func authorizeAgent(ctx context.Context, hello *droverpb.Hello) error {
	p, err := creds.PeerFromContext(ctx)
	if err != nil {
		return err
	}
	if p.Role != creds.RoleAgent {
		return fmt.Errorf("a %s certificate cannot open an agent session", p.Role)
	}
	if p.Name != hello.GetNode() {
		return fmt.Errorf("certificate for node %q cannot join as %q", p.Name, hello.GetNode())
	}
	return nil
}

func (m *Manager) join(n *wire.RemoteNode) {
	m.log.Info("node up", "node", n.Name(), "cores", len(n.Resources().Cores), "version", n.Version())
	m.mu.Lock()
	m.joined = append(m.joined, n)
	var keep *expected
	if e := m.expect[n.Name()]; e != nil && !e.joined {
		e.joined, e.node = true, n
		close(e.up)
		if m.relaunch[n.Name()] != nil && !m.keeping[n.Name()] {
			select {
			case <-m.quit:
			default:
				m.keeping[n.Name()] = true
				m.keepers.Add(1)
				keep = e
			}
		}
	}
	m.mu.Unlock()
	if keep != nil {
		go m.keep(n.Name(), keep)
	}
	if m.opts.OnNode != nil {
		m.opts.OnNode(n)
	}
	m.signal()
}

func (m *Manager) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// Addr is where agents and clients connect.
func (m *Manager) Addr() string { return m.lis.Addr().String() }

// CA is the run's certificate authority, for issuing client credentials.
func (m *Manager) CA() *creds.CA { return m.ca }

// Nodes returns the nodes that have joined, in order.
func (m *Manager) Nodes() []*wire.RemoteNode {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*wire.RemoteNode(nil), m.joined...)
}

// AgentConfig makes the configuration, with fresh credentials, for an
// agent that will report as node name.
func (m *Manager) AgentConfig(name string) (*launch.AgentConfig, error) {
	b, err := m.ca.Issue(creds.RoleAgent, name, nil)
	if err != nil {
		return nil, fmt.Errorf("credentials for agent %s: %w", name, err)
	}
	return &launch.AgentConfig{
		Manager:        m.Addr(),
		Node:           name,
		Credentials:    b,
		MonitorTimeout: m.opts.MonitorTimeout,
		Grace:          m.opts.Grace,
		LogLevel:       m.opts.AgentLogLevel,
		Resources:      maps.Clone(m.opts.Resources),
	}, nil
}

// LaunchLocal starts an agent on this machine as a child process.
func (m *Manager) LaunchLocal(name string) error {
	exe := m.opts.AgentExe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("launch local agent: %w", err)
		}
	}
	cfg, err := m.AgentConfig(name)
	if err != nil {
		return err
	}
	c, err := launch.StartLocal(exe, cfg, m.opts.AgentLogs)
	if err != nil {
		return err
	}
	m.setRelauncher(name, func(context.Context) (launch.Agent, error) {
		cfg, err := m.AgentConfig(name)
		if err != nil {
			return nil, err
		}
		return launch.StartLocal(exe, cfg, m.opts.AgentLogs)
	})
	m.addAgent(c, name)
	return nil
}

// setRelauncher records how to launch node name again (with
// Options.Relaunch).
func (m *Manager) setRelauncher(name string, r relauncher) {
	if !m.opts.Relaunch {
		return
	}
	m.mu.Lock()
	m.relaunch[name] = r
	m.mu.Unlock()
}

// addAgent follows a launched agent that runs the nodes names.
func (m *Manager) addAgent(a launch.Agent, names ...string) { m.follow(a, false, names...) }

// follow follows a launched agent that runs the nodes names and returns
// the last one's entry. The failure of a relaunched one to join is its
// keeper's to report.
func (m *Manager) follow(a launch.Agent, relaunched bool, names ...string) *expected {
	m.mu.Lock()
	m.children = append(m.children, a)
	var e *expected
	for _, n := range names {
		e = &expected{agent: a, own: len(names) == 1, relaunched: relaunched, up: make(chan struct{})}
		for _, f := range m.failures { // failed while being launched
			if f.Node == n && !relaunched {
				e.failed = true
			}
		}
		m.expect[n] = e
	}
	m.mu.Unlock()
	go func() {
		<-a.Done()
		m.mu.Lock()
		m.exited++
		var failed []string
		var ended []*wire.RemoteNode
		for _, n := range names {
			e := m.expect[n]
			if e == nil || e.agent != a {
				continue
			}
			if !e.joined && !e.failed && !e.relaunched {
				failed = append(failed, n)
			}
			if e.joined && a.Ended() {
				// The latest session of that name: e is a's, so no other
				// agent was launched for it since.
				for i := len(m.joined) - 1; i >= 0; i-- {
					if m.joined[i].Name() == n {
						ended = append(ended, m.joined[i])
						break
					}
				}
			}
		}
		m.mu.Unlock()
		for _, rn := range ended {
			go rn.AgentEnded(agentEndedReason(a.Err()))
		}
		reason := "agent exited before it joined"
		if err := a.Err(); err != nil {
			reason += ": " + err.Error()
		}
		for _, n := range failed {
			m.fail(n, reason)
		}
		m.signal()
	}()
	return e
}

// taskEnded: the launcher saw the agent of one of its nodes end while
// others of the same launch go on (srun reports each task's end). A node
// not joined yet failed to launch; a joined one is lost now, not after
// --node-timeout of silence.
func (m *Manager) taskEnded(name, reason string) {
	m.mu.Lock()
	var rn *wire.RemoteNode
	if e := m.expect[name]; e != nil && e.joined {
		for i := len(m.joined) - 1; i >= 0; i-- {
			if m.joined[i].Name() == name {
				rn = m.joined[i]
				break
			}
		}
	}
	m.mu.Unlock()
	if rn == nil {
		m.fail(name, "agent ended: "+reason)
		return
	}
	go rn.AgentEnded("its agent ended: " + reason)
}

func agentEndedReason(err error) string {
	if err != nil {
		return "its agent ended: " + err.Error()
	}
	return "its agent ended"
}

// fail records that node will not join. A node that joined, or failed
// already, is left alone.
func (m *Manager) fail(name, reason string) {
	m.mu.Lock()
	if e := m.expect[name]; e != nil {
		if e.joined || e.failed {
			m.mu.Unlock()
			return
		}
		e.failed = true
	}
	f := LaunchFailure{Node: name, Reason: reason}
	m.failures = append(m.failures, f)
	m.mu.Unlock()
	// Info: the launch's user (run, serve) tells it to the user in a sentence.
	m.log.Info("node failed to launch", "node", name, "reason", reason)
	if m.opts.OnLaunchFailure != nil {
		m.opts.OnLaunchFailure(f)
	}
	m.signal()
}

// LaunchFailures lists the nodes that did not join, and why, in the order
// they failed.
func (m *Manager) LaunchFailures() []LaunchFailure {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]LaunchFailure(nil), m.failures...)
}

// WaitLaunched waits until every node a launcher started an agent for has
// joined or failed. When ctx ends first the nodes still missing fail with
// "did not join". It returns the joined nodes, and an error only when no
// node joined (with every failure's reason).
func (m *Manager) WaitLaunched(ctx context.Context) ([]node.Node, error) {
	for {
		m.mu.Lock()
		var missing []string
		for name, e := range m.expect {
			if !e.joined && !e.failed {
				missing = append(missing, name)
			}
		}
		m.mu.Unlock()
		if len(missing) == 0 {
			break
		}
		select {
		case <-m.changed:
			continue
		case <-ctx.Done():
		}
		for _, name := range missing {
			m.fail(name, fmt.Sprintf("agent launched but did not join (%v)", context.Cause(ctx)))
		}
		break
	}
	var nodes []node.Node
	for _, rn := range m.Nodes() {
		nodes = append(nodes, rn)
	}
	if len(nodes) == 0 {
		var errs []error
		for _, f := range m.LaunchFailures() {
			errs = append(errs, fmt.Errorf("%s: %s", f.Node, f.Reason))
		}
		if len(errs) == 0 {
			errs = append(errs, errors.New("nothing was launched"))
		}
		return nil, fmt.Errorf("no node joined:\n%w", errors.Join(errs...))
	}
	return nodes, nil
}

// remoteListen reports whether the manager listens on every address (a
// wildcard), so agents may dial whichever address reaches it.
func (m *Manager) wildcard() bool {
	host, _, err := net.SplitHostPort(m.Addr())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

func (m *Manager) port() string {
	_, port, _ := net.SplitHostPort(m.Addr())
	return port
}

// Candidates are the addresses an agent on another host may reach the
// manager at: the listen address when it is a specific one, else every
// address of this machine's interfaces (loopback last).
func (m *Manager) Candidates() []string {
	if !m.wildcard() {
		return []string{m.Addr()}
	}
	var out, loop []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsMulticast() {
			continue
		}
		hp := net.JoinHostPort(ipn.IP.String(), m.port())
		if ipn.IP.IsLoopback() {
			loop = append(loop, hp)
		} else {
			out = append(out, hp)
		}
	}
	return append(out, loop...)
}

// WaitNodes waits until n nodes have joined. It fails early when every
// launched agent has exited first, or when ctx ends.
func (m *Manager) WaitNodes(ctx context.Context, n int) ([]node.Node, error) {
	for {
		m.mu.Lock()
		joined, launched, exited := len(m.joined), len(m.children), m.exited
		children := m.children
		m.mu.Unlock()
		if joined >= n {
			nodes := make([]node.Node, 0, joined)
			for _, rn := range m.Nodes() {
				nodes = append(nodes, rn)
			}
			return nodes, nil
		}
		if launched > 0 && exited == launched {
			var errs []error
			for _, c := range children {
				errs = append(errs, c.Err())
			}
			return nil, fmt.Errorf("waiting for %d nodes: every agent exited (%w)", n, errors.Join(errs...))
		}
		select {
		case <-m.changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %d nodes, %d joined: %w", n, joined, ctx.Err())
		}
	}
}

// Close shuts every agent down (they stop their processes with the grace
// and exit), waits for launched agents, and stops serving.
func (m *Manager) Close(ctx context.Context) error {
	m.quitOnce.Do(func() { close(m.quit) })
	m.keepers.Wait()
	var wg sync.WaitGroup
	for _, n := range m.Nodes() {
		wg.Go(func() {
			if err := n.Shutdown(ctx, m.opts.Grace); err != nil && !errors.Is(err, errdefs.ErrNodeLost) {
				m.log.Warn("shut down node", "node", n.Name(), "err", err)
			}
		})
	}
	wg.Wait()
	m.mu.Lock()
	children := m.children
	m.mu.Unlock()
	errc := make(chan error, len(children))
	for _, c := range children {
		go func() { errc <- c.Stop(ctx) }()
	}
	var errs []error
	for range children {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	m.server.Close()
	m.grpc.Stop()
	<-m.served
	return errors.Join(errs...)
}

// keep relaunches node name each time it is lost, until Close. e is the
// launch whose agent joined first.
func (m *Manager) keep(name string, e *expected) {
	defer m.keepers.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-m.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	m.mu.Lock()
	r := m.relaunch[name]
	m.mu.Unlock()
	log := m.log.With("node", name)
	delay := time.Duration(0)
	for {
		rn, a, own, since := e.node, e.agent, e.own, time.Now()
		select {
		case <-rn.Gone():
		case <-ctx.Done():
			return
		}
		if rn.Left() || ctx.Err() != nil {
			return // shut down in order: not lost
		}
		reason := lostReason(rn.Err())
		if time.Since(since) >= RelaunchMax {
			delay = 0 // it was up for a good while: start over
		}
		if own {
			// Its agent may still run (silent, not dead): it stops the
			// processes of the lost node, whose exits were reported
			// lost already, and goes.
			m.stopAgent(ctx, name, a)
		}
		for {
			delay = min(max(2*delay, RelaunchMin), RelaunchMax)
			log.Warn("relaunching node", "reason", reason, "in", delay)
			select {
			case <-m.opts.After(delay):
			case <-ctx.Done():
				return
			}
			next, err := m.relaunchOnce(ctx, name, r)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				reason = err.Error()
				m.relaunchFailed(name, reason)
				continue
			}
			e = next
			log.Info("node relaunched")
			break
		}
	}
}

// relaunchOnce starts an agent for name and waits for it to join.
func (m *Manager) relaunchOnce(ctx context.Context, name string, r relauncher) (*expected, error) {
	a, err := r(ctx)
	if err != nil {
		return nil, fmt.Errorf("relaunch: %w", err)
	}
	e := m.follow(a, true, name)
	t := time.NewTimer(relaunchJoin)
	defer t.Stop()
	select {
	case <-e.up:
		return e, nil
	case <-a.Done():
		select {
		case <-e.up: // joined, and has ended already: lost at once
			return e, nil
		default:
		}
		err = fmt.Errorf("relaunched agent exited before it joined")
		if aerr := a.Err(); aerr != nil {
			err = fmt.Errorf("%w: %v", err, aerr)
		}
	case <-t.C:
		err = fmt.Errorf("relaunched agent did not join within %v", relaunchJoin)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.stopAgent(ctx, name, a)
	return nil, err
}

// stopAgent has an agent of node name stop its processes and exit,
// bounded by the grace; then it is killed.
func (m *Manager) stopAgent(ctx context.Context, name string, a launch.Agent) {
	select {
	case <-a.Done():
		return
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.Grace+10*time.Second)
	defer cancel()
	if err := a.Stop(ctx); err != nil {
		m.log.Warn("stop the agent of a lost node", "node", name, "err", err)
	}
}

// relaunchFailed reports a relaunch that did not bring the node back.
func (m *Manager) relaunchFailed(name, reason string) {
	m.log.Error("node relaunch failed", "node", name, "reason", reason)
	if m.opts.OnLaunchFailure != nil {
		m.opts.OnLaunchFailure(LaunchFailure{Node: name, Reason: reason})
	}
}

// lostReason is why a node was lost, without the "node lost: " every
// such error starts with.
func lostReason(err error) string {
	if err == nil {
		return "lost"
	}
	s := err.Error()
	if r, ok := strings.CutPrefix(s, errdefs.ErrNodeLost.Error()+": "); ok {
		return r
	}
	return s
}
