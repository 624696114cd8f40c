package rawsock

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair is a connected unix socket pair: a Sock on one end, a net.Conn on
// the other.
func pair(t *testing.T) (*Sock, net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sock")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := conn(fds[0]), conn(fds[1])
	rc, err := a.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return New(rc), a, b
}

func TestReadWritePeek(t *testing.T) {
	s, a, b := pair(t)
	if s.Peek() {
		t.Fatal("Peek on a quiet socket says bytes wait")
	}
	if n, err := s.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 8)
	if n, err := io.ReadFull(b, buf[:4]); n != 4 || err != nil || string(buf[:4]) != "ping" {
		t.Fatalf("the peer read %q, %v", buf[:n], err)
	}
	b.Write([]byte("pong"))
	deadline := time.Now().Add(2 * time.Second)
	for !s.Peek() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !s.Peek() {
		t.Fatal("Peek does not see the peer's bytes")
	}
	if n, err := s.Read(buf); n != 4 || err != nil || string(buf[:4]) != "pong" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if n, err := s.Read(nil); n != 0 || err != nil {
		t.Fatalf("an empty Read = %d, %v", n, err)
	}
	// A read waits in the netpoller: the deadline set on the conn ends it.
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	a.SetReadDeadline(time.Time{})
	b.Close()
	if _, err := s.Read(buf); err != io.EOF {
		t.Fatalf("Read after the peer closed: %v, want io.EOF", err)
	}
}

// A write larger than the socket buffer goes out whole as the peer reads.
func TestLargeWrite(t *testing.T) {
	s, _, b := pair(t)
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i)
	}
	got := make(chan []byte)
	go func() {
		all, _ := io.ReadAll(io.LimitReader(b, int64(len(big))))
		got <- all
	}()
	if n, err := s.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if all := <-got; len(all) != len(big) || all[12345] != big[12345] {
		t.Fatalf("the peer got %d bytes", len(all))
	}
}

// A head written with WritevMore waits for the file sent after it, so the
// two share a segment (nginx's tcp_nopush), where Writev sends the head
// in a segment of its own. Counted with TCP_INFO on loopback.
func TestWritevMoreSharesASegmentWithTheFile(t *testing.T) {
	file := make([]byte, 20<<10) // with the head, well within loopback's 64 KiB MSS
	for i := range file {
		file[i] = byte(i)
	}
	path := t.TempDir() + "/f"
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	head := []byte("HTTP/1.1 200 OK\r\nContent-Length: 20480\r\n\r\n")
	for _, tc := range []struct {
		more bool
		segs uint32
	}{{true, 1}, {false, 2}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := server.(syscall.Conn).SyscallConn()
		s := New(rc)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var before, after uint32
		info := func() uint32 {
			var n uint32
			rc.Control(func(fd uintptr) {
				ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
				if err != nil {
					t.Fatal(err)
				}
				n = ti.Data_segs_out
			})
			return n
		}
		before = info()
		iov := [][]byte{head}
		if tc.more {
			_, err = s.WritevMore(iov)
		} else {
			_, err = s.Writev(iov)
		}
		if err != nil {
			t.Fatal(err)
		}
		var off int64
		if n, err := s.Sendfile(int(f.Fd()), &off, int64(len(file))); n != int64(len(file)) || err != nil {
			t.Fatalf("Sendfile = %d, %v", n, err)
		}
		got := make([]byte, len(head)+len(file))
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(client, got); err != nil {
			t.Fatalf("more=%v: the client read: %v", tc.more, err)
		}
		if string(got[:len(head)]) != string(head) || string(got[len(head):]) != string(file) {
			t.Fatalf("more=%v: the client got other bytes than the head and the file", tc.more)
		}
		after = info()
		if segs := after - before; segs != tc.segs {
			t.Errorf("more=%v: head and file went out in %d segments, want %d", tc.more, segs, tc.segs)
		}
		f.Close()
		client.Close()
		server.Close()
	}
}
