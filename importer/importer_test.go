package importer

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/config"
)

func TestParseUwsgiIni(t *testing.T) {
	t.Setenv("BERTH_IMPORT_TEST", "x")
	dir := t.TempDir()
	path := filepath.Join(dir, "site.ini")
	tests := []struct {
		name, ini string
		want      []uwsgiOpt // key, value, unresolved, placeholder only
	}{
		{"placeholder", "[uwsgi]\nbase = /srv\nchdir = %(base)/app\n", []uwsgiOpt{
			{key: "base", value: "/srv", placeholder: true}, {key: "chdir", value: "/srv/app"}}},
		{"magic", "[uwsgi]\nsocket = %d%n.sock\nlogto = %p.log\n", []uwsgiOpt{
			{key: "socket", value: dir + "/site.sock"}, {key: "logto", value: path + ".log"}}},
		{"repeated keys and aliases", "[uwsgi]\nenv = A=1\nenv = B=2\np = 3\nvirtualenv = /v\n", []uwsgiOpt{
			{key: "env", value: "A=1"}, {key: "env", value: "B=2"}, {key: "processes", value: "3"}, {key: "home", value: "/v"}}},
		{"comments, bare flags, other sections", "# c\n[other]\nprocesses = 9\n[uwsgi]\n; c\nmaster\nmax_requests = 5\n", []uwsgiOpt{
			{key: "master", value: "true"}, {key: "max-requests", value: "5"}}},
		{"left for the user", "[uwsgi]\nenv = K=$(BERTH_IMPORT_TEST)\nprocesses = %k\nchdir = %(nope)\n", []uwsgiOpt{
			{key: "env", value: "K=$(BERTH_IMPORT_TEST)", unresolved: "$(BERTH_IMPORT_TEST)"},
			{key: "processes", value: "%k", unresolved: "%k"},
			{key: "chdir", value: "%(nope)", unresolved: "%(nope)"}}},
		{"escaped percent", "[uwsgi]\nlog-format = 100%%\n", []uwsgiOpt{{key: "log-format", value: "100%"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := parseUwsgiIni(path, []byte(tc.ini))
			if err != nil {
				t.Fatal(err)
			}
			var got []uwsgiOpt
			for _, o := range opts {
				got = append(got, uwsgiOpt{key: o.key, value: o.value, unresolved: o.unresolved, placeholder: o.placeholder})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"processes = 1\n", "[uwsgi\n", "[uwsgi]\n= 1\n"} {
		if _, err := parseUwsgiIni(path, []byte(bad)); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v, want one naming %s", bad, err, path)
		}
	}
}

func TestNginxValues(t *testing.T) {
	sizes := []struct {
		in   string
		want config.Size
	}{{"0", 0}, {"1024", 1024}, {"8k", 8 << 10}, {"75M", 75 << 20}, {"1g", 1 << 30}}
	for _, tc := range sizes {
		if got, err := nginxSize(tc.in); err != nil || got != tc.want {
			t.Errorf("nginxSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "k", "-1", "1.5m", "10mb"} {
		if _, err := nginxSize(bad); err == nil {
			t.Errorf("nginxSize(%q) accepted", bad)
		}
	}
	times := []struct {
		in   string
		want time.Duration
	}{{"60", time.Minute}, {"90s", 90 * time.Second}, {"1m30s", 90 * time.Second}, {"500ms", 500 * time.Millisecond}, {"2h", 2 * time.Hour}}
	for _, tc := range times {
		if got, err := nginxTime(tc.in); err != nil || got != tc.want {
			t.Errorf("nginxTime(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "s", "1x", "m5"} {
		if _, err := nginxTime(bad); err == nil {
			t.Errorf("nginxTime(%q) accepted", bad)
		}
	}
	formats := []struct {
		v    any
		want string
	}{{90 * time.Second, "90s"}, {2 * time.Minute, "2m"}, {time.Hour, "1h"}, {1500 * time.Millisecond, "1500ms"},
		{config.Size(75 << 20), "75Mi"}, {config.Size(1000), "1000"}, {config.Size(0), "0"}}
	for _, tc := range formats {
		if got := display(tc.v); got != tc.want {
			t.Errorf("display(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		path, data string
		want       kind
	}{
		{"uwsgi.ini", "", kindUwsgi},
		{"gunicorn.conf.py", "", kindGunicorn},
		{"app.conf", "server { listen 80; }", kindNginx},
		{"sites-enabled/default", "# c\n\nserver {}", kindNginx},
		{"uwsgi-config", "; comment\n[uwsgi]\n", kindUwsgi},
	}
	for _, tc := range tests {
		if got, err := detect(tc.path, []byte(tc.data)); err != nil || got != tc.want {
			t.Errorf("detect(%q) = %v, %v; want %v", tc.path, got, err, tc.want)
		}
	}
	if _, err := detect("uwsgi.yaml", nil); err == nil || !strings.Contains(err.Error(), "ini") {
		t.Errorf("uwsgi.yaml: %v, want an error saying to use ini", err)
	}
}

// importFiles writes files into a temp dir and imports them in the given
// order, from that directory.
func importFiles(t *testing.T, files ...[2]string) *Result {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for _, f := range files {
		p := filepath.Join(dir, f[0])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, f[0])
	}
	t.Chdir(dir)
	res, err := Import(names, Options{NginxPrefix: filepath.Join(dir, "prefix")})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if _, err := config.Parse("berth.yaml", res.YAML); err != nil {
		t.Fatalf("output does not pass berth check: %v\n%s", err, res.YAML)
	}
	return res
}

// skippedKey finds the listing of key, or fails.
func skippedKey(t *testing.T, res *Result, key string) Skipped {
	t.Helper()
	for _, s := range res.Skipped {
		if s.Key == key {
			return s
		}
	}
	t.Fatalf("%s is not listed as untranslated:\n%s", key, res.YAML)
	return Skipped{}
}

func TestNginxListen(t *testing.T) {
	tests := []struct {
		listen string
		want   []string // berth listen
	}{
		{"listen 80;", []string{":80"}},
		{"listen *:8080;", []string{":8080"}},
		{"listen 127.0.0.1:8000 default_server;", []string{"127.0.0.1:8000"}},
		{"listen localhost;", []string{"localhost:80"}},
		{"listen unix:/run/site.sock;", []string{"unix:/run/site.sock"}},
		{"listen 80; listen [::]:80;", []string{":80"}},
		{"listen [::1]:8080;", []string{"[::1]:8080"}},
		{"listen 443 ssl; listen 8000;", []string{":8000"}},
	}
	for _, tc := range tests {
		t.Run(tc.listen, func(t *testing.T) {
			res := importFiles(t, [2]string{"site.conf", "server { " + tc.listen + " location / { proxy_pass http://127.0.0.1:9999; } }"})
			var got []string
			for _, l := range strings.Split(string(res.YAML), "\n") {
				if strings.HasPrefix(l, "  - ") && !strings.HasPrefix(l, "  - url") {
					got = append(got, strings.Trim(strings.Fields(l)[1], `'"`))
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("listen = %q, want %q\n%s", got, tc.want, res.YAML)
			}
		})
	}
}

// TestNginxIncludeFallback: a relative include that is not beside the file
// is read from nginx's prefix, as nginx does for sites-enabled/* files, and
// the comment names the file actually read.
func TestNginxIncludeFallback(t *testing.T) {
	res := importFiles(t,
		[2]string{"prefix/snippets/limits.conf", "client_max_body_size 5m;\n"},
		[2]string{"sites/app.conf", "server {\n  listen 8000;\n  include snippets/limits.conf;\n  location / { proxy_pass http://127.0.0.1:8001; }\n}\n"},
	)
	if !strings.Contains(string(res.YAML), "max_body_size: 5Mi") || !strings.Contains(string(res.YAML), "prefix/snippets/limits.conf:1 client_max_body_size") {
		t.Errorf("include not followed into the prefix:\n%s", res.YAML)
	}
}

// TestSameSettingTwice: a second value for one key is listed, never
// silently overwriting the first; the shorter request timeout wins.
func TestSameSettingTwice(t *testing.T) {
	res := importFiles(t,
		[2]string{"a.ini", "[uwsgi]\nmodule = a.wsgi\nwsgi-file = /srv/b.py\nprocesses = 2\nharakiri = 90\n"},
		[2]string{"b.ini", "[uwsgi]\nprocesses = 4\nharakiri = 30\nprocesses = 2\n"},
	)
	y := string(res.YAML)
	for _, want := range []string{"module: a.wsgi:application", "count: 2  ", "timeout: 30s"} {
		if !strings.Contains(y, want) {
			t.Errorf("output lacks %q:\n%s", want, y)
		}
	}
	if s := skippedKey(t, res, "wsgi-file"); s.Reason != NeedsDecision {
		t.Errorf("second app: %v", s.Reason)
	}
	var reasons []Reason
	for _, s := range res.Skipped {
		if s.Key == "processes" || s.Key == "harakiri" {
			reasons = append(reasons, s.Reason)
		}
	}
	// In the order they were met: processes = 4 conflicts; harakiri 90 is
	// shadowed by the shorter 30; processes = 2 again is not needed.
	if want := []Reason{NeedsDecision, NotNeeded, NotNeeded}; !reflect.DeepEqual(reasons, want) {
		t.Errorf("reasons %v, want %v\n%s", reasons, want, y)
	}
}

func TestUwsgiWsgiFile(t *testing.T) {
	tests := []struct {
		ini, module, pythonpath string
	}{
		{"chdir = /srv/site\nwsgi-file = site/wsgi.py\n", "site.wsgi:application", ""},
		{"chdir = /srv/site\nwsgi-file = /srv/site/app.py\ncallable = app\n", "app:app", ""},
		{"wsgi-file = /opt/deploy/wsgi.py\n", "wsgi:application", "/opt/deploy"},
		{"module = mysite.wsgi\ncallable = app\n", "mysite.wsgi:app", ""},
	}
	for _, tc := range tests {
		res := importFiles(t, [2]string{"u.ini", "[uwsgi]\n" + tc.ini})
		y := string(res.YAML)
		if !strings.Contains(y, "module: "+tc.module+" ") {
			t.Errorf("%q: want module %s:\n%s", tc.ini, tc.module, y)
		}
		if tc.pythonpath != "" && !strings.Contains(y, "- "+tc.pythonpath+" ") {
			t.Errorf("%q: want pythonpath %s:\n%s", tc.ini, tc.pythonpath, y)
		}
	}
}

// TestGunicornEvaluation: the file runs in a subprocess as Gunicorn runs
// it: what it prints does not disturb the result, and a broken file is an
// error naming it.
func TestGunicornEvaluation(t *testing.T) {
	needPython(t)
	res := importFiles(t, [2]string{"gunicorn.conf.py", "import sys\nprint('hello')\nworkers = 3\nif True:\n    threads = 2\nbind = '127.0.0.1:' + str(8000 + 1)\n"})
	y := string(res.YAML)
	for _, want := range []string{"count: 3  ", "# gunicorn.conf.py:3 workers", "threads: 2  ", "# gunicorn.conf.py:5 threads",
		"127.0.0.1:8001  ", "evaluated: '127.0.0.1:' + str(8000 + 1)"} {
		if !strings.Contains(y, want) {
			t.Errorf("output lacks %q:\n%s", want, y)
		}
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "gunicorn.conf.py")
	os.WriteFile(bad, []byte("workers = 1/0\n"), 0o644)
	if _, err := Import([]string{bad}, Options{}); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "ZeroDivisionError") {
		t.Errorf("broken file: %v", err)
	}
	if _, err := Import([]string{bad}, Options{Python: filepath.Join(dir, "nopython")}); err == nil || !strings.Contains(err.Error(), "--python") {
		t.Errorf("missing interpreter: %v", err)
	}
}

func TestCheckUntranslated(t *testing.T) {
	clean := importFiles(t, [2]string{"u.ini", "[uwsgi]\nmaster = true\nmodule = app\nprocesses = 2\n"})
	if u := clean.Untranslated(); len(u) != 0 || len(clean.Skipped) != 1 {
		t.Errorf("only not-needed settings: untranslated %v, skipped %v", u, clean.Skipped)
	}
	dirty := importFiles(t, [2]string{"u.ini", "[uwsgi]\nmodule = app\nstatic-expires = /* 3600\n"})
	if u := dirty.Untranslated(); len(u) != 1 || u[0].Reason != NoEquivalent || !strings.Contains(u[0].Why, "static[].cache") {
		t.Errorf("static-expires: %+v", u)
	}
}

// TestOddValues: malformed values are listed as needing a decision; the
// output still passes berth check (reload-on-rss beyond int64 once produced
// a negative max_rss that did not).
func TestOddValues(t *testing.T) {
	needPython(t)
	res := importFiles(t,
		[2]string{"odd.conf", `server { listen ""; client_max_body_size ""; uwsgi_read_timeout ""; location / { uwsgi_pass ""; } location "" { alias ""; } }`},
		[2]string{"odd.ini", "[uwsgi]\nprocesses =\nstatic-map = =\nenv = =x\nwsgi-file =\nharakiri = -1\nreload-on-rss = 99999999999999\n"},
		[2]string{"odd.py", "timeout = '30'\nbind = 5\nraw_env = {'a': 1}\nworkers = 2.5\n"},
	)
	if res.Translated != 0 {
		t.Errorf("translated %d odd values:\n%s", res.Translated, res.YAML)
	}
	if n := len(res.Untranslated()); n != 15 {
		t.Errorf("%d listed as not translated, want 15:\n%s", n, res.YAML)
	}
}

// TestNginxAliasToOneFile: a location whose alias is one file becomes
// static[].file (nginx served that file at that URL), found by looking at
// the machine or, when the path is not there, by its name; an exact
// location with root is a file at root + URL; a directory stays dir.
func TestNginxAliasToOneFile(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"srv/img", "srv/static"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "srv/img/icon"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, loc, want string }{
		{"alias names a file here", "location /favicon.ico { alias /srv/img/icon; }",
			"  - url: /favicon.ico  # x.conf:1 location /favicon.ico (in server): a file here, so one URL, one file; nginx's prefix location also matched /favicon.ico…, which served nothing but this file\n    file: /srv/img/icon"},
		{"alias not here, a file by its name", "location /robots.txt { alias /srv/gone/robots.txt; }",
			"    file: /srv/gone/robots.txt"},
		{"alias is a directory here", "location /s { alias /srv/static; }",
			"  - url: /s/"},
		{"exact location with root", "location = /favicon.ico { root /srv/img; }",
			"    file: /srv/img/favicon.ico"},
		{"exact location with alias", "location = /robots.txt { alias /srv/img/icon; }",
			"  - url: /robots.txt  # x.conf:1 location = /robots.txt (in server)\n    file: /srv/img/icon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			conf := filepath.Join(dir, "x.conf")
			if err := os.WriteFile(conf, []byte("server { listen 8080; location / { uwsgi_pass 127.0.0.1:3031; } "+tc.loc+" }\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Chdir(dir)
			res, err := Import([]string{"x.conf"}, Options{NginxPrefix: "/nonexistent", FSRoot: root})
			if err != nil {
				t.Fatal(err)
			}
			got := regexp.MustCompile(` +#`).ReplaceAllString(string(res.YAML), "  #")
			if !strings.Contains(got, tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, res.YAML)
			}
			if _, err := config.Parse("berth.yaml", res.YAML); err != nil {
				t.Errorf("output does not parse: %v", err)
			}
		})
	}
}

func TestUnknownUwsgiKey(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"process", "not a uWSGI option: uWSGI kept it as a placeholder (usable as %(process)) and did nothing else with it (with strict = true it would have refused to start); the nearest option is processes"},
		{"no-such-thing-at-all", "not a uWSGI option: uWSGI kept it as a placeholder (usable as %(no-such-thing-at-all))"},
		{"cpu-affinity", "berth import does not translate this uWSGI option"},
	} {
		dir := t.TempDir()
		ini := filepath.Join(dir, "u.ini")
		os.WriteFile(ini, []byte("[uwsgi]\nmodule = app:application\n"+tc.key+" = 2\n"), 0o644)
		res, err := Import([]string{ini}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(res.YAML), tc.want) {
			t.Errorf("%s: output lacks %q:\n%s", tc.key, tc.want, res.YAML)
		}
		if tc.key == "no-such-thing-at-all" && strings.Contains(string(res.YAML), "nearest") {
			t.Errorf("%s: a nearest option named for a key near none:\n%s", tc.key, res.YAML)
		}
	}
}

// parsed imports the files and decodes the output, which must pass berth
// check.
func parsed(t *testing.T, files ...[2]string) (*Result, *config.Config) {
	t.Helper()
	res := importFiles(t, files...)
	c, err := config.Parse("berth.yaml", res.YAML)
	if err != nil {
		t.Fatal(err)
	}
	return res, c
}

// TestAppServersServeTLS: uWSGI's https option and Gunicorn's certfile and
// keyfile, with no nginx in front, become an https:// listener and its
// certificate; behind nginx they are not needed.
func TestAppServersServeTLS(t *testing.T) {
	_, c := parsed(t, [2]string{"u.ini", "[uwsgi]\nmodule = app\nhttps = :8443,/etc/ssl/a.crt,/etc/ssl/a.key,HIGH\nhttp-to-https = :8080\n"})
	if got := strings.Join(c.Listen, " "); got != "https://:8443 :8080" || len(c.TLS.Certificates) != 1 || c.TLS.Certificates[0].Key != "/etc/ssl/a.key" || !c.TLS.RedirectHTTP {
		t.Errorf("uWSGI https: listen %q, certificates %+v, redirect_http %v", got, c.TLS.Certificates, c.TLS.RedirectHTTP)
	}
	needPython(t)
	res, c := parsed(t, [2]string{"g.py", "bind = ['0.0.0.0:8443', 'unix:/run/g.sock']\ncertfile = '/etc/ssl/g.crt'\nkeyfile = '/etc/ssl/g.key'\nciphers = 'HIGH'\n"})
	if got := strings.Join(c.Listen, " "); got != "https://:8443 unix:/run/g.sock" || len(c.TLS.Certificates) != 1 {
		t.Errorf("Gunicorn certfile: listen %q, certificates %+v\n%s", got, c.TLS.Certificates, res.YAML)
	}
	if s := skippedKey(t, res, "ciphers"); s.Reason != NotNeeded {
		t.Errorf("ciphers: %+v", s)
	}
	res, _ = parsed(t, [2]string{"g.py", "bind = 'unix:/run/g.sock'\ncertfile = '/etc/ssl/g.crt'\nkeyfile = '/etc/ssl/g.key'\n"},
		[2]string{"n.conf", "server { listen 80; location / { proxy_pass http://unix:/run/g.sock; } }"})
	if s := skippedKey(t, res, "certfile"); s.Reason != NotNeeded {
		t.Errorf("certfile behind nginx: %+v", s)
	}
}

// TestUwsgiAddHeader: uWSGI's add-header is a proxy.headers field; nginx
// setting the same field again is not needed, another value needs a
// decision.
func TestUwsgiAddHeader(t *testing.T) {
	res, c := parsed(t, [2]string{"u.ini", "[uwsgi]\nmodule = app\nsocket = /run/a.sock\nadd-header = X-Frame-Options: DENY\nadd-header = Bad Name: x\n"},
		[2]string{"n.conf", "server { listen 80; add_header X-Frame-Options DENY; add_header X-Powered-By berth; location / { uwsgi_pass unix:/run/a.sock; } }"})
	if len(c.Proxy.Headers) != 2 || c.Proxy.Headers["X-Frame-Options"] != "DENY" || c.Proxy.Headers["X-Powered-By"] != "berth" {
		t.Errorf("proxy.headers = %v\n%s", c.Proxy.Headers, res.YAML)
	}
	if s := skippedKey(t, res, "add-header"); s.Reason != NeedsDecision {
		t.Errorf("bad header name: %+v", s)
	}
	if s := skippedKey(t, res, "add_header"); s.Reason != NotNeeded {
		t.Errorf("same header from nginx: %+v", s)
	}
}

// TestNginxBodyBufferSize: client_body_buffer_size in force where the app
// is reached becomes proxy.body_buffer_size (nginx's k and m are ×1024);
// one only in a static location is not needed, and 0 (berth keeps at least
// a byte) needs a decision.
func TestNginxBodyBufferSize(t *testing.T) {
	_, c := parsed(t, [2]string{"site.conf", "server {\n  listen 8000;\n  client_body_buffer_size 2m;\n  location / { uwsgi_pass unix:/run/app.sock; }\n}\n"})
	if c.Proxy.BodyBufferSize != 2<<20 {
		t.Errorf("body_buffer_size = %d, want %d", c.Proxy.BodyBufferSize, 2<<20)
	}
	res, c := parsed(t, [2]string{"site.conf", "server {\n  listen 8000;\n  location /static/ { alias /srv/static/; client_body_buffer_size 1m; }\n  location / { uwsgi_pass unix:/run/app.sock; }\n}\n"})
	if c.Proxy.BodyBufferSize != 64<<10 {
		t.Errorf("a static location's client_body_buffer_size was translated: %d", c.Proxy.BodyBufferSize)
	}
	if s := skippedKey(t, res, "client_body_buffer_size"); s.Reason != NotNeeded {
		t.Errorf("static location's value: %+v", s)
	}
	res, c = parsed(t, [2]string{"site.conf", "server {\n  listen 8000;\n  client_body_buffer_size 0;\n  location / { uwsgi_pass unix:/run/app.sock; }\n}\n"})
	if s := skippedKey(t, res, "client_body_buffer_size"); s.Reason != NeedsDecision || c.Proxy.BodyBufferSize != 64<<10 {
		t.Errorf("client_body_buffer_size 0: %+v, body_buffer_size %d", s, c.Proxy.BodyBufferSize)
	}
}
