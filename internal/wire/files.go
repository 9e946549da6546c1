package wire

// Files for agents that do not share the manager's filesystem: the
// manager's side of the session's file transfer (internal/filexfer does
// the work; this adapts it to the session's messages).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/filexfer"
	"github.com/drover-hpc/drover/internal/node"
)

// errStageCancelled ends the staging of a start by CancelAll or Shutdown.
var errStageCancelled = errors.New("cancelled before it started")

// stagingContext is ctx, ended too by CancelAll, Shutdown, the node's loss
// and, when timeout > 0, after timeout; its cause says which.
func (n *RemoteNode) stagingContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	n.mu.Lock()
	stop := n.stageStop
	n.mu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-stop:
			cancel(errStageCancelled)
		case <-n.gone:
			cancel(n.Err())
		case <-ctx.Done():
		}
	}()
	if timeout <= 0 {
		return ctx, func() { cancel(nil) }
	}
	tctx, cancelT := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w (%v)", errdefs.ErrStageTimeout, timeout))
	return tctx, func() { cancelT(); cancel(nil) }
}

// stopStaging ends the stagings in flight.
func (n *RemoteNode) stopStaging() {
	n.mu.Lock()
	close(n.stageStop)
	n.stageStop = make(chan struct{})
	n.mu.Unlock()
}

// putChunk sends one chunk of staged content as a PutFile command.
func (n *RemoteNode) putChunk(ctx context.Context, p filexfer.Put) error {
	_, err := n.call(ctx, "put file", &droverpb.Command{Op: &droverpb.Command_PutFile{PutFile: putToPB(p)}})
	return err
}

// remoteSpec turns a spec for this remote node into its wire form: staged
// files by content (sent first where the node lacks them), results kept by
// the agent and sent back. It registers where the results go.
func (n *RemoteNode) remoteSpec(ctx context.Context, spec node.ProcessSpec) (*droverpb.ProcessSpec, uint64, error) {
	pb := specToPB(spec)
	pb.Files = nil
	for _, f := range spec.Files {
		sf, err := n.stager.Stage(ctx, f)
		if err != nil {
			return nil, 0, err
		}
		pb.Files = append(pb.Files, &droverpb.StageFile{Dst: sf.Dst, Sha256: sf.Sum[:], Mode: uint32(sf.Mode)})
	}
	rs, err := n.recv.Expect(spec)
	if err != nil {
		return nil, 0, err
	}
	pb.Stdout, pb.Stderr, pb.OutputDir = "", "", ""
	pb.Results = &droverpb.ResultsSpec{Id: rs.ID, Stdout: rs.Stdout, Stderr: rs.Stderr, StderrIsStdout: rs.StderrIsStdout, Outputs: rs.Outputs}
	return pb, rs.ID, nil
}

// receiveFiles writes a message's FileData, then finishes the results of
// its exits; it returns the error text of each exit (by seq) whose results
// could not all be written. Called by the receiver before handle, so that
// an exit is delivered only after its files are in place.
func (n *RemoteNode) receiveFiles(att *attachment, m *droverpb.AgentMsg) map[uint64]string {
	if len(m.GetFiles()) == 0 && len(m.GetExits()) == 0 {
		return nil
	}
	n.mu.Lock()
	current, lastSeq := n.att == att && !n.lost, n.lastSeq
	n.mu.Unlock()
	if !current {
		return nil
	}
	for _, fd := range m.GetFiles() {
		if fd.GetSeq() <= lastSeq {
			continue // its exit was delivered: a repeat after a reconnect
		}
		n.recv.Write(resultFromPB(fd))
	}
	var errs map[uint64]string
	for _, x := range m.GetExits() {
		if x.GetSeq() <= lastSeq || x.GetResultsId() == 0 {
			continue
		}
		if msg := n.recv.Finish(x.GetResultsId()); msg != "" {
			if errs == nil {
				errs = make(map[uint64]string)
			}
			errs[x.GetSeq()] = msg
		}
	}
	return errs
}
