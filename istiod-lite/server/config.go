// Package server composes istiod-lite: Kubernetes watches, the model, the delta xDS server and the
// CA on one TLS gRPC port, and the admin, metrics and readiness endpoints. It is the only place
// that wires components together; it holds no protocol or translation logic itself.
package server

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
)

// Config is everything istiod-lite needs to run.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster.
	Kubeconfig string
	// KubeQPS and KubeBurst limit the lists and watches of the informers (and the reads at start).
	KubeQPS   float32
	KubeBurst int
	// WriteQPS and WriteBurst limit the leader's writes (root ConfigMaps, waypoints, status),
	// through a client of their own; WriteTimeout bounds each of those calls.
	WriteQPS     float32
	WriteBurst   int
	WriteTimeout time.Duration
	// LeaderConcurrency is how many namespaces' root ConfigMaps the leader writes at once.
	LeaderConcurrency int
	// ReviewQPS and ReviewBurst limit TokenReviews, through a client of their own, so that the
	// leader's writes never delay a proxy's authentication. The default client-go limit (5/s)
	// would make a reconnect storm of proxies (a restart of istiod-lite, each proxy's token
	// reviewed once) take minutes at 100 nodes. Authn.Timeout bounds each review.
	ReviewQPS   float32
	ReviewBurst int
	// Namespace istiod-lite runs in: where the CA Secret and the leader Lease live.
	Namespace string
	// ServiceName is istiod-lite's Service, for the DNS names of its serving certificate.
	ServiceName string
	// PodName identifies this replica in leader election.
	PodName string

	GRPCAddr string // xDS and CA, TLS
	// MaxConnsPerPeer bounds the gRPC connections one peer address may hold, MaxStreamsPerConn
	// the streams (xDS streams and certificate requests) of one connection, so a peer holds at
	// most their product; MaxRequestBytes bounds one request message.
	MaxConnsPerPeer   int
	MaxStreamsPerConn int
	MaxRequestBytes   int
	AdminAddr         string // config dump, connected proxies; keep on localhost
	MetricsAddr       string
	ReadyAddr         string

	Model model.Config
	CA    ca.Config
	// Authn configures the TokenReviews of proxies' tokens: the audience they must carry
	// (istio-ca), the caches and the review budget of each peer address.
	Authn authn.Config

	DebounceQuiet time.Duration
	DebounceMax   time.Duration
	// LeaderElection makes one replica do the cluster writes (root ConfigMaps, waypoint
	// Deployments, Gateway status). Every replica serves xDS and the CA regardless.
	LeaderElection bool
	// Waypoint is how the waypoint Deployments created for waypoint Gateways run: their image
	// and their tracing.
	Waypoint waypoint.Proxy
}

// Default returns the configuration of a standard installation.
func Default() Config {
	return Config{
		Namespace:   "istio-system",
		ServiceName: "istiod-lite",
		GRPCAddr:    ":" + strconv.Itoa(mesh.PortXDSTLS),
		// A ztunnel or waypoint replica holds one or two connections. 128 leaves room for
		// proxies behind one address (the lab's 100 simulated ztunnels share one).
		MaxConnsPerPeer: 128,
		// One xDS stream and the certificate requests of a starting ztunnel (one per service
		// account on its node; more queue on the client).
		MaxStreamsPerConn: 100,
		// The largest request is a reconnecting ztunnel's initial_resource_versions: ~60
		// bytes per workload, 3 MB at 50,000 pods.
		MaxRequestBytes: 8 << 20,
		AdminAddr:       "127.0.0.1:" + strconv.Itoa(mesh.PortAdmin),
		MetricsAddr:     ":" + strconv.Itoa(mesh.PortMetrics),
		ReadyAddr:       ":" + strconv.Itoa(mesh.PortReadiness),
		KubeQPS:         100,
		KubeBurst:       200,
		// A first leadership over 1,000 namespaces writes 1,000 ConfigMaps (a read and a
		// create each): about 40 s at 50/s, while pushes and reviews go on untouched.
		WriteQPS:          50,
		WriteBurst:        100,
		WriteTimeout:      10 * time.Second,
		LeaderConcurrency: 8,
		ReviewQPS:         100,
		ReviewBurst:       200,
		Model:             model.DefaultConfig(),
		CA:                ca.DefaultConfig(),
		Authn:             authn.DefaultConfig(),
		// A lone change (nothing changed for DebounceQuiet) is pushed at once, so it reaches
		// proxies one incremental translation after it happens (target: under 100 ms); changes
		// that follow within DebounceQuiet (a rollout) are coalesced into a push at least every
		// DebounceMax, which bounds the CPU spent re-translating during a burst.
		DebounceQuiet:  20 * time.Millisecond,
		DebounceMax:    250 * time.Millisecond,
		LeaderElection: true,
		Waypoint:       waypoint.Proxy{Image: "ambient/waypoint:latest", TracingSampling: 1},
	}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Namespace == "" {
		errs = append(errs, errors.New("namespace is empty"))
	}
	if c.ServiceName == "" {
		errs = append(errs, errors.New("service name is empty"))
	}
	if c.Waypoint.Image == "" {
		errs = append(errs, errors.New("waypoint image is empty"))
	}
	if c.Waypoint.TracingEndpoint != "" {
		if _, _, err := net.SplitHostPort(c.Waypoint.TracingEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("waypoint tracing endpoint must be host:port: %w", err))
		}
	}
	if c.Waypoint.TracingSampling < 0 || c.Waypoint.TracingSampling > 100 {
		errs = append(errs, errors.New("waypoint tracing sampling must be a percentage, 0 to 100"))
	}
	if c.LeaderElection && c.PodName == "" {
		errs = append(errs, errors.New("leader election needs the pod name"))
	}
	for name, addr := range map[string]string{"grpc": c.GRPCAddr, "admin": c.AdminAddr, "metrics": c.MetricsAddr, "ready": c.ReadyAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s address %q: %w", name, addr, err))
		}
	}
	for _, l := range []struct {
		what  string
		qps   float32
		burst int
	}{{"API server", c.KubeQPS, c.KubeBurst}, {"write", c.WriteQPS, c.WriteBurst}, {"token review", c.ReviewQPS, c.ReviewBurst}} {
		if l.qps <= 0 || l.burst < 1 {
			errs = append(errs, fmt.Errorf("need %s QPS (%v) > 0 and burst (%d) >= 1", l.what, l.qps, l.burst))
		}
	}
	if c.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("need write timeout (%v) > 0", c.WriteTimeout))
	}
	if c.MaxConnsPerPeer < 1 || c.MaxStreamsPerConn < 1 || c.MaxRequestBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("need connections per peer (%d) and streams per connection (%d) >= 1, request size (%d) >= 64 KiB",
			c.MaxConnsPerPeer, c.MaxStreamsPerConn, c.MaxRequestBytes))
	}
	if c.LeaderConcurrency < 1 {
		errs = append(errs, fmt.Errorf("need leader concurrency (%d) >= 1", c.LeaderConcurrency))
	}
	if c.DebounceQuiet <= 0 || c.DebounceMax < c.DebounceQuiet {
		errs = append(errs, fmt.Errorf("need 0 < debounce quiet (%v) <= debounce max (%v)", c.DebounceQuiet, c.DebounceMax))
	}
	if c.CA.TrustDomain != c.Model.TrustDomain {
		errs = append(errs, fmt.Errorf("CA trust domain %q differs from the model's %q", c.CA.TrustDomain, c.Model.TrustDomain))
	}
	errs = append(errs, c.Model.Validate(), c.CA.Validate(), c.Authn.Validate())
	return errors.Join(errs...)
}
