package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/berth-dev/berth/proxy/rawsock"
)

// framing.go decides where each request on a client connection begins and
// ends, before net/http sees a byte of it.
//
// net/http hides exactly the fields a smuggling attack plays with: it
// drops Content-Length when Transfer-Encoding is present and ignores
// Transfer-Encoding on HTTP/1.0, so a handler cannot tell a clean request
// from an ambiguous one. Every connection's bytes therefore pass through a
// framer that reads the message framing of RFC 9112 §6 itself: it holds
// back each request head until the head is complete, judges its framing
// fields, and only then lets it through; bodies stream through while it
// tracks their length (Content-Length or chunked). A head it refuses never
// reaches net/http: in its place net/http reads a short synthetic request
// that the handler recognises (by a per-process secret) and answers with
// the refusal's status and Connection: close. Nothing after a refused head
// is read. Where the RFC leaves a choice, the framer makes nginx's.
//
// The framer judges only framing. net/http still parses everything else
// (request line, field syntax, Host) and is at least as strict there; the
// two agree on where a head ends (at the first empty line, lines ending in
// LF with an optional CR) and on body lengths, so they never frame the same
// bytes differently. FuzzFront checks that.

// maxHead bounds a request head (request line and fields) held back; a
// longer one is refused with 431, as net/http's MaxHeaderBytes would.
const maxHead = maxHeaderBytes

// maxTrailer bounds the trailer section of a chunked request body.
const maxTrailer = 16 << 10

// errBadChunked is what a request body read returns when its chunked
// framing is broken; the handler answers 400 and closes.
var errBadChunked = errors.New("malformed chunked request body")

// rejection is why a request head was refused.
type rejection struct {
	status int
	reason string
	line   string // the refused request line, for the access log
}

// framer states.
const (
	stHead      = iota // collecting a request head
	stBody             // left bytes of a Content-Length body
	stChunkSize        // a chunk-size line
	stChunkData        // left bytes of chunk data
	stChunkEnd         // the CRLF after chunk data
	stTrailer          // trailer fields after the last chunk
	stRejected         // a head was refused: nothing more
	stCut              // a body's framing broke: nothing more
)

// framer tracks one connection's message framing. It scans a buffer it
// does not own; pos and head are offsets into it that the caller shifts
// when it drops a released prefix.
type framer struct {
	state int
	left  int64 // stBody, stChunkData
	pos   int   // next byte to look at
	head  int   // stHead: where the pending head starts
	// chunk-size line: 0 digits, 1 blanks after them, 2 extension, 3 got CR
	phase   int
	digits  int
	line    int  // stTrailer: bytes in the current line
	cr      bool // stTrailer, stChunkEnd: a CR was seen
	trailer int  // stTrailer: bytes so far
	rej     *rejection
	heads   int // heads let through (tests)
}

// scan looks at b[f.pos:] and returns the length of the prefix of b that
// may be handed to net/http, and b's new length: leading empty lines
// before a request line are dropped in place (RFC 9112 §2.2, as nginx).
func (f *framer) scan(b []byte) (ok, n int) {
	n = len(b)
	for f.pos < n {
		switch f.state {
		case stHead:
			i := bytes.IndexByte(b[f.pos:n], '\n')
			if i < 0 {
				f.pos = n
				if n-f.head > maxHead {
					f.reject(b[f.head:n], http.StatusRequestHeaderFieldsTooLarge, "the request head is larger than 32 KiB")
					return f.head, n
				}
				return f.head, n
			}
			end := f.pos + i + 1
			if f.pos == f.head && (i == 0 || (i == 1 && b[f.pos] == '\r')) {
				copy(b[f.pos:], b[end:n]) // an empty line before the request line
				n -= end - f.pos
				continue
			}
			if !(i == 0 || (i == 1 && b[f.pos] == '\r')) {
				f.pos = end
				continue
			}
			// The empty line ends the head.
			if end-f.head > maxHead {
				f.reject(b[f.head:end], http.StatusRequestHeaderFieldsTooLarge, "the request head is larger than 32 KiB")
				return f.head, n
			}
			fr, rej := judgeHead(b[f.head:end])
			f.pos = end
			if rej != nil {
				f.rej = rej
				f.state = stRejected
				return f.head, n
			}
			f.heads++
			switch {
			case fr.chunked:
				f.state, f.phase, f.digits, f.left = stChunkSize, 0, 0, 0
			case fr.length > 0:
				f.state, f.left = stBody, fr.length
			}
			f.head = end
		case stBody, stChunkData:
			k := int64(n - f.pos)
			if k > f.left {
				k = f.left
			}
			f.pos += int(k)
			f.left -= k
			if f.left == 0 {
				if f.state == stBody {
					f.state, f.head = stHead, f.pos
				} else {
					f.state, f.cr = stChunkEnd, false
				}
			}
		case stChunkSize:
			if !f.chunkSizeByte(b[f.pos]) {
				return f.cut()
			}
			f.pos++
		case stChunkEnd:
			c := b[f.pos]
			f.pos++
			switch {
			case c == '\r' && !f.cr:
				f.cr = true
			case c == '\n' && f.cr:
				f.state, f.phase, f.digits = stChunkSize, 0, 0
			default:
				return f.cut()
			}
		case stTrailer:
			c := b[f.pos]
			f.pos++
			f.trailer++
			if f.trailer > maxTrailer {
				return f.cut()
			}
			switch {
			case c == '\n':
				if !f.cr {
					return f.cut() // bare LF: net/http would take it, the framer does not
				}
				if f.line == 1 { // just the CR: the empty line ends the body
					f.state, f.head = stHead, f.pos
					continue
				}
				f.line, f.cr = 0, false
			case f.cr:
				return f.cut() // bare CR
			case c == '\r':
				f.cr = true
				f.line++
			default:
				f.line++
			}
		default: // stRejected, stCut
			f.pos = n
		}
	}
	if f.state == stHead {
		return f.head, n
	}
	return f.pos, n
}

// chunkSizeByte takes one byte of a chunk-size line (RFC 9112 §7.1:
// 1*HEXDIG, then chunk extensions, CRLF); false means the line is broken.
// Sizes are at most 16 hex digits (int64), as net/http's limit.
func (f *framer) chunkSizeByte(c byte) bool {
	switch f.phase {
	case 0: // digits
		if v, ok := unhex(c); ok {
			if f.digits == 16 || f.left > 0x7ffffffffffffff {
				return false
			}
			f.left = f.left<<4 | int64(v)
			f.digits++
			return true
		}
		if f.digits == 0 {
			return false
		}
		f.phase = 1
		return f.chunkSizeByte(c)
	case 1: // blanks before an extension or the end
		switch c {
		case ' ', '\t':
			return true
		case ';':
			f.phase = 2
			return true
		case '\r':
			f.phase = 3
			return true
		}
		return false
	case 2: // extension: anything printable up to the CR
		switch {
		case c == '\r':
			f.phase = 3
			return true
		case c == '\t' || (c >= ' ' && c != 0x7f):
			return true
		}
		return false
	default: // CR seen
		if c != '\n' {
			return false
		}
		if f.left == 0 {
			f.state, f.line, f.cr, f.trailer = stTrailer, 0, false, 0
		} else {
			f.state = stChunkData
		}
		f.digits = 0
		return true
	}
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// shift moves the framer's offsets when the first n bytes of the buffer
// it scans are dropped.
func (f *framer) shift(n int) {
	f.pos -= n
	f.head -= n
}

// cut ends the stream inside a body: what came before the broken byte
// goes through, then reads fail with errBadChunked.
func (f *framer) cut() (int, int) {
	f.state = stCut
	return f.pos, f.pos
}

func (f *framer) reject(head []byte, status int, reason string) {
	f.rej = &rejection{status: status, reason: reason, line: requestLine(head)}
	f.state = stRejected
}

// requestLine returns the first line of a head, cut to 200 bytes, for the
// access log.
func requestLine(head []byte) string {
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	}
	head = bytes.TrimSuffix(head, []byte("\r"))
	if len(head) > 200 {
		head = head[:200]
	}
	return string(head)
}

// bodyFraming is how a request head says its body is delimited.
type bodyFraming struct {
	chunked bool
	length  int64
}

// judgeHead reads the framing fields of a complete request head (request
// line, fields, the empty line). Where RFC 9112 lets a server choose, it
// chooses what nginx does: a request with both Content-Length and
// Transfer-Encoding, Transfer-Encoding on HTTP/1.0, a repeated framing
// field and obs-fold are 400; a transfer coding other than chunked is 501.
func judgeHead(head []byte) (bodyFraming, *rejection) {
	var fr bodyFraming
	bad := func(status int, reason string) (bodyFraming, *rejection) {
		return bodyFraming{}, &rejection{status: status, reason: reason, line: requestLine(head)}
	}
	i := bytes.IndexByte(head, '\n')
	reqLine := bytes.TrimSuffix(head[:i], []byte("\r"))
	http10 := bytes.HasSuffix(reqLine, []byte(" HTTP/1.0"))
	rest := head[i+1:]
	var cl, te []byte
	nCL, nTE := 0, 0
	for len(rest) > 0 {
		j := bytes.IndexByte(rest, '\n')
		line := bytes.TrimSuffix(rest[:j], []byte("\r"))
		rest = rest[j+1:]
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return bad(http.StatusBadRequest, "a header field is folded over two lines (obs-fold)")
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue // net/http refuses it
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			nCL++
			cl = value
		case asciiEqualFold(name, "transfer-encoding"):
			nTE++
			te = value
		}
	}
	switch {
	case nTE > 0 && http10:
		return bad(http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request")
	case nTE > 0 && nCL > 0:
		return bad(http.StatusBadRequest, "both Content-Length and Transfer-Encoding")
	case nTE > 1:
		return bad(http.StatusBadRequest, "Transfer-Encoding given twice")
	case nCL > 1:
		return bad(http.StatusBadRequest, "Content-Length given twice")
	case nTE == 1:
		if !asciiEqualFold(te, "chunked") {
			return bad(http.StatusNotImplemented, "unsupported Transfer-Encoding (only chunked is)")
		}
		fr.chunked = true
	case nCL == 1:
		n, ok := parseLength(cl)
		if !ok {
			return bad(http.StatusBadRequest, "Content-Length is not a decimal number of bytes")
		}
		fr.length = n
	}
	return fr, nil
}

// parseLength parses 1*DIGIT within int64.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold compares b with the lower-case ASCII s, ignoring ASCII
// case only: net/http canonicalises field names in ASCII, and Unicode
// folding (ſ ~ s) would let a field past the framer that net/http ignores.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// rejectSecret marks the synthetic requests that stand for refused heads;
// clients never see it, so they cannot forge one.
var rejectSecret = func() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

const rejectHeader = "X-Berth-Refused"

var rejectRequest = []byte("GET / HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n" + rejectHeader + ": " + rejectSecret + "\r\n\r\n")

// framedListener wraps every accepted connection in a framedConn.
type framedListener struct{ net.Listener }

func (l framedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	fc := &framedConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			fc.raw = rawsock.New(rc)
		}
	}
	return fc, nil
}

var headBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// framedConn passes a client connection's bytes to net/http as the framer
// allows. Reads happen on one goroutine at a time (net/http's connection
// goroutine or its background reader, never both), so only rej, which the
// handler reads, needs to be atomic.
type framedConn struct {
	net.Conn
	f    framer
	buf  []byte // read from the connection, not yet handed on; nil when empty
	bufp *[]byte
	ok   int  // buf[:ok] may be handed on
	sent bool // the synthetic request for a refusal was queued
	rej  atomic.Pointer[rejection]
	raw  *rawsock.Sock // nil: plain Read and Write (rawsock.go)
	// tunneled: the connection was handed to another protocol (a
	// websocket after its handshake): bytes pass through unjudged.
	tunneled atomic.Bool
}

// tunnel hands the connection over to a protocol that is not HTTP/1.x.
// The handler calls it before it hijacks the connection; bytes the framer
// holds (sent by a client that did not wait for the handshake's answer)
// are passed on first.
func (c *framedConn) tunnel() { c.tunneled.Store(true) }

// read reads from the connection itself.
func (c *framedConn) read(p []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Read(p)
	}
	n, err := c.raw.Read(p)
	if err != nil && err != io.EOF {
		// net/http tells a client that went away from a broken request
		// by the *net.OpError a net.Conn returns.
		err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

// Write writes the response bytes net/http hands over.
func (c *framedConn) Write(p []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Write(p)
	}
	n, err := c.raw.Write(p)
	if err != nil {
		err = &net.OpError{Op: "write", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

func (c *framedConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.tunneled.Load() {
		if len(c.buf) > 0 {
			n := copy(p, c.buf)
			if c.buf = c.buf[n:]; len(c.buf) == 0 {
				c.release()
			}
			return n, nil
		}
		return c.read(p)
	}
	for {
		if c.ok > 0 {
			n := copy(p, c.buf[:c.ok])
			c.drop(n)
			return n, nil
		}
		switch c.f.state {
		case stRejected:
			if !c.sent {
				c.sent = true
				c.rej.Store(c.f.rej)
				c.release()
				c.buf = rejectRequest[:len(rejectRequest):len(rejectRequest)]
				c.ok = len(c.buf)
				continue
			}
			return 0, io.EOF
		case stCut:
			return 0, errBadChunked
		}
		if c.buf == nil {
			// Nothing held back: read straight into p and copy only a
			// partial head that must wait.
			n, err := c.read(p)
			if n == 0 {
				return 0, err
			}
			ok, m := c.f.scan(p[:n])
			c.f.shift(ok)
			if ok < m {
				c.hold(p[ok:m])
			}
			if ok > 0 {
				return ok, nil
			}
			if err != nil {
				return 0, err
			}
			continue
		}
		if len(c.buf) == cap(c.buf) {
			nb := make([]byte, len(c.buf), 2*cap(c.buf))
			copy(nb, c.buf)
			c.buf = nb
		}
		n, err := c.read(c.buf[len(c.buf):cap(c.buf)])
		if n > 0 {
			ok, m := c.f.scan(c.buf[:len(c.buf)+n])
			c.buf = c.buf[:m]
			c.ok = ok
			if len(c.buf) == 0 {
				c.release()
			}
			continue
		}
		if err != nil {
			return 0, err
		}
	}
}

// hold keeps b (a head still incomplete) for later reads.
func (c *framedConn) hold(b []byte) {
	c.bufp = headBufs.Get().(*[]byte)
	c.buf = append((*c.bufp)[:0], b...)
	c.ok = 0
}

// drop forgets the first n bytes of buf, which were handed on.
func (c *framedConn) drop(n int) {
	c.ok -= n
	c.f.shift(n)
	if n == len(c.buf) {
		c.release()
		return
	}
	c.buf = c.buf[n:]
}

func (c *framedConn) release() {
	if c.bufp != nil {
		*c.bufp = (*c.bufp)[:0]
		if cap(*c.bufp) <= 64<<10 {
			headBufs.Put(c.bufp)
		}
		c.bufp = nil
	}
	c.buf = nil
}

// ReadFrom keeps sendfile for static files: net/http hands the response
// body to the connection's ReadFrom.
func (c *framedConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

// refusal returns the rejection r stands for, when r is the synthetic
// request a framedConn put in place of a refused head.
func refusal(ci *connInfo, r *http.Request) *rejection {
	v := r.Header[rejectHeader]
	if len(v) != 1 || v[0] != rejectSecret || ci.framed == nil {
		return nil
	}
	return ci.framed.rej.Load()
}

// checkRequest is the one check every request passes, whatever front it
// came in by (HTTP/1.1, TLS, HTTP/2), before any backend is chosen; 0 serves
// it. Its target policy (docs/internals.md): every byte of the target is a
// visible character (no space, no control: what the HTTP/1.1 request line
// cannot carry, HTTP/2's :path may not either); origin-form is served;
// absolute-form with http or https is served as its path (RFC 9112 §3.2.2:
// the URL's authority is the Host); "*" is only for OPTIONS, which net/http
// answers itself; CONNECT and authority-form are refused, as nginx refuses
// them, and so are lower-case methods and userinfo. HTTP/2 requests also
// get RFC 9113 §8.1.1's content-length rules, which the HTTP/1.1 framer
// applies to its own (framing.go): one field, digits only, and as many bytes
// as the stream carries. A refused request closes the connection, as nginx
// does: a client that sent it may not frame what follows as berth would
// (CONNECT tunnel bytes, for one).
func checkRequest(r *http.Request) (int, string) {
	u := r.RequestURI
	for i := 0; i < len(u); i++ {
		if c := u[i]; c <= ' ' || c == 0x7f {
			return http.StatusBadRequest, "the request target has a space or a control character (escape it as %XX)"
		}
	}
	if r.ProtoMajor == 2 {
		if status, why := checkH2Length(r); status != 0 {
			return status, why
		}
	}
	for i := 0; i < len(r.Method); i++ {
		if c := r.Method[i]; (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return http.StatusBadRequest, "the method must be upper-case letters (methods are case-sensitive)"
		}
	}
	switch {
	case r.Method == http.MethodConnect:
		return http.StatusMethodNotAllowed, "CONNECT is not supported: berth is not a forward proxy"
	case len(u) > 0 && u[0] == '/':
		return 0, ""
	case u == "*":
		return http.StatusBadRequest, "the request target * is only for OPTIONS"
	case r.URL.User != nil:
		return http.StatusBadRequest, "the request target must not carry user information (RFC 9110 section 4.2.4)"
	case r.URL.Host != "" && (r.URL.Scheme == "http" || r.URL.Scheme == "https"):
		// Workers see the origin-form, as they would behind nginx.
		rest := u[len(r.URL.Scheme)+len("://"):]
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			r.RequestURI = rest[i:]
			if rest[i] == '?' {
				r.RequestURI = "/" + rest[i:]
			}
		} else {
			r.RequestURI = "/"
		}
		return 0, ""
	}
	return http.StatusBadRequest, "the request target must be a path or an absolute http(s) URL"
}

// checkH2Length applies RFC 9113 §8.1.1 to an HTTP/2 request's
// content-length, as nginx does: a repeated field, or a value other than
// digits ("+5", "5, 5"), is malformed; so is a length above 0 on a request
// whose stream ended with its headers (x/net then gives ContentLength 0). A
// length the DATA frames do not match fails the body read (x/net), which the
// body stage answers 400.
func checkH2Length(r *http.Request) (int, string) {
	v := r.Header["Content-Length"]
	switch {
	case len(v) == 0:
		return 0, ""
	case len(v) > 1:
		return http.StatusBadRequest, "content-length given more than once"
	}
	n, ok := parseLength([]byte(v[0]))
	switch {
	case !ok:
		return http.StatusBadRequest, "content-length is not a decimal number of bytes"
	case n != r.ContentLength:
		return http.StatusBadRequest, "content-length says " + v[0] + " bytes, but the stream ended with the headers"
	}
	return 0, ""
}
