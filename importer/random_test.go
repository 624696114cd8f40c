package importer

import (
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNginxRulesRandomSites imports sites made of random mixes of the
// directives the rules translate, in random places: the import never
// crashes and its output always passes berth check (Import checks that, a
// bug if not). It found duplicate locations, an exact location on a
// directory and memoized auth_basic without its user file.
func TestNginxRulesRandomSites(t *testing.T) {
	snips := []string{
		"allow 10.0.0.0/8;", "deny all;", "allow unix:;", "deny 2001:db8::1;", "limit_req zone=a burst=3;", "limit_req zone=b nodelay;",
		"limit_req zone=a delay=9 burst=2;", "limit_req_status 444;", "limit_req_status 429;", `auth_basic "x";`, "auth_basic off;",
		"auth_basic_user_file /h;", "add_header X-A b;", "add_header X-A c always;", "add_header Strict-Transport-Security max-age=5;",
		`add_header Strict-Transport-Security "max-age=5; preload";`, "add_header X-V $host;", "return 301 https://x.example$request_uri;",
		"return 404;", "return 200 ok;", "return https://$host/y;", "return 302 /z$uri;", "rewrite ^/q/(.*)$ /r/$1 permanent;",
		"rewrite ^/s$ /t redirect;", "rewrite ^ /u last;", "error_page 502 /e.html;", "error_page 404 =200 /i;", "expires 1d;", "expires max;",
		"uwsgi_cache c;", "uwsgi_cache_use_stale error;", "uwsgi_cache_valid 1s;", "gzip on;", "gzip off;", "gzip_types text/css;",
		"limit_conn k 5;", "satisfy any;", "ssl_certificate /c;", "ssl_certificate_key /k;", "proxy_pass http://10.0.0.9:80;",
		"uwsgi_pass unix:/run/a.sock;", "alias /srv/x/;", "root /srv;", "internal;", "proxy_pass http://up;", "proxy_read_timeout 9s;",
	}
	paths := []string{"/", "/a/", "/a/b/", "= /a/", "= /e.html", "/e", "~ x", "/q/", "= /s"}
	r := rand.New(rand.NewSource(1))
	pick := func(n int) string {
		var b []string
		for range n {
			b = append(b, snips[r.Intn(len(snips))])
		}
		return strings.Join(b, " ")
	}
	dir := t.TempDir()
	ini := filepath.Join(dir, "u.ini")
	if err := os.WriteFile(ini, []byte("[uwsgi]\nmodule = app\nsocket = /run/a.sock\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 400 {
		conf := "limit_req_zone $binary_remote_addr zone=a:1m rate=1r/s; limit_req_zone $http_x zone=b:1m rate=2r/m;\n" +
			"limit_conn_zone $binary_remote_addr zone=k:1m; uwsgi_cache_path /c keys_zone=c:1m;\n" +
			"upstream up { server 10.0.0.1:80; server 10.0.0.2:80 backup; least_conn; }\n"
		if r.Intn(2) == 0 {
			conf += "server { listen 80; server_name www.x.example x.example; return 301 https://x.example$request_uri; }\n"
		}
		conf += "server { listen " + []string{"80", "443 ssl", "8443 ssl http2"}[r.Intn(3)] + "; server_name x.example; " + pick(r.Intn(5))
		for range 1 + r.Intn(5) {
			conf += " location " + paths[r.Intn(len(paths))] + " { " + pick(1+r.Intn(4)) + " }"
		}
		conf += " }\n"
		site := filepath.Join(dir, "n.conf")
		if err := os.WriteFile(site, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{site}
		if i%2 == 0 {
			args = []string{ini, site}
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("panic %v on\n%s", p, conf)
				}
			}()
			if _, err := Import(args, Options{NginxPrefix: "/nonexistent"}); err != nil {
				t.Fatalf("%v\non\n%s", err, conf)
			}
		}()
	}
}
