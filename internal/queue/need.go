package queue

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/drover-hpc/drover/internal/cores"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/topology"
)

// needOf is what one instance of j reserves on its node.
func needOf(j *jobfile.Job) cores.Need {
	return cores.Need{Cores: j.Cores, GPUs: j.GPUs, Memory: j.Memory, Custom: j.Resources}
}

func sameNeed(a, b cores.Need) bool {
	return a.Cores == b.Cores && a.GPUs == b.GPUs && a.Memory == b.Memory && maps.Equal(a.Custom, b.Custom)
}

// lacks says which of the GPUs, memory and counted resources that one
// instance of j reserves the node res does not have at all, or "".
func lacks(res topology.Resources, j *jobfile.Job) string {
	if j.GPUs > len(res.GPUs) {
		return fmt.Sprintf("needs %d GPUs; node %s has %d", j.GPUs, res.Node, len(res.GPUs))
	}
	if j.Memory > res.MemoryBytes {
		return fmt.Sprintf("needs %s of memory; node %s has %s", jobfile.FormatMemory(j.Memory), res.Node, jobfile.FormatMemory(res.MemoryBytes))
	}
	for _, k := range slices.Sorted(maps.Keys(j.Resources)) {
		if n := j.Resources[k]; n > res.Custom[k] {
			return fmt.Sprintf("needs %d of resource %s; node %s has %d", n, k, res.Node, res.Custom[k])
		}
	}
	return ""
}

// largestLacks says what no node of nodes has enough of for one instance
// of j, naming the largest amount a node has, or "" when some node has
// enough of each (if not all on the same node).
func largestLacks(nodes []topology.Resources, j *jobfile.Job) string {
	var gpus int
	var mem int64
	custom := make(map[string]int64)
	for _, n := range nodes {
		gpus = max(gpus, len(n.GPUs))
		mem = max(mem, n.MemoryBytes)
		for k, v := range n.Custom {
			custom[k] = max(custom[k], v)
		}
	}
	var why []string
	if j.GPUs > gpus {
		why = append(why, fmt.Sprintf("needs %d GPUs; the largest node has %d", j.GPUs, gpus))
	}
	if j.Memory > mem {
		why = append(why, fmt.Sprintf("needs %s of memory; the largest node has %s", jobfile.FormatMemory(j.Memory), jobfile.FormatMemory(mem)))
	}
	for _, k := range slices.Sorted(maps.Keys(j.Resources)) {
		if n := j.Resources[k]; n > custom[k] {
			if custom[k] == 0 {
				why = append(why, fmt.Sprintf("needs %d of resource %s; no node has any", n, k))
			} else {
				why = append(why, fmt.Sprintf("needs %d of resource %s; the most a node has is %d", n, k, custom[k]))
			}
		}
	}
	return strings.Join(why, "; ")
}

// CheckFits refuses, before anything starts, jobs whose instances ask for
// more GPUs, memory or of a counted resource than any node has (or than
// the job's own node, with the node key), naming the job and what the
// largest node has.
func CheckFits(jobs []*jobfile.Job, nodes []topology.Resources) error {
	var errs []string
	for _, j := range jobs {
		if j.Node != "" {
			for _, n := range nodes {
				if why := lacks(n, j); n.Node == j.Node && why != "" {
					errs = append(errs, fmt.Sprintf("job %s %s", j.Name, why))
				}
			}
			continue
		}
		if why := largestLacks(nodes, j); why != "" {
			errs = append(errs, fmt.Sprintf("job %s %s", j.Name, why))
			continue
		}
		if !slices.ContainsFunc(nodes, func(n topology.Resources) bool { return lacks(n, j) == "" }) {
			errs = append(errs, fmt.Sprintf("job %s: no node has all of its GPUs, memory and resources", j.Name))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}
