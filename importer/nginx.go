package importer

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
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
	// rules are the directives of this level whose translation waits until
	// every location is known (ruleDirectives), in order.
	rules []*ndir
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

// family returns the directives named names in force here, in order, and
// the level they are set at: nginx's rule for add_header, allow/deny,
// limit_req, error_page and the like, where a level that sets any of them
// drops every one its parents set.
func (s *nginxScope) family(names ...string) ([]*ndir, *nginxScope) {
	for ; s != nil; s = s.parent {
		var out []*ndir
		for _, d := range s.rules {
			if slices.Contains(names, d.name) {
				out = append(out, d)
			}
		}
		if len(out) > 0 {
			return out, s
		}
	}
	return nil, nil
}

// last returns the directive name in force here, the last one written at
// the nearest level that has it.
func (s *nginxScope) last(name string) *ndir {
	fam, _ := s.family(name)
	if len(fam) == 0 {
		return nil
	}
	return fam[len(fam)-1]
}

// inherited are the directives whose meaning depends on the locations that
// reach the app, resolved once every location is known.
var inherited = map[string]bool{
	"client_max_body_size": true, "client_body_buffer_size": true, "uwsgi_read_timeout": true, "proxy_read_timeout": true, "root": true,
}

// ruleDirectives are translated once every location of the site is known,
// since what they do in each location follows nginx's inheritance
// (nginxrules.go, nginxedge.go).
var ruleDirectives = map[string]bool{
	"add_header": true, "allow": true, "deny": true, "limit_req": true, "limit_req_status": true,
	"auth_basic": true, "auth_basic_user_file": true, "satisfy": true, "error_page": true,
	"limit_conn": true, "limit_conn_status": true, "return": true, "rewrite": true, "expires": true,
	"ssl_certificate": true, "ssl_certificate_key": true,
	"uwsgi_cache": true, "proxy_cache": true, "uwsgi_cache_valid": true, "proxy_cache_valid": true,
	"uwsgi_cache_key": true, "proxy_cache_key": true, "uwsgi_cache_use_stale": true, "proxy_cache_use_stale": true,
	"uwsgi_cache_bypass": true, "proxy_cache_bypass": true, "uwsgi_no_cache": true, "proxy_no_cache": true,
}

// definitions name a zone or a format that other directives use; they are
// listed once it is known whether anything used them.
var definitions = map[string]bool{
	"limit_req_zone": true, "limit_conn_zone": true, "uwsgi_cache_path": true, "proxy_cache_path": true,
}

// pending is an inheritable directive and the scope it was set in.
type pending struct {
	d     *ndir
	scope *nginxScope
}

// appLoc is a location that passes requests on: to the app, or, with
// group set, to an upstreams: group.
type appLoc struct {
	scope *nginxScope
	path  string
	pass  *ndir
	group string
}

// nloc is one location of the site that berth's locations: can stand for
// (a prefix or exact location, no regular expression), with what it does.
type nloc struct {
	d     *ndir
	sc    *nginxScope
	exact bool
	path  string
	src   Source
	// content: "app" (passes to the app), "route" (to an upstream group),
	// "static", "errorpage" (serves only an error_page target), "none".
	content string
	// skip, when set, lists the block if no berth location is made of it.
	skip *Skipped
	// static is the index of the static: entry it became, -1 for none.
	static int
}

type nginxImport struct {
	b         *builder
	upstreams map[string]*ndir
	used      map[*ndir]bool // upstreams some pass names
	pending   []pending
	appLocs   []appLoc
	// logFormats are the log_format definitions by name; zones the
	// limit_req_zone, limit_conn_zone and *_cache_path ones by zone name.
	logFormats map[string]*ndir
	zones      map[string]*ndir
	// rootUsed marks root directives that a static location translated.
	rootUsed map[*ndir]bool
	// deferred are the rule directives and definitions, with their scope;
	// handled marks those translated or listed.
	deferred []pending
	handled  map[*ndir]bool
	// The site: the server block translated, its scope and its locations.
	site      *ndir
	siteScope *nginxScope
	locs      []*nloc
	// errorURIs are the URIs the site's error_page directives name.
	errorURIs map[string]bool
	// redirects are the servers that only redirect, decided once the
	// site's listeners are known.
	redirects []*ndir
	rules     *siteRules
	answers   map[*nloc]answered
	// portServers counts the server blocks listening on each port.
	portServers map[string]int
	prefix      string // Options.NginxPrefix, for relative paths
	fsRoot      string // Options.FSRoot
}

// importNginx translates one nginx config and the files it includes.
func importNginx(b *builder, file, prefix, fsRoot string) error {
	dirs, err := loadNginx(file, prefix)
	if err != nil {
		return err
	}
	n := &nginxImport{b: b, upstreams: map[string]*ndir{}, used: map[*ndir]bool{}, rootUsed: map[*ndir]bool{},
		logFormats: map[string]*ndir{}, zones: map[string]*ndir{}, handled: map[*ndir]bool{}, portServers: map[string]int{}, prefix: prefix, fsRoot: fsRoot}
	root := &nginxScope{where: "", vals: map[string]*ndir{}}
	n.collect(dirs)
	n.http(dirs, root, "")
	n.translateSite()
	n.resolve()
	for _, s := range n.redirects {
		n.redirectServer(s)
	}
	n.leftovers()
	for _, u := range sortedUpstreams(n.upstreams) {
		if !n.used[u] {
			b.skip(u.blockSrc(""), u.body(), NotNeeded, "no location passes requests to it")
		}
	}
	return nil
}

// collect finds the definitions other directives refer to by name:
// upstream blocks, log formats, zones.
func (n *nginxImport) collect(dirs []*ndir) {
	for _, d := range dirs {
		switch {
		case d.name == "upstream" && len(d.args) > 0:
			n.upstreams[d.args[0]] = d
		case d.name == "log_format" && len(d.args) > 0:
			n.logFormats[d.args[0]] = d
		case definitions[d.name]:
			if name := zoneName(d); name != "" {
				n.zones[d.name+" "+name] = d
			}
		case d.name == "http":
			n.collect(d.block)
		}
	}
}

// zoneName is the name a zone definition gives: zone=NAME:SIZE, or
// keys_zone=NAME:SIZE for a cache path.
func zoneName(d *ndir) string {
	for _, a := range d.args {
		for _, p := range []string{"zone=", "keys_zone="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				name, _, _ := strings.Cut(v, ":")
				return name
			}
		}
	}
	return ""
}

// defer records a rule directive or definition of the scope sc, to be
// translated once every location is known.
func (n *nginxImport) deferRule(d *ndir, sc *nginxScope) {
	d.where = sc.where
	sc.rules = append(sc.rules, d)
	n.deferred = append(n.deferred, pending{d, sc})
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
		case d.name == "log_format":
			n.directive(d, where, false)
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		case ruleDirectives[d.name] || definitions[d.name]:
			n.deferRule(d, sc)
		default:
			n.directive(d, where, false)
		}
	}
	for _, s := range servers {
		for _, d := range s.block {
			if d.name == "listen" && len(d.args) > 0 {
				n.portServers[listenPort(d.args[0])]++
			}
		}
	}
	for _, s := range servers {
		n.server(s, sc)
	}
}

// listenPort is the port of an nginx listen address ("80", "*:8080",
// "[::]:443"); the address itself for a unix socket.
func listenPort(a string) string {
	if isDigits(a) || strings.HasPrefix(a, "unix:") {
		return a
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && !strings.HasSuffix(a, "]") {
		return a[i+1:]
	}
	return "80"
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
	if names := serverNames(s); len(names) > 0 {
		return "server " + names[0]
	}
	return "server"
}

// serverNames lists a server block's server_name values.
func serverNames(s *ndir) []string {
	var out []string
	for _, d := range s.block {
		if d.name == "server_name" {
			out = append(out, d.args...)
		}
	}
	return out
}

func (n *nginxImport) server(s *ndir, parent *nginxScope) {
	where := serverWhere(s)
	src := s.src(parent.where)
	src.Key, src.raw = where, s.body()
	if !serverPasses(s.block) {
		if redirectOnly(s) {
			n.redirects = append(n.redirects, s)
			return
		}
		n.b.skip(src, src.raw, NoEquivalent, "this server block sends nothing to the app; berth serves one app, with its static: directories")
		return
	}
	if n.site != nil {
		n.b.skip(src, src.raw, NeedsDecision, "berth serves one site; the first server block that reaches the app was translated, this one was not: merge what it needs into berth.yaml by hand")
		return
	}
	n.site = s
	sc := parent.child(where)
	n.siteScope = sc
	ssl := false
	for _, d := range s.block {
		if d.name == "ssl" && len(d.args) == 1 && d.args[0] == "on" {
			ssl = true
		}
	}
	var locations []*ndir
	for _, d := range s.block {
		switch {
		case d.name == "location":
			locations = append(locations, d)
		case d.name == "listen":
			n.listen(d, where, ssl)
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		case ruleDirectives[d.name]:
			n.deferRule(d, sc)
		default:
			n.directive(d, where, false)
		}
	}
	n.errorURIs = map[string]bool{}
	if fam, _ := sc.family("error_page"); fam != nil {
		for _, d := range fam {
			if len(d.args) >= 2 {
				n.errorURIs[d.args[len(d.args)-1]] = true
			}
		}
	}
	for _, l := range locations {
		n.location(l, sc)
	}
}

// listen translates one listen directive; ssl says the server has `ssl
// on`, nginx's old way of making every listener TLS.
func (n *nginxImport) listen(d *ndir, where string, ssl bool) {
	src := d.src(where)
	if len(d.args) == 0 {
		return
	}
	addr := d.args[0]
	if addr == "" {
		n.b.skip(src, d.text(), NeedsDecision, "an empty address")
		return
	}
	var dropped, notes []string
	for _, p := range d.args[1:] {
		switch {
		case p == "ssl":
			ssl = true
		case p == "http2":
			notes = append(notes, "HTTP/2 by ALPN on every https:// listener")
		case p == "quic" || p == "http3":
			n.b.skip(src, d.text(), NotYetSupported, whyHTTP3)
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
		if ssl {
			n.b.skip(src, d.text(), NoEquivalent, "berth's TLS listeners are TCP")
			return
		}
	case isDigits(addr):
		addr = ":" + addr
	case strings.HasPrefix(addr, "*:"):
		addr = addr[1:]
	case !strings.Contains(addr, ":") || strings.HasSuffix(addr, "]"):
		addr += ":80" // nginx's default port
		if ssl {
			addr = strings.TrimSuffix(addr, ":80") + ":443"
		}
	}
	if len(dropped) > 0 {
		notes = append(notes, "without "+strings.Join(dropped, " ")+" (nginx-only parameters)")
	}
	if ssl {
		notes = append([]string{"ssl: a TLS listener"}, notes...)
		addr = config.TLSScheme + addr
	}
	for _, it := range n.b.lists["listen"] {
		old, _ := it.value.(string)
		if strings.HasPrefix(old, config.TLSScheme) == ssl && wildcardClash(config.ListenAddress(old), config.ListenAddress(addr)) {
			n.b.skip(src, d.text(), NotNeeded, "berth's %s from %s already takes IPv4 and IPv6 on that port", old, it.src.String())
			return
		}
	}
	n.b.add("listen", addr, src, strings.Join(notes, "; "))
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
			n.b.skip(src, src.raw, NeedsDecision, "nested locations are not translated; write berth's static: and locations: entries for them by hand")
			return
		}
	}
	plain := (mod == "" || mod == "^~" || mod == "=") && strings.HasPrefix(p, "/")
	for _, o := range n.locs {
		if plain && o.path == p && o.exact == (mod == "=") {
			n.b.skip(src, src.raw, NeedsDecision, "%s matches the same paths, and nginx refuses a duplicate location; keep one", o.src.String())
			return
		}
	}
	var loc *nloc
	if plain {
		loc = &nloc{d: l, sc: sc, exact: mod == "=", path: p, src: src, static: -1}
		n.locs = append(n.locs, loc)
	}
	// Rules first: whatever the location serves, they are translated once
	// every location is known. A regular-expression location is listed
	// whole below, its rules with it.
	var body []*ndir
	for _, d := range l.block {
		if plain && ruleDirectives[d.name] {
			n.deferRule(d, sc)
			continue
		}
		body = append(body, d)
	}
	if pass := locationPass(body); pass != nil {
		n.appLocation(l, sc, loc, mod, p, pass, body)
		return
	}
	var alias, root *ndir
	for _, d := range body {
		switch d.name {
		case "alias":
			alias = d
		case "root":
			root = d
		}
	}
	if loc != nil && n.errorPageOnly(loc, body) {
		return
	}
	if root == nil && alias == nil {
		root, _ = parent.get("root")
	}
	switch {
	case mod != "" && mod != "^~" && mod != "=" || strings.HasPrefix(p, "@"):
		why := "berth maps static URLs by prefix, not by regular expression or name"
		if alias == nil && root == nil {
			why = "berth's locations match by prefix or exact path, not by regular expression or name"
		}
		n.b.skip(src, src.raw, NoEquivalent, why)
		return
	case alias == nil && root == nil || loc != nil && len(body) == 0:
		why := "this location neither serves files nor reaches the app, and has no rule berth translates"
		if loc == nil {
			n.b.skip(src, src.raw, NoEquivalent, "%s", why)
			return
		}
		loc.content = "none"
		loc.skip = &Skipped{Source: src, Value: src.raw, Reason: NoEquivalent, Why: why}
		for _, d := range body {
			n.directive(d, where, false)
		}
		return
	case p == "/":
		n.b.skip(src, src.raw, NeedsDecision, "files at / before the app: berth serves static files only under static: URL prefixes; list the directories to serve")
		return
	}
	if loc == nil {
		loc = &nloc{static: -1} // a path berth cannot match on; it is refused below
	}
	loc.content = "static"
	if file, note, ok := n.oneFile(mod, p, alias, root, where); ok {
		if n.b.addStaticFile(item{value: p, src: src, note: note}, file) != nil {
			loc.static = len(n.b.static) - 1
		}
		n.staticRest(body, alias, root, where)
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
	if n.b.addStatic(item{value: url, src: src, note: urlNote}, dir) != nil {
		loc.static = len(n.b.static) - 1
	}
	n.staticRest(body, alias, root, where)
}

// errorPageOnly takes a location that only serves an error_page target
// (location = /50x.html { root /usr/share/nginx/html; }): berth sends the
// page itself (proxy.error_pages), so the location is not needed.
func (n *nginxImport) errorPageOnly(loc *nloc, body []*ndir) bool {
	internal := false
	for _, d := range body {
		switch d.name {
		case "internal":
			internal = true
		case "root", "alias", "access_log", "log_not_found":
		default:
			return false
		}
	}
	target := n.errorURIs[loc.path]
	for uri := range n.errorURIs {
		target = target || internal && !loc.exact && strings.HasPrefix(uri, loc.path)
	}
	if !target {
		return false
	}
	loc.content = "errorpage"
	loc.skip = &Skipped{Source: loc.src, Value: loc.src.raw, Reason: NotNeeded, Why: "serves only error_page targets, which berth sends itself (proxy.error_pages)"}
	for _, d := range body {
		why := "the page's file is in proxy.error_pages"
		switch d.name {
		case "internal":
			why = "berth sends its error pages itself, from no URL"
		case "access_log", "log_not_found":
			why = "berth logs the request that got the error page"
		}
		n.b.skip(d.src(loc.sc.where), d.text(), NotNeeded, "%s", why)
	}
	return true
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
		if strings.HasSuffix(p, "/") {
			d := alias
			if d == nil {
				d = root
			}
			n.b.skip(d.src(where), d.text(), NoEquivalent, "berth serves one file at an exact URL, and %s names a directory (nginx served its index file)", p)
			return item{value: "-"}, "", false
		}
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
func (n *nginxImport) staticRest(body []*ndir, alias, root *ndir, where string) {
	for _, d := range body {
		if d == alias || d == root {
			continue
		}
		switch d.name {
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

// appLocation translates a location that passes requests to the app, or
// to a group of other servers. loc is nil for a regular-expression or
// named location.
func (n *nginxImport) appLocation(l *ndir, sc *nginxScope, loc *nloc, mod, p string, pass *ndir, body []*ndir) {
	where := sc.where
	src := l.blockSrc(sc.parent.where)
	// The block is listed before what the pass lists, as it comes first.
	at := len(n.b.skipped)
	if loc != nil {
		loc.content = "app"
	}
	group, routed := n.pass(pass, where, loc)
	if loc != nil && loc.content == "route" {
		routed = true // a route, or one that failed and was listed
	}
	listBlock := func(r Reason, why string) {
		n.b.skipped = slices.Insert(n.b.skipped, at, Skipped{Source: src, Value: shorten(firstLine(src.raw)), Reason: r, Why: why})
	}
	switch {
	case routed:
		if loc != nil {
			loc.content = "route"
		}
	case mod == "" && p == "/" || strings.HasPrefix(p, "@"):
		listBlock(NotNeeded, "berth sends every request that no static: entry takes to its workers")
	case loc != nil:
		// Listed at the end unless a berth location is made of it; whether
		// a catch-all location reaches the app too is known then.
		loc.skip = &Skipped{Source: src, Value: src.raw, Reason: NeedsDecision, Why: fmt.Sprintf("berth sends every path to its one app, not only %s; check that the app answers only what it should", strings.Join(l.args, " "))}
	default:
		listBlock(NeedsDecision, fmt.Sprintf("berth sends every path to its one app, not only %s; check that the app answers only what it should", strings.Join(l.args, " ")))
	}
	if group == "-" {
		group = "" // not translated: its limits are still weighed as the app's
	}
	n.appLocs = append(n.appLocs, appLoc{scope: sc, path: p, pass: pass, group: group})
	for _, d := range body {
		switch {
		case d == pass:
		case d.name == "root" || d.name == "alias":
			n.b.skip(d.src(where), d.text(), NotNeeded, "this location passes every request on; no file is served from here")
		case inherited[d.name]:
			sc.vals[d.name] = d
			n.pending = append(n.pending, pending{d, sc})
		default:
			n.directive(d, where, false)
		}
	}
}

// pass translates uwsgi_pass / proxy_pass: the app server behind nginx,
// which berth runs itself, or other servers, which become an upstreams:
// group and a route (loc nil: a location berth cannot route). group is the
// group's name, "" for the app, "-" when the pass was not translated;
// routed says a route was made.
func (n *nginxImport) pass(d *ndir, where string, loc *nloc) (group string, routed bool) {
	src := d.src(where)
	if d.name != "uwsgi_pass" && d.name != "proxy_pass" {
		n.b.skip(src, d.text(), NoEquivalent, "berth runs WSGI apps through the uwsgi protocol and proxies HTTP; %s has no equivalent", d.name)
		return "-", false
	}
	if len(d.args) != 1 {
		n.b.skip(src, d.text(), NeedsDecision, "expected one target")
		return "-", false
	}
	target := d.args[0]
	scheme := ""
	for _, sch := range []string{"http://", "uwsgi://", "suwsgi://", "https://"} {
		if t, ok := strings.CutPrefix(target, sch); ok {
			target, scheme = t, sch
		}
	}
	uri := ""
	if strings.HasPrefix(target, "unix:") {
		target = strings.TrimSuffix(target, ":")
		if i := strings.Index(target[5:], ":"); i >= 0 {
			target, uri = target[:5+i], target[5+i+1:] // proxy_pass http://unix:/path:/uri
		}
	} else if i := strings.IndexByte(target, '/'); i >= 0 {
		target, uri = target[:i], target[i:]
	}
	if target == "" {
		n.b.skip(src, d.text(), NeedsDecision, "an empty target")
		return "-", false
	}
	if strings.Contains(target, "$") {
		n.b.skip(src, d.text(), NeedsDecision, "a target with variables is chosen per request; berth sends every request to its own workers or a fixed group")
		return "-", false
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
			return n.route(d, src, loc, target, u, scheme, uri)
		}
		if first {
			n.b.skip(u.blockSrc(""), u.body(), NotNeeded, "one local server, the app, which berth runs itself")
		}
		target = servers[0].args[0]
		if !strings.HasPrefix(target, "unix:") && !strings.Contains(target, ":") {
			target += ":80"
		}
	} else if !localAddr(target) {
		return n.route(d, src, loc, target, nil, scheme, uri)
	}
	switch {
	case !n.b.appServer:
		n.b.skip(src, d.text(), NeedsDecision, "berth runs the app itself: import the uwsgi.ini or gunicorn.conf.py of the server at %s too, or write app: by hand", target)
	case !n.b.hasAppSocket(target):
		n.b.skip(src, d.text(), NeedsDecision, "the imported app server listens on %s, not %s: check that it is the app nginx passed to", strings.Join(n.b.appSockets, ", "), target)
	default:
		n.b.skip(src, d.text(), NotNeeded, "berth's proxy talks to its own workers")
	}
	return "", false
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
	// groupTimeouts: proxy_read_timeout in force where a location routes to
	// an upstreams: group is that group's timeout.
	groupTimeouts := map[*ndir][]string{}
	for i, l := range n.appLocs {
		names := []string{"client_max_body_size", "client_body_buffer_size"}
		if l.group == "" {
			names = append(names, readTimeout(l))
		} else if d, _ := l.scope.get("proxy_read_timeout"); d != nil && !slices.Contains(groupTimeouts[d], l.group) {
			groupTimeouts[d] = append(groupTimeouts[d], l.group)
		}
		for _, name := range names {
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
		if groups := groupTimeouts[d]; len(groups) > 0 {
			n.groupTimeout(d, where, groups)
			if !inForce[d] {
				continue
			}
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
	case "client_body_buffer_size":
		s, err := nginxSize(d.args[0])
		if err != nil {
			n.b.skip(src, d.text(), NeedsDecision, "%v", err)
			return "", nil, "", false
		}
		if s < 1 || s > config.MaxBodyBufferSize {
			n.b.skip(src, d.text(), NeedsDecision, "berth's proxy.body_buffer_size is from 1 byte to 1g; choose one, or leave it out for 64k")
			return "", nil, "", false
		}
		return "proxy.body_buffer_size", s, "bodies up to it stay in memory, longer ones go to a temp file", true
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
	}{{"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}, {"d", 24 * time.Hour}, {"w", 7 * 24 * time.Hour},
		{"M", 30 * 24 * time.Hour}, {"y", 365 * 24 * time.Hour}}
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
