// Package http1 is HTTP/1.1 as berth's proxy reads it (RFC 9112): the
// framer that decides where each request on a client connection begins and
// ends, and the reader of a worker's or upstream server's response head and
// body. No Server in sight: the proxy wires them to its connections.
package http1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
)

// The Framer decides where each request on a client connection begins and
// ends, before net/http sees a byte of it.
//
// net/http hides exactly the fields a smuggling attack plays with: it
// drops Content-Length when Transfer-Encoding is present and ignores
// Transfer-Encoding on HTTP/1.0, so a handler cannot tell a clean request
// from an ambiguous one. Every connection's bytes therefore pass through a
// Framer that reads the message framing of RFC 9112 §6 itself: it holds
// back each request head until the head is complete, judges its framing
// fields, and only then lets it through; bodies stream through while it
// tracks their length (Content-Length or chunked). A head it refuses never
// reaches net/http: in its place net/http reads a short synthetic request
// that the handler recognises (by a per-process secret) and answers with
// the refusal's status and Connection: close. Nothing after a refused head
// is read. Where the RFC leaves a choice, the Framer makes nginx's.
//
// The Framer judges only framing. net/http still parses everything else
// (request line, field syntax, Host) and is at least as strict there; the
// two agree on where a head ends (at the first empty line, lines ending in
// LF with an optional CR) and on body lengths, so they never frame the same
// bytes differently. FuzzFront checks that.

// MaxHead bounds a request head (request line and fields) held back; a
// longer one is refused with 431, as net/http's MaxHeaderBytes would.
const MaxHead = 32 << 10

// maxChunkLine bounds a chunk-size line, extensions included.
const maxChunkLine = 4 << 10

// maxTrailer bounds the trailer section of a chunked request body.
const maxTrailer = 16 << 10

// ErrBadChunked is what a request body read returns when its chunked
// framing is broken; the handler answers 400 and closes.
var ErrBadChunked = errors.New("malformed chunked request body")

// Rejection is why a request head was refused.
type Rejection struct {
	Status int
	Reason string
	Line   string // the refused request line, for the access log
}

// Framer states.
const (
	stHead      = iota // collecting a request head
	stBody             // left bytes of a Content-Length body
	stChunkSize        // a chunk-size line
	stChunkData        // left bytes of chunk data
	stChunkEnd         // the CRLF after chunk data
	stTrailer          // trailer fields after the last chunk
	stRejected         // a head was refused: nothing more
	stCut              // a body's framing broke: nothing more
)

// Framer tracks one connection's message framing. It scans a buffer it
// does not own; pos and head are offsets into it that the caller shifts
// when it drops a released prefix.
type Framer struct {
	state int
	left  int64 // stBody, stChunkData
	pos   int   // next byte to look at
	head  int   // stHead: where the pending head starts
	// chunk-size line: 0 digits, 1 blanks after them, 2 extension, 3 got CR
	phase   int
	digits  int
	line    int  // stChunkSize, stTrailer: bytes in the current line
	cr      bool // stTrailer, stChunkEnd: a CR was seen
	trailer int  // stTrailer: bytes so far
	rej     *Rejection
	heads   int // heads let through (tests)
}

// Scan looks at b[f.pos:] and returns the length of the prefix of b that
// may be handed to net/http, and b's new length: leading empty lines
// before a request line are dropped in place (RFC 9112 §2.2, as nginx).
func (f *Framer) Scan(b []byte) (ok, n int) {
	n = len(b)
	for f.pos < n {
		switch f.state {
		case stHead:
			i := bytes.IndexByte(b[f.pos:n], '\n')
			if i < 0 {
				f.pos = n
				if n-f.head > MaxHead {
					f.reject(b[f.head:n], http.StatusRequestHeaderFieldsTooLarge, "the request head is larger than 32 KiB")
					return f.head, n
				}
				return f.head, n
			}
			end := f.pos + i + 1
			if f.pos == f.head && (i == 0 || (i == 1 && b[f.pos] == '\r')) {
				copy(b[f.pos:], b[end:n]) // an empty line before the request line
				n -= end - f.pos
				continue
			}
			if !(i == 0 || (i == 1 && b[f.pos] == '\r')) {
				f.pos = end
				continue
			}
			// The empty line ends the head.
			if end-f.head > MaxHead {
				f.reject(b[f.head:end], http.StatusRequestHeaderFieldsTooLarge, "the request head is larger than 32 KiB")
				return f.head, n
			}
			fr, rej := judgeHead(b[f.head:end])
			f.pos = end
			if rej != nil {
				f.rej = rej
				f.state = stRejected
				return f.head, n
			}
			f.heads++
			switch {
			case fr.chunked:
				f.state, f.phase, f.digits, f.left, f.line = stChunkSize, 0, 0, 0, 0
			case fr.length > 0:
				f.state, f.left = stBody, fr.length
			}
			f.head = end
		case stBody, stChunkData:
			k := int64(n - f.pos)
			if k > f.left {
				k = f.left
			}
			f.pos += int(k)
			f.left -= k
			if f.left == 0 {
				if f.state == stBody {
					f.state, f.head = stHead, f.pos
				} else {
					f.state, f.cr = stChunkEnd, false
				}
			}
		case stChunkSize:
			if !f.chunkSizeByte(b[f.pos]) {
				return f.cut()
			}
			f.pos++
		case stChunkEnd:
			// A broken byte is not let through (cut before it), so a
			// decoder behind the Framer never sees one.
			c := b[f.pos]
			switch {
			case c == '\r' && !f.cr:
				f.cr = true
			case c == '\n' && f.cr:
				f.state, f.phase, f.digits, f.line = stChunkSize, 0, 0, 0
			default:
				return f.cut()
			}
			f.pos++
		case stTrailer:
			c := b[f.pos]
			if f.trailer++; f.trailer > maxTrailer {
				return f.cut()
			}
			switch {
			case c == '\n':
				if !f.cr {
					return f.cut() // bare LF: the grammar is CRLF
				}
				f.pos++
				if f.line == 1 { // just the CR: the empty line ends the body
					f.state, f.head = stHead, f.pos
					continue
				}
				f.line, f.cr = 0, false
				continue
			case f.cr:
				return f.cut() // bare CR
			case c == '\r':
				f.cr = true
				f.line++
			default:
				f.line++
			}
			f.pos++
		default: // stRejected, stCut
			f.pos = n
		}
	}
	if f.state == stHead {
		return f.head, n
	}
	return f.pos, n
}

// chunkSizeByte takes one byte of a chunk-size line (RFC 9112 §7.1:
// 1*HEXDIG, then chunk extensions, CRLF); false means the line is broken.
// Sizes are at most 16 hex digits (int64), as net/http's limit.
func (f *Framer) chunkSizeByte(c byte) bool {
	// RFC 9112 §7.1.1: a server ought to limit extensions; berth allows a
	// chunk line of 4 KiB, as net/http's chunked reader did.
	if f.line++; f.line > maxChunkLine {
		return false
	}
	switch f.phase {
	case 0: // digits
		if v, ok := Unhex(c); ok {
			if f.digits == 16 || f.left > 0x7ffffffffffffff {
				return false
			}
			f.left = f.left<<4 | int64(v)
			f.digits++
			return true
		}
		if f.digits == 0 {
			return false
		}
		f.phase = 1
		return f.chunkSizeByte(c)
	case 1: // blanks before an extension or the end
		switch c {
		case ' ', '\t':
			return true
		case ';':
			f.phase = 2
			return true
		case '\r':
			f.phase = 3
			return true
		}
		return false
	case 2: // extension: anything printable up to the CR
		switch {
		case c == '\r':
			f.phase = 3
			return true
		case c == '\t' || (c >= ' ' && c != 0x7f):
			return true
		}
		return false
	default: // CR seen
		if c != '\n' {
			return false
		}
		if f.left == 0 {
			f.state, f.line, f.cr, f.trailer = stTrailer, 0, false, 0
		} else {
			f.state = stChunkData
		}
		f.digits = 0
		return true
	}
}

// Unhex is the value of a hex digit.
func Unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Shift moves the Framer's offsets when the first n bytes of the buffer
// it scans are dropped.
func (f *Framer) Shift(n int) {
	f.pos -= n
	f.head -= n
}

// cut ends the stream inside a body: what came before the broken byte
// goes through (never the byte itself), then reads fail with ErrBadChunked.
func (f *Framer) cut() (int, int) {
	f.state = stCut
	return f.pos, f.pos
}

func (f *Framer) reject(head []byte, status int, reason string) {
	f.rej = &Rejection{Status: status, Reason: reason, Line: requestLine(head)}
	f.state = stRejected
}

// requestLine returns the first line of a head, cut to 200 bytes, for the
// access log.
func requestLine(head []byte) string {
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	}
	head = bytes.TrimSuffix(head, []byte("\r"))
	if len(head) > 200 {
		head = head[:200]
	}
	return string(head)
}

// bodyFraming is how a request head says its body is delimited.
type bodyFraming struct {
	chunked bool
	length  int64
}

// judgeHead reads the framing fields of a complete request head (request
// line, fields, the empty line). Where RFC 9112 lets a server choose, it
// chooses what nginx does: a request with both Content-Length and
// Transfer-Encoding, Transfer-Encoding on HTTP/1.0, a repeated framing
// field and obs-fold are 400; a transfer coding other than chunked is 501.
func judgeHead(head []byte) (bodyFraming, *Rejection) {
	var fr bodyFraming
	bad := func(status int, reason string) (bodyFraming, *Rejection) {
		return bodyFraming{}, &Rejection{Status: status, Reason: reason, Line: requestLine(head)}
	}
	i := bytes.IndexByte(head, '\n')
	reqLine := bytes.TrimSuffix(head[:i], []byte("\r"))
	http10 := bytes.HasSuffix(reqLine, []byte(" HTTP/1.0"))
	rest := head[i+1:]
	var cl, te []byte
	nCL, nTE := 0, 0
	for len(rest) > 0 {
		j := bytes.IndexByte(rest, '\n')
		line := bytes.TrimSuffix(rest[:j], []byte("\r"))
		rest = rest[j+1:]
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return bad(http.StatusBadRequest, "a header field is folded over two lines (obs-fold)")
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue // net/http refuses it
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			nCL++
			cl = value
		case asciiEqualFold(name, "transfer-encoding"):
			nTE++
			te = value
		}
	}
	switch {
	case nTE > 0 && http10:
		return bad(http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request")
	case nTE > 0 && nCL > 0:
		return bad(http.StatusBadRequest, "both Content-Length and Transfer-Encoding")
	case nTE > 1:
		return bad(http.StatusBadRequest, "Transfer-Encoding given twice")
	case nCL > 1:
		return bad(http.StatusBadRequest, "Content-Length given twice")
	case nTE == 1:
		if !asciiEqualFold(te, "chunked") {
			return bad(http.StatusNotImplemented, "unsupported Transfer-Encoding (only chunked is)")
		}
		fr.chunked = true
	case nCL == 1:
		n, ok := ParseLength(cl)
		if !ok {
			return bad(http.StatusBadRequest, "Content-Length is not a decimal number of bytes")
		}
		fr.length = n
	}
	return fr, nil
}

// ParseLength parses 1*DIGIT within int64.
func ParseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold compares b with the lower-case ASCII s, ignoring ASCII
// case only: net/http canonicalises field names in ASCII, and Unicode
// folding (ſ ~ s) would let a field past the Framer that net/http ignores.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// upstream.go reads a worker's HTTP/1.x response head straight into the
// client's response header, and delimits its body.
//
// http.ReadResponse builds a Response, a header map of its own and a
// string per field, which the proxy then copied into the client's header:
// most of the proxy's per-request allocations. ReadHead reads the head
// into one reused buffer, makes one string of it, and hands out
// substrings: a field that is already in canonical form costs nothing.

// MaxRespHead bounds a worker's response head; a longer one is a bad
// response (502).
const MaxRespHead = 64 << 10

var (
	errRespHeadTooLarge = errors.New("the response head is larger than 64 KiB")
	errRespFraming      = errors.New("the response has an invalid Content-Length or Transfer-Encoding")
)

// Head is what the proxy needs to know of a worker's response.
type Head struct {
	Status  int
	Length  int64 // body length from Content-Length; -1 when not given
	Chunked bool
	Close   bool // the worker closes after it (or its body ends at EOF)
	Stream  bool // relay unbuffered: X-Accel-Buffering: no, or text/event-stream
	NoBody  bool // HEAD, 1xx, 204, 304: no body whatever the fields say
}

// ReadHead reads a response head from br into h, which must be empty:
// every field but the hop-by-hop ones (RFC 9110 §7.6.1, and those named
// in Connection) and X-Accel-Buffering. Interim 1xx answers are skipped.
// scratch is reused across calls. A malformed head is a *BadResponse; an
// I/O error is returned as is (the connection's byte count tells whether
// the worker had answered at all).
func ReadHead(br *bufio.Reader, h http.Header, method string, scratch *[]byte) (Head, error) {
	for {
		hd, err := readOneHead(br, h, method, scratch)
		if err != nil || hd.Status >= 200 || hd.Status == http.StatusSwitchingProtocols {
			return hd, err
		}
		clear(h) // 1xx interim answers are not relayed
	}
}

// BadResponse marks a head that was read but is not a valid response.
type BadResponse struct{ msg string }

func (e *BadResponse) Error() string { return e.msg }

func bad(format string, args ...any) error { return &BadResponse{fmt.Sprintf(format, args...)} }

func readOneHead(br *bufio.Reader, h http.Header, method string, scratch *[]byte) (Head, error) {
	hd := Head{Length: -1}
	buf := (*scratch)[:0]
	lines := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == bufio.ErrBufferFull {
				return hd, bad("a response head line is longer than %d bytes", br.Size())
			}
			if len(buf) > 0 || len(line) > 0 {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
			}
			*scratch = buf
			return hd, err
		}
		if len(buf)+len(line) > MaxRespHead {
			return hd, &BadResponse{errRespHeadTooLarge.Error()}
		}
		buf = append(buf, line...)
		lines++
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			break
		}
	}
	*scratch = buf
	s := string(buf) // the one allocation: every field value is a substring of it

	eol := strings.IndexByte(s, '\n')
	status := strings.TrimSuffix(s[:eol], "\r")
	s = s[eol+1:]
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(status) < 12 || !strings.HasPrefix(status, "HTTP/1.") || status[7] < '0' || status[7] > '9' || status[8] != ' ' ||
		(len(status) > 12 && status[12] != ' ') {
		return hd, bad("malformed status line %q", truncate(status, 60))
	}
	code := 0
	for _, c := range status[9:12] {
		if c < '0' || c > '9' {
			return hd, bad("malformed status line %q", truncate(status, 60))
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return hd, bad("malformed status line %q", truncate(status, 60))
	}
	hd.Status = code
	http10 := status[7] == '0'
	hd.Close = http10

	vals := make([]string, 0, lines)
	var connection []string
	var te string
	nTE := 0
	for len(s) > 0 {
		eol = strings.IndexByte(s, '\n')
		line := strings.TrimSuffix(s[:eol], "\r")
		s = s[eol+1:]
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return hd, bad("a response field is folded over two lines (obs-fold)")
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return hd, bad("malformed response field %q", truncate(line, 60))
		}
		name := http.CanonicalHeaderKey(line[:colon])
		value := strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(value) {
			return hd, bad("response field %s has a control character", name)
		}
		switch name {
		case "Content-Length":
			n, ok := ParseLength([]byte(value))
			if !ok || (hd.Length >= 0 && n != hd.Length) {
				return hd, &BadResponse{errRespFraming.Error()}
			}
			if hd.Length >= 0 {
				continue // a repeated identical value
			}
			hd.Length = n
		case "Transfer-Encoding":
			nTE++
			te = value
			continue
		case "Connection":
			connection = append(connection, value)
			continue
		case "X-Accel-Buffering":
			if strings.EqualFold(value, "no") {
				hd.Stream = true
			}
			continue
		case "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade":
			continue
		case "Content-Type":
			if len(value) >= len("text/event-stream") && strings.EqualFold(value[:len("text/event-stream")], "text/event-stream") {
				hd.Stream = true
			}
		}
		vals = append(vals, value)
		if old, ok := h[name]; ok {
			h[name] = append(old, value)
		} else {
			h[name] = vals[len(vals)-1 : len(vals) : len(vals)]
		}
	}
	for _, v := range connection {
		for _, tok := range strings.Split(v, ",") {
			tok = strings.TrimSpace(tok)
			switch {
			case strings.EqualFold(tok, "close"):
				hd.Close = true
			case strings.EqualFold(tok, "keep-alive"):
				if http10 {
					hd.Close = false
				}
			case tok != "":
				delete(h, http.CanonicalHeaderKey(tok))
			}
		}
	}
	if nTE > 0 {
		if nTE > 1 || !strings.EqualFold(te, "chunked") || http10 {
			return hd, &BadResponse{errRespFraming.Error()}
		}
		hd.Chunked = true
		if hd.Length >= 0 {
			// Both: chunked wins (RFC 9112 §6.3), and the connection is
			// not trusted for another exchange.
			hd.Length = -1
			hd.Close = true
			delete(h, "Content-Length")
		}
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // net/http must not sniff one: relay as is
	}
	hd.NoBody = method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if !hd.NoBody && !hd.Chunked && hd.Length < 0 {
		hd.Close = true // delimited by the end of the connection
	}
	return hd, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// validFieldName: a token (RFC 9110 §5.6.2).
func validFieldName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// validFieldValue: no control characters but HTAB (RFC 9110 §5.5).
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// Body reads a response body as its head delimits it. The zero value
// is unused; Reset prepares it for one response.
type Body struct {
	br      *bufio.Reader
	left    int64 // Content-Length: bytes to go
	chunked io.Reader
	mode    uint8
}

const (
	bodyNone = iota
	bodyLength
	bodyChunked
	bodyEOF
)

func (b *Body) Reset(br *bufio.Reader, hd Head) {
	*b = Body{br: br}
	switch {
	case hd.NoBody:
		b.mode = bodyNone
	case hd.Chunked:
		b.mode = bodyChunked
		b.chunked = httputil.NewChunkedReader(br)
	case hd.Length >= 0:
		b.mode, b.left = bodyLength, hd.Length
	default:
		b.mode = bodyEOF
	}
}

func (b *Body) Read(p []byte) (int, error) {
	switch b.mode {
	case bodyLength:
		if b.left == 0 {
			return 0, io.EOF
		}
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err := b.br.Read(p)
		b.left -= int64(n)
		if err == io.EOF && b.left > 0 {
			err = io.ErrUnexpectedEOF
		}
		if b.left == 0 && err == nil {
			err = io.EOF
		}
		return n, err
	case bodyChunked:
		n, err := b.chunked.Read(p)
		if err == io.EOF {
			if terr := skipTrailer(b.br); terr != nil {
				return n, terr
			}
		}
		return n, err
	case bodyEOF:
		return b.br.Read(p)
	}
	return 0, io.EOF
}

// skipTrailer reads the trailer section after the last chunk, up to the
// empty line; trailers are not relayed.
func skipTrailer(br *bufio.Reader) error {
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			return nil
		}
		if n > 100 {
			return errors.New("the response trailer has too many fields")
		}
	}
}

// Rejected is the refusal of the head the framer refused, nil while none
// was.
func (f *Framer) Rejected() *Rejection {
	if f.state != stRejected {
		return nil
	}
	return f.rej
}

// Broken says whether a body's framing broke: nothing more may be read.
func (f *Framer) Broken() bool { return f.state == stCut }

// BodyLeft is how many bytes of a Content-Length body the Framer still
// expects; 0 outside one. A reader with nothing buffered may read up to
// that many straight into its caller's buffer and pass them with SkipBody.
func (f *Framer) BodyLeft() int64 {
	if f.state != stBody {
		return 0
	}
	return f.left
}

// SkipBody passes n bytes of a Content-Length body read outside the
// Framer's buffer (n ≤ BodyLeft), which must hold nothing unscanned.
func (f *Framer) SkipBody(n int64) {
	f.left -= n
	if f.left == 0 {
		f.state, f.head = stHead, f.pos
	}
}
