package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/identity"
)

// fakeClock is a Clock that moves only when told. Due timers run in Advance, in order.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now().Truncate(time.Second)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// pending counts the timers not yet run or stopped.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}

// Advance moves the clock by d and runs the timers then due; it returns how many ran.
func (c *fakeClock) Advance(d time.Duration) int {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due, keep []*fakeTimer
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(c.now):
			t.done = true
			due = append(due, t)
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
	c.mu.Unlock()
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		t.f()
	}
	return len(due)
}

// issuer is a test CA certificate and its key.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func sign(t testing.TB, tmpl *x509.Certificate, parent *issuer, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, string) {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	p := tmpl
	if parent != nil {
		p = parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// newIssuer makes a CA certificate: a root when parent is nil, else an intermediate.
func newIssuer(t testing.TB, name string, parent *issuer, now time.Time) *issuer {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	signer := key
	if parent != nil {
		signer = parent.key
	}
	c, p := sign(t, tmpl, parent, key.Public(), signer)
	return &issuer{cert: c, key: key, pem: p}
}

// leafTmpl is what istiod-lite's CA issues: one URI SAN, both extended key usages, backdated a
// minute.
func leafTmpl(uris []*url.URL, now time.Time, validity time.Duration) *x509.Certificate {
	return &x509.Certificate{
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		URIs:                  uris,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// answerFunc makes the CA's answer to a checked CSR for id.
type answerFunc func(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error)

// fakeCA is an in-memory CA: root → intermediate → leaf, chains sent leaf first, root last, as
// istiod-lite's. It checks every CSR as istiod-lite does and counts calls per identity.
type fakeCA struct {
	t     testing.TB
	clock *fakeClock
	root  *issuer
	inter *issuer
	roots *x509.CertPool

	mu          sync.Mutex
	calls       int
	callsByID   map[identity.Identity]int
	inflight    map[identity.Identity]int
	maxInflight map[identity.Identity]int
	gates       map[identity.Identity]chan struct{} // calls for the identity wait for the gate to close
	answer      answerFunc                          // nil: sign as asked
	validities  []int64
}

func newFakeCA(t testing.TB, clock *fakeClock) *fakeCA {
	root := newIssuer(t, "test root", nil, clock.Now())
	ca := &fakeCA{
		t: t, clock: clock, root: root, inter: newIssuer(t, "test intermediate", root, clock.Now()),
		roots:       x509.NewCertPool(),
		callsByID:   map[identity.Identity]int{},
		inflight:    map[identity.Identity]int{},
		maxInflight: map[identity.Identity]int{},
		gates:       map[identity.Identity]chan struct{}{},
	}
	ca.roots.AddCert(root.cert)
	return ca
}

func (ca *fakeCA) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest, _ ...grpc.CallOption) (*cav1.CreateCertificateResponse, error) {
	csr, id, err := parseCSR(req.GetCsr())
	if err != nil {
		ca.t.Errorf("manager sent a bad CSR: %v", err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ca.mu.Lock()
	ca.calls++
	ca.callsByID[id]++
	ca.validities = append(ca.validities, req.GetValidityDuration())
	ca.inflight[id]++
	ca.maxInflight[id] = max(ca.maxInflight[id], ca.inflight[id])
	gate, answer := ca.gates[id], ca.answer
	ca.mu.Unlock()
	defer func() {
		ca.mu.Lock()
		ca.inflight[id]--
		ca.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if answer == nil {
		answer = signAsAsked
	}
	chain, err := answer(ca, csr, id)
	if err != nil {
		return nil, err
	}
	return &cav1.CreateCertificateResponse{CertChain: chain}, nil
}

// parseCSR applies the CA's rules: a signed PEM CSR whose only name is one identity's URI.
func parseCSR(p string) (*x509.CertificateRequest, identity.Identity, error) {
	blk, _ := pem.Decode([]byte(p))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, identity.Identity{}, errors.New("not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, identity.Identity{}, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, identity.Identity{}, err
	}
	if len(csr.URIs) != 1 || len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) != 0 {
		return nil, identity.Identity{}, errors.New("CSR must name exactly one URI and nothing else")
	}
	if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, identity.Identity{}, errors.New("CSR key is not ECDSA P-256")
	}
	id, err := identity.FromURL(csr.URIs[0])
	return csr, id, err
}

func signAsAsked(ca *fakeCA, csr *x509.CertificateRequest, id identity.Identity) ([]string, error) {
	return ca.chain(leafTmpl([]*url.URL{id.URL()}, ca.clock.Now(), 24*time.Hour), csr.PublicKey), nil
}

// chain signs tmpl for pub by the intermediate and returns leaf, intermediate, root.
func (ca *fakeCA) chain(tmpl *x509.Certificate, pub crypto.PublicKey) []string {
	_, leaf := sign(ca.t, tmpl, ca.inter, pub, ca.inter.key)
	return []string{leaf, ca.inter.pem, ca.root.pem}
}

func (ca *fakeCA) setAnswer(f answerFunc) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.answer = f
}

// block makes calls for id wait until the returned func is called.
func (ca *fakeCA) block(id identity.Identity) (unblock func()) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	gate := make(chan struct{})
	ca.gates[id] = gate
	return sync.OnceFunc(func() {
		ca.mu.Lock()
		defer ca.mu.Unlock()
		delete(ca.gates, id)
		close(gate)
	})
}

func (ca *fakeCA) stats(id identity.Identity) (calls, inflight, maxInflight int) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.callsByID[id], ca.inflight[id], ca.maxInflight[id]
}

func (ca *fakeCA) totalCalls() int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.calls
}

var errUnavailable = status.Error(codes.Unavailable, "CA down")

func failing(ca *fakeCA, _ *x509.CertificateRequest, _ identity.Identity) ([]string, error) {
	return nil, errUnavailable
}
