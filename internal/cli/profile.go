package cli

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// startProfiles writes CPU and heap profiles of this process when
// DROVER_CPU_PROFILE or DROVER_MEM_PROFILE name files: a way for users to
// show where time or memory goes. "{pid}" in a name is replaced, so that a
// manager and its agents (which inherit the variable) write apart. The
// returned func ends them.
func startProfiles(stderr io.Writer) func() {
	var stops []func()
	pid := strconv.Itoa(os.Getpid())
	if path := strings.ReplaceAll(os.Getenv("DROVER_CPU_PROFILE"), "{pid}", pid); path != "" {
		f, err := os.Create(path)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(stderr, "drover: cpu profile:", err)
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := strings.ReplaceAll(os.Getenv("DROVER_MEM_PROFILE"), "{pid}", pid); path != "" {
		stops = append(stops, func() {
			f, err := os.Create(path)
			if err == nil {
				err = pprof.WriteHeapProfile(f)
				f.Close()
			}
			if err != nil {
				fmt.Fprintln(stderr, "drover: heap profile:", err)
			}
		})
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}
