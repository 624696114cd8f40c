package acme

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is the Prometheus collector for ACME certificates. Make one per
// registry, register it once, and give it to every Manager in turn
// (Options.Metrics): a reload replaces the Manager, not the series, and the
// series follow the newest Manager. The gauges are read from Status at
// scrape time, so they never go stale.
//
//	berth_acme_certificate_not_after_seconds{domain}   expiry (unix time; 0: no certificate yet)
//	berth_acme_certificate_next_renewal_seconds{domain} about when renewal is attempted (0: none)
//	berth_acme_last_error_seconds{domain}             when the last order failed (0: the last one succeeded)
//	berth_acme_orders_total{domain,kind,result}       orders by kind (obtain, renew) and result (ok, error)
//
// An alert on `berth_acme_certificate_not_after_seconds - time() < 7*86400`
// catches every way renewal can fail, a missing certificate included.
type Metrics struct {
	notAfter    *prometheus.Desc
	nextRenewal *prometheus.Desc
	lastError   *prometheus.Desc
	orders      *prometheus.CounterVec

	mu      sync.Mutex
	current *Manager
}

// NewMetrics makes the collector; register it with reg.MustRegister.
func NewMetrics() *Metrics {
	return &Metrics{
		notAfter: prometheus.NewDesc("berth_acme_certificate_not_after_seconds",
			"When the ACME certificate in force for the domain expires (unix time); 0 while it has none.",
			[]string{"domain"}, nil),
		nextRenewal: prometheus.NewDesc("berth_acme_certificate_next_renewal_seconds",
			"About when the domain's certificate renewal will be attempted (unix time; the CA's renewal info or the renewal window); 0 without a certificate.",
			[]string{"domain"}, nil),
		lastError: prometheus.NewDesc("berth_acme_last_error_seconds",
			"When the domain's last ACME order failed (unix time); 0 when the last one succeeded. The certificate in force keeps serving meanwhile.",
			[]string{"domain"}, nil),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_acme_orders_total",
			Help: "ACME orders (certificates obtained or renewed) by domain, kind (obtain, renew) and result (ok, error); a failure is retried with backoff.",
		}, []string{"domain", "kind", "result"}),
	}
}

// Describe implements prometheus.Collector.
func (x *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- x.notAfter
	ch <- x.nextRenewal
	ch <- x.lastError
	x.orders.Describe(ch)
}

// Collect implements prometheus.Collector.
func (x *Metrics) Collect(ch chan<- prometheus.Metric) {
	x.mu.Lock()
	m := x.current
	x.mu.Unlock()
	if m != nil {
		for _, st := range m.Status() {
			ch <- prometheus.MustNewConstMetric(x.notAfter, prometheus.GaugeValue, unix(st.NotAfter), st.Domain)
			ch <- prometheus.MustNewConstMetric(x.nextRenewal, prometheus.GaugeValue, unix(st.NextRenewal), st.Domain)
			ch <- prometheus.MustNewConstMetric(x.lastError, prometheus.GaugeValue, unix(st.LastErrorAt), st.Domain)
		}
	}
	x.orders.Collect(ch)
}

func (x *Metrics) attach(m *Manager) {
	x.mu.Lock()
	x.current = m
	x.mu.Unlock()
}

// detach forgets m unless a newer Manager took its place already.
func (x *Metrics) detach(m *Manager) {
	x.mu.Lock()
	if x.current == m {
		x.current = nil
	}
	x.mu.Unlock()
}

func (x *Metrics) order(domain, kind, result string) {
	x.orders.WithLabelValues(domain, kind, result).Inc()
}
