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
	Static         []Static `json:"static"`
	MaxBodySize    int64    `json:"max_body_size"`   // bytes; 0 means no limit
	TrustedProxies []string `json:"trusted_proxies"` // CIDRs, already validated
	AccessLog      string   `json:"access_log"`      // "combined", "json" or "off"
	QueueSize      int      `json:"queue_size"`      // requests waiting for a worker; beyond it 503
	QueueTimeout   Duration `json:"queue_timeout"`   // longest wait for a worker, then 503
	Timeout        Duration `json:"timeout"`         // a worker's answer takes longer: 504, worker reported
	// GracefulTimeout bounds how long a stopping proxy waits for in-flight
	// requests after SIGTERM before it closes what is left.
	GracefulTimeout Duration `json:"graceful_timeout"`
	// DrainTimeout is how long websockets and streamed responses on an ASGI
	// worker that drains (or on a stopping proxy) may go on; then they are
	// closed, websockets with 1012 (drain) or 1001 (proxy stop). 0 = at
	// once.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`
	// Mounts route URL prefixes to other worker pools (config mounts);
	// the rest goes to the main pool.
	Mounts []Mount `json:"mounts,omitempty"`
}

// Mount routes URL prefixes to the workers whose Pool is Pool.
type Mount struct {
	Pool string   `json:"pool"`
	URLs []string `json:"urls"`
}

// Static maps a URL prefix onto a directory, as nginx `location URL { alias DIR; }`.
type Static struct {
	URL string `json:"url"`
	Dir string `json:"dir"`
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
