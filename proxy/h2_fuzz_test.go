package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzH2Frames sends a fuzzed run of HTTP/2 frames, after the preface, to
// the proxy's https listener (the frame guard, x/net's server and the
// request path behind them) and checks: nothing panics or hangs (the
// connection ends within its deadline, the proxy answers the next client),
// and every request the worker gets has a target the HTTP/1.1 grammar
// allows (no space or control byte: checkRequest's rule for every front).
//
// Seeds are in testdata/fuzz/FuzzH2Frames; a long run:
//
//	go test ./proxy -run '^$' -fuzz '^FuzzH2Frames$' -fuzztime 10m
func FuzzH2Frames(f *testing.F) {
	var mu sync.Mutex
	var targets []string
	fw := startFake(f, "w1", 4, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		mu.Lock()
		targets = append(targets, req.vars["REQUEST_URI"])
		mu.Unlock()
		respond(c, 200, nil, nil)
		return true
	})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := targets
		targets = nil
		return out
	}
	h := startProxy(f, tlsConfig(testCert(f, "a.test")), fw)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go h.srv.ServeTLS(l)
	addr := l.Addr().String()

	frames := func(build func(fr *http2.Framer, enc func(...string) []byte)) []byte {
		var b, hb bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		he := hpack.NewEncoder(&hb)
		enc := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				he.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return bytes.Clone(hb.Bytes())
		}
		build(fr, enc)
		return b.Bytes()
	}
	get := func(path string) []string {
		return []string{":method", "GET", ":scheme", "https", ":authority", "a.test", ":path", path}
	}
	f.Add(frames(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(get("/")...), EndHeaders: true, EndStream: true})
	}))
	f.Add(frames(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(append(get("/a b"), "content-length", "3")...), EndHeaders: true})
		fr.WriteData(1, true, []byte("abc"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(get("/x")...)})
		fr.WriteContinuation(3, false, nil)
		fr.WriteContinuation(3, true, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteSettings()
		for id := uint32(1); id < 40; id += 2 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(get("/r")...), EndHeaders: true, EndStream: true})
			fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		fr.WritePing(false, [8]byte{})
		fr.WriteWindowUpdate(0, 1<<20)
	}))
	f.Fuzz(func(t *testing.T, raw []byte) {
		take()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write(append([]byte(http2.ClientPreface), raw...))
		c.CloseWrite()         // the server sees EOF once it has read it all
		io.Copy(io.Discard, c) // until the proxy ends it, or the deadline
		c.Close()
		for _, uri := range take() {
			for i := 0; i < len(uri); i++ {
				if uri[i] <= ' ' || uri[i] == 0x7f {
					t.Fatalf("the worker got a target with a space or a control byte: %q", uri)
				}
			}
		}
	})
}
