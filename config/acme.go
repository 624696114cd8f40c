package config

import (
	"net/url"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// acme.go: tls.acme (certificates from an ACME CA, obtained and renewed by
// the proxy through package acme) and tls.http3. Parse looks at no file:
// whether ca_roots hold PEM and whether a name is also in a
// tls.certificates pair are machine checks (the supervisor reads those
// files as root, as it reads the certificates).

// DefaultACMECA is tls.acme.ca when it is left out: Let's Encrypt's
// production directory (acme.DefaultCA; a test keeps the two equal, config
// does not import certmagic for a string).
const DefaultACMECA = "https://acme-v02.api.letsencrypt.org/directory"

// DefaultACMEStorage is tls.acme.storage when it is left out: meant to be a
// volume, so a restarted container finds its certificates and asks the CA
// for nothing.
const DefaultACMEStorage = "/var/lib/berth/acme"

// ACMEListen is listen's default when tls.acme is set and listen is not:
// HTTP-01 reaches port 80 and TLS-ALPN-01 port 443, and a site that gets
// its certificates by itself is served on them. berth binds them as root
// (the supervisor) before it drops to app.user.
var ACMEListen = []string{":80", "https://:443"}

// ACME is tls.acme: the names berth gets certificates for.
type ACME struct {
	// Email is the ACME account's contact; "" is an account without one.
	Email string `yaml:"email" json:"email"`
	// Domains are the names, one certificate each; empty: ACME is off.
	Domains []string `yaml:"domains" json:"domains"`
	// CA is the ACME directory URL (https).
	CA string `yaml:"ca" json:"ca"`
	// CARoots are PEM files trusted, beside the system's roots, when
	// talking to the CA (a test or private CA).
	CARoots []string `yaml:"ca_roots" json:"ca_roots"`
	// Storage holds the account, certificates, keys and locks; replicas
	// sharing it take turns.
	Storage string `yaml:"storage" json:"storage"`
}

// Enabled says whether tls.acme is on: it has domains.
func (a *ACME) Enabled() bool { return len(a.Domains) > 0 }

func defaultACME() ACME {
	return ACME{Domains: []string{}, CA: DefaultACMECA, CARoots: []string{}, Storage: DefaultACMEStorage}
}

func (d *decoder) acme(dst *ACME) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		d.section(path, n, []field{
			{"email", d.str(&dst.Email)},
			{"domains", d.strs(&dst.Domains)},
			{"ca", d.str(&dst.CA)},
			{"ca_roots", d.strs(&dst.CARoots)},
			{"storage", d.str(&dst.Storage)},
		})
	}
}

// validateACME checks tls.acme and tls.http3.
func (c *Config) validateACME(bad func(path, format string, args ...any)) {
	a := &c.TLS.ACME
	if !a.Enabled() {
		// A default written out (berth check --print) is no setting; a
		// value of one's own with no domains is a half-done config.
		set := map[string]bool{"email": a.Email != "", "ca": a.CA != DefaultACMECA, "ca_roots": len(a.CARoots) > 0, "storage": a.Storage != DefaultACMEStorage}
		for _, k := range []string{"email", "ca", "ca_roots", "storage"} {
			if set[k] {
				bad("tls.acme.domains", "tls.acme.%s is set but tls.acme.domains is empty; list the names to get certificates for, e.g. domains: [example.com, www.example.com]", k)
				break
			}
		}
	}
	seen := map[string]int{}
	for i, name := range a.Domains {
		p := index("tls.acme.domains", i)
		n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
		switch {
		case strings.Contains(n, "*"):
			bad(p, "%s is a wildcard: it needs the DNS-01 challenge, which berth does not answer; list each name instead", quoteShort(name))
		case !isDNSName(n):
			bad(p, "%s is not a DNS name a certificate can be issued for; use a name like www.example.com", quoteShort(name))
		default:
			if first, dup := seen[n]; dup {
				bad(p, "%q is already tls.acme.domains[%d]; remove one of them", name, first)
			} else {
				seen[n] = i
			}
		}
	}
	if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsAny(a.Email, " \t<>,;")) {
		bad("tls.acme.email", "%s is not an email address; give the address the CA writes to about expiring certificates, or leave it out", quoteShort(a.Email))
	}
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("tls.acme.ca", "%s is not an ACME directory URL: give https://HOST/PATH, e.g. %s (the default)", quoteShort(a.CA), DefaultACMECA)
	}
	for i, r := range a.CARoots {
		if !filepath.IsAbs(r) {
			bad(index("tls.acme.ca_roots", i), "%s must be an absolute path to a PEM file of CA certificates", quoteShort(r))
		}
	}
	if !filepath.IsAbs(a.Storage) {
		bad("tls.acme.storage", "%s must be an absolute path, e.g. %s (a volume)", quoteShort(a.Storage), DefaultACMEStorage)
	}
	if a.Enabled() {
		tcp := false
		for _, l := range c.Listen {
			if !strings.HasPrefix(l, "unix:") {
				tcp = true
			}
		}
		if !tcp {
			bad("tls.acme.domains", "the CA validates a name on a TCP listener (port 80 for HTTP-01, 443 for TLS-ALPN-01), and every listen entry is a unix socket; add one, e.g. listen: [\":80\", \"https://:443\"]")
		}
	}
	if c.TLS.HTTP3 && !c.HasTLSListener() {
		bad("tls.http3", "HTTP/3 is served on the UDP port of each https:// listener, and no listen entry is https://; add one, e.g. listen: [\":8080\", \"https://:8443\"]")
	}
}

// isDNSName accepts a lower-case host name of labels of letters, digits
// and hyphens, with at least one dot (a certificate for a bare label is
// one no public CA issues).
func isDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 || !strings.Contains(s, ".") {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// acmeNode renders tls.acme for Effective.
func (a *ACME) node() *yaml.Node {
	return mapNode(
		"email", strNode(a.Email),
		"domains", strList(a.Domains),
		"ca", strNode(a.CA),
		"ca_roots", strList(a.CARoots),
		"storage", strNode(a.Storage),
	)
}

func sameACME(a, b *ACME) bool {
	return a.Email == b.Email && sameList(a.Domains, b.Domains) && a.CA == b.CA &&
		sameList(a.CARoots, b.CARoots) && a.Storage == b.Storage
}
