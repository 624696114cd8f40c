package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// testCert makes a self-signed certificate for names, in PEM.
func testCert(t testing.TB, names ...string) control.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return control.Certificate{
		CertFile: names[0] + ".crt", KeyFile: names[0] + ".key",
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}
}

// tlsHarness is a harness with a TLS listener beside the plain one.
type tlsHarness struct {
	*harness
	tlsAddr string
}

func startTLSProxy(t *testing.T, cfg control.Proxy, workers ...*fakeWorker) *tlsHarness {
	t.Helper()
	h := startProxy(t, cfg, workers...)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go h.srv.ServeTLS(l)
	return &tlsHarness{harness: h, tlsAddr: l.Addr().String()}
}

// client speaks to the TLS listener with the given ALPN protocols,
// trusting any certificate (the tests check which one they got).
func (h *tlsHarness) client(protos ...string) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, NextProtos: protos, ServerName: "a.test"},
		ForceAttemptHTTP2: len(protos) > 0 && protos[0] == "h2",
	}
	if !tr.ForceAttemptHTTP2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (h *tlsHarness) vars(c *http.Client, method, path string, body io.Reader) (map[string]string, *http.Response) {
	h.t.Helper()
	req, _ := http.NewRequest(method, "https://"+h.tlsAddr+path, body)
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]string
	if err := json.Unmarshal(b, &v); err != nil {
		h.t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, b)
	}
	return v, resp
}

func tlsConfig(certs ...control.Certificate) control.Proxy {
	cfg := defaultConfig()
	cfg.AccessLog = "combined"
	cfg.TLS = &control.TLS{Certificates: certs}
	return cfg
}

// TestTLSHTTP1AndHTTP2 serves the same handler over HTTP/1.1 (through the
// http1.Framer) and HTTP/2 (ALPN h2), and the app sees https either way.
func TestTLSHTTP1AndHTTP2(t *testing.T) {
	fw := startFake(t, "w1", 4, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		req.vars["BODY"] = string(req.body)
		b, _ := json.Marshal(req.vars)
		respond(c, 200, http.Header{"Content-Type": {"application/json"}}, b)
		return true
	})
	h := startTLSProxy(t, tlsConfig(testCert(t, "a.test")), fw)
	for _, tc := range []struct {
		name   string
		protos []string
		proto  string
	}{
		{"http1.1", []string{"http/1.1"}, "HTTP/1.1"},
		{"no alpn", nil, "HTTP/1.1"},
		{"h2", []string{"h2", "http/1.1"}, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.client(tc.protos...)
			v, resp := h.vars(c, "GET", "/x?q=1", nil)
			if resp.Proto != tc.proto {
				t.Errorf("response proto %s, want %s", resp.Proto, tc.proto)
			}
			if v["HTTPS"] != "on" || v["REQUEST_SCHEME"] != "https" || v["SERVER_PROTOCOL"] != tc.proto {
				t.Errorf("vars HTTPS=%q REQUEST_SCHEME=%q SERVER_PROTOCOL=%q, want on, https, %s", v["HTTPS"], v["REQUEST_SCHEME"], v["SERVER_PROTOCOL"], tc.proto)
			}
			if v["REQUEST_URI"] != "/x?q=1" || v["PATH_INFO"] != "/x" {
				t.Errorf("REQUEST_URI %q PATH_INFO %q", v["REQUEST_URI"], v["PATH_INFO"])
			}
			if _, ok := v["CONTENT_LENGTH"]; ok && v["CONTENT_LENGTH"] != "" {
				t.Errorf("a GET got CONTENT_LENGTH %q", v["CONTENT_LENGTH"])
			}
			v, _ = h.vars(c, "POST", "/post", strings.NewReader("hello body"))
			if v["BODY"] != "hello body" || v["CONTENT_LENGTH"] != "10" {
				t.Errorf("POST body %q length %q, want the body and 10", v["BODY"], v["CONTENT_LENGTH"])
			}
		})
	}
	waitFor(t, "the HTTP/2 and HTTP/1.1 access log lines", 3*time.Second, func() bool {
		log := h.alog.String()
		return strings.Contains(log, `"GET /x?q=1 HTTP/2.0" 200`) && strings.Contains(log, `"GET /x?q=1 HTTP/1.1" 200`)
	})
	// The plain listener still says http.
	if v := getVars(t, h.harness, "/"); v["HTTPS"] != "" || v["REQUEST_SCHEME"] != "http" {
		t.Errorf("plain listener: HTTPS=%q scheme %q", v["HTTPS"], v["REQUEST_SCHEME"])
	}
}

// TestTLSFramerStillGuards: HTTP/1.1 over TLS goes through the http1.Framer, so
// an ambiguous request is refused there as on a plain connection.
func TestTLSFramerStillGuards(t *testing.T) {
	fw := startFake(t, "w1", 1, hello)
	h := startTLSProxy(t, tlsConfig(testCert(t, "a.test")), fw)
	c, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 400") || fw.requests.Load() != 0 {
		t.Errorf("CL.TE over TLS: %q, worker requests %d; want 400 and none", firstLine(string(b)), fw.requests.Load())
	}
}

// TestTLSSNIAndSwap: SNI picks the certificate; a new config's certificate
// is what the next handshake gets, while an open connection keeps working.
func TestTLSSNIAndSwap(t *testing.T) {
	fw := startFake(t, "w1", 2, hello)
	a, b := testCert(t, "a.test"), testCert(t, "b.test", "*.b.test")
	h := startTLSProxy(t, tlsConfig(a, b), fw)
	subject := func(name string) string {
		t.Helper()
		c, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{InsecureSkipVerify: true, ServerName: name})
		if err != nil {
			t.Fatalf("handshake for %q: %v", name, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	for name, want := range map[string]string{"a.test": "a.test", "b.test": "b.test", "x.b.test": "b.test", "other.test": "a.test", "": "a.test"} {
		if got := subject(name); got != want {
			t.Errorf("SNI %q: certificate %q, want %q", name, got, want)
		}
	}

	open := h.client("h2")
	if _, resp := h.getTLS(open, "/"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	renewed := testCert(t, "a.test")
	renewed.CertFile = "renewed"
	if err := h.srv.SetConfig(tlsConfig(renewed)); err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{InsecureSkipVerify: true, ServerName: "a.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := c.ConnectionState().PeerCertificates[0].Raw
	c.Close()
	blk, _ := pem.Decode(renewed.CertPEM)
	if string(got) != string(blk.Bytes) {
		t.Errorf("after the swap the handshake still served the old certificate")
	}
	if _, resp := h.getTLS(open, "/"); resp.StatusCode != 200 {
		t.Errorf("the connection opened before the swap: status %d", resp.StatusCode)
	}

	// A mismatched pair is refused and the old one keeps serving.
	broken := a
	broken.KeyPEM = b.KeyPEM
	if err := h.srv.SetConfig(tlsConfig(broken)); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Errorf("mismatched pair: SetConfig error %v, want the mismatch named", err)
	}
	if got := subject("a.test"); got != "a.test" {
		t.Errorf("after a refused pair: %q", got)
	}
}

func (h *tlsHarness) getTLS(c *http.Client, path string) (string, *http.Response) {
	h.t.Helper()
	resp, err := c.Get("https://" + h.tlsAddr + path)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp
}

// TestTLSRedirectAndHSTS: plain requests get 308 to https, https ones the
// HSTS header.
func TestTLSRedirectAndHSTS(t *testing.T) {
	fw := startFake(t, "w1", 1, hello)
	cfg := tlsConfig(testCert(t, "a.test"))
	cfg.TLS.RedirectHTTP = true
	cfg.TLS.HTTPSPort = 8443
	cfg.TLS.HSTS = control.Duration(365 * 24 * time.Hour)
	h := startTLSProxy(t, cfg, fw)
	h.harness.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := h.get("/a/b?c=d", "Host", "example.org:8080")
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://example.org:8443/a/b?c=d" {
		t.Errorf("plain: %d Location %q, want 308 https://example.org:8443/a/b?c=d", resp.StatusCode, resp.Header.Get("Location"))
	}
	if fw.requests.Load() != 0 {
		t.Errorf("the redirect reached the worker")
	}
	for _, p := range [][]string{{"h2"}, {"http/1.1"}} {
		body, resp := h.getTLS(h.client(p...), "/")
		if body != "hello from w1" || resp.Header.Get("Strict-Transport-Security") != "max-age=31536000" {
			t.Errorf("%s: body %q HSTS %q", p[0], body, resp.Header.Get("Strict-Transport-Security"))
		}
	}
}

// TestTLSShutdownWaitsForHTTP2: Shutdown lets an HTTP/2 request in flight
// finish.
func TestTLSShutdownWaitsForHTTP2(t *testing.T) {
	release := make(chan struct{})
	fw := startFake(t, "w1", 1, blocker(release))
	h := startTLSProxy(t, tlsConfig(testCert(t, "a.test")), fw)
	c := h.client("h2")
	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://" + h.tlsAddr + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- resp.Proto + " " + string(b)
	}()
	waitFor(t, "the request to reach the worker", 5*time.Second, func() bool { return fw.accepted.Load() > 0 })
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- h.srv.Shutdown(ctx)
	}()
	time.Sleep(50 * time.Millisecond) // let Shutdown start waiting
	close(release)
	if r := <-got; !strings.HasPrefix(r, "HTTP/2.0 ") {
		t.Errorf("in-flight HTTP/2 request: %s", r)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
