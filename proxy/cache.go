package proxy

// cache.go: the response cache (nginx uwsgi_cache), opt-in per URL prefix.
//
// Only GET (and HEAD, answered from a GET's entry) on a cached route is
// looked up, and only responses the app marks cacheable are stored:
// Cache-Control s-maxage or max-age, or Expires, capped by the route's
// max_ttl; never no-store, no-cache, private, Vary: *, Set-Cookie, a 206
// or a 5xx, a streamed response or one too large for memory. A request
// with Authorization or one of the route's session cookies bypasses the
// cache both ways. The key is the method, host, path and query, plus the
// values of the request headers the stored response's Vary names.
//
// Concurrent misses for a key wait for the one request that fills it
// (nginx proxy_cache_lock); an entry past its freshness but within the
// route's `stale` window is served to everyone but the one request that
// refreshes it, and in place of that request's answer when the worker
// fails (5xx, 502/503/504 from berth itself). The store is bounded by
// bytes, least recently used out first. Entries are kept as the worker
// sent them and compressed once per encoding when first asked for.

import (
	"container/list"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/control"
)

// X-Cache-Status values (nginx's $upstream_cache_status).
const (
	cacheHit      = "HIT"
	cacheMiss     = "MISS"
	cacheStale    = "STALE"
	cacheBypass   = "BYPASS"
	cacheExpired  = "EXPIRED"
	cacheUpdating = "UPDATING"
)

// lockTimeout bounds how long a miss waits for another request to fill the
// entry (nginx proxy_cache_lock_timeout); then it goes to a worker itself.
const lockTimeout = 5 * time.Second

// responseCache is the cache's compiled settings.
type responseCache struct {
	size   int64
	routes []*cacheRoute // longest URL first
}

type cacheRoute struct {
	url      string
	maxTTL   time.Duration
	stale    time.Duration
	sessions []string
}

func compileCache(c *control.Cache) (*responseCache, error) {
	if c == nil || len(c.Routes) == 0 {
		return nil, nil
	}
	if c.Size <= 0 {
		return nil, fmt.Errorf("proxy config: cache size must be more than 0")
	}
	rc := &responseCache{size: c.Size}
	for _, r := range c.Routes {
		if !strings.HasPrefix(r.URL, "/") || r.MaxTTL <= 0 || r.Stale < 0 {
			return nil, fmt.Errorf("proxy config: cache route %q: url must start with / and max_ttl be positive", r.URL)
		}
		rc.routes = append(rc.routes, &cacheRoute{url: r.URL, maxTTL: time.Duration(r.MaxTTL), stale: time.Duration(r.Stale), sessions: r.SessionCookies})
	}
	sort.SliceStable(rc.routes, func(i, j int) bool { return len(rc.routes[i].url) > len(rc.routes[j].url) })
	return rc, nil
}

func (rc *responseCache) match(p string) *cacheRoute {
	for _, r := range rc.routes {
		if strings.HasPrefix(p, r.url) {
			return r
		}
	}
	return nil
}

// cacheEntry is one stored response; immutable but for its encodings.
type cacheEntry struct {
	key       string
	primary   string
	host, uri string
	status    int
	header    http.Header
	body      []byte
	etag      string
	stored    time.Time
	age       time.Duration // Age the worker gave it
	expires   time.Time
	staleTill time.Time
	size      int64 // accounted bytes (guarded by the store's mutex)

	mu  sync.Mutex
	enc [3][]byte // compressed variants, made on first use
}

// fill is a request filling a key; others wait on done.
type fill struct {
	done    chan struct{}
	primary string
	route   *cacheRoute
	status  string // MISS or EXPIRED
}

// cacheStore holds the entries across config swaps. The zero value is
// ready to use.
type cacheStore struct {
	mu      sync.Mutex
	ll      *list.List // front: most recently used
	items   map[string]*list.Element
	vary    map[string][]string // primary key → the Vary names of its entries
	pending map[string]*fill
	bytes   int64
}

func (cs *cacheStore) init() {
	if cs.items == nil {
		cs.ll = list.New()
		cs.items = map[string]*list.Element{}
		cs.vary = map[string][]string{}
		cs.pending = map[string]*fill{}
	}
}

// primaryKey is method, host and target; HEAD shares GET's.
func primaryKey(r *http.Request) string {
	return "GET " + strings.ToLower(r.Host) + " " + r.RequestURI
}

// fullKey adds the values of the Vary'd request headers.
func fullKey(primary string, names []string, r *http.Request) string {
	if len(names) == 0 {
		return primary
	}
	var b strings.Builder
	b.WriteString(primary)
	for _, n := range names {
		b.WriteByte(0)
		b.WriteString(strings.Join(r.Header[n], ","))
	}
	return b.String()
}

// bypass says whether a request must not use the cache: it authenticates,
// or carries a session cookie (its page may be its own).
func (cr *cacheRoute) bypass(r *http.Request) bool {
	if _, ok := r.Header["Authorization"]; ok {
		return true
	}
	if len(cr.sessions) == 0 {
		return false
	}
	for _, c := range r.Header["Cookie"] {
		for c != "" {
			var pair string
			pair, c, _ = strings.Cut(c, ";")
			name, _, _ := strings.Cut(pair, "=")
			name = strings.TrimSpace(name)
			for _, s := range cr.sessions {
				if name == s {
					return true
				}
			}
		}
	}
	return false
}

// cacheRouteFor is the cache route in front of r's backend, or nil when
// r is not the cache's: not on a cached URL, not GET or HEAD, or bypassing
// it (an Authorization, a session cookie).
func (s *Server) cacheRouteFor(rs *reqState, r *http.Request, st *settings) *cacheRoute {
	route := st.cache.match(rs.info.PathInfo)
	if route == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return nil
	}
	if route.bypass(r) {
		s.noteCache(rs, cacheBypass)
		return nil
	}
	return route
}

// cacheLookup answers r from the cache when it can: a fresh entry (HIT), a
// stale one while another request refreshes it (UPDATING). Otherwise the
// request goes to its backend; when it is the one to fill the key, ro.fill
// is set (and ro.stale to the entry it may fall back on), and concurrent
// misses for the key wait for it (nginx's proxy_cache_lock).
func (s *Server) cacheLookup(rs *reqState, r *http.Request, st *settings, ro *routing) (response, bool) {
	cs := &s.cache
	primary := primaryKey(r)
	waited := false
	for {
		now := time.Now()
		cs.mu.Lock()
		cs.init()
		var e *cacheEntry
		if el, ok := cs.items[fullKey(primary, cs.vary[primary], r)]; ok {
			e = el.Value.(*cacheEntry)
			cs.ll.MoveToFront(el)
		}
		if e != nil && now.Before(e.expires) {
			cs.mu.Unlock()
			return s.entryResponse(rs, r, e, cacheHit, now), true
		}
		stale := e != nil && now.Before(e.staleTill)
		if r.Method == http.MethodHead && !stale {
			cs.mu.Unlock()
			s.noteCache(rs, cacheMiss)
			return response{}, false
		}
		f := cs.pending[primary]
		if f != nil || r.Method == http.MethodHead {
			if stale {
				cs.mu.Unlock()
				return s.entryResponse(rs, r, e, cacheUpdating, now), true
			}
			cs.mu.Unlock()
			if waited {
				// Filled and still no entry: the answer was not cacheable.
				s.noteCache(rs, cacheMiss)
				return response{}, false
			}
			t := time.NewTimer(lockTimeout)
			select {
			case <-f.done:
				t.Stop()
				waited = true
				continue
			case <-t.C:
				s.noteCache(rs, cacheMiss)
				return response{}, false
			case <-r.Context().Done():
				t.Stop()
				return response{src: srcNone}, true // the client left: 499
			}
		}
		f = &fill{done: make(chan struct{}), primary: primary, route: ro.cache, status: cacheMiss}
		if e != nil {
			f.status = cacheExpired
		}
		cs.pending[primary] = f
		cs.mu.Unlock()
		// The entry must be a whole answer, not the 304 this client's
		// validators would get (nginx drops them the same way).
		delete(r.Header, "If-None-Match")
		delete(r.Header, "If-Modified-Since")
		ro.fill = f
		if stale {
			ro.stale = e // its status is known once the refresh has answered
		} else {
			s.noteCache(rs, f.status)
		}
		return response{}, false
	}
}

// cacheFill is the respond stage's part for a request that filled a key:
// a refresh that failed (berth's 502/503/504, or a 5xx) is replaced by the
// stale entry when there is one (STALE); a buffered answer is stored when
// it may be.
func (s *Server) cacheFill(rs *reqState, r *http.Request, st *settings, ro *routing, resp response) response {
	if ro.stale != nil {
		if resp.failed || resp.status >= 500 {
			if resp.src == srcStream {
				resp.stream.end(false)
			}
			clear(rs.rw.Header())
			return s.entryResponse(rs, r, ro.stale, cacheStale, time.Now())
		}
		s.noteCache(rs, ro.fill.status)
	}
	switch {
	case resp.berth || resp.failed:
	case resp.src == srcSpool && rs.resp.inMemory():
		s.storeResponse(rs, r, st, ro.fill, resp.status, rs.resp.bytes())
	case resp.src == srcBytes && resp.entry == nil:
		s.storeResponse(rs, r, st, ro.fill, resp.status, resp.b)
	}
	s.cacheFillDone(ro)
	return resp
}

// cacheFillDone lets the requests waiting for ro's key go on.
func (s *Server) cacheFillDone(ro *routing) {
	f := ro.fill
	if f == nil {
		return
	}
	ro.fill = nil
	cs := &s.cache
	cs.mu.Lock()
	delete(cs.pending, f.primary)
	cs.mu.Unlock()
	close(f.done)
}

// noteCache sets the X-Cache-Status the response will carry and counts it.
func (s *Server) noteCache(rs *reqState, status string) {
	rs.rw.xcache = status
	s.edge.cacheStatus[status].Inc()
}

// entryResponse is the answer from e: its fields, Age, and its body (or 304
// for a matching If-None-Match). Compression takes e's kept variants.
func (s *Server) entryResponse(rs *reqState, r *http.Request, e *cacheEntry, status string, now time.Time) response {
	s.noteCache(rs, status)
	h := rs.rw.Header()
	for k, v := range e.header {
		h[k] = v[:len(v):len(v)] // shared: an append must copy
	}
	age := e.age + now.Sub(e.stored)
	h["Age"] = []string{strconv.FormatInt(int64(age/time.Second), 10)}
	if e.etag != "" && etagMatch(r.Header["If-None-Match"], e.etag) {
		delete(h, "Content-Length")
		return response{src: srcBytes, status: http.StatusNotModified, noBody: true}
	}
	noBody := e.status == http.StatusNoContent || e.status == http.StatusNotModified
	return response{src: srcBytes, status: e.status, b: e.body, entry: e, noBody: noBody}
}

// etagMatch is If-None-Match's weak comparison (RFC 9110 §13.1.2).
func etagMatch(vals []string, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	for _, v := range vals {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			t = strings.TrimSpace(t)
			if t == "*" || strings.TrimPrefix(t, "W/") == etag {
				return true
			}
		}
	}
	return false
}

// encoded returns e's body in enc, compressing it the first time.
func (cs *cacheStore) encoded(e *cacheEntry, enc uint8) []byte {
	e.mu.Lock()
	b := e.enc[enc]
	made := false
	if b == nil {
		var sink byteSink
		z := getEncoder(enc, false, &sink)
		z.Write(e.body)
		z.Close()
		putEncoder(enc, false, z)
		b, made = sink.b, true
		e.enc[enc] = b
	}
	e.mu.Unlock()
	if made {
		cs.mu.Lock()
		if el, ok := cs.items[e.key]; ok && el.Value == e {
			e.size += int64(len(b))
			cs.bytes += int64(len(b))
		}
		cs.mu.Unlock()
	}
	return b
}

// freshness is how long a response may be served from the cache, from its
// Cache-Control and Expires, capped at max; 0: do not store it.
func freshness(h http.Header, r *http.Request, max time.Duration, now time.Time) time.Duration {
	var maxAge, sMaxAge time.Duration = -1, -1
	for _, v := range h["Cache-Control"] {
		for v != "" {
			var d string
			d, v, _ = strings.Cut(v, ",")
			name, arg, _ := strings.Cut(strings.TrimSpace(d), "=")
			name = strings.ToLower(strings.TrimSpace(name))
			arg = strings.Trim(strings.TrimSpace(arg), `"`)
			switch name {
			case "no-store", "no-cache", "private":
				return 0
			case "max-age", "s-maxage":
				n, err := strconv.ParseInt(arg, 10, 64)
				if err != nil || n < 0 {
					return 0
				}
				if name == "max-age" {
					maxAge = time.Duration(min(n, 1<<32)) * time.Second
				} else {
					sMaxAge = time.Duration(min(n, 1<<32)) * time.Second
				}
			}
		}
	}
	ttl := time.Duration(0)
	switch {
	case sMaxAge >= 0:
		ttl = sMaxAge
	case maxAge >= 0:
		ttl = maxAge
	default:
		exp := h["Expires"]
		if len(exp) != 1 {
			return 0
		}
		t, err := http.ParseTime(exp[0])
		if err != nil {
			return 0
		}
		base := now
		if d := h["Date"]; len(d) == 1 {
			if dt, err := http.ParseTime(d[0]); err == nil {
				base = dt
			}
		}
		ttl = t.Sub(base)
	}
	if a := h["Age"]; len(a) == 1 {
		if n, err := strconv.ParseInt(a[0], 10, 64); err == nil && n > 0 {
			ttl -= time.Duration(n) * time.Second
		}
	}
	return min(ttl, max)
}

// storeResponse keeps a whole backend answer (body) when it is cacheable.
// It runs in the respond stage before the answer is compressed or sent.
func (s *Server) storeResponse(rs *reqState, r *http.Request, st *settings, f *fill, status int, body []byte) {
	if r.Method != http.MethodGet || status >= 500 || status < 200 ||
		status == http.StatusPartialContent || status == http.StatusNotModified {
		return
	}
	h := rs.rw.Header()
	if _, ok := h["Set-Cookie"]; ok {
		return
	}
	limit := st.cache.size
	if int64(len(body)) > limit/8 {
		return
	}
	now := time.Now()
	ttl := freshness(h, r, f.route.maxTTL, now)
	if ttl <= 0 {
		return
	}
	var names []string
	for _, v := range h["Vary"] {
		for _, n := range strings.Split(v, ",") {
			n = strings.TrimSpace(n)
			if n == "*" {
				return
			}
			if n != "" {
				names = append(names, http.CanonicalHeaderKey(n))
			}
		}
	}
	sort.Strings(names)
	hdr := h.Clone()
	delete(hdr, "Content-Length")
	delete(hdr, "Age")
	var age time.Duration
	if a := h["Age"]; len(a) == 1 {
		if n, err := strconv.ParseInt(a[0], 10, 64); err == nil && n > 0 {
			age = time.Duration(n) * time.Second
		}
	}
	e := &cacheEntry{
		primary: f.primary, host: strings.ToLower(r.Host), uri: r.RequestURI,
		status: status, header: hdr, body: append([]byte(nil), body...),
		stored: now, age: age, expires: now.Add(ttl), staleTill: now.Add(ttl + f.route.stale),
	}
	if et := h["Etag"]; len(et) == 1 {
		e.etag = et[0]
	}
	e.key = fullKey(f.primary, names, r)
	size := int64(len(e.body)) + int64(len(e.key)) + 512 // the header map, roughly
	e.size = size
	cs := &s.cache
	cs.mu.Lock()
	cs.init()
	if old, ok := cs.items[e.key]; ok {
		cs.remove(old)
	}
	cs.vary[f.primary] = names
	cs.items[e.key] = cs.ll.PushFront(e)
	cs.bytes += size
	for cs.bytes > limit && cs.ll.Len() > 0 {
		cs.remove(cs.ll.Back())
	}
	n, b := cs.ll.Len(), cs.bytes
	cs.mu.Unlock()
	s.edge.cacheEntries.Set(float64(n))
	s.edge.cacheBytes.Set(float64(b))
}

func (cs *cacheStore) remove(el *list.Element) {
	e := el.Value.(*cacheEntry)
	cs.ll.Remove(el)
	delete(cs.items, e.key)
	cs.bytes -= e.size
}

// PurgeCache removes entries: those whose path and query are exactly uri
// (any host, any variant), or, with prefix, those whose path and query
// start with it ("/" purges everything). It returns how many went.
func (s *Server) PurgeCache(uri string, prefix bool) int {
	cs := &s.cache
	cs.mu.Lock()
	defer func() {
		n, b := 0, int64(0)
		if cs.ll != nil {
			n, b = cs.ll.Len(), cs.bytes
		}
		cs.mu.Unlock()
		s.edge.cacheEntries.Set(float64(n))
		s.edge.cacheBytes.Set(float64(b))
	}()
	if cs.items == nil {
		return 0
	}
	n := 0
	for el := cs.ll.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*cacheEntry)
		if e.uri == uri || prefix && strings.HasPrefix(e.uri, uri) {
			cs.remove(el)
			n++
		}
		el = next
	}
	return n
}

// purgeHandler serves POST /cache/purge?path=/x or ?prefix=/blog/ on the
// proxy's internal socket; the admin endpoint forwards to it.
func (s *Server) purgeHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "POST, DELETE")
		http.Error(w, "use POST /cache/purge?path=/page or ?prefix=/blog/", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	path, prefix := q.Get("path"), q.Get("prefix")
	if (path == "") == (prefix == "") || !strings.HasPrefix(path+prefix, "/") {
		http.Error(w, "give exactly one of path=/page?query (one URL) or prefix=/blog/ (every URL under it; / for all)", http.StatusBadRequest)
		return
	}
	var n int
	if path != "" {
		n = s.PurgeCache(path, false)
	} else {
		n = s.PurgeCache(prefix, true)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"purged\": %d}\n", n)
}

// CacheHandler is the proxy's internal purge endpoint.
func (s *Server) CacheHandler() http.Handler { return http.HandlerFunc(s.purgeHandler) }

// clearCache drops every entry (the cache was turned off).
func (s *Server) clearCache() { s.PurgeCache("/", true) }
