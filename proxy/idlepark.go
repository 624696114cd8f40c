package proxy

// idlepark.go: with many connections open, an idle plain connection waits
// without a goroutine. Its socket goes into an epoll set of the server's
// (one-shot), which the Go netpoller watches as a single descriptor; when
// the socket turns readable (a request, or the client closing), a
// goroutine is started for the connection again. An idle connection then
// costs its structures (about 2 KB), not also a stack (2 KB or more), as an
// idle connection in nginx costs its structures only. A TLS connection
// parks only once crypto/tls is seen to hold none of the client's bytes
// (conn.go, tlsHoldsNothing): a request it had read already would never
// be announced by the socket.

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// idlePark is the server's set of parked connections.
type idlePark struct {
	once  sync.Once
	epfd  int // -1: parking is not available (the epoll set could not be made)
	mu    sync.Mutex
	conns map[int32]*h1conn // by socket descriptor
	parks atomic.Int64      // connections parked so far
}

// start makes the epoll set and its goroutine, once.
func (p *idlePark) start(s *Server) bool {
	p.once.Do(func() {
		p.epfd = -1
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			s.logf("idle connections: epoll_create1: %v; each waits on a goroutine instead", err)
			return
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return
		}
		// A non-blocking descriptor given to os.NewFile joins the Go
		// netpoller: waiting on it costs no thread.
		f := os.NewFile(uintptr(fd), "berth-idle-connections")
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return
		}
		p.epfd = fd
		p.mu.Lock() // conns may be looked at (tests) before the first park
		p.conns = map[int32]*h1conn{}
		p.mu.Unlock()
		go p.loop(f, rc)
	})
	return p.epfd >= 0
}

// loop starts a goroutine for each parked connection that turns readable.
func (p *idlePark) loop(f *os.File, rc syscall.RawConn) {
	defer f.Close()
	var events [128]unix.EpollEvent
	for {
		n := 0
		err := rc.Read(func(fd uintptr) bool {
			var err error
			n, err = unix.EpollWait(int(fd), events[:], 0)
			return err != unix.EAGAIN && err != unix.EINTR && n != 0
		})
		if err != nil {
			return
		}
		for i := 0; i < n; i++ {
			if c := p.take(events[i].Fd); c != nil {
				go c.serveIdle()
			}
		}
	}
}

// park hands c's wait to the epoll set; false: c waits on its goroutine.
// After true, the caller must not touch c: it belongs to the set until
// take returns it.
func (p *idlePark) park(c *h1conn) bool {
	if c.fd < 0 || !p.start(c.s) {
		return false
	}
	p.mu.Lock()
	p.conns[c.fd] = c
	c.parked.Store(true)
	p.mu.Unlock()
	p.parks.Add(1)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: c.fd}
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
	if err == unix.ENOENT {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &ev)
	}
	if err != nil {
		// Not parked after all: whoever takes it back first owns it
		// (the loop cannot have seen an event it was never sent).
		if p.take(c.fd) == c {
			return false
		}
	}
	return true
}

// take returns the connection parked on fd, and only once: the caller owns
// it from then on (the loop to serve it, the tick to close it).
func (p *idlePark) take(fd int32) *h1conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conns[fd]
	if c != nil {
		delete(p.conns, fd)
		c.parked.Store(false)
	}
	return c
}

// unpark takes c back from the set for the tick (a timeout, Shutdown);
// false when the loop has it already.
func (p *idlePark) unpark(c *h1conn) bool {
	if p.take(c.fd) != c {
		return false
	}
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	return true
}
