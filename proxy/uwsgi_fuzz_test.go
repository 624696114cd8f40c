package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// FuzzUwsgiPacket checks the uwsgi request codec: appendPacket (what the
// proxy sends a worker) and readUwsgi (the tests' decoder, the fake
// worker's). For any bytes:
//
//   - read as a stream of uwsgi packets, the decoder neither panics nor
//     allocates more than the sizes the packets declare and the bytes back
//     up (a CONTENT_LENGTH of 2^40 must not allocate 1 TB);
//   - read as an HTTP request (the way net/http hands it to the proxy, plus
//     an X-Pad header of a fuzzed length up to twice the protocol's limit),
//     appendPacket either refuses it with errVarsTooLarge, exactly when the
//     vars exceed 64 KiB, or encodes vars that decode to exactly what
//     docs/internals.md promises (each var once, nothing more), which the
//     Python worker's rules accept, and allocates in proportion to them.
func FuzzUwsgiPacket(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nX-Custom: yes\r\nX_Under: no\r\nCookie: a=1\r\nCookie: b=2\r\nAccept: a\r\nAccept: b\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
		"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"PUT /a//b/./c/../d HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /caf%C3%A9/%0A?q=%00 HTTP/1.1\r\nHost: x\r\nX-A: \xff\t1\r\n\r\n",
	} {
		f.Add([]byte(s), uint32(0))
		f.Add([]byte(s), uint32(uwsgiMaxVars-600))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint32(uwsgiMaxVars+1))
	// Raw uwsgi packets, for the decoder.
	f.Add([]byte("\x00\x00\x00\x00"), uint32(0))
	f.Add([]byte("\x00\xff\xff\x00"), uint32(0))
	f.Add([]byte("\x00\x14\x00\x00\x0e\x00CONTENT_LENGTH\x02\x00-1"), uint32(0))
	f.Add([]byte("\x00\x1a\x00\x00\x0e\x00CONTENT_LENGTH\x08\x0099999999"), uint32(0))
	f.Add([]byte("\x00\x0b\x00\x00\x01\x00A\x01\x00B\x01\x00A\x00\x00\x00\x00\x00\x00"), uint32(0))

	f.Fuzz(func(t *testing.T, raw []byte, pad uint32) {
		checkDecoder(t, raw)
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || !serverAccepts(r) {
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		pathInfo, ok := normalizePath(r.URL.Path)
		if !ok {
			return // the proxy answers 400 itself
		}
		if n := pad % (2*uwsgiMaxVars + 100); n > 0 {
			r.Header.Set("X-Pad", strings.Repeat("p", int(n)))
		}
		in := &reqInfo{remoteAddr: "192.0.2.1", remotePort: "4711", scheme: "http", pathInfo: pathInfo,
			serverName: hostOnly(r.Host), serverPort: "8080"}
		if len(body) > 0 || r.Header.Get("Content-Length") != "" {
			in.contentLength = strconv.Itoa(len(body))
		}
		want := promisedVars(r, in)
		size := 0
		for k, v := range want {
			size += 2 + len(k) + 2 + len(v)
		}

		var pkt []byte
		allocated := allocatedBy(func() { pkt, err = appendPacket(nil, r, in, false) })
		if limit := 3*uint64(len(pkt)) + 4096; allocated > limit {
			t.Errorf("appendPacket allocated %d bytes for a %d-byte packet (limit %d)", allocated, len(pkt), limit)
		}
		if size > uwsgiMaxVars {
			if !errors.Is(err, errVarsTooLarge) {
				t.Fatalf("vars of %d bytes: err = %v, want errVarsTooLarge", size, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("vars of %d bytes refused: %v", size, err)
		}
		if len(pkt) != 4+size || pkt[0] != 0 || pkt[3] != 0 || int(pkt[1])|int(pkt[2])<<8 != size {
			t.Fatalf("packet of %d bytes, header % x; want 4+%d bytes, header 00 %02x %02x 00", len(pkt), pkt[:min(4, len(pkt))], size, byte(size), byte(size>>8))
		}
		got, err := readUwsgi(bufio.NewReader(io.MultiReader(bytes.NewReader(pkt), bytes.NewReader(body))))
		if err != nil {
			t.Fatalf("the packet does not decode: %v\n%q", err, pkt)
		}
		if len(got.keys) != len(got.vars) {
			t.Errorf("a var is sent twice: %q", got.keys)
		}
		for k, v := range want {
			if g, ok := got.vars[k]; !ok || g != v {
				t.Errorf("%s = %q (sent: %v), want %q", k, g, ok, v)
			}
		}
		for k := range got.vars {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected var %s = %q", k, got.vars[k])
			}
		}
		if !bytes.Equal(got.body, body) {
			t.Errorf("body %q, want %q", got.body, body)
		}
		if err := workerRefuses(got.vars); err != nil {
			t.Errorf("the worker would refuse this packet: %v", err)
		}

		// The compact encoding carries exactly the same vars.
		cpkt, err := appendPacket(nil, r, in, true)
		if err != nil {
			t.Fatalf("compact: %v", err)
		}
		cvars, err := decodeCompact(cpkt)
		if err != nil {
			t.Fatalf("compact packet %q: %v", cpkt, err)
		}
		if !maps.Equal(cvars, got.vars) {
			t.Errorf("compact vars %q, plain vars %q", cvars, got.vars)
		}
	})
}

// decodeCompact decodes a modCompact packet as berth_worker.py does: one
// split on NUL; every key and value is followed by a NUL.
func decodeCompact(pkt []byte) (map[string]string, error) {
	if len(pkt) < 4 || pkt[0] != modCompact || pkt[3] != 0 {
		return nil, fmt.Errorf("header % x", pkt[:min(4, len(pkt))])
	}
	n := int(pkt[1]) | int(pkt[2])<<8
	if len(pkt) < 4+n {
		return nil, fmt.Errorf("datasize %d, %d bytes", n, len(pkt)-4)
	}
	parts := strings.Split(string(pkt[4:4+n]), "\x00")
	if len(parts)%2 != 1 || parts[len(parts)-1] != "" {
		return nil, fmt.Errorf("%d strings: not key/value pairs ending in NUL", len(parts)-1)
	}
	vars := map[string]string{}
	for i := 0; i+1 < len(parts); i += 2 {
		if _, dup := vars[parts[i]]; dup {
			return nil, fmt.Errorf("%s twice", parts[i])
		}
		vars[parts[i]] = parts[i+1]
	}
	return vars, nil
}

// promisedVars restates, apart from appendPacket, the vars docs/internals.md
// and nginx's uwsgi_params say a request becomes.
func promisedVars(r *http.Request, in *reqInfo) map[string]string {
	v := map[string]string{
		"QUERY_STRING": r.URL.RawQuery, "REQUEST_METHOD": r.Method, "CONTENT_TYPE": r.Header.Get("Content-Type"),
		"CONTENT_LENGTH": in.contentLength, "REQUEST_URI": r.RequestURI, "PATH_INFO": in.pathInfo,
		"DOCUMENT_ROOT": "", "SERVER_PROTOCOL": r.Proto, "REQUEST_SCHEME": in.scheme,
		"REMOTE_ADDR": in.remoteAddr, "REMOTE_PORT": in.remotePort, "SERVER_PORT": in.serverPort,
		"SERVER_NAME": in.serverName, "BERTH_KEEPALIVE": "1",
	}
	if in.scheme == "https" {
		v["HTTPS"] = "on"
	}
	if r.Host != "" {
		v["HTTP_HOST"] = r.Host
	}
	for name, vals := range r.Header {
		switch {
		case name == "Content-Type" || name == "Content-Length" || name == "Transfer-Encoding" || name == "Host":
			continue // sent as CONTENT_* / HTTP_HOST, or framing the proxy removed
		case strings.Contains(name, "_"):
			continue // nginx's underscores_in_headers off: X_A must not pass for X-A
		}
		sep := ", "
		if name == "Cookie" {
			sep = "; "
		}
		v["HTTP_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))] = strings.Join(vals, sep)
	}
	return v
}

// workerRefuses applies the Python worker's rules for the vars it refuses
// (docs/internals.md, "Malformed packets") to vars the proxy sends, which
// must all pass but one: a NUL in PATH_INFO (from %00), which the worker
// answers 400 to, as nginx does.
func workerRefuses(vars map[string]string) error {
	for k, v := range vars {
		if k == "" || !isToken(k) || strings.HasPrefix(k, "wsgi.") {
			return errors.New("var name " + strconv.Quote(k))
		}
		if k == "PATH_INFO" || k == "SCRIPT_NAME" {
			continue
		}
		if strings.ContainsAny(v, "\x00\r\n") {
			return errors.New("NUL, CR or LF in " + k + " = " + strconv.Quote(v))
		}
	}
	if m := vars["REQUEST_METHOD"]; !isToken(m) {
		return errors.New("REQUEST_METHOD " + strconv.Quote(m))
	}
	if cl := vars["CONTENT_LENGTH"]; cl != "" {
		if _, err := strconv.ParseUint(cl, 10, 63); err != nil { // digits only, at most 2^63-1
			return errors.New("CONTENT_LENGTH " + strconv.Quote(cl))
		}
	}
	return nil
}

// serverAccepts applies the checks net/http's server adds to ReadRequest
// (server.go, readRequest) that matter to the vars: HTTP/1.x only, and
// header names and values as RFC 9110 allows them (ReadRequest alone takes
// "X-A : 1" as the name "X-A ", go.dev/issue/34540).
func serverAccepts(r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	for name, vals := range r.Header {
		if !isToken(name) {
			return false
		}
		for _, v := range vals {
			for i := 0; i < len(v); i++ {
				if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
					return false
				}
			}
		}
	}
	return true
}

// isToken reports whether s is an HTTP token (RFC 9110 5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// checkDecoder reads raw as a stream of uwsgi packets until the first
// error: no panic, and no allocation beyond what the packets declare and
// the bytes back up. A packet's vars block is allocated at its declared
// size (at most 64 KiB, a u16) before it arrives, so one such block may be
// unbacked; everything else (keys, values, body) must be bytes that came.
func checkDecoder(t *testing.T, raw []byte) {
	allocated := allocatedBy(func() {
		br := bufio.NewReader(bytes.NewReader(raw))
		for {
			if _, err := readUwsgi(br); err != nil {
				return
			}
		}
	})
	// 4 KiB of bufio; per byte of input, at most one var (4 bytes: two
	// empty strings) and its map entry and keys slot, with growth.
	if limit := uint64(4096 + uwsgiMaxVars + 64*len(raw) + 16<<10); allocated > limit {
		t.Fatalf("decoding %d bytes allocated %d bytes (limit %d)", len(raw), allocated, limit)
	}
}

// allocatedBy returns the bytes fn allocated on the heap.
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
