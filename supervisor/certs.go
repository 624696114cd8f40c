// TLS certificates: the supervisor reads the files (as root, like nginx's
// master process), checks each pair, and sends the PEM to the proxies in
// their config. The files are watched like the config: a renewed pair
// (cert-manager, a Kubernetes Secret's `..data` symlink swap) reaches the
// proxies without a restart; a broken or mismatched one is refused with a
// message and the pair in use keeps serving.
package supervisor

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// loadCertificates reads and checks every pair of cfg's tls.certificates.
func loadCertificates(cfg *config.Config) ([]control.Certificate, error) {
	var out []control.Certificate
	for i, c := range cfg.TLS.Certificates {
		cert, err := os.ReadFile(c.Cert)
		if err != nil {
			return nil, fmt.Errorf("tls.certificates[%d].cert: %w", i, err)
		}
		key, err := os.ReadFile(c.Key)
		if err != nil {
			return nil, fmt.Errorf("tls.certificates[%d].key: %w", i, err)
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("tls.certificates[%d]: %s and %s are not a usable pair: %w; give a PEM certificate chain and its own PEM private key", i, c.Cert, c.Key, err)
		}
		leaf := pair.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
				return nil, fmt.Errorf("tls.certificates[%d]: %s: %w", i, c.Cert, err)
			}
		}
		if name := acmeName(cfg, leaf); name != "" {
			return nil, fmt.Errorf("tls.certificates[%d]: %s is for %s, which is also in tls.acme.domains; a name gets its certificate from one place: remove it from tls.acme.domains, or drop the pair", i, c.Cert, name)
		}
		if time.Now().After(leaf.NotAfter) {
			// Served all the same: refusing would take the site down
			// harder than an expired certificate does.
			fmt.Fprintf(os.Stderr, "berth: warning: tls.certificates[%d] %s expired on %s\n", i, c.Cert, leaf.NotAfter.Format(time.RFC3339))
		}
		out = append(out, control.Certificate{CertFile: c.Cert, KeyFile: c.Key, CertPEM: cert, KeyPEM: key})
	}
	return out, nil
}

func sameCertificates(a, b []control.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].CertFile != b[i].CertFile || a[i].KeyFile != b[i].KeyFile ||
			!bytes.Equal(a[i].CertPEM, b[i].CertPEM) || !bytes.Equal(a[i].KeyPEM, b[i].KeyPEM) {
			return false
		}
	}
	return true
}

// tlsControl is the TLS part of the proxies' config; nil without TLS.
func (s *Supervisor) tlsControl(cfg *config.Config) *control.TLS {
	a := &cfg.TLS.ACME
	if len(cfg.TLS.Certificates) == 0 && !cfg.TLS.RedirectHTTP && !a.Enabled() && !cfg.TLS.HTTP3 {
		return nil
	}
	t := &control.TLS{Certificates: s.certs, RedirectHTTP: cfg.TLS.RedirectHTTP, HSTS: control.Duration(cfg.TLS.HSTS), HTTP3: cfg.TLS.HTTP3}
	if a.Enabled() {
		t.ACME = &control.ACME{Email: a.Email, Domains: a.Domains, CA: a.CA, CARoots: a.CARoots, CARootPEM: s.acmeRoots,
			Storage: a.Storage, RenewCheck: control.Duration(acmeRenewCheck())}
	}
	// The redirect and Alt-Svc name the first TLS listener's port, as
	// bound (its UDP port has the same number).
	for _, l := range s.listeners {
		if listenerTLS(cfg.Listen, l.configured, l.addr) {
			if _, port, err := net.SplitHostPort(l.addr); err == nil {
				t.HTTPSPort, _ = strconv.Atoi(port)
				if l.udp != nil {
					t.HTTP3Port = t.HTTPSPort
				}
			}
			break
		}
	}
	return t
}

// acmeRenewCheck is BERTH_ACME_RENEW_CHECK, how often the proxy checks its
// ACME certificates for renewal (0: certmagic's 10 minutes). It is for
// tests whose certificates live seconds, not a config key.
func acmeRenewCheck() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("BERTH_ACME_RENEW_CHECK"))
	return d
}

// acmeName is the first name of leaf that is also in tls.acme.domains.
func acmeName(cfg *config.Config, leaf *x509.Certificate) string {
	for _, d := range cfg.TLS.ACME.Domains {
		d = strings.TrimSuffix(strings.ToLower(d), ".")
		if slices.Contains(leaf.DNSNames, d) || leaf.Subject.CommonName == d {
			return d
		}
	}
	return ""
}

// loadACMERoots reads tls.acme.ca_roots as root, like the certificates,
// for the proxy (app.user) that talks to the CA.
func loadACMERoots(cfg *config.Config) ([][]byte, error) {
	if !cfg.TLS.ACME.Enabled() {
		return nil, nil
	}
	var out [][]byte
	for i, f := range cfg.TLS.ACME.CARoots {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.ca_roots[%d]: %w", i, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("tls.acme.ca_roots[%d]: %s holds no PEM certificate; give the CA's root certificate file", i, f)
		}
		out = append(out, b)
	}
	return out, nil
}

// swapACMERoots makes roots the ones the proxies are sent and says whether
// that changed them.
func (s *Supervisor) swapACMERoots(roots [][]byte) bool {
	if slices.EqualFunc(roots, s.acmeRoots, bytes.Equal) {
		return false
	}
	s.acmeRoots = roots
	return true
}

// prepareACMEStorage gives tls.acme.storage to the user the proxy runs as
// (acme.PrepareStorage, as root), before a proxy with that config starts:
// certmagic writes 0600 files there and takes its locks by creating them.
func prepareACMEStorage(cfg *config.Config) error {
	a := &cfg.TLS.ACME
	if !a.Enabled() {
		return nil
	}
	uid, gid := os.Geteuid(), os.Getegid()
	cred, err := credentialFor(cfg.App.User)
	if err != nil {
		return err
	}
	if cred != nil {
		uid, gid = int(cred.Uid), int(cred.Gid)
	}
	if err := acme.PrepareStorage(a.Storage, uid, gid); err != nil {
		return fmt.Errorf("tls.acme.storage: %w", err)
	}
	return nil
}

// reloadCertificates re-reads the certificate files after they changed. It
// does not wait for a roll: the pair is read and checked first (a broken one
// changes nothing, the pair in use keeps serving), then swapped in and sent
// to the proxies at once. A reload rolling in meanwhile whose config names
// the same files takes the same read for its commit, which would otherwise
// put back the pair it read when it was staged.
func (s *Supervisor) reloadCertificates(reason string) {
	certs, err := loadCertificates(s.cfg)
	var roots [][]byte
	if err == nil {
		roots, err = loadACMERoots(s.cfg)
	}
	if err != nil {
		s.log.Printf("tls (%s): %v; the certificates in use keep serving", reason, err)
		s.reloadState = reloadStatus{At: s.now(), OK: false, Message: err.Error(), Reason: reason}
		s.metrics.reloads.WithLabelValues("failed").Inc()
		return
	}
	if st := s.pending; st != nil && !st.code && slices.Equal(certFiles(st.cfg), certFiles(s.cfg)) {
		st.certs, st.acmeRoots = certs, roots
	}
	rootsChanged := s.swapACMERoots(roots)
	if !s.swapCertificates(certs) && !rootsChanged {
		return
	}
	for _, p := range s.proxies {
		s.send(p, control.Message{Type: control.TypeConfig, Config: s.proxyConfig(s.cfg)})
	}
	var names []string
	for _, c := range certs {
		names = append(names, c.CertFile)
	}
	msg := "certificates reloaded: " + strings.Join(names, ", ")
	s.log.Printf("tls (%s): %s; new connections get them, open ones keep theirs", reason, msg)
	s.reloadState = reloadStatus{At: s.now(), OK: true, Message: msg, Reason: reason}
	s.metrics.reloads.WithLabelValues("ok").Inc()
}

// swapCertificates makes certs, read and checked, the ones the proxies are
// sent, and says whether that changed them. After boot it is the one writer
// of s.certs: a reload's commit and a renewal both swap through it.
func (s *Supervisor) swapCertificates(certs []control.Certificate) bool {
	if sameCertificates(certs, s.certs) {
		return false
	}
	s.certs = certs
	return true
}

// watchedFiles are the files whose change is sent to the proxies at once:
// the certificates and the access rules' files.
func watchedFiles(cfg *config.Config) []string {
	return append(certFiles(cfg), accessFilePaths(cfg)...)
}

// certFiles are the files whose change reloads the certificates.
func certFiles(cfg *config.Config) []string {
	var out []string
	for _, c := range cfg.TLS.Certificates {
		out = append(out, c.Cert, c.Key)
	}
	if cfg.TLS.ACME.Enabled() {
		out = append(out, cfg.TLS.ACME.CARoots...)
	}
	return out
}

// listenerTLS says whether a listen entry (or socket-activated fd name)
// stands for a TLS listener on addr.
func listenerTLS(listen []string, configured, addr string) bool {
	if configured == "" {
		// Socket activation: FileDescriptorName=https… marks TLS.
		return strings.HasPrefix(addr, "fd:https")
	}
	for _, l := range listen {
		if strings.HasPrefix(l, config.TLSScheme) && config.ListenAddress(l) == configured {
			return true
		}
	}
	return false
}

// edgeConfig fills the TLS, compression and cache parts of a proxy config.
func (s *Supervisor) edgeConfig(cfg *config.Config, p *control.Proxy) {
	p.TLS = s.tlsControl(cfg)
	c := cfg.Proxy.Compression
	p.Compression = control.Compression{Enabled: c.Enabled, MinLength: int64(c.MinLength), Types: c.Types}
	if len(cfg.Cache.Routes) > 0 {
		p.Cache = &control.Cache{Size: int64(cfg.Cache.Size)}
		for _, r := range cfg.Cache.Routes {
			p.Cache.Routes = append(p.Cache.Routes, control.CacheRoute{URL: r.URL, MaxTTL: control.Duration(r.MaxTTL),
				Stale: control.Duration(r.Stale), SessionCookies: r.SessionCookies})
		}
	}
}
