package cgroup

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Group is one of berth's cgroups (proxy, workers, one worker). It is a small
// value; copies refer to the same cgroup. The zero Group is no cgroup: its
// methods return errors.
type Group struct {
	name  string   // below own, e.g. "workers/w-3.1" (v1: "berth/workers/w-3.1")
	dirs  []string // absolute directories; v1: one per hierarchy, memory first
	v2    *cgroup2.Manager
	v1    cgroup1.Cgroup
	write func(path, value string) error

	memDir, cpuDir, cpuacctDir string // "" when the hierarchy is not used (v1)
}

var errZeroGroup = errors.New("cgroup: no such group (zero Group)")

// String is the group's directory (v1: in the memory hierarchy), for logs.
func (g Group) String() string {
	if len(g.dirs) == 0 {
		return "<no cgroup>"
	}
	return g.dirs[0]
}

// ProcsPath is the cgroup.procs file to write a pid into. For v1 it is the
// memory hierarchy's only; a process must be in every hierarchy, so use
// ProcsPaths or Add there. "" for the zero Group.
func (g Group) ProcsPath() string {
	if len(g.dirs) == 0 {
		return ""
	}
	return filepath.Join(g.dirs[0], "cgroup.procs")
}

// ProcsPaths are all the cgroup.procs files a pid must be written into to
// join the group (one for v2; one per hierarchy for v1, memory first).
func (g Group) ProcsPaths() []string {
	out := make([]string, len(g.dirs))
	for i, d := range g.dirs {
		out[i] = filepath.Join(d, "cgroup.procs")
	}
	return out
}

// Add moves the process pid (all its threads) into the group.
func (g Group) Add(pid int) error {
	if len(g.dirs) == 0 {
		return errZeroGroup
	}
	for _, p := range g.ProcsPaths() {
		if err := g.write(p, strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// Update applies res to the live group; nil changes nothing. Fields left nil
// in res keep their current values.
func (g Group) Update(res *specs.LinuxResources) error {
	if len(g.dirs) == 0 {
		return errZeroGroup
	}
	if res == nil {
		return nil
	}
	var err error
	if g.v2 != nil {
		err = g.v2.Update(v2Resources(res))
	} else {
		err = g.v1.Update(res)
	}
	if err != nil {
		return fmt.Errorf("cgroup: update %s with %s: %w", g.dirs[0], resJSON(res), err)
	}
	return nil
}

// Stats are a group's usage counters. A field the kernel does not provide
// (controller not enabled, older kernel) is 0.
type Stats struct {
	MemoryCurrent    uint64 // bytes charged now (v1 usage_in_bytes includes page cache)
	MemoryLimit      uint64 // bytes; 0 means no limit
	MemoryPeak       uint64 // highest MemoryCurrent seen (v2 memory.peak, kernel ≥ 5.19)
	CPUUsageNsec     uint64 // CPU time used, all CPUs
	ThrottledPeriods uint64 // CFS periods in which the group hit its CPU quota
	ThrottledNsec    uint64 // time the group was throttled
	OOMKills         uint64 // processes killed by the kernel OOM killer in the group
}

// Stats reads the group's counters: a handful of small files (containerd's
// Stat reads every controller's files, too much to poll per worker).
func (g Group) Stats() (Stats, error) {
	if len(g.dirs) == 0 {
		return Stats{}, errZeroGroup
	}
	var s Stats
	var errs []error
	num := func(dir, file string, dst *uint64, scale uint64) {
		if dir == "" {
			return
		}
		v, ok, err := readLimitFile(filepath.Join(dir, file))
		if err != nil {
			errs = append(errs, err)
		} else if ok {
			*dst = v * scale
		}
	}
	kv := func(dir, file string) map[string]uint64 {
		if dir == "" {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(dir, file))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		var m map[string]uint64
		if err == nil {
			m, err = parseFlatKeyed(string(b))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cgroup: read %s: %w", filepath.Join(dir, file), err))
		}
		return m
	}
	if g.v2 != nil {
		d := g.dirs[0]
		num(d, "memory.current", &s.MemoryCurrent, 1)
		num(d, "memory.max", &s.MemoryLimit, 1)
		num(d, "memory.peak", &s.MemoryPeak, 1)
		cpu := kv(d, "cpu.stat")
		s.CPUUsageNsec = cpu["usage_usec"] * 1000
		s.ThrottledPeriods = cpu["nr_throttled"]
		s.ThrottledNsec = cpu["throttled_usec"] * 1000
		s.OOMKills = kv(d, "memory.events")["oom_kill"]
	} else {
		num(g.memDir, "memory.usage_in_bytes", &s.MemoryCurrent, 1)
		num(g.memDir, "memory.limit_in_bytes", &s.MemoryLimit, 1)
		num(g.memDir, "memory.max_usage_in_bytes", &s.MemoryPeak, 1)
		num(g.cpuacctDir, "cpuacct.usage", &s.CPUUsageNsec, 1)
		cpu := kv(g.cpuDir, "cpu.stat")
		s.ThrottledPeriods = cpu["nr_throttled"]
		s.ThrottledNsec = cpu["throttled_time"]
		s.OOMKills = kv(g.memDir, "memory.oom_control")["oom_kill"]
	}
	return s, errors.Join(errs...)
}

// OOMKills is how many processes of the group the kernel's OOM killer has
// killed so far (v2 memory.events, v1 memory.oom_control, kernel ≥ 4.13). The
// supervisor reads it before and after a worker exits by SIGKILL to tell an
// OOM kill from any other.
func (g Group) OOMKills() (uint64, error) {
	if len(g.dirs) == 0 {
		return 0, errZeroGroup
	}
	file := filepath.Join(g.memDir, "memory.events")
	if g.v2 == nil {
		file = filepath.Join(g.memDir, "memory.oom_control")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("cgroup: read OOM kills: %w", err)
	}
	n, ok, err := parseOOMKill(string(b))
	if err != nil {
		return 0, fmt.Errorf("cgroup: read OOM kills from %s: %w", file, err)
	}
	if !ok {
		return 0, fmt.Errorf("cgroup: %s has no oom_kill line (kernel older than 4.13?)", file)
	}
	return n, nil
}

// deleteTimeout bounds how long Delete waits for the kernel to let go of a
// group whose last process has just exited.
const deleteTimeout = 2 * time.Second

// Delete removes the group. It must be empty: a group that still holds
// processes or child groups is an error at once (kill and reap them first).
// A group already gone is not an error.
func (g Group) Delete() error {
	if len(g.dirs) == 0 {
		return errZeroGroup
	}
	for _, d := range g.dirs {
		if err := rmdirCgroup(d, deleteTimeout); err != nil {
			return err
		}
	}
	return nil
}

// rmdirCgroup removes one cgroup directory. The kernel answers EBUSY both for
// a group in use and, briefly, for one whose last process exited a moment ago;
// only the second is waited for, until the deadline.
func rmdirCgroup(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("cgroup: remove %s: %w", dir, err)
		}
		if b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs")); rerr == nil && len(strings.Fields(string(b))) > 0 {
			return fmt.Errorf("cgroup: remove %s: it still holds processes %s; stop them first",
				dir, strings.Join(strings.Fields(string(b)), " "))
		}
		if ents, rerr := os.ReadDir(dir); rerr == nil {
			for _, e := range ents {
				if e.IsDir() {
					return fmt.Errorf("cgroup: remove %s: it still holds the group %s; remove that first", dir, e.Name())
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup: remove %s: still busy after %v: %w", dir, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// v2Resources maps runtime-spec resources to cgroup v2 with containerd's
// ToResources (memory.max, cpu.max, cpu.weight from shares, pids.max, io.*).
// A CPU quota without a period gets the kernel's default period, 100ms:
// ToResources would drop it, while v1 applies a lone cfs_quota_us. nil when
// nothing is set, so no controller is toggled.
func v2Resources(res *specs.LinuxResources) *cgroup2.Resources {
	if res == nil {
		return nil
	}
	r := *res
	if r.CPU != nil && r.CPU.Quota != nil && r.CPU.Period == nil {
		cpu := *r.CPU
		period := uint64(100000)
		cpu.Period = &period
		r.CPU = &cpu
	}
	out := cgroup2.ToResources(&r)
	if len(out.EnabledControllers()) == 0 {
		return nil
	}
	return out
}

func resJSON(res *specs.LinuxResources) string {
	if res == nil {
		return "{}"
	}
	b, err := json.Marshal(res)
	if err != nil {
		return fmt.Sprintf("%+v", *res)
	}
	return string(b)
}
