package importer

// logformats.go: access log formats. nginx's log_format is berth's custom
// format as it is (berth takes nginx's $variables); Gunicorn's
// access_log_format atoms are translated to them.

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/berth-dev/berth/proxy/logformat"
)

// logFormatValue turns a format into proxy.access_log's value: "combined"
// when it is nginx's combined, else the format. An error says which
// variable berth cannot write.
func logFormatValue(format string) (string, error) {
	if format == logformat.Combined {
		return "combined", nil
	}
	if _, err := logformat.Parse(format); err != nil {
		return "", err
	}
	return format, nil
}

// nginxFormat is the berth format of a log_format directive: its strings
// joined, as nginx joins them, led by its escape= parameter if any.
func nginxFormat(d *ndir) string {
	args := d.args[1:]
	esc := ""
	if len(args) > 1 && strings.HasPrefix(args[0], "escape=") {
		if args[0] != "escape=default" {
			esc = args[0] + " "
		}
		args = args[1:]
	}
	return esc + strings.Join(args, "")
}

// accessLog translates access_log PATH FORMAT [options] naming a
// log_format.
func (n *nginxImport) accessLog(d *ndir, src Source, text string) {
	for _, a := range d.args[2:] {
		if strings.HasPrefix(a, "if=") {
			n.b.skip(src, text, NoEquivalent, "berth logs every request; it has no conditional logging")
			return
		}
	}
	name := d.args[1]
	def := n.logFormats[name]
	if def == nil {
		n.b.skip(src, text, NeedsDecision, "no log_format %s was found in the files imported", name)
		return
	}
	v, err := logFormatValue(nginxFormat(def))
	if err != nil {
		n.b.skip(src, text, NoEquivalent, "log_format %s (%s:%d): %v", name, def.file, def.line, err)
		return
	}
	n.b.set("proxy.access_log", v, src, fmt.Sprintf("log_format %s from %s:%d, to stdout", name, def.file, def.line))
}

// gunicornAtomRE matches one of Gunicorn's access log atoms, %(h)s or
// %({header}i)s.
var gunicornAtomRE = regexp.MustCompile(`%\((\{[^}]*\}[ioe]|[A-Za-z]+)\)s`)

// gunicornAtoms are Gunicorn's atoms with their nginx variable; approx
// says how the value differs.
var gunicornAtoms = map[string]struct{ v, approx string }{
	"h": {"$remote_addr", ""},
	"l": {"-", ""},
	"u": {"$remote_user", ""},
	"t": {"[$time_local]", ""},
	"r": {"$request", ""},
	"m": {"$request_method", ""},
	"U": {"$uri", ""},
	"q": {"$args", "an empty query is - rather than empty"},
	"H": {"$server_protocol", ""},
	"s": {"$status", ""},
	"B": {"$body_bytes_sent", ""},
	"b": {"$body_bytes_sent", "an empty body is 0 rather than -"},
	"f": {"$http_referer", ""},
	"a": {"$http_user_agent", ""},
	"T": {"$request_time", "seconds with milliseconds, not whole seconds"},
	"D": {"$request_time", "seconds with milliseconds, not microseconds"},
	"M": {"$request_time", "seconds with milliseconds, not milliseconds"},
	"L": {"$request_time", "milliseconds, not microseconds, after the point"},
	"p": {"$worker", "berth's worker id (2.1), not the worker's pid"},
}

// gunicornLogFormat translates access_log_format into a berth format and
// the approximations it made.
func gunicornLogFormat(f string) (string, []string, error) {
	var out strings.Builder
	var approx []string
	last := 0
	for _, m := range gunicornAtomRE.FindAllStringSubmatchIndex(f, -1) {
		lit := strings.ReplaceAll(f[last:m[0]], "%%", "%")
		if strings.Contains(lit, "$") {
			return "", nil, fmt.Errorf("a literal $ cannot be written in an nginx-style format")
		}
		out.WriteString(lit)
		last = m[1]
		atom := f[m[2]:m[3]]
		if strings.HasPrefix(atom, "{") {
			name := strings.ToLower(strings.ReplaceAll(atom[1:len(atom)-2], "-", "_"))
			switch atom[len(atom)-1] {
			case 'i':
				out.WriteString("$http_" + name)
			case 'o':
				out.WriteString("$sent_http_" + name)
			default:
				return "", nil, fmt.Errorf("%%(%s)s is a WSGI environ variable; berth logs request and response headers only", atom)
			}
			continue
		}
		a, ok := gunicornAtoms[atom]
		if !ok {
			return "", nil, fmt.Errorf("berth has no equivalent of the atom %%(%s)s", atom)
		}
		out.WriteString(a.v)
		if a.approx != "" {
			approx = append(approx, fmt.Sprintf("%%(%s)s as %s: %s", atom, a.v, a.approx))
		}
	}
	rest := strings.ReplaceAll(f[last:], "%%", "%")
	if strings.Contains(rest, "$") {
		return "", nil, fmt.Errorf("a literal $ cannot be written in an nginx-style format")
	}
	out.WriteString(rest)
	return out.String(), approx, nil
}

// gunicornAccessLog translates access_log_format; accesslog decides whether
// Gunicorn logged at all, whichever of the two comes first.
func gunicornAccessLog(b *builder, src Source, shown string, v any) {
	s, ok := v.(string)
	if !ok {
		b.skip(src, shown, NeedsDecision, "expected a string")
		return
	}
	if old := b.scalars["proxy.access_log"]; old != nil && old.src.Key == "accesslog" {
		if old.value == "off" {
			b.skip(src, shown, NotNeeded, "accesslog is None: Gunicorn logged no requests")
			return
		}
		delete(b.scalars, "proxy.access_log")
		b.skip(old.src, old.src.raw, NotNeeded, "to stdout, berth's only access log; the format is access_log_format's")
	}
	f, approx, err := gunicornLogFormat(s)
	if err == nil {
		f, err = logFormatValue(f)
	}
	if err != nil {
		b.skip(src, shown, NoEquivalent, "%v", err)
		return
	}
	note := "Gunicorn's atoms as nginx variables"
	if len(approx) > 0 {
		note += "; " + strings.Join(approx, "; ")
	}
	b.set("proxy.access_log", f, src, note)
}
