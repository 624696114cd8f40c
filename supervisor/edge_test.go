package supervisor

import (
	"strings"
	"syscall"
	"testing"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

func edgeConfig(c *config.Config) {
	c.App.Python = "/nonexistent/python3" // an edge needs none
	c.Upstreams = map[string]config.Upstream{"app": {
		Method: config.MethodRoundRobin, Protocol: config.ProtocolHTTP,
		Servers: []config.UpstreamServer{{Address: "10.0.0.2:8080", Weight: 1, MaxFails: 1, FailTimeout: config.Duration(1e10)}},
	}}
	c.Routes = []config.Route{{URL: "/", Upstream: "app"}}
}

// TestEdgeModeStartsNoWorker: routes sending / to upstreams need no app:
// no Python, no zygote, no worker, and berth is ready once its proxy is.
func TestEdgeModeStartsNoWorker(t *testing.T) {
	h := newHarness(t, edgeConfig)
	if n := len(h.os.startsOf("serve")) + len(h.os.startsOf("zygote")); n != 0 {
		t.Fatalf("edge mode started %d Python processes", n)
	}
	if len(h.s.slots) != 0 {
		t.Fatalf("edge mode has %d worker slots", len(h.s.slots))
	}
	p := h.s.activeProxy()
	var cfg *control.Proxy
	for _, m := range h.sentTo(p) {
		if m.Type == control.TypeConfig {
			cfg = m.Config
		}
	}
	if cfg == nil || len(cfg.Routes) != 1 || cfg.Upstreams["app"].Servers[0].Address != "10.0.0.2:8080" {
		t.Fatalf("the proxy's config lacks the upstreams: %+v", cfg)
	}
	h.proxyReady()
	if !h.s.ready {
		t.Fatalf("not ready with the proxy serving: %v", h.s.answerAdmin("ready"))
	}
	if st := h.s.status(); st.App != edgeModule || st.WantWorkers != 0 {
		t.Errorf("status: app %q, workers wanted %d", st.App, st.WantWorkers)
	}
	h.s.onSignal(syscall.SIGTTIN)
	if len(h.s.slots) != 0 {
		t.Errorf("SIGTTIN started a worker in edge mode")
	}
}

// TestEdgeModeReloads: upstream changes apply live; a change that would
// leave edge mode is refused and the running config stays.
func TestEdgeModeReloads(t *testing.T) {
	h := newHarness(t, edgeConfig)
	base := "listen: [$LISTEN]\nadmin: {listen: \"off\"}\nupstreams:\n  app: {servers: [\"10.0.0.2:8080\"]}\nroutes: [{url: /, upstream: app}]\n"
	h.withConfigFile(base)
	h.proxyReady()
	h.writeConfig(strings.Replace(base, `["10.0.0.2:8080"]`, `["10.0.0.2:8080", "10.0.0.3:8080"]`, 1))
	h.s.reload(reloadRequest{reason: "test"})
	if !h.s.reloadState.OK || len(h.s.cfg.Upstreams["app"].Servers) != 2 {
		t.Fatalf("upstream change not applied: %+v", h.s.reloadState)
	}
	h.writeConfig(strings.Replace(base, "url: /,", "url: /api/,", 1))
	h.s.reload(reloadRequest{reason: "test"})
	if h.s.reloadState.OK || !strings.Contains(h.s.reloadState.Message, "needs a restart") {
		t.Fatalf("leaving edge mode was not refused: %+v", h.s.reloadState)
	}
	h.s.reload(reloadRequest{reason: "SIGHUP", code: true})
	if n := len(h.os.startsOf("serve")) + len(h.os.startsOf("zygote")); n != 0 {
		t.Errorf("a code reload started %d Python processes in edge mode", n)
	}
}
