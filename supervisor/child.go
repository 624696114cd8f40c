package supervisor

import (
	"fmt"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A child is a process berth started and has not reaped yet: the proxy, a
// zygote, a worker, and (companion.go) a before-start task, a companion
// program or a periodic job's run. Supervisor.procs maps each pid to its
// child; the one reaper's exits are handed to it through this interface, so
// the event loop has one path for every kind of process and learns nothing
// new when a kind is added.
type child interface {
	// exited is called once, from the loop, when the reaper collected the
	// process; it is already out of procs.
	exited(s *Supervisor, e Exit)
	// stage is the shutdown stage the child stops in (see the stage
	// constants): a graceful stop moves to the next stage only when no
	// child of an earlier one is left.
	stage() int
	// stops is its stop sequence: every kind embeds a stopSeq.
	stops() *stopSeq
	// overdue is how the log says, in the kind's words, that it did not
	// stop in time; ": SIGKILL" follows.
	overdue() string
}

// stopSeq is the stop sequence of every kind of child, one process model as
// in tini and catatonit: the kind's stop signal now, SIGKILL from the tick
// once its grace has passed (killOverdue). A kind passes its signal and
// grace, says whether the SIGKILL takes the process group, and logs in its
// own words (overdue); a new kind embeds a stopSeq instead of adding a
// branch to the loop.
type stopSeq struct {
	stopping bool
	killAt   time.Time // SIGKILL when passed; zero once sent, or when none follows
	group    bool      // the SIGKILL also goes to the child's process group
}

func (q *stopSeq) stops() *stopSeq { return q }

// noEscalation, as a stop's grace: no SIGKILL follows the stop signal (the
// signal is SIGKILL, or the kind relies on the shutdown's deadline).
const noEscalation time.Duration = -1

// stop begins q for the child pid: sig now (nothing while it has no pid
// yet), SIGKILL grace later. It says whether the stop began: false when it
// already had.
func (s *Supervisor) stop(q *stopSeq, pid int, sig syscall.Signal, grace time.Duration) bool {
	if q.stopping {
		return false
	}
	q.stopping = true
	q.killAt = time.Time{}
	if grace != noEscalation {
		q.killAt = s.now().Add(grace)
	}
	if pid > 0 {
		_ = s.os.Signal(pid, sig)
	}
	return true
}

// killOverdue sends SIGKILL to every child whose stop outlasted its grace,
// in pid order so that the log reads the same every time.
func (s *Supervisor) killOverdue(now time.Time) {
	var due []int
	for pid, c := range s.procs {
		if q := c.stops(); q.stopping && !q.killAt.IsZero() && now.After(q.killAt) {
			due = append(due, pid)
		}
	}
	slices.Sort(due)
	for _, pid := range due {
		c := s.procs[pid]
		s.log.Printf("%s: SIGKILL", c.overdue())
		q := c.stops()
		q.killAt = time.Time{}
		_ = s.os.Signal(pid, syscall.SIGKILL)
		if q.group {
			_ = s.os.SignalGroup(pid, syscall.SIGKILL)
		}
	}
}

// Shutdown stages, in the order a graceful stop takes them: readiness off
// and the proxy drains (stageProxy), then the workers and zygotes stop
// (stageWorkers), then the companion programs, tasks and periodic jobs, each
// with its own stop signal and timeout (stageCompanions): a Celery worker
// may still be handed tasks by requests in flight, so it outlives them.
const (
	stageProxy = iota
	stageWorkers
	stageCompanions
)

func (w *worker) exited(s *Supervisor, e Exit)    { s.workerExited(w, e) }
func (w *worker) stage() int                      { return stageWorkers }
func (z *zygote) exited(s *Supervisor, e Exit)    { s.zygoteExited(z, e) }
func (z *zygote) stage() int                      { return stageWorkers }
func (p *proxyProc) exited(s *Supervisor, e Exit) { s.proxyExited(p, e) }
func (p *proxyProc) stage() int                   { return stageProxy }

func (w *worker) overdue() string {
	return fmt.Sprintf("worker %s (pid %d) did not stop in time", w.id, w.pid)
}
func (z *zygote) overdue() string { return fmt.Sprintf("zygote (pid %d) did not stop in time", z.pid) }
func (p *proxyProc) overdue() string {
	return fmt.Sprintf("proxy %d (pid %d) did not stop in time", p.n, p.pid)
}
func (u *unit) overdue() string {
	return fmt.Sprintf("%s (pid %d) did not stop within %s of %s", u.label(), u.pid, u.spec.stopTimeout, unix.SignalName(u.spec.stopSignal))
}

// running counts the children that stop in stage st or an earlier one.
func (s *Supervisor) runningUpTo(st int) int {
	n := 0
	for _, c := range s.procs {
		if c.stage() <= st {
			n++
		}
	}
	return n
}

// killUpTo sends sig to every child that stops in stage st or earlier.
func (s *Supervisor) killUpTo(st int, sig syscall.Signal) {
	for pid, c := range s.procs {
		if c.stage() <= st {
			_ = s.os.Signal(pid, sig)
		}
	}
}

// stopCompanions starts the last stage of a graceful stop: every program,
// task and job run gets its own stop signal, and SIGKILL at its own stop
// timeout.
func (s *Supervisor) stopCompanions() {
	for _, c := range s.procs {
		if u, ok := c.(*unit); ok {
			s.stopUnit(u, "shutdown")
		}
	}
}

// tickCompanions drives every companion's deadlines: run timeouts always,
// restarts and scheduled runs while berth runs.
func (s *Supervisor) tickCompanions(now time.Time) {
	for _, c := range s.procs {
		if u, ok := c.(*unit); ok {
			s.tickUnit(u, now)
		}
	}
	if s.phase != running || s.fatal != nil || !s.appStarted {
		return
	}
	s.tickPrograms(now)
	s.tickJobs(now)
}
