// Package wsframe is the server's side of the WebSocket wire format (RFC
// 6455) over a hijacked connection, built so that an idle websocket costs
// one goroutine blocked in a read and a Conn of about a hundred bytes: no
// read buffer, no write buffer, no message kept between messages. It
// negotiates no extensions (so no compression) and leaves timeouts to the
// caller's deadlines on the net.Conn. Text is checked for UTF-8 a whole
// frame at a time (a frame's bad first bytes are not caught before its
// last ones arrive; a bad fragment is, before the next).
package wsframe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"unicode/utf8"
)

// Opcode is a frame's kind (RFC 6455 §5.2). ReadMessage returns only
// OpText or OpBinary; the zero Opcode is a continuation frame's.
type Opcode byte

const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// Close codes (RFC 6455 §7.4.1) this package sends or reports.
const (
	CloseNormal        uint16 = 1000
	CloseGoingAway     uint16 = 1001
	CloseProtocolError uint16 = 1002 // a frame broke the framing rules
	CloseNoStatus      uint16 = 1005 // the close frame had no code; never on the wire
	CloseInvalidData   uint16 = 1007 // text or a close reason that is not UTF-8
	CloseTooBig        uint16 = 1009 // a message over ReadMessage's limit
	CloseInternalError uint16 = 1011 // the server (the app behind it) failed
)

// ProtocolError is a frame the client may not send. The stream cannot be
// read further: send WriteClose(Code, "") and close the connection.
type ProtocolError struct {
	Code uint16 // the close code owed to the client: 1002, 1007 or 1009
	Msg  string
}

func (e *ProtocolError) Error() string { return "websocket: " + e.Msg }

func protoErr(code uint16, format string, a ...any) error {
	return &ProtocolError{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// CloseError is the client's close frame, ending what it sends. Answer
// with WriteClose(Code, "") (1005, for a close without a code, answers
// with an empty close) and then close the connection: the server closes
// TCP first (RFC 6455 §7.1.1).
type CloseError struct {
	Code   uint16
	Reason string // valid UTF-8, at most 123 bytes
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket: the client closed with %d %q", e.Code, e.Reason)
}

// ErrClosed is returned by writes after WriteClose: RFC 6455 §5.5.1 allows
// no frame after a close.
var ErrClosed = errors.New("websocket: write after the close frame")

// Conn is one websocket's server end. ReadMessage belongs to one goroutine
// at a time; the Write methods may be called from any goroutines, also
// while ReadMessage runs. The zero Conn has no connection: use NewConn.
type Conn struct {
	rw     io.ReadWriter
	prefix []byte   // read ahead by net/http; consumed before rw, then dropped
	rerr   error    // a final read error: the stream is out of step
	hdr    [14]byte // the frame header being read: 2 bytes, length, mask key

	wmu  sync.Mutex
	werr error // ErrClosed after WriteClose, or the error that cut a frame short
}

// NewConn starts framing on rw, the connection after a 101 answer. prefix
// holds bytes the HTTP server had already read past the request (a
// bufio.Reader's Buffered bytes at hijack time), if any: they are read
// first. NewConn copies prefix, so it may alias a buffer about to be
// reused.
func NewConn(rw io.ReadWriter, prefix []byte) *Conn {
	c := &Conn{rw: rw}
	if len(prefix) > 0 {
		c.prefix = append([]byte(nil), prefix...)
	}
	return c
}

// ReadMessage returns the next whole text or binary message, answering
// pings on the way (a pong waits behind any write in progress, so a
// client too slow to take what is written also stalls the reader). limit bounds the message's size in bytes: a longer
// one is refused (1009) from its frame headers, before anything is
// allocated for it. The slice is the caller's.
//
// Errors: *CloseError when the client closed; *ProtocolError when it
// broke the protocol; io.EOF when the connection ended between messages;
// anything else (io.ErrUnexpectedEOF, a deadline) when it ended or failed.
// An error before the first byte of a frame (io.EOF, a read deadline
// passing on an idle client) leaves the stream in step: the caller may
// call again, say after a ping. Every other error is final and returned
// again by later calls.
func (c *Conn) ReadMessage(limit int64) (Opcode, []byte, error) {
	if c.rerr != nil {
		return 0, nil, c.rerr
	}
	op, p, idle, err := c.readMessage(max(0, min(limit, math.MaxInt)))
	if err != nil && !idle {
		c.rerr = err
	}
	return op, p, err
}

// readMessage reads a message; idle says an error came between frames,
// with no message begun.
func (c *Conn) readMessage(limit int64) (_ Opcode, _ []byte, idle bool, _ error) {
	var (
		op      Opcode // the message's, once its first frame is in
		msg     []byte
		checked int // msg[:checked] is known to be whole UTF-8 code points
	)
	for {
		if n, err := c.readFull(c.hdr[:2]); err != nil {
			if op != 0 || n > 0 {
				return 0, nil, false, noEOF(err)
			}
			return 0, nil, true, err
		}
		h, err := c.readHeader()
		if err != nil {
			return 0, nil, false, err
		}
		if h.op >= OpClose {
			if err := c.control(h); err != nil {
				return 0, nil, false, err
			}
			continue
		}
		switch {
		case h.op == OpContinuation && op == 0:
			err = protoErr(CloseProtocolError, "continuation frame with no message begun")
		case h.op != OpContinuation && op != 0:
			err = protoErr(CloseProtocolError, "new message begun inside a fragmented one")
		case h.n > limit-int64(len(msg)):
			err = protoErr(CloseTooBig, "message over the limit of %d bytes", limit)
		}
		if err != nil {
			return 0, nil, false, err
		}
		if op == 0 {
			op = h.op
		}
		start := len(msg)
		msg = grow(msg, int(h.n), int(limit))
		if _, err := c.readFull(msg[start:]); err != nil {
			return 0, nil, false, noEOF(err)
		}
		mask(h.key, msg[start:])
		if op == OpText {
			n, ok := validUTF8(msg[checked:], h.fin)
			if !ok {
				return 0, nil, false, protoErr(CloseInvalidData, "text message is not valid UTF-8")
			}
			checked += n
		}
		if h.fin {
			return op, msg, false, nil
		}
	}
}

type header struct {
	fin bool
	op  Opcode
	n   int64 // payload length
	key [4]byte
}

// readHeader judges the frame header's first two bytes, in c.hdr, and
// reads the rest: the extended length and the mask key.
func (c *Conn) readHeader() (h header, err error) {
	b := c.hdr[:2]
	h.fin, h.op = b[0]&0x80 != 0, Opcode(b[0]&0x0f)
	n7 := b[1] & 0x7f
	switch {
	case b[0]&0x70 != 0:
		return h, protoErr(CloseProtocolError, "reserved bits set, with no extension agreed")
	case h.op > OpBinary && h.op < OpClose || h.op > OpPong:
		return h, protoErr(CloseProtocolError, "reserved opcode %#x", byte(h.op))
	case h.op >= OpClose && !h.fin:
		return h, protoErr(CloseProtocolError, "fragmented control frame")
	case h.op >= OpClose && n7 > 125:
		return h, protoErr(CloseProtocolError, "control frame over 125 bytes")
	case b[1]&0x80 == 0:
		return h, protoErr(CloseProtocolError, "client frame not masked")
	}
	ext := 0 // bytes of extended length
	switch n7 {
	case 126:
		ext = 2
	case 127:
		ext = 8
	}
	b = c.hdr[2 : 2+ext+4]
	if _, err := c.readFull(b); err != nil {
		return h, noEOF(err)
	}
	switch ext {
	case 0:
		h.n = int64(n7)
	case 2:
		h.n = int64(binary.BigEndian.Uint16(b))
	case 8:
		n := binary.BigEndian.Uint64(b)
		if n > math.MaxInt64 {
			return h, protoErr(CloseProtocolError, "64-bit length with the most significant bit set")
		}
		h.n = int64(n)
	}
	copy(h.key[:], b[ext:])
	return h, nil
}

// control handles a ping, pong or close frame arriving between or inside
// messages.
func (c *Conn) control(h header) error {
	bp := getBuf(int(h.n))
	defer putBuf(bp)
	p := (*bp)[:h.n]
	if _, err := c.readFull(p); err != nil {
		return noEOF(err)
	}
	mask(h.key, p)
	switch h.op {
	case OpPing:
		if err := c.writeFrame(OpPong, p, false); err != ErrClosed {
			return err
		}
		return nil // our close is out: the client's close is what is due now
	case OpClose:
		if len(p) == 0 {
			return &CloseError{Code: CloseNoStatus}
		}
		if len(p) == 1 {
			return protoErr(CloseProtocolError, "close frame with a 1-byte payload")
		}
		code := binary.BigEndian.Uint16(p)
		if !validCode(code) {
			return protoErr(CloseProtocolError, "close code %d is not one to send", code)
		}
		if !utf8.Valid(p[2:]) {
			return protoErr(CloseInvalidData, "close reason is not valid UTF-8")
		}
		return &CloseError{Code: code, Reason: string(p[2:])}
	}
	return nil // a pong: unsolicited ones are allowed, and we await none
}

// validCode reports whether code may be sent in a close frame: RFC 6455
// §7.4's defined codes, those IANA registered since (1012-1014), and the
// ranges for libraries and apps (3000-4999). 1005, 1006 and 1015 stand for
// what has no close frame.
func validCode(code uint16) bool {
	switch {
	case code >= 3000 && code <= 4999:
		return true
	case code < 1000 || code > 1014:
		return false
	}
	return code != 1004 && code != 1005 && code != 1006
}

// readFull fills p from the prefix, then the connection, returning how
// many bytes it read; io.EOF means none.
func (c *Conn) readFull(p []byte) (int, error) {
	n := copy(p, c.prefix)
	if c.prefix = c.prefix[n:]; len(c.prefix) == 0 {
		c.prefix = nil
	}
	if n == len(p) {
		return n, nil
	}
	m, err := io.ReadFull(c.rw, p[n:])
	if err == io.EOF && n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n + m, err
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// grow extends msg by n bytes. A message's first frame gets exactly its
// size, so a message in one frame costs one allocation of its size; later
// fragments double it, never past limit, so a fragmented message costs
// under 2*limit in all.
func grow(msg []byte, n, limit int) []byte {
	need := len(msg) + n
	if need <= cap(msg) {
		return msg[:need]
	}
	m := make([]byte, need, max(need, min(2*cap(msg), limit)))
	copy(m, msg)
	return m
}

// mask applies (or removes) a masking key to a frame's payload, which
// starts at key[0] (RFC 6455 §5.3).
func mask(key [4]byte, p []byte) {
	k := uint64(binary.LittleEndian.Uint32(key[:]))
	k |= k << 32
	for ; len(p) >= 8; p = p[8:] {
		binary.LittleEndian.PutUint64(p, binary.LittleEndian.Uint64(p)^k)
	}
	for i := range p {
		p[i] ^= key[i&3]
	}
}

// validUTF8 checks a text message's unchecked tail p: it returns how many
// of p's bytes are whole valid code points. Unless the message is final,
// a code point cut at the end of p is not an error: it is checked again
// with the next fragment.
func validUTF8(p []byte, final bool) (n int, ok bool) {
	if utf8.Valid(p) {
		return len(p), true
	}
	if final {
		return 0, false
	}
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		if utf8.RuneStart(p[i]) {
			return i, !utf8.FullRune(p[i:]) && utf8.Valid(p[:i])
		}
	}
	return 0, false
}

// WriteMessage sends p as one text (op OpText, p UTF-8: the client closes
// on anything else) or binary message.
func (c *Conn) WriteMessage(op Opcode, p []byte) error {
	if op != OpText && op != OpBinary {
		return fmt.Errorf("websocket: WriteMessage with opcode %#x, want text or binary", byte(op))
	}
	return c.writeFrame(op, p, false)
}

// WritePing sends a ping with p (at most 125 bytes) as its payload; the
// client's pong is dropped by ReadMessage.
func (c *Conn) WritePing(p []byte) error {
	if len(p) > 125 {
		return fmt.Errorf("websocket: ping payload of %d bytes, at most 125 fit", len(p))
	}
	return c.writeFrame(OpPing, p, false)
}

// WriteClose sends the close frame; every later write returns ErrClosed.
// Code 1005 sends a close without a code, which is how to answer a
// CloseError of 1005; other codes must be ones a close frame may carry.
// A reason longer than 123 bytes is cut at a code point, and invalid
// UTF-8 in it replaced: the close is worth more than the reason's bytes.
func (c *Conn) WriteClose(code uint16, reason string) error {
	var p []byte
	if code != CloseNoStatus {
		if !validCode(code) {
			return fmt.Errorf("websocket: close code %d may not be sent", code)
		}
		reason = strings.ToValidUTF8(reason, "\uFFFD")
		for len(reason) > 123 {
			_, n := utf8.DecodeLastRuneInString(reason)
			reason = reason[:len(reason)-n]
		}
		p = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), code)
		p = append(p, reason...)
	}
	return c.writeFrame(OpClose, p, true)
}

// oneWrite bounds a frame sent in one Write (through a pooled buffer, no
// syscall for the header alone); a larger frame's header goes first, in
// a Write of its own.
const oneWrite = 64 << 10

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

func getBuf(n int) *[]byte {
	bp := bufs.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, 0, n)
	}
	return bp
}

func putBuf(bp *[]byte) { *bp = (*bp)[:0]; bufs.Put(bp) }

// writeFrame sends one unmasked, final frame; closing marks it as the
// last.
func (c *Conn) writeFrame(op Opcode, p []byte, closing bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	n := len(p)
	hl := 2 // header length
	if n > 125 {
		hl = 4
	}
	if n > math.MaxUint16 {
		hl = 10
	}
	one := hl+n <= oneWrite
	size := hl
	if one {
		size += n
	}
	bp := getBuf(size)
	b := append(*bp, 0x80|byte(op))
	switch hl {
	case 2:
		b = append(b, byte(n))
	case 4:
		b = binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
	if one {
		b = append(b, p...)
	}
	_, err := c.rw.Write(b)
	if err == nil && !one {
		_, err = c.rw.Write(p)
	}
	*bp = b
	putBuf(bp)
	switch {
	case err != nil:
		c.werr = err // a frame cut short leaves the stream out of step
	case closing:
		c.werr = ErrClosed
	}
	return err
}
