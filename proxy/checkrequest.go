package proxy

import (
	"net/http"
	"strings"

	"github.com/berth-dev/berth/proxy/http1"
)

// framing.go holds checkRequest, the one check every request passes
// whatever its front, and refusal, which finds the HTTP/1.1 connection's
// refusal of a head (conn.go) for the pipeline to answer.

// refusal returns the http1.Rejection of the head r stands for, when the
// HTTP/1.1 connection refused it.
func refusal(ci *connInfo, r *http.Request) *http1.Rejection {
	if ci.h1 == nil || ci.h1.q == nil || r != ci.h1.q.req {
		return nil
	}
	return ci.refused
}

// checkRequest is the one check every request passes, whatever front it
// came in by (HTTP/1.1, TLS, HTTP/2), before any backend is chosen; 0 serves
// it. Its target policy (docs/internals.md): every byte of the target is a
// visible character (no space, no control: what the HTTP/1.1 request line
// cannot carry, HTTP/2's :path may not either); origin-form is served;
// absolute-form with http or https is served as its path (RFC 9112 §3.2.2:
// the URL's authority is the Host); "*" is only for OPTIONS, which net/http
// answers itself; CONNECT and authority-form are refused, as nginx refuses
// them, and so are lower-case methods and userinfo. HTTP/2 requests also
// get RFC 9113 §8.1.1's content-length rules, which the HTTP/1.1 http1.Framer
// applies to its own (framing.go): one field, digits only, and as many bytes
// as the stream carries. A refused request closes the connection, as nginx
// does: a client that sent it may not frame what follows as berth would
// (CONNECT tunnel bytes, for one).
func checkRequest(r *http.Request) (int, string) {
	u := r.RequestURI
	for i := 0; i < len(u); i++ {
		if c := u[i]; c <= ' ' || c == 0x7f {
			return http.StatusBadRequest, "the request target has a space or a control character (escape it as %XX)"
		}
	}
	if r.ProtoMajor == 2 {
		if status, why := checkH2Length(r); status != 0 {
			return status, why
		}
	}
	for i := 0; i < len(r.Method); i++ {
		if c := r.Method[i]; (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return http.StatusBadRequest, "the method must be upper-case letters (methods are case-sensitive)"
		}
	}
	switch {
	case r.Method == http.MethodConnect:
		return http.StatusMethodNotAllowed, "CONNECT is not supported: berth is not a forward proxy"
	case len(u) > 0 && u[0] == '/':
		return 0, ""
	case u == "*":
		return http.StatusBadRequest, "the request target * is only for OPTIONS"
	case r.URL.User != nil:
		return http.StatusBadRequest, "the request target must not carry user information (RFC 9110 section 4.2.4)"
	case r.URL.Host != "" && (r.URL.Scheme == "http" || r.URL.Scheme == "https"):
		// Workers see the origin-form, as they would behind nginx.
		rest := u[len(r.URL.Scheme)+len("://"):]
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			r.RequestURI = rest[i:]
			if rest[i] == '?' {
				r.RequestURI = "/" + rest[i:]
			}
		} else {
			r.RequestURI = "/"
		}
		return 0, ""
	}
	return http.StatusBadRequest, "the request target must be a path or an absolute http(s) URL"
}

// checkH2Length applies RFC 9113 §8.1.1 to an HTTP/2 request's
// content-length, as nginx does: a repeated field, or a value other than
// digits ("+5", "5, 5"), is malformed; so is a length above 0 on a request
// whose stream ended with its headers (x/net then gives ContentLength 0). A
// length the DATA frames do not match fails the body read (x/net), which the
// body stage answers 400.
func checkH2Length(r *http.Request) (int, string) {
	v := r.Header["Content-Length"]
	switch {
	case len(v) == 0:
		return 0, ""
	case len(v) > 1:
		return http.StatusBadRequest, "content-length given more than once"
	}
	n, ok := http1.ParseLength([]byte(v[0]))
	switch {
	case !ok:
		return http.StatusBadRequest, "content-length is not a decimal number of bytes"
	case n != r.ContentLength:
		return http.StatusBadRequest, "content-length says " + v[0] + " bytes, but the stream ended with the headers"
	}
	return 0, ""
}
