package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/internal/accesslog"
	"github.com/ambient-mesh/ambient/internal/netutil"
	"github.com/ambient-mesh/ambient/waypoint/proxy"
	"github.com/ambient-mesh/ambient/ztunnel/certs"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// Run runs the waypoint until ctx ends, then drains open tunnels up to Config.Drain.
// Cancellation returns nil.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ns, name, _ := strings.Cut(cfg.Gateway, "/")
	self := identity.Identity{TrustDomain: cfg.TrustDomain, Namespace: ns, ServiceAccount: name}
	log = log.With("component", "waypoint", "gateway", cfg.Gateway)
	tlsCfg, istiodRoots, err := certs.IstiodTLS(cfg.RootCertFile, cfg.ServerName)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store := xdsclient.NewStore()
	xc := xdsclient.Default()
	xc.Addr, xc.TLS, xc.TokenFile, xc.Log = cfg.XDSAddr, tlsCfg, cfg.TokenFile, log
	xc.Node = cfg.Pod
	if xc.Node == "" {
		xc.Node = cfg.Gateway
	}
	xc.Types = xdsclient.WaypointTypes
	xc.Validator = func(typeURL, name string, m proto.Message) error { return proxy.ValidateRoutes(typeURL, name, m) }
	xds, err := xdsclient.New(xc, store)
	if err != nil {
		return err
	}
	reg.MustRegister(xdsclient.NewCollector(xds))
	roots := func() *x509.CertPool {
		if pool, _ := store.Load().Roots(); pool != nil {
			return pool
		}
		return istiodRoots
	}

	ca, err := certs.DialCA(ctx, cfg.XDSAddr, tlsCfg, cfg.TokenFile)
	if err != nil {
		return err
	}
	defer ca.Close()
	cc := certs.Default()
	cc.CA, cc.Roots, cc.TrustDomain, cc.Log = ca, roots, cfg.TrustDomain, log
	cm, err := certs.New(cc)
	if err != nil {
		return err
	}
	release := cm.Acquire(self)
	defer release()
	creds := cm.Credentials(self, cfg.Wait)

	var dialer net.Dialer
	client, err := hbone.NewClient(hbone.DefaultClientConfig(), func(identity.Identity) (hbone.Credentials, error) { return creds, nil },
		func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", addr.String())
		}, log)
	if err != nil {
		return err
	}
	defer client.Close()
	tracer, stopTracing, err := tracing(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	px := proxy.New(proxy.Deps{Store: store, Self: self, Gateway: cfg.Gateway, Client: client,
		Metrics: proxy.NewMetrics(reg), Log: log, AccessLog: accesslog.New(cfg.AccessLog, "component", "waypoint", "gateway", cfg.Gateway), Tracer: tracer})
	defer px.Close()
	serverTLS, err := hbone.ServerTLSConfig(creds)
	if err != nil {
		return err
	}
	scfg := hbone.DefaultServerConfig()
	scfg.DrainTimeout = cfg.Drain
	hs, err := hbone.NewServer(scfg, serverTLS, px, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("listen for HBONE: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
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
	goRun("certs", cm.Run)
	goRun("hbone", func(ctx context.Context) error { return hs.Serve(ctx, ln) })
	ready := func() bool {
		if !xds.Synced() {
			return false
		}
		for _, c := range cm.Snapshot() {
			if c.Identity == self.String() && c.State == certs.StateValid {
				return true
			}
		}
		return false
	}
	goRun("http", func(ctx context.Context) error { return serveEndpoints(ctx, cfg, reg, store, xds, cm, ready) })
	log.Info("waypoint started", "identity", self.String(), "hbone", cfg.HBONEAddr)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	wg.Wait()
	return runErr
}

// serveEndpoints serves admin (localhost), metrics and readiness.
func serveEndpoints(ctx context.Context, cfg Config, reg *prometheus.Registry, store *xdsclient.Store, xds *xdsclient.Client,
	cm *certs.Manager, ready func() bool,
) error {
	admin := http.NewServeMux()
	admin.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		st := store.Load()
		routes := map[string]any{}
		for name, r := range st.AllRoutes() {
			routes[name] = r
		}
		dump := map[string]any{"gateway": cfg.Gateway, "xds": xds.Stats(), "certificates": cm.Snapshot(),
			"workloads": st.Len(xdsclient.TypeWorkload), "services": st.Len(xdsclient.TypeService), "routes": routes}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dump)
	})
	admin.HandleFunc("/debug/pprof/", pprof.Index)
	admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	readyMux := http.NewServeMux()
	readyMux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: configuration or certificate not there yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return netutil.ServeHTTP(ctx, map[string]http.Handler{cfg.AdminAddr: admin, cfg.MetricsAddr: metrics, cfg.ReadyAddr: readyMux})
}
