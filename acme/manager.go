package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

const (
	// DefaultCA is Let's Encrypt's production directory: tls.acme.ca when
	// it is left out. With it certmagic retries a failed order once against
	// Let's Encrypt's staging CA before production again, so a broken setup
	// (DNS, a port not forwarded) does not spend production's rate limits.
	DefaultCA = certmagic.LetsEncryptProductionCA

	// DefaultStorage is tls.acme.storage when it is left out: meant to be a
	// volume, so a restarted or replaced container finds its certificates.
	DefaultStorage = "/var/lib/berth/acme"

	// ALPNProto is the TLS-ALPN-01 protocol (RFC 8737). A connection that
	// negotiated it is the CA validating a name: once the handshake is done
	// it must be closed, never served HTTP.
	ALPNProto = "acme-tls/1"
)

// Options configure a Manager. Every field's zero value is usable except
// Domains, and one of HTTPAddr and HTTPSAddr.
type Options struct {
	// Email is the ACME account's contact: the CA writes there about
	// expiring certificates and policy changes. "": an account without a
	// contact (Let's Encrypt allows it; nobody hears of problems but from
	// berth's log and metrics).
	Email string

	// Domains are the names to get certificates for, one certificate
	// each. Required. A wildcard (*.example.com) is refused: it needs the
	// DNS-01 challenge, which berth cannot answer.
	Domains []string

	// CA is the ACME directory URL. "": DefaultCA (Let's Encrypt
	// production). It must be https unless the host is internal
	// (localhost, a private address).
	CA string

	// CARoots are PEM files of CA certificates to trust, besides the
	// system's, when talking to the CA (a test CA's root, a private CA).
	// nil: the system's roots only.
	CARoots []string

	// CARootPEM is more roots to trust, as PEM: for a caller that read
	// ca_roots itself (the supervisor reads files as root, the proxy runs
	// as app.user). nil: none.
	CARootPEM [][]byte

	// Storage is the directory holding the account, the certificates,
	// their keys and the locks. "": DefaultStorage. Created (0700) if
	// missing; it must be writable by the process's user (see the package
	// comment). Every Manager sharing it takes turns through its locks.
	Storage string

	// HTTPAddr is the address of berth's plain listener, the one the
	// domains' port 80 reaches (":8080" when the container maps 80 to
	// 8080). The CA's HTTP-01 validation arrives there and the listener's
	// handler must call HandleHTTPChallenge first. "": HTTP-01 is not used.
	HTTPAddr string

	// HTTPSAddr is the address of berth's TLS listener, the one the
	// domains' port 443 reaches. The CA's TLS-ALPN-01 validation arrives
	// there; its tls.Config must use GetCertificate and advertise
	// NextProtos. "": TLS-ALPN-01 is not used.
	HTTPSAddr string

	// Logf receives berth's log lines about certificates (obtained,
	// renewed, failed with the fix, no certificate yet) and certmagic's
	// warnings and errors. nil: the standard library's log.Printf.
	Logf func(format string, args ...any)

	// Metrics, when set, exports this Manager's certificates (see
	// Metrics). nil: no metrics.
	Metrics *Metrics

	// Profile is the ACME profile to ask for (Let's Encrypt offers
	// "classic", "tlsserver", "shortlived"). "": the CA's default.
	Profile string

	// RenewalWindowRatio is the part of a certificate's lifetime, at its
	// end, in which it is renewed. 0: 1/3 (a 90-day certificate is
	// renewed 30 days before it expires). The CA's renewal info (ARI)
	// can make a renewal come earlier, never later.
	RenewalWindowRatio float64

	// RenewCheckInterval is how often certificates are checked for
	// renewal (and the CA's renewal info consulted when it is due). 0:
	// 10 minutes. Tests set a second.
	RenewCheckInterval time.Duration

	// OCSPCheckInterval is how often OCSP staples are refreshed, for CAs
	// that still run OCSP. 0: an hour.
	OCSPCheckInterval time.Duration
}

// Manager obtains and renews certificates for its Domains from an ACME CA,
// answers the CA's challenges and hands certificates to TLS handshakes.
// It answers only for its Domains (Manages): the caller keeps its own
// file certificates for other names.
type Manager struct {
	opts     Options
	domains  map[string]bool
	list     []string // normalized, in config order
	storage  *certmagic.FileStorage
	cache    *certmagic.Cache
	cfg      *certmagic.Config
	issuer   *certmagic.ACMEIssuer
	alpn     bool
	http01   bool
	ctx      context.Context
	cancel   context.CancelFunc
	logf     func(string, ...any)
	metrics  *Metrics
	started  atomic.Bool // New has returned: later cache loads are news
	stopOnce sync.Once
	wg       sync.WaitGroup // first orders and the start-up renewal check
	mu       sync.Mutex
	state    map[string]*domainState
}

// domainState is what the Manager learnt from certmagic's events about one
// name: certmagic keeps no error history.
type domainState struct {
	lastErr      string
	lastErrAt    time.Time
	orderStart   time.Time // the order in progress, for its duration
	obtained     time.Time // the last order that succeeded
	obtainTook   time.Duration
	justObtained bool      // cert_obtained came; the cache load after it is ours
	refusedLogAt time.Time // the last "no certificate yet" handshake log
}

// New checks opts, loads the certificates the storage already has (so the
// first handshake after a restart is served, with no order) and starts
// getting the missing ones in the background: HTTP-01 challenges are
// answered meanwhile and TLS handshakes for those names fail at once.
// The listeners named by HTTPAddr and HTTPSAddr must be open already.
func New(opts Options) (*Manager, error) {
	m := &Manager{opts: opts, domains: map[string]bool{}, state: map[string]*domainState{}, logf: opts.Logf, metrics: opts.Metrics}
	if m.logf == nil {
		m.logf = log.Printf
	}
	for _, d := range opts.Domains {
		n := normalize(d)
		switch {
		case n == "":
			return nil, errors.New("acme: an empty name in tls.acme.domains: remove it")
		case strings.Contains(n, "*"):
			return nil, fmt.Errorf("acme: tls.acme.domains: %s: a wildcard certificate needs the DNS-01 challenge, which berth does not answer; list each name instead", d)
		case !certmagic.SubjectQualifiesForCert(n):
			return nil, fmt.Errorf("acme: tls.acme.domains: %q is not a name a certificate can be issued for: use a DNS name like www.example.com", d)
		}
		if !m.domains[n] {
			m.domains[n] = true
			m.list = append(m.list, n)
			m.state[n] = &domainState{}
		}
	}
	if len(m.list) == 0 {
		return nil, errors.New("acme: no domains: set tls.acme.domains to the names to get certificates for")
	}
	if opts.HTTPAddr == "" && opts.HTTPSAddr == "" {
		return nil, errors.New("acme: no listener to answer the CA's challenges on: HTTP-01 needs a plain listener (port 80 outside), TLS-ALPN-01 an https:// one (port 443 outside)")
	}
	ca := opts.CA
	if ca == "" {
		ca = DefaultCA
	}
	roots, err := loadRoots(opts.CARoots, opts.CARootPEM)
	if err != nil {
		return nil, err
	}
	dir := opts.Storage
	if dir == "" {
		dir = DefaultStorage
	}
	if err := checkStorage(dir); err != nil {
		return nil, err
	}

	// certmagic answers challenges with its own listeners unless the port
	// is taken; berth's listener holds it, and the proxy answers through
	// HandleHTTPChallenge and GetCertificate. Checking here turns a
	// Manager made before its listeners into an error, not a certmagic
	// listener on a port no CA connection reaches.
	var listenHost string
	var httpPort, tlsPort int
	if opts.HTTPAddr != "" {
		host, port, err := heldAddr(opts.HTTPAddr, "the plain listener (HTTP-01)")
		if err != nil {
			return nil, err
		}
		listenHost, httpPort, m.http01 = host, port, true
	}
	if opts.HTTPSAddr != "" {
		host, port, err := heldAddr(opts.HTTPSAddr, "the https listener (TLS-ALPN-01)")
		if err != nil {
			return nil, err
		}
		if m.http01 && host != listenHost {
			listenHost = "" // one host for both in certmagic: all addresses still collide
		} else {
			listenHost = host
		}
		tlsPort, m.alpn = port, true
	}

	zl := newZapLogger(m.logf)
	m.storage = &certmagic.FileStorage{Path: dir}
	var cfgp atomic.Pointer[certmagic.Config]
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return cfgp.Load(), nil },
		RenewCheckInterval: opts.RenewCheckInterval,
		OCSPCheckInterval:  opts.OCSPCheckInterval,
		Logger:             zl,
	})
	m.cfg = certmagic.New(m.cache, certmagic.Config{
		RenewalWindowRatio: opts.RenewalWindowRatio,
		OnEvent:            m.onEvent,
		ShouldEmitFunc:     func(ev string) bool { return ev != "tls_get_certificate" },
		DefaultServerName:  m.list[0],
		Storage:            m.storage,
		Logger:             zl,
	})
	m.issuer = certmagic.NewACMEIssuer(m.cfg, certmagic.ACMEIssuer{
		CA:                      ca,
		Email:                   opts.Email,
		Agreed:                  true, // configuring tls.acme is agreeing to the CA's terms
		Profile:                 opts.Profile,
		DisableHTTPChallenge:    !m.http01,
		DisableTLSALPNChallenge: !m.alpn,
		ListenHost:              listenHost,
		AltHTTPPort:             httpPort,
		AltTLSALPNPort:          tlsPort,
		TrustedRoots:            roots,
		Logger:                  zl,
	})
	m.cfg.Issuers = []certmagic.Issuer{m.issuer}
	cfgp.Store(m.cfg)
	m.ctx, m.cancel = context.WithCancel(context.Background())

	var missing []string
	for _, d := range m.list {
		cert, err := m.cfg.CacheManagedCertificate(m.ctx, d)
		switch {
		case err == nil:
			m.logf("acme: %s: certificate from %s, valid until %s", d, dir, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, d)
			m.logf("acme: %s: no certificate yet; ordering one from %s (%s). Until it arrives TLS handshakes for %s fail", d, ca, m.challengesText(), d)
		default:
			// certmagic orders only for a name with nothing stored, and
			// renews only what it can load: this name needs a person.
			site := m.storage.Filename(certmagic.StorageKeys.CertsSitePrefix(m.issuer.IssuerKey(), d))
			m.logf("acme: %s: the stored certificate is unusable (%v): remove %s and restart berth to order a new one; until then TLS handshakes for %s fail", d, err, site, d)
		}
	}
	if m.metrics != nil {
		m.metrics.attach(m)
	}
	// What certmagic's ManageAsync does for a missing certificate, on a
	// goroutine of ours so Stop can wait for it: order with retries (until
	// ctx ends), then load it from storage. A certificate another instance
	// got meanwhile is found under the lock and loaded without an order.
	m.started.Store(true)
	for _, d := range missing {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := m.cfg.ObtainCertAsync(m.ctx, d); err != nil {
				return // cert_failed said why; a cancelled ctx is Stop
			}
			if _, err := m.cfg.CacheManagedCertificate(m.ctx, d); err != nil && m.ctx.Err() == nil {
				m.logf("acme: %s: loading the new certificate from %s: %v", d, dir, err)
			}
		}()
	}
	// Stored certificates are managed already (cached as managed); a
	// renewal check now, not in RenewCheckInterval, catches one that
	// expired while berth was down, and fetches its renewal info.
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.cache.RenewManagedCertificates(m.ctx); err != nil && m.ctx.Err() == nil {
			m.logf("acme: checking stored certificates for renewal: %v", err)
		}
	}()
	return m, nil
}

// Stop ends the renewals and any order in progress (its storage lock is
// released, so another Manager on the storage takes over) and returns when
// the first orders have unwound; a renewal certmagic's maintenance started
// unwinds on its own a moment later. Certificates already handed out keep
// working. It is safe to call more than once.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() {
		m.cancel()
		m.cache.Stop()
		m.wg.Wait()
		if m.metrics != nil {
			m.metrics.detach(m)
		}
	})
}

// Manages says whether name is one of the Manager's domains: the caller
// asks the Manager for those names' certificates and its own file
// certificates for the others.
func (m *Manager) Manages(name string) bool {
	return m != nil && m.domains[normalize(name)]
}

// NextProtos are the ALPN protocols the TLS listener must advertise besides
// its own (h2, http/1.1): without acme-tls/1 there, Go's TLS server refuses
// the CA's TLS-ALPN-01 handshake with no_application_protocol. nil when
// TLS-ALPN-01 is off.
func (m *Manager) NextProtos() []string {
	if m == nil || !m.alpn {
		return nil
	}
	return []string{ALPNProto}
}

// IsChallengeConn says whether a finished handshake was the CA's TLS-ALPN-01
// validation: the caller closes such a connection instead of serving it.
func IsChallengeConn(cs tls.ConnectionState) bool {
	return cs.NegotiatedProtocol == ALPNProto
}

// GetCertificate is a tls.Config.GetCertificate for the Manager's domains:
// the TLS-ALPN-01 challenge certificate when the CA validates, else the
// certificate in force. A renewal swaps it for the next handshakes; open
// connections keep the one they got. A name with no certificate yet fails
// at once (crypto/tls sends an internal_error alert) rather than wait for
// the order. With no SNI, or a name not among Domains (a caller with no
// certificate of its own for it), it answers with the first domain's
// certificate, as nginx's default server does.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	challenge := len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ALPNProto
	name := normalize(hello.ServerName)
	if hello.Conn == nil || (!challenge && name != "" && !m.domains[name]) {
		h := *hello
		if h.Conn == nil {
			// certmagic logs the peer's address and would panic on a
			// hello made up by a caller (a check, a test).
			h.Conn = noConn{}
		}
		if !challenge && !m.domains[name] {
			h.ServerName = "" // certmagic's DefaultServerName: the first domain
		}
		hello = &h
	}
	cert, err := m.cfg.GetCertificate(hello)
	if err == nil && cert != nil && len(cert.Certificate) > 0 {
		return cert, nil
	}
	if challenge {
		return nil, fmt.Errorf("acme: %s: a TLS-ALPN-01 validation with no challenge of ours in progress: %v", name, err)
	}
	if !m.domains[name] {
		name = m.list[0]
	}
	reason := m.noCertReason(name)
	return nil, fmt.Errorf("acme: %s: no certificate yet: %s", name, reason)
}

// HandleHTTPChallenge answers the CA's HTTP-01 validation request for one
// of the Manager's domains, whichever berth instance sharing the storage
// placed the order, and reports whether it did. The plain listener's
// handler calls it before anything else (routes, the redirect to https);
// when it returns false the request is the caller's to serve.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if m == nil || !m.http01 || !certmagic.LooksLikeHTTPChallenge(r) || !m.Manages(hostOnly(r.Host)) {
		return false
	}
	return m.issuer.HandleHTTPChallenge(w, r)
}

// noConn stands for the connection of a ClientHelloInfo that has none.
type noConn struct{ net.Conn }

func (noConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }
func (noConn) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// noCertReason says why a handshake found no certificate, once a minute per
// name in the log too (handshakes can come by the thousand).
func (m *Manager) noCertReason(name string) string {
	m.mu.Lock()
	st := m.state[name]
	reason := "the order from " + m.issuer.CA + " is in progress"
	if st.lastErr != "" {
		reason = fmt.Sprintf("the last order failed %s ago: %s", time.Since(st.lastErrAt).Round(time.Second), st.lastErr)
	}
	logIt := time.Since(st.refusedLogAt) > time.Minute
	if logIt {
		st.refusedLogAt = time.Now()
	}
	m.mu.Unlock()
	if logIt {
		m.logf("acme: %s: TLS handshakes refused: no certificate yet (%s)", name, reason)
	}
	return reason
}

// onEvent keeps what certmagic's events say about each name, for Status,
// the metrics and the log.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	kind := "obtain"
	if renewal {
		kind = "renew"
	}
	switch event {
	case "cert_obtaining":
		m.mu.Lock()
		if st := m.state[name]; st != nil {
			st.orderStart, st.justObtained = time.Now(), false
		}
		m.mu.Unlock()
		if renewal {
			left, _ := data["remaining"].(time.Duration)
			m.logf("acme: %s: renewing the certificate (it expires in %s) with %s", name, human(left), m.issuer.CA)
		} else {
			m.logf("acme: %s: ordering a certificate from %s", name, m.issuer.CA)
		}
	case "cert_obtained":
		m.mu.Lock()
		var took time.Duration
		if st := m.state[name]; st != nil {
			if !st.orderStart.IsZero() {
				took = time.Since(st.orderStart)
			}
			st.lastErr, st.lastErrAt = "", time.Time{}
			st.obtained, st.obtainTook, st.justObtained = time.Now(), took, true
		}
		m.mu.Unlock()
		what := "obtained"
		if renewal {
			what = "renewed"
		}
		m.logf("acme: %s: certificate %s in %s; new TLS handshakes get it", name, what, took.Round(time.Millisecond))
		if m.metrics != nil {
			m.metrics.order(name, kind, "ok")
		}
	case "cert_failed":
		err, _ := data["error"].(error)
		msg := explain(err)
		m.mu.Lock()
		if st := m.state[name]; st != nil {
			st.lastErr, st.lastErrAt = msg, time.Now()
		}
		m.mu.Unlock()
		if m.metrics != nil {
			m.metrics.order(name, kind, "error")
		}
		if renewal {
			m.logf("acme: %s: renewal failed, the current certificate keeps serving until it expires; retrying with backoff: %s", name, msg)
		} else {
			m.logf("acme: %s: order failed, TLS handshakes for it fail until one succeeds; retrying with backoff: %s", name, msg)
		}
	case "cached_managed_cert":
		// After New, a certificate cached with no order of ours before it
		// is one another instance on the storage got (certmagic waited on
		// the lock, then found it there).
		if !m.started.Load() {
			break
		}
		sans, _ := data["sans"].([]string)
		m.mu.Lock()
		for _, n := range sans {
			if st := m.state[n]; st != nil {
				if !st.justObtained {
					m.logf("acme: %s: certificate got by another berth instance sharing %s; loaded from there, no order of ours", n, m.storage.Path)
				}
				st.justObtained = false
			}
		}
		m.mu.Unlock()
	}
	return nil
}

// human is a duration for the log: days past two of them.
func human(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
	return d.Round(time.Second).String()
}

// explain puts the fix after the CA's or the network's error.
func explain(err error) string {
	if err == nil {
		return "unknown error"
	}
	msg := err.Error()
	var prob acme.Problem
	if errors.As(err, &prob) {
		switch {
		case strings.HasSuffix(prob.Type, ":unauthorized"), strings.HasSuffix(prob.Type, ":connection"),
			strings.HasSuffix(prob.Type, ":dns"), strings.HasSuffix(prob.Type, ":incorrectResponse"),
			strings.HasSuffix(prob.Type, ":tls"):
			return msg + " (the CA could not validate the name: its DNS must point at this host, and port 80 must reach berth's plain listener or port 443 its https one)"
		case strings.HasSuffix(prob.Type, ":rateLimited"):
			return msg + " (the CA's rate limit: berth retries later by itself; share tls.acme.storage between replicas so they do not order one each)"
		case strings.HasSuffix(prob.Type, ":rejectedIdentifier"), strings.HasSuffix(prob.Type, ":caa"):
			return msg + " (the CA will not issue for this name: check tls.acme.domains and the domain's CAA records)"
		}
		return msg
	}
	var nerr net.Error
	var oerr *net.OpError
	if errors.As(err, &nerr) || errors.As(err, &oerr) || strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host") {
		return msg + " (the CA cannot be reached: check tls.acme.ca and that the container can reach it over HTTPS)"
	}
	if strings.Contains(msg, "x509:") || strings.Contains(msg, "certificate signed by unknown authority") {
		return msg + " (the CA's own certificate is not trusted: add its root to tls.acme.ca_roots)"
	}
	return msg
}

// challengesText names the challenges on offer, for the boot log.
func (m *Manager) challengesText() string {
	var parts []string
	if m.http01 {
		parts = append(parts, "HTTP-01 answered on "+m.opts.HTTPAddr)
	}
	if m.alpn {
		parts = append(parts, "TLS-ALPN-01 answered on "+m.opts.HTTPSAddr)
	}
	return strings.Join(parts, ", ")
}

// heldAddr checks that something (berth's listener) holds addr, so
// certmagic's attempt to listen there fails with EADDRINUSE and leaves the
// challenges to berth.
func heldAddr(addr, what string) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("acme: %s address %q: %v: give host:port or :port", what, addr, err)
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("acme: %s address %q: the port must be a number from 1 to 65535", what, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return "", 0, fmt.Errorf("acme: nothing listens on %s, %s: the CA's validation would reach no one; make the Manager after the listeners are open", addr, what)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		dial := addr
		if host == "" || net.ParseIP(host).IsUnspecified() {
			dial = net.JoinHostPort("127.0.0.1", ps)
		}
		c, derr := net.DialTimeout("tcp", dial, time.Second)
		if derr != nil {
			return "", 0, fmt.Errorf("acme: %s on %s: cannot tell whether it listens (%v; %v)", what, addr, err, derr)
		}
		c.Close()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = ""
	}
	return host, port, nil
}

// loadRoots is the system's roots plus the ca_roots files and PEM.
func loadRoots(files []string, pems [][]byte) (*x509.CertPool, error) {
	if len(files) == 0 && len(pems) == 0 {
		return nil, nil // certmagic's default: the system's
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("acme: tls.acme.ca_roots: %v", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("acme: tls.acme.ca_roots: %s has no PEM certificate in it: give the CA's root certificate file", f)
		}
	}
	for i, pem := range pems {
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("acme: tls.acme.ca_roots[%d]: no PEM certificate in it: give the CA's root certificate file", i)
		}
	}
	return pool, nil
}

// checkStorage creates dir if needed and proves this process can write
// there, before an order spends a CA's rate limit on a certificate that
// could not be kept.
func checkStorage(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("acme: tls.acme.storage %q: give an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("acme: tls.acme.storage %s: %v: %s", dir, err, storageFix(dir))
	}
	f, err := os.CreateTemp(dir, ".berth-check-*")
	if err != nil {
		return fmt.Errorf("acme: tls.acme.storage %s is not writable: %v: %s", dir, err, storageFix(dir))
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return nil
}

func storageFix(dir string) string {
	return fmt.Sprintf("this process runs as uid %d; give it the directory (chown -R %d %s && chmod 700 %s), or mount a volume there it owns", os.Getuid(), os.Getuid(), dir, dir)
}

func normalize(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// hostOnly strips the port from a Host header.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}
