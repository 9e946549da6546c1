package cli

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/topology"
)

func newCheck(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "check JOBFILE",
		Short: "Check a job file and print its plan, without starting anything",
		Long: `Reads JOBFILE as drover run would: every problem is reported as
FILE:LINE:COL with exit status 2. A valid file's plan is printed: each job's
instances, cores per instance and node, the jobs it waits for (after), its
limit on instances at once (max_running) and its sweep; the order the
dependencies impose; the totals; and how many instances this machine could
run at once.`,
		Example: `  drover check examples/hello.yaml`,
		Args:    exactArgs(1, "check JOBFILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := jobfile.Load(args[0])
			if err != nil {
				return &exitError{ExitUsage, err}
			}
			jobs := make([]*jobfile.Job, len(file.Jobs))
			for i := range file.Jobs {
				jobs[i] = &file.Jobs[i]
			}
			// A missing file fails the run before anything starts: check says so too.
			if err := queue.CheckFiles(args[0], jobs, file.Dir); err != nil {
				return &exitError{ExitUsage, err}
			}
			instances, coreSlots, widest := 0, 0, 0
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tINSTANCES\tCORES EACH\tALSO EACH\tNODE\tAFTER\tAT ONCE\tSWEEP")
			deps := false
			for _, j := range file.Jobs {
				where := j.Node
				if where == "" {
					where = "any"
				}
				after, atOnce, sweep := "-", "-", "-"
				if len(j.After) > 0 {
					after, deps = strings.Join(j.After, ","), true
				}
				if j.MaxRunning > 0 {
					atOnce = strconv.Itoa(j.MaxRunning)
				}
				if s := j.SweepString(); s != "" {
					sweep = s
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", j.Name, j.Repeat, j.Cores, alsoNeeds(&j), where, after, atOnce, sweep)
				instances += j.Repeat
				coreSlots += j.Repeat * j.Cores
				widest = max(widest, j.Cores)
			}
			fmt.Fprintf(e.stdout, "%s: valid, %d jobs, %d instances, %d core slots in all\n", args[0], len(file.Jobs), instances, coreSlots)
			if err := tw.Flush(); err != nil {
				return err
			}
			if deps {
				var stages []string
				for _, st := range file.Stages() {
					stages = append(stages, strings.Join(st, ", "))
				}
				fmt.Fprintf(e.stdout, "order: %s (a job starts once every instance of the jobs it is after has succeeded)\n", strings.Join(stages, " → "))
			}
			res, err := topology.Detect(topology.Options{})
			if err != nil {
				return nil // the plan stands; this machine is only a hint
			}
			n := len(res.Cores)
			fmt.Fprintf(e.stdout, "this machine (%s) has %d cores", res.Node, n)
			if widest > n {
				fmt.Fprintf(e.stdout, ": too few for a job of %d cores, which needs a larger node (--hosts)\n", widest)
				return nil
			}
			fmt.Fprintf(e.stdout, ": instances of %d core(s) run %d at a time here\n", widest, n/max(widest, 1))
			return nil
		},
	}
}

// alsoNeeds says what an instance of j reserves besides cores: GPUs,
// memory and counted resources, or "-".
func alsoNeeds(j *jobfile.Job) string {
	var needs []string
	if j.GPUs > 0 {
		unit := "GPU"
		if j.GPUs > 1 {
			unit = "GPUs"
		}
		needs = append(needs, fmt.Sprintf("%d %s", j.GPUs, unit))
	}
	if j.Memory > 0 {
		needs = append(needs, jobfile.FormatMemory(j.Memory))
	}
	for _, k := range slices.Sorted(maps.Keys(j.Resources)) {
		needs = append(needs, fmt.Sprintf("%s=%d", k, j.Resources[k]))
	}
	if len(needs) == 0 {
		return "-"
	}
	return strings.Join(needs, ",")
}
