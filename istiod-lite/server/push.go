package server

import (
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/controller"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/report"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

// pusher turns the cache into snapshots and publishes them. It runs on the debounce goroutine
// only: the translator, the last snapshot and the bundle are its own. It does no API call: the
// leader's writes are handed to leaderWork, which runs on its own goroutine.
type pusher struct {
	log          *slog.Logger
	ctl          *controller.Controller
	xds          *xds.Server
	leader       *leaderWork
	trustDomain  string
	roots        func() []string // the roots proxies must trust, as of now
	translator   *model.Translator
	translations *prometheus.HistogramVec
	waypoints    *waypointIndex
	problems     *report.Log

	last   *xds.Snapshot
	bundle *cav1.TrustBundle
}

func newPusher(log *slog.Logger, cfg Config, ctl *controller.Controller, x *xds.Server, lw *leaderWork, roots func() []string, wi *waypointIndex, reg prometheus.Registerer) *pusher {
	p := &pusher{
		log: log, ctl: ctl, xds: x, leader: lw, trustDomain: cfg.CA.TrustDomain, roots: roots, waypoints: wi,
		translator: model.NewTranslator(cfg.Model),
		problems:   report.NewLog(log),
		translations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "istiod_lite_translation_seconds",
			Help:    "Time to translate the cluster state and serialise the snapshot, by mode (full, or incremental: changed pods only).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"mode"}),
	}
	reg.MustRegister(p.translations)
	return p
}

// trustBundle returns the bundle of the current roots, the same message as long as they do not
// change (so that the snapshot reuses its serialised form).
func (p *pusher) trustBundle() *cav1.TrustBundle {
	roots := p.roots()
	if p.bundle == nil || !slices.Equal(p.bundle.Roots, roots) {
		p.bundle = &cav1.TrustBundle{TrustDomain: p.trustDomain, Roots: roots}
	}
	return p.bundle
}

func (p *pusher) push() {
	in, err := p.ctl.Input()
	if err != nil {
		p.log.Error("read cache", "err", err)
		return
	}
	start := time.Now()
	bundle := p.trustBundle()
	m := p.translator.Translate(in)
	snap, err := p.last.Next(m, bundle)
	if err != nil {
		p.log.Error("serialise snapshot", "err", err)
		return
	}
	p.last = snap
	st := p.translator.Stats()
	mode := "incremental"
	if st.Full {
		mode = "full"
	}
	p.translations.WithLabelValues(mode).Observe(time.Since(start).Seconds())
	p.log.Debug("translated", "mode", mode, "podsTranslated", st.Translated, "workloads", len(m.Workloads),
		"services", len(m.Services), "authorizations", len(m.Authorizations), "elapsed", time.Since(start))
	p.waypoints.set(in.Gateways) // before the snapshot: a waypoint's first stream is decided from it
	p.xds.Update(snap)
	p.problems.Report(m.Problems)
	p.leader.offer(leaderInput{in: in, snap: m, roots: strings.Join(bundle.Roots, "")})
}

// waypointIndex knows the service accounts of waypoints, as of the last push: those of the
// Gateways of class istio-waypoint, whose Deployments run as a service account named after the
// Gateway (waypoint.Desired). The xDS server asks it which callers are waypoints.
type waypointIndex struct {
	clusterDomain string
	m             atomic.Pointer[map[string]string] // "<ns>/<service account>" -> "<ns>/<hostname>" of its Service
}

func (w *waypointIndex) set(gateways []*gwv1.Gateway) {
	m := map[string]string{}
	for _, g := range gateways {
		if string(g.Spec.GatewayClassName) == mesh.WaypointGatewayClass && g.DeletionTimestamp == nil {
			// The waypoint's Service is named after the Gateway, as model names it in bindings.
			m[g.Namespace+"/"+g.Name] = g.Namespace + "/" + g.Name + "." + g.Namespace + ".svc." + w.clusterDomain
		}
	}
	w.m.Store(&m)
}

// lookup is xds.Config.Waypoint.
func (w *waypointIndex) lookup(namespace, serviceAccount string) (string, bool) {
	m := w.m.Load()
	if m == nil {
		return "", false
	}
	wp, ok := (*m)[namespace+"/"+serviceAccount]
	return wp, ok
}
