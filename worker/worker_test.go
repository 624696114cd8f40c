package worker

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// python is Debian's interpreter (the first python3 on PATH may be another build);
// BERTH_TEST_PYTHON overrides it, to run this suite against other Python versions.
var python = cmp.Or(os.Getenv("BERTH_TEST_PYTHON"), "/usr/bin/python3")

type workerOpts struct {
	mode    string // "serve" (default) or "zygote"
	app     string // BERTH_APP; default testapp:application
	threads int
	env     []string
	extra   []*os.File
}

type testWorker struct {
	cmd    *exec.Cmd
	dir    string
	sock   string
	stderr string // path of the file holding the worker's stderr
	notify *net.UnixConn
	exited chan struct{}
	err    error // cmd.Wait's result, valid once exited is closed
}

func appsDir(t testing.TB) string {
	dir, err := filepath.Abs(filepath.Join("testdata", "apps"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// startWorker starts berth_worker.py as the supervisor would (without waiting for READY).
func startWorker(t testing.TB, o workerOpts) *testWorker {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is needed: %v", python, err)
	}
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	runtimePath, err := WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	nsock := filepath.Join(dir, "n.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	stderrPath := filepath.Join(dir, "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	if o.mode == "" {
		o.mode = "serve"
	}
	if o.app == "" {
		o.app = "testapp:application"
	}
	if o.threads == 0 {
		o.threads = 1
	}
	w := &testWorker{dir: dir, sock: filepath.Join(dir, "w.sock"), stderr: stderrPath, notify: notify,
		exited: make(chan struct{})}
	cmd := exec.Command(python, "-u", runtimePath, o.mode)
	cmd.Env = append([]string{
		"PATH=/usr/bin:/bin",
		"PYTHONDONTWRITEBYTECODE=1",
		"BERTH_APP=" + o.app,
		"BERTH_CHDIR=" + appsDir(t),
		"BERTH_THREADS=" + strconv.Itoa(o.threads),
		"BERTH_WORKER_ID=t1",
		"BERTH_SOCKET=" + w.sock,
		"NOTIFY_SOCKET=" + nsock,
	}, o.env...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.ExtraFiles = o.extra
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.cmd = cmd
	go func() {
		w.err = cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-w.exited
		if t.Failed() {
			t.Logf("worker stderr:\n%s", w.stderrText())
		}
	})
	return w
}

// startReady starts a serve-mode worker and waits for its READY=1.
func startReady(t testing.TB, o workerOpts) *testWorker {
	t.Helper()
	w := startWorker(t, o)
	msg := w.waitNotify(t)
	if msg["READY"] != "1" || msg["BERTH_WORKER"] != "t1" || msg["MAINPID"] != strconv.Itoa(w.cmd.Process.Pid) {
		t.Fatalf("notify message %v: want READY=1 BERTH_WORKER=t1 MAINPID=%d", msg, w.cmd.Process.Pid)
	}
	return w
}

// waitNotify reads one sd_notify datagram, failing if the worker exits first.
func (w *testWorker) waitNotify(t testing.TB) map[string]string {
	t.Helper()
	got := make(chan map[string]string, 1)
	go func() {
		buf := make([]byte, 4096)
		w.notify.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, _, err := w.notify.ReadFromUnix(buf)
		if err != nil {
			got <- nil
			return
		}
		got <- parseNotify(buf[:n])
	}()
	select {
	case m := <-got:
		if m == nil {
			t.Fatalf("no notify datagram within 30s")
		}
		return m
	case <-w.exited:
		t.Fatalf("worker exited before READY: %v\n%s", w.err, w.stderrText())
	}
	return nil
}

func parseNotify(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (w *testWorker) stderrText() string {
	b, _ := os.ReadFile(w.stderr)
	return string(b)
}

// waitExit waits for the worker to exit and returns its exit code.
func (w *testWorker) waitExit(t testing.TB, within time.Duration) int {
	t.Helper()
	select {
	case <-w.exited:
	case <-time.After(within):
		t.Fatalf("worker still running after %v", within)
	}
	var ee *exec.ExitError
	if errors.As(w.err, &ee) {
		return ee.ExitCode()
	}
	if w.err != nil {
		t.Fatalf("wait: %v", w.err)
	}
	return 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// patternSHA is the sha256 of n bytes of testapp.PATTERN (0..255 repeated).
func patternSHA(n int64) string {
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i)
	}
	h := sha256.New()
	for n > 0 {
		k := min(n, int64(len(block)))
		h.Write(block[:k])
		n -= k
	}
	return hex.EncodeToString(h.Sum(nil))
}

// randomBody returns a reader of n pseudo-random bytes and their sha256.
func randomBody(n int64, seed int64) (io.Reader, string) {
	rng := rand.New(rand.NewSource(seed))
	block := make([]byte, 1<<20+13)
	rng.Read(block)
	h := sha256.New()
	io.Copy(h, io.LimitReader(repeatReader(block), n))
	return io.LimitReader(repeatReader(block), n), hex.EncodeToString(h.Sum(nil))
}

type repeater struct {
	block []byte
	off   int
}

func repeatReader(block []byte) io.Reader { return &repeater{block: block} }

func (r *repeater) Read(p []byte) (int, error) {
	n := copy(p, r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	return n, nil
}

type uploadResult struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func checkUpload(t *testing.T, c *uwsgiConn, uri string, size int64, keepAlive bool) {
	t.Helper()
	body, want := randomBody(size, size)
	resp, got := c.do(t, uwsgiRequest{Method: "POST", URI: uri, Body: body, BodyLen: size, KeepAlive: keepAlive,
		Header: http.Header{"Content-Type": {"application/octet-stream"}}})
	var res uploadResult
	if resp.StatusCode != 200 || json.Unmarshal([]byte(got), &res) != nil {
		t.Fatalf("POST %s: %d %q", uri, resp.StatusCode, got)
	}
	if res.Size != size || res.SHA256 != want {
		t.Fatalf("POST %s: app saw %d bytes sha256 %s; sent %d bytes sha256 %s", uri, res.Size, res.SHA256, size, want)
	}
}

func checkDownload(t *testing.T, c *uwsgiConn, size int64, withCL, keepAlive bool) {
	t.Helper()
	cl := "0"
	if withCL {
		cl = "1"
	}
	resp, err := c.roundTrip(uwsgiRequest{URI: fmt.Sprintf("/download?size=%d&cl=%s", size, cl), KeepAlive: keepAlive})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil || n != size {
		t.Fatalf("download: %d of %d bytes: %v", n, size, err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), patternSHA(size); got != want {
		t.Fatalf("download sha256 %s, want %s", got, want)
	}
	chunked := len(resp.TransferEncoding) > 0
	if keepAlive && chunked == withCL {
		t.Fatalf("download (Content-Length from app: %v): chunked=%v, ContentLength=%d", withCL, chunked, resp.ContentLength)
	}
}

// TestServe covers the request/response mapping on one kept-alive connection per case.
func TestServe(t *testing.T) {
	w := startReady(t, workerOpts{})
	c := dialUwsgi(t, w.sock)
	ka := func(r uwsgiRequest) uwsgiRequest { r.KeepAlive = true; return r }

	t.Run("environ", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/mnt/environ%20x?a=1&b=%C3%A9",
			Header: http.Header{"X-Custom": {"v1", "v2"}, "Cookie": {"a=1", "b=2"}, "Content-Type": {"text/x-dup"}},
			Vars: [][2]string{{"SCRIPT_NAME", "/mnt/"}, {"HTTPS", "on"}, {"PATH_INFO", "/mnt/environ"},
				{"HTTP_CONTENT_LENGTH", "0"}, {"HTTP_CONTENT_TYPE", "text/x-dup"}}}))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var env map[string]any
		if err := json.Unmarshal([]byte(body), &env); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/mnt", "PATH_INFO": "/environ",
			"QUERY_STRING": "a=1&b=%C3%A9", "REQUEST_URI": "/mnt/environ%20x?a=1&b=%C3%A9",
			"SERVER_NAME": "test.local", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
			"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "CONTENT_TYPE": "text/x-dup", "CONTENT_LENGTH": "",
			"HTTP_X_CUSTOM": "v1, v2", "HTTP_COOKIE": "a=1; b=2", "HTTP_HOST": "test.local",
			"wsgi.url_scheme": "https", "wsgi.version": []any{1.0, 0.0}, "wsgi.multithread": false,
			"wsgi.multiprocess": true, "wsgi.run_once": false, "wsgi.input_terminated": true,
			"errors_is_stderr": true, "has_file_wrapper": true,
		}
		for k, v := range want {
			if fmt.Sprint(env[k]) != fmt.Sprint(v) {
				t.Errorf("environ[%s] = %#v, want %#v", k, env[k], v)
			}
		}
		for _, k := range []string{"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "BERTH_KEEPALIVE"} {
			if _, ok := env[k]; ok {
				t.Errorf("environ has %s", k)
			}
		}
	})

	t.Run("path_info_latin1", func(t *testing.T) {
		// nginx sends PATH_INFO decoded (UTF-8 bytes); PEP 3333 wants each byte as a latin-1 char.
		_, body := c.do(t, ka(uwsgiRequest{URI: "/environ", Vars: [][2]string{
			{"PATH_INFO", "/caf\xc3\xa9/environ"}, {"SCRIPT_NAME", "/caf\xc3\xa9"}}}))
		if !strings.Contains(body, `"SCRIPT_NAME": "/caf\u00c3\u00a9"`) || !strings.Contains(body, `"PATH_INFO": "/environ"`) {
			t.Fatalf("got %s", body)
		}
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/x", Vars: [][2]string{{"PATH_INFO", "/caf\xc3\xa9"}}}))
		if resp.StatusCode != 404 || body != "no route /caf\xc3\xa9" {
			t.Fatalf("round trip of a UTF-8 path: %d %q", resp.StatusCode, body)
		}
	})

	t.Run("script_name_not_prefix_at_segment", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/environ", Vars: [][2]string{{"SCRIPT_NAME", "/env"}}}))
		// "/env" is not a path segment of "/environ": PATH_INFO stays whole, so the route matches.
		if resp.StatusCode != 200 || !strings.Contains(body, `"PATH_INFO": "/environ"`) {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	})

	t.Run("get_head", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/hello"}))
		if resp.StatusCode != 200 || body != "hello" || resp.ContentLength != 5 || resp.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("GET: %d %q cl=%d %v", resp.StatusCode, body, resp.ContentLength, resp.Header)
		}
		resp, body = c.do(t, ka(uwsgiRequest{Method: "HEAD", URI: "/hello"}))
		if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Length") != "5" {
			t.Fatalf("HEAD: %d %q %v", resp.StatusCode, body, resp.Header)
		}
		// A HEAD of a streamed response: no body either, and the connection still works.
		resp, body = c.do(t, ka(uwsgiRequest{Method: "HEAD", URI: "/stream"}))
		if resp.StatusCode != 200 || body != "" {
			t.Fatalf("HEAD stream: %d %q", resp.StatusCode, body)
		}
	})

	t.Run("post_form", func(t *testing.T) {
		form := url.Values{"name": {"berth"}, "x": {"a b&c"}}.Encode()
		resp, body := c.do(t, ka(uwsgiRequest{Method: "POST", URI: "/echo", Body: strings.NewReader(form),
			BodyLen: int64(len(form)), Header: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}}))
		if resp.StatusCode != 200 || body != form || resp.Header.Get("X-Method") != "POST" ||
			resp.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
		}
	})

	t.Run("no_body_statuses", func(t *testing.T) {
		for _, code := range []string{"204", "304"} {
			resp, body := c.do(t, ka(uwsgiRequest{URI: "/status?code=" + code}))
			if strconv.Itoa(resp.StatusCode) != code || body != "" || resp.Header.Get("Content-Length") != "" {
				t.Fatalf("%s: %d %q %v", code, resp.StatusCode, body, resp.Header)
			}
		}
	})

	t.Run("write_callable", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/write"}))
		if resp.StatusCode != 200 || body != "written,again,returned" || len(resp.TransferEncoding) == 0 {
			t.Fatalf("%d %q %v", resp.StatusCode, body, resp.TransferEncoding)
		}
	})

	t.Run("exc_info_replaces_unsent_headers", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/excinfo"}))
		if resp.StatusCode != 503 || body != "replaced" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})

	t.Run("hop_by_hop_header_is_500", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/hop"}))
		if resp.StatusCode != 500 || strings.Contains(body, "hop") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})

	t.Run("invalid_responses_are_500", func(t *testing.T) {
		for _, uri := range []string{"/bad?kind=space-in-name", "/bad?kind=newline-in-value", "/bad?kind=bytes-value",
			"/bad?kind=no-reason", "/bad?kind=bad-code", "/bad?kind=transfer-encoding", "/bad?kind=bad-content-length",
			"/bad?kind=not-latin1", "/twice", "/str-body"} {
			resp, body := c.do(t, ka(uwsgiRequest{URI: uri}))
			if resp.StatusCode != 500 || body != "Internal Server Error\n" || resp.Header.Get("X-Injected") != "" {
				t.Errorf("%s: %d %q %v", uri, resp.StatusCode, body, resp.Header)
			}
		}
	})

	t.Run("status_below_200_is_500", func(t *testing.T) {
		// A final status under 200 would make berth's proxy panic (< 100), wait for the
		// "real" response of a 1xx until its timeout, or refuse a 101: the app gets a 500.
		// Bounded: on the old code the answer had no framing the client could end.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		defer c.SetDeadline(time.Now().Add(2 * time.Minute))
		for _, kind := range []string{"low-code", "interim-code", "switching"} {
			resp, body := c.do(t, ka(uwsgiRequest{URI: "/bad?kind=" + kind}))
			if resp.StatusCode != 500 || body != "Internal Server Error\n" {
				t.Fatalf("%s: %d %q, want 500", kind, resp.StatusCode, body)
			}
		}
	})

	t.Run("lines", func(t *testing.T) {
		in := "line one\nabcdef\nx1\nx2\nr1\nr2\nlast without newline"
		resp, body := c.do(t, ka(uwsgiRequest{Method: "POST", URI: "/lines", Body: strings.NewReader(in), BodyLen: int64(len(in))}))
		var got map[string]any
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		want := `map[after: first:line one
 iterated:[x1
 x2
] limited:abc readlines:[r1
 r2
 last without newline] rest_of_line:def
]`
		if fmt.Sprint(got) != want {
			t.Fatalf("got %v\nwant %v", got, want)
		}
	})

	t.Run("upload_modes", func(t *testing.T) {
		for _, uri := range []string{"/upload?chunk=1000", "/upload?chunk=100000", "/upload?mode=all", "/upload?mode=lines"} {
			checkUpload(t, c, uri, 3<<20+7, true)
		}
		checkUpload(t, c, "/upload", 0, true)
	})

	t.Run("file_wrapper", func(t *testing.T) {
		path := filepath.Join(w.dir, "file.bin")
		data := make([]byte, 3<<20+5)
		rand.New(rand.NewSource(1)).Read(data)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			query  string
			offset int
		}{{"", 0}, {"&offset=1000", 1000}, {"&bytesio=1", 0}, {"&bytesio=1&offset=7", 7}} {
			resp, body := c.do(t, ka(uwsgiRequest{URI: "/file?path=" + url.QueryEscape(path) + tc.query}))
			if resp.StatusCode != 200 || body != string(data[tc.offset:]) {
				t.Fatalf("%s: %d, %d bytes, want %d", tc.query, resp.StatusCode, len(body), len(data)-tc.offset)
			}
			// A real file goes out by sendfile with a Content-Length; a BytesIO is streamed.
			if wantCL := !strings.Contains(tc.query, "bytesio"); (resp.ContentLength == int64(len(body))) != wantCL {
				t.Fatalf("%s: ContentLength %d (want known: %v)", tc.query, resp.ContentLength, wantCL)
			}
		}
		resp, body := c.do(t, ka(uwsgiRequest{Method: "HEAD", URI: "/file?path=" + url.QueryEscape(path)}))
		if body != "" || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
			t.Fatalf("HEAD file: %q %v", body, resp.Header)
		}
	})

	t.Run("not_found", func(t *testing.T) {
		resp, body := c.do(t, ka(uwsgiRequest{URI: "/nope"}))
		if resp.StatusCode != 404 || body != "no route /nope" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
}

// TestKeepAliveFraming sends many requests of every framing on one connection.
func TestKeepAliveFraming(t *testing.T) {
	w := startReady(t, workerOpts{})
	c := dialUwsgi(t, w.sock)
	type step struct {
		req     uwsgiRequest
		in      string // request body, sent when req.Method is POST
		body    string
		cl      int64 // -1: chunked
		status  int
		closeAt bool // the worker must close after this response
	}
	unread := strings.Repeat("u", 200000) // bigger than the worker's buffer: must be drained
	steps := []step{
		{req: uwsgiRequest{URI: "/hello"}, body: "hello", cl: 5},
		{req: uwsgiRequest{URI: "/stream"}, body: "firstsecond", cl: -1},
		{req: uwsgiRequest{Method: "POST", URI: "/unread"}, in: unread, body: "ignored", cl: 7},
		{req: uwsgiRequest{Method: "POST", URI: "/echo"}, in: "abc", body: "abc", cl: 3},
		{req: uwsgiRequest{URI: "/multi"}, body: "abcdef", cl: 6},
		{req: uwsgiRequest{URI: "/gen-empty"}, body: "", cl: 0},
		{req: uwsgiRequest{URI: "/error-before"}, body: "Internal Server Error\n", cl: 22, status: 500},
		{req: uwsgiRequest{URI: "/cl-long"}, body: "123", cl: 3, closeAt: true},
	}
	for round := 0; round < 3; round++ {
		for i, s := range steps {
			if s.closeAt && round < 2 {
				continue
			}
			s.req.KeepAlive = true
			if s.req.Method == "POST" {
				s.req.Body, s.req.BodyLen = strings.NewReader(s.in), int64(len(s.in))
			}
			resp, body := c.do(t, s.req)
			status := s.status
			if status == 0 {
				status = 200
			}
			chunked := len(resp.TransferEncoding) > 0
			if resp.StatusCode != status || body != s.body || (s.cl == -1) != chunked || (s.cl >= 0 && resp.ContentLength != s.cl) {
				t.Fatalf("round %d step %d %s: %d %q chunked=%v cl=%d", round, i, s.req.URI, resp.StatusCode, body, chunked, resp.ContentLength)
			}
			if s.closeAt {
				c.expectClosed(t)
			}
		}
	}
	// The app promised 10 bytes and sent 5: the short response ends with the connection.
	c = dialUwsgi(t, w.sock)
	resp, err := c.roundTrip(uwsgiRequest{URI: "/cl-short", KeepAlive: true})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); string(b) != "12345" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short body: %q %v", b, err)
	}
}

// TestNoKeepAlive: without BERTH_KEEPALIVE (nginx), one response per connection, close-delimited.
func TestNoKeepAlive(t *testing.T) {
	w := startReady(t, workerOpts{})
	for _, tc := range []struct {
		req  uwsgiRequest
		body string
	}{
		{uwsgiRequest{URI: "/stream"}, "firstsecond"},
		{uwsgiRequest{URI: "/hello"}, "hello"},
		{uwsgiRequest{URI: "/gen-empty"}, ""},
		{uwsgiRequest{Method: "POST", URI: "/unread", Body: strings.NewReader(strings.Repeat("x", 300000)), BodyLen: 300000}, "ignored"},
	} {
		c := dialUwsgi(t, w.sock)
		resp, body := c.do(t, tc.req)
		if resp.StatusCode != 200 || body != tc.body || len(resp.TransferEncoding) != 0 {
			t.Fatalf("%s: %d %q %v", tc.req.URI, resp.StatusCode, body, resp.TransferEncoding)
		}
		if tc.req.URI == "/stream" && resp.ContentLength != -1 {
			t.Fatalf("stream: Content-Length %d, want none (close-delimited)", resp.ContentLength)
		}
		c.expectClosed(t)
	}
	c := dialUwsgi(t, w.sock)
	checkDownload(t, c, 5<<20, false, false)
}

// TestValidator drives the whole app through wsgiref.validate: any PEP 3333 violation by the
// worker shows up as an AssertionError (500) or a WSGIWarning on stderr.
func TestValidator(t *testing.T) {
	w := startReady(t, workerOpts{app: "testapp:validated"})
	c := dialUwsgi(t, w.sock)

	resp, body := c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true})
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	resp, body = c.do(t, uwsgiRequest{Method: "HEAD", URI: "/hello", KeepAlive: true})
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	resp, body = c.do(t, uwsgiRequest{Method: "POST", URI: "/echo", Body: strings.NewReader("a=1"), BodyLen: 3, KeepAlive: true,
		Header: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}})
	if resp.StatusCode != 200 || body != "a=1" {
		t.Fatalf("POST: %d %q", resp.StatusCode, body)
	}
	resp, body = c.do(t, uwsgiRequest{URI: "/environ", KeepAlive: true})
	if resp.StatusCode != 200 {
		t.Fatalf("environ: %d %q", resp.StatusCode, body)
	}
	resp, body = c.do(t, uwsgiRequest{URI: "/write", KeepAlive: true})
	if resp.StatusCode != 200 || body != "written,again,returned" {
		t.Fatalf("write: %d %q", resp.StatusCode, body)
	}
	in := "line one\nabcdef\nx1\nx2\nr1\nr2\nlast"
	resp, body = c.do(t, uwsgiRequest{Method: "POST", URI: "/lines", Body: strings.NewReader(in), BodyLen: int64(len(in)), KeepAlive: true})
	if resp.StatusCode != 200 || !strings.Contains(body, `"readlines": ["r1\n", "r2\n", "last"]`) {
		t.Fatalf("lines: %d %q", resp.StatusCode, body)
	}
	checkUpload(t, c, "/upload", 50<<20, true)
	checkDownload(t, c, 50<<20, false, true)
	checkDownload(t, c, 50<<20, true, true)

	path := filepath.Join(w.dir, "f.txt")
	os.WriteFile(path, []byte("file contents\n"), 0o644)
	resp, body = c.do(t, uwsgiRequest{URI: "/file?path=" + url.QueryEscape(path), KeepAlive: true})
	if resp.StatusCode != 200 || body != "file contents\n" {
		t.Fatalf("file: %d %q", resp.StatusCode, body)
	}

	// Streaming: the first chunk must arrive while the generator is still blocked.
	release := filepath.Join(w.dir, "release")
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // the app waits 20s for the release
	resp, err := c.roundTrip(uwsgiRequest{URI: "/stream?release=" + url.QueryEscape(release), KeepAlive: true})
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("first chunk: %q %v", first, err)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second" {
		t.Fatalf("after release: %q %v", rest, err)
	}
	c.SetDeadline(time.Now().Add(time.Minute))

	resp, body = c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true})
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("GET after: %d %q", resp.StatusCode, body)
	}
	// Close our side; the worker must still have nothing to complain about.
	c.Close()
	syscall.Kill(w.cmd.Process.Pid, syscall.SIGTERM)
	if code := w.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, bad := range []string{"Warning", "Traceback", "AssertionError", "Exception ignored", "garbage collected"} {
		if strings.Contains(w.stderrText(), bad) {
			t.Fatalf("worker stderr has %q:\n%s", bad, w.stderrText())
		}
	}
}

func TestAppErrors(t *testing.T) {
	w := startReady(t, workerOpts{})
	c := dialUwsgi(t, w.sock)
	resp, body := c.do(t, uwsgiRequest{URI: "/error-before", KeepAlive: true})
	if resp.StatusCode != 500 || body != "Internal Server Error\n" {
		t.Fatalf("error before: %d %q", resp.StatusCode, body)
	}
	resp, body = c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true})
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("same connection after a 500: %d %q", resp.StatusCode, body)
	}
	for _, uri := range []string{"/error-after", "/excinfo-late"} {
		resp, err := c.roundTrip(uwsgiRequest{URI: uri, KeepAlive: true})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%s: %d %q %v; want a truncated 200", uri, resp.StatusCode, b, err)
		}
		c.expectClosed(t)
		c.Close() // a single-threaded worker serves one connection at a time
		c = dialUwsgi(t, w.sock)
	}
	// Without keep-alive the 500 is close-delimited like everything else.
	c.Close()
	c = dialUwsgi(t, w.sock)
	resp, body = c.do(t, uwsgiRequest{URI: "/error-before"})
	if resp.StatusCode != 500 {
		t.Fatalf("error before (no keep-alive): %d %q", resp.StatusCode, body)
	}
	c = dialUwsgi(t, w.sock)
	resp, body = c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true})
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("worker stopped serving: %d %q", resp.StatusCode, body)
	}
	if resp, _ := c.do(t, uwsgiRequest{URI: "/hop", KeepAlive: true}); resp.StatusCode != 500 {
		t.Fatalf("hop-by-hop header: %d, want 500", resp.StatusCode)
	}
	stderr := w.stderrText()
	for _, want := range []string{
		"berth worker t1: error in app handling GET /error-before", "RuntimeError: boom before",
		"berth worker t1: error in app handling GET /error-after", "RuntimeError: boom after",
		"ValueError: too late", "'Connection': hop-by-hop headers are not allowed",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
}

func TestImportFailure(t *testing.T) {
	for _, tc := range []struct{ app, want string }{
		{"broken", "RuntimeError: broken app: this module fails to import"},
		{"testapp:missing", "AttributeError"},
		{"notcallable", "not a WSGI callable"},
		{"no_such_module", "ModuleNotFoundError"},
	} {
		t.Run(tc.app, func(t *testing.T) {
			w := startWorker(t, workerOpts{app: tc.app})
			if code := w.waitExit(t, 20*time.Second); code != ExitImport {
				t.Fatalf("exit code %d, want %d\n%s", code, ExitImport, w.stderrText())
			}
			stderr := w.stderrText()
			if n := strings.Count(stderr, "Traceback (most recent call last)"); n != 1 {
				t.Errorf("%d tracebacks, want 1:\n%s", n, stderr)
			}
			if !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "berth worker t1: cannot load the app") {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr)
			}
			if _, err := os.Stat(w.sock); err == nil {
				t.Errorf("socket created although the app did not import")
			}
		})
	}
}

func TestThreads(t *testing.T) {
	w := startReady(t, workerOpts{threads: 4})
	start := time.Now()
	var wg sync.WaitGroup
	results := make([]string, 4)
	for i := range results {
		c := dialUwsgi(t, w.sock)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.roundTrip(uwsgiRequest{URI: "/barrier", KeepAlive: true})
			if err != nil {
				results[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			results[i] = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i, r := range results {
		if r != "200 ok" {
			t.Errorf("request %d: %s", i, r)
		}
	}
	// Each request sleeps 0.3s and then waits for the other three: in series it would take
	// at least 4×0.3s (and break the barrier).
	if elapsed > 1200*time.Millisecond {
		t.Errorf("4 concurrent requests took %v, want about 0.3s", elapsed)
	}
	t.Logf("4 concurrent 0.3s requests took %v", elapsed)
}

func TestSIGTERMFinishesInFlight(t *testing.T) {
	w := startReady(t, workerOpts{threads: 2})
	idle := dialUwsgi(t, w.sock)
	if resp, body := idle.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true}); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	entered, release := filepath.Join(w.dir, "entered"), filepath.Join(w.dir, "release")
	busy := dialUwsgi(t, w.sock)
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := busy.roundTrip(uwsgiRequest{URI: "/block?entered=" + url.QueryEscape(entered) + "&release=" + url.QueryEscape(release), KeepAlive: true})
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b), err}
	}()
	waitFor(t, "the request to reach the app", 10*time.Second, func() bool { _, err := os.Stat(entered); return err == nil })

	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The worker stops accepting, and closes the idle kept-alive connection ...
	waitFor(t, "the listener to close", 10*time.Second, func() bool {
		c, err := net.Dial("unix", w.sock)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	idle.expectClosed(t)
	select {
	case <-w.exited:
		t.Fatalf("worker exited with a request in progress: %v", w.err)
	default:
	}
	// ... but finishes the request in progress, then exits 0.
	os.WriteFile(release, nil, 0o644)
	select {
	case r := <-done:
		if r.err != nil || r.status != 200 || r.body != "released" {
			t.Fatalf("in-flight request: %d %q %v", r.status, r.body, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("in-flight request did not finish")
	}
	if code := w.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if _, err := os.Stat(w.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestSIGTERMIdleExitsAtOnce(t *testing.T) {
	w := startReady(t, workerOpts{threads: 3})
	start := time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.waitExit(t, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	t.Logf("idle worker exited %v after SIGTERM", time.Since(start))
}

func TestSIGINTExitsNow(t *testing.T) {
	w := startReady(t, workerOpts{})
	entered, release := filepath.Join(w.dir, "entered"), filepath.Join(w.dir, "release")
	c := dialUwsgi(t, w.sock)
	go c.roundTrip(uwsgiRequest{URI: "/block?entered=" + url.QueryEscape(entered) + "&release=" + url.QueryEscape(release), KeepAlive: true})
	waitFor(t, "the request to reach the app", 10*time.Second, func() bool { _, err := os.Stat(entered); return err == nil })
	w.cmd.Process.Signal(syscall.SIGINT)
	w.waitExit(t, 5*time.Second) // without the release: the request is abandoned
}

func TestSIGUSR2DumpsStacks(t *testing.T) {
	w := startReady(t, workerOpts{threads: 2})
	entered, release := filepath.Join(w.dir, "entered"), filepath.Join(w.dir, "release")
	c := dialUwsgi(t, w.sock)
	done := make(chan string, 1)
	go func() {
		resp, err := c.roundTrip(uwsgiRequest{URI: "/block?entered=" + url.QueryEscape(entered) + "&release=" + url.QueryEscape(release), KeepAlive: true})
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		done <- string(b)
	}()
	waitFor(t, "the request to reach the app", 10*time.Second, func() bool { _, err := os.Stat(entered); return err == nil })
	w.cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "a stack dump naming the app's function", 10*time.Second, func() bool {
		return strings.Contains(w.stderrText(), "in berth_test_blocked_route")
	})
	os.WriteFile(release, nil, 0o644)
	if got := <-done; got != "released" {
		t.Fatalf("request after the dump: %q", got)
	}
	if resp, body := c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true}); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("worker not serving after SIGUSR2: %d %q", resp.StatusCode, body)
	}
}

func TestDemoApp(t *testing.T) {
	w := startReady(t, workerOpts{app: DemoModule})
	c := dialUwsgi(t, w.sock)
	resp, body := c.do(t, uwsgiRequest{URI: "/", KeepAlive: true})
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	for _, want := range []string{"berth is running", "/etc/berth/berth.yaml", "/app",
		fmt.Sprintf("<dd>%d</dd>", w.cmd.Process.Pid), "Python</dt><dd>CPython 3."} {
		if !strings.Contains(body, want) {
			t.Errorf("demo page lacks %q", want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	w := startWorker(t, workerOpts{env: []string{"BERTH_THREADS=0"}})
	if code := w.waitExit(t, 10*time.Second); code != ExitUsage || !strings.Contains(w.stderrText(), "BERTH_THREADS") {
		t.Fatalf("BERTH_THREADS=0: exit %d: %s", code, w.stderrText())
	}
	w = startWorker(t, workerOpts{mode: "bogus"})
	if code := w.waitExit(t, 10*time.Second); code != ExitUsage || !strings.Contains(w.stderrText(), "usage") {
		t.Fatalf("bad mode: exit %d: %s", code, w.stderrText())
	}
}

// BenchmarkKeepAliveHello measures sequential requests on one kept-alive connection to one
// single-threaded worker: the Python hot path, as berth's proxy drives it.
func BenchmarkKeepAliveHello(b *testing.B) {
	w := startReady(b, workerOpts{app: "testapp:hello"})
	c := dialUwsgi(b, w.sock)
	req := uwsgiRequest{URI: "/", KeepAlive: true, Header: http.Header{
		"User-Agent": {"bench"}, "Accept": {"*/*"}, "Accept-Encoding": {"gzip"}}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := c.roundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 || n != 13 {
			b.Fatalf("%d %d", resp.StatusCode, n)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
