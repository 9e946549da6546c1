package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/topology"
)

func newResources(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "resources",
		Short: "Show the cores, hardware threads and memory this node offers",
		Long: `Shows the hardware threads a drover agent on this node may use (its CPU
affinity mask intersected with the cgroup cpuset), grouped by core, and the
memory (lowered to the cgroup limit when there is one).`,
		Example: `  drover resources
  drover resources --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := topology.Detect(topology.Options{})
			if err != nil {
				return &exitError{ExitFailed, err}
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				return enc.Encode(res)
			}
			fmt.Fprintf(e.stdout, "node %s: %d cores, %d hardware threads, %.1f GiB memory\n",
				res.Node, len(res.Cores), len(res.HWThreads()), float64(res.MemoryBytes)/(1<<30))
			for i, c := range res.Cores {
				fmt.Fprintf(e.stdout, "  core %d: hwthreads %s\n", i, topology.FormatCPUList(c))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"node", "cores": [[hwthread, ...], ...], "memory_bytes"}`)
	return cmd
}
