package proxy

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
)

const (
	// reqMemLimit is proxy.body_buffer_size's default: how much of a
	// request body is kept in memory before it goes to a temp file. 64 KiB
	// keeps JSON and form posts out of files (nginx's
	// client_body_buffer_size defaults to 8-16 KiB).
	reqMemLimit = 64 << 10
	// maxBodyBuffer bounds body_buffer_size, as config.MaxBodyBufferSize.
	maxBodyBuffer = 1 << 30
	// respMemLimit is the same for a worker's response body.
	respMemLimit = 1 << 20
	firstBufSize = 16 << 10
	// spillChunk is the least a spilled body is copied to its file
	// through; fewer, larger writes.
	spillChunk = 64 << 10
)

// Buffers come from pools by size class, powers of two from 16 KiB to
// 4 MiB, so a body read into a buffer of exactly its Content-Length reuses
// one of the class above. A larger buffer is made for its request and left
// to the GC: whatever body_buffer_size says, an idle proxy keeps pooled
// buffers of at most 4 MiB, and sync.Pool gives those up to the GC too.
const (
	minClassShift = 14 // 16 KiB
	maxClassShift = 22 // 4 MiB
	pooledBufMax  = 1 << maxClassShift
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool // of *[]byte; the pointer travels with the buffer so Put does not allocate

var errBodyTooLarge = errors.New("body larger than max_body_size")

// getBufSize returns an empty buffer with room for at least n bytes.
func getBufSize(n int) *[]byte {
	if n > pooledBufMax {
		b := make([]byte, 0, n)
		return &b
	}
	c := 0
	if n > 1<<minClassShift {
		c = bits.Len(uint(n-1)) - minClassShift
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:0]
		return p
	}
	b := make([]byte, 0, 1<<(c+minClassShift))
	return &b
}

func getBuf() *[]byte { return getBufSize(firstBufSize) }

// putBuf gives a buffer back to the largest class its capacity serves (a
// buffer grown by append lands between two classes).
func putBuf(p *[]byte) {
	if p == nil || cap(*p) < 1<<minClassShift || cap(*p) > pooledBufMax {
		return
	}
	*p = (*p)[:0]
	bufPools[bits.Len(uint(cap(*p)))-1-minClassShift].Put(p)
}

// spool holds a body: in memory up to limit bytes, then in an unlinked temp
// file, so a slow peer on one side never holds the other side.
// The zero value is unusable; call reset first.
type spool struct {
	bp     *[]byte // the pooled buffer buf is a slice of
	buf    []byte  // the body in memory; its capacity is what may be read before the next decision
	toFile bool    // the body goes to f, made at its first byte
	f      *os.File
	n      int64
	length int64 // the announced length (Content-Length); -1: unknown
	limit  int
	dir    string  // temp dir; "" means os.TempDir()
	one    [1]byte // the probe past a full buffer: does the body go on?
}

// reset empties the spool for a body of which limit bytes may be kept in
// memory. A limit of 0 keeps nothing: any byte goes to a temp file.
func (s *spool) reset(limit int, dir string) {
	s.release()
	s.limit = limit
	s.dir = dir
	s.length = -1
}

// expect gives the body's announced length (-1: unknown), after reset
// and before readFrom. A body announced to fit the limit is read into one
// buffer of exactly that size; one announced past it goes to the temp file
// from its first byte, without filling memory first.
func (s *spool) expect(length int64) { s.length = length }

// readFrom reads r to EOF. An unannounced body (chunked) goes into a
// buffer that doubles up to limit, then spills. max > 0 bounds the total:
// past it readFrom stops with errBodyTooLarge. before, when set, runs
// before each read (to push a read deadline forward).
func (s *spool) readFrom(r io.Reader, max int64, before func()) error {
	if s.bp == nil && !s.toFile {
		if s.length > int64(s.limit) {
			if err := s.spill(); err != nil {
				return err
			}
		} else {
			n := firstBufSize
			if s.length >= 0 {
				n = int(s.length)
			}
			s.bp = getBufSize(min(n, s.limit))
			s.buf = (*s.bp)[:0:min(n, s.limit)]
		}
	}
	for {
		if s.toFile {
			return s.copyToFile(r, max, before, 0)
		}
		if len(s.buf) == cap(s.buf) {
			if cap(s.buf) < s.limit && (s.length < 0 || s.n < s.length) {
				s.grow()
				continue
			}
			// Full at the announced length or at the limit. Only a read
			// tells whether the body ends here: a body of exactly the
			// limit stays in memory, and an announced length is not
			// trusted to be the end.
			if before != nil {
				before()
			}
			n, err := r.Read(s.one[:])
			if n == 0 {
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				continue
			}
			s.n++
			if max > 0 && s.n > max {
				return errBodyTooLarge
			}
			if cap(s.buf) < s.limit { // longer than announced
				s.grow()
				s.buf = append(s.buf, s.one[0])
			} else {
				if serr := s.spill(); serr != nil {
					return serr
				}
				if err == nil {
					// The byte leads the next write to the file.
					(*s.bp)[:1][0] = s.one[0]
					return s.copyToFile(r, max, before, 1)
				}
				if werr := s.write(s.one[:]); werr != nil {
					return werr
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			continue
		}
		if before != nil {
			before()
		}
		n, err := r.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		s.n += int64(n)
		if max > 0 && s.n > max {
			return errBodyTooLarge
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// grow doubles buf's room, up to limit: within its pooled buffer when that
// has the room, else in one of the next class (the old one goes back).
func (s *spool) grow() {
	nc := min(max(2*cap(s.buf), firstBufSize), s.limit)
	if cap(*s.bp) >= nc {
		s.buf = (*s.bp)[:len(s.buf):nc]
		return
	}
	nbp := getBufSize(nc)
	nb := (*nbp)[:len(s.buf):nc]
	copy(nb, s.buf)
	putBuf(s.bp)
	s.bp, s.buf = nbp, nb
}

// spill sends the body to a temp file from now on, the memory part
// first, and makes sure bp is a scratch buffer large enough to copy the
// rest through.
func (s *spool) spill() error {
	s.toFile = true
	if len(s.buf) > 0 {
		if err := s.write(s.buf); err != nil {
			return err
		}
	}
	s.buf = nil
	if want := min(max(s.limit, spillChunk), respMemLimit); s.bp == nil || cap(*s.bp) < want {
		putBuf(s.bp)
		s.bp = getBufSize(want)
	}
	return nil
}

// write appends p to the temp file, making it first: unlinked at once, so
// nothing is left behind if the process dies, and only once a byte is
// there to write, so a client that announces a long body and sends
// nothing holds no file.
func (s *spool) write(p []byte) error {
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, "berth-body-*")
		if err != nil {
			return fmt.Errorf("buffer a body to a temp file (set TMPDIR to a writable directory): %w", err)
		}
		os.Remove(f.Name())
		s.f = f
	}
	if _, err := s.f.Write(p); err != nil {
		return fmt.Errorf("buffer a body to a temp file: %w", err)
	}
	return nil
}

// copyToFile continues reading into the temp file through the scratch
// buffer, whose first pend bytes are already read.
func (s *spool) copyToFile(r io.Reader, max int64, before func(), pend int) error {
	scratch := (*s.bp)[:cap(*s.bp)]
	for {
		if before != nil {
			before()
		}
		n, err := r.Read(scratch[pend:])
		if n > 0 || pend > 0 {
			s.n += int64(n)
			if max > 0 && s.n > max {
				return errBodyTooLarge
			}
			if werr := s.write(scratch[:pend+n]); werr != nil {
				return werr
			}
			pend = 0
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (s *spool) size() int64 { return s.n }

// inMemory says whether bytes() is the whole body (an empty one included,
// even if it was to go to a file).
func (s *spool) inMemory() bool { return s.f == nil }

func (s *spool) bytes() []byte { return s.buf }

// file returns the temp file rewound to its start. Only for a spilled
// spool; the file holds exactly size() bytes.
func (s *spool) file() (*os.File, error) {
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind buffered body: %w", err)
	}
	return s.f, nil
}

// release frees the buffer and the temp file; the spool is then empty.
func (s *spool) release() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.toFile = false
	if s.bp != nil {
		putBuf(s.bp)
		s.bp = nil
	}
	s.buf = nil
	s.n = 0
}
