package proxy

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzFront sends a fuzzed byte stream to the proxy on one connection and
// checks the invariant that makes smuggling impossible: every request the
// worker receives is a message that the bytes frame unambiguously under RFC
// 9112 (refFrame), in order, with that message's method, target and body.
// The proxy may refuse more than refFrame does, never less.
//
// Seeds are in testdata/fuzz/FuzzFront; a long run:
//
//	go test ./proxy -run '^$' -fuzz '^FuzzFront$' -fuzztime 10m
func FuzzFront(f *testing.F) {
	// The worker and the proxy serve every input.
	rl := &requestLog{}
	fw := startFake(f, "w1", 4, rl.handle)
	cfg := defaultConfig()
	cfg.MaxBodySize = 1 << 20
	h := startProxy(f, cfg, fw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		rl.take()
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(raw)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // until the proxy closes: every handler is done
		c.Close()
		got := rl.take()
		msgs := refFrame(raw)
		j := 0
	next:
		for _, g := range got {
			for ; j < len(msgs); j++ {
				if msgs[j].matches(g) {
					j++
					continue next
				}
			}
			t.Fatalf("the worker got %q, which the bytes do not frame as a request; framed: %q", g, msgs)
		}
	})
}

type refMsg struct{ method, target, body string }

func (m refMsg) String() string { return m.method + " " + m.target + " " + m.body }

// matches compares with a requestLog entry "METHOD REQUEST_URI body".
func (m refMsg) matches(entry string) bool {
	method, rest, _ := strings.Cut(entry, " ")
	uri, body, _ := strings.Cut(rest, " ")
	if method != m.method || body != m.body {
		return false
	}
	return !strings.HasPrefix(m.target, "/") || uri == m.target
}

// refFrame is a reference framing of a request stream, written
// independently of the proxy's http1.Framer: the messages whose boundaries RFC
// 9112 makes unambiguous, up to the first that is not.
func refFrame(b []byte) []refMsg {
	var out []refMsg
	for {
		for len(b) > 0 && (b[0] == '\n' || bytes.HasPrefix(b, []byte("\r\n"))) {
			if b[0] == '\n' {
				b = b[1:]
			} else {
				b = b[2:]
			}
		}
		if len(b) == 0 {
			return out
		}
		var lines []string
		for {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return out
			}
			line := strings.TrimSuffix(string(b[:i]), "\r")
			b = b[i+1:]
			if line == "" {
				break
			}
			lines = append(lines, line)
		}
		parts := strings.Split(lines[0], " ")
		if len(parts) != 3 {
			return out
		}
		var cl, te []string
		for _, l := range lines[1:] {
			if l[0] == ' ' || l[0] == '\t' {
				return out
			}
			name, value, ok := strings.Cut(l, ":")
			if !ok {
				return out
			}
			value = strings.Trim(value, " \t")
			switch strings.ToLower(name) {
			case "content-length":
				cl = append(cl, value)
			case "transfer-encoding":
				te = append(te, value)
			}
		}
		var body []byte
		switch {
		case len(te) > 0:
			if len(te) > 1 || len(cl) > 0 || parts[2] == "HTTP/1.0" || strings.ToLower(te[0]) != "chunked" {
				return out
			}
			var ok bool
			if body, b, ok = refDechunk(b); !ok {
				return out
			}
		case len(cl) > 0:
			if len(cl) > 1 || cl[0] == "" || len(cl[0]) > 18 || strings.Trim(cl[0], "0123456789") != "" {
				return out
			}
			n := 0
			for _, c := range cl[0] {
				n = n*10 + int(c-'0')
			}
			if n > len(b) {
				return out
			}
			body, b = b[:n], b[n:]
		}
		target := parts[1]
		for _, scheme := range []string{"http://", "https://"} {
			if strings.HasPrefix(strings.ToLower(target), scheme) {
				target = "" // absolute-form: the worker sees a rewritten path
			}
		}
		out = append(out, refMsg{method: parts[0], target: target, body: string(body)})
	}
}

// refDechunk decodes a strict chunked body (CRLF line ends, at most 16 hex
// digits, extensions after ';', trailer fields) and returns the rest.
func refDechunk(b []byte) (body, rest []byte, ok bool) {
	for {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return nil, nil, false
		}
		line := string(b[:i])
		b = b[i+2:]
		if j := strings.IndexByte(line, ';'); j >= 0 {
			line = line[:j]
		}
		line = strings.TrimRight(line, " \t")
		if line == "" || len(line) > 15 || strings.Trim(strings.ToLower(line), "0123456789abcdef") != "" {
			return nil, nil, false
		}
		n := 0
		for _, c := range strings.ToLower(line) {
			d := int(c - '0')
			if c >= 'a' {
				d = int(c-'a') + 10
			}
			n = n<<4 | d
		}
		if n == 0 {
			for {
				k := bytes.Index(b, []byte("\r\n"))
				if k < 0 {
					return nil, nil, false
				}
				trailer := b[:k]
				b = b[k+2:]
				if k == 0 {
					return body, b, true
				}
				if bytes.IndexByte(trailer, '\n') >= 0 {
					return nil, nil, false
				}
			}
		}
		if n+2 > len(b) || string(b[n:n+2]) != "\r\n" {
			return nil, nil, false
		}
		body = append(body, b[:n]...)
		b = b[n+2:]
	}
}
