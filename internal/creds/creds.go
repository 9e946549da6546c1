// Package creds makes the credentials of one drover run and turns them into
// mutual-TLS configurations.
//
// The manager creates a CA in memory when it starts (NewCA); its private key
// never leaves the manager process. The CA issues one leaf certificate per
// party (Issue): the manager's server certificate, and client certificates
// for agents and for control clients. Every connection is TLS 1.3 with both
// sides verified against that CA; anything else fails the handshake.
//
// # Role encoding
//
// A leaf certificate carries its role as the single OrganizationalUnit of its
// subject ("manager", "agent" or "client") and the party's name as the
// subject CommonName; the Organization is "drover". Because the CA signs the
// subject, a peer cannot change its role without a certificate from the same
// run. The extended key usage matches the role as well: manager certificates
// are ServerAuth only, agent and client certificates ClientAuth only, so a
// client certificate can never serve as the manager and the manager
// certificate can never be used to log in as a client. PeerOf checks both.
//
// # Manager host names
//
// Every manager certificate also carries the fixed DNS name ManagerName
// (under the reserved .invalid domain, so it never collides with a real
// host). Bundle.ClientTLS("") verifies the manager against that name, so an
// agent can dial the manager by whatever address it was given (an IP, an
// alias, a tunnel) and still get full chain and name verification; the
// verified chain is then available to PeerOf on the client side too.
package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Role is what a certificate's holder is allowed to be in a run.
type Role string

// The roles of a run.
const (
	RoleManager Role = "manager"
	RoleAgent   Role = "agent"
	RoleClient  Role = "client"
)

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	switch r {
	case RoleManager, RoleAgent, RoleClient:
		return true
	}
	return false
}

// ManagerName is a DNS name present in every manager certificate. ClientTLS
// verifies against it when no server name is given.
const ManagerName = "manager.drover.invalid"

// organization is the subject Organization of every drover certificate.
const organization = "drover"

// caValidity is how long a run's CA (and every leaf it issues) is valid;
// backdate covers clock skew between nodes.
const (
	caValidity = 30 * 24 * time.Hour
	backdate   = time.Hour
)

var (
	// ErrUnauthenticated is returned (wrapped) by PeerOf and PeerFromContext
	// when the other side has no verified drover certificate.
	ErrUnauthenticated = errors.New("peer not authenticated")
	// ErrWrongRole is returned (wrapped) by a TLS handshake when the peer's
	// certificate is valid but carries a role not allowed on that side.
	ErrWrongRole = errors.New("wrong role")
)

// CA is a run's certificate authority. It lives only in memory. It is safe
// for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM string
	pool    *x509.CertPool
}

// NewCA makes a fresh self-signed ECDSA P-256 CA, valid from an hour ago
// for 30 days, with a random serial and CommonName "drover run CA <id>".
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creds: new CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("creds: new CA: %w", err)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("creds: new CA: random id: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{organization},
			CommonName:   "drover run CA " + hex.EncodeToString(id),
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creds: new CA: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creds: new CA: parse: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{
		cert:    cert,
		key:     key,
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		pool:    pool,
	}, nil
}

// CertPEM returns the CA certificate (never the key) in PEM form.
func (ca *CA) CertPEM() string { return ca.certPEM }

// Issue makes a leaf certificate and key signed by ca for one party: its
// CommonName is name and its role is stored as described in the package
// documentation. A manager certificate gets ExtKeyUsageServerAuth and hosts
// as DNS or IP SANs (plus ManagerName); agent and client certificates get
// ExtKeyUsageClientAuth, and hosts is ignored for them. The leaf expires with
// the CA.
func (ca *CA) Issue(role Role, name string, hosts []string) (*Bundle, error) {
	subject := fmt.Sprintf("%s %q", role, name)
	if !role.Valid() {
		return nil, fmt.Errorf("creds: issue %s: unknown role %q", subject, role)
	}
	if name == "" {
		return nil, fmt.Errorf("creds: issue %s: empty name", subject)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creds: issue %s: generate key: %w", subject, err)
	}
	certPEM, err := ca.sign(role, name, hosts, &key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("creds: issue %s: %w", subject, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("creds: issue %s: encode key: %w", subject, err)
	}
	return &Bundle{
		CA:   ca.certPEM,
		Cert: certPEM,
		Key:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
	}, nil
}

// sign makes the PEM certificate of one party for pub, as Issue describes.
func (ca *CA) sign(role Role, name string, hosts []string, pub any) (string, error) {
	serial, err := randomSerial()
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{organization},
			OrganizationalUnit: []string{string(role)},
			CommonName:         name,
		},
		NotBefore:             time.Now().Add(-backdate),
		NotAfter:              ca.cert.NotAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if role == RoleManager {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{ManagerName}
		for _, h := range hosts {
			if h == "" {
				continue
			}
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else if h != ManagerName {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

// ServerTLS returns the configuration for the manager's listener: it
// presents b (the manager's bundle), requires a client certificate verified
// against ca, accepts only agent and client roles, and speaks TLS 1.3 only.
// If b cannot be loaded every handshake fails with that error.
func (ca *CA) ServerTLS(b *Bundle) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  ca.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := requireRole(cs, RoleAgent, RoleClient)
			return err
		},
	}
	cert, err := b.TLS()
	if err != nil {
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, fmt.Errorf("creds: server TLS: %w", err)
		}
		return cfg
	}
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

// Bundle is one party's credentials: the run's CA certificate, its own
// certificate and its private key, all PEM.
type Bundle struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// TLS returns the bundle's certificate and key as a tls.Certificate.
func (b *Bundle) TLS() (tls.Certificate, error) {
	if b == nil {
		return tls.Certificate{}, errors.New("creds: load bundle: nil bundle")
	}
	cert, err := tls.X509KeyPair([]byte(b.Cert), []byte(b.Key))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creds: load bundle certificate: %w", err)
	}
	return cert, nil
}

// Pool returns a certificate pool holding only the bundle's CA.
func (b *Bundle) Pool() (*x509.CertPool, error) {
	if b == nil {
		return nil, errors.New("creds: load bundle CA: nil bundle")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(b.CA)) {
		return nil, errors.New("creds: load bundle CA: no certificate in PEM")
	}
	return pool, nil
}

// ClientTLS returns the configuration for dialing the manager: it trusts
// only the bundle's CA, presents the bundle's certificate, speaks TLS 1.3
// only and accepts only a certificate with the manager role. serverName is
// the name the manager certificate must carry; "" accepts the manager
// whatever address was dialed (see the package documentation).
func (b *Bundle) ClientTLS(serverName string) (*tls.Config, error) {
	pool, err := b.Pool()
	if err != nil {
		return nil, err
	}
	cert, err := b.TLS()
	if err != nil {
		return nil, err
	}
	if serverName == "" {
		serverName = ManagerName
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		ServerName:   serverName,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := requireRole(cs, RoleManager)
			return err
		},
	}, nil
}

// requireRole is the VerifyConnection check of both sides: the verified
// peer must hold one of roles.
func requireRole(cs tls.ConnectionState, roles ...Role) (Peer, error) {
	p, err := PeerOf(cs)
	if err != nil {
		return Peer{}, err
	}
	for _, r := range roles {
		if p.Role == r {
			return p, nil
		}
	}
	return Peer{}, fmt.Errorf("creds: verify peer %q: %w: %s (want %v)", p.Name, ErrWrongRole, p.Role, roles)
}

// randomSerial returns a random positive 128-bit certificate serial.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
