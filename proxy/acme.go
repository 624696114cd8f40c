package proxy

// acme.go: certificates from an ACME CA (tls.acme), got and renewed in this
// process by package acme (acme/doc.go says why the proxy and not the
// supervisor runs it; acme/WIRING.md is the plan this follows). The hooks
// elsewhere are one line each, marked "ACME": the challenge before route
// (pipeline.go), the certificate and the acme-tls/1 config per handshake
// and the close after a validation's handshake (tls.go), the Manager's stop
// at shutdown and its status in the stats (server.go, events.go).

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/control"
)

// acmeState is the Manager in force and what it was made from. A reload
// that leaves tls.acme as it was keeps the Manager (and its renewals,
// backoff and orders in flight); one that changes it makes a new one on
// the same storage and stops the old, whose lock the new one then takes.
type acmeState struct {
	mgr     atomic.Pointer[acme.Manager]
	mu      sync.Mutex // SetConfig's: making and swapping Managers
	key     string     // the control.ACME the Manager was made from, as JSON
	metrics *acme.Metrics
	once    sync.Once
	// httpAddr and httpsAddr are the first plain and TLS TCP listeners,
	// where the CA's HTTP-01 and TLS-ALPN-01 validations arrive.
	httpAddr, httpsAddr string
	// challengeConf is the tls.Config of a TLS-ALPN-01 handshake: only
	// acme-tls/1, the Manager's challenge certificate.
	challengeConf atomic.Pointer[tls.Config]
}

// SetACMEListeners names the listeners the CA's validations reach: the
// first plain TCP one (HTTP-01) and the first TLS one (TLS-ALPN-01), as
// host:port; "" for none. Main calls it before the first config, with the
// addresses of the sockets it inherited (they must be open: the Manager
// checks that they hold their ports so certmagic opens none of its own).
func (s *Server) SetACMEListeners(httpAddr, httpsAddr string) {
	s.acme.mu.Lock()
	s.acme.httpAddr, s.acme.httpsAddr = httpAddr, httpsAddr
	s.acme.mu.Unlock()
}

// applyACME makes, keeps or stops the Manager for the config c. It runs
// before the settings are swapped in, so a Manager that cannot be made
// refuses the whole config and the old one (with its Manager) stays.
func (s *Server) applyACME(c control.Proxy) error {
	var want *control.ACME
	if c.TLS != nil {
		want = c.TLS.ACME
	}
	a := &s.acme
	a.mu.Lock()
	defer a.mu.Unlock()
	key := ""
	if want != nil {
		raw, err := json.Marshal(want)
		if err != nil {
			return fmt.Errorf("proxy config: tls.acme: %w", err)
		}
		key = string(raw)
	}
	if key == a.key {
		return nil
	}
	var m *acme.Manager
	if want != nil {
		a.once.Do(func() {
			a.metrics = acme.NewMetrics()
			s.opts.Registry.MustRegister(a.metrics)
		})
		var err error
		m, err = acme.New(acme.Options{
			Email: want.Email, Domains: want.Domains, CA: want.CA, CARootPEM: want.CARootPEM, Storage: want.Storage,
			HTTPAddr: a.httpAddr, HTTPSAddr: a.httpsAddr,
			Logf:               s.logf,
			Metrics:            a.metrics,
			RenewCheckInterval: time.Duration(want.RenewCheck),
		})
		if err != nil {
			return fmt.Errorf("proxy config: tls.acme: %w", err)
		}
		conf := s.tlsConf.Clone()
		conf.NextProtos = []string{acme.ALPNProto}
		conf.GetCertificate = m.GetCertificate
		conf.GetConfigForClient = nil
		a.challengeConf.Store(conf)
	}
	a.key = key
	if old := a.mgr.Swap(m); old != nil {
		// Stop may wait for a CA request in flight (30 s at most); the
		// new Manager serves meanwhile.
		go old.Stop()
	}
	return nil
}

// acmeCertificate answers a handshake for a name the Manager has (also the
// CA's TLS-ALPN-01 validation), and for every handshake when there is no
// file certificate at all; ok false leaves it to tls.certificates.
func (s *Server) acmeCertificate(hello *tls.ClientHelloInfo, haveFiles bool) (c *tls.Certificate, err error, ok bool) {
	m := s.acme.mgr.Load()
	if m == nil {
		return nil, nil, false
	}
	if m.Manages(hello.ServerName) || !haveFiles {
		c, err = m.GetCertificate(hello)
		return c, err, true
	}
	return nil, nil, false
}

// acmeConfigForClient is the TLS config's GetConfigForClient: a hello that
// offers only acme-tls/1 is the CA validating a name, answered with the
// challenge certificate; any other gets the listener's config (nil).
func (s *Server) acmeConfigForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if len(hello.SupportedProtos) != 1 || hello.SupportedProtos[0] != acme.ALPNProto || s.acme.mgr.Load() == nil {
		return nil, nil
	}
	return s.acme.challengeConf.Load(), nil
}

// acmeChallenge answers the CA's HTTP-01 validation, before any route and
// before the redirect to https (at boot there is no certificate to
// redirect to). The request is logged and counted as any other.
func (s *Server) acmeChallenge(rs *reqState, r *http.Request) bool {
	m := s.acme.mgr.Load()
	return m != nil && m.HandleHTTPChallenge(&rs.rw, r)
}

// acmeStatus is each domain's certificate for the stats; nil without
// tls.acme. It reads a small file per domain: the stats' rate, not a
// request's.
func (s *Server) acmeStatus() []acme.DomainStatus {
	if m := s.acme.mgr.Load(); m != nil {
		return m.Status()
	}
	return nil
}

// stopACME ends renewals and any order in flight when the proxy stops:
// its storage lock is released, so the next proxy or a replica takes over.
func (s *Server) stopACME() {
	s.acme.mu.Lock()
	m := s.acme.mgr.Swap(nil)
	s.acme.key = ""
	s.acme.mu.Unlock()
	if m != nil {
		m.Stop()
	}
}
