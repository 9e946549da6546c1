//go:build linux

package supervise

import (
	"bufio"
	"fmt"
	"os/exec"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGuard: a guarded process that left a descendant outside its group
// (setsid, or a double-forked daemon that was orphaned to the guard) is
// SIGKILLed; the guard reports that, kills the descendant and reaps it.
// The guard runs in a helper process, since it kills everything below it.
func TestGuard(t *testing.T) {
	for _, how := range []string{"setsid", "daemon"} {
		t.Run(how, func(t *testing.T) {
			cmd := exec.Command(testExe(t), "guard", "escape", how, "sleep")
			cmd.Env = helperEnvList()
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			lines := bufio.NewScanner(out)
			var gpid, gpgid int
			if !lines.Scan() {
				t.Fatal("guard helper said nothing")
			}
			if _, err := fmt.Sscanf(lines.Text(), "gpid %d pgid %d", &gpid, &gpgid); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Kill(gpid, unix.SIGKILL) })
			// The guarded process: the guard's child that is not the
			// (possibly reparented) descendant.
			kids := slices.DeleteFunc(childrenOf(cmd.Process.Pid, nil), func(p int) bool { return p == gpid })
			if len(kids) != 1 {
				t.Fatalf("guard %d has children %v besides %d, want one", cmd.Process.Pid, kids, gpid)
			}
			gstart, _, _, _, _ := procStart(gpid)
			if err := unix.Kill(kids[0], unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if !lines.Scan() {
				t.Fatal("guard helper ended without a report")
			}
			var signalled bool
			var killed int
			if _, err := fmt.Sscanf(lines.Text(), "guarded child signalled %t, killed %d", &signalled, &killed); err != nil {
				t.Fatalf("%q: %v", lines.Text(), err)
			}
			if !signalled || killed < 1 {
				t.Errorf("guard reported signalled=%v killed=%d, want true and at least 1", signalled, killed)
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("guard helper: %v", err)
			}
			if start, state, _, _, ok := procStart(gpid); ok && start == gstart {
				t.Errorf("descendant %d still there (state %c) after the guard returned", gpid, state)
			}
		})
	}
}
