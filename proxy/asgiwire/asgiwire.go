// Package asgiwire is the framing between berth's proxy and its ASGI
// workers (docs/internals.md, "ASGI framing"): one unix connection per
// worker multiplexes every request and websocket as streams of frames, each
// a 9-byte header (u32 length of what follows it, u8 type, u32 stream) and
// a payload. This package is the bytes: frame types, the header, the
// request head the proxy sends and the response start and websocket accept
// it reads back. The streams, windows and drains are the proxy's.
package asgiwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/berth-dev/berth/proxy/cgi"
)

// Frame types, the same numbers as worker/berth_asgi.py.
const (
	FrameRequest    = 1  // proxy → worker: flags byte, then NUL-separated head fields
	FrameBody       = 2  // both: data, more follows
	FrameEnd        = 3  // both: the last data of the sender's half
	FrameText       = 4  // both: a websocket text message
	FrameBinary     = 5  // both: a websocket binary message
	FrameWindow     = 6  // both: u32 credit for data payload bytes
	FrameDisconnect = 7  // proxy → worker: u16 code, reason: the client is gone, the stream forgotten
	FrameGoaway     = 8  // proxy → worker: u16 code: end this websocket/stream (drain)
	FrameStart      = 9  // worker → proxy: u16 status, NUL-separated header names and values
	FrameAccept     = 10 // worker → proxy: subprotocol, NUL-separated header names and values
	FrameClose      = 11 // worker → proxy: u16 code, reason: the app closed the websocket
	FrameAbort      = 12 // worker → proxy: the app failed

	FlagWebsocket = 1
	FlagBody      = 2

	HeaderLen = 9 // u32 length of what follows it, u8 type, u32 stream
	// InitialWindow is the credit each side starts with per stream and
	// direction: what one stream may have in flight unconsumed.
	InitialWindow = 256 << 10
	// MaxChunk is the largest data frame the proxy sends.
	MaxChunk = 64 << 10
	// MaxFrame bounds a frame from a worker; a longer one is a protocol
	// error that drops the connection.
	MaxFrame = 64 << 20
)

// AppendHead encodes the REQUEST payload: flags, then method, scheme,
// raw path, decoded path, query, client host and port, server host and
// port, HTTP version, then each header as a lower-case name and a value,
// all NUL-separated. ok is false on a NUL in any of them: the framer and
// net/http refuse NUL in a head, but a decoded path can hold %00 (which
// nginx refuses with 400 too).
func AppendHead(b []byte, flags byte, r *http.Request, in *cgi.Vars) (_ []byte, ok bool) {
	raw := r.RequestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	version := "1.1"
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		version = "1.0"
	case r.ProtoMajor == 2:
		version = "2"
	}
	scheme := in.Scheme
	if flags&FlagWebsocket != 0 {
		scheme = "ws"
		if in.Scheme == "https" {
			scheme = "wss"
		}
	}
	b = append(b, flags)
	fields := [...]string{r.Method, scheme, raw, in.PathInfo, r.URL.RawQuery, in.RemoteAddr, in.RemotePort, in.ServerName, in.ServerPort, version}
	for i, f := range fields {
		if i > 0 {
			b = append(b, 0)
		}
		if hasNUL(f) {
			return b, false
		}
		b = append(b, f...)
	}
	if r.Host != "" {
		if hasNUL(r.Host) {
			return b, false
		}
		b = append(b, "\x00host\x00"...)
		b = append(b, r.Host...)
	}
	for name, vals := range r.Header {
		switch name {
		case "Content-Length", "Transfer-Encoding", "Host":
			continue // the proxy framed the body: it sends its own content-length
		}
		if strings.IndexByte(name, '_') >= 0 || hasNUL(name) {
			// As for uwsgi (uwsgi.SkipHeader): X_Forwarded_For would be
			// X-Forwarded-For to an app that maps names to CGI-style keys
			// (Django's ASGI handler does).
			continue
		}
		for _, v := range vals {
			if hasNUL(v) {
				return b, false
			}
			b = append(b, 0)
			b = appendLower(b, name)
			b = append(b, 0)
			b = append(b, v...)
		}
	}
	if in.ContentLength != "" {
		b = append(b, "\x00content-length\x00"...)
		b = append(b, in.ContentLength...)
	}
	return b, true
}

func hasNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func appendLower(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

// ParseStart reads a START payload (u16 status, then NUL-separated header
// names and values) into h. Hop-by-hop headers are dropped: the proxy
// frames the response itself.
func ParseStart(p []byte, h http.Header) (int, bool) {
	if len(p) < 2 {
		return 0, false
	}
	status := int(binary.BigEndian.Uint16(p))
	if status < 200 || status > 999 {
		return 0, false
	}
	p = p[2:]
	if len(p) == 0 {
		return status, true
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			return 0, false
		}
		name := p[:i]
		p = p[i+1:]
		j := bytes.IndexByte(p, 0)
		var value []byte
		if j < 0 {
			value, p = p, nil
		} else {
			value, p = p[:j], p[j+1:]
		}
		if !ValidHeaderName(name) || !ValidHeaderValue(value) {
			return 0, false
		}
		key := http.CanonicalHeaderKey(string(name))
		switch key {
		case "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Proxy-Connection", "Te", "Trailer":
			continue
		}
		h[key] = append(h[key], string(value))
	}
	return status, true
}

func ValidHeaderName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte("\"(),/:;<=>?@[\\]{}"), c) >= 0 {
			return false
		}
	}
	return true
}

func ValidHeaderValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// ParseAccept reads an ACCEPT payload: the subprotocol, then NUL-separated
// header names and values, which go into h for the 101 answer.
func ParseAccept(p []byte, h http.Header) (string, bool) {
	sub := p
	var rest []byte
	for i, c := range p {
		if c == 0 {
			sub, rest = p[:i], p[i+1:]
			break
		}
	}
	if !ValidHeaderValue(sub) {
		return "", false
	}
	if len(rest) > 0 {
		// Same encoding as a START's headers, behind a dummy status.
		buf := make([]byte, 2, 2+len(rest))
		buf[0], buf[1] = 0, 200
		if _, ok := ParseStart(append(buf, rest...), h); !ok {
			return "", false
		}
		for _, k := range []string{"Sec-Websocket-Accept", "Sec-Websocket-Protocol", "Sec-Websocket-Extensions", "Content-Length"} {
			delete(h, k) // the handshake's own, set by the library
		}
	}
	return string(sub), true
}

// PutHeader writes a frame header for a payload of n bytes into hdr
// (HeaderLen bytes).
func PutHeader(hdr []byte, typ uint8, id uint32, n int) {
	binary.BigEndian.PutUint32(hdr[0:4], uint32(n+5))
	hdr[4] = typ
	binary.BigEndian.PutUint32(hdr[5:9], id)
}

// ReadFrame reads one frame from br; hdr is the caller's scratch for the
// header (HeaderLen bytes). A length out of range (below the header's own
// 5 bytes, above MaxFrame) is an error: nothing after it can be framed.
func ReadFrame(br *bufio.Reader, hdr []byte) (typ uint8, id uint32, p []byte, err error) {
	if _, err = io.ReadFull(br, hdr[:HeaderLen]); err != nil {
		return 0, 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	if n < 5 || n > MaxFrame {
		return 0, 0, nil, fmt.Errorf("asgi: frame length %d out of range", n)
	}
	typ, id = hdr[4], binary.BigEndian.Uint32(hdr[5:9])
	p = make([]byte, n-5)
	if _, err = io.ReadFull(br, p); err != nil {
		return 0, 0, nil, err
	}
	return typ, id, p, nil
}
