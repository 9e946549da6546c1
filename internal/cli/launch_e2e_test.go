package cli_test

// End-to-end tests of the ssh and slurm launchers on the multi-host test
// bed (scripts/testbed): hosts h1..h3 in network namespaces with their own
// hostnames, sshds and slurmds, sharing this machine's file system. They
// skip where the bed cannot run. Network: only the bed's addresses.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// whereJob writes a job file whose instances say where they ran (their
// hostname and addresses), and stage a file in and an output back (over
// the agents' sessions: remote agents never read or write the manager's
// paths); marker is in every instance's command line. Work starts on each
// node as soon as it is up, so to spread over the hosts each instance
// takes a whole node (cores, what each has) and waits (bounded) until
// instances have started on hosts different hosts: a barrier in a
// directory of this file system, which the bed's hosts share.
func whereJob(t *testing.T, dir, marker string, hosts, cores int) string {
	writeFile(t, dir, "input.txt", "payload "+marker+"\n")
	barrier, err := os.MkdirTemp(dir, "barrier-")
	if err != nil {
		t.Fatal(err)
	}
	wait := fmt.Sprintf("touch %[1]s/$(hostname); i=0; while [ $(ls %[1]s | wc -l) -lt %[2]d ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done", barrier, hosts)
	return writeFile(t, dir, "where.yaml", fmt.Sprintf(`jobs:
  - name: where
    shell: ": %s; %s; cp input.txt got.out; echo {index} >> got.out; echo $(hostname) $(hostname -I)"
    repeat: 6
    cores: %d
    files: [input.txt]
    outputs: ["*.out"]
`, marker, wait, cores))
}

// instanceHosts reads OUT/where.N/stdout: hostname -> its addresses.
func instanceHosts(t *testing.T, out string, n int) map[string]string {
	t.Helper()
	hosts := map[string]string{}
	for i := range n {
		line := strings.TrimSpace(readFile(t, filepath.Join(out, fmt.Sprintf("where.%d", i), "stdout")))
		name, addrs, _ := strings.Cut(line, " ")
		if name == "" {
			t.Errorf("where.%d printed %q", i, line)
			continue
		}
		hosts[name] = strings.TrimSpace(addrs)
		got := readFile(t, filepath.Join(out, fmt.Sprintf("where.%d", i), "got.out"))
		if !strings.HasPrefix(got, "payload ") || !strings.HasSuffix(got, fmt.Sprintf("\n%d\n", i)) {
			t.Errorf("where.%d: staged file and output came back as %q", i, got)
		}
	}
	return hosts
}

// droverIn runs the drover binary with env (nil: testEnv()).
func droverIn(t *testing.T, dir string, env []string, prog string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
	cmd.Env = env
	if env == nil {
		cmd.Env = testEnv()
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("%s %q did not finish within %s\n%s", prog, args, backstop, r)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("%s %q: %v\n%s", prog, args, err, r)
	}
	return r
}

// noneLeft checks, on every host over ssh, that no process matches the
// pgrep pattern (a regexp written so it does not match the pgrep itself),
// allowing a few seconds for remote exits.
func noneLeft(t *testing.T, bed *testbed.Bed, hosts []string, pattern string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range hosts {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := bed.SSH(ctx, h, "pgrep", "-af", "'"+pattern+"'").CombinedOutput()
			cancel()
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == 1 {
				break // pgrep: nothing matches
			}
			if err != nil {
				t.Fatalf("ssh %s pgrep: %v: %s", h, err, out)
			}
			if time.Now().After(deadline) {
				t.Errorf("on %s, still running after the run: %s", h, out)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// ourAgents matches the agents this package's drover left on a bed host:
// the SSH launcher caches each binary under its hash, and every test
// package builds a drover of its own (e2e.Build).
func ourAgents(t *testing.T) string {
	t.Helper()
	return "[.]cache/drover/" + fileSHA(t, droverBin) + "/drover agent"
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var agentsUpRE = regexp.MustCompile(`msg="agents up".*took=(\S+)`)

func TestSSHRunSpreadsDeploysOnceAndCleansUp(t *testing.T) {
	bed := testbed.Require(t)
	dir := t.TempDir()
	marker := fmt.Sprintf("drover-ssh-e2e-%d", os.Getpid())
	sha := fileSHA(t, droverBin)
	// The bed's hosts share this file system and log in as root: their
	// cache is this machine's. Start without this build in it.
	home, _ := os.UserHomeDir()
	cache := filepath.Join(home, ".cache", "drover", sha)
	os.RemoveAll(cache)
	t.Cleanup(func() { os.RemoveAll(cache) })

	hosts := bed.Names()
	// The hosts share this file system: on the first run one copy
	// serves all, on the second every host has it already.
	for run, want := range []struct{ copies, found int }{{1, len(hosts) - 1}, {0, 0}} {
		out := filepath.Join(dir, fmt.Sprintf("out%d", run))
		job := whereJob(t, dir, marker, len(hosts), len(localResources(t).Cores))
		r := drover(t, dir, "--log-level", "info", "run", "--hosts", strings.Join(hosts, ","),
			"--ssh-config", bed.SSHConfig, "--out", out, "--progress", "none", job)
		wantCode(t, r, 0)
		if m := agentsUpRE.FindStringSubmatch(r.stderr); m != nil {
			t.Logf("run %d: ssh agents up on %d hosts in %s", run, len(hosts), m[1])
		}
		deploys := strings.Count(r.stderr, `msg="deployed agent binary"`)
		found := strings.Count(r.stderr, `msg="agent binary found where another host's copy went`)
		if deploys != want.copies || found != want.found {
			t.Errorf("run %d: the binary was copied %d times and found %d times, want %d and %d\n%s",
				run, deploys, found, want.copies, want.found, r.stderr)
		}
		got := instanceHosts(t, out, 6)
		for _, h := range bed.Hosts {
			if addrs, ok := got[h.Name]; !ok {
				t.Errorf("run %d: no instance ran on %s: %v", run, h.Name, got)
			} else if !slices.Contains(strings.Fields(addrs), h.Addr) {
				t.Errorf("run %d: instance on %s printed addresses %q, want %s among them", run, h.Name, addrs, h.Addr)
			}
		}
		if len(got) != len(hosts) {
			t.Errorf("run %d: instances ran on %v", run, got)
		}
		noneLeft(t, bed, hosts, "[.]cache/drover/"+sha+"/drover agent")
		noneLeft(t, bed, hosts, "[:] "+marker)
	}
}

func TestSSHBadHostsReportedRunGoesOn(t *testing.T) {
	bed := testbed.Require(t)
	dir := t.TempDir()
	job := whereJob(t, dir, "drover-ssh-bad-e2e", 2, len(localResources(t).Cores))
	wrongKey := filepath.Join(dir, "wrong_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", wrongKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	goodKey := filepath.Join(bed.Dir, "id_ed25519")
	var cfg strings.Builder
	common := "  User root\n  IdentitiesOnly yes\n  IdentityAgent none\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n"
	// badkey is h3 with a key h3 does not accept; unreachable is an
	// address of the bed's subnet where no host is.
	fmt.Fprintf(&cfg, "Host badkey\n  HostName %s\n  IdentityFile %s\n  ConnectTimeout 5\n%s", bed.Hosts[len(bed.Hosts)-1].Addr, wrongKey, common)
	fmt.Fprintf(&cfg, "Host unreachable\n  HostName 10.231.0.99\n  ConnectTimeout 2\n")
	for _, h := range bed.Hosts {
		fmt.Fprintf(&cfg, "Host %s\n  HostName %s\n", h.Name, h.Addr)
	}
	fmt.Fprintf(&cfg, "Host * !badkey\n  IdentityFile %s\n  ConnectTimeout 10\n%s", goodKey, common)
	sshConfig := writeFile(t, dir, "ssh_config", cfg.String())

	good := bed.Names()[:2]
	out := filepath.Join(dir, "out")
	// The run must outlast the unreachable host's connect timeout, or it
	// ends before that host fails: the instances wait (bounded) until the
	// run has logged the failure.
	gate := fmt.Sprintf(`i=0; until grep -qs '\"node\":\"unreachable\"' %s || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; `, filepath.Join(out, "events.jsonl"))
	writeFile(t, dir, "where.yaml", strings.Replace(readFile(t, job), `shell: "`, `shell: "`+gate, 1))
	r := drover(t, dir, "run", "--hosts", strings.Join(append(slices.Clone(good), "unreachable", "badkey"), ","),
		"--ssh-config", sshConfig, "--out", out, "--progress", "none", job)
	wantCode(t, r, 0)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`node unreachable not used: ssh: connect to host 10\.231\.0\.99 port 22: (Connection timed out|No route to host)`),
		regexp.MustCompile(`node badkey not used: .*Permission denied`),
	} {
		if !want.MatchString(r.stderr) {
			t.Errorf("stderr lacks %s\n%s", want, r)
		}
	}
	got := instanceHosts(t, out, 6)
	if len(got) != len(good) {
		t.Errorf("instances ran on %v, want %v", got, good)
	}
	for _, h := range good {
		if _, ok := got[h]; !ok {
			t.Errorf("nothing ran on %s: %v", h, got)
		}
	}

	// With no good host left the run fails, naming every host's reason.
	r = drover(t, dir, "run", "--hosts", "unreachable,badkey", "--ssh-config", sshConfig,
		"--out", filepath.Join(dir, "out2"), "--progress", "none", job)
	wantCode(t, r, 1)
	for _, want := range []string{"node unreachable not used: ssh: connect to host 10.231.0.99", "node badkey not used: ", "Permission denied", "no node came up"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q\n%s", want, r)
		}
	}
}

func TestSlurmRunSpreadsAndCleansUp(t *testing.T) {
	bed := testbed.Require(t)
	if _, err := exec.LookPath("salloc"); err != nil {
		t.Skip("no salloc")
	}
	dir := t.TempDir()
	marker := fmt.Sprintf("drover-slurm-e2e-%d", os.Getpid())
	job := whereJob(t, dir, marker, len(bed.Hosts), 1) // the bed's allocation: one CPU a node
	out := filepath.Join(dir, "out")
	var env []string
	for _, kv := range bed.Env() {
		if !strings.HasPrefix(kv, "DROVER_") {
			env = append(env, kv)
		}
	}
	n := len(bed.Hosts)
	r := droverIn(t, dir, env, "salloc", fmt.Sprintf("-N%d", n), "--time=5", droverBin,
		"--log-level", "info", "run", "--out", out, "--progress", "none", job)
	wantCode(t, r, 0)
	if m := agentsUpRE.FindStringSubmatch(r.stderr); m != nil {
		t.Logf("slurm agents up on %d nodes in %s", n, m[1])
	}
	got := instanceHosts(t, out, 6)
	for _, h := range bed.Hosts {
		if addrs, ok := got[h.Name]; !ok {
			t.Errorf("no instance ran on %s: %v\n%s", h.Name, got, r.stderr)
		} else if !slices.Contains(strings.Fields(addrs), h.Addr) {
			t.Errorf("instance on %s printed addresses %q, want %s", h.Name, addrs, h.Addr)
		}
	}
	noneLeft(t, bed, bed.Names(), "^"+regexp.QuoteMeta(droverBin)+" agent")
	noneLeft(t, bed, bed.Names(), "[:] "+marker)
}
