package hbone

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambient-mesh/ambient/api/identity"
)

func TestNewKeyAndCSR(t *testing.T) {
	key, der, err := NewKeyAndCSR(idClient)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CSR signature: %v", err)
	}
	type shape struct {
		URIs           []string
		DNS, Emails    int
		IPs            int
		Curve          string
		SubjectIsEmpty bool
	}
	var uris []string
	for _, u := range csr.URIs {
		uris = append(uris, u.String())
	}
	pub, _ := csr.PublicKey.(*ecdsa.PublicKey)
	got := shape{URIs: uris, DNS: len(csr.DNSNames), Emails: len(csr.EmailAddresses), IPs: len(csr.IPAddresses), SubjectIsEmpty: csr.Subject.String() == ""}
	if pub != nil {
		got.Curve = pub.Curve.Params().Name
	}
	want := shape{URIs: []string{idClient.String()}, Curve: elliptic.P256().Params().Name, SubjectIsEmpty: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CSR mismatch (-want +got):\n%s", diff)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Error("CSR key is not the returned key")
	}
	if _, _, err := NewKeyAndCSR(identity.Identity{}); !errors.Is(err, identity.ErrInvalid) {
		t.Errorf("CSR for zero identity: %v, want ErrInvalid", err)
	}
}

func TestVerifyPeer(t *testing.T) {
	good, other := cas(t)
	now := time.Now()
	twoURIs := []*url.URL{idServer.URL(), idOther.URL()}
	badURI, _ := url.Parse("spiffe://cluster.local/not/an/identity")
	tests := []struct {
		name       string
		chain      [][]byte
		usage      x509.ExtKeyUsage
		acceptable []identity.Identity
		want       identity.Identity
		wantErr    error
	}{
		{name: "any identity", chain: good.leaf(t, idServer).Certificate, usage: x509.ExtKeyUsageClientAuth, want: idServer},
		{name: "acceptable", chain: good.leaf(t, idServer).Certificate, usage: x509.ExtKeyUsageServerAuth, acceptable: []identity.Identity{idOther, idServer}, want: idServer},
		{name: "not acceptable", chain: good.leaf(t, idServer).Certificate, usage: x509.ExtKeyUsageServerAuth, acceptable: []identity.Identity{idOther}, wantErr: ErrIdentity},
		{name: "untrusted", chain: other.leaf(t, idServer).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrUntrusted},
		{name: "expired", chain: good.leafWith(t, leafOpts{uris: []*url.URL{idServer.URL()}, notAfter: now.Add(-time.Second)}).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrUntrusted},
		{name: "not yet valid", chain: good.leafWith(t, leafOpts{uris: []*url.URL{idServer.URL()}, notBefore: now.Add(time.Hour)}).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrUntrusted},
		{name: "two identities", chain: good.leafWith(t, leafOpts{uris: twoURIs}).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrIdentity},
		{name: "no identity", chain: good.leafWith(t, leafOpts{}).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrIdentity},
		{name: "malformed identity", chain: good.leafWith(t, leafOpts{uris: []*url.URL{badURI}}).Certificate, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrIdentity},
		{name: "no chain", usage: x509.ExtKeyUsageServerAuth, wantErr: ErrUntrusted},
		{name: "garbage", chain: [][]byte{{1, 2, 3}}, usage: x509.ExtKeyUsageServerAuth, wantErr: ErrUntrusted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyPeer(tt.chain, good.pool, now, tt.usage, tt.acceptable...)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("VerifyPeer error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("identity mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
