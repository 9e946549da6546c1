package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %v\nstdout: %s\nstderr: %s", cmd.Args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestEachHostHasItsNameAndAddress(t *testing.T) {
	b := Require(t)
	if len(b.Hosts) < 1 {
		t.Fatal("bed without hosts")
	}
	ctx := timeout(t, time.Minute)
	for _, h := range b.Hosts {
		out := run(t, b.SSH(ctx, h.Name, "hostname; ip -o -4 addr show"))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if lines[0] != h.Name {
			t.Errorf("ssh %s hostname printed %q", h.Name, lines[0])
		}
		if !strings.Contains(out, " "+h.Addr+"/") {
			t.Errorf("%s: address %s not on its interfaces:\n%s", h.Name, h.Addr, out)
		}
		for _, other := range b.Hosts {
			if other != h && strings.Contains(out, " "+other.Addr+"/") {
				t.Errorf("%s has %s's address %s", h.Name, other.Name, other.Addr)
			}
		}
	}
}

// The hosts reach one another and the bridge, and nothing else: only the
// bed's subnet is routed, so a connection elsewhere fails before a packet
// leaves (no packet is ever sent outside the bed).
func TestHostsReachOnlyTheBedSubnet(t *testing.T) {
	b := Require(t)
	ctx := timeout(t, time.Minute)
	h1 := b.Hosts[0]
	_, subnet, err := net.ParseCIDR(b.Subnet)
	if err != nil {
		t.Fatalf("subnet %q: %v", b.Subnet, err)
	}

	routes := run(t, b.SSH(ctx, h1.Name, "ip -4 route show; ip -6 route show"))
	for _, line := range strings.Split(strings.TrimSpace(routes), "\n") {
		dst := strings.Fields(line)[0]
		if _, n, err := net.ParseCIDR(dst); err != nil || !subnet.Contains(n.IP) {
			t.Errorf("%s has a route outside %s: %q", h1.Name, b.Subnet, line)
		}
	}

	// Addresses that must be unreachable: a few public ones and every
	// address this machine has outside the bed (its real interfaces).
	outside := []string{"8.8.8.8", "1.1.1.1", "192.0.2.1"}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || subnet.Contains(ipn.IP) {
			continue
		}
		outside = append(outside, ipn.IP.String())
	}
	for _, addr := range outside {
		cmd := b.SSH(ctx, h1.Name, "ip route get "+addr)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("%s has a route to %s: %s", h1.Name, addr, out)
		}
		if strings.Contains(addr, ":") {
			continue // bash's /dev/tcp wants a host name or IPv4 here
		}
		probe := fmt.Sprintf("bash -c 'exec 3<>/dev/tcp/%s/22' 2>&1; echo rc=$?", addr)
		out := run(t, b.SSH(ctx, h1.Name, probe))
		if !strings.Contains(out, "unreachable") || strings.Contains(out, "rc=0") {
			t.Errorf("%s: connecting to %s did not fail as unreachable: %s", h1.Name, addr, out)
		}
	}

	// Within the bed: the other hosts' sshd and the bridge's slurmctld.
	for _, h := range b.Hosts[1:] {
		out := run(t, b.SSH(ctx, h1.Name, fmt.Sprintf("bash -c 'exec 3<>/dev/tcp/%s/22' && echo ok", h.Addr)))
		if strings.TrimSpace(out) != "ok" {
			t.Errorf("%s cannot reach %s (%s): %s", h1.Name, h.Name, h.Addr, out)
		}
	}
	out := run(t, b.SSH(ctx, h1.Name, "ping -c1 -W2 "+b.Bridge+" >/dev/null 2>&1 || bash -c 'exec 3<>/dev/tcp/"+b.Bridge+"/16817' && echo ok"))
	if strings.TrimSpace(out) != "ok" {
		t.Errorf("%s cannot reach the bridge %s: %s", h1.Name, b.Bridge, out)
	}
}

func wantNames(b *Bed) string { return strings.Join(b.Names(), "\n") }

func TestSrunRunsOnEveryHost(t *testing.T) {
	b := Require(t)
	ctx := timeout(t, 2*time.Minute)
	cmd := exec.CommandContext(ctx, "srun", fmt.Sprintf("-N%d", len(b.Hosts)), "hostname")
	cmd.Env = b.Env()
	lines := strings.Fields(run(t, cmd))
	sort.Strings(lines)
	if got := strings.Join(lines, "\n"); got != wantNames(b) {
		t.Errorf("srun -N%d hostname printed\n%s\nwant\n%s", len(b.Hosts), got, wantNames(b))
	}
}

func TestSallocGivesEveryHost(t *testing.T) {
	b := Require(t)
	ctx := timeout(t, 2*time.Minute)
	cmd := exec.CommandContext(ctx, "salloc", "-Q", fmt.Sprintf("-N%d", len(b.Hosts)),
		"bash", "-c", "echo $SLURM_JOB_NODELIST")
	cmd.Env = b.Env()
	want := fmt.Sprintf("h[1-%d]", len(b.Hosts))
	if len(b.Hosts) == 1 {
		want = "h1"
	}
	if got := strings.TrimSpace(run(t, cmd)); got != want {
		t.Errorf("salloc -N%d: SLURM_JOB_NODELIST=%q, want %q", len(b.Hosts), got, want)
	}
}

func TestEnvSetsSlurmConf(t *testing.T) {
	t.Setenv("SLURM_JOB_ID", "12345")
	b := &Bed{SlurmConf: "/x/slurm.conf"}
	env := b.Env()
	var conf int
	for _, kv := range env {
		if strings.HasPrefix(kv, "SLURM_JOB_ID=") {
			t.Errorf("Env keeps %s", kv)
		}
		if kv == "SLURM_CONF=/x/slurm.conf" {
			conf++
		}
	}
	if conf != 1 {
		t.Errorf("Env has SLURM_CONF=/x/slurm.conf %d times", conf)
	}
}
