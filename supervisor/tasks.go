package supervisor

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/berth-dev/berth/config"
)

// taskRun is a list of tasks run one after the other: tasks.before_start at
// boot, tasks.before_roll before a reload's new worker generation.
type taskRun struct {
	phase   string // "before-start", "before-roll"
	units   []*unit
	i       int // the task running or next to run
	began   time.Time
	stopped bool // a shutdown stopped it: nothing follows
	// done is called once: failed nil when every task succeeded, else the
	// task that failed and why.
	done func(failed *unit, why string)
}

func (s *Supervisor) newTasks(cfg *config.Config, phase string, list []config.Task) *taskRun {
	tr := &taskRun{phase: phase}
	for _, t := range list {
		sp := resolveUnit(cfg, kindTask, t.Companion)
		sp.timeout = t.Timeout.D()
		sp.rekey(kindTask)
		tr.units = append(tr.units, &unit{kind: kindTask, name: t.Name, spec: sp, onEnd: s.taskEnded})
	}
	return tr
}

// runTasks makes tr the running task list and starts its first task.
func (s *Supervisor) runTasks(tr *taskRun) {
	s.tasks = tr
	tr.began = s.now()
	s.nextTask()
}

func (s *Supervisor) nextTask() {
	tr := s.tasks
	if tr.i >= len(tr.units) {
		s.endTasks(nil, "")
		return
	}
	u := tr.units[tr.i]
	s.log.Printf("%s task %s (%d of %d): %s", tr.phase, u.name, tr.i+1, len(tr.units), strings.Join(u.spec.argv, " "))
	if err := s.startUnit(u); err != nil {
		u.lastExit, u.lastCode, u.ended = "could not start: "+err.Error(), -1, s.now()
		s.endTasks(u, fmt.Sprintf("%s task %s could not be started: %v", tr.phase, u.name, err))
		return
	}
	s.sd.status(fmt.Sprintf("%s task %s running (%d of %d)", tr.phase, u.name, tr.i+1, len(tr.units)))
}

func (s *Supervisor) endTasks(failed *unit, why string) {
	tr := s.tasks
	s.tasks = nil
	for _, u := range tr.units {
		s.releaseUnitGroup(u)
	}
	tr.done(failed, why)
}

// taskEnded is a task's policy: the next task when it succeeded, the end of
// the list when it failed. A task is never restarted: a migration that
// failed once is for a person to look at.
func (s *Supervisor) taskEnded(u *unit, e Exit) {
	took := u.ended.Sub(u.started).Round(time.Millisecond)
	tr := s.tasks
	if tr == nil || tr.units[tr.i] != u || tr.stopped {
		s.log.Printf("%s (pid %d) stopped after %s (%s)", u.label(), e.Pid, took, u.lastExit)
		s.releaseUnitGroup(u)
		return
	}
	if e.Status.Exited() && e.Status.ExitStatus() == 0 && !u.timedOut {
		s.log.Printf("%s task %s done in %s", tr.phase, u.name, took)
		tr.i++
		s.nextTask()
		return
	}
	// The last lines are what the message is for: let the copier catch up.
	u.out.wait(outputWait)
	how := diedHow(e)
	if u.timedOut {
		how = fmt.Sprintf("ran past its timeout of %s and was stopped (%s)", u.spec.timeout, e.Describe())
	}
	s.endTasks(u, fmt.Sprintf("%s task %s (pid %d) %s after %s", tr.phase, u.name, e.Pid, how, took))
}

// stopTasks stops the running task list at once (SIGTERM, then SIGKILL
// after jobStopGrace): at shutdown nothing waits for a migration that has
// nothing to serve yet, and nothing after it runs.
func (s *Supervisor) stopTasks() {
	tr := s.tasks
	if tr == nil {
		return
	}
	tr.stopped = true
	s.tasks = nil
	if tr.i < len(tr.units) {
		u := tr.units[tr.i]
		s.log.Printf("%s task %s stopped by the shutdown", tr.phase, u.name)
		s.stopUnit(u, "shutdown")
	}
}

// beginApp runs tasks.before_start, then starts the workers, programs and
// periodic jobs. A failed task ends the boot with ExitTaskFailed, and no
// worker has been started.
func (s *Supervisor) beginApp() {
	if len(s.cfg.Tasks.BeforeStart) == 0 {
		s.appStart()
		return
	}
	tr := s.newTasks(s.cfg, "before-start", s.cfg.Tasks.BeforeStart)
	s.bootTasks = tr
	tr.done = func(failed *unit, why string) {
		if failed == nil {
			s.log.Printf("before-start tasks done in %s", s.now().Sub(tr.began).Round(time.Millisecond))
			s.appStart()
			return
		}
		if s.phase != running || s.fatal != nil {
			return
		}
		s.logTail(failed)
		s.failBoot(ExitTaskFailed, why+fmt.Sprintf("; no worker was started; stopping with exit code %d (fix the task, or run it once elsewhere, and start again)", ExitTaskFailed))
	}
	s.runTasks(tr)
}

// appStart starts what the before-start tasks held back.
func (s *Supervisor) appStart() {
	s.appStarted = true
	for i, st := range s.cfg.Static {
		if fi, err := os.Stat(st.Dir); st.File == "" && (err != nil || !fi.IsDir()) {
			s.log.Printf("static[%d].dir %s does not exist after the before-start tasks: %s answers 404 until it does (run collectstatic, or fix static.dir)", i, st.Dir, st.URL)
		}
	}
	s.startApp()
	s.startPrograms()
	s.startCron()
	s.runDeferred()
}

// logTail logs u's last output lines, for a failure message.
func (s *Supervisor) logTail(u *unit) {
	lines := u.tail.last()
	if len(lines) == 0 {
		s.log.Printf("%s wrote no output", u.label())
		return
	}
	s.log.Printf("last lines of %s:", u.label())
	for _, l := range lines {
		s.log.Printf("  | %s", l)
	}
}

// TaskStatus is one task in /status.
type TaskStatus struct {
	Name     string  `json:"name"`
	Phase    string  `json:"phase"` // before-start, before-roll
	State    string  `json:"state"` // pending, running, done, failed
	PID      int     `json:"pid,omitempty"`
	Exit     string  `json:"exit,omitempty"`
	Duration float64 `json:"duration_seconds,omitempty"`
}

func (tr *taskRun) status(now time.Time) []TaskStatus {
	var out []TaskStatus
	for _, u := range tr.units {
		ts := TaskStatus{Name: u.name, Phase: tr.phase, State: "pending", PID: u.pid, Exit: u.lastExit}
		switch {
		case u.pid != 0:
			ts.State = "running"
			ts.Duration = now.Sub(u.started).Seconds()
		case u.lastExit == "":
		case u.lastCode == 0 && !u.timedOut:
			ts.State = "done"
			ts.Duration = u.ended.Sub(u.started).Seconds()
		default:
			ts.State = "failed"
			if !u.started.IsZero() {
				ts.Duration = u.ended.Sub(u.started).Seconds()
			}
		}
		out = append(out, ts)
	}
	return out
}
