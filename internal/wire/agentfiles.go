package wire

// The agent's side of files.go: a content cache for PutFile, and a spool
// per process whose results go back over the session.

import (
	"bytes"
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

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/privdir"
)

// agentFiles is the agent's private file space, made on first use under
// AgentOptions.Scratch and removed when RunAgent returns.
type agentFiles struct {
	scratch string

	mu     sync.Mutex
	dir    string              // "" until needed
	spools map[string][]*spool // by process name, in start order
}

// spool holds the results of one process until they are acknowledged.
type spool struct {
	id             uint64
	dir            string
	stdout, stderr bool
	outputs        bool
}

// shipFile is one result file to send.
type shipFile struct {
	kind droverpb.FileKind
	rel  string // outputs: slash-separated, relative to the output dir
	path string
	mode uint32
}

// outItem is an exit report with the results that go ahead of it.
type outItem struct {
	report *droverpb.ExitReport
	files  []shipFile
	dir    string          // the spool, removed once the exit is acknowledged
	failed map[string]bool // files that could not be read (named once in the report)
}

// shipCursor is how far the results of the exit with seq went on the
// current stream.
type shipCursor struct {
	seq  uint64
	file int
	off  int64
	size int64
	f    *os.File
}

func (c *shipCursor) reset() {
	if c.f != nil {
		c.f.Close()
	}
	*c = shipCursor{}
}

func (af *agentFiles) root() (string, error) {
	af.mu.Lock()
	defer af.mu.Unlock()
	if af.dir != "" {
		return af.dir, nil
	}
	scratch := af.scratch
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
	af.dir = d
	return d, nil
}

func (af *agentFiles) remove() error {
	af.mu.Lock()
	defer af.mu.Unlock()
	if af.dir == "" {
		return nil
	}
	err := os.RemoveAll(af.dir)
	af.dir = ""
	return err
}

// put writes one PutFile chunk into the content cache; the last one
// checks size and hash and makes the content available.
func (af *agentFiles) put(p *droverpb.PutFile) error {
	if len(p.GetSha256()) != sha256.Size || p.GetOffset() < 0 {
		return fmt.Errorf("%w: put file: bad hash or offset", errdefs.ErrInvalid)
	}
	d, err := af.root()
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	name := hex.EncodeToString(p.GetSha256())
	final := filepath.Join(d, "cache", name)
	if _, err := os.Stat(final); err == nil {
		return nil // already here (a repeat)
	}
	part := final + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	_, err = f.WriteAt(p.GetData(), p.GetOffset())
	if err == nil && p.GetLast() {
		err = f.Truncate(p.GetSize())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	if !p.GetLast() {
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
	if !bytes.Equal(got[:], p.GetSha256()) {
		os.Remove(part)
		return fmt.Errorf("put file: the content arrived with SHA-256 %x, not %x (did the file change while it was sent?)", got[:8], p.GetSha256()[:8])
	}
	if err := os.Rename(part, final); err != nil {
		return fmt.Errorf("put file: %w", err)
	}
	return nil
}

// prepare rewrites a start's spec for this machine: staged contents come
// from the cache, results go to a new spool (returned, nil when none).
func (af *agentFiles) prepare(pb *droverpb.ProcessSpec, spec *node.ProcessSpec) (*spool, error) {
	for i, f := range pb.GetFiles() {
		if len(f.GetSha256()) == 0 {
			continue
		}
		if len(f.GetSha256()) != sha256.Size {
			return nil, fmt.Errorf("%w: stage %s: bad hash", errdefs.ErrInvalid, f.GetDst())
		}
		d, err := af.root()
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", f.GetDst(), err)
		}
		p := filepath.Join(d, "cache", hex.EncodeToString(f.GetSha256()))
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("stage %s: its content (SHA-256 %x) never reached this agent", f.GetDst(), f.GetSha256()[:8])
		}
		spec.Files[i] = node.StageFile{Src: p, Dst: f.GetDst(), Mode: fs.FileMode(f.GetMode()).Perm()}
	}
	r := pb.GetResults()
	if r == nil {
		return nil, nil
	}
	d, err := af.root()
	if err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	sp := &spool{id: r.GetId(), dir: filepath.Join(d, "results", strconv.FormatUint(r.GetId(), 10))}
	if err := os.Mkdir(sp.dir, 0o700); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	spec.Stdout, spec.Stderr, spec.OutputDir = "", "", ""
	if r.GetStdout() || r.GetStderrIsStdout() {
		spec.Stdout, sp.stdout = filepath.Join(sp.dir, "stdout"), true
	}
	switch {
	case r.GetStderrIsStdout():
		spec.Stderr = spec.Stdout
	case r.GetStderr():
		spec.Stderr, sp.stderr = filepath.Join(sp.dir, "stderr"), true
	}
	if r.GetOutputs() {
		spec.OutputDir, sp.outputs = filepath.Join(sp.dir, "out"), true
	} else {
		spec.Outputs = nil
	}
	af.mu.Lock()
	af.spools[spec.Name] = append(af.spools[spec.Name], sp)
	af.mu.Unlock()
	return sp, nil
}

// abandon forgets the spool of a start that failed.
func (af *agentFiles) abandon(name string, sp *spool) {
	af.mu.Lock()
	q := af.spools[name]
	for i := range q {
		if q[i] == sp {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(af.spools, name)
	} else {
		af.spools[name] = q
	}
	af.mu.Unlock()
	os.RemoveAll(sp.dir)
}

// take returns the spool of the exited process name, if it has one.
func (af *agentFiles) take(name string) *spool {
	af.mu.Lock()
	defer af.mu.Unlock()
	q := af.spools[name]
	if len(q) == 0 {
		return nil
	}
	sp := q[0]
	if len(q) == 1 {
		delete(af.spools, name)
	} else {
		af.spools[name] = q[1:]
	}
	return sp
}

// list is what a spool has to send.
func (sp *spool) list() ([]shipFile, error) {
	var files []shipFile
	if sp.stdout {
		files = append(files, shipFile{kind: droverpb.FileKind_FILE_KIND_STDOUT, path: filepath.Join(sp.dir, "stdout")})
	}
	if sp.stderr {
		files = append(files, shipFile{kind: droverpb.FileKind_FILE_KIND_STDERR, path: filepath.Join(sp.dir, "stderr")})
	}
	if !sp.outputs {
		return files, nil
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
		files = append(files, shipFile{kind: droverpb.FileKind_FILE_KIND_OUTPUT, rel: filepath.ToSlash(rel), path: p, mode: uint32(info.Mode().Perm())})
		return nil
	})
	return files, err
}

// nextChunk reads the next chunk of it's files at the cursor and advances
// it; nil when a file could not be read (it is skipped and named in the
// report, and the manager counts it incomplete).
func (c *shipCursor) nextChunk(it *outItem) *droverpb.FileData {
	sf := it.files[c.file]
	fail := func(err error) *droverpb.FileData {
		name := sf.rel
		if name == "" {
			name = sf.kind.String()
		}
		if !it.failed[sf.path] {
			if it.failed == nil {
				it.failed = map[string]bool{}
			}
			it.failed[sf.path] = true
			x := it.report.GetExit()
			if x.Error != "" {
				x.Error += "; "
			}
			x.Error += fmt.Sprintf("result %s not sent: %v", name, err)
		}
		if c.f != nil {
			c.f.Close()
			c.f = nil
		}
		c.file++
		c.off, c.size = 0, 0
		return nil
	}
	if c.f == nil {
		f, err := os.Open(sf.path)
		if err != nil {
			return fail(err)
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return fail(err)
		}
		c.f, c.off, c.size = f, 0, info.Size()
	}
	buf := make([]byte, min(int64(fileChunk), c.size-c.off))
	if _, err := c.f.ReadAt(buf, c.off); err != nil {
		return fail(err)
	}
	fd := &droverpb.FileData{
		ResultsId: it.report.GetResultsId(),
		Seq:       it.report.GetSeq(),
		Kind:      sf.kind,
		Path:      sf.rel,
		Offset:    c.off,
		Data:      buf,
		Mode:      sf.mode,
	}
	c.off += int64(len(buf))
	if c.off >= c.size {
		fd.Last = true
		c.f.Close()
		c.f = nil
		c.file++
		c.off, c.size = 0, 0
	}
	return fd
}
