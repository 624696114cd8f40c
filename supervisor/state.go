package supervisor

import (
	"net"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// Exit codes of `berth run`, documented in the README.
const (
	ExitOK          = 0
	ExitBoot        = 1 // could not start: listeners, run directory, python missing
	ExitConfig      = 2 // the configuration is invalid
	ExitAppImport   = 3 // the WSGI app failed to import; respawning would not help
	ExitSignalFloor = 128

	// ExitStartFailed: the app's processes cannot be started: a pre-flight
	// check failed (app.user, app.chdir, app.python, …), or bootStartLimit
	// starts failed in a row before any worker was ready (bootpolicy.go).
	ExitStartFailed = 4

	// ExitTaskFailed: a before-start task (tasks.before_start) failed:
	// exited non-zero, was killed, ran past its timeout or could not be
	// started. No worker was started.
	ExitTaskFailed = 5
	// ExitProgramFailed: a required companion program cannot be kept
	// running: it failed programStartLimit times in a row, or ended and its
	// restart policy does not restart it. berth stopped gracefully.
	ExitProgramFailed = 6
)

// workerState is where a worker is in its life. The order matters: states
// only move forward.
type workerState int

const (
	wForking  workerState = iota // asked the zygote to fork; no pid yet
	wStarting                    // running, importing or binding; not routed
	wReady                       // routed
	wDraining                    // replaced; the proxy sends it nothing new
	wStopping                    // SIGTERM sent; SIGKILL at killAt
	wDead                        // reaped
)

func (s workerState) String() string {
	return [...]string{"forking", "starting", "ready", "draining", "stopping", "dead"}[s]
}

// worker is one Python worker process.
type worker struct {
	id     string // "slot.incarnation", stable for its life
	slot   *slot
	gen    *generation
	pid    int
	socket string
	state  workerState
	forked bool // from a zygote (preload), not started as a process of its own
	// iface is what the worker said it speaks in its READY message:
	// "asgi", or "" for WSGI over uwsgi (app.interface auto decides in
	// the worker, after the import).
	iface string

	started time.Time
	readyAt time.Time
	budget  int64 // max_requests plus jitter; 0 = unlimited

	// retiring is why the worker is being replaced ("" while it is not):
	// max_requests, max_rss, timeout, reload, scale-down, shutdown.
	retiring string
	// dueWhy is a recycling (max_requests, max_rss) that came due while the
	// worker was retiring for a roll: if the roll is abandoned, the worker
	// is still recycled, from the generation that serves. "" = none.
	dueWhy string
	// drainedBy records which proxies reported it drained.
	drainedBy map[int]bool
	// deadline is when the current state is given up on: forking or
	// starting too long, draining too long (then SIGTERM anyway). Stopping
	// too long is the stopSeq's (SIGKILL).
	deadline time.Time
	stopSeq

	requests int64 // served, summed over proxies' stats
	rss      int64
	rssAt    time.Time
}

// slot is one place in the worker pool. A slot has one current worker and,
// while it is being replaced, the replacement. Counting slots instead of
// processes is what makes "replace first, then stop" natural.
type slot struct {
	// pool is the mount the slot serves ("" = the main app): its workers
	// run that mount's module with its settings (generation.app).
	pool        string
	n           int
	incarnation int
	cur         *worker // routed (or starting, the first time)
	next        *worker // replacement on its way
	retired     bool    // scaled down: no replacement once cur is gone

	failures  int       // consecutive crashes, for backoff
	restartAt time.Time // zero: no start pending
}

// wantsWorker says whether sl needs a worker started: it has none, or its
// current one is being replaced and still serves but its replacement died.
func (sl *slot) wantsWorker() bool {
	if sl.retired || sl.next != nil {
		return false
	}
	return sl.cur == nil || (sl.cur.retiring != "" && sl.cur.state <= wReady)
}

// generation is one version of the worker settings: a config reload that
// changes app/worker settings starts a new generation beside the old one.
type generation struct {
	n      int
	cfg    *config.Config
	module string   // resolved module:callable
	iface  string   // BERTH_INTERFACE: app.interface, "wsgi" for the demo app
	pypath []string // sys.path additions, resolved
	zygote *zygote  // nil when preload is off
	// mounts are the apps mounted on URL prefixes (config mounts), each
	// with its workers in slots of that pool.
	mounts    map[string]*poolApp
	everReady bool     // one of its workers (or its zygote) got ready
	failed    string   // why this generation could not serve ("" = fine)
	tail      *logTail // its processes' last stderr lines; never nil
	// prev is the config that was current before this generation was
	// rolled in; restored if the generation's app fails to import.
	prev *config.Config
}

// poolApp is what a mounted pool's workers run in one generation.
type poolApp struct {
	module  string
	iface   string
	threads int
	zygote  *zygote // nil when the mount's preload is off
}

// app returns what pool's workers run in g; ok is false when g has no
// such pool (the mount was removed by the reload that made g).
func (g *generation) app(pool string) (module, iface string, threads int, z *zygote, ok bool) {
	if pool == "" {
		return g.module, g.iface, g.cfg.Workers.Threads, g.zygote, true
	}
	a := g.mounts[pool]
	if a == nil {
		return "", "", 0, nil, false
	}
	return a.module, a.iface, a.threads, a.zygote, true
}

// zygotes lists g's zygotes, the main app's first.
func (g *generation) zygotes() []*zygote {
	var zs []*zygote
	if g.zygote != nil {
		zs = append(zs, g.zygote)
	}
	for _, m := range g.cfg.Mounts {
		if a := g.mounts[m.Name]; a != nil && a.zygote != nil {
			zs = append(zs, a.zygote)
		}
	}
	return zs
}

// proxyProc is one `berth proxy` process.
type proxyProc struct {
	n         int
	pid       int
	ctl       *control.Conn
	conn      net.Conn
	out       chan control.Message
	ready     bool
	metrics   string // its /metrics unix socket
	listeners []*listener
	started   time.Time
	stats     control.Stats
	udp       []*udpSock // its HTTP/3 sockets, one per https:// listener's group (udp.go)
	stopSeq
}
