package proxy

import (
	"errors"
	"net/http"
	"strings"
)

// uwsgi request packet: a 4-byte header (modifier1 0, u16 little-endian
// datasize, modifier2 0) then the vars, each u16 keylen, key, u16 vallen, val.
// See docs/internals.md.

const uwsgiMaxVars = 0xffff

// modCompact is the modifier1 of berth's compact vars: the same 4-byte
// header, then every key and value as latin-1 bytes, each followed by a
// NUL. A berth worker decodes them with one split (a Python loop over
// length prefixes cost several microseconds per request); a uwsgi server
// rejects the unknown modifier rather than misreading it. Only workers the
// supervisor marks Compact get them. No key or value can hold a NUL: keys
// are constants or field names, net/http refuses NUL in field values and
// the request line, and handle refuses a path that decodes to one.
const modCompact = 0xBE

var errVarsTooLarge = errors.New("the request's headers do not fit the uwsgi protocol's 64 KiB of vars")

// reqInfo holds what the vars need beyond the *http.Request itself.
type reqInfo struct {
	remoteAddr    string // after trusted X-Forwarded-For
	remotePort    string
	scheme        string // "http" or "https"
	pathInfo      string // decoded, dot segments resolved
	serverName    string
	serverPort    string
	contentLength string // "" when the request has no body
	requestID     string // HTTP_X_REQUEST_ID in place of the client's; "" passes the client's on
}

// appendPacket appends a complete uwsgi request packet for r to b[:0] and
// returns it.
func appendPacket(b []byte, r *http.Request, in *reqInfo, compact bool) ([]byte, error) {
	b = append(b[:0], 0, 0, 0, 0)
	if compact {
		return appendCompact(b, r, in)
	}
	b = appendVar(b, "QUERY_STRING", r.URL.RawQuery)
	b = appendVar(b, "REQUEST_METHOD", r.Method)
	b = appendVar(b, "CONTENT_TYPE", headerValue(r.Header, "Content-Type"))
	b = appendVar(b, "CONTENT_LENGTH", in.contentLength)
	b = appendVar(b, "REQUEST_URI", r.RequestURI)
	b = appendVar(b, "PATH_INFO", in.pathInfo)
	b = appendVar(b, "DOCUMENT_ROOT", "")
	b = appendVar(b, "SERVER_PROTOCOL", r.Proto)
	b = appendVar(b, "REQUEST_SCHEME", in.scheme)
	if in.scheme == "https" {
		b = appendVar(b, "HTTPS", "on")
	}
	b = appendVar(b, "REMOTE_ADDR", in.remoteAddr)
	b = appendVar(b, "REMOTE_PORT", in.remotePort)
	b = appendVar(b, "SERVER_PORT", in.serverPort)
	b = appendVar(b, "SERVER_NAME", in.serverName)
	if r.Host != "" {
		b = appendVar(b, "HTTP_HOST", r.Host)
	}
	for name, vals := range r.Header {
		if skipRequestHeader(name) || in.requestID != "" && name == "X-Request-Id" {
			continue
		}
		b = appendHeaderVar(b, name, vals)
	}
	if in.requestID != "" {
		b = appendVar(b, "HTTP_X_REQUEST_ID", in.requestID)
	}
	b = appendVar(b, "BERTH_KEEPALIVE", "1")
	n := len(b) - 4
	if n > uwsgiMaxVars {
		return b, errVarsTooLarge
	}
	b[1] = byte(n)
	b[2] = byte(n >> 8)
	return b, nil
}

// skipRequestHeader says which headers never become HTTP_* vars: the
// ones passed as CONTENT_* already, framing the proxy removed, and any name
// with an underscore (nginx underscores_in_headers off), which could
// otherwise spoof a dashed header: X_Forwarded_For and X-Forwarded-For both
// map to HTTP_X_FORWARDED_FOR.
func skipRequestHeader(name string) bool {
	switch name {
	case "Content-Type", "Content-Length", "Transfer-Encoding", "Host":
		return true
	}
	return strings.IndexByte(name, '_') >= 0
}

func headerValue(h http.Header, canonicalKey string) string {
	if v := h[canonicalKey]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func appendLen(b []byte, n int) []byte { return append(b, byte(n), byte(n>>8)) }

func appendVar(b []byte, k, v string) []byte {
	if len(v) > uwsgiMaxVars {
		v = v[:uwsgiMaxVars] // the packet is refused anyway: its total is too large
	}
	b = appendLen(b, len(k))
	b = append(b, k...)
	b = appendLen(b, len(v))
	return append(b, v...)
}

// appendHeaderVar appends HTTP_NAME with the header's values joined as one
// field (RFC 9110 5.3; cookies with "; " as HTTP/2 does).
func appendHeaderVar(b []byte, name string, vals []string) []byte {
	sep := ", "
	if name == "Cookie" {
		sep = "; "
	}
	b = appendLen(b, len("HTTP_")+len(name))
	b = appendCGIName(b, name)
	n := 0
	for i, v := range vals {
		if i > 0 {
			n += len(sep)
		}
		n += len(v)
	}
	if n > uwsgiMaxVars {
		n = uwsgiMaxVars // refused by the total size check
	}
	b = appendLen(b, n)
	start := len(b)
	for i, v := range vals {
		if i > 0 {
			b = append(b, sep...)
		}
		b = append(b, v...)
	}
	return b[:start+n]
}

// appendCompact is appendPacket for modCompact; b holds the header.
func appendCompact(b []byte, r *http.Request, in *reqInfo) ([]byte, error) {
	b[0] = modCompact
	kv := func(k, v string) {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, v...)
		b = append(b, 0)
	}
	kv("QUERY_STRING", r.URL.RawQuery)
	kv("REQUEST_METHOD", r.Method)
	kv("CONTENT_TYPE", headerValue(r.Header, "Content-Type"))
	kv("CONTENT_LENGTH", in.contentLength)
	kv("REQUEST_URI", r.RequestURI)
	kv("PATH_INFO", in.pathInfo)
	kv("DOCUMENT_ROOT", "")
	kv("SERVER_PROTOCOL", r.Proto)
	kv("REQUEST_SCHEME", in.scheme)
	if in.scheme == "https" {
		kv("HTTPS", "on")
	}
	kv("REMOTE_ADDR", in.remoteAddr)
	kv("REMOTE_PORT", in.remotePort)
	kv("SERVER_PORT", in.serverPort)
	kv("SERVER_NAME", in.serverName)
	if r.Host != "" {
		kv("HTTP_HOST", r.Host)
	}
	for name, vals := range r.Header {
		if skipRequestHeader(name) || in.requestID != "" && name == "X-Request-Id" {
			continue
		}
		b = appendCGIName(b, name)
		b = append(b, 0)
		sep := ", "
		if name == "Cookie" {
			sep = "; "
		}
		for i, v := range vals {
			if i > 0 {
				b = append(b, sep...)
			}
			b = append(b, v...)
		}
		b = append(b, 0)
	}
	if in.requestID != "" {
		kv("HTTP_X_REQUEST_ID", in.requestID)
	}
	kv("BERTH_KEEPALIVE", "1")
	n := len(b) - 4
	if n > uwsgiMaxVars {
		return b, errVarsTooLarge
	}
	b[1] = byte(n)
	b[2] = byte(n >> 8)
	return b, nil
}

// appendCGIName appends HTTP_ and a field name as a CGI var name:
// upper-case, '-' as '_' (RFC 3875 4.1.18).
func appendCGIName(b []byte, name string) []byte {
	b = append(b, "HTTP_"...)
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c == '-':
			c = '_'
		}
		b = append(b, c)
	}
	return b
}
