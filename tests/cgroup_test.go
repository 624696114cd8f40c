package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// requireCgroupV1 skips where this machine's kind of cgroup is absent; in CI
// (the same kind of machine) it must be there.
func requireCgroupV1(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cgroup v1 memory hierarchy required: %v", err)
		}
		t.Skipf("no writable cgroup v1 memory hierarchy: %v", err)
	}
}

// cgroupFile reads a file of the cgroup a host pid is in, for a v1 controller.
func cgroupFile(t *testing.T, pid int, controller, file string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ","+controller+",") {
			b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, parts[2], file))
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
	}
	t.Fatalf("pid %d has no %s cgroup", pid, controller)
	return ""
}

const memoryApp = `
import os
hog = []
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/eat":
        b = bytearray(200 * 1024 * 1024)   # 200 MB, touched page by page
        for i in range(0, len(b), 4096):
            b[i] = 1
        hog.append(b)
    if path == "/grow":
        hog.append(b"x" * (60 * 1024 * 1024))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
`

func TestOOMKillIsSeenReportedAndReplaced(t *testing.T) {
	requireCgroupV1(t)
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 2}\nresources:\n  worker: {memory: {limit: 64Mi}}\n",
		app:    map[string]string{"wsgi.py": memoryApp}})
	// POST: not retried on another worker, so exactly one worker dies.
	resp, err := http.Post(b.url("/eat"), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("request of the OOM-killed worker: %d, want 502", resp.StatusCode)
	}
	b.waitLog("killed by the kernel OOM killer: limit 64Mi", 10*time.Second)
	waitFor(t, 15*time.Second, "replacement ready and oom counted", func() bool {
		st := b.statusDoc()
		return st.Restarts["oom"] == 1 && st.State == "ready" && b.readyWorkers() == 2
	})
	for i := 0; i < 10; i++ {
		if code, _ := b.get("/"); code != 200 {
			t.Fatalf("after the OOM kill: %d", code)
		}
	}
	metrics := httpGet(t, "http://"+b.admin+"/metrics")
	if !strings.Contains(metrics, `berth_restarts_total{cause="oom"} 1`) {
		t.Fatalf("/metrics lacks the oom restart:\n%s", grepLines(metrics, "berth_restarts"))
	}
	t.Logf("OOM log line: %s", grepLines(b.logs.String(), "killed by the kernel OOM"))
}

func TestCgroupLimitsUpdatedByReload(t *testing.T) {
	requireCgroupV1(t)
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 1}\nresources:\n  worker: {memory: {limit: 64Mi}, pids: {limit: 50}}\n  workers: {memory: {limit: 512Mi}}\n",
		app:    map[string]string{"wsgi.py": memoryApp}})
	pid := b.statusDoc().Workers[0].PID
	if got := cgroupFile(t, pid, "memory", "memory.limit_in_bytes"); got != "67108864" {
		t.Fatalf("worker memory limit %s, want 67108864", got)
	}
	if got := cgroupFile(t, pid, "pids", "pids.max"); got != "50" {
		t.Fatalf("worker pids.max %s, want 50", got)
	}
	cfg, _ := os.ReadFile(b.cfgPath)
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(cfg), "limit: 64Mi", "limit: 96Mi", 1))
	waitFor(t, 10*time.Second, "limit updated in place", func() bool {
		return cgroupFile(t, pid, "memory", "memory.limit_in_bytes") == "100663296"
	})
	if st := b.statusDoc(); st.Workers[0].PID != pid {
		t.Fatalf("the worker was restarted for a resources change: %+v", st.Workers)
	}
}

func TestAutoWorkersFromCPUQuota(t *testing.T) {
	requireCgroupV1(t)
	// berth's own cgroup gets a quota of 0.5 CPU before berth starts.
	cg := fmt.Sprintf("/sys/fs/cgroup/cpu/berth-quota-test-%d", os.Getpid())
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		removeCgroupTree(cg) // berth's subgroups first, then ours
	})
	os.WriteFile(cg+"/cpu.cfs_period_us", []byte("100000"), 0o644)
	if err := os.WriteFile(cg+"/cpu.cfs_quota_us", []byte("50000"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := startBerth(t, berthOpts{host: true, config: "workers: {count: auto}\n",
		app: map[string]string{"wsgi.py": memoryApp},
		wrap: func(argv []string) []string {
			return append([]string{"sh", "-c", `echo $$ > ` + cg + `/cgroup.procs && exec "$@"`, "sh"}, argv...)
		}})
	b.waitLog("cpu quota 0.5", 5*time.Second)
	line := grepLines(b.logs.String(), "workers.count auto")
	if !strings.Contains(line, "GOMAXPROCS 1") {
		t.Fatalf("GOMAXPROCS does not follow the quota: %s", line)
	}
	var st struct {
		Want   int `json:"workers_wanted"`
		Cgroup struct {
			Quota float64 `json:"cpu_quota"`
		}
	}
	json.Unmarshal([]byte(b.status()), &st)
	if st.Cgroup.Quota != 0.5 || st.Want < 1 || st.Want > 2 {
		t.Fatalf("status: quota %v, workers %d", st.Cgroup.Quota, st.Want)
	}
	t.Logf("auto sizing log line: %s", line)
}

func removeCgroupTree(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			removeCgroupTree(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir)
}

func TestReadOnlyCgroupsFallBackToPolling(t *testing.T) {
	requireCgroupV1(t)
	// A private mount namespace where every cgroup hierarchy is read-only,
	// as in a default Docker/Kubernetes container.
	remount := `for d in /sys/fs/cgroup/*/; do mount -o remount,bind,ro "$d" 2>/dev/null || mount --bind -o ro "$d" "$d"; done; mount -o remount,bind,ro /sys/fs/cgroup; exec "$@"`
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 1, max_rss: 40Mi}\n",
		app:    map[string]string{"wsgi.py": memoryApp},
		wrap: func(argv []string) []string {
			return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", remount, "sh"}, argv...)
		}})
	logs := b.logs.String()
	if strings.Count(logs, "are read-only") != 1 {
		t.Fatalf("want the read-only notice exactly once:\n%s", logs)
	}
	_, before := b.get("/grow")
	waitFor(t, 15*time.Second, "worker over max_rss recycled", func() bool {
		return b.statusDoc().Restarts["max_rss"] >= 1 && b.readyWorkers() == 1
	})
	if _, after := b.get("/"); after == before {
		t.Fatalf("same worker pid %s after the max_rss recycle", after)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return sb.String()
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCgroupV2WorkersStartInTheirGroup runs berth on the real (empty)
// cgroup v2 hierarchy this machine mounts at /sys/fs/cgroup/unified, from a
// group of the test's making: berth moves itself into a leaf, and workers
// end in their own groups: cloned straight into them (CLONE_INTO_CGROUP)
// without preload; forked by the zygote, as a non-root app.user, and moved
// by the supervisor with it.
func TestCgroupV2WorkersStartInTheirGroup(t *testing.T) {
	const unified = "/sys/fs/cgroup/unified"
	if _, err := os.Stat(unified + "/cgroup.procs"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cgroup v2 hierarchy at %s required: %v", unified, err)
		}
		t.Skipf("no cgroup v2 hierarchy at %s", unified)
	}
	for _, tc := range []struct{ name, config, uid string }{
		{"clone-into-cgroup", "workers: {count: 2, preload: false}\n", "0"},
		{"forked-as-nobody", "app: {chdir: $APP, python: $PY, user: nobody}\nworkers: {count: 2, preload: true}\n", "65534"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.uid != "0" && os.Geteuid() != 0 {
				t.Skip("app.user applies only when berth runs as root")
			}
			name := fmt.Sprintf("berth-v2-test-%d-%s", os.Getpid(), tc.name)
			own := unified + "/" + name
			if err := os.Mkdir(own, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { removeCgroupTree(own) })
			b := startBerth(t, berthOpts{host: true, config: tc.config,
				app: map[string]string{"wsgi.py": memoryApp},
				env: []string{"BERTH_CGROUP_ROOT=" + unified},
				wrap: func(argv []string) []string {
					return append([]string{"sh", "-c", `echo $$ > ` + own + `/cgroup.procs && exec "$@"`, "sh"}, argv...)
				}})
			b.waitLog("cgroups v2", 5*time.Second)
			if strings.Contains(b.logs.String(), "starting it inside its cgroup failed") {
				t.Fatalf("CLONE_INTO_CGROUP was refused:\n%s", b.logs.String())
			}
			st := b.statusDoc()
			if len(st.Workers) != 2 {
				t.Fatalf("workers: %+v", st.Workers)
			}
			for _, w := range st.Workers {
				data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", w.PID))
				if err != nil {
					t.Fatal(err)
				}
				want := fmt.Sprintf("0::/%s/workers/w-%s\n", name, w.ID)
				if !strings.Contains(string(data), want) {
					t.Fatalf("worker %s: /proc/%d/cgroup has no %q:\n%s", w.ID, w.PID, want, data)
				}
				if uid := procUID(t, w.PID); uid != tc.uid {
					t.Errorf("worker %s runs as uid %s, want %s", w.ID, uid, tc.uid)
				}
			}
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", b.berthPid()))
			if !strings.Contains(string(data), fmt.Sprintf("0::/%s/supervisor\n", name)) {
				t.Fatalf("supervisor did not move into its leaf:\n%s", data)
			}
			if m := regexp.MustCompile(`zygote \(pid \d+\): cgroup.*`).FindString(b.logs.String()); m != "" {
				t.Errorf("the zygote was not placed: %s", m)
			}
		})
	}
}

// procUID is the real uid of a host pid, from /proc/PID/status.
func procUID(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	t.Fatalf("/proc/%d/status has no Uid line", pid)
	return ""
}

// TestNonRootWorkersInTheirCgroups: with app.user a non-root user and
// berth managing cgroup v1, forked workers (preload), a companion program
// and the zygote run as that user, each in its own group with its limits,
// and an OOM kill is seen and reported. The forked worker used to write its
// own cgroup.procs, which only root may: every fork failed with EACCES and
// berth exited 4.
func TestNonRootWorkersInTheirCgroups(t *testing.T) {
	requireCgroupV1(t)
	if os.Geteuid() != 0 {
		t.Skip("app.user applies only when berth runs as root")
	}
	b := startBerth(t, berthOpts{host: true,
		config: "app: {chdir: $APP, python: $PY, user: nobody}\n" +
			"workers: {count: 2, preload: true}\n" +
			"resources:\n  worker: {memory: {limit: 64Mi}}\n" +
			"programs:\n  - {name: sleeper, command: [sleep, '1000'], resources: {pids: {limit: 7}}}\n",
		app: map[string]string{"wsgi.py": memoryApp}})
	st := b.statusDoc()
	if len(st.Workers) != 2 {
		t.Fatalf("workers: %+v", st.Workers)
	}
	for _, w := range st.Workers {
		if uid := procUID(t, w.PID); uid != "65534" {
			t.Errorf("worker %s (pid %d) runs as uid %s, want 65534 (nobody)", w.ID, w.PID, uid)
		}
		if got := cgroupFile(t, w.PID, "memory", "memory.limit_in_bytes"); got != "67108864" {
			t.Errorf("worker %s memory limit %s, want 67108864 (its own group)", w.ID, got)
		}
	}
	var prog int
	waitFor(t, 10*time.Second, "the program running", func() bool {
		for _, p := range b.companions().Programs {
			if p.Name == "sleeper" && p.PID > 0 {
				prog = p.PID
				return true
			}
		}
		return false
	})
	if uid := procUID(t, prog); uid != "65534" {
		t.Errorf("program runs as uid %s, want 65534", uid)
	}
	if got := cgroupFile(t, prog, "pids", "pids.max"); got != "7" {
		t.Errorf("program pids.max %s, want 7 (its own group)", got)
	}
	resp, err := http.Post(b.url("/eat"), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("request of the OOM-killed worker: %d, want 502", resp.StatusCode)
	}
	b.waitLog("killed by the kernel OOM killer: limit 64Mi", 10*time.Second)
	waitFor(t, 15*time.Second, "replacement ready", func() bool {
		st := b.statusDoc()
		return st.Restarts["oom"] == 1 && st.State == "ready" && b.readyWorkers() == 2
	})
	for _, w := range b.statusDoc().Workers {
		if uid := procUID(t, w.PID); uid != "65534" {
			t.Errorf("replacement worker %s runs as uid %s", w.ID, uid)
		}
	}
}
