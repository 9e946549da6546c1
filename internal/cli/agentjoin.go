package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/join"
	"github.com/drover-hpc/drover/internal/topology"
	"github.com/drover-hpc/drover/internal/wire"
)

// joinFlags are the flags of `drover agent --join`.
type joinFlags struct {
	decl      nodeDecl // --gpus and --resource, which apply without --join too
	join      string
	name      string
	tokenFile string
	stateDir  string
	sharedFS  bool
}

// joinedFile is the node's stored credentials, in its state directory.
const joinedFile = "agent.json"

// maxTokenInput bounds what is read looking for a token.
const maxTokenInput = 4096

// enrolTimeout bounds the enrolment call.
const enrolTimeout = 30 * time.Second

// rejoinBackoffMax caps the wait between attempts to reach serve again.
const rejoinBackoffMax = 5 * time.Second

// runJoin is `drover agent --join ADDR` (the agent proper, below its
// guard): enrol with a token, or take the stored credentials, then serve
// this node to serve, joining again by itself whenever serve gives it up.
func runJoin(e *env, f *joinFlags) error {
	log := e.logger(e.stderr)
	if _, _, err := net.SplitHostPort(f.join); err != nil {
		return usageError("--join needs HOST:PORT (drover token says where): %v", err)
	}
	name := f.name
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return usageError("no --name and no host name: %v", err)
		}
		name = h
	}
	if err := join.ValidName(name); err != nil {
		return usageError("%v", err)
	}
	dir := f.stateDir
	if dir == "" {
		home, err := client.Home("")
		if err != nil {
			return &exitError{ExitFailed, err}
		}
		dir = filepath.Join(home, "join")
	}
	state := filepath.Join(dir, joinedFile)

	tok, haveToken, err := readToken(f.tokenFile)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var j join.Joined
	if haveToken {
		ectx, cancel := context.WithTimeout(ctx, enrolTimeout)
		got, err := join.Enrol(ectx, f.join, tok, name)
		cancel()
		if err != nil {
			return &exitError{ExitFailed, err}
		}
		if err := creds.WriteFile(state, got); err != nil {
			return &exitError{ExitFailed, err}
		}
		j = *got
		log.Info("joined: credentials stored", "node", j.Node, "manager", j.Manager, "state", state)
	} else {
		if err := creds.ReadFile(state, &j); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return usageError("no token: give the output of drover token on stdin or with --token-file (no stored credentials in %s)", dir)
			}
			return &exitError{ExitFailed, err}
		}
		if j.Join != f.join || (f.name != "" && j.Node != f.name) || j.Creds == nil {
			return usageError("no token, and the credentials in %s are for node %s at %s: give a token from that serve (stdin or --token-file)", state, j.Node, j.Join)
		}
		log.Info("joining with the stored credentials", "node", j.Node, "manager", j.Manager)
	}
	return serveJoined(ctx, e, log, &j, f.sharedFS, f.decl)
}

// readToken reads the token from path, or else from stdin: one line. An
// empty stdin, or a terminal, gives none (the stored credentials are used
// then). Anything that is not a token is a usage error that never repeats
// what was read.
func readToken(path string) (creds.Token, bool, error) {
	var data []byte
	var from string
	if path != "" {
		from = "the token in --token-file " + path
		fd, err := os.Open(path)
		if err != nil {
			return creds.Token{}, false, usageError("--token-file: %v", err)
		}
		defer fd.Close()
		data, err = io.ReadAll(io.LimitReader(fd, maxTokenInput+1))
		if err != nil {
			return creds.Token{}, false, usageError("--token-file: %v", err)
		}
	} else {
		from = "the token on stdin"
		if _, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS); err == nil {
			return creds.Token{}, false, nil
		}
		var err error
		if data, err = readLine(os.Stdin); err != nil {
			return creds.Token{}, false, usageError("read the token on stdin: %v", err)
		}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if path != "" {
			return creds.Token{}, false, usageError("--token-file %s is empty; it should hold a token from drover token", path)
		}
		return creds.Token{}, false, nil
	}
	if len(data) > maxTokenInput {
		return creds.Token{}, false, usageError("%s: %v (too long)", from, creds.ErrBadToken)
	}
	tok, err := creds.ParseToken(string(data))
	if err != nil {
		return creds.Token{}, false, usageError("%s: %v (make one with drover token)", from, err)
	}
	return tok, true, nil
}

// readLine reads up to a newline or the end, at most maxTokenInput+1
// bytes, one byte at a time: nothing after the line is taken from r.
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) <= maxTokenInput {
		n, err := r.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				return line, nil
			}
			line = append(line, b[0])
		}
		if errors.Is(err, io.EOF) {
			return line, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return line, nil
}

// serveJoined serves this node to serve until serve shuts it down (nil),
// refuses it, or ctx ends. When serve gives the node up (it was silent
// too long) or goes silent, every process here is stopped and the node
// joins again with its stored certificate once serve answers.
func serveJoined(ctx context.Context, e *env, log *slog.Logger, j *join.Joined, sharedFS bool, decl nodeDecl) error {
	tlsConf, err := j.Creds.ClientTLS("")
	if err != nil {
		return &exitError{ExitFailed, fmt.Errorf("credentials of node %s: %w", j.Node, err)}
	}
	res, err := topology.Detect(topology.Options{Hostname: j.Node, GPUs: decl.gpus})
	if err != nil {
		return &exitError{ExitFailed, err}
	}
	res.Custom = decl.custom
	for {
		if err := awaitServe(ctx, log, j, tlsConf); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return &exitError{ExitFailed, err}
		}
		a, err := agent.New(agent.Options{Name: j.Node, Resources: res, Logger: log, Level: e.level})
		if err != nil {
			return &exitError{ExitFailed, err}
		}
		err = wire.RunAgent(ctx, wire.AgentOptions{
			Node: a,
			Dial: func(context.Context) (*grpc.ClientConn, error) {
				return grpc.NewClient("passthrough:///"+j.Manager, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
			},
			Version:  Version,
			RemoteFS: !sharedFS,
			Logger:   log,
		})
		if cerr := a.Close(); cerr != nil {
			log.Warn("agent close", "err", cerr)
		}
		switch {
		case err == nil:
			log.Info("serve shut this node down")
			return nil
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, wire.ErrGivenUp), errors.Is(err, wire.ErrMonitorTimeout):
			log.Warn("lost serve; joining again with the stored certificate", "node", j.Node, "manager", j.Manager, "err", err)
		default:
			return &exitError{ExitFailed, fmt.Errorf("node %s at %s: %w", j.Node, j.Manager, err)}
		}
	}
}

// awaitServe waits until serve completes a TLS handshake with this node's
// credentials, retrying with capped backoff while it cannot be reached.
// A serve whose certificate is of another CA (it was started anew) is an
// error: the stored credentials will never be accepted again.
func awaitServe(ctx context.Context, log *slog.Logger, j *join.Joined, tlsConf *tls.Config) error {
	backoff := 100 * time.Millisecond
	for {
		_, err := firstHandshake([]string{j.Manager}, tlsConf)
		if err == nil {
			return nil
		}
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return fmt.Errorf("serve at %s no longer accepts node %s's certificate (was it started anew?): join again with a new token from drover token", j.Manager, j.Node)
		}
		log.Info("serve not reachable; trying again", "manager", j.Manager, "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, rejoinBackoffMax)
	}
}
