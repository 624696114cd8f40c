package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
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
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3App answers /, echoes a POST's body on /echo, streams three pieces
// 100 ms apart on /stream, and takes ?ms= milliseconds on /slow.
const h3App = `import time
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        def gen():
            for i in range(3):
                yield ("piece %d\n" % i).encode()
                time.sleep(0.1)
        return gen()
    if path == "/slow":
        ms = int(environ.get("QUERY_STRING", "ms=0").split("=")[1] or 0)
        time.sleep(ms / 1000.0)
    body = ("ok %s %s\n" % (environ["SERVER_PROTOCOL"], environ["wsgi.url_scheme"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// udpTCPPort is a loopback port free for both TCP and UDP: berth binds an
// https:// listener's port number over both for HTTP/3.
func udpTCPPort(t *testing.T) int {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("no loopback port free for both TCP and UDP")
	return 0
}

// h3Client is quic-go's HTTP/3 client for name at berth's https port.
func h3Client(name string) (*http.Client, *http3.Transport) {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{ServerName: name, InsecureSkipVerify: true},
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: 3 * time.Second, MaxIdleTimeout: 10 * time.Second},
	}
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}, tr
}

// startH3Berth runs berth with a self-signed certificate for h3.test on an
// https:// listener with tls.http3, and returns it and the https port.
func startH3Berth(t *testing.T, extra string) (*berthProc, int) {
	t.Helper()
	certDir, err := os.MkdirTemp("", "bt-h3")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(certDir) })
	writeCert(t, certDir, "h3.test")
	port := udpTCPPort(t)
	plain := freeAddr(t)
	cfg := fmt.Sprintf(`listen: [%q, "https://127.0.0.1:%d"]
tls:
  certificates: [{cert: %s, key: %s}]
  http3: true
workers: {count: 2, threads: 4}
proxy: {max_body_size: 1Mi}
app:
  module: app:application
  chdir: $APP
  python: $PY
%s`, plain, port, filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"), extra)
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": h3App}})
	b.addr = plain
	return b, port
}

// TestHTTP3 speaks HTTP/3 to berth with quic-go's client: a request, a
// POST with a body, a streamed answer, the access log line, a body over
// proxy.max_body_size, and Alt-Svc on the HTTP/1.1 and HTTP/2 answers.
func TestHTTP3(t *testing.T) {
	b, port := startH3Berth(t, "")
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	c, tr := h3Client("h3.test")
	defer tr.Close()

	resp, err := c.Get(base + "/")
	if err != nil {
		t.Fatalf("HTTP/3 GET: %v\n%s", err, b.logs.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Proto != "HTTP/3.0" || string(body) != "ok HTTP/3.0 https\n" {
		t.Errorf("HTTP/3 GET: %s %s %q", resp.Proto, resp.Status, body)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("HTTP/3 answer without berth's X-Request-Id: %v", resp.Header)
	}

	payload := bytes.Repeat([]byte("berth "), 20000) // 120 kB, several QUIC packets
	resp, err = c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("HTTP/3 POST: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, payload) {
		t.Errorf("HTTP/3 POST echo: %s, %d bytes back of %d", resp.Status, len(body), len(payload))
	}

	resp, err = c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(make([]byte, 2<<20)))
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("HTTP/3 POST over max_body_size: %s, want 413", resp.Status)
		}
	}

	start := time.Now()
	resp, err = c.Get(base + "/stream")
	if err != nil {
		t.Fatalf("HTTP/3 stream: %v", err)
	}
	var firstAt time.Duration
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	firstAt = time.Since(start)
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	all := string(buf[:n]) + string(rest)
	if all != "piece 0\npiece 1\npiece 2\n" {
		t.Errorf("HTTP/3 streamed body %q", all)
	}
	if total := time.Since(start); firstAt > total-150*time.Millisecond {
		t.Errorf("the first piece came after %s of %s: buffered, not streamed", firstAt, total)
	}

	waitFor(t, 5*time.Second, "the HTTP/3 access log line", func() bool {
		// gzip: quic-go's client asks for it, and text/plain is compressed.
		return regexp.MustCompile(`"GET /stream HTTP/3\.0" 200 \d+ "-" "quic-go HTTP/3"`).MatchString(b.logs.String())
	})

	// Alt-Svc on HTTP/1.1 and HTTP/2 over TLS, not on plain HTTP.
	want := fmt.Sprintf(`h3=":%d"; ma=86400`, port)
	for _, proto := range []string{"HTTP/1.1", "HTTP/2.0"} {
		tt := &http.Transport{TLSClientConfig: &tls.Config{ServerName: "h3.test", InsecureSkipVerify: true}, ForceAttemptHTTP2: proto == "HTTP/2.0"}
		if proto == "HTTP/1.1" {
			tt.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		resp, err := (&http.Client{Transport: tt, Timeout: 10 * time.Second}).Get(base + "/")
		if err != nil {
			t.Fatalf("%s GET: %v", proto, err)
		}
		resp.Body.Close()
		tt.CloseIdleConnections()
		if resp.Proto != proto || resp.Header.Get("Alt-Svc") != want {
			t.Errorf("%s: Alt-Svc %q, want %q", resp.Proto, resp.Header.Get("Alt-Svc"), want)
		}
	}
	resp, err = http.Get(b.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v := resp.Header.Get("Alt-Svc"); v != "" {
		t.Errorf("plain HTTP answer announces %q", v)
	}

	// The existing request counter counts them: 4 HTTP/3 requests, 2
	// over TLS on TCP and one plain.
	waitFor(t, 5*time.Second, "HTTP/3 requests in berth_http_requests_total", func() bool {
		return metricSum(t, b, "berth_http_requests_total") == 7
	})

	// Clients gone, nothing in flight: SIGTERM ends the drain at once.
	tr.Close()
	start = time.Now()
	b.signal(syscall.SIGTERM)
	if code := b.wait(40 * time.Second); code != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("SIGTERM with no request in flight: exit %d after %s", code, time.Since(start).Round(time.Millisecond))
	}
}

// metricSum adds up every series of a metric on berth's admin /metrics.
func metricSum(t *testing.T, b *berthProc, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + b.admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestHTTP3ReloadAndStop: HTTP/3 clients keep requesting while a reload
// starts a new proxy (a listen change) and the old one drains: not one
// request fails, and both proxies served some, each connection staying
// with the proxy that owns it (proxy/quicsteer). Then SIGTERM: a request
// in flight finishes, and a new connection is not accepted.
func TestHTTP3ReloadAndStop(t *testing.T) {
	b, port := startH3Berth(t, "")
	base := fmt.Sprintf("https://127.0.0.1:%d", port)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, tr := h3Client("h3.test")
			defer tr.Close()
			for ctx.Err() == nil {
				resp, err := c.Get(base + "/slow?ms=150")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(body), "ok HTTP/3.0") {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s %q %v", resp.Status, body, err))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	proxies := func() []int {
		var st struct {
			Proxies []struct {
				N        int  `json:"n"`
				Ready    bool `json:"ready"`
				Stopping bool `json:"stopping"`
			} `json:"proxies"`
		}
		if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
			t.Fatalf("/status: %v", err)
		}
		var ns []int
		for _, p := range st.Proxies {
			ns = append(ns, p.N)
		}
		return ns
	}
	waitFor(t, 10*time.Second, "HTTP/3 load to start", func() bool { return ok.Load() > 20 })
	before := proxies()

	// A listen change: a new proxy on the same https socket and a new
	// UDP socket in its group; the old proxy drains.
	start := time.Now()
	cfg, _ := os.ReadFile(b.cfgPath)
	extra := freeAddr(t)
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(cfg), "listen: [", fmt.Sprintf("listen: [%q, ", extra), 1))
	waitFor(t, 30*time.Second, "the new proxy to serve and the old one to exit", func() bool {
		now := proxies()
		return len(before) == 1 && len(now) == 1 && now[0] != before[0]
	})
	atReload := ok.Load()
	waitFor(t, 10*time.Second, "load on the new proxy", func() bool { return ok.Load() > atReload+20 })
	cancel()
	wg.Wait()
	t.Logf("HTTP/3 across a reload (%s to hand over): %d requests ok, %d failed", time.Since(start).Round(time.Millisecond), ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d HTTP/3 requests failed across the reload; first: %v", failed.Load(), firstErr.Load())
	}
	if !strings.Contains(b.logs.String(), "listeners reopened") {
		t.Errorf("the reload did not restart the proxy:\n%s", b.logs.String())
	}

	// SIGTERM with a request in flight: it finishes; a new connection
	// after the drain began is not accepted.
	c, tr := h3Client("h3.test")
	defer tr.Close()
	done := make(chan error, 1)
	go func() {
		resp, err := c.Get(base + "/slow?ms=1500")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "ok HTTP/3.0") {
				err = fmt.Errorf("%s %q", resp.Status, body)
			}
		}
		done <- err
	}()
	waitFor(t, 5*time.Second, "the slow request to reach the worker", func() bool {
		return regexp.MustCompile(`"inflight": *1`).MatchString(b.status())
	})
	b.signal(syscall.SIGTERM)
	// The proxy gets SIGTERM within a tick; from its drain on, a new
	// connection is not accepted, while the request in flight (1.5 s)
	// goes on.
	refused := false
	deadline := time.Now().Add(5 * time.Second)
	for !refused && time.Now().Before(deadline) {
		tr2 := &http3.Transport{
			TLSClientConfig: &tls.Config{ServerName: "h3.test", InsecureSkipVerify: true},
			QUICConfig:      &quic.Config{HandshakeIdleTimeout: 300 * time.Millisecond},
		}
		resp, err := (&http.Client{Transport: tr2, Timeout: 5 * time.Second}).Get(base + "/")
		tr2.Close()
		if err == nil {
			resp.Body.Close()
			continue // the drain had not begun
		}
		// A handshake the closed listener had begun is refused; a later
		// one gets no answer.
		var idle *quic.IdleTimeoutError
		if !errors.As(err, &idle) && !strings.Contains(err.Error(), "CONNECTION_REFUSED") {
			t.Errorf("a new HTTP/3 connection during the drain: %v, want it refused or unanswered", err)
		}
		refused = true
		select {
		case err := <-done:
			t.Errorf("the request in flight ended (%v) before a new connection was refused", err)
			done <- err
		default:
		}
	}
	if !refused {
		t.Errorf("new HTTP/3 connections were still served 5 s after SIGTERM")
	}
	if err := <-done; err != nil {
		t.Errorf("the HTTP/3 request in flight at SIGTERM: %v", err)
	}
	if code := b.wait(40 * time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// TestSupervisorDoesNotPollItsSockets: the supervisor holds the listening
// sockets and the HTTP/3 UDP sockets only to hand them to proxies; none of
// them may sit in its epoll sets. They did (net's File() registers its
// copy), and PID 1 was woken for every new connection and for every
// datagram the proxy sent or received: 13.8 µs of its CPU per HTTP/3
// request in the bench.
func TestSupervisorDoesNotPollItsSockets(t *testing.T) {
	b, port := startH3Berth(t, "")
	c, tr := h3Client("h3.test")
	defer tr.Close()
	resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("HTTP/3 GET: %v\n%s", err, b.logs.String())
	}
	resp.Body.Close()
	_, plainPort, _ := net.SplitHostPort(b.addr)
	pp, _ := strconv.Atoi(plainPort)
	theirs := map[string]string{} // socket inode -> what it is
	for _, f := range []struct {
		file  string
		port  int
		state string // "" = any
	}{{"/proc/net/tcp", port, "0A"}, {"/proc/net/tcp", pp, "0A"}, {"/proc/net/udp", port, ""}} {
		for ino := range socketInodes(t, f.file, f.port, f.state) {
			theirs[ino] = fmt.Sprintf("%s port %d", f.file, f.port)
		}
	}
	if len(theirs) < 4 {
		t.Fatalf("found %d listening sockets (%v), want the two TCP listeners and at least two UDP sockets", len(theirs), theirs)
	}
	pid := b.berthPid()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	polled := 0
	for _, e := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "tfd:" {
				continue
			}
			polled++
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, f[1]))
			ino := strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")
			if what, ok := theirs[ino]; ok {
				t.Errorf("the supervisor's epoll set %s watches fd %s, the socket on %s", e.Name(), f[1], what)
			}
		}
	}
	if polled == 0 {
		t.Fatal("found no descriptor in the supervisor's epoll sets: the check looked at nothing")
	}
}

// socketInodes reads /proc/net/{tcp,udp}: the inodes of the sockets bound
// to port on any address, in state (hex, "" = any).
func socketInodes(t *testing.T, file string, port int, state string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		p, err := strconv.ParseInt(hexPort, 16, 32)
		if err != nil || int(p) != port || state != "" && f[3] != state {
			continue
		}
		out[f[9]] = true
	}
	return out
}
