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
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-dev/berth/control"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
	rt      *router
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

	lastNoFiles atomic.Int64 // unix nanos of the last out-of-files log line
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
	}
	s.metrics = newMetrics(opts.Registry)
	s.alog = newAccessLog(opts.AccessLog, func(err error) { s.logf("access log: %v (further errors not shown)", err) })
	s.rt = newRouter(s)
	st, _ := compile(control.Proxy{})
	s.cfg.Store(st)
	s.reqPool.New = func() any { return new(reqState) }
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes - 4096,
		ConnContext:       connContext,
		ErrorLog:          s.elog,
	}
	s.bg.Add(2)
	go s.pump()
	go s.housekeeping()
	return s
}

// SetConfig validates c and swaps it in atomically: each request uses the
// settings it started with. On error the old settings stay.
func (s *Server) SetConfig(c control.Proxy) error {
	st, err := compile(c)
	if err != nil {
		return err
	}
	s.cfg.Store(st)
	return nil
}

// SetWorkers replaces the whole worker set (the supervisor always sends all
// of them). Workers keep their counters across calls by ID; a worker that
// is missing is no longer routed to, and its in-flight requests finish.
// Entries without ID or socket are skipped and reported in the error.
func (s *Server) SetWorkers(ws []control.Worker) error {
	return s.rt.setWorkers(ws)
}

// Serve accepts HTTP/1.1 connections on l until Shutdown; it then returns
// http.ErrServerClosed. It may be called for several listeners at once.
func (s *Server) Serve(l net.Listener) error {
	return s.http.Serve(framedListener{l})
}

// Shutdown stops accepting, closes idle client and worker connections,
// waits for in-flight requests until ctx ends, then closes what is left
// and returns ctx's error. Events() is closed when Shutdown returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shut.Store(true)
	s.rt.shutdown()
	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
	}
	s.stopOnce.Do(func() { close(s.stop) })
	s.bg.Wait()
	return err
}

// Events returns the channel of messages for the supervisor: TypeDue,
// TypeTimeout, TypeDrained (each once per worker) and TypeStats (at most
// once a second, only when changed). Events are queued without limit
// (there are few: stats coalesce to the latest), so a slow reader never
// slows requests. The channel is closed when Shutdown returns; events not
// taken within 100 ms of that are dropped.
func (s *Server) Events() <-chan control.Message { return s.events }

// MetricsHandler serves the proxy's registry in Prometheus text format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{})
}

// Stats returns the counters the stats events carry.
func (s *Server) Stats() control.Stats { return s.rt.stats() }

func (s *Server) logf(format string, args ...any) { s.elog.Printf(format, args...) }

// emit queues an event; it never blocks.
func (s *Server) emit(m control.Message) {
	s.evMu.Lock()
	if m.Type == control.TypeStats {
		s.evStats = &m
	} else {
		s.evQueue = append(s.evQueue, m)
	}
	s.evMu.Unlock()
	select {
	case s.evNotify <- struct{}{}:
	default:
	}
}

func (s *Server) nextEvent() (control.Message, bool) {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if len(s.evQueue) > 0 {
		m := s.evQueue[0]
		s.evQueue = s.evQueue[1:]
		return m, true
	}
	if s.evStats != nil {
		m := *s.evStats
		s.evStats = nil
		return m, true
	}
	return control.Message{}, false
}

// pump moves queued events to the events channel.
func (s *Server) pump() {
	defer s.bg.Done()
	defer close(s.events)
	for {
		m, ok := s.nextEvent()
		if !ok {
			select {
			case <-s.evNotify:
				continue
			case <-s.stop:
				return
			}
		}
		select {
		case s.events <- m:
		case <-s.stop:
			s.flushEvents(m)
			return
		}
	}
}

func (s *Server) flushEvents(m control.Message) {
	for {
		select {
		case s.events <- m:
		case <-time.After(100 * time.Millisecond):
			return
		}
		var ok bool
		if m, ok = s.nextEvent(); !ok {
			return
		}
	}
}

// housekeeping flushes the access log every 100 ms and, every second,
// sends stats when they changed and closes long-idle worker connections.
func (s *Server) housekeeping() {
	defer s.bg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var last control.Stats
	for tick := 1; ; tick++ {
		select {
		case <-s.stop:
			s.alog.flush()
			if st := s.rt.stats(); !statsEqual(st, last) {
				s.emit(control.Message{Type: control.TypeStats, Stats: &st})
			}
			return
		case <-t.C:
		}
		s.alog.flush()
		s.rt.kick()
		if tick%10 != 0 {
			continue
		}
		if st := s.rt.stats(); !statsEqual(st, last) {
			s.emit(control.Message{Type: control.TypeStats, Stats: &st})
			last = st
		}
		s.rt.reapIdle(time.Now().UnixNano())
	}
}

func statsEqual(a, b control.Stats) bool {
	if a.Queue != b.Queue || len(a.Workers) != len(b.Workers) || (a.Workers == nil) != (b.Workers == nil) {
		return false
	}
	for k, v := range a.Workers {
		if w, ok := b.Workers[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// connInfo is computed once per client connection.
type connInfo struct {
	remoteHost string
	remotePort string
	remoteIP   netip.Addr // invalid for unix sockets
	localHost  string
	localPort  string      // "" for unix sockets: the scheme's default is used
	framed     *framedConn // nil for requests that did not come through Serve
}

type connKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	ci := newConnInfo(c.RemoteAddr(), c.LocalAddr())
	ci.framed, _ = c.(*framedConn)
	return context.WithValue(ctx, connKey{}, ci)
}

func newConnInfo(remote, local net.Addr) *connInfo {
	ci := &connInfo{remoteHost: "unix:", localHost: "localhost"}
	if a, ok := remote.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		ci.remoteIP = ap.Addr().Unmap()
		ci.remoteHost = ci.remoteIP.String()
		ci.remotePort = strconv.Itoa(int(ap.Port()))
	}
	if a, ok := local.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		ci.localHost = ap.Addr().Unmap().String()
		ci.localPort = strconv.Itoa(int(ap.Port()))
	}
	return ci
}

// connInfoOf finds the connection's info; requests handed to ServeHTTP by
// another http.Server (tests) get it computed from the request.
func connInfoOf(r *http.Request) *connInfo {
	if ci, ok := r.Context().Value(connKey{}).(*connInfo); ok {
		return ci
	}
	var remote net.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		remote = net.TCPAddrFromAddrPort(ap)
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return newConnInfo(remote, local)
}

// respWriter counts what was sent, for the log and the metrics.
type respWriter struct {
	w      http.ResponseWriter
	status int
	bytes  int64
}

func (rw *respWriter) Header() http.Header { return rw.w.Header() }

func (rw *respWriter) WriteHeader(code int) {
	if rw.status == 0 && code >= 200 {
		rw.status = code
	}
	rw.w.WriteHeader(code)
}

func (rw *respWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.w.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path for static files and spilled
// bodies.
func (rw *respWriter) ReadFrom(r io.Reader) (int64, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
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
	abort bool // the response is broken mid-way: cut the connection
	// bodiless: the request has no body, so a worker that did not read
	// all of its packet never called the app.
	bodiless bool
	worker   string
	job      sendJob
}

// ServeHTTP answers one request: static file, or a worker's answer.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := s.cfg.Load()
	rs := s.reqPool.Get().(*reqState)
	rs.rw = respWriter{w: w}
	rs.abort = false
	rs.worker = ""
	ci := s.clientInfo(rs, r, st)
	method, uri, proto := r.Method, r.RequestURI, r.Proto
	if rej := refusal(ci, r); rej != nil {
		method, uri, proto = rej.line, "", ""
		s.metrics.refused.WithLabelValues(strconv.Itoa(rej.status)).Inc()
		rs.rw.Header().Set("Connection", "close")
		plainError(&rs.rw, rej.status, "berth: bad request: "+rej.reason+"\n")
	} else if status, why := checkTarget(r); status != 0 {
		s.metrics.refused.WithLabelValues(strconv.Itoa(status)).Inc()
		plainError(&rs.rw, status, "berth: "+why+"\n")
	} else {
		s.handle(rs, r, st)
	}

	status := rs.rw.status
	if status == 0 {
		status = 499 // nginx's code for a client that left before the answer
	}
	end := time.Now()
	dur := end.Sub(start)
	s.metrics.countCode(status)
	s.metrics.duration.Observe(dur.Seconds())
	if st.log != logOff {
		e := logEntry{
			when: end, remote: rs.info.remoteAddr, method: method, uri: uri, proto: proto,
			status: status, bytes: rs.rw.bytes, dur: dur, worker: rs.worker,
			referer: headerValue(r.Header, "Referer"), ua: headerValue(r.Header, "User-Agent"),
		}
		if st.log == logJSON {
			rs.line = appendJSON(rs.line[:0], &e)
		} else {
			rs.line = appendCombined(rs.line[:0], &e)
		}
		s.alog.write(rs.line)
	}
	abort := rs.abort
	rs.rw = respWriter{}
	rs.job = sendJob{}
	rs.body.release()
	rs.resp.release()
	if cap(rs.line) > 4<<10 {
		rs.line = nil
	}
	s.reqPool.Put(rs)
	if abort {
		panic(http.ErrAbortHandler)
	}
}

// clientInfo fills the client's address and scheme, believing
// X-Forwarded-For / -Proto only from a trusted peer.
func (s *Server) clientInfo(rs *reqState, r *http.Request, st *settings) *connInfo {
	ci := connInfoOf(r)
	in := &rs.info
	*in = reqInfo{remoteAddr: ci.remoteHost, remotePort: ci.remotePort, scheme: "http"}
	if r.TLS != nil {
		in.scheme = "https"
	}
	if len(st.trusted) > 0 && st.isTrusted(ci.remoteIP) {
		if xff := r.Header["X-Forwarded-For"]; len(xff) > 0 {
			if a, ok := realIP(st, xff); ok {
				in.remoteAddr, in.remotePort = a, ""
			}
		}
		if xfp := r.Header["X-Forwarded-Proto"]; len(xfp) > 0 {
			v := xfp[0]
			if i := strings.IndexByte(v, ','); i >= 0 {
				v = v[:i]
			}
			v = strings.TrimSpace(v)
			switch {
			case strings.EqualFold(v, "https"):
				in.scheme = "https"
			case strings.EqualFold(v, "http"):
				in.scheme = "http"
			}
		}
	}
	in.serverName = hostOnly(r.Host)
	if in.serverName == "" {
		in.serverName = ci.localHost
	}
	in.serverPort = ci.localPort
	if in.serverPort == "" {
		in.serverPort = "80"
		if in.scheme == "https" {
			in.serverPort = "443"
		}
	}
	return ci
}

// realIP walks X-Forwarded-For right to left and returns the first address
// that is not a trusted proxy (the leftmost when all are). An entry that is
// not an address makes it decline, as nginx's realip does.
func realIP(st *settings, vals []string) (string, bool) {
	last := ""
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for v != "" {
			j := strings.LastIndexByte(v, ',')
			tok := strings.TrimSpace(v[j+1:])
			if j < 0 {
				v = ""
			} else {
				v = v[:j]
			}
			if tok == "" {
				continue
			}
			a, err := netip.ParseAddr(tok)
			if err != nil {
				ap, err2 := netip.ParseAddrPort(tok)
				if err2 != nil {
					return "", false
				}
				a = ap.Addr()
				tok = a.String()
			}
			last = tok
			if !st.isTrusted(a) {
				return tok, true
			}
		}
	}
	return last, last != ""
}

// hostOnly strips the port from a Host header.
func hostOnly(h string) string {
	if h == "" {
		return ""
	}
	if h[0] == '[' {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[:i+1]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		return h[:i]
	}
	return h
}

func (s *Server) handle(rs *reqState, r *http.Request, st *settings) {
	p := r.URL.Path
	n, ok := normalizePath(p)
	if len(st.mounts) > 0 {
		suspicious := hasDotDot(p) || hasEncodedSlash(r)
		if m, rel := st.match(n); ok && m != nil {
			if suspicious {
				http.NotFound(&rs.rw, r)
				return
			}
			s.serveStatic(&rs.rw, r, m, rel)
			return
		}
		if suspicious {
			if m, _ := st.match(p); m != nil {
				http.NotFound(&rs.rw, r)
				return
			}
		}
	}
	if !ok {
		plainError(&rs.rw, http.StatusBadRequest, "berth: bad request path\n")
		return
	}
	rs.info.pathInfo = n
	s.proxy(rs, r, st)
}

// outcome of one exchange with a worker.
type outcome uint8

const (
	done        outcome = iota // a response (maybe an error page) was sent
	failed502                  // nothing sent yet; answer 502
	outOfFiles                 // the proxy has no file descriptor left: 503
	retryDial                  // the worker's socket refused the connection
	retryWrite                 // sending the request packet failed: the worker has none of it
	retryUnread                // the worker closed with the (bodiless) request unread
)

// retryReason labels berth_retries_total.
func (o outcome) retryReason() string {
	switch o {
	case retryDial:
		return "dial"
	case retryWrite:
		return "write"
	case retryUnread:
		return "unread"
	}
	return ""
}

func (s *Server) proxy(rs *reqState, r *http.Request, st *settings) {
	w := &rs.rw
	// Read the whole body before taking a worker, so a slow upload holds
	// only this goroutine.
	hasBody := r.Body != nil && r.Body != http.NoBody
	if hasBody && st.maxBody > 0 && r.ContentLength > st.maxBody {
		s.tooLarge(w, st)
		return
	}
	if hasBody {
		rc := http.NewResponseController(w.w)
		rs.body.reset(reqMemLimit, s.opts.TempDir)
		err := rs.body.readFrom(r.Body, st.maxBody, func() { rc.SetReadDeadline(time.Now().Add(clientBodyTimeout)) })
		// net/http watches the connection once the body is read; a stale
		// deadline would cancel the request's context.
		rc.SetReadDeadline(time.Time{})
		switch {
		case errors.Is(err, errBodyTooLarge):
			s.tooLarge(w, st)
			return
		case err != nil:
			var ne net.Error
			w.Header().Set("Connection", "close")
			if errors.As(err, &ne) && ne.Timeout() {
				plainError(w, http.StatusRequestTimeout, "berth: the request body did not arrive in time\n")
				return
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return // client gone: 499
			}
			plainError(w, http.StatusBadRequest, "berth: cannot read the request body: "+err.Error()+"\n")
			return
		}
		rs.info.contentLength = strconv.FormatInt(rs.body.size(), 10)
	} else if _, ok := r.Header["Content-Length"]; ok {
		rs.info.contentLength = "0"
	}

	rs.bodiless = !hasBody || rs.body.size() == 0
	pkt, err := appendPacket(rs.pkt, r, &rs.info)
	rs.pkt = pkt
	if err != nil {
		plainError(w, http.StatusRequestHeaderFieldsTooLarge, "berth: "+err.Error()+"\n")
		return
	}
	bodyInPkt := !hasBody || (rs.body.inMemory() && rs.body.size() <= bodyInPacket)
	if hasBody && bodyInPkt {
		pkt = append(pkt, rs.body.bytes()...)
		rs.pkt = pkt
	}

	var avoid *worker
	for attempt := 0; ; attempt++ {
		var job *sendJob
		if bodyInPkt {
			rs.job = sendJob{pkt: pkt, timeout: st.timeout}
			job = &rs.job
		}
		g, waited, err := s.rt.acquire(r.Context().Done(), st, avoid, job)
		if waited > 0 {
			s.metrics.queueWait.Observe(waited.Seconds())
		}
		if err != nil {
			s.unavailable(w, st, err)
			return
		}
		rs.worker = g.w.id
		out := s.exchange(rs, r, st, g, pkt, bodyInPkt)
		if out == done {
			return
		}
		if out == outOfFiles {
			s.unavailable(w, st, errOutOfFiles)
			return
		}
		// Only a request the worker never had is sent to another one. One
		// it had read may be what killed it (a query of death): replaying
		// it would kill the next worker too, so it gets 502.
		if reason := out.retryReason(); reason != "" && attempt == 0 {
			s.metrics.retries.WithLabelValues(reason).Inc()
			avoid = g.w
			continue
		}
		plainError(w, http.StatusBadGateway, "berth: the worker failed to answer\n")
		return
	}
}

func (s *Server) tooLarge(w http.ResponseWriter, st *settings) {
	w.Header().Set("Connection", "close")
	plainError(w, http.StatusRequestEntityTooLarge,
		fmt.Sprintf("berth: the request body is larger than max_body_size (%d bytes)\n", st.maxBody))
}

func (s *Server) unavailable(w http.ResponseWriter, st *settings, err error) {
	var kind, msg string
	switch err {
	case errNoWorker:
		kind, msg = kindNoWorker, "berth: no worker is ready to serve this request; retry later\n"
	case errQueueFull:
		kind, msg = kindQueueFull, "berth: every worker is busy and the queue is full; retry later\n"
	case errOutOfFiles:
		kind, msg = kindNoFiles, "berth: the proxy has no file descriptor left (raise ulimit -n); retry later\n"
		s.noFilesLog()
	case errQueueTimeout:
		kind, msg = kindQueueTimeout, fmt.Sprintf("berth: no worker became free within %s; retry later\n", st.queueTimeout)
	default: // the client left while queued: nothing to answer
		return
	}
	s.metrics.upstreamError(kind)
	w.Header().Set("Retry-After", "1")
	plainError(w, http.StatusServiceUnavailable, msg)
}

// noFilesLog says, at most every 5 seconds, that the proxy ran out of
// file descriptors: the cause of a burst of 503s an operator must see.
func (s *Server) noFilesLog() {
	now := time.Now().UnixNano()
	last := s.lastNoFiles.Load()
	if now-last < int64(5*time.Second) || !s.lastNoFiles.CompareAndSwap(last, now) {
		return
	}
	s.logf("out of file descriptors: answering 503 to requests that need a worker connection; raise the proxy's ulimit -n (RLIMIT_NOFILE)")
}

// exchange sends the request on g's worker and relays its answer. It
// always releases the worker slot.
func (s *Server) exchange(rs *reqState, r *http.Request, st *settings, g grant, pkt []byte, bodyInPkt bool) outcome {
	wk := g.w
	c := g.c
	start := time.Now()
	sent := g.sent
	if sent {
		start = g.start
	}
	var resp *http.Response
	var err error
	for ; ; sent = false {
		if !sent {
			var out outcome
			if c, out = s.send(rs, r, st, wk, c, pkt, bodyInPkt, start); c == nil {
				return out
			}
		}
		resp, err = http.ReadResponse(c.br, r)
		for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			resp, err = http.ReadResponse(c.br, r) // 1xx interim answers are not relayed
		}
		if err == nil {
			break
		}
		if isTimeout(err) {
			return s.timedOut(rs, wk, c, st)
		}
		if c.cnt.n > 0 {
			s.metrics.upstreamError(kindBadResponse)
			s.logf("worker %s: bad response: %v", wk.id, err)
			s.rt.release(wk, c, false)
			return failed502
		}
		if c.reused && !s.rt.provenKeepalive(wk) {
			// A worker that never answered on a reused connection (plain
			// uWSGI closes after each response, even a framed one) closed
			// this one as we wrote: stale, whatever the method.
			c = s.staleConn(wk, c)
			continue
		}
		s.metrics.upstreamError(kindReset)
		s.rt.release(wk, c, false)
		// A unix socket closed with data still unread reports ECONNRESET,
		// one whose reader took everything reports EOF. A bodiless
		// request that is partly unread never reached the app.
		if errors.Is(err, syscall.ECONNRESET) && rs.bodiless {
			s.logf("worker %s: closed the connection before reading %s %s; retrying it on another worker", wk.id, r.Method, r.URL.Path)
			return retryUnread
		}
		s.metrics.notRetried.Inc()
		s.logf("worker %s: closed the connection after reading %s %s, without answering (it died or was killed): 502; not replayed on another worker, which it could kill too", wk.id, r.Method, r.URL.Path)
		return failed502
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		s.metrics.upstreamError(kindBadResponse)
		s.logf("worker %s: answered 101 Switching Protocols, which berth does not relay", wk.id)
		s.rt.release(wk, c, false)
		return failed502
	}

	if streams(resp.Header) {
		return s.stream(rs, r, st, wk, c, resp)
	}

	// Buffer the whole body, give the worker back, then feed the client.
	rs.resp.reset(respMemLimit, s.opts.TempDir)
	if err := rs.resp.readFrom(resp.Body, 0, nil); err != nil {
		if isTimeout(err) {
			return s.timedOut(rs, wk, c, st)
		}
		s.metrics.upstreamError(kindBadResponse)
		s.logf("worker %s: reading the response body: %v", wk.id, err)
		s.rt.release(wk, c, false)
		return failed502
	}
	reuse := !resp.Close && c.br.Buffered() == 0
	s.rt.release(wk, c, reuse)

	w := &rs.rw
	h := w.Header()
	copyHeaders(h, resp.Header)
	if bodyAllowed(resp.StatusCode) && r.Method != http.MethodHead {
		n := strconv.FormatInt(rs.resp.size(), 10)
		if v := h["Content-Length"]; len(v) == 1 {
			v[0] = n // the worker's own slice: no allocation
		} else {
			h["Content-Length"] = []string{n}
		}
	}
	w.WriteHeader(resp.StatusCode)
	if rs.resp.size() == 0 {
		return done
	}
	if rs.resp.inMemory() && rs.resp.size() <= largeWrite {
		w.Write(rs.resp.bytes())
		return done
	}
	s.writeLarge(rs)
	return done
}

// writeLarge sends a large buffered body with a send deadline pushed
// forward per chunk (nginx send_timeout), so a client that stops reading
// is dropped instead of holding memory or a temp file forever.
func (s *Server) writeLarge(rs *reqState) {
	w := &rs.rw
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	const chunk = 256 << 10
	if rs.resp.inMemory() {
		b := rs.resp.bytes()
		for len(b) > 0 {
			n := min(len(b), chunk)
			rc.SetWriteDeadline(time.Now().Add(sendTimeout))
			if _, err := w.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
		return
	}
	f, err := rs.resp.file()
	if err != nil {
		s.logf("%v", err)
		rs.abort = true
		return
	}
	for left := rs.resp.size(); left > 0; {
		rc.SetWriteDeadline(time.Now().Add(sendTimeout))
		n, err := io.CopyN(w, f, min(left, chunk))
		left -= n
		if err != nil {
			return
		}
	}
}

// stream relays a response as it comes (X-Accel-Buffering: no or
// text/event-stream), flushing each chunk; the worker is held until the end.
// st.timeout then bounds the silence between two chunks.
func (s *Server) stream(rs *reqState, r *http.Request, st *settings, wk *worker, c *upConn, resp *http.Response) outcome {
	w := &rs.rw
	copyHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	w.Flush()
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:cap(*bp)]
	clean := false
	for {
		if st.timeout > 0 {
			c.c.SetReadDeadline(time.Now().Add(st.timeout))
		}
		n, err := resp.Body.Read(buf)
		if n > 0 {
			rc.SetWriteDeadline(time.Now().Add(sendTimeout))
			if _, werr := w.Write(buf[:n]); werr != nil {
				break // the client left; closing the connection tells the worker
			}
			w.Flush()
		}
		if err == io.EOF {
			clean = true
			break
		}
		if err != nil {
			if isTimeout(err) {
				s.metrics.upstreamError(kindTimeout)
				s.logf("worker %s: streamed response silent for %s; cut", wk.id, st.timeout)
			} else {
				s.metrics.upstreamError(kindBadResponse)
				s.logf("worker %s: streamed response broke: %v", wk.id, err)
			}
			rs.abort = true
			break
		}
	}
	s.rt.release(wk, c, clean && !resp.Close && c.br.Buffered() == 0)
	return done
}

// timedOut answers 504, drops the connection, and takes the worker out of
// routing: the supervisor dumps and replaces it.
func (s *Server) timedOut(rs *reqState, wk *worker, c *upConn, st *settings) outcome {
	s.metrics.upstreamError(kindTimeout)
	s.logf("worker %s: no answer within %s: 504, worker reported to the supervisor", wk.id, st.timeout)
	s.rt.noteTimeout(wk)
	s.rt.release(wk, c, false)
	plainError(&rs.rw, http.StatusGatewayTimeout, fmt.Sprintf("berth: the worker did not answer within %s\n", st.timeout))
	return done
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// streams says whether a response is relayed unbuffered.
func streams(h http.Header) bool {
	if v := h["X-Accel-Buffering"]; len(v) > 0 && strings.EqualFold(strings.TrimSpace(v[0]), "no") {
		return true
	}
	if v := h["Content-Type"]; len(v) > 0 && len(v[0]) >= len("text/event-stream") && strings.EqualFold(v[0][:len("text/event-stream")], "text/event-stream") {
		return true
	}
	return false
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// copyHeaders copies a worker's response headers minus the hop-by-hop ones
// (RFC 9110 7.6.1, with those named in Connection) and X-Accel-Buffering.
func copyHeaders(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Te", "Trailer", "Upgrade",
			"X-Accel-Buffering", "Content-Length":
			continue
		}
		if len(conn) > 0 && listedIn(conn, k) {
			continue
		}
		dst[k] = vv
	}
	if cl, ok := src["Content-Length"]; ok {
		dst["Content-Length"] = cl // replaced by the buffered size when there is a body
	}
	if _, ok := src["Content-Type"]; !ok {
		dst["Content-Type"] = nil // net/http must not sniff one: relay as is
	}
}

// listedIn says whether header name k is a token of a Connection header.
func listedIn(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			i := strings.IndexByte(v, ',')
			tok := v
			if i >= 0 {
				tok, v = v[:i], v[i+1:]
			} else {
				v = ""
			}
			if strings.EqualFold(strings.TrimSpace(tok), k) {
				return true
			}
		}
	}
	return false
}

// send writes the request on c (nil: a new connection), replacing pooled
// connections the worker had closed. On failure it has released the worker
// and returns a nil connection and the outcome.
func (s *Server) send(rs *reqState, r *http.Request, st *settings, wk *worker, c *upConn, pkt []byte, bodyInPkt bool, start time.Time) (*upConn, outcome) {
	for {
		if c == nil {
			var err error
			if c, err = dialWorker(wk); err != nil {
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					// The proxy's limit, not the worker's fault: the worker
					// stays in routing.
					s.rt.release(wk, nil, false)
					return nil, outOfFiles
				}
				s.metrics.upstreamError(kindDial)
				s.logf("worker %s: connect %s: %v", wk.id, wk.socket, err)
				s.rt.noteDialFailure(wk)
				s.rt.release(wk, nil, false)
				return nil, retryDial
			}
		}
		if st.timeout > 0 {
			c.c.SetDeadline(start.Add(st.timeout))
			c.deadline = true
		} else if c.deadline {
			c.c.SetDeadline(time.Time{})
			c.deadline = false
		}
		c.cnt.n = 0
		_, err := c.c.Write(pkt)
		if err != nil && c.reused && !isTimeout(err) {
			// A pooled connection the worker closed while it sat idle (on
			// a unix socket that is EPIPE at once): not the request's
			// fault and not its one retry; use another connection.
			c = s.staleConn(wk, c)
			continue
		}
		out := retryWrite // the packet did not go out: the worker has nothing
		if err == nil && !bodyInPkt {
			out = failed502 // the worker may have begun on the packet
			if rs.body.inMemory() {
				_, err = c.c.Write(rs.body.bytes())
			} else {
				var f *os.File
				if f, err = rs.body.file(); err == nil {
					_, err = io.Copy(c.c, f)
				}
			}
		}
		if err != nil {
			if isTimeout(err) {
				return nil, s.timedOut(rs, wk, c, st)
			}
			s.metrics.upstreamError(kindWrite)
			s.rt.release(wk, c, false)
			if out == failed502 {
				s.metrics.notRetried.Inc()
				s.logf("worker %s: sending the body of %s %s failed after the request went out (%v): 502; not replayed", wk.id, r.Method, r.URL.Path, err)
			}
			return nil, out
		}
		return c, done
	}
}

// handoff sends a queued request's packet on the worker just granted to
// it, from the goroutine that freed the worker. Any failure leaves the
// work to the waiter (sent false, c nil when c was broken).
func (s *Server) handoff(job *sendJob, g grant) grant {
	c := g.c
	if c == nil {
		var err error
		if c, err = dialWorker(g.w); err != nil {
			return g
		}
	}
	g.start = time.Now()
	if job.timeout > 0 {
		c.c.SetDeadline(g.start.Add(job.timeout))
		c.deadline = true
	} else if c.deadline {
		c.c.SetDeadline(time.Time{})
		c.deadline = false
	}
	c.cnt.n = 0
	if _, err := c.c.Write(job.pkt); err != nil {
		if c.reused {
			s.metrics.upstreamError(kindStale)
			s.rt.noteStale(g.w)
		}
		c.close()
		g.c = nil
		return g
	}
	g.c, g.sent = c, true
	return g
}

// staleConn drops a pooled connection the worker had closed and returns
// another pooled one, or nil to dial.
func (s *Server) staleConn(wk *worker, c *upConn) *upConn {
	s.metrics.upstreamError(kindStale)
	c.close()
	s.rt.noteStale(wk)
	return s.rt.takeIdle(wk)
}

// takeIdle returns another pooled connection of w, or nil.
func (rt *router) takeIdle(w *worker) *upConn {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if n := len(w.idle); n > 0 {
		c := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		return c
	}
	return nil
}
