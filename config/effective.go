package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"gopkg.in/yaml.v3"
)

// Effective renders the complete configuration as YAML: every key, in the
// order of DESIGN.md, sizes as integers of bytes, durations as Go duration
// strings, workers.count 0 as "auto" and unset resources as null. Parsing
// the output yields the same Config.
func (c *Config) Effective() ([]byte, error) {
	res, err := resourcesNode(c.Resources)
	if err != nil {
		return nil, err
	}
	count := intNode(int64(c.Workers.Count))
	if c.Workers.Count == 0 {
		count = strNode("auto")
	}
	static := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, s := range c.Static {
		m := mapNode("url", strNode(s.URL), "dir", strNode(s.Dir), "cache", strNode(s.Cache.String()))
		if s.File != "" {
			m = mapNode("url", strNode(s.URL), "file", strNode(s.File), "cache", strNode(s.Cache.String()))
		}
		m.Style = yaml.FlowStyle
		static.Content = append(static.Content, m)
	}
	emptyFlow(static)
	env := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, k := range slices.Sorted(maps.Keys(c.App.Env)) {
		env.Content = append(env.Content, strNode(k), strNode(c.App.Env[k]))
	}
	emptyFlow(env)
	tasks, programs, jobs, err := c.companionNodes()
	if err != nil {
		return nil, err
	}
	ups, routes := c.upstreamNodes()
	w, p := c.Workers, c.Proxy
	tlsNode, compression, cache := c.edgeNodes()
	hosts, locations, headers, limits, errorPages := c.locationNodes()
	root := mapNode(
		"listen", strList(c.Listen),
		"tls", tlsNode,
		"admin", mapNode("listen", strNode(c.Admin.Listen)),
		"app", mapNode(
			"module", strNode(c.App.Module),
			"chdir", strNode(c.App.Chdir),
			"python", strNode(c.App.Python),
			"pythonpath", strList(c.App.PythonPath),
			"env", env,
			"user", strNode(c.App.User),
			"reload_on", strList(c.App.ReloadOn),
			"interface", strNode(c.App.Interface),
		),
		"workers", mapNode(
			"count", count,
			"threads", intNode(int64(w.Threads)),
			"preload", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(w.Preload)},
			"max_requests", intNode(w.MaxRequests),
			"max_requests_jitter", intNode(w.MaxRequestsJitter),
			"max_rss", intNode(int64(w.MaxRSS)),
			"timeout", strNode(w.Timeout.String()),
			"graceful_timeout", strNode(w.GracefulTimeout.String()),
			"concurrency", intNode(int64(w.Concurrency)),
			"drain_timeout", strNode(w.DrainTimeout.String()),
		),
		"static", static,
		"mounts", c.mountsNode(),
		"proxy", mapNode(
			"max_body_size", intNode(int64(p.MaxBodySize)),
			"body_buffer_size", intNode(int64(p.BodyBufferSize)),
			"trusted_proxies", strList(p.TrustedProxies),
			"access_log", strNode(p.AccessLog),
			"request_id", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(p.RequestID)},
			"queue", mapNode(
				"size", intNode(int64(p.Queue.Size)),
				"timeout", strNode(p.Queue.Timeout.String()),
			),
			"compression", compression,
			"headers", headers,
			"limits", limits,
			"error_pages", errorPages,
		),
		"cache", cache,
		"shutdown", mapNode("delay", strNode(c.Shutdown.Delay.String())),
		"resources", res,
		"tasks", tasks,
		"programs", programs,
		"cron", jobs,
		"upstreams", ups,
		"routes", routes,
		"hosts", hosts,
		"locations", locations,
	)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("render effective config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render effective config: %w", err)
	}
	return buf.Bytes(), nil
}

func strNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

func intNode(i int64) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(i, 10)}
}

// mapNode builds a mapping from alternating keys and value nodes, keeping
// their order.
func mapNode(kv ...any) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i < len(kv); i += 2 {
		m.Content = append(m.Content, strNode(kv[i].(string)), kv[i+1].(*yaml.Node))
	}
	return m
}

// strList renders a list of strings on one line, double-quoted, as
// DESIGN.md writes listen: [":8080"].
func strList(l []string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
	for _, s := range l {
		item := strNode(s)
		item.Style = yaml.DoubleQuotedStyle
		n.Content = append(n.Content, item)
	}
	return n
}

// emptyFlow makes an empty collection print as [] or {}: block style has no
// way to write it.
func emptyFlow(n *yaml.Node) {
	if len(n.Content) == 0 {
		n.Style = yaml.FlowStyle
	}
}

// resourcesNode renders each group through its JSON form, so the keys are
// exactly the runtime-spec JSON field names, in the spec's field order.
func resourcesNode(r Resources) (*yaml.Node, error) {
	group := resourceNode
	w, err := group(r.Workers)
	if err != nil {
		return nil, err
	}
	wk, err := group(r.Worker)
	if err != nil {
		return nil, err
	}
	p, err := group(r.Proxy)
	if err != nil {
		return nil, err
	}
	return mapNode("workers", w, "worker", wk, "proxy", p), nil
}

// resourceNode renders one group's resources; null for nil.
func resourceNode(lr *specs.LinuxResources) (*yaml.Node, error) {
	if lr == nil {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
	}
	data, err := json.Marshal(lr)
	if err != nil {
		return nil, fmt.Errorf("render resources: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("render resources: %w", err)
	}
	n := doc.Content[0]
	blockStyle(n)
	return n, nil
}

// blockStyle drops the flow and quoting styles JSON input comes with, so
// the encoder chooses the plain YAML spelling (quoting only where needed).
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
	if n.Kind != yaml.ScalarNode {
		emptyFlow(n)
	}
}

// Check loads and validates the file at path for `berth check`. It returns
// a one-line summary such as
// "berth.yaml: configuration is valid (listen :8080, auto workers, app mysite.wsgi:application)",
// or the error listing every problem as FILE:LINE: KEY.PATH: MESSAGE.
func Check(path string) (summary string, err error) {
	c, err := Load(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: configuration is valid (%s)", path, c.summary()), nil
}

// summary names what the configuration serves, for Check and for logs.
func (c *Config) summary() string {
	workers := "auto workers"
	switch c.Workers.Count {
	case 0:
	case 1:
		workers = "1 worker"
	default:
		workers = fmt.Sprintf("%d workers", c.Workers.Count)
	}
	app := c.App.Module
	if app == "" {
		dir := c.App.Chdir
		if dir == "" {
			dir = "the working directory"
		}
		app = "discovered in " + dir
	}
	if c.Edge() {
		return fmt.Sprintf("listen %s, edge: no app, %d upstream group(s), %d route(s)", strings.Join(c.Listen, " "), len(c.Upstreams), len(c.Routes))
	}
	s := fmt.Sprintf("listen %s, %s, app %s", strings.Join(c.Listen, " "), workers, app)
	if len(c.Routes) > 0 {
		s += fmt.Sprintf(", %d upstream group(s), %d route(s)", len(c.Upstreams), len(c.Routes))
	}
	return s
}
