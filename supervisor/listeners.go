// Listening sockets: the supervisor opens them (or takes them from socket
// activation) and owns them for its whole life; proxies only inherit them.
package supervisor

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/berth-dev/berth/config"
	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// listener is one listening socket the supervisor owns for its whole life.
type listener struct {
	addr       string       // as bound ("127.0.0.1:8080", "unix:/run/x.sock", "fd:name=addr")
	configured string       // the `listen` entry it was opened for; "" when socket-activated
	file       *os.File     // what proxies inherit; no poller of the supervisor's watches it (quietCopy)
	tcp        *net.TCPAddr // as bound, for a TCP socket; nil otherwise
	unixPath   string       // a unix socket's file, removed at close; "" when not ours to remove
	udp        *udpGroup    // HTTP/3's UDP sockets on the same port; nil: none (udp.go)
}

func openListeners(addrs []string) ([]*listener, error) {
	if fds := activationFiles(); len(fds) > 0 {
		return fds, nil
	}
	var out []*listener
	for _, a := range addrs {
		l, err := openListener(config.ListenAddress(a))
		if err != nil {
			for _, o := range out {
				o.close()
			}
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func openListener(addr string) (*listener, error) {
	network, address := "tcp", addr
	if strings.HasPrefix(addr, "unix:") {
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
		// A socket file left by an earlier run would make bind fail;
		// nobody else can be listening on it if we are starting.
		if st, err := os.Lstat(address); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(address)
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w; free the port or change listen in the config", addr, err)
	}
	l := &listener{addr: addr, configured: addr}
	switch x := ln.(type) {
	case *net.TCPListener:
		l.tcp = x.Addr().(*net.TCPAddr)
		l.addr = l.tcp.String()
	case *net.UnixListener:
		x.SetUnlinkOnClose(false) // the copy below keeps the socket: close removes the file
		l.unixPath = address
		os.Chmod(address, 0o666)
	}
	l.file, err = quietCopy(ln.(syscall.Conn), l.addr)
	ln.Close()
	if err != nil {
		l.close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// quietCopy returns a copy of c's socket that no poller of the
// supervisor's watches, for it to hold and hand down. net's File() (and
// os.NewFile of a non-blocking descriptor) registers the copy with the Go
// netpoller, which then woke PID 1 for every connection reaching a
// listener and every datagram an HTTP/3 socket sent or received (13.8 µs
// of the supervisor's CPU per HTTP/3 request in the bench), though the
// supervisor never reads them. Blocking mode belongs to the socket, shared
// with every copy: each proxy sets it back on its own (net.FileListener,
// net.FilePacketConn).
func quietCopy(c syscall.Conn, name string) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if derr == nil {
			derr = unix.SetNonblock(nfd, false)
		}
	}); err != nil {
		derr = err
	}
	if derr != nil {
		if nfd >= 0 {
			unix.Close(nfd)
		}
		return nil, fmt.Errorf("copy the socket: %w", derr)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// activationFiles returns the sockets systemd (or podman) passed us with
// LISTEN_FDS; they replace `listen`. The LISTEN_* variables are unset so a
// child can never mistake them for its own.
func activationFiles() []*listener {
	files := activation.Files(true)
	var out []*listener
	for _, f := range files {
		if isDatagram(f) {
			// One socket shared by every proxy would lose a draining
			// proxy's HTTP/3 packets to the next one; berth binds the
			// https:// listener's port over UDP itself (udp.go).
			fmt.Fprintf(os.Stderr, "berth: socket activation passed a UDP socket (%s); it is not used: with tls.http3 berth binds the UDP port of each https socket itself, so drop ListenDatagram= from the socket unit\n", f.Name())
			f.Close()
			continue
		}
		ln, err := net.FileListener(f)
		name := f.Name()
		l := &listener{}
		if err == nil {
			if name == "" || strings.HasPrefix(name, "LISTEN_FD_") {
				name = ln.Addr().String()
			} else {
				name = name + "=" + ln.Addr().String()
			}
			l.tcp, _ = ln.Addr().(*net.TCPAddr)
			if q, qerr := quietCopy(ln.(syscall.Conn), name); qerr == nil {
				f.Close()
				f = q
			}
			ln.Close()
		}
		l.addr, l.file = "fd:"+name, f
		out = append(out, l)
	}
	return out
}

func (l *listener) close() {
	if l.udp != nil {
		l.udp.closeBase()
		l.udp = nil
	}
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
	if l.unixPath != "" {
		os.Remove(l.unixPath)
		l.unixPath = ""
	}
}

func (s *Supervisor) closeListeners() {
	for _, l := range s.listeners {
		l.close()
	}
}

func listenerNames(ls []*listener) string {
	var names []string
	for _, l := range ls {
		names = append(names, l.addr)
	}
	return strings.Join(names, ", ")
}

func (s *Supervisor) socketActivated() bool {
	for _, l := range s.listeners {
		if strings.HasPrefix(l.addr, "fd:") {
			return true
		}
	}
	return false
}

// reuseOrOpen returns listeners for addrs, keeping open sockets whose
// address is unchanged (their connections must not notice the reload).
func (s *Supervisor) reuseOrOpen(addrs []string) ([]*listener, error) {
	var out []*listener
	for _, a := range addrs {
		a = config.ListenAddress(a) // https:// is how the proxy speaks, not another socket
		var found *listener
		for _, l := range s.listeners {
			if l.configured == a {
				found = l
			}
		}
		if found == nil {
			l, err := openListener(a)
			if err != nil {
				s.closeUnused(out)
				return nil, err
			}
			found = l
		}
		out = append(out, found)
	}
	return out, nil
}

// closeUnused closes listeners of ls that are not in use.
func (s *Supervisor) closeUnused(ls []*listener) {
	for _, l := range ls {
		if !containsListener(s.listeners, l) {
			l.close()
		}
	}
}

func containsListener(ls []*listener, l *listener) bool {
	for _, x := range ls {
		if x == l {
			return true
		}
	}
	return false
}

// isDatagram says whether f is a UDP (datagram) socket.
func isDatagram(f *os.File) bool {
	raw, err := f.SyscallConn()
	if err != nil {
		return false
	}
	typ := 0
	raw.Control(func(fd uintptr) { typ, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE) })
	return typ == unix.SOCK_DGRAM
}
