package wire

// Files for agents that do not share the manager's filesystem.
//
// Stage in: the manager hashes each staged file (SHA-256, cached by path,
// size and modification time) and, unless the node already has that
// content, sends it in PutFile chunks into the agent's content cache before
// the Start, whose spec then names the content by hash. One content crosses
// once per node, also for concurrent Starts (single-flight per node and
// hash).
//
// Results back: the Start asks the agent (ProcessSpec.results) to write
// stdout, stderr and outputs into its own scratch space; after the exit the
// agent sends them as FileData chunks ahead of the exit report, and the
// RemoteNode writes them to the spec's Stdout, Stderr and OutputDir before
// it delivers the exit.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/stagefile"
)

const (
	// fileChunk is the data of one PutFile or FileData.
	fileChunk = 256 << 10
	// putWindow bounds the PutFile chunks in flight to one node (their
	// data is held until answered): putWindow*fileChunk bytes; and
	// putWindowAll those to all nodes of a Server.
	putWindow    = 16
	putWindowAll = 64
)

type digest = [sha256.Size]byte

// flight is one piece of work others may wait for.
type flight struct {
	done chan struct{}
	sum  digest
	err  error
	// cancelled: the work stopped for its doer's context, not for a
	// reason the others share.
	cancelled bool
}

// hashCache remembers the SHA-256 of files by path, size and mtime, and
// hashes each version of a file once even when many ask at the same time.
type hashCache struct {
	mu sync.Mutex
	m  map[hashKey]*flight
}

type hashKey struct {
	path  string
	size  int64
	mtime time.Time
}

// maxHashEntries bounds the cache; past it, it starts over.
const maxHashEntries = 1 << 16

func (h *hashCache) sum(ctx context.Context, p string, info fs.FileInfo) (digest, error) {
	k := hashKey{p, info.Size(), info.ModTime()}
	for {
		h.mu.Lock()
		if h.m == nil || len(h.m) >= maxHashEntries {
			h.m = make(map[hashKey]*flight)
		}
		f := h.m[k]
		leader := f == nil
		if leader {
			f = &flight{done: make(chan struct{})}
			h.m[k] = f
		}
		h.mu.Unlock()
		if leader {
			f.sum, f.err = hashFile(ctx, p, info)
			f.cancelled = ctx.Err() != nil
			if f.err != nil {
				h.mu.Lock()
				if h.m[k] == f {
					delete(h.m, k)
				}
				h.mu.Unlock()
			}
			close(f.done)
			return f.sum, f.err
		}
		select {
		case <-f.done:
			if !f.cancelled {
				return f.sum, f.err
			}
			// The hasher was stopped for its own reason: hash ourselves.
		case <-ctx.Done():
			return digest{}, context.Cause(ctx)
		}
	}
}

// hashFile hashes the regular file p, which must still be as in info, a
// chunk at a time until ctx ends.
func hashFile(ctx context.Context, p string, info fs.FileInfo) (digest, error) {
	f, now, err := stagefile.Open(p)
	if err != nil {
		return digest{}, err
	}
	defer f.Close()
	if !os.SameFile(info, now) || now.Size() != info.Size() || !now.ModTime().Equal(info.ModTime()) {
		return digest{}, stagefile.ErrChanged
	}
	h := sha256.New()
	buf := make([]byte, fileChunk)
	for off := int64(0); off < info.Size(); {
		if ctx.Err() != nil {
			return digest{}, context.Cause(ctx)
		}
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), info.Size()-off)])
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return digest{}, stagefile.ErrChanged
		}
		if err != nil {
			return digest{}, err
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	var d digest
	h.Sum(d[:0])
	return d, nil
}

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

// remoteSpec turns a spec for this remote node into its wire form: staged
// files by content (sent first where the node lacks them), results kept by
// the agent and sent back. It registers where the results go.
func (n *RemoteNode) remoteSpec(ctx context.Context, spec node.ProcessSpec) (*droverpb.ProcessSpec, uint64, error) {
	pb := specToPB(spec)
	pb.Files = nil
	for _, f := range spec.Files {
		sf, err := n.stage(ctx, f)
		if err != nil {
			return nil, 0, err
		}
		pb.Files = append(pb.Files, sf)
	}
	// The output files are created (or truncated) now, as an agent would
	// at its start: an unwritable path fails the start, not the results.
	for _, p := range uniq(spec.Stdout, spec.Stderr) {
		f, err := nofollow.OpenPath(spec.OutputDir, p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, 0, err
		}
		f.Close()
	}
	t := &resultsTarget{stdout: spec.Stdout, stderr: spec.Stderr, outDir: spec.OutputDir, open: map[string]*os.File{}, failed: map[string]bool{}}
	if spec.Stderr == spec.Stdout {
		t.stderr = ""
	}
	n.fmu.Lock()
	n.nextResults++
	id := n.nextResults
	n.results[id] = t
	n.fmu.Unlock()
	pb.Stdout, pb.Stderr, pb.OutputDir = "", "", ""
	pb.Results = &droverpb.ResultsSpec{
		Id:             id,
		Stdout:         spec.Stdout != "",
		Stderr:         spec.Stderr != "" && spec.Stderr != spec.Stdout,
		StderrIsStdout: spec.Stderr != "" && spec.Stderr == spec.Stdout,
		Outputs:        len(spec.Outputs) > 0 && spec.OutputDir != "",
	}
	return pb, id, nil
}

func uniq(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if p != "" && (len(out) == 0 || out[len(out)-1] != p) {
			out = append(out, p)
		}
	}
	return out
}

// dropResults forgets a results target (its start failed).
func (n *RemoteNode) dropResults(id uint64) {
	n.fmu.Lock()
	defer n.fmu.Unlock()
	if t := n.results[id]; t != nil {
		t.close()
		delete(n.results, id)
	}
}

// stage makes sure the node has the content of f and returns its wire form.
func (n *RemoteNode) stage(ctx context.Context, f node.StageFile) (*droverpb.StageFile, error) {
	if !filepath.IsLocal(f.Dst) {
		return nil, fmt.Errorf("stage %s: destination %q leaves the work dir", f.Src, f.Dst)
	}
	info, err := stagefile.Check(f.Src)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	sum, err := n.srv.hashes.sum(ctx, f.Src, info)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	if err := n.ensure(ctx, sum, f.Src); err != nil {
		return nil, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	mode := f.Mode.Perm()
	if mode == 0 {
		mode = info.Mode().Perm()
	}
	return &droverpb.StageFile{Dst: f.Dst, Sha256: sum[:], Mode: uint32(mode)}, nil
}

// ensure sends the content sum (read from p) to the node unless it has it
// or is being sent it.
func (n *RemoteNode) ensure(ctx context.Context, sum digest, p string) error {
	for {
		n.fmu.Lock()
		f := n.have[sum]
		leader := f == nil
		if leader {
			f = &flight{done: make(chan struct{})}
			n.have[sum] = f
		}
		n.fmu.Unlock()
		if leader {
			f.err = n.putFile(ctx, sum, p)
			if f.err != nil {
				n.fmu.Lock()
				delete(n.have, sum)
				n.fmu.Unlock()
			}
			close(f.done)
			return f.err
		}
		select {
		case <-f.done:
			if f.err == nil {
				return nil
			}
			// The sender failed, maybe for its own reason (its context):
			// try ourselves.
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// putFile sends the content of p in PutFile chunks, several in flight; the
// last one, which makes the agent check and keep the content, goes once
// every other chunk is answered.
func (n *RemoteNode) putFile(ctx context.Context, sum digest, p string) error {
	f, info, err := stagefile.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	size := info.Size()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		emu   sync.Mutex
		first error
	)
	fail := func(err error) {
		emu.Lock()
		if first == nil {
			first = err
		}
		emu.Unlock()
		cancel()
	}
	// A window slot is taken before a chunk is read, so that at most
	// putWindow chunks of this node are in memory, whatever the file size.
	acquire := func() bool {
		select {
		case n.putSem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		select {
		case n.srv.putSem <- struct{}{}:
			return true
		case <-ctx.Done():
			<-n.putSem
			return false
		}
	}
	send := func(off int64, last bool) error {
		defer func() { <-n.srv.putSem; <-n.putSem }()
		buf := make([]byte, min(int64(fileChunk), size-off))
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		put := &droverpb.PutFile{Sha256: sum[:], Offset: off, Data: buf, Last: last}
		if last {
			put.Size = size
		}
		n.putChunks.Add(1)
		_, err := n.call(ctx, "put file", &droverpb.Command{Op: &droverpb.Command_PutFile{PutFile: put}})
		return err
	}
	lastOff := int64(0)
	if size > 0 {
		lastOff = (size - 1) / fileChunk * fileChunk
	}
	for off := int64(0); off < lastOff && acquire(); off += fileChunk {
		wg.Add(1)
		go func(off int64) {
			defer wg.Done()
			if err := send(off, false); err != nil {
				fail(err)
			}
		}(off)
	}
	wg.Wait()
	if first != nil {
		return first
	}
	if !acquire() {
		return ctx.Err()
	}
	return send(lastOff, true)
}

// resultsTarget is where one process's results go on this machine.
type resultsTarget struct {
	stdout, stderr, outDir string
	madeDir                bool // outDir exists
	open                   map[string]*os.File
	failed                 map[string]bool
	errs                   []string
}

func (t *resultsTarget) close() {
	for k, f := range t.open {
		f.Close()
		delete(t.open, k)
	}
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
	n.fmu.Lock()
	defer n.fmu.Unlock()
	for _, fd := range m.GetFiles() {
		if fd.GetSeq() <= lastSeq {
			continue // its exit was delivered: a repeat after a reconnect
		}
		t := n.results[fd.GetResultsId()]
		if t == nil {
			continue
		}
		t.write(fd)
	}
	var errs map[uint64]string
	for _, x := range m.GetExits() {
		if x.GetSeq() <= lastSeq || x.GetResultsId() == 0 {
			continue
		}
		t := n.results[x.GetResultsId()]
		if t == nil {
			continue
		}
		for k := range t.open {
			// Not ended with a last chunk: the agent could not read it all.
			t.errs = append(t.errs, fmt.Sprintf("%s: incomplete", k))
		}
		t.close()
		delete(n.results, x.GetResultsId())
		if len(t.errs) > 0 {
			if errs == nil {
				errs = make(map[uint64]string)
			}
			errs[x.GetSeq()] = "results not kept: " + strings.Join(t.errs, "; ")
		}
	}
	return errs
}

// write applies one chunk; a file that fails is skipped from then on and
// named in the exit's error.
func (t *resultsTarget) write(fd *droverpb.FileData) {
	var key string
	switch fd.GetKind() {
	case droverpb.FileKind_FILE_KIND_STDOUT:
		key = "stdout"
	case droverpb.FileKind_FILE_KIND_STDERR:
		key = "stderr"
	case droverpb.FileKind_FILE_KIND_OUTPUT:
		key = "output " + fd.GetPath()
	default:
		key = "unknown kind " + fd.GetKind().String()
	}
	if t.failed[key] {
		return
	}
	err := t.writeChunk(key, fd)
	if err != nil {
		t.failed[key] = true
		if f := t.open[key]; f != nil {
			f.Close()
			delete(t.open, key)
		}
		t.errs = append(t.errs, fmt.Sprintf("%s: %v", key, err))
	}
}

func (t *resultsTarget) writeChunk(key string, fd *droverpb.FileData) error {
	f := t.open[key]
	if f == nil {
		var err error
		if f, err = t.openFile(fd); err != nil {
			return err
		}
		t.open[key] = f
	}
	if fd.GetOffset() < 0 {
		return errors.New("negative offset")
	}
	if _, err := f.WriteAt(fd.GetData(), fd.GetOffset()); err != nil {
		return err
	}
	if fd.GetLast() {
		delete(t.open, key)
		err := f.Truncate(fd.GetOffset() + int64(len(fd.GetData())))
		return errors.Join(err, f.Close())
	}
	return nil
}

func (t *resultsTarget) openFile(fd *droverpb.FileData) (*os.File, error) {
	var p string
	switch fd.GetKind() {
	case droverpb.FileKind_FILE_KIND_STDOUT:
		p = t.stdout
	case droverpb.FileKind_FILE_KIND_STDERR:
		p = t.stderr
	case droverpb.FileKind_FILE_KIND_OUTPUT:
		return t.openOutput(fd.GetPath(), fs.FileMode(fd.GetMode()).Perm())
	}
	if p == "" {
		return nil, errors.New("not asked for")
	}
	return nofollow.OpenPath(t.outDir, p, os.O_WRONLY|os.O_CREATE, 0o644)
}

// openOutput opens OutputDir/rel: a path from the agent cannot leave
// OutputDir, by "..", an absolute path or any symlink, nor land on
// drover's own captured output there.
func (t *resultsTarget) openOutput(rel string, mode fs.FileMode) (*os.File, error) {
	if t.outDir == "" {
		return nil, errors.New("not asked for")
	}
	if !fs.ValidPath(rel) || rel == "." || !filepath.IsLocal(filepath.FromSlash(rel)) {
		return nil, fmt.Errorf("the agent's path %q leaves the output dir", rel)
	}
	if results.OwnName(rel) {
		return nil, results.ErrOwnName
	}
	if !t.madeDir {
		if err := os.MkdirAll(t.outDir, 0o755); err != nil {
			return nil, err
		}
		t.madeDir = true
	}
	name := filepath.FromSlash(rel)
	if err := nofollow.MkdirAll(t.outDir, filepath.Dir(name), 0o755); err != nil {
		return nil, err
	}
	if mode == 0 {
		mode = 0o644
	}
	return nofollow.OpenFile(t.outDir, name, os.O_WRONLY|os.O_CREATE, mode)
}
