package proxy

// edge.go compiles the edge settings (TLS, compression, static caching,
// the response cache) and holds their metrics. Every feature is off when
// its settings pointer is nil, so the request path pays one nil check.

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/control"
	"github.com/prometheus/client_golang/prometheus"
)

func (st *settings) compileEdge(p control.Proxy) error {
	var err error
	if st.tls, err = compileTLS(p.TLS); err != nil {
		return err
	}
	if p.Compression.Enabled {
		st.comp = compileCompression(p.Compression)
	}
	// Sidecar .br/.gz files are looked for only for compressible types:
	// the compression types, or the defaults when compression is off.
	st.sidecarTypes = st.comp
	if st.sidecarTypes == nil {
		st.sidecarTypes = compileCompression(control.Compression{Types: defaultCompressTypes})
	}
	if st.cache, err = compileCache(p.Cache); err != nil {
		return err
	}
	return nil
}

// defaultCompressTypes mirror config.DefaultCompressionTypes (the proxy
// does not import config).
var defaultCompressTypes = []string{
	"text/*", "application/javascript", "application/json", "application/xml", "application/ld+json",
	"application/manifest+json", "application/rss+xml", "application/atom+xml", "application/wasm",
	"image/svg+xml", "image/x-icon", "image/vnd.microsoft.icon", "font/ttf", "font/otf",
}

// compileStatic builds the mount for one static mapping.
func compileStatic(s control.Static) (*mount, error) {
	if !strings.HasPrefix(s.URL, "/") {
		return nil, fmt.Errorf("proxy config: static url %q: it must start with /", s.URL)
	}
	m := &mount{url: s.URL}
	if secs := int64(time.Duration(s.Cache) / time.Second); secs > 0 {
		m.cacheControl = []string{"public, max-age=" + strconv.FormatInt(secs, 10)}
	}
	if s.File != "" {
		f, err := filepath.Abs(s.File)
		if err != nil {
			return nil, fmt.Errorf("proxy config: static file %q: %w", s.File, err)
		}
		m.file = f
		m.dir = filepath.Dir(f)
		return m, nil
	}
	if s.Dir == "" {
		return nil, fmt.Errorf("proxy config: static url %q: dir is empty", s.URL)
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("proxy config: static dir %q: %w", s.Dir, err)
	}
	m.dir = dir
	return m, nil
}

// edgeMetrics are the edge features' series.
type edgeMetrics struct {
	handshakeErrors prometheus.Counter
	h2Violations    *prometheus.CounterVec
	compressed      *prometheus.CounterVec
	cacheStatus     map[string]prometheus.Counter
	cacheBytes      prometheus.Gauge
	cacheEntries    prometheus.Gauge
	staticZipped    prometheus.Gauge
}

func newEdgeMetrics(reg *prometheus.Registry) *edgeMetrics {
	m := &edgeMetrics{}
	m.handshakeErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "berth_tls_handshake_errors_total",
		Help: "TLS handshakes that failed (no common protocol or cipher, a client that gave up, a timeout).",
	})
	m.h2Violations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_h2_violations_total",
		Help: "HTTP/2 connections ended with GOAWAY for abuse, by reason: flood (frames carrying next to nothing), rapid-reset, header-block-frames, header-block-timeout.",
	}, []string{"reason"})
	m.compressed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_compressed_responses_total",
		Help: "Responses sent compressed, by encoding and source (worker, static sidecar file, static memory cache).",
	}, []string{"encoding", "source"})
	status := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_cache_requests_total",
		Help: "Requests on cached routes, by cache status: HIT, MISS, STALE (served past freshness), BYPASS (not looked up), EXPIRED (refreshed).",
	}, []string{"status"})
	m.cacheStatus = map[string]prometheus.Counter{}
	for _, s := range []string{cacheHit, cacheMiss, cacheStale, cacheBypass, cacheExpired, cacheUpdating} {
		m.cacheStatus[s] = status.WithLabelValues(s)
	}
	m.cacheBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_cache_bytes",
		Help: "Bytes held by the response cache.",
	})
	m.cacheEntries = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_cache_entries",
		Help: "Responses held by the response cache.",
	})
	m.staticZipped = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_static_compressed_cache_bytes",
		Help: "Bytes of static files kept compressed in memory (files without a .br/.gz sidecar).",
	})
	reg.MustRegister(m.handshakeErrors, m.h2Violations, m.compressed, status, m.cacheBytes, m.cacheEntries, m.staticZipped)
	return m
}
