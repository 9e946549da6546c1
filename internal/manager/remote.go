package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"sync"
	"time"

	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/launch"
)

// SSHLaunch configures LaunchSSH.
type SSHLaunch struct {
	SSH          string // the ssh program; "" = "ssh"
	ConfigFile   string // ssh -F
	MaxParallel  int    // ssh connections being set up at once; 0 = 16 (below sshd's MaxStartups default of 10:30:100 per host, and gentle on a shared bastion)
	HelloTimeout time.Duration
	// ConnectTimeout: ssh gives up on a host that does not answer (or
	// never speaks SSH) after this long; 0 leaves it to ssh's config.
	ConnectTimeout time.Duration
	// Resources are counted resources by host as given (a hostfile's
	// columns); they add to and override Options.Resources.
	Resources map[string]map[string]int64
}

// DefaultSSHParallel bounds concurrent ssh starts.
const DefaultSSHParallel = 16

func (m *Manager) exe() (string, error) {
	if m.opts.AgentExe != "" {
		return m.opts.AgentExe, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("the drover binary: %w", err)
	}
	return exe, nil
}

// LaunchSSH starts one agent on each host ([user@]host) over one ssh
// connection each, at most MaxParallel being set up at a time. A host
// that fails is recorded (LaunchFailures) and the others go on; it
// returns how many agents were started, and an error when none was.
func (m *Manager) LaunchSSH(ctx context.Context, hosts []string, o SSHLaunch) (int, error) {
	exe, err := m.exe()
	if err != nil {
		return 0, err
	}
	bin, err := launch.LocalBinary(exe)
	if err != nil {
		return 0, err
	}
	par := o.MaxParallel
	if par <= 0 {
		par = DefaultSSHParallel
	}
	opts := launch.SSHOptions{SSH: o.SSH, ConfigFile: o.ConfigFile, Binary: bin, Logs: m.opts.AgentLogs, HelloTimeout: o.HelloTimeout,
		ConnectTimeout: o.ConnectTimeout, Deploys: &launch.Deploys{}}
	sem := make(chan struct{}, par)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		started int
		errs    []error
	)
	seen := make(map[string]bool)
	for _, host := range hosts {
		if seen[host] {
			continue
		}
		seen[host] = true
		wg.Go(func() {
			sem <- struct{}{}
			t0 := time.Now()
			var name string
			r, err := launch.StartSSH(ctx, opts, host, func(h launch.Hello) (*launch.AgentConfig, error) {
				name = h.Hostname
				return m.sshConfig(host, h, o.Resources[host])
			})
			<-sem
			if err != nil {
				reason := err.Error()
				var se *launch.SSHError
				if errors.As(err, &se) {
					reason = se.Reason
				}
				if name != "" {
					m.unclaim(name, host)
				}
				m.fail(host, reason)
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			switch {
			case r.Deployed:
				m.log.Info("deployed agent binary", "host", host, "node", name, "bytes", bin.Size, "sha256", bin.SHA256[:12])
			case r.Found:
				m.log.Info("agent binary found where another host's copy went (a shared file system)", "host", host, "node", name)
			}
			m.log.Info("agent started", "host", host, "node", name, "took", time.Since(t0).Round(time.Millisecond))
			m.setRelauncher(name, func(ctx context.Context) (launch.Agent, error) {
				return launch.StartSSH(ctx, opts, host, func(h launch.Hello) (*launch.AgentConfig, error) {
					if h.Hostname != name {
						return nil, fmt.Errorf("host now reports hostname %q, not %q", h.Hostname, name)
					}
					return m.sshConfig(host, h, o.Resources[host])
				})
			})
			m.addAgent(r, name)
			mu.Lock()
			started++
			mu.Unlock()
		})
	}
	wg.Wait()
	if started == 0 {
		return 0, fmt.Errorf("no host could be launched on:\n%w", errors.Join(errs...))
	}
	return started, nil
}

// sshConfig makes the agent config for host, which calls itself
// h.Hostname: the agent dials the address the host sees this machine at.
func (m *Manager) sshConfig(host string, h launch.Hello, res map[string]int64) (*launch.AgentConfig, error) {
	if other, ok := m.claim(h.Hostname, host); !ok {
		return nil, fmt.Errorf("host reports hostname %q, as host %s does: the same node twice", h.Hostname, other)
	}
	cfg, err := m.AgentConfig(h.Hostname)
	if err != nil {
		return nil, err
	}
	cfg.RemoteFS = true
	if len(res) > 0 {
		if cfg.Resources == nil {
			cfg.Resources = make(map[string]int64)
		}
		maps.Copy(cfg.Resources, res)
	}
	switch {
	case !m.wildcard():
		// A specific --listen address: that is where the manager is.
	case h.Client != "":
		cfg.Manager = net.JoinHostPort(h.Client, m.port())
	default:
		cands := m.Candidates()
		cfg.Manager, cfg.ManagerAddrs = cands[0], cands
	}
	return cfg, nil
}

func (m *Manager) claim(name, host string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.claimed[name]; ok && other != host {
		return other, false
	}
	m.claimed[name] = host
	return "", true
}

func (m *Manager) unclaim(name, host string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.claimed[name] == host {
		delete(m.claimed, name)
	}
}

// SlurmLaunch configures LaunchSlurm.
type SlurmLaunch struct {
	Srun string   // "" = "srun"
	Env  []string // srun's environment; nil = this process's
}

// LaunchSlurm starts one agent on every node of the allocation with one
// srun step. Every agent gets the same config, holding each node's
// credentials and CPU count by name; each picks its own. The agents dial
// the first of the manager's candidate addresses that answers.
func (m *Manager) LaunchSlurm(alloc *launch.Allocation, o SlurmLaunch) error {
	exe, err := m.exe()
	if err != nil {
		return err
	}
	cfg, err := m.slurmConfig(alloc, alloc.Nodes)
	if err != nil {
		return err
	}
	step, err := launch.StartSrun(launch.SlurmOptions{
		Srun:       o.Srun,
		Exe:        exe,
		Nodes:      len(alloc.Nodes),
		Env:        o.Env,
		Logs:       m.opts.AgentLogs,
		OnTaskExit: m.taskEnded,
	}, cfg)
	if err != nil {
		for _, n := range alloc.Nodes {
			m.fail(n, err.Error())
		}
		return err
	}
	for _, n := range alloc.Nodes {
		// A node comes back as a step of its own, beside the others'.
		m.setRelauncher(n, func(context.Context) (launch.Agent, error) {
			cfg, err := m.slurmConfig(alloc, []string{n})
			if err != nil {
				return nil, err
			}
			return launch.StartSrun(launch.SlurmOptions{
				Srun:     o.Srun,
				Exe:      exe,
				Nodes:    1,
				NodeList: n,
				Env:      o.Env,
				Logs:     m.opts.AgentLogs,
			}, cfg)
		})
	}
	m.addAgent(step, alloc.Nodes...)
	return nil
}

// slurmConfig is the many-node agent config for nodes of alloc.
func (m *Manager) slurmConfig(alloc *launch.Allocation, nodes []string) (*launch.AgentConfig, error) {
	cands := m.Candidates()
	cfg := &launch.AgentConfig{
		Manager:        cands[0],
		ManagerAddrs:   cands,
		MonitorTimeout: m.opts.MonitorTimeout,
		Grace:          m.opts.Grace,
		LogLevel:       m.opts.AgentLogLevel,
		Nodes:          make(map[string]*creds.Bundle, len(nodes)),
		CPUs:           alloc.CPUs,
		Resources:      maps.Clone(m.opts.Resources),
		// Even where the nodes share a file system, the results dir need
		// not be on it: results travel over the sessions.
		RemoteFS: true,
	}
	for _, n := range nodes {
		b, err := m.ca.Issue(creds.RoleAgent, n, nil)
		if err != nil {
			return nil, fmt.Errorf("credentials for agent %s: %w", n, err)
		}
		cfg.Nodes[n] = b
	}
	return cfg, nil
}
