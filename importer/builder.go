package importer

import (
	"fmt"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// item is one translated value and where it came from. value is a string,
// int, int64, bool, time.Duration or config.Size.
type item struct {
	value any
	src   Source
	note  string // more comment text: how the value was derived
	// implied marks a value no source setting holds (app.python from
	// --python); it is commented but not counted as translated.
	implied bool
}

type envItem struct {
	name string
	item
}

// staticItem is one static: entry: a directory served below url, or with
// file set, the one file dir names served at url; cache is its Cache-Control
// max-age, nil for none.
type staticItem struct {
	url, dir item
	file     bool
	cache    *item
}

// flow is YAML written as it is: a flow mapping or list such as
// {allow: 10.0.0.0/8} or ["text/html", "text/css"].
type flow string

// certItem is one tls.certificates entry.
type certItem struct{ cert, key item }

// headerItem is one field of proxy.headers or of a location's headers.
type headerItem struct {
	name string
	item // value: string
}

// cacheRouteItem is one cache.routes entry; stale nil: the default.
type cacheRouteItem struct {
	url   item
	stale *item
}

// builder collects the berth settings the translators find, keeps each one's
// source, and turns a second, different value for the same key into a
// Skipped entry instead of overwriting the first.
type builder struct {
	// front is set when an nginx config is among the inputs: the app
	// servers' own listening sockets then sat behind it and are not
	// berth's listeners.
	front bool
	// appServer is set once a uWSGI or Gunicorn config was read.
	appServer bool
	// appSockets are the addresses the app servers bound ("unix:/run/x",
	// "127.0.0.1:8000"), so nginx's pass to them is known to be the app.
	appSockets []string

	scalars map[string]*item
	lists   map[string][]item // listen, app.pythonpath, app.reload_on, proxy.trusted_proxies
	env     []envItem
	static  []staticItem
	skipped []Skipped
	// companions are tasks.before_start, programs and cron, by list.
	companions map[string][]companion

	// The edge and the rules of issue 24, in the order they render.
	certs       []certItem
	headers     []headerItem // proxy.headers
	errorPages  map[int]item // proxy.error_pages
	cacheRoutes []cacheRouteItem
	upstreams   []upstreamItem // upstreams:, in the order first used
	routes      []item         // routes:, each a flow mapping
	hosts       []item         // hosts:, each a flow mapping
	locations   []locItem
	// counted are the sources of settings translated into the structures
	// above, each counted once however many entries it fed.
	counted map[string]bool
}

// upstreamItem is one upstreams: group: its keys as flow text or scalars,
// and its servers as flow mappings, each with its source.
type upstreamItem struct {
	name    string
	keys    []keyItem // method, hash, protocol, keepalive, ...
	servers []item
	src     Source
}

// keyItem is one key: value line of a mapping.
type keyItem struct {
	key string
	item
}

// locItem is one locations: entry.
type locItem struct {
	match   keyItem // path: or exact:
	access  []item  // each {allow: …} or {deny: …}
	limit   *item
	auth    *item
	answer  *keyItem // redirect: or return:
	headers []headerItem
}

func newBuilder() *builder {
	return &builder{scalars: map[string]*item{}, lists: map[string][]item{}}
}

func (b *builder) skip(src Source, value string, r Reason, why string, args ...any) {
	if len(args) > 0 {
		why = fmt.Sprintf(why, args...)
	}
	b.skipped = append(b.skipped, Skipped{Source: src, Value: shorten(firstLine(value)), Reason: r, Why: why})
}

// set records key = v. A second source with the same value is listed as not
// needed; a different value is listed as needing a decision (the first one
// is kept), except for workers.timeout, where the shorter one wins as it
// did in the old stack (harakiri and nginx's read timeout both cut a
// request off, whichever came first).
func (b *builder) set(key string, v any, src Source, note string) {
	old, ok := b.scalars[key]
	if !ok {
		b.scalars[key] = &item{value: v, src: src, note: note}
		return
	}
	val := display(v)
	shown, oldShown := val, display(old.value)
	if src.raw != "" {
		shown = src.raw
	}
	if old.src.raw != "" {
		oldShown = old.src.raw
	}
	switch {
	case display(old.value) == val:
		b.skip(src, shown, NotNeeded, "%s is already %s from %s", key, val, old.src.String())
	case key == "workers.timeout" && v.(time.Duration) < old.value.(time.Duration):
		b.skip(old.src, oldShown, NotNeeded, "berth has one request timeout, and the shorter %s from %s cut requests off first", val, src.String())
		b.scalars[key] = &item{value: v, src: src, note: note}
	case key == "workers.timeout":
		b.skip(src, shown, NotNeeded, "berth has one request timeout, and the shorter %s from %s cut requests off first", display(old.value), old.src.String())
	default:
		b.skip(src, shown, NeedsDecision, "%s is already %s from %s; berth has one %s: keep one value", key, display(old.value), old.src.String(), key)
	}
}

// add appends v to the list at key, once.
func (b *builder) add(key string, v string, src Source, note string) {
	for _, it := range b.lists[key] {
		if it.value == v {
			b.skip(src, v, NotNeeded, "%s already holds %s from %s", key, v, it.src.String())
			return
		}
	}
	b.lists[key] = append(b.lists[key], item{value: v, src: src, note: note})
}

// setEnv records one app.env variable.
func (b *builder) setEnv(name, value string, src Source) {
	for _, e := range b.env {
		if e.name != name {
			continue
		}
		if e.value == value {
			b.skip(src, name+"="+value, NotNeeded, "app.env already sets %s to the same value from %s", name, e.src.String())
		} else {
			b.skip(src, name+"="+value, NeedsDecision, "app.env already sets %s=%s from %s; keep one value", name, display(e.value), e.src.String())
		}
		return
	}
	b.env = append(b.env, envItem{name, item{value: value, src: src}})
}

// addHeader sets one field of proxy.headers, once per name (any case); it
// reports whether the field was added.
func (b *builder) addHeader(name, value string, src Source, note string) bool {
	for _, h := range b.headers {
		if !strings.EqualFold(h.name, name) {
			continue
		}
		if h.value == value {
			b.skip(src, name+": "+value, NotNeeded, "proxy.headers already sets %s from %s", h.name, h.src.String())
		} else {
			b.skip(src, name+": "+value, NeedsDecision, "proxy.headers already sets %s to %s from %s; berth sets one value: keep one", h.name, display(h.value), h.src.String())
		}
		return false
	}
	b.headers = append(b.headers, headerItem{name, item{value: value, src: src, note: note}})
	b.count(src)
	return true
}

// addStatic maps url onto dir, once per url; it returns the entry, nil
// when the url was mapped already.
func (b *builder) addStatic(url, dir item) *staticItem {
	return b.addStaticEntry(staticItem{url: url, dir: dir})
}

// addStaticFile maps url to the one file at file.value.
func (b *builder) addStaticFile(url, file item) *staticItem {
	return b.addStaticEntry(staticItem{url: url, dir: file, file: true})
}

func (b *builder) addStaticEntry(e staticItem) *staticItem {
	url, dir := e.url, e.dir
	for _, s := range b.static {
		if s.url.value != url.value {
			continue
		}
		if s.dir.value == dir.value {
			b.skip(url.src, fmt.Sprintf("%s → %s", url.value, dir.value), NotNeeded, "static already maps %s to %s from %s", url.value, dir.value, s.url.src.String())
		} else {
			b.skip(url.src, fmt.Sprintf("%s → %s", url.value, dir.value), NeedsDecision, "static already maps %s to %s from %s; one URL serves one directory in berth: keep one", url.value, s.dir.value, s.url.src.String())
		}
		return nil
	}
	b.static = append(b.static, e)
	return &b.static[len(b.static)-1]
}

// maxShown bounds a value in the listing; a types {} block or a long
// log_format would drown the rest.
const maxShown = 160

func shorten(s string) string {
	if r := []rune(s); len(r) > maxShown {
		return string(r[:maxShown]) + " …"
	}
	return s
}

// finish fills in what the sources imply without saying, and takes back
// what cannot stand alone: a TLS listener without a certificate.
func (b *builder) finish(opt Options) {
	if len(b.certs) == 0 {
		var kept []item
		for _, it := range b.lists["listen"] {
			if s, _ := it.value.(string); strings.HasPrefix(s, config.TLSScheme) {
				b.skip(it.src, it.src.raw, NeedsDecision, "a TLS listener needs tls.certificates, and no certificate is in force here in the files imported: import the file with ssl_certificate, or write tls.certificates")
				continue
			}
			kept = append(kept, it)
		}
		b.lists["listen"] = kept
		for _, key := range []string{"tls.redirect_http", "tls.hsts"} {
			if it := b.scalars[key]; it != nil {
				delete(b.scalars, key)
				b.skip(it.src, it.src.raw, NeedsDecision, "%s needs an https:// listener, and none was translated", key)
			}
		}
	}
	if b.appServer && b.scalars["app.python"] == nil {
		b.scalars["app.python"] = &item{
			value:   opt.Python,
			src:     Source{File: "berth import", Key: "--python"},
			note:    "the app server ran on the Python it was installed for; check this is the one with your app's packages",
			implied: true,
		}
	}
}

// translated counts the settings that became keys.
func (b *builder) translated() int {
	n := 0
	for _, it := range b.scalars {
		if !it.implied {
			n++
		}
	}
	for _, l := range b.lists {
		n += len(l)
	}
	for _, l := range b.companions {
		n += len(l)
	}
	return n + len(b.env) + len(b.static) + len(b.counted)
}

// count records that the setting at src was translated into one of the
// structures rendered beside the scalars.
func (b *builder) count(src Source) {
	if b.counted == nil {
		b.counted = map[string]bool{}
	}
	b.counted[fmt.Sprintf("%s:%d %s", src.File, src.Line, src.Key)] = true
}

// display renders a value as berth.yaml writes it.
func display(v any) string {
	if f, ok := v.(flow); ok {
		return string(f)
	}
	switch v := v.(type) {
	case time.Duration:
		return fmtDuration(v)
	case config.Size:
		return fmtSize(v)
	}
	return fmt.Sprint(v)
}

// fmtDuration writes d in the largest whole unit: 90s, 5m, 1h, 1500ms.
func fmtDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}

// fmtSize writes s with the largest binary unit that divides it: 16Mi.
func fmtSize(s config.Size) string {
	for _, u := range []struct {
		n    config.Size
		name string
	}{{1 << 40, "Ti"}, {1 << 30, "Gi"}, {1 << 20, "Mi"}, {1 << 10, "Ki"}} {
		if s != 0 && s%u.n == 0 {
			return fmt.Sprintf("%d%s", s/u.n, u.name)
		}
	}
	return fmt.Sprint(int64(s))
}
