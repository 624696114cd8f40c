package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// pieces returns body in reads of at most step bytes; with eofWithData the
// last one comes with io.EOF, as net/http's Content-Length bodies do,
// otherwise a later read returns 0, io.EOF, as a chunked or HTTP/2 body
// may.
type pieces struct {
	b           []byte
	step        int
	eofWithData bool
}

func (p *pieces) Read(q []byte) (int, error) {
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	n := copy(q[:min(len(q), p.step)], p.b)
	p.b = p.b[n:]
	if len(p.b) == 0 && p.eofWithData {
		return n, io.EOF
	}
	return n, nil
}

func TestSpool(t *testing.T) {
	const k = 1 << 10
	body := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + i>>8)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		limit  int
		size   int
		length int64 // announced; -1 chunked
		mem    bool  // stays in memory
	}{
		{"empty chunked", 64 * k, 0, -1, true},
		{"1 KiB announced", 64 * k, k, k, true},
		{"1 KiB chunked", 64 * k, k, -1, true},
		{"at the limit, announced", 64 * k, 64 * k, 64 * k, true},
		{"at the limit, chunked", 64 * k, 64 * k, -1, true},
		{"limit+1, announced", 64 * k, 64*k + 1, 64*k + 1, false},
		{"limit+1, chunked", 64 * k, 64*k + 1, -1, false},
		{"limit not a class, at it", 2000000, 2000000, 2000000, true},
		{"limit not a class, at it, chunked", 2000000, 2000000, -1, true},
		{"limit not a class, +1, chunked", 2000000, 2000001, -1, false},
		{"3 MiB over 2M, announced", 2000000, 3 << 20, 3 << 20, false},
		{"3 MiB over 2M, chunked", 2000000, 3 << 20, -1, false},
		{"above the largest pooled class", 6 << 20, 5 << 20, 5 << 20, true},
		// limit 0 keeps nothing in memory: any byte goes to a file, an
		// empty body to none (the proxy never asks for 0: the config's
		// least is 1).
		{"limit 0, empty", 0, 0, -1, true},
		{"limit 0, one byte", 0, 1, -1, false},
		{"limit 0, announced", 0, 10 * k, 10 * k, false},
		{"limit 1, one byte", 1, 1, 1, true},
		{"limit 1, two bytes", 1, 2, -1, false},
		// A reader giving more than announced (net/http never does) is
		// read whole all the same.
		{"longer than announced", 64 * k, 2 * k, k, true},
		{"longer than announced, past the limit", 64 * k, 100 * k, k, false},
	} {
		for _, step := range []int{1000, 1 << 20} {
			for _, eofWithData := range []bool{false, true} {
				name := fmt.Sprintf("%s/step %d/eof with data %v", tc.name, step, eofWithData)
				want := body(tc.size)
				dir := t.TempDir()
				var s spool
				s.reset(tc.limit, dir)
				s.expect(tc.length)
				if err := s.readFrom(&pieces{b: want, step: step, eofWithData: eofWithData}, 0, func() {}); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if s.size() != int64(tc.size) || s.inMemory() != tc.mem {
					t.Fatalf("%s: size %d, in memory %v; want %d, %v", name, s.size(), s.inMemory(), tc.size, tc.mem)
				}
				var got []byte
				if s.inMemory() {
					got = s.bytes()
					if tc.length == int64(tc.size) && cap(got) != tc.size {
						t.Errorf("%s: an announced body of %d bytes was read into a buffer of %d", name, tc.size, cap(got))
					}
				} else {
					f, err := s.file()
					if err != nil {
						t.Fatal(err)
					}
					got, _ = io.ReadAll(f)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: got %d bytes that differ from the %d sent", name, len(got), len(want))
				}
				if left, _ := os.ReadDir(dir); len(left) != 0 {
					t.Errorf("%s: %d files left in the temp dir (they are unlinked at once)", name, len(left))
				}
				s.release()
			}
		}
	}
}

func TestSpoolMaxBody(t *testing.T) {
	for _, tc := range []struct {
		limit, size int
		length      int64
		max         int64
		err         bool
	}{
		{64 << 10, 1000, 1000, 1000, false},
		{64 << 10, 1001, -1, 1000, true},
		{64 << 10, 100 << 10, -1, 80 << 10, true}, // caught after the spill
		{1000, 1000, -1, 999, true},               // caught by the probe past a full buffer
		{1000, 1001, -1, 1000, true},
	} {
		var s spool
		s.reset(tc.limit, t.TempDir())
		s.expect(tc.length)
		err := s.readFrom(&pieces{b: make([]byte, tc.size), step: 4096}, tc.max, nil)
		if got := errors.Is(err, errBodyTooLarge); got != tc.err {
			t.Errorf("%+v: error %v, want errBodyTooLarge: %v", tc, err, tc.err)
		}
		s.release()
	}
}

// A body announced to fit is read into a pooled buffer of its size: once
// the pool is warm, no allocation and no growth.
func TestSpoolAnnouncedBodyAllocatesNothing(t *testing.T) {
	b := make([]byte, 1<<20)
	r := &pieces{}
	var s spool
	allocs := testing.AllocsPerRun(20, func() {
		*r = pieces{b: b, step: 256 << 10, eofWithData: true}
		s.reset(2<<20, "")
		s.expect(int64(len(b)))
		if err := s.readFrom(r, 0, nil); err != nil || !s.inMemory() || len(s.bytes()) != len(b) {
			t.Fatalf("read: %v, in memory %v", err, s.inMemory())
		}
		s.release()
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per 1 MiB body; want 0", allocs)
	}
}

func TestBufPoolClasses(t *testing.T) {
	for _, tc := range []struct{ ask, cap int }{
		{0, 16 << 10}, {1, 16 << 10}, {16 << 10, 16 << 10}, {16<<10 + 1, 32 << 10},
		{1 << 20, 1 << 20}, {2000000, 2 << 20}, {4 << 20, 4 << 20}, {4<<20 + 1, 4<<20 + 1},
	} {
		p := getBufSize(tc.ask)
		if cap(*p) < tc.cap || len(*p) != 0 || cap(*p) >= 2*tc.cap {
			t.Errorf("getBufSize(%d): len %d cap %d, want 0, %d", tc.ask, len(*p), cap(*p), tc.cap)
		}
		putBuf(p)
	}
	// A buffer above the largest class is left to the GC, whatever the
	// configured body_buffer_size: the pools never hold one.
	huge := make([]byte, 0, 64<<20)
	putBuf(&huge)
	for i := range bufPools {
		for {
			p, ok := bufPools[i].Get().(*[]byte)
			if !ok {
				break
			}
			if cap(*p) > pooledBufMax {
				t.Fatalf("class %d holds a buffer of %d bytes", i, cap(*p))
			}
		}
	}
	// A buffer grown by append goes to the class it can serve.
	odd := make([]byte, 0, 40<<10)
	putBuf(&odd)
	if p := getBufSize(32 << 10); cap(*p) < 32<<10 {
		t.Fatalf("a 32 KiB class buffer of %d bytes", cap(*p))
	}
}

// A body announced past the limit goes to a file, but the file is made at
// its first byte: a client that announces 1 GiB and sends nothing holds
// no file descriptor but its connection.
func TestSpoolNoFileBeforeAByte(t *testing.T) {
	var s spool
	s.reset(64<<10, t.TempDir())
	s.expect(1 << 30)
	err := s.readFrom(io.MultiReader(), 0, nil) // EOF at once: net/http says io.ErrUnexpectedEOF
	if err != nil || s.f != nil || !s.inMemory() || s.size() != 0 {
		t.Fatalf("nothing sent: error %v, file %v, in memory %v, size %d", err, s.f, s.inMemory(), s.size())
	}
	s.release()
	s.reset(64<<10, t.TempDir())
	s.expect(1 << 30)
	err = s.readFrom(&pieces{b: []byte("x"), step: 1, eofWithData: true}, 0, nil)
	if err != nil || s.f == nil || s.size() != 1 {
		t.Fatalf("one byte sent: error %v, file %v, size %d", err, s.f, s.size())
	}
	s.release()
}

// An in-memory body too large to be copied into the packet goes out with
// it in one writev: the worker gets exactly the bytes, on a fresh
// connection and on a pooled one the worker had closed (a stale
// connection is replaced, not answered 502, even for a POST).
func TestInMemoryBodyToWorker(t *testing.T) {
	fw := startFake(t, "w1", 1, echo)
	cfg := defaultConfig()
	cfg.BodyBufferSize = 1 << 20
	h := startProxy(t, cfg, fw)
	body := string(bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16)) // 300 KiB: past the packet's 64 KiB
	for i, r := range []io.Reader{strings.NewReader(body), io.MultiReader(strings.NewReader(body[:1000]), strings.NewReader(body[1000:]))} {
		resp, got := h.do("POST", "/", r)
		if resp.StatusCode != 200 || got != body {
			t.Fatalf("upload %d: %d, %d bytes back of %d", i, resp.StatusCode, len(got), len(body))
		}
	}
	waitFor(t, "the connection to be pooled", 2*time.Second, func() bool { return h.srv.Stats().Workers["w1"].InFlight == 0 })
	fw.closeConns()
	time.Sleep(20 * time.Millisecond)
	if resp, got := h.do("POST", "/", strings.NewReader(body)); resp.StatusCode != 200 || got != body {
		t.Fatalf("after the worker closed the pooled connection: %d, %d bytes back", resp.StatusCode, len(got))
	}
	if m := h.metricsText(); !strings.Contains(m, `berth_upstream_errors_total{kind="stale"} 1`) {
		t.Errorf("the stale connection was not the path taken:\n%s", grepLine(m, "upstream_errors"))
	}
}
