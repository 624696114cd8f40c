package wsframe

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

const fin = 0x80

// rfcKey is the masking key of RFC 6455 §5.7's examples.
var rfcKey = []byte{0x37, 0xfa, 0x21, 0x3d}

// frame encodes one frame as a client sends it: first byte b0 (FIN, RSV,
// opcode) as given, shortest length encoding, masked with key unless key
// is nil.
func frame(b0 byte, payload []byte, key []byte) []byte {
	b := []byte{b0}
	n := len(payload)
	m := byte(0)
	if key != nil {
		m = 0x80
	}
	switch {
	case n <= 125:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, m|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, m|127), uint64(n))
	}
	b = append(b, key...)
	for i, c := range payload {
		if key != nil {
			c ^= key[i%4]
		}
		b = append(b, c)
	}
	return b
}

// f is a masked client frame with a string payload.
func f(b0 byte, payload string) []byte { return frame(b0, []byte(payload), rfcKey) }

// long is a masked header declaring a 64-bit length n, with no payload.
func long(b0 byte, n uint64) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, n), rfcKey...)
}

// pong is the server's unmasked pong for payload.
func pong(payload string) []byte { return frame(fin|byte(OpPong), []byte(payload), nil) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// closeFrame is a masked close frame with code and reason.
func closeFrame(code uint16, reason string) []byte {
	return f(fin|byte(OpClose), string(binary.BigEndian.AppendUint16(nil, code))+reason)
}

// rw is a connection: reads from r, writes recorded one Write at a time.
type rw struct {
	r      io.Reader
	mu     sync.Mutex
	writes [][]byte
}

func (c *rw) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *rw) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return len(p), nil
}
func (c *rw) out() []byte { return bytes.Join(c.writes, nil) }

// describe names an error for the tables: "EOF", "unexpected EOF",
// "protocol CODE" or "close CODE REASON".
func describe(err error) string {
	var pe *ProtocolError
	var ce *CloseError
	switch {
	case errors.As(err, &pe):
		return fmt.Sprintf("protocol %d", pe.Code)
	case errors.As(err, &ce):
		return strings.TrimSpace(fmt.Sprintf("close %d %s", ce.Code, ce.Reason))
	case err == io.EOF:
		return "EOF"
	case err == io.ErrUnexpectedEOF:
		return "unexpected EOF"
	}
	return "other: " + err.Error()
}

func msgString(op Opcode, p []byte) string {
	name := map[Opcode]string{OpText: "text", OpBinary: "binary"}[op]
	if name == "" {
		name = fmt.Sprintf("op%d", op)
	}
	return name + ":" + string(p)
}

// readAll reads messages until the first error.
func readAll(c *Conn, limit int64) (msgs []string, err error) {
	for {
		op, p, err := c.ReadMessage(limit)
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, msgString(op, p))
	}
}

type readCase struct {
	name  string
	in    []byte
	limit int64    // 0: 1 MiB
	want  []string // messages, as msgString
	err   string   // as describe
	out   []byte   // what the server wrote in reply (pongs)
}

func readCases() []readCase {
	hello := "Hello"
	b256 := strings.Repeat("\xa5", 256)
	b64k := strings.Repeat("z", 65536)
	cases := []readCase{
		// §5.7's examples, as a client must send them.
		{name: "5.7 single masked text", in: []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, want: []string{"text:Hello"}, err: "EOF"},
		{name: "5.7 single unmasked text", in: []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, err: "protocol 1002"},
		{name: "5.7 fragmented text", in: cat(f(0x01, "Hel"), f(0x80, "lo")), want: []string{"text:Hello"}, err: "EOF"},
		{name: "5.7 fragmented unmasked", in: []byte{0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f}, err: "protocol 1002"},
		{name: "5.7 masked pong ignored", in: cat([]byte{0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, f(0x81, hello)), want: []string{"text:Hello"}, err: "EOF"},
		{name: "5.7 ping answered", in: f(0x89, hello), err: "EOF", out: []byte{0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}},
		{name: "5.7 256 bytes", in: f(0x82, b256), want: []string{"binary:" + b256}, err: "EOF"},
		{name: "5.7 64 KiB", in: f(0x82, b64k), want: []string{"binary:" + b64k}, err: "EOF"},

		// §5.2 framing.
		{name: "empty text", in: f(0x81, ""), want: []string{"text:"}, err: "EOF"},
		{name: "empty binary", in: f(0x82, ""), want: []string{"binary:"}, err: "EOF"},
		{name: "125 bytes, 7-bit length", in: f(0x82, strings.Repeat("a", 125)), want: []string{"binary:" + strings.Repeat("a", 125)}, err: "EOF"},
		{name: "126 bytes, 16-bit length", in: f(0x82, strings.Repeat("b", 126)), want: []string{"binary:" + strings.Repeat("b", 126)}, err: "EOF"},
		{name: "65535 bytes, 16-bit length", in: f(0x82, strings.Repeat("c", 65535)), want: []string{"binary:" + strings.Repeat("c", 65535)}, err: "EOF"},
		{name: "non-minimal length accepted", in: cat([]byte{0x81, 0x80 | 126, 0, 2}, rfcKey, []byte{'h' ^ 0x37, 'i' ^ 0xfa}), want: []string{"text:hi"}, err: "EOF"},
		{name: "two messages", in: cat(f(0x81, "a"), f(0x82, "b")), want: []string{"text:a", "binary:b"}, err: "EOF"},
		{name: "nothing", in: nil, err: "EOF"},
		{name: "cut in the first header byte pair", in: []byte{0x81}, err: "unexpected EOF"},
		{name: "cut in the mask key", in: []byte{0x81, 0x85, 0x37, 0xfa}, err: "unexpected EOF"},
		{name: "cut in the extended length", in: []byte{0x82, 0xfe, 0x01}, err: "unexpected EOF"},
		{name: "cut in the payload", in: f(0x81, hello)[:8], err: "unexpected EOF"},
		{name: "cut between fragments", in: f(0x01, "Hel"), err: "unexpected EOF"},
		{name: "unmasked binary", in: frame(0x82, []byte("x"), nil), err: "protocol 1002"},
		{name: "unmasked ping", in: frame(0x89, nil, nil), err: "protocol 1002"},
		{name: "unmasked close", in: frame(0x88, nil, nil), err: "protocol 1002"},
		{name: "RSV1", in: f(0x80|0x40|1, "x"), err: "protocol 1002"},
		{name: "RSV2", in: f(0x80|0x20|1, "x"), err: "protocol 1002"},
		{name: "RSV3", in: f(0x80|0x10|1, "x"), err: "protocol 1002"},
		{name: "RSV on a ping", in: f(0x80|0x40|9, ""), err: "protocol 1002"},
		{name: "RSV after a message", in: cat(f(0x81, "ok"), f(0xf1, "x")), want: []string{"text:ok"}, err: "protocol 1002"},
		{name: "64-bit length, top bit set", in: long(0x82, 1<<63), err: "protocol 1002"},
		{name: "64-bit length, all bits set", in: long(0x82, ^uint64(0)), err: "protocol 1002"},
		{name: "64-bit length 2^62 over the limit", in: long(0x82, 1<<62), err: "protocol 1009"},
		{name: "declared over the limit, nothing sent", in: long(0x82, 1<<20+1), err: "protocol 1009"},
		{name: "exactly the limit", in: f(0x82, "12345"), limit: 5, want: []string{"binary:12345"}, err: "EOF"},
		{name: "one over the limit", in: f(0x82, "123456"), limit: 5, err: "protocol 1009"},
		{name: "negative limit is zero", in: cat(f(0x82, ""), f(0x82, "1")), limit: -1, want: []string{"binary:"}, err: "protocol 1009"},

		// §5.4 fragmentation.
		{name: "three fragments", in: cat(f(0x01, "a"), f(0x00, "b"), f(0x80, "c")), want: []string{"text:abc"}, err: "EOF"},
		{name: "binary fragments", in: cat(f(0x02, "\xff"), f(0x80, "\xfe")), want: []string{"binary:\xff\xfe"}, err: "EOF"},
		{name: "empty fragments", in: cat(f(0x01, ""), f(0x00, ""), f(0x80, "")), want: []string{"text:"}, err: "EOF"},
		{name: "ping between fragments", in: cat(f(0x01, "Hel"), f(0x89, "p"), f(0x80, "lo")), want: []string{"text:Hello"}, err: "EOF", out: pong("p")},
		{name: "pong between fragments", in: cat(f(0x01, "Hel"), f(0x8a, "p"), f(0x80, "lo")), want: []string{"text:Hello"}, err: "EOF"},
		{name: "pings around and between", in: cat(f(0x89, "1"), f(0x01, "a"), f(0x89, "2"), f(0x89, "3"), f(0x80, "b"), f(0x89, "4")), want: []string{"text:ab"}, err: "EOF", out: cat(pong("1"), pong("2"), pong("3"), pong("4"))},
		{name: "close between fragments", in: cat(f(0x01, "Hel"), closeFrame(1000, "")), err: "close 1000"},
		{name: "continuation first", in: f(0x00, "x"), err: "protocol 1002"},
		{name: "final continuation first", in: f(0x80, "x"), err: "protocol 1002"},
		{name: "continuation after a whole message", in: cat(f(0x81, "a"), f(0x80, "b")), want: []string{"text:a"}, err: "protocol 1002"},
		{name: "text inside fragments", in: cat(f(0x01, "a"), f(0x81, "b")), err: "protocol 1002"},
		{name: "binary inside fragments", in: cat(f(0x01, "a"), f(0x02, "b"), f(0x80, "c")), err: "protocol 1002"},
		{name: "fragments over the limit", in: cat(f(0x02, "123"), f(0x80, "456")), limit: 5, err: "protocol 1009"},
		{name: "fragments at the limit", in: cat(f(0x02, "12"), f(0x00, "3"), f(0x80, "45")), limit: 5, want: []string{"binary:12345"}, err: "EOF"},
		{name: "fragment declaring 2^62", in: cat(f(0x02, "12"), long(0x80, 1<<62)), err: "protocol 1009"},

		// §5.5 control frames.
		{name: "empty ping", in: f(0x89, ""), err: "EOF", out: pong("")},
		{name: "125-byte ping", in: f(0x89, strings.Repeat("p", 125)), err: "EOF", out: pong(strings.Repeat("p", 125))},
		{name: "126-byte ping", in: f(0x89, strings.Repeat("p", 126)), err: "protocol 1002"},
		{name: "ping with a 64-bit length", in: long(0x89, 5), err: "protocol 1002"},
		{name: "fragmented ping", in: f(0x09, "p"), err: "protocol 1002"},
		{name: "fragmented close", in: f(0x08, ""), err: "protocol 1002"},
		{name: "fragmented pong", in: f(0x0a, ""), err: "protocol 1002"},
		{name: "unsolicited pong", in: f(0x8a, "x"), err: "EOF"},
		{name: "empty close", in: f(0x88, ""), err: "close 1005"},
		{name: "close with 1 byte", in: f(0x88, "\x03"), err: "protocol 1002"},
		{name: "close with reason", in: closeFrame(1000, "bye"), err: "close 1000 bye"},
		{name: "close with 123-byte reason", in: closeFrame(1001, strings.Repeat("r", 123)), err: "close 1001 " + strings.Repeat("r", 123)},
		{name: "close over 125 bytes", in: closeFrame(1000, strings.Repeat("r", 124)), err: "protocol 1002"},
		{name: "message after close unread", in: cat(closeFrame(1000, ""), f(0x81, "late")), err: "close 1000"},

		// §5.6 and §8.1: text is UTF-8, checked across fragments.
		{name: "utf8 greek", in: f(0x81, "κόσμε"), want: []string{"text:κόσμε"}, err: "EOF"},
		{name: "utf8 4-byte", in: f(0x81, "😀"), want: []string{"text:😀"}, err: "EOF"},
		{name: "utf8 max code point", in: f(0x81, "\xf4\x8f\xbf\xbf"), want: []string{"text:\U0010FFFF"}, err: "EOF"},
		{name: "utf8 0xff", in: f(0x81, "a\xffb"), err: "protocol 1007"},
		{name: "utf8 lone continuation", in: f(0x81, "\x80"), err: "protocol 1007"},
		{name: "utf8 overlong NUL", in: f(0x81, "\xc0\x80"), err: "protocol 1007"},
		{name: "utf8 overlong slash", in: f(0x81, "\xe0\x80\xaf"), err: "protocol 1007"},
		{name: "utf8 surrogate", in: f(0x81, "\xed\xa0\x80"), err: "protocol 1007"},
		{name: "utf8 over U+10FFFF", in: f(0x81, "\xf4\x90\x80\x80"), err: "protocol 1007"},
		{name: "utf8 cut at the end", in: f(0x81, "ab\xf0\x9f\x98"), err: "protocol 1007"},
		{name: "utf8 split over 2 fragments", in: cat(f(0x01, "a\xf0\x9f"), f(0x80, "\x98\x80b")), want: []string{"text:a😀b"}, err: "EOF"},
		{name: "utf8 split over 4 fragments", in: cat(f(0x01, "\xf0"), f(0x00, "\x9f"), f(0x00, "\x98"), f(0x80, "\x80")), want: []string{"text:😀"}, err: "EOF"},
		{name: "utf8 split, empty fragment between", in: cat(f(0x01, "\xce"), f(0x00, ""), f(0x80, "\xba")), want: []string{"text:κ"}, err: "EOF"},
		{name: "utf8 split with a ping between", in: cat(f(0x01, "\xe2\x82"), f(0x89, ""), f(0x80, "\xac")), want: []string{"text:€"}, err: "EOF", out: pong("")},
		{name: "utf8 cut in the last fragment", in: cat(f(0x01, "a"), f(0x80, "\xf0\x9f")), err: "protocol 1007"},
		// Fail fast: the bad first fragment is judged before the rest comes.
		{name: "utf8 bad first fragment", in: f(0x01, "κόσμε\xed\xa0\x80edited"), err: "protocol 1007"},
		{name: "utf8 bad prefix cut at the end", in: f(0x01, "a\xf0\x28"), err: "protocol 1007"},
		{name: "utf8 surrogate prefix cut at the end", in: f(0x01, "a\xed\xa0"), err: "protocol 1007"},
		{name: "utf8 too many continuations at the end", in: f(0x01, "a\xf0\x9f\x98\x80\x80"), err: "protocol 1007"},
		{name: "utf8 bad across the boundary", in: cat(f(0x01, "\xf0\x9f"), f(0x80, "\x28")), err: "protocol 1007"},
		{name: "binary is not UTF-8", in: f(0x82, "\xff\xfe"), want: []string{"binary:\xff\xfe"}, err: "EOF"},
		{name: "close reason not UTF-8", in: closeFrame(1000, "\xff"), err: "protocol 1007"},
		{name: "close reason UTF-8", in: closeFrame(1000, "κόσμε"), err: "close 1000 κόσμε"},
	}
	for _, op := range []byte{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
		cases = append(cases, readCase{name: fmt.Sprintf("reserved opcode %#x", op), in: f(0x80|op, ""), err: "protocol 1002"})
	}
	// §7.4: codes a close frame may carry, and those it may not.
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		cases = append(cases, readCase{name: fmt.Sprintf("close code %d", code), in: closeFrame(code, "r"), err: fmt.Sprintf("close %d r", code)})
	}
	for _, code := range []uint16{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, readCase{name: fmt.Sprintf("close code %d", code), in: closeFrame(code, ""), err: "protocol 1002"})
	}
	return cases
}

func short(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%q... (%d bytes)", s[:80], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func checkCase(t *testing.T, tc readCase, r io.Reader, prefix []byte) {
	t.Helper()
	limit := tc.limit
	if limit == 0 {
		limit = 1 << 20
	}
	conn := &rw{r: r}
	c := NewConn(conn, prefix)
	msgs, err := readAll(c, limit)
	if len(msgs) != len(tc.want) {
		t.Fatalf("got %d messages, want %d", len(msgs), len(tc.want))
	}
	for i := range msgs {
		if msgs[i] != tc.want[i] {
			t.Errorf("message %d: got %s, want %s", i, short(msgs[i]), short(tc.want[i]))
		}
	}
	if got := describe(err); got != tc.err {
		t.Errorf("error: got %q (%v), want %q", got, err, tc.err)
	}
	if out := conn.out(); !bytes.Equal(out, tc.out) {
		t.Errorf("wrote %q, want %q", out, tc.out)
	}
	// Every error is final.
	if _, _, err2 := c.ReadMessage(limit); err2 != err {
		t.Errorf("after %v, the next read returned %v", err, err2)
	}
}

func TestReadMessage(t *testing.T) {
	for _, tc := range readCases() {
		t.Run(tc.name, func(t *testing.T) {
			checkCase(t, tc, bytes.NewReader(tc.in), nil)
		})
	}
}

// TestReadMessageSplit feeds each case in every split between the prefix
// net/http read ahead and the connection, and one byte per Read.
func TestReadMessageSplit(t *testing.T) {
	for _, tc := range readCases() {
		if len(tc.in) > 300 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i <= len(tc.in); i++ {
				checkCase(t, tc, iotest.OneByteReader(bytes.NewReader(tc.in[i:])), tc.in[:i])
			}
		})
	}
}

func TestPrefixIsCopiedAndDropped(t *testing.T) {
	in := f(0x81, "Hello")
	prefix := bytes.Clone(in[:4])
	c := NewConn(&rw{r: bytes.NewReader(in[4:])}, prefix)
	clear(prefix) // net/http reuses its buffer
	if op, p, err := c.ReadMessage(100); err != nil || op != OpText || string(p) != "Hello" {
		t.Fatalf("got %v %q %v", op, p, err)
	}
	if c.prefix != nil {
		t.Fatalf("prefix kept after use: cap %d", cap(c.prefix))
	}
}

// scriptReader returns its steps in turn: bytes, or an error once.
type scriptReader struct{ steps []any }

func (s *scriptReader) Read(p []byte) (int, error) {
	if len(s.steps) == 0 {
		return 0, io.EOF
	}
	switch step := s.steps[0].(type) {
	case error:
		s.steps = s.steps[1:]
		return 0, step
	case []byte:
		n := copy(p, step)
		if n == len(step) {
			s.steps = s.steps[1:]
		} else {
			s.steps[0] = step[n:]
		}
		return n, nil
	}
	panic("bad step")
}

// An idle client's read deadline leaves the Conn usable (a ping may go
// out, and the read resume); one inside a frame or message does not.
func TestDeadline(t *testing.T) {
	timeout := os.ErrDeadlineExceeded
	msg := f(0x81, "Hello")
	tests := []struct {
		name  string
		steps []any
		final bool
	}{
		{"before any frame", []any{timeout, msg}, false},
		{"after a ping", []any{f(0x89, "p"), timeout, msg}, false},
		{"inside a header", []any{msg[:1], timeout, msg[1:]}, true},
		{"inside the mask key", []any{msg[:4], timeout, msg[4:]}, true},
		{"inside a payload", []any{msg[:8], timeout, msg[8:]}, true},
		{"between fragments", []any{f(0x01, "Hel"), timeout, f(0x80, "lo")}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConn(&rw{r: &scriptReader{steps: tc.steps}}, nil)
			if _, _, err := c.ReadMessage(100); err != timeout {
				t.Fatalf("first read: %v", err)
			}
			op, p, err := c.ReadMessage(100)
			switch {
			case tc.final && err != timeout:
				t.Fatalf("after the deadline: %v %q %v, want the same error", op, p, err)
			case !tc.final && (err != nil || string(p) != "Hello"):
				t.Fatalf("after the deadline: %v %q %v, want the message", op, p, err)
			}
		})
	}
}

// §5.7's server frames, unmasked, from the Write methods.
func TestWriteRFCExamples(t *testing.T) {
	b256 := bytes.Repeat([]byte{0xa5}, 256)
	b64k := bytes.Repeat([]byte{'z'}, 65536)
	tests := []struct {
		name   string
		write  func(*Conn) error
		want   []byte
		writes int
	}{
		{"single unmasked text", func(c *Conn) error { return c.WriteMessage(OpText, []byte("Hello")) }, []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, 1},
		{"unmasked ping", func(c *Conn) error { return c.WritePing([]byte("Hello")) }, []byte{0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, 1},
		{"256 bytes", func(c *Conn) error { return c.WriteMessage(OpBinary, b256) }, cat([]byte{0x82, 0x7e, 0x01, 0x00}, b256), 1},
		{"64 KiB", func(c *Conn) error { return c.WriteMessage(OpBinary, b64k) }, cat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, b64k), 2},
		{"empty text", func(c *Conn) error { return c.WriteMessage(OpText, nil) }, []byte{0x81, 0}, 1},
		{"125 bytes", func(c *Conn) error { return c.WriteMessage(OpBinary, b256[:125]) }, cat([]byte{0x82, 125}, b256[:125]), 1},
		{"126 bytes", func(c *Conn) error { return c.WriteMessage(OpBinary, b256[:126]) }, cat([]byte{0x82, 126, 0, 126}, b256[:126]), 1},
		{"64 KiB in all, one write", func(c *Conn) error { return c.WriteMessage(OpBinary, b64k[:65532]) }, cat([]byte{0x82, 126, 0xff, 0xfc}, b64k[:65532]), 1},
		{"64 KiB and 1 in all, two writes", func(c *Conn) error { return c.WriteMessage(OpBinary, b64k[:65533]) }, cat([]byte{0x82, 126, 0xff, 0xfd}, b64k[:65533]), 2},
		{"65535 bytes", func(c *Conn) error { return c.WriteMessage(OpBinary, b64k[:65535]) }, cat([]byte{0x82, 126, 0xff, 0xff}, b64k[:65535]), 2},
		{"close", func(c *Conn) error { return c.WriteClose(1000, "bye") }, []byte{0x88, 5, 0x03, 0xe8, 'b', 'y', 'e'}, 1},
		{"close 1005 is empty", func(c *Conn) error { return c.WriteClose(1005, "ignored") }, []byte{0x88, 0}, 1},
		{"close reason cut at a code point", func(c *Conn) error { return c.WriteClose(1001, strings.Repeat("é", 62)) },
			cat([]byte{0x88, 124, 0x03, 0xe9}, []byte(strings.Repeat("é", 61))), 1},
		{"close reason made UTF-8", func(c *Conn) error { return c.WriteClose(4000, "a\xffb") }, []byte{0x88, 7, 0x0f, 0xa0, 'a', 0xef, 0xbf, 0xbd, 'b'}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := &rw{}
			if err := tc.write(NewConn(conn, nil)); err != nil {
				t.Fatal(err)
			}
			if got := conn.out(); !bytes.Equal(got, tc.want) {
				t.Errorf("wrote % x, want % x", got[:min(len(got), 16)], tc.want[:min(len(tc.want), 16)])
			}
			if len(conn.writes) != tc.writes {
				t.Errorf("%d writes, want %d", len(conn.writes), tc.writes)
			}
		})
	}
}

func TestWriteRefusals(t *testing.T) {
	conn := &rw{}
	c := NewConn(conn, nil)
	for _, err := range []error{
		c.WriteMessage(OpPing, nil),
		c.WriteMessage(OpContinuation, nil),
		c.WritePing(make([]byte, 126)),
		c.WriteClose(1006, ""),
		c.WriteClose(1015, ""),
		c.WriteClose(999, ""),
	} {
		if err == nil {
			t.Error("no error")
		}
	}
	if len(conn.writes) != 0 {
		t.Fatalf("refused writes wrote %q", conn.writes)
	}
	if err := c.WriteClose(1000, ""); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{c.WriteMessage(OpText, []byte("late")), c.WritePing(nil), c.WriteClose(1000, "")} {
		if err != ErrClosed {
			t.Errorf("write after close: %v, want ErrClosed", err)
		}
	}
	// A ping after our close gets no pong; the client's close still comes.
	conn.r = bytes.NewReader(cat(f(0x89, "p"), closeFrame(1000, "")))
	if _, _, err := c.ReadMessage(10); describe(err) != "close 1000" {
		t.Fatalf("got %v", err)
	}
	if len(conn.writes) != 1 {
		t.Fatalf("wrote %q after the close", conn.writes[1:])
	}
}

type failWriter struct {
	io.Reader
	n int
}

func (w *failWriter) Write(p []byte) (int, error) {
	w.n++
	return 0, errors.New("broken pipe")
}

func TestWriteErrorIsFinal(t *testing.T) {
	w := &failWriter{Reader: bytes.NewReader(f(0x89, "p"))}
	c := NewConn(w, nil)
	err := c.WriteMessage(OpText, []byte("a"))
	if err == nil {
		t.Fatal("no error")
	}
	if err2 := c.WriteMessage(OpText, []byte("b")); err2 != err || w.n != 1 {
		t.Fatalf("second write: %v after %d writes", err2, w.n)
	}
	// The pong owed to a ping fails the same way, ending the read.
	if _, _, err3 := c.ReadMessage(10); err3 != err {
		t.Fatalf("read: %v", err3)
	}
}

// client is the test's client side: masks with random keys.
type client struct {
	w   io.Writer
	rnd *rand.Rand
}

func (cl *client) frame(b0 byte, p []byte) []byte {
	key := binary.LittleEndian.AppendUint32(nil, cl.rnd.Uint32())
	return frame(b0, p, key)
}

// message encodes p as op, in 1 to 4 fragments with pings between.
func (cl *client) message(op Opcode, p []byte, pings *[]byte) []byte {
	var b []byte
	parts := 1 + cl.rnd.IntN(4)
	for i := 0; i < parts; i++ {
		cut := len(p)
		if i < parts-1 {
			cut = cl.rnd.IntN(len(p) + 1)
		}
		b0 := byte(op)
		if i > 0 {
			b0 = 0
		}
		if i == parts-1 {
			b0 |= fin
		}
		b = append(b, cl.frame(b0, p[:cut])...)
		p = p[cut:]
		if cl.rnd.IntN(3) == 0 {
			ping := []byte(fmt.Sprint(cl.rnd.Int()))
			b = append(b, cl.frame(fin|byte(OpPing), ping)...)
			*pings = append(*pings, pong(string(ping))...)
		}
	}
	return b
}

// TestRoundTrip sends random messages through a masking client.
func TestRoundTrip(t *testing.T) {
	cl := &client{rnd: rand.New(rand.NewPCG(1, 2))}
	var in, pongs []byte
	type msg struct {
		op Opcode
		p  []byte
	}
	var want []msg
	for i := 0; i < 300; i++ {
		n := cl.rnd.IntN(300)
		if i%50 == 0 {
			n = cl.rnd.IntN(200000)
		}
		m := msg{OpBinary, make([]byte, n)}
		for j := range m.p {
			m.p[j] = byte(cl.rnd.Uint32())
		}
		if i%2 == 0 {
			m.op = OpText
			m.p = []byte(strings.ToValidUTF8(strings.Repeat("aé😀€", n/10)+string(m.p), "ü"))
		}
		want = append(want, m)
		in = append(in, cl.message(m.op, m.p, &pongs)...)
	}
	conn := &rw{r: bytes.NewReader(in)}
	c := NewConn(conn, nil)
	for i, m := range want {
		op, p, err := c.ReadMessage(1 << 20)
		if err != nil || op != m.op || !bytes.Equal(p, m.p) {
			t.Fatalf("message %d: got %v (%d bytes) %v, want %v (%d bytes)", i, op, len(p), err, m.op, len(m.p))
		}
	}
	if _, _, err := c.ReadMessage(1 << 20); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
	if !bytes.Equal(conn.out(), pongs) {
		t.Fatal("pongs differ from the pings")
	}
}

func TestMask(t *testing.T) {
	key := [4]byte{1, 2, 3, 0x80}
	for n := 0; n < 40; n++ {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i * 7)
		}
		want := bytes.Clone(p)
		for i := range want {
			want[i] ^= key[i%4]
		}
		mask(key, p)
		if !bytes.Equal(p, want) {
			t.Fatalf("%d bytes: % x, want % x", n, p, want)
		}
	}
}

// readFrame reads one unmasked server frame (test side, bufio is fine).
func readFrame(br *bufio.Reader) (op Opcode, p []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("frame % x: not final, or masked", h)
	}
	n := uint64(h[1])
	switch n {
	case 126:
		var b [2]byte
		_, err = io.ReadFull(br, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, err = io.ReadFull(br, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	if err != nil || n > 1<<24 {
		return 0, nil, fmt.Errorf("length %d: %v", n, err)
	}
	p = make([]byte, n)
	_, err = io.ReadFull(br, p)
	return Opcode(h[0] & 0xf), p, err
}

// TestConcurrentWrites: one goroutine reads (answering pings) while many
// write, some frames too big for one Write; every frame must reach the
// client whole, and nothing after the close. Run it under -race.
func TestConcurrentWrites(t *testing.T) {
	size := func(w, i int) int {
		if i%50 == 49 {
			return 70000 + w*i // header and payload in two Writes
		}
		return (w * i) % 3000
	}
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	c := NewConn(srv, nil)
	const writers, each, pings = 8, 200, 200

	readDone := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage(1 << 10)
		readDone <- err
	}()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				p := fmt.Appendf(nil, "%d %d %s", w, i, strings.Repeat("x", size(w, i)))
				if err := c.WriteMessage(OpBinary, p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// The client: pings in, then a close; frames out, checked.
	go func() {
		cl := &client{w: cli, rnd: rand.New(rand.NewPCG(3, 4))}
		for i := 0; i < pings; i++ {
			if _, err := cli.Write(cl.frame(fin|byte(OpPing), fmt.Appendf(nil, "ping %d", i))); err != nil {
				return
			}
		}
		cli.Write(cl.frame(fin|byte(OpClose), []byte{0x03, 0xe8}))
	}()
	br := bufio.NewReader(cli)
	next := make([]int, writers)
	pongs := 0
	for pongs < pings || sum(next) < writers*each {
		op, p, err := readFrame(br)
		if err != nil {
			t.Fatalf("client read: %v", err)
		}
		switch op {
		case OpPong:
			if want := fmt.Sprintf("ping %d", pongs); string(p) != want {
				t.Fatalf("pong %q, want %q", p, want)
			}
			pongs++
		case OpBinary:
			var w, i int
			parts := strings.SplitN(string(p), " ", 3)
			if len(parts) != 3 {
				t.Fatalf("message %q", p)
			}
			fmt.Sscan(parts[0], &w)
			fmt.Sscan(parts[1], &i)
			if i != next[w] || len(parts[2]) != size(w, i) {
				t.Fatalf("writer %d: message %d (%d x), want %d", w, i, len(parts[2]), next[w])
			}
			next[w]++
		default:
			t.Fatalf("opcode %d", op)
		}
	}
	wg.Wait()
	if err := <-readDone; describe(err) != "close 1000" {
		t.Fatalf("read: %v", err)
	}

	// Writers racing a close: the close is the last frame out.
	var wg2 sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for i := 0; i < 20; i++ {
				if err := c.WriteMessage(OpText, []byte("late")); err != nil && err != ErrClosed {
					t.Error(err)
				}
			}
		}()
	}
	wg2.Add(1)
	go func() {
		defer wg2.Done()
		if err := c.WriteClose(1000, ""); err != nil {
			t.Error(err)
		}
	}()
	go func() { wg2.Wait(); srv.Close() }()
	var ops []Opcode
	for {
		op, _, err := readFrame(br)
		if err != nil {
			break
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 || ops[len(ops)-1] != OpClose || slices.Index(ops, OpClose) != len(ops)-1 {
		t.Fatalf("frames at the close: %v", ops)
	}
}

func sum(a []int) (s int) {
	for _, v := range a {
		s += v
	}
	return s
}

// blockReader is an idle client: it hands out in, then blocks every Read
// until done is closed. It lets go of in once read, so that only the
// Conn's own memory stays.
type blockReader struct {
	in   []byte
	done chan struct{}
}

func (b *blockReader) Read(p []byte) (int, error) {
	if len(b.in) > 0 {
		n := copy(p, b.in)
		if b.in = b.in[n:]; len(b.in) == 0 {
			b.in = nil
		}
		return n, nil
	}
	<-b.done
	return 0, io.EOF
}
func (b *blockReader) Write(p []byte) (int, error) { return len(p), nil }

// TestIdleConnHoldsNothing: a Conn waiting for its next message keeps no
// buffer of the last one, and costs (heap and goroutine stack together)
// well under berth's 8 KB per idle websocket.
func TestIdleConnHoldsNothing(t *testing.T) {
	// A Conn is pointers, an error and the header array: no slice with
	// room in it.
	in := cat(f(0x01, strings.Repeat("a", 3000)), f(0x89, "ping"), f(0x80, strings.Repeat("b", 3000)))
	c := NewConn(&rw{r: bytes.NewReader(in[1:])}, in[:1])
	if _, p, err := c.ReadMessage(1 << 20); err != nil || len(p) != 6000 {
		t.Fatalf("%d bytes, %v", len(p), err)
	}
	v := reflect.ValueOf(c).Elem()
	for i := 0; i < v.NumField(); i++ {
		if fv := v.Field(i); fv.Kind() == reflect.Slice && fv.Cap() != 0 {
			t.Errorf("Conn.%s holds %d bytes", v.Type().Field(i).Name, fv.Cap())
		}
	}
	if size := reflect.TypeFor[Conn]().Size(); size > 128 {
		t.Errorf("a Conn is %d bytes", size)
	}

	// A message read allocates its payload and nothing else; a ping,
	// nothing (the pong's buffer is pooled).
	msgs := bytes.Repeat(f(0x82, strings.Repeat("m", 1000)), 100)
	pings := bytes.Repeat(cat(f(0x89, "p"), f(0x82, "")), 100)
	for _, in := range [][]byte{msgs, pings} {
		c := NewConn(&blockReader{in: in, done: make(chan struct{})}, nil)
		allocs := testing.AllocsPerRun(50, func() {
			if _, _, err := c.ReadMessage(1 << 20); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 1 {
			t.Errorf("%.1f allocations per message", allocs)
		}
	}

	// Many idle Conns, each with a goroutine blocked in ReadMessage after
	// a 4 KiB message: what does each cost?
	const n = 2000
	done := make(chan struct{})
	started := make(chan struct{}, n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		in := cat(f(0x82, strings.Repeat("m", 4096)), f(0x89, "p"))
		c := NewConn(&blockReader{in: in, done: done}, nil)
		go func() {
			if _, _, err := c.ReadMessage(1 << 20); err != nil {
				t.Error(err)
			}
			started <- struct{}{}
			c.ReadMessage(1 << 20)
		}()
	}
	for i := 0; i < n; i++ {
		<-started
	}
	time.Sleep(50 * time.Millisecond) // into the blocked read
	runtime.GC()
	runtime.ReadMemStats(&after)
	close(done)
	heap := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	stack := (int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("idle Conn: %d bytes of heap, %d of stack", heap, stack)
	// The heap is the Conn, the test's reader, and the goroutine itself
	// (its g, ~450 bytes). New stacks start at the average size of those
	// the runtime has seen, so earlier tests can make them 4 KiB.
	if heap > 1024 || stack > 4096 && !raceOn {
		t.Errorf("an idle Conn costs %d bytes of heap and %d of stack", heap, stack)
	}
}

// A length over the limit is refused from the header: nothing is
// allocated for what the client only claims to send.
func TestOversizeAllocatesNothing(t *testing.T) {
	for _, in := range [][]byte{long(0x82, 1<<62), long(0x82, 1<<20+1), cat(f(0x02, "ab"), long(0x80, 1<<20-1))} {
		var before, after runtime.MemStats
		c := NewConn(&rw{r: bytes.NewReader(in)}, nil)
		runtime.ReadMemStats(&before)
		_, _, err := c.ReadMessage(1 << 20)
		runtime.ReadMemStats(&after)
		if a := after.TotalAlloc - before.TotalAlloc; describe(err) != "protocol 1009" || a > 1024 {
			t.Errorf("% x: %v, %d bytes allocated", in[:4], err, a)
		}
	}
}

func TestAcceptKey(t *testing.T) {
	// RFC 6455 §1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatal(got)
	}
}

func TestCheckRequest(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	valid := func() *http.Request {
		r, _ := http.NewRequest("GET", "http://x/chat", nil)
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", key)
		return r
	}
	tests := []struct {
		name   string
		edit   func(r *http.Request)
		status int // 0: accepted
	}{
		{"valid", func(r *http.Request) {}, 0},
		{"Upgrade in another case", func(r *http.Request) { r.Header.Set("Upgrade", "WebSocket") }, 0},
		{"Upgrade in a list", func(r *http.Request) { r.Header.Set("Upgrade", "h2c, websocket") }, 0},
		{"Upgrade in a second line", func(r *http.Request) { r.Header.Set("Upgrade", "h2c"); r.Header.Add("Upgrade", "websocket") }, 0},
		{"Connection in a list", func(r *http.Request) { r.Header.Set("Connection", "keep-alive, upgrade") }, 0},
		{"key with spaces around", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", " "+key+" ") }, 0},
		{"POST", func(r *http.Request) { r.Method = "POST" }, 405},
		{"HTTP/1.0", func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.0", 1, 0 }, 400},
		{"HTTP/2", func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0 }, 400},
		{"no Upgrade", func(r *http.Request) { r.Header.Del("Upgrade") }, 400},
		{"Upgrade h2c", func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }, 400},
		{"Upgrade as a substring", func(r *http.Request) { r.Header.Set("Upgrade", "websockets") }, 400},
		{"no Connection", func(r *http.Request) { r.Header.Del("Connection") }, 400},
		{"Connection keep-alive", func(r *http.Request) { r.Header.Set("Connection", "keep-alive") }, 400},
		{"version 8", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }, 426},
		{"no version", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Version") }, 426},
		{"two versions", func(r *http.Request) { r.Header.Add("Sec-WebSocket-Version", "8") }, 426},
		{"no key", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }, 400},
		{"two keys", func(r *http.Request) { r.Header.Add("Sec-WebSocket-Key", key) }, 400},
		{"key not base64", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "not base64!") }, 400},
		{"key of 15 bytes", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA") }, 400},
		{"key of 17 bytes", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA=") }, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := valid()
			tc.edit(r)
			got, err := CheckRequest(r)
			var he *HandshakeError
			switch {
			case tc.status == 0 && (err != nil || got != key):
				t.Fatalf("got %q, %v", got, err)
			case tc.status != 0 && (!errors.As(err, &he) || he.Status != tc.status || got != ""):
				t.Fatalf("got %q, %v; want status %d", got, err, tc.status)
			}
		})
	}
}

func TestWriteAccept(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	conn := &rw{}
	err := WriteAccept(conn, key, "chat", [][2]string{{"Set-Cookie", "a=b; Path=/"}, {"sec-websocket-accept", "forged"}, {"X-Empty", ""}, {"connection", "close"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n" +
		"Set-Cookie: a=b; Path=/\r\nX-Empty: \r\n\r\n"
	if len(conn.writes) != 1 || string(conn.writes[0]) != want {
		t.Fatalf("wrote %q", conn.writes)
	}
	// What net/http's client makes of it.
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(want)), nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != AcceptKey(key) {
		t.Fatalf("%v %v", resp, err)
	}

	for _, bad := range []struct {
		sub    string
		header [][2]string
	}{
		{"a b", nil},
		{"a,b", nil},
		{"", [][2]string{{"", "x"}}},
		{"", [][2]string{{"X Y", "x"}}},
		{"", [][2]string{{"X:", "x"}}},
		{"", [][2]string{{"X\r\nY", "x"}}},
		{"", [][2]string{{"X", "a\r\nInjected: 1"}}},
		{"", [][2]string{{"X", "a\nb"}}},
		{"", [][2]string{{"X", "a\rb"}}},
		{"", [][2]string{{"X", "a\x00b"}}},
	} {
		conn := &rw{}
		err := WriteAccept(conn, key, bad.sub, bad.header)
		var he *HandshakeError
		if !errors.As(err, &he) || he.Status != 502 || len(conn.writes) != 0 {
			t.Errorf("%q %q: %v, wrote %q", bad.sub, bad.header, err, conn.writes)
		}
	}
}

// TestEndToEnd: net/http serves the handshake on a loopback listener, the
// handler hijacks and echoes with a Conn; the client is written by hand
// and sends its first frame in the same packet as its handshake, so that
// it arrives in net/http's read-ahead.
func TestEndToEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serverDone := make(chan error, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := CheckRequest(r)
		if err != nil {
			http.Error(w, err.Error(), err.(*HandshakeError).Status)
			return
		}
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			serverDone <- err
			return
		}
		defer nc.Close()
		prefix, _ := brw.Reader.Peek(brw.Reader.Buffered())
		if err := WriteAccept(nc, key, "echo", nil); err != nil {
			serverDone <- err
			return
		}
		c := NewConn(nc, prefix)
		for {
			op, p, err := c.ReadMessage(1 << 20)
			if err != nil {
				var ce *CloseError
				var pe *ProtocolError
				switch {
				case errors.As(err, &ce):
					c.WriteClose(ce.Code, "")
					err = nil
				case errors.As(err, &pe):
					c.WriteClose(pe.Code, pe.Msg)
				}
				serverDone <- err
				return
			}
			if err := c.WriteMessage(op, p); err != nil {
				serverDone <- err
				return
			}
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()

	dial := func(first []byte) (net.Conn, *bufio.Reader, *client) {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		cl := &client{w: nc, rnd: rand.New(rand.NewPCG(5, 6))}
		key := "AAECAwQFBgcICQoLDA0ODw=="
		req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: echo\r\nSec-WebSocket-Key: " + key + "\r\n\r\n"
		if _, err := nc.Write(append([]byte(req), first...)); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(nc)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != AcceptKey(key) ||
			resp.Header.Get("Sec-WebSocket-Protocol") != "echo" {
			t.Fatalf("handshake: %v %v", resp, err)
		}
		return nc, br, cl
	}

	t.Run("echo", func(t *testing.T) {
		cl0 := &client{rnd: rand.New(rand.NewPCG(7, 8))}
		nc, br, cl := dial(cl0.frame(fin|byte(OpText), []byte("early")))
		defer nc.Close()
		want := []string{"early"}
		var pongs []byte
		for _, m := range []string{"", "Hello", "κόσμε", strings.Repeat("big", 30000)} {
			nc.Write(cl.message(OpText, []byte(m), &pongs))
			want = append(want, m)
		}
		for _, m := range want {
			op, p, err := readFrame(br)
			for err == nil && op == OpPong {
				op, p, err = readFrame(br)
			}
			if err != nil || op != OpText || string(p) != m {
				t.Fatalf("echo: %v %s %v, want %s", op, short(string(p)), err, short(m))
			}
		}
		nc.Write(cl.frame(fin|byte(OpClose), []byte{0x03, 0xe9}))
		op, p, err := readFrame(br)
		for err == nil && op == OpPong {
			op, p, err = readFrame(br)
		}
		if err != nil || op != OpClose || !bytes.Equal(p, []byte{0x03, 0xe9}) {
			t.Fatalf("close: %v % x %v", op, p, err)
		}
		if err := <-serverDone; err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("after the close: %v, want the server to close TCP", err)
		}
	})
	t.Run("protocol error", func(t *testing.T) {
		nc, br, _ := dial(nil)
		defer nc.Close()
		nc.Write(frame(fin|byte(OpText), []byte("unmasked"), nil))
		op, p, err := readFrame(br)
		if err != nil || op != OpClose || binary.BigEndian.Uint16(p) != 1002 {
			t.Fatalf("close: %v % x %v", op, p, err)
		}
		var pe *ProtocolError
		if err := <-serverDone; !errors.As(err, &pe) {
			t.Fatalf("server: %v", err)
		}
	})
	t.Run("not a websocket", func(t *testing.T) {
		resp, err := http.Get("http://" + ln.Addr().String() + "/ws")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

// FuzzReadMessage: any bytes give messages then an error, never a panic;
// no message allocates beyond its limit (fragments: twice, by doubling);
// what was accepted decodes the same once re-encoded.
func FuzzReadMessage(f *testing.F) {
	for _, tc := range readCases() {
		limit := tc.limit
		if limit <= 0 {
			limit = 1 << 16
		}
		f.Add(uint32(limit), tc.in)
	}
	f.Fuzz(func(t *testing.T, limit32 uint32, in []byte) {
		limit := int64(limit32 % (1 << 17))
		conn := &rw{r: bytes.NewReader(in)}
		c := NewConn(conn, nil)
		type msg struct {
			op Opcode
			p  []byte
		}
		var msgs []msg
		var err error
		for err == nil {
			var op Opcode
			var p []byte
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			op, p, err = c.ReadMessage(limit)
			runtime.ReadMemStats(&after)
			// Rounding to size classes and pages, the error and a pooled
			// buffer: 16 KiB.
			if a := after.TotalAlloc - before.TotalAlloc; a > uint64(2*limit+16<<10) {
				t.Fatalf("one ReadMessage (limit %d) allocated %d bytes: %v", limit, a, err)
			}
			if err != nil {
				break
			}
			if int64(len(p)) > limit || (op != OpText && op != OpBinary) || (op == OpText && !utf8.Valid(p)) {
				t.Fatalf("accepted %v of %d bytes (limit %d)", op, len(p), limit)
			}
			msgs = append(msgs, msg{op, p})
		}
		var pe *ProtocolError
		var ce *CloseError
		switch {
		case errors.As(err, &pe):
			if pe.Code != 1002 && pe.Code != 1007 && pe.Code != 1009 {
				t.Fatalf("close code %d", pe.Code)
			}
		case errors.As(err, &ce):
			if ce.Code != 1005 && !validCode(ce.Code) || !utf8.ValidString(ce.Reason) || len(ce.Reason) > 123 {
				t.Fatalf("close %d %q", ce.Code, ce.Reason)
			}
		case err != io.EOF && err != io.ErrUnexpectedEOF:
			t.Fatalf("error %v", err)
		}
		// Every pong is a whole unmasked frame.
		br := bufio.NewReader(bytes.NewReader(conn.out()))
		for {
			op, p, err := readFrame(br)
			if err == io.EOF {
				break
			}
			if err != nil || op != OpPong || len(p) > 125 {
				t.Fatalf("wrote %v %q %v", op, p, err)
			}
		}
		// Round trip.
		cl := &client{rnd: rand.New(rand.NewPCG(uint64(len(in)), uint64(limit)))}
		var again, pongs []byte
		for _, m := range msgs {
			again = append(again, cl.message(m.op, m.p, &pongs)...)
		}
		c2 := NewConn(&rw{r: bytes.NewReader(again)}, nil)
		for i, m := range msgs {
			op, p, err := c2.ReadMessage(limit)
			if err != nil || op != m.op || !bytes.Equal(p, m.p) {
				t.Fatalf("re-decoding message %d: %v %q %v", i, op, p, err)
			}
		}
		if _, _, err := c2.ReadMessage(limit); err != io.EOF {
			t.Fatalf("re-decoding: %v after the messages", err)
		}
	})
}
