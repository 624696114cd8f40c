package proxy

// tls.go: TLS listeners. berth does the handshake itself (crypto/tls) and
// dispatches on ALPN: "h2" goes to golang.org/x/net/http2's ServeConn with
// the same handler (HTTP/2 frames its own messages, and x/net/http2 checks
// content-length against the DATA it gets), anything else is HTTP/1.1 and
// is served by conn.go like a plain connection. The connection's
// TLS-ness travels in connInfo, so the app sees wsgi.url_scheme https and
// HTTPS=on either way.
//
// Certificates come from the config (the supervisor reads the files and
// sends their PEM) and are picked per handshake from the settings in
// force, so a renewed certificate is served to the next connection while
// open ones keep theirs.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/proxy/h2guard"
	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
)

// handshakeTimeout bounds a TLS handshake (nginx ssl_handshake_timeout is
// 60 s; a client that has not finished in 10 s is not a browser).
const handshakeTimeout = 10 * time.Second

// tlsSettings is the TLS part of settings, compiled.
type tlsSettings struct {
	certs    []*tls.Certificate // chosen by SNI; [0] the default
	redirect bool
	port     string   // ":8443" for redirects; "" for 443
	hsts     []string // the Strict-Transport-Security value; nil: none
	altSvc   []string // HTTP/3's Alt-Svc; nil: tls.http3 is off
}

func compileTLS(t *control.TLS) (*tlsSettings, error) {
	if t == nil {
		return nil, nil
	}
	ts := &tlsSettings{redirect: t.RedirectHTTP}
	for i, c := range t.Certificates {
		pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("proxy config: tls.certificates[%d] (%s, %s): %w", i, c.CertFile, c.KeyFile, err)
		}
		ts.certs = append(ts.certs, &pair)
	}
	if t.HTTPSPort != 0 && t.HTTPSPort != 443 {
		ts.port = ":" + strconv.Itoa(t.HTTPSPort)
	}
	if t.HTTP3 && t.HTTP3Port > 0 {
		ts.altSvc = altSvcValue(t.HTTP3Port)
	}
	if secs := int64(time.Duration(t.HSTS) / time.Second); secs > 0 {
		ts.hsts = []string{"max-age=" + strconv.FormatInt(secs, 10)}
	}
	return ts, nil
}

// mozillaIntermediate is the TLS 1.2 cipher list of Mozilla's
// "intermediate" profile that Go implements (it has no DHE); TLS 1.3
// suites are not configurable in Go and are all intermediate-grade.
var mozillaIntermediate = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
}

// newTLSConfig is the one tls.Config every TLS listener uses; the
// certificate comes from the settings of the moment.
func (s *Server) newTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   mozillaIntermediate,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.certificate,
		// ACME: the CA's TLS-ALPN-01 hello (acme-tls/1 alone) gets the
		// challenge's config (acme.go); every other hello this one.
		GetConfigForClient: s.acmeConfigForClient,
	}
}

// certificate picks the certificate for a handshake: the first whose names
// and key type suit the client (SNI), else the first one.
func (s *Server) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	ts := s.cfg.Load().tls
	if c, err, ok := s.acmeCertificate(hello, ts != nil && len(ts.certs) > 0); ok { // ACME: its names, or all without files
		return c, err
	}
	if ts == nil || len(ts.certs) == 0 {
		return nil, errors.New("no certificate is configured (tls.certificates)")
	}
	if len(ts.certs) > 1 && hello.ServerName != "" {
		for _, c := range ts.certs {
			if hello.SupportsCertificate(c) == nil {
				return c, nil
			}
		}
	}
	return ts.certs[0], nil
}

// ServeTLS accepts TLS connections on l until Shutdown, serving HTTP/2 or
// HTTP/1.1 as each client's ALPN says; it then returns
// http.ErrServerClosed. It may be called for several listeners at once.
// Handshakes run on each connection's goroutine, so a slow client holds no
// one else up.
func (s *Server) ServeTLS(l net.Listener) error {
	return s.serveListener(l, s.handshake)
}

func (s *Server) handshake(c net.Conn) {
	tc := tls.Server(c, s.tlsConf)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.edge.handshakeErrors.Inc()
		c.Close()
		return
	}
	quickAck(c)
	if acme.IsChallengeConn(tc.ConnectionState()) { // ACME: a TLS-ALPN-01 validation (RFC 8737) gets no HTTP
		tc.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == http2.NextProtoTLS {
		s.serveH2(tc)
		return
	}
	s.serveConn(tc)
}

// h2conns tracks the HTTP/2 connections, which net/http does not: Shutdown
// waits for them and closes what is left at its deadline.
type h2conns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	shut  bool
}

func (s *Server) serveH2(tc *tls.Conn) {
	h := &s.h2c
	h.mu.Lock()
	if h.shut {
		h.mu.Unlock()
		tc.Close()
		return
	}
	h.conns[tc] = struct{}{}
	h.wg.Add(1)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.conns, tc)
		h.mu.Unlock()
		h.wg.Done()
	}()
	ci := newConnInfo(tc.RemoteAddr(), tc.LocalAddr())
	ci.tls = true
	// x/net bounds a header block by bytes, not frames, and has no flood
	// rule of its own: the guard reads the client's frames on the way.
	gc := h2guard.Wrap(tc, h2guard.Limits{BlockTimeout: readHeaderTimeout}, func(v h2guard.Violation) {
		s.edge.h2Violations.WithLabelValues(v.Reason).Inc()
		s.logf("http2 %s from %s: %s; sent GOAWAY (ENHANCE_YOUR_CALM) and closed the connection", v.Reason, tc.RemoteAddr(), v.Detail)
	})
	s.h2.ServeConn(gc, &http2.ServeConnOpts{
		Context:    context.WithValue(context.Background(), connKey{}, ci),
		BaseConfig: s.http,
		Handler:    s,
	})
}

// shutdownH2 waits for the HTTP/2 connections (told to go away by the
// http.Server's shutdown hook) until ctx ends, then closes them.
func (s *Server) shutdownH2(ctx context.Context) error {
	h := &s.h2c
	h.mu.Lock()
	h.shut = true
	h.mu.Unlock()
	idle := make(chan struct{})
	go func() { h.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	<-idle
	return ctx.Err()
}

// newH2 sets up HTTP/2 beside s.http: the same idle timeout and header
// limit, and graceful shutdown through s.http's shutdown hooks.
func (s *Server) newH2() {
	// 16 KiB frames, as nginx reads them: x/net then refuses larger ones
	// with FRAME_SIZE_ERROR (RFC 9113 §4.2) instead of advertising 1 MiB.
	s.h2 = &http2.Server{IdleTimeout: idleTimeout, MaxReadFrameSize: 16 << 10}
	s.h2c.conns = map[net.Conn]struct{}{}
	s.tlsConf = s.newTLSConfig()
	if err := http2.ConfigureServer(s.http, s.h2); err != nil {
		panic(err) // only for a CipherSuites list without the HTTP/2 ones: a bug
	}
}

// redirectHTTPS answers a plain request with 308 to its https:// URL: the
// request's host (its port dropped) and the TLS listener's port.
func redirectHTTPS(rs *reqState, r *http.Request, ts *tlsSettings) response {
	host := hostOnly(r.Host)
	if host == "" {
		return berthError(rs, http.StatusBadRequest, "berth: this server answers https:// only, and the request has no Host to redirect to\n")
	}
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		uri = "/"
	}
	rs.rw.Header()["Location"] = []string{"https://" + host + ts.port + uri}
	return berthError(rs, http.StatusPermanentRedirect, "berth: use https\n")
}

// quickAck sends now the ACK the kernel holds back for the client's last
// handshake record. A Go TLS 1.3 server sends its session tickets in its
// first flight, so after the client's Finished it has nothing to send
// until the request comes; a client without TCP_NODELAY (many
// service-to-service clients) holds its request back until that Finished
// is acknowledged (Nagle), and the kernel delays the ACK (up to 40 ms).
// OpenSSL servers send their tickets after the Finished, which carries the
// ACK. TCP_QUICKACK flushes a scheduled ACK at once.
func quickAck(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	if raw, err := sc.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
}
