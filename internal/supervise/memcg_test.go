//go:build linux

package supervise

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/drover-hpc/drover/internal/nodetest"
)

// TestMemoryLimitOutOfMemory runs real children in a real memory cgroup:
// one that allocates past its 32 MiB limit is killed by the kernel's OOM
// killer and its exit says "out of memory"; one within its limit ends
// normally; neither leaves its cgroup behind.
func TestMemoryLimitOutOfMemory(t *testing.T) {
	s := newSup(t, Options{Cgroup: true})
	if s.mem == nil {
		_, err := newMemCgroups(s.cgroup)
		if os.Getenv("DROVER_TEST_CGROUP") == "1" {
			t.Fatalf("no memory cgroup: %v", err)
		}
		t.Skipf("no memory cgroup can be made here: %v", err)
	}
	x := nodetest.NewExits(t, s)
	hog := helper(t, "hog", "alloc", "256")
	hog.MemoryMax = 32 << 20
	fits := helper(t, "fits", "alloc", "4")
	fits.MemoryMax = 256 << 20
	for _, spec := range []Spec{hog, fits} {
		if _, err := s.Start(spec); err != nil {
			t.Fatal(err)
		}
	}
	e := x.One("hog")
	if e.Signal != syscall.SIGKILL || !strings.HasPrefix(e.Err, "out of memory") {
		t.Errorf("hog: %+v, want SIGKILL and \"out of memory\"", e)
	}
	if e := x.One("fits"); !e.Success() {
		t.Errorf("fits: %+v, want a plain exit 0", e)
	}
	left, _ := filepath.Glob(filepath.Join(s.mem.dir, "p-*"))
	if len(left) > 0 {
		t.Errorf("memory cgroups left after the exits: %v", left)
	}
}
