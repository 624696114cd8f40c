package tests

// ACME through `berth run`: certificates from a real ACME CA (Pebble) on
// loopback, got, served, renewed and kept by berth's proxy.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/acme"
)

var acmeNames atomic.Int64

// acmeName is a name of its own per test and run: certmagic keeps a
// failure backoff per name for the life of a process, and Pebble's DNS
// answers 127.0.0.1 for any.
func acmeName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d.berth.test", prefix, os.Getpid(), acmeNames.Add(1))
}

// acmeConfig is tls.acme for Pebble p, storage under dir.
func acmeConfig(p *pebbleCA, name, storage string) string {
	return fmt.Sprintf(`tls:
  acme:
    email: ops@berth.test
    domains: [%s]
    ca: %s
    ca_roots: [%s]
    storage: %s
`, name, p.dirURL, p.rootsPEM, storage)
}

const acmeApp = "app:\n  module: app:application\n  chdir: $APP\n  python: $PY\nworkers: {count: 1, threads: 8}\n"

// acmeStatusOf is /status's tls.acme, through get (the test's network or
// a namespace's).
func acmeStatusOf(t *testing.T, get func(string) (*http.Response, error), admin string) []acme.DomainStatus {
	t.Helper()
	resp, err := get("http://" + admin + "/status")
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		TLS *struct {
			ACME []acme.DomainStatus `json:"acme"`
		} `json:"tls"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	if st.TLS == nil {
		return nil
	}
	return st.TLS.ACME
}

// waitCertificate polls /status until the first domain has a certificate.
func waitCertificate(t *testing.T, b *berthProc, d time.Duration) acme.DomainStatus {
	t.Helper()
	var st []acme.DomainStatus
	waitFor(t, d, "a certificate in /status tls.acme", func() bool {
		st = acmeStatusOf(t, http.Get, b.admin)
		return len(st) > 0 && !st[0].NotAfter.IsZero()
	})
	return st[0]
}

// leafAt does a TLS handshake for name with addr, verified against roots
// (as of at, when set), and returns the certificate.
func leafAt(addr, name string, roots *x509.CertPool, at time.Time) (*x509.Certificate, error) {
	conf := &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}}
	if !at.IsZero() {
		conf.Time = func() time.Time { return at }
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

func serialOf(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// TestACMEHTTP01: berth with a plain listener only gets its certificate
// through HTTP-01 (the only challenge it can answer), the validation
// request in its access log; a reload adding an https:// listener serves
// that certificate from the storage, with no second order.
func TestACMEHTTP01(t *testing.T) {
	httpPort, tlsPort := loopbackPort(t), loopbackPort(t)
	p := startPebble(t, pebbleOpts{httpPort: httpPort, tlsPort: tlsPort, life: 90 * 24 * time.Hour})
	name := acmeName("http01")
	storage := filepath.Join(t.TempDir(), "acme")
	plain := fmt.Sprintf("127.0.0.1:%d", httpPort)
	start := time.Now()
	b := startBerth(t, berthOpts{
		config: fmt.Sprintf("listen: [%q]\n", plain) + acmeConfig(p, name, storage) + acmeApp,
		app:    map[string]string{"app.py": h3App},
	})
	st := waitCertificate(t, b, time.Minute)
	t.Logf("TIMING first issuance through HTTP-01 via berth run: %s from start (order %s)", time.Since(start).Round(time.Millisecond), time.Duration(st.ObtainTook))
	if !regexp.MustCompile(`"GET /\.well-known/acme-challenge/[^ ]+ HTTP/1\.1" 200 `).MatchString(b.logs.String()) {
		t.Errorf("no HTTP-01 validation request in the access log")
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want 1", n)
	}

	secure := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	cfg, _ := os.ReadFile(b.cfgPath)
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(cfg), fmt.Sprintf("listen: [%q]", plain), fmt.Sprintf("listen: [%q, \"https://%s\"]", plain, secure), 1))
	roots := p.issuingRoots()
	var leaf *x509.Certificate
	waitFor(t, 30*time.Second, "HTTPS on the new listener", func() bool {
		var err error
		leaf, err = leafAt(secure, name, roots, time.Time{})
		return err == nil
	})
	if serialOf(leaf) != st.Serial {
		t.Errorf("served %s, the stored certificate is %s", serialOf(leaf), st.Serial)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders after the reload, want still 1", n)
	}
}

// TestACMETLSALPN01: berth with an https:// listener only gets its
// certificate through TLS-ALPN-01, serves it beside a file certificate for
// another name (mixed), shows it in `berth status` and the metrics; a
// restart on the same storage serves the stored one from its first
// handshake, with no new order.
func TestACMETLSALPN01(t *testing.T) {
	httpPort, tlsPort := loopbackPort(t), loopbackPort(t)
	p := startPebble(t, pebbleOpts{httpPort: httpPort, tlsPort: tlsPort, life: 90 * 24 * time.Hour})
	name := acmeName("alpn")
	storage := filepath.Join(t.TempDir(), "acme")
	secure := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	files := t.TempDir()
	fileSerial := writeCert(t, files, "files.berth.test")
	cfg := fmt.Sprintf("listen: [\"https://%s\"]\n", secure) +
		strings.Replace(acmeConfig(p, name, storage), "tls:\n", fmt.Sprintf("tls:\n  certificates: [{cert: %s/tls.crt, key: %s/tls.key}]\n", files, files), 1) + acmeApp
	start := time.Now()
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": h3App}})
	st := waitCertificate(t, b, time.Minute)
	t.Logf("TIMING first issuance through TLS-ALPN-01 via berth run: %s from start (order %s)", time.Since(start).Round(time.Millisecond), time.Duration(st.ObtainTook))
	roots := p.issuingRoots()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{ServerName: name, RootCAs: roots}}}
	resp, err := c.Get("https://" + secure + "/")
	if err != nil {
		t.Fatalf("HTTPS with the ACME certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "ok HTTP/2.0 https") || serialOf(resp.TLS.PeerCertificates[0]) != st.Serial {
		t.Errorf("HTTPS: %s %q, serial %s (status says %s)", resp.Status, body, serialOf(resp.TLS.PeerCertificates[0]), st.Serial)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders, want 1", n)
	}
	// Mixed: the file's name, and a client with no SNI (the first file
	// certificate is the default), get the file certificate.
	for _, sni := range []string{"files.berth.test", ""} {
		c, err := tls.Dial("tcp", secure, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Errorf("SNI %q: %v", sni, err)
			continue
		}
		got := c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
		c.Close()
		if !strings.EqualFold(got, fileSerial) {
			t.Errorf("SNI %q got serial %s, want the file certificate's %s", sni, got, fileSerial)
		}
	}
	out, err := exec.Command(berthBinary(t), "status", "--admin", b.admin).CombinedOutput()
	if !regexp.MustCompile(`tls\s+` + regexp.QuoteMeta(name) + `\s+valid until \d{4}-\d\d-\d\d \d\d:\d\d \(renews about .*Pebble`).Match(out) {
		t.Errorf("berth status has no valid-until line for %s (%v):\n%s", name, err, out)
	}
	if v := metricSum(t, b, `berth_acme_certificate_not_after_seconds`); int64(v) != st.NotAfter.Unix() {
		t.Errorf("berth_acme_certificate_not_after_seconds %v, want %d", v, st.NotAfter.Unix())
	}

	// Restart on the same storage: the stored certificate, no order.
	b.signal(syscall.SIGTERM)
	if code := b.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	start = time.Now()
	b2 := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": h3App}, noReady: true})
	var leaf *x509.Certificate
	waitFor(t, 30*time.Second, "HTTPS after the restart", func() bool {
		leaf, err = leafAt(secure, name, roots, time.Time{})
		return err == nil
	})
	t.Logf("TIMING restart to first handshake with the stored certificate: %s", time.Since(start).Round(time.Millisecond))
	b2.waitReady(30 * time.Second)
	if serialOf(leaf) != st.Serial {
		t.Errorf("after the restart served %s, want the stored %s", serialOf(leaf), st.Serial)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders after the restart, want still 1", n)
	}
	if !strings.Contains(b2.logs.String(), "certificate from "+storage) {
		t.Errorf("the log does not say the certificate came from the storage")
	}
}

// TestACMEOnlyDomains: `berth run` with tls.acme and no listen serves
// HTTPS on :443 with a certificate from the CA (and HTTP-01 on :80). Run
// in a network namespace of the test's, where 80 and 443 are free.
func TestACMEOnlyDomains(t *testing.T) {
	ns := newNetns(t)
	p := startPebble(t, pebbleOpts{httpPort: 80, tlsPort: 443, life: 90 * 24 * time.Hour, prefix: ns.prefix(), dial: ns.dial})
	name := acmeName("only")
	storage := filepath.Join(t.TempDir(), "acme")
	// No listen: tls.acme makes it [":80", "https://:443"].
	cfg := acmeConfig(p, name, storage) + "admin:\n  listen: 127.0.0.1:9000\n" + acmeApp
	start := time.Now()
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": h3App}, noReady: true, noListen: true,
		wrap: func(argv []string) []string { return append(ns.prefix(), argv...) }})
	roots := p.issuingRoots()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: ns.dial,
		TLSClientConfig: &tls.Config{ServerName: name, RootCAs: roots}}}
	var resp *http.Response
	waitFor(t, time.Minute, "HTTPS on :443 with a certificate from the CA", func() bool {
		var err error
		resp, err = c.Get("https://127.0.0.1:443/")
		return err == nil
	})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("TIMING berth run with only tls.acme to HTTPS served: %s", time.Since(start).Round(time.Millisecond))
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "ok HTTP/1.1 https") {
		t.Errorf("HTTPS: %s %q", resp.Status, body)
	}
	served := serialOf(resp.TLS.PeerCertificates[0])
	waitFor(t, 5*time.Second, "the served certificate in /status", func() bool {
		st := acmeStatusOf(t, c.Get, "127.0.0.1:9000")
		return len(st) == 1 && st[0].Serial == served
	})
	if !strings.Contains(b.logs.String(), "listen [::]:80, [::]:443") {
		t.Errorf("berth does not say it listens on [::]:80 and [::]:443")
	}
	resp, err := c.Get("http://127.0.0.1:80/")
	if err != nil {
		t.Fatalf("plain HTTP on :80: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("plain HTTP on :80: %s", resp.Status)
	}
}

// TestACMERenewalUnderLoadAndCADown: with certificates living 30 s the
// proxy renews while clients make requests, each on a new TLS connection:
// not one fails, and the served serial changes. Then the CA goes away: the
// certificate in force keeps serving, and the failed renewal is in
// /status and berth_acme_last_error_seconds.
func TestACMERenewalUnderLoadAndCADown(t *testing.T) {
	httpPort, tlsPort := loopbackPort(t), loopbackPort(t)
	const life = 30 * time.Second
	p := startPebble(t, pebbleOpts{httpPort: httpPort, tlsPort: tlsPort, life: life})
	name := acmeName("renew")
	storage := filepath.Join(t.TempDir(), "acme")
	secure := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	cfg := fmt.Sprintf("listen: [\"127.0.0.1:%d\", \"https://%s\"]\n", httpPort, secure) + acmeConfig(p, name, storage) + acmeApp
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"app.py": h3App}, env: []string{"BERTH_ACME_RENEW_CHECK=1s"}})
	first := waitCertificate(t, b, time.Minute)
	roots := p.issuingRoots()

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	serials := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
				TLSClientConfig: &tls.Config{ServerName: name, RootCAs: roots}}}
			for ctx.Err() == nil {
				resp, err := c.Get("https://" + secure + "/")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status)
					continue
				}
				ok.Add(1)
				mu.Lock()
				serials[serialOf(resp.TLS.PeerCertificates[0])]++
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	waitFor(t, 3*life, "the served certificate to change", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(serials) > 1
	})
	changed := time.Since(start)
	atChange := ok.Load()
	waitFor(t, 10*time.Second, "load past the swap", func() bool { return ok.Load() > atChange+50 })
	cancel()
	wg.Wait()
	var st acme.DomainStatus
	waitFor(t, 5*time.Second, "the renewed certificate in /status", func() bool {
		st = acmeStatusOf(t, http.Get, b.admin)[0]
		return st.Serial != first.Serial
	})
	t.Logf("TIMING renewal under load: the renewal order took %s; the served certificate changed %s after load began, %s into the first certificate's %s; %d requests ok, %d failed; requests per serial %v",
		time.Duration(st.ObtainTook), changed.Round(time.Millisecond), start.Add(changed).Sub(first.NotAfter.Add(-life)).Round(time.Second), life, ok.Load(), failed.Load(), serials)
	if failed.Load() != 0 {
		t.Errorf("%d requests failed across the renewal; first: %v", failed.Load(), firstErr.Load())
	}
	if st.LastError != "" {
		t.Errorf("status after the renewal: %+v", st)
	}

	// The CA goes away: the certificate in force keeps serving (checked
	// as of its start: the test may outlive it), the error is reported.
	p.stop()
	renewed := st
	var now acme.DomainStatus
	waitFor(t, 3*life, "the failed renewal in /status", func() bool {
		leaf, err := leafAt(secure, name, roots, renewed.NotAfter.Add(-life+time.Second))
		if err != nil {
			t.Fatalf("handshake with the CA down: %v", err)
		}
		if serialOf(leaf) != renewed.Serial {
			t.Fatalf("with the CA down served %s, want %s", serialOf(leaf), renewed.Serial)
		}
		now = acmeStatusOf(t, http.Get, b.admin)[0]
		return now.LastError != ""
	})
	if !strings.Contains(now.LastError, "cannot be reached") || now.Serial != renewed.Serial {
		t.Errorf("status with the CA down: %+v", now)
	}
	if v := metricSum(t, b, `berth_acme_last_error_seconds`); v == 0 {
		t.Errorf("berth_acme_last_error_seconds is 0 with the CA down")
	}
	if metricSum(t, b, `berth_acme_orders_total{domain="`+name+`",kind="renew",result="error"}`) < 1 {
		t.Errorf("no failed renewal in berth_acme_orders_total")
	}
	out, _ := exec.Command(berthBinary(t), "status", "--admin", b.admin).CombinedOutput()
	if !strings.Contains(string(out), "last error") {
		t.Errorf("berth status does not show the error:\n%s", out)
	}
}

// TestACMESharedStorage: two berth instances on one storage volume get one
// certificate from one order between them.
func TestACMESharedStorage(t *testing.T) {
	httpPort, tlsPort := loopbackPort(t), loopbackPort(t)
	p := startPebble(t, pebbleOpts{httpPort: httpPort, tlsPort: tlsPort, life: 90 * 24 * time.Hour})
	name := acmeName("shared")
	storage := filepath.Join(t.TempDir(), "acme")
	// The CA validates on the first instance's ports; the second has
	// its own, as a replica on another host would.
	cfgA := fmt.Sprintf("listen: [\"127.0.0.1:%d\", \"https://127.0.0.1:%d\"]\n", httpPort, tlsPort) + acmeConfig(p, name, storage) + acmeApp
	otherTLS := freeAddr(t)
	cfgB := fmt.Sprintf("listen: [%q, \"https://%s\"]\n", freeAddr(t), otherTLS) + acmeConfig(p, name, storage) + acmeApp
	var a, b *berthProc
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a = startBerth(t, berthOpts{config: cfgA, app: map[string]string{"app.py": h3App}, noReady: true})
	}()
	go func() {
		defer wg.Done()
		b = startBerth(t, berthOpts{config: cfgB, app: map[string]string{"app.py": h3App}, noReady: true})
	}()
	wg.Wait()
	roots := p.issuingRoots()
	serials := map[string]bool{}
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", tlsPort), otherTLS} {
		var leaf *x509.Certificate
		waitFor(t, 2*time.Minute, "a certificate on "+addr, func() bool {
			var err error
			leaf, err = leafAt(addr, name, roots, time.Time{})
			return err == nil
		})
		serials[serialOf(leaf)] = true
	}
	if len(serials) != 1 {
		t.Errorf("the two instances serve %v: want one certificate", serials)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble got %d orders from two instances sharing the storage, want 1", n)
	}
	obtained := 0
	for _, x := range []*berthProc{a, b} {
		if strings.Contains(x.logs.String(), "certificate obtained") {
			obtained++
		}
	}
	if obtained != 1 {
		t.Errorf("%d instances say they obtained the certificate, want 1", obtained)
	}
}
