package wire

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/filexfer"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
	"github.com/drover-hpc/drover/internal/topology"
)

// ServerOptions configure the manager side.
type ServerOptions struct {
	NodeTimeout       time.Duration // no message from an agent for this long: its node is lost (default 5s)
	HeartbeatInterval time.Duration // agents send a heartbeat at least this often (default NodeTimeout/3)
	// MonitorTimeout is told to agents in Welcome (default 30s). The
	// manager sends its own heartbeat every third of it (but not more
	// often than agents do): an agent needs no more to know it is heard,
	// and each heartbeat costs the manager a send per node.
	MonitorTimeout time.Duration
	Logger         *slog.Logger
	// Authorize checks the connecting peer (from the stream context, e.g.
	// its TLS certificate) against the node name it claims in hello; an
	// error refuses the session (PermissionDenied). nil allows any.
	Authorize func(ctx context.Context, hello *droverpb.Hello) error
	// OnNode is called once per new agent (not on a resumed session), in
	// the session's handler, with the session already running: it may call
	// the node. The session ends only after OnNode returned.
	OnNode func(*RemoteNode)
	// SharedFS tells whether an agent sees this machine's filesystem under
	// the same paths; then staged files and results go by path, as on one
	// machine. Otherwise their contents cross the session. nil takes the
	// agent's word (Hello.remote_fs, from AgentOptions.RemoteFS).
	SharedFS func(hello *droverpb.Hello) bool
}

// Server is the manager's end of the agent sessions: it implements
// droverpb.AgentSessionServer and turns each agent into a RemoteNode.
type Server struct {
	droverpb.UnimplementedAgentSessionServer
	opts ServerOptions
	log  *slog.Logger

	mu       sync.Mutex
	closed   bool
	sessions map[string]*RemoteNode // by session id, lost ones included
	order    []*RemoteNode
	wg       sync.WaitGroup // senders and receivers of sessions

	files *filexfer.Pool // hashes of staged files, chunks in flight to all nodes
}

// NewServer makes a Server; Register it with a grpc.Server.
func NewServer(opts ServerOptions) *Server {
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 5 * time.Second
	}
	if opts.HeartbeatInterval <= 0 {
		// A node is lost after about three missed heartbeats: more often
		// costs the manager a message each way per node for nothing
		// (1,000 idle nodes at 1 s took 18 % of a core), less often makes
		// one late message look like silence.
		opts.HeartbeatInterval = opts.NodeTimeout / 3
	}
	if opts.MonitorTimeout <= 0 {
		opts.MonitorTimeout = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, log: log, sessions: make(map[string]*RemoteNode), files: filexfer.NewPool()}
}

// Register adds the AgentSession service to g.
func (s *Server) Register(g *grpc.Server) { droverpb.RegisterAgentSessionServer(g, s) }

// Nodes returns every node that ever connected, in order of arrival, lost
// ones included.
func (s *Server) Nodes() []*RemoteNode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

// Close ends every session: each node is lost (pending calls fail with
// errdefs.ErrNodeLost, Ready is closed), and an agent that reconnects is told to
// give up. It returns when the session goroutines are gone. It does not
// stop the grpc.Server.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	nodes := slices.Clone(s.order)
	s.mu.Unlock()
	for _, n := range nodes {
		n.lose("the manager closed the session")
	}
	s.wg.Wait()
}

var errDetached = errors.New("session taken over or ended")

// Connect is one agent stream: Hello, Welcome, then commands one way and
// replies, exits and heartbeats the other, until the stream breaks or the
// node is lost.
func (s *Server) Connect(stream droverpb.AgentSession_ConnectServer) error {
	ctx := stream.Context()
	first, err := s.hello(stream)
	if err != nil {
		return err
	}
	h := first.GetHello()
	if h == nil || h.GetNode() == "" {
		s.log.Warn("agent session refused: no Hello", "peer", peerAddr(ctx))
		return status.Error(codes.InvalidArgument, "the first message must be a Hello naming the node")
	}
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(ctx, h); err != nil {
			s.log.Warn("agent session refused", "node", h.GetNode(), "peer", peerAddr(ctx), "err", err)
			return status.Errorf(codes.PermissionDenied, "node %s refused: %v", h.GetNode(), err)
		}
	}
	n, att, isNew, err := s.attach(h)
	if err != nil {
		s.log.Warn("agent session refused", "node", h.GetNode(), "peer", peerAddr(ctx), "err", err)
		return err
	}
	if att == nil {
		s.log.Info("agent of a lost node came back: told to give up", "node", h.GetNode(), "peer", peerAddr(ctx))
		return stream.Send(&droverpb.ManagerMsg{Welcome: &droverpb.Welcome{Session: h.GetSession(), GivenUp: true}})
	}
	if isNew {
		s.log.Info("node up", "node", n.name, "peer", peerAddr(ctx), "version", h.GetVersion(), "cores", len(n.res.Cores))
	} else {
		s.log.Info("node reconnected", "node", n.name, "peer", peerAddr(ctx))
	}

	// attach counted both goroutines in s.wg.
	sendDone := make(chan error, 1)
	recvDone := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		sendDone <- n.sendLoop(att, stream)
	}()
	go func() {
		// Blocked in Recv, it may outlive this handler by a moment: the
		// stream's end unblocks it.
		defer s.wg.Done()
		recvDone <- n.recvLoop(att, stream, first)
	}()
	if isNew && s.opts.OnNode != nil {
		s.opts.OnNode(n)
	}
	sent := false
	select {
	case err = <-recvDone:
	case err = <-sendDone:
		sent = true
	case <-att.done:
		err = errDetached
	}
	if errors.Is(err, io.EOF) {
		// A half-close: the agent ended its session after a Shutdown.
		n.lose(reasonEnded)
		err = nil
	}
	n.detach(att, err)
	if !sent {
		<-sendDone // att.done is closed: the sender returns
	}
	if errors.Is(err, errDetached) {
		return status.Error(codes.Aborted, "session ended by the manager")
	}
	return err
}

// hello receives the first message, waiting at most NodeTimeout.
func (s *Server) hello(stream droverpb.AgentSession_ConnectServer) (*droverpb.AgentMsg, error) {
	s.mu.Lock()
	if s.closed {
		// No more goroutines; an agent that comes back is still told to
		// give up.
		s.mu.Unlock()
		return stream.Recv()
	}
	s.wg.Add(1)
	s.mu.Unlock()
	type result struct {
		m   *droverpb.AgentMsg
		err error
	}
	got := make(chan result, 1)
	go func() {
		// If the Hello never comes, the handler's return ends this Recv.
		defer s.wg.Done()
		m, err := stream.Recv()
		got <- result{m, err}
	}()
	t := time.NewTimer(s.opts.NodeTimeout)
	defer t.Stop()
	select {
	case r := <-got:
		return r.m, r.err
	case <-t.C:
		s.log.Warn("agent session refused: no Hello in time", "peer", peerAddr(stream.Context()))
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %v", s.opts.NodeTimeout)
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "?"
}

// attach finds or makes the RemoteNode of a Hello and gives it a new
// attachment. A nil attachment (and no error) means: tell the agent to give
// up.
func (s *Server) attach(h *droverpb.Hello) (n *RemoteNode, att *attachment, isNew bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.GetSession() != "" {
		n = s.sessions[h.GetSession()]
		if n == nil {
			return nil, nil, false, nil // not ours (an earlier manager's): give up
		}
		if n.name != h.GetNode() {
			return nil, nil, false, status.Errorf(codes.PermissionDenied, "session belongs to node %s, not %s", n.name, h.GetNode())
		}
		if s.closed {
			return n, nil, false, nil
		}
		att = n.resume(s.opts)
		if att != nil {
			s.wg.Add(2)
		}
		return n, att, false, nil
	}
	if s.closed {
		return nil, nil, false, status.Error(codes.Unavailable, "the manager is closing")
	}
	id, err := newSessionID()
	if err != nil {
		return nil, nil, false, status.Errorf(codes.Internal, "session id: %v", err)
	}
	n = newRemoteNode(s, id, h)
	s.sessions[id] = n
	s.order = append(s.order, n)
	att = n.resume(s.opts)
	s.wg.Add(2)
	return n, att, true, nil
}

func newSessionID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// RemoteNode is a node.Node whose agent is at the other end of a session.
// It outlives broken streams: an agent that reconnects with its session id
// within NodeTimeout carries on where it left off.
type RemoteNode struct {
	srv     *Server
	log     *slog.Logger
	name    string
	res     topology.Resources
	version string
	session string
	timeout time.Duration
	hb      time.Duration // how often the manager sends it a heartbeat

	ready chan struct{}               // cap 1; closed once the node is lost
	gone  chan struct{}               // closed once the node is lost
	exits *mailbox.Mailbox[node.Exit] // delivered (under mu, in seq order), not yet taken by Finished

	mu        sync.Mutex
	att       *attachment // current stream; nil while disconnected
	lost      bool
	left      bool // lost by the orderly end of its session
	lostErr   error
	lastHeard time.Time
	receiving bool        // a message of the current stream is being processed
	timer     *time.Timer // NodeTimeout watchdog

	nextID  uint64
	calls   map[uint64]*call // sent or queued, not answered yet
	queued  int              // of calls, starts queued behind another process
	unsent  []uint64         // ids to send on the current attachment
	cancels []uint64         // abandoned ids to tell the agent about

	lastSeq uint64 // highest exit seq delivered

	probe probe // our last heartbeat

	// Files, for an agent that does not share our filesystem (files.go,
	// internal/filexfer).
	shared bool
	stager *filexfer.Stager   // staged files' content to the agent
	recv   *filexfer.Receiver // results from the agent
	// stageStop is closed (and replaced) by CancelAll and Shutdown, ending
	// the sending of staged files of starts in flight; guarded by mu.
	stageStop chan struct{}
}

// call is one command waiting for its reply.
type call struct {
	op        string
	cmd       *droverpb.Command
	size      int  // of cmd, encoded
	sent      bool // written to some stream: the agent may have it
	abandoned bool // the caller gave up; the reply only frees the entry
	queued    bool // a start queued behind another process (a window)
	done      chan struct{}
	reply     *droverpb.Reply
	err       error
}

// attachment is one stream of a session.
type attachment struct {
	welcome  *droverpb.ManagerMsg // sent first
	wake     chan struct{}        // cap 1: something to send
	done     chan struct{}        // closed when this stream is no longer the node's
	doneOnce sync.Once

	// Guarded by the node's mu.
	welcomed   bool
	ackExits   uint64      // last ack_exits sent on this stream
	ackReplies uint64      // last ack_replies sent on this stream
	echo       pendingEcho // the agent's heartbeat
}

func (a *attachment) wakeup() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *attachment) close() { a.doneOnce.Do(func() { close(a.done) }) }

func newRemoteNode(s *Server, session string, h *droverpb.Hello) *RemoteNode {
	res := pbconv.ResourcesFromPB(h.GetResources())
	if res.Node == "" {
		res.Node = h.GetNode()
	}
	n := &RemoteNode{
		srv:       s,
		log:       s.log.With("node", h.GetNode()),
		name:      h.GetNode(),
		res:       res,
		version:   h.GetVersion(),
		session:   session,
		timeout:   s.opts.NodeTimeout,
		hb:        max(s.opts.MonitorTimeout/3, s.opts.HeartbeatInterval),
		ready:     make(chan struct{}, 1),
		exits:     mailbox.New[node.Exit](0),
		gone:      make(chan struct{}),
		calls:     make(map[uint64]*call),
		lastHeard: time.Now(),
		shared:    !h.GetRemoteFs(),
		recv:      filexfer.NewReceiver(),
		stageStop: make(chan struct{}),
	}
	n.stager = s.files.Stager(n.putChunk)
	if s.opts.SharedFS != nil {
		n.shared = s.opts.SharedFS(h)
	}
	n.mu.Lock()
	n.timer = time.AfterFunc(n.timeout, n.checkAlive)
	n.mu.Unlock()
	return n
}

// resume gives the node a new attachment, replacing any current one, and
// queues every unanswered command again. nil when the node is lost.
func (n *RemoteNode) resume(opts ServerOptions) *attachment {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lost {
		return nil
	}
	if n.att != nil {
		n.att.close()
	}
	att := &attachment{
		welcome: &droverpb.ManagerMsg{Welcome: &droverpb.Welcome{
			Session:             n.session,
			HeartbeatIntervalMs: millis(opts.HeartbeatInterval),
			MonitorTimeoutMs:    millis(opts.MonitorTimeout),
		}},
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	att.wakeup() // the Welcome
	n.att = att
	n.receiving = false
	n.lastHeard = time.Now() // the Hello
	n.unsent, n.cancels = n.unsent[:0], n.cancels[:0]
	for id, c := range n.calls {
		if c.abandoned {
			n.cancels = append(n.cancels, id)
		} else {
			n.unsent = append(n.unsent, id)
		}
	}
	slices.Sort(n.unsent)
	slices.Sort(n.cancels)
	return att
}

// detach ends an attachment; the node is "disconnected" if it was current.
func (n *RemoteNode) detach(att *attachment, err error) {
	n.mu.Lock()
	current := n.att == att
	if current {
		n.att, n.receiving = nil, false
	}
	lost := n.lost
	n.mu.Unlock()
	att.close()
	if current && !lost {
		n.log.Info("node disconnected", "err", err)
	}
}

// checkAlive is the NodeTimeout watchdog.
func (n *RemoteNode) checkAlive() {
	n.mu.Lock()
	if n.lost {
		n.mu.Unlock()
		return
	}
	if n.receiving && n.att != nil {
		// Still writing what the agent sent: the wait is ours.
		n.timer.Reset(n.timeout)
		n.mu.Unlock()
		return
	}
	if idle := time.Since(n.lastHeard); idle < n.timeout {
		n.timer.Reset(n.timeout - idle)
		n.mu.Unlock()
		return
	}
	n.loseLocked(fmt.Sprintf("no message from its agent for %v", n.timeout))
	n.mu.Unlock()
}

// AgentEnded declares the node lost now, rather than after the node
// timeout: its agent is known to have ended (its launcher saw it exit), so
// no word can come from it any more. What it sent before it ended is read
// first: the session, when there is one, ends with the agent's process.
func (n *RemoteNode) AgentEnded(reason string) {
	n.mu.Lock()
	att := n.att
	n.mu.Unlock()
	if att != nil {
		t := time.NewTimer(n.timeout)
		select {
		case <-att.done:
		case <-n.gone:
		case <-t.C: // the watchdog has lost it by now
		}
		t.Stop()
	}
	n.lose(reason)
}

func (n *RemoteNode) lose(reason string) {
	n.mu.Lock()
	n.loseLocked(reason)
	n.mu.Unlock()
}

// loseLocked makes the node lost for good: pending calls fail, Finished
// keeps what was delivered, Ready is closed.
func (n *RemoteNode) loseLocked(reason string) {
	if n.lost {
		return
	}
	n.lost = true
	n.lostErr = fmt.Errorf("%w: %s", errdefs.ErrNodeLost, reason)
	for _, c := range n.calls {
		c.err = fmt.Errorf("%s on %s: %w", c.op, n.name, n.lostErr)
		close(c.done)
	}
	n.calls, n.queued = nil, 0
	n.unsent, n.cancels = nil, nil
	if n.att != nil {
		n.att.close()
		n.att = nil
	}
	n.timer.Stop()
	n.recv.DropAll()
	close(n.ready)
	close(n.gone)
	if reason == reasonEnded {
		n.left = true
		n.log.Info("node left", "reason", reason)
		return
	}
	n.log.Warn("node lost", "reason", reason)
}

// reasonEnded is the orderly end of a session, after a Shutdown.
const reasonEnded = "its agent ended the session"

// recvLoop takes the agent's messages until the stream ends.
func (n *RemoteNode) recvLoop(att *attachment, stream droverpb.AgentSession_ConnectServer, first *droverpb.AgentMsg) error {
	if !n.handle(att, first, nil) {
		return errDetached
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		// Heard now, not once the message is processed: writing its
		// results may take a while on a busy machine, and that delay is
		// ours, not a silence of the agent.
		n.heard(att)
		// Results are written before their exits are delivered, and the
		// next message is not read meanwhile: the agent's sends wait
		// (flow control), so a big output streams through a little memory.
		errs := n.receiveFiles(att, m)
		if !n.handle(att, m, errs) {
			return errDetached
		}
	}
}

// heard notes that a message from att has arrived.
func (n *RemoteNode) heard(att *attachment) {
	n.mu.Lock()
	if n.att == att {
		n.lastHeard = time.Now()
		n.receiving = true
	}
	n.mu.Unlock()
}

// handle applies one AgentMsg; false when att is no longer current.
// resultErrs are the errors of results that could not be written, by exit
// seq.
func (n *RemoteNode) handle(att *attachment, m *droverpb.AgentMsg, resultErrs map[uint64]string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.att != att || n.lost {
		return false
	}
	n.lastHeard = time.Now()
	n.receiving = false
	for _, r := range m.GetReplies() {
		c := n.calls[r.GetId()]
		if c == nil {
			continue // a repeat, or a call abandoned before it was sent
		}
		n.forgetLocked(r.GetId(), c)
		if !c.abandoned {
			c.reply = r
			close(c.done)
		}
	}
	delivered := false
	for _, x := range m.GetExits() {
		if x.GetSeq() <= n.lastSeq {
			continue // delivered before a reconnect
		}
		n.lastSeq = x.GetSeq()
		e := pbconv.ExitFromPB(x.GetExit())
		if e.Node == "" {
			e.Node = n.name
		}
		if msg, ok := resultErrs[x.GetSeq()]; ok {
			if e.Err != "" {
				e.Err += "; "
			}
			e.Err += msg
		}
		n.exits.Put("", e)
		delivered = true
	}
	wake := delivered // the ack
	heard(m.GetHeartbeat(), &n.probe, &att.echo)
	if delivered {
		select {
		case n.ready <- struct{}{}:
		default:
		}
	}
	if wake {
		att.wakeup()
	}
	return true
}

// sendLoop is the single writer of an attachment: each message carries
// everything that was queued while the previous one was being sent.
func (n *RemoteNode) sendLoop(att *attachment, stream droverpb.AgentSession_ConnectServer) error {
	tick := time.NewTicker(n.hb)
	defer tick.Stop()
	gather := time.NewTimer(coalesce)
	defer gather.Stop()
	hbDue := false
	for {
		select {
		case <-att.wake:
			if n.windowed() {
				// The starts of a window's top-up, and the acks of the
				// exits that freed them, go together.
				gather.Reset(coalesce)
				select {
				case <-gather.C:
				case <-att.done:
					return nil
				}
			}
		case <-tick.C:
			hbDue = true
		case <-att.done:
			return nil
		}
		for {
			// A heartbeat due goes with the next message even while
			// commands keep the loop busy.
			select {
			case <-tick.C:
				hbDue = true
			default:
			}
			m := n.collect(att, hbDue)
			hbDue = false
			if m == nil {
				break
			}
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// collect builds the next ManagerMsg, or nil when there is nothing to send.
func (n *RemoteNode) collect(att *attachment, hbDue bool) *droverpb.ManagerMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.att != att {
		return nil
	}
	m := &droverpb.ManagerMsg{}
	urgent := false
	if !att.welcomed {
		m.Welcome = att.welcome.Welcome
		att.welcomed = true
		urgent = true
		hbDue = true // the round trip is known from the start
	}
	size, i := 0, 0
	for ; i < len(n.unsent) && size < maxBatchBytes; i++ {
		if c := n.calls[n.unsent[i]]; c != nil && !c.abandoned {
			c.sent = true
			m.Commands = append(m.Commands, c.cmd)
			size += c.size
		}
	}
	n.unsent = append(n.unsent[:0], n.unsent[i:]...) // the rest goes next
	if len(n.cancels) > 0 {
		m.Cancel = n.cancels
		n.cancels = nil
	}
	if n.lastSeq > att.ackExits {
		m.AckExits = n.lastSeq
		att.ackExits = n.lastSeq
	}
	m.Heartbeat = outgoing(&n.probe, &att.echo, hbDue)
	if !urgent && len(m.Commands) == 0 && len(m.Cancel) == 0 && m.AckExits == 0 && m.Heartbeat == nil {
		return nil
	}
	// The reply acknowledgement rides along with whatever goes anyway.
	if w := n.answeredLocked(); w > att.ackReplies {
		m.AckReplies = w
		att.ackReplies = w
	}
	return m
}

// answeredLocked is the highest id such that every command up to it has
// been answered (or given up before it was ever sent).
func (n *RemoteNode) answeredLocked() uint64 {
	w := n.nextID
	for id := range n.calls {
		if id <= w {
			w = id - 1
		}
	}
	return w
}

// call sends one command and waits for its reply, ctx, or the node's loss.
func (n *RemoteNode) call(ctx context.Context, op string, cmd *droverpb.Command) (*droverpb.Reply, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, n.name, err)
	}
	c := &call{op: op, cmd: cmd, done: make(chan struct{}), queued: cmd.GetStart().GetAfter() != ""}
	n.mu.Lock()
	if n.lost {
		err := n.lostErr
		n.mu.Unlock()
		return nil, fmt.Errorf("%s on %s: %w", op, n.name, err)
	}
	n.nextID++
	cmd.Id = n.nextID
	c.size = proto.Size(cmd)
	n.calls[cmd.Id] = c
	if c.queued {
		n.queued++
	}
	n.unsent = append(n.unsent, cmd.Id)
	att := n.att
	n.mu.Unlock()
	if att != nil {
		att.wakeup()
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		if n.abandon(c) {
			return nil, fmt.Errorf("%s on %s: %w", op, n.name, ctx.Err())
		}
		<-c.done // answered or lost meanwhile
	}
	if c.err != nil {
		return nil, c.err
	}
	if err := replyError(c.reply); err != nil {
		return c.reply, err
	}
	return c.reply, nil
}

// forgetLocked drops an answered or withdrawn call.
func (n *RemoteNode) forgetLocked(id uint64, c *call) {
	delete(n.calls, id)
	if c.queued {
		n.queued--
	}
}

// coalesce is how long the manager's commands and acknowledgements wait
// for company while starts are queued on the node: short, as a top-up
// must not keep a line waiting.
const coalesce = 5 * time.Millisecond

// windowed reports whether starts are queued on the node behind running
// processes: a batch is under way, and commands and acknowledgements may
// wait coalesce to travel together.
func (n *RemoteNode) windowed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.queued > 0
}

// abandon gives up on a call whose caller went away; false when it has
// already been answered (or failed).
func (n *RemoteNode) abandon(c *call) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	id := c.cmd.GetId()
	if n.calls[id] != c {
		return false
	}
	if !c.sent {
		n.forgetLocked(id, c) // the agent never saw it
		return true
	}
	c.abandoned = true
	n.cancels = append(n.cancels, id)
	if n.att != nil {
		n.att.wakeup()
	}
	return true
}

// Name is the node name the agent gave in its Hello.
func (n *RemoteNode) Name() string { return n.name }

// Resources are what the agent reported in its Hello.
func (n *RemoteNode) Resources() topology.Resources { return n.res }

// Version is the agent's version from its Hello.
func (n *RemoteNode) Version() string { return n.version }

// State is "up" (a stream is attached), "disconnected" (none, for less
// than NodeTimeout) or "lost" (for good).
func (n *RemoteNode) State() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.lost:
		return "lost"
	case n.att != nil:
		return "up"
	}
	return "disconnected"
}

// RTT is the round trip of the last heartbeat answered.
func (n *RemoteNode) RTT() time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.probe.rtt
}

// Health implements node.Node.
func (n *RemoteNode) Health() node.Health {
	return node.Health{State: n.State(), Err: n.Err(), RTT: n.RTT()}
}

// Err is why the node was lost; nil while it is not.
func (n *RemoteNode) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lostErr
}

// Left reports whether the node's agent ended its session in order
// (after a Shutdown) rather than being lost.
func (n *RemoteNode) Left() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.left
}

// Gone is closed when the node is lost.
func (n *RemoteNode) Gone() <-chan struct{} { return n.gone }

// Start starts a process. On a node that does not share this machine's
// filesystem (SharedFS), the staged files are sent to the node first (each
// content once per node), and stdout, stderr and outputs come back over
// the session: the exit is delivered once they are written here.
// Relative Stdout and Stderr paths are then relative to this process's
// work dir.
func (n *RemoteNode) Start(ctx context.Context, spec node.ProcessSpec) (node.Started, error) {
	op := "start " + spec.Name
	if n.shared {
		r, err := n.call(ctx, op, &droverpb.Command{Op: &droverpb.Command_Start{Start: specToPB(spec)}})
		if err != nil {
			return node.Started{}, err
		}
		return startedFromPB(r.GetStarted()), nil
	}
	if err := ctx.Err(); err != nil {
		return node.Started{}, fmt.Errorf("%s on %s: %w", op, n.name, err)
	}
	t0 := time.Now()
	sctx, cancel := n.stagingContext(ctx, spec.StageTimeout)
	pb, id, err := n.remoteSpec(sctx, spec)
	if err != nil && sctx.Err() != nil {
		err = fmt.Errorf("stage: %w", context.Cause(sctx))
	}
	cancel()
	if err != nil {
		return node.Started{}, fmt.Errorf("%s on %s: %w", op, n.name, err)
	}
	if t := spec.StageTimeout; t > 0 {
		// The agent copies them into the work dir in what is left.
		pb.StageTimeoutMs = millis(max(t-time.Since(t0), time.Millisecond))
	}
	r, err := n.call(ctx, op, &droverpb.Command{Op: &droverpb.Command_Start{Start: pb}})
	if err != nil {
		var re *remoteError
		if errors.As(err, &re) || errors.Is(err, errdefs.ErrNodeLost) {
			n.recv.Drop(id) // it did not start; else its exit may still come
		}
		return node.Started{}, err
	}
	return startedFromPB(r.GetStarted()), nil
}

// SharedFS tells whether the node's agent sees this machine's files under
// the same paths (see ServerOptions.SharedFS).
func (n *RemoteNode) SharedFS() bool { return n.shared }

func (n *RemoteNode) Poll(ctx context.Context, names ...string) ([]node.Status, error) {
	r, err := n.call(ctx, "poll", &droverpb.Command{Op: &droverpb.Command_Poll{Poll: &droverpb.PollRequest{Names: names}}})
	if err != nil {
		return nil, err
	}
	return pbconv.StatusesFromPB(r.GetPoll().GetStatuses()), nil
}

func (n *RemoteNode) Stop(ctx context.Context, name string, grace time.Duration) error {
	_, err := n.call(ctx, "stop "+name, &droverpb.Command{Op: &droverpb.Command_Stop{Stop: &droverpb.Named{Name: name, GraceMs: millis(grace)}}})
	return err
}

func (n *RemoteNode) Kill(ctx context.Context, name string) error {
	_, err := n.call(ctx, "kill "+name, &droverpb.Command{Op: &droverpb.Command_Kill{Kill: &droverpb.Named{Name: name}}})
	return err
}

func (n *RemoteNode) Purge(ctx context.Context, name string) error {
	_, err := n.call(ctx, "purge "+name, &droverpb.Command{Op: &droverpb.Command_Purge{Purge: &droverpb.Named{Name: name}}})
	return err
}

// Send writes data to the process's stdin; at most MaxSendBytes at a time.
func (n *RemoteNode) Send(ctx context.Context, name string, data []byte) error {
	if len(data) > MaxSendBytes {
		return fmt.Errorf("send %s on %s: %w: %d bytes, at most %d at a time", name, n.name, errdefs.ErrInvalid, len(data), MaxSendBytes)
	}
	_, err := n.call(ctx, "send "+name, &droverpb.Command{Op: &droverpb.Command_Send{Send: &droverpb.SendInput{Name: name, Data: data}}})
	return err
}

// CloseStdin closes the process's stdin.
func (n *RemoteNode) CloseStdin(ctx context.Context, name string) error {
	_, err := n.call(ctx, "close stdin "+name, &droverpb.Command{Op: &droverpb.Command_Send{Send: &droverpb.SendInput{Name: name, Close: true}}})
	return err
}

func (n *RemoteNode) CancelAll(ctx context.Context, grace time.Duration) error {
	n.stopStaging()
	_, err := n.call(ctx, "cancel all", &droverpb.Command{Op: &droverpb.Command_CancelAll{CancelAll: &droverpb.Named{GraceMs: millis(grace)}}})
	return err
}

// Finished returns the exits delivered since the last call, each exactly
// once; after the node is lost, what was delivered before.
func (n *RemoteNode) Finished() []node.Exit { return n.exits.TakeAll("") }

// Ready is signalled when Finished has something new and closed once the
// node is lost.
func (n *RemoteNode) Ready() <-chan struct{} { return n.ready }

func (n *RemoteNode) GetEnv(ctx context.Context, key string) (string, bool, error) {
	r, err := n.call(ctx, "get env "+key, &droverpb.Command{Op: &droverpb.Command_EnvGet{EnvGet: &droverpb.EnvKey{Key: key}}})
	if err != nil {
		return "", false, err
	}
	return r.GetEnv().GetValue(), r.GetEnv().GetSet(), nil
}

func (n *RemoteNode) SetEnv(ctx context.Context, key, value string) error {
	_, err := n.call(ctx, "set env "+key, &droverpb.Command{Op: &droverpb.Command_EnvSet{EnvSet: &droverpb.EnvKV{Key: key, Value: value}}})
	return err
}

func (n *RemoteNode) BindPorts(ctx context.Context, udp bool, count int) ([]int, error) {
	r, err := n.call(ctx, "bind ports", &droverpb.Command{Op: &droverpb.Command_PortsBind{PortsBind: &droverpb.PortsRequest{Udp: udp, N: int32(count)}}})
	if err != nil {
		return nil, err
	}
	return droverpb.Ints(r.GetPorts().GetPorts()), nil
}

func (n *RemoteNode) ReleasePorts(ctx context.Context, udp bool, ports []int) error {
	_, err := n.call(ctx, "release ports", &droverpb.Command{Op: &droverpb.Command_PortsRelease{PortsRelease: &droverpb.PortsRequest{Udp: udp, Ports: droverpb.Int32s(ports)}}})
	return err
}

func (n *RemoteNode) SetLogLevel(ctx context.Context, level string) error {
	_, err := n.call(ctx, "set log level", &droverpb.Command{Op: &droverpb.Command_LogLevel{LogLevel: level}})
	return err
}

// Close asks the agent to stop every process, report their exits and end
// its session (Shutdown with the agent's own grace), and waits until the
// session is over or the node is lost. Ready is closed afterwards.
func (n *RemoteNode) Close() error { return n.Shutdown(context.Background(), 0) }

// Shutdown is Close with a grace (SIGTERM to SIGKILL; 0: the agent's own)
// and a context that bounds the wait.
func (n *RemoteNode) Shutdown(ctx context.Context, grace time.Duration) error {
	n.stopStaging()
	select {
	case <-n.gone:
		return nil
	default:
	}
	_, err := n.call(ctx, "shutdown", &droverpb.Command{Op: &droverpb.Command_Shutdown{Shutdown: &droverpb.Shutdown{GraceMs: millis(grace)}}})
	if err != nil && !errors.Is(err, errdefs.ErrNodeLost) {
		return err
	}
	select {
	case <-n.gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shutdown on %s: %w", n.name, ctx.Err())
	}
}

var _ node.Node = (*RemoteNode)(nil)
