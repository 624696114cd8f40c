package proxy

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Upstream error kinds (label "kind" of berth_upstream_errors_total).
const (
	kindDial         = "dial"          // the worker's socket refused the connection
	kindWrite        = "write"         // sending the request failed
	kindReset        = "reset"         // the worker closed or reset before any response byte
	kindTimeout      = "timeout"       // no answer within timeout: 504
	kindBadResponse  = "bad_response"  // malformed or truncated response: 502
	kindStale        = "stale"         // a pooled connection was found closed; redialled, not user-visible
	kindNoWorker     = "no_worker"     // 503: no worker is ready
	kindQueueFull    = "queue_full"    // 503: every worker busy and the queue full
	kindQueueTimeout = "queue_timeout" // 503: waited queue_timeout for a worker
	kindNoFiles      = "no_files"      // 503: the proxy hit its file descriptor limit
)

var errorKinds = []string{kindDial, kindWrite, kindReset, kindTimeout, kindBadResponse, kindStale, kindNoWorker, kindQueueFull, kindQueueTimeout, kindNoFiles}

// metrics are the proxy's Prometheus series, on a registry of their own.
type metrics struct {
	reg            *prometheus.Registry
	requests       *prometheus.CounterVec
	codes          [600]atomic.Pointer[prometheus.Counter] // cache: WithLabelValues hashes
	duration       prometheus.Histogram
	queueDepth     prometheus.Gauge
	queueWait      prometheus.Histogram
	workerRequests *prometheus.CounterVec
	upstreamErrors map[string]prometheus.Counter
	refused        *prometheus.CounterVec
	retries        *prometheus.CounterVec
	notRetried     prometheus.Counter
	wsOpen         prometheus.Gauge   // websockets open on ASGI workers
	wsIn, wsOut    prometheus.Counter // websocket messages from clients / from apps
	drained        *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{reg: reg}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_http_requests_total",
		Help: "HTTP requests answered by the proxy, by status code.",
	}, []string{"code"})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "berth_http_request_duration_seconds",
		Help:    "Time from the request's headers to the end of its response.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	})
	m.queueDepth = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_queue_depth",
		Help: "Requests waiting for a free worker now.",
	})
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "berth_queue_wait_seconds",
		Help:    "Time queued requests waited for a worker (requests served at once are not observed).",
		Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
	})
	m.workerRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_worker_requests_total",
		Help: "Requests sent to each worker (a retried request counts on both workers).",
	}, []string{"worker"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_upstream_errors_total",
		Help: "Failures talking to workers or finding one, by kind.",
	}, []string{"kind"})
	m.upstreamErrors = make(map[string]prometheus.Counter, len(errorKinds))
	for _, k := range errorKinds {
		m.upstreamErrors[k] = errs.WithLabelValues(k)
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_refused_requests_total",
		Help: "Requests refused for their framing or request target before reaching a worker, by status.",
	}, []string{"status"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_retries_total",
		Help: "Requests sent to a second worker because the first never had them: dial (socket refused), write (the packet did not go out), unread (the worker closed with the request unread).",
	}, []string{"reason"})
	for _, r := range []string{"dial", "write", "unread"} {
		m.retries.WithLabelValues(r)
	}
	m.notRetried = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "berth_retries_refused_total",
		Help: "Requests answered 502 rather than replayed because the worker that died had read them (it may be what killed it).",
	})
	m.wsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_websockets_open",
		Help: "Websockets open between clients and ASGI workers now.",
	})
	msgs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_websocket_messages_total",
		Help: "Websocket messages relayed: in = client to app, out = app to client.",
	}, []string{"direction"})
	m.wsIn, m.wsOut = msgs.WithLabelValues("in"), msgs.WithLabelValues("out")
	m.drained = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_streams_drained_total",
		Help: "Websockets and streamed responses ended by a drain: reason roll (close code 1012) or shutdown (1001).",
	}, []string{"reason"})
	reg.MustRegister(m.requests, m.duration, m.queueDepth, m.queueWait, m.workerRequests, errs, m.refused, m.retries, m.notRetried,
		m.wsOpen, msgs, m.drained)
	return m
}

func (m *metrics) countCode(code int) {
	if code < 100 || code >= len(m.codes) {
		m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		return
	}
	p := m.codes[code].Load()
	if p == nil {
		c := m.requests.WithLabelValues(strconv.Itoa(code))
		p = &c
		m.codes[code].Store(p)
	}
	(*p).Inc()
}

func (m *metrics) upstreamError(kind string) { m.upstreamErrors[kind].Inc() }
