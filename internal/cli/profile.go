package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
)

// startProfiles writes CPU and heap profiles of this process when
// DROVER_CPU_PROFILE or DROVER_MEM_PROFILE name files, and appends its CPU
// time to DROVER_RUSAGE_FILE: a way for users to show where time or memory
// goes. "{pid}" in a profile's name is replaced, so that a manager and its
// agents (which inherit the variables) write apart. The returned func ends
// them.
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
	if path := os.Getenv("DROVER_RUSAGE_FILE"); path != "" {
		stops = append(stops, func() {
			if err := appendRusage(path); err != nil {
				fmt.Fprintln(stderr, "drover: rusage:", err)
			}
		})
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

// appendRusage appends this process's own CPU time (RUSAGE_SELF, without
// its children) to path as one JSON line, when DROVER_RUSAGE_FILE names
// it: a measuring aid (internal/bench) that tells a manager's CPU from its
// agent's, which the rusage of the manager's exit cannot, as it sums every
// descendant the manager reaped. One short O_APPEND write per process, so
// the processes of one run can share the file.
func appendRusage(path string) error {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return fmt.Errorf("getrusage: %w", err)
	}
	line, err := json.Marshal(struct {
		PID    int      `json:"pid"`
		PPID   int      `json:"ppid"`
		Args   []string `json:"args"`
		UserUS int64    `json:"user_us"`
		SysUS  int64    `json:"sys_us"`
	}{os.Getpid(), os.Getppid(), os.Args[1:], ru.Utime.Nano() / 1000, ru.Stime.Nano() / 1000})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
