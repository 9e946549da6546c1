package queue

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
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

// findProgram is the program that j's command names relative to baseDir
// (node.Program: ./sim in the caller's directory, or beside the job file),
// to be run in place or shipped with each instance; nil when it names
// none. A job with a workdir of its own runs its command there, as a
// shell in that directory would; one whose files: stage the program runs
// that copy; a command with a {placeholder} is left as it is.
func findProgram(j *jobfile.Job, baseDir string) *node.Program {
	if len(j.Command) == 0 || j.Workdir != "" || strings.Contains(j.Command[0], "{") {
		return nil
	}
	p, ok := node.FindProgram(j.Command[0], baseDir)
	if !ok || slices.Contains(j.Files, p.Dst) {
		return nil
	}
	return &p
}
