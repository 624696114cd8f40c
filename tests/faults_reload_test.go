package tests

// Fault injection for reloads and rolls: the real binary as PID 1, real
// Python workers, load running and every response counted. Each test is
// one row of the failure model in docs/internals.md.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// versionApp answers with $VERSION. With $CRASH_MARKER set, the first
// process to import it while the marker file exists removes it and dies
// (exit 1, a crash, not an import error); with $IMPORT_SLEEP it imports
// slowly and with $FORK_SLEEP a zygote's forks are slow, leaving time to
// kill the zygote while it imports or forks.
const versionApp = `
import os, time
m = os.environ.get("CRASH_MARKER")
if m:
    try:
        os.remove(m)
    except FileNotFoundError:
        pass
    else:
        os._exit(1)
time.sleep(float(os.environ.get("IMPORT_SLEEP", "0")))
if os.environ.get("FORK_SLEEP"):
    # What an app that reconnects after fork may do: here it only holds
    # the fork open long enough to kill the zygote in the middle of it.
    os.register_at_fork(after_in_child=lambda: time.sleep(float(os.environ["FORK_SLEEP"])))
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [os.environ.get("VERSION", "none").encode()]
`

// versionConfig is a config serving versionApp with env (YAML flow map
// entries, e.g. "VERSION: v2"); extra is appended to the app section.
func versionConfig(preload bool, env, extra string) string {
	return fmt.Sprintf("workers: {count: 2, preload: %v}\nproxy: {access_log: off}\napp:\n  chdir: $APP\n  python: $PY\n  env: {%s}\n%s",
		preload, env, extra)
}

// faultStatus is the part of /status these tests read.
type faultStatus struct {
	Generation int `json:"config_generation"`
	LastReload *struct {
		At      time.Time
		OK      bool
		Message string
		LogTail []string `json:"log_tail"`
	} `json:"last_reload"`
	Roll *struct {
		Failures int
	} `json:"roll"`
	Workers []struct {
		ID    string
		State string
		Gen   int `json:"generation"`
	}
}

func (b *berthProc) faultStatus() faultStatus {
	b.t.Helper()
	var st faultStatus
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
		b.t.Fatalf("/status: %v", err)
	}
	return st
}

// workerIDs lists the workers not on their way out, sorted.
func (st faultStatus) workerIDs() string {
	var ids []string
	for _, w := range st.Workers {
		if w.State == "ready" {
			ids = append(ids, w.ID)
		}
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// rewrite replaces the config file with the harness's header (listen,
// admin) and body, atomically.
func (b *berthProc) rewrite(body string) {
	b.t.Helper()
	cur, _ := os.ReadFile(b.cfgPath)
	header := string(cur)
	if i := strings.Index(header, "workers:"); i >= 0 {
		header = header[:i]
	}
	if !strings.Contains(header, "admin:") {
		header += fmt.Sprintf("admin:\n  listen: %q\n", b.admin)
	}
	body = strings.NewReplacer("$APP", b.appDir, "$PY", systemPython, "$DIR", b.dir).Replace(body)
	writeFileAtomic(b.t, b.cfgPath, header+body)
}

// waitServes waits until no roll is pending, two workers are ready and
// every one of a dozen requests answers want.
func (b *berthProc) waitServes(want string, d time.Duration) {
	b.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(b.t, d, "every worker serving "+want, func() bool {
		st := b.faultStatus()
		if st.Roll != nil || len(strings.Split(st.workerIDs(), ",")) != 2 {
			return false
		}
		for i := 0; i < 12; i++ {
			resp, err := c.Get(b.url("/"))
			if err != nil {
				return false
			}
			var body [64]byte
			n, _ := resp.Body.Read(body[:])
			resp.Body.Close()
			if string(body[:n]) != want {
				return false
			}
		}
		return true
	})
}

// waitReloadAfter waits for a reload result recorded after t0 and returns it.
func (b *berthProc) waitReloadAfter(t0 time.Time, what string) faultStatus {
	b.t.Helper()
	var st faultStatus
	waitFor(b.t, 20*time.Second, what, func() bool {
		st = b.faultStatus()
		return st.LastReload != nil && st.LastReload.At.After(t0)
	})
	return st
}

func versionCheck(versions ...string) func(int, string) bool {
	return func(code int, body string) bool {
		for _, v := range versions {
			if code == 200 && body == v {
				return true
			}
		}
		return false
	}
}

func TestFaultReplacementCrashesOnceDuringRoll(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	stop := runLoad(4, b.url("/"), versionCheck("v1", "v2", "v3"))
	marker := filepath.Join(b.dir, "crash-once")
	os.WriteFile(marker, nil, 0o644)
	b.rewrite(versionConfig(false, fmt.Sprintf("VERSION: v2, CRASH_MARKER: %s", marker), ""))
	b.waitServes("v2", 30*time.Second)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("no replacement crashed: the marker is still there")
	}
	if st := b.faultStatus(); !st.LastReload.OK {
		t.Fatalf("roll after one crash not reported ok: %+v", st.LastReload)
	}
	// The next reload is not blocked by the crash.
	b.rewrite(versionConfig(false, "VERSION: v3", ""))
	b.waitServes("v3", 30*time.Second)
	if r := stop(); r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
	b.waitLog("failure 1 of 3", time.Second)
}

func TestFaultReloadToUnknownUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("app.user is only looked up when berth runs as root")
	}
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	stop := runLoad(4, b.url("/"), versionCheck("v1", "v3"))
	before := b.faultStatus()
	t0 := time.Now()
	b.rewrite(versionConfig(false, "VERSION: v2", "  user: no-such-user-berth\n"))
	st := b.waitReloadAfter(t0, "the reload to an unknown user is answered")
	if st.LastReload.OK || !strings.Contains(st.LastReload.Message, "no-such-user-berth") {
		t.Fatalf("reload to an unknown user: %+v, want a refusal naming the user", st.LastReload)
	}
	if st.Roll != nil || st.workerIDs() != before.workerIDs() || st.Generation != before.Generation {
		t.Fatalf("the refused reload changed what runs: %+v → %+v", before, st)
	}
	b.rewrite(versionConfig(false, "VERSION: v3", ""))
	b.waitServes("v3", 30*time.Second)
	if r := stop(); r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
}

func TestFaultReloadRefusedAfterAdminMoved(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	stop := runLoad(4, b.url("/"), versionCheck("v1", "v2"))
	cfg, _ := os.ReadFile(b.cfgPath)
	newAdmin := freeAddr(t)
	// admin.listen moves, and app.python cannot be run: the admin port is
	// bound before the generation is built, so the refusal comes after it.
	broken := strings.Replace(string(cfg), b.admin, newAdmin, 1)
	broken = strings.Replace(broken, "python: "+systemPython, "python: /nonexistent/python3", 1)
	t0 := time.Now()
	writeFileAtomic(t, b.cfgPath, broken)
	st := b.waitReloadAfter(t0, "the refusal, on the old admin endpoint")
	if st.LastReload.OK || !strings.Contains(st.LastReload.Message, "app.python") {
		t.Fatalf("last reload %+v, want a refusal naming app.python", st.LastReload)
	}
	if c, err := net.Dial("tcp", newAdmin); err == nil {
		c.Close()
		t.Fatalf("the refused reload left the new admin port %s listening", newAdmin)
	}
	// The next good edit applies, still on the old admin endpoint.
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(cfg), "VERSION: v1", "VERSION: v2", 1))
	b.waitServes("v2", 30*time.Second)
	if r := stop(); r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
}

// zygoteOf finds the host pid of the zygote whose environment holds env.
func zygoteOf(env string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), "berth_worker.py\x00zygote") {
			continue
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, kv := range strings.Split(string(environ), "\x00") {
			if kv == env {
				return pid
			}
		}
	}
	return 0
}

// forking says whether host pid has a child (a zygote in the middle of a fork).
func forking(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	return err == nil && strings.TrimSpace(string(b)) != ""
}

func TestFaultZygoteKilledDuringRoll(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(true, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	stop := runLoad(4, b.url("/"), versionCheck("v1", "v2", "v3"))
	b.rewrite(versionConfig(true, "VERSION: v2, IMPORT_SLEEP: '1', FORK_SLEEP: '1'", ""))
	// Killed while it imports: it is restarted with backoff.
	var pid int
	waitFor(t, 10*time.Second, "the new generation's zygote", func() bool { pid = zygoteOf("VERSION=v2"); return pid > 0 })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Killed again in the middle of a fork it was asked for: the fork
	// is asked of its successor.
	waitFor(t, 20*time.Second, "the restarted zygote forking", func() bool {
		pid = zygoteOf("VERSION=v2")
		return pid > 0 && forking(pid)
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitServes("v2", 40*time.Second)
	b.rewrite(versionConfig(true, "VERSION: v3", ""))
	b.waitServes("v3", 30*time.Second)
	if r := stop(); r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
}

func TestFaultFiftySIGHUPsUnderLoad(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v0", ""), app: map[string]string{"wsgi.py": versionApp}})
	var versions []string
	for i := 0; i <= 50; i++ {
		versions = append(versions, fmt.Sprintf("v%d", i))
	}
	stop := runLoad(6, b.url("/"), versionCheck(versions...))
	start := time.Now()
	for i := 1; i <= 50; i++ {
		b.rewrite(versionConfig(false, fmt.Sprintf("VERSION: v%d", i), ""))
		b.signal(syscall.SIGHUP)
		time.Sleep(time.Until(start.Add(time.Duration(i) * 20 * time.Millisecond)))
	}
	t.Logf("50 edits and SIGHUPs in %s", time.Since(start).Round(time.Millisecond))
	b.waitServes("v50", 60*time.Second)
	r := stop()
	t.Logf("load: %s", r)
	if r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
	if st := b.faultStatus(); !st.LastReload.OK {
		t.Fatalf("last reload not ok: %+v", st.LastReload)
	}
}

func TestFaultConfigGarbageDeletedRestored(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	stop := runLoad(4, b.url("/"), versionCheck("v1", "v2"))
	good, _ := os.ReadFile(b.cfgPath)
	before := b.faultStatus()
	refused := func(what string, act func()) {
		t.Helper()
		t0 := time.Now()
		act()
		st := b.waitReloadAfter(t0, what)
		if st.LastReload.OK || st.Roll != nil || st.workerIDs() != before.workerIDs() || st.Generation != before.Generation {
			t.Fatalf("%s: %+v; workers %s (were %s); want a refusal with nothing changed", what, st.LastReload, st.workerIDs(), before.workerIDs())
		}
	}
	refused("garbage", func() { writeFileAtomic(t, b.cfgPath, "\x7fELF\x02\x01\x01\x00garbage: [[[\n") })
	refused("SIGHUP on garbage", func() { b.signal(syscall.SIGHUP) })
	refused("deleted", func() { os.Remove(b.cfgPath) })
	refused("SIGHUP on a deleted file", func() { b.signal(syscall.SIGHUP) })
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(good), "VERSION: v1", "VERSION: v2", 1))
	b.waitServes("v2", 30*time.Second)
	if r := stop(); r.failed != 0 {
		t.Fatalf("requests failed: %s", r)
	}
}

// TestFaultSIGHUPAfterBrokenEdit is issue 11 item 4 as a user meets it.
func TestFaultSIGHUPAfterBrokenEdit(t *testing.T) {
	b := startBerth(t, berthOpts{config: versionConfig(false, "VERSION: v1", ""), app: map[string]string{"wsgi.py": versionApp}})
	before := b.faultStatus()
	t0 := time.Now()
	if err := os.WriteFile(b.cfgPath, []byte("x: [\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.waitReloadAfter(t0, "the broken edit refused")
	t1 := time.Now()
	b.signal(syscall.SIGHUP)
	st := b.waitReloadAfter(t1, "the SIGHUP answered")
	if st.LastReload.OK || st.Roll != nil || st.workerIDs() != before.workerIDs() {
		t.Fatalf("SIGHUP after a broken edit: %+v, workers %s (were %s); want a refusal, no roll", st.LastReload, st.workerIDs(), before.workerIDs())
	}
	if strings.Contains(b.logs.String(), "config unchanged") {
		t.Fatal("the broken file was taken for the applied one (\"config unchanged\")")
	}
}
