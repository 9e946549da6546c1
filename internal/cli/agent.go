package cli

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/launch"
	"github.com/drover-hpc/drover/internal/topology"
	"github.com/drover-hpc/drover/internal/wire"
)

// Version is reported by agents to the manager.
const Version = "0.1.0"

func newAgent(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent (started by the launchers)",
		Long: `Runs this node's agent: it dials the manager, runs the processes it is told
to, and reports their exits. Launchers start it and hand it its
configuration and credentials as one JSON object on stdin; the end of stdin
then means the manager is gone, and the agent stops every process it
started and exits. It does the same after --monitor-timeout without word
from the manager.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(e)
		},
	}
}

func runAgent(e *env) error {
	cfg, err := launch.ReadConfig(os.Stdin)
	if err != nil {
		return usageError("%v", err)
	}
	if cfg.LogLevel != "" {
		if err := e.level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return usageError("agent log level: %v", err)
		}
	}
	log := e.logger(e.stderr)
	tlsConf, err := cfg.Credentials.ClientTLS("")
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	res, err := topology.Detect(topology.Options{Hostname: cfg.Node})
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	a, err := agent.New(agent.Options{Name: cfg.Node, Resources: res, Logger: log, Level: e.level, Scratch: cfg.Scratch})
	if err != nil {
		return &exitError{ExitFailed, err}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The lifeline: stdin ends when the manager (or the ssh connection to
	// it) is gone.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		log.Info("stdin closed: the manager is gone")
		cancel()
	}()
	err = wire.RunAgent(ctx, wire.AgentOptions{
		Node: a,
		Dial: func(context.Context) (*grpc.ClientConn, error) {
			return grpc.NewClient(cfg.Manager, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
		},
		Version:        Version,
		MonitorTimeout: cfg.MonitorTimeout,
		Grace:          cfg.Grace,
		Logger:         log,
	})
	closeErr := a.Close()
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		if closeErr != nil {
			log.Warn("agent close", "err", closeErr)
		}
		return nil
	default:
		log.Error("agent stopped", "err", err)
		return errFailed
	}
}
