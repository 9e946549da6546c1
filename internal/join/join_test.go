package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fixture is one serve's side of joining: its CA, the main gRPC server
// with Join (mutual TLS), and the enrolment listener.
type fixture struct {
	ca      *creds.CA
	srv     *Server
	log     *syncBuffer
	main    string
	client  *creds.Bundle
	agent   *creds.Bundle
	clock   atomic.Int64 // unix nanos
	taken   sync.Map     // node names that are up
	manager string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ca, err := creds.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, log: &syncBuffer{}, manager: "127.0.0.1:7700"}
	f.clock.Store(time.Now().UnixNano())
	f.srv = New(Options{
		Logger:    slog.New(slog.NewTextHandler(f.log, nil)),
		NameTaken: func(n string) bool { _, ok := f.taken.Load(n); return ok },
		Now:       func() time.Time { return time.Unix(0, f.clock.Load()) },
	})
	mgr, err := ca.Issue(creds.RoleManager, "manager", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if f.client, err = ca.Issue(creds.RoleClient, "c", nil); err != nil {
		t.Fatal(err)
	}
	if f.agent, err = ca.Issue(creds.RoleAgent, "a", nil); err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLS(mgr))))
	f.srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	f.main = lis.Addr().String()
	if err := f.srv.Start(ca, "127.0.0.1:0", f.manager); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.srv.Close()
		g.Stop()
		<-served
	})
	return f
}

func (f *fixture) advance(d time.Duration) { f.clock.Add(int64(d)) }

// create calls CreateToken with the credentials of b.
func (f *fixture) create(t *testing.T, b *creds.Bundle, ttl time.Duration) (*droverpb.CreateTokenReply, error) {
	t.Helper()
	conf, err := b.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+f.main, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return droverpb.NewJoinClient(conn).CreateToken(ctx, &droverpb.CreateTokenRequest{TtlMs: ttl.Milliseconds()})
}

func (f *fixture) token(t *testing.T, ttl time.Duration) creds.Token {
	t.Helper()
	r, err := f.create(t, f.client, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetAddress() != f.srv.Addr() {
		t.Errorf("token address %q, want %q", r.GetAddress(), f.srv.Addr())
	}
	tok, err := creds.ParseToken(r.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func enrol(t *testing.T, f *fixture, tok creds.Token, name string) (*Joined, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Enrol(ctx, f.srv.Addr(), tok, name)
}

func TestEnrolOnce(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, time.Minute)
	j, err := enrol(t, f, tok, "node7")
	if err != nil {
		t.Fatal(err)
	}
	if j.Node != "node7" || j.Manager != "127.0.0.1:7700" || j.Join != f.srv.Addr() || j.Creds.CA != f.ca.CertPEM() {
		t.Errorf("joined %+v", j)
	}
	// The credentials get into a mutual-TLS server of the run as agent node7.
	mgr, _ := f.ca.Issue(creds.RoleManager, "manager", []string{"127.0.0.1"})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	seen := make(chan creds.Peer, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tlsServer(c, f.ca.ServerTLS(mgr))
		if tc.Handshake() == nil {
			p, _ := creds.PeerOf(tc.ConnectionState())
			seen <- p
		}
		close(seen)
	}()
	conf, err := j.Creds.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsDial(lis.Addr().String(), conf); err != nil {
		t.Fatal(err)
	}
	if p := <-seen; p != (creds.Peer{Role: creds.RoleAgent, Name: "node7"}) {
		t.Errorf("manager saw %+v", p)
	}

	_, err = enrol(t, f, tok, "node8")
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("second use: %v", err)
	}
	if !strings.Contains(f.log.String(), "enrolment refused") {
		t.Errorf("the refusal is not logged:\n%s", f.log)
	}
	if strings.Contains(f.log.String(), strings.Split(tok.Encode(), ".")[2]) {
		t.Errorf("the secret is in the log:\n%s", f.log)
	}
}

func TestEnrolRefused(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, time.Minute)

	wrong := tok
	wrong.Secret = bytes.Clone(tok.Secret)
	wrong.Secret[0] ^= 1
	if _, err := enrol(t, f, wrong, "n"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), errNotOurs) {
		t.Errorf("wrong secret: %v", err)
	}
	unknown := tok
	unknown.ID = "AAAAAAAA"
	if _, err := enrol(t, f, unknown, "n"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), errNotOurs) {
		t.Errorf("unknown id: %v", err)
	}
	// A name that is up, or invalid, is refused and leaves the token usable.
	f.taken.Store("busy1", true)
	if _, err := enrol(t, f, tok, "busy1"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "up already") {
		t.Errorf("name taken: %v", err)
	}
	if _, err := enrol(t, f, tok, "-bad name"); !errors.Is(err, ErrRefused) {
		t.Errorf("bad name: %v", err)
	}
	if _, err := enrol(t, f, tok, "free1"); err != nil {
		t.Fatalf("after refusals of the name: %v", err)
	}

	exp := f.token(t, time.Second)
	f.advance(time.Second)
	if _, err := enrol(t, f, exp, "n2"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
}

func TestEnrolConcurrentOnce(t *testing.T) {
	f := newFixture(t)
	tok := f.token(t, time.Minute)
	const n = 8
	var wg sync.WaitGroup
	var ok atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := enrol(t, f, tok, "c"+string(rune('a'+i))); err == nil {
				ok.Add(1)
			} else if !errors.Is(err, ErrRefused) {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ok.Load() != 1 {
		t.Fatalf("%d enrolments with one token succeeded, want 1", ok.Load())
	}
}

func TestEnrolOtherServe(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	tok := other.token(t, time.Minute)
	// The token of another serve, at this serve's address.
	_, err := enrol(t, f, tok, "n")
	if !errors.Is(err, creds.ErrWrongCA) {
		t.Fatalf("another serve's token: %v, want ErrWrongCA", err)
	}
	if strings.Contains(f.log.String(), "enrolment attempt") {
		t.Errorf("the secret reached the wrong serve:\n%s", f.log)
	}
	// And it still works at its own serve.
	if _, err := enrol(t, other, tok, "n"); err != nil {
		t.Fatal(err)
	}
}

func TestCreateToken(t *testing.T) {
	f := newFixture(t)
	if _, err := f.create(t, f.agent, time.Minute); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an agent made a token: %v", err)
	}
	for _, ttl := range []time.Duration{time.Millisecond, MaxTTL + time.Second} {
		if _, err := f.create(t, f.client, ttl); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ttl %v: %v", ttl, err)
		}
	}
	r, err := f.create(t, f.client, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := time.UnixMilli(r.GetExpiresUnixMs()).Sub(time.Unix(0, f.clock.Load())); got < DefaultTTL-time.Second || got > DefaultTTL {
		t.Errorf("default ttl %v", got)
	}
	tok, err := creds.ParseToken(r.GetToken())
	if err != nil || tok.CAHash != f.ca.Hash() {
		t.Errorf("token %v does not pin the CA", err)
	}
}

func TestCreateTokenBounded(t *testing.T) {
	f := newFixture(t)
	for range maxTokens {
		if _, _, _, err := f.srv.create(time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, _, err := f.srv.create(time.Minute); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("token %d: %v", maxTokens+1, err)
	}
	f.advance(time.Minute)
	if _, _, _, err := f.srv.create(time.Minute); err != nil {
		t.Fatalf("after the others expired: %v", err)
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "node-7", "n1.example.org", "GPU_3", strings.Repeat("x", 64)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "a b", "a/b", "é", strings.Repeat("x", 65)} {
		if ValidName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func tlsServer(c net.Conn, conf *tls.Config) *tls.Conn {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return tls.Server(c, conf)
}

func tlsDial(addr string, conf *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return err
	}
	return c.Close()
}
