package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// signer makes tokens for the issuer with a key whose public half is in jwks.
func signer(t *testing.T) (sign func(iss, sub string, exp time.Time) string, jwks string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return func(iss, sub string, exp time.Time) string {
		tok, err := josejwt.Signed(sg).Claims(josejwt.Claims{Issuer: iss, Subject: sub, Expiry: josejwt.NewNumericDate(exp)}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}, string(b)
}

// TestJWTRequiredOnOnePath: RequestAuthentication plus a DENY of requests without a request
// principal on /secure, the usual way to require a token on one path.
func TestJWTRequiredOnOnePath(t *testing.T) {
	sign, jwks := signer(t)
	rs := &routev1.ServiceRoutes{
		JwtRules: []*routev1.JWTRule{{Issuer: "https://issuer.example", Jwks: jwks}},
		Policies: []*routev1.Policy{{Name: "require-jwt", Namespace: "shop", Action: routev1.Policy_DENY,
			Rules: []*routev1.PolicyRule{{From: []*routev1.Source{{NotRequestPrincipals: []string{"*"}}},
				To: []*routev1.Operation{{Paths: []string{"/secure*"}}}}}}},
	}
	h := newHarness(t, rs, backend(t, "a", "127.0.0.10", 200))
	good := sign("https://issuer.example", "alice", time.Now().Add(time.Hour))
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/public", "", 200},
		{"/secure", "", http.StatusForbidden},
		{"/secure", good, 200},
		{"/secure", sign("https://other.example", "alice", time.Now().Add(time.Hour)), http.StatusUnauthorized},
		{"/secure", sign("https://issuer.example", "alice", time.Now().Add(-time.Hour)), http.StatusUnauthorized},
		{"/public", "not-a-jwt", http.StatusUnauthorized},
	} {
		var hdr []string
		if tc.token != "" {
			hdr = []string{"Authorization", "Bearer " + tc.token}
		}
		code, r, _ := h.get(t, tc.path, hdr...)
		if code != tc.want {
			t.Errorf("%s with token %.12q: %d, want %d", tc.path, tc.token, code, tc.want)
		}
		if code == 200 && len(r.Headers["Authorization"]) > 0 {
			t.Errorf("%s: the token was forwarded (forwardOriginalToken is false)", tc.path)
		}
	}
}
