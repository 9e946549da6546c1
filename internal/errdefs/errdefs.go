// Package errdefs is drover's one vocabulary of failures: every typed error
// of the core is one of the kinds below, defined here once. The supervisor,
// the agent, the cluster and the queue return these (wrapped with the
// operation and the subject); the transports carry the kind across
// (internal/pbconv) and clients test it with errors.Is.
package errdefs

import (
	"errors"
	"fmt"
	"syscall"
)

// Kind is a class of failure. Its String is the stable, lower-case name
// written on the wire ("unknown_process") and shown to programs.
type Kind int

// The kinds. Unknown is an error that carries no kind.
const (
	Unknown Kind = iota
	UnknownProcess
	UnknownNode
	Duplicate
	Running
	NotRunning
	Busy
	Invalid
	NodeLost
	Closed
	SpawnFailed
	AfterTimeout
	Cancelled
	StageTimeout
)

var names = [...]string{
	Unknown:        "unknown",
	UnknownProcess: "unknown_process",
	UnknownNode:    "unknown_node",
	Duplicate:      "duplicate",
	Running:        "running",
	NotRunning:     "not_running",
	Busy:           "busy",
	Invalid:        "invalid",
	NodeLost:       "node_lost",
	Closed:         "closed",
	SpawnFailed:    "spawn_failed",
	AfterTimeout:   "after_timeout",
	Cancelled:      "cancelled",
	StageTimeout:   "stage_timeout",
}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(names) {
		return fmt.Sprintf("kind(%d)", int(k))
	}
	return names[k]
}

// ParseKind is the inverse of String; a name it does not know is Unknown.
func ParseKind(s string) Kind {
	for k, n := range names {
		if n == s {
			return Kind(k)
		}
	}
	return Unknown
}

// kindError is the sentinel of one kind.
type kindError struct {
	kind Kind
	msg  string
}

func (e *kindError) Error() string { return e.msg }

// The sentinel of each kind. Test with errors.Is; wrap with fmt.Errorf and
// %w to add the operation and the subject.
var (
	ErrUnknownProcess = sentinel(UnknownProcess, "unknown process")
	ErrUnknownNode    = sentinel(UnknownNode, "unknown node")
	ErrDuplicate      = sentinel(Duplicate, "name already in use")
	ErrRunning        = sentinel(Running, "process is running")
	ErrNotRunning     = sentinel(NotRunning, "process is not running")
	// ErrBusy: what a start asks for (cores, hardware threads) is taken.
	ErrBusy = sentinel(Busy, "not free")
	// ErrInvalid: a request that cannot be carried out as given.
	ErrInvalid = sentinel(Invalid, "invalid request")
	// ErrNodeLost: the node's agent ended, fell silent or gave up.
	ErrNodeLost = sentinel(NodeLost, "node lost")
	// ErrClosed: the supervisor, node or serve is shutting down.
	ErrClosed = sentinel(Closed, "shutting down")
	// ErrSpawnFailed: the process could not be started; a *SpawnError
	// says why.
	ErrSpawnFailed = sentinel(SpawnFailed, "spawn failed")
	// ErrAfterTimeout: a start waited past its AfterTimeout for the
	// process before it; nothing ran.
	ErrAfterTimeout = sentinel(AfterTimeout, "waited too long for the process before it")
	// ErrCancelled: the caller gave up before the operation was done.
	ErrCancelled = sentinel(Cancelled, "cancelled")
	// ErrStageTimeout: a start's files took longer to stage than its
	// timeout; nothing ran.
	ErrStageTimeout = sentinel(StageTimeout, "staging took longer than the timeout")
)

var sentinels []*kindError

func sentinel(k Kind, msg string) error {
	e := &kindError{k, msg}
	sentinels = append(sentinels, e)
	return e
}

// precedence orders the kinds for KindOf: a lost node explains whatever
// else went wrong with it; a shutdown explains a cancelled call.
var precedence = []Kind{NodeLost, Closed, SpawnFailed, UnknownProcess, UnknownNode, Duplicate,
	Running, NotRunning, Busy, Invalid, AfterTimeout, StageTimeout, Cancelled}

// Sentinel returns the sentinel error of k (nil for Unknown).
func Sentinel(k Kind) error {
	for _, e := range sentinels {
		if e.kind == k {
			return e
		}
	}
	return nil
}

// KindOf returns the kind of err, Unknown when it has none.
func KindOf(err error) Kind {
	if err == nil {
		return Unknown
	}
	for _, k := range precedence {
		if errors.Is(err, Sentinel(k)) {
			return k
		}
	}
	return Unknown
}

// SpawnError says why a process could not be started: the errno of the
// failed call and the path it concerns (the executable, the work dir, an
// output file). It is of kind SpawnFailed.
type SpawnError struct {
	Op    string // what failed: "exec", "work dir", "open stdout", ...
	Path  string
	Errno syscall.Errno // 0 when the failure has none
	Err   error         // the underlying error, for its message
}

// Error is the message of Err, which says it all; Op and Path are there
// for programs.
func (e *SpawnError) Error() string { return e.Err.Error() }

func (e *SpawnError) Unwrap() []error { return []error{ErrSpawnFailed, e.Err} }

// NewSpawnError makes a SpawnError of err, taking the errno from err where
// it has one.
func NewSpawnError(op, path string, err error) *SpawnError {
	e := &SpawnError{Op: op, Path: path, Err: err}
	errors.As(err, &e.Errno)
	return e
}

// Remote is an error that crossed a transport: the message as the other
// side wrote it, its kind, and the errno and path of a spawn failure. It
// matches the sentinel of its kind (errors.Is), and errors.As finds a
// *SpawnError in it when it is one.
func Remote(k Kind, msg string, errno syscall.Errno, path string) error {
	if msg == "" {
		msg = k.String()
		if s := Sentinel(k); s != nil {
			msg = s.Error()
		}
	}
	err := &remoteError{kind: k, msg: msg}
	if k == SpawnFailed {
		return &SpawnError{Path: path, Errno: errno, Err: err}
	}
	return err
}

type remoteError struct {
	kind Kind
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return Sentinel(e.kind) }
