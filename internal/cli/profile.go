package cli

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// startProfiles writes CPU and heap profiles of this process when
// DROVER_CPU_PROFILE or DROVER_MEM_PROFILE name files: a way for users to
// show where time or memory goes. The returned func ends them.
func startProfiles(stderr io.Writer) func() {
	var stops []func()
	if path := os.Getenv("DROVER_CPU_PROFILE"); path != "" {
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
	if path := os.Getenv("DROVER_MEM_PROFILE"); path != "" {
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
