package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// checkChain turns the CA's answer into the certificate to serve, or says why it must not be
// served: it must be for key, carry exactly id, and verify against roots at now for both ends of
// an HBONE connection, since the same certificate serves the pod's inbound and outbound tunnels.
// The chain served is the verified one without its root: peers have the root.
func checkChain(pems []string, key *ecdsa.PrivateKey, id identity.Identity, roots *x509.CertPool, now time.Time) (*tls.Certificate, error) {
	var certs []*x509.Certificate
	for i, p := range pems {
		rest := []byte(p)
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("%w: chain element %d holds a %q block", ErrBadAnswer, i, blk.Type)
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: chain element %d: %w", ErrBadAnswer, i, err)
			}
			certs = append(certs, c)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: chain element %d is not PEM", ErrBadAnswer, i)
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrBadAnswer)
	}
	leaf := certs[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("%w: leaf is not for the key of the request", ErrBadAnswer)
	}
	got, err := hbone.IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAnswer, err)
	}
	if got != id {
		return nil, fmt.Errorf("%w: leaf is for %s, asked for %s", ErrBadAnswer, got, id)
	}
	if roots == nil {
		return nil, fmt.Errorf("%w: no trust bundle to verify it against", ErrBadAnswer)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	var served []*x509.Certificate
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadAnswer, err)
		}
		if served == nil {
			served = chains[0]
			if len(served) > 1 {
				served = served[:len(served)-1]
			}
		}
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range served {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}
