package proxy

// conn.go is berth's HTTP/1.1 server: one goroutine per client connection
// reads request heads through the http1.Framer, parses them
// (http1.ParseRequest), runs the pipeline (ServeHTTP) on a Request, URL,
// header maps and response writer the connection reuses, and writes the
// response head and body together (writev). It replaces net/http's server
// for HTTP/1.1, plain and TLS; HTTP/2 stays with x/net.
//
// What it does not spend per request, and net/http did: a goroutine (the
// background read that notices a client leaving: the housekeeping tick
// polls connections waiting on a backend for POLLRDHUP instead, as nginx
// watches EPOLLRDHUP), a context, a response struct, header maps, a bufio
// writer, deadline calls (timeouts are timestamps the tick checks, and
// only an expired one touches the socket's deadline, to wake whoever
// waits on it). A connection waiting for its next request holds no buffer:
// its input buffer goes back to the pool when it has nothing buffered and
// is taken again only once bytes arrive (rawsock.ReadPooled).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-dev/berth/proxy/http1"
	"github.com/berth-dev/berth/proxy/rawsock"
	"golang.org/x/net/http/httpguts"
)

const (
	// inBufSize is a connection's input buffer while it has bytes to
	// read; heads up to http1.MaxHead grow it.
	inBufSize = 4 << 10
	// outBufSize is the body a response buffers before it writes: a
	// small answer goes out with its head in one write.
	outBufSize = 16 << 10
	// lingerTime bounds how long a connection closed with unread input
	// drains it (after shutting down its write side), so the client reads
	// the answer instead of a reset.
	lingerTime = 500 * time.Millisecond
	// manyConns: above this many open connections, one idle for parkAfter
	// waits without a goroutine (idlepark.go). Below it, waiting on the
	// goroutine saves the epoll_ctl and the goroutine start.
	manyConns = 256
	// parkAfter is how long a connection is idle before the tick parks it.
	// A busy keep-alive connection, idle for microseconds between requests,
	// never parks: parking it at once cost every request an epoll_ctl and
	// a goroutine start (with 500 slow clients open, wrk's connections
	// kept 74% of their throughput, 98% behind nginx).
	parkAfter = time.Second
)

// Connection phases, for the timeouts the tick checks.
const (
	phIdle    int32 = iota // waiting for a request: idleTimeout
	phHead                 // a head partly read: readHeaderTimeout
	phBody                 // reading the request body: clientBodyTimeout
	phHandler              // in the pipeline, neither reading nor writing: watched for a client that left
	phWrite                // writing: sendTimeout, or the deadline the pipeline set
	phExpired              // a timeout fired: the socket's deadline is in the past
	phPark                 // idle long enough: the tick woke the read to park the connection (parkMu)
)

var (
	inBufs  = sync.Pool{New: func() any { b := make([]byte, 0, inBufSize); return &b }}
	outBufs = sync.Pool{New: func() any { b := make([]byte, 0, outBufSize); return &b }}
	// aLongTimeAgo is the deadline that wakes a blocked read or write.
	aLongTimeAgo = time.Unix(1, 0)
)

// h1conn is one client connection.
type h1conn struct {
	s   *Server
	nc  net.Conn
	raw *rawsock.Sock   // nil for TLS: reads and writes go through nc
	rc  syscall.RawConn // the TCP socket, for PeerGone; nil for unix sockets without one
	fd  int32           // the socket's descriptor, for idlepark.go; -1: none (TLS)
	tls bool
	ci  *connInfo
	f   http1.Framer

	// Input: in[:n] read and scanned by the Framer, in[:ok] let through,
	// in[:r] consumed. in is nil while nothing is held.
	in    []byte
	inp   *[]byte
	n, ok int
	r     int
	rerr  error // the read error that ended the input

	// q is the request being served; nil between requests, when its
	// state is back in the pool.
	q      *h1req
	remote string        // RemoteAddr
	gone   chan struct{} // closed once the client is seen gone
	goneMu sync.Once

	// Timeouts: the phase and when it began (or last made progress), and
	// the deadlines the pipeline set (unix nanos, 0: none).
	phase atomic.Int32
	since atomic.Int64
	rdl   atomic.Int64
	wdl   atomic.Int64

	hijacked bool
	parked   atomic.Bool // waiting in the server's idle epoll set (idlepark.go)
	parkNow  bool        // the tick asked (phPark): serve parks the connection
	// parkMu orders the tick's phIdle -> phPark and read deadline in the
	// past with the goroutine's undoing of both, so a deadline the tick
	// sets is never left behind on a connection that has moved on.
	parkMu sync.Mutex
}

// serveConn serves one accepted connection until it closes.
func (s *Server) serveConn(nc net.Conn) {
	c := &h1conn{s: s, nc: nc, gone: make(chan struct{}), fd: -1}
	c.ci = newConnInfo(nc.RemoteAddr(), nc.LocalAddr())
	c.ci.h1 = c
	var inner net.Conn = nc
	if tc, ok := nc.(*tls.Conn); ok {
		c.tls, c.ci.tls = true, true
		inner = tc.NetConn()
	}
	if sc, ok := inner.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc = rc
			if !c.tls {
				c.raw = rawsock.New(rc)
				c.raw.SetPool(c.getIn, c.putIn)
			}
			rc.Control(func(fd uintptr) { c.fd = int32(fd) })
		}
	}
	c.remote = nc.RemoteAddr().String()
	if !s.h1.add(c) {
		nc.Close()
		return
	}
	c.phase.Store(phIdle)
	c.since.Store(s.clock.Load())
	c.serve()
}

// serve runs requests until the connection ends or goes to another
// goroutine (idle, with many connections open).
func (c *h1conn) serve() {
	for {
		if c.parkNow || c.n == c.r && c.s.h1.manyIdle.Load() {
			c.parkNow = false
			if c.n == c.r && c.fd >= 0 && c.tlsHoldsNothing() && c.s.idle.park(c) {
				return // its goroutine is started again when it turns readable
			}
		}
		if !c.serveOne() {
			c.close()
			return
		}
		if c.hijacked {
			c.s.h1.remove(c)
			return
		}
	}
}

// tlsHoldsNothing says, for a TLS connection, that crypto/tls holds none
// of the client's bytes, so the socket tells when more come: a read with a
// deadline in the past returns at once, with what it holds (kept in the
// input buffer, for the next head) or a timeout. Plain connections hold
// nothing beyond the input buffer.
func (c *h1conn) tlsHoldsNothing() bool {
	if !c.tls {
		return true
	}
	c.nc.SetReadDeadline(aLongTimeAgo)
	c.getIn()
	c.in = (*c.inp)[:0]
	k, _ := c.nc.Read(c.in[:cap(c.in)])
	c.nc.SetReadDeadline(time.Time{})
	if c.phase.Load() == phExpired {
		c.nc.SetReadDeadline(aLongTimeAgo) // the tick's expiry, not to be undone
	}
	if k > 0 {
		ok, m := c.f.Scan(c.in[:k])
		c.n, c.ok = m, ok
		c.in = c.in[:m]
		return false
	}
	c.putIn(nil)
	c.in = nil
	return true
}

func (c *h1conn) serveIdle() {
	if !c.serveOne() {
		c.close()
		return
	}
	if c.hijacked {
		c.s.h1.remove(c)
		return
	}
	c.serve()
}

// h1req is a request's state on a connection: the Request, URL, header
// maps, body reader and response writer, reused from a pool so that an
// idle connection holds none of it (nginx keeps a request's memory apart
// from its idle connection's the same way).
type h1req struct {
	req  *http.Request // its context is ctx
	url  url.URL
	body h1body
	w    h1writer
	ctx  connCtx
}

var h1reqs = sync.Pool{New: func() any {
	q := &h1req{}
	q.req = (&http.Request{Header: http.Header{}}).WithContext(&q.ctx)
	q.w.h = http.Header{}
	return q
}}

// acquire takes request state for the connection.
func (c *h1conn) acquire() *h1req {
	q := h1reqs.Get().(*h1req)
	q.ctx.c, q.body.c, q.w.c = c, c, c
	q.req.RemoteAddr = c.remote
	c.q = q
	return q
}

// release gives the request state back, unless a hijacked connection's
// relay still holds its Request.
func (c *h1conn) release(q *h1req) {
	c.q = nil
	if c.hijacked {
		return
	}
	q.ctx.c, q.w.c, q.w.req = nil, nil, nil
	q.body = h1body{} // no 100 Continue or error left for the next request
	q.req.Body = nil
	if cap(q.w.head) > 8<<10 {
		q.w.head = nil
	}
	h1reqs.Put(q)
}

// serveOne reads one request and answers it; false ends the connection.
func (c *h1conn) serveOne() bool {
	s := c.s
	head, rej, err := c.nextHead()
	if err == errPark {
		c.parkNow = true
		return true
	}
	if err != nil {
		return false // gone, timed out, or closed by Shutdown: nothing to answer
	}
	c.phase.Store(phHandler)
	q := c.acquire()
	defer c.release(q)
	r := q.req
	c.ci.refused = nil
	if rej == nil {
		rej = http1.ParseRequest(head, r, &q.url)
	}
	if rej == nil {
		rej = c.expect(r)
	}
	if rej != nil {
		c.refusedRequest(rej)
	} else if r.ContentLength != 0 {
		q.body.reset(r)
		r.Body = &q.body
	} else {
		r.Body = http.NoBody
	}
	q.w.reset(r)
	c.rdl.Store(0)
	c.wdl.Store(0)
	c.callHandler()
	if c.hijacked {
		return true
	}
	q.w.finish()
	q.w.release()
	keep := !q.w.closeAfter && !r.Close && c.ci.refused == nil && !s.shut.Load() && q.w.err == nil
	if keep && r.Body == &q.body && !q.body.discardBuffered() {
		keep = false // a body still on its way: closing is cheaper than reading it
	}
	if !keep {
		if q.w.err == nil && (c.n > c.r || r.Body == &q.body && !q.body.done) {
			c.linger()
		}
		return false
	}
	c.dropConsumed()
	if c.phase.CompareAndSwap(phHandler, phIdle) {
		c.since.Store(s.clock.Load())
	}
	return c.phase.Load() != phExpired
}

// callHandler runs the pipeline, turning its panics into a closed
// connection as net/http does: ErrAbortHandler quietly, others logged.
func (c *h1conn) callHandler() {
	q := c.q
	defer func() {
		if p := recover(); p != nil {
			q.w.closeAfter = true
			q.w.err = errAborted
			if p != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.logf("panic serving %s: %v\n%s", c.nc.RemoteAddr(), p, buf)
			}
		}
	}()
	c.s.ServeHTTP(&q.w, q.req)
}

var errAborted = errors.New("the handler aborted the response")

// expect applies RFC 9110 §10.1.1 as net/http did: 100-continue is
// answered when the body is first read (HTTP/1.1, a body announced); any
// other expectation is 417.
func (c *h1conn) expect(r *http.Request) *http1.Rejection {
	v, ok := r.Header["Expect"]
	if !ok {
		return nil
	}
	if len(v) == 1 && strings.EqualFold(v[0], "100-continue") {
		c.q.body.cont = r.ProtoMinor >= 1 && r.ContentLength != 0
		return nil
	}
	if r.ProtoMinor == 0 {
		return nil // HTTP/1.0 has no expectations
	}
	return &http1.Rejection{Status: http.StatusExpectationFailed, Reason: "unsupported expectation (only 100-continue is)",
		Line: r.Method + " " + r.RequestURI + " " + r.Proto}
}

// refusedRequest readies the stand-in request for a refused head: the
// pipeline's ingress answers it with the refusal (refusal()), and the
// connection closes after.
func (c *h1conn) refusedRequest(rej *http1.Rejection) {
	q := c.q
	r := q.req
	clear(r.Header)
	q.url = url.URL{Path: "/"}
	r.Method, r.URL, r.RequestURI, r.Host = http.MethodGet, &q.url, "/", ""
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1
	r.Body, r.ContentLength, r.TransferEncoding, r.Close = http.NoBody, 0, nil, true
	c.ci.refused = rej
}

// nextHead returns the next request head, or the Framer's refusal of it.
func (c *h1conn) nextHead() ([]byte, *http1.Rejection, error) {
	for {
		if c.ok > c.r {
			// The Framer lets a head through only whole.
			if end := headLen(c.in[c.r:c.ok]); end > 0 {
				head := c.in[c.r : c.r+end]
				c.r += end
				return head, nil, nil
			}
		}
		if rej := c.f.Rejected(); rej != nil {
			return nil, rej, nil
		}
		if ph := c.phase.Load(); c.n > c.r && (ph == phIdle || ph == phPark) {
			if !c.phase.CompareAndSwap(phIdle, phHead) && !c.cancelPark(phHead) {
				return nil, nil, os.ErrDeadlineExceeded
			}
			c.since.Store(c.s.clock.Load())
		}
		if err := c.fill(); err != nil {
			if c.cancelPark(phIdle) {
				c.rerr = nil // the tick's deadline, not the client's doing
				return nil, nil, errPark
			}
			return nil, nil, err
		}
	}
}

// errPark: the tick woke an idle connection's read to park it.
var errPark = errors.New("idle: to be parked")

// cancelPark undoes the tick's phPark, moving to phase ph with the read
// deadline cleared (a timeout the tick itself set then wins: phExpired).
// False when the connection was not in phPark.
func (c *h1conn) cancelPark(ph int32) bool {
	c.parkMu.Lock()
	defer c.parkMu.Unlock()
	if !c.phase.CompareAndSwap(phPark, ph) {
		return false
	}
	c.nc.SetReadDeadline(time.Time{})
	return true
}

// askPark is the tick's: an idle connection's read is woken (a deadline
// in the past) so that its goroutine parks it.
func (c *h1conn) askPark() {
	c.parkMu.Lock()
	defer c.parkMu.Unlock()
	if c.phase.CompareAndSwap(phIdle, phPark) {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

// headLen is the length of the head at the start of b, through its empty
// line; 0 when b holds no whole head.
func headLen(b []byte) int {
	i := 0
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// fill reads more bytes and lets the Framer judge them.
func (c *h1conn) fill() error {
	if c.rerr != nil {
		return c.rerr
	}
	if c.f.Broken() {
		return http1.ErrBadChunked
	}
	var k int
	var err error
	if c.in == nil && c.raw != nil {
		var b []byte
		b, k, err = c.raw.ReadPooled()
		if err == nil {
			c.in = b
		}
	} else {
		if c.in == nil {
			c.getIn()
			c.in = (*c.inp)[:0]
		}
		c.room()
		p := c.in[c.n:cap(c.in)]
		if c.raw != nil {
			k, err = c.raw.Read(p)
		} else {
			k, err = c.nc.Read(p)
		}
	}
	if k > 0 {
		c.since.Store(c.s.clock.Load())
		ok, m := c.f.Scan(c.in[:c.n+k])
		c.n, c.ok = m, ok
		c.in = c.in[:m]
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	c.rerr = err
	return err
}

// room makes space at the end of in: drops what was consumed, or grows
// it (a head larger than the buffer; the Framer refuses past MaxHead).
func (c *h1conn) room() {
	if c.n < cap(c.in) {
		return
	}
	if c.r > 0 {
		c.shift()
		return
	}
	nb := make([]byte, c.n, 2*cap(c.in))
	copy(nb, c.in[:c.n])
	c.putIn(nil)
	c.in = nb
}

// shift drops the consumed prefix of in.
func (c *h1conn) shift() {
	copy(c.in, c.in[c.r:c.n])
	c.f.Shift(c.r)
	c.n -= c.r
	c.ok -= c.r
	c.r = 0
	c.in = c.in[:c.n]
}

// dropConsumed gives the input buffer back when everything in it was
// consumed, so an idle connection holds none.
func (c *h1conn) dropConsumed() {
	if c.r == 0 {
		return
	}
	if c.r < c.n {
		c.shift()
		return
	}
	c.f.Shift(c.r)
	c.n, c.ok, c.r = 0, 0, 0
	c.putIn(nil)
	c.in = nil
}

func (c *h1conn) getIn() []byte {
	c.inp = inBufs.Get().(*[]byte)
	return (*c.inp)[:0]
}

func (c *h1conn) putIn([]byte) {
	if c.inp != nil {
		inBufs.Put(c.inp)
		c.inp = nil
	}
}

// linger shuts the write side and drains what the client still sends for
// a moment, so it reads the answer rather than a reset (net/http's
// closeWriteAndWait, nginx's lingering_close).
func (c *h1conn) linger() {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.nc.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(lingerTime))
	var scratch [4 << 10]byte
	for total := 0; total < 256<<10; {
		k, err := c.nc.Read(scratch[:])
		total += k
		if err != nil {
			return
		}
	}
}

// close ends the connection and gives its buffers back.
func (c *h1conn) close() {
	c.s.h1.remove(c)
	c.markGone()
	c.nc.Close()
	c.putIn(nil)
	c.in = nil
}

// markGone closes the connection's Done channel: the pipeline stops
// waiting for a backend on its behalf.
func (c *h1conn) markGone() {
	c.goneMu.Do(func() { close(c.gone) })
}

// check is the tick's look at one connection (now: the coarse clock). It
// returns true for a parked connection it took back to close: the caller
// closes it, outside the lock of the connection set.
func (c *h1conn) check(now int64) bool {
	ph := c.phase.Load()
	since := c.since.Load()
	var limit time.Duration
	switch ph {
	case phIdle, phPark:
		// phPark too: a connection the tick asked to park just as it
		// parked itself waits in the set in that phase.
		if c.s.shut.Load() || now-since > int64(c.s.to.idle) {
			if c.parked.Load() {
				return c.s.idle.unpark(c)
			}
			c.expire(ph, true)
			return false
		}
		if ph == phIdle && !c.parked.Load() && c.fd >= 0 && (c.s.h1.manyIdle.Load() || now-since >= int64(c.s.parkAfter) && c.s.h1.count.Load() > c.s.manyConns) {
			c.askPark()
		}
		return false
	case phHead:
		limit = c.s.to.head
	case phBody:
		// The pipeline's deadline (http.ResponseController), or the
		// timeout since the last read, whichever comes first.
		if dl := c.rdl.Load(); dl != 0 && now > dl {
			c.expire(ph, true)
			return false
		}
		limit = c.s.to.body
	case phWrite:
		if dl := c.wdl.Load(); dl != 0 && now > dl {
			c.expire(ph, false)
			return false
		}
		limit = c.s.to.send
	case phHandler:
		if c.rc != nil && rawsock.PeerGone(c.rc) {
			c.markGone()
		}
		return false
	default:
		return false
	}
	if now-since > int64(limit) {
		c.expire(ph, ph != phWrite)
	}
	return false
}

// expire wakes whoever waits on the socket with a timeout error.
func (c *h1conn) expire(ph int32, read bool) {
	if !c.phase.CompareAndSwap(ph, phExpired) {
		return
	}
	if read {
		c.nc.SetReadDeadline(aLongTimeAgo)
	} else {
		c.nc.SetWriteDeadline(aLongTimeAgo)
	}
}

// connCtx is every request's context on a connection: no deadline; Done
// when the client is seen gone; the connection's info as a value.
type connCtx struct{ c *h1conn }

func (x *connCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (x *connCtx) Done() <-chan struct{}       { return x.c.gone }
func (x *connCtx) Err() error {
	select {
	case <-x.c.gone:
		return context.Canceled
	default:
		return nil
	}
}
func (x *connCtx) Value(key any) any {
	switch key {
	case connKey{}:
		return x.c.ci
	case http.LocalAddrContextKey:
		return x.c.nc.LocalAddr()
	}
	return nil
}

// h1body is a request body: Content-Length or chunked, read through the
// Framer (whose judgement the chunked decoder relies on: it has checked
// every byte it lets through).
type h1body struct {
	c       *h1conn
	left    int64 // Content-Length: bytes to come; chunked: of the chunk
	chunked bool
	st      uint8 // chunked: where in the framing
	done    bool
	cont    bool // 100 Continue is due before the first read
	err     error
}

// Chunked decoding states.
const (
	csSize    uint8 = iota // chunk-size digits
	csLine                 // the rest of the chunk-size line, to its LF
	csData                 // chunk data
	csDataEnd              // the CRLF after chunk data
	csTrailer              // trailer lines, to the empty one
)

func (b *h1body) reset(r *http.Request) {
	b.left, b.chunked, b.st, b.done, b.err = r.ContentLength, r.ContentLength < 0, csSize, false, nil
	if b.chunked {
		b.left = 0
	}
}

func (b *h1body) Close() error { return nil }

func (b *h1body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	c := b.c
	if b.cont {
		b.cont = false
		c.q.w.writeContinue()
	}
	c.phase.Store(phBody)
	n, err := b.read(p)
	c.phase.Store(phHandler)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *h1body) read(p []byte) (int, error) {
	c := b.c
	for {
		if !b.chunked {
			if b.left == 0 {
				b.done = true
				return 0, io.EOF
			}
			if c.ok > c.r {
				k := copy(p[:min(int64(len(p)), b.left)], c.in[c.r:c.ok])
				c.r += k
				b.left -= k64(k)
				if b.left == 0 {
					b.done = true
				}
				return k, nil
			}
			if c.r == c.n && len(p) >= inBufSize && c.f.BodyLeft() == b.left {
				// Nothing buffered: straight into p, past the buffer.
				return b.direct(p)
			}
		} else if k, ok := b.chunk(p); ok {
			if k > 0 || b.done {
				if b.done && k == 0 {
					return 0, io.EOF
				}
				return k, nil
			}
			continue
		}
		if err := c.fill(); err != nil {
			return 0, bodyErr(err)
		}
	}
}

func k64(k int) int64 { return int64(k) }

// direct reads a Content-Length body into p without the buffer.
func (b *h1body) direct(p []byte) (int, error) {
	c := b.c
	p = p[:min(int64(len(p)), b.left)]
	var k int
	var err error
	if c.raw != nil {
		k, err = c.raw.Read(p)
	} else {
		k, err = c.nc.Read(p)
	}
	if k > 0 {
		c.since.Store(c.s.clock.Load())
		c.f.SkipBody(int64(k))
		b.left -= int64(k)
		if b.left == 0 {
			b.done = true
		}
		return k, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	c.rerr = err
	return 0, bodyErr(err)
}

// bodyErr is what a body read reports for a read error: the end of the
// stream is an unexpected one.
func bodyErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// chunk decodes chunked framing from the let-through bytes into p. ok is
// false when it needs more bytes; k > 0 is data; done marks the end.
func (b *h1body) chunk(p []byte) (k int, ok bool) {
	c := b.c
	for c.ok > c.r {
		ch := c.in[c.r]
		switch b.st {
		case csSize:
			if v, isHex := http1.Unhex(ch); isHex {
				b.left = b.left<<4 | int64(v)
				c.r++
				continue
			}
			b.st = csLine
		case csLine:
			c.r++
			if ch == '\n' {
				if b.left == 0 {
					b.st = csTrailer
				} else {
					b.st = csData
				}
			}
		case csData:
			k = copy(p[:min(int64(len(p)), b.left)], c.in[c.r:c.ok])
			c.r += k
			b.left -= int64(k)
			if b.left == 0 {
				b.st = csDataEnd
			}
			return k, true
		case csDataEnd:
			c.r++
			if ch == '\n' {
				b.st, b.left = csSize, 0
			}
		case csTrailer:
			// Lines until the empty one, "\r\n" (the Framer let through
			// only CRLF lines). left: 0 at a line's start, 1 after a CR
			// there, 2 in a line with more.
			c.r++
			switch {
			case ch == '\n' && b.left == 1:
				b.done = true
				return 0, true
			case ch == '\n':
				b.left = 0
			case ch == '\r' && b.left == 0:
				b.left = 1
			default:
				b.left = 2
			}
		}
	}
	return 0, false
}

// discardBuffered consumes what is left of the body when all of it is
// already here; false means some is still on its way.
func (b *h1body) discardBuffered() bool {
	if b.done {
		return true
	}
	if b.err != nil || b.cont {
		return false // broken, or the client still waits for 100 Continue
	}
	c := b.c
	if !b.chunked {
		if int64(c.ok-c.r) < b.left {
			return false
		}
		c.r += int(b.left)
		b.left, b.done = 0, true
		return true
	}
	var scratch [512]byte
	for !b.done {
		if _, ok := b.chunk(scratch[:]); !ok {
			return false
		}
	}
	return true
}

// h1writer is the response writer: the head is formed when the response
// commits (the handler is done, flushes, or outgrows the buffer) and goes
// out in the same write as the first body bytes.
type h1writer struct {
	c      *h1conn
	h      http.Header
	req    *http.Request
	status int
	clen   int64 // from the handler's Content-Length; -1: none
	// written counts the body bytes the handler wrote.
	written   int64
	committed bool // the head is out
	chunked   bool
	noBody    bool // HEAD, 1xx, 204, 304: no body goes out
	// closeAfter: the connection closes after this response.
	closeAfter    bool
	wroteContinue bool
	more          bool   // the next write is sendfile's: the head waits for it (MSG_MORE)
	body          []byte // buffered body bytes, not yet sent
	bodyp         *[]byte
	head          []byte // scratch for the head
	keys          []string
	err           error // the first write error: nothing more goes out
}

func (w *h1writer) reset(r *http.Request) {
	clear(w.h)
	w.req, w.status, w.clen, w.written = r, 0, -1, 0
	w.committed, w.chunked, w.noBody, w.closeAfter, w.wroteContinue = false, false, false, false, false
	w.err = nil
}

// release gives the body buffer back.
func (w *h1writer) release() {
	if w.bodyp != nil {
		*w.bodyp = (*w.bodyp)[:0]
		outBufs.Put(w.bodyp)
		w.bodyp, w.body = nil, nil
	}
	if cap(w.head) > 8<<10 {
		w.head = nil
	}
}

func (w *h1writer) Header() http.Header { return w.h }

func (w *h1writer) WriteHeader(code int) {
	if w.c.hijacked || w.status != 0 && w.status >= 200 {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.interim(code)
		return
	}
	w.status = code
	if cl := w.h["Content-Length"]; len(cl) > 0 {
		if n, err := strconv.ParseInt(strings.TrimSpace(cl[0]), 10, 64); err == nil && n >= 0 {
			w.clen = n
		} else {
			delete(w.h, "Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || !bodyAllowed(code)
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// interim sends a 1xx answer at once (103 Early Hints).
func (w *h1writer) interim(code int) {
	if w.committed || w.err != nil {
		return
	}
	w.head = append(w.head[:0], statusLine(code)...)
	w.head = w.appendFields(w.head, false)
	w.head = append(w.head, "\r\n"...)
	w.send(w.head, nil, nil)
}

func (w *h1writer) writeContinue() {
	if w.committed || w.wroteContinue || w.err != nil {
		return
	}
	w.wroteContinue = true
	w.send([]byte("HTTP/1.1 100 Continue\r\n\r\n"), nil, nil)
}

func (w *h1writer) Write(p []byte) (int, error) {
	if w.c.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			w.written += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	var short error
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		p = p[:w.clen-w.written]
		short = http.ErrContentLength
	}
	w.written += int64(len(p))
	if len(w.body)+len(p) <= outBufSize {
		if w.bodyp == nil {
			w.bodyp = outBufs.Get().(*[]byte)
			w.body = (*w.bodyp)[:0]
		}
		w.body = append(w.body, p...)
		return len(p), short
	}
	w.flush(p, false)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), short
}

func (w *h1writer) Flush() {
	if w.c.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.flush(nil, false)
}

// finish ends the response after the handler returned.
func (w *h1writer) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed && w.clen < 0 && !w.noBody {
		w.clen = int64(len(w.body)) // all of it is here: a Content-Length, not chunks
		w.h["Content-Length"] = []string{strconv.Itoa(len(w.body))}
	}
	if !w.committed && w.req.Method == http.MethodHead && w.clen < 0 && w.written > 0 && bodyAllowed(w.status) {
		w.h["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
	}
	w.flush(nil, true)
	if !w.noBody && w.clen >= 0 && w.written < w.clen {
		w.closeAfter = true // cut short: the client must not wait for the rest
	}
}

// flush sends the head if it is not out, the buffered body and p, framed
// as the response is (chunked: one chunk); final adds the last chunk.
func (w *h1writer) flush(p []byte, final bool) {
	if w.err != nil {
		return
	}
	var head []byte
	if !w.committed {
		w.commit()
		head = w.head
	}
	data := w.body
	n := len(data) + len(p)
	switch {
	case w.chunked && (n > 0 || final):
		var pre [20]byte
		cl := pre[:0]
		if n > 0 {
			cl = strconv.AppendInt(cl, int64(n), 16)
			cl = append(cl, "\r\n"...)
		}
		var post []byte
		switch {
		case n > 0 && final:
			post = []byte("\r\n0\r\n\r\n")
		case n > 0:
			post = []byte("\r\n")
		default:
			post = []byte("0\r\n\r\n")
		}
		w.sendv(head, cl, data, p, post)
	case head != nil || n > 0:
		w.sendv(head, nil, data, p, nil)
	}
	w.body = w.body[:0]
}

// commit forms the head: berth decides the framing (Content-Length,
// chunked, or close-delimited for HTTP/1.0) and Connection.
func (w *h1writer) commit() {
	w.committed = true
	r := w.req
	c := w.c
	if v := w.h["Connection"]; len(v) > 0 && httpguts.HeaderValuesContainsToken(v, "close") {
		w.closeAfter = true
	}
	if r.Close || c.s.shut.Load() {
		w.closeAfter = true
	}
	if !w.noBody && w.clen < 0 && w.status != http.StatusSwitchingProtocols {
		if r.ProtoMinor >= 1 {
			w.chunked = true
		} else {
			w.closeAfter = true // HTTP/1.0: the body ends with the connection
		}
	}
	b := append(w.head[:0], statusLine(w.status)...)
	b = w.appendFields(b, true)
	if _, ok := w.h["Date"]; !ok {
		b = append(b, *c.s.date.Load()...)
	}
	switch {
	case w.chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case w.clen >= 0 && (bodyAllowed(w.status) || w.status == http.StatusNotModified):
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, w.clen, 10)
		b = append(b, "\r\n"...)
	}
	switch {
	case w.closeAfter:
		b = append(b, "Connection: close\r\n"...)
	case r.ProtoMinor == 0:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	w.head = append(b, "\r\n"...)
}

// appendFields writes the handler's fields, sorted (as net/http), with the
// framing fields left to commit. A field name that is not a token is
// dropped, and CR and LF in a value become spaces (net/http's rules).
func (w *h1writer) appendFields(b []byte, final bool) []byte {
	keys := w.keys[:0]
	for k := range w.h {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			if final {
				continue
			}
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range w.h[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendFieldValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	clear(keys)
	w.keys = keys[:0]
	return b
}

func appendFieldValue(b []byte, v string) []byte {
	v = strings.Trim(v, " \t")
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\r', '\n':
			b = append(b, ' ')
		default:
			b = append(b, c)
		}
	}
	return b
}

// send writes head (may be nil), then b and p.
func (w *h1writer) send(head, b, p []byte) {
	w.sendv(head, nil, b, p, nil)
}

// sendv writes its pieces in order, in one system call when it can.
func (w *h1writer) sendv(a, b, c, d, e []byte) {
	conn := w.c
	prev := conn.phase.Swap(phWrite)
	conn.since.Store(conn.s.clock.Load())
	var err error
	if conn.raw != nil {
		iov := [5][]byte{a, b, c, d, e}
		if w.more {
			_, err = conn.raw.WritevMore(iov[:])
		} else {
			_, err = conn.raw.Writev(iov[:])
		}
	} else {
		// TLS: one record for a small answer, as few as may be otherwise.
		n := len(a) + len(b) + len(c) + len(d) + len(e)
		if n <= 64<<10 {
			bp := getBuf()
			buf := append((*bp)[:0], a...)
			buf = append(buf, b...)
			buf = append(buf, c...)
			buf = append(buf, d...)
			buf = append(buf, e...)
			_, err = conn.nc.Write(buf)
			*bp = buf
			putBuf(bp)
		} else {
			for _, x := range [][]byte{a, b, c, d, e} {
				if len(x) > 0 && err == nil {
					_, err = conn.nc.Write(x)
				}
			}
		}
	}
	conn.phase.CompareAndSwap(phWrite, prev)
	if err != nil {
		w.err = err
		w.closeAfter = true
	}
}

// ReadFrom sends a file with sendfile (static files, spilled bodies);
// anything else is copied.
func (w *h1writer) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	fd, off, limit, done := sendfileSource(src)
	if fd == nil || w.c.raw == nil || w.noBody || w.chunked || (!w.committed && w.clen < 0) {
		bp := getBuf()
		defer putBuf(bp)
		return io.CopyBuffer(writerOnly{w}, src, (*bp)[:cap(*bp)])
	}
	if limit < 0 || w.clen-w.written < limit {
		limit = w.clen - w.written
	}
	// The head waits for the file's first bytes (MSG_MORE), so the two
	// share a segment as nginx's tcp_nopush makes them: a 100 KB file went
	// out in 3 segments, 2 with it. Not when no byte of the file follows.
	w.more = limit > 0
	w.flush(nil, false)
	w.more = false
	if w.err != nil {
		return 0, w.err
	}
	var sent int64
	var serr error
	conn := w.c
	prev := conn.phase.Swap(phWrite)
	cerr := fd(func(fd int) {
		for sent < limit && serr == nil {
			conn.since.Store(conn.s.clock.Load())
			var k int64
			k, serr = conn.raw.Sendfile(fd, off, min(limit-sent, 1<<20))
			sent += k
			if k == 0 && serr == nil {
				break // the file is shorter than its size said
			}
		}
	})
	conn.phase.CompareAndSwap(phWrite, prev)
	w.written += sent
	done(sent)
	if serr == nil {
		serr = cerr
	}
	if serr != nil {
		w.err, w.closeAfter = serr, true
	}
	return sent, serr
}

// sendfileSource finds the file behind r (io.CopyN wraps it in a
// LimitedReader): a function that runs f with its descriptor, the offset
// to send from (nil: the file's position), the limit (-1: none) and a
// function to call with the bytes sent. fd is nil when r is no file.
func sendfileSource(r io.Reader) (fd func(func(int)) error, off *int64, limit int64, done func(int64)) {
	limit = -1
	lr, _ := r.(*io.LimitedReader)
	if lr != nil {
		r, limit = lr.R, lr.N
	}
	done = func(n int64) {
		if lr != nil {
			lr.N -= n
		}
	}
	switch f := r.(type) {
	case *staticFile:
		return func(fn func(int)) error { fn(f.of.fd); return nil }, &f.off, limit, done
	case *os.File:
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, nil, 0, nil
		}
		return func(fn func(int)) error {
			return rc.Control(func(fd uintptr) { fn(int(fd)) })
		}, nil, limit, done
	}
	return nil, nil, 0, nil
}

// writerOnly hides ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }

// SetReadDeadline and SetWriteDeadline are http.ResponseController's:
// the tick enforces them.
func (w *h1writer) SetReadDeadline(t time.Time) error {
	w.c.rdl.Store(deadlineNanos(t))
	return nil
}

func (w *h1writer) SetWriteDeadline(t time.Time) error {
	w.c.wdl.Store(deadlineNanos(t))
	return nil
}

func deadlineNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Hijack hands the connection over (websockets): the bytes read past the
// request head come in the returned reader's buffer.
func (w *h1writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if c.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.committed {
		return nil, nil, errors.New("hijack after the response started")
	}
	c.hijacked = true
	c.phase.Store(phExpired) // the tick leaves it alone
	rest := append([]byte(nil), c.in[c.r:c.n]...)
	c.putIn(nil)
	c.in = nil
	br := bufio.NewReaderSize(bytes.NewReader(rest), max(len(rest), 16))
	br.Peek(len(rest))
	w.release()
	return c.nc, bufio.NewReadWriter(br, bufio.NewWriter(c.nc)), nil
}

// statusLines are "HTTP/1.1 200 OK\r\n" for every status code.
var statusLines = func() (t [1000]string) {
	for code := 100; code < 1000; code++ {
		text := http.StatusText(code)
		if text == "" {
			text = "status code " + strconv.Itoa(code)
		}
		t[code] = "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n"
	}
	return t
}()

func statusLine(code int) string { return statusLines[code] }

// timeouts are the client timeouts the tick enforces, nginx's names:
// keepalive_timeout, client_header_timeout, client_body_timeout (between
// two reads) and send_timeout (between two writes).
type timeouts struct{ idle, head, body, send time.Duration }

var defaultTimeouts = timeouts{idle: idleTimeout, head: readHeaderTimeout, body: clientBodyTimeout, send: sendTimeout}

// h1conns is the set of open HTTP/1.1 connections and listeners, for the
// tick's timeouts and for Shutdown.
type h1conns struct {
	mu        sync.Mutex
	conns     map[*h1conn]struct{}
	listeners map[net.Listener]struct{}
	count     atomic.Int64
	// manyIdle: the last sweep found more than manyConns connections
	// idle on their goroutines, so one that goes idle parks at once
	// instead of after parkAfter (5,000 idle connections opened at once
	// would otherwise each hold a stack for a second).
	manyIdle atomic.Bool
	shut     bool
	idle     chan struct{} // closed when shut and the last connection ends
}

func (h *h1conns) add(c *h1conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shut {
		return false
	}
	if h.conns == nil {
		h.conns = map[*h1conn]struct{}{}
	}
	h.conns[c] = struct{}{}
	h.count.Add(1)
	return true
}

func (h *h1conns) remove(c *h1conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; !ok {
		return
	}
	delete(h.conns, c)
	h.count.Add(-1)
	if h.shut && len(h.conns) == 0 && h.idle != nil {
		close(h.idle)
		h.idle = nil
	}
}

// sweep runs check on every connection, and closes the parked ones it
// took back.
func (h *h1conns) sweep(now int64, manyConns int64) {
	var closing []*h1conn
	var idle int64
	h.mu.Lock()
	for c := range h.conns {
		if c.check(now) {
			closing = append(closing, c)
		} else if c.phase.Load() == phIdle && !c.parked.Load() && c.fd >= 0 {
			idle++
		}
	}
	h.manyIdle.Store(idle > manyConns)
	h.mu.Unlock()
	for _, c := range closing {
		c.close()
	}
}

// serveListener accepts connections on l until it is closed, backing off
// on errors such as EMFILE as net/http does; each connection gets its
// goroutine from accept (for TLS, after its handshake).
func (s *Server) serveListener(l net.Listener, conn func(net.Conn)) error {
	h := &s.h1
	h.mu.Lock()
	if h.shut {
		h.mu.Unlock()
		return http.ErrServerClosed
	}
	if h.listeners == nil {
		h.listeners = map[net.Listener]struct{}{}
	}
	h.listeners[l] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.listeners, l)
		h.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shut.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else if delay *= 2; delay > time.Second {
					delay = time.Second
				}
				s.logf("accept %s: %v; retrying in %s", l.Addr(), err, delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go conn(nc)
	}
}

// shutdownH1 stops the listeners, closes idle connections (the tick keeps
// closing those that go idle), and waits for the others to finish their
// request until ctx ends; then closes them.
func (s *Server) shutdownH1(ctx context.Context) error {
	h := &s.h1
	h.mu.Lock()
	h.shut = true
	for l := range h.listeners {
		l.Close()
	}
	idle := make(chan struct{})
	if len(h.conns) == 0 {
		close(idle)
	} else {
		h.idle = idle
	}
	h.mu.Unlock()
	h.sweep(s.clock.Load(), s.manyConns)
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	for c := range h.conns {
		c.nc.Close()
	}
	h.mu.Unlock()
	return ctx.Err()
}
