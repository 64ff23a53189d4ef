package hbone

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// FuzzServeCONNECT feeds arbitrary request lines and headers to the server's request handling. It
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
		var seen *Request
		s := &Server{handler: HandlerFunc(func(ctx context.Context, req *Request) error {
			seen = req
			conn, err := req.Accept()
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, conn)
			return err
		})}
		r := httptest.NewRequest(http.MethodGet, "/", strings.NewReader("body"))
		r.Method, r.Host, r.URL.Path = method, authority, ""
		r.Header.Set("Forwarded", forwarded)
		r.Header.Set("Traceparent", traceparent)
		if withPeer {
			r = r.WithContext(context.WithValue(r.Context(), connInfoKey{}, connInfo{peer: idClient}))
		}
		w := httptest.NewRecorder()
		s.serveHTTP(w, r)
		switch w.Code {
		case http.StatusOK:
			if seen == nil {
				t.Fatal("200 without the handler")
			}
			want, err := netip.ParseAddrPort(authority)
			if err != nil || seen.Authority != want || method != http.MethodConnect || !withPeer {
				t.Fatalf("handler got authority %v for %q %q (peer %v)", seen.Authority, method, authority, withPeer)
			}
			if seen.Forwarded != r.Header.Get("Forwarded") {
				t.Fatalf("forwarded %q, want %q", seen.Forwarded, r.Header.Get("Forwarded"))
			}
		case http.StatusBadRequest, http.StatusUnauthorized:
			if seen != nil {
				t.Fatalf("handler called, then %d", w.Code)
			}
		default:
			t.Fatalf("status %d", w.Code)
		}
	})
}
