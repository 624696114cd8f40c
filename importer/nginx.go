package importer

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// nginxScope is one level of nginx's inheritance: http, server, location.
type nginxScope struct {
	parent *nginxScope
	where  string
	vals   map[string]*ndir // inheritable directives set at this level
}

func (s *nginxScope) child(where string) *nginxScope {
	return &nginxScope{parent: s, where: where, vals: map[string]*ndir{}}
}

// get returns the directive in force here: set at this level or inherited.
func (s *nginxScope) get(name string) (*ndir, *nginxScope) {
	for ; s != nil; s = s.parent {
		if d, ok := s.vals[name]; ok {
			return d, s
		}
	}
	return nil, nil
}

// inherited are the directives whose meaning depends on the locations that
// reach the app, resolved once every location is known.
var inherited = map[string]bool{
	"client_max_body_size": true, "uwsgi_read_timeout": true, "proxy_read_timeout": true, "root": true,
}

// pending is an inheritable directive and the scope it was set in.
type pending struct {
	d     *ndir
	scope *nginxScope
}

// appLoc is a location that passes requests to the app.
type appLoc struct {
	scope *nginxScope
	path  string
	pass  *ndir
}

type nginxImport struct {
	b         *builder
	upstreams map[string]*ndir
	used      map[*ndir]bool // upstreams some pass names
	pending   []pending
	appLocs   []appLoc
	// logFormats are the log_format definitions by name.
	logFormats map[string]*ndir
	// rootUsed marks root directives that a static location translated.
	rootUsed map[*ndir]bool
	site     bool   // an app server block was translated
	fsRoot   string // Options.FSRoot
}

// importNginx translates one nginx config and the files it includes.
func importNginx(b *builder, file, prefix, fsRoot string) error {
	dirs, err := loadNginx(file, prefix)
	if err != nil {
		return err
	}
	n := &nginxImport{b: b, upstreams: map[string]*ndir{}, used: map[*ndir]bool{}, rootUsed: map[*ndir]bool{}, logFormats: map[string]*ndir{}, fsRoot: fsRoot}
	root := &nginxScope{where: "", vals: map[string]*ndir{}}
	n.collectUpstreams(dirs)
	n.collectLogFormats(dirs)
	n.http(dirs, root, "")
	n.resolve()
	for _, u := range sortedUpstreams(n.upstreams) {
		if !n.used[u] {
			b.skip(u.blockSrc(""), u.body(), NotNeeded, "no location passes requests to it")
		}
	}
	return nil
}

func (n *nginxImport) collectUpstreams(dirs []*ndir) {
	for _, d := range dirs {
		switch {
		case d.name == "upstream" && len(d.args) > 0:
			n.upstreams[d.args[0]] = d
		case d.name == "http":
			n.collectUpstreams(d.block)
		}
	}
}

// http walks the main and http contexts (a site file's top level is
// treated as http, since nginx includes it there).
func (n *nginxImport) http(dirs []*ndir, sc *nginxScope, where string) {
	var servers []*ndir
	for _, d := range dirs {
		switch {
		case d.name == "http":
			n.http(d.block, sc.child("http"), "http")
		case d.name == "server":
			servers = append(servers, d)
		case d.name == "upstream":
			// listed by importNginx once it is known whether a pass uses it
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		default:
			n.directive(d, where, false)
		}
	}
	for _, s := range servers {
		n.server(s, sc)
	}
}

// serverPasses reports whether a server block sends requests to an app.
func serverPasses(dirs []*ndir) bool {
	for _, d := range dirs {
		switch d.name {
		case "uwsgi_pass", "proxy_pass", "fastcgi_pass", "scgi_pass", "grpc_pass":
			return true
		}
		if d.isBlock() && serverPasses(d.block) {
			return true
		}
	}
	return false
}

// serverWhere names a server block by its first server_name.
func serverWhere(s *ndir) string {
	for _, d := range s.block {
		if d.name == "server_name" && len(d.args) > 0 {
			return "server " + d.args[0]
		}
	}
	return "server"
}

func (n *nginxImport) server(s *ndir, parent *nginxScope) {
	where := serverWhere(s)
	src := s.src(parent.where)
	src.Key, src.raw = where, s.body()
	if !serverPasses(s.block) {
		for _, d := range s.block {
			if d.name == "return" && len(d.args) == 2 && strings.HasPrefix(d.args[1], "https://") {
				n.b.skip(src, src.raw, NotYetSupported, "this server redirects to https; needs TLS (tls.redirect_http)")
				return
			}
		}
		n.b.skip(src, src.raw, NoEquivalent, "this server block sends nothing to the app; berth serves one app, with its static: directories")
		return
	}
	if n.site {
		n.b.skip(src, src.raw, NeedsDecision, "berth serves one site; the first server block that reaches the app was translated, this one was not: merge what it needs into berth.yaml by hand")
		return
	}
	n.site = true
	sc := parent.child(where)
	var locations []*ndir
	for _, d := range s.block {
		switch {
		case d.name == "location":
			locations = append(locations, d)
		case d.name == "listen":
			n.listen(d, where)
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		default:
			n.directive(d, where, false)
		}
	}
	for _, l := range locations {
		n.location(l, sc)
	}
}

// listen translates one listen directive.
func (n *nginxImport) listen(d *ndir, where string) {
	src := d.src(where)
	if len(d.args) == 0 {
		return
	}
	addr := d.args[0]
	if addr == "" {
		n.b.skip(src, d.text(), NeedsDecision, "an empty address")
		return
	}
	var dropped []string
	for _, p := range d.args[1:] {
		switch {
		case p == "ssl" || p == "http2" || p == "quic" || p == "http3":
			n.b.skip(src, d.text(), NotYetSupported, "needs TLS (an https:// listener and tls:)")
			return
		case p == "proxy_protocol":
			n.b.skip(src, d.text(), NoEquivalent, "berth's proxy does not read the PROXY protocol")
			return
		default:
			dropped = append(dropped, p)
		}
	}
	switch {
	case strings.HasPrefix(addr, "unix:"):
	case isDigits(addr):
		addr = ":" + addr
	case strings.HasPrefix(addr, "*:"):
		addr = addr[1:]
	case !strings.Contains(addr, ":") || strings.HasSuffix(addr, "]"):
		addr += ":80" // nginx's default port
	}
	note := ""
	if len(dropped) > 0 {
		note = "without " + strings.Join(dropped, " ") + " (nginx-only parameters)"
	}
	for _, it := range n.b.lists["listen"] {
		if old, _ := it.value.(string); wildcardClash(old, addr) {
			n.b.skip(src, d.text(), NotNeeded, "berth's %s from %s already takes IPv4 and IPv6 on that port", old, it.src.String())
			return
		}
	}
	n.b.add("listen", addr, src, note)
}

// wildcardClash reports whether two listen addresses are the same port with
// a wildcard host on one side, which Go binds as one dual-stack socket.
func wildcardClash(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || a == b {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "::" || h == "0.0.0.0" }
	return wild(ha) || wild(hb)
}

func isDigits(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil && s != "" && s[0] != '-' && s[0] != '+'
}

// locationPass returns the directive sending a location's requests on.
func locationPass(dirs []*ndir) *ndir {
	for _, d := range dirs {
		switch d.name {
		case "uwsgi_pass", "proxy_pass", "fastcgi_pass", "scgi_pass", "grpc_pass":
			return d
		}
	}
	return nil
}

func (n *nginxImport) location(l *ndir, parent *nginxScope) {
	where := "location " + strings.Join(l.args, " ")
	sc := parent.child(where)
	mod, p := "", ""
	switch len(l.args) {
	case 1:
		p = l.args[0]
	case 2:
		mod, p = l.args[0], l.args[1]
	}
	src := l.blockSrc(parent.where)
	for _, d := range l.block {
		if d.name == "location" {
			n.b.skip(src, src.raw, NeedsDecision, "nested locations are not translated; berth has one app and static: prefixes: write the static entries by hand")
			return
		}
	}
	if pass := locationPass(l.block); pass != nil {
		n.appLocation(l, sc, mod, p, pass)
		return
	}
	var alias, root *ndir
	for _, d := range l.block {
		switch d.name {
		case "alias":
			alias = d
		case "root":
			root = d
		}
	}
	if root == nil && alias == nil {
		root, _ = parent.get("root")
	}
	switch {
	case alias == nil && root == nil:
		n.b.skip(src, src.raw, NoEquivalent, "this location neither serves files nor reaches the app; berth has no per-location rules")
		return
	case mod != "" && mod != "^~" && mod != "=" || strings.HasPrefix(p, "@"):
		n.b.skip(src, src.raw, NoEquivalent, "berth maps static URLs by prefix, not by regular expression or name")
		return
	case p == "/":
		n.b.skip(src, src.raw, NeedsDecision, "files at / before the app: berth serves static files only under static: URL prefixes; list the directories to serve")
		return
	}
	if file, note, ok := n.oneFile(mod, p, alias, root, where); ok {
		n.b.addStaticFile(item{value: p, src: src, note: note}, file)
		n.staticRest(l, alias, root, where)
		return
	} else if file.value == "-" {
		return
	}
	url := p
	if !strings.HasSuffix(url, "/") {
		url += "/"
	}
	urlNote := ""
	if url != p {
		urlNote = fmt.Sprintf("nginx's %s also matched %s* without the slash", p, p)
	}
	var dir item
	if alias != nil {
		if len(alias.args) != 1 || strings.Contains(alias.args[0], "$") || !strings.HasPrefix(alias.args[0], "/") {
			n.b.skip(alias.src(where), alias.text(), NeedsDecision, "static dirs must be absolute paths without variables")
			return
		}
		dir = item{value: path.Clean(alias.args[0]), src: alias.src(where)}
	} else {
		if len(root.args) != 1 || strings.Contains(root.args[0], "$") || !strings.HasPrefix(root.args[0], "/") {
			n.b.skip(root.src(where), root.text(), NeedsDecision, "static dirs must be absolute paths without variables")
			return
		}
		dir = item{value: path.Join(root.args[0], p), src: root.src(""), note: "root + " + p}
		n.rootUsed[root] = true
	}
	n.b.addStatic(item{value: url, src: src, note: urlNote}, dir)
	n.staticRest(l, alias, root, where)
}

// oneFile decides whether a static location serves one file, as
// static[].file: an exact location (= /favicon.ico) with root or alias, or a
// prefix location whose alias names a file (location /favicon.ico { alias
// /srv/img/favicon.ico; }: nginx then serves that file at that URL). A
// file is known by looking at this machine; one not found here is taken for
// a file when neither the URL nor the alias ends in / and the alias has an
// extension. file.value "-" means the location was refused (skipped).
func (n *nginxImport) oneFile(mod, p string, alias, root *ndir, where string) (file item, note string, ok bool) {
	bad := func(d *ndir) bool {
		return len(d.args) != 1 || strings.Contains(d.args[0], "$") || !strings.HasPrefix(d.args[0], "/")
	}
	if mod == "=" {
		if alias != nil {
			if bad(alias) {
				n.b.skip(alias.src(where), alias.text(), NeedsDecision, "static files must be absolute paths without variables")
				return item{value: "-"}, "", false
			}
			return item{value: path.Clean(alias.args[0]), src: alias.src(where)}, "", true
		}
		if bad(root) {
			n.b.skip(root.src(where), root.text(), NeedsDecision, "static files must be absolute paths without variables")
			return item{value: "-"}, "", false
		}
		n.rootUsed[root] = true
		return item{value: path.Join(root.args[0], p), src: root.src(""), note: "root + " + p}, "", true
	}
	if alias == nil || bad(alias) || strings.HasSuffix(p, "/") || strings.HasSuffix(alias.args[0], "/") {
		return item{}, "", false
	}
	target := path.Clean(alias.args[0])
	st, err := os.Stat(filepath.Join(n.fsRoot, target))
	switch {
	case err == nil && st.Mode().IsRegular():
		note = "a file here, so one URL, one file"
	case err == nil:
		return item{}, "", false
	case path.Ext(target) != "":
		note = "not found on this machine; taken for a file by its name"
	default:
		return item{}, "", false
	}
	if mod == "" {
		note += fmt.Sprintf("; nginx's prefix location also matched %s…, which served nothing but this file", p)
	}
	return item{value: target, src: alias.src(where)}, note, true
}

// staticRest translates the rest of a static location's directives.
func (n *nginxImport) staticRest(l *ndir, alias, root *ndir, where string) {
	for _, d := range l.block {
		if d == alias || d == root {
			continue
		}
		switch d.name {
		case "expires":
			n.b.skip(d.src(where), d.text(), NotYetSupported, "needs static caching (a cache: duration per static entry)")
		case "access_log":
			if len(d.args) == 1 && d.args[0] == "off" {
				n.b.skip(d.src(where), d.text(), NoEquivalent, "berth logs every request or none (proxy.access_log)")
			} else {
				n.directive(d, where, false)
			}
		case "try_files":
			n.b.skip(d.src(where), d.text(), NotNeeded, "berth serves the file at the URL, or 404")
		default:
			n.directive(d, where, true)
		}
	}
}

// appLocation translates a location that passes requests to the app.
func (n *nginxImport) appLocation(l *ndir, sc *nginxScope, mod, p string, pass *ndir) {
	where := sc.where
	src := l.blockSrc(sc.parent.where)
	switch {
	case mod == "" && p == "/" || strings.HasPrefix(p, "@"):
		n.b.skip(src, src.raw, NotNeeded, "berth sends every request that no static: entry takes to its workers")
	default:
		n.b.skip(src, src.raw, NeedsDecision, "berth sends every path to its one app, not only %s; check that the app answers only what it should", strings.Join(l.args, " "))
	}
	n.appLocs = append(n.appLocs, appLoc{scope: sc, path: p, pass: pass})
	for _, d := range l.block {
		switch {
		case d == pass:
			n.pass(d, where)
		case d.name == "root" || d.name == "alias":
			n.b.skip(d.src(where), d.text(), NotNeeded, "this location passes every request to the app; no file is served from here")
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		default:
			n.directive(d, where, false)
		}
	}
}

// pass translates uwsgi_pass / proxy_pass: the app server behind nginx,
// which berth runs itself.
func (n *nginxImport) pass(d *ndir, where string) {
	src := d.src(where)
	if d.name != "uwsgi_pass" && d.name != "proxy_pass" {
		n.b.skip(src, d.text(), NoEquivalent, "berth runs WSGI apps through the uwsgi protocol; %s has no equivalent", d.name)
		return
	}
	if len(d.args) != 1 {
		n.b.skip(src, d.text(), NeedsDecision, "expected one target")
		return
	}
	target := d.args[0]
	for _, scheme := range []string{"http://", "uwsgi://", "suwsgi://", "https://"} {
		target = strings.TrimPrefix(target, scheme)
	}
	if strings.HasPrefix(target, "unix:") {
		target = strings.TrimSuffix(target, ":")
		if i := strings.Index(target[5:], ":"); i >= 0 {
			target = target[:5+i] // proxy_pass http://unix:/path:/uri
		}
	} else if i := strings.IndexByte(target, '/'); i >= 0 {
		target = target[:i]
	}
	if target == "" {
		n.b.skip(src, d.text(), NeedsDecision, "an empty target")
		return
	}
	if strings.Contains(target, "$") {
		n.b.skip(src, d.text(), NeedsDecision, "a target with variables is chosen per request; berth sends every request to its own workers")
		return
	}
	if u, ok := n.upstreams[target]; ok {
		first := !n.used[u]
		n.used[u] = true
		var servers []*ndir
		for _, s := range u.block {
			if s.name == "server" {
				servers = append(servers, s)
			}
		}
		if len(servers) != 1 || len(servers[0].args) == 0 || !localAddr(servers[0].args[0]) {
			n.b.skip(src, d.text(), NotYetSupported, "upstream %s balances over several or remote servers; needs upstreams: and routes:", target)
			if first {
				n.b.skip(u.blockSrc(""), u.body(), NotYetSupported, "needs upstreams: (berth in front of other hosts)")
			}
			return
		}
		if first {
			n.b.skip(u.blockSrc(""), u.body(), NotNeeded, "one local server, the app, which berth runs itself")
		}
		target = servers[0].args[0]
		if !strings.HasPrefix(target, "unix:") && !strings.Contains(target, ":") {
			target += ":80"
		}
	} else if !localAddr(target) {
		n.b.skip(src, d.text(), NotYetSupported, "%s is another host; needs upstreams: and routes: (berth in front of other hosts)", target)
		return
	}
	switch {
	case !n.b.appServer:
		n.b.skip(src, d.text(), NeedsDecision, "berth runs the app itself: import the uwsgi.ini or gunicorn.conf.py of the server at %s too, or write app: by hand", target)
	case !n.b.hasAppSocket(target):
		n.b.skip(src, d.text(), NeedsDecision, "the imported app server listens on %s, not %s: check that it is the app nginx passed to", strings.Join(n.b.appSockets, ", "), target)
	default:
		n.b.skip(src, d.text(), NotNeeded, "berth's proxy talks to its own workers")
	}
}

// hasAppSocket reports whether addr is one the imported app servers bound.
// With none recorded (Gunicorn's default bind), any local address counts.
func (b *builder) hasAppSocket(addr string) bool {
	if len(b.appSockets) == 0 {
		return true
	}
	norm := func(a string) string {
		if strings.HasPrefix(a, "unix:") {
			return path.Clean(strings.TrimPrefix(a, "unix:"))
		}
		h, p, err := net.SplitHostPort(a)
		if err != nil {
			return a
		}
		if h == "" || h == "0.0.0.0" || h == "::" || h == "localhost" || h == "127.0.0.1" || h == "::1" {
			h = "local"
		}
		return h + ":" + p
	}
	for _, s := range b.appSockets {
		if norm(s) == norm(addr) {
			return true
		}
	}
	return false
}

// localAddr reports whether an nginx address is on this host.
func localAddr(a string) bool {
	if strings.HasPrefix(a, "unix:") {
		return true
	}
	h, _, err := net.SplitHostPort(a)
	if err != nil {
		h = a
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// resolve translates the inheritable directives now that every location
// that reaches the app is known: berth has one body limit and one request
// timeout, so the value in force where the app is reached counts.
func (n *nginxImport) resolve() {
	// The catch-all location is where most requests reach the app.
	main := 0
	for i := len(n.appLocs) - 1; i >= 0; i-- {
		if p := n.appLocs[i].path; p == "/" || strings.HasPrefix(p, "@") {
			main = i
		}
	}
	readTimeout := func(l appLoc) string {
		if l.pass.name == "uwsgi_pass" {
			return "uwsgi_read_timeout"
		}
		return "proxy_read_timeout"
	}
	chosen := map[*ndir]bool{}
	inForce := map[*ndir]bool{}
	for i, l := range n.appLocs {
		for _, name := range []string{"client_max_body_size", readTimeout(l)} {
			d, _ := l.scope.get(name)
			if d == nil {
				continue
			}
			inForce[d] = true
			if i == main {
				chosen[d] = true
			}
		}
	}
	for _, p := range n.pending {
		d := p.d
		where := p.scope.where
		src := d.src(where)
		if d.name == "root" {
			if !n.rootUsed[d] {
				n.b.skip(src, d.text(), NotNeeded, "no static location serves files from it")
			}
			continue
		}
		if !inForce[d] {
			n.b.skip(src, d.text(), NotNeeded, "applies to no location that reaches the app")
			continue
		}
		key, val, note, ok := n.nginxValue(d, where)
		if !ok {
			continue
		}
		if chosen[d] {
			n.b.set(key, val, src, note)
			continue
		}
		if cur := n.b.scalars[key]; cur != nil && display(cur.value) == display(val) {
			n.b.skip(src, d.text(), NotNeeded, "%s is already %s", key, display(val))
			continue
		}
		n.b.skip(src, d.text(), NeedsDecision, "berth has one %s; the value in force at location %s was kept", key, n.appLocs[main].path)
	}
}

// nginxValue converts an inheritable directive into its berth key and value.
func (n *nginxImport) nginxValue(d *ndir, where string) (string, any, string, bool) {
	src := d.src(where)
	if len(d.args) != 1 {
		n.b.skip(src, d.text(), NeedsDecision, "expected one value")
		return "", nil, "", false
	}
	switch d.name {
	case "client_max_body_size":
		s, err := nginxSize(d.args[0])
		if err != nil {
			n.b.skip(src, d.text(), NeedsDecision, "%v", err)
			return "", nil, "", false
		}
		note := "413 above it"
		if s == 0 {
			note = "0: no limit"
		}
		return "proxy.max_body_size", s, note, true
	default: // uwsgi_read_timeout, proxy_read_timeout
		t, err := nginxTime(d.args[0])
		if err != nil || t <= 0 {
			n.b.skip(src, d.text(), NeedsDecision, "expected a time such as 60s")
			return "", nil, "", false
		}
		return "workers.timeout", t, "nginx gave up waiting for the app; berth answers 504 and replaces the worker", true
	}
}

// nginxSize reads an nginx size: bytes, or k/m/g (×1024).
func nginxSize(s string) (config.Size, error) {
	if s == "" {
		return 0, fmt.Errorf("an empty size; write a number with k, m or g")
	}
	mult := config.Size(1)
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	}
	num := s
	if mult != 1 {
		num = s[:len(s)-1]
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not an nginx size (a number with k, m or g)", s)
	}
	return config.Size(v) * mult, nil
}

// nginxTime reads an nginx time: "60" (seconds), "1m30s", "500ms", ...
func nginxTime(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("an empty time; write e.g. 60s")
	}
	if isDigits(s) {
		v, _ := strconv.Atoi(s)
		return time.Duration(v) * time.Second, nil
	}
	units := []struct {
		name string
		d    time.Duration
	}{{"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}, {"d", 24 * time.Hour}, {"w", 7 * 24 * time.Hour}}
	var total time.Duration
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("%q is not an nginx time", s)
		}
		v, _ := strconv.Atoi(rest[:i])
		rest = rest[i:]
		found := false
		for _, u := range units {
			if strings.HasPrefix(rest, u.name) && !(u.name == "m" && strings.HasPrefix(rest, "ms")) {
				total += time.Duration(v) * u.d
				rest = rest[len(u.name):]
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("%q is not an nginx time", s)
		}
	}
	return total, nil
}

func sortedUpstreams(m map[string]*ndir) []*ndir {
	var out []*ndir
	for _, u := range m {
		out = append(out, u)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && (out[j].file < out[j-1].file || out[j].file == out[j-1].file && out[j].line < out[j-1].line); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
