package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-dev/berth/control"
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
			status, ok := parseStart([]byte(c.payload), h)
			if ok != c.ok || status != c.status {
				t.Fatalf("parseStart = %d, %v; want %d, %v", status, ok, c.status, c.ok)
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
		sub, ok := parseAccept([]byte(c.payload), h)
		if sub != c.sub || ok != c.ok || h.Get("X-Gen") != c.header || h.Get("Sec-Websocket-Accept") != "" {
			t.Errorf("parseAccept(%q) = %q, %v, %v", c.payload, sub, ok, h)
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
	in := &reqInfo{Scheme: "https", PathInfo: "/a b/c", RemoteAddr: "10.0.0.1", RemotePort: "5555",
		ServerName: "example.com", ServerPort: "443", ContentLength: "7"}
	b, ok := appendHead(nil, flagBody, r, in)
	if !ok {
		t.Fatal("refused a clean head")
	}
	parts := strings.Split(string(b[1:]), "\x00")
	want := []string{"POST", "https", "/a%20b/c", "/a b/c", "x=1", "10.0.0.1", "5555", "example.com", "443", "1.1"}
	if b[0] != flagBody || strings.Join(parts[:10], "|") != strings.Join(want, "|") {
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
	b, _ = appendHead(nil, flagWebsocket, ws, &reqInfo{Scheme: "https", PathInfo: "/ws"})
	if strings.Split(string(b[1:]), "\x00")[1] != "wss" {
		t.Errorf("websocket over https: scheme %q, want wss", strings.Split(string(b[1:]), "\x00")[1])
	}
	if _, ok := appendHead(nil, 0, httptest.NewRequest("GET", "/", nil), &reqInfo{PathInfo: "/a\x00b"}); ok {
		t.Error("a NUL in the decoded path was let through")
	}
}

func TestMountRoutes(t *testing.T) {
	st, err := compile(control.Proxy{Mounts: []control.Mount{
		{Pool: "rt", URLs: []string{"/ws", "/events/"}},
		{Pool: "deep", URLs: []string{"/events/admin/"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/": "", "/ws": "rt", "/ws/": "rt", "/ws/x": "rt", "/wsx": "", "/events": "", "/events/": "rt",
		"/events/1": "rt", "/events/admin/x": "deep", "/static/ws": "",
	} {
		if got := st.poolFor(path); got != want {
			t.Errorf("route(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestIsWebsocket(t *testing.T) {
	for _, c := range []struct {
		method, upgrade, connection string
		want                        bool
	}{
		{"GET", "websocket", "Upgrade", true},
		{"GET", "WebSocket", "keep-alive, upgrade", true},
		{"POST", "websocket", "Upgrade", false},
		{"GET", "h2c", "Upgrade", false},
		{"GET", "websocket", "keep-alive", false},
	} {
		r := httptest.NewRequest(c.method, "/", nil)
		r.Header.Set("Upgrade", c.upgrade)
		r.Header.Set("Connection", c.connection)
		if got := isWebsocket(r); got != c.want {
			t.Errorf("%s Upgrade %q Connection %q: %v, want %v", c.method, c.upgrade, c.connection, got, c.want)
		}
	}
}
