package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

const waitFor = 10 * time.Second // polling bound; never reached when the code is right

var (
	idA = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "a"}
	idB = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "b"}
)

type env struct {
	t     *testing.T
	clock *fakeClock
	ca    *fakeCA
	m     *Manager
	cfg   Config
}

// newEnv runs a Manager against a fake CA on a fake clock until the test ends.
func newEnv(t *testing.T) *env {
	t.Helper()
	clock := newFakeClock()
	ca := newFakeCA(t, clock)
	cfg := Default()
	cfg.CA = ca
	cfg.Roots = func() *x509.CertPool { return ca.roots }
	cfg.Clock = clock
	cfg.Log = slog.New(slog.DiscardHandler)
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	})
	return &env{t: t, clock: clock, ca: ca, m: m, cfg: cfg}
}

// get waits for id's certificate.
func (e *env) get(id identity.Identity) *x509.Certificate {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := e.m.Get(ctx, id)
	if err != nil {
		e.t.Fatalf("Get(%s): %v", id, err)
	}
	return c.Leaf
}

// getNow is Get without waiting.
func (e *env) getNow(id identity.Identity) error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.m.Get(ctx, id)
	return err
}

func (e *env) info(id identity.Identity) CertInfo {
	for _, ci := range e.m.Snapshot() {
		if ci.Identity == id.String() {
			return ci
		}
	}
	return CertInfo{}
}

// settle waits until no fetch of id is in flight and its next one is scheduled in the future,
// so that advancing the clock next is what triggers it.
func (e *env) settle(id identity.Identity, calls int) {
	e.t.Helper()
	testutil.Eventually(e.t, waitFor, "fetch of "+id.String()+" done and next one scheduled", func() bool {
		n, inflight, _ := e.ca.stats(id)
		return n == calls && inflight == 0 && e.info(id).RefreshAt.After(e.clock.Now())
	})
}

func TestFirstFetchOnAcquire(t *testing.T) {
	e := newEnv(t)
	if n := e.ca.totalCalls(); n != 0 {
		t.Fatalf("CA called %d times before any Acquire", n)
	}
	release := e.m.Acquire(idA)
	defer release()
	leaf := e.get(idA)
	if diff := cmp.Diff([]*url.URL{idA.URL()}, leaf.URIs); diff != "" {
		t.Errorf("leaf URIs (-want +got):\n%s", diff)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("leaf key is %T, want ECDSA", leaf.PublicKey)
	}
	if n, _, _ := e.ca.stats(idA); n != 1 {
		t.Errorf("CA calls = %d, want 1", n)
	}
	if diff := cmp.Diff([]int64{int64(24 * time.Hour / time.Second)}, e.ca.validities); diff != "" {
		t.Errorf("validity asked (-want +got):\n%s", diff)
	}
	c, err := e.m.Get(context.Background(), idA)
	if err != nil {
		t.Fatal(err)
	}
	// Served: leaf and intermediate, not the root peers already have.
	if len(c.Certificate) != 2 {
		t.Errorf("served chain has %d certificates, want 2 (leaf, intermediate)", len(c.Certificate))
	}
	got := e.m.Snapshot()
	want := []CertInfo{{Identity: idA.String(), State: StateValid, NotAfter: leaf.NotAfter, RefreshAt: got[0].RefreshAt}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Snapshot (-want +got):\n%s", diff)
	}
}

func TestAcquireBeforeRun(t *testing.T) {
	clock := newFakeClock()
	ca := newFakeCA(t, clock)
	cfg := Default()
	cfg.CA, cfg.Clock, cfg.Log = ca, clock, slog.New(slog.DiscardHandler)
	cfg.Roots = func() *x509.CertPool { return ca.roots }
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	release := m.Acquire(idA)
	defer release()
	if n := ca.totalCalls(); n != 0 {
		t.Fatalf("CA called %d times before Run", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, waitFor)
	defer wcancel()
	if _, err := m.Get(wctx, idA); err != nil {
		t.Errorf("Get after Run started: %v", err)
	}
	if err := m.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func TestGetWaitsBoundedWhileCADown(t *testing.T) {
	e := newEnv(t)
	e.ca.setAnswer(failing)
	release := e.m.Acquire(idA)
	defer release()
	e.settle(idA, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := e.m.Get(ctx, idA)
	if !errors.Is(err, ErrPending) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get while the CA is down = %v, want ErrPending and the deadline", err)
	}
	if !strings.Contains(err.Error(), "CA down") {
		t.Errorf("Get error %q does not say why", err)
	}
	if ci := e.info(idA); ci.State != StatePending || !strings.Contains(ci.LastError, "CA down") {
		t.Errorf("Snapshot = %+v, want pending with the CA's error", ci)
	}

	// Retries follow the backoff; the CA comes back.
	e.ca.setAnswer(nil)
	e.clock.Advance(e.cfg.RetryInitial)
	e.get(idA)
	if n, _, _ := e.ca.stats(idA); n != 2 {
		t.Errorf("CA calls = %d, want 2", n)
	}
	if ci := e.info(idA); ci.LastError != "" {
		t.Errorf("LastError after success = %q", ci.LastError)
	}
}

func TestRenewalAtHalfLife(t *testing.T) {
	e := newEnv(t)
	release := e.m.Acquire(idA)
	defer release()
	first := e.get(idA)
	e.settle(idA, 1)

	life := first.NotAfter.Sub(first.NotBefore)
	earliest := first.NotBefore.Add(life/2 - time.Duration(renewJitter*float64(life)))
	latest := first.NotBefore.Add(life / 2)
	if at := e.info(idA).RefreshAt; at.Before(earliest) || at.After(latest) {
		t.Fatalf("RefreshAt %v, want within [%v, %v]", at, earliest, latest)
	}
	if n := e.clock.Advance(earliest.Sub(e.clock.Now()) - time.Second); n != 0 {
		t.Fatalf("%d timers fired before the earliest renewal time", n)
	}
	if err := e.getNow(idA); err != nil {
		t.Fatalf("Get before renewal: %v", err)
	}
	e.clock.Advance(latest.Sub(e.clock.Now()))
	e.settle(idA, 2)
	second := e.get(idA)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("renewal did not replace the certificate")
	}
	if first.PublicKey.(*ecdsa.PublicKey).Equal(second.PublicKey) {
		t.Error("renewal kept the key: each certificate gets a fresh one")
	}
}

func TestRenewalFailureKeepsCertificateUntilExpiry(t *testing.T) {
	e := newEnv(t)
	release := e.m.Acquire(idA)
	defer release()
	first := e.get(idA)
	e.settle(idA, 1)

	e.ca.setAnswer(failing)
	e.clock.Advance(e.info(idA).RefreshAt.Sub(e.clock.Now()))
	e.settle(idA, 2)
	if got := e.get(idA); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("Get after a failed renewal did not return the held certificate")
	}
	if ci := e.info(idA); ci.State != StateValid || ci.LastError == "" {
		t.Errorf("Snapshot after a failed renewal = %+v, want valid with the error", ci)
	}

	// Up to the last second of validity it is served.
	e.clock.Advance(first.NotAfter.Sub(e.clock.Now()))
	if err := e.getNow(idA); err != nil {
		t.Fatalf("Get at NotAfter: %v", err)
	}
	e.clock.Advance(time.Second)
	if err := e.getNow(idA); !errors.Is(err, ErrExpired) {
		t.Fatalf("Get after expiry = %v, want ErrExpired", err)
	}
	if ci := e.info(idA); ci.State != StateExpired {
		t.Errorf("Snapshot after expiry = %+v, want expired", ci)
	}

	// The retries go on; the first success serves again.
	e.ca.setAnswer(nil)
	testutil.Eventually(t, waitFor, "a retry to succeed", func() bool {
		if _, inflight, _ := e.ca.stats(idA); inflight == 0 {
			e.clock.Advance(e.cfg.RetryMax)
		}
		return e.getNow(idA) == nil
	})
}

func TestReleaseDrops(t *testing.T) {
	e := newEnv(t)
	release1 := e.m.Acquire(idA)
	release2 := e.m.Acquire(idA)
	first := e.get(idA)
	e.settle(idA, 1)

	release1()
	release1() // idempotent: must not drop the second holder's reference
	if err := e.getNow(idA); err != nil {
		t.Fatalf("Get with one holder left: %v", err)
	}
	release2()
	if err := e.getNow(idA); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("Get after the last release = %v, want ErrNotAcquired", err)
	}
	if s := e.m.Snapshot(); len(s) != 0 {
		t.Errorf("Snapshot after the last release = %+v, want empty", s)
	}
	if n := e.clock.Advance(48 * time.Hour); n != 0 {
		t.Errorf("%d timers fired for a released identity", n)
	}
	if n := e.ca.totalCalls(); n != 1 {
		t.Errorf("CA calls = %d, want 1", n)
	}

	defer e.m.Acquire(idA)()
	again := e.get(idA)
	if first.PublicKey.(*ecdsa.PublicKey).Equal(again.PublicKey) {
		t.Error("acquired again with the dropped key")
	}
}

func TestConcurrentAcquireOneCall(t *testing.T) {
	e := newEnv(t)
	unblock := e.ca.block(idA)
	// Every holder acquires before the CA answers: a holder arriving after the others released
	// would rightly start a new fetch.
	var wg, acquired sync.WaitGroup
	errs := make(chan error, 20)
	acquired.Add(20)
	for range 20 {
		wg.Go(func() {
			defer e.m.Acquire(idA)()
			acquired.Done()
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			_, err := e.m.Get(ctx, idA)
			errs <- err
		})
	}
	acquired.Wait()
	testutil.Eventually(t, waitFor, "the CA call", func() bool { _, inflight, _ := e.ca.stats(idA); return inflight == 1 })
	unblock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Get: %v", err)
		}
	}
	if n, _, _ := e.ca.stats(idA); n != 1 {
		t.Errorf("CA calls = %d, want 1", n)
	}
}

func TestSlowIdentityHoldsUpNoOther(t *testing.T) {
	e := newEnv(t)
	unblock := e.ca.block(idA)
	defer unblock()
	defer e.m.Acquire(idA)()
	defer e.m.Acquire(idB)()
	testutil.Eventually(t, waitFor, "A's call", func() bool { _, inflight, _ := e.ca.stats(idA); return inflight == 1 })
	e.get(idB)
	if err := e.getNow(idA); !errors.Is(err, ErrPending) {
		t.Errorf("Get(A) while its call hangs = %v, want ErrPending", err)
	}
}

func TestHungCallTimesOut(t *testing.T) {
	e := newEnv(t)
	unblock := e.ca.block(idA)
	defer unblock()
	defer e.m.Acquire(idA)()
	testutil.Eventually(t, waitFor, "A's call", func() bool { _, inflight, _ := e.ca.stats(idA); return inflight == 1 })
	e.clock.Advance(e.cfg.RequestTimeout)
	e.settle(idA, 1)
	if ci := e.info(idA); !strings.Contains(ci.LastError, "no answer within") {
		t.Errorf("LastError = %q, want the request timeout", ci.LastError)
	}
	unblock()
	e.clock.Advance(e.cfg.RetryInitial)
	e.get(idA)
}

func TestReleaseDuringFetchNeverFetchesTwice(t *testing.T) {
	e := newEnv(t)
	unblock := e.ca.block(idA)
	release := e.m.Acquire(idA)
	testutil.Eventually(t, waitFor, "A's call", func() bool { _, inflight, _ := e.ca.stats(idA); return inflight == 1 })
	release()
	// Acquired again at once: the cancelled call may still be in flight, and the next one must
	// wait for it.
	defer e.m.Acquire(idA)()
	testutil.Eventually(t, waitFor, "the second call", func() bool { n, _, _ := e.ca.stats(idA); return n == 2 })
	unblock()
	e.get(idA)
	if _, _, most := e.ca.stats(idA); most != 1 {
		t.Errorf("at most %d calls for one identity at once, want 1", most)
	}
}

func TestBadAnswersRefusedAndRetried(t *testing.T) {
	other := func(t *testing.T, ca *fakeCA) *issuer { return newIssuer(t, "untrusted root", nil, ca.clock.Now()) }
	tests := []struct {
		name   string
		answer func(t *testing.T) answerFunc
		want   string
	}{
		{"wrong identity", func(*testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, _ identity.Identity) ([]string, error) {
				return ca.chain(leafTmpl([]*url.URL{idB.URL()}, ca.clock.Now(), time.Hour), csr.PublicKey), nil
			}
		}, "leaf is for " + idB.String()},
		{"two URI SANs", func(*testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				return ca.chain(leafTmpl([]*url.URL{id.URL(), idB.URL()}, ca.clock.Now(), time.Hour), csr.PublicKey), nil
			}
		}, "2 URI SANs"},
		{"not to the roots", func(t *testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				o := other(t, ca)
				_, leaf := sign(t, leafTmpl([]*url.URL{id.URL()}, ca.clock.Now(), time.Hour), o, csr.PublicKey, o.key)
				return []string{leaf, o.pem}, nil
			}
		}, "unknown authority"},
		{"missing intermediate", func(*testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				return ca.chain(leafTmpl([]*url.URL{id.URL()}, ca.clock.Now(), time.Hour), csr.PublicKey)[:1], nil
			}
		}, "unknown authority"},
		{"another key", func(t *testing.T) answerFunc {
			return func(ca *fakeCA, _ *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				return ca.chain(leafTmpl([]*url.URL{id.URL()}, ca.clock.Now(), time.Hour), newKey(t).Public()), nil
			}
		}, "not for the key"},
		{"expired", func(*testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				return ca.chain(leafTmpl([]*url.URL{id.URL()}, ca.clock.Now().Add(-2*time.Hour), time.Hour), csr.PublicKey), nil
			}
		}, "expired"},
		{"server use only", func(*testing.T) answerFunc {
			return func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
				tmpl := leafTmpl([]*url.URL{id.URL()}, ca.clock.Now(), time.Hour)
				tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
				return ca.chain(tmpl, csr.PublicKey), nil
			}
		}, "key usage"},
		{"empty", func(*testing.T) answerFunc {
			return func(*fakeCA, *x509.CertificateRequest, identity.Identity) ([]string, error) { return nil, nil }
		}, "no certificate"},
		{"not PEM", func(*testing.T) answerFunc {
			return func(*fakeCA, *x509.CertificateRequest, identity.Identity) ([]string, error) {
				return []string{"garbage"}, nil
			}
		}, "not PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.ca.setAnswer(tt.answer(t))
			defer e.m.Acquire(idA)()
			e.settle(idA, 1)
			err := e.getNow(idA)
			if !errors.Is(err, ErrPending) || !errors.Is(err, context.Canceled) {
				t.Fatalf("Get after a bad answer = %v, want ErrPending", err)
			}
			if ci := e.info(idA); !strings.Contains(ci.LastError, tt.want) || !strings.Contains(ci.LastError, ErrBadAnswer.Error()) {
				t.Errorf("LastError = %q, want it to name %q", ci.LastError, tt.want)
			}
			e.ca.setAnswer(nil)
			e.clock.Advance(e.cfg.RetryInitial)
			e.get(idA)
			if n, _, _ := e.ca.stats(idA); n != 2 {
				t.Errorf("CA calls = %d, want 2", n)
			}
		})
	}
}

func TestNoRootsRefused(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var roots *x509.CertPool
	e.m.cfg.Roots = func() *x509.CertPool { mu.Lock(); defer mu.Unlock(); return roots }
	defer e.m.Acquire(idA)()
	e.settle(idA, 1)
	if ci := e.info(idA); !strings.Contains(ci.LastError, "no trust bundle") {
		t.Errorf("LastError = %q, want no trust bundle", ci.LastError)
	}
	mu.Lock()
	roots = e.ca.roots
	mu.Unlock()
	e.clock.Advance(e.cfg.RetryInitial)
	e.get(idA)
}

func TestAcquireOutsideTrustDomain(t *testing.T) {
	e := newEnv(t)
	bad := identity.Identity{TrustDomain: "other.local", Namespace: "default", ServiceAccount: "a"}
	defer e.m.Acquire(bad)()
	defer e.m.Acquire(identity.Identity{})()
	for _, id := range []identity.Identity{bad, {}} {
		if err := e.getNow(id); err == nil || errors.Is(err, ErrPending) {
			t.Errorf("Get(%q) = %v, want a permanent error", id, err)
		}
	}
	if n := e.ca.totalCalls(); n != 0 {
		t.Errorf("CA called %d times for identities it cannot issue", n)
	}
}

func TestGetNotAcquired(t *testing.T) {
	e := newEnv(t)
	if err := e.getNow(idA); !errors.Is(err, ErrNotAcquired) {
		t.Errorf("Get of an identity never acquired = %v, want ErrNotAcquired", err)
	}
}
