// Package uwsgi is the uwsgi request packet (docs/internals.md, "uwsgi
// packets"): what the proxy sends a berth worker, uWSGI, or an upstream
// uwsgi server, in two encodings (uWSGI's vars, and berth's compact one),
// and a decoder with the checks a receiver must make, for tests and fakes.
package uwsgi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/proxy/cgi"
)

// uwsgi request packet: a 4-byte header (modifier1 0, u16 little-endian
// datasize, modifier2 0) then the vars, each u16 keylen, key, u16 vallen, val.
// See docs/internals.md.

const MaxVars = 0xffff

// ModCompact is the modifier1 of berth's compact vars: the same 4-byte
// header, then every key and value as latin-1 bytes, each followed by a
// NUL. A berth worker decodes them with one split (a Python loop over
// length prefixes cost several microseconds per request); a uwsgi server
// rejects the unknown modifier rather than misreading it. Only workers the
// supervisor marks Compact get them. No key or value can hold a NUL: keys
// are constants or field names, net/http refuses NUL in field values and
// the request line, and handle refuses a path that decodes to one.
const ModCompact = 0xBE

var ErrVarsTooLarge = errors.New("the request's headers do not fit the uwsgi protocol's 64 KiB of vars")

// AppendPacket appends a complete uwsgi request packet for r to b[:0] and
// returns it.
func AppendPacket(b []byte, r *http.Request, in *cgi.Vars, compact bool) ([]byte, error) {
	b = append(b[:0], 0, 0, 0, 0)
	if compact {
		return appendCompact(b, r, in)
	}
	b = AppendVar(b, "QUERY_STRING", r.URL.RawQuery)
	b = AppendVar(b, "REQUEST_METHOD", r.Method)
	b = AppendVar(b, "CONTENT_TYPE", headerValue(r.Header, "Content-Type"))
	b = AppendVar(b, "CONTENT_LENGTH", in.ContentLength)
	b = AppendVar(b, "REQUEST_URI", r.RequestURI)
	b = AppendVar(b, "PATH_INFO", in.PathInfo)
	b = AppendVar(b, "DOCUMENT_ROOT", "")
	b = AppendVar(b, "SERVER_PROTOCOL", r.Proto)
	b = AppendVar(b, "REQUEST_SCHEME", in.Scheme)
	if in.Scheme == "https" {
		b = AppendVar(b, "HTTPS", "on")
	}
	b = AppendVar(b, "REMOTE_ADDR", in.RemoteAddr)
	b = AppendVar(b, "REMOTE_PORT", in.RemotePort)
	b = AppendVar(b, "SERVER_PORT", in.ServerPort)
	b = AppendVar(b, "SERVER_NAME", in.ServerName)
	if r.Host != "" {
		b = AppendVar(b, "HTTP_HOST", r.Host)
	}
	for name, vals := range r.Header {
		if SkipHeader(name) || in.RequestID != "" && name == "X-Request-Id" {
			continue
		}
		b = appendHeaderVar(b, name, vals)
	}
	if in.RequestID != "" {
		b = AppendVar(b, "HTTP_X_REQUEST_ID", in.RequestID)
	}
	b = AppendVar(b, "BERTH_KEEPALIVE", "1")
	n := len(b) - 4
	if n > MaxVars {
		return b, ErrVarsTooLarge
	}
	b[1] = byte(n)
	b[2] = byte(n >> 8)
	return b, nil
}

// SkipHeader says which headers never become HTTP_* vars: the
// ones passed as CONTENT_* already, framing the proxy removed, and any name
// with an underscore (nginx underscores_in_headers off), which could
// otherwise spoof a dashed header: X_Forwarded_For and X-Forwarded-For both
// map to HTTP_X_FORWARDED_FOR.
func SkipHeader(name string) bool {
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

// AppendVar appends one var; SetSize writes the header's size once all
// are in.
func AppendVar(b []byte, k, v string) []byte {
	if len(v) > MaxVars {
		v = v[:MaxVars] // the packet is refused anyway: its total is too large
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
	if n > MaxVars {
		n = MaxVars // refused by the total size check
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

// appendCompact is AppendPacket for ModCompact; b holds the header.
func appendCompact(b []byte, r *http.Request, in *cgi.Vars) ([]byte, error) {
	b[0] = ModCompact
	kv := func(k, v string) {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, v...)
		b = append(b, 0)
	}
	kv("QUERY_STRING", r.URL.RawQuery)
	kv("REQUEST_METHOD", r.Method)
	kv("CONTENT_TYPE", headerValue(r.Header, "Content-Type"))
	kv("CONTENT_LENGTH", in.ContentLength)
	kv("REQUEST_URI", r.RequestURI)
	kv("PATH_INFO", in.PathInfo)
	kv("DOCUMENT_ROOT", "")
	kv("SERVER_PROTOCOL", r.Proto)
	kv("REQUEST_SCHEME", in.Scheme)
	if in.Scheme == "https" {
		kv("HTTPS", "on")
	}
	kv("REMOTE_ADDR", in.RemoteAddr)
	kv("REMOTE_PORT", in.RemotePort)
	kv("SERVER_PORT", in.ServerPort)
	kv("SERVER_NAME", in.ServerName)
	if r.Host != "" {
		kv("HTTP_HOST", r.Host)
	}
	for name, vals := range r.Header {
		if SkipHeader(name) || in.RequestID != "" && name == "X-Request-Id" {
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
	if in.RequestID != "" {
		kv("HTTP_X_REQUEST_ID", in.RequestID)
	}
	kv("BERTH_KEEPALIVE", "1")
	n := len(b) - 4
	if n > MaxVars {
		return b, ErrVarsTooLarge
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

// SetSize writes the vars' size into pkt's 4-byte header, or fails when
// they do not fit.
func SetSize(pkt []byte) error {
	n := len(pkt) - 4
	if n > MaxVars {
		return ErrVarsTooLarge
	}
	pkt[1], pkt[2] = byte(n), byte(n>>8)
	return nil
}

// Packet is a decoded uwsgi request: its vars, their order, and the body
// CONTENT_LENGTH announced.
type Packet struct {
	Vars map[string]string
	Keys []string
	Body []byte
}

// Read decodes one uwsgi (modifier1 0) packet and its body from br, with
// the checks a receiver must make: every length within the data, and a
// CONTENT_LENGTH that is a number, read as the bytes come (a declared 2^40
// allocates nothing ahead).
func Read(br *bufio.Reader) (*Packet, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != 0 || hdr[3] != 0 {
		return nil, fmt.Errorf("uwsgi: bad modifiers %v", hdr)
	}
	data := make([]byte, binary.LittleEndian.Uint16(hdr[1:3]))
	if _, err := io.ReadFull(br, data); err != nil {
		return nil, err
	}
	p := &Packet{Vars: map[string]string{}}
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, errors.New("uwsgi: truncated key length")
		}
		kl := int(binary.LittleEndian.Uint16(data))
		data = data[2:]
		if len(data) < kl+2 {
			return nil, errors.New("uwsgi: truncated key")
		}
		k := string(data[:kl])
		data = data[kl:]
		vl := int(binary.LittleEndian.Uint16(data))
		data = data[2:]
		if len(data) < vl {
			return nil, errors.New("uwsgi: truncated value")
		}
		p.Vars[k] = string(data[:vl])
		p.Keys = append(p.Keys, k)
		data = data[vl:]
	}
	if cl := p.Vars["CONTENT_LENGTH"]; cl != "" {
		n, err := strconv.ParseUint(cl, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("uwsgi: CONTENT_LENGTH %q: %w", cl, err)
		}
		if p.Body, err = io.ReadAll(io.LimitReader(br, int64(n))); err != nil {
			return nil, err
		}
		if uint64(len(p.Body)) != n {
			return nil, io.ErrUnexpectedEOF
		}
	}
	return p, nil
}

// DecodeCompact decodes a ModCompact packet as berth_worker.py does: one
// split on NUL; every key and value is followed by a NUL.
func DecodeCompact(pkt []byte) (map[string]string, error) {
	if len(pkt) < 4 || pkt[0] != ModCompact || pkt[3] != 0 {
		return nil, fmt.Errorf("uwsgi: compact header % x", pkt[:min(4, len(pkt))])
	}
	n := int(pkt[1]) | int(pkt[2])<<8
	if len(pkt) < 4+n {
		return nil, fmt.Errorf("uwsgi: compact datasize %d, %d bytes", n, len(pkt)-4)
	}
	parts := strings.Split(string(pkt[4:4+n]), "\x00")
	if len(parts)%2 != 1 || parts[len(parts)-1] != "" {
		return nil, fmt.Errorf("uwsgi: %d strings: not key/value pairs ending in NUL", len(parts)-1)
	}
	vars := map[string]string{}
	for i := 0; i+1 < len(parts); i += 2 {
		if _, dup := vars[parts[i]]; dup {
			return nil, fmt.Errorf("uwsgi: %s twice", parts[i])
		}
		vars[parts[i]] = parts[i+1]
	}
	return vars, nil
}
