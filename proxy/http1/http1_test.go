package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestReadHead(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		method string
		want   Head
		hdr    http.Header // nil: not checked
		bad    bool        // a malformed head (502)
		ioErr  bool
	}{
		{name: "hop-by-hop fields dropped",
			raw: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: x\r\nTe: x\r\nTrailer: x\r\n" +
				"Upgrade: x\r\nProxy-Connection: x\r\nX-Accel-Buffering: yes\r\nX-Keep: yes\r\nContent-Length: 5\r\n\r\n",
			want: Head{Status: 200, Length: 5},
			hdr:  http.Header{"X-Keep": {"yes"}, "Content-Length": {"5"}, "Content-Type": nil}},
		{name: "repeated fields and canonical names",
			raw:  "HTTP/1.1 201 Created\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n",
			want: Head{Status: 201, Length: 0},
			hdr:  http.Header{"Set-Cookie": {"a=1", "b=2"}, "Content-Type": {"text/html"}, "Content-Length": {"0"}}},
		{name: "no reason phrase", raw: "HTTP/1.1 204\r\n\r\n", want: Head{Status: 204, Length: -1, NoBody: true}},
		{name: "HEAD has no body", raw: "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", method: "HEAD", want: Head{Status: 200, Length: 9, NoBody: true}},
		{name: "close-delimited", raw: "HTTP/1.1 200 OK\r\n\r\n", want: Head{Status: 200, Length: -1, Close: true}},
		{name: "HTTP/1.0 closes", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", want: Head{Status: 200, Length: 1, Close: true}},
		{name: "HTTP/1.0 keep-alive", raw: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n", want: Head{Status: 200, Length: 1}},
		{name: "connection close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", want: Head{Status: 200, Length: 1, Close: true}},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", want: Head{Status: 200, Length: -1, Chunked: true}},
		{name: "chunked and length: chunked, closed", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
			want: Head{Status: 200, Length: -1, Chunked: true, Close: true}, hdr: http.Header{"Content-Type": nil}},
		{name: "interim 100 skipped", raw: "HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
			want: Head{Status: 200, Length: 0}, hdr: http.Header{"Content-Length": {"0"}, "Content-Type": nil}},
		{name: "event stream", raw: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\r\n", want: Head{Status: 200, Length: -1, Close: true, Stream: true}},
		{name: "X-Accel-Buffering no", raw: "HTTP/1.1 200 OK\r\nX-Accel-Buffering: No\r\nContent-Length: 2\r\n\r\n", want: Head{Status: 200, Length: 2, Stream: true}},
		{name: "bare LF line ends", raw: "HTTP/1.1 200 OK\nContent-Length: 2\n\n", want: Head{Status: 200, Length: 2}},
		{name: "lengths differ", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", bad: true},
		{name: "same length twice", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", want: Head{Status: 200, Length: 2}},
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
			hd, err := ReadHead(bufio.NewReader(strings.NewReader(tc.raw)), h, method, &scratch)
			var br *BadResponse
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

// FuzzFramer holds the framer to the invariant that makes smuggling
// impossible, against an independent parser: net/http, reading only the
// bytes the framer lets through, never finds more requests in them than the
// heads the framer judged and passed (it may find fewer: it is stricter on
// what is not framing, and a last body may still be on its way).
func FuzzFramer(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b := bytes.Clone(raw)
		var fr Framer
		ok, _ := fr.Scan(b)
		br := bufio.NewReader(bytes.NewReader(b[:ok]))
		found := 0
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				break
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				break
			}
			found++
		}
		if found > fr.heads {
			t.Fatalf("net/http found %d requests in the %d bytes passed, the framer judged %d heads\n%q", found, ok, fr.heads, raw)
		}
	})
}

// FuzzResponseHead reads a worker's bytes as a response: no panic; a head
// accepted has a status the proxy may relay and only fields it may write to
// a client; its body reads to an end or an error.
func FuzzResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		br := bufio.NewReader(bytes.NewReader(raw))
		h := http.Header{}
		var scratch []byte
		hd, err := ReadHead(br, h, method, &scratch)
		if err != nil {
			return
		}
		if hd.Status < 100 || hd.Status > 999 {
			t.Fatalf("status %d accepted", hd.Status)
		}
		for k, vs := range h {
			if !validFieldName(k) {
				t.Fatalf("field name %q accepted", k)
			}
			for _, v := range vs {
				if !validFieldValue(v) {
					t.Fatalf("field value %q accepted", v)
				}
			}
		}
		var body Body
		body.Reset(br, hd)
		n, _ := io.Copy(io.Discard, &body)
		if hd.Length >= 0 && !hd.NoBody && !hd.Chunked && n > hd.Length {
			t.Fatalf("read %d body bytes past a Content-Length of %d", n, hd.Length)
		}
	})
}
