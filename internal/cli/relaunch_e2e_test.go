package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// A local agent SIGKILLed under serve is launched again.
func TestServeRelaunchesKilledAgent(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home)
	killAgentAndComeBack(t, home, "", s.stderr)
}

// An ssh node (a bed host) whose agent is SIGKILLed is relaunched over
// ssh.
func TestServeRelaunchesKilledSSHAgent(t *testing.T) {
	bed := testbed.Require(t)
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home, "--hosts", "h1", "--ssh-config", bed.SSHConfig)
	killAgentAndComeBack(t, home, "h1", s.stderr)
}

// A Slurm node whose agent is SIGKILLed comes back as a one-node step of
// its own while the other node's agent goes on.
func TestServeRelaunchesKilledSlurmAgent(t *testing.T) {
	bed := testbed.Require(t)
	if _, err := exec.LookPath("salloc"); err != nil {
		t.Skip("no salloc")
	}
	home := filepath.Join(t.TempDir(), "home")
	env := []string{"DROVER_HOME=" + home}
	for _, kv := range bed.Env() {
		if !strings.HasPrefix(kv, "DROVER_") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command("salloc", "-N2", "--time=5", droverBin, "serve")
	cmd.Dir, cmd.Env = t.TempDir(), env
	out := &safeBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		droverHome(t, home, t.TempDir(), "shutdown")
		select {
		case <-done:
		case <-time.After(backstop):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("salloc drover serve did not end after shutdown:\n%s", out)
		}
	})
	eventually(t, func() string {
		select {
		case <-done:
			t.Fatalf("salloc drover serve ended:\n%s", out)
		default:
		}
		if _, err := os.Stat(filepath.Join(home, "serve.json")); err != nil {
			return fmt.Sprintf("no serve.json: %v\n%s", err, out)
		}
		return ""
	})
	var nodes []struct{ Name string }
	if err := json.Unmarshal([]byte(droverHome(t, home, t.TempDir(), "nodes", "--json").stdout), &nodes); err != nil || len(nodes) != 2 {
		t.Fatalf("nodes: %+v %v\n%s", nodes, err, out)
	}
	killAgentAndComeBack(t, home, nodes[1].Name, out)
}

// killAgentAndComeBack starts a process on node (the only one when ""),
// SIGKILLs the agent that runs it (as the OOM killer would) and checks
// that the node comes back under its name (nodes: up, 1 restart, the
// reason), that the old process was stopped and finished lost exactly
// once, and that a start on the node works again. Bed hosts share this
// machine's process table, so the agent is the process's parent here too.
func killAgentAndComeBack(t *testing.T, home, node string, log fmt.Stringer) {
	t.Helper()
	work := t.TempDir()
	ok := func(args ...string) result {
		t.Helper()
		r := droverHome(t, home, work, args...)
		wantCode(t, r, 0)
		return r
	}
	type nodeInfo struct {
		Name       string `json:"name"`
		State      string `json:"state"`
		Restarts   int    `json:"restarts"`
		LastReason string `json:"last_reason"`
	}
	info := func() (nodeInfo, int) {
		t.Helper()
		var ns []nodeInfo
		if err := json.Unmarshal([]byte(ok("nodes", "--json").stdout), &ns); err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.Name == node || node == "" {
				return n, len(ns)
			}
		}
		t.Fatalf("no node %q in %+v", node, ns)
		return nodeInfo{}, 0
	}
	before, count := info()
	if before.State != "up" || before.Restarts != 0 || (node == "" && count != 1) {
		t.Fatalf("node before: %+v (of %d)", before, count)
	}
	node = before.Name

	r := ok("start", "--node", node, "--name", "old", "--", "sleep", "300")
	m := pidRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("start prints no pid:\n%s", r)
	}
	oldPID, _ := strconv.Atoi(m[1])
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", oldPID))
	agent := 0
	for l := range strings.Lines(string(st)) {
		if v, found := strings.CutPrefix(l, "PPid:"); found {
			agent, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", agent)); !strings.Contains(string(cmdline), "agent\x00--guarded") {
		t.Fatalf("the parent %d of old (%d) is not an agent: %q", agent, oldPID, cmdline)
	}
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	eventually(t, func() string {
		n, c := info()
		if c != count || n.State != "up" || n.Restarts != 1 || !strings.Contains(n.LastReason, "its agent ended") {
			return fmt.Sprintf("node after the kill: %+v (of %d)\n%s", n, c, log)
		}
		return ""
	})
	if r := ok("nodes"); !strings.Contains(r.stdout, "RESTARTS") || !strings.Contains(r.stdout, "its agent ended") {
		t.Errorf("nodes text:\n%s", r.stdout)
	}
	if left := stillAlive(map[int]string{oldPID: "sleep"}, backstop); len(left) > 0 {
		t.Errorf("the old incarnation's process still runs: %v", left)
	}

	ok("start", "--node", node, "--name", "new", "--", "true")
	var exits []string
	eventually(t, func() string {
		for l := range strings.Lines(ok("finished").stdout) {
			exits = append(exits, strings.TrimSpace(l))
		}
		if !slices.Contains(exits, "new exit 0") {
			return fmt.Sprintf("finished so far: %q", exits)
		}
		return ""
	})
	for l := range strings.Lines(ok("finished").stdout) {
		exits = append(exits, strings.TrimSpace(l))
	}
	if !slices.Equal(exits, []string{"old exit -1 (node lost)", "new exit 0"}) {
		t.Errorf("finished: %q; want old lost once, then new", exits)
	}
}
