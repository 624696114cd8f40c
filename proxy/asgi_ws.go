package proxy

// asgi_ws.go: a websocket on an ASGI worker. The app decides the
// handshake (websocket.accept with its subprotocol and headers, or
// websocket.close: 403); only then is the connection taken over and the
// handshake answered; package wsframe does the framing. Messages are relayed
// both ways within the stream's windows.
//
// A drain (the worker replaced, or the proxy stopping) stops accepting
// client messages, tells the app (websocket.disconnect with the drain's
// code, after the messages it already has), relays what the app still
// sends, and closes with that code: every message the app was handed is
// answered before the close; one the client sent after the drain began is
// never handed to the app, and the client learns it from the close code
// (1012 service restart, 1001 going away) and sends it again elsewhere.

import (
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/berth-dev/berth/proxy/asgiwire"
	"github.com/berth-dev/berth/proxy/wsframe"
)

// wsMaxMessage bounds a client message when max_body_size is 0 (no limit
// for bodies, which are spooled to disk; a message is held in memory).
const wsMaxMessage = 16 << 20

func (s *Server) websocket(rs *reqState, r *http.Request, st *settings, stream *astream, start time.Time, release func()) (outcome, response) {
	wk := stream.mc.w
	w := &rs.rw
	var deadline time.Time
	if st.timeout > 0 {
		deadline = start.Add(st.timeout)
	}
	f, err := stream.next(r.Context().Done(), deadline, false)
	switch {
	case err == errClientGone:
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, response{src: srcNone}
	case err == errTimeout:
		s.metrics.upstreamError(kindTimeout)
		s.reqLogf(rs, "worker %s: no answer to the websocket handshake %s within %s: 504", wk.id, r.URL.Path, st.timeout)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, backendFailed(rs, http.StatusGatewayTimeout, "berth: the worker did not answer the websocket handshake in time\n")
	case err != nil:
		s.metrics.upstreamError(kindReset)
		s.reqLogf(rs, "worker %s: connection lost before it answered the websocket handshake %s: 502", wk.id, r.URL.Path)
		return failed502, response{}
	}
	switch f.typ {
	case asgiwire.FrameAccept:
	case asgiwire.FrameClose:
		// websocket.close before websocket.accept refuses the handshake
		// (ASGI: 403).
		return done, berthError(rs, http.StatusForbidden, "berth: the app refused the websocket\n")
	case asgiwire.FrameAbort:
		s.reqLogf(rs, "worker %s: the app failed before accepting the websocket %s", wk.id, r.URL.Path)
		return done, berthError(rs, http.StatusInternalServerError, "Internal Server Error\n")
	default:
		s.metrics.upstreamError(kindBadResponse)
		s.reqLogf(rs, "worker %s: frame %d where the websocket handshake answer was due", wk.id, f.typ)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return failed502, response{}
	}
	sub, ok := asgiwire.ParseAccept(f.p, w.Header())
	if !ok {
		clear(w.Header())
		s.metrics.upstreamError(kindBadResponse)
		s.reqLogf(rs, "worker %s: malformed websocket accept", wk.id)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return failed502, response{}
	}
	key, err := wsframe.CheckRequest(r)
	if err != nil {
		// The app accepted a handshake that is not one (isWebsocket only
		// looked at Upgrade and Connection): the client gets the reason.
		s.reqLogf(rs, "worker %s: websocket handshake from the client refused: %v", wk.id, err)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		clear(w.Header())
		status := http.StatusBadRequest
		var he *wsframe.HandshakeError
		if errors.As(err, &he) {
			status = he.Status
		}
		return done, berthError(rs, status, "berth: "+err.Error()+"\n")
	}
	hj, ok := w.w.(http.Hijacker)
	if !ok {
		s.reqLogf(rs, "worker %s: websocket over %s, which cannot be taken over: 505", wk.id, r.Proto)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		clear(w.Header())
		return done, berthError(rs, http.StatusHTTPVersionNotSupported, "berth: websockets need HTTP/1.1\n")
	}
	var extra [][2]string
	for name, vals := range w.Header() {
		for _, v := range vals {
			extra = append(extra, [2]string{name, v})
		}
	}
	raw, brw, err := hj.Hijack()
	if err != nil {
		s.reqLogf(rs, "worker %s: websocket: taking the connection over failed: %v", wk.id, err)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, response{src: srcNone}
	}
	// Bytes read past the handshake are the first frames; the
	// connection's buffers are not kept.
	var prefix []byte
	if n := brw.Reader.Buffered(); n > 0 {
		prefix, _ = brw.Reader.Peek(n)
	}
	raw.SetWriteDeadline(time.Now().Add(sendTimeout))
	if err := wsframe.WriteAccept(raw, key, sub, extra); err != nil {
		raw.Close()
		s.reqLogf(rs, "worker %s: websocket handshake with the client failed: %v", wk.id, err)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, response{src: srcNone}
	}
	raw.SetWriteDeadline(time.Time{})
	w.status = http.StatusSwitchingProtocols
	limit := st.maxBody
	if limit <= 0 {
		limit = wsMaxMessage
	}
	s.wsOpen.Add(1)
	s.metrics.wsOpen.Inc()
	rl := &wsRelay{s: s, rs: rs, r: r, st: st, raw: raw, conn: wsframe.NewConn(raw, prefix), stream: stream,
		limit: limit, release: release, closeCode: wsframe.CloseNormal, stop: make(chan struct{})}
	rs.detached = true
	// The request's scratch is not needed while the websocket lives.
	rs.pkt, rs.head, rs.line = nil, nil, nil
	rs.body.release()
	stream.setNotify(rl.kick)
	go rl.readClient()
	return done, response{src: srcNone}
}

// wsRelay is one accepted websocket between a client and an ASGI app. The
// request's handler has returned by the time it runs: one goroutine reads
// the client (parked in a read while the websocket is idle, at a shallow
// stack), and the app's frames are written by a writer that their arrival
// starts and that ends once it has written them, so an idle websocket holds
// one parked goroutine, the connection and no buffer. The reader ends the
// request: the stream forgotten, the worker given back, the access log line.
//
// A drain (the worker replaced, or the proxy stopping) stops passing client
// messages on, tells the app (websocket.disconnect with the drain's code,
// after the messages it already has), relays what the app still sends, and
// closes with that code: every message the app was handed is answered
// before the close; one the client sent after the drain began is never
// handed to the app, and the client learns it from the close code (1012
// service restart, 1001 going away) and sends it again elsewhere.
type wsRelay struct {
	s       *Server
	rs      *reqState
	r       *http.Request
	st      *settings
	raw     net.Conn
	conn    *wsframe.Conn
	stream  *astream
	limit   int64
	release func() // the stream forgotten, the worker given back
	// stop is closed once client messages may no longer reach the app (a
	// drain began, a close went out): a send waiting for the app's window
	// gives up.
	stop     chan struct{}
	stopOnce sync.Once

	mu        sync.Mutex
	writing   bool // a writer is draining the stream's frames
	draining  bool // client messages are no longer passed on
	drained   bool // the drain's GOAWAY went to the app
	closing   bool // a close frame went to the client
	appGone   bool // the app was told the client is gone
	closeCode uint16
	grace     *time.Timer
}

// kick starts a writer unless one runs; the stream calls it on every frame,
// drain and failure. It never blocks: it runs on the worker connection's
// reader.
func (rl *wsRelay) kick() {
	rl.mu.Lock()
	if rl.writing {
		rl.mu.Unlock()
		return
	}
	rl.writing = true
	rl.mu.Unlock()
	go rl.writeApp()
}

// writeApp writes the app's frames to the client until none is left.
func (rl *wsRelay) writeApp() {
	st := rl.stream
	for {
		if code := st.drainCode(); code != 0 {
			rl.beginDrain(code)
		}
		f, ok, err := st.take()
		if !ok && err == nil {
			rl.mu.Lock()
			rl.writing = false
			rl.mu.Unlock()
			// A frame that came after take and before writing was
			// cleared kicked nobody: look once more.
			rl.mu.Lock()
			drainDone := rl.drained
			rl.mu.Unlock()
			if !st.waiting() || drainDone && !st.hasFrames() {
				return
			}
			rl.mu.Lock()
			if rl.writing {
				rl.mu.Unlock()
				return
			}
			rl.writing = true
			rl.mu.Unlock()
			continue
		}
		if err != nil {
			// The worker is gone.
			rl.closeClient(wsframe.CloseInternalError, "")
			return
		}
		rl.mu.Lock()
		closing := rl.closing
		rl.mu.Unlock()
		if closing {
			// The close went out: nothing more may follow it.
			if f.typ == asgiwire.FrameText || f.typ == asgiwire.FrameBinary {
				st.credit(len(f.p))
			}
			continue
		}
		switch f.typ {
		case asgiwire.FrameText, asgiwire.FrameBinary:
			op := wsframe.OpText
			if f.typ == asgiwire.FrameBinary {
				op = wsframe.OpBinary
			}
			rl.raw.SetWriteDeadline(time.Now().Add(sendTimeout))
			if err := rl.conn.WriteMessage(op, f.p); err != nil {
				if errors.Is(err, wsframe.ErrClosed) {
					continue // a close went out meanwhile
				}
				rl.tellApp(1006, "")
				rl.raw.Close() // the client is gone or stuck; the reader ends the request
				continue
			}
			rl.s.metrics.wsOut.Inc()
			st.credit(len(f.p))
		case asgiwire.FrameClose:
			code, reason := wsframe.CloseNormal, ""
			if len(f.p) >= 2 {
				code, reason = binary.BigEndian.Uint16(f.p), string(f.p[2:])
			}
			rl.mu.Lock()
			if rl.draining {
				// The drain's code, whatever the app said: it is what
				// tells the client to reconnect.
				code, reason = st.drainCode(), ""
			}
			rl.mu.Unlock()
			rl.closeClient(code, reason)
		case asgiwire.FrameAbort:
			rl.closeClient(wsframe.CloseInternalError, "")
		default:
			rl.s.reqLogf(rl.rs, "worker %s: frame %d on a websocket", st.mc.w.id, f.typ)
			rl.tellApp(1006, "")
			rl.closeClient(wsframe.CloseInternalError, "")
		}
	}
}

// beginDrain stops passing client messages on and tells the app; past
// drainGrace the websocket is closed for it.
func (rl *wsRelay) beginDrain(code uint16) {
	rl.mu.Lock()
	if rl.drained {
		rl.mu.Unlock()
		return
	}
	rl.draining, rl.drained = true, true
	rl.stopOnce.Do(func() { close(rl.stop) })
	rl.grace = time.AfterFunc(drainGrace, func() {
		rl.tellApp(code, "")
		rl.closeClient(code, "")
	})
	rl.mu.Unlock()
	rl.stream.sendCode(asgiwire.FrameGoaway, code)
}

// closeClient sends the close frame (once) and gives the client's answer
// a bounded wait: the reader ends the request when it comes, or at the
// deadline.
func (rl *wsRelay) closeClient(code uint16, reason string) {
	rl.mu.Lock()
	if rl.closing {
		rl.mu.Unlock()
		return
	}
	rl.closing, rl.closeCode = true, code
	rl.mu.Unlock()
	rl.stopOnce.Do(func() { close(rl.stop) })
	rl.raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := rl.conn.WriteClose(code, truncateReason(reason)); err != nil {
		rl.raw.Close()
		return
	}
	rl.raw.SetReadDeadline(time.Now().Add(5 * time.Second))
}

// tellApp sends websocket.disconnect (once), unless a drain already
// told the app to end.
func (rl *wsRelay) tellApp(code uint16, reason string) {
	rl.mu.Lock()
	if rl.appGone {
		rl.mu.Unlock()
		return
	}
	rl.appGone = true
	rl.mu.Unlock()
	b := binary.BigEndian.AppendUint16(nil, code)
	rl.stream.send(asgiwire.FrameDisconnect, append(b, reason...))
}

// readClient passes the client's messages to the app until the websocket
// ends, then ends the request.
func (rl *wsRelay) readClient() {
	st := rl.stream
	for {
		op, p, err := rl.conn.ReadMessage(rl.limit)
		if err != nil {
			var ce *wsframe.CloseError
			var pe *wsframe.ProtocolError
			switch {
			case errors.As(err, &ce):
				// The client's code and reason reach the app's
				// websocket.disconnect; its close is answered.
				rl.mu.Lock()
				draining := rl.draining
				rl.mu.Unlock()
				if !draining {
					rl.tellApp(ce.Code, ce.Reason)
				}
				rl.closeClient(ce.Code, "") // 1005: an empty close, as it came
			case errors.As(err, &pe):
				rl.tellApp(1006, "")
				rl.closeClient(pe.Code, "")
			default:
				rl.tellApp(1006, "") // gone without a close frame
			}
			break
		}
		rl.mu.Lock()
		draining := rl.draining
		rl.mu.Unlock()
		if draining {
			continue // not accepted: the close code tells the client to resend
		}
		ft := uint8(asgiwire.FrameText)
		if op == wsframe.OpBinary {
			ft = asgiwire.FrameBinary
		}
		if err := st.sendData(ft, p, rl.stop, 0); err != nil {
			select {
			case <-rl.stop:
				continue // a drain or a close: the close code tells the client
			default:
			}
			rl.tellApp(1006, "")
			rl.closeClient(wsframe.CloseInternalError, "")
			continue
		}
		rl.s.metrics.wsIn.Inc()
	}
	rl.raw.Close()
	rl.mu.Lock()
	if rl.grace != nil {
		rl.grace.Stop()
	}
	rl.mu.Unlock()
	st.setNotify(nil)
	rl.release()
	rl.s.metrics.wsOpen.Dec()
	rl.s.finishDetached(rl.rs, rl.r, rl.st)
	rl.s.wsOpen.Done()
}

// truncateReason keeps a close reason within a close frame (125 bytes, the
// code's 2 included), cut at a UTF-8 boundary.
func truncateReason(s string) string {
	if len(s) <= 123 {
		return s
	}
	s = s[:123]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
