package proxy

import (
	"io"
	"syscall"
	"unsafe"
)

// rawsock.go does the proxy's socket reads and writes without telling the
// Go scheduler they are system calls.
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

// rawRead reads into p from rc's socket, waiting in the netpoller while
// nothing is there. It returns io.EOF at the end of the stream.
func rawRead(rc syscall.RawConn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			if e == syscall.EAGAIN {
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
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

// rawWrite writes all of p to rc's socket, waiting in the netpoller while
// the socket buffer is full.
func rawWrite(rc syscall.RawConn, p []byte) (int, error) {
	done := 0
	var errno syscall.Errno
	err := rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case 0:
				done += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	return done, err
}

// rawPeek says whether rc's socket has a byte to read, or has been closed
// by the peer, without waiting and without taking the byte.
func rawPeek(rc syscall.RawConn) bool {
	var one [1]byte
	got := false
	rc.Read(func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&one[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		got = e == 0 // a byte (r 1), or EOF (r 0): either way the socket is not idle
		_ = r
		return true
	})
	return got
}
