package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// rollMaxFailures is how many times the workers (or the zygote) of a new
// generation may die before serving, within one roll, before the roll is
// abandoned. One death is bad luck (an OOM kill, a node hiccup) and is
// retried with backoff while the old worker keeps serving; three in a row is
// the new code or config.
const rollMaxFailures = 3

// Why an old worker is being replaced by a roll (worker.retiring).
const (
	retireReload = "reload"
	retireCode   = "code reload"
)

// staged is one reload on its way in: the config it applies and everything
// built for it. Nothing running changes until commit; abort undoes all of
// it, whether the reload is refused while it is built or its new generation
// is abandoned later. A reload that needs a new worker generation commits
// when that generation serves on every slot, so the parts a client notices
// (proxy settings, listeners, admin, worker count, config generation) flip
// together and never need to be taken back.
type staged struct {
	reason string
	code   bool // re-import the app with the running config
	cfg    *config.Config
	hash   string // sha256 of the very bytes cfg was decoded from
	prev   *config.Config
	ch     config.Changes

	// Built, not yet in use; nil when unchanged.
	listeners []*listener
	admin     *adminServer          // bound, not serving until commit
	adminSet  bool                  // admin.listen changed (admin nil: moved to "off")
	cgroupsUp bool                  // cgroup limits were written for cfg: abort writes prev's back
	certs     []control.Certificate // cfg's certificates, read and checked; the newest read until commit
	access    accessFiles           // cfg's error pages and htpasswd files, likewise
	acmeRoots [][]byte              // cfg's tls.acme.ca_roots, read and checked
	udp       []*listener           // listeners given an HTTP/3 UDP group for cfg (udp.go)
	gen       *generation           // rolling in; nil when the workers stay

	prevGen  *generation
	started  time.Time
	tasksRan bool   // its tasks.before_roll succeeded
	failures int    // deaths of gen's processes before they served
	lastFail string // the latest of them, for /status
}

// RollStatus is a roll in progress, in /status.
type RollStatus struct {
	Generation int       `json:"worker_generation"`
	Reason     string    `json:"reason"`
	Since      time.Time `json:"since"`
	Failures   int       `json:"failures"`
	MaxFail    int       `json:"max_failures"`
	LastFail   string    `json:"last_failure,omitempty"`
}

// reload applies the config file (or, for code reloads, re-imports the app)
// as one transaction, Caddy's order: read once, decode strictly, validate,
// build what is new beside the old, then swap; any error before the swap
// aborts with nothing running touched.
func (s *Supervisor) reload(r reloadRequest) {
	if s.phase != running || s.fatal != nil {
		return
	}
	if r.certs || r.reason == "SIGHUP" {
		// Certificates do not wait for a roll: the proxies take them now
		// (SIGHUP re-reads them too, as nginx -s reload does).
		s.reloadCertificates(r.reason)
		s.reloadAccessFiles(r.reason)
		if r.certs {
			return
		}
	}
	if s.pending != nil || s.preRoll != nil || !s.appStarted {
		// A roll is still importing or starting workers (or waits for
		// its before-roll tasks, or the before-start tasks run). Superseding it
		// would throw its import away, and under reloads faster than an
		// import no generation would ever finish: the change waits for
		// the roll, which ends served or abandoned (never wedged), and
		// any number of changes meanwhile become one. The file is read
		// again then, so the last edit wins.
		if !s.deferred && !s.deferredCode {
			switch {
			case !s.appStarted:
				s.log.Printf("%s: the before-start tasks are running; this change applies when they are done", r.reason)
			case s.preRoll != nil:
				s.log.Printf("%s: the before-roll tasks of the previous reload are running; this change applies after that reload", r.reason)
			default:
				s.log.Printf("%s: generation %d is still rolling in; this change applies when it serves or is abandoned", r.reason, s.pending.gen.n)
			}
		}
		if r.code {
			s.deferredCode = true
		} else {
			s.deferred = true
		}
		return
	}
	if r.code {
		s.stage(&staged{reason: r.reason, code: true, cfg: s.cfg, hash: s.cfgHash})
		return
	}
	if s.opts.ConfigPath == "" {
		if r.reason == "SIGHUP" {
			s.stage(&staged{reason: "SIGHUP, no config file: re-importing the app", code: true, cfg: s.cfg, hash: s.cfgHash})
		}
		return
	}
	data, err := os.ReadFile(s.opts.ConfigPath)
	if err != nil {
		s.refuse(r.reason, fmt.Errorf("read %s: %w; the running config stays (restore the file to reload)", s.opts.ConfigPath, err))
		return
	}
	hash := hashBytes(data)
	if hash == s.cfgHash {
		if r.reason == "SIGHUP" {
			// Gunicorn's meaning of HUP after a deploy: the config did
			// not change, so the code is what should be reloaded.
			s.stage(&staged{reason: "SIGHUP, config unchanged: re-importing the app", code: true, cfg: s.cfg, hash: s.cfgHash})
		}
		return
	}
	cfg, err := config.Parse(s.opts.ConfigPath, data)
	if err == nil && s.opts.Override != nil {
		err = s.opts.Override(cfg)
	}
	if err != nil {
		// The hash is not stored: what runs is still the old file, and
		// a SIGHUP must say so again rather than call it unchanged.
		s.refuse(r.reason, err)
		return
	}
	s.stage(&staged{reason: r.reason, cfg: cfg, hash: hash})
}

// stage prepares st and either commits it at once or, when it brings a new
// worker generation, starts the roll that commits it.
func (s *Supervisor) stage(st *staged) {
	if st.code && s.cfg.Edge() {
		s.log.Printf("reload (%s): berth runs as an edge (routes send / to upstreams): there is no app to re-import", st.reason)
		return
	}
	st.prev, st.prevGen, st.started = s.cfg, s.gen, s.now()
	if !st.code {
		st.ch = config.Diff(s.cfg, st.cfg)
	}
	s.sd.reloading()
	if (st.ch.Workers || st.code) && len(st.cfg.Tasks.BeforeRoll) > 0 && !st.tasksRan {
		s.beforeRoll(st)
		return
	}
	if err := s.prepare(st); err != nil {
		s.abort(st, err.Error(), nil)
		return
	}
	if st.gen == nil {
		s.commit(st)
		return
	}
	s.pending = st
	s.roll(st)
	s.log.Printf("reload (%s): generation %d rolling in (%s)", st.reason, st.gen.n, st.summary())
	s.sd.status(fmt.Sprintf("reloading: generation %d rolling in", st.gen.n))
	s.checkReload()
}

// prepare checks everything that can be checked and builds what is new,
// old things untouched. Each step records what it built in st at once, so
// that abort releases it whichever step fails.
func (s *Supervisor) prepare(st *staged) error {
	cfg, ch := st.cfg, st.ch
	if cfg.Edge() != st.prev.Edge() {
		if cfg.Edge() {
			return fmt.Errorf("routes now send every request (url /) to upstreams, which makes berth an edge with no worker: switching to edge mode needs a restart")
		}
		return fmt.Errorf("routes no longer send every request (url /) to upstreams, so berth would need workers: switching from edge mode to an app needs a restart")
	}
	// The same checks as at boot: a user that does not exist would
	// otherwise be found only when a worker starts, with the roll under way.
	if err := preflight(realPreflightOS{}, cfg, s.runDir); err != nil {
		return err
	}
	var err error
	if st.certs, err = loadCertificates(cfg); err != nil {
		return err
	}
	if st.access, err = loadAccessFiles(cfg); err != nil {
		return err
	}
	if st.acmeRoots, err = loadACMERoots(cfg); err != nil {
		return err
	}
	if err := prepareACMEStorage(cfg); err != nil {
		return err
	}
	if ch.Listen && !s.socketActivated() {
		if st.listeners, err = s.reuseOrOpen(cfg.Listen); err != nil {
			return err
		}
	}
	if cfg.TLS.HTTP3 {
		ls := st.listeners
		if ls == nil {
			ls = s.listeners
		}
		if st.udp, err = s.openUDP(ls, cfg.Listen); err != nil {
			return err
		}
	}
	if ch.Admin {
		st.adminSet = true
		if st.admin, err = s.newAdmin(cfg.Admin.Listen); err != nil {
			return err
		}
	}
	if ch.Resources {
		// Limits cannot be tried without writing them; a write that
		// fails half way is put back by abort.
		st.cgroupsUp = true
		if err := s.updateCgroups(cfg); err != nil {
			return err
		}
	}
	if (ch.Workers || st.code) && !cfg.Edge() {
		if st.gen, err = s.newGeneration(cfg, st.code); err != nil {
			return err
		}
		s.startGeneration(st.gen)
	}
	return nil
}

// commit swaps st in: from here on it is what runs.
func (s *Supervisor) commit(st *staged) {
	if s.pending == st {
		s.pending = nil
	}
	cfg, ch, prev := st.cfg, st.ch, st.prev
	var did []string
	if !st.code {
		s.cfg, s.cfgHash = cfg, st.hash
		s.generation++
	}
	certsChanged := !st.code && s.swapCertificates(st.certs)
	accessChanged := !st.code && !st.access.equal(s.access)
	if accessChanged {
		s.access = st.access
	}
	if !st.code && s.swapACMERoots(st.acmeRoots) {
		certsChanged = true
	}
	if ch.Proxy || certsChanged || accessChanged {
		for _, p := range s.proxies {
			s.send(p, control.Message{Type: control.TypeConfig, Config: s.proxyConfig(cfg)})
		}
		did = append(did, "proxy settings swapped")
	}
	if prev.Workers.Concurrency != cfg.Workers.Concurrency {
		s.sendWorkers() // ASGI workers' capacity is the current config's
	}
	if prev.Workers.MaxRequests != cfg.Workers.MaxRequests || prev.Workers.MaxRequestsJitter != cfg.Workers.MaxRequestsJitter {
		// Running workers take the new budget at once; one already past
		// it is reported due by the proxy and replaced.
		for _, w := range s.workers {
			w.budget = budget(cfg, w.slot.pool)
		}
		s.sendWorkers()
		did = append(did, fmt.Sprintf("max_requests %d (+%d jitter) for every worker", cfg.Workers.MaxRequests, cfg.Workers.MaxRequestsJitter))
	}
	if st.listeners != nil {
		old := s.listeners
		s.listeners = st.listeners
		// The new proxy serves the new set; when it says ready the old
		// proxy stops, finishing its connections on the old sockets.
		if err := s.startProxy(); err != nil {
			s.log.Printf("%v", err)
		}
		for _, l := range old {
			if !containsListener(st.listeners, l) {
				l.close()
			}
		}
		did = append(did, "listeners reopened: "+listenerNames(st.listeners))
	} else if !st.code && (prev.TLS.HTTP3 != cfg.TLS.HTTP3 || len(st.udp) > 0) {
		// A proxy gets its UDP sockets when it starts: a new one takes
		// over as on a listen change, the old one finishes its requests.
		if err := s.startProxy(); err != nil {
			s.log.Printf("%v", err)
		}
		did = append(did, fmt.Sprintf("http3 %v: proxy restarted", cfg.TLS.HTTP3))
	}
	if !st.code && !cfg.TLS.HTTP3 {
		closeUDP(s.listeners)
	}
	if st.adminSet {
		if s.admin != nil {
			s.admin.close()
		}
		s.admin = st.admin
		if s.admin != nil {
			s.admin.serve()
		}
		did = append(did, "admin moved to "+cfg.Admin.Listen)
	}
	if st.cgroupsUp {
		did = append(did, "cgroup limits updated in place")
	}
	if st.gen != nil {
		did = append(did, fmt.Sprintf("workers now generation %d", st.gen.n))
	}
	if ch.WorkerCount || ch.Workers {
		if want := s.wantWorkers(cfg); want != s.activeSlotsIn("") {
			did = append(did, fmt.Sprintf("workers %d → %d", s.activeSlotsIn(""), want))
			s.resize(want)
		}
		s.resizeMounts(cfg)
	}
	if ch.ReloadOn || !slices.Equal(watchedFiles(prev), watchedFiles(cfg)) {
		s.restartWatch()
		did = append(did, "reload_on watch updated")
	}
	if !st.code {
		// Programs inherit app settings: each compares its resolved
		// command, so an app.env change restarts the ones it reaches.
		did = append(did, s.applyPrograms(cfg)...)
		did = append(did, s.applyCron(cfg)...)
	}
	if len(did) == 0 {
		did = append(did, "no effective change")
	}
	msg := strings.Join(did, "; ")
	if st.code {
		msg = fmt.Sprintf("fresh import of %s in generation %d", st.gen.module, st.gen.n)
	}
	s.log.Printf("reload (%s): config generation %d: %s", st.reason, s.generation, msg)
	s.reloadState = reloadStatus{At: s.now(), OK: true, Message: msg, Reason: st.reason}
	s.metrics.reloads.WithLabelValues("ok").Inc()
	s.sd.ready("reloaded: " + msg)
	s.runDeferred()
}

// abort undoes everything st built or changed and reports why. It serves
// a reload refused while it was prepared and a generation abandoned during
// its roll alike; tail is the generation's last log lines, if any.
func (s *Supervisor) abort(st *staged, why string, tail []string) {
	closeUDP(st.udp)
	st.udp = nil
	s.closeUnused(st.listeners)
	st.listeners = nil
	if st.admin != nil {
		st.admin.close()
		st.admin = nil
	}
	if st.cgroupsUp {
		st.cgroupsUp = false
		if err := s.updateCgroups(st.prev); err != nil {
			s.log.Printf("reload: putting the previous cgroup limits back: %v", err)
		}
	}
	if g := st.gen; g != nil {
		if g.failed == "" {
			g.failed = why
		}
		if s.gen == g {
			s.gen = st.prevGen
		}
		s.stopZygote(g)
		for _, w := range s.sortedWorkers() {
			if w.gen != g {
				continue
			}
			if sl := w.slot; sl.cur == w && w.state == wReady && !sl.retired {
				// It already serves in place of an old worker that is
				// gone: it keeps serving until a worker of the previous
				// generation replaces it, so the slot never goes empty.
				w.retiring = "abandoned"
				if sl.next == nil || sl.next.gen == g {
					sl.next = s.startWorker(sl, s.gen)
				}
				continue
			}
			w.retiring = "abandoned"
			s.stopWorker(w)
		}
		for _, sl := range s.slots {
			if sl.next != nil && sl.next.gen == g && sl.next.state >= wStopping {
				sl.next = nil
			}
			if w := sl.cur; w != nil && w.gen != g && (w.retiring == retireReload || w.retiring == retireCode) {
				// Back in service; a recycling that came due during
				// the roll happens now, from the generation that serves.
				w.retiring = ""
				if due := w.dueWhy; due != "" {
					w.dueWhy = ""
					s.replace(w, due)
				}
			}
			if sl.cur == nil && sl.next == nil && !sl.retired {
				sl.restartAt = time.Time{}
				sl.next = s.startWorker(sl, s.gen)
			}
		}
		s.sendWorkers()
	}
	verb := "refused"
	if s.pending == st {
		s.pending = nil
		verb = "abandoned"
	}
	s.log.Printf("reload (%s) %s, the running config is unchanged: %s", st.reason, verb, why)
	for _, l := range tail {
		s.log.Printf("  | %s", l)
	}
	s.reloadState = reloadStatus{At: s.now(), OK: false, Message: why, Reason: st.reason, LogTail: tail}
	s.metrics.reloads.WithLabelValues("failed").Inc()
	s.sd.ready("reload " + verb + ": " + why)
	s.checkReload()
	s.runDeferred()
}

// refuse reports a reload that failed before anything was built.
func (s *Supervisor) refuse(reason string, err error) {
	s.log.Printf("reload (%s) refused, the running config is unchanged: %v", reason, err)
	s.reloadState = reloadStatus{At: s.now(), OK: false, Message: err.Error(), Reason: reason}
	s.metrics.reloads.WithLabelValues("failed").Inc()
	s.sd.ready("reload refused: " + err.Error())
}

func (st *staged) summary() string {
	if st.code {
		return "fresh import"
	}
	return "changed: " + st.ch.String()
}

// roll makes st's generation current and starts a replacement for every
// slot; each old worker drains once its replacement is ready.
func (s *Supervisor) roll(st *staged) {
	g := st.gen
	why := retireReload
	if st.code {
		why = retireCode
	}
	g.prev = st.prev
	s.gens = append(s.gens, g)
	s.gen = g
	for _, sl := range s.slots {
		if sl.retired {
			continue
		}
		if sl.next != nil && sl.next.gen != g {
			sl.next.retiring = "superseded"
			s.stopWorker(sl.next)
			sl.next = nil
		}
		if w := sl.cur; w != nil {
			if w.retiring != "" && w.dueWhy == "" {
				w.dueWhy = w.retiring // recycled anyway if the roll is abandoned
			}
			w.retiring = why
		}
		if _, _, _, _, ok := g.app(sl.pool); !ok {
			// A mount the new config removed: its workers serve until
			// the reload commits and retires its pool (resizeMounts).
			continue
		}
		sl.restartAt = time.Time{}
		sl.next = s.startWorker(sl, g)
	}
}

// rollFailure counts one death (or failed start) of a process of generation
// g before it served. While g is rolling in, the failed slot is retried with
// backoff (its old worker keeps serving); at the rollMaxFailures-th failure
// checkReload abandons the roll. Only recording here keeps the abort out of
// the middle of a caller's loop over the slots.
func (s *Supervisor) rollFailure(g *generation, what string) {
	st := s.pending
	if st == nil || st.gen != g {
		return
	}
	st.failures++
	st.lastFail = what
	if st.failures < rollMaxFailures {
		s.log.Printf("generation %d: %s (failure %d of %d before the roll is abandoned); retrying with backoff, the old workers keep serving",
			g.n, what, st.failures, rollMaxFailures)
	}
}

// checkReload commits the pending roll once every slot runs its generation,
// and retires generations nothing runs any more.
func (s *Supervisor) checkReload() {
	if st := s.pending; st != nil && st.failures >= rollMaxFailures {
		s.abort(st, fmt.Sprintf("generation %d abandoned after %d failures before serving; last: %s", st.gen.n, st.failures, st.lastFail), st.gen.tail.last())
		return // abort ran checkReload again
	}
	if st := s.pending; st != nil {
		done := true
		for _, sl := range s.slots {
			if _, _, _, _, ok := st.gen.app(sl.pool); !ok {
				continue // a removed mount's pool: retired at commit
			}
			if !sl.retired && (sl.cur == nil || sl.cur.gen != st.gen || sl.cur.state != wReady) {
				done = false
			}
		}
		if done {
			s.log.Printf("generation %d serving on all %d workers", st.gen.n, s.activeSlots())
			s.commit(st)
		}
	}
	keep := s.gens[:0]
	for _, g := range s.gens {
		// The generation a roll replaces stays until the roll ends:
		// an abandoned roll restarts its workers from it.
		if g != s.gen && (s.pending == nil || (s.pending.gen != g && s.pending.prevGen != g)) {
			used := false
			for _, w := range s.workers {
				if w.gen == g && w.state < wDraining {
					used = true
				}
			}
			if !used {
				s.stopZygote(g)
				alive := false
				for _, z := range g.zygotes() {
					alive = alive || z.pid > 0
				}
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

// abandonGeneration gives up on generation g, whose app cannot be imported,
// and says whether it did. While g is rolling in, that aborts its reload:
// everything from it is undone and the previous workers keep serving. A
// generation that already serves is not stopped over a failed re-import (its
// running workers are still good): false, and its restarts go on with backoff.
func (s *Supervisor) abandonGeneration(g *generation, why string) bool {
	if st := s.pending; st != nil && st.gen == g {
		s.abort(st, why, g.tail.last())
		return true
	}
	s.log.Printf("%s; generation %d keeps its running workers and restarts with backoff", why, g.n)
	return false
}

// runDeferred applies what arrived while a roll was in progress: the file as
// it is now, then a code reload if one was asked for and nothing rolled.
func (s *Supervisor) runDeferred() {
	if s.pending != nil || s.preRoll != nil || !s.appStarted || (!s.deferred && !s.deferredCode) {
		return
	}
	file, code := s.deferred, s.deferredCode
	s.deferred, s.deferredCode = false, false
	if file {
		s.reload(reloadRequest{reason: "change deferred during the previous roll"})
	}
	if code && s.pending == nil {
		s.reload(reloadRequest{reason: "code change deferred during the previous roll", code: true})
	} else if code {
		s.deferredCode = false // the roll now under way imports the code afresh
	}
}

// hashBytes is the content hash that decides whether the config really
// changed: a touch, or a ConfigMap swap to identical content, changes
// nothing.
func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// beforeRoll runs tasks.before_roll (from the new config) before st builds
// its new generation; a failed task refuses the reload, and the running
// workers never knew.
func (s *Supervisor) beforeRoll(st *staged) {
	tr := s.newTasks(st.cfg, "before-roll", st.cfg.Tasks.BeforeRoll)
	s.rollTasks, s.preRoll = tr, st
	tr.done = func(failed *unit, why string) {
		s.preRoll = nil
		if s.phase != running || s.fatal != nil {
			return
		}
		if failed == nil {
			st.tasksRan = true
			s.stage(st)
			return
		}
		s.abort(st, why, failed.tail.last())
	}
	s.log.Printf("reload (%s): running the before-roll tasks first", st.reason)
	s.runTasks(tr)
}
