package creds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// run is one run's credentials.
type run struct {
	ca      *CA
	manager *Bundle
	agent   *Bundle
	client  *Bundle
}

func newRun(t *testing.T) *run {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	r := &run{ca: ca}
	if r.manager, err = ca.Issue(RoleManager, "mgr", []string{"127.0.0.1", "::1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	if r.agent, err = ca.Issue(RoleAgent, "node1", nil); err != nil {
		t.Fatal(err)
	}
	if r.client, err = ca.Issue(RoleClient, "alice", nil); err != nil {
		t.Fatal(err)
	}
	return r
}

func leafOf(t *testing.T, b *Bundle) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode([]byte(b.Cert))
	if blk == nil {
		t.Fatal("no PEM in bundle cert")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// result is what the test server saw of one connection.
type result struct {
	peer Peer
	err  error
}

// server accepts TLS connections on a loopback listener and reports the
// handshake result of each; it answers a good connection with "ok\n".
type server struct {
	ln      net.Listener
	results chan result
	done    chan struct{}
}

func startServer(t *testing.T, network, addr string, cfg *tls.Config) *server {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	s := &server{ln: ln, results: make(chan result, 16), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.handle(c, cfg)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-s.done
	})
	return s
}

func (s *server) handle(c net.Conn, cfg *tls.Config) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		s.results <- result{err: err}
		return
	}
	st := tc.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		s.results <- result{err: errors.New("not TLS 1.3")}
		return
	}
	p, err := PeerOf(st)
	s.results <- result{peer: p, err: err}
	if err == nil {
		_, _ = io.WriteString(tc, "ok\n")
	}
	_ = tc.Close()
}

func (s *server) next(t *testing.T) result {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("server saw no connection")
		return result{}
	}
}

// dial connects with cfg and returns the handshake error or, on success,
// the server's greeting read error; on success it returns the client's view
// of the manager.
func dial(t *testing.T, network, addr string, cfg *tls.Config) (Peer, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return Peer{}, err
	}
	// In TLS 1.3 the server checks the client certificate after the
	// client's handshake is done: a refusal shows on the first read.
	buf := make([]byte, 3)
	if _, err := io.ReadFull(tc, buf); err != nil {
		return Peer{}, err
	}
	if string(buf) != "ok\n" {
		return Peer{}, errors.New("bad greeting")
	}
	return PeerOf(tc.ConnectionState())
}

func TestHandshake(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	addr := s.ln.Addr().String()
	for _, tc := range []struct {
		b          *Bundle
		want       Peer
		serverName string
	}{
		{r.agent, Peer{RoleAgent, "node1"}, ""},
		{r.client, Peer{RoleClient, "alice"}, ""},
		{r.agent, Peer{RoleAgent, "node1"}, "127.0.0.1"},
		{r.client, Peer{RoleClient, "alice"}, "localhost"},
	} {
		cfg, err := tc.b.ClientTLS(tc.serverName)
		if err != nil {
			t.Fatal(err)
		}
		mp, err := dial(t, "tcp", addr, cfg)
		if err != nil {
			t.Fatalf("%v (server name %q): client: %v", tc.want, tc.serverName, err)
		}
		if want := (Peer{RoleManager, "mgr"}); mp != want {
			t.Errorf("client sees %+v, want %+v", mp, want)
		}
		res := s.next(t)
		if res.err != nil {
			t.Fatalf("%v: server: %v", tc.want, res.err)
		}
		if res.peer != tc.want {
			t.Errorf("server sees %+v, want %+v", res.peer, tc.want)
		}
	}
}

func TestHandshakeIPv6(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp6", "[::1]:0", r.ca.ServerTLS(r.manager))
	cfg, err := r.agent.ClientTLS("::1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp6", s.ln.Addr().String(), cfg); err != nil {
		t.Fatal(err)
	}
	if res := s.next(t); res.err != nil || res.peer != (Peer{RoleAgent, "node1"}) {
		t.Fatalf("server: %+v", res)
	}
}

func TestWrongServerName(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	cfg, err := r.agent.ClientTLS("elsewhere.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("client accepted a manager certificate without that name")
	}
	if res := s.next(t); res.err == nil {
		t.Fatal("server finished a handshake the client refused")
	}
}

func TestClientFromOtherCARefused(t *testing.T) {
	r := newRun(t)
	other := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	// The foreign client trusts our CA (so it would accept our manager)
	// but presents a certificate from its own run.
	b := *other.agent
	b.CA = r.manager.CA
	cfg, err := b.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	// Go's client withholds a certificate the server's CA list does not
	// name; force it out so the server has to verify and refuse it.
	foreign := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &foreign, nil
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("client from another CA got through")
	}
	res := s.next(t)
	var unknown x509.UnknownAuthorityError
	if !errors.As(res.err, &unknown) {
		t.Fatalf("server: %v (peer %+v), want unknown authority", res.err, res.peer)
	}
}

func TestClientWithoutCertRefused(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	cfg, err := r.client.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = nil
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("client without certificate got through")
	}
	if res := s.next(t); res.err == nil {
		t.Fatalf("server accepted a client without certificate: %+v", res.peer)
	}
}

func TestManagerCertAsClientRefused(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	cfg, err := r.manager.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("manager certificate accepted as a client certificate")
	}
	if res := s.next(t); res.err == nil {
		t.Fatalf("server accepted the manager certificate from a client: %+v", res.peer)
	}
}

func TestGarbageThenGoodClient(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	addr := s.ln.Addr().String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\nthis is not TLS\x00\xff\x16\x03\x01garbage"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c) // until the server hangs up
	c.Close()
	if res := s.next(t); res.err == nil {
		t.Fatal("server accepted plain-TCP garbage")
	}

	cfg, err := r.agent.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", addr, cfg); err != nil {
		t.Fatalf("good client after garbage: %v", err)
	}
	if res := s.next(t); res.err != nil || res.peer != (Peer{RoleAgent, "node1"}) {
		t.Fatalf("server after garbage: %+v", res)
	}
}

func TestServerFromOtherCARefused(t *testing.T) {
	r := newRun(t)
	other := newRun(t)
	// The foreign manager trusts our clients but presents its own run's
	// certificate: our client must not talk to it.
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(other.manager))
	cfg, err := r.agent.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, "tcp", s.ln.Addr().String(), cfg)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client error = %v, want unknown authority", err)
	}
	if res := s.next(t); res.err == nil {
		t.Fatal("server finished a handshake the client refused")
	}
}

func TestServerWithClientCertRefused(t *testing.T) {
	r := newRun(t)
	// A stolen agent certificate cannot impersonate the manager.
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.agent))
	cfg, err := r.client.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("client accepted an agent certificate as the manager")
	}
	s.next(t)
}

func TestServerTLSBadBundle(t *testing.T) {
	r := newRun(t)
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(&Bundle{}))
	cfg, err := r.client.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err == nil {
		t.Fatal("handshake with an unusable server bundle succeeded")
	}
	if res := s.next(t); res.err == nil {
		t.Fatal("server with an unusable bundle finished a handshake")
	}
}

func TestConfigs(t *testing.T) {
	r := newRun(t)
	sc := r.ca.ServerTLS(r.manager)
	if sc.MinVersion != tls.VersionTLS13 || sc.ClientAuth != tls.RequireAndVerifyClientCert || len(sc.Certificates) != 1 {
		t.Errorf("server config: min %x auth %v certs %d", sc.MinVersion, sc.ClientAuth, len(sc.Certificates))
	}
	cc, err := r.agent.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if cc.MinVersion != tls.VersionTLS13 || cc.InsecureSkipVerify || len(cc.Certificates) != 1 || cc.RootCAs == nil {
		t.Errorf("client config: min %x insecure %v certs %d", cc.MinVersion, cc.InsecureSkipVerify, len(cc.Certificates))
	}
	if _, err := (&Bundle{CA: "junk", Cert: r.agent.Cert, Key: r.agent.Key}).ClientTLS(""); err == nil {
		t.Error("ClientTLS accepted a bundle without CA")
	}
	if _, err := (&Bundle{CA: r.agent.CA, Cert: r.agent.Cert, Key: r.client.Key}).ClientTLS(""); err == nil {
		t.Error("ClientTLS accepted a key that does not match the certificate")
	}
}

func TestNewCA(t *testing.T) {
	a, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	c := a.cert
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Error("not a CA certificate")
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", c.PublicKey)
	}
	if !strings.HasPrefix(c.Subject.CommonName, "drover run CA ") || c.Subject.CommonName == b.cert.Subject.CommonName {
		t.Errorf("CN %q / %q", c.Subject.CommonName, b.cert.Subject.CommonName)
	}
	if c.SerialNumber.Cmp(b.cert.SerialNumber) == 0 {
		t.Error("two CAs share a serial")
	}
	now := time.Now()
	if d := now.Sub(c.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore %v is not an hour ago", c.NotBefore)
	}
	if d := c.NotAfter.Sub(now); d < 30*24*time.Hour-time.Minute || d > 30*24*time.Hour+time.Minute {
		t.Errorf("NotAfter %v is not 30 days ahead", c.NotAfter)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if a.CertPEM() == "" || strings.Contains(a.CertPEM(), "PRIVATE") {
		t.Error("CertPEM")
	}
}

func TestManagerHosts(t *testing.T) {
	r := newRun(t)
	c := leafOf(t, r.manager)
	for _, ip := range []string{"127.0.0.1", "::1"} {
		if !slices.ContainsFunc(c.IPAddresses, func(a net.IP) bool { return a.Equal(net.ParseIP(ip)) }) {
			t.Errorf("IP SANs %v lack %s", c.IPAddresses, ip)
		}
		if err := c.VerifyHostname(ip); err != nil {
			t.Error(err)
		}
	}
	for _, n := range []string{"localhost", ManagerName} {
		if !slices.Contains(c.DNSNames, n) {
			t.Errorf("DNS SANs %v lack %s", c.DNSNames, n)
		}
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("manager EKU %v", c.ExtKeyUsage)
	}
	if a := leafOf(t, r.agent); len(a.IPAddresses)+len(a.DNSNames) != 0 {
		t.Errorf("agent cert has SANs %v %v", a.IPAddresses, a.DNSNames)
	}
}

func TestRoleRoundTrip(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for _, role := range []Role{RoleManager, RoleAgent, RoleClient} {
		name := "party-" + string(role) + " é/x"
		b, err := ca.Issue(role, name, []string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		leaf := leafOf(t, b)
		usage := x509.ExtKeyUsageClientAuth
		if role == RoleManager {
			usage = x509.ExtKeyUsageServerAuth
		}
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		p, err := PeerOf(tls.ConnectionState{VerifiedChains: chains, PeerCertificates: chains[0]})
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if p != (Peer{role, name}) {
			t.Errorf("round trip %+v, want %s %q", p, role, name)
		}
		if !slices.Equal(leaf.Subject.OrganizationalUnit, []string{string(role)}) {
			t.Errorf("OU %v", leaf.Subject.OrganizationalUnit)
		}
		if !leaf.NotAfter.Equal(ca.cert.NotAfter) {
			t.Errorf("%s leaf outlives the CA", role)
		}
	}
}

func TestIssueInvalid(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Issue("admin", "x", nil); err == nil {
		t.Error("unknown role issued")
	}
	if _, err := ca.Issue(RoleAgent, "", nil); err == nil {
		t.Error("empty name issued")
	}
}

func TestPeerOfRefuses(t *testing.T) {
	r := newRun(t)
	leaf := leafOf(t, r.agent)
	if _, err := PeerOf(tls.ConnectionState{}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("empty state: %v", err)
	}
	// Presented but unverified is not enough.
	if _, err := PeerOf(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("unverified: %v", err)
	}
	// A verified certificate without a role (the CA itself here).
	st := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{r.ca.cert}}}
	if _, err := PeerOf(st); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("no role: %v", err)
	}
}

func TestPeerFromContext(t *testing.T) {
	r := newRun(t)
	leaf := leafOf(t, r.client)
	st := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, r.ca.cert}}}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: st}})
	p, err := PeerFromContext(ctx)
	if err != nil || p != (Peer{RoleClient, "alice"}) {
		t.Fatalf("PeerFromContext = %+v, %v", p, err)
	}
	if _, err := PeerFromContext(context.Background()); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("no peer: %v", err)
	}
	ctx = peer.NewContext(context.Background(), &peer.Peer{})
	if _, err := PeerFromContext(ctx); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("no TLS: %v", err)
	}
}

func TestBundleJSON(t *testing.T) {
	r := newRun(t)
	data, err := json.Marshal(r.agent)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ca", "cert", "key"} {
		if _, ok := m[k].(string); !ok {
			t.Errorf("JSON lacks string %q: %s", k, data)
		}
	}
	var back Bundle
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back != *r.agent {
		t.Fatal("bundle changed in JSON round trip")
	}
	if _, err := back.TLS(); err != nil {
		t.Fatal(err)
	}
	if _, err := back.ClientTLS(""); err != nil {
		t.Fatal(err)
	}
}

func TestWriteReadFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home", "sub")
	path := filepath.Join(dir, "serve.json")
	r := newRun(t)
	type serve struct {
		Address string  `json:"address"`
		Client  *Bundle `json:"client"`
	}
	in := serve{Address: "127.0.0.1:1234", Client: r.client}
	if err := WriteFile(path, in); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", di.Mode().Perm())
	}
	var out serve
	if err := ReadFile(path, &out); err != nil {
		t.Fatal(err)
	}
	if out.Address != in.Address || *out.Client != *in.Client {
		t.Errorf("read back %+v", out)
	}

	// Overwriting a file that had wide permissions leaves it 0600.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	err = ReadFile(path, &out)
	if !errors.Is(err, ErrInsecureFile) || !strings.Contains(err.Error(), path) {
		t.Errorf("ReadFile of 0644 file: %v", err)
	}
	if err := WriteFile(path, in); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("overwritten file mode %v", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}

	if err := ReadFile(filepath.Join(dir, "missing.json"), &out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if err := ReadFile(link, &out); err != nil {
		t.Errorf("ReadFile through a symlink to a 0600 file: %v", err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := ReadFile(link, &out); !errors.Is(err, ErrInsecureFile) {
		t.Errorf("ReadFile through a symlink to a 0640 file: %v", err)
	}
	if err := ReadFile(dir, &out); err == nil {
		t.Error("ReadFile read a directory")
	}
	if err := WriteFile(filepath.Join(dir, "bad.json"), func() {}); err == nil {
		t.Error("WriteFile encoded a func")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.json")); !errors.Is(err, os.ErrNotExist) {
		t.Error("failed WriteFile left a file")
	}
}
