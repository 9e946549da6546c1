package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/control"
	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/topology"
)

// The control verbs talk to a running `drover serve` through the client
// package. Exit statuses: 0 done; 2 bad usage or what was named does not
// exist (an unknown process or node, an invalid request or job file, a
// name already in use): nothing was done; 1 anything else failed: no
// serve runs, the credentials are refused, a node was lost, the process
// is (not) running.

// verbFlags are the flags every verb has.
type verbFlags struct {
	manager string
	group   string
}

// addGroupFlag lets a verb act for one program's group (see client.Options.Group).
func addGroupFlag(cmd *cobra.Command, vf *verbFlags) {
	cmd.Flags().StringVar(&vf.group, "group", "", "act for this program's group only: starts carry it; poll, finished and cancel-all see only its processes")
}

func addVerbFlags(cmd *cobra.Command, vf *verbFlags) {
	cmd.Flags().StringVar(&vf.manager, "manager", "", "HOST:PORT of the drover serve (default: the address in $DROVER_HOME/serve.json; the credentials come from there in any case)")
}

// withClient dials the serve and runs fn with a context that ends on
// SIGINT or SIGTERM; errors get their exit status.
func withClient(vf *verbFlags, fn func(ctx context.Context, c *client.Client) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := client.Dial(ctx, client.Options{Manager: vf.manager, Group: vf.group})
	if err != nil {
		return verbError(err)
	}
	defer c.Close()
	return verbError(fn(ctx, c))
}

// verbError gives an error of a verb its exit status.
func verbError(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	for _, usage := range []error{client.ErrNotFound, client.ErrUnknownNode, client.ErrInvalid, client.ErrExists} {
		if errors.Is(err, usage) {
			return &exitError{ExitUsage, err}
		}
	}
	return &exitError{ExitFailed, err}
}

// newVerbs makes the control verbs.
func newVerbs(e *env) []*cobra.Command {
	return []*cobra.Command{
		newNodes(e), newStart(e), newPoll(e), newStop(e), newKill(e), newPurge(e), newSend(e),
		newLogs(e), newFinished(e), newCancelAll(e), newEnv(e), newPorts(e), newLogLevel(e),
		newSubmit(e), newJobs(e), newShutdown(e), newToken(e),
	}
}

const verbNote = `

It talks to the drover serve of $DROVER_HOME (default ~/.drover), or the one
at --manager. Exit status: 0 done; 2 bad usage, or the process, node or job
file is unknown or invalid; 1 anything else failed (no serve running,
credentials refused, ...).`

func newNodes(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "nodes [--json]",
		Short: "List the nodes of the running drover serve",
		Long: `Lists the nodes that joined the drover serve: state (up, busy, lost,
error), cores, hardware threads, the hardware threads busy with bound
processes, GPUs in use of the node's GPUs, the number of processes, how many times the node's agent was
launched again after the node was lost (serve relaunches it, waiting 1s,
doubling to 60s while relaunches fail) and the last reason: why it was
last lost, why its last relaunch failed, or why it could not be launched.
--json prints a JSON array of {"name", "state", "error", "resources":
{"node", "cores", "memory_bytes", "gpus", "custom"}, "busy_hwthreads",
"busy_gpus", "processes",
"restarts", "last_reason", "rtt_ns"}.` + verbNote,
		Example: `  drover nodes
  drover nodes --json | jq '.[].name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				nodes, err := c.Nodes(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(e, nodes)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tSTATE\tCORES\tHWTHREADS\tBUSY\tGPUS\tPROCESSES\tRESTARTS\tLAST REASON")
				for _, n := range nodes {
					hw := 0
					for _, core := range n.Resources.Cores {
						hw += len(core)
					}
					reason := n.LastReason
					if reason == "" && n.State == "error" {
						reason = n.Error
					}
					gpus := "-"
					if len(n.Resources.GPUs) > 0 {
						gpus = fmt.Sprintf("%d/%d", len(n.BusyGPUs), len(n.Resources.GPUs))
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%d\t%d\t%s\n", n.Name, n.State, len(n.Resources.Cores), hw,
						intList(n.BusyHWThreads, "-"), gpus, n.Processes, n.Restarts, shortReason(reason))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	return cmd
}

// shortReason keeps `drover nodes` to a line a node: the first line of
// reason, cut at 60 characters; "-" when there is none.
func shortReason(reason string) string {
	reason, _, _ = strings.Cut(strings.TrimSpace(reason), "\n")
	if reason == "" {
		return "-"
	}
	if r := []rune(reason); len(r) > 60 {
		reason = string(r[:59]) + "…"
	}
	return reason
}

func newStart(e *env) *cobra.Command {
	vf := &verbFlags{}
	var req client.StartRequest
	var envs []string
	var hwthreads string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "start --node N --name NAME [flags] -- CMD [ARG...]",
		Short: "Start a named process on a node",
		Long: `Starts CMD as the process NAME on node N. Names are unique across the
cluster; the other verbs (poll, stop, kill, purge, send, logs) take just
the name. Its stdin stays open for drover send. --stdout and --stderr name
files to write (relative paths, like --workdir, are taken from here);
without them serve keeps the output for drover logs. --cores reserves that
many whole cores and binds the process to their hardware threads. --gpus
reserves that many whole GPUs of the node and hands them to the process in
CUDA_VISIBLE_DEVICES (NVIDIA) or ROCR_VISIBLE_DEVICES and HIP_VISIBLE_DEVICES
(AMD), and DROVER_GPUS.

A relative command (./sim, bin/sim) that exists here runs on any node: in
place where the node shares this file system, else as a copy shipped into
its fresh work dir. With --workdir the command is that directory's, as a
shell there would find it.

It prints the node, pid, bound hardware threads and GPUs; --json prints
{"name", "node", "pid", "hwthreads", "gpus"}.` + verbNote,
		Example: `  drover start --node node1 --name sim -- ./sim --seed 3
  drover start --node node1 --name srv --cores 2 --env OMP_PROC_BIND=true --stdout srv.log -- ./server
  drover start --node node1 --name echo -- cat`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash > 0 {
				return usageError("start: unexpected arguments before --: %q", args[:dash])
			}
			if len(args) == 0 {
				return usageError("start: no command; give it after --")
			}
			if req.Node == "" || req.Name == "" {
				return usageError("start needs --node and --name")
			}
			if err := checkNames(req.Name); err != nil {
				return err
			}
			if err := checkNode(req.Node); err != nil {
				return err
			}
			if req.Cores < 0 {
				return usageError("--cores must be >= 0")
			}
			if req.GPUs < 0 {
				return usageError("--gpus must be >= 0")
			}
			if hwthreads != "" {
				hw, err := topology.ParseCPUList(hwthreads)
				if err != nil || len(hw) == 0 {
					return usageError("--hwthreads %q: want a cpu list such as 0,2 or 4-7", hwthreads)
				}
				if req.Cores > 0 {
					return usageError("--hwthreads and --cores exclude each other")
				}
				req.HWThreads = hw
			}
			req.Args = args
			if req.Dir == "" {
				// ./sim here runs on any node: in place where the node
				// shares this file system, else as a copy shipped to it.
				if wd, err := os.Getwd(); err == nil {
					if p, ok := node.FindProgram(args[0], wd); ok {
						req.Program = p.Src
					}
				}
			}
			for _, kv := range envs {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageError("--env wants KEY=VALUE, got %q", kv)
				}
				if req.Env == nil {
					req.Env = make(map[string]string)
				}
				req.Env[k] = v
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				res, err := c.Start(ctx, req)
				if err != nil {
					return err
				}
				if asJSON {
					gpus := res.GPUs
					if gpus == nil {
						gpus = []string{}
					}
					return printJSON(e, startJSON{Name: req.Name, Node: res.Node, PID: res.PID, HWThreads: orEmpty(res.HWThreads), GPUs: gpus})
				}
				fmt.Fprintf(e.stdout, "%s started on %s, pid %d", req.Name, res.Node, res.PID)
				if len(res.HWThreads) > 0 {
					fmt.Fprintf(e.stdout, ", hwthreads %s", intList(res.HWThreads, ""))
				}
				if len(res.GPUs) > 0 {
					fmt.Fprintf(e.stdout, ", GPUs %s", strings.Join(res.GPUs, ","))
				}
				fmt.Fprintln(e.stdout)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Node, "node", "", "node to start on (see drover nodes)")
	fl.StringVar(&req.Name, "name", "", "name of the process, unique across the cluster")
	fl.StringVar(&req.Dir, "workdir", "", "work dir, which must exist (default: a fresh one)")
	fl.StringVar(&req.Stdout, "stdout", "", "file for its stdout (default: kept for drover logs)")
	fl.StringVar(&req.Stderr, "stderr", "", "file for its stderr (default: kept for drover logs)")
	fl.StringArrayVar(&envs, "env", nil, "KEY=VALUE added to its environment; repeatable")
	fl.IntVar(&req.Cores, "cores", 0, "whole cores to reserve and bind it to (default: none, unbound)")
	fl.StringVar(&hwthreads, "hwthreads", "", "bind it to exactly these hardware threads (a cpu list: 0,2 or 4-7), reserving their cores")
	fl.IntVar(&req.GPUs, "gpus", 0, "whole GPUs of the node to reserve for it (CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES, DROVER_GPUS)")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	addGroupFlag(cmd, vf)
	return cmd
}

func newPoll(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "poll [NAME...] [--json]",
		Short: "Show whether processes are running or how they ended",
		Long: `Prints a line for each named process, or each known one: "NAME running",
"NAME exit N" or "NAME signal SIG". A process is known from its start until
it is purged. --json prints a JSON array of {"name", "running", "node",
"exit_code", "signal", "error", "start", "end"} (exit_code is null while
running or when a signal ended it).` + verbNote,
		Example: `  drover poll
  drover poll sim srv
  drover poll --json | jq -r '.[] | select(.running | not) | .name'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args...); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				sts, err := c.Poll(ctx, args...)
				if err != nil {
					return err
				}
				var unknown []error
				for _, s := range sts {
					if s.Err != nil {
						unknown = append(unknown, s.Err)
					}
				}
				if asJSON {
					if err := printJSON(e, statusesJSON(sts)); err != nil {
						return err
					}
					return errors.Join(unknown...)
				}
				for _, s := range sts {
					if s.Err == nil {
						fmt.Fprintf(e.stdout, "%s %s\n", s.Name, s)
					}
				}
				return errors.Join(unknown...)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	addGroupFlag(cmd, vf)
	return cmd
}

func newStop(e *env) *cobra.Command {
	vf := &verbFlags{}
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME [--grace D]",
		Short: "Stop a process: SIGTERM to its process group, SIGKILL after the grace",
		Long: `Sends SIGTERM to the process group of NAME, and SIGKILL after --grace
(default: serve's --grace) if it is still there. It returns once the
signal is sent; drover poll and drover finished show the end.` + verbNote,
		Example: `  drover stop sim
  drover stop --grace 30s srv`,
		Args: exactArgs(1, "stop NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 {
				return usageError("--grace must be >= 0")
			}
			if err := checkNames(args[0]); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				return c.Stop(ctx, args[0], grace)
			})
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL (default: serve's --grace)")
	addVerbFlags(cmd, vf)
	return cmd
}

func newKill(e *env) *cobra.Command {
	vf := &verbFlags{}
	cmd := &cobra.Command{
		Use:     "kill NAME",
		Short:   "Kill a process: SIGKILL to its process group",
		Long:    `Sends SIGKILL to the process group of NAME.` + verbNote,
		Example: `  drover kill sim`,
		Args:    exactArgs(1, "kill NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args[0]); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				return c.Kill(ctx, args[0])
			})
		},
	}
	addVerbFlags(cmd, vf)
	return cmd
}

func newPurge(e *env) *cobra.Command {
	vf := &verbFlags{}
	cmd := &cobra.Command{
		Use:   "purge NAME",
		Short: "Forget a process that is no longer running",
		Long: `Forgets NAME, which must have ended, so that poll no longer shows it and
its name may be used again.` + verbNote,
		Example: `  drover purge sim`,
		Args:    exactArgs(1, "purge NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args[0]); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				return c.Purge(ctx, args[0])
			})
		},
	}
	addVerbFlags(cmd, vf)
	return cmd
}

func newSend(e *env) *cobra.Command {
	vf := &verbFlags{}
	var closeIn bool
	cmd := &cobra.Command{
		Use:   "send NAME [TEXT] [--close]",
		Short: "Write a line to a process's stdin",
		Long: `Writes TEXT and a newline to the stdin of NAME. With --close it then
closes that stdin: the process reads end of input (TEXT may be left out).` + verbNote,
		Example: `  drover send repl 'print(1+1)'
  drover send --close cat`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 || len(args) == 1 && closeIn {
				return nil
			}
			return usageError("usage: drover send NAME TEXT, or drover send NAME [TEXT] --close")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args[0]); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				if len(args) == 2 {
					if err := c.Send(ctx, args[0], []byte(args[1]+"\n")); err != nil {
						return err
					}
				}
				if closeIn {
					return c.CloseStdin(ctx, args[0])
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&closeIn, "close", false, "then close its stdin: it reads end of input")
	addVerbFlags(cmd, vf)
	return cmd
}

func newLogs(e *env) *cobra.Command {
	vf := &verbFlags{}
	var stderr, follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME... [--stderr] [-f]",
		Short: "Print processes' output",
		Long: `Prints the stdout (or with --stderr the stderr) of NAME from the start.
With -f it follows the output live until the process has ended and all of
it is printed, or Ctrl-C. With several names, each line is prefixed with
"NAME | " and the outputs interleave line by line as they come.` + verbNote,
		Example: `  drover logs sim
  drover logs -f --stderr sim
  drover logs -f sim.0 sim.1 sim.2`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("usage: drover logs NAME... [--stderr] [-f]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args...); err != nil {
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				var err error
				if len(args) == 1 {
					err = c.Logs(ctx, args[0], stderr, follow, e.stdout)
				} else {
					err = logsPrefixed(ctx, c, args, stderr, follow, e.stdout)
				}
				if follow && ctx.Err() != nil && errors.Is(err, context.Canceled) {
					return nil // Ctrl-C ends following
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&stderr, "stderr", false, "print stderr instead of stdout")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the process has ended")
	addVerbFlags(cmd, vf)
	return cmd
}

func newFinished(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	var wait time.Duration
	var follow bool
	cmd := &cobra.Command{
		Use:   "finished",
		Short: "Print the processes that ended since the last call",
		Long: `Prints "NAME exit N" or "NAME signal SIG" for each process started with
drover start (in --group, or without a group) that ended and that no
drover finished has printed yet. A process whose node was lost before it reported its
end shows as "NAME exit -1 (node lost)". With --wait, when none has ended
yet, it waits up to that long and prints the first to end as soon as it
does. With --follow it prints each end as it comes until interrupted.

An exit is handed out until the caller acknowledges it: drover finished
does so once it has printed it, so an exit whose line was never printed
(the command was killed first) is handed out again.` + verbNote,
		Example: `  drover finished
  drover finished --wait 1m   # block until something ends (at most a minute)
  drover finished -f          # print each end as it comes
  drover finished -f --json   # the same as JSON Lines`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if wait < 0 {
				return usageError("--wait %v: must not be negative", wait)
			}
			if follow && wait > 0 {
				return usageError("--wait and --follow exclude each other")
			}
			print := func(x client.Exit) error {
				if x.Err != "" {
					_, err := fmt.Fprintf(e.stdout, "%s %s (%s)\n", x.Name, x, x.Err)
					return err
				}
				_, err := fmt.Fprintf(e.stdout, "%s %s\n", x.Name, x)
				return err
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				if follow && asJSON { // JSON Lines: one exit a line, as it comes
					enc := json.NewEncoder(e.stdout)
					return c.WatchFinished(ctx, func(x client.Exit) error { return enc.Encode(toExitJSON(x)) })
				}
				if follow {
					return c.WatchFinished(ctx, print)
				}
				exits, err := c.Finished(ctx, wait)
				if err != nil {
					return err
				}
				if asJSON {
					return printExitsJSON(e, exits)
				}
				for _, x := range exits {
					if err := print(x); err != nil {
						return err
					}
				}
				return nil // Close acknowledges them
			})
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "when nothing has ended yet, wait up to this long for something to")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "print each end as it comes, until interrupted")
	addFinishedJSON(cmd, &asJSON)
	addVerbFlags(cmd, vf)
	addGroupFlag(cmd, vf)
	return cmd
}

func newCancelAll(e *env) *cobra.Command {
	vf := &verbFlags{}
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "cancel-all [--grace D]",
		Short: "Stop every process on every node",
		Long: `Stops every process on every node: SIGTERM to each process group, SIGKILL
after --grace (default: serve's --grace).` + verbNote,
		Example: `  drover cancel-all
  drover cancel-all --grace 1s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if grace < 0 {
				return usageError("--grace must be >= 0")
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				return c.CancelAll(ctx, grace)
			})
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL (default: serve's --grace)")
	addVerbFlags(cmd, vf)
	addGroupFlag(cmd, vf)
	return cmd
}

func newEnv(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "env get|set --node N KEY [VALUE]",
		Short: "Get or set a node's base environment",
		Long: `The base environment of a node is what every process started there later
gets, besides its own --env.` + verbNote,
		Example: `  drover env set --node node1 OMP_PROC_BIND true
  drover env get --node node1 OMP_PROC_BIND`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError("env needs get or set; see drover env -h")
		},
	}
	get := func() *cobra.Command {
		vf := &verbFlags{}
		var nodeName string
		var asJSON bool
		c := &cobra.Command{
			Use:   "get --node N KEY",
			Short: "Print a variable of a node's base environment",
			Long: `Prints the value of KEY in node N's base environment; exits 1 (printing
nothing) when it is not set. --json prints {"node", "key", "set", "value"}
(value null when not set; the exit status is still 1).` + verbNote,
			Example: `  drover env get --node node1 PATH`,
			Args:    exactArgs(1, "env get --node N KEY"),
			RunE: func(cmd *cobra.Command, args []string) error {
				if nodeName == "" {
					return usageError("env get needs --node")
				}
				if err := checkNode(nodeName); err != nil {
					return err
				}
				return withClient(vf, func(ctx context.Context, c *client.Client) error {
					v, ok, err := c.GetEnv(ctx, nodeName, args[0])
					if err != nil {
						return err
					}
					if asJSON {
						doc := envJSON{Node: nodeName, Key: args[0], Set: ok}
						if ok {
							doc.Value = &v
						}
						if err := printJSON(e, doc); err != nil {
							return err
						}
						if !ok {
							return errFailed
						}
						return nil
					}
					if !ok {
						return errFailed
					}
					fmt.Fprintln(e.stdout, v)
					return nil
				})
			},
		}
		c.Flags().StringVar(&nodeName, "node", "", "the node")
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
		addVerbFlags(c, vf)
		return c
	}()
	set := func() *cobra.Command {
		vf := &verbFlags{}
		var nodeName string
		c := &cobra.Command{
			Use:     "set --node N KEY VALUE",
			Short:   "Set a variable of a node's base environment",
			Long:    `Sets KEY to VALUE in node N's base environment, for processes started later.` + verbNote,
			Example: `  drover env set --node node1 OMP_NUM_THREADS 4`,
			Args:    exactArgs(2, "env set --node N KEY VALUE"),
			RunE: func(cmd *cobra.Command, args []string) error {
				if nodeName == "" {
					return usageError("env set needs --node")
				}
				if err := checkNode(nodeName); err != nil {
					return err
				}
				if args[0] == "" || strings.ContainsAny(args[0], "=\x00") {
					return usageError("env set: invalid variable name %q", args[0])
				}
				return withClient(vf, func(ctx context.Context, c *client.Client) error {
					return c.SetEnv(ctx, nodeName, args[0], args[1])
				})
			},
		}
		c.Flags().StringVar(&nodeName, "node", "", "the node")
		addVerbFlags(c, vf)
		return c
	}()
	cmd.AddCommand(get, set)
	return cmd
}

func newPorts(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ports bind|release --node N ...",
		Short: "Reserve free ports on a node, or give them back",
		Long: `Reserved ports are held (bound, so nothing else takes them) until
released.` + verbNote,
		Example: `  drover ports bind --node node1 -n 2
  drover ports release --node node1 40123 40124`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError("ports needs bind or release; see drover ports -h")
		},
	}
	bind := func() *cobra.Command {
		vf := &verbFlags{}
		var nodeName string
		var udp, asJSON bool
		var n int
		c := &cobra.Command{
			Use:   "bind --node N [--udp] [-n K]",
			Short: "Reserve free ports on a node and print them",
			Long: `Reserves K free TCP (or UDP) ports on node N and prints them, one a line;
--json prints {"node", "protocol": "tcp"|"udp", "ports"}.` + verbNote,
			Example: `  drover ports bind --node node1 -n 3`,
			Args:    cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if nodeName == "" {
					return usageError("ports bind needs --node")
				}
				if err := checkNode(nodeName); err != nil {
					return err
				}
				if n < 1 {
					return usageError("-n must be >= 1")
				}
				return withClient(vf, func(ctx context.Context, c *client.Client) error {
					ports, err := c.BindPorts(ctx, nodeName, udp, n)
					if err != nil {
						return err
					}
					if asJSON {
						proto := "tcp"
						if udp {
							proto = "udp"
						}
						return printJSON(e, portsJSON{Node: nodeName, Protocol: proto, Ports: orEmpty(ports)})
					}
					for _, p := range ports {
						fmt.Fprintln(e.stdout, p)
					}
					return nil
				})
			},
		}
		c.Flags().StringVar(&nodeName, "node", "", "the node")
		c.Flags().BoolVar(&udp, "udp", false, "UDP ports instead of TCP")
		c.Flags().IntVarP(&n, "n", "n", 1, "how many ports")
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
		addVerbFlags(c, vf)
		return c
	}()
	release := func() *cobra.Command {
		vf := &verbFlags{}
		var nodeName string
		var udp bool
		c := &cobra.Command{
			Use:     "release --node N [--udp] PORT...",
			Short:   "Give reserved ports back",
			Long:    `Releases ports reserved with drover ports bind on node N.` + verbNote,
			Example: `  drover ports release --node node1 40123`,
			RunE: func(cmd *cobra.Command, args []string) error {
				if nodeName == "" {
					return usageError("ports release needs --node")
				}
				if err := checkNode(nodeName); err != nil {
					return err
				}
				if len(args) == 0 {
					return usageError("ports release needs the ports to release")
				}
				var ports []int
				for _, a := range args {
					p, err := strconv.Atoi(a)
					if err != nil || p < 1 || p > 65535 {
						return usageError("ports release: %q is not a port", a)
					}
					ports = append(ports, p)
				}
				return withClient(vf, func(ctx context.Context, c *client.Client) error {
					return c.ReleasePorts(ctx, nodeName, udp, ports)
				})
			},
		}
		c.Flags().StringVar(&nodeName, "node", "", "the node")
		c.Flags().BoolVar(&udp, "udp", false, "UDP ports instead of TCP")
		addVerbFlags(c, vf)
		return c
	}()
	cmd.AddCommand(bind, release)
	return cmd
}

func newLogLevel(e *env) *cobra.Command {
	vf := &verbFlags{}
	var nodeName string
	cmd := &cobra.Command{
		Use:     "log-level --node N LEVEL",
		Short:   "Set a node agent's log level",
		Long:    `Sets the log level of node N's agent: debug, info, warn or error.` + verbNote,
		Example: `  drover log-level --node node1 debug`,
		Args:    exactArgs(1, "log-level --node N LEVEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if nodeName == "" {
				return usageError("log-level needs --node")
			}
			if err := checkNode(nodeName); err != nil {
				return err
			}
			level := strings.ToLower(args[0])
			if !slices.Contains(control.LogLevels, level) {
				return usageError("log-level must be debug, info, warn or error, got %q", args[0])
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				return c.SetLogLevel(ctx, nodeName, level)
			})
		},
	}
	cmd.Flags().StringVar(&nodeName, "node", "", "the node")
	addVerbFlags(cmd, vf)
	return cmd
}

func newSubmit(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "submit JOBFILE",
		Short: "Queue a job file's jobs on the running drover serve",
		Long: `Checks JOBFILE (the format of drover run) and queues its jobs; they run on
free cores beside the processes of drover start, and drover jobs lists
them with where their results are. It prints the instance names (--json:
{"instances": [...]}). An invalid job file exits 2 with FILE:LINE:COL:
what is wrong, before anything is sent.` + verbNote,
		Example: `  drover submit jobs.yaml
  drover jobs`,
		Args: exactArgs(1, "submit JOBFILE [--json]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := jobfile.Load(args[0])
			if err != nil {
				return &exitError{ExitUsage, err}
			}
			jobs := make([]*jobfile.Job, len(file.Jobs))
			for i := range file.Jobs {
				jobs[i] = &file.Jobs[i]
			}
			if err := queue.CheckFiles(args[0], jobs, file.Dir); err != nil {
				return &exitError{ExitUsage, err}
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				names, err := c.Submit(ctx, args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(e, struct {
						Instances []string `json:"instances"`
					}{orEmpty(names)})
				}
				for _, n := range names {
					fmt.Fprintln(e.stdout, n)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	return cmd
}

func newJobs(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "jobs [--json]",
		Short: "List the submitted jobs' instances",
		Long: `Lists each instance of the jobs submitted with drover submit: its
submission, state (pending, running, succeeded, failed, lost, cancelled),
node, attempts, outcome and results directory (stdout, stderr, outputs).
--json prints a JSON array of {"submission", "instance", "state", "node",
"attempts", "outcome", "out_dir"}.` + verbNote,
		Example: `  drover jobs
  drover jobs --json | jq -r '.[] | select(.state=="failed") | .instance'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				jobs, err := c.Jobs(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(e, jobs)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SUBMISSION\tINSTANCE\tSTATE\tNODE\tATTEMPTS\tOUTCOME\tRESULTS")
				for _, j := range jobs {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", j.Submission, j.Instance, j.State,
						dash(j.Node), j.Attempts, dash(j.Outcome), dash(j.OutDir))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	return cmd
}

// shutdownWait bounds how long drover shutdown waits for serve to exit.
const shutdownWait = 2 * time.Minute

func newShutdown(e *env) *cobra.Command {
	vf := &verbFlags{}
	cmd := &cobra.Command{
		Use:   "shutdown",
		Short: "Stop the running drover serve and everything it runs",
		Long: `Stops every process on every node (SIGTERM, then SIGKILL after serve's
--grace); the agents exit, then drover serve exits. On the machine of the
serve it waits for that.` + verbNote,
		Example: `  drover shutdown`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				if err := c.Shutdown(ctx); err != nil {
					return err
				}
				if vf.manager != "" {
					return nil
				}
				wctx, cancel := context.WithTimeout(ctx, shutdownWait)
				defer cancel()
				return c.WaitExit(wctx)
			})
		},
	}
	addVerbFlags(cmd, vf)
	return cmd
}

// checkNames refuses, before anything is sent, process names that break
// the naming rule (cluster.CheckName): exit 2.
func checkNames(names ...string) error {
	for _, n := range names {
		if err := cluster.CheckName(n); err != nil {
			return &exitError{ExitUsage, err}
		}
	}
	return nil
}

// checkNode refuses a node name that no node can have: empty, starting
// with "-", or with a space or control character. Node names come from
// host names, so anything else is left to the serve to look up.
func checkNode(name string) error {
	if name == "" || name[0] == '-' || strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return usageError("invalid node name %q", name)
	}
	return nil
}

// exactArgs is cobra.ExactArgs with the usage in the message.
func exactArgs(n int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("usage: drover %s (got %d arguments)", usage, len(args))
		}
		return nil
	}
}

func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func intList(v []int, empty string) string {
	if len(v) == 0 {
		return empty
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// logsPrefixed streams several processes' output at once, each line
// prefixed with its process's name; lines never tear.
func logsPrefixed(ctx context.Context, c *client.Client, names []string, stderr, follow bool, out io.Writer) error {
	var mu sync.Mutex
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			w := &prefixWriter{prefix: name + " | ", mu: &mu, out: out}
			errs[i] = c.Logs(ctx, name, stderr, follow, w)
			w.flush()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// prefixWriter writes whole lines, each behind a prefix, to a shared out.
type prefixWriter struct {
	prefix string
	mu     *sync.Mutex
	out    io.Writer
	part   []byte // an unfinished line
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.part = append(w.part, p...)
	i := bytes.LastIndexByte(w.part, '\n')
	if i < 0 {
		return len(p), nil
	}
	var buf bytes.Buffer
	for line := range bytes.Lines(w.part[:i+1]) {
		buf.WriteString(w.prefix)
		buf.Write(line)
	}
	w.part = append(w.part[:0], w.part[i+1:]...)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.out.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes an unfinished last line, ending it.
func (w *prefixWriter) flush() {
	if len(w.part) > 0 {
		w.Write([]byte("\n"))
	}
}
