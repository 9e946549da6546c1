package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/nofollow"
	"github.com/drover-hpc/drover/internal/results"
)

// createOutput creates (or truncates) outDir/rel for a copied output,
// without following a symlink below outDir. Names that are drover's own
// captured output are refused.
func createOutput(outDir, rel string, perm os.FileMode) (*os.File, error) {
	rel = path.Clean(rel)
	if results.OwnName(rel) {
		return nil, results.ErrOwnName
	}
	// outDir itself is the caller's to name; below it, nofollow.
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	name := filepath.FromSlash(rel)
	if err := nofollow.MkdirAll(outDir, filepath.Dir(name), 0o755); err != nil {
		return nil, err
	}
	return nofollow.OpenFile(outDir, name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
}

// fullBelow is the free space under which a file system counts as full:
// a write that failed for want of space left at most about this much.
const fullBelow = 64 << 10

// checkCaptured looks, after an exit, whether the captured output may
// have been cut short. The process wrote those files itself, so a write
// that failed (ENOSPC) was its own to see, and it may have ignored it:
// what drover can see is the file system holding them full now.
func checkCaptured(paths []string) error {
	var errs []string
	for _, p := range paths {
		if err := checkFull(p); err != nil {
			errs = append(errs, fmt.Sprintf("%s may be incomplete: %v when the process exited", filepath.Base(p), err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// ErrFull says a file system was full.
var ErrFull = errors.New("file system full")

// checkFull fails with ErrFull when the file system holding the regular
// file p has less than fullBelow free (for this user: root may use the
// blocks reserved for it).
func checkFull(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // gone, or not a file (/dev/null): nothing to say
	}
	return fsFull(p)
}

// fsFull fails with ErrFull when the file system holding p is full.
func fsFull(p string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil || fs.Blocks == 0 {
		return nil
	}
	free := fs.Bavail
	if os.Geteuid() == 0 {
		free = fs.Bfree
	}
	if bytes := free * uint64(fs.Bsize); bytes < fullBelow {
		return fmt.Errorf("%w (%d bytes free) at %s", ErrFull, bytes, p)
	}
	return nil
}

// fullEvery is how often a file system holding running processes'
// captured output is looked at: a disk full only for a while, with room
// again by the exit, is seen if the while spans a look.
const fullEvery = 100 * time.Millisecond

// fullWatch watches the file systems that hold running processes'
// captured output, and counts the looks that found one full.
type fullWatch struct {
	log  *slog.Logger
	mu   sync.Mutex
	devs map[uint64]*fsState
	wake chan struct{} // a first file system to watch
	stop chan struct{}
	done chan struct{}
}

type fsState struct {
	path  string // the dir of a captured file on it, to statfs
	users int
	full  uint64 // looks that found it full
	was   bool   // the last look found it full
}

// fsMark is where a process's captured file is, and the count of full
// looks at its start.
type fsMark struct {
	dev  uint64
	full uint64
}

func newFullWatch(log *slog.Logger) *fullWatch {
	w := &fullWatch{log: log, devs: map[uint64]*fsState{}, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// add starts watching the file systems of paths (by their dirs, which
// exist before the files), for one process.
func (w *fullWatch) add(paths []string) []fsMark {
	var marks []fsMark
	for _, p := range paths {
		var st unix.Stat_t
		dir := filepath.Dir(p)
		if unix.Stat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		w.mu.Lock()
		s := w.devs[st.Dev]
		if s == nil {
			s = &fsState{path: dir}
			w.devs[st.Dev] = s
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
		s.users++
		marks = append(marks, fsMark{st.Dev, s.full})
		w.mu.Unlock()
	}
	return marks
}

// drop ends one process's watch; it reports whether a look during its
// life found a file system full.
func (w *fullWatch) drop(marks []fsMark) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := false
	for _, m := range marks {
		s := w.devs[m.dev]
		if s == nil {
			continue
		}
		seen = seen || s.full != m.full
		if s.users--; s.users == 0 {
			delete(w.devs, m.dev)
		}
	}
	return seen
}

func (w *fullWatch) run() {
	defer close(w.done)
	t := time.NewTicker(fullEvery)
	defer t.Stop()
	for {
		w.mu.Lock()
		idle := len(w.devs) == 0
		w.mu.Unlock()
		if idle {
			select {
			case <-w.wake:
			case <-w.stop:
				return
			}
		}
		select {
		case <-t.C:
		case <-w.stop:
			return
		}
		w.look()
	}
}

func (w *fullWatch) look() {
	w.mu.Lock()
	paths := make(map[uint64]string, len(w.devs))
	for d, s := range w.devs {
		paths[d] = s.path
	}
	w.mu.Unlock()
	for d, p := range paths {
		err := fsFull(p)
		w.mu.Lock()
		if s := w.devs[d]; s != nil {
			if err != nil {
				s.full++
				if !s.was {
					w.log.Warn("results file system full: output written now may be cut short", "err", err)
				}
			}
			s.was = err != nil
		}
		w.mu.Unlock()
	}
}

func (w *fullWatch) close() {
	close(w.stop)
	<-w.done
}
