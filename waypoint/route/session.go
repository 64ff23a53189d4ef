package route

// Session persistence (Gateway API sessionPersistence): a rule's requests that carry a session
// token go to the backend endpoint the token names.
//
// Rules kept here:
//   - The token names the backend Service, the endpoint's address and the session's start:
//     base64url("<service>|<ip:port>|<unix seconds>"). It grants nothing: the proxy follows it
//     only to a ready endpoint of one of the rule's own backends, so a forged token can choose
//     among what the balancer could have chosen, never beyond.
//   - A session older than its absolute timeout is over: the request is balanced anew and gets a
//     new token.
//   - The token travels in the session's cookie, or in its header (the response sets it, the
//     client sends it back).

import (
	"encoding/base64"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// Session is what a session token says.
type Session struct {
	Service  string
	Endpoint netip.AddrPort
	Start    time.Time
}

// Token encodes s.
func (s Session) Token() string {
	return base64.RawURLEncoding.EncodeToString([]byte(s.Service + "|" + s.Endpoint.String() + "|" + strconv.FormatInt(s.Start.Unix(), 10)))
}

// SessionOf returns the session r carries for sp, if any, valid and not expired at now.
func SessionOf(r *http.Request, sp *routev1.SessionPersistence, now time.Time) (Session, bool) {
	var tok string
	if sp.GetHeader() {
		tok = r.Header.Get(sp.GetName())
	} else if c, err := r.Cookie(sp.GetName()); err == nil {
		tok = c.Value
	}
	if tok == "" {
		return Session{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return Session{}, false
	}
	parts := strings.Split(string(b), "|")
	if len(parts) != 3 || parts[0] == "" {
		return Session{}, false
	}
	ep, err := netip.ParseAddrPort(parts[1])
	if err != nil {
		return Session{}, false
	}
	sec, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return Session{}, false
	}
	s := Session{Service: parts[0], Endpoint: ep, Start: time.Unix(sec, 0)}
	if t := sp.GetAbsoluteTimeoutS(); t > 0 && now.Sub(s.Start) >= time.Duration(t)*time.Second {
		return Session{}, false
	}
	return s, true
}

// SetSession puts s's token on a response's header h: a Set-Cookie (path /, HttpOnly; Max-Age the
// absolute timeout for a permanent cookie) or the session's header.
func SetSession(h http.Header, sp *routev1.SessionPersistence, s Session) {
	if sp.GetHeader() {
		h.Set(sp.GetName(), s.Token())
		return
	}
	c := &http.Cookie{Name: sp.GetName(), Value: s.Token(), Path: "/", HttpOnly: true}
	if sp.GetPermanent() && sp.GetAbsoluteTimeoutS() > 0 {
		c.MaxAge = int(sp.GetAbsoluteTimeoutS())
	}
	h.Add("Set-Cookie", c.String())
}
