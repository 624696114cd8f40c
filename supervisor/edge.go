package supervisor

// edge.go: upstream groups as the proxy takes them, and edge mode: a
// config whose routes send every request to upstreams (config.Edge) runs
// no worker and no zygote, and needs no Python.

import (
	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// edgeModule stands for the app in logs and /status when there is none.
const edgeModule = "(edge: no app)"

// upstreamConfig is cfg's upstreams and routes as the proxy takes them.
func upstreamConfig(cfg *config.Config) (map[string]control.Upstream, []control.Route) {
	if len(cfg.Upstreams) == 0 && len(cfg.Routes) == 0 {
		return nil, nil
	}
	ups := make(map[string]control.Upstream, len(cfg.Upstreams))
	for name, u := range cfg.Upstreams {
		cu := control.Upstream{
			Method: u.Method, Hash: u.Hash, Protocol: u.Protocol,
			HealthPath: u.Health.Path, HealthInterval: control.Duration(u.Health.Interval),
			HealthTimeout: control.Duration(u.Health.Timeout), HealthFails: u.Health.Fails, HealthPasses: u.Health.Passes,
			Keepalive: u.Keepalive, KeepaliveTimeout: control.Duration(u.KeepaliveTimeout),
			ConnectTimeout: control.Duration(u.ConnectTimeout), Timeout: control.Duration(u.Timeout),
			RetryTries: u.Retry.Tries, RetryTimeout: control.Duration(u.Retry.Timeout),
			RetryIdempotent: u.Retry.Idempotent, RetryBudget: u.Retry.Budget, Resolve: control.Duration(u.Resolve),
		}
		for _, s := range u.Servers {
			cu.Servers = append(cu.Servers, control.UpstreamServer{
				Address: s.Address, Weight: s.Weight, MaxFails: s.MaxFails, FailTimeout: control.Duration(s.FailTimeout),
				Backup: s.Backup, Down: s.Down, MaxConns: s.MaxConns,
			})
		}
		ups[name] = cu
	}
	var routes []control.Route
	for _, r := range cfg.Routes {
		routes = append(routes, control.Route{URL: r.URL, Upstream: r.Upstream})
	}
	return ups, routes
}
