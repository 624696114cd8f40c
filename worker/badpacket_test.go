package worker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What the worker does with one uwsgi packet (docs/internals.md, "Malformed packets").
type packetOutcome int

const (
	served   packetOutcome = iota // the app is called and answers
	rejected                      // 400 Bad Request, then the worker closes; the app is never called
	dropped                       // the worker closes without a byte; the app is never called
)

func (o packetOutcome) String() string {
	return [...]string{"served", "rejected with 400", "closed without an answer"}[o]
}

type kv = [2]string

// goodVars are what nginx's uwsgi_params send for GET /rec?a=1, in nginx's order.
func goodVars() []kv {
	return []kv{
		{"QUERY_STRING", "a=1"}, {"REQUEST_METHOD", "GET"}, {"CONTENT_TYPE", ""}, {"CONTENT_LENGTH", ""},
		{"REQUEST_URI", "/rec?a=1"}, {"PATH_INFO", "/rec"}, {"DOCUMENT_ROOT", "/nonexistent"},
		{"SERVER_PROTOCOL", "HTTP/1.1"}, {"REQUEST_SCHEME", "http"}, {"REMOTE_ADDR", "127.0.0.1"},
		{"REMOTE_PORT", "40000"}, {"SERVER_PORT", "80"}, {"SERVER_NAME", "test.local"}, {"HTTP_HOST", "test.local"},
	}
}

// varEdit changes goodVars for one case.
type varEdit func([]kv) []kv

// set replaces the value of k (or appends k when absent).
func set(k, v string) varEdit {
	return func(vs []kv) []kv {
		for i := range vs {
			if vs[i][0] == k {
				vs[i][1] = v
				return vs
			}
		}
		return append(vs, kv{k, v})
	}
}

// add appends k even when it is already there (a repeated var).
func add(k, v string) varEdit { return func(vs []kv) []kv { return append(vs, kv{k, v}) } }

// del removes k.
func del(k string) varEdit {
	return func(vs []kv) []kv {
		out := vs[:0]
		for _, x := range vs {
			if x[0] != k {
				out = append(out, x)
			}
		}
		return out
	}
}

// varsBlock encodes vars as u16 keylen, key, u16 vallen, val each, with no header.
func varsBlock(vs []kv) []byte {
	var b []byte
	for _, x := range vs {
		for _, s := range x {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// header is a uwsgi packet header with any modifiers and datasize.
func header(mod1 byte, size int, mod2 byte) []byte {
	return []byte{mod1, byte(size), byte(size >> 8), mod2}
}

// packet is goodVars changed by edits, as a whole packet with a correct header.
func packet(edits ...varEdit) []byte {
	vs := goodVars()
	for _, e := range edits {
		vs = e(vs)
	}
	b := varsBlock(vs)
	return append(header(0, len(b), 0), b...)
}

// compactPacket is vs in berth's compact encoding (modifier1 0xBE), with
// extra strings appended (to break the pairing).
func compactPacket(vs []kv, extra ...string) []byte {
	var b []byte
	for _, p := range vs {
		b = append(append(append(append(b, p[0]...), 0), p[1]...), 0)
	}
	for _, e := range extra {
		b = append(append(b, e...), 0)
	}
	return append(header(0xBE, len(b), 0), b...)
}

// withHeader is packet with the header replaced (modifiers, datasize).
func withHeader(mod1 byte, sizeDelta int, mod2 byte, edits ...varEdit) []byte {
	p := packet(edits...)
	return append(header(mod1, len(p)-4+sizeDelta, mod2), p[4:]...)
}

// cat joins byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// recordingWorker starts testapp:recording, which appends one line to the returned file per
// request that reaches the app.
func recordingWorker(t *testing.T) (*testWorker, string) {
	t.Helper()
	calls := filepath.Join(t.TempDir(), "calls")
	if err := os.WriteFile(calls, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return startReady(t, workerOpts{app: "testapp:recording", env: []string{"BERTH_TEST_CALLS=" + calls}}), calls
}

// appCalls returns the environ (str values) of every request that reached the app so far.
func appCalls(t *testing.T, calls string) []map[string]string {
	t.Helper()
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var m map[string]string
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("calls file line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// readToEOF reads what the worker sends until it closes; an error other than EOF fails the
// test (a reset would mean the worker closed with our bytes unread, and could eat its 400).
func readToEOF(t *testing.T, c *uwsgiConn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil {
		t.Fatalf("reading until the worker closes: got %q, then %v", b, err)
	}
	return b
}

// TestMalformedPackets sends raw uwsgi packets to a real worker and checks, for each, the
// answer and that a packet the worker refuses never reaches the app. Each row says what
// the rules in docs/internals.md ("Malformed packets") want.
func TestMalformedPackets(t *testing.T) {
	w, calls := recordingWorker(t)
	ctl := func(name, value string) varEdit { return set(name, value) }

	tests := []struct {
		name      string
		raw       []byte
		body      string // sent after raw
		halfClose bool   // shut our write side after sending: the worker sees EOF
		want      packetOutcome
		check     func(t *testing.T, env map[string]string) // for served cases
	}{
		// The baseline: if this is not served, every "rejected" below proves nothing.
		{name: "valid", raw: packet(), want: served},

		// Framing of the packet itself.
		{name: "empty connection", raw: nil, halfClose: true, want: dropped},
		{name: "truncated header", raw: []byte{0, 0x10}, halfClose: true, want: dropped},
		{name: "truncated vars", raw: packet()[:30], halfClose: true, want: dropped},
		{name: "datasize beyond the vars", raw: cat(withHeader(0, 1, 0), []byte{0}), want: rejected},
		{name: "datasize beyond the vars by a key length", raw: cat(withHeader(0, 2, 0), []byte{0, 0}), want: rejected},
		{name: "datasize short of the vars", raw: withHeader(0, -1, 0), want: rejected},
		{name: "last value runs past the end", raw: cat(header(0, 2+4+2+1, 0), []byte("\x04\x00ABCD\x09\x00x")), want: rejected},
		{name: "key runs past the end", raw: cat(header(0, 2+3, 0), []byte("\x09\x00ABC")), want: rejected},
		{name: "zero datasize", raw: header(0, 0, 0), want: rejected},
		{name: "modifier1 1", raw: withHeader(1, 0, 0), want: rejected},
		{name: "modifier1 5 (PSGI)", raw: withHeader(5, 0, 0), want: rejected},
		{name: "plain HTTP on the uwsgi socket", raw: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: rejected},
		{name: "modifier1 30 (nginx's SCRIPT_NAME strip)", raw: withHeader(30, 0, 0), want: served},
		{name: "modifier2 is ignored", raw: withHeader(0, 0, 7), want: served},

		// berth's compact vars (modifier1 0xBE): every key and value followed by a NUL.
		{name: "compact", raw: compactPacket(goodVars()), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["PATH_INFO"] != "/rec" || env["QUERY_STRING"] != "a=1" || env["HTTP_HOST"] != "test.local" {
					t.Errorf("compact vars decoded to %v", env)
				}
			}},
		{name: "compact without the last NUL", raw: func() []byte {
			p := compactPacket(goodVars())
			return append(header(0xBE, len(p)-5, 0), p[4:len(p)-1]...)
		}(), want: rejected},
		{name: "compact with a key and no value", raw: compactPacket(append(goodVars(), kv{"HTTP_X", ""}), "HTTP_Y"), want: rejected},
		{name: "compact with a key twice", raw: compactPacket(append(goodVars(), kv{"HTTP_X", "1"}, kv{"HTTP_X", "2"})), want: rejected},
		{name: "compact with CR in a value", raw: compactPacket(append(goodVars(), kv{"HTTP_X", "a\rb"})), want: rejected},

		// Var names.
		{name: "empty key", raw: packet(add("", "x")), want: rejected},
		{name: "key with a space", raw: packet(add("HTTP_X Y", "1")), want: rejected},
		{name: "key with a colon", raw: packet(add("HTTP_X:Y", "1")), want: rejected},
		{name: "key with NUL", raw: packet(add("HTTP_X\x00", "1")), want: rejected},
		{name: "key with LF", raw: packet(add("HTTP_X\nY", "1")), want: rejected},
		{name: "key not ASCII", raw: packet(add("HTTP_CAF\xc9", "1")), want: rejected},
		{name: "key in the server's wsgi. namespace", raw: packet(add("wsgi.url_scheme", "https")), want: rejected},
		{name: "key with token punctuation (nginx, ignore_invalid_headers off)", raw: packet(add("HTTP_X.Y~Z", "1")), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["HTTP_X.Y~Z"] != "1" {
					t.Errorf("HTTP_X.Y~Z = %q", env["HTTP_X.Y~Z"])
				}
			}},

		// Repeated vars.
		{name: "repeated header var is joined", raw: packet(add("HTTP_X_A", "1"), add("HTTP_X_A", "2"), add("HTTP_COOKIE", "a=1"), add("HTTP_COOKIE", "b=2")),
			want: served, check: func(t *testing.T, env map[string]string) {
				if env["HTTP_X_A"] != "1, 2" || env["HTTP_COOKIE"] != "a=1; b=2" {
					t.Errorf("HTTP_X_A = %q, HTTP_COOKIE = %q", env["HTTP_X_A"], env["HTTP_COOKIE"])
				}
			}},
		{name: "repeated CGI var: the last wins (an nginx uwsgi_param overriding uwsgi_params)", raw: packet(add("PATH_INFO", "/other")),
			want: served, check: func(t *testing.T, env map[string]string) {
				if env["PATH_INFO"] != "/other" {
					t.Errorf("PATH_INFO = %q", env["PATH_INFO"])
				}
			}},
		{name: "CONTENT_LENGTH twice, same value", raw: packet(set("CONTENT_LENGTH", "5"), add("CONTENT_LENGTH", "5")), body: "hello",
			want: served, check: func(t *testing.T, env map[string]string) {
				if env["body"] != "hello" {
					t.Errorf("body %q", env["body"])
				}
			}},
		{name: "CONTENT_LENGTH twice, different values", raw: packet(set("CONTENT_LENGTH", "5"), add("CONTENT_LENGTH", "0")), body: "hello", want: rejected},

		// CONTENT_LENGTH is 1*DIGIT (RFC 9110 8.6), at most 2^63-1.
		{name: "CONTENT_LENGTH negative", raw: packet(set("CONTENT_LENGTH", "-1")), want: rejected},
		{name: "CONTENT_LENGTH with a plus", raw: packet(set("CONTENT_LENGTH", "+5")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH with a leading space", raw: packet(set("CONTENT_LENGTH", " 5")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH with a trailing space", raw: packet(set("CONTENT_LENGTH", "5 ")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH hex", raw: packet(set("CONTENT_LENGTH", "0x5")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH with an underscore (Python's int accepts it)", raw: packet(set("CONTENT_LENGTH", "0_5")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH decimal point", raw: packet(set("CONTENT_LENGTH", "5.0")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH exponent", raw: packet(set("CONTENT_LENGTH", "5e0")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH superscript digit", raw: packet(set("CONTENT_LENGTH", "\xb2")), body: "he", want: rejected},
		{name: "CONTENT_LENGTH 2^63", raw: packet(set("CONTENT_LENGTH", "9223372036854775808")), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH far past int64", raw: packet(set("CONTENT_LENGTH", strings.Repeat("9", 5000))), body: "hello", want: rejected},
		{name: "CONTENT_LENGTH with leading zeros", raw: packet(set("CONTENT_LENGTH", "005")), body: "hello", want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["body"] != "hello" {
					t.Errorf("body %q", env["body"])
				}
			}},
		{name: "CONTENT_LENGTH empty: no body", raw: packet(set("CONTENT_LENGTH", "")), want: served},

		// The request line.
		{name: "no REQUEST_METHOD", raw: packet(del("REQUEST_METHOD")), want: rejected},
		{name: "empty REQUEST_METHOD", raw: packet(set("REQUEST_METHOD", "")), want: rejected},
		{name: "REQUEST_METHOD with a space", raw: packet(set("REQUEST_METHOD", "GET /x")), want: rejected},
		{name: "no PATH_INFO nor REQUEST_URI", raw: packet(del("PATH_INFO"), del("REQUEST_URI")), want: rejected},
		{name: "no PATH_INFO: taken from REQUEST_URI", raw: packet(del("PATH_INFO")), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["PATH_INFO"] != "/rec" {
					t.Errorf("PATH_INFO = %q", env["PATH_INFO"])
				}
			}},
		{name: "no PATH_INFO: REQUEST_URI decodes to NUL", raw: packet(del("PATH_INFO"), set("REQUEST_URI", "/a%00b")), want: rejected},

		// NUL, CR and LF (RFC 9110 5.5: a recipient MUST reject or replace them).
		{name: "REQUEST_METHOD with CR LF", raw: packet(ctl("REQUEST_METHOD", "GET\r\n")), want: rejected},
		{name: "REQUEST_URI with LF", raw: packet(ctl("REQUEST_URI", "/rec\nX: y")), want: rejected},
		{name: "REQUEST_URI with NUL", raw: packet(ctl("REQUEST_URI", "/rec\x00")), want: rejected},
		{name: "QUERY_STRING with CR", raw: packet(ctl("QUERY_STRING", "a=1\r")), want: rejected},
		{name: "QUERY_STRING with NUL", raw: packet(ctl("QUERY_STRING", "a=\x00")), want: rejected},
		{name: "header value with CR LF", raw: packet(add("HTTP_X_A", "1\r\nX-Injected: 1")), want: rejected},
		{name: "header value with NUL", raw: packet(add("HTTP_X_A", "a\x00b")), want: rejected},
		{name: "CONTENT_TYPE with LF", raw: packet(ctl("CONTENT_TYPE", "text/plain\n")), want: rejected},
		{name: "SERVER_NAME with NUL", raw: packet(ctl("SERVER_NAME", "a\x00b")), want: rejected},
		{name: "PATH_INFO with NUL (nginx answers 400 to %00)", raw: packet(ctl("PATH_INFO", "/rec\x00")), want: rejected},
		{name: "SCRIPT_NAME with NUL", raw: packet(add("SCRIPT_NAME", "/a\x00")), want: rejected},
		// nginx decodes %0A and %0D into PATH_INFO: they were escaped on the wire.
		{name: "PATH_INFO with LF and CR (nginx, from %0A%0D)", raw: packet(ctl("PATH_INFO", "/a\n\rb"), ctl("REQUEST_URI", "/a%0A%0Db")), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["PATH_INFO"] != "/a\n\rb" {
					t.Errorf("PATH_INFO = %q", env["PATH_INFO"])
				}
			}},
		// RFC 9110 5.5 lets a recipient keep other control characters; nginx passes them.
		{name: "header value with other controls", raw: packet(add("HTTP_X_A", "a\x01b\x7fc\td")), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["HTTP_X_A"] != "a\x01b\x7fc\td" {
					t.Errorf("HTTP_X_A = %q", env["HTTP_X_A"])
				}
			}},
		{name: "values with bytes above 0x7f (latin-1 in the environ)", raw: packet(ctl("PATH_INFO", "/caf\xc3\xa9"), add("HTTP_X_A", "\xff")), want: served,
			check: func(t *testing.T, env map[string]string) {
				if env["PATH_INFO"] != "/caf\u00c3\u00a9" || env["HTTP_X_A"] != "\u00ff" {
					t.Errorf("PATH_INFO = %q, HTTP_X_A = %q", env["PATH_INFO"], env["HTTP_X_A"])
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(appCalls(t, calls))
			c := dialUwsgi(t, w.sock)
			if _, err := c.Write(append(tc.raw, tc.body...)); err != nil {
				t.Fatal(err)
			}
			if tc.halfClose {
				if err := c.Conn.(*net.UnixConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			got := readToEOF(t, c)
			// A one-thread worker serves one connection at a time: after its close the app
			// has done all it will do for this packet.
			after := appCalls(t, calls)
			switch tc.want {
			case served:
				resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("want served (200), got %.120q (%v)", got, err)
				}
				if len(after) != before+1 {
					t.Fatalf("the app was called %d times, want once", len(after)-before)
				}
				if tc.check != nil {
					tc.check(t, after[len(after)-1])
				}
			case rejected, dropped:
				want := ""
				if tc.want == rejected {
					// Connection: close, so that a proxy never pools the connection.
					want = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 12\r\n\r\nBad Request\n"
				}
				if string(got) != want {
					t.Errorf("want %s: got %.120q", tc.want, got)
				}
				if len(after) != before {
					t.Errorf("the app was called (%d times)", len(after)-before)
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	// The worker logs why it refused a packet.
	for _, want := range []string{"bad request: ", "CONTENT_LENGTH", "REQUEST_METHOD", "modifier1 5"} {
		if !strings.Contains(w.stderrText(), want) {
			t.Errorf("worker stderr lacks %q:\n%s", want, w.stderrText())
		}
	}
}

// TestMalformedPacketAfterKeptAlive: a bad packet on a kept-alive connection after a good
// request is refused like the first one on a connection, and ends the connection.
func TestMalformedPacketAfterKeptAlive(t *testing.T) {
	w, calls := recordingWorker(t)
	c := dialUwsgi(t, w.sock)
	if _, err := c.Write(packet(set("BERTH_KEEPALIVE", "1"))); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	if _, err := c.Write(packet(set("BERTH_KEEPALIVE", "1"), set("CONTENT_LENGTH", "-5"))); err != nil {
		t.Fatal(err)
	}
	got := readToEOF(t, c)
	if !strings.HasPrefix(string(got), "HTTP/1.1 400 Bad Request\r\n") {
		t.Fatalf("second (malformed) request: %q", got)
	}
	if n := len(appCalls(t, calls)); n != 1 {
		t.Fatalf("the app was called %d times, want once", n)
	}
}

// TestShortBody: the peer closes before sending CONTENT_LENGTH bytes. The body is streamed
// (the app runs once the vars are in, as with uWSGI and Gunicorn), so the app is called;
// its wsgi.input.read() raises, and the worker closes without an answer.
func TestShortBody(t *testing.T) {
	w, calls := recordingWorker(t)
	c := dialUwsgi(t, w.sock)
	if _, err := c.Write(cat(packet(set("REQUEST_METHOD", "POST"), set("CONTENT_LENGTH", "10")), []byte("abc"))); err != nil {
		t.Fatal(err)
	}
	if err := c.Conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readToEOF(t, c); len(got) != 0 {
		t.Fatalf("want no answer, got %q", got)
	}
	got := appCalls(t, calls)
	if len(got) != 1 || got[0]["read_error"] != "ClientGone" || got[0]["body"] != "" {
		t.Fatalf("app calls %v: want one, whose read raised ClientGone", got)
	}
}

// TestCompactSameNames: compact packets whose var names, in order, are those of a request
// already served take the worker's shortcut (that request's environ, values replaced; see
// _read_request). Each must still get exactly its own values, and every rule above must still
// hold for them.
func TestCompactSameNames(t *testing.T) {
	w, calls := recordingWorker(t)
	send := func(t *testing.T, vs []kv, body string) (bool, map[string]string) {
		t.Helper()
		before := len(appCalls(t, calls))
		c := dialUwsgi(t, w.sock)
		// A worker that refused a packet lingers until we close: the next packet must not wait.
		defer c.Close()
		if _, err := c.Write(append(compactPacket(vs), body...)); err != nil {
			t.Fatal(err)
		}
		got := readToEOF(t, c)
		after := appCalls(t, calls)
		if strings.HasPrefix(string(got), "HTTP/1.1 400 Bad Request\r\n") {
			if len(after) != before {
				t.Fatalf("rejected, yet the app was called")
			}
			return false, nil
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
		if err != nil || resp.StatusCode != 200 || len(after) != before+1 {
			t.Fatalf("want served (200) or rejected, got %.120q (%v), %d app calls", got, err, len(after)-before)
		}
		return true, after[len(after)-1]
	}
	edit := func(edits ...varEdit) []kv {
		vs := goodVars()
		for _, e := range edits {
			vs = e(vs)
		}
		return vs
	}
	// rename keeps the count and the place of a var, under another name.
	rename := func(from, to string) varEdit {
		return func(vs []kv) []kv {
			for i := range vs {
				if vs[i][0] == from {
					vs[i][0] = to
				}
			}
			return vs
		}
	}
	served, first := send(t, goodVars(), "")
	if !served {
		t.Fatal("the baseline was rejected")
	}
	if _, again := send(t, goodVars(), ""); !maps.Equal(again, first) {
		t.Fatalf("the same request twice: environs differ:\n%v\n%v", first, again)
	}
	_, other := send(t, edit(set("QUERY_STRING", "b=2"), set("REQUEST_URI", "/rec?b=2"), set("HTTP_HOST", "other.local"),
		set("REMOTE_PORT", "1"), set("CONTENT_TYPE", "text/plain")), "")
	for k, v := range map[string]string{"QUERY_STRING": "b=2", "REQUEST_URI": "/rec?b=2", "HTTP_HOST": "other.local",
		"REMOTE_PORT": "1", "CONTENT_TYPE": "text/plain", "PATH_INFO": "/rec", "SERVER_NAME": "test.local"} {
		if other[k] != v {
			t.Errorf("%s = %q, want %q", k, other[k], v)
		}
	}
	if _, posted := send(t, edit(set("REQUEST_METHOD", "POST"), set("CONTENT_LENGTH", "5")), "hello"); posted["body"] != "hello" ||
		posted["REQUEST_METHOD"] != "POST" {
		t.Errorf("POST with a body: %v", posted)
	}
	// Two header sets of the same size, alternating: each keeps its own values.
	for i := 0; i < 4; i++ {
		vs, name := edit(set("HTTP_A", strconv.Itoa(i))), "HTTP_A"
		if i%2 == 1 {
			vs, name = edit(set("HTTP_B", strconv.Itoa(i))), "HTTP_B"
		}
		if _, env := send(t, vs, ""); env[name] != strconv.Itoa(i) || env["HTTP_A"] != "" && name == "HTTP_B" {
			t.Errorf("request %d: %s = %q in %v", i, name, env[name], env)
		}
	}
	// Names that make the worker adjust the environ: the adjustment must hold on the shortcut too.
	for _, tc := range []struct {
		name string
		vs   []kv
		want map[string]string
	}{
		{"HTTPS", edit(set("HTTPS", "on")), map[string]string{"wsgi.url_scheme": "https"}},
		{"UWSGI_SCHEME", edit(set("UWSGI_SCHEME", "https")), map[string]string{"wsgi.url_scheme": "https"}},
		{"no PATH_INFO", edit(del("PATH_INFO")), map[string]string{"PATH_INFO": "/rec"}},
		{"SCRIPT_NAME", edit(set("SCRIPT_NAME", "/app/"), set("PATH_INFO", "/app/rec")), map[string]string{"SCRIPT_NAME": "/app", "PATH_INFO": "/rec"}},
		{"HTTP_CONTENT_TYPE", edit(set("HTTP_CONTENT_TYPE", "text/plain")), map[string]string{"HTTP_CONTENT_TYPE": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 2; i++ {
				served, env := send(t, tc.vs, "")
				if !served {
					t.Fatalf("rejected (try %d)", i+1)
				}
				for k, v := range tc.want {
					if env[k] != v {
						t.Errorf("try %d: %s = %q, want %q", i+1, k, env[k], v)
					}
				}
			}
		})
	}
	for _, tc := range []struct {
		name string
		vs   []kv
		body string
	}{
		{"CR in a value", edit(set("HTTP_HOST", "a\rb")), ""},
		{"LF in a value", edit(set("QUERY_STRING", "a=1\nX: y")), ""},
		{"REQUEST_METHOD with a space", edit(set("REQUEST_METHOD", "GET /x")), ""},
		{"empty REQUEST_METHOD", edit(set("REQUEST_METHOD", "")), ""},
		{"CONTENT_LENGTH with a plus", edit(set("CONTENT_LENGTH", "+5")), "hello"},
		{"a wsgi. name in place of another", edit(rename("HTTP_HOST", "wsgi.url_scheme")), ""},
		{"a key twice, in place of another", edit(rename("HTTP_HOST", "REQUEST_METHOD")), ""},
		{"a name that is no token, in place of another", edit(rename("HTTP_HOST", "HTTP_A B")), ""},
		{"neither PATH_INFO nor REQUEST_URI", edit(rename("PATH_INFO", "HTTP_A"), rename("REQUEST_URI", "HTTP_B")), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 2; i++ { // the second time, the names are no longer new
				if served, env := send(t, tc.vs, tc.body); served {
					t.Fatalf("served (try %d): %v", i+1, env)
				}
			}
		})
	}
	if _, last := send(t, goodVars(), ""); !maps.Equal(last, first) {
		t.Fatalf("the baseline after the rejected ones: environs differ:\n%v\n%v", first, last)
	}
}
