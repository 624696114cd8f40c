// The Kubernetes recipe (deploy/kubernetes/berth.yaml) played with
// `podman kube play`: part of TestContainer, so it runs only with
// BERTH_CONTAINER_TESTS=1 (or CI) and uses the image that test built.

package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	ktLoadClients = 4    // concurrent clients spread over the pods, as a Service would
	ktBigBody     = 4000 // a POST above the swapped-in max_body_size of 1K
	ktSlowSecs    = 3    // the request in flight during the stop
	ktMinPerPod   = 50   // responses each pod must have given under load
)

// ktManifest is deploy/kubernetes/berth.yaml made playable here. The
// changes are what a user of the recipe changes anyway (names, unique per
// run; the image; the app mounted into /app: the fixture, through a
// hostPath volume, with a shared directory for its in-flight markers), and
// two for podman 4.3's kube play, which differs from Kubernetes there:
//   - it publishes each containerPort on the same port of every host
//     address (an unset hostPort becomes the containerPort), so the second
//     replica cannot start and 8080 and 9000 are taken on the host. The
//     ports list goes (informational in Kubernetes; only the Service's
//     targetPort: http names one); the pods are reached on their own IPs,
//     as a Service reaches them.
//   - it names an emptyDir volume after the pod spec's volume, so the
//     replicas of a Deployment share one /run/berth (berth's run-directory
//     lock then refuses the second: "run directory /run/berth is in use by
//     another berth"). The Deployment of N replicas becomes N Deployments
//     of one replica, each emptyDir named for its Deployment.
type ktManifest struct {
	name          string // of the ConfigMap and the Service; the Deployments are NAME-0, NAME-1, …
	config        string // the ConfigMap's berth.yaml
	replicas      int
	grace         int      // terminationGracePeriodSeconds
	readiness     []string // the exec probes' commands
	liveness      []string
	containerName string
	user          string // securityContext.runAsUser
	yaml          []byte
}

// ktLoadManifest reads the recipe and rewrites it for this test.
func ktLoadManifest(t *testing.T, root, image, app, shared string) ktManifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "deploy/kubernetes/berth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := ktManifest{name: "berth-kt-" + ctRandomHex(3)}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("deploy/kubernetes/berth.yaml: %v", err)
		}
		meta := ktMap(t, doc, "metadata")
		meta["name"] = m.name
		switch doc["kind"] {
		case "ConfigMap":
			m.config, _ = ktMap(t, doc, "data")["berth.yaml"].(string)
		case "Deployment":
			spec := ktMap(t, doc, "spec")
			m.replicas, _ = spec["replicas"].(int)
			pod := ktMap(t, ktMap(t, spec, "template"), "spec")
			m.grace, _ = pod["terminationGracePeriodSeconds"].(int)
			if sc, ok := pod["securityContext"].(map[string]any); ok {
				m.user = fmt.Sprint(sc["runAsUser"])
			}
			for _, v := range pod["volumes"].([]any) {
				if cm, ok := v.(map[string]any)["configMap"].(map[string]any); ok {
					cm["name"] = m.name
				}
			}
			pod["volumes"] = append(pod["volumes"].([]any),
				map[string]any{"name": "app", "hostPath": map[string]any{"path": app, "type": "Directory"}},
				map[string]any{"name": "shared", "hostPath": map[string]any{"path": shared, "type": "Directory"}})
			containers := pod["containers"].([]any)
			if len(containers) != 1 {
				t.Fatalf("the Deployment has %d containers; this test knows one", len(containers))
			}
			c := containers[0].(map[string]any)
			m.containerName, _ = c["name"].(string)
			c["image"] = image
			c["volumeMounts"] = append(c["volumeMounts"].([]any),
				map[string]any{"name": "app", "mountPath": "/app", "readOnly": true},
				map[string]any{"name": "shared", "mountPath": "/shared"})
			c["env"] = []any{map[string]any{"name": "FIXTURE_SHARED", "value": "/shared"}}
			// podman 4.3 publishes each containerPort on the same port of
			// every host address (an unset hostPort becomes the
			// containerPort), which Kubernetes never does: the second
			// replica could not start, and 8080 and 9000 would be taken on
			// the host. In Kubernetes the list is informational (only the
			// Service's targetPort: http names one); the pods are reached on
			// their own IPs here, as a Service reaches them.
			delete(c, "ports")
			m.readiness = ktExecProbe(t, c, "readinessProbe")
			m.liveness = ktExecProbe(t, c, "livenessProbe")

			// One Deployment per replica, each with its own emptyDirs.
			type emptyDir struct {
				vol    map[string]any
				mounts []map[string]any
				name   string
			}
			var dirs []emptyDir
			for _, v := range pod["volumes"].([]any) {
				v := v.(map[string]any)
				if _, ok := v["emptyDir"]; !ok {
					continue
				}
				d := emptyDir{vol: v, name: fmt.Sprint(v["name"])}
				for _, vm := range c["volumeMounts"].([]any) {
					if vm := vm.(map[string]any); vm["name"] == d.name {
						d.mounts = append(d.mounts, vm)
					}
				}
				dirs = append(dirs, d)
			}
			spec["replicas"] = 1
			for i := 0; i < m.replicas; i++ {
				meta["name"] = fmt.Sprintf("%s-%d", m.name, i)
				for _, d := range dirs {
					renamed := fmt.Sprintf("%s-%s-%d", d.name, m.name, i)
					d.vol["name"] = renamed
					for _, vm := range d.mounts {
						vm["name"] = renamed
					}
				}
				if err := enc.Encode(doc); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		if err := enc.Encode(doc); err != nil {
			t.Fatal(err)
		}
	}
	if m.config == "" || m.replicas < 1 || m.grace < 1 || m.containerName == "" {
		t.Fatalf("deploy/kubernetes/berth.yaml: config %d bytes, replicas %d, grace %d, container %q",
			len(m.config), m.replicas, m.grace, m.containerName)
	}
	m.yaml = out.Bytes()
	return m
}

func ktMap(t *testing.T, m map[string]any, key string) map[string]any {
	t.Helper()
	v, ok := m[key].(map[string]any)
	if !ok {
		t.Fatalf("deploy/kubernetes/berth.yaml: %s is not a mapping in a %v", key, m["kind"])
	}
	return v
}

// ktExecProbe returns the command of an exec probe, failing on any other.
func ktExecProbe(t *testing.T, c map[string]any, kind string) []string {
	t.Helper()
	p, _ := c[kind].(map[string]any)
	ex, _ := p["exec"].(map[string]any)
	cmd, _ := ex["command"].([]any)
	if len(cmd) == 0 {
		t.Fatalf("the container's %s is not an exec probe: %v", kind, p)
	}
	var argv []string
	for _, a := range cmd {
		argv = append(argv, fmt.Sprint(a))
	}
	return argv
}

// ktPod is one replica podman made from the Deployment.
type ktPod struct {
	container string
	base      string // http://POD_IP:8080
	admin     string // http://POD_IP:9000, where Prometheus scrapes
}

// testKubePlay plays the recipe and checks what Kubernetes relies on: it
// serves; its exec probes work in the image; a ConfigMap update the way the
// kubelet does it (a new timestamped directory, the ..data symlink swapped)
// applies live under load, including a roll of the workers, with every
// response counted and none failed; a broken update is refused while the
// probes keep passing; and `podman stop -t` within the grace period lets a
// request in flight finish.
//
// podman 4.3 writes a ConfigMap volume as plain files into a named volume
// called after the ConfigMap, reusing a volume that exists. The test creates
// that volume first, laid out as the kubelet lays out a ConfigMap volume, so
// the manifest's configMap volume stays as it is and berth sees exactly
// what it would see in a pod (podman's write of the data goes through the
// berth.yaml symlink into the timestamped directory).
func (s *ctSuite) testKubePlay(t *testing.T) {
	t.Parallel()
	shared := ctTempDir(t)
	if err := os.Chmod(shared, 0o777); err != nil { // the workers (runAsUser) write the markers
		t.Fatal(err)
	}
	m := ktLoadManifest(t, s.root, s.image, filepath.Join(s.root, "tests", ctFixtureApp), shared)
	manifest := filepath.Join(ctTempDir(t), "berth.yaml")
	if err := os.WriteFile(manifest, m.yaml, 0o644); err != nil {
		t.Fatal(err)
	}

	// The ConfigMap volume, kubelet-style, before the pods exist.
	if out, err := s.podman("volume", "create", m.name); err != nil {
		t.Fatalf("podman volume create %s: %v\n%s", m.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := s.podman("volume", "rm", "--force", m.name); err != nil {
			t.Logf("podman volume rm %s: %v\n%s", m.name, err, out)
		}
	})
	out, err := s.podman("volume", "inspect", "--format", "{{.Mountpoint}}", m.name)
	if err != nil {
		t.Fatalf("podman volume inspect %s: %v\n%s", m.name, err, out)
	}
	vol := strings.TrimSpace(out)
	swaps := 0
	swap := func(content string) {
		swaps++
		configMapSwap(t, vol, swaps, content)
	}
	swap(m.config)
	if err := os.Symlink("..data/berth.yaml", filepath.Join(vol, "berth.yaml")); err != nil {
		t.Fatal(err)
	}

	pods := s.kubePlay(t, manifest, m)
	if target, err := os.Readlink(filepath.Join(vol, "berth.yaml")); err != nil || target != "..data/berth.yaml" {
		t.Fatalf("after podman kube play, berth.yaml in the ConfigMap volume is not the ..data symlink: %q %v", target, err)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "berth.yaml")); err != nil || string(b) != m.config {
		t.Fatalf("the ConfigMap volume does not hold the ConfigMap's berth.yaml after the play (%v):\n%s", err, b)
	}
	for _, p := range pods {
		if r := ctWaitHTTP(t, p.base+"/", ctReadyTimeout); r.status != 200 || string(r.body) != "fixture app\n" {
			t.Fatalf("%s: status %d body %q, want the fixture app", p.container, r.status, r.body)
		}
	}

	// The probes, as the manifest gives them: readiness passes once every
	// worker is ready, liveness at once; podman made the liveness probe the
	// container's healthcheck, which runs it in the container too.
	for _, p := range pods {
		s.waitProbe(t, p.container, m.readiness)
		if code, out := s.execProbe(t, p.container, m.liveness); code != 0 {
			t.Fatalf("%s: liveness probe %q: exit %d\n%s", p.container, m.liveness, code, out)
		}
		hc, err := s.podman("inspect", "--format", "{{.Config.Healthcheck.Test}}", p.container)
		if err != nil || !strings.Contains(hc, strings.Join(m.liveness, " ")) {
			t.Errorf("%s: healthcheck %q (%v), want the liveness probe's command", p.container, hc, err)
		}
		if out, err := s.podman("healthcheck", "run", p.container); err != nil {
			t.Errorf("%s: podman healthcheck run (the liveness probe): %v\n%s", p.container, err, out)
		}
		if uid, err := s.podman("exec", p.container, "id", "-u"); err != nil || strings.TrimSpace(uid) != m.user {
			t.Errorf("%s: runs as uid %q (%v), want runAsUser %s", p.container, strings.TrimSpace(uid), err, m.user)
		}
	}

	load := ktStartLoad(pods)
	defer load.stop()
	big := bytes.Repeat([]byte("x"), ktBigBody)

	// 1. A ConfigMap update that rolls the workers (app.env) and changes a
	// proxy setting, which applies once the new workers serve.
	before := make([]map[int]bool, len(pods))
	for i, p := range pods {
		before[i] = s.workerPIDs(t, p.container)
		if r := ctPost(t, p.base+"/echo", big); r.status != 200 {
			t.Fatalf("%s: POST %d bytes before the update: status %d", p.container, ktBigBody, r.status)
		}
	}
	updated := strings.Replace(m.config, "max_body_size: 10M", "max_body_size: 1K", 1)
	if updated == m.config {
		t.Fatal("the ConfigMap's berth.yaml has no 'max_body_size: 10M' to change")
	}
	updated += "app:\n  env: {CONFIG_ROLLOUT: \"2\"}\n"
	swapped := time.Now()
	swap(updated)
	for i, p := range pods {
		ktWaitStatus(t, p.base+"/echo", big, http.StatusRequestEntityTooLarge)
		t.Logf("%s: the update (a worker roll) applied %s after the ..data swap", p.container, time.Since(swapped).Round(time.Millisecond))
		// The proxy setting applies when the new workers serve: from now
		// on no answer comes from a worker of before.
		for n := 0; n < 2*len(before[i]); n++ {
			if pid := ktWhoami(t, p.base); before[i][pid] {
				t.Errorf("%s: worker %d served before and after an app.env change: the workers did not roll", p.container, pid)
			}
		}
		if r := ctPost(t, p.base+"/echo", big[:100]); r.status != 200 {
			t.Errorf("%s: POST 100 bytes after the update: status %d", p.container, r.status)
		}
	}

	// 2. A broken update: refused, the old config serves on, and the probes
	// keep passing (they read no config).
	last := make([]time.Time, len(pods))
	for i, p := range pods {
		last[i] = s.kubeStatus(t, p.container).lastReloadAt()
	}
	swap(strings.Replace(updated, "max_body_size: 1K", "max_body_size: lots", 1))
	for i, p := range pods {
		deadline := time.Now().Add(ctReloadTimeout)
		for {
			st := s.kubeStatus(t, p.container)
			if at := st.lastReloadAt(); at.After(last[i]) {
				if st.LastReload.OK || !strings.Contains(st.LastReload.Message, "max_body_size") {
					t.Fatalf("%s: a broken max_body_size was not refused: last_reload %+v", p.container, *st.LastReload)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no reload attempt within %s of the broken ConfigMap update", p.container, ctReloadTimeout)
			}
			time.Sleep(ctPollInterval)
		}
		if r := ctPost(t, p.base+"/echo", big); r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: after a refused update: POST %d bytes: status %d, want 413 (the last good config)", p.container, ktBigBody, r.status)
		}
		for _, probe := range [][]string{m.readiness, m.liveness} {
			if code, out := s.execProbe(t, p.container, probe); code != 0 {
				t.Errorf("%s: with a broken ConfigMap in the volume, probe %q exits %d:\n%s", p.container, probe, code, out)
			}
		}
	}

	// 3. Back to the recipe's config: another roll, the limit back to 10M.
	swap(m.config)
	for _, p := range pods {
		ktWaitStatus(t, p.base+"/echo", big, http.StatusOK)
	}

	total, perPod, failures := load.stop()
	t.Logf("under load through %d ConfigMap updates (2 rolls, 1 refused): %d responses (per pod %v), %d failed", swaps-1, total, perPod, len(failures))
	for _, f := range failures {
		t.Errorf("request failed under load: %s", f)
	}
	for i, n := range perPod {
		if n < ktMinPerPod {
			t.Errorf("%s answered only %d requests under load, want at least %d", pods[i].container, n, ktMinPerPod)
		}
	}

	// 4. podman stop -t <terminationGracePeriodSeconds> with a slow request
	// in flight: it finishes, readiness fails at once (the endpoint leaves
	// the Service) and berth exits 0 well within the grace period.
	s.testKubeStop(t, pods[0], m, shared)
	// The other replica serves on, as behind a Service.
	if len(pods) > 1 {
		if r, err := ctGet(pods[1].base+"/", 10*time.Second); err != nil || r.status != 200 {
			t.Errorf("%s after the other pod stopped: %v %+v", pods[1].container, err, r)
		}
	}
}

// testKubeStop is step 4 of testKubePlay.
func (s *ctSuite) testKubeStop(t *testing.T, p ktPod, m ktManifest, shared string) {
	t.Helper()
	mark := "inflight-" + ctRandomHex(3)
	type result struct {
		r   ctHTTPResult
		err error
	}
	slow := make(chan result, 1)
	go func() {
		r, err := ctGet(fmt.Sprintf("%s/slow?secs=%d&mark=%s", p.base, ktSlowSecs, mark), time.Duration(m.grace)*time.Second)
		slow <- result{r, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(shared, mark)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the slow request never reached the app (no marker %s)", p.container, mark)
		}
		time.Sleep(20 * time.Millisecond)
	}

	start := time.Now()
	stopped := make(chan error, 1)
	go func() {
		out, err := s.podman("stop", "-t", strconv.Itoa(m.grace), p.container)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		stopped <- err
	}()
	// From SIGTERM on, /readyz fails (the readiness probe's answer: the
	// kubelet takes the pod out of the Service) while /livez passes and
	// requests are still served for shutdown.delay (5s), for the clients
	// that have not heard yet. Asked over the pod IP: podman 4.3 refuses
	// exec sessions in a container it is stopping.
	deadline = start.Add(5 * time.Second)
	for {
		r, err := ctGet(p.admin+"/readyz", 2*time.Second)
		if err == nil && r.status == http.StatusServiceUnavailable {
			break
		}
		if err != nil || r.status != 200 || time.Now().After(deadline) {
			t.Fatalf("%s: /readyz after podman stop began: %v %d %q, want 503 within the 5s shutdown.delay", p.container, err, r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r, err := ctGet(p.admin+"/livez", 2*time.Second); err != nil || r.status != 200 {
		t.Errorf("%s: /livez while draining: %v %d %q, want 200 (a liveness failure would kill the pod)", p.container, err, r.status, r.body)
	}
	if r, err := ctGet(p.base+"/", 2*time.Second); err != nil || r.status != 200 {
		t.Errorf("%s: a new request within shutdown.delay: %v %d, want 200", p.container, err, r.status)
	}

	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("podman stop -t %d %s: %v", m.grace, p.container, err)
		}
	case <-time.After(time.Duration(m.grace+15) * time.Second):
		t.Fatalf("podman stop -t %d %s did not return", m.grace, p.container)
	}
	took := time.Since(start)
	var res result
	select {
	case res = <-slow:
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request did not return after the container stopped")
	}
	if want := fmt.Sprintf("slept %d", ktSlowSecs); res.err != nil || res.r.status != 200 || strings.TrimSpace(string(res.r.body)) != want {
		t.Errorf("in-flight request during podman stop: err %v status %d body %q, want 200 %q", res.err, res.r.status, res.r.body, want)
	}
	code, err := s.podman("inspect", "--format", "{{.State.ExitCode}}", p.container)
	if err != nil || strings.TrimSpace(code) != "0" {
		t.Errorf("%s: exit code after podman stop: %q (%v), want 0", p.container, strings.TrimSpace(code), err)
	}
	if took >= time.Duration(m.grace)*time.Second {
		t.Errorf("podman stop took %s: berth did not exit within terminationGracePeriodSeconds %d", took, m.grace)
	}
	t.Logf("podman stop -t %d took %s with a %ds request in flight (shutdown.delay 5s)", m.grace, took.Round(time.Millisecond), ktSlowSecs)
}

// kubePlay plays the manifest, takes it down at the end of the test, and
// returns the replicas: podman names the pod of Deployment D D-pod-0, its
// container D-pod-0-CONTAINER, and gives each pod an address on its bridge.
func (s *ctSuite) kubePlay(t *testing.T, manifest string, m ktManifest) []ktPod {
	t.Helper()
	var pods []ktPod
	for i := 0; i < m.replicas; i++ {
		pods = append(pods, ktPod{container: fmt.Sprintf("%s-%d-pod-0-%s", m.name, i, m.containerName)})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range pods {
				if out, err := s.podman("logs", p.container); err == nil {
					t.Logf("podman logs %s, without the access log:\n%s", p.container, ktWithoutAccessLog(out, 60))
				}
			}
		}
		if out, err := s.podman("kube", "down", manifest); err != nil {
			t.Logf("podman kube down: %v\n%s", err, out)
		}
	})
	out, err := s.podman("kube", "play", manifest)
	if err != nil {
		t.Fatalf("podman kube play deploy/kubernetes/berth.yaml (as %s): %v\n%s", m.name, err, out)
	}
	for i := range pods {
		pod := fmt.Sprintf("%s-%d-pod-0", m.name, i)
		infra, err := s.podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod)
		if err != nil {
			t.Fatalf("podman pod inspect %s: %v\n%s\n(podman kube play said:\n%s)", pod, err, infra, out)
		}
		ip, err := s.podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", strings.TrimSpace(infra))
		fields := strings.Fields(ip)
		if err != nil || len(fields) == 0 || net.ParseIP(fields[0]) == nil {
			t.Fatalf("%s: no pod IP: %v %q", pod, err, ip)
		}
		pods[i].base = "http://" + net.JoinHostPort(fields[0], "8080")
		pods[i].admin = "http://" + net.JoinHostPort(fields[0], "9000")
	}
	return pods
}

// ktWithoutAccessLog keeps the last n lines of a container log that are not
// access log lines (JSON, one a request).
func ktWithoutAccessLog(log string, n int) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.HasPrefix(l, "{") {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// execProbe runs a probe's command in the container, as the kubelet does,
// and returns its exit code (-1 when podman itself failed) and output.
func (s *ctSuite) execProbe(t *testing.T, container string, argv []string) (int, string) {
	t.Helper()
	out, err := s.podman(append([]string{"exec", container}, argv...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &ee) && ee.ExitCode() < 125: // 125+: podman's own failures
		return ee.ExitCode(), out
	}
	return -1, fmt.Sprintf("%v\n%s", err, out)
}

// waitProbe polls a probe until it passes.
func (s *ctSuite) waitProbe(t *testing.T, container string, argv []string) {
	t.Helper()
	deadline := time.Now().Add(ctReadyTimeout)
	for {
		code, out := s.execProbe(t, container, argv)
		if code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: probe %q still exits %d after %s:\n%s", container, argv, code, ctReadyTimeout, out)
		}
		time.Sleep(ctPollInterval)
	}
}

// ktStatus is the part of /status this test reads.
type ktStatus struct {
	LastReload *struct {
		At      time.Time `json:"at"`
		OK      bool      `json:"ok"`
		Message string    `json:"message"`
	} `json:"last_reload"`
	Workers []struct {
		PID int `json:"pid"`
	} `json:"workers"`
}

func (st ktStatus) lastReloadAt() time.Time {
	if st.LastReload == nil {
		return time.Time{}
	}
	return st.LastReload.At
}

// kubeStatus is `berth status --json` in the container, on the probes' address
// (the config in the volume may be broken).
func (s *ctSuite) kubeStatus(t *testing.T, container string) ktStatus {
	t.Helper()
	out, err := s.podman("exec", container, "berth", "status", "--json", "--admin", "127.0.0.1:9000")
	var st ktStatus
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("%s: berth status --json: %v\n%s", container, err, out)
	}
	return st
}

func (s *ctSuite) workerPIDs(t *testing.T, container string) map[int]bool {
	t.Helper()
	pids := map[int]bool{}
	for _, w := range s.kubeStatus(t, container).Workers {
		pids[w.PID] = true
	}
	if len(pids) == 0 {
		t.Fatalf("%s: no workers in berth status", container)
	}
	return pids
}

// ktWhoami is the pid of the worker that answers GET /whoami.
func ktWhoami(t *testing.T, base string) int {
	t.Helper()
	r, err := ctGet(base+"/whoami", 10*time.Second)
	var who struct{ PID int }
	if err != nil || r.status != 200 || json.Unmarshal(r.body, &who) != nil || who.PID == 0 {
		t.Fatalf("GET %s/whoami: %v %d %q", base, err, r.status, r.body)
	}
	return who.PID
}

// ktWaitStatus posts body until the answer is want (a reload applied).
func ktWaitStatus(t *testing.T, url string, body []byte, want int) {
	t.Helper()
	deadline := time.Now().Add(ctReloadTimeout)
	for {
		r := ctPost(t, url, body)
		if r.status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("POST %d bytes to %s: status %d, want %d within %s of the ConfigMap update", len(body), url, r.status, want, ctReloadTimeout)
		}
		time.Sleep(ctPollInterval)
	}
}

// ktLoad is clients sending GET / to the pods in turn, over keep-alive
// connections, counting every answer.
type ktLoad struct {
	done     chan struct{}
	wg       sync.WaitGroup
	perPod   []atomic.Int64
	mu       sync.Mutex
	failures []string
	once     sync.Once
}

func ktStartLoad(pods []ktPod) *ktLoad {
	l := &ktLoad{done: make(chan struct{}), perPod: make([]atomic.Int64, len(pods))}
	for c := 0; c < ktLoadClients; c++ {
		l.wg.Add(1)
		go func(c int) {
			defer l.wg.Done()
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for i := c; ; i++ {
				select {
				case <-l.done:
					return
				default:
				}
				p := i % len(pods)
				if err := ktGetOnce(client, pods[p].base+"/"); err != nil {
					l.mu.Lock()
					l.failures = append(l.failures, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), pods[p].container, err))
					l.mu.Unlock()
					continue
				}
				l.perPod[p].Add(1)
			}
		}(c)
	}
	return l
}

// stop ends the load and returns the answers counted and the failures.
func (l *ktLoad) stop() (total int64, perPod []int64, failures []string) {
	l.once.Do(func() { close(l.done) })
	l.wg.Wait()
	for i := range l.perPod {
		n := l.perPod[i].Load()
		perPod = append(perPod, n)
		total += n
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return total, perPod, l.failures
}

func ktGetOnce(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != 200 || string(b) != "fixture app\n" {
		return fmt.Errorf("status %d body %q", resp.StatusCode, b)
	}
	return nil
}
