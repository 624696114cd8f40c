package tests

// Faults on the request path (issue 11): a query of death, a worker killed
// mid-request, a proxy out of file descriptors. Each runs the real binary
// with real workers and counts every response.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// deathApp dies on /exit and blocks on /slow until released; / answers.
const deathApp = `
import os, time
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/exit":
        os._exit(1)
    if path == "/slow":
        with open(os.environ["SLOW_PID_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
`

// The worker that read a query of death dies; the other one must not be
// handed the same request, and the next requests are served.
func TestQueryOfDeathOOMKillsOneWorker(t *testing.T) {
	requireCgroupV1(t)
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 2}\nresources:\n  worker: {memory: {limit: 64Mi}}\n",
		app:    map[string]string{"wsgi.py": memoryApp}})
	resp, err := http.Get(b.url("/eat"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("the query of death: %d, want 502", resp.StatusCode)
	}
	ok := 0
	for i := 0; i < 20; i++ {
		if code, _ := b.get("/"); code == 200 {
			ok++
		}
	}
	if ok < 19 {
		t.Errorf("%d of the 20 requests after the OOM kill succeeded, want at least 19", ok)
	}
	waitFor(t, 15*time.Second, "two ready workers", func() bool {
		return b.statusDoc().State == "ready" && b.readyWorkers() == 2
	})
	if n := b.statusDoc().Restarts["oom"]; n != 1 {
		t.Fatalf("%d workers OOM-killed, want 1: the query of death was replayed", n)
	}
	metrics := httpGet(t, "http://"+b.admin+"/metrics")
	if !strings.Contains(metrics, "berth_retries_refused_total 1") {
		t.Errorf("/metrics lacks the refused retry:\n%s", grepLines(metrics, "berth_retries"))
	}
	t.Logf("%d/20 served after the OOM kill; log: %s", ok, grepLines(b.logs.String(), "not replayed"))
}

func TestQueryOfDeathExitKillsOneWorker(t *testing.T) {
	b := startBerth(t, berthOpts{
		config: "workers: {count: 2}\n",
		env:    []string{"SLOW_PID_FILE=/dev/null"},
		app:    map[string]string{"wsgi.py": deathApp}})
	if code, _ := b.get("/exit"); code != 502 {
		t.Fatalf("GET /exit: %d, want 502", code)
	}
	ok := 0
	for i := 0; i < 20; i++ {
		if code, _ := b.get("/"); code == 200 {
			ok++
		}
	}
	if ok < 19 {
		t.Errorf("%d of 20 served after the crash, want at least 19", ok)
	}
	waitFor(t, 15*time.Second, "two ready workers", func() bool { return b.readyWorkers() == 2 })
	if n := b.statusDoc().Restarts["crash"]; n != 1 {
		t.Fatalf("%d workers crashed, want 1: GET /exit was replayed on the other worker", n)
	}
}

// kill -9 of a worker in the middle of a request, under load: that request
// fails (502), every other one is served.
func TestKillWorkerMidRequestUnderLoad(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "slow.pid")
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 3, timeout: 60s}\nproxy: {access_log: off}\n",
		env:    []string{"SLOW_PID_FILE=" + pidFile},
		app:    map[string]string{"wsgi.py": deathApp}})
	stop := runLoad(4, b.url("/"), func(code int, body string) bool { return code == 200 && body == "ok" })
	slow := make(chan int, 1)
	go func() {
		resp, err := http.Get(b.url("/slow"))
		if err != nil {
			slow <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	var pid int
	waitFor(t, 10*time.Second, "the slow request to start", func() bool {
		data, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(string(data))
		return err == nil && pid > 0
	})
	time.Sleep(300 * time.Millisecond) // load keeps running across the kill
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code := <-slow
	waitFor(t, 15*time.Second, "the replacement", func() bool { return b.readyWorkers() == 3 })
	res := stop()
	t.Logf("load across the kill: %s; the killed request: %d", res, code)
	if code != 502 {
		t.Errorf("the request of the killed worker: %d, want 502 (not replayed)", code)
	}
	if res.failed != 0 || res.ok < 50 {
		t.Errorf("load: %s; want no failure", res)
	}
}

// A worker killed in the middle of the first request it reads on a reused
// connection: that request was read, so it fails (502) and is not run
// again on the replacement. The proxy used to take the end of stream for a
// pooled connection the worker had closed, since the worker had not yet
// answered on a reused one, and replayed it (seen once in the gate as
// TestKillWorkerMidRequestUnderLoad's killed request answered 200).
func TestKillWorkerOnItsFirstReusedConnection(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "slow.pid")
	b := startBerth(t, berthOpts{host: true, // the pid the app writes is the host's
		config: "workers: {count: 1, timeout: 60s}\nproxy: {access_log: off}\n",
		env:    []string{"SLOW_PID_FILE=" + pidFile},
		app:    map[string]string{"wsgi.py": deathApp}})
	if code, body := b.get("/"); code != 200 || body != "ok" {
		t.Fatalf("GET /: %d %q", code, body) // the proxy now holds an idle connection to the worker
	}
	slow := make(chan int, 1)
	go func() {
		code, _ := b.get("/slow")
		slow <- code
	}()
	var pid int
	waitFor(t, 10*time.Second, "the slow request to start", func() bool {
		data, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(string(data))
		return err == nil && pid > 0
	})
	os.Remove(pidFile)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-slow:
		if code != 502 {
			t.Errorf("the killed worker's request: %d, want 502 (not replayed)", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the killed worker's request got no answer in 20 s: replayed on the replacement")
	}
	if _, err := os.Stat(pidFile); err == nil {
		t.Error("the replacement worker ran /slow again")
	}
	if !strings.Contains(b.logs.String(), "not replayed") {
		t.Errorf("berth's log does not say the request was not replayed:\n%s", b.logs.String())
	}
}

// The proxy under a tiny RLIMIT_NOFILE: requests it cannot serve get 503,
// it does not crash, and it serves again once descriptors are free.
func TestProxyOutOfFileDescriptors(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	b := startBerth(t, berthOpts{host: true,
		config: "workers: {count: 2, threads: 4}\nproxy: {access_log: off, queue: {timeout: 2s}}\n",
		env:    []string{"SLOW_PID_FILE=/dev/null"},
		app:    map[string]string{"wsgi.py": deathApp}})
	proxyPid := func() int {
		var st struct {
			Proxies []struct{ PID int }
		}
		if err := json.Unmarshal([]byte(b.status()), &st); err != nil || len(st.Proxies) == 0 {
			t.Fatalf("/status proxies: %v", err)
		}
		return st.Proxies[0].PID
	}
	pid := proxyPid()
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	limit := len(fds) + 6
	if out, err := exec.Command("prlimit", "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", limit, limit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit: %v %s", err, out)
	}
	// 40 clients at once need far more descriptors than the proxy has.
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := 0
			if resp, err := client.Get(b.url("/")); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("40 clients under a limit of %d descriptors: %v", limit, codes)
	for code := range codes {
		if code != 200 && code != 503 {
			t.Errorf("status %d under the descriptor limit; want only 200 or 503: %v", code, codes)
		}
	}
	if codes[503] == 0 {
		t.Errorf("no 503 under the descriptor limit: the test proves nothing: %v", codes)
	}
	if got := proxyPid(); got != pid {
		t.Fatalf("the proxy was replaced (pid %d → %d): it crashed", pid, got)
	}
	for i := 0; i < 10; i++ {
		if code, _ := b.get("/"); code != 200 {
			t.Fatalf("after the burst: %d", code)
		}
	}
	if !strings.Contains(b.logs.String(), "out of file descriptors") {
		t.Errorf("the log does not say why: %s", grepLines(b.logs.String(), "proxy"))
	}
}
