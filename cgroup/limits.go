package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// writeFile is the one place berth writes a cgroup or proc file: one write(2)
// of value, as the kernel wants it. O_CREATE only matters for a directory
// standing in for cgroupfs in tests; the kernel's files always exist.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err == nil {
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", value, path, errnoOf(err))
	}
	return nil
}

// SetOOMScoreAdj writes adj (-1000..1000) to /proc/<pid>/oom_score_adj.
// Lowering it needs CAP_SYS_RESOURCE. Children inherit the value on fork: a
// worker forked from a protected process should set its own back to 0
// (raising is always allowed).
func SetOOMScoreAdj(pid, adj int) error {
	return setOOMScoreAdj(writeFile, filepath.Join("/proc", strconv.Itoa(pid), "oom_score_adj"), adj)
}

func setOOMScoreAdj(write func(path, value string) error, path string, adj int) error {
	err := write(path, strconv.Itoa(adj))
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (lowering oom_score_adj needs CAP_SYS_RESOURCE)", err)
	}
	return err
}

// ProtectFromOOM sets the proxy's oom_score_adj to ProxyOOMScoreAdj, so the
// kernel kills workers first.
func ProtectFromOOM(pid int) error {
	return SetOOMScoreAdj(pid, ProxyOOMScoreAdj)
}

// CPUQuota is the CPU limit of berth's own cgroup, in CPUs (1.5 = 150ms per
// 100ms): the smallest quota of its cgroup and its ancestors up to the root of
// the visible hierarchy (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us).
// ok is false when there is none or it cannot be read; m may be nil.
func CPUQuota(m *Manager) (cpus float64, ok bool) {
	for _, dir := range ownAndAncestors(m, "cpu") {
		var c float64
		var found bool
		if m.mode == ModeV2 {
			b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
			if err != nil {
				continue
			}
			c, found, err = parseCPUMax(string(b))
			if err != nil {
				continue
			}
		} else {
			q, err1 := os.ReadFile(filepath.Join(dir, "cpu.cfs_quota_us"))
			p, err2 := os.ReadFile(filepath.Join(dir, "cpu.cfs_period_us"))
			if err1 != nil || err2 != nil {
				continue
			}
			var err error
			c, found, err = parseCFS(string(q), string(p))
			if err != nil {
				continue
			}
		}
		if found && (!ok || c < cpus) {
			cpus, ok = c, true
		}
	}
	return cpus, ok
}

// MemoryLimit is the memory limit of berth's own cgroup in bytes: the
// smallest of its cgroup and its ancestors (v2 memory.max, v1
// memory.limit_in_bytes; "max" and v1's huge "unlimited" values are no
// limit). ok is false when there is none or it cannot be read; m may be nil.
func MemoryLimit(m *Manager) (bytes int64, ok bool) {
	file := "memory.max"
	if m != nil && m.mode == ModeV1 {
		file = "memory.limit_in_bytes"
	}
	for _, dir := range ownAndAncestors(m, "memory") {
		v, found, err := readLimitFile(filepath.Join(dir, file))
		if err != nil || !found {
			continue
		}
		if !ok || int64(v) < bytes {
			bytes, ok = int64(v), true
		}
	}
	return bytes, ok
}

// ownAndAncestors lists berth's own cgroup directory for controller and its
// parents up to the root of the visible hierarchy.
func ownAndAncestors(m *Manager, controller string) []string {
	var dir, top string
	switch {
	case m == nil:
	case m.mode == ModeV2:
		dir, top = m.own, m.root
	case m.mode == ModeV1 && m.v1(controller) != nil:
		dir, top = m.v1(controller).own, m.v1(controller).mount
	}
	if dir == "" {
		return nil
	}
	var out []string
	for {
		out = append(out, dir)
		if dir == top || dir == "/" || !strings.HasPrefix(dir, top) {
			return out
		}
		dir = filepath.Dir(dir)
	}
}

// UsableCPUs is how many CPUs berth may run on (sched_getaffinity, which
// reflects cpusets and taskset), at least 1.
func UsableCPUs() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() > 0 {
		return set.Count()
	}
	return max(runtime.NumCPU(), 1)
}

// minAutoWorkers: with one worker, one slow request blocks every other.
const minAutoWorkers = 2

// memoryShare is the part of the memory limit auto sizing lets workers use;
// the rest is for the supervisor, the proxy and page cache.
const memoryShare = 0.9

// AutoWorkers sizes workers.count auto. Python workers are CPU-bound (the
// GIL), so it is one worker per CPU, not gunicorn's 2*CPUs+1: ceil(cpuQuota)
// when a quota is set (no more than usableCPUs), else usableCPUs; at least 2,
// so one slow request never blocks all. Then, when both memLimit and
// perWorker (a worker's RSS in bytes; 0 = not measured yet) are known, it is
// capped so n*perWorker ≤ 90% of memLimit — the memory cap wins over the
// minimum of 2, but n is never below 1. why is one log line with all inputs.
func AutoWorkers(cpuQuota float64, quotaOK bool, usableCPUs int, memLimit int64, memOK bool, perWorker int64) (n int, why string) {
	usable := max(usableCPUs, 1)
	var parts []string
	if quotaOK && cpuQuota > 0 {
		q := int(math.Ceil(cpuQuota))
		parts = append(parts, fmt.Sprintf("cpu quota %s → %d", strconv.FormatFloat(cpuQuota, 'f', -1, 64), q))
		n = q
		if n > usable {
			n = usable
			parts = append(parts, fmt.Sprintf("usable CPUs %d → %d", usable, n))
		} else {
			parts = append(parts, fmt.Sprintf("usable CPUs %d", usable))
		}
	} else {
		n = usable
		parts = append(parts, "no cpu quota", fmt.Sprintf("usable CPUs %d → %d", usable, n))
	}
	if n < minAutoWorkers {
		n = minAutoWorkers
		parts = append(parts, fmt.Sprintf("minimum %d", minAutoWorkers))
	}
	switch {
	case !memOK || memLimit <= 0:
		parts = append(parts, "no memory limit")
	case perWorker <= 0:
		parts = append(parts, fmt.Sprintf("memory limit %s, worker RSS not measured yet → no cap", formatBytes(memLimit)))
	default:
		limit := max(int(memoryShare*float64(memLimit)/float64(perWorker)), 1)
		parts = append(parts, fmt.Sprintf("memory limit %s, worker RSS %s → cap %d", formatBytes(memLimit), formatBytes(perWorker), limit))
		n = min(n, limit)
	}
	return n, fmt.Sprintf("workers.count auto: %d (%s)", n, strings.Join(parts, "; "))
}

// formatBytes writes b with the largest binary unit, as config sizes are
// written: 512Mi, 1.5Gi, 100.
func formatBytes(b int64) string {
	units := []struct {
		suffix string
		size   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}}
	for _, u := range units {
		if b >= u.size {
			if b%u.size == 0 {
				return fmt.Sprintf("%d%s", b/u.size, u.suffix)
			}
			return strconv.FormatFloat(float64(b)/float64(u.size), 'f', 1, 64) + u.suffix
		}
	}
	return strconv.FormatInt(b, 10)
}
