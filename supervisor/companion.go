// Companions: before-start tasks, companion programs and periodic jobs.
// Each is a unit: one command, resolved from the config into a start spec,
// started through the same OS as the proxy and the workers, reaped by the
// same reaper (a unit is a child), put in a cgroup of its own, and stopped
// by one stop sequence (its stop signal, SIGKILL to its process group at its
// stop timeout). What differs between the three kinds is only what happens
// when a run ends: the next task runs, the program is restarted by its
// policy, the job waits for its next time. That is the unit's onEnd.
package supervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/cgroup"
	"github.com/berth-dev/berth/config"
)

// Unit kinds; also the first part of their cgroup's name.
const (
	kindTask    = "task"
	kindProgram = "program"
	kindJob     = "cron"
)

// jobStopGrace is how long a task or a job that ran past its timeout (or is
// stopped by a shutdown) gets between SIGTERM and SIGKILL: programs have a
// stop_timeout of their own; a run-to-completion command has nothing to
// finish that is worth more than this.
const jobStopGrace = 10 * time.Second

// outputWait bounds how long the end of a failed task waits for the last of
// its output, so the message can quote it; a task that left a daemon holding
// the pipe open must not hold the loop.
const outputWait = 500 * time.Millisecond

// unitSpec is a unit's command resolved against the config: how to start
// it and how to stop it.
type unitSpec struct {
	argv        []string // argv[0] as configured (python/python3 → app.python)
	env         []string
	dir         string
	user        string
	stopSignal  syscall.Signal
	stopTimeout time.Duration
	timeout     time.Duration // a run's limit; 0 = none
	resources   *specs.LinuxResources
	restart     string // programs
	required    bool   // programs
	// key is everything above as one string: a reload restarts a program
	// exactly when its key changed.
	key string
}

// unit is one task, program or job and its current run.
type unit struct {
	kind, name string
	spec       unitSpec
	// onEnd decides what follows a run's end; it is the kind's policy.
	onEnd func(u *unit, e Exit)

	pid      int
	started  time.Time
	deadline time.Time // the run's timeout; zero = none
	timedOut bool
	why      string   // why it is being stopped, for the log
	out      *output  // its output copier; nil between runs
	tail     *logTail // its last output lines, over all runs
	lastExit string   // how the last run ended ("exit code 1")
	lastCode int      // its exit code, 128+n for signal n
	ended    time.Time

	prog *programState // programs only
	job  *jobState     // jobs only

	stopSeq // its run's stop
}

func (u *unit) exited(s *Supervisor, e Exit) { s.unitExited(u, e) }
func (u *unit) stage() int                   { return stageCompanions }

// label is how logs name it: "task migrate", "program celery", "cron clear".
func (u *unit) label() string { return u.kind + " " + u.name }

// resolveUnit builds the spec of companion c of kind from cfg.
func resolveUnit(cfg *config.Config, kind string, c config.Companion) unitSpec {
	sp := unitSpec{argv: append([]string(nil), c.Command...), user: c.User, dir: c.Chdir, resources: c.Resources,
		stopSignal: syscall.SIGTERM, stopTimeout: jobStopGrace}
	if len(sp.argv) > 0 && (sp.argv[0] == "python" || sp.argv[0] == "python3") {
		sp.argv[0] = cfg.App.Python
	}
	if sp.user == "" {
		sp.user = cfg.App.User
	}
	if sp.dir == "" {
		sp.dir = cfg.App.Chdir
	}
	env := map[string]string{}
	for k, v := range cfg.App.Env {
		env[k] = v
	}
	// Output is copied line by line into berth's log: unbuffered, so a
	// line shows when it is written and a crash loses nothing.
	env["PYTHONUNBUFFERED"] = "1"
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	if filepath.IsAbs(cfg.App.Python) {
		// A venv's bin/ first: its celery, its python3.
		path = filepath.Dir(cfg.App.Python) + ":" + path
	}
	env["PATH"] = path
	if len(cfg.App.PythonPath) > 0 {
		pp := strings.Join(cfg.App.PythonPath, ":")
		if old := os.Getenv("PYTHONPATH"); old != "" {
			pp += ":" + old
		}
		env["PYTHONPATH"] = pp
	}
	for k, v := range c.Env {
		env[k] = v
	}
	sp.env = childEnv(env)
	return sp
}

// rekey computes the key once the kind's own settings are filled in.
func (sp *unitSpec) rekey(kind string) {
	key, _ := json.Marshal(struct {
		Argv, Env       []string
		Dir, User, Kind string
		Res             *specs.LinuxResources
		Sig             syscall.Signal
		Stop, Timeout   time.Duration
		Restart         string
		Required        bool
	}{sp.argv, sp.env, sp.dir, sp.user, kind, sp.resources, sp.stopSignal, sp.stopTimeout, sp.timeout, sp.restart, sp.required})
	sp.key = string(key)
}

// lookPathIn finds file in the directories of path, as the child's own
// PATH would (exec.LookPath would use berth's).
func lookPathIn(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		if st, err := os.Stat(file); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s is not an executable file", file)
		}
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH (%s)", file, path)
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// startUnit starts a run of u. On error nothing runs and the error says why.
func (s *Supervisor) startUnit(u *unit) error {
	sp := u.spec
	if len(sp.argv) == 0 {
		return errors.New("no command")
	}
	exe, err := lookPathIn(sp.argv[0], envValue(sp.env, "PATH"))
	if err != nil {
		return fmt.Errorf("command: %w; install it in the image or give its absolute path", err)
	}
	cred, err := credentialFor(sp.user)
	if err != nil {
		return err
	}
	dir := sp.dir
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("chdir %s: not a directory; create it, or set chdir (or app.chdir) to the project's directory", dir)
	}
	if u.tail == nil {
		u.tail = &logTail{}
	}
	out, w, err := prefixOutput(u.name, u.tail)
	if err != nil {
		return err
	}
	defer w.Close()
	spec := ProcSpec{Path: exe, Args: sp.argv, Env: sp.env, Dir: dir, Stdout: w, Stderr: w, Credential: cred, CgroupFD: -1}
	g, hasGroup := s.unitGroup(u)
	fd := -1
	if hasGroup && s.cg.m.Mode() == cgroup.ModeV2 {
		// Born in its group: a Celery worker forks its pool at once,
		// and a child forked before a move would stay behind.
		if fd, err = unix.Open(g.String(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			fd = -1
		}
	}
	spec.CgroupFD = fd
	pid, err := s.os.Start(spec)
	if err != nil && fd >= 0 {
		spec.CgroupFD = -1
		pid, err = s.os.Start(spec)
	}
	if fd >= 0 {
		unix.Close(fd)
	}
	if err != nil {
		return err
	}
	u.pid, u.started, u.out = pid, s.now(), out
	// Its stop's SIGKILL takes its process group too: a Celery pool left
	// behind must not work on.
	u.stopSeq = stopSeq{group: true}
	u.timedOut, u.why = false, ""
	u.deadline = time.Time{}
	if sp.timeout > 0 {
		u.deadline = u.started.Add(sp.timeout)
	}
	s.procs[pid] = u
	s.resetOOMScore(pid)
	if hasGroup && fd < 0 {
		if err := g.Add(pid); err != nil {
			s.log.Printf("%s (pid %d): %v", u.label(), pid, err)
		}
	}
	return nil
}

// stopUnit begins u's stop sequence: its stop signal now, SIGKILL to its
// process group at its stop timeout (from the tick).
func (s *Supervisor) stopUnit(u *unit, why string) {
	if u.pid == 0 || u.stopping {
		return
	}
	u.why = why
	s.stop(&u.stopSeq, u.pid, u.spec.stopSignal, u.spec.stopTimeout)
}

// unitExited ends u's run: common bookkeeping, then the kind's policy.
func (s *Supervisor) unitExited(u *unit, e Exit) {
	pid := u.pid
	u.pid = 0
	u.ended = s.now()
	u.lastExit = e.Describe()
	u.lastCode = exitCodeOf(e)
	// Whatever the command left in its process group (a Celery worker's
	// pool after a kill -9 of its parent) goes with it: a restart must
	// not find the previous run's children still at work.
	_ = s.os.SignalGroup(pid, syscall.SIGKILL)
	u.onEnd(u, e)
	u.out = nil
}

// exitCodeOf is e as a shell reports it: the exit code, or 128+n for a
// death by signal n.
func exitCodeOf(e Exit) int {
	if e.Status.Signaled() {
		return 128 + int(e.Status.Signal())
	}
	return e.Status.ExitStatus()
}

// tickUnit enforces u's run timeout (its stop's SIGKILL comes from
// killOverdue, as every child's does).
func (s *Supervisor) tickUnit(u *unit, now time.Time) {
	if u.pid == 0 {
		return
	}
	if !u.stopping && !u.deadline.IsZero() && now.After(u.deadline) {
		s.log.Printf("%s (pid %d) ran past its timeout of %s: stopping it", u.label(), u.pid, u.spec.timeout)
		u.timedOut = true
		s.stopUnit(u, "timeout")
	}
}

// reconcile is how a reload makes the running units of one kind cfg's, by
// name: a unit new in want is kept and handed to add (which starts or
// schedules it); one in both stays, and change applies want's settings to
// it and says what it did ("" for nothing); one that is gone from want is
// handed to remove. It returns the units to keep, in want's order, and what
// it did, for the log ("program celery added").
func reconcile(kind string, running, want []*unit, add func(*unit), change func(u, nu *unit) string, remove func(*unit)) ([]*unit, []string) {
	old := map[string]*unit{}
	for _, u := range running {
		old[u.name] = u
	}
	var keep []*unit
	var did []string
	for _, nu := range want {
		u := old[nu.name]
		delete(old, nu.name)
		if u == nil {
			keep = append(keep, nu)
			add(nu)
			did = append(did, kind+" "+nu.name+" added")
			continue
		}
		if what := change(u, nu); what != "" {
			did = append(did, kind+" "+u.name+" "+what)
		}
		keep = append(keep, u)
	}
	for _, u := range running {
		if _, gone := old[u.name]; gone {
			remove(u)
			did = append(did, kind+" "+u.name+" removed")
		}
	}
	return keep, did
}

// unitGroup is u's cgroup, created (or its limits applied) at each start.
func (s *Supervisor) unitGroup(u *unit) (cgroup.Group, bool) {
	c := s.cg
	if !c.usable() {
		return cgroup.Group{}, false
	}
	g, err := c.m.Companion(u.kind, u.name, u.spec.resources)
	if err != nil {
		s.log.Printf("%s: cgroup: %v", u.label(), err)
		return cgroup.Group{}, false
	}
	if c.comp == nil {
		c.comp = map[string]cgroup.Group{}
	}
	c.comp[u.kind+"-"+u.name] = g
	return g, true
}

// releaseUnitGroup removes u's group once it no longer runs.
func (s *Supervisor) releaseUnitGroup(u *unit) {
	c := s.cg
	if !c.usable() {
		return
	}
	name := u.kind + "-" + u.name
	if g, ok := c.comp[name]; ok {
		delete(c.comp, name)
		if err := g.Delete(); err != nil {
			s.log.Printf("%s: %v", u.label(), err)
		}
	}
}

// output copies a unit's stdout and stderr into berth's log, each line
// prefixed with the unit's name, and keeps the last lines. The copier ends
// by itself when the last writer (the run, and anything it left behind)
// has closed the pipe.
type output struct {
	done chan struct{}
}

// prefixOutput returns the copier and the pipe's write end for the child;
// the caller closes the write end once the child has started.
func prefixOutput(name string, tail *logTail) (*output, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("output pipe for %s: %w", name, err)
	}
	o := &output{done: make(chan struct{})}
	prefix := []byte(name + " | ")
	go func() {
		defer close(o.done)
		defer r.Close()
		br := bufio.NewReaderSize(r, 64<<10)
		for {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 {
				text := bytes.TrimRight(line, "\n")
				// One write per line: lines of several units never
				// interleave mid-line.
				os.Stderr.Write(append(append(append([]byte(nil), prefix...), text...), '\n'))
				tail.add(string(text))
			}
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
		}
	}()
	return o, w, nil
}

// wait waits up to d for the copier to reach the end of the output.
func (o *output) wait(d time.Duration) {
	select {
	case <-o.done:
	case <-time.After(d):
	}
}
