package progress

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Stop ends the reporter's goroutine and leaves the final state on screen
// (goleak checks the goroutine is gone).
func TestStopDrawsTheFinalState(t *testing.T) {
	for _, mode := range []Mode{Plain, Bar} {
		t.Run(string(mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out")
			out, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			r := Start(out, mode)
			r.Update(queue.Counts{Total: 4, Succeeded: 3, Failed: 1, Start: time.Now()})
			r.Stop()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got := string(b)
			if !strings.Contains(got, "4/4 done, 1 failed") || !strings.HasSuffix(got, "\n") {
				t.Errorf("%s: %q", mode, got)
			}
			if mode == Bar && !strings.Contains(got, "[") {
				t.Errorf("no bar: %q", got)
			}
		})
	}
}

// After Ctrl-C the line counts what ran, not the cancelled instances.
func TestLineLeavesCancelledOut(t *testing.T) {
	start := time.Unix(1000, 0)
	got := Line(queue.Counts{Total: 10, Succeeded: 2, Cancelled: 8, Start: start}, start.Add(4*time.Second))
	if want := "2/10 done, 8 cancelled, 0 running, 4s"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
}
