package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

func agentCount(b *testing.B) int {
	if s := os.Getenv("DROVER_BENCH_AGENTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("DROVER_BENCH_AGENTS=%q", s)
		}
		return n
	}
	return 1000
}

// BenchmarkManyAgents connects 1000 agents (DROVER_BENCH_AGENTS) over
// real mutual-TLS gRPC connections on loopback to one manager (wire.Server
// in this process) at the default heartbeat rate, and measures the
// manager's CPU over 10 s of steady state (getrusage of this process; the
// agents run in a child process: this test binary in helper mode) and its
// heap and RSS per agent. The agents are stubs that run nothing: this
// measures the manager.
func BenchmarkManyAgents(b *testing.B) {
	n := agentCount(b)
	const steady = 10 * time.Second
	for b.Loop() {
		manyAgents(b, n, steady)
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

	heap0, rss0 := settledHeap(), statusKB(os.Getpid(), "VmRSS")

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	plan.Manager = lis.Addr().String()
	var joined atomic.Int64
	allJoined := make(chan struct{})
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
	helper := exec.Command(os.Args[0], "-test.run=^TestManyAgentsHelper$", "-test.v", "-test.timeout=10m")
	helper.Env = append(os.Environ(), agentsEnv+"="+planFile)
	var helperOut strings.Builder
	helper.Stdout, helper.Stderr = &helperOut, &helperOut
	lifeline, err := helper.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		b.Fatal(err)
	}
	helperDone := make(chan error, 1)
	go func() { helperDone <- helper.Wait() }()
	defer func() {
		lifeline.Close()
		select {
		case <-helperDone:
		case <-time.After(time.Minute):
			_ = helper.Process.Kill()
			<-helperDone
		}
	}()

	connectStart := time.Now()
	select {
	case <-allJoined:
	case err := <-helperDone:
		b.Fatalf("agents' helper exited (%v) with %d of %d joined:\n%s", err, joined.Load(), n, helperOut.String())
	case <-time.After(2 * time.Minute):
		b.Fatalf("%d of %d agents joined within 2 minutes", joined.Load(), n)
	}
	connectTime := time.Since(connectStart)
	time.Sleep(3 * time.Second) // let the handshakes' garbage and bursts settle

	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	agentsCPU0 := procCPU(helper.Process.Pid)
	wall0 := time.Now()
	time.Sleep(steady)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	agentsCPU1 := procCPU(helper.Process.Pid)
	wall := time.Since(wall0)

	lost := 0
	for _, rn := range srv.Nodes() {
		if rn.State() != "up" {
			lost++
		}
	}
	cpu := tv(ru1.Utime) - tv(ru0.Utime) + tv(ru1.Stime) - tv(ru0.Stime)
	pct := 100 * cpu.Seconds() / wall.Seconds()
	agentsPct := 100 * (agentsCPU1 - agentsCPU0).Seconds() / wall.Seconds()
	heap1, rss1 := settledHeap(), statusKB(os.Getpid(), "VmRSS")
	heapPer := float64(int64(heap1)-int64(heap0)) / float64(n) / 1024
	rssPer := float64(rss1-rss0) / float64(n)
	b.ReportMetric(pct, "manager-CPU-%")
	b.ReportMetric(heapPer, "heap-KiB/agent")
	b.ReportMetric(rssPer, "RSS-KiB/agent")
	b.ReportMetric(agentsPct, "agents-CPU-%")
	b.Logf("%d agents joined in %v; over %v steady state the manager used %.2f%% of one core (%v CPU); "+
		"heap %.1f KiB/agent, RSS %.1f KiB/agent; the %d stub agents' process used %.2f%%; nodes not up at the end: %d",
		n, connectTime.Round(time.Millisecond), wall.Round(time.Millisecond), pct, cpu.Round(time.Millisecond),
		heapPer, rssPer, n, agentsPct, lost)
	if lost > 0 {
		b.Errorf("%d of %d nodes were not up at the end of the steady state", lost, n)
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i, bundle := range plan.Agents {
		conf, err := bundle.ClientTLS("")
		if err != nil {
			t.Fatal(err)
		}
		stub := &stubNode{name: "a" + strconv.Itoa(i), ready: make(chan struct{})}
		wg.Go(func() {
			err := wire.RunAgent(ctx, wire.AgentOptions{
				Node: stub,
				Dial: func(context.Context) (*grpc.ClientConn, error) {
					return grpc.NewClient(plan.Manager, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
				},
				Version: "bench",
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				failed.Add(1)
				t.Logf("agent %s: %v", stub.name, err)
			}
		})
		if i%50 == 49 {
			time.Sleep(10 * time.Millisecond) // no thundering herd of handshakes
		}
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d agents ended with an error", failed.Load())
	}
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
