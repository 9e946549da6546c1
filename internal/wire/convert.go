package wire

import (
	"errors"
	"os"
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/supervise"
	"github.com/drover-hpc/drover/internal/topology"
)

// Message sizes. gRPC refuses messages over 4 MiB by default; a batch is
// closed once it passes maxBatchBytes, so with one item of at most
// MaxSendBytes and a little more it always fits.
const (
	// MaxSendBytes is the most data one Send over the wire carries.
	MaxSendBytes  = 1 << 20
	maxBatchBytes = 1 << 20
)

// Errors of this package. Test with errors.Is.
var (
	// ErrNodeLost: the node's agent was silent for NodeTimeout, its session
	// was closed, or the server was closed. Every call still waiting for an
	// answer, and every later call, fails with it.
	ErrNodeLost = errors.New("node lost")
	// ErrInvalid: the agent could not make sense of a command.
	ErrInvalid = errors.New("invalid command")
	// ErrMonitorTimeout: RunAgent heard nothing from the manager for the
	// monitor timeout and stopped every process.
	ErrMonitorTimeout = errors.New("no word from the manager within the monitor timeout")
	// ErrGivenUp: the manager had declared this agent's node lost; RunAgent
	// stopped every process.
	ErrGivenUp = errors.New("the manager gave this node up")
)

// kinds maps the core's typed errors to their wire form and back.
var kinds = []struct {
	kind droverpb.ErrorKind
	err  error
}{
	{droverpb.ErrorKind_ERROR_KIND_UNKNOWN_PROCESS, supervise.ErrUnknown},
	{droverpb.ErrorKind_ERROR_KIND_DUPLICATE, supervise.ErrDuplicate},
	{droverpb.ErrorKind_ERROR_KIND_RUNNING, supervise.ErrRunning},
	{droverpb.ErrorKind_ERROR_KIND_NOT_RUNNING, supervise.ErrNotRunning},
	{droverpb.ErrorKind_ERROR_KIND_CLOSED, supervise.ErrClosed},
	{droverpb.ErrorKind_ERROR_KIND_INVALID, ErrInvalid},
	{droverpb.ErrorKind_ERROR_KIND_AFTER_TIMEOUT, node.ErrAfterTimeout},
}

func errorKind(err error) droverpb.ErrorKind {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return droverpb.ErrorKind_ERROR_KIND_UNSPECIFIED
}

// remoteError is an error that crossed the wire: the agent's message, and
// the core's typed error it wrapped, if any.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// replyError turns a Reply's error back into a Go error (nil when none).
func replyError(r *droverpb.Reply) error {
	if r.GetError() == "" && r.GetErrorKind() == droverpb.ErrorKind_ERROR_KIND_UNSPECIFIED {
		return nil
	}
	e := &remoteError{msg: r.GetError()}
	for _, k := range kinds {
		if k.kind == r.GetErrorKind() {
			e.kind = k.err
		}
	}
	if e.msg == "" {
		if e.kind != nil {
			e.msg = e.kind.Error()
		} else {
			e.msg = "agent error " + r.GetErrorKind().String()
		}
	}
	return e
}

func setError(r *droverpb.Reply, err error) {
	if err != nil {
		r.Error = err.Error()
		r.ErrorKind = errorKind(err)
	}
}

func resourcesToPB(r topology.Resources) *droverpb.Resources {
	return droverpb.NewResources(r.Node, r.Cores, r.MemoryBytes)
}

func resourcesFromPB(r *droverpb.Resources) topology.Resources {
	return topology.Resources{Node: r.GetNode(), Cores: r.CoreLists(), MemoryBytes: r.GetMemoryBytes()}
}

func specToPB(s node.ProcessSpec) *droverpb.ProcessSpec {
	out := &droverpb.ProcessSpec{
		Name:           s.Name,
		Args:           s.Args,
		Env:            s.Env,
		Dir:            s.Dir,
		Stdout:         s.Stdout,
		Stderr:         s.Stderr,
		Outputs:        s.Outputs,
		OutputDir:      s.OutputDir,
		Hwthreads:      droverpb.Int32s(s.HWThreads),
		PortNames:      s.PortNames,
		AutoPurge:      s.AutoPurge,
		After:          s.After,
		AfterTimeoutMs: millis(s.AfterTimeout),
		StageTimeoutMs: millis(s.StageTimeout),
	}
	for _, f := range s.Files {
		out.Files = append(out.Files, &droverpb.StageFile{Src: f.Src, Dst: f.Dst, Mode: uint32(f.Mode.Perm())})
	}
	return out
}

func specFromPB(s *droverpb.ProcessSpec) node.ProcessSpec {
	out := node.ProcessSpec{
		Name:         s.GetName(),
		Args:         s.GetArgs(),
		Env:          s.GetEnv(),
		Dir:          s.GetDir(),
		Stdout:       s.GetStdout(),
		Stderr:       s.GetStderr(),
		Outputs:      s.GetOutputs(),
		OutputDir:    s.GetOutputDir(),
		HWThreads:    droverpb.Ints(s.GetHwthreads()),
		PortNames:    s.GetPortNames(),
		AutoPurge:    s.GetAutoPurge(),
		After:        s.GetAfter(),
		AfterTimeout: fromMillis(s.GetAfterTimeoutMs()),
		StageTimeout: fromMillis(s.GetStageTimeoutMs()),
	}
	for _, f := range s.GetFiles() {
		out.Files = append(out.Files, node.StageFile{Src: f.GetSrc(), Dst: f.GetDst(), Mode: os.FileMode(f.GetMode()).Perm()})
	}
	return out
}

func startedToPB(s node.Started) *droverpb.Started {
	out := &droverpb.Started{Pid: int32(s.PID)}
	if len(s.Ports) > 0 {
		out.Ports = make(map[string]int32, len(s.Ports))
		for k, v := range s.Ports {
			out.Ports[k] = int32(v)
		}
	}
	return out
}

func startedFromPB(s *droverpb.Started) node.Started {
	out := node.Started{PID: int(s.GetPid())}
	if len(s.GetPorts()) > 0 {
		out.Ports = make(map[string]int, len(s.GetPorts()))
		for k, v := range s.GetPorts() {
			out.Ports[k] = int(v)
		}
	}
	return out
}

// millis is d in whole milliseconds, rounded up so that a positive
// duration stays positive; negative is 0.
func millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func fromMillis(ms int64) time.Duration {
	if ms <= 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func exitToPB(e node.Exit) *droverpb.Exit {
	out := &droverpb.Exit{
		Name:          e.Name,
		Node:          e.Node,
		Code:          int32(e.Code),
		StartUnixNano: unixNano(e.Start),
		EndUnixNano:   unixNano(e.End),
		Error:         e.Err,
	}
	if e.Signal != 0 {
		out.Signal = node.SignalName(e.Signal)
	}
	return out
}

func exitFromPB(e *droverpb.Exit) node.Exit {
	out := node.Exit{
		Name:  e.GetName(),
		Node:  e.GetNode(),
		Code:  int(e.GetCode()),
		Start: fromUnixNano(e.GetStartUnixNano()),
		End:   fromUnixNano(e.GetEndUnixNano()),
		Err:   e.GetError(),
	}
	if e.GetSignal() != "" {
		if sig, ok := node.ParseSignal(e.GetSignal()); ok {
			out.Signal = sig
		} else if out.Err == "" {
			out.Err = "unknown signal " + e.GetSignal()
		}
	}
	return out
}

func statusesToPB(st []node.Status) *droverpb.PollResult {
	out := &droverpb.PollResult{Statuses: make([]*droverpb.ProcessStatus, 0, len(st))}
	for _, s := range st {
		ps := &droverpb.ProcessStatus{Name: s.Name, Running: s.State == node.Running}
		if s.State == node.Exited {
			ps.Exit = exitToPB(s.Exit)
		}
		out.Statuses = append(out.Statuses, ps)
	}
	return out
}

func statusesFromPB(p *droverpb.PollResult) []node.Status {
	out := make([]node.Status, 0, len(p.GetStatuses()))
	for _, s := range p.GetStatuses() {
		st := node.Status{Name: s.GetName(), State: node.Running}
		if !s.GetRunning() {
			st.State = node.Exited
			st.Exit = exitFromPB(s.GetExit())
		}
		out = append(out, st)
	}
	return out
}
