package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
	pyworker "github.com/berth-dev/berth/worker"
)

// newGeneration resolves everything a set of workers needs before any is
// started, so that a bad module path or a missing interpreter is an error
// at reload time, with the old workers untouched.
func (s *Supervisor) newGeneration(cfg *config.Config, code bool) (*generation, error) {
	s.genSeq++
	g := &generation{n: s.genSeq, cfg: cfg, module: cfg.App.Module, iface: cfg.App.Interface, tail: &logTail{}}
	if cfg.Edge() {
		g.module = edgeModule // no worker: nothing to resolve
		return g, nil
	}
	if _, err := exec.LookPath(cfg.App.Python); err != nil {
		return nil, fmt.Errorf("app.python: %q cannot be run: %w; install Python 3 or set app.python to an interpreter path (a venv's bin/python works)", cfg.App.Python, err)
	}
	if g.module == "" {
		m, err := pyworker.DiscoverInterface(cfg.App.Chdir, cfg.App.Interface)
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		if m == "" {
			m = pyworker.DemoModule
			g.iface = "wsgi" // whatever app.interface says: the demo is WSGI
			g.pypath = append(g.pypath, s.runDir)
			if !code {
				s.log.Printf("no WSGI app found in %s: serving the built-in demo app (mount your app at %s or set app.module)", cfg.App.Chdir, cfg.App.Chdir)
			}
		}
		g.module = m
	}
	g.pypath = append(g.pypath, cfg.App.PythonPath...)
	if cfg.Workers.Preload {
		g.zygote = &zygote{gen: g}
	}
	g.mounts = map[string]*poolApp{}
	for _, m := range cfg.Mounts {
		a := &poolApp{module: m.Module, iface: m.Interface, threads: m.Workers.Threads}
		if m.Workers.Preload {
			a.zygote = &zygote{gen: g, pool: m.Name}
		}
		g.mounts[m.Name] = a
	}
	return g, nil
}

// startGeneration starts g's zygote (preload); its workers are started by
// the slots. It is separate from newGeneration so that boot can resolve the
// app (a config error exits 2 at once) and still start nothing before the
// before-start tasks have run.
func (s *Supervisor) startGeneration(g *generation) {
	for _, z := range g.zygotes() {
		s.startZygote(z)
	}
}

// pythonEnv is a Python child's environment; chdir is app.chdir when it
// exists, else "" (the demo app needs no directory; a missing /app is
// not an error).
func (s *Supervisor) pythonEnv(g *generation, pool, chdir string, extra map[string]string) []string {
	module, iface, threads, _, _ := g.app(pool)
	env := map[string]string{}
	for k, v := range g.cfg.App.Env {
		env[k] = v
	}
	env["PYTHONUNBUFFERED"] = "1"
	env["BERTH_APP"] = module
	env["BERTH_CHDIR"] = chdir
	env["BERTH_PYTHONPATH"] = strings.Join(g.pypath, string(os.PathListSeparator))
	env["BERTH_THREADS"] = strconv.Itoa(threads)
	env["BERTH_INTERFACE"] = iface
	env["NOTIFY_SOCKET"] = filepath.Join(s.runDir, "notify.sock")
	for k, v := range extra {
		env[k] = v
	}
	return childEnv(env)
}

func (s *Supervisor) pythonSpec(g *generation, pool, mode string, env map[string]string, files []*os.File) (ProcSpec, error) {
	cred, err := credentialFor(g.cfg.App.User)
	if err != nil {
		return ProcSpec{}, err
	}
	py, err := exec.LookPath(g.cfg.App.Python)
	if err != nil {
		return ProcSpec{}, fmt.Errorf("app.python: %w", err)
	}
	chdir, dir := g.cfg.App.Chdir, g.cfg.App.Chdir
	if st, err := os.Stat(chdir); err != nil || !st.IsDir() {
		chdir, dir = "", s.runDir
	}
	// The child's stderr is copied through to ours, keeping the last
	// lines for /status when its generation is abandoned. The caller
	// closes our copy of the write end once the child is started.
	stderr, err := teeStderr(g.tail)
	if err != nil {
		return ProcSpec{}, err
	}
	return ProcSpec{
		Stderr:     stderr,
		Path:       py,
		Args:       []string{py, "-u", filepath.Join(s.runDir, "berth_worker.py"), mode},
		Env:        s.pythonEnv(g, pool, chdir, env),
		Dir:        dir,
		Files:      files,
		Credential: cred,
		CgroupFD:   -1,
	}, nil
}

// startWorker starts a worker for sl from generation g and returns it; nil
// when it could not be started (then a restart is scheduled).
func (s *Supervisor) startWorker(sl *slot, g *generation) *worker {
	_, _, _, z, ok := g.app(sl.pool)
	if !ok {
		return nil // its mount is gone from g: the slot retires (resizePool)
	}
	sl.incarnation++
	id := fmt.Sprintf("%d.%d", sl.n, sl.incarnation)
	if sl.pool != "" {
		id = sl.pool + "." + id
	}
	w := &worker{
		id:      id,
		slot:    sl,
		gen:     g,
		started: s.now(),
		budget:  0,
	}
	// Recycling limits come from the current config, not the generation's:
	// a reload that changes only them starts no new generation.
	w.budget = budget(s.cfg, sl.pool)
	w.socket = filepath.Join(s.runDir, "w-"+w.id+".sock")
	w.deadline = w.started.Add(startTimeout)
	if z != nil {
		w.forked = true
		w.state = wForking
		s.workers[w.id] = w
		if z.ready {
			s.fork(z, w)
		} else {
			z.pending = append(z.pending, w)
		}
		return w
	}
	spec, err := s.pythonSpec(g, sl.pool, "serve", map[string]string{"BERTH_WORKER_ID": w.id, "BERTH_SOCKET": w.socket}, nil)
	if err == nil {
		// cgroup v2: the worker is born in its group (clone3
		// CLONE_INTO_CGROUP), so not one page of the app's import is
		// charged elsewhere. v1, or a kernel that refuses: moved right
		// after start by placeWorker.
		fd := s.workerCgroupFD(w)
		spec.CgroupFD = fd
		w.pid, err = s.os.Start(spec)
		if err != nil && fd >= 0 {
			s.log.Printf("worker %s: starting it inside its cgroup failed (%v); starting it outside and moving it in", w.id, err)
			spec.CgroupFD = -1
			w.pid, err = s.os.Start(spec)
		}
		if fd >= 0 {
			unix.Close(fd)
		}
		spec.Stderr.Close()
	}
	if err != nil {
		s.log.Printf("worker %s: %v", w.id, err)
		s.rollFailure(g, fmt.Sprintf("worker %s could not start: %v", w.id, err))
		s.scheduleRestart(sl)
		return nil
	}
	w.state = wStarting
	s.workers[w.id] = w
	s.procs[w.pid] = w
	s.placeWorker(w)
	return w
}

// forgetWorker drops a worker that never had (or no longer has) a process.
func (s *Supervisor) forgetWorker(w *worker) {
	w.state = wDead
	delete(s.workers, w.id)
	if w.slot.next == w {
		w.slot.next = nil
	}
	if w.slot.cur == w {
		w.slot.cur = nil
	}
}

func (s *Supervisor) scheduleRestart(sl *slot) {
	if sl.retired || s.phase > phaseDelay {
		return
	}
	if s.bootStartFailed(s.gen, fmt.Sprintf("worker slot %d", sl.n)) {
		return
	}
	sl.failures++
	d := backoff(sl.failures)
	sl.restartAt = s.now().Add(d)
	if sl.failures >= 3 {
		s.log.Printf("worker slot %d crashed %d times in a row: next start in %s", sl.n, sl.failures, d)
	}
}

func (s *Supervisor) workerReady(w *worker) {
	w.state = wReady
	w.readyAt = s.now()
	w.gen.everReady = true
	s.bootPolicy.served = true
	sl := w.slot
	took := w.readyAt.Sub(w.started).Round(time.Millisecond)
	s.metrics.readyDuration.Observe(w.readyAt.Sub(w.started).Seconds())
	switch {
	case sl.next == w:
		old := sl.cur
		sl.cur, sl.next = w, nil
		if old != nil && old.state <= wReady {
			why := old.retiring
			if why == "" {
				why = "replaced"
				old.retiring = why
			}
			s.log.Printf("worker %s (pid %d) ready in %s, replacing worker %s (%s, %d requests)", w.id, w.pid, took, old.id, why, old.requests)
			s.drain(old)
		} else if s.bootDone {
			s.log.Printf("worker %s (pid %d) ready in %s", w.id, w.pid, took)
		}
	case sl.cur == w:
		if s.bootDone {
			s.log.Printf("worker %s (pid %d) ready in %s", w.id, w.pid, took)
		}
	}
	if sl.retired {
		// Scaled down while it was starting.
		w.retiring = "scale-down"
		s.drain(w)
	}
	s.refineAuto()
	if len(s.proxies) == 0 && s.proxyRestartAt.IsZero() && s.phase == running {
		if err := s.startProxy(); err != nil {
			s.log.Printf("%v", err)
			s.proxyFail++
			s.proxyRestartAt = s.now().Add(backoff(s.proxyFail))
		}
	}
	s.sendWorkers()
	s.checkReload()
	s.checkReady()
}

// drain takes w out of routing; it is stopped once every proxy reports it
// idle (or after graceful_timeout).
func (s *Supervisor) drain(w *worker) {
	if w.state >= wDraining {
		return
	}
	if w.state < wReady {
		s.stopWorker(w) // never routed: nothing to drain
		return
	}
	w.state = wDraining
	w.deadline = s.now().Add(s.cfg.Workers.GracefulTimeout.D())
	w.drainedBy = map[int]bool{}
	s.metrics.restarts.WithLabelValues(w.retiring).Inc()
	s.restarts[w.retiring]++
	if len(s.proxies) == 0 {
		s.stopWorker(w)
	}
}

func (s *Supervisor) stopWorker(w *worker) {
	if w.state >= wStopping {
		return
	}
	if w.state == wForking {
		// No process yet: the zygote's reply will find it gone and kill it.
		s.forgetWorker(w)
		return
	}
	w.state = wStopping
	s.stop(&w.stopSeq, w.pid, syscall.SIGTERM, s.cfg.Workers.GracefulTimeout.D())
}

func (s *Supervisor) workerExited(w *worker, e Exit) {
	sl := w.slot
	was := w.state
	w.state = wDead
	delete(s.workers, w.id)
	os.Remove(w.socket)
	// The group is released after the exit is explained: its OOM counter
	// is the evidence.
	defer s.releaseWorkerCgroup(w)
	expected := was >= wStopping && w.retiring != ""
	lived := s.now().Sub(w.started)
	if sl.next == w {
		sl.next = nil
	}
	if sl.cur == w {
		sl.cur = nil
	}
	switch {
	case expected || (was == wStopping && s.phase != running):
		// a stop we asked for
	case was <= wStarting && e.Status.Exited() && e.Status.ExitStatus() == pyworker.ExitImport &&
		s.importFailed(w.gen, fmt.Sprintf("worker %s", w.id)):
		s.sendWorkers()
		return
	case was <= wStarting && !w.forked && s.bootImportDied(w.gen, "worker "+w.id, e):
		s.sendWorkers()
		return
	default:
		cause := s.exitCause(w, e)
		s.metrics.restarts.WithLabelValues(cause).Inc()
		s.restarts[cause]++
		s.log.Printf("worker %s (pid %d) %s after %s and %d requests; replacing it", w.id, w.pid, s.describeExit(w, e, cause), lived.Round(time.Millisecond), w.requests)
		if w.readyAt.IsZero() {
			s.rollFailure(w.gen, fmt.Sprintf("worker %s %s before it was ready", w.id, s.describeExit(w, e, cause)))
		}
	}
	if lived >= healthyAfter {
		sl.failures = 0
	}
	if sl.cur == nil && sl.next == nil && !sl.retired && s.phase <= phaseDelay && s.fatal == nil {
		if expected && w.retiring != "timeout" {
			// An orderly stop of a worker that had no replacement yet
			// (count change, or its replacement died): start one now.
			sl.next = s.startWorker(sl, s.gen)
		} else {
			s.scheduleRestart(sl)
		}
	} else if sl.wantsWorker() && !expected && s.phase <= phaseDelay && s.fatal == nil {
		// The replacement died; the worker it was to replace still
		// serves, and gets another replacement after the backoff.
		s.scheduleRestart(sl)
	} else if sl.cur == nil && sl.next != nil && sl.next.state == wReady {
		sl.cur, sl.next = sl.next, nil
	}
	if sl.retired && sl.cur == nil && sl.next == nil {
		s.removeSlot(sl)
	}
	s.sendWorkers()
	s.checkReady()
	s.checkReload()
}

// importFailed handles an app that cannot be imported. At boot there is
// nothing to serve with, so berth stops with ExitAppImport instead of
// respawning forever; during a reload the new generation is abandoned and
// the old one keeps serving. It returns false when nothing was given up
// (a serving generation failed to re-import): the exit is then a crash.
func (s *Supervisor) importFailed(g *generation, who string) bool {
	if g.failed != "" {
		return true
	}
	why := fmt.Sprintf("%s: the app %s failed to import (traceback above)", who, g.module)
	if g == s.gen && !s.bootDone && len(s.gens) == 1 {
		g.failed = why
		s.failBoot(ExitAppImport, g.failed+"; fix the app or app.module and start again")
		return true
	}
	return s.abandonGeneration(g, why)
}

func (s *Supervisor) exitCause(w *worker, e Exit) string {
	if s.oomKilled(w) {
		return "oom"
	}
	if e.Status.Signaled() {
		return "signal"
	}
	return "crash"
}

func (s *Supervisor) describeExit(w *worker, e Exit, cause string) string {
	if cause == "oom" {
		return "was killed by the kernel OOM killer" + s.oomDetail(w)
	}
	return "exited unexpectedly (" + e.Describe() + ")"
}

// ---- pool size ----

func (s *Supervisor) wantWorkers(cfg *config.Config) int {
	if cfg.Edge() {
		return 0
	}
	if cfg.Workers.Count > 0 {
		return cfg.Workers.Count
	}
	n, why := s.autoWorkers()
	s.log.Printf("%s", why)
	return n
}

// resize grows or shrinks the main app's pool to n slots.
func (s *Supervisor) resize(n int) {
	if n < 1 && !s.cfg.Edge() {
		n = 1
	}
	s.resizePool("", n)
}

// resizePool grows or shrinks pool to n slots (0: a mount removed).
func (s *Supervisor) resizePool(pool string, n int) {
	active := s.activeSlotsIn(pool)
	for active < n {
		// Reuse the lowest free slot number so ids stay small.
		num := 1
		for used := true; used; {
			used = false
			for _, sl := range s.slots {
				if sl.n == num && sl.pool == pool {
					used = true
					num++
					break
				}
			}
		}
		sl := &slot{n: num, pool: pool}
		s.slots = append(s.slots, sl)
		sl.cur = s.startWorker(sl, s.gen)
		active++
	}
	for i := len(s.slots) - 1; i >= 0 && active > n; i-- {
		sl := s.slots[i]
		if sl.retired || sl.pool != pool {
			continue
		}
		sl.retired = true
		sl.restartAt = time.Time{}
		active--
		if sl.next != nil {
			sl.next.retiring = "scale-down"
			s.stopWorker(sl.next)
		}
		if sl.cur != nil {
			sl.cur.retiring = "scale-down"
			s.drain(sl.cur)
		}
		if sl.cur == nil && sl.next == nil {
			s.removeSlot(sl)
		}
	}
	s.sendWorkers()
}

func (s *Supervisor) removeSlot(sl *slot) {
	for i, x := range s.slots {
		if x == sl {
			s.slots = append(s.slots[:i], s.slots[i+1:]...)
			return
		}
	}
}

func (s *Supervisor) scaleBy(d int) {
	if s.cfg.Edge() {
		s.log.Printf("%s: berth runs as an edge (routes send / to upstreams): there are no workers to scale; ignored", map[int]string{1: "SIGTTIN", -1: "SIGTTOU"}[d])
		return
	}
	if !s.appStarted {
		s.log.Printf("%s: the workers start after the before-start tasks; ignored", map[int]string{1: "SIGTTIN", -1: "SIGTTOU"}[d])
		return
	}
	n := s.activeSlotsIn("") + d
	if n < 1 {
		s.log.Printf("SIGTTOU: already at 1 worker")
		return
	}
	s.log.Printf("%s: %d → %d workers", map[int]string{1: "SIGTTIN", -1: "SIGTTOU"}[d], s.activeSlotsIn(""), n)
	s.resize(n)
	s.ready = false
	s.checkReady()
}

// replace starts a replacement for sl's current worker; the current one keeps
// serving until the replacement is ready.
//
// A worker retiring for a roll is still recycled: its replacement is started
// now if the roll's one for its slot is waiting out a backoff, and if the
// roll is abandoned the recycling is done from the generation that serves.
func (s *Supervisor) replace(w *worker, why string) {
	sl := w.slot
	if sl.cur != w || sl.retired || s.phase != running {
		return
	}
	switch {
	case w.retiring == "":
		w.retiring = why
	case (w.retiring == retireReload || w.retiring == retireCode) && w.dueWhy == "":
		w.dueWhy = why
	default:
		return // already being replaced
	}
	if sl.next == nil {
		sl.restartAt = time.Time{}
		sl.next = s.startWorker(sl, s.gen)
	}
}

// checkRSS recycles workers over max_rss (polling /proc; cgroup memory
// limits, when writable, are the hard stop).
func (s *Supervisor) checkRSS() {
	for _, w := range s.workers {
		if w.pid <= 0 || w.state != wReady {
			continue
		}
		rss, err := readRSS(w.pid)
		if err != nil {
			continue
		}
		w.rss, w.rssAt = rss, s.now()
		max := int64(s.cfg.Workers.MaxRSS)
		rolling := (w.retiring == retireReload || w.retiring == retireCode) && w.dueWhy == ""
		if max > 0 && rss > max && (w.retiring == "" || rolling) {
			s.log.Printf("worker %s (pid %d) uses %s RSS, over max_rss %s: recycling it", w.id, w.pid, humanBytes(rss), humanBytes(max))
			s.replace(w, "max_rss")
		}
	}
}

func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("statm: %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize()), err
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGi", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%dMi", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dKi", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// ---- what the proxies route to ----

// sendWorkers sends every proxy the whole routable set: ready workers, and
// draining ones marked as such.
func (s *Supervisor) sendWorkers() {
	var set []control.Worker
	for _, w := range s.sortedWorkers() {
		if w.state != wReady && w.state != wDraining {
			continue
		}
		_, _, threads, _, _ := w.gen.app(w.slot.pool)
		cw := control.Worker{
			ID:          w.id,
			Socket:      w.socket,
			Capacity:    threads,
			Draining:    w.state == wDraining,
			MaxRequests: w.budget,
			Pool:        w.slot.pool,
			Compact:     true, // berth_worker.py reads modifier1 0xBE
		}
		if w.iface == "asgi" {
			// One event loop takes many at once; the current config's
			// limit, so a reload that changes only it applies live.
			cw.Interface, cw.Capacity = "asgi", concurrency(s.cfg, w.slot.pool)
		}
		set = append(set, cw)
	}
	for _, p := range s.proxies {
		s.send(p, control.Message{Type: control.TypeWorkers, Workers: set})
	}
}

// budget is a new worker's request budget: max_requests plus its own
// jitter, so workers started together do not recycle together; 0 = never.
func budget(cfg *config.Config, pool string) int64 {
	max, jit := cfg.Workers.MaxRequests, cfg.Workers.MaxRequestsJitter
	if m := mountOf(cfg, pool); m != nil {
		max, jit = m.Workers.MaxRequests, m.Workers.MaxRequestsJitter
	}
	if max <= 0 {
		return 0
	}
	return max + jitter(jit)
}

// mountOf is pool's mount in cfg; nil for the main app or a mount cfg
// does not have.
func mountOf(cfg *config.Config, pool string) *config.Mount {
	if pool == "" {
		return nil
	}
	for i := range cfg.Mounts {
		if cfg.Mounts[i].Name == pool {
			return &cfg.Mounts[i]
		}
	}
	return nil
}

// concurrency is what one ASGI worker of pool takes at once.
func concurrency(cfg *config.Config, pool string) int {
	if m := mountOf(cfg, pool); m != nil {
		return m.Workers.Concurrency
	}
	return cfg.Workers.Concurrency
}

// wantMountWorkers is a mount's worker count (auto as workers.count).
func (s *Supervisor) wantMountWorkers(m config.Mount) int {
	if m.Workers.Count > 0 {
		return m.Workers.Count
	}
	n, _ := s.autoWorkers()
	return n
}

// resizeMounts gives every mount of cfg its worker count and retires the
// pools of mounts it no longer has.
func (s *Supervisor) resizeMounts(cfg *config.Config) {
	want := map[string]bool{}
	for _, m := range cfg.Mounts {
		want[m.Name] = true
		s.resizePool(m.Name, s.wantMountWorkers(m))
	}
	for _, sl := range s.slots {
		if sl.pool != "" && !want[sl.pool] && !sl.retired {
			s.resizePool(sl.pool, 0)
		}
	}
}
