package cgroup

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestAutoWorkers(t *testing.T) {
	const Mi = 1 << 20
	tests := []struct {
		name      string
		quota     float64
		quotaOK   bool
		usable    int
		mem       int64
		memOK     bool
		perWorker int64
		want      int
		why       string
	}{
		{"quota rounds up, memory cap above", 1.5, true, 8, 512 * Mi, true, 48 * Mi, 2,
			"workers.count auto: 2 (cpu quota 1.5 → 2; usable CPUs 8; memory limit 512Mi, worker RSS 48Mi → cap 9)"},
		{"no quota uses CPUs", 0, false, 4, 0, false, 0, 4,
			"workers.count auto: 4 (no cpu quota; usable CPUs 4 → 4; no memory limit)"},
		{"small quota raised to minimum", 0.5, true, 8, 0, false, 0, 2,
			"workers.count auto: 2 (cpu quota 0.5 → 1; usable CPUs 8; minimum 2; no memory limit)"},
		{"one CPU raised to minimum", 0, false, 1, 0, false, 0, 2,
			"workers.count auto: 2 (no cpu quota; usable CPUs 1 → 1; minimum 2; no memory limit)"},
		{"quota above usable CPUs", 4, true, 2, 0, false, 0, 2,
			"workers.count auto: 2 (cpu quota 4 → 4; usable CPUs 2 → 2; no memory limit)"},
		{"whole quota", 3, true, 8, 0, false, 0, 3,
			"workers.count auto: 3 (cpu quota 3 → 3; usable CPUs 8; no memory limit)"},
		{"memory caps", 6, true, 8, 256 * Mi, true, 100 * Mi, 2,
			"workers.count auto: 2 (cpu quota 6 → 6; usable CPUs 8; memory limit 256Mi, worker RSS 100Mi → cap 2)"},
		{"memory cap wins over minimum", 0, false, 8, 100 * Mi, true, 80 * Mi, 1,
			"workers.count auto: 1 (no cpu quota; usable CPUs 8 → 8; memory limit 100Mi, worker RSS 80Mi → cap 1)"},
		{"worker larger than limit still 1", 2, true, 8, 64 * Mi, true, 100 * Mi, 1,
			"workers.count auto: 1 (cpu quota 2 → 2; usable CPUs 8; memory limit 64Mi, worker RSS 100Mi → cap 1)"},
		{"rss not measured", 2, true, 8, 3 << 29, true, 0, 2,
			"workers.count auto: 2 (cpu quota 2 → 2; usable CPUs 8; memory limit 1.5Gi, worker RSS not measured yet → no cap)"},
		{"memory limit not ok ignored", 2, true, 8, 64 * Mi, false, 100 * Mi, 2,
			"workers.count auto: 2 (cpu quota 2 → 2; usable CPUs 8; no memory limit)"},
		{"quota flag false ignores value", 1.5, false, 3, 0, false, 0, 3,
			"workers.count auto: 3 (no cpu quota; usable CPUs 3 → 3; no memory limit)"},
		{"usable 0 treated as 1", 0, false, 0, 0, false, 0, 2,
			"workers.count auto: 2 (no cpu quota; usable CPUs 1 → 1; minimum 2; no memory limit)"},
		{"exact 90% fits", 0, false, 8, 1000 * Mi, true, 90 * Mi, 8,
			"workers.count auto: 8 (no cpu quota; usable CPUs 8 → 8; memory limit 1000Mi, worker RSS 90Mi → cap 10)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, why := AutoWorkers(tt.quota, tt.quotaOK, tt.usable, tt.mem, tt.memOK, tt.perWorker)
			if n != tt.want || why != tt.why {
				t.Errorf("AutoWorkers = %d, %q\nwant          %d, %q", n, why, tt.want, tt.why)
			}
		})
	}
}

// TestUsableCPUs compares with the kernel's own account of the affinity mask.
func TestUsableCPUs(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, line := range strings.Split(string(b), "\n") {
		list, ok := strings.CutPrefix(line, "Cpus_allowed_list:")
		if !ok {
			continue
		}
		for _, r := range strings.Split(strings.TrimSpace(list), ",") {
			lo, hi, isRange := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			z := a
			if isRange {
				z, _ = strconv.Atoi(hi)
			}
			want += z - a + 1
		}
	}
	if n := UsableCPUs(); n != want || n < 1 {
		t.Fatalf("UsableCPUs() = %d, Cpus_allowed_list says %d", n, want)
	}
}
