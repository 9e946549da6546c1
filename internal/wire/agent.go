package wire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/filexfer"
	"github.com/drover-hpc/drover/internal/mailbox"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
)

// AgentNode is what RunAgent serves: a node.Node that can also stop
// everything with a chosen grace. *agent.Agent is one. Shutdown must be
// safe to call more than once.
type AgentNode interface {
	node.Node
	Shutdown(grace time.Duration) error
}

// AgentOptions configure RunAgent.
type AgentOptions struct {
	Node AgentNode
	// Dial reaches the manager (with the run's credentials). It is called
	// again for every reconnect; RunAgent closes the connection.
	Dial    func(ctx context.Context) (*grpc.ClientConn, error)
	Version string
	// MonitorTimeout overrides the manager's (Welcome); 0: the manager's,
	// 30s until it is known.
	MonitorTimeout time.Duration
	// HeartbeatInterval overrides the manager's; 0: the manager's.
	HeartbeatInterval time.Duration
	// Grace is SIGTERM to SIGKILL when the agent stops its processes on its
	// way out (and for a Shutdown command without one). 0: 10s.
	Grace  time.Duration
	Logger *slog.Logger
	// RemoteFS tells the manager that this agent does not see the
	// manager's filesystem under the same paths (another host, no shared
	// mount): staged files and results then cross the session, staged
	// contents into a cache and stdout, stderr and outputs into a spool,
	// both under Scratch, whence they are sent back after each exit.
	// Without it they go by path, as for an agent on the manager's machine.
	RemoteFS bool
	// Scratch is where that cache and spool go, in a private directory
	// removed when RunAgent returns; "" is os.TempDir().
	Scratch string
}

const (
	defaultMonitorTimeout = 30 * time.Second
	defaultHeartbeat      = time.Second
	defaultGrace          = 10 * time.Second
	backoffMin            = 100 * time.Millisecond
	backoffMax            = 2 * time.Second
	handshakeTimeout      = 10 * time.Second // dial to Welcome
)

// RunAgent serves opts.Node to the manager until the manager shuts it
// down (nil), gives it up (ErrGivenUp), stays silent for the monitor
// timeout (ErrMonitorTimeout), refuses it, or ctx ends (ctx.Err()). Every
// way out stops all of the node's processes first (Node.Shutdown).
//
// It dials the manager and keeps one AgentSession stream open, redialing
// with capped exponential backoff whenever the stream breaks, resuming the
// same session: unanswered commands are answered from a cache (never run
// twice) and unacknowledged exits are sent again.
func RunAgent(ctx context.Context, opts AgentOptions) error {
	if opts.Node == nil || opts.Dial == nil {
		return errors.New("wire: RunAgent needs a Node and a Dial")
	}
	if opts.Grace <= 0 {
		opts.Grace = defaultGrace
	}
	a := &agentRun{
		opts:         opts,
		node:         opts.Node,
		log:          opts.Logger,
		ended:        make(chan struct{}),
		shutdownDone: make(chan struct{}),
		wake:         make(chan struct{}, 1),
		cache:        make(map[uint64]*droverpb.Reply),
		running:      make(map[uint64]inflight),
		monitor:      opts.MonitorTimeout,
		hb:           opts.HeartbeatInterval,
		files:        filexfer.NewSpace(opts.Scratch),
		outbox:       mailbox.New[*outItem](0),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("node", opts.Node.Name())
	if a.monitor <= 0 {
		a.monitor = defaultMonitorTimeout
	}
	if a.hb <= 0 {
		a.hb = defaultHeartbeat
	}
	a.cmdCtx, a.cmdCancel = context.WithCancel(context.Background())

	a.mu.Lock()
	a.lastHeard = time.Now()
	a.monitorTimer = time.AfterFunc(a.monitor, a.checkMonitor)
	a.mu.Unlock()
	stopWatch := context.AfterFunc(ctx, func() { a.end(ctx.Err()) })

	pumpQuit, pumpDone := make(chan struct{}), make(chan struct{})
	go a.pump(pumpQuit, pumpDone)

	backoff := time.Duration(0)
	for !a.isEnded() {
		welcomed, err := a.runSession()
		if a.isEnded() {
			break
		}
		if a.doneFinishing() {
			a.end(nil)
			break
		}
		if s, ok := status.FromError(err); ok && (s.Code() == codes.PermissionDenied || s.Code() == codes.Unauthenticated || s.Code() == codes.InvalidArgument) {
			a.end(fmt.Errorf("the manager refused this agent: %w", err))
			break
		}
		if welcomed {
			backoff = 0
			a.mu.Lock()
			rtt := a.probe.rtt
			a.mu.Unlock()
			a.log.Info("session to the manager broken; reconnecting", "err", err, "last_rtt", rtt)
		} else {
			a.log.Debug("cannot reach the manager", "err", err)
		}
		backoff = min(max(2*backoff, backoffMin), backoffMax)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-a.ended:
			t.Stop()
		}
	}
	stopWatch()
	a.mu.Lock()
	a.monitorTimer.Stop()
	err := a.endErr
	a.mu.Unlock()
	switch {
	case errors.Is(err, context.Canceled):
		a.log.Info("agent stopping every process", "reason", err)
	case err != nil:
		a.log.Warn("agent stopping every process", "reason", err)
	}
	a.shutdownNode(opts.Grace)
	a.cmdCancel()
	a.cmdWG.Wait()
	close(pumpQuit)
	<-pumpDone
	a.mu.Lock()
	for _, it := range a.sending {
		it.reset() // closes the file being sent
	}
	a.mu.Unlock()
	if rerr := a.files.Remove(); rerr != nil {
		a.log.Warn("remove the agent's file space", "err", rerr)
	}
	return err
}

type agentRun struct {
	opts AgentOptions
	node AgentNode
	log  *slog.Logger

	cmdCtx    context.Context // of commands; cancelled on the way out
	cmdCancel context.CancelFunc
	cmdWG     sync.WaitGroup // command goroutines and the node's shutdown

	ended        chan struct{}
	shutdownOnce sync.Once
	shutdownDone chan struct{}
	wake         chan struct{} // cap 1: something to send

	mu           sync.Mutex
	isOver       bool
	endErr       error
	streamCancel context.CancelFunc // of the current session
	session      string
	monitor      time.Duration
	hb           time.Duration
	lastHeard    time.Time
	monitorTimer *time.Timer

	cache   map[uint64]*droverpb.Reply // answered, not yet acknowledged
	running map[uint64]inflight        // start and send in progress
	queued  int                        // of running, starts queued behind another process
	// While sendLoop gathers exits, drained is closed once queued has
	// fallen to drainedAt: half the queue has started, so the manager must
	// hear of it to top the lines up.
	drained      chan struct{}
	drainedAt    int
	ackedReplies uint64            // the manager has every reply up to this id
	replyQ       []*droverpb.Reply // to send on the current stream

	// outbox holds the exits until the manager acknowledges them (its one
	// reader, toManager); a new stream takes every unacknowledged one again.
	outbox  *mailbox.Mailbox[*outItem]
	again   bool       // the next take is the first of a stream
	sending []*outItem // taken on this stream, report not sent yet, in seq order

	files *filexfer.Space

	echo  pendingEcho // the manager's heartbeat
	probe probe       // ours

	finishing bool // a Shutdown command arrived
	pumpOver  bool // the node's Ready was closed and drained
	closeSent bool // CloseSend done on the current stream
}

func (a *agentRun) end(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.isOver {
		return
	}
	a.isOver = true
	a.endErr = err
	close(a.ended)
	if a.streamCancel != nil {
		a.streamCancel()
	}
}

func (a *agentRun) isEnded() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.isOver
}

func (a *agentRun) wakeup() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// checkMonitor is the dead-man switch.
func (a *agentRun) checkMonitor() {
	a.mu.Lock()
	idle, limit := time.Since(a.lastHeard), a.monitor
	if idle < limit {
		a.monitorTimer.Reset(limit - idle)
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	a.end(fmt.Errorf("%w (%v)", ErrMonitorTimeout, limit))
}

// shutdownNode stops every process, once, and waits for that.
func (a *agentRun) shutdownNode(grace time.Duration) {
	a.startShutdown(grace)
	<-a.shutdownDone
}

// startShutdown has the node stop every process, once, in the background.
// The pump reports their exits as usual.
func (a *agentRun) startShutdown(grace time.Duration) {
	a.shutdownOnce.Do(func() {
		a.cmdWG.Add(1)
		go func() {
			defer a.cmdWG.Done()
			defer close(a.shutdownDone)
			if err := a.node.Shutdown(grace); err != nil {
				a.log.Warn("shutdown", "err", err)
			}
		}()
	})
}

// doneFinishing: after a Shutdown command, everything has been reported
// and acknowledged.
func (a *agentRun) doneFinishing() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.finishedLocked()
}

func (a *agentRun) finishedLocked() bool {
	return a.finishing && a.pumpOver && a.outbox.Len("") == 0 && len(a.running) == 0 && len(a.replyQ) == 0
}

// runSession runs one stream: dial, Hello, Welcome, then messages both ways
// until the stream breaks or the run ends. welcomed tells whether the
// manager answered.
func (a *agentRun) runSession() (welcomed bool, err error) {
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.mu.Lock()
	if a.isOver {
		a.mu.Unlock()
		return false, nil
	}
	a.streamCancel = cancel
	hello := &droverpb.Hello{
		Node:      a.node.Name(),
		Resources: pbconv.Resources(a.node.Resources()),
		Version:   a.opts.Version,
		Session:   a.session,
		RemoteFs:  a.opts.RemoteFS,
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.streamCancel = nil
		a.mu.Unlock()
	}()

	// A connection attempt that hangs (packets dropped) is given up after
	// a while, to dial again.
	handshake := time.AfterFunc(handshakeTimeout, cancel)
	defer handshake.Stop()
	conn, err := a.opts.Dial(sctx)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	stream, err := droverpb.NewAgentSessionClient(conn).Connect(sctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&droverpb.AgentMsg{Hello: hello}); err != nil {
		return false, err
	}
	m, err := stream.Recv()
	if err != nil {
		return false, err
	}
	if !handshake.Stop() {
		return false, errors.New("no Welcome from the manager in time")
	}
	w := m.GetWelcome()
	if w == nil {
		return false, errors.New("the manager did not answer with a Welcome")
	}
	if w.GetGivenUp() {
		a.end(ErrGivenUp)
		return true, nil
	}
	a.welcome(w)
	a.handle(m)

	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		if err := a.sendLoop(sctx, stream); err != nil {
			cancel() // unblocks Recv
		}
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			cancel()
			<-sendDone
			return true, err
		}
		a.handle(m)
	}
}

// welcome starts a stream's state: everything unacknowledged goes again.
func (a *agentRun) welcome(w *droverpb.Welcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.session == "" {
		a.log.Info("session with the manager open", "session", w.GetSession())
	} else {
		a.log.Info("session with the manager resumed")
	}
	a.session = w.GetSession()
	if a.opts.HeartbeatInterval <= 0 && w.GetHeartbeatIntervalMs() > 0 {
		a.hb = fromMillis(w.GetHeartbeatIntervalMs())
	}
	a.lastHeard = time.Now()
	if a.opts.MonitorTimeout <= 0 && w.GetMonitorTimeoutMs() > 0 {
		if m := fromMillis(w.GetMonitorTimeoutMs()); m != a.monitor {
			a.monitor = m
			a.monitorTimer.Reset(m)
		}
	}
	for _, it := range a.sending {
		it.reset()
	}
	a.again, a.sending = true, nil // unacknowledged exits go again, results first
	a.replyQ = nil                 // the manager repeats every unanswered command
	a.echo = pendingEcho{}
	a.closeSent = false
}

// handle applies one ManagerMsg: acknowledgements, then the commands in
// order, then cancellations.
func (a *agentRun) handle(m *droverpb.ManagerMsg) {
	a.mu.Lock()
	a.lastHeard = time.Now()
	var spools []*filexfer.Spool
	if ack := m.GetAckExits(); ack > 0 {
		for _, it := range a.outbox.AckThrough(toManager, "", ack) {
			if it.spool != nil {
				spools = append(spools, it.spool)
			}
		}
	}
	if ack := m.GetAckReplies(); ack > a.ackedReplies {
		a.ackedReplies = ack
		for id := range a.cache {
			if id <= ack {
				delete(a.cache, id)
			}
		}
	}
	wake := false
	heard(m.GetHeartbeat(), &a.probe, &a.echo)
	if a.finishedLocked() {
		wake = true // time to close the stream
	}
	a.mu.Unlock()
	for _, sp := range spools {
		if err := sp.Remove(); err != nil {
			a.log.Warn("remove results spool", "err", err)
		}
	}
	for _, c := range m.GetCommands() {
		a.command(c)
	}
	for _, id := range m.GetCancel() {
		a.cancel(id)
	}
	if wake {
		a.wakeup()
	}
}

// command runs one command, unless it is a repeat: a repeat is answered
// from the cache, or not at all while it still runs.
func (a *agentRun) command(c *droverpb.Command) {
	id := c.GetId()
	a.mu.Lock()
	if id <= a.ackedReplies {
		a.mu.Unlock()
		return // answered and acknowledged long ago
	}
	if r, ok := a.cache[id]; ok {
		a.replyQ = append(a.replyQ, r)
		a.mu.Unlock()
		a.wakeup()
		return
	}
	if _, ok := a.running[id]; ok {
		a.mu.Unlock()
		return
	}
	switch op := c.GetOp().(type) {
	case *droverpb.Command_Start, *droverpb.Command_Send:
		// Slow: in parallel. A Purge before a Start of the same name has
		// already run inline.
		ctx, cancel := context.WithCancel(a.cmdCtx)
		f := inflight{cancel: cancel}
		if st, ok := op.(*droverpb.Command_Start); ok {
			f.start, f.queued = true, st.Start.GetAfter() != ""
		}
		a.running[id] = f
		if f.queued {
			a.queued++
		}
		a.cmdWG.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.cmdWG.Done()
			defer cancel()
			a.answer(id, a.execute(ctx, c))
		}()
	case *droverpb.Command_Shutdown:
		a.finishing = true
		a.mu.Unlock()
		a.answer(id, &droverpb.Reply{Id: id})
		grace := fromMillis(op.Shutdown.GetGraceMs())
		if grace <= 0 {
			grace = a.opts.Grace
		}
		a.log.Info("shutdown asked by the manager", "grace", grace)
		a.startShutdown(grace)
	case *droverpb.Command_CancelAll:
		// Starts that came before it are withdrawn, even one still on its
		// way to the node, which CancelAll alone might not see.
		for _, f := range a.running {
			if f.start {
				f.cancel()
			}
		}
		a.mu.Unlock()
		a.answer(id, a.execute(a.cmdCtx, c))
	default:
		a.mu.Unlock()
		a.answer(id, a.execute(a.cmdCtx, c))
	}
}

// inflight is a start or send command in progress.
type inflight struct {
	cancel context.CancelFunc
	start  bool
	queued bool // a start queued behind another process (a window)
}

// gather reports whether starts are queued here behind running
// processes (a batch is under way, and exits and replies may wait up to
// exitGather to travel together) and returns a channel closed once half of
// them have started.
func (a *agentRun) gather() (drained <-chan struct{}, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.queued == 0 {
		return nil, false
	}
	a.drained, a.drainedAt = make(chan struct{}), a.queued/2
	return a.drained, true
}

// gathered ends what gather began.
func (a *agentRun) gathered() {
	a.mu.Lock()
	a.drained = nil
	a.mu.Unlock()
}

// answer records and queues a reply.
func (a *agentRun) answer(id uint64, r *droverpb.Reply) {
	a.mu.Lock()
	if a.running[id].queued {
		a.queued--
		if a.drained != nil && a.queued <= a.drainedAt {
			close(a.drained)
			a.drained = nil
		}
	}
	delete(a.running, id)
	if id > a.ackedReplies {
		a.cache[id] = r
	}
	a.replyQ = append(a.replyQ, r)
	a.mu.Unlock()
	a.wakeup()
}

// cancel: the manager's caller gave up on a command.
func (a *agentRun) cancel(id uint64) {
	a.mu.Lock()
	if id <= a.ackedReplies {
		a.mu.Unlock()
		return
	}
	if _, ok := a.cache[id]; ok {
		a.mu.Unlock()
		return
	}
	if f, ok := a.running[id]; ok {
		a.mu.Unlock()
		f.cancel()
		return
	}
	a.mu.Unlock()
	// Never seen (lost with a broken stream): it will never run.
	a.answer(id, &droverpb.Reply{Id: id, Error: context.Canceled.Error()})
}

// execute runs a command against the node.
func (a *agentRun) execute(ctx context.Context, c *droverpb.Command) *droverpb.Reply {
	n := a.node
	r := &droverpb.Reply{Id: c.GetId()}
	var err error
	switch op := c.GetOp().(type) {
	case *droverpb.Command_Start:
		spec := specFromPB(op.Start)
		var sp *filexfer.Spool
		if sp, err = a.files.Prepare(&spec, stageSums(op.Start), resultsSpecFromPB(op.Start.GetResults())); err != nil {
			err = fmt.Errorf("start %s on %s: %w", spec.Name, n.Name(), err)
			break
		}
		var st node.Started
		if st, err = n.Start(ctx, spec); err == nil {
			r.Result = &droverpb.Reply_Started{Started: startedToPB(st)}
		} else if sp != nil {
			a.files.Abandon(spec.Name, sp)
		}
	case *droverpb.Command_PutFile:
		var p filexfer.Put
		if p, err = putFromPB(op.PutFile); err == nil {
			err = a.files.Put(p)
		}
	case *droverpb.Command_Stop:
		err = n.Stop(ctx, op.Stop.GetName(), fromMillis(op.Stop.GetGraceMs()))
	case *droverpb.Command_Kill:
		err = n.Kill(ctx, op.Kill.GetName())
	case *droverpb.Command_Purge:
		err = n.Purge(ctx, op.Purge.GetName())
	case *droverpb.Command_Send:
		if len(op.Send.GetData()) > 0 || !op.Send.GetClose() {
			err = n.Send(ctx, op.Send.GetName(), op.Send.GetData())
		}
		if err == nil && op.Send.GetClose() {
			err = n.CloseStdin(ctx, op.Send.GetName())
		}
	case *droverpb.Command_CancelAll:
		err = n.CancelAll(ctx, fromMillis(op.CancelAll.GetGraceMs()))
	case *droverpb.Command_Poll:
		var st []node.Status
		if st, err = n.Poll(ctx, op.Poll.GetNames()...); err == nil {
			r.Result = &droverpb.Reply_Poll{Poll: &droverpb.PollResult{Statuses: pbconv.Statuses(st)}}
		}
	case *droverpb.Command_EnvGet:
		var v string
		var ok bool
		if v, ok, err = n.GetEnv(ctx, op.EnvGet.GetKey()); err == nil {
			r.Result = &droverpb.Reply_Env{Env: &droverpb.EnvValue{Value: v, Set: ok}}
		}
	case *droverpb.Command_EnvSet:
		err = n.SetEnv(ctx, op.EnvSet.GetKey(), op.EnvSet.GetValue())
	case *droverpb.Command_PortsBind:
		var p []int
		if p, err = n.BindPorts(ctx, op.PortsBind.GetUdp(), int(op.PortsBind.GetN())); err == nil {
			r.Result = &droverpb.Reply_Ports{Ports: &droverpb.PortList{Ports: droverpb.Int32s(p)}}
		}
	case *droverpb.Command_PortsRelease:
		err = n.ReleasePorts(ctx, op.PortsRelease.GetUdp(), droverpb.Ints(op.PortsRelease.GetPorts()))
	case *droverpb.Command_LogLevel:
		err = n.SetLogLevel(ctx, op.LogLevel)
	default:
		err = fmt.Errorf("%w %d: no operation this agent knows", errdefs.ErrInvalid, c.GetId())
	}
	setError(r, err)
	return r
}

// outItem is an exit report with the results that go ahead of it.
type outItem struct {
	report *droverpb.ExitReport
	spool  *filexfer.Spool  // removed once the exit is acknowledged; nil: no results
	ship   *filexfer.Sender // reads the spool's files for the stream
}

// addError adds to the exit's error.
func (it *outItem) addError(msg string) {
	x := it.report.GetExit()
	if x.Error != "" {
		x.Error += "; "
	}
	x.Error += msg
}

// reset has the results go again from the start.
func (it *outItem) reset() {
	if it.ship != nil {
		it.ship.Reset()
	}
}

// toManager is the one reader of the outbox.
const toManager = "manager"

// pump moves the node's exits into the outbox, numbered.
func (a *agentRun) pump(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	ready := a.node.Ready()
	for {
		select {
		case _, ok := <-ready:
			exits := a.node.Finished()
			items := make([]*outItem, len(exits))
			for i, e := range exits {
				it := &outItem{report: &droverpb.ExitReport{Exit: pbconv.Exit(e)}}
				if sp := a.files.Take(e.Name); sp != nil {
					it.report.ResultsId, it.spool = sp.ID(), sp
					var err error
					if it.ship, err = sp.Sender(); err != nil {
						it.addError("results: " + err.Error())
					}
				}
				items[i] = it
			}
			a.mu.Lock() // numbered and put in the order taken
			for _, it := range items {
				it.report.Seq = a.outbox.Put("", it)
			}
			if !ok {
				a.pumpOver = true
			}
			a.mu.Unlock()
			a.wakeup()
			if !ok {
				return
			}
		case <-quit:
			return
		}
	}
}

// sendLoop is the single writer of a stream: each message carries every
// reply and exit that piled up while the previous one was being sent.
func (a *agentRun) sendLoop(ctx context.Context, stream droverpb.AgentSession_ConnectClient) error {
	a.mu.Lock()
	tick := time.NewTicker(a.hb)
	a.mu.Unlock()
	defer tick.Stop()
	gather := time.NewTimer(exitGather)
	defer gather.Stop()
	hbDue := false
	for {
		for {
			// A heartbeat due goes with the next message even while
			// exits and results keep the loop busy.
			select {
			case <-tick.C:
				hbDue = true
			default:
			}
			m, closeSend := a.collect(hbDue)
			hbDue = false
			if m != nil {
				if err := stream.Send(m); err != nil {
					return err
				}
			}
			if closeSend {
				// Everything is reported: the manager ends the session.
				return stream.CloseSend()
			}
			if m == nil {
				break
			}
		}
		select {
		case <-a.wake:
			if drained, ok := a.gather(); ok {
				// A lone exit goes at once; in a batch, those of the next
				// moments and the starts they free go with it.
				gather.Reset(exitGather)
				select {
				case <-gather.C:
				case <-drained:
				case <-ctx.Done():
					a.gathered()
					return nil
				}
				a.gathered()
			}
		case <-tick.C:
			hbDue = true
		case <-ctx.Done():
			return nil
		}
	}
}

// exitGather is how long exits and replies wait for company while starts
// are queued on the node, unless half of those start first: every message
// costs both sides a gRPC send or receive (about 100 µs of CPU each on a
// small VM), and the manager tops a line up only once half of it has run.
const exitGather = 25 * time.Millisecond

// collect builds the next AgentMsg (nil: nothing to send) and tells
// whether the stream should be closed after it.
func (a *agentRun) collect(hbDue bool) (*droverpb.AgentMsg, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closeSent {
		return nil, false
	}
	m := &droverpb.AgentMsg{}
	size, r := 0, 0
	for ; r < len(a.replyQ) && size < maxBatchBytes; r++ {
		size += proto.Size(a.replyQ[r])
	}
	m.Replies = a.replyQ[:r:r]
	a.replyQ = a.replyQ[r:]
	if len(a.replyQ) == 0 {
		a.replyQ = nil
	}
	// Each exit goes after the results of its process, a message's worth
	// at a time: files are read here, a chunk at a time, so that a big
	// stdout never sits in memory (and Send waits on flow control).
	// New exits come after those taken already: take when those are sent
	// (a take looks at every unacknowledged exit).
	if a.again || len(a.sending) == 0 {
		for _, l := range a.outbox.Take(toManager, "", nil, a.again) {
			if a.again {
				l.Item.reset() // sent on a stream before: all of it again
			}
			a.sending = append(a.sending, l.Item)
		}
		a.again = false
	}
	i := 0
	for ; i < len(a.sending) && size < maxBatchBytes; i++ {
		it := a.sending[i]
		for it.ship != nil && !it.ship.Done() && size < maxBatchBytes {
			c, err := it.ship.Next()
			if err != nil {
				it.addError(err.Error())
			}
			if c != nil {
				fd := resultToPB(c, it.report.GetSeq())
				m.Files = append(m.Files, fd)
				size += len(fd.Data) + 64
			}
		}
		if it.ship != nil && !it.ship.Done() {
			break // the next message carries on
		}
		m.Exits = append(m.Exits, it.report)
		size += proto.Size(it.report)
	}
	clear(a.sending[:i])
	a.sending = a.sending[i:]
	m.Heartbeat = outgoing(&a.probe, &a.echo, hbDue)
	closeSend := a.finishedLocked()
	if closeSend {
		a.closeSent = true
	}
	if len(m.Replies) == 0 && len(m.Exits) == 0 && len(m.Files) == 0 && m.Heartbeat == nil {
		m = nil
	}
	return m, closeSend
}
