package proxy

// upmetrics.go: Prometheus series per upstream server. Counters and the
// latency histogram are bound per server once (no label hashing per
// request); state and requests in flight are read from the groups at
// scrape time.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type upMetrics struct {
	requests *prometheus.CounterVec
	failures *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	retries  *prometheus.CounterVec
	refused  *prometheus.CounterVec
	ups      *upstreams // set once the upstreams exist; read at scrape time

	upDesc       *prometheus.Desc
	inflightDesc *prometheus.Desc
}

// peerMetrics are one server's bound series.
type peerMetrics struct {
	requests prometheus.Counter
	failures prometheus.Counter
	latency  prometheus.Observer
}

// Why a failed request was not retried (berth_upstream_retries_refused_total).
const (
	refusedBegun   = "begun"   // the server may have begun it and replay is not allowed
	refusedTimeout = "timeout" // it timed out: never replayed
	refusedTries   = "tries"   // retry.tries or the servers ran out
	refusedBudget  = "budget"  // the retry budget is spent
	refusedTotal   = "total_timeout"
)

func newUpMetrics(reg *prometheus.Registry) *upMetrics {
	m := &upMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_requests_total",
			Help: "Requests sent to each upstream server (a retried request counts on every server it was sent to).",
		}, []string{"upstream", "server"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_failures_total",
			Help: "Tries that failed on each upstream server (connect, send, reset, timeout, bad response): what max_fails counts.",
		}, []string{"upstream", "server"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_upstream_response_seconds",
			Help:    "Time from sending a request to an upstream server to its response head.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"upstream", "server"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_retries_total",
			Help: "Requests sent to another upstream server after a failure: unsent (the server never had the request) or replayed (idempotent, allowed by retry.idempotent).",
		}, []string{"upstream", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_upstream_retries_refused_total",
			Help: "Failed requests answered with an error instead of a retry, by why: begun, timeout, tries, budget, total_timeout.",
		}, []string{"upstream", "why"}),
		upDesc: prometheus.NewDesc("berth_upstream_server_up",
			"1 when the upstream server takes requests, 0 when it is failed (passive health), unhealthy (active check) or down.",
			[]string{"upstream", "server", "state"}, nil),
		inflightDesc: prometheus.NewDesc("berth_upstream_inflight",
			"Requests in flight on each upstream server.", []string{"upstream", "server"}, nil),
	}
	reg.MustRegister(m.requests, m.failures, m.latency, m.retries, m.refused, m)
	return m
}

func (m *upMetrics) peer(group, label string) peerMetrics {
	return peerMetrics{
		requests: m.requests.WithLabelValues(group, label),
		failures: m.failures.WithLabelValues(group, label),
		latency:  m.latency.WithLabelValues(group, label),
	}
}

// forget drops a removed server's series.
func (m *upMetrics) forget(group, label string) {
	m.requests.DeleteLabelValues(group, label)
	m.failures.DeleteLabelValues(group, label)
	m.latency.DeleteLabelValues(group, label)
}

// Describe sends nothing: the per-server gauges come and go with servers
// (an unchecked collector).
func (m *upMetrics) Describe(chan<- *prometheus.Desc) {}

// Collect reads every server's state and in-flight count.
func (m *upMetrics) Collect(ch chan<- prometheus.Metric) {
	u := m.ups
	if u == nil {
		return
	}
	now := time.Now().UnixNano()
	u.mu.Lock()
	defer u.mu.Unlock()
	for name, g := range u.groups {
		g.mu.Lock()
		for _, p := range g.peers {
			state := p.state(now)
			up := 0.0
			if state == "up" || state == "backup" {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(m.upDesc, prometheus.GaugeValue, up, name, p.label, state)
			ch <- prometheus.MustNewConstMetric(m.inflightDesc, prometheus.GaugeValue, float64(p.inflight), name, p.label)
		}
		g.mu.Unlock()
	}
}
