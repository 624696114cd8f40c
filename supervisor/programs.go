package supervisor

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/config"
)

// programStartLimit is how many failures in a row (each run shorter than
// healthyAfter, or a start that failed) make a required program one that
// cannot be kept running. With the restart backoff (100ms doubling) the
// fifth comes about 1.5 s after the first: a broker that is down for a
// moment is ridden out by the backoff of a program that is not required,
// and one that is required is meant to take the container down with it.
const programStartLimit = 5

// crashLoopAfter is how many failures in a row are reported as a crash loop
// (log, STATUS=, /status, berth_program_crash_looping).
const crashLoopAfter = 3

// programState is what a program has beyond a unit.
type programState struct {
	state     string // running, backoff, stopping, exited, failed, stopped
	failures  int    // in a row, each run shorter than healthyAfter
	restartAt time.Time
	restarts  int64
	gone      bool      // removed by a reload: not restarted
	respawn   *unitSpec // its settings changed: start with these once stopped
}

func (s *Supervisor) programUnit(cfg *config.Config, p config.Program) *unit {
	sp := resolveUnit(cfg, kindProgram, p.Companion)
	sp.stopSignal = syscall.Signal(config.SignalNumber(p.StopSignal))
	sp.stopTimeout = p.StopTimeout.D()
	sp.restart, sp.required = p.Restart, p.Required
	sp.rekey(kindProgram)
	return &unit{kind: kindProgram, name: p.Name, spec: sp, prog: &programState{}, onEnd: s.programEnded}
}

// startPrograms starts every configured program (after the before-start
// tasks, with the workers).
func (s *Supervisor) startPrograms() {
	for _, p := range s.cfg.Programs {
		u := s.programUnit(s.cfg, p)
		s.programs = append(s.programs, u)
		s.launchProgram(u)
	}
}

func (s *Supervisor) launchProgram(u *unit) {
	ps := u.prog
	ps.restartAt = time.Time{}
	if err := s.startUnit(u); err != nil {
		u.lastExit, u.lastCode, u.ended = "could not start: "+err.Error(), -1, s.now()
		s.log.Printf("program %s could not be started: %v", u.name, err)
		s.programFailed(u)
		return
	}
	ps.state = "running"
	s.metrics.programUp.WithLabelValues(u.name).Set(1)
	s.log.Printf("program %s started (pid %d): %s", u.name, u.pid, strings.Join(u.spec.argv, " "))
}

// programEnded is a program's policy: restart by its restart setting, with
// backoff; a required one that cannot be kept running stops berth.
func (s *Supervisor) programEnded(u *unit, e Exit) {
	ps := u.prog
	lived := u.ended.Sub(u.started)
	s.metrics.programUp.WithLabelValues(u.name).Set(0)
	switch {
	case ps.gone:
		s.log.Printf("program %s (pid %d) stopped: removed from the config (%s)", u.name, e.Pid, u.lastExit)
		s.releaseUnitGroup(u)
		return
	case ps.respawn != nil && s.phase == running && s.fatal == nil:
		s.log.Printf("program %s (pid %d) stopped (%s): starting it with its new settings", u.name, e.Pid, u.lastExit)
		u.spec, ps.respawn, ps.failures = *ps.respawn, nil, 0
		s.launchProgram(u)
		return
	case s.phase != running || s.fatal != nil:
		ps.state = "stopped"
		s.log.Printf("program %s (pid %d) stopped after %s (%s)", u.name, e.Pid, lived.Round(time.Millisecond), u.lastExit)
		return
	}
	if lived >= healthyAfter {
		ps.failures = 0
	}
	failed := !e.Status.Exited() || e.Status.ExitStatus() != 0
	restart := u.spec.restart == config.RestartAlways || (u.spec.restart == config.RestartOnFailure && failed)
	s.log.Printf("program %s (pid %d) %s after %s", u.name, e.Pid, diedHow(e), lived.Round(time.Millisecond))
	if !restart {
		ps.state = "exited"
		if failed {
			ps.state = "failed"
		}
		if u.spec.required {
			s.requiredLost(u, fmt.Sprintf("it %s and its restart policy is %s", diedHow(e), u.spec.restart))
		}
		return
	}
	s.programFailed(u)
}

// programFailed counts one failure in a row and schedules the restart.
func (s *Supervisor) programFailed(u *unit) {
	ps := u.prog
	if s.phase != running || s.fatal != nil {
		ps.state = "stopped"
		return
	}
	ps.failures++
	if u.spec.required && ps.failures >= programStartLimit {
		ps.state = "failed"
		s.requiredLost(u, fmt.Sprintf("it failed %d times in a row, each within %s (last: %s)", ps.failures, healthyAfter, u.lastExit))
		return
	}
	d := backoff(ps.failures)
	ps.state, ps.restartAt = "backoff", s.now().Add(d)
	ps.restarts++
	s.metrics.programRestarts.WithLabelValues(u.name).Inc()
	if ps.failures >= crashLoopAfter {
		msg := fmt.Sprintf("program %s is crash-looping: %d failures in a row (last: %s); next start in %s", u.name, ps.failures, u.lastExit, d)
		s.log.Printf("%s", msg)
		s.sd.status(msg)
		s.metrics.programCrashLoop.WithLabelValues(u.name).Set(1)
		return
	}
	s.log.Printf("program %s: restarting in %s", u.name, d)
}

// requiredLost stops berth, gracefully, because required program u cannot
// be kept running; the exit code says so.
func (s *Supervisor) requiredLost(u *unit, why string) {
	msg := fmt.Sprintf("required program %s cannot be kept running: %s; stopping with exit code %d", u.name, why, ExitProgramFailed)
	s.log.Printf("%s", msg)
	s.logTail(u)
	s.sd.status(msg)
	if s.phase == running {
		s.beginShutdown("required program " + u.name + " lost")
	}
	s.exitCode = ExitProgramFailed
}

// tickPrograms restarts programs whose backoff passed, and clears the
// failure count of one that has run healthyAfter.
func (s *Supervisor) tickPrograms(now time.Time) {
	for _, u := range s.programs {
		ps := u.prog
		switch {
		case u.pid == 0 && !ps.restartAt.IsZero() && now.After(ps.restartAt) && !ps.gone:
			s.launchProgram(u)
		case u.pid != 0 && ps.failures > 0 && now.Sub(u.started) >= healthyAfter:
			if ps.failures >= crashLoopAfter {
				s.log.Printf("program %s has run for %s: no longer crash-looping", u.name, healthyAfter)
				s.metrics.programCrashLoop.WithLabelValues(u.name).Set(0)
			}
			ps.failures = 0
		}
	}
}

// applyPrograms makes the running programs cfg's: a program whose settings
// (its own, or the app settings it inherits) changed is stopped with its
// stop signal and started again; a new one starts; a removed one stops;
// the others keep running untouched. It returns what it did, for the log.
func (s *Supervisor) applyPrograms(cfg *config.Config) []string {
	var want []*unit
	for _, p := range cfg.Programs {
		want = append(want, s.programUnit(cfg, p))
	}
	var did []string
	s.programs, did = reconcile(kindProgram, s.programs, want, s.launchProgram,
		func(u, nu *unit) string {
			switch {
			case u.spec.key == nu.spec.key:
				return ""
			case u.pid != 0:
				u.prog.respawn = &nu.spec
				s.stopUnit(u, "settings changed")
			default:
				u.spec, u.prog.failures = nu.spec, 0
				s.launchProgram(u)
			}
			return "restarted"
		},
		func(u *unit) {
			u.prog.gone = true
			s.metrics.programUp.DeleteLabelValues(u.name)
			if u.pid != 0 {
				s.stopUnit(u, "removed from the config")
			} else {
				s.releaseUnitGroup(u)
			}
		})
	return did
}

// ProgramStatus is one companion program in /status.
type ProgramStatus struct {
	Name      string     `json:"name"`
	PID       int        `json:"pid,omitempty"`
	State     string     `json:"state"` // running, backoff, stopping, exited, failed, stopped
	Required  bool       `json:"required"`
	Restart   string     `json:"restart"`
	Restarts  int64      `json:"restarts"`
	Failures  int        `json:"failures_in_a_row"`
	CrashLoop bool       `json:"crash_loop"`
	LastExit  string     `json:"last_exit,omitempty"`
	NextStart *time.Time `json:"next_start,omitempty"`
	UptimeSec float64    `json:"uptime_seconds,omitempty"`
	// LogTail is its last output lines while it is failing.
	LogTail []string `json:"log_tail,omitempty"`
}

func (s *Supervisor) programStatus(now time.Time) []ProgramStatus {
	out := []ProgramStatus{}
	for _, u := range s.programs {
		ps := u.prog
		st := ProgramStatus{Name: u.name, PID: u.pid, State: ps.state, Required: u.spec.required, Restart: u.spec.restart,
			Restarts: ps.restarts, Failures: ps.failures, CrashLoop: ps.failures >= crashLoopAfter, LastExit: u.lastExit}
		if u.stopping {
			st.State = "stopping"
		}
		if u.pid != 0 {
			st.UptimeSec = now.Sub(u.started).Seconds()
		}
		if !ps.restartAt.IsZero() {
			t := ps.restartAt
			st.NextStart = &t
		}
		if ps.failures > 0 || st.State == "failed" {
			st.LogTail = u.tail.last()
		}
		out = append(out, st)
	}
	return out
}
