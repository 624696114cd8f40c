package http1

// request.go parses a request head the Framer has let through into an
// *http.Request the proxy's pipeline reads, the way net/http's ReadRequest
// and its server would, without their per-request garbage: one string for
// the whole head, every method, target, name and value a substring of it
// (a field name not in canonical form is looked up among the common ones
// before one is made), one []string backing all values, and the Request,
// URL and Header of the connection reused. FuzzRequestHead holds it to
// net/http.ReadRequest; the differences are listed in
// docs/internals.md, "HTTP/1.1 front".

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// chunkedTE is Request.TransferEncoding for a chunked body; shared, never
// written.
var chunkedTE = []string{"chunked"}

// ParseRequest parses head (a whole head: request line, fields, the empty
// line; the Framer has judged its framing) into r, reusing r.Header and u,
// which it clears. A head berth refuses gives a *Rejection with the status
// to answer. r.Body, r.RemoteAddr, r.TLS and the context are the caller's:
// they are left as they are (Body is set to nil).
func ParseRequest(head []byte, r *http.Request, u *url.URL) *Rejection {
	s := string(head)
	reject := func(status int, reason string) *Rejection {
		return &Rejection{Status: status, Reason: reason, Line: requestLine(head)}
	}
	nl := strings.IndexByte(s, '\n')
	line := strings.TrimSuffix(s[:nl], "\r")
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return reject(http.StatusBadRequest, "malformed request line")
	}
	if !httpguts.ValidHeaderFieldName(method) { // a token, as net/http's validMethod
		return reject(http.StatusBadRequest, "invalid method")
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return reject(http.StatusBadRequest, "malformed HTTP version")
	}
	if major != 1 {
		return reject(http.StatusHTTPVersionNotSupported, "HTTP version not supported (berth speaks HTTP/1.x here)")
	}
	*u = url.URL{}
	if !parseTarget(target, u) {
		raw := target
		if method == http.MethodConnect && !strings.HasPrefix(raw, "/") {
			raw = "http://" + raw
		}
		pu, err := url.ParseRequestURI(raw)
		if err != nil {
			return reject(http.StatusBadRequest, "malformed request target")
		}
		*u = *pu
		if raw != target {
			u.Scheme = ""
		}
	}

	h := r.Header
	if h == nil {
		h = make(http.Header, 8)
	} else {
		clear(h)
	}
	fields := s[nl+1:]
	vals := make([]string, countLines(fields))
	for {
		nl := strings.IndexByte(fields, '\n')
		if nl < 0 {
			break // the Framer hands whole heads only
		}
		fl := strings.TrimSuffix(fields[:nl], "\r")
		fields = fields[nl+1:]
		if fl == "" {
			break
		}
		name, value, ok := strings.Cut(fl, ":")
		if !ok {
			return reject(http.StatusBadRequest, "a header field line has no colon")
		}
		if name == "" || !httpguts.ValidHeaderFieldName(name) {
			return reject(http.StatusBadRequest, "invalid header field name")
		}
		value = trimOWSString(value)
		if !httpguts.ValidHeaderFieldValue(value) {
			return reject(http.StatusBadRequest, "invalid header field value (a control character)")
		}
		key := canonicalKey(name)
		if vv := h[key]; vv != nil {
			h[key] = append(vv, value)
			continue
		}
		vals[0] = value
		h[key] = vals[:1:1]
		vals = vals[1:]
	}
	hosts := h["Host"]
	switch {
	case len(hosts) > 1:
		return reject(http.StatusBadRequest, "more than one Host field")
	case len(hosts) == 0 && minor >= 1 && method != http.MethodConnect:
		return reject(http.StatusBadRequest, "no Host field (HTTP/1.1 requires one)")
	case len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]):
		return reject(http.StatusBadRequest, "malformed Host field")
	}
	host := u.Host
	if host == "" && len(hosts) == 1 {
		host = hosts[0]
	}
	delete(h, "Host")

	// Field by field, not *r = http.Request{...}: the caller's context,
	// RemoteAddr and TLS stay (a context can only be set by copying the
	// whole Request).
	r.Method, r.URL, r.RequestURI, r.Host, r.Header = method, u, target, host, h
	r.Proto, r.ProtoMajor, r.ProtoMinor = proto, major, minor
	r.Body, r.GetBody, r.ContentLength, r.TransferEncoding, r.Trailer = nil, nil, 0, nil, nil
	r.Form, r.PostForm, r.MultipartForm, r.Response, r.Pattern = nil, nil, nil, nil, ""
	conn := h["Connection"]
	hasClose := httpguts.HeaderValuesContainsToken(conn, "close")
	r.Close = hasClose || minor == 0 && !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	// Framing as the Framer judged it: one Content-Length of digits, or
	// Transfer-Encoding: chunked, never both.
	switch {
	case h["Transfer-Encoding"] != nil:
		r.TransferEncoding = chunkedTE
		r.ContentLength = -1
		delete(h, "Transfer-Encoding")
	case h["Content-Length"] != nil:
		n, ok := ParseLength([]byte(trimOWSString(h["Content-Length"][0])))
		if !ok {
			return reject(http.StatusBadRequest, "Content-Length is not a decimal number of bytes")
		}
		r.ContentLength = n
	}
	return nil
}

// parseTarget is url.ParseRequestURI for the common origin-form target
// whose path has only bytes a URL path keeps unescaped (so Path is the
// target's path as is and RawPath is empty); false leaves the rest to
// url.ParseRequestURI.
func parseTarget(t string, u *url.URL) bool {
	if len(t) == 0 || t[0] != '/' {
		return false
	}
	path, query, hasQuery := strings.Cut(t, "?")
	for i := 0; i < len(path); i++ {
		if !plainPathByte[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < 0x21 || c == 0x7f {
			return false
		}
	}
	u.Path = path
	u.RawQuery = query
	u.ForceQuery = hasQuery && query == ""
	return true
}

// plainPathByte: the bytes url.URL keeps unescaped in a path (its
// shouldEscape(c, encodePath) is false).
var plainPathByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-_.~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// countLines bounds the number of field lines in s.
func countLines(s string) int {
	return strings.Count(s, "\n")
}

func trimOWSString(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// canonicalKey is textproto.CanonicalMIMEHeaderKey for a valid field
// name, without an allocation when name is canonical already or common.
func canonicalKey(name string) string {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return canonicalSlow(name)
		}
		upper = c == '-'
	}
	return name
}

func canonicalSlow(name string) string {
	var buf [64]byte
	if len(name) <= len(buf) {
		b := buf[:len(name)]
		upper := true
		for i := 0; i < len(name); i++ {
			c := name[i]
			if upper && 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			} else if !upper && 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b[i] = c
			upper = c == '-'
		}
		if k, ok := commonKeys[string(b)]; ok {
			return k
		}
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

// commonKeys interns the field names clients send most, so a lower-case
// name (as curl and HTTP/2-minded clients send them) costs no allocation.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Connection", "Content-Length", "Content-Type", "Cookie", "Date",
		"Dnt", "Expect", "Forwarded", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
		"If-Range", "If-Unmodified-Since", "Keep-Alive", "Origin", "Pragma", "Range", "Referer",
		"Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
		"Sec-Fetch-Site", "Sec-Fetch-User", "Sec-Websocket-Key", "Sec-Websocket-Protocol",
		"Sec-Websocket-Version", "Sec-Websocket-Extensions", "Te", "Transfer-Encoding", "Upgrade",
		"Upgrade-Insecure-Requests", "User-Agent", "Via", "X-Forwarded-For", "X-Forwarded-Host",
		"X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id", "X-Requested-With", "X-Csrftoken",
	} {
		m[k] = k
	}
	return m
}()
