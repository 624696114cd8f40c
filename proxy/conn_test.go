package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawConn dials the harness and sends s.
func rawConn(t *testing.T, h *harness, s string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if s != "" {
		io.WriteString(c, s)
	}
	return c, bufio.NewReader(c)
}

// closedWithin says whether the server closes c within d: a read gets
// EOF (or a reset) rather than bytes or its own deadline.
func closedWithin(c net.Conn, br *bufio.Reader, d time.Duration) (bool, []byte) {
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, b
	}
	return true, b
}

// TestConnTimeouts: nginx's client timeouts, enforced by the tick as
// timestamps (conn.go): an idle keep-alive connection, a head that does
// not finish and a body that stops are closed (the body with 408), and a
// client that stops reading its response is dropped; none of them reaches
// the worker or holds it.
func TestConnTimeouts(t *testing.T) {
	const limit = 300 * time.Millisecond
	big := bytes.Repeat([]byte("z"), 8<<20)
	fw := startFake(t, "w1", 2, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		if req.vars["PATH_INFO"] == "/big" {
			respond(c, 200, nil, big)
		} else {
			respond(c, 200, nil, req.body)
		}
		return true
	})
	h := startProxyWith(t, defaultConfig(), func(s *Server) {
		s.to = timeouts{idle: limit, head: limit, body: limit, send: limit}
	}, fw)

	t.Run("idle", func(t *testing.T) {
		c, br := rawConn(t, h, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		start := time.Now()
		if closed, _ := closedWithin(c, br, 5*time.Second); !closed {
			t.Fatal("an idle connection outlived its keep-alive timeout")
		}
		if d := time.Since(start); d < limit-50*time.Millisecond {
			t.Fatalf("closed after %s, before the timeout (%s)", d, limit)
		}
	})
	t.Run("head", func(t *testing.T) {
		before := fw.requests.Load()
		c, br := rawConn(t, h, "GET / HTTP/1.1\r\nHo")
		closed, got := closedWithin(c, br, 5*time.Second)
		if !closed || len(got) != 0 {
			t.Fatalf("a head that never ends: closed %v, got %q", closed, got)
		}
		if fw.requests.Load() != before {
			t.Fatal("the worker got the unfinished request")
		}
	})
	t.Run("body", func(t *testing.T) {
		before := fw.requests.Load()
		_, br := rawConn(t, h, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
			t.Fatalf("a body that stops: %d close=%v, want 408 and close", resp.StatusCode, resp.Close)
		}
		if fw.requests.Load() != before {
			t.Fatal("the worker got the unfinished request")
		}
	})
	t.Run("send", func(t *testing.T) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(16 << 10)
		before := fw.requests.Load()
		io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
		waitFor(t, "the worker to answer", 5*time.Second, func() bool { return fw.requests.Load() > before })
		waitFor(t, "the proxy to drop the client that stopped reading", 10*time.Second, func() bool {
			return h.srv.h1.count.Load() == 0
		})
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		if n >= int64(len(big)) {
			t.Fatalf("got all %d bytes", n)
		}
	})
}

// TestConnKeepAlive: HTTP/1.1 keep-alive and pipelining, HTTP/1.0's
// Connection: keep-alive, Connection: close, HEAD, and a chunked request
// body with extensions and a trailer: each answer as net/http's server
// gave it, and the connection's next request framed where the last ended.
func TestConnKeepAlive(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	h := startProxy(t, defaultConfig(), fw)
	read := func(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}

	t.Run("pipelined", func(t *testing.T) {
		c, br := rawConn(t, h, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
			"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"+
			"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"+
			"HEAD /d HTTP/1.1\r\nHost: x\r\n\r\n"+
			"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		for _, want := range []struct{ method, body string }{{"GET", ""}, {"POST", "xyz"}, {"POST", "abcde"}, {"HEAD", ""}, {"GET", ""}} {
			resp, body := read(t, br, want.method)
			if resp.StatusCode != 200 || body != want.body {
				t.Fatalf("%s: %d %q, want 200 %q", want.method, resp.StatusCode, body, want.body)
			}
		}
		if closed, rest := closedWithin(c, br, 5*time.Second); !closed || len(rest) > 0 {
			t.Fatalf("after Connection: close: closed %v, then %q", closed, rest)
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		c, br := rawConn(t, h, "POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi")
		resp, body := read(t, br, "POST")
		if body != "hi" || resp.Header.Get("Connection") != "keep-alive" || resp.Close {
			t.Fatalf("1.0 keep-alive: %q Connection=%q close=%v", body, resp.Header.Get("Connection"), resp.Close)
		}
		io.WriteString(c, "GET /b HTTP/1.0\r\n\r\n")
		resp, _ = read(t, br, "GET")
		if resp.StatusCode != 200 || !resp.Close {
			t.Fatalf("1.0 without keep-alive: %d close=%v", resp.StatusCode, resp.Close)
		}
		if closed, _ := closedWithin(c, br, 5*time.Second); !closed {
			t.Fatal("an HTTP/1.0 request without keep-alive left the connection open")
		}
	})
	t.Run("unknown expectation", func(t *testing.T) {
		_, br := rawConn(t, h, "POST / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nhi")
		resp, _ := read(t, br, "POST")
		if resp.StatusCode != http.StatusExpectationFailed || !resp.Close {
			t.Fatalf("Expect: teapot: %d close=%v, want 417 and close", resp.StatusCode, resp.Close)
		}
	})
	t.Run("OPTIONS *", func(t *testing.T) {
		_, br := rawConn(t, h, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := read(t, br, "OPTIONS")
		if resp.StatusCode != 200 || body != "" || resp.ContentLength != 0 {
			t.Fatalf("OPTIONS *: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
		}
	})
}

// TestConnResponseFraming: berth frames what it sends. A response of
// unknown length is chunked to HTTP/1.1 and close-delimited to HTTP/1.0;
// every response carries one Date.
func TestConnResponseFraming(t *testing.T) {
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		// A streamed answer without a length: berth cannot know it.
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		return true
	})
	h := startProxy(t, defaultConfig(), fw)
	for _, tc := range []struct {
		proto   string
		chunked bool
	}{{"HTTP/1.1", true}, {"HTTP/1.0", false}} {
		t.Run(tc.proto, func(t *testing.T) {
			c, br := rawConn(t, h, "GET /s "+tc.proto+"\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			chunked := len(resp.TransferEncoding) > 0
			if string(body) != "hello" || chunked != tc.chunked || len(resp.Header["Date"]) != 1 {
				t.Fatalf("%q chunked=%v Date=%q", body, chunked, resp.Header["Date"])
			}
			if !tc.chunked {
				if closed, _ := closedWithin(c, br, 5*time.Second); !closed || !resp.Close {
					t.Fatal("a close-delimited response left the connection open")
				}
			}
		})
	}
}

// TestConnRefusedHeadLingers: a refused head is answered, and the client
// that goes on sending (a body the refusal made unreadable) reads the
// answer, not a reset.
func TestConnRefusedHeadLingers(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	h := startProxy(t, defaultConfig(), fw)
	c, br := rawConn(t, h, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
	// More bytes after the refused head, as a client that does not wait.
	io.WriteString(c, strings.Repeat("x", 64<<10))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the refusal was lost: %v", err)
	}
	if resp.StatusCode != 400 || !resp.Close {
		t.Fatalf("CL and TE: %d close=%v", resp.StatusCode, resp.Close)
	}
	if fw.requests.Load() != 0 {
		t.Fatal("the worker got the refused request")
	}
}

// TestConnParkedIdle: with every idle connection parked in the epoll set
// (idlepark.go), keep-alive requests, pipelined bytes that arrive while
// parked, the idle timeout and Shutdown all still work, and a parked
// connection holds no goroutine.
func TestConnParkedIdle(t *testing.T) {
	const limit = 300 * time.Millisecond
	fw := startFake(t, "w1", 2, echo)
	h := startProxyWith(t, defaultConfig(), func(s *Server) {
		s.manyConns, s.parkAfter = 0, 0
		s.to.idle = limit
	}, fw)
	read := func(br *bufio.Reader) string {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	before := runtime.NumGoroutine()
	const n = 50
	conns := make([]net.Conn, n)
	brs := make([]*bufio.Reader, n)
	for i := range conns {
		conns[i], brs[i] = rawConn(t, h, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
		if got := read(brs[i]); got != "a" {
			t.Fatalf("first request: %q", got)
		}
	}
	waitFor(t, "the idle connections to park", 5*time.Second, func() bool {
		h.srv.idle.mu.Lock()
		defer h.srv.idle.mu.Unlock()
		return len(h.srv.idle.conns) == n
	})
	if g := runtime.NumGoroutine() - before; g > 5 {
		t.Errorf("%d goroutines more with %d parked connections", g, n)
	}
	// A second request on each, one sent in two pieces.
	for i, c := range conns {
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
		if i == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		io.WriteString(c, "bc")
		if got := read(brs[i]); got != "bc" {
			t.Fatalf("request after parking: %q", got)
		}
	}
	// The idle timeout closes parked connections.
	if closed, _ := closedWithin(conns[0], brs[0], 5*time.Second); !closed {
		t.Fatal("a parked connection outlived the idle timeout")
	}
	waitFor(t, "every connection closed", 5*time.Second, func() bool { return h.srv.h1.count.Load() == 0 })
}

// TestConnBusyNeverParks: a keep-alive connection with requests coming
// back to back is never parked while many connections are open but few
// are idle (slow clients trickling heads); one left idle past parkAfter
// is. Parking at every idle moment cost each request an epoll_ctl and a
// goroutine start.
func TestConnBusyNeverParks(t *testing.T) {
	fw := startFake(t, "w1", 2, echo)
	h := startProxyWith(t, defaultConfig(), func(s *Server) {
		s.manyConns, s.parkAfter = 2, 400*time.Millisecond
	}, fw)
	for range 3 {
		rawConn(t, h, "GET / HTTP/1.1\r\n") // a head begun, not finished
	}
	waitFor(t, "three slow connections open", 5*time.Second, func() bool { return h.srv.h1.count.Load() == 3 })
	c, br := rawConn(t, h, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
	read := func() {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	read()
	// Requests for a second, more than twice parkAfter, each sent as soon
	// as the one before is answered.
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb")
		read()
	}
	if n := h.srv.idle.parks.Load(); n != 0 {
		t.Fatalf("a busy connection was parked %d times", n)
	}
	waitFor(t, "the idle connection to park", 5*time.Second, func() bool { return h.srv.idle.parks.Load() == 1 })
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nc")
	read()
}

// TestConnParkedIdleTLS: a TLS connection parks only when crypto/tls
// holds none of the client's bytes: two requests sent back to back, one
// record each (the second read into crypto/tls with the first), are both
// answered.
func TestConnParkedIdleTLS(t *testing.T) {
	fw := startFake(t, "w1", 2, echo)
	h := startProxyWith(t, tlsConfig(testCert(t, "localhost")), func(s *Server) { s.manyConns, s.parkAfter = 0, 0 }, fw)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go h.srv.ServeTLS(l)
	const n = 10
	for i := 0; i < n; i++ {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req := func(body string) string {
			return "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
		}
		for round, bodies := range [][]string{{"a"}, {"bc", "def"}} {
			// One TLS record each, sent back to back: crypto/tls reads
			// the second along with the first.
			for _, b := range bodies {
				io.WriteString(c, req(b))
			}
			for _, want := range bodies {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("connection %d round %d: %v", i, round, err)
				}
				got, _ := io.ReadAll(resp.Body)
				if string(got) != want {
					t.Fatalf("connection %d round %d: %q, want %q", i, round, got, want)
				}
			}
			if round == 0 {
				waitFor(t, "the connection to park", 5*time.Second, func() bool {
					h.srv.idle.mu.Lock()
					defer h.srv.idle.mu.Unlock()
					return len(h.srv.idle.conns) == i+1
				})
			}
		}
	}
}
