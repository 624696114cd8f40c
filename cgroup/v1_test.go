package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// These tests use this machine's real cgroup v1 hierarchies. berth's "own"
// cgroup is a test parent, /sys/fs/cgroup/<hierarchy>/berth-test-<pid>, and
// the "supervisor" is a sleep child, so the test process itself never moves.

// joinScript is what a forked worker does: write its own pid into each
// cgroup.procs given, then allocate as many MiB as each stdin line says.
const joinScript = `
import os, sys
for p in sys.argv[1:]:
    with open(p, "w") as f:
        f.write(str(os.getpid()))
print("joined", flush=True)
b = None
for line in sys.stdin:
    b = b"x" * (int(line) << 20)
    print("allocated", len(b) >> 20, flush=True)
`

// v1Own creates the test parent in every managed hierarchy and returns its
// name and the /proc/PID/cgroup text placing a process there.
func v1Own(t *testing.T, suffix string) (string, string) {
	t.Helper()
	base := fmt.Sprintf("berth-test-%d%s", os.Getpid(), suffix)
	var lines []string
	for i, h := range v1Hierarchies() {
		makeCgroup(t, filepath.Join("/sys/fs/cgroup", h, base))
		lines = append(lines, fmt.Sprintf("%d:%s:/%s", i+1, h, base))
	}
	lines = append(lines, "0::/")
	return base, strings.Join(lines, "\n") + "\n"
}

func TestV1Real(t *testing.T) {
	requireV1(t)
	base, cg := v1Own(t, "")
	sup := start(t, "sleep", "60")
	m, err := OpenWith("/sys/fs/cgroup", Options{ProcRoot: fakeProc(t, sup.pid(), cg), Pid: sup.pid()})
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV1 || !m.Writable() {
		t.Fatalf("mode %s writable %v hint %q", m.Mode(), m.Writable(), m.ReadOnlyHint())
	}
	if got := m.Controllers(); !slices.Equal(got, v1Hierarchies()) {
		t.Errorf("Controllers() = %v, want %v", got, v1Hierarchies())
	}

	// Setup: the supervisor moves into berth/supervisor in every hierarchy
	// and is protected from the OOM killer.
	err = m.Setup()
	checkOOMAdj(t, err, sup.pid(), SupervisorOOMScoreAdj)
	if err != nil && !errors.Is(err, ErrOOMScoreAdj) {
		t.Fatal(err)
	}
	for _, h := range v1Hierarchies() {
		if got, want := cgroupOf(t, sup.pid(), h), "/"+base+"/berth/supervisor"; got != want {
			t.Errorf("supervisor's %s cgroup = %q, want %q", h, got, want)
		}
	}
	mem := filepath.Join("/sys/fs/cgroup/memory", base, "berth")

	// The proxy: its own group and OOM protection.
	px, err := m.Proxy(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: ptr(uint64(2048))}})
	if err != nil {
		t.Fatal(err)
	}
	proxy := start(t, "sleep", "60")
	if err := px.Add(proxy.pid()); err != nil {
		t.Fatal(err)
	}
	checkOOMAdj(t, ProtectFromOOM(proxy.pid()), proxy.pid(), ProxyOOMScoreAdj)
	for _, h := range v1Hierarchies() {
		if got := cgroupOf(t, proxy.pid(), h); got != "/"+base+"/berth/proxy" {
			t.Errorf("proxy's %s cgroup = %q", h, got)
		}
	}
	if got := read(t, filepath.Join("/sys/fs/cgroup/cpu", base, "berth/proxy/cpu.shares")); got != "2048" {
		t.Errorf("proxy cpu.shares = %s", got)
	}

	// All workers together.
	wg, err := m.WorkersGroup(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(512 << 20))}})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(mem, "workers/memory.limit_in_bytes")); got != "536870912" {
		t.Errorf("workers memory.limit_in_bytes = %s", got)
	}

	// One worker: 64Mi, then 128Mi live.
	w, err := m.Worker("1", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))},
		Pids:   &specs.LinuxPids{Limit: ptr(int64(32))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(mem, "workers/w-1/memory.limit_in_bytes")); got != "67108864" {
		t.Errorf("w-1 memory.limit_in_bytes = %s", got)
	}
	if got := read(t, filepath.Join("/sys/fs/cgroup/pids", base, "berth/workers/w-1/pids.max")); got != "32" {
		t.Errorf("w-1 pids.max = %s", got)
	}
	if err := w.Update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(128 << 20))}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(mem, "workers/w-1/memory.limit_in_bytes")); got != "134217728" {
		t.Errorf("w-1 memory.limit_in_bytes after Update = %s", got)
	}
	if paths := w.ProcsPaths(); len(paths) != len(v1Hierarchies()) || paths[0] != w.ProcsPath() ||
		w.ProcsPath() != filepath.Join(mem, "workers/w-1/cgroup.procs") {
		t.Errorf("ProcsPath %s, ProcsPaths %v", w.ProcsPath(), paths)
	}

	// A forked worker joins by itself, then allocates past the limit and is
	// killed by the kernel's OOM killer; OOMKills counts it.
	before, err := w.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	py := start(t, "/usr/bin/python3", append([]string{"-c", joinScript}, w.ProcsPaths()...)...)
	py.expect(t, "joined")
	for _, h := range v1Hierarchies() {
		if got := cgroupOf(t, py.pid(), h); got != "/"+base+"/berth/workers/w-1" {
			t.Errorf("worker's %s cgroup = %q", h, got)
		}
	}
	fmt.Fprintln(py.stdin, 200)
	ws := py.wait(t)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("worker allocating 200MB under a 128Mi limit exited with %v, want SIGKILL", ws)
	}
	after, err := w.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	if after < before+1 {
		t.Errorf("OOMKills went from %d to %d after an OOM kill", before, after)
	}
	st, err := w.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.OOMKills != after || st.MemoryLimit != 128<<20 || st.MemoryPeak < 64<<20 || st.CPUUsageNsec == 0 {
		t.Errorf("Stats() = %+v", st)
	}
	t.Logf("after the OOM kill: %+v", st)

	// writeFile's error names the value, the file and the kernel's reason:
	// a limit below what a worker holds (no swap to push it to) is EBUSY.
	w2, err := m.Worker("2", nil)
	if err != nil {
		t.Fatal(err)
	}
	py2 := start(t, "/usr/bin/python3", append([]string{"-c", joinScript}, w2.ProcsPaths()...)...)
	py2.expect(t, "joined")
	fmt.Fprintln(py2.stdin, 32)
	py2.expect(t, "allocated 32")
	limit := filepath.Join(mem, "workers/w-2/memory.limit_in_bytes")
	err = writeFile(limit, "4096")
	if want := `cgroup: write "4096" to ` + limit + `: device or resource busy`; err == nil || err.Error() != want {
		t.Errorf("writeFile error = %v\nwant %s", err, want)
	}
	// Delete refuses a group in use at once, and the parent of groups.
	if err := w2.Delete(); err == nil || !strings.Contains(err.Error(), strconv.Itoa(py2.pid())) {
		t.Errorf("Delete of a busy group: %v", err)
	}
	if err := wg.Delete(); err == nil || !strings.Contains(err.Error(), "w-") {
		t.Errorf("Delete of workers with worker groups: %v", err)
	}
	py2.stdin.Close()
	if ws := py2.wait(t); ws.ExitStatus() != 0 {
		t.Errorf("worker 2 exited with %v", ws)
	}

	// Delete removes the group from every hierarchy.
	for _, g := range []Group{w, w2} {
		if err := g.Delete(); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range v1Hierarchies() {
		for _, id := range []string{"w-1", "w-2"} {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", h, base, "berth/workers", id)); !os.IsNotExist(err) {
				t.Errorf("%s/%s still there after Delete: %v", h, id, err)
			}
		}
	}
	if err := w.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if err := wg.Delete(); err != nil {
		t.Errorf("Delete of the emptied workers group: %v", err)
	}
}

// TestOpenThisMachine opens the real /sys/fs/cgroup for the test process with
// the defaults (/proc/self): on this hybrid machine (tmpfs with v1
// hierarchies and an empty v2 at unified/) it must choose v1 and find the
// memory cgroup /proc/self/cgroup names. It changes nothing.
func TestOpenThisMachine(t *testing.T) {
	requireV1(t)
	m, err := Open("/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV1 {
		t.Fatalf("Mode() = %s on a v1/hybrid machine", m.Mode())
	}
	h := m.v1("memory")
	if h == nil {
		t.Fatal("no memory hierarchy found")
	}
	if want := filepath.Join("/sys/fs/cgroup/memory", cgroupOf(t, os.Getpid(), "memory")); h.own != want {
		t.Errorf("own memory cgroup %s, want %s", h.own, want)
	}
	if m.Writable() != (unix.Access(h.own, unix.W_OK) == nil) {
		t.Errorf("Writable() = %v, hint %q", m.Writable(), m.ReadOnlyHint())
	}
}

// hasCapSysResource: lowering oom_score_adj needs it, and root in a container
// may lack it (this test machine does).
func hasCapSysResource(t *testing.T) bool {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return data[0].Effective&(1<<unix.CAP_SYS_RESOURCE) != 0
}

// checkOOMAdj checks the outcome of lowering pid's oom_score_adj to adj:
// done with CAP_SYS_RESOURCE, else refused with an error saying so.
func checkOOMAdj(t *testing.T, err error, pid, adj int) {
	t.Helper()
	got := read(t, fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if hasCapSysResource(t) {
		if err != nil || got != strconv.Itoa(adj) {
			t.Errorf("oom_score_adj of %d = %s, error %v; want %d", pid, got, err, adj)
		}
		return
	}
	want := fmt.Sprintf(`write "%d" to `, adj)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "permission denied (lowering oom_score_adj needs CAP_SYS_RESOURCE)") {
		t.Errorf("without CAP_SYS_RESOURCE: error %v", err)
	}
	if got != "0" {
		t.Errorf("oom_score_adj of %d = %s after a refused write", pid, got)
	}
	t.Logf("no CAP_SYS_RESOURCE here: %v", err)
}

func TestV1RealLimits(t *testing.T) {
	requireV1(t)
	base, _ := v1Own(t, "-limits")
	for _, h := range []string{"cpu", "memory"} {
		if !slices.Contains(v1Hierarchies(), h) {
			t.Skipf("no v1 %s hierarchy", h)
		}
		makeCgroup(t, filepath.Join("/sys/fs/cgroup", h, base, "inner"))
	}
	cpu := filepath.Join("/sys/fs/cgroup/cpu", base)
	mem := filepath.Join("/sys/fs/cgroup/memory", base)
	cg := fmt.Sprintf("2:cpu:/%s/inner\n1:memory:/%s/inner\n0::/\n", base, base)
	m, err := OpenWith("/sys/fs/cgroup", Options{ProcRoot: fakeProc(t, os.Getpid(), cg)})
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := CPUQuota(m); ok {
		t.Errorf("CPUQuota = %v before any quota was set", c)
	}
	if b, ok := MemoryLimit(m); ok {
		t.Errorf("MemoryLimit = %v before any limit was set", b)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// On the parent only: found by walking up.
	must(writeFile(filepath.Join(cpu, "cpu.cfs_quota_us"), "150000"))
	must(writeFile(filepath.Join(mem, "memory.limit_in_bytes"), strconv.Itoa(256<<20)))
	if c, ok := CPUQuota(m); !ok || c != 1.5 {
		t.Errorf("CPUQuota = %v, %v; want 1.5 from the parent", c, ok)
	}
	if b, ok := MemoryLimit(m); !ok || b != 256<<20 {
		t.Errorf("MemoryLimit = %v, %v; want 256Mi from the parent", b, ok)
	}
	// A smaller one on berth's own cgroup wins.
	must(writeFile(filepath.Join(cpu, "inner/cpu.cfs_quota_us"), "50000"))
	must(writeFile(filepath.Join(mem, "inner/memory.limit_in_bytes"), strconv.Itoa(64<<20)))
	if c, ok := CPUQuota(m); !ok || c != 0.5 {
		t.Errorf("CPUQuota = %v, %v; want 0.5", c, ok)
	}
	if b, ok := MemoryLimit(m); !ok || b != 64<<20 {
		t.Errorf("MemoryLimit = %v, %v; want 64Mi", b, ok)
	}
}
