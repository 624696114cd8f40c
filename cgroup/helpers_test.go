package cgroup

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helpers for the tests that use the real kernel: they create cgroups under a
// test-only parent ("berth-test-<pid>") and always remove them.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
}

func fsType(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0
	}
	return st.Type
}

// requireV1 skips unless /sys/fs/cgroup has a writable v1 memory hierarchy.
func requireV1(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if fsType("/sys/fs/cgroup/memory") != unix.CGROUP_SUPER_MAGIC || unix.Access("/sys/fs/cgroup/memory", unix.W_OK) != nil {
		t.Skip("no writable cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
	}
}

// v1Hierarchies are the managed v1 hierarchies mounted on this machine.
func v1Hierarchies() []string {
	var out []string
	for _, h := range managedV1 {
		if fsType(filepath.Join("/sys/fs/cgroup", h)) == unix.CGROUP_SUPER_MAGIC {
			out = append(out, h)
		}
	}
	return out
}

// proc is a child process whose exit the test can wait for.
type proc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string
	done    chan struct{}
	waitErr error
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// start runs a child; it is killed and reaped when the test ends.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), lines: make(chan string, 16), done: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = w
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
		r.Close()
	}()
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// expect waits for the child to print a line starting with prefix.
func (p *proc) expect(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("child exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("child did not print %q within 20s", prefix)
		}
	}
}

// wait waits for the child to exit and returns how.
func (p *proc) wait(t *testing.T) syscall.WaitStatus {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit within 20s")
	}
	return p.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// fakeProc makes a /proc stand-in for pid: cgroup says what the test wants,
// mountinfo is the test's own, oom_score_adj is pid's real one.
func fakeProc(t *testing.T, pid int, cgroup string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"cgroup": cgroup, "mountinfo": string(mi)})
	if err := os.Symlink(filepath.Join("/proc", strconv.Itoa(pid), "oom_score_adj"), filepath.Join(dir, "oom_score_adj")); err != nil {
		t.Fatal(err)
	}
	return root
}

// makeCgroup creates dir (a cgroup) and removes it and everything below it
// when the test ends, even when it fails.
func makeCgroup(t *testing.T, dir string) {
	t.Helper()
	t.Cleanup(func() { removeCgroupTree(t, dir) })
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func removeCgroupTree(t *testing.T, dir string) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return
	}
	for _, e := range ents {
		if e.IsDir() {
			removeCgroupTree(t, filepath.Join(dir, e.Name()))
		}
	}
	// Only the test's own children can be in there; they are reaped by their
	// cleanups, which run first.
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if pid, _ := strconv.Atoi(f); pid > 1 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := rmdirCgroup(dir, 5*time.Second); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// cgroupOf returns pid's path in the named hierarchy ("" for v2) from
// /proc/PID/cgroup.
func cgroupOf(t *testing.T, pid int, hierarchy string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (parts[1] == hierarchy || strings.Contains(","+parts[1]+",", ","+hierarchy+",") && hierarchy != "") {
			return parts[2]
		}
	}
	return ""
}
