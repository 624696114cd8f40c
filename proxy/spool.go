package proxy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

const (
	// reqMemLimit is how much of a request body is kept in memory before it
	// goes to a temp file (nginx client_body_buffer_size is 8-16 KiB).
	reqMemLimit = 64 << 10
	// respMemLimit is the same for a worker's response body.
	respMemLimit = 1 << 20
	// pooledBufMax is the largest buffer kept for reuse.
	pooledBufMax = respMemLimit
	firstBufSize = 16 << 10
)

var errBodyTooLarge = errors.New("body larger than max_body_size")

var bufPool sync.Pool // of *[]byte; the pointer travels with the buffer so Put does not allocate

func getBuf() *[]byte {
	if p, ok := bufPool.Get().(*[]byte); ok {
		*p = (*p)[:0]
		return p
	}
	b := make([]byte, 0, firstBufSize)
	return &b
}

func putBuf(p *[]byte) {
	if p == nil || cap(*p) == 0 || cap(*p) > pooledBufMax {
		return
	}
	*p = (*p)[:0]
	bufPool.Put(p)
}

// spool holds a body: in memory up to limit bytes, then in an unlinked temp
// file, so a slow peer on one side never holds the other side.
// The zero value is unusable; call reset first.
type spool struct {
	bp    *[]byte // buf's pool handle
	buf   []byte
	f     *os.File
	n     int64
	limit int
	dir   string // temp dir; "" means os.TempDir()
}

func (s *spool) reset(limit int, dir string) {
	s.release()
	s.limit = limit
	s.dir = dir
}

// readFrom reads r to EOF. max > 0 bounds the total: past it readFrom
// stops with errBodyTooLarge. before, when set, runs before each read (to
// push a read deadline forward).
func (s *spool) readFrom(r io.Reader, max int64, before func()) error {
	if s.bp == nil {
		s.bp = getBuf()
		s.buf = *s.bp
	}
	for {
		if s.f != nil {
			return s.copyToFile(r, max, before)
		}
		if len(s.buf) == cap(s.buf) {
			if cap(s.buf) >= s.limit {
				if err := s.spill(); err != nil {
					return err
				}
				continue
			}
			nc := 2 * cap(s.buf)
			if nc > s.limit {
				nc = s.limit
			}
			nb := make([]byte, len(s.buf), nc)
			copy(nb, s.buf)
			s.buf = nb
			*s.bp = nb // the grown buffer goes back to the pool
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

// spill moves the memory part into a new temp file, unlinked at once so
// nothing is left behind if the process dies.
func (s *spool) spill() error {
	f, err := os.CreateTemp(s.dir, "berth-body-*")
	if err != nil {
		return fmt.Errorf("buffer a body to a temp file (set TMPDIR to a writable directory): %w", err)
	}
	os.Remove(f.Name())
	if _, err := f.Write(s.buf); err != nil {
		f.Close()
		return fmt.Errorf("buffer a body to a temp file: %w", err)
	}
	s.f = f
	return nil
}

// copyToFile continues reading into the temp file, reusing buf as scratch.
func (s *spool) copyToFile(r io.Reader, max int64, before func()) error {
	scratch := s.buf[:cap(s.buf)]
	for {
		if before != nil {
			before()
		}
		n, err := r.Read(scratch)
		if n > 0 {
			s.n += int64(n)
			if max > 0 && s.n > max {
				return errBodyTooLarge
			}
			if _, werr := s.f.Write(scratch[:n]); werr != nil {
				return fmt.Errorf("buffer a body to a temp file: %w", werr)
			}
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

// inMemory says whether bytes() is the whole body.
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
	if s.bp != nil {
		*s.bp = s.buf
		putBuf(s.bp)
		s.bp, s.buf = nil, nil
	}
	s.n = 0
}
