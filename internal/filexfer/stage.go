package filexfer

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/stagefile"
)

const (
	// window bounds the Put chunks in flight to one node (their data is
	// held until answered): window*ChunkSize bytes; and windowAll those
	// to all nodes of a Pool.
	window    = 16
	windowAll = 64
)

// Pool is what the Stagers of one manager share: the hash cache and the
// bound on chunks in flight to all nodes.
type Pool struct {
	hashes hashCache
	sem    chan struct{}
}

// NewPool makes a Pool.
func NewPool() *Pool { return &Pool{sem: make(chan struct{}, windowAll)} }

// PutFunc sends one chunk to the node and returns once the node has
// answered it (an error: the node did not take it). It is called from
// several goroutines at once.
type PutFunc func(ctx context.Context, p Put) error

// Stager sends the content of staged files to one node, each content once.
type Stager struct {
	pool   *Pool
	put    PutFunc
	sem    chan struct{}
	chunks atomic.Int64

	mu   sync.Mutex
	have map[Digest]*flight // sent or being sent
}

// Stager makes the Stager of one node, whose chunks go by put.
func (p *Pool) Stager(put PutFunc) *Stager {
	return &Stager{pool: p, put: put, sem: make(chan struct{}, window), have: make(map[Digest]*flight)}
}

// Chunks is the number of chunks sent so far.
func (s *Stager) Chunks() int64 { return s.chunks.Load() }

// Stage makes sure the node has the content of f and names it by hash.
func (s *Stager) Stage(ctx context.Context, f node.StageFile) (StagedFile, error) {
	if !filepath.IsLocal(f.Dst) {
		return StagedFile{}, fmt.Errorf("stage %s: destination %q leaves the work dir", f.Src, f.Dst)
	}
	info, err := stagefile.Check(f.Src)
	if err != nil {
		return StagedFile{}, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	sum, err := s.pool.hashes.sum(ctx, f.Src, info)
	if err != nil {
		return StagedFile{}, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	if err := s.ensure(ctx, sum, f.Src); err != nil {
		return StagedFile{}, fmt.Errorf("stage %s: %w", f.Src, err)
	}
	mode := f.Mode.Perm()
	if mode == 0 {
		mode = info.Mode().Perm()
	}
	return StagedFile{Dst: f.Dst, Sum: sum, Mode: mode}, nil
}

// ensure sends the content sum (read from p) to the node unless it has it
// or is being sent it.
func (s *Stager) ensure(ctx context.Context, sum Digest, p string) error {
	for {
		s.mu.Lock()
		f := s.have[sum]
		leader := f == nil
		if leader {
			f = &flight{done: make(chan struct{})}
			s.have[sum] = f
		}
		s.mu.Unlock()
		if leader {
			f.err = s.send(ctx, sum, p)
			if f.err != nil {
				s.mu.Lock()
				delete(s.have, sum)
				s.mu.Unlock()
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

// send sends the content of p in chunks, several in flight; the last one,
// which makes the agent check and keep the content, goes once every other
// chunk is answered.
func (s *Stager) send(ctx context.Context, sum Digest, p string) error {
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
	// window chunks of this node are in memory, whatever the file size.
	acquire := func() bool {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		select {
		case s.pool.sem <- struct{}{}:
			return true
		case <-ctx.Done():
			<-s.sem
			return false
		}
	}
	put := func(off int64, last bool) error {
		defer func() { <-s.pool.sem; <-s.sem }()
		buf := make([]byte, min(int64(ChunkSize), size-off))
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		c := Put{Sum: sum, Offset: off, Data: buf, Last: last}
		if last {
			c.Size = size
		}
		s.chunks.Add(1)
		return s.put(ctx, c)
	}
	lastOff := int64(0)
	if size > 0 {
		lastOff = (size - 1) / ChunkSize * ChunkSize
	}
	for off := int64(0); off < lastOff && acquire(); off += ChunkSize {
		wg.Go(func() {
			if err := put(off, false); err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	if !acquire() {
		return ctx.Err()
	}
	return put(lastOff, true)
}
