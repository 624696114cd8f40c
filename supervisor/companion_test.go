package supervisor

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// sh is a companion whose last argument names it in fakeOS.startsOf.
func sh(name string) config.Companion {
	return config.Companion{Name: name, Command: []string{"/bin/sh", "-c", name}, Env: map[string]string{}}
}

func task(name string, timeout time.Duration) config.Task {
	return config.Task{Companion: sh(name), Timeout: config.Duration(timeout)}
}

func program(name, restart string, required bool) config.Program {
	return config.Program{Companion: sh(name), Restart: restart, Required: required,
		StopSignal: "SIGINT", StopTimeout: config.Duration(3 * time.Second)}
}

// only returns the one pid started for name.
func (h *harness) only(name string) int {
	h.t.Helper()
	pids := h.os.startsOf(name)
	if len(pids) != 1 {
		h.t.Fatalf("%s started %d times, want once", name, len(pids))
	}
	return pids[0]
}

func (h *harness) last(name string) int {
	h.t.Helper()
	pids := h.os.startsOf(name)
	if len(pids) == 0 {
		h.t.Fatalf("%s never started", name)
	}
	return pids[len(pids)-1]
}

func TestBeforeStartTasksRunInOrderBeforeAnyWorker(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Tasks.BeforeStart = []config.Task{task("migrate", time.Minute), task("collectstatic", time.Minute)}
		c.Programs = []config.Program{program("celery", config.RestartAlways, false)}
	})
	if n := len(h.os.startsOf("serve")) + len(h.os.startsOf("celery")) + len(h.os.startsOf("collectstatic")); n != 0 {
		t.Fatalf("%d workers, programs or later tasks started while the first task runs", n)
	}
	if why := h.s.answerAdmin("ready"); !strings.Contains(why.(string), "before-start") {
		t.Fatalf("/readyz during the tasks: %q", why)
	}
	h.proxyReady()
	if h.s.ready {
		t.Fatal("ready while the before-start tasks run")
	}
	spec := h.os.started[len(h.os.started)-1]
	if env := strings.Join(spec.Env, "\n"); !strings.Contains(env, "PYTHONUNBUFFERED=1") || strings.Contains(env, "NOTIFY_SOCKET") {
		t.Errorf("task env: %s", env)
	}
	if spec.Dir != h.s.cfg.App.Chdir || spec.Stdout == nil || spec.Stdout != spec.Stderr {
		t.Errorf("task dir %q, stdout %v, stderr %v: want app.chdir and one prefixed pipe", spec.Dir, spec.Stdout, spec.Stderr)
	}
	h.exit(h.only("migrate"), 0)
	if len(h.os.startsOf("serve")) != 0 {
		t.Fatal("a worker started before the last task")
	}
	h.exit(h.only("collectstatic"), 0)
	if n := len(h.os.startsOf("serve")); n != 2 {
		t.Fatalf("%d workers after the tasks, want 2", n)
	}
	h.only("celery")
	h.bootReady()
	st := h.s.status()
	if len(st.Tasks) != 2 || st.Tasks[0].State != "done" || st.Tasks[1].State != "done" {
		t.Fatalf("/status tasks: %+v", st.Tasks)
	}
}

func TestFailingTaskStopsTheBoot(t *testing.T) {
	cases := []struct {
		name string
		end  func(h *harness, pid int)
		want string
	}{
		{"exit 1", func(h *harness, pid int) { h.exit(pid, 1) }, "exited with code 1"},
		{"killed", func(h *harness, pid int) { h.killed(pid, syscall.SIGKILL) }, "killed by SIGKILL"},
		{"timeout", func(h *harness, pid int) {
			h.tick(1500 * time.Millisecond)
			if !h.os.signalled(pid, syscall.SIGTERM) {
				h.t.Fatal("no SIGTERM past the task's timeout")
			}
			h.tick(jobStopGrace + time.Second)
			if !h.os.signalled(pid, syscall.SIGKILL) {
				h.t.Fatal("no SIGKILL after the stop grace")
			}
			h.killed(pid, syscall.SIGKILL)
		}, "ran past its timeout of 1s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) {
				c.Tasks.BeforeStart = []config.Task{task("migrate", time.Second), task("next", 0)}
			})
			c.end(h, h.only("migrate"))
			if h.s.fatal == nil || !strings.Contains(h.s.fatal.Error(), c.want) {
				t.Fatalf("fatal %v, want it to say %q", h.s.fatal, c.want)
			}
			if n := len(h.os.startsOf("serve")) + len(h.os.startsOf("next")); n != 0 {
				t.Fatalf("%d workers or later tasks started after a failed task", n)
			}
			h.stopsWith(ExitTaskFailed)
		})
	}
}

func TestSIGTERMDuringATaskStopsIt(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Tasks.BeforeStart = []config.Task{task("migrate", 0), task("next", 0)}
		c.Shutdown.Delay = config.Duration(5 * time.Second)
	})
	pid := h.only("migrate")
	h.s.onSignal(syscall.SIGTERM)
	if !h.os.signalled(pid, syscall.SIGTERM) {
		t.Fatal("the running task was not stopped at SIGTERM")
	}
	h.exit(pid, 0)
	h.tick(6 * time.Second)
	proxy := h.only("proxy")
	h.exit(proxy, 0)
	if n := len(h.os.startsOf("next")) + len(h.os.startsOf("serve")); n != 0 {
		t.Fatalf("%d tasks or workers started after SIGTERM", n)
	}
	if done, code := h.s.finished(); !done || code != ExitOK {
		t.Fatalf("finished %v code %d, want 0", done, code)
	}
}

func TestProgramRestartPolicy(t *testing.T) {
	cases := []struct {
		restart string
		code    int
		again   bool
	}{
		{config.RestartAlways, 0, true},
		{config.RestartAlways, 1, true},
		{config.RestartOnFailure, 0, false},
		{config.RestartOnFailure, 1, true},
		{config.RestartNever, 1, false},
	}
	for _, c := range cases {
		t.Run(c.restart+" after exit "+string(rune('0'+c.code)), func(t *testing.T) {
			h := newHarness(t, func(cfg *config.Config) {
				cfg.Programs = []config.Program{program("celery", c.restart, false)}
			})
			h.exit(h.only("celery"), c.code)
			h.tick(backoffBase + time.Millisecond)
			if got := len(h.os.startsOf("celery")) == 2; got != c.again {
				t.Fatalf("restarted %v, want %v", got, c.again)
			}
			if h.s.phase != running {
				t.Fatal("a program that is not required stopped berth")
			}
		})
	}
}

func TestProgramBackoffAndRequired(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Programs = []config.Program{program("broken", config.RestartAlways, true), program("other", config.RestartAlways, false)}
	})
	h.bootReady()
	for i, d := range []time.Duration{100, 200, 400, 800} {
		d *= time.Millisecond
		h.exit(h.last("broken"), 1)
		h.tick(d / 2)
		if n := len(h.os.startsOf("broken")); n != i+1 {
			t.Fatalf("failure %d: restarted before its backoff of %s", i+1, d)
		}
		h.tick(d)
		if n := len(h.os.startsOf("broken")); n != i+2 {
			t.Fatalf("failure %d: not restarted after %s", i+1, d)
		}
	}
	st := h.s.status().Programs[0]
	if !st.CrashLoop || st.Failures != 4 || st.Restarts != 4 || st.State != "running" {
		t.Fatalf("/status of a crash-looping program: %+v", st)
	}
	h.exit(h.last("broken"), 1) // the 5th failure in a row
	if h.s.phase == running || h.s.exitCode != ExitProgramFailed {
		t.Fatalf("phase %d exit %d after a required program's 5th failure, want a graceful stop with %d", h.s.phase, h.s.exitCode, ExitProgramFailed)
	}
	// A graceful stop: the other program stops last, with its own signal.
	other := h.only("other")
	h.exit(h.only("proxy"), 0)
	for _, w := range h.s.sortedWorkers() {
		h.exit(w.pid, 0)
	}
	if !h.os.signalled(other, syscall.SIGINT) {
		t.Fatal("the other program did not get its stop signal")
	}
	h.exit(other, 0)
	if done, code := h.s.finished(); !done || code != ExitProgramFailed {
		t.Fatalf("finished %v code %d, want %d", done, code, ExitProgramFailed)
	}
}

func TestShutdownStopsProgramsAfterWorkers(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Programs = []config.Program{program("celery", config.RestartAlways, false)}
	})
	h.bootReady()
	celery := h.only("celery")
	h.s.onSignal(syscall.SIGTERM)
	h.tick(tick)
	proxy := h.only("proxy")
	if !h.os.signalled(proxy, syscall.SIGTERM) || h.os.signalled(celery, syscall.SIGINT) {
		t.Fatal("want the proxy stopped first, the program still running")
	}
	h.exit(proxy, 0)
	w1, w2 := h.worker("1.1"), h.worker("2.1")
	if !h.os.signalled(w1.pid, syscall.SIGTERM) || h.os.signalled(celery, syscall.SIGINT) {
		t.Fatal("want the workers stopped next, the program still running")
	}
	h.exit(w1.pid, 0)
	h.exit(w2.pid, 0)
	if !h.os.signalled(celery, syscall.SIGINT) {
		t.Fatal("the program did not get its stop_signal once the workers were gone")
	}
	h.tick(2 * time.Second)
	if h.os.signalled(celery, syscall.SIGKILL) {
		t.Fatal("SIGKILL before the program's stop_timeout")
	}
	h.tick(2 * time.Second)
	if !h.os.signalled(celery, syscall.SIGKILL) || !h.os.signalled(-celery, syscall.SIGKILL) {
		t.Fatalf("no SIGKILL to the program and its process group after stop_timeout: %v", h.os.signals)
	}
	h.killed(celery, syscall.SIGKILL)
	if done, code := h.s.finished(); !done || code != 0 {
		t.Fatalf("finished %v code %d", done, code)
	}
}

func TestReloadRestartsOnlyTheChangedProgram(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Programs = []config.Program{program("celery", config.RestartAlways, false), program("beat", config.RestartAlways, false)}
	})
	h.bootReady()
	progs := "programs:\n" +
		"  - {name: celery, command: [/bin/sh, -c, celery], stop_signal: SIGINT, stop_timeout: 3s%s}\n" +
		"  - {name: beat, command: [/bin/sh, -c, beat], stop_signal: SIGINT, stop_timeout: 3s}\n"
	h.withConfigFile(baseYAML + strings.Replace(progs, "%s", "", 1))
	h.s.cfg, _ = config.Load(h.s.opts.ConfigPath)
	celery, beat := h.only("celery"), h.only("beat")
	h.writeConfig(baseYAML + strings.Replace(progs, "%s", ", env: {CELERY_X: '2'}", 1))
	h.s.reload(reloadRequest{reason: "test"})
	if !h.s.reloadState.OK || !strings.Contains(h.s.reloadState.Message, "program celery restarted") {
		t.Fatalf("reload: %+v", h.s.reloadState)
	}
	if !h.os.signalled(celery, syscall.SIGINT) || h.os.signalled(beat, syscall.SIGINT) {
		t.Fatalf("want only celery stopped: %v", h.os.signals)
	}
	if len(h.os.startsOf("celery")) != 1 {
		t.Fatal("the new celery started before the old one stopped")
	}
	h.exit(celery, 0)
	if n := len(h.os.startsOf("celery")); n != 2 {
		t.Fatalf("celery started %d times, want 2", n)
	}
	if env := strings.Join(h.os.started[len(h.os.started)-1].Env, " "); !strings.Contains(env, "CELERY_X=2") {
		t.Fatalf("the new celery lacks its new env: %s", env)
	}
	if len(h.os.startsOf("beat")) != 1 || len(h.os.startsOf("serve")) != 2 {
		t.Fatal("beat or the workers were restarted by a change to celery alone")
	}
}

func TestCronNeverOverlaps(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Cron = []config.Job{{Companion: sh("tick"), Schedule: "@every 2s"}}
	})
	h.bootReady()
	h.tick(1 * time.Second)
	if len(h.os.startsOf("tick")) != 0 {
		t.Fatal("started before its time")
	}
	h.tick(1100 * time.Millisecond)
	first := h.only("tick")
	h.tick(2 * time.Second) // still running: this run is skipped
	if n := len(h.os.startsOf("tick")); n != 1 {
		t.Fatalf("started %d runs while the first was going, want 1", n)
	}
	h.exit(first, 0)
	h.tick(2 * time.Second)
	if n := len(h.os.startsOf("tick")); n != 2 {
		t.Fatalf("%d runs after the first ended, want 2", n)
	}
	h.exit(h.last("tick"), 3)
	js := h.s.status().Cron[0]
	if js.Runs != 2 || js.Skipped != 1 || js.Failed != 1 || js.LastSuccess == nil || js.LastExitCode == nil || *js.LastExitCode != 3 {
		t.Fatalf("/status of the job: %+v", js)
	}
}

func TestBeforeRollTaskFailureRefusesTheReload(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		c.Tasks.BeforeRoll = []config.Task{task("migrate", 0)}
	})
	h.bootReady()
	h.s.reload(reloadRequest{reason: "test", code: true})
	if h.s.pending != nil || len(h.os.startsOf("serve")) != 2 {
		t.Fatal("the roll started before its before-roll task")
	}
	h.exit(h.only("migrate"), 2)
	if h.s.reloadState.OK || !strings.Contains(h.s.reloadState.Message, "before-roll task migrate") {
		t.Fatalf("reload state %+v, want it refused by the task", h.s.reloadState)
	}
	if len(h.os.startsOf("serve")) != 2 || !h.s.ready {
		t.Fatal("the workers were touched by a refused reload")
	}
	h.s.reload(reloadRequest{reason: "test", code: true})
	h.exit(h.last("migrate"), 0)
	if h.s.pending == nil {
		t.Fatal("no roll after the before-roll task succeeded")
	}
}

// TestEveryKindStopsTheSameWay: one stop sequence for every kind of child,
// with each kind's own signal, grace and process-group rule: the stop
// signal now, no SIGKILL before the grace, SIGKILL after it (to the process
// group too for a program). A zygote and a worker that never became ready
// get no SIGKILL from the sequence.
func TestEveryKindStopsTheSameWay(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*config.Config)
		stop  func(h *harness) int // stops one child and returns its pid
		sig   syscall.Signal
		grace time.Duration // 0: no SIGKILL follows
		group bool
	}{
		{"worker", nil, func(h *harness) int {
			h.bootReady()
			w := h.worker("1.1")
			h.s.stopWorker(w)
			return w.pid
		}, syscall.SIGTERM, 5 * time.Second, false},
		{"worker past a request's timeout", nil, func(h *harness) int {
			h.bootReady()
			h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeTimeout, Worker: "1.1"}})
			return h.worker("1.1").pid
		}, syscall.SIGUSR2, dumpGrace, false},
		{"worker past its start timeout", nil, func(h *harness) int {
			h.bootReady()
			h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeDue, Worker: "1.1"}})
			pid := h.worker("1.2").pid
			h.tick(startTimeout + time.Second)
			return pid
		}, syscall.SIGKILL, 0, false},
		{"proxy", nil, func(h *harness) int {
			h.bootReady()
			p := h.s.activeProxy()
			h.s.stopProxy(p, "test")
			return p.pid
		}, syscall.SIGTERM, 6 * time.Second, false},
		{"program", func(c *config.Config) { c.Programs = []config.Program{program("celery", config.RestartAlways, false)} },
			func(h *harness) int {
				h.bootReady()
				h.s.stopUnit(h.s.programs[0], "test")
				return h.only("celery")
			}, syscall.SIGINT, 3 * time.Second, true},
		{"zygote", func(c *config.Config) { c.Workers.Preload = true }, func(h *harness) int {
			z := h.s.gen.zygote
			h.s.stopZygoteProc(z)
			return z.pid
		}, syscall.SIGTERM, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.edit)
			pid := c.stop(h)
			if !h.os.signalled(pid, c.sig) {
				t.Fatalf("no %s at the stop: %v", c.sig, h.os.signals)
			}
			h.os.signals = nil
			wait := c.grace - 50*time.Millisecond
			if c.grace == 0 {
				wait = time.Hour
			}
			h.tick(wait)
			if h.os.signalled(pid, syscall.SIGKILL) || h.os.signalled(-pid, syscall.SIGKILL) {
				t.Fatalf("SIGKILL before the grace of %s: %v", c.grace, h.os.signals)
			}
			if c.grace == 0 {
				return
			}
			h.tick(100 * time.Millisecond)
			if !h.os.signalled(pid, syscall.SIGKILL) || h.os.signalled(-pid, syscall.SIGKILL) != c.group {
				t.Fatalf("after the grace: %v, want SIGKILL to %d (and to its group: %v)", h.os.signals, pid, c.group)
			}
		})
	}
}

// TestReloadReconcilesProgramsAndJobs: a reload matches programs and jobs by
// name: a new one is added, a changed one changed (a running program
// restarted, a job rescheduled), an unchanged one left alone, a removed one
// stopped or forgotten; what it did is listed in cfg's order, removals last.
func TestReloadReconcilesProgramsAndJobs(t *testing.T) {
	job := func(name, schedule string) config.Job { return config.Job{Companion: sh(name), Schedule: schedule} }
	h := newHarness(t, func(c *config.Config) {
		c.Programs = []config.Program{program("celery", config.RestartAlways, false), program("beat", config.RestartAlways, false),
			program("same", config.RestartAlways, false)}
		c.Cron = []config.Job{job("a", "@every 1h"), job("b", "@every 1h"), job("c", "@every 1h")}
	})
	h.bootReady()
	celery, beat, same := h.only("celery"), h.only("beat"), h.only("same")
	cfg := *h.s.cfg
	changed := program("celery", config.RestartAlways, false)
	changed.Env = map[string]string{"X": "1"}
	cfg.Programs = []config.Program{program("flower", config.RestartAlways, false), changed, program("same", config.RestartAlways, false)}
	cfg.Cron = []config.Job{job("d", "@every 1h"), job("b", "@every 2h"), job("a", "@every 1h")}
	h.clk.advance(time.Minute)

	did := h.s.applyPrograms(&cfg)
	if got, want := strings.Join(did, "; "), "program flower added; program celery restarted; program beat removed"; got != want {
		t.Errorf("programs: did %q, want %q", got, want)
	}
	var names []string
	for _, u := range h.s.programs {
		names = append(names, u.name)
	}
	if got := strings.Join(names, ","); got != "flower,celery,same" {
		t.Errorf("programs after the reload: %s", got)
	}
	if !h.os.signalled(celery, syscall.SIGINT) || !h.os.signalled(beat, syscall.SIGINT) || h.os.signalled(same, syscall.SIGINT) {
		t.Errorf("want celery and beat stopped, same left alone: %v", h.os.signals)
	}
	if len(h.os.startsOf("flower")) != 1 {
		t.Error("flower not started")
	}

	jobs := map[string]*unit{}
	for _, u := range h.s.jobs {
		jobs[u.name] = u
	}
	aNext := jobs["a"].job.runAt
	did = h.s.applyCron(&cfg)
	if got, want := strings.Join(did, "; "), "cron d added; cron b changed; cron c removed"; got != want {
		t.Errorf("cron: did %q, want %q", got, want)
	}
	names = nil
	for _, u := range h.s.jobs {
		names = append(names, u.name)
	}
	if got := strings.Join(names, ","); got != "d,b,a" {
		t.Errorf("jobs after the reload: %s", got)
	}
	now := h.clk.now()
	if !jobs["c"].job.gone || jobs["a"].job.runAt != aNext || jobs["b"] != h.s.jobs[1] ||
		!jobs["b"].job.runAt.Equal(now.Add(2*time.Hour)) || !h.s.jobs[0].job.runAt.Equal(now.Add(time.Hour)) {
		t.Errorf("jobs: c gone %v, a next %s (was %s), b next %s, d next %s, now %s", jobs["c"].job.gone,
			jobs["a"].job.runAt, aNext, jobs["b"].job.runAt, h.s.jobs[0].job.runAt, now)
	}
}
