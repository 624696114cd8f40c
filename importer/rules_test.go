package importer

import (
	"fmt"
	"strings"
	"testing"
)

// TestNginxHeaderInheritance: a location with add_header of its own drops
// the server's in nginx; berth's location removes them ("") and sets its
// own, and one without keeps proxy.headers alone.
func TestNginxHeaderInheritance(t *testing.T) {
	_, c := parsed(t, [2]string{"u.ini", "[uwsgi]\nmodule = app\nsocket = /run/a.sock\n"}, [2]string{"n.conf", `
server {
    listen 80;
    add_header X-Frame-Options DENY always;
    add_header X-Content-Type-Options nosniff;
    location /embed/ { add_header X-Content-Type-Options nosniff; uwsgi_pass unix:/run/a.sock; }
    location /same/ { add_header X-Frame-Options DENY; add_header X-Content-Type-Options nosniff; uwsgi_pass unix:/run/a.sock; }
    location / { uwsgi_pass unix:/run/a.sock; }
}`})
	if len(c.Proxy.Headers) != 2 || c.Proxy.Headers["X-Frame-Options"] != "DENY" {
		t.Errorf("proxy.headers = %v", c.Proxy.Headers)
	}
	if len(c.Locations) != 1 || c.Locations[0].Path != "/embed/" || c.Locations[0].Headers["X-Frame-Options"] != "" || len(c.Locations[0].Headers) != 1 {
		t.Fatalf("locations = %+v, want /embed/ removing X-Frame-Options only", c.Locations)
	}
}

// TestNginxRedirectServers: a port-80 server sending every host to https
// is tls.redirect_http; a canonical-host server is a hosts: entry; a
// redirect to another scheme or an unnamed host needs a decision.
func TestNginxRedirectServers(t *testing.T) {
	app := [2]string{"u.ini", "[uwsgi]\nmodule = app\nhttp-socket = 127.0.0.1:8000\n"}
	site := "server { listen 443 ssl; server_name example.com; ssl_certificate /c; ssl_certificate_key /k; location / { proxy_pass http://127.0.0.1:8000; } }\n"
	for _, tc := range []struct {
		name, server string
		redirect     bool
		hosts        []string
	}{
		{"same host", "server { listen 80; server_name example.com www.example.com; return 301 https://$host$request_uri; }", true, nil},
		{"server_name", "server { listen 80; server_name example.com; return 308 https://$server_name$uri$is_args$args; }", true, nil},
		{"canonical", "server { listen 80; server_name example.com www.example.com; return 301 https://example.com$request_uri; }", true, []string{"www.example.com"}},
		{"wildcard", "server { listen 443 ssl; server_name .example.org; ssl_certificate /c; ssl_certificate_key /k; return 302 https://example.com/org; }", false, []string{"example.org", "*.example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, c := parsed(t, app, [2]string{"n.conf", tc.server + "\n" + site})
			var hosts []string
			for _, h := range c.Hosts {
				hosts = append(hosts, h.Match)
			}
			if c.TLS.RedirectHTTP != tc.redirect || strings.Join(hosts, " ") != strings.Join(tc.hosts, " ") {
				t.Errorf("redirect_http %v, hosts %v; want %v, %v\n%s", c.TLS.RedirectHTTP, hosts, tc.redirect, tc.hosts, res.YAML)
			}
			if u := res.Untranslated(); len(u) != 0 {
				t.Errorf("untranslated: %+v", u)
			}
		})
	}
	// Two servers on port 80: each redirects only its own names.
	res, c := parsed(t, app, [2]string{"n.conf", "server { listen 80; server_name a.example; return 301 http://b.example$request_uri; }\n" +
		"server { listen 80; server_name c.example; return 301 https://c.example$request_uri; }\n" +
		"server { listen 8080; server_name _; return 301 https://example.com$request_uri; }\n" + site})
	if len(c.Hosts) != 1 || c.Hosts[0].Match != "a.example" || !c.TLS.RedirectHTTP {
		t.Errorf("hosts %+v, redirect_http %v\n%s", c.Hosts, c.TLS.RedirectHTTP, res.YAML)
	}
	if u := res.Untranslated(); len(u) != 1 || u[0].Line != 3 || !strings.Contains(u[0].Why, "server_name _") {
		t.Errorf("untranslated: %+v\n%s", u, res.YAML)
	}
}

// TestNginxRewrites: a rewrite of a literal prefix becomes a redirecting
// location with $rest; one of a literal path an exact one; others are
// listed with the reason.
func TestNginxRewrites(t *testing.T) {
	res, c := parsed(t, [2]string{"u.ini", "[uwsgi]\nmodule = app\nhttp-socket = 127.0.0.1:8000\n"}, [2]string{"n.conf", `
server {
    listen 80;
    rewrite ^/old/(.*)$ /new/$1 permanent;
    rewrite ^/a\.html$ /b.html? redirect;
    rewrite ^/x/([0-9]+)/(.*)$ /y/$2/$1 permanent;
    rewrite ^/int/(.*)$ /app/$1 last;
    location /legacy/ { rewrite ^/legacy/(.*) https://legacy.example.com/$1; }
    location / { proxy_pass http://127.0.0.1:8000; }
}`})
	want := map[string]string{
		"/old/":     "/new/$rest$is_args$args 301",
		"= /a.html": "/b.html 302",
		"/legacy/":  "https://legacy.example.com/$rest$is_args$args 302",
	}
	for _, l := range c.Locations {
		if l.Redirect == nil || want[l.Label()] != fmt.Sprintf("%s %d", l.Redirect.To, l.Redirect.Status) {
			t.Errorf("location %s: %+v", l.Label(), l.Redirect)
		}
		delete(want, l.Label())
	}
	if len(want) > 0 {
		t.Errorf("missing locations %v\n%s", want, res.YAML)
	}
	for line, why := range map[int]string{6: "only a literal prefix", 7: "internal rewrite"} {
		found := false
		for _, s := range res.Untranslated() {
			found = found || s.Line == line && strings.Contains(s.Why, why)
		}
		if !found {
			t.Errorf("line %d not listed with %q:\n%s", line, why, res.YAML)
		}
	}
}

// TestNginxOddLocations: locations berth cannot match on are listed, never
// a crash.
func TestNginxOddLocations(t *testing.T) {
	res := importFiles(t, [2]string{"n.conf", `server { listen 80; location foo { } location bar { deny all; } location = { return 404; } location @x { allow all; }
	location / { return 200; } location /a/ { rewrite ^ /b permanent; return 301 /c; } }`})
	if len(res.Untranslated()) == 0 {
		t.Errorf("nothing listed:\n%s", res.YAML)
	}
}
