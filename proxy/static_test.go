package proxy

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

func TestStatic(t *testing.T) {
	base := tempDir(t)
	dir := filepath.Join(base, "static")
	files := map[string]string{
		"app.js":       "console.log(1)",
		"style.css":    "body{}",
		"icon.svg":     "<svg/>",
		"font.woff2":   "wOF2",
		"data.json":    `{"a":1}`,
		"mod.wasm":     "\x00asm",
		"noext":        "raw",
		"index.html":   "<h1>index</h1>",
		"sub/file.txt": "in sub",
		"digits.txt":   "0123456789",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "secret.txt"), []byte("SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(dir, "link-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret.txt", filepath.Join(dir, "sub", "rel-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/file.txt", filepath.Join(dir, "link-in")); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	os.Chtimes(filepath.Join(dir, "digits.txt"), mtime, mtime)

	fw := startFake(t, "w1", 2, hello)
	cfg := defaultConfig()
	cfg.Static = []control.Static{{URL: "/static/", Dir: dir}}
	h := startProxy(t, cfg, fw)

	_, first := h.get("/static/digits.txt")
	if first != "0123456789" {
		t.Fatalf("digits.txt = %q", first)
	}
	resp, _ := h.get("/static/digits.txt")
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Last-Modified") != mtime.Format(http.TimeFormat) {
		t.Fatalf("ETag %q Last-Modified %q", etag, resp.Header.Get("Last-Modified"))
	}

	tests := []staticTest{
		{"js", "GET", "/static/app.js", nil, 200, "text/javascript; charset=utf-8", "console.log(1)", [2]string{}},
		{"css", "GET", "/static/style.css", nil, 200, "text/css; charset=utf-8", "body{}", [2]string{}},
		{"svg", "GET", "/static/icon.svg", nil, 200, "image/svg+xml", "<svg/>", [2]string{}},
		{"woff2", "GET", "/static/font.woff2", nil, 200, "font/woff2", "wOF2", [2]string{}},
		{"json", "GET", "/static/data.json", nil, 200, "application/json", `{"a":1}`, [2]string{}},
		{"wasm", "GET", "/static/mod.wasm", nil, 200, "application/wasm", "\x00asm", [2]string{}},
		{"no extension", "GET", "/static/noext", nil, 200, "application/octet-stream", "raw", [2]string{}},
		{"subdir", "GET", "/static/sub/file.txt", nil, 200, "text/plain; charset=utf-8", "in sub", [2]string{}},
		{"symlink inside", "GET", "/static/link-in", nil, 200, "", "in sub", [2]string{}},
		{"head", "HEAD", "/static/digits.txt", nil, 200, "", "", [2]string{"Content-Length", "10"}},
		{"if-none-match", "GET", "/static/digits.txt", []string{"If-None-Match", etag}, 304, "", "", [2]string{}},
		{"if-modified-since", "GET", "/static/digits.txt", []string{"If-Modified-Since", mtime.Format(http.TimeFormat)}, 304, "", "", [2]string{}},
		{"modified", "GET", "/static/digits.txt", []string{"If-Modified-Since", mtime.Add(-time.Hour).Format(http.TimeFormat)}, 200, "", "0123456789", [2]string{}},
		{"range", "GET", "/static/digits.txt", []string{"Range", "bytes=2-4"}, 206, "", "234", [2]string{"Content-Range", "bytes 2-4/10"}},
		{"suffix range", "GET", "/static/digits.txt", []string{"Range", "bytes=-3"}, 206, "", "789", [2]string{}},
		{"range not satisfiable", "GET", "/static/digits.txt", []string{"Range", "bytes=100-200"}, 416, "", "", [2]string{"Content-Range", "bytes */10"}},
		{"post refused", "POST", "/static/app.js", nil, 405, "", "", [2]string{"Allow", "GET, HEAD"}},
		{"mount dir, no index", "GET", "/static/", nil, 404, "", "", [2]string{}},
		{"subdir, no listing", "GET", "/static/sub/", nil, 404, "", "", [2]string{}},
		{"dir without slash", "GET", "/static/sub", nil, 404, "", "", [2]string{}},
		{"missing", "GET", "/static/nope.js", nil, 404, "", "", [2]string{}},
		{"dotdot", "GET", "/static/../secret.txt", nil, 404, "", "", [2]string{}},
		{"dotdot deep", "GET", "/static/sub/../../secret.txt", nil, 404, "", "", [2]string{}},
		{"encoded dotdot", "GET", "/static/%2e%2e/secret.txt", nil, 404, "", "", [2]string{}},
		{"encoded dotdot upper", "GET", "/static/%2E%2E/secret.txt", nil, 404, "", "", [2]string{}},
		{"encoded slash", "GET", "/static/..%2fsecret.txt", nil, 404, "", "", [2]string{}},
		{"encoded slash in name", "GET", "/static/sub%2ffile.txt", nil, 404, "", "", [2]string{}},
		{"symlink out", "GET", "/static/link-out", nil, 404, "", "", [2]string{}},
		{"relative symlink out", "GET", "/static/sub/rel-out", nil, 404, "", "", [2]string{}},
		{"nul byte (400, as nginx)", "GET", "/static/app.js%00.png", nil, 400, "", "", [2]string{}},
		{"not static", "GET", "/staticfile", nil, 200, "", "hello from w1", [2]string{}},
	}
	defer openat2Usable.Store(true)
	for _, useOpenat2 := range []bool{true, false} {
		openat2Usable.Store(useOpenat2)
		mode := "os.Root"
		if useOpenat2 {
			mode = "openat2"
		}
		for _, tc := range tests {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				tc.check(t, h)
			})
		}
	}
	// The escapes never reached the worker either: only /staticfile did.
	if got := fw.requests.Load(); got != 2 {
		t.Errorf("worker got %d requests, want 2 (/staticfile in each mode)", got)
	}
}

// staticTest is one request to the static mount and what must come back.
type staticTest struct {
	name, method, path string
	hdr                []string
	code               int
	ctype, body        string
	header             [2]string // a header and its value, when set
}

func (tc staticTest) check(t *testing.T, h *harness) {
	t.Helper()
	resp, body := h.do(tc.method, tc.path, nil, tc.hdr...)
	if resp.StatusCode != tc.code {
		t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.code, body)
	}
	if strings.Contains(body, "SECRET") {
		t.Fatalf("escaped the static dir: %q", body)
	}
	if tc.ctype != "" && resp.Header.Get("Content-Type") != tc.ctype {
		t.Errorf("Content-Type %q, want %q", resp.Header.Get("Content-Type"), tc.ctype)
	}
	if (tc.code == 200 || tc.code == 206) && body != tc.body {
		t.Errorf("body %q, want %q", body, tc.body)
	}
	if tc.method == "HEAD" && body != "" {
		t.Errorf("HEAD sent a body %q", body)
	}
	if tc.header[0] != "" && resp.Header.Get(tc.header[0]) != tc.header[1] {
		t.Errorf("%s = %q, want %q", tc.header[0], resp.Header.Get(tc.header[0]), tc.header[1])
	}
}

// A static directory replaced under the running proxy (a deploy swapping
// it) is served from its new content within a couple of seconds.
func TestStaticDirReplaced(t *testing.T) {
	base := tempDir(t)
	dir := filepath.Join(base, "static")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "v.txt"), []byte("one"), 0o644)
	cfg := defaultConfig()
	cfg.Static = []control.Static{{URL: "/static/", Dir: dir}}
	h := startProxy(t, cfg)
	if _, body := h.get("/static/v.txt"); body != "one" {
		t.Fatalf("before: %q", body)
	}
	if err := os.Rename(dir, filepath.Join(base, "old")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "v.txt"), []byte("two"), 0o644)
	waitFor(t, "the new directory to be served", 3*time.Second, func() bool {
		_, body := h.get("/static/v.txt")
		return body == "two"
	})
}

// Raw request lines that net/http's client would not send as written.
func TestStaticRawTraversal(t *testing.T) {
	base := tempDir(t)
	dir := filepath.Join(base, "static")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(base, "secret.txt"), []byte("SECRET"), 0o644)
	fw := startFake(t, "w1", 1, hello)
	cfg := defaultConfig()
	cfg.Static = []control.Static{{URL: "/static/", Dir: dir}}
	h := startProxy(t, cfg, fw)
	for _, target := range []string{
		"/static/../secret.txt",
		"/static/./../secret.txt",
		"/static//../secret.txt",
		"/static/%2e%2e%2fsecret.txt",
		"/static/.%2e/secret.txt",
	} {
		got := rawRequest(t, h.addr, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 404 ") || strings.Contains(got, "SECRET") {
			t.Errorf("GET %s: %q", target, firstLine(got))
		}
	}
	if n := fw.requests.Load(); n != 0 {
		t.Errorf("traversal attempts reached the worker %d times", n)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// TestStaticOpenFilesNeverStale: the open-file cache (openfiles.go) serves
// the file on disk now, whatever it held open: a file replaced by rename,
// rewritten in place (longer, or the same length with a new mtime),
// deleted, or swapped for a symlink leading out of the directory.
func TestStaticOpenFilesNeverStale(t *testing.T) {
	base := tempDir(t)
	dir := filepath.Join(base, "static")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(base, "secret.txt"), []byte("SECRET"), 0o644)
	p := filepath.Join(dir, "f.txt")
	write := func(body string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
	}
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	write("one", t0)
	cfg := defaultConfig()
	cfg.Static = []control.Static{{URL: "/static/", Dir: dir}}
	h := startProxy(t, cfg, startFake(t, "w1", 1, hello))
	expect := func(status int, body string) {
		t.Helper()
		resp, got := h.get("/static/f.txt")
		if resp.StatusCode != status || status == 200 && got != body {
			t.Fatalf("got %d %q, want %d %q", resp.StatusCode, got, status, body)
		}
	}
	expect(200, "one")
	expect(200, "one") // from the open descriptor

	tmp := filepath.Join(dir, ".f.tmp")
	os.WriteFile(tmp, []byte("two"), 0o644)
	os.Rename(tmp, p)
	expect(200, "two") // replaced: another inode

	write("three!", t0) // in place, longer
	expect(200, "three!")
	write("four!!", t0.Add(time.Second)) // in place, same length, new mtime
	expect(200, "four!!")

	os.Remove(p)
	expect(404, "")
	os.Symlink(filepath.Join(base, "secret.txt"), p)
	expect(404, "")
	h.srv.files.mu.Lock()
	n := len(h.srv.files.m)
	h.srv.files.mu.Unlock()
	if n > maxOpenFiles {
		t.Fatalf("%d descriptors cached", n)
	}
}
