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
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
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
}

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
	children []*launch.Child
	exited   int // launched agents that have exited
	joined   []*wire.RemoteNode
	changed  chan struct{} // signalled on every join and agent exit
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
	m := &Manager{opts: opts, log: log, ca: ca, lis: lis, served: make(chan struct{}), changed: make(chan struct{}, 1)}
	m.server = wire.NewServer(wire.ServerOptions{
		NodeTimeout:    opts.NodeTimeout,
		MonitorTimeout: opts.MonitorTimeout,
		Logger:         log,
		Authorize:      authorizeAgent,
		OnNode:         m.join,
	})
	m.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(ca.ServerTLS(mine))),
		// Dead connections are found by our own heartbeats; these only
		// keep idle clients' connections from being dropped as abusive.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
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
	m.mu.Unlock()
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
	m.mu.Lock()
	m.children = append(m.children, c)
	m.mu.Unlock()
	go func() {
		<-c.Done()
		m.mu.Lock()
		m.exited++
		m.mu.Unlock()
		m.signal()
	}()
	return nil
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
	var wg sync.WaitGroup
	for _, n := range m.Nodes() {
		wg.Go(func() {
			if err := n.Shutdown(ctx, m.opts.Grace); err != nil && !errors.Is(err, wire.ErrNodeLost) {
				m.log.Warn("shut down node", "node", n.Name(), "err", err)
			}
		})
	}
	wg.Wait()
	m.mu.Lock()
	children := m.children
	m.mu.Unlock()
	var errs []error
	for _, c := range children {
		if err := c.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	m.server.Close()
	m.grpc.Stop()
	<-m.served
	return errors.Join(errs...)
}
