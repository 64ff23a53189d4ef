package hbone

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
)

// ALPN is the only application protocol HBONE speaks.
const ALPN = "h2"

// Sentinel errors for the conditions callers act on.
var (
	// ErrUntrusted: the peer's chain does not verify against the trust bundle (unknown CA, expired,
	// wrong key usage).
	ErrUntrusted = errors.New("hbone: peer certificate not trusted")
	// ErrIdentity: the peer's certificate does not carry exactly one valid identity, or carries one
	// that is not acceptable.
	ErrIdentity = errors.New("hbone: peer identity not acceptable")
)

// Credentials are a workload's certificate and the trust bundle it checks peers against. Both are
// functions so that certificate rotation and bundle updates take effect on the next handshake
// without rebuilding configs.
type Credentials struct {
	// Certificate returns the workload's certificate chain and key.
	Certificate func() (*tls.Certificate, error)
	// Roots returns the trust bundle.
	Roots func() *x509.CertPool
	// Now is the clock for certificate validity; nil means time.Now. Tests set it.
	Now func() time.Time
}

func (c Credentials) validate() error {
	var errs []error
	if c.Certificate == nil {
		errs = append(errs, errors.New("credentials: Certificate is nil"))
	}
	if c.Roots == nil {
		errs = append(errs, errors.New("credentials: Roots is nil"))
	}
	return errors.Join(errs...)
}

func (c Credentials) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// NewKeyAndCSR makes an EC P-256 key and a DER certificate signing request whose only subject
// alternative name is id's URI, as the CA requires (DESIGN.md §3).
func NewKeyAndCSR(id identity.Identity) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csr, err := NewCSR(key, id)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// NewCSR makes a DER certificate signing request for key with id as its only URI SAN and no
// subject, DNS names, e-mail or IP addresses.
func NewCSR(key crypto.Signer, id identity.Identity) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return der, nil
}

// IdentityOf returns the identity a certificate carries: its single URI SAN. A certificate with no
// URI SAN, more than one, or one that is not a valid identity carries none.
func IdentityOf(cert *x509.Certificate) (identity.Identity, error) {
	if len(cert.URIs) != 1 {
		return identity.Identity{}, fmt.Errorf("%w: certificate has %d URI SANs, want 1", ErrIdentity, len(cert.URIs))
	}
	id, err := identity.FromURL(cert.URIs[0])
	if err != nil {
		return identity.Identity{}, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return id, nil
}

// VerifyPeer verifies a peer's chain (leaf first, as TLS delivers it) against roots at time now,
// for the given extended key usage, and returns the leaf's identity. When acceptable is non-empty
// the identity must be one of them. Hostnames and SNI play no part: identity is the URI SAN.
func VerifyPeer(rawCerts [][]byte, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage, acceptable ...identity.Identity) (identity.Identity, error) {
	if len(rawCerts) == 0 {
		return identity.Identity{}, fmt.Errorf("%w: no certificate", ErrUntrusted)
	}
	if roots == nil {
		return identity.Identity{}, fmt.Errorf("%w: no trust bundle", ErrUntrusted)
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return identity.Identity{}, fmt.Errorf("%w: parse certificate %d: %w", ErrUntrusted, i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return identity.Identity{}, fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	id, err := IdentityOf(certs[0])
	if err != nil {
		return identity.Identity{}, err
	}
	if len(acceptable) > 0 && !slices.Contains(acceptable, id) {
		return identity.Identity{}, fmt.Errorf("%w: peer is %s, want one of %v", ErrIdentity, id, acceptable)
	}
	return id, nil
}

// baseTLSConfig is what both ends share: TLS 1.3 only, ALPN h2. TLS 1.3 suites are not
// configurable in crypto/tls; it chooses AES-GCM first on hardware with AES instructions, which is
// every node we run on.
func baseTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
	}
}

// ServerTLSConfig returns the TLS config of an HBONE server: it requires a client certificate that
// verifies against creds.Roots and carries a valid identity. Which identities may do what is the
// Handler's decision, made on Request.Peer.
func ServerTLSConfig(creds Credentials) (*tls.Config, error) {
	if err := creds.validate(); err != nil {
		return nil, err
	}
	cfg := baseTLSConfig()
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return creds.Certificate() }
	// RequireAnyClientCert plus our own verification: crypto/tls's ClientCAs check would work too,
	// but VerifyConnection is where the identity rule lives for both ends.
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		_, err := VerifyPeer(rawChain(cs), creds.Roots(), creds.now(), x509.ExtKeyUsageClientAuth)
		return err
	}
	return cfg, nil
}

// ClientTLSConfig returns the TLS config for connecting to an HBONE server that must present the
// identity dst. No SNI is sent and no hostname is checked: the identity is.
func ClientTLSConfig(creds Credentials, dst identity.Identity) (*tls.Config, error) {
	if err := creds.validate(); err != nil {
		return nil, err
	}
	if err := dst.Validate(); err != nil {
		return nil, fmt.Errorf("destination identity: %w", err)
	}
	cfg := baseTLSConfig()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return creds.Certificate() }
	// InsecureSkipVerify turns off crypto/tls's hostname-based check only; VerifyConnection below
	// verifies the chain and the identity and fails the handshake otherwise.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		_, err := VerifyPeer(rawChain(cs), creds.Roots(), creds.now(), x509.ExtKeyUsageServerAuth, dst)
		return err
	}
	return cfg, nil
}

func rawChain(cs tls.ConnectionState) [][]byte {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return raw
}
