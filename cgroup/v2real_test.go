package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestV2RealUnified runs the v2 code against a real cgroup2 filesystem: the
// hybrid hierarchy's /sys/fs/cgroup/unified. All controllers are bound to v1
// there, so no limits apply, but moves, the leaf layout, Add, Stats and Delete
// are the kernel's.
func TestV2RealUnified(t *testing.T) {
	requireRoot(t)
	const root = "/sys/fs/cgroup/unified"
	if fsType(root) != unix.CGROUP2_SUPER_MAGIC || unix.Access(root, unix.W_OK) != nil {
		t.Skip("no writable cgroup2 at " + root)
	}
	base := fmt.Sprintf("berth-test-%d", os.Getpid())
	own := filepath.Join(root, base)
	makeCgroup(t, own)
	sup := start(t, "sleep", "60")
	other := start(t, "sleep", "60") // shares the supervisor's cgroup, as podman exec would
	for _, p := range []*proc{sup, other} {
		if err := writeFile(filepath.Join(own, "cgroup.procs"), strconv.Itoa(p.pid())); err != nil {
			t.Fatal(err)
		}
	}
	m, err := OpenWith(root, Options{ProcRoot: fakeProc(t, sup.pid(), "0::/"+base+"\n"), Pid: sup.pid()})
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV2 || !m.Writable() {
		t.Fatalf("mode %s writable %v hint %q", m.Mode(), m.Writable(), m.ReadOnlyHint())
	}
	err = m.Setup()
	checkOOMAdj(t, err, sup.pid(), SupervisorOOMScoreAdj)
	if err != nil && !errors.Is(err, ErrOOMScoreAdj) {
		t.Fatal(err)
	}
	for _, p := range []*proc{sup, other} {
		if got := cgroupOf(t, p.pid(), ""); got != "/"+base+"/supervisor" {
			t.Errorf("pid %d in %q after Setup, want /%s/supervisor", p.pid(), got, base)
		}
	}
	if got := read(t, filepath.Join(own, "cgroup.procs")); got != "" {
		t.Errorf("own cgroup still holds %q", got)
	}
	for _, d := range []string{"proxy", "workers"} {
		if fsType(filepath.Join(own, d)) != unix.CGROUP2_SUPER_MAGIC {
			t.Errorf("%s not created", d)
		}
	}

	w, err := m.Worker("1", nil)
	if err != nil {
		t.Fatal(err)
	}
	sl := start(t, "sleep", "60")
	if err := w.Add(sl.pid()); err != nil {
		t.Fatal(err)
	}
	if got := cgroupOf(t, sl.pid(), ""); got != "/"+base+"/workers/w-1" {
		t.Errorf("worker in %q", got)
	}
	if _, err := w.Stats(); err != nil {
		t.Errorf("Stats: %v", err)
	}
	// No memory controller here: the error names the group and the resources.
	_, err = m.Worker("2", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))}})
	want := "cgroup: create " + filepath.Join(own, "workers/w-2") + ` with {"memory":{"limit":67108864}}: `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Worker without a memory controller: %v", err)
	}
	if err := w.Delete(); err == nil || !strings.Contains(err.Error(), "still holds processes "+strconv.Itoa(sl.pid())) {
		t.Errorf("Delete of a busy group: %v", err)
	}
	sl.cmd.Process.Kill()
	sl.wait(t)
	if err := w.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(own, "workers/w-1")); !os.IsNotExist(err) {
		t.Errorf("w-1 still there: %v", err)
	}
}
