package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// backend is an HTTP/1.1 upstream server on 127.0.0.1 that can be stopped
// and started again on the same port.
type backend struct {
	t        testing.TB
	name     string
	addr     string
	handler  atomic.Pointer[http.HandlerFunc]
	requests atomic.Int64
	conns    atomic.Int64
	mu       sync.Mutex
	srv      *http.Server
}

func startBackend(t testing.TB, name string, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{t: t, name: name}
	b.handler.Store(&h)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = l.Addr().String()
	b.serve(l)
	t.Cleanup(b.stop)
	return b
}

func (b *backend) serve(l net.Listener) {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			w.Header().Set("X-Backend", b.name)
			(*b.handler.Load())(w, r)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				b.conns.Add(1)
			}
		},
	}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(l)
}

// stop closes the listener and every connection: connects are refused.
func (b *backend) stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// restart listens on the same port again.
func (b *backend) restart() {
	b.t.Helper()
	l, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.serve(l)
}

func (b *backend) setHandler(h http.HandlerFunc) { b.handler.Store(&h) }

func okHandler(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }

// upstreamConfig is a proxy config routing / to one group of bs.
func upstreamConfig(method string, bs ...*backend) control.Proxy {
	c := defaultConfig()
	u := control.Upstream{
		Method: method, Protocol: "http", Keepalive: 32,
		KeepaliveTimeout: control.Duration(time.Minute), ConnectTimeout: control.Duration(time.Second),
		Timeout: control.Duration(5 * time.Second), RetryTries: 3, RetryBudget: 20,
		Resolve: control.Duration(time.Minute), HealthInterval: control.Duration(time.Second),
		HealthTimeout: control.Duration(time.Second), HealthFails: 1, HealthPasses: 1,
	}
	for _, b := range bs {
		u.Servers = append(u.Servers, control.UpstreamServer{Address: b.addr, Weight: 1, MaxFails: 1, FailTimeout: control.Duration(10 * time.Second)})
	}
	c.Upstreams = map[string]control.Upstream{"app": u}
	c.Routes = []control.Route{{URL: "/", Upstream: "app"}}
	return c
}

// shares sends n sequential requests and counts them per backend.
func shares(t *testing.T, h *harness, n int, path string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		resp, body := h.get(path)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		got[resp.Header.Get("X-Backend")]++
	}
	return got
}

func TestUpstreamMethods(t *testing.T) {
	a := startBackend(t, "a", okHandler)
	b := startBackend(t, "b", okHandler)
	c := startBackend(t, "c", okHandler)
	for _, tc := range []struct {
		method  string
		weights []int
		n       int
		want    map[string]int
	}{
		{"round_robin", []int{1, 1, 1}, 300, map[string]int{"a": 100, "b": 100, "c": 100}},
		{"round_robin", []int{5, 3, 2}, 500, map[string]int{"a": 250, "b": 150, "c": 100}},
		// Sequential requests: every server has none in flight, so
		// least_conn is weighted round robin among the ties.
		{"least_conn", []int{2, 1, 1}, 400, map[string]int{"a": 200, "b": 100, "c": 100}},
	} {
		t.Run(fmt.Sprintf("%s%v", tc.method, tc.weights), func(t *testing.T) {
			cfg := upstreamConfig(tc.method, a, b, c)
			for i, w := range tc.weights {
				cfg.Upstreams["app"].Servers[i].Weight = w
			}
			h := startProxy(t, cfg)
			got := shares(t, h, tc.n, "/")
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s got %d requests, want exactly %d (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
}

func TestUpstreamSmoothRoundRobinOrder(t *testing.T) {
	a := startBackend(t, "a", okHandler)
	b := startBackend(t, "b", okHandler)
	c := startBackend(t, "c", okHandler)
	cfg := upstreamConfig("round_robin", a, b, c)
	cfg.Upstreams["app"].Servers[0].Weight = 5
	h := startProxy(t, cfg)
	var order []string
	for i := 0; i < 7; i++ {
		resp, _ := h.get("/")
		order = append(order, resp.Header.Get("X-Backend"))
	}
	// nginx's smooth weighted round robin spreads a's turns.
	if got := strings.Join(order, ""); got != "aabacaa" {
		t.Errorf("order %s, want aabacaa", got)
	}
}

func TestUpstreamLeastConnFavoursTheFastServer(t *testing.T) {
	fast := startBackend(t, "fast", okHandler)
	slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(40 * time.Millisecond)
		io.WriteString(w, "ok")
	})
	h := startProxy(t, upstreamConfig("least_conn", fast, slow))
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 25; j++ {
				resp, _ := h.get("/")
				mu.Lock()
				got[resp.Header.Get("X-Backend")]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if got["fast"] < 3*got["slow"] {
		t.Errorf("least_conn: fast %d, slow %d; want the fast server to take far more", got["fast"], got["slow"])
	}
	t.Logf("least_conn shares: %v", got)
}

func TestUpstreamConsistentHash(t *testing.T) {
	bs := []*backend{startBackend(t, "a", okHandler), startBackend(t, "b", okHandler), startBackend(t, "c", okHandler)}
	cfg := upstreamConfig("hash", bs...)
	u := cfg.Upstreams["app"]
	u.Hash = "$arg_k"
	cfg.Upstreams["app"] = u
	h := startProxy(t, cfg)
	owner := map[int]string{}
	count := map[string]int{}
	for k := 0; k < 600; k++ {
		resp, _ := h.get(fmt.Sprintf("/?k=%d", k))
		owner[k] = resp.Header.Get("X-Backend")
		count[owner[k]]++
	}
	for _, b := range bs {
		// 160 ring points per server put a share within roughly ±15% of a
		// third; the servers' addresses (random ports) decide where.
		if count[b.name] < 90 || count[b.name] > 310 {
			t.Errorf("server %s owns %d of 600 keys; want about a third", b.name, count[b.name])
		}
	}
	for k := 0; k < 600; k += 7 {
		resp, _ := h.get(fmt.Sprintf("/?k=%d", k))
		if got := resp.Header.Get("X-Backend"); got != owner[k] {
			t.Fatalf("key %d went to %s, then to %s", k, owner[k], got)
		}
	}
	// Removing c moves c's keys only.
	u.Servers = u.Servers[:2]
	cfg.Upstreams["app"] = u
	if err := h.srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for k := 0; k < 600; k++ {
		resp, _ := h.get(fmt.Sprintf("/?k=%d", k))
		got := resp.Header.Get("X-Backend")
		if owner[k] != "c" && got != owner[k] {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d keys of a and b moved when c was removed; want 0", moved)
	}
}

func TestUpstreamPassiveHealth(t *testing.T) {
	a := startBackend(t, "a", okHandler)
	b := startBackend(t, "b", okHandler)
	cfg := upstreamConfig("round_robin", a, b)
	for i := range cfg.Upstreams["app"].Servers {
		cfg.Upstreams["app"].Servers[i].FailTimeout = control.Duration(300 * time.Millisecond)
	}
	h := startProxy(t, cfg)
	a.stop()
	// Every request is served: a refused connect is retried on b, and a
	// is then out of rotation.
	before := a.requests.Load()
	for i := 0; i < 50; i++ {
		resp, body := h.get("/")
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "b" {
			t.Fatalf("request %d: %d from %q: %s", i, resp.StatusCode, resp.Header.Get("X-Backend"), body)
		}
	}
	if n := a.requests.Load() - before; n != 0 {
		t.Fatalf("a served %d while stopped", n)
	}
	if !strings.Contains(h.elog.String(), "out of rotation for 300ms") {
		t.Errorf("log does not say a is out of rotation:\n%s", h.elog.String())
	}
	st := h.srv.Stats().Upstreams["app"]
	if st[0].State != "failed" || st[0].Failures == 0 {
		t.Errorf("stats of a: %+v; want failed with failures", st[0])
	}
	a.restart()
	waitFor(t, "a to rejoin after fail_timeout", 5*time.Second, func() bool {
		resp, _ := h.get("/")
		return resp.Header.Get("X-Backend") == "a"
	})
	if !strings.Contains(h.elog.String(), "answers again") {
		t.Errorf("log does not say a is back:\n%s", h.elog.String())
	}
}

// hangup reads the request, then closes without answering: a server that
// died on it.
func hangup(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	c, _, _ := w.(http.Hijacker).Hijack()
	c.Close()
}

func TestUpstreamRetryRules(t *testing.T) {
	for _, tc := range []struct {
		name       string
		firstDead  bool // the first server refuses connections (else it hangs up after reading)
		idempotent bool // retry.idempotent
		method     string
		body       string
		want       int
		replayed   bool
	}{
		{"refused POST is retried", true, false, "POST", "x=1", 200, false},
		{"begun POST is not replayed", false, true, "POST", "x=1", 502, false},
		{"begun GET is not replayed by default", false, false, "GET", "", 502, false},
		{"begun GET is replayed when allowed", false, true, "GET", "", 200, true},
		{"begun PUT is replayed when allowed", false, true, "PUT", "data", 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := startBackend(t, "first", hangup)
			second := startBackend(t, "second", okHandler)
			if tc.firstDead {
				first.stop()
			}
			cfg := upstreamConfig("round_robin", first, second)
			u := cfg.Upstreams["app"]
			u.RetryIdempotent = tc.idempotent
			cfg.Upstreams["app"] = u
			h := startProxy(t, cfg)
			resp, body := h.do(tc.method, "/", strings.NewReader(tc.body))
			if resp.StatusCode != tc.want {
				t.Fatalf("%s: %d %s, want %d\n%s", tc.method, resp.StatusCode, body, tc.want, h.elog.String())
			}
			if !tc.firstDead && first.requests.Load() != 1 {
				t.Errorf("first server got %d requests, want 1", first.requests.Load())
			}
			m := h.metricsText()
			if tc.replayed != strings.Contains(m, `berth_upstream_retries_total{reason="replayed",upstream="app"} 1`) {
				t.Errorf("replayed retry counted wrongly:\n%s", grepLine(m, "retries_total"))
			}
			if tc.want == 502 && !strings.Contains(m, `berth_upstream_retries_refused_total{upstream="app",why="begun"} 1`) {
				t.Errorf("refusal not counted:\n%s", grepLine(m, "refused_total"))
			}
		})
	}
}

func TestUpstreamTimeoutIsNeverReplayed(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) { <-release })
	ok := startBackend(t, "ok", okHandler)
	cfg := upstreamConfig("round_robin", slow, ok)
	u := cfg.Upstreams["app"]
	u.Timeout = control.Duration(200 * time.Millisecond)
	u.RetryIdempotent = true
	cfg.Upstreams["app"] = u
	h := startProxy(t, cfg)
	resp, body := h.get("/")
	if resp.StatusCode != 504 {
		t.Fatalf("got %d %s, want 504", resp.StatusCode, body)
	}
	if ok.requests.Load() != 0 {
		t.Errorf("the request that timed out was replayed on another server")
	}
}

func TestUpstreamRetryBudget(t *testing.T) {
	dead := startBackend(t, "dead", okHandler)
	ok := startBackend(t, "ok", okHandler)
	dead.stop()
	cfg := upstreamConfig("round_robin", dead, ok)
	u := cfg.Upstreams["app"]
	u.RetryBudget = 0
	u.Servers[0].MaxFails = 0 // never taken out: every other request tries it first
	cfg.Upstreams["app"] = u
	h := startProxy(t, cfg)
	codes := map[int]int{}
	for i := 0; i < 40; i++ {
		resp, _ := h.get("/")
		codes[resp.StatusCode]++
	}
	// 20 requests try dead first; the reserve of 10 retries saves 10.
	if codes[502] != 10 || codes[200] != 30 {
		t.Errorf("codes %v; want 10 x 502 once the budget's reserve of 10 is spent, 30 x 200", codes)
	}
	if !strings.Contains(h.metricsText(), `berth_upstream_retries_refused_total{upstream="app",why="budget"} 10`) {
		t.Errorf("budget refusals not counted:\n%s", grepLine(h.metricsText(), "refused"))
	}
}

func TestUpstreamBackupDownAndMaxConns(t *testing.T) {
	primary := startBackend(t, "primary", okHandler)
	backup := startBackend(t, "backup", okHandler)
	off := startBackend(t, "off", okHandler)
	cfg := upstreamConfig("round_robin", primary, backup, off)
	u := cfg.Upstreams["app"]
	u.Servers[1].Backup = true
	u.Servers[2].Down = true
	cfg.Upstreams["app"] = u
	h := startProxy(t, cfg)
	if got := shares(t, h, 20, "/"); got["primary"] != 20 {
		t.Fatalf("with the primary up: %v; want all on primary", got)
	}
	primary.stop()
	if got := shares(t, h, 20, "/"); got["backup"] != 20 {
		t.Fatalf("with the primary stopped: %v; want all on backup", got)
	}

	// max_conns: one slow request holds the only slot.
	release := make(chan struct{})
	one := startBackend(t, "one", func(w http.ResponseWriter, r *http.Request) { <-release; io.WriteString(w, "ok") })
	cfg = upstreamConfig("least_conn", one)
	cfg.Upstreams["app"].Servers[0].MaxConns = 1
	h2 := startProxy(t, cfg)
	done := make(chan int)
	go func() {
		resp, _ := h2.get("/")
		done <- resp.StatusCode
	}()
	waitFor(t, "the first request to reach the server", 5*time.Second, func() bool { return one.requests.Load() == 1 })
	resp, body := h2.get("/")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "max_conns") {
		t.Errorf("over max_conns: %d %q, want 503 with Retry-After", resp.StatusCode, body)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("the request holding the slot got %d", code)
	}
}

func TestUpstreamKeepalivePool(t *testing.T) {
	b := startBackend(t, "b", okHandler)
	h := startProxy(t, upstreamConfig("round_robin", b))
	shares(t, h, 100, "/")
	if n := b.conns.Load(); n != 1 {
		t.Errorf("100 sequential requests opened %d connections to the server; want 1 (pooled)", n)
	}
	// A pooled connection the server closed is replaced, not an error.
	b.stop()
	b.restart()
	shares(t, h, 5, "/")
	if n := b.conns.Load(); n != 2 {
		t.Errorf("connections after the server restarted: %d, want 2", n)
	}
}

func TestUpstreamRequestHeaders(t *testing.T) {
	var got atomic.Pointer[http.Request]
	var gotBody atomic.Value
	b := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		gotBody.Store(string(body))
		got.Store(r)
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		io.WriteString(w, "ok")
	})
	cfg := upstreamConfig("round_robin", b)
	h := startProxy(t, cfg)
	raw := "POST /path?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nConnection: keep-alive, X-Drop\r\n" +
		"X-Drop: 1\r\nX-Keep: 2\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\n" +
		"Te: trailers\r\nUpgrade: websocket\r\n\r\nhello"
	out := rawRequest(t, h.addr, raw)
	if !strings.Contains(out, "200 OK") {
		t.Fatalf("got %q", out)
	}
	r := got.Load()
	for _, tc := range []struct{ name, want string }{
		{"X-Keep", "2"}, {"X-Drop", ""}, {"X_forwarded_for", ""}, {"X-Forwarded-For", "127.0.0.1"},
		{"X-Forwarded-Proto", "http"}, {"Te", ""}, {"Upgrade", ""},
	} {
		if v := strings.Join(r.Header.Values(tc.name), ","); v != tc.want {
			t.Errorf("upstream saw %s %q, want %q", tc.name, v, tc.want)
		}
	}
	if r.Host != "example.com" || r.RequestURI != "/path?q=1" || gotBody.Load() != "hello" || r.ContentLength != 5 {
		t.Errorf("upstream saw Host %q URI %q body %q length %d", r.Host, r.RequestURI, gotBody.Load(), r.ContentLength)
	}
	if strings.Contains(out, "secret") {
		t.Errorf("a field the server named in Connection reached the client: %q", out)
	}

	// From a trusted proxy, X-Forwarded-For is kept and extended.
	cfg.TrustedProxies = []string{"127.0.0.1/32"}
	if err := h.srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h.get("/", "X-Forwarded-For", "7.7.7.7")
	if v := got.Load().Header.Get("X-Forwarded-For"); v != "7.7.7.7, 127.0.0.1" {
		t.Errorf("trusted X-Forwarded-For: %q, want \"7.7.7.7, 127.0.0.1\"", v)
	}
}

func TestUpstreamUwsgiServer(t *testing.T) {
	fw := startFake(t, "u1", 2, varsJSON)
	cfg := defaultConfig()
	cfg.Upstreams = map[string]control.Upstream{"legacy": {
		Method: "round_robin", Protocol: "uwsgi", Keepalive: 4, KeepaliveTimeout: control.Duration(time.Minute),
		ConnectTimeout: control.Duration(time.Second), Timeout: control.Duration(5 * time.Second), RetryTries: 2,
		Resolve: control.Duration(time.Minute),
		Servers: []control.UpstreamServer{{Address: "unix:" + fw.path, Weight: 1, MaxFails: 1, FailTimeout: control.Duration(time.Second)}},
	}}
	cfg.Routes = []control.Route{{URL: "/old", Upstream: "legacy"}}
	cfg.QueueSize = 0 // no worker: 503 at once
	h := startProxy(t, cfg)
	resp, body := h.get("/old/page?x=1")
	if resp.StatusCode != 200 {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	var vars map[string]string
	if err := json.Unmarshal([]byte(body), &vars); err != nil {
		t.Fatal(err)
	}
	if vars["PATH_INFO"] != "/old/page" || vars["QUERY_STRING"] != "x=1" || vars["REMOTE_ADDR"] != "127.0.0.1" {
		t.Errorf("vars: %v", vars)
	}
	// /oldx is not under /old: the local workers (none: 503).
	if resp, _ := h.get("/oldx"); resp.StatusCode != 503 {
		t.Errorf("/oldx: %d, want 503 from the (empty) local worker set", resp.StatusCode)
	}
}

func TestUpstreamReloadKeepsState(t *testing.T) {
	a := startBackend(t, "a", okHandler)
	b := startBackend(t, "b", okHandler)
	cfg := upstreamConfig("round_robin", a, b)
	h := startProxy(t, cfg)
	shares(t, h, 10, "/")
	release := make(chan struct{})
	b.setHandler(func(w http.ResponseWriter, r *http.Request) { <-release; io.WriteString(w, "late") })
	done := make(chan string)
	go func() {
		for {
			resp, body := h.get("/")
			if resp.Header.Get("X-Backend") == "b" {
				done <- fmt.Sprintf("%d %s", resp.StatusCode, body)
				return
			}
		}
	}()
	waitFor(t, "a request in flight on b", 5*time.Second, func() bool { return b.requests.Load() == 6 })
	// b leaves the group while its request is in flight; a's counters stay.
	cfg.Upstreams["app"] = control.Upstream{}
	cfg = upstreamConfig("round_robin", a)
	if err := h.srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if got := shares(t, h, 10, "/"); got["a"] != 10 {
		t.Errorf("after b was removed: %v", got)
	}
	close(release)
	if got := <-done; got != "200 late" {
		t.Errorf("the request in flight on the removed server got %q", got)
	}
	st := h.srv.Stats().Upstreams["app"]
	if len(st) != 1 || st[0].Requests < 15 {
		t.Errorf("stats after reload: %+v; want a alone with its earlier requests counted", st)
	}
	// Routes can go: then everything is the workers'.
	cfg.Routes = nil
	cfg.Upstreams = nil
	cfg.QueueSize = 0 // no worker: 503 at once
	if err := h.srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if resp, _ := h.get("/"); resp.StatusCode != 503 {
		t.Errorf("without routes: %d, want 503 (no worker)", resp.StatusCode)
	}
}

func TestUpstreamDNSReResolution(t *testing.T) {
	a := startBackend(t, "a", okHandler)
	b := startBackend(t, "b", okHandler)
	_, port, _ := net.SplitHostPort(a.addr)
	// b listens on another port: give it the same port on another
	// loopback address by proxying 127.0.0.2:port to it.
	l, err := net.Listen("tcp", "127.0.0.2:"+port)
	if err != nil {
		t.Skipf("127.0.0.2 not usable here: %v", err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				d, err := net.Dial("tcp", b.addr)
				if err != nil {
					c.Close()
					return
				}
				go func() { io.Copy(d, c); d.Close() }()
				io.Copy(c, d)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })

	var ip atomic.Value
	ip.Store("127.0.0.1")
	cfg := upstreamConfig("round_robin")
	u := cfg.Upstreams["app"]
	u.Servers = []control.UpstreamServer{{Address: "app.test:" + port, Weight: 1, MaxFails: 1, FailTimeout: control.Duration(time.Second)}}
	u.Resolve = control.Duration(50 * time.Millisecond)
	cfg.Upstreams["app"] = u
	h := startProxyWith(t, cfg, func(s *Server) {
		s.up.lookup = func(ctx context.Context, host string) ([]string, error) {
			if host != "app.test" {
				return nil, fmt.Errorf("no such host %s", host)
			}
			return []string{ip.Load().(string)}, nil
		}
	})
	if got := shares(t, h, 5, "/"); got["a"] != 5 {
		t.Fatalf("before the address changed: %v", got)
	}
	ip.Store("127.0.0.2") // the "container" was recreated elsewhere
	waitFor(t, "requests to follow the new address", 5*time.Second, func() bool {
		resp, _ := h.get("/")
		return resp.Header.Get("X-Backend") == "b"
	})
	if st := h.srv.Stats().Upstreams["app"]; len(st) != 1 || st[0].Addr != "127.0.0.2:"+port {
		t.Errorf("stats: %+v", st)
	}
}

func TestUpstreamActiveHealthCheck(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	sick := startBackend(t, "sick", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			w.WriteHeader(500)
		}
		io.WriteString(w, "ok")
	})
	fine := startBackend(t, "fine", okHandler)
	cfg := upstreamConfig("round_robin", sick, fine)
	u := cfg.Upstreams["app"]
	u.HealthPath = "/healthz"
	u.HealthInterval = control.Duration(50 * time.Millisecond)
	cfg.Upstreams["app"] = u
	h := startProxy(t, cfg)
	healthy.Store(false)
	waitFor(t, "the failing check to take sick out", 5*time.Second, func() bool {
		return h.srv.Stats().Upstreams["app"][0].State == "unhealthy"
	})
	if got := shares(t, h, 20, "/"); got["fine"] != 20 {
		t.Errorf("with sick unhealthy: %v", got)
	}
	healthy.Store(true)
	waitFor(t, "sick to pass again", 5*time.Second, func() bool {
		return h.srv.Stats().Upstreams["app"][0].State == "up"
	})
}

func TestUpstreamUwsgiHealthCheck(t *testing.T) {
	fw := startFake(t, "u1", 1, hello)
	p := &peer{network: "unix", addr: fw.path}
	if err := checkPeer(p, control.Upstream{Protocol: "uwsgi", HealthPath: "/livez", HealthTimeout: control.Duration(time.Second)}); err != nil {
		t.Fatalf("uwsgi health check: %v", err)
	}
	if fw.lastReq().vars["PATH_INFO"] != "/livez" {
		t.Errorf("vars %v", fw.lastReq().vars)
	}
}

func TestUpstreamRouteMatching(t *testing.T) {
	st := &settings{routes: []route{{url: "/api", g: &group{name: "api"}}, {url: "/v2/", g: &group{name: "v2"}}, {url: "/", g: &group{name: "all"}}}}
	for _, tc := range []struct{ path, want string }{
		{"/api", "api"}, {"/api/x", "api"}, {"/apix", "all"}, {"/v2/", "v2"}, {"/v2", "all"}, {"/", "all"}, {"/x", "all"},
	} {
		if g := st.route(tc.path); g == nil || g.name != tc.want {
			t.Errorf("%s: got %v, want %s", tc.path, g, tc.want)
		}
	}
	st.routes = st.routes[:2]
	if g := st.route("/other"); g != nil {
		t.Errorf("/other: got %s, want the local workers", g.name)
	}
}

func TestUpstreamHashKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{{"$remote_addr", true}, {"$request_uri", true}, {"${host}x$arg_a", true}, {"$cookie_sid", true}, {"$http_x_user", true}, {"$nope", false}, {"${open", false}} {
		if _, ok := compileKey(tc.key); ok != tc.ok {
			t.Errorf("compileKey(%q) ok %v, want %v", tc.key, ok, tc.ok)
		}
	}
	k, _ := compileKey("$http_x_user")
	r1, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\nX-User: 1\r\n\r\n")))
	r2, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /other HTTP/1.1\r\nHost: b\r\nX-User: 1\r\n\r\n")))
	r3, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\nX-User: 2\r\n\r\n")))
	in := &reqInfo{}
	if k.sum(r1, in) != k.sum(r2, in) || k.sum(r1, in) == k.sum(r3, in) {
		t.Errorf("hash of $http_x_user depends on the wrong things")
	}
}
