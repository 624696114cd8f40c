package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Load reads and parses the configuration file at path; the result's Source
// is path, and every error message starts with it.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes, validates and completes the configuration in data. name is
// the file it came from, used in messages and as Source. Keys data leaves
// out keep their defaults; an empty document yields Default(). On failure
// the error is an ErrorList naming every problem as FILE:LINE: KEY.PATH: MESSAGE.
func Parse(name string, data []byte) (*Config, error) {
	d := &decoder{file: name, lines: map[string]int{}, nulls: map[string]bool{}, failed: map[string]bool{}}
	root, err := d.document(data)
	if err != nil {
		return nil, err
	}
	c := Default()
	c.Source = name
	if root != nil {
		d.config(c, root)
	}
	if _, written := d.lines["listen"]; !written && c.TLS.ACME.Enabled() {
		// A site that gets its certificates by itself is served on the
		// ports the CA validates: tls.acme.domains alone is a whole config.
		c.Listen = append([]string{}, ACMEListen...)
	}
	// Validate even after decode errors, so one run lists every problem: a
	// value that failed to decode keeps its default, and checks on it (or
	// under it) are skipped so it is not reported twice.
	if err := c.validate(name, d.lines, d.failedAt); err != nil {
		d.errs = append(d.errs, err.(ErrorList)...)
	}
	if err := d.errs.asError(); err != nil {
		return nil, err
	}
	return c, nil
}

// decoder walks the yaml.Node tree itself instead of using yaml's reflection
// so that every error can say which key is wrong, on which line, and what
// would be right.
type decoder struct {
	file string
	errs ErrorList
	// lines maps each key path seen ("workers.count", "static[1].url") to the
	// line of its value, so validation after decoding can point at it.
	lines map[string]int
	// nulls holds the key paths written with no value (`rate:`): they keep
	// their default, so a required key written that way is still missing.
	nulls map[string]bool
	// failed holds the paths whose value could not be decoded.
	failed map[string]bool
}

// errorf reports that the value at path could not be decoded.
func (d *decoder) errorf(line int, path, format string, args ...any) {
	d.note(line, path, format, args...)
	d.failed[path] = true
}

// note reports a problem that leaves the value at path usable (an unknown
// or duplicate key next to it).
func (d *decoder) note(line int, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// failedAt reports whether the value at path, or one containing it, failed
// to decode.
func (d *decoder) failedAt(path string) bool {
	for {
		if d.failed[path] {
			return true
		}
		if path == "" {
			return false
		}
		path = path[:max(strings.LastIndexAny(path, ".["), 0)]
	}
}

var yamlLineErr = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// document parses data into its root node; nil when the file holds no
// settings at all (empty, only comments, or a lone null).
func (d *decoder) document(data []byte) (*yaml.Node, error) {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) ||
		bytes.HasPrefix(data, []byte{0, 0, 0xfe, 0xff}) {
		// yaml.v3 would read UTF-16 and UTF-32, but every line number
		// berth reports is counted in UTF-8 (and editors differ on
		// UTF-16's line separators): one encoding, said plainly.
		return nil, ErrorList{{File: d.file, Line: 1, Msg: "the file is UTF-16 or UTF-32 (it starts with a byte order mark); save it as UTF-8"}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, d.syntaxError(err, data)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, d.syntaxError(err, data)
	default:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		// An empty last document ("...\n---" with no break after it) is
		// placed by yaml.v3 on a line past the end; name its separator.
		if line > lineCount(data) {
			line = separatorLine(data, line)
		}
		return nil, ErrorList{{File: d.file, Line: line, Msg: `a second YAML document (after a "---" separator) starts here, but berth reads one document per file; merge the settings into the first document`}}
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil, nil
	}
	return root, nil
}

// syntaxError turns a yaml.v3 parse error into FILE:LINE: form. yaml.v3 only
// gives the line inside its message text, and not at all for encoding
// errors, which are then located by scanning data.
func (d *decoder) syntaxError(err error, data []byte) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	hint := "check the indentation and the quoting around this line"
	if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		lines := strings.Split(string(data), "\n")
		if line >= 1 && line <= len(lines) && strings.HasPrefix(strings.TrimLeft(lines[line-1], " "), "\t") {
			hint = "YAML does not allow tabs for indentation: indent with spaces"
		}
	} else if line = badByteLine(data); line > 0 {
		// Encoding errors come without a line.
		hint = "save the file as UTF-8 text without control characters"
	} else {
		// yaml.v3 also leaves the line out when its marks are on the first
		// line (it counts from 0 and takes 0 for "unknown"): `listen: ":80`.
		line = 1
	}
	return ErrorList{{File: d.file, Line: line, Msg: fmt.Sprintf("YAML syntax error: %s; %s", msg, hint)}}
}

// separatorLine returns the line of the last "---" document marker at or
// before line, so a message about a second document names its separator even
// when yaml.v3 places the document past the input's last line. Lines break as
// YAML's do (CRLF, LF, CR, NEL, LS, PS). Without a marker it returns line,
// clamped to the input.
func separatorLine(data []byte, line int) int {
	var all []string
	start := 0
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	for i, r := range s {
		switch r {
		case '\n', '\r', '\u0085', '\u2028', '\u2029':
			all = append(all, s[start:i])
			_, size := utf8.DecodeRuneInString(s[i:])
			start = i + size
		}
	}
	all = append(all, s[start:])
	line = min(line, len(all))
	for n := line; n >= 1; n-- {
		l := all[n-1]
		if l == "---" || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "---\t") {
			return n
		}
	}
	return max(line, 1)
}

// breakLines splits data into lines as YAML breaks them (CRLF, LF, CR, NEL,
// LS, PS); the text after the last break is a line too.
func breakLines(data []byte) []string {
	var all []string
	start := 0
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	for i, r := range s {
		switch r {
		case '\n', '\r', '\u0085', '\u2028', '\u2029':
			_, size := utf8.DecodeRuneInString(s[i:])
			all = append(all, s[start:i])
			start = i + size
		}
	}
	return append(all, s[start:])
}

func lineCount(data []byte) int { return len(breakLines(data)) }

// badByteLine returns the line of the first byte YAML refuses (invalid
// UTF-8 or a control character), 0 if there is none.
func badByteLine(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size == 1 || r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f {
			return line
		}
		if r == '\n' {
			line++
		}
		i += size
	}
	return 0
}

// resolve follows aliases (*anchor) to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's value for "got ..." in messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return quoteShort(n.Value)
		case "!!null":
			return "nothing (null)"
		}
		// A value under another tag (!!int, a custom !tag) may still span
		// lines or hold control characters: quoted, a message stays one line.
		if strings.IndexFunc(n.Value, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 || len(n.Value) > 60 {
			return quoteShort(n.Value)
		}
		return n.Value
	}
	return "an unsupported YAML node"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// field is one key of a mapping section and how to decode its value.
type field struct {
	key    string
	decode func(path string, n *yaml.Node)
}

// pairs calls fn for each entry of mapping n, after refusing keys that are
// not plain scalars, merge keys and duplicates.
func (d *decoder) pairs(path string, n *yaml.Node, fn func(key string, k, v *yaml.Node)) {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		switch {
		case k.Kind != yaml.ScalarNode:
			d.note(k.Line, path, "a key must be a plain name, got %s as a key", describe(k))
			continue
		case k.ShortTag() == "!!merge":
			d.note(k.Line, path, "YAML merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.note(k.Line, join(path, k.Value), "duplicate key %q (first set on line %d); keep only one of them", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		fn(k.Value, k, v)
	}
}

// section decodes mapping n with the given fields. A key with a null value
// (`workers:` with nothing under it) keeps its default.
func (d *decoder) section(path string, n *yaml.Node, fields []field) {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "expected a mapping with keys %s, got %s", strings.Join(keys, ", "), describe(n))
		return
	}
	d.pairs(path, n, func(key string, k, v *yaml.Node) {
		for _, f := range fields {
			if f.key == key {
				p := join(path, key)
				d.lines[p] = v.Line
				if isNull(v) {
					d.nulls[p] = true
				} else {
					f.decode(p, v)
				}
				return
			}
		}
		d.unknownKey(path, k, keys)
	})
}

func (d *decoder) unknownKey(path string, k *yaml.Node, valid []string) {
	msg := fmt.Sprintf("unknown key %q", k.Value)
	if s := suggest(k.Value, valid); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	d.note(k.Line, path, "%s; valid keys: %s", msg, strings.Join(valid, ", "))
}

// scalarText returns the text of a scalar that may stand for a string.
// Numbers are taken as written ("user: 1000"); true/false are refused because
// a user who means the text should quote it.
func (d *decoder) scalarText(path string, n *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, path, "expected a string, got %s", describe(n))
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!timestamp":
		return n.Value, true
	case "!!bool":
		d.errorf(n.Line, path, "expected a string, got %s; put it in quotes (\"%s\") if you mean the text", n.Value, n.Value)
	default:
		d.errorf(n.Line, path, "expected a string, got a value tagged %s; remove the tag", n.Tag)
	}
	return "", false
}

func (d *decoder) str(dst *string) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if s, ok := d.scalarText(path, n); ok {
			*dst = s
		}
	}
}

func (d *decoder) strs(dst *[]string) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind != yaml.SequenceNode {
			d.errorf(n.Line, path, "expected a list of strings such as [\"a\", \"b\"], got %s", describe(n))
			return
		}
		out := []string{}
		ok := true
		for i, item := range n.Content {
			item = resolve(item)
			p := index(path, i)
			d.lines[p] = item.Line
			if isNull(item) {
				d.errorf(item.Line, p, "empty list entry; remove it or give it a value")
				ok = false
				continue
			}
			s, good := d.scalarText(p, item)
			ok = ok && good
			out = append(out, s)
		}
		if ok {
			*dst = out
		} else {
			d.failed[path] = true // the default stays; do not validate it
		}
	}
}

func (d *decoder) boolean(dst *bool) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" && n.Decode(dst) == nil {
			return
		}
		d.errorf(n.Line, path, "expected true or false, got %s", describe(n))
	}
}

// whole decodes an integer node; it reports and returns false for anything
// else, including fractions and numbers beyond int64.
func (d *decoder) whole(path string, n *yaml.Node) (int64, bool) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		var v int64
		if err := n.Decode(&v); err != nil {
			d.errorf(n.Line, path, "%s is too large", n.Value)
			return 0, false
		}
		return v, true
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && bigIntRE.MatchString(n.Value) {
		// yaml.v3 resolves an integer beyond 64 bits as a float.
		d.errorf(n.Line, path, "%s is too large", n.Value)
		return 0, false
	}
	d.errorf(n.Line, path, "expected a whole number, got %s", describe(n))
	return 0, false
}

var bigIntRE = regexp.MustCompile(`^[-+]?[0-9_]+$`)

func (d *decoder) int64(dst *int64) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if v, ok := d.whole(path, n); ok {
			*dst = v
		}
	}
}

func (d *decoder) int(dst *int) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if v, ok := d.whole(path, n); ok {
			if int64(int(v)) != v {
				d.errorf(n.Line, path, "%s is too large", n.Value)
				return
			}
			*dst = int(v)
		}
	}
}

// sizeNode reads a size: an integer of bytes or a string with a unit.
func (d *decoder) sizeNode(path string, n *yaml.Node) (Size, bool) {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!int":
			var v int64
			if n.Decode(&v) == nil && v >= 0 {
				return Size(v), true
			}
		case "!!str":
			s, err := ParseSize(n.Value)
			if err != nil {
				d.errorf(n.Line, path, "%v", err)
				return 0, false
			}
			return s, true
		}
		d.errorf(n.Line, path, "invalid size %s: %s", describe(n), sizeForms)
		return 0, false
	}
	d.errorf(n.Line, path, "expected a size, got %s; %s", describe(n), sizeForms)
	return 0, false
}

func (d *decoder) size(dst *Size) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if v, ok := d.sizeNode(path, n); ok {
			*dst = v
		}
	}
}

func (d *decoder) duration(dst *Duration) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			switch n.ShortTag() {
			case "!!str":
				v, err := parseDuration(n.Value)
				if err != nil {
					d.errorf(n.Line, path, "%v", err)
					return
				}
				*dst = v
				return
			case "!!int":
				var v int64
				if n.Decode(&v) == nil && v == 0 {
					*dst = 0
					return
				}
				d.errorf(n.Line, path, "invalid duration %s: a number needs a unit; write %ss for seconds (units: ns, us, ms, s, m, h)", n.Value, n.Value)
				return
			}
		}
		d.errorf(n.Line, path, "expected a duration such as 30s or 1m30s, got %s", describe(n))
	}
}

// count reads workers.count: a number ≥ 1, or "auto" (stored as 0).
func (d *decoder) count(dst *int) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			switch {
			case n.ShortTag() == "!!str" && n.Value == "auto":
				*dst = 0
				return
			case n.ShortTag() == "!!int":
				var v int64
				if n.Decode(&v) == nil && v >= 1 && int64(int(v)) == v {
					*dst = int(v)
					return
				}
				d.errorf(n.Line, path, "expected a number of at least 1 or \"auto\", got %s", n.Value)
				return
			}
		}
		d.errorf(n.Line, path, "expected a number or \"auto\", got %s", describe(n))
	}
}

func (d *decoder) env(dst *map[string]string) func(string, *yaml.Node) {
	return d.stringMap(dst, "variable names to values, such as {DJANGO_SETTINGS_MODULE: mysite.settings}", "for an empty value")
}

// stringMap decodes a mapping of names to text values: any scalar is taken
// as written (`DEBUG: true` means the text "true"). what describes the
// mapping for messages; empty says what "" means for a value.
func (d *decoder) stringMap(dst *map[string]string, what, empty string) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping of %s, got %s", what, describe(n))
			return
		}
		out := map[string]string{}
		ok := true
		d.pairs(path, n, func(key string, k, v *yaml.Node) {
			p := join(path, key)
			d.lines[p] = v.Line
			switch {
			case isNull(v):
				d.errorf(v.Line, p, "no value; write %s: \"\" %s", key, empty)
				ok = false
				return
			case v.Kind != yaml.ScalarNode:
				d.errorf(v.Line, p, "expected a string value, got %s", describe(v))
				ok = false
				return
			}
			out[key] = v.Value
		})
		if ok {
			*dst = out
		} else {
			d.failed[path] = true
		}
	}
}

func (d *decoder) static(dst *[]Static) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Static{}
		ok := d.listOf(path, n, "a list of {url: /static/, dir: /app/static} entries", func(i int, p string, item *yaml.Node) {
			var s Static
			before := len(d.errs)
			d.section(p, item, []field{
				{"url", d.str(&s.URL)},
				{"dir", d.str(&s.Dir)},
				{"file", d.str(&s.File)},
				{"cache", d.duration(&s.Cache)},
			})
			out = append(out, s) // kept even when broken, so static[i] stays entry i
			if len(d.errs) > before {
				return
			}
			var missing []string
			if m := d.missing(p, "url"); m != "" {
				missing = append(missing, m)
			}
			if d.missing(p, "dir", "file") == "dir and file" {
				missing = append(missing, "dir")
			}
			if len(missing) > 0 {
				d.errorf(item.Line, p, "missing %s; each entry needs url and dir, e.g. {url: /static/, dir: /app/static}, or url and file, e.g. {url: /favicon.ico, file: /app/static/favicon.ico}", strings.Join(missing, " and "))
			}
		})
		if ok {
			*dst = out
		}
	}
}

// config decodes the root mapping into c, which holds the defaults.
func (d *decoder) config(c *Config, root *yaml.Node) {
	w := &c.Workers
	p := &c.Proxy
	d.section("", root, []field{
		{"listen", d.strs(&c.Listen)},
		{"tls", d.tls(&c.TLS)},
		{"admin", func(path string, n *yaml.Node) {
			d.section(path, n, []field{{"listen", d.str(&c.Admin.Listen)}})
		}},
		{"app", func(path string, n *yaml.Node) {
			d.section(path, n, []field{
				{"module", d.str(&c.App.Module)},
				{"chdir", d.str(&c.App.Chdir)},
				{"python", d.str(&c.App.Python)},
				{"pythonpath", d.strs(&c.App.PythonPath)},
				{"env", d.env(&c.App.Env)},
				{"user", d.str(&c.App.User)},
				{"reload_on", d.strs(&c.App.ReloadOn)},
				{"interface", d.str(&c.App.Interface)},
			})
		}},
		{"workers", func(path string, n *yaml.Node) {
			d.section(path, n, []field{
				{"count", d.count(&w.Count)},
				{"threads", d.int(&w.Threads)},
				{"preload", d.boolean(&w.Preload)},
				{"max_requests", d.int64(&w.MaxRequests)},
				{"max_requests_jitter", d.int64(&w.MaxRequestsJitter)},
				{"max_rss", d.size(&w.MaxRSS)},
				{"timeout", d.duration(&w.Timeout)},
				{"graceful_timeout", d.duration(&w.GracefulTimeout)},
				{"concurrency", d.int(&w.Concurrency)},
				{"drain_timeout", d.duration(&w.DrainTimeout)},
			})
		}},
		{"static", d.static(&c.Static)},
		{"mounts", d.mounts(&c.Mounts)},
		{"proxy", func(path string, n *yaml.Node) {
			d.section(path, n, []field{
				{"max_body_size", d.size(&p.MaxBodySize)},
				{"body_buffer_size", d.size(&p.BodyBufferSize)},
				{"trusted_proxies", d.strs(&p.TrustedProxies)},
				{"access_log", d.str(&p.AccessLog)},
				{"request_id", d.boolean(&p.RequestID)},
				{"queue", func(path string, n *yaml.Node) {
					d.section(path, n, []field{
						{"size", d.int(&p.Queue.Size)},
						{"timeout", d.duration(&p.Queue.Timeout)},
					})
				}},
				{"compression", d.compression(&p.Compression)},
				{"headers", d.headers(&p.Headers)},
				{"limits", d.proxyLimits(&p.Limits)},
				{"error_pages", d.errorPages(&p.ErrorPages)},
			})
		}},
		{"cache", d.cache(&c.Cache)},
		{"shutdown", func(path string, n *yaml.Node) {
			d.section(path, n, []field{{"delay", d.duration(&c.Shutdown.Delay)}})
		}},
		{"resources", func(path string, n *yaml.Node) {
			r := &c.Resources
			d.section(path, n, []field{
				{"workers", d.resources(&r.Workers)},
				{"worker", d.resources(&r.Worker)},
				{"proxy", d.resources(&r.Proxy)},
			})
		}},
		{"tasks", func(path string, n *yaml.Node) {
			d.section(path, n, []field{
				{"before_start", d.tasks(&c.Tasks.BeforeStart)},
				{"before_roll", d.tasks(&c.Tasks.BeforeRoll)},
			})
		}},
		{"programs", d.programs(&c.Programs)},
		{"cron", d.jobs(&c.Cron)},
		{"upstreams", d.upstreams(&c.Upstreams)},
		{"routes", d.routes(&c.Routes)},
		{"hosts", d.hosts(&c.Hosts)},
		{"locations", d.locations(&c.Locations)},
	})
}
