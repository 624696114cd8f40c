package importer

import (
	_ "embed"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// uwsgiNotNeeded are uWSGI options that berth makes unnecessary, with what
// berth does instead.
var uwsgiNotNeeded = map[string]string{
	"master":                  "berth's supervisor is always the master process",
	"vacuum":                  "berth removes its own sockets",
	"die-on-term":             "berth stops gracefully on SIGTERM",
	"need-app":                "berth exits with code 3 when the app cannot be imported",
	"strict":                  "berth's config is always strict: unknown keys are errors",
	"enable-threads":          "berth's workers always allow Python threads",
	"single-interpreter":      "each berth worker runs one interpreter",
	"thunder-lock":            "berth's proxy hands each request to an idle worker; workers do not accept()",
	"auto-procname":           "berth names its processes",
	"procname":                "berth names its processes",
	"procname-prefix":         "berth names its processes",
	"procname-master":         "berth names its processes",
	"memory-report":           "berth's /status shows each worker's RSS",
	"plugin":                  "berth's workers run Python",
	"chmod-socket":            "berth's worker sockets are private to berth",
	"chown-socket":            "berth's worker sockets are private to berth",
	"pidfile":                 "berth runs in the foreground as the container's PID 1",
	"pidfile2":                "berth runs in the foreground as the container's PID 1",
	"safe-pidfile":            "berth runs in the foreground as the container's PID 1",
	"daemonize":               "berth runs in the foreground as the container's PID 1, logging to stdout",
	"stats":                   "berth's admin endpoint serves /status and /metrics",
	"stats-http":              "berth's admin endpoint serves /status and /metrics",
	"harakiri-verbose":        "berth logs the Python stack of a worker that timed out",
	"py-tracebacker":          "berth logs the Python stack of a worker that timed out",
	"listen":                  "berth's proxy accepts the connections; requests wait in proxy.queue",
	"socket-timeout":          "berth's worker sockets are local to berth",
	"post-buffering":          "berth's proxy reads the whole request body before it reaches a worker",
	"post-buffering-bufsize":  "berth's proxy reads the whole request body before it reaches a worker",
	"offload-threads":         "berth's proxy sends static files itself",
	"wsgi-env-behaviour":      "berth builds each request's environ anew",
	"ignore-sigpipe":          "berth's proxy handles client disconnects",
	"ignore-write-errors":     "berth's proxy handles client disconnects",
	"disable-write-exception": "berth's proxy handles client disconnects",
	"set-placeholder":         "a placeholder: its value is used where %(name) names it",
	"log-date":                "berth logs to stdout with its own time stamps",
	"log-master":              "berth logs to stdout",
	"log-reopen":              "berth logs to stdout",
	"log-4xx":                 "berth's access log has every request",
	"log-5xx":                 "berth's access log has every request",
	"log-slow":                "berth's access log has every request, with its duration",
	"log-x-forwarded-for":     "berth logs the client address from trusted X-Forwarded-For (proxy.trusted_proxies)",
	"max-fd":                  "berth sets the file-descriptor limit itself",
	"logto":                   "berth writes its logs to stdout and stderr, where the container runtime collects them",
	"logto2":                  "berth writes its logs to stdout and stderr, where the container runtime collects them",
	"logger":                  "berth writes its logs to stdout and stderr, where the container runtime collects them",
	"req-logger":              "berth writes its access log to stdout, where the container runtime collects it",
	"no-orphans":              "berth is PID 1 and reaps every orphan",
}

// uwsgiNoEquivalent are uWSGI options berth has nothing like.
var uwsgiNoEquivalent = map[string]string{
	"max-worker-lifetime":       "berth recycles workers by requests (workers.max_requests) and memory (workers.max_rss), not by age; use max_requests",
	"max-worker-lifetime-delta": "berth recycles workers by requests and memory, not by age",
	"min-worker-lifetime":       "berth has no minimum worker age",
	"reload-on-as":              "berth recycles by resident memory (workers.max_rss), not address space",
	"evil-reload-on-as":         "berth recycles by resident memory (workers.max_rss), not address space",
	"limit-as":                  "berth limits memory with cgroups: resources.worker.memory.limit",
	"mount":                     "berth serves one app at /; mounting apps under a path (SCRIPT_NAME) is not supported",
	"manage-script-name":        "berth serves one app at /; mounting apps under a path (SCRIPT_NAME) is not supported",
	"spooler":                   "uWSGI's spooler is a task queue; berth has none (run a queue worker such as Celery)",
	"cache2":                    "berth has no shared cache for the app",
	"py-autoreload":             "berth reloads when app.reload_on files change, not on every imported module; list what to watch there",
	"route":                     "berth has no routing rules",
	"route-uri":                 "berth has no routing rules",
	"response-route":            "berth has no routing rules",
	"check-static":              "uWSGI served files from this directory before the app, at any URL; berth serves static files only under static: URL prefixes",
	"static-index":              "berth serves no directory index files",
	"static-skip-ext":           "berth serves every file under a static: directory",
	"static-safe":               "berth serves only files under a static: directory",
	"optimize":                  "berth starts Python without -O",
	"mule":                      "a mule runs Python inside uWSGI, with its APIs; a script that runs on its own can be a programs: entry",
	"attach-control-daemon":     "uWSGI stopped with this daemon; a programs: entry with required: true does that, write it by hand",
	"log-format":                "uWSGI's log variables (%(addr), %(msecs), …) are not nginx's; write proxy.access_log with $variables by hand",
	"logformat":                 "uWSGI's log variables (%(addr), %(msecs), …) are not nginx's; write proxy.access_log with $variables by hand",
}

// uwsgiStatic are uWSGI's static-file options berth covers differently.
var uwsgiStatic = map[string]Skipped{
	"static-expires":            {Reason: NoEquivalent, Why: "berth's static cache is per static: entry (static[].cache), not by file-name pattern; set cache: on the entry"},
	"static-expires-uri":        {Reason: NoEquivalent, Why: "berth's static cache is per static: entry (static[].cache), not by URL pattern; set cache: on the entry"},
	"static-expires-type":       {Reason: NoEquivalent, Why: "berth's static cache is per static: entry (static[].cache), not by type; set cache: on the entry"},
	"static-expires-type-mtime": {Reason: NoEquivalent, Why: "berth's static cache is per static: entry (static[].cache), not by type; set cache: on the entry"},
	"static-gzip":               {Reason: NotNeeded, Why: "berth serves a static file's .gz and .br sidecars itself when the client takes them and they are not older than the file"},
	"static-gzip-all":           {Reason: NotNeeded, Why: "berth serves a static file's .gz and .br sidecars itself when the client takes them and they are not older than the file"},
	"static-gzip-dir":           {Reason: NotNeeded, Why: "berth serves a static file's .gz and .br sidecars itself when the client takes them and they are not older than the file"},
	"static-gzip-ext":           {Reason: NotNeeded, Why: "berth serves a static file's .gz and .br sidecars itself when the client takes them and they are not older than the file"},
	"https-socket":              {Reason: NoEquivalent, Why: "this socket speaks the uwsgi protocol over TLS to a front server; berth's TLS listeners speak HTTP (https:// in listen)"},
}

// uwsgiHookRE matches uWSGI's hooks and exec-* options; those that run
// before the app loads become tasks.before_start (companions.go).
var uwsgiHookRE = regexp.MustCompile(`^(hook|exec|call)-(.*)$`)

// uwsgiApp gathers what names the app, resolved once the whole file is read.
type uwsgiApp struct {
	module, callable, wsgiFile *uwsgiOpt
	chdir                      string
}

// importUwsgi translates the [uwsgi] section of one ini file.
func importUwsgi(b *builder, path string, data []byte) error {
	opts, err := parseUwsgiIni(path, data)
	if err != nil {
		return err
	}
	b.appServer = true
	var app uwsgiApp
	for i := range opts {
		o := &opts[i]
		src := Source{File: path, Line: o.line, Key: o.name, raw: o.raw}
		if o.unresolved != "" && !(o.key == "processes" && o.raw == "%k") {
			b.skip(src, o.raw, NeedsDecision, "%s is only known where and when uWSGI starts (its environment, a file, the host); berth.yaml takes plain values: write the value", o.unresolved)
			continue
		}
		translateUwsgi(b, o, src, &app)
	}
	app.resolve(b, path)
	return nil
}

func translateUwsgi(b *builder, o *uwsgiOpt, src Source, app *uwsgiApp) {
	k, v := o.key, o.value
	if why, ok := uwsgiNotNeeded[k]; ok {
		b.skip(src, o.raw, NotNeeded, why)
		return
	}
	if sk, ok := uwsgiStatic[k]; ok {
		b.skip(src, o.raw, sk.Reason, "%s", sk.Why)
		return
	}
	if why, ok := uwsgiNoEquivalent[k]; ok {
		b.skip(src, o.raw, NoEquivalent, why)
		return
	}
	switch k {
	case "module":
		if app.module != nil || app.wsgiFile != nil {
			b.skip(src, v, NeedsDecision, "the app is already named on line %d; berth serves one app: keep one", firstOf(app.module, app.wsgiFile).line)
			return
		}
		app.module = o
	case "wsgi-file":
		if app.module != nil || app.wsgiFile != nil {
			b.skip(src, v, NeedsDecision, "the app is already named on line %d; berth serves one app: keep one", firstOf(app.module, app.wsgiFile).line)
			return
		}
		app.wsgiFile = o
	case "callable":
		app.callable = o
	case "chdir":
		if !filepath.IsAbs(v) {
			b.skip(src, v, NeedsDecision, "a relative chdir depends on where uWSGI was started; app.chdir must be absolute: write the full path")
			return
		}
		app.chdir = filepath.Clean(v)
		b.set("app.chdir", filepath.Clean(v), src, "")
	case "home":
		if !filepath.IsAbs(v) {
			b.skip(src, v, NeedsDecision, "a relative virtualenv depends on where uWSGI was started; write the full path of its bin/python as app.python")
			return
		}
		b.set("app.python", filepath.Join(v, "bin", "python"), src, "the virtualenv's interpreter")
	case "pythonpath":
		b.add("app.pythonpath", v, src, "")
	case "env":
		name, value, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			b.skip(src, v, NeedsDecision, "env without NAME=VALUE passes uWSGI's own variable on; berth gives the workers its own environment plus app.env: write NAME: value")
			return
		}
		b.setEnv(name, value, src)
	case "processes":
		if o.raw == "%k" {
			b.set("workers.count", "auto", src, "%k was the CPU count; auto sizes from the CPU quota")
			return
		}
		if n, ok := uwsgiInt(b, src, v, 1); ok {
			b.set("workers.count", n, src, "")
		}
	case "threads":
		if n, ok := uwsgiInt(b, src, v, 1); ok {
			b.set("workers.threads", n, src, "")
		}
	case "socket", "http", "http-socket", "uwsgi-socket", "fastcgi-socket":
		translateUwsgiSocket(b, k, v, src)
	case "https":
		translateUwsgiHTTPS(b, v, o.raw, src)
	case "http-to-https":
		if b.front {
			b.skip(src, v, NotNeeded, "nginx in front took plain HTTP; the nginx config says what berth redirects")
			return
		}
		b.add("listen", v, src, "plain HTTP, redirected to https")
		b.set("tls.redirect_http", true, src, "berth answers 308 to https://HOST:PORT/same/uri")
	case "harakiri":
		n, ok := uwsgiInt(b, src, v, 0)
		if !ok {
			return
		}
		if n == 0 {
			b.skip(src, v, NoEquivalent, "harakiri 0 turns the limit off; berth always has a request timeout (workers.timeout, 30s by default)")
			return
		}
		b.set("workers.timeout", time.Duration(n)*time.Second, src, "berth answers 504, logs the worker's Python stack and replaces it")
	case "max-requests":
		if n, ok := uwsgiInt(b, src, v, 0); ok {
			b.set("workers.max_requests", int64(n), src, "")
		}
	case "max-requests-delta":
		if n, ok := uwsgiInt(b, src, v, 0); ok {
			b.set("workers.max_requests_jitter", int64(n), src, "uWSGI added delta × worker id; berth adds a random 0..jitter")
		}
	case "reload-on-rss", "evil-reload-on-rss":
		if n, ok := uwsgiInt(b, src, v, 0); ok {
			if n > 1<<30 {
				b.skip(src, v, NeedsDecision, "%d MB is beyond any memory; check the value", n)
				return
			}
			b.set("workers.max_rss", config.Size(n)<<20, src, "uWSGI's megabytes are MiB")
		}
	case "buffer-size":
		if n, ok := uwsgiInt(b, src, v, 0); ok {
			if n <= 32<<10 {
				b.skip(src, v, NotNeeded, "berth's proxy takes up to 32 KiB of request line and headers")
			} else {
				b.skip(src, v, NoEquivalent, "berth's proxy takes at most 32 KiB of request line and headers (431 beyond); uWSGI allowed %d bytes", n)
			}
		}
	case "limit-post":
		if n, ok := uwsgiInt(b, src, v, 0); ok {
			b.set("proxy.max_body_size", config.Size(n), src, "413 above it")
		}
	case "static-map", "static-map2":
		mount, dir, ok := strings.Cut(v, "=")
		if !ok || !strings.HasPrefix(mount, "/") {
			b.skip(src, v, NeedsDecision, "expected /url=/directory")
			return
		}
		if k == "static-map2" {
			dir = filepath.Join(dir, mount) // static-map2 appends the whole URL, as nginx root
		}
		if !filepath.IsAbs(dir) {
			b.skip(src, v, NeedsDecision, "a relative directory depends on where uWSGI was started; write the full path")
			return
		}
		url := mount
		if !strings.HasSuffix(url, "/") {
			url += "/"
		}
		b.addStatic(item{value: url, src: src}, item{value: filepath.Clean(dir), src: src})
	case "add-header":
		name, value, ok := strings.Cut(v, ":")
		value = strings.TrimSpace(value)
		if !ok {
			b.skip(src, v, NeedsDecision, "expected Name: value")
			return
		}
		if err := config.CheckHeader(name, value); err != nil {
			b.skip(src, v, NeedsDecision, "%v", err)
			return
		}
		b.addHeader(name, value, src, "on every response, as uWSGI added it to the app's")
	case "uid":
		b.set("app.user", v, src, "the workers and the proxy run as this user")
	case "gid":
		if u := b.scalars["app.user"]; u != nil && u.value == v {
			b.skip(src, v, NotNeeded, "berth runs as app.user with that user's own group, which is %s", v)
		} else {
			b.skip(src, v, NeedsDecision, "berth runs the workers with app.user's own groups, not a separate gid; check that app.user's group is %s", v)
		}
	case "lazy-apps":
		if on, ok := uwsgiBool(b, src, o.raw, v); ok {
			b.set("workers.preload", !on, src, "")
		}
	case "touch-reload", "fs-reload", "touch-chain-reload", "touch-workers-reload":
		b.add("app.reload_on", v, src, "")
	case "disable-logging":
		if on, ok := uwsgiBool(b, src, o.raw, v); ok {
			if on {
				b.set("proxy.access_log", "off", src, "")
			} else {
				b.skip(src, v, NotNeeded, "berth logs every request by default")
			}
		}
	case "attach-daemon", "attach-daemon2", "smart-attach-daemon", "smart-attach-daemon2":
		uwsgiDaemon(b, k, v, o.raw, src)
	case "cron", "cron2", "unique-cron":
		uwsgiCron(b, k, v, o.raw, src)
	case "ini", "include", "yaml", "json", "xml", "inherit":
		b.skip(src, v, NeedsDecision, "berth import does not follow uWSGI's includes: pass %s to berth import too", v)
	default:
		if m := uwsgiHookRE.FindStringSubmatch(k); m != nil {
			uwsgiHook(b, m[1], m[2], v, o.raw, src)
			return
		}
		if o.placeholder {
			b.skip(src, o.raw, NotNeeded, "a placeholder: its value is used where %%(%s) names it", o.name)
			return
		}
		if uwsgiOptions[k] {
			b.skip(src, o.raw, NeedsDecision, "berth import does not translate this uWSGI option; check whether berth needs an equivalent")
			return
		}
		why := fmt.Sprintf("not a uWSGI option: uWSGI kept it as a placeholder (usable as %%(%s)) and did nothing else with it (with strict = true it would have refused to start)", k)
		if near := nearestUwsgiOption(k); near != "" {
			why += fmt.Sprintf("; the nearest option is %s: if that was meant, the deployment ran without it, so decide whether berth should do what %s does", near, near)
		}
		b.skip(src, o.raw, NeedsDecision, "%s", why)
	}
}

//go:embed uwsgi_options.txt
var uwsgiOptionsText string

// uwsgiOptions are the option names uWSGI 2.0 with the python3 plugin knows
// (uwsgi_options.txt, from its --help); an ini key outside them is a
// placeholder to uWSGI, whatever it was meant to be.
var uwsgiOptions = func() map[string]bool {
	m := map[string]bool{}
	for _, line := range strings.Split(uwsgiOptionsText, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			m[line] = true
		}
	}
	return m
}()

// nearestUwsgiOption is the option within two edits of k ("process" →
// "processes"), "" when none or several are as near.
func nearestUwsgiOption(k string) string {
	best, bestD, tie := "", 3, false
	for opt := range uwsgiOptions {
		// The bound is one past the best: a distance equal to it is a tie.
		switch d := editDistance(k, opt, bestD+1); {
		case d < bestD:
			best, bestD, tie = opt, d, false
		case d == bestD && best != "":
			tie = true
		}
	}
	if tie {
		return ""
	}
	return best
}

// editDistance is Levenshtein's distance between a and b, or max when it
// is at least max (the rows stop early).
func editDistance(a, b string, max int) int {
	if d := len(a) - len(b); d >= max || -d >= max {
		return max
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		low := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			low = min(low, cur[j])
		}
		if low >= max {
			return max
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], max)
}

// translateUwsgiSocket places one of uWSGI's sockets: behind an imported
// nginx it was the back end and berth's proxy replaces the hop; alone, an
// HTTP socket becomes berth's listener.
func translateUwsgiSocket(b *builder, k, v string, src Source) {
	addr := v
	if i := strings.IndexByte(addr, ','); i >= 0 {
		addr = addr[:i] // ",proto" and similar suffixes
	}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		addr = "unix:" + addr
	} else if !strings.Contains(addr, ":") {
		b.skip(src, v, NeedsDecision, "not an address berth understands (host:port, :port or /path)")
		return
	}
	b.appSockets = append(b.appSockets, addr)
	if b.front {
		b.skip(src, v, NotNeeded, "nginx reached uWSGI here; berth's proxy talks to its own workers, and listens where nginx did")
		return
	}
	if k == "socket" || k == "uwsgi-socket" || k == "fastcgi-socket" {
		proto := "uwsgi"
		if k == "fastcgi-socket" {
			proto = "FastCGI"
		}
		b.skip(src, v, NeedsDecision, "this socket speaks the %s protocol to a front server, and berth's listen speaks HTTP: import the front server's config too (nginx), or set listen", proto)
		return
	}
	if strings.HasPrefix(addr, "unix:@") {
		b.skip(src, v, NoEquivalent, "berth listens on TCP or path-named unix sockets, not abstract ones")
		return
	}
	if strings.HasPrefix(addr, "0.0.0.0:") {
		addr = ":" + strings.TrimPrefix(addr, "0.0.0.0:")
	}
	note := ""
	if k == "http" {
		note = "uWSGI's HTTP router; berth's proxy takes its place"
	}
	b.add("listen", addr, src, note)
}

// translateUwsgiHTTPS translates https = ADDR,CERT,KEY[,CIPHERS]: uWSGI's
// HTTP router over TLS, berth's https:// listener and certificate.
func translateUwsgiHTTPS(b *builder, v, raw string, src Source) {
	parts := strings.Split(v, ",")
	if b.front {
		b.skip(src, raw, NotNeeded, "nginx in front took the clients; its ssl_certificate is berth's")
		return
	}
	if len(parts) < 3 || !strings.Contains(parts[0], ":") || !filepath.IsAbs(parts[1]) || !filepath.IsAbs(parts[2]) {
		b.skip(src, raw, NeedsDecision, "expected ADDRESS,CERT,KEY with absolute paths; write listen: [\"https://…\"] and tls.certificates by hand")
		return
	}
	note := ""
	if len(parts) > 3 {
		note = "its cipher list is not kept: berth offers Mozilla's intermediate suites"
	}
	b.add("listen", config.TLSScheme+parts[0], src, note)
	b.certs = append(b.certs, certItem{item{value: parts[1], src: src}, item{value: parts[2], src: src}})
}

// resolve turns module/callable/wsgi-file into app.module.
func (a *uwsgiApp) resolve(b *builder, path string) {
	callable := "application"
	if a.callable != nil {
		callable = a.callable.value
	}
	switch {
	case a.module != nil:
		mod := a.module.value
		src := Source{File: path, Line: a.module.line, Key: a.module.name}
		note := ""
		if !strings.Contains(mod, ":") {
			mod += ":" + callable
			if a.callable != nil {
				note = fmt.Sprintf("with callable from line %d", a.callable.line)
			}
		} else if a.callable != nil {
			b.skip(Source{File: path, Line: a.callable.line, Key: a.callable.name}, callable, NotNeeded, "the module on line %d names its callable", a.module.line)
		}
		mod = strings.TrimSuffix(mod, ".py")
		b.set("app.module", strings.ReplaceAll(mod, "/", "."), src, note)
	case a.wsgiFile != nil:
		o := a.wsgiFile
		src := Source{File: path, Line: o.line, Key: o.name, raw: o.raw}
		file := o.value
		if !filepath.IsAbs(file) {
			if a.chdir == "" {
				b.skip(src, file, NeedsDecision, "a relative wsgi-file depends on where uWSGI was started; write app.module (package.module:callable) and app.chdir")
				return
			}
			file = filepath.Join(a.chdir, file)
		}
		file = filepath.Clean(file)
		note := "the wsgi-file as a module"
		if a.callable != nil {
			note += fmt.Sprintf(", callable from line %d", a.callable.line)
		}
		mod := ""
		if rel, err := filepath.Rel(a.chdir, file); a.chdir != "" && err == nil && !strings.HasPrefix(rel, "..") {
			mod = strings.ReplaceAll(strings.TrimSuffix(rel, ".py"), "/", ".")
		}
		if mod == "" || !identPath(mod) {
			mod = strings.TrimSuffix(filepath.Base(file), ".py")
			b.add("app.pythonpath", filepath.Dir(file), src, "the wsgi-file's directory, so it imports as a module")
		}
		if !identPath(mod) {
			b.skip(src, file, NeedsDecision, "%s cannot be imported as a Python module; rename it or write app.module", filepath.Base(file))
			return
		}
		b.set("app.module", mod+":"+callable, src, note)
	case a.callable != nil:
		b.skip(Source{File: path, Line: a.callable.line, Key: a.callable.name}, callable, NeedsDecision, "no module or wsgi-file names the app; write app.module as package.module:%s", callable)
	}
}

var identRE = regexp.MustCompile(`^[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)*$`)

func identPath(s string) bool { return identRE.MatchString(s) }

func firstOf(a, b *uwsgiOpt) *uwsgiOpt {
	if a != nil {
		return a
	}
	return b
}

// uwsgiInt reads a whole number of at least min.
func uwsgiInt(b *builder, src Source, v string, min int) (int, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < min {
		b.skip(src, v, NeedsDecision, "expected a whole number of at least %d", min)
		return 0, false
	}
	return n, true
}

// uwsgiBool reads a flag the way uWSGI does: a bare key or 1/true/yes/on
// is on, 0/false/no/off is off.
func uwsgiBool(b *builder, src Source, raw, v string) (bool, bool) {
	switch strings.ToLower(v) {
	case "", "1", "true", "yes", "on", "y", "t":
		return true, true
	case "0", "false", "no", "off", "n", "f":
		return false, true
	}
	b.skip(src, raw, NeedsDecision, "expected true or false")
	return false, false
}
