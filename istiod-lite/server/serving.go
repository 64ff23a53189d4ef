package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/ambient-mesh/ambient/istiod-lite/ca"
)

// servingCert is istiod-lite's own TLS certificate, issued by its CA and renewed at half-life.
type servingCert struct {
	ca       *ca.Authority
	dnsNames []string

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

const servingTTL = 30 * 24 * time.Hour

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil && time.Now().Before(s.renewAt) {
		return s.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	der, err := s.ca.SignServing(key, s.dnsNames, servingTTL)
	if err != nil {
		return nil, err
	}
	s.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	s.renewAt = time.Now().Add(servingTTL / 2)
	return s.cert, nil
}
