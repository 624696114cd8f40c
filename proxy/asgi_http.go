package proxy

// asgi_http.go: one HTTP request on an ASGI worker. The body, already
// buffered by the proxy, goes out in data frames within the stream's
// window; the answer is relayed as it comes: a response the app sends in
// one piece gets a Content-Length, one sent in pieces is streamed chunked
// and flushed piece by piece (server-sent events), with the window granted
// back only as the client takes it.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"

	"github.com/berth-dev/berth/proxy/asgiwire"
)

// drainGrace is how long a stream or websocket told to end by a drain
// (GOAWAY) has to end itself before the proxy ends it.
const drainGrace = 2 * time.Second

// asgiExchange serves r on the ASGI worker g granted. Like uwsgiExchange
// it always releases the worker slot (a streamed answer, when its stream
// ends), and returns a retry outcome only when the worker cannot have seen
// the request.
func (s *Server) asgiExchange(rs *reqState, r *http.Request, st *settings, g grant) (outcome, response) {
	wk := g.w
	if g.c != nil {
		wk.rt.release(wk, g.c, true) // a pooled uwsgi connection: not ours to use
	}
	mc, err := s.dialMux(wk)
	if err != nil {
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			wk.rt.release(wk, nil, false)
			return outOfFiles, response{}
		}
		s.metrics.upstreamError(kindDial)
		s.reqLogf(rs, "worker %s: connect %s: %v", wk.id, wk.socket, err)
		wk.rt.noteDialFailure(wk)
		wk.rt.release(wk, nil, false)
		return retryDial, response{}
	}
	ws := isWebsocket(r)
	stream, err := mc.open(ws)
	if err != nil {
		wk.rt.release(wk, nil, false)
		return retryWrite, response{}
	}
	held := false // a streamed answer gives the worker back when it ends
	defer func() {
		if !held {
			mc.forget(stream)
			wk.rt.release(wk, nil, false)
		}
	}()
	var flags byte
	hasBody := rs.body.size() > 0
	if ws {
		flags |= asgiwire.FlagWebsocket
		hasBody = false
	} else if hasBody {
		flags |= asgiwire.FlagBody
	}
	head, ok := asgiwire.AppendHead(rs.pkt[:0], flags, r, &rs.info)
	rs.pkt = head
	if !ok {
		rs.rw.Header().Set("Connection", "close")
		return done, berthError(rs, http.StatusBadRequest, "berth: bad request: NUL in the request head\n")
	}
	start := time.Now()
	rs.up.begin(start)
	if err := stream.send(asgiwire.FrameRequest, head); err != nil {
		s.metrics.upstreamError(kindWrite)
		return retryWrite, response{} // the connection died: the worker has no whole frame
	}
	if ws {
		// A websocket writes to the client itself, from the handshake on:
		// the one backend exchange that does (asgi_ws.go). Accepted, it
		// outlives this call and gives the worker back when it ends.
		out, resp := s.websocket(rs, r, st, stream, start, func() {
			mc.forget(stream)
			wk.rt.release(wk, nil, false)
		})
		held = rs.detached
		return out, resp
	}
	if hasBody {
		// A failure here (the connection lost, the app not reading)
		// shows in the wait for the answer.
		if rs.body.inMemory() && rs.body.size() <= asgiwire.InitialWindow {
			sendBody(stream, &rs.body, nil, st.timeout)
		} else {
			// Larger than the window: sent beside the wait for the
			// answer, which may come before the app read it all. The
			// body is the request's: it must be done before we return.
			stop, sent := make(chan struct{}), make(chan struct{})
			go func() {
				sendBody(stream, &rs.body, stop, st.timeout)
				close(sent)
			}()
			defer func() {
				close(stop)
				<-sent
			}()
		}
	}
	out, resp := s.asgiResponse(rs, r, st, stream, start)
	if resp.src == srcStream {
		held = true
		rs.astream.release = func() {
			mc.forget(stream)
			wk.rt.release(wk, nil, false)
		}
	}
	return out, resp
}

func isWebsocket(r *http.Request) bool {
	return r.Method == http.MethodGet && headerHasToken(r.Header, "Upgrade", "websocket") &&
		headerHasToken(r.Header, "Connection", "upgrade")
}

// headerHasToken says whether a comma-separated header holds token (any case).
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h[key] {
		for len(v) > 0 {
			var item string
			if i := indexByte(v, ','); i >= 0 {
				item, v = v[:i], v[i+1:]
			} else {
				item, v = v, ""
			}
			if equalFoldTrim(item, token) {
				return true
			}
		}
	}
	return false
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func equalFoldTrim(s, t string) bool {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// sendBody sends the buffered request body in data frames; the last one
// is END.
func sendBody(stream *astream, body *spool, stop <-chan struct{}, timeout time.Duration) error {
	if body.inMemory() {
		b := body.bytes()
		for len(b) > asgiwire.MaxChunk {
			if err := stream.sendData(asgiwire.FrameBody, b[:asgiwire.MaxChunk], stop, timeout); err != nil {
				return err
			}
			b = b[asgiwire.MaxChunk:]
		}
		return stream.sendData(asgiwire.FrameEnd, b, stop, timeout)
	}
	f, err := body.file()
	if err != nil {
		return err
	}
	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:min(cap(*bp), asgiwire.MaxChunk)]
	for left := body.size(); ; {
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), left)])
		left -= int64(n)
		if err != nil && left > 0 {
			return err
		}
		typ := uint8(asgiwire.FrameBody)
		if left == 0 {
			typ = asgiwire.FrameEnd
		}
		// sendData writes before returning: buf can be reused.
		if err := stream.sendData(typ, buf[:n], stop, timeout); err != nil {
			return err
		}
		if left == 0 {
			return nil
		}
	}
}

// next waits for the stream's next frame. deadline zero waits without
// limit. It returns errClientGone when the client leaves, errDrain when a
// drain asks the stream to end, errTimeout at the deadline.
func (st *astream) next(done <-chan struct{}, deadline time.Time, drain bool) (aframe, error) {
	var timer *time.Timer
	var tc <-chan time.Time
	for {
		f, ok, err := st.take()
		if ok {
			return f, nil
		}
		if err != nil {
			return aframe{}, err
		}
		if timer == nil && !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return aframe{}, errTimeout
			}
			timer = time.NewTimer(d)
			defer timer.Stop()
			tc = timer.C
		}
		var dc <-chan struct{}
		if drain {
			dc = st.drainSig
		}
		select {
		case <-st.sig:
		case <-done:
			return aframe{}, errClientGone
		case <-tc:
			return aframe{}, errTimeout
		case <-dc:
			return aframe{}, errDrain
		}
	}
}

var (
	errTimeout = errors.New("timeout")
	errDrain   = errors.New("drain")
)

// asgiResponse reads the worker's answer: whole when the app sent its body
// in one piece (a Content-Length is set), else a stream of the pieces as
// they come (server-sent events), with the window granted back only as the
// client takes each piece.
func (s *Server) asgiResponse(rs *reqState, r *http.Request, st *settings, stream *astream, start time.Time) (outcome, response) {
	wk := stream.mc.w
	h := rs.rw.Header()
	var deadline time.Time
	if st.timeout > 0 {
		deadline = start.Add(st.timeout)
	}
	gone := r.Context().Done()
	f, err := stream.next(gone, deadline, false)
	switch {
	case err == errClientGone:
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, response{src: srcNone} // the access log says 499
	case err == errTimeout:
		s.metrics.upstreamError(kindTimeout)
		s.reqLogf(rs, "worker %s: no answer to %s %s within %s: 504", wk.id, r.Method, r.URL.Path, st.timeout)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, backendFailed(rs, http.StatusGatewayTimeout, fmt.Sprintf("berth: the worker did not answer within %s\n", st.timeout))
	case err != nil:
		s.metrics.upstreamError(kindReset)
		s.metrics.notRetried.Inc()
		s.reqLogf(rs, "worker %s: connection lost before it answered %s %s (it died or was killed): 502; not replayed on another worker", wk.id, r.Method, r.URL.Path)
		return failed502, response{}
	}
	if f.typ != asgiwire.FrameStart {
		s.metrics.upstreamError(kindBadResponse)
		if f.typ == asgiwire.FrameAbort {
			s.reqLogf(rs, "worker %s: the app failed before answering %s %s", wk.id, r.Method, r.URL.Path)
		} else {
			s.reqLogf(rs, "worker %s: frame %d where the response start was due", wk.id, f.typ)
		}
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return failed502, response{}
	}
	status, ok := asgiwire.ParseStart(f.p, h)
	if !ok {
		clear(h)
		s.metrics.upstreamError(kindBadResponse)
		s.reqLogf(rs, "worker %s: malformed response start (%d bytes)", wk.id, len(f.p))
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return failed502, response{}
	}
	noBody := r.Method == http.MethodHead || status == http.StatusNoContent || status == http.StatusNotModified
	f, err = stream.next(gone, time.Time{}, true)
	if err == nil && f.typ == asgiwire.FrameEnd {
		// The whole body in one piece.
		if st.logUp {
			rs.up.end(time.Now())
		}
		return done, response{src: srcBytes, status: status, b: f.p, noBody: noBody}
	}
	rs.astream = asgiStream{s: s, rs: rs, r: r, stream: stream, first: f, firstErr: err, gone: gone}
	return done, response{src: srcStream, status: status, noBody: noBody, stream: &rs.astream}
}

// asgiStream is an ASGI answer sent in pieces. A drain tells the app
// (http.disconnect) and gives it drainGrace to end the response itself.
type asgiStream struct {
	s        *Server
	rs       *reqState
	r        *http.Request
	stream   *astream
	first    aframe // the frame read after the start, not yet passed on
	firstErr error
	havePrev bool // the last piece passed on must be credited back
	prevLen  int
	graceEnd time.Time
	gone     <-chan struct{}
	release  func()
}

func (as *asgiStream) next() ([]byte, error) {
	st := as.stream
	if as.havePrev {
		// The client took the last piece: the app may send more.
		st.credit(as.prevLen)
		as.havePrev = false
	}
	for {
		var f aframe
		var err error
		if as.first.typ != 0 || as.firstErr != nil {
			f, err = as.first, as.firstErr
			as.first, as.firstErr = aframe{}, nil
		} else {
			f, err = st.next(as.gone, as.graceEnd, as.graceEnd.IsZero())
		}
		wk := st.mc.w
		if err != nil {
			switch err {
			case errClientGone:
				st.sendCode(asgiwire.FrameDisconnect, 1006)
				return nil, errClientGone
			case errDrain:
				st.sendCode(asgiwire.FrameGoaway, st.drainCode())
				as.graceEnd = time.Now().Add(drainGrace)
				continue
			case errTimeout:
				// The grace after a drain passed: end the response here.
				st.sendCode(asgiwire.FrameDisconnect, 1006)
				return nil, io.EOF
			default:
				as.s.metrics.upstreamError(kindBadResponse)
				as.s.reqLogf(as.rs, "worker %s: streamed response broke: %v", wk.id, err)
				return nil, err
			}
		}
		switch f.typ {
		case asgiwire.FrameBody:
			as.havePrev, as.prevLen = true, len(f.p)
			return f.p, nil
		case asgiwire.FrameEnd:
			return f.p, io.EOF
		case asgiwire.FrameAbort:
			as.s.reqLogf(as.rs, "worker %s: the app failed in the middle of the response to %s %s", wk.id, as.r.Method, as.r.URL.Path)
			return nil, errAppFailed
		default:
			as.s.metrics.upstreamError(kindBadResponse)
			as.s.reqLogf(as.rs, "worker %s: frame %d in a response body", wk.id, f.typ)
			st.sendCode(asgiwire.FrameDisconnect, 1006)
			return nil, errAppFailed
		}
	}
}

func (as *asgiStream) end(clean bool) {
	if !clean {
		as.stream.sendCode(asgiwire.FrameDisconnect, 1006)
	}
	if as.s.cfg.Load().logUp {
		as.rs.up.end(time.Now())
	}
	if as.release != nil {
		as.release()
		as.release = nil
	}
}

// errAppFailed: the app broke off its streamed answer.
var errAppFailed = errors.New("the app failed in the middle of the response")
