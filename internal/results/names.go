package results

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Drover's own names in an instance's results dir: the captured output of
// the latest attempt, and earlier attempts' in attempt-N/.
const (
	StdoutFile = "stdout"
	StderrFile = "stderr"
)

// OwnName reports whether rel, a slash-separated path inside an
// instance's results dir, is (or is inside) one of drover's own names
// there: stdout, stderr or attempt-N. A job's outputs never go there: they
// would replace its captured output.
func OwnName(rel string) bool {
	first, _, _ := strings.Cut(path.Clean(rel), "/")
	if first == StdoutFile || first == StderrFile {
		return true
	}
	n, ok := strings.CutPrefix(first, "attempt-")
	if !ok || n == "" {
		return false
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// ErrOwnName is why an output named like drover's own captured output is
// not copied.
var ErrOwnName = errors.New("not copied: stdout, stderr and attempt-N are drover's captured output in the instance's results dir; name the file otherwise or narrow outputs")

// ErrHoldsRun is the error for a results dir that already holds a run.
var ErrHoldsRun = errors.New("already holds a run; add --resume to go on with it, or choose another --out")

// CheckFresh fails with ErrHoldsRun when dir already holds a run (its
// events log or summary), so that a second run does not write over the
// first one's output.
func CheckFresh(dir string) error {
	for _, name := range []string{EventsFile, SummaryFile} {
		_, err := os.Lstat(filepath.Join(dir, name))
		if err == nil {
			return fmt.Errorf("%s %w (it has %s)", dir, ErrHoldsRun, name)
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	return nil
}
