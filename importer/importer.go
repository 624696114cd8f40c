// Package importer translates the configuration of an nginx + uWSGI or
// nginx + Gunicorn deployment into one berth.yaml (`berth import`).
//
// Every setting of the sources ends up in exactly one of two places: in the
// YAML, with a comment naming its file, line and key, or in the list of
// settings that were not translated, with the reason. Nothing is dropped
// silently, so a user can review the move line by line.
//
// gunicorn.conf.py is Python: it is evaluated the way Gunicorn does, in a
// subprocess of the configured interpreter, never in berth. nginx configs
// are read with nginx's own crossplane parser, following include.
package importer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/config"
)

// DefaultPython evaluates gunicorn.conf.py files when Options.Python is "".
// It is Debian's interpreter, the one its gunicorn package runs on.
const DefaultPython = "/usr/bin/python3"

// DefaultNginxPrefix is where nginx looks for relative include paths
// (`include uwsgi_params;`) when Options.NginxPrefix is "".
const DefaultNginxPrefix = "/etc/nginx"

// Options tune an import. The zero value uses DefaultPython and
// DefaultNginxPrefix.
type Options struct {
	// Python runs gunicorn.conf.py files, and becomes app.python when the
	// sources name no virtualenv (uWSGI and Gunicorn ran on the Python they
	// were installed for).
	Python string
	// NginxPrefix is the directory nginx resolves relative include paths
	// against, tried when the path is not found beside the main file.
	NginxPrefix string
	// FSRoot is where absolute paths are looked up when the importer asks
	// this machine what a path is (a file or a directory); "" is /.
	FSRoot string
}

// Reason says why a setting was not translated.
type Reason int

const (
	// NotNeeded: berth does this by itself (a no-op in berth).
	NotNeeded Reason = iota
	// NoEquivalent: berth has no such feature.
	NoEquivalent
	// NeedsDecision: a translation exists but would guess; the user decides.
	NeedsDecision
	// NotYetSupported: a planned berth feature that does not exist yet
	// (HTTP/3).
	NotYetSupported
)

func (r Reason) String() string {
	switch r {
	case NotNeeded:
		return "not needed in berth"
	case NoEquivalent:
		return "no equivalent in berth"
	case NeedsDecision:
		return "needs a decision"
	case NotYetSupported:
		return "not yet supported"
	}
	return fmt.Sprintf("reason %d", int(r))
}

// Source locates one setting in the imported files.
type Source struct {
	File string // as given on the command line, or as nginx's include named it
	Line int    // 1-based; 0 when unknown
	Key  string // the original key or directive, e.g. "processes", "alias"
	// Where is the nginx block the directive sits in ("location /static/"),
	// "" at the top of its file or for uWSGI and Gunicorn.
	Where string
	// raw is the value as written, shown when a later setting conflicts.
	raw string
}

func (s Source) String() string {
	var b strings.Builder
	b.WriteString(s.File)
	if s.Line > 0 {
		fmt.Fprintf(&b, ":%d", s.Line)
	}
	b.WriteString(" ")
	b.WriteString(s.Key)
	if s.Where != "" {
		fmt.Fprintf(&b, " (in %s)", s.Where)
	}
	return b.String()
}

// Skipped is one setting that was not translated.
type Skipped struct {
	Source
	Value  string // the value as written, "" for a block or a flag
	Reason Reason
	Why    string // what berth does instead, or what is needed
}

// Result is one import.
type Result struct {
	// YAML is the berth.yaml: translated settings with their sources, then
	// the settings not translated, as comments.
	YAML []byte
	// Translated counts the settings that became berth.yaml keys.
	Translated int
	// Skipped lists every setting that did not, in input order.
	Skipped []Skipped
}

// Untranslated returns the skipped settings that change behaviour when
// dropped: everything but NotNeeded. `berth import --check` fails on them.
func (r *Result) Untranslated() []Skipped {
	var out []Skipped
	for _, s := range r.Skipped {
		if s.Reason != NotNeeded {
			out = append(out, s)
		}
	}
	return out
}

// kind is the format of one input file.
type kind int

const (
	kindUwsgi kind = iota
	kindGunicorn
	kindNginx
)

// detect names the format of path from its name, else its first line: an
// ini section header means uWSGI; anything else is taken as nginx.
func detect(path string, data []byte) (kind, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ini":
		return kindUwsgi, nil
	case ".py":
		return kindGunicorn, nil
	case ".xml", ".yaml", ".yml", ".json":
		return 0, fmt.Errorf("%s: berth import reads uWSGI configs in ini format only; dump this one as ini (uwsgi --%s %s --show-config) and import that", path, strings.TrimPrefix(filepath.Ext(path), "."), path)
	}
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") {
			continue
		}
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			return kindUwsgi, nil
		}
		break
	}
	return kindNginx, nil
}

// Import reads files (any mix of uwsgi.ini, gunicorn.conf.py and nginx
// configs) and returns the berth.yaml they translate to. An error means a
// file could not be read or parsed; settings that cannot be translated are
// not errors but Result.Skipped entries.
func Import(files []string, opt Options) (*Result, error) {
	if len(files) == 0 {
		return nil, errors.New("no files to import: name a uwsgi.ini, a gunicorn.conf.py and/or an nginx config")
	}
	if opt.Python == "" {
		opt.Python = DefaultPython
	}
	if opt.NginxPrefix == "" {
		opt.NginxPrefix = DefaultNginxPrefix
	}
	type input struct {
		path string
		kind kind
		data []byte
	}
	var inputs []input
	b := newBuilder()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		k, err := detect(f, data)
		if err != nil {
			return nil, err
		}
		if k == kindNginx {
			b.front = true
		}
		inputs = append(inputs, input{f, k, data})
	}
	// The application servers first: nginx's pass targets are checked
	// against the sockets they bound.
	for _, in := range inputs {
		var err error
		switch in.kind {
		case kindUwsgi:
			err = importUwsgi(b, in.path, in.data)
		case kindGunicorn:
			err = importGunicorn(b, in.path, opt.Python)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, in := range inputs {
		if in.kind == kindNginx {
			if err := importNginx(b, in.path, opt.NginxPrefix, opt.FSRoot); err != nil {
				return nil, err
			}
		}
	}
	b.finish(opt)
	var names []string
	for _, in := range inputs {
		names = append(names, in.path)
	}
	out := b.render(names)
	// The output must pass `berth check`; a failure here is a bug in the
	// importer, reported rather than printed as a config that won't load.
	if _, err := config.Parse("berth.yaml", out); err != nil {
		return nil, fmt.Errorf("import: the translated config does not pass berth check (a bug in berth import; please report it with the input files):\n%w\n%s", err, out)
	}
	return &Result{YAML: out, Translated: b.translated(), Skipped: b.skipped}, nil
}

// firstLine returns s up to its first line break, for one-line comments.
func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
