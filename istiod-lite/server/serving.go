package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ambient-mesh/ambient/istiod-lite/ca"
)

// servingCert is istiod-lite's own TLS certificate, issued by its CA and renewed at half-life.
//
// A rotation of the CA does not replace it at once: proxies verify it against the roots they
// were handed before, which may not list the new root yet (a mounted root ConfigMap lags), while
// the old root stays trusted for the rotation's retention. It is replaced, by the new
// authority, once the roots of its own issuer are no longer served, or at half-life.
type servingCert struct {
	keeper   *ca.Keeper
	dnsNames []string

	mu          sync.Mutex
	cert        *tls.Certificate
	renewAt     time.Time
	issuerRoots []string
}

const servingTTL = 30 * 24 * time.Hour

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil && time.Now().Before(s.renewAt) && s.issuerTrusted() {
		return s.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	a := s.keeper.Authority()
	chain, err := a.SignServing(key, s.dnsNames, servingTTL)
	if err != nil {
		return nil, err
	}
	s.cert = &tls.Certificate{Certificate: chain, PrivateKey: key}
	s.renewAt = time.Now().Add(servingTTL / 2)
	s.issuerRoots = a.Roots()
	return s.cert, nil
}

// issuerTrusted reports whether every root of the current certificate's issuer is still served.
func (s *servingCert) issuerTrusted() bool {
	served := s.keeper.Roots()
	for _, r := range s.issuerRoots {
		if !slices.Contains(served, r) {
			return false
		}
	}
	return true
}
