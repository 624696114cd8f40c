package proxy

// respond.go is stage 5 of the request path (pipeline.go): the one place a
// response goes out. Whatever answered (a uwsgi or ASGI worker, an upstream
// server, the cache, berth itself), here the cache keeps what it may,
// compression applies, berth's own fields are added (respWriter.stamp) and
// the bytes are written, buffered or streamed.

import (
	"io"
	"net/http"
	"strconv"
	"time"
)

// response is an answer on its way to the client. Its header fields are
// already in the client's header map (rs.rw.Header()): a backend reads its
// answer's head straight into it.
type response struct {
	src    respSource
	status int
	// b is the body for srcBytes, not owned (a cache entry's, an ASGI
	// frame's, berth's own message).
	b []byte
	// stream is the body for srcStream: pieces pulled while the backend
	// is held, each flushed to the client as it comes.
	stream bodyStream
	// entry is the cache entry b comes from: its compressed variants are
	// kept with it.
	entry *cacheEntry
	// noBody: a HEAD, 204 or 304 answer; no body byte goes out.
	noBody bool
	// failed: the backend did not answer (berth's 502, 503 or 504); a
	// stale cache entry may stand in for it.
	failed bool
	// berth: berth made this answer itself (an error, a redirect).
	berth bool
}

// respSource says where a response's body is.
type respSource uint8

const (
	srcNext   respSource = iota // no answer yet: the next stage goes on
	srcNone                     // answered already (a static file, a websocket), or the client left
	srcSpool                    // buffered in rs.resp
	srcBytes                    // in response.b
	srcStream                   // response.stream
)

// next says whether the pipeline goes on to the next stage.
func (r response) next() bool { return r.src == srcNext }

// bodyStream is a body that arrives in pieces while its backend is held
// (a streamed worker or upstream answer, an ASGI response sent in pieces).
type bodyStream interface {
	// next returns the next piece, valid until the following call; it
	// returns io.EOF after the last piece, and any other error when the
	// body broke (the response is then cut: rs.abort).
	next() ([]byte, error)
	// end gives the backend back: clean says every piece was read and
	// written to the client.
	end(clean bool)
}

// berthError is berth's own answer: a short plain-text body.
func berthError(rs *reqState, status int, body string) response {
	h := rs.rw.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["X-Content-Type-Options"] = []string{"nosniff"}
	return response{src: srcBytes, status: status, b: []byte(body), berth: true}
}

// backendFailed is berth's 502/503/504 for a backend that did not answer.
func backendFailed(rs *reqState, status int, body string) response {
	resp := berthError(rs, status, body)
	resp.failed = true
	return resp
}

// respond is stage 5.
func (s *Server) respond(rs *reqState, r *http.Request, st *settings, ro *routing, resp *response) {
	if resp.src == srcNone {
		return
	}
	if ro.fill != nil {
		// The cache: a failed refresh falls back on the stale entry; a
		// buffered answer is kept when it may be (cache.go).
		*resp = s.cacheFill(rs, r, st, ro, *resp)
	}
	if resp.src == srcStream {
		s.relayStream(rs, r, st, resp)
		return
	}
	if resp.berth && len(st.access.pages) > 0 {
		errorPage(rs, r, st.access.pages, resp)
	}
	s.writeWhole(rs, r, st, resp)
}

// writeWhole sends a response whose body is all here (buffered, in memory
// or spilled to a file), compressed when it may be.
func (s *Server) writeWhole(rs *reqState, r *http.Request, st *settings, resp *response) {
	w := &rs.rw
	h := w.Header()
	var size int64
	if resp.src == srcSpool {
		size = rs.resp.size()
	} else {
		size = int64(len(resp.b))
	}
	if st.comp != nil && !resp.noBody && !resp.berth && st.comp.eligible(r, h, resp.status, size) {
		if enc := negotiate(r.Header["Accept-Encoding"]); enc != encIdentity {
			s.writeCompressed(rs, r, resp, enc)
			return
		}
	}
	if !resp.noBody {
		n := strconv.FormatInt(size, 10)
		if v := h["Content-Length"]; len(v) == 1 {
			v[0] = n // the head's own slice: no allocation
		} else {
			h["Content-Length"] = []string{n}
		}
	}
	w.WriteHeader(resp.status)
	if resp.noBody || size == 0 || r.Method == http.MethodHead {
		return
	}
	if resp.src == srcBytes {
		writeWithDeadline(w, resp.b)
		return
	}
	if rs.resp.inMemory() {
		writeWithDeadline(w, rs.resp.bytes())
		return
	}
	s.writeFile(rs)
}

// writeCompressed sends a whole body encoded with enc: from the cache
// entry's kept variant, compressed in memory, or from a spilled file as it
// goes out (chunked).
func (s *Server) writeCompressed(rs *reqState, r *http.Request, resp *response, enc uint8) {
	w := &rs.rw
	h := w.Header()
	markEncoded(h, enc)
	source := "worker"
	if resp.entry != nil {
		source = "cache"
	}
	s.edge.compressed.WithLabelValues(encNames[enc], source).Inc()
	var body []byte
	switch {
	case resp.entry != nil:
		body = s.cache.encoded(resp.entry, enc)
	case resp.src == srcBytes || rs.resp.inMemory():
		plain := resp.b
		if resp.src == srcSpool {
			plain = rs.resp.bytes()
		}
		bp := getBuf()
		defer putBuf(bp)
		sink := byteSink{b: (*bp)[:0]}
		e := getEncoder(enc, false, &sink)
		e.Write(plain)
		e.Close()
		putEncoder(enc, false, e)
		*bp = sink.b
		body = sink.b
	default:
		s.writeFileCompressed(rs, resp.status, enc)
		return
	}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(resp.status)
	writeWithDeadline(w, body)
}

// writeFile sends a spilled body with a send deadline pushed forward per
// chunk (nginx send_timeout), so a client that stops reading is dropped
// instead of holding a temp file forever.
func (s *Server) writeFile(rs *reqState) {
	w := &rs.rw
	f, err := rs.resp.file()
	if err != nil {
		s.reqLogf(rs, "%v", err)
		rs.abort = true
		return
	}
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	const chunk = 256 << 10
	for left := rs.resp.size(); left > 0; {
		rc.SetWriteDeadline(time.Now().Add(sendTimeout))
		n, err := io.CopyN(w, f, min(left, chunk))
		left -= n
		if err != nil {
			return
		}
	}
}

// writeFileCompressed sends a spilled body compressed as it is read,
// chunked (its compressed length is not known ahead).
func (s *Server) writeFileCompressed(rs *reqState, status int, enc uint8) {
	w := &rs.rw
	f, err := rs.resp.file()
	if err != nil {
		s.reqLogf(rs, "%v", err)
		rs.abort = true
		return
	}
	w.WriteHeader(status)
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	e := getEncoder(enc, false, w)
	defer putEncoder(enc, false, e)
	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:cap(*bp)]
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			rc.SetWriteDeadline(time.Now().Add(sendTimeout))
			if _, werr := e.Write(buf[:n]); werr != nil {
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			s.reqLogf(rs, "reading a buffered response: %v", rerr)
			rs.abort = true
			return
		}
	}
	rc.SetWriteDeadline(time.Now().Add(sendTimeout))
	e.Close()
}

// writeWithDeadline writes b with a send deadline pushed forward per
// 256 KiB (nginx send_timeout).
func writeWithDeadline(w *respWriter, b []byte) {
	if len(b) <= largeWrite {
		w.Write(b)
		return
	}
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	const chunk = 256 << 10
	for len(b) > 0 {
		n := min(len(b), chunk)
		rc.SetWriteDeadline(time.Now().Add(sendTimeout))
		if _, err := w.Write(b[:n]); err != nil {
			return
		}
		b = b[n:]
	}
}

// relayStream sends a streamed response piece by piece as its backend
// sends it, flushing each (compressed piece by piece, with a flush after
// each, when it may be), and gives the backend back at the end.
func (s *Server) relayStream(rs *reqState, r *http.Request, st *settings, resp *response) {
	w := &rs.rw
	var zw encoder
	var enc uint8
	if st.comp != nil && !resp.noBody && st.comp.eligible(r, w.Header(), resp.status, -1) {
		if enc = negotiate(r.Header["Accept-Encoding"]); enc != encIdentity {
			markEncoded(w.Header(), enc)
			zw = getEncoder(enc, false, w)
			s.edge.compressed.WithLabelValues(encNames[enc], "worker").Inc()
			defer putEncoder(enc, false, zw)
		}
	}
	w.WriteHeader(resp.status)
	w.Flush()
	rc := http.NewResponseController(w.w)
	defer rc.SetWriteDeadline(time.Time{})
	clean := false
	for {
		p, err := resp.stream.next()
		if len(p) > 0 && !resp.noBody {
			rc.SetWriteDeadline(time.Now().Add(sendTimeout))
			var werr error
			if zw != nil {
				if _, werr = zw.Write(p); werr == nil {
					werr = zw.Flush()
				}
			} else {
				_, werr = w.Write(p)
			}
			if werr != nil {
				break // the client left; the backend is told by end
			}
			w.Flush()
		}
		if err == io.EOF {
			clean = true
			if zw != nil {
				rc.SetWriteDeadline(time.Now().Add(sendTimeout))
				zw.Close()
				w.Flush()
			}
			break
		}
		if err != nil {
			if err != errClientGone {
				rs.abort = true
			}
			break
		}
	}
	resp.stream.end(clean)
}
