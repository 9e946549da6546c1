package queue

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/stagefile"
)

// CheckFiles checks, before anything starts, that every file the jobs
// stage (relative to baseDir, as Run takes them) exists and is a regular
// file after symlinks: a device, FIFO or socket would block or never end
// on its node. file names the job file in the errors ("" for jobs built
// in code).
func CheckFiles(file string, jobs []*jobfile.Job, baseDir string) error {
	var errs []error
	for _, j := range jobs {
		at := ""
		if file != "" && j.Line > 0 {
			at = fmt.Sprintf("%s:%d:%d: ", file, j.Line, j.Col)
		}
		for _, f := range j.Files {
			if _, err := stagefile.Check(filepath.Join(baseDir, f)); err != nil {
				errs = append(errs, fmt.Errorf("%sjob %s: files: %s: %w", at, j.Name, f, err))
			}
		}
	}
	return errors.Join(errs...)
}
