// Package ca is istiod-lite's certificate authority: it keeps the signing key (generated once and
// stored in a Kubernetes Secret, or supplied by the user), signs workload certificates for callers
// authorized to hold the identity asked for, and serves CreateCertificate over gRPC. It does not
// authenticate tokens (authn) or watch pods itself (it is handed a PodsOnNode).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"
)

// Keys of the Secrets holding a CA. The user-supplied Secret follows Istio's "cacerts" layout.
const (
	KeyCACert    = "ca-cert.pem"
	KeyCAKey     = "ca-key.pem"
	KeyRootCert  = "root-cert.pem"
	KeyCertChain = "cert-chain.pem"
)

// Authority signs certificates with one key.
type Authority struct {
	cert  *x509.Certificate
	key   crypto.Signer
	chain []string // PEM: the signing cert and its issuers, excluding the root
	roots []string // PEM roots
	now   func() time.Time
}

// NewSelfSigned creates a root CA for trustDomain.
func NewSelfSigned(trustDomain string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "ambient root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-sign: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// NewAuthority loads a CA from PEM. rootPEM and chainPEM may be empty for a self-signed root:
// the signing certificate is then its own root.
func NewAuthority(certPEM, keyPEM, chainPEM, rootPEM []byte) (*Authority, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca cert: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("ca cert is not a CA")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("ca key: no PEM block")
	}
	var key crypto.Signer
	if k, err := x509.ParsePKCS8PrivateKey(kb.Bytes); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, errors.New("ca key cannot sign")
		}
		key = s
	} else if k, err2 := x509.ParseECPrivateKey(kb.Bytes); err2 == nil {
		key = k
	} else if k, err3 := x509.ParsePKCS1PrivateKey(kb.Bytes); err3 == nil {
		key = k
	} else {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("ca key does not match ca cert")
	}
	a := &Authority{cert: cert, key: key, now: time.Now}
	a.chain = []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))}
	for _, c := range splitPEM(chainPEM) {
		if c != a.chain[0] {
			a.chain = append(a.chain, c)
		}
	}
	a.roots = splitPEM(rootPEM)
	if len(a.roots) == 0 {
		a.roots = []string{a.chain[0]} // self-signed: the signing certificate is the root
	}
	return a, nil
}

// Roots returns the PEM roots proxies must trust.
func (a *Authority) Roots() []string { return append([]string(nil), a.roots...) }

// Sign issues a leaf certificate for identity with the CSR's public key. The certificate carries
// exactly one URI SAN, identity, whatever else the CSR asks for. It returns the chain: leaf,
// intermediates, root.
func (a *Authority) Sign(csr *x509.CertificateRequest, identity *url.URL, ttl time.Duration) ([]string, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(ttl)
	// A leaf must not outlive its issuer.
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew
		NotAfter:              notAfter,
		URIs:                  []*url.URL{identity},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	out := []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	for _, c := range a.chain {
		if !slices.Contains(a.roots, c) {
			out = append(out, c)
		}
	}
	return append(out, a.roots...), nil
}

// SignServing issues a serving certificate for istiod-lite's own TLS listener. It returns the
// chain to present, DER: the leaf and the intermediates, without the roots.
func (a *Authority) SignServing(key crypto.Signer, dnsNames []string, ttl time.Duration) ([][]byte, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, fmt.Errorf("sign serving cert: %w", err)
	}
	out := [][]byte{der}
	for _, c := range a.chain {
		if !slices.Contains(a.roots, c) {
			blk, _ := pem.Decode([]byte(c))
			out = append(out, blk.Bytes)
		}
	}
	return out, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func splitPEM(b []byte) []string {
	var out []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, string(pem.EncodeToMemory(blk)))
		}
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
