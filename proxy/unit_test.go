package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-dev/berth/proxy/uwsgi"

	"github.com/berth-dev/berth/control"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, out string
		ok      bool
	}{
		{"", "/", true},
		{"/", "/", true},
		{"/a/b", "/a/b", true},
		{"/a/b/", "/a/b/", true},
		{"//a///b", "/a/b", true},
		{"/a/./b", "/a/b", true},
		{"/a/.", "/a/", true},
		{"/a/b/..", "/a/", true},
		{"/a/b/../c", "/a/c", true},
		{"/a/../../b", "", false},
		{"/..", "", false},
		{"/.hidden/x", "/.hidden/x", true},
		{"/a/..b", "/a/..b", true},
		{"/a/b..", "/a/b..", true},
		{"*", "*", true},
		{"relative", "", false},
	}
	for _, tc := range tests {
		out, ok := normalizePath(tc.in)
		if ok != tc.ok || (ok && out != tc.out) {
			t.Errorf("normalizePath(%q) = %q, %v; want %q, %v", tc.in, out, ok, tc.out, tc.ok)
		}
	}
}

func TestHostOnly(t *testing.T) {
	for in, want := range map[string]string{
		"": "", "example.com": "example.com", "example.com:8080": "example.com",
		"[::1]:80": "[::1]", "[::1]": "[::1]", "1.2.3.4:5": "1.2.3.4",
	} {
		if got := hostOnly(in); got != want {
			t.Errorf("hostOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStaticMatch(t *testing.T) {
	st, err := compile(control.Proxy{Static: []control.Static{
		{URL: "/static/", Dir: "/srv/static"},
		{URL: "/static/img/", Dir: "/srv/img"},
		{URL: "/media", Dir: "/srv/media"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, dir, rel string }{
		{"/static/a.css", "/srv/static", "a.css"},
		{"/static/img/x.png", "/srv/img", "x.png"},
		{"/media/v.mp4", "/srv/media", "/v.mp4"},
		{"/media", "/srv/media", ""},
		{"/mediax", "", ""},
		{"/static", "", ""},
		{"/app", "", ""},
	}
	for _, tc := range tests {
		m, rel := st.match(tc.path)
		dir := ""
		if m != nil {
			dir = m.dir
		}
		if dir != tc.dir || rel != tc.rel {
			t.Errorf("match(%q) = %q %q, want %q %q", tc.path, dir, rel, tc.dir, tc.rel)
		}
	}
	for _, bad := range []control.Proxy{
		{Static: []control.Static{{URL: "static/", Dir: "/x"}}},
		{Static: []control.Static{{URL: "/s/", Dir: ""}}},
		{AccessLog: "verbose"},
		{TrustedProxies: []string{"10.0.0.0/33"}},
		{QueueSize: -1},
	} {
		if _, err := compile(bad); err == nil {
			t.Errorf("compile(%+v) accepted", bad)
		}
	}
}

// The packet is what readUwsgi (the fake worker's parser) reads back, and
// the size header is right.
func TestAppendPacket(t *testing.T) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(
		"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\nUser-Agent: ua\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	in := &reqInfo{RemoteAddr: "1.2.3.4", RemotePort: "5", Scheme: "https", PathInfo: "/x", ServerName: "h", ServerPort: "443"}
	pkt, err := uwsgi.AppendPacket(nil, r, in, false)
	if err != nil {
		t.Fatal(err)
	}
	req, err := readUwsgi(bufio.NewReader(bytes.NewReader(pkt)))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"HTTP_X_A": "1, 2", "HTTP_COOKIE": "a=1; b=2", "HTTPS": "on", "REQUEST_SCHEME": "https",
		"HTTP_USER_AGENT": "ua", "QUERY_STRING": "q=1", "HTTP_HOST": "h", "SERVER_PORT": "443",
	} {
		if req.vars[k] != want {
			t.Errorf("%s = %q, want %q", k, req.vars[k], want)
		}
	}
	// Vars past 64 KiB are refused, not truncated into a corrupt packet.
	r.Header.Set("X-Huge", strings.Repeat("a", 40000))
	r.Header.Set("X-Huge2", strings.Repeat("b", 40000))
	if _, err := uwsgi.AppendPacket(nil, r, in, false); err != uwsgi.ErrVarsTooLarge {
		t.Errorf("oversized vars: %v", err)
	}
}

func TestRealIP(t *testing.T) {
	st, _ := compile(control.Proxy{TrustedProxies: []string{"10.0.0.0/8", "::1"}})
	tests := []struct {
		vals []string
		want string
		ok   bool
	}{
		{[]string{"1.1.1.1"}, "1.1.1.1", true},
		{[]string{"1.1.1.1, 10.0.0.1"}, "1.1.1.1", true},
		{[]string{"9.9.9.9", "1.1.1.1, 10.0.0.1"}, "1.1.1.1", true}, // several header lines: the last is nearest
		{[]string{"10.0.0.2", "10.0.0.1"}, "10.0.0.2", true},
		{[]string{"1.1.1.1:8080"}, "1.1.1.1", true},
		{[]string{"x, 10.0.0.1"}, "", false},
		{[]string{" , "}, "", false},
	}
	for _, tc := range tests {
		got, ok := realIP(st, tc.vals)
		if got != tc.want || ok != tc.ok {
			t.Errorf("realIP(%q) = %q %v, want %q %v", tc.vals, got, ok, tc.want, tc.ok)
		}
	}
}

func TestReadHead(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		method string
		want   respHead
		hdr    http.Header // nil: not checked
		bad    bool        // a malformed head (502)
		ioErr  bool
	}{
		{name: "hop-by-hop fields dropped",
			raw: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: x\r\nTe: x\r\nTrailer: x\r\n" +
				"Upgrade: x\r\nProxy-Connection: x\r\nX-Accel-Buffering: yes\r\nX-Keep: yes\r\nContent-Length: 5\r\n\r\n",
			want: respHead{status: 200, length: 5},
			hdr:  http.Header{"X-Keep": {"yes"}, "Content-Length": {"5"}, "Content-Type": nil}},
		{name: "repeated fields and canonical names",
			raw:  "HTTP/1.1 201 Created\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n",
			want: respHead{status: 201, length: 0},
			hdr:  http.Header{"Set-Cookie": {"a=1", "b=2"}, "Content-Type": {"text/html"}, "Content-Length": {"0"}}},
		{name: "no reason phrase", raw: "HTTP/1.1 204\r\n\r\n", want: respHead{status: 204, length: -1, noBody: true}},
		{name: "HEAD has no body", raw: "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", method: "HEAD", want: respHead{status: 200, length: 9, noBody: true}},
		{name: "close-delimited", raw: "HTTP/1.1 200 OK\r\n\r\n", want: respHead{status: 200, length: -1, close: true}},
		{name: "HTTP/1.0 closes", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", want: respHead{status: 200, length: 1, close: true}},
		{name: "HTTP/1.0 keep-alive", raw: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n", want: respHead{status: 200, length: 1}},
		{name: "connection close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", want: respHead{status: 200, length: 1, close: true}},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", want: respHead{status: 200, length: -1, chunked: true}},
		{name: "chunked and length: chunked, closed", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: respHead{status: 200, length: -1, chunked: true, close: true}, hdr: http.Header{"Content-Type": nil}},
		{name: "interim 100 skipped", raw: "HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
			want: respHead{status: 200, length: 0}, hdr: http.Header{"Content-Length": {"0"}, "Content-Type": nil}},
		{name: "event stream", raw: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\r\n", want: respHead{status: 200, length: -1, close: true, stream: true}},
		{name: "X-Accel-Buffering no", raw: "HTTP/1.1 200 OK\r\nX-Accel-Buffering: No\r\nContent-Length: 2\r\n\r\n", want: respHead{status: 200, length: 2, stream: true}},
		{name: "bare LF line ends", raw: "HTTP/1.1 200 OK\nContent-Length: 2\n\n", want: respHead{status: 200, length: 2}},
		{name: "lengths differ", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", bad: true},
		{name: "same length twice", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", want: respHead{status: 200, length: 2}},
		{name: "length with sign", raw: "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n", bad: true},
		{name: "other transfer coding", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", bad: true},
		{name: "obs-fold", raw: "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n", bad: true},
		{name: "CR in a value", raw: "HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: x\r\n\r\n", bad: true},
		{name: "space in a name", raw: "HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n", bad: true},
		{name: "no colon", raw: "HTTP/1.1 200 OK\r\nXA\r\n\r\n", bad: true},
		{name: "status not a number", raw: "HTTP/1.1 2x0 OK\r\n\r\n", bad: true},
		{name: "status below 100", raw: "HTTP/1.1 099 Odd\r\n\r\n", bad: true},
		{name: "not HTTP", raw: "ICY 200 OK\r\n\r\n", bad: true},
		{name: "HTTP/2 status line", raw: "HTTP/2 200\r\n\r\n", bad: true},
		{name: "truncated head", raw: "HTTP/1.1 200 OK\r\nContent-Len", ioErr: true},
		{name: "nothing", raw: "", ioErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			var scratch []byte
			method := tc.method
			if method == "" {
				method = "GET"
			}
			hd, err := readHead(bufio.NewReader(strings.NewReader(tc.raw)), h, method, &scratch)
			var br *badResponse
			switch {
			case tc.bad:
				if !errors.As(err, &br) {
					t.Fatalf("err %v, want a bad response", err)
				}
				return
			case tc.ioErr:
				if err == nil || errors.As(err, &br) {
					t.Fatalf("err %v, want an I/O error", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if hd != tc.want {
				t.Errorf("head %+v, want %+v", hd, tc.want)
			}
			if tc.hdr != nil && !reflect.DeepEqual(h, tc.hdr) {
				t.Errorf("header %#v, want %#v", h, tc.hdr)
			}
		})
	}
}
