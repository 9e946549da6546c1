// Package filexfer moves files between a manager and an agent that do not
// share a filesystem, as a stream of chunks; the session that carries the
// chunks (internal/wire, over gRPC) only converts and forwards them.
//
// Stage in: the manager hashes each staged file (SHA-256, cached by path,
// size and modification time) and, unless the node already has that
// content, sends it in Put chunks into the agent's content cache before
// the start, whose spec then names the content by hash (Stager, Space.Put,
// Space.Prepare). One content crosses once per node, also for concurrent
// starts (single-flight per node and hash).
//
// Results back: the start asks the agent (ResultsSpec) to write stdout,
// stderr and outputs into a spool in its own scratch space; after the exit
// the agent sends them as Result chunks ahead of the exit report (Spool,
// Sender), and the manager writes them to the spec's Stdout, Stderr and
// OutputDir (Receiver) before it delivers the exit.
package filexfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/stagefile"
)

// ChunkSize is the data of one chunk.
const ChunkSize = 256 << 10

// Digest is the SHA-256 of a content.
type Digest = [sha256.Size]byte

// Put is one chunk of a content for the agent's cache. The last one
// carries the size; the agent then checks the hash and keeps the content.
type Put struct {
	Sum    Digest
	Offset int64
	Data   []byte
	Last   bool
	Size   int64 // with Last
}

// StagedFile is a staged file named by its content.
type StagedFile struct {
	Dst  string // relative to the work dir
	Sum  Digest
	Mode fs.FileMode
}

// ResultsSpec is what the agent keeps of a process for the manager.
type ResultsSpec struct {
	ID             uint64
	Stdout, Stderr bool
	StderrIsStdout bool
	Outputs        bool // its outputs (ProcessSpec.Outputs)
}

// Kind is which result a chunk belongs to.
type Kind int

const (
	Stdout Kind = iota + 1
	Stderr
	Output
)

func (k Kind) String() string {
	switch k {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	case Output:
		return "output"
	}
	return "unknown kind"
}

// Result is one chunk of a process's results on its way back.
type Result struct {
	ID     uint64 // ResultsSpec.ID
	Kind   Kind
	Path   string // Output: slash-separated, relative to the output dir
	Offset int64
	Data   []byte
	Mode   fs.FileMode // Output
	Last   bool        // the file ends with this chunk
}

// flight is one piece of work others may wait for.
type flight struct {
	done chan struct{}
	sum  Digest
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

func (h *hashCache) sum(ctx context.Context, p string, info fs.FileInfo) (Digest, error) {
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
			return Digest{}, context.Cause(ctx)
		}
	}
}

// hashFile hashes the regular file p, which must still be as in info, a
// chunk at a time until ctx ends.
func hashFile(ctx context.Context, p string, info fs.FileInfo) (Digest, error) {
	f, now, err := stagefile.Open(p)
	if err != nil {
		return Digest{}, err
	}
	defer f.Close()
	if !os.SameFile(info, now) || now.Size() != info.Size() || !now.ModTime().Equal(info.ModTime()) {
		return Digest{}, stagefile.ErrChanged
	}
	h := sha256.New()
	buf := make([]byte, ChunkSize)
	for off := int64(0); off < info.Size(); {
		if ctx.Err() != nil {
			return Digest{}, context.Cause(ctx)
		}
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), info.Size()-off)])
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Digest{}, stagefile.ErrChanged
		}
		if err != nil {
			return Digest{}, err
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	var d Digest
	h.Sum(d[:0])
	return d, nil
}
