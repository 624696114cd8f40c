package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/worker"
)

// Debian's interpreter (python3-flask is installed for it); the first python3 on PATH may
// be another build.
const nginxPython = "/usr/bin/python3"

const nginxPlainApp = `
import hashlib, json, os

PATTERN = bytes(range(256)) * 4096


def application(environ, start_response):
    path = environ['PATH_INFO']
    if path == '/upload':
        h, n, inp = hashlib.sha256(), 0, environ['wsgi.input']
        while True:
            data = inp.read(65536)
            if not data:
                break
            h.update(data)
            n += len(data)
        body = json.dumps({'sha256': h.hexdigest(), 'size': n}).encode()
        start_response('200 OK', [('Content-Type', 'application/json')])
        return [body]
    if path == '/big':
        size = int(environ['QUERY_STRING'])
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        def gen(left=size):
            while left > 0:
                chunk = PATTERN[:left]
                left -= len(chunk)
                yield chunk
        return gen()
    if path == '/static':
        f = open(os.environ['BERTH_TEST_FILE'], 'rb')
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return environ['wsgi.file_wrapper'](f, 65536)
    if path == '/error':
        raise RuntimeError('planned failure')
    if path == '/unread':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'did not read the body']
    keys = ['REQUEST_METHOD', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_URI', 'CONTENT_TYPE',
            'CONTENT_LENGTH', 'SERVER_NAME', 'SERVER_PROTOCOL', 'REMOTE_ADDR', 'HTTP_HOST', 'HTTP_X_TEST',
            'HTTP_CONTENT_TYPE', 'HTTP_CONTENT_LENGTH', 'wsgi.url_scheme']
    out = {k: environ.get(k) for k in keys}
    out['body'] = environ['wsgi.input'].read().decode('latin-1')
    out['path_utf8'] = path.encode('latin-1').decode('utf-8')
    start_response('200 OK', [('Content-Type', 'application/json'), ('X-App', 'plain')])
    return [json.dumps(out).encode()]
`

const nginxFlaskApp = `
import hashlib, os
from flask import Flask, jsonify, request, send_file, url_for

app = Flask(__name__)


@app.route('/hello')
def hello():
    return jsonify(name=request.args.get('name'), url=url_for('hello', x=1), script_root=request.script_root,
                   path=request.path, host=request.host, scheme=request.scheme)


@app.post('/form')
def form():
    return jsonify(form=request.form.to_dict(flat=False), content_type=request.content_type)


@app.route('/headers')
def headers():
    return jsonify(dict(request.headers))


@app.post('/upload')
def upload():
    h, n = hashlib.sha256(), 0
    while True:
        data = request.stream.read(65536)
        if not data:
            break
        h.update(data)
        n += len(data)
    return jsonify(sha256=h.hexdigest(), size=n)


@app.route('/file')
def file():
    return send_file(os.environ['BERTH_TEST_FILE'], mimetype='application/octet-stream')
`

const nginxConf = `
daemon off;
master_process off;
worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path {{DIR}}/tmp/body;
    proxy_temp_path {{DIR}}/tmp/proxy;
    fastcgi_temp_path {{DIR}}/tmp/fastcgi;
    uwsgi_temp_path {{DIR}}/tmp/uwsgi;
    scgi_temp_path {{DIR}}/tmp/scgi;
    client_max_body_size 16m;
    server {
        listen unix:{{DIR}}/http.sock;
        server_name berth.test;
        location /flask/ {
            include /etc/nginx/uwsgi_params;
            uwsgi_param SCRIPT_NAME /flask;
            uwsgi_pass unix:{{DIR}}/flask.sock;
        }
        location / {
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{{DIR}}/plain.sock;
        }
    }
}
`

// TestNginxWorker puts real nginx (uwsgi_pass, Debian's uwsgi_params) in front of berth
// workers serving a Flask app and a plain WSGI app: berth's worker must speak the uwsgi
// protocol as nginx does.
func TestNginxWorker(t *testing.T) {
	const nginx = "/usr/sbin/nginx"
	requireFiles(t, nginx, "/etc/nginx/uwsgi_params", nginxPython)
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	runtimePath, err := worker.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	apps := filepath.Join(dir, "apps")
	bigFile := filepath.Join(dir, "big.bin")
	bigData := make([]byte, 20<<20+3)
	rand.New(rand.NewSource(7)).Read(bigData)
	for path, data := range map[string][]byte{
		filepath.Join(apps, "plainapp.py"): []byte(nginxPlainApp),
		filepath.Join(apps, "flaskapp.py"): []byte(nginxFlaskApp),
		bigFile:                            bigData,
		filepath.Join(dir, "nginx.conf"):   []byte(strings.ReplaceAll(nginxConf, "{{DIR}}", dir)),
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}

	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "n.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	startNginxWorker(t, notify, runtimePath, dir, apps, "flask", "flaskapp:app", bigFile)
	startNginxWorker(t, notify, runtimePath, dir, apps, "plain", "plainapp", bigFile)

	cmd := exec.Command(nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})
	httpSock := filepath.Join(dir, "http.sock")
	waitUnixSocket(t, "nginx", httpSock, 20*time.Second, exited, func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return string(b)
	})

	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", httpSock)
		},
	}}
	get := func(t *testing.T, method, path string, body io.Reader, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, "http://berth.test"+path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: read body: %v", method, path, err)
		}
		return resp, b
	}
	jsonOf := func(t *testing.T, b []byte) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %q", b)
		}
		return m
	}
	expect := func(t *testing.T, got map[string]any, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if fmt.Sprint(got[k]) != fmt.Sprint(v) {
				t.Errorf("%s = %#v, want %#v", k, got[k], v)
			}
		}
	}

	t.Run("plain_get_query_headers", func(t *testing.T) {
		resp, b := get(t, "GET", "/caf%C3%A9/x?a=1&b=two%20words", nil, http.Header{"X-Test": {"yes"}})
		if resp.StatusCode != 200 || resp.Header.Get("X-App") != "plain" {
			t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, b)
		}
		expect(t, jsonOf(t, b), map[string]any{
			"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "path_utf8": "/café/x", "QUERY_STRING": "a=1&b=two%20words",
			"REQUEST_URI": "/caf%C3%A9/x?a=1&b=two%20words", "SERVER_NAME": "berth.test", "SERVER_PROTOCOL": "HTTP/1.1",
			"HTTP_HOST": "berth.test", "HTTP_X_TEST": "yes", "wsgi.url_scheme": "http", "body": "",
			"HTTP_CONTENT_TYPE": nil, "HTTP_CONTENT_LENGTH": nil,
		})
	})

	t.Run("plain_post", func(t *testing.T) {
		resp, b := get(t, "POST", "/post", strings.NewReader("k=v&x=y"), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		expect(t, jsonOf(t, b), map[string]any{"REQUEST_METHOD": "POST", "body": "k=v&x=y",
			"CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": "7",
			"HTTP_CONTENT_TYPE": nil, "HTTP_CONTENT_LENGTH": nil})
	})

	t.Run("flask_get", func(t *testing.T) {
		resp, b := get(t, "GET", "/flask/hello?name=berth", nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		expect(t, jsonOf(t, b), map[string]any{"name": "berth", "url": "/flask/hello?x=1", "script_root": "/flask",
			"path": "/hello", "host": "berth.test", "scheme": "http"})
		resp, b = get(t, "HEAD", "/flask/hello?name=berth", nil, nil)
		if resp.StatusCode != 200 || len(b) != 0 {
			t.Fatalf("HEAD: %d %q", resp.StatusCode, b)
		}
	})

	t.Run("flask_post_form", func(t *testing.T) {
		form := url.Values{"a": {"1", "2"}, "name": {"béla & co"}}
		resp, b := get(t, "POST", "/flask/form", strings.NewReader(form.Encode()),
			http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		expect(t, jsonOf(t, b), map[string]any{"form": map[string]any{"a": []any{"1", "2"}, "name": []any{"béla & co"}},
			"content_type": "application/x-www-form-urlencoded"})
	})

	t.Run("flask_headers", func(t *testing.T) {
		resp, b := get(t, "GET", "/flask/headers", nil, http.Header{"X-Custom": {"hello world"}, "Accept-Language": {"hu"}})
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		expect(t, jsonOf(t, b), map[string]any{"X-Custom": "hello world", "Accept-Language": "hu", "Host": "berth.test"})
	})

	t.Run("upload_5MB", func(t *testing.T) {
		body := make([]byte, 5<<20+11)
		rand.New(rand.NewSource(5)).Read(body)
		sum := sha256.Sum256(body)
		for _, path := range []string{"/upload", "/flask/upload"} {
			resp, b := get(t, "POST", path, strings.NewReader(string(body)), http.Header{"Content-Type": {"application/octet-stream"}})
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
			}
			expect(t, jsonOf(t, b), map[string]any{"sha256": hex.EncodeToString(sum[:]), "size": float64(len(body))})
		}
	})

	t.Run("unread_upload", func(t *testing.T) {
		// The app answers without reading 5 MB of body: the worker must still end the
		// connection cleanly (FIN, not RST) so nginx passes the response on.
		body := strings.Repeat("z", 5<<20)
		for i := 0; i < 5; i++ {
			resp, b := get(t, "POST", "/unread", strings.NewReader(body), nil)
			if resp.StatusCode != 200 || string(b) != "did not read the body" {
				t.Fatalf("try %d: %d %q", i, resp.StatusCode, b)
			}
		}
	})

	t.Run("large_responses", func(t *testing.T) {
		want := sha256.Sum256(bigData)
		for _, path := range []string{"/static", "/flask/file"} {
			resp, b := get(t, "GET", path, nil, nil)
			if got := sha256.Sum256(b); resp.StatusCode != 200 || got != want {
				t.Fatalf("%s: %d, %d bytes, want %d", path, resp.StatusCode, len(b), len(bigData))
			}
		}
		const size = 30<<20 + 5
		resp, b := get(t, "GET", fmt.Sprintf("/big?%d", size), nil, nil)
		pattern := make([]byte, 1<<20)
		for i := range pattern {
			pattern[i] = byte(i)
		}
		h := sha256.New()
		for left := size; left > 0; left -= min(left, len(pattern)) {
			h.Write(pattern[:min(left, len(pattern))])
		}
		if resp.StatusCode != 200 || len(b) != size || hex.EncodeToString(h.Sum(nil)) != fmt.Sprintf("%x", sha256.Sum256(b)) {
			t.Fatalf("/big: %d, %d bytes, want %d", resp.StatusCode, len(b), size)
		}
	})

	t.Run("app_error_is_500", func(t *testing.T) {
		resp, b := get(t, "GET", "/error", nil, nil)
		if resp.StatusCode != 500 || string(b) != "Internal Server Error\n" {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
		resp, _ = get(t, "GET", "/after-error", nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("after the error: %d", resp.StatusCode)
		}
	})

	// nginx must have found nothing wrong with the worker's side of the protocol (an upstream
	// reset, a bad status line, a premature close would all be logged at [error]).
	errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
	for _, level := range []string{"[error]", "[crit]", "[alert]", "[emerg]"} {
		if strings.Contains(string(errLog), level) {
			t.Errorf("nginx logged %s:\n%s", level, errLog)
		}
	}
}

// startNginxWorker starts a berth worker in serve mode on dir/<name>.sock and waits for its
// READY=1 datagram.
func startNginxWorker(t *testing.T, notify *net.UnixConn, runtimePath, dir, apps, name, module, bigFile string) {
	t.Helper()
	cmd := exec.Command(nginxPython, "-u", runtimePath, "serve")
	cmd.Env = []string{
		"PATH=/usr/bin:/bin",
		"PYTHONDONTWRITEBYTECODE=1",
		"BERTH_APP=" + module,
		"BERTH_CHDIR=" + apps,
		"BERTH_THREADS=2",
		"BERTH_WORKER_ID=" + name,
		"BERTH_SOCKET=" + filepath.Join(dir, name+".sock"),
		"NOTIFY_SOCKET=" + notify.LocalAddr().String(),
		"BERTH_TEST_FILE=" + bigFile,
	}
	stderr, err := os.Create(filepath.Join(dir, name+".stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("worker %s: %v (want exit 0 on SIGTERM)", name, waitErr)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("worker %s ignored SIGTERM", name)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, name+".stderr"))
			t.Logf("worker %s stderr:\n%s", name, b)
		}
	})
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		notify.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, _, err := notify.ReadFromUnix(buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	select {
	case msg := <-got:
		if !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "BERTH_WORKER="+name) {
			t.Fatalf("worker %s: notify %q", name, msg)
		}
	case <-exited:
		b, _ := os.ReadFile(filepath.Join(dir, name+".stderr"))
		t.Fatalf("worker %s exited before READY: %v\n%s", name, waitErr, b)
	}
}
