package config

import (
	"maps"
	"reflect"
	"slices"
	"strings"
)

// Changes says what a reload from one configuration to another must do.
// The zero value means nothing running needs to change (for example only
// shutdown.delay changed, which is read when SIGTERM arrives).
type Changes struct {
	// Proxy: static, tls, cache, proxy.*, upstreams, routes, hosts, locations, workers.timeout, workers.graceful_timeout,
	// workers.drain_timeout, workers.concurrency, workers.max_requests, workers.max_requests_jitter or workers.max_rss
	// changed. Running processes take these live (a new proxy config, new
	// worker budgets); no worker is restarted for them.
	Proxy bool
	// Workers: app.module, app.chdir, app.python, app.pythonpath, app.env,
	// app.user, app.interface, workers.threads or workers.preload changed. Only a new worker
	// generation (and zygote) can take these; it is started at the new
	// workers.count.
	Workers bool
	// WorkerCount: workers.count changed. On its own (Workers false) adding
	// or retiring workers is enough.
	WorkerCount bool
	// Resources: a resources group changed; cgroups are updated in place.
	Resources bool
	// Listen: the listen list changed; new sockets are opened before the
	// old ones close, and the proxy is restarted on them.
	Listen bool
	// Admin: admin.listen changed.
	Admin bool
	// ReloadOn: app.reload_on changed; only the touch-reload watch list is
	// replaced, the workers keep running.
	ReloadOn bool
	// Companions: tasks, programs or cron changed. Programs whose own
	// settings changed are restarted, the others keep running; the
	// supervisor decides per program (an app.env change, which also sets
	// Workers, restarts every program that inherits it).
	Companions bool
}

// Diff compares two complete configurations. Nil and empty lists or maps
// count as equal; Source is ignored.
func Diff(old, new *Config) Changes {
	oa, na := &old.App, &new.App
	ow, nw := &old.Workers, &new.Workers
	return Changes{
		Proxy: !slices.Equal(old.Static, new.Static) ||
			!sameEdge(old, new) ||
			!sameLocations(old, new) ||
			!mountURLsEqual(old.Mounts, new.Mounts) ||
			old.Proxy.MaxBodySize != new.Proxy.MaxBodySize ||
			old.Proxy.BodyBufferSize != new.Proxy.BodyBufferSize ||
			!slices.Equal(old.Proxy.TrustedProxies, new.Proxy.TrustedProxies) ||
			old.Proxy.AccessLog != new.Proxy.AccessLog ||
			old.Proxy.RequestID != new.Proxy.RequestID ||
			old.Proxy.Queue != new.Proxy.Queue ||
			ow.Timeout != nw.Timeout ||
			ow.GracefulTimeout != nw.GracefulTimeout ||
			ow.DrainTimeout != nw.DrainTimeout ||
			ow.Concurrency != nw.Concurrency ||
			ow.MaxRequests != nw.MaxRequests ||
			ow.MaxRequestsJitter != nw.MaxRequestsJitter ||
			ow.MaxRSS != nw.MaxRSS ||
			!reflect.DeepEqual(old.Upstreams, new.Upstreams) && (len(old.Upstreams) > 0 || len(new.Upstreams) > 0) ||
			!sameList(old.Routes, new.Routes),
		Workers: oa.Module != na.Module ||
			oa.Chdir != na.Chdir ||
			oa.Python != na.Python ||
			!slices.Equal(oa.PythonPath, na.PythonPath) ||
			!maps.Equal(oa.Env, na.Env) ||
			oa.User != na.User ||
			oa.Interface != na.Interface ||
			ow.Threads != nw.Threads ||
			ow.Preload != nw.Preload ||
			!mountAppsEqual(old.Mounts, new.Mounts),
		WorkerCount: ow.Count != nw.Count || !mountCountsEqual(old.Mounts, new.Mounts),
		Resources:   !reflect.DeepEqual(old.Resources, new.Resources),
		Listen:      !slices.Equal(old.Listen, new.Listen),
		Admin:       old.Admin.Listen != new.Admin.Listen,
		ReloadOn:    !slices.Equal(oa.ReloadOn, na.ReloadOn),
		Companions: !sameList(old.Tasks.BeforeStart, new.Tasks.BeforeStart) ||
			!sameList(old.Tasks.BeforeRoll, new.Tasks.BeforeRoll) ||
			!sameList(old.Programs, new.Programs) ||
			!sameList(old.Cron, new.Cron),
	}
}

// mountURLsEqual compares the routing part of the mounts (names and URLs).
func mountURLsEqual(a, b []Mount) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].URLs, b[i].URLs) {
			return false
		}
	}
	return true
}

// mountAppsEqual compares what the mounts' workers run: a change needs a
// new generation. Their counts, concurrency and budgets are taken live.
func mountAppsEqual(a, b []Mount) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Name != y.Name || x.Module != y.Module || x.Interface != y.Interface ||
			x.Workers.Threads != y.Workers.Threads || x.Workers.Preload != y.Workers.Preload {
			return false
		}
	}
	return true
}

// mountCountsEqual compares the mounts' worker counts and the settings the
// proxy takes live (concurrency, request budgets).
func mountCountsEqual(a, b []Mount) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i].Workers, b[i].Workers
		if x.Count != y.Count || x.Concurrency != y.Concurrency || x.MaxRequests != y.MaxRequests || x.MaxRequestsJitter != y.MaxRequestsJitter {
			return false
		}
	}
	return true
}

// sameList compares two lists deeply, a nil list equal to an empty one.
func sameList[T any](a, b []T) bool {
	return len(a) == 0 && len(b) == 0 || reflect.DeepEqual(a, b)
}

// Any reports whether anything running must change.
func (c Changes) Any() bool { return c != Changes{} }

// String lists the changed parts for logs, e.g. "proxy, workers"; "nothing"
// for the zero value.
func (c Changes) String() string {
	var parts []string
	for _, p := range []struct {
		set  bool
		name string
	}{
		{c.Proxy, "proxy"}, {c.Workers, "workers"}, {c.WorkerCount, "worker count"},
		{c.Resources, "resources"}, {c.Listen, "listen"}, {c.Admin, "admin"}, {c.ReloadOn, "reload_on"},
		{c.Companions, "tasks/programs/cron"},
	} {
		if p.set {
			parts = append(parts, p.name)
		}
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}
