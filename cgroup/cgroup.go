// Package cgroup puts berth's supervisor, proxy and Python workers into
// cgroups of their own, with OCI runtime-spec resource limits, through
// github.com/containerd/cgroups/v3.
//
// Layout, below the cgroup berth was started in ("own"):
//
//	v2 (unified):  own/supervisor   the supervisor and everything else that was in own
//	               own/proxy
//	               own/workers      limit for all workers together
//	               own/workers/w-ID one per worker
//	               own/program-NAME one per companion program (task-NAME, cron-NAME)
//	v1 (legacy or hybrid), in each writable hierarchy (memory, cpu, cpuacct, pids, blkio, cpuset):
//	               own/berth/{supervisor,proxy,workers,workers/w-ID,program-NAME,…}
//	               (own/berth-2/… for a second instance started from the same cgroup; instance.go)
//
// v2 forbids processes in a cgroup whose children have controllers enabled
// (the "no internal processes" rule), so Setup first moves every process of
// own into own/supervisor, then enables the controllers. v1 has no such rule;
// the extra "berth" level keeps berth's groups apart from whatever else shares
// own.
//
// A read-only or absent cgroup filesystem is not an error: Open returns a
// Manager whose Writable is false and whose ReadOnlyHint says how to enable
// cgroups. The limits of berth's own cgroup (CPUQuota, MemoryLimit) are still
// read then, so workers.count auto works in any container.
//
// Every write berth itself makes (cgroup.procs, cgroup.subtree_control,
// oom_score_adj) goes through writeFile, whose errors name the value and the
// file. containerd's library writes the resource files (Proxy, WorkersGroup,
// Worker, Group.Update); those errors are wrapped with the group path and the
// resources as JSON.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	cgroups "github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Modes reported by Manager.Mode.
const (
	ModeV1   = "v1"   // cgroup v1 hierarchies (legacy, or hybrid with an empty v2 at unified/)
	ModeV2   = "v2"   // the unified hierarchy
	ModeNone = "none" // no cgroup filesystem found
)

// oom_score_adj values: the kernel's OOM killer picks a worker before the
// proxy, and the proxy before the supervisor (-1000 would exempt them
// completely, which could leave a runaway supervisor unkillable).
const (
	SupervisorOOMScoreAdj = -999
	ProxyOOMScoreAdj      = -998
)

var (
	// ErrNotWritable is returned by the group functions when the cgroup
	// filesystem cannot be written; ReadOnlyHint says why.
	ErrNotWritable = errors.New("cgroup: the cgroup filesystem is not writable")
	// ErrOOMScoreAdj marks a Setup error where only the supervisor's OOM
	// protection failed (lowering oom_score_adj needs CAP_SYS_RESOURCE, which
	// rootless containers lack); the cgroups are set up. Log it and go on.
	ErrOOMScoreAdj = errors.New("cgroup: the supervisor is not protected from the OOM killer")
)

// oomAdjError is a failed oom_score_adj write that errors.Is ErrOOMScoreAdj;
// its message is the write's.
type oomAdjError struct{ err error }

func (e oomAdjError) Error() string   { return e.err.Error() }
func (e oomAdjError) Unwrap() []error { return []error{e.err, ErrOOMScoreAdj} }

// managedV1 are the v1 hierarchies berth creates its groups in, memory first
// (ProcsPath returns memory's). devices, freezer, net_*, perf_event and the
// systemd named hierarchy are left alone: berth sets nothing there.
var managedV1 = []string{"memory", "cpu", "cpuacct", "pids", "blkio", "cpuset"}

// wantedV2 are the v2 controllers Setup enables for berth's groups, where the
// parent delegated them (they are listed in own/cgroup.controllers).
var wantedV2 = []string{"cpu", "memory", "pids", "io"}

// Options are for tests and unusual setups; the zero value is the running
// process as seen through /proc.
type Options struct {
	// ProcRoot is where proc(5) is mounted; "" means "/proc". Open reads
	// <ProcRoot>/<Pid>/cgroup and <ProcRoot>/<Pid>/mountinfo, and Setup writes
	// <ProcRoot>/<Pid>/oom_score_adj.
	ProcRoot string
	// Pid is the supervisor's pid; 0 means os.Getpid(). Setup moves it into
	// the supervisor group.
	Pid int
}

// Manager knows where berth's own cgroup is and creates berth's groups below
// it. It is used by the supervisor's one goroutine; the Groups it returns may
// be used from any goroutine.
type Manager struct {
	root     string
	mode     string
	writable bool
	hint     string
	procRoot string
	pid      int
	// write is writeFile; tests wrap it to record every write.
	write func(path, value string) error

	// v2
	ownRel  string   // own cgroup relative to root, "/"-prefixed; "" when not visible
	own     string   // absolute directory of own
	avail   []string // wantedV2 controllers listed in own/cgroup.controllers
	enabled []string // controllers Setup enabled for berth's groups

	// v1: the managedV1 hierarchies found, in managedV1 order
	hier []*v1Hier

	ready bool // Setup created the groups

	// tree is the v1 directory below own holding this instance's groups
	// ("berth", or "berth-N" when other instances hold the lower names);
	// locks are the flocks that claim it (v2: own). See instance.go.
	tree  string
	locks []*os.File
}

type v1Hier struct {
	name     string
	mount    string // the hierarchy's directory, symlinks resolved
	ownRel   string // own cgroup relative to the hierarchy's mount, "/"-prefixed
	own      string // absolute directory of own, symlinks resolved
	writable bool
}

// Open finds the cgroup filesystem at root (normally "/sys/fs/cgroup") and
// berth's own cgroup in it, from /proc/self/cgroup. It does not change
// anything; Setup does. A missing or read-only cgroup filesystem gives a
// Manager with Writable false, not an error; an error means /proc could not
// be read or parsed.
func Open(root string) (*Manager, error) {
	return OpenWith(root, Options{})
}

// OpenWith is Open with the process and /proc given by o.
func OpenWith(root string, o Options) (*Manager, error) {
	m := &Manager{
		root:     filepath.Clean(root),
		mode:     ModeNone,
		procRoot: o.ProcRoot,
		pid:      o.Pid,
		write:    writeFile,
	}
	if m.procRoot == "" {
		m.procRoot = "/proc"
	}
	if m.pid == 0 {
		m.pid = os.Getpid()
	}
	if fi, err := os.Stat(m.root); err != nil || !fi.IsDir() {
		m.hint = hintFor(fmt.Sprintf("no cgroup filesystem at %s", m.root))
		return m, nil
	}
	cgData, err := os.ReadFile(m.procFile("cgroup"))
	if err != nil {
		return nil, fmt.Errorf("cgroup: find berth's own cgroup: %w (is /proc mounted?)", err)
	}
	v1Paths, v2Path, err := cgroups.ParseCgroupFromReaderUnified(strings.NewReader(string(cgData)))
	if err != nil {
		return nil, fmt.Errorf("cgroup: parse %s: %w", m.procFile("cgroup"), err)
	}
	mounts, err := readMountRoots(m.procFile("mountinfo"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(m.root, "cgroup.controllers")); err == nil {
		m.mode = ModeV2
		m.openV2(v2Path, mounts)
		return m, nil
	}
	if m.openV1(v1Paths, mounts) {
		m.mode = ModeV1
		return m, nil
	}
	m.hint = hintFor(fmt.Sprintf("%s holds neither cgroup v2 (no cgroup.controllers) nor the cgroup v1 hierarchies berth uses (memory, cpu, pids, …)", m.root))
	return m, nil
}

func (m *Manager) openV2(procPath string, mounts map[string]string) {
	if procPath == "" {
		m.hint = hintFor(fmt.Sprintf("cgroup v2: %s has no cgroup v2 line (0::)", m.procFile("cgroup")))
		return
	}
	rel, ok := visible(procPath, mounts[m.root])
	if !ok {
		m.hint = hintFor(fmt.Sprintf("cgroup v2: berth's cgroup %s is outside the part of the hierarchy mounted at %s", procPath, m.root))
		return
	}
	m.ownRel = rel
	m.own = filepath.Join(m.root, rel)
	if b, err := os.ReadFile(filepath.Join(m.own, "cgroup.controllers")); err == nil {
		have := strings.Fields(string(b))
		for _, c := range wantedV2 {
			if slices.Contains(have, c) {
				m.avail = append(m.avail, c)
			}
		}
	} else {
		m.hint = hintFor(fmt.Sprintf("cgroup v2: berth's cgroup %s cannot be read (%v)", m.own, errnoOf(err)))
		return
	}
	// Only the true root cgroup lacks cgroup.type; berth must not move every
	// process of the host, so it needs a cgroup of its own (a container or a
	// systemd unit with Delegate=yes).
	if _, err := os.Stat(filepath.Join(m.own, "cgroup.type")); err != nil {
		m.hint = hintFor(fmt.Sprintf("cgroup v2: berth runs in the host's root cgroup %s", m.own))
		return
	}
	for _, p := range []string{m.own, filepath.Join(m.own, "cgroup.procs"), filepath.Join(m.own, "cgroup.subtree_control")} {
		if err := unix.Access(p, unix.W_OK); err != nil {
			m.hint = hintFor(fmt.Sprintf("cgroup v2: %s is not writable (%v)", p, err))
			return
		}
	}
	m.writable = true
}

// openV1 finds the managed v1 hierarchies; false when there is none.
func (m *Manager) openV1(procPaths map[string]string, mounts map[string]string) bool {
	memWhy := fmt.Sprintf("no cgroup v1 memory hierarchy at %s", filepath.Join(m.root, "memory"))
	for _, name := range managedV1 {
		dir := filepath.Join(m.root, name)
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			continue
		}
		procPath, ok := procPaths[name]
		if !ok {
			continue
		}
		mount, err := filepath.EvalSymlinks(dir) // "cpu" is often a link to "cpu,cpuacct"
		if err != nil {
			continue
		}
		rel, ok := visible(procPath, mounts[mount])
		if !ok {
			if name == "memory" {
				memWhy = fmt.Sprintf("berth's memory cgroup %s is outside the part mounted at %s", procPath, mount)
			}
			continue
		}
		h := &v1Hier{name: name, mount: mount, ownRel: rel, own: filepath.Join(mount, rel)}
		h.writable = true
		for _, p := range []string{h.own, filepath.Join(h.own, "cgroup.procs")} {
			if err := unix.Access(p, unix.W_OK); err != nil {
				h.writable = false
				if name == "memory" {
					memWhy = fmt.Sprintf("%s is not writable (%v)", p, err)
				}
				break
			}
		}
		m.hier = append(m.hier, h)
	}
	if len(m.hier) == 0 {
		return false
	}
	// Memory is what berth limits and watches for OOM kills; without it the
	// other hierarchies alone are not worth a partial setup.
	if mem := m.v1("memory"); mem != nil && mem.writable {
		m.writable = true
		return true
	}
	m.hint = hintFor("cgroup v1: " + memWhy)
	return true
}

func (m *Manager) v1(name string) *v1Hier {
	for _, h := range m.hier {
		if h.name == name {
			return h
		}
	}
	return nil
}

// visible turns a path from /proc/PID/cgroup into one relative to the mount
// whose root (field 4 of mountinfo) is mountRoot; "" means "/". A path outside
// the mounted subtree ("/../x" in a cgroup namespace, or another container's
// subtree) is not visible.
func visible(procPath, mountRoot string) (string, bool) {
	if mountRoot == "" {
		mountRoot = "/"
	}
	if slices.Contains(strings.Split(procPath, "/"), "..") {
		return "", false
	}
	rel, err := filepath.Rel(mountRoot, filepath.Clean("/"+procPath))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return filepath.Join("/", rel), true
}

func hintFor(reason string) string {
	return reason + ". berth does not put the proxy and the workers in cgroups of their own; it enforces" +
		" workers.max_rss by polling the workers' RSS instead. To enable cgroup limits, run the container" +
		" with a writable cgroup: podman run --cgroupns=private --security-opt unmask=/sys/fs/cgroup;" +
		" docker run --cgroupns=private on a cgroup v2 host with a delegated subtree;" +
		" Kubernetes does not allow it by default"
}

// Mode is ModeV1, ModeV2 or ModeNone.
func (m *Manager) Mode() string { return m.mode }

// Writable reports whether berth can create groups (for v1: the memory
// hierarchy is writable).
func (m *Manager) Writable() bool { return m.writable }

// ReadOnlyHint is one line saying why cgroups cannot be used and how to enable
// them; "" when Writable.
func (m *Manager) ReadOnlyHint() string {
	if m.writable {
		return ""
	}
	return m.hint
}

// Controllers lists the controllers berth's groups get: for v2 those Setup
// enabled (before Setup: those it will try), for v1 the writable hierarchies.
func (m *Manager) Controllers() []string {
	switch {
	case m.mode == ModeV2 && m.ready:
		return slices.Clone(m.enabled)
	case m.mode == ModeV2:
		return slices.Clone(m.avail)
	}
	var out []string
	for _, h := range m.hier {
		if h.writable {
			out = append(out, h.name)
		}
	}
	return out
}

func (m *Manager) procFile(name string) string {
	return filepath.Join(m.procRoot, strconv.Itoa(m.pid), name)
}

// Setup creates berth's groups and moves the supervisor into its own (see the
// package comment for the layout), then lowers the supervisor's oom_score_adj
// to SupervisorOOMScoreAdj. When the cgroup filesystem is not writable it only
// does the latter. An error that errors.Is ErrOOMScoreAdj means only the OOM
// protection failed; any other error means no limits can be applied.
func (m *Manager) Setup() error {
	if m.writable {
		var err error
		if m.mode == ModeV2 {
			if err = m.claimV2(); err == nil {
				err = m.setupV2()
			}
		} else {
			if err = m.claimV1(); err == nil {
				err = m.setupV1()
			}
		}
		if err != nil {
			return err
		}
		m.ready = true
	}
	if err := setOOMScoreAdj(m.write, m.procFile("oom_score_adj"), SupervisorOOMScoreAdj); err != nil {
		return oomAdjError{err}
	}
	return nil
}

func (m *Manager) setupV2() error {
	sup := filepath.Join(m.own, "supervisor")
	if err := mkdir(sup); err != nil {
		return err
	}
	// A process can join own between the move and the write to
	// subtree_control (podman exec); the kernel then refuses with EBUSY, so
	// move again and retry a few times.
	for attempt := 1; ; attempt++ {
		if err := m.moveAll(m.own, sup); err != nil {
			return err
		}
		err := m.enable(m.own, m.avail)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EBUSY) || attempt == 3 {
			return fmt.Errorf("%w (processes keep joining %s?)", err, m.own)
		}
	}
	m.enabled = slices.Clone(m.avail)
	for _, name := range []string{"proxy", "workers"} {
		if err := mkdir(filepath.Join(m.own, name)); err != nil {
			return err
		}
	}
	return m.enable(filepath.Join(m.own, "workers"), m.enabled)
}

// moveAll moves the supervisor, then every other process of from, into to.
func (m *Manager) moveAll(from, to string) error {
	procs := filepath.Join(to, "cgroup.procs")
	if err := m.write(procs, strconv.Itoa(m.pid)); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(from, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("cgroup: list processes to move out of %s: %w", from, err)
	}
	for _, f := range strings.Fields(string(b)) {
		if f == strconv.Itoa(m.pid) {
			continue
		}
		if err := m.write(procs, f); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

// enable turns controllers on for dir's children, in one write.
func (m *Manager) enable(dir string, controllers []string) error {
	if len(controllers) == 0 {
		return nil
	}
	return m.write(filepath.Join(dir, "cgroup.subtree_control"), "+"+strings.Join(controllers, " +"))
}

func (m *Manager) setupV1() error {
	for _, name := range []string{"supervisor", "proxy", "workers"} {
		if _, err := m.newV1(m.tree+"/"+name, nil); err != nil {
			return err
		}
	}
	for _, p := range m.v1Dirs(m.tree + "/supervisor") {
		if err := m.write(filepath.Join(p, "cgroup.procs"), strconv.Itoa(m.pid)); err != nil {
			return err
		}
	}
	return nil
}

// writableV1 lists the writable hierarchies, memory first.
func (m *Manager) writableV1() []*v1Hier {
	var out []*v1Hier
	for _, h := range m.hier {
		if h.writable {
			out = append(out, h)
		}
	}
	return out
}

// v1Dirs are the directories of the group rel in each writable hierarchy,
// memory first, without repeats (co-mounted cpu,cpuacct is one directory).
func (m *Manager) v1Dirs(rel string) []string {
	var out []string
	for _, h := range m.writableV1() {
		d := filepath.Join(h.own, rel)
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

func (m *Manager) v1Opts() []cgroup1.InitOpts {
	hs := m.writableV1()
	return []cgroup1.InitOpts{
		cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) {
			out := make([]cgroup1.Subsystem, 0, len(hs))
			for _, h := range hs {
				out = append(out, v1Subsystem(m.root, h.name))
			}
			return out, nil
		}),
		func(c *cgroup1.InitConfig) error { c.InitCheck = cgroup1.AllowAny; return nil },
	}
}

func v1Subsystem(root, name string) cgroup1.Subsystem {
	switch name {
	case "memory":
		return cgroup1.NewMemory(root)
	case "cpu":
		return cgroup1.NewCpu(root)
	case "cpuacct":
		return cgroup1.NewCpuacct(root)
	case "pids":
		return cgroup1.NewPids(root)
	case "blkio":
		return cgroup1.NewBlkio(root)
	case "cpuset":
		return cgroup1.NewCpuset(root)
	}
	panic("cgroup: unmanaged v1 hierarchy " + name)
}

// v1Path is containerd's Path for the group rel below own.
func (m *Manager) v1Path(rel string) cgroup1.Path {
	return func(n cgroup1.Name) (string, error) {
		h := m.v1(string(n))
		if h == nil {
			return "", cgroup1.ErrControllerNotActive
		}
		return filepath.Join(h.ownRel, rel), nil
	}
}

// newV1 creates (or updates) the group rel below own in every writable
// hierarchy.
func (m *Manager) newV1(rel string, res *specs.LinuxResources) (Group, error) {
	r := res
	if r == nil {
		r = &specs.LinuxResources{}
	}
	cg, err := cgroup1.New(m.v1Path(rel), r, m.v1Opts()...)
	dirs := m.v1Dirs(rel)
	if err != nil {
		return Group{}, fmt.Errorf("cgroup: create %s with %s: %w", dirs[0], resJSON(res), err)
	}
	g := Group{name: rel, dirs: dirs, v1: cg, write: m.write}
	for _, h := range m.writableV1() {
		d := filepath.Join(h.own, rel)
		switch h.name {
		case "memory":
			g.memDir = d
		case "cpu":
			g.cpuDir = d
		case "cpuacct":
			g.cpuacctDir = d
		}
	}
	return g, nil
}

// newV2 creates (or updates) the group rel below own.
func (m *Manager) newV2(rel string, res *specs.LinuxResources) (Group, error) {
	parent, err := cgroup2.Load(filepath.Join(m.ownRel, filepath.Dir(rel)), cgroup2.WithMountpoint(m.root))
	dir := filepath.Join(m.own, rel)
	if err == nil {
		var cg *cgroup2.Manager
		cg, err = parent.NewChild(filepath.Base(rel), v2Resources(res))
		if err == nil {
			return Group{name: rel, dirs: []string{dir}, v2: cg, write: m.write,
				memDir: dir, cpuDir: dir, cpuacctDir: dir}, nil
		}
	}
	return Group{}, fmt.Errorf("cgroup: create %s with %s: %w", dir, resJSON(res), err)
}

func (m *Manager) group(rel string, res *specs.LinuxResources) (Group, error) {
	if !m.writable {
		return Group{}, fmt.Errorf("%w: %s", ErrNotWritable, m.hint)
	}
	if !m.ready {
		return Group{}, errors.New("cgroup: call Setup before creating groups")
	}
	if m.mode == ModeV2 {
		return m.newV2(rel, res)
	}
	return m.newV1(m.tree+"/"+rel, res)
}

// Proxy creates the proxy's group with res (nil: no limits), or applies res
// to it when it exists.
func (m *Manager) Proxy(res *specs.LinuxResources) (Group, error) {
	return m.group("proxy", res)
}

// WorkersGroup creates the parent of all workers' groups with res (nil: no
// limits), or applies res to it; its limits apply to all workers together.
func (m *Manager) WorkersGroup(res *specs.LinuxResources) (Group, error) {
	return m.group("workers", res)
}

// Zygotes creates the group "zygote" below WorkersGroup, where the
// processes that import the app and fork workers live: their memory counts
// against the limit of all workers together. A leaf of its own because
// cgroup v2 refuses processes in a group whose children have controllers
// (the workers group itself: EBUSY).
func (m *Manager) Zygotes() (Group, error) {
	return m.group("workers/zygote", nil)
}

// Worker creates the group "w-<id>" below WorkersGroup with res (nil: no
// limits), or applies res to it. id is letters, digits, '.', '_' and '-'.
func (m *Manager) Worker(id string, res *specs.LinuxResources) (Group, error) {
	if id == "" || strings.Trim(id, ".") == "" || strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) >= 0 {
		return Group{}, fmt.Errorf("cgroup: worker id %q: use letters, digits, '.', '_' and '-'", id)
	}
	return m.group("workers/w-"+id, res)
}

// Companion creates the group "<kind>-<name>" beside the proxy's (a
// before-start task, a companion program, a periodic job: kind is task,
// program or cron) with res (nil: no limits), or applies res to it. name is
// letters, digits, '.', '_' and '-'.
func (m *Manager) Companion(kind, name string, res *specs.LinuxResources) (Group, error) {
	switch kind {
	case "task", "program", "cron":
	default:
		return Group{}, fmt.Errorf("cgroup: companion kind %q: use task, program or cron", kind)
	}
	if name == "" || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) >= 0 {
		return Group{}, fmt.Errorf("cgroup: %s name %q: use letters, digits, '.', '_' and '-'", kind, name)
	}
	return m.group(kind+"-"+name, res)
}

// readMountRoots maps each mount point in a mountinfo file to the root of the
// mounted filesystem it shows (field 4), "/" unless the mount shows a subtree
// (a v1 container without a cgroup namespace). A missing file is an empty map.
func readMountRoots(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup: read %s: %w", path, err)
	}
	return parseMountRoots(string(b)), nil
}

func mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup: create %s: %w", dir, errnoOf(err))
	}
	return nil
}
