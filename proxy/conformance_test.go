package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// requestLog is a fake worker handler that records each request it gets as
// "METHOD REQUEST_URI body" and answers 200 with the body.
type requestLog struct {
	mu   sync.Mutex
	got  []string
	host []string
}

func (rc *requestLog) handle(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	rc.mu.Lock()
	rc.got = append(rc.got, req.vars["REQUEST_METHOD"]+" "+req.vars["REQUEST_URI"]+" "+string(req.body))
	rc.host = append(rc.host, req.vars["HTTP_HOST"])
	rc.mu.Unlock()
	respond(c, 200, nil, req.body)
	return true
}

func (rc *requestLog) take() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := rc.got
	rc.got, rc.host = nil, nil
	return out
}

// conformance is one case of the HTTP/1.1 front's conformance suite: raw
// request bytes and what must follow.
type conformance struct {
	name string
	raw  string
	// statuses are the final (non-1xx) responses, in order.
	statuses []int
	// closed: the proxy closes the connection after them. Otherwise a probe
	// request sent on the same connection must be answered: the framing
	// stayed in step.
	closed bool
	// served is what the worker received, "METHOD URI body", in order.
	served []string
}

const host = "Host: x\r\n"

// conformanceCases are written from RFC 9112 (message framing, §6; chunked
// coding, §7; request line and targets, §3; field syntax, §5) and the
// published request-smuggling families (CL.TE, TE.CL, TE.TE obfuscation).
// Where the RFC leaves a choice, the expected outcome is nginx's.
var conformanceCases = []conformance{
	// Plain requests and pipelining.
	{name: "get", raw: "GET /a?b=1 HTTP/1.1\r\n" + host + "\r\n", statuses: []int{200}, served: []string{"GET /a?b=1 "}},
	{name: "post content-length", raw: "POST /echo HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", statuses: []int{200}, served: []string{"POST /echo hello"}},
	{name: "pipelined", raw: "GET /1 HTTP/1.1\r\n" + host + "\r\nPOST /2 HTTP/1.1\r\n" + host + "Content-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{200, 200, 200}, served: []string{"GET /1 ", "POST /2 abc", "GET /3 "}},
	{name: "http/1.0 closes", raw: "GET / HTTP/1.0\r\n\r\n", statuses: []int{200}, closed: true, served: []string{"GET / "}},
	{name: "connection close", raw: "GET / HTTP/1.1\r\n" + host + "Connection: close\r\n\r\nGET /never HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{200}, closed: true, served: []string{"GET / "}},
	{name: "bare LF line ends", raw: "GET /lf HTTP/1.1\nHost: x\n\n", statuses: []int{200}, served: []string{"GET /lf "}},
	{name: "empty lines before the request line", raw: "\r\n\r\nGET /x HTTP/1.1\r\n" + host + "\r\n", statuses: []int{200}, served: []string{"GET /x "}},

	// CL.TE and TE.CL: both framing fields (RFC 9112 §6.3 ¶3: reject, or
	// chunked and close; nginx rejects).
	{name: "CL.TE", raw: "POST /echo HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /environ HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{400}, closed: true},
	{name: "TE.CL", raw: "POST /echo HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
		statuses: []int{400}, closed: true},
	{name: "CL 0 with TE", raw: "GET / HTTP/1.1\r\n" + host + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "CL.TE after a good request", raw: "GET /ok HTTP/1.1\r\n" + host + "\r\nPOST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{200, 400}, closed: true, served: []string{"GET /ok "}},

	// Transfer-Encoding on HTTP/1.0 (net/http would ignore it; nginx: 400).
	{name: "http/1.0 chunked", raw: "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "http/1.0 keep-alive CL and TE", raw: "POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabcGET /smug HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{400}, closed: true},

	// TE.TE: obfuscated Transfer-Encoding.
	{name: "TE chunked, identity", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", statuses: []int{501}, closed: true},
	{name: "TE identity, chunked", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", statuses: []int{501}, closed: true},
	{name: "TE xchunked", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", statuses: []int{501}, closed: true},
	{name: "TE chunked twice", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE chunked then x", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE space before colon", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE tab before value", raw: "POST /t HTTP/1.1\r\n" + host + "Transfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /t abc"}},
	{name: "TE trailing space", raw: "POST /t HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /t abc"}},
	{name: "TE upper case", raw: "POST /t HTTP/1.1\r\n" + host + "transfer-encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /t abc"}},
	{name: "TE vertical tab", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", statuses: []int{501}, closed: true},
	{name: "TE obs-fold", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE hidden by obs-fold", raw: "POST / HTTP/1.1\r\n" + host + "X: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE with non-ASCII fold", raw: "POST /u HTTP/1.1\r\n" + host + "Transfer-Encodin\xc5\xbf: chunked\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "TE name with underscore", raw: "POST /u HTTP/1.1\r\n" + host + "Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
		statuses: []int{200, 400}, closed: true, served: []string{"POST /u "}},

	// Content-Length (RFC 9112 §6.3 ¶5; nginx refuses a repeated one).
	{name: "CL twice same", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL twice different", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", statuses: []int{400}, closed: true},
	{name: "CL list", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 3, 3\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL plus sign", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: +3\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL negative", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL hex", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x3\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL inner space", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 1 2\r\n\r\nabcdefghijkl", statuses: []int{400}, closed: true},
	{name: "CL overflow", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999\r\n\r\nabc", statuses: []int{400}, closed: true},
	{name: "CL empty", raw: "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "CL with spaces around", raw: "POST /s HTTP/1.1\r\n" + host + "Content-Length:  3 \r\n\r\nabc", statuses: []int{200}, served: []string{"POST /s abc"}},
	{name: "CL leading zeros", raw: "POST /z HTTP/1.1\r\n" + host + "Content-Length: 003\r\n\r\nabc", statuses: []int{200}, served: []string{"POST /z abc"}},
	{name: "CL on GET", raw: "GET /g HTTP/1.1\r\n" + host + "Content-Length: 2\r\n\r\nhiGET /h HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{200, 200}, served: []string{"GET /g hi", "GET /h "}},

	// Field and request-line syntax (RFC 9112 §2.2, §3, §5).
	{name: "bare CR in a field", raw: "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "NUL in a field value", raw: "GET / HTTP/1.1\r\n" + host + "X: a\x00b\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "control char in a field value", raw: "GET / HTTP/1.1\r\n" + host + "X: a\x01b\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "NUL in the request line", raw: "GET /\x00 HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}, closed: true},
	{name: "space in a field name", raw: "GET / HTTP/1.1\r\n" + host + "Foo bar: y\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "empty field name", raw: "GET / HTTP/1.1\r\n" + host + ": y\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "field without colon", raw: "GET / HTTP/1.1\r\n" + host + "Foo\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "obs-fold", raw: "GET / HTTP/1.1\r\n" + host + "X-A: a\r\n b\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "missing Host", raw: "GET / HTTP/1.1\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "two Host fields", raw: "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "http/1.0 without Host", raw: "GET /ten HTTP/1.0\r\n\r\n", statuses: []int{200}, closed: true, served: []string{"GET /ten "}},
	{name: "double space in request line", raw: "GET  / HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}, closed: true},
	{name: "space after version", raw: "GET / HTTP/1.1 \r\n" + host + "\r\n", statuses: []int{400}, closed: true},
	{name: "lower-case version", raw: "GET / http/1.1\r\n" + host + "\r\n", statuses: []int{400}, closed: true},
	{name: "HTTP/0.9", raw: "GET /\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "HTTP/2.0 in HTTP/1 syntax", raw: "GET / HTTP/2.0\r\n" + host + "\r\n", statuses: []int{505}, closed: true},
	{name: "HTTP/1.2 is HTTP/1.1", raw: "GET /v HTTP/1.2\r\n" + host + "\r\n", statuses: []int{200}, served: []string{"GET /v "}},
	{name: "head too large", raw: "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 40<<10) + "\r\n\r\n", statuses: []int{431}, closed: true},

	// Chunked coding (RFC 9112 §7.1).
	{name: "chunked", raw: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /c hello world"}},
	{name: "chunk extension", raw: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /c hello"}},
	{name: "chunk extension quoted with ;", raw: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /c hello"}},
	{name: "chunk size upper-case hex", raw: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /c 0123456789"}},
	{name: "chunk size blank before CRLF", raw: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", statuses: []int{200}, served: []string{"POST /c hello"}},
	{name: "chunk size negative", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk size 0x", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk size leading space", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk size overflow 17 digits", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk size 2^64-1", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk size empty", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk lines with bare LF", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", statuses: []int{400}, closed: true},
	{name: "chunk data longer than its size", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "chunk extension with NUL", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a\x00\r\nhello\r\n0\r\n\r\n", statuses: []int{400}, closed: true},
	{name: "trailer", raw: "POST /t HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", statuses: []int{200}, served: []string{"POST /t abc"}},
	{name: "trailer with bare LF", raw: "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\n\n", statuses: []int{400}, closed: true},
	{name: "pipelined after chunked", raw: "POST /p HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /second HTTP/1.1\r\n" + host + "\r\n",
		statuses: []int{200, 200}, served: []string{"POST /p ", "GET /second "}},
	{name: "chunked body hides a request", raw: "POST /p HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n21\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
		statuses: []int{200}, served: []string{"POST /p GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"}},

	// Expect (RFC 9110 §10.1.1).
	{name: "expect 100-continue with body", raw: "POST /e HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok", statuses: []int{200}, served: []string{"POST /e ok"}},
	{name: "expect 100-continue without body", raw: "GET /e HTTP/1.1\r\n" + host + "Expect: 100-continue\r\n\r\n", statuses: []int{200}, served: []string{"GET /e "}},
	{name: "unknown expectation", raw: "POST / HTTP/1.1\r\n" + host + "Expect: magic\r\nContent-Length: 2\r\n\r\nok", statuses: []int{417}, closed: true},

	// Request targets (RFC 9112 §3.2).
	{name: "asterisk on GET", raw: "GET * HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}},
	{name: "OPTIONS *", raw: "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", statuses: []int{200}},
	{name: "authority-form on GET", raw: "GET example.com:443 HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}},
	{name: "CONNECT", raw: "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", statuses: []int{405}},
	{name: "absolute-form", raw: "GET http://a.example/p?q=1 HTTP/1.1\r\n" + host + "\r\n", statuses: []int{200}, served: []string{"GET /p?q=1 "}},
	{name: "absolute-form without path", raw: "GET http://a.example HTTP/1.1\r\n" + host + "\r\n", statuses: []int{200}, served: []string{"GET / "}},
	{name: "absolute-form other scheme", raw: "GET ftp://a.example/p HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}},
	{name: "path above the root", raw: "GET /../etc/passwd HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}},
	{name: "relative path", raw: "GET a/b HTTP/1.1\r\n" + host + "\r\n", statuses: []int{400}, closed: true},
}

func TestConformance(t *testing.T) {
	rc := &requestLog{}
	fw := startFake(t, "w1", 4, rc.handle)
	cfg := defaultConfig()
	cfg.MaxBodySize = 1 << 20
	h := startProxy(t, cfg, fw)
	for _, tc := range conformanceCases {
		t.Run(tc.name, func(t *testing.T) {
			rc.take()
			statuses, closed, err := exchangeRaw(h.addr, tc.raw, len(tc.statuses))
			if err != nil {
				t.Fatalf("%q: %v (got statuses %v)", tc.raw, err, statuses)
			}
			if fmt.Sprint(statuses) != fmt.Sprint(tc.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tc.statuses)
			}
			if closed != tc.closed {
				t.Errorf("connection closed after the responses: %v, want %v", closed, tc.closed)
			}
			got := rc.take()
			if !closed && len(got) > 0 && strings.HasPrefix(got[len(got)-1], "GET /probe ") {
				got = got[:len(got)-1]
			}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.served) {
				t.Errorf("the worker got %q, want %q", got, tc.served)
			}
		})
	}
}

// exchangeRaw writes raw on a new connection and reads want final
// responses. Then it finds out whether the connection was closed: it
// sends a probe request, which an open connection answers 200.
func exchangeRaw(addr, raw string, want int) (statuses []int, closed bool, err error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, false, err
	}
	br := bufio.NewReader(c)
	for len(statuses) < want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses, false, fmt.Errorf("reading response %d: %w", len(statuses)+1, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 {
			statuses = append(statuses, resp.StatusCode)
		}
	}
	// A closed connection refuses the probe (write error, or EOF before
	// any byte); an open one answers it.
	if _, err := io.WriteString(c, "GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return statuses, true, nil
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return statuses, true, nil
		}
		return statuses, false, fmt.Errorf("reading the probe's response: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return statuses, false, fmt.Errorf("probe answered %d: the framing is out of step", resp.StatusCode)
	}
	return statuses, false, nil
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}
