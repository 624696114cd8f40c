package importer

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// uwsgiOpt is one key = value line of the [uwsgi] section, placeholders
// expanded.
type uwsgiOpt struct {
	key, value string
	name       string // the key as written
	raw        string // the value as written
	line       int
	// unresolved names what could not be expanded: "%(name)", "$(VAR)",
	// "@(file)", "%k"; "" when the value is complete.
	unresolved string
	// placeholder is set when a later value names this key as %(key).
	placeholder bool
}

// uwsgiAliases maps uWSGI's short and alternative option names onto the
// names the translator knows.
var uwsgiAliases = map[string]string{
	"p": "processes", "workers": "processes", "s": "socket", "uwsgi-socket": "socket",
	"M": "master", "w": "module", "wsgi": "module", "file": "wsgi-file", "H": "home",
	"virtualenv": "home", "venv": "home", "pyhome": "home", "pp": "pythonpath",
	"python-path": "pythonpath", "pymodule-alias": "pymodule-alias", "T": "enable-threads",
	"L": "disable-logging", "b": "buffer-size", "t": "harakiri", "R": "max-requests",
	"d": "daemonize", "C": "chmod-socket", "l": "listen", "z": "socket-timeout",
	"i": "single-interpreter", "lazy": "lazy-apps", "plugins": "plugin",
	"set-ph": "set-placeholder", "set": "set-placeholder",
}

// parseUwsgiIni reads the [uwsgi] section of an ini file the way uWSGI does:
// comments start with # or ;, keys may repeat, and %(name) is the value
// of an option set earlier in the file. Magic variables are those of the
// config file itself (%d its directory, %n its name, ...).
func parseUwsgiIni(path string, data []byte) ([]uwsgiOpt, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	base := filepath.Base(abs)
	ext := filepath.Ext(base)
	magic := map[byte]string{
		'd': filepath.Dir(abs) + "/",
		'p': abs,
		's': base,
		'n': strings.TrimSuffix(base, ext),
		'e': ext,
		'c': filepath.Base(filepath.Dir(abs)),
		'%': "%",
	}
	vars := map[string]string{}
	section := ""
	sawUwsgi := false
	var opts []uwsgiOpt
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(strings.TrimSuffix(l, "\r"))
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		if l[0] == '[' {
			if !strings.HasSuffix(l, "]") {
				return nil, fmt.Errorf("%s:%d: section header %q lacks its closing ]", path, i+1, l)
			}
			section = strings.TrimSpace(l[1 : len(l)-1])
			sawUwsgi = sawUwsgi || section == "uwsgi"
			continue
		}
		if section != "uwsgi" {
			continue // uWSGI reads only [uwsgi] unless told file.ini:section
		}
		key, value, found := strings.Cut(l, "=")
		key = strings.TrimSpace(key)
		value = strings.TrimSpace(value)
		if !found {
			value = "true" // a bare key is a flag that is on
		}
		if key == "" {
			return nil, fmt.Errorf("%s:%d: %q has no key before =", path, i+1, l)
		}
		o := uwsgiOpt{key: key, raw: value, line: i + 1, name: key}
		o.value, o.unresolved = expandUwsgi(value, vars, magic, func(name string) {
			for j := range opts {
				if opts[j].name == name {
					opts[j].placeholder = true
				}
			}
		})
		vars[key] = o.value
		if canon, ok := uwsgiAliases[key]; ok {
			o.key = canon
		}
		o.key = strings.ReplaceAll(o.key, "_", "-")
		if o.key == "set-placeholder" {
			if k, v, ok := strings.Cut(o.value, "="); ok {
				vars[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		opts = append(opts, o)
	}
	if !sawUwsgi {
		return nil, fmt.Errorf("%s: no [uwsgi] section; uWSGI reads its options from [uwsgi]", path)
	}
	return opts, nil
}

var uwsgiRefRE = regexp.MustCompile(`%\(([^)]*)\)|%.|\$\([^)]*\)|@\([^)]*\)`)

// expandUwsgi expands %(name) and the magic %x variables in v. It leaves
// what depends on where and when uWSGI starts ($(ENV), @(file), %k CPU
// count, %h host name, ...) as written and names the first such reference.
// used is called with each name a %(name) found.
func expandUwsgi(v string, vars map[string]string, magic map[byte]string, used func(name string)) (string, string) {
	unresolved := ""
	out := uwsgiRefRE.ReplaceAllStringFunc(v, func(m string) string {
		switch {
		case strings.HasPrefix(m, "%("):
			if val, ok := vars[m[2:len(m)-1]]; ok {
				used(m[2 : len(m)-1])
				return val
			}
		case m[0] == '%' && len(m) == 2:
			if val, ok := magic[m[1]]; ok {
				return val
			}
		}
		if unresolved == "" {
			unresolved = m
		}
		return m
	})
	return out, unresolved
}
