package supervisor

import (
	"syscall"
	"time"
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

// tickCompanions drives every companion's deadlines: stop escalation and
// run timeouts always, restarts and scheduled runs while berth runs.
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
