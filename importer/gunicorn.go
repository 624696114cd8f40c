package importer

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

//go:embed gunicorn_eval.py
var gunicornEval string

// gunicornEvalTimeout bounds the evaluation of one gunicorn.conf.py: a file
// that waits on the network or loops must not hang berth import.
const gunicornEvalTimeout = 30 * time.Second

// gunicornValue is one top-level name of an evaluated gunicorn.conf.py.
type gunicornValue struct {
	Line  int    `json:"line"`
	Expr  string `json:"expr"` // the assigned expression when not a literal
	Kind  string `json:"kind"` // value, callable, other
	Value any    `json:"value"`
	Repr  string `json:"repr"`
}

// gunicornHooks are Gunicorn's server hooks: Python functions berth cannot run.
var gunicornHooks = map[string]bool{
	"on_starting": true, "on_reload": true, "when_ready": true, "pre_fork": true, "post_fork": true,
	"post_worker_init": true, "worker_int": true, "worker_abort": true, "pre_exec": true,
	"pre_request": true, "post_request": true, "child_exit": true, "worker_exit": true,
	"nworkers_changed": true, "on_exit": true, "ssl_context": true,
}

// gunicornNotNeeded are settings berth makes unnecessary.
var gunicornNotNeeded = map[string]string{
	"daemon":                             "berth runs in the foreground as the container's PID 1",
	"pidfile":                            "berth runs in the foreground as the container's PID 1",
	"worker_tmp_dir":                     "berth checks its workers' liveness without heartbeat files",
	"proc_name":                          "berth names its processes",
	"default_proc_name":                  "berth names its processes",
	"capture_output":                     "berth passes the workers' stdout and stderr to its own",
	"errorlog":                           "berth writes its own and the workers' errors to stderr",
	"loglevel":                           "berth's log has no levels to choose",
	"backlog":                            "berth's proxy accepts the connections; requests wait in proxy.queue",
	"worker_connections":                 "berth's workers are synchronous; the proxy holds the client connections",
	"check_config":                       "use berth check",
	"print_config":                       "use berth check --print",
	"config":                             "the file being imported",
	"sendfile":                           "berth's proxy sends static files itself",
	"reuse_port":                         "berth's supervisor holds the listening sockets",
	"enable_stdio_inheritance":           "berth passes the workers' stdout and stderr to its own",
	"tmp_upload_dir":                     "berth's proxy spools large request bodies itself",
	"strip_header_spaces":                "berth's proxy refuses malformed headers",
	"tolerate_dangerous_framing":         "berth's proxy refuses ambiguous framing",
	"suppress_ragged_eofs":               "berth's proxy handles client disconnects",
	"initgroups":                         "berth runs the workers with app.user's groups",
	"casefold_http_method":               "berth's proxy refuses lower-case methods",
	"permit_unconventional_http_method":  "berth's proxy refuses unconventional methods",
	"permit_unconventional_http_version": "berth's proxy speaks HTTP/1.0 and 1.1",
	"permit_obsolete_folding":            "berth's proxy refuses obsolete header folding",
	"header_map":                         "berth's workers map headers to environ the PEP 3333 way and drop ambiguous ones",
	"do_handshake_on_connect":            "a TLS setting for Gunicorn's own TLS",
	"spew":                               "a debugging aid with no berth equivalent needed",
}

// gunicornNoEquivalent are settings berth has nothing like.
var gunicornNoEquivalent = map[string]string{
	"paste":                             "berth serves a WSGI callable (app.module), not a PasteDeploy app",
	"raw_paste_global_conf":             "berth serves a WSGI callable (app.module), not a PasteDeploy app",
	"umask":                             "berth does not change the umask",
	"statsd_host":                       "berth has no StatsD client; scrape /metrics (Prometheus) on the admin endpoint",
	"statsd_prefix":                     "berth has no StatsD client; scrape /metrics (Prometheus) on the admin endpoint",
	"dogstatsd_tags":                    "berth has no StatsD client; scrape /metrics (Prometheus) on the admin endpoint",
	"logger_class":                      "berth writes its logs itself",
	"logconfig":                         "berth writes its logs itself, to stdout and stderr",
	"logconfig_dict":                    "berth writes its logs itself, to stdout and stderr",
	"logconfig_json":                    "berth writes its logs itself, to stdout and stderr",
	"syslog":                            "berth writes its logs to stdout and stderr",
	"syslog_addr":                       "berth writes its logs to stdout and stderr",
	"syslog_prefix":                     "berth writes its logs to stdout and stderr",
	"syslog_facility":                   "berth writes its logs to stdout and stderr",
	"disable_redirect_access_to_syslog": "berth writes its logs to stdout and stderr",
	"proxy_protocol":                    "berth's proxy does not read the PROXY protocol",
	"proxy_allow_ips":                   "berth's proxy does not read the PROXY protocol",
	"secure_scheme_headers":             "berth believes X-Forwarded-Proto from proxy.trusted_proxies only, and no other header",
	"forwarder_headers":                 "berth passes the request's headers as they came",
	"reload_engine":                     "berth watches app.reload_on with inotify",
	"limit_request_fields":              "berth's proxy bounds the request line and headers together at 32 KiB",
	"limit_request_field_size":          "berth's proxy bounds the request line and headers together at 32 KiB",
	"limit_request_line":                "berth's proxy bounds the request line and headers together at 32 KiB",
}

// gunicornTLS are Gunicorn's TLS settings: certfile and keyfile become a
// certificate of an https:// listener, the others say what berth does.
var gunicornTLS = map[string]string{
	"certfile":                "",
	"keyfile":                 "",
	"ca_certs":                "berth asks clients for no certificate",
	"cert_reqs":               "berth asks clients for no certificate",
	"ssl_version":             "berth speaks TLS 1.2 and 1.3",
	"ciphers":                 "berth offers Mozilla's intermediate TLS 1.2 suites and TLS 1.3, fixed",
	"do_handshake_on_connect": "berth's proxy does the handshake itself",
	"suppress_ragged_eofs":    "berth's proxy handles a TLS connection closed without close_notify",
}

// gunicornHandled are the settings translateGunicorn turns into keys.
var gunicornHandled = []string{
	"wsgi_app", "chdir", "pythonpath", "raw_env", "bind", "workers", "worker_class", "threads",
	"timeout", "graceful_timeout", "keepalive", "max_requests", "max_requests_jitter",
	"preload_app", "forwarded_allow_ips", "accesslog", "access_log_format", "user", "group", "reload",
	"reload_extra_files",
}

// evalGunicorn runs gunicorn_eval.py on path with python, in the config
// file's directory as Gunicorn usually is.
func evalGunicorn(path, python string) (map[string]gunicornValue, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), gunicornEvalTimeout)
	defer cancel()
	// The environment is passed on: Gunicorn evaluated the file with it
	// (PYTHONPATH, os.environ lookups). -c keeps the helper off disk.
	cmd := exec.CommandContext(ctx, python, "-c", gunicornEval, abs)
	cmd.Dir = filepath.Dir(abs)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: cannot run %s to evaluate it: %w; pass the Python that runs Gunicorn with --python", path, python, err)
	}
	if err := cmd.Wait(); err != nil {
		msg := lastLines(strings.TrimSpace(stderr.String()), 8)
		if ctx.Err() != nil {
			msg = fmt.Sprintf("it ran longer than %s", gunicornEvalTimeout)
		}
		return nil, fmt.Errorf("%s: evaluating it with %s failed (%v): %s; fix the file, or pass the Python that runs Gunicorn with --python", path, python, err, msg)
	}
	var vals map[string]gunicornValue
	if err := json.Unmarshal(stdout.Bytes(), &vals); err != nil {
		return nil, fmt.Errorf("%s: bad answer from the evaluating %s: %w", path, python, err)
	}
	return vals, nil
}

// lastLines keeps the end of a traceback, where the error is.
func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// importGunicorn translates one gunicorn.conf.py.
func importGunicorn(b *builder, path, python string) error {
	vals, err := evalGunicorn(path, python)
	if err != nil {
		return err
	}
	b.appServer = true
	known := map[string]bool{}
	for _, k := range gunicornHandled {
		known[k] = true
	}
	for _, m := range []map[string]string{gunicornNotNeeded, gunicornNoEquivalent, gunicornTLS} {
		for k := range m {
			known[k] = true
		}
	}
	for k := range gunicornHooks {
		known[k] = true
	}
	// In line order, so the output follows the file.
	names := make([]string, 0, len(vals))
	for name := range vals {
		if known[name] {
			names = append(names, name)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		if vals[names[i]].Line != vals[names[j]].Line {
			return vals[names[i]].Line < vals[names[j]].Line
		}
		return names[i] < names[j]
	})
	tls := map[string]*item{}
	for _, name := range names {
		if _, ok := gunicornTLS[name]; ok {
			translateGunicornTLS(b, path, name, vals[name], tls)
			continue
		}
		translateGunicorn(b, path, name, vals[name])
	}
	gunicornCertificate(b, path, tls)
	return nil
}

// translateGunicornTLS lists the TLS settings berth has no key for and
// keeps certfile and keyfile in tls for gunicornCertificate.
func translateGunicornTLS(b *builder, path, name string, g gunicornValue, tls map[string]*item) {
	src := Source{File: path, Line: g.Line, Key: name, raw: pyRepr(g.Value)}
	s, isString := g.Value.(string)
	switch {
	case g.Value == nil:
		b.skip(src, "None", NotNeeded, "unset; Gunicorn served no TLS")
	case b.front:
		b.skip(src, src.raw, NotNeeded, "nginx in front took the clients; its TLS settings are berth's")
	case gunicornTLS[name] != "":
		if name == "ca_certs" || name == "cert_reqs" {
			b.skip(src, src.raw, NoEquivalent, "%s", gunicornTLS[name])
		} else {
			b.skip(src, src.raw, NotNeeded, "%s", gunicornTLS[name])
		}
	case !isString || !filepath.IsAbs(s):
		b.skip(src, src.raw, NeedsDecision, "berth reads certificates from absolute paths: write tls.certificates by hand")
	default:
		tls[name] = &item{value: s, src: src}
	}
}

// gunicornCertificate makes certfile and keyfile a tls.certificates entry,
// and the binds of this file TLS listeners, as Gunicorn served them.
func gunicornCertificate(b *builder, path string, tls map[string]*item) {
	cert, key := tls["certfile"], tls["keyfile"]
	if cert == nil || key == nil {
		for _, it := range []*item{cert, key} {
			if it != nil {
				b.skip(it.src, it.src.raw, NeedsDecision, "certfile and keyfile go together; Gunicorn had only one")
			}
		}
		return
	}
	for i, it := range b.lists["listen"] {
		if l := it.value.(string); it.src.File == path && !strings.HasPrefix(l, "unix:") {
			b.lists["listen"][i].value = config.TLSScheme + l
			b.lists["listen"][i].note = strings.TrimPrefix(it.note+"; TLS, as Gunicorn served it with certfile", "; ")
		}
	}
	b.certs = append(b.certs, certItem{*cert, *key})
	b.count(cert.src)
	b.count(key.src)
}

func translateGunicorn(b *builder, path, name string, g gunicornValue) {
	src := Source{File: path, Line: g.Line, Key: name}
	shown := g.Expr
	if shown == "" {
		if g.Kind == "value" {
			shown = pyRepr(g.Value)
		} else if g.Kind == "other" {
			shown = g.Repr
		}
	}
	src.raw = shown
	note := ""
	if g.Expr != "" && g.Kind == "value" {
		note = "evaluated: " + g.Expr
	}
	if gunicornHooks[name] {
		b.skip(src, "def "+name+"(…)", NoEquivalent, "berth runs no server hooks; move the work into the app, or into a tasks.before_start: command or a programs: entry")
		return
	}
	if why, ok := gunicornNotNeeded[name]; ok {
		b.skip(src, shown, NotNeeded, why)
		return
	}
	if why, ok := gunicornNoEquivalent[name]; ok {
		if g.Value == nil && g.Kind == "value" {
			b.skip(src, shown, NotNeeded, "unset")
			return
		}
		b.skip(src, shown, NoEquivalent, why)
		return
	}
	if g.Kind != "value" {
		b.skip(src, shown, NeedsDecision, "evaluates to a %s, not a value berth import can translate", g.Kind)
		return
	}
	v := g.Value
	switch name {
	case "wsgi_app":
		s, ok := pyString(b, src, shown, v)
		if !ok {
			return
		}
		if strings.ContainsAny(s, "()") {
			b.skip(src, shown, NeedsDecision, "an app factory call; berth imports a callable: expose the app as a module-level name and write app.module")
			return
		}
		if !strings.Contains(s, ":") {
			s += ":application"
		}
		b.set("app.module", s, src, note)
	case "chdir":
		if s, ok := pyString(b, src, shown, v); ok {
			if !filepath.IsAbs(s) {
				b.skip(src, shown, NeedsDecision, "a relative chdir depends on where Gunicorn was started; app.chdir must be absolute")
				return
			}
			b.set("app.chdir", filepath.Clean(s), src, note)
		}
	case "pythonpath":
		if s, ok := pyString(b, src, shown, v); ok {
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					b.add("app.pythonpath", p, src, note)
				}
			}
		}
	case "raw_env":
		list, ok := pyStrings(b, src, shown, v)
		if !ok {
			return
		}
		for _, e := range list {
			k, val, ok := strings.Cut(e, "=")
			if !ok || k == "" {
				b.skip(src, e, NeedsDecision, "expected NAME=VALUE")
				continue
			}
			b.setEnv(k, val, src)
		}
	case "bind":
		list, ok := pyStrings(b, src, shown, v)
		if !ok {
			return
		}
		for _, a := range list {
			translateGunicornBind(b, a, src, note)
		}
	case "workers":
		n, ok := pyInt(b, src, shown, v, 1)
		if !ok {
			return
		}
		if g.Expr != "" {
			// The value is this machine's, not the server's: not shown.
			b.set("workers.count", "auto", src, fmt.Sprintf("computed at start-up (%s); auto sizes from the CPU quota", g.Expr))
			return
		}
		b.set("workers.count", n, src, "")
	case "worker_class":
		s, ok := pyString(b, src, shown, v)
		if !ok {
			return
		}
		switch s {
		case "sync", "gthread", "gunicorn.workers.sync.SyncWorker", "gunicorn.workers.gthread.ThreadWorker":
			b.skip(src, shown, NotNeeded, "berth's workers are synchronous processes with workers.threads threads each")
		default:
			b.skip(src, shown, NeedsDecision, "berth's workers run WSGI synchronously (with threads); an asynchronous worker class has no equivalent: use workers.threads, or keep Gunicorn for this app")
		}
	case "threads":
		if n, ok := pyInt(b, src, shown, v, 1); ok {
			b.set("workers.threads", n, src, note)
		}
	case "timeout", "graceful_timeout":
		secs, ok := pySeconds(b, src, shown, v)
		if !ok {
			return
		}
		if secs == 0 && name == "timeout" {
			b.skip(src, shown, NoEquivalent, "timeout 0 turns Gunicorn's limit off; berth always has a request timeout (workers.timeout)")
			return
		}
		b.set("workers."+name, secs, src, note)
	case "keepalive":
		b.skip(src, shown, NotNeeded, "berth's proxy keeps idle client connections open for 75s, as nginx does")
	case "max_requests", "max_requests_jitter":
		if n, ok := pyInt(b, src, shown, v, 0); ok {
			b.set("workers."+name, int64(n), src, note)
		}
	case "preload_app":
		if on, ok := v.(bool); ok {
			b.set("workers.preload", on, src, note)
		} else {
			b.skip(src, shown, NeedsDecision, "expected True or False")
		}
	case "forwarded_allow_ips":
		translateForwardedAllowIPs(b, src, shown, v)
	case "access_log_format":
		gunicornAccessLog(b, src, shown, v)
	case "accesslog":
		old := b.scalars["proxy.access_log"]
		fromFormat := old != nil && old.src.Key == "access_log_format"
		switch s, _ := v.(string); {
		case fromFormat && v == nil:
			b.skip(old.src, old.src.raw, NotNeeded, "accesslog is None: Gunicorn logged no requests")
			delete(b.scalars, "proxy.access_log")
			b.set("proxy.access_log", "off", src, "Gunicorn logged no requests")
		case fromFormat && s == "-":
			b.skip(src, shown, NotNeeded, "to stdout, berth's only access log; the format is access_log_format's")
		case v == nil:
			b.set("proxy.access_log", "off", src, "Gunicorn logged no requests")
		case s == "-":
			b.set("proxy.access_log", "combined", src, "to stdout; Gunicorn's default format is close to combined")
		default:
			b.skip(src, shown, NotNeeded, "berth writes the access log in the combined format to stdout, where the container runtime collects it")
		}
	case "user":
		switch u := v.(type) {
		case nil:
			b.skip(src, shown, NotNeeded, "unset: Gunicorn kept the user it was started as")
		case string:
			b.set("app.user", u, src, note)
		case float64:
			b.set("app.user", fmt.Sprint(int64(u)), src, note)
		default:
			b.skip(src, shown, NeedsDecision, "expected a user name or id")
		}
	case "group":
		if u := b.scalars["app.user"]; u != nil && fmt.Sprint(u.value) == fmt.Sprint(v) {
			b.skip(src, shown, NotNeeded, "berth runs as app.user with that user's own group")
		} else {
			b.skip(src, shown, NeedsDecision, "berth runs the workers with app.user's own groups, not a separate group; check that app.user's group is %s", shown)
		}
	case "reload":
		if on, _ := v.(bool); !on {
			b.skip(src, shown, NotNeeded, "off")
		} else {
			b.skip(src, shown, NeedsDecision, "berth reloads when the files or directories in app.reload_on change; list what to watch there")
		}
	case "reload_extra_files":
		list, ok := pyStrings(b, src, shown, v)
		if !ok {
			return
		}
		for _, f := range list {
			b.add("app.reload_on", f, src, note)
		}
	}
}

// translateGunicornBind places one bind address, as for uWSGI's sockets.
func translateGunicornBind(b *builder, a string, src Source, note string) {
	switch {
	case strings.HasPrefix(a, "fd://"):
		b.skip(src, a, NoEquivalent, "berth takes inherited sockets from systemd or podman socket activation (LISTEN_FDS), not by number")
		return
	case strings.HasPrefix(a, "tcp://"):
		a = strings.TrimPrefix(a, "tcp://")
	case strings.HasPrefix(a, "unix:"):
	case !strings.Contains(a, ":"):
		a = a + ":8000" // Gunicorn's default port
	}
	b.appSockets = append(b.appSockets, a)
	if b.front {
		b.skip(src, a, NotNeeded, "nginx reached Gunicorn here; berth's proxy talks to its own workers, and listens where nginx did")
		return
	}
	if strings.HasPrefix(a, "0.0.0.0:") {
		a = ":" + strings.TrimPrefix(a, "0.0.0.0:")
	}
	b.add("listen", a, src, note)
}

// translateForwardedAllowIPs maps the proxies Gunicorn believed onto
// proxy.trusted_proxies. Behind an imported nginx they named nginx, which
// berth replaces; nginx's set_real_ip_from then says whom to believe.
func translateForwardedAllowIPs(b *builder, src Source, shown string, v any) {
	var list []string
	switch v := v.(type) {
	case string:
		list = strings.Split(v, ",")
	default:
		var ok bool
		if list, ok = pyStrings(b, src, shown, v); !ok {
			return
		}
	}
	if b.front {
		b.skip(src, shown, NotNeeded, "these were the proxies in front of Gunicorn (nginx), which berth replaces; berth believes X-Forwarded-For from proxy.trusted_proxies (nginx's set_real_ip_from)")
		return
	}
	for _, ip := range list {
		ip = strings.TrimSpace(ip)
		switch ip {
		case "":
			continue
		case "*":
			b.add("proxy.trusted_proxies", "0.0.0.0/0", src, "* trusted every peer")
			b.add("proxy.trusted_proxies", "::/0", src, "* trusted every peer")
			continue
		}
		if _, err := config.Parse("", []byte(fmt.Sprintf("proxy: {trusted_proxies: [%q]}", ip))); err != nil {
			b.skip(src, ip, NeedsDecision, "not an IP address or CIDR berth understands")
			continue
		}
		b.add("proxy.trusted_proxies", ip, src, "")
	}
}

func pyString(b *builder, src Source, shown string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		b.skip(src, shown, NeedsDecision, "expected a string")
	}
	return s, ok
}

// pyStrings reads a string or a list of strings.
func pyStrings(b *builder, src Source, shown string, v any) ([]string, bool) {
	switch v := v.(type) {
	case string:
		return []string{v}, true
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				b.skip(src, shown, NeedsDecision, "expected a list of strings")
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	b.skip(src, shown, NeedsDecision, "expected a string or a list of strings")
	return nil, false
}

func pyInt(b *builder, src Source, shown string, v any, min int) (int, bool) {
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || f < float64(min) || f > math.MaxInt32 {
		b.skip(src, shown, NeedsDecision, "expected a whole number of at least %d", min)
		return 0, false
	}
	return int(f), true
}

// pySeconds reads a number of seconds, whole or not.
func pySeconds(b *builder, src Source, shown string, v any) (time.Duration, bool) {
	f, ok := v.(float64)
	if !ok || f < 0 || f > 1e6 {
		b.skip(src, shown, NeedsDecision, "expected a number of seconds")
		return 0, false
	}
	return time.Duration(f * float64(time.Second)).Round(time.Millisecond), true
}

// pyRepr shows a JSON-decoded Python value as Python would write it.
func pyRepr(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		if v {
			return "True"
		}
		return "False"
	case string:
		return "'" + strings.ReplaceAll(v, "'", `\'`) + "'"
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return fmt.Sprint(int64(v))
		}
		return fmt.Sprint(v)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	j, _ := json.Marshal(v)
	return string(j)
}
