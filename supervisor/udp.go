package supervisor

// udp.go: the UDP sockets of HTTP/3 (tls.http3). Each https:// listener's
// port gets a reuseport group: a base socket the supervisor keeps (the port
// stays berth's while no proxy runs) and one socket per proxy process,
// each bound with SO_REUSEPORT. A BPF program on the group sends every
// datagram to the proxy whose connection it belongs to, and new
// connections to the newest proxy (proxy/quicsteer), so a reload hands
// HTTP/3 over as the kernel hands TCP over: the old proxy finishes its
// connections, the new one takes the new ones, no datagram goes astray.

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/berth-dev/berth/proxy/quicsteer"
	"golang.org/x/sys/unix"
)

// udpBuffer is the receive and send buffer asked for each proxy's socket:
// what quic-go wants for a fast connection (it warns below it). As root
// the supervisor may pass net.core.rmem_max (SO_RCVBUFFORCE); a proxy
// running as app.user could not.
const udpBuffer = 7 << 20

// udpGroup is one port's reuseport group, mirrored in the kernel's order.
type udpGroup struct {
	addr  string     // as bound: "[::]:8443", "127.0.0.1:8443"
	socks []*udpSock // the group's sockets in the kernel's order
}

// udpSock is one socket of a group: the base (proxy 0) or a proxy's.
type udpSock struct {
	g     *udpGroup
	proxy int
	file  *os.File
}

// openUDPGroup binds the base socket of addr's group: the UDP port of an
// https:// listener, the same number as its TCP port.
func openUDPGroup(addr string) (*udpGroup, error) {
	g := &udpGroup{addr: addr}
	if _, err := g.add(0); err != nil {
		return nil, err
	}
	return g, nil
}

// add binds one more socket into the group for proxy n (0: the base) and
// steers the group's datagrams again.
func (g *udpGroup) add(n int) (*udpSock, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			if serr == nil && n > 0 {
				// Best effort: quic-go asks for these itself and warns
				// when it gets less.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpBuffer)
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, udpBuffer)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp", g.addr)
	if err != nil {
		return nil, fmt.Errorf("http3: listen udp %s: %w; free the UDP port (HTTP/3 uses the https:// listener's port number over UDP) or set tls.http3: false", g.addr, err)
	}
	f, err := quietCopy(pc.(*net.UDPConn), g.addr)
	pc.Close() // f holds the socket
	if err != nil {
		return nil, fmt.Errorf("http3: udp %s: %w", g.addr, err)
	}
	u := &udpSock{g: g, proxy: n, file: f}
	g.socks = append(g.socks, u)
	if err := g.steer(); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

// close releases u's socket. The kernel fills the hole in the group with
// its last socket (reuseport_detach_sock), and so does the mirror; then
// the program is set for the new order. The proxy that read u has exited
// (its copy of the fd went with it), so this close is the socket's last.
func (u *udpSock) close() {
	if u.file == nil {
		return
	}
	u.file.Close()
	u.file = nil
	g := u.g
	for i, x := range g.socks {
		if x == u {
			last := len(g.socks) - 1
			g.socks[i] = g.socks[last]
			g.socks = g.socks[:last]
			break
		}
	}
	_ = g.steer() // an error here leaves the old program: the kernel's hash then picks
}

// closeBase gives the port up: its listener closed or tls.http3 went off.
// Proxies' sockets stay until their proxies exit.
func (g *udpGroup) closeBase() {
	for _, u := range g.socks {
		if u.proxy == 0 {
			u.close()
			return
		}
	}
}

// steer attaches the program for the group's present order: each proxy's
// connections to its socket, the rest to the newest proxy (to the base,
// which nobody reads, while there is none).
func (g *udpGroup) steer() error {
	if len(g.socks) == 0 {
		return nil
	}
	var routes []quicsteer.Route
	def, newest := 0, 0
	for i, u := range g.socks {
		if u.proxy == 0 {
			continue
		}
		routes = append(routes, quicsteer.Route{Tag: quicsteer.Tag(u.proxy), Index: i})
		if u.proxy > newest {
			def, newest = i, u.proxy
		}
	}
	prog, err := quicsteer.Program(routes, def)
	if err != nil {
		return err
	}
	raw, err := g.socks[0].file.SyscallConn()
	if err != nil {
		return fmt.Errorf("http3: udp %s: %w", g.addr, err)
	}
	var aerr error
	if err := raw.Control(func(fd uintptr) { aerr = quicsteer.Attach(int(fd), prog) }); err != nil {
		return fmt.Errorf("http3: udp %s: %w", g.addr, err)
	}
	if aerr != nil {
		return fmt.Errorf("http3: udp %s: %w", g.addr, aerr)
	}
	return nil
}

// udpAddrOf is the address a TLS listener's UDP group binds: its own, as
// bound (a :0 port is then the port the kernel chose).
func udpAddrOf(l *listener) string {
	if l.tcp != nil {
		return l.tcp.String()
	}
	return ""
}

// openUDP gives every TLS listener of ls without one its UDP group, when
// tls.http3 is on, and returns the groups it opened (for an abort).
func (s *Supervisor) openUDP(ls []*listener, listen []string) ([]*listener, error) {
	var opened []*listener
	for _, l := range ls {
		if l.udp != nil || !listenerTLS(listen, l.configured, l.addr) {
			continue
		}
		addr := udpAddrOf(l)
		if addr == "" {
			continue // not TCP
		}
		g, err := openUDPGroup(addr)
		if err != nil {
			closeUDP(opened)
			return nil, err
		}
		l.udp = g
		opened = append(opened, l)
	}
	return opened, nil
}

// closeUDP gives up the listeners' UDP ports (their bases).
func closeUDP(ls []*listener) {
	for _, l := range ls {
		if l.udp != nil {
			l.udp.closeBase()
			l.udp = nil
		}
	}
}
