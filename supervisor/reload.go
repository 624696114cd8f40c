package supervisor

import (
	"fmt"
	"os"
	"strings"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// reload applies a new config (or, for code reloads, re-imports the app).
// Caddy's order: decode strictly → validate → build what is new → start it
// → swap → stop the old. Until the swap nothing running is touched, so any
// error leaves the old config serving.
func (s *Supervisor) reload(r reloadRequest) {
	if s.phase != running || s.fatal != nil {
		return
	}
	if r.code {
		s.rollCode(r)
		return
	}
	if s.opts.ConfigPath == "" {
		if r.reason == "SIGHUP" {
			s.rollCode(reloadRequest{reason: "SIGHUP, no config file: re-importing the app", code: true})
		}
		return
	}
	data, err := os.ReadFile(s.opts.ConfigPath)
	if err != nil {
		s.reloadFailed(r, fmt.Errorf("read %s: %w", s.opts.ConfigPath, err))
		return
	}
	hash, _ := hashFile(s.opts.ConfigPath)
	if hash == s.cfgHash {
		if r.reason == "SIGHUP" {
			// Gunicorn's meaning of HUP after a deploy: the config did
			// not change, so the code is what should be reloaded.
			s.rollCode(reloadRequest{reason: "SIGHUP, config unchanged: re-importing the app", code: true})
		}
		return
	}
	cfg, err := config.Parse(s.opts.ConfigPath, data)
	if err == nil && s.opts.Override != nil {
		err = s.opts.Override(cfg)
	}
	if err != nil {
		s.cfgHash = hash // the same broken content is not reported again
		s.reloadFailed(r, err)
		return
	}
	ch := config.Diff(s.cfg, cfg)
	if ch.Workers && s.pendingReload != nil {
		// A roll is still importing or starting workers. Superseding it
		// would throw its import away, and under reloads faster than an
		// import no generation would ever finish: the change waits for
		// the roll (cfgHash is left as it is, so the file is read again
		// then), and any number of changes meanwhile become one.
		if !s.deferred {
			s.log.Printf("%s: generation %d is still rolling in; this change applies when it serves", r.reason, s.pendingReload.n)
		}
		s.deferred = true
		return
	}
	s.sd.reloading()

	// Build and start what is new, old things untouched.
	var newListeners []*listener
	if ch.Listen && !s.socketActivated() {
		newListeners, err = s.reuseOrOpen(cfg.Listen)
		if err != nil {
			s.reloadFailed(r, err)
			return
		}
	}
	var oldAdmin *adminServer
	if ch.Admin {
		oldAdmin = s.admin
		s.admin = nil
		if err := s.startAdmin(cfg.Admin.Listen); err != nil {
			s.admin = oldAdmin
			s.closeUnused(newListeners)
			s.reloadFailed(r, err)
			return
		}
	}
	if ch.Resources {
		if err := s.updateCgroups(cfg); err != nil {
			if oldAdmin != nil {
				s.admin.close()
				s.admin = oldAdmin
			}
			s.closeUnused(newListeners)
			s.reloadFailed(r, err)
			return
		}
	}
	var g *generation
	if ch.Workers {
		g, err = s.newGeneration(cfg, false)
		if err != nil {
			s.closeUnused(newListeners)
			s.reloadFailed(r, err)
			return
		}
	}

	// Swap.
	prev := s.cfg
	s.cfg, s.cfgHash = cfg, hash
	s.generation++
	if oldAdmin != nil {
		oldAdmin.close()
	}
	var did []string
	if ch.Proxy {
		for _, p := range s.proxies {
			s.send(p, control.Message{Type: control.TypeConfig, Config: proxyConfig(cfg)})
		}
		did = append(did, "proxy settings swapped")
	}
	if prev.Workers.MaxRequests != cfg.Workers.MaxRequests || prev.Workers.MaxRequestsJitter != cfg.Workers.MaxRequestsJitter {
		// Running workers take the new budget at once; one already past
		// it is reported due by the proxy and replaced.
		for _, w := range s.workers {
			w.budget = budget(cfg)
		}
		s.sendWorkers()
		did = append(did, fmt.Sprintf("max_requests %d (+%d jitter) for every worker", cfg.Workers.MaxRequests, cfg.Workers.MaxRequestsJitter))
	}
	if ch.Listen && newListeners != nil {
		old := s.listeners
		s.listeners = newListeners
		// The new proxy serves the new set; when it says ready the old
		// proxy stops, finishing its connections on the old sockets.
		if err := s.startProxy(); err != nil {
			s.log.Printf("%v", err)
		}
		for _, l := range old {
			if !containsListener(newListeners, l) {
				l.close()
			}
		}
		did = append(did, "listeners reopened: "+listenerNames(newListeners))
	}
	if ch.Admin {
		did = append(did, "admin moved to "+cfg.Admin.Listen)
	}
	if ch.Resources {
		did = append(did, "cgroup limits updated in place")
	}
	if ch.Workers {
		g.prev = prev
		s.roll(g, "reload")
		did = append(did, fmt.Sprintf("workers rolling to generation %d", g.n))
	}
	if ch.WorkerCount || ch.Workers {
		want := s.wantWorkers(cfg)
		if want != s.activeSlots() {
			did = append(did, fmt.Sprintf("workers %d → %d", s.activeSlots(), want))
			s.resize(want)
		}
	}
	if ch.ReloadOn && s.watch != nil {
		s.watch.close()
		s.watch, _ = newWatcher(s.opts.ConfigPath, cfg.App.ReloadOn, cfg.App.Chdir, s.reloadCh, s.log)
		did = append(did, "reload_on watch updated")
	}
	if len(did) == 0 {
		did = append(did, "no effective change")
	}
	msg := strings.Join(did, "; ")
	s.log.Printf("reload (%s): generation %d: %s", r.reason, s.generation, msg)
	s.reloadState = reloadStatus{At: s.now(), OK: true, Message: msg, Reason: r.reason}
	s.metrics.reloads.WithLabelValues("ok").Inc()
	if s.pendingReload == nil {
		s.sd.ready("reloaded: " + msg)
	}
}

func (s *Supervisor) rollCode(r reloadRequest) {
	if s.pendingReload != nil {
		s.deferred, s.deferredCode = true, true
		return
	}
	s.sd.reloading()
	g, err := s.newGeneration(s.cfg, true)
	if err != nil {
		s.reloadFailed(r, err)
		return
	}
	g.prev = s.cfg
	s.roll(g, "code reload")
	s.log.Printf("reload (%s): re-importing %s in generation %d", r.reason, g.module, g.n)
	s.reloadState = reloadStatus{At: s.now(), OK: true, Message: "workers rolling to fresh code", Reason: r.reason}
	s.metrics.reloads.WithLabelValues("ok").Inc()
}

// roll makes g the current generation and starts a replacement for every
// slot; each old worker drains once its replacement is ready.
func (s *Supervisor) roll(g *generation, why string) {
	s.gens = append(s.gens, g)
	s.gen = g
	s.pendingReload = g
	for _, sl := range s.slots {
		if sl.retired {
			continue
		}
		if sl.next != nil && sl.next.gen != g {
			sl.next.retiring = "superseded"
			s.stopWorker(sl.next)
			sl.next = nil
		}
		if sl.cur != nil {
			sl.cur.retiring = why
		}
		sl.next = s.startWorker(sl, g)
	}
	s.checkReload()
}

// checkReload finishes a roll once every slot runs the new generation, and
// retires generations nothing runs any more.
func (s *Supervisor) checkReload() {
	if g := s.pendingReload; g != nil {
		done := true
		for _, sl := range s.slots {
			if !sl.retired && (sl.cur == nil || sl.cur.gen != g || sl.cur.state != wReady) {
				done = false
			}
		}
		if done {
			s.pendingReload = nil
			s.log.Printf("generation %d serving on all %d workers", g.n, s.activeSlots())
			s.sd.ready(fmt.Sprintf("serving %s with %d workers (generation %d)", g.module, s.activeSlots(), g.n))
			defer s.runDeferred()
		}
	}
	keep := s.gens[:0]
	for _, g := range s.gens {
		if g != s.gen && s.pendingReload != g {
			used := false
			for _, w := range s.workers {
				if w.gen == g && w.state < wDraining {
					used = true
				}
			}
			if !used {
				s.stopZygote(g)
				alive := g.zygote != nil && g.zygote.pid > 0
				for _, w := range s.workers {
					if w.gen == g {
						alive = true
					}
				}
				if !alive {
					continue
				}
			}
		}
		keep = append(keep, g)
	}
	s.gens = keep
}

// abandonGeneration gives up on a generation whose app cannot be imported:
// its workers stop, the previous generation stays current, and its config
// comes back so that what runs and what /status says agree.
func (s *Supervisor) abandonGeneration(g *generation, why string) {
	s.log.Printf("reload failed: %s; the previous workers keep serving", why)
	s.stopZygote(g)
	for _, w := range s.workers {
		if w.gen == g {
			w.retiring = "abandoned"
			s.stopWorker(w)
		}
	}
	var prev *generation
	for _, x := range s.gens {
		if x != g && x.failed == "" {
			prev = x
		}
	}
	if s.gen == g && prev != nil {
		s.gen = prev
		if g.prev != nil && g.prev != s.cfg {
			s.cfg = g.prev
			for _, p := range s.proxies {
				s.send(p, control.Message{Type: control.TypeConfig, Config: proxyConfig(s.cfg)})
			}
		}
	}
	if s.pendingReload == g {
		s.pendingReload = nil
		defer s.runDeferred()
	}
	for _, sl := range s.slots {
		if sl.next != nil && sl.next.gen == g {
			sl.next = nil
		}
		if sl.cur != nil && (sl.cur.retiring == "reload" || sl.cur.retiring == "code reload") {
			sl.cur.retiring = ""
		}
	}
	s.reloadState = reloadStatus{At: s.now(), OK: false, Message: why, Reason: "reload"}
	s.metrics.reloads.WithLabelValues("failed").Inc()
	s.sd.ready("reload failed: " + why)
	s.checkReload()
}

func (s *Supervisor) reloadFailed(r reloadRequest, err error) {
	s.log.Printf("reload (%s) refused, the running config is unchanged: %v", r.reason, err)
	s.reloadState = reloadStatus{At: s.now(), OK: false, Message: err.Error(), Reason: r.reason}
	s.metrics.reloads.WithLabelValues("failed").Inc()
	s.sd.ready("reload refused: " + err.Error())
}

// runDeferred applies what arrived while a roll was in progress.
func (s *Supervisor) runDeferred() {
	if !s.deferred || s.pendingReload != nil {
		return
	}
	code := s.deferredCode
	s.deferred, s.deferredCode = false, false
	s.reload(reloadRequest{reason: "change deferred during the previous roll"})
	if code && s.pendingReload == nil {
		s.rollCode(reloadRequest{reason: "code change deferred during the previous roll", code: true})
	}
}
