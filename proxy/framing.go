package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/berth-dev/berth/proxy/http1"

	"github.com/berth-dev/berth/proxy/rawsock"
)

// framing.go puts berth's HTTP/1.1 http1.Framer (package http1) in front of
// net/http on every client connection: framedConn holds back each request
// head until the http1.Framer has judged it, and replaces a refused one by a
// synthetic request the handler recognises (refusal) and answers with the
// refusal's status. It also holds checkRequest, the one check every request
// passes whatever its front.

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

// framedConn passes a client connection's bytes to net/http as the http1.Framer
// allows. Reads happen on one goroutine at a time (net/http's connection
// goroutine or its background reader, never both), so only rej, which the
// handler reads, needs to be atomic.
type framedConn struct {
	net.Conn
	f    http1.Framer
	buf  []byte // read from the connection, not yet handed on; nil when empty
	bufp *[]byte
	ok   int  // buf[:ok] may be handed on
	sent bool // the synthetic request for a refusal was queued
	rej  atomic.Pointer[http1.Rejection]
	raw  *rawsock.Sock // nil: plain Read and Write (rawsock.go)
	// tunneled: the connection was handed to another protocol (a
	// websocket after its handshake): bytes pass through unjudged.
	tunneled atomic.Bool
}

// tunnel hands the connection over to a protocol that is not HTTP/1.x.
// The handler calls it before it hijacks the connection; bytes the http1.Framer
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
		if rej := c.f.Rejected(); rej != nil {
			if !c.sent {
				c.sent = true
				c.rej.Store(rej)
				c.release()
				c.buf = rejectRequest[:len(rejectRequest):len(rejectRequest)]
				c.ok = len(c.buf)
				continue
			}
			return 0, io.EOF
		}
		if c.f.Broken() {
			return 0, http1.ErrBadChunked
		}
		if c.buf == nil {
			// Nothing held back: read straight into p and copy only a
			// partial head that must wait.
			n, err := c.read(p)
			if n == 0 {
				return 0, err
			}
			ok, m := c.f.Scan(p[:n])
			c.f.Shift(ok)
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
			ok, m := c.f.Scan(c.buf[:len(c.buf)+n])
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
	c.f.Shift(n)
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

// refusal returns the http1.Rejection r stands for, when r is the synthetic
// request a framedConn put in place of a refused head.
func refusal(ci *connInfo, r *http.Request) *http1.Rejection {
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
// get RFC 9113 §8.1.1's content-length rules, which the HTTP/1.1 http1.Framer
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
	n, ok := http1.ParseLength([]byte(v[0]))
	switch {
	case !ok:
		return http.StatusBadRequest, "content-length is not a decimal number of bytes"
	case n != r.ContentLength:
		return http.StatusBadRequest, "content-length says " + v[0] + " bytes, but the stream ended with the headers"
	}
	return 0, ""
}
