package wire

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// helperEnv makes the test binary run helperMain instead of the tests.
// Children are started only through an agent (its supervisor owns reaping
// in this process), never with os/exec.
const helperEnv = "DROVER_WIRE_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

func helperMain(args []string) int {
	if len(args) == 0 {
		return 100
	}
	switch args[0] {
	case "exit": // exit N
		n, _ := strconv.Atoi(args[1])
		return n
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	case "sleepms": // sleepms N, then exit 0
		n, _ := strconv.Atoi(args[1])
		time.Sleep(time.Duration(n) * time.Millisecond)
		return 0
	case "pattern": // pattern N M: N bytes of patternData on stdout, M on stderr
		n, _ := strconv.ParseInt(args[1], 10, 64)
		m, _ := strconv.ParseInt(args[2], 10, 64)
		if _, err := io.Copy(os.Stdout, io.LimitReader(&patternReader{}, n)); err != nil {
			return 2
		}
		if _, err := io.Copy(os.Stderr, io.LimitReader(&patternReader{}, m)); err != nil {
			return 2
		}
		return 0
	case "files": // files [cat=PATH | mode=PATH | write=PATH=TEXT | link=PATH=TARGET]...
		for _, a := range args[1:] {
			op, rest, _ := strings.Cut(a, "=")
			p, v, _ := strings.Cut(rest, "=")
			var err error
			switch op {
			case "cat":
				var b []byte
				if b, err = os.ReadFile(p); err == nil {
					_, err = os.Stdout.Write(b)
				}
			case "mode":
				var st os.FileInfo
				if st, err = os.Stat(p); err == nil {
					fmt.Fprintf(os.Stderr, "%s %o\n", p, st.Mode().Perm())
				}
			case "write":
				if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
					err = os.WriteFile(p, []byte(v), 0o640)
				}
			case "link":
				err = os.Symlink(v, p)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 3
			}
		}
		return 0
	case "readline": // exit 7 when the first stdin line is "hello", else 8
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if line == "hello\n" {
			return 7
		}
		return 8
	}
	return 100
}

// helperEnvList is the whole base environment of the test agents. Under
// -race a child would otherwise sleep a second at exit.
func helperEnvList() []string {
	return []string{helperEnv + "=1", "GORACE=atexit_sleep_ms=0"}
}

const patience = 60 * time.Second // generous: we wait for events, not for time

func testExe(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// helperSpec runs the test binary in a helper mode.
func helperSpec(t testing.TB, name string, args ...string) node.ProcessSpec {
	return node.ProcessSpec{Name: name, Args: append([]string{testExe(t)}, args...)}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// patternReader is an endless deterministic byte stream that does not
// repeat with any power-of-two period below 2^24, so a misplaced chunk
// shows.
type patternReader struct{ off int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = patternByte(r.off + int64(i))
	}
	r.off += int64(len(p))
	return len(p), nil
}

func patternByte(i int64) byte { return byte(i*7 + i>>8 + i>>16 + i/24571) }

// ---- the manager side ----

type manager struct {
	t      testing.TB
	srv    *Server
	gs     *grpc.Server
	lis    net.Listener
	addr   string
	nodes  chan *RemoteNode
	served chan struct{}
	once   sync.Once
}

func newManager(t testing.TB, opts ServerOptions) *manager {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveManager(t, lis, opts)
}

func serveManager(t testing.TB, lis net.Listener, opts ServerOptions) *manager {
	m := &manager{t: t, lis: lis, addr: lis.Addr().String(), nodes: make(chan *RemoteNode, 16), served: make(chan struct{})}
	if opts.OnNode == nil {
		opts.OnNode = func(n *RemoteNode) { m.nodes <- n }
	}
	m.srv = NewServer(opts)
	m.gs = grpc.NewServer()
	m.srv.Register(m.gs)
	go func() {
		defer close(m.served)
		_ = m.gs.Serve(lis)
	}()
	t.Cleanup(m.stop)
	return m
}

// stop closes the Server and the grpc.Server.
func (m *manager) stop() {
	m.once.Do(func() {
		m.srv.Close()
		m.gs.Stop()
		<-m.served
	})
}

// kill makes the manager vanish without a word: connections close, the
// Server's sessions are left as they are until cleanup.
func (m *manager) kill() {
	m.gs.Stop()
	<-m.served
}

func (m *manager) node(t testing.TB) *RemoteNode {
	t.Helper()
	select {
	case n := <-m.nodes:
		return n
	case <-time.After(patience):
		t.Fatal("no agent connected")
	}
	return nil
}

// ---- the agent side ----

// countingNode counts the Starts that reach the agent, and keeps their specs.
type countingNode struct {
	*agent.Agent
	mu     sync.Mutex
	starts map[string]int
	specs  []node.ProcessSpec
}

func (c *countingNode) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	c.mu.Lock()
	c.starts[spec.Name]++
	c.specs = append(c.specs, spec)
	c.mu.Unlock()
	return c.Agent.Start(ctx, spec)
}

func (c *countingNode) startCounts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.starts))
	for k, v := range c.starts {
		out[k] = v
	}
	return out
}

type testAgent struct {
	*countingNode
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

func dialer(addr string) func(ctx context.Context) (*grpc.ClientConn, error) {
	return func(ctx context.Context) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
}

func newAgent(t testing.TB, name string) *countingNode {
	t.Helper()
	ag, err := agent.New(agent.Options{
		Name:      name,
		Resources: topology.Resources{Node: name, Cores: [][]int{{0}, {1}}, MemoryBytes: 1 << 30},
		BaseEnv:   helperEnvList(),
		Scratch:   t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ag.Shutdown(0) })
	return &countingNode{Agent: ag, starts: map[string]int{}}
}

// runAgent runs RunAgent for a new agent named name, dialing addr unless
// opts.Dial is set.
func runAgent(t testing.TB, name, addr string, opts AgentOptions) *testAgent {
	t.Helper()
	cn := newAgent(t, name)
	opts.Node = cn
	if opts.Dial == nil {
		opts.Dial = dialer(addr)
	}
	if opts.Grace == 0 {
		opts.Grace = 200 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{countingNode: cn, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- RunAgent(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		ta.wait(t)
	})
	return ta
}

// wait returns what RunAgent returned.
func (ta *testAgent) wait(t testing.TB) error {
	t.Helper()
	if ta.ended {
		return ta.err
	}
	select {
	case ta.err = <-ta.done:
		ta.ended = true
		return ta.err
	case <-time.After(patience):
		t.Fatal("RunAgent did not return")
	}
	return nil
}

// waitGone waits until Ready is closed; exits stay in Finished (see
// nodetest.Exits.WaitGone to gather them).
func waitGone(t testing.TB, n node.Node) {
	t.Helper()
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	for {
		select {
		case _, ok := <-n.Ready():
			if !ok {
				return
			}
		case <-deadline.C:
			t.Fatal("Ready not closed")
		}
	}
}

// ---- a TCP proxy on loopback that can be frozen and cut ----

type proxy struct {
	t      testing.TB
	lis    net.Listener
	target string

	mu     sync.Mutex
	cond   sync.Cond
	frozen bool
	closed bool
	pairs  map[*pair]struct{}
	wg     sync.WaitGroup
}

type pair struct {
	a, b net.Conn
	dead bool
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, lis: lis, target: target, pairs: map[*pair]struct{}{}}
	p.cond.L = &p.mu
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pr := &pair{a: c, b: u}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		p.pairs[pr] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(pr, pr.a, pr.b)
		go p.pipe(pr, pr.b, pr.a)
	}
}

func (p *proxy) pipe(pr *pair, dst, src net.Conn) {
	defer p.wg.Done()
	defer p.kill(pr)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate(pr) {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// gate waits while the proxy is frozen; false when the pair is dead.
func (p *proxy) gate(pr *pair) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.frozen && !pr.dead {
		p.cond.Wait()
	}
	return !pr.dead
}

func (p *proxy) kill(pr *pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked(pr)
}

func (p *proxy) killLocked(pr *pair) {
	if !pr.dead {
		pr.dead = true
		pr.a.Close()
		pr.b.Close()
		delete(p.pairs, pr)
		p.cond.Broadcast()
	}
}

// freeze stops forwarding bytes (the connections stay open).
func (p *proxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

func (p *proxy) thaw() {
	p.mu.Lock()
	p.frozen = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// cut closes every connection now open; new ones are accepted.
func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.pairs)
	for pr := range p.pairs {
		p.killLocked(pr)
	}
	return n
}

func (p *proxy) close() {
	p.lis.Close()
	p.mu.Lock()
	p.closed = true
	for pr := range p.pairs {
		p.killLocked(pr)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// listenAgain listens on an address that was just given up.
func listenAgain(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var lis net.Listener
		if lis, err = net.Listen("tcp", addr); err == nil {
			return lis, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}
