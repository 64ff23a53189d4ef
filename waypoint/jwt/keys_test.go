// Tests of the KeySource through Authenticate: key rotation, a JWKS server that goes down,
// one fetch shared by concurrent requests, and fetches that fail.
//
// Rules kept here: each test has its own server, KeySource and clock; the number of fetches is
// read from the server's count; background fetches are waited for (settle), never slept on.

package jwt

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for the background fetch.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type step struct {
	name    string
	advance time.Duration // clock moved before the request
	token   string
	err     error // nil: valid
	hits    int32 // JWKS fetches so far, after the request (and its background fetch)
}

func run(t *testing.T, a *Authenticator, ks *KeySource, clk *clock, srv *jwksServer, steps []step) {
	t.Helper()
	for _, s := range steps {
		clk.Add(s.advance)
		res := a.Authenticate(request("/p", "Authorization", "Bearer "+s.token))
		ks.settle(srv.URL)
		if !errors.Is(res.Err, s.err) || (s.err == nil) != (res.Err == nil) || (s.err == nil) != (res.Principal != "") {
			t.Errorf("%s: got %+v, want err %v", s.name, res, s.err)
		}
		if n := srv.hits.Load(); n != s.hits {
			t.Errorf("%s: %d fetches, want %d", s.name, n, s.hits)
		}
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey := rsaKey(t, "old"), ecKey(t, "new")
	srv := newJWKSServer(t, oldKey)
	clk := newClock()
	ks := NewKeySource(srv.Client(), clk.Now, nil)
	a := New([]Provider{{Issuer: issA, JWKSURI: srv.URL}}, ks)
	oldTok := oldKey.sign(t, claims(issA, "alice", nil))
	newTok := newKey.sign(t, claims(issA, "alice", nil))

	run(t, a, ks, clk, srv, []step{
		{name: "first use fetches", token: oldTok, hits: 1},
		{name: "cached", token: oldTok, hits: 1},
	})
	srv.serve(jwksJSON(t, newKey), 0) // the issuer rotates: only the new key is published
	run(t, a, ks, clk, srv, []step{
		{name: "unknown kid within MinRefetch", advance: 10 * time.Second, token: newTok, err: ErrNoKey, hits: 1},
		{name: "unknown kid refetches", advance: DefaultMinRefetch, token: newTok, hits: 2},
		{name: "rotated key cached", token: newTok, hits: 2},
		{name: "old kid gone, refetch rate limited", advance: time.Second, token: oldTok, err: ErrNoKey, hits: 2},
		{name: "stale set refreshed in the background", advance: DefaultRefresh, token: newTok, hits: 3},
	})
}

func TestJWKSServerDown(t *testing.T) {
	key := rsaKey(t, "k1")
	srv := newJWKSServer(t, key)
	clk := newClock()
	var logs syncBuffer
	ks := NewKeySource(srv.Client(), clk.Now, slog.New(slog.NewTextHandler(&logs, nil)))
	a := New([]Provider{{Issuer: issA, JWKSURI: srv.URL}}, ks)
	tok := key.sign(t, claims(issA, "alice", map[string]any{"exp": t0.Add(2 * time.Hour).Unix()}))
	unknown := ecKey(t, "k2").sign(t, claims(issA, "alice", nil))

	run(t, a, ks, clk, srv, []step{{name: "first fetch", token: tok, hits: 1}})
	srv.Close()
	run(t, a, ks, clk, srv, []step{
		{name: "stale, refresh fails, cached keys serve", advance: DefaultRefresh + time.Minute, token: tok, hits: 1},
		{name: "still served", advance: time.Second, token: tok, hits: 1},
		{name: "unknown kid, refetch fails", advance: DefaultMinRefetch, token: unknown, err: ErrNoKey, hits: 1},
		{name: "an hour later, still served", advance: time.Hour, token: tok, hits: 1},
	})
	if n := strings.Count(logs.String(), "jwks fetch failed"); n != 3 {
		t.Errorf("%d failed fetches logged, want 3:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "keeping_cached=true") {
		t.Errorf("log does not say the cached set is kept:\n%s", logs.String())
	}
}

func TestFirstFetchShared(t *testing.T) {
	key := rsaKey(t, "k1")
	srv := newJWKSServer(t, key)
	srv.serve(jwksJSON(t, key), 100*time.Millisecond)
	ks := NewKeySource(srv.Client(), newClock().Now, nil)
	// Two Authenticators, as after a config push, share the KeySource.
	a1 := New([]Provider{{Issuer: issA, JWKSURI: srv.URL}}, ks)
	a2 := New([]Provider{{Issuer: issA, JWKSURI: srv.URL, Audiences: []string{"echo"}}}, ks)
	tok := key.sign(t, claims(issA, "alice", nil))
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		a := a1
		if i%2 == 1 {
			a = a2
		}
		wg.Go(func() {
			if res := a.Authenticate(request("/p", "Authorization", "Bearer "+tok)); res.Err != nil {
				errs <- res.Err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

func TestFetchFailures(t *testing.T) {
	key := rsaKey(t, "k1")
	good := jwksJSON(t, key)
	tok := key.sign(t, claims(issA, "alice", nil))
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		setup   func(*KeySource)
		wantErr bool
	}{
		{name: "good", status: 200, body: good},
		{name: "server error", status: 500, body: good, wantErr: true},
		{name: "too large", status: 200, body: good, setup: func(k *KeySource) { k.MaxBytes = int64(len(good)) - 1 }, wantErr: true},
		{name: "exactly MaxBytes", status: 200, body: good, setup: func(k *KeySource) { k.MaxBytes = int64(len(good)) }},
		{name: "not JSON", status: 200, body: "<html>", wantErr: true},
		{name: "no usable key", status: 200, body: `{"keys":[{"kty":"nope","kid":"k1"}]}`, wantErr: true},
		{name: "bad key skipped", status: 200, body: `{"keys":[{"kty":"nope"},` + good[len(`{"keys":[`):]},
		{name: "timeout", status: 200, body: "hang", setup: func(k *KeySource) { k.Timeout = 50 * time.Millisecond }, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits int
			var mu sync.Mutex
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				hits++
				mu.Unlock()
				if tc.body == "hang" {
					<-r.Context().Done()
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			clk := newClock()
			ks := NewKeySource(srv.Client(), clk.Now, nil)
			if tc.setup != nil {
				tc.setup(ks)
			}
			a := New([]Provider{{Issuer: issA, JWKSURI: srv.URL}}, ks)
			auth := func() Result { return a.Authenticate(request("/p", "Authorization", "Bearer "+tok)) }
			res := auth()
			if (res.Err != nil) != tc.wantErr || tc.wantErr && !errors.Is(res.Err, ErrKeys) {
				t.Fatalf("got %+v, want error %v", res, tc.wantErr)
			}
			if !tc.wantErr {
				return
			}
			auth() // within FailedRefetch: no new fetch
			mu.Lock()
			if hits != 1 {
				t.Errorf("%d fetches within FailedRefetch, want 1", hits)
			}
			mu.Unlock()
			clk.Add(DefaultFailedRefetch)
			auth()
			mu.Lock()
			if hits != 2 {
				t.Errorf("%d fetches after FailedRefetch, want 2", hits)
			}
			mu.Unlock()
		})
	}
}

func TestWaitEndsWithRequest(t *testing.T) {
	key := rsaKey(t, "k1")
	srv := newJWKSServer(t, key)
	srv.serve(jwksJSON(t, key), 200*time.Millisecond)
	ks := NewKeySource(srv.Client(), newClock().Now, nil)
	a := New([]Provider{{Issuer: issA, JWKSURI: srv.URL}}, ks)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	r := request("/p", "Authorization", "Bearer "+key.sign(t, claims(issA, "alice", nil))).WithContext(ctx)
	if res := a.Authenticate(r); !errors.Is(res.Err, ErrKeys) {
		t.Errorf("got %+v, want ErrKeys", res)
	}
	ks.settle(srv.URL) // the fetch goes on for the next requests
	if res := a.Authenticate(request("/p", "Authorization", "Bearer "+key.sign(t, claims(issA, "alice", nil)))); res.Err != nil {
		t.Errorf("after the fetch: %v", res.Err)
	}
}
