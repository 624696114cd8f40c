package proxy

// upstreams.go: groups of remote servers (config upstreams:), their state
// across reloads, passive health, DNS re-resolution and pooled
// connections. Picking a server is balance.go; the exchange upexchange.go;
// active checks uphealth.go.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/control"
)

const (
	protoHTTP uint8 = iota
	protoUwsgi
)

// resolveTimeout bounds one DNS lookup of a server name.
const resolveTimeout = 2 * time.Second

// upstreams is every group the proxy knows, by name. Groups keep their
// identity, servers and counters across config swaps; a group left out of
// a new config is closed (its requests in flight finish).
type upstreams struct {
	mu     sync.Mutex
	groups map[string]*group
	logf   func(format string, args ...any)
	m      *upMetrics
	closed bool
	// lookup resolves a host name; tests replace it.
	lookup func(ctx context.Context, host string) ([]string, error)
}

func newUpstreams(m *upMetrics, logf func(string, ...any)) *upstreams {
	u := &upstreams{groups: map[string]*group{}, logf: logf, m: m, lookup: net.DefaultResolver.LookupHost}
	m.ups = u
	return u
}

// group is one upstream group. Its fields after mu are guarded by mu; cfg
// and the compiled settings are replaced whole on a reload.
type group struct {
	name string
	ups  *upstreams

	// set is what a request reads without the lock.
	set atomic.Pointer[groupSet]

	mu      sync.Mutex
	cfg     control.Upstream
	method  uint8
	servers []*server
	peers   []*peer // every server's resolved addresses, config order
	ring    []ringPoint
	tokens  float64 // retry budget
	closed  bool
	stop    chan struct{} // closes the group's resolver and checker
	bg      sync.WaitGroup
}

// groupSet is a group's settings as one request uses them, swapped whole.
type groupSet struct {
	cfg   control.Upstream
	proto uint8
	key   hashKey // nil unless method hash
}

// server is one configured server entry: one peer per address it stands
// for (one for an IP address or a unix socket, one per A/AAAA record of a
// DNS name).
type server struct {
	cfg   control.UpstreamServer
	host  string // DNS name; "" for an IP address or a unix socket
	port  string
	peers []*peer
}

// peer is one address requests are sent to. Fields after srv are guarded
// by the group's mu.
type peer struct {
	g       *group
	network string // "tcp" or "unix"
	addr    string // dial address
	label   string // for logs and metrics: the configured address, plus the resolved one for names

	srv        *server
	weight     int
	current    int // smooth round robin
	inflight   int
	fails      int
	firstFail  int64 // unix nanos of the first failure of the current window
	downUntil  int64 // passive health: out until then
	unhealthy  bool  // active health
	hcFails    int
	hcPasses   int
	removed    bool
	idle       []*pconn // LIFO
	requests   int64
	failures   int64
	latency    int64 // moving average, microseconds
	stale      int   // pooled connections found closed in a row
	noKeepalve bool  // it closes after every response: stop pooling

	obs peerMetrics
}

// usable says whether p may be picked now, its connection cap aside. A
// group of one server ignores passive health, as nginx does: there is
// nowhere else to go.
func (p *peer) usable(now int64, single bool) bool {
	return !p.removed && !p.srv.cfg.Down && !p.unhealthy && (single || p.downUntil <= now)
}

// state names p's state for /status and metrics.
func (p *peer) state(now int64) string {
	switch {
	case p.srv.cfg.Down:
		return "down"
	case p.unhealthy:
		return "unhealthy"
	case p.downUntil > now && len(p.g.peers) > 1:
		return "failed"
	case p.srv.cfg.Backup:
		return "backup"
	}
	return "up"
}

// pconn is one connection to a peer, owned by one request at a time.
type pconn struct {
	c net.Conn
	sockIO
	idleSince int64
	reused    bool
}

func (c *pconn) close() { c.c.Close() }

// dial opens a connection to p within timeout.
func (p *peer) dial(timeout time.Duration) (*pconn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial(p.network, p.addr)
	if err != nil {
		return nil, err
	}
	u := &pconn{c: c}
	if u.sockIO, err = newSockIO(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("connection to %s: %w", p.addr, err)
	}
	u.br = bufio.NewReaderSize(&u.cnt, upstreamReadBuf) // u.cnt's final address
	return u, nil
}

// validateUpstreams checks what compile cannot: the groups and the routes
// naming them. The supervisor validated the same config; an error here
// means the two disagree.
func validateUpstreams(c control.Proxy) error {
	for name, u := range c.Upstreams {
		switch u.Method {
		case "round_robin", "least_conn", "":
		case "hash":
			if _, ok := compileKey(u.Hash); !ok || u.Hash == "" {
				return fmt.Errorf("proxy config: upstream %s: hash key %q: use $remote_addr, $request_uri, $http_NAME, ...", name, u.Hash)
			}
		default:
			return fmt.Errorf("proxy config: upstream %s: method %q: use round_robin, least_conn or hash", name, u.Method)
		}
		switch u.Protocol {
		case "http", "uwsgi", "":
		default:
			return fmt.Errorf("proxy config: upstream %s: protocol %q: use http or uwsgi", name, u.Protocol)
		}
		if len(u.Servers) == 0 {
			return fmt.Errorf("proxy config: upstream %s has no server", name)
		}
		for _, s := range u.Servers {
			if _, _, _, err := splitAddress(s.Address); err != nil {
				return fmt.Errorf("proxy config: upstream %s: %w", name, err)
			}
		}
	}
	for _, r := range c.Routes {
		if !strings.HasPrefix(r.URL, "/") {
			return fmt.Errorf("proxy config: route %q: the url must start with /", r.URL)
		}
		if _, ok := c.Upstreams[r.Upstream]; !ok {
			return fmt.Errorf("proxy config: route %s: no upstream group is named %q", r.URL, r.Upstream)
		}
	}
	return nil
}

// splitAddress reads "host:port" or "unix:/path".
func splitAddress(a string) (network, host, port string, err error) {
	if path, ok := strings.CutPrefix(a, "unix:"); ok && path != "" {
		return "unix", path, "", nil
	}
	host, port, err = net.SplitHostPort(a)
	if err != nil || host == "" || port == "" {
		return "", "", "", fmt.Errorf("server address %q: use host:port or unix:/path", a)
	}
	return "tcp", host, port, nil
}

// apply reconciles the groups with c (already validated) and returns the
// compiled routes.
func (u *upstreams) apply(c control.Proxy) []route {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	for name, g := range u.groups {
		if _, ok := c.Upstreams[name]; !ok {
			g.close()
			delete(u.groups, name)
			u.logf("upstream %s removed; its requests in flight finish", name)
		}
	}
	names := make([]string, 0, len(c.Upstreams))
	for name := range c.Upstreams {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		g := u.groups[name]
		if g == nil {
			g = &group{name: name, ups: u, tokens: retryReserve}
			u.groups[name] = g
		}
		g.update(c.Upstreams[name])
	}
	var routes []route
	for _, r := range c.Routes {
		routes = append(routes, route{url: r.URL, g: u.groups[r.Upstream]})
	}
	return routes
}

// route sends a URL prefix to a group.
type route struct {
	url string
	g   *group
}

// route returns the group for normalized path p: the first route whose
// URL is a prefix of p at a segment boundary (/api matches /api and
// /api/x, not /apix), or nil for the local workers.
func (st *settings) route(p string) *group {
	for i := range st.routes {
		rt := &st.routes[i]
		if !strings.HasPrefix(p, rt.url) {
			continue
		}
		if rest := p[len(rt.url):]; rest != "" && rest[0] != '/' && !strings.HasSuffix(rt.url, "/") {
			continue
		}
		return rt.g
	}
	return nil
}

// update applies a group's new settings. Servers are matched by address:
// a kept server keeps its peers, counters, health and pooled connections.
func (g *group) update(cfg control.Upstream) {
	if g.stop != nil {
		close(g.stop)
		g.bg.Wait()
	}
	// A name is resolved before the lock, so the group never waits on DNS.
	resolved := map[string][]string{}
	g.mu.Lock()
	known := map[string]*server{}
	for _, s := range g.servers {
		known[s.cfg.Address] = s
	}
	g.mu.Unlock()
	for _, sc := range cfg.Servers {
		if known[sc.Address] != nil {
			continue
		}
		if _, host, _, err := splitAddress(sc.Address); err == nil && !isIPOrUnix(sc.Address, host) {
			addrs, err := g.resolve(host)
			if err != nil {
				g.ups.logf("upstream %s: server %s: %v; retried every %s", g.name, sc.Address, err, time.Duration(cfg.Resolve))
			}
			resolved[sc.Address] = addrs
		}
	}

	gs := &groupSet{cfg: cfg, proto: protoHTTP}
	if cfg.Protocol == "uwsgi" {
		gs.proto = protoUwsgi
	}
	g.mu.Lock()
	g.cfg = cfg
	g.method = methodRoundRobin
	switch cfg.Method {
	case "least_conn":
		g.method = methodLeastConn
	case "hash":
		g.method = methodHash
		gs.key, _ = compileKey(cfg.Hash)
	}
	g.set.Store(gs)
	var servers []*server
	for _, sc := range cfg.Servers {
		s := known[sc.Address]
		if s == nil {
			network, host, port, _ := splitAddress(sc.Address)
			s = &server{port: port}
			switch {
			case network == "unix":
				s.peers = []*peer{g.newPeerLocked(s, "unix", host, sc.Address)}
			case isIPOrUnix(sc.Address, host):
				s.peers = []*peer{g.newPeerLocked(s, "tcp", sc.Address, sc.Address)}
			default:
				s.host = host
				for _, a := range resolved[sc.Address] {
					addr := net.JoinHostPort(a, port)
					s.peers = append(s.peers, g.newPeerLocked(s, "tcp", addr, sc.Address+"="+addr))
				}
			}
		}
		delete(known, sc.Address)
		s.cfg = sc
		for _, p := range s.peers {
			p.weight = sc.Weight
			if p.weight < 1 {
				p.weight = 1
			}
			if sc.Down {
				p.closeIdleLocked()
			}
		}
		servers = append(servers, s)
	}
	for _, s := range known { // servers the new config left out
		for _, p := range s.peers {
			g.removePeerLocked(p)
		}
	}
	g.servers = servers
	g.rebuildLocked()
	if cfg.Keepalive == 0 {
		for _, p := range g.peers {
			p.closeIdleLocked()
		}
	}
	g.stop = make(chan struct{})
	stop := g.stop
	g.mu.Unlock()

	needResolve := false
	for _, s := range servers {
		if s.host != "" {
			needResolve = true
		}
	}
	if needResolve {
		g.bg.Add(1)
		go g.resolveLoop(stop, time.Duration(cfg.Resolve))
	}
	if cfg.HealthPath != "" {
		g.bg.Add(1)
		go g.healthLoop(stop, cfg)
	} else {
		g.mu.Lock()
		for _, p := range g.peers {
			p.unhealthy, p.hcFails, p.hcPasses = false, 0, 0
		}
		g.mu.Unlock()
	}
}

func isIPOrUnix(addr, host string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

func (g *group) newPeerLocked(s *server, network, addr, label string) *peer {
	p := &peer{g: g, srv: s, network: network, addr: addr, label: label}
	p.obs = g.ups.m.peer(g.name, label)
	return p
}

// removePeerLocked takes p out for good: its pooled connections close,
// its requests in flight finish.
func (g *group) removePeerLocked(p *peer) {
	p.removed = true
	p.closeIdleLocked()
	g.ups.m.forget(g.name, p.label)
}

// rebuildLocked recomputes the flat peer list and the hash ring.
func (g *group) rebuildLocked() {
	g.peers = g.peers[:0:0]
	for _, s := range g.servers {
		g.peers = append(g.peers, s.peers...)
	}
	g.ring = nil
	if g.method == methodHash {
		g.ring = buildRing(g.peers)
	}
}

func (g *group) resolve(host string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := g.ups.lookup(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve %s: no address", host)
	}
	slices.Sort(addrs)
	return addrs, nil
}

// resolveLoop looks the group's DNS names up again every interval, so a
// server recreated with a new address (a container, a pod) is followed
// rather than dialled at its old address for ever. A failed lookup keeps
// the addresses of the last good one.
func (g *group) resolveLoop(stop chan struct{}, every time.Duration) {
	defer g.bg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		g.mu.Lock()
		var names []*server
		for _, s := range g.servers {
			if s.host != "" {
				names = append(names, s)
			}
		}
		g.mu.Unlock()
		for _, s := range names {
			addrs, err := g.resolve(s.host)
			if err != nil {
				g.ups.logf("upstream %s: server %s: %v; keeping its last addresses", g.name, s.cfg.Address, err)
				continue
			}
			g.setAddrs(s, addrs)
		}
	}
}

// setAddrs reconciles s's peers with the addresses its name resolved to.
func (g *group) setAddrs(s *server, addrs []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	want := map[string]bool{}
	for _, a := range addrs {
		want[net.JoinHostPort(a, s.port)] = true
	}
	var keep []*peer
	changed := false
	for _, p := range s.peers {
		if want[p.addr] {
			keep = append(keep, p)
			delete(want, p.addr)
			continue
		}
		g.removePeerLocked(p)
		changed = true
	}
	for _, a := range addrs {
		addr := net.JoinHostPort(a, s.port)
		if want[addr] {
			p := g.newPeerLocked(s, "tcp", addr, s.cfg.Address+"="+addr)
			p.weight = max(s.cfg.Weight, 1)
			keep = append(keep, p)
			delete(want, addr)
			changed = true
		}
	}
	if changed {
		s.peers = keep
		g.rebuildLocked()
		g.ups.logf("upstream %s: server %s now resolves to %s", g.name, s.cfg.Address, strings.Join(addrs, ", "))
	}
}

// close ends the group: no pooled connection is kept, its background
// work stops.
func (g *group) close() {
	g.mu.Lock()
	g.closed = true
	stop := g.stop
	g.stop = nil
	for _, p := range g.peers {
		g.removePeerLocked(p)
	}
	g.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	// Not waited for: a health check in progress ends within its timeout
	// and finds the group closed.
}

func (p *peer) closeIdleLocked() {
	for i, c := range p.idle {
		c.close()
		p.idle[i] = nil
	}
	p.idle = p.idle[:0]
}

// acquire picks a peer for one try and counts the request on it; c is a
// pooled connection to it, or nil.
func (g *group) acquire(keyHash uint32, tried []*peer, first bool) (p *peer, c *pconn, capped bool) {
	now := time.Now().UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	if first {
		g.tokens = min(g.tokens+float64(g.cfg.RetryBudget)/100, retryReserve)
	}
	p, capped = g.pickLocked(keyHash, tried, now)
	if p == nil {
		return nil, nil, capped
	}
	p.inflight++
	p.requests++
	return p, popIdle(&p.idle), false
}

// retryReserve is the retry budget's reserve: retries a group may make
// beyond budget percent of its requests.
const retryReserve = 10

// takeRetry spends one retry of the budget; false when it is used up.
func (g *group) takeRetry() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tokens < 1 {
		return false
	}
	g.tokens--
	return true
}

// takeIdle returns another pooled connection to p, or nil.
func (g *group) takeIdle(p *peer) *pconn {
	g.mu.Lock()
	defer g.mu.Unlock()
	return popIdle(&p.idle)
}

// result is how one try on a peer ended, for passive health.
type result uint8

const (
	resOK      result = iota // answered (whatever the status)
	resFailed                // a failure that counts against max_fails
	resNeutral               // neither: the proxy's own limit, the client gone
)

// release ends a try on p. c goes back to the pool when reuse says it is
// well framed and the pool has room; res feeds passive health; took is
// the time to the response head, for the latency average.
func (g *group) release(p *peer, c *pconn, reuse bool, res result, took time.Duration) {
	now := time.Now().UnixNano()
	g.mu.Lock()
	p.inflight--
	switch res {
	case resOK:
		p.stale = 0
		if p.fails > 0 || p.downUntil > 0 {
			if p.downUntil > 0 {
				g.ups.logf("upstream %s: server %s answers again", g.name, p.label)
			}
			p.fails, p.downUntil = 0, 0
		}
		us := took.Microseconds()
		if p.latency == 0 {
			p.latency = us
		} else {
			p.latency += (us - p.latency) / 8
		}
	case resFailed:
		p.failures++
		p.obs.failures.Inc()
		if now-p.firstFail > int64(p.srv.cfg.FailTimeout) {
			p.fails = 0
		}
		if p.fails == 0 {
			p.firstFail = now
		}
		p.fails++
		if mf := p.srv.cfg.MaxFails; mf > 0 && p.fails >= mf && p.downUntil <= now && len(g.peers) > 1 {
			p.downUntil = now + int64(p.srv.cfg.FailTimeout)
			g.ups.logf("upstream %s: server %s failed %d time(s) within %s: out of rotation for %s",
				g.name, p.label, p.fails, time.Duration(p.srv.cfg.FailTimeout), time.Duration(p.srv.cfg.FailTimeout))
		}
	}
	if c != nil && reuse && !g.closed && !p.removed && !p.srv.cfg.Down && !p.noKeepalve && len(p.idle) < g.cfg.Keepalive {
		if c.reused {
			p.stale = 0
		}
		c.idleSince = now
		c.reused = true
		p.idle = append(p.idle, c)
		c = nil
	}
	g.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// noteStale records a pooled connection p had closed; servers that close
// every connection (plain uWSGI) stop being pooled.
func (g *group) noteStale(p *peer) {
	g.mu.Lock()
	p.stale++
	if p.stale >= staleLimit && !p.noKeepalve {
		p.noKeepalve = true
		p.closeIdleLocked()
	}
	g.mu.Unlock()
}

// reapIdle closes pooled connections idle past keepalive_timeout.
func (u *upstreams) reapIdle(now int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, g := range u.groups {
		g.mu.Lock()
		limit := int64(g.cfg.KeepaliveTimeout)
		for _, p := range g.peers {
			p.idle = reapIdle(p.idle, now, limit)
		}
		g.mu.Unlock()
	}
}

// shutdown closes every group: idle connections close, checks stop.
func (u *upstreams) shutdown() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, g := range u.groups {
		g.close()
	}
}

// stats snapshots every server, for the supervisor's /status.
func (u *upstreams) stats() map[string][]control.UpstreamStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.groups) == 0 {
		return nil
	}
	now := time.Now().UnixNano()
	out := make(map[string][]control.UpstreamStats, len(u.groups))
	for name, g := range u.groups {
		g.mu.Lock()
		list := make([]control.UpstreamStats, 0, len(g.peers))
		for _, p := range g.peers {
			list = append(list, control.UpstreamStats{
				Server: p.srv.cfg.Address, Addr: p.addr, State: p.state(now), Requests: p.requests,
				Failures: p.failures, InFlight: p.inflight, Latency: p.latency, Backup: p.srv.cfg.Backup,
			})
		}
		g.mu.Unlock()
		out[name] = list
	}
	return out
}
