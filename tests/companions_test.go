package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 14: before-start tasks, companion programs and periodic jobs,
// supervised by the real berth as PID 1 with real Django, Celery and Redis.

// companionStatus decodes the companion parts of /status.
type companionStatus struct {
	Tasks []struct {
		Name, State, Exit string
	}
	Programs []struct {
		Name      string
		PID       int
		State     string
		Restarts  int
		Failures  int    `json:"failures_in_a_row"`
		CrashLoop bool   `json:"crash_loop"`
		LastExit  string `json:"last_exit"`
	}
	Cron []struct {
		Name                  string
		Runs, Failed, Skipped int
		Running               bool
	}
	Workers []struct{ PID int }
}

func (b *berthProc) companions() companionStatus {
	b.t.Helper()
	var st companionStatus
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
		b.t.Fatalf("/status: %v", err)
	}
	return st
}

// freshDjangoSite copies the Django test site without migrating it: the
// before-start tasks are to do that.
func freshDjangoSite(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("cp", "-r", filepath.Join(repoRoot(), "tests/testdata/djangosite")+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy site: %v %s", err, out)
	}
	return dir
}

// adminLogin logs in to the Django admin and says whether it worked.
func adminLogin(t *testing.T, b *berthProc, user, pass string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	resp, err := c.Get(b.url("/admin/login/?next=/admin/"))
	if err != nil {
		t.Fatal(err)
	}
	form, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrfmiddlewaretoken" value="([^"]+)"`).FindSubmatch(form)
	if m == nil {
		t.Fatalf("no CSRF token in the login form: %d %.300s", resp.StatusCode, form)
	}
	resp, err = c.PostForm(b.url("/admin/login/?next=/admin/"), url.Values{
		"csrfmiddlewaretoken": {string(m[1])}, "username": {user}, "password": {pass}, "next": {"/admin/"},
	})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/admin/" || !strings.Contains(string(page), "Log out") {
		t.Fatalf("admin login: %d at %s:\n%.500s", resp.StatusCode, resp.Request.URL, page)
	}
}

// TestDjangoMigrateBeforeStart: a fresh Django project (no database yet) is
// migrated, given an admin and its static files by before-start tasks; the
// first worker starts after them, and the admin login works on the new
// database.
func TestDjangoMigrateBeforeStart(t *testing.T) {
	site := freshDjangoSite(t)
	b := startBerth(t, berthOpts{config: djangoConfig(site, `workers: {count: 1}
tasks:
  before_start:
    - {name: migrate, command: [python3, manage.py, migrate, --noinput]}
    - {name: admin, command: [python3, manage.py, createsuperuser, --noinput, --username, admin, --email, a@example.com],
       env: {DJANGO_SUPERUSER_PASSWORD: berth-pass-2}}
    - {name: collectstatic, command: [python3, manage.py, collectstatic, --noinput]}
`)})
	adminLogin(t, b, "admin", "berth-pass-2")
	if code, _ := b.get("/static/admin/css/base.css"); code != 200 {
		t.Fatalf("static file collected by the task: %d", code)
	}
	logs := b.logs.String()
	// migrate's own output, prefixed with the task's name.
	if !regexp.MustCompile(`(?m)^migrate \|\s+Applying auth\.0001_initial\.\.\. OK$`).MatchString(logs) {
		t.Errorf("migrate's output is not in the log with its prefix:\n%s", logs)
	}
	done := strings.Index(logs, "before-start task collectstatic done")
	first := strings.Index(logs, "starting: app")
	if done < 0 || first < 0 || first < done {
		t.Fatalf("the workers did not start after the last task (done at %d, workers at %d):\n%s", done, first, logs)
	}
	st := b.companions()
	if len(st.Tasks) != 3 || st.Tasks[0].State != "done" || st.Tasks[2].State != "done" {
		t.Fatalf("/status tasks: %+v", st.Tasks)
	}
}

// TestFailingBeforeStartTaskExits5: berth exits with the documented code,
// quoting the task's output, and never started a worker.
func TestFailingBeforeStartTaskExits5(t *testing.T) {
	b := startBerth(t, berthOpts{noReady: true, config: `workers: {count: 1}
tasks:
  before_start:
    - {name: migrate, command: [python3, -c, "import sys; print('no such table: django_migrations'); sys.exit(3)"]}
    - {name: never, command: [/bin/true]}
`})
	if code := b.wait(30 * time.Second); code != 5 {
		t.Fatalf("exit code %d, want 5:\n%s", code, b.logs.String())
	}
	logs := b.logs.String()
	for _, want := range []string{
		"migrate | no such table: django_migrations",
		"before-start task migrate (pid",
		"exited with code 3",
		"  | no such table: django_migrations",
		"no worker was started; stopping with exit code 5",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, never := range []string{"starting: app", "before-start task never", "zygote"} {
		if strings.Contains(logs, never) {
			t.Errorf("log has %q: something started after the failed task", never)
		}
	}
	if t.Failed() {
		t.Log(logs)
	}
}

// startRedis runs a real redis-server on a free loopback port for the test.
func startRedis(t *testing.T) string {
	t.Helper()
	requireTool(t, "redis-server")
	addr := freeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	dir := t.TempDir()
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", dir)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 10*time.Second, "redis-server to accept", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// celeryResult enqueues add(x, y) through a Django view and polls the view
// that reads its result until the companion worker has run it.
func celeryResult(t *testing.T, b *berthProc, x, y int) {
	t.Helper()
	code, id := b.get(fmt.Sprintf("/celery/enqueue?x=%d&y=%d", x, y))
	if code != 200 || id == "" {
		t.Fatalf("enqueue: %d %q", code, id)
	}
	want := fmt.Sprintf("SUCCESS %d", x+y)
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_, last = b.get("/celery/result?id=" + id)
		if last == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("task %s: result %q, want %q:\n%s", id, last, want, b.logs.String())
}

// TestCeleryCompanion: a view enqueues, the Celery worker berth supervises
// runs the task, the next request sees the result; kill -9 of the worker →
// restarted, the next task runs; SIGTERM → Celery gets its stop signal and
// exits within its timeout; no zombies.
func TestCeleryCompanion(t *testing.T) {
	requireTool(t, "redis-server")
	if err := exec.Command(systemPython, "-c", "import celery, redis").Run(); err != nil {
		requireTool(t, "python3-celery-and-redis (Debian python3-celery, python3-redis)")
	}
	broker := "redis://" + startRedis(t) + "/0"
	site := djangoSite(t)
	b := startBerth(t, berthOpts{config: fmt.Sprintf(`app:
  module: mysite.wsgi:application
  chdir: %s
  python: %s
  env: {DJANGO_SETTINGS_MODULE: mysite.settings, TEST_BROKER_URL: %q}
workers: {count: 1}
programs:
  - name: celery
    command: [python3, -m, celery, -A, mysite.celery_app, worker, --pool, prefork, --concurrency, "1",
              --without-gossip, --without-mingle, --without-heartbeat, --loglevel, INFO]
    stop_signal: SIGTERM
    stop_timeout: 20s
`, site, systemPython, broker)})
	waitFor(t, 30*time.Second, "the celery worker to be ready", func() bool {
		return strings.Contains(b.logs.String(), "celery | ") && strings.Contains(b.logs.String(), "ready.")
	})
	celeryResult(t, b, 2, 3)

	first := b.companions().Programs[0]
	if first.State != "running" || first.PID == 0 {
		t.Fatalf("program status: %+v", first)
	}
	b.nsKill(first.PID, syscall.SIGKILL)
	waitFor(t, 30*time.Second, "celery to be restarted", func() bool {
		p := b.companions().Programs[0]
		return p.PID != 0 && p.PID != first.PID && p.State == "running"
	})
	if p := b.companions().Programs[0]; p.Restarts != 1 || !strings.Contains(p.LastExit, "SIGKILL") {
		t.Fatalf("after kill -9: %+v", p)
	}
	celeryResult(t, b, 20, 22)
	waitFor(t, 10*time.Second, "no zombie left under berth", func() bool { return zombiesOf(b.berthPid()) == 0 })

	start := time.Now()
	b.signal(syscall.SIGTERM)
	if code := b.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, b.logs.String())
	}
	logs := b.logs.String()
	if strings.Contains(logs, "program celery") && strings.Contains(logs, "did not stop within") {
		t.Fatalf("celery had to be killed:\n%s", logs)
	}
	if !regexp.MustCompile(`program celery \(pid \d+\) stopped after`).MatchString(logs) {
		t.Fatalf("celery's stop is not in the log:\n%s", logs)
	}
	// Celery logs its warm shutdown when it got SIGTERM.
	if !strings.Contains(logs, "celery | ") || !strings.Contains(strings.ToLower(logs), "warm shutdown") {
		t.Fatalf("celery did not do its warm shutdown:\n%s", logs)
	}
	t.Logf("SIGTERM to exit with celery: %s", time.Since(start).Round(time.Millisecond))
}

// TestProgramThatAlwaysFails: backoff in the log and /status; required, it
// takes berth down with exit code 6.
func TestProgramThatAlwaysFails(t *testing.T) {
	const fail = `[python3, -c, "import sys; print('cannot reach the broker'); sys.exit(1)"]`
	t.Run("not required", func(t *testing.T) {
		b := startBerth(t, berthOpts{config: "workers: {count: 1}\nprograms:\n  - {name: flaky, command: " + fail + "}\n"})
		waitFor(t, 20*time.Second, "a crash loop in /status", func() bool {
			p := b.companions().Programs[0]
			return p.CrashLoop && p.Restarts >= 3
		})
		p := b.companions().Programs[0]
		if p.Failures < 3 || !strings.Contains(p.LastExit, "exit code 1") {
			t.Fatalf("/status: %+v", p)
		}
		b.waitLog("program flaky is crash-looping", 5*time.Second)
		for _, want := range []string{"program flaky: restarting in 100ms", "program flaky: restarting in 200ms", "flaky | cannot reach the broker"} {
			if !strings.Contains(b.logs.String(), want) {
				t.Errorf("log lacks %q", want)
			}
		}
		if code, _ := b.get("/"); code != 200 {
			t.Fatalf("the app stopped serving because of a program that is not required: %d", code)
		}
	})
	t.Run("required", func(t *testing.T) {
		b := startBerth(t, berthOpts{noReady: true, config: "workers: {count: 1}\nprograms:\n  - {name: flaky, required: true, command: " + fail + "}\n"})
		if code := b.wait(30 * time.Second); code != 6 {
			t.Fatalf("exit code %d, want 6:\n%s", code, b.logs.String())
		}
		b.waitLog("required program flaky cannot be kept running: it failed 5 times in a row", time.Second)
	})
}

// TestPeriodicJobs: a job every 2 s writes a file; a job that runs longer
// than its interval is never overlapped.
func TestPeriodicJobs(t *testing.T) {
	b := startBerth(t, berthOpts{config: `workers: {count: 1}
cron:
  - {name: stamp, schedule: "@every 2s", command: [/bin/sh, -c, "date +%s.%N >> $DIR/stamps"]}
  - {name: slow, schedule: "@every 2s", command: [/bin/sh, -c, "echo start >> $DIR/slow; sleep 3; echo end >> $DIR/slow"]}
`})
	stamps := filepath.Join(b.dir, "stamps")
	waitFor(t, 15*time.Second, "3 runs of the 2 s job", func() bool {
		data, _ := os.ReadFile(stamps)
		return strings.Count(string(data), "\n") >= 3
	})
	data, _ := os.ReadFile(stamps)
	var ts []float64
	for _, l := range strings.Fields(string(data)) {
		f, _ := strconv.ParseFloat(l, 64)
		ts = append(ts, f)
	}
	for i := 1; i < len(ts); i++ {
		if d := ts[i] - ts[i-1]; d < 1.5 || d > 2.6 {
			t.Errorf("runs %d and %d are %.2fs apart, want about 2s", i, i+1, d)
		}
	}
	waitFor(t, 15*time.Second, "a skipped run of the slow job", func() bool {
		for _, j := range b.companions().Cron {
			if j.Name == "slow" && j.Skipped >= 1 && j.Runs >= 2 {
				return true
			}
		}
		return false
	})
	b.waitLog("cron slow: the run started at", time.Second)
	slow, _ := os.ReadFile(filepath.Join(b.dir, "slow"))
	lines := strings.Fields(string(slow))
	for i, l := range lines {
		if want := []string{"start", "end"}[i%2]; l != want {
			t.Fatalf("slow job overlapped itself: %q", lines)
		}
	}
}

// TestReloadRestartsOnlyTheChangedProgram: changing one program's
// environment restarts that program; the other and the workers keep their
// pids.
func TestReloadRestartsOnlyTheChangedProgram(t *testing.T) {
	loop := `[python3, -c, "import os, time; print('up', os.environ.get('COLOR')); time.sleep(3600)"]`
	b := startBerth(t, berthOpts{config: fmt.Sprintf("workers: {count: 1}\nprograms:\n  - {name: one, command: %s, env: {COLOR: red}}\n  - {name: two, command: %s}\n", loop, loop)})
	b.waitLog("one | up red", 10*time.Second)
	before := b.companions()
	text, err := os.ReadFile(b.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(text), "COLOR: red", "COLOR: blue", 1))
	b.waitLog("one | up blue", 15*time.Second)
	after := b.companions()
	if after.Programs[0].PID == before.Programs[0].PID {
		t.Fatal("the changed program kept its pid")
	}
	if after.Programs[1].PID != before.Programs[1].PID {
		t.Fatalf("the unchanged program was restarted: pid %d → %d", before.Programs[1].PID, after.Programs[1].PID)
	}
	if after.Workers[0].PID != before.Workers[0].PID {
		t.Fatal("a program's env change restarted the workers")
	}
	b.waitLog("program one restarted", time.Second)
}
