package filexfer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
)

// Receiver writes the results of one node's processes where their specs
// asked for them. Safe for concurrent use.
type Receiver struct {
	mu      sync.Mutex
	next    uint64
	targets map[uint64]*target // by ResultsSpec.ID
}

// NewReceiver makes a Receiver.
func NewReceiver() *Receiver { return &Receiver{targets: make(map[uint64]*target)} }

// Expect prepares for the results of a start of spec and returns what to
// ask the agent for. The stdout and stderr files are created (or
// truncated) now, as an agent would at its start: an unwritable path fails
// the start, not the results.
func (r *Receiver) Expect(spec node.ProcessSpec) (ResultsSpec, error) {
	for _, p := range uniq(spec.Stdout, spec.Stderr) {
		f, err := nofollow.OpenPath(spec.OutputDir, p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return ResultsSpec{}, err
		}
		f.Close()
	}
	t := newTarget(spec.Stdout, spec.Stderr, spec.OutputDir)
	if spec.Stderr == spec.Stdout {
		t.stderr = ""
	}
	r.mu.Lock()
	r.next++
	id := r.next
	r.targets[id] = t
	r.mu.Unlock()
	return ResultsSpec{
		ID:             id,
		Stdout:         spec.Stdout != "",
		Stderr:         spec.Stderr != "" && spec.Stderr != spec.Stdout,
		StderrIsStdout: spec.Stderr != "" && spec.Stderr == spec.Stdout,
		Outputs:        len(spec.Outputs) > 0 && spec.OutputDir != "",
	}, nil
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

// Drop forgets the results of id (its start failed).
func (r *Receiver) Drop(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.targets[id]; t != nil {
		t.close()
		delete(r.targets, id)
	}
}

// DropAll forgets every result expected (the node is lost).
func (r *Receiver) DropAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, t := range r.targets {
		t.close()
		delete(r.targets, id)
	}
}

// Write applies one chunk; one of results not expected (any more) is
// ignored. A file that fails is skipped from then on and named by Finish.
// Chunks may come again (the stream was cut and the agent starts over).
func (r *Receiver) Write(c Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.targets[c.ID]; t != nil {
		t.write(c)
	}
}

// Finish ends the results of id (its exit came) and returns what went
// wrong with them, "" when all were written.
func (r *Receiver) Finish(id uint64) string {
	r.mu.Lock()
	t := r.targets[id]
	delete(r.targets, id)
	r.mu.Unlock()
	if t == nil {
		return ""
	}
	for k := range t.open {
		// Not ended with a last chunk: the agent could not read it all.
		t.errs = append(t.errs, fmt.Sprintf("%s: incomplete", k))
	}
	t.close()
	if len(t.errs) == 0 {
		return ""
	}
	return "results not kept: " + strings.Join(t.errs, "; ")
}

// target is where one process's results go on this machine.
type target struct {
	stdout, stderr, outDir string
	madeDir                bool // outDir exists
	open                   map[string]*os.File
	failed                 map[string]bool
	errs                   []string
}

func newTarget(stdout, stderr, outDir string) *target {
	return &target{stdout: stdout, stderr: stderr, outDir: outDir, open: map[string]*os.File{}, failed: map[string]bool{}}
}

func (t *target) close() {
	for k, f := range t.open {
		f.Close()
		delete(t.open, k)
	}
}

// write applies one chunk; a file that fails is skipped from then on and
// named in the exit's error.
func (t *target) write(c Result) {
	key := c.Kind.String()
	if c.Kind == Output {
		key = "output " + c.Path
	}
	if t.failed[key] {
		return
	}
	err := t.writeChunk(key, c)
	if err != nil {
		t.failed[key] = true
		if f := t.open[key]; f != nil {
			f.Close()
			delete(t.open, key)
		}
		t.errs = append(t.errs, fmt.Sprintf("%s: %v", key, err))
	}
}

func (t *target) writeChunk(key string, c Result) error {
	f := t.open[key]
	if f == nil {
		var err error
		if f, err = t.openFile(c); err != nil {
			return err
		}
		t.open[key] = f
	}
	if c.Offset < 0 {
		return errors.New("negative offset")
	}
	if _, err := f.WriteAt(c.Data, c.Offset); err != nil {
		return err
	}
	if c.Last {
		delete(t.open, key)
		err := f.Truncate(c.Offset + int64(len(c.Data)))
		return errors.Join(err, f.Close())
	}
	return nil
}

func (t *target) openFile(c Result) (*os.File, error) {
	var p string
	switch c.Kind {
	case Stdout:
		p = t.stdout
	case Stderr:
		p = t.stderr
	case Output:
		return t.openOutput(c.Path, c.Mode.Perm())
	}
	if p == "" {
		return nil, errors.New("not asked for")
	}
	return nofollow.OpenPath(t.outDir, p, os.O_WRONLY|os.O_CREATE, 0o644)
}

// openOutput opens OutputDir/rel: a path from the agent cannot leave
// OutputDir, by "..", an absolute path or any symlink, nor land on
// drover's own captured output there.
func (t *target) openOutput(rel string, mode fs.FileMode) (*os.File, error) {
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
