package acme

// pebble_test.go runs a real ACME server on loopback for the tests:
// Pebble (Let's Encrypt's test CA) with pebble-challtestsrv as its DNS,
// answering 127.0.0.1 for every name. Both are built once per test run
// from the versions go.mod pins as tools. A Pebble per test keeps orders
// countable (its log says "Added order") and lets a test stop its CA.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var pebbleBuild struct {
	once   sync.Once
	bin    string // directory with pebble and pebble-challtestsrv
	modDir string // Pebble's module source (its test certificates)
	err    error
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// pebbleBinaries builds Pebble once. A failed build skips the test on a
// developer's machine (no module proxy, say) and fails it in CI.
func pebbleBinaries(t *testing.T) (bin, modDir string) {
	t.Helper()
	b := &pebbleBuild
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "berth-pebble-")
		if err != nil {
			b.err = err
			return
		}
		start := time.Now()
		cmd := exec.Command(goTool(), "build", "-o", dir+string(os.PathSeparator),
			"github.com/letsencrypt/pebble/v2/cmd/pebble", "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build of pebble: %v\n%s", err, out)
			return
		}
		out, err := exec.Command(goTool(), "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
		if err != nil {
			b.err = fmt.Errorf("go list -m pebble: %v", err)
			return
		}
		b.bin, b.modDir = dir, strings.TrimSpace(string(out))
		fmt.Fprintf(os.Stderr, "acme tests: built pebble in %s\n", time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pebble is needed and does not build: %v", b.err)
		}
		t.Skipf("pebble does not build here (set CI to make this a failure): %v", b.err)
	}
	return b.bin, b.modDir
}

// pebble is one running Pebble and its DNS server.
type pebble struct {
	t        *testing.T
	dirURL   string // the ACME directory
	mgmtURL  string
	rootsPEM string // Pebble's own HTTPS certificate's CA (for ca_roots)
	client   *http.Client
	pebble   *exec.Cmd
	dns      *exec.Cmd
	out      *lockedBuffer
	stopped  atomic.Bool
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freePort binds :0 on loopback (TCP, and UDP too when udp) and gives the
// port back for a child process to bind.
func freePort(t *testing.T, udp bool) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if udp {
			u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				l.Close()
				continue
			}
			u.Close()
		}
		l.Close()
		return port
	}
	t.Fatal("no free port on loopback")
	return 0
}

// startPebble runs a Pebble that validates http-01 on httpPort and
// tls-alpn-01 on tlsPort of 127.0.0.1. Its "default" profile gives 90-day
// certificates; "short" ones live shortLife.
func startPebble(t *testing.T, httpPort, tlsPort int, shortLife time.Duration) *pebble {
	t.Helper()
	bin, modDir := pebbleBinaries(t)
	dir := t.TempDir()
	p := &pebble{t: t, out: &lockedBuffer{}}
	dnsPort := freePort(t, true)
	p.dns = exec.Command(filepath.Join(bin, "pebble-challtestsrv"),
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", "127.0.0.1:"+strconv.Itoa(dnsPort),
		"-management", "127.0.0.1:"+strconv.Itoa(freePort(t, false)),
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	p.dns.Stdout, p.dns.Stderr = p.out, p.out
	if err := p.dns.Start(); err != nil {
		t.Fatalf("starting pebble-challtestsrv: %v", err)
	}
	t.Cleanup(func() { p.dns.Process.Kill(); p.dns.Wait() })

	listen := "127.0.0.1:" + strconv.Itoa(freePort(t, false))
	mgmt := "127.0.0.1:" + strconv.Itoa(freePort(t, false))
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             filepath.Join(modDir, "test/certs/localhost/cert.pem"),
		"privateKey":              filepath.Join(modDir, "test/certs/localhost/key.pem"),
		"httpPort":                httpPort,
		"tlsPort":                 tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles": map[string]any{
			"default": map[string]any{"description": "90 days", "validityPeriod": 90 * 24 * 3600},
			"short":   map[string]any{"description": "for renewal tests", "validityPeriod": int(shortLife / time.Second)},
		},
	}}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	p.pebble = exec.Command(filepath.Join(bin, "pebble"), "-config", cfgFile, "-dnsserver", "127.0.0.1:"+strconv.Itoa(dnsPort))
	p.pebble.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after a random 0-15 s
		"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce
		"PEBBLE_AUTHZREUSE=0",      // every order validates again: renewals answer challenges too
	)
	p.pebble.Stdout, p.pebble.Stderr = p.out, p.out
	if err := p.pebble.Start(); err != nil {
		t.Fatalf("starting pebble: %v", err)
	}
	t.Cleanup(p.stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble's log:\n%s", p.out.String())
		}
	})

	p.rootsPEM = filepath.Join(modDir, "test/certs/pebble.minica.pem")
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(p.rootsPEM)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("pebble's test root %s: %v", p.rootsPEM, err)
	}
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p.dirURL = "https://" + listen + "/dir"
	p.mgmtURL = "https://" + mgmt
	waitFor(t, 20*time.Second, "pebble's directory to answer", func() bool {
		resp, err := p.client.Get(p.dirURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitFor(t, 10*time.Second, "pebble-challtestsrv's DNS to listen", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(dnsPort))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return p
}

// stop kills Pebble (a CA that is down).
func (p *pebble) stop() {
	if p.stopped.Swap(true) {
		return
	}
	p.pebble.Process.Kill()
	p.pebble.Wait()
}

// orders counts the orders Pebble received.
func (p *pebble) orders() int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Added order") {
			n++
		}
	}
	return n
}

// issuingRoots is the root Pebble signs certificates under (made at its
// start, so fetched from its management API).
func (p *pebble) issuingRoots() *x509.CertPool {
	p.t.Helper()
	resp, err := p.client.Get(p.mgmtURL + "/roots/0")
	if err != nil {
		p.t.Fatalf("pebble's root: %v", err)
	}
	defer resp.Body.Close()
	pem, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		p.t.Fatalf("pebble's root: no PEM in %q", pem)
	}
	return pool
}

// setRenewalInfo makes Pebble answer cert's renewal info with window.
func (p *pebble) setRenewalInfo(certPEM string, start, end time.Time) {
	p.t.Helper()
	ari, _ := json.Marshal(map[string]any{"suggestedWindow": map[string]any{"start": start.UTC().Format(time.RFC3339), "end": end.UTC().Format(time.RFC3339)}})
	body, _ := json.Marshal(map[string]string{"Certificate": certPEM, "ARIResponse": string(ari)})
	resp, err := p.client.Post(p.mgmtURL+"/set-renewal-info/", "application/json", bytes.NewReader(body))
	if err != nil {
		p.t.Fatalf("pebble set-renewal-info: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		p.t.Fatalf("pebble set-renewal-info: %s %s", resp.Status, b)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// front is berth's listeners in miniature: a plain server whose handler
// asks the Manager first, and a TLS server whose certificates and
// acme-tls/1 answers come from it, wired as the proxy will be.
type front struct {
	mgr            atomic.Pointer[Manager]
	plain, tls     net.Listener
	httpChallenges atomic.Int64 // HTTP-01 requests answered
	alpnHellos     atomic.Int64 // acme-tls/1 handshakes seen
	alpnClosed     atomic.Int64 // acme-tls/1 connections closed unserved
}

func newFront(t *testing.T) *front {
	t.Helper()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	secure, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, stop := serveFront(plain, secure)
	t.Cleanup(stop)
	return f
}

// serveFront serves a front on the two listeners until stop.
func serveFront(plainLn, tlsLn net.Listener) (f *front, stop func()) {
	f = &front{plain: plainLn, tls: tlsLn}
	plain := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := f.manager(); m != nil && m.HandleHTTPChallenge(w, r) {
			f.httpChallenges.Add(1)
			return
		}
		io.WriteString(w, "plain route\n")
	})}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1", ALPNProto},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ALPNProto {
				f.alpnHellos.Add(1)
			}
			m := f.manager()
			if m == nil || !m.Manages(hello.ServerName) {
				return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
			}
			return m.GetCertificate(hello)
		},
	}
	secure := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls route\n") }),
		// The CA's validation connection is closed after the handshake.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			ALPNProto: func(_ *http.Server, c *tls.Conn, _ http.Handler) { f.alpnClosed.Add(1); c.Close() },
		},
		TLSConfig: tlsConf,
		ErrorLog:  log.New(io.Discard, "", 0), // refused handshakes are expected
	}
	go plain.Serve(plainLn)
	go secure.ServeTLS(tlsLn, "", "")
	return f, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		plain.Shutdown(ctx)
		secure.Shutdown(ctx)
	}
}

// manager is the front's Manager, waited for a moment: a validation that
// comes before the test made it (another process's order) gets an answer,
// as it would from a proxy whose Manager is always there.
func (f *front) manager() *Manager {
	for range 200 {
		if m := f.mgr.Load(); m != nil {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (f *front) httpPort() int { return f.plain.Addr().(*net.TCPAddr).Port }
func (f *front) tlsPort() int  { return f.tls.Addr().(*net.TCPAddr).Port }

// leaf does a TLS handshake for name and returns the verified leaf.
func (f *front) leaf(name string, roots *x509.CertPool, at time.Time) (*x509.Certificate, error) {
	conf := &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}}
	if !at.IsZero() {
		conf.Time = func() time.Time { return at }
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", f.tls.Addr().String(), conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// testLog collects the Manager's log lines, and prints them with -v.
// Lines logged once the test is over (a renewal goroutine winding down)
// are dropped: t.Log then would panic.
type testLog struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
	done  bool
}

func newTestLog(t *testing.T) *testLog {
	l := &testLog{t: t}
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	return l
}

func (l *testLog) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.lines = append(l.lines, s)
	l.t.Log(s)
}

func (l *testLog) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
