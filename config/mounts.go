package config

// mounts.go: apps mounted on URL prefixes beside the main one, each with a
// worker pool of its own (an ASGI app for /ws/ and /events/ beside a WSGI
// Django, say).

import (
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Mount serves URL prefixes with another app and its own workers. It runs
// with the main app's chdir, python, pythonpath, env and user.
type Mount struct {
	// Name labels the pool: worker ids (NAME.slot.n), logs, metrics.
	Name string `yaml:"name" json:"name"`
	// URLs are the prefixes routed to this pool: "/ws/" matches the paths
	// under it, "/ws" the path /ws and those under /ws/ (never /wsx). The
	// longest match wins over the others and over the main app; static
	// URLs win over mounts.
	URLs      []string     `yaml:"urls" json:"urls"`
	Module    string       `yaml:"module" json:"module"`       // required: pkg.module:callable
	Interface string       `yaml:"interface" json:"interface"` // auto (default), wsgi or asgi
	Workers   MountWorkers `yaml:"workers" json:"workers"`
}

// MountWorkers are a mounted pool's own worker settings; a key not written
// takes the top-level workers' value. Timeouts and max_rss stay the
// top-level ones (one proxy, one supervisor clock).
type MountWorkers struct {
	Count             int   `yaml:"count" json:"count"` // 0 = auto, as workers.count
	Threads           int   `yaml:"threads" json:"threads"`
	Concurrency       int   `yaml:"concurrency" json:"concurrency"`
	Preload           bool  `yaml:"preload" json:"preload"`
	MaxRequests       int64 `yaml:"max_requests" json:"max_requests"`
	MaxRequestsJitter int64 `yaml:"max_requests_jitter" json:"max_requests_jitter"`
}

func (d *decoder) mounts(dst *[]Mount) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Mount{}
		d.list(path, n, `{name: realtime, urls: [/ws/], module: "mysite.asgi:application"}`, func(i int, p string, it *yaml.Node) {
			m := Mount{Interface: "auto", URLs: []string{}}
			w := &m.Workers
			d.section(p, it, []field{
				{"name", d.str(&m.Name)},
				{"urls", d.strs(&m.URLs)},
				{"module", d.str(&m.Module)},
				{"interface", d.str(&m.Interface)},
				{"workers", func(path string, n *yaml.Node) {
					d.section(path, n, []field{
						{"count", d.count(&w.Count)},
						{"threads", d.int(&w.Threads)},
						{"concurrency", d.int(&w.Concurrency)},
						{"preload", d.boolean(&w.Preload)},
						{"max_requests", d.int64(&w.MaxRequests)},
						{"max_requests_jitter", d.int64(&w.MaxRequestsJitter)},
					})
				}},
			})
			out = append(out, m)
		})
		*dst = out
	}
}

// inheritMountWorkers fills each mount's workers keys not written in the
// file from the top-level workers (lines nil: a Config built in code is
// taken as it is).
func (c *Config) inheritMountWorkers(lines map[string]int) {
	if lines == nil {
		return
	}
	top := c.Workers
	for i := range c.Mounts {
		p := index("mounts", i) + ".workers."
		w := &c.Mounts[i].Workers
		set := func(key string) bool { _, ok := lines[p+key]; return ok }
		if !set("count") {
			w.Count = top.Count
		}
		if !set("threads") {
			w.Threads = top.Threads
		}
		if !set("concurrency") {
			w.Concurrency = top.Concurrency
		}
		if !set("preload") {
			w.Preload = top.Preload
		}
		if !set("max_requests") {
			w.MaxRequests = top.MaxRequests
		}
		if !set("max_requests_jitter") {
			w.MaxRequestsJitter = top.MaxRequestsJitter
		}
	}
}

// validateMounts checks the mounts; bad reports one problem at a key path.
func (c *Config) validateMounts(bad func(path, format string, args ...any)) {
	names := map[string]int{}
	urls := map[string]string{}
	for _, s := range c.Static {
		urls[s.URL] = "a static url"
	}
	for i, m := range c.Mounts {
		p := index("mounts", i)
		switch {
		case m.Name == "":
			bad(join(p, "name"), "missing; every mount needs a name such as realtime (it labels the pool's workers)")
		case !companionName.MatchString(m.Name) || !isLetter(m.Name[0]):
			bad(join(p, "name"), "%s: use up to 63 letters, digits, '.', '_' and '-', starting with a letter", quoteShort(m.Name))
		default:
			if first, dup := names[m.Name]; dup {
				bad(join(p, "name"), "%q is already the name of mounts[%d]; names must be unique", m.Name, first)
			}
			names[m.Name] = i
		}
		if len(m.URLs) == 0 {
			bad(join(p, "urls"), "missing; list the URL prefixes this app serves, e.g. [/ws/, /events/]")
		}
		for j, u := range m.URLs {
			up := index(join(p, "urls"), j)
			if !strings.HasPrefix(u, "/") || u == "/" || strings.ContainsAny(u, "?#") {
				bad(up, "%s must be a path starting with \"/\", and not \"/\" alone (that is the main app), e.g. /ws/ or /ws", quoteShort(u))
				continue
			}
			if other, dup := urls[u]; dup {
				bad(up, "%q is already %s; remove one of them", u, other)
				continue
			}
			urls[u] = "mapped by " + p
		}
		if m.Module == "" {
			bad(join(p, "module"), "missing; a mount names its app, e.g. module: \"mysite.asgi:application\"")
		} else if !moduleRE.MatchString(m.Module) {
			bad(join(p, "module"), "%s is not a module: use \"package.module\" or \"package.module:callable\"", quoteShort(m.Module))
		}
		switch m.Interface {
		case "auto", "wsgi", "asgi":
		default:
			bad(join(p, "interface"), "must be one of auto, wsgi, asgi; got %s", quoteShort(m.Interface))
		}
		w := m.Workers
		if w.Count < 0 {
			bad(join(p, "workers.count"), "must be at least 1, or 0 for auto; got %d", w.Count)
		}
		if w.Threads < 1 {
			bad(join(p, "workers.threads"), "must be at least 1, got %d", w.Threads)
		}
		if w.Concurrency < 1 {
			bad(join(p, "workers.concurrency"), "must be at least 1, got %d", w.Concurrency)
		}
		if w.MaxRequests < 0 || w.MaxRequestsJitter < 0 {
			bad(join(p, "workers.max_requests"), "max_requests and max_requests_jitter must not be negative")
		}
	}
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// mountsNode renders the mounts for Effective.
func (c *Config) mountsNode() *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, m := range c.Mounts {
		w := m.Workers
		count := strNode("auto")
		if w.Count > 0 {
			count = intNode(int64(w.Count))
		}
		wn := mapNode(
			"count", count,
			"threads", intNode(int64(w.Threads)),
			"concurrency", intNode(int64(w.Concurrency)),
			"preload", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(w.Preload)},
			"max_requests", intNode(w.MaxRequests),
			"max_requests_jitter", intNode(w.MaxRequestsJitter),
		)
		n.Content = append(n.Content, mapNode(
			"name", strNode(m.Name),
			"urls", strList(m.URLs),
			"module", strNode(m.Module),
			"interface", strNode(m.Interface),
			"workers", wn,
		))
	}
	emptyFlow(n)
	return n
}
