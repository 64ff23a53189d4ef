package server

// The leader's cluster writes: root certificate ConfigMaps, waypoint objects and status, route
// status, and the Events and conditions of translation problems. Rules this file keeps:
//   - The push path never waits for them: a push offers its input and returns; the work runs on
//     a goroutine of its own, which takes only the latest input (an older one is subsumed).
//   - Every API call is bounded in time: the write clients carry Config.WriteTimeout, and each
//     namespace's root write runs under a context with that timeout as well.
//   - Concurrency is bounded: at most Config.LeaderConcurrency root writes are in flight; waypoint,
//     route and problem writes (few objects) go one at a time.
//   - Writes happen only within a leader term: the term's context ends with leadership and ends
//     the pass; a new term starts from a clean state, checking everything again.

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/controller"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/report"
	"github.com/ambient-mesh/ambient/istiod-lite/routes"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
)

// leaderInput is what one pass reads: the cache as of a push, its translation, and the roots
// pushed with it.
type leaderInput struct {
	in    model.Input
	snap  *model.Snapshot
	roots string
}

// leaderWork does the elected leader's cluster writes.
type leaderWork struct {
	log         *slog.Logger
	kube        kubernetes.Interface // the write client
	ctl         *controller.Controller
	waypoints   *waypoint.Reconciler
	routes      *routes.Writer
	problems    *report.Writer
	concurrency int
	timeout     time.Duration
	namespace   string // istiod-lite's own, which owns the root ConfigMaps

	// rootLimits holds the rewrite limiter of each namespace written to (see publishRoots);
	// the run goroutine's own.
	rootLimits map[string]*rate.Limiter

	mu   sync.Mutex
	term context.Context // the current leader term; nil when not leading
	next *leaderInput    // the latest input not yet worked on
	wake chan struct{}
}

func newLeaderWork(log *slog.Logger, cfg Config, w writeClients, ctl *controller.Controller) *leaderWork {
	return &leaderWork{
		log:         log.With("component", "leader"),
		kube:        w.Kube,
		ctl:         ctl,
		waypoints:   waypoint.New(w.Kube, w.Gateway, cfg.Waypoint, cfg.Model.ClusterDomain),
		routes:      routes.NewWriter(w.Gateway),
		problems:    report.NewWriter(w.Kube, w.Istio, cfg.PodName, time.Now),
		concurrency: cfg.LeaderConcurrency,
		timeout:     cfg.WriteTimeout,
		namespace:   cfg.Namespace,
		rootLimits:  map[string]*rate.Limiter{},
		wake:        make(chan struct{}, 1),
	}
}

// lead starts a leader term that lasts as long as term.
func (l *leaderWork) lead(term context.Context) {
	l.mu.Lock()
	l.term = term
	l.mu.Unlock()
	l.signal()
}

// stopLeading ends leadership (term, ended too, ends any pass in progress).
func (l *leaderWork) stopLeading() {
	l.mu.Lock()
	l.term = nil
	l.mu.Unlock()
}

// leading reports whether a leader term is current.
func (l *leaderWork) leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != nil && l.term.Err() == nil
}

// offer hands over the input of a push; it never blocks.
func (l *leaderWork) offer(in leaderInput) {
	l.mu.Lock()
	l.next = &in
	l.mu.Unlock()
	l.signal()
}

func (l *leaderWork) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run works on the latest input whenever there is one and this replica leads, until ctx ends.
func (l *leaderWork) run(ctx context.Context) error {
	var last context.Context // the term of the last pass
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.wake:
		}
		l.mu.Lock()
		term, in := l.term, l.next
		if term != nil && term.Err() == nil {
			l.next = nil
		}
		l.mu.Unlock()
		if term == nil || term.Err() != nil || in == nil {
			continue
		}
		if term != last {
			// A new term checks everything again: another replica may have written meanwhile.
			l.waypoints.Reset()
			l.problems.Reset()
			clear(l.rootLimits)
			last = term
		}
		l.pass(term, in)
	}
}

// pass brings the cluster in line with in. Waypoints and route status come first: they are few,
// and what users wait for; the root ConfigMaps of a first leadership over many namespaces follow.
func (l *leaderWork) pass(term context.Context, in *leaderInput) {
	l.waypoints.Repair(l.ctl.TakeRepairs()...)
	if err := l.waypoints.Reconcile(term, in.in.Gateways); err != nil {
		l.log.Warn("deploy waypoints", "err", err)
	}
	if term.Err() != nil {
		return
	}
	if rin, err := l.ctl.RouteInput(); err != nil {
		l.log.Error("read route cache", "err", err)
	} else {
		rin.Services, rin.Gateways = in.in.Services, in.in.Gateways
		if err := l.routes.Reconcile(term, rin); err != nil {
			l.log.Warn("write route status", "err", err)
		}
	}
	if term.Err() != nil {
		return
	}
	l.publishRoots(term, in.in, in.roots)
	if term.Err() != nil || in.snap == nil {
		return
	}
	// Last: what users read to understand a policy matters less than what lets pods start.
	if err := l.problems.Reconcile(term, in.in, in.snap); err != nil && term.Err() == nil {
		l.log.Warn("write problems as Events and conditions", "err", err)
	}
}

// Root ConfigMap rewrites allowed per namespace: a burst of rootWriteBurst, then one per
// rootWriteEvery. Another writer of the same ConfigMap (an Istio control plane during a migration,
// a GitOps tool) would otherwise fight istiod-lite at push speed; past the limit the ConfigMap is
// rewritten when the limit allows and a push or the periodic resync comes.
const (
	rootWriteBurst = 5
	rootWriteEvery = 12 * time.Second
)

// publishRoots writes the root ConfigMap into every namespace whose cached copy lacks or differs
// from roots: new namespaces, and ConfigMaps deleted or edited by hand. At most l.concurrency
// namespaces are written at once, each within l.timeout; failures are logged once per pass.
func (l *leaderWork) publishRoots(ctx context.Context, in model.Input, roots string) {
	live := make(map[string]bool, len(in.Namespaces))
	sem := make(chan struct{}, l.concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	var firstErr error
	// The ConfigMaps are owned by the installation's namespace: deleting it removes them all.
	var owner *metav1.OwnerReference
	for _, ns := range in.Namespaces {
		if ns.Name == l.namespace && ns.UID != "" {
			owner = &metav1.OwnerReference{APIVersion: "v1", Kind: "Namespace", Name: ns.Name, UID: ns.UID}
		}
	}
namespaces:
	for _, ns := range in.Namespaces {
		live[ns.Name] = true
		if ns.DeletionTimestamp != nil || l.ctl.RootsPublished(ns.Name, roots) {
			continue
		}
		lim := l.rootLimits[ns.Name]
		if lim == nil {
			lim = rate.NewLimiter(rate.Every(rootWriteEvery), rootWriteBurst)
			l.rootLimits[ns.Name] = lim
		}
		if !lim.Allow() {
			l.log.Warn("root certificate ConfigMap changed again by someone else; rewriting it later", "namespace", ns.Name, "configmap", ca.RootConfigMap)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break namespaces
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, l.timeout)
			defer cancel()
			if err := ca.PublishRoots(cctx, l.kube, name, roots, owner); err != nil {
				mu.Lock()
				failed = append(failed, name)
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(ns.Name)
	}
	wg.Wait()
	if len(failed) > 0 && ctx.Err() == nil {
		l.log.Warn("publish root certificate", "namespaces", len(failed), "first", failed[0], "err", firstErr)
	}
	if ctx.Err() != nil {
		return // the namespaces not reached are not all in live
	}
	for ns := range l.rootLimits {
		if !live[ns] {
			delete(l.rootLimits, ns)
		}
	}
}

// runLeaderElection campaigns for the lease through its own client, so that the leader's writes
// cannot delay its renewal, and starts a leader term for each leadership won.
func runLeaderElection(ctx context.Context, log *slog.Logger, lease kubernetes.Interface, cfg Config, lw *leaderWork, ctl *controller.Controller) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, cfg.Namespace, "istiod-lite-leader",
		lease.CoreV1(), lease.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: cfg.PodName})
	if err != nil {
		return fmt.Errorf("leader lock: %w", err)
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				// term ends when leadership is lost, and with it any pass in progress.
				OnStartedLeading: func(term context.Context) {
					log.Info("leading")
					lw.lead(term)
					ctl.Poke()
				},
				OnStoppedLeading: func() {
					log.Info("stopped leading")
					lw.stopLeading()
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(ctx) // returns when leadership is lost; try again
	}
	return nil
}
