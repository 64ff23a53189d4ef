package certs

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
)

// Sentinel errors for the conditions callers act on. Each one means: refuse the connection.
var (
	// ErrNotAcquired: no pod of the identity is held here (Acquire was not called, or released).
	ErrNotAcquired = errors.New("certs: identity not held on this node")
	// ErrPending: the identity's first certificate has not arrived within the caller's deadline.
	ErrPending = errors.New("certs: certificate not issued yet")
	// ErrExpired: the certificate expired and renewal has not succeeded since.
	ErrExpired = errors.New("certs: certificate expired")
	// ErrBadAnswer: the CA answered a chain that must not be served; it is retried.
	ErrBadAnswer = errors.New("certs: CA answer refused")
)

// renewJitter is the share of a leaf's lifetime that renewal may come early by, so that the
// identities acquired together (a node's pods at start) do not renew in one burst.
const renewJitter = 0.05

// Manager holds a certificate per acquired identity and keeps it fresh. Its methods are safe for
// concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	entries map[identity.Identity]*entry
	// runCtx is Run's context, the parent of every CA call; nil before Run. Fetches start only
	// while running: before Run, acquired identities wait; after it, nothing is renewed.
	runCtx  context.Context
	stopped bool
	fetches sync.WaitGroup // fetch goroutines, added to only under mu while !stopped
}

// entry is one identity's state, guarded by Manager.mu.
type entry struct {
	id   identity.Identity
	refs int
	// invalid is set for an identity that can never be issued; it is never fetched.
	invalid error

	cert      *tls.Certificate // nil until the first certificate; its Leaf is set
	refreshAt time.Time        // when the next fetch is due (renewal or retry)
	lastErr   error            // of the last fetch, nil after a success
	failures  int              // consecutive failed fetches, for the backoff
	// ready is closed when cert goes from nil to set, or the entry is dropped, to wake Get.
	ready chan struct{}

	// gen counts drops (last release); a fetch started in an older generation is discarded.
	gen      uint64
	fetching bool
	cancel   context.CancelFunc // of the fetch in flight
	// seq identifies the scheduled timer; stopping or replacing the timer bumps it, so that a
	// timer that fires anyway does nothing.
	seq   uint64
	timer Timer
}

// New returns a Manager; it starts nothing until Run.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("certs config: %w", err)
	}
	return &Manager{
		cfg:     cfg,
		log:     cfg.Log.With("component", "certs"),
		entries: map[identity.Identity]*entry{},
	}, nil
}

// Run fetches and renews certificates until ctx ends, then cancels the calls in flight and
// returns nil once they have returned. Certificates already held stay served until they expire:
// a draining ztunnel keeps its connections' identities, it only stops renewing them.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil {
		m.mu.Unlock()
		return errors.New("certs: Run called twice")
	}
	m.runCtx = ctx
	for _, e := range m.entries {
		m.startFetchLocked(e)
	}
	m.mu.Unlock()

	<-ctx.Done()

	m.mu.Lock()
	m.stopped = true
	for _, e := range m.entries {
		m.stopTimerLocked(e)
	}
	m.mu.Unlock()
	// Every fetch's context derives from ctx, so they are ending already.
	m.fetches.Wait()
	return nil
}

// Acquire holds id for a pod: the first Acquire of an identity starts fetching its certificate.
// The returned release (idempotent) gives it back; when the last holder releases, the key and
// certificate are dropped and a fetch in flight is cancelled. Handshakes that already took the
// certificate finish with it; no new one gets it.
func (m *Manager) Acquire(id identity.Identity) (release func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id, ready: make(chan struct{})}
		if err := id.Validate(); err != nil {
			e.invalid = err
		} else if id.TrustDomain != m.cfg.TrustDomain {
			e.invalid = fmt.Errorf("trust domain of %s is not %s", id, m.cfg.TrustDomain)
		}
		m.entries[id] = e
	}
	e.refs++
	if e.refs == 1 {
		// Starts nothing while a cancelled fetch of the previous generation is still in flight:
		// finish starts the next one, so one identity is never fetched twice at once.
		m.startFetchLocked(e)
	}
	var once sync.Once
	return func() { once.Do(func() { m.release(e) }) }
}

func (m *Manager) release(e *entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.refs--; e.refs > 0 {
		return
	}
	e.gen++
	e.cert, e.lastErr, e.failures, e.refreshAt = nil, nil, 0, time.Time{}
	m.stopTimerLocked(e)
	wake(e)
	e.ready = make(chan struct{})
	if e.fetching {
		e.cancel() // finish removes the entry, or refetches if it was acquired again
		return
	}
	delete(m.entries, e.id)
}

// Get returns id's certificate. While the first one has not arrived it waits, bounded by ctx:
// callers pass the deadline a connection may wait, and refuse the connection on error, never
// carry it without mTLS. An expired certificate fails at once (ErrExpired): renewal has been
// failing for half a lifetime, so waiting would only delay the refusal.
func (m *Manager) Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	for {
		m.mu.Lock()
		e := m.entries[id]
		if e == nil || e.refs == 0 {
			m.mu.Unlock()
			return nil, fmt.Errorf("%w: %s", ErrNotAcquired, id)
		}
		if e.invalid != nil {
			m.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: %w", id, e.invalid)
		}
		if c := e.cert; c != nil {
			now := m.cfg.Clock.Now()
			lastErr := e.lastErr
			m.mu.Unlock()
			if now.After(c.Leaf.NotAfter) {
				return nil, fmt.Errorf("%w: %s at %s (renewal: %v)", ErrExpired, id, c.Leaf.NotAfter.Format(time.RFC3339), lastErr)
			}
			return c, nil
		}
		ready, lastErr := e.ready, e.lastErr
		m.mu.Unlock()
		select {
		case <-ready:
			// Issued, or dropped (and maybe acquired again): look again.
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("%w: %s: %w (last attempt: %v)", ErrPending, id, context.Cause(ctx), lastErr)
			}
			return nil, fmt.Errorf("%w: %s: %w", ErrPending, id, context.Cause(ctx))
		}
	}
}

// Credentials returns id's credentials for hbone.ServerTLSConfig and hbone.ClientTLSConfig: each
// handshake takes the current certificate, waiting up to wait (on the Manager's clock) for the
// first one, and fails the handshake otherwise (never a handshake without it). Peers are checked
// against Config.Roots on the Manager's clock.
func (m *Manager) Credentials(id identity.Identity, wait time.Duration) hbone.Credentials {
	return hbone.Credentials{
		Certificate: func() (*tls.Certificate, error) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			if wait > 0 {
				t := m.cfg.Clock.AfterFunc(wait, func() { cancel(fmt.Errorf("waited %v", wait)) })
				defer t.Stop()
			} else {
				cancel(errors.New("no wait"))
			}
			return m.Get(ctx, id)
		},
		Roots: m.cfg.Roots,
		Now:   m.cfg.Clock.Now,
	}
}

// startFetchLocked starts fetching e's certificate in its own goroutine, so that a slow CA answer
// for one identity holds up no other, unless e is already being fetched or cannot be.
func (m *Manager) startFetchLocked(e *entry) {
	if m.runCtx == nil || m.stopped || e.fetching || e.refs == 0 || e.invalid != nil {
		return
	}
	m.stopTimerLocked(e)
	ctx, cancel := context.WithCancelCause(m.runCtx)
	e.fetching = true
	e.cancel = func() { cancel(errors.New("identity released")) }
	gen := e.gen
	m.fetches.Add(1)
	go func() {
		defer m.fetches.Done()
		cert, err := m.fetch(ctx, cancel, e.id)
		cancel(nil)
		m.finish(e, gen, cert, err)
	}()
}

// fetch makes a key and CSR, asks the CA and checks the answer.
func (m *Manager) fetch(ctx context.Context, cancel context.CancelCauseFunc, id identity.Identity) (*tls.Certificate, error) {
	key, csr, err := hbone.NewKeyAndCSR(id)
	if err != nil {
		return nil, err
	}
	t := m.cfg.Clock.AfterFunc(m.cfg.RequestTimeout, func() {
		cancel(fmt.Errorf("no answer within %v", m.cfg.RequestTimeout))
	})
	defer t.Stop()
	resp, err := m.cfg.CA.CreateCertificate(ctx, &cav1.CreateCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		ValidityDuration: int64(m.cfg.Validity / time.Second),
	})
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return nil, fmt.Errorf("create certificate: %w: %w", cause, err)
		}
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	return checkChain(resp.GetCertChain(), key, id, m.cfg.Roots(), m.cfg.Clock.Now())
}

// finish records a fetch's outcome and schedules the next one: renewal at half-life after a
// success, a retry with backoff after a failure. A failure keeps the certificate held, which is
// served until it expires.
func (m *Manager) finish(e *entry, gen uint64, cert *tls.Certificate, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.fetching, e.cancel = false, nil
	if e.refs == 0 {
		delete(m.entries, e.id)
		return
	}
	if gen != e.gen {
		// Released and acquired again while this fetch ran: its key belongs to the old holders.
		m.startFetchLocked(e)
		return
	}
	now := m.cfg.Clock.Now()
	if err != nil {
		e.lastErr = err
		e.failures++
		m.scheduleLocked(e, now.Add(m.backoff(e.failures)))
		if m.stopped {
			return // cancelled by shutdown
		}
		m.log.Warn("certificate request failed", "identity", e.id.String(), "failures", e.failures,
			"retry_at", e.refreshAt, "err", err)
		return
	}
	e.cert, e.lastErr, e.failures = cert, nil, 0
	wake(e)
	m.scheduleLocked(e, renewAt(cert.Leaf.NotBefore, cert.Leaf.NotAfter, rand.Float64()))
	m.log.Info("certificate issued", "identity", e.id.String(), "not_after", cert.Leaf.NotAfter,
		"refresh_at", e.refreshAt)
}

// wake wakes the Get calls waiting on e, once.
func wake(e *entry) {
	select {
	case <-e.ready:
	default:
		close(e.ready)
	}
}

// renewAt is half-way through a leaf's actual validity, early by up to renewJitter of it (r in
// [0,1)).
func renewAt(notBefore, notAfter time.Time, r float64) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(life/2 - time.Duration(r*renewJitter*float64(life)))
}

// backoff is the wait after the n-th consecutive failure (n >= 1): RetryInitial doubled per
// failure up to RetryMax, jittered down by up to half.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.RetryInitial
	for i := 1; i < n && d < m.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, m.cfg.RetryMax)
	return d - time.Duration(rand.Int64N(int64(d/2)+1))
}

func (m *Manager) scheduleLocked(e *entry, at time.Time) {
	m.stopTimerLocked(e)
	e.refreshAt = at
	if m.stopped {
		return
	}
	seq := e.seq
	e.timer = m.cfg.Clock.AfterFunc(max(at.Sub(m.cfg.Clock.Now()), 0), func() { m.fire(e, seq) })
}

func (m *Manager) stopTimerLocked(e *entry) {
	e.seq++
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}

func (m *Manager) fire(e *entry, seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.seq != seq || m.entries[e.id] != e {
		return
	}
	e.timer = nil
	m.startFetchLocked(e)
}

// State is a certificate's state in a Snapshot.
type State string

const (
	StatePending State = "pending" // no certificate yet: connections wait, then are refused
	StateValid   State = "valid"
	StateExpired State = "expired" // renewal kept failing: connections are refused
)

// CertInfo is one identity's certificate state, for the admin endpoint and metrics.
type CertInfo struct {
	Identity  string    `json:"identity"`
	State     State     `json:"state"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	RefreshAt time.Time `json:"refreshAt,omitzero"` // next fetch: renewal or retry
	LastError string    `json:"lastError,omitempty"`
}

// Snapshot returns the state of every held identity, sorted by identity.
func (m *Manager) Snapshot() []CertInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	out := make([]CertInfo, 0, len(m.entries))
	for _, e := range m.entries {
		if e.refs == 0 {
			continue
		}
		ci := CertInfo{Identity: e.id.String(), State: StatePending, RefreshAt: e.refreshAt}
		if e.cert != nil {
			ci.NotAfter = e.cert.Leaf.NotAfter
			ci.State = StateValid
			if now.After(ci.NotAfter) {
				ci.State = StateExpired
			}
		}
		switch {
		case e.invalid != nil:
			ci.LastError = e.invalid.Error()
		case e.lastErr != nil:
			ci.LastError = e.lastErr.Error()
		}
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b CertInfo) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}
