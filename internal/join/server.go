// Package join admits nodes that serve did not launch: `drover token`
// mints a one-time enrolment token (Join.CreateToken, beside Control), and
// `drover agent --join` trades it for an agent certificate of the run at
// serve's enrolment listener (Enrolment.Enrol), checking first that the
// listener's CA is the one the token pins (see creds' enrolment).
package join

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
)

// Limits of tokens.
const (
	DefaultTTL = 10 * time.Minute
	MaxTTL     = 24 * time.Hour
	// maxTokens bounds the tokens serve keeps (used ones until they
	// expire), so a client cannot grow serve's memory without end.
	maxTokens = 1024
	// enrolTimeout bounds one enrolment connection's handshake.
	enrolTimeout = 10 * time.Second
)

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// NameTaken tells whether a node of that name is up; such a name
	// cannot be enrolled (a lost node's can: its machine came back).
	NameTaken func(name string) bool
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// token is what serve keeps of one token: never the secret.
type token struct {
	hash    [sha256.Size]byte
	expires time.Time
	used    bool
	busy    bool // an enrolment with it is in progress
}

// Server mints tokens and serves enrolments. It is safe for concurrent
// use.
type Server struct {
	droverpb.UnimplementedJoinServer
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	ca      *creds.CA
	port    int    // the manager's, told to enrolled agents
	addr    string // of the enrolment listener, as told to clients
	lis     net.Listener
	grpc    *grpc.Server
	served  chan struct{}
	tokens  map[string]*token
	stopped bool
}

// New makes a Server. Register it beside Control, then Start it once the
// run's CA exists.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NameTaken == nil {
		opts.NameTaken = func(string) bool { return false }
	}
	return &Server{opts: opts, log: opts.Logger, tokens: make(map[string]*token)}
}

// Register adds the Join service (CreateToken) to g, the server of
// Control.
func (s *Server) Register(g *grpc.Server) { droverpb.RegisterJoinServer(g, s) }

// Start listens for enrolments on listen with a manager certificate of
// ca and serves them; managerAddr is where agents then dial (its port is
// told to them). It may be called once.
func (s *Server) Start(ca *creds.CA, listen, managerAddr string) error {
	_, portText, err := net.SplitHostPort(managerAddr)
	if err != nil {
		return fmt.Errorf("join: manager address %q: %w", managerAddr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("join: manager address %q: %w", managerAddr, err)
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("join: listen on %s: %w", listen, err)
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	host, _, _ := net.SplitHostPort(lis.Addr().String())
	hosts = append(hosts, host)
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	b, err := ca.Issue(creds.RoleManager, "manager", hosts)
	if err != nil {
		lis.Close()
		return fmt.Errorf("join: %w", err)
	}
	conf, err := ca.EnrolTLS(b)
	if err != nil {
		lis.Close()
		return fmt.Errorf("join: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)), grpc.ConnectionTimeout(enrolTimeout),
		grpc.MaxRecvMsgSize(64<<10))
	droverpb.RegisterEnrolmentServer(g, enrolment{s: s})
	s.mu.Lock()
	if s.ca != nil || s.stopped {
		s.mu.Unlock()
		lis.Close()
		return errors.New("join: started twice or after Close")
	}
	s.ca, s.port, s.lis, s.grpc, s.served = ca, port, lis, g, make(chan struct{})
	s.addr = advertised(lis.Addr().String())
	s.mu.Unlock()
	go func() {
		defer close(s.served)
		if err := g.Serve(lis); err != nil {
			s.log.Error("join: serve enrolments", "err", err)
		}
	}()
	s.log.Info("join: enrolment listener", "addr", s.addr)
	return nil
}

// advertised turns a listener's address into one a node can be told: an
// unspecified host (0.0.0.0, ::) becomes this machine's host name.
func advertised(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			return net.JoinHostPort(h, port)
		}
	}
	return addr
}

// Addr is the enrolment listener's address, as told to clients; "" before
// Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops the enrolment listener and forgets every token.
func (s *Server) Close() {
	s.mu.Lock()
	s.stopped = true
	g, served := s.grpc, s.served
	clear(s.tokens)
	s.mu.Unlock()
	if g != nil {
		g.Stop()
		<-served
	}
}

// CreateToken implements Join: client certificates only.
func (s *Server) CreateToken(ctx context.Context, req *droverpb.CreateTokenRequest) (*droverpb.CreateTokenReply, error) {
	p, err := creds.PeerFromContext(ctx)
	if err != nil || p.Role != creds.RoleClient {
		return nil, status.Error(codes.PermissionDenied, "create token: only a client of this serve may")
	}
	ttl := time.Duration(req.GetTtlMs()) * time.Millisecond
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second || ttl > MaxTTL {
		return nil, status.Errorf(codes.InvalidArgument, "create token: ttl %v out of range [1s, %v]", ttl, MaxTTL)
	}
	tok, expires, addr, err := s.create(ttl)
	if err != nil {
		return nil, err
	}
	s.log.Info("join: token created", "token", tok, "expires", expires.UTC().Format(time.RFC3339), "peer", peerAddr(ctx))
	return &droverpb.CreateTokenReply{Token: tok.Encode(), ExpiresUnixMs: expires.UnixMilli(), Address: addr}, nil
}

func (s *Server) create(ttl time.Duration) (creds.Token, time.Time, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ca == nil || s.stopped {
		return creds.Token{}, time.Time{}, "", status.Error(codes.Unavailable, "create token: the enrolment listener is not running")
	}
	now := s.opts.Now()
	for id, t := range s.tokens {
		if !now.Before(t.expires) && !t.busy {
			delete(s.tokens, id)
		}
	}
	if len(s.tokens) >= maxTokens {
		return creds.Token{}, time.Time{}, "", status.Errorf(codes.ResourceExhausted, "create token: %d tokens are outstanding; let some expire", len(s.tokens))
	}
	tok, err := creds.NewToken(s.ca.Hash())
	if err != nil {
		return creds.Token{}, time.Time{}, "", status.Errorf(codes.Internal, "create token: %v", err)
	}
	if _, dup := s.tokens[tok.ID]; dup {
		return creds.Token{}, time.Time{}, "", status.Error(codes.Internal, "create token: id collision; try again")
	}
	expires := now.Add(ttl)
	s.tokens[tok.ID] = &token{hash: tok.SecretHash(), expires: expires}
	return tok, expires, s.addr, nil
}

// enrolment implements the Enrolment service on the enrolment listener.
type enrolment struct {
	droverpb.UnimplementedEnrolmentServer
	s *Server
}

// errNotOurs is the one answer to an unknown id or a wrong secret, so a
// caller without the secret learns nothing of which tokens exist.
const errNotOurs = "the token is not one of this serve's"

func (e enrolment) Enrol(ctx context.Context, req *droverpb.EnrolRequest) (*droverpb.EnrolReply, error) {
	s := e.s
	id, name, from := req.GetTokenId(), req.GetNode(), peerAddr(ctx)
	log := s.log.With("token", clip(id), "node", clip(name), "peer", from)
	log.Info("join: enrolment attempt")
	ca, port, err := s.claim(id, req.GetSecret())
	if err != nil {
		log.Warn("join: enrolment refused", "err", status.Convert(err).Message())
		return nil, err
	}
	cert, err := s.issue(ca, name, req.GetCsr())
	s.finish(id, err == nil)
	if err != nil {
		log.Warn("join: enrolment refused", "err", status.Convert(err).Message())
		return nil, err
	}
	log.Info("join: node enrolled")
	return &droverpb.EnrolReply{Certificate: cert, Ca: ca.CertPEM(), ManagerPort: int32(port)}, nil
}

// claim checks a token's secret (in constant time), expiry and use, and
// marks it busy; finish then marks it used or releases it.
func (s *Server) claim(id string, secret []byte) (*creds.CA, int, error) {
	h := sha256.Sum256(secret)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, 0, status.Error(codes.Unavailable, "serve is shutting down")
	}
	t := s.tokens[id]
	if t == nil {
		return nil, 0, status.Error(codes.PermissionDenied, errNotOurs)
	}
	if subtle.ConstantTimeCompare(h[:], t.hash[:]) != 1 {
		return nil, 0, status.Error(codes.PermissionDenied, errNotOurs)
	}
	switch {
	case t.used:
		return nil, 0, status.Error(codes.PermissionDenied, "the token was used already; make a new one with drover token")
	case !s.opts.Now().Before(t.expires):
		return nil, 0, status.Errorf(codes.PermissionDenied, "the token expired at %s; make a new one with drover token", t.expires.UTC().Format(time.RFC3339))
	case t.busy:
		return nil, 0, status.Error(codes.PermissionDenied, "the token is being used by another enrolment")
	}
	t.busy = true
	return s.ca, s.port, nil
}

func (s *Server) finish(id string, used bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tokens[id]; t != nil {
		t.busy = false
		t.used = t.used || used
	}
}

// issue checks the node name and signs the request.
func (s *Server) issue(ca *creds.CA, name string, csr []byte) (string, error) {
	if err := ValidName(name); err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	if s.opts.NameTaken(name) {
		return "", status.Errorf(codes.InvalidArgument, "node %s is up already; join under another name (--name)", name)
	}
	cert, err := ca.SignRequest(creds.RoleAgent, name, csr)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return cert, nil
}

// ValidName checks a node name for joining: 1 to 64 letters, digits, '.',
// '_' or '-', not starting with '.' or '-' (host names fit).
func ValidName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("node name %q: must be 1 to 64 characters", name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' ||
			(i > 0 && (r == '.' || r == '-'))
		if !ok {
			return fmt.Errorf("node name %q: only letters, digits, '.', '_' and '-', not first '.' or '-'", name)
		}
	}
	return nil
}

// clip bounds what a caller without credentials puts into the log.
func clip(s string) string {
	const most = 64
	if len(s) > most {
		return s[:most] + "..."
	}
	return s
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "?"
}
