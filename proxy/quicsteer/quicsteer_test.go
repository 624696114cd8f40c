package quicsteer

import (
	"testing"

	"golang.org/x/net/bpf"
)

// TestProgram runs the steering program in x/net's BPF interpreter on the
// packets it must tell apart.
func TestProgram(t *testing.T) {
	raw, err := Program([]Route{{Tag: 7, Index: 1}, {Tag: 8, Index: 2}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	var prog []bpf.Instruction
	for _, r := range raw {
		prog = append(prog, r.Disassemble())
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	id := func(tag byte) []byte { b, _ := Generator{Tag: tag}.GenerateConnectionID(); return b }
	short := func(cid []byte) []byte { return append(append([]byte{0x40}, cid...), make([]byte, 20)...) }
	long := func(cid []byte) []byte {
		p := []byte{0xc0, 0, 0, 0, 1, byte(len(cid))}
		return append(append(p, cid...), make([]byte, 20)...)
	}
	random := []byte{7, 1, 2, 3, 4, 5, 6, 7} // the tag, not its check
	for _, tc := range []struct {
		name string
		pkt  []byte
		want int
	}{
		{"short header of proxy 7", short(id(7)), 1},
		{"short header of proxy 8", short(id(8)), 2},
		{"long header of proxy 7 (a Handshake packet)", long(id(7)), 1},
		{"a client's first Initial, 8 random bytes", long(random), 2},
		{"a client's first Initial, 20 bytes", long(append(id(7), make([]byte, 12)...)), 2},
		{"short header of a proxy gone", short(id(9)), 2},
		{"a runt", []byte{0x40}, 0},
	} {
		got, err := vm.Run(tc.pkt)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: socket %d, want %d", tc.name, got, tc.want)
		}
	}
	if _, err := Program(make([]Route, 201), 0); err == nil {
		t.Error("201 routes were accepted")
	}
}
