package creds

// Enrolment: how an agent that serve did not launch gets its credentials
// (drover agent --join). The run's CA mints a one-time token; the token
// carries the SHA-256 of the CA's public key (SubjectPublicKeyInfo), so
// the agent can tell serve's enrolment listener from anything else before
// it sends the token's secret, without trusting any other CA. The agent
// then sends a certificate request for a key it made itself and gets back
// an agent certificate of the run; its key never leaves the node.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

var (
	// ErrBadToken is returned (wrapped) by ParseToken for text that is not
	// a drover join token.
	ErrBadToken = errors.New("not a drover join token")
	// ErrWrongCA is returned (wrapped) by the TLS check of PinnedTLS when
	// the server's chain holds no CA with the pinned key: the token is for
	// another serve (or someone else answers at that address).
	ErrWrongCA = errors.New("the server is not the serve that made the token (its CA differs)")
)

// tokenPrefix starts every token; the digit is the format's version.
const tokenPrefix = "drover1"

// Sizes of a token's parts, in bytes.
const (
	tokenIDLen     = 6
	tokenSecretLen = 24
)

var b64 = base64.RawURLEncoding

// Token is a one-time enrolment token: an id that names it to serve, a
// secret that proves it, and the hash of the serve's CA key that the agent
// pins. String and slog show the id only; Encode gives the whole token.
type Token struct {
	ID     string
	Secret []byte
	CAHash [sha256.Size]byte
}

// NewToken makes a fresh random token for the CA whose key hash is caHash.
func NewToken(caHash [sha256.Size]byte) (Token, error) {
	id := make([]byte, tokenIDLen)
	secret := make([]byte, tokenSecretLen)
	if _, err := rand.Read(id); err != nil {
		return Token{}, fmt.Errorf("creds: new token: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return Token{}, fmt.Errorf("creds: new token: %w", err)
	}
	return Token{ID: b64.EncodeToString(id), Secret: secret, CAHash: caHash}, nil
}

// Encode is the token as the user handles it:
// drover1.ID.SECRET.CAHASH, each part unpadded base64url.
func (t Token) Encode() string {
	return strings.Join([]string{tokenPrefix, t.ID, b64.EncodeToString(t.Secret), b64.EncodeToString(t.CAHash[:])}, ".")
}

// String names the token without its secret.
func (t Token) String() string { return "token " + t.ID }

// LogValue keeps the secret out of logs.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.ID) }

// SecretHash is what serve keeps of the secret.
func (t Token) SecretHash() [sha256.Size]byte { return sha256.Sum256(t.Secret) }

// ParseToken reads a token made by Encode; surrounding white space is
// ignored. Anything else fails with ErrBadToken; the message never
// repeats the text, which may be a secret.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != tokenPrefix {
		return Token{}, ErrBadToken
	}
	id, err1 := b64.DecodeString(parts[1])
	secret, err2 := b64.DecodeString(parts[2])
	hash, err3 := b64.DecodeString(parts[3])
	if err := errors.Join(err1, err2, err3); err != nil || len(id) != tokenIDLen || len(secret) != tokenSecretLen || len(hash) != sha256.Size {
		return Token{}, ErrBadToken
	}
	t := Token{ID: parts[1], Secret: secret}
	copy(t.CAHash[:], hash)
	return t, nil
}

// SPKIHash is the SHA-256 of a certificate's SubjectPublicKeyInfo, the pin
// a token carries.
func SPKIHash(c *x509.Certificate) [sha256.Size]byte {
	return sha256.Sum256(c.RawSubjectPublicKeyInfo)
}

// Hash is the pin of this CA (SPKIHash of its certificate).
func (ca *CA) Hash() [sha256.Size]byte { return SPKIHash(ca.cert) }

// SignRequest issues a certificate of role for name to the key of a PEM
// certificate request (as made by NewRequest), whose signature must hold.
// The request's subject is ignored: name and role are what the CA says.
// It returns the certificate in PEM form.
func (ca *CA) SignRequest(role Role, name string, csrPEM []byte) (string, error) {
	subject := fmt.Sprintf("%s %q", role, name)
	if !role.Valid() || role == RoleManager {
		return "", fmt.Errorf("creds: sign request of %s: role not allowed", subject)
	}
	if name == "" {
		return "", fmt.Errorf("creds: sign request of %s: empty name", subject)
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return "", fmt.Errorf("creds: sign request of %s: no PEM certificate request", subject)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("creds: sign request of %s: %w", subject, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return "", fmt.Errorf("creds: sign request of %s: %w", subject, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return "", fmt.Errorf("creds: sign request of %s: ECDSA curve %s not allowed", subject, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return "", fmt.Errorf("creds: sign request of %s: key type %T not allowed (ECDSA P-256 or Ed25519)", subject, k)
	}
	cert, err := ca.sign(role, name, nil, csr.PublicKey)
	if err != nil {
		return "", fmt.Errorf("creds: sign request of %s: %w", subject, err)
	}
	return cert, nil
}

// NewRequest makes a fresh ECDSA P-256 key and a PEM certificate request
// for it with CommonName name. keyPEM is the key, PKCS #8.
func NewRequest(name string) (csrPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("creds: new request for %q: generate key: %w", name, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{organization}, CommonName: name},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creds: new request for %q: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("creds: new request for %q: encode key: %w", name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// EnrolTLS is the configuration of serve's enrolment listener: it
// presents b (a manager bundle of ca) followed by the CA certificate, so a
// joining agent can check the CA against its token's pin, and asks for no
// client certificate: the token is the credential. TLS 1.3 only.
func (ca *CA) EnrolTLS(b *Bundle) (*tls.Config, error) {
	cert, err := b.TLS()
	if err != nil {
		return nil, err
	}
	cert.Certificate = append(cert.Certificate, ca.cert.Raw)
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}, nil
}

// PinnedTLS is the configuration of a joining agent for the enrolment
// listener: it trusts only a CA certificate, among those the server
// presents, whose key hashes to pin, and requires a manager certificate of
// that CA (for ManagerName, whatever address was dialed). Anything else
// fails the handshake, wrapping ErrWrongCA, before any request is sent.
func PinnedTLS(pin [sha256.Size]byte) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified below, against the pinned CA only.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := PinnedCA(cs.PeerCertificates, pin)
			return err
		},
	}
}

// PinnedCA finds the CA certificate with key hash pin in chain (leaf
// first), verifies the leaf as a manager certificate of that CA, and
// returns the CA.
func PinnedCA(chain []*x509.Certificate, pin [sha256.Size]byte) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("creds: check server: %w: no certificate", ErrWrongCA)
	}
	var ca *x509.Certificate
	for _, c := range chain[1:] {
		if h := SPKIHash(c); bytes.Equal(h[:], pin[:]) && c.IsCA {
			ca = c
			break
		}
	}
	if ca == nil {
		return nil, fmt.Errorf("creds: check server: %w", ErrWrongCA)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: ManagerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return nil, fmt.Errorf("creds: check server: %w: %w", ErrWrongCA, err)
	}
	if _, err := requireRole(tls.ConnectionState{VerifiedChains: chains}, RoleManager); err != nil {
		return nil, fmt.Errorf("creds: check server: %w: %w", ErrWrongCA, err)
	}
	return ca, nil
}
