package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
)

// upstream.go reads a worker's HTTP/1.x response head straight into the
// client's response header, and delimits its body.
//
// http.ReadResponse builds a Response, a header map of its own and a
// string per field, which the proxy then copied into the client's header:
// most of the proxy's per-request allocations. readHead reads the head
// into one reused buffer, makes one string of it, and hands out
// substrings: a field that is already in canonical form costs nothing.

// maxRespHead bounds a worker's response head; a longer one is a bad
// response (502).
const maxRespHead = 64 << 10

var (
	errRespHeadTooLarge = errors.New("the response head is larger than 64 KiB")
	errRespFraming      = errors.New("the response has an invalid Content-Length or Transfer-Encoding")
)

// respHead is what the proxy needs to know of a worker's response.
type respHead struct {
	status  int
	length  int64 // body length from Content-Length; -1 when not given
	chunked bool
	close   bool // the worker closes after it (or its body ends at EOF)
	stream  bool // relay unbuffered: X-Accel-Buffering: no, or text/event-stream
	noBody  bool // HEAD, 1xx, 204, 304: no body whatever the fields say
}

// readHead reads a response head from br into h, which must be empty:
// every field but the hop-by-hop ones (RFC 9110 §7.6.1, and those named
// in Connection) and X-Accel-Buffering. Interim 1xx answers are skipped.
// scratch is reused across calls. A malformed head is a *badResponse; an
// I/O error is returned as is (the connection's byte count tells whether
// the worker had answered at all).
func readHead(br *bufio.Reader, h http.Header, method string, scratch *[]byte) (respHead, error) {
	for {
		hd, err := readOneHead(br, h, method, scratch)
		if err != nil || hd.status >= 200 || hd.status == http.StatusSwitchingProtocols {
			return hd, err
		}
		clear(h) // 1xx interim answers are not relayed
	}
}

// badResponse marks a head that was read but is not a valid response.
type badResponse struct{ msg string }

func (e *badResponse) Error() string { return e.msg }

func bad(format string, args ...any) error { return &badResponse{fmt.Sprintf(format, args...)} }

func readOneHead(br *bufio.Reader, h http.Header, method string, scratch *[]byte) (respHead, error) {
	hd := respHead{length: -1}
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
		if len(buf)+len(line) > maxRespHead {
			return hd, &badResponse{errRespHeadTooLarge.Error()}
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
	hd.status = code
	http10 := status[7] == '0'
	hd.close = http10

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
			n, ok := parseLength([]byte(value))
			if !ok || (hd.length >= 0 && n != hd.length) {
				return hd, &badResponse{errRespFraming.Error()}
			}
			if hd.length >= 0 {
				continue // a repeated identical value
			}
			hd.length = n
		case "Transfer-Encoding":
			nTE++
			te = value
			continue
		case "Connection":
			connection = append(connection, value)
			continue
		case "X-Accel-Buffering":
			if strings.EqualFold(value, "no") {
				hd.stream = true
			}
			continue
		case "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade":
			continue
		case "Content-Type":
			if len(value) >= len("text/event-stream") && strings.EqualFold(value[:len("text/event-stream")], "text/event-stream") {
				hd.stream = true
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
				hd.close = true
			case strings.EqualFold(tok, "keep-alive"):
				if http10 {
					hd.close = false
				}
			case tok != "":
				delete(h, http.CanonicalHeaderKey(tok))
			}
		}
	}
	if nTE > 0 {
		if nTE > 1 || !strings.EqualFold(te, "chunked") || http10 {
			return hd, &badResponse{errRespFraming.Error()}
		}
		hd.chunked = true
		if hd.length >= 0 {
			// Both: chunked wins (RFC 9112 §6.3), and the connection is
			// not trusted for another exchange.
			hd.length = -1
			hd.close = true
			delete(h, "Content-Length")
		}
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // net/http must not sniff one: relay as is
	}
	hd.noBody = method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if !hd.noBody && !hd.chunked && hd.length < 0 {
		hd.close = true // delimited by the end of the connection
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

// respBody reads a response body as its head delimits it. The zero value
// is unused; reset prepares it for one response.
type respBody struct {
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

func (b *respBody) reset(br *bufio.Reader, hd respHead) {
	*b = respBody{br: br}
	switch {
	case hd.noBody:
		b.mode = bodyNone
	case hd.chunked:
		b.mode = bodyChunked
		b.chunked = httputil.NewChunkedReader(br)
	case hd.length >= 0:
		b.mode, b.left = bodyLength, hd.length
	default:
		b.mode = bodyEOF
	}
}

func (b *respBody) Read(p []byte) (int, error) {
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
