package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy/http1"

	"github.com/berth-dev/berth/control"
)

// FuzzWorkerResponse has a fake worker answer a client's request with the
// fuzzed bytes, and checks what the proxy makes of them (exchange reads
// them with http.ReadResponse). For any bytes, whether the worker then
// closes the connection or keeps it open (a kept-alive worker), and for
// GET and HEAD:
//
//   - the proxy does not panic, and the client reads one well-formed
//     response: the worker's status and body when its bytes are one
//     complete response (after any 1xx), else 502 (504 when the proxy had
//     to wait for bytes that never came); a streamed response
//     (X-Accel-Buffering: no, text/event-stream) whose body breaks is cut;
//   - nothing beyond that response reaches the client: bytes the worker
//     sent after its framed response (a second response, a Content-Length
//     it overran) are never relayed, now or as the answer to the next
//     request;
//   - the next request on the same client connection gets its own answer.
func FuzzWorkerResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil the end",
		"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 304 Not Modified\r\n\r\n",
		// A Content-Length the body overruns, and a second response in the same bytes.
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnext-ok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
		// Content-Length shorter than promised, conflicting, signed; chunked and Content-Length.
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n X-Folded: 2\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 999 High\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
		"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n",
		"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add([]byte(s), false, false)
		f.Add([]byte(s), true, false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), true, true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnext-ok"), true, true)

	// One proxy per fuzzing process; each input gets a fresh worker, so a
	// worker the proxy gave up on (a timeout takes it out of routing) or a
	// connection it pooled never carries over to the next input.
	cfg := defaultConfig()
	// The proxy waits this long for bytes a kept-open worker never sends:
	// short, as each such input costs it, but long enough that a loaded
	// machine does not turn a complete answer into a 504.
	cfg.Timeout = control.Duration(500 * time.Millisecond)
	h := startProxy(f, cfg)
	var execs atomic.Int64

	f.Fuzz(func(t *testing.T, raw []byte, keepOpen, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		want := predictRelay(raw, method, keepOpen)
		fw := startFake(t, fmt.Sprintf("w%d", execs.Add(1)), 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
			if req.vars["PATH_INFO"] == "/next" {
				respond(c, 200, nil, []byte("next-ok"))
				return true
			}
			c.Write(raw)
			return keepOpen
		})
		if err := h.srv.SetWorkers([]control.Worker{fw.worker()}); err != nil {
			t.Fatal(err)
		}
		logged := len(h.elog.String())
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)

		io.WriteString(c, method+" /fuzz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("the client got no well-formed response: %v\nworker sent %q\nproxy log:\n%s", err, raw, h.elog.String()[logged:])
		}
		body, berr := io.ReadAll(resp.Body)
		if log := h.elog.String()[logged:]; strings.Contains(log, "panic") {
			t.Fatalf("the proxy panicked on %q:\n%s", raw, log)
		}
		switch {
		case want.complete:
			wantBody := want.body
			if head || !(want.status >= 200 && want.status != http.StatusNoContent && want.status != http.StatusNotModified) {
				wantBody = nil
			}
			if resp.StatusCode != want.status || berr != nil || !bytes.Equal(body, wantBody) {
				t.Fatalf("worker sent %q (a complete %d response, body %q)\nclient got %d, body %q (%v)",
					raw, want.status, wantBody, resp.StatusCode, body, berr)
			}
		case want.streamHead:
			// The head went out before the body broke: the client sees the
			// worker's status and a body that ends with the connection.
			if resp.StatusCode != want.status || berr == nil && !resp.Close {
				t.Fatalf("worker sent %q (a streamed %d response that breaks)\nclient got %d, body %q (%v), close %v",
					raw, want.status, resp.StatusCode, body, berr, resp.Close)
			}
		default:
			if resp.StatusCode != http.StatusBadGateway && (resp.StatusCode != http.StatusGatewayTimeout || !keepOpen) {
				t.Fatalf("worker sent %q (not one complete response)\nclient got %d, body %q; want 502 (or 504 when the worker kept the connection open)",
					raw, resp.StatusCode, body)
			}
		}
		if berr != nil || resp.Close {
			return // the connection ends here; nothing more can be relayed on it
		}
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			t.Fatalf("worker sent %q; the client got %q after the response", raw, b)
		}

		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		next, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("worker sent %q; the next request on the connection got no response: %v", raw, err)
		}
		nb, err := io.ReadAll(next.Body)
		switch {
		case err == nil && next.StatusCode == 200 && string(nb) == "next-ok":
		case resp.StatusCode == http.StatusGatewayTimeout && next.StatusCode == http.StatusServiceUnavailable:
			// A worker that timed out is out of routing until the supervisor
			// replaces it.
		default:
			t.Fatalf("worker sent %q; the next request got %d %q (%v), want 200 \"next-ok\"", raw, next.StatusCode, nb, err)
		}
	})
}

// relayWant is what the client must get for a worker's bytes.
type relayWant struct {
	parsed     bool // a final response head (not 101) was read: status is its code
	complete   bool // one complete response: relayed with this status and body
	status     int
	body       []byte
	streamHead bool // a streamed response whose body breaks: its head is relayed, then the cut
}

// predictRelay reads the worker's bytes as the proxy must: 1xx interim
// answers skipped, 101 refused, framing as RFC 9112 (by net/http's own
// reader, the reference here); a kept-open worker never ends a
// close-delimited body.
//
// The proxy's own head reader (readHead) is stricter than net/http: a head
// it refuses (obs-fold, control characters, conflicting lengths, a status
// below 100) must be a 502, never relayed.
func predictRelay(raw []byte, method string, keepOpen bool) relayWant {
	var scratch []byte
	var malformed *http1.BadResponse
	if _, err := http1.ReadHead(bufio.NewReader(bytes.NewReader(raw)), http.Header{}, method, &scratch); errors.As(err, &malformed) {
		return relayWant{}
	}
	req := &http.Request{Method: method}
	br := bufio.NewReader(bytes.NewReader(raw))
	resp, err := http.ReadResponse(br, req)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(br, req)
	}
	if err != nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return relayWant{}
	}
	body, err := io.ReadAll(resp.Body)
	closeDelimited := resp.Body != http.NoBody && resp.ContentLength < 0 && len(resp.TransferEncoding) == 0
	if err != nil || keepOpen && closeDelimited {
		return relayWant{parsed: true, status: resp.StatusCode, streamHead: relayedUnbuffered(resp.Header)}
	}
	return relayWant{parsed: true, complete: true, status: resp.StatusCode, body: body}
}

// TestWorkerOverrunIsNotRelayed: bytes a kept-alive worker sends past its
// Content-Length are never relayed, not even as the answer to the next
// request. A short overrun is already buffered when the exchange decides to
// pool the connection; one after a body larger than the upstream read
// buffer is still in the kernel then, and is found by upConn.unsolicited
// before the connection is reused. berth_worker.py never overruns (it clips
// to the app's Content-Length), so only a foreign or broken worker can do
// this.
func TestWorkerOverrunIsNotRelayed(t *testing.T) {
	for _, size := range []int{5, upstreamReadBuf, 10 * upstreamReadBuf} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			raw := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
				size, strings.Repeat("a", size))
			fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
				if req.vars["PATH_INFO"] == "/next" {
					respond(c, 200, nil, []byte("next-ok"))
					return true
				}
				c.Write([]byte(raw))
				return true
			})
			h := startProxy(t, defaultConfig(), fw)
			if resp, body := h.get("/overrun"); resp.StatusCode != 200 || len(body) != size {
				t.Fatalf("first request: %d, %d bytes; want 200, %d bytes", resp.StatusCode, len(body), size)
			}
			if resp, body := h.get("/next"); resp.StatusCode != 200 || body != "next-ok" {
				t.Fatalf("next request: %d %q, want 200 \"next-ok\"", resp.StatusCode, body)
			}
		})
	}
}

// relayedUnbuffered says whether the proxy streams a response with this
// header (X-Accel-Buffering: no, or text/event-stream).
func relayedUnbuffered(h http.Header) bool {
	if strings.EqualFold(strings.TrimSpace(h.Get("X-Accel-Buffering")), "no") {
		return true
	}
	ct := h.Get("Content-Type")
	return len(ct) >= len("text/event-stream") && strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream")
}
