// Container tests: berth's image under real podman and runc, with a real
// registry on loopback. They are slow and need root, so they run only when
// BERTH_CONTAINER_TESTS=1 or CI is set. (File comment: the package's doc is
// in berth_harness_test.go.)

package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/berth-dev/berth/cgroup"
)

// Deadlines. Generous for a loaded 2-core CI machine; a pass takes far less.
const (
	ctBuildTimeout  = 12 * time.Minute
	ctPodmanTimeout = 3 * time.Minute
	ctReadyTimeout  = 60 * time.Second
	ctReloadTimeout = 20 * time.Second
	ctPollInterval  = 100 * time.Millisecond
	ctTestImageTag  = "localhost/berth:test"
	ctMaxImageBytes = 200_000_000 // the image is ~125 MB: a compiler or an apt cache would show
	ctWorkerUID     = "10001"
	ctArbitraryUID  = "12345"
	ctFixtureApp    = "testdata/container/app"
	ctFixtureConfig = "testdata/container/etc/berth.yaml"
	ctContainerHTTP = "8080/tcp"
	ctMemoryLimit   = 256 << 20 // --memory 256m
)

// ctSuite is what every subtest shares: the repository root and the image.
type ctSuite struct {
	root  string
	image string
	// podmanArgs go before every podman subcommand (a separate store).
	podmanArgs []string
}

func TestContainer(t *testing.T) {
	if os.Getenv("BERTH_CONTAINER_TESTS") != "1" && os.Getenv("CI") == "" {
		t.Skip("container tests skipped: they need root, podman and runc and take minutes; " +
			"set BERTH_CONTAINER_TESTS=1 to run them (CI=1 runs them too), BERTH_IMAGE=TAG to test an image already built")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	s := &ctSuite{root: root}

	// Machine setup: runc, no default ulimits (see image/podman-setup).
	if out, err := ctRun(context.Background(), nil, filepath.Join(root, "image/podman-setup")); err != nil {
		t.Fatalf("image/podman-setup: %v\n%s", err, out)
	}

	if img := os.Getenv("BERTH_IMAGE"); img != "" {
		s.image = img
		if out, err := s.podman("image", "exists", img); err != nil {
			t.Fatalf("BERTH_IMAGE=%s is not a local image: %v\n%s", img, err, out)
		}
	} else {
		s.image = ctTestImageTag
		ctx, cancel := context.WithTimeout(context.Background(), ctBuildTimeout)
		start := time.Now()
		out, err := ctRun(ctx, []string{"IMAGE=" + s.image}, filepath.Join(root, "image/build"))
		cancel()
		if err != nil {
			t.Fatalf("image/build: %v\n%s", err, out)
		}
		t.Logf("image/build took %s: %s", time.Since(start).Round(time.Second), ctLastLine(out))
	}

	t.Run("metadata", s.testMetadata)
	t.Run("contents", s.testContents)
	t.Run("check-configs", s.testCheckConfigs)
	t.Run("demo", s.testDemo)
	t.Run("variants", s.testVariants)
	t.Run("mounted-app-live-config", s.testMountedApp)
	t.Run("graceful-stop", s.testGracefulStop)
	t.Run("cgroup-limits", s.testLimits)
	t.Run("sdnotify", s.testSdNotify)
	t.Run("socket-activation", s.testSocketActivation)
	t.Run("registry", s.testRegistry)
	t.Run("django-example", s.testDjangoExample)
	t.Run("kube-play", s.testKubePlay)
}

// testMetadata checks what the Containerfile declares, as podman sees it.
func (s *ctSuite) testMetadata(t *testing.T) {
	t.Parallel()
	out, err := s.podman("image", "inspect", s.image)
	if err != nil {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	var imgs []struct {
		Size   int64
		Config struct {
			Entrypoint   []string
			ExposedPorts map[string]struct{}
			StopSignal   string
			Volumes      map[string]struct{}
			Labels       map[string]string
			Env          []string
			WorkingDir   string
		}
		HealthCheck *struct{ Test []string }
	}
	if err := json.Unmarshal([]byte(out), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	img := imgs[0]
	c := img.Config
	if got := strings.Join(c.Entrypoint, " "); got != "berth run" {
		t.Errorf("entrypoint %q, want \"berth run\"", got)
	}
	if _, ok := c.ExposedPorts[ctContainerHTTP]; !ok {
		t.Errorf("exposed ports %v, want %s", c.ExposedPorts, ctContainerHTTP)
	}
	if c.StopSignal != "SIGTERM" && c.StopSignal != "15" {
		t.Errorf("stop signal %q, want SIGTERM", c.StopSignal)
	}
	if _, ok := c.Volumes["/etc/berth"]; !ok {
		t.Errorf("volumes %v, want /etc/berth", c.Volumes)
	}
	for _, k := range []string{"title", "description", "version", "source", "licenses"} {
		if c.Labels["org.opencontainers.image."+k] == "" {
			t.Errorf("label org.opencontainers.image.%s missing (labels %v)", k, c.Labels)
		}
	}
	if !ctContains(c.Env, "PYTHONUNBUFFERED=1") {
		t.Errorf("env %v lacks PYTHONUNBUFFERED=1", c.Env)
	}
	if img.HealthCheck == nil || strings.Join(img.HealthCheck.Test, " ") != "CMD berth status --quiet" {
		t.Errorf("healthcheck %+v, want CMD berth status --quiet (image built in docker format?)", img.HealthCheck)
	}
	if img.Size <= 0 || img.Size > ctMaxImageBytes {
		t.Errorf("image size %d bytes, want at most %d", img.Size, ctMaxImageBytes)
	}
	t.Logf("image %s: %d MB", s.image, img.Size/1_000_000)
}

// testContents looks inside the image: minimal, Python with its full
// standard library, the berth user, berth's own version.
func (s *ctSuite) testContents(t *testing.T) {
	t.Parallel()
	script := `set -u
for c in gcc cc g++ make go pip pip3; do command -v $c && echo "has $c"; done
ls /var/lib/apt/lists | grep -v -x -e lock -e partial | sed 's/^/apt list: /'
ls /var/cache/apt/archives 2>/dev/null | grep '\.deb$' | sed 's/^/apt cache: /'
ls /usr/share/man 2>/dev/null | sed 's/^/man: /'
python3 -c 'import ssl, sqlite3, json, email.parser, wsgiref.util, http.client, faulthandler, selectors' || echo "python stdlib incomplete"
echo "berth user: $(id -u berth) $(id -g berth)"
test -d /app && test -z "$(ls -A /app)" || echo "/app not an empty dir"
stat -c 'run dir: %u %g %a' /run/berth
test -x /usr/local/bin/berth || echo "no /usr/local/bin/berth"
`
	out, err := s.podman("run", "--rm", "--no-healthcheck", "--entrypoint", "/bin/sh", s.image, "-c", script)
	if err != nil {
		t.Fatalf("inspecting the image: %v\n%s", err, out)
	}
	for _, bad := range []string{"has ", "apt list: ", "apt cache: ", "man: ", "python stdlib incomplete", "/app not", "no /usr/local"} {
		if strings.Contains(out, bad) {
			t.Errorf("image contents: %q found in\n%s", bad, out)
		}
	}
	if !strings.Contains(out, "berth user: "+ctWorkerUID+" 0") {
		t.Errorf("user berth is not %s with group 0:\n%s", ctWorkerUID, out)
	}
	if !strings.Contains(out, "run dir: "+ctWorkerUID+" 0 775") {
		t.Errorf("/run/berth is not owned by %s:0 with mode 775:\n%s", ctWorkerUID, out)
	}
	ver, err := s.podman("run", "--rm", "--no-healthcheck", "--entrypoint", "berth", s.image, "version")
	if err != nil || !strings.Contains(ver, "go1.") {
		t.Errorf("berth version: %v\n%s", err, ver)
	}
}

// testCheckConfigs runs `berth check` in the image on every config this
// repository ships: the image's defaults, the Kubernetes ConfigMap and the
// Django example.
func (s *ctSuite) testCheckConfigs(t *testing.T) {
	t.Parallel()
	dir := ctTempDir(t)
	k8s := ctExtractConfigMap(t, filepath.Join(s.root, "deploy/kubernetes/berth.yaml"))
	if err := os.WriteFile(filepath.Join(dir, "k8s.yaml"), k8s, 0o644); err != nil {
		t.Fatal(err)
	}
	// The image's berth.yaml with every commented-out key uncommented: each
	// key it documents must exist, with a valid default.
	def, err := os.ReadFile(filepath.Join(s.root, "rootfs/etc/berth/berth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	all := ctUncommentKeys.ReplaceAll(def, []byte("$1$2"))
	if bytes.Equal(all, def) {
		t.Fatal("rootfs/etc/berth/berth.yaml has no commented-out keys to check")
	}
	if err := os.WriteFile(filepath.Join(dir, "all.yaml"), all, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		mount []string
		args  []string
	}{
		{"image default", nil, []string{"check"}},
		{"image default, every key uncommented", []string{"-v", filepath.Join(dir, "all.yaml") + ":/tmp/c.yaml:ro"}, []string{"check", "--config", "/tmp/c.yaml"}},
		{"kubernetes configmap", []string{"-v", filepath.Join(dir, "k8s.yaml") + ":/tmp/c.yaml:ro"}, []string{"check", "--config", "/tmp/c.yaml"}},
		{"django example", []string{"-v", filepath.Join(s.root, "deploy/examples/django/berth.yaml") + ":/tmp/c.yaml:ro"}, []string{"check", "--config", "/tmp/c.yaml"}},
		{"test fixture", []string{"-v", filepath.Join(s.root, "tests", ctFixtureConfig) + ":/tmp/c.yaml:ro"}, []string{"check", "--config", "/tmp/c.yaml"}},
	}
	for _, c := range cases {
		args := append([]string{"run", "--rm", "--no-healthcheck"}, c.mount...)
		args = append(args, "--entrypoint", "berth", s.image)
		if out, err := s.podman(append(args, c.args...)...); err != nil {
			t.Errorf("%s: berth %s: %v\n%s", c.name, strings.Join(c.args, " "), err, out)
		}
	}
	// And a broken one must fail, or the cases above prove nothing.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("proxy:\n  max_body_size: lots\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := s.podman("run", "--rm", "--no-healthcheck", "-v", bad+":/tmp/c.yaml:ro", "--entrypoint", "berth", s.image, "check", "--config", "/tmp/c.yaml")
	if err == nil || !strings.Contains(out, "c.yaml:2") {
		t.Errorf("berth check on a broken config: err %v, want exit 1 naming c.yaml:2\n%s", err, out)
	}
}

// testDemo: the image alone serves the demo; berth is PID 1 and root, the
// workers run as the berth user; the HEALTHCHECK passes.
func (s *ctSuite) testDemo(t *testing.T) {
	t.Parallel()
	name := s.start(t, true, "-p", "127.0.0.1::8080")
	addr := s.hostPort(t, name)
	resp := ctWaitHTTP(t, "http://"+addr+"/", ctReadyTimeout)
	if resp.status != 200 || len(resp.body) == 0 {
		t.Fatalf("demo: status %d body %q", resp.status, resp.body)
	}

	cmdline, err := s.podman("exec", name, "cat", "/proc/1/cmdline")
	if err != nil {
		t.Fatalf("reading /proc/1/cmdline: %v\n%s", err, cmdline)
	}
	if argv := strings.Split(strings.TrimRight(cmdline, "\x00"), "\x00"); filepath.Base(argv[0]) != "berth" || len(argv) < 2 || argv[1] != "run" {
		t.Errorf("PID 1 is %q, want berth run", argv)
	}

	// Every python3 process (zygote, workers) runs as berth; PID 1 as root.
	procs, err := s.podman("exec", name, "/bin/sh", "-c",
		`for d in /proc/[0-9]*; do n=$(cat $d/comm 2>/dev/null) || continue; u=$(awk '/^Uid:/{print $2}' $d/status); echo "${d#/proc/} $n $u"; done`)
	if err != nil {
		t.Fatalf("listing processes: %v\n%s", err, procs)
	}
	pythons := 0
	for _, line := range strings.Split(strings.TrimSpace(procs), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "1" && f[2] != "0":
			t.Errorf("PID 1 runs as uid %s, want 0 (it drops privileges for its children)", f[2])
		case strings.HasPrefix(f[1], "python") && f[2] != ctWorkerUID:
			t.Errorf("process %s (%s) runs as uid %s, want %s (app.user berth)", f[0], f[1], f[2], ctWorkerUID)
		}
		if strings.HasPrefix(f[1], "python") {
			pythons++
		}
	}
	if pythons == 0 {
		t.Errorf("no python process in the container:\n%s", procs)
	}

	// The demo answers as soon as one worker is ready; the healthcheck
	// (readiness: every worker ready) may take a moment longer.
	var hcOut string
	var hcErr error
	for deadline := time.Now().Add(15 * time.Second); ; {
		if hcOut, hcErr = s.podman("healthcheck", "run", name); hcErr == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if hcErr != nil {
		t.Errorf("podman healthcheck run (berth status --quiet): %v\n%s", hcErr, hcOut)
	}
}

// testVariants: the demo serves under --read-only, an arbitrary UID, and
// both with only /run/berth writable (the Kubernetes manifest's setup).
func (s *ctSuite) testVariants(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		uid  string
	}{
		{"read-only", []string{"--read-only", "--tmpfs", "/run"}, "0"},
		{"user-12345", []string{"--user", ctArbitraryUID}, ctArbitraryUID},
		{"user-12345-read-only-run-berth", []string{"--user", ctArbitraryUID, "--read-only", "--read-only-tmpfs=false",
			"--tmpfs", "/run/berth:rw,mode=1777"}, ctArbitraryUID},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			name := s.start(t, false, append(c.args, "-p", "127.0.0.1::8080")...)
			addr := s.hostPort(t, name)
			if resp := ctWaitHTTP(t, "http://"+addr+"/", ctReadyTimeout); resp.status != 200 {
				t.Fatalf("demo under %v: status %d body %q", c.args, resp.status, resp.body)
			}
			out, err := s.podman("exec", name, "awk", "/^Uid:/{print $2}", "/proc/1/status")
			if err != nil || strings.TrimSpace(out) != c.uid {
				t.Errorf("PID 1 uid %q (%v), want %s", strings.TrimSpace(out), err, c.uid)
			}
			if strings.Contains(strings.Join(c.args, " "), "--read-only") {
				if out, err := s.podman("exec", name, "touch", "/usr/local/probe"); err == nil {
					t.Errorf("root fs writable under --read-only: %s", out)
				}
			}
		})
	}
}

// testMountedApp: a mounted app dir and config volume serve that app, and a
// rename-on-save of the config applies live (max_body_size → 413).
func (s *ctSuite) testMountedApp(t *testing.T) {
	t.Parallel()
	etc := ctConfigDir(t, s.root)
	name := s.start(t, false, "-p", "127.0.0.1::8080",
		"-v", filepath.Join(s.root, "tests", ctFixtureApp)+":/app:ro",
		"-v", etc+":/etc/berth:ro")
	base := "http://" + s.hostPort(t, name)
	resp := ctWaitHTTP(t, base+"/", ctReadyTimeout)
	if resp.status != 200 || resp.header.Get("X-App") != "fixture" {
		t.Fatalf("mounted app: status %d X-App %q body %q", resp.status, resp.header.Get("X-App"), resp.body)
	}
	// The mounted config sets no app.user: the image's BERTH_USER still
	// keeps the workers off root.
	procs, err := s.podman("exec", name, "/bin/sh", "-c",
		`for d in /proc/[0-9]*; do n=$(cat $d/comm 2>/dev/null) || continue; u=$(awk '/^Uid:/{print $2}' $d/status); echo "$n $u"; done`)
	if err != nil {
		t.Fatalf("listing processes: %v\n%s", err, procs)
	}
	for _, line := range strings.Split(strings.TrimSpace(procs), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[0], "python") && f[1] != ctWorkerUID {
			t.Errorf("with a mounted config, %s runs as uid %s, want %s (BERTH_USER)", f[0], f[1], ctWorkerUID)
		}
	}
	body := bytes.Repeat([]byte("x"), 4000)
	if r := ctPost(t, base+"/echo", body); r.status != 200 || strings.TrimSpace(string(r.body)) != "4000" {
		t.Fatalf("POST 4000 bytes before the edit: status %d body %q", r.status, r.body)
	}

	// An editor's save: write a new file beside it, rename it over the old.
	cfg, err := os.ReadFile(filepath.Join(etc, "berth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(cfg), "max_body_size: 1M", "max_body_size: 1K", 1)
	if edited == string(cfg) {
		t.Fatalf("fixture %s has no 'max_body_size: 1M' to edit", ctFixtureConfig)
	}
	tmp := filepath.Join(etc, ".berth.yaml.swp")
	if err := os.WriteFile(tmp, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(etc, "berth.yaml")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(ctReloadTimeout)
	for {
		r := ctPost(t, base+"/echo", body)
		if r.status == http.StatusRequestEntityTooLarge {
			break
		}
		if r.status != 200 || time.Now().After(deadline) {
			t.Fatalf("after setting max_body_size 1K: status %d body %q, want 413 within %s", r.status, r.body, ctReloadTimeout)
		}
		time.Sleep(ctPollInterval)
	}
	// Small bodies still pass, and the app is still the mounted one.
	if r := ctPost(t, base+"/echo", body[:100]); r.status != 200 || strings.TrimSpace(string(r.body)) != "100" {
		t.Errorf("POST 100 bytes after the edit: status %d body %q", r.status, r.body)
	}
}

// testGracefulStop: `podman stop` while a 2-second request is in flight lets
// it finish, and berth exits 0.
func (s *ctSuite) testGracefulStop(t *testing.T) {
	t.Parallel()
	etc := ctConfigDir(t, s.root)
	shared := ctTempDir(t)
	if err := os.Chmod(shared, 0o777); err != nil { // the workers (uid 10001) write the marker
		t.Fatal(err)
	}
	name := s.start(t, false, "-p", "127.0.0.1::8080",
		"-v", filepath.Join(s.root, "tests", ctFixtureApp)+":/app:ro",
		"-v", etc+":/etc/berth:ro",
		"-v", shared+":/shared")
	base := "http://" + s.hostPort(t, name)
	if r := ctWaitHTTP(t, base+"/", ctReadyTimeout); r.status != 200 {
		t.Fatalf("app not serving: status %d body %q", r.status, r.body)
	}

	type result struct {
		r   ctHTTPResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := ctGet(base+"/slow?secs=2&mark=inflight", 30*time.Second)
		done <- result{r, err}
	}()
	// The app creates the marker when it has the request: it is in flight.
	mark := filepath.Join(shared, "inflight")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(mark); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow request never reached the app (no %s)", mark)
		}
		time.Sleep(20 * time.Millisecond)
	}

	start := time.Now()
	if out, err := s.podman("stop", "-t", "10", name); err != nil {
		t.Fatalf("podman stop: %v\n%s", err, out)
	}
	took := time.Since(start)
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request did not return after the container stopped")
	}
	if res.err != nil || res.r.status != 200 || strings.TrimSpace(string(res.r.body)) != "slept 2" {
		t.Errorf("in-flight request during stop: err %v status %d body %q, want 200 \"slept 2\"", res.err, res.r.status, res.r.body)
	}
	code, err := s.podman("inspect", "--format", "{{.State.ExitCode}}", name)
	if err != nil || strings.TrimSpace(code) != "0" {
		t.Errorf("exit code after podman stop: %q (%v), want 0", strings.TrimSpace(code), err)
	}
	if took >= 10*time.Second {
		t.Errorf("podman stop took %s: berth did not exit before the 10s SIGKILL", took)
	}
	t.Logf("podman stop took %s with a 2s request in flight", took.Round(time.Millisecond))
}

// ctStatus is the part of /status (`berth status --json`) the tests read.
type ctStatus struct {
	State       string `json:"state"`
	Ready       bool   `json:"ready"`
	WorkersWant int    `json:"workers_wanted"`
	Workers     []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	} `json:"workers"`
	Cgroup *struct {
		Mode     string  `json:"mode"`
		CPUQuota float64 `json:"cpu_quota"`    // CPUs
		Memory   int64   `json:"memory_limit"` // bytes
	} `json:"cgroup"`
}

// testLimits: --memory and --cpus are what berth sizes itself from.
func (s *ctSuite) testLimits(t *testing.T) {
	t.Parallel()
	name := s.start(t, false, "--memory", "256m", "--cpus", "1", "-p", "127.0.0.1::8080")
	addr := s.hostPort(t, name)
	if r := ctWaitHTTP(t, "http://"+addr+"/", ctReadyTimeout); r.status != 200 {
		t.Fatalf("demo under limits: status %d", r.status)
	}
	var st ctStatus
	deadline := time.Now().Add(ctReadyTimeout)
	for {
		out, err := s.podman("exec", name, "berth", "status", "--json")
		if err != nil {
			t.Fatalf("berth status --json: %v\n%s", err, out)
		}
		st = ctStatus{}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("berth status --json: %v\n%s", err, out)
		}
		if st.Ready || time.Now().After(deadline) {
			break
		}
		time.Sleep(ctPollInterval)
	}
	if !st.Ready || st.State != "ready" {
		t.Fatalf("status not ready: %+v", st)
	}
	// The auto rule is the cgroup package's (unit-tested there); here the
	// question is whether berth in a container sees the limits it sizes from.
	want, why := cgroup.AutoWorkers(1, true, runtime.NumCPU(), ctMemoryLimit, true, 0)
	if st.WorkersWant != want || len(st.Workers) != want {
		t.Errorf("--cpus 1 --memory 256m: workers_wanted %d, %d workers, want %d (%s)", st.WorkersWant, len(st.Workers), want, why)
	}
	if st.Cgroup == nil {
		t.Fatal("status has no cgroup section")
	}
	t.Logf("status: workers_wanted %d, cgroup %+v", st.WorkersWant, *st.Cgroup)
	if st.Cgroup.CPUQuota != 1 {
		t.Errorf("--cpus 1: status cgroup.cpu_quota %g, want 1", st.Cgroup.CPUQuota)
	}
	if st.Cgroup.Memory != ctMemoryLimit {
		t.Errorf("--memory 256m: status cgroup.memory_limit %d, want %d", st.Cgroup.Memory, ctMemoryLimit)
	}
}

// testSdNotify: `podman run --sdnotify=container` forwards berth's READY=1
// to the NOTIFY_SOCKET podman was given, and READY means serving.
func (s *ctSuite) testSdNotify(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(ctTempDir(t), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()

	name := s.containerName(t)
	ctx, cancel := context.WithTimeout(context.Background(), ctPodmanTimeout)
	defer cancel()
	s.removeAtCleanup(t, name)
	// podman run -d returns once the container started; with
	// --sdnotify=container conmon forwards the container's datagrams.
	out, err := ctRun(ctx, []string{"NOTIFY_SOCKET=" + sock}, "podman", "run", "-d", "--name", name,
		"--no-healthcheck", "--sdnotify=container", "-p", "127.0.0.1::8080", s.image)
	if err != nil {
		t.Fatalf("podman run --sdnotify=container: %v\n%s", err, out)
	}
	addr := s.hostPort(t, name)
	var got []string
	timeout := time.After(ctReadyTimeout)
	for ready := false; !ready; {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed; got %q", got)
			}
			got = append(got, m)
			ready = ctContainsLine(m, "READY=1")
		case <-timeout:
			t.Fatalf("no READY=1 on NOTIFY_SOCKET within %s; got %q", ctReadyTimeout, got)
		}
	}
	// READY=1 promises the proxy serves and the workers imported the app:
	// the very first request must succeed.
	if r, err := ctGet("http://"+addr+"/", 10*time.Second); err != nil || r.status != 200 {
		t.Errorf("first request right after READY=1: err %v status %d", err, r.status)
	}
	t.Logf("notify datagrams: %q", got)
}

// testSocketActivation: a listening socket passed in with LISTEN_FDS (as
// systemd does for berth.socket) is served with no network in the container.
func (s *ctSuite) testSocketActivation(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr := ln.Addr().String()

	name := s.containerName(t)
	s.removeAtCleanup(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), ctPodmanTimeout)
	defer cancel()
	// What systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_PID the
	// pid that gets it (the shell execs podman, keeping its pid). podman
	// passes it into the container with LISTEN_PID=1: berth.
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c",
		`LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec podman run -d --name "$0" --no-healthcheck --network none "$1"`,
		name, s.image)
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("podman run with LISTEN_FDS: %v\n%s", err, out)
	}
	f.Close() // the container holds the socket now
	if r := ctWaitHTTP(t, "http://"+addr+"/", ctReadyTimeout); r.status != 200 {
		t.Fatalf("socket-activated demo: status %d body %q", r.status, r.body)
	}
}

// testRegistry: push to a real registry on loopback, remove, pull, run. The
// pull goes into a separate, empty podman store: in the shared one the image
// is still there under its own tag, so a pull would transfer no layer.
func (s *ctSuite) testRegistry(t *testing.T) {
	t.Parallel()
	reg := ctStartRegistry(t)
	ref := reg + "/berth:test-" + ctRandomHex(4)
	digestFile := filepath.Join(ctTempDir(t), "digest")
	for _, args := range [][]string{
		{"tag", s.image, ref},
		{"push", "--tls-verify=false", "--digestfile", digestFile, ref},
		{"rmi", ref},
	} {
		if out, err := s.podman(args...); err != nil {
			t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { _, _ = s.podman("rmi", "--force", ref) })
	if out, err := s.podman("image", "exists", ref); err == nil {
		t.Fatalf("%s still present after podman rmi: %s", ref, out)
	}
	pushed, err := os.ReadFile(digestFile)
	if err != nil {
		t.Fatal(err)
	}

	fresh := s.freshStore(t)
	if out, err := fresh.podman("pull", "--tls-verify=false", ref); err != nil {
		t.Fatalf("podman pull into an empty store: %v\n%s", err, out)
	}
	digests, err := fresh.podman("image", "inspect", "--format", "{{range .RepoDigests}}{{.}} {{end}}", ref)
	if want := ref[:strings.LastIndex(ref, ":")] + "@" + strings.TrimSpace(string(pushed)); err != nil || !strings.Contains(digests, want) {
		t.Errorf("pulled image's digests %q (%v), want %s", digests, err, want)
	}
	fresh.image = ref
	name := fresh.start(t, false, "-p", "127.0.0.1::8080")
	if r := ctWaitHTTP(t, "http://"+fresh.hostPort(t, name)+"/", ctReadyTimeout); r.status != 200 {
		t.Fatalf("pulled image's demo: status %d body %q", r.status, r.body)
	}
}

// testDjangoExample builds deploy/examples/django on the image under test
// (python3-django from the Debian mirror) and checks it serves the site and
// its collected static files.
func (s *ctSuite) testDjangoExample(t *testing.T) {
	t.Parallel()
	tag := "localhost/berth-django-example:test-" + ctRandomHex(4)
	ctx, cancel := context.WithTimeout(context.Background(), ctBuildTimeout)
	defer cancel()
	t.Cleanup(func() { _, _ = s.podman("rmi", "--force", tag) })
	out, err := ctRun(ctx, nil, "podman", "build", "--format", "docker", "--build-arg", "BERTH_IMAGE="+s.image,
		"-t", tag, filepath.Join(s.root, "deploy/examples/django"))
	if err != nil {
		t.Fatalf("podman build deploy/examples/django: %v\n%s", err, out)
	}
	name := s.startImage(t, tag, false, "-p", "127.0.0.1::8080")
	base := "http://" + s.hostPort(t, name)
	r := ctWaitHTTP(t, base+"/", ctReadyTimeout)
	var page struct{ App string }
	if r.status != 200 || json.Unmarshal(r.body, &page) != nil || page.App != "django example" {
		t.Fatalf("django example: status %d body %q", r.status, r.body)
	}
	css, err := ctGet(base+"/static/site.css", 10*time.Second)
	if err != nil || css.status != 200 || !strings.Contains(string(css.body), "font-family") {
		t.Errorf("collected static file: err %v status %d body %q", err, css.status, css.body)
	}
	// The entrypoint script's jobs, done by berth: migrate ran before the
	// workers, and the Celery worker beside them runs what a view queues.
	logs, _ := s.podman("logs", name)
	if !strings.Contains(logs, "migrate") || !strings.Contains(logs, "Apply") && !strings.Contains(logs, "No migrations to apply") {
		t.Errorf("no migrate output in the container's log:\n%s", logs)
	}
	if v, err := ctGet(base+"/visit", 10*time.Second); err != nil || v.status != 200 {
		t.Fatalf("GET /visit: %v %+v", err, v)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(logs, "visit to /visit recorded by the Celery worker") {
		if time.Now().After(deadline) {
			t.Fatalf("the Celery worker did not run the task within 60s:\n%s", logs)
		}
		time.Sleep(250 * time.Millisecond)
		logs, _ = s.podman("logs", name)
	}
}

// freshStore is a ctSuite whose podman commands use their own, empty image and
// container store, removed at the end of the test.
func (s *ctSuite) freshStore(t *testing.T) *ctSuite {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "berth-store")
	if err != nil {
		t.Fatal(err)
	}
	f := &ctSuite{root: s.root, podmanArgs: []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run")}}
	t.Cleanup(func() {
		// Containers first (the test's own cleanups ran already: they are
		// registered later, so they run earlier), then the images'
		// overlay mounts, then the files.
		_, _ = f.podman("rm", "--all", "--force", "--volumes", "--time", "0")
		if out, err := f.podman("rmi", "--all", "--force"); err != nil {
			t.Logf("podman rmi in %s: %v\n%s", dir, err, out)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing the fresh store: %v", err)
		}
	})
	return f
}

// ---- helpers ----

// ctRun runs a command with extra environment, returning its combined output.
func ctRun(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *ctSuite) podman(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctPodmanTimeout)
	defer cancel()
	return ctRun(ctx, nil, "podman", append(append([]string(nil), s.podmanArgs...), args...)...)
}

// ctUncommentKeys matches a commented-out key ("#key:", "#  key:", "  #key:")
// or list item in rootfs/etc/berth/berth.yaml, not a prose comment ("# text").
var ctUncommentKeys = regexp.MustCompile(`(?m)^( *)#( *[a-z_]+:| +- )`)

var ctNameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// containerName is unique per test and per run, so parallel runs and
// leftovers of a killed run never collide.
func (s *ctSuite) containerName(t *testing.T) string {
	n := strings.ToLower(ctNameUnsafe.ReplaceAllString(t.Name(), "-"))
	if len(n) > 40 {
		n = n[len(n)-40:]
	}
	return fmt.Sprintf("berth-%s-%s", strings.Trim(n, "-"), ctRandomHex(3))
}

// removeAtCleanup removes the container (and its anonymous volume for
// /etc/berth) when the test ends, printing its log first if the test failed.
func (s *ctSuite) removeAtCleanup(t *testing.T, name string) {
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := s.podman("logs", "--tail", "60", name); err == nil {
				t.Logf("podman logs %s:\n%s", name, out)
			}
		}
		if out, err := s.podman("rm", "--force", "--volumes", "--time", "0", name); err != nil &&
			!strings.Contains(out, "no such container") {
			t.Logf("podman rm %s: %v\n%s", name, err, out)
		}
	})
}

// start runs the test image detached; see startImage.
func (s *ctSuite) start(t *testing.T, healthcheck bool, args ...string) string {
	return s.startImage(t, s.image, healthcheck, args...)
}

// startImage runs image detached with args and returns the container name.
// Without healthcheck the image's HEALTHCHECK is off: podman runs it from
// systemd timers, which a machine without systemd lacks (it logs errors).
func (s *ctSuite) startImage(t *testing.T, image string, healthcheck bool, args ...string) string {
	t.Helper()
	name := s.containerName(t)
	s.removeAtCleanup(t, name)
	a := []string{"run", "-d", "--name", name}
	if !healthcheck {
		a = append(a, "--no-healthcheck")
	}
	a = append(append(a, args...), image)
	if out, err := s.podman(a...); err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(a, " "), err, out)
	}
	return name
}

// hostPort is the loopback address podman published the container's 8080 on.
func (s *ctSuite) hostPort(t *testing.T, name string) string {
	t.Helper()
	out, err := s.podman("port", name, ctContainerHTTP)
	if err != nil {
		t.Fatalf("podman port %s: %v\n%s", name, err, out)
	}
	addr := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("podman port %s: %q: %v", name, out, err)
	}
	return addr
}

type ctHTTPResult struct {
	status int
	header http.Header
	body   []byte
}

func ctGet(url string, timeout time.Duration) (ctHTTPResult, error) {
	return ctDo(http.MethodGet, url, nil, timeout)
}

func ctPost(t *testing.T, url string, body []byte) ctHTTPResult {
	t.Helper()
	r, err := ctDo(http.MethodPost, url, body, 10*time.Second)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return r
}

func ctDo(method, url string, body []byte, timeout time.Duration) (ctHTTPResult, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return ctHTTPResult{}, err
	}
	c := http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return ctHTTPResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return ctHTTPResult{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// ctWaitHTTP polls url until it answers anything but a connection error or a
// 502/503 (starting up), and returns that answer.
func ctWaitHTTP(t *testing.T, url string, timeout time.Duration) ctHTTPResult {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		r, err := ctGet(url, 5*time.Second)
		switch {
		case err == nil && r.status != http.StatusBadGateway && r.status != http.StatusServiceUnavailable:
			return r
		case err != nil:
			last = err.Error()
		default:
			last = fmt.Sprintf("status %d: %s", r.status, r.body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering within %s; last: %s", url, timeout, last)
		}
		time.Sleep(ctPollInterval)
	}
}

// ctConfigDir copies the fixture config into a fresh directory to mount on
// /etc/berth, so a test can edit it.
func ctConfigDir(t *testing.T, root string) string {
	t.Helper()
	dir := ctTempDir(t)
	b, err := os.ReadFile(filepath.Join(root, "tests", ctFixtureConfig))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "berth.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ctTempDir is a short (unix sockets) directory readable by the container's
// users, removed at the end of the test.
func ctTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ctExtractConfigMap returns data["berth.yaml"] of the ConfigMap in a
// multi-document Kubernetes manifest.
func ctExtractConfigMap(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc.Kind == "ConfigMap" && doc.Data["berth.yaml"] != "" {
			return []byte(doc.Data["berth.yaml"])
		}
	}
	t.Fatalf("%s has no ConfigMap with data berth.yaml", path)
	return nil
}

// ctStartRegistry starts Debian's docker-registry on a free loopback port with
// its storage in a temp dir and returns its host:port once it answers.
func ctStartRegistry(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry not installed (image/podman-setup installs it): %v", err)
	}
	dir := ctTempDir(t)
	// The registry binds by address only: take a free port and hand it over.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: %s}
  delete: {enabled: true}
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("docker-registry log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r, err := ctGet("http://"+addr+"/v2/", 2*time.Second); err == nil && r.status == 200 {
			return addr
		}
		select {
		case <-exited:
			t.Fatalf("docker-registry exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s not answering:\n%s", addr, logs.String())
		}
		time.Sleep(ctPollInterval)
	}
}

func ctRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func ctContainsLine(msg, line string) bool {
	sc := bufio.NewScanner(strings.NewReader(msg))
	for sc.Scan() {
		if sc.Text() == line {
			return true
		}
	}
	return false
}

func ctLastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
