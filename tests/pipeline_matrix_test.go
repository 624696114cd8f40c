package tests

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The request path's matrix (issue 22): every backend berth can send a
// request to gets the same response features, because one respond stage
// applies them after whichever backend answered.

// matrixWSGI is the page set as a WSGI app (berth's workers, and uWSGI as
// an upstream): /page is 24 KB of HTML, cacheable for a minute, and says
// which request ID it saw; /stream comes in three pieces with buffering off;
// /slow outlasts the timeouts.
const matrixWSGI = `import time
PAGE = ("<html><body>" + "<p>berth matrix page</p>\n" * 1000 + "</body></html>").encode()

def application(environ, start_response):
    path = environ["PATH_INFO"]
    saw = environ.get("HTTP_X_REQUEST_ID", "")
    if path.endswith("/slow"):
        time.sleep(4)
    if path.endswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/html"), ("X-Accel-Buffering", "no"), ("X-App-Saw-Id", saw)])
        def gen():
            for i in range(3):
                yield PAGE[i * 2048:(i + 1) * 2048]
                time.sleep(0.05)
        return gen()
    start_response("200 OK", [("Content-Type", "text/html"), ("Cache-Control", "max-age=60"),
                              ("Content-Length", str(len(PAGE))), ("X-App-Saw-Id", saw)])
    return [PAGE]
`

// matrixASGI is the same page set as an ASGI app (berth's ASGI workers).
const matrixASGI = `import asyncio
PAGE = ("<html><body>" + "<p>berth matrix page</p>\n" * 1000 + "</body></html>").encode()

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    saw = dict(scope["headers"]).get(b"x-request-id", b"")
    if path.endswith("/slow"):
        await asyncio.sleep(4)
    if path.endswith("/stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html"), (b"x-app-saw-id", saw)]})
        for i in range(3):
            await send({"type": "http.response.body", "body": PAGE[i * 2048:(i + 1) * 2048], "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html"), (b"cache-control", b"max-age=60"), (b"x-app-saw-id", saw)]})
    await send({"type": "http.response.body", "body": PAGE})
`

var matrixPage = []byte("<html><body>" + strings.Repeat("<p>berth matrix page</p>\n", 1000) + "</body></html>")

// matrixHTTPBackend is the page set as a plain HTTP/1.1 server (an
// upstream group's server).
func matrixHTTPBackend(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		saw := r.Header.Get("X-Request-Id")
		switch {
		case strings.HasSuffix(r.URL.Path, "/slow"):
			time.Sleep(4 * time.Second)
		case strings.HasSuffix(r.URL.Path, "/stream"):
			w.Header().Set("Content-Type", "text/html")
			w.Header().Set("X-Accel-Buffering", "no")
			w.Header().Set("X-App-Saw-Id", saw)
			for i := 0; i < 3; i++ {
				w.Write(matrixPage[i*2048 : (i+1)*2048])
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("X-App-Saw-Id", saw)
		w.Write(matrixPage)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// matrixUwsgiBackend runs the WSGI page set under a real uWSGI speaking
// the uwsgi protocol on a TCP port (an upstream group with protocol uwsgi).
func matrixUwsgiBackend(t *testing.T) string {
	t.Helper()
	requireFiles(t, "uwsgi", "/usr/lib/uwsgi/plugins/python3_plugin.so")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "upapp.py"), []byte(matrixWSGI), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := startPeer(t, "uwsgi", dir, "uwsgi", "--plugin", "python3", "--uwsgi-socket", addr, "--chdir", dir,
		"--module", "upapp:application", "--processes", "2", "--master", "--die-on-term", "--disable-logging")
	waitTCP(t, "uwsgi", addr, 20*time.Second, p.exited, p.out.String)
	return addr
}

// TestPipelineMatrix: for each backend × response feature, one asserted
// cell. Cells (issue 22's table): compression of a buffered and of a
// streamed response; the cache storing and hitting; the request ID the app
// saw, the response's, the access log's and berth's log line about the
// request; $upstream_response_time; the metrics.
func TestPipelineMatrix(t *testing.T) {
	httpUp := matrixHTTPBackend(t)
	uwsgiUp := matrixUwsgiBackend(t)
	cfg := fmt.Sprintf(`app: {module: "wsgi:application", chdir: $APP, python: $PY}
workers: {count: 2, timeout: 2s}
mounts:
  - {name: asgi, urls: [/asgi/], module: "asgiapp:app", interface: asgi, workers: {count: 1}}
upstreams:
  uh: {servers: [%q], timeout: 2s, retry: {tries: 1}}
  uu: {protocol: uwsgi, servers: [%q], timeout: 2s, retry: {tries: 1}}
routes:
  - {url: /uh/, upstream: uh}
  - {url: /uu/, upstream: uu}
cache:
  routes: [{url: /, max_ttl: 1m}]
proxy:
  access_log: 'ID=$request_id STATUS=$status UPT=$upstream_response_time URI=$request_uri'
`, httpUp, uwsgiUp)
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"wsgi.py": matrixWSGI, "asgiapp.py": matrixASGI}})

	backends := []struct{ name, prefix, source string }{
		{"uwsgi worker", "/w", "worker"},
		{"ASGI worker", "/asgi", "worker"},
		{"upstream HTTP", "/uh", "worker"},
		{"upstream uwsgi", "/uu", "worker"},
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 20 * time.Second}
	get := func(t *testing.T, path string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", b.url(path), nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %s: body: %v", path, err)
		}
		return resp, body
	}
	gunzip := func(t *testing.T, b []byte) []byte {
		t.Helper()
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("not gzip: %v", err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("gunzip: %v", err)
		}
		return out
	}
	logLine := func(id string) string {
		var line string
		waitFor(t, 5*time.Second, "the access log line of "+id, func() bool {
			for _, l := range strings.Split(b.logs.String(), "\n") {
				if strings.HasPrefix(l, "ID="+id+" ") {
					line = l
					return true
				}
			}
			return false
		})
		return line
	}
	uptRE := regexp.MustCompile(`UPT=([0-9.]+) `)

	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			t.Run("compression of a buffered response", func(t *testing.T) {
				resp, body := get(t, be.prefix+"/gz/page?x=1", "Accept-Encoding", "gzip")
				if resp.Header.Get("Content-Encoding") != "gzip" {
					t.Fatalf("Content-Encoding %q, %d bytes: not compressed", resp.Header.Get("Content-Encoding"), len(body))
				}
				if !bytes.Equal(gunzip(t, body), matrixPage) {
					t.Fatal("the decoded page differs")
				}
			})
			t.Run("compression of a streamed response", func(t *testing.T) {
				resp, body := get(t, be.prefix+"/gz/stream", "Accept-Encoding", "gzip")
				if resp.Header.Get("Content-Encoding") != "gzip" {
					t.Fatalf("Content-Encoding %q, %d bytes: not compressed", resp.Header.Get("Content-Encoding"), len(body))
				}
				if !bytes.Equal(gunzip(t, body), matrixPage[:3*2048]) {
					t.Fatal("the decoded stream differs")
				}
			})
			t.Run("cache store and hit", func(t *testing.T) {
				r1, b1 := get(t, be.prefix+"/cache/page")
				r2, b2 := get(t, be.prefix+"/cache/page")
				if r1.Header.Get("X-Cache-Status") != "MISS" || r2.Header.Get("X-Cache-Status") != "HIT" {
					t.Fatalf("X-Cache-Status %q then %q, want MISS then HIT", r1.Header.Get("X-Cache-Status"), r2.Header.Get("X-Cache-Status"))
				}
				if !bytes.Equal(b1, matrixPage) || !bytes.Equal(b2, matrixPage) {
					t.Fatal("a cached page differs")
				}
			})
			t.Run("request ID in the app, the response and the access log", func(t *testing.T) {
				resp, _ := get(t, be.prefix+"/id/page", "X-Request-ID", "attacker-id-123")
				id := resp.Header.Get("X-Request-Id")
				if id == "" || id == "attacker-id-123" {
					t.Fatalf("response X-Request-ID %q: want berth's own", id)
				}
				if saw := resp.Header.Get("X-App-Saw-Id"); saw != id {
					t.Errorf("the app saw X-Request-ID %q, the response carries %q", saw, id)
				}
				if line := logLine(id); !strings.Contains(line, "URI="+be.prefix+"/id/page") {
					t.Errorf("access log line %q", line)
				}
			})
			t.Run("request ID in berth's log line about the request", func(t *testing.T) {
				resp, _ := get(t, be.prefix+"/slow")
				id := resp.Header.Get("X-Request-Id")
				if resp.StatusCode != 504 {
					t.Fatalf("slow request: %d, want 504", resp.StatusCode)
				}
				waitFor(t, 5*time.Second, "berth's log line about "+id, func() bool {
					return strings.Contains(b.logs.String(), "request "+id+": ")
				})
			})
			t.Run("$upstream_response_time", func(t *testing.T) {
				resp, _ := get(t, be.prefix+"/upt/page")
				line := logLine(resp.Header.Get("X-Request-Id"))
				m := uptRE.FindStringSubmatch(line)
				if m == nil {
					t.Fatalf("no upstream response time in %q", line)
				}
				if v, _ := strconv.ParseFloat(m[1], 64); v < 0 || v > 5 {
					t.Errorf("upstream response time %s", m[1])
				}
			})
		})
	}
	t.Run("metrics", func(t *testing.T) {
		metrics := httpGet(t, "http://"+b.admin+"/metrics")
		// Two compressed responses (buffered, streamed) per backend.
		want := fmt.Sprintf(`berth_compressed_responses_total{encoding="gzip",source="%s"} %d`, backends[0].source, 2*len(backends))
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(metrics, "berth_compressed"))
		}
		if !strings.Contains(metrics, fmt.Sprintf(`berth_cache_requests_total{status="HIT"} %d`, len(backends))) {
			t.Errorf("/metrics: cache hits:\n%s", grepLines(metrics, "berth_cache_requests"))
		}
	})
}
