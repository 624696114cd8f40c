package proxy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/proxy/logformat"
)

// logMode is the access log format.
type logMode uint8

const (
	logOff logMode = iota
	logCombined
	logJSON
	logCustom // format, a user's nginx-style $variables
)

// settings is a control.Proxy compiled for the hot path. It is immutable
// once built; SetConfig swaps the pointer so a request sees one whole
// version.
type settings struct {
	raw          control.Proxy
	mounts       []*mount // longest URL first, so /static/img/ wins over /static/
	trusted      []netip.Prefix
	log          logMode
	format       *logformat.Format // for logCustom
	logUp        bool              // the log shows upstream times: measure them
	requestID    bool              // proxy.request_id
	maxBody      int64             // 0: no limit
	bodyBuffer   int               // bytes of a request body kept in memory; more spills to a temp file
	queueSize    int               // 0: no queue, 503 at once when every worker is busy
	queueTimeout time.Duration
	timeout      time.Duration // 0: wait for workers without limit
	graceful     time.Duration
	routes       []route           // to upstream groups, first match wins; nil = all to the workers
	tls          *tlsSettings      // nil: no TLS settings (no redirect, no HSTS)
	comp         *compressSettings // nil: worker responses are not compressed
	sidecarTypes *compressSettings // types whose static files may have .br/.gz sidecars
	cache        *responseCache    // nil: no response cache
	drain        time.Duration     // ASGI websockets and streams on a draining worker; then closed
	pools        []mountRoute      // mounted pools, longest URL first (pools.go)
	access       *accessRules      // hosts, locations, fields, pages, connection cap (access.go)
}

// mount is one static mapping: a URL prefix served from dir (nginx alias).
type mount struct {
	url string // starts with "/"
	dir string // absolute, cleaned
	h   atomic.Pointer[dirHandle]
	// file: a single-file mapping (/favicon.ico); dir is then its directory.
	file string
	// cacheControl is the Cache-Control of its (unhashed) files; nil: none.
	cacheControl []string
}

// compile validates p and builds its settings. The supervisor validates the
// config before sending it, so an error here means the two disagree.
func compile(p control.Proxy) (*settings, error) {
	st := &settings{
		raw:          p,
		maxBody:      p.MaxBodySize,
		bodyBuffer:   int(p.BodyBufferSize),
		queueSize:    p.QueueSize,
		queueTimeout: time.Duration(p.QueueTimeout),
		timeout:      time.Duration(p.Timeout),
		graceful:     time.Duration(p.GracefulTimeout),
		requestID:    p.RequestID,
		drain:        time.Duration(p.DrainTimeout),
		access:       &accessRules{},
	}
	switch p.AccessLog {
	case "", "off":
		st.log = logOff
	case "combined":
		st.log = logCombined
	case "json":
		st.log = logJSON
		st.logUp = true
	default:
		if !strings.Contains(p.AccessLog, "$") {
			return nil, fmt.Errorf("proxy config: access_log %q: use combined, json, off or a format with $variables", p.AccessLog)
		}
		f, err := logformat.Parse(p.AccessLog)
		if err != nil {
			return nil, fmt.Errorf("proxy config: access_log: %w", err)
		}
		st.log, st.format = logCustom, f
		st.logUp = f.Uses(logformat.UpstreamResponseTime)
	}
	if p.MaxBodySize < 0 || p.QueueSize < 0 || p.QueueTimeout < 0 || p.Timeout < 0 || p.GracefulTimeout < 0 || p.DrainTimeout < 0 {
		return nil, fmt.Errorf("proxy config: max_body_size, queue size and timeouts must not be negative")
	}
	switch {
	case p.BodyBufferSize < 0 || p.BodyBufferSize > maxBodyBuffer:
		return nil, fmt.Errorf("proxy config: body_buffer_size %d: it must be from 1 to %d bytes", p.BodyBufferSize, maxBodyBuffer)
	case p.BodyBufferSize == 0:
		st.bodyBuffer = reqMemLimit
	}
	for _, s := range p.Static {
		m, err := compileStatic(s)
		if err != nil {
			return nil, err
		}
		st.mounts = append(st.mounts, m)
	}
	if err := st.compileEdge(p); err != nil {
		return nil, err
	}
	sort.SliceStable(st.mounts, func(i, j int) bool { return len(st.mounts[i].url) > len(st.mounts[j].url) })
	for _, m := range p.Mounts {
		if m.Pool == "" {
			return nil, fmt.Errorf("proxy config: a mount without a pool name")
		}
		for _, u := range m.URLs {
			if !strings.HasPrefix(u, "/") {
				return nil, fmt.Errorf("proxy config: mount url %q: it must start with /", u)
			}
			st.pools = append(st.pools, mountRoute{url: u, pool: m.Pool})
		}
	}
	sort.SliceStable(st.pools, func(i, j int) bool { return len(st.pools[i].url) > len(st.pools[j].url) })
	for _, c := range p.TrustedProxies {
		pfx, err := parsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("proxy config: trusted_proxies %q: %w", c, err)
		}
		st.trusted = append(st.trusted, pfx)
	}
	return st, nil
}

// parsePrefix accepts a CIDR or a bare address (meaning that one host).
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// isTrusted says whether a is one of the trusted proxies.
func (st *settings) isTrusted(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range st.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// match returns the mount serving the normalized path p and the path
// relative to its directory, or nil. A mount whose URL lacks the trailing
// slash matches only at a segment boundary (/static matches /static/x, not
// /staticx), which is stricter than nginx on purpose.
func (st *settings) match(p string) (*mount, string) {
	for _, m := range st.mounts {
		if !strings.HasPrefix(p, m.url) {
			continue
		}
		rest := p[len(m.url):]
		if m.file != "" && rest != "" {
			continue
		}
		if !strings.HasSuffix(m.url, "/") {
			if rest != "" && rest[0] != '/' {
				continue
			}
		}
		return m, rest
	}
	return nil, ""
}
