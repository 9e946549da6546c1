package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/internal/jobfile"
	"github.com/drover-hpc/drover/internal/launch"
	"github.com/drover-hpc/drover/internal/manager"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/procs"
	"github.com/drover-hpc/drover/internal/progress"
	"github.com/drover-hpc/drover/internal/queue"
	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/stagefile"
	"github.com/drover-hpc/drover/internal/topology"
)

type runFlags struct {
	launcher       string
	hosts          []string
	hostfile       string
	sshConfig      string
	sshTimeout     time.Duration
	files          []string
	out            string
	resume         bool
	retries        int
	repeat         int
	eachNode       bool
	matrix         []string
	jobs           int
	monitorTimeout time.Duration
	nodeTimeout    time.Duration
	progress       string
	halt           string
	grace          time.Duration
	dashboard      string
	resources      []string
}

func newRun(e *env) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] JOBFILE | run [flags] -- CMD [ARG...]",
		Short: "Run a batch of jobs to completion",
		Long: `Runs every instance of the jobs in JOBFILE (or CMD as one ad-hoc job) on the
cluster's nodes, each bound to whole cores, and writes the results directory:
DIR/<instance>/stdout and stderr, DIR/events.jsonl and DIR/summary.json.
A DIR that already holds a run is refused unless --resume goes on with it.

Exit status: 0 when every instance exited 0; 1 when any failed, was lost or
timed out; 2 when the job file or flags are invalid (nothing started).
Ctrl-C stops every instance (SIGTERM, then SIGKILL after --grace; a second
Ctrl-C kills at once) and still writes the summary.`,
		Example: `  drover run examples/hello.yaml
  drover run --out results --retries 2 jobs.yaml
  drover run --resume --out results jobs.yaml
  drover run --repeat 16 -- ./sim --seed '{index}'
  drover run -j 4 --matrix x=1,2,3 --matrix y=a,b -- ./sim {x} {y}`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBatch(cmd, e, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.launcher, "launcher", "", "how agents reach the nodes: local, ssh or slurm (default: slurm inside an allocation, ssh with --hosts, else local)")
	fl.StringSliceVar(&f.hosts, "hosts", nil, "SSH nodes, [user@]host,...")
	fl.StringVar(&f.hostfile, "hostfile", "", "file with one SSH node per line, optionally followed by its counted resources: node7 license=2,fpga=1")
	fl.StringVarP(&f.sshConfig, "ssh-config", "F", "", "ssh config file for the ssh launcher (ssh -F)")
	fl.StringArrayVar(&f.resources, "resource", nil, "counted resources every node declares, NAME=N,... (license=2); repeatable; a hostfile's columns add per host")
	fl.DurationVar(&f.sshTimeout, "ssh-timeout", defaultSSHTimeout, "give up connecting to an SSH host after this long (ssh ConnectTimeout; 0 leaves it to the ssh config); the other hosts never wait for it")
	fl.StringVar(&f.out, "out", "drover-out", "results directory")
	fl.BoolVar(&f.resume, "resume", false, "go on with the run in --out: skip instances that already finished with exit 0 there")
	fl.IntVar(&f.retries, "retries", 0, "retries for jobs that do not set their own")
	fl.IntVar(&f.repeat, "repeat", 1, "ad-hoc mode: run CMD this many times")
	fl.BoolVar(&f.eachNode, "each-node", false, "ad-hoc mode: run CMD once on every node")
	fl.StringArrayVar(&f.matrix, "matrix", nil, "ad-hoc mode: one instance per combination of the values, NAME=V1,V2,... (repeatable); {NAME} in CMD and DROVER_PARAM_NAME carry the value")
	fl.IntVarP(&f.jobs, "jobs", "j", 0, "run at most `N` instances at once in the whole run (0: as many as the cores allow)")
	fl.StringSliceVar(&f.files, "files", nil, "ad-hoc mode: copy these files (paths below the current directory; F,... or repeated) into each instance's work dir, at the same relative path")
	fl.DurationVar(&f.monitorTimeout, "monitor-timeout", 30*time.Second, "an agent stops its processes and exits after this long without the manager (which sends a heartbeat every third of it)")
	fl.DurationVar(&f.nodeTimeout, "node-timeout", 5*time.Second, "the manager declares a silent node lost after this long (agents send a heartbeat every third of it)")
	fl.StringVar(&f.halt, "halt", "never", "stop early once instances fail: never, soon,fail=N (start nothing more), now,fail=N (stop everything); N may be a percentage, e.g. now,fail=10%")
	fl.StringVar(&f.progress, "progress", "auto", "auto (a bar on a terminal, plain lines otherwise), plain or none")
	fl.DurationVar(&f.grace, "grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping instances")
	fl.StringVar(&f.dashboard, "dashboard", "", "serve a live web dashboard and /metrics at ADDR while the run lasts (loopback, a free port, when given without =ADDR)")
	fl.Lookup("dashboard").NoOptDefVal = defaultDashboard
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
	halt, err := queue.ParseHalt(f.halt)
	if err != nil {
		return usageError("%v", err)
	}
	if f.repeat < 1 {
		return usageError("--repeat must be >= 1")
	}
	if f.eachNode && cmd.Flags().Changed("repeat") {
		return usageError("--repeat and --each-node do not go together")
	}
	if len(f.matrix) > 0 && (f.eachNode || cmd.Flags().Changed("repeat")) {
		return usageError("--matrix goes with neither --repeat nor --each-node: for replicas, add --matrix seed=1,2,3")
	}
	if f.jobs < 0 {
		return usageError("-j/--jobs must be >= 0")
	}
	launcher, err := pickLauncher(f)
	if err != nil {
		return err
	}
	where, err := clusterPlan(launcher, f.hosts, f.hostfile, f.sshConfig, f.resources)
	if err != nil {
		return err
	}
	if f.sshTimeout < 0 {
		return usageError("--ssh-timeout must be >= 0")
	}
	where.sshTimeout = f.sshTimeout

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
		if err := checkAdHocFiles(f.files, baseDir); err != nil {
			return err
		}
		if !f.eachNode {
			// Checked before the cluster starts; --each-node needs its nodes.
			if jobs, err = adHocJobs(args, f, nil); err != nil {
				return err
			}
		}
	default:
		if len(args) != 1 {
			return usageError("run needs one JOBFILE, or -- CMD [ARG...]")
		}
		if cmd.Flags().Changed("repeat") || f.eachNode || len(f.matrix) > 0 || len(f.files) > 0 {
			return usageError("--repeat, --each-node, --matrix and --files are for ad-hoc mode (-- CMD); a job file has repeat, matrix and files keys")
		}
		file, err := jobfile.Load(args[0])
		if err != nil {
			return &exitError{ExitUsage, err}
		}
		for i := range file.Jobs {
			jobs = append(jobs, &file.Jobs[i])
		}
		baseDir = file.Dir
		if err := queue.CheckFiles(args[0], jobs, baseDir); err != nil {
			return &exitError{ExitUsage, err}
		}
	}

	if err := usableDir(out); err != nil {
		return usageError("--out: %v", err)
	}
	shown := f.out // the results directory as the summary line names it
	if !f.resume {
		// A second run would write over the first one's output: an --out
		// given is refused, the default goes on to drover-out.2, .3, ...
		err := results.CheckFresh(out)
		for i := 2; err != nil && errors.Is(err, results.ErrHoldsRun) && !cmd.Flags().Changed("out") && i < 1000; i++ {
			next := fmt.Sprintf("%s.%d", out, i)
			if err = results.CheckFresh(next); err == nil {
				fmt.Fprintf(e.stderr, "drover: %s holds an earlier run (--resume goes on with it); the results go to %s\n", f.out, filepath.Base(next))
				out, shown = next, fmt.Sprintf("%s.%d", f.out, i)
			}
		}
		if err != nil {
			return usageError("--out: %v", err)
		}
	}
	rep := progress.Start(os.Stderr, mode)
	log := e.logger(rep.Writer())
	cl, err := startCluster(f, where, e, log, rep.Writer())
	if err != nil {
		rep.Stop()
		return &exitError{ExitFailed, err}
	}
	stopCluster := func() error { return cl.close(f.grace) }

	if dash >= 0 && f.eachNode {
		// One instance per node: the nodes are all known only once the
		// launch is over.
		<-cl.feed.launched
		jobs, err = adHocJobs(args, f, cl.nodes())
		if err != nil {
			rep.Stop()
			stopCluster()
			return err
		}
	}
	// What no node has enough of could never run: said before anything
	// starts, once every node is up or has failed. Jobs that ask for
	// nothing but cores do not wait for that.
	if slices.ContainsFunc(jobs, func(j *jobfile.Job) bool { return j.GPUs > 0 || j.Memory > 0 || len(j.Resources) > 0 }) {
		<-cl.feed.launched
		var offered []topology.Resources
		for _, n := range cl.nodes() {
			offered = append(offered, n.Resources())
		}
		if err := queue.CheckFits(jobs, offered); err != nil {
			rep.Stop()
			stopCluster()
			return &exitError{ExitUsage, err}
		}
	}

	var prior results.Prior
	if f.resume {
		if prior, err = results.ReadPrior(out); err != nil {
			rep.Stop()
			stopCluster()
			return &exitError{ExitUsage, err}
		}
	}
	skip := prior.Succeeded

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

	board, err := startRunDashboard(f.dashboard, out, jobs, skip, cl.nodes(), log)
	if err != nil {
		rep.Stop()
		stopCluster()
		return err
	}
	if board != nil {
		board.announce(rep.Writer())
	}
	// Nodes come to the queue as they come up: a host slow to answer holds
	// no other back.
	joining, stopFeed, fed := make(chan queue.Arrival), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(fed)
		cl.feed.forward(joining, stopFeed)
	}()
	sum, runErr := queue.Run(ctx, jobs, queue.Options{
		Joining:    joining,
		OutDir:     out,
		BaseDir:    baseDir,
		Halt:       halt,
		MaxRunning: f.jobs,
		Retries:    f.retries,
		Grace:      f.grace,
		Skip:       skip,
		Prior:      prior.Attempts,
		Hard:       hard,
		Progress:   rep.Update,
		Logger:     log,
		OnEvent:    board.onEvent(cl.node),
	})
	close(stopFeed)
	<-fed
	board.stop(sum)
	rep.Stop()
	signal.Stop(sigs)
	close(sigs)
	closeErr := stopCluster()
	if runErr != nil && sum == nil {
		return &exitError{ExitFailed, runErr}
	}
	printSummary(e, sum, shown)
	if err := errors.Join(runErr, closeErr); err != nil {
		fmt.Fprintln(e.stderr, "drover:", err)
		return errFailed
	}
	if !sum.OK() {
		return errFailed
	}
	return nil
}

// runCluster is the manager of a run, with its nodes as they come up.
type runCluster struct {
	m      *manager.Manager
	feed   *nodeFeed
	cancel context.CancelCauseFunc // ends the launch
	done   chan struct{}           // closed when the launch is over
}

// errRunEnded ends the launch of hosts still connecting when the run is over.
var errRunEnded = errors.New("the run ended before it came up")

// startCluster starts the manager and launches its agents. It returns as
// soon as one node is up: the others join the run through the feed as
// they come up, and those that never do are told to w at once (and to the
// queue, for events.jsonl). It fails only when no node came up.
func startCluster(f *runFlags, where *plan, e *env, log *slog.Logger, w io.Writer) (*runCluster, error) {
	feed := newNodeFeed(func(lf manager.LaunchFailure) {
		fmt.Fprintf(w, "drover: node %s not used: %s\n", lf.Node, lf.Reason)
	})
	sizer := procs.NewManager()
	m, err := manager.New(manager.Options{
		Listen:         where.listen(""),
		NodeTimeout:    f.nodeTimeout,
		MonitorTimeout: f.monitorTimeout,
		Grace:          f.grace,
		Logger:         log,
		AgentLogLevel:  e.logLevel,
		AgentLogs:      w,
		OnNode: func(n node.Node) {
			sizer.Joined()
			feed.node(n)
		},
		OnLaunchFailure: feed.fail,
		Resources:       where.resources,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	c := &runCluster{m: m, feed: feed, cancel: cancel, done: make(chan struct{})}
	var launchErr error
	go func() {
		defer close(c.done)
		tctx, tcancel := context.WithTimeout(ctx, agentStartTimeout)
		defer tcancel()
		_, launchErr = where.launch(tctx, m, log)
		feed.settle(m)
	}()
	select {
	case <-feed.firstUp:
		return c, nil
	case <-feed.launched:
	}
	<-c.done
	if feed.nodes() > 0 {
		return c, nil
	}
	err = errors.New("no node came up")
	if len(m.LaunchFailures()) == 0 && launchErr != nil {
		err = launchErr // nothing said why yet
	}
	return nil, errors.Join(err, c.close(f.grace))
}

// nodes are the nodes up now.
func (c *runCluster) nodes() []node.Node {
	var out []node.Node
	for _, n := range c.m.Nodes() {
		out = append(out, n)
	}
	return out
}

// node is the latest node up of that name; nil when none.
func (c *runCluster) node(name string) node.Node {
	nodes := c.m.Nodes()
	for i := len(nodes) - 1; i >= 0; i-- {
		if nodes[i].Name() == name {
			return nodes[i]
		}
	}
	return nil
}

// close ends a launch still going on, then shuts the agents down.
func (c *runCluster) close(grace time.Duration) error {
	c.cancel(errRunEnded)
	<-c.done
	ctx, cancel := context.WithTimeout(context.Background(), grace+30*time.Second)
	defer cancel()
	return c.m.Close(ctx)
}

// plan is where the agents go: the launcher and what it needs, checked
// before anything starts.
type plan struct {
	launcher  string
	hosts     []string
	sshConfig string
	// sshTimeout: ssh gives up on a host after this long (ConnectTimeout).
	sshTimeout time.Duration
	alloc      *launch.Allocation
	// resources every node declares (--resource), and more by host (a
	// hostfile's columns).
	resources map[string]int64
	hostRes   map[string]map[string]int64
}

// clusterPlan checks the cluster flags: bad ones are usage errors.
func clusterPlan(launcher string, hosts []string, hostfile, sshConfig string, resources []string) (*plan, error) {
	p := &plan{launcher: launcher, sshConfig: sshConfig}
	if sshConfig != "" && launcher != "ssh" {
		return nil, usageError("--ssh-config is for the ssh launcher")
	}
	var err error
	if p.resources, err = parseResourceFlags(resources); err != nil {
		return nil, err
	}
	switch launcher {
	case "ssh":
		for _, h := range hosts {
			if h = strings.TrimSpace(h); h != "" {
				p.hosts = append(p.hosts, h)
			}
		}
		if hostfile != "" {
			data, err := os.ReadFile(hostfile)
			if err != nil {
				return nil, usageError("--hostfile: %v", err)
			}
			if err := p.readHostfile(hostfile, string(data)); err != nil {
				return nil, err
			}
		}
		if len(p.hosts) == 0 {
			return nil, usageError("the ssh launcher needs hosts: --hosts H1,H2 or --hostfile F")
		}
		for _, h := range p.hosts {
			if strings.HasPrefix(h, "-") || strings.ContainsAny(h, "'\"\\`$;&|<>()") {
				return nil, usageError("bad host %q", h)
			}
		}
		if sshConfig != "" {
			if _, err := os.Stat(sshConfig); err != nil {
				return nil, usageError("--ssh-config: %v", err)
			}
		}
	case "slurm":
		alloc, err := launch.SlurmAllocation(os.Getenv)
		if err != nil {
			return nil, usageError("--launcher slurm: %v", err)
		}
		p.alloc = alloc
	}
	return p, nil
}

// readHostfile takes the hosts of a hostfile: whitespace-separated, "#"
// starts a comment. A field NAME=N,... declares counted resources of the
// host before it on its line (node7 license=2 fpga=1).
func (p *plan) readHostfile(file, text string) error {
	n := 0
	for line := range strings.Lines(text) {
		n++
		line, _, _ = strings.Cut(line, "#")
		host := ""
		for _, field := range strings.Fields(line) {
			if !strings.Contains(field, "=") {
				host = field
				p.hosts = append(p.hosts, host)
				continue
			}
			if host == "" {
				return usageError("--hostfile %s:%d: resources %q before any host on the line", file, n, field)
			}
			res, err := topology.ParseResourceList(field)
			if err != nil {
				return usageError("--hostfile %s:%d: %v", file, n, err)
			}
			if p.hostRes == nil {
				p.hostRes = make(map[string]map[string]int64)
			}
			if p.hostRes[host] == nil {
				p.hostRes[host] = make(map[string]int64)
			}
			maps.Copy(p.hostRes[host], res)
		}
	}
	return nil
}

// listen is the manager's listen address: what the user gave, else the
// loopback for local agents and every address for remote ones (only
// holders of the run's credentials get in).
func (p *plan) listen(given string) string {
	if given != "" || p.launcher == "local" {
		return given
	}
	return ":0"
}

// launch starts the agents and waits for the nodes that launched.
func (p *plan) launch(ctx context.Context, m *manager.Manager, log *slog.Logger) ([]node.Node, error) {
	t0 := time.Now()
	var nodes []node.Node
	var err error
	switch p.launcher {
	case "ssh":
		if _, err = m.LaunchSSH(ctx, p.hosts, manager.SSHLaunch{ConfigFile: p.sshConfig, ConnectTimeout: p.sshTimeout, Resources: p.hostRes}); err == nil {
			nodes, err = m.WaitLaunched(ctx)
		}
	case "slurm":
		if err = m.LaunchSlurm(p.alloc, manager.SlurmLaunch{}); err == nil {
			nodes, err = m.WaitLaunched(ctx)
		}
	default:
		var name string
		if name, err = os.Hostname(); err == nil {
			err = m.LaunchLocal(name)
		}
		if err == nil {
			nodes, err = m.WaitNodes(ctx, 1)
		}
	}
	if err == nil {
		log.Info("agents up", "launcher", p.launcher, "nodes", len(nodes), "failed", len(m.LaunchFailures()), "took", time.Since(t0).Round(time.Millisecond))
	}
	return nodes, err
}

// agentStartTimeout bounds the wait for agents to dial in.
const agentStartTimeout = 30 * time.Second

// defaultSSHTimeout is --ssh-timeout's default.
const defaultSSHTimeout = 10 * time.Second

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
			j := &jobfile.Job{Name: name + "." + unsafeName.ReplaceAllString(n.Name(), "_"), Command: args, Node: n.Name(), Files: slices.Clone(f.files)}
			if err := j.Validate(); err != nil {
				return nil, &exitError{ExitUsage, err}
			}
			jobs = append(jobs, j)
		}
		return jobs, nil
	}
	j := &jobfile.Job{Name: name, Command: args, Repeat: f.repeat, Files: slices.Clone(f.files)}
	if len(f.matrix) > 0 {
		axes, err := parseMatrix(f.matrix)
		if err != nil {
			return nil, err
		}
		j.Matrix, j.Repeat = axes, 0
	}
	if err := j.Validate(); err != nil {
		return nil, &exitError{ExitUsage, err}
	}
	return []*jobfile.Job{j}, nil
}

// parseMatrix reads --matrix NAME=V1,V2,... flags into a job's matrix,
// in the order given (the first one outermost).
func parseMatrix(flags []string) ([]jobfile.Axis, error) {
	var axes []jobfile.Axis
	for _, m := range flags {
		name, vals, ok := strings.Cut(m, "=")
		if !ok || name == "" {
			return nil, usageError("--matrix wants NAME=V1,V2,..., got %q", m)
		}
		a := jobfile.Axis{Name: name}
		if vals != "" {
			a.Values = strings.Split(vals, ",")
		}
		axes = append(axes, a)
	}
	return axes, nil
}

// checkAdHocFiles checks --files before anything starts: each a regular
// file below dir (the current directory), which goes to the same relative
// path in the work dirs.
func checkAdHocFiles(files []string, dir string) error {
	var errs []error
	for _, f := range files {
		clean := filepath.Clean(f)
		if f == "" || filepath.IsAbs(f) || !filepath.IsLocal(clean) {
			errs = append(errs, fmt.Errorf("--files %q: give a path below the current directory; the file goes to the same path in each work dir", f))
			continue
		}
		if _, err := stagefile.Check(filepath.Join(dir, clean)); err != nil {
			errs = append(errs, fmt.Errorf("--files %s: %w", f, err))
		}
	}
	if len(errs) > 0 {
		return &exitError{ExitUsage, errors.Join(errs...)}
	}
	return nil
}

func printSummary(e *env, s *results.Summary, dir string) {
	var b strings.Builder
	fmt.Fprintf(&b, "%d instances: %d succeeded", s.Total, s.Succeeded)
	// Skipped are those --resume found done and those a dependency that
	// did not succeed held back, which have a reason.
	held := 0
	for in := range s.NotSucceeded() {
		if in.State == results.StateSkipped && in.Error != "" {
			held++
		}
	}
	for _, p := range []struct {
		n    int
		what string
	}{{s.Failed, "failed"}, {s.Lost, "lost"}, {s.Cancelled, "cancelled"},
		{held, "skipped (a dependency did not succeed)"}, {s.Skipped - held, "skipped (already done)"}} {
		if p.n > 0 {
			fmt.Fprintf(&b, ", %d %s", p.n, p.what)
		}
	}
	if s.StoppedBecause != "" {
		fmt.Fprintf(&b, "; stopped: %s", s.StoppedBecause)
	}
	fmt.Fprintf(&b, "; results in %s\n", dir)
	shown := 0
	for in := range s.NotSucceeded() {
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
