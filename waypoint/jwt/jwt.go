// Package jwt authenticates requests at the waypoint with JSON Web Tokens: Istio's
// RequestAuthentication (security.istio.io/v1), the jwtRules of the policies that apply to the
// waypoint or to a Service it serves. Envelope and signatures are go-jose's; nothing here is
// hand-written crypto.
//
// Rules kept here (Istio's, as Envoy's jwt_authn filter carries them out):
//   - A request with no token in any provider's location passes without identity (Present
//     false). A request whose token is invalid fails (Err set): the caller answers 401.
//   - Locations are tried in provider order, each provider's headers then its params; without
//     fromHeaders and fromParams a provider reads "Authorization: Bearer <token>" then the
//     access_token query parameter (Envoy's default, which Istio keeps). The first token found
//     is the request's token (Istio leaves a request with several undefined). It is checked
//     against the providers that read that location and whose issuer is its iss (an empty
//     Issuer takes any); it is valid when one of them accepts it.
//   - A provider accepts a token in JWS compact form, signed with one of the algorithms below
//     (never "none") by a key of its JWKS (inline JWKS wins over JWKSURI). Keys are chosen by kid
//     (every key when the token has none) and must allow that alg and use "sig"; a kid the set
//     does not have refetches the JWKS once (rate limited by the KeySource). Then exp, nbf and
//     iat (not in the future) hold with Leeway on the KeySource clock, and, when Audiences is
//     set, aud holds one of them.
//   - On success: Principal is "<iss>/<sub>", Claims the payload with numbers as json.Number
//     (their exact text); OutputClaimToHeaders sets headers, and the token is removed from where
//     it was found unless ForwardOriginalToken. Headers named in any OutputClaimToHeaders are
//     removed from every request first, so a client can never supply them itself.
package jwt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/net/http/httpguts"
)

// Provider is one jwtRules entry.
type Provider struct {
	// Issuer must equal the token's iss; empty takes any (Istio requires it: see Validate).
	Issuer string
	// Audiences: the token's aud must hold one of them; empty: any audience.
	Audiences []string
	// JWKSURI is fetched over HTTP(S) and cached by the KeySource.
	JWKSURI string
	// JWKS is inline JWKS JSON; it wins over JWKSURI.
	JWKS string
	// FromHeaders and FromParams are where the token is read; with neither, Authorization:
	// Bearer then the access_token query parameter.
	FromHeaders []HeaderLocation
	FromParams  []string
	// OutputClaimToHeaders copies string, number and bool claims to request headers; a claim
	// name is looked up as is, then as a path split at "." ("a.b" is claim b of object a).
	OutputClaimToHeaders []ClaimHeader
	// ForwardOriginalToken keeps the token in the request; false removes it before forwarding.
	ForwardOriginalToken bool
}

// HeaderLocation is a header that carries a token after Prefix (matched case-insensitively,
// e.g. "Bearer "). A value without the prefix holds no token.
type HeaderLocation struct{ Name, Prefix string }

// ClaimHeader copies a claim to a request header.
type ClaimHeader struct{ Header, Claim string }

// Result of authenticating a request.
type Result struct {
	// Present: a token was found in a location of some provider.
	Present bool
	// Principal: "<iss>/<sub>" of the valid token (Istio's request.auth.principal); empty when
	// none.
	Principal string
	// Claims of the valid token; numbers are json.Number.
	Claims map[string]any
	// Err says why a present token is invalid; it wraps one of the Err* values below.
	Err error
}

// Why a token is invalid: Result.Err wraps one of them (errors.Is), with detail for logs.
var (
	ErrMalformed     = errors.New("jwt is malformed")
	ErrUnknownIssuer = errors.New("jwt issuer is not configured")
	ErrKeys          = errors.New("jwks is not available")
	ErrNoKey         = errors.New("jwks has no key for the jwt's kid and alg")
	ErrSignature     = errors.New("jwt verification fails")
	ErrExpired       = errors.New("jwt is expired")
	ErrNotYetValid   = errors.New("jwt is not yet valid")
	ErrAudience      = errors.New("jwt audience is not allowed")
)

// Leeway is the clock skew allowed on exp, nbf and iat.
const Leeway = 60 * time.Second

// algorithms are those Envoy accepts; "none" is not one, so go-jose refuses it at parsing.
var algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// Authenticator checks requests against providers. Safe for concurrent use.
type Authenticator struct {
	keys       *KeySource
	locs       []*location // every provider's locations, deduplicated, in order
	outHeaders []string    // canonical names of every OutputClaimToHeaders header
}

type provider struct {
	Provider
	inline    *jose.JSONWebKeySet // parsed JWKS, when set
	inlineErr error
	outputs   []ClaimHeader // those with a valid header name, canonical
}

// New builds an Authenticator. providers are copied. keys may be nil when no provider has a
// JWKSURI (a private KeySource is made); pass the process's one otherwise. A provider that
// Validate rejects is kept: the tokens it is asked about fail.
func New(providers []Provider, keys *KeySource) *Authenticator {
	if keys == nil {
		keys = NewKeySource(nil, nil, nil)
	}
	a := &Authenticator{keys: keys}
	byKey := map[locKey]*location{}
	for _, cfg := range providers {
		cfg.Audiences = slices.Clone(cfg.Audiences)
		p := &provider{Provider: cfg}
		if cfg.JWKS != "" {
			p.inline, _, p.inlineErr = parseJWKS([]byte(cfg.JWKS))
		}
		for _, o := range cfg.OutputClaimToHeaders {
			if !httpguts.ValidHeaderFieldName(o.Header) || o.Claim == "" {
				continue
			}
			o.Header = http.CanonicalHeaderKey(o.Header)
			p.outputs = append(p.outputs, o)
			if !slices.Contains(a.outHeaders, o.Header) {
				a.outHeaders = append(a.outHeaders, o.Header)
			}
		}
		for _, l := range locationsOf(cfg) {
			loc := byKey[l]
			if loc == nil {
				loc = &location{locKey: l}
				byKey[l] = loc
				a.locs = append(a.locs, loc)
			}
			loc.providers = append(loc.providers, p)
		}
	}
	return a
}

// Authenticate finds the request's token, validates it and, when valid, applies the provider's
// OutputClaimToHeaders and removes the token unless ForwardOriginalToken. It may wait for a JWKS
// fetch, at most until r's context ends.
func (a *Authenticator) Authenticate(r *http.Request) Result {
	if r.Header == nil {
		r.Header = http.Header{}
	}
	for _, h := range a.outHeaders {
		r.Header.Del(h)
	}
	loc, token := a.find(r)
	if loc == nil {
		return Result{}
	}
	res := Result{Present: true}
	tok, err := josejwt.ParseSigned(token, algorithms)
	if err != nil {
		res.Err = fmt.Errorf("%w: %v", ErrMalformed, err)
		return res
	}
	// The claims are read before the signature is checked only to pick the providers; nothing
	// of them is used unless a provider's key verifies the same payload.
	var std josejwt.Claims
	var raw json.RawMessage
	if err := tok.UnsafeClaimsWithoutVerification(&std, &raw); err != nil {
		res.Err = fmt.Errorf("%w: %v", ErrMalformed, err)
		return res
	}
	claims, err := decodeClaims(raw)
	if err != nil {
		res.Err = fmt.Errorf("%w: %v", ErrMalformed, err)
		return res
	}
	for _, p := range loc.providers {
		if p.Issuer != "" && p.Issuer != std.Issuer {
			continue
		}
		if err := a.verify(r.Context(), p, tok, &std); err != nil {
			if res.Err == nil {
				res.Err = err
			}
			continue
		}
		res.Principal, res.Claims, res.Err = std.Issuer+"/"+std.Subject, claims, nil
		p.output(r.Header, claims)
		if !p.ForwardOriginalToken {
			loc.remove(r)
		}
		return res
	}
	if res.Err == nil {
		res.Err = fmt.Errorf("%w: %q", ErrUnknownIssuer, std.Issuer)
	}
	return res
}

// verify checks tok's signature with p's keys and its claims against p.
func (a *Authenticator) verify(ctx context.Context, p *provider, tok *josejwt.JSONWebToken, std *josejwt.Claims) error {
	var set *jose.JSONWebKeySet
	var err error
	switch {
	case p.JWKS != "":
		set, err = p.inline, p.inlineErr
	case p.JWKSURI != "":
		set, err = a.keys.get(ctx, p.JWKSURI)
	default:
		err = errors.New("the provider has no JWKS")
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKeys, err)
	}
	h := tok.Headers[0]
	keys := candidates(set, h)
	if len(keys) == 0 && h.KeyID != "" && p.JWKS == "" {
		// Key rotation: the issuer may have published a key since the set was fetched.
		if set, err = a.keys.refetch(ctx, p.JWKSURI); err == nil {
			keys = candidates(set, h)
		}
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: kid %q, alg %q", ErrNoKey, h.KeyID, h.Algorithm)
	}
	err = nil
	for _, k := range keys {
		// Claims with no destination only verifies the signature of the payload.
		if err = tok.Claims(k); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	exp := josejwt.Expected{Issuer: p.Issuer, AnyAudience: p.Audiences, Time: a.keys.now()}
	switch err := std.ValidateWithLeeway(exp, Leeway); {
	case err == nil:
		return nil
	case errors.Is(err, josejwt.ErrExpired):
		return ErrExpired
	case errors.Is(err, josejwt.ErrNotValidYet):
		return ErrNotYetValid
	case errors.Is(err, josejwt.ErrIssuedInTheFuture):
		return fmt.Errorf("%w: issued in the future", ErrNotYetValid)
	case errors.Is(err, josejwt.ErrInvalidAudience):
		return ErrAudience
	case errors.Is(err, josejwt.ErrInvalidIssuer):
		return ErrUnknownIssuer
	default:
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
}

// candidates are the keys of set that may have signed a token with header h.
func candidates(set *jose.JSONWebKeySet, h jose.Header) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range set.Keys {
		if (h.KeyID == "" || k.KeyID == h.KeyID) && (k.Use == "" || k.Use == "sig") &&
			(k.Algorithm == "" || k.Algorithm == h.Algorithm) {
			out = append(out, k)
		}
	}
	return out
}

// decodeClaims decodes a JSON object keeping numbers exact.
func decodeClaims(raw []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("claims are not a JSON object")
	}
	return m, nil
}

// Validate reports what makes p unusable or not Istio's: no issuer, no JWKS, an inline JWKS
// without a usable key, a JWKSURI that is not an absolute http(s) URL, an empty location or an
// output header that is not a valid header name.
func (p Provider) Validate() error {
	var errs []error
	if p.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	switch {
	case p.JWKS != "":
		if _, skipped, err := parseJWKS([]byte(p.JWKS)); err != nil {
			errs = append(errs, fmt.Errorf("jwks: %w", err))
		} else if skipped != nil {
			errs = append(errs, fmt.Errorf("jwks: keys skipped: %w", skipped))
		}
	case p.JWKSURI != "":
		if u, err := url.Parse(p.JWKSURI); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("jwksUri %q is not an http(s) URL", p.JWKSURI))
		}
	default:
		errs = append(errs, errors.New("jwks or jwksUri is required (OpenID discovery is the caller's)"))
	}
	for _, h := range p.FromHeaders {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			errs = append(errs, fmt.Errorf("fromHeaders: invalid header name %q", h.Name))
		}
	}
	for _, q := range p.FromParams {
		if q == "" {
			errs = append(errs, errors.New("fromParams: empty name"))
		}
	}
	for _, o := range p.OutputClaimToHeaders {
		if !httpguts.ValidHeaderFieldName(o.Header) || o.Claim == "" {
			errs = append(errs, fmt.Errorf("outputClaimToHeaders: invalid entry %q <- %q", o.Header, o.Claim))
		}
	}
	return errors.Join(errs...)
}
