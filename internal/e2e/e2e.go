// Package e2e is what the end-to-end tests and benchmarks share: building
// the real drover binary, an environment that does not steer it, and a
// buffer a running process may write while the test reads.
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// ModuleRoot finds the drover module's root above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(data, []byte("module github.com/drover-hpc/drover\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the drover module root above the test's directory")
		}
		dir = parent
	}
}

// Build builds drover into dir with CGO_ENABLED=0 (the contract wants
// such builds to work, so that is the binary under test) and returns its
// path.
func Build(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "drover")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/drover-hpc/drover/cmd/drover")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build drover: %v\n%s", err, out)
	}
	return bin, nil
}

// Env is this process's environment without what would change the
// launcher drover picks (a Slurm allocation) or leak into its jobs.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SLURM_") || strings.HasPrefix(kv, "DROVER_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Buffer is a bytes.Buffer that may be read while a process writes to it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
