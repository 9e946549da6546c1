// Package control is the gRPC Control service of `drover serve`: an adapter
// that turns each RPC into one call of cluster.API and each typed error of
// the core into a gRPC status with a ControlError detail.
//
// Only clients of the run get in: every RPC checks that the peer presented
// a verified client certificate (creds.RoleClient) before anything else
// happens; an agent's certificate gets PERMISSION_DENIED, a connection
// without a verified certificate UNAUTHENTICATED. (Certificates of another
// CA do not get past the TLS handshake.)
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
)

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// Grace is used for Stop and CancelAll requests that give none
	// (grace_ms 0); 0 leaves it to the API.
	Grace time.Duration
}

// Server is the Control service over an API.
type Server struct {
	droverpb.UnimplementedControlServer

	api  cluster.API
	opts Options
	log  *slog.Logger

	// streams ends when Drain starts: Logs streams that follow stop.
	streams       context.Context
	cancelStreams context.CancelFunc

	mu      sync.Mutex
	closing bool
	active  int           // RPCs in their handler
	idle    chan struct{} // made by Drain, closed when active drops to 0
}

// New makes a Server over api; Register adds it to a gRPC server.
func New(api cluster.API, opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{api: api, opts: opts, log: log, streams: ctx, cancelStreams: cancel}
}

// Register adds the Control service to r. Every method goes through the
// authorization check and the accounting that Drain waits for, whatever
// interceptors the server has.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	desc := droverpb.Control_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i := range desc.Methods {
		h := desc.Methods[i].Handler
		method := desc.Methods[i].MethodName
		desc.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			leave, err := s.enter(ctx, method)
			if err != nil {
				return nil, err
			}
			defer leave()
			out, err := h(srv, ctx, dec, ic)
			if md := pbconv.Trailer(err); md != nil {
				_ = grpc.SetTrailer(ctx, md)
			}
			return out, err
		}
	}
	desc.Streams = slices.Clone(desc.Streams)
	for i := range desc.Streams {
		h := desc.Streams[i].Handler
		method := desc.Streams[i].StreamName
		desc.Streams[i].Handler = func(srv any, stream grpc.ServerStream) error {
			leave, err := s.enter(stream.Context(), method)
			if err != nil {
				return err
			}
			defer leave()
			ctx, cancel := context.WithCancel(stream.Context())
			defer cancel()
			stop := context.AfterFunc(s.streams, cancel)
			defer stop()
			err = h(srv, &ctxStream{ServerStream: stream, ctx: ctx})
			if md := pbconv.Trailer(err); md != nil {
				stream.SetTrailer(md)
			}
			return err
		}
	}
	r.RegisterService(&desc, s)
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// enter authorizes an RPC and counts it as active until leave.
func (s *Server) enter(ctx context.Context, method string) (leave func(), err error) {
	if err := s.authorize(ctx, method); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, Status(errClosing)
	}
	s.active++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.active--
		if s.active == 0 && s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
	}, nil
}

func (s *Server) authorize(ctx context.Context, method string) error {
	p, err := creds.PeerFromContext(ctx)
	if err != nil {
		s.log.Warn("control: refused a call without a client certificate", "method", method, "err", err)
		return status.Error(codes.Unauthenticated, "drover control: "+err.Error())
	}
	if p.Role != creds.RoleClient {
		s.log.Warn("control: refused a call with a non-client certificate", "method", method, "role", p.Role, "name", p.Name)
		return status.Errorf(codes.PermissionDenied, "drover control: the certificate of %s %q may not use the control API; use the client credentials of serve.json", p.Role, p.Name)
	}
	return nil
}

// Drain refuses new RPCs (UNAVAILABLE), ends the Logs streams and waits
// until every RPC in a handler has returned, or ctx ends. Call it before
// the gRPC server stops, so that a Shutdown RPC gets its reply.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	var idle chan struct{}
	if s.active > 0 {
		if s.idle == nil {
			s.idle = make(chan struct{})
		}
		idle = s.idle
	}
	s.mu.Unlock()
	s.cancelStreams()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("control: drain: %w", ctx.Err())
	}
}

// errClosing refuses RPCs that arrive once Drain has started.
var errClosing = fmt.Errorf("drover serve is shutting down: %w", errdefs.ErrClosed)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errdefs.ErrInvalid, fmt.Sprintf(format, args...))
}

// Status turns an error of the API into a gRPC status error (pbconv.Status).
func Status(err error) error { return pbconv.Status(err) }

func (s *Server) grace(ms int64) (time.Duration, error) {
	if ms < 0 {
		return 0, invalid("grace must not be negative")
	}
	if ms == 0 {
		return s.opts.Grace, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func needName(what, name string) error {
	if name == "" {
		return invalid("%s: no process name", what)
	}
	return nil
}

func needNode(what, name string) error {
	if name == "" {
		return invalid("%s: no node", what)
	}
	return nil
}

// Nodes implements droverpb.ControlServer.
func (s *Server) Nodes(ctx context.Context, _ *droverpb.NodesRequest) (*droverpb.NodesReply, error) {
	nodes, err := s.api.Nodes(ctx)
	if err != nil {
		return nil, Status(err)
	}
	out := &droverpb.NodesReply{Nodes: make([]*droverpb.NodeInfo, 0, len(nodes))}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, &droverpb.NodeInfo{
			Name:          n.Name,
			State:         n.State,
			Error:         n.Error,
			Resources:     pbconv.Resources(n.Resources),
			BusyHwthreads: droverpb.Int32s(n.BusyHWThreads),
			Processes:     int32(n.Processes),
			Restarts:      int32(n.Restarts),
			RttUs:         n.RTT.Microseconds(),
			LastReason:    n.LastReason,
		})
	}
	return out, nil
}

// Start implements droverpb.ControlServer.
func (s *Server) Start(ctx context.Context, req *droverpb.StartRequest) (*droverpb.StartReply, error) {
	if err := needNode("start", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	if err := needName("start", req.GetName()); err != nil {
		return nil, Status(err)
	}
	if len(req.GetArgs()) == 0 || req.GetArgs()[0] == "" {
		return nil, Status(invalid("start %s: no command", req.GetName()))
	}
	if req.GetCores() < 0 {
		return nil, Status(invalid("start %s: cores must not be negative", req.GetName()))
	}
	for _, p := range []struct{ what, path string }{{"work dir", req.GetWorkdir()}, {"stdout", req.GetStdout()}, {"stderr", req.GetStderr()}, {"program", req.GetProgram()}} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return nil, Status(invalid("start %s: %s %q is not an absolute path", req.GetName(), p.what, p.path))
		}
	}
	res, err := s.api.Start(ctx, cluster.StartRequest{
		Node: req.GetNode(),
		Spec: node.ProcessSpec{
			Name:   req.GetName(),
			Args:   req.GetArgs(),
			Env:    req.GetEnv(),
			Dir:    req.GetWorkdir(),
			Stdout: req.GetStdout(),
			Stderr: req.GetStderr(),
		},
		Cores:     int(req.GetCores()),
		HWThreads: droverpb.Ints(req.GetHwthreads()),
		Group:     req.GetGroup(),
		Program:   program(req),
	})
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.StartReply{Node: res.Node, Pid: int32(res.PID), Hwthreads: droverpb.Int32s(res.HWThreads)}, nil
}

// program is what a start's args[0] runs, shipped where the node does not
// share this machine's file system; nil when the start names none.
func program(req *droverpb.StartRequest) *node.Program {
	if req.GetProgram() == "" {
		return nil
	}
	dst := filepath.Clean(req.GetArgs()[0])
	if !filepath.IsLocal(dst) {
		dst = filepath.Base(req.GetProgram())
	}
	return &node.Program{Src: req.GetProgram(), Dst: dst}
}

// Poll implements droverpb.ControlServer.
func (s *Server) Poll(ctx context.Context, req *droverpb.ControlPollRequest) (*droverpb.ControlPollReply, error) {
	sts, err := s.api.Poll(ctx, req.GetGroup(), req.GetNames())
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.ControlPollReply{Statuses: pbconv.Statuses(sts)}, nil
}

// Stop implements droverpb.ControlServer.
func (s *Server) Stop(ctx context.Context, req *droverpb.StopRequest) (*droverpb.Empty, error) {
	if err := needName("stop", req.GetName()); err != nil {
		return nil, Status(err)
	}
	grace, err := s.grace(req.GetGraceMs())
	if err != nil {
		return nil, Status(err)
	}
	return empty(s.api.Stop(ctx, req.GetName(), grace))
}

// Kill implements droverpb.ControlServer.
func (s *Server) Kill(ctx context.Context, req *droverpb.NameRequest) (*droverpb.Empty, error) {
	if err := needName("kill", req.GetName()); err != nil {
		return nil, Status(err)
	}
	return empty(s.api.Kill(ctx, req.GetName()))
}

// Purge implements droverpb.ControlServer.
func (s *Server) Purge(ctx context.Context, req *droverpb.NameRequest) (*droverpb.Empty, error) {
	if err := needName("purge", req.GetName()); err != nil {
		return nil, Status(err)
	}
	return empty(s.api.Purge(ctx, req.GetName()))
}

// Send implements droverpb.ControlServer.
func (s *Server) Send(ctx context.Context, req *droverpb.SendRequest) (*droverpb.Empty, error) {
	if err := needName("send", req.GetName()); err != nil {
		return nil, Status(err)
	}
	if len(req.GetData()) > 0 || !req.GetClose() {
		if err := s.api.Send(ctx, req.GetName(), req.GetData()); err != nil {
			return nil, Status(err)
		}
	}
	if req.GetClose() {
		return empty(s.api.CloseStdin(ctx, req.GetName()))
	}
	return &droverpb.Empty{}, nil
}

// maxChunk bounds the data of one LogChunk.
const maxChunk = 256 << 10

// chunkWriter sends what is written to it as LogChunks.
type chunkWriter struct {
	mu     sync.Mutex
	stream droverpb.Control_LogsServer
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), maxChunk)]
		if err := w.stream.Send(&droverpb.LogChunk{Data: c}); err != nil {
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

// Logs implements droverpb.ControlServer.
func (s *Server) Logs(req *droverpb.LogsRequest, stream droverpb.Control_LogsServer) error {
	if err := needName("logs", req.GetName()); err != nil {
		return Status(err)
	}
	err := s.api.Logs(stream.Context(), req.GetName(), req.GetStderr(), req.GetFollow(), &chunkWriter{stream: stream})
	if err != nil && stream.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// Drain ended the stream, or the client went away.
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			return Status(errClosing)
		}
	}
	return Status(err)
}

// Finished implements droverpb.ControlServer.
func (s *Server) Finished(ctx context.Context, req *droverpb.FinishedRequest) (*droverpb.FinishedReply, error) {
	if req.GetWaitMs() < 0 {
		return nil, Status(fmt.Errorf("finished: wait %dms: %w", req.GetWaitMs(), errdefs.ErrInvalid))
	}
	rs, err := s.api.Finished(ctx, cluster.FinishedRequest{
		Reader: req.GetClient(),
		Group:  req.GetGroup(),
		Ack:    req.GetAck(),
		Wait:   time.Duration(req.GetWaitMs()) * time.Millisecond,
	})
	if err != nil {
		return nil, Status(err)
	}
	return receipts(rs), nil
}

func receipts(rs []cluster.Receipt) *droverpb.FinishedReply {
	out := &droverpb.FinishedReply{Exits: make([]*droverpb.Exit, 0, len(rs))}
	for _, r := range rs {
		e := pbconv.Exit(r.Exit)
		e.Seq, e.Group = r.Seq, r.Group
		out.Exits = append(out.Exits, e)
	}
	return out
}

// WatchFinished implements droverpb.ControlServer.
func (s *Server) WatchFinished(req *droverpb.WatchFinishedRequest, stream droverpb.Control_WatchFinishedServer) error {
	ctx := stream.Context()
	if req.GetClient() == "" {
		return Status(invalid("watch finished: no client name to acknowledge exits with"))
	}
	if err := s.api.Ack(ctx, req.GetClient(), req.GetAck()); err != nil {
		return Status(err)
	}
	return Status(s.api.WatchFinished(ctx, req.GetClient(), req.GetGroup(), func(rs []cluster.Receipt) error {
		return stream.Send(receipts(rs))
	}))
}

// Ack implements droverpb.ControlServer.
func (s *Server) Ack(ctx context.Context, req *droverpb.AckRequest) (*droverpb.Empty, error) {
	return empty(s.api.Ack(ctx, req.GetClient(), req.GetSeqs()))
}

// CancelAll implements droverpb.ControlServer.
func (s *Server) CancelAll(ctx context.Context, req *droverpb.CancelAllRequest) (*droverpb.Empty, error) {
	grace, err := s.grace(req.GetGraceMs())
	if err != nil {
		return nil, Status(err)
	}
	return empty(s.api.CancelAll(ctx, req.GetGroup(), grace))
}

// GetEnv implements droverpb.ControlServer.
func (s *Server) GetEnv(ctx context.Context, req *droverpb.GetEnvRequest) (*droverpb.GetEnvReply, error) {
	if err := needNode("env get", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	if req.GetKey() == "" {
		return nil, Status(invalid("env get: no key"))
	}
	v, ok, err := s.api.GetEnv(ctx, req.GetNode(), req.GetKey())
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.GetEnvReply{Value: v, Set: ok}, nil
}

// SetEnv implements droverpb.ControlServer.
func (s *Server) SetEnv(ctx context.Context, req *droverpb.SetEnvRequest) (*droverpb.Empty, error) {
	if err := needNode("env set", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	if k := req.GetKey(); k == "" || strings.ContainsAny(k, "=\x00") {
		return nil, Status(invalid("env set: invalid key %q", k))
	}
	return empty(s.api.SetEnv(ctx, req.GetNode(), req.GetKey(), req.GetValue()))
}

// maxBind bounds one BindPorts request.
const maxBind = 1024

// BindPorts implements droverpb.ControlServer.
func (s *Server) BindPorts(ctx context.Context, req *droverpb.BindPortsRequest) (*droverpb.PortsReply, error) {
	if err := needNode("ports bind", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	if n := req.GetN(); n < 1 || n > maxBind {
		return nil, Status(invalid("ports bind: the number of ports must be 1 to %d, got %d", maxBind, n))
	}
	ports, err := s.api.BindPorts(ctx, req.GetNode(), req.GetUdp(), int(req.GetN()))
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.PortsReply{Ports: droverpb.Int32s(ports)}, nil
}

// ReleasePorts implements droverpb.ControlServer.
func (s *Server) ReleasePorts(ctx context.Context, req *droverpb.ReleasePortsRequest) (*droverpb.Empty, error) {
	if err := needNode("ports release", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	if len(req.GetPorts()) == 0 {
		return nil, Status(invalid("ports release: no ports"))
	}
	for _, p := range req.GetPorts() {
		if p < 1 || p > 65535 {
			return nil, Status(invalid("ports release: %d is not a port", p))
		}
	}
	return empty(s.api.ReleasePorts(ctx, req.GetNode(), req.GetUdp(), droverpb.Ints(req.GetPorts())))
}

// LogLevels are the levels SetLogLevel accepts.
var LogLevels = []string{"debug", "info", "warn", "error"}

// SetLogLevel implements droverpb.ControlServer.
func (s *Server) SetLogLevel(ctx context.Context, req *droverpb.SetLogLevelRequest) (*droverpb.Empty, error) {
	if err := needNode("log-level", req.GetNode()); err != nil {
		return nil, Status(err)
	}
	level := strings.ToLower(req.GetLevel())
	if !slices.Contains(LogLevels, level) {
		return nil, Status(invalid("log-level: level must be debug, info, warn or error, got %q", req.GetLevel()))
	}
	return empty(s.api.SetLogLevel(ctx, req.GetNode(), level))
}

// Submit implements droverpb.ControlServer. The job file is parsed here,
// as if it were at its name in dir, so that its relative files and work
// dirs resolve against dir.
func (s *Server) Submit(ctx context.Context, req *droverpb.SubmitRequest) (*droverpb.SubmitReply, error) {
	dir := req.GetDir()
	if dir == "" || !filepath.IsAbs(dir) {
		return nil, Status(invalid("submit: the job file's directory %q is not an absolute path", dir))
	}
	name := filepath.Base(req.GetName())
	if req.GetName() == "" || name == "." || name == string(filepath.Separator) {
		name = "jobs.yaml"
	}
	file, err := jobfile.Parse(filepath.Join(dir, name), req.GetJobFile())
	if err != nil {
		return nil, Status(err)
	}
	names, err := s.api.Submit(ctx, file)
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.SubmitReply{Instances: names}, nil
}

// Jobs implements droverpb.ControlServer.
func (s *Server) Jobs(ctx context.Context, _ *droverpb.JobsRequest) (*droverpb.JobsReply, error) {
	jobs, err := s.api.Jobs(ctx)
	if err != nil {
		return nil, Status(err)
	}
	out := &droverpb.JobsReply{Jobs: make([]*droverpb.JobInfo, 0, len(jobs))}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, &droverpb.JobInfo{
			Submission: int32(j.Submission),
			Instance:   j.Instance,
			State:      j.State,
			Node:       j.Node,
			Attempts:   int32(j.Attempts),
			Outcome:    j.Outcome,
			OutDir:     j.OutDir,
		})
	}
	return out, nil
}

// Shutdown implements droverpb.ControlServer. It goes on when the caller
// goes away: a shutdown half done helps nobody.
func (s *Server) Shutdown(ctx context.Context, _ *droverpb.ShutdownRequest) (*droverpb.Empty, error) {
	s.log.Info("control: shutdown asked for")
	return empty(s.api.Shutdown(context.WithoutCancel(ctx)))
}

func empty(err error) (*droverpb.Empty, error) {
	if err != nil {
		return nil, Status(err)
	}
	return &droverpb.Empty{}, nil
}
