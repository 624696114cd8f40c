package cgroup

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestParseOOMKill(t *testing.T) {
	tests := []struct {
		name, data string
		want       uint64
		ok, err    bool
	}{
		{"v2 memory.events", "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", 2, true, false},
		{"v2 no kill yet", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", 0, true, false},
		{"v1 memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", 7, true, false},
		{"v1 before 4.13", "oom_kill_disable 0\nunder_oom 1\n", 0, false, false},
		{"empty", "", 0, false, false},
		{"garbage", "oom_kill lots\n", 0, false, true},
		{"three fields", "oom_kill 1 2\n", 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseOOMKill(tt.data)
			if (err != nil) != tt.err || got != tt.want || ok != tt.ok {
				t.Errorf("parseOOMKill(%q) = %d, %v, %v; want %d, %v, error %v", tt.data, got, ok, err, tt.want, tt.ok, tt.err)
			}
		})
	}
}

func TestParseCPUStat(t *testing.T) {
	kv, err := parseFlatKeyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 2500\n")
	if err != nil {
		t.Fatal(err)
	}
	if kv["usage_usec"] != 1500 || kv["nr_throttled"] != 4 || kv["throttled_usec"] != 2500 {
		t.Errorf("parsed %v", kv)
	}
}

func TestParseCPUMax(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		ok, err bool
	}{
		{"max 100000", 0, false, false},
		{"max 100000\n", 0, false, false},
		{"150000 100000", 1.5, true, false},
		{"50000 100000\n", 0.5, true, false},
		{"200000 50000", 4, true, false},
		{"max", 0, false, true},
		{"abc 100000", 0, false, true},
		{"100000 0", 0, false, false},
	}
	for _, tt := range tests {
		got, ok, err := parseCPUMax(tt.in)
		if (err != nil) != tt.err || got != tt.want || ok != tt.ok {
			t.Errorf("parseCPUMax(%q) = %v, %v, %v; want %v, %v, error %v", tt.in, got, ok, err, tt.want, tt.ok, tt.err)
		}
	}
}

func TestParseCFS(t *testing.T) {
	tests := []struct {
		quota, period string
		want          float64
		ok, err       bool
	}{
		{"-1\n", "100000\n", 0, false, false},
		{"150000\n", "100000\n", 1.5, true, false},
		{"25000", "100000", 0.25, true, false},
		{"x", "100000", 0, false, true},
		{"100000", "", 0, false, true},
	}
	for _, tt := range tests {
		got, ok, err := parseCFS(tt.quota, tt.period)
		if (err != nil) != tt.err || got != tt.want || ok != tt.ok {
			t.Errorf("parseCFS(%q, %q) = %v, %v, %v; want %v, %v, error %v", tt.quota, tt.period, got, ok, err, tt.want, tt.ok, tt.err)
		}
	}
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		ok, err bool
	}{
		{"max\n", 0, false, false},
		{"536870912\n", 536870912, true, false},
		{"9223372036854771712\n", 0, false, false}, // v1 "unlimited"
		{"0", 0, true, false},
		{"-1", 0, false, true},
		{"lots", 0, false, true},
	}
	for _, tt := range tests {
		got, ok, err := parseLimit(tt.in)
		if (err != nil) != tt.err || got != tt.want || ok != tt.ok {
			t.Errorf("parseLimit(%q) = %v, %v, %v; want %v, %v, error %v", tt.in, got, ok, err, tt.want, tt.ok, tt.err)
		}
	}
}

func TestParseMountRoots(t *testing.T) {
	data := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
50 23 0:40 /a\040b /mnt/with\040space rw - tmpfs tmpfs rw
`
	got := parseMountRoots(data)
	want := map[string]string{
		"/sys/fs/cgroup":             "/",
		"/sys/fs/cgroup/memory":      "/docker/abc",
		"/sys/fs/cgroup/cpu,cpuacct": "/",
		"/mnt/with space":            "/a b",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("mount root of %q = %q, want %q", k, got[k], v)
		}
	}
}

func TestVisible(t *testing.T) {
	tests := []struct {
		proc, mountRoot, want string
		ok                    bool
	}{
		{"/", "", "/", true},
		{"/kubepods/pod1/ctr", "/", "/kubepods/pod1/ctr", true},
		{"/docker/abc", "/docker/abc", "/", true},
		{"/docker/abc/sub", "/docker/abc", "/sub", true},
		{"/docker/other", "/docker/abc", "", false},
		{"/../../user.slice", "/", "", false}, // outside the cgroup namespace
		{"/a..b", "/", "/a..b", true},
	}
	for _, tt := range tests {
		got, ok := visible(tt.proc, tt.mountRoot)
		if got != tt.want || ok != tt.ok {
			t.Errorf("visible(%q, %q) = %q, %v; want %q, %v", tt.proc, tt.mountRoot, got, ok, tt.want, tt.ok)
		}
	}
}

func TestWriteFileError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "memory.limit_in_bytes")
	err := writeFile(p, "256")
	want := `cgroup: write "256" to ` + p + `: no such file or directory`
	if err == nil || err.Error() != want {
		t.Fatalf("writeFile error = %v, want %s", err, want)
	}
}

func TestFormatBytes(t *testing.T) {
	for in, want := range map[int64]string{
		100: "100", 1024: "1Ki", 512 << 20: "512Mi", 3 << 29: "1.5Gi", 50_000_000: "47.7Mi", 2 << 40: "2Ti",
	} {
		if got := formatBytes(in); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestHintSaysHowToEnable(t *testing.T) {
	h := hintFor("x is read-only")
	for _, s := range []string{"x is read-only", "--cgroupns=private", "unmask=/sys/fs/cgroup", "Kubernetes", "max_rss"} {
		if !strings.Contains(h, s) {
			t.Errorf("hint %q lacks %q", h, s)
		}
	}
	if strings.Contains(h, "\n") {
		t.Errorf("hint is not one line: %q", h)
	}
}
