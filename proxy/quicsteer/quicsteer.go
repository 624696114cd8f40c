// Package quicsteer keeps each HTTP/3 connection on the proxy process that
// owns it while two proxies share a UDP port (a reload, a listen change).
//
// A TCP connection belongs to the process that accepted it: the kernel
// hands it over once. QUIC has no such thing; every datagram of every
// connection arrives on the UDP port, and a proxy that reads a datagram of
// a connection it does not know can only drop it. Two proxies reading one
// socket would each lose half of the other's packets during a reload.
//
// So each proxy gets a UDP socket of its own, bound to the same port with
// SO_REUSEPORT (the supervisor opens them all, as it opens every
// listener), and a classic BPF program on the reuseport group picks the
// socket for each datagram by its destination connection ID: every
// connection ID a proxy issues starts with that proxy's tag (Tag) and its
// complement, and datagrams whose ID carries a live proxy's tag go to its
// socket; everything else (a client's first Initial, whose ID the client
// chose) goes to the newest proxy. This is how QUIC load balancers route
// (draft-ietf-quic-load-balancers), inside one host.
//
// A client's random first connection ID carries a draining proxy's tag
// and complement by chance once in 65536 new connections, and only while
// that proxy drains: that handshake then waits for the client's retry with
// a new ID (quic-go's and browsers' clients pick a fresh one per attempt).
package quicsteer

import (
	"crypto/rand"
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// CIDLen is the length of the connection IDs proxies issue: the tag, its
// complement and six random bytes.
const CIDLen = 8

// Tag is the connection ID tag of proxy number n (the supervisor's
// generation counter). Two proxies 256 generations apart never overlap:
// one drains for graceful_timeout at most.
func Tag(n int) byte { return byte(n) }

// check is what the second byte of a tagged ID is: the tag's complement, so
// a client's random ID matches a tag only once in 65536.
func check(tag byte) byte { return ^tag }

// Generator issues a proxy's connection IDs (quic.ConnectionIDGenerator).
type Generator struct{ Tag byte }

// GenerateConnectionID returns tag, ^tag and six random bytes.
func (g Generator) GenerateConnectionID() ([]byte, error) {
	b := make([]byte, CIDLen)
	if _, err := rand.Read(b[2:]); err != nil {
		return nil, fmt.Errorf("quicsteer: connection id: %w", err)
	}
	b[0], b[1] = g.Tag, check(g.Tag)
	return b, nil
}

// ConnectionIDLen is CIDLen.
func (g Generator) ConnectionIDLen() int { return CIDLen }

// Route is one proxy's socket in the reuseport group: datagrams whose
// connection ID carries Tag go to the socket at Index.
type Route struct {
	Tag   byte
	Index int
}

// Program is the group's BPF program: datagrams to each route's socket by
// tag, everything else to the socket at def. The kernel runs it on the
// UDP payload: a QUIC short header has the destination ID at byte 1, a
// long header its length at byte 5 and the ID at byte 6. A datagram too
// short to hold an ID ends the program with 0 (classic BPF's rule for a
// load out of bounds): the socket at 0, which the supervisor keeps unread.
func Program(routes []Route, def int) ([]bpf.RawInstruction, error) {
	if len(routes) > 200 {
		return nil, fmt.Errorf("quicsteer: %d routes: at most 200 fit the program's jumps", len(routes))
	}
	n := uint8(len(routes))
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x80, SkipTrue: 2}, // long header
		bpf.LoadAbsolute{Off: 1, Size: 2},                         // short: tag and check
		bpf.Jump{Skip: 3},
		bpf.LoadAbsolute{Off: 5, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: CIDLen, SkipFalse: n + 1}, // another length: not ours
		bpf.LoadAbsolute{Off: 6, Size: 2},
	}
	for _, r := range routes {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(r.Tag)<<8 | uint32(check(r.Tag)), SkipTrue: n})
	}
	prog = append(prog, bpf.RetConstant{Val: uint32(def)})
	for _, r := range routes {
		prog = append(prog, bpf.RetConstant{Val: uint32(r.Index)})
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("quicsteer: assembling the steering program: %w", err)
	}
	return raw, nil
}

// Attach sets prog as the reuseport group's program through fd, one of
// its sockets; it replaces the program attached before.
func Attach(fd int, prog []bpf.RawInstruction) error {
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
		return fmt.Errorf("quicsteer: attaching the steering program (SO_ATTACH_REUSEPORT_CBPF): %w", err)
	}
	return nil
}
