package launch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"syscall"
)

// Child is an agent running as a child process of the manager.
type Child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	err   error
}

// StartLocal starts `exe agent` on this machine and hands it cfg. Its
// stderr (the agent's own log) goes to logs.
func StartLocal(exe string, cfg *AgentConfig, logs io.Writer) (*Child, error) {
	cmd := exec.Command(exe, "agent")
	cmd.Stdout = logs
	cmd.Stderr = logs
	// Its own process group: a Ctrl-C at the terminal is the manager's to
	// handle; the manager then stops the work in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start agent %s: %w", cfg.Node, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", cfg.Node, err)
	}
	c := &Child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := json.NewEncoder(stdin).Encode(cfg); err != nil {
		c.Kill()
		return nil, fmt.Errorf("start agent %s: hand over config: %w", cfg.Node, err)
	}
	return c, nil
}

// Done is closed when the agent process has exited.
func (c *Child) Done() <-chan struct{} { return c.done }

// Ended is true: the process that ended is the agent (its guard, which
// ends after the agent proper and whatever it left).
func (c *Child) Ended() bool { return true }

// Err is the agent's exit error, valid after Done.
func (c *Child) Err() error { return c.err }

// Stop closes the lifeline, which makes the agent stop its processes and
// exit, and waits for that; when ctx ends first it kills the agent.
func (c *Child) Stop(ctx context.Context) error {
	c.stdin.Close()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		c.Kill()
		return fmt.Errorf("stop agent: %w", ctx.Err())
	}
}

// Kill ends the agent at once and waits for it.
func (c *Child) Kill() {
	c.stdin.Close()
	_ = c.cmd.Process.Kill() // an error means it is already gone
	<-c.done
}
