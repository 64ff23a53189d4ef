// Tests of Authenticate: where tokens are found, what makes one valid, and what a valid one
// does to the request.
//
// Rules kept here: one Authenticator and one clock for the table, the clock never moving, so
// the JWKS is fetched once and no on-demand refetch is allowed (the rotation cases are in
// keys_test.go); every case builds its own request.

package jwt

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const (
	issA = "https://issuer.example"
	issB = "https://custom.example"
	issC = "https://noalg.example"
)

func TestAuthenticate(t *testing.T) {
	rs, ec, forged := rsaKey(t, "k1"), ecKey(t, "e1"), rsaKey(t, "k1")
	noAlg, err := json.Marshal(jose.JSONWebKey{Key: rs.priv.Public(), KeyID: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	noKid := &testKey{alg: jose.RS256, priv: rs.priv}
	srv := newJWKSServer(t, rs)
	clk := newClock()
	a := New([]Provider{{
		Issuer: issA, JWKSURI: srv.URL, Audiences: []string{"echo", "other"},
		OutputClaimToHeaders: []ClaimHeader{
			{"X-Jwt-Sub", "sub"}, {"x-jwt-team", "org.team"}, {"X-Jwt-Level", "level"},
			{"X-Jwt-Big", "big"}, {"X-Jwt-Admin", "admin"}, {"X-Jwt-Role", "https://example.com/role"},
			{"X-Jwt-Groups", "groups"}, {"X-Jwt-Bad", "crlf"},
		},
	}, {
		Issuer: issB, JWKS: jwksJSON(t, ec), ForwardOriginalToken: true,
		FromHeaders: []HeaderLocation{{Name: "x-token", Prefix: "Token "}}, FromParams: []string{"tok"},
	}, {
		Issuer: issC, JWKS: `{"keys":[` + string(noAlg) + `]}`, FromHeaders: []HeaderLocation{{Name: "X-Noalg"}},
	}}, NewKeySource(srv.Client(), clk.Now, nil))

	good := rs.sign(t, claims(issA, "alice", nil))
	goodB := ec.sign(t, claims(issB, "bob", map[string]any{"aud": "anything"}))
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+issA+`","sub":"mallory","aud":"echo"}`)) + "."
	pub, _ := x509.MarshalPKIXPublicKey(rs.priv.Public())
	hmac := (&testKey{kid: "k1"}).signHMAC(t, pub, claims(issA, "mallory", nil))
	hmacC := (&testKey{kid: "k1"}).signHMAC(t, pub, claims(issC, "mallory", nil))

	bearer := func(tok string) *http.Request { return request("/p", "Authorization", "Bearer "+tok) }
	type check func(t *testing.T, r *http.Request, res Result)
	header := func(name, want string) check {
		return func(t *testing.T, r *http.Request, _ Result) {
			if got, ok := r.Header[http.CanonicalHeaderKey(name)]; want == "" && ok || want != "" && strings.Join(got, ",") != want {
				t.Errorf("header %s = %q, want %q", name, got, want)
			}
		}
	}
	for _, tc := range []struct {
		name      string
		req       *http.Request
		present   bool
		principal string
		err       error
		checks    []check
	}{
		{name: "valid RS256 bearer", req: bearer(good), present: true, principal: issA + "/alice",
			checks: []check{header("Authorization", ""), header("X-Jwt-Sub", "alice")}},
		{name: "valid without kid tries every key", req: bearer(noKid.sign(t, claims(issA, "alice", nil))), present: true, principal: issA + "/alice"},
		{name: "default access_token param, removed, others kept",
			req:     request("/p?a=1&access_token=" + good + "&b=x%20y&access_token=again"),
			present: true, principal: issA + "/alice",
			checks: []check{func(t *testing.T, r *http.Request, _ Result) {
				if r.URL.RawQuery != "a=1&b=x%20y" || r.RequestURI != "/p?a=1&b=x%20y" {
					t.Errorf("query %q, request URI %q", r.URL.RawQuery, r.RequestURI)
				}
			}}},
		{name: "custom header with prefix, forwarded", req: request("/p", "X-Token", "token "+goodB),
			present: true, principal: issB + "/bob", checks: []check{header("X-Token", "token "+goodB)}},
		{name: "custom query param, forwarded", req: request("/p?tok=" + goodB), present: true, principal: issB + "/bob",
			checks: []check{func(t *testing.T, r *http.Request, _ Result) {
				if r.URL.RawQuery != "tok="+goodB {
					t.Errorf("query %q", r.URL.RawQuery)
				}
			}}},
		{name: "claims to headers", present: true, principal: issA + "/alice",
			req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"org": map[string]any{"team": "pay"},
				"level": 3, "big": int64(1234567890123), "admin": true, "https://example.com/role": "ops",
				"groups": []string{"a", "b"}, "crlf": "a\r\nX-Evil: 1"}))),
			checks: []check{header("X-Jwt-Team", "pay"), header("X-Jwt-Level", "3"), header("X-Jwt-Big", "1234567890123"),
				header("X-Jwt-Admin", "true"), header("X-Jwt-Role", "ops"), header("X-Jwt-Groups", ""), header("X-Jwt-Bad", ""),
				func(t *testing.T, _ *http.Request, res Result) {
					if res.Claims["level"] != json.Number("3") || res.Claims["sub"] != "alice" {
						t.Errorf("claims %v", res.Claims)
					}
				}}},
		{name: "client-supplied claim header removed", req: request("/p", "X-Jwt-Sub", "admin"),
			checks: []check{header("X-Jwt-Sub", "")}},
		{name: "no token", req: request("/p")},
		{name: "basic auth is no token", req: request("/p", "Authorization", "Basic YTpi"),
			checks: []check{header("Authorization", "Basic YTpi")}},
		{name: "empty bearer is no token", req: request("/p", "Authorization", "Bearer ")},
		{name: "expired", req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"exp": t0.Add(-2 * time.Minute).Unix()}))),
			present: true, err: ErrExpired, checks: []check{header("X-Jwt-Sub", "")}},
		{name: "expired within leeway", req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"exp": t0.Add(-30 * time.Second).Unix()}))),
			present: true, principal: issA + "/alice"},
		{name: "not yet valid", req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"nbf": t0.Add(2 * time.Minute).Unix()}))),
			present: true, err: ErrNotYetValid},
		{name: "wrong issuer", req: bearer(rs.sign(t, claims("https://evil.example", "alice", nil))),
			present: true, err: ErrUnknownIssuer},
		{name: "issuer of another location", req: bearer(goodB), present: true, err: ErrUnknownIssuer},
		{name: "wrong audience", req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"aud": "someone-else"}))),
			present: true, err: ErrAudience},
		{name: "no audience", req: bearer(rs.sign(t, claims(issA, "alice", map[string]any{"aud": nil}))),
			present: true, err: ErrAudience},
		{name: "bad signature, same kid", req: bearer(forged.sign(t, claims(issA, "alice", nil))),
			present: true, err: ErrSignature, checks: []check{header("X-Jwt-Sub", "")}},
		{name: "alg none", req: bearer(none), present: true, err: ErrMalformed},
		{name: "HS256 with the RSA public key as secret", req: bearer(hmac), present: true, err: ErrNoKey},
		{name: "HS256 with the RSA public key as secret, key without alg", req: request("/p", "X-Noalg", hmacC),
			present: true, err: ErrSignature},
		{name: "key without alg", req: request("/p", "X-Noalg", rs.sign(t, claims(issC, "carol", nil))),
			present: true, principal: issC + "/carol"},
		{name: "unknown kid, inline JWKS", req: request("/p", "X-Token", "Token "+(&testKey{kid: "zz", alg: jose.ES256, priv: ec.priv}).sign(t, claims(issB, "bob", nil))),
			present: true, err: ErrNoKey},
		{name: "garbage", req: bearer("abc"), present: true, err: ErrMalformed},
		{name: "payload not an object", req: bearer(rs.signRaw(t, []byte(`["x"]`))), present: true, err: ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := a.Authenticate(tc.req)
			if res.Present != tc.present || res.Principal != tc.principal || !errors.Is(res.Err, tc.err) || (tc.err == nil) != (res.Err == nil) {
				t.Fatalf("got %+v, want present %v principal %q err %v", res, tc.present, tc.principal, tc.err)
			}
			for _, c := range tc.checks {
				c(t, tc.req, res)
			}
		})
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
}

// signHMAC signs claims with HS256 and secret, with k's kid.
func (k *testKey) signHMAC(t *testing.T, secret []byte, c map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret},
		(&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), k.kid))
	if err != nil {
		t.Fatal(err)
	}
	return sign(t, s, c)
}

// signRaw signs payload as is.
func (k *testKey) signRaw(t *testing.T, payload []byte) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv},
		(&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), k.kid))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sign(t *testing.T, s jose.Signer, c map[string]any) string {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestValidate(t *testing.T) {
	ec := ecKey(t, "e1")
	for _, tc := range []struct {
		name string
		p    Provider
		ok   bool
	}{
		{"inline", Provider{Issuer: issA, JWKS: jwksJSON(t, ec)}, true},
		{"uri", Provider{Issuer: issA, JWKSURI: "https://issuer.example/jwks"}, true},
		{"no issuer", Provider{JWKSURI: "https://issuer.example/jwks"}, false},
		{"no jwks", Provider{Issuer: issA}, false},
		{"bad inline", Provider{Issuer: issA, JWKS: `{"keys":[{"kty":"nope"}]}`}, false},
		{"relative uri", Provider{Issuer: issA, JWKSURI: "/jwks"}, false},
		{"bad header", Provider{Issuer: issA, JWKSURI: "https://i/j", FromHeaders: []HeaderLocation{{Name: "a b"}}}, false},
		{"bad output", Provider{Issuer: issA, JWKSURI: "https://i/j", OutputClaimToHeaders: []ClaimHeader{{"x:y", "sub"}}}, false},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
