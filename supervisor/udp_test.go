package supervisor

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy/quicsteer"
	"golang.org/x/sys/unix"
)

// TestUDPGroupSteering binds a real reuseport group and sends it QUIC-like
// datagrams: each reaches the socket of the proxy whose tag its connection
// ID carries, a client's first Initial the newest proxy's, and that stays
// true after a socket leaves (the kernel moves the last one into its slot,
// and the mirror must agree) and another joins.
func TestUDPGroupSteering(t *testing.T) {
	port := freeUDPPort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	g, err := openUDPGroup(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer g.closeBase()
	socks := map[int]*udpSock{}
	conns := map[int]net.PacketConn{}
	join := func(n int) {
		u, err := g.add(n)
		if err != nil {
			t.Fatal(err)
		}
		// What the proxy does with the fd it inherits.
		dup, err := dupFile(u.file)
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.FilePacketConn(dup)
		dup.Close()
		if err != nil {
			t.Fatal(err)
		}
		socks[n], conns[n] = u, pc
	}
	leave := func(n int) {
		conns[n].Close()
		socks[n].close()
		delete(conns, n)
		delete(socks, n)
	}
	defer func() {
		for n := range socks {
			leave(n)
		}
	}()
	client, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	short := func(tag byte) []byte {
		id, _ := quicsteer.Generator{Tag: tag}.GenerateConnectionID()
		return append(append([]byte{0x40}, id...), make([]byte, 30)...)
	}
	initial := append([]byte{0xc0, 0, 0, 0, 1, 8, 0x11, 0x22, 3, 4, 5, 6, 7, 8}, make([]byte, 30)...)
	expect := func(what string, pkt []byte, want int) {
		t.Helper()
		if _, err := client.Write(pkt); err != nil {
			t.Fatal(err)
		}
		got := make(chan int, len(conns))
		for n, pc := range conns {
			go func() {
				buf := make([]byte, 2048)
				pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if _, _, err := pc.ReadFrom(buf); err == nil {
					got <- n
				} else {
					got <- 0
				}
			}()
		}
		var at []int
		for range conns {
			if n := <-got; n != 0 {
				at = append(at, n)
			}
		}
		if len(at) != 1 || at[0] != want {
			t.Errorf("%s: read by proxies %v, want %d", what, at, want)
		}
	}
	join(1)
	join(2)
	expect("proxy 1's connection", short(quicsteer.Tag(1)), 1)
	expect("proxy 2's connection", short(quicsteer.Tag(2)), 2)
	expect("a new connection", initial, 2)
	leave(1)
	join(3)
	expect("proxy 2's connection after proxy 1 left", short(quicsteer.Tag(2)), 2)
	expect("proxy 3's connection", short(quicsteer.Tag(3)), 3)
	expect("a new connection after proxy 3 came", initial, 3)
	leave(3)
	expect("a new connection after proxy 3 left", initial, 2)
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// dupFile is a second descriptor of f's socket, as a child inherits it.
func dupFile(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	raw.Control(func(p uintptr) { fd, derr = dupCloexec(int(p)) })
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func dupCloexec(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }
