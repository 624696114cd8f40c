package importer

import (
	"strings"
)

// nginxRule says what becomes of a directive berth does not translate.
type nginxRule struct {
	reason Reason
	why    string
}

const (
	whyProcess = "nginx's own process setting; berth's supervisor runs the proxy"
	whyTuning  = "an nginx tuning knob; berth's proxy needs none"
	whyBuffers = "berth's proxy buffers bodies itself, in memory and spilled to disk when large"
	whyTLS     = "needs TLS (tls: and https:// listeners)"
	whyGzip    = "needs compression (proxy.compression)"
	whyCache   = "needs the response cache (cache:)"
	whyRewrite = "berth has no rewrite or routing rules; do it in the app"
	whyAccess  = "berth has no access rules; check access in the app"
	whyHeaders = "berth passes the client's headers as they came and adds none; do it in the app"
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
	"server_name":             {NotNeeded, "berth answers every Host on its listeners; Django checks ALLOWED_HOSTS"},
	"server_tokens":           {NotNeeded, "berth's responses name no server version"},
	"log_not_found":           {NotNeeded, "berth logs no missing-file errors"},
	"index":                   {NotNeeded, "berth serves no index files; the app answers /"},
	"client_body_buffer_size": {NotNeeded, whyBuffers}, "client_header_buffer_size": {NotNeeded, whyBuffers},
	"client_body_temp_path": {NotNeeded, whyBuffers}, "client_body_in_file_only": {NotNeeded, whyBuffers},
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
	"ssl_certificate":       {NotYetSupported, whyTLS}, "ssl_certificate_key": {NotYetSupported, whyTLS},
	"ssl_protocols": {NotYetSupported, whyTLS}, "ssl_ciphers": {NotYetSupported, whyTLS},
	"ssl_prefer_server_ciphers": {NotYetSupported, whyTLS}, "ssl_session_cache": {NotYetSupported, whyTLS},
	"ssl_session_timeout": {NotYetSupported, whyTLS}, "ssl_session_tickets": {NotYetSupported, whyTLS},
	"ssl_dhparam": {NotYetSupported, whyTLS}, "ssl_stapling": {NotYetSupported, whyTLS},
	"ssl_stapling_verify": {NotYetSupported, whyTLS}, "ssl_trusted_certificate": {NotYetSupported, whyTLS},
	"ssl_ecdh_curve": {NotYetSupported, whyTLS}, "ssl": {NotYetSupported, whyTLS}, "http2": {NotYetSupported, whyTLS},
	"ssl_buffer_size": {NotYetSupported, whyTLS}, "ssl_early_data": {NotYetSupported, whyTLS},
	"gzip_static": {NotYetSupported, "needs compression (.gz sidecars for static files)"},
	"expires":     {NotYetSupported, "needs static caching (a cache: duration per static entry)"},
	"proxy_cache": {NotYetSupported, whyCache}, "proxy_cache_path": {NotYetSupported, whyCache},
	"proxy_cache_valid": {NotYetSupported, whyCache}, "proxy_cache_key": {NotYetSupported, whyCache},
	"uwsgi_cache": {NotYetSupported, whyCache}, "uwsgi_cache_path": {NotYetSupported, whyCache},
	"uwsgi_cache_valid": {NotYetSupported, whyCache}, "uwsgi_cache_key": {NotYetSupported, whyCache},
	"add_header":     {NoEquivalent, "berth adds no response headers; set them in the app (e.g. Django's SecurityMiddleware)"},
	"error_page":     {NoEquivalent, "berth's own error pages are plain text, and the app's pass through"},
	"limit_req":      {NoEquivalent, "berth has no rate limits"},
	"limit_req_zone": {NoEquivalent, "berth has no rate limits"}, "limit_conn": {NoEquivalent, "berth has no connection limits"},
	"limit_conn_zone": {NoEquivalent, "berth has no connection limits"}, "limit_rate": {NoEquivalent, "berth has no rate limits"},
	"allow": {NoEquivalent, whyAccess}, "deny": {NoEquivalent, whyAccess}, "auth_basic": {NoEquivalent, whyAccess},
	"auth_basic_user_file": {NoEquivalent, whyAccess}, "auth_request": {NoEquivalent, whyAccess},
	"satisfy": {NoEquivalent, whyAccess},
	"rewrite": {NoEquivalent, whyRewrite}, "return": {NoEquivalent, whyRewrite}, "if": {NoEquivalent, whyRewrite},
	"set": {NoEquivalent, whyRewrite}, "map": {NoEquivalent, whyRewrite}, "geo": {NoEquivalent, whyRewrite},
	"split_clients": {NoEquivalent, whyRewrite}, "merge_slashes": {NoEquivalent, whyRewrite},
	"charset": {NoEquivalent, "berth does not change Content-Type charsets"}, "source_charset": {NoEquivalent, "berth does not recode responses"},
	"internal":          {NoEquivalent, "berth does not serve X-Accel-Redirect"},
	"autoindex":         {NoEquivalent, "berth lists no directories"},
	"proxy_pass_header": {NoEquivalent, whyHeaders}, "proxy_hide_header": {NoEquivalent, whyHeaders},
	"uwsgi_pass_header": {NoEquivalent, whyHeaders}, "uwsgi_hide_header": {NoEquivalent, whyHeaders},
	"proxy_ignore_headers": {NoEquivalent, whyHeaders}, "uwsgi_ignore_headers": {NoEquivalent, whyHeaders},
	"proxy_intercept_errors": {NoEquivalent, "berth passes the app's error responses through"},
	"uwsgi_intercept_errors": {NoEquivalent, "berth passes the app's error responses through"},
	"stream":                 {NoEquivalent, "berth proxies HTTP only"}, "mail": {NoEquivalent, "berth proxies HTTP only"},
	"stub_status": {NoEquivalent, "berth's admin endpoint serves /status and /metrics"},
	"try_files":   {NeedsDecision, "berth serves static files only under static: URL prefixes; list the directories to serve"},
	"alias":       {NeedsDecision, "not in a location berth could map"},
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
		if arg(0) == "off" {
			b.skip(src, text, NotNeeded, "off")
		} else {
			b.skip(src, text, NotYetSupported, whyGzip)
		}
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
	if strings.HasPrefix(d.name, "ssl_") {
		b.skip(src, text, NotYetSupported, whyTLS)
		return
	}
	if strings.HasPrefix(d.name, "gzip_") || strings.HasPrefix(d.name, "brotli_") {
		b.skip(src, text, NotYetSupported, whyGzip)
		return
	}
	if d.name == "add_header" && strings.EqualFold(arg(0), "Strict-Transport-Security") {
		b.skip(src, text, NotYetSupported, "needs TLS (tls.hsts)")
		return
	}
	if r, ok := nginxRules[d.name]; ok {
		b.skip(src, text, r.reason, r.why)
		return
	}
	b.skip(src, text, NeedsDecision, "berth import does not know this nginx directive; check whether berth needs an equivalent")
}
