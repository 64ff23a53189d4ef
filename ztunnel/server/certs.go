package server

// Workload certificates: one per identity of the pods this ztunnel serves, from istiod-lite's CA
// (key made here, CSR), fetched when the first pod of the identity arrives, renewed at half-life,
// kept until it expires when renewal fails, dropped when the last pod of the identity leaves. A
// connection that needs a certificate waits for the first one, bounded by its context: never a
// connection without one.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// certValidity is what ztunnel asks for (DESIGN.md §3: 24 h leaves).
const certValidity = 24 * time.Hour

func init() { newCerts = dialCertManager }

// certManager implements Certs.
type certManager struct {
	ca    cav1.CertificateServiceClient
	roots func() *x509.CertPool
	log   *slog.Logger
	mu    sync.Mutex
	ids   map[identity.Identity]*certEntry
	wake  chan struct{}
}

type certEntry struct {
	refs    int
	cert    *tls.Certificate
	leaf    *x509.Certificate
	ready   chan struct{} // closed at the first certificate
	next    time.Time     // when to fetch next
	failure error
}

// CertInfo is a certificate's state, for the config dump.
type CertInfo struct {
	Identity  string    `json:"identity"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	RefreshAt time.Time `json:"refreshAt"`
	Error     string    `json:"error,omitempty"`
}

func dialCertManager(_ context.Context, cfg Config, tlsCfg *tls.Config, roots func() *x509.CertPool, log *slog.Logger) (Certs, any, error) {
	conn, err := grpc.NewClient(cfg.XDSAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(tokenFile(cfg.TokenFile)))
	if err != nil {
		return nil, nil, fmt.Errorf("CA client: %w", err)
	}
	m := &certManager{ca: cav1.NewCertificateServiceClient(conn), roots: roots, log: log,
		ids: map[identity.Identity]*certEntry{}, wake: make(chan struct{}, 1)}
	return m, infoFunc(m.info), nil
}

// infoFunc marshals as what the function returns, so the config dump shows the current state.
type infoFunc func() []CertInfo

func (f infoFunc) MarshalJSON() ([]byte, error) { return jsonMarshal(f()) }

// tokenFile sends the projected token, read at each call (it rotates).
type tokenFile string

func (t tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(t))
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + strings.TrimSpace(string(b))}, nil
}
func (tokenFile) RequireTransportSecurity() bool { return true }

func (m *certManager) Acquire(id identity.Identity) func() {
	m.mu.Lock()
	e := m.ids[id]
	if e == nil {
		e = &certEntry{ready: make(chan struct{})}
		m.ids[id] = e
	}
	e.refs++
	m.mu.Unlock()
	m.poke()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			if e.refs--; e.refs == 0 {
				delete(m.ids, id) // the key goes with the entry
			}
			m.mu.Unlock()
		})
	}
}

func (m *certManager) Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	m.mu.Lock()
	e := m.ids[id]
	m.mu.Unlock()
	if e == nil {
		return nil, fmt.Errorf("no certificate for %s: no pod of that identity is served here", id)
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Now().After(e.leaf.NotAfter) {
		return nil, fmt.Errorf("certificate for %s expired at %s (renewal failing: %v)", id, e.leaf.NotAfter, e.failure)
	}
	return e.cert, nil
}

func (m *certManager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run fetches what is due, then sleeps until the next is due or an identity is added.
func (m *certManager) Run(ctx context.Context) error {
	for {
		now := time.Now()
		next := now.Add(time.Minute)
		m.mu.Lock()
		var due []identity.Identity
		for id, e := range m.ids {
			if !e.next.After(now) {
				due = append(due, id)
			} else if e.next.Before(next) {
				next = e.next
			}
		}
		m.mu.Unlock()
		var wg sync.WaitGroup
		for _, id := range due { // in parallel: one slow answer holds up no other identity
			wg.Add(1)
			go func() { defer wg.Done(); m.fetch(ctx, id) }()
		}
		wg.Wait()
		if len(due) > 0 {
			continue
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (m *certManager) fetch(ctx context.Context, id identity.Identity) {
	cert, leaf, err := m.issue(ctx, id)
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.ids[id]
	if e == nil {
		return // released meanwhile
	}
	if err != nil {
		e.failure = err
		e.next = time.Now().Add(2 * time.Second) // retry soon; the old certificate serves meanwhile
		m.log.Warn("certificate request failed", "identity", id.String(), "err", err)
		return
	}
	first := e.cert == nil
	e.cert, e.leaf, e.failure = cert, leaf, nil
	e.next = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	if first {
		close(e.ready)
	}
	m.log.Info("certificate issued", "identity", id.String(), "not_after", leaf.NotAfter)
}

// issue makes a key and CSR, asks the CA, and checks what comes back.
func (m *certManager) issue(ctx context.Context, id identity.Identity) (*tls.Certificate, *x509.Certificate, error) {
	key, csr, err := hbone.NewKeyAndCSR(id)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := m.ca.CreateCertificate(ctx, &cav1.CreateCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), ValidityDuration: int64(certValidity / time.Second)})
	if err != nil {
		return nil, nil, err
	}
	var chain [][]byte
	for _, p := range resp.GetCertChain() {
		rest := []byte(p)
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			chain = append(chain, blk.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("CA answered no certificate")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, nil, err
	}
	if got, err := hbone.VerifyPeer(chain, m.roots(), time.Now(), x509.ExtKeyUsageClientAuth, id); err != nil {
		return nil, nil, fmt.Errorf("CA answered a certificate that does not verify for %s (%v): %w", id, got, err)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, leaf, nil
}

func (m *certManager) info() []CertInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]CertInfo, 0, len(m.ids))
	for id, e := range m.ids {
		ci := CertInfo{Identity: id.String(), RefreshAt: e.next}
		if e.leaf != nil {
			ci.NotAfter = e.leaf.NotAfter
		}
		if e.failure != nil {
			ci.Error = e.failure.Error()
		}
		out = append(out, ci)
	}
	return out
}
