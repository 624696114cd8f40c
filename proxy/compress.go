package proxy

// compress.go: gzip and brotli for worker responses (nginx `gzip on`), and
// the encoders the static files share.
//
// A response is compressed when the client accepts an encoding
// (Accept-Encoding, q-values honoured, brotli preferred on a tie), its
// media type is one of the configured types, it is at least min_length
// bytes, and nothing forbids it: an existing Content-Encoding, a partial
// answer (206, Content-Range), Cache-Control: no-transform, a HEAD or any
// bodiless status. Such a response gets Vary: Accept-Encoding whether it is
// compressed or not, so caches keep the variants apart. Streamed responses
// are compressed chunk by chunk with a flush after each, so server-sent
// events still arrive as they are sent.

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/berth-dev/berth/control"
	"github.com/klauspost/compress/gzip"
)

// Encodings.
const (
	encIdentity uint8 = iota
	encGzip
	encBrotli
)

var encNames = [...]string{encIdentity: "identity", encGzip: "gzip", encBrotli: "br"}

// Levels: gzip 5 and brotli 4 compress text about as well as each other at
// a similar CPU cost per byte, a common choice for dynamic responses. Static
// files are compressed once, so they get more.
const (
	gzipLevel         = 5
	brotliLevel       = 4
	staticGzipLevel   = 9
	staticBrotliLevel = 9
)

// compressSettings say which media types are compressed.
type compressSettings struct {
	minLength int64
	exact     map[string]bool // "text/html"
	prefixes  []string        // "text/" for text/*
}

func compileCompression(c control.Compression) *compressSettings {
	cs := &compressSettings{minLength: c.MinLength, exact: map[string]bool{}}
	for _, t := range c.Types {
		t = strings.ToLower(strings.TrimSpace(t))
		if p, ok := strings.CutSuffix(t, "/*"); ok {
			cs.prefixes = append(cs.prefixes, p+"/")
			continue
		}
		cs.exact[t] = true
	}
	return cs
}

// typeMatches says whether a Content-Type value is one of the types.
func (cs *compressSettings) typeMatches(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	if ct == "" {
		return false
	}
	if cs.exact[ct] {
		return true
	}
	lower := strings.ToLower(ct)
	if lower != ct && cs.exact[lower] {
		return true
	}
	for _, p := range cs.prefixes {
		if strings.HasPrefix(lower, p) {
			return true
		}
	}
	return false
}

// negotiate picks the encoding for an Accept-Encoding field: the
// supported coding with the highest q-value (brotli on a tie), identity
// when none is acceptable. "*" stands for any coding not named.
func negotiate(vals []string) uint8 {
	qBr, qGzip := acceptQ(vals)
	switch {
	case qBr > 0 && qBr >= qGzip:
		return encBrotli
	case qGzip > 0:
		return encGzip
	}
	return encIdentity
}

// qValue reads q= from a coding's parameters; a malformed one is 0 (not
// acceptable), as a cautious reading of RFC 9110 §12.4.2.
func qValue(params string) float64 {
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || q < 0 || q > 1 {
			return 0
		}
		return q
	}
	return 1
}

// hasToken says whether a comma-separated field has tok (any case).
func hasToken(vals []string, tok string) bool {
	for _, v := range vals {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			if i := strings.IndexByte(item, '='); i >= 0 {
				item = item[:i]
			}
			if strings.EqualFold(strings.TrimSpace(item), tok) {
				return true
			}
		}
	}
	return false
}

// addVary adds Accept-Encoding to the response's Vary.
func addVary(h http.Header) {
	v := h["Vary"]
	if hasToken(v, "Accept-Encoding") || hasToken(v, "*") {
		return
	}
	if len(v) == 0 {
		h["Vary"] = []string{"Accept-Encoding"}
		return
	}
	h["Vary"] = append(v[:len(v):len(v)], "Accept-Encoding")
}

// eligible says whether a response may be compressed, and adds Vary when
// it may. length is its body length, -1 when unknown (streamed).
func (cs *compressSettings) eligible(r *http.Request, h http.Header, status int, length int64) bool {
	if status == http.StatusPartialContent || r.Method == http.MethodHead {
		return false
	}
	if ce := h["Content-Encoding"]; len(ce) > 0 && !(len(ce) == 1 && strings.EqualFold(ce[0], "identity")) {
		return false
	}
	if _, ok := h["Content-Range"]; ok {
		return false
	}
	ct := h["Content-Type"]
	if len(ct) == 0 || !cs.typeMatches(ct[0]) {
		return false
	}
	if length >= 0 && length < cs.minLength {
		return false
	}
	if hasToken(h["Cache-Control"], "no-transform") || hasToken(r.Header["Cache-Control"], "no-transform") {
		return false
	}
	addVary(h)
	return true
}

// markEncoded sets the fields of a response about to be sent compressed:
// Content-Encoding, and a strong ETag made weak (the bytes differ from
// the ones it named, as nginx does); the length is the caller's.
func markEncoded(h http.Header, enc uint8) {
	h["Content-Encoding"] = []string{encNames[enc]}
	delete(h, "Content-Length")
	delete(h, "Accept-Ranges")
	if et := h["Etag"]; len(et) == 1 && strings.HasPrefix(et[0], `"`) {
		h["Etag"] = []string{"W/" + et[0]}
	}
}

// encoder is a pooled gzip or brotli writer.
type encoder interface {
	io.WriteCloser
	Flush() error
	Reset(io.Writer)
}

var (
	gzipPools   = map[int]*sync.Pool{}
	brotliPools = map[int]*sync.Pool{}
)

func init() {
	for _, l := range []int{gzipLevel, staticGzipLevel} {
		l := l
		gzipPools[l] = &sync.Pool{New: func() any {
			w, _ := gzip.NewWriterLevel(io.Discard, l)
			return w
		}}
	}
	for _, l := range []int{brotliLevel, staticBrotliLevel} {
		l := l
		brotliPools[l] = &sync.Pool{New: func() any { return brotli.NewWriterLevel(io.Discard, l) }}
	}
}

// getEncoder returns an encoder writing to w; put it back with putEncoder.
func getEncoder(enc uint8, static bool, w io.Writer) encoder {
	var e encoder
	if enc == encBrotli {
		l := brotliLevel
		if static {
			l = staticBrotliLevel
		}
		e = brotliPools[l].Get().(*brotli.Writer)
	} else {
		l := gzipLevel
		if static {
			l = staticGzipLevel
		}
		e = gzipPools[l].Get().(*gzip.Writer)
	}
	e.Reset(w)
	return e
}

func putEncoder(enc uint8, static bool, e encoder) {
	e.Reset(io.Discard) // drop the reference to the writer
	switch w := e.(type) {
	case *brotli.Writer:
		if static {
			brotliPools[staticBrotliLevel].Put(w)
		} else {
			brotliPools[brotliLevel].Put(w)
		}
	case *gzip.Writer:
		if static {
			gzipPools[staticGzipLevel].Put(w)
		} else {
			gzipPools[gzipLevel].Put(w)
		}
	}
}

// byteSink collects an encoder's output in a pooled buffer.
type byteSink struct{ b []byte }

func (s *byteSink) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }
