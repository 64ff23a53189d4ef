package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/controller"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

// Run runs istiod-lite until ctx is done. cfg must be valid. Cancellation returns nil.
func Run(ctx context.Context, log *slog.Logger, cfg Config) error {
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	c, err := newClients(restCfg, cfg)
	if err != nil {
		return err
	}
	return run(ctx, log, cfg, c, nil)
}

// clients are the API clients of one replica. Each kind of traffic has a client, and so a rate
// limiter, of its own, so that none can starve another: a first leadership's thousands of writes
// do not delay the TokenReviews of reconnecting proxies, and neither delays the renewal of the
// lease that keeps leadership.
type clients struct {
	watch  controller.Clients   // informers' lists and watches, and the CA Secret
	write  writeClients         // the leader's writes, every call bounded by Config.WriteTimeout
	review kubernetes.Interface // TokenReview, every call bounded by Config.Authn.Timeout
	lease  kubernetes.Interface // leader election
}

type writeClients struct {
	Kube    kubernetes.Interface
	Gateway gwclient.Interface
	Istio   istioclient.Interface // status of AuthorizationPolicies and PeerAuthentications
}

func newClients(base *rest.Config, cfg Config) (clients, error) {
	var c clients
	var err error
	with := func(qps float32, burst int, timeout time.Duration) *rest.Config {
		r := rest.CopyConfig(base)
		r.QPS, r.Burst, r.Timeout = qps, burst, timeout
		return r
	}
	watch := with(cfg.KubeQPS, cfg.KubeBurst, 0) // a timeout would cut watches
	if c.watch.Kube, err = kubernetes.NewForConfig(watch); err != nil {
		return c, fmt.Errorf("kube client: %w", err)
	}
	if c.watch.Istio, err = istioclient.NewForConfig(watch); err != nil {
		return c, fmt.Errorf("istio client: %w", err)
	}
	if c.watch.Gateway, err = gwclient.NewForConfig(watch); err != nil {
		return c, fmt.Errorf("gateway client: %w", err)
	}
	if c.write, err = newWriteClients(with(cfg.WriteQPS, cfg.WriteBurst, cfg.WriteTimeout)); err != nil {
		return c, err
	}
	if c.review, err = kubernetes.NewForConfig(with(cfg.ReviewQPS, cfg.ReviewBurst, cfg.Authn.Timeout)); err != nil {
		return c, fmt.Errorf("token review client: %w", err)
	}
	// A renewal every 2 s at most, and its retries; the election bounds each by RenewDeadline.
	if c.lease, err = kubernetes.NewForConfig(with(5, 10, 0)); err != nil {
		return c, fmt.Errorf("lease client: %w", err)
	}
	return c, nil
}

func newWriteClients(r *rest.Config) (writeClients, error) {
	var w writeClients
	var err error
	if w.Kube, err = kubernetes.NewForConfig(r); err != nil {
		return w, fmt.Errorf("kube write client: %w", err)
	}
	if w.Gateway, err = gwclient.NewForConfig(r); err != nil {
		return w, fmt.Errorf("gateway write client: %w", err)
	}
	if w.Istio, err = istioclient.NewForConfig(r); err != nil {
		return w, fmt.Errorf("istio write client: %w", err)
	}
	return w, nil
}

const (
	maxHeaderBytes   = 16 << 10
	handshakeTimeout = 10 * time.Second
)

// Addrs are the addresses the servers listen on.
type Addrs struct{ GRPC, Admin, Metrics, Ready string }

// run is Run with the clients given; started, if not nil, is called once every listener is open.
func run(ctx context.Context, log *slog.Logger, cfg Config, cl clients, started func(Addrs)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctl, err := controller.New(log, cl.watch)
	if err != nil {
		return err
	}
	authority, err := ca.LoadOrCreate(ctx, cl.watch.Kube, cfg.Namespace, cfg.CA.TrustDomain)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	// Roots of a replaced CA are served as long as a certificate it issued may live.
	keeper := ca.NewKeeper(log, authority, cfg.CA.MaxTTL, nil)
	auth := authn.NewTokenReviewer(cl.review, cfg.Authn)
	waypoints := &waypointIndex{clusterDomain: cfg.Model.ClusterDomain}
	xdsSrv := xds.New(log, xds.Config{ZtunnelServiceAccounts: cfg.CA.ZtunnelServiceAccounts, Waypoint: waypoints.lookup}, auth, xds.NewMetrics(reg))
	caSrv := ca.NewService(log, cfg.CA, keeper, auth, ctl.PodsOnNode, reg)

	serving := &servingCert{keeper: keeper, dnsNames: dnsNames(cfg)}
	if _, err := serving.get(nil); err != nil {
		return err
	}
	grpcSrv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: serving.get})),
		// Detect dead proxies (node gone) so their streams and state are released; let proxies
		// ping an idle stream but not flood.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// What one caller can hold: connections per address (peerListener), streams per
		// connection, the size of a message and of its headers (a token is ~1 KiB), and the
		// time a connection may take to complete its TLS handshake.
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConn)),
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes),
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.ConnectionTimeout(handshakeTimeout),
		// xDS responses go out as pre-encoded resource bytes shared by every stream.
		xds.ServerOption(),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcSrv, xdsSrv)
	cav1.RegisterCertificateServiceServer(grpcSrv, caSrv)

	lw := newLeaderWork(log, cfg, cl.write, ctl)
	p := newPusher(log, cfg, ctl, xdsSrv, lw, keeper.Roots, waypoints, reg)

	// The first snapshot comes only once every cache has synced (Debounce).
	ready := xdsSrv.Ready
	readyH := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}) // on every path, so probes written for Istio (/healthz/ready) work too

	g, ctx := newGroup(ctx)
	var addrs Addrs
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.GRPCAddr, err)
	}
	addrs.GRPC = lis.Addr().String()
	g.goRun("grpc", func() error { return grpcSrv.Serve(newPeerListener(lis, cfg.MaxConnsPerPeer, reg)) })
	for _, h := range []struct {
		addr    string
		handler http.Handler
		out     *string
	}{
		{cfg.AdminAddr, adminHandler(xdsSrv), &addrs.Admin},
		{cfg.MetricsAddr, metricsHandler(reg, xdsSrv, keeper), &addrs.Metrics},
		{cfg.ReadyAddr, readyH, &addrs.Ready},
	} {
		l, err := net.Listen("tcp", h.addr)
		if err != nil {
			g.cancel()
			grpcSrv.Stop()
			_ = g.wait()
			return fmt.Errorf("listen %s: %w", h.addr, err)
		}
		*h.out = l.Addr().String()
		srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 10 * time.Second}
		g.goRun("http "+h.addr, func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.goRun("http shutdown "+h.addr, func() error {
			<-ctx.Done()
			_ = srv.Close()
			return nil
		})
	}
	g.goRun("controller", func() error { return ctl.Run(ctx) })
	g.goRun("ca", func() error { return keeper.Run(ctx, cl.watch.Kube, cfg.Namespace) })
	g.goRun("ca changes", func() error {
		// A rotation, or old roots retired: push the trust bundle and republish the roots.
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-keeper.Changed():
				ctl.Poke()
			}
		}
	})
	g.goRun("debounce", func() error {
		ctl.Debounce(ctx, cfg.DebounceQuiet, cfg.DebounceMax, p.push)
		return nil
	})
	g.goRun("leader work", func() error { return lw.run(ctx) })
	g.goRun("resync", func() error {
		// Cluster writes are checked against the API server periodically even when nothing
		// changed, to repair what was edited or deleted by hand.
		t := time.NewTicker(waypoint.Resync)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if lw.leading() {
					ctl.Poke()
				}
			}
		}
	})
	if cfg.LeaderElection {
		g.goRun("leader election", func() error { return runLeaderElection(ctx, log, cl.lease, cfg, lw, ctl) })
	} else {
		lw.lead(ctx)
	}
	log.Info("istiod-lite running", "grpc", addrs.GRPC, "admin", addrs.Admin, "trustDomain", cfg.CA.TrustDomain)
	if started != nil {
		started(addrs)
	}

	<-ctx.Done()
	// Shutdown: stop accepting and end streams at once. Proxies keep their last configuration
	// and certificates (DESIGN.md §8) and reconnect to another replica.
	grpcSrv.Stop()
	return g.wait()
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
