package ca

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// Keeper holds the authority that signs and the roots proxies must trust, and follows the user's
// CA Secret (cacerts) so that a rotation needs no restart.
//
// When the Secret changes, the new authority signs from then on, and the roots of the old one
// that the new one lacks are still served (trust bundle, root ConfigMaps) for retain: long enough
// for every certificate the old authority issued to expire (the longest leaf lifetime). A
// workload whose certificate chains to the old root thus keeps being trusted, and keeps its
// connections, while its peers have moved on; and a peer that renewed early is trusted by those
// that have not, since they are handed the new root with the old. Retired roots are held in
// memory only: a restart during a rotation serves the Secret's roots alone, so a rotation that
// must survive restarts lists both roots in root-cert.pem, as with Istio.
type Keeper struct {
	log     *slog.Logger
	retain  time.Duration
	clock   clock.Clock
	changed chan struct{}
	rotated chan struct{} // wakes Run to re-arm its expiry timer

	mu      sync.Mutex
	cur     *Authority
	retired []retired
}

type retired struct {
	roots []string
	until time.Time
}

// NewKeeper returns a keeper of a, keeping the roots of an authority it replaces for retain.
// clk may be nil for the wall clock.
func NewKeeper(log *slog.Logger, a *Authority, retain time.Duration, clk clock.Clock) *Keeper {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Keeper{log: log.With("component", "ca"), retain: retain, clock: clk, cur: a,
		changed: make(chan struct{}, 1), rotated: make(chan struct{}, 1)}
}

// Authority returns the authority that signs now.
func (k *Keeper) Authority() *Authority {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Roots returns the PEM roots proxies must trust: the current authority's first, then those
// of replaced authorities still within their retention.
func (k *Keeper) Roots() []string {
	now := k.clock.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.cur.Roots()
	for _, r := range k.retired {
		if now.Before(r.until) {
			for _, root := range r.roots {
				if !slices.Contains(out, root) {
					out = append(out, root)
				}
			}
		}
	}
	return out
}

// Changed signals, coalesced, that Roots or Authority changed.
func (k *Keeper) Changed() <-chan struct{} { return k.changed }

// Rotate makes a the signing authority. It reports whether anything changed: the same
// certificate, chain and roots again (a resync of the Secret) change nothing.
func (k *Keeper) Rotate(a *Authority) bool {
	now := k.clock.Now()
	k.mu.Lock()
	if k.cur.same(a) {
		k.mu.Unlock()
		return false
	}
	var old []string
	for _, r := range k.cur.roots {
		if !slices.Contains(a.roots, r) {
			old = append(old, r)
		}
	}
	if len(old) > 0 {
		k.retired = append(k.retired, retired{roots: old, until: now.Add(k.retain)})
	}
	k.cur = a
	k.mu.Unlock()
	signal(k.changed)
	signal(k.rotated)
	return true
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// expire forgets the retired roots whose retention ended, and returns when the next one ends
// (zero for none).
func (k *Keeper) expire() (next time.Time) {
	now := k.clock.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	n := len(k.retired)
	k.retired = slices.DeleteFunc(k.retired, func(r retired) bool { return !now.Before(r.until) })
	if len(k.retired) != n {
		signal(k.changed)
	}
	for _, r := range k.retired {
		if next.IsZero() || r.until.Before(next) {
			next = r.until
		}
	}
	return next
}

// Run follows the user's CA Secret in namespace through kube (a watch of that one Secret, by
// name) and retires old roots when their retention ends, until ctx is done. A Secret that cannot
// be loaded, or is deleted, leaves the current authority in place.
func (k *Keeper) Run(ctx context.Context, kube kubernetes.Interface, namespace string) error {
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + UserCASecret }))
	inf := f.Core().V1().Secrets().Informer()
	load := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok || s.Name != UserCASecret {
			return
		}
		a, err := fromUserSecret(s)
		if err != nil {
			k.log.Error("CA Secret changed but cannot be used; keeping the current CA", "secret", namespace+"/"+UserCASecret, "err", err)
			return
		}
		if k.Rotate(a) {
			k.log.Info("CA rotated", "secret", namespace+"/"+UserCASecret, "roots", len(k.Roots()), "retainOldRoots", k.retain)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    load,
		UpdateFunc: func(_, cur any) { load(cur) },
		DeleteFunc: func(any) {
			k.log.Warn("CA Secret deleted; keeping the current CA until restart", "secret", namespace+"/"+UserCASecret)
		},
	}); err != nil {
		return fmt.Errorf("watch CA secret: %w", err)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	for {
		var t clock.Timer
		var expiry <-chan time.Time
		if next := k.expire(); !next.IsZero() {
			t = k.clock.NewTimer(next.Sub(k.clock.Now()))
			expiry = t.C()
		}
		select {
		case <-ctx.Done():
		case <-expiry:
		case <-k.rotated:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func fromUserSecret(s *corev1.Secret) (*Authority, error) {
	return NewAuthority(s.Data[KeyCACert], s.Data[KeyCAKey], s.Data[KeyCertChain], s.Data[KeyRootCert])
}

// same reports whether b signs with the same certificate, chain and roots as a.
func (a *Authority) same(b *Authority) bool {
	return bytes.Equal(a.cert.Raw, b.cert.Raw) && slices.Equal(a.chain, b.chain) && slices.Equal(a.roots, b.roots)
}
