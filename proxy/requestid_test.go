package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy/uwsgi"

	"github.com/berth-dev/berth/control"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestIDGenUnique(t *testing.T) {
	g1, g2 := newIDGen(), newIDGen()
	seen := map[string]bool{}
	for i := 0; i < 100000; i++ {
		id := g1.next()
		if !hexID.MatchString(id) || seen[id] {
			t.Fatalf("id %d %q: malformed or repeated", i, id)
		}
		seen[id] = true
	}
	if a, b := g1.next(), g2.next(); a[:16] == b[:16] {
		t.Errorf("two proxies share a prefix: %s %s", a, b)
	}
	if a, b := g1.next(), g1.next(); a[16:24] == b[16:24] {
		t.Errorf("consecutive ids look alike: %s %s (they show the request count)", a, b)
	}
}

// workerVars returns how often the worker saw name, and its last value.
func workerVars(fw *fakeWorker, name string) (int, string) {
	r := fw.lastReq()
	n := 0
	for _, k := range r.keys {
		if k == name {
			n++
		}
	}
	return n, r.vars[name]
}

// TestRequestID: the ID the app sees is the one in the response and the
// access log; a client's own X-Request-ID is kept only from a trusted
// proxy, and only when fit to log.
func TestRequestID(t *testing.T) {
	const incoming = "edge-7f3a.b:c/d=e_f+g@h~i"
	for _, tc := range []struct {
		name    string
		on      bool
		trusted []string
		hdr     []string // X-Request-ID header values sent
		kept    bool     // the incoming one is the request's ID
	}{
		{"generated", true, nil, nil, false},
		{"untrusted client replaced", true, nil, []string{incoming}, false},
		{"client outside the trusted ranges replaced", true, []string{"10.0.0.0/8"}, []string{incoming}, false},
		{"trusted proxy kept", true, []string{"127.0.0.0/8"}, []string{incoming}, true},
		{"trusted but with a space replaced", true, []string{"127.0.0.1"}, []string{"a b"}, false},
		{"trusted but with a quote replaced", true, []string{"127.0.0.1"}, []string{`a"b`}, false},
		{"trusted but too long replaced", true, []string{"127.0.0.1"}, []string{strings.Repeat("x", maxRequestID+1)}, false},
		{"trusted but twice replaced", true, []string{"127.0.0.1"}, []string{"one", "two"}, false},
		{"off passes the client's on", false, nil, []string{incoming}, true},
		{"off adds none", false, nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw := startFake(t, "w1", 1, hello)
			cfg := defaultConfig()
			cfg.RequestID = tc.on
			cfg.TrustedProxies = tc.trusted
			cfg.AccessLog = "$request_id $status"
			h := startProxy(t, cfg, fw)
			var hdr []string
			for _, v := range tc.hdr {
				hdr = append(hdr, "X-Request-ID", v)
			}
			hdr = append(hdr, "Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
			resp, _ := h.get("/", hdr...)
			waitFor(t, "the log line", 2*time.Second, func() bool { return strings.Contains(h.alog.String(), "\n") })
			logged := strings.TrimSuffix(h.alog.String(), " 200\n")
			n, seen := workerVars(fw, "HTTP_X_REQUEST_ID")
			sent := resp.Header.Values("X-Request-Id")

			// W3C trace context is passed through as it came, in every case.
			if _, tp := workerVars(fw, "HTTP_TRACEPARENT"); tp != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
				t.Errorf("traceparent reached the app as %q", tp)
			}
			if _, ts := workerVars(fw, "HTTP_TRACESTATE"); ts != "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE" {
				t.Errorf("tracestate reached the app as %q", ts)
			}

			if !tc.on {
				if len(sent) != 0 || logged != "-" {
					t.Errorf("request_id off: response X-Request-ID %q, logged %q", sent, logged)
				}
				want := strings.Join(tc.hdr, ", ")
				if tc.hdr == nil && n != 0 || tc.hdr != nil && (n != 1 || seen != want) {
					t.Errorf("request_id off: the app saw HTTP_X_REQUEST_ID %d times, %q; want the client's %q", n, seen, want)
				}
				return
			}
			if n != 1 {
				t.Fatalf("the app saw HTTP_X_REQUEST_ID %d times", n)
			}
			if len(sent) != 1 || sent[0] != seen || logged != seen {
				t.Errorf("app saw %q, response says %q, log says %q: want one ID", seen, sent, logged)
			}
			if tc.kept && seen != tc.hdr[0] {
				t.Errorf("the trusted proxy's ID %q was replaced by %q", tc.hdr[0], seen)
			}
			if !tc.kept && !hexID.MatchString(seen) {
				t.Errorf("ID %q is not a generated one", seen)
			}
		})
	}
}

// TestRequestIDOnEveryAnswer: responses berth makes itself (static files,
// 404, 413, 503) carry the ID too, and berth's own log lines about a
// request name it.
func TestRequestIDOnEveryAnswer(t *testing.T) {
	dir := tempDir(t)
	os.WriteFile(filepath.Join(dir, "f.txt"), []byte("static"), 0o644)
	cfg := defaultConfig()
	cfg.RequestID = true
	cfg.Static = []control.Static{{URL: "/s/", Dir: dir}}
	cfg.MaxBodySize = 10
	cfg.QueueSize = 0
	cfg.AccessLog = "$request_id $status"
	cfg.Timeout = control.Duration(300 * time.Millisecond)
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		switch req.vars["PATH_INFO"] {
		case "/hang":
			select {
			case <-hang:
			case <-fw.done:
			}
			return false
		case "/die":
			return false // read, then closed without an answer
		}
		respond(c, 200, nil, []byte("ok"))
		return true
	})
	h := startProxy(t, cfg, fw)
	check := func(what string, status int, method, path, body string) string {
		t.Helper()
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		resp, _ := h.do(method, path, r)
		id := resp.Header.Get("X-Request-Id")
		if resp.StatusCode != status || !hexID.MatchString(id) {
			t.Errorf("%s: %d with X-Request-ID %q", what, resp.StatusCode, id)
		}
		return id
	}
	check("static file", 200, "GET", "/s/f.txt", "")
	check("static 404", 404, "GET", "/s/missing", "")
	check("413", 413, "POST", "/", strings.Repeat("x", 20))
	idDie := check("worker died", 502, "GET", "/die", "")
	idHang := check("timeout", 504, "GET", "/hang", "")
	// The worker is out of routing after its timeout: with no queue and no
	// other worker the next request is a 503.
	check("503", 503, "GET", "/", "")

	for _, want := range []string{
		"request " + idDie + ": worker w1: closed the connection after reading GET /die",
		"request " + idHang + ": worker w1: no answer within 300ms: 504",
	} {
		waitFor(t, want, 2*time.Second, func() bool { return strings.Contains(h.elog.String(), want) })
	}
	waitFor(t, "6 log lines", 2*time.Second, func() bool { return strings.Count(h.alog.String(), "\n") == 6 })
	for _, l := range strings.Split(strings.TrimSuffix(h.alog.String(), "\n"), "\n") {
		if id, _, _ := strings.Cut(l, " "); !hexID.MatchString(id) {
			t.Errorf("access log line without its ID: %q", l)
		}
	}
}

// TestRequestIDIn503Log: a 503 from a full queue is logged with its ID,
// at most once a second, counting the others.
func TestRequestIDIn503Log(t *testing.T) {
	release := make(chan struct{})
	fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		<-release
		respond(c, 200, nil, []byte("ok"))
		return true
	})
	cfg := defaultConfig()
	cfg.RequestID = true
	cfg.QueueSize = 0
	h := startProxy(t, cfg, fw)
	done := make(chan struct{})
	go func() { h.get("/busy"); close(done) }()
	waitFor(t, "the worker to be busy", 2*time.Second, func() bool { return fw.requests.Load() == 1 })
	var ids []string
	for i := 0; i < 3; i++ {
		resp, _ := h.get("/")
		if resp.StatusCode != 503 {
			t.Fatalf("%d, want 503", resp.StatusCode)
		}
		ids = append(ids, resp.Header.Get("X-Request-Id"))
	}
	close(release)
	<-done
	want := "request " + ids[0] + ": 503: every worker is busy and the queue is full"
	waitFor(t, want, 2*time.Second, func() bool { return strings.Contains(h.elog.String(), want) })
	if n := strings.Count(h.elog.String(), ": 503: "); n != 1 {
		t.Errorf("%d 503 lines within a second, want 1:\n%s", n, h.elog.String())
	}
}

// TestRequestIDVar: in both packet encodings the app gets the request's
// ID once, never the client's beside it.
func TestRequestIDVar(t *testing.T) {
	for _, compact := range []bool{false, true} {
		r, _ := http.NewRequest("GET", "http://h/x", nil)
		r.RequestURI = "/x"
		r.Header.Set("X-Request-Id", "from-client")
		pkt, err := uwsgi.AppendPacket(nil, r, &reqInfo{PathInfo: "/x", RequestID: "ours"}, compact)
		if err != nil {
			t.Fatal(err)
		}
		var vars map[string]string
		if compact {
			vars, err = uwsgi.DecodeCompact(pkt)
		} else {
			vars, err = decodeClassic(pkt)
		}
		if err != nil || vars["HTTP_X_REQUEST_ID"] != "ours" {
			t.Errorf("compact %v: HTTP_X_REQUEST_ID %q, %v", compact, vars["HTTP_X_REQUEST_ID"], err)
		}
	}
}

// decodeClassic decodes a modifier1 0 packet, refusing a repeated var.
func decodeClassic(pkt []byte) (map[string]string, error) {
	vars := map[string]string{}
	v := pkt[4:]
	for len(v) >= 4 {
		kl := int(v[0]) | int(v[1])<<8
		k := string(v[2 : 2+kl])
		vl := int(v[2+kl]) | int(v[3+kl])<<8
		if _, dup := vars[k]; dup {
			return nil, fmt.Errorf("%s twice", k)
		}
		vars[k] = string(v[4+kl : 4+kl+vl])
		v = v[4+kl+vl:]
	}
	return vars, nil
}
