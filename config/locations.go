package config

// locations.go: what nginx did in front of the app to protect it, as rules
// per location and per Host header (issue 24): access rules, rate limits,
// basic auth, redirects, fixed answers and response headers; and the
// proxy-wide part of it: headers on every response, a connection limit per
// client and error pages for the errors berth makes itself.
//
// The proxy runs these rules once per request, for every backend (static
// files, workers, mounts, upstreams), in nginx's order:
//
//  1. hosts: the entry matching the Host header redirects (before anything
//     else, and before tls.redirect_http);
//  2. proxy.limits.connections_per_client (503);
//  3. the location: the `exact` entry equal to the path, else the `path`
//     entry with the longest prefix of it. Its redirect or return answers
//     at once; otherwise its limit (429), then its access rules (403), then
//     its basic auth (401) are checked, and the request goes on as before;
//  4. proxy.headers, then the location's headers, are set on the response,
//     berth's own errors too; error pages replace the body of berth's own
//     errors.
//
// Locations do not inherit from each other: a request gets the rules of the
// one location it matches (and the proxy-wide ones), as sibling locations
// in nginx do.

import (
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Location is the rules for the requests whose path it matches: an nginx
// location without regular expressions. Exactly one of Path and Exact is
// set. The path matched is the normalized one (percent-decoded, dot
// segments resolved), the one static files are matched on.
type Location struct {
	// Path matches every path that starts with it, as nginx's `location
	// /admin/` does (so /admin also matches /administrator; end it with /
	// to match a directory). The longest matching Path wins.
	Path string `yaml:"path" json:"path,omitempty"`
	// Exact matches this one path (nginx `location = /login/`), before
	// any Path.
	Exact string `yaml:"exact" json:"exact,omitempty"`
	// Access rules, in order: the first whose address matches the client
	// (the address after proxy.trusted_proxies) decides; a client no rule
	// matches is allowed. Denied: 403.
	Access []AccessRule `yaml:"access" json:"access"`
	// Limit is a rate limit (nginx limit_req); nil: none.
	Limit *Limit `yaml:"limit" json:"limit,omitempty"`
	// Auth asks for a user name and password; nil: none.
	Auth *Auth `yaml:"auth" json:"auth,omitempty"`
	// Redirect answers every request with a redirect; nil: none.
	Redirect *Redirect `yaml:"redirect" json:"redirect,omitempty"`
	// Return answers every request with a fixed status (and body); nil:
	// none. At most one of Redirect and Return is set, and neither with
	// Access, Limit or Auth (nginx answers a return before it checks them).
	Return *Return `yaml:"return" json:"return,omitempty"`
	// Headers are set on every response to these requests, after
	// proxy.headers, replacing a field of the same name; a value "" removes
	// the field (one proxy.headers set, or the app's).
	Headers map[string]string `yaml:"headers" json:"headers"`
}

// AccessRule allows or denies the clients whose address is in Prefix, or
// every client when All is set. YAML: {allow: 10.0.0.0/8} or {deny: all}.
type AccessRule struct {
	Allow bool `json:"allow"` // false: deny
	All   bool `json:"all"`
	// Prefix is a masked CIDR (an address alone is a /32 or /128); the
	// zero Prefix when All is set.
	Prefix netip.Prefix `json:"prefix"`
}

// Limit is nginx's limit_req: a leaky bucket per key that drains at Rate.
// A request that would fill it beyond Burst is refused with Status; the
// Burst requests before that wait until the bucket would have drained to
// them (nginx's delay), except the first Delay of them, or all of them with
// NoDelay.
type Limit struct {
	Rate Rate `json:"rate"`
	// Burst is how many requests beyond the rate are let in (queued, or
	// passed at once with NoDelay).
	Burst int `json:"burst"`
	// NoDelay passes the burst at once instead of spacing it out.
	NoDelay bool `json:"nodelay"`
	// Delay is how many requests of the burst pass at once; the others
	// are spaced out (nginx delay=); 0 with NoDelay false: all are spaced.
	Delay int `json:"delay"`
	// Key says whose requests share a bucket: LimitKeyClient (the address
	// after proxy.trusted_proxies), LimitKeyGlobal (one bucket for every
	// client), or text with nginx variables ($http_x_api_key): a request
	// whose key is empty is not limited, as in nginx.
	Key string `json:"key"`
	// Status answers a refused request (429 unless set).
	Status int `json:"status"`
}

// Rate is Requests per Per, which is one second or one minute ("5/s",
// "5r/m").
type Rate struct {
	Requests int      `json:"requests"`
	Per      Duration `json:"per"`
}

// Auth asks clients for credentials before they reach the location.
type Auth struct {
	Basic *BasicAuth `json:"basic"`
}

// BasicAuth is HTTP basic authentication (nginx auth_basic). A request
// without valid credentials gets 401 with WWW-Authenticate: Basic
// realm="Realm".
type BasicAuth struct {
	Realm string `json:"realm"`
	// Users is an htpasswd file (bcrypt, apr1 or {SHA} entries; a
	// plain-text password is refused), an absolute path.
	Users string `json:"users"`
}

// Redirect answers with Status and a Location built from To, whose nginx
// variables are filled in per request (RedirectVars).
type Redirect struct {
	To     string `json:"to"`
	Status int    `json:"status"`
}

// Return answers with Status and Body (text/plain; "" for none, or, for a
// status proxy.error_pages names, that page).
type Return struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

// Host redirects the requests whose Host header matches Match, before any
// location: a canonical-host redirect.
type Host struct {
	// Match is a host name (www.example.com) or a wildcard for its
	// subdomains (*.example.com, not example.com itself); lower case.
	Match    string   `json:"match"`
	Redirect Redirect `json:"redirect"`
}

// ProxyLimits are limits per client over the whole proxy.
type ProxyLimits struct {
	// ConnectionsPerClient caps the requests one client (the address after
	// proxy.trusted_proxies) has in progress at once, as nginx's
	// limit_conn counts connections (each HTTP/2 stream counts); beyond it
	// 503. 0: no limit.
	ConnectionsPerClient int `yaml:"connections_per_client" json:"connections_per_client"`
}

// Limit keys that are not variables.
const (
	LimitKeyClient = "client"
	LimitKeyGlobal = "global"
)

// Defaults of the location keys.
const (
	DefaultLimitStatus    = 429
	DefaultRedirectStatus = 302 // nginx's `return URL;`
	DefaultRealm          = "Restricted"
	// MaxErrorPageSize bounds an error page file: it is held in memory.
	MaxErrorPageSize = 1 << 20
	// maxReturnBody bounds return.body, written in the config itself.
	maxReturnBody = 64 << 10
)

// ErrorPageStatuses are the statuses berth makes itself, which
// proxy.error_pages may give a page: a malformed request (400), basic auth
// (401), access rules (403), a static file not found (404), a body too
// large (413), a rate limit (429), headers too large (431), a broken worker
// (500), a failed or overloaded backend (502, 503, 504).
var ErrorPageStatuses = []int{400, 401, 403, 404, 413, 429, 431, 500, 502, 503, 504}

// RedirectVars are the nginx variables a redirect's `to` may use. $rest is
// berth's: the part of the request's path after the location's path (as the
// client sent it, still percent-encoded), for prefix redirects.
var RedirectVars = []string{"scheme", "host", "request_uri", "uri", "args", "is_args", "rest"}

// redirectStatuses are the statuses a redirect may have.
var redirectStatuses = []int{301, 302, 303, 307, 308}

// hopHeaders are fields berth frames or negotiates itself: headers and
// proxy.headers may not set or remove them.
var hopHeaders = []string{"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length", "content-encoding"}

// varRE matches one nginx variable: $name or ${name}.
var varRE = regexp.MustCompile(`\$([A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})`)

// Label names the location as nginx writes it: "/admin/", "= /login/".
// Logs and metrics use it.
func (l *Location) Label() string {
	if l.Exact != "" {
		return "= " + l.Exact
	}
	return l.Path
}

// SelectLocation returns the location for the normalized path p: the one
// whose Exact is p, else the one whose Path is the longest prefix of p;
// nil when none matches.
func SelectLocation(locs []Location, p string) *Location {
	var best *Location
	for i := range locs {
		l := &locs[i]
		switch {
		case l.Exact != "":
			if l.Exact == p {
				return l
			}
		case strings.HasPrefix(p, l.Path) && (best == nil || len(l.Path) > len(best.Path)):
			best = l
		}
	}
	return best
}

// unmapPrefix writes an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) as
// the IPv4 prefix it stands for, which is what client addresses are
// compared with.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// Matches says whether the rule applies to the client address a.
func (r AccessRule) Matches(a netip.Addr) bool {
	return r.All || a.IsValid() && r.Prefix.Contains(a.Unmap())
}

// Allowed applies the access rules to the client address a: the first
// matching rule decides; with none matching the client is allowed.
func (l *Location) Allowed(a netip.Addr) bool {
	for _, r := range l.Access {
		if r.Matches(a) {
			return r.Allow
		}
	}
	return true
}

// LimitID identifies the state of the location's rate limit across
// reloads: the proxy keeps its buckets for a location whose LimitID is
// unchanged. It is made of the location and of what the buckets mean (the
// key and the rate): a new burst, delay or status keeps the buckets, a new
// rate, key or path starts afresh. "" when the location has no limit.
func (l *Location) LimitID() string {
	if l.Limit == nil {
		return ""
	}
	return fmt.Sprintf("%s key=%s rate=%s", l.Label(), l.Limit.Key, l.Limit.Rate)
}

// String writes the rate as the config does: "5/s", "5/m".
func (r Rate) String() string {
	if r.Per == Duration(time.Minute) {
		return fmt.Sprintf("%d/m", r.Requests)
	}
	return fmt.Sprintf("%d/s", r.Requests)
}

// ParseRate reads a rate: "5/s", "5/m", or nginx's "5r/s", "5r/m".
func ParseRate(s string) (Rate, error) {
	num, unit, ok := strings.Cut(s, "/")
	num = strings.TrimSuffix(num, "r")
	n, err := strconv.Atoi(num)
	var per Duration
	switch unit {
	case "s":
		per = Duration(time.Second)
	case "m":
		per = Duration(time.Minute)
	}
	if !ok || err != nil || !isDigits(num) || per == 0 {
		return Rate{}, fmt.Errorf("invalid rate %s: write requests per second or per minute, e.g. 10/s or 5/m (nginx's 5r/m works too)", quoteShort(s))
	}
	if n < 1 {
		return Rate{}, fmt.Errorf("rate %s must be at least 1 request per second or minute", quoteShort(s))
	}
	return Rate{Requests: n, Per: per}, nil
}

// SelectHost returns the hosts entry for a Host header (its port and a
// trailing dot ignored, any case): the one matching the name exactly, else
// the wildcard with the longest suffix of it; nil when none matches.
func SelectHost(hosts []Host, host string) *Host {
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	var best *Host
	for i := range hosts {
		h := &hosts[i]
		if h.Match == host {
			return h
		}
		if suffix, ok := strings.CutPrefix(h.Match, "*"); ok && strings.HasSuffix(host, suffix) && len(host) > len(suffix) &&
			(best == nil || len(h.Match) > len(best.Match)) {
			best = h
		}
	}
	return best
}

// Target builds the redirect's Location: To with each variable replaced by
// value(name) (name without the $).
func (r Redirect) Target(value func(name string) string) string {
	return varRE.ReplaceAllStringFunc(r.To, func(v string) string {
		return value(strings.Trim(v[1:], "{}"))
	})
}

// ReadErrorPage reads an error page file: a regular file of at most
// MaxErrorPageSize bytes.
func ReadErrorPage(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file; name an HTML file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxErrorPageSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxErrorPageSize {
		return nil, fmt.Errorf("%s is larger than 1 MiB, the most an error page may be; make it smaller", path)
	}
	return data, nil
}

// CheckFiles checks on this machine the files the rules read: each
// proxy.error_pages file is readable, regular and at most 1 MiB, each
// auth.basic.users file is a readable regular file. Parse does not look at
// the machine (a config may be checked for another one); `berth check`,
// `berth run` and each reload call this. The errors name the key, as
// FILE: KEY: MESSAGE.
func (c *Config) CheckFiles() error {
	var errs ErrorList
	bad := func(path string, err error) {
		errs = append(errs, &Error{File: c.Source, Path: path, Msg: err.Error()})
	}
	for _, code := range slices.Sorted(maps.Keys(c.Proxy.ErrorPages)) {
		if _, err := ReadErrorPage(c.Proxy.ErrorPages[code]); err != nil {
			bad(join("proxy.error_pages", strconv.Itoa(code)), err)
		}
	}
	for i, l := range c.Locations {
		if l.Auth == nil || l.Auth.Basic == nil {
			continue
		}
		f, err := os.Open(l.Auth.Basic.Users)
		if err == nil {
			var st os.FileInfo
			if st, err = f.Stat(); err == nil && !st.Mode().IsRegular() {
				err = fmt.Errorf("%s is not a regular file; name an htpasswd file", l.Auth.Basic.Users)
			}
			f.Close()
		}
		if err != nil {
			bad(join(index("locations", i), "auth.basic.users"), err)
		}
	}
	return errs.asError()
}

// decoding

func (d *decoder) locations(dst *[]Location) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Location{}
		ok := d.listOf(path, n, "a list of locations such as {path: /admin/, access: [{allow: 10.0.0.0/8}, {deny: all}]}", func(i int, p string, it *yaml.Node) {
			l := Location{Access: []AccessRule{}, Headers: map[string]string{}}
			if it.Kind == yaml.MappingNode {
				it = d.dropAllowDeny(p, it)
			}
			d.section(p, it, []field{
				{"path", d.str(&l.Path)},
				{"exact", d.str(&l.Exact)},
				{"access", d.access(&l.Access)},
				{"limit", d.limit(&l.Limit)},
				{"auth", d.auth(&l.Auth)},
				{"redirect", d.redirectPtr(&l.Redirect)},
				{"return", d.ret(&l.Return)},
				{"headers", d.headers(&l.Headers)},
			})
			out = append(out, l)
		})
		if ok {
			*dst = out
		}
	}
}

// dropAllowDeny reports `allow:` and `deny:` written as keys of a location
// (the brief's first spelling) with the ordered form to use instead, and
// returns the mapping without them so they are not reported twice.
func (d *decoder) dropAllowDeny(p string, n *yaml.Node) *yaml.Node {
	var kept []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := resolve(n.Content[i])
		if k.Kind == yaml.ScalarNode && (k.Value == "allow" || k.Value == "deny") {
			d.errorf(k.Line, join(p, k.Value), "allow and deny are written in order under access, e.g. access: [{allow: 10.0.0.0/8}, {deny: all}]: the first rule that matches decides, as nginx reads them")
			continue
		}
		kept = append(kept, n.Content[i], n.Content[i+1])
	}
	if len(kept) == len(n.Content) {
		return n
	}
	c := *n
	c.Content = kept
	return &c
}

func (d *decoder) access(dst *[]AccessRule) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []AccessRule{}
		ok := d.listOf(path, n, "a list of rules in order, such as [{allow: 10.0.0.0/8}, {deny: all}]", func(i int, p string, it *yaml.Node) {
			var allow, deny string
			before := len(d.errs)
			d.section(p, it, []field{{"allow", d.str(&allow)}, {"deny", d.str(&deny)}})
			if len(d.errs) > before {
				return
			}
			_, hasAllow := d.lines[join(p, "allow")]
			_, hasDeny := d.lines[join(p, "deny")]
			if hasAllow == hasDeny {
				d.errorf(it.Line, p, "each rule is one allow or one deny, e.g. {allow: 10.0.0.0/8} or {deny: all}")
				return
			}
			r := AccessRule{Allow: hasAllow}
			addr, key := deny, "deny"
			if hasAllow {
				addr, key = allow, "allow"
			}
			if addr == "all" {
				r.All = true
			} else {
				s, err := normalizeCIDR(addr)
				if err != nil {
					d.errorf(d.lines[join(p, key)], join(p, key), "%v, or all", err)
					return
				}
				r.Prefix = unmapPrefix(netip.MustParsePrefix(s))
			}
			out = append(out, r)
		})
		if ok {
			*dst = out
		}
	}
}

func (d *decoder) limit(dst **Limit) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		l := &Limit{Key: LimitKeyClient, Status: DefaultLimitStatus}
		if !d.complete(path, n, []field{
			{"rate", func(p string, n *yaml.Node) {
				if s, ok := d.scalarText(p, n); ok {
					r, err := ParseRate(s)
					if err != nil {
						d.errorf(n.Line, p, "%v", err)
						return
					}
					l.Rate = r
				}
			}},
			{"burst", d.int(&l.Burst)},
			{"nodelay", d.boolean(&l.NoDelay)},
			{"delay", d.int(&l.Delay)},
			{"key", d.str(&l.Key)},
			{"status", d.int(&l.Status)},
		}, "e.g. {rate: 5/m, burst: 5}", "rate") {
			d.failed[path] = true
			return
		}
		*dst = l
	}
}

func (d *decoder) auth(dst **Auth) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		a := &Auth{}
		before := len(d.errs)
		d.section(path, n, []field{
			{"basic", func(p string, n *yaml.Node) {
				b := &BasicAuth{Realm: DefaultRealm}
				d.section(p, n, []field{{"realm", d.str(&b.Realm)}, {"users", d.str(&b.Users)}})
				if d.missing(p, "users") != "" && !d.failedAt(p) {
					d.errorf(n.Line, p, "missing users; name the htpasswd file, e.g. {realm: staff, users: /etc/berth/htpasswd}")
				}
				a.Basic = b
			}},
		})
		if len(d.errs) > before {
			d.failed[path] = true
			return
		}
		if a.Basic == nil {
			d.errorf(n.Line, path, "name the kind of authentication: basic, e.g. {basic: {realm: staff, users: /etc/berth/htpasswd}}")
			return
		}
		*dst = a
	}
}

// redirectInto decodes {to, status} into r; it reports whether it could.
func (d *decoder) redirectInto(path string, n *yaml.Node, r *Redirect) bool {
	r.Status = DefaultRedirectStatus
	if !d.complete(path, n, []field{{"to", d.str(&r.To)}, {"status", d.int(&r.Status)}},
		`e.g. {to: "https://example.com$request_uri", status: 301}`, "to") {
		d.failed[path] = true
		return false
	}
	return true
}

func (d *decoder) redirectPtr(dst **Redirect) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		var r Redirect
		if d.redirectInto(path, n, &r) {
			*dst = &r
		}
	}
}

func (d *decoder) ret(dst **Return) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		var r Return
		if !d.complete(path, n, []field{{"status", d.int(&r.Status)}, {"body", d.str(&r.Body)}}, "e.g. {status: 404}", "status") {
			d.failed[path] = true
			return
		}
		*dst = &r
	}
}

func (d *decoder) headers(dst *map[string]string) func(string, *yaml.Node) {
	return d.stringMap(dst, "header names to values, such as {X-Frame-Options: DENY}", "to remove the header")
}

func (d *decoder) hosts(dst *[]Host) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Host{}
		ok := d.listOf(path, n, `a list of hosts such as {match: www.example.com, redirect: {to: "https://example.com$request_uri", status: 301}}`, func(i int, p string, it *yaml.Node) {
			h := Host{Redirect: Redirect{Status: DefaultRedirectStatus}}
			d.complete(p, it, []field{
				{"match", d.str(&h.Match)},
				{"redirect", func(p string, n *yaml.Node) { d.redirectInto(p, n, &h.Redirect) }},
			}, `e.g. {match: www.example.com, redirect: {to: "https://example.com$request_uri", status: 301}}`, "match", "redirect")
			out = append(out, h)
		})
		if ok {
			*dst = out
		}
	}
}

func (d *decoder) proxyLimits(dst *ProxyLimits) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		d.section(path, n, []field{{"connections_per_client", d.int(&dst.ConnectionsPerClient)}})
	}
}

func (d *decoder) errorPages(dst *map[int]string) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping of statuses to HTML files, such as {502: /srv/errors/50x.html}, got %s", describe(n))
			return
		}
		out := map[int]string{}
		seen := map[int]int{}
		ok := true
		d.pairs(path, n, func(key string, k, v *yaml.Node) {
			p := join(path, key)
			d.lines[p] = v.Line
			code, err := strconv.Atoi(key)
			if err != nil || !isDigits(key) || !slices.Contains(ErrorPageStatuses, code) {
				d.errorf(k.Line, p, "%s is not a status berth makes itself; error pages are for %s", quoteShort(key), statusList(ErrorPageStatuses))
				ok = false
				return
			}
			if first, dup := seen[code]; dup {
				d.errorf(k.Line, p, "status %d already has a page (line %d); keep one", code, first)
				ok = false
				return
			}
			seen[code] = k.Line
			var file string
			if isNull(v) {
				d.errorf(v.Line, p, "no file; name an HTML file, e.g. /srv/errors/50x.html")
				ok = false
				return
			}
			if s, good := d.scalarText(p, v); good {
				file = s
			} else {
				ok = false
			}
			out[code] = file
		})
		if ok {
			*dst = out
		} else {
			d.failed[path] = true
		}
	}
}

func statusList(codes []int) string {
	s := make([]string, len(codes))
	for i, c := range codes {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ", ")
}

// validation

// validateLocations checks locations, hosts and the proxy-wide rules, and
// puts them in canonical form (host names in lower case, a limit key that
// is the client address as "client").
func (c *Config) validateLocations(bad func(path, format string, args ...any)) {
	seen := map[string]int{}
	for i := range c.Locations {
		l := &c.Locations[i]
		p := index("locations", i)
		switch {
		case l.Path != "" && l.Exact != "":
			bad(p, "has both path and exact; a location matches a prefix (path) or one path (exact)")
		case l.Path == "" && l.Exact == "":
			bad(p, "missing path or exact; e.g. {path: /admin/, …} for a prefix, {exact: /login/, …} for one path")
		default:
			key, what := "path", l.Path
			if l.Exact != "" {
				key, what = "exact", l.Exact
			}
			if err := checkLocationPath(what); err != nil {
				bad(join(p, key), "%v", err)
			} else if first, dup := seen[key+" "+what]; dup {
				bad(join(p, key), "%q is already locations[%d]; merge the two entries", what, first)
			} else {
				seen[key+" "+what] = i
			}
		}
		answers := ""
		switch {
		case l.Redirect != nil && l.Return != nil:
			bad(join(p, "return"), "a location answers with a redirect or a return, not both; keep one")
		case l.Redirect != nil:
			answers = "redirect"
		case l.Return != nil:
			answers = "return"
		}
		if answers != "" {
			for _, k := range []struct {
				key string
				set bool
			}{{"access", len(l.Access) > 0}, {"limit", l.Limit != nil}, {"auth", l.Auth != nil}} {
				if k.set {
					bad(join(p, k.key), "is never checked: the location's %s answers first, as nginx answers a return before its access phase; move %s to a location of its own, or remove it", answers, k.key)
				}
			}
		}
		if lim := l.Limit; lim != nil {
			validateLimit(lim, join(p, "limit"), bad)
		}
		if a := l.Auth; a != nil && a.Basic != nil {
			bp := join(p, "auth.basic")
			if a.Basic.Realm == "" || strings.ContainsAny(a.Basic.Realm, "\"\\") || hasControl(a.Basic.Realm) {
				bad(join(bp, "realm"), "%s must be a non-empty text without quotes, backslashes or control characters; it is shown in the browser's login prompt", quoteShort(a.Basic.Realm))
			}
			if !filepath.IsAbs(a.Basic.Users) {
				bad(join(bp, "users"), "%s must be an absolute path to an htpasswd file, e.g. /etc/berth/htpasswd", quoteShort(a.Basic.Users))
			}
		}
		if r := l.Redirect; r != nil {
			validateRedirect(r, join(p, "redirect"), l.Path != "", bad)
		}
		if r := l.Return; r != nil {
			rp := join(p, "return")
			switch {
			case r.Status < 200 || r.Status > 599:
				bad(join(rp, "status"), "must be from 200 to 599, got %d", r.Status)
			case r.Status >= 300 && r.Status < 400:
				bad(join(rp, "status"), "%d is a redirect: write redirect: {to: …, status: %d}", r.Status, r.Status)
			case r.Body != "" && (r.Status == 204 || r.Status == 304):
				bad(join(rp, "body"), "a %d answer has no body; remove it", r.Status)
			}
			if len(r.Body) > maxReturnBody {
				bad(join(rp, "body"), "is %d bytes; a body written in the config is at most 64 KiB (serve larger files as static files)", len(r.Body))
			}
		}
		c.validateHeaders(l.Headers, join(p, "headers"), bad)
	}

	hosts := map[string]int{}
	for i := range c.Hosts {
		h := &c.Hosts[i]
		p := index("hosts", i)
		h.Match = strings.ToLower(h.Match)
		name := strings.TrimPrefix(h.Match, "*.")
		switch {
		case h.Match == "":
			bad(join(p, "match"), "missing; a host name such as www.example.com, or *.example.com for its subdomains")
		case strings.Contains(name, "*") || !validHost(name) || strings.HasPrefix(h.Match, ".") || strings.HasSuffix(h.Match, "."):
			bad(join(p, "match"), "%s is not a host name; use e.g. www.example.com, or *.example.com for every subdomain of example.com", quoteShort(h.Match))
		default:
			if first, dup := hosts[h.Match]; dup {
				bad(join(p, "match"), "%q is already hosts[%d]; keep one", h.Match, first)
			}
			hosts[h.Match] = i
		}
		if validateRedirect(&h.Redirect, join(p, "redirect"), false, bad) {
			if to := RedirectHost(h.Redirect.To); to != "" && SelectHost([]Host{{Match: h.Match}}, to) != nil {
				bad(join(p, "redirect.to"), "%s redirects %s to itself, a loop; name another host", quoteShort(h.Redirect.To), h.Match)
			}
		}
	}

	pr := &c.Proxy
	c.validateHeaders(pr.Headers, "proxy.headers", bad)
	if pr.Limits.ConnectionsPerClient < 0 {
		bad("proxy.limits.connections_per_client", "must not be negative (0 = no limit), got %d", pr.Limits.ConnectionsPerClient)
	}
	for _, code := range slices.Sorted(maps.Keys(pr.ErrorPages)) {
		f := pr.ErrorPages[code]
		p := join("proxy.error_pages", strconv.Itoa(code))
		if !slices.Contains(ErrorPageStatuses, code) {
			bad(p, "%d is not a status berth makes itself; error pages are for %s", code, statusList(ErrorPageStatuses))
		}
		if !filepath.IsAbs(f) {
			bad(p, "%s must be an absolute path to an HTML file, e.g. /srv/errors/50x.html", quoteShort(f))
		}
	}
}

// checkLocationPath validates a location's path: absolute and normalized,
// since it is compared with normalized request paths.
func checkLocationPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("%s must start with \"/\", e.g. /admin/", quoteShort(p))
	case strings.ContainsAny(p, "?# \t") || hasControl(p):
		return fmt.Errorf("%s must be a path alone: no query, fragment, spaces or control characters", quoteShort(p))
	case strings.Contains(p, "//") || strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../"):
		return fmt.Errorf("%s is not a normalized path (no //, /./ or /../): requests are matched after normalization, so it would never match", quoteShort(p))
	}
	return nil
}

func validateLimit(l *Limit, p string, bad func(path, format string, args ...any)) {
	if l.Burst < 0 {
		bad(join(p, "burst"), "must not be negative, got %d", l.Burst)
	}
	switch {
	case l.Delay < 0:
		bad(join(p, "delay"), "must not be negative, got %d", l.Delay)
	case l.Delay > 0 && l.NoDelay:
		bad(join(p, "delay"), "nodelay passes the whole burst at once; write nodelay: true or delay: %d, not both", l.Delay)
	case l.Delay > l.Burst && l.Burst >= 0:
		bad(join(p, "delay"), "%d is more than burst (%d): with every request of the burst passing at once, write nodelay: true", l.Delay, l.Burst)
	}
	if l.Status < 400 || l.Status > 599 {
		bad(join(p, "status"), "must be from 400 to 599 (429 Too Many Requests unless set; nginx's default is 503), got %d", l.Status)
	}
	switch l.Key {
	case "$remote_addr", "$binary_remote_addr":
		l.Key = LimitKeyClient // the client address after trusted proxies, as $remote_addr is in berth
	case LimitKeyClient, LimitKeyGlobal:
	default:
		vars := varRE.FindAllStringSubmatch(l.Key, -1)
		if len(vars) == 0 || hasControl(l.Key) {
			bad(join(p, "key"), "%s is not a key: use client (each client address), global (one bucket for all), or text with variables such as $http_x_api_key", quoteShort(l.Key))
		}
		for _, m := range vars {
			if v := strings.Trim(m[1], "{}"); !ValidHashVar(v) {
				bad(join(p, "key"), "$%s is not a variable berth knows; use $remote_addr, $request_uri, $uri, $args, $host, $scheme, $request_method, $http_NAME, $cookie_NAME or $arg_NAME", v)
			}
		}
	}
}

// validateRedirect checks a redirect; rest says whether $rest may be used
// (a prefix location's). It reports whether `to` is usable.
func validateRedirect(r *Redirect, p string, rest bool, bad func(path, format string, args ...any)) bool {
	if !slices.Contains(redirectStatuses, r.Status) {
		bad(join(p, "status"), "must be one of 301, 302, 303, 307, 308 (302 unless set), got %d", r.Status)
	}
	to := r.To
	ok := true
	for _, m := range varRE.FindAllStringSubmatch(to, -1) {
		v := strings.Trim(m[1], "{}")
		switch {
		case v == "rest" && !rest:
			bad(join(p, "to"), "$rest is the path after a location's path: prefix, so it has no value here; use $request_uri or $uri")
			ok = false
		case !slices.Contains(RedirectVars, v):
			bad(join(p, "to"), "$%s is not a variable a redirect can use; use $scheme, $host, $request_uri, $uri, $args, $is_args or $rest", v)
			ok = false
		}
	}
	lit := varRE.ReplaceAllString(to, "x")
	switch {
	case to == "":
		bad(join(p, "to"), "missing; e.g. \"https://example.com$request_uri\" or /new/")
		return false
	case strings.Contains(lit, "$"):
		bad(join(p, "to"), "%s has a $ that starts no variable; variables are $name or ${name}", quoteShort(to))
		return false
	case strings.ContainsAny(to, " \t") || hasControl(to):
		bad(join(p, "to"), "%s must not contain spaces or control characters; percent-encode them", quoteShort(to))
		return false
	case !(strings.HasPrefix(to, "/") && !strings.HasPrefix(to, "//") || strings.HasPrefix(to, "https://") ||
		strings.HasPrefix(to, "http://") || strings.HasPrefix(to, "$scheme://") || strings.HasPrefix(to, "${scheme}://")):
		bad(join(p, "to"), "%s must be a URL (https://example.com/…, $scheme://$host/…) or a path starting with / (on this host)", quoteShort(to))
		return false
	}
	return ok
}

// RedirectHost is the literal host of a redirect target ("example.com" of
// "https://example.com$request_uri"), "" when it is a path or its host has
// a variable.
func RedirectHost(to string) string {
	_, rest, ok := strings.Cut(to, "://")
	if !ok {
		return ""
	}
	end := strings.IndexAny(rest, "/?$")
	if end < 0 {
		return rest
	}
	if rest[end] == '$' {
		// The host ends where a path variable starts; any other variable
		// ($host) is part of the host.
		v := varRE.FindStringSubmatch(rest[end:])
		if v == nil || !slices.Contains([]string{"request_uri", "uri", "rest"}, strings.Trim(v[1], "{}")) {
			return ""
		}
	}
	return rest[:end]
}

// validateHeaders checks header names and values.
func (c *Config) validateHeaders(h map[string]string, p string, bad func(path, format string, args ...any)) {
	seen := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(h)) {
		hp := join(p, name)
		lower := strings.ToLower(name)
		if err := CheckHeader(name, h[name]); err != nil {
			bad(hp, "%v", err)
		} else if lower == "strict-transport-security" && c.TLS.HSTS > 0 {
			bad(hp, "tls.hsts already sends Strict-Transport-Security; set it in one place")
		}
		if other, dup := seen[lower]; dup {
			bad(hp, "%q is already set as %q (header names ignore case); keep one", name, other)
		}
		seen[lower] = name
	}
}

// CheckHeader says whether proxy.headers or a location's headers may set
// (or, with value "", remove) the field name.
func CheckHeader(name, value string) error {
	switch {
	case !isToken(name):
		return fmt.Errorf("%s is not a header name; use letters, digits and -, e.g. X-Frame-Options", quoteShort(name))
	case slices.Contains(hopHeaders, strings.ToLower(name)):
		return fmt.Errorf("berth sets %s itself (it frames and encodes the response); it cannot be set or removed", name)
	case strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }):
		return fmt.Errorf("the value must not contain line breaks, NUL or other control characters")
	}
	return nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// rendering

// locationNodes renders hosts and locations for Effective, and the nodes
// that go under proxy: headers, limits, error_pages.
func (c *Config) locationNodes() (hosts, locations, headers, limits, errorPages *yaml.Node) {
	hosts = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, h := range c.Hosts {
		m := mapNode("match", strNode(h.Match), "redirect", redirectNode(h.Redirect))
		m.Style = yaml.FlowStyle
		hosts.Content = append(hosts.Content, m)
	}
	emptyFlow(hosts)
	locations = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, l := range c.Locations {
		kv := []any{"path", strNode(l.Path)}
		if l.Exact != "" {
			kv = []any{"exact", strNode(l.Exact)}
		}
		access := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
		for _, r := range l.Access {
			key, addr := "deny", r.Prefix.String()
			if r.Allow {
				key = "allow"
			}
			if r.All {
				addr = "all"
			}
			access.Content = append(access.Content, flow(mapNode(key, strNode(addr))))
		}
		kv = append(kv, "access", access)
		if lim := l.Limit; lim != nil {
			kv = append(kv, "limit", flow(mapNode("rate", strNode(lim.Rate.String()), "burst", intNode(int64(lim.Burst)),
				"nodelay", boolNode(lim.NoDelay), "delay", intNode(int64(lim.Delay)), "key", strNode(lim.Key),
				"status", intNode(int64(lim.Status)))))
		}
		if a := l.Auth; a != nil && a.Basic != nil {
			kv = append(kv, "auth", flow(mapNode("basic", mapNode("realm", strNode(a.Basic.Realm), "users", strNode(a.Basic.Users)))))
		}
		if l.Redirect != nil {
			kv = append(kv, "redirect", redirectNode(*l.Redirect))
		}
		if r := l.Return; r != nil {
			kv = append(kv, "return", flow(mapNode("status", intNode(int64(r.Status)), "body", strNode(r.Body))))
		}
		kv = append(kv, "headers", headersNode(l.Headers))
		locations.Content = append(locations.Content, mapNode(kv...))
	}
	emptyFlow(locations)
	errorPages = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, code := range slices.Sorted(maps.Keys(c.Proxy.ErrorPages)) {
		errorPages.Content = append(errorPages.Content, intNode(int64(code)), strNode(c.Proxy.ErrorPages[code]))
	}
	emptyFlow(errorPages)
	limits = mapNode("connections_per_client", intNode(int64(c.Proxy.Limits.ConnectionsPerClient)))
	return hosts, locations, headersNode(c.Proxy.Headers), limits, errorPages
}

func redirectNode(r Redirect) *yaml.Node {
	to := strNode(r.To)
	to.Style = yaml.DoubleQuotedStyle
	return flow(mapNode("to", to, "status", intNode(int64(r.Status))))
}

func headersNode(h map[string]string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle}
	for _, k := range slices.Sorted(maps.Keys(h)) {
		v := strNode(h[k])
		v.Style = yaml.DoubleQuotedStyle
		n.Content = append(n.Content, strNode(k), v)
	}
	return n
}

func flow(n *yaml.Node) *yaml.Node {
	n.Style = yaml.FlowStyle
	return n
}

// sameLocations compares the rules of issue 24, nil and empty equal.
func sameLocations(a, b *Config) bool {
	return sameList(a.Locations, b.Locations) && sameList(a.Hosts, b.Hosts) &&
		maps.Equal(a.Proxy.Headers, b.Proxy.Headers) && a.Proxy.Limits == b.Proxy.Limits &&
		maps.Equal(a.Proxy.ErrorPages, b.Proxy.ErrorPages)
}
