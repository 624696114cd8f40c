package proxy

// upexchange.go: a request routed to an upstream group. The body is
// buffered, the request encoded once (HTTP/1.1 or uwsgi), then tried on
// servers the group picks until one answers or the retry rules say stop.
//
// The retry rule is the local workers' one: a request a server may have
// begun is never replayed elsewhere, unless it is idempotent and the group
// allows it (retry.idempotent); one that timed out never is. A request the
// server never had (connect refused, nothing written, a bodiless request
// the server closed unread) is sent to the next server, within retry.tries,
// the retry budget and retry.timeout.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// tryEnd is how one try on a server ended.
type tryEnd struct {
	done    bool // the client has its answer (or is gone)
	begun   bool // the server may have begun on the request
	timeout bool
	why     string // for the log and the error page
}

func (s *Server) proxyUpstream(rs *reqState, r *http.Request, st *settings, g *group) {
	w := &rs.rw
	hasBody, ok := s.readBody(rs, r, st)
	if !ok {
		return
	}
	rs.bodiless = !hasBody || rs.body.size() == 0
	gs := g.set.Load()
	var req []byte
	var err error
	if gs.proto == protoUwsgi {
		req, err = appendPacket(rs.pkt, r, &rs.info, false)
	} else {
		req = appendHTTPRequest(rs.pkt, r, &rs.info, connInfoOf(r), st)
	}
	rs.pkt = req
	if err != nil {
		plainError(w, http.StatusRequestHeaderFieldsTooLarge, "berth: "+err.Error()+"\n")
		return
	}
	bodyInReq := !hasBody || (rs.body.inMemory() && rs.body.size() <= bodyInPacket)
	if hasBody && bodyInReq {
		req = append(req, rs.body.bytes()...)
		rs.pkt = req
	}
	var keyHash uint32
	if gs.key != nil {
		keyHash = gs.key.sum(r, &rs.info)
	}
	var deadline time.Time
	if gs.cfg.RetryTimeout > 0 {
		deadline = time.Now().Add(time.Duration(gs.cfg.RetryTimeout))
	}
	var triedBuf [4]*peer
	tried := triedBuf[:0]
	replayable := idempotent(r.Method) && gs.cfg.RetryIdempotent
	for attempt := 0; ; attempt++ {
		p, c, capped := g.acquire(keyHash, tried, attempt == 0)
		if p == nil {
			if attempt > 0 {
				s.up.m.refused.WithLabelValues(g.name, refusedTries).Inc()
				plainError(w, http.StatusBadGateway, "berth: upstream "+g.name+": no other server to try\n")
				return
			}
			w.Header().Set("Retry-After", "1")
			if capped {
				plainError(w, http.StatusServiceUnavailable, "berth: upstream "+g.name+": every server is at its max_conns; retry later\n")
				return
			}
			s.noLiveUpstream(g)
			plainError(w, http.StatusBadGateway, "berth: upstream "+g.name+": no server is available (all failed, unhealthy or down)\n")
			return
		}
		rs.worker = p.label
		p.obs.requests.Inc()
		end := s.tryPeer(rs, r, st, gs, g, p, c, req, bodyInReq, deadline)
		if end.done {
			return
		}
		tried = append(tried, p)
		why := ""
		switch {
		case end.timeout:
			why = refusedTimeout
		case end.begun && !replayable:
			why = refusedBegun
		case attempt+1 >= gs.cfg.RetryTries:
			why = refusedTries
		case !deadline.IsZero() && !time.Now().Before(deadline):
			why = refusedTotal
		case !g.takeRetry():
			why = refusedBudget
		}
		if why == "" {
			reason := "unsent"
			if end.begun {
				reason = "replayed"
			}
			s.up.m.retries.WithLabelValues(g.name, reason).Inc()
			s.logf("upstream %s: server %s: %s %s: %s; retrying on another server", g.name, p.label, r.Method, r.URL.Path, end.why)
			continue
		}
		if gs.cfg.RetryTries > 1 {
			s.up.m.refused.WithLabelValues(g.name, why).Inc()
		}
		if end.timeout {
			s.logf("upstream %s: server %s: %s %s: %s: 504", g.name, p.label, r.Method, r.URL.Path, end.why)
			plainError(w, http.StatusGatewayTimeout, fmt.Sprintf("berth: upstream %s: server %s did not answer within %s\n", g.name, p.label, time.Duration(gs.cfg.Timeout)))
			return
		}
		note := ""
		if why == refusedBegun {
			note = "; not replayed on another server: it may have begun on it"
		}
		s.logf("upstream %s: server %s: %s %s: %s: 502%s", g.name, p.label, r.Method, r.URL.Path, end.why, note)
		plainError(w, http.StatusBadGateway, "berth: upstream "+g.name+": the server failed to answer\n")
		return
	}
}

// noLiveUpstream says, at most every 5 seconds per proxy, that a group had
// no server to take a request.
func (s *Server) noLiveUpstream(g *group) {
	now := time.Now().UnixNano()
	last := s.lastNoUpstream.Load()
	if now-last < int64(5*time.Second) || !s.lastNoUpstream.CompareAndSwap(last, now) {
		return
	}
	s.logf("upstream %s: no live server (failed, unhealthy or down): answering 502", g.name)
}

// idempotent methods (RFC 9110 §9.2.2) may be replayed when allowed.
func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// tryPeer sends the request to p (on c, or a new connection) and relays
// its answer. It always releases p.
func (s *Server) tryPeer(rs *reqState, r *http.Request, st *settings, gs *groupSet, g *group, p *peer, c *pconn, req []byte, bodyInReq bool, deadline time.Time) tryEnd {
	start := time.Now()
	end := start.Add(time.Duration(gs.cfg.Timeout))
	if !deadline.IsZero() && deadline.Before(end) {
		end = deadline
	}
	h := rs.rw.Header()
	fail := func(c *pconn, res result, e tryEnd) tryEnd {
		clear(h)
		g.release(p, c, false, res, 0)
		return e
	}
	var hd respHead
	for {
		if c != nil && c.unsolicited() {
			// Closed (or written to) by the server while it sat in the
			// pool: not this request's fault, and not its retry.
			s.metrics.upstreamError(kindStale)
			c.close()
			g.noteStale(p)
			c = g.takeIdle(p)
			continue
		}
		if c == nil {
			var err error
			if c, err = p.dial(min(time.Duration(gs.cfg.ConnectTimeout), time.Until(end))); err != nil {
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					g.release(p, nil, false, resNeutral, 0)
					s.unavailable(rs, nil, errOutOfFiles)
					return tryEnd{done: true}
				}
				s.metrics.upstreamError(kindDial)
				return fail(nil, resFailed, tryEnd{timeout: isTimeout(err) && !time.Now().Before(end), why: "connect: " + err.Error()})
			}
		}
		c.c.SetDeadline(end)
		c.cnt.n = 0
		n, err := c.raw.write(req)
		if err != nil && c.reused && !isTimeout(err) {
			s.metrics.upstreamError(kindStale)
			c.close()
			g.noteStale(p)
			c = g.takeIdle(p)
			continue
		}
		if err == nil && !bodyInReq {
			if rs.body.inMemory() {
				_, err = c.raw.write(rs.body.bytes())
			} else {
				var f *os.File
				if f, err = rs.body.file(); err == nil {
					_, err = io.Copy(c.c, f)
				}
			}
			n = len(req) + 1 // the head went out: begun
		}
		if err != nil {
			s.metrics.upstreamError(kindWrite)
			return fail(c, resFailed, tryEnd{begun: n > 0, timeout: isTimeout(err), why: "sending the request: " + err.Error()})
		}
		hd, err = readHead(c.br, h, r.Method, &rs.head)
		if err == nil {
			break
		}
		var malformed *badResponse
		switch {
		case isTimeout(err):
			s.metrics.upstreamError(kindTimeout)
			return fail(c, resFailed, tryEnd{begun: true, timeout: true, why: "no response within the timeout"})
		case errors.As(err, &malformed) || c.cnt.n > 0:
			s.metrics.upstreamError(kindBadResponse)
			return fail(c, resFailed, tryEnd{begun: true, why: "bad response: " + err.Error()})
		}
		// Closed before any response byte. A reset with a bodiless
		// request unread means the server never began on it (it reads a
		// whole head before it calls anything); on a pooled connection
		// that is the keep-alive race (the server closed it as we
		// wrote): a fresh connection to the same server, not a retry.
		unread := errors.Is(err, syscall.ECONNRESET) && rs.bodiless
		if unread && c.reused {
			s.metrics.upstreamError(kindStale)
			clear(h)
			c.close()
			g.noteStale(p)
			c = nil
			continue
		}
		s.metrics.upstreamError(kindReset)
		return fail(c, resFailed, tryEnd{begun: !unread, why: "closed the connection without answering (" + err.Error() + ")"})
	}
	took := time.Since(start)
	p.obs.latency.Observe(took.Seconds())
	if hd.status == http.StatusSwitchingProtocols {
		s.metrics.upstreamError(kindBadResponse)
		return fail(c, resFailed, tryEnd{begun: true, why: "answered 101 Switching Protocols, which berth does not relay"})
	}
	rs.rbody.reset(c.br, hd)
	if hd.stream {
		s.streamUpstream(rs, gs, g, p, c, hd, took)
		return tryEnd{done: true}
	}
	rs.resp.reset(respMemLimit, s.opts.TempDir)
	if err := rs.resp.readFrom(&rs.rbody, 0, nil); err != nil {
		if isTimeout(err) {
			s.metrics.upstreamError(kindTimeout)
			return fail(c, resFailed, tryEnd{begun: true, timeout: true, why: "response body not read within the timeout"})
		}
		s.metrics.upstreamError(kindBadResponse)
		return fail(c, resFailed, tryEnd{begun: true, why: "reading the response body: " + err.Error()})
	}
	reuse := !hd.close && c.br.Buffered() == 0
	if reuse {
		c.c.SetDeadline(time.Time{})
	}
	g.release(p, c, reuse, resOK, took)
	s.relayBuffered(rs, r, st, hd)
	return tryEnd{done: true}
}

// streamUpstream relays a response as it comes (X-Accel-Buffering: no,
// text/event-stream), flushing each chunk; the connection is held to the
// end and the group's timeout bounds the silence between two chunks.
func (s *Server) streamUpstream(rs *reqState, gs *groupSet, g *group, p *peer, c *pconn, hd respHead, took time.Duration) {
	w := &rs.rw
	w.WriteHeader(hd.status)
	w.Flush()
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:cap(*bp)]
	clean := false
	res := resOK
	for {
		c.c.SetReadDeadline(time.Now().Add(time.Duration(gs.cfg.Timeout)))
		n, err := rs.rbody.Read(buf)
		if n > 0 {
			rc.SetWriteDeadline(time.Now().Add(sendTimeout))
			if _, werr := w.Write(buf[:n]); werr != nil {
				break // the client left
			}
			w.Flush()
		}
		if err == io.EOF {
			clean = true
			break
		}
		if err != nil {
			if isTimeout(err) {
				s.metrics.upstreamError(kindTimeout)
				s.logf("upstream %s: server %s: streamed response silent for %s; cut", g.name, p.label, time.Duration(gs.cfg.Timeout))
			} else {
				s.metrics.upstreamError(kindBadResponse)
				s.logf("upstream %s: server %s: streamed response broke: %v", g.name, p.label, err)
			}
			res = resFailed
			rs.abort = true
			break
		}
	}
	reuse := clean && !hd.close && c.br.Buffered() == 0
	if reuse {
		c.c.SetDeadline(time.Time{})
	}
	g.release(p, c, reuse, res, took)
}

// appendHTTPRequest appends r as an HTTP/1.1 request head to b[:0]:
// the client's fields minus the hop-by-hop ones (RFC 9110 §7.6.1, and
// those Connection names), names with an underscore (as the uwsgi path
// drops them: X_Forwarded_For must not pass for X-Forwarded-For), and the
// forwarding fields, which berth sets itself. X-Forwarded-For keeps the
// client's list only when the client is a trusted proxy.
func appendHTTPRequest(b []byte, r *http.Request, in *reqInfo, ci *connInfo, st *settings) []byte {
	b = append(b[:0], r.Method...)
	b = append(b, ' ')
	if uri := r.RequestURI; strings.HasPrefix(uri, "/") || uri == "*" {
		b = append(b, uri...)
	} else {
		b = append(b, r.URL.RequestURI()...) // absolute-form: origin-form upstream
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	if r.Host != "" {
		b = append(b, r.Host...)
	} else {
		b = append(b, in.serverName...)
	}
	b = append(b, "\r\n"...)
	conn := r.Header["Connection"]
	for name, vals := range r.Header {
		switch name {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
			"Host", "Content-Length", "Expect", "X-Forwarded-For", "X-Forwarded-Proto":
			continue
		}
		if strings.IndexByte(name, '_') >= 0 || (len(conn) > 0 && namedIn(conn, name)) {
			continue
		}
		for _, v := range vals {
			b = append(b, name...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "X-Forwarded-For: "...)
	if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 && st.isTrusted(ci.remoteIP) {
		for _, v := range prior {
			b = append(b, v...)
			b = append(b, ", "...)
		}
	}
	if ci.remoteIP.IsValid() {
		b = append(b, ci.remoteHost...)
	} else {
		b = append(b, in.remoteAddr...) // a unix socket peer: the address it vouched for
	}
	b = append(b, "\r\nX-Forwarded-Proto: "...)
	b = append(b, in.scheme...)
	b = append(b, "\r\n"...)
	if in.contentLength != "" {
		b = append(b, "Content-Length: "...)
		b = append(b, in.contentLength...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// namedIn says whether a Connection field lists name.
func namedIn(conn []string, name string) bool {
	for _, v := range conn {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}
