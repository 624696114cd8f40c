package supervisor

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// withConfigFile gives the harness a config file holding yaml (the
// harness's own listen, python and chdir are filled in for $LISTEN, $CHDIR)
// and makes the running config the file's, so a reload diffs against it.
func (h *harness) withConfigFile(yaml string) string {
	h.t.Helper()
	path := filepath.Join(h.t.TempDir(), "berth.yaml")
	h.s.opts.ConfigPath = path
	h.writeConfig(yaml)
	data, _ := os.ReadFile(path)
	h.s.cfgHash = hashBytes(data)
	return path
}

func (h *harness) writeConfig(yaml string) {
	h.t.Helper()
	yaml = strings.NewReplacer("$LISTEN", h.s.cfg.Listen[0], "$CHDIR", h.s.cfg.App.Chdir).Replace(yaml)
	if err := os.WriteFile(h.s.opts.ConfigPath, []byte(yaml), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// baseYAML matches the harness's boot config.
const baseYAML = "listen: [$LISTEN]\nadmin: {listen: \"off\"}\napp: {python: /bin/sh, chdir: \"$CHDIR\"}\nworkers: {count: 2, preload: false, graceful_timeout: 5s}\n"

// codeRoll starts a code reload and returns the ids of the replacements.
func (h *harness) codeRoll() (string, string) {
	h.t.Helper()
	h.s.reload(reloadRequest{reason: "test", code: true})
	if h.s.pending == nil {
		h.t.Fatalf("no roll after a code reload: %+v", h.s.reloadState)
	}
	return h.s.slots[0].next.id, h.s.slots[1].next.id
}

func (h *harness) crashNext(slot int) {
	h.t.Helper()
	w := h.s.slots[slot].next
	if w == nil {
		h.t.Fatalf("slot %d has no replacement: %v", slot+1, h.ids())
	}
	h.exit(w.pid, 1)
}

// TestRollStates drives a roll through its states with the fake OS: every
// case starts from two ready workers and a code reload rolling in.
func TestRollStates(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"replacement crashes once: retried with backoff, old worker serves, roll completes", func(t *testing.T, h *harness) {
			h.codeRoll()
			old := h.worker("1.1")
			h.crashNext(0)
			if old.state != wReady || h.s.slots[0].cur != old {
				t.Fatalf("old worker left service after its replacement crashed: %v", h.ids())
			}
			h.tick(backoffBase / 2)
			if h.s.slots[0].next != nil {
				t.Fatal("replacement restarted before the backoff")
			}
			h.tick(backoffBase)
			next := h.s.slots[0].next
			if next == nil || next.gen != h.s.pending.gen {
				t.Fatalf("replacement not restarted from the new generation: %v", h.ids())
			}
			if h.s.pending.failures != 1 {
				t.Fatalf("failures %d, want 1", h.s.pending.failures)
			}
			h.ready(next.id)
			h.ready(h.s.slots[1].next.id)
			if h.s.pending != nil || !h.s.reloadState.OK {
				t.Fatalf("roll did not complete: pending %v, last %+v", h.s.pending != nil, h.s.reloadState)
			}
		}},
		{"replacement dies rollMaxFailures times: roll abandoned, old workers back, reason shown", func(t *testing.T, h *harness) {
			h.codeRoll()
			prev := h.s.gens[0]
			for i := 0; i < rollMaxFailures; i++ {
				h.crashNext(0)
				h.tick(backoffCap)
			}
			if h.s.pending != nil {
				t.Fatalf("roll still pending after %d failures", rollMaxFailures)
			}
			if h.s.reloadState.OK || !strings.Contains(h.s.reloadState.Message, "abandoned after 3 failures") {
				t.Fatalf("last reload %+v, want the abandonment", h.s.reloadState)
			}
			if h.s.gen != prev {
				t.Fatal("current generation not the previous one after abandoning")
			}
			for _, id := range []string{"1.1", "2.1"} {
				if w := h.worker(id); w.state != wReady || w.retiring != "" {
					t.Fatalf("old worker %s: %s retiring %q", id, w.state, w.retiring)
				}
			}
			// The other slot's replacement is stopped; nothing of the
			// abandoned generation is left starting.
			for _, w := range h.s.workers {
				if w.gen != prev && w.state < wStopping {
					t.Fatalf("worker %s of the abandoned generation still %s", w.id, w.state)
				}
			}
			// The next reload is not blocked.
			h.codeRoll()
		}},
		{"old worker due during a failing roll: recycled now, not after the roll", func(t *testing.T, h *harness) {
			h.codeRoll()
			h.crashNext(0)
			h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeDue, Worker: "1.1"}})
			if h.s.slots[0].next == nil {
				t.Fatal("due worker got no replacement while its slot's roll replacement waits out a backoff")
			}
		}},
		{"old worker due, then roll abandoned: recycled from the serving generation", func(t *testing.T, h *harness) {
			h.codeRoll()
			prev := h.s.gens[0]
			h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeDue, Worker: "1.1"}})
			for i := 0; i < rollMaxFailures; i++ {
				h.crashNext(0)
				h.tick(backoffCap)
			}
			if h.s.pending != nil {
				t.Fatal("roll not abandoned")
			}
			next := h.s.slots[0].next
			if next == nil || next.gen != prev || h.worker("1.1").retiring != "max_requests" {
				t.Fatalf("due worker not recycled from generation %d after the abandon: %v", prev.n, h.ids())
			}
		}},
		{"import failure of the new generation: abandoned at once, next reload runs", func(t *testing.T, h *harness) {
			a, _ := h.codeRoll()
			h.exit(h.worker(a).pid, 4)
			if h.s.pending != nil || h.s.reloadState.OK {
				t.Fatalf("import failure did not abandon the roll: %+v", h.s.reloadState)
			}
			h.codeRoll()
		}},
		{"reload during a roll waits, then applies after the roll is abandoned", func(t *testing.T, h *harness) {
			h.codeRoll()
			h.s.reload(reloadRequest{reason: "second", code: true})
			if !h.s.deferredCode {
				t.Fatal("second reload not deferred")
			}
			for i := 0; i < rollMaxFailures; i++ {
				h.crashNext(0)
				h.tick(backoffCap)
			}
			if h.s.pending == nil || h.s.pending.reason != "code change deferred during the previous roll" {
				t.Fatalf("deferred reload did not start once the first roll was abandoned: %v", h.ids())
			}
		}},
		{"ready replacement of an abandoned roll serves until the old generation replaces it", func(t *testing.T, h *harness) {
			a, _ := h.codeRoll()
			h.ready(a) // slot 1 done: 1.1 drains
			for i := 0; i < rollMaxFailures; i++ {
				h.crashNext(1)
				h.tick(backoffCap)
			}
			w := h.worker(a)
			if w.state != wReady || h.s.slots[0].next == nil || h.s.slots[0].next.gen != h.s.gen {
				t.Fatalf("slot 1 after the abandon: %v", h.ids())
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.bootReady()
			c.run(t, h)
		})
	}
}

// TestReloadTransaction checks what a refused reload leaves: nothing.
func TestReloadTransaction(t *testing.T) {
	freePort := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	cases := []struct {
		name   string
		root   bool // needs root (users are looked up only then)
		edit   func(t *testing.T, h *harness) string
		want   string // in the refusal
		verify func(t *testing.T, h *harness)
	}{
		{name: "unknown app.user is refused before any worker starts", root: true,
			edit: func(t *testing.T, h *harness) string {
				return strings.Replace(baseYAML, "app: {", "app: {user: no-such-user-berth, ", 1)
			},
			want: "no-such-user-berth"},
		{name: "broken bytes are refused and a SIGHUP after them is refused again",
			edit: func(t *testing.T, h *harness) string { return "x: [\x00" },
			want: "berth.yaml",
			verify: func(t *testing.T, h *harness) {
				h.s.reloadState = reloadStatus{}
				h.s.reload(reloadRequest{reason: "SIGHUP"})
				if h.s.reloadState.OK || h.s.pending != nil {
					t.Fatalf("SIGHUP after a broken edit: %+v, rolling %v", h.s.reloadState, h.s.pending != nil)
				}
			}},
		{name: "admin move refused later: the new admin port is released",
			edit: func(t *testing.T, h *harness) string {
				addr := freePort(t)
				h.t.Setenv("BERTH_TEST_ADMIN", addr)
				return strings.NewReplacer(`admin: {listen: "off"}`, fmt.Sprintf("admin: {listen: %q}", addr),
					"python: /bin/sh", "python: /nonexistent/python3").Replace(baseYAML)
			},
			want: "app.python",
			verify: func(t *testing.T, h *harness) {
				addr := os.Getenv("BERTH_TEST_ADMIN")
				if c, err := net.Dial("tcp", addr); err == nil {
					c.Close()
					t.Fatalf("refused reload left the new admin listening on %s", addr)
				}
				if h.s.admin != nil {
					t.Fatal("admin endpoint changed by a refused reload")
				}
			}},
		{name: "listen address in use: refused, nothing opened",
			edit: func(t *testing.T, h *harness) string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				return strings.Replace(baseYAML, "listen: [$LISTEN]", fmt.Sprintf("listen: [$LISTEN, %q]", l.Addr().String()), 1)
			},
			want: "listen"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root && os.Geteuid() != 0 {
				t.Skip("needs root: app.user is looked up only when berth can switch users")
			}
			h := newHarness(t, nil)
			h.bootReady()
			h.withConfigFile(baseYAML)
			gen, hash, cfg, listeners := h.s.generation, h.s.cfgHash, h.s.cfg, h.s.listeners
			starts := len(h.os.started)
			h.writeConfig(c.edit(t, h))
			h.s.reload(reloadRequest{reason: "test"})
			st := h.s.reloadState
			if st.OK || !strings.Contains(st.Message, c.want) {
				t.Fatalf("reload: %+v, want a refusal naming %q", st, c.want)
			}
			if h.s.generation != gen || h.s.cfgHash != hash || h.s.cfg != cfg || h.s.pending != nil ||
				len(h.os.started) != starts || len(h.s.listeners) != len(listeners) {
				t.Fatalf("a refused reload changed what runs: generation %d→%d, started %d→%d, rolling %v",
					gen, h.s.generation, starts, len(h.os.started), h.s.pending != nil)
			}
			if c.verify != nil {
				c.verify(t, h)
			}
			// The next good edit applies.
			h.writeConfig(strings.Replace(baseYAML, "graceful_timeout: 5s", "graceful_timeout: 6s", 1))
			h.s.reload(reloadRequest{reason: "test"})
			if !h.s.reloadState.OK || h.s.generation != gen+1 {
				t.Fatalf("good edit after a refusal: %+v", h.s.reloadState)
			}
		})
	}
}

// TestWatchRetriedAfterFailure: a watcher that cannot be re-created is
// logged and retried, not given up on.
func TestWatchRetriedAfterFailure(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	dir := t.TempDir()
	h.s.opts.ConfigPath = filepath.Join(dir, "sub", "berth.yaml") // its directory does not exist yet
	h.s.restartWatch()
	if h.s.watch != nil || h.s.watchRetryAt.IsZero() {
		t.Fatal("a failed watch was not scheduled for a retry")
	}
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	h.tick(time.Second)
	if h.s.watch == nil {
		t.Fatal("watch not re-created by the retry")
	}
}

// writeTestCert writes a fresh self-signed certificate and its key to
// dir/tls.crt and dir/tls.key, and returns the certificate's PEM.
func writeTestCert(t *testing.T, dir, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestCertificatesRenewedDuringARoll: certificate files renewed while a
// reload's new worker generation rolls in reach the proxy at once, and the
// roll's commit keeps them: it must not put back the pair it read when it
// was staged.
func TestCertificatesRenewedDuringARoll(t *testing.T) {
	dir := t.TempDir()
	first := writeTestCert(t, dir, "first.example")
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	h := newHarness(t, func(c *config.Config) {
		c.TLS.Certificates = []config.Certificate{{Cert: crt, Key: key}}
	})
	h.bootReady()
	yaml := baseYAML + fmt.Sprintf("tls: {certificates: [{cert: %q, key: %q}]}\n", crt, key)
	h.withConfigFile(yaml)
	p := h.s.activeProxy()
	certsSent := func() []byte {
		t.Helper()
		var last *control.Proxy
		for _, m := range h.sentTo(p) {
			if m.Type == control.TypeConfig {
				last = m.Config
			}
		}
		if last == nil || last.TLS == nil || len(last.TLS.Certificates) != 1 {
			t.Fatalf("the proxy's last config carries no certificate: %+v", last)
		}
		return last.TLS.Certificates[0].CertPEM
	}
	if !bytes.Equal(certsSent(), first) {
		t.Fatal("the proxy was not sent the certificate at boot")
	}

	// A reload that needs a new worker generation: it reads the
	// certificates now and commits when both slots run the new generation.
	h.writeConfig(strings.Replace(yaml, "app: {", "app: {env: {ROLL: \"1\"}, ", 1))
	h.s.reload(reloadRequest{reason: "test"})
	if h.s.pending == nil {
		t.Fatalf("no roll: %+v", h.s.reloadState)
	}
	a, b := h.s.slots[0].next.id, h.s.slots[1].next.id

	// The pair is renewed during the roll (cert-manager does not wait).
	renewed := writeTestCert(t, dir, "renewed.example")
	h.s.reload(reloadRequest{reason: "certificate files changed", certs: true})
	if !bytes.Equal(certsSent(), renewed) {
		t.Fatal("the renewed certificate did not reach the proxy during the roll")
	}

	h.ready(a)
	h.ready(b)
	if h.s.pending != nil || !h.s.reloadState.OK {
		t.Fatalf("the roll did not commit: pending %v, last %+v", h.s.pending != nil, h.s.reloadState)
	}
	if got := certsSent(); bytes.Equal(got, first) {
		t.Error("the commit sent the proxy back the certificate the reload read before the renewal")
	} else if !bytes.Equal(got, renewed) {
		t.Error("after the commit the proxy was not sent the renewed certificate")
	}
	if len(h.s.certs) != 1 || !bytes.Equal(h.s.certs[0].CertPEM, renewed) {
		t.Error("after the commit s.certs is not the renewed certificate")
	}
}
