package tests

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bodyStatus posts n bytes to path and returns the status.
func (b *berthProc) postSize(path string, n int) int {
	b.t.Helper()
	resp, err := http.Post(b.url(path), "application/octet-stream", strings.NewReader(strings.Repeat("x", n)))
	if err != nil {
		b.t.Fatalf("POST %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (b *berthProc) readyWorkers() int {
	n := 0
	for _, w := range b.statusDoc().Workers {
		if w.State == "ready" {
			n++
		}
	}
	return n
}

func reloadConfig(count int, maxBody string) string {
	return fmt.Sprintf("workers: {count: %d}\nproxy: {max_body_size: %s, access_log: off}\n", count, maxBody)
}

func TestReloadTenEditsUnderLoad(t *testing.T) {
	b := startBerth(t, berthOpts{config: reloadConfig(2, "1Ki"), app: map[string]string{"wsgi.py": slowApp}})
	base, _ := os.ReadFile(b.cfgPath)
	header := string(base[:strings.Index(string(base), "workers:")])
	footer := string(base[strings.Index(string(base), "admin:"):])
	stop := runLoad(6, b.url("/"), func(code int, body string) bool { return code == 200 && body == "ok" })
	for i := 0; i < 10; i++ {
		count := 2 + i%2
		maxBody := []string{"1Ki", "4Ki"}[(i+1)%2]
		gen := b.statusDoc().Generation
		writeFileAtomic(t, b.cfgPath, header+reloadConfig(count, maxBody)+footer)
		waitFor(t, 20*time.Second, fmt.Sprintf("edit %d applied", i+1), func() bool {
			st := b.statusDoc()
			return st.Generation > gen && b.readyWorkers() == count
		})
		// The new max_body_size is in effect.
		limit := map[string]int{"1Ki": 1024, "4Ki": 4096}[maxBody]
		if c := b.postSize("/", limit+1); c != 413 {
			t.Fatalf("edit %d: %d bytes over %s: %d, want 413", i+1, limit+1, maxBody, c)
		}
		if c := b.postSize("/", limit); c != 200 {
			t.Fatalf("edit %d: %d bytes under %s: %d, want 200", i+1, limit, maxBody, c)
		}
	}
	r := stop()
	t.Logf("10 edits under load: %s", r)
	if r.failed != 0 {
		t.Fatalf("requests failed during reloads: %s", r)
	}
}

// TestReloadKubernetesConfigMapSwap replays what the kubelet does to a
// ConfigMap volume: berth.yaml is a symlink through ..data, which points at a
// timestamped directory; an update writes a new directory, points a
// ..data_tmp symlink at it, renames that over ..data and removes the old one.
func TestReloadKubernetesConfigMapSwap(t *testing.T) {
	b := startBerth(t, berthOpts{configMap: true, config: reloadConfig(1, "1Ki"), app: map[string]string{"wsgi.py": slowApp}})
	base, _ := os.ReadFile(b.cfgPath)
	cfg := strings.Replace(string(base), "max_body_size: 1Ki", "max_body_size: 8Ki", 1)
	configMapSwap(t, filepath.Dir(b.cfgPath), 1, cfg)
	waitFor(t, 10*time.Second, "first ConfigMap swap applied", func() bool { return b.postSize("/", 5000) == 200 })
	cfg = strings.Replace(string(base), "max_body_size: 1Ki", "max_body_size: 2Ki", 1)
	configMapSwap(t, filepath.Dir(b.cfgPath), 2, cfg)
	waitFor(t, 10*time.Second, "second ConfigMap swap applied (the watch survived)", func() bool { return b.postSize("/", 3000) == 413 })
	if st := b.statusDoc(); st.Generation != 3 {
		t.Fatalf("generation %d after two swaps, want 3", st.Generation)
	}
}

func TestReloadBrokenEditIsRefused(t *testing.T) {
	b := startBerth(t, berthOpts{config: reloadConfig(2, "1Ki"), app: map[string]string{"wsgi.py": slowApp}})
	good, _ := os.ReadFile(b.cfgPath)
	gen := b.statusDoc().Generation
	stop := runLoad(4, b.url("/"), func(code int, body string) bool { return code == 200 && body == "ok" })
	broken := strings.Replace(string(good), "workers: {count: 2}", "workers: {count: 2, wrokers: 3}", 1)
	writeFileAtomic(t, b.cfgPath, broken)
	waitFor(t, 10*time.Second, "refusal reported in /status", func() bool {
		st := b.statusDoc()
		return st.LastReload != nil && !st.LastReload.OK
	})
	st := b.statusDoc()
	if !strings.Contains(st.LastReload.Message, "berth.yaml:") || !strings.Contains(st.LastReload.Message, "wrokers") {
		t.Fatalf("refusal lacks file:line: %q", st.LastReload.Message)
	}
	if st.Generation != gen || b.readyWorkers() != 2 || b.postSize("/", 2000) != 413 {
		t.Fatalf("broken edit changed something: %+v", st)
	}
	// The next good edit applies normally.
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(good), "max_body_size: 1Ki", "max_body_size: 4Ki", 1))
	waitFor(t, 10*time.Second, "good edit after a broken one", func() bool { return b.postSize("/", 2000) == 200 })
	r := stop()
	if r.failed != 0 {
		t.Fatalf("failures: %s", r)
	}
	if !strings.Contains(b.logs.String(), "refused") {
		t.Fatalf("no refusal in the logs")
	}
}

func TestReloadOnCodeChange(t *testing.T) {
	app := func(v string) string {
		return fmt.Sprintf("def application(e, sr):\n    sr('200 OK', [('Content-Type', 'text/plain')])\n    return [b'%s']\n", v)
	}
	b := startBerth(t, berthOpts{
		config: "workers: {count: 2}\nproxy: {access_log: off}\napp:\n  chdir: $APP\n  python: $PY\n  reload_on: [$APP/reload.txt]\n",
		app:    map[string]string{"wsgi.py": app("v1"), "reload.txt": "0"},
	})
	stop := runLoad(4, b.url("/"), func(code int, body string) bool { return code == 200 && (body == "v1" || body == "v2") })
	os.WriteFile(filepath.Join(b.appDir, "wsgi.py"), []byte(app("v2")), 0o644)
	// Editing the code alone does nothing (reload.txt is the trigger)...
	if _, body := b.get("/"); body != "v1" {
		t.Fatalf("code changed without the touch: %q", body)
	}
	// ...touching the reload file rolls the workers onto the new code.
	os.WriteFile(filepath.Join(b.appDir, "reload.txt"), []byte("1"), 0o644)
	waitFor(t, 20*time.Second, "new code served by every worker", func() bool {
		for i := 0; i < 6; i++ {
			if _, body := b.get("/"); body != "v2" {
				return false
			}
		}
		return true
	})
	r := stop()
	t.Logf("code reload under load: %s", r)
	if r.failed != 0 {
		t.Fatalf("failures during code reload: %s", r)
	}
}

func TestReloadListenChange(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\n", app: map[string]string{"wsgi.py": slowApp}})
	oldAddr := b.addr
	newAddr := freeAddr(t)
	// A slow request in flight on the old port must finish.
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + oldAddr + "/?sleep=2")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, 5*time.Second, "request in flight", func() bool {
		for _, w := range b.statusDoc().Workers {
			if w.InFlight > 0 {
				return true
			}
		}
		return false
	})
	cfg, _ := os.ReadFile(b.cfgPath)
	writeFileAtomic(t, b.cfgPath, strings.Replace(string(cfg), oldAddr, newAddr, 1))
	waitFor(t, 10*time.Second, "new port serves", func() bool {
		resp, err := http.Get("http://" + newAddr + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if code := <-done; code != 200 {
		t.Fatalf("in-flight request on the old port: %d", code)
	}
	waitFor(t, 10*time.Second, "old port closed", func() bool {
		_, err := http.Get("http://" + oldAddr + "/")
		return err != nil
	})
}

func TestSIGHUPWithUnchangedConfigReloadsCode(t *testing.T) {
	app := func(v string) string {
		return fmt.Sprintf("def application(e, sr):\n    sr('200 OK', [('Content-Type', 'text/plain')])\n    return [b'%s']\n", v)
	}
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\nproxy: {access_log: off}\n", app: map[string]string{"wsgi.py": app("v1")}})
	stop := runLoad(4, b.url("/"), func(code int, body string) bool { return code == 200 && (body == "v1" || body == "v2") })
	os.WriteFile(filepath.Join(b.appDir, "wsgi.py"), []byte(app("v2")), 0o644)
	b.signal(syscall.SIGHUP)
	waitFor(t, 20*time.Second, "new code after SIGHUP", func() bool {
		for i := 0; i < 6; i++ {
			if _, body := b.get("/"); body != "v2" {
				return false
			}
		}
		return true
	})
	if r := stop(); r.failed != 0 {
		t.Fatalf("failures: %s", r)
	}
}
