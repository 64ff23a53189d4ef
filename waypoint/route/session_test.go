package route

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func TestSessionTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := Session{Service: "shop/echo.shop.svc.cluster.local", Endpoint: netip.MustParseAddrPort("10.1.0.4:8080"), Start: now}
	cookie := &routev1.SessionPersistence{Name: "sticky", AbsoluteTimeoutS: 60, Permanent: true}
	header := &routev1.SessionPersistence{Name: "x-session", Header: true}

	h := http.Header{}
	SetSession(h, cookie, s)
	set := h.Get("Set-Cookie")
	if !strings.HasPrefix(set, "sticky=") || !strings.Contains(set, "Max-Age=60") || !strings.Contains(set, "HttpOnly") {
		t.Errorf("Set-Cookie %q", set)
	}
	req := func(h http.Header) *http.Request { return &http.Request{Header: h} }
	resp := &http.Response{Header: h}
	back := http.Header{}
	for _, c := range resp.Cookies() {
		back.Add("Cookie", c.Name+"="+c.Value)
	}
	for _, tc := range []struct {
		name string
		r    *http.Request
		sp   *routev1.SessionPersistence
		at   time.Time
		ok   bool
	}{
		{"cookie sent back", req(back), cookie, now.Add(59 * time.Second), true},
		{"cookie past the absolute timeout", req(back), cookie, now.Add(60 * time.Second), false},
		{"no cookie", req(http.Header{}), cookie, now, false},
		{"header", req(http.Header{"X-Session": {s.Token()}}), header, now.Add(24 * time.Hour), true},
		{"not base64", req(http.Header{"X-Session": {"%%%"}}), header, now, false},
		{"not a token", req(http.Header{"X-Session": {"YWJj"}}), header, now, false},
	} {
		got, ok := SessionOf(tc.r, tc.sp, tc.at)
		if ok != tc.ok || ok && got != s {
			t.Errorf("%s: %+v, %v; want %v", tc.name, got, ok, tc.ok)
		}
	}
	hh := http.Header{}
	SetSession(hh, header, s)
	if hh.Get("X-Session") != s.Token() || hh.Get("Set-Cookie") != "" {
		t.Errorf("header session set %v", hh)
	}
}
