// Package control defines the messages the supervisor and the proxy exchange
// over the control socket: one unix stream socketpair per proxy process,
// inherited by the proxy as fd 3 (BERTH_CONTROL_FD). Each message is one JSON
// object on one line. The protocol is declarative where it can be: the
// supervisor always sends the whole worker set, never a delta, so a message
// lost to a proxy restart is repaired by the next one.
package control

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/config"
)

// Message types. Supervisor → proxy: TypeConfig, TypeWorkers.
// Proxy → supervisor: TypeReady, TypeDue, TypeTimeout, TypeDrained, TypeStats.
const (
	TypeConfig  = "config"
	TypeWorkers = "workers"

	TypeReady   = "ready"   // the proxy serves on all its listeners
	TypeDue     = "due"     // a worker reached its request budget (max_requests)
	TypeTimeout = "timeout" // a request on Worker ran past the timeout; the proxy answered 504 and stopped routing to it
	TypeDrained = "drained" // a draining worker has no request in flight any more
	TypeStats   = "stats"   // periodic counters, at most once a second and only when they changed
)

// Message is the envelope of every line on the control socket. Only the
// fields of its Type are set.
type Message struct {
	Type    string   `json:"type"`
	Config  *Proxy   `json:"config,omitempty"`
	Workers []Worker `json:"workers,omitempty"`
	Worker  string   `json:"worker,omitempty"` // due, timeout, drained
	Stats   *Stats   `json:"stats,omitempty"`
}

// Proxy is the part of the configuration the proxy applies. It is swapped
// atomically: a request sees either the old or the new settings, never a mix.
type Proxy struct {
	Static      []Static `json:"static"`
	MaxBodySize int64    `json:"max_body_size"` // bytes; 0 means no limit
	// BodyBufferSize is how much of a request body is kept in memory
	// before it goes to a temp file, in bytes; 0 means the proxy's
	// default (64 KiB), so a Proxy built without it behaves as before.
	BodyBufferSize int64    `json:"body_buffer_size,omitempty"`
	TrustedProxies []string `json:"trusted_proxies"` // CIDRs, already validated
	AccessLog      string   `json:"access_log"`      // "combined", "json", "off" or a format with nginx-style $variables
	// RequestID gives every request an ID (X-Request-ID from a trusted
	// proxy, else a new one); false passes X-Request-ID on untouched.
	RequestID    bool     `json:"request_id"`
	QueueSize    int      `json:"queue_size"`    // requests waiting for a worker; beyond it 503
	QueueTimeout Duration `json:"queue_timeout"` // longest wait for a worker, then 503
	Timeout      Duration `json:"timeout"`       // a worker's answer takes longer: 504, worker reported
	// GracefulTimeout bounds how long a stopping proxy waits for in-flight
	// requests after SIGTERM before it closes what is left.
	GracefulTimeout Duration `json:"graceful_timeout"`
	// Upstreams are the groups of remote servers routes may name; Routes
	// send URL prefixes to them (first match wins, after static files);
	// nil = everything goes to the workers.
	Upstreams map[string]Upstream `json:"upstreams,omitempty"`
	Routes    []Route             `json:"routes,omitempty"`
	// TLS is nil when no listener speaks TLS and nothing redirects to one.
	TLS *TLS `json:"tls,omitempty"`
	// Compression of worker responses; the zero value compresses nothing.
	Compression Compression `json:"compression"`
	// Cache is the response cache; nil or no routes: nothing is cached.
	Cache *Cache `json:"cache,omitempty"`
	// DrainTimeout is how long websockets and streamed responses on an ASGI
	// worker that drains (or on a stopping proxy) may go on; then they are
	// closed, websockets with 1012 (drain) or 1001 (proxy stop). 0 = at
	// once.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`
	// Mounts route URL prefixes to other worker pools (config mounts);
	// the rest goes to the main pool.
	Mounts []Mount `json:"mounts,omitempty"`

	// The access rules (issue 24; config/locations.go): hosts and
	// locations as configured, the fields set on every response, a
	// connection limit per client (0: none), and the files the rules read,
	// as the supervisor read them (as root, like the certificates): error
	// pages by status, htpasswd files by path.
	Hosts                []config.Host     `json:"hosts,omitempty"`
	Locations            []config.Location `json:"locations,omitempty"`
	Headers              map[string]string `json:"headers,omitempty"`
	ConnectionsPerClient int               `json:"connections_per_client,omitempty"`
	ErrorPages           map[int][]byte    `json:"error_pages,omitempty"`
	Htpasswd             map[string][]byte `json:"htpasswd,omitempty"`
}

// Mount routes URL prefixes to the workers whose Pool is Pool.
type Mount struct {
	Pool string   `json:"pool"`
	URLs []string `json:"urls"`
}

// Upstream is one group of remote servers, already validated (see
// config.Upstream for each field's meaning).
type Upstream struct {
	Method           string           `json:"method"`   // round_robin, least_conn, hash
	Hash             string           `json:"hash"`     // key template for hash
	Protocol         string           `json:"protocol"` // http, uwsgi
	Servers          []UpstreamServer `json:"servers"`
	HealthPath       string           `json:"health_path,omitempty"` // "" = no active check
	HealthInterval   Duration         `json:"health_interval"`
	HealthTimeout    Duration         `json:"health_timeout"`
	HealthFails      int              `json:"health_fails"`
	HealthPasses     int              `json:"health_passes"`
	Keepalive        int              `json:"keepalive"` // idle connections per server; 0 = none
	KeepaliveTimeout Duration         `json:"keepalive_timeout"`
	ConnectTimeout   Duration         `json:"connect_timeout"`
	Timeout          Duration         `json:"timeout"`
	RetryTries       int              `json:"retry_tries"`   // servers tried at most; 1 = no retry
	RetryTimeout     Duration         `json:"retry_timeout"` // all tries together; 0 = no limit
	RetryIdempotent  bool             `json:"retry_idempotent"`
	RetryBudget      int              `json:"retry_budget"` // percent of requests
	Resolve          Duration         `json:"resolve"`      // DNS re-resolution interval
}

// UpstreamServer is one server entry of an Upstream.
type UpstreamServer struct {
	Address     string   `json:"address"` // host:port or unix:/path
	Weight      int      `json:"weight"`
	MaxFails    int      `json:"max_fails"` // 0 = never taken out
	FailTimeout Duration `json:"fail_timeout"`
	Backup      bool     `json:"backup,omitempty"`
	Down        bool     `json:"down,omitempty"`
	MaxConns    int      `json:"max_conns,omitempty"` // 0 = no cap
}

// Route sends paths starting with URL to the group named Upstream.
type Route struct {
	URL      string `json:"url"`
	Upstream string `json:"upstream"`
}

// Static maps a URL prefix onto a directory, as nginx `location URL { alias DIR; }`,
// or one URL onto one file (File set, Dir empty).
type Static struct {
	URL  string `json:"url"`
	Dir  string `json:"dir"`
	File string `json:"file,omitempty"`
	// Cache is the Cache-Control max-age for its files; 0 = no header
	// (content-hashed names get a year and immutable all the same).
	Cache Duration `json:"cache,omitempty"`
}

// TLS is what the proxy's TLS listeners serve. The supervisor reads the
// certificate files (as root, like nginx's master) and sends their PEM, so
// the proxy never needs to read a private key and a renewed pair reaches
// it as a new config.
type TLS struct {
	// Certificates are chosen by SNI; the first is the default.
	Certificates []Certificate `json:"certificates"`
	// RedirectHTTP: plain requests get 308 to https://host[:HTTPSPort].
	RedirectHTTP bool `json:"redirect_http,omitempty"`
	// HTTPSPort is the port the redirect names; 0 or 443: none.
	HTTPSPort int `json:"https_port,omitempty"`
	// HSTS is Strict-Transport-Security's max-age; 0 = no header.
	HSTS Duration `json:"hsts,omitempty"`
	// ACME gets certificates for its names from an ACME CA in the proxy
	// (package acme); nil: none.
	ACME *ACME `json:"acme,omitempty"`
	// HTTP3 serves HTTP/3 on the UDP sockets the proxy inherited
	// (BERTH_LISTEN_UDP) and announces it with Alt-Svc on TLS responses.
	HTTP3 bool `json:"http3,omitempty"`
	// HTTP3Port is the UDP port Alt-Svc names: the first https://
	// listener's, which has the same number as its TCP port.
	HTTP3Port int `json:"http3_port,omitempty"`
}

// ACME is tls.acme as the proxy's Manager takes it. The supervisor reads
// the ca_roots files (as root, like the certificates) and sends their PEM,
// so the proxy running as app.user never needs to read /etc/berth; it has
// given the storage directory to that user (acme.PrepareStorage).
type ACME struct {
	Email   string   `json:"email,omitempty"`
	Domains []string `json:"domains"`
	CA      string   `json:"ca"`
	// CARoots are the ca_roots paths (for messages), CARootPEM what they
	// held.
	CARoots   []string `json:"ca_roots,omitempty"`
	CARootPEM [][]byte `json:"ca_root_pem,omitempty"`
	Storage   string   `json:"storage"`
	// RenewCheck is how often certificates are checked for renewal; 0:
	// certmagic's 10 minutes. Not a config key: the supervisor sets it
	// from BERTH_ACME_RENEW_CHECK, for tests whose certificates live
	// seconds.
	RenewCheck Duration `json:"renew_check,omitempty"`
}

// Certificate is one certificate chain and its key, in PEM, with the paths
// they were read from (for messages).
type Certificate struct {
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	CertPEM  []byte `json:"cert_pem"`
	KeyPEM   []byte `json:"key_pem"`
}

// Compression says which worker responses are compressed.
type Compression struct {
	Enabled   bool     `json:"enabled"`
	MinLength int64    `json:"min_length"` // bytes; shorter bodies go as they are
	Types     []string `json:"types"`      // media types, "type/*" allowed
}

// Cache is the response cache for worker responses.
type Cache struct {
	Size   int64        `json:"size"` // bytes of cached responses, LRU beyond
	Routes []CacheRoute `json:"routes"`
}

// CacheRoute opts a URL prefix into the cache.
type CacheRoute struct {
	URL            string   `json:"url"`
	MaxTTL         Duration `json:"max_ttl"`
	Stale          Duration `json:"stale"`
	SessionCookies []string `json:"session_cookies"`
}

// Worker is one worker process as the proxy needs to know it.
type Worker struct {
	ID       string `json:"id"`       // stable for the worker's life, e.g. "3.1" (slot.incarnation)
	Socket   string `json:"socket"`   // unix socket path speaking uwsgi
	Capacity int    `json:"capacity"` // concurrent requests it takes (workers.threads)
	// Draining workers get no new request; when their in-flight count is 0
	// the proxy sends TypeDrained once.
	Draining bool `json:"draining,omitempty"`
	// MaxRequests is this worker's budget (max_requests plus its jitter);
	// 0 means unlimited. When the proxy has sent it this many requests it
	// sends TypeDue once and keeps routing to it until told it drains.
	MaxRequests int64 `json:"max_requests,omitempty"`
	// Interface is the protocol on Socket: "" or "wsgi" for uwsgi, "asgi"
	// for berth's multiplexed ASGI framing (docs/internals.md).
	Interface string `json:"interface,omitempty"`
	// Pool is the mount the worker serves ("" = the main app).
	Pool string `json:"pool,omitempty"`
	// Compact workers read berth's compact vars (modifier1 0xBE: the vars
	// as NUL-separated strings, decoded by one split in Python); false
	// means plain uwsgi vars, as any uwsgi server reads them.
	Compact bool `json:"compact,omitempty"`
}

// Stats are the proxy's counters since it started.
type Stats struct {
	Workers map[string]WorkerStats `json:"workers"`
	Queue   int                    `json:"queue"` // requests waiting for a worker now
	// Upstreams: each group's servers (one per address a name resolved
	// to), in config order; nil when no group is configured.
	Upstreams map[string][]UpstreamStats `json:"upstreams,omitempty"`
	// ACME: each tls.acme domain's certificate and last error, in config
	// order; nil without tls.acme.
	ACME []acme.DomainStatus `json:"acme,omitempty"`
}

// UpstreamStats are one upstream server's counters as seen by one proxy.
type UpstreamStats struct {
	Server   string `json:"server"`           // the address as configured
	Addr     string `json:"addr"`             // the address connected to (resolved)
	State    string `json:"state"`            // up, failed, unhealthy, down, backup
	Requests int64  `json:"requests"`         // sent to it (a retry counts on both)
	Failures int64  `json:"failures"`         // counted by passive health
	InFlight int    `json:"inflight"`         // requests on it now
	Latency  int64  `json:"latency_us"`       // moving average response time, microseconds
	Backup   bool   `json:"backup,omitempty"` // a backup server
}

// WorkerStats are one worker's counters as seen by one proxy.
type WorkerStats struct {
	Requests int64 `json:"requests"`
	InFlight int   `json:"inflight"`
}

// Duration is a time.Duration that encodes as a Go duration string ("30s").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("control: duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("control: duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Conn reads and writes messages on a control socket. Send is safe for
// concurrent use; Receive must be called from one goroutine.
type Conn struct {
	mu  sync.Mutex
	w   io.Writer
	enc *json.Encoder
	dec *bufio.Scanner
}

// NewConn wraps rw. Lines longer than 16 MiB are an error.
func NewConn(rw io.ReadWriter) *Conn {
	sc := bufio.NewScanner(rw)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	return &Conn{w: rw, enc: json.NewEncoder(rw), dec: sc}
}

// Send writes one message.
func (c *Conn) Send(m Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enc.Encode(m); err != nil {
		return fmt.Errorf("control: send %s: %w", m.Type, err)
	}
	return nil
}

// Receive reads the next message. It returns io.EOF when the peer closed.
func (c *Conn) Receive() (Message, error) {
	if !c.dec.Scan() {
		if err := c.dec.Err(); err != nil {
			return Message{}, fmt.Errorf("control: receive: %w", err)
		}
		return Message{}, io.EOF
	}
	var m Message
	if err := json.Unmarshal(c.dec.Bytes(), &m); err != nil {
		return Message{}, fmt.Errorf("control: decode %q: %w", c.dec.Bytes(), err)
	}
	return m, nil
}
