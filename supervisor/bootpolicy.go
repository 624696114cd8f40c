package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// The boot policy: until the first worker has been ready, nothing is served,
// so a start that keeps failing is not something to ride out with backoff
// but a broken deployment. Restarting forever would hide it: the container
// looks alive, /readyz fails, clients wait. berth exits instead, and podman,
// systemd or Kubernetes show a crash loop with the reason in the log.
//
//   - A Python process that dies while importing the app (the zygote, or a
//     worker with preload off), by an exception (exit 4 from the runtime,
//     importFailed), os._exit, a signal or the OOM killer, is the app failing
//     to import: berth exits with ExitAppImport at once, no respawn.
//   - Any other failed start (fork/exec refused, a forked worker dying before
//     READY, the zygote refusing a fork) is retried with the usual backoff;
//     after bootStartLimit failures in a row berth exits with
//     ExitStartFailed.
//
// Once a worker has been ready, crashes are restarted with backoff as ever:
// a serving berth must not exit because one replacement fails. Rolls of a
// later generation have their own failure handling (reload.go).

// bootStartLimit is how many failed starts in a row, before any worker was
// ready, end the boot. With the restart backoff (100ms, doubling) the fifth
// failure comes about 1.5 s after the first, far within the 30 s an operator
// may wait for a verdict, and a transient fork failure (EAGAIN under a pids
// limit) still gets four retries.
const bootStartLimit = 5

// bootState is the boot policy's state.
type bootState struct {
	served   bool // a worker has been ready once: the policy no longer applies
	failures int  // failed starts since boot (none has succeeded yet)
}

// atBoot says whether a failure of generation g falls under the boot policy.
func (s *Supervisor) atBoot(g *generation) bool {
	// s.gen is nil while boot starts the first generation's zygote.
	return !s.bootPolicy.served && s.phase == running && s.fatal == nil && (s.gen == nil || g == s.gen) && len(s.gens) <= 1
}

// bootStartFailed counts a failed start of what (its error is logged by the
// caller) and ends the boot at the limit. It reports whether berth is now
// stopping, in which case the caller schedules no restart.
func (s *Supervisor) bootStartFailed(g *generation, what string) bool {
	if !s.atBoot(g) {
		return false
	}
	s.bootPolicy.failures++
	if s.bootPolicy.failures < bootStartLimit {
		return false
	}
	s.failBoot(ExitStartFailed, fmt.Sprintf("%s could not be started (the error is above); %d starts failed in a row and no worker was ever ready: stopping with exit code %d instead of retrying forever",
		what, s.bootPolicy.failures, ExitStartFailed))
	return true
}

// bootImportDied ends the boot when who, a Python process importing the app
// of g, died before it was ready and no worker has been ready yet. It
// reports whether it did.
func (s *Supervisor) bootImportDied(g *generation, who string, e Exit) bool {
	if !s.atBoot(g) {
		return false
	}
	s.failBoot(ExitAppImport, fmt.Sprintf("%s (pid %d) %s while importing the app %s, before any worker was ready; berth does not respawn an app that cannot import: fix the app or app.module and start again",
		who, e.Pid, diedHow(e), g.module))
	return true
}

// diedHow is Exit.Describe as a verb phrase: "exited with code 1",
// "was killed by SIGKILL".
func diedHow(e Exit) string {
	switch {
	case e.Status.Exited():
		return fmt.Sprintf("exited with code %d", e.Status.ExitStatus())
	case e.Status.Signaled():
		return "was " + e.Describe()
	}
	return "ended (" + e.Describe() + ")"
}

// failBoot stops berth before it ever served: everything is told to stop
// now and berth exits with code once every child is gone (SIGKILL after
// fastStopGrace). Proxies get SIGQUIT: the requests they hold wait for a
// worker that will never come, so their connections are closed at once
// rather than after graceful_timeout.
func (s *Supervisor) failBoot(code int, why string) {
	s.log.Printf("%s", why)
	s.fatal = errors.New(why)
	s.exitCode = code
	s.ready = false
	s.sd.status(why)
	s.closeListeners()
	for pid, p := range s.procs {
		sig := syscall.SIGTERM
		switch p.stage() {
		case stageProxy:
			sig = syscall.SIGQUIT
		case stageCompanions:
			continue // stopped last, with their own signals (stopCompanions)
		}
		_ = s.os.Signal(pid, sig)
	}
	s.stopTasks()
	// Restarts already due in this tick must not run.
	for _, sl := range s.slots {
		sl.restartAt = time.Time{}
	}
	for _, g := range s.gens {
		for _, z := range g.zygotes() {
			z.restartAt = time.Time{}
		}
	}
	s.phase = phaseWorkers
	s.phaseUntil = s.now().Add(fastStopGrace)
}
