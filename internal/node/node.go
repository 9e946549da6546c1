// Package node defines the seam between the job queue and the machines it
// runs on: the operations of one node's agent (start, poll, stop, kill,
// purge, send input, cancel all, finished reports, environment, ports, log
// level) as plain Go types. An in-process agent and a remote one behind a
// transport both satisfy Node, so the core never depends on the wire.
package node

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/drover-hpc/drover/internal/topology"
)

// ProcessSpec describes one process to start on a node.
type ProcessSpec struct {
	Name string            // unique among the node's known processes
	Args []string          // argv; Args[0] is looked up in PATH when it has no slash
	Env  map[string]string // added to the node's base environment
	// Dir is the work dir, which must exist; "" asks the node for a fresh
	// one, which it removes after the outputs are collected.
	Dir    string
	Stdout string // file path, created or truncated; "" = /dev/null
	Stderr string // file path, created or truncated; "" = /dev/null
	// Files are copied into the work dir before start.
	Files []StageFile
	// Outputs are glob patterns relative to the work dir; matching files
	// are copied into OutputDir after exit, before the exit is reported.
	Outputs   []string
	OutputDir string
	// HWThreads binds the process to these logical CPUs before exec; empty
	// leaves the affinity as inherited.
	HWThreads []int
	// PortNames asks the node for one free TCP port per name, held from
	// reservation until the instant before fork. Each port is exported as
	// DROVER_PORT_<NAME> and replaces "{port:name}" in Args.
	PortNames []string
	// AutoPurge forgets the process once its exit is reported, so its
	// name is free again without a Purge (the batch queue's way).
	AutoPurge bool
	// NoStdin makes stdin /dev/null: the process reads end of input at
	// once instead of waiting on a pipe that nobody writes to (the batch
	// queue's way); Send and CloseStdin then fail as after CloseStdin.
	NoStdin bool
	// MakeOutputDir makes the node create OutputDir (its last part, no
	// symlink followed; the parent must exist) before it opens the files
	// in it: a node on this machine's file system then does all of an
	// instance's file work, and the queue none.
	MakeOutputDir bool
	// After makes the start wait until the process of that name on the
	// same node has exited and its exit is collected; Start returns once
	// this process has started. The batch queue uses it to queue
	// instances on a node, several deep behind each running one, so that
	// each takes over its predecessor's cores the moment it exits, with
	// no round trip to the manager. A start that fails (or is withdrawn)
	// hands its place on: those queued behind it wait for what it waited
	// for. An After that has exited, or (without AfterTimeout) is
	// unknown, starts at once; with AfterTimeout an unknown After is
	// waited for, as its own start may still be on its way. CancelAll
	// and Close fail waiting starts, even one whose After has just exited.
	After string
	// AfterTimeout bounds how long After may run before this start gives
	// up (counted from After's own start; while After is itself queued
	// there is no bound yet), and the wait for an After not seen yet:
	// past it the start fails with errdefs.ErrAfterTimeout and nothing
	// runs, so that the caller can place the process elsewhere. 0 waits as
	// long as it takes.
	AfterTimeout time.Duration
	// StageTimeout bounds the copying of Files (the job's timeout): past
	// it the start fails and nothing runs. 0: no bound. CancelAll and
	// Close end a staging too.
	StageTimeout time.Duration
	// MemoryMax is memory.max, in bytes, of a cgroup of the process's own,
	// where the node can make one: past it the kernel reclaims, then the
	// OOM killer ends the process, whose exit then says "out of memory".
	// 0: no limit.
	MemoryMax int64
}

// State is what Poll reports for a process.
type State int

const (
	Running State = iota
	Exited
	// Unknown: the node knows no process of that name (Err says so), so
	// that one Poll of several names reports each.
	Unknown
)

// Status is the state of one process as Poll sees it.
type Status struct {
	Name  string
	State State
	Exit  Exit  // valid when State == Exited
	Err   error // valid when State == Unknown
}

// Exit is the final report of one process. Exactly one is delivered by
// Finished for every process that started.
type Exit struct {
	Name   string
	Node   string
	Code   int            // exit status; -1 when killed by a signal
	Signal syscall.Signal // 0 unless killed by a signal
	Start  time.Time
	End    time.Time
	// Err is set when the process ran but its results could not all be
	// kept (outputs not collected); the queue counts that as a failure.
	Err string
}

// StageFile is one file to copy into a work dir: Src is a path on the
// machine that runs the queue, Dst is relative to the work dir.
type StageFile struct {
	Src string
	Dst string
	// Mode is the permission bits of the copy; 0 takes those of Src.
	Mode os.FileMode
}

// String renders the exit the way `drover poll` and `drover finished` print it.
func (e Exit) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("signal %s", SignalName(e.Signal))
	}
	return fmt.Sprintf("exit %d", e.Code)
}

// Success reports whether the process exited with status 0 and its
// results were kept.
func (e Exit) Success() bool { return e.Signal == 0 && e.Code == 0 && e.Err == "" }

// Started is what a node returns for a process it has just started.
type Started struct {
	PID   int
	Ports map[string]int
}

// Health is how a node is, as the one who holds it sees it.
type Health struct {
	// State is "up", "disconnected" (its agent's session dropped and may
	// come back) or "lost" (for good).
	State string
	Err   error         // why it was lost; nil while it is not
	RTT   time.Duration // round trip of the last heartbeat; 0 in process
}

// Lost reports whether the node is gone for good.
func (h Health) Lost() bool { return h.State == "lost" }

// Node is one node's agent. Methods are safe for concurrent use.
type Node interface {
	Name() string
	Resources() topology.Resources
	Health() Health

	// Start starts a process. A bad spec (duplicate name, missing
	// executable or work dir, unwritable output path) is an error for this
	// start only; the node keeps serving.
	Start(ctx context.Context, spec ProcessSpec) (Started, error)
	// Poll reports the named processes, or all known ones when names is
	// empty; a name it does not know is reported as Unknown.
	Poll(ctx context.Context, names ...string) ([]Status, error)
	// Stop sends SIGTERM to the process group, then SIGKILL after grace.
	Stop(ctx context.Context, name string, grace time.Duration) error
	// Kill sends SIGKILL to the process group.
	Kill(ctx context.Context, name string) error
	// Purge forgets a process that is no longer running.
	Purge(ctx context.Context, name string) error
	// Send writes data to the process's stdin.
	Send(ctx context.Context, name string, data []byte) error
	// CloseStdin closes the process's stdin: it reads end of input.
	CloseStdin(ctx context.Context, name string) error
	// CancelAll stops every running process (SIGTERM, grace, SIGKILL).
	CancelAll(ctx context.Context, grace time.Duration) error

	// Finished returns the exits not yet returned, each exactly once.
	Finished() []Exit
	// Ready is signalled (without blocking, capacity 1) whenever Finished
	// has something new, and closed when the node is gone for good.
	Ready() <-chan struct{}

	GetEnv(ctx context.Context, key string) (string, bool, error)
	SetEnv(ctx context.Context, key, value string) error
	BindPorts(ctx context.Context, udp bool, n int) ([]int, error)
	ReleasePorts(ctx context.Context, udp bool, ports []int) error
	SetLogLevel(ctx context.Context, level string) error

	// Close stops every process and releases the node.
	Close() error
}
