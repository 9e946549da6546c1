package node

import (
	"os"
	"path/filepath"
	"strings"
)

// Program is a program on the manager's machine that a command names by
// a relative path (./sim, bin/sim) found in the caller's directory. A
// node that shares this machine's file system runs it where it is; any
// other gets a copy in the work dir, the way staged files go (by content,
// each content once per node), and runs that copy.
type Program struct {
	Src string // absolute path on this machine
	Dst string // where the copy goes, relative to the work dir
}

// FindProgram tells whether arg0, a command, names a program relative to
// dir that exists there: a path with a slash that is not absolute, naming
// a regular file (after symlinks). A bare name is a PATH lookup on the
// node, and an absolute path is the node's own: neither is a Program.
func FindProgram(arg0, dir string) (Program, bool) {
	if !strings.Contains(arg0, "/") || filepath.IsAbs(arg0) || dir == "" {
		return Program{}, false
	}
	src, err := filepath.Abs(filepath.Join(dir, arg0))
	if err != nil {
		return Program{}, false
	}
	if info, err := os.Stat(src); err != nil || !info.Mode().IsRegular() {
		return Program{}, false
	}
	dst := filepath.Clean(arg0)
	if !filepath.IsLocal(dst) { // ../tools/sim: the copy goes beside the others
		dst = filepath.Base(dst)
	}
	return Program{Src: src, Dst: dst}, true
}

// SharesFS tells whether n sees this machine's files under the same paths:
// when it says so (a remote node's SharedFS), or when it cannot say (an
// agent in this process).
func SharesFS(n Node) bool {
	s, ok := n.(interface{ SharedFS() bool })
	return !ok || s.SharedFS()
}

// UseProgram makes Args[i] run p on a node that shares this machine's
// file system (shared) or not. A copy that Files stage already (a job's
// files: listing the program) is not staged twice.
func (s *ProcessSpec) UseProgram(i int, p Program, shared bool) {
	if i < 0 || i >= len(s.Args) {
		return
	}
	s.Args = append([]string(nil), s.Args...) // the caller's stay as they were
	for _, f := range s.Files {
		if filepath.Clean(f.Dst) == p.Dst {
			s.Args[i] = "./" + p.Dst
			return
		}
	}
	if shared {
		s.Args[i] = p.Src
		return
	}
	s.Args[i] = "./" + p.Dst
	s.Files = append(s.Files, StageFile{Src: p.Src, Dst: p.Dst})
}
