// KeySource: the JWKS fetched from jwksUri, cached per URI for the whole process.
//
// Rules kept here:
//   - One set per URI, shared by every Authenticator that names it. The first use fetches it
//     while the request waits; requests that come meanwhile wait for the same fetch.
//   - A set older than Refresh (Istio's 20 min) is still served while a background fetch
//     replaces it.
//   - A kid the set does not have fetches again at once, the request waiting, at most once per
//     MinRefetch per URI (a fetch of any kind counts); within it the token fails.
//   - A failed fetch keeps the last good set, which is served for as long as fetches fail, and
//     is logged at Warn. Without a good set the tokens fail and the fetch is tried again at most
//     once per FailedRefetch.
//   - A fetch is a GET bounded by Timeout whatever the client's own, reads at most MaxBytes,
//     needs 200 and a JWK Set; keys go-jose cannot read are skipped (logged), a set with no
//     usable key fails. Private keys published by mistake are used for their public half only.

package jwt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Defaults of a KeySource.
const (
	DefaultRefresh       = 20 * time.Minute
	DefaultMinRefetch    = 30 * time.Second
	DefaultFailedRefetch = time.Second
	DefaultTimeout       = 10 * time.Second
	DefaultMaxBytes      = 1 << 20
)

// KeySource fetches and caches JWKS by URI, shared by every Authenticator of the process. Its
// exported fields may be changed after NewKeySource and before the first use, not later.
type KeySource struct {
	Refresh       time.Duration // age after which a set is refetched in the background
	MinRefetch    time.Duration // least time between fetches on an unknown kid
	FailedRefetch time.Duration // least time between fetches while no set was ever had
	Timeout       time.Duration // of one fetch
	MaxBytes      int64         // most bytes of a JWKS read

	client *http.Client
	now    func() time.Time
	log    *slog.Logger

	mu   sync.Mutex
	sets map[string]*keySet
}

// keySet is the state of one URI; its fields are guarded by mu.
type keySet struct {
	mu        sync.Mutex
	set       *jose.JSONWebKeySet // last good set, nil before one
	fetched   time.Time           // when set was fetched
	attempted time.Time           // when the last fetch started
	err       error               // of the last fetch
	inflight  chan struct{}       // closed when the running fetch ends; nil when none
}

// NewKeySource returns a KeySource. client nil: one with DefaultTimeout; now nil: time.Now
// (also the clock of exp and nbf); log nil: discarded.
func NewKeySource(client *http.Client, now func() time.Time, log *slog.Logger) *KeySource {
	if client == nil {
		client = &http.Client{Timeout: DefaultTimeout}
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &KeySource{
		Refresh: DefaultRefresh, MinRefetch: DefaultMinRefetch, FailedRefetch: DefaultFailedRefetch,
		Timeout: DefaultTimeout, MaxBytes: DefaultMaxBytes,
		client: client, now: now, log: log, sets: map[string]*keySet{},
	}
}

func (k *KeySource) entry(uri string) *keySet {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.sets[uri]
	if e == nil {
		e = &keySet{}
		k.sets[uri] = e
	}
	return e
}

// get returns the set of uri, fetching it when none is cached yet and starting a background
// fetch when it is stale.
func (k *KeySource) get(ctx context.Context, uri string) (*jose.JSONWebKeySet, error) {
	e := k.entry(uri)
	e.mu.Lock()
	now := k.now()
	if e.set != nil {
		if now.Sub(e.fetched) >= k.Refresh && e.inflight == nil && now.Sub(e.attempted) >= k.MinRefetch {
			k.start(e, uri)
		}
		set := e.set
		e.mu.Unlock()
		return set, nil
	}
	if e.inflight == nil && (e.attempted.IsZero() || now.Sub(e.attempted) >= k.FailedRefetch) {
		k.start(e, uri)
	}
	return k.wait(ctx, e)
}

// refetch fetches the set of uri again unless one was fetched within MinRefetch, and returns
// the set then cached.
func (k *KeySource) refetch(ctx context.Context, uri string) (*jose.JSONWebKeySet, error) {
	e := k.entry(uri)
	e.mu.Lock()
	if e.inflight == nil && k.now().Sub(e.attempted) >= k.MinRefetch {
		k.start(e, uri)
	}
	return k.wait(ctx, e)
}

// wait waits for e's running fetch, if any, and returns e's set. e.mu is held on entry and
// released on return.
func (k *KeySource) wait(ctx context.Context, e *keySet) (*jose.JSONWebKeySet, error) {
	if ch := e.inflight; ch != nil {
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		e.mu.Lock()
	}
	defer e.mu.Unlock()
	if e.set == nil {
		if e.err == nil {
			return nil, errors.New("not fetched yet")
		}
		return nil, e.err
	}
	return e.set, nil
}

// start starts a fetch of uri into e; e.mu is held.
func (k *KeySource) start(e *keySet, uri string) {
	done := make(chan struct{})
	e.inflight, e.attempted = done, k.now()
	go func() {
		set, err := k.fetch(uri)
		e.mu.Lock()
		defer e.mu.Unlock()
		e.err = err
		if err == nil {
			e.set, e.fetched = set, k.now()
		} else {
			k.log.Warn("jwks fetch failed", "uri", uri, "err", err, "keeping_cached", e.set != nil)
		}
		e.inflight = nil
		close(done)
	}()
}

// fetch GETs and parses the JWKS at uri.
func (k *KeySource) fetch(uri string) (*jose.JSONWebKeySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, k.MaxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > k.MaxBytes {
		return nil, fmt.Errorf("larger than %d bytes", k.MaxBytes)
	}
	set, skipped, err := parseJWKS(body)
	if skipped != nil {
		k.log.Warn("jwks keys skipped", "uri", uri, "err", skipped)
	}
	return set, err
}

// parseJWKS parses a JWK Set, skipping the keys it cannot use (reported in skipped); it fails
// when no key is left.
func parseJWKS(data []byte) (set *jose.JSONWebKeySet, skipped, err error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	set = &jose.JSONWebKeySet{}
	var errs []error
	for i, r := range raw.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(r); err != nil {
			errs = append(errs, fmt.Errorf("key %d: %w", i, err))
			continue
		}
		if _, symmetric := key.Key.([]byte); !symmetric && !key.IsPublic() {
			key = key.Public()
		}
		if !key.Valid() {
			errs = append(errs, fmt.Errorf("key %d (kid %q): not a valid key", i, key.KeyID))
			continue
		}
		set.Keys = append(set.Keys, key)
	}
	skipped = errors.Join(errs...)
	if len(set.Keys) == 0 {
		return nil, skipped, fmt.Errorf("no usable key (%d in the set)", len(raw.Keys))
	}
	return set, skipped, nil
}
