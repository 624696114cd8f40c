package proxy

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/berth-dev/berth/proxy/conformance"
)

// requestLog is a fake worker handler that records each request it gets as
// "METHOD REQUEST_URI body" and answers 200 with the body.
type requestLog struct {
	mu  sync.Mutex
	got []string
}

func (rc *requestLog) handle(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	rc.mu.Lock()
	rc.got = append(rc.got, req.vars["REQUEST_METHOD"]+" "+req.vars["REQUEST_URI"]+" "+string(req.body))
	rc.mu.Unlock()
	respond(c, 200, nil, req.body)
	return true
}

func (rc *requestLog) take() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := rc.got
	rc.got = nil
	return out
}

// TestConformance replays the HTTP/1.1 front's conformance corpus,
// testdata/conformance.txt (its format: package conformance), against the
// proxy in front of a fake worker. The corpus is written from RFC 9112
// (message framing, §6; chunked coding, §7; request line and targets, §3;
// field syntax, §5) and the published request-smuggling families (CL.TE,
// TE.CL, TE.TE obfuscation); where the RFC leaves a choice, the expected
// outcome is nginx's, and tests/conformance_nginx_test.go checks each case's
// nginx: line against real nginx.
func TestConformance(t *testing.T) {
	cases, err := conformance.Load("testdata/conformance.txt")
	if err != nil {
		t.Fatal(err)
	}
	rc := &requestLog{}
	fw := startFake(t, "w1", 4, rc.handle)
	cfg := defaultConfig()
	cfg.MaxBodySize = 1 << 20
	h := startProxy(t, cfg, fw)
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			rc.take()
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := tc.Berth
			statuses, closed, err := conformance.Replay(c, tc.Raw, len(want.Statuses))
			if err != nil {
				t.Fatalf("testdata/conformance.txt:%d: %q: %v (got statuses %v)", tc.Line, tc.Raw, err, statuses)
			}
			if fmt.Sprint(statuses) != fmt.Sprint(want.Statuses) {
				t.Errorf("testdata/conformance.txt:%d: statuses %v, want %v", tc.Line, statuses, want.Statuses)
			}
			if closed != want.Closed {
				t.Errorf("testdata/conformance.txt:%d: connection closed after the responses: %v, want %v", tc.Line, closed, want.Closed)
			}
			if got := conformance.Strip(rc.take()); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want.Served) {
				t.Errorf("testdata/conformance.txt:%d: the worker got %q, want %q", tc.Line, got, want.Served)
			}
		})
	}
}
