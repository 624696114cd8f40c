package proxy

// pipeline.go is a request's whole path through the proxy, read top to
// bottom: the stages in the order they run, each one call from here that
// never calls back (docs/internals.md, "The request path"). Like nginx's
// phases and Pingora's ProxyHttp, every request passes every stage; a stage
// that has the answer (a refusal, a redirect, a cache hit) returns it and the
// stages up to respond are skipped. Backends (berth's uwsgi and ASGI
// workers, upstream HTTP and uwsgi servers) only exchange: they return a
// response and never write to the client, so the respond stage is the one
// place that stores in the cache, compresses, adds berth's headers and
// writes. Static files and websockets are the exceptions that write
// themselves, said where they branch off.

import (
	"net/http"
	"strconv"
	"time"
)

// ServeHTTP answers one request, from every front (HTTP/1.1, TLS, HTTP/2).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := s.cfg.Load()
	rs := s.reqPool.Get().(*reqState)
	rs.begin(w)
	rs.start = start
	var ro routing

	// 1. Ingress: the framing verdict, the client's address and scheme,
	//    the request ID (set once, for every backend), the one request check.
	resp := s.ingress(rs, r, st)
	// 2. Route: TLS redirect and HSTS, the path, then static, an upstream
	//    group or a worker pool (the main app or a mount), and the cache
	//    in front of a backend.
	if resp.next() {
		resp = s.route(rs, r, st, &ro)
	}
	// 3. Access: the connection cap per client, then the location's
	//    redirect or fixed answer, rate limit, access rules and basic auth,
	//    once for every backend and for static files (access.go).
	if resp.next() {
		resp = s.checkAccess(rs, r, st, &ro)
	}
	// 4. Exchange: a static file (written by itself), the cache, or the
	//    request body read and a backend's answer.
	if resp.next() {
		resp = s.exchange(rs, r, st, &ro)
	}
	// 5. Respond: the cache stores, compression, berth's headers, the write.
	s.respond(rs, r, st, &ro, &resp)
	if rs.detached {
		return // a websocket's relay logs and counts it when it closes
	}
	// 6. Log and metrics.
	s.finish(rs, r, st, &ro, start)
}

// finishDetached is stage 6 for a request a websocket took over, run by its
// relay when it closes.
func (s *Server) finishDetached(rs *reqState, r *http.Request, st *settings) {
	rs.abort = false // the connection is the relay's, closed already
	var ro routing
	s.finish(rs, r, st, &ro, rs.start)
}

// ingress is stage 1. A head the http1.Framer refused never got here as it was:
// its synthetic stand-in is answered with the refusal.
func (s *Server) ingress(rs *reqState, r *http.Request, st *settings) response {
	ci := s.clientInfo(rs, r, st)
	rs.method, rs.uri, rs.proto = r.Method, r.RequestURI, r.Proto
	if st.requestID {
		rs.reqID = s.requestID(r, st, ci)
		rs.rw.reqID = rs.reqID
		rs.info.RequestID = rs.reqID
		// Every backend reads the ID from the request: the client's own
		// never reaches one (the uwsgi encoders, the ASGI head and the
		// upstream HTTP head all copy this field).
		r.Header["X-Request-Id"] = []string{rs.reqID}
	}
	if rej := refusal(ci, r); rej != nil {
		rs.method, rs.uri, rs.proto = rej.Line, "", ""
		s.metrics.refused.WithLabelValues(strconv.Itoa(rej.Status)).Inc()
		rs.rw.Header().Set("Connection", "close")
		return berthError(rs, rej.Status, "berth: bad request: "+rej.Reason+"\n")
	}
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		// A question to the server itself (RFC 9110 §9.3.7), not to
		// the app: nothing to add to an empty 200.
		return response{src: srcBytes, status: http.StatusOK}
	}
	if status, why := checkRequest(r); status != 0 {
		s.metrics.refused.WithLabelValues(strconv.Itoa(status)).Inc()
		h := rs.rw.Header()
		if r.ProtoMajor < 2 {
			// HTTP/2 frames each request itself: the connection's other
			// streams go on (x/net would turn this into GOAWAY).
			h.Set("Connection", "close")
		}
		if status == http.StatusMethodNotAllowed {
			h.Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		}
		return berthError(rs, status, "berth: "+why+"\n")
	}
	return response{src: srcNext}
}

// routeKind is where a request goes.
type routeKind uint8

const (
	routeWorkers  routeKind = iota // a worker pool: ro.rt
	routeStatic                    // a static mount: ro.mount, ro.rel
	routeUpstream                  // an upstream group: ro.group
)

// routing is stage 2's decision, read by the stages after it.
type routing struct {
	kind  routeKind
	mount *mount
	rel   string
	group *group
	// cache is the cache route in front of the backend; nil: not cached.
	cache *cacheRoute
	// fill is set when this request fills a cache entry; stale is the
	// entry it may fall back on when the backend fails (cache.go).
	fill  *fill
	stale *cacheEntry
	// loc is the request's location (access.go); nil: none matches.
	loc *locRules
}

// route is stage 2.
func (s *Server) route(rs *reqState, r *http.Request, st *settings, ro *routing) response {
	if s.acmeChallenge(rs, r) { // ACME: HTTP-01, before every route and the https redirect (acme.go)
		return response{src: srcNone}
	}
	rs.rw.fields = st.access.headers
	if len(st.access.hosts) > 0 {
		// A canonical-host redirect comes before anything, https too.
		if resp, ok := s.hostRedirect(rs, r, st); ok {
			return resp
		}
	}
	if ts := st.tls; ts != nil {
		if rs.info.Scheme != "https" {
			if ts.redirect {
				return redirectHTTPS(rs, r, ts)
			}
		} else if ts.hsts != nil {
			rs.rw.hsts = ts.hsts
		}
		if ts.altSvc != nil && r.ProtoMajor < 3 && connInfoOf(r).tls { // HTTP/3: Alt-Svc on TLS over TCP (h3.go)
			rs.rw.altSvc = ts.altSvc
		}
	}
	p := r.URL.Path
	n, ok := normalizePath(p)
	if ok && len(st.access.locs) > 0 {
		if ro.loc = st.access.location(n); ro.loc != nil {
			rs.rw.locFields = ro.loc.headers
		}
	}
	if len(st.mounts) > 0 {
		suspicious := hasDotDot(p) || hasEncodedSlash(r)
		if m, rel := st.match(n); ok && m != nil {
			if suspicious {
				return berthError(rs, http.StatusNotFound, "404 page not found\n")
			}
			ro.kind, ro.mount, ro.rel = routeStatic, m, rel
			return response{src: srcNext}
		}
		if suspicious {
			if m, _ := st.match(p); m != nil {
				return berthError(rs, http.StatusNotFound, "404 page not found\n")
			}
		}
	}
	if !ok {
		rs.rw.Header().Set("Connection", "close")
		return berthError(rs, http.StatusBadRequest, "berth: bad request path\n")
	}
	rs.info.PathInfo = n
	ro.kind = routeWorkers
	if st.routes != nil {
		if g := st.route(n); g != nil {
			ro.kind, ro.group = routeUpstream, g
		}
	}
	if ro.kind == routeWorkers {
		rs.rt = s.rt
		if len(st.pools) > 0 {
			if pool := st.poolFor(n); pool != "" {
				rs.rt = s.poolRouter(pool)
			}
		}
	}
	if st.cache != nil && !isWebsocket(r) {
		ro.cache = s.cacheRouteFor(rs, r, st)
	}
	return response{src: srcNext}
}

// exchange is stage 4.
func (s *Server) exchange(rs *reqState, r *http.Request, st *settings, ro *routing) response {
	if ro.kind == routeStatic {
		// Static files write themselves: sendfile, ranges, sidecars and
		// 304s are the file server's (static.go); its errors come back.
		return s.serveStatic(rs, r, st, ro.mount, ro.rel)
	}
	if ro.cache != nil {
		if resp, answered := s.cacheLookup(rs, r, st, ro); answered {
			return resp
		}
	}
	hasBody, resp := s.readBody(rs, r, st)
	if !resp.next() {
		return resp
	}
	if ro.kind == routeUpstream {
		return s.upstreamExchange(rs, r, st, ro.group, hasBody)
	}
	return s.workerExchange(rs, r, st, hasBody)
}

// finish is stage 6: the access log line, the metrics, and the request's
// state back to its pool.
func (s *Server) finish(rs *reqState, r *http.Request, st *settings, ro *routing, start time.Time) {
	if rs.releaseConn != nil {
		rs.releaseConn()
		rs.releaseConn = nil
	}
	if ro.fill != nil {
		s.cacheFillDone(ro) // waiting requests go on even if respond did not reach the store
	}
	status := rs.rw.status
	if status == 0 {
		status = 499 // nginx's code for a client that left before the answer
	}
	end := time.Now()
	dur := end.Sub(start)
	s.metrics.countCode(status)
	s.metrics.duration.Observe(dur.Seconds())
	if st.log != logOff {
		e := logEntry{
			when: end, remote: rs.info.RemoteAddr, method: rs.method, uri: rs.uri, proto: rs.proto,
			status: status, bytes: rs.rw.bytes, dur: dur, worker: rs.worker,
			referer: headerValue(r.Header, "Referer"), ua: headerValue(r.Header, "User-Agent"),
			reqID: rs.reqID, user: rs.user, wsock: rs.wsock, in: &rs.info, r: r,
		}
		if st.logUp {
			e.up = &rs.up
		}
		switch st.log {
		case logJSON:
			rs.line = appendJSON(rs.line[:0], &e)
		case logCustom:
			e.resp = rs.rw.Header()
			rs.line = appendCustom(rs.line[:0], st.format, &e)
		default:
			rs.line = appendCombined(rs.line[:0], &e)
		}
		s.alog.write(rs.line)
	}
	abort := rs.abort
	rs.end()
	s.reqPool.Put(rs)
	if abort {
		panic(http.ErrAbortHandler)
	}
}
