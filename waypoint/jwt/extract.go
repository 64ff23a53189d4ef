// Where tokens are read and what a valid one writes back to the request.
//
// Rules kept here:
//   - A header location reads each value of the header in turn; a value that starts with the
//     prefix (case-insensitively; no prefix: any value) holds the token after it, trimmed. An
//     empty token is no token.
//   - A query location reads the first parameter of that name in the raw query, unescaped;
//     removing it drops every parameter of that name and keeps the others as they were written
//     (order and escaping), in r.URL.RawQuery and r.RequestURI alike.
//   - Removing a header token drops the values that held it, the header when none is left.
//   - A claim header takes string claims as they are, numbers as their JSON text and bools as
//     "true"/"false"; an absent claim, an object, a list or a value that is not a valid header
//     value sets nothing.

package jwt

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// locKey is one place a token is read: a header (canonical name) after a prefix, or a query
// parameter.
type locKey struct{ header, prefix, param string }

// location is a place and the providers that read it, in order.
type location struct {
	locKey
	providers []*provider
}

// locationsOf lists p's locations.
func locationsOf(p Provider) []locKey {
	if len(p.FromHeaders) == 0 && len(p.FromParams) == 0 {
		return []locKey{{header: "Authorization", prefix: "Bearer "}, {param: "access_token"}}
	}
	var out []locKey
	for _, h := range p.FromHeaders {
		if h.Name != "" {
			out = append(out, locKey{header: http.CanonicalHeaderKey(h.Name), prefix: h.Prefix})
		}
	}
	for _, q := range p.FromParams {
		if q != "" {
			out = append(out, locKey{param: q})
		}
	}
	return out
}

// find returns the first location holding a token, and that token.
func (a *Authenticator) find(r *http.Request) (*location, string) {
	for _, l := range a.locs {
		if t := l.extract(r); t != "" {
			return l, t
		}
	}
	return nil, ""
}

func (l *location) extract(r *http.Request) string {
	if l.header != "" {
		for _, v := range r.Header[l.header] {
			if t, ok := l.token(v); ok {
				return t
			}
		}
		return ""
	}
	if r.URL == nil {
		return ""
	}
	for _, kv := range strings.Split(r.URL.RawQuery, "&") {
		if v, ok := l.pair(kv); ok {
			if t, err := url.QueryUnescape(v); err == nil {
				return strings.TrimSpace(t)
			}
			return ""
		}
	}
	return ""
}

// token returns the token a header value holds.
func (l *location) token(v string) (string, bool) {
	if len(v) < len(l.prefix) || !strings.EqualFold(v[:len(l.prefix)], l.prefix) {
		return "", false
	}
	t := strings.TrimSpace(v[len(l.prefix):])
	return t, t != ""
}

// pair returns the raw value of the query pair kv when it is the location's parameter.
func (l *location) pair(kv string) (string, bool) {
	k, v, _ := strings.Cut(kv, "=")
	if uk, err := url.QueryUnescape(k); err != nil || uk != l.param {
		return "", false
	}
	return v, true
}

// remove takes the token out of r.
func (l *location) remove(r *http.Request) {
	if l.header != "" {
		var keep []string
		for _, v := range r.Header[l.header] {
			if _, ok := l.token(v); !ok {
				keep = append(keep, v)
			}
		}
		if len(keep) == 0 {
			r.Header.Del(l.header)
		} else {
			r.Header[l.header] = keep
		}
		return
	}
	r.URL.RawQuery = l.dropParam(r.URL.RawQuery)
	if path, query, ok := strings.Cut(r.RequestURI, "?"); ok {
		if query = l.dropParam(query); query != "" {
			path += "?" + query
		}
		r.RequestURI = path
	}
}

func (l *location) dropParam(query string) string {
	if query == "" {
		return ""
	}
	pairs := strings.Split(query, "&")
	keep := pairs[:0]
	for _, kv := range pairs {
		if _, ok := l.pair(kv); !ok {
			keep = append(keep, kv)
		}
	}
	return strings.Join(keep, "&")
}

// output sets p's claim headers from claims.
func (p *provider) output(h http.Header, claims map[string]any) {
	for _, o := range p.outputs {
		if v, ok := claimString(claims, o.Claim); ok && httpguts.ValidHeaderFieldValue(v) {
			h.Set(o.Header, v)
		}
	}
}

// claimString returns the claim named name (or at the path name splits into at ".") as a
// header value.
func claimString(claims map[string]any, name string) (string, bool) {
	v, ok := claims[name]
	if !ok && strings.Contains(name, ".") {
		var cur any = claims
		for _, part := range strings.Split(name, ".") {
			m, isMap := cur.(map[string]any)
			if !isMap {
				return "", false
			}
			cur = m[part]
		}
		v = cur
	}
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}
