package filexfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/privdir"
)

// Space is an agent's private file space: the content cache that Put
// fills and the spools of results. It is made on first use under scratch
// (os.TempDir() when "") and removed by Remove. Safe for concurrent use.
type Space struct {
	scratch string

	mu     sync.Mutex
	dir    string              // "" until needed
	spools map[string][]*Spool // by process name, in start order
}

// NewSpace makes a Space under scratch.
func NewSpace(scratch string) *Space {
	return &Space{scratch: scratch, spools: make(map[string][]*Spool)}
}

func (s *Space) root() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		return s.dir, nil
	}
	scratch := s.scratch
	if scratch == "" {
		scratch = os.TempDir() // the dir made below is private there
	} else if _, err := privdir.Ensure(scratch, false); err != nil {
		return "", err
	}
	d, err := os.MkdirTemp(scratch, "drover-files-")
	if err != nil {
		return "", err
	}
	for _, sub := range []string{"cache", "results"} {
		if err := os.Mkdir(filepath.Join(d, sub), 0o700); err != nil {
			os.RemoveAll(d)
			return "", err
		}
	}
	s.dir = d
	return d, nil
}

// Remove removes the space and all it holds.
func (s *Space) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		return nil
	}
	err := os.RemoveAll(s.dir)
	s.dir = ""
	return err
}

// Put writes one chunk into the content cache; the last one checks size
// and hash and makes the content available. A chunk may come again.
func (s *Space) Put(p Put) error {
	if p.Offset < 0 {
		return fmt.Errorf("%w: put file: negative offset", errdefs.ErrInvalid)
	}
	d, err := s.root()
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	final := filepath.Join(d, "cache", hex.EncodeToString(p.Sum[:]))
	if _, err := os.Stat(final); err == nil {
		return nil // already here (a repeat)
	}
	part := final + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	_, err = f.WriteAt(p.Data, p.Offset)
	if err == nil && p.Last {
		err = f.Truncate(p.Size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	if !p.Last {
		return nil
	}
	info, err := os.Stat(part)
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	got, err := hashFile(context.Background(), part, info)
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	if got != p.Sum {
		os.Remove(part)
		return fmt.Errorf("put file: the content arrived with SHA-256 %x, not %x (did the file change while it was sent?)", got[:8], p.Sum[:8])
	}
	if err := os.Rename(part, final); err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	return nil
}

// Prepare rewrites a start's spec for this machine: the files staged by
// content (sums[i] is the SHA-256 of spec.Files[i], nil when it is not
// staged by content) come from the cache, and with res the results go to
// a new spool (returned; nil without res).
func (s *Space) Prepare(spec *node.ProcessSpec, sums [][]byte, res *ResultsSpec) (*Spool, error) {
	for i, sum := range sums {
		if len(sum) == 0 || i >= len(spec.Files) {
			continue
		}
		f := &spec.Files[i]
		if len(sum) != sha256.Size {
			return nil, fmt.Errorf("%w: stage %s: bad hash", errdefs.ErrInvalid, f.Dst)
		}
		d, err := s.root()
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", f.Dst, err)
		}
		p := filepath.Join(d, "cache", hex.EncodeToString(sum))
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("stage %s: its content (SHA-256 %x) never reached this agent", f.Dst, sum[:8])
		}
		f.Src = p
	}
	if res == nil {
		return nil, nil
	}
	d, err := s.root()
	if err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	sp := &Spool{id: res.ID, dir: filepath.Join(d, "results", strconv.FormatUint(res.ID, 10))}
	if err := os.Mkdir(sp.dir, 0o700); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	spec.Stdout, spec.Stderr, spec.OutputDir = "", "", ""
	if res.Stdout || res.StderrIsStdout {
		spec.Stdout, sp.stdout = filepath.Join(sp.dir, "stdout"), true
	}
	switch {
	case res.StderrIsStdout:
		spec.Stderr = spec.Stdout
	case res.Stderr:
		spec.Stderr, sp.stderr = filepath.Join(sp.dir, "stderr"), true
	}
	if res.Outputs {
		spec.OutputDir, sp.outputs = filepath.Join(sp.dir, "out"), true
	} else {
		spec.Outputs = nil
	}
	s.mu.Lock()
	s.spools[spec.Name] = append(s.spools[spec.Name], sp)
	s.mu.Unlock()
	return sp, nil
}

// Abandon forgets the spool of a start that failed.
func (s *Space) Abandon(name string, sp *Spool) {
	s.mu.Lock()
	q := s.spools[name]
	for i := range q {
		if q[i] == sp {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(s.spools, name)
	} else {
		s.spools[name] = q
	}
	s.mu.Unlock()
	sp.Remove()
}

// Take returns the spool of the exited process name, if it has one.
func (s *Space) Take(name string) *Spool {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.spools[name]
	if len(q) == 0 {
		return nil
	}
	sp := q[0]
	if len(q) == 1 {
		delete(s.spools, name)
	} else {
		s.spools[name] = q[1:]
	}
	return sp
}

// Spool holds the results of one process until the manager has them.
type Spool struct {
	id             uint64
	dir            string
	stdout, stderr bool
	outputs        bool
}

// ID is the ResultsSpec.ID the spool was made for.
func (sp *Spool) ID() uint64 { return sp.id }

// Remove removes the spool (the manager has its results).
func (sp *Spool) Remove() error { return os.RemoveAll(sp.dir) }

// shipFile is one result file to send.
type shipFile struct {
	kind Kind
	rel  string // outputs: slash-separated, relative to the output dir
	path string
	mode fs.FileMode
}

// Sender reads the spool's results a chunk at a time. The error, if any,
// says which outputs could not be listed; the Sender sends the others.
func (sp *Spool) Sender() (*Sender, error) {
	s := &Sender{id: sp.id}
	if sp.stdout {
		s.files = append(s.files, shipFile{kind: Stdout, path: filepath.Join(sp.dir, "stdout")})
	}
	if sp.stderr {
		s.files = append(s.files, shipFile{kind: Stderr, path: filepath.Join(sp.dir, "stderr")})
	}
	if !sp.outputs {
		return s, nil
	}
	out := filepath.Join(sp.dir, "out")
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == out && errors.Is(err, fs.ErrNotExist) {
				return nil // nothing matched
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(out, p)
		if err != nil {
			return err
		}
		s.files = append(s.files, shipFile{kind: Output, rel: filepath.ToSlash(rel), path: p, mode: info.Mode().Perm()})
		return nil
	})
	return s, err
}

// Sender is the results of one process on their way out, file after
// file, a chunk at a time. It is not safe for concurrent use.
type Sender struct {
	id     uint64
	files  []shipFile
	failed map[string]bool // files that could not be read (reported once)

	file      int // the cursor
	off, size int64
	f         *os.File
}

// Done tells whether every file has been sent (or skipped).
func (s *Sender) Done() bool { return s.file >= len(s.files) }

// Reset makes the Sender start over from the first file (a new stream).
func (s *Sender) Reset() {
	s.closeFile()
	s.file = 0
}

func (s *Sender) closeFile() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.off, s.size = 0, 0
}

// Next reads the next chunk and advances. A file that cannot be read is
// skipped (the manager counts it incomplete): Next returns a nil chunk
// and, the first time that file fails, an error naming it.
func (s *Sender) Next() (*Result, error) {
	sf := s.files[s.file]
	fail := func(err error) (*Result, error) {
		s.closeFile()
		s.file++
		if s.failed[sf.path] {
			return nil, nil
		}
		if s.failed == nil {
			s.failed = map[string]bool{}
		}
		s.failed[sf.path] = true
		name := sf.rel
		if name == "" {
			name = sf.kind.String()
		}
		return nil, fmt.Errorf("result %s not sent: %w", name, err)
	}
	if s.f == nil {
		f, err := os.Open(sf.path)
		if err != nil {
			return fail(err)
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return fail(err)
		}
		s.f, s.off, s.size = f, 0, info.Size()
	}
	buf := make([]byte, min(int64(ChunkSize), s.size-s.off))
	if _, err := s.f.ReadAt(buf, s.off); err != nil {
		return fail(err)
	}
	c := &Result{ID: s.id, Kind: sf.kind, Path: sf.rel, Offset: s.off, Data: buf, Mode: sf.mode}
	s.off += int64(len(buf))
	if s.off >= s.size {
		c.Last = true
		s.closeFile()
		s.file++
	}
	return c, nil
}
