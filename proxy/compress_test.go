package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/berth-dev/berth/control"
)

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		ae   string
		want uint8
	}{
		{"", encIdentity},
		{"gzip", encGzip},
		{"br", encBrotli},
		{"gzip, deflate, br", encBrotli},
		{"gzip;q=1.0, br;q=0.5", encGzip},
		{"br;q=0.5, gzip;q=0.5", encBrotli},
		{"br;q=0, gzip", encGzip},
		{"br;q=0, gzip;q=0", encIdentity},
		{"*", encBrotli},
		{"*;q=0.1, gzip;q=0.5", encGzip},
		{"identity", encIdentity},
		{"deflate", encIdentity},
		{"x-gzip", encGzip},
		{"GZIP", encGzip},
		{"br;q=bogus, gzip", encGzip},
		{"br; q=0.8 , gzip; q=0.9", encGzip},
	} {
		var vals []string
		if tc.ae != "" {
			vals = []string{tc.ae}
		}
		if got := negotiate(vals); got != tc.want {
			t.Errorf("negotiate(%q) = %s, want %s", tc.ae, encNames[got], encNames[tc.want])
		}
	}
}

func decode(t *testing.T, enc string, b []byte) string {
	t.Helper()
	var r io.Reader
	switch enc {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		r = zr
	case "br":
		r = brotli.NewReader(bytes.NewReader(b))
	case "":
		return string(b)
	default:
		t.Fatalf("unexpected Content-Encoding %q", enc)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", enc, err)
	}
	return string(out)
}

// rawGet fetches without the transport's transparent gzip.
func rawGet(t *testing.T, h *harness, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, h.url+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func compressConfig() control.Proxy {
	cfg := defaultConfig()
	cfg.Compression = control.Compression{Enabled: true, MinLength: 100,
		Types: []string{"text/html", "application/json", "text/event-stream", "image/svg+xml"}}
	return cfg
}

// TestCompression: what is compressed decodes to the exact bytes; what
// must not be is sent as the worker gave it.
func TestCompression(t *testing.T) {
	page := strings.Repeat("<p>hello compressed world</p>\n", 200)
	big := strings.Repeat("0123456789abcdef", 80<<10) // 1.25 MiB: spilled to a temp file
	fw := startFake(t, "w1", 4, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		h := http.Header{"Content-Type": {"text/html; charset=utf-8"}}
		body := page
		switch req.vars["PATH_INFO"] {
		case "/small":
			body = "<p>tiny</p>"
		case "/image":
			h.Set("Content-Type", "image/png")
		case "/encoded":
			h.Set("Content-Encoding", "gzip")
		case "/partial":
			h.Set("Content-Range", "bytes 0-9/100")
			respond(c, 206, h, []byte(body))
			return true
		case "/notransform":
			h.Set("Cache-Control", "public, no-transform")
		case "/etag":
			h.Set("Etag", `"v1"`)
			h.Set("Vary", "Cookie")
		case "/big":
			body = big
		}
		respond(c, 200, h, []byte(body))
		return true
	})
	h := startProxy(t, compressConfig(), fw)
	for _, tc := range []struct {
		path, ae, method string
		wantEnc          string
		wantVary         bool
		want             string
	}{
		{"/page", "gzip, deflate, br", "GET", "br", true, page},
		{"/page", "gzip", "GET", "gzip", true, page},
		{"/page", "br;q=0.1, gzip", "GET", "gzip", true, page},
		{"/page", "", "GET", "", true, page},
		{"/page", "identity", "GET", "", true, page},
		{"/big", "gzip", "GET", "gzip", true, big},
		{"/big", "br", "GET", "br", true, big},
		{"/small", "gzip", "GET", "", false, "<p>tiny</p>"},
		{"/image", "gzip", "GET", "", false, page},
		{"/encoded", "gzip", "GET", "gzip", false, page}, // the worker's own bytes, untouched
		{"/partial", "gzip", "GET", "", false, page},
		{"/notransform", "gzip", "GET", "", false, page},
		{"/page", "gzip", "HEAD", "", false, ""},
	} {
		t.Run(tc.path+" "+tc.ae+" "+tc.method, func(t *testing.T) {
			resp, b := rawGet(t, h, tc.method, tc.path, "Accept-Encoding", tc.ae)
			enc := resp.Header.Get("Content-Encoding")
			if enc != tc.wantEnc {
				t.Fatalf("Content-Encoding %q, want %q", enc, tc.wantEnc)
			}
			if got := strings.Contains(strings.Join(resp.Header["Vary"], ","), "Accept-Encoding"); got != tc.wantVary {
				t.Errorf("Vary %q, want Accept-Encoding %v", resp.Header["Vary"], tc.wantVary)
			}
			if tc.path == "/encoded" {
				enc = "" // not ours to decode: the fake sent plain bytes
			}
			if got := decode(t, enc, b); got != tc.want {
				t.Errorf("decoded body differs: %d bytes, want %d", len(got), len(tc.want))
			}
			if enc != "" && tc.path != "/big" && resp.ContentLength != int64(len(b)) {
				t.Errorf("Content-Length %d, body %d", resp.ContentLength, len(b))
			}
		})
	}
	resp, b := rawGet(t, h, "GET", "/etag", "Accept-Encoding", "gzip")
	if resp.Header.Get("Etag") != `W/"v1"` || resp.Header.Get("Vary") != "Cookie, Accept-Encoding" && strings.Join(resp.Header["Vary"], ", ") != "Cookie, Accept-Encoding" {
		t.Errorf("ETag %q Vary %q: want the ETag weak and Accept-Encoding added", resp.Header.Get("Etag"), resp.Header["Vary"])
	}
	if decode(t, "gzip", b) != page {
		t.Errorf("/etag body differs")
	}

	// Off: nothing is compressed.
	cfg := compressConfig()
	cfg.Compression.Enabled = false
	h.srv.SetConfig(cfg)
	if resp, _ := rawGet(t, h, "GET", "/page", "Accept-Encoding", "gzip"); resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Vary") != "" {
		t.Errorf("compression off: Content-Encoding %q Vary %q", resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
	}
}

// TestCompressionStreams: a streamed response is compressed chunk by
// chunk: each event can be decoded before the next one is sent.
func TestCompressionStreams(t *testing.T) {
	next := make(chan struct{})
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i := 0; i < 3; i++ {
			ev := fmt.Sprintf("data: event %d %s\n\n", i, strings.Repeat("x", 50))
			fmt.Fprintf(c, "%x\r\n%s\r\n", len(ev), ev)
			select {
			case <-next:
			case <-fw.done:
				return false
			}
		}
		io.WriteString(c, "0\r\n\r\n")
		return true
	})
	for _, enc := range []string{"gzip", "br"} {
		t.Run(enc, func(t *testing.T) {
			h := startProxy(t, compressConfig(), fw)
			req, _ := http.NewRequest("GET", h.url+"/events", nil)
			req.Header.Set("Accept-Encoding", enc)
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("Content-Encoding") != enc {
				t.Fatalf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
			}
			var zr io.Reader
			if enc == "gzip" {
				g, err := gzip.NewReader(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				zr = g
			} else {
				zr = brotli.NewReader(resp.Body)
			}
			br := bufio.NewReader(zr)
			for i := 0; i < 3; i++ {
				got := make(chan string, 1)
				go func() {
					line, _ := br.ReadString('\n')
					br.ReadString('\n')
					got <- line
				}()
				select {
				case line := <-got:
					if !strings.HasPrefix(line, fmt.Sprintf("data: event %d ", i)) {
						t.Fatalf("event %d: %q", i, line)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("event %d did not arrive before the next was sent: not flushed", i)
				}
				next <- struct{}{}
			}
			rest, err := io.ReadAll(br)
			if err != nil || len(rest) != 0 {
				t.Errorf("after the last event: %q, %v (want a clean end)", rest, err)
			}
		})
	}
}
