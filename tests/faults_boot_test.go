package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Faults at boot and between instances (issue 11): a start that can never
// succeed ends berth with a documented exit code instead of a respawn loop
// while clients hang; two instances never share cgroups or sockets; the
// proxy's GOMAXPROCS is its share of the quota. docs/internals.md, "Failure
// model", lists each fault with its test.

// exitCodeStartFailed is berth's exit code for processes that cannot be
// started (README, "Exit codes").
const exitCodeStartFailed = 4

// worldDir makes a directory every user can enter, outside the harness's
// 0700 temp dir, removed when the test ends.
func worldDir(t *testing.T, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// An app directory made by mktemp -d (0700, root) with app.user nobody: berth
// exits at once with the boot-failure code, naming the directory and the user.
func TestFaultUnusableChdirFailsFast(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: app.user applies only when berth is root")
	}
	app, err := os.MkdirTemp("", "bapp") // 0700, like mktemp -d
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(app) })
	if err := os.WriteFile(filepath.Join(app, "wsgi.py"), []byte(okApp), 0o644); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(worldDir(t, "brun"), "run")
	start := time.Now()
	b := startBerth(t, berthOpts{noReady: true,
		config: fmt.Sprintf("app: {chdir: %s, python: $PY, user: nobody}\nworkers: {count: 1}\n", app),
		env:    []string{"BERTH_RUN_DIR=" + run}})
	code := b.wait(30 * time.Second)
	took := time.Since(start)
	logs := b.logs.String()
	if code != exitCodeStartFailed {
		t.Fatalf("exit code %d, want %d:\n%s", code, exitCodeStartFailed, logs)
	}
	want := fmt.Sprintf("app.chdir %s: user nobody (uid 65534) cannot enter %s (mode 0700, owner root): chmod o+rx %s or set app.user", app, app, app)
	if !strings.Contains(logs, want) {
		t.Fatalf("log lacks %q:\n%s", want, logs)
	}
	t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), grepLines(logs, "app.chdir"))
}

const okApp = `
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
`

// An app whose import ends the process without a traceback: berth exits 3
// and starts it only once.
func TestFaultImportDeathExits3WithoutLoop(t *testing.T) {
	for _, tc := range []struct {
		name, preload, app string
	}{
		{"os._exit in the zygote", "true", "import os\nos._exit(1)\n"},
		{"SIGKILL in the zygote", "true", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"},
		{"os._exit in a worker without preload", "false", "import os\nos._exit(1)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			b := startBerth(t, berthOpts{noReady: true,
				config: "workers: {count: 1, preload: " + tc.preload + "}\napp: {chdir: $APP, python: $PY, module: \"wsgi:application\"}\n",
				app:    map[string]string{"wsgi.py": "print('APP-IMPORT-BEGINS', flush=True)\n" + tc.app}})
			code := b.wait(30 * time.Second)
			logs := b.logs.String()
			if code != 3 {
				t.Fatalf("exit code %d, want 3:\n%s", code, logs)
			}
			if n := strings.Count(logs, "APP-IMPORT-BEGINS"); n != 1 {
				t.Fatalf("the app was imported %d times, want once (no respawn):\n%s", n, logs)
			}
			if !strings.Contains(logs, "while importing the app wsgi:application") {
				t.Fatalf("log does not say the import died:\n%s", logs)
			}
			t.Logf("exit 3 after %s: %s", time.Since(start).Round(time.Millisecond), grepLines(logs, "while importing"))
		})
	}
}

// A client that connects while a boot is failing gets a 503 within
// proxy.queue.timeout, or its connection is closed when berth exits; it never
// waits in a backlog nobody reads. (With the proxy's queue for "no routable
// worker yet", the 503 comes after the queue timeout.)
func TestFaultClientDuringFailingBoot(t *testing.T) {
	const queueTimeout = time.Second
	b := startBerth(t, berthOpts{noReady: true,
		config: fmt.Sprintf("workers: {count: 1}\nproxy: {queue: {timeout: %s}}\napp: {chdir: $APP, python: $PY, module: \"wsgi:application\"}\n", queueTimeout),
		app:    map[string]string{"wsgi.py": "import os, time\ntime.sleep(5)\nos._exit(1)\n"}})
	// The listener is open before any process starts.
	waitFor(t, 10*time.Second, "the listener", func() bool {
		c, err := net.Dial("tcp", b.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	client := &http.Client{Timeout: 20 * time.Second}
	sent := time.Now()
	resp, err := client.Get(b.url("/"))
	waited := time.Since(sent)
	switch {
	case err == nil:
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("status %d during a failing boot, want 503", resp.StatusCode)
		}
		if waited > queueTimeout+2*time.Second {
			t.Fatalf("503 after %s, want within the queue timeout %s", waited, queueTimeout)
		}
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "EOF"):
		select {
		case <-b.exited:
		case <-time.After(2 * time.Second):
			t.Fatalf("connection closed after %s while berth still runs: %v", waited, err)
		}
	default:
		t.Fatalf("GET during a failing boot after %s: %v", waited, err)
	}
	t.Logf("client answered after %s (%v)", waited.Round(time.Millisecond), err)
	if code := b.wait(30 * time.Second); code != 3 {
		t.Fatalf("exit code %d, want 3", code)
	}
}

// Two berths started from the same cgroups get cgroup trees of their own,
// and a second berth on the run directory of a running one is refused with a
// message naming the first.
func TestFaultTwoInstances(t *testing.T) {
	requireCgroupV1(t)
	// A cgroup of the test's making in the hierarchies a process can join
	// without setup (cpuset would need cpus and mems), so no other berth on
	// this machine shares them.
	var groups []string
	for _, h := range []string{"memory", "cpu", "pids"} {
		g := fmt.Sprintf("/sys/fs/cgroup/%s/berth-inst-test-%d", h, os.Getpid())
		if err := os.Mkdir(g, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeCgroupTree(g) })
		groups = append(groups, g)
	}
	join := func(argv []string) []string {
		script := ""
		for _, g := range groups {
			script += "echo $$ > " + g + "/cgroup.procs && "
		}
		return append([]string{"sh", "-c", script + `exec "$@"`, "sh"}, argv...)
	}
	apps := func(name string) map[string]string {
		return map[string]string{"wsgi.py": fmt.Sprintf(`import os
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%s " + str(os.getpid()).encode()]
`, name)}
	}
	b1 := startBerth(t, berthOpts{host: true, config: "workers: {count: 1}\n", app: apps("one"), wrap: join})
	b2 := startBerth(t, berthOpts{host: true, config: "workers: {count: 1}\n", app: apps("two"), wrap: join})

	memGroup := func(b *berthProc) string {
		pid := b.statusDoc().Workers[0].PID
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.SplitN(line, ":", 3); len(f) == 3 && f[1] == "memory" {
				return f[2]
			}
		}
		t.Fatalf("worker %d has no memory cgroup:\n%s", pid, data)
		return ""
	}
	g1, g2 := memGroup(b1), memGroup(b2)
	if g1 == g2 {
		t.Fatalf("both instances' worker 1.1 are in %s", g1)
	}
	for _, g := range []string{g1, g2} {
		procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", g, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(strings.Fields(string(procs))); n != 1 {
			t.Fatalf("%s holds %d processes, want its worker alone", g, n)
		}
	}
	for _, c := range []struct {
		b    *berthProc
		want string
	}{{b1, "one "}, {b2, "two "}} {
		if code, body := c.b.get("/"); code != 200 || !strings.HasPrefix(body, c.want) {
			t.Fatalf("GET: %d %q, want the %s app", code, body, c.want)
		}
	}
	t.Logf("worker groups: %s and %s", g1, g2)

	// A third one on b1's run directory is refused and changes nothing.
	b3 := startBerth(t, berthOpts{host: true, noReady: true, config: "workers: {count: 1}\n", app: apps("three"),
		env: []string{"BERTH_RUN_DIR=" + b1.runDir}})
	if code := b3.wait(15 * time.Second); code != 1 {
		t.Fatalf("berth on a run directory in use: exit %d, want 1:\n%s", code, b3.logs.String())
	}
	want := fmt.Sprintf("run directory %s is in use by another berth (pid %d, config %s", b1.runDir, b1.berthPid(), b1.cfgPath)
	if !strings.Contains(b3.logs.String(), want) {
		t.Fatalf("log lacks %q:\n%s", want, b3.logs.String())
	}
	t.Logf("refusal: %s", strings.TrimSpace(b3.logs.String()))
	for i := 0; i < 5; i++ {
		if code, body := b1.get("/"); code != 200 || !strings.HasPrefix(body, "one ") {
			t.Fatalf("first instance after the refusal: %d %q", code, body)
		}
	}
	if st := b1.statusDoc(); st.State != "ready" {
		t.Fatalf("first instance after the refusal: %s", st.State)
	}
}

// Under a CPU quota of 2 on this 2-CPU machine the proxy gets a quarter of
// it (1), not the whole quota that berth's own GOMAXPROCS follows.
func TestFaultProxyGOMAXPROCSUnderQuota(t *testing.T) {
	requireCgroupV1(t)
	cg := fmt.Sprintf("/sys/fs/cgroup/cpu/berth-gmp-test-%d", os.Getpid())
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(cg) })
	os.WriteFile(cg+"/cpu.cfs_period_us", []byte("100000"), 0o644)
	if err := os.WriteFile(cg+"/cpu.cfs_quota_us", []byte("200000"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := startBerth(t, berthOpts{host: true, config: "workers: {count: 1}\n",
		app: map[string]string{"wsgi.py": okApp},
		env: []string{"GOMAXPROCS="},
		wrap: func(argv []string) []string {
			return append([]string{"sh", "-c", `echo $$ > ` + cg + `/cgroup.procs && exec "$@"`, "sh"}, argv...)
		}})
	var st struct {
		Proxies []struct{ PID int }
	}
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil || len(st.Proxies) == 0 {
		t.Fatalf("no proxy in /status (%v): %s", err, b.status())
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.Proxies[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range strings.Split(string(env), "\x00") {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			got = append(got, kv)
		}
	}
	if len(got) != 1 || got[0] != "GOMAXPROCS=1" {
		t.Fatalf("proxy environment has %q, want [GOMAXPROCS=1] (a quarter of a quota of 2)", got)
	}
}
