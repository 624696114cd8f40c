package proxy

// h3.go: HTTP/3 (tls.http3) with quic-go, on UDP sockets the supervisor
// opened beside each https:// listener, one per proxy process on the same
// port (proxy/quicsteer says why and how datagrams find their proxy). A
// request over HTTP/3 is handed to ServeHTTP like one over HTTP/1.1 or
// HTTP/2: the same pipeline, limits, access log ($server_protocol
// HTTP/3.0) and metrics. The hooks elsewhere are marked "HTTP/3": the
// drain in Shutdown (server.go), Alt-Svc on TLS responses (server.go's
// stamp, set in route).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/proxy/quicsteer"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3State is the HTTP/3 server and the QUIC transports it serves on.
type h3State struct {
	mu     sync.Mutex
	srv    *http3.Server
	trs    []*quic.Transport
	lns    []*quic.Listener
	closed bool
	conns  map[*h3Conn]struct{} // open connections, for the drain
}

// h3Conn is one HTTP/3 connection and its requests in progress.
type h3Conn struct {
	c      *quic.Conn
	active atomic.Int32
}

type h3ConnKey struct{}

// h3DrainGrace is how long a drain leaves an idle HTTP/3 connection after
// GOAWAY before closing it: a request the client sent before the GOAWAY
// reached it is in progress by then. quic-go's clients close such a
// connection themselves; a client that vanished (a laptop put to sleep)
// would otherwise hold the drain until its idle timeout, as an idle
// keep-alive connection would, which net/http closes at once.
const h3DrainGrace = time.Second

// cidGen issues this proxy's connection IDs, tagged for the steering
// program the supervisor attached to the socket's reuseport group.
type cidGen struct{ g quicsteer.Generator }

func (c cidGen) GenerateConnectionID() (quic.ConnectionID, error) {
	b, err := c.g.GenerateConnectionID()
	if err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(b), nil
}

func (c cidGen) ConnectionIDLen() int { return c.g.ConnectionIDLen() }

// ServeHTTP3 serves HTTP/3 on pc, a UDP socket, until Shutdown; it then
// returns http.ErrServerClosed. tag is this proxy's connection ID tag
// (quicsteer.Tag of its number). It may be called for several sockets.
func (s *Server) ServeHTTP3(pc net.PacketConn, tag byte) error {
	h := &s.h3
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return http.ErrServerClosed
	}
	if h.srv == nil {
		h.conns = map[*h3Conn]struct{}{}
		h.srv = &http3.Server{
			Handler:        h3Handler{s},
			MaxHeaderBytes: maxHeaderBytes,
			IdleTimeout:    idleTimeout,
			ConnContext:    s.h3ConnContext,
			// quic-go logs at debug level only what berth's own log
			// and metrics say better.
			Logger: slog.New(slog.DiscardHandler),
		}
	}
	tr := &quic.Transport{Conn: pc, ConnectionIDGenerator: cidGen{quicsteer.Generator{Tag: tag}}}
	h.trs = append(h.trs, tr)
	srv := h.srv
	h.mu.Unlock()
	// No 0-RTT: early data can be replayed, and the pipeline has no way
	// to tell an app that a POST may arrive twice (nginx's ssl_early_data
	// is off by default for the same reason).
	ln, err := tr.Listen(http3.ConfigureTLSConfig(s.tlsConf), &quic.Config{
		MaxIdleTimeout:       idleTimeout,
		HandshakeIdleTimeout: handshakeTimeout,
		MaxIncomingStreams:   250, // as x/net's HTTP/2 default
	})
	if err != nil {
		return fmt.Errorf("http3 on %s: %w", pc.LocalAddr(), err)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	h.lns = append(h.lns, ln)
	h.mu.Unlock()
	err = srv.ServeListener(ln)
	ln.Close()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) {
		return http.ErrServerClosed
	}
	return err
}

// h3ConnContext gives an HTTP/3 connection the connInfo every front
// gives its connections (the client's address and port, and TLS), and
// tracks it for the drain until it closes.
func (s *Server) h3ConnContext(ctx context.Context, c *quic.Conn) context.Context {
	ci := newConnInfo(udpAsTCP(c.RemoteAddr()), udpAsTCP(c.LocalAddr()))
	ci.tls = true
	hc := &h3Conn{c: c}
	h := &s.h3
	h.mu.Lock()
	h.conns[hc] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(c.Context(), func() {
		h.mu.Lock()
		delete(h.conns, hc)
		h.mu.Unlock()
	})
	return context.WithValue(context.WithValue(ctx, connKey{}, ci), h3ConnKey{}, hc)
}

// h3Handler counts each connection's requests in progress around
// ServeHTTP, so a drain knows which connections are idle.
type h3Handler struct{ s *Server }

func (h h3Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if hc, ok := r.Context().Value(h3ConnKey{}).(*h3Conn); ok {
		hc.active.Add(1)
		defer hc.active.Add(-1)
	}
	h.s.ServeHTTP(w, r)
}

func udpAsTCP(a net.Addr) net.Addr {
	if u, ok := a.(*net.UDPAddr); ok {
		return &net.TCPAddr{IP: u.IP, Port: u.Port, Zone: u.Zone}
	}
	return a
}

// shutdownH3 starts HTTP/3's drain at once, beside the other fronts': no
// new connection is accepted, each open one gets GOAWAY, its requests in
// flight finish (until ctx ends; then the rest are closed). The returned
// channel gives the result.
func (s *Server) shutdownH3(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	h := &s.h3
	h.mu.Lock()
	h.closed = true
	srv, trs := h.srv, h.trs
	// Closed now, not when srv.Shutdown gets to it: from here a new
	// connection's Initial is dropped (quic-go answers no handshake).
	for _, ln := range h.lns {
		ln.Close()
	}
	h.mu.Unlock()
	if srv == nil {
		done <- nil
		return done
	}
	stopped := make(chan struct{})
	go func() {
		err := srv.Shutdown(ctx)
		close(stopped)
		for _, tr := range trs {
			tr.Close()
		}
		done <- err
	}()
	go func() {
		// Idle connections are closed once GOAWAY has had time to
		// arrive; one with requests in progress is closed when they end.
		grace := time.NewTimer(h3DrainGrace)
		defer grace.Stop()
		select {
		case <-grace.C:
		case <-stopped:
			return
		}
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			h.mu.Lock()
			for hc := range h.conns {
				if hc.active.Load() == 0 {
					hc.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
				}
			}
			h.mu.Unlock()
			select {
			case <-t.C:
			case <-stopped:
				return
			}
		}
	}()
	return done
}

// altSvcValue is the Alt-Svc that announces HTTP/3 on port: browsers try
// it for a day, and fall back to TCP when UDP does not get through.
func altSvcValue(port int) []string {
	return []string{fmt.Sprintf(`h3=":%d"; ma=86400`, port)}
}
