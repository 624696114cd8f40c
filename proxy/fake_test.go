package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy/uwsgi"

	"github.com/berth-dev/berth/control"
)

// fakeReq is one uwsgi request as a fake worker received it.
type fakeReq struct {
	vars map[string]string
	keys []string // in order, to catch duplicates
	body []byte
}

// fakeHandler answers one request on conn and says whether the connection
// may carry another (it is closed anyway without BERTH_KEEPALIVE=1).
type fakeHandler func(fw *fakeWorker, conn net.Conn, req *fakeReq) (keep bool)

// fakeWorker is a small uwsgi server like berth_worker.py: `threads`
// goroutines each accept one connection and serve it until it closes, so a
// 1-thread worker really serves one connection at a time.
type fakeWorker struct {
	id      string
	path    string
	threads int
	handler fakeHandler
	l       *net.UnixListener

	requests atomic.Int64
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]bool
	last     *fakeReq
	wg       sync.WaitGroup
	done     chan struct{} // closed by stop: blocked handlers give up
}

func startFake(t testing.TB, id string, threads int, h fakeHandler) *fakeWorker {
	t.Helper()
	dir := tempDir(t)
	fw := &fakeWorker{id: id, path: filepath.Join(dir, id+".sock"), threads: threads, handler: h, conns: map[net.Conn]bool{}, done: make(chan struct{})}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: fw.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	fw.l = l
	for i := 0; i < threads; i++ {
		fw.wg.Add(1)
		go fw.thread()
	}
	t.Cleanup(fw.stop)
	return fw
}

func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (fw *fakeWorker) worker() control.Worker {
	return control.Worker{ID: fw.id, Socket: fw.path, Capacity: fw.threads}
}

// stop closes the listener and every connection, as a dying worker does.
func (fw *fakeWorker) stop() {
	select {
	case <-fw.done:
		return
	default:
	}
	close(fw.done)
	fw.l.Close()
	fw.closeConns()
	fw.wg.Wait()
}

func (fw *fakeWorker) closeConns() {
	fw.mu.Lock()
	for c := range fw.conns {
		c.Close()
	}
	fw.mu.Unlock()
}

func (fw *fakeWorker) setHandler(h fakeHandler) {
	fw.mu.Lock()
	fw.handler = h
	fw.mu.Unlock()
}

func (fw *fakeWorker) getHandler() fakeHandler {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.handler
}

func (fw *fakeWorker) lastReq() *fakeReq {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.last
}

func (fw *fakeWorker) thread() {
	defer fw.wg.Done()
	for {
		c, err := fw.l.Accept()
		if err != nil {
			return
		}
		fw.accepted.Add(1)
		fw.mu.Lock()
		fw.conns[c] = true
		fw.mu.Unlock()
		fw.serve(c)
		fw.mu.Lock()
		delete(fw.conns, c)
		fw.mu.Unlock()
		c.Close()
	}
}

func (fw *fakeWorker) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := readUwsgi(br)
		if err != nil {
			return
		}
		fw.requests.Add(1)
		fw.mu.Lock()
		fw.last = req
		fw.mu.Unlock()
		keep := fw.getHandler()(fw, c, req)
		if !keep || req.vars["BERTH_KEEPALIVE"] != "1" {
			return
		}
	}
}

func readUwsgi(br *bufio.Reader) (*fakeReq, error) {
	p, err := uwsgi.Read(br)
	if err != nil {
		return nil, err
	}
	return &fakeReq{vars: p.Vars, keys: p.Keys, body: p.Body}, nil
}

// respond writes a keep-alive framed response (Content-Length).
func respond(w io.Writer, status int, header http.Header, body []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if header.Get("Content-Type") == "" {
		header = header.Clone()
		if header == nil {
			header = http.Header{}
		}
		header.Set("Content-Type", "text/plain")
	}
	header.Write(&b)
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	w.Write(b.Bytes())
}

// hello answers "hello from ID".
func hello(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	respond(c, 200, nil, []byte("hello from "+fw.id))
	return true
}

// echo answers the request body.
func echo(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	respond(c, 200, nil, req.body)
	return true
}

// syncBuf is a bytes.Buffer safe for a writer and a test reading it.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is an in-process proxy on 127.0.0.1:0.
type harness struct {
	t      testing.TB
	srv    *Server
	addr   string
	url    string
	alog   *syncBuf
	elog   *syncBuf
	client *http.Client

	evMu   sync.Mutex
	events []control.Message
}

func defaultConfig() control.Proxy {
	return control.Proxy{
		AccessLog:       "off",
		QueueSize:       16,
		QueueTimeout:    control.Duration(5 * time.Second),
		Timeout:         control.Duration(10 * time.Second),
		GracefulTimeout: control.Duration(5 * time.Second),
	}
}

func startProxy(t testing.TB, cfg control.Proxy, workers ...*fakeWorker) *harness {
	t.Helper()
	return startProxyWith(t, cfg, nil, workers...)
}

// startProxyWith is startProxy with setup run on the Server before it
// serves (unexported knobs such as its timeouts).
func startProxyWith(t testing.TB, cfg control.Proxy, setup func(*Server), workers ...*fakeWorker) *harness {
	t.Helper()
	h := &harness{t: t, alog: &syncBuf{}, elog: &syncBuf{}}
	h.srv = New(Options{AccessLog: h.alog, ErrorLog: h.elog, TempDir: tempDir(t)})
	if setup != nil {
		setup(h.srv)
	}
	if err := h.srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h.setWorkers(workers...)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	h.url = "http://" + h.addr
	go h.srv.Serve(l)
	go func() {
		for m := range h.srv.Events() {
			h.evMu.Lock()
			h.events = append(h.events, m)
			h.evMu.Unlock()
		}
	}()
	h.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 20 * time.Second}
	t.Cleanup(func() {
		h.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	return h
}

func (h *harness) setWorkers(ws ...*fakeWorker) {
	h.t.Helper()
	var cw []control.Worker
	for _, w := range ws {
		cw = append(cw, w.worker())
	}
	if err := h.srv.SetWorkers(cw); err != nil {
		h.t.Fatal(err)
	}
}

// do sends a request and returns the status, headers and body.
func (h *harness) do(method, path string, body io.Reader, hdr ...string) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.url+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, string(b)
}

func (h *harness) get(path string, hdr ...string) (*http.Response, string) {
	h.t.Helper()
	return h.do("GET", path, nil, hdr...)
}

// eventsOf returns the events of type typ seen so far.
func (h *harness) eventsOf(typ string) []control.Message {
	h.evMu.Lock()
	defer h.evMu.Unlock()
	var out []control.Message
	for _, m := range h.events {
		if m.Type == typ {
			out = append(out, m)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawRequest sends raw bytes on a new TCP connection and returns the
// proxy's first answer (status line and body), or what it sent before
// closing.
func rawRequest(t testing.TB, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(c, &got)), nil)
	if err != nil {
		return got.String()
	}
	body, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("HTTP/%d.%d %s\r\n\r\n%s", resp.ProtoMajor, resp.ProtoMinor, resp.Status, body)
}
