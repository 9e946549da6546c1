package wire

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/filexfer"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/pbconv"
)

// Message sizes. gRPC refuses messages over 4 MiB by default; a batch is
// closed once it passes maxBatchBytes, so with one item of at most
// MaxSendBytes and a little more it always fits.
const (
	// MaxSendBytes is the most data one Send over the wire carries.
	MaxSendBytes  = 1 << 20
	maxBatchBytes = 1 << 20
)

// Errors of this package besides the errdefs kinds (NodeLost: the node's
// agent was silent for NodeTimeout, its session was closed, or the server
// was closed; every call still waiting for an answer, and every later
// call, fails with it. Invalid: the agent could not make sense of a
// command). Test with errors.Is.
var (
	// ErrMonitorTimeout: RunAgent heard nothing from the manager for the
	// monitor timeout and stopped every process.
	ErrMonitorTimeout = errors.New("no word from the manager within the monitor timeout")
	// ErrGivenUp: the manager had declared this agent's node lost; RunAgent
	// stopped every process.
	ErrGivenUp = errors.New("the manager gave this node up")
)

// remoteError is an error the agent answered a command with.
type remoteError struct{ error }

func (e *remoteError) Unwrap() error { return e.error }

// replyError turns a Reply's error back into a Go error (nil when none).
func replyError(r *droverpb.Reply) error {
	if err := pbconv.Error(r.GetError(), r.GetErrorDetail()); err != nil {
		return &remoteError{err}
	}
	return nil
}

func setError(r *droverpb.Reply, err error) {
	if err != nil {
		r.Error, r.ErrorDetail = err.Error(), pbconv.Detail(err)
	}
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
		NoStdin:        s.NoStdin,
		MakeOutputDir:  s.MakeOutputDir,
		After:          s.After,
		AfterTimeoutMs: millis(s.AfterTimeout),
		StageTimeoutMs: millis(s.StageTimeout),
		MemoryMax:      s.MemoryMax,
	}
	for _, f := range s.Files {
		out.Files = append(out.Files, &droverpb.StageFile{Src: f.Src, Dst: f.Dst, Mode: uint32(f.Mode.Perm())})
	}
	return out
}

func specFromPB(s *droverpb.ProcessSpec) node.ProcessSpec {
	out := node.ProcessSpec{
		Name:          s.GetName(),
		Args:          s.GetArgs(),
		Env:           s.GetEnv(),
		Dir:           s.GetDir(),
		Stdout:        s.GetStdout(),
		Stderr:        s.GetStderr(),
		Outputs:       s.GetOutputs(),
		OutputDir:     s.GetOutputDir(),
		HWThreads:     droverpb.Ints(s.GetHwthreads()),
		PortNames:     s.GetPortNames(),
		AutoPurge:     s.GetAutoPurge(),
		NoStdin:       s.GetNoStdin(),
		MakeOutputDir: s.GetMakeOutputDir(),
		After:         s.GetAfter(),
		AfterTimeout:  fromMillis(s.GetAfterTimeoutMs()),
		StageTimeout:  fromMillis(s.GetStageTimeoutMs()),
		MemoryMax:     s.GetMemoryMax(),
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

func putToPB(p filexfer.Put) *droverpb.PutFile {
	return &droverpb.PutFile{Sha256: p.Sum[:], Offset: p.Offset, Data: p.Data, Last: p.Last, Size: p.Size}
}

func putFromPB(p *droverpb.PutFile) (filexfer.Put, error) {
	out := filexfer.Put{Offset: p.GetOffset(), Data: p.GetData(), Last: p.GetLast(), Size: p.GetSize()}
	if len(p.GetSha256()) != len(out.Sum) {
		return out, fmt.Errorf("%w: put file: bad hash", errdefs.ErrInvalid)
	}
	copy(out.Sum[:], p.GetSha256())
	return out, nil
}

// stageSums are the content hashes of a spec's staged files, by index.
func stageSums(s *droverpb.ProcessSpec) [][]byte {
	var sums [][]byte
	for i, f := range s.GetFiles() {
		if len(f.GetSha256()) > 0 {
			if sums == nil {
				sums = make([][]byte, len(s.GetFiles()))
			}
			sums[i] = f.GetSha256()
		}
	}
	return sums
}

func resultsSpecFromPB(r *droverpb.ResultsSpec) *filexfer.ResultsSpec {
	if r == nil {
		return nil
	}
	return &filexfer.ResultsSpec{ID: r.GetId(), Stdout: r.GetStdout(), Stderr: r.GetStderr(), StderrIsStdout: r.GetStderrIsStdout(), Outputs: r.GetOutputs()}
}

var kindToPB = map[filexfer.Kind]droverpb.FileKind{
	filexfer.Stdout: droverpb.FileKind_FILE_KIND_STDOUT,
	filexfer.Stderr: droverpb.FileKind_FILE_KIND_STDERR,
	filexfer.Output: droverpb.FileKind_FILE_KIND_OUTPUT,
}

func resultToPB(c *filexfer.Result, seq uint64) *droverpb.FileData {
	return &droverpb.FileData{ResultsId: c.ID, Seq: seq, Kind: kindToPB[c.Kind], Path: c.Path, Offset: c.Offset, Data: c.Data, Mode: uint32(c.Mode), Last: c.Last}
}

func resultFromPB(fd *droverpb.FileData) filexfer.Result {
	out := filexfer.Result{ID: fd.GetResultsId(), Path: fd.GetPath(), Offset: fd.GetOffset(), Data: fd.GetData(), Mode: fs.FileMode(fd.GetMode()), Last: fd.GetLast()}
	for k, pk := range kindToPB {
		if pk == fd.GetKind() {
			out.Kind = k
		}
	}
	return out
}
