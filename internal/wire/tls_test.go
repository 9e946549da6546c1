package wire

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/nodetest"
)

// selfSigned makes a certificate that is its own CA, for loopback tests.
func selfSigned(t *testing.T, cn string, usage x509.ExtKeyUsage) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, cert
}

// The session over mutual TLS, with Authorize matching the client
// certificate to the node name; a node claiming another name is refused.
func TestMutualTLSAuthorize(t *testing.T) {
	ctx := ctxT(t)
	srvCert, srvX := selfSigned(t, "manager", x509.ExtKeyUsageServerAuth)
	cliCert, cliX := selfSigned(t, "n1", x509.ExtKeyUsageClientAuth)
	clients, servers := x509.NewCertPool(), x509.NewCertPool()
	clients.AddCert(cliX)
	servers.AddCert(srvX)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerOptions{
		NodeTimeout:       quick.NodeTimeout,
		HeartbeatInterval: quick.HeartbeatInterval,
		Authorize: func(ctx context.Context, h *droverpb.Hello) error {
			p, ok := peer.FromContext(ctx)
			if !ok {
				return errors.New("no peer")
			}
			ti, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok || len(ti.State.PeerCertificates) == 0 {
				return errors.New("no client certificate")
			}
			if cn := ti.State.PeerCertificates[0].Subject.CommonName; cn != h.GetNode() {
				return fmt.Errorf("certificate of %s used by %s", cn, h.GetNode())
			}
			return nil
		},
	})
	nodes := make(chan *RemoteNode, 2)
	srv.opts.OnNode = func(n *RemoteNode) { nodes <- n }
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clients,
		MinVersion:   tls.VersionTLS13,
	})))
	srv.Register(gs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Close()
		gs.Stop()
		<-served
	})
	dial := func(ctx context.Context) (*grpc.ClientConn, error) {
		return grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cliCert},
			RootCAs:      servers,
			MinVersion:   tls.VersionTLS13,
		})))
	}

	impostor := runAgent(t, "n2", "", AgentOptions{Dial: dial})
	if err := impostor.wait(t); status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("impostor: %v", err)
	}
	runAgent(t, "n1", "", AgentOptions{Dial: dial})
	var n *RemoteNode
	select {
	case n = <-nodes:
	case <-time.After(patience):
		t.Fatal("no node")
	}
	if n.Name() != "n1" {
		t.Fatalf("node %s", n.Name())
	}
	x := nodetest.NewExits(t, n)
	if _, err := n.Start(ctx, helperSpec(t, "e", "exit", "5")); err != nil {
		t.Fatal(err)
	}
	if e := x.One("e"); e.Code != 5 {
		t.Fatalf("exit %+v", e)
	}
}
