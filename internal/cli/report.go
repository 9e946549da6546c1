package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/report"
	"github.com/drover-hpc/drover/internal/results"
)

func newReport(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "report DIR",
		Short: "Write DIR/report.html: an HTML report of a results directory",
		Long: `Reads DIR/events.jsonl and DIR/summary.json of a drover run and writes
DIR/report.html: one self-contained file (no scripts, nothing fetched) with
the counts, a timeline of every attempt (one lane per node and hwthread,
failures marked), the slowest instances, and the failed and lost ones with
the end of their stderr. Works on a run that has not ended too.

Exit status: 0 written; 2 DIR is not a results directory; 1 it could not
be read or written.`,
		Example: `  drover run --out results jobs.yaml; drover report results
  xdg-open results/report.html`,
		Args: exactArgs(1, "report DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if _, err := os.Stat(filepath.Join(dir, results.EventsFile)); errors.Is(err, os.ErrNotExist) {
				return usageError("%s is not a results directory: it has no %s", dir, results.EventsFile)
			}
			path, err := report.Write(dir)
			if err != nil {
				return &exitError{ExitFailed, err}
			}
			fmt.Fprintln(e.stdout, path)
			return nil
		},
	}
}
