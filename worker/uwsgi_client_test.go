package worker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// uwsgiRequest is what the test client sends: the vars nginx's uwsgi_params would send for
// such an HTTP request, plus the body.
type uwsgiRequest struct {
	Method    string
	URI       string // path?query, percent-encoded as on the wire
	Header    http.Header
	Body      io.Reader
	BodyLen   int64
	KeepAlive bool        // send BERTH_KEEPALIVE=1 (berth's proxy) instead of nginx-style close
	Vars      [][2]string // extra or overriding vars, appended last
}

// uwsgiPacket encodes the 4-byte uwsgi header and the vars.
func uwsgiPacket(vars [][2]string) ([]byte, error) {
	var body []byte
	for _, kv := range vars {
		for _, s := range kv {
			if len(s) > 0xffff {
				return nil, fmt.Errorf("uwsgi var %q too long", kv[0])
			}
			body = binary.LittleEndian.AppendUint16(body, uint16(len(s)))
			body = append(body, s...)
		}
	}
	if len(body) > 0xffff {
		return nil, fmt.Errorf("uwsgi vars are %d bytes, max 65535", len(body))
	}
	pkt := []byte{0, 0, 0, 0}
	binary.LittleEndian.PutUint16(pkt[1:3], uint16(len(body)))
	return append(pkt, body...), nil
}

func (r *uwsgiRequest) vars() [][2]string {
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	path, query, _ := strings.Cut(r.URI, "?")
	pathInfo, err := url.PathUnescape(path)
	if err != nil {
		pathInfo = path
	}
	clen := ""
	if r.Body != nil {
		clen = strconv.FormatInt(r.BodyLen, 10)
	}
	vars := [][2]string{
		{"QUERY_STRING", query},
		{"REQUEST_METHOD", method},
		{"CONTENT_TYPE", r.Header.Get("Content-Type")},
		{"CONTENT_LENGTH", clen},
		{"REQUEST_URI", r.URI},
		{"PATH_INFO", pathInfo},
		{"DOCUMENT_ROOT", "/nonexistent"},
		{"SERVER_PROTOCOL", "HTTP/1.1"},
		{"REQUEST_SCHEME", "http"},
		{"REMOTE_ADDR", "127.0.0.1"},
		{"REMOTE_PORT", "40000"},
		{"SERVER_PORT", "8080"},
		{"SERVER_NAME", "test.local"},
		{"HTTP_HOST", "test.local"},
	}
	for k, vs := range r.Header {
		name := "HTTP_" + strings.ToUpper(strings.ReplaceAll(k, "-", "_"))
		for _, v := range vs {
			vars = append(vars, [2]string{name, v})
		}
	}
	if r.KeepAlive {
		vars = append(vars, [2]string{"BERTH_KEEPALIVE", "1"})
	}
	return append(vars, r.Vars...)
}

// uwsgiConn is one connection to a worker; with keep-alive it carries several requests.
type uwsgiConn struct {
	net.Conn
	br *bufio.Reader
}

func dialUwsgi(t testing.TB, path string) *uwsgiConn {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial worker %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	// Bound every test conversation: a worker bug must fail the test, not hang it.
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	return &uwsgiConn{Conn: c, br: bufio.NewReaderSize(c, 64<<10)}
}

// roundTrip sends one request and parses the response head; the caller reads resp.Body
// (framed by Content-Length, chunked, or the connection's end) before the next request.
func (c *uwsgiConn) roundTrip(r uwsgiRequest) (*http.Response, error) {
	if r.Header == nil {
		r.Header = http.Header{}
	}
	pkt, err := uwsgiPacket(r.vars())
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(pkt); err != nil {
		return nil, fmt.Errorf("send request head: %w", err)
	}
	if r.Body != nil {
		if n, err := io.Copy(c, r.Body); err != nil || n != r.BodyLen {
			return nil, fmt.Errorf("send body: %d of %d bytes: %v", n, r.BodyLen, err)
		}
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	return http.ReadResponse(c.br, &http.Request{Method: method})
}

// do is roundTrip plus reading the whole body, failing the test on any error.
func (c *uwsgiConn) do(t testing.TB, r uwsgiRequest) (*http.Response, string) {
	t.Helper()
	resp, err := c.roundTrip(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URI, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: read body: %v", r.Method, r.URI, err)
	}
	return resp, string(body)
}

// expectClosed asserts the worker closed the connection (no further bytes, EOF).
func (c *uwsgiConn) expectClosed(t testing.TB) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := c.br.ReadByte()
	if err != io.EOF {
		t.Fatalf("connection not closed by the worker: read %q, %v", b, err)
	}
}
