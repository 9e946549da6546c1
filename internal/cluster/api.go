// Package cluster is the library form of drover's AgentManager: the
// operations `drover serve` offers (start, poll, stop, kill, purge, send,
// logs, finished, cancel-all, env, ports, log level, submit, jobs) over the
// nodes of a running manager, in plain Go. The gRPC control service and the
// CLI verbs are adapters over the API interface; nothing here knows about
// the wire.
package cluster

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// NodeInfo describes one node for `drover nodes`.
type NodeInfo struct {
	Name          string             `json:"name"`
	State         string             `json:"state"` // up, busy, lost, error
	Error         string             `json:"error,omitempty"`
	Resources     topology.Resources `json:"resources"`
	BusyHWThreads []int              `json:"busy_hwthreads"`
	BusyGPUs      []string           `json:"busy_gpus"` // ids of the reserved GPUs
	Processes     int                `json:"processes"`
	// Restarts counts the times its agent was launched again after the
	// node was lost; LastReason is why it was last lost, or why its last
	// relaunch failed.
	Restarts   int           `json:"restarts"`
	LastReason string        `json:"last_reason,omitempty"`
	RTT        time.Duration `json:"rtt_ns,omitempty"` // last heartbeat round trip
}

// MaxNameLen bounds a process name: it is a file name on the nodes, and
// with ".stdout" after it (a default output file) still within the 255
// bytes of a file name.
const MaxNameLen = 255 - len(".stdout")

// CheckName refuses a process name that is not made of letters, digits and
// "_.-" (the job-file rule) or "[]" (MUSCLE3's instance names: macro[3],
// micro[1][2]); that starts with "-" (it would read as a flag); that is "."
// or ".."; or that is longer than MaxNameLen. Names go into file names,
// directory names and one-line reports (drover poll, drover finished), so
// nothing else (no space, slash or control character) is let in. The
// error wraps errdefs.ErrInvalid and quotes the name.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty process name", errdefs.ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: process name longer than %d bytes", errdefs.ErrInvalid, MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: process name %q", errdefs.ErrInvalid, name)
	case name[0] == '-':
		return fmt.Errorf("%w: process name %q starts with -", errdefs.ErrInvalid, name)
	}
	for _, r := range name {
		if !nameRune(r) {
			return fmt.Errorf("%w: process name %q has %q: use letters, digits and _ . - [ ]", errdefs.ErrInvalid, name, r)
		}
	}
	return nil
}

func nameRune(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' ||
		r == '_' || r == '.' || r == '-' || r == '[' || r == ']'
}

// StartRequest is `drover start`.
type StartRequest struct {
	Node  string
	Spec  node.ProcessSpec // Name, Args, Env, Dir, Stdout, Stderr used
	Cores int              // reserve and bind this many whole cores; 0 = unbound, none reserved
	// HWThreads binds to exactly these logical CPUs, reserving the cores
	// that hold them (instead of Cores).
	HWThreads []int
	// Group is the program's group: Finished, Poll and CancelAll given
	// a group see only its processes.
	Group string
	// GPUs reserves this many whole GPUs of the node, exported to the
	// process (topology.GPUEnv).
	GPUs int
	// Program, when set, is what Spec.Args[0] runs (node.Program): in
	// place on a node that shares this machine's file system, else a copy
	// staged into the work dir.
	Program *node.Program
}

// FinishedRequest asks for exits of processes started with Start.
type FinishedRequest struct {
	// Reader names the caller for hand-out and acknowledgement; "" takes
	// exits at most once (what is handed out is gone).
	Reader string
	Group  string
	// Ack acknowledges exits handed to Reader before.
	Ack []uint64
	// Wait: when there is none, wait up to this long for one.
	Wait time.Duration
}

// Receipt is an exit handed out by Finished, with its sequence number.
type Receipt struct {
	Seq   uint64
	Group string
	Exit  node.Exit
}

// StartResult tells where a process runs.
type StartResult struct {
	Node      string
	PID       int
	HWThreads []int
	GPUs      []string // ids of the GPUs reserved for it
}

// JobInfo is one submitted instance, for `drover jobs`.
type JobInfo struct {
	Submission int    `json:"submission"`
	Instance   string `json:"instance"`
	// Process is the instance's cluster-wide process name, "N.INSTANCE",
	// which poll, logs, stop and the other verbs take.
	Process  string `json:"process"`
	State    string `json:"state"` // pending, running, succeeded, failed, lost, cancelled
	Node     string `json:"node,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	OutDir   string `json:"out_dir,omitempty"`
}

// API is what `drover serve` offers. Process names are unique across the
// cluster, so verbs other than start need no node. Errors wrap typed core
// errors (errdefs.ErrUnknownNode, errdefs.ErrUnknownProcess, ...) so adapters can map
// them to statuses.
type API interface {
	Nodes(ctx context.Context) ([]NodeInfo, error)
	Start(ctx context.Context, req StartRequest) (StartResult, error)
	// Poll reports the named processes, or all known ones (of the group,
	// when group is not empty). A name it does not know is reported as
	// node.Unknown.
	Poll(ctx context.Context, group string, names []string) ([]node.Status, error)
	Stop(ctx context.Context, name string, grace time.Duration) error
	Kill(ctx context.Context, name string) error
	Purge(ctx context.Context, name string) error
	Send(ctx context.Context, name string, data []byte) error
	// CloseStdin closes a process's stdin: it reads end of input.
	CloseStdin(ctx context.Context, name string) error
	// Logs streams a process's stdout (or stderr) from the start; with
	// follow it keeps streaming until the process has exited and all its
	// output is sent, or ctx ends.
	Logs(ctx context.Context, name string, stderr, follow bool, w io.Writer) error
	// Finished hands out the exits of processes started with Start in
	// the request's group: those never handed out, those handed to this
	// reader and not acknowledged, and those whose visibility timeout has
	// passed. Each stays until its reader acknowledges it (Ack, or the
	// reader's next Finished). When there is none it waits up to
	// req.Wait for one (0: it does not wait).
	Finished(ctx context.Context, req FinishedRequest) ([]Receipt, error)
	// WatchFinished calls send with exits of the group as they come, with
	// the same hand-out as Finished (acknowledged with Ack), until ctx
	// ends or send fails. Exits it handed out and that were not
	// acknowledged when it returns are visible to every reader again.
	WatchFinished(ctx context.Context, reader, group string, send func([]Receipt) error) error
	// Ack acknowledges exits handed to reader; others are ignored.
	Ack(ctx context.Context, reader string, seqs []uint64) error
	// CancelAll stops the processes of group, or all when group is "".
	CancelAll(ctx context.Context, group string, grace time.Duration) error
	GetEnv(ctx context.Context, nodeName, key string) (string, bool, error)
	SetEnv(ctx context.Context, nodeName, key, value string) error
	BindPorts(ctx context.Context, nodeName string, udp bool, n int) ([]int, error)
	ReleasePorts(ctx context.Context, nodeName string, udp bool, ports []int) error
	SetLogLevel(ctx context.Context, nodeName, level string) error
	// Submit queues a job file's jobs; they run on free cores beside the
	// processes started with Start. It returns the instance names as the
	// verbs know them: "N.INSTANCE" for submission N.
	Submit(ctx context.Context, file *jobfile.File) ([]string, error)
	Jobs(ctx context.Context) ([]JobInfo, error)
	// Shutdown stops everything; agents exit; then the manager exits.
	Shutdown(ctx context.Context) error
}
