package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/procs"
	"github.com/drover-hpc/drover/internal/topology"
	"github.com/drover-hpc/drover/internal/wire"
)

// agentsEnv names the file that turns TestManyAgentsHelper into the
// agents' side of BenchmarkManyAgents.
const agentsEnv = "DROVER_BENCH_AGENTS_FILE"

// agentsPlan is what the benchmark hands its helper process.
type agentsPlan struct {
	Manager string          `json:"manager"`
	Agents  []*creds.Bundle `json:"agents"` // one per agent; its name is "a<index>"
}

// agentCounts is how many agents each run of BenchmarkManyAgents connects:
// DROVER_BENCH_AGENTS, a comma-separated list (default 1000,10000).
func agentCounts(b *testing.B) []int {
	s := os.Getenv("DROVER_BENCH_AGENTS")
	if s == "" {
		return []int{1000, 10000}
	}
	var counts []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("DROVER_BENCH_AGENTS=%q: want counts like 1000,10000", s)
		}
		counts = append(counts, n)
	}
	return counts
}

const (
	// agentsSteady is the window over which the manager's CPU is measured.
	agentsSteady = 10 * time.Second
	// joinStall ends the wait for agents to join when none has joined for
	// this long: the figures are then of those that did.
	joinStall = 30 * time.Second
	// joinCap bounds the wait for agents to join in any case.
	joinCap = 5 * time.Minute
	// agentsPerSource is how many agents share one loopback source
	// address, well under the ephemeral port range (32768-60999 by
	// default), so that reconnects in TIME_WAIT cannot run out of ports.
	agentsPerSource = 5000
)

// BenchmarkManyAgents connects 1,000 and then 10,000 agents
// (DROVER_BENCH_AGENTS) over real mutual-TLS gRPC connections on loopback
// to one manager (wire.Server in this process) at the default heartbeat
// rate, and measures the manager's CPU as a fraction of one core over 10 s
// of steady state (getrusage of this process: the agents run in a child
// process, this test binary in helper mode, whose CPU and RSS are
// reported separately) and its RSS and heap. The agents are stubs that run
// nothing: this measures the manager's cost of agents being connected.
// Where not all agents join (descriptors, ports, this machine's two
// cores), it reports how many did and measures those.
func BenchmarkManyAgents(b *testing.B) {
	counts := agentCounts(b)
	// Each connection is a descriptor in this process and one in the
	// helper, which inherits the limit.
	raiseNoFile(b, uint64(slices.Max(counts))+4096)
	for _, n := range counts {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				manyAgents(b, n, agentsSteady)
			}
		})
	}
}

// raiseNoFile raises this process's descriptor limit (soft and hard) to at
// least want; as root the hard limit may be raised up to fs.nr_open.
func raiseNoFile(b *testing.B, want uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("getrlimit RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= want {
		return
	}
	lim.Cur, lim.Max = want, max(lim.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Logf("setrlimit RLIMIT_NOFILE to %d: %v (agents beyond the limit will not connect)", want, err)
	}
}

func manyAgents(b *testing.B, n int, steady time.Duration) {
	ca, err := creds.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	mine, err := ca.Issue(creds.RoleManager, "manager", []string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	plan := agentsPlan{}
	for i := range n {
		bundle, err := ca.Issue(creds.RoleAgent, "a"+strconv.Itoa(i), nil)
		if err != nil {
			b.Fatal(err)
		}
		plan.Agents = append(plan.Agents, bundle)
	}

	// What an earlier run left in the heap is handed back first, so that
	// the RSS before is this process without agents.
	debug.FreeOSMemory()
	heap0, rss0 := settledHeap(), statusKB(os.Getpid(), "VmRSS")

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	plan.Manager = lis.Addr().String()
	var joined atomic.Int64
	allJoined := make(chan struct{})
	// Sized as drover serve sizes itself; the agents' process is not.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	sizer := procs.NewManager()
	srv := wire.NewServer(wire.ServerOptions{
		Authorize: func(ctx context.Context, h *droverpb.Hello) error {
			p, err := creds.PeerFromContext(ctx)
			if err != nil {
				return err
			}
			if p.Role != creds.RoleAgent || p.Name != h.GetNode() {
				return fmt.Errorf("%s %q cannot join as %q", p.Role, p.Name, h.GetNode())
			}
			return nil
		},
		OnNode: func(*wire.RemoteNode) {
			sizer.Joined()
			if joined.Add(1) == int64(n) {
				close(allJoined)
			}
		},
	})
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(ca.ServerTLS(mine))),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(g)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	defer func() {
		srv.Close()
		g.Stop()
		<-served
	}()

	planFile := filepath.Join(b.TempDir(), "plan.json")
	data, err := json.Marshal(plan)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(planFile, data, 0o600); err != nil {
		b.Fatal(err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestManyAgentsHelper$", "-test.v", "-test.timeout=15m")
	helper.Env = append(os.Environ(), agentsEnv+"="+planFile)
	var helperOut lockedBuffer
	helper.Stdout, helper.Stderr = &helperOut, &helperOut
	lifeline, err := helper.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		b.Fatal(err)
	}
	// helperDone is closed once the helper has exited, with helperErr set.
	helperDone := make(chan struct{})
	var helperErr error
	go func() {
		helperErr = helper.Wait()
		close(helperDone)
	}()
	defer func() {
		lifeline.Close()
		select {
		case <-helperDone:
		case <-time.After(time.Minute):
			_ = helper.Process.Kill()
			<-helperDone
		}
		for line := range strings.Lines(helperOut.String()) {
			if strings.HasPrefix(line, "agents ended:") {
				b.Logf("the helper's %s", strings.TrimSpace(line))
			}
		}
	}()

	connectStart := time.Now()
	connectTime, why := waitJoined(&joined, allJoined, helperDone, &helperErr)
	got := int(joined.Load())
	if why != "" {
		b.Logf("%d of %d agents joined: %s", got, n, why)
		if got == 0 || strings.HasPrefix(why, "the agents' helper exited") {
			b.Fatalf("nothing to measure; the helper said:\n%s", tail(helperOut.String()))
		}
		connectTime = time.Since(connectStart)
	}
	time.Sleep(3 * time.Second) // let the handshakes' garbage and bursts settle

	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	agentsCPU0 := procCPU(helper.Process.Pid)
	busy0, total0 := machineCPU()
	wall0 := time.Now()
	time.Sleep(steady)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	agentsCPU1 := procCPU(helper.Process.Pid)
	busy1, total1 := machineCPU()
	wall := time.Since(wall0)
	rss1, agentsRSS := statusKB(os.Getpid(), "VmRSS"), statusKB(helper.Process.Pid, "VmRSS")

	states := map[string]int{}
	var rtts []time.Duration
	for _, rn := range srv.Nodes() {
		st := rn.State()
		states[st]++
		if st == "up" {
			rtts = append(rtts, rn.RTT())
		}
	}
	up := states["up"]
	slices.Sort(rtts)
	// What the whole machine was busy with: the cores are shared, and a
	// manager short of CPU misses heartbeats.
	machineBusy := 100 * float64(busy1-busy0) / float64(max(total1-total0, 1))
	cpu := tv(ru1.Utime) - tv(ru0.Utime) + tv(ru1.Stime) - tv(ru0.Stime)
	pct := 100 * cpu.Seconds() / wall.Seconds()
	agentsPct := 100 * (agentsCPU1 - agentsCPU0).Seconds() / wall.Seconds()
	heap1 := settledHeap()
	heapPer := float64(int64(heap1)-int64(heap0)) / float64(got) / 1024
	rssPer := float64(rss1-rss0) / float64(got)
	mib := func(kb int64) float64 { return float64(kb) / 1024 }
	b.ReportMetric(float64(got), "agents-joined")
	b.ReportMetric(float64(up), "agents-up")
	b.ReportMetric(pct, "manager-CPU-%")
	b.ReportMetric(mib(rss1), "manager-RSS-MiB")
	b.ReportMetric(heapPer, "heap-KiB/agent")
	b.ReportMetric(rssPer, "RSS-KiB/agent")
	b.ReportMetric(agentsPct, "agents-CPU-%")
	b.ReportMetric(mib(agentsRSS), "agents-RSS-MiB")
	b.Logf("%d of %d agents joined in %v; at the end %d up, %d disconnected, %d lost; over %v of steady state the manager used %.2f%% of one core (%v CPU); "+
		"its RSS %.1f MiB (%.1f MiB before the agents: %.1f KiB/agent; heap %.1f KiB/agent); "+
		"the agents' process used %.2f%% of one core, RSS %.1f MiB; heartbeat round trip of the nodes up p50 %v, p99 %v; "+
		"the machine's %d cores were %.0f%% busy",
		got, n, connectTime.Round(time.Millisecond), up, states["disconnected"], states["lost"], wall.Round(time.Millisecond), pct, cpu.Round(time.Millisecond),
		mib(rss1), mib(rss0), rssPer, heapPer, agentsPct, mib(agentsRSS),
		percentile(rtts, 50).Round(time.Microsecond), percentile(rtts, 99).Round(time.Microsecond), runtime.NumCPU(), machineBusy)

	count := fmt.Sprintf("%d agents", n)
	switch n {
	case 1000:
		count = "1,000 agents"
	case 10000:
		count = "10,000 agents"
	}
	conn := ""
	if up != n {
		conn = fmt.Sprintf(" (%d of %d up)", up, n)
	}
	cpuTarget, cpuReached := "report", "reported"+conn
	if n == 1000 {
		cpuTarget, cpuReached = "< 10% of a core", yesNo(pct < 10 && up == n)
	}
	figure(b, fmt.Sprintf("agents-%d-cpu", n), count+": manager CPU at the default heartbeats"+conn,
		fmt.Sprintf("%.1f%% of a core", pct), fmt.Sprintf("agents' side %.1f%%", agentsPct),
		fmt.Sprintf("%.2fx", pct/agentsPct), cpuTarget, cpuReached)
	figure(b, fmt.Sprintf("agents-%d-rss", n), count+": manager RSS"+conn,
		fmt.Sprintf("%.0f MiB (%.1f KiB/agent)", mib(rss1), rssPer), fmt.Sprintf("no agents %.0f MiB", mib(rss0)),
		fmt.Sprintf("%.2fx", float64(rss1)/float64(rss0)), "report", "reported"+conn)
}

// waitJoined waits until every agent has joined, none has for joinStall,
// joinCap has passed or the helper has exited. It returns how long the
// agents took to join, or why the wait ended before they all did.
func waitJoined(joined *atomic.Int64, allJoined, helperDone <-chan struct{}, helperErr *error) (time.Duration, string) {
	start := time.Now()
	capped := time.After(joinCap)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastGrew := joined.Load(), time.Now()
	for {
		select {
		case <-allJoined:
			return time.Since(start), ""
		case <-helperDone:
			return 0, fmt.Sprintf("the agents' helper exited (%v)", *helperErr)
		case <-capped:
			return 0, fmt.Sprintf("not all within %v", joinCap)
		case <-tick.C:
			if j := joined.Load(); j != last {
				last, lastGrew = j, time.Now()
			} else if time.Since(lastGrew) >= joinStall {
				return 0, fmt.Sprintf("none joined for %v after %v", joinStall, time.Since(start).Round(time.Second))
			}
		}
	}
}

// lockedBuffer collects a child's output, which may be read while the
// child still writes it.
type lockedBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.String()
}

func tv(t syscall.Timeval) time.Duration {
	return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
}

// settledHeap is the live heap after a garbage collection.
func settledHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// procCPU is the user+system CPU time of pid from /proc/PID/stat, in
// clock ticks of 10 ms (USER_HZ is 100 on Linux).
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// machineCPU is the machine's busy and total CPU time so far, in clock
// ticks, from the first line of /proc/stat (idle and iowait are not busy).
func machineCPU() (busy, total int64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		if i >= 8 { // guest times are counted in user already
			break
		}
		t, _ := strconv.ParseInt(v, 10, 64)
		total += t
		if i != 3 && i != 4 {
			busy += t
		}
	}
	return busy, total
}

// TestManyAgentsHelper is the agents' side of BenchmarkManyAgents: run by
// it in a child process, it connects every agent of the plan and serves
// until its stdin closes. Otherwise it does nothing.
func TestManyAgentsHelper(t *testing.T) {
	file := os.Getenv(agentsEnv)
	if file == "" {
		return // not run by BenchmarkManyAgents: nothing to serve
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var plan agentsPlan
	if err := json.Unmarshal(data, &plan); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	ended := map[string]int{} // how agents' sessions ended, by kind
	// At most connectSlots agents are in their first connection at once:
	// a burst of thousands of handshakes would starve the heartbeats of
	// those already joined, and the manager would lose them while the
	// rest connect.
	slots := make(chan struct{}, connectSlots)
start:
	for i, bundle := range plan.Agents {
		conf, err := bundle.ClientTLS("")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break start
		}
		free := sync.OnceFunc(func() { <-slots })
		tlsCreds := &pacedCreds{TransportCredentials: credentials.NewTLS(conf), handshook: free}
		stub := &stubNode{name: "a" + strconv.Itoa(i), ready: make(chan struct{})}
		// 127.0.0.2, .3, ...: each source address has its own ephemeral
		// ports towards the manager's one address.
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/agentsPerSource))}
		dialer := &net.Dialer{LocalAddr: src}
		wg.Go(func() {
			defer free()
			err := wire.RunAgent(ctx, wire.AgentOptions{
				Node: stub,
				Dial: func(context.Context) (*grpc.ClientConn, error) {
					return grpc.NewClient(plan.Manager, grpc.WithTransportCredentials(tlsCreds),
						grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
							return dialer.DialContext(ctx, "tcp", addr)
						}))
				},
				Version: "bench",
			})
			kind := "running when the benchmark ended"
			switch {
			case err == nil:
				kind = "shut down by the manager"
			case errors.Is(err, wire.ErrGivenUp):
				kind = "given up by the manager (lost)"
			case errors.Is(err, wire.ErrMonitorTimeout):
				kind = "monitor timeout"
			case !errors.Is(err, context.Canceled):
				kind = "other error: " + strings.ReplaceAll(err.Error(), stub.name, "NAME")
			}
			mu.Lock()
			ended[kind]++
			mu.Unlock()
		})
	}
	wg.Wait()
	// One line the benchmark logs: how the agents' sessions ended.
	kinds := slices.Sorted(maps.Keys(ended))
	var sb strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&sb, "; %d %s", ended[k], k)
	}
	fmt.Printf("agents ended: %d started%s\n", len(plan.Agents), sb.String())
}

// connectSlots is how many agents the helper lets connect at once.
const connectSlots = 32

// pacedCreds calls handshook once a TLS handshake has ended, whether or
// not it succeeded: the helper then starts the next agent.
type pacedCreds struct {
	credentials.TransportCredentials
	handshook func()
}

func (p *pacedCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	defer p.handshook()
	return p.TransportCredentials.ClientHandshake(ctx, authority, conn)
}

func (p *pacedCreds) Clone() credentials.TransportCredentials {
	return &pacedCreds{TransportCredentials: p.TransportCredentials.Clone(), handshook: p.handshook}
}

// stubNode is a node that runs nothing: enough to keep an agent session
// up, heartbeats and all.
type stubNode struct {
	name  string
	ready chan struct{}
	once  sync.Once
}

var errStub = errors.New("bench stub node runs nothing")

func (s *stubNode) Name() string { return s.name }
func (s *stubNode) Resources() topology.Resources {
	return topology.Resources{Node: s.name, Cores: [][]int{{0}}, MemoryBytes: 1 << 30}
}
func (s *stubNode) Start(context.Context, node.ProcessSpec) (node.Started, error) {
	return node.Started{}, errStub
}
func (s *stubNode) Poll(context.Context, ...string) ([]node.Status, error) { return nil, nil }
func (s *stubNode) Stop(context.Context, string, time.Duration) error      { return errStub }
func (s *stubNode) Kill(context.Context, string) error                     { return errStub }
func (s *stubNode) Purge(context.Context, string) error                    { return errStub }
func (s *stubNode) Send(context.Context, string, []byte) error             { return errStub }
func (s *stubNode) CancelAll(context.Context, time.Duration) error         { return nil }
func (s *stubNode) Finished() []node.Exit                                  { return nil }
func (s *stubNode) Ready() <-chan struct{}                                 { return s.ready }
func (s *stubNode) CloseStdin(context.Context, string) error               { return nil }
func (s *stubNode) Health() node.Health                                    { return node.Health{State: "up"} }
func (s *stubNode) GetEnv(context.Context, string) (string, bool, error)   { return "", false, nil }
func (s *stubNode) SetEnv(context.Context, string, string) error           { return nil }
func (s *stubNode) BindPorts(context.Context, bool, int) ([]int, error)    { return nil, errStub }
func (s *stubNode) ReleasePorts(context.Context, bool, []int) error        { return errStub }
func (s *stubNode) SetLogLevel(context.Context, string) error              { return nil }
func (s *stubNode) Close() error                                           { return s.Shutdown(0) }
func (s *stubNode) Shutdown(time.Duration) error {
	s.once.Do(func() { close(s.ready) })
	return nil
}
