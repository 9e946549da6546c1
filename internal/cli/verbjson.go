package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/client"
)

// What the verbs print with --json. Field names are snake_case and stable
// (README lists them); every field is always there, null when it has no
// value, so programs need not guess.

// jsonTime is RFC 3339 with nanoseconds, always nine digits.
const jsonTime = "2006-01-02T15:04:05.000000000Z07:00"

// exitJSON is an exit as drover finished and drover poll print it.
type exitJSON struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// ExitCode is null when a signal ended the process (or it runs).
	ExitCode *int    `json:"exit_code"`
	Signal   string  `json:"signal"` // "SIGKILL"; "" unless a signal ended it
	Error    string  `json:"error"`  // why the result is not all there
	Start    *string `json:"start"`
	End      *string `json:"end"`
}

func toExitJSON(x client.Exit) exitJSON {
	out := exitJSON{Name: x.Name, Node: x.Node, Signal: x.Signal, Error: x.Err, Start: timeJSON(x.Start), End: timeJSON(x.End)}
	if x.Signal == "" {
		out.ExitCode = &x.Code
	}
	return out
}

func timeJSON(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(jsonTime)
	return &s
}

// statusJSON is one process as drover poll --json prints it.
type statusJSON struct {
	Running bool `json:"running"`
	exitJSON
}

func statusesJSON(sts []client.Status) []statusJSON {
	out := make([]statusJSON, 0, len(sts))
	for _, s := range sts {
		x := toExitJSON(s.Exit)
		x.Name = s.Name
		switch {
		case s.Err != nil: // an unknown name: its error, nothing else
			x = exitJSON{Name: s.Name, Error: s.Err.Error()}
		case s.Running:
			x = exitJSON{Name: s.Name, Node: s.Exit.Node, Start: timeJSON(s.Exit.Start)}
		}
		out = append(out, statusJSON{Running: s.Running, exitJSON: x})
	}
	return out
}

// addFinishedJSON gives drover finished its --json flag.
func addFinishedJSON(cmd *cobra.Command, asJSON *bool) {
	cmd.Flags().BoolVar(asJSON, "json", false, `print a JSON array of {"name", "node", "exit_code", "signal", "error", "start", "end"}`)
}

// printExitsJSON prints the exits of one drover finished as one JSON array.
func printExitsJSON(e *env, exits []client.Exit) error {
	out := make([]exitJSON, 0, len(exits))
	for _, x := range exits {
		out = append(out, toExitJSON(x))
	}
	return printJSON(e, out)
}

// startJSON is what drover start --json prints.
type startJSON struct {
	Name      string   `json:"name"`
	Node      string   `json:"node"`
	PID       int      `json:"pid"`
	HWThreads []int    `json:"hwthreads"` // empty when unbound
	GPUs      []string `json:"gpus"`      // ids of its GPUs; empty when none
}

// envJSON is what drover env get --json prints.
type envJSON struct {
	Node  string  `json:"node"`
	Key   string  `json:"key"`
	Set   bool    `json:"set"`
	Value *string `json:"value"` // null when not set
}

// portsJSON is what drover ports bind --json prints.
type portsJSON struct {
	Node     string `json:"node"`
	Protocol string `json:"protocol"` // tcp or udp
	Ports    []int  `json:"ports"`
}

// orEmpty makes a nil slice print as [] rather than null.
func orEmpty[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
