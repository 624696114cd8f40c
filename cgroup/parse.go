package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// noLimit: a limit at or above this many bytes is "no limit". v1 reports an
// unset memory limit as the largest page-aligned int64 (9223372036854771712).
const noLimit = 1 << 62

// parseFlatKeyed parses the "key value" lines of cgroup files such as
// memory.events, memory.oom_control and cpu.stat.
func parseFlatKeyed(data string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("line %q is not \"key value\"", line)
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		out[f[0]] = v
	}
	return out, nil
}

// parseOOMKill returns the oom_kill count of a v2 memory.events or a v1
// memory.oom_control file (both spell it "oom_kill N"); ok is false when the
// kernel does not report it (v1 before 4.13).
func parseOOMKill(data string) (n uint64, ok bool, err error) {
	kv, err := parseFlatKeyed(data)
	if err != nil {
		return 0, false, err
	}
	n, ok = kv["oom_kill"]
	return n, ok, nil
}

// parseCPUMax parses v2 cpu.max, "QUOTA PERIOD" in microseconds or
// "max PERIOD"; ok is false for no quota.
func parseCPUMax(s string) (cpus float64, ok bool, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, false, fmt.Errorf("cpu.max %q is not \"QUOTA PERIOD\"", strings.TrimSpace(s))
	}
	return quotaCPUs(f[0], f[1])
}

// parseCFS parses v1 cpu.cfs_quota_us (-1 for no quota) and cpu.cfs_period_us.
func parseCFS(quota, period string) (cpus float64, ok bool, err error) {
	return quotaCPUs(strings.TrimSpace(quota), strings.TrimSpace(period))
}

func quotaCPUs(quota, period string) (float64, bool, error) {
	if quota == "max" || quota == "-1" {
		return 0, false, nil
	}
	q, err := strconv.ParseInt(quota, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("cpu quota %q: %w", quota, err)
	}
	p, err := strconv.ParseUint(period, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("cpu period %q: %w", period, err)
	}
	if q <= 0 || p == 0 {
		return 0, false, nil
	}
	return float64(q) / float64(p), true, nil
}

// parseLimit parses a byte count or "max" (v2 memory.max, pids.max, …);
// ok is false for "max" and for the huge values v1 uses for "no limit".
func parseLimit(s string) (v uint64, ok bool, err error) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, false, nil
	}
	v, err = strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%q is not a number or \"max\": %w", s, err)
	}
	if v >= noLimit {
		return 0, false, nil
	}
	return v, true, nil
}

// readLimitFile reads one parseLimit value; a missing file is ok=false.
func readLimitFile(path string) (uint64, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("cgroup: read %s: %w", path, errnoOf(err))
	}
	v, ok, err := parseLimit(string(b))
	if err != nil {
		return 0, false, fmt.Errorf("cgroup: read %s: %w", path, err)
	}
	return v, ok, nil
}

// parseMountRoots maps mount point (field 5 of mountinfo) to the root of the
// filesystem shown there (field 4).
func parseMountRoots(data string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out[unescapeMount(f[4])] = unescapeMount(f[3])
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes ("\040" for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// errnoOf drops the path from an *fs.PathError, for messages that name the
// path themselves.
func errnoOf(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
