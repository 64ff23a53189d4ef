package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"

	"github.com/ambient-mesh/ambient/ztunnel/certs"
)

// dialCertManager builds the certificate manager, and what the config dump shows of it, on
// istiod-lite's CA (same address and TLS as
// xDS, ztunnel's projected token on each call).
func dialCertManager(ctx context.Context, cfg Config, tlsCfg *tls.Config, roots func() *x509.CertPool, log *slog.Logger) (Certs, snapshot, error) {
	ca, err := certs.DialCA(ctx, cfg.XDSAddr, tlsCfg, cfg.TokenFile)
	if err != nil {
		return nil, nil, err
	}
	c := certs.Default()
	c.CA, c.Roots, c.TrustDomain, c.Log = ca, roots, cfg.TrustDomain, log
	m, err := certs.New(c)
	if err != nil {
		ca.Close()
		return nil, nil, err
	}
	return m, snapshot(m.Snapshot), nil
}

// snapshot returns the certificates' state now; it marshals as that, for the config dump.
type snapshot func() []certs.CertInfo

func (f snapshot) MarshalJSON() ([]byte, error) { return json.Marshal(f()) }
