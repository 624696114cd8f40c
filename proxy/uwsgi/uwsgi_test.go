package uwsgi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/proxy/cgi"
)

// FuzzUwsgiPacket checks the uwsgi request codec: AppendPacket (what the
// proxy sends a worker) and readUwsgi (the tests' decoder, the fake
// worker's). For any bytes:
//
//   - read as a stream of uwsgi packets, the decoder neither panics nor
//     allocates more than the sizes the packets declare and the bytes back
//     up (a CONTENT_LENGTH of 2^40 must not allocate 1 TB);
//   - read as an HTTP request (the way net/http hands it to the proxy, plus
//     an X-Pad header of a fuzzed length up to twice the protocol's limit),
//     AppendPacket either refuses it with ErrVarsTooLarge, exactly when the
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
		f.Add([]byte(s), uint32(MaxVars-600))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint32(MaxVars+1))
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
		pathInfo := r.URL.Path
		if strings.IndexByte(pathInfo, 0) >= 0 {
			return // the proxy answers 400 itself (%00 in the path)
		}
		if n := pad % (2*MaxVars + 100); n > 0 {
			r.Header.Set("X-Pad", strings.Repeat("p", int(n)))
		}
		in := &cgi.Vars{RemoteAddr: "192.0.2.1", RemotePort: "4711", Scheme: "http", PathInfo: pathInfo,
			ServerName: hostOnly(r.Host), ServerPort: "8080"}
		if len(body) > 0 || r.Header.Get("Content-Length") != "" {
			in.ContentLength = strconv.Itoa(len(body))
		}
		want := promisedVars(r, in)
		size := 0
		for k, v := range want {
			size += 2 + len(k) + 2 + len(v)
		}

		var pkt []byte
		allocated := allocatedBy(func() { pkt, err = AppendPacket(nil, r, in, false) })
		if limit := 3*uint64(len(pkt)) + 4096; allocated > limit {
			t.Errorf("AppendPacket allocated %d bytes for a %d-byte packet (limit %d)", allocated, len(pkt), limit)
		}
		if size > MaxVars {
			if !errors.Is(err, ErrVarsTooLarge) {
				t.Fatalf("vars of %d bytes: err = %v, want ErrVarsTooLarge", size, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("vars of %d bytes refused: %v", size, err)
		}
		if len(pkt) != 4+size || pkt[0] != 0 || pkt[3] != 0 || int(pkt[1])|int(pkt[2])<<8 != size {
			t.Fatalf("packet of %d bytes, header % x; want 4+%d bytes, header 00 %02x %02x 00", len(pkt), pkt[:min(4, len(pkt))], size, byte(size), byte(size>>8))
		}
		got, err := Read(bufio.NewReader(io.MultiReader(bytes.NewReader(pkt), bytes.NewReader(body))))
		if err != nil {
			t.Fatalf("the packet does not decode: %v\n%q", err, pkt)
		}
		if len(got.Keys) != len(got.Vars) {
			t.Errorf("a var is sent twice: %q", got.Keys)
		}
		for k, v := range want {
			if g, ok := got.Vars[k]; !ok || g != v {
				t.Errorf("%s = %q (sent: %v), want %q", k, g, ok, v)
			}
		}
		for k := range got.Vars {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected var %s = %q", k, got.Vars[k])
			}
		}
		if !bytes.Equal(got.Body, body) {
			t.Errorf("body %q, want %q", got.Body, body)
		}
		if err := workerRefuses(got.Vars); err != nil {
			t.Errorf("the worker would refuse this packet: %v", err)
		}

		// The compact encoding carries exactly the same vars.
		cpkt, err := AppendPacket(nil, r, in, true)
		if err != nil {
			t.Fatalf("compact: %v", err)
		}
		cvars, err := DecodeCompact(cpkt)
		if err != nil {
			t.Fatalf("compact packet %q: %v", cpkt, err)
		}
		if !maps.Equal(cvars, got.Vars) {
			t.Errorf("compact vars %q, plain vars %q", cvars, got.Vars)
		}
	})
}

// promisedVars restates, apart from AppendPacket, the vars docs/internals.md
// and nginx's uwsgi_params say a request becomes.
func promisedVars(r *http.Request, in *cgi.Vars) map[string]string {
	v := map[string]string{
		"QUERY_STRING": r.URL.RawQuery, "REQUEST_METHOD": r.Method, "CONTENT_TYPE": r.Header.Get("Content-Type"),
		"CONTENT_LENGTH": in.ContentLength, "REQUEST_URI": r.RequestURI, "PATH_INFO": in.PathInfo,
		"DOCUMENT_ROOT": "", "SERVER_PROTOCOL": r.Proto, "REQUEST_SCHEME": in.Scheme,
		"REMOTE_ADDR": in.RemoteAddr, "REMOTE_PORT": in.RemotePort, "SERVER_PORT": in.ServerPort,
		"SERVER_NAME": in.ServerName, "BERTH_KEEPALIVE": "1",
	}
	if in.Scheme == "https" {
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
			if _, err := Read(br); err != nil {
				return
			}
		}
	})
	// 4 KiB of bufio; per byte of input, at most one var (4 bytes: two
	// empty strings) and its map entry and keys slot, with growth.
	if limit := uint64(4096 + MaxVars + 64*len(raw) + 16<<10); allocated > limit {
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

// hostOnly is the host of a Host field, its port dropped.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

func TestAppendPacket(t *testing.T) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(
		"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\nUser-Agent: ua\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	in := &cgi.Vars{RemoteAddr: "1.2.3.4", RemotePort: "5", Scheme: "https", PathInfo: "/x", ServerName: "h", ServerPort: "443"}
	pkt, err := AppendPacket(nil, r, in, false)
	if err != nil {
		t.Fatal(err)
	}
	req, err := Read(bufio.NewReader(bytes.NewReader(pkt)))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"HTTP_X_A": "1, 2", "HTTP_COOKIE": "a=1; b=2", "HTTPS": "on", "REQUEST_SCHEME": "https",
		"HTTP_USER_AGENT": "ua", "QUERY_STRING": "q=1", "HTTP_HOST": "h", "SERVER_PORT": "443",
	} {
		if req.Vars[k] != want {
			t.Errorf("%s = %q, want %q", k, req.Vars[k], want)
		}
	}
	// Vars past 64 KiB are refused, not truncated into a corrupt packet.
	r.Header.Set("X-Huge", strings.Repeat("a", 40000))
	r.Header.Set("X-Huge2", strings.Repeat("b", 40000))
	if _, err := AppendPacket(nil, r, in, false); err != ErrVarsTooLarge {
		t.Errorf("oversized vars: %v", err)
	}
}
