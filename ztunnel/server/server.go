package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/api/status"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/accesslog"
	"github.com/ambient-mesh/ambient/internal/netutil"
	"github.com/ambient-mesh/ambient/internal/version"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/zds"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
	"github.com/ambient-mesh/ambient/ztunnel/certs"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"github.com/ambient-mesh/ambient/ztunnel/inpod"
	"github.com/ambient-mesh/ambient/ztunnel/proxy"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// Certs is the certificate manager's part ztunnel uses.
type Certs interface {
	Run(ctx context.Context) error
	Acquire(id identity.Identity) (release func())
	Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error)
}

// Run runs ztunnel until ctx ends, then drains: it stops taking pods, lets open connections
// finish up to Config.Drain, and returns. Cancellation returns nil.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log = log.With("component", "ztunnel", "node", cfg.Node)
	accessLog := accesslog.New(cfg.AccessLog, "component", "ztunnel", "node", cfg.Node)
	tlsCfg, istiodRoots, err := certs.IstiodTLS(cfg.RootCertFile, cfg.ServerName)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Configuration.
	store := xdsclient.NewStore()
	xc := xdsclient.Default()
	xc.Addr, xc.TLS, xc.TokenFile, xc.Node, xc.Log = cfg.XDSAddr, tlsCfg, cfg.TokenFile, cfg.Node, log
	xds, err := xdsclient.New(xc, store)
	if err != nil {
		return err
	}
	reg.MustRegister(xdsclient.NewCollector(xds))
	// The mesh's trust bundle comes over xDS; until it does, the root that verifies istiod-lite
	// (the same CA) stands in.
	roots := func() *x509.CertPool {
		if pool, _ := store.Load().Roots(); pool != nil {
			return pool
		}
		return istiodRoots
	}
	var policies atomic.Pointer[authz.Policies]
	empty, _ := authz.Compile(nil)
	policies.Store(empty)

	certs, certsInfo, err := dialCertManager(ctx, cfg, tlsCfg, roots, log)
	if err != nil {
		return err
	}

	// The redirector's maps, pinned by the node agent.
	pinned, err := redirect.WaitPinned(ctx, cfg.PinDir, log)
	if err != nil {
		return nil // ctx ended while waiting for the node agent
	}
	defer pinned.Close()

	cur := &current{store: store}
	px := proxy.New(proxy.Deps{
		Config: cur.get, Policies: policies.Load, Certs: certs, Roots: roots, OrigDst: pinned,
		TrustDomain: cfg.TrustDomain, Wait: cfg.Wait,
		ClientConfig: hbone.DefaultClientConfig(), ServerConfig: hbone.DefaultServerConfig(),
		Metrics: proxy.NewMetrics(reg), Log: log, AccessLog: accessLog,
	})
	ids := &identities{certs: certs, held: map[identity.Identity]func(){}}
	var pods *inpod.Manager
	pods = inpod.New(inpod.Config{Registrar: pinned, Handler: px, Log: log, Drain: cfg.Drain,
		OnChange:  func() { ids.update(pods.Pods(), cfg.TrustDomain) },
		OnRemoved: px.Release,
	})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("xds", xds.Run)
	goRun("certs", certs.Run)
	goRun("policies", func(ctx context.Context) error { return compilePolicies(ctx, store, &policies, log) })
	var zdsUp atomic.Bool
	goRun("zds", func(ctx context.Context) error {
		zc := zds.DefaultClientConfig()
		zc.Path, zc.Node, zc.Log, zc.Handler = cfg.ZDSSocket, cfg.Node, log, &readyHandler{Manager: pods, up: &zdsUp}
		return zds.RunClient(ctx, zc)
	})
	srv := &endpoints{cfg: cfg, reg: reg, store: store, xds: xds, pods: pods, certsInfo: certsInfo,
		ready: func() bool { return xds.Synced() && zdsUp.Load() }}
	goRun("http", srv.serve)

	log.Info("ztunnel started")
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	// Shutdown: the ZDS client stops first (so no pod is added after the next step), then the
	// listeners close (a new ztunnel bound beside takes new connections) and open connections
	// drain up to cfg.Drain, with the configuration and certificates held.
	wg.Wait()
	pods.Close()
	return runErr
}

// readyHandler notes that ZDS got through its first snapshot.
type readyHandler struct {
	*inpod.Manager
	up *atomic.Bool
}

func (r *readyHandler) SnapshotDone(replayed map[string]bool) {
	r.Manager.SnapshotDone(replayed)
	r.up.Store(true)
}

// compilePolicies recompiles the authorization policies on every configuration change. A policy
// it cannot use is logged by name; the others apply at once to new connections.
func compilePolicies(ctx context.Context, store *xdsclient.Store, dst *atomic.Pointer[authz.Policies], log *slog.Logger) error {
	ch, stop := store.Subscribe()
	defer stop()
	for {
		var auths []*workloadv1.Authorization
		for _, a := range store.Load().Authorizations() {
			auths = append(auths, a)
		}
		p, err := authz.Compile(auths)
		if err != nil {
			log.Error("authorization policies that cannot be enforced", "err", err)
		}
		if p != nil {
			dst.Store(p)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}

// identities holds a certificate for each identity of the pods served, and only those.
type identities struct {
	certs Certs
	mu    sync.Mutex
	held  map[identity.Identity]func()
}

func (s *identities) update(pods []*inpod.Pod, td string) {
	want := map[identity.Identity]bool{}
	for _, p := range pods {
		want[identity.Identity{TrustDomain: td, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range want {
		if _, ok := s.held[id]; !ok {
			s.held[id] = s.certs.Acquire(id)
		}
	}
	for id, release := range s.held {
		if !want[id] {
			release()
			delete(s.held, id)
		}
	}
}

// endpoints serves admin (localhost), metrics and readiness.
type endpoints struct {
	cfg       Config
	reg       *prometheus.Registry
	store     *xdsclient.Store
	xds       *xdsclient.Client
	pods      *inpod.Manager
	certsInfo snapshot
	ready     func() bool
}

// status summarises ztunnel's state for ambientctl.
func (e *endpoints) status() status.Ztunnel {
	st := e.store.Load()
	xs := e.xds.Stats()
	out := status.Ztunnel{Version: version.String(), Ready: e.ready(),
		XDS:       status.XDS{Connected: xs.Connected, Types: map[string]status.XDSType{}},
		Workloads: st.Len(xdsclient.TypeWorkload), Services: st.Len(xdsclient.TypeService),
		Authorizations: st.Len(xdsclient.TypeAuthorization), Pods: []status.Pod{}, Certificates: []status.Certificate{}}
	for t, ts := range xs.Types {
		out.XDS.Types[t] = status.XDSType{Synced: ts.Synced, LastACK: ts.LastACK, NACKs: ts.NACKs, Resources: ts.Resources}
	}
	for _, p := range e.pods.Pods() {
		sp := status.Pod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.ServiceAccount, IPs: []string{}}
		for _, ip := range p.IPs {
			sp.IPs = append(sp.IPs, ip.String())
		}
		out.Pods = append(out.Pods, sp)
	}
	slices.SortFunc(out.Pods, func(a, b status.Pod) int { return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	if e.certsInfo != nil {
		for _, c := range e.certsInfo() {
			out.Certificates = append(out.Certificates, status.Certificate{Identity: c.Identity, State: string(c.State), NotAfter: c.NotAfter, LastError: c.LastError})
		}
	}
	return out
}

func (e *endpoints) serve(ctx context.Context) error {
	admin := http.NewServeMux()
	admin.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		st := e.store.Load()
		dump := map[string]any{"pods": e.pods.Pods(), "xds": e.xds.Stats(), "certificates": e.certsInfo,
			"workloads": st.Len(xdsclient.TypeWorkload), "services": st.Len(xdsclient.TypeService),
			"authorizations": st.Len(xdsclient.TypeAuthorization)}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dump)
	})
	// Returns what the Go runtime holds and no longer uses to the kernel, after a collection, so
	// that RSS read next is what ztunnel needs (make bench reads memory per connection so).
	admin.HandleFunc("POST /debug/free_memory", func(w http.ResponseWriter, _ *http.Request) {
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
	})
	admin.HandleFunc("/debug/pprof/", pprof.Index)
	admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}))
	// The summary ambientctl reads through the API server's pod proxy (api/status): on the
	// metrics port, which is reachable on the pod's address, unlike the admin port.
	for path, doc := range map[string]func() any{
		status.Path:          func() any { return e.status() },
		status.WorkloadsPath: func() any { return workloadsOf(e.store.Load()) },
		status.ServicesPath:  func() any { return servicesOf(e.store.Load()) },
	} {
		metrics.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(doc())
		})
	}
	ready := http.NewServeMux()
	ready.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !e.ready() {
			http.Error(w, "not ready: configuration or the node agent not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return netutil.ServeHTTP(ctx, map[string]http.Handler{e.cfg.AdminAddr: admin, e.cfg.MetricsAddr: metrics, e.cfg.ReadyAddr: ready})
}
