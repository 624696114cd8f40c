package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// setupFor opens root as seen by a sleep child placed (by its fake /proc) in
// cg, runs Setup and releases the claim when the test ends.
func setupFor(t *testing.T, root, cg string) (*Manager, *proc, error) {
	t.Helper()
	sup := start(t, "sleep", "60")
	m, err := OpenWith(root, Options{ProcRoot: fakeProc(t, sup.pid(), cg), Pid: sup.pid()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	err = m.Setup()
	if errors.Is(err, ErrOOMScoreAdj) {
		err = nil
	}
	return m, sup, err
}

// Two instances in the same v1 cgroups get two trees; a tree is reused once
// the instance holding it is gone.
func TestV1InstancesGetTreesOfTheirOwn(t *testing.T) {
	requireV1(t)
	base, cg := v1Own(t, "-inst")
	m1, sup1, err := setupFor(t, "/sys/fs/cgroup", cg)
	if err != nil {
		t.Fatal(err)
	}
	m2, sup2, err := setupFor(t, "/sys/fs/cgroup", cg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m    *Manager
		sup  *proc
		tree string
	}{{m1, sup1, "berth"}, {m2, sup2, "berth-2"}} {
		if tc.m.Tree() != tc.tree {
			t.Fatalf("Tree() = %q, want %q", tc.m.Tree(), tc.tree)
		}
		for _, h := range v1Hierarchies() {
			if got, want := cgroupOf(t, tc.sup.pid(), h), "/"+base+"/"+tc.tree+"/supervisor"; got != want {
				t.Errorf("supervisor's %s cgroup = %q, want %q", h, got, want)
			}
		}
		w, err := tc.m.Worker("1.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		want := filepath.Join("/sys/fs/cgroup/memory", base, tc.tree, "workers/w-1.1")
		if w.ProcsPaths()[0] != filepath.Join(want, "cgroup.procs") {
			t.Errorf("worker 1.1 of tree %s: %v, want it in %s", tc.tree, w.ProcsPaths(), want)
		}
	}
	m1.Close()
	m3, _, err := setupFor(t, "/sys/fs/cgroup", cg)
	if err != nil {
		t.Fatal(err)
	}
	if m3.Tree() != "berth" {
		t.Fatalf("after the first instance released it, a new one got %q, want berth", m3.Tree())
	}
}

// A second instance in the very cgroup a v2 berth manages is refused, and the
// message names the first one's supervisor.
func TestV2SecondInstanceInTheSameCgroupIsRefused(t *testing.T) {
	requireRoot(t)
	const root = "/sys/fs/cgroup/unified"
	if fsType(root) != unix.CGROUP2_SUPER_MAGIC || unix.Access(root, unix.W_OK) != nil {
		t.Skip("no writable cgroup2 at " + root)
	}
	base := fmt.Sprintf("berth-test-%d-inst", os.Getpid())
	makeCgroup(t, filepath.Join(root, base))
	_, sup1, err := setupFor(t, root, "0::/"+base+"\n")
	if err != nil {
		t.Fatal(err)
	}
	_, sup2, err := setupFor(t, root, "0::/"+base+"\n")
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), strconv.Itoa(sup1.pid())) {
		t.Fatalf("second Setup in the same cgroup: %v; want ErrInUse naming pid %d", err, sup1.pid())
	}
	if got := cgroupOf(t, sup2.pid(), ""); strings.Contains(got, base) {
		t.Errorf("the refused instance was moved anyway: %s", got)
	}
	t.Logf("refusal: %v", err)
}
