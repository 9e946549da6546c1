package cli_test

// drover serve with one silent host among good ones (the test bed's sshd,
// and a loopback listener that accepts TCP and never speaks SSH): serve is
// ready with the first node, and the silent host holds no one back.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// silentBed is an ssh config with the bed's hosts and "silent", a host
// that accepts TCP and never says a word.
func silentBed(t *testing.T, bed *testbed.Bed) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(silentHost(t))
	base, err := os.ReadFile(bed.SSHConfig)
	if err != nil {
		t.Fatal(err)
	}
	// Host blocks match first: "silent" is placed before the bed's own.
	return writeFile(t, t.TempDir(), "ssh_config", fmt.Sprintf("Host silent\n  HostName %s\n  Port %s\n\n%s", host, port, base))
}

const silentFailed = "drover: node silent not used: "

// sleepMark is how long these tests' processes sleep: a length no other
// test uses, since the bed's hosts share this machine's processes.
const sleepMark = "3017"

type nodeDoc struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Error string `json:"error"`
}

// nodesByName is drover nodes --json by node name.
func nodesByName(t *testing.T, home, dir string) map[string]nodeDoc {
	t.Helper()
	r := droverHome(t, home, dir, "nodes", "--json")
	var list []nodeDoc
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
		t.Fatalf("nodes --json:\n%s", r)
	}
	nodes := map[string]nodeDoc{}
	for _, n := range list {
		nodes[n.Name] = n
	}
	return nodes
}

func isUp(state string) bool { return state == "up" || state == "busy" }

// Serve is ready (serve.json) and drover start works on a good host before
// the silent host is given up (--ssh-timeout 15s: ample for the bed's hosts
// on a busy machine); then the silent host is on stderr and in drover
// nodes as failed with its reason, the other good host has joined, and
// shutdown leaves no process behind, here or on the hosts.
func TestServeSilentHostHoldsNoOneBack(t *testing.T) {
	bed := testbed.Require(t)
	cfg := silentBed(t, bed)
	good := bed.Names()[:2]
	home := filepath.Join(t.TempDir(), "serve")
	s := startServe(t, home, "--hosts", good[0]+",silent,"+good[1], "--ssh-config", cfg, "--ssh-timeout", "15s")
	if strings.Contains(s.stderr.String(), silentFailed) {
		t.Fatalf("serve was ready only after the silent host was given up:\n%s", s.stderr)
	}
	// Serve is ready with its first node up: either good host.
	work := t.TempDir()
	nodes := nodesByName(t, home, work)
	first, other := good[0], good[1]
	if !isUp(nodes[first].State) {
		first, other = other, first
	}
	if !isUp(nodes[first].State) {
		t.Fatalf("serve is ready with no good node up: %+v", nodes)
	}
	wantCode(t, droverHome(t, home, work, "start", "--node", first, "--name", "early", "--", "sleep", sleepMark), 0)
	if strings.Contains(s.stderr.String(), silentFailed) {
		t.Fatalf("drover start on %s worked only after the silent host was given up:\n%s", first, s.stderr)
	}

	eventually(t, func() string {
		nodes = nodesByName(t, home, work)
		if nodes["silent"].State != "error" || nodes[other].State == "" {
			return fmt.Sprintf("nodes: %+v, want silent failed and %s joined", nodes, other)
		}
		return ""
	})
	reason := nodes["silent"].Error
	if !strings.Contains(reason, "banner exchange") || !strings.HasSuffix(reason, "(gave up after 15s: --ssh-timeout)") {
		t.Errorf("silent node %+v does not say ssh timed out waiting for the banner, after --ssh-timeout", nodes["silent"])
	}
	if want := silentFailed + reason + "\n"; !strings.Contains(s.stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, s.stderr)
	}
	for _, name := range good {
		if st := nodes[name].State; !isUp(st) {
			t.Errorf("node %s is %q, want up", name, st)
		}
	}
	wantCode(t, droverHome(t, home, work, "start", "--node", other, "--name", "late", "--", "sleep", sleepMark), 0)

	procs := descendants(s.info.PID)
	wantCode(t, droverHome(t, home, work, "shutdown"), 0)
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exited %d after shutdown:\n%s", code, s.stderr)
	}
	if alive := stillAlive(procs, 10*time.Second); len(alive) > 0 {
		t.Errorf("left behind after shutdown: %v", alive)
	}
	wantNotExist(t, filepath.Join(home, "serve.json"))
	noneLeft(t, bed, good, ourAgents(t))
	noneLeft(t, bed, good, "^sleep "+sleepMark+"$")
}

// A signal while the silent host is still being connected to ends serve
// at once: the launch is cancelled (said on stderr), not waited out, and
// no process is left behind.
func TestServeSignalEndsBackgroundLaunch(t *testing.T) {
	bed := testbed.Require(t)
	cfg := silentBed(t, bed)
	good := bed.Names()[0]
	home := filepath.Join(t.TempDir(), "serve")
	// --ssh-timeout 25s: the silent host is still being waited for when
	// the signal comes (serve gives up on agents after 30s in any case).
	s := startServe(t, home, "--hosts", good+",silent", "--ssh-config", cfg, "--ssh-timeout", "25s")
	wantCode(t, droverHome(t, home, t.TempDir(), "start", "--node", good, "--name", "early", "--", "sleep", sleepMark), 0)
	procs := descendants(s.info.PID)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exited %d after SIGTERM:\n%s", code, s.stderr)
	}
	if want := silentFailed + "serve ended before it came up"; !strings.Contains(s.stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, s.stderr)
	}
	if alive := stillAlive(procs, 10*time.Second); len(alive) > 0 {
		t.Errorf("left behind after SIGTERM: %v", alive)
	}
	wantNotExist(t, filepath.Join(home, "serve.json"))
	noneLeft(t, bed, []string{good}, ourAgents(t))
	noneLeft(t, bed, []string{good}, "^sleep "+sleepMark+"$")
}
