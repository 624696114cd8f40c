package proxy

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/berth-dev/berth/control"
)

func TestIsHashedName(t *testing.T) {
	for name, want := range map[string]bool{
		"app.3f2a9c0b1d4e.css":     true,
		"css/app.3f2a9c0b1d4e.css": true,
		"a.b.0123456789ab.js.map":  true,
		"app.css":                  false,
		"app.3f2a9c0b1d4.css":      false, // 11
		"app.3f2a9c0b1d4eff.css":   false, // 14
		"app.3F2A9C0B1D4E.css":     false, // Django writes lower-case
		".3f2a9c0b1d4e.css":        false,
		"app.3f2a9c0b1d4e.":        false,
		"app.ghijklmnopqr.css":     false,
	} {
		if got := isHashedName(name); got != want {
			t.Errorf("isHashedName(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestStaticCDN: cache headers, hashed names immutable, sidecars chosen by
// Accept-Encoding, in-memory compression, 304 per encoding, single files.
func TestStaticCDN(t *testing.T) {
	dir := filepath.Join(tempDir(t), "static")
	css := strings.Repeat("body { color: red; }\n", 200)
	js := strings.Repeat("console.log('hello');\n", 200)
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	br := func(s string) string {
		var b bytes.Buffer
		w := brotli.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	files := map[string]string{
		"app.3f2a9c0b1d4e.css":    css,
		"app.3f2a9c0b1d4e.css.br": br(css),
		"app.3f2a9c0b1d4e.css.gz": gz(css),
		"only-gz.js":              js,
		"only-gz.js.gz":           gz(js),
		"plain.js":                js,
		"logo.png":                strings.Repeat("\x89PNG", 500),
		"favicon.ico":             strings.Repeat("ico", 500),
	}
	for name, body := range files {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A stale sidecar (older than its file) is not used.
	os.WriteFile(filepath.Join(dir, "stale.js"), []byte(js), 0o644)
	os.WriteFile(filepath.Join(dir, "stale.js.br"), []byte(br("old")), 0o644)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, "stale.js.br"), old, old)

	cfg := defaultConfig()
	cfg.Compression = control.Compression{Enabled: true, MinLength: 100, Types: defaultCompressTypes}
	cfg.Static = []control.Static{
		{URL: "/static/", Dir: dir, Cache: control.Duration(time.Hour)},
		{URL: "/favicon.ico", File: filepath.Join(dir, "favicon.ico"), Cache: control.Duration(24 * time.Hour)},
	}
	fw := startFake(t, "w1", 1, hello)
	h := startProxy(t, cfg, fw)

	for _, tc := range []struct {
		path, ae, enc, cache string
		want                 string
	}{
		{"/static/app.3f2a9c0b1d4e.css", "gzip, br", "br", immutableCache, css},
		{"/static/app.3f2a9c0b1d4e.css", "gzip", "gzip", immutableCache, css},
		{"/static/app.3f2a9c0b1d4e.css", "br;q=0.5, gzip", "gzip", immutableCache, css},
		{"/static/app.3f2a9c0b1d4e.css", "", "", immutableCache, css},
		{"/static/only-gz.js", "br, gzip", "gzip", "public, max-age=3600", js}, // the sidecar there is
		{"/static/only-gz.js", "br", "br", "public, max-age=3600", js},         // compressed in memory
		{"/static/plain.js", "br", "br", "public, max-age=3600", js},
		{"/static/plain.js", "gzip", "gzip", "public, max-age=3600", js},
		{"/static/stale.js", "br", "br", "public, max-age=3600", js}, // from memory, not the old sidecar
		{"/static/logo.png", "gzip, br", "", "public, max-age=3600", files["logo.png"]},
		{"/favicon.ico", "gzip", "gzip", "public, max-age=86400", files["favicon.ico"]},
		{"/favicon.ico", "", "", "public, max-age=86400", files["favicon.ico"]},
	} {
		t.Run(tc.path+" "+tc.ae, func(t *testing.T) {
			resp, b := rawGet(t, h, "GET", tc.path, "Accept-Encoding", tc.ae)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if enc := resp.Header.Get("Content-Encoding"); enc != tc.enc {
				t.Fatalf("Content-Encoding %q, want %q", enc, tc.enc)
			}
			if got := resp.Header.Get("Cache-Control"); got != tc.cache {
				t.Errorf("Cache-Control %q, want %q", got, tc.cache)
			}
			if got := decode(t, tc.enc, b); got != tc.want {
				t.Errorf("body differs (%d bytes, want %d)", len(got), len(tc.want))
			}
			if tc.path != "/static/logo.png" && resp.Header.Get("Vary") != "Accept-Encoding" {
				t.Errorf("Vary %q", resp.Header.Get("Vary"))
			}
			// A 304 for this encoding's ETag, and not for another's.
			etag := resp.Header.Get("Etag")
			r2, _ := rawGet(t, h, "GET", tc.path, "Accept-Encoding", tc.ae, "If-None-Match", etag)
			if r2.StatusCode != 304 {
				t.Errorf("If-None-Match %s: %d, want 304", etag, r2.StatusCode)
			}
			if tc.enc != "" {
				r3, _ := rawGet(t, h, "GET", tc.path, "If-None-Match", etag)
				if r3.StatusCode != 200 {
					t.Errorf("identity request with the %s ETag: %d, want 200", tc.enc, r3.StatusCode)
				}
			}
		})
	}
	if resp, _ := rawGet(t, h, "GET", "/favicon.ico/x"); resp.StatusCode != 200 || fw.requests.Load() != 1 {
		t.Errorf("/favicon.ico/x: %d; a single-file mapping matches its URL only, the rest goes to the worker", resp.StatusCode)
	}
	if !strings.Contains(h.metricsText(), `berth_compressed_responses_total{encoding="br",source="static_sidecar"}`) {
		t.Errorf("no static_sidecar metric")
	}
}
