package tests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDemoAppWithoutConfig(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 1}\n"})
	code, body := b.get("/")
	if code != 200 || !strings.Contains(body, "berth") {
		t.Fatalf("demo: %d %q", code, body)
	}
}

// djangoSite copies the Django test site to a temp dir, migrates it, creates
// an admin user and collects static files, as a user's deploy step would.
func djangoSite(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cp := exec.Command("cp", "-r", filepath.Join(repoRoot(), "tests/testdata/djangosite")+"/.", dir)
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("copy site: %v %s", err, out)
	}
	for _, args := range [][]string{
		{"manage.py", "migrate", "-v0"},
		{"manage.py", "collectstatic", "--noinput", "-v0"},
		{"manage.py", "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_superuser('admin', 'a@example.com', 'berth-pass-1')"},
	} {
		cmd := exec.Command(systemPython, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	return dir
}

func djangoConfig(site string, extra string) string {
	return fmt.Sprintf(`app:
  module: mysite.wsgi:application
  chdir: %s
  python: %s
  env: {DJANGO_SETTINGS_MODULE: mysite.settings}
static:
  - {url: /static/, dir: %s/collected-static}
`, site, systemPython, site) + extra
}

func TestDjangoSite(t *testing.T) {
	site := djangoSite(t)
	b := startBerth(t, berthOpts{config: djangoConfig(site, "workers: {count: 2}\n")})

	code, body := b.get("/hello")
	if code != 200 || body != "Hello from Django\n" {
		t.Fatalf("plain view: %d %q", code, body)
	}
	code, body = b.get("/template")
	if code != 200 || !strings.Contains(body, "<li class=\"n19\">ITEM 19</li>") || !strings.Contains(body, "/static/css/site.css") {
		t.Fatalf("template view: %d %q", code, body)
	}
	// Static files from collectstatic, served by the proxy.
	resp, err := http.Get(b.url("/static/css/site.css"))
	if err != nil {
		t.Fatal(err)
	}
	css, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(css), "font-family") || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("static css: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), css)
	}
	resp, err = http.Get(b.url("/static/admin/css/base.css"))
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("ETag") == "" {
		t.Fatalf("admin static: %v %v", err, resp)
	}
	resp.Body.Close()

	// The admin login: GET the form, POST it back with its CSRF token and
	// the cookie, land on the admin index, logged in.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err = c.Get(b.url("/admin/login/?next=/admin/"))
	if err != nil {
		t.Fatal(err)
	}
	form, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrfmiddlewaretoken" value="([^"]+)"`).FindSubmatch(form)
	if m == nil {
		t.Fatalf("no CSRF token in the login form: %d %s", resp.StatusCode, form)
	}
	resp, err = c.PostForm(b.url("/admin/login/?next=/admin/"), url.Values{
		"csrfmiddlewaretoken": {string(m[1])}, "username": {"admin"}, "password": {"berth-pass-1"}, "next": {"/admin/"},
	})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/admin/" || !strings.Contains(string(page), "Log out") {
		t.Fatalf("admin login: %d at %s:\n%.500s", resp.StatusCode, resp.Request.URL, page)
	}
	// Without the token the POST is refused by Django's CSRF check.
	resp, err = http.PostForm(b.url("/admin/login/"), url.Values{"username": {"admin"}, "password": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("POST without CSRF token: %d, want 403", resp.StatusCode)
	}
}

const flaskApp = `
from flask import Flask, request, jsonify
app = Flask(__name__)

@app.route("/")
def index():
    return "Hello from Flask"

@app.route("/json", methods=["POST"])
def js():
    data = request.get_json()
    return jsonify(got=data, ua=request.headers.get("User-Agent"), remote=request.remote_addr)

@app.route("/items/<int:n>")
def item(n):
    return jsonify(n=n, q=request.args.get("q"))
`

func TestFlaskApp(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 1, threads: 2}\n", app: map[string]string{"app.py": flaskApp}})
	if code, body := b.get("/"); code != 200 || body != "Hello from Flask" {
		t.Fatalf("flask index: %d %q", code, body)
	}
	if code, body := b.get("/items/7?q=x%20y"); code != 200 || !strings.Contains(body, `"n":7`) || !strings.Contains(body, `"q":"x y"`) {
		t.Fatalf("flask item: %d %q", code, body)
	}
	resp, err := http.Post(b.url("/json"), "application/json", strings.NewReader(`{"a": [1, 2]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"got":{"a":[1,2]}`) || !strings.Contains(string(body), `"remote":"127.0.0.1"`) {
		t.Fatalf("flask json: %d %s", resp.StatusCode, body)
	}
	if code, _ := b.get("/nope"); code != 404 {
		t.Fatalf("flask 404: %d", code)
	}
}

// validatedApp is wrapped in wsgiref.validate.validator, which raises an
// AssertionError (a 500, and a traceback in the logs) on any PEP 3333
// violation by the server.
const validatedApp = `
import hashlib, sys, time
from wsgiref.validate import validator

def raw(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hash":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        body = ("%s %d" % (h.hexdigest(), n)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/lines":
        inp = environ["wsgi.input"]
        first = inp.readline()
        rest = inp.readlines()
        body = ("%d %d" % (len(first), len(rest))).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/download":
        n = int(environ["QUERY_STRING"] or "0")
        block = bytes(range(256)) * 4096
        def gen():
            left = n
            while left > 0:
                yield block[:min(left, len(block))]
                left -= len(block)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return gen()
    if path == "/stream":
        def gen():
            for i in range(5):
                yield ("chunk %d\n" % i).encode()
                time.sleep(0.2)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return gen()
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/boom-before":
        raise RuntimeError("boom before start_response")
    if path == "/boom-after":
        def gen():
            yield b"partial"
            raise RuntimeError("boom after start_response")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/env":
        body = "|".join("%s=%s" % (k, environ.get(k, "")) for k in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "wsgi.url_scheme", "HTTP_X_CUSTOM", "REMOTE_ADDR")).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", environ["REQUEST_METHOD"].encode()]

application = validator(raw)
`

func TestPEP3333ThroughBerth(t *testing.T) {
	b := startBerth(t, berthOpts{
		config: "workers: {count: 2}\nproxy: {max_body_size: 100Mi}\n",
		app:    map[string]string{"wsgi.py": validatedApp},
	})
	if code, body := b.get("/"); code != 200 || body != "hello GET" {
		t.Fatalf("GET: %d %q", code, body)
	}
	resp, err := http.Head(b.url("/"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, err = http.Post(b.url("/"), "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello POST" {
		t.Fatalf("POST: %q", body)
	}

	// 50 MB upload with Content-Length, hashed by the app.
	big := make([]byte, 50<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	sum := sha256.Sum256(big)
	want := fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), len(big))
	resp, err = http.Post(b.url("/hash"), "application/octet-stream", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != want {
		t.Fatalf("50 MB upload: got %q want %q", body, want)
	}
	// The same upload chunked (no Content-Length): the proxy buffers it
	// and the worker sees CONTENT_LENGTH.
	req, _ := http.NewRequest("POST", b.url("/hash"), io.MultiReader(bytes.NewReader(big[:1<<20]), bytes.NewReader(big[1<<20:])))
	req.ContentLength = -1
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != want || resp.Request.TransferEncoding != nil && resp.Request.TransferEncoding[0] != "chunked" {
		t.Fatalf("chunked upload: got %q want %q", body, want)
	}
	resp, err = http.Post(b.url("/lines"), "text/plain", strings.NewReader("one\ntwo\nthree\n"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "4 2" {
		t.Fatalf("readline/readlines: %q", body)
	}

	// 50 MB download.
	resp, err = http.Get(b.url("/download?52428800"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, _ := io.Copy(h, resp.Body)
	resp.Body.Close()
	block := make([]byte, 0, 256*4096)
	for i := 0; i < 4096; i++ {
		for j := 0; j < 256; j++ {
			block = append(block, byte(j))
		}
	}
	wh := sha256.New()
	for i := 0; i < 50; i++ {
		wh.Write(block)
	}
	if n != 50<<20 || !bytes.Equal(h.Sum(nil), wh.Sum(nil)) {
		t.Fatalf("50 MB download: %d bytes, hash mismatch %v", n, !bytes.Equal(h.Sum(nil), wh.Sum(nil)))
	}

	// A streamed generator arrives chunk by chunk, not all at once.
	start := time.Now()
	resp, err = http.Get(b.url("/stream"))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	firstAt := time.Since(start)
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if first != "chunk 0\n" || firstAt > 600*time.Millisecond || !strings.Contains(string(rest), "chunk 4") {
		t.Fatalf("stream: first %q after %s, rest %q", first, firstAt, rest)
	}

	if code, body := b.get("/write"); code != 200 || body != "written and returned" {
		t.Fatalf("write(): %d %q", code, body)
	}
	if code, _ := b.get("/boom-before"); code != 500 {
		t.Fatalf("exception before start_response: %d, want 500", code)
	}
	// After headers went out, the response is cut short; the client sees
	// an error or a truncated body, never a clean success.
	if resp, err := http.Get(b.url("/boom-after")); err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == 200 && string(body) == "partial" && resp.ContentLength == int64(len(body)) {
			t.Fatalf("exception after start_response looked like a clean response")
		}
	}
	// And the workers still serve.
	for i := 0; i < 4; i++ {
		if code, body := b.get("/"); code != 200 || body != "hello GET" {
			t.Fatalf("after exceptions: %d %q", code, body)
		}
	}
	req, _ = http.NewRequest("GET", b.url("/env?a=1"), nil)
	req.Header.Set("X-Custom", "v1")
	req.Header.Set("X_Custom", "smuggled")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"REQUEST_METHOD=GET", "PATH_INFO=/env", "QUERY_STRING=a=1", "SERVER_PROTOCOL=HTTP/1.1", "wsgi.url_scheme=http", "HTTP_X_CUSTOM=v1", "REMOTE_ADDR=127.0.0.1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("environ lacks %s: %s", want, body)
		}
	}
	// The validator raises AssertionError on any violation: none may be
	// in the logs (the two RuntimeErrors above are the app's own).
	logs := b.logs.String()
	if strings.Contains(logs, "AssertionError") || strings.Contains(logs, "WSGIWarning") {
		t.Fatalf("wsgiref validator complained:\n%s", logs)
	}
}

func TestProxyLimitsAndStatic(t *testing.T) {
	b := startBerth(t, berthOpts{
		config: "workers: {count: 1}\nstatic:\n  - {url: /static/, dir: $APP/static}\nproxy: {max_body_size: 1Ki}\n",
		app: map[string]string{
			"wsgi.py":            "def application(e, sr):\n    sr('200 OK', [('Content-Type','text/plain')])\n    return [b'app']\n",
			"static/site.css":    "body{}",
			"static/sub/a.js":    "var a;",
			"secret.txt":         "top secret",
			"static/.keep-empty": "",
		},
	})
	os.Symlink(filepath.Join(b.appDir, "secret.txt"), filepath.Join(b.appDir, "static", "link-out.txt"))

	for _, c := range []struct {
		path string
		want int
	}{
		{"/static/site.css", 200},
		{"/static/sub/a.js", 200},
		{"/static/../secret.txt", 404},
		{"/static/%2e%2e/secret.txt", 404},
		{"/static/..%2fsecret.txt", 404},
		{"/static/sub/..%2f..%2fsecret.txt", 404},
		{"/static/link-out.txt", 404},
		{"/static/", 403},
		{"/static/sub/", 403},
		{"/static/missing.css", 404},
	} {
		// Raw requests: Go's client would clean the dot segments.
		status := rawStatus(t, b.addr, "GET "+c.path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if c.want == 403 && (status == 403 || status == 404) {
			continue // no listing either way
		}
		if status != c.want {
			t.Errorf("GET %s: %d, want %d", c.path, status, c.want)
		}
	}
	// 413 before the body is read.
	if s := rawStatus(t, b.addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"); s != 413 {
		t.Errorf("oversized body: %d, want 413", s)
	}
	// 431 for an oversized header block.
	if s := rawStatus(t, b.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 70000)+"\r\n\r\n"); s != 431 {
		t.Errorf("oversized headers: %d, want 431", s)
	}
	// 400 for garbage.
	if s := rawStatus(t, b.addr, "GARBAGE\r\n\r\n"); s != 400 {
		t.Errorf("malformed request: %d, want 400", s)
	}
	if code, body := b.get("/x"); code != 200 || body != "app" {
		t.Fatalf("app after bad requests: %d %q", code, body)
	}
}

// rawStatus sends a raw request and returns the response status code.
func rawStatus(t *testing.T, addr, req string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%.60q: %v", req, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestQueueFull503(t *testing.T) {
	b := startBerth(t, berthOpts{
		config: "workers: {count: 1, timeout: 60s}\nproxy: {queue: {size: 2, timeout: 10s}}\n",
		app:    map[string]string{"wsgi.py": "import time\ndef application(e, sr):\n    time.sleep(float(e.get('QUERY_STRING') or 0))\n    sr('200 OK', [('Content-Type','text/plain')])\n    return [b'done']\n"},
	})
	// One request occupies the only worker, two wait in the queue, the
	// rest are refused at once with 503 + Retry-After.
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(b.url("/?1.5"))
			if err != nil {
				codes <- -1
				return
			}
			if resp.StatusCode == 503 && resp.Header.Get("Retry-After") == "" {
				codes <- -503
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[200] != 3 || count[503] != 3 {
		t.Fatalf("statuses %v, want 3×200 and 3×503 with Retry-After", count)
	}
}

func TestCheckCommand(t *testing.T) {
	bin := berthBinary(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("workers:\n  count: 3\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("workers:\n  count: 3\n  wrokers: 1\n"), 0o644)
	out, err := exec.Command(bin, "check", "--config", good).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "valid") {
		t.Fatalf("check good: %v %s", err, out)
	}
	out, err = exec.Command(bin, "check", "--config", bad).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "bad.yaml:3:") {
		t.Fatalf("check bad: %v %s", err, out)
	}
	// run with a bad config exits 2 (config error) with the same message.
	cmd := exec.Command(bin, "run", "--config", bad)
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "bad.yaml:3:") {
		t.Fatalf("run with bad config: %v %s", err, out)
	}
	out, _ = exec.Command(bin, "version").CombinedOutput()
	if !strings.HasPrefix(string(out), "berth ") {
		t.Fatalf("version: %s", out)
	}
}

func TestImportErrorStopsWithExitCode3(t *testing.T) {
	b := startBerth(t, berthOpts{
		config:  "workers: {count: 2}\n",
		app:     map[string]string{"wsgi.py": "import no_such_module_xyz\napplication = None\n"},
		noReady: true,
	})
	code := b.wait(60 * time.Second)
	logs := b.logs.String()
	if code != 3 {
		t.Fatalf("exit %d, want 3:\n%s", code, logs)
	}
	if n := strings.Count(logs, "ModuleNotFoundError"); n < 1 {
		t.Fatalf("traceback missing:\n%s", logs)
	}
	if strings.Count(logs, "failed to import") != 1 {
		t.Fatalf("import failure should be reported once:\n%s", logs)
	}
}

func TestStatusCommand(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\n"})
	var st struct {
		State   string
		Workers []struct {
			PID   int
			State string
		}
	}
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "ready" || len(st.Workers) != 2 || st.Workers[0].PID == 0 {
		t.Fatalf("status: %+v", st)
	}
	out, err := exec.Command(berthBinary(t), "status", "--admin", b.admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ready") || !strings.Contains(string(out), "WORKER") {
		t.Fatalf("berth status: %v\n%s", err, out)
	}
	if err := exec.Command(berthBinary(t), "status", "--quiet", "--admin", b.admin).Run(); err != nil {
		t.Fatalf("berth status --quiet: %v", err)
	}
	// /metrics: the supervisor's series and the proxy's, in one scrape.
	b.get("/")
	waitFor(t, 5*time.Second, "proxy request metrics", func() bool {
		m := httpGet(t, "http://"+b.admin+"/metrics")
		return strings.Contains(m, `berth_workers{state="ready"} 2`) &&
			strings.Contains(m, "berth_http_requests_total") &&
			strings.Contains(m, "berth_http_request_duration_seconds_bucket")
	})
}
