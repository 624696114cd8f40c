package tests

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for names and its key as
// PEM files into dir, and returns the certificate's serial in hex.
func writeCert(t *testing.T, dir string, names ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return strings.ToUpper(serial.Text(16))
}

// secretSwap points a Kubernetes-Secret-style volume's ..data at dir, as
// the kubelet does on renewal (tls.crt and tls.key are symlinks through it).
func secretSwap(t *testing.T, vol, dir string) {
	t.Helper()
	tmp := filepath.Join(vol, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(dir), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
}

// sClient runs openssl s_client with SNI name and returns the serial of
// the certificate berth sent.
func sClient(t *testing.T, addr, name string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", fmt.Sprintf("openssl s_client -connect %s -servername %s </dev/null 2>/dev/null | openssl x509 -noout -serial", addr, name))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl s_client %s: %v %s", name, err, out)
	}
	// openssl pads the hex to whole bytes; big.Int's Text does not.
	return strings.TrimLeft(strings.TrimPrefix(strings.TrimSpace(string(out)), "serial="), "0")
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestEdgeTLS: curl over HTTP/2 and HTTP/1.1, Django sees https, SNI picks
// the certificate, and a certificate renewed through a Secret's ..data swap
// is what the next openssl s_client sees while every request under load is
// answered; a broken pair is refused and logged, the renewed one serving.
func TestEdgeTLS(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "openssl")
	site := djangoSite(t)
	base, err := os.MkdirTemp("", "bt-tls")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	vol := filepath.Join(base, "secret")
	serial1 := writeCert(t, filepath.Join(vol, "..v1"), "a.test")
	secretSwap(t, vol, filepath.Join(vol, "..v1"))
	for _, f := range []string{"tls.crt", "tls.key"} {
		os.Symlink(filepath.Join("..data", f), filepath.Join(vol, f))
	}
	serialB := writeCert(t, filepath.Join(base, "b"), "b.test")
	// Three ports held open together, so they differ; the admin one is
	// ours too. berth binds them itself, so they are closed first.
	var addrs []string
	var held []net.Listener
	for i := 0; i < 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range held {
		l.Close()
	}
	tlsAddr, plain, admin := addrs[0], addrs[1], addrs[2]
	b := startBerth(t, berthOpts{noReady: true, config: fmt.Sprintf(`listen: [%q, "https://%s"]
admin: {listen: %q}
tls:
  certificates:
    - {cert: %s/tls.crt, key: %s/tls.key}
    - {cert: %s/b/tls.crt, key: %s/b/tls.key}
  hsts: 1h
workers: {count: 2}
`, plain, tlsAddr, admin, vol, vol, base, base) + djangoConfig(site, "")})
	b.addr, b.admin = plain, admin
	b.waitReady(60 * time.Second)

	out := curl(t, "--http2", "-k", "-w", "\n%{http_version}", "https://"+tlsAddr+"/echo")
	body, version, _ := strings.Cut(out, "\n")
	var echo map[string]any
	if err := json.Unmarshal([]byte(body), &echo); err != nil || echo["scheme"] != "https" || version != "2" {
		t.Errorf("curl --http2: version %q body %q: want HTTP/2 and request.is_secure()", version, body)
	}
	out = curl(t, "--http1.1", "-k", "-i", "https://"+tlsAddr+"/echo")
	if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, `"scheme": "https"`) || !strings.Contains(out, "Strict-Transport-Security: max-age=3600") {
		t.Errorf("curl --http1.1:\n%s", out)
	}
	if _, body := b.get("/echo"); !strings.Contains(body, `"scheme": "http"`) {
		t.Errorf("plain listener: %s", body)
	}
	if got := sClient(t, tlsAddr, "a.test"); got != serial1 {
		t.Errorf("SNI a.test: serial %s, want %s", got, serial1)
	}
	if got := sClient(t, tlsAddr, "b.test"); got != serialB {
		t.Errorf("SNI b.test: serial %s, want %s", got, serialB)
	}

	// Load over TLS, half of it on new connections, while the pair is renewed.
	var ok, failed atomic.Int64
	var errMu sync.Mutex
	errs := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "a.test"}, ForceAttemptHTTP2: i%2 == 0}
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if n%2 == 1 {
					tr.CloseIdleConnections()
				}
				resp, err := c.Get("https://" + tlsAddr + "/hello")
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					errs[err.Error()]++
					errMu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && string(b) == "Hello from Django\n" {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}(i)
	}
	time.Sleep(300 * time.Millisecond)
	serial2 := writeCert(t, filepath.Join(vol, "..v2"), "a.test")
	secretSwap(t, vol, filepath.Join(vol, "..v2"))
	waitFor(t, 10*time.Second, "openssl s_client to see the renewed certificate", func() bool { return sClient(t, tlsAddr, "a.test") == serial2 })
	b.waitLog("certificates reloaded", 5*time.Second)

	// A broken pair: the key of another certificate.
	writeCert(t, filepath.Join(vol, "..v3"), "a.test")
	other, _ := os.ReadFile(filepath.Join(base, "b", "tls.key"))
	os.WriteFile(filepath.Join(vol, "..v3", "tls.key"), other, 0o600)
	secretSwap(t, vol, filepath.Join(vol, "..v3"))
	b.waitLog("not a usable pair", 5*time.Second)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if got := sClient(t, tlsAddr, "a.test"); got != serial2 {
		t.Errorf("after the broken pair: serial %s, want the renewed %s still serving", got, serial2)
	}
	if failed.Load() != 0 || ok.Load() < 20 {
		t.Errorf("under load during the swaps: %d ok, %d failed %v", ok.Load(), failed.Load(), errs)
	}
	t.Logf("requests under load during the certificate swaps: %d ok, %d failed", ok.Load(), failed.Load())
}

// TestEdgeCacheAndCompression: a Django view with cache_control is served
// from the cache (the view's own counter does not move), one setting a
// cookie never is, 50 concurrent misses reach the worker once, the admin
// endpoint purges; curl --compressed and Python's gzip and brotli decode
// the page to the exact bytes.
func TestEdgeCacheAndCompression(t *testing.T) {
	requireTool(t, "curl")
	site := djangoSite(t)
	b := startBerth(t, berthOpts{config: djangoConfig(site, `workers: {count: 1, threads: 4}
cache:
  routes: [{url: /cached}]
`)})
	served := func() string { _, s := b.get("/served"); return strings.TrimSpace(s) }
	get := func(path string) (string, string) {
		resp, err := http.Get(b.url(path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.Header.Get("X-Cache-Status"), string(body)
	}
	if s, _ := get("/cached"); s != "MISS" {
		t.Errorf("first /cached: %q, want MISS", s)
	}
	n := served()
	for i := 0; i < 5; i++ {
		if s, _ := get("/cached"); s != "HIT" {
			t.Errorf("/cached again: %q, want HIT", s)
		}
	}
	if got := served(); got != n {
		t.Errorf("the view ran %s times after cache hits, want still %s", got, n)
	}
	s1, _ := get("/cached-cookie")
	s2, _ := get("/cached-cookie")
	if s1 != "MISS" || s2 != "MISS" {
		t.Errorf("a view setting a cookie: %q then %q, want MISS twice", s1, s2)
	}

	// Purge through the admin endpoint, then 50 concurrent misses.
	resp, err := http.Post("http://"+b.admin+"/cache/purge?path=/cached", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(pb), `"purged": 1`) {
		t.Errorf("purge: %d %s", resp.StatusCode, pb)
	}
	before := served()
	var wg sync.WaitGroup
	statuses := make(chan string, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _ := get("/cached")
			statuses <- s
		}()
	}
	wg.Wait()
	close(statuses)
	count := map[string]int{}
	for s := range statuses {
		count[s]++
	}
	var nb, na int
	fmt.Sscan(before, &nb)
	fmt.Sscan(served(), &na)
	if na-nb != 1 || count["MISS"] != 1 || count["HIT"] != 49 {
		t.Errorf("50 concurrent misses after a purge: the view ran %d times (want 1); statuses %v", na-nb, count)
	}

	// Compression: the exact bytes, whatever the client.
	identity := curl(t, "-H", "Accept-Encoding: identity", b.url("/page"))
	if len(identity) < 50000 {
		t.Fatalf("/page is %d bytes", len(identity))
	}
	if got := curl(t, "--compressed", b.url("/page")); got != identity {
		t.Errorf("curl --compressed: %d bytes differ from the identity page", len(got))
	}
	for enc, decode := range map[string]string{
		"gzip": "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
		"br":   "import brotli,sys; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))",
	} {
		req, _ := http.NewRequest("GET", b.url("/page"), nil)
		req.Header.Set("Accept-Encoding", enc)
		tr := &http.Transport{DisableCompression: true}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Header.Get("Content-Encoding") != enc || resp.Header.Get("Vary") != "Accept-Encoding" {
			t.Errorf("%s: Content-Encoding %q Vary %q", enc, resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
			continue
		}
		cmd := exec.Command(systemPython, "-c", decode)
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("python %s decode: %v", enc, err)
		}
		if string(out) != identity {
			t.Errorf("python %s: %d decoded bytes differ from the %d identity bytes", enc, len(out), len(identity))
		}
		t.Logf("%s: %d bytes for %d", enc, len(raw), len(identity))
	}
}
