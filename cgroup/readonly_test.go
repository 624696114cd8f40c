package cgroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// The read-only tests re-run this test binary in a private mount namespace
// (CLONE_NEWNS; Go makes "/" private there), where the helper remounts the
// cgroup filesystem read-only before calling Open. Nothing outside that
// namespace changes.

type roResult struct {
	Mode, Hint, SetupErr, WorkerErr string
	Writable, NotWritable, QuotaOK  bool
	MemOK                           bool
	Quota                           float64
	Mem                             int64
}

// TestHelperReadOnly is the child's side; it does nothing in a normal run.
func TestHelperReadOnly(t *testing.T) {
	root := os.Getenv("BERTH_CGROUP_RO_ROOT")
	if root == "" {
		t.Skip("helper for the read-only tests")
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mounts []string
	for mp := range parseMountRoots(string(mi)) {
		if mp == root || strings.HasPrefix(mp, root+"/") {
			mounts = append(mounts, mp)
		}
	}
	if len(mounts) == 0 { // a plain directory: make it a mount first
		if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		mounts = []string{root}
	}
	for _, mp := range mounts {
		if err := unix.Mount("", mp, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount %s read-only: %v", mp, err)
		}
	}
	pid, _ := strconv.Atoi(os.Getenv("BERTH_CGROUP_RO_PID"))
	m, err := OpenWith(root, Options{ProcRoot: os.Getenv("BERTH_CGROUP_RO_PROC"), Pid: pid})
	if err != nil {
		t.Fatal(err)
	}
	var r roResult
	r.Mode, r.Writable, r.Hint = m.Mode(), m.Writable(), m.ReadOnlyHint()
	if err := m.Setup(); err != nil {
		r.SetupErr = err.Error()
	}
	_, err = m.Worker("1", nil)
	r.NotWritable = errors.Is(err, ErrNotWritable)
	if err != nil {
		r.WorkerErr = err.Error()
	}
	r.Quota, r.QuotaOK = CPUQuota(m)
	r.Mem, r.MemOK = MemoryLimit(m)
	b, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", b)
}

func runReadOnly(t *testing.T, root, procRoot string, pid int) roResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperReadOnly$", "-test.v")
	cmd.Env = append(os.Environ(), "BERTH_CGROUP_RO_ROOT="+root, "BERTH_CGROUP_RO_PROC="+procRoot,
		"BERTH_CGROUP_RO_PID="+strconv.Itoa(pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, "RESULT "); ok {
			var r roResult
			if err := json.Unmarshal([]byte(s), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("helper printed no result:\n%s", out)
	return roResult{}
}

// TestReadOnlyV1 remounts this machine's real v1 hierarchies read-only.
// berth's limits are still read from its (test) cgroup.
func TestReadOnlyV1(t *testing.T) {
	requireV1(t)
	base, cg := v1Own(t, "-ro")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(writeFile(filepath.Join("/sys/fs/cgroup/cpu", base, "cpu.cfs_quota_us"), "150000"))
	must(writeFile(filepath.Join("/sys/fs/cgroup/memory", base, "memory.limit_in_bytes"), strconv.Itoa(256<<20)))
	procRoot := fakeProc(t, os.Getpid(), cg)
	// oom_score_adj: a plain file here, so the helper's write is not refused
	// for want of CAP_SYS_RESOURCE.
	p := filepath.Join(procRoot, strconv.Itoa(os.Getpid()), "oom_score_adj")
	os.Remove(p)
	writeFiles(t, filepath.Dir(p), map[string]string{"oom_score_adj": "0\n"})

	r := runReadOnly(t, "/sys/fs/cgroup", procRoot, os.Getpid())
	if r.Mode != ModeV1 || r.Writable || !r.NotWritable {
		t.Errorf("read-only v1: %+v", r)
	}
	t.Logf("hint: %s", r.Hint)
	if !strings.Contains(r.Hint, "/sys/fs/cgroup/memory/"+base+" is not writable (read-only file system)") ||
		!strings.Contains(r.Hint, "--cgroupns=private") {
		t.Errorf("hint: %s", r.Hint)
	}
	if r.SetupErr != "" || read(t, p) != "-999" {
		t.Errorf("Setup on read-only cgroups: error %q, oom_score_adj %s", r.SetupErr, read(t, p))
	}
	if !r.QuotaOK || r.Quota != 1.5 || !r.MemOK || r.Mem != 256<<20 {
		t.Errorf("limits not read from a read-only cgroupfs: %+v", r)
	}
	// The test's own namespace is untouched.
	if err := unix.Access(filepath.Join("/sys/fs/cgroup/memory", base), unix.W_OK); err != nil {
		t.Errorf("cgroupfs read-only outside the helper: %v", err)
	}
}

// TestReadOnlyV2 bind-mounts a v2 stand-in read-only.
func TestReadOnlyV2(t *testing.T) {
	requireRoot(t)
	f := newV2Fake(t)
	r := runReadOnly(t, f.root, f.proc, fakePid)
	if r.Mode != ModeV2 || r.Writable || !r.NotWritable {
		t.Errorf("read-only v2: %+v", r)
	}
	if !strings.Contains(r.Hint, f.own+" is not writable (read-only file system)") {
		t.Errorf("hint: %s", r.Hint)
	}
	if !r.QuotaOK || r.Quota != 1.5 || !r.MemOK || r.Mem != 512<<20 {
		t.Errorf("limits: %+v", r)
	}
	if r.SetupErr != "" || read(t, filepath.Join(f.proc, strconv.Itoa(fakePid), "oom_score_adj")) != "-999" {
		t.Errorf("Setup: %q", r.SetupErr)
	}
	// The same stand-in is writable outside the helper's namespace.
	if m := f.open(t); !m.Writable() {
		t.Errorf("stand-in not writable: %s", m.ReadOnlyHint())
	}
}
