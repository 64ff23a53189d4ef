package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the node agent.
type metrics struct {
	enrolled    prometheus.Gauge
	errors      *prometheus.CounterVec
	onboard     prometheus.Histogram
	proxies     prometheus.Gauge
	cniRequests *prometheus.CounterVec
	steps       *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		enrolled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambient_agent_pods_enrolled", Help: "Pods of this node set up for redirection."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_agent_enrolment_errors_total", Help: "Failed attempts to enrol or unenrol a pod, by step."}, []string{"step"}),
		onboard: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ambient_agent_enrolment_seconds",
			Help:    "Time from the agent seeing that a pod belongs in the mesh (label, new pod) to the pod annotated enabled.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		proxies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambient_agent_ztunnels_connected", Help: "ztunnel instances connected over ZDS."}),
		cniRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_agent_cni_requests_total", Help: "CNI plugin requests, by command and result."}, []string{"command", "result"}),
	}
	m.steps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ambient_agent_setup_step_seconds",
		Help: "Time of each step of setting a pod up: netns (finding and opening it), ztunnel (the ZDS hand-off and its ack), " +
			"enrol (the eBPF maps), attach (loading and attaching the inbound programs), annotate (the API call).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}}, []string{"step"})
	reg.MustRegister(m.enrolled, m.errors, m.onboard, m.proxies, m.cniRequests, m.steps)
	return m
}

// step times one setup step.
func (m *metrics) step(name string) func() {
	start := time.Now()
	return func() { m.steps.WithLabelValues(name).Observe(time.Since(start).Seconds()) }
}
