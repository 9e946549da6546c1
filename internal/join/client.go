package join

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
)

// ErrRefused is returned (wrapped) by Enrol when serve refused the token
// or the request; the message says why.
var ErrRefused = errors.New("enrolment refused")

// Joined is what a node keeps after enrolling (in its state directory,
// mode 0600): where it joined, under what name, and its credentials.
type Joined struct {
	Join    string        `json:"join"`    // the enrolment address given
	Manager string        `json:"manager"` // HOST:PORT agents dial
	Node    string        `json:"node"`
	Creds   *creds.Bundle `json:"credentials"`
}

// Enrol trades tok for credentials of node name at the enrolment listener
// addr. It sends nothing unless the listener proves a certificate of the
// CA that tok pins (else the error wraps creds.ErrWrongCA).
func Enrol(ctx context.Context, addr string, tok creds.Token, name string) (*Joined, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	csr, key, err := creds.NewRequest(name)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	conf := creds.PinnedTLS(tok.CAHash)
	// gRPC reports a failed handshake as Unavailable with the text of the
	// error; remember the pin's own verdict to say it plainly.
	var pinErr atomic.Pointer[error]
	verify := conf.VerifyConnection
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			pinErr.Store(&err)
		}
		return err
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	defer conn.Close()
	reply, err := droverpb.NewEnrolmentClient(conn).Enrol(ctx, &droverpb.EnrolRequest{
		TokenId: tok.ID, Secret: tok.Secret, Node: name, Csr: csr,
	})
	if p := pinErr.Load(); p != nil {
		return nil, fmt.Errorf("join %s: %w", addr, *p)
	}
	if err != nil {
		st := status.Convert(err)
		switch st.Code() {
		case codes.PermissionDenied, codes.InvalidArgument:
			return nil, fmt.Errorf("join %s: %w: %s", addr, ErrRefused, st.Message())
		}
		return nil, fmt.Errorf("join %s: %s", addr, st.Message())
	}
	b := &creds.Bundle{CA: reply.GetCa(), Cert: reply.GetCertificate(), Key: string(key)}
	if err := checkReply(b, tok, name); err != nil {
		return nil, fmt.Errorf("join %s: %w", addr, err)
	}
	port := int(reply.GetManagerPort())
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("join %s: serve told no manager port (%d)", addr, port)
	}
	return &Joined{Join: addr, Manager: net.JoinHostPort(host, strconv.Itoa(port)), Node: name, Creds: b}, nil
}

// checkReply makes sure the CA sent is the pinned one and the certificate
// is an agent certificate of it for name, for our key.
func checkReply(b *creds.Bundle, tok creds.Token, name string) error {
	blk, _ := pem.Decode([]byte(b.CA))
	if blk == nil {
		return errors.New("serve sent no CA certificate")
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("serve's CA certificate: %w", err)
	}
	if creds.SPKIHash(ca) != tok.CAHash {
		return creds.ErrWrongCA
	}
	tc, err := b.TLS() // the certificate is for our key
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		return fmt.Errorf("serve's certificate for this node: %w", err)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return fmt.Errorf("serve's certificate for this node: %w", err)
	}
	p, err := creds.PeerOf(tls.ConnectionState{VerifiedChains: chains})
	if err != nil {
		return err
	}
	if p.Role != creds.RoleAgent || p.Name != name {
		return fmt.Errorf("serve sent a certificate for %s %q, not agent %q", p.Role, p.Name, name)
	}
	return nil
}
