package supervisor

import (
	"math/rand/v2"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/berth-dev/berth/config"
)

// jobState is what a periodic job has beyond a unit.
type jobState struct {
	schedule string
	sched    cron.Schedule
	delay    time.Duration // random_delay
	next     time.Time     // the scheduled time of the next run
	runAt    time.Time     // next plus its random delay
	runs     int64
	failed   int64
	skipped  int64

	lastStart, lastSuccess time.Time
	lastDuration           time.Duration
	gone                   bool // removed by a reload while a run went on
}

func (s *Supervisor) jobUnit(cfg *config.Config, j config.Job) *unit {
	sp := resolveUnit(cfg, kindJob, j.Companion)
	sp.timeout = j.Timeout.D()
	sp.rekey(kindJob)
	sched, err := config.ParseSchedule(j.Schedule)
	if err != nil {
		// Validated with the config; never nil below.
		sched = cron.Every(24 * time.Hour)
	}
	return &unit{kind: kindJob, name: j.Name, spec: sp, onEnd: s.jobEnded,
		job: &jobState{schedule: j.Schedule, sched: sched, delay: j.RandomDelay.D()}}
}

func (s *Supervisor) startCron() {
	now := s.now()
	for _, j := range s.cfg.Cron {
		u := s.jobUnit(s.cfg, j)
		s.jobs = append(s.jobs, u)
		s.scheduleJob(u, now)
	}
}

// scheduleJob sets u's next run after t. The next time is counted from
// now, not from the missed one: a berth that was busy (or a run that was
// skipped) never starts a burst of runs to catch up.
func (s *Supervisor) scheduleJob(u *unit, t time.Time) {
	js := u.job
	js.next = js.sched.Next(t)
	js.runAt = js.next
	if js.delay > 0 {
		js.runAt = js.runAt.Add(time.Duration(rand.Int64N(int64(js.delay) + 1)))
	}
}

// tickJobs starts the jobs that are due. A job whose previous run is still
// going is not started again: that run is skipped and logged.
func (s *Supervisor) tickJobs(now time.Time) {
	for _, u := range s.jobs {
		js := u.job
		if now.Before(js.runAt) {
			continue
		}
		due := js.next
		s.scheduleJob(u, now)
		if u.pid != 0 {
			js.skipped++
			s.metrics.cronRuns.WithLabelValues(u.name, "skipped").Inc()
			s.log.Printf("cron %s: the run started at %s (pid %d) is still going: skipping the run due at %s",
				u.name, u.started.Format(time.TimeOnly), u.pid, due.Format(time.TimeOnly))
			continue
		}
		js.runs++
		js.lastStart = now
		s.metrics.cronLastStart.WithLabelValues(u.name).Set(float64(now.UnixNano()) / 1e9)
		if err := s.startUnit(u); err != nil {
			u.lastExit, u.lastCode, u.ended, u.started = "could not start: "+err.Error(), -1, now, now
			js.failed++
			s.metrics.cronRuns.WithLabelValues(u.name, "failed").Inc()
			s.log.Printf("cron %s could not be started: %v", u.name, err)
			continue
		}
		s.log.Printf("cron %s started (pid %d): %s", u.name, u.pid, strings.Join(u.spec.argv, " "))
	}
}

// jobEnded records a run's outcome; the next run comes at its time.
func (s *Supervisor) jobEnded(u *unit, e Exit) {
	js := u.job
	js.lastDuration = u.ended.Sub(u.started)
	s.metrics.cronLastDuration.WithLabelValues(u.name).Set(js.lastDuration.Seconds())
	s.metrics.cronLastExit.WithLabelValues(u.name).Set(float64(u.lastCode))
	took := js.lastDuration.Round(time.Millisecond)
	if e.Status.Exited() && e.Status.ExitStatus() == 0 && !u.timedOut {
		js.lastSuccess = u.ended
		s.metrics.cronRuns.WithLabelValues(u.name, "ok").Inc()
		s.metrics.cronLastSuccess.WithLabelValues(u.name).Set(float64(u.ended.UnixNano()) / 1e9)
		s.log.Printf("cron %s (pid %d) done in %s", u.name, e.Pid, took)
	} else {
		js.failed++
		s.metrics.cronRuns.WithLabelValues(u.name, "failed").Inc()
		how := diedHow(e)
		if u.timedOut {
			how = "ran past its timeout of " + u.spec.timeout.String() + " and was stopped"
		}
		s.log.Printf("cron %s (pid %d) failed: it %s after %s", u.name, e.Pid, how, took)
	}
	if js.gone {
		s.releaseUnitGroup(u)
	}
}

// applyCron makes the jobs cfg's. A job keeps its counters and a run in
// progress across a reload; a changed schedule takes effect from now.
func (s *Supervisor) applyCron(cfg *config.Config) []string {
	var want []*unit
	for _, j := range cfg.Cron {
		want = append(want, s.jobUnit(cfg, j))
	}
	now := s.now()
	var did []string
	s.jobs, did = reconcile(kindJob, s.jobs, want, func(u *unit) { s.scheduleJob(u, now) },
		func(u, nu *unit) string {
			js, njs := u.job, nu.job
			if u.spec.key == nu.spec.key && js.schedule == njs.schedule && js.delay == njs.delay {
				return ""
			}
			// A run in progress finishes with the settings it started with.
			u.spec = nu.spec
			if js.schedule != njs.schedule || js.delay != njs.delay {
				js.schedule, js.sched, js.delay = njs.schedule, njs.sched, njs.delay
				s.scheduleJob(u, now)
			}
			return "changed"
		},
		func(u *unit) {
			u.job.gone = true
			if u.pid == 0 {
				s.releaseUnitGroup(u)
			}
		})
	return did
}

// JobStatus is one periodic job in /status.
type JobStatus struct {
	Name         string     `json:"name"`
	Schedule     string     `json:"schedule"`
	Running      bool       `json:"running"`
	PID          int        `json:"pid,omitempty"`
	Runs         int64      `json:"runs"`
	Failed       int64      `json:"failed"`
	Skipped      int64      `json:"skipped"`
	LastStart    *time.Time `json:"last_start,omitempty"`
	LastSuccess  *time.Time `json:"last_success,omitempty"`
	LastDuration float64    `json:"last_duration_seconds,omitempty"`
	LastExit     string     `json:"last_exit,omitempty"`
	LastExitCode *int       `json:"last_exit_code,omitempty"`
	NextRun      time.Time  `json:"next_run"`
}

func (s *Supervisor) jobStatus() []JobStatus {
	out := []JobStatus{}
	for _, u := range s.jobs {
		js := u.job
		st := JobStatus{Name: u.name, Schedule: js.schedule, Running: u.pid != 0, PID: u.pid, Runs: js.runs,
			Failed: js.failed, Skipped: js.skipped, LastDuration: js.lastDuration.Seconds(), LastExit: u.lastExit, NextRun: js.runAt}
		if !js.lastStart.IsZero() {
			t := js.lastStart
			st.LastStart = &t
		}
		if !js.lastSuccess.IsZero() {
			t := js.lastSuccess
			st.LastSuccess = &t
		}
		if u.lastExit != "" {
			c := u.lastCode
			st.LastExitCode = &c
		}
		out = append(out, st)
	}
	return out
}
