package launch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Allocation is the Slurm job this process runs in.
type Allocation struct {
	JobID string
	Nodes []string       // SLURM_JOB_NODELIST, expanded
	CPUs  map[string]int // SLURM_JOB_CPUS_PER_NODE by node; nil when unknown
}

// SlurmAllocation reads the allocation from the environment (getenv is
// os.Getenv in production).
func SlurmAllocation(getenv func(string) string) (*Allocation, error) {
	id := getenv("SLURM_JOB_ID")
	if id == "" {
		return nil, fmt.Errorf("not inside a Slurm allocation (SLURM_JOB_ID is not set)")
	}
	list := getenv("SLURM_JOB_NODELIST")
	if list == "" {
		list = getenv("SLURM_NODELIST")
	}
	if list == "" {
		return nil, fmt.Errorf("Slurm job %s: SLURM_JOB_NODELIST is not set", id)
	}
	nodes, err := ParseHostlist(list)
	if err != nil {
		return nil, fmt.Errorf("SLURM_JOB_NODELIST: %w", err)
	}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if seen[n] {
			return nil, fmt.Errorf("SLURM_JOB_NODELIST %q names %s twice", list, n)
		}
		seen[n] = true
	}
	a := &Allocation{JobID: id, Nodes: nodes}
	if s := getenv("SLURM_JOB_CPUS_PER_NODE"); s != "" {
		counts, err := ParseCPUsPerNode(s)
		if err != nil {
			return nil, fmt.Errorf("SLURM_JOB_CPUS_PER_NODE: %w", err)
		}
		if len(counts) == len(nodes) {
			a.CPUs = make(map[string]int, len(nodes))
			for i, n := range nodes {
				a.CPUs[n] = counts[i]
			}
		}
	}
	return a, nil
}

var srunVersionRE = regexp.MustCompile(`(?m)^slurm(?:-wlm)? (\d+)\.(\d+)`)

// ParseSrunVersion reads "slurm 22.05.8" (srun --version).
func ParseSrunVersion(out string) (major, minor int, err error) {
	m := srunVersionRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("srun --version: unexpected output %q", strings.TrimSpace(out))
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, nil
}

// SrunArgs is the one step that runs an agent on each of n nodes. overlap
// lets the agents' step share the job's CPUs with any steps the work
// itself starts (srun >= 20.11); --ntasks is explicit because srun <=
// 23.02 inherits the batch task count and would start one agent per CPU;
// --cpu-bind=none leaves the agent its whole share of the node (it binds
// each process itself); one agent failing must not take the others down;
// every agent reads the same stdin.
func SrunArgs(n int, overlap bool, exe string) []string {
	args := []string{
		"--nodes=" + strconv.Itoa(n), "--ntasks=" + strconv.Itoa(n), "--ntasks-per-node=1",
	}
	if overlap {
		args = append(args, "--overlap")
	}
	return append(args, "--cpu-bind=none", "--kill-on-bad-exit=0", "--input=all", "--mpi=none",
		"--job-name=drover-agents", exe, "agent")
}

// srunShapeVars are srun input variables that an allocation exports and
// that would shape the agents' step (fewer CPUs, one task per CPU, a
// bind): the step's shape is given on the command line instead.
var srunShapeVars = []string{
	"SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_CORE",
	"SLURM_NTASKS_PER_SOCKET", "SLURM_NTASKS_PER_GPU", "SLURM_CPUS_PER_TASK", "SLURM_CPU_BIND",
	"SLURM_EXACT", "SLURM_HINT", "SLURM_DISTRIBUTION", "SLURM_THREADS_PER_CORE",
	"SLURM_TRES_PER_TASK", "SLURM_GPUS_PER_TASK", "SLURM_MEM_PER_CPU", "SLURM_EXCLUSIVE",
	"SLURM_WHOLE", "SLURM_OVERLAP", "SLURM_ARBITRARY", "SLURM_HOSTFILE", "SLURM_NODES", "SLURM_NNODES",
}

// SrunEnv is env without srunShapeVars.
func SrunEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, v := range srunShapeVars {
			if k == v {
				drop = true
				break
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// SlurmOptions configure StartSrun.
type SlurmOptions struct {
	Srun  string // "" = "srun"
	Exe   string // the drover binary, at a path valid on every node
	Nodes int
	// NodeList names the nodes of the step (srun --nodelist); "" lets
	// srun pick them from the allocation.
	NodeList string
	Env      []string  // srun's environment; nil = this process's
	Logs     io.Writer // the agents' logs and srun's messages; nil = discard
	// OnTaskExit is told, from srun's messages, of a node whose agent
	// exited (reason is srun's line).
	OnTaskExit func(node, reason string)
}

// Step is the srun step running every node's agent.
type Step struct {
	cmd   *exec.Cmd
	stdin *os.File
	once  sync.Once
	done  chan struct{}
	err   error
	tail  *tailBuffer
}

var _ Agent = (*Step)(nil)

// SrunSupportsOverlap asks srun for its version: --overlap exists since
// 20.11. An srun that does not answer gets no --overlap.
func SrunSupportsOverlap(srun string, env []string) bool {
	if srun == "" {
		srun = "srun"
	}
	cmd := exec.Command(srun, "--version")
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return false
	}
	major, minor, err := ParseSrunVersion(string(out))
	return err == nil && (major > 20 || (major == 20 && minor >= 11))
}

// taskExitRE matches srun's report of a task that ended:
// "srun: error: h2: task 1: Exited with exit code 2".
var taskExitRE = regexp.MustCompile(`^srun: error: (\S+): tasks? [0-9,\-]+: (.*)$`)

// StartSrun starts the step and broadcasts cfg (a many-node config) to
// every agent; stdin stays open as their lifeline.
func StartSrun(opts SlurmOptions, cfg *AgentConfig) (*Step, error) {
	prog := opts.Srun
	if prog == "" {
		prog = "srun"
	}
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	env = SrunEnv(env)
	logs := opts.Logs
	if logs == nil {
		logs = io.Discard
	}
	args := SrunArgs(opts.Nodes, SrunSupportsOverlap(prog, env), opts.Exe)
	if opts.NodeList != "" {
		args = append([]string{"--nodelist=" + opts.NodeList}, args...)
	}
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	cmd.Stdout = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("srun: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("srun: %w", err)
	}
	cmd.Stdin, cmd.Stderr = inR, errW
	err = cmd.Start()
	inR.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", prog, err)
	}
	s := &Step{cmd: cmd, stdin: inW, done: make(chan struct{}), tail: &tailBuffer{max: 4096}}
	s.tail.forward(logs)
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		defer errR.Close()
		sc := bufio.NewScanner(errR)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			_, _ = s.tail.Write([]byte(line + "\n"))
			if m := taskExitRE.FindStringSubmatch(line); m != nil && opts.OnTaskExit != nil {
				opts.OnTaskExit(m[1], "srun: "+m[2])
			}
		}
		_, _ = io.Copy(io.Discard, errR)
	}()
	go func() {
		werr := cmd.Wait()
		select {
		case <-stderrDone:
		case <-time.After(2 * time.Second):
		}
		s.err = werr
		close(s.done)
	}()
	if err := json.NewEncoder(inW).Encode(cfg); err != nil {
		s.Kill()
		return nil, fmt.Errorf("srun: hand over the agent config: %v%s", err, s.tailSuffix())
	}
	return s, nil
}

func (s *Step) tailSuffix() string { return suffix(s.tail.lines()) }

// Done is closed when srun has exited.
func (s *Step) Done() <-chan struct{} { return s.done }

// Err is srun's exit error with its last messages; valid after Done.
func (s *Step) Err() error {
	if s.err == nil {
		return nil
	}
	return fmt.Errorf("srun: %w%s", s.err, s.tailSuffix())
}

// Ended reports whether srun ended by itself: then every task of the step,
// each an agent, has ended.
func (s *Step) Ended() bool { return exitedBySelf(s.err, -1) }

// stepGrace is how long Stop waits for the agents to end by themselves
// before it has srun cancel the step.
const stepGrace = 15 * time.Second

// Stop closes the agents' stdin (they stop their processes and exit, and
// the step ends); after stepGrace, or when ctx ends, srun is told to
// cancel the step (SIGTERM: Slurm kills whatever is left of it), and is
// killed when even that does not end it.
func (s *Step) Stop(ctx context.Context) error {
	s.once.Do(func() { s.stdin.Close() })
	t := time.NewTimer(stepGrace)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return fmt.Errorf("srun step did not end by itself; cancelled")
	case <-time.After(5 * time.Second):
	}
	s.Kill()
	return fmt.Errorf("srun did not end; killed")
}

// Kill cancels the step at once: two SIGINTs within a second make srun
// kill every task; SIGKILL follows if srun lingers.
func (s *Step) Kill() {
	s.once.Do(func() { s.stdin.Close() })
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}
