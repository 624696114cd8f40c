package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The tests in this file run against a directory standing in for a cgroup v2
// /sys/fs/cgroup, with the files the kernel would have. The supervisor is a
// made-up pid: nothing real moves.

const fakePid = 4242

type v2Fake struct {
	root, proc, own string
	writes          [][2]string // every writeFile call, in order
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// newV2Fake builds root/kubepods/pod1/ctr as berth's own cgroup, as
// /proc/self/cgroup "0::/kubepods/pod1/ctr" says.
func newV2Fake(t *testing.T) *v2Fake {
	t.Helper()
	base := t.TempDir()
	f := &v2Fake{root: filepath.Join(base, "cgroup"), proc: filepath.Join(base, "proc")}
	f.own = filepath.Join(f.root, "kubepods/pod1/ctr")
	writeFiles(t, f.root, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory hugetlb pids rdma misc\n",
		"cgroup.subtree_control": "cpu io memory pids\n",
		"cgroup.procs":           "1\n",
	})
	for _, d := range []string{"kubepods", "kubepods/pod1"} {
		writeFiles(t, filepath.Join(f.root, d), map[string]string{
			"cgroup.controllers":     "cpu io memory pids\n",
			"cgroup.subtree_control": "cpu io memory pids\n",
			"cgroup.type":            "domain\n",
			"cgroup.procs":           "",
			"cpu.max":                "max 100000\n",
			"memory.max":             "max\n",
		})
	}
	writeFiles(t, f.own, map[string]string{
		"cgroup.controllers":     "cpu io memory pids\n",
		"cgroup.subtree_control": "",
		"cgroup.type":            "domain\n",
		"cgroup.procs":           strconv.Itoa(fakePid) + "\n4250\n",
		"cpu.max":                "150000 100000\n",
		"memory.max":             "536870912\n",
	})
	writeFiles(t, filepath.Join(f.proc, strconv.Itoa(fakePid)), map[string]string{
		"cgroup":        "0::/kubepods/pod1/ctr\n",
		"oom_score_adj": "0\n",
	})
	return f
}

func (f *v2Fake) open(t *testing.T) *Manager {
	t.Helper()
	m, err := OpenWith(f.root, Options{ProcRoot: f.proc, Pid: fakePid})
	if err != nil {
		t.Fatal(err)
	}
	m.write = func(path, value string) error {
		f.writes = append(f.writes, [2]string{path, value})
		// The kernel's no-internal-process rule: a group below the root
		// whose children have controllers takes no processes.
		if dir := filepath.Dir(path); filepath.Base(path) == "cgroup.procs" && dir != f.root {
			if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); len(strings.TrimSpace(string(b))) > 0 {
				return &os.PathError{Op: "write", Path: path, Err: unix.EBUSY}
			}
		}
		return writeFile(path, value)
	}
	return m
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestV2Open(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if m.Mode() != ModeV2 || !m.Writable() || m.ReadOnlyHint() != "" {
		t.Fatalf("mode %s writable %v hint %q", m.Mode(), m.Writable(), m.ReadOnlyHint())
	}
	if got := m.Controllers(); !slices.Equal(got, []string{"cpu", "memory", "pids", "io"}) {
		t.Errorf("Controllers() = %v", got)
	}
	if len(f.writes) != 0 {
		t.Errorf("Open wrote %v", f.writes)
	}
}

func TestV2Setup(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if _, err := m.Proxy(nil); err == nil {
		t.Error("Proxy before Setup succeeded")
	}
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	sup := filepath.Join(f.own, "supervisor", "cgroup.procs")
	ctl := "+cpu +memory +pids +io"
	want := [][2]string{
		{sup, strconv.Itoa(fakePid)}, // the supervisor first
		{sup, "4250"},                // then everything else in own
		{filepath.Join(f.own, "cgroup.subtree_control"), ctl},
		{filepath.Join(f.own, "workers", "cgroup.subtree_control"), ctl},
		{filepath.Join(f.proc, strconv.Itoa(fakePid), "oom_score_adj"), "-999"},
	}
	if !slices.Equal(f.writes, want) {
		t.Errorf("writes:\n got %q\nwant %q", f.writes, want)
	}
	for _, d := range []string{"supervisor", "proxy", "workers"} {
		if fi, err := os.Stat(filepath.Join(f.own, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s not created: %v", d, err)
		}
	}
	if got := read(t, filepath.Join(f.own, "cgroup.subtree_control")); got != ctl {
		t.Errorf("own subtree_control = %q", got)
	}
	if got := read(t, filepath.Join(f.proc, strconv.Itoa(fakePid), "oom_score_adj")); got != "-999" {
		t.Errorf("oom_score_adj = %q", got)
	}
}

func TestV2SetupOnlyDelegatedControllers(t *testing.T) {
	f := newV2Fake(t)
	writeFiles(t, f.own, map[string]string{"cgroup.controllers": "memory pids\n"})
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(f.own, "cgroup.subtree_control")); got != "+memory +pids" {
		t.Errorf("subtree_control = %q", got)
	}
	if got := m.Controllers(); !slices.Equal(got, []string{"memory", "pids"}) {
		t.Errorf("Controllers() = %v", got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestV2Resources(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	w, err := m.Worker("3.1", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))},
		CPU:    &specs.LinuxCPU{Shares: ptr(uint64(512)), Quota: ptr(int64(50000)), Period: ptr(uint64(100000))},
		Pids:   &specs.LinuxPids{Limit: ptr(int64(64))},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.own, "workers", "w-3.1")
	check := func(file, want string) {
		t.Helper()
		if got := read(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	check("memory.max", "67108864")
	check("cpu.max", "50000 100000")
	check("pids.max", "64")
	// cpu.weight from shares, by containerd's (crun's) formula: 512 → 59.
	check("cpu.weight", strconv.FormatUint(cgroup2.ConvertCPUSharesToCgroupV2Value(512), 10))
	check("cpu.weight", "59")

	if err := w.Update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(128 << 20))}}); err != nil {
		t.Fatal(err)
	}
	check("memory.max", "134217728")
	check("cpu.max", "50000 100000") // untouched
	if err := w.Update(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: ptr(int64(150000))}}); err != nil {
		t.Fatal(err)
	}
	check("cpu.max", "150000 100000") // a quota alone gets the default period

	if got, want := w.ProcsPaths(), []string{filepath.Join(dir, "cgroup.procs")}; !slices.Equal(got, want) {
		t.Errorf("ProcsPaths() = %v", got)
	}
	if got := w.ProcsPath(); got != filepath.Join(dir, "cgroup.procs") {
		t.Errorf("ProcsPath() = %q", got)
	}
	if err := w.Add(777); err != nil {
		t.Fatal(err)
	}
	if got := f.writes[len(f.writes)-1]; got != [2]string{filepath.Join(dir, "cgroup.procs"), "777"} {
		t.Errorf("Add wrote %q", got)
	}

	wg, err := m.WorkersGroup(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(1 << 30))}})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(f.own, "workers", "memory.max")); got != "1073741824" {
		t.Errorf("workers memory.max = %q", got)
	}
	if wg.String() != filepath.Join(f.own, "workers") {
		t.Errorf("WorkersGroup at %s", wg)
	}
	if _, err := m.Proxy(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: ptr(uint64(2048))}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(f.own, "proxy", "cpu.weight")); got != "174" {
		t.Errorf("proxy cpu.weight = %q, want 174 (shares 2048)", got)
	}
	if _, err := m.Worker("../escape", nil); err == nil {
		t.Error("Worker accepted id ../escape")
	}
}

func TestV2ResourceErrorNamesGroupAndResources(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	// A directory where memory.max should be makes containerd's write fail.
	if err := os.MkdirAll(filepath.Join(f.own, "workers", "w-bad", "memory.max"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := m.Worker("bad", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))}})
	want := "cgroup: create " + filepath.Join(f.own, "workers", "w-bad") + ` with {"memory":{"limit":67108864}}: `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error = %v, want prefix %s", err, want)
	}
}

func TestV2Stats(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	w, err := m.Worker("1", nil)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(f.own, "workers", "w-1"), map[string]string{
		"memory.current": "1048576\n",
		"memory.max":     "max\n",
		"memory.peak":    "2097152\n",
		"cpu.stat":       "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 2500\n",
		"memory.events":  "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n",
	})
	got, err := w.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{MemoryCurrent: 1 << 20, MemoryLimit: 0, MemoryPeak: 2 << 20, CPUUsageNsec: 1_500_000,
		ThrottledPeriods: 4, ThrottledNsec: 2_500_000, OOMKills: 2}
	if got != want {
		t.Errorf("Stats() = %+v\nwant      %+v", got, want)
	}
	if n, err := w.OOMKills(); err != nil || n != 2 {
		t.Errorf("OOMKills() = %d, %v", n, err)
	}
	writeFiles(t, filepath.Join(f.own, "workers", "w-1"), map[string]string{"memory.events": "oom_kill x\n"})
	if _, err := w.OOMKills(); err == nil {
		t.Error("OOMKills parsed garbage")
	}
	var zero Group
	if _, err := zero.Stats(); err == nil {
		t.Error("zero Group Stats succeeded")
	}
	if err := zero.Add(1); err == nil {
		t.Error("zero Group Add succeeded")
	}
}

func TestV2Limits(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if c, ok := CPUQuota(m); !ok || c != 1.5 {
		t.Errorf("CPUQuota = %v, %v; want 1.5 from own cpu.max", c, ok)
	}
	if b, ok := MemoryLimit(m); !ok || b != 512<<20 {
		t.Errorf("MemoryLimit = %v, %v; want 512Mi", b, ok)
	}
	// A smaller limit on an ancestor wins.
	writeFiles(t, filepath.Join(f.root, "kubepods/pod1"), map[string]string{"cpu.max": "50000 100000\n", "memory.max": "268435456\n"})
	if c, ok := CPUQuota(m); !ok || c != 0.5 {
		t.Errorf("CPUQuota = %v, %v; want 0.5 from the parent", c, ok)
	}
	if b, ok := MemoryLimit(m); !ok || b != 256<<20 {
		t.Errorf("MemoryLimit = %v, %v; want 256Mi from the parent", b, ok)
	}
	// No limits anywhere.
	for _, d := range []string{"kubepods", "kubepods/pod1", "kubepods/pod1/ctr"} {
		writeFiles(t, filepath.Join(f.root, d), map[string]string{"cpu.max": "max 100000\n", "memory.max": "max\n"})
	}
	if c, ok := CPUQuota(m); ok {
		t.Errorf("CPUQuota = %v, true; want none", c)
	}
	if b, ok := MemoryLimit(m); ok {
		t.Errorf("MemoryLimit = %v, true; want none", b)
	}
	if _, ok := CPUQuota(nil); ok {
		t.Error("CPUQuota(nil) ok")
	}
}

func TestV2NotUsable(t *testing.T) {
	t.Run("no cgroupfs", func(t *testing.T) {
		m, err := OpenWith(filepath.Join(t.TempDir(), "nothing"), Options{ProcRoot: t.TempDir(), Pid: fakePid})
		if err != nil {
			t.Fatal(err)
		}
		if m.Mode() != ModeNone || m.Writable() || !strings.Contains(m.ReadOnlyHint(), "no cgroup filesystem") {
			t.Errorf("mode %s writable %v hint %q", m.Mode(), m.Writable(), m.ReadOnlyHint())
		}
		if _, err := m.Worker("1", nil); !errors.Is(err, ErrNotWritable) {
			t.Errorf("Worker error = %v", err)
		}
	})
	t.Run("outside the namespace", func(t *testing.T) {
		f := newV2Fake(t)
		writeFiles(t, filepath.Join(f.proc, strconv.Itoa(fakePid)), map[string]string{"cgroup": "0::/../../user.slice\n"})
		m := f.open(t)
		if m.Mode() != ModeV2 || m.Writable() || !strings.Contains(m.ReadOnlyHint(), "outside") {
			t.Errorf("mode %s writable %v hint %q", m.Mode(), m.Writable(), m.ReadOnlyHint())
		}
		if _, ok := CPUQuota(m); ok {
			t.Error("CPUQuota ok without a visible cgroup")
		}
	})
	t.Run("host root cgroup", func(t *testing.T) {
		f := newV2Fake(t)
		writeFiles(t, filepath.Join(f.proc, strconv.Itoa(fakePid)), map[string]string{"cgroup": "0::/\n"})
		m := f.open(t)
		if m.Writable() || !strings.Contains(m.ReadOnlyHint(), "root cgroup") {
			t.Errorf("writable %v hint %q", m.Writable(), m.ReadOnlyHint())
		}
		// Setup still protects the supervisor from the OOM killer.
		if err := m.Setup(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.writes, [][2]string{{filepath.Join(f.proc, strconv.Itoa(fakePid), "oom_score_adj"), "-999"}}) {
			t.Errorf("writes %q", f.writes)
		}
	})
	t.Run("oom_score_adj refused", func(t *testing.T) {
		f := newV2Fake(t)
		m := f.open(t)
		// A directory in its place makes the write fail like EACCES would.
		p := filepath.Join(f.proc, strconv.Itoa(fakePid), "oom_score_adj")
		os.Remove(p)
		os.Mkdir(p, 0o755)
		err := m.Setup()
		if !errors.Is(err, ErrOOMScoreAdj) {
			t.Fatalf("Setup error = %v, want ErrOOMScoreAdj", err)
		}
		if _, err := m.Worker("1", nil); err != nil {
			t.Errorf("groups unusable after an OOM-protection failure: %v", err)
		}
	})
}

// TestV2CompanionGroups: a program, task or periodic job gets a group of its
// own beside the proxy's, with its limits; bad kinds and names are refused.
func TestV2CompanionGroups(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	g, err := m.Companion("program", "celery", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(256 << 20))}})
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != filepath.Join(f.own, "program-celery") {
		t.Errorf("program group at %s", g)
	}
	if got := read(t, filepath.Join(f.own, "program-celery", "memory.max")); got != "268435456" {
		t.Errorf("program memory.max = %q", got)
	}
	for _, c := range []struct{ kind, name string }{
		{"task", "migrate"}, {"cron", "clear.sessions_1"},
	} {
		if _, err := m.Companion(c.kind, c.name, nil); err != nil {
			t.Errorf("%s %s: %v", c.kind, c.name, err)
		}
	}
	for _, c := range []struct{ kind, name string }{
		{"program", "../escape"}, {"program", ""}, {"daemon", "x"}, {"task", "a/b"},
	} {
		if _, err := m.Companion(c.kind, c.name, nil); err == nil {
			t.Errorf("Companion(%q, %q) accepted", c.kind, c.name)
		}
	}
}

// TestV2ZygotesHaveALeaf: the zygotes cannot live in the workers group on
// v2 (its children have controllers: the kernel says EBUSY), so they get
// the leaf workers/zygote, whose memory still counts for all workers.
func TestV2ZygotesHaveALeaf(t *testing.T) {
	f := newV2Fake(t)
	m := f.open(t)
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	wg, err := m.WorkersGroup(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := wg.Add(777); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("a pid into the workers group: %v, want EBUSY (the fake keeps the kernel's rule)", err)
	}
	z, err := m.Zygotes()
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Add(777); err != nil {
		t.Fatalf("a pid into the zygotes group: %v", err)
	}
	if got := read(t, filepath.Join(f.own, "workers", "zygote", "cgroup.procs")); got != "777" {
		t.Errorf("workers/zygote/cgroup.procs = %q", got)
	}
}
