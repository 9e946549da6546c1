package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/manager"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/progress"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
)

type runFlags struct {
	launcher       string
	hosts          []string
	hostfile       string
	out            string
	resume         bool
	retries        int
	repeat         int
	eachNode       bool
	monitorTimeout time.Duration
	nodeTimeout    time.Duration
	progress       string
	grace          time.Duration
}

func newRun(e *env) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] JOBFILE | run [flags] -- CMD [ARG...]",
		Short: "Run a batch of jobs to completion",
		Long: `Runs every instance of the jobs in JOBFILE (or CMD as one ad-hoc job) on the
cluster's nodes, each bound to whole cores, and writes the results directory:
DIR/<instance>/stdout and stderr, DIR/events.jsonl and DIR/summary.json.

Exit status: 0 when every instance exited 0; 1 when any failed, was lost or
timed out; 2 when the job file or flags are invalid (nothing started).
Ctrl-C stops every instance (SIGTERM, then SIGKILL after --grace; a second
Ctrl-C kills at once) and still writes the summary.`,
		Example: `  drover run examples/hello.yaml
  drover run --out results --retries 2 jobs.yaml
  drover run --resume --out results jobs.yaml
  drover run --repeat 16 -- ./sim --seed '{index}'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBatch(cmd, e, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.launcher, "launcher", "", "how agents reach the nodes: local, ssh or slurm (default: slurm inside an allocation, ssh with --hosts, else local)")
	fl.StringSliceVar(&f.hosts, "hosts", nil, "SSH nodes, [user@]host,...")
	fl.StringVar(&f.hostfile, "hostfile", "", "file with one SSH node per line")
	fl.StringVar(&f.out, "out", "drover-out", "results directory")
	fl.BoolVar(&f.resume, "resume", false, "skip instances that already finished with exit 0 in --out")
	fl.IntVar(&f.retries, "retries", 0, "retries for jobs that do not set their own")
	fl.IntVar(&f.repeat, "repeat", 1, "ad-hoc mode: run CMD this many times")
	fl.BoolVar(&f.eachNode, "each-node", false, "ad-hoc mode: run CMD once on every node")
	fl.DurationVar(&f.monitorTimeout, "monitor-timeout", 30*time.Second, "an agent stops its processes and exits after this long without the manager")
	fl.DurationVar(&f.nodeTimeout, "node-timeout", 5*time.Second, "the manager declares a silent node lost after this long")
	fl.StringVar(&f.progress, "progress", "auto", "auto (a bar on a terminal, plain lines otherwise), plain or none")
	fl.DurationVar(&f.grace, "grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping instances")
	return cmd
}

func runBatch(cmd *cobra.Command, e *env, f *runFlags, args []string) error {
	dash := cmd.ArgsLenAtDash()
	mode, err := progress.ParseMode(f.progress)
	if err != nil {
		return usageError("%v", err)
	}
	if f.retries < 0 {
		return usageError("--retries must be >= 0")
	}
	if f.repeat < 1 {
		return usageError("--repeat must be >= 1")
	}
	if f.eachNode && cmd.Flags().Changed("repeat") {
		return usageError("--repeat and --each-node do not go together")
	}
	launcher, err := pickLauncher(f)
	if err != nil {
		return err
	}
	if launcher != "local" {
		return usageError("launcher %q is not available in this build; use --launcher local", launcher)
	}

	out, err := filepath.Abs(f.out)
	if err != nil {
		return usageError("--out: %v", err)
	}
	var jobs []*jobfile.Job
	baseDir, _ := os.Getwd()
	switch {
	case dash >= 0:
		if dash > 0 {
			return usageError("give either JOBFILE or -- CMD, not both")
		}
		if len(args) == 0 {
			return usageError("no command after --")
		}
	default:
		if len(args) != 1 {
			return usageError("run needs one JOBFILE, or -- CMD [ARG...]")
		}
		if cmd.Flags().Changed("repeat") || f.eachNode {
			return usageError("--repeat and --each-node are for ad-hoc mode (-- CMD)")
		}
		file, err := jobfile.Load(args[0])
		if err != nil {
			return &exitError{ExitUsage, err}
		}
		for i := range file.Jobs {
			jobs = append(jobs, &file.Jobs[i])
		}
		baseDir = file.Dir
	}

	if err := usableDir(out); err != nil {
		return usageError("--out: %v", err)
	}
	rep := progress.Start(os.Stderr, mode)
	log := e.logger(rep.Writer())
	m, nodes, err := startCluster(f, e, log, rep.Writer())
	if err != nil {
		rep.Stop()
		return &exitError{ExitFailed, err}
	}
	stopCluster := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), f.grace+30*time.Second)
		defer cancel()
		return m.Close(ctx)
	}

	if dash >= 0 {
		jobs, err = adHocJobs(args, f, nodes)
		if err != nil {
			rep.Stop()
			stopCluster()
			return err
		}
	}

	var skip map[string]bool
	if f.resume {
		if skip, err = results.Succeeded(out); err != nil {
			rep.Stop()
			stopCluster()
			return &exitError{ExitUsage, err}
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hard := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; !ok {
			return
		}
		cancel()
		if _, ok := <-sigs; ok {
			close(hard)
		}
	}()

	sum, runErr := queue.Run(ctx, jobs, queue.Options{
		Nodes:    nodes,
		OutDir:   out,
		BaseDir:  baseDir,
		Retries:  f.retries,
		Grace:    f.grace,
		Skip:     skip,
		Hard:     hard,
		Progress: rep.Update,
		Logger:   log,
	})
	rep.Stop()
	signal.Stop(sigs)
	close(sigs)
	closeErr := stopCluster()
	if runErr != nil && sum == nil {
		return &exitError{ExitFailed, runErr}
	}
	printSummary(e, sum, f.out)
	if err := errors.Join(runErr, closeErr); err != nil {
		fmt.Fprintln(e.stderr, "drover:", err)
		return errFailed
	}
	if !sum.OK() {
		return errFailed
	}
	return nil
}

// startCluster starts the manager and its agents and waits for their nodes.
func startCluster(f *runFlags, e *env, log *slog.Logger, agentLogs io.Writer) (*manager.Manager, []node.Node, error) {
	m, err := manager.New(manager.Options{
		NodeTimeout:    f.nodeTimeout,
		MonitorTimeout: f.monitorTimeout,
		Grace:          f.grace,
		Logger:         log,
		AgentLogLevel:  e.logLevel,
		AgentLogs:      agentLogs,
	})
	if err != nil {
		return nil, nil, err
	}
	name, err := os.Hostname()
	if err == nil {
		err = m.LaunchLocal(name)
	}
	var nodes []node.Node
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), agentStartTimeout)
		nodes, err = m.WaitNodes(ctx, 1)
		cancel()
	}
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), f.grace)
		defer cancel()
		return nil, nil, errors.Join(err, m.Close(ctx))
	}
	return m, nodes, nil
}

// agentStartTimeout bounds the wait for agents to dial in.
const agentStartTimeout = 30 * time.Second

// usableDir checks that dir is, or can be made, a writable directory,
// before anything starts.
func usableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".drover-probe-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

func pickLauncher(f *runFlags) (string, error) {
	if f.hostfile != "" || len(f.hosts) > 0 {
		if f.launcher == "" {
			return "ssh", nil
		}
		if f.launcher != "ssh" {
			return "", usageError("--hosts and --hostfile need --launcher ssh")
		}
	}
	switch f.launcher {
	case "":
		if os.Getenv("SLURM_JOB_ID") != "" {
			return "slurm", nil
		}
		return "local", nil
	case "local", "ssh", "slurm":
		return f.launcher, nil
	}
	return "", usageError("--launcher must be local, ssh or slurm, got %q", f.launcher)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// adHocJobs makes the one job of `drover run -- CMD`: --repeat instances,
// or one per node with --each-node, named after the command.
func adHocJobs(args []string, f *runFlags, nodes []node.Node) ([]*jobfile.Job, error) {
	name := strings.Trim(unsafeName.ReplaceAllString(filepath.Base(args[0]), "_"), "._")
	if name == "" {
		name = "cmd"
	}
	if f.eachNode {
		var jobs []*jobfile.Job
		for _, n := range nodes {
			j := &jobfile.Job{Name: name + "." + unsafeName.ReplaceAllString(n.Name(), "_"), Command: args, Node: n.Name()}
			if err := j.Validate(); err != nil {
				return nil, &exitError{ExitUsage, err}
			}
			jobs = append(jobs, j)
		}
		return jobs, nil
	}
	j := &jobfile.Job{Name: name, Command: args, Repeat: f.repeat}
	if err := j.Validate(); err != nil {
		return nil, &exitError{ExitUsage, err}
	}
	return []*jobfile.Job{j}, nil
}

func printSummary(e *env, s *results.Summary, dir string) {
	var b strings.Builder
	fmt.Fprintf(&b, "%d instances: %d succeeded", s.Total, s.Succeeded)
	for _, p := range []struct {
		n    int
		what string
	}{{s.Failed, "failed"}, {s.Lost, "lost"}, {s.Cancelled, "cancelled"}, {s.Skipped, "skipped (already done)"}} {
		if p.n > 0 {
			fmt.Fprintf(&b, ", %d %s", p.n, p.what)
		}
	}
	if s.StoppedBecause != "" {
		fmt.Fprintf(&b, "; stopped: %s", s.StoppedBecause)
	}
	fmt.Fprintf(&b, "; results in %s\n", dir)
	shown := 0
	for _, in := range s.Instances {
		if in.State != results.StateFailed && in.State != results.StateLost {
			continue
		}
		if shown == 10 {
			fmt.Fprintf(&b, "  ... and more: see %s\n", filepath.Join(dir, results.SummaryFile))
			break
		}
		shown++
		fmt.Fprintf(&b, "  %s %s\n", in.Name, in.Outcome())
	}
	fmt.Fprint(e.stderr, b.String())
}
