package creds

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := NewToken(ca.Hash())
	if err != nil {
		t.Fatal(err)
	}
	enc := tok.Encode()
	back, err := ParseToken("  " + enc + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != tok.ID || !bytes.Equal(back.Secret, tok.Secret) || back.CAHash != ca.Hash() {
		t.Fatalf("round trip changed the token")
	}
	secret := strings.Split(enc, ".")[2]
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "token", tok)
	for _, shown := range []string{tok.String(), fmt.Sprint(tok), logged.String()} {
		if strings.Contains(shown, secret) || !strings.Contains(shown, tok.ID) {
			t.Errorf("shown as %q: want the id and not the secret", shown)
		}
	}
	other, _ := NewToken(ca.Hash())
	if other.ID == tok.ID || bytes.Equal(other.Secret, tok.Secret) {
		t.Error("two tokens share an id or a secret")
	}
}

func TestParseTokenRefuses(t *testing.T) {
	ca, _ := NewCA()
	tok, _ := NewToken(ca.Hash())
	enc := tok.Encode()
	parts := strings.Split(enc, ".")
	for _, bad := range []string{
		"", "garbage", "drover1", enc + ".x", "drover2." + strings.Join(parts[1:], "."),
		strings.Join([]string{parts[0], parts[1], parts[2][1:], parts[3]}, "."),
		strings.Join([]string{parts[0], parts[1], parts[2], parts[3] + "AA"}, "."),
		strings.Join([]string{parts[0], "!!!!!!!!", parts[2], parts[3]}, "."),
		strings.Replace(enc, ".", " ", 1),
	} {
		_, err := ParseToken(bad)
		if !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrBadToken", bad, err)
		}
		if err != nil && len(bad) > 8 && strings.Contains(err.Error(), bad) {
			t.Errorf("the error repeats the input: %v", err)
		}
	}
}

func TestSignRequest(t *testing.T) {
	r := newRun(t)
	csr, key, err := NewRequest("claimed-name")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := r.ca.SignRequest(RoleAgent, "node7", csr)
	if err != nil {
		t.Fatal(err)
	}
	b := &Bundle{CA: r.ca.CertPEM(), Cert: cert, Key: string(key)}
	leaf := leafOf(t, b)
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.cert)
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	// The CA names the node, not the request.
	if p, err := PeerOf(tls.ConnectionState{VerifiedChains: chains}); err != nil || p != (Peer{RoleAgent, "node7"}) {
		t.Fatalf("peer %+v, %v", p, err)
	}
	// The bundle works on a real connection to the manager.
	s := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	cfg, err := b.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, "tcp", s.ln.Addr().String(), cfg); err != nil {
		t.Fatal(err)
	}
	if res := s.next(t); res.err != nil || res.peer != (Peer{RoleAgent, "node7"}) {
		t.Fatalf("server saw %+v", res)
	}

	if _, err := r.ca.SignRequest(RoleManager, "node7", csr); err == nil {
		t.Error("signed a manager certificate for a request")
	}
	if _, err := r.ca.SignRequest(RoleAgent, "", csr); err == nil {
		t.Error("signed an empty name")
	}
	if _, err := r.ca.SignRequest(RoleAgent, "n", []byte("junk")); err == nil {
		t.Error("signed junk")
	}
	// A request whose signature does not hold (its key swapped).
	blk, _ := pem.Decode(csr)
	parsed, _ := x509.ParseCertificateRequest(blk.Bytes)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: parsed.Subject}, otherKey)
	other, _ := x509.ParseCertificateRequest(otherDER)
	forged := bytes.Replace(blk.Bytes, parsed.RawSubjectPublicKeyInfo, other.RawSubjectPublicKeyInfo, 1)
	if _, err := r.ca.SignRequest(RoleAgent, "n", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: forged})); err == nil {
		t.Error("signed a request with a broken signature")
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n"}}, rsaKey)
	if _, err := r.ca.SignRequest(RoleAgent, "n", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: rsaDER})); err == nil {
		t.Error("signed an RSA key")
	}
}

func TestPinnedTLS(t *testing.T) {
	r := newRun(t)
	conf, err := r.ca.EnrolTLS(r.manager)
	if err != nil {
		t.Fatal(err)
	}
	if conf.ClientAuth != 0 {
		t.Fatalf("the enrolment listener asks for a client certificate (%v)", conf.ClientAuth)
	}
	s := startServer(t, "tcp", "127.0.0.1:0", conf)
	addr := s.ln.Addr().String()

	// The pin of this CA: the handshake holds (no client certificate, so
	// the server has no verified peer).
	if _, err := dial(t, "tcp", addr, PinnedTLS(r.ca.Hash())); err != nil && !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("pinned to the right CA: %v", err)
	}
	if res := s.next(t); !errors.Is(res.err, ErrUnauthenticated) {
		t.Errorf("server saw %+v", res)
	}

	// The pin of another CA: refused by the client during the handshake.
	other := newRun(t)
	_, err = dial(t, "tcp", addr, PinnedTLS(other.ca.Hash()))
	if !errors.Is(err, ErrWrongCA) {
		t.Fatalf("pinned to another CA: %v, want ErrWrongCA", err)
	}
	if res := s.next(t); res.err == nil {
		t.Error("the server finished a handshake the client refused")
	}

	// A server of the right CA that presents no CA certificate, and one
	// that presents the right CA beside a leaf of another CA.
	plain := startServer(t, "tcp", "127.0.0.1:0", r.ca.ServerTLS(r.manager))
	if _, err := dial(t, "tcp", plain.ln.Addr().String(), PinnedTLS(r.ca.Hash())); !errors.Is(err, ErrWrongCA) {
		t.Errorf("no CA in the chain: %v", err)
	}
	plain.next(t)
	mixed, err := other.ca.EnrolTLS(other.manager)
	if err != nil {
		t.Fatal(err)
	}
	mixed.Certificates[0].Certificate[1] = r.ca.cert.Raw
	ms := startServer(t, "tcp", "127.0.0.1:0", mixed)
	if _, err := dial(t, "tcp", ms.ln.Addr().String(), PinnedTLS(r.ca.Hash())); !errors.Is(err, ErrWrongCA) {
		t.Errorf("leaf of another CA beside the pinned CA: %v", err)
	}
	ms.next(t)
	// A client certificate of the pinned CA is not a manager.
	cl, err := r.ca.EnrolTLS(r.client)
	if err == nil {
		cs := startServer(t, "tcp", "127.0.0.1:0", cl)
		if _, err := dial(t, "tcp", cs.ln.Addr().String(), PinnedTLS(r.ca.Hash())); !errors.Is(err, ErrWrongCA) {
			t.Errorf("client certificate as the server: %v", err)
		}
		cs.next(t)
	}
}
