package importer

import (
	"fmt"
	"slices"
	"strings"
)

// nginxRule says what becomes of a directive berth does not translate.
type nginxRule struct {
	reason Reason
	why    string
}

const (
	whyProcess  = "nginx's own process setting; berth's supervisor runs the proxy"
	whyTuning   = "an nginx tuning knob; berth's proxy needs none"
	whyBuffers  = "berth's proxy buffers bodies itself, in memory and spilled to disk when large"
	whyRewrite  = "berth has no conditions or variables of its own (if, set, map); do it in the app"
	whyHeaders  = "berth passes the headers as they came; do it in the app"
	whyRegexLoc = "it sits in a location berth cannot translate (a regular expression or a name): berth's locations match a prefix or an exact path; write a locations: entry by hand"
	whyLevels   = "berth's compression levels are fixed: gzip 5 and brotli 4 for responses, 9 for static files compressed once"
	whySidecars = "berth serves a static file's .gz and .br sidecars itself when the client takes them and they are not older than the file"
	whySuites   = "berth offers Mozilla's intermediate TLS 1.2 suites (ECDHE with AES-GCM or ChaCha20) and TLS 1.3, fixed"
	whySessions = "Go's TLS resumes sessions with tickets whose keys it rotates itself"
	whyStapling = "berth does not staple OCSP responses"
	whyClient   = "berth asks clients for no certificate"
	whyCacheLck = "berth lets one request fill a missing entry while the others wait for it (5 s at most)"
	whyLimitLog = "berth's access log shows each refused request with its status, and its metrics count them by reason"
	whyHTTP3    = "HTTP/3 (QUIC) is planned (tls.http3), not there yet"
	whyHide     = "berth removes a response field written with the value \"\" under proxy.headers or a location's headers: write it there"
	whyCacheMth = "berth caches GET (and answers HEAD from the GET's entry)"
)

// nginxRules cover the directives that need no look at their arguments.
var nginxRules = map[string]nginxRule{
	"user": {NotNeeded, "nginx's worker user; berth's proxy runs as app.user"}, "worker_processes": {NotNeeded, whyProcess},
	"pid": {NotNeeded, whyProcess}, "events": {NotNeeded, whyProcess}, "daemon": {NotNeeded, whyProcess},
	"master_process": {NotNeeded, whyProcess}, "worker_rlimit_nofile": {NotNeeded, whyProcess},
	"load_module": {NotNeeded, whyProcess}, "pcre_jit": {NotNeeded, whyProcess}, "thread_pool": {NotNeeded, whyProcess},
	"worker_cpu_affinity": {NotNeeded, whyProcess}, "timer_resolution": {NotNeeded, whyProcess}, "env": {NotNeeded, whyProcess},
	"worker_shutdown_timeout": {NotNeeded, "berth waits workers.graceful_timeout for in-flight requests"},
	"error_log":               {NotNeeded, "berth writes its errors to stderr, where the container runtime collects them"},
	"sendfile":                {NotNeeded, whyTuning}, "tcp_nopush": {NotNeeded, whyTuning}, "tcp_nodelay": {NotNeeded, whyTuning},
	"types_hash_max_size": {NotNeeded, whyTuning}, "types_hash_bucket_size": {NotNeeded, whyTuning},
	"server_names_hash_bucket_size": {NotNeeded, whyTuning}, "server_names_hash_max_size": {NotNeeded, whyTuning},
	"variables_hash_max_size": {NotNeeded, whyTuning}, "variables_hash_bucket_size": {NotNeeded, whyTuning},
	"open_file_cache": {NotNeeded, whyTuning}, "open_file_cache_valid": {NotNeeded, whyTuning},
	"open_file_cache_min_uses": {NotNeeded, whyTuning}, "open_file_cache_errors": {NotNeeded, whyTuning},
	"output_buffers": {NotNeeded, whyTuning}, "aio": {NotNeeded, whyTuning}, "directio": {NotNeeded, whyTuning},
	"reset_timedout_connection": {NotNeeded, whyTuning}, "resolver": {NotNeeded, "berth resolves no names per request"},
	"resolver_timeout": {NotNeeded, "berth resolves no names per request"},
	"types":            {NotNeeded, "berth's proxy knows the usual MIME types"}, "default_type": {NotNeeded, "berth's proxy knows the usual MIME types"},
	"server_name":               {NotNeeded, "berth answers every Host on its listeners; Django checks ALLOWED_HOSTS"},
	"server_tokens":             {NotNeeded, "berth's responses name no server version"},
	"log_not_found":             {NotNeeded, "berth logs no missing-file errors"},
	"index":                     {NotNeeded, "berth serves no index files; the app answers /"},
	"client_header_buffer_size": {NotNeeded, whyBuffers},
	// Where it reaches the app it is proxy.body_buffer_size (nginx.go);
	// this is for the locations that do not.
	"client_body_buffer_size": {NotNeeded, "it applies only where no request reaches the app; proxy.body_buffer_size takes its value from the locations that do"},
	"client_body_temp_path":   {NotNeeded, whyBuffers}, "client_body_in_file_only": {NotNeeded, whyBuffers},
	"proxy_buffering": {NotNeeded, whyBuffers}, "proxy_buffers": {NotNeeded, whyBuffers}, "proxy_buffer_size": {NotNeeded, whyBuffers},
	"proxy_busy_buffers_size": {NotNeeded, whyBuffers}, "proxy_max_temp_file_size": {NotNeeded, whyBuffers},
	"proxy_temp_file_write_size": {NotNeeded, whyBuffers}, "proxy_temp_path": {NotNeeded, whyBuffers},
	"proxy_request_buffering": {NotNeeded, whyBuffers}, "uwsgi_request_buffering": {NotNeeded, whyBuffers},
	"uwsgi_buffering": {NotNeeded, whyBuffers}, "uwsgi_buffers": {NotNeeded, whyBuffers}, "uwsgi_buffer_size": {NotNeeded, whyBuffers},
	"uwsgi_busy_buffers_size": {NotNeeded, whyBuffers}, "uwsgi_max_temp_file_size": {NotNeeded, whyBuffers},
	"uwsgi_temp_file_write_size": {NotNeeded, whyBuffers}, "uwsgi_temp_path": {NotNeeded, whyBuffers},
	"fastcgi_temp_path": {NotNeeded, whyBuffers}, "scgi_temp_path": {NotNeeded, whyBuffers},
	"proxy_http_version":    {NotNeeded, "berth talks to its workers over the uwsgi protocol"},
	"uwsgi_modifier1":       {NotNeeded, "berth's workers are Python"},
	"uwsgi_connect_timeout": {NotNeeded, "berth's workers are local; a request waits up to proxy.queue.timeout for a free one"},
	"proxy_connect_timeout": {NotNeeded, "berth's workers are local; a request waits up to proxy.queue.timeout for a free one"},
	"uwsgi_send_timeout":    {NotNeeded, "berth hands a fully read body to a local worker"},
	"proxy_send_timeout":    {NotNeeded, "berth hands a fully read body to a local worker"},
	"uwsgi_next_upstream":   {NotNeeded, "berth retries a request once on another worker when that is safe"},
	"proxy_next_upstream":   {NotNeeded, "berth retries a request once on another worker when that is safe"},
	"real_ip_recursive":     {NotNeeded, "berth skips every trusted proxy in X-Forwarded-For"},
	"log_format":            {NotNeeded, "a format definition: the access_log naming it becomes proxy.access_log"},
	"http2":                 {NotNeeded, "berth speaks HTTP/2 on every https:// listener (ALPN)"},
	"http3":                 {NotYetSupported, whyHTTP3}, "quic_retry": {NotYetSupported, whyHTTP3}, "quic_gso": {NotYetSupported, whyHTTP3},
	"quic_host_key": {NotYetSupported, whyHTTP3}, "http3_hq": {NotYetSupported, whyHTTP3},
	"ssl_ciphers": {NotNeeded, whySuites}, "ssl_prefer_server_ciphers": {NotNeeded, whySuites},
	"ssl_ecdh_curve": {NotNeeded, whySuites}, "ssl_conf_command": {NotNeeded, whySuites},
	"ssl_dhparam":       {NotNeeded, "berth offers no DHE suites (Go has none), so it needs no DH parameters"},
	"ssl_session_cache": {NotNeeded, whySessions}, "ssl_session_timeout": {NotNeeded, whySessions},
	"ssl_session_tickets": {NotNeeded, whySessions}, "ssl_session_ticket_key": {NotNeeded, whySessions},
	"ssl_buffer_size": {NotNeeded, whyTuning}, "ssl_certificate_cache": {NotNeeded, whyTuning},
	"ssl_stapling": {NoEquivalent, whyStapling}, "ssl_stapling_verify": {NoEquivalent, whyStapling},
	"ssl_stapling_file": {NoEquivalent, whyStapling}, "ssl_stapling_responder": {NoEquivalent, whyStapling},
	"ssl_trusted_certificate": {NoEquivalent, whyStapling + " and checks no client certificates"},
	"ssl_client_certificate":  {NoEquivalent, whyClient}, "ssl_verify_client": {NoEquivalent, whyClient},
	"ssl_verify_depth": {NoEquivalent, whyClient}, "ssl_crl": {NoEquivalent, whyClient}, "ssl_ocsp": {NoEquivalent, whyClient},
	"ssl_early_data":       {NoEquivalent, "berth accepts no TLS 1.3 early data (0-RTT)"},
	"ssl_password_file":    {NoEquivalent, "berth reads keys that have no passphrase"},
	"ssl_reject_handshake": {NoEquivalent, "berth completes the handshake with its default certificate for unknown names"},
	"ssl":                  {NotNeeded, "the server's listeners became https:// ones"},
	"gzip_comp_level":      {NotNeeded, whyLevels}, "brotli_comp_level": {NotNeeded, whyLevels},
	"gzip_vary":    {NotNeeded, "berth sends Vary: Accept-Encoding with every response it may compress"},
	"gzip_proxied": {NotNeeded, "berth compresses whether or not a proxy asked (Via)"},
	"gzip_disable": {NotNeeded, "berth compresses for every client that accepts it"},
	"gzip_buffers": {NotNeeded, whyTuning}, "gzip_http_version": {NotNeeded, whyTuning}, "brotli_buffers": {NotNeeded, whyTuning},
	"brotli_window": {NotNeeded, whyTuning},
	"gzip_static":   {NotNeeded, whySidecars}, "brotli_static": {NotNeeded, whySidecars},
	"gunzip":           {NoEquivalent, "berth does not decompress responses for clients that take no gzip"},
	"proxy_cache_lock": {NotNeeded, whyCacheLck}, "uwsgi_cache_lock": {NotNeeded, whyCacheLck},
	"proxy_cache_lock_timeout": {NotNeeded, whyCacheLck}, "uwsgi_cache_lock_timeout": {NotNeeded, whyCacheLck},
	"proxy_cache_lock_age": {NotNeeded, whyCacheLck}, "uwsgi_cache_lock_age": {NotNeeded, whyCacheLck},
	"proxy_cache_background_update": {NotNeeded, "with cache.routes[].stale, berth refreshes an entry in the background while the stale one is served"},
	"uwsgi_cache_background_update": {NotNeeded, "with cache.routes[].stale, berth refreshes an entry in the background while the stale one is served"},
	"proxy_cache_min_uses":          {NoEquivalent, "berth stores a response the first time"}, "uwsgi_cache_min_uses": {NoEquivalent, "berth stores a response the first time"},
	"proxy_cache_revalidate":   {NoEquivalent, "berth fetches an expired entry again, without If-Modified-Since"},
	"uwsgi_cache_revalidate":   {NoEquivalent, "berth fetches an expired entry again, without If-Modified-Since"},
	"proxy_cache_convert_head": {NotNeeded, whyCacheMth}, "uwsgi_cache_convert_head": {NotNeeded, whyCacheMth},
	"limit_req_log_level": {NotNeeded, whyLimitLog}, "limit_conn_log_level": {NotNeeded, whyLimitLog},
	"limit_req_dry_run": {NoEquivalent, "berth's limits refuse; they have no dry run"}, "limit_conn_dry_run": {NoEquivalent, "berth's limits refuse; they have no dry run"},
	"limit_rate": {NoEquivalent, "berth does not slow responses down"}, "limit_rate_after": {NoEquivalent, "berth does not slow responses down"},
	"auth_request": {NoEquivalent, "berth asks no other server whether a request may pass; check it in the app"},
	"add_header":   {NoEquivalent, whyRegexLoc}, "error_page": {NoEquivalent, whyRegexLoc},
	"limit_req": {NoEquivalent, whyRegexLoc}, "limit_req_status": {NoEquivalent, whyRegexLoc},
	"limit_conn": {NoEquivalent, whyRegexLoc}, "limit_conn_status": {NoEquivalent, whyRegexLoc},
	"allow": {NoEquivalent, whyRegexLoc}, "deny": {NoEquivalent, whyRegexLoc}, "auth_basic": {NoEquivalent, whyRegexLoc},
	"auth_basic_user_file": {NoEquivalent, whyRegexLoc}, "satisfy": {NoEquivalent, whyRegexLoc},
	"return": {NoEquivalent, whyRegexLoc}, "rewrite": {NoEquivalent, whyRegexLoc}, "expires": {NoEquivalent, whyRegexLoc},
	"proxy_cache": {NoEquivalent, whyRegexLoc}, "uwsgi_cache": {NoEquivalent, whyRegexLoc},
	"proxy_cache_valid": {NoEquivalent, whyRegexLoc}, "uwsgi_cache_valid": {NoEquivalent, whyRegexLoc},
	"proxy_cache_key": {NoEquivalent, whyRegexLoc}, "uwsgi_cache_key": {NoEquivalent, whyRegexLoc},
	"proxy_cache_use_stale": {NoEquivalent, whyRegexLoc}, "uwsgi_cache_use_stale": {NoEquivalent, whyRegexLoc},
	"proxy_cache_bypass": {NoEquivalent, whyRegexLoc}, "uwsgi_cache_bypass": {NoEquivalent, whyRegexLoc},
	"proxy_no_cache": {NoEquivalent, whyRegexLoc}, "uwsgi_no_cache": {NoEquivalent, whyRegexLoc},
	"ssl_certificate": {NoEquivalent, whyRegexLoc}, "ssl_certificate_key": {NoEquivalent, whyRegexLoc},
	"if":  {NoEquivalent, whyRewrite},
	"set": {NoEquivalent, whyRewrite}, "map": {NoEquivalent, whyRewrite}, "geo": {NoEquivalent, whyRewrite},
	"split_clients": {NoEquivalent, whyRewrite}, "merge_slashes": {NoEquivalent, whyRewrite},
	"charset": {NoEquivalent, "berth does not change Content-Type charsets"}, "source_charset": {NoEquivalent, "berth does not recode responses"},
	"internal":          {NoEquivalent, "berth does not serve X-Accel-Redirect"},
	"autoindex":         {NoEquivalent, "berth lists no directories"},
	"proxy_pass_header": {NoEquivalent, whyHeaders}, "proxy_hide_header": {NeedsDecision, whyHide},
	"uwsgi_pass_header": {NoEquivalent, whyHeaders}, "uwsgi_hide_header": {NeedsDecision, whyHide},
	"proxy_ignore_headers": {NoEquivalent, whyHeaders}, "uwsgi_ignore_headers": {NoEquivalent, whyHeaders},
	"proxy_intercept_errors": {NoEquivalent, "berth passes the app's error responses through"},
	"uwsgi_intercept_errors": {NoEquivalent, "berth passes the app's error responses through"},
	"stream":                 {NoEquivalent, "berth proxies HTTP only"}, "mail": {NoEquivalent, "berth proxies HTTP only"},
	"stub_status": {NoEquivalent, "berth's admin endpoint serves /status and /metrics"},
	"try_files":   {NeedsDecision, "berth serves static files only under static: URL prefixes; list the directories to serve"},
	"alias":       {NeedsDecision, "not in a location berth could map"},
}

// siteSetting sets key from a directive that is site-wide in berth: in a
// location it is only taken when it says what the site already says.
func (n *nginxImport) siteSetting(d *ndir, where, key string, v any, note string) {
	if strings.HasPrefix(where, "location") {
		if cur := n.b.scalars[key]; cur != nil && display(cur.value) == display(v) {
			n.b.skip(d.src(where), d.text(), NotNeeded, "%s is already %s", key, display(v))
		} else {
			n.b.skip(d.src(where), d.text(), NeedsDecision, "berth has one %s for the whole site, not one per location", key)
		}
		return
	}
	n.b.set(key, v, d.src(where), note)
}

// directive translates one directive that needs no context beyond where it
// is; static says it sits in a location serving files.
func (n *nginxImport) directive(d *ndir, where string, static bool) {
	src := d.src(where)
	text := d.text()
	b := n.b
	arg := func(i int) string {
		if i < len(d.args) {
			return d.args[i]
		}
		return ""
	}
	switch d.name {
	case "include":
		if d.params && d.hostParam {
			b.skip(src, text, NotNeeded, "nginx's standard parameters; berth's proxy passes the same CGI variables, except that HTTP_HOST is the Host header as the client sent it, with its port (this file set it from $host, without the port)")
		} else if d.params {
			b.skip(src, text, NotNeeded, "nginx's standard parameters; berth's proxy passes the same CGI variables and headers")
		} else {
			b.skip(src, text, NotNeeded, "the included file held nothing")
		}
		return
	case "access_log":
		switch {
		case arg(0) == "off" && strings.HasPrefix(where, "location"):
			b.skip(src, text, NoEquivalent, "berth logs every request or none (proxy.access_log)")
		case arg(0) == "off":
			b.set("proxy.access_log", "off", src, "")
		case arg(1) != "" && arg(1) != "combined":
			n.accessLog(d, src, text)
		default:
			b.skip(src, text, NotNeeded, "berth writes the access log in the combined format to stdout, where the container runtime collects it")
		}
		return
	case "set_real_ip_from":
		if strings.HasPrefix(arg(0), "unix:") {
			b.skip(src, text, NotNeeded, "berth believes no forwarding headers from unix-socket peers")
			return
		}
		b.add("proxy.trusted_proxies", arg(0), src, "")
		return
	case "real_ip_header":
		if strings.EqualFold(arg(0), "X-Forwarded-For") {
			b.skip(src, text, NotNeeded, "berth reads X-Forwarded-For from proxy.trusted_proxies")
		} else {
			b.skip(src, text, NoEquivalent, "berth reads the client address from X-Forwarded-For only")
		}
		return
	case "proxy_set_header":
		if why := standardHeader(arg(0), arg(1)); why != "" {
			b.skip(src, text, NotNeeded, why)
		} else if strings.EqualFold(arg(0), "Upgrade") || strings.EqualFold(arg(0), "Connection") {
			b.skip(src, text, NoEquivalent, "berth proxies no WebSocket upgrades to WSGI workers")
		} else {
			b.skip(src, text, NoEquivalent, whyHeaders)
		}
		return
	case "uwsgi_param", "fastcgi_param", "scgi_param":
		switch {
		case arg(0) == "SCRIPT_NAME":
			b.skip(src, text, NoEquivalent, "berth serves one app at /; mounting it under a path (SCRIPT_NAME) is not supported")
		case cgiParams[arg(0)] && strings.HasPrefix(arg(1), "$"):
			b.skip(src, text, NotNeeded, "berth's proxy sets %s itself", arg(0))
		default:
			b.skip(src, text, NoEquivalent, "berth passes no extra variables to the app; set them in app.env if they are constant")
		}
		return
	case "gzip", "brotli":
		switch arg(0) {
		case "on":
			n.siteSetting(d, where, "proxy.compression.enabled", true, "berth's default: gzip or brotli, as the client prefers")
		case "off":
			n.siteSetting(d, where, "proxy.compression.enabled", false, "berth compresses unless told not to")
		default:
			b.skip(src, text, NeedsDecision, "expected on or off")
		}
		return
	case "gzip_types", "brotli_types":
		types := []string{"text/html"}
		for _, t := range d.args {
			if t == "*" {
				b.skip(src, text, NeedsDecision, "berth compresses the types listed (text/* works), not every type: list them")
				return
			}
			if _, sub, ok := strings.Cut(t, "/"); !ok || sub == "" {
				b.skip(src, text, NeedsDecision, "%q is not a media type", t)
				return
			}
			if !slices.Contains(types, t) {
				types = append(types, t)
			}
		}
		quoted := make([]string, len(types))
		for i, t := range types {
			quoted[i] = fmt.Sprintf("%q", t)
		}
		n.siteSetting(d, where, "proxy.compression.types", flow("["+strings.Join(quoted, ", ")+"]"), "with text/html, which nginx always compresses")
		return
	case "gzip_min_length", "brotli_min_length":
		size, err := nginxSize(arg(0))
		if err != nil {
			b.skip(src, text, NeedsDecision, "%v", err)
			return
		}
		n.siteSetting(d, where, "proxy.compression.min_length", size, "")
		return
	case "ssl_protocols":
		for _, p := range d.args {
			if p != "TLSv1.2" && p != "TLSv1.3" {
				b.skip(src, text, NoEquivalent, "berth speaks TLS 1.2 and 1.3 only; clients of %s are refused", p)
				return
			}
		}
		b.skip(src, text, NotNeeded, "berth speaks TLS 1.2 and 1.3")
		return
	case "ssl_stapling", "ssl_early_data", "ssl_verify_client", "ssl", "ssl_session_tickets", "http2", "gzip_static", "brotli_static",
		"proxy_cache_lock", "uwsgi_cache_lock", "proxy_cache_background_update", "uwsgi_cache_background_update", "limit_req_dry_run", "limit_conn_dry_run":
		if arg(0) == "off" {
			b.skip(src, text, NotNeeded, "off")
			return
		}
		if d.name == "http2" && arg(0) != "on" {
			b.skip(src, text, NeedsDecision, "expected on or off")
			return
		}
	case "proxy_cache_methods", "uwsgi_cache_methods":
		for _, m := range d.args {
			if m != "GET" && m != "HEAD" {
				b.skip(src, text, NoEquivalent, "berth caches GET only (and answers HEAD from it), not %s", m)
				return
			}
		}
		b.skip(src, text, NotNeeded, whyCacheMth)
		return
	case "keepalive_timeout":
		if t, err := nginxTime(arg(0)); err == nil && t == 75e9 && len(d.args) == 1 {
			b.skip(src, text, NotNeeded, "berth's proxy keeps idle connections 75s too")
		} else {
			b.skip(src, text, NoEquivalent, "berth's proxy keeps idle connections 75s, fixed")
		}
		return
	case "client_header_timeout", "client_body_timeout", "send_timeout":
		if t, err := nginxTime(arg(0)); err == nil && t == 60e9 {
			b.skip(src, text, NotNeeded, "berth's proxy uses 60s too")
		} else {
			b.skip(src, text, NoEquivalent, "berth's proxy uses nginx's default, 60s, fixed")
		}
		return
	case "large_client_header_buffers":
		b.skip(src, text, NotNeeded, "berth's proxy takes up to 32 KiB of request line and headers (431 beyond), as nginx's default 4 8k")
		return
	case "autoindex":
		if arg(0) == "off" {
			b.skip(src, text, NotNeeded, "off")
			return
		}
	case "proxy_redirect":
		if arg(0) == "off" || arg(0) == "default" {
			b.skip(src, text, NotNeeded, "berth does not rewrite Location headers; the app sees the client's Host")
		} else {
			b.skip(src, text, NoEquivalent, "berth does not rewrite Location headers")
		}
		return
	}
	if r, ok := nginxRules[d.name]; ok {
		b.skip(src, text, r.reason, r.why)
		return
	}
	b.skip(src, text, NeedsDecision, "berth import does not know this nginx directive; check whether berth needs an equivalent")
}
