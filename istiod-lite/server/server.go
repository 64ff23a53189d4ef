package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/controller"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/routes"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

// Run runs istiod-lite until ctx is done. cfg must be valid. Cancellation returns nil.
func Run(ctx context.Context, log *slog.Logger, cfg Config) error {
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = cfg.KubeQPS, cfg.KubeBurst
	var c controller.Clients
	if c.Kube, err = kubernetes.NewForConfig(restCfg); err != nil {
		return fmt.Errorf("kube client: %w", err)
	}
	if c.Istio, err = istioclient.NewForConfig(restCfg); err != nil {
		return fmt.Errorf("istio client: %w", err)
	}
	if c.Gateway, err = gwclient.NewForConfig(restCfg); err != nil {
		return fmt.Errorf("gateway client: %w", err)
	}
	return run(ctx, log, cfg, c, nil)
}

// Addrs are the addresses the servers listen on.
type Addrs struct{ GRPC, Admin, Metrics, Ready string }

// run is Run with the clients given; started, if not nil, is called once every listener is open.
func run(ctx context.Context, log *slog.Logger, cfg Config, clients controller.Clients, started func(Addrs)) error {
	kube := clients.Kube

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctl, err := controller.New(log, clients)
	if err != nil {
		return err
	}
	authority, err := ca.LoadOrCreate(ctx, kube, cfg.Namespace, cfg.CA.TrustDomain)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	bundle := &cav1.TrustBundle{TrustDomain: cfg.CA.TrustDomain, Roots: authority.Roots()}
	auth := authn.NewTokenReviewer(kube, cfg.TokenAudiences)
	xdsSrv := xds.New(log, xds.Config{ZtunnelServiceAccounts: cfg.CA.ZtunnelServiceAccounts}, auth, xds.NewMetrics(reg))
	caSrv := ca.NewService(log, cfg.CA, authority, auth, ctl.PodsOnNode, reg)

	serving := &servingCert{ca: authority, dnsNames: dnsNames(cfg)}
	if _, err := serving.get(nil); err != nil {
		return err
	}
	grpcSrv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: serving.get})),
		// Detect dead proxies (node gone) so their streams and state are released; let proxies
		// ping an idle stream but not flood.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcSrv, xdsSrv)
	cav1.RegisterCertificateServiceServer(grpcSrv, caSrv)

	var leading atomic.Bool
	if !cfg.LeaderElection {
		leading.Store(true)
	}
	waypoints := waypoint.New(kube, clients.Gateway, cfg.WaypointImage, cfg.Model.ClusterDomain)
	routeStatus := routes.NewWriter(clients.Gateway)
	roots := strings.Join(authority.Roots(), "")
	// push runs on the debounce goroutine only: translator and last are its own.
	translator := model.NewTranslator(cfg.Model)
	translations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "istiod_lite_translation_seconds",
		Help:    "Time to translate the cluster state and serialise the snapshot, by mode (full, or incremental: changed pods only).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"mode"})
	reg.MustRegister(translations)
	var last *xds.Snapshot
	rootWrites := map[string]*rate.Limiter{} // per namespace, see publishRoots
	push := func() {
		in, err := ctl.Input()
		if err != nil {
			log.Error("read cache", "err", err)
			return
		}
		start := time.Now()
		m := translator.Translate(in)
		snap, err := last.Next(m, bundle)
		if err != nil {
			log.Error("serialise snapshot", "err", err)
			return
		}
		last = snap
		st := translator.Stats()
		mode := "incremental"
		if st.Full {
			mode = "full"
		}
		translations.WithLabelValues(mode).Observe(time.Since(start).Seconds())
		log.Debug("translated", "mode", mode, "podsTranslated", st.Translated, "workloads", len(m.Workloads),
			"services", len(m.Services), "authorizations", len(m.Authorizations), "elapsed", time.Since(start))
		xdsSrv.Update(snap)
		if leading.Load() {
			publishRoots(ctx, log, kube, ctl, in, roots, rootWrites)
			waypoints.Repair(ctl.TakeRepairs()...)
			if err := waypoints.Reconcile(ctx, in.Gateways); err != nil {
				log.Warn("deploy waypoints", "err", err)
			}
			if rin, err := ctl.RouteInput(); err != nil {
				log.Error("read route cache", "err", err)
			} else {
				rin.Services, rin.Gateways = in.Services, in.Gateways
				if err := routeStatus.Reconcile(ctx, rin); err != nil {
					log.Warn("write route status", "err", err)
				}
			}
		} else {
			// A future leader term re-checks everything.
			waypoints.Reset()
			clear(rootWrites)
		}
	}

	// The first snapshot comes only once every cache has synced (Debounce).
	ready := xdsSrv.Ready
	admin := adminHandler(xdsSrv)
	metricsH := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	readyH := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}) // on every path, so probes written for Istio (/healthz/ready) work too

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	var addrs Addrs
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.GRPCAddr, err)
	}
	addrs.GRPC = lis.Addr().String()
	goRun("grpc", func() error { return grpcSrv.Serve(lis) })
	for _, h := range []struct {
		addr    string
		handler http.Handler
		out     *string
	}{{cfg.AdminAddr, admin, &addrs.Admin}, {cfg.MetricsAddr, metricsH, &addrs.Metrics}, {cfg.ReadyAddr, readyH, &addrs.Ready}} {
		l, err := net.Listen("tcp", h.addr)
		if err != nil {
			cancel()
			grpcSrv.Stop()
			wg.Wait()
			return fmt.Errorf("listen %s: %w", h.addr, err)
		}
		*h.out = l.Addr().String()
		srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 10 * time.Second}
		goRun("http "+h.addr, func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		go func() { <-ctx.Done(); _ = srv.Close() }()
	}
	goRun("controller", func() error { return ctl.Run(ctx) })
	goRun("debounce", func() error {
		ctl.Debounce(ctx, cfg.DebounceQuiet, cfg.DebounceMax, push)
		return nil
	})
	goRun("resync", func() error {
		// Cluster writes are checked against the API server periodically even when nothing
		// changed, to repair what was edited or deleted by hand.
		t := time.NewTicker(waypoint.Resync)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if leading.Load() {
					ctl.Poke()
				}
			}
		}
	})
	if cfg.LeaderElection {
		goRun("leader election", func() error { return runLeaderElection(ctx, log, kube, cfg, &leading, ctl) })
	}
	log.Info("istiod-lite running", "grpc", addrs.GRPC, "admin", addrs.Admin, "trustDomain", cfg.CA.TrustDomain)
	if started != nil {
		started(addrs)
	}

	<-ctx.Done()
	// Shutdown: stop accepting and end streams at once. Proxies keep their last configuration
	// and certificates (DESIGN.md §8) and reconnect to another replica.
	grpcSrv.Stop()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

func dnsNames(cfg Config) []string {
	base := cfg.ServiceName + "." + cfg.Namespace
	return []string{base + ".svc", base + ".svc." + cfg.Model.ClusterDomain, base, cfg.ServiceName}
}

// servingCert is istiod-lite's own TLS certificate, issued by its CA and renewed at half-life.
type servingCert struct {
	ca       *ca.Authority
	dnsNames []string

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

const servingTTL = 30 * 24 * time.Hour

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil && time.Now().Before(s.renewAt) {
		return s.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	der, err := s.ca.SignServing(key, s.dnsNames, servingTTL)
	if err != nil {
		return nil, err
	}
	s.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	s.renewAt = time.Now().Add(servingTTL / 2)
	return s.cert, nil
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
// from roots: new namespaces, and ConfigMaps deleted or edited by hand. limits holds the rewrite
// limiter of each namespace written to.
func publishRoots(ctx context.Context, log *slog.Logger, kube kubernetes.Interface, ctl *controller.Controller, in model.Input, roots string, limits map[string]*rate.Limiter) {
	live := make(map[string]bool, len(in.Namespaces))
	for _, ns := range in.Namespaces {
		live[ns.Name] = true
		if ns.DeletionTimestamp != nil || ctl.RootsPublished(ns.Name, roots) {
			continue
		}
		lim := limits[ns.Name]
		if lim == nil {
			lim = rate.NewLimiter(rate.Every(rootWriteEvery), rootWriteBurst)
			limits[ns.Name] = lim
		}
		if !lim.Allow() {
			log.Warn("root certificate ConfigMap changed again by someone else; rewriting it later", "namespace", ns.Name, "configmap", ca.RootConfigMap)
			continue
		}
		if err := ca.PublishRoots(ctx, kube, ns.Name, roots); err != nil {
			log.Warn("publish root certificate", "namespace", ns.Name, "err", err)
		}
	}
	for ns := range limits {
		if !live[ns] {
			delete(limits, ns)
		}
	}
}

func runLeaderElection(ctx context.Context, log *slog.Logger, kube kubernetes.Interface, cfg Config, leading *atomic.Bool, ctl *controller.Controller) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, cfg.Namespace, "istiod-lite-leader",
		kube.CoreV1(), kube.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: cfg.PodName})
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
				OnStartedLeading: func(context.Context) {
					log.Info("leading")
					leading.Store(true)
					ctl.Poke()
				},
				OnStoppedLeading: func() {
					log.Info("stopped leading")
					leading.Store(false)
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

func adminHandler(x *xds.Server) http.Handler {
	mux := http.NewServeMux()
	// Profiles, as every Go control plane offers them; the admin port is bound to localhost.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		snap := x.Snapshot()
		if snap == nil {
			http.Error(w, "no snapshot yet", http.StatusServiceUnavailable)
			return
		}
		m := snap.Model()
		dump := map[string]any{"problems": m.Problems}
		enc := protojson.MarshalOptions{}
		for kind, res := range map[string]map[string]json.RawMessage{"workloads": {}, "services": {}, "authorizations": {}} {
			dump[kind] = res
		}
		for k, v := range m.Workloads {
			b, _ := enc.Marshal(v)
			dump["workloads"].(map[string]json.RawMessage)[k] = b
		}
		for k, v := range m.Services {
			b, _ := enc.Marshal(v)
			dump["services"].(map[string]json.RawMessage)[k] = b
		}
		for k, v := range m.Authorizations {
			b, _ := enc.Marshal(v)
			dump["authorizations"].(map[string]json.RawMessage)[k] = b
		}
		writeJSON(w, dump)
	})
	mux.HandleFunc("/debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, x.Clients())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	_ = e.Encode(v)
}
