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
		Short: "Show the cores, hardware threads, memory and GPUs this node offers",
		Long: `Shows the hardware threads a drover agent on this node may use (its CPU
affinity mask intersected with the cgroup cpuset), grouped by core, the
memory (lowered to the cgroup limit when there is one), and the GPUs:
NVIDIA ones from /proc/driver/nvidia/gpus, /dev/nvidiaN or nvidia-smi -L,
AMD ones from /sys/class/kfd, narrowed to (or, where none are visible,
taken from) CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or
HIP_VISIBLE_DEVICES, else SLURM_STEP_GPUS or SLURM_JOB_GPUS.`,
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
			fmt.Fprintf(e.stdout, "node %s: %d cores, %d hardware threads, %.1f GiB memory, %d GPUs\n",
				res.Node, len(res.Cores), len(res.HWThreads()), float64(res.MemoryBytes)/(1<<30), len(res.GPUs))
			for i, c := range res.Cores {
				fmt.Fprintf(e.stdout, "  core %d: hwthreads %s\n", i, topology.FormatCPUList(c))
			}
			for _, g := range res.GPUs {
				fmt.Fprintf(e.stdout, "  GPU %s: %s", g.ID, g.Vendor)
				for _, x := range []string{g.Model, g.UUID} {
					if x != "" {
						fmt.Fprintf(e.stdout, ", %s", x)
					}
				}
				if g.NUMA >= 0 {
					fmt.Fprintf(e.stdout, ", NUMA node %d", g.NUMA)
				}
				fmt.Fprintln(e.stdout)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"node", "cores": [[hwthread, ...], ...], "memory_bytes", "gpus": [{"vendor", "id", "uuid", "model", "numa"}, ...], "numa"}`)
	return cmd
}
