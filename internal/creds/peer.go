package creds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Peer identifies the other side of an established connection from its
// verified certificate.
type Peer struct {
	Role Role
	Name string
}

// PeerOf returns the peer of a TLS connection from its verified chain. It
// fails (wrapping ErrUnauthenticated) when the chain was not verified, the
// certificate carries no single known role, or its extended key usage does
// not fit the role.
func PeerOf(state tls.ConnectionState) (Peer, error) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return Peer{}, fmt.Errorf("creds: identify peer: %w: no verified certificate chain", ErrUnauthenticated)
	}
	return peerOfCert(state.VerifiedChains[0][0])
}

func peerOfCert(leaf *x509.Certificate) (Peer, error) {
	name := leaf.Subject.CommonName
	ou := leaf.Subject.OrganizationalUnit
	if len(ou) != 1 || !Role(ou[0]).Valid() {
		return Peer{}, fmt.Errorf("creds: identify peer %q: %w: no role in certificate (OU %q)", name, ErrUnauthenticated, ou)
	}
	role := Role(ou[0])
	if name == "" {
		return Peer{}, fmt.Errorf("creds: identify peer %s: %w: empty name", role, ErrUnauthenticated)
	}
	want := x509.ExtKeyUsageClientAuth
	if role == RoleManager {
		want = x509.ExtKeyUsageServerAuth
	}
	if len(leaf.ExtKeyUsage) != 1 || !slices.Contains(leaf.ExtKeyUsage, want) {
		return Peer{}, fmt.Errorf("creds: identify peer %s %q: %w: key usage does not fit role", role, name, ErrUnauthenticated)
	}
	return Peer{Role: role, Name: name}, nil
}

// PeerFromContext returns the peer of a gRPC call from its context; the
// connection must use TLS credentials (credentials.NewTLS).
func PeerFromContext(ctx context.Context) (Peer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, fmt.Errorf("creds: identify peer: %w: no peer in context", ErrUnauthenticated)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Peer{}, fmt.Errorf("creds: identify peer %v: %w: connection is not TLS", p.Addr, ErrUnauthenticated)
	}
	return PeerOf(info.State)
}
