package ca

import (
	"log/slog"
	"testing"
)

// FuzzParseCSR: the CSR is the caller's; parsing must not panic, and an accepted CSR must name
// exactly one identity in our trust domain.
func FuzzParseCSR(f *testing.F) {
	f.Add("")
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
	s := NewService(slog.New(slog.DiscardHandler), DefaultConfig(), nil, nil, nil, nil)
	f.Fuzz(func(t *testing.T, in string) {
		_, id, err := s.parseCSR(in)
		if err != nil {
			return
		}
		if id.TrustDomain != "cluster.local" || id.Validate() != nil {
			t.Fatalf("accepted identity %v: %v", id, id.Validate())
		}
	})
}
