// Package proxy is berth's HTTP front: it serves static files, buffers
// request and response bodies, and routes every other request to a Python
// worker over the uwsgi protocol (docs/internals.md), the way nginx with
// uwsgi_pass does, plus what nginx cannot: it knows each worker's in-flight
// count, queues when all are busy, retries once on a dead worker, and tells
// the supervisor when a worker is due, drained or stuck.
//
// Server is the in-process core (tests use it directly); Main is the entry
// of the `berth proxy` process the supervisor starts.
package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/proxy/http1"

	"github.com/berth-dev/berth/control"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/http2"
)

const (
	// nginx-like client timeouts.
	readHeaderTimeout = 60 * time.Second // client_header_timeout
	idleTimeout       = 75 * time.Second // keepalive_timeout
	clientBodyTimeout = 60 * time.Second // client_body_timeout: between two reads
	sendTimeout       = 60 * time.Second // send_timeout: between two writes
	// maxHeaderBytes bounds the request line plus headers (431 beyond).
	// net/http allows 4 KiB of slack above MaxHeaderBytes.
	maxHeaderBytes = 32 << 10
	// bodyInPacket: bodies up to this size go out in the same write as the
	// vars.
	bodyInPacket = reqMemLimit
	// largeWrite: responses larger than this get a send deadline pushed
	// forward per chunk; smaller ones fit the socket buffer.
	largeWrite = 64 << 10
)

// Options tune a Server. The zero value is ready to use.
type Options struct {
	// AccessLog receives the access log lines; nil means os.Stdout.
	AccessLog io.Writer
	// ErrorLog receives error lines, prefixed "berth proxy: "; nil means
	// os.Stderr.
	ErrorLog io.Writer
	// Registry gets the proxy's metrics; nil means a new registry of its own.
	Registry *prometheus.Registry
	// TempDir holds spilled request and response bodies; "" means
	// os.TempDir(). The files are unlinked as soon as they are created.
	TempDir string
}

// Server is the proxy core. Create it with New, configure it with
// SetConfig and SetWorkers (at any time, from any goroutine), then Serve
// one or more listeners.
type Server struct {
	opts    Options
	cfg     atomic.Pointer[settings]
	rt      *router // the main app's pool
	pools   poolSet // mounted pools (pools.go)
	http    *http.Server
	metrics *metrics
	alog    *accessLog
	elog    *log.Logger
	shut    atomic.Bool

	events   chan control.Message
	evMu     sync.Mutex
	evQueue  []control.Message
	evStats  *control.Message // latest unsent stats; stats coalesce
	evNotify chan struct{}

	stop     chan struct{}
	stopOnce sync.Once
	bg       sync.WaitGroup

	reqPool sync.Pool // of *reqState
	// wsOpen counts accepted websockets: hijacked connections that
	// http.Server.Shutdown does not wait for.
	wsOpen sync.WaitGroup

	lastNoFiles atomic.Int64 // unix nanos of the last out-of-files log line

	up             *upstreams   // upstream groups (upstreams.go)
	lastNoUpstream atomic.Int64 // unix nanos of the last no-live-upstream log line
	// The edge (tls.go, compress.go, cache.go).
	tlsConf *tls.Config
	h2      *http2.Server
	h2c     h2conns
	edge    *edgeMetrics
	zips    *zipCache // compressed static files
	cache   cacheStore

	last503 atomic.Int64 // unix nanos of the last 503 log line
	more503 atomic.Int64 // 503s not logged since then

	ids *idGen // request IDs

	access *accessState // rate limits' buckets, the connection counter (access.go)

	h1    h1conns   // HTTP/1.1 connections and listeners (conn.go)
	files openFiles // static files kept open (openfiles.go)
	idle  idlePark  // idle connections waiting without a goroutine (idlepark.go)
	// manyConns is the open connections past which idle ones park, once
	// idle for parkAfter; manyConns and parkAfter by default (tests park
	// every one at the next sweep with 0 and 0).
	manyConns int64
	parkAfter time.Duration
	to        timeouts
	// clock is the coarse time (unix nanos) the housekeeping tick keeps,
	// for timestamps on the request path; date is the Date field of that
	// second, "Date: ...\r\n".
	clock atomic.Int64
	date  atomic.Pointer[[]byte]
	acme  acmeState // ACME: certificates from an ACME CA (acme.go)
	h3    h3State   // HTTP/3 (h3.go)
}

// New returns a Server with the zero configuration (no static files, no
// limits, no queue, access log off) and no worker: every request gets 503
// until SetWorkers gives it some.
func New(opts Options) *Server {
	if opts.AccessLog == nil {
		opts.AccessLog = os.Stdout
	}
	if opts.ErrorLog == nil {
		opts.ErrorLog = os.Stderr
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	s := &Server{
		opts:     opts,
		elog:     log.New(opts.ErrorLog, "berth proxy: ", 0),
		events:   make(chan control.Message),
		evNotify: make(chan struct{}, 1),
		stop:     make(chan struct{}),
		ids:      newIDGen(),
	}
	s.metrics = newMetrics(opts.Registry)
	s.edge = newEdgeMetrics(opts.Registry)
	s.zips = newZipCache(staticZipCacheSize)
	s.alog = newAccessLog(opts.AccessLog, func(err error) { s.logf("access log: %v (further errors not shown)", err) })
	s.rt = newRouter(s.metrics, s.emit, s.logf, s.handoff)
	s.up = newUpstreams(newUpMetrics(opts.Registry), s.logf)
	s.access = newAccessState(opts.Registry)
	st, _ := compile(control.Proxy{})
	s.cfg.Store(st)
	s.reqPool.New = func() any { return new(reqState) }
	s.tickClock(time.Now())
	s.to = defaultTimeouts
	s.manyConns = manyConns
	s.parkAfter = parkAfter
	// HTTP/1.1 is conn.go's; this http.Server only carries HTTP/2's
	// settings and its graceful shutdown hook (tls.go).
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes - 4096,
		ErrorLog:          s.elog,
	}
	s.newH2()
	s.bg.Add(2)
	go s.pump()
	go s.housekeeping()
	return s
}

// SetConfig validates c and swaps it in atomically: each request uses the
// settings it started with. On error the old settings stay.
func (s *Server) SetConfig(c control.Proxy) error {
	st, err := compile(c)
	if err == nil {
		err = validateUpstreams(c)
	}
	if err == nil {
		st.access, err = s.access.compile(c)
	}
	if err != nil {
		return err
	}
	if err := s.applyACME(c); err != nil { // ACME: a Manager that cannot be made refuses the config
		return err
	}
	st.routes = s.up.apply(c)
	old := s.cfg.Swap(st)
	if st.cache == nil && old.cache != nil {
		s.clearCache() // turned off: free the memory
	}
	return nil
}

// SetWorkers replaces the whole worker set (the supervisor always sends all
// of them). Workers keep their counters across calls by ID; a worker that
// is missing is no longer routed to, and its in-flight requests finish.
// Entries without ID or socket are skipped and reported in the error.
func (s *Server) SetWorkers(ws []control.Worker) error {
	return s.setPoolWorkers(ws)
}

// Serve accepts HTTP/1.1 connections on l until Shutdown; it then returns
// http.ErrServerClosed. It may be called for several listeners at once.
func (s *Server) Serve(l net.Listener) error {
	return s.serveListener(l, s.serveConn)
}

// tickClock sets the coarse clock and the Date field.
func (s *Server) tickClock(now time.Time) {
	prev := s.clock.Swap(now.UnixNano())
	if s.date.Load() == nil || prev/int64(time.Second) != now.UnixNano()/int64(time.Second) {
		d := []byte("Date: " + now.UTC().Format(http.TimeFormat) + "\r\n")
		s.date.Store(&d)
	}
}

// Shutdown stops accepting, closes idle client and worker connections,
// waits for in-flight requests until ctx ends, then closes what is left
// and returns ctx's error. Events() is closed when Shutdown returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shut.Store(true)
	for _, rt := range s.routers() {
		rt.shutdown()
	}
	s.up.shutdown()
	cancelDrain := s.drainOnStop(ctx)
	defer cancelDrain()
	h3done := s.shutdownH3(ctx) // HTTP/3: no new connection from here; GOAWAY beside the other fronts
	s.http.Shutdown(ctx)        // its hook sends HTTP/2 GOAWAY (it serves nothing itself)
	err := s.shutdownH1(ctx)
	if err == nil {
		err = s.waitWebsockets(ctx)
	}
	if err != nil {
		// Past graceful_timeout: what is left ends now, websockets with
		// their closing handshake (bounded by drainGrace and the
		// library's own close timeout).
		s.drainAll(closeGoingAway, "shutdown")
		wctx, wcancel := context.WithTimeout(context.Background(), drainGrace+6*time.Second)
		s.waitWebsockets(wctx)
		wcancel()
	}
	if herr := s.shutdownH2(ctx); err == nil {
		err = herr
	}
	if herr := <-h3done; err == nil { // HTTP/3: its requests finished, or were cut at ctx's end
		err = herr
	}
	s.stopACME() // ACME: after the listeners stop accepting; its lock goes to the next proxy
	s.stopOnce.Do(func() { close(s.stop) })
	s.bg.Wait()
	s.files.clear()
	return err
}

// MetricsHandler serves the proxy's registry in Prometheus text format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{})
}

// Stats returns the counters the stats events carry.
func (s *Server) Stats() control.Stats {
	st := s.poolStats()
	st.Upstreams = s.up.stats()
	st.ACME = s.acmeStatus() // ACME
	return st
}

func (s *Server) logf(format string, args ...any) { s.elog.Printf(format, args...) }

// respWriter counts what was sent, for the log and the metrics, and puts
// the request ID on every response, whichever path answers it.
type respWriter struct {
	w      http.ResponseWriter
	status int
	bytes  int64
	hsts   []string // Strict-Transport-Security to add; nil: none
	altSvc []string // HTTP/3: Alt-Svc to add on TLS over TCP; nil: none
	xcache string   // X-Cache-Status to add; "": none
	reqID  string   // "" when proxy.request_id is off
	// fields and locFields are proxy.headers and the location's headers,
	// set on every response (access.go).
	fields, locFields []fieldOp
}

// stamp adds the proxy's own response fields as the response starts:
// X-Request-ID (replacing one the app set, which can only differ if the app
// ignored HTTP_X_REQUEST_ID), HSTS and X-Cache-Status.
func (rw *respWriter) stamp() {
	h := rw.w.Header()
	if rw.reqID != "" {
		h["X-Request-Id"] = []string{rw.reqID}
	}
	if rw.hsts != nil {
		h["Strict-Transport-Security"] = rw.hsts[:1:1]
	}
	if rw.altSvc != nil { // HTTP/3: announced on HTTP/1.1 and HTTP/2 over TLS (h3.go)
		h["Alt-Svc"] = rw.altSvc[:1:1]
	}
	if rw.xcache != "" {
		h["X-Cache-Status"] = []string{rw.xcache}
	}
	if rw.fields != nil || rw.locFields != nil {
		applyFields(h, rw.fields, rw.locFields)
	}
}

func (rw *respWriter) Header() http.Header { return rw.w.Header() }

func (rw *respWriter) WriteHeader(code int) {
	if rw.status == 0 && code >= 200 {
		rw.status = code
		rw.stamp()
	}
	rw.w.WriteHeader(code)
}

func (rw *respWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	n, err := rw.w.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path for static files and spilled
// bodies.
func (rw *respWriter) ReadFrom(r io.Reader) (int64, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	var n int64
	var err error
	if rf, ok := rw.w.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{rw.w}, r)
	}
	rw.bytes += n
	return n, err
}

func (rw *respWriter) Flush() {
	if f, ok := rw.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (rw *respWriter) Unwrap() http.ResponseWriter { return rw.w }

// reqState is the per-request scratch, pooled.
type reqState struct {
	rw    respWriter
	info  reqInfo
	pkt   []byte
	body  spool
	resp  spool
	line  []byte
	abort bool       // the response is broken mid-way: cut the connection
	head  []byte     // scratch for the worker's response head
	rbody http1.Body // the worker's response body reader
	// bodiless: the request has no body, so a worker that did not read
	// all of its packet never called the app.
	bodiless bool
	worker   string
	wsock    string // the worker's socket, for $upstream_addr
	reqID    string // "" when proxy.request_id is off
	up       upTimes
	job      sendJob
	rt       *router // the pool the request goes to
	// The streamed answer being relayed, kept here so it costs no
	// allocation: a worker's, an upstream server's or an ASGI app's.
	wstream workerStream
	ustream upstreamStream
	astream asgiStream
	// method, uri and proto are the request line for the access log (a
	// refused head logs its own line).
	method, uri, proto string
	start              time.Time
	// detached: an accepted websocket took the request over; its relay
	// ends it (finishDetached) when it closes.
	detached bool
	// user is the basic-auth user ($remote_user), "" without one.
	user string
	// releaseConn gives back the request's slot of
	// proxy.limits.connections_per_client; nil: none taken.
	releaseConn func()
}

// begin readies pooled state for a request answered on w.
func (rs *reqState) begin(w http.ResponseWriter) {
	rs.rw = respWriter{w: w}
	rs.abort = false
	rs.worker, rs.wsock, rs.reqID = "", "", ""
	rs.up = upTimes{}
	rs.detached = false
	rs.user = ""
	rs.releaseConn = nil
}

// end drops what the request held before the state goes back to its pool.
func (rs *reqState) end() {
	rs.rw = respWriter{}
	rs.job = sendJob{}
	rs.rt = nil
	rs.body.release()
	rs.resp.release()
	if cap(rs.line) > 4<<10 {
		rs.line = nil
	}
}
