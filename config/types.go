// Package config decodes, validates and defaults berth's YAML configuration.
//
// Decoding is strict: an unknown key, a value of the wrong type, a bad size
// or duration is an error that names the file and line, as `nginx -t` does.
// A Config returned without error is complete: every default is filled in, so
// the rest of berth never interprets a zero value.
package config

import (
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultPath is where `berth run` looks when neither --config nor
// $BERTH_CONFIG names a file.
const DefaultPath = "/etc/berth/berth.yaml"

// Config is the whole configuration. Field comments give the YAML key.
type Config struct {
	Listen    []string  `yaml:"listen" json:"listen"`
	TLS       TLS       `yaml:"tls" json:"tls"`
	Admin     Admin     `yaml:"admin" json:"admin"`
	App       App       `yaml:"app" json:"app"`
	Workers   Workers   `yaml:"workers" json:"workers"`
	Static    []Static  `yaml:"static" json:"static"`
	Mounts    []Mount   `yaml:"mounts" json:"mounts"`
	Proxy     Proxy     `yaml:"proxy" json:"proxy"`
	Cache     Cache     `yaml:"cache" json:"cache"`
	Shutdown  Shutdown  `yaml:"shutdown" json:"shutdown"`
	Resources Resources `yaml:"resources" json:"resources"`
	Tasks     Tasks     `yaml:"tasks" json:"tasks"`
	Programs  []Program `yaml:"programs" json:"programs"`
	Cron      []Job     `yaml:"cron" json:"cron"`
	// Upstreams are named groups of remote servers; Routes send URL
	// prefixes to them (upstreams.go).
	Upstreams map[string]Upstream `yaml:"upstreams" json:"upstreams"`
	Routes    []Route             `yaml:"routes" json:"routes"`
	// Hosts redirect by Host header; Locations hold the rules per path:
	// access, rate limits, basic auth, redirects, headers (locations.go).
	Hosts     []Host     `yaml:"hosts" json:"hosts"`
	Locations []Location `yaml:"locations" json:"locations"`

	// Source is the file the config came from; "" for the built-in defaults.
	Source string `yaml:"-" json:"-"`
}

// Admin is the admin endpoint: /livez /readyz /metrics /status.
type Admin struct {
	// Listen is a TCP address or "unix:PATH"; "off" disables the endpoint.
	Listen string `yaml:"listen" json:"listen"`
}

// App says which WSGI callable to serve and how to start Python.
type App struct {
	// Module is "pkg.module:callable"; "" means discover it in Chdir (and
	// serve the built-in demo app when Chdir holds no app).
	Module     string            `yaml:"module" json:"module"`
	Chdir      string            `yaml:"chdir" json:"chdir"`
	Python     string            `yaml:"python" json:"python"`
	PythonPath []string          `yaml:"pythonpath" json:"pythonpath"`
	Env        map[string]string `yaml:"env" json:"env"`
	User       string            `yaml:"user" json:"user"`
	ReloadOn   []string          `yaml:"reload_on" json:"reload_on"`
	// Interface is "auto", "wsgi" or "asgi". auto: ASGI when the callable
	// is a coroutine function or takes (scope, receive, send), or its
	// module is named asgi; WSGI otherwise. The worker decides, after the
	// import, and tells the supervisor in its READY message.
	Interface string `yaml:"interface" json:"interface"`
}

// Workers sizes and recycles the Python worker processes.
type Workers struct {
	// Count is the number of workers; 0 means "auto" (sized from the cgroup
	// CPU quota, else the usable CPUs). The YAML value is a number or "auto".
	Count             int      `yaml:"count" json:"count"`
	Threads           int      `yaml:"threads" json:"threads"`
	Preload           bool     `yaml:"preload" json:"preload"`
	MaxRequests       int64    `yaml:"max_requests" json:"max_requests"`
	MaxRequestsJitter int64    `yaml:"max_requests_jitter" json:"max_requests_jitter"`
	MaxRSS            Size     `yaml:"max_rss" json:"max_rss"`
	Timeout           Duration `yaml:"timeout" json:"timeout"`
	GracefulTimeout   Duration `yaml:"graceful_timeout" json:"graceful_timeout"`
	// Concurrency is what one ASGI worker takes at once: HTTP requests
	// plus open websockets; beyond it requests wait in the proxy's queue.
	// WSGI workers take workers.threads.
	Concurrency int `yaml:"concurrency" json:"concurrency"`
	// DrainTimeout is how long an ASGI worker being replaced (or a
	// stopping berth) keeps its open websockets and streamed responses
	// before they are closed with 1012 (1001 at a stop). It is at most
	// GracefulTimeout; not written in a file, it is GracefulTimeout.
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout"`
}

// Static maps a URL prefix onto a directory (nginx alias semantics), or
// one URL onto one file.
type Static struct {
	URL string `yaml:"url" json:"url"`
	// Dir is the directory served below URL; "" when File is set.
	Dir string `yaml:"dir" json:"dir"`
	// File is the one file served at URL (/favicon.ico); "" when Dir is set.
	File string `yaml:"file" json:"file"`
	// Cache is the Cache-Control max-age of its files; 0 = no header.
	// Names with a content hash get a year and immutable whatever it says.
	Cache Duration `yaml:"cache" json:"cache"`
}

// Proxy holds the HTTP front's settings.
type Proxy struct {
	MaxBodySize Size `yaml:"max_body_size" json:"max_body_size"`
	// BodyBufferSize is how much of a request body the proxy keeps in
	// memory; a longer one goes to an unlinked temp file (nginx's
	// client_body_buffer_size).
	BodyBufferSize Size     `yaml:"body_buffer_size" json:"body_buffer_size"`
	TrustedProxies []string `yaml:"trusted_proxies" json:"trusted_proxies"`
	// AccessLog is "combined", "json", "off" or a format with nginx-style
	// $variables (proxy/logformat), checked when the file is read.
	AccessLog string `yaml:"access_log" json:"access_log"`
	// RequestID gives every request an ID: X-Request-ID kept from trusted
	// proxies, else generated. false passes X-Request-ID on untouched.
	RequestID   bool        `yaml:"request_id" json:"request_id"`
	Queue       Queue       `yaml:"queue" json:"queue"`
	Compression Compression `yaml:"compression" json:"compression"`
	// Headers are set on every response, berth's own errors too (nginx
	// add_header … always), replacing a field of the same name; "" removes
	// the field. A location's headers are set after these.
	Headers map[string]string `yaml:"headers" json:"headers"`
	Limits  ProxyLimits       `yaml:"limits" json:"limits"`
	// ErrorPages are HTML files sent, to clients that accept text/html,
	// instead of the plain-text body of the errors berth makes itself
	// (ErrorPageStatuses), by status.
	ErrorPages map[int]string `yaml:"error_pages" json:"error_pages"`
}

// Queue bounds the requests waiting for a free worker.
type Queue struct {
	Size    int      `yaml:"size" json:"size"`
	Timeout Duration `yaml:"timeout" json:"timeout"`
}

// Shutdown tunes the SIGTERM sequence.
type Shutdown struct {
	// Delay keeps accepting connections this long after SIGTERM while
	// /readyz already fails, so load balancers stop sending first.
	Delay Duration `yaml:"delay" json:"delay"`
}

// Resources are OCI runtime-spec LinuxResources per cgroup; nil means no
// limit is set for that group.
type Resources struct {
	Workers *specs.LinuxResources `yaml:"workers" json:"workers,omitempty"`
	Worker  *specs.LinuxResources `yaml:"worker" json:"worker,omitempty"`
	Proxy   *specs.LinuxResources `yaml:"proxy" json:"proxy,omitempty"`
}

// Size is a byte count. YAML accepts a plain integer or an integer with a
// unit, with Kubernetes' meaning: K, M, G, T are powers of 1000 and Ki, Mi,
// Gi, Ti powers of 1024 ("75M" = 75,000,000; "512Mi" = 536,870,912).
type Size int64

// Duration is a time.Duration written as Go durations ("30s", "1m30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
