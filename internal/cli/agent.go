package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/launch"
	"github.com/drover-hpc/drover/internal/supervise"
	"github.com/drover-hpc/drover/internal/topology"
	"github.com/drover-hpc/drover/internal/wire"
)

// Version is reported by agents to the manager.
const Version = "0.1.0"

func newAgent(e *env) *cobra.Command {
	var guarded bool
	var gpuList string
	var resources []string
	jf := &joinFlags{}
	cmd := &cobra.Command{
		Use:   "agent [--join ADDR [--name N] [--token-file F]]",
		Short: "Run a node agent (started by the launchers, or by hand to join a drover serve)",
		Long: `Runs this node's agent: it dials the manager, runs the processes it is told
to, and reports their exits. Launchers start it and hand it its
configuration and credentials as one JSON object on stdin; the end of stdin
then means the manager is gone, and the agent stops every process it
started and exits. It does the same after --monitor-timeout without word
from the manager. It runs as two processes: a small guard, and below it
the agent proper; if the agent proper dies, even by SIGKILL, the guard
kills whatever it left behind.

With --join ADDR it joins a running drover serve that could not launch it:
it reads a one-time token from drover token on stdin (or --token-file F;
never give it on the command line), checks that ADDR is the serve that made
the token (the token pins its CA) before sending anything, and gets this
node's certificate, for a key it makes itself. The node is named by its
host name unless --name. The credentials are stored in --state-dir (mode
0600); without a token (empty stdin, or a terminal) they are used again, so
a node rejoins without a new token. If serve gives the node up (it was
silent longer than serve's --node-timeout), the agent stops what it ran and
joins again by itself; it exits when serve shuts it down, on SIGTERM or
Ctrl-C, or when serve no longer accepts its certificate (a new serve: join
with a new token). Exit status 2: bad flags or not a token; 1: the token or
the node was refused, or serve is not the one of the token.

--gpus LIST sets the GPUs the node offers, whatever the hardware or
CUDA_VISIBLE_DEVICES and the like say (ids or UUIDs, "amd:0", or "none");
--resource NAME=N,... declares counted resources (licenses, FPGAs) that
jobs ask for with resources: {NAME: N}. Both apply with or without --join.`,
		Example: `  drover token | ssh node7 drover agent --join serve-host:7701
  drover agent --join serve-host:7701 --name gpu1 --token-file /run/drover.token
  drover agent --join serve-host:7701 </dev/null   # again, with the stored credentials
  drover agent --join serve-host:7701 --gpus 0,1 --resource license=2 --token-file /run/drover.token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, fl := range []string{"name", "token-file", "state-dir", "shared-fs"} {
				if jf.join == "" && cmd.Flags().Changed(fl) {
					return usageError("--%s needs --join", fl)
				}
			}
			var err error
			if jf.decl, err = parseNodeDecl(gpuList, cmd.Flags().Changed("gpus"), resources); err != nil {
				return err
			}
			switch {
			case !guarded:
				return guardAgent(e)
			case jf.join != "":
				return runJoin(e, jf)
			}
			return runAgent(e, jf.decl)
		},
	}
	cmd.Flags().BoolVar(&guarded, guardedFlag, false, "run as the agent proper, below its guard")
	cmd.Flags().StringVar(&jf.join, "join", "", "join the drover serve whose enrolment listener is at HOST:PORT (drover token prints it)")
	cmd.Flags().StringVar(&jf.name, "name", "", "with --join: the node's name (default: the host name)")
	cmd.Flags().StringVar(&jf.tokenFile, "token-file", "", "with --join: read the token from this file instead of stdin")
	cmd.Flags().StringVar(&jf.stateDir, "state-dir", "", "with --join: where the node's credentials are kept (default: $DROVER_HOME/join, DROVER_HOME default ~/.drover)")
	cmd.Flags().BoolVar(&jf.sharedFS, "shared-fs", false, "with --join: this node sees serve's files under the same paths (else files and outputs cross the session)")
	cmd.Flags().StringVar(&gpuList, "gpus", "", `the GPUs this node offers, whatever is detected or CUDA_VISIBLE_DEVICES and the like say: ids or UUIDs ("0,1", "amd:0"), or "none"`)
	cmd.Flags().StringArrayVar(&resources, "resource", nil, "counted resources this node declares, NAME=N,... (license=2,fpga=1); repeatable")
	_ = cmd.Flags().MarkHidden(guardedFlag)
	return cmd
}

// nodeDecl is what drover agent is told of its node besides what it
// detects: --gpus and --resource.
type nodeDecl struct {
	gpus   []string // nil: detect
	custom map[string]int64
}

func parseNodeDecl(gpuList string, gpusGiven bool, resources []string) (nodeDecl, error) {
	var d nodeDecl
	if gpusGiven {
		var err error
		if d.gpus, err = topology.ParseGPUList(gpuList); err != nil {
			return d, usageError("--gpus: %v", err)
		}
	}
	custom, err := parseResourceFlags(resources)
	if err != nil {
		return d, err
	}
	d.custom = custom
	return d, nil
}

// parseResourceFlags reads repeated --resource NAME=N,... flags; nil for
// none.
func parseResourceFlags(flags []string) (map[string]int64, error) {
	var out map[string]int64
	for _, f := range flags {
		m, err := topology.ParseResourceList(f)
		if err != nil {
			return nil, usageError("--resource: %v", err)
		}
		for k, v := range m {
			if _, dup := out[k]; dup {
				return nil, usageError("--resource: %s is given twice", k)
			}
			if out == nil {
				out = make(map[string]int64)
			}
			out[k] = v
		}
	}
	return out, nil
}

const guardedFlag = "guarded"

// guardAgent runs the agent proper as a child of this process (the guard),
// so that when it dies, even by SIGKILL, whatever is left below it is
// killed: see supervise.Guard. The guard reads nothing: the agent inherits
// stdin (its configuration, then the lifeline), stdout and stderr.
func guardAgent(e *env) error {
	log := e.logger(e.stderr)
	exe, err := os.Executable()
	if err != nil {
		return &exitError{ExitFailed, fmt.Errorf("agent guard: %w", err)}
	}
	argv := append(slices.Clone(os.Args), "--"+guardedFlag)
	status, killed, err := supervise.Guard(log, exe, argv, os.Environ())
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	if killed > 0 || status.Signaled() {
		log.Warn("agent guard: the agent ended; killed what was left below it",
			"status", describeStatus(status), "killed", killed)
	}
	switch {
	case status.Exited() && status.ExitStatus() == 0:
		return nil
	case status.Exited():
		return &exitError{status.ExitStatus(), errors.New("")}
	default:
		return &exitError{128 + int(status.Signal()), errors.New("")}
	}
}

func describeStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

func runAgent(e *env, decl nodeDecl) error {
	cfg, err := launch.ReadConfig(os.Stdin)
	if err != nil {
		return usageError("%v", err)
	}
	if cfg, err = cfg.Select(agentNames()...); err != nil {
		return &exitError{ExitFailed, err}
	}
	if cfg.LogLevel != "" {
		if err := e.level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return usageError("agent log level: %v", err)
		}
	}
	log := e.logger(e.stderr)
	tlsConf, err := cfg.Credentials.ClientTLS("")
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	res, err := agentResources(cfg, decl, log)
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	managerAddr := cfg.Manager
	if len(cfg.ManagerAddrs) > 0 {
		if managerAddr, err = pickManager(cfg.ManagerAddrs, tlsConf, log); err != nil {
			log.Error("agent: cannot reach the manager", "err", err)
			return &exitError{ExitFailed, err}
		}
	}
	a, err := agent.New(agent.Options{Name: cfg.Node, Resources: res, Logger: log, Level: e.level, Scratch: cfg.Scratch})
	if err != nil {
		return &exitError{ExitFailed, err}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The lifeline: stdin ends when the manager (or the ssh connection to
	// it) is gone.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		log.Info("stdin closed: the manager is gone")
		cancel()
	}()
	err = wire.RunAgent(ctx, wire.AgentOptions{
		Node: a,
		Dial: func(context.Context) (*grpc.ClientConn, error) {
			return grpc.NewClient(managerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
		},
		Version:        Version,
		RemoteFS:       cfg.RemoteFS,
		Scratch:        cfg.Scratch,
		MonitorTimeout: cfg.MonitorTimeout,
		Grace:          cfg.Grace,
		Logger:         log,
	})
	closeErr := a.Close()
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		if closeErr != nil {
			log.Warn("agent close", "err", closeErr)
		}
		return nil
	default:
		log.Error("agent stopped", "err", err)
		return errFailed
	}
}

// agentNames are the names this node may have in a many-node config (an
// srun broadcast): Slurm's name for it, then its hostname, then the
// hostname without its domain. Each is matched exactly.
func agentNames() []string {
	var names []string
	if n := os.Getenv("SLURMD_NODENAME"); n != "" {
		names = append(names, n)
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
		if short, _, ok := strings.Cut(h, "."); ok && short != "" {
			names = append(names, short)
		}
	}
	return names
}

// agentResources detects the node's resources. When the launcher says how
// many CPUs the allocation gives the job here (Slurm), the agent reports
// that share rather than only the mask its own step got (MUSCLE3 #318: a
// step bound to one core made everything run on that core): with fewer
// hardware threads in its affinity mask than expected it widens to its
// cgroup cpuset, which for a step of the whole allocation is the job's
// CPUs on the node, and it can bind its children anywhere in it; with
// more (no cgroup confinement) it keeps whole cores, lowest first, up to
// the expected count.
//
// Counted resources come from the launcher (drover run or serve
// --resource, a hostfile) and from the agent's own --resource, which wins.
func agentResources(cfg *launch.AgentConfig, decl nodeDecl, log *slog.Logger) (topology.Resources, error) {
	res, err := topology.Detect(topology.Options{Hostname: cfg.Node, GPUs: decl.gpus})
	if len(cfg.Resources)+len(decl.custom) > 0 {
		res.Custom = maps.Clone(cfg.Resources)
		if res.Custom == nil {
			res.Custom = make(map[string]int64)
		}
		maps.Copy(res.Custom, decl.custom)
	}
	if err != nil || cfg.ExpectCPUs <= 0 {
		return res, err
	}
	n := threadCount(res)
	if n < cfg.ExpectCPUs {
		wide, err := topology.Detect(topology.Options{Hostname: cfg.Node, IgnoreAffinity: true, GPUs: decl.gpus})
		wide.Custom = res.Custom
		if err == nil && threadCount(wide) > n {
			log.Info("agent: the step's CPU mask is narrower than the job's share of this node; using the cgroup's CPUs",
				"mask_hwthreads", n, "cgroup_hwthreads", threadCount(wide), "job_cpus", cfg.ExpectCPUs)
			res, n = wide, threadCount(wide)
		}
		if n < cfg.ExpectCPUs {
			log.Warn("agent: fewer hardware threads usable than the allocation gives the job on this node",
				"usable", n, "job_cpus", cfg.ExpectCPUs)
		}
	}
	if n > cfg.ExpectCPUs {
		var kept [][]int
		total := 0
		for _, core := range res.Cores {
			if total >= cfg.ExpectCPUs {
				break
			}
			kept = append(kept, core)
			total += len(core)
		}
		log.Info("agent: keeping the job's share of this node", "usable", n, "job_cpus", cfg.ExpectCPUs, "kept_hwthreads", total)
		res.Cores = kept
	}
	return res, nil
}

func threadCount(r topology.Resources) int {
	n := 0
	for _, c := range r.Cores {
		n += len(c)
	}
	return n
}

// pickManager finds which of the candidate addresses reaches the run's
// manager: the first to complete a TLS handshake in which the manager
// proves its certificate. Addresses in a subnet of one of this node's own
// interfaces are tried first, the rest only when none of those answers.
func pickManager(cands []string, tlsConf *tls.Config, log *slog.Logger) (string, error) {
	var near, far []string
	for _, c := range cands {
		if onLocalSubnet(c) {
			near = append(near, c)
		} else {
			far = append(far, c)
		}
	}
	var errs []error
	for _, group := range [][]string{near, far} {
		if len(group) == 0 {
			continue
		}
		addr, err := firstHandshake(group, tlsConf)
		if err == nil {
			log.Debug("agent: manager reached", "addr", addr)
			return addr, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("none of the manager's addresses %v answered: %w", cands, errors.Join(errs...))
}

func firstHandshake(addrs []string, tlsConf *tls.Config) (string, error) {
	conf := tlsConf.Clone()
	conf.NextProtos = []string{"h2"}
	type result struct {
		addr string
		err  error
	}
	results := make(chan result, len(addrs))
	for _, a := range addrs {
		go func() {
			d := &net.Dialer{Timeout: 5 * time.Second}
			conn, err := tls.DialWithDialer(d, "tcp", a, conf)
			if err == nil {
				conn.Close()
			}
			results <- result{a, err}
		}()
	}
	var errs []error
	for range addrs {
		r := <-results
		if r.err == nil {
			return r.addr, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
	}
	return "", errors.Join(errs...)
}

func onLocalSubnet(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.Contains(ip) {
			return true
		}
	}
	return false
}
