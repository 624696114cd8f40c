package proxy

// exchange.go: the upstream exchange. A request that is not a static file
// is buffered, given a worker by the router, written to it over the uwsgi
// protocol, and its answer relayed; failures decide between a retry on
// another worker and an error page.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/berth-dev/berth/proxy/http1"

	"github.com/berth-dev/berth/proxy/rawsock"

	"github.com/berth-dev/berth/proxy/uwsgi"
)

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

// readBody reads the whole request body into rs.body before a worker or
// upstream is taken, so a slow upload holds only this goroutine, and sets
// rs.info.ContentLength. A response other than next answers the client
// (413, 408, 400) or says it is gone.
func (s *Server) readBody(rs *reqState, r *http.Request, st *settings) (hasBody bool, resp response) {
	w := &rs.rw
	// HTTP/2 gives every request a Body; one whose HEADERS ended the
	// stream has ContentLength 0 and nothing to read.
	hasBody = r.Body != nil && r.Body != http.NoBody && (r.ProtoMajor < 2 || r.ContentLength != 0)
	if hasBody && st.maxBody > 0 && r.ContentLength > st.maxBody {
		return hasBody, s.tooLarge(rs, st)
	}
	if hasBody {
		rc := http.NewResponseController(w.w)
		rs.body.reset(st.bodyBuffer, s.opts.TempDir)
		rs.body.expect(r.ContentLength) // -1 for chunked and HTTP/2 without one
		err := rs.body.readFrom(r.Body, st.maxBody, func() { rc.SetReadDeadline(time.Now().Add(clientBodyTimeout)) })
		// net/http watches the connection once the body is read; a stale
		// deadline would cancel the request's context.
		rc.SetReadDeadline(time.Time{})
		switch {
		case errors.Is(err, errBodyTooLarge):
			return hasBody, s.tooLarge(rs, st)
		case err != nil:
			var ne net.Error
			w.Header().Set("Connection", "close")
			if errors.As(err, &ne) && ne.Timeout() {
				return hasBody, berthError(rs, http.StatusRequestTimeout, "berth: the request body did not arrive in time\n")
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return hasBody, response{src: srcNone} // client gone: 499
			}
			return hasBody, berthError(rs, http.StatusBadRequest, "berth: cannot read the request body: "+err.Error()+"\n")
		}
		rs.info.ContentLength = strconv.FormatInt(rs.body.size(), 10)
	} else if _, ok := r.Header["Content-Length"]; ok {
		rs.info.ContentLength = "0"
	}
	return hasBody, response{src: srcNext}
}

// workerExchange sends r to a worker of rs.rt's pool (uwsgi or ASGI) and
// returns its answer, trying a second worker when the first never had the
// request.
func (s *Server) workerExchange(rs *reqState, r *http.Request, st *settings, hasBody bool) response {
	rs.bodiless = !hasBody || rs.body.size() == 0
	bodyInPkt := !hasBody || (rs.body.inMemory() && rs.body.size() <= bodyInPacket)
	compact := rs.rt.allCompact.Load()
	pkt, err := s.packet(rs, r, compact, hasBody && bodyInPkt)
	if err != nil {
		return berthError(rs, http.StatusRequestHeaderFieldsTooLarge, "berth: "+err.Error()+"\n")
	}

	var avoid *worker
	for attempt := 0; ; attempt++ {
		var job *sendJob
		if bodyInPkt {
			rs.job = sendJob{pkt: pkt, timeout: st.timeout, compact: compact}
			job = &rs.job
		}
		g, waited, err := rs.rt.acquire(r.Context().Done(), st, avoid, job)
		if waited > 0 {
			s.metrics.queueWait.Observe(waited.Seconds())
		}
		if err != nil {
			return s.unavailable(rs, st, err)
		}
		rs.worker, rs.wsock = g.w.id, g.w.socket
		granted := time.Now()
		var out outcome
		var resp response
		if g.w.asgi {
			out, resp = s.asgiExchange(rs, r, st, g)
		} else {
			if g.w.compact != compact {
				// The worker set changed between building the packet and
				// the grant (handoff skips such a grant): rebuild it. Rare.
				compact = g.w.compact
				if pkt, err = s.packet(rs, r, compact, hasBody && bodyInPkt); err != nil {
					g.w.rt.release(g.w, g.c, true)
					return berthError(rs, http.StatusRequestHeaderFieldsTooLarge, "berth: "+err.Error()+"\n")
				}
			}
			out, resp = s.uwsgiExchange(rs, r, st, g, pkt, bodyInPkt)
		}
		if st.logUp && rs.up.open && resp.src != srcStream {
			rs.up.end(time.Now())
		}
		switch out {
		case done:
			if resp.src != srcStream && !rs.detached && !resp.failed {
				rs.rt.observe(time.Since(granted))
			}
			return resp
		case outOfFiles:
			return s.unavailable(rs, st, errOutOfFiles)
		}
		// Only a request the worker never had is sent to another one. One
		// it had read may be what killed it (a query of death): replaying
		// it would kill the next worker too, so it gets 502.
		if reason := out.retryReason(); reason != "" && attempt == 0 {
			s.metrics.retries.WithLabelValues(reason).Inc()
			avoid = g.w
			continue
		}
		return backendFailed(rs, http.StatusBadGateway, "berth: the worker failed to answer\n")
	}
}

// packet builds the request packet for a worker of the given kind in
// rs.pkt, with the buffered body appended when withBody.
func (s *Server) packet(rs *reqState, r *http.Request, compact, withBody bool) ([]byte, error) {
	pkt, err := uwsgi.AppendPacket(rs.pkt, r, &rs.info, compact)
	if err == nil && withBody {
		pkt = append(pkt, rs.body.bytes()...)
	}
	rs.pkt = pkt
	return pkt, err
}

func (s *Server) tooLarge(rs *reqState, st *settings) response {
	rs.rw.Header().Set("Connection", "close")
	return berthError(rs, http.StatusRequestEntityTooLarge,
		fmt.Sprintf("berth: the request body is larger than max_body_size (%d bytes)\n", st.maxBody))
}

func (s *Server) unavailable(rs *reqState, st *settings, err error) response {
	var kind, msg string
	switch err {
	case errNoWorker:
		// The router logs these, every 5 s with a count: the cause is
		// the workers, not one request.
		kind, msg = kindNoWorker, "berth: no worker is ready to serve this request; retry later\n"
	case errQueueFull:
		kind, msg = kindQueueFull, "berth: every worker is busy and the queue is full; retry later\n"
		s.log503(rs, "every worker is busy and the queue is full (proxy.queue.size)")
	case errQueueWait:
		kind, msg = kindQueueFull, fmt.Sprintf("berth: every worker is busy and the queue would not reach this request within %s; retry later\n", st.queueTimeout)
		s.log503(rs, "every worker is busy and the queue ahead would not be served within proxy.queue.timeout at the workers' measured pace")
	case errOutOfFiles:
		kind, msg = kindNoFiles, "berth: the proxy has no file descriptor left (raise ulimit -n); retry later\n"
		s.noFilesLog(rs)
	case errQueueTimeout:
		kind, msg = kindQueueTimeout, fmt.Sprintf("berth: no worker became free within %s; retry later\n", st.queueTimeout)
		s.log503(rs, "no worker became free within proxy.queue.timeout")
	default: // the client left while queued: nothing to answer
		return response{src: srcNone}
	}
	s.metrics.upstreamError(kind)
	rs.rw.Header().Set("Retry-After", "1")
	return backendFailed(rs, http.StatusServiceUnavailable, msg)
}

// noFilesLog says, at most every 5 seconds, that the proxy ran out of
// file descriptors: the cause of a burst of 503s an operator must see.
func (s *Server) noFilesLog(rs *reqState) {
	now := time.Now().UnixNano()
	last := s.lastNoFiles.Load()
	if now-last < int64(5*time.Second) || !s.lastNoFiles.CompareAndSwap(last, now) {
		return
	}
	s.reqLogf(rs, "out of file descriptors: answering 503 to requests that need a worker connection; raise the proxy's ulimit -n (RLIMIT_NOFILE)")
}

// uwsgiExchange sends the request on g's worker and reads its answer:
// buffered whole (the worker is given back at once), or a stream that holds
// the worker until the respond stage has relayed it. It always releases the
// worker slot.
func (s *Server) uwsgiExchange(rs *reqState, r *http.Request, st *settings, g grant, pkt []byte, bodyInPkt bool) (outcome, response) {
	wk := g.w
	c := g.c
	start := time.Now()
	sent := g.sent
	if sent {
		start = g.start
	}
	rs.up.begin(start)
	h := rs.rw.Header()
	var hd http1.Head
	var err error
	for ; ; sent = false {
		if !sent {
			var out outcome
			var resp response
			if c, out, resp = s.send(rs, r, st, wk, c, pkt, bodyInPkt, start); c == nil {
				return out, resp
			}
		}
		hd, err = http1.ReadHead(c.br, h, r.Method, &rs.head)
		if err == nil {
			break
		}
		clear(h)
		if isTimeout(err) {
			return done, s.timedOut(rs, wk, c, st)
		}
		var malformed *http1.BadResponse
		if errors.As(err, &malformed) || c.cnt.n > 0 {
			s.metrics.upstreamError(kindBadResponse)
			s.reqLogf(rs, "worker %s: bad response: %v", wk.id, err)
			wk.rt.release(wk, c, false)
			return failed502, response{}
		}
		if c.reused && !wk.rt.provenKeepalive(wk) {
			// A worker that never answered on a reused connection (plain
			// uWSGI closes after each response, even a framed one) closed
			// this one as we wrote: stale, whatever the method. (berth's
			// own workers count as proven from the start: setWorkers.)
			c = s.staleConn(wk, c)
			continue
		}
		s.metrics.upstreamError(kindReset)
		wk.rt.release(wk, c, false)
		// A unix socket closed with data still unread reports ECONNRESET,
		// one whose reader took everything reports EOF. A bodiless
		// request that is partly unread never reached the app.
		if errors.Is(err, syscall.ECONNRESET) && rs.bodiless {
			s.reqLogf(rs, "worker %s: closed the connection before reading %s %s; retrying it on another worker", wk.id, r.Method, r.URL.Path)
			return retryUnread, response{}
		}
		s.metrics.notRetried.Inc()
		s.reqLogf(rs, "worker %s: closed the connection after reading %s %s, without answering (it died or was killed): 502; not replayed on another worker, which it could kill too", wk.id, r.Method, r.URL.Path)
		return failed502, response{}
	}
	if hd.Status == http.StatusSwitchingProtocols {
		clear(h)
		s.metrics.upstreamError(kindBadResponse)
		s.reqLogf(rs, "worker %s: answered 101 Switching Protocols, which berth does not relay", wk.id)
		wk.rt.release(wk, c, false)
		return failed502, response{}
	}
	rs.rbody.Reset(c.br, hd)
	if hd.Stream {
		rs.wstream = workerStream{s: s, rs: rs, st: st, wk: wk, c: c, hd: hd}
		return done, response{src: srcStream, status: hd.Status, noBody: hd.NoBody, stream: &rs.wstream}
	}

	// Buffer the whole body and give the worker back.
	rs.resp.reset(respMemLimit, s.opts.TempDir)
	if !hd.NoBody && !hd.Chunked {
		rs.resp.expect(hd.Length) // one buffer of its size, or the file from the start
	}
	if err := rs.resp.readFrom(&rs.rbody, 0, nil); err != nil {
		clear(h)
		if isTimeout(err) {
			return done, s.timedOut(rs, wk, c, st)
		}
		s.metrics.upstreamError(kindBadResponse)
		s.reqLogf(rs, "worker %s: reading the response body: %v", wk.id, err)
		wk.rt.release(wk, c, false)
		return failed502, response{}
	}
	if st.logUp {
		rs.up.end(time.Now())
	}
	reuse := !hd.Close && c.br.Buffered() == 0
	wk.rt.release(wk, c, reuse)
	return done, response{src: srcSpool, status: hd.Status, noBody: hd.NoBody}
}

// workerStream is a worker's streamed answer (X-Accel-Buffering: no or
// text/event-stream): the worker is held until the end, and st.timeout
// bounds the silence between two pieces.
type workerStream struct {
	s   *Server
	rs  *reqState
	st  *settings
	wk  *worker
	c   *upConn
	hd  http1.Head
	buf *[]byte
}

func (ws *workerStream) next() ([]byte, error) {
	if ws.buf == nil {
		ws.buf = getBuf()
	}
	if ws.st.timeout > 0 {
		ws.c.c.SetReadDeadline(time.Now().Add(ws.st.timeout))
	}
	buf := (*ws.buf)[:cap(*ws.buf)]
	n, err := ws.rs.rbody.Read(buf)
	if err != nil && err != io.EOF {
		if isTimeout(err) {
			ws.s.metrics.upstreamError(kindTimeout)
			ws.s.reqLogf(ws.rs, "worker %s: streamed response silent for %s; cut", ws.wk.id, ws.st.timeout)
		} else {
			ws.s.metrics.upstreamError(kindBadResponse)
			ws.s.reqLogf(ws.rs, "worker %s: streamed response broke: %v", ws.wk.id, err)
		}
	}
	return buf[:n], err
}

func (ws *workerStream) end(clean bool) {
	if ws.buf != nil {
		putBuf(ws.buf)
		ws.buf = nil
	}
	if ws.st.logUp {
		ws.rs.up.end(time.Now())
	}
	// An unclean end closes the connection, which tells the worker.
	ws.wk.rt.release(ws.wk, ws.c, clean && !ws.hd.Close && ws.c.br.Buffered() == 0)
}

// timedOut answers 504, drops the connection, and takes the worker out of
// routing: the supervisor dumps and replaces it.
func (s *Server) timedOut(rs *reqState, wk *worker, c *upConn, st *settings) response {
	s.metrics.upstreamError(kindTimeout)
	s.reqLogf(rs, "worker %s: no answer within %s: 504, worker reported to the supervisor", wk.id, st.timeout)
	wk.rt.noteTimeout(wk)
	wk.rt.release(wk, c, false)
	return backendFailed(rs, http.StatusGatewayTimeout, fmt.Sprintf("berth: the worker did not answer within %s\n", st.timeout))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeRequest writes a request packet to w on c, or on a new connection
// when c is nil, with the exchange's deadline counted from start, and body
// after it when not nil (an in-memory body too large to be copied into the
// packet): one writev, so one system call when the socket takes both. It
// is the one place a request goes out, for the first send and for the
// handoff of a queued request. It returns the bytes written; a dial error
// comes back with a nil connection, any other error with c, for the caller
// to judge and close.
func writeRequest(w *worker, c *upConn, pkt, body []byte, timeout time.Duration, start time.Time) (*upConn, int64, error) {
	if c != nil && c.reused && c.unsolicited() {
		return c, 0, errStale // the caller drops it as a stale pooled connection
	}
	if c == nil {
		var err error
		if c, err = dialWorker(w); err != nil {
			return nil, 0, err
		}
	}
	if timeout > 0 {
		c.c.SetDeadline(start.Add(timeout))
		c.deadline = true
	} else if c.deadline {
		c.c.SetDeadline(time.Time{})
		c.deadline = false
	}
	c.cnt.n = 0
	if body == nil {
		n, err := c.raw.Write(pkt)
		return c, int64(n), err
	}
	iov := [2][]byte{pkt, body}
	n, err := c.raw.Writev(iov[:])
	return c, n, err
}

// errStale: a pooled connection found closed by the worker, or holding
// bytes nobody asked for, before the request was written on it.
var errStale = errors.New("the pooled worker connection was closed or holds unsolicited bytes")

// send writes the request on c (nil: a new connection), replacing pooled
// connections the worker had closed. On failure it has released the worker
// and returns a nil connection, the outcome and, for a timeout, the 504.
func (s *Server) send(rs *reqState, r *http.Request, st *settings, wk *worker, c *upConn, pkt []byte, bodyInPkt bool, start time.Time) (*upConn, outcome, response) {
	var body []byte
	if !bodyInPkt && rs.body.inMemory() {
		body = rs.body.bytes()
	}
	for {
		var n int64
		var err error
		c, n, err = writeRequest(wk, c, pkt, body, st.timeout, start)
		if c == nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// The proxy's limit, not the worker's fault: the worker
				// stays in routing.
				wk.rt.release(wk, nil, false)
				return nil, outOfFiles, response{}
			}
			s.metrics.upstreamError(kindDial)
			s.reqLogf(rs, "worker %s: connect %s: %v", wk.id, wk.socket, err)
			wk.rt.noteDialFailure(wk)
			wk.rt.release(wk, nil, false)
			return nil, retryDial, response{}
		}
		sent := n >= int64(len(pkt)) // the packet went out whole
		if err != nil && c.reused && !isTimeout(err) && !sent {
			// A pooled connection the worker closed while it sat idle (on
			// a unix socket that is EPIPE at once): not the request's
			// fault and not its one retry; use another connection.
			c = s.staleConn(wk, c)
			continue
		}
		out := retryWrite // the packet did not go out: the worker has nothing
		if !bodyInPkt && (err == nil || sent) {
			out = failed502 // the worker may have begun on the packet
			if err == nil && body == nil {
				var f *os.File
				if f, err = rs.body.file(); err == nil {
					_, err = io.Copy(c.c, f)
				}
			}
		}
		if err != nil {
			if isTimeout(err) {
				return nil, done, s.timedOut(rs, wk, c, st)
			}
			s.metrics.upstreamError(kindWrite)
			wk.rt.release(wk, c, false)
			if out == failed502 {
				s.metrics.notRetried.Inc()
				s.reqLogf(rs, "worker %s: sending the body of %s %s failed after the request went out (%v): 502; not replayed", wk.id, r.Method, r.URL.Path, err)
			}
			return nil, out, response{}
		}
		return c, done, response{}
	}
}

// handoff sends a queued request's packet on the worker just granted to
// it, from the goroutine that freed the worker. Any failure leaves the
// work to the waiter (sent false, c nil when c was broken).
func (s *Server) handoff(job *sendJob, g grant) grant {
	if g.w.asgi || job.compact != g.w.compact {
		// An ASGI worker: the job is a uwsgi packet, the waiter speaks
		// ASGI itself. Another encoding: the waiter rebuilds its packet.
		return g
	}
	start := time.Now()
	c, _, err := writeRequest(g.w, g.c, job.pkt, nil, job.timeout, start)
	if err != nil {
		if c != nil {
			if c.reused {
				s.metrics.upstreamError(kindStale)
				g.w.rt.noteStale(g.w)
			}
			c.close()
		}
		g.c = nil
		return g
	}
	g.c, g.sent, g.start = c, true, start
	return g
}

// staleConn drops a pooled connection the worker had closed and returns
// another pooled one, or nil to dial.
func (s *Server) staleConn(wk *worker, c *upConn) *upConn {
	s.metrics.upstreamError(kindStale)
	c.close()
	wk.rt.noteStale(wk)
	return wk.rt.takeIdle(wk)
}

// upConn is one connection to a worker, owned by one request at a time.
type upConn struct {
	c *net.UnixConn
	sockIO
	w         *worker
	idleSince int64
	reused    bool
	deadline  bool // a deadline is set and must be cleared before reuse
}

// sockIO is how the proxy reads and writes a connection to a worker or an
// upstream server: raw system calls, and a counted, buffered reader for
// the response.
type sockIO struct {
	raw *rawsock.Sock
	cnt countingReader
	br  *bufio.Reader
}

// newSockIO sets up sockIO for a connection; on error the caller closes it.
func newSockIO(c net.Conn) (sockIO, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return sockIO{}, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return sockIO{}, err
	}
	raw := rawsock.New(rc)
	s := sockIO{raw: raw, cnt: countingReader{raw: raw}}
	return s, nil
}

// unsolicited says whether the peer sent bytes on this pooled connection
// while nobody asked: more than its last response framed, or an answer to
// nothing. They would be read as the next request's response, so such a
// connection is dropped (nginx's keepalive module closes an idle upstream
// connection that becomes readable). One non-blocking peek: EAGAIN is the
// clean case.
func (s *sockIO) unsolicited() bool {
	return s.br.Buffered() > 0 || s.raw.Peek()
}

// countingReader counts the bytes a worker sent, to tell "failed before any
// response byte" (retryable) from a broken response.
type countingReader struct {
	raw *rawsock.Sock
	n   int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.raw.Read(p)
	r.n += int64(n)
	return n, err
}

func dialWorker(w *worker) (*upConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: w.socket, Net: "unix"})
	if err != nil {
		return nil, err
	}
	u := &upConn{c: c, w: w}
	if u.sockIO, err = newSockIO(c); err != nil {
		c.Close()
		return nil, err
	}
	u.br = bufio.NewReaderSize(&u.cnt, upstreamReadBuf) // u.cnt's final address
	return u, nil
}

func (u *upConn) close() { u.c.Close() }
