package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// edge.go: what nginx did at the edge besides proxying: TLS (with SNI and
// HTTP/2), compression of worker responses, and the response cache. Their
// keys are decoded, validated and rendered here; static's cache and file
// keys live with the rest of static in parse.go.

// TLSScheme marks a TLS listener in `listen`: "https://:8443".
const TLSScheme = "https://"

// TLS holds the certificates of the https:// listeners.
type TLS struct {
	// Certificates are chosen by SNI; the first is the default (for a
	// client that sends no server name, or one no certificate names).
	// Empty: no TLS (and then no listen entry may be https://).
	Certificates []Certificate `yaml:"certificates" json:"certificates"`
	// RedirectHTTP makes plain listeners answer 308 to the https:// URL.
	RedirectHTTP bool `yaml:"redirect_http" json:"redirect_http"`
	// HSTS is the Strict-Transport-Security max-age sent on https
	// responses; 0 = no header.
	HSTS Duration `yaml:"hsts" json:"hsts"`
	// ACME gets certificates for its domains from an ACME CA (acme.go).
	ACME ACME `yaml:"acme" json:"acme"`
	// HTTP3 serves HTTP/3 on the UDP port of each https:// listener,
	// announced by Alt-Svc on the TLS responses.
	HTTP3 bool `yaml:"http3" json:"http3"`
}

// Certificate is one PEM certificate chain and its private key.
type Certificate struct {
	Cert string `yaml:"cert" json:"cert"`
	Key  string `yaml:"key" json:"key"`
}

// Compression is gzip/brotli compression of worker responses.
type Compression struct {
	// Enabled false: worker responses are relayed as they are.
	Enabled bool `yaml:"enabled" json:"enabled"`
	// MinLength: responses with a shorter Content-Length are not
	// compressed (a streamed one, without a length, always is).
	MinLength Size `yaml:"min_length" json:"min_length"`
	// Types are the media types compressed ("text/html", or "text/*").
	Types []string `yaml:"types" json:"types"`
}

// DefaultCompressionTypes are compressed when proxy.compression.types is
// not set: text formats, and what nginx users add to gzip_types.
var DefaultCompressionTypes = []string{
	"text/html", "text/css", "text/plain", "text/xml", "text/javascript", "text/csv", "text/markdown",
	"application/javascript", "application/json", "application/xml", "application/ld+json",
	"application/manifest+json", "application/rss+xml", "application/atom+xml", "application/wasm",
	"image/svg+xml", "image/x-icon", "image/vnd.microsoft.icon", "font/ttf", "font/otf",
}

// Cache is the response cache for worker responses (nginx uwsgi_cache).
type Cache struct {
	// Size bounds the memory the cached responses take (LRU by bytes).
	Size Size `yaml:"size" json:"size"`
	// Routes opt URL prefixes in; empty: no cache.
	Routes []CacheRoute `yaml:"routes" json:"routes"`
}

// CacheRoute is one URL prefix whose cacheable responses are kept.
type CacheRoute struct {
	URL string `yaml:"url" json:"url"`
	// MaxTTL caps the freshness the app gives a response.
	MaxTTL Duration `yaml:"max_ttl" json:"max_ttl"`
	// Stale: how long past its freshness an entry may still be served,
	// while one request refreshes it and while the workers fail; 0 = never.
	Stale Duration `yaml:"stale" json:"stale"`
	// SessionCookies: a request carrying one of these cookies bypasses the
	// cache (it may see a page made for its session).
	SessionCookies []string `yaml:"session_cookies" json:"session_cookies"`
}

// Defaults of the edge keys.
const (
	DefaultCompressionMinLength = Size(1024)
	DefaultCacheSize            = Size(256 << 20)
	DefaultCacheMaxTTL          = Duration(10 * time.Minute)
)

// defaultSessionCookies: Django's session cookie.
var defaultSessionCookies = []string{"sessionid"}

func defaultEdge(c *Config) {
	c.TLS = TLS{Certificates: []Certificate{}, ACME: defaultACME()}
	c.Proxy.Compression = Compression{Enabled: true, MinLength: DefaultCompressionMinLength, Types: append([]string{}, DefaultCompressionTypes...)}
	c.Cache = Cache{Size: DefaultCacheSize, Routes: []CacheRoute{}}
}

// HasTLSListener says whether a listen entry is https://.
func (c *Config) HasTLSListener() bool {
	for _, l := range c.Listen {
		if strings.HasPrefix(l, TLSScheme) {
			return true
		}
	}
	return false
}

func (d *decoder) tls(dst *TLS) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		d.section(path, n, []field{
			{"certificates", d.certificates(&dst.Certificates)},
			{"redirect_http", d.boolean(&dst.RedirectHTTP)},
			{"hsts", d.duration(&dst.HSTS)},
			{"acme", d.acme(&dst.ACME)},
			{"http3", d.boolean(&dst.HTTP3)},
		})
	}
}

func (d *decoder) certificates(dst *[]Certificate) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Certificate{}
		ok := d.listOf(path, n, "a list of {cert: /etc/berth/tls/tls.crt, key: /etc/berth/tls/tls.key} entries", func(i int, p string, item *yaml.Node) {
			var c Certificate
			d.complete(p, item, []field{{"cert", d.str(&c.Cert)}, {"key", d.str(&c.Key)}},
				"each entry needs cert and key, e.g. {cert: /etc/berth/tls/tls.crt, key: /etc/berth/tls/tls.key}", "cert", "key")
			out = append(out, c)
		})
		if ok {
			*dst = out
		}
	}
}

// complete decodes the mapping n at path with fields, then checks that the
// keys of required were written; a missing one is reported as "missing
// KEY; " + hint. It reports whether n decoded whole and complete.
func (d *decoder) complete(path string, n *yaml.Node, fields []field, hint string, required ...string) bool {
	before := len(d.errs)
	d.section(path, n, fields)
	if len(d.errs) > before {
		return false
	}
	if missing := d.missing(path, required...); missing != "" {
		d.errorf(n.Line, path, "missing %s; %s", missing, hint)
		return false
	}
	return true
}

// missing names the keys of the mapping at p that were not written, or
// written with no value.
func (d *decoder) missing(p string, keys ...string) string {
	var out []string
	for _, k := range keys {
		if _, ok := d.lines[join(p, k)]; !ok || d.nulls[join(p, k)] {
			out = append(out, k)
		}
	}
	return strings.Join(out, " and ")
}

func (d *decoder) compression(dst *Compression) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		d.section(path, n, []field{
			{"enabled", d.boolean(&dst.Enabled)},
			{"min_length", d.size(&dst.MinLength)},
			{"types", d.strs(&dst.Types)},
		})
	}
}

func (d *decoder) cache(dst *Cache) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		d.section(path, n, []field{
			{"size", d.size(&dst.Size)},
			{"routes", d.cacheRoutes(&dst.Routes)},
		})
	}
}

func (d *decoder) cacheRoutes(dst *[]CacheRoute) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []CacheRoute{}
		ok := d.listOf(path, n, "a list of {url: /, max_ttl: 10m} entries", func(i int, p string, item *yaml.Node) {
			r := CacheRoute{MaxTTL: DefaultCacheMaxTTL, SessionCookies: append([]string{}, defaultSessionCookies...)}
			d.complete(p, item, []field{
				{"url", d.str(&r.URL)},
				{"max_ttl", d.duration(&r.MaxTTL)},
				{"stale", d.duration(&r.Stale)},
				{"session_cookies", d.strs(&r.SessionCookies)},
			}, "each entry needs one, e.g. {url: /, max_ttl: 10m}", "url")
			out = append(out, r)
		})
		if ok {
			*dst = out
		}
	}
}

// validateEdge checks the TLS, compression and cache keys.
func (c *Config) validateEdge(bad func(path, format string, args ...any)) {
	t := &c.TLS
	c.validateACME(bad)
	for i, cert := range t.Certificates {
		p := index("tls.certificates", i)
		if !filepath.IsAbs(cert.Cert) {
			bad(join(p, "cert"), "%s must be an absolute path to a PEM certificate (chain), e.g. /etc/berth/tls/tls.crt", quoteShort(cert.Cert))
		}
		if !filepath.IsAbs(cert.Key) {
			bad(join(p, "key"), "%s must be an absolute path to a PEM private key, e.g. /etc/berth/tls/tls.key", quoteShort(cert.Key))
		}
	}
	if c.HasTLSListener() && len(t.Certificates) == 0 && !t.ACME.Enabled() {
		for i, l := range c.Listen {
			if strings.HasPrefix(l, TLSScheme) {
				bad(index("listen", i), "%q is a TLS listener but there is no certificate: add {cert: …, key: …} under tls.certificates, or names under tls.acme.domains for certificates from an ACME CA, or drop https://", l)
				break
			}
		}
	}
	if t.RedirectHTTP && !c.HasTLSListener() {
		bad("tls.redirect_http", "redirects plain HTTP to https://, but no listen entry is https://; add one, e.g. listen: [\":8080\", \"https://:8443\"]")
	}
	if t.HSTS < 0 {
		bad("tls.hsts", "must not be negative (0s = no Strict-Transport-Security header), got %s", t.HSTS)
	} else if t.HSTS > 0 && t.HSTS.D() < time.Second {
		bad("tls.hsts", "%s is below one second; Strict-Transport-Security max-age counts whole seconds (e.g. 8760h for a year)", t.HSTS)
	}

	cp := &c.Proxy.Compression
	if cp.MinLength < 0 {
		bad("proxy.compression.min_length", "must not be negative, got %d", cp.MinLength)
	}
	for i, ty := range cp.Types {
		if !validMediaRange(ty) {
			bad(index("proxy.compression.types", i), "%s is not a media type; use type/subtype such as text/html, or type/* such as text/*", quoteShort(ty))
		}
	}

	ca := &c.Cache
	if ca.Size <= 0 && len(ca.Routes) > 0 {
		bad("cache.size", "must be more than 0 when cache.routes are set, e.g. 256Mi")
	}
	seen := map[string]int{}
	for i, r := range ca.Routes {
		p := index("cache.routes", i)
		if !strings.HasPrefix(r.URL, "/") {
			bad(join(p, "url"), "%s must start with \"/\", e.g. / or /blog/", quoteShort(r.URL))
		} else if first, dup := seen[r.URL]; dup {
			bad(join(p, "url"), "%q is already cached by cache.routes[%d]; remove one of the entries", r.URL, first)
		} else {
			seen[r.URL] = i
		}
		if r.MaxTTL <= 0 {
			bad(join(p, "max_ttl"), "must be longer than 0s, e.g. 10m; got %s", r.MaxTTL)
		}
		if r.Stale < 0 {
			bad(join(p, "stale"), "must not be negative (0s = never serve stale), got %s", r.Stale)
		}
		for j, name := range r.SessionCookies {
			if name == "" || strings.ContainsAny(name, " \t;,=\"") {
				bad(index(join(p, "session_cookies"), j), "%s is not a cookie name", quoteShort(name))
			}
		}
	}
}

// validMediaRange accepts type/subtype and type/*, tokens both.
func validMediaRange(s string) bool {
	t, sub, ok := strings.Cut(s, "/")
	if !ok || t == "" || sub == "" || t == "*" {
		return false
	}
	if sub == "*" {
		return isToken(t)
	}
	return isToken(t) && isToken(sub)
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return s != ""
}

// ListenAddress strips the https:// scheme from a listen entry: the
// socket is the same, TLS is how the proxy speaks on it.
func ListenAddress(l string) string { return strings.TrimPrefix(l, TLSScheme) }

// edgeNodes renders tls and cache for Effective, and the compression node
// that goes under proxy.
func (c *Config) edgeNodes() (tlsNode, compression, cache *yaml.Node) {
	certs := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, ce := range c.TLS.Certificates {
		m := mapNode("cert", strNode(ce.Cert), "key", strNode(ce.Key))
		m.Style = yaml.FlowStyle
		certs.Content = append(certs.Content, m)
	}
	emptyFlow(certs)
	tlsNode = mapNode(
		"certificates", certs,
		"redirect_http", boolNode(c.TLS.RedirectHTTP),
		"hsts", strNode(c.TLS.HSTS.String()),
		"acme", c.TLS.ACME.node(),
		"http3", boolNode(c.TLS.HTTP3),
	)
	cp := c.Proxy.Compression
	compression = mapNode(
		"enabled", boolNode(cp.Enabled),
		"min_length", intNode(int64(cp.MinLength)),
		"types", strList(cp.Types),
	)
	routes := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, r := range c.Cache.Routes {
		m := mapNode("url", strNode(r.URL), "max_ttl", strNode(r.MaxTTL.String()), "stale", strNode(r.Stale.String()),
			"session_cookies", strList(r.SessionCookies))
		m.Style = yaml.FlowStyle
		routes.Content = append(routes.Content, m)
	}
	emptyFlow(routes)
	cache = mapNode("size", intNode(int64(c.Cache.Size)), "routes", routes)
	return tlsNode, compression, cache
}

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(b)}
}

// sameEdge compares the edge keys, nil lists equal to empty ones.
func sameEdge(a, b *Config) bool {
	return sameList(a.TLS.Certificates, b.TLS.Certificates) &&
		a.TLS.RedirectHTTP == b.TLS.RedirectHTTP && a.TLS.HSTS == b.TLS.HSTS &&
		sameACME(&a.TLS.ACME, &b.TLS.ACME) && a.TLS.HTTP3 == b.TLS.HTTP3 &&
		a.Proxy.Compression.Enabled == b.Proxy.Compression.Enabled &&
		a.Proxy.Compression.MinLength == b.Proxy.Compression.MinLength &&
		sameList(a.Proxy.Compression.Types, b.Proxy.Compression.Types) &&
		a.Cache.Size == b.Cache.Size && sameList(a.Cache.Routes, b.Cache.Routes)
}
