package asgiwire

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-dev/berth/proxy/cgi"
)

func TestParseStart(t *testing.T) {
	for _, c := range []struct {
		name    string
		payload string
		status  int
		ok      bool
		headers http.Header
	}{
		{"status only", "\x00\xc8", 200, true, http.Header{}},
		{"headers", "\x01\x94content-type\x00text/plain\x00x-a\x001", 404, true,
			http.Header{"Content-Type": {"text/plain"}, "X-A": {"1"}}},
		{"repeated header", "\x00\xc8set-cookie\x00a=1\x00set-cookie\x00b=2", 200, true,
			http.Header{"Set-Cookie": {"a=1", "b=2"}}},
		{"hop-by-hop dropped", "\x00\xc8connection\x00close\x00transfer-encoding\x00chunked\x00x\x00y", 200, true,
			http.Header{"X": {"y"}}},
		{"empty value", "\x00\xc8x-empty\x00", 200, true, http.Header{"X-Empty": {""}}},
		{"too short", "\x00", 0, false, nil},
		{"informational status", "\x00\x65", 0, false, nil},
		{"name with space", "\x00\xc8bad name\x00v", 0, false, nil},
		{"value with CR", "\x00\xc8x\x00a\rb", 0, false, nil},
		{"name without value", "\x00\xc8lonely", 0, false, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			status, ok := ParseStart([]byte(c.payload), h)
			if ok != c.ok || status != c.status {
				t.Fatalf("ParseStart = %d, %v; want %d, %v", status, ok, c.status, c.ok)
			}
			if ok && !equalHeaders(h, c.headers) {
				t.Errorf("headers %v, want %v", h, c.headers)
			}
		})
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\n") != strings.Join(b[k], "\n") {
			return false
		}
	}
	return true
}

func TestParseAccept(t *testing.T) {
	for _, c := range []struct {
		payload, sub string
		ok           bool
		header       string // X-Gen wanted
	}{
		{"", "", true, ""},
		{"chat", "chat", true, ""},
		{"chat\x00x-gen\x002", "chat", true, "2"},
		{"\x00x-gen\x003\x00sec-websocket-accept\x00forged", "", true, "3"},
		{"chat\x00bad name\x00v", "", false, ""},
	} {
		h := http.Header{}
		sub, ok := ParseAccept([]byte(c.payload), h)
		if sub != c.sub || ok != c.ok || h.Get("X-Gen") != c.header || h.Get("Sec-Websocket-Accept") != "" {
			t.Errorf("ParseAccept(%q) = %q, %v, %v", c.payload, sub, ok, h)
		}
	}
}

func TestAppendHead(t *testing.T) {
	// As checkRequest leaves it: origin-form.
	r := httptest.NewRequest("POST", "/a%20b/c?x=1", nil)
	r.Host = "example.com"
	r.Header.Set("X_Spoof", "1")
	r.Header.Set("Transfer-Encoding", "chunked")
	r.Header.Set("Accept", "text/html")
	in := &cgi.Vars{Scheme: "https", PathInfo: "/a b/c", RemoteAddr: "10.0.0.1", RemotePort: "5555",
		ServerName: "example.com", ServerPort: "443", ContentLength: "7"}
	b, ok := AppendHead(nil, FlagBody, r, in)
	if !ok {
		t.Fatal("refused a clean head")
	}
	parts := strings.Split(string(b[1:]), "\x00")
	want := []string{"POST", "https", "/a%20b/c", "/a b/c", "x=1", "10.0.0.1", "5555", "example.com", "443", "1.1"}
	if b[0] != FlagBody || strings.Join(parts[:10], "|") != strings.Join(want, "|") {
		t.Fatalf("head fields %q, want %q", parts[:10], want)
	}
	got := map[string]string{}
	for i := 10; i+1 < len(parts); i += 2 {
		got[parts[i]] = parts[i+1]
	}
	if got["host"] != "example.com" || got["accept"] != "text/html" || got["content-length"] != "7" ||
		got["x_spoof"] != "" || got["transfer-encoding"] != "" {
		t.Errorf("headers %v: want host, accept and the proxy's content-length; no underscore names, no transfer-encoding", got)
	}
	ws := httptest.NewRequest("GET", "/ws", nil)
	b, _ = AppendHead(nil, FlagWebsocket, ws, &cgi.Vars{Scheme: "https", PathInfo: "/ws"})
	if strings.Split(string(b[1:]), "\x00")[1] != "wss" {
		t.Errorf("websocket over https: scheme %q, want wss", strings.Split(string(b[1:]), "\x00")[1])
	}
	if _, ok := AppendHead(nil, 0, httptest.NewRequest("GET", "/", nil), &cgi.Vars{PathInfo: "/a\x00b"}); ok {
		t.Error("a NUL in the decoded path was let through")
	}
}

// TestReadFrame: frames written with PutHeader read back; lengths out of
// range are errors, and a declared length allocates nothing before its
// bytes are there.
func TestReadFrame(t *testing.T) {
	var buf bytes.Buffer
	hdr := make([]byte, HeaderLen)
	for i, p := range [][]byte{nil, []byte("start"), bytes.Repeat([]byte("x"), 70000)} {
		PutHeader(hdr, FrameBody, uint32(i+1), len(p))
		buf.Write(hdr)
		buf.Write(p)
	}
	br := bufio.NewReader(&buf)
	for i, want := range []int{0, 5, 70000} {
		typ, id, p, err := ReadFrame(br, hdr)
		if err != nil || typ != FrameBody || id != uint32(i+1) || len(p) != want {
			t.Fatalf("frame %d: %d %d %d bytes, %v", i, typ, id, len(p), err)
		}
	}
	for _, bad := range []string{"\x00\x00\x00\x04\x02\x00\x00\x00\x01", "\x7f\xff\xff\xff\x02\x00\x00\x00\x01"} {
		if _, _, _, err := ReadFrame(bufio.NewReader(strings.NewReader(bad)), hdr); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("%q: %v, want a length out of range", bad, err)
		}
	}
}

// FuzzWorkerFrames reads what a worker sends: a stream of frames, each
// START payload parsed into a header. Nothing panics; a frame read is never
// larger than its bytes; a START accepted has a status 200-999 and only
// valid header names and values (what the proxy will write to a client).
func FuzzWorkerFrames(f *testing.F) {
	hdr := make([]byte, HeaderLen)
	add := func(typ uint8, payload string) []byte {
		b := make([]byte, HeaderLen)
		PutHeader(b, typ, 1, len(payload))
		return append(b, payload...)
	}
	f.Add(add(FrameStart, "\x00\xc8content-type\x00text/plain"))
	f.Add(append(add(FrameStart, "\x01\x94x\x00y"), add(FrameEnd, "body")...))
	f.Add(add(FrameAccept, "chat\x00x-gen\x002"))
	f.Add([]byte("\x00\x00\x00\x05\x09\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		br := bufio.NewReader(bytes.NewReader(raw))
		for {
			typ, _, p, err := ReadFrame(br, hdr)
			if err != nil {
				return
			}
			if len(p) > len(raw) {
				t.Fatalf("a %d-byte frame from %d bytes", len(p), len(raw))
			}
			h := http.Header{}
			switch typ {
			case FrameStart:
				status, ok := ParseStart(p, h)
				if !ok {
					continue
				}
				if status < 200 || status > 999 {
					t.Fatalf("status %d accepted", status)
				}
			case FrameAccept:
				sub, ok := ParseAccept(p, h)
				if ok && !ValidHeaderValue([]byte(sub)) {
					t.Fatalf("subprotocol %q accepted", sub)
				}
				if !ok {
					continue
				}
			default:
				continue
			}
			for k, vs := range h {
				if !ValidHeaderName([]byte(k)) {
					t.Fatalf("header name %q accepted", k)
				}
				for _, v := range vs {
					if !ValidHeaderValue([]byte(v)) {
						t.Fatalf("header value %q accepted", v)
					}
				}
			}
		}
	})
}
