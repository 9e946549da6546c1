package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A local agent SIGKILLed under serve is launched again: its node comes
// back under the same name as a new incarnation (nodes: up, 1 restart, the
// reason), its old process was stopped and reported lost exactly once, and
// starts on the node work again.
func TestServeRelaunchesKilledAgent(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	s := startServe(t, home)
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
	nodes := func() []nodeInfo {
		t.Helper()
		var ns []nodeInfo
		if err := json.Unmarshal([]byte(ok("nodes", "--json").stdout), &ns); err != nil {
			t.Fatal(err)
		}
		return ns
	}
	ns := nodes()
	if len(ns) != 1 || ns[0].State != "up" || ns[0].Restarts != 0 {
		t.Fatalf("nodes before: %+v", ns)
	}
	name := ns[0].Name

	r := ok("start", "--node", name, "--name", "old", "--", "sleep", "300")
	m := pidRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("start prints no pid:\n%s", r)
	}
	oldPID, _ := strconv.Atoi(m[1])
	if alive, why := sleepAlive(oldPID); !alive {
		t.Fatalf("the sleep started is not running: %s", why)
	}

	// The agent proper (below its guard) dies as the OOM killer would
	// end it.
	agentPID := 0
	for pid := range descendants(s.cmd.Process.Pid) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), "agent\x00--guarded") {
			agentPID = pid
		}
	}
	if agentPID == 0 {
		t.Fatalf("no agent below serve %d: %v", s.cmd.Process.Pid, descendants(s.cmd.Process.Pid))
	}
	if err := syscall.Kill(agentPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	eventually(t, func() string {
		ns := nodes()
		if len(ns) != 1 || ns[0].Name != name || ns[0].State != "up" || ns[0].Restarts != 1 ||
			!strings.Contains(ns[0].LastReason, "its agent ended") {
			return fmt.Sprintf("nodes after the kill: %+v\n%s", ns, s.stderr)
		}
		return ""
	})
	if r := ok("nodes"); !strings.Contains(r.stdout, "RESTARTS") || !strings.Contains(r.stdout, "its agent ended") {
		t.Errorf("nodes text:\n%s", r.stdout)
	}
	if left := stillAlive(map[int]string{oldPID: "sleep"}, backstop); len(left) > 0 {
		t.Errorf("the old incarnation's process still runs: %v", left)
	}

	ok("start", "--node", name, "--name", "new", "--", "true")
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
	olds := 0
	for _, e := range exits {
		if strings.HasPrefix(e, "old ") {
			olds++
			if e != "old exit -1 (node lost)" {
				t.Errorf("old's exit: %q", e)
			}
		}
	}
	if olds != 1 || len(exits) != 2 {
		t.Errorf("finished: %q; want old lost once and new", exits)
	}
}
