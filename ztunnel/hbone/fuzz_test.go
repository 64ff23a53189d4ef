package hbone

import (
	"net/http"
	"net/netip"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// FuzzServeCONNECT feeds arbitrary request lines and headers to the server's request checks. They
// must never panic, must answer only 200, 400 or 401, and must hand the Handler only a CONNECT
// whose authority is the ip:port it was given.
func FuzzServeCONNECT(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", `for="1.2.3.4:5"`, "00-abc-def-01", true)
	f.Add("CONNECT", "[::1]:15008", "", "", true)
	f.Add("GET", "10.0.0.1:80", "", "", true)
	f.Add("CONNECT", "10.0.0.1", "", "", true)
	f.Add("CONNECT", "host:80", "", "", true)
	f.Add("CONNECT", "[fe80::1%eth0]:80", "", "", true)
	f.Add("CONNECT", "10.0.0.1:80", "", "", false)
	f.Fuzz(func(t *testing.T, method, authority, forwarded, traceparent string, withPeer bool) {
		fields := []hpack.HeaderField{
			{Name: ":method", Value: method},
			{Name: ":authority", Value: authority},
			{Name: "forwarded", Value: forwarded},
			{Name: "traceparent", Value: traceparent},
		}
		var ci connInfo
		if withPeer {
			ci.peer = idClient
		}
		req, status := parseRequest(fields, ci)
		switch status {
		case http.StatusOK:
			if req == nil {
				t.Fatal("200 without a request")
			}
			want, err := netip.ParseAddrPort(authority)
			if err != nil || req.Authority != want || method != http.MethodConnect || !withPeer {
				t.Fatalf("handler got authority %v for %q %q (peer %v)", req.Authority, method, authority, withPeer)
			}
			if req.Forwarded != forwarded || req.Traceparent != traceparent {
				t.Fatalf("forwarded %q traceparent %q, want %q %q", req.Forwarded, req.Traceparent, forwarded, traceparent)
			}
		case http.StatusBadRequest, http.StatusUnauthorized:
			if req != nil {
				t.Fatalf("request built, then %d", status)
			}
		default:
			t.Fatalf("status %d", status)
		}
	})
}
