package importer

// nginxedge.go: what berth gained at the edge since the importer was
// written, translated from nginx: certificates, the response cache,
// expires on static files, upstream groups and routes, and the servers
// whose only job is a redirect (to https, or to a canonical host).

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// certificates translates ssl_certificate / ssl_certificate_key in force
// at sc into tls.certificates, paired in order as nginx pairs them.
func (n *nginxImport) certificates(sc *nginxScope) {
	certs, _ := sc.family("ssl_certificate")
	keys, _ := sc.family("ssl_certificate_key")
	if !n.hasTLS() {
		for _, d := range append(certs, keys...) {
			if !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NotNeeded, "no listen of the server is ssl: nginx never served it")
			}
		}
		return
	}
	for i, c := range certs {
		if i >= len(keys) {
			n.handled[c] = true
			n.b.skip(c.at(), c.text(), NeedsDecision, "no ssl_certificate_key pairs with it")
			continue
		}
		n.addCert(c, keys[i])
	}
	for _, k := range keys[min(len(certs), len(keys)):] {
		n.handled[k] = true
		n.b.skip(k.at(), k.text(), NeedsDecision, "no ssl_certificate pairs with it")
	}
}

// addCert adds one certificate pair, once.
func (n *nginxImport) addCert(c, k *ndir) {
	if n.handled[c] && n.handled[k] {
		return
	}
	n.handled[c], n.handled[k] = true, true
	cert, cnote, cwhy := n.tlsFile(c)
	key, knote, kwhy := n.tlsFile(k)
	if cwhy != "" || kwhy != "" {
		n.b.skip(c.at(), c.text(), NeedsDecision, "%s", cwhy+kwhy)
		n.b.skip(k.at(), k.text(), NeedsDecision, "%s", cwhy+kwhy)
		return
	}
	for _, o := range n.b.certs {
		if o.cert.value == cert && o.key.value == key {
			n.b.skip(c.at(), c.text(), NotNeeded, "tls.certificates already has it from %s", o.cert.src.String())
			n.b.skip(k.at(), k.text(), NotNeeded, "tls.certificates already has it from %s", o.key.src.String())
			return
		}
	}
	if len(n.b.certs) == 0 {
		cnote = strings.TrimPrefix(cnote+"; read by berth's supervisor (root), watched and reloaded when renewed", "; ")
	}
	n.b.certs = append(n.b.certs, certItem{item{value: cert, src: c.at(), note: cnote}, item{value: key, src: k.at(), note: knote}})
	n.b.count(c.at())
	n.b.count(k.at())
}

// tlsFile is the absolute path of a certificate or key directive.
func (n *nginxImport) tlsFile(d *ndir) (file, note, why string) {
	if len(d.args) != 1 || strings.Contains(d.args[0], "$") || strings.HasPrefix(d.args[0], "data:") {
		return "", "", "berth reads a certificate and its key from files named in full; write the pair by hand. "
	}
	file = d.args[0]
	if !path.IsAbs(file) {
		file = path.Join(n.prefix, file)
		note = "relative to nginx's prefix " + n.prefix
	}
	return file, note, ""
}

// cachePrefix is uwsgi_ or proxy_, after what the location passes with.
func cachePrefix(l *nloc) string {
	for _, d := range l.d.block {
		if d.name == "proxy_pass" {
			return "proxy_"
		}
	}
	return "uwsgi_"
}

// cacheRoutes translates uwsgi_cache / proxy_cache in force where the
// app is reached into cache.routes, one per prefix (a location under a
// cached prefix with the same settings needs none of its own).
func (n *nginxImport) cacheRoutes() {
	locs := slices.Clone(n.locs)
	slices.SortStableFunc(locs, func(a, b *nloc) int { return len(a.path) - len(b.path) })
	var routes []*cacheRouteItem
	var zonesUsed []*ndir
	var notCached []string
	covering := func(p string) *cacheRouteItem {
		var best *cacheRouteItem
		for _, r := range routes {
			if u := r.url.value.(string); strings.HasPrefix(p, u) && (best == nil || len(u) > len(best.url.value.(string))) {
				best = r
			}
		}
		return best
	}
	for _, l := range locs {
		if l.content != "app" {
			continue
		}
		pfx := cachePrefix(l)
		d := l.sc.last(pfx + "cache")
		if d == nil || len(d.args) == 1 && d.args[0] == "off" {
			if d != nil && !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NotNeeded, "off: no cache here")
			}
			if covering(l.path) != nil && !l.exact {
				notCached = append(notCached, l.path)
			}
			continue
		}
		zone := n.zones[pfx+"cache_path "+strings.Join(d.args, " ")]
		if zone == nil {
			if !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NeedsDecision, "no %scache_path defines keys_zone %s in the files imported", pfx, strings.Join(d.args, " "))
			}
			continue
		}
		if !slices.Contains(zonesUsed, zone) {
			zonesUsed = append(zonesUsed, zone)
		}
		var stale *item
		if us := l.sc.last(pfx + "cache_use_stale"); us != nil {
			n.handled[us] = true
			if slices.ContainsFunc(us.args, func(a string) bool { return a != "off" && a != "invalid_header" }) {
				ttl := 10 * time.Minute
				for _, a := range zone.args {
					if v, ok := strings.CutPrefix(a, "inactive="); ok {
						if t, err := nginxTime(v); err == nil {
							ttl = t
						}
					}
				}
				stale = &item{value: ttl, src: us.at(), note: fmt.Sprintf("nginx served a stale entry as long as it kept it: the zone's inactive=%s", fmtDuration(ttl))}
				n.b.count(us.at())
			}
		}
		if c := covering(l.path); c != nil && display(c.stale) == display(stale) {
			if !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NotNeeded, "cache.routes %s covers this location with the same settings", c.url.value)
			}
			continue
		}
		if l.exact {
			n.handled[d] = true
			n.b.skip(d.at(), d.text(), NeedsDecision, "berth caches URL prefixes (cache.routes); this location is one exact path")
			continue
		}
		n.handled[d] = true
		n.b.count(d.at())
		r := &cacheRouteItem{url: item{value: l.path, src: d.at(), note: "berth stores only responses the app marks cacheable (Cache-Control max-age or s-maxage), and bypasses requests with a session cookie"}, stale: stale}
		routes = append(routes, r)
		for _, name := range []string{"cache_valid", "cache_key", "cache_bypass", "no_cache"} {
			if cd := l.sc.last(pfx + name); cd != nil && !n.handled[cd] {
				n.handled[cd] = true
				n.cacheSetting(cd, name)
			}
		}
	}
	for _, r := range routes {
		var under []string
		for _, p := range notCached {
			if c := covering(p); c == r {
				under = append(under, p)
			}
		}
		if len(under) > 0 {
			r.url.note += fmt.Sprintf("; it also covers %s, which nginx did not cache: there too berth stores only what the app marks cacheable", strings.Join(under, ", "))
		}
		n.b.cacheRoutes = append(n.b.cacheRoutes, *r)
	}
	for _, z := range zonesUsed {
		n.handled[z] = true
		n.b.skip(z.at(), z.text(), NotNeeded, "berth's response cache is in memory, bounded by cache.size (256Mi unless set); the disk path, levels, keys_zone and max_size have no counterpart")
	}
}

// cacheSetting lists a cache directive in force on a cached route.
func (n *nginxImport) cacheSetting(d *ndir, name string) {
	src := d.at()
	switch name {
	case "cache_valid":
		n.b.skip(src, d.text(), NoEquivalent, "berth gives no lifetime of its own to responses without Cache-Control: it stores only what the app marks cacheable (max-age or s-maxage), for at most cache.routes[].max_ttl; have the app send Cache-Control: max-age=… (Django: @cache_control(max_age=…)) for the pages to cache")
	case "cache_key":
		switch strings.Join(d.args, " ") {
		case "$scheme$host$request_uri", "$host$request_uri", "$scheme$proxy_host$request_uri", "$scheme$request_method$host$request_uri", "$request_uri":
			n.b.skip(src, d.text(), NotNeeded, "berth keys entries on the host, path and query (and the fields Vary names)")
		default:
			n.b.skip(src, d.text(), NoEquivalent, "berth keys entries on the host, path and query (and the fields Vary names), not on other variables")
		}
	default: // cache_bypass, no_cache
		for _, a := range d.args {
			if a != "$cookie_sessionid" && a != "$http_authorization" {
				n.b.skip(src, d.text(), NoEquivalent, "berth bypasses its cache for requests with Authorization or a cookie of cache.routes[].session_cookies, not on %s", a)
				return
			}
		}
		n.b.skip(src, d.text(), NotNeeded, "berth bypasses its cache for requests with Authorization or a Django session cookie (cache.routes[].session_cookies: [sessionid])")
	}
}

// expires translates expires in force in static locations into
// static[].cache; one in an app location's own block is listed (the app
// sets its own Cache-Control).
func (n *nginxImport) expires() {
	memo := map[*ndir]*item{}
	for _, l := range n.locs {
		d := l.sc.last("expires")
		if d == nil {
			continue
		}
		if l.content != "static" || l.static < 0 {
			if (l.content == "app" || l.content == "route") && d.where == l.sc.where && !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NoEquivalent, "berth sets Cache-Control on static files only (static[].cache); the app sets its own")
			}
			continue
		}
		it, seen := memo[d]
		if !seen {
			it = n.expiry(d)
			memo[d] = it
		}
		if it != nil {
			c := *it
			n.b.static[l.static].cache = &c
		}
	}
}

// expiry translates one expires directive into a static[].cache value;
// nil (and listed) when it has none.
func (n *nginxImport) expiry(d *ndir) *item {
	n.handled[d] = true
	v := strings.Join(d.args, " ")
	note := "Cache-Control: public, max-age; nginx also sent Expires"
	var ttl time.Duration
	switch {
	case v == "off":
		n.b.skip(d.at(), d.text(), NotNeeded, "off: no Cache-Control, as berth by default")
		return nil
	case v == "max":
		ttl, note = 87600*time.Hour, "nginx's max: ten years"
	default:
		t, err := nginxTime(v)
		if err != nil || t <= 0 {
			n.b.skip(d.at(), d.text(), NoEquivalent, "berth's static cache is a max-age from the request (a positive time such as 30d); not epoch, @time or modified")
			return nil
		}
		ttl = t
	}
	n.b.count(d.at())
	return &item{value: ttl, src: d.at(), note: note}
}

// route makes loc's pass to other servers an upstreams: group and a route.
func (n *nginxImport) route(d *ndir, src Source, loc *nloc, target string, u *ndir, scheme, uri string) (string, bool) {
	fail := func(r Reason, why string, args ...any) (string, bool) {
		n.b.skip(src, d.text(), r, why, args...)
		if loc != nil {
			loc.content = "route" // its pass is listed with the reason; the block says no more
		}
		return "-", false
	}
	switch {
	case scheme == "https://" || scheme == "suwsgi://":
		return fail(NoEquivalent, "berth talks plain HTTP or uwsgi to upstreams, not TLS")
	case loc == nil || loc.exact:
		return fail(NeedsDecision, "berth routes URL prefixes to upstreams (routes:); this location is a regular expression, a name or an exact path")
	case uri != "" && uri != loc.path:
		return fail(NeedsDecision, "nginx replaced the location's %s with %s; berth passes the path as it came", loc.path, uri)
	case loc.path == "/" && n.b.appServer:
		return fail(NeedsDecision, "this sends every request to %s, so the app server imported would never be called; import without it for an edge, or route a narrower prefix", target)
	}
	name := target
	if u == nil {
		name = strings.Trim(strings.NewReplacer(":", "-", "[", "", "]", "", "/", "-").Replace(target), "-")
	}
	proto := config.ProtocolHTTP
	if d.name == "uwsgi_pass" {
		proto = config.ProtocolUwsgi
	}
	if !n.group(name, u, proto, target, d) {
		return "-", false
	}
	note := fmt.Sprintf("%s %s (line %d); berth sends the path as it came", d.name, d.text(), d.line)
	if !strings.HasSuffix(loc.path, "/") && loc.path != "/" {
		note += fmt.Sprintf("; it matches at a / boundary: nginx's %s also matched %sx", loc.path, loc.path)
	}
	n.b.routes = append(n.b.routes, item{value: flow(fmt.Sprintf("{url: %s, upstream: %s}", flowScalar(loc.path), flowScalar(name))), src: loc.src, note: note})
	n.b.count(loc.src)
	n.b.count(src)
	return name, true
}

// group makes (once) the upstreams: group name from the upstream block u,
// or from the one address target when u is nil.
func (n *nginxImport) group(name string, u *ndir, proto, target string, pass *ndir) bool {
	for _, g := range n.b.upstreams {
		if g.name != name {
			continue
		}
		p := config.ProtocolHTTP
		for _, k := range g.keys {
			if k.key == "protocol" {
				p = string(k.value.(flow))
			}
		}
		if p != proto {
			n.b.skip(pass.src(pass.where), pass.text(), NeedsDecision, "group %s speaks %s elsewhere; a berth group speaks one protocol", name, p)
			return false
		}
		return true
	}
	g := upstreamItem{name: name, src: pass.src("")}
	if proto == config.ProtocolUwsgi {
		g.keys = append(g.keys, keyItem{"protocol", item{value: flow(proto), src: pass.src(""), note: "uwsgi_pass"}})
	}
	if u == nil {
		addr := target
		if !strings.Contains(addr, ":") || strings.HasSuffix(addr, "]") {
			addr += ":80"
		}
		g.servers = append(g.servers, item{value: flow(fmt.Sprintf("{address: %s}", flowScalar(addr))), src: pass.src(""), note: "the address proxy_pass named"})
		n.b.upstreams = append(n.b.upstreams, g)
		return true
	}
	g.src = u.blockSrc("")
	where := "upstream " + name
	hashed := false
	for _, d := range u.block {
		src := d.src(where)
		switch d.name {
		case "server":
			if s, why := upstreamServer(d); why != "" {
				n.b.skip(src, d.text(), NeedsDecision, "%s", why)
			} else {
				g.servers = append(g.servers, item{value: flow(s), src: src})
				n.b.count(src)
			}
		case "least_conn":
			g.keys = append(g.keys, keyItem{"method", item{value: flow(config.MethodLeastConn), src: src}})
			n.b.count(src)
		case "ip_hash":
			hashed = true
			g.keys = append(g.keys, keyItem{"method", item{value: flow(config.MethodHash), src: src}},
				keyItem{"hash", item{value: "$remote_addr", src: src, note: "nginx's ip_hash keyed IPv4 clients by their /24; berth hashes the whole address, consistently"}})
			n.b.count(src)
		case "hash":
			key := ""
			if len(d.args) > 0 {
				key = d.args[0]
			}
			if !strings.Contains(key, "$") || !validVars(key, config.ValidHashVar) || len(d.args) > 2 {
				n.b.skip(src, d.text(), NeedsDecision, "berth hashes keys with the variables $remote_addr, $request_uri, $uri, $args, $host, $http_NAME, $cookie_NAME, $arg_NAME, …")
				continue
			}
			hashed = true
			note := ""
			if len(d.args) == 1 {
				note = "berth's hash is always consistent (nginx's hash … consistent): adding a server moves only its keys"
			}
			g.keys = append(g.keys, keyItem{"method", item{value: flow(config.MethodHash), src: src}},
				keyItem{"hash", item{value: key, src: src, note: note}})
			n.b.count(src)
		case "keepalive":
			if v, err := strconv.Atoi(strings.Join(d.args, "")); err == nil && v >= 0 {
				g.keys = append(g.keys, keyItem{"keepalive", item{value: v, src: src}})
				n.b.count(src)
			} else {
				n.b.skip(src, d.text(), NeedsDecision, "expected a number")
			}
		case "keepalive_timeout":
			if t, err := nginxTime(strings.Join(d.args, "")); err == nil && t > 0 {
				g.keys = append(g.keys, keyItem{"keepalive_timeout", item{value: t, src: src}})
				n.b.count(src)
			} else {
				n.b.skip(src, d.text(), NeedsDecision, "expected a time such as 60s")
			}
		case "zone":
			n.b.skip(src, d.text(), NotNeeded, "berth's proxy is one process: a group's state is shared already")
		case "keepalive_requests", "keepalive_time":
			n.b.skip(src, d.text(), NotNeeded, "berth keeps a pooled connection until keepalive_timeout or the server closes it")
		default:
			n.b.skip(src, d.text(), NoEquivalent, "berth's upstream groups have no such setting")
		}
	}
	if hashed {
		for i, s := range g.servers {
			if strings.Contains(string(s.value.(flow)), "backup: true") {
				n.b.skip(s.src, strings.TrimSuffix(strings.TrimPrefix(string(s.value.(flow)), "{"), "}"), NeedsDecision, "berth, as nginx, has no backup servers with hashing")
				g.servers = slices.Delete(g.servers, i, i+1)
				break
			}
		}
	}
	if len(g.servers) == 0 {
		n.b.skip(pass.src(pass.where), pass.text(), NeedsDecision, "upstream %s has no server berth can take", name)
		return false
	}
	n.b.upstreams = append(n.b.upstreams, g)
	return true
}

// upstreamServer translates `server ADDRESS [parameters]` into a flow
// mapping of servers[]; why says why it cannot.
func upstreamServer(d *ndir) (string, string) {
	if len(d.args) == 0 {
		return "", "expected an address"
	}
	addr := d.args[0]
	if !strings.HasPrefix(addr, "unix:") && (!strings.Contains(addr, ":") || strings.HasSuffix(addr, "]")) {
		addr += ":80"
	}
	parts := []string{"address: " + flowScalar(addr)}
	for _, p := range d.args[1:] {
		k, v, _ := strings.Cut(p, "=")
		num, err := strconv.Atoi(v)
		switch {
		case (k == "weight" || k == "max_fails" || k == "max_conns") && err == nil && num >= 0:
			parts = append(parts, fmt.Sprintf("%s: %d", k, num))
		case k == "fail_timeout":
			t, err := nginxTime(v)
			if err != nil || t <= 0 {
				return "", "fail_timeout: expected a time such as 10s"
			}
			parts = append(parts, "fail_timeout: "+fmtDuration(t))
		case p == "backup" || p == "down":
			parts = append(parts, p+": true")
		case p == "resolve":
			// berth re-resolves names every upstreams.NAME.resolve anyway
		default:
			return "", fmt.Sprintf("berth's servers take weight, max_fails, fail_timeout, backup, down and max_conns, not %s", p)
		}
	}
	return "{" + strings.Join(parts, ", ") + "}", ""
}

// groupTimeout translates proxy_read_timeout in force where a location
// routes to a group into the group's timeout.
func (n *nginxImport) groupTimeout(d *ndir, where string, groups []string) {
	t, err := nginxTime(strings.Join(d.args, " "))
	if err != nil || t <= 0 {
		n.b.skip(d.src(where), d.text(), NeedsDecision, "expected a time such as 60s")
		return
	}
	for i := range n.b.upstreams {
		g := &n.b.upstreams[i]
		if !slices.Contains(groups, g.name) {
			continue
		}
		if j := slices.IndexFunc(g.keys, func(k keyItem) bool { return k.key == "timeout" }); j >= 0 {
			if display(g.keys[j].value) != display(t) {
				n.b.skip(d.src(where), d.text(), NeedsDecision, "group %s already waits %s from %s; a group has one timeout", g.name, display(g.keys[j].value), g.keys[j].src.String())
			}
			continue
		}
		g.keys = append(g.keys, keyItem{"timeout", item{value: t, src: d.src(where), note: "past it berth answers 504"}})
		n.b.count(d.src(where))
	}
}

// redirectOnly says whether a server block only redirects: listen,
// server_name, TLS and log settings, and one return with a status and a URL.
func redirectOnly(s *ndir) bool {
	returns := 0
	for _, d := range s.block {
		switch {
		case d.name == "return":
			if len(d.args) != 2 {
				return false
			}
			code, err := strconv.Atoi(d.args[0])
			if err != nil || code < 301 || code > 308 || code > 303 && code < 307 {
				return false
			}
			returns++
		case d.name == "listen" || d.name == "server_name" || d.name == "access_log" || d.name == "error_log" ||
			d.name == "http2" || strings.HasPrefix(d.name, "ssl"):
		default:
			return false
		}
	}
	return returns == 1
}

// redirectServer translates a server that only redirects: to https on the
// same host (tls.redirect_http), or to another host (hosts:).
func (n *nginxImport) redirectServer(s *ndir) {
	where := serverWhere(s)
	src := s.src("")
	src.Key, src.raw = where, s.body()
	names := serverNames(s)
	var ret *ndir
	var plain, tls []*ndir
	for _, d := range s.block {
		switch d.name {
		case "return":
			ret = d
		case "listen":
			if slices.Contains(d.args[1:], "ssl") {
				tls = append(tls, d)
			} else {
				plain = append(plain, d)
			}
		}
	}
	code, _ := strconv.Atoi(ret.args[0])
	to, why := redirectTarget(ret.args[1], names, false)
	if why != "" {
		n.b.skip(src, src.raw, NeedsDecision, "this server redirects, and %s", why)
		return
	}
	to = strings.NewReplacer("$uri$is_args$args", "$request_uri", "${uri}${is_args}${args}", "$request_uri", "$http_host", "$host").Replace(to)
	target := config.RedirectHost(to)
	sameHost := strings.HasPrefix(to, "https://$host")
	var hostNames []string
	schemeOnly := false
	for _, name := range names {
		switch {
		case sameHost || strings.EqualFold(name, target) && strings.HasPrefix(to, "https://"):
			schemeOnly = true
		case target != "" && config.SelectHost([]config.Host{{Match: strings.ToLower(strings.TrimPrefix(name, "."))}, {Match: "*" + strings.ToLower(name)}}, target) != nil:
			n.b.skip(src, src.raw, NeedsDecision, "this server redirects %s to %s, a host it names itself; berth's hosts: would loop", name, to)
			return
		case name == "_" || name == "" || strings.HasPrefix(name, "~") || strings.HasSuffix(name, ".*"):
			n.b.skip(src, src.raw, NeedsDecision, "server_name %s is not a host name berth's hosts: match (a name, or *.name)", name)
			return
		case strings.HasPrefix(name, "."):
			hostNames = append(hostNames, name[1:], "*"+name)
		default:
			hostNames = append(hostNames, strings.ToLower(name))
		}
	}
	if len(names) == 0 {
		schemeOnly = sameHost
	}
	if !schemeOnly && len(hostNames) == 0 {
		n.b.skip(src, src.raw, NeedsDecision, "this server redirects every host; berth redirects by host name (hosts:) or to https (tls.redirect_http)")
		return
	}
	if schemeOnly {
		switch {
		case len(tls) > 0 || !strings.HasPrefix(to, "https://"):
			n.b.skip(src, src.raw, NeedsDecision, "this server redirects to %s; berth's tls.redirect_http sends plain HTTP to https on the same host", to)
			return
		case !n.hasTLS():
			n.b.skip(src, src.raw, NeedsDecision, "this server redirects to https, and berth's tls.redirect_http needs an https:// listener; the site server has none")
			return
		case n.sitePlain():
			n.b.skip(src, src.raw, NeedsDecision, "this server redirects to https, but the site also answers plain HTTP, which tls.redirect_http would redirect too: decide which")
			return
		}
	}
	note := "berth redirects plain HTTP to https://HOST:PORT/same/uri"
	if !schemeOnly && len(plain) == 1 && n.portServers[listenPort(plain[0].args[0])] == 1 && n.hasTLS() && !n.sitePlain() && n.b.scalars["tls.redirect_http"] == nil {
		// The only server on its plain port: nginx redirected every host
		// that came there, not only the ones it names.
		schemeOnly = true
		note = fmt.Sprintf("nginx's only server on port %s redirected every host there to %s; berth sends plain HTTP to https on the same host, and the names this server has on by hosts:", strings.Join(plain[0].args[:1], ""), to)
	}
	if schemeOnly {
		if code != 308 {
			note += fmt.Sprintf("; 308 (nginx %d): browsers treat both as permanent, 308 keeps the method", code)
		}
		n.b.set("tls.redirect_http", true, ret.src(where), note)
	}
	siteNames := n.siteNames()
	added := false
	for _, h := range hostNames {
		note := fmt.Sprintf("server_name %s (line %d)", h, nameLine(s, h))
		if slices.Contains(siteNames, h) {
			note += "; the site server has this name too: berth redirects it on every listener, nginx only on this server's"
		}
		v := flow(fmt.Sprintf("{match: %s, redirect: {to: %s, status: %d}}", flowScalar(h), flowScalar(to), code))
		if i := slices.IndexFunc(n.b.hosts, func(it item) bool {
			return strings.HasPrefix(string(it.value.(flow)), fmt.Sprintf("{match: %s,", flowScalar(h)))
		}); i >= 0 {
			if old := n.b.hosts[i]; old.value != v {
				n.b.skip(ret.src(where), ret.text(), NeedsDecision, "%s redirects %s elsewhere; berth has one redirect per host: keep one", old.src.String(), h)
			} else {
				n.b.skip(ret.src(where), ret.text(), NotNeeded, "hosts: already redirects %s the same way, for every listener, from %s", h, old.src.String())
			}
			continue
		}
		n.b.hosts = append(n.b.hosts, item{value: v, src: ret.src(where), note: note})
		added = true
	}
	if added || schemeOnly {
		n.b.count(ret.src(where))
	}
	sc := n.siteScopeParent().child(where)
	for _, d := range s.block {
		switch d.name {
		case "return":
		case "listen":
			n.listen(d, where, false)
		case "server_name":
			if len(hostNames) > 0 {
				n.b.count(d.src(where))
			} else {
				n.b.skip(d.src(where), d.text(), NotNeeded, "tls.redirect_http redirects every host name")
			}
		case "ssl_certificate", "ssl_certificate_key":
			n.deferRule(d, sc)
		default:
			n.directive(d, where, false)
		}
	}
	if len(tls) > 0 {
		n.certificates(sc)
	}
}

// siteScopeParent is the http scope (the site's parent), or a fresh one.
func (n *nginxImport) siteScopeParent() *nginxScope {
	if n.siteScope != nil {
		return n.siteScope.parent
	}
	return &nginxScope{vals: map[string]*ndir{}}
}

// sitePlain says whether the site server listens for plain HTTP.
func (n *nginxImport) sitePlain() bool {
	if n.site == nil {
		return false
	}
	for _, d := range n.site.block {
		if d.name == "listen" && !slices.Contains(d.args[1:], "ssl") && !strings.HasPrefix(d.args[0], "unix:") {
			ssl := false
			for _, o := range n.site.block {
				ssl = ssl || o.name == "ssl" && len(o.args) == 1 && o.args[0] == "on"
			}
			return !ssl
		}
	}
	return false
}

// nameLine is the line of the server_name directive naming h ("*.x" and
// "x" for nginx's ".x").
func nameLine(s *ndir, h string) int {
	for _, d := range s.block {
		if d.name == "server_name" && (slices.Contains(d.args, h) || slices.Contains(d.args, "."+strings.TrimPrefix(h, "*."))) {
			return d.line
		}
	}
	return s.line
}
