package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// TestMain lets this test binary be the Go load generator's child, as the
// bench binary is (main.go): runGoLoad re-executes os.Executable(), which
// under `go test` is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == goloadFlag {
		os.Exit(goloadChild(os.Args[2], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestParseGoLoad(t *testing.T) {
	r, err := parseGoLoad([]byte(`{"requests":30000,"elapsed_s":3,"p50_ms":2.5,"p99_ms":11,"non_2xx":7,"errors":2,"first_error":"timeout: no recent network activity"}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 30000, RPS: 10000, P50: 2.5, P99: 11, Non2xx: 7, SockErrors: 2}
	if r != want {
		t.Errorf("parseGoLoad = %+v, want %+v", r, want)
	}
	if r.Errors() != 9 {
		t.Errorf("Errors() = %d, want 9", r.Errors())
	}
	for name, in := range map[string]string{
		"empty":       "",
		"garbage":     "panic: runtime error",
		"no time":     `{"requests":10}`,
		"no response": `{"requests":0,"elapsed_s":3,"errors":5,"first_error":"CRYPTO_ERROR 0x178 (remote): tls: no application protocol"}`,
	} {
		_, err := parseGoLoad([]byte(in))
		if err == nil {
			t.Errorf("%s: parseGoLoad accepted %q", name, in)
			continue
		}
		// The first error is what says why nothing was measured.
		if name == "no response" && !strings.Contains(err.Error(), "no application protocol") {
			t.Errorf("%s: error %q lost the generator's first error", name, err)
		}
	}
}

func TestPercentile(t *testing.T) {
	var hundred []float64
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, float64(i))
	}
	for _, tt := range []struct {
		in   []float64
		p    float64
		want float64
	}{
		{nil, 0.5, 0}, {[]float64{7}, 0.5, 7}, {[]float64{7}, 0.99, 7},
		{hundred, 0.50, 50}, {hundred, 0.99, 99}, {hundred, 1, 100}, {hundred, 0, 1},
		{[]float64{1, 2, 3}, 0.5, 2},
	} {
		if got := percentile(tt.in, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
		}
	}
}

// Latencies are merged over every stream before the percentiles are taken
// (not averaged per stream), and every stream's counts are summed.
func TestSummarizeLoad(t *testing.T) {
	slow := streamResult{lat: []float64{100, 100}, non2xx: 1, errors: 1, firstErr: errors.New("stream reset")}
	fast := streamResult{non2xx: 2}
	for i := 0; i < 98; i++ {
		fast.lat = append(fast.lat, 1+float64(i%3))
	}
	rep := summarizeLoad([]streamResult{fast, {}, slow}, 2*time.Second)
	want := loadReport{Requests: 100, ElapsedS: 2, P50: 2, P99: 100, Non2xx: 3, Errors: 1, FirstError: "stream reset"}
	if rep != want {
		t.Errorf("summarizeLoad = %+v, want %+v", rep, want)
	}
	if r, err := parseGoLoad(mustJSON(t, rep)); err != nil || r.RPS != 50 {
		t.Errorf("round trip through the child's JSON: %+v, %v", r, err)
	}
	if rep := summarizeLoad(nil, time.Second); rep.Requests != 0 || rep.P50 != 0 || rep.P99 != 0 {
		t.Errorf("no streams: %+v", rep)
	}
}

func mustJSON(t *testing.T, rep loadReport) []byte {
	t.Helper()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadSpecValidate(t *testing.T) {
	ok := loadSpec{Proto: protoH3, Conns: 1, Streams: 1, Duration: time.Second, Timeout: time.Second, URL: "https://127.0.0.1:1/"}
	if err := ok.validate(); err != nil {
		t.Errorf("valid spec: %v", err)
	}
	for name, mut := range map[string]func(*loadSpec){
		"proto":    func(s *loadSpec) { s.Proto = "h4" },
		"conns":    func(s *loadSpec) { s.Conns = 0 },
		"streams":  func(s *loadSpec) { s.Streams = 0 },
		"duration": func(s *loadSpec) { s.Duration = 0 },
		"timeout":  func(s *loadSpec) { s.Timeout = 0 },
	} {
		s := ok
		mut(&s)
		if err := s.validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, s)
		}
	}
}

// testServers serves "hello world!\n" (and 404 on /missing) over HTTPS
// with HTTP/1.1 and HTTP/2 (h12) and over HTTP/3 (h3), with the bench's
// certificate, and one over HTTPS with HTTP/1.1 only (h1only).
func testServers(t *testing.T) (h12, h1only, h3 string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeBenchCert(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("hello world!\n"))
	})
	for _, h2 := range []bool{true, false} {
		s := httptest.NewUnstartedServer(h)
		s.EnableHTTP2 = h2
		s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		s.StartTLS()
		t.Cleanup(s.Close)
		if h2 {
			h12 = s.URL
		} else {
			h1only = s.URL
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{Handler: h, TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})}
	go srv.Serve(pc)
	t.Cleanup(func() { srv.Close(); pc.Close() })
	return h12, h1only, "https://" + pc.LocalAddr().String()
}

// TestRunLoad drives real servers in this process for a moment with each
// protocol and checks the figures add up. It judges no speed.
func TestRunLoad(t *testing.T) {
	h12, h1only, h3 := testServers(t)
	spec := func(p loadProto, url string) loadSpec {
		return loadSpec{Proto: p, Conns: 2, Streams: 3, Duration: 300 * time.Millisecond, Timeout: 5 * time.Second, URL: url}
	}
	for _, tt := range []struct {
		name   string
		spec   loadSpec
		non2xx bool // every response is a 404
		broken bool // every request is an error
	}{
		{"h1", spec(protoH1, h12+"/"), false, false},
		{"h2", spec(protoH2, h12+"/"), false, false},
		{"h3", spec(protoH3, h3+"/"), false, false},
		{"h3 404", spec(protoH3, h3+"/missing"), true, false},
		// A server that does not speak the protocol asked for must not
		// be measured as if it did.
		{"h2 against h1 only", spec(protoH2, h1only+"/"), false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep := runLoad(context.Background(), tt.spec)
			if tt.broken {
				if rep.Requests != 0 || rep.Errors == 0 || !strings.Contains(rep.FirstError, "want h2") {
					t.Errorf("wrong protocol measured: %+v", rep)
				}
				return
			}
			if rep.Requests < 10 || rep.Errors != 0 || rep.P50 <= 0 || rep.P99 < rep.P50 || rep.ElapsedS != 0.3 {
				t.Errorf("implausible report %+v", rep)
			}
			if tt.non2xx && rep.Non2xx != rep.Requests || !tt.non2xx && rep.Non2xx != 0 {
				t.Errorf("non-2xx %d of %d requests", rep.Non2xx, rep.Requests)
			}
		})
	}
}

// TestRunGoLoad goes through the child process, as the bench does, and
// checks the child's CPU time is recorded.
func TestRunGoLoad(t *testing.T) {
	_, _, h3 := testServers(t)
	r, err := runGoLoad(context.Background(), loadSpec{Proto: protoH3, Conns: 2, Streams: 2, Duration: 300 * time.Millisecond, Timeout: 5 * time.Second, URL: h3 + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests < 10 || r.RPS <= 0 || r.Errors() != 0 || r.CPU <= 0 {
		t.Errorf("implausible result %+v", r)
	}
	if _, err := runGoLoad(context.Background(), loadSpec{Proto: "h4", Conns: 1, Streams: 1, Duration: time.Second, Timeout: time.Second}); err == nil {
		t.Errorf("runGoLoad accepted protocol h4")
	}
}
