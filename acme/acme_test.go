package acme

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const helperEnv = "BERTH_ACME_TEST_HELPER"

func TestMain(m *testing.M) {
	if raw := os.Getenv(helperEnv); raw != "" {
		os.Exit(runHelper(raw))
	}
	code := m.Run()
	if pebbleBuild.bin != "" {
		os.RemoveAll(pebbleBuild.bin)
	}
	os.Exit(code)
}

// runHelper is a second berth instance in a process of its own: a Manager
// on the storage the test names, printing "READY <serial>" once it has the
// certificate, and ending when its stdin closes.
func runHelper(raw string) int {
	var h helperOptions
	if err := json.Unmarshal([]byte(raw), &h); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	opts := Options{Domains: h.Domains, CA: h.CA, CARoots: h.CARoots, Storage: h.Storage,
		HTTPAddr: h.HTTPAddr, HTTPSAddr: h.HTTPSAddr, RenewCheckInterval: time.Second, Profile: "default"}
	var f *front
	if h.Serve {
		// This process is the whole proxy: its own listeners answer the CA.
		plain, err := net.Listen("tcp", h.HTTPAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		secure, err := net.Listen("tcp", h.HTTPSAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		var stop func()
		f, stop = serveFront(plain, secure)
		defer stop()
	}
	opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "helper: "+f+"\n", a...) }
	m, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	defer m.Stop()
	if f != nil {
		f.mgr.Store(m)
	}
	go func() {
		for {
			if st := m.Status()[0]; st.Serial != "" {
				fmt.Printf("READY %s\n", st.Serial)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperOptions are the Options a helper process gets (Options has funcs).
type helperOptions struct {
	Domains, CARoots                 []string
	CA, Storage, HTTPAddr, HTTPSAddr string
	Serve                            bool // listen on the addresses and answer there
}

// newManager makes a Manager on f's listeners and p's directory, with a
// one-second renewal check; mod adjusts the options.
func newManager(t *testing.T, f *front, p *pebble, storage string, l *testLog, mod func(*Options)) *Manager {
	t.Helper()
	opts := Options{
		Email:              "ops@berth.test",
		CA:                 p.dirURL,
		CARoots:            []string{p.rootsPEM},
		Storage:            storage,
		HTTPAddr:           f.plain.Addr().String(),
		HTTPSAddr:          f.tls.Addr().String(),
		Logf:               l.logf,
		RenewCheckInterval: time.Second,
		// Pebble picks a random profile for an order that names none.
		Profile: "default",
	}
	if mod != nil {
		mod(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.mgr.Store(m)
	t.Cleanup(m.Stop)
	return m
}

// firstLeaf waits for name's certificate to be served and verified.
func firstLeaf(t *testing.T, f *front, name string, roots *x509.CertPool, d time.Duration) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	var last error
	deadline := time.Now().Add(d)
	for {
		var err error
		if leaf, err = f.leaf(name, roots, time.Time{}); err == nil {
			return leaf
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for %s served after %s: last handshake: %v", name, d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func serial(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

func TestObtainHTTP01(t *testing.T) {
	f := newFront(t)
	p := startPebble(t, f.httpPort(), f.tlsPort(), time.Hour)
	l := newTestLog(t)
	name := uniqueName("http01")
	start := time.Now()
	m := newManager(t, f, p, t.TempDir(), l, func(o *Options) { o.Domains = []string{name}; o.HTTPSAddr = "" })
	leaf := firstLeaf(t, f, name, p.issuingRoots(), time.Minute)
	t.Logf("TIMING first issuance through HTTP-01: %s", time.Since(start).Round(time.Millisecond))

	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
		t.Errorf("certificate names %v, want [%s]", leaf.DNSNames, name)
	}
	if f.httpChallenges.Load() == 0 || f.alpnHellos.Load() != 0 {
		t.Errorf("HTTP-01 answers %d, acme-tls/1 handshakes %d: want HTTP-01 only", f.httpChallenges.Load(), f.alpnHellos.Load())
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want 1", n)
	}
	st := m.Status()[0]
	if !st.NotAfter.Equal(leaf.NotAfter) || st.Serial != serial(leaf) || st.Issuer == "" || st.LastError != "" {
		t.Errorf("status %+v does not describe the served certificate %s (not after %s)", st, serial(leaf), leaf.NotAfter)
	}
	if st.ARIWindowStart.IsZero() {
		t.Errorf("status has no ARI window: the CA's renewal info was not fetched")
	}
	if !st.NextRenewal.After(time.Now()) || !st.NextRenewal.Before(leaf.NotAfter) {
		t.Errorf("next renewal %s not between now and the expiry %s", st.NextRenewal, leaf.NotAfter)
	}
	// No SNI, or a name not managed: the first domain's certificate (a
	// caller with no file certificate of its own asks for those).
	for _, sni := range []string{"", "other.berth.test"} {
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: sni})
		if err != nil || len(c.Certificate) == 0 {
			t.Errorf("GetCertificate(%q): %v", sni, err)
		} else if l, _ := x509.ParseCertificate(c.Certificate[0]); serial(l) != serial(leaf) {
			t.Errorf("GetCertificate(%q) gave %s, want the default %s", sni, serial(l), serial(leaf))
		}
	}
	// A plain request that is not a challenge is the routes'.
	resp, err := http.Get("http://" + f.plain.Addr().String() + "/.well-known/acme-challenge/nothing")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "plain route\n" {
		t.Errorf("an unknown challenge token got %q, want the route's answer", body)
	}
}

func TestObtainTLSALPN01(t *testing.T) {
	f := newFront(t)
	p := startPebble(t, f.httpPort(), f.tlsPort(), time.Hour)
	l := newTestLog(t)
	name := uniqueName("alpn")
	start := time.Now()
	pem, err := os.ReadFile(p.rootsPEM)
	if err != nil {
		t.Fatal(err)
	}
	m := newManager(t, f, p, t.TempDir(), l, func(o *Options) {
		o.Domains, o.HTTPAddr = []string{name}, ""
		o.CARoots, o.CARootPEM = nil, [][]byte{pem} // as the supervisor would send them
	})
	leaf := firstLeaf(t, f, name, p.issuingRoots(), time.Minute)
	t.Logf("TIMING first issuance through TLS-ALPN-01: %s", time.Since(start).Round(time.Millisecond))

	if f.alpnHellos.Load() == 0 || f.httpChallenges.Load() != 0 {
		t.Errorf("acme-tls/1 handshakes %d, HTTP-01 answers %d: want TLS-ALPN-01 only", f.alpnHellos.Load(), f.httpChallenges.Load())
	}
	if f.alpnClosed.Load() == 0 {
		t.Errorf("no acme-tls/1 connection reached the close-after-handshake hook")
	}
	if got := m.NextProtos(); len(got) != 1 || got[0] != ALPNProto {
		t.Errorf("NextProtos %v, want [%s]", got, ALPNProto)
	}
	if st := m.Status()[0]; st.Serial != serial(leaf) {
		t.Errorf("status serial %s, served %s", st.Serial, serial(leaf))
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want 1", n)
	}
}

// TestRenewalUnderLoad: clients making requests in a loop across a
// renewal, each on a new connection, see no failure; the served serial
// changes; a keep-alive connection opened before keeps its certificate.
func TestRenewalUnderLoad(t *testing.T) {
	f := newFront(t)
	const life = 20 * time.Second
	p := startPebble(t, f.httpPort(), f.tlsPort(), life)
	l := newTestLog(t)
	name := uniqueName("renew")
	m := newManager(t, f, p, t.TempDir(), l, func(o *Options) { o.Domains = []string{name}; o.Profile = "short" })
	roots := p.issuingRoots()
	first := firstLeaf(t, f, name, roots, time.Minute)
	if got := first.NotAfter.Sub(first.NotBefore); got > life+time.Second {
		t.Fatalf("certificate lives %s, want the short profile's %s", got, life)
	}
	t.Logf("first certificate %s, renewal expected about %s", serial(first), m.Status()[0].NextRenewal.Format(time.RFC3339))

	client := func(keepAlive bool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			TLSClientConfig:   &tls.Config{ServerName: name, RootCAs: roots},
		}}
	}
	url := "https://" + f.tls.Addr().String() + "/"
	var ok, failed atomic.Int64
	var mu sync.Mutex
	serials := map[string]int{}
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(false)
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status)
					continue
				}
				ok.Add(1)
				mu.Lock()
				serials[serial(resp.TLS.PeerCertificates[0])]++
				mu.Unlock()
			}
		}()
	}
	// One keep-alive connection opened before the renewal.
	kc := client(true)
	kaSerials := map[string]bool{}
	kaRequests := 0
	keepAlive := func() {
		resp, err := kc.Get(url)
		if err != nil {
			t.Errorf("keep-alive request: %v", err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		kaSerials[serial(resp.TLS.PeerCertificates[0])] = true
		kaRequests++
	}
	keepAlive()

	start := time.Now()
	waitFor(t, 2*life, "the served certificate to change", func() bool {
		keepAlive()
		mu.Lock()
		defer mu.Unlock()
		return len(serials) > 1
	})
	// Load goes on a moment past the swap.
	time.Sleep(500 * time.Millisecond)
	keepAlive()
	close(stop)
	wg.Wait()

	st := m.Status()[0]
	t.Logf("TIMING renewal order took %s (the certificate changed %s after load started); %d requests ok, %d failed; serials %v",
		time.Duration(st.ObtainTook).Round(time.Millisecond), time.Since(start).Round(time.Millisecond), ok.Load(), failed.Load(), serials)
	if failed.Load() != 0 {
		t.Errorf("%d requests failed across the renewal (first: %v)", failed.Load(), firstErr.Load())
	}
	if ok.Load() < 20 {
		t.Errorf("only %d requests made: no load", ok.Load())
	}
	if len(kaSerials) != 1 || !kaSerials[serial(first)] || kaRequests < 3 {
		t.Errorf("the keep-alive connection saw serials %v in %d requests, want only the first %s", kaSerials, kaRequests, serial(first))
	}
	if st.Serial == serial(first) || st.LastError != "" {
		t.Errorf("status after renewal: %+v", st)
	}
	if n := p.orders(); n < 2 {
		t.Errorf("pebble got %d orders, want the first and a renewal", n)
	}
}

// TestCADownKeepsServing: with the CA gone, the renewal fails, the error
// is in Status and the metrics, and the old certificate keeps serving.
func TestCADownKeepsServing(t *testing.T) {
	f := newFront(t)
	const life = 20 * time.Second
	p := startPebble(t, f.httpPort(), f.tlsPort(), life)
	l := newTestLog(t)
	name := uniqueName("cadown")
	metrics := NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics)
	m := newManager(t, f, p, t.TempDir(), l, func(o *Options) { o.Domains = []string{name}; o.Profile = "short"; o.Metrics = metrics })
	roots := p.issuingRoots()
	first := firstLeaf(t, f, name, roots, time.Minute)
	p.stop()

	// Verify as of the certificate's start: the test may outlive it.
	at := first.NotBefore.Add(time.Second)
	handshakes := 0
	waitFor(t, 2*life, "the failed renewal in Status", func() bool {
		leaf, err := f.leaf(name, roots, at)
		if err != nil {
			t.Fatalf("handshake with the CA down: %v", err)
		}
		if serial(leaf) != serial(first) {
			t.Fatalf("served %s, want the first certificate %s", serial(leaf), serial(first))
		}
		handshakes++
		return m.Status()[0].LastError != ""
	})
	st := m.Status()[0]
	t.Logf("status with the CA down after %d handshakes: %+v", handshakes, st)
	if !strings.Contains(st.LastError, "cannot be reached") || st.LastErrorAt.IsZero() || st.Serial != serial(first) {
		t.Errorf("status %+v: want the old certificate and the CA's error with its fix", st)
	}
	if !l.has("renewal failed, the current certificate keeps serving") {
		t.Errorf("the log does not say the renewal failed")
	}
	got := gather(t, reg)
	if v := got[`berth_acme_certificate_not_after_seconds{domain="`+name+`"}`]; int64(v) != first.NotAfter.Unix() {
		t.Errorf("expiry metric %v, want %d", v, first.NotAfter.Unix())
	}
	if v := got[`berth_acme_last_error_seconds{domain="`+name+`"}`]; v == 0 {
		t.Errorf("last error metric is 0 with the CA down")
	}
	if got[`berth_acme_orders_total{domain="`+name+`",kind="renew",result="error"}`] < 1 ||
		got[`berth_acme_orders_total{domain="`+name+`",kind="obtain",result="ok"}`] != 1 {
		t.Errorf("order counters: %v", got)
	}
}

// gather flattens a registry into "name{labels}" → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var labels []string
			for _, lp := range mt.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			out[key] = value(mt)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

// TestRestartReusesStoredCertificate: a new Manager on the same storage
// serves the stored certificate from its first handshake, with no order.
func TestRestartReusesStoredCertificate(t *testing.T) {
	f := newFront(t)
	p := startPebble(t, f.httpPort(), f.tlsPort(), time.Hour)
	l := newTestLog(t)
	name := uniqueName("restart")
	storage := t.TempDir()
	first := newManager(t, f, p, storage, l, func(o *Options) { o.Domains = []string{name} })
	roots := p.issuingRoots()
	leaf := firstLeaf(t, f, name, roots, time.Minute)
	first.Stop()
	if n := p.orders(); n != 1 {
		t.Fatalf("pebble got %d orders for the first certificate, want 1", n)
	}

	start := time.Now()
	second := newManager(t, f, p, storage, l, func(o *Options) { o.Domains = []string{name} })
	// No wait: New loaded it before returning.
	again, err := f.leaf(name, roots, time.Time{})
	if err != nil {
		t.Fatalf("first handshake after the restart: %v", err)
	}
	t.Logf("TIMING restart to first handshake with the stored certificate: %s", time.Since(start).Round(time.Microsecond))
	if serial(again) != serial(leaf) {
		t.Errorf("after the restart served %s, want the stored %s", serial(again), serial(leaf))
	}
	if st := second.Status()[0]; st.Serial != serial(leaf) || !st.Obtained.IsZero() {
		t.Errorf("status after restart %+v: want the stored certificate, not a new order", st)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want still 1", n)
	}
	if !l.has("certificate from " + storage) {
		t.Errorf("the log does not say the certificate came from storage")
	}
}

// TestSharedStorageOneOrder: two berth instances (two processes) starting
// together on one storage get one certificate from one order; the one that
// did not order answers the CA's validation of the other's order through
// the storage (certmagic's distributed solving).
func TestSharedStorageOneOrder(t *testing.T) {
	f := newFront(t)
	p := startPebble(t, f.httpPort(), f.tlsPort(), time.Hour)
	l := newTestLog(t)
	name := uniqueName("shared")
	storage := t.TempDir()
	raw, err := json.Marshal(helperOptions{
		Domains: []string{name}, CA: p.dirURL, CARoots: []string{p.rootsPEM}, Storage: storage,
		HTTPAddr: f.plain.Addr().String(), HTTPSAddr: f.tls.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+string(raw))
	stdin, _ := helper.StdinPipe()
	stdout, _ := helper.StdoutPipe()
	var helperLog lockedBuffer
	helper.Stderr = &helperLog
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		helper.Wait()
		if t.Failed() {
			t.Logf("the other instance's log:\n%s", helperLog.String())
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- s
			}
		}
		close(ready)
	}()

	// The other instance takes the lock and orders; this one starts then,
	// waits for the lock, and answers the CA's validation of the other's
	// order meanwhile.
	waitFor(t, time.Minute, "the other instance to start its order", func() bool {
		return strings.Contains(helperLog.String(), "ordering a certificate")
	})
	m := newManager(t, f, p, storage, l, func(o *Options) { o.Domains = []string{name} })
	leaf := firstLeaf(t, f, name, p.issuingRoots(), time.Minute)
	var other string
	select {
	case other = <-ready:
		if other == "" {
			t.Fatalf("the other instance ended without a certificate")
		}
	case <-time.After(time.Minute):
		t.Fatalf("the other instance has no certificate after a minute")
	}
	if other != serial(leaf) {
		t.Errorf("the two instances serve %s and %s: want one certificate", serial(leaf), other)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders from two instances sharing the storage, want 1", n)
	}
	if st := m.Status()[0]; st.Serial != serial(leaf) || !st.Obtained.IsZero() {
		t.Errorf("status %+v: want the other instance's certificate, not one ordered here", st)
	}
	if !strings.Contains(helperLog.String(), "certificate obtained") || l.has("certificate obtained") {
		t.Errorf("want the other instance to have ordered, not this one")
	}
	if f.httpChallenges.Load()+f.alpnHellos.Load() == 0 {
		t.Errorf("this instance answered no validation: the other's order was not solved through the storage")
	}
	waitFor(t, 10*time.Second, "the log to say where the certificate came from", func() bool {
		return l.has("got by another berth instance sharing")
	})
}

// TestNoCertificateYet: with no certificate and a CA that cannot be
// reached, handshakes fail at once with an alert, plain requests are
// served, and Status and the log say why.
func TestNoCertificateYet(t *testing.T) {
	f := newFront(t)
	ca := deadCA()
	l := newTestLog(t)
	name := uniqueName("nocert")
	m, err := New(Options{Domains: []string{name}, CA: ca, Storage: t.TempDir(),
		HTTPAddr: f.plain.Addr().String(), HTTPSAddr: f.tls.Addr().String(), Logf: l.logf, RenewCheckInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	f.mgr.Store(m)
	if !l.has("no certificate yet; ordering one from " + ca) {
		t.Errorf("the boot log does not say there is no certificate yet")
	}
	start := time.Now()
	_, err = f.leaf(name, nil, time.Time{})
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Errorf("handshake with no certificate: %v, want an internal_error alert", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the refused handshake took %s", d)
	}
	resp, err := http.Get("http://" + f.plain.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("plain request meanwhile: %s", resp.Status)
	}
	waitFor(t, 30*time.Second, "the failed order in Status", func() bool { return m.Status()[0].LastError != "" })
	st := m.Status()[0]
	if !st.NotAfter.IsZero() || !strings.Contains(st.LastError, "cannot be reached: check tls.acme.ca") {
		t.Errorf("status %+v", st)
	}
	_, err = m.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
	if err == nil || !strings.Contains(err.Error(), "no certificate yet: the last order failed") {
		t.Errorf("GetCertificate error %v", err)
	}
	if !l.has("TLS handshakes refused: no certificate yet") {
		t.Errorf("the refused handshakes are not in the log")
	}
}

func TestNewRefuses(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free := freePort(t, false)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "root.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	base := func() Options {
		return Options{Domains: []string{"a.berth.test"}, CA: deadCA(), Storage: dir, HTTPAddr: held.Addr().String(), Logf: t.Logf}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no domains", func(o *Options) { o.Domains = nil }, "no domains: set tls.acme.domains"},
		{"wildcard", func(o *Options) { o.Domains = []string{"*.berth.test"} }, "needs the DNS-01 challenge"},
		{"no listener", func(o *Options) { o.HTTPAddr = "" }, "no listener to answer"},
		{"nothing listens", func(o *Options) { o.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", free) }, "nothing listens on"},
		{"bad address", func(o *Options) { o.HTTPSAddr = "8443" }, "give host:port or :port"},
		{"relative storage", func(o *Options) { o.Storage = "acme" }, "give an absolute path"},
		{"bad ca_roots", func(o *Options) { o.CARoots = []string{notPEM} }, "has no PEM certificate"},
		{"bad ca_roots PEM", func(o *Options) { o.CARootPEM = [][]byte{[]byte("junk")} }, "ca_roots[0]: no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			m, err := New(o)
			if err == nil {
				m.Stop()
				t.Fatalf("New accepted %+v", o)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "acme: ") {
				t.Errorf("error %q, want one starting acme: and saying %q", err, tc.want)
			}
		})
	}
}

func TestStatusJSON(t *testing.T) {
	in := DomainStatus{Domain: "a.berth.test", NotAfter: time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC), ObtainTook: Duration(1500 * time.Millisecond)}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"obtain_took":"1.5s"`) || !strings.Contains(string(raw), `"not_after":"2027-03-01T00:00:00Z"`) {
		t.Errorf("JSON %s", raw)
	}
	var out DomainStatus
	if err := json.Unmarshal(raw, &out); err != nil || out.ObtainTook != in.ObtainTook || !out.NotAfter.Equal(in.NotAfter) {
		t.Errorf("round trip %+v: %v", out, err)
	}
}

func TestManagesAndChallengeRouting(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	m, err := New(Options{Domains: []string{"Example.COM.", "www.example.com"}, CA: deadCA(), Storage: t.TempDir(), HTTPAddr: held.Addr().String(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	for name, want := range map[string]bool{"example.com": true, "EXAMPLE.com.": true, "www.example.com": true, "other.com": false, "": false} {
		if got := m.Manages(name); got != want {
			t.Errorf("Manages(%q) = %v", name, got)
		}
	}
	if m.NextProtos() != nil {
		t.Errorf("NextProtos %v with TLS-ALPN-01 off", m.NextProtos())
	}
	// Not a challenge, another host, a POST: all the routes'.
	for _, r := range []*http.Request{
		httptest.NewRequest("GET", "http://example.com/", nil),
		httptest.NewRequest("GET", "http://other.com/.well-known/acme-challenge/abc", nil),
		httptest.NewRequest("POST", "http://example.com/.well-known/acme-challenge/abc", nil),
		httptest.NewRequest("GET", "http://example.com:8080/.well-known/acme-challenge/abc", nil),
	} {
		if m.HandleHTTPChallenge(httptest.NewRecorder(), r) {
			t.Errorf("HandleHTTPChallenge answered %s %s", r.Method, r.URL)
		}
	}
	if IsChallengeConn(tls.ConnectionState{NegotiatedProtocol: "h2"}) || !IsChallengeConn(tls.ConnectionState{NegotiatedProtocol: ALPNProto}) {
		t.Errorf("IsChallengeConn is wrong")
	}
}

// TestARIRenewal: a certificate far from expiry is renewed because the CA's
// renewal info (ARI) says so. Pebble is told to suggest a window already
// past; the stored Retry-After is moved back, as if its 6 hours were up.
func TestARIRenewal(t *testing.T) {
	f := newFront(t)
	p := startPebble(t, f.httpPort(), f.tlsPort(), time.Hour)
	l := newTestLog(t)
	name := uniqueName("ari")
	storage := t.TempDir()
	first := newManager(t, f, p, storage, l, func(o *Options) { o.Domains = []string{name} })
	roots := p.issuingRoots()
	leaf := firstLeaf(t, f, name, roots, time.Minute)
	st := first.Status()[0]
	if st.ARIWindowStart.IsZero() || time.Until(st.NextRenewal) < 24*time.Hour {
		t.Fatalf("status %+v: want an ARI window and a renewal weeks away", st)
	}
	first.Stop()

	fs := first.storage
	certPEM, err := fs.Load(t.Context(), certmagic.StorageKeys.SiteCert(first.issuer.IssuerKey(), name))
	if err != nil {
		t.Fatal(err)
	}
	p.setRenewalInfo(string(certPEM), time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	metaKey := certmagic.StorageKeys.SiteMeta(first.issuer.IssuerKey(), name)
	raw, err := fs.Load(t.Context(), metaKey)
	if err != nil {
		t.Fatal(err)
	}
	var res certmagic.CertificateResource
	var data acmeapi.Certificate
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(res.IssuerData, &data); err != nil || data.RenewalInfo == nil {
		t.Fatalf("stored metadata has no renewal info: %v %s", err, res.IssuerData)
	}
	past := time.Now().Add(-time.Minute)
	data.RenewalInfo.RetryAfter = &past
	res.IssuerData, _ = json.Marshal(data)
	raw, _ = json.Marshal(res)
	if err := fs.Store(t.Context(), metaKey, raw); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	second := newManager(t, f, p, storage, l, func(o *Options) { o.Domains = []string{name} })
	waitFor(t, time.Minute, "the renewal ARI asked for", func() bool {
		got, err := f.leaf(name, roots, time.Time{})
		if err != nil {
			t.Fatalf("handshake during the ARI renewal: %v", err)
		}
		return serial(got) != serial(leaf)
	})
	t.Logf("TIMING ARI-directed renewal, from start to new certificate served: %s", time.Since(start).Round(time.Millisecond))
	if n := p.orders(); n != 2 {
		t.Errorf("pebble got %d orders, want 2", n)
	}
	if !l.has("ARI window or selected renewal time changed") {
		t.Errorf("the log does not show the ARI change")
	}
	if st := second.Status()[0]; st.NotAfter.Sub(leaf.NotAfter) <= 0 || st.LastError != "" {
		t.Errorf("status after the ARI renewal %+v", st)
	}
}

func TestPrepareStorage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PrepareStorage hands the directory over only as root")
	}
	dir := filepath.Join(t.TempDir(), "acme")
	os.MkdirAll(filepath.Join(dir, "certificates", "ca"), 0o755)
	os.WriteFile(filepath.Join(dir, "certificates", "ca", "x.key"), []byte("k"), 0o600)
	if err := PrepareStorage(dir, 12345, 23456); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		info, _ := d.Info()
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != 12345 || st.Gid != 23456 {
			t.Errorf("%s belongs to %d:%d", path, st.Uid, st.Gid)
		}
		return nil
	})
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o700 {
		t.Errorf("storage mode %v, want 0700", info.Mode().Perm())
	}
	if err := PrepareStorage("relative", 1, 1); err == nil {
		t.Errorf("a relative storage path was accepted")
	}
}

// TestNonRootInstance: the proxy runs as app.user, not root. A storage the
// supervisor prepared (PrepareStorage) serves a process running as nobody
// that listens, answers the CA and keeps its certificate there.
func TestNonRootInstance(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	const nobody = 65534
	httpPort, tlsPort := freePort(t, false), freePort(t, false)
	p := startPebble(t, httpPort, tlsPort, time.Hour)
	// Everything the other user reads must be reachable by it: /root and
	// the test's own temporary directories are not.
	base, err := os.MkdirTemp("", "berth-acme-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "acme.test")
	root := filepath.Join(base, "root.pem")
	for src, dst := range map[string]string{os.Args[0]: bin, p.rootsPEM: root} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	storage := filepath.Join(base, "storage")
	if err := PrepareStorage(storage, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	name := uniqueName("nonroot")
	raw, _ := json.Marshal(helperOptions{
		Domains: []string{name}, CA: p.dirURL, CARoots: []string{root}, Storage: storage,
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", httpPort), HTTPSAddr: fmt.Sprintf("127.0.0.1:%d", tlsPort), Serve: true,
	})
	helper := exec.Command(bin, "-test.run=^$")
	helper.Dir = base
	helper.Env = append(os.Environ(), helperEnv+"="+string(raw), "HOME="+base)
	helper.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	stdin, _ := helper.StdinPipe()
	stdout, _ := helper.StdoutPipe()
	var helperLog lockedBuffer
	helper.Stderr = &helperLog
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		helper.Wait()
		if t.Failed() {
			t.Logf("the nobody instance's log:\n%s", helperLog.String())
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- s
			}
		}
		close(ready)
	}()
	var got string
	select {
	case got = <-ready:
	case <-time.After(time.Minute):
	}
	if got == "" {
		t.Fatalf("the instance running as uid %d got no certificate", nobody)
	}
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tlsPort), &tls.Config{ServerName: name, RootCAs: p.issuingRoots()})
	if err != nil {
		t.Fatalf("handshake with the instance running as uid %d: %v", nobody, err)
	}
	if s := serial(c.ConnectionState().PeerCertificates[0]); s != got {
		t.Errorf("it serves %s, its status says %s", s, got)
	}
	c.Close()
	// Everything it wrote is its own, private keys 0600.
	filepath.WalkDir(storage, func(path string, d fs.DirEntry, err error) error {
		info, _ := d.Info()
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != nobody {
			t.Errorf("%s belongs to uid %d", path, st.Uid)
		}
		if strings.HasSuffix(path, ".key") && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", path, info.Mode().Perm())
		}
		return nil
	})
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want 1", n)
	}
}

// deadCA is a directory URL on a loopback port with nothing on it: tests
// that order nothing must never reach a real CA.
func deadCA() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return "https://" + l.Addr().String() + "/dir"
}

// TestUnusableStoredCertificate: a certificate in storage that does not
// load is not silently kept: the log names the files to remove.
func TestUnusableStoredCertificate(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	name := uniqueName("broken")
	l := newTestLog(t)
	opts := Options{Domains: []string{name}, CA: deadCA(), Storage: t.TempDir(), HTTPAddr: held.Addr().String(), Logf: l.logf}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	key := m.issuer.IssuerKey()
	m.Stop()
	for _, k := range []string{certmagic.StorageKeys.SiteCert(key, name), certmagic.StorageKeys.SitePrivateKey(key, name), certmagic.StorageKeys.SiteMeta(key, name)} {
		if err := m.storage.Store(t.Context(), k, []byte("-----BEGIN GARBAGE-----\n")); err != nil {
			t.Fatal(err)
		}
	}
	m, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	if !l.has("the stored certificate is unusable") || !l.has("remove "+m.storage.Filename(certmagic.StorageKeys.CertsSitePrefix(key, name))) {
		t.Errorf("the log does not say the stored certificate is unusable and what to remove")
	}
}

var names atomic.Int64

// uniqueName is a test domain of its own for each run: certmagic keeps a
// renewal's failure backoff per name for the whole process, so a name
// reused by -count=N would wait for the last run's backoff.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d.berth.test", prefix, names.Add(1))
}
