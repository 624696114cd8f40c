package proxy

// asgi.go: the multiplexed framing between the proxy and an ASGI worker
// (docs/internals.md, "ASGI framing"). One unix connection per worker
// carries every request and websocket the proxy sends it, each a stream of
// frames; a credit window per stream and direction bounds what either side
// buffers. This file is the connection: dialing, the reader goroutine that
// hands frames to their streams, and writing frames.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Frame types, the same numbers as worker/berth_asgi.py.
const (
	fRequest    = 1  // proxy → worker: flags byte, then NUL-separated head fields
	fBody       = 2  // both: data, more follows
	fEnd        = 3  // both: the last data of the sender's half
	fText       = 4  // both: a websocket text message
	fBinary     = 5  // both: a websocket binary message
	fWindow     = 6  // both: u32 credit for data payload bytes
	fDisconnect = 7  // proxy → worker: u16 code, reason: the client is gone, the stream forgotten
	fGoaway     = 8  // proxy → worker: u16 code: end this websocket/stream (drain)
	fStart      = 9  // worker → proxy: u16 status, NUL-separated header names and values
	fAccept     = 10 // worker → proxy: subprotocol, NUL-separated header names and values
	fClose      = 11 // worker → proxy: u16 code, reason: the app closed the websocket
	fAbort      = 12 // worker → proxy: the app failed

	flagWebsocket = 1
	flagBody      = 2

	frameHeader = 9 // u32 length of what follows it, u8 type, u32 stream
	// asgiWindow is the credit each side starts with per stream and
	// direction: what one stream may have in flight unconsumed.
	asgiWindow = 256 << 10
	// asgiChunk is the largest data frame the proxy sends.
	asgiChunk = 64 << 10
	// maxFrame bounds a frame from a worker; a longer one is a protocol
	// error that drops the connection.
	maxFrame = 64 << 20
	// muxWriteTimeout bounds one frame write: a worker whose event loop
	// stopped reading for this long has its connection dropped (every
	// stream on it fails) rather than stalling every other stream.
	muxWriteTimeout = 30 * time.Second
)

var (
	errMuxClosed = errors.New("the connection to the ASGI worker was lost")
	errNoCredit  = errors.New("the ASGI worker stopped consuming this stream")
)

// muxConn is one connection to an ASGI worker.
type muxConn struct {
	w   *worker
	c   *net.UnixConn
	wmu sync.Mutex // one frame at a time on the wire

	mu      sync.Mutex
	streams map[uint32]*astream
	next    uint32
	err     error // set once the connection is dead
}

// aframe is a frame for one stream; p is owned by the receiver.
type aframe struct {
	typ uint8
	p   []byte
}

// astream is one request or websocket on a muxConn. Frames from the
// worker queue in inbox (bounded by the window the proxy grants); the
// goroutine serving the request takes them with next.
type astream struct {
	mc    *muxConn
	id    uint32
	ws    bool
	mu    sync.Mutex
	inbox []aframe
	err   error         // the connection died
	sig   chan struct{} // cap 1: inbox grew or err was set
	// creditSig (cap 1): window grew or err was set.
	creditSig chan struct{}
	// window is what the proxy may still send on this stream.
	window int64
	// drain, when set, is the close code a drain asks for (1012 roll,
	// 1001 shutdown); drainSig is signalled once.
	drain    uint16
	drainSig chan struct{}
}

// dialMux returns w's connection, dialing it when there is none.
func (s *Server) dialMux(w *worker) (*muxConn, error) {
	w.muxMu.Lock()
	defer w.muxMu.Unlock()
	if mc := w.mux; mc != nil {
		mc.mu.Lock()
		dead := mc.err != nil
		mc.mu.Unlock()
		if !dead {
			return mc, nil
		}
		w.mux = nil
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: w.socket, Net: "unix"})
	if err != nil {
		return nil, err
	}
	mc := &muxConn{w: w, c: c, streams: make(map[uint32]*astream)}
	w.mux = mc
	go mc.readLoop(s)
	return mc, nil
}

// open registers a new stream.
func (mc *muxConn) open(ws bool) (*astream, error) {
	st := &astream{mc: mc, ws: ws, window: asgiWindow,
		sig: make(chan struct{}, 1), creditSig: make(chan struct{}, 1), drainSig: make(chan struct{}, 1)}
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.err != nil {
		return nil, mc.err
	}
	mc.next++
	st.id = mc.next
	mc.streams[st.id] = st
	return st, nil
}

// forget drops a stream; frames still coming for it are discarded.
func (mc *muxConn) forget(st *astream) {
	mc.mu.Lock()
	delete(mc.streams, st.id)
	mc.mu.Unlock()
}

func (mc *muxConn) readLoop(s *Server) {
	var hdr [frameHeader]byte
	var err error
	// Buffered: a response's START and END (and many frames under load)
	// arrive in one read.
	br := bufio.NewReaderSize(mc.c, 32<<10)
	for {
		if _, err = io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := binary.BigEndian.Uint32(hdr[0:4])
		if n < 5 || n > maxFrame {
			err = fmt.Errorf("frame length %d out of range", n)
			break
		}
		typ, id := hdr[4], binary.BigEndian.Uint32(hdr[5:9])
		p := make([]byte, n-5)
		if _, err = io.ReadFull(br, p); err != nil {
			break
		}
		mc.mu.Lock()
		st := mc.streams[id]
		mc.mu.Unlock()
		if st == nil {
			continue // ended on our side meanwhile (a late WINDOW, say)
		}
		st.mu.Lock()
		if typ == fWindow && len(p) == 4 {
			st.window += int64(binary.BigEndian.Uint32(p))
			st.mu.Unlock()
			wake(st.creditSig)
			continue
		}
		st.inbox = append(st.inbox, aframe{typ, p})
		st.mu.Unlock()
		wake(st.sig)
	}
	if err == io.EOF || errors.Is(err, net.ErrClosed) {
		err = errMuxClosed
	} else {
		s.logf("worker %s: ASGI connection: %v", mc.w.id, err)
		err = fmt.Errorf("%w: %v", errMuxClosed, err)
	}
	mc.fail(err)
}

// fail marks the connection dead and wakes every stream on it.
func (mc *muxConn) fail(err error) {
	mc.c.Close()
	mc.mu.Lock()
	if mc.err == nil {
		mc.err = err
	}
	streams := mc.streams
	mc.streams = map[uint32]*astream{}
	mc.mu.Unlock()
	for _, st := range streams {
		st.mu.Lock()
		st.err = err
		st.mu.Unlock()
		wake(st.sig)
		wake(st.creditSig)
	}
}

// wake wakes whoever waits on a capacity-1 channel, never blocking.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// write sends one frame. A write that fails or times out kills the
// connection: a frame cut in half leaves nothing to resynchronise on.
func (mc *muxConn) write(typ uint8, id uint32, p []byte) error {
	var small [frameHeader + 256]byte
	hdr := small[:frameHeader]
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(p)+5))
	hdr[4] = typ
	binary.BigEndian.PutUint32(hdr[5:9], id)
	mc.wmu.Lock()
	mc.c.SetWriteDeadline(time.Now().Add(muxWriteTimeout))
	var err error
	if len(p) <= len(small)-frameHeader {
		_, err = mc.c.Write(append(hdr, p...))
	} else {
		bufs := net.Buffers{hdr, p}
		_, err = bufs.WriteTo(mc.c)
	}
	mc.wmu.Unlock()
	if err != nil {
		mc.fail(fmt.Errorf("%w: write: %v", errMuxClosed, err))
		return errMuxClosed
	}
	return nil
}

// send writes a frame of this stream.
func (st *astream) send(typ uint8, p []byte) error { return st.mc.write(typ, st.id, p) }

// sendCode writes a DISCONNECT or GOAWAY with its u16 code.
func (st *astream) sendCode(typ uint8, code uint16) error {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], code)
	return st.send(typ, b[:])
}

// credit tells the worker it may send n more bytes on this stream.
func (st *astream) credit(n int) {
	if n <= 0 {
		return
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(n))
	st.send(fWindow, b[:])
}

// take returns the next frame from the worker, or ok false when none is
// queued; err is set when the connection is dead and the inbox empty.
func (st *astream) take() (f aframe, ok bool, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.inbox) > 0 {
		f = st.inbox[0]
		st.inbox[0] = aframe{}
		st.inbox = st.inbox[1:]
		if len(st.inbox) == 0 {
			st.inbox = nil
		}
		return f, true, nil
	}
	return aframe{}, false, st.err
}

// sendData sends data frames within the stream's window, waiting for
// credit; stop ends the wait (the response came, the client left).
func (st *astream) sendData(typ uint8, p []byte, stop <-chan struct{}, timeout time.Duration) error {
	var timer *time.Timer
	var tc <-chan time.Time
	for {
		st.mu.Lock()
		w, err := st.window, st.err
		if w > 0 && err == nil {
			st.window -= int64(len(p))
		}
		st.mu.Unlock()
		if err != nil {
			return err
		}
		if w > 0 {
			break
		}
		if timer == nil && timeout > 0 {
			timer = time.NewTimer(timeout)
			defer timer.Stop()
			tc = timer.C
		}
		select {
		case <-st.creditSig:
		case <-stop:
			return errClientGone
		case <-tc:
			return errNoCredit
		}
	}
	return st.send(typ, p)
}

// requestDrain asks the stream's goroutine to end it with code.
func (st *astream) requestDrain(code uint16) {
	st.mu.Lock()
	first := st.drain == 0
	if first {
		st.drain = code
	}
	st.mu.Unlock()
	if first {
		wake(st.drainSig)
	}
}

// drainCode is the code a drain asked for; 0 = none.
func (st *astream) drainCode() uint16 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.drain
}

// drainStreams asks every stream on w's connection to end with code.
func (w *worker) drainStreams(code uint16) int {
	w.muxMu.Lock()
	mc := w.mux
	w.muxMu.Unlock()
	if mc == nil {
		return 0
	}
	mc.mu.Lock()
	list := make([]*astream, 0, len(mc.streams))
	for _, st := range mc.streams {
		list = append(list, st)
	}
	mc.mu.Unlock()
	for _, st := range list {
		st.requestDrain(code)
	}
	return len(list)
}

// appendHead encodes the REQUEST payload: flags, then method, scheme,
// raw path, decoded path, query, client host and port, server host and
// port, HTTP version, then each header as a lower-case name and a value,
// all NUL-separated. ok is false on a NUL in any of them: the framer and
// net/http refuse NUL in a head, but a decoded path can hold %00 (which
// nginx refuses with 400 too).
func appendHead(b []byte, flags byte, r *http.Request, in *reqInfo) (_ []byte, ok bool) {
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
	if flags&flagWebsocket != 0 {
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
