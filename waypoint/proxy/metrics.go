package proxy

// Telemetry: Istio's standard request metrics with reporter="waypoint" (DESIGN.md §7), so that
// existing dashboards work, and one access log line per request.

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

var requestLabels = []string{"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_service",
	"destination_service_name", "destination_service_namespace", "request_protocol", "response_code",
	"response_flags", "connection_security_policy"}

// Metrics are the waypoint's request metrics.
type Metrics struct {
	requests                    *prometheus.CounterVec
	duration, reqSize, respSize *prometheus.HistogramVec
	// series caches each label set's four series: a vector's lookup validates and hashes every
	// label value, and a request has fourteen of them for each of four vectors. Series are never
	// deleted from the vectors, so a cached one stays theirs.
	series sync.Map // labelValues → *series
}

type labelValues [14]string // requestLabels' values, in its order

type series struct {
	requests                    prometheus.Counter
	duration, reqSize, respSize prometheus.Observer
}

func (m *Metrics) with(l *labelValues) *series {
	if s, ok := m.series.Load(*l); ok {
		return s.(*series)
	}
	s := &series{requests: m.requests.WithLabelValues(l[:]...), duration: m.duration.WithLabelValues(l[:]...),
		reqSize: m.reqSize.WithLabelValues(l[:]...), respSize: m.respSize.WithLabelValues(l[:]...)}
	got, _ := m.series.LoadOrStore(*l, s)
	return got.(*series)
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	ms := []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}
	bytes := prometheus.ExponentialBuckets(1, 10, 8)
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests handled."}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help: "Request duration, from the request's arrival to its response's end.", Buckets: ms}, requestLabels),
		reqSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes",
			Help: "Request sizes (headers and body).", Buckets: bytes}, requestLabels),
		respSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes",
			Help: "Response sizes (body).", Buckets: bytes}, requestLabels),
	}
	if len(labelValues{}) != len(requestLabels) {
		panic("proxy: labelValues does not hold requestLabels")
	}
	reg.MustRegister(m.requests, m.duration, m.reqSize, m.respSize)
	return m
}

// record is one request's account.
type record struct {
	srcWorkload, srcNS, srcPrincipal string
	dstWorkload, dstNS, dstPrincipal string
	dstService, svcName, svcNS       string
	method, path, proto, route       string
	flags                            string
	retries                          int
	err                              error
}

func (p *Proxy) newRecord(t *tunnel) *record {
	r := &record{srcPrincipal: principalString(t.peer.TrustDomain, t.peer.Namespace, t.peer.ServiceAccount),
		srcNS: t.peer.Namespace}
	if t.svc != nil {
		r.svcName, r.svcNS, r.dstService = t.svc.Name, t.svc.Namespace, t.svc.Hostname
	} else {
		r.dstWorkload, r.dstNS, r.dstPrincipal = workloadName(t.dst), t.dst.Namespace, principalOf(t.dst)
	}
	if t.srcW != nil {
		r.srcWorkload = workloadName(t.srcW)
	}
	return r
}

// finish counts the request and writes its access log line; it returns the response's status.
func (p *Proxy) finish(rec *record, w *statusWriter, r *http.Request, start time.Time) int {
	d := p.d.Now().Sub(start)
	code := w.status
	if code == 0 {
		code = http.StatusOK
	}
	if p.d.Metrics != nil {
		or := func(s string) string {
			if s == "" {
				return "unknown"
			}
			return s
		}
		flags := rec.flags
		if flags == "" {
			flags = "-"
		}
		dstService := rec.dstService
		if i := strings.IndexByte(dstService, '/'); i >= 0 {
			dstService = dstService[i+1:]
		}
		l := labelValues{"waypoint", or(rec.srcWorkload), or(rec.srcNS), or(rec.srcPrincipal), or(rec.dstWorkload),
			or(rec.dstNS), or(rec.dstPrincipal), or(dstService), or(rec.svcName), or(rec.svcNS), rec.proto,
			strconv.Itoa(code), flags, "mutual_tls"}
		s := p.d.Metrics.with(&l)
		s.requests.Inc()
		s.duration.Observe(float64(d) / float64(time.Millisecond))
		reqSize := max(r.ContentLength, 0)
		for k, vs := range r.Header {
			for _, v := range vs {
				reqSize += int64(len(k) + len(v))
			}
		}
		s.reqSize.Observe(float64(reqSize))
		s.respSize.Observe(float64(w.bytes))
	}
	line := p.d.AccessLog.Line().Str("reporter", "waypoint").Str("method", rec.method).Str("path", rec.path).Str("protocol", rec.proto).
		Str("authority", r.Host).Int("status", int64(code)).Int("duration_ms", d.Milliseconds()).Str("src_principal", rec.srcPrincipal).
		Str("src_workload", rec.srcWorkload).Str("dst_service", rec.dstService).Str("dst_workload", rec.dstWorkload).
		Str("route", rec.route).Str("flags", rec.flags).Int("retries", int64(rec.retries)).Int("bytes_sent", w.bytes)
	if tp := r.Header.Get("Traceparent"); tp != "" {
		line.Str("traceparent", tp)
	}
	if rec.err != nil {
		line.Str("err", rec.err.Error())
	}
	line.Write()
	return code
}

func workloadName(w *workloadv1.Workload) string {
	if w == nil {
		return ""
	}
	if w.WorkloadName != "" {
		return w.WorkloadName
	}
	return w.Name
}

func principalOf(w *workloadv1.Workload) string {
	return principalString(w.TrustDomain, w.Namespace, w.ServiceAccount)
}

func principalString(td, ns, sa string) string {
	if sa == "" {
		return ""
	}
	return td + "/ns/" + ns + "/sa/" + sa
}
