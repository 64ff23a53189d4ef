package model

// DestinationRule → the routev1.TrafficPolicy of a Service, which the waypoints apply to the
// requests they send to its endpoints (a Service's own waypoint, and any waypoint whose routes
// have it as backend). The rules kept here:
//
//   - host is a Service: "svc" or "svc.ns" (relative to the rule's namespace) or
//     "svc.ns.svc.<cluster domain>". A wildcard host, or one that names no Service, is reported
//     and applied nowhere.
//   - One rule per Service: of several for one host, the oldest (creationTimestamp, then name,
//     then namespace) applies and the others are reported (Ignored), wherever they live.
//   - From trafficPolicy: loadBalancer.simple (ROUND_ROBIN, LEAST_REQUEST and the older
//     LEAST_CONN, RANDOM; unset or UNSPECIFIED is the waypoint's default, PASSTHROUGH is
//     reported and gets the default), loadBalancer.consistentHash by httpHeaderName,
//     httpCookie.name, useSourceIp or httpQueryParameterName (ringHash, maglev and
//     minimumRingSize tune an algorithm the waypoint does not have: ignored without a word),
//     connectionPool.tcp.maxConnections, connectionPool.http.http2MaxRequests and
//     http1MaxPendingRequests (the waypoint's bound of requests waiting), and outlierDetection.
//   - outlierDetection, when present, starts from Istio's defaults: 5 consecutive 5xx, interval
//     10s, baseEjectionTime 30s, maxEjectionPercent 10. consecutive5xxErrors, when set, wins
//     (0 turns ejection off); otherwise the deprecated consecutiveErrors when positive (Istio
//     counts only 502, 503 and 504 for it; the waypoint counts every 5xx).
//   - subsets and portLevelSettings are reported and not applied: the top-level policy applies
//     to every port. So is every other field set (tls, localityLbSetting, connection timeouts,
//     ...), and exportTo unless it holds "*": the policy applies to requests from every namespace.
//   - A rule with a workloadSelector is for the sidecars it selects, which ambient has none of:
//     reported, applied nowhere.
//   - DestinationRule has no status condition istiod-lite writes: problems are logs and Events.

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	netapi "istio.io/api/networking/v1alpha3"
	netv1 "istio.io/client-go/pkg/apis/networking/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// KindDestinationRule names the kind problems of DestinationRules are reported on.
const KindDestinationRule = "DestinationRule"

// Istio's outlier detection defaults (Envoy's), for a rule that has outlierDetection.
const (
	defaultConsecutive5xx     = 5
	defaultIntervalMs         = 10000
	defaultBaseEjectionMs     = 30000
	defaultMaxEjectionPercent = 10
)

// destinationRules sets the TrafficPolicy of the ServiceRoutes of the Services DestinationRules
// name. svcs is unused: a DestinationRule applies whether or not its Service has a waypoint.
func (t *translator) destinationRules(in Input, _ map[string]*workloadv1.Service, routes map[string]*routev1.ServiceRoutes) {
	drs := slices.Clone(in.DestinationRules)
	slices.SortFunc(drs, func(a, b *netv1.DestinationRule) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Namespace, b.Namespace))
	})
	owner := map[string]*netv1.DestinationRule{} // by ServiceRoutes key
	for _, dr := range drs {
		report := func(rejected bool, reason, format string, args ...any) {
			t.report(Problem{Kind: KindDestinationRule, Namespace: dr.Namespace, Name: dr.Name,
				Reason: reason, Rejected: rejected, Message: fmt.Sprintf(format, args...)})
		}
		spec := &dr.Spec
		if spec.WorkloadSelector != nil {
			report(true, ReasonUnsupportedValue, "a DestinationRule with a workloadSelector is for sidecars, which ambient has none of: not applied")
			continue
		}
		if strings.Contains(spec.Host, "*") {
			report(true, ReasonUnsupportedValue, "wildcard host %q: only a Service's host is supported: not applied", spec.Host)
			continue
		}
		key := t.serviceKey(spec.Host, dr.Namespace)
		sr := routes[key]
		if sr == nil {
			report(true, ReasonInvalidValue, "host %q names no Service: not applied", spec.Host)
			continue
		}
		if o := owner[key]; o != nil {
			report(true, ReasonIgnored, "DestinationRule %s/%s, older, already sets the traffic policy of %s: this one is ignored", o.Namespace, o.Name, sr.Hostname)
			continue
		}
		owner[key] = dr
		if len(spec.ExportTo) > 0 && !slices.Contains(spec.ExportTo, "*") {
			report(false, ReasonUnsupportedValue, "exportTo is not applied: the policy applies to requests from every namespace")
		}
		if len(spec.Subsets) > 0 {
			var names []string
			for _, s := range spec.Subsets {
				names = append(names, s.Name)
			}
			report(false, ReasonUnsupportedValue, "subsets (%s) are not applied: only the top-level trafficPolicy is", strings.Join(names, ", "))
		}
		if tp := spec.TrafficPolicy; tp != nil {
			sr.TrafficPolicy = trafficPolicy(tp, report)
		}
	}
}

// serviceKey resolves a DestinationRule host of namespace ns to the ServiceRoutes key of the
// Service it names, "" when it names none by one of the forms above.
func (t *translator) serviceKey(host, ns string) string {
	name, svcNS := host, ns
	if rest, ok := strings.CutSuffix(host, ".svc."+t.cfg.ClusterDomain); ok {
		host = rest
	}
	switch parts := strings.Split(host, "."); len(parts) {
	case 1:
		name = parts[0]
	case 2:
		name, svcNS = parts[0], parts[1]
	default:
		return ""
	}
	if name == "" || svcNS == "" {
		return ""
	}
	return svcNS + "/" + t.hostname(name, svcNS)
}

// trafficPolicy translates a trafficPolicy, reporting what it leaves out.
func trafficPolicy(tp *netapi.TrafficPolicy, report func(bool, string, string, ...any)) *routev1.TrafficPolicy {
	out := &routev1.TrafficPolicy{}
	ignored := unapplied("", tp, "load_balancer", "connection_pool", "outlier_detection", "port_level_settings")
	if len(tp.PortLevelSettings) > 0 {
		report(false, ReasonUnsupportedValue, "portLevelSettings are not applied: the top-level trafficPolicy applies to every port")
	}
	if lb := tp.LoadBalancer; lb != nil {
		ignored = append(ignored, unapplied("loadBalancer.", lb, "simple", "consistent_hash")...)
		switch p := lb.LbPolicy.(type) {
		case *netapi.LoadBalancerSettings_Simple:
			switch p.Simple {
			case netapi.LoadBalancerSettings_UNSPECIFIED:
			case netapi.LoadBalancerSettings_ROUND_ROBIN:
				out.LoadBalancer = routev1.TrafficPolicy_ROUND_ROBIN
			//lint:ignore SA1019 deprecated, but users still write it; Istio treats it as LEAST_REQUEST
			case netapi.LoadBalancerSettings_LEAST_REQUEST, netapi.LoadBalancerSettings_LEAST_CONN:
				out.LoadBalancer = routev1.TrafficPolicy_LEAST_REQUEST
			case netapi.LoadBalancerSettings_RANDOM:
				out.LoadBalancer = routev1.TrafficPolicy_RANDOM
			case netapi.LoadBalancerSettings_PASSTHROUGH:
				report(false, ReasonUnsupportedValue, "loadBalancer.simple PASSTHROUGH: the waypoint balances over the Service's endpoints, by its default")
			default:
				report(false, ReasonInvalidValue, "loadBalancer.simple %v is unknown: the waypoint's default applies", p.Simple)
			}
		case *netapi.LoadBalancerSettings_ConsistentHash:
			ch := p.ConsistentHash
			ignored = append(ignored, unapplied("loadBalancer.consistentHash.", ch, "http_header_name", "http_cookie", "use_source_ip",
				"http_query_parameter_name", "ring_hash", "maglev", "minimum_ring_size")...)
			switch k := ch.GetHashKey().(type) {
			case *netapi.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
				out.HashHeader = k.HttpHeaderName
			case *netapi.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
				if c := k.HttpCookie; c != nil {
					out.HashCookie = c.Name
					ignored = append(ignored, unapplied("loadBalancer.consistentHash.httpCookie.", c, "name")...)
				}
			case *netapi.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
				out.HashSourceIp = k.UseSourceIp
			case *netapi.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
				out.HashQueryParameter = k.HttpQueryParameterName
			}
			if out.HashHeader == "" && out.HashCookie == "" && out.HashQueryParameter == "" && !out.HashSourceIp {
				report(false, ReasonInvalidValue, "loadBalancer.consistentHash has no key: the waypoint's default applies")
			} else {
				out.LoadBalancer = routev1.TrafficPolicy_CONSISTENT_HASH
			}
		}
	}
	count := func(field string, v int32) uint32 {
		if v < 0 {
			report(false, ReasonInvalidValue, "%s %d is negative: not applied", field, v)
			return 0
		}
		return uint32(v)
	}
	if cp := tp.ConnectionPool; cp != nil {
		ignored = append(ignored, unapplied("connectionPool.", cp, "tcp", "http")...)
		if tcp := cp.Tcp; tcp != nil {
			ignored = append(ignored, unapplied("connectionPool.tcp.", tcp, "max_connections")...)
			out.MaxConnections = count("connectionPool.tcp.maxConnections", tcp.MaxConnections)
		}
		if h := cp.Http; h != nil {
			ignored = append(ignored, unapplied("connectionPool.http.", h, "http2_max_requests", "http1_max_pending_requests")...)
			out.Http2MaxRequests = count("connectionPool.http.http2MaxRequests", h.Http2MaxRequests)
			out.MaxPendingRequests = count("connectionPool.http.http1MaxPendingRequests", h.Http1MaxPendingRequests)
		}
	}
	if od := tp.OutlierDetection; od != nil {
		ignored = append(ignored, unapplied("outlierDetection.", od, "consecutive_errors", "consecutive_5xx_errors", "interval",
			"base_ejection_time", "max_ejection_percent")...)
		o := &routev1.OutlierDetection{Consecutive_5XxErrors: defaultConsecutive5xx, IntervalMs: defaultIntervalMs,
			BaseEjectionTimeMs: defaultBaseEjectionMs, MaxEjectionPercent: defaultMaxEjectionPercent}
		switch {
		case od.Consecutive_5XxErrors != nil:
			o.Consecutive_5XxErrors = od.Consecutive_5XxErrors.GetValue()
		//lint:ignore SA1019 deprecated, but users still write it: it is honoured when the new field is unset
		case od.ConsecutiveErrors > 0:
			//lint:ignore SA1019 as above
			o.Consecutive_5XxErrors = uint32(od.ConsecutiveErrors)
		}
		durationField := func(field string, d *durationpb.Duration, into *uint32) {
			if d == nil {
				return
			}
			if ms, ok := durationMs(d); ok {
				*into = ms
				return
			}
			report(false, ReasonInvalidValue, "%s %v is not a duration of at least 1ms: the default applies", field, d.AsDuration())
		}
		durationField("outlierDetection.interval", od.Interval, &o.IntervalMs)
		durationField("outlierDetection.baseEjectionTime", od.BaseEjectionTime, &o.BaseEjectionTimeMs)
		switch p := od.MaxEjectionPercent; {
		case p > 100 || p < 0:
			report(false, ReasonInvalidValue, "outlierDetection.maxEjectionPercent %d is not a percentage: the default applies", p)
		case p > 0:
			o.MaxEjectionPercent = uint32(p)
		}
		out.OutlierDetection = o
	}
	if len(ignored) > 0 {
		report(false, ReasonUnsupportedValue, "trafficPolicy fields not applied: %s", strings.Join(ignored, ", "))
	}
	return out
}

// durationMs is d in milliseconds, false when d is invalid or shorter than 1ms (Istio's minimum).
func durationMs(d *durationpb.Duration) (uint32, bool) {
	if d.CheckValid() != nil || d.AsDuration() < time.Millisecond {
		return 0, false
	}
	return uint32(min(d.AsDuration().Milliseconds(), math.MaxUint32)), true
}

// unapplied returns the JSON names, after prefix, of the fields set in m but those named (by
// their proto names) in applied.
func unapplied(prefix string, m proto.Message, applied ...string) []string {
	var out []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(applied, string(fd.Name())) {
			out = append(out, prefix+fd.JSONName())
		}
		return true
	})
	slices.Sort(out)
	return out
}
