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

	"github.com/berth-dev/berth/proxy/http1"

	"github.com/berth-dev/berth/proxy/uwsgi"
)

// tryEnd is how one try on a server ended.
type tryEnd struct {
	done    bool // resp is the answer (or says the client is gone)
	resp    response
	begun   bool // the server may have begun on the request
	timeout bool
	why     string // for the log and the error page
}

// upstreamExchange sends r to a server of group g and returns its answer,
// trying other servers as the group's retry rules allow.
func (s *Server) upstreamExchange(rs *reqState, r *http.Request, st *settings, g *group, hasBody bool) response {
	rs.bodiless = !hasBody || rs.body.size() == 0
	gs := g.set.Load()
	var req []byte
	var err error
	if gs.proto == protoUwsgi {
		req, err = uwsgi.AppendPacket(rs.pkt, r, &rs.info, false)
	} else {
		req = appendHTTPRequest(rs.pkt, r, &rs.info, connInfoOf(r), st)
	}
	rs.pkt = req
	if err != nil {
		return berthError(rs, http.StatusRequestHeaderFieldsTooLarge, "berth: "+err.Error()+"\n")
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
				return backendFailed(rs, http.StatusBadGateway, "berth: upstream "+g.name+": no other server to try\n")
			}
			rs.rw.Header().Set("Retry-After", "1")
			if capped {
				return backendFailed(rs, http.StatusServiceUnavailable, "berth: upstream "+g.name+": every server is at its max_conns; retry later\n")
			}
			s.noLiveUpstream(rs, g)
			return backendFailed(rs, http.StatusBadGateway, "berth: upstream "+g.name+": no server is available (all failed, unhealthy or down)\n")
		}
		rs.worker, rs.wsock = p.label, p.label
		p.obs.requests.Inc()
		end := s.tryPeer(rs, r, st, gs, g, p, c, req, bodyInReq, deadline)
		if end.done {
			return end.resp
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
			s.reqLogf(rs, "upstream %s: server %s: %s %s: %s; retrying on another server", g.name, p.label, r.Method, r.URL.Path, end.why)
			continue
		}
		if gs.cfg.RetryTries > 1 {
			s.up.m.refused.WithLabelValues(g.name, why).Inc()
		}
		if end.timeout {
			s.reqLogf(rs, "upstream %s: server %s: %s %s: %s: 504", g.name, p.label, r.Method, r.URL.Path, end.why)
			return backendFailed(rs, http.StatusGatewayTimeout, fmt.Sprintf("berth: upstream %s: server %s did not answer within %s\n", g.name, p.label, time.Duration(gs.cfg.Timeout)))
		}
		note := ""
		if why == refusedBegun {
			note = "; not replayed on another server: it may have begun on it"
		}
		s.reqLogf(rs, "upstream %s: server %s: %s %s: %s: 502%s", g.name, p.label, r.Method, r.URL.Path, end.why, note)
		return backendFailed(rs, http.StatusBadGateway, "berth: upstream "+g.name+": the server failed to answer\n")
	}
}

// noLiveUpstream says, at most every 5 seconds per proxy, that a group had
// no server to take a request.
func (s *Server) noLiveUpstream(rs *reqState, g *group) {
	now := time.Now().UnixNano()
	last := s.lastNoUpstream.Load()
	if now-last < int64(5*time.Second) || !s.lastNoUpstream.CompareAndSwap(last, now) {
		return
	}
	s.reqLogf(rs, "upstream %s: no live server (failed, unhealthy or down): answering 502", g.name)
}

// idempotent methods (RFC 9110 §9.2.2) may be replayed when allowed.
func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// tryPeer sends the request to p (on c, or a new connection) and reads
// its answer: buffered whole (p given back at once), or a stream that holds
// the connection until the respond stage has relayed it. It always
// releases p.
func (s *Server) tryPeer(rs *reqState, r *http.Request, st *settings, gs *groupSet, g *group, p *peer, c *pconn, req []byte, bodyInReq bool, deadline time.Time) tryEnd {
	start := time.Now()
	rs.up.begin(start)
	streaming := false // a stream ends its own time (upstreamStream.end)
	defer func() {
		if !streaming && st.logUp {
			rs.up.end(time.Now())
		}
	}()
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
	var hd http1.Head
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
					return tryEnd{done: true, resp: s.unavailable(rs, nil, errOutOfFiles)}
				}
				s.metrics.upstreamError(kindDial)
				return fail(nil, resFailed, tryEnd{timeout: isTimeout(err) && !time.Now().Before(end), why: "connect: " + err.Error()})
			}
		}
		c.c.SetDeadline(end)
		c.cnt.n = 0
		n, err := c.raw.Write(req)
		if err != nil && c.reused && !isTimeout(err) {
			s.metrics.upstreamError(kindStale)
			c.close()
			g.noteStale(p)
			c = g.takeIdle(p)
			continue
		}
		if err == nil && !bodyInReq {
			if rs.body.inMemory() {
				_, err = c.raw.Write(rs.body.bytes())
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
		hd, err = http1.ReadHead(c.br, h, r.Method, &rs.head)
		if err == nil {
			break
		}
		var malformed *http1.BadResponse
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
	if hd.Status == http.StatusSwitchingProtocols {
		s.metrics.upstreamError(kindBadResponse)
		return fail(c, resFailed, tryEnd{begun: true, why: "answered 101 Switching Protocols, which berth does not relay"})
	}
	rs.rbody.Reset(c.br, hd)
	if hd.Stream {
		streaming = true
		rs.ustream = upstreamStream{s: s, rs: rs, st: st, gs: gs, g: g, p: p, c: c, hd: hd, took: took}
		return tryEnd{done: true, resp: response{src: srcStream, status: hd.Status, noBody: hd.NoBody, stream: &rs.ustream}}
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
	reuse := !hd.Close && c.br.Buffered() == 0
	if reuse {
		c.c.SetDeadline(time.Time{})
	}
	g.release(p, c, reuse, resOK, took)
	return tryEnd{done: true, resp: response{src: srcSpool, status: hd.Status, noBody: hd.NoBody}}
}

// upstreamStream is a server's streamed answer (X-Accel-Buffering: no,
// text/event-stream): the connection is held to the end and the group's
// timeout bounds the silence between two pieces.
type upstreamStream struct {
	s    *Server
	rs   *reqState
	st   *settings
	gs   *groupSet
	g    *group
	p    *peer
	c    *pconn
	hd   http1.Head
	took time.Duration
	buf  *[]byte
	res  result // resFailed once the body broke
}

func (us *upstreamStream) next() ([]byte, error) {
	if us.buf == nil {
		us.buf = getBuf()
	}
	us.c.c.SetReadDeadline(time.Now().Add(time.Duration(us.gs.cfg.Timeout)))
	buf := (*us.buf)[:cap(*us.buf)]
	n, err := us.rs.rbody.Read(buf)
	if err != nil && err != io.EOF {
		if isTimeout(err) {
			us.s.metrics.upstreamError(kindTimeout)
			us.s.reqLogf(us.rs, "upstream %s: server %s: streamed response silent for %s; cut", us.g.name, us.p.label, time.Duration(us.gs.cfg.Timeout))
		} else {
			us.s.metrics.upstreamError(kindBadResponse)
			us.s.reqLogf(us.rs, "upstream %s: server %s: streamed response broke: %v", us.g.name, us.p.label, err)
		}
		us.res = resFailed
	}
	return buf[:n], err
}

func (us *upstreamStream) end(clean bool) {
	if us.buf != nil {
		putBuf(us.buf)
		us.buf = nil
	}
	if us.st.logUp {
		us.rs.up.end(time.Now())
	}
	res := resOK
	if us.res == resFailed {
		res = resFailed
	}
	reuse := clean && !us.hd.Close && us.c.br.Buffered() == 0
	if reuse {
		us.c.c.SetDeadline(time.Time{})
	}
	us.g.release(us.p, us.c, reuse, res, us.took)
	us.c = nil
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
		b = append(b, in.ServerName...)
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
		b = append(b, in.RemoteAddr...) // a unix socket peer: the address it vouched for
	}
	b = append(b, "\r\nX-Forwarded-Proto: "...)
	b = append(b, in.Scheme...)
	b = append(b, "\r\n"...)
	if in.ContentLength != "" {
		b = append(b, "Content-Length: "...)
		b = append(b, in.ContentLength...)
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
