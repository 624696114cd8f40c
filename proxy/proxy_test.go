package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// varsJSON answers the request's vars as JSON.
func varsJSON(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	b, _ := json.Marshal(req.vars)
	respond(c, 200, http.Header{"Content-Type": {"application/json"}}, b)
	return true
}

func getVars(t *testing.T, h *harness, path string, hdr ...string) map[string]string {
	t.Helper()
	resp, body := h.get(path, hdr...)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("vars: %v: %q", err, body)
	}
	return v
}

func TestVars(t *testing.T) {
	fw := startFake(t, "w1", 1, varsJSON)
	h := startProxy(t, defaultConfig(), fw)
	_, port, _ := net.SplitHostPort(h.addr)

	v := getVars(t, h, "/a%20b/c?x=1&y=%20", "Host", "example.com:8080", "X-Custom", "yes", "X_Under_Score", "spoof",
		"Cookie", "a=1", "Accept", "text/html")
	want := map[string]string{
		"QUERY_STRING":    "x=1&y=%20",
		"REQUEST_METHOD":  "GET",
		"CONTENT_TYPE":    "",
		"CONTENT_LENGTH":  "",
		"REQUEST_URI":     "/a%20b/c?x=1&y=%20",
		"PATH_INFO":       "/a b/c",
		"DOCUMENT_ROOT":   "",
		"SERVER_PROTOCOL": "HTTP/1.1",
		"REQUEST_SCHEME":  "http",
		"REMOTE_ADDR":     "127.0.0.1",
		"SERVER_PORT":     port,
		"SERVER_NAME":     "example.com",
		"HTTP_HOST":       "example.com:8080",
		"HTTP_X_CUSTOM":   "yes",
		"HTTP_COOKIE":     "a=1",
		"HTTP_ACCEPT":     "text/html",
		"BERTH_KEEPALIVE": "1",
	}
	for k, w := range want {
		if got, ok := v[k]; !ok || got != w {
			t.Errorf("%s = %q (present %v), want %q", k, got, ok, w)
		}
	}
	if v["REMOTE_PORT"] == "" {
		t.Error("REMOTE_PORT is empty")
	}
	for _, k := range []string{"HTTPS", "HTTP_X_UNDER_SCORE", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"} {
		if _, ok := v[k]; ok {
			t.Errorf("%s must not be sent", k)
		}
	}

	// A POST: CONTENT_* set once, never as HTTP_*; no duplicate keys.
	resp, _ := h.do("POST", "/p", strings.NewReader("abc"), "Content-Type", "text/x-test")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	req := fw.lastReq()
	if req.vars["CONTENT_TYPE"] != "text/x-test" || req.vars["CONTENT_LENGTH"] != "3" || string(req.body) != "abc" {
		t.Errorf("POST vars CONTENT_TYPE=%q CONTENT_LENGTH=%q body=%q", req.vars["CONTENT_TYPE"], req.vars["CONTENT_LENGTH"], req.body)
	}
	seen := map[string]bool{}
	for _, k := range req.keys {
		if seen[k] {
			t.Errorf("var %s sent twice", k)
		}
		seen[k] = true
	}
	if _, ok := req.vars["HTTP_CONTENT_TYPE"]; ok {
		t.Error("HTTP_CONTENT_TYPE sent")
	}

	// Dot segments and double slashes are resolved for the app, as nginx does.
	if v := getVars(t, h, "/a//b/./c/../d"); v["PATH_INFO"] != "/a/b/d" {
		t.Errorf("PATH_INFO = %q, want /a/b/d", v["PATH_INFO"])
	}
	if got := rawRequest(t, h.addr, "GET /../etc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("path above root: %q", firstLine(got))
	}
}

func TestForwardedHeaders(t *testing.T) {
	fw := startFake(t, "w1", 1, varsJSON)
	tests := []struct {
		name       string
		trusted    []string
		xff, xfp   string
		addr       string
		scheme     string
		remotePort bool
	}{
		{"untrusted peer: headers not believed", nil, "1.2.3.4", "https", "127.0.0.1", "http", true},
		{"untrusted (other net)", []string{"10.0.0.0/8"}, "1.2.3.4", "https", "127.0.0.1", "http", true},
		{"trusted peer", []string{"127.0.0.1/32"}, "1.2.3.4", "https", "1.2.3.4", "https", false},
		{"bare address trusted", []string{"127.0.0.1"}, "1.2.3.4", "", "1.2.3.4", "http", false},
		{"rightmost untrusted wins over spoofed left", []string{"127.0.0.0/8", "10.0.0.0/8"}, "6.6.6.6, 1.2.3.4, 10.0.0.5", "HTTPS", "1.2.3.4", "https", false},
		{"all trusted: leftmost", []string{"127.0.0.0/8", "10.0.0.0/8"}, "10.0.0.1, 10.0.0.2", "http", "10.0.0.1", "http", false},
		{"garbage: declined", []string{"127.0.0.0/8"}, "1.2.3.4, nonsense", "", "127.0.0.1", "http", true},
		{"ipv6", []string{"127.0.0.0/8"}, "2001:db8::1", "", "2001:db8::1", "http", false},
		{"bad proto ignored", []string{"127.0.0.0/8"}, "", "gopher", "127.0.0.1", "http", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.TrustedProxies = tc.trusted
			h := startProxy(t, cfg, fw)
			var hdr []string
			if tc.xff != "" {
				hdr = append(hdr, "X-Forwarded-For", tc.xff)
			}
			if tc.xfp != "" {
				hdr = append(hdr, "X-Forwarded-Proto", tc.xfp)
			}
			v := getVars(t, h, "/", hdr...)
			if v["REMOTE_ADDR"] != tc.addr || v["REQUEST_SCHEME"] != tc.scheme {
				t.Errorf("REMOTE_ADDR %q REQUEST_SCHEME %q, want %q %q", v["REMOTE_ADDR"], v["REQUEST_SCHEME"], tc.addr, tc.scheme)
			}
			if (tc.scheme == "https") != (v["HTTPS"] == "on") {
				t.Errorf("HTTPS = %q with scheme %s", v["HTTPS"], tc.scheme)
			}
			if (v["REMOTE_PORT"] != "") != tc.remotePort {
				t.Errorf("REMOTE_PORT = %q", v["REMOTE_PORT"])
			}
			// Passed on unchanged either way: the app may log them.
			if tc.xff != "" && v["HTTP_X_FORWARDED_FOR"] != tc.xff {
				t.Errorf("HTTP_X_FORWARDED_FOR = %q", v["HTTP_X_FORWARDED_FOR"])
			}
		})
	}
}

func TestLimits(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	cfg := defaultConfig()
	cfg.MaxBodySize = 1000
	h := startProxy(t, cfg, fw)

	resp, _ := h.do("POST", "/", strings.NewReader(strings.Repeat("x", 1001)))
	if resp.StatusCode != 413 {
		t.Errorf("Content-Length over the limit: %d, want 413", resp.StatusCode)
	}
	// Chunked: refused when the count passes the limit.
	resp, _ = h.do("POST", "/", io.MultiReader(strings.NewReader(strings.Repeat("x", 600)), strings.NewReader(strings.Repeat("y", 600))))
	if resp.StatusCode != 413 {
		t.Errorf("chunked over the limit: %d, want 413", resp.StatusCode)
	}
	resp, body := h.do("POST", "/", strings.NewReader(strings.Repeat("x", 1000)))
	if resp.StatusCode != 200 || len(body) != 1000 {
		t.Errorf("at the limit: %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := fw.requests.Load(); n != 1 {
		t.Errorf("worker saw %d requests, want 1", n)
	}

	// Expect: 100-continue over the limit: 413 without reading the body.
	got := rawRequest(t, h.addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 413 ") {
		t.Errorf("expect over the limit: %q", firstLine(got))
	}

	rawTests := []struct{ name, raw, want string }{
		{"huge header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n", "HTTP/1.1 431 "},
		{"huge request line", "GET /" + strings.Repeat("a", 40<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 431 "},
		{"garbage", "GARBAGE\r\n\r\n", "HTTP/1.1 400 "},
		{"bad header line", "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "HTTP/1.1 400 "},
		{"no host", "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
		{"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "},
		{"bad chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400 "},
	}
	for _, tc := range rawTests {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, h.addr, tc.raw); !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want %q", firstLine(got), tc.want)
			}
		})
	}
}

func TestExpectContinue(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	h := startProxy(t, defaultConfig(), fw)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q, %v", line, err)
	}
	br.ReadString('\n') // blank line after 100 Continue
	io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
}

func TestBodies(t *testing.T) {
	fw := startFake(t, "w1", 2, echo)
	h := startProxy(t, defaultConfig(), fw)
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB: spills to a temp file
	tests := []struct {
		name string
		body io.Reader
		want []byte
	}{
		{"empty", bytes.NewReader(nil), nil},
		{"small", strings.NewReader("small body"), []byte("small body")},
		{"large", bytes.NewReader(big), big},
		{"chunked large", io.MultiReader(bytes.NewReader(big[:100000]), bytes.NewReader(big[100000:])), big},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.do("POST", "/", tc.body)
			if resp.StatusCode != 200 || body != string(tc.want) {
				t.Fatalf("%d, body %d bytes, want %d", resp.StatusCode, len(body), len(tc.want))
			}
			if cl := fw.lastReq().vars["CONTENT_LENGTH"]; cl != strconv.Itoa(len(tc.want)) && !(len(tc.want) == 0 && cl == "0") {
				t.Errorf("CONTENT_LENGTH %q", cl)
			}
		})
	}
}

// A 1-thread worker must not be held by a client trickling its upload.
func TestSlowUploadDoesNotHoldWorker(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	cfg := defaultConfig()
	cfg.QueueSize = 0 // a held worker would make the second request fail at once
	h := startProxy(t, cfg, fw)

	slow, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(slow, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")

	for i := 0; i < 3; i++ {
		resp, body := h.get("/other")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d while an upload trickles: %d %s", i, resp.StatusCode, body)
		}
	}
	if n := fw.requests.Load(); n != 3 {
		t.Fatalf("worker saw %d requests, want 3 (the upload is not complete)", n)
	}
	io.WriteString(slow, "world")
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "helloworld" {
		t.Fatalf("upload echoed %q", b)
	}
}

// A client that does not read its (large) response must not hold the
// worker: the proxy buffers the response and frees the worker.
func TestSlowReaderDoesNotHoldWorker(t *testing.T) {
	big := bytes.Repeat([]byte("z"), 4<<20) // 4 MiB: past the memory buffer, into a temp file
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		if req.vars["PATH_INFO"] == "/big" {
			respond(c, 200, nil, big)
		} else {
			respond(c, 200, nil, []byte("small"))
		}
		return true
	})
	cfg := defaultConfig()
	cfg.QueueSize = 0
	h := startProxy(t, cfg, fw)

	lazy, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer lazy.Close()
	lazy.(*net.TCPConn).SetReadBuffer(32 << 10) // the kernel must not absorb the 4 MiB
	lazy.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(lazy, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the worker to answer /big", 5*time.Second, func() bool { return fw.requests.Load() == 1 })
	// The worker is free again once the proxy holds the response.
	waitFor(t, "the worker slot to be released", 5*time.Second, func() bool {
		return h.srv.Stats().Workers["w1"].InFlight == 0
	})
	resp, body := h.get("/small")
	if resp.StatusCode != 200 || body != "small" {
		t.Fatalf("second client: %d %q", resp.StatusCode, body)
	}
	r, err := http.ReadResponse(bufio.NewReader(lazy), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil || n != int64(len(big)) {
		t.Fatalf("lazy client got %d bytes, %v", n, err)
	}
}

func TestStreaming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"x-accel-buffering", http.Header{"X-Accel-Buffering": {"no"}, "Content-Type": {"text/plain"}}},
		{"event-stream", http.Header{"Content-Type": {"text/event-stream"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := make(chan struct{})
			fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
				var b bytes.Buffer
				b.WriteString("HTTP/1.1 200 OK\r\n")
				tc.header.Write(&b)
				b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
				b.WriteString("5\r\nfirst\r\n")
				c.Write(b.Bytes())
				<-next
				io.WriteString(c, "6\r\nsecond\r\n0\r\n\r\n")
				return true
			})
			h := startProxy(t, defaultConfig(), fw)
			resp, err := h.client.Get(h.url + "/events")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("X-Accel-Buffering") != "" {
				t.Error("X-Accel-Buffering reached the client")
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
				t.Fatalf("first chunk %q, %v (not flushed before the worker finished?)", buf, err)
			}
			if got := h.srv.Stats().Workers["w1"].InFlight; got != 1 {
				t.Errorf("in flight during the stream = %d, want 1 (the worker is held)", got)
			}
			close(next)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != "second" {
				t.Fatalf("rest %q, %v", rest, err)
			}
			// The connection was well framed: it is reused.
			resp2, body := h.get("/again")
			if resp2.StatusCode != 200 || !strings.Contains(body, "first") {
				t.Fatalf("second request: %d %q", resp2.StatusCode, body)
			}
			if n := fw.accepted.Load(); n != 1 {
				t.Errorf("worker accepted %d connections, want 1 (kept alive)", n)
			}
		})
	}
}

// blocker answers once release is closed.
func blocker(release chan struct{}) fakeHandler {
	return func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		select {
		case <-release:
		case <-fw.done:
			return false
		}
		respond(c, 200, nil, []byte("done "+req.vars["PATH_INFO"]))
		return true
	}
}

func TestQueue(t *testing.T) {
	release := make(chan struct{})
	fw := startFake(t, "w1", 1, blocker(release))
	cfg := defaultConfig()
	cfg.QueueSize = 1
	cfg.QueueTimeout = control.Duration(10 * time.Second)
	h := startProxy(t, cfg, fw)

	type result struct {
		code int
		body string
	}
	results := make(chan result, 2)
	for _, p := range []string{"/one", "/two"} {
		go func(p string) {
			resp, err := h.client.Get(h.url + p)
			if err != nil {
				results <- result{0, err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{resp.StatusCode, string(b)}
		}(p)
		if p == "/one" {
			waitFor(t, "the first request in flight", 5*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 1 })
		}
	}
	waitFor(t, "one request queued", 5*time.Second, func() bool { return h.srv.Stats().Queue == 1 })

	start := time.Now()
	resp, body := h.get("/three")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "queue is full") {
		t.Fatalf("queue full: %d Retry-After=%q %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("queue-full 503 took %s; it must be immediate", time.Since(start))
	}
	close(release)
	for i := 0; i < 2; i++ {
		r := <-results
		if r.code != 200 {
			t.Errorf("queued request: %d %s", r.code, r.body)
		}
	}
	if got := h.srv.Stats().Queue; got != 0 {
		t.Errorf("queue depth after = %d", got)
	}
}

func TestQueueTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	fw := startFake(t, "w1", 1, blocker(release))
	cfg := defaultConfig()
	cfg.QueueTimeout = control.Duration(200 * time.Millisecond)
	h := startProxy(t, cfg, fw)
	go h.client.Get(h.url + "/hold")
	waitFor(t, "the first request in flight", 5*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 1 })
	start := time.Now()
	resp, body := h.get("/waits")
	took := time.Since(start)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "200ms") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("answered after %s, want about 200ms", took)
	}
	if q := h.srv.Stats().Queue; q != 0 {
		t.Errorf("queue depth %d after the timeout", q)
	}
}

func TestNoWorker(t *testing.T) {
	cfg := defaultConfig()
	cfg.QueueTimeout = control.Duration(200 * time.Millisecond)
	h := startProxy(t, cfg)
	start := time.Now()
	resp, body := h.get("/")
	if waited := time.Since(start); waited < 200*time.Millisecond || waited > 3*time.Second {
		t.Errorf("answered after %s; want the queue timeout (200ms)", waited)
	}
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "no worker is ready") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	h.get("/")
	waitFor(t, "the error log line", 2*time.Second, func() bool { return strings.Contains(h.elog.String(), "no worker is ready") })
	if n := strings.Count(h.elog.String(), "no worker is ready"); n != 1 {
		t.Errorf("logged %d times, want 1 (rate limited):\n%s", n, h.elog.String())
	}
	// A draining worker is no worker either.
	fw := startFake(t, "w1", 1, hello)
	w := fw.worker()
	w.Draining = true
	h.srv.SetWorkers([]control.Worker{w})
	if resp, _ := h.get("/"); resp.StatusCode != 503 {
		t.Errorf("only a draining worker: %d, want 503", resp.StatusCode)
	}
	h.setWorkers(fw)
	if resp, _ := h.get("/"); resp.StatusCode != 200 {
		t.Errorf("after a worker came: %d", resp.StatusCode)
	}
}

// Requests that arrive before any worker is ready (boot, or every worker
// crashed) wait for one, up to the queue timeout.
func TestRequestsWaitForTheFirstWorker(t *testing.T) {
	h := startProxy(t, defaultConfig()) // queue timeout 5s
	fw := startFake(t, "w1", 1, hello)
	type result struct {
		code int
		body string
	}
	res := make(chan result, 3)
	for i := 0; i < 3; i++ {
		go func() {
			resp, err := h.client.Get(h.url + "/")
			if err != nil {
				res <- result{0, err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			res <- result{resp.StatusCode, string(b)}
		}()
	}
	waitFor(t, "3 queued requests", 2*time.Second, func() bool { return h.srv.Stats().Queue == 3 })
	h.setWorkers(fw)
	for i := 0; i < 3; i++ {
		if r := <-res; r.code != 200 || r.body != "hello from w1" {
			t.Fatalf("%d %q", r.code, r.body)
		}
	}
}

func TestDueAndDrained(t *testing.T) {
	w1 := startFake(t, "w1", 1, hello)
	w2 := startFake(t, "w2", 1, hello)
	h := startProxy(t, defaultConfig())
	c1 := w1.worker()
	c1.MaxRequests = 3
	h.srv.SetWorkers([]control.Worker{c1})
	for i := 0; i < 5; i++ {
		if resp, _ := h.get("/"); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d (a due worker keeps serving until it drains)", i, resp.StatusCode)
		}
		if i == 1 && len(h.eventsOf(control.TypeDue)) != 0 {
			t.Fatal("due sent before max_requests")
		}
	}
	waitFor(t, "due", 2*time.Second, func() bool { return len(h.eventsOf(control.TypeDue)) == 1 })
	if ev := h.eventsOf(control.TypeDue)[0]; ev.Worker != "w1" {
		t.Fatalf("due for %q", ev.Worker)
	}

	// Drain w1 while a request is in flight on it.
	release := make(chan struct{})
	w1.setHandler(blocker(release))
	done := make(chan int, 1)
	go func() {
		resp, err := h.client.Get(h.url + "/slow")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, "the slow request in flight", 5*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 1 })
	c1.Draining = true
	h.srv.SetWorkers([]control.Worker{c1, w2.worker()})
	for i := 0; i < 3; i++ {
		if _, body := h.get("/"); body != "hello from w2" {
			t.Fatalf("a draining worker got traffic: %q", body)
		}
	}
	time.Sleep(50 * time.Millisecond) // would a premature drained show up?
	if len(h.eventsOf(control.TypeDrained)) != 0 {
		t.Fatal("drained sent while a request is in flight")
	}
	close(release)
	if code := <-done; code != 200 {
		t.Fatalf("in-flight request on a draining worker: %d", code)
	}
	waitFor(t, "drained", 2*time.Second, func() bool { return len(h.eventsOf(control.TypeDrained)) == 1 })
	if ev := h.eventsOf(control.TypeDrained)[0]; ev.Worker != "w1" {
		t.Fatalf("drained for %q", ev.Worker)
	}
	// An idle worker told to drain is drained at once, and only once.
	c2 := w2.worker()
	c2.Draining = true
	h.srv.SetWorkers([]control.Worker{c1, c2})
	h.srv.SetWorkers([]control.Worker{c1, c2})
	waitFor(t, "drained w2", 2*time.Second, func() bool { return len(h.eventsOf(control.TypeDrained)) == 2 })
	time.Sleep(50 * time.Millisecond)
	if n := len(h.eventsOf(control.TypeDrained)); n != 2 {
		t.Fatalf("%d drained events, want 2", n)
	}
	if n := len(h.eventsOf(control.TypeDue)); n != 1 {
		t.Fatalf("%d due events, want 1", n)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	w1 := startFake(t, "w1", 1, blocker(release))
	w2 := startFake(t, "w2", 1, hello)
	cfg := defaultConfig()
	cfg.Timeout = control.Duration(300 * time.Millisecond)
	h := startProxy(t, cfg, w1)
	start := time.Now()
	resp, body := h.get("/stuck")
	if resp.StatusCode != 504 {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("504 after %s", took)
	}
	waitFor(t, "timeout event", 2*time.Second, func() bool { return len(h.eventsOf(control.TypeTimeout)) == 1 })
	if ev := h.eventsOf(control.TypeTimeout)[0]; ev.Worker != "w1" {
		t.Fatalf("timeout for %q", ev.Worker)
	}
	if n := w1.requests.Load(); n != 1 {
		t.Errorf("the stuck request reached the worker %d times: never retry after a timeout", n)
	}
	// w1 is not routable any more, even though the supervisor has not acted yet.
	h.srv.SetWorkers([]control.Worker{w1.worker(), w2.worker()})
	for i := 0; i < 3; i++ {
		if _, body := h.get("/"); body != "hello from w2" {
			t.Fatalf("request after timeout went to %q", body)
		}
	}
}

// dies reads the request and closes without answering, like a crash.
func dies(fw *fakeWorker, c net.Conn, req *fakeReq) bool { return false }

func TestRetry(t *testing.T) {
	t.Run("GET not replayed after the worker read it", func(t *testing.T) {
		// A query of death: the worker read the request and died. Sending
		// it to the next worker would kill that one too.
		bad := startFake(t, "bad", 1, dies)
		good := startFake(t, "good", 1, hello)
		h := startProxy(t, defaultConfig(), bad, good)
		saw502 := false
		for i := 0; i < 4; i++ {
			before, beforeGood := bad.requests.Load(), good.requests.Load()
			resp, body := h.get("/")
			hitBad := bad.requests.Load() > before
			switch {
			case hitBad && resp.StatusCode == 502 && good.requests.Load() == beforeGood:
				saw502 = true
			case !hitBad && resp.StatusCode == 200 && body == "hello from good":
			default:
				t.Fatalf("request %d: hit bad worker %v, got %d %q", i, hitBad, resp.StatusCode, body)
			}
		}
		if !saw502 {
			t.Fatal("no request went to the dying worker; the test proves nothing")
		}
		if m := h.metricsText(); !strings.Contains(m, "berth_retries_refused_total 1") && !strings.Contains(m, "berth_retries_refused_total 2") {
			t.Errorf("berth_retries_refused_total not counted:\n%s", grepLine(m, "berth_retries"))
		}
		if !strings.Contains(h.elog.String(), "not replayed") {
			t.Errorf("not logged: %q", h.elog.String())
		}
	})
	t.Run("GET the worker never read is retried", func(t *testing.T) {
		// A worker that accepts and closes at once, reading nothing (it is
		// exiting): the request never reached the app.
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(tempDir(t), "closer.sock"), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		var accepted atomic.Int64
		go func() {
			for {
				c, err := l.AcceptUnix()
				if err != nil {
					return
				}
				accepted.Add(1)
				time.Sleep(20 * time.Millisecond) // let the request land unread
				c.Close()
			}
		}()
		good := startFake(t, "good", 1, hello)
		h := startProxy(t, defaultConfig())
		if err := h.srv.SetWorkers([]control.Worker{{ID: "closer", Socket: l.Addr().String(), Capacity: 1}, good.worker()}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			resp, body := h.get("/")
			if resp.StatusCode != 200 || body != "hello from good" {
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
			}
		}
		if accepted.Load() == 0 {
			t.Fatal("no request went to the closing worker; the test proves nothing")
		}
		if m := h.metricsText(); !strings.Contains(m, `berth_retries_total{reason="unread"}`) || strings.Contains(m, `berth_retries_total{reason="unread"} 0`) {
			t.Errorf("retry not counted:\n%s", grepLine(m, "berth_retries"))
		}
	})
	t.Run("POST not retried after the worker read it", func(t *testing.T) {
		bad := startFake(t, "bad", 1, dies)
		good := startFake(t, "good", 1, echo)
		h := startProxy(t, defaultConfig(), bad, good)
		saw502 := false
		for i := 0; i < 4; i++ {
			before := bad.requests.Load()
			resp, body := h.do("POST", "/", strings.NewReader("payload"))
			hitBad := bad.requests.Load() > before
			switch {
			case hitBad && resp.StatusCode == 502:
				saw502 = true
			case !hitBad && resp.StatusCode == 200 && body == "payload":
			default:
				t.Fatalf("request %d: hit bad worker %v, got %d %q", i, hitBad, resp.StatusCode, body)
			}
		}
		if !saw502 {
			t.Fatal("no POST reached the dying worker")
		}
	})
	t.Run("POST retried after a dial failure", func(t *testing.T) {
		gone := startFake(t, "gone", 1, echo)
		gone.stop()
		os.Remove(gone.path)
		good := startFake(t, "good", 1, echo)
		h := startProxy(t, defaultConfig(), gone, good)
		for i := 0; i < 4; i++ {
			resp, body := h.do("POST", "/", strings.NewReader("payload"))
			if resp.StatusCode != 200 || body != "payload" {
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
			}
		}
		if !strings.Contains(h.elog.String(), "connect") {
			t.Errorf("the dial failure was not logged: %q", h.elog.String())
		}
	})
	t.Run("retried once only", func(t *testing.T) {
		b1 := startFake(t, "b1", 1, echo)
		b2 := startFake(t, "b2", 1, echo)
		b3 := startFake(t, "b3", 1, echo)
		for _, b := range []*fakeWorker{b1, b2, b3} {
			b.stop()
			os.Remove(b.path)
		}
		h := startProxy(t, defaultConfig(), b1, b2, b3)
		resp, _ := h.get("/")
		if resp.StatusCode != 502 {
			t.Fatalf("%d, want 502", resp.StatusCode)
		}
		if n := strings.Count(h.elog.String(), "connect "); n != 2 {
			t.Fatalf("%d attempts, want 2:\n%s", n, h.elog.String())
		}
	})
}

func grepLine(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A pooled connection the worker closed (it restarted, or its idle timer
// fired) must not surface as an error, even for a POST.
func TestStalePooledConnection(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	h := startProxy(t, defaultConfig(), fw)
	if resp, _ := h.do("POST", "/", strings.NewReader("one")); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	waitFor(t, "the connection to be pooled", 2*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 0 })
	fw.closeConns()
	// Let the FIN arrive; the proxy must notice on reuse.
	time.Sleep(20 * time.Millisecond)
	resp, body := h.do("POST", "/", strings.NewReader("two"))
	if resp.StatusCode != 200 || body != "two" {
		t.Fatalf("%d %q after the worker closed the pooled connection", resp.StatusCode, body)
	}
	if n := fw.accepted.Load(); n != 2 {
		t.Errorf("accepted %d connections, want 2 (a fresh dial)", n)
	}
	if m := h.metricsText(); !strings.Contains(m, `berth_upstream_errors_total{kind="stale"} 1`) {
		t.Errorf("the stale connection was not the path taken:\n%s", m)
	}
}

// closeDelimited answers like plain uWSGI: no Content-Length, then close.
func closeDelimited(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited "+req.vars["PATH_INFO"])
	return false
}

func TestCloseDelimitedWorker(t *testing.T) {
	fw := startFake(t, "w1", 1, closeDelimited)
	h := startProxy(t, defaultConfig(), fw)
	for i := 0; i < 5; i++ {
		p := "/r" + strconv.Itoa(i)
		resp, body := h.get(p)
		if resp.StatusCode != 200 || body != "close-delimited "+p {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		if resp.ContentLength != int64(len(body)) {
			t.Errorf("Content-Length %d for %d bytes", resp.ContentLength, len(body))
		}
	}
	if n := fw.accepted.Load(); n != 5 {
		t.Errorf("%d connections for 5 requests", n)
	}
}

// A uWSGI-like worker that frames with Content-Length but closes anyway:
// after a couple of stale finds the proxy stops pooling its connections.
func TestWorkerWithoutKeepalive(t *testing.T) {
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		respond(c, 200, nil, []byte("ok"))
		return false
	})
	h := startProxy(t, defaultConfig(), fw)
	// Back to back: the worker's close may arrive after the next write.
	for i := 0; i < 10; i++ {
		if resp, body := h.do("POST", "/", strings.NewReader("x")); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if m := h.metricsText(); !strings.Contains(m, `berth_upstream_errors_total{kind="stale"} 2`) {
		t.Errorf("want 2 stale connections, then no pooling:\n%s", m)
	}
}

func TestKeepAliveReuse(t *testing.T) {
	fw := startFake(t, "w1", 2, hello)
	cfg := defaultConfig()
	cfg.QueueSize = 64
	h := startProxy(t, cfg, fw)
	for i := 0; i < 50; i++ {
		if resp, _ := h.get("/"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	if n := fw.accepted.Load(); n != 1 {
		t.Errorf("50 sequential requests used %d connections, want 1", n)
	}
	// Concurrency never opens more connections than the capacity: a third
	// one would wait forever on a 2-thread worker.
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				resp, err := h.client.Get(h.url + "/")
				if err != nil {
					bad.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d failures", bad.Load())
	}
	if n := fw.accepted.Load(); n > 2 {
		t.Errorf("%d connections to a worker of capacity 2", n)
	}
}

func TestResponseHeaders(t *testing.T) {
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "HTTP/1.1 201 Created\r\nContent-Type: text/x\r\nConnection: X-Private\r\nX-Private: drop\r\n"+
			"Keep-Alive: timeout=5\r\nX-Accel-Buffering: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"3\r\nabc\r\n0\r\n\r\n")
		return true
	})
	h := startProxy(t, defaultConfig(), fw)
	resp, body := h.get("/")
	if resp.StatusCode != 201 || body != "abc" || resp.ContentLength != 3 {
		t.Fatalf("%d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	for _, k := range []string{"X-Private", "Keep-Alive", "X-Accel-Buffering"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("%s: %q reached the client", k, v)
		}
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 {
		t.Errorf("Set-Cookie %q", got)
	}
	// HEAD: no body, the worker's Content-Length kept.
	fw.setHandler(func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n")
		return true
	})
	resp, body = h.do("HEAD", "/", nil)
	if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Length") != "1234" {
		t.Errorf("HEAD: %d %q Content-Length %q", resp.StatusCode, body, resp.Header.Get("Content-Length"))
	}
	// No Content-Type from the worker: none invented.
	fw.setHandler(func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<html")
		return true
	})
	resp, _ = h.get("/")
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		t.Errorf("Content-Type %q invented", ct)
	}
	// A malformed response is a 502.
	fw.setHandler(func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "NOT HTTP\r\n\r\n")
		return false
	})
	if resp, _ := h.get("/"); resp.StatusCode != 502 {
		t.Errorf("malformed response: %d", resp.StatusCode)
	}
	// A truncated body is a 502, the connection not reused.
	fw.setHandler(func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
		return false
	})
	if resp, _ := h.get("/"); resp.StatusCode != 502 {
		t.Errorf("truncated response: %d", resp.StatusCode)
	}
}

func TestAccessLog(t *testing.T) {
	fw := startFake(t, "w1", 1, hello)
	cfg := defaultConfig()
	cfg.AccessLog = "combined"
	h := startProxy(t, cfg, fw)
	h.get("/path?q=1", "User-Agent", `agent "quoted"`, "Referer", "http://ref/")
	waitFor(t, "a combined log line", 2*time.Second, func() bool { return strings.Contains(h.alog.String(), "\n") })
	line := h.alog.String()
	re := regexp.MustCompile(`^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "GET /path\?q=1 HTTP/1\.1" 200 13 "http://ref/" "agent \\x22quoted\\x22"\n$`)
	if !re.MatchString(line) {
		t.Errorf("combined line %q", line)
	}

	cfg.AccessLog = "json"
	h.srv.SetConfig(cfg)
	h.get("/j", "User-Agent", "ua")
	waitFor(t, "a json log line", 2*time.Second, func() bool { return strings.Count(h.alog.String(), "\n") == 2 })
	jl := strings.SplitN(h.alog.String(), "\n", 3)[1]
	var e map[string]any
	if err := json.Unmarshal([]byte(jl), &e); err != nil {
		t.Fatalf("json line %q: %v", jl, err)
	}
	for k, want := range map[string]any{"remote": "127.0.0.1", "method": "GET", "uri": "/j", "proto": "HTTP/1.1",
		"status": 200.0, "bytes": 13.0, "worker": "w1", "ua": "ua"} {
		if e[k] != want {
			t.Errorf("json %s = %v, want %v", k, e[k], want)
		}
	}
	if _, err := time.Parse(time.RFC3339, e["time"].(string)); err != nil {
		t.Errorf("time %v: %v", e["time"], err)
	}
	if _, ok := e["duration_ms"].(float64); !ok {
		t.Errorf("duration_ms %v", e["duration_ms"])
	}

	cfg.AccessLog = "off"
	h.srv.SetConfig(cfg)
	h.get("/off")
	time.Sleep(250 * time.Millisecond) // two flush ticks
	if n := strings.Count(h.alog.String(), "\n"); n != 2 {
		t.Errorf("%d lines with the log off", n)
	}
}

func TestLogFormatsExact(t *testing.T) {
	when := time.Date(2024, 3, 9, 7, 5, 3, 0, time.FixedZone("", -5*3600))
	e := &logEntry{when: when, remote: "10.1.2.3", method: "GET", uri: "/a\"b\x01", proto: "HTTP/1.1", status: 404,
		bytes: 12, dur: 1500 * time.Microsecond, worker: "2.1", ua: "ü\"\n",
		in: &reqInfo{ServerName: "example.com"}, reqID: "0123456789abcdef0123456789abcdef", up: &upTimes{n: 1, d: [2]time.Duration{1200 * time.Microsecond}}}
	if got, want := string(appendCombined(nil, e)), `10.1.2.3 - - [09/Mar/2024:07:05:03 -0500] "GET /a\x22b\x01 HTTP/1.1" 404 12 "-" "\xC3\xBC\x22\x0A"`+"\n"; got != want {
		t.Errorf("combined\n got %s\nwant %s", got, want)
	}
	if got, want := string(appendJSON(nil, e)), `{"time":"2024-03-09T07:05:03.000-05:00","remote":"10.1.2.3","method":"GET","uri":"/a\"b\u0001","proto":"HTTP/1.1","status":404,"bytes":12,"duration_ms":1.500,"worker":"2.1","ua":"ü\"\n","referer":"","host":"example.com","request_id":"0123456789abcdef0123456789abcdef","user":"","upstream_duration_ms":1.200}`+"\n"; got != want {
		t.Errorf("json\n got %s\nwant %s", got, want)
	}
}

func TestMetricsAndStats(t *testing.T) {
	fw := startFake(t, "w1", 1, hello)
	cfg := defaultConfig()
	cfg.QueueTimeout = control.Duration(50 * time.Millisecond)
	h := startProxy(t, cfg)
	h.get("/") // 503 after the queue timeout: no worker
	h.setWorkers(fw)
	for i := 0; i < 3; i++ {
		h.get("/")
	}
	text := h.metricsText()
	for _, want := range []string{
		`berth_http_requests_total{code="200"} 3`,
		`berth_http_requests_total{code="503"} 1`,
		`berth_worker_requests_total{worker="w1"} 3`,
		`berth_upstream_errors_total{kind="no_worker"} 1`,
		`berth_queue_depth 0`,
		`berth_http_request_duration_seconds_count 4`,
		`berth_queue_wait_seconds_count 1`, // the request that waited for a worker in vain
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	waitFor(t, "a stats event with 3 requests", 3*time.Second, func() bool {
		for _, m := range h.eventsOf(control.TypeStats) {
			if m.Stats.Workers["w1"].Requests == 3 {
				return true
			}
		}
		return false
	})
	n := len(h.eventsOf(control.TypeStats))
	time.Sleep(1200 * time.Millisecond)
	if m := len(h.eventsOf(control.TypeStats)); m != n {
		t.Errorf("stats sent again without change (%d → %d)", n, m)
	}
}

func (h *harness) metricsText() string {
	rec := &syncBuf{}
	req, _ := http.NewRequest("GET", "/metrics", nil)
	h.srv.MetricsHandler().ServeHTTP(&recorder{h: http.Header{}, w: rec}, req)
	return rec.String()
}

type recorder struct {
	h http.Header
	w io.Writer
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(p []byte) (int, error) { return r.w.Write(p) }
func (r *recorder) WriteHeader(int)             {}

// Config swaps under load: every request sees one whole config.
func TestConfigSwapUnderLoad(t *testing.T) {
	base := tempDir(t)
	for _, d := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(base, d), 0o755)
		os.WriteFile(filepath.Join(base, d, "f.txt"), []byte(d), 0o644)
	}
	fw := startFake(t, "w1", 4, echo)
	cfgA := defaultConfig()
	cfgA.Static = []control.Static{{URL: "/s/", Dir: filepath.Join(base, "a")}}
	cfgA.AccessLog = "combined"
	cfgB := defaultConfig()
	cfgB.Static = []control.Static{{URL: "/s/", Dir: filepath.Join(base, "b")}}
	cfgB.AccessLog = "json"
	cfgB.MaxBodySize = 1 << 20
	h := startProxy(t, cfgA, fw)

	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Add(1)
	go func() {
		defer swaps.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c := cfgA
			if i%2 == 1 {
				c = cfgB
			}
			if err := h.srv.SetConfig(c); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				var resp *http.Response
				var err error
				if i%2 == 0 {
					resp, err = h.client.Get(h.url + "/s/f.txt")
				} else {
					resp, err = h.client.Post(h.url+"/echo", "text/plain", strings.NewReader(fmt.Sprint(g, i)))
				}
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				ok := resp.StatusCode == 200 && (i%2 == 1 && string(b) == fmt.Sprint(g, i) || i%2 == 0 && (string(b) == "a" || string(b) == "b"))
				if !ok {
					errs <- fmt.Sprintf("%d %q", resp.StatusCode, b)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(stop)
	swaps.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if err := h.srv.SetConfig(control.Proxy{AccessLog: "fancy"}); err == nil {
		t.Error("a bad access_log was accepted")
	}
	if err := h.srv.SetConfig(control.Proxy{TrustedProxies: []string{"not-a-cidr"}}); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}

func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	fw := startFake(t, "w1", 1, blocker(release))
	h := startProxy(t, defaultConfig(), fw)
	done := make(chan string, 1)
	go func() {
		resp, err := h.client.Get(h.url + "/inflight")
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- string(b)
	}()
	waitFor(t, "the request in flight", 5*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 1 })
	shut := make(chan error, 1)
	go func() { shut <- h.srv.Shutdown(t.Context()) }()
	// New connections are refused once shutdown began.
	waitFor(t, "the listener to close", 5*time.Second, func() bool {
		c, err := net.Dial("tcp", h.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	if got := <-done; got != "done /inflight" {
		t.Fatalf("in-flight request: %q", got)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A client that leaves while queued gives its place up; a handed-off
// request whose client left does not leave a half-used connection pooled.
func TestClientGoneWhileQueued(t *testing.T) {
	release := make(chan struct{})
	fw := startFake(t, "w1", 1, blocker(release))
	h := startProxy(t, defaultConfig(), fw)
	first := make(chan int, 1)
	go func() {
		resp, err := h.client.Get(h.url + "/first")
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	waitFor(t, "the first request in flight", 5*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 1 })
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the second request queued", 5*time.Second, func() bool { return h.srv.Stats().Queue == 1 })
	c.Close()
	waitFor(t, "the queue to empty", 5*time.Second, func() bool { return h.srv.Stats().Queue == 0 })
	close(release)
	if code := <-first; code != 200 {
		t.Fatalf("first request: %d", code)
	}
	for i := 0; i < 3; i++ {
		if resp, body := h.get("/after"); resp.StatusCode != 200 || body != "done /after" {
			t.Fatalf("after: %d %q", resp.StatusCode, body)
		}
	}
	if n := fw.requests.Load(); n != 4 {
		t.Errorf("worker saw %d requests, want 4 (the abandoned one never sent)", n)
	}
}

// Many clients queue, some give up, some time out: every request ends with
// an answer or the client's own cancellation, and the queue and in-flight
// counts return to zero (pooled waiters are never reused while queued).
func TestQueueChurn(t *testing.T) {
	slow := func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		time.Sleep(2 * time.Millisecond)
		respond(c, 200, nil, []byte("ok"))
		return true
	}
	w1, w2 := startFake(t, "w1", 1, slow), startFake(t, "w2", 1, slow)
	cfg := defaultConfig()
	cfg.QueueSize = 64
	cfg.QueueTimeout = control.Duration(150 * time.Millisecond)
	h := startProxy(t, cfg, w1, w2)
	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+i%7*30)*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", h.url+"/", nil)
			resp, err := h.client.Do(req)
			key := "client gave up"
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				key = strconv.Itoa(resp.StatusCode)
			}
			mu.Lock()
			outcomes[key]++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	t.Logf("outcomes: %v", outcomes)
	for k := range outcomes {
		if k != "200" && k != "503" && k != "client gave up" {
			t.Errorf("unexpected outcome %q: %v", k, outcomes)
		}
	}
	waitFor(t, "an idle router", 3*time.Second, func() bool {
		st := h.srv.Stats()
		return st.Queue == 0 && st.Workers["w1"].InFlight == 0 && st.Workers["w2"].InFlight == 0
	})
	if resp, body := h.get("/"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the churn: %d %q", resp.StatusCode, body)
	}
}
