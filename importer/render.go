package importer

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// line is one line of the output: YAML text and the comment that goes with it.
type line struct{ text, comment string }

// commentColumn caps how far comments are pushed right to line up.
const commentColumn = 44

// render writes the berth.yaml: a header naming the inputs, the translated
// keys in the order of berth's config reference, each with its source, then
// the settings that were not translated.
func (b *builder) render(inputs []string) []byte {
	var lines []line
	emit := func(text string, it *item) {
		c := ""
		if it != nil {
			c = it.src.String()
			if it.note != "" {
				c += ": " + it.note
			}
		}
		lines = append(lines, line{text, c})
	}
	scalar := func(indent, key, path string) {
		if it := b.scalars[path]; it != nil {
			emit(fmt.Sprintf("%s%s: %s", indent, key, yamlScalar(it.value)), it)
		}
	}
	list := func(indent, key, path string) {
		l := b.lists[path]
		if len(l) == 0 {
			return
		}
		emit(indent+key+":", nil)
		for i := range l {
			emit(fmt.Sprintf("%s  - %s", indent, yamlScalar(l[i].value)), &l[i])
		}
	}
	section := func(name string, keys ...string) bool {
		for _, k := range keys {
			if b.scalars[name+"."+k] != nil || len(b.lists[name+"."+k]) > 0 {
				return true
			}
		}
		return false
	}

	list("", "listen", "listen")
	if len(b.certs) > 0 || section("tls", "redirect_http", "hsts") {
		emit("tls:", nil)
		if len(b.certs) > 0 {
			emit("  certificates:", nil)
			for i := range b.certs {
				c := &b.certs[i]
				emit("    - cert: "+yamlScalar(c.cert.value), &c.cert)
				emit("      key: "+yamlScalar(c.key.value), &c.key)
			}
		}
		scalar("  ", "redirect_http", "tls.redirect_http")
		scalar("  ", "hsts", "tls.hsts")
	}
	if section("app", "module", "chdir", "python", "pythonpath", "user", "reload_on") || len(b.env) > 0 {
		emit("app:", nil)
		scalar("  ", "module", "app.module")
		scalar("  ", "chdir", "app.chdir")
		scalar("  ", "python", "app.python")
		list("  ", "pythonpath", "app.pythonpath")
		if len(b.env) > 0 {
			emit("  env:", nil)
			for i := range b.env {
				e := &b.env[i]
				emit(fmt.Sprintf("    %s: %s", yamlScalar(e.name), yamlScalar(e.value)), &e.item)
			}
		}
		scalar("  ", "user", "app.user")
		list("  ", "reload_on", "app.reload_on")
	}
	workerKeys := []string{"count", "threads", "preload", "max_requests", "max_requests_jitter", "max_rss", "timeout", "graceful_timeout"}
	if section("workers", workerKeys...) {
		emit("workers:", nil)
		for _, k := range workerKeys {
			scalar("  ", k, "workers."+k)
		}
	}
	if len(b.static) > 0 {
		emit("static:", nil)
		for i := range b.static {
			s := &b.static[i]
			emit("  - url: "+yamlScalar(s.url.value), &s.url)
			if s.file {
				emit("    file: "+yamlScalar(s.dir.value), &s.dir)
			} else {
				emit("    dir: "+yamlScalar(s.dir.value), &s.dir)
			}
			if s.cache != nil {
				emit("    cache: "+yamlScalar(s.cache.value), s.cache)
			}
		}
	}
	compressionKeys := []string{"enabled", "min_length", "types"}
	if section("proxy", "max_body_size", "body_buffer_size", "trusted_proxies", "access_log", "limits.connections_per_client") ||
		section("proxy.compression", compressionKeys...) || len(b.headers) > 0 || len(b.errorPages) > 0 {
		emit("proxy:", nil)
		scalar("  ", "max_body_size", "proxy.max_body_size")
		scalar("  ", "body_buffer_size", "proxy.body_buffer_size")
		list("  ", "trusted_proxies", "proxy.trusted_proxies")
		scalar("  ", "access_log", "proxy.access_log")
		if section("proxy.compression", compressionKeys...) {
			emit("  compression:", nil)
			for _, k := range compressionKeys {
				scalar("    ", k, "proxy.compression."+k)
			}
		}
		b.renderHeaders("  ", b.headers, emit)
		if section("proxy.limits", "connections_per_client") {
			emit("  limits:", nil)
			scalar("    ", "connections_per_client", "proxy.limits.connections_per_client")
		}
		if len(b.errorPages) > 0 {
			emit("  error_pages:", nil)
			for _, code := range slices.Sorted(maps.Keys(b.errorPages)) {
				it := b.errorPages[code]
				emit(fmt.Sprintf("    %d: %s", code, yamlScalar(it.value)), &it)
			}
		}
	}
	if len(b.cacheRoutes) > 0 {
		emit("cache:", nil)
		emit("  routes:", nil)
		for i := range b.cacheRoutes {
			r := &b.cacheRoutes[i]
			emit("    - url: "+yamlScalar(r.url.value), &r.url)
			if r.stale != nil {
				emit("      stale: "+yamlScalar(r.stale.value), r.stale)
			}
		}
	}
	// One line per entry, so its source comment sits on every value.
	comp := func(indent string, list string) {
		for i := range b.companions[list] {
			c := &b.companions[list][i]
			words := make([]string, len(c.command))
			for j, w := range c.command {
				words[j] = flowScalar(w)
			}
			sched := ""
			if c.schedule != "" {
				sched = ", schedule: " + flowScalar(c.schedule)
			}
			emit(fmt.Sprintf("%s- {name: %s%s, command: [%s]}", indent, flowScalar(c.name), sched, strings.Join(words, ", ")), &item{src: c.src, note: c.note})
		}
	}
	if len(b.companions[listTasks]) > 0 {
		emit("tasks:", nil)
		emit("  before_start:", nil)
		comp("    ", listTasks)
	}
	if len(b.companions[listPrograms]) > 0 {
		emit("programs:", nil)
		comp("  ", listPrograms)
	}
	if len(b.companions[listCron]) > 0 {
		emit("cron:", nil)
		comp("  ", listCron)
	}

	if len(b.upstreams) > 0 {
		emit("upstreams:", nil)
		for i := range b.upstreams {
			u := &b.upstreams[i]
			emit("  "+u.name+":", &item{src: u.src})
			for j := range u.keys {
				k := &u.keys[j]
				emit(fmt.Sprintf("    %s: %s", k.key, yamlScalar(k.value)), &k.item)
			}
			emit("    servers:", nil)
			for j := range u.servers {
				emit("      - "+yamlScalar(u.servers[j].value), &u.servers[j])
			}
		}
	}
	entries := func(key string, l []item) {
		if len(l) > 0 {
			emit(key+":", nil)
			for i := range l {
				emit("  - "+yamlScalar(l[i].value), &l[i])
			}
		}
	}
	entries("routes", b.routes)
	entries("hosts", b.hosts)
	if len(b.locations) > 0 {
		emit("locations:", nil)
		for i := range b.locations {
			l := &b.locations[i]
			emit(fmt.Sprintf("  - %s: %s", l.match.key, yamlScalar(l.match.value)), &l.match.item)
			if len(l.access) > 0 {
				emit("    access:", nil)
				for j := range l.access {
					emit("      - "+yamlScalar(l.access[j].value), &l.access[j])
				}
			}
			if l.limit != nil {
				emit("    limit: "+yamlScalar(l.limit.value), l.limit)
			}
			if l.auth != nil {
				emit("    auth: "+yamlScalar(l.auth.value), l.auth)
			}
			if l.answer != nil {
				emit(fmt.Sprintf("    %s: %s", l.answer.key, yamlScalar(l.answer.value)), &l.answer.item)
			}
			b.renderHeaders("    ", l.headers, emit)
		}
	}

	var out strings.Builder
	out.WriteString("# berth.yaml written by `berth import` from " + strings.Join(inputs, ", ") + ".\n")
	out.WriteString("# Each comment names the source of its setting: FILE:LINE KEY. What was not\n")
	out.WriteString("# translated is listed at the end. Check it with `berth check --config FILE`.\n")
	if len(lines) == 0 {
		out.WriteString("# Nothing translated: berth's defaults apply.\n")
	}
	width := 0
	for _, l := range lines {
		if l.comment != "" && len(l.text) > width && len(l.text) < commentColumn {
			width = len(l.text)
		}
	}
	for _, l := range lines {
		out.WriteString(l.text)
		if l.comment != "" {
			out.WriteString(strings.Repeat(" ", max(width-len(l.text), 0)+2))
			out.WriteString("# ")
			out.WriteString(firstLine(l.comment))
		}
		out.WriteString("\n")
	}
	b.renderSkipped(&out)
	return []byte(out.String())
}

// renderHeaders writes a headers: mapping, one field a line.
func (b *builder) renderHeaders(indent string, h []headerItem, emit func(string, *item)) {
	if len(h) == 0 {
		return
	}
	emit(indent+"headers:", nil)
	for i := range h {
		emit(fmt.Sprintf("%s  %s: %s", indent, yamlScalar(h[i].name), yamlScalar(h[i].value)), &h[i].item)
	}
}

// renderSkipped lists the settings that were not translated, those that
// change behaviour first.
func (b *builder) renderSkipped(out *strings.Builder) {
	var changed, notNeeded []Skipped
	for _, s := range b.skipped {
		if s.Reason == NotNeeded {
			notNeeded = append(notNeeded, s)
		} else {
			changed = append(changed, s)
		}
	}
	write := func(s Skipped, reason bool) {
		out.WriteString("#   " + s.Source.String())
		if s.Value != "" {
			out.WriteString(" = " + s.Value)
		}
		out.WriteString("\n#       ")
		if reason {
			out.WriteString(s.Reason.String() + ": ")
		}
		out.WriteString(s.Why + "\n")
	}
	if len(changed) > 0 {
		fmt.Fprintf(out, "\n# NOT TRANSLATED (%d): berth will not do these; `berth import --check` fails while\n# any is listed.\n", len(changed))
		for _, s := range changed {
			write(s, true)
		}
	}
	if len(notNeeded) > 0 {
		fmt.Fprintf(out, "\n# Not needed in berth (%d): berth does these by itself, or they have no effect.\n", len(notNeeded))
		for _, s := range notNeeded {
			write(s, false)
		}
	}
}

// plainWord is a string YAML reads as itself inside a flow sequence.
var plainWord = regexp.MustCompile(`^[A-Za-z_./%+@-][A-Za-z0-9_./%+@=:-]*$`)

// flowScalar writes s for a flow sequence ([a, b]): plain when YAML reads
// it back as the same string, else double-quoted (JSON's quoting is
// YAML's).
func flowScalar(s string) string {
	if plainWord.MatchString(s) && !strings.HasSuffix(s, ":") && yamlScalar(s) == s {
		return s
	}
	var q strings.Builder
	enc := json.NewEncoder(&q)
	enc.SetEscapeHTML(false) // > and & read better as themselves
	enc.Encode(s)
	return strings.TrimSuffix(q.String(), "\n")
}

// yamlScalar writes v as one YAML scalar, quoted when YAML would read it
// as something else.
func yamlScalar(v any) string {
	switch v.(type) {
	case flow:
		return display(v)
	case string:
	default:
		return display(v)
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%q", v)
	}
	s := strings.TrimSuffix(string(out), "\n")
	if strings.Contains(s, "\n") {
		// A multi-line block scalar would break the one-line layout.
		return fmt.Sprintf("%q", v)
	}
	return s
}
