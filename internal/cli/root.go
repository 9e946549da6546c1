// Package cli is drover's command line: flag parsing, exit statuses and
// wiring of the core packages. cmd/drover only calls Main.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/jobfile"
)

// Exit statuses, per the contract.
const (
	ExitOK     = 0
	ExitFailed = 1 // the work ran and something failed
	ExitUsage  = 2 // bad usage or invalid input; nothing started
)

// exitError carries an exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{ExitUsage, fmt.Errorf(format, args...)}
}

// errFailed ends a command with status 1 without printing more; the
// command has already said what failed.
var errFailed = &exitError{ExitFailed, errors.New("")}

// env is what every command shares: streams and the logger.
type env struct {
	stdout, stderr io.Writer
	level          *slog.LevelVar
	logLevel       string
}

// logger logs to w: records at --log-level info or debug, plain lines
// at the default (warn) or error.
func (e *env) logger(w io.Writer) *slog.Logger {
	return slog.New(newLogHandler(w, e.level))
}

// Main runs drover with args (without the program name) and returns the
// exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, level: new(slog.LevelVar)}
	root := newRoot(e)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	stopProfiles := startProfiles(stderr)
	err := root.Execute()
	stopProfiles()
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		var positioned jobfile.Errors
		switch msg := ee.Error(); {
		case errors.As(err, &positioned):
			// FILE:LINE:COL: lines, as editors and grep expect them.
			fmt.Fprintln(stderr, msg)
		case msg != "":
			fmt.Fprintln(stderr, "drover:", msg)
		}
		return ee.code
	}
	// Anything cobra itself rejected (unknown flag, bad args) is usage.
	fmt.Fprintln(stderr, "drover:", err)
	return ExitUsage
}

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "drover",
		Short: "Run and supervise processes across the nodes of a cluster",
		Long: `drover runs batches of jobs on this machine, over SSH or inside a Slurm
allocation, binds them to cores, keeps every output and reports every exit.`,
		Example: `  drover run examples/hello.yaml
  drover run --repeat 8 -- ./sim --fast
  drover resources --json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var l slog.Level
			if err := l.UnmarshalText([]byte(e.logLevel)); err != nil {
				return usageError("--log-level must be debug, info, warn or error, got %q", e.logLevel)
			}
			e.level.Set(l)
			return nil
		},
	}
	root.Version = versionString()
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().StringVar(&e.logLevel, "log-level", "warn", "log level: debug, info, warn or error; debug and info show log records, warn (the default) and error print warnings as plain lines")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{ExitUsage, err}
	})
	root.AddCommand(append([]*cobra.Command{newResources(e), newRun(e), newAgent(e), newServe(e), newReport(e), newCompletion(e), newCheck(e)}, newVerbs(e)...)...)
	addNameCompletion(root)
	return root
}

// versionString is what drover --version prints: the version, the commit
// the binary was built from (when the build knew it) and the Go version.
func versionString() string {
	commit, dirty := "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				commit = s.Value[:min(12, len(s.Value))]
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "+changes"
			}
		}
	}
	return fmt.Sprintf("drover %s (commit %s%s, %s %s/%s)", Version, commit, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
