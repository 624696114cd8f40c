// Package supervisor is berth's PID 1: it owns every process, every
// listening socket and every cgroup, and runs one event loop that is the only
// code allowed to touch that state.
//
// Everything that happens arrives as an event on a channel read by loop:
// signals, reaped children, sd_notify datagrams from workers, control
// messages from proxies, zygote replies, config changes, admin requests (each
// with a reply channel) and a tick that drives every deadline. Nothing blocks
// in the loop for long, and nothing sleeps: a stop escalates when its
// deadline is seen by a tick.
package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
	pyworker "github.com/berth-dev/berth/worker"
)

// Tunables that are not worth a config key. Each says why it has its value.
const (
	// tick drives every deadline; 50ms keeps a SIGKILL escalation or a
	// backoff restart within a twentieth of a second of its deadline.
	tick = 50 * time.Millisecond
	// startTimeout bounds an app import: Django with many apps can take
	// tens of seconds, but a worker that never says READY must not hold
	// a slot forever.
	startTimeout = 3 * time.Minute
	// healthyAfter resets a process's crash count: one that ran this long
	// was not crash-looping.
	healthyAfter = 10 * time.Second
	backoffBase  = 100 * time.Millisecond
	backoffCap   = 10 * time.Second
	// dumpGrace is how long a stuck worker gets to write its stack
	// (faulthandler, async-signal-safe, milliseconds) before SIGKILL.
	dumpGrace = 300 * time.Millisecond
	// fastStopGrace bounds SIGINT/SIGQUIT: children are told to exit now
	// and are killed if they have not after this.
	fastStopGrace = 2 * time.Second
	rssEvery      = time.Second
	// forkGrace is how long a fork asked of a zygote that then died may
	// still answer with READY (the worker was forked, the reply lost)
	// before the worker is started again.
	forkGrace = 5 * time.Second
)

// shutdown phases, in order.
const (
	running         = iota
	phaseDelay      // /readyz fails, proxy still accepts (shutdown.delay)
	phaseProxies    // proxies finish in-flight requests
	phaseWorkers    // workers and zygotes stop
	phaseCompanions // programs, tasks and jobs stop, each with its own signal and timeout
	phaseFast       // SIGINT/SIGQUIT: everything told to exit now
)

// Options configure a Supervisor. Zero values are documented per field.
type Options struct {
	Config     *config.Config // required, validated
	ConfigPath string         // file to reload from; "" = no file, no watching
	RunDir     string         // "" = /run/berth, else $TMPDIR/berth-$UID
	Executable string         // berth binary for `berth proxy`; "" = /proc/self/exe
	OS         OS             // nil = the real one
	Log        *log.Logger    // nil = stderr with "berth: " prefix
	Now        func() time.Time
	// CgroupRoot is the cgroup filesystem; "" = $BERTH_CGROUP_ROOT, else
	// /sys/fs/cgroup; "off" = do not use cgroups.
	CgroupRoot string
	// Override re-applies command-line settings (--app) to every config
	// loaded by a reload; nil = none.
	Override func(*config.Config) error
	// NoReap switches the reaper off. It exists only so the orphan test
	// can show it fails without reaping.
	NoReap bool
}

// Supervisor is the state owned by the loop goroutine.
type Supervisor struct {
	opts   Options
	os     OS
	log    *log.Logger
	now    func() time.Time
	runDir string
	exe    string

	cfg        *config.Config
	cfgHash    string
	generation int // config generation, bumped by every applied reload
	gen        *generation
	gens       []*generation // live generations, oldest first
	genSeq     int

	slots   []*slot
	workers map[string]*worker
	procs   map[int]child // pid → its child (child.go)

	listeners      []*listener
	certs          []control.Certificate // tls.certificates as read and checked
	access         accessFiles           // the access rules' files, as read and checked
	acmeRoots      [][]byte              // tls.acme.ca_roots as read and checked
	proxies        []*proxyProc
	proxySeq       int
	proxyFail      int
	proxyRestartAt time.Time

	cg     *cgroups // nil: no cgroup filesystem, or BERTH_CGROUP_ROOT=off
	notify *net.UnixConn
	admin  *adminServer
	sd     *sdNotifier
	watch  *watcher

	// events
	signals  chan os.Signal
	notifyCh chan map[string]string
	ctlCh    chan ctlEvent
	zygCh    chan zygoteReply
	reloadCh chan reloadRequest
	adminCh  chan adminRequest

	phase      int
	phaseUntil time.Time
	exitCode   int
	ready      bool // all wanted workers ready and a proxy serving
	bootDone   bool
	fatal      error // set when the server cannot go on (app import failure at boot)

	reloadState  reloadStatus
	pending      *staged   // reload whose generation is rolling in; nil = none
	deferred     bool      // a reload arrived during the roll: apply the file when it ends
	deferredCode bool      // a code reload arrived during the roll
	watchFails   int       // consecutive failures to (re)create the watcher
	watchRetryAt time.Time // zero: no retry pending
	lastRSS      time.Time
	lastWatchdog time.Time

	orphans  int64
	restarts map[string]int64 // by cause
	metrics  *metrics

	// operatorGOMAXPROCS is GOMAXPROCS as berth found it at start; "" =
	// the operator did not set it. berth never exports its own choice.
	operatorGOMAXPROCS string
	bootPolicy         bootState // (bootpolicy.go)
	// runLock holds the flock that makes the run directory this berth's
	// alone (instance.go); nil before boot.
	runLock *os.File

	// Companions (companion.go). appStarted is false while the
	// before-start tasks run: no worker, program or job has started.
	appStarted bool
	tasks      *taskRun // the task list running now; nil = none
	bootTasks  *taskRun // tasks.before_start, kept for /status
	rollTasks  *taskRun // the last tasks.before_roll, kept for /status
	preRoll    *staged  // a reload waiting for its before-roll tasks
	programs   []*unit
	jobs       []*unit
}

type ctlEvent struct {
	p   *proxyProc
	msg control.Message
	err error
}

type reloadRequest struct {
	reason string // "SIGHUP", "file changed", "code changed"
	code   bool   // reload_on: same config, fresh import
	certs  bool   // only the TLS certificate files changed
}

type adminRequest struct {
	what  string // "status", "ready", "metrics-target"
	reply chan any
}

type reloadStatus struct {
	At      time.Time `json:"at"`
	OK      bool      `json:"ok"`
	Message string    `json:"message"`
	Reason  string    `json:"reason"`
	// LogTail is the last lines an abandoned generation's processes wrote
	// to stderr (its traceback, usually); empty otherwise.
	LogTail []string `json:"log_tail,omitempty"`
}

// Run boots the supervisor, runs it until it stops, and returns the exit code.
func Run(opts Options) int {
	s, err := newSupervisor(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "berth: %v\n", err)
		return ExitBoot
	}
	if err := s.boot(); err != nil {
		s.log.Printf("%v", err)
		s.closeAll()
		var ce configError
		if errors.As(err, &ce) {
			return ExitConfig
		}
		var pe preflightError
		if errors.As(err, &pe) {
			return ExitStartFailed
		}
		return ExitBoot
	}
	return s.loop()
}

type configError struct{ error }

func newSupervisor(opts Options) (*Supervisor, error) {
	if opts.Config == nil {
		return nil, errors.New("supervisor: no configuration given")
	}
	s := &Supervisor{
		opts:     opts,
		cfg:      opts.Config,
		log:      opts.Log,
		now:      opts.Now,
		os:       opts.OS,
		exe:      opts.Executable,
		workers:  map[string]*worker{},
		procs:    map[int]child{},
		signals:  make(chan os.Signal, 16),
		notifyCh: make(chan map[string]string, 256),
		ctlCh:    make(chan ctlEvent, 256),
		zygCh:    make(chan zygoteReply, 64),
		reloadCh: make(chan reloadRequest, 4),
		adminCh:  make(chan adminRequest),
		restarts: map[string]int64{},

		operatorGOMAXPROCS: os.Getenv("GOMAXPROCS"),
	}
	if s.log == nil {
		s.log = log.New(os.Stderr, "berth: ", 0)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.os == nil {
		s.os = newRealOS(!opts.NoReap)
	}
	if s.exe == "" {
		s.exe = "/proc/self/exe"
	}
	s.metrics = newMetrics()
	s.sd = newSdNotifier()
	return s, nil
}

// boot does everything that may fail before the loop starts. A failure here
// is reported and berth exits: nothing is serving yet, so there is nothing
// to keep alive.
func (s *Supervisor) boot() error {
	signal.Notify(s.signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT,
		syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU)
	// Broken pipes come back as EPIPE errors to the writer, not as a
	// signal that kills PID 1 because a log reader went away.
	signal.Ignore(syscall.SIGPIPE)

	// The run directory is chowned to app.user: an unknown user is a
	// pre-flight failure (exit 4, as berth check says), not a boot error.
	if _, err := credentialFor(s.cfg.App.User); err != nil {
		return preflightError{fmt.Errorf("pre-flight check failed: %w", err)}
	}
	dir, err := prepareRunDir(s.opts.RunDir, s.cfg.App.User)
	if err != nil {
		return err
	}
	// The claim comes before anything is written or removed there: a
	// second berth must not touch the first one's sockets.
	if s.runLock, err = lockRunDir(dir, s.instanceInfo()); err != nil {
		return err
	}
	s.runDir = dir
	if _, err := pyworker.WriteFiles(dir); err != nil {
		return fmt.Errorf("boot: write the worker runtime to %s: %w", dir, err)
	}
	if err := preflight(realPreflightOS{}, s.cfg, dir); err != nil {
		return err
	}
	if s.certs, err = loadCertificates(s.cfg); err != nil {
		return preflightError{fmt.Errorf("pre-flight check failed: %w", err)}
	}
	if s.access, err = loadAccessFiles(s.cfg); err != nil {
		return preflightError{fmt.Errorf("pre-flight check failed: %w", err)}
	}
	if s.acmeRoots, err = loadACMERoots(s.cfg); err != nil {
		return preflightError{fmt.Errorf("pre-flight check failed: %w", err)}
	}
	if err := prepareACMEStorage(s.cfg); err != nil {
		return preflightError{fmt.Errorf("pre-flight check failed: %w", err)}
	}
	if s.cfgHash, err = hashFile(s.opts.ConfigPath); err != nil {
		return err
	}
	if err := s.setupCgroups(); err != nil {
		return err
	}
	s.setGOMAXPROCS()
	if err := s.openNotify(); err != nil {
		return err
	}
	lns, err := openListeners(s.cfg.Listen)
	if err != nil {
		return err
	}
	s.listeners = lns
	if s.cfg.TLS.HTTP3 {
		if _, err := s.openUDP(s.listeners, s.cfg.Listen); err != nil {
			return err
		}
	}
	if err := s.startAdmin(s.cfg.Admin.Listen); err != nil {
		return err
	}
	// The proxy starts now, before any worker is ready: a client that
	// connects during the import waits in the proxy's queue for at most
	// proxy.queue.timeout and then gets 503, instead of waiting in the
	// kernel's accept queue for as long as the import (or a boot that
	// never succeeds) takes.
	if err := s.startProxy(); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	g, err := s.newGeneration(s.cfg, false)
	if err != nil {
		return configError{err}
	}
	s.gen = g
	s.gens = []*generation{g}
	s.generation = 1
	s.restartWatch()
	s.beginApp()
	return nil
}

// startApp starts the first generation's zygote and workers.
func (s *Supervisor) startApp() {
	g := s.gen
	s.startGeneration(g)
	s.resize(s.wantWorkers(s.cfg))
	s.resizeMounts(s.cfg)
	s.sd.status(fmt.Sprintf("starting %d workers for %s", len(s.slots), g.module))
	s.log.Printf("starting: app %s, %d workers × %d threads, listen %s, admin %s",
		g.module, len(s.slots), s.cfg.Workers.Threads, listenerNames(s.listeners), s.cfg.Admin.Listen)
}

// loop is the only goroutine that touches the state. It returns the exit code.
func (s *Supervisor) loop() int {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if done, code := s.step(t.C); done {
			s.closeAll()
			return code
		}
	}
}

// step handles one event. A panic in a handler is a bug, but PID 1 exiting
// would take every request in flight and the container with it: the event
// is dropped, the stack logged, and supervision goes on.
func (s *Supervisor) step(tc <-chan time.Time) (done bool, code int) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Printf("internal error (please report it): %v\n%s", r, debug.Stack())
			done = false
		}
	}()
	select {
	case sig := <-s.signals:
		s.onSignal(sig.(syscall.Signal))
	case e := <-s.os.Exits():
		s.onExit(e)
	case n := <-s.notifyCh:
		s.onNotify(n)
	case ev := <-s.ctlCh:
		s.onControl(ev)
	case r := <-s.zygCh:
		s.onZygoteReply(r)
	case r := <-s.reloadCh:
		s.reload(r)
	case r := <-s.adminCh:
		r.reply <- s.answerAdmin(r.what)
	case <-tc:
		s.onTick()
	}
	return s.finished()
}

// finished says whether the supervisor has nothing left to wait for.
func (s *Supervisor) finished() (bool, int) {
	if s.fatal != nil && len(s.procs) == 0 {
		return true, s.exitCode
	}
	if s.phase >= phaseWorkers && len(s.procs) == 0 {
		return true, s.exitCode
	}
	return false, 0
}

func (s *Supervisor) closeAll() {
	for _, l := range s.listeners {
		l.close()
	}
	s.listeners = nil
	if s.notify != nil {
		s.notify.Close()
	}
	if s.admin != nil {
		s.admin.close()
	}
	if s.watch != nil {
		s.watch.close()
	}
	s.releaseCgroups()
	if s.runLock != nil {
		s.runLock.Close()
	}
}

// ---- signals ----

func (s *Supervisor) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGTERM:
		if s.phase != running {
			s.log.Printf("SIGTERM again: already stopping")
			return
		}
		s.beginShutdown("SIGTERM")
	case syscall.SIGINT, syscall.SIGQUIT:
		if s.phase == phaseFast {
			s.log.Printf("%s again: killing everything now", unix_SignalName(sig))
			s.killAll(syscall.SIGKILL)
			return
		}
		s.log.Printf("%s: fast stop", unix_SignalName(sig))
		s.sd.stopping()
		s.phase = phaseFast
		s.phaseUntil = s.now().Add(fastStopGrace)
		s.exitCode = ExitSignalFloor + int(sig)
		s.closeListeners()
		s.killAll(syscall.SIGQUIT)
	case syscall.SIGHUP:
		s.reload(reloadRequest{reason: "SIGHUP"})
	case syscall.SIGTTIN:
		s.scaleBy(+1)
	case syscall.SIGTTOU:
		s.scaleBy(-1)
	}
}

func (s *Supervisor) beginShutdown(why string) {
	s.log.Printf("%s: graceful stop (readiness off, delay %s, then drain within %s)",
		why, s.cfg.Shutdown.Delay.D(), s.cfg.Workers.GracefulTimeout.D())
	s.sd.stopping()
	s.ready = false
	s.phase = phaseDelay
	s.phaseUntil = s.now().Add(s.cfg.Shutdown.Delay.D())
	s.exitCode = ExitOK
	s.stopTasks()
	s.advanceShutdown()
}

// advanceShutdown moves through the phases as their conditions are met or
// their deadlines pass. It is called on every tick and every exit.
func (s *Supervisor) advanceShutdown() {
	now := s.now()
	switch s.phase {
	case phaseDelay:
		if now.Before(s.phaseUntil) {
			return
		}
		s.phase = phaseProxies
		s.phaseUntil = now.Add(s.cfg.Workers.GracefulTimeout.D() + time.Second)
		// Our copies of the listeners close now: once the proxies stop
		// accepting, new connections are refused at once instead of
		// waiting in a backlog nobody will read.
		s.closeListeners()
		for _, p := range s.proxies {
			s.stopProxy(p, "shutdown")
		}
		fallthrough
	case phaseProxies:
		if len(s.proxies) > 0 {
			if now.After(s.phaseUntil) {
				for _, p := range s.proxies {
					s.log.Printf("proxy %d (pid %d) did not stop in time: SIGKILL", p.n, p.pid)
					_ = s.os.Signal(p.pid, syscall.SIGKILL)
				}
			}
			return
		}
		s.phase = phaseWorkers
		s.phaseUntil = now.Add(s.cfg.Workers.GracefulTimeout.D())
		for _, w := range s.workers {
			if w.state < wStopping {
				w.retiring = "shutdown"
				s.stopWorker(w)
			}
		}
		for _, g := range s.gens {
			s.stopZygote(g)
		}
		s.sendWorkers()
	case phaseWorkers:
		if n := s.runningUpTo(stageWorkers); n > 0 {
			if now.After(s.phaseUntil) {
				s.log.Printf("%d processes still running after the grace period: SIGKILL", n)
				s.killUpTo(stageWorkers, syscall.SIGKILL)
				s.phaseUntil = now.Add(time.Hour)
			}
			return
		}
		s.phase = phaseCompanions
		s.stopCompanions()
	case phaseCompanions:
		// Each companion's own stop timeout is escalated from the tick.
	case phaseFast:
		if now.After(s.phaseUntil) && len(s.procs) > 0 {
			s.log.Printf("%d processes still running after the grace period: SIGKILL", len(s.procs))
			s.killAll(syscall.SIGKILL)
			s.phaseUntil = now.Add(time.Hour)
		}
	}
}

func (s *Supervisor) killAll(sig syscall.Signal) {
	for pid := range s.procs {
		_ = s.os.Signal(pid, sig)
	}
}

// ---- reaped children ----

func (s *Supervisor) onExit(e Exit) {
	p, ok := s.procs[e.Pid]
	if !ok {
		// An orphan reparented to us (PID 1 or subreaper): reaping it is
		// all there is to do.
		s.orphans++
		s.metrics.orphans.Inc()
		return
	}
	delete(s.procs, e.Pid)
	p.exited(s, e)
	if s.phase != running {
		s.advanceShutdown()
	}
}

// ---- ticks: every deadline ----

func (s *Supervisor) onTick() {
	now := s.now()
	if s.phase != running {
		s.advanceShutdown()
	}
	for _, w := range s.sortedWorkers() {
		switch {
		case w.state == wForking && now.After(w.deadline):
			// Its fork was asked of a zygote that died before replying.
			s.log.Printf("worker %s: no fork reply from the zygote of generation %d: starting it again", w.id, w.gen.n)
			sl := w.slot
			s.forgetWorker(w)
			s.scheduleRestart(sl)
		case w.state == wStarting && now.After(w.deadline):
			s.log.Printf("worker %s (pid %d) did not become ready within %s: killing it", w.id, w.pid, startTimeout)
			w.state = wStopping
			s.stop(&w.stopSeq, w.pid, syscall.SIGKILL, noEscalation)
		case w.state == wDraining && now.After(w.deadline):
			s.log.Printf("worker %s (pid %d) still busy after %s of draining: stopping it anyway", w.id, w.pid, s.cfg.Workers.GracefulTimeout.D())
			s.stopWorker(w)
		}
	}
	s.killOverdue(now)
	if s.phase <= phaseDelay && s.fatal == nil {
		for _, sl := range s.slots {
			if !sl.restartAt.IsZero() && now.After(sl.restartAt) {
				sl.restartAt = time.Time{}
				if sl.wantsWorker() {
					sl.next = s.startWorker(sl, s.gen)
				}
			}
		}
		if s.watch == nil && !s.watchRetryAt.IsZero() && now.After(s.watchRetryAt) {
			s.watchRetryAt = time.Time{}
			s.restartWatch()
		}
		for _, g := range s.gens {
			for _, z := range g.zygotes() {
				if z.pid == 0 && !z.restartAt.IsZero() && now.After(z.restartAt) {
					z.restartAt = time.Time{}
					s.startZygote(z)
				}
			}
		}
		if s.activeProxy() == nil && !s.proxyRestartAt.IsZero() && now.After(s.proxyRestartAt) {
			s.proxyRestartAt = time.Time{}
			if err := s.startProxy(); err != nil {
				s.log.Printf("%v", err)
				s.proxyRestartAt = now.Add(backoff(s.proxyFail))
			}
		}
		if now.Sub(s.lastRSS) >= rssEvery {
			s.lastRSS = now
			s.checkRSS()
			s.readCgroupStats()
		}
	}
	s.tickCompanions(now)
	if iv := s.sd.watchdogInterval(); iv > 0 && now.Sub(s.lastWatchdog) >= iv/2 {
		// The loop itself sends the watchdog ping: a stuck loop stops
		// the pings, which is exactly what the watchdog is for.
		s.lastWatchdog = now
		s.sd.watchdog()
	}
	s.checkReload()
	s.updateGauges()
}

func backoff(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := backoffBase << (failures - 1)
	if d > backoffCap || d <= 0 {
		d = backoffCap
	}
	return d
}

// ---- readiness ----

// checkReady reports READY=1 when a proxy serves and every slot's current
// worker is ready. It is called whenever either can have changed.
func (s *Supervisor) checkReady() {
	if s.phase != running || s.fatal != nil || !s.appStarted {
		return
	}
	p := s.activeProxy()
	ready := p != nil && p.ready && s.readyWorkers() >= s.activeSlots()
	if ready && !s.ready {
		s.ready = true
		if !s.bootDone {
			s.bootDone = true
			s.log.Printf("ready: %s on %s, %d workers", s.gen.module, listenerNames(s.listeners), s.readyWorkers())
		}
		s.sd.ready(fmt.Sprintf("serving %s with %d workers", s.gen.module, s.readyWorkers()))
	} else if !ready && s.ready && s.bootDone {
		// Losing a worker briefly (a crash being replaced) does not make
		// us unready for systemd, but /readyz reports the truth.
		s.ready = false
	}
}

func (s *Supervisor) readyWorkers() int {
	n := 0
	for _, sl := range s.slots {
		if sl.retired {
			continue
		}
		if (sl.cur != nil && sl.cur.state == wReady) || (sl.cur != nil && sl.cur.state == wDraining) {
			n++
		} else if sl.next != nil && sl.next.state == wReady {
			n++
		}
	}
	return n
}

// activeSlotsIn counts pool's slots that are not retired.
func (s *Supervisor) activeSlotsIn(pool string) int {
	n := 0
	for _, sl := range s.slots {
		if !sl.retired && sl.pool == pool {
			n++
		}
	}
	return n
}

func (s *Supervisor) activeSlots() int {
	n := 0
	for _, sl := range s.slots {
		if !sl.retired {
			n++
		}
	}
	return n
}

func (s *Supervisor) sortedWorkers() []*worker {
	ws := make([]*worker, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	sort.Slice(ws, func(i, j int) bool {
		if ws[i].slot.n != ws[j].slot.n {
			return ws[i].slot.n < ws[j].slot.n
		}
		return ws[i].started.Before(ws[j].started)
	})
	return ws
}

// ---- environment for children ----

// childEnv is berth's environment without what belongs to berth alone: the
// systemd protocol variables are ours, passing them on would make a worker
// answer systemd in our place.
func childEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "NOTIFY_SOCKET", k == "WATCHDOG_USEC", k == "WATCHDOG_PID",
			strings.HasPrefix(k, "LISTEN_"), strings.HasPrefix(k, "BERTH_"):
			continue
		}
		if _, over := extra[k]; over {
			continue
		}
		env = append(env, kv)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+extra[k])
	}
	return env
}

func jitter(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return rand.Int64N(n + 1)
}

func prepareRunDir(dir, user string) (string, error) {
	candidates := []string{dir}
	if dir == "" {
		if d := os.Getenv("BERTH_RUN_DIR"); d != "" {
			candidates = []string{d}
		} else {
			candidates = []string{"/run/berth", filepath.Join(os.TempDir(), fmt.Sprintf("berth-%d", os.Getuid()))}
		}
	}
	var errs []error
	for _, d := range candidates {
		if err := os.MkdirAll(d, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		probe := filepath.Join(d, ".probe")
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			errs = append(errs, err)
			continue
		}
		os.Remove(probe)
		if err := chownForUser(d, user); err != nil {
			return "", err
		}
		return d, nil
	}
	return "", fmt.Errorf("boot: no writable run directory (tried %s): %w; mount a tmpfs at /run or set BERTH_RUN_DIR",
		strings.Join(candidates, ", "), errors.Join(errs...))
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
