package tests

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// callLogApp appends "METHOD PATH_INFO body" to $CALL_LOG for every call.
const callLogApp = `
import os
def application(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else b""
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write("%s %s %r\n" % (environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"called"]
`

// The smuggling reproductions, through the real binary and a real
// Python worker: each must be answered as intended, and the app must be
// called exactly as intended, never with a smuggled request.
func TestSmugglingThroughRealWorker(t *testing.T) {
	callLog := filepath.Join(t.TempDir(), "calls")
	b := startBerth(t, berthOpts{
		config: "workers: {count: 1}\nproxy: {access_log: off}\n",
		env:    []string{"CALL_LOG=" + callLog},
		app:    map[string]string{"wsgi.py": callLogApp},
	})
	cases := []struct {
		name     string
		raw      string
		statuses []int
		calls    string
	}{
		{"CL.TE", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /environ HTTP/1.1\r\nHost: x\r\n\r\n",
			[]int{400}, ""},
		{"HTTP/1.0 chunked", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			[]int{400}, ""},
		{"HTTP/1.0 keep-alive CL and TE", "POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /environ HTTP/1.1\r\nHost: x\r\n\r\n",
			[]int{400}, ""},
		{"asterisk on GET", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"authority-form", "GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", []int{200}, ""},
		{"chunked, then a pipelined GET", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]int{200, 200}, "POST /echo b'hello'\nGET /next b''\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(callLog)
			statuses := rawExchange(t, b.addr, tc.raw)
			if fmt.Sprint(statuses) != fmt.Sprint(tc.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tc.statuses)
			}
			got, _ := os.ReadFile(callLog)
			if string(got) != tc.calls {
				t.Errorf("the app was called with %q, want %q", got, tc.calls)
			}
		})
	}
}

// rawExchange writes raw and reads responses until the connection closes.
func rawExchange(t *testing.T, addr, raw string) []int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var statuses []int
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return statuses
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no answer and no close within 10s after %v", statuses)
			}
			return statuses
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.Close {
			return statuses
		}
	}
}
