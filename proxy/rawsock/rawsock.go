// Package rawsock does the proxy's socket reads and writes without
// telling the Go scheduler they are system calls.
//
// A read or write on a non-blocking socket never blocks: it moves bytes
// or answers EAGAIN at once. net.Conn still wraps each one in
// entersyscall/exitsyscall, and with the proxy's one P (GOMAXPROCS=1) the
// runtime's sysmon thread takes the P away from any such call it sees
// last past 20 µs (a loopback TCP write that delivers to the reader does)
// and hands it to another thread: under load that was five thread
// switches per request, and sysmon itself, woken every 20 µs because it
// kept finding work, cost a quarter of the proxy's CPU. RawSyscall skips
// the bookkeeping; waiting for readiness still goes through the netpoller
// (syscall.RawConn), so deadlines work as before.
package rawsock

import (
	"io"
	"syscall"
	"unsafe"
)

// Sock is one socket's raw reads and writes. syscall.RawConn takes a
// callback; a closure made per call would be a heap allocation per read
// and write, so each direction keeps its callback (a method value bound
// once) and its arguments in the Sock. A read and a write may run at
// the same time (net/http's background read beside a response); two reads,
// or two writes, never do.
type Sock struct {
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(uintptr) bool

	wbuf    []byte
	wdone   int
	werrno  syscall.Errno
	writeFn func(uintptr) bool

	peeked bool
	peekFn func(uintptr) bool
}

func New(rc syscall.RawConn) *Sock {
	s := &Sock{rc: rc}
	s.readFn, s.writeFn, s.peekFn = s.doRead, s.doWrite, s.doPeek
	return s
}

// Read reads into p, waiting in the netpoller while nothing is there. It
// returns io.EOF at the end of the stream.
func (s *Sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rbuf = nil
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (s *Sock) doRead(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rbuf[0])), uintptr(len(s.rbuf)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.rn, s.rerrno = int(r), e
		return true
	}
}

// Write writes all of p, waiting in the netpoller while the socket buffer
// is full.
func (s *Sock) Write(p []byte) (int, error) {
	s.wbuf, s.wdone, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	done, errno := s.wdone, s.werrno
	s.wbuf = nil
	if err == nil && errno != 0 {
		err = errno
	}
	return done, err
}

func (s *Sock) doWrite(fd uintptr) bool {
	for s.wdone < len(s.wbuf) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.wbuf[s.wdone])), uintptr(len(s.wbuf)-s.wdone))
		switch e {
		case 0:
			s.wdone += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
	return true
}

// Peek says whether the socket has a byte to read, or has been closed by
// the peer, without waiting and without taking the byte. It must not run
// beside read.
func (s *Sock) Peek() bool {
	s.peeked = false
	s.rc.Read(s.peekFn)
	return s.peeked
}

func (s *Sock) doPeek(fd uintptr) bool {
	var one [1]byte
	_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&one[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	s.peeked = e == 0 // a byte, or EOF: either way the socket is not idle
	return true
}
