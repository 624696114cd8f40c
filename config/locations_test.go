package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustParse(t *testing.T, yaml string) *Config {
	t.Helper()
	c, err := Parse("t.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestSelectLocation(t *testing.T) {
	c := mustParse(t, `
locations:
  - {path: /}
  - {path: /admin}
  - {path: /admin/}
  - {exact: /admin/}
  - {path: /static/}
`)
	for _, tc := range []struct{ path, want string }{
		{"/admin/", "= /admin/"},        // exact before any prefix
		{"/admin/users", "/admin/"},     // the longest prefix
		{"/administrator", "/admin"},    // nginx's prefix: no boundary
		{"/static/app.css", "/static/"}, // a longer prefix than /
		{"/", "/"},
		{"/other", "/"},
	} {
		l := SelectLocation(c.Locations, tc.path)
		if l == nil || l.Label() != tc.want {
			t.Errorf("SelectLocation(%q) = %v, want %s", tc.path, l, tc.want)
		}
	}
	if l := SelectLocation(c.Locations[1:], "/x"); l != nil {
		t.Errorf("SelectLocation without / = %v, want nil", l.Label())
	}
}

func TestAccessFirstMatchWins(t *testing.T) {
	c := mustParse(t, `
locations:
  - path: /admin/
    access: [{deny: 10.9.9.9}, {allow: 10.0.0.0/8}, {allow: "2001:db8::/32"}, {allow: "::ffff:192.168.0.0/112"}, {deny: all}]
  - path: /blocklist/
    access: [{deny: 192.0.2.0/24}]
`)
	admin, block := &c.Locations[0], &c.Locations[1]
	for _, tc := range []struct {
		l    *Location
		addr string
		want bool
	}{
		{admin, "10.9.9.9", false}, // the deny before the allow wins
		{admin, "10.1.2.3", true},
		{admin, "::ffff:10.1.2.3", true}, // an IPv4-mapped address is its IPv4 address
		{admin, "2001:db8::1", true},
		{admin, "192.0.2.1", false},
		{admin, "192.168.3.4", true}, // a rule written IPv4-mapped is its IPv4 prefix
		{block, "192.0.2.1", false},
		{block, "198.51.100.1", true}, // no rule matches: allowed, as in nginx
	} {
		if got := tc.l.Allowed(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%s Allowed(%s) = %v, want %v", tc.l.Label(), tc.addr, got, tc.want)
		}
	}
}

func TestSelectHost(t *testing.T) {
	c := mustParse(t, `
hosts:
  - {match: WWW.Example.com, redirect: {to: "https://example.com$request_uri", status: 301}}
  - {match: "*.example.com", redirect: {to: "https://example.com/"}}
  - {match: "*.eu.example.com", redirect: {to: "https://example.eu/"}}
`)
	if c.Hosts[0].Match != "www.example.com" {
		t.Errorf("match not lower-cased: %q", c.Hosts[0].Match)
	}
	for _, tc := range []struct{ host, want string }{
		{"www.example.com", "www.example.com"},
		{"WWW.EXAMPLE.COM:8443", "www.example.com"},
		{"www.example.com.", "www.example.com"},
		{"shop.example.com", "*.example.com"},
		{"a.eu.example.com", "*.eu.example.com"}, // the longest wildcard
		{"example.com", ""},                      // a wildcard needs a subdomain
		{"[2001:db8::1]:443", ""},
	} {
		got := ""
		if h := SelectHost(c.Hosts, tc.host); h != nil {
			got = h.Match
		}
		if got != tc.want {
			t.Errorf("SelectHost(%q) = %q, want %q", tc.host, got, tc.want)
		}
	}
}

func TestRedirectTarget(t *testing.T) {
	r := Redirect{To: "https://${host}/new/$rest$is_args$args", Status: 301}
	vars := map[string]string{"host": "example.com", "rest": "a/b%20c", "is_args": "?", "args": "q=1"}
	if got, want := r.Target(func(n string) string { return vars[n] }), "https://example.com/new/a/b%20c?q=1"; got != want {
		t.Errorf("Target = %q, want %q", got, want)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]string{"5/m": "5/m", "5r/m": "5/m", "10r/s": "10/s", "1/s": "1/s"} {
		r, err := ParseRate(in)
		if err != nil || r.String() != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %s", in, r, err, want)
		}
	}
	for _, bad := range []string{"", "5", "5/h", "0/s", "-1/s", "r/s", "5rr/s", "5 /s", "+5/s"} {
		if r, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", bad, r)
		}
	}
}

// TestLimitIDAcrossReloads: the proxy keeps a location's buckets while its
// LimitID stays the same. Tuning burst, delay or status keeps them; a new
// rate, key or path starts afresh; the client address however written is
// one key.
func TestLimitIDAcrossReloads(t *testing.T) {
	id := func(loc string) string {
		t.Helper()
		return mustParse(t, "locations:\n  - "+loc+"\n").Locations[0].LimitID()
	}
	base := id("{path: /login/, limit: {rate: 5/m, burst: 5}}")
	if base != "/login/ key=client rate=5/m" {
		t.Errorf("LimitID = %q", base)
	}
	for _, same := range []string{
		"{path: /login/, limit: {rate: 5r/m, burst: 10, nodelay: true, status: 503}}",
		"{path: /login/, limit: {rate: 5/m, key: $binary_remote_addr}}",
		"{path: /login/, limit: {rate: 5/m, burst: 5, delay: 2}, headers: {X-A: b}}",
	} {
		if got := id(same); got != base {
			t.Errorf("%s: LimitID %q, want %q (buckets kept)", same, got, base)
		}
	}
	for _, other := range []string{
		"{path: /login/, limit: {rate: 6/m, burst: 5}}",
		"{path: /login/, limit: {rate: 5/s, burst: 5}}",
		"{path: /login/, limit: {rate: 5/m, key: global}}",
		"{exact: /login/, limit: {rate: 5/m}}",
		"{path: /login, limit: {rate: 5/m}}",
	} {
		if got := id(other); got == base {
			t.Errorf("%s: LimitID %q is the old one; the buckets must start afresh", other, got)
		}
	}
	if got := id("{path: /x/}"); got != "" {
		t.Errorf("no limit: LimitID %q, want \"\"", got)
	}
}

func TestDiffLocationsAreProxyChanges(t *testing.T) {
	base := mustParse(t, "locations: [{path: /a/}]\n")
	for _, edit := range []string{
		"locations: [{path: /a/, access: [{deny: all}]}]\n",
		"locations: [{path: /a/, limit: {rate: 1/s}}]\n",
		"locations: [{path: /a/}]\nhosts: [{match: a.example, redirect: {to: \"https://b.example/\"}}]\n",
		"locations: [{path: /a/}]\nproxy: {headers: {X-A: b}}\n",
		"locations: [{path: /a/}]\nproxy: {limits: {connections_per_client: 3}}\n",
		"locations: [{path: /a/}]\nproxy: {error_pages: {502: /e.html}}\n",
	} {
		ch := Diff(base, mustParse(t, edit))
		if !ch.Proxy || ch.Workers || ch.WorkerCount || ch.Listen || ch.Companions {
			t.Errorf("%q: Diff = %v, want proxy only", edit, ch)
		}
	}
	if ch := Diff(base, mustParse(t, "locations: [{path: /a/}]\n")); ch.Any() {
		t.Errorf("same config: Diff = %v", ch)
	}
}

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	page := filepath.Join(dir, "50x.html")
	big := filepath.Join(dir, "big.html")
	users := filepath.Join(dir, "htpasswd")
	for name, size := range map[string]int{page: 100, big: MaxErrorPageSize + 1, users: 10} {
		if err := os.WriteFile(name, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := mustParse(t, "proxy: {error_pages: {502: "+page+", 503: "+page+"}}\n"+
		"locations: [{path: /s/, auth: {basic: {users: "+users+"}}}]\n")
	if err := good.CheckFiles(); err != nil {
		t.Errorf("CheckFiles: %v", err)
	}
	broken := mustParse(t, "proxy: {error_pages: {502: "+big+", 503: "+dir+", 504: "+dir+"/none.html}}\n"+
		"locations: [{path: /s/, auth: {basic: {users: "+dir+"}}}, {path: /t/, auth: {basic: {users: "+dir+"/nobody}}}]\n")
	err := broken.CheckFiles()
	if err == nil {
		t.Fatal("CheckFiles accepted a large page, a directory and missing files")
	}
	for _, want := range []string{
		"t.yaml: proxy.error_pages.502: " + big + " is larger than 1 MiB",
		"t.yaml: proxy.error_pages.503: " + dir + " is not a regular file",
		"t.yaml: proxy.error_pages.504: open " + dir + "/none.html: no such file",
		"t.yaml: locations[0].auth.basic.users: " + dir + " is not a regular file",
		"t.yaml: locations[1].auth.basic.users: open " + dir + "/nobody: no such file",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CheckFiles error lacks %q:\n%v", want, err)
		}
	}
}

// TestLocationsBuiltInCode: a Config built in code goes through the same
// checks, and is put in the same canonical form.
func TestLocationsBuiltInCode(t *testing.T) {
	c := Default()
	c.Locations = []Location{{Path: "/api/", Limit: &Limit{Rate: Rate{Requests: 1, Per: Duration(1e9)}, Key: "$remote_addr", Status: 429}}}
	c.Hosts = []Host{{Match: "WWW.example.com", Redirect: Redirect{To: "https://example.com$request_uri", Status: 301}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Locations[0].Limit.Key != LimitKeyClient || c.Hosts[0].Match != "www.example.com" {
		t.Errorf("not canonical: key %q, match %q", c.Locations[0].Limit.Key, c.Hosts[0].Match)
	}
	c.Locations = append(c.Locations, Location{Exact: "/x", Redirect: &Redirect{To: "/y", Status: 200}})
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "locations[1].redirect.status") {
		t.Errorf("Validate = %v, want the bad redirect status", err)
	}
}
