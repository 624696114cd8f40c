package importer

// nginxrules.go: what nginx did per location to protect the app (allow and
// deny, limit_req, auth_basic, add_header, return and simple rewrites) as
// berth's locations:, and the site-wide part (proxy.headers, HSTS, error
// pages, limit_conn), once every location of the site is known.
//
// nginx resolves these per location by inheritance: a location without
// add_header (or allow/deny, limit_req, …) takes its server's, one with its
// own drops the server's. berth's locations do not inherit: a request gets
// one entry's rules. So the importer computes the rules in force in every
// nginx location and writes a berth location for each one whose rules
// differ from what berth would otherwise apply to its paths.

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// locRules are the berth rules of one location, as they render.
type locRules struct {
	access  []item
	limit   *item
	auth    *item
	answer  *keyItem
	headers []headerItem
	// zone is the limit_req_zone the limit came from.
	zone *ndir
	// dirs are the nginx directives the rules were made of.
	dirs []*ndir
}

// sig is the rules as berth reads them, to compare two locations'; ""
// for no rules.
func (r *locRules) sig() string {
	var b strings.Builder
	for _, a := range r.access {
		b.WriteString("access " + display(a.value) + ";")
	}
	if r.limit != nil {
		b.WriteString("limit " + display(r.limit.value) + ";")
	}
	if r.auth != nil {
		b.WriteString("auth " + display(r.auth.value) + ";")
	}
	if r.answer != nil {
		b.WriteString(r.answer.key + " " + display(r.answer.value) + ";")
	}
	for _, h := range r.headers {
		b.WriteString("header " + h.name + ": " + display(h.value) + ";")
	}
	return b.String()
}

// hdr is one translated add_header.
type hdr struct {
	name, value string
	always      bool
	d           *ndir
}

// siteRules holds what the site's rules translate to, memoized per nginx
// directive so that each is translated (or listed) once however many
// locations inherit it.
type siteRules struct {
	access  map[*ndir][]item // by the family's first directive; nil: not translatable
	headers map[*ndir]*hdr   // nil: not translatable
	limits  map[limitKey]*locRules
	auths   map[authKey]*item
	// server are the headers of proxy.headers by lower-case name, and
	// serverFam the add_header family they came from.
	server    map[string]hdr
	serverFam []*ndir
	hsts      bool // Strict-Transport-Security became tls.hsts
}

// candidate is a berth location the site may need.
type candidate struct {
	exact   bool
	path    string
	src     Source
	note    string
	rules   *locRules
	loc     *nloc // nil for a rewrite's or the server's own rules
	emitted bool
}

// translateSite translates the rule directives of the site server, its
// locations and the http context above it.
func (n *nginxImport) translateSite() {
	if n.site == nil {
		return
	}
	sc := n.siteScope
	n.rules = &siteRules{access: map[*ndir][]item{}, headers: map[*ndir]*hdr{}, limits: map[limitKey]*locRules{}, auths: map[authKey]*item{}}
	n.certificates(sc)
	n.proxyHeaders(sc)
	n.errorPages(sc)
	n.connectionLimit(sc)
	n.cacheRoutes()
	n.expires()
	n.locationRules(sc)
}

// locationRules writes the berth locations the site needs.
func (n *nginxImport) locationRules(sc *nginxScope) {
	var cands []*candidate
	hasRoot := false
	catchAll := false
	for _, l := range n.locs {
		if !l.exact && l.path == "/" {
			hasRoot = true
			catchAll = catchAll || l.content == "app"
		}
		c := &candidate{exact: l.exact, path: l.path, src: l.src, loc: l}
		c.rules = n.rulesAt(l.sc, l)
		if a := c.rules.access; l.content == "none" && c.rules.answer == nil && len(a) > 0 && display(a[len(a)-1].value) != "{deny: all}" {
			c.note = "nginx served no content here; berth sends the requests these rules let through on to the app"
		}
		cands = append(cands, c)
	}
	for _, d := range sc.rules {
		if d.name == "return" {
			n.handled[d] = true
			n.b.skip(d.at(), d.text(), NeedsDecision, "answers every request of this server before any location, so nginx never reached the app with it; write it by hand (hosts:, locations:)")
		}
	}
	rewrites := n.rewrites(sc, nil)
	for _, l := range n.locs {
		rewrites = append(rewrites, n.rewrites(l.sc, l)...)
	}
	for _, r := range rewrites {
		if r.loc != nil {
			// The location's own path: the rewrite answers all of it.
			for _, c := range cands {
				if c.loc == r.loc {
					c.rules, c.note = r.rules, ""
				}
			}
			continue
		}
		if o := sameMatch(cands, r); o != nil {
			d := r.rules.dirs[0]
			n.handled[d] = true
			n.b.skip(d.at(), d.text(), NeedsDecision, "%s matches the same paths; berth's location has one answer: write it by hand", o.src.String())
			continue
		}
		cands = append(cands, r)
	}
	server := n.rulesAt(sc, nil)
	if server.sig() != "" && !hasRoot {
		src := n.site.src(sc.parent.where)
		src.Key, src.raw = sc.where, ""
		cands = append(cands, &candidate{path: "/", src: src, rules: server,
			note: "the server's own rules, for the paths no location takes"})
	}
	// A location is written when its rules differ from those of the berth
	// location its paths would fall into otherwise: the longest written
	// prefix of its path. Deciding the shorter paths first decides that
	// location before any that depends on it.
	order := slices.Clone(cands)
	slices.SortStableFunc(order, func(a, b *candidate) int {
		if len(a.path) != len(b.path) {
			return len(a.path) - len(b.path)
		}
		return boolInt(a.exact) - boolInt(b.exact)
	})
	for _, c := range order {
		want := ""
		if o := selectCandidate(cands, c); o != nil {
			want = o.rules.sig()
		}
		c.emitted = c.rules.sig() != want
	}
	zoneUses := map[*ndir]int{}
	var zones []*ndir
	for _, c := range cands {
		if !c.emitted {
			continue
		}
		n.emitLocation(c)
		if z := c.rules.zone; z != nil {
			if zoneUses[z] == 0 {
				zones = append(zones, z)
			}
			zoneUses[z]++
		}
	}
	for _, c := range cands {
		if c.emitted {
			continue
		}
		for _, d := range c.rules.dirs {
			if !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.at(), d.text(), NotNeeded, "berth applies the same rules to these paths already")
			}
		}
	}
	for _, z := range zones {
		uses := zoneUses[z]
		n.handled[z] = true
		if uses > 1 {
			n.b.skip(z.at(), z.text(), NoEquivalent, "%d locations share this zone in nginx; berth keeps buckets per location, so each of them now allows the whole rate", uses)
		} else {
			n.b.skip(z.at(), z.text(), NotNeeded, "a zone definition: its key and rate are in the locations: limit that uses it")
		}
	}
	for _, l := range n.locs {
		if l.skip == nil || emittedLoc(cands, l) {
			continue
		}
		s := *l.skip
		if l.content == "app" && catchAll {
			s.Reason, s.Why = NotNeeded, "the app gets these requests, as every request no static: entry takes"
		}
		n.b.skipped = append(n.b.skipped, s)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func emittedLoc(cands []*candidate, l *nloc) bool {
	for _, c := range cands {
		if c.loc == l && c.emitted {
			return true
		}
	}
	return false
}

// sameMatch is the candidate matching the same paths as c, nil if none.
func sameMatch(cands []*candidate, c *candidate) *candidate {
	for _, o := range cands {
		if o.exact == c.exact && o.path == c.path {
			return o
		}
	}
	return nil
}

// selectCandidate is the written location berth would pick for c's paths:
// the exact one for an exact path, else the longest prefix of c's path.
func selectCandidate(cands []*candidate, c *candidate) *candidate {
	var best *candidate
	for _, o := range cands {
		if !o.emitted || o == c {
			continue
		}
		switch {
		case o.exact:
			if c.exact && o.path == c.path {
				return o
			}
		case strings.HasPrefix(c.path, o.path) && (best == nil || len(o.path) > len(best.path)):
			best = o
		}
	}
	return best
}

// emitLocation writes one berth location.
func (n *nginxImport) emitLocation(c *candidate) {
	key := "path"
	if c.exact {
		key = "exact"
	}
	r := c.rules
	l := locItem{match: keyItem{key, item{value: c.path, src: c.src, note: c.note}},
		access: r.access, limit: r.limit, auth: r.auth, answer: r.answer, headers: r.headers}
	n.b.locations = append(n.b.locations, l)
	n.b.count(c.src)
	for _, d := range r.dirs {
		n.handled[d] = true
		n.b.count(d.at())
	}
}

// rulesAt computes the berth rules in force at scope sc (loc nil: the
// server's own, for paths no location takes).
func (n *nginxImport) rulesAt(sc *nginxScope, loc *nloc) *locRules {
	r := &locRules{}
	if loc != nil {
		if ans, d := n.ownAnswer(loc); ans != nil {
			r.answer = ans
			r.dirs = append(r.dirs, d)
			n.neverChecked(loc, d)
			r.headers, r.dirs = n.headerDiff(sc, r.dirs)
			return r
		}
	}
	if fam, _ := sc.family("allow", "deny"); fam != nil {
		if items := n.accessFamily(fam); items != nil {
			r.access = items
			r.dirs = append(r.dirs, fam...)
		}
	}
	if fam, _ := sc.family("limit_req"); fam != nil {
		if lr := n.limitFamily(sc, fam); lr != nil {
			r.limit, r.zone = lr.limit, lr.zone
			r.dirs = append(r.dirs, lr.dirs...)
		}
	}
	if a, dirs := n.auth(sc); a != nil {
		r.auth = a
		r.dirs = append(r.dirs, dirs...)
	}
	if s := sc.last("satisfy"); s != nil && !n.handled[s] {
		n.handled[s] = true
		if len(s.args) == 1 && s.args[0] == "any" {
			n.b.skip(s.at(), s.text(), NoEquivalent, "berth checks access rules and basic auth both, as nginx's satisfy all; a client on an allowed network still needs a password")
		} else {
			n.b.skip(s.at(), s.text(), NotNeeded, "berth checks access rules and basic auth both, as satisfy all")
		}
	}
	r.headers, r.dirs = n.headerDiff(sc, r.dirs)
	return r
}

// neverChecked lists a location's own access, limit and auth directives
// when its return or rewrite answers first: nginx never checked them
// either.
func (n *nginxImport) neverChecked(loc *nloc, by *ndir) {
	for _, d := range loc.sc.rules {
		switch d.name {
		case "allow", "deny", "limit_req", "auth_basic", "auth_basic_user_file", "satisfy", "limit_req_status":
			if !n.handled[d] {
				n.handled[d] = true
				n.b.skip(d.src(loc.sc.where), d.text(), NotNeeded, "never checked: the %s on line %d answers first, in nginx too", by.name, by.line)
			}
		}
	}
}

// accessFamily translates allow/deny directives of one level, in order;
// nil when one of them cannot be translated (then all are listed, since
// the others alone would decide differently).
func (n *nginxImport) accessFamily(fam []*ndir) []item {
	if items, ok := n.rules.access[fam[0]]; ok {
		return items
	}
	var items []item
	var bad *ndir
	why := ""
	for _, d := range fam {
		if len(d.args) != 1 {
			bad, why = d, "expected one address"
			break
		}
		a := d.args[0]
		var v string
		switch {
		case a == "all":
			v = "all"
		case strings.HasPrefix(a, "unix:"):
			bad, why = d, "berth's access rules take IP addresses; clients on a unix socket have none"
		default:
			p, err := netip.ParsePrefix(a)
			if err != nil {
				addr, err2 := netip.ParseAddr(a)
				if err2 != nil {
					bad, why = d, fmt.Sprintf("%q is not an address or CIDR", a)
					break
				}
				p = netip.PrefixFrom(addr, addr.BitLen())
			}
			v = p.Masked().String()
			if p.Bits() == p.Addr().BitLen() {
				v = p.Addr().String()
			}
		}
		if bad != nil {
			break
		}
		items = append(items, item{value: flow(fmt.Sprintf("{%s: %s}", d.name, flowScalar(v))), src: d.at()})
	}
	if bad != nil {
		items = nil
		for _, d := range fam {
			n.handled[d] = true
			if d == bad {
				n.b.skip(d.at(), d.text(), NoEquivalent, "%s", why)
			} else {
				n.b.skip(d.at(), d.text(), NeedsDecision, "part of an allow/deny list whose line %d berth cannot take; the rest alone would decide otherwise: write the access rules by hand", bad.line)
			}
		}
	}
	n.rules.access[fam[0]] = items
	return items
}

// limitFamily translates the limit_req directives of one level with the
// limit_req_status in force at sc; nil when the first cannot be
// translated.
func (n *nginxImport) limitFamily(sc *nginxScope, fam []*ndir) *locRules {
	status := sc.last("limit_req_status")
	key := limitKey{fam[0], status}
	if lr, ok := n.rules.limits[key]; ok {
		return lr
	}
	for _, extra := range fam[1:] {
		if !n.handled[extra] {
			n.handled[extra] = true
			n.b.skip(extra.at(), extra.text(), NoEquivalent, "berth has one limit per location; the limit_req on line %d was translated", fam[0].line)
		}
	}
	lr := n.limit(fam[0], status)
	n.rules.limits[key] = lr
	return lr
}

// limitKey memoizes a limit_req with the limit_req_status in force.
type limitKey struct{ d, status *ndir }

// limit translates one limit_req with its zone and status; nil (and the
// directive listed) when it cannot be.
func (n *nginxImport) limit(d, status *ndir) *locRules {
	fail := func(r Reason, why string, args ...any) *locRules {
		n.handled[d] = true
		n.b.skip(d.at(), d.text(), r, why, args...)
		return nil
	}
	var zone *ndir
	burst, delay, nodelay := 0, 0, false
	for _, a := range d.args {
		k, v, _ := strings.Cut(a, "=")
		num, err := strconv.Atoi(v)
		switch {
		case k == "zone":
			zone = n.zones["limit_req_zone "+v]
			if zone == nil {
				return fail(NeedsDecision, "no limit_req_zone defines zone %s in the files imported; import the file that does", v)
			}
		case k == "burst" && err == nil && num >= 0:
			burst = num
		case k == "delay" && err == nil && num >= 0:
			delay = num
		case a == "nodelay":
			nodelay = true
		default:
			return fail(NeedsDecision, "berth import does not know the parameter %s", a)
		}
	}
	if zone == nil {
		return fail(NeedsDecision, "limit_req names no zone")
	}
	var rate config.Rate
	key := ""
	for _, a := range zone.args {
		if v, ok := strings.CutPrefix(a, "rate="); ok {
			r, err := config.ParseRate(v)
			if err != nil {
				return fail(NeedsDecision, "zone rate %s: %v", v, err)
			}
			rate = r
		} else if !strings.HasPrefix(a, "zone=") && a != "sync" && key == "" {
			key = a
		}
	}
	if rate.Requests == 0 {
		return fail(NeedsDecision, "zone %s has no rate", zoneName(zone))
	}
	note := []string{fmt.Sprintf("zone %s at %s:%d", zoneName(zone), zone.file, zone.line)}
	switch {
	case key == "$binary_remote_addr" || key == "$remote_addr":
		key = "" // berth's default, client
	case key == "$server_name":
		key, note = "global", append(note, "$server_name is one bucket for every client")
	case strings.Contains(key, "$") && validVars(key, config.ValidHashVar):
	default:
		return fail(NoEquivalent, "berth limits by client address, one global bucket, or text with variables it knows ($http_NAME, $cookie_NAME, $arg_NAME, $host, $uri, …); the zone's key is %s", key)
	}
	if delay > burst {
		delay, nodelay = 0, true // nginx passes the whole burst at once then
	}
	if nodelay {
		delay = 0
	}
	parts := []string{"rate: " + rate.String()}
	if burst > 0 {
		parts = append(parts, fmt.Sprintf("burst: %d", burst))
	}
	if nodelay {
		parts = append(parts, "nodelay: true")
	}
	if delay > 0 {
		parts = append(parts, fmt.Sprintf("delay: %d", delay))
	}
	if key != "" {
		parts = append(parts, "key: "+flowScalar(key))
	}
	code := 503
	dirs := []*ndir{d}
	if status != nil {
		c, err := strconv.Atoi(strings.Join(status.args, " "))
		if err != nil || c < 400 || c > 599 {
			n.handled[status] = true
			n.b.skip(status.at(), status.text(), NeedsDecision, "expected a status from 400 to 599")
		} else {
			code = c
			dirs = append(dirs, status)
			note = append(note, fmt.Sprintf("status from %s:%d limit_req_status", status.file, status.line))
		}
	}
	if status == nil {
		note = append(note, "status 503: nginx's default limit_req_status (berth's is 429)")
	}
	parts = append(parts, fmt.Sprintf("status: %d", code))
	it := item{value: flow("{" + strings.Join(parts, ", ") + "}"), src: d.at(), note: strings.Join(note, "; ")}
	return &locRules{limit: &it, zone: zone, dirs: dirs}
}

// validVars says whether s has only variables ok accepts.
func validVars(s string, ok func(string) bool) bool {
	for _, m := range nginxVarRE.FindAllStringSubmatch(s, -1) {
		if !ok(strings.Trim(m[1], "{}")) {
			return false
		}
	}
	return true
}

var nginxVarRE = regexp.MustCompile(`\$([A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\}|[0-9])`)

// auth translates auth_basic and auth_basic_user_file in force at sc.
func (n *nginxImport) auth(sc *nginxScope) (*item, []*ndir) {
	ab := sc.last("auth_basic")
	if ab == nil {
		return nil, nil
	}
	file := sc.last("auth_basic_user_file")
	if len(ab.args) == 1 && ab.args[0] == "off" {
		if !n.handled[ab] {
			n.handled[ab] = true
			n.b.skip(ab.at(), ab.text(), NotNeeded, "off: no basic auth here, as in berth")
		}
		return nil, nil
	}
	key := authKey{ab, file}
	if it, ok := n.rules.auths[key]; ok {
		if it == nil {
			return nil, nil
		}
		return it, []*ndir{ab, file}
	}
	fail := func(d *ndir, r Reason, why string) (*item, []*ndir) {
		n.rules.auths[key] = nil
		if n.handled[d] {
			return nil, nil // listed for another location already
		}
		n.handled[d] = true
		n.b.skip(d.at(), d.text(), r, "%s", why)
		return nil, nil
	}
	realm := strings.Join(ab.args, " ")
	switch {
	case file == nil:
		return fail(ab, NeedsDecision, "no auth_basic_user_file is in force here; berth needs the htpasswd file")
	case realm == "" || strings.ContainsAny(realm, "\"\\$") || strings.ContainsFunc(realm, func(r rune) bool { return r < 0x20 }):
		return fail(ab, NeedsDecision, "berth's realm is plain text without quotes, backslashes or variables")
	case len(file.args) != 1 || strings.Contains(file.args[0], "$"):
		return fail(file, NeedsDecision, "berth's users file is one path without variables")
	}
	users := file.args[0]
	note := fmt.Sprintf("users from %s:%d auth_basic_user_file; berth takes bcrypt, apr1 and {SHA} entries and refuses others (crypt(), plain text): berth check says which", file.file, file.line)
	if !path.IsAbs(users) {
		users = path.Join(n.prefix, users)
		note += "; the path is relative to nginx's prefix " + n.prefix
	}
	it := &item{value: flow(fmt.Sprintf("{basic: {realm: %s, users: %s}}", flowScalar(realm), flowScalar(users))), src: ab.at(), note: note}
	n.rules.auths[key] = it
	return it, []*ndir{ab, file}
}

// authKey memoizes an auth_basic with the user file in force with it.
type authKey struct{ basic, users *ndir }

// headerFamily translates the add_header directives of one level.
func (n *nginxImport) headerFamily(fam []*ndir) []hdr {
	var out []hdr
	seen := map[string]*ndir{}
	for _, d := range fam {
		h, ok := n.rules.headers[d]
		if !ok {
			h = n.header(d, seen)
			n.rules.headers[d] = h
		}
		if h != nil {
			seen[strings.ToLower(h.name)] = d
			out = append(out, *h)
		}
	}
	return out
}

// header translates one add_header; nil (and listed) when it cannot be.
func (n *nginxImport) header(d *ndir, seen map[string]*ndir) *hdr {
	fail := func(r Reason, why string, args ...any) *hdr {
		n.handled[d] = true
		n.b.skip(d.at(), d.text(), r, why, args...)
		return nil
	}
	args := d.args
	always := len(args) == 3 && args[2] == "always"
	if len(args) != 2 && !always {
		return fail(NeedsDecision, "expected a name, a value and optionally always")
	}
	name, value := args[0], args[1]
	if strings.Contains(value, "$") {
		if strings.Contains(value, "$upstream_cache_status") {
			return fail(NotNeeded, "berth sends X-Cache-Status itself on the routes it caches")
		}
		return fail(NoEquivalent, "berth's header values are fixed text; nginx filled in variables per request")
	}
	if err := config.CheckHeader(name, value); err != nil {
		return fail(NeedsDecision, "%v", err)
	}
	if first, dup := seen[strings.ToLower(name)]; dup {
		return fail(NeedsDecision, "line %d sets %s too; nginx sent both fields, berth sets one value: keep one", first.line, name)
	}
	return &hdr{name: name, value: value, always: always, d: d}
}

// hstsRE is a Strict-Transport-Security value tls.hsts can send.
var hstsRE = regexp.MustCompile(`^max-age=([0-9]+);?$`)

// proxyHeaders translates the site's own add_header set into
// proxy.headers, and its Strict-Transport-Security into tls.hsts where it
// is only a max-age.
func (n *nginxImport) proxyHeaders(sc *nginxScope) {
	fam, _ := sc.family("add_header")
	n.rules.server = map[string]hdr{}
	n.rules.serverFam = fam
	if fam == nil {
		return
	}
	for _, h := range n.headerFamily(fam) {
		src := h.d.at()
		n.handled[h.d] = true
		if m := hstsRE.FindStringSubmatch(h.value); m != nil && strings.EqualFold(h.name, "Strict-Transport-Security") && n.hasTLS() {
			secs, _ := strconv.ParseInt(m[1], 10, 64)
			if secs > 0 {
				note := "max-age in seconds"
				if !h.always {
					note += "; berth sends it on every https response (nginx without always only on 2xx and 3xx)"
				}
				n.b.set("tls.hsts", time.Duration(secs)*time.Second, src, note)
				n.rules.hsts = true
				continue
			}
		}
		n.rules.server[strings.ToLower(h.name)] = h
		note := ""
		if !h.always {
			note = "berth sets it on every response; nginx without always only on 2xx and 3xx"
		}
		if strings.EqualFold(h.name, "Strict-Transport-Security") {
			note = "tls.hsts sends max-age alone; this value says more, so it is sent as it is (browsers ignore it on plain HTTP)"
		}
		n.b.addHeader(h.name, h.value, src, note)
	}
}

// hasTLS says whether berth listens for https.
func (n *nginxImport) hasTLS() bool {
	for _, it := range n.b.lists["listen"] {
		if s, _ := it.value.(string); strings.HasPrefix(s, config.TLSScheme) {
			return true
		}
	}
	return false
}

// headerDiff is a location's headers: what its own add_header set (which
// replaced the server's in nginx) changes from proxy.headers: fields set
// to another value, and "" for the server's fields it dropped.
func (n *nginxImport) headerDiff(sc *nginxScope, dirs []*ndir) ([]headerItem, []*ndir) {
	fam, _ := sc.family("add_header")
	if fam == nil || slices.Equal(fam, n.rules.serverFam) {
		return nil, dirs
	}
	own := n.headerFamily(fam)
	var out []headerItem
	have := map[string]bool{}
	var hstsNote string
	for _, h := range own {
		lower := strings.ToLower(h.name)
		have[lower] = true
		if lower == "strict-transport-security" && n.rules.hsts {
			if hstsRE.MatchString(h.value) && display(n.b.scalars["tls.hsts"].value) == display(nginxHSTS(h.value)) {
				dirs = append(dirs, h.d)
			} else if !n.handled[h.d] {
				n.handled[h.d] = true
				n.b.skip(h.d.at(), h.d.text(), NeedsDecision, "tls.hsts sends Strict-Transport-Security on every https response, with the server's max-age; berth has one value")
			}
			continue
		}
		dirs = append(dirs, h.d)
		if s, ok := n.rules.server[lower]; ok && s.value == h.value {
			if !n.handled[h.d] {
				n.handled[h.d] = true
				n.b.skip(h.d.at(), h.d.text(), NotNeeded, "proxy.headers sets the same from %s", s.d.at().String())
			}
			dirs = dirs[:len(dirs)-1]
			continue
		}
		out = append(out, headerItem{h.name, item{value: h.value, src: h.d.at()}})
	}
	if n.rules.hsts && !have["strict-transport-security"] {
		hstsNote = "; this location's own add_header replaced the server's in nginx, so it sent no Strict-Transport-Security here, where berth's tls.hsts does"
	}
	for _, name := range sortedKeys(n.rules.server) {
		if !have[name] {
			s := n.rules.server[name]
			out = append(out, headerItem{s.name, item{value: "", src: fam[0].at(),
				note: fmt.Sprintf("removed: this location's add_header drops the server's in nginx%s", hstsNote)}})
			hstsNote = ""
		}
	}
	if hstsNote != "" && len(out) > 0 {
		out[0].note = strings.TrimPrefix(hstsNote, "; ")
	}
	return out, dirs
}

func nginxHSTS(v string) time.Duration {
	m := hstsRE.FindStringSubmatch(v)
	secs, _ := strconv.ParseInt(m[1], 10, 64)
	return time.Duration(secs) * time.Second
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ownAnswer is what a location's own return answers, and the directive;
// nil when it has none or it cannot be translated (then it is listed).
func (n *nginxImport) ownAnswer(loc *nloc) (*keyItem, *ndir) {
	if a, ok := n.answers[loc]; ok {
		return a.answer, a.by
	}
	var a answered
	for _, d := range loc.sc.rules {
		if d.name == "return" {
			a = answered{n.returnAnswer(d, loc.sc.where, !loc.exact), d}
			break
		}
	}
	if a.answer == nil {
		a.by = nil
	}
	if n.answers == nil {
		n.answers = map[*nloc]answered{}
	}
	n.answers[loc] = a
	return a.answer, a.by
}

// answered memoizes ownAnswer.
type answered struct {
	answer *keyItem
	by     *ndir
}

// returnAnswer translates `return CODE [URL|TEXT]` or `return URL`; nil
// (and listed) when it cannot be. rest says whether $rest may be used.
func (n *nginxImport) returnAnswer(d *ndir, where string, rest bool) *keyItem {
	fail := func(r Reason, why string, args ...any) *keyItem {
		n.handled[d] = true
		n.b.skip(d.src(where), d.text(), r, why, args...)
		return nil
	}
	args := d.args
	code, err := strconv.Atoi(args[0])
	switch {
	case len(args) == 1 && err != nil:
		code, args = 302, []string{"302", args[0]} // return URL;
	case err != nil || len(args) > 2:
		return fail(NeedsDecision, "expected a status and a URL or text")
	case code == 444:
		return fail(NoEquivalent, "berth answers every request with a status; nginx's 444 closed the connection without one")
	}
	src := d.src(where)
	switch code {
	case 301, 302, 303, 307, 308:
		if len(args) != 2 {
			return fail(NeedsDecision, "a redirect needs its URL")
		}
		to, why := redirectTarget(args[1], n.siteNames(), rest)
		if why != "" {
			return fail(NeedsDecision, "%s", why)
		}
		return &keyItem{"redirect", item{value: flow(fmt.Sprintf("{to: %s, status: %d}", flowScalar(to), code)), src: src}}
	}
	if code < 200 || code > 599 || code >= 300 && code < 400 {
		return fail(NeedsDecision, "berth's return takes a status from 200 to 599, not a 3xx without a URL")
	}
	v := fmt.Sprintf("{status: %d}", code)
	if len(args) == 2 {
		if strings.Contains(args[1], "$") {
			return fail(NoEquivalent, "berth's return body is fixed text; nginx filled in variables per request")
		}
		v = fmt.Sprintf("{status: %d, body: %s}", code, flowScalar(args[1]))
	}
	return &keyItem{"return", item{value: flow(v), src: src}}
}

// siteNames are the site server's server_name values.
func (n *nginxImport) siteNames() []string {
	if n.site == nil {
		return nil
	}
	return serverNames(n.site)
}

// redirectTarget turns an nginx redirect URL into a berth redirect's to:
// the variables berth has are kept, $server_name becomes the server's one
// name, $uri$is_args$args and $request_uri stay as they are. why says why
// it cannot be translated.
func redirectTarget(url string, names []string, rest bool) (to, why string) {
	to = url
	if strings.Contains(to, "$server_name") || strings.Contains(to, "${server_name}") {
		if len(names) != 1 || strings.ContainsAny(names[0], "*~") {
			return "", "$server_name stands for the server's first name, and berth needs the name written out"
		}
		to = strings.NewReplacer("${server_name}", names[0], "$server_name", names[0]).Replace(to)
	}
	ok := func(v string) bool { return slices.Contains(config.RedirectVars, v) && (v != "rest" || rest) }
	if !validVars(to, ok) {
		return "", "berth's redirects take $scheme, $host, $request_uri, $uri, $args and $is_args; this URL uses others"
	}
	if !(strings.HasPrefix(to, "/") || strings.HasPrefix(to, "http://") || strings.HasPrefix(to, "https://") || strings.HasPrefix(to, "$scheme://")) {
		return "", "berth redirects to a URL or a path starting with /"
	}
	return to, ""
}

// rewriteRE reads the regular expressions of simple rewrites: a literal
// path after ^, then (.*) with or without $, or $ alone, or nothing.
var rewriteRE = regexp.MustCompile(`^\^((?:[A-Za-z0-9/_~%-]|\\[./-])+)(\(\.\*\)\$?|\$)?$`)

// rewrites turns the simple rewrites of one level (loc nil: the server's
// own) into candidate locations that redirect. A rewrite ^/old/(.*)$
// /new/$1 permanent is a location /old/ redirecting to /new/$rest.
func (n *nginxImport) rewrites(sc *nginxScope, loc *nloc) []*candidate {
	var out []*candidate
	for _, d := range sc.rules {
		if d.name != "rewrite" {
			continue
		}
		if c := n.rewrite(d, sc, loc); c != nil {
			out = append(out, c)
		}
	}
	return out
}

func (n *nginxImport) rewrite(d *ndir, sc *nginxScope, loc *nloc) *candidate {
	where := sc.where
	fail := func(r Reason, why string, args ...any) *candidate {
		n.handled[d] = true
		n.b.skip(d.src(where), d.text(), r, why, args...)
		return nil
	}
	if len(d.args) < 2 || len(d.args) > 3 {
		return fail(NeedsDecision, "expected a regular expression, a replacement and a flag")
	}
	re, repl, flag := d.args[0], d.args[1], ""
	if len(d.args) == 3 {
		flag = d.args[2]
	}
	external := strings.HasPrefix(repl, "http://") || strings.HasPrefix(repl, "https://") || strings.HasPrefix(repl, "$scheme://")
	status := 0
	switch {
	case flag == "permanent":
		status = 301
	case flag == "redirect" || external && (flag == "" || flag == "last" || flag == "break"):
		status = 302
	default:
		return fail(NoEquivalent, "an internal rewrite: berth changes no URL on the way to the app; the app sees the path the client sent (redirect with permanent or redirect instead)")
	}
	m := rewriteRE.FindStringSubmatch(re)
	if m == nil {
		return fail(NoEquivalent, "only a literal prefix (^/old/(.*)$) or path (^/old$) maps onto a berth location; this expression does not")
	}
	lit := strings.NewReplacer(`\.`, ".", `\-`, "-", `\/`, "/").Replace(m[1])
	exact := m[2] == "$"
	args := "$is_args$args"
	if strings.HasSuffix(repl, "?") {
		repl, args = strings.TrimSuffix(repl, "?"), ""
	} else if strings.Contains(repl, "?") {
		return fail(NeedsDecision, "a replacement with its own query: nginx appends the request's arguments after &; write the redirect by hand")
	}
	if strings.HasSuffix(repl, "$1") && strings.HasPrefix(m[2], "(") {
		repl = strings.TrimSuffix(repl, "$1") + "$rest"
	}
	to, why := redirectTarget(repl+args, n.siteNames(), !exact)
	if why != "" {
		return fail(NeedsDecision, "%s", why)
	}
	if loc != nil && !(strings.HasPrefix(lit, loc.path) && !loc.exact || loc.exact && exact && lit == loc.path) {
		return fail(NeedsDecision, "matches paths beyond location %s: berth would redirect them all; write the redirect by hand", loc.path)
	}
	for _, o := range n.locs {
		if o != loc && o.path == lit && o.exact == exact {
			return fail(NeedsDecision, "location %s on line %d matches the same paths; berth's location has one answer: write it by hand", o.path, o.d.line)
		}
	}
	if loc != nil {
		if ans, by := n.ownAnswer(loc); ans != nil {
			return fail(NotNeeded, "never reached: the return on line %d answers first", by.line)
		}
	}
	r := &locRules{answer: &keyItem{"redirect", item{value: flow(fmt.Sprintf("{to: %s, status: %d}", flowScalar(to), status)), src: d.src(where)}}, dirs: []*ndir{d}}
	r.headers, r.dirs = n.headerDiff(sc, r.dirs)
	c := &candidate{exact: exact, path: lit, src: d.src(where), rules: r, note: "the paths the rewrite matches"}
	if loc != nil && loc.path == lit && loc.exact == exact {
		n.neverChecked(loc, d)
		c.loc = loc
	}
	return c
}

// errorPages translates the site's error_page directives into
// proxy.error_pages, each file found through the location serving its URI.
func (n *nginxImport) errorPages(sc *nginxScope) {
	fam, fsc := sc.family("error_page")
	for _, d := range fam {
		n.handled[d] = true
		n.errorPage(d, fsc.where)
	}
	for _, l := range n.locs {
		for _, d := range l.sc.rules {
			if d.name != "error_page" || n.handled[d] {
				continue
			}
			n.handled[d] = true
			same := false
			for _, s := range fam {
				same = same || slices.Equal(s.args, d.args)
			}
			if same {
				n.b.skip(d.src(l.sc.where), d.text(), NotNeeded, "the server has the same error_page, in proxy.error_pages")
			} else {
				n.b.skip(d.src(l.sc.where), d.text(), NeedsDecision, "berth's error pages are site-wide (proxy.error_pages); this location's differ from the server's")
			}
		}
	}
}

func (n *nginxImport) errorPage(d *ndir, where string) {
	src := d.src(where)
	if len(d.args) < 2 {
		n.b.skip(src, d.text(), NeedsDecision, "expected statuses and a URI")
		return
	}
	uri := d.args[len(d.args)-1]
	var codes []int
	for _, a := range d.args[:len(d.args)-1] {
		if strings.HasPrefix(a, "=") {
			n.b.skip(src, d.text(), NoEquivalent, "berth's error pages keep the status; nginx changed it to %s", strings.TrimPrefix(a, "="))
			return
		}
		c, err := strconv.Atoi(a)
		if err != nil {
			n.b.skip(src, d.text(), NeedsDecision, "%q is not a status", a)
			return
		}
		codes = append(codes, c)
	}
	if !strings.HasPrefix(uri, "/") {
		n.b.skip(src, d.text(), NoEquivalent, "berth's error pages are files; nginx sent %s (a named location or a redirect)", uri)
		return
	}
	file, note, why := n.errorFile(uri)
	if why != "" {
		n.b.skip(src, d.text(), NeedsDecision, "%s", why)
		return
	}
	var kept, others []string
	for _, c := range codes {
		if !slices.Contains(config.ErrorPageStatuses, c) {
			others = append(others, strconv.Itoa(c))
			continue
		}
		if old, dup := n.b.errorPages[c]; dup {
			if old.value != file {
				n.b.skip(src, d.text(), NeedsDecision, "status %d already has %s from %s", c, display(old.value), old.src.String())
			}
			continue
		}
		kept = append(kept, strconv.Itoa(c))
		if n.b.errorPages == nil {
			n.b.errorPages = map[int]item{}
		}
		n.b.errorPages[c] = item{value: file, src: src, note: note}
	}
	if len(kept) == 0 {
		n.b.skip(src, d.text(), NoEquivalent, "berth makes none of these statuses itself; the app's own errors pass as the app wrote them")
		return
	}
	n.b.count(src)
	if len(others) > 0 {
		it := n.b.errorPages[atoi(kept[0])]
		it.note += fmt.Sprintf("; %s: not statuses berth makes, the app's pass as they are", strings.Join(others, ", "))
		n.b.errorPages[atoi(kept[0])] = it
	}
}

func atoi(s string) int { v, _ := strconv.Atoi(s); return v }

// errorFile finds the file nginx served for uri: through the location
// that matches it (exact, else longest prefix), from its alias or root, or
// the server's root.
func (n *nginxImport) errorFile(uri string) (file, note, why string) {
	var best *nloc
	for _, l := range n.locs {
		if l.exact && l.path == uri {
			best = l
			break
		}
		if !l.exact && strings.HasPrefix(uri, l.path) && (best == nil || !best.exact && len(l.path) > len(best.path)) {
			best = l
		}
	}
	sc := n.siteScope
	if best != nil {
		if best.content == "app" || best.content == "route" {
			return "", "", fmt.Sprintf("location %s makes the page (it passes to the app); berth's error pages are files", best.path)
		}
		sc = best.sc
		for _, d := range best.d.block {
			if d.name == "alias" && len(d.args) == 1 {
				if best.exact {
					return path.Clean(d.args[0]), fmt.Sprintf("the file location %s serves (alias)", best.path), ""
				}
				return path.Join(d.args[0], strings.TrimPrefix(uri, best.path)), fmt.Sprintf("the file location %s serves (alias)", best.path), ""
			}
		}
	}
	root, _ := sc.get("root")
	if best != nil {
		for _, d := range best.d.block {
			if d.name == "root" {
				root = d
			}
		}
	}
	if root == nil || len(root.args) != 1 || strings.Contains(root.args[0], "$") {
		return "", "", fmt.Sprintf("no root or alias here serves %s; write the page's file in proxy.error_pages by hand", uri)
	}
	n.rootUsed[root] = true
	return path.Join(root.args[0], uri), fmt.Sprintf("root %s (%s:%d) + %s", root.args[0], root.file, root.line, uri), ""
}

// connectionLimit translates limit_conn in force at the server into
// proxy.limits.connections_per_client.
func (n *nginxImport) connectionLimit(sc *nginxScope) {
	fam, fsc := sc.family("limit_conn")
	var server *ndir
	if fam != nil {
		server = fam[0]
		n.handled[server] = true
		n.connLimit(server, fsc.where)
		for _, extra := range fam[1:] {
			n.handled[extra] = true
			n.b.skip(extra.src(fsc.where), extra.text(), NoEquivalent, "berth has one limit of connections per client; the limit_conn on line %d was translated", server.line)
		}
	}
	if st := sc.last("limit_conn_status"); st != nil {
		n.handled[st] = true
		if strings.Join(st.args, " ") == "503" {
			n.b.skip(st.at(), st.text(), NotNeeded, "berth answers 503 too")
		} else {
			n.b.skip(st.at(), st.text(), NoEquivalent, "berth answers 503 past proxy.limits.connections_per_client")
		}
	}
	for _, l := range n.locs {
		for _, d := range l.sc.rules {
			if d.name != "limit_conn" && d.name != "limit_conn_status" || n.handled[d] {
				continue
			}
			n.handled[d] = true
			if server != nil && slices.Equal(d.args, server.args) {
				n.b.skip(d.src(l.sc.where), d.text(), NotNeeded, "the server has the same limit, in proxy.limits")
			} else {
				n.b.skip(d.src(l.sc.where), d.text(), NeedsDecision, "berth limits connections per client for the whole site (proxy.limits.connections_per_client), not per location")
			}
		}
	}
}

func (n *nginxImport) connLimit(d *ndir, where string) {
	src := d.src(where)
	if len(d.args) != 2 {
		n.b.skip(src, d.text(), NeedsDecision, "expected a zone and a number")
		return
	}
	zone := n.zones["limit_conn_zone "+d.args[0]]
	num, err := strconv.Atoi(d.args[1])
	switch {
	case zone == nil:
		n.b.skip(src, d.text(), NeedsDecision, "no limit_conn_zone defines zone %s in the files imported", d.args[0])
		return
	case err != nil || num < 1:
		n.b.skip(src, d.text(), NeedsDecision, "expected a number of connections")
		return
	}
	n.handled[zone] = true
	if key := zone.args[0]; key != "$binary_remote_addr" && key != "$remote_addr" {
		n.b.skip(src, d.text(), NoEquivalent, "berth limits connections per client address only; the zone's key is %s", key)
		n.b.skip(zone.at(), zone.text(), NoEquivalent, "berth limits connections per client address only")
		return
	}
	n.b.set("proxy.limits.connections_per_client", num, src, fmt.Sprintf("zone %s at %s:%d: per client address; nginx counted a connection while it had a request in progress, and so does berth", d.args[0], zone.file, zone.line))
	n.b.skip(zone.at(), zone.text(), NotNeeded, "a zone definition: the limit_conn using it is proxy.limits.connections_per_client")
}

// leftovers lists the rule directives and definitions nothing used.
func (n *nginxImport) leftovers() {
	for _, p := range n.deferred {
		d := p.d
		if n.handled[d] {
			continue
		}
		n.handled[d] = true
		src := d.src(p.scope.where)
		switch {
		case definitions[d.name]:
			n.b.skip(src, d.text(), NotNeeded, "no directive berth translated uses this zone")
		case n.site == nil:
			n.b.skip(src, d.text(), NotNeeded, "berth translated no server block that it applies to")
		default:
			n.b.skip(src, d.text(), NotNeeded, "no request berth serves is under it: every location where it would apply sets its own, or answers first")
		}
	}
}
