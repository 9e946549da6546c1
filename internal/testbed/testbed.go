// Package testbed gives tests the multi-host test bed of scripts/testbed:
// K hosts h1..hK on this machine, each a network namespace with its own
// address and hostname, an sshd reachable with a key made for the run, and a
// slurmd of a real Slurm cluster. The hosts share this machine's file system.
//
// Require returns the bed. It brings it up only when asked to, by
// DROVER_TESTBED=up (scripts/test sets it): a plain `go test` uses a bed
// that is already up and otherwise skips, so it never starts daemons and
// namespaces nobody asked for. It never takes the bed down: that is the
// suite's job (`scripts/testbed down`), so several test binaries can share
// one bed.
package testbed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultDir is the bed's state directory unless DROVER_TESTBED_DIR says
// otherwise.
const DefaultDir = "/tmp/drover-testbed"

// Bed is a running test bed.
type Bed struct {
	Dir       string // state directory: ssh_config, key, hosts, env, slurm/
	Hosts     []Host // h1..hK in order
	SSHConfig string // ssh -F file with Host h1..hK
	SlurmConf string // slurm.conf of the bed's cluster (SLURM_CONF)
	Bridge    string // the bridge's address, reachable from every host
	Subnet    string // the only network the hosts can reach, e.g. 10.231.0.0/24
}

// Host is one test host: its name (also its hostname and Slurm node name,
// and its ssh_config Host) and its address on the bed's subnet.
type Host struct {
	Name, Addr string
}

// Names returns the host names, h1..hK.
func (b *Bed) Names() []string {
	names := make([]string, len(b.Hosts))
	for i, h := range b.Hosts {
		names[i] = h.Name
	}
	return names
}

// SSH returns `ssh -F SSHConfig host args...`. As with ssh itself, args are
// joined with spaces and run by the remote user's shell.
func (b *Bed) SSH(ctx context.Context, host string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ssh", append([]string{"-F", b.SSHConfig, host}, args...)...)
}

// Env returns this process's environment for slurm commands against the
// bed: every SLURM_* variable dropped (so a test run inside an allocation
// does not leak it) and SLURM_CONF set to the bed's slurm.conf.
func (b *Bed) Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SLURM_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "SLURM_CONF="+b.SlurmConf)
}

var (
	once      sync.Once
	theBed    *Bed
	skipWhy   string
	failWhy   error
	upTimeout = 10 * time.Minute
)

// exitCannot is scripts/testbed's exit status when this machine cannot host
// the bed (not root, no network namespaces).
const exitCannot = 3

// Env is the variable that asks Require to bring the bed up: Env=up.
const Env = "DROVER_TESTBED"

// Require returns the bed, once per test binary: with DROVER_TESTBED=up it
// brings it up with `scripts/testbed up` (K from DROVER_TESTBED_K, default
// 3); unset, it takes the bed that `scripts/testbed status` finds up. It
// skips the test when the machine cannot host the bed (not root, not
// Linux, no network namespaces) or, unasked, no bed is up; any other
// failure fails the test.
func Require(t testing.TB) *Bed {
	t.Helper()
	once.Do(func() { theBed, skipWhy, failWhy = up() })
	switch {
	case skipWhy != "":
		t.Skip(skipWhy)
	case failWhy != nil:
		t.Fatalf("testbed: %v", failWhy)
	}
	return theBed
}

// up returns the bed, or why the test skips (a reason that begins with
// "needs ", as scripts/test wants of a missing capability), or an error.
func up() (*Bed, string, error) {
	if runtime.GOOS != "linux" {
		return nil, "needs Linux for the test bed (network namespaces)", nil
	}
	if os.Geteuid() != 0 {
		return nil, "needs root for the test bed (network namespaces, sshd, Slurm); run the tests as root", nil
	}
	verb := "status"
	switch v := os.Getenv(Env); v {
	case "up":
		verb = "up"
	case "":
	default:
		return nil, "", fmt.Errorf("%s=%q: want up (bring the bed up) or unset (use a bed already up)", Env, v)
	}
	root, err := repoRoot()
	if err != nil {
		return nil, "", err
	}
	args := []string{filepath.Join(root, "scripts", "testbed"), verb}
	if k := os.Getenv("DROVER_TESTBED_K"); k != "" && verb == "up" {
		args = append(args, k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == exitCannot:
		return nil, "needs a machine that can host the test bed: " + strings.TrimSpace(out.String()), nil
	case ctx.Err() != nil:
		return nil, "", fmt.Errorf("scripts/testbed %s did not finish in %v:\n%s", verb, upTimeout, out.String())
	case err != nil && verb == "status":
		last := strings.TrimSpace(out.String())
		if i := strings.LastIndexByte(last, '\n'); i >= 0 {
			last = last[i+1:]
		}
		return nil, fmt.Sprintf("needs %s=up to bring up the test bed, or a bed already up (scripts/testbed status: %s)", Env, last), nil
	case err != nil:
		return nil, "", fmt.Errorf("scripts/testbed %s: %v after %v:\n%s", verb, err, time.Since(start).Round(time.Millisecond), out.String())
	}
	dir := os.Getenv("DROVER_TESTBED_DIR")
	if dir == "" {
		dir = DefaultDir
	}
	b, err := Load(dir)
	if err != nil {
		return nil, "", fmt.Errorf("after scripts/testbed up: %v", err)
	}
	return b, "", nil
}

// Load reads a bed that is up from its state directory's env file.
func Load(dir string) (*Bed, error) {
	f, err := os.Open(filepath.Join(dir, "env"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	b := &Bed{
		Dir:       dir,
		SSHConfig: env["TESTBED_SSH_CONFIG"],
		SlurmConf: env["SLURM_CONF"],
		Bridge:    env["TESTBED_BRIDGE"],
		Subnet:    env["TESTBED_SUBNET"],
	}
	for _, name := range strings.Split(env["TESTBED_HOSTS"], ",") {
		if name == "" {
			continue
		}
		addr := env["TESTBED_ADDR_"+name]
		if addr == "" {
			return nil, fmt.Errorf("%s/env: no address for %s", dir, name)
		}
		b.Hosts = append(b.Hosts, Host{Name: name, Addr: addr})
	}
	if len(b.Hosts) == 0 || b.SSHConfig == "" || b.SlurmConf == "" || b.Bridge == "" {
		return nil, fmt.Errorf("%s/env is incomplete", dir)
	}
	return b, nil
}

// repoRoot is the directory of the go.mod above the working directory (go
// test runs tests in their package's directory), else `go env GOMOD`'s.
func repoRoot() (string, error) {
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				if _, err := os.Stat(filepath.Join(d, "scripts", "testbed")); err == nil {
					return d, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			d := filepath.Dir(mod)
			if _, err := os.Stat(filepath.Join(d, "scripts", "testbed")); err == nil {
				return d, nil
			}
		}
	}
	return "", errors.New("cannot find the repository root (a go.mod with scripts/testbed next to it)")
}
