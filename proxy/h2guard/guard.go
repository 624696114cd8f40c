// Package h2guard polices the frames an HTTP/2 client sends, below the HTTP/2
// server (golang.org/x/net/http2), which berth uses as it is.
//
// x/net bounds a header block by its bytes, not by its frames: a client that
// sends HEADERS without END_HEADERS and then zero-length CONTINUATION frames
// without end keeps one core busy forever. It also refuses a SETTINGS frame
// that names a setting twice, which RFC 9113 §6.5 allows ("processed in the
// order in which they appear"). A Conn sits between the TLS connection and
// the HTTP/2 server and reads the client's frame stream as it passes:
//
//   - flood: nginx's rule, frame bytes against useful bytes, with a cost
//     per frame. Each frame costs its bytes plus FrameCost (what x/net spends
//     on any frame, a few microseconds, expressed in bytes); when the cost of
//     all frames read, divided by 8, passes the useful bytes (DATA payload
//     and header block fragments, padding excluded) plus FloodSlack, the
//     client is flooding: empty DATA, CONTINUATION, PING, SETTINGS,
//     WINDOW_UPDATE or PRIORITY frames, whatever the mix (PING and SETTINGS,
//     which the server must answer, cost 8 times as much). A server that
//     sends much (a download) is sent WINDOW_UPDATEs in proportion: 1/128 of
//     the DATA bytes written counts as useful too.
//   - rapid reset: a client that cancels (RST_STREAM) more than 100 streams,
//     and more than half of the streams it opened, is flooding too
//     (CVE-2023-44487: each HEADERS costs the server a request, and the
//     reset costs the client nothing).
//   - header blocks: at most MaxBlockFrames frames (HEADERS and its
//     CONTINUATIONs), completed within BlockTimeout.
//   - SETTINGS: a setting named twice is collapsed to its last value before
//     the server sees the frame (an invalid earlier value is left for the
//     server to refuse).
//
// A violation ends the connection with GOAWAY (ENHANCE_YOUR_CALM), written
// between the server's own frames, and the server's next read fails. The
// zero Limits is the defaults.
package h2guard

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Frame types and flags of RFC 9113 §6 that the guard reads.
const (
	typeData         = 0x0
	typeHeaders      = 0x1
	typeRSTStream    = 0x3
	typeSettings     = 0x4
	typePing         = 0x6
	typeGoAway       = 0x7
	typeContinuation = 0x9

	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
	flagAck        = 0x1

	headerLen = 9
	// ClientPreface is what every HTTP/2 client connection starts with.
	ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	codeEnhanceYourCalm = 0xb
)

// Limits bound a client connection. A zero field is its default.
type Limits struct {
	// MaxBlockFrames is the most frames one header block may take
	// (HEADERS plus CONTINUATIONs). Default 64: 1 MiB in 16 KiB frames,
	// past any header list the server accepts.
	MaxBlockFrames int
	// BlockTimeout is how long a header block may take from its HEADERS
	// frame to END_HEADERS. Default 10s.
	BlockTimeout time.Duration
	// FloodSlack is the frame cost/8 allowed beyond the useful bytes.
	// Default 256 KiB: 32,768 frames that carry nothing.
	FloodSlack int64
	// FrameCost is what each frame costs beyond its bytes. Default 55:
	// a frame of no payload costs 64.
	FrameCost int64
	// MaxSettingsFrame is the largest SETTINGS frame held whole to be
	// rewritten; a larger one passes as it is (the server refuses frames
	// above its SETTINGS_MAX_FRAME_SIZE). Default 16384.
	MaxSettingsFrame int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBlockFrames <= 0 {
		l.MaxBlockFrames = 64
	}
	if l.BlockTimeout <= 0 {
		l.BlockTimeout = 10 * time.Second
	}
	if l.FloodSlack <= 0 {
		l.FloodSlack = 256 << 10
	}
	if l.FrameCost <= 0 {
		l.FrameCost = 55
	}
	if l.MaxSettingsFrame <= 0 {
		l.MaxSettingsFrame = 16384
	}
	return l
}

// Violation says why a connection was ended.
type Violation struct {
	Reason string // "flood", "rapid-reset", "header-block-frames", "header-block-timeout"
	Detail string // for the log: what was seen
}

// ErrViolation is what Read returns once the guard has ended the
// connection.
var ErrViolation = errors.New("h2guard: the client broke a limit; connection ended")

// Conn is a guarded server-side HTTP/2 connection. Read is called by one
// goroutine (the server's frame reader); Write may be called by any.
type Conn struct {
	net.Conn
	lim    Limits
	report func(Violation) // called once, on the first violation

	// Read side: only the reading goroutine.
	preface  int // bytes of the client preface not yet passed
	fh       [headerLen]byte
	nfh      int    // bytes of fh collected
	left     int    // payload bytes of the current frame still to come
	ftype    byte   // the current frame's type
	fflags   byte   // and flags
	padPend  bool   // its pad-length byte is still to come
	useful   int64  // the current frame's useful bytes so far (credited at its end)
	hold     []byte // a SETTINGS frame collected whole, to rewrite
	holding  bool
	carry    []byte // bytes inspected but not yet returned
	total    int64  // frame bytes read
	payload  int64  // useful bytes read
	inBlock  bool   // inside a header block
	blockN   int    // its frames so far
	blockEnd *time.Timer
	lastID   uint32 // the highest stream a HEADERS frame opened
	opened   int    // streams HEADERS frames opened
	resets   int    // RST_STREAM frames read

	outData atomic.Int64 // DATA payload bytes the server wrote

	// Write side, and the end: under wmu.
	wmu    sync.Mutex
	wfh    [headerLen]byte
	wnfh   int
	wleft  int
	killed bool // a violation was seen
	goAway bool // its GOAWAY is waiting for a frame boundary
	sent   bool // GOAWAY written (or the connection closed): no more writes
	closed bool // Close was called
}

// Wrap guards c, a server-side connection whose first bytes are the client
// preface. report, if not nil, is called once with the first violation.
func Wrap(c net.Conn, lim Limits, report func(Violation)) *Conn {
	return &Conn{Conn: c, lim: lim.withDefaults(), report: report, preface: len(ClientPreface)}
}

// Read returns the client's bytes as the server should see them.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.carry) > 0 {
		n := copy(p, c.carry)
		c.carry = c.carry[n:]
		if len(c.carry) == 0 {
			c.carry = nil
		}
		return n, nil
	}
	if c.isKilled() {
		return 0, ErrViolation
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		k, verr := c.inspect(p[:n])
		if verr != nil {
			return 0, verr
		}
		if k == 0 && len(c.carry) > 0 {
			k = copy(p, c.carry)
			c.carry = c.carry[k:]
		}
		if k == 0 && err == nil {
			// Everything went into a held frame: read on.
			return c.Read(p)
		}
		return k, err
	}
	return n, err
}

// inspect reads b (bytes just read) frame by frame. It returns how many
// bytes of b, from its start, the server may have as they are; what follows
// them is in c.carry (a rewritten SETTINGS frame, a frame header that began
// in an earlier read, and every byte after either).
func (c *Conn) inspect(b []byte) (int, error) {
	deliver, div := 0, false
	emit := func(from, to int) {
		if !div && from == deliver {
			deliver = to
			return
		}
		div = true
		c.carry = append(c.carry, b[from:to]...)
	}
	emitBytes := func(x []byte) {
		div = true
		c.carry = append(c.carry, x...)
	}
	i := 0
	for i < len(b) {
		switch {
		case c.preface > 0:
			k := min(c.preface, len(b)-i)
			c.preface -= k
			emit(i, i+k)
			i += k
		case c.holding:
			k := min(c.left, len(b)-i)
			c.hold = append(c.hold, b[i:i+k]...)
			c.left -= k
			i += k
			if c.left == 0 {
				c.holding = false
				emitBytes(collapseSettings(c.hold))
				c.hold = nil
				c.frameEnd()
			}
		case c.nfh == headerLen:
			// Inside a payload.
			k := min(c.left, len(b)-i)
			if c.padPend && k > 0 {
				c.padPend = false
				c.useful -= int64(b[i]) + 1
			}
			emit(i, i+k)
			c.left -= k
			i += k
			if c.left == 0 {
				c.frameEnd()
			}
		default:
			// Collecting a frame header: withheld until whole.
			k := min(headerLen-c.nfh, len(b)-i)
			copy(c.fh[c.nfh:], b[i:i+k])
			c.nfh += k
			i += k
			if c.nfh < headerLen {
				continue
			}
			length := int(c.fh[0])<<16 | int(c.fh[1])<<8 | int(c.fh[2])
			c.ftype, c.fflags = c.fh[3], c.fh[4]
			id := binary.BigEndian.Uint32(c.fh[5:9]) & 0x7fffffff
			if err := c.frameStart(length, id); err != nil {
				return 0, err
			}
			c.left = length
			if c.ftype == typeSettings && c.fflags&flagAck == 0 && length > 0 && length <= c.lim.MaxSettingsFrame && length%6 == 0 {
				c.holding = true
				c.hold = append(make([]byte, 0, headerLen+length), c.fh[:]...)
				continue
			}
			if i >= headerLen && !div && i-headerLen == deliver {
				deliver = i // the whole header is in b, in place
			} else {
				emitBytes(c.fh[:])
			}
			if length == 0 {
				c.frameEnd()
			}
		}
	}
	return deliver, nil
}

// frameStart accounts for a frame header just read.
func (c *Conn) frameStart(length int, id uint32) error {
	c.total += int64(headerLen+length) + c.lim.FrameCost
	if (c.ftype == typeSettings || c.ftype == typePing) && c.fflags&flagAck == 0 {
		// Each one makes the server queue a reply (an ACK): x/net closes
		// the connection without a word when 10,000 wait unsent, so these
		// are cut off well before.
		c.total += 7 * c.lim.FrameCost
	}
	c.useful = 0
	switch c.ftype {
	case typeData, typeHeaders, typeContinuation:
		c.useful = int64(length)
		if c.ftype != typeContinuation && c.fflags&flagPadded != 0 {
			c.padPend = length > 0
		}
		if c.ftype == typeHeaders && c.fflags&flagPriority != 0 {
			c.useful -= 5
		}
	}
	switch {
	case c.ftype == typeRSTStream:
		if c.resets++; c.resets > 100 && c.resets*2 > c.opened {
			return c.violate(Violation{"rapid-reset", itoa(c.resets) + " streams reset of " + itoa(c.opened) + " opened"})
		}
	case c.ftype == typeHeaders:
		if id > c.lastID {
			c.lastID = id
			c.opened++
		}
		if c.fflags&flagEndHeaders == 0 {
			c.inBlock, c.blockN = true, 1
			c.blockEnd = time.AfterFunc(c.lim.BlockTimeout, func() {
				c.violate(Violation{"header-block-timeout", "a header block was not finished within " + c.lim.BlockTimeout.String()})
			})
		}
	case c.ftype == typeContinuation && c.inBlock:
		if c.blockN++; c.blockN > c.lim.MaxBlockFrames {
			return c.violate(Violation{"header-block-frames", "a header block took more than " + itoa(c.lim.MaxBlockFrames) + " frames"})
		}
		if c.fflags&flagEndHeaders != 0 {
			c.inBlock = false
			c.blockEnd.Stop()
		}
	}
	return c.checkFlood()
}

// frameEnd credits a frame's useful bytes once it is whole.
func (c *Conn) frameEnd() {
	c.nfh = 0
	c.padPend = false
	if c.useful > 0 {
		c.payload += c.useful
	}
	c.useful = 0
}

func (c *Conn) checkFlood() error {
	out := c.outData.Load()
	if c.total/8 > c.payload+out/128+c.lim.FloodSlack {
		return c.violate(Violation{"flood", itoa64(c.total) + " bytes of frames carried " + itoa64(c.payload) + " useful bytes"})
	}
	return nil
}

// violate ends the connection for v: GOAWAY now if the server is between
// frames, else as soon as its current frame is written; a reader blocked in
// the connection is woken, so the server closes it (Close lingers).
func (c *Conn) violate(v Violation) error {
	c.wmu.Lock()
	first := !c.killed
	c.killed = true
	if first && c.wnfh == 0 && c.wleft == 0 {
		c.writeGoAwayLocked()
	} else if first {
		c.goAway = true
	}
	c.wmu.Unlock()
	if first {
		_ = c.Conn.SetReadDeadline(time.Now())
		if c.report != nil {
			c.report(v)
		}
	}
	if c.blockEnd != nil {
		c.blockEnd.Stop()
	}
	return ErrViolation
}

func (c *Conn) isKilled() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.killed
}

// writeGoAwayLocked writes GOAWAY(ENHANCE_YOUR_CALM); nothing is written
// after it.
func (c *Conn) writeGoAwayLocked() {
	if c.sent {
		return
	}
	c.sent, c.goAway = true, false
	var f [headerLen + 8]byte
	f[2] = 8
	f[3] = typeGoAway
	binary.BigEndian.PutUint32(f[9:], c.lastID)
	binary.BigEndian.PutUint32(f[13:], codeEnhanceYourCalm)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Conn.Write(f[:])
}

// linger closes a connection the guard ended as nginx's lingering close
// does: the write side first (FIN after the GOAWAY), then what the client
// still sends is read and dropped for up to a second. Closed at once, the
// unread flood would make the kernel answer with a reset, and a reset
// makes the client's kernel drop the GOAWAY before the client reads it.
func (c *Conn) linger() {
	raw := c.Conn
	if nc, ok := raw.(interface{ NetConn() net.Conn }); ok {
		raw = nc.NetConn()
	}
	cw, ok := raw.(interface{ CloseWrite() error })
	if !ok {
		_ = c.Conn.Close()
		return
	}
	_ = cw.CloseWrite()
	go func() {
		_ = raw.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.CopyN(io.Discard, raw, 16<<20)
		_ = c.Conn.Close()
	}()
}

// Write passes the server's frames on, counting the DATA it sends, and puts
// a pending GOAWAY at the first frame boundary.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sent {
		return 0, net.ErrClosed
	}
	written := 0
	for i := 0; i < len(p); {
		if c.wleft == 0 && c.wnfh < headerLen {
			k := min(headerLen-c.wnfh, len(p)-i)
			copy(c.wfh[c.wnfh:], p[i:i+k])
			c.wnfh += k
			i += k
			if c.wnfh == headerLen {
				c.wleft = int(c.wfh[0])<<16 | int(c.wfh[1])<<8 | int(c.wfh[2])
				if c.wfh[3] == typeData {
					c.outData.Add(int64(c.wleft))
				}
				if c.wleft == 0 {
					c.wnfh = 0
				}
			}
		} else {
			k := min(c.wleft, len(p)-i)
			c.wleft -= k
			i += k
			if c.wleft == 0 {
				c.wnfh = 0
			}
		}
		if c.goAway && c.wnfh == 0 && c.wleft == 0 {
			n, err := c.Conn.Write(p[written:i])
			written += n
			if err != nil {
				return written, err
			}
			c.writeGoAwayLocked()
			return len(p), nil
		}
	}
	n, err := c.Conn.Write(p[written:])
	return written + n, err
}

// ConnectionState is the TLS state of the wrapped connection, which the
// HTTP/2 server asks for; the zero value when it is not TLS.
func (c *Conn) ConnectionState() tls.ConnectionState {
	if t, ok := c.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return t.ConnectionState()
	}
	return tls.ConnectionState{}
}

// Close closes the connection; one the guard ended lingers (see linger).
func (c *Conn) Close() error {
	c.wmu.Lock()
	done, killed := c.closed, c.killed
	c.closed, c.sent = true, true
	c.wmu.Unlock()
	if c.blockEnd != nil {
		c.blockEnd.Stop()
	}
	switch {
	case done:
		return nil
	case killed:
		c.linger()
		return nil
	}
	return c.Conn.Close()
}

// collapseSettings returns a SETTINGS frame (header and payload) with each
// setting named once, at its last value and at its first position. An
// invalid value that a later one replaces stays: the server must refuse it.
func collapseSettings(f []byte) []byte {
	p := f[headerLen:]
	n := len(p) / 6
	last := map[uint16]int{}
	for i := 0; i < n; i++ {
		last[binary.BigEndian.Uint16(p[i*6:])] = i
	}
	if len(last) == n {
		return f
	}
	out := make([]byte, headerLen, headerLen+len(p))
	copy(out, f[:headerLen])
	seen := map[uint16]bool{}
	for i := 0; i < n; i++ {
		id := binary.BigEndian.Uint16(p[i*6:])
		if seen[id] {
			continue
		}
		seen[id] = true
		if !validSetting(id, binary.BigEndian.Uint32(p[i*6+2:])) {
			// Keep the invalid value where it was: the server refuses it.
			out = append(out, p[i*6:i*6+6]...)
			continue
		}
		j := last[id]
		out = append(out, p[j*6:j*6+6]...)
	}
	l := len(out) - headerLen
	out[0], out[1], out[2] = byte(l>>16), byte(l>>8), byte(l)
	return out
}

// validSetting is RFC 9113 §6.5.2's range for the settings that have one.
func validSetting(id uint16, v uint32) bool {
	switch id {
	case 0x2: // ENABLE_PUSH
		return v <= 1
	case 0x4: // INITIAL_WINDOW_SIZE
		return v <= 1<<31-1
	case 0x5: // MAX_FRAME_SIZE
		return v >= 1<<14 && v <= 1<<24-1
	}
	return true
}

func itoa(n int) string { return itoa64(int64(n)) }

func itoa64(n int64) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
