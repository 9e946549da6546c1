// Package client drives a running `drover serve` from Go: the library form
// of the AgentManager, with one method per control verb.
//
// `drover serve` writes $DROVER_HOME/serve.json (default ~/.drover) with
// its address and the client credentials of its run; Dial reads it, so a
// program on the same machine, as the same user, needs nothing else:
//
//	c, err := client.Dial(ctx, client.Options{})
//	if err != nil {
//		return err // errors.Is(err, client.ErrNoServe): start drover serve
//	}
//	defer c.Close()
//	if _, err := c.Start(ctx, client.StartRequest{
//		Node: "node1", Name: "sim", Args: []string{"./sim", "--fast"}, Stdout: "sim.out",
//	}); err != nil {
//		return err
//	}
//	for {
//		exits, err := c.Finished(ctx, time.Minute) // each exit exactly once, as it comes
//		...
//	}
//
// Errors of the manager come back typed: test them with errors.Is against
// ErrNotFound, ErrUnknownNode, ErrExists, ErrRunning, ErrNotRunning,
// ErrBusy, ErrInvalid, ErrNodeLost and ErrShuttingDown; connection
// problems are ErrNoServe (nothing listens, or serve.json is stale),
// ErrRefused (the credentials do not fit that manager) or ErrUnavailable.
package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
)

// Errors a Client returns, wrapped in an *Error with the manager's
// message. Test with errors.Is.
var (
	// ErrNoServe: no drover serve runs for this DROVER_HOME: there is no
	// serve.json, the process that wrote it has exited, or nothing
	// listens at its address.
	ErrNoServe = errors.New("no drover serve is running")
	// ErrRefused: the TLS handshake or the manager refused the
	// credentials, or the manager's certificate is not of their CA:
	// serve.json belongs to another serve.
	ErrRefused = errors.New("credentials refused")
	// ErrUnavailable: the manager could not be reached or the connection
	// broke, for another reason than ErrNoServe or ErrRefused.
	ErrUnavailable = errors.New("manager unavailable")

	// The kinds of the manager's typed errors (drover's one vocabulary).
	ErrNotFound     = errdefs.ErrUnknownProcess
	ErrUnknownNode  = errdefs.ErrUnknownNode
	ErrExists       = errdefs.ErrDuplicate
	ErrRunning      = errdefs.ErrRunning
	ErrNotRunning   = errdefs.ErrNotRunning
	ErrBusy         = errdefs.ErrBusy // not enough free cores, hwthreads reserved
	ErrInvalid      = errdefs.ErrInvalid
	ErrNodeLost     = errdefs.ErrNodeLost
	ErrShuttingDown = errdefs.ErrClosed
	ErrSpawnFailed  = errdefs.ErrSpawnFailed // errors.As finds a *SpawnError
)

// SpawnError says why a process could not be started: Errno (e.g.
// syscall.ENOENT) and Path (the executable, work dir or output file).
type SpawnError = errdefs.SpawnError

// Error is an error of a Client call: Kind is one of the Err values (nil
// when the manager gave no kind), Msg says what happened.
type Error struct {
	Kind  error
	Msg   string
	cause error // the typed error the manager sent, e.g. a *SpawnError
}

func (e *Error) Error() string   { return e.Msg }
func (e *Error) Unwrap() []error { return []error{e.Kind, e.cause} }

// ServeFile is the name of the file `drover serve` writes in its home.
const ServeFile = "serve.json"

// ServeInfo is the content of serve.json.
type ServeInfo struct {
	Address     string       `json:"address"` // HOST:PORT of the agents and the control API
	HTTP        string       `json:"http"`    // http://HOST:PORT of the read-only status pages
	PID         int          `json:"pid"`     // of drover serve
	Host        string       `json:"host"`    // where it runs (os.Hostname)
	Started     time.Time    `json:"started"`
	Credentials *Credentials `json:"credentials"`
	// Token opens the dashboard and /metrics: "Authorization: Bearer
	// TOKEN", or ?token=TOKEN once in a browser (it sets a cookie).
	Token     string `json:"token,omitempty"`
	Dashboard string `json:"dashboard,omitempty"` // HTTP + "/?token=" + Token, for a browser
}

// Credentials are PEM-encoded client credentials of a run.
type Credentials struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Home is DROVER_HOME: home when not empty, else $DROVER_HOME, else
// ~/.drover.
func Home(home string) (string, error) {
	if home == "" {
		home = os.Getenv("DROVER_HOME")
	}
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no DROVER_HOME and no home directory: %w", err)
		}
		home = filepath.Join(h, ".drover")
	}
	return filepath.Abs(home)
}

// ReadServeInfo reads home's serve.json (which must be mode 0600).
func ReadServeInfo(home string) (*ServeInfo, error) {
	var info ServeInfo
	if err := creds.ReadFile(filepath.Join(home, ServeFile), &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// WriteServeInfo writes home's serve.json, readable by its owner only.
func WriteServeInfo(home string, info *ServeInfo) error {
	return creds.WriteFile(filepath.Join(home, ServeFile), info)
}

// Options say which serve to dial.
type Options struct {
	// Home is DROVER_HOME; "" = $DROVER_HOME, else ~/.drover. Its
	// serve.json gives the address and the credentials.
	Home string
	// Manager is HOST:PORT to dial instead of serve.json's address (the
	// credentials still come from serve.json). The check that serve.json's
	// process is alive is skipped then.
	Manager string
	// Group is this program's group: its starts carry it, and Finished,
	// WatchFinished, Poll and CancelAll see only its processes, so that
	// programs sharing a serve keep apart. "" = the processes started
	// without a group (Poll and CancelAll: all processes).
	Group string
}

// Client is a connection to a drover serve. Its methods are safe for
// concurrent use.
//
// Exits are exactly once per Client: serve keeps each exit it hands out
// until this Client acknowledges it (on its next Finished, or by Ack after
// WatchFinished), hands it to this Client again when a reply was lost, and
// this Client never returns the same exit twice.
type Client struct {
	conn   *grpc.ClientConn
	rpc    droverpb.ControlClient
	home   string
	addr   string
	info   *ServeInfo
	tls    *tls.Config
	group  string
	reader string // names this Client to serve for hand-out and acks

	mu   sync.Mutex
	held map[uint64]bool // exits returned and not yet acknowledged to serve
	// gone remembers the latest acknowledged exits (goneRing, oldest at
	// goneNext once full), so that a reply of an overlapping call that
	// was handed one before the ack still drops it.
	gone     map[uint64]bool
	goneRing []uint64
	goneNext int
}

// goneMemory bounds how many acknowledged exits a Client remembers.
const goneMemory = 1 << 16

// Dial reads serve.json and makes a client of that serve. The connection
// is made by the first call, so a serve that is not there shows in that
// call's error (ErrNoServe, ErrRefused); Dial fails early only when
// serve.json is missing, unreadable or stale (its process on this host has
// exited).
func Dial(ctx context.Context, opts Options) (*Client, error) {
	home, err := Home(opts.Home)
	if err != nil {
		return nil, err
	}
	info, err := ReadServeInfo(home)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if opts.Manager != "" {
			return nil, &Error{Kind: ErrNoServe, Msg: fmt.Sprintf("no credentials for the manager at %s: DROVER_HOME=%s has no %s; copy the one of that drover serve there", opts.Manager, home, ServeFile)}
		}
		return nil, &Error{Kind: ErrNoServe, Msg: fmt.Sprintf("no drover serve is running (DROVER_HOME=%s): start one with drover serve", home)}
	case err != nil:
		return nil, err
	}
	if info.Credentials == nil {
		return nil, &Error{Kind: ErrRefused, Msg: fmt.Sprintf("%s has no credentials; restart drover serve", filepath.Join(home, ServeFile))}
	}
	addr := opts.Manager
	if addr == "" {
		if dead, why := info.Stale(); dead {
			return nil, &Error{Kind: ErrNoServe, Msg: fmt.Sprintf("no drover serve is running (DROVER_HOME=%s; its %s is stale: %s): start one with drover serve", home, ServeFile, why)}
		}
		addr = info.Address
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("manager address %q: %v", addr, err)}
	}
	b := &creds.Bundle{CA: info.Credentials.CA, Cert: info.Credentials.Cert, Key: info.Credentials.Key}
	tlsConf, err := b.ClientTLS("")
	if err != nil {
		return nil, &Error{Kind: ErrRefused, Msg: fmt.Sprintf("the credentials in %s are broken (%v); restart drover serve", filepath.Join(home, ServeFile), err)}
	}
	checkAcceptable(tlsConf)
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &Client{conn: conn, rpc: droverpb.NewControlClient(conn), home: home, addr: addr, info: info, tls: tlsConf,
		group: opts.Group, reader: rand.Text(), held: map[uint64]bool{}, gone: map[uint64]bool{}}, nil
}

// checkAcceptable makes the handshake fail here, with a clear error, when
// the manager asks for a certificate of a CA that ours is not of, instead
// of going on without one and being refused by the manager after the
// handshake, which shows as a broken connection.
func checkAcceptable(conf *tls.Config) {
	if len(conf.Certificates) != 1 {
		return
	}
	cert := conf.Certificates[0]
	conf.Certificates = nil
	conf.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if err := cri.SupportsCertificate(&cert); err != nil {
			return nil, fmt.Errorf("the manager does not accept our certificate (it is of another CA): %w", err)
		}
		return &cert, nil
	}
}

// Stale reports whether the serve that wrote info has certainly exited:
// it ran on this host and its process is gone. It says why.
func (info *ServeInfo) Stale() (bool, string) {
	host, _ := os.Hostname()
	if info.PID <= 0 || info.Host == "" || info.Host != host {
		return false, ""
	}
	if !ProcessAlive(info.PID) {
		return true, fmt.Sprintf("pid %d has exited", info.PID)
	}
	return false, ""
}

// Close closes the connection.
func (c *Client) Close() error {
	// Acknowledge what was returned, so that no other reader gets it
	// after the visibility timeout. Best effort: serve may be gone.
	if ack := c.toAck(); len(ack) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.Ack(ctx, ack...)
		cancel()
	}
	return c.conn.Close()
}

// Addr is the address dialled.
func (c *Client) Addr() string { return c.addr }

// Home is the DROVER_HOME whose serve.json was read.
func (c *Client) Home() string { return c.home }

// Info is the serve.json read by Dial.
func (c *Client) Info() ServeInfo { return *c.info }

// fail turns the error of an RPC into an *Error (or a context error).
func (c *Client) fail(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	if typed := pbconv.FromStatus(err); typed != nil {
		return &Error{Kind: errdefs.Sentinel(errdefs.KindOf(typed)), Msg: msg, cause: typed}
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("%s: %w", msg, context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", msg, context.DeadlineExceeded)
	case codes.Unauthenticated, codes.PermissionDenied:
		return &Error{Kind: ErrRefused, Msg: fmt.Sprintf("the manager at %s refused the credentials in %s: %s", c.addr, c.serveFile(), msg)}
	case codes.Unavailable:
		return c.connError(msg)
	case codes.NotFound:
		return &Error{Kind: ErrNotFound, Msg: msg}
	case codes.AlreadyExists:
		return &Error{Kind: ErrExists, Msg: msg}
	case codes.InvalidArgument:
		return &Error{Kind: ErrInvalid, Msg: msg}
	}
	return &Error{Kind: nil, Msg: msg}
}

func (c *Client) serveFile() string { return filepath.Join(c.home, ServeFile) }

// connError classifies an UNAVAILABLE status without a kind: the
// connection could not be made or broke.
func (c *Client) connError(msg string) error {
	low := strings.ToLower(msg)
	switch {
	case strings.Contains(low, "connection refused"):
		return c.noServe()
	case tlsTrouble(low):
		return c.refused(msg)
	case strings.Contains(low, "broken pipe"), strings.Contains(low, "reset by peer"), strings.Contains(low, "eof"),
		strings.Contains(low, "preface"):
		// The manager may have refused the credentials right after the
		// handshake (TLS 1.3 tells the client late): ask again and listen.
		if err := c.diagnose(); err != nil {
			return err
		}
	}
	return &Error{Kind: ErrUnavailable, Msg: fmt.Sprintf("the manager at %s is unavailable: %s", c.addr, msg)}
}

func tlsTrouble(low string) bool {
	for _, s := range []string{"tls:", "x509:", "certificate", "handshake"} {
		if strings.Contains(low, s) {
			return true
		}
	}
	return false
}

func (c *Client) noServe() error {
	return &Error{Kind: ErrNoServe, Msg: fmt.Sprintf("no drover serve answers at %s (DROVER_HOME=%s): start one with drover serve", c.addr, c.home)}
}

func (c *Client) refused(msg string) error {
	return &Error{Kind: ErrRefused, Msg: fmt.Sprintf("the manager at %s refused the credentials in %s, or they are of another drover serve (restart it, or check DROVER_HOME): %s", c.addr, c.serveFile(), msg)}
}

// diagnose makes a TLS connection to the manager and waits for its first
// bytes (a gRPC server speaks first) or its alert. It returns ErrNoServe
// or ErrRefused when that is what happens, else nil.
func (c *Client) diagnose() error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", c.addr, c.tls.Clone())
	if err != nil {
		low := strings.ToLower(err.Error())
		switch {
		case strings.Contains(low, "connection refused"):
			return c.noServe()
		case tlsTrouble(low):
			return c.refused(err.Error())
		}
		return nil
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil && tlsTrouble(strings.ToLower(err.Error())) {
		return c.refused(err.Error())
	}
	return nil
}

// Resources are a node's hardware threads, grouped by core, memory, GPUs
// and the counted resources it declares.
type Resources struct {
	Node        string           `json:"node"`
	Cores       [][]int          `json:"cores"`
	MemoryBytes int64            `json:"memory_bytes"`
	GPUs        []GPU            `json:"gpus"`
	Custom      map[string]int64 `json:"custom,omitempty"`
}

// GPU is one whole GPU of a node.
type GPU struct {
	Vendor string `json:"vendor"` // "nvidia" or "amd"
	ID     string `json:"id"`     // as CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES take it
	UUID   string `json:"uuid"`   // "" when unknown
	Model  string `json:"model"`  // "" when unknown
	NUMA   int    `json:"numa"`   // -1: unknown
}

// NodeInfo describes one node.
type NodeInfo struct {
	Name          string    `json:"name"`
	State         string    `json:"state"` // up, busy, lost, error
	Error         string    `json:"error,omitempty"`
	Resources     Resources `json:"resources"`
	BusyHWThreads []int     `json:"busy_hwthreads"`
	BusyGPUs      []string  `json:"busy_gpus"` // ids of the GPUs reserved by processes
	Processes     int       `json:"processes"`
	// Restarts counts the times its agent was launched again after the
	// node was lost; LastReason is why it was last lost, or why its last
	// relaunch failed.
	Restarts   int           `json:"restarts"`
	LastReason string        `json:"last_reason,omitempty"`
	RTT        time.Duration `json:"rtt_ns,omitempty"` // last heartbeat round trip
}

// Nodes lists the nodes that joined, in order.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	r, err := c.rpc.Nodes(ctx, &droverpb.NodesRequest{})
	if err != nil {
		return nil, c.fail(err)
	}
	out := make([]NodeInfo, 0, len(r.GetNodes()))
	for _, n := range r.GetNodes() {
		r := pbconv.ResourcesFromPB(n.GetResources())
		res := Resources{Node: r.Node, MemoryBytes: r.MemoryBytes, Cores: r.Cores}
		if res.Cores == nil {
			res.Cores = [][]int{} // JSON: [] rather than null
		}
		res.Custom = n.GetResources().GetCustom()
		res.GPUs = []GPU{}
		for _, g := range n.GetResources().GetGpus() {
			res.GPUs = append(res.GPUs, GPU{Vendor: g.GetVendor(), ID: g.GetId(), UUID: g.GetUuid(), Model: g.GetModel(), NUMA: int(g.GetNuma())})
		}
		busyGPUs := n.GetBusyGpus()
		if busyGPUs == nil {
			busyGPUs = []string{}
		}
		busy := droverpb.Ints(n.GetBusyHwthreads())
		if busy == nil {
			busy = []int{}
		}
		out = append(out, NodeInfo{
			Name:          n.GetName(),
			State:         n.GetState(),
			Error:         n.GetError(),
			Resources:     res,
			BusyHWThreads: busy,
			BusyGPUs:      busyGPUs,
			Processes:     int(n.GetProcesses()),
			Restarts:      int(n.GetRestarts()),
			LastReason:    n.GetLastReason(),
			RTT:           time.Duration(n.GetRttUs()) * time.Microsecond,
		})
	}
	return out, nil
}

// StartRequest is one process to start.
type StartRequest struct {
	Node string
	Name string   // unique across the cluster
	Args []string // argv; Args[0] is looked up in PATH when it has no slash
	Env  map[string]string
	// Dir is the work dir, which must exist; "" = a fresh one. Dir, Stdout
	// and Stderr are made absolute against this process's work dir.
	Dir    string
	Stdout string // file, created or truncated; "" = the manager keeps it for Logs
	Stderr string
	Cores  int // reserve and bind this many whole cores; 0 = unbound
	// HWThreads binds to exactly these logical CPUs of the node (instead
	// of Cores), reserving the cores that hold them.
	HWThreads []int
	// GPUs reserves this many whole GPUs of the node, handed to the
	// process in CUDA_VISIBLE_DEVICES (NVIDIA) or ROCR_VISIBLE_DEVICES and
	// HIP_VISIBLE_DEVICES (AMD), and DROVER_GPUS.
	GPUs int
	// Program, when set, is the file Args[0] names on the manager's
	// machine (made absolute against this process's work dir): a node
	// that shares the manager's file system runs it in place, any other
	// gets a copy in the work dir and runs that. `drover start` sets it
	// for a relative command (./sim) that exists in the caller's
	// directory.
	Program string
}

// StartResult tells where a process runs.
type StartResult struct {
	Node      string
	PID       int
	HWThreads []int    // bound to these; empty when unbound
	GPUs      []string // ids of the GPUs reserved for it
}

// Start starts a process.
func (c *Client) Start(ctx context.Context, req StartRequest) (StartResult, error) {
	paths := []*string{&req.Dir, &req.Stdout, &req.Stderr, &req.Program}
	for _, p := range paths {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return StartResult{}, &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("start %s: %v", req.Name, err)}
		}
		*p = abs
	}
	r, err := c.rpc.Start(ctx, &droverpb.StartRequest{
		Node:      req.Node,
		Name:      req.Name,
		Args:      req.Args,
		Env:       req.Env,
		Workdir:   req.Dir,
		Stdout:    req.Stdout,
		Stderr:    req.Stderr,
		Cores:     int32(req.Cores),
		Hwthreads: droverpb.Int32s(req.HWThreads),
		Group:     c.group,
		Gpus:      int32(req.GPUs),
		Program:   req.Program,
	})
	if err != nil {
		return StartResult{}, c.fail(err)
	}
	return StartResult{Node: r.GetNode(), PID: int(r.GetPid()), HWThreads: droverpb.Ints(r.GetHwthreads()), GPUs: r.GetGpus()}, nil
}

// Exit is the final report of one process.
type Exit struct {
	Name   string    `json:"name"`
	Node   string    `json:"node"`
	Code   int       `json:"code"`             // exit status; -1 when killed by a signal
	Signal string    `json:"signal,omitempty"` // "SIGKILL"; "" unless killed by a signal
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Err is set when the result is not all there: outputs not collected,
	// or the node was lost before it reported the exit.
	Err string `json:"error,omitempty"`
	// Seq numbers the exits serve hands out (Finished, WatchFinished).
	Seq uint64 `json:"seq,omitempty"`
}

// String is "exit N" or "signal SIG", as `drover poll` prints it.
func (e Exit) String() string {
	if e.Signal != "" {
		return "signal " + e.Signal
	}
	return fmt.Sprintf("exit %d", e.Code)
}

// Success reports whether the process exited with status 0 and its
// results were kept.
func (e Exit) Success() bool { return e.Signal == "" && e.Code == 0 && e.Err == "" }

// exitFromPB decodes with pbconv, the one converter of exits, and gives the
// client's form.
func exitFromPB(e *droverpb.Exit) Exit { return exitOf(pbconv.ExitFromPB(e), e.GetSeq()) }

func exitOf(e node.Exit, seq uint64) Exit {
	out := Exit{Name: e.Name, Node: e.Node, Code: e.Code, Err: e.Err, Start: e.Start, End: e.End, Seq: seq}
	if e.Signal != 0 {
		out.Signal = node.SignalName(e.Signal)
	}
	return out
}

// Status is a process as Poll sees it.
type Status struct {
	Name    string
	Running bool
	Exit    Exit  // when not Running and Err is nil
	Err     error // this name could not be polled (ErrNotFound)
}

// String is "running", "exit N", "signal SIG" or why it could not be polled.
func (s Status) String() string {
	switch {
	case s.Err != nil:
		return s.Err.Error()
	case s.Running:
		return "running"
	}
	return s.Exit.String()
}

// Poll reports the named processes, or every known one when none is named.
func (c *Client) Poll(ctx context.Context, names ...string) ([]Status, error) {
	r, err := c.rpc.Poll(ctx, &droverpb.ControlPollRequest{Names: names, Group: c.group})
	if err != nil {
		return nil, c.fail(err)
	}
	sts := pbconv.StatusesFromPB(r.GetStatuses())
	out := make([]Status, 0, len(sts))
	for _, s := range sts {
		st := Status{Name: s.Name, Running: s.State == node.Running}
		switch s.State {
		case node.Unknown:
			st.Err = &Error{Kind: errdefs.Sentinel(errdefs.KindOf(s.Err)), Msg: s.Err.Error(), cause: s.Err}
		case node.Exited:
			st.Exit = exitOf(s.Exit, 0)
			if st.Exit.Name == "" {
				st.Exit.Name = st.Name
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func graceMillis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace (0 =
// serve's --grace).
func (c *Client) Stop(ctx context.Context, name string, grace time.Duration) error {
	_, err := c.rpc.Stop(ctx, &droverpb.StopRequest{Name: name, GraceMs: graceMillis(grace)})
	return c.fail(err)
}

// Kill sends SIGKILL to the process group.
func (c *Client) Kill(ctx context.Context, name string) error {
	_, err := c.rpc.Kill(ctx, &droverpb.NameRequest{Name: name})
	return c.fail(err)
}

// Purge forgets a process that is no longer running.
func (c *Client) Purge(ctx context.Context, name string) error {
	_, err := c.rpc.Purge(ctx, &droverpb.NameRequest{Name: name})
	return c.fail(err)
}

// Send writes data to the process's stdin.
func (c *Client) Send(ctx context.Context, name string, data []byte) error {
	_, err := c.rpc.Send(ctx, &droverpb.SendRequest{Name: name, Data: data})
	return c.fail(err)
}

// CloseStdin closes a process's stdin: it reads end of input once it has
// read what was sent.
func (c *Client) CloseStdin(ctx context.Context, name string) error {
	_, err := c.rpc.Send(ctx, &droverpb.SendRequest{Name: name, Close: true})
	return c.fail(err)
}

// Logs writes a process's stdout (or stderr) to w from the start; with
// follow it goes on until the process has exited and all its output is
// written, or ctx ends.
func (c *Client) Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.Logs(ctx, &droverpb.LogsRequest{Name: name, Stderr: stderr, Follow: follow})
	if err != nil {
		return c.fail(err)
	}
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return c.fail(err)
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}

// Finished returns exits of the processes of this Client's group that it
// has not returned before, and acknowledges those of its previous call.
// When there is none it waits up to wait for one, and returns as soon as
// one comes (wait 0 returns at once): a loop of Finished(ctx, time.Minute)
// sees each exit the moment serve has it, without polling.
func (c *Client) Finished(ctx context.Context, wait time.Duration) ([]Exit, error) {
	ack := c.toAck()
	r, err := c.rpc.Finished(ctx, &droverpb.FinishedRequest{WaitMs: wait.Milliseconds(), Client: c.reader, Ack: ack, Group: c.group})
	if err != nil {
		return nil, c.fail(err)
	}
	c.acked(ack)
	return c.fresh(r.GetExits()), nil
}

// WatchFinished calls each with every exit of this Client's group as it
// comes, until ctx ends (nil), the connection breaks or each fails (that
// error). What each was called with is acknowledged; an exit handed out
// but not passed to each stays with serve for the next call.
func (c *Client) WatchFinished(ctx context.Context, each func(Exit) error) error {
	ack := c.toAck()
	stream, err := c.rpc.WatchFinished(ctx, &droverpb.WatchFinishedRequest{Client: c.reader, Group: c.group, Ack: ack})
	if err != nil {
		return c.fail(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return c.fail(err)
		}
		c.acked(ack) // the stream began: serve has taken the acks
		ack = nil
		var passed []uint64
		var eachErr error
		for _, e := range c.fresh(r.GetExits()) {
			if eachErr = each(e); eachErr != nil {
				break
			}
			passed = append(passed, e.Seq)
		}
		// One acknowledgement per pushed batch, sent even when each has
		// just ended the watch: what was passed on must not be handed
		// out again.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = c.Ack(actx, passed...)
		cancel()
		if eachErr != nil {
			return eachErr
		}
		if err != nil {
			return err
		}
	}
}

// Ack acknowledges exits this Client returned, so serve forgets them.
// Finished does it for the exits of the call before; call Ack after the
// last Finished, or leave it to Close.
func (c *Client) Ack(ctx context.Context, seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	if _, err := c.rpc.Ack(ctx, &droverpb.AckRequest{Client: c.reader, Seqs: seqs}); err != nil {
		return c.fail(err)
	}
	c.acked(seqs)
	return nil
}

// toAck lists the exits returned and not yet acknowledged.
func (c *Client) toAck() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]uint64, 0, len(c.held))
	for s := range c.held {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// acked forgets exits serve has taken the acknowledgement of: it will
// never hand them out again.
func (c *Client) acked(seqs []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range seqs {
		if !c.held[s] {
			continue
		}
		delete(c.held, s)
		if len(c.goneRing) < goneMemory {
			c.goneRing = append(c.goneRing, s)
		} else {
			delete(c.gone, c.goneRing[c.goneNext])
			c.goneRing[c.goneNext] = s
			c.goneNext = (c.goneNext + 1) % goneMemory
		}
		c.gone[s] = true
	}
}

// fresh converts exits, leaving out those this Client returned before.
func (c *Client) fresh(pb []*droverpb.Exit) []Exit {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Exit, 0, len(pb))
	for _, e := range pb {
		if c.held[e.GetSeq()] || c.gone[e.GetSeq()] {
			continue
		}
		if e.GetSeq() != 0 {
			c.held[e.GetSeq()] = true
		}
		out = append(out, exitFromPB(e))
	}
	return out
}

// CancelAll stops every process (SIGTERM, grace, SIGKILL; 0 = serve's
// --grace).
func (c *Client) CancelAll(ctx context.Context, grace time.Duration) error {
	_, err := c.rpc.CancelAll(ctx, &droverpb.CancelAllRequest{GraceMs: graceMillis(grace), Group: c.group})
	return c.fail(err)
}

// GetEnv returns a variable of a node's base environment and whether it
// is set.
func (c *Client) GetEnv(ctx context.Context, node, key string) (string, bool, error) {
	r, err := c.rpc.GetEnv(ctx, &droverpb.GetEnvRequest{Node: node, Key: key})
	if err != nil {
		return "", false, c.fail(err)
	}
	return r.GetValue(), r.GetSet(), nil
}

// SetEnv sets a variable of a node's base environment, for later starts.
func (c *Client) SetEnv(ctx context.Context, node, key, value string) error {
	_, err := c.rpc.SetEnv(ctx, &droverpb.SetEnvRequest{Node: node, Key: key, Value: value})
	return c.fail(err)
}

// BindPorts reserves n free TCP (or UDP) ports on a node; they are held
// until released.
func (c *Client) BindPorts(ctx context.Context, node string, udp bool, n int) ([]int, error) {
	r, err := c.rpc.BindPorts(ctx, &droverpb.BindPortsRequest{Node: node, Udp: udp, N: int32(n)})
	if err != nil {
		return nil, c.fail(err)
	}
	return droverpb.Ints(r.GetPorts()), nil
}

// ReleasePorts gives reserved ports back.
func (c *Client) ReleasePorts(ctx context.Context, node string, udp bool, ports []int) error {
	p := make([]int32, len(ports))
	for i, x := range ports {
		p[i] = int32(x)
	}
	_, err := c.rpc.ReleasePorts(ctx, &droverpb.ReleasePortsRequest{Node: node, Udp: udp, Ports: p})
	return c.fail(err)
}

// SetLogLevel sets a node agent's log level: debug, info, warn or error.
func (c *Client) SetLogLevel(ctx context.Context, node, level string) error {
	_, err := c.rpc.SetLogLevel(ctx, &droverpb.SetLogLevelRequest{Node: node, Level: level})
	return c.fail(err)
}

// Submit queues the jobs of the job file at path and returns their
// instance names. The file is checked here first: its problems come back
// as an error that errors.Is ErrInvalid and reads FILE:LINE:COL: what. Its
// relative files and work dirs resolve against its directory, on the
// manager's machine.
func (c *Client) Submit(ctx context.Context, path string) ([]string, error) {
	data, err := jobfile.ReadFile(path)
	if err != nil {
		return nil, &invalidError{err}
	}
	f, err := jobfile.Parse(path, data)
	if err != nil {
		return nil, &invalidError{err}
	}
	r, err := c.rpc.Submit(ctx, &droverpb.SubmitRequest{Name: filepath.Base(path), JobFile: data, Dir: f.Dir})
	if err != nil {
		return nil, c.fail(err)
	}
	return r.GetInstances(), nil
}

// invalidError keeps a local error's text and makes it ErrInvalid.
type invalidError struct{ err error }

func (e *invalidError) Error() string   { return e.err.Error() }
func (e *invalidError) Unwrap() []error { return []error{ErrInvalid, e.err} }

// JobInfo is one submitted instance.
type JobInfo struct {
	Submission int    `json:"submission"`
	Instance   string `json:"instance"`
	State      string `json:"state"` // pending, running, succeeded, failed, lost, cancelled
	Node       string `json:"node,omitempty"`
	Attempts   int    `json:"attempts,omitempty"`
	Outcome    string `json:"outcome,omitempty"`
	OutDir     string `json:"out_dir,omitempty"` // its stdout, stderr and outputs
}

// Jobs lists the submitted instances.
func (c *Client) Jobs(ctx context.Context) ([]JobInfo, error) {
	r, err := c.rpc.Jobs(ctx, &droverpb.JobsRequest{})
	if err != nil {
		return nil, c.fail(err)
	}
	out := make([]JobInfo, 0, len(r.GetJobs()))
	for _, j := range r.GetJobs() {
		out = append(out, JobInfo{
			Submission: int(j.GetSubmission()),
			Instance:   j.GetInstance(),
			State:      j.GetState(),
			Node:       j.GetNode(),
			Attempts:   int(j.GetAttempts()),
			Outcome:    j.GetOutcome(),
			OutDir:     j.GetOutDir(),
		})
	}
	return out, nil
}

// Shutdown stops every process; the agents exit, then serve exits. It
// returns once serve has done its part of the work; serve's process may
// still be exiting (see WaitExit). A connection that breaks during the
// call counts as done: serve closes it on its way out.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.rpc.Shutdown(ctx, &droverpb.ShutdownRequest{})
	err = c.fail(err)
	var e *Error
	if errors.As(err, &e) && e.Kind == ErrUnavailable {
		return nil
	}
	return err
}

// WaitExit waits until the serve that wrote serve.json has exited, when it
// runs on this host; elsewhere it returns at once. It fails when ctx ends
// first.
func (c *Client) WaitExit(ctx context.Context) error {
	host, _ := os.Hostname()
	if c.info.PID <= 0 || c.info.Host != host {
		return nil
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for ProcessAlive(c.info.PID) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drover serve (pid %d) has not exited: %w", c.info.PID, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
