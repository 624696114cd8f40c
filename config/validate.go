package config

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/proxy/logformat"
)

// Default returns the built-in configuration, used as is when there is no
// config file and as the base every file's keys are laid over.
func Default() *Config {
	c := &Config{
		Listen: []string{":8080"},
		Admin:  Admin{Listen: "127.0.0.1:9000"},
		App: App{
			Chdir:      "/app",
			Python:     "python3",
			PythonPath: []string{},
			Env:        map[string]string{},
			ReloadOn:   []string{},
			Interface:  "auto",
		},
		Workers: Workers{
			Count:           0, // auto
			Threads:         1,
			Preload:         true,
			Timeout:         Duration(30 * time.Second),
			GracefulTimeout: Duration(30 * time.Second),
			Concurrency:     1000,
			DrainTimeout:    Duration(30 * time.Second), // = GracefulTimeout, see validate
		},
		Static: []Static{},
		Mounts: []Mount{},
		Proxy: Proxy{
			MaxBodySize:    1 << 20,  // nginx's client_max_body_size 1m
			BodyBufferSize: 64 << 10, // JSON and form posts stay out of temp files (nginx: 16k)
			TrustedProxies: []string{},
			AccessLog:      "combined",
			RequestID:      true,
			Queue:          Queue{Size: 10000, Timeout: Duration(30 * time.Second)},
			Headers:        map[string]string{},
			ErrorPages:     map[int]string{},
		},
		Tasks:    Tasks{BeforeStart: []Task{}, BeforeRoll: []Task{}},
		Programs: []Program{},
		Cron:     []Job{},

		Upstreams: map[string]Upstream{},
		Routes:    []Route{},
		Hosts:     []Host{},
		Locations: []Location{},
	}
	defaultEdge(c)
	return c
}

// Validate checks a Config built in code (Parse and Load already validate)
// and normalizes it in place: trusted_proxies become masked CIDRs. Errors
// carry no line numbers.
func (c *Config) Validate() error {
	return c.validate(c.Source, nil, func(string) bool { return false })
}

// maxUnixPath is the longest path that fits sockaddr_un.sun_path (108 bytes
// with the terminating NUL).
const maxUnixPath = 107

// MaxBodyBufferSize bounds proxy.body_buffer_size. Every request being
// uploaded may hold that much memory, so a typo (2G for 2M) must not pass
// as a setting.
const MaxBodyBufferSize = 1 << 30

// moduleRE is a Python module path with an optional callable, as gunicorn
// and uWSGI take them: "mysite.wsgi" or "mysite.wsgi:application".
var moduleRE = regexp.MustCompile(`^[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)*(:[\p{L}_][\p{L}\p{N}_]*)?$`)

// validate checks the rules the decoder cannot. lines maps the key paths
// written in the file to their lines (nil for a Config built in code); each
// problem is reported at its key's line, or its nearest written parent's.
// Paths for which failed is true were already reported and are skipped.
func (c *Config) validate(file string, lines map[string]int, failed func(path string) bool) error {
	var errs ErrorList
	bad := func(path, format string, args ...any) {
		if failed(path) {
			return // already reported by the decoder
		}
		errs = append(errs, &Error{File: file, Line: lineOf(lines, path), Path: path, Msg: fmt.Sprintf(format, args...)})
	}

	if len(c.Listen) == 0 {
		bad("listen", `at least one listen address is required, e.g. [":8080"]`)
	}
	for i, l := range c.Listen {
		if err := checkListen(l); err != nil {
			bad(index("listen", i), "%v", err)
			continue
		}
		for j := range i {
			if listenConflict(ListenAddress(c.Listen[j]), ListenAddress(l)) {
				bad(index("listen", i), "%q binds the same address as listen[%d] (%q); remove one of them", l, j, c.Listen[j])
				break
			}
		}
	}
	// A listen list that failed to decode still holds the default, which
	// must not be blamed for clashing with admin.listen.
	if c.Admin.Listen != "off" && !failed("listen") && !failed("admin.listen") {
		if strings.HasPrefix(c.Admin.Listen, TLSScheme) {
			bad("admin.listen", "the admin endpoint speaks plain HTTP; drop https:// from %s", quoteShort(c.Admin.Listen))
		} else if err := checkListen(c.Admin.Listen); err != nil {
			bad("admin.listen", `%v; or "off" to disable the admin endpoint`, err)
		} else {
			for i, l := range c.Listen {
				if !listenConflict(c.Admin.Listen, ListenAddress(l)) {
					continue
				}
				_, adminSet := lines["admin.listen"]
				if _, listenSet := lines[index("listen", i)]; !adminSet && listenSet {
					// admin.listen is the default: point at the listen entry the user wrote.
					bad(index("listen", i), "%q is the admin endpoint's address (admin.listen defaults to %q), and the admin endpoint must never be on a public listener; use another port here, or set admin.listen to another address or \"off\"", l, c.Admin.Listen)
				} else {
					bad("admin.listen", "%q binds the same address as listen[%d] (%q), but the admin endpoint must never be on a public listener; give it another port, or \"off\"", c.Admin.Listen, i, l)
				}
			}
		}
	}

	a := &c.App
	if a.Module != "" && !moduleRE.MatchString(a.Module) {
		bad("app.module", "%s is not a WSGI module: use \"package.module\" or \"package.module:callable\" (Python identifiers), e.g. mysite.wsgi:application, or \"\" to discover it", quoteShort(a.Module))
	}
	if a.Chdir != "" && !filepath.IsAbs(a.Chdir) {
		bad("app.chdir", "%s must be an absolute path, e.g. /app", quoteShort(a.Chdir))
	}
	if a.Python == "" {
		bad("app.python", "must name the Python interpreter, e.g. python3 or /venv/bin/python")
	}
	for i, p := range a.PythonPath {
		if p == "" {
			bad(index("app.pythonpath", i), "empty path; remove the entry")
		}
	}
	for _, k := range slices.Sorted(maps.Keys(a.Env)) {
		v := a.Env[k]
		if k == "" || strings.ContainsAny(k, "=\x00") {
			bad(join("app.env", k), "%s is not a valid environment variable name; use letters, digits and _", quoteShort(k))
		}
		if strings.ContainsRune(v, 0) {
			bad(join("app.env", k), "the value must not contain a NUL byte")
		}
	}
	for i, p := range a.ReloadOn {
		if p == "" {
			bad(index("app.reload_on", i), "empty path; remove the entry")
		}
	}
	switch a.Interface {
	case "auto", "wsgi", "asgi":
	default:
		bad("app.interface", "must be one of auto, wsgi, asgi; got %s", quoteShort(a.Interface))
	}

	w := &c.Workers
	if w.Count < 0 {
		bad("workers.count", "must be at least 1, or 0 for auto; got %d", w.Count)
	}
	if w.Threads < 1 {
		bad("workers.threads", "must be at least 1, got %d", w.Threads)
	}
	if w.MaxRequests < 0 {
		bad("workers.max_requests", "must not be negative (0 = never recycle), got %d", w.MaxRequests)
	}
	if w.MaxRequestsJitter < 0 {
		bad("workers.max_requests_jitter", "must not be negative (0 = no jitter), got %d", w.MaxRequestsJitter)
	}
	if w.MaxRSS < 0 {
		bad("workers.max_rss", "must not be negative (0 = no limit), got %d", w.MaxRSS)
	}
	if w.Timeout <= 0 {
		bad("workers.timeout", "must be longer than 0s, e.g. 30s; got %s", w.Timeout)
	}
	if w.GracefulTimeout < 0 {
		bad("workers.graceful_timeout", "must not be negative, got %s", w.GracefulTimeout)
	}
	if w.Concurrency < 1 {
		bad("workers.concurrency", "must be at least 1 (requests and websockets one ASGI worker takes at once), got %d", w.Concurrency)
	}
	// Not written in the file: drain_timeout follows graceful_timeout.
	if _, written := lines["workers.drain_timeout"]; !written && lines != nil {
		w.DrainTimeout = max(w.GracefulTimeout, 0)
	}
	switch {
	case w.DrainTimeout < 0:
		bad("workers.drain_timeout", "must not be negative (0s = close websockets and streams at once), got %s", w.DrainTimeout)
	case w.DrainTimeout > w.GracefulTimeout && w.GracefulTimeout >= 0 && !failed("workers.graceful_timeout"):
		bad("workers.drain_timeout", "%s is longer than workers.graceful_timeout (%s), after which a draining worker is stopped anyway; shorten it or raise graceful_timeout", w.DrainTimeout, w.GracefulTimeout)
	}

	urls := map[string]int{}
	for i, s := range c.Static {
		p := index("static", i)
		switch {
		case s.File != "" && s.Dir != "":
			bad(p, "has both dir and file; a mapping serves a directory (dir) or one file (file), not both")
		case s.File != "":
			if !strings.HasPrefix(s.URL, "/") || strings.HasSuffix(s.URL, "/") {
				bad(join(p, "url"), "%s must start with \"/\" and name one file (no trailing \"/\"), e.g. /favicon.ico", quoteShort(s.URL))
			}
			if !filepath.IsAbs(s.File) {
				bad(join(p, "file"), "%s must be an absolute path, e.g. /app/static/favicon.ico", quoteShort(s.File))
			}
		default:
			if !strings.HasPrefix(s.URL, "/") || !strings.HasSuffix(s.URL, "/") {
				bad(join(p, "url"), "%s must start and end with \"/\", e.g. /static/", quoteShort(s.URL))
			}
			if !filepath.IsAbs(s.Dir) {
				bad(join(p, "dir"), "%s must be an absolute path, e.g. /app/static", quoteShort(s.Dir))
			}
		}
		if first, dup := urls[s.URL]; dup && s.URL != "" {
			bad(join(p, "url"), "%q is already mapped by static[%d]; remove one of the entries", s.URL, first)
		} else {
			urls[s.URL] = i
		}
		if s.Cache < 0 {
			bad(join(p, "cache"), "must not be negative (0s = no Cache-Control header), got %s", s.Cache)
		}
	}

	pr := &c.Proxy
	if pr.MaxBodySize < 0 {
		bad("proxy.max_body_size", "must not be negative (0 = no limit), got %d", pr.MaxBodySize)
	}
	if pr.BodyBufferSize < 1 || pr.BodyBufferSize > MaxBodyBufferSize {
		bad("proxy.body_buffer_size", "must be from 1 to 1Gi (the bytes of a request body kept in memory before it goes to a temp file; the default is 64Ki), got %d", pr.BodyBufferSize)
	}
	for i, s := range pr.TrustedProxies {
		norm, err := normalizeCIDR(s)
		if err != nil {
			bad(index("proxy.trusted_proxies", i), "%v", err)
			continue
		}
		pr.TrustedProxies[i] = norm
	}
	switch pr.AccessLog {
	case "combined", "json", "off":
	default:
		if !strings.Contains(pr.AccessLog, "$") {
			bad("proxy.access_log", "must be combined, json, off or a format with $variables, e.g. '$remote_addr \"$request\" $status $request_id'; got %s", quoteShort(pr.AccessLog))
		} else if _, err := logformat.Parse(pr.AccessLog); err != nil {
			bad("proxy.access_log", "%v", err)
		}
	}
	if pr.Queue.Size < 0 {
		bad("proxy.queue.size", "must not be negative (0 = no queue: 503 when every worker is busy), got %d", pr.Queue.Size)
	}
	if pr.Queue.Timeout < 0 {
		bad("proxy.queue.timeout", "must not be negative, got %s", pr.Queue.Timeout)
	}
	if c.Shutdown.Delay < 0 {
		bad("shutdown.delay", "must not be negative, got %s", c.Shutdown.Delay)
	}
	c.validateCompanions(bad)
	c.validateUpstreams(bad)
	c.validateEdge(bad)
	c.validateLocations(bad)
	c.inheritMountWorkers(lines)
	c.validateMounts(bad)
	return errs.asError()
}

const listenForms = `use host:port, :port, unix:/absolute/path, or https://host:port for TLS`

// checkListen validates one listen address: "host:port", ":port" or
// "unix:/abs/path". Port 0 is allowed (the kernel picks one; tests use it).
func checkListen(s string) error {
	if rest, ok := strings.CutPrefix(s, TLSScheme); ok {
		if strings.HasPrefix(rest, "unix:") {
			return fmt.Errorf("%s: TLS listeners are TCP; use https://host:port or https://:port", quoteShort(s))
		}
		s = rest
	}
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		return checkUnixPath(path, "unix:/run/berth/http.sock")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		switch {
		case s == "":
			return fmt.Errorf("empty address; %s", listenForms)
		case isDigits(s):
			return fmt.Errorf("%q has no host part; did you mean \":%s\"?", s, s)
		case strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "["):
			return fmt.Errorf("%s is not host:port; put an IPv6 address in brackets, e.g. [::1]:8080", quoteShort(s))
		}
		return fmt.Errorf("%s is not a listen address; %s", quoteShort(s), listenForms)
	}
	if n, err := strconv.Atoi(port); err != nil || !isDigits(port) || n > 65535 {
		return fmt.Errorf("%s: port %s must be a number from 0 to 65535", quoteShort(s), quoteShort(port))
	}
	if host != "" && !validHost(host) {
		return fmt.Errorf("%s: host %s is neither an IP address nor a host name; %s", quoteShort(s), quoteShort(host), listenForms)
	}
	return nil
}

// checkUnixPath validates the path of a unix: address; example is a
// correct address for the message.
func checkUnixPath(path, example string) error {
	switch {
	case !filepath.IsAbs(path):
		return fmt.Errorf("unix socket path %s must be absolute, e.g. %s", quoteShort(path), example)
	case len(path) > maxUnixPath:
		return fmt.Errorf("unix socket path is %d bytes, longer than the %d the kernel allows; use a shorter path", len(path), maxUnixPath)
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// validHost accepts an IP address or an RFC 1123 host name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// listenConflict reports whether two valid listen addresses would bind the
// same socket: the same unix path, or the same TCP port on the same host or
// on a wildcard host.
func listenConflict(a, b string) bool {
	pa, ua := strings.CutPrefix(a, "unix:")
	pb, ub := strings.CutPrefix(b, "unix:")
	if ua || ub {
		return ua && ub && filepath.Clean(pa) == filepath.Clean(pb)
	}
	ha, porta, err1 := net.SplitHostPort(a)
	hb, portb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || porta != portb {
		return false
	}
	if n, _ := strconv.Atoi(porta); n == 0 {
		return false // port 0 picks a free port each time
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	if wild(ha) || wild(hb) {
		return true
	}
	if ia, err := netip.ParseAddr(ha); err == nil {
		if ib, err := netip.ParseAddr(hb); err == nil {
			return ia == ib
		}
	}
	return strings.EqualFold(ha, hb)
}

// normalizeCIDR returns s as a masked CIDR; a plain IP becomes /32 or /128.
func normalizeCIDR(s string) (string, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return "", fmt.Errorf("%s is not a CIDR or IP address; use e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32", quoteShort(s))
		}
		return p.Masked().String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("%s is not a CIDR or IP address; use e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32", quoteShort(s))
	}
	return netip.PrefixFrom(a, a.BitLen()).String(), nil
}

// lineOf returns the line of path in lines, or of its nearest parent that
// was written in the file; 0 when none was (the value is a default).
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		path = path[:max(strings.LastIndexAny(path, ".["), 0)]
	}
	return 0
}
