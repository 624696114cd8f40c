package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

func cacheConfig(stale time.Duration) control.Proxy {
	cfg := defaultConfig()
	cfg.Cache = &control.Cache{Size: 1 << 20, Routes: []control.CacheRoute{
		{URL: "/", MaxTTL: control.Duration(time.Minute), Stale: control.Duration(stale), SessionCookies: []string{"sessionid"}},
	}}
	return cfg
}

// cachingApp answers by path: /cached (max-age=60), /short (max-age=1),
// /cookie (sets a cookie), /private, /nostore, /vary (Vary: Accept-Language),
// /slow (cached, after a pause), /fail (500 once told to). The body says
// which request of the worker's it was.
type cachingApp struct {
	n    atomic.Int64
	fail atomic.Bool
}

func (a *cachingApp) handler(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
	n := a.n.Add(1)
	p := req.vars["PATH_INFO"]
	h := http.Header{"Content-Type": {"text/html"}}
	status := 200
	switch p {
	case "/cached", "/slow":
		h.Set("Cache-Control", "max-age=60")
		if p == "/slow" {
			time.Sleep(200 * time.Millisecond)
		}
	case "/short":
		h.Set("Cache-Control", "max-age=1")
		if a.fail.Load() {
			status = 500
		}
	case "/cookie":
		h.Set("Cache-Control", "max-age=60")
		h.Set("Set-Cookie", "csrftoken=x")
	case "/private":
		h.Set("Cache-Control", "private, max-age=60")
	case "/nostore":
		h.Set("Cache-Control", "no-store")
	case "/vary":
		h.Set("Cache-Control", "max-age=60")
		h.Set("Vary", "Accept-Language")
	case "/expires":
		h.Set("Expires", time.Now().Add(time.Minute).UTC().Format(http.TimeFormat))
	}
	respond(c, status, h, []byte(fmt.Sprintf("%s %s #%d", p, req.vars["HTTP_ACCEPT_LANGUAGE"], n)))
	return true
}

func TestResponseCache(t *testing.T) {
	app := &cachingApp{}
	fw := startFake(t, "w1", 8, app.handler)
	h := startProxy(t, cacheConfig(0), fw)
	get := func(path string, hdr ...string) (string, string) {
		t.Helper()
		resp, body := h.get(path, hdr...)
		return resp.Header.Get("X-Cache-Status"), body
	}
	for _, tc := range []struct {
		path   string
		hdr    []string
		status []string // X-Cache-Status of two requests in a row
		same   bool     // the second is the first's body
	}{
		{"/cached", nil, []string{"MISS", "HIT"}, true},
		{"/cached?q=1", nil, []string{"MISS", "HIT"}, true},
		{"/expires", nil, []string{"MISS", "HIT"}, true},
		{"/cookie", nil, []string{"MISS", "MISS"}, false},
		{"/private", nil, []string{"MISS", "MISS"}, false},
		{"/nostore", nil, []string{"MISS", "MISS"}, false},
		{"/plain", nil, []string{"MISS", "MISS"}, false},
		{"/cached", []string{"Cookie", "a=b; sessionid=x"}, []string{"BYPASS", "BYPASS"}, false},
		{"/cached", []string{"Authorization", "Basic eDp5"}, []string{"BYPASS", "BYPASS"}, false},
	} {
		t.Run(tc.path+strings.Join(tc.hdr, " "), func(t *testing.T) {
			s1, b1 := get(tc.path, tc.hdr...)
			s2, b2 := get(tc.path, tc.hdr...)
			if s1 != tc.status[0] && !(tc.status[0] == "MISS" && s1 == "HIT") || s2 != tc.status[1] {
				t.Errorf("X-Cache-Status %q then %q, want %q then %q", s1, s2, tc.status[0], tc.status[1])
			}
			if (b1 == b2) != tc.same {
				t.Errorf("bodies %q and %q: same %v, want %v", b1, b2, b1 == b2, tc.same)
			}
		})
	}

	// Vary: one entry per Accept-Language.
	_, en1 := get("/vary", "Accept-Language", "en")
	_, fr1 := get("/vary", "Accept-Language", "fr")
	s, en2 := get("/vary", "Accept-Language", "en")
	_, fr2 := get("/vary", "Accept-Language", "fr")
	if en1 != en2 || fr1 != fr2 || en1 == fr1 || s != "HIT" || !strings.Contains(en1, " en ") {
		t.Errorf("Vary: en %q/%q fr %q/%q (%s)", en1, en2, fr1, fr2, s)
	}

	// HEAD is answered from the GET's entry.
	resp, _ := h.do("HEAD", "/cached", nil)
	if resp.Header.Get("X-Cache-Status") != "HIT" || resp.Header.Get("Age") == "" {
		t.Errorf("HEAD: %q Age %q", resp.Header.Get("X-Cache-Status"), resp.Header.Get("Age"))
	}

	// Purge one URL, then a prefix.
	before := app.n.Load()
	if n := h.srv.PurgeCache("/cached", false); n != 1 {
		t.Errorf("purge /cached: %d entries, want 1", n)
	}
	if s, _ := get("/cached"); s != "MISS" {
		t.Errorf("after purge: %s", s)
	}
	if s, _ := get("/cached?q=1"); s != "HIT" {
		t.Errorf("/cached?q=1 after purging /cached: %s", s)
	}
	if n := h.srv.PurgeCache("/", true); n < 3 {
		t.Errorf("purge everything: %d entries", n)
	}
	if s, _ := get("/cached?q=1"); s != "MISS" {
		t.Errorf("after purging /: %s", s)
	}
	if got := app.n.Load() - before; got != 2 {
		t.Errorf("worker requests after purges: %d, want 2", got)
	}
	m := h.metricsText()
	for _, want := range []string{`berth_cache_requests_total{status="HIT"}`, `berth_cache_requests_total{status="MISS"}`, `berth_cache_requests_total{status="BYPASS"}`, "berth_cache_entries"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestResponseCacheLock: 50 concurrent misses reach the worker once.
func TestResponseCacheLock(t *testing.T) {
	app := &cachingApp{}
	fw := startFake(t, "w1", 8, app.handler)
	h := startProxy(t, cacheConfig(0), fw)
	var wg sync.WaitGroup
	bodies := make(chan string, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := h.get("/slow")
			if resp.StatusCode != 200 {
				t.Errorf("status %d", resp.StatusCode)
			}
			bodies <- body
		}()
	}
	wg.Wait()
	close(bodies)
	for b := range bodies {
		if b != "/slow  #1" {
			t.Errorf("body %q, want the one worker answer", b)
		}
	}
	if n := app.n.Load(); n != 1 {
		t.Errorf("the worker got %d requests for 50 concurrent misses, want 1", n)
	}
}

// TestResponseCacheStale: past its freshness an entry is served while one
// request refreshes it, and in place of a failing worker's answer.
func TestResponseCacheStale(t *testing.T) {
	app := &cachingApp{}
	fw := startFake(t, "w1", 4, app.handler)
	h := startProxy(t, cacheConfig(time.Minute), fw)
	h.get("/short")
	waitFor(t, "the entry to expire", 3*time.Second, func() bool {
		resp, _ := h.get("/short")
		return resp.Header.Get("X-Cache-Status") != "HIT"
	})
	// The worker now fails: the stale entry answers.
	app.fail.Store(true)
	time.Sleep(1100 * time.Millisecond) // let the refreshed entry expire too
	resp, body := h.get("/short")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != "STALE" || !strings.HasPrefix(body, "/short") {
		t.Errorf("worker failing: %d %s %q, want 200 STALE and a cached body", resp.StatusCode, resp.Header.Get("X-Cache-Status"), body)
	}
	// Without stale, the failure shows.
	h.srv.SetConfig(cacheConfig(0))
	h.srv.PurgeCache("/", true)
	if resp, _ := h.get("/short"); resp.StatusCode != 500 {
		t.Errorf("no stale: %d, want the worker's 500", resp.StatusCode)
	}
}
