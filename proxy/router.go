package proxy

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/control"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// upstreamIdle closes a pooled worker connection unused this long: a
	// worker thread parked on an idle connection serves no one else, and
	// during a proxy restart the next proxy generation may need it. A unix
	// socket redial costs microseconds.
	upstreamIdle = 2 * time.Second
	// dialBackoff keeps a worker whose socket refused a connection out of
	// routing this long; the supervisor sends the truth soon after.
	dialBackoff = time.Second
	// staleLimit consecutive pooled connections found closed by a worker
	// mean it does not keep connections alive (a plain uWSGI): stop pooling.
	staleLimit      = 2
	upstreamReadBuf = 16 << 10
)

var (
	errNoWorker     = errors.New("no worker is ready")
	errQueueFull    = errors.New("every worker is busy and the queue is full")
	errQueueWait    = errors.New("every worker is busy and the queue ahead would not be served within queue_timeout")
	errQueueTimeout = errors.New("no worker became free within queue_timeout")
	errOutOfFiles   = errors.New("the proxy has no file descriptor left")
)

// worker is one worker process as this proxy sees it. id, socket and
// reqCounter never change; every other field is guarded by router.mu.
type worker struct {
	id          string
	socket      string
	capacity    int
	maxRequests int64
	draining    bool
	dead        bool  // answered too slowly once: never routed to again
	removed     bool  // no longer in the supervisor's set
	downUntil   int64 // unix nanos; dial failed, skip until then
	inflight    int
	requests    int64
	dueSent     bool
	drainedSent bool
	timeoutSent bool
	compact     bool // reads modCompact packets (control.Worker.Compact); immutable
	noKeepalive bool // its connections are close-delimited: do not pool
	keepaliveOK bool // it keeps connections alive: a reused connection carried a whole response, or it is berth's (compact)
	staleStreak int
	idle        []*upConn // LIFO: the warmest connection first
	reqCounter  prometheus.Counter

	// asgi: the worker speaks the ASGI framing (asgi.go); immutable, like
	// id and socket (a worker's process never changes its protocol).
	asgi bool
	rt   *router // the pool's router; immutable
	// drainAt is when the worker began to drain (unix nanos; 0 = it does
	// not), drainCut whether its websockets and streams were told to end.
	drainAt  int64
	drainCut bool
	muxMu    sync.Mutex
	mux      *muxConn // the ASGI connection; nil until the first request
}

func (w *worker) routable(now int64) bool {
	return !w.draining && !w.dead && !w.removed && w.downUntil <= now
}

// waiter is a request queued for a worker. Once its state leaves waiting,
// exactly one grant is sent on ch. Waiters that were granted a worker are
// pooled (see acquire).
type waiter struct {
	ch       chan grant // capacity 1: granting never blocks
	avoid    *worker
	job      *sendJob // when set, the releasing request sends it (see handoff)
	deadline int64    // unix nanos; 0 = wait as long as it takes
	state    uint8    // waiting, granted or cancelled; guarded by router.mu
}

var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan grant, 1)} }}

// sendJob is a request packet ready to go, so that the request freeing a
// worker can hand the next queued request to it at once: the worker then
// idles for one write, not for a goroutine wake-up.
type sendJob struct {
	pkt     []byte // vars and the whole body
	timeout time.Duration
	compact bool // pkt is modCompact: only a compact worker may take it
}

const (
	waiting = iota
	granted
	cancelled
)

type grant struct {
	err   error // the wait ended without a worker: errQueueTimeout or errNoWorker
	w     *worker
	c     *upConn   // a pooled connection to w, or nil: dial
	sent  bool      // the waiter's job was written on c (deadline set from start)
	start time.Time // when the job was sent
}

type pendingGrant struct {
	wt *waiter
	g  grant
}

// router owns the worker set, the in-flight counts, the pooled connections
// and the queue, under one mutex: every decision is a few slice scans.
type router struct {
	m       *metrics
	emit    func(control.Message) // to the supervisor; never blocks
	logf    func(format string, args ...any)
	handoff func(*sendJob, grant) grant // writes a queued request on its grant, outside the lock
	mu      sync.Mutex
	list    []*worker
	byID    map[string]*worker
	queue   []*waiter
	qhead   int
	queued  int // live waiters in queue
	rr      int
	closing bool // shutting down: close connections instead of pooling
	// allCompact: every worker in the set reads modCompact packets, so a
	// request builds one before it knows its worker.
	allCompact atomic.Bool

	lastNoWorkerLog time.Time
	noWorkerCount   int

	// svc is the pool's service time per request, an average over recent
	// answers (observe); 0 until one is measured. Admission uses it.
	svc time.Duration
}

// observe records how long a worker of the pool took on one request: the
// average the queue admits by (an exponential average over about the last
// twenty answers, so a slower app is seen within a burst).
func (rt *router) observe(d time.Duration) {
	if d <= 0 {
		return
	}
	rt.mu.Lock()
	if rt.svc == 0 {
		rt.svc = d
	} else {
		// One answer counts for at most 4 times the average: in a burst
		// of thousands of requests the goroutine that reads an answer may
		// wait behind all of them for the proxy's P, and a few such
		// samples (80 ms against 0.3) lifted the average enough to refuse
		// a tail the workers cleared in under a second. A slower app is
		// still seen within a few dozen answers (x1.15 each).
		d = min(d, 4*rt.svc)
		rt.svc += (d - rt.svc) / 20
	}
	rt.mu.Unlock()
}

// expectedWaitLocked is how long a request joining the queue now would
// wait: the requests ahead of it, served by every routable slot at the
// measured service time; 0 while nothing is measured.
func (rt *router) expectedWaitLocked(now int64) time.Duration {
	if rt.svc == 0 {
		return 0
	}
	slots := 0
	for _, w := range rt.list {
		if w.routable(now) {
			slots += w.capacity
		}
	}
	if slots == 0 {
		return 0 // none routable: the queue timeout decides (errNoWorker)
	}
	return time.Duration(int64(rt.queued+1) * int64(rt.svc) / int64(slots))
}

func newRouter(m *metrics, emit func(control.Message), logf func(string, ...any), handoff func(*sendJob, grant) grant) *router {
	return &router{m: m, emit: emit, logf: logf, handoff: handoff, byID: make(map[string]*worker)}
}

// pickLocked returns the routable worker with a free slot and the fewest
// requests in flight, preferring any worker but avoid; ties rotate.
func (rt *router) pickLocked(avoid *worker, now int64) *worker {
	n := len(rt.list)
	if n == 0 {
		return nil
	}
	rt.rr++
	start := rt.rr % n
	var best, fallback *worker
	for i := 0; i < n; i++ {
		w := rt.list[(start+i)%n]
		if w.inflight >= w.capacity || !w.routable(now) {
			continue
		}
		if w == avoid {
			fallback = w
			continue
		}
		if best == nil || w.inflight < best.inflight {
			best = w
			if w.inflight == 0 {
				break
			}
		}
	}
	if best == nil {
		return fallback
	}
	return best
}

func (rt *router) anyRoutableLocked(now int64) bool {
	for _, w := range rt.list {
		if w.routable(now) {
			return true
		}
	}
	return false
}

// startLocked counts a request sent to w and hands out a pooled
// connection if one is idle.
func (rt *router) startLocked(w *worker) *upConn {
	w.inflight++
	w.requests++
	if w.reqCounter != nil {
		w.reqCounter.Inc()
	}
	rt.noteDueLocked(w)
	return popIdle(&w.idle)
}

// acquire returns a worker slot (and maybe a pooled connection), waiting
// in the FIFO queue when every worker is busy. waited is the time spent
// queued (0 when a worker was free at once).
//
// job, when not nil, lets the request that frees a worker send this one's
// packet on its behalf; the grant then says sent.
func (rt *router) acquire(done <-chan struct{}, st *settings, avoid *worker, job *sendJob) (g grant, waited time.Duration, err error) {
	now := time.Now()
	rt.mu.Lock()
	if w := rt.pickLocked(avoid, now.UnixNano()); w != nil {
		c := rt.startLocked(w)
		rt.mu.Unlock()
		return grant{w: w, c: c}, 0, nil
	}
	// With no worker ready (at boot, or while crashed ones are replaced)
	// requests wait in the queue like any other, so none waits longer
	// than queue_timeout; without a queue they get 503 at once.
	if !rt.anyRoutableLocked(now.UnixNano()) && (st.queueSize == 0 || st.queueTimeout <= 0) {
		rt.noWorkerLogLocked(now)
		rt.mu.Unlock()
		return grant{}, 0, errNoWorker
	}
	if rt.queued >= st.queueSize {
		rt.mu.Unlock()
		return grant{}, 0, errQueueFull
	}
	// Admission by the wait the request would see, not by a count: a
	// burst the workers clear within queue_timeout is queued whole; a
	// request that would wait past it is refused now rather than after
	// waiting for nothing.
	if st.queueTimeout > 0 && rt.expectedWaitLocked(now.UnixNano()) > st.queueTimeout {
		rt.mu.Unlock()
		return grant{}, 0, errQueueWait
	}
	wt := waiters.Get().(*waiter)
	wt.avoid, wt.job, wt.state, wt.deadline = avoid, job, waiting, 0
	if st.queueTimeout > 0 {
		// No timer per request: the router expires waiters where it hands
		// out workers and on the housekeeping tick (kick).
		wt.deadline = now.Add(st.queueTimeout).UnixNano()
	}
	rt.queue = append(rt.queue, wt)
	rt.queued++
	rt.m.queueDepth.Set(float64(rt.queued))
	rt.mu.Unlock()
	select {
	case g = <-wt.ch:
		if g.err == nil {
			// Granted by dispatchLocked, which popped it: the queue no
			// longer holds it, so it can serve another request. Expired
			// and cancelled waiters stay in the queue until compacted.
			wt.avoid, wt.job = nil, nil
			waiters.Put(wt)
		}
		return g, time.Since(now), g.err
	case <-done:
	}
	rt.mu.Lock()
	if wt.state != waiting {
		// Granted (or expired) while the client left: a granted slot is
		// freed again.
		rt.mu.Unlock()
		g = <-wt.ch
		if g.err == nil {
			// A sent job has its answer coming on c: not reusable.
			rt.release(g.w, g.c, !g.sent)
		}
		return grant{}, time.Since(now), errClientGone
	}
	wt.state = cancelled
	rt.queued--
	rt.m.queueDepth.Set(float64(rt.queued))
	rt.compactLocked()
	rt.mu.Unlock()
	return grant{}, time.Since(now), errClientGone
}

// expireLocked ends the wait of queued requests whose queue_timeout has
// passed: errQueueTimeout, or errNoWorker when no worker is routable.
func (rt *router) expireLocked(now int64) {
	var err error
	for _, wt := range rt.queue[rt.qhead:] {
		if wt == nil || wt.state != waiting || wt.deadline == 0 || now < wt.deadline {
			continue
		}
		if err == nil {
			err = errQueueTimeout
			if !rt.anyRoutableLocked(now) {
				err = errNoWorker
				rt.noWorkerLogLocked(time.Unix(0, now))
			}
		}
		wt.state = cancelled
		rt.queued--
		wt.ch <- grant{err: err}
	}
	if err != nil {
		rt.m.queueDepth.Set(float64(rt.queued))
		rt.compactLocked()
	}
}

// kick hands free slots to queued requests; housekeeping calls it so a
// worker whose dial backoff ended takes waiting requests.
func (rt *router) kick() {
	rt.mu.Lock()
	rt.expireLocked(time.Now().UnixNano())
	pend := rt.dispatchLocked(nil, true)
	rt.mu.Unlock()
	for _, p := range pend {
		p.wt.ch <- rt.handoff(p.wt.job, p.g)
	}
}

var errClientGone = errors.New("the client went away")

// noWorkerLogLocked says, at most every 5 seconds, that requests find no
// worker: the one line an operator needs when every request gets 503.
func (rt *router) noWorkerLogLocked(now time.Time) {
	rt.noWorkerCount++
	if now.Sub(rt.lastNoWorkerLog) < 5*time.Second {
		return
	}
	rt.logf("no worker is ready: answered 503 to %d request(s); check the supervisor's log for workers failing to start", rt.noWorkerCount)
	rt.lastNoWorkerLog = now
	rt.noWorkerCount = 0
}

// dispatchLocked hands free slots to queued requests, oldest first. With
// collect, grants of waiters with a job are appended to out instead of
// sent: the caller sends their jobs after unlocking, then grants them.
func (rt *router) dispatchLocked(out []pendingGrant, collect bool) []pendingGrant {
	if rt.queued == 0 {
		return out
	}
	now := time.Now().UnixNano()
	for rt.queued > 0 && rt.qhead < len(rt.queue) {
		wt := rt.queue[rt.qhead]
		if wt.state == cancelled {
			rt.popLocked()
			continue
		}
		if wt.deadline != 0 && now >= wt.deadline {
			rt.expireLocked(now)
			continue
		}
		w := rt.pickLocked(wt.avoid, now)
		if w == nil {
			break
		}
		rt.popLocked()
		c := rt.startLocked(w)
		wt.state = granted
		if collect && wt.job != nil {
			out = append(out, pendingGrant{wt, grant{w: w, c: c}})
		} else {
			wt.ch <- grant{w: w, c: c}
		}
		rt.queued--
	}
	rt.m.queueDepth.Set(float64(rt.queued))
	return out
}

func (rt *router) popLocked() {
	rt.queue[rt.qhead] = nil
	rt.qhead++
	if rt.qhead == len(rt.queue) {
		rt.queue = rt.queue[:0]
		rt.qhead = 0
	}
}

// compactLocked drops cancelled waiters when they outnumber live ones, so
// a queue that times out without ever dispatching stays bounded.
func (rt *router) compactLocked() {
	if len(rt.queue)-rt.qhead <= 2*rt.queued+64 {
		return
	}
	live := rt.queue[:0]
	for _, wt := range rt.queue[rt.qhead:] {
		if wt != nil && wt.state == waiting {
			live = append(live, wt)
		}
	}
	for i := len(live); i < len(rt.queue); i++ {
		rt.queue[i] = nil
	}
	rt.queue = live
	rt.qhead = 0
}

// release ends a request on w. c, when not nil, goes back to the pool if
// reuse says it is well framed and w still takes requests; else it closes.
func (rt *router) release(w *worker, c *upConn, reuse bool) {
	rt.mu.Lock()
	w.inflight--
	if c != nil && reuse && !rt.closing && !w.noKeepalive && !w.dead && !w.removed && len(w.idle) < w.capacity {
		c.idleSince = time.Now().UnixNano()
		if c.reused {
			w.staleStreak = 0
			w.keepaliveOK = true
		}
		c.reused = true
		w.idle = append(w.idle, c)
		c = nil
	}
	rt.noteDrainedLocked(w)
	var buf [2]pendingGrant
	pend := rt.dispatchLocked(buf[:0], true)
	rt.mu.Unlock()
	if c != nil {
		c.close()
	}
	for _, p := range pend {
		p.wt.ch <- rt.handoff(p.wt.job, p.g)
	}
}

// noteDueLocked tells the supervisor, once, that w used up max_requests.
func (rt *router) noteDueLocked(w *worker) {
	if w.maxRequests > 0 && w.requests >= w.maxRequests && !w.dueSent {
		w.dueSent = true
		rt.emit(control.Message{Type: control.TypeDue, Worker: w.id})
	}
}

// noteDrainedLocked tells the supervisor, once, that a draining w has
// finished its last request.
func (rt *router) noteDrainedLocked(w *worker) {
	if w.draining && w.inflight == 0 {
		rt.closeIdleLocked(w)
		if !w.drainedSent {
			w.drainedSent = true
			rt.emit(control.Message{Type: control.TypeDrained, Worker: w.id})
		}
	}
}

// noteStale records a pooled connection the worker had closed.
func (rt *router) noteStale(w *worker) {
	rt.mu.Lock()
	w.staleStreak++
	if w.staleStreak >= staleLimit {
		w.noKeepalive = true
		rt.closeIdleLocked(w)
	}
	rt.mu.Unlock()
}

// provenKeepalive says whether w ever answered on a reused connection.
func (rt *router) provenKeepalive(w *worker) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return w.keepaliveOK
}

// noteDialFailure keeps w out of routing for dialBackoff.
func (rt *router) noteDialFailure(w *worker) {
	rt.mu.Lock()
	w.downUntil = time.Now().Add(dialBackoff).UnixNano()
	rt.closeIdleLocked(w)
	rt.mu.Unlock()
}

// noteTimeout takes w out of routing for good and reports it once.
func (rt *router) noteTimeout(w *worker) {
	rt.mu.Lock()
	w.dead = true
	rt.closeIdleLocked(w)
	if !w.timeoutSent {
		w.timeoutSent = true
		rt.emit(control.Message{Type: control.TypeTimeout, Worker: w.id})
	}
	rt.mu.Unlock()
}

func (rt *router) closeIdleLocked(w *worker) {
	for i, c := range w.idle {
		c.close()
		w.idle[i] = nil
	}
	w.idle = w.idle[:0]
}

// setWorkers reconciles the whole set: new workers join, known ones take
// their new state, missing ones leave (their in-flight requests finish).
func (rt *router) setWorkers(ws []control.Worker) error {
	var bad error
	rt.mu.Lock()
	defer rt.mu.Unlock()
	list := make([]*worker, 0, len(ws))
	seen := make(map[string]bool, len(ws))
	for _, cw := range ws {
		if cw.ID == "" || cw.Socket == "" || seen[cw.ID] {
			bad = errors.Join(bad, fmt.Errorf("worker %q (socket %q): id and socket are required and ids unique; ignored", cw.ID, cw.Socket))
			continue
		}
		seen[cw.ID] = true
		capacity := cw.Capacity
		if capacity < 1 {
			capacity = 1
		}
		w := rt.byID[cw.ID]
		if w != nil && (w.socket != cw.Socket || w.compact != cw.Compact) {
			// Another process behind the same id: start afresh (id,
			// socket, compact and asgi are immutable, read without the
			// lock).
			w.removed = true
			rt.closeIdleLocked(w)
			w = nil
		}
		if w == nil {
			// berth's own workers (compact) keep connections alive: an end
			// of stream on a reused connection after the whole request
			// went out means the worker read it and died, even before it
			// has answered on one (a query of death, never replayed).
			w = &worker{id: cw.ID, socket: cw.Socket, compact: cw.Compact, asgi: cw.Interface == "asgi", rt: rt,
				keepaliveOK: cw.Compact, reqCounter: rt.m.workerRequests.WithLabelValues(cw.ID)}
			rt.byID[cw.ID] = w
		}
		w.capacity = capacity
		for len(w.idle) > capacity {
			n := len(w.idle) - 1
			w.idle[n].close()
			w.idle[n] = nil
			w.idle = w.idle[:n]
		}
		w.maxRequests = cw.MaxRequests
		rt.noteDueLocked(w)
		if cw.Draining && !w.draining {
			w.drainAt = time.Now().UnixNano()
		}
		w.draining = cw.Draining
		rt.noteDrainedLocked(w)
		list = append(list, w)
	}
	for id, w := range rt.byID {
		if !seen[id] {
			w.removed = true
			rt.closeIdleLocked(w)
			delete(rt.byID, id)
			rt.m.workerRequests.DeleteLabelValues(id)
		}
	}
	rt.list = list
	all := len(list) > 0
	for _, w := range list {
		all = all && w.compact
	}
	rt.allCompact.Store(all)
	rt.dispatchLocked(nil, false)
	return bad
}

// reapIdle closes pooled connections idle longer than upstreamIdle.
func (rt *router) reapIdle(now int64) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, w := range rt.list {
		w.idle = reapIdle(w.idle, now, int64(upstreamIdle))
	}
}

// shutdown stops pooling and closes every idle connection.
func (rt *router) shutdown() {
	rt.mu.Lock()
	rt.closing = true
	for _, w := range rt.list {
		rt.closeIdleLocked(w)
	}
	rt.mu.Unlock()
}

// stats snapshots the counters.
func (rt *router) stats() control.Stats {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	st := control.Stats{Workers: make(map[string]control.WorkerStats, len(rt.list)), Queue: rt.queued}
	for _, w := range rt.list {
		st.Workers[w.id] = control.WorkerStats{Requests: w.requests, InFlight: w.inflight}
	}
	return st
}

// takeIdle returns another pooled connection of w, or nil.
func (rt *router) takeIdle(w *worker) *upConn {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return popIdle(&w.idle)
}
