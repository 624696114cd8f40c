// Zygotes: one per generation with preload on. A zygote imports the app once
// and forks workers on request over its command socket.
package supervisor

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	pyworker "github.com/berth-dev/berth/worker"
)

// zygote is the preload process of a generation: it imports the app once
// and forks workers from it.
type zygote struct {
	gen       *generation
	pool      string // the mount whose app it imports ("" = the main app)
	pid       int
	conn      *os.File // our end of the command socket
	ready     bool
	pending   []*worker // fork requests waiting for READY
	started   time.Time
	failures  int
	restartAt time.Time
	stopSeq
}

type zygoteReply struct {
	z   *zygote
	ID  string `json:"id"`
	Pid int    `json:"pid"`
	Err string `json:"error"`
	eof bool
}

func (s *Supervisor) startZygote(z *zygote) {
	g := z.gen
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		s.log.Printf("zygote: socketpair: %v", err)
		z.restartAt = s.now().Add(backoff(z.failures + 1))
		return
	}
	ours := os.NewFile(uintptr(fds[0]), "zygote-ctl")
	theirs := os.NewFile(uintptr(fds[1]), "zygote-ctl-child")
	spec, err := s.pythonSpec(g, z.pool, "zygote", map[string]string{"BERTH_ZYGOTE_FD": "3"}, []*os.File{theirs})
	if err == nil {
		z.pid, err = s.os.Start(spec)
		spec.Stderr.Close()
	}
	theirs.Close()
	if err != nil {
		ours.Close()
		s.log.Printf("zygote for generation %d: %v", g.n, err)
		if s.bootStartFailed(g, "the zygote") {
			return
		}
		z.failures++
		z.restartAt = s.now().Add(backoff(z.failures))
		return
	}
	z.conn, z.ready, z.started = ours, false, s.now()
	s.procs[z.pid] = z
	s.placeZygote(z)
	go readZygote(z, ours, s.zygCh)
}

func readZygote(z *zygote, f *os.File, ch chan<- zygoteReply) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r zygoteReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		r.z = z
		ch <- r
	}
	ch <- zygoteReply{z: z, eof: true}
}

func (s *Supervisor) zygoteReady(z *zygote) {
	z.ready = true
	z.gen.everReady = true
	module, _, _, _, _ := z.gen.app(z.pool)
	s.log.Printf("app %s imported by the zygote (pid %d) in %s; forking workers", module, z.pid, s.now().Sub(z.started).Round(time.Millisecond))
	for _, w := range z.pending {
		if w.state == wForking {
			s.fork(z, w)
		}
	}
	z.pending = nil
}

// fork asks a ready zygote for a worker.
func (s *Supervisor) fork(z *zygote, w *worker) {
	// The worker's cgroup is not in the command: the supervisor moves the
	// forked worker itself (placeWorker, on the reply or on READY, whichever
	// comes first), before it is given a request. The worker runs as
	// app.user, which may not write cgroup.procs.
	s.workerGroup(w) // created now, so a failure is logged before the fork
	cmd := map[string]any{"id": w.id, "socket": w.socket}
	if _, err := z.conn.Write([]byte(mustJSON(cmd) + "\n")); err != nil {
		s.log.Printf("worker %s: ask the zygote (pid %d) to fork: %v", w.id, z.pid, err)
		s.forgetWorker(w)
		s.scheduleRestart(w.slot)
	}
}

func (s *Supervisor) onZygoteReply(r zygoteReply) {
	if r.eof {
		return // the exit arrives from the reaper
	}
	w := s.workers[r.ID]
	if w == nil {
		if r.Pid > 0 {
			// Forked for a worker we have given up on meanwhile.
			_ = s.os.Signal(r.Pid, syscall.SIGKILL)
		}
		return
	}
	if r.Err != "" || r.Pid <= 0 {
		s.log.Printf("worker %s: zygote could not fork: %s", w.id, r.Err)
		s.forgetWorker(w)
		s.scheduleRestart(w.slot)
		return
	}
	w.pid = r.Pid
	s.procs[w.pid] = w
	if w.state == wForking {
		w.state = wStarting
	}
	s.placeWorker(w)
}

func (s *Supervisor) zygoteExited(z *zygote, e Exit) {
	g := z.gen
	wasReady := z.ready
	z.pid, z.ready = 0, false
	if z.conn != nil {
		z.conn.Close()
		z.conn = nil
	}
	if z.stopping || s.phase != running {
		return
	}
	if !wasReady && e.Status.Exited() && e.Status.ExitStatus() == pyworker.ExitImport && s.importFailed(g, "zygote") {
		return
	}
	if !wasReady && s.bootImportDied(g, "the zygote", e) {
		return
	}
	// Forks it was asked for and did not answer: a worker it forked
	// before dying still says READY (and is adopted by its MAINPID); one
	// it never forked is started again after forkGrace.
	for _, w := range s.workers {
		if w.gen == g && w.state == wForking && w.pid == 0 && !slices.Contains(z.pending, w) {
			if d := s.now().Add(forkGrace); d.Before(w.deadline) {
				w.deadline = d
			}
		}
	}
	if !wasReady {
		s.rollFailure(g, fmt.Sprintf("zygote (pid %d) %s while importing the app", e.Pid, e.Describe()))
	}
	// Workers already forked keep serving; only new forks wait for the
	// zygote's restart.
	z.failures++
	if s.now().Sub(z.started) >= healthyAfter {
		z.failures = 1
	}
	d := backoff(z.failures)
	s.log.Printf("zygote (pid %d) %s; restarting it in %s", e.Pid, e.Describe(), d)
	z.restartAt = s.now().Add(d)
	s.checkReload()
}

func (s *Supervisor) stopZygote(g *generation) {
	for _, z := range g.zygotes() {
		s.stopZygoteProc(z)
	}
}

func (s *Supervisor) stopZygoteProc(z *zygote) {
	if z.stopping {
		return
	}
	z.restartAt = time.Time{}
	if z.conn != nil {
		// EOF on its command socket is the zygote's signal to exit.
		z.conn.Close()
		z.conn = nil
	}
	// No SIGKILL of its own: a shutdown's deadline kills what is left.
	s.stop(&z.stopSeq, z.pid, syscall.SIGTERM, noEscalation)
	for _, w := range z.pending {
		s.forgetWorker(w)
	}
	z.pending = nil
}
