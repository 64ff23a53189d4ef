package server

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RegisterFlags binds cfg's fields to flags on fs, with cfg's values as defaults. Call the returned
// function after fs.Parse to fill in the fields derived from list flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) (finish func()) {
	var ztunnelSAs, audiences string
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		c.Namespace = ns
	}
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig path (default: in-cluster)")
	float32Var(fs, &c.KubeQPS, "kube-qps", "API server lists and watches per second")
	fs.IntVar(&c.KubeBurst, "kube-burst", c.KubeBurst, "API server request burst")
	float32Var(fs, &c.WriteQPS, "write-qps", "leader's writes per second")
	fs.IntVar(&c.WriteBurst, "write-burst", c.WriteBurst, "leader's write burst")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "timeout of each of the leader's API calls")
	fs.IntVar(&c.LeaderConcurrency, "leader-concurrency", c.LeaderConcurrency, "namespaces whose root ConfigMap the leader writes at once")
	float32Var(fs, &c.ReviewQPS, "review-qps", "TokenReviews per second")
	fs.IntVar(&c.ReviewBurst, "review-burst", c.ReviewBurst, "TokenReview burst")
	fs.DurationVar(&c.Authn.Timeout, "review-timeout", c.Authn.Timeout, "timeout of each TokenReview")
	fs.DurationVar(&c.Authn.FailureTTL, "review-failure-ttl", c.Authn.FailureTTL, "how long a rejected token is remembered")
	fs.Float64Var(&c.Authn.PeerReviewRate, "peer-review-rate", c.Authn.PeerReviewRate, "TokenReviews per second one peer address may cause (tokens not cached)")
	fs.IntVar(&c.Authn.PeerReviewBurst, "peer-review-burst", c.Authn.PeerReviewBurst, "TokenReviews one peer address may cause at once")
	fs.Float64Var(&c.CA.IssueRate, "cert-issue-rate", c.CA.IssueRate, "certificates per second issued to one caller")
	fs.IntVar(&c.CA.IssueBurst, "cert-issue-burst", c.CA.IssueBurst, "certificates issued to one caller at once")
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace istiod-lite runs in (env POD_NAMESPACE)")
	fs.StringVar(&c.PodName, "pod-name", os.Getenv("POD_NAME"), "this replica's pod name, for leader election (env POD_NAME)")
	fs.StringVar(&c.ServiceName, "service", c.ServiceName, "istiod-lite's Service name")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "xDS and CA (TLS) listen address")
	fs.IntVar(&c.MaxConnsPerPeer, "max-conns-per-peer", c.MaxConnsPerPeer, "gRPC connections one peer address may hold")
	fs.IntVar(&c.MaxStreamsPerConn, "max-streams-per-conn", c.MaxStreamsPerConn, "concurrent gRPC streams per connection")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", c.MaxRequestBytes, "largest gRPC request message")
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, "admin listen address")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "metrics listen address")
	fs.StringVar(&c.ReadyAddr, "ready-addr", c.ReadyAddr, "readiness listen address")
	fs.StringVar(&c.Model.ClusterDomain, "cluster-domain", c.Model.ClusterDomain, "cluster DNS domain")
	fs.StringVar(&c.Model.TrustDomain, "trust-domain", c.Model.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.Model.RootNamespace, "root-namespace", c.Model.RootNamespace, "namespace of mesh-wide policy")
	fs.DurationVar(&c.CA.DefaultTTL, "cert-ttl", c.CA.DefaultTTL, "default workload certificate lifetime")
	fs.DurationVar(&c.CA.MaxTTL, "max-cert-ttl", c.CA.MaxTTL, "longest workload certificate lifetime")
	fs.StringVar(&ztunnelSAs, "ztunnel-service-accounts", strings.Join(c.CA.ZtunnelServiceAccounts, ","), "comma-separated <ns>/<sa> of ztunnels")
	fs.StringVar(&audiences, "token-audiences", strings.Join(c.Authn.Audiences, ","), "comma-separated audiences proxies' tokens must carry (empty: the API server's)")
	fs.DurationVar(&c.DebounceQuiet, "debounce-quiet", c.DebounceQuiet, "push once changes were quiet this long")
	fs.DurationVar(&c.DebounceMax, "debounce-max", c.DebounceMax, "push at the latest this long after a change")
	fs.StringVar(&c.Waypoint.Image, "waypoint-image", c.Waypoint.Image, "image of waypoint Deployments")
	fs.StringVar(&c.Waypoint.TracingEndpoint, "waypoint-tracing-endpoint", c.Waypoint.TracingEndpoint,
		"OpenTelemetry collector (host:port, OTLP/gRPC) waypoints send request spans to; empty for none")
	fs.Float64Var(&c.Waypoint.TracingSampling, "waypoint-tracing-sampling", c.Waypoint.TracingSampling,
		"percentage of requests without a sampled trace for which waypoints start one")
	fs.BoolVar(&c.LeaderElection, "leader-election", c.LeaderElection, "elect one replica for cluster writes")
	return func() {
		c.CA.TrustDomain = c.Model.TrustDomain
		c.CA.ZtunnelServiceAccounts = splitList(ztunnelSAs)
		c.Authn.Audiences = splitList(audiences)
	}
}

func float32Var(fs *flag.FlagSet, p *float32, name, usage string) {
	fs.Func(name, fmt.Sprintf("%s (default %v)", usage, *p), func(v string) error {
		f, err := strconv.ParseFloat(v, 32)
		*p = float32(f)
		return err
	})
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
