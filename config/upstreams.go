package config

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Upstreams: named groups of remote servers (nginx's `upstream {}`), and
// the routes that send a URL prefix to one of them instead of the local
// workers. A config whose routes send "/" to a group has no use for an
// app: berth runs as a pure edge, with no worker at all (Edge).

// Upstream is one group of remote servers.
type Upstream struct {
	// Method picks a server per request: round_robin (smooth weighted, as
	// nginx), least_conn (fewest requests in flight per weight) or hash
	// (consistent hashing of the Hash key, nginx's `hash KEY consistent`).
	Method string `yaml:"method" json:"method"`
	// Hash is the key for method hash, nginx variables in text:
	// "$remote_addr" (ip_hash), "$request_uri", "$cookie_session"...
	Hash string `yaml:"hash" json:"hash"`
	// Protocol is what the servers speak: http (HTTP/1.1: other berths,
	// any server) or uwsgi (uWSGI's binary protocol, as nginx uwsgi_pass).
	Protocol string           `yaml:"protocol" json:"protocol"`
	Servers  []UpstreamServer `yaml:"servers" json:"servers"`
	// Health is the optional active check; Path "" = none (passive
	// health, max_fails/fail_timeout, always applies).
	Health Health `yaml:"health" json:"health"`
	// Keepalive is how many idle connections to keep open per server
	// (nginx keepalive); 0 = close each connection after its response.
	Keepalive int `yaml:"keepalive" json:"keepalive"`
	// KeepaliveTimeout closes a pooled connection idle this long; keep it
	// below the servers' own idle timeout.
	KeepaliveTimeout Duration `yaml:"keepalive_timeout" json:"keepalive_timeout"`
	// ConnectTimeout bounds a TCP connect to one server.
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// Timeout bounds one exchange with a server (the request sent and the
	// whole response read; the silence between two chunks of a streamed
	// one): past it the client gets 504 and the server counts a failure.
	Timeout Duration `yaml:"timeout" json:"timeout"`
	Retry   Retry    `yaml:"retry" json:"retry"`
	// Resolve is how often server addresses given as DNS names are looked
	// up again; each address a name resolves to is a server of its own.
	Resolve Duration `yaml:"resolve" json:"resolve"`
}

// UpstreamServer is one entry of servers.
type UpstreamServer struct {
	// Address is "host:port" (host an IP address or a DNS name) or
	// "unix:/path".
	Address string `yaml:"address" json:"address"`
	// Weight is its share in round_robin and hash, its divisor in
	// least_conn.
	Weight int `yaml:"weight" json:"weight"`
	// MaxFails failures within FailTimeout take it out of rotation for
	// FailTimeout (nginx's passive health); 0 = never taken out.
	MaxFails    int      `yaml:"max_fails" json:"max_fails"`
	FailTimeout Duration `yaml:"fail_timeout" json:"fail_timeout"`
	// Backup servers get requests only when no primary one can take them.
	Backup bool `yaml:"backup" json:"backup"`
	// Down takes it out of rotation (a planned removal).
	Down bool `yaml:"down" json:"down"`
	// MaxConns caps its requests in flight; 0 = no cap.
	MaxConns int `yaml:"max_conns" json:"max_conns"`
}

// Health is an active health check: Path polled every Interval on every
// server. A server failing Fails checks in a row is out until it passes
// Passes in a row.
type Health struct {
	Path     string   `yaml:"path" json:"path"`
	Interval Duration `yaml:"interval" json:"interval"`
	Timeout  Duration `yaml:"timeout" json:"timeout"`
	Fails    int      `yaml:"fails" json:"fails"`
	Passes   int      `yaml:"passes" json:"passes"`
}

// Retry says when a request that failed on one server is sent to another.
// A request the server never had (connect refused, nothing written, a
// bodiless request closed unread) is always retried within Tries; one the
// server may have begun only when it is idempotent and Idempotent is set;
// after a timeout never.
type Retry struct {
	// Tries is the most servers one request is sent to (1 = no retry).
	Tries int `yaml:"tries" json:"tries"`
	// Timeout bounds all tries together; 0 = no limit beyond each try's.
	Timeout Duration `yaml:"timeout" json:"timeout"`
	// Idempotent: also replay GET, HEAD, OPTIONS, PUT, DELETE a server had
	// begun and failed to answer (nginx's proxy_next_upstream default).
	Idempotent bool `yaml:"idempotent" json:"idempotent"`
	// Budget is the retries allowed as a percentage of requests (beyond a
	// reserve of 10), so a failing group is not hit twice as hard.
	Budget int `yaml:"budget" json:"budget"`
}

// Route sends requests whose path starts with URL to an upstream group.
type Route struct {
	URL      string `yaml:"url" json:"url"`
	Upstream string `yaml:"upstream" json:"upstream"`
}

// Upstream methods and protocols.
const (
	MethodRoundRobin = "round_robin"
	MethodLeastConn  = "least_conn"
	MethodHash       = "hash"
	ProtocolHTTP     = "http"
	ProtocolUwsgi    = "uwsgi"
)

// defaultUpstream is a group with every optional key at its default.
func defaultUpstream() Upstream {
	return Upstream{
		Method:           MethodRoundRobin,
		Protocol:         ProtocolHTTP,
		Servers:          []UpstreamServer{},
		Health:           Health{Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Fails: 2, Passes: 1},
		Keepalive:        32,
		KeepaliveTimeout: Duration(60 * time.Second),
		ConnectTimeout:   Duration(5 * time.Second),
		Timeout:          Duration(60 * time.Second),
		Retry:            Retry{Tries: 3, Budget: 20},
		Resolve:          Duration(30 * time.Second),
	}
}

func defaultServer() UpstreamServer {
	return UpstreamServer{Weight: 1, MaxFails: 1, FailTimeout: Duration(10 * time.Second)}
}

// Edge reports whether a route sends every request ("/") to an upstream:
// then no request can reach an app, and berth starts no worker.
func (c *Config) Edge() bool {
	for _, r := range c.Routes {
		if r.URL == "/" {
			return true
		}
	}
	return false
}

func (d *decoder) upstreams(dst *map[string]Upstream) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping of group names to groups, such as {app: {servers: [{address: \"10.0.0.2:8080\"}]}}, got %s", describe(n))
			return
		}
		out := map[string]Upstream{}
		d.pairs(path, n, func(name string, k, v *yaml.Node) {
			p := join(path, name)
			d.lines[p] = v.Line
			u := defaultUpstream()
			if isNull(v) {
				d.errorf(v.Line, p, "empty group; give it servers, e.g. {servers: [{address: \"10.0.0.2:8080\"}]}")
			} else {
				d.upstream(p, v, &u)
			}
			out[name] = u
		})
		*dst = out
	}
}

func (d *decoder) upstream(p string, n *yaml.Node, u *Upstream) {
	d.section(p, n, []field{
		{"method", d.str(&u.Method)},
		{"hash", d.str(&u.Hash)},
		{"protocol", d.str(&u.Protocol)},
		{"servers", d.servers(&u.Servers)},
		{"health", func(path string, n *yaml.Node) {
			h := &u.Health
			d.section(path, n, []field{
				{"path", d.str(&h.Path)},
				{"interval", d.duration(&h.Interval)},
				{"timeout", d.duration(&h.Timeout)},
				{"fails", d.int(&h.Fails)},
				{"passes", d.int(&h.Passes)},
			})
		}},
		{"keepalive", d.int(&u.Keepalive)},
		{"keepalive_timeout", d.duration(&u.KeepaliveTimeout)},
		{"connect_timeout", d.duration(&u.ConnectTimeout)},
		{"timeout", d.duration(&u.Timeout)},
		{"retry", func(path string, n *yaml.Node) {
			r := &u.Retry
			d.section(path, n, []field{
				{"tries", d.int(&r.Tries)},
				{"timeout", d.duration(&r.Timeout)},
				{"idempotent", d.boolean(&r.Idempotent)},
				{"budget", d.percent(&r.Budget)},
			})
		}},
		{"resolve", d.duration(&u.Resolve)},
	})
}

func (d *decoder) servers(dst *[]UpstreamServer) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []UpstreamServer{}
		d.list(path, n, `{address: "10.0.0.2:8080", weight: 1}`, func(i int, p string, it *yaml.Node) {
			s := defaultServer()
			if it.Kind == yaml.ScalarNode && !isNull(it) {
				// A bare address, as nginx's `server 10.0.0.2:8080;`.
				d.lines[join(p, "address")] = it.Line
				d.str(&s.Address)(join(p, "address"), it)
			} else {
				d.section(p, it, []field{
					{"address", d.str(&s.Address)},
					{"weight", d.int(&s.Weight)},
					{"max_fails", d.int(&s.MaxFails)},
					{"fail_timeout", d.duration(&s.FailTimeout)},
					{"backup", d.boolean(&s.Backup)},
					{"down", d.boolean(&s.Down)},
					{"max_conns", d.int(&s.MaxConns)},
				})
			}
			out = append(out, s)
		})
		*dst = out
	}
}

// percent reads "20%" or a whole number of percent.
func (d *decoder) percent(dst *int) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			if v, err := strconv.Atoi(strings.TrimSuffix(n.Value, "%")); err == nil && strings.HasSuffix(n.Value, "%") {
				*dst = v
				return
			}
		}
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			d.int(dst)(path, n)
			return
		}
		d.errorf(n.Line, path, "expected a percentage such as 20%%, got %s", describe(n))
	}
}

func (d *decoder) routes(dst *[]Route) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Route{}
		d.list(path, n, "{url: /, upstream: app}", func(i int, p string, it *yaml.Node) {
			var r Route
			d.section(p, it, []field{
				{"url", d.str(&r.URL)},
				{"upstream", d.str(&r.Upstream)},
			})
			out = append(out, r)
		})
		*dst = out
	}
}

// hashVarRE matches one variable of a hash key.
var hashVarRE = regexp.MustCompile(`\$([a-z_][a-z0-9_]*|\{[a-z_][a-z0-9_]*\})`)

// hashVars are the variables a hash key may use; $http_NAME, $cookie_NAME
// and $arg_NAME are matched by prefix.
var hashVars = []string{"remote_addr", "binary_remote_addr", "request_uri", "uri", "args", "host", "scheme", "request_method"}

// ValidHashVar says whether $name can be used in a hash key.
func ValidHashVar(name string) bool {
	if slices.Contains(hashVars, name) {
		return true
	}
	for _, p := range []string{"http_", "cookie_", "arg_"} {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
	}
	return false
}

// validateUpstreams checks upstreams and routes; bad reports one problem at
// a key path.
func (c *Config) validateUpstreams(bad func(path, format string, args ...any)) {
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		p := join("upstreams", name)
		if !companionName.MatchString(name) {
			bad(p, "%s is not a group name: use up to 63 letters, digits, '.', '_' and '-', starting with a letter or digit", quoteShort(name))
		}
		switch u.Method {
		case MethodRoundRobin, MethodLeastConn:
			if u.Hash != "" {
				bad(join(p, "hash"), "is only used with method: hash; remove it or set method: hash")
			}
		case MethodHash:
			if u.Hash == "" {
				bad(join(p, "hash"), "method hash needs a key, e.g. $remote_addr (nginx ip_hash) or $request_uri")
			}
		default:
			bad(join(p, "method"), "must be one of round_robin, least_conn, hash; got %s", quoteShort(u.Method))
		}
		if u.Hash != "" {
			if !strings.Contains(u.Hash, "$") {
				bad(join(p, "hash"), "%s has no variable, so every request would go to one server; use e.g. $remote_addr or $request_uri", quoteShort(u.Hash))
			}
			for _, m := range hashVarRE.FindAllStringSubmatch(u.Hash, -1) {
				v := strings.Trim(m[1], "{}")
				if !ValidHashVar(v) {
					bad(join(p, "hash"), "$%s is not a variable berth knows; use $remote_addr, $request_uri, $uri, $args, $host, $scheme, $request_method, $http_NAME, $cookie_NAME or $arg_NAME", v)
				}
			}
		}
		switch u.Protocol {
		case ProtocolHTTP, ProtocolUwsgi:
		default:
			bad(join(p, "protocol"), "must be http or uwsgi; got %s", quoteShort(u.Protocol))
		}
		if len(u.Servers) == 0 {
			bad(join(p, "servers"), "a group needs at least one server, e.g. [{address: \"10.0.0.2:8080\"}]")
		}
		primary := 0
		seen := map[string]int{}
		for i, s := range u.Servers {
			sp := index(join(p, "servers"), i)
			if err := checkUpstreamAddress(s.Address); err != nil {
				bad(join(sp, "address"), "%v", err)
			} else if first, dup := seen[s.Address]; dup {
				bad(join(sp, "address"), "%q is already servers[%d]; give a server more weight instead of listing it twice", s.Address, first)
			} else {
				seen[s.Address] = i
			}
			if s.Weight < 1 {
				bad(join(sp, "weight"), "must be at least 1, got %d", s.Weight)
			}
			if s.MaxFails < 0 {
				bad(join(sp, "max_fails"), "must not be negative (0 = never taken out), got %d", s.MaxFails)
			}
			if s.FailTimeout <= 0 {
				bad(join(sp, "fail_timeout"), "must be longer than 0s, e.g. 10s; got %s", s.FailTimeout)
			}
			if s.MaxConns < 0 {
				bad(join(sp, "max_conns"), "must not be negative (0 = no cap), got %d", s.MaxConns)
			}
			if s.Backup && u.Method == MethodHash {
				bad(join(sp, "backup"), "backup servers cannot be used with method hash (as in nginx): a key must keep its server; remove backup or use round_robin or least_conn")
			}
			if !s.Backup && !s.Down {
				primary++
			}
		}
		if len(u.Servers) > 0 && primary == 0 {
			bad(join(p, "servers"), "every server is backup or down: at least one must take requests")
		}
		h := u.Health
		if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
			bad(join(p, "health.path"), "%s must start with /, e.g. /livez", quoteShort(h.Path))
		}
		if strings.ContainsAny(h.Path, " \t\r\n\x00") {
			bad(join(p, "health.path"), "must not contain spaces or control characters; percent-encode them")
		}
		if h.Interval <= 0 {
			bad(join(p, "health.interval"), "must be longer than 0s, e.g. 5s; got %s", h.Interval)
		}
		if h.Timeout <= 0 {
			bad(join(p, "health.timeout"), "must be longer than 0s, e.g. 2s; got %s", h.Timeout)
		}
		if h.Fails < 1 {
			bad(join(p, "health.fails"), "must be at least 1, got %d", h.Fails)
		}
		if h.Passes < 1 {
			bad(join(p, "health.passes"), "must be at least 1, got %d", h.Passes)
		}
		if u.Keepalive < 0 {
			bad(join(p, "keepalive"), "must not be negative (0 = no pooled connections), got %d", u.Keepalive)
		}
		for _, d := range []struct {
			key string
			v   Duration
		}{{"keepalive_timeout", u.KeepaliveTimeout}, {"connect_timeout", u.ConnectTimeout}, {"timeout", u.Timeout}, {"resolve", u.Resolve}} {
			if d.v <= 0 {
				bad(join(p, d.key), "must be longer than 0s; got %s", d.v)
			}
		}
		if u.Retry.Tries < 1 {
			bad(join(p, "retry.tries"), "must be at least 1 (1 = no retry), got %d", u.Retry.Tries)
		}
		if u.Retry.Timeout < 0 {
			bad(join(p, "retry.timeout"), "must not be negative (0 = no limit), got %s", u.Retry.Timeout)
		}
		if u.Retry.Budget < 0 || u.Retry.Budget > 100 {
			bad(join(p, "retry.budget"), "must be from 0%% to 100%%, got %d%%", u.Retry.Budget)
		}
	}
	urls := map[string]int{}
	for i, r := range c.Routes {
		p := index("routes", i)
		if !strings.HasPrefix(r.URL, "/") {
			bad(join(p, "url"), "%s must start with \"/\", e.g. /api/ (or / for every request)", quoteShort(r.URL))
		} else if first, dup := urls[r.URL]; dup {
			bad(join(p, "url"), "%q is already routed by routes[%d]; remove one of the entries", r.URL, first)
		} else {
			urls[r.URL] = i
		}
		if r.Upstream == "" {
			bad(join(p, "upstream"), "missing; name a group of upstreams")
		} else if _, ok := c.Upstreams[r.Upstream]; !ok {
			names := slices.Sorted(maps.Keys(c.Upstreams))
			msg := "no upstream group is named %q"
			if s := suggest(r.Upstream, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			if len(names) > 0 {
				msg += "; groups: " + strings.Join(names, ", ")
			} else {
				msg += "; define it under upstreams:"
			}
			bad(join(p, "upstream"), msg, r.Upstream)
		}
	}
	if c.Edge() && c.App.Module != "" {
		bad("app.module", "%s is never called: routes send every request (url /) to an upstream, so berth runs as a pure edge with no worker; remove app.module, or route a narrower prefix", quoteShort(c.App.Module))
	}
}

// checkUpstreamAddress validates "host:port" or "unix:/path".
func checkUpstreamAddress(s string) error {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		return checkUnixPath(path, "unix:/run/app.sock")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		if s == "" {
			return fmt.Errorf("missing; use host:port (an IP address or a DNS name) or unix:/absolute/path")
		}
		return fmt.Errorf("%s is not host:port or unix:/path; e.g. 10.0.0.2:8080, app-1.internal:8080, [2001:db8::2]:8080", quoteShort(s))
	}
	if n, err := strconv.Atoi(port); err != nil || !isDigits(port) || n < 1 || n > 65535 {
		return fmt.Errorf("%s: port %s must be a number from 1 to 65535", quoteShort(s), quoteShort(port))
	}
	if !validHost(host) {
		return fmt.Errorf("%s: host %s is neither an IP address nor a DNS name", quoteShort(s), quoteShort(host))
	}
	return nil
}

// upstreamNodes renders upstreams and routes for Effective.
func (c *Config) upstreamNodes() (ups, routes *yaml.Node) {
	boolNode := func(b bool) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b)}
	}
	ups = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		servers := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for _, s := range u.Servers {
			addr := strNode(s.Address)
			addr.Style = yaml.DoubleQuotedStyle
			m := mapNode("address", addr, "weight", intNode(int64(s.Weight)),
				"max_fails", intNode(int64(s.MaxFails)), "fail_timeout", strNode(s.FailTimeout.String()),
				"backup", boolNode(s.Backup), "down", boolNode(s.Down), "max_conns", intNode(int64(s.MaxConns)))
			m.Style = yaml.FlowStyle
			servers.Content = append(servers.Content, m)
		}
		emptyFlow(servers)
		hash := strNode(u.Hash)
		hash.Style = yaml.DoubleQuotedStyle
		ups.Content = append(ups.Content, strNode(name), mapNode(
			"method", strNode(u.Method),
			"hash", hash,
			"protocol", strNode(u.Protocol),
			"servers", servers,
			"health", mapNode("path", strNode(u.Health.Path), "interval", strNode(u.Health.Interval.String()),
				"timeout", strNode(u.Health.Timeout.String()), "fails", intNode(int64(u.Health.Fails)),
				"passes", intNode(int64(u.Health.Passes))),
			"keepalive", intNode(int64(u.Keepalive)),
			"keepalive_timeout", strNode(u.KeepaliveTimeout.String()),
			"connect_timeout", strNode(u.ConnectTimeout.String()),
			"timeout", strNode(u.Timeout.String()),
			"retry", mapNode("tries", intNode(int64(u.Retry.Tries)), "timeout", strNode(u.Retry.Timeout.String()),
				"idempotent", boolNode(u.Retry.Idempotent), "budget", strNode(fmt.Sprintf("%d%%", u.Retry.Budget))),
			"resolve", strNode(u.Resolve.String()),
		))
	}
	emptyFlow(ups)
	routes = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, r := range c.Routes {
		m := mapNode("url", strNode(r.URL), "upstream", strNode(r.Upstream))
		m.Style = yaml.FlowStyle
		routes.Content = append(routes.Content, m)
	}
	emptyFlow(routes)
	return ups, routes
}
