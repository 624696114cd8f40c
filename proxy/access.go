package proxy

// access.go is stage 3 of the request path (pipeline.go): nginx's duties of
// protecting the app, run once per request for every backend and for static
// files, in nginx's order (config/locations.go): the request's location was
// chosen by the route stage; here the connection limit per client (503),
// then the location's redirect or fixed answer, its rate limit (429), its
// access rules (403) and its basic auth (401). The fields berth sets on
// every response and the error pages are the respond stage's
// (respWriter.stamp, errorPage).

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/access/connlimit"
	"github.com/berth-dev/berth/access/htpasswd"
	"github.com/berth-dev/berth/access/ratelimit"
	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
	"github.com/prometheus/client_golang/prometheus"
)

// accessRules are a config's rules, compiled. The zero value has none.
type accessRules struct {
	hosts []config.Host
	locs  []*locRules
	// headers are proxy.headers, set on every response.
	headers []fieldOp
	// pages are the error pages by status, as read by the supervisor.
	pages map[int][]byte
	// conns caps the requests in progress per client; nil: no cap.
	conns *connlimit.Limiter
}

// locRules is one location, compiled.
type locRules struct {
	loc     config.Location
	label   string
	limiter *ratelimit.Limiter // nil: no rate limit
	key     hashKey            // the limit's key, when it has variables
	keyKind uint8              // keyClient, keyGlobal or keyVars
	users   *htpasswd.File     // nil: no basic auth
	realm   string
	headers []fieldOp
}

const (
	keyClient uint8 = iota
	keyGlobal
	keyVars
)

// fieldOp sets (or, with remove, deletes) a response field.
type fieldOp struct {
	name   string // canonical
	value  []string
	remove bool
}

func compileFields(m map[string]string) []fieldOp {
	ops := make([]fieldOp, 0, len(m))
	for k, v := range m {
		op := fieldOp{name: http.CanonicalHeaderKey(k)}
		if v == "" {
			op.remove = true
		} else {
			op.value = []string{v}
		}
		ops = append(ops, op)
	}
	return ops
}

// accessState is what the rules keep across config swaps: each rate
// limit's buckets by its identity (config.Location.LimitID), so a reload
// that keeps a limit keeps every client's bucket; and the connection
// counter.
type accessState struct {
	mu       sync.Mutex
	limiters map[string]*ratelimit.Limiter
	conns    *connlimit.Limiter
	connMax  int
	rejected *prometheus.CounterVec
}

func newAccessState(reg *prometheus.Registry) *accessState {
	a := &accessState{limiters: map[string]*ratelimit.Limiter{}}
	a.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_access_rejected_total",
		Help: "Requests refused by the access rules, by reason (rate, connections, deny, auth) and location (\"\" for the proxy-wide connection limit).",
	}, []string{"reason", "location"})
	reg.MustRegister(a.rejected)
	return a
}

// compile builds p's rules, reusing the state of the limits it keeps. On
// error nothing of the old state is dropped.
func (a *accessState) compile(p control.Proxy) (*accessRules, error) {
	r := &accessRules{hosts: p.Hosts, headers: compileFields(p.Headers), pages: p.ErrorPages}
	a.mu.Lock()
	defer a.mu.Unlock()
	keep := map[string]*ratelimit.Limiter{}
	for _, l := range p.Locations {
		lr := &locRules{loc: l, label: l.Label(), headers: compileFields(l.Headers)}
		if lim := l.Limit; lim != nil {
			o := ratelimit.Options{Rate: float64(lim.Rate.Requests) / lim.Rate.Per.D().Seconds(), Burst: lim.Burst, NoDelay: lim.NoDelay, Delay: lim.Delay}
			id := l.LimitID()
			var err error
			if old := a.limiters[id]; old != nil {
				lr.limiter, err = old.With(o)
			} else {
				lr.limiter, err = ratelimit.New(o)
			}
			if err != nil {
				return nil, fmt.Errorf("location %s: limit: %w", lr.label, err)
			}
			keep[id] = lr.limiter
			switch lim.Key {
			case "", config.LimitKeyClient, "$remote_addr", "$binary_remote_addr":
				lr.keyKind = keyClient
			case config.LimitKeyGlobal:
				lr.keyKind = keyGlobal
			default:
				k, ok := compileKey(lim.Key)
				if !ok {
					return nil, fmt.Errorf("location %s: limit key %q: not a key berth can build", lr.label, lim.Key)
				}
				lr.keyKind, lr.key = keyVars, k
			}
		}
		if l.Auth != nil && l.Auth.Basic != nil {
			data, ok := p.Htpasswd[l.Auth.Basic.Users]
			if !ok {
				return nil, fmt.Errorf("location %s: the users file %s was not sent", lr.label, l.Auth.Basic.Users)
			}
			f, err := htpasswd.Parse(l.Auth.Basic.Users, data)
			if err != nil {
				return nil, err
			}
			lr.users, lr.realm = f, l.Auth.Basic.Realm
			if lr.realm == "" {
				lr.realm = config.DefaultRealm
			}
		}
		r.locs = append(r.locs, lr)
	}
	if n := p.ConnectionsPerClient; n > 0 {
		if a.conns == nil || a.connMax != n {
			c, err := connlimit.New(connlimit.Options{Max: n})
			if err != nil {
				return nil, fmt.Errorf("proxy.limits.connections_per_client: %w", err)
			}
			// Requests in progress on the old counter release into it;
			// the new one counts from now.
			a.conns, a.connMax = c, n
		}
		r.conns = a.conns
	} else {
		a.conns, a.connMax = nil, 0
	}
	a.limiters = keep
	return r, nil
}

// location is the request's location (nginx's rules: the exact one, else
// the longest prefix of the normalized path), nil when none matches.
func (r *accessRules) location(p string) *locRules {
	var best *locRules
	for _, lr := range r.locs {
		l := &lr.loc
		switch {
		case l.Exact != "":
			if l.Exact == p {
				return lr
			}
		case strings.HasPrefix(p, l.Path) && (best == nil || len(l.Path) > len(best.loc.Path)):
			best = lr
		}
	}
	return best
}

// hostRedirect answers a request whose Host matches a hosts entry: the
// canonical-host redirect, before anything else.
func (s *Server) hostRedirect(rs *reqState, r *http.Request, st *settings) (response, bool) {
	h := config.SelectHost(st.access.hosts, r.Host)
	if h == nil {
		return response{}, false
	}
	return s.redirect(rs, r, h.Redirect, nil), true
}

// redirect answers with rd's status and Location, its variables filled in
// from r (lr's location gives $rest).
func (s *Server) redirect(rs *reqState, r *http.Request, rd config.Redirect, lr *locRules) response {
	target := rd.Target(func(name string) string {
		switch name {
		case "scheme":
			return rs.info.Scheme
		case "host":
			return hostOnly(r.Host)
		case "request_uri":
			return r.RequestURI
		case "uri":
			return rs.info.PathInfo
		case "args":
			return r.URL.RawQuery
		case "is_args":
			if r.URL.RawQuery != "" {
				return "?"
			}
			return ""
		case "rest":
			if lr != nil {
				return restOfPath(r, rs.info.PathInfo, lr.loc.Path)
			}
		}
		return ""
	})
	status := rd.Status
	if status == 0 {
		status = config.DefaultRedirectStatus
	}
	rs.rw.Header()["Location"] = []string{target}
	return berthError(rs, status, "berth: moved to "+target+"\n")
}

// restOfPath is the part of the request's path after prefix, as the client
// sent it (still percent-encoded) when the raw path starts with it, else
// the decoded rest encoded again.
func restOfPath(r *http.Request, decoded, prefix string) string {
	raw := r.RequestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if strings.HasPrefix(raw, prefix) {
		return raw[len(prefix):]
	}
	if len(decoded) < len(prefix) {
		return ""
	}
	return (&url.URL{Path: decoded[len(prefix):]}).EscapedPath()
}

// checkAccess is stage 3: the proxy-wide connection limit, then the
// location's redirect or answer, rate limit, access rules and basic auth.
func (s *Server) checkAccess(rs *reqState, r *http.Request, st *settings, ro *routing) response {
	a := st.access
	if a.conns != nil {
		release, ok := a.conns.Acquire(rs.info.RemoteAddr)
		if !ok {
			s.access.rejected.WithLabelValues("connections", "").Inc()
			rs.rw.Header().Set("Retry-After", "1")
			return berthError(rs, http.StatusServiceUnavailable, "berth: too many requests in progress from this client (proxy.limits.connections_per_client)\n")
		}
		rs.releaseConn = release
	}
	lr := ro.loc
	if lr == nil {
		return response{src: srcNext}
	}
	l := &lr.loc
	switch {
	case l.Redirect != nil:
		return s.redirect(rs, r, *l.Redirect, lr)
	case l.Return != nil:
		return s.fixedAnswer(rs, l.Return)
	}
	if lr.limiter != nil {
		key := "global"
		switch lr.keyKind {
		case keyClient:
			key = rs.info.RemoteAddr
		case keyVars:
			key = lr.key.value(r, &rs.info)
		}
		v := lr.limiter.Take(key, time.Now())
		if !v.Allow {
			s.access.rejected.WithLabelValues("rate", lr.label).Inc()
			status := l.Limit.Status
			if status == 0 {
				status = config.DefaultLimitStatus
			}
			return berthError(rs, status, "berth: too many requests; slow down\n")
		}
		if v.Wait > 0 {
			// nginx holds the request until the bucket would have
			// drained to it; a client that leaves meanwhile is gone.
			t := time.NewTimer(v.Wait)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return response{src: srcNone}
			}
		}
	}
	if len(l.Access) > 0 {
		addr, _ := netip.ParseAddr(rs.info.RemoteAddr)
		if !l.Allowed(addr.Unmap()) {
			s.access.rejected.WithLabelValues("deny", lr.label).Inc()
			return berthError(rs, http.StatusForbidden, "403 forbidden\n")
		}
	}
	if lr.users != nil {
		user, ok := basicUser(r, lr.users)
		if !ok {
			s.access.rejected.WithLabelValues("auth", lr.label).Inc()
			rs.rw.Header()["Www-Authenticate"] = []string{`Basic realm="` + strings.ReplaceAll(lr.realm, `"`, `\"`) + `"`}
			return berthError(rs, http.StatusUnauthorized, "401 authorization required\n")
		}
		rs.user = user
	}
	return response{src: srcNext}
}

// basicUser checks r's basic credentials against f, returning the user.
func basicUser(r *http.Request, f *htpasswd.File) (string, bool) {
	v := headerValue(r.Header, "Authorization")
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok || !f.Check(user, pass) {
		return "", false
	}
	return user, true
}

// fixedAnswer is a location's return: its status and body.
func (s *Server) fixedAnswer(rs *reqState, ret *config.Return) response {
	h := rs.rw.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	resp := response{src: srcBytes, status: ret.Status, b: []byte(ret.Body), berth: ret.Body == ""}
	if ret.Status == http.StatusNoContent || ret.Status == http.StatusNotModified {
		resp.noBody, resp.b = true, nil
	}
	return resp
}

// applyFields sets the proxy's and the location's fields on a response
// header: berth's own errors too (nginx's add_header ... always).
func applyFields(h http.Header, ops ...[]fieldOp) {
	for _, set := range ops {
		for _, op := range set {
			if op.remove {
				delete(h, op.name)
			} else {
				h[op.name] = op.value
			}
		}
	}
}

// errorPage puts the configured page in place of a body berth made for
// status, for a client that takes HTML (nginx's error_page); others keep
// the plain text.
func errorPage(rs *reqState, r *http.Request, pages map[int][]byte, resp *response) {
	page, ok := pages[resp.status]
	if !ok || !acceptsHTML(r) {
		return
	}
	h := rs.rw.Header()
	h["Content-Type"] = []string{"text/html; charset=utf-8"}
	delete(h, "Content-Length")
	resp.b = page
}

// acceptsHTML says whether r's Accept takes text/html: named, or text/*.
func acceptsHTML(r *http.Request) bool {
	for _, v := range r.Header["Accept"] {
		for _, item := range strings.Split(v, ",") {
			mt, params, _ := strings.Cut(strings.TrimSpace(item), ";")
			mt = strings.ToLower(strings.TrimSpace(mt))
			if mt != "text/html" && mt != "text/*" {
				continue
			}
			if q := qParam(params); q > 0 {
				return true
			}
		}
	}
	return false
}

// qParam is the q of a media range's parameters, 1 when absent.
func qParam(params string) float64 {
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return q
		}
	}
	return 1
}
