package supervisor

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/cgroup"
	"github.com/berth-dev/berth/config"
)

// cgroups is the supervisor's view of its cgroups. A nil *cgroups, or one
// whose manager is not writable, places nothing and limits nothing: berth
// then enforces max_rss by polling, which it does anyway.
type cgroups struct {
	m        *cgroup.Manager
	workers  cgroup.Group            // all workers together
	zygotes  cgroup.Group            // the zygotes, a leaf below workers
	proxy    cgroup.Group            // the proxy processes
	perW     map[string]cgroup.Group // worker id → its own group
	comp     map[string]cgroup.Group // "program-celery" → a companion's group
	oomBase  map[string]uint64       // worker id → oom_kill count when its group was made
	oomSeen  uint64                  // workers group oom_kill count already attributed
	stats    map[string]cgroup.Stats // group name → last read, for /status and /metrics
	statsAt  time.Time
	autoDone bool // the memory cap of workers.count auto was computed
}

// setupCgroups opens the cgroup filesystem and builds berth's layout. Only
// another berth managing the same cgroup fails the boot (cgroup.ErrInUse):
// without cgroups berth runs, says so once, and keeps the limits it can
// enforce itself.
func (s *Supervisor) setupCgroups() error {
	root := s.opts.CgroupRoot
	if root == "" {
		root = os.Getenv("BERTH_CGROUP_ROOT")
	}
	if root == "off" {
		return nil
	}
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	m, err := cgroup.Open(root)
	if err != nil {
		s.log.Printf("cgroups: %v; running without cgroup limits", err)
		return nil
	}
	c := &cgroups{m: m, perW: map[string]cgroup.Group{}, oomBase: map[string]uint64{}, stats: map[string]cgroup.Stats{}}
	s.cg = c
	if !m.Writable() {
		s.log.Printf("cgroups (%s) are read-only: no per-worker limits or OOM attribution; max_rss is enforced by polling. %s", m.Mode(), m.ReadOnlyHint())
		return nil
	}
	if err := m.Setup(); err != nil {
		switch {
		case errors.Is(err, cgroup.ErrInUse):
			return fmt.Errorf("boot: %w", err)
		case errors.Is(err, cgroup.ErrOOMScoreAdj):
			s.log.Printf("cgroups: %v; the OOM killer will still prefer workers, which run at 0", err)
		default:
			s.log.Printf("cgroups: setup: %v; running without cgroup limits", err)
			c.m = nil
			return nil
		}
	}
	res := s.cfg.Resources
	if c.workers, err = m.WorkersGroup(res.Workers); err != nil {
		s.log.Printf("cgroups: workers group: %v", err)
	}
	if c.zygotes, err = m.Zygotes(); err != nil {
		s.log.Printf("cgroups: zygotes group: %v", err)
	}
	if c.proxy, err = m.Proxy(res.Proxy); err != nil {
		s.log.Printf("cgroups: proxy group: %v", err)
	}
	c.oomSeen, _ = c.workers.OOMKills()
	s.log.Printf("cgroups %s: workers in %s, proxy in %s", m.Mode(), c.workers, c.proxy)
	return nil
}

func (c *cgroups) usable() bool { return c != nil && c.m != nil && c.m.Writable() }

// workerGroup creates the worker's own group (under the workers group).
func (s *Supervisor) workerGroup(w *worker) (cgroup.Group, bool) {
	c := s.cg
	if !c.usable() {
		return cgroup.Group{}, false
	}
	if g, ok := c.perW[w.id]; ok {
		return g, true
	}
	g, err := c.m.Worker(w.id, s.cfg.Resources.Worker)
	if err != nil {
		s.log.Printf("worker %s: cgroup: %v", w.id, err)
		return cgroup.Group{}, false
	}
	c.perW[w.id] = g
	// A group left by an earlier run keeps its counters: only kills after
	// now are this worker's.
	c.oomBase[w.id], _ = g.OOMKills()
	return g, true
}

// workerCgroupFD opens w's group directory for CLONE_INTO_CGROUP; -1 when
// cgroups are not usable or not v2 (v1 has no such clone flag).
func (s *Supervisor) workerCgroupFD(w *worker) int {
	c := s.cg
	if !c.usable() || c.m.Mode() != cgroup.ModeV2 {
		return -1
	}
	g, ok := s.workerGroup(w)
	if !ok {
		return -1
	}
	fd, err := unix.Open(g.String(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// placeWorker moves a started worker into its group: the only write of a
// worker's pid to cgroup.procs. It runs before the worker is routed a
// request (on the zygote's reply or on READY, whichever comes first), and
// as the supervisor, so an app.user that may not write cgroup.procs
// (non-root, cgroup v1 or v2) does not matter. A worker started with
// CLONE_INTO_CGROUP is there already; the write is idempotent.
func (s *Supervisor) placeWorker(w *worker) {
	s.resetOOMScore(w.pid)
	g, ok := s.workerGroup(w)
	if !ok || w.pid <= 0 {
		return
	}
	if err := g.Add(w.pid); err != nil {
		s.log.Printf("worker %s (pid %d): %v", w.id, w.pid, err)
	}
}

// placeZygote puts a zygote in the zygotes group, below workers: the memory
// of the app it imported counts against all workers together.
func (s *Supervisor) placeZygote(z *zygote) {
	s.resetOOMScore(z.pid)
	if c := s.cg; c.usable() && z.pid > 0 {
		if err := c.zygotes.Add(z.pid); err != nil {
			s.log.Printf("zygote (pid %d): %v", z.pid, err)
		}
	}
}

// resetOOMScore undoes the supervisor's protection, which children inherit:
// a worker is what the OOM killer should pick. Raising needs no privilege.
func (s *Supervisor) resetOOMScore(pid int) {
	if pid > 0 {
		_ = cgroup.SetOOMScoreAdj(pid, 0)
	}
}

func (s *Supervisor) placeProxy(p *proxyProc) {
	_ = cgroup.ProtectFromOOM(p.pid)
	if c := s.cg; c.usable() {
		if err := c.proxy.Add(p.pid); err != nil {
			s.log.Printf("proxy %d (pid %d): %v", p.n, p.pid, err)
		}
	}
}

// oomKilled tells whether the kernel's OOM killer ended w: its own group's
// oom_kill counter, or the workers group's (a kill for the limit of all
// workers together), moved. It is asked before the group is released.
func (s *Supervisor) oomKilled(w *worker) bool {
	c := s.cg
	if !c.usable() {
		return false
	}
	if g, ok := c.perW[w.id]; ok {
		if n, err := g.OOMKills(); err == nil && n > c.oomBase[w.id] {
			return true
		}
	}
	if n, err := c.workers.OOMKills(); err == nil && n > c.oomSeen {
		c.oomSeen = n
		return true
	}
	return false
}

// oomDetail is the ": limit 64Mi, usage at kill 64Mi" of the OOM log line.
func (s *Supervisor) oomDetail(w *worker) string {
	c := s.cg
	if !c.usable() {
		return ""
	}
	g, ok := c.perW[w.id]
	if !ok {
		return ""
	}
	st, err := g.Stats()
	if err != nil || st.MemoryLimit == 0 {
		if ws, err := c.workers.Stats(); err == nil && ws.MemoryLimit > 0 {
			return fmt.Sprintf(": workers limit %s, usage at kill %s", humanBytes(int64(ws.MemoryLimit)), humanBytes(int64(ws.MemoryPeak)))
		}
		return ""
	}
	return fmt.Sprintf(": limit %s, usage at kill %s", humanBytes(int64(st.MemoryLimit)), humanBytes(int64(st.MemoryPeak)))
}

// releaseWorkerCgroup removes a dead worker's group.
func (s *Supervisor) releaseWorkerCgroup(w *worker) {
	c := s.cg
	if !c.usable() {
		return
	}
	if g, ok := c.perW[w.id]; ok {
		delete(c.perW, w.id)
		delete(c.oomBase, w.id)
		delete(c.stats, "worker "+w.id)
		if err := g.Delete(); err != nil {
			s.log.Printf("worker %s: %v", w.id, err)
		}
	}
}

// releaseCgroups removes what berth created, at exit.
func (s *Supervisor) releaseCgroups() {
	c := s.cg
	if !c.usable() {
		return
	}
	for id, g := range c.perW {
		g.Delete()
		delete(c.perW, id)
	}
	for name, g := range c.comp {
		g.Delete()
		delete(c.comp, name)
	}
	c.zygotes.Delete()
}

// updateCgroups applies a reload's resources in place.
func (s *Supervisor) updateCgroups(cfg *config.Config) error {
	c := s.cg
	if !c.usable() {
		if cfg.Resources.Workers != nil || cfg.Resources.Worker != nil || cfg.Resources.Proxy != nil {
			s.log.Printf("resources changed, but cgroups are not writable here: limits not applied")
		}
		return nil
	}
	upd := func(name string, g cgroup.Group, r *specs.LinuxResources) error {
		if r == nil {
			r = &specs.LinuxResources{}
		}
		if err := g.Update(r); err != nil {
			return fmt.Errorf("resources.%s: %w", name, err)
		}
		return nil
	}
	if err := upd("workers", c.workers, cfg.Resources.Workers); err != nil {
		return err
	}
	if err := upd("proxy", c.proxy, cfg.Resources.Proxy); err != nil {
		return err
	}
	for id, g := range c.perW {
		if err := upd("worker", g, cfg.Resources.Worker); err != nil {
			return fmt.Errorf("worker %s: %w", id, err)
		}
	}
	return nil
}

// readCgroupStats refreshes the per-group stats (once a second, from the tick).
func (s *Supervisor) readCgroupStats() {
	c := s.cg
	if !c.usable() {
		return
	}
	read := func(name string, g cgroup.Group) {
		st, err := g.Stats()
		if err != nil {
			return
		}
		c.stats[name] = st
		s.metrics.memory.WithLabelValues(name).Set(float64(st.MemoryCurrent))
		s.metrics.cpu.WithLabelValues(name).Set(float64(st.CPUUsageNsec) / 1e9)
		s.metrics.throttled.WithLabelValues(name).Set(float64(st.ThrottledNsec) / 1e9)
	}
	read("workers", c.workers)
	read("proxy", c.proxy)
	for id, g := range c.perW {
		read("worker "+id, g)
	}
	for name, g := range c.comp {
		kind, n, _ := strings.Cut(name, "-")
		read(kind+" "+n, g)
	}
	c.statsAt = s.now()
}

func (s *Supervisor) workerMemory(w *worker) int64 {
	if c := s.cg; c.usable() {
		return int64(c.stats["worker "+w.id].MemoryCurrent)
	}
	return 0
}

// CgroupStatus is the cgroup part of /status.
type CgroupStatus struct {
	Mode     string                 `json:"mode"`
	Writable bool                   `json:"writable"`
	Hint     string                 `json:"hint,omitempty"`
	CPUQuota float64                `json:"cpu_quota,omitempty"`    // CPUs; 0 = none
	Memory   int64                  `json:"memory_limit,omitempty"` // bytes; 0 = none
	Groups   map[string]GroupStatus `json:"groups,omitempty"`
}

// GroupStatus is one cgroup's counters in /status.
type GroupStatus struct {
	MemoryBytes     uint64  `json:"memory_bytes"`
	MemoryLimit     uint64  `json:"memory_limit,omitempty"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	ThrottledPeriod uint64  `json:"throttled_periods"`
	ThrottledSecs   float64 `json:"throttled_seconds"`
	OOMKills        uint64  `json:"oom_kills"`
}

func (s *Supervisor) cgroupStatus() *CgroupStatus {
	c := s.cg
	if c == nil {
		return nil
	}
	st := &CgroupStatus{Mode: c.m.Mode(), Writable: c.m.Writable()}
	if !st.Writable {
		st.Hint = c.m.ReadOnlyHint()
	}
	if q, ok := cgroup.CPUQuota(c.m); ok {
		st.CPUQuota = q
	}
	if m, ok := cgroup.MemoryLimit(c.m); ok {
		st.Memory = m
	}
	if len(c.stats) > 0 {
		st.Groups = map[string]GroupStatus{}
		for name, x := range c.stats {
			st.Groups[name] = GroupStatus{MemoryBytes: x.MemoryCurrent, MemoryLimit: x.MemoryLimit,
				CPUSeconds: float64(x.CPUUsageNsec) / 1e9, ThrottledPeriod: x.ThrottledPeriods,
				ThrottledSecs: float64(x.ThrottledNsec) / 1e9, OOMKills: x.OOMKills}
		}
	}
	return st
}

// autoWorkers sizes workers.count auto from the cgroup CPU quota (else the
// usable CPUs) and, once a worker's memory is known, the memory limit.
func (s *Supervisor) autoWorkers() (int, string) {
	var m *cgroup.Manager
	if s.cg != nil {
		m = s.cg.m
	}
	quota, quotaOK := 0.0, false
	mem, memOK := int64(0), false
	if m != nil {
		quota, quotaOK = cgroup.CPUQuota(m)
		mem, memOK = cgroup.MemoryLimit(m)
	}
	per := int64(0)
	if s.cg != nil && s.cg.autoDone {
		per = s.measuredWorkerMemory()
	}
	n, why := cgroup.AutoWorkers(quota, quotaOK, cgroup.UsableCPUs(), mem, memOK, per)
	return n, fmt.Sprintf("%s; GOMAXPROCS %d", why, runtime.GOMAXPROCS(0))
}

// measuredWorkerMemory is the largest RSS of a ready worker.
func (s *Supervisor) measuredWorkerMemory() int64 {
	var max int64
	for _, w := range s.workers {
		if w.state == wReady && w.pid > 0 {
			if rss, err := readRSS(w.pid); err == nil && rss > max {
				max = rss
			}
		}
	}
	return max
}

// refineAuto caps workers.count auto by memory once the first worker is
// ready and its memory can be measured.
func (s *Supervisor) refineAuto() {
	if s.cfg.Workers.Count != 0 || s.cg == nil || s.cg.autoDone {
		return
	}
	if _, ok := cgroup.MemoryLimit(s.cg.m); !ok {
		s.cg.autoDone = true
		return
	}
	s.cg.autoDone = true
	n, why := s.autoWorkers()
	s.log.Printf("%s (after measuring the first worker)", why)
	if n != s.activeSlotsIn("") {
		s.resize(n)
	}
}

// setGOMAXPROCS follows the CPU quota, so the supervisor does not schedule
// more threads than it may run. It changes only this process: exporting the
// value would make the proxy take it for the operator's own setting and run
// with the whole quota instead of its share (proxyGOMAXPROCS).
func (s *Supervisor) setGOMAXPROCS() {
	if s.operatorGOMAXPROCS != "" || s.cg == nil {
		return
	}
	if q, ok := cgroup.CPUQuota(s.cg.m); ok {
		n := int(math.Ceil(q))
		if n < 1 {
			n = 1
		}
		runtime.GOMAXPROCS(n)
	}
}

func osGetpid() int { return os.Getpid() }
