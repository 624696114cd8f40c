package proxy

// clientaddr.go: who the client is (address, port, scheme, server name),
// believing X-Forwarded-For and -Proto only from trusted proxies.

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/proxy/cgi"
	"github.com/berth-dev/berth/proxy/http1"
)

// connInfo is computed once per client connection.
type connInfo struct {
	remoteHost string
	remotePort string
	remoteIP   netip.Addr // invalid for unix sockets
	localHost  string
	localPort  string // "" for unix sockets: the scheme's default is used
	tls        bool   // the connection is TLS (ServeTLS), HTTP/1.1 or HTTP/2
	// h1 is the HTTP/1.1 connection (conn.go); nil for HTTP/2 and for
	// requests that did not come through Serve.
	h1 *h1conn
	// refused is the Framer's or the head parser's refusal of the request
	// being served on h1, which the pipeline answers; nil: none.
	refused *http1.Rejection
}

type connKey struct{}

func newConnInfo(remote, local net.Addr) *connInfo {
	ci := &connInfo{remoteHost: "unix:", localHost: "localhost"}
	if a, ok := remote.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		ci.remoteIP = ap.Addr().Unmap()
		ci.remoteHost = ci.remoteIP.String()
		ci.remotePort = strconv.Itoa(int(ap.Port()))
	}
	if a, ok := local.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		ci.localHost = ap.Addr().Unmap().String()
		ci.localPort = strconv.Itoa(int(ap.Port()))
	}
	return ci
}

// connInfoOf finds the connection's info; requests handed to ServeHTTP by
// another http.Server (tests) get it computed from the request.
func connInfoOf(r *http.Request) *connInfo {
	if ci, ok := r.Context().Value(connKey{}).(*connInfo); ok {
		return ci
	}
	var remote net.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		remote = net.TCPAddrFromAddrPort(ap)
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return newConnInfo(remote, local)
}

// clientInfo fills the client's address and scheme, believing
// X-Forwarded-For / -Proto only from a trusted peer.
func (s *Server) clientInfo(rs *reqState, r *http.Request, st *settings) *connInfo {
	ci := connInfoOf(r)
	in := &rs.info
	*in = reqInfo{RemoteAddr: ci.remoteHost, RemotePort: ci.remotePort, Scheme: "http"}
	if r.TLS != nil || ci.tls {
		in.Scheme = "https"
	}
	if len(st.trusted) > 0 && st.isTrusted(ci.remoteIP) {
		if xff := r.Header["X-Forwarded-For"]; len(xff) > 0 {
			if a, ok := realIP(st, xff); ok {
				in.RemoteAddr, in.RemotePort = a, ""
			}
		}
		if xfp := r.Header["X-Forwarded-Proto"]; len(xfp) > 0 {
			v := xfp[0]
			if i := strings.IndexByte(v, ','); i >= 0 {
				v = v[:i]
			}
			v = strings.TrimSpace(v)
			switch {
			case strings.EqualFold(v, "https"):
				in.Scheme = "https"
			case strings.EqualFold(v, "http"):
				in.Scheme = "http"
			}
		}
	}
	in.ServerName = hostOnly(r.Host)
	if in.ServerName == "" {
		in.ServerName = ci.localHost
	}
	in.ServerPort = ci.localPort
	if in.ServerPort == "" {
		in.ServerPort = "80"
		if in.Scheme == "https" {
			in.ServerPort = "443"
		}
	}
	return ci
}

// realIP walks X-Forwarded-For right to left and returns the first address
// that is not a trusted proxy (the leftmost when all are). An entry that is
// not an address makes it decline, as nginx's realip does.
func realIP(st *settings, vals []string) (string, bool) {
	last := ""
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for v != "" {
			j := strings.LastIndexByte(v, ',')
			tok := strings.TrimSpace(v[j+1:])
			if j < 0 {
				v = ""
			} else {
				v = v[:j]
			}
			if tok == "" {
				continue
			}
			a, err := netip.ParseAddr(tok)
			if err != nil {
				ap, err2 := netip.ParseAddrPort(tok)
				if err2 != nil {
					return "", false
				}
				a = ap.Addr()
				tok = a.String()
			}
			last = tok
			if !st.isTrusted(a) {
				return tok, true
			}
		}
	}
	return last, last != ""
}

// hostOnly strips the port from a Host header.
func hostOnly(h string) string {
	if h == "" {
		return ""
	}
	if h[0] == '[' {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[:i+1]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		return h[:i]
	}
	return h
}

// reqInfo is what a request's encodings need beyond its head (package cgi).
type reqInfo = cgi.Vars

// headerValue is a field's first value, "" when absent.
func headerValue(h http.Header, canonicalKey string) string {
	if v := h[canonicalKey]; len(v) > 0 {
		return v[0]
	}
	return ""
}
