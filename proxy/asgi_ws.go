package proxy

// asgi_ws.go: a websocket on an ASGI worker. The app decides the
// handshake (websocket.accept with its subprotocol and headers, or
// websocket.close: 403); only then is the connection hijacked and the
// handshake answered, by github.com/coder/websocket, which also does all of
// the framing. Messages are relayed both ways within the stream's windows.
//
// A drain (the worker replaced, or the proxy stopping) stops accepting
// client messages, tells the app (websocket.disconnect with the drain's
// code, after the messages it already has), relays what the app still
// sends, and closes with that code: every message the app was handed is
// answered before the close; one the client sent after the drain began is
// never handed to the app, and the client learns it from the close code
// (1012 service restart, 1001 going away) and sends it again elsewhere.

import (
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/proxy/asgiwire"

	"github.com/coder/websocket"
)

// wsMaxMessage bounds a client message when max_body_size is 0 (no limit
// for bodies, which are spooled to disk; a message is held in memory).
const wsMaxMessage = 16 << 20

func (s *Server) websocket(rs *reqState, r *http.Request, st *settings, stream *astream, start time.Time) (outcome, response) {
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
	opts := &websocket.AcceptOptions{
		// Origin checks are the app's (it has the Origin header), as
		// behind nginx.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	}
	if sub != "" {
		opts.Subprotocols = []string{sub}
	}
	if ci := connInfoOf(r); ci.framed != nil {
		// From the handshake on, the connection speaks websocket: the
		// HTTP/1.1 http1.Framer lets its bytes through unjudged.
		ci.framed.tunnel()
	}
	conn, err := websocket.Accept(w, r, opts)
	if err != nil {
		s.reqLogf(rs, "worker %s: websocket handshake with the client failed: %v", wk.id, err)
		stream.sendCode(asgiwire.FrameDisconnect, 1006)
		return done, response{src: srcNone}
	}
	w.status = http.StatusSwitchingProtocols
	limit := st.maxBody
	if limit <= 0 {
		limit = wsMaxMessage
	}
	conn.SetReadLimit(limit)
	s.wsOpen.Add(1)
	s.metrics.wsOpen.Inc()
	defer func() {
		s.metrics.wsOpen.Dec()
		s.wsOpen.Done()
	}()
	s.relayWebsocket(conn, stream)
	return done, response{src: srcNone}
}

// relayWebsocket runs an accepted websocket until either side closes it.
func (s *Server) relayWebsocket(conn *websocket.Conn, stream *astream) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var draining atomic.Bool
	clientGone := make(chan struct{})
	// The client side: messages in, within the stream's window.
	go func() {
		defer close(clientGone)
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				if !draining.Load() {
					// The client's code and reason reach the app's
					// websocket.disconnect.
					var b []byte
					var ce websocket.CloseError
					if errors.As(err, &ce) {
						b = binary.BigEndian.AppendUint16(b, uint16(ce.Code))
						b = append(b, ce.Reason...)
					} else {
						b = binary.BigEndian.AppendUint16(b, 1006) // gone without a close frame
					}
					stream.send(asgiwire.FrameDisconnect, b)
				}
				return
			}
			if draining.Load() {
				continue // not accepted: the close code tells the client to resend
			}
			ft := uint8(asgiwire.FrameText)
			if typ == websocket.MessageBinary {
				ft = asgiwire.FrameBinary
			}
			if err := stream.sendData(ft, data, ctx.Done(), 0); err != nil {
				conn.CloseNow()
				return
			}
			s.metrics.wsIn.Inc()
		}
	}()
	var graceEnd time.Time
	code, reason := websocket.StatusNormalClosure, ""
	for {
		f, err := stream.next(clientGone, graceEnd, graceEnd.IsZero())
		switch err {
		case nil:
		case errClientGone:
			return // the reader told the worker
		case errDrain:
			// Stop handing client messages to the app, tell it, and
			// let it answer what it has.
			draining.Store(true)
			stream.sendCode(asgiwire.FrameGoaway, stream.drainCode())
			graceEnd = time.Now().Add(drainGrace)
			continue
		case errTimeout:
			// The app did not end within the grace: close for it.
			stream.sendCode(asgiwire.FrameDisconnect, stream.drainCode())
			s.closeWebsocket(conn, websocket.StatusCode(stream.drainCode()), "", clientGone)
			return
		default:
			// The worker is gone.
			s.closeWebsocket(conn, websocket.StatusInternalError, "", clientGone)
			return
		}
		switch f.typ {
		case asgiwire.FrameText, asgiwire.FrameBinary:
			mt := websocket.MessageText
			if f.typ == asgiwire.FrameBinary {
				mt = websocket.MessageBinary
			}
			wctx, wcancel := context.WithTimeout(ctx, sendTimeout)
			err := conn.Write(wctx, mt, f.p)
			wcancel()
			if err != nil {
				stream.sendCode(asgiwire.FrameDisconnect, 1006)
				conn.CloseNow()
				<-clientGone
				return
			}
			s.metrics.wsOut.Inc()
			stream.credit(len(f.p))
		case asgiwire.FrameClose:
			if len(f.p) >= 2 {
				code = websocket.StatusCode(binary.BigEndian.Uint16(f.p))
				reason = string(f.p[2:])
			}
			if d := stream.drainCode(); d != 0 && draining.Load() {
				// The drain's code, whatever the app said: it is what
				// tells the client to reconnect.
				code, reason = websocket.StatusCode(d), ""
			}
			s.closeWebsocket(conn, code, reason, clientGone)
			return
		case asgiwire.FrameAbort:
			s.closeWebsocket(conn, websocket.StatusInternalError, "", clientGone)
			return
		default:
			s.logf("worker %s: frame %d on a websocket", stream.mc.w.id, f.typ)
			stream.sendCode(asgiwire.FrameDisconnect, 1006)
			s.closeWebsocket(conn, websocket.StatusInternalError, "", clientGone)
			return
		}
	}
}

// closeWebsocket does the closing handshake (bounded by the library's own
// timeout) and waits for the reader to stop.
func (s *Server) closeWebsocket(conn *websocket.Conn, code websocket.StatusCode, reason string, clientGone <-chan struct{}) {
	if len(reason) > 123 {
		reason = reason[:123] // a close frame's payload is at most 125 bytes
	}
	if err := conn.Close(code, reason); err != nil {
		conn.CloseNow()
	}
	<-clientGone
}
