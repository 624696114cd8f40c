package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// upstreamApp answers its name (the file "name" beside it) and sleeps for
// the seconds in the file "delay" when it exists, read on every request
// so a test can slow one backend down without a restart.
const upstreamApp = `import os, time
HERE = os.path.dirname(os.path.abspath(__file__))
NAME = open(os.path.join(HERE, "name")).read().strip()
GEN = os.environ.get("GEN", "0")

def application(environ, start_response):
    try:
        delay = float(open(os.path.join(HERE, "delay")).read() or 0)
    except OSError:
        delay = 0
    if delay:
        time.sleep(delay)
    body = NAME.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Backend", NAME), ("X-Gen", GEN)])
    return [body]
`

// upstreamBackend starts a berth serving upstreamApp as name, on addr when
// given (to come back on the same port after a kill), else a free port.
func upstreamBackend(t *testing.T, name, addr string) *berthProc {
	t.Helper()
	cfg := "app:\n  module: app:application\n  chdir: $APP\n  python: $PY\n  env: {GEN: \"1\"}\n" +
		"workers: {count: 1, threads: 8, preload: false}\nproxy: {access_log: off}\n"
	if addr != "" {
		cfg = fmt.Sprintf("listen: [%q]\n", addr) + cfg
	}
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": upstreamApp, "name": name}})
	if addr != "" {
		b.addr = addr
	}
	return b
}

// edgeConfig is an edge berth's config: every request to one group of
// the backends, with upstream settings spliced in.
func edgeConfig(group string, backends []*berthProc, server func(i int) string) string {
	var b strings.Builder
	b.WriteString("proxy: {access_log: off}\nupstreams:\n  app:\n")
	b.WriteString(group)
	b.WriteString("    servers:\n")
	for i, be := range backends {
		extra := ""
		if server != nil {
			extra = server(i)
		}
		fmt.Fprintf(&b, "      - {address: %q%s}\n", be.addr, extra)
	}
	b.WriteString("routes: [{url: /, upstream: app}]\n")
	return b.String()
}

// countLoad runs c clients against url until stop and counts the answers
// by backend name; every answer that is not a 200 from a known backend is
// a failure, with the time it came.
type countLoad struct {
	mu       sync.Mutex
	byName   map[string]int
	failures []time.Time
	codes    map[int]int
	cancel   context.CancelFunc
	done     chan struct{}
}

func startCountLoad(c int, url string, names []string) *countLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &countLoad{byName: map[string]int{}, codes: map[int]int{}, cancel: cancel, done: make(chan struct{})}
	known := map[string]bool{}
	for _, n := range names {
		known[n] = true
	}
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for ctx.Err() == nil {
				resp, err := client.Get(url)
				if err != nil {
					if ctx.Err() == nil {
						l.fail(0)
					}
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !known[string(body)] {
					l.fail(resp.StatusCode)
					continue
				}
				l.mu.Lock()
				l.byName[string(body)]++
				l.codes[200]++
				l.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

func (l *countLoad) fail(code int) {
	l.mu.Lock()
	l.failures = append(l.failures, time.Now())
	l.codes[code]++
	l.mu.Unlock()
}

func (l *countLoad) stop() {
	l.cancel()
	<-l.done
}

func (l *countLoad) total() int {
	n := 0
	for _, v := range l.byName {
		n += v
	}
	return n
}

// TestUpstreamsBehindAnEdge runs three berth app instances and an edge
// berth (routes: / to upstreams, no app) as separate processes on
// loopback ports, under load: each balancing method distributes as
// specified, kill -9 of a backend fails only what was in flight there and
// the rest shift at once, it rejoins when it returns, and a backend rolled
// with a config change behind the edge loses nothing.
func TestUpstreamsBehindAnEdge(t *testing.T) {
	parent := t // backends started in a subtest must outlive it
	names := []string{"a", "b", "c"}
	var backends []*berthProc
	for _, n := range names {
		backends = append(backends, upstreamBackend(t, n, ""))
	}
	weights := []int{3, 2, 1}
	edge := startBerth(t, berthOpts{config: edgeConfig("    method: round_robin\n", backends, func(i int) string {
		return fmt.Sprintf(", weight: %d, fail_timeout: 2s", weights[i])
	})})
	if !strings.Contains(edge.logs.String(), "(edge: no app)") {
		t.Errorf("the edge does not say it runs without an app:\n%s", edge.logs.String())
	}
	if strings.Contains(edge.logs.String(), "starting worker") || len(edge.statusDoc().Workers) != 0 {
		t.Fatalf("the edge started workers:\n%s", edge.logs.String())
	}

	t.Run("weighted round robin", func(t *testing.T) {
		l := startCountLoad(8, edge.url("/"), names)
		waitFor(t, 60*time.Second, "3000 answers", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.total() >= 3000
		})
		l.stop()
		total := float64(l.total())
		for i, n := range names {
			share, want := float64(l.byName[n])/total, float64(weights[i])/6
			t.Logf("%s: weight %d, %d requests, share %.3f (want %.3f)", n, weights[i], l.byName[n], share, want)
			if math.Abs(share-want) > 0.02 {
				t.Errorf("%s: share %.3f, want %.3f within 2 points", n, share, want)
			}
		}
		if len(l.failures) != 0 {
			t.Errorf("%d failed requests: %v", len(l.failures), l.codes)
		}
	})

	t.Run("least_conn favours the fast servers", func(t *testing.T) {
		rewriteEdge(t, edge, edgeConfig("    method: least_conn\n", backends, nil))
		edge.signal(syscall.SIGHUP)
		edge.waitLog("proxy settings swapped", 10*time.Second)
		if err := os.WriteFile(backends[0].appDir+"/delay", []byte("0.05"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(backends[0].appDir + "/delay")
		l := startCountLoad(8, edge.url("/"), names)
		time.Sleep(3 * time.Second) // a measured phase
		l.stop()
		t.Logf("least_conn with a slowed down: %v", l.byName)
		if l.byName["a"]*5 > l.byName["b"] || l.byName["a"]*5 > l.byName["c"] {
			t.Errorf("the slow server took %d requests, the fast ones %d and %d: least_conn should favour the fast ones", l.byName["a"], l.byName["b"], l.byName["c"])
		}
		if len(l.failures) != 0 {
			t.Errorf("%d failed requests: %v", len(l.failures), l.codes)
		}
	})

	t.Run("hash keeps a key on its server", func(t *testing.T) {
		rewriteEdge(t, edge, edgeConfig("    method: hash\n    hash: $request_uri\n", backends, nil))
		edge.signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, "the hash config", func() bool {
			return strings.Count(edge.logs.String(), "proxy settings swapped") >= 2
		})
		owners := map[string]int{}
		for k := 0; k < 60; k++ {
			_, first := edge.get(fmt.Sprintf("/item/%d", k))
			for i := 0; i < 3; i++ {
				if _, again := edge.get(fmt.Sprintf("/item/%d", k)); again != first {
					t.Fatalf("/item/%d went to %s, then to %s", k, first, again)
				}
			}
			owners[first]++
		}
		t.Logf("60 keys by owner: %v", owners)
		if len(owners) != 3 {
			t.Errorf("keys spread over %v; want all three servers", owners)
		}
	})

	t.Run("kill -9 of a backend under load", func(t *testing.T) {
		rewriteEdge(t, edge, edgeConfig("    method: round_robin\n", backends, func(int) string { return ", fail_timeout: 2s" }))
		edge.signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, "the round robin config", func() bool {
			return strings.Count(edge.logs.String(), "proxy settings swapped") >= 3
		})
		const clients = 8
		l := startCountLoad(clients, edge.url("/"), names)
		time.Sleep(time.Second) // load running before the kill
		victim := backends[1]
		killedAt := time.Now()
		syscall.Kill(victim.berthPid(), syscall.SIGKILL)
		victim.wait(10 * time.Second)
		time.Sleep(3 * time.Second) // load on the two left
		l.mu.Lock()
		before := l.byName["b"]
		fails := append([]time.Time(nil), l.failures...)
		l.mu.Unlock()
		// b comes back on the same port and rejoins after fail_timeout.
		backends[1] = upstreamBackend(parent, "b", victim.addr)
		waitFor(t, 15*time.Second, "b to rejoin", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.byName["b"] > before+50
		})
		l.stop()
		t.Logf("kill -9 of b under %d clients: %d failed (%v), %d served; b rejoined", clients, len(fails), l.codes, l.total())
		// Only requests in flight on b can fail: at most one per client.
		if len(fails) > clients {
			t.Errorf("%d requests failed; only those in flight on b (at most %d) may", len(fails), clients)
		}
		for _, at := range fails {
			if at.Sub(killedAt) > 500*time.Millisecond {
				t.Errorf("a request failed %s after the kill: the rest must shift at once", at.Sub(killedAt))
			}
		}
		for code := range l.codes {
			if code != 200 && code != 502 {
				t.Errorf("answers with status %d: %v", code, l.codes)
			}
		}
		// /status has the proxy's stats of the last second.
		waitFor(t, 5*time.Second, "every server up in /status", func() bool {
			for _, s := range upstreamStatus(t, edge)["app"] {
				if s.State != "up" {
					return false
				}
			}
			return true
		})
	})

	t.Run("a backend rolled with a config change loses nothing", func(t *testing.T) {
		l := startCountLoad(8, edge.url("/"), names)
		time.Sleep(500 * time.Millisecond)
		be := backends[2]
		cfg, _ := os.ReadFile(be.cfgPath)
		writeFileAtomic(t, be.cfgPath, strings.Replace(string(cfg), `GEN: "1"`, `GEN: "2"`, 1))
		be.signal(syscall.SIGHUP)
		be.waitLog("serving on all", 30*time.Second)
		// The edge itself reloads under load too: weights change.
		rewriteEdge(t, edge, edgeConfig("    method: round_robin\n", backends, func(i int) string {
			return fmt.Sprintf(", weight: %d, fail_timeout: 2s", i+1)
		}))
		edge.signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, "the edge's reload", func() bool {
			return strings.Count(edge.logs.String(), "proxy settings swapped") >= 4
		})
		time.Sleep(time.Second)
		l.stop()
		t.Logf("backend c rolled and the edge reloaded under load: %d served (%v), %d failed", l.total(), l.byName, len(l.failures))
		if len(l.failures) != 0 {
			t.Errorf("%d failed requests: %v", len(l.failures), l.codes)
		}
	})

	out := runBerthStatus(t, edge)
	for _, want := range []string{"(edge: no app)", "UPSTREAM", "app", backends[0].addr} {
		if !strings.Contains(out, want) {
			t.Errorf("berth status lacks %q:\n%s", want, out)
		}
	}
	resp, err := http.Get("http://" + edge.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`berth_upstream_requests_total{server="` + backends[0].addr, "berth_upstream_server_up{", "berth_upstream_response_seconds_bucket"} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// rewriteEdge replaces the edge's config file, keeping its addresses.
func rewriteEdge(t *testing.T, edge *berthProc, cfg string) {
	t.Helper()
	writeFileAtomic(t, edge.cfgPath, fmt.Sprintf("listen: [%q]\nadmin: {listen: %q}\n", edge.addr, edge.admin)+cfg)
}

// runBerthStatus runs `berth status` against b's admin endpoint.
func runBerthStatus(t *testing.T, b *berthProc) string {
	t.Helper()
	out, _ := exec.Command(berthBinary(t), "status", "--admin", b.admin).CombinedOutput()
	return string(out)
}

// upstreamStat is one upstream server in /status.
type upstreamStat struct {
	Server   string `json:"server"`
	State    string `json:"state"`
	Requests int64  `json:"requests"`
}

// upstreamStatus decodes the upstreams part of b's /status.
func upstreamStatus(t *testing.T, b *berthProc) map[string][]upstreamStat {
	t.Helper()
	var st struct {
		Upstreams map[string][]upstreamStat `json:"upstreams"`
	}
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st.Upstreams
}
