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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-dev/berth/proxy/asgiwire"
)

// muxWriteTimeout bounds one frame write: a worker whose event loop
// stopped reading for this long has its connection dropped (every
// stream on it fails) rather than stalling every other stream.
const muxWriteTimeout = 30 * time.Second

var (
	errMuxClosed = errors.New("the connection to the ASGI worker was lost")
	errNoCredit  = errors.New("the ASGI worker stopped consuming this stream")
)

// muxConn is one connection to an ASGI worker.
type muxConn struct {
	w     *worker
	c     *net.UnixConn
	wmu   sync.Mutex // one frame at a time on the wire
	wdead bool       // a write failed: nothing more is written (under wmu)

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
	// notify, when set, is called (on the connection's reader, never
	// blocking) whenever sig or drainSig is: a websocket's relay has no
	// goroutine parked on them (asgi_ws.go).
	notify atomic.Pointer[func()]
}

// setNotify sets (nil: clears) what is called on every frame, drain and
// failure of the stream.
func (st *astream) setNotify(f func()) {
	if f == nil {
		st.notify.Store(nil)
		return
	}
	st.notify.Store(&f)
	// A frame may have come before: its wake found no one to call.
	if st.waiting() {
		f()
	}
}

// poke wakes whoever waits on sig and calls notify.
func (st *astream) poke(c chan struct{}) {
	wake(c)
	if f := st.notify.Load(); f != nil {
		(*f)()
	}
}

// hasFrames says whether a frame or a failure is there to handle.
func (st *astream) hasFrames() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.inbox) > 0 || st.err != nil
}

// waiting says whether a frame, a failure or a drain is there to handle.
func (st *astream) waiting() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.inbox) > 0 || st.err != nil || st.drain != 0
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
	st := &astream{mc: mc, ws: ws, window: asgiwire.InitialWindow,
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
	var hdr [asgiwire.HeaderLen]byte
	var err error
	// Buffered: a response's START and END (and many frames under load)
	// arrive in one read.
	br := bufio.NewReaderSize(mc.c, 32<<10)
	for {
		var typ uint8
		var id uint32
		var p []byte
		if typ, id, p, err = asgiwire.ReadFrame(br, hdr[:]); err != nil {
			break
		}
		mc.mu.Lock()
		st := mc.streams[id]
		mc.mu.Unlock()
		if st == nil {
			continue // ended on our side meanwhile (a late WINDOW, say)
		}
		st.mu.Lock()
		if typ == asgiwire.FrameWindow && len(p) == 4 {
			st.window += int64(binary.BigEndian.Uint32(p))
			st.mu.Unlock()
			wake(st.creditSig)
			continue
		}
		st.inbox = append(st.inbox, aframe{typ, p})
		st.mu.Unlock()
		st.poke(st.sig)
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
		wake(st.creditSig)
		st.poke(st.sig)
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
// connection: a frame cut in half leaves nothing to resynchronise on. A
// worker that closed its end (it exited) may still have frames on their way
// to the reader (the closes of its websockets, sent as it stopped): then
// only writing stops, and the reader fails the streams once it has read
// everything, at EOF.
func (mc *muxConn) write(typ uint8, id uint32, p []byte) error {
	var small [asgiwire.HeaderLen + 256]byte
	hdr := small[:asgiwire.HeaderLen]
	asgiwire.PutHeader(hdr, typ, id, len(p))
	mc.wmu.Lock()
	if mc.wdead {
		mc.wmu.Unlock()
		return errMuxClosed
	}
	mc.c.SetWriteDeadline(time.Now().Add(muxWriteTimeout))
	var err error
	if len(p) <= len(small)-asgiwire.HeaderLen {
		_, err = mc.c.Write(append(hdr, p...))
	} else {
		bufs := net.Buffers{hdr, p}
		_, err = bufs.WriteTo(mc.c)
	}
	if err != nil {
		mc.wdead = true
	}
	mc.wmu.Unlock()
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		mc.c.CloseWrite()
		return errMuxClosed
	}
	mc.fail(fmt.Errorf("%w: write: %v", errMuxClosed, err))
	return errMuxClosed
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
	st.send(asgiwire.FrameWindow, b[:])
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
		st.poke(st.drainSig)
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
