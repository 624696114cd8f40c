package h2guard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// script is a net.Conn whose reads return the chunks given, in order, and
// whose writes are recorded.
type script struct {
	mu     sync.Mutex
	chunks [][]byte
	out    bytes.Buffer
	closed bool
}

func (s *script) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	if len(s.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.chunks[0])
	if s.chunks[0] = s.chunks[0][n:]; len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	return n, nil
}

func (s *script) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	return s.out.Write(p)
}

func (s *script) Close() error                       { s.mu.Lock(); s.closed = true; s.mu.Unlock(); return nil }
func (s *script) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (s *script) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (s *script) SetDeadline(t time.Time) error      { return nil }
func (s *script) SetReadDeadline(t time.Time) error  { return nil }
func (s *script) SetWriteDeadline(t time.Time) error { return nil }

func frame(typ, flags byte, id uint32, payload []byte) []byte {
	f := make([]byte, headerLen, headerLen+len(payload))
	f[0], f[1], f[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	f[3], f[4] = typ, flags
	binary.BigEndian.PutUint32(f[5:], id)
	return append(f, payload...)
}

func settings(kv ...uint32) []byte {
	var p []byte
	for i := 0; i < len(kv); i += 2 {
		p = binary.BigEndian.AppendUint16(p, uint16(kv[i]))
		p = binary.BigEndian.AppendUint32(p, kv[i+1])
	}
	return frame(typeSettings, 0, 0, p)
}

// readAll reads g to its end with reads of at most n bytes.
func readAll(g *Conn, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for {
		k, err := g.Read(buf)
		out = append(out, buf[:k]...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return out, err
		}
	}
}

// split cuts b into chunks at random points.
func split(r *rand.Rand, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := 1 + r.Intn(min(len(b), 40))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// A well-behaved client's bytes reach the server unchanged, however the
// reads split them, and SETTINGS with a setting twice is collapsed.
func TestPassesFramesWhateverTheSplit(t *testing.T) {
	var in, want bytes.Buffer
	in.WriteString(ClientPreface)
	want.WriteString(ClientPreface)
	add := func(f []byte, w []byte) {
		in.Write(f)
		if w == nil {
			w = f
		}
		want.Write(w)
	}
	add(settings(0x3, 100, 0x4, 65535), nil)
	add(frame(typeHeaders, flagEndHeaders, 1, []byte("\x82\x84\x86\x41\x8a\x08\x9d\x5c\x0b\x81\x70\xdc\x78\x0f\x03")), nil)
	add(frame(typeHeaders, 0, 3, bytes.Repeat([]byte{0x82}, 100)), nil)
	add(frame(typeContinuation, 0, 3, bytes.Repeat([]byte{0x84}, 50)), nil)
	add(frame(typeContinuation, flagEndHeaders, 3, []byte{0x86}), nil)
	add(frame(typeData, flagPadded, 3, append([]byte{3}, []byte("bodyxyz")...)), nil)
	add(settings(0x4, 100, 0x4, 1, 0x3, 7), settings(0x4, 1, 0x3, 7))
	add(frame(0x6, 0, 0, []byte("pingping")), nil)
	add(frame(typeSettings, flagAck, 0, nil), nil)
	r := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		s := &script{chunks: split(r, bytes.Clone(in.Bytes()))}
		g := Wrap(s, Limits{}, func(v Violation) { t.Fatalf("violation %+v", v) })
		got, err := readAll(g, 1+r.Intn(64))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("round %d: the server got\n%q\nwant\n%q", round, got, want.Bytes())
		}
	}
}

// floods lists what a hostile client sends forever after the preface.
var floods = []struct {
	name   string
	frame  []byte
	reason string
}{
	{"empty CONTINUATION", frame(typeContinuation, 0, 1, nil), "header-block-frames"},
	{"empty DATA", frame(typeData, 0, 1, nil), "flood"},
	{"PING", frame(0x6, 0, 0, []byte("12345678")), "flood"},
	{"SETTINGS", settings(0x3, 100), "flood"},
	{"WINDOW_UPDATE", frame(0x8, 0, 0, []byte{0, 0, 0, 1}), "flood"},
	{"PRIORITY", frame(0x2, 0, 1, []byte{0, 0, 0, 0, 16}), "flood"},
}

// Each flood is cut off: the read fails, GOAWAY(ENHANCE_YOUR_CALM) is
// written, and the server saw a bounded number of frames.
func TestFloodsEnd(t *testing.T) {
	for _, tc := range floods {
		t.Run(tc.name, func(t *testing.T) {
			head := []byte(ClientPreface)
			if tc.reason == "header-block-frames" {
				head = append(head, frame(typeHeaders, 0x1, 1, []byte{0x82})...)
			}
			chunks := [][]byte{head}
			block := bytes.Repeat(tc.frame, 4096/len(tc.frame)+1)
			for i := 0; i < 20000; i++ {
				chunks = append(chunks, block)
			}
			s := &script{chunks: chunks}
			var got []Violation
			g := Wrap(s, Limits{}, func(v Violation) { got = append(got, v) })
			passed, err := readAll(g, 4096)
			if !errors.Is(err, ErrViolation) {
				t.Fatalf("the flood was not cut off: %v after %d bytes", err, len(passed))
			}
			if len(got) != 1 || got[0].Reason != tc.reason {
				t.Fatalf("violations %+v, want one %q", got, tc.reason)
			}
			if len(passed) > 3<<20 {
				t.Errorf("%d bytes reached the server before the cut", len(passed))
			}
			want := frame(typeGoAway, 0, 0, []byte{0, 0, 0, 1, 0, 0, 0, codeEnhanceYourCalm})
			if tc.reason == "flood" {
				want = frame(typeGoAway, 0, 0, []byte{0, 0, 0, 0, 0, 0, 0, codeEnhanceYourCalm})
			}
			if !bytes.Equal(s.out.Bytes(), want) {
				t.Errorf("wrote %x, want GOAWAY %x", s.out.Bytes(), want)
			}
			t.Logf("%s: cut after %d bytes: %s", tc.name, len(passed), got[0].Detail)
		})
	}
}

// Large DATA is useful: uploads are not floods.
func TestUploadIsNotAFlood(t *testing.T) {
	chunks := [][]byte{[]byte(ClientPreface), frame(typeHeaders, flagEndHeaders, 1, []byte{0x83})}
	data := frame(typeData, 0, 1, bytes.Repeat([]byte("x"), 16384))
	for i := 0; i < 2000; i++ {
		chunks = append(chunks, data, frame(0x8, 0, 0, []byte{0, 0, 0x40, 0}))
	}
	s := &script{chunks: chunks}
	g := Wrap(s, Limits{}, func(v Violation) { t.Fatalf("violation %+v", v) })
	if _, err := readAll(g, 32768); err != nil {
		t.Fatal(err)
	}
}

// A header block left unfinished is ended after BlockTimeout.
func TestHeaderBlockTimeout(t *testing.T) {
	pr, pw := net.Pipe()
	defer pw.Close()
	done := make(chan Violation, 1)
	g := Wrap(pr, Limits{BlockTimeout: 50 * time.Millisecond}, func(v Violation) { done <- v })
	go func() {
		pw.Write([]byte(ClientPreface))
		pw.Write(frame(typeHeaders, 0, 1, []byte{0x82}))
		io.Copy(io.Discard, pw)
	}()
	go io.Copy(io.Discard, g)
	select {
	case v := <-done:
		if v.Reason != "header-block-timeout" {
			t.Fatalf("violation %+v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an unfinished header block was not ended")
	}
}

// A GOAWAY due while the server is in the middle of a frame waits for the
// frame's end, so the client never sees a torn frame.
func TestGoAwayAtAFrameBoundary(t *testing.T) {
	s := &script{}
	g := Wrap(s, Limits{}, nil)
	data := frame(typeData, 0, 1, bytes.Repeat([]byte("d"), 100))
	g.Write(data[:50])
	g.violate(Violation{Reason: "flood"})
	if s.out.Len() != 50 {
		t.Fatalf("GOAWAY written inside a frame: %d bytes out", s.out.Len())
	}
	g.Write(data[50:])
	want := append(bytes.Clone(data), frame(typeGoAway, 0, 0, []byte{0, 0, 0, 0, 0, 0, 0, codeEnhanceYourCalm})...)
	if !bytes.Equal(s.out.Bytes(), want) {
		t.Fatalf("wrote %x\nwant %x", s.out.Bytes(), want)
	}
	if _, err := g.Write([]byte("more")); err == nil {
		t.Fatal("a write after the GOAWAY succeeded")
	}
}

func TestCollapseSettings(t *testing.T) {
	for _, tc := range []struct{ in, want []byte }{
		{settings(0x4, 100, 0x4, 1), settings(0x4, 1)},
		{settings(0x3, 5, 0x4, 100, 0x3, 6, 0x4, 2), settings(0x3, 6, 0x4, 2)},
		{settings(0x4, 1<<31, 0x4, 1), settings(0x4, 1<<31)},
		{settings(0x1, 4096, 0x3, 10), settings(0x1, 4096, 0x3, 10)},
	} {
		if got := collapseSettings(tc.in); !bytes.Equal(got, tc.want) {
			t.Errorf("collapse %x = %x, want %x", tc.in, got, tc.want)
		}
	}
}

// Rapid reset: HEADERS then RST_STREAM, stream after stream.
func TestRapidReset(t *testing.T) {
	chunks := [][]byte{[]byte(ClientPreface)}
	for id := uint32(1); id < 2000; id += 2 {
		chunks = append(chunks, frame(typeHeaders, flagEndHeaders|0x1, id, []byte{0x82, 0x84, 0x86}), frame(typeRSTStream, 0, id, []byte{0, 0, 0, 8}))
	}
	var got []Violation
	g := Wrap(&script{chunks: chunks}, Limits{}, func(v Violation) { got = append(got, v) })
	if _, err := readAll(g, 4096); !errors.Is(err, ErrViolation) || len(got) != 1 || got[0].Reason != "rapid-reset" {
		t.Fatalf("rapid reset: %v, violations %+v", err, got)
	}
	// A browser that cancels a few of many streams is fine.
	chunks = [][]byte{[]byte(ClientPreface)}
	for id := uint32(1); id < 2000; id += 2 {
		chunks = append(chunks, frame(typeHeaders, flagEndHeaders|0x1, id, []byte{0x82, 0x84, 0x86}))
		if id%10 == 1 {
			chunks = append(chunks, frame(typeRSTStream, 0, id, []byte{0, 0, 0, 8}))
		}
	}
	g = Wrap(&script{chunks: chunks}, Limits{}, func(v Violation) { t.Fatalf("violation %+v", v) })
	if _, err := readAll(g, 4096); err != nil {
		t.Fatal(err)
	}
}
