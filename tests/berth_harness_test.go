// Package tests holds integration tests: they build the real berth binary,
// run it as PID 1 of its own PID namespace (unshare), with real Python
// workers, and speak to it only through sockets and signals.
package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// systemPython is Debian's interpreter, the one with python3-django and
// python3-flask; the python3 first on PATH may be another build.
const systemPython = "/usr/bin/python3"

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// repoRoot is the module root, found from this file's path.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// berthBinary builds berth once per test run.
func berthBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "berth-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "berth")
		cmd := exec.Command("go", "build", "-o", builtPath, ".")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

// berthOpts configure one berth run.
type berthOpts struct {
	config string            // YAML; listen/admin are filled in if absent
	app    map[string]string // files written under the app dir
	env    []string
	// host runs berth as a plain process (child subreaper) instead of as
	// PID 1 of a new PID namespace, for tests that need host pids
	// (socket activation checks LISTEN_PID).
	host    bool
	noReady bool // don't wait for /readyz
	// noListen leaves listen out of a config that has none, for a test of
	// listen's default.
	noListen bool
	// configMap lays the config out as a Kubernetes ConfigMap volume:
	// berth.yaml → ..data/berth.yaml, ..data → ..<timestamp>/.
	configMap bool
	args      []string
	// wrap, when set, rewrites the command line (e.g. to start berth in
	// a cgroup or a mount namespace of the test's making).
	wrap func(argv []string) []string
}

// berthProc is a running berth.
type berthProc struct {
	t        testing.TB
	cmd      *exec.Cmd
	dir      string // temp dir: config, app, run dir
	cfgPath  string
	appDir   string
	runDir   string
	addr     string // HTTP listener host:port
	admin    string // admin host:port
	logs     *syncBuffer
	exited   chan struct{}
	exitCode int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr finds a free loopback TCP port. berth must bind it itself (it is
// the product under test), so the port is released just before; the tiny
// race with other processes is accepted for tests on loopback only.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startBerth(t testing.TB, o berthOpts) *berthProc {
	t.Helper()
	bin := berthBinary(t)
	dir, err := os.MkdirTemp("", "bt")
	if err != nil {
		t.Fatal(err)
	}
	b := &berthProc{t: t, dir: dir, logs: &syncBuffer{}, exited: make(chan struct{})}
	// MkdirTemp makes 0700: open it so a non-root app.user can reach the
	// app below it (tests of unusable directories make their own).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b.appDir = filepath.Join(dir, "app")
	b.runDir = filepath.Join(dir, "run")
	os.MkdirAll(b.appDir, 0o755)
	for name, body := range o.app {
		p := filepath.Join(b.appDir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.addr = freeAddr(t)
	b.admin = freeAddr(t)
	cfg := o.config
	if !o.noListen && !regexp.MustCompile(`(?m)^listen:`).MatchString(cfg) {
		cfg = fmt.Sprintf("listen: [%q]\n", b.addr) + cfg
	}
	if !regexp.MustCompile(`(?m)^admin:`).MatchString(cfg) {
		cfg += fmt.Sprintf("admin:\n  listen: %q\n", b.admin)
	}
	if !regexp.MustCompile(`(?m)^app:`).MatchString(cfg) {
		cfg += fmt.Sprintf("app:\n  chdir: %s\n  python: %s\n", b.appDir, systemPython)
	}
	cfg = strings.ReplaceAll(cfg, "$APP", b.appDir)
	cfg = strings.ReplaceAll(cfg, "$PY", systemPython)
	cfg = strings.ReplaceAll(cfg, "$DIR", dir)
	b.cfgPath = filepath.Join(dir, "cfg", "berth.yaml")
	os.MkdirAll(filepath.Dir(b.cfgPath), 0o755)
	if o.configMap {
		configMapSwap(t, filepath.Dir(b.cfgPath), 0, cfg)
		if err := os.Symlink("..data/berth.yaml", b.cfgPath); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(b.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--config", b.cfgPath}, o.args...)
	argv := append([]string{bin}, args...)
	if !o.host {
		// --kill-child: if the test dies, the namespace's PID 1 dies and
		// the kernel kills every process in it; nothing leaks.
		argv = append([]string{"unshare", "--pid", "--fork", "--mount-proc", "--kill-child"}, argv...)
	}
	if o.wrap != nil {
		argv = o.wrap(argv)
	}
	b.cmd = exec.Command(argv[0], argv[1:]...)
	b.cmd.Env = append(os.Environ(), "BERTH_RUN_DIR="+b.runDir)
	b.cmd.Env = append(b.cmd.Env, o.env...)
	b.cmd.Stdout = b.logs
	b.cmd.Stderr = b.logs
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Workers orphaned by a killed berth could hold the output pipe open;
	// Wait must not hang on them.
	b.cmd.WaitDelay = 3 * time.Second
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.cmd.Wait()
		b.exitCode = b.cmd.ProcessState.ExitCode()
		if ws, ok := b.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			b.exitCode = 128 + int(ws.Signal())
		}
		close(b.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-b.exited:
		default:
			// Graceful first, so berth stops its workers and removes
			// its cgroups; SIGKILL if it does not within 10s.
			syscall.Kill(b.berthPid(), syscall.SIGTERM)
			select {
			case <-b.exited:
			case <-time.After(10 * time.Second):
				b.cmd.Process.Signal(syscall.SIGKILL)
				<-b.exited
			}
		}
		if t.Failed() {
			t.Logf("berth output:\n%s", b.logs.String())
		}
		os.RemoveAll(dir)
	})
	if !o.noReady {
		b.waitReady(60 * time.Second)
	}
	return b
}

// waitReady polls /readyz until it answers 200 or the deadline passes.
func (b *berthProc) waitReady(d time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-b.exited:
			b.t.Fatalf("berth exited with %d before it was ready:\n%s", b.exitCode, b.logs.String())
		default:
		}
		resp, err := c.Get("http://" + b.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("berth not ready within %s:\n%s", d, b.logs.String())
}

// signal sends sig to berth. Under unshare the berth process is the
// child of unshare; signal it directly by finding it.
func (b *berthProc) signal(sig syscall.Signal) {
	b.t.Helper()
	if err := syscall.Kill(b.berthPid(), sig); err != nil {
		b.t.Fatal(err)
	}
}

// berthPid is the host pid of the berth supervisor.
func (b *berthProc) berthPid() int {
	// Wrappers (unshare --fork, sh) may stand between us and berth: walk
	// down the only-child chain to the process running the berth binary.
	pid := b.cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == berthBinary(b.t) {
			return pid
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err == nil {
			if f := strings.Fields(string(data)); len(f) > 0 {
				pid, _ = strconv.Atoi(f[0])
				continue
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.t.Fatal("berth pid not found below the test's command")
	return 0
}

// wait waits for berth to exit and returns its exit code.
func (b *berthProc) wait(d time.Duration) int {
	b.t.Helper()
	select {
	case <-b.exited:
		return b.exitCode
	case <-time.After(d):
		b.t.Fatalf("berth did not exit within %s:\n%s", d, b.logs.String())
		return -1
	}
}

func (b *berthProc) url(path string) string { return "http://" + b.addr + path }

// get fetches path and returns status and body; transport errors fail the test.
func (b *berthProc) get(path string) (int, string) {
	b.t.Helper()
	resp, err := http.Get(b.url(path))
	if err != nil {
		b.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// status fetches /status from the admin endpoint as raw JSON.
func (b *berthProc) status() string {
	resp, err := http.Get("http://" + b.admin + "/status")
	if err != nil {
		b.t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// waitLog polls berth's output for substr.
func (b *berthProc) waitLog(substr string, d time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(b.logs.String(), substr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("berth output lacks %q after %s:\n%s", substr, d, b.logs.String())
}

// waitFor polls cond until it is true or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", d, what)
}

// loadResult counts every response of a load run.
type loadResult struct {
	mu       sync.Mutex
	ok       int
	failed   int
	byStatus map[int]int
	errs     map[string]int
}

func (r *loadResult) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("ok=%d failed=%d statuses=%v errors=%v", r.ok, r.failed, r.byStatus, r.errs)
}

// load sends requests with c concurrent keep-alive clients until stop is
// closed (bounded by max duration) and counts every response. check decides
// whether a response is good.
func load(ctx context.Context, c int, url string, check func(status int, body string) bool) *loadResult {
	r := &loadResult{byStatus: map[int]int{}, errs: map[string]int{}}
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for ctx.Err() == nil {
				resp, err := client.Get(url)
				r.mu.Lock()
				if err != nil {
					r.failed++
					r.errs[err.Error()]++
					r.mu.Unlock()
					continue
				}
				r.mu.Unlock()
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				r.mu.Lock()
				r.byStatus[resp.StatusCode]++
				if err != nil || !check(resp.StatusCode, string(body)) {
					r.failed++
				} else {
					r.ok++
				}
				r.mu.Unlock()
			}
		}()
	}
	go func() { <-ctx.Done() }()
	wg.Wait()
	return r
}

// runLoad runs load for d in the background; call the returned func to stop
// it and get the result.
func runLoad(c int, url string, check func(int, string) bool) (stop func() *loadResult) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	ch := make(chan *loadResult, 1)
	go func() { ch <- load(ctx, c, url, check) }()
	return func() *loadResult {
		cancel()
		return <-ch
	}
}

func writeFileAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// requireTool fails the test in CI (where .ci/run installs everything) and
// skips it on a developer machine that lacks the tool.
func requireTool(t testing.TB, path string) {
	t.Helper()
	requireFiles(t, path)
}

// requireFiles skips the test, or fails it in CI, unless every one exists:
// a command on PATH, or a file given by its path (an interpreter, a plugin,
// nginx's uwsgi_params).
func requireFiles(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var err error
		if strings.Contains(p, "/") {
			_, err = os.Stat(p)
		} else {
			_, err = exec.LookPath(p)
		}
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI: %v", p, err)
			}
			t.Skipf("%s not installed: %v", p, err)
		}
	}
}

// configMapSwap does what the kubelet does to update a ConfigMap volume.
func configMapSwap(t testing.TB, vol string, n int, content string) {
	t.Helper()
	ts := filepath.Join(vol, fmt.Sprintf("..2026_11_23_05_00_%02d.%d", n, n))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "berth.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(vol, "..data"))
	if err := os.Symlink(filepath.Base(ts), filepath.Join(vol, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		os.RemoveAll(filepath.Join(vol, old))
	}
}

// waitUnixSocket polls until a peer (nginx, uWSGI) accepts on its unix
// socket, failing at once if the peer exits first; logs explains failures.
func waitUnixSocket(t testing.TB, name, path string, d time.Duration, exited <-chan error, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("%s exited (%v):\n%s", name, err, logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after %s: %v\n%s", name, path, d, err, logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
