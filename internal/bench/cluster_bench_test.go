package bench

// Cluster benchmarks on the multi-host test bed (scripts/testbed): hosts
// h1..h3 in network namespaces with sshds and slurmds, sharing this
// machine's file system (so the drover binary and the trivial program built
// under the temp directory exist on every host at the same path). They skip
// where the bed cannot run. Network: only the bed's addresses.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/testbed"
)

const (
	// clusterN is the instance count of the throughput runs: the 2,000 of
	// the local throughput run, so that the cluster's rate is set against
	// the local raw loop's on the same work.
	clusterN = 2000
	// srunStepsDefault is how many srun steps the srun loop runs
	// (DROVER_BENCH_SRUN_STEPS): fewer than clusterN, as steps are slow;
	// it is compared per instance.
	srunStepsDefault = 300
	// parallelJobsDefault is how many jobs GNU Parallel runs over ssh
	// (DROVER_BENCH_PARALLEL_JOBS): fewer than clusterN, as each is an
	// ssh session (a few per second on this machine when loaded: 2,000
	// did not finish within cmdTimeout); it is compared per instance.
	parallelJobsDefault = 100
	// cmdTimeout bounds every command a benchmark runs.
	cmdTimeout = 12 * time.Minute
)

// clusterBed is the bed with the tools built and the slurm environment
// (bed.Env() without DROVER_* variables, as the e2e tests use).
type clusterBed struct {
	bed      *testbed.Bed
	t        tools
	slurmEnv []string
	hosts    string // h1,h2,h3
	cores    int    // cores each host offers (they share this machine)
	wrapper  string // records start and end times around a command
}

func requireCluster(b *testing.B, needSlurm bool) *clusterBed {
	b.Helper()
	bed := testbed.Require(b)
	if needSlurm {
		for _, c := range []string{"salloc", "srun"} {
			if _, err := exec.LookPath(c); err != nil {
				b.Skipf("no %s", c)
			}
		}
	}
	t := setup(b)
	c := &clusterBed{bed: bed, t: t, hosts: strings.Join(bed.Names(), ","), cores: parallelism(b)}
	for _, kv := range bed.Env() {
		if !strings.HasPrefix(kv, "DROVER_") {
			c.slurmEnv = append(c.slurmEnv, kv)
		}
	}
	// The wrapper runs its arguments and writes "START_NS END_NS" to
	// $DROVER_BENCH_TIMES: the time of the command itself, inside the
	// allocation, without salloc's wait for it.
	c.wrapper = filepath.Join(filepath.Dir(t.drover), "timed.sh")
	script := "#!/bin/bash\nstart=$(date +%s%N)\n\"$@\"\nrc=$?\nend=$(date +%s%N)\necho \"$start $end\" >\"$DROVER_BENCH_TIMES\"\nexit $rc\n"
	if err := os.WriteFile(c.wrapper, []byte(script), 0o755); err != nil {
		b.Fatal(err)
	}
	// The ssh launcher deploys the binary into the (shared) cache: leave
	// no copy of this build behind.
	if sum, err := fileSum(t.drover); err == nil {
		home, _ := os.UserHomeDir()
		cache := filepath.Join(home, ".cache", "drover", sum)
		b.Cleanup(func() { os.RemoveAll(cache) })
	}
	return c
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// run runs name args with env (nil: this process's), bounded by
// cmdTimeout; it fails the benchmark unless the command exits 0, and
// returns its combined output and wall time.
func run(b *testing.B, env []string, name string, args ...string) (string, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		b.Fatalf("%s %q did not finish within %v\n%s", name, args, cmdTimeout, tail(out.String()))
	}
	if err != nil {
		b.Fatalf("%s %q: %v\n%s", name, args, err, tail(out.String()))
	}
	return out.String(), took
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// inAlloc runs argv inside `salloc -N<hosts>` through the timing wrapper
// and returns the output, when argv started and how long it took (without
// salloc's wait for the allocation).
func (c *clusterBed) inAlloc(b *testing.B, argv ...string) (string, time.Time, time.Duration) {
	b.Helper()
	times := filepath.Join(b.TempDir(), "times")
	env := append(append([]string(nil), c.slurmEnv...), "DROVER_BENCH_TIMES="+times)
	args := append([]string{fmt.Sprintf("-N%d", len(c.bed.Hosts)), "--time=15", "--immediate=120", c.wrapper}, argv...)
	out, _ := run(b, env, "salloc", args...)
	data, err := os.ReadFile(times)
	if err != nil {
		b.Fatalf("inside salloc: %v\n%s", err, tail(out))
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		b.Fatalf("times file %q", data)
	}
	start, err1 := strconv.ParseInt(f[0], 10, 64)
	end, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("times file %q", data)
	}
	return out, time.Unix(0, start), time.Duration(end - start)
}

// droverArgs is `drover run` of n instances of prog (the trivial program
// when empty) into out, over ssh when ssh is true (else for the slurm
// launcher, inside an allocation).
func (c *clusterBed) droverArgs(ssh bool, out string, n int, prog ...string) []string {
	args := []string{c.t.drover, "--log-level", "info", "run", "--progress", "none", "--out", out}
	if ssh {
		args = append(args, "--hosts", c.hosts, "--ssh-config", c.bed.SSHConfig)
	}
	if len(prog) == 0 {
		prog = []string{c.t.trivial}
	}
	return append(append(args, "--repeat", strconv.Itoa(n), "--"), prog...)
}

// droverCluster runs n instances of prog (the trivial program when empty)
// through drover, over ssh or inside salloc, and returns its output,
// results directory, the time it started (wall clock) and its wall time.
func (c *clusterBed) droverCluster(b *testing.B, ssh bool, n int, prog ...string) (string, string, time.Time, time.Duration) {
	b.Helper()
	out := filepath.Join(b.TempDir(), "out")
	argv := c.droverArgs(ssh, out, n, prog...)
	if ssh {
		start := time.Now()
		o, took := run(b, c.slurmEnv, argv[0], argv[1:]...)
		return o, out, start, took
	}
	o, start, took := c.inAlloc(b, argv...)
	return o, out, start, took
}

// readEvents reads OUT/events.jsonl.
func readEvents(b *testing.B, out string) []results.Event {
	b.Helper()
	f, err := os.Open(filepath.Join(out, results.EventsFile))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var evs []results.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e results.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			b.Fatalf("events.jsonl: %v: %s", err, sc.Bytes())
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return evs
}

// upTimes is run-start's time, the last node-up's time and how many nodes
// came up.
func upTimes(b *testing.B, evs []results.Event) (time.Time, time.Time, int) {
	b.Helper()
	var start, last time.Time
	nodes := 0
	for _, e := range evs {
		switch e.Event {
		case results.RunStart:
			start = e.Time
		case results.NodeUp:
			nodes++
			if e.Time.After(last) {
				last = e.Time
			}
		}
	}
	if start.IsZero() || last.IsZero() {
		b.Fatalf("events.jsonl has no run-start or node-up: %+v", evs)
	}
	return start, last, nodes
}

var agentsTookRE = regexp.MustCompile(`msg="agents up".*took=(\S+)`)

// BenchmarkAgentsUp measures how long `drover run` takes to get its agents
// up on the bed's 3 hosts, over ssh and inside `salloc -N3`, after one
// warm-up run (so the ssh launcher's binary is already deployed). Each run
// is 3 instances of `sleep 10`: drover run starts with its first node up
// and the others join as they come up, so a run of trivial instances
// could end before they all did. From its events.jsonl it reports:
//
//   - <launcher>-agents-up-ms: from starting drover (exec, or the wrapper's
//     clock inside the allocation) to the last node-up event;
//   - <launcher>-runstart-to-nodeup-ms: from run-start to the last node-up.
//     drover writes run-start once its first node is up, so this span is
//     how much later the last one joined.
//
// drover's own "agents up ... took=" log line is logged beside them.
func BenchmarkAgentsUp(b *testing.B) {
	for _, launcher := range []string{"ssh", "slurm"} {
		b.Run(launcher, func(b *testing.B) {
			ssh := launcher == "ssh"
			c := requireCluster(b, !ssh)
			c.droverCluster(b, ssh, len(c.bed.Hosts)) // warm-up: deploy, caches
			for b.Loop() {
				o, out, start, _ := c.droverCluster(b, ssh, len(c.bed.Hosts), "sleep", "10")
				rs, last, nodes := upTimes(b, readEvents(b, out))
				if nodes != len(c.bed.Hosts) {
					b.Fatalf("%d nodes up, want %d\n%s", nodes, len(c.bed.Hosts), tail(o))
				}
				up := last.Sub(start)
				span := last.Sub(rs)
				took := "?"
				if m := agentsTookRE.FindStringSubmatch(o); m != nil {
					took = m[1]
				}
				b.ReportMetric(ms(up), launcher+"-agents-up-ms")
				b.ReportMetric(ms(span), launcher+"-runstart-to-nodeup-ms")
				b.Logf("%s: %d nodes up %.1f ms after drover started; run-start to last node-up %.3f ms; drover's log: agents up took=%s",
					launcher, nodes, ms(up), ms(span), took)
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// envCount is the positive count in the environment variable name, or
// def when it is unset.
func envCount(b *testing.B, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive count", name, s)
		}
		return n
	}
	return def
}

// BenchmarkClusterThroughput runs trivial instances across the bed's 3
// hosts with every host's cores busy:
//
//   - the local raw loop (see rawLoop): 2000 instances on this machine,
//     C at a time, with C the cores per host;
//   - drover over ssh: --repeat 2000 with --hosts h1,h2,h3 (wall time of
//     drover run, agent launch included);
//   - drover inside salloc -N3: --repeat 2000 (wall time of drover run
//     inside the allocation, agent launch included);
//   - GNU Parallel over ssh: DROVER_BENCH_PARALLEL_JOBS (default 100,
//     fewer than 2000: each job is an ssh session) jobs, --sshlogin
//     C/h1,C/h2,C/h3, one ssh per job, --results like drover's files;
//   - an srun loop inside salloc -N3: DROVER_BENCH_SRUN_STEPS (default 300,
//     fewer than 2000: each step is a round trip through slurmctld) steps of
//     `srun --exact -N1 -n1 -c1 TRIVIAL`, 3*C at a time (xargs -P).
//
// All are reported as instances/s, so the smaller counts of GNU Parallel
// and the srun loop are compared per instance; drover/parallel and drover/srun-loop are rate
// ratios against drover inside the same kind of cluster (ssh, slurm), and
// drover-ssh/local-raw and drover-slurm/local-raw against the local raw
// loop. The bed's hosts share this machine's cores, so the local raw loop
// is the floor the three hosts together can reach.
func BenchmarkClusterThroughput(b *testing.B) {
	c := requireCluster(b, false)
	_, slurmErr := exec.LookPath("salloc")
	_, srunErr := exec.LookPath("srun")
	haveSlurm := slurmErr == nil && srunErr == nil
	_, parErr := exec.LookPath("parallel")
	n := clusterN
	steps := envCount(b, "DROVER_BENCH_SRUN_STEPS", srunStepsDefault)
	jobs := envCount(b, "DROVER_BENCH_PARALLEL_JOBS", parallelJobsDefault)
	p := c.cores * len(c.bed.Hosts)
	rate := func(k int, d time.Duration) float64 { return float64(k) / d.Seconds() }
	// Warm-up: the ssh launcher's deployment, the allocation path.
	c.droverCluster(b, true, len(c.bed.Hosts))
	if haveSlurm {
		c.droverCluster(b, false, len(c.bed.Hosts))
	}
	for b.Loop() {
		raw, _, _ := rawLoop(b, c.t.trivial, n, c.cores)
		rRaw := rate(n, raw)
		b.ReportMetric(rRaw, "local-raw-inst/s")
		b.Logf("local raw loop: %d instances, %d at a time, in %v: %.0f inst/s", n, c.cores, raw.Round(time.Millisecond), rRaw)
		hosts := fmt.Sprintf("%d trivial instances across %d hosts", n, len(c.bed.Hosts))
		vsRaw := func(id, how string, r float64) {
			b.ReportMetric(r/rRaw, "drover-"+id+"/local-raw")
			figure(b, "cluster-"+id, hosts+", "+how,
				fmt.Sprintf("%.0f inst/s", r), fmt.Sprintf("local raw loop %.0f inst/s", rRaw),
				fmt.Sprintf("%.2fx", r/rRaw), ">= 0.7x local raw loop", yesNo(r/rRaw >= 0.7))
		}
		// The wall time above includes starting the agents (ssh's own
		// handshakes, an allocation's steps); this is the rate once all
		// of them are up.
		upRate := func(id, how string, evs []results.Event) {
			r, k := rateOnceUp(b, evs)
			b.ReportMetric(r/rRaw, "drover-"+id+"-once-up/local-raw")
			figure(b, "cluster-"+id+"-once-up", fmt.Sprintf("the %d instances that ran once all %d agents were up, %s", k, len(c.bed.Hosts), how),
				fmt.Sprintf("%.0f inst/s", r), fmt.Sprintf("local raw loop %.0f inst/s", rRaw),
				fmt.Sprintf("%.2fx", r/rRaw), "(no target: agent start-up left out)", "-")
		}

		_, outSSH, _, dSSH := c.droverCluster(b, true, n)
		evsSSH := readEvents(b, outSSH)
		checkFinished(b, evsSSH, n)
		rSSH := rate(n, dSSH)
		b.ReportMetric(rSSH, "drover-ssh-inst/s")
		b.Logf("drover over ssh: %d instances on %d hosts (%d cores each) in %v: %.0f inst/s, %.2fx the local raw loop",
			n, len(c.bed.Hosts), c.cores, dSSH.Round(time.Millisecond), rSSH, rSSH/rRaw)
		vsRaw("ssh", "over ssh", rSSH)
		upRate("ssh", "over ssh", evsSSH)

		var rSlurm float64
		if haveSlurm {
			_, outSlurm, _, dSlurm := c.droverCluster(b, false, n)
			evsSlurm := readEvents(b, outSlurm)
			checkFinished(b, evsSlurm, n)
			rSlurm = rate(n, dSlurm)
			b.ReportMetric(rSlurm, "drover-slurm-inst/s")
			b.Logf("drover inside salloc -N%d: %d instances in %v: %.0f inst/s, %.2fx the local raw loop",
				len(c.bed.Hosts), n, dSlurm.Round(time.Millisecond), rSlurm, rSlurm/rRaw)
			vsRaw("slurm", fmt.Sprintf("inside salloc -N%d", len(c.bed.Hosts)), rSlurm)
			upRate("slurm", fmt.Sprintf("inside salloc -N%d", len(c.bed.Hosts)), evsSlurm)
		}

		if parErr == nil {
			dPar := c.parallelSSH(b, jobs)
			rPar := rate(jobs, dPar)
			b.ReportMetric(rPar, "parallel-ssh-inst/s")
			b.ReportMetric(rSSH/rPar, "drover/parallel")
			b.Logf("GNU Parallel over ssh (--sshlogin %d/h each): %d jobs in %v: %.1f inst/s; drover over ssh is %.1fx",
				c.cores, jobs, dPar.Round(time.Millisecond), rPar, rSSH/rPar)
		} else {
			b.Logf("GNU Parallel not installed: no parallel figures")
		}

		if haveSlurm {
			o, _, dSrun := c.inAlloc(b, "bash", "-c",
				fmt.Sprintf("seq %d | xargs -P%d -I{} srun --exact -N1 -n1 -c1 %q", steps, p, c.t.trivial))
			rSrun := rate(steps, dSrun)
			b.ReportMetric(rSrun, "srun-loop-inst/s")
			b.ReportMetric(rSlurm/rSrun, "drover/srun-loop")
			b.Logf("srun loop inside salloc -N%d: %d steps (not %d), %d at a time, in %v: %.1f inst/s (%d step-creation retries); drover inside salloc is %.1fx per instance",
				len(c.bed.Hosts), steps, n, p, dSrun.Round(time.Millisecond), rSrun,
				strings.Count(o, "step creation temporarily disabled")+strings.Count(o, "step creation still disabled"), rSlurm/rSrun)
		} else {
			b.Logf("no salloc/srun: no slurm figures")
		}
	}
}

// parallelSSH runs n trivial jobs with GNU Parallel across the bed's hosts
// over ssh and returns its wall time.
func (c *clusterBed) parallelSSH(b *testing.B, n int) time.Duration {
	b.Helper()
	var logins []string
	for _, h := range c.bed.Names() {
		logins = append(logins, fmt.Sprintf("%d/%s", c.cores, h))
	}
	res := b.TempDir()
	input := filepath.Join(b.TempDir(), "input")
	var sb strings.Builder
	for i := range n {
		sb.WriteString(strconv.Itoa(i))
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(input, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	// Each job gets its own index as argument (the trivial program ignores
	// it) so --results keeps one directory per job, as drover does.
	_, d := run(b, nil, "parallel", "--will-cite", "--sshlogin", strings.Join(logins, ","),
		"--ssh", "ssh -F "+c.bed.SSHConfig, "--results", res, "--arg-file", input, c.t.trivial)
	got, err := os.ReadDir(filepath.Join(res, "1"))
	if err != nil || len(got) != n {
		b.Fatalf("parallel --results: %d job directories, want %d (%v)", len(got), n, err)
	}
	return d
}

// rateOnceUp is the rate at which instances finished from the last
// node-up event to the last finished one, and how many finished then.
func rateOnceUp(b *testing.B, evs []results.Event) (float64, int) {
	b.Helper()
	_, up, _ := upTimes(b, evs)
	var last time.Time
	k := 0
	for _, e := range evs {
		if e.Event == results.Finished && e.Time.After(up) {
			k++
			if e.Time.After(last) {
				last = e.Time
			}
		}
	}
	if k < 2 {
		b.Fatalf("%d instances finished after the last node came up", k)
	}
	return float64(k) / last.Sub(up).Seconds(), k
}

// checkFinished checks that the events say all n instances finished.
func checkFinished(b *testing.B, evs []results.Event, n int) {
	b.Helper()
	done := 0
	for _, e := range evs {
		if e.Event == results.Finished && e.ExitCode != nil && *e.ExitCode == 0 {
			done++
		}
	}
	if done != n {
		b.Fatalf("drover: %d of %d instances finished with exit 0", done, n)
	}
}
