package proxy

import (
	"net/http"
	"net/netip"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	"github.com/ambient-mesh/ambient/waypoint/route"
)

// TestSessionPersistence: the first request gets a session cookie naming the endpoint that
// answered; requests that send it back go to that endpoint; a token naming anything else is
// balanced anew and replaced.
func TestSessionPersistence(t *testing.T) {
	a, b := backend(t, "a", "127.0.0.51", 200), backend(t, "b", "127.0.0.52", 200)
	rs := &routev1.ServiceRoutes{Rules: []*routev1.Rule{{Route: "HTTPRoute/shop/echo",
		Backends: []*routev1.Backend{{Service: svcKey, Port: 80, Weight: 1}},
		Session:  &routev1.SessionPersistence{Name: "sticky"}}},
		// Round robin would alternate between a and b: only the session keeps one.
		TrafficPolicy: &routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_ROUND_ROBIN}}
	h := newHarness(t, rs, a, b)
	code, first, hdr := h.get(t, "/")
	cookies := (&http.Response{Header: hdr}).Cookies()
	if code != 200 || len(cookies) != 1 || cookies[0].Name != "sticky" {
		t.Fatalf("first request: %d, cookies %v", code, cookies)
	}
	cookie := "sticky=" + cookies[0].Value
	for i := range 30 {
		code, r, hdr := h.get(t, "/", "Cookie", cookie)
		if code != 200 || r.Pod != first.Pod || hdr.Get("Set-Cookie") != "" {
			t.Fatalf("request %d with the session: %d from %q (Set-Cookie %q), want %q", i, code, r.Pod, hdr.Get("Set-Cookie"), first.Pod)
		}
	}
	seen := map[string]bool{}
	for range 4 { // without the session, round robin goes to both
		_, r, _ := h.get(t, "/")
		seen[r.Pod] = true
	}
	if len(seen) != 2 {
		t.Errorf("requests without the session went to %v, want both endpoints", seen)
	}
	forged := route.Session{Service: svcKey, Endpoint: netip.MustParseAddrPort("10.9.9.9:80")}
	code, r, hdr := h.get(t, "/", "Cookie", "sticky="+forged.Token())
	if code != 200 || (r.Pod != "a" && r.Pod != "b") || hdr.Get("Set-Cookie") == "" {
		t.Errorf("a session naming no endpoint: %d from %q, Set-Cookie %q; want a new session", code, r.Pod, hdr.Get("Set-Cookie"))
	}
}
