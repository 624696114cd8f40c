package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// OS is everything the supervisor's state machine asks of the operating
// system. The real one forks and signals; tests inject a fake so the state
// machine runs without a single process being started.
type OS interface {
	// Start starts a process and returns its pid. It never waits for it:
	// exits arrive through Exits, from the one reaper.
	Start(s ProcSpec) (pid int, err error)
	// Signal sends sig to pid. A process that is already gone is not an error.
	Signal(pid int, sig syscall.Signal) error
	// SignalGroup sends sig to every process of process group pgid (each
	// child leads a group of its own). A group that is empty is not an error.
	SignalGroup(pgid int, sig syscall.Signal) error
	// Exits delivers every reaped child: berth's own and orphans reparented
	// to it (PID 1 or child subreaper).
	Exits() <-chan Exit
}

// ProcSpec describes a process to start.
type ProcSpec struct {
	Path  string
	Args  []string // Args[0] is the program name as ps shows it
	Env   []string
	Dir   string
	Files []*os.File // fd 3, 4, ... in the child
	// Stdout and Stderr are the child's fds 1 and 2; nil = berth's own.
	Stdout *os.File
	Stderr *os.File
	// Credential drops the child to another user; nil keeps berth's.
	Credential *syscall.Credential
	// CgroupFD, when ≥ 0, starts the child directly inside that cgroup
	// (clone3 CLONE_INTO_CGROUP, cgroup v2 only); -1 means the parent's.
	CgroupFD int
}

// Exit is one reaped process.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// Describe says how a process ended, the way a person wants to read it.
func (e Exit) Describe() string {
	switch {
	case e.Status.Exited():
		return fmt.Sprintf("exit code %d", e.Status.ExitStatus())
	case e.Status.Signaled():
		s := fmt.Sprintf("killed by %s", unix.SignalName(e.Status.Signal()))
		if e.Status.CoreDump() {
			s += " (core dumped)"
		}
		return s
	default:
		return fmt.Sprintf("wait status %#x", uint32(e.Status))
	}
}

// realOS starts processes with fork/exec and reaps them with wait4(-1).
type realOS struct {
	exits chan Exit
	// reap can be switched off to prove that the reaping test can fail.
	reap bool
}

// newRealOS starts the reaper. There is exactly one waiter in the process:
// nothing in the supervisor may use os/exec's Wait, or it would race with
// wait4(-1) for the same children.
func newRealOS(reap bool) *realOS {
	o := &realOS{exits: make(chan Exit, 256), reap: reap}
	if os.Getpid() != 1 {
		// Not PID 1 (a host, or a test): orphans of our children must still
		// come to us, not to the host's init, or they stay zombies out of
		// our sight and forked workers would not be ours to reap.
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	go o.reaper()
	return o
}

func (o *realOS) reaper() {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	// The backstop: SIGCHLDs coalesce, and a child that exits between our
	// last wait4 and signal delivery must not wait for the next child.
	backstop := time.NewTicker(time.Second)
	defer backstop.Stop()
	for {
		select {
		case <-sigchld:
		case <-backstop.C:
		}
		if !o.reap {
			continue
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break // ECHILD: no children; 0: none exited
			}
			o.exits <- Exit{Pid: pid, Status: ws}
		}
	}
}

func (o *realOS) Exits() <-chan Exit { return o.exits }

func (o *realOS) Start(s ProcSpec) (int, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, fmt.Errorf("start %s: open %s: %w", s.Args[0], os.DevNull, err)
	}
	defer devnull.Close()
	stdout, stderr := os.Stdout, os.Stderr
	if s.Stdout != nil {
		stdout = s.Stdout
	}
	if s.Stderr != nil {
		stderr = s.Stderr
	}
	files := append([]*os.File{devnull, stdout, stderr}, s.Files...)
	attr := &os.ProcAttr{
		Dir:   s.Dir,
		Env:   s.Env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Credential: s.Credential,
			// Own process group: a Ctrl-C in a terminal reaches the
			// supervisor only, which then stops the children in order.
			Setpgid: true,
			// If berth dies without stopping its children (SIGKILL on
			// a host; in a container the kernel does this for PID 1),
			// they must not live on unsupervised.
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if s.CgroupFD >= 0 {
		attr.Sys.UseCgroupFD = true
		attr.Sys.CgroupFD = s.CgroupFD
	}
	p, err := os.StartProcess(s.Path, s.Args, attr)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", s.Args[0], err)
	}
	pid := p.Pid
	// Release, never Wait: the reaper owns every exit status.
	_ = p.Release()
	return pid, nil
}

func (o *realOS) Signal(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return nil
	}
	if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), pid, err)
	}
	return nil
}

func (o *realOS) SignalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return nil // never kill(0) or kill(-1): that would be every process
	}
	if err := unix.Kill(-pgid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s to process group %d: %w", unix.SignalName(sig), pgid, err)
	}
	return nil
}
