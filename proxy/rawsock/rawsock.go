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

	"golang.org/x/sys/unix"
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

	// ReadPooled's buffer source, and Writev's and Sendfile's arguments.
	get        func() []byte
	put        func([]byte)
	pooledFn   func(uintptr) bool
	iov        [][]byte
	more       bool // WritevMore: sendmsg with MSG_MORE instead of writev
	writevFn   func(uintptr) bool
	infd       int
	sfOff      *int64
	sfLeft     int64
	sfDone     int64
	sendfileFn func(uintptr) bool
}

func New(rc syscall.RawConn) *Sock {
	s := &Sock{rc: rc}
	s.readFn, s.writeFn, s.peekFn = s.doRead, s.doWrite, s.doPeek
	s.pooledFn, s.writevFn, s.sendfileFn = s.doReadPooled, s.doWritev, s.doSendfile
	return s
}

// SetPool gives ReadPooled its buffers: get returns an empty buffer with
// room, put takes back one that got nothing.
func (s *Sock) SetPool(get func() []byte, put func([]byte)) { s.get, s.put = get, put }

// ReadPooled reads into a buffer from the pool (SetPool), taken only once
// the socket has bytes: a connection waiting for its next request holds no
// buffer while it waits. It returns the buffer and the bytes read into it
// (buf[:n]); buf is nil when the read failed (io.EOF at the end of the
// stream).
func (s *Sock) ReadPooled() (buf []byte, n int, err error) {
	s.rbuf, s.rn, s.rerrno = nil, 0, 0
	err = s.rc.Read(s.pooledFn)
	buf, n, errno := s.rbuf, s.rn, s.rerrno
	s.rbuf = nil
	switch {
	case err == nil && errno != 0:
		err = errno
	case err == nil && n == 0:
		err = io.EOF
	}
	if err != nil {
		if buf != nil {
			s.put(buf)
		}
		return nil, 0, err
	}
	return buf, n, nil
}

func (s *Sock) doReadPooled(fd uintptr) bool {
	if s.rbuf == nil {
		s.rbuf = s.get()
	}
	p := s.rbuf[len(s.rbuf):cap(s.rbuf)]
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			s.put(s.rbuf)
			s.rbuf = nil
			return false
		}
		s.rn, s.rerrno = int(r), e
		return true
	}
}

// Writev writes all of the buffers, in one system call when the socket
// takes them, waiting in the netpoller while its buffer is full. The
// slices of iov are advanced as they are written.
func (s *Sock) Writev(iov [][]byte) (int64, error) {
	s.iov, s.wdone = iov, 0
	err := s.write(s.writevFn)
	s.iov = nil
	return int64(s.wdone), err
}

// WritevMore is Writev telling the kernel more follows at once (MSG_MORE,
// as nginx's tcp_nopush corks a head before sendfile): the last partial
// segment waits for the next write without the flag, which carries it.
// So a response head and a file go out in as few segments as their bytes
// need, not one more for the head. The caller must write again promptly,
// with Writev or Sendfile; closing the socket sends what waits too.
func (s *Sock) WritevMore(iov [][]byte) (int64, error) {
	s.more = true
	n, err := s.Writev(iov)
	s.more = false
	return n, err
}

func (s *Sock) doWritev(fd uintptr) bool {
	var vec [8]syscall.Iovec
	for {
		for len(s.iov) > 0 && len(s.iov[0]) == 0 {
			s.iov = s.iov[1:]
		}
		if len(s.iov) == 0 {
			return true
		}
		n := 0
		for _, b := range s.iov {
			if n == len(vec) {
				break
			}
			if len(b) > 0 {
				vec[n].Base = &b[0]
				vec[n].SetLen(len(b))
				n++
			}
		}
		var r uintptr
		var e syscall.Errno
		if s.more {
			// x/sys's Msghdr: its Iovlen's type differs between architectures.
			msg := unix.Msghdr{Iov: (*unix.Iovec)(unsafe.Pointer(&vec[0]))}
			msg.SetIovlen(n)
			r, _, e = syscall.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_MORE|unix.MSG_NOSIGNAL)
		} else {
			r, _, e = syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&vec[0])), uintptr(n))
		}
		switch e {
		case 0:
			s.wdone += int(r)
			for w := int(r); w > 0; {
				k := min(w, len(s.iov[0]))
				s.iov[0] = s.iov[0][k:]
				w -= k
				if len(s.iov[0]) == 0 {
					s.iov = s.iov[1:]
				}
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
}

// Sendfile sends n bytes of the file infd from *off (advanced by what was
// sent; nil: the file's own position), waiting in the netpoller while the
// socket buffer is full. It returns the bytes sent; fewer than n with a
// nil error means the file ended.
func (s *Sock) Sendfile(infd int, off *int64, n int64) (int64, error) {
	s.infd, s.sfOff, s.sfLeft, s.sfDone = infd, off, n, 0
	err := s.write(s.sendfileFn)
	s.sfOff = nil
	return s.sfDone, err
}

func (s *Sock) doSendfile(fd uintptr) bool {
	for s.sfLeft > 0 {
		chunk := min(s.sfLeft, 1<<30)
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDFILE, fd, uintptr(s.infd), uintptr(unsafe.Pointer(s.sfOff)), uintptr(chunk), 0, 0)
		switch e {
		case 0:
			if r == 0 {
				return true // the file is shorter than promised
			}
			s.sfDone += int64(r)
			s.sfLeft -= int64(r)
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
	s.wbuf, s.wdone = p, 0
	err := s.write(s.writeFn)
	s.wbuf = nil
	return s.wdone, err
}

// write runs fn (doWrite, doWritev, doSendfile) until it is done, waiting
// in the netpoller while the socket buffer is full; the error is the
// poller's or the errno fn recorded.
func (s *Sock) write(fn func(uintptr) bool) error {
	s.werrno = 0
	err := s.rc.Write(fn)
	if err == nil && s.werrno != 0 {
		err = s.werrno
	}
	return err
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

// PeerGone says, without waiting or taking a byte, whether the peer of
// the socket behind rc has closed or shut down its side (POLLRDHUP, what
// nginx watches a waiting client for): true even when bytes it sent are
// still unread, which a peek would not tell.
func PeerGone(rc syscall.RawConn) bool {
	gone := false
	rc.Control(func(fd uintptr) {
		fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		n, err := unix.Poll(fds[:], 0)
		if err == nil && n > 0 {
			gone = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone
}
