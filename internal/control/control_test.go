package control_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/control"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
	"github.com/drover-hpc/drover/internal/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAPI records each call as a line and answers with canned results, or
// err when set. With hold set, calls wait until it is closed.
type fakeAPI struct {
	mu    sync.Mutex
	calls []string
	err   error
	hold  chan struct{}
	held  chan string // told of each call that waits on hold
	logs  []byte      // what Logs writes
	// follow: Logs with follow waits for ctx after writing logs.
	submitted *jobfile.File
}

func (f *fakeAPI) call(ctx context.Context, format string, args ...any) error {
	line := fmt.Sprintf(format, args...)
	f.mu.Lock()
	f.calls = append(f.calls, line)
	hold, held, err := f.hold, f.held, f.err
	f.mu.Unlock()
	if hold != nil {
		if held != nil {
			held <- line
		}
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *fakeAPI) lastCall(t *testing.T) string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("the API was not called")
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeAPI) numCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

var (
	t0 = time.Unix(1700000000, 123456789)
	t1 = t0.Add(3 * time.Second)
)

func (f *fakeAPI) Nodes(ctx context.Context) ([]cluster.NodeInfo, error) {
	if err := f.call(ctx, "Nodes"); err != nil {
		return nil, err
	}
	return []cluster.NodeInfo{
		{Name: "n1", State: "busy", Resources: topology.Resources{Node: "n1", Cores: [][]int{{0, 2}, {1, 3}}, MemoryBytes: 1 << 30}, BusyHWThreads: []int{0, 2}, Processes: 1},
		{Name: "n2", State: "lost", Error: "silent for 5s", Resources: topology.Resources{Node: "n2", Cores: [][]int{{0}}}},
	}, nil
}

func (f *fakeAPI) Start(ctx context.Context, req cluster.StartRequest) (cluster.StartResult, error) {
	s := req.Spec
	if err := f.call(ctx, "Start %s %s %q %v dir=%s out=%s err=%s cores=%d hw=%v group=%s", req.Node, s.Name, s.Args, s.Env, s.Dir, s.Stdout, s.Stderr, req.Cores, req.HWThreads, req.Group); err != nil {
		return cluster.StartResult{}, err
	}
	return cluster.StartResult{Node: req.Node, PID: 4242, HWThreads: []int{1, 3}}, nil
}

func (f *fakeAPI) Poll(ctx context.Context, group string, names []string) ([]node.Status, error) {
	if err := f.call(ctx, "Poll %s %q", group, names); err != nil {
		return nil, err
	}
	return []node.Status{
		{Name: "a", State: node.Running},
		{Name: "b", State: node.Exited, Exit: node.Exit{Name: "b", Node: "n1", Code: 3, Start: t0, End: t1}},
		{Name: "c", State: node.Exited, Exit: node.Exit{Name: "c", Node: "n1", Code: -1, Signal: syscall.SIGTERM, Start: t0, End: t1}},
	}, nil
}

func (f *fakeAPI) Stop(ctx context.Context, name string, grace time.Duration) error {
	return f.call(ctx, "Stop %s %s", name, grace)
}

func (f *fakeAPI) CloseStdin(ctx context.Context, name string) error {
	return f.call(ctx, "CloseStdin %s", name)
}

func (f *fakeAPI) Kill(ctx context.Context, name string) error { return f.call(ctx, "Kill %s", name) }

func (f *fakeAPI) Purge(ctx context.Context, name string) error { return f.call(ctx, "Purge %s", name) }

func (f *fakeAPI) Send(ctx context.Context, name string, data []byte) error {
	return f.call(ctx, "Send %s %q", name, data)
}

func (f *fakeAPI) Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error {
	if err := f.call(ctx, "Logs %s stderr=%v follow=%v", name, stderr, follow); err != nil {
		return err
	}
	// Write in pieces, as a follower would.
	for data := f.logs; len(data) > 0; {
		n := min(len(data), 100000)
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	if follow {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (f *fakeAPI) Finished(ctx context.Context, req cluster.FinishedRequest) ([]cluster.Receipt, error) {
	if err := f.call(ctx, "Finished %s %s %v %v", req.Reader, req.Group, req.Ack, req.Wait); err != nil {
		return nil, err
	}
	return fakeReceipts(req.Group), nil
}

func fakeReceipts(group string) []cluster.Receipt {
	return []cluster.Receipt{
		{Seq: 1, Group: group, Exit: node.Exit{Name: "b", Node: "n1", Code: 3, Start: t0, End: t1}},
		{Seq: 2, Group: group, Exit: node.Exit{Name: "c", Node: "n1", Code: -1, Signal: syscall.SIGKILL}},
		{Seq: 5, Group: group, Exit: node.Exit{Name: "d", Node: "n2", Code: -1, Err: "node lost"}},
	}
}

func (f *fakeAPI) WatchFinished(ctx context.Context, reader, group string, send func([]cluster.Receipt) error) error {
	if err := f.call(ctx, "WatchFinished %s %s", reader, group); err != nil {
		return err
	}
	if err := send(fakeReceipts(group)); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func (f *fakeAPI) Ack(ctx context.Context, reader string, seqs []uint64) error {
	return f.call(ctx, "Ack %s %v", reader, seqs)
}

func (f *fakeAPI) CancelAll(ctx context.Context, group string, grace time.Duration) error {
	return f.call(ctx, "CancelAll %s %s", group, grace)
}

func (f *fakeAPI) GetEnv(ctx context.Context, nodeName, key string) (string, bool, error) {
	if err := f.call(ctx, "GetEnv %s %s", nodeName, key); err != nil {
		return "", false, err
	}
	if key == "UNSET" {
		return "", false, nil
	}
	return "v-" + key, true, nil
}

func (f *fakeAPI) SetEnv(ctx context.Context, nodeName, key, value string) error {
	return f.call(ctx, "SetEnv %s %s=%s", nodeName, key, value)
}

func (f *fakeAPI) BindPorts(ctx context.Context, nodeName string, udp bool, n int) ([]int, error) {
	if err := f.call(ctx, "BindPorts %s udp=%v %d", nodeName, udp, n); err != nil {
		return nil, err
	}
	var ports []int
	for i := range n {
		ports = append(ports, 40000+i)
	}
	return ports, nil
}

func (f *fakeAPI) ReleasePorts(ctx context.Context, nodeName string, udp bool, ports []int) error {
	return f.call(ctx, "ReleasePorts %s udp=%v %v", nodeName, udp, ports)
}

func (f *fakeAPI) SetLogLevel(ctx context.Context, nodeName, level string) error {
	return f.call(ctx, "SetLogLevel %s %s", nodeName, level)
}

func (f *fakeAPI) Submit(ctx context.Context, file *jobfile.File) ([]string, error) {
	var names []string
	for _, in := range file.Instances() {
		names = append(names, in.Name)
	}
	if err := f.call(ctx, "Submit %s %s %v", file.Path, file.Dir, names); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.submitted = file
	f.mu.Unlock()
	return names, nil
}

func (f *fakeAPI) Jobs(ctx context.Context) ([]cluster.JobInfo, error) {
	if err := f.call(ctx, "Jobs"); err != nil {
		return nil, err
	}
	return []cluster.JobInfo{
		{Submission: 1, Instance: "sim.0", State: "succeeded", Node: "n1", Attempts: 1, Outcome: "exit 0", OutDir: "/h/runs/1/sim.0"},
		{Submission: 1, Instance: "sim.1", State: "pending"},
	}, nil
}

func (f *fakeAPI) Shutdown(ctx context.Context) error {
	return f.call(ctx, "Shutdown ctx-cancellable=%v", ctx.Done() != nil)
}

var _ cluster.API = (*fakeAPI)(nil)

// run is one served Control over real mutual TLS on loopback.
type run struct {
	ca     *creds.CA
	api    *fakeAPI
	srv    *control.Server
	addr   string
	client droverpb.ControlClient
}

func issue(t *testing.T, ca *creds.CA, role creds.Role, name string, hosts []string) *creds.Bundle {
	t.Helper()
	b, err := ca.Issue(role, name, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newCA(t *testing.T) *creds.CA {
	t.Helper()
	ca, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func serve(t *testing.T, api *fakeAPI) *run {
	t.Helper()
	ca := newCA(t)
	mgr := issue(t, ca, creds.RoleManager, "manager", []string{"127.0.0.1"})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLS(mgr))))
	srv := control.New(api, control.Options{Grace: 7 * time.Second})
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
	})
	r := &run{ca: ca, api: api, srv: srv, addr: lis.Addr().String()}
	r.client = r.dial(t, issue(t, ca, creds.RoleClient, "alice", nil))
	return r
}

func (r *run) dial(t *testing.T, b *creds.Bundle) droverpb.ControlClient {
	t.Helper()
	conf, err := b.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	return dialTLS(t, r.addr, conf)
}

func dialTLS(t *testing.T, addr string, conf *tls.Config) droverpb.ControlClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return droverpb.NewControlClient(conn)
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantCall(t *testing.T, api *fakeAPI, want string) {
	t.Helper()
	if got := api.lastCall(t); got != want {
		t.Errorf("API call:\n got %s\nwant %s", got, want)
	}
}

func wantProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// Every RPC hands its arguments to the API and its results back.
func TestRPCsMapArgumentsAndResults(t *testing.T) {
	api := &fakeAPI{logs: bytes.Repeat([]byte("0123456789abcdef"), 40000)} // 640 KB: several chunks
	r := serve(t, api)
	c := r.client
	ctx := ctx(t)

	nodes, err := c.Nodes(ctx, &droverpb.NodesRequest{})
	check(t, err)
	wantProto(t, "Nodes", nodes, &droverpb.NodesReply{Nodes: []*droverpb.NodeInfo{
		{Name: "n1", State: "busy", Resources: &droverpb.Resources{Node: "n1", MemoryBytes: 1 << 30,
			Cores: []*droverpb.Core{{Hwthreads: []int32{0, 2}}, {Hwthreads: []int32{1, 3}}}}, BusyHwthreads: []int32{0, 2}, Processes: 1},
		{Name: "n2", State: "lost", Error: "silent for 5s", Resources: &droverpb.Resources{Node: "n2", Cores: []*droverpb.Core{{Hwthreads: []int32{0}}}}},
	}})

	started, err := c.Start(ctx, &droverpb.StartRequest{Node: "n1", Name: "sim", Args: []string{"./sim", "-x"},
		Env: map[string]string{"A": "1"}, Workdir: "/w", Stdout: "/w/o", Stderr: "/w/e", Cores: 2, Group: "g"})
	check(t, err)
	wantCall(t, api, `Start n1 sim ["./sim" "-x"] map[A:1] dir=/w out=/w/o err=/w/e cores=2 hw=[] group=g`)
	_, err = c.Start(ctx, &droverpb.StartRequest{Node: "n1", Name: "sim2", Args: []string{"./sim"}, Hwthreads: []int32{0, 2}})
	check(t, err)
	wantCall(t, api, `Start n1 sim2 ["./sim"] map[] dir= out= err= cores=0 hw=[0 2] group=`)
	wantProto(t, "Start", started, &droverpb.StartReply{Node: "n1", Pid: 4242, Hwthreads: []int32{1, 3}})

	polled, err := c.Poll(ctx, &droverpb.ControlPollRequest{Names: []string{"a", "b", "c"}, Group: "g"})
	check(t, err)
	wantCall(t, api, `Poll g ["a" "b" "c"]`)
	wantProto(t, "Poll", polled, &droverpb.ControlPollReply{Statuses: []*droverpb.ProcessStatus{
		{Name: "a", Running: true},
		{Name: "b", Exit: &droverpb.Exit{Name: "b", Node: "n1", Code: 3, StartUnixNano: t0.UnixNano(), EndUnixNano: t1.UnixNano()}},
		{Name: "c", Exit: &droverpb.Exit{Name: "c", Node: "n1", Code: -1, Signal: "SIGTERM", StartUnixNano: t0.UnixNano(), EndUnixNano: t1.UnixNano()}},
	}})
	_, err = c.Poll(ctx, &droverpb.ControlPollRequest{})
	check(t, err)
	wantCall(t, api, `Poll  []`)

	_, err = c.Stop(ctx, &droverpb.StopRequest{Name: "a", GraceMs: 1500})
	check(t, err)
	wantCall(t, api, "Stop a 1.5s")
	_, err = c.Stop(ctx, &droverpb.StopRequest{Name: "a"})
	check(t, err)
	wantCall(t, api, "Stop a 7s") // the server's default grace

	_, err = c.Kill(ctx, &droverpb.NameRequest{Name: "a"})
	check(t, err)
	wantCall(t, api, "Kill a")
	_, err = c.Purge(ctx, &droverpb.NameRequest{Name: "b"})
	check(t, err)
	wantCall(t, api, "Purge b")
	_, err = c.Send(ctx, &droverpb.SendRequest{Name: "a", Data: []byte("hi\n")})
	check(t, err)
	wantCall(t, api, `Send a "hi\n"`)

	stream, err := c.Logs(ctx, &droverpb.LogsRequest{Name: "a", Stderr: true})
	check(t, err)
	var got []byte
	chunks := 0
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		check(t, err)
		got = append(got, chunk.GetData()...)
		chunks++
	}
	wantCall(t, api, "Logs a stderr=true follow=false")
	if !bytes.Equal(got, api.logs) || chunks < 3 {
		t.Errorf("Logs: got %d bytes in %d chunks, want the %d bytes written in several", len(got), chunks, len(api.logs))
	}

	fin, err := c.Finished(ctx, &droverpb.FinishedRequest{WaitMs: 1500, Client: "r1", Group: "g", Ack: []uint64{7, 9}})
	check(t, err)
	wantCall(t, api, "Finished r1 g [7 9] 1.5s")
	wantExits := &droverpb.FinishedReply{Exits: []*droverpb.Exit{
		{Name: "b", Node: "n1", Code: 3, StartUnixNano: t0.UnixNano(), EndUnixNano: t1.UnixNano(), Seq: 1, Group: "g"},
		{Name: "c", Node: "n1", Code: -1, Signal: "SIGKILL", Seq: 2, Group: "g"},
		{Name: "d", Node: "n2", Code: -1, Error: "node lost", Seq: 5, Group: "g"},
	}}
	wantProto(t, "Finished", fin, wantExits)

	_, err = c.Ack(ctx, &droverpb.AckRequest{Client: "r1", Seqs: []uint64{1, 2}})
	check(t, err)
	wantCall(t, api, "Ack r1 [1 2]")

	wctx, wcancel := context.WithCancel(ctx)
	watch, err := c.WatchFinished(wctx, &droverpb.WatchFinishedRequest{Client: "r2", Group: "g", Ack: []uint64{3}})
	check(t, err)
	pushed, err := watch.Recv()
	check(t, err)
	wantCall(t, api, "WatchFinished r2 g") // after Ack r2 [3]
	wantProto(t, "WatchFinished", pushed, wantExits)
	wcancel()

	_, err = c.CancelAll(ctx, &droverpb.CancelAllRequest{GraceMs: 250})
	check(t, err)
	wantCall(t, api, "CancelAll  250ms")
	_, err = c.CancelAll(ctx, &droverpb.CancelAllRequest{Group: "g"})
	check(t, err)
	wantCall(t, api, "CancelAll g 7s")

	env, err := c.GetEnv(ctx, &droverpb.GetEnvRequest{Node: "n1", Key: "K"})
	check(t, err)
	wantCall(t, api, "GetEnv n1 K")
	wantProto(t, "GetEnv", env, &droverpb.GetEnvReply{Value: "v-K", Set: true})
	env, err = c.GetEnv(ctx, &droverpb.GetEnvRequest{Node: "n1", Key: "UNSET"})
	check(t, err)
	wantProto(t, "GetEnv unset", env, &droverpb.GetEnvReply{})

	_, err = c.SetEnv(ctx, &droverpb.SetEnvRequest{Node: "n1", Key: "K", Value: "a=b"})
	check(t, err)
	wantCall(t, api, "SetEnv n1 K=a=b")

	ports, err := c.BindPorts(ctx, &droverpb.BindPortsRequest{Node: "n1", Udp: true, N: 2})
	check(t, err)
	wantCall(t, api, "BindPorts n1 udp=true 2")
	wantProto(t, "BindPorts", ports, &droverpb.PortsReply{Ports: []int32{40000, 40001}})
	_, err = c.ReleasePorts(ctx, &droverpb.ReleasePortsRequest{Node: "n1", Ports: []int32{40000, 40001}})
	check(t, err)
	wantCall(t, api, "ReleasePorts n1 udp=false [40000 40001]")

	_, err = c.SetLogLevel(ctx, &droverpb.SetLogLevelRequest{Node: "n1", Level: "DEBUG"})
	check(t, err)
	wantCall(t, api, "SetLogLevel n1 debug")

	dir := t.TempDir()
	sub, err := c.Submit(ctx, &droverpb.SubmitRequest{Name: "some/where/jobs.yaml", Dir: dir,
		JobFile: []byte("jobs:\n  - name: sim\n    command: [./sim]\n    repeat: 2\n    workdir: wd\n")})
	check(t, err)
	wantCall(t, api, fmt.Sprintf("Submit %s %s [sim.0 sim.1]", filepath.Join(dir, "jobs.yaml"), dir))
	wantProto(t, "Submit", sub, &droverpb.SubmitReply{Instances: []string{"sim.0", "sim.1"}})
	if wd := api.submitted.Jobs[0].Workdir; wd != filepath.Join(dir, "wd") {
		t.Errorf("a relative workdir resolves to %s, want it under the given dir %s", wd, dir)
	}

	jobs, err := c.Jobs(ctx, &droverpb.JobsRequest{})
	check(t, err)
	wantProto(t, "Jobs", jobs, &droverpb.JobsReply{Jobs: []*droverpb.JobInfo{
		{Submission: 1, Instance: "sim.0", State: "succeeded", Node: "n1", Attempts: 1, Outcome: "exit 0", OutDir: "/h/runs/1/sim.0"},
		{Submission: 1, Instance: "sim.1", State: "pending"},
	}})

	_, err = c.Shutdown(ctx, &droverpb.ShutdownRequest{})
	check(t, err)
	wantCall(t, api, "Shutdown ctx-cancellable=false")
}

func wantStatus(t *testing.T, err error, code codes.Code, kind droverpb.ErrorKind) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status: %v", err)
	}
	if st.Code() != code {
		t.Errorf("code %s, want %s (%v)", st.Code(), code, err)
	}
	var got droverpb.ErrorKind
	for _, d := range st.Details() {
		if ce, ok := d.(*droverpb.ErrorDetail); ok {
			got = ce.GetKind()
		}
	}
	if got != kind {
		t.Errorf("kind %s, want %s (%v)", got, kind, err)
	}
}

// The core's typed errors arrive as their codes with a ControlError detail
// and the error's message.
func TestTypedErrorsMapToCodes(t *testing.T) {
	api := &fakeAPI{}
	r := serve(t, api)
	ctx := ctx(t)
	lost := fmt.Errorf("poll on n1: %w", errors.Join(errdefs.ErrUnknownProcess, errdefs.ErrNodeLost))
	for _, tc := range []struct {
		err  error
		code codes.Code
		kind droverpb.ErrorKind
	}{
		{errdefs.ErrUnknownProcess, codes.NotFound, droverpb.ErrorKind_ERROR_KIND_UNKNOWN_PROCESS},
		{errdefs.ErrUnknownNode, codes.NotFound, droverpb.ErrorKind_ERROR_KIND_UNKNOWN_NODE},
		{errdefs.ErrDuplicate, codes.AlreadyExists, droverpb.ErrorKind_ERROR_KIND_DUPLICATE},
		{errdefs.ErrRunning, codes.FailedPrecondition, droverpb.ErrorKind_ERROR_KIND_RUNNING},
		{errdefs.ErrNotRunning, codes.FailedPrecondition, droverpb.ErrorKind_ERROR_KIND_NOT_RUNNING},
		{errdefs.ErrBusy, codes.ResourceExhausted, droverpb.ErrorKind_ERROR_KIND_BUSY},
		{errdefs.ErrInvalid, codes.InvalidArgument, droverpb.ErrorKind_ERROR_KIND_INVALID},
		{errdefs.ErrInvalid, codes.InvalidArgument, droverpb.ErrorKind_ERROR_KIND_INVALID},
		{errdefs.ErrNodeLost, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_NODE_LOST},
		{errdefs.ErrNodeLost, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_NODE_LOST},
		{lost, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_NODE_LOST},
		{errdefs.ErrClosed, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_CLOSED},
		{errdefs.ErrClosed, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_CLOSED},
		{context.DeadlineExceeded, codes.DeadlineExceeded, droverpb.ErrorKind_ERROR_KIND_UNSPECIFIED},
		{errors.New("disk on fire"), codes.Unknown, droverpb.ErrorKind_ERROR_KIND_UNSPECIFIED},
		{errdefs.NewSpawnError("exec", "/x/sim", syscall.ENOENT), codes.FailedPrecondition, droverpb.ErrorKind_ERROR_KIND_SPAWN_FAILED},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			wrapped := fmt.Errorf("stop x on n1: %w", tc.err)
			api.mu.Lock()
			api.err = wrapped
			api.mu.Unlock()
			var md metadata.MD
			_, err := r.client.Stop(ctx, &droverpb.StopRequest{Name: "x"}, grpc.Trailer(&md))
			wantStatus(t, err, tc.code, tc.kind)
			// The same kind in plain ASCII trailers, for clients without
			// google/rpc/status.proto.
			wantKind := ""
			if tc.kind != droverpb.ErrorKind_ERROR_KIND_UNSPECIFIED {
				wantKind = strings.ToLower(strings.TrimPrefix(tc.kind.String(), "ERROR_KIND_"))
			}
			if got := strings.Join(md.Get(pbconv.TrailerKind), ","); got != wantKind {
				t.Errorf("trailer %s = %q, want %q", pbconv.TrailerKind, got, wantKind)
			}
			var se *errdefs.SpawnError
			if errors.As(tc.err, &se) {
				if got := md.Get(pbconv.TrailerErrno); len(got) != 1 || got[0] != fmt.Sprint(int(syscall.ENOENT)) {
					t.Errorf("trailer errno %v, want %d", got, int(syscall.ENOENT))
				}
				if got := md.Get(pbconv.TrailerPath); len(got) != 1 || got[0] != "/x/sim" {
					t.Errorf("trailer path %v, want /x/sim", got)
				}
			}
			if msg := status.Convert(err).Message(); msg != wrapped.Error() {
				t.Errorf("message %q, want %q", msg, wrapped.Error())
			}
			// A stream's error maps the same way.
			stream, err := r.client.Logs(ctx, &droverpb.LogsRequest{Name: "x"})
			check(t, err)
			_, err = stream.Recv()
			wantStatus(t, err, tc.code, tc.kind)
		})
	}
}

// A bad job file is INVALID_ARGUMENT with FILE:LINE:COL, and the API is
// not called.
func TestSubmitInvalidJobFile(t *testing.T) {
	api := &fakeAPI{}
	r := serve(t, api)
	dir := t.TempDir()
	_, err := r.client.Submit(ctx(t), &droverpb.SubmitRequest{Name: "jobs.yaml", Dir: dir,
		JobFile: []byte("jobs:\n  - name: sim\n    comand: [x]\n")})
	wantStatus(t, err, codes.InvalidArgument, droverpb.ErrorKind_ERROR_KIND_INVALID)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, filepath.Join(dir, "jobs.yaml")+":3:5: unknown key") {
		t.Errorf("message %q does not say FILE:3:5: unknown key", msg)
	}
	if n := api.numCalls(); n != 0 {
		t.Errorf("the API was called %d times", n)
	}
}

// Requests that make no sense are refused before the API sees them.
func TestInvalidRequestsRefused(t *testing.T) {
	api := &fakeAPI{}
	r := serve(t, api)
	c, ctx := r.client, ctx(t)
	for name, call := range map[string]func() error{
		"start without node": func() error {
			_, err := c.Start(ctx, &droverpb.StartRequest{Name: "a", Args: []string{"x"}})
			return err
		},
		"start without name": func() error {
			_, err := c.Start(ctx, &droverpb.StartRequest{Node: "n1", Args: []string{"x"}})
			return err
		},
		"start without command": func() error {
			_, err := c.Start(ctx, &droverpb.StartRequest{Node: "n1", Name: "a"})
			return err
		},
		"start with negative cores": func() error {
			_, err := c.Start(ctx, &droverpb.StartRequest{Node: "n1", Name: "a", Args: []string{"x"}, Cores: -1})
			return err
		},
		"start with a relative stdout": func() error {
			_, err := c.Start(ctx, &droverpb.StartRequest{Node: "n1", Name: "a", Args: []string{"x"}, Stdout: "out"})
			return err
		},
		"stop without name": func() error { _, err := c.Stop(ctx, &droverpb.StopRequest{}); return err },
		"stop with negative grace": func() error {
			_, err := c.Stop(ctx, &droverpb.StopRequest{Name: "a", GraceMs: -1})
			return err
		},
		"kill without name":  func() error { _, err := c.Kill(ctx, &droverpb.NameRequest{}); return err },
		"purge without name": func() error { _, err := c.Purge(ctx, &droverpb.NameRequest{}); return err },
		"send without name":  func() error { _, err := c.Send(ctx, &droverpb.SendRequest{}); return err },
		"logs without name": func() error {
			s, err := c.Logs(ctx, &droverpb.LogsRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"env get without key": func() error {
			_, err := c.GetEnv(ctx, &droverpb.GetEnvRequest{Node: "n1"})
			return err
		},
		"env set with = in key": func() error {
			_, err := c.SetEnv(ctx, &droverpb.SetEnvRequest{Node: "n1", Key: "A=B"})
			return err
		},
		"bind 0 ports": func() error {
			_, err := c.BindPorts(ctx, &droverpb.BindPortsRequest{Node: "n1"})
			return err
		},
		"release port 0": func() error {
			_, err := c.ReleasePorts(ctx, &droverpb.ReleasePortsRequest{Node: "n1", Ports: []int32{0}})
			return err
		},
		"bad log level": func() error {
			_, err := c.SetLogLevel(ctx, &droverpb.SetLogLevelRequest{Node: "n1", Level: "loud"})
			return err
		},
		"submit with a relative dir": func() error {
			_, err := c.Submit(ctx, &droverpb.SubmitRequest{Name: "j.yaml", Dir: "rel", JobFile: []byte("jobs: []")})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			wantStatus(t, call(), codes.InvalidArgument, droverpb.ErrorKind_ERROR_KIND_INVALID)
		})
	}
	if n := api.numCalls(); n != 0 {
		t.Errorf("the API was called %d times", n)
	}
}

// Only client certificates of the run get in; nothing else reaches the API.
func TestOnlyClientsOfTheRun(t *testing.T) {
	api := &fakeAPI{}
	r := serve(t, api)

	t.Run("agent certificate", func(t *testing.T) {
		c := r.dial(t, issue(t, r.ca, creds.RoleAgent, "n1", nil))
		_, err := c.Nodes(ctx(t), &droverpb.NodesRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("want PermissionDenied, got %v", err)
		}
		s, err := c.Logs(ctx(t), &droverpb.LogsRequest{Name: "a"})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("stream: want PermissionDenied, got %v", err)
		}
	})
	t.Run("client of another CA", func(t *testing.T) {
		// It trusts our manager, but its certificate is another CA's.
		other := issue(t, newCA(t), creds.RoleClient, "mallory", nil)
		other.CA = r.ca.CertPEM()
		c := r.dial(t, other)
		_, err := c.Nodes(ctx(t), &droverpb.NodesRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("want the handshake to fail (Unavailable), got %v", err)
		}
	})
	t.Run("everything of another CA", func(t *testing.T) {
		c := r.dial(t, issue(t, newCA(t), creds.RoleClient, "mallory", nil))
		_, err := c.Nodes(ctx(t), &droverpb.NodesRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("want the handshake to fail (Unavailable), got %v", err)
		}
	})
	t.Run("TLS without a certificate", func(t *testing.T) {
		pool, err := (&creds.Bundle{CA: r.ca.CertPEM()}).Pool()
		check(t, err)
		c := dialTLS(t, r.addr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: creds.ManagerName})
		_, err = c.Nodes(ctx(t), &droverpb.NodesRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("want the handshake to fail (Unavailable), got %v", err)
		}
	})
	t.Run("garbage on the port", func(t *testing.T) {
		for _, junk := range [][]byte{
			[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
			[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
			bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0}, 2000),
		} {
			conn, err := net.Dial("tcp", r.addr)
			check(t, err)
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = conn.Write(junk)
			// The server closes the connection; it never speaks gRPC to it.
			_, err = io.Copy(io.Discard, conn)
			conn.Close()
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("the server kept a garbage connection open")
			}
		}
	})
	if n := api.numCalls(); n != 0 {
		t.Errorf("the API was called %d times", n)
	}
	// And the server goes on serving its client.
	if _, err := r.client.Nodes(ctx(t), &droverpb.NodesRequest{}); err != nil {
		t.Fatalf("after the refusals: %v", err)
	}
}

// A server without TLS (a misconfiguration) still lets nobody in.
func TestWithoutTLSUnauthenticated(t *testing.T) {
	api := &fakeAPI{}
	gs := grpc.NewServer()
	control.New(api, control.Options{}).Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	check(t, err)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	defer func() {
		gs.Stop()
		<-served
	}()
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	check(t, err)
	defer conn.Close()
	_, err = droverpb.NewControlClient(conn).Shutdown(ctx(t), &droverpb.ShutdownRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("want Unauthenticated, got %v", err)
	}
	if api.numCalls() != 0 {
		t.Error("the API was called")
	}
}

// Drain waits for calls in their handler, ends following Logs streams and
// refuses new calls.
func TestDrain(t *testing.T) {
	api := &fakeAPI{hold: make(chan struct{}), held: make(chan string, 4)}
	r := serve(t, api)
	ctx := ctx(t)

	shutdown := make(chan error, 1)
	go func() {
		_, err := r.client.Shutdown(ctx, &droverpb.ShutdownRequest{})
		shutdown <- err
	}()
	<-api.held

	drained := make(chan error, 1)
	go func() { drained <- r.srv.Drain(ctx) }()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a call was in its handler", err)
	case <-time.After(100 * time.Millisecond):
	}
	// New calls are refused meanwhile.
	_, err := r.client.Nodes(ctx, &droverpb.NodesRequest{})
	wantStatus(t, err, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_CLOSED)

	close(api.hold)
	check(t, <-drained)
	check(t, <-shutdown)

	// A drained server with no calls returns at once, again.
	check(t, r.srv.Drain(ctx))
}

func TestDrainEndsFollowingLogs(t *testing.T) {
	api := &fakeAPI{logs: []byte("hello\n")}
	r := serve(t, api)
	ctx := ctx(t)
	stream, err := r.client.Logs(ctx, &droverpb.LogsRequest{Name: "a", Follow: true})
	check(t, err)
	chunk, err := stream.Recv()
	check(t, err)
	if string(chunk.GetData()) != "hello\n" {
		t.Fatalf("got %q", chunk.GetData())
	}
	check(t, r.srv.Drain(ctx))
	_, err = stream.Recv()
	wantStatus(t, err, codes.Unavailable, droverpb.ErrorKind_ERROR_KIND_CLOSED)
}

// Status keeps statuses as they are and nil as nil.
func TestStatusPassesStatusesThrough(t *testing.T) {
	if control.Status(nil) != nil {
		t.Error("Status(nil) is not nil")
	}
	in := status.Error(codes.Aborted, "x")
	if got := control.Status(in); status.Code(got) != codes.Aborted {
		t.Errorf("got %v", got)
	}
	var jerr jobfile.Errors = []*jobfile.Error{{File: "f", Line: 1, Col: 2, Msg: "bad"}}
	if got := control.Status(fmt.Errorf("submit: %w", jerr)); status.Code(got) != codes.InvalidArgument {
		t.Errorf("a job file's errors: got %v", got)
	}
	if !slices.Equal(control.LogLevels, []string{"debug", "info", "warn", "error"}) {
		t.Errorf("log levels %v", control.LogLevels)
	}
}
