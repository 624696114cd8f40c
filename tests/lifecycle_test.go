package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// statusOf decodes /status.
type statusDoc struct {
	State    string
	Restarts map[string]int
	Orphans  int `json:"orphans_reaped"`
	Workers  []struct {
		ID       string
		PID      int
		State    string
		Requests int
		InFlight int
		Retiring string
		Gen      int `json:"generation"`
	}
	Proxies []struct {
		PID int
	}
	LastReload *struct {
		OK      bool
		Message string
	} `json:"last_reload"`
	Generation int `json:"config_generation"`
}

func (b *berthProc) statusDoc() statusDoc {
	b.t.Helper()
	var st statusDoc
	if err := json.Unmarshal([]byte(b.status()), &st); err != nil {
		b.t.Fatalf("/status: %v", err)
	}
	return st
}

// nsKill signals a pid as seen inside berth's PID namespace.
func (b *berthProc) nsKill(pid int, sig syscall.Signal) {
	b.t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(b.berthPid()), "-p", "-m",
		"kill", fmt.Sprintf("-%d", int(sig)), strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		b.t.Fatalf("kill %d in berth's namespace: %v %s", pid, err, out)
	}
}

// zombiesOf counts zombie children of host pid ppid.
func zombiesOf(ppid int) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		s := string(data)
		if strings.Contains(s, "\nState:\tZ") && strings.Contains(s, fmt.Sprintf("\nPPid:\t%d\n", ppid)) {
			n++
		}
	}
	return n
}

const orphanApp = `
import os, time
def application(environ, start_response):
    # Leave 100 orphans: each intermediate child exits at once, its child
    # lives 200ms longer and is reparented to PID 1 (berth).
    for i in range(100):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep(0.2)
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"forked"]
`

func TestOrphansAreReapedByPID1(t *testing.T) {
	for _, reap := range []bool{true, false} {
		t.Run(fmt.Sprintf("reap=%v", reap), func(t *testing.T) {
			env := []string{}
			if !reap {
				env = append(env, "BERTH_TEST_NO_REAP=1")
			}
			b := startBerth(t, berthOpts{env: env, config: "workers: {count: 1}\n", app: map[string]string{"wsgi.py": orphanApp}})
			if code, body := b.get("/"); code != 200 || body != "forked" {
				t.Fatalf("%d %q", code, body)
			}
			pid := b.berthPid()
			if reap {
				waitFor(t, 10*time.Second, "no zombie left under berth", func() bool { return zombiesOf(pid) == 0 })
				waitFor(t, 5*time.Second, "orphans counted", func() bool { return b.statusDoc().Orphans >= 100 })
			} else {
				// The control: without the reaper the 100 orphans stay
				// zombies, so the check above can fail.
				waitFor(t, 10*time.Second, "100 zombies without reaping", func() bool { return zombiesOf(pid) >= 100 })
			}
		})
	}
}

const slowApp = `
import os, time, signal
def application(environ, start_response):
    q = environ.get("QUERY_STRING", "")
    if q.startswith("sleep="):
        time.sleep(float(q[6:]))
    if q == "pid":
        body = str(os.getpid()).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
`

func TestSIGTERMFinishesInFlightThenExits0(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\n", app: map[string]string{"wsgi.py": slowApp}})
	type res struct {
		code int
		body string
		err  error
	}
	done := make(chan res, 1)
	go func() {
		resp, err := http.Get(b.url("/?sleep=2"))
		if err != nil {
			done <- res{err: err}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- res{code: resp.StatusCode, body: string(body)}
	}()
	waitFor(t, 5*time.Second, "request in flight", func() bool {
		for _, w := range b.statusDoc().Workers {
			if w.InFlight > 0 {
				return true
			}
		}
		return false
	})
	b.signal(syscall.SIGTERM)
	r := <-done
	if r.err != nil || r.code != 200 || r.body != "ok" {
		t.Fatalf("in-flight request across SIGTERM: %+v", r)
	}
	if code := b.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

const stubbornApp = `
import signal
# Ignore SIGTERM for good, even if someone installs a handler later.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
_orig = signal.signal
def _guard(sig, handler):
    if sig == signal.SIGTERM:
        return signal.SIG_IGN
    return _orig(sig, handler)
signal.signal = _guard
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"stubborn"]
`

func TestSIGKILLEscalation(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 1, graceful_timeout: 2s}\n", app: map[string]string{"wsgi.py": stubbornApp}})
	if code, body := b.get("/"); code != 200 || body != "stubborn" {
		t.Fatalf("%d %q", code, body)
	}
	start := time.Now()
	b.signal(syscall.SIGTERM)
	code := b.wait(20 * time.Second)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if took < 2*time.Second || took > 8*time.Second {
		t.Fatalf("stop took %s, want SIGKILL right after graceful_timeout 2s", took)
	}
	if !strings.Contains(b.logs.String(), "SIGKILL") {
		t.Fatalf("no SIGKILL escalation in the logs:\n%s", b.logs.String())
	}
}

func TestFastStopOnSIGINT(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\n", app: map[string]string{"wsgi.py": slowApp}})
	b.signal(syscall.SIGINT)
	if code := b.wait(10 * time.Second); code != 130 {
		t.Fatalf("exit code %d, want 130 (128+SIGINT)", code)
	}
}

func TestRecyclingUnderLoadDropsNothing(t *testing.T) {
	for _, preload := range []bool{true, false} {
		t.Run(fmt.Sprintf("preload=%v", preload), func(t *testing.T) {
			b := startBerth(t, berthOpts{
				config: fmt.Sprintf("workers: {count: 2, max_requests: 20, max_requests_jitter: 5, preload: %v}\n", preload),
				app:    map[string]string{"wsgi.py": slowApp}})
			stop := runLoad(8, b.url("/"), func(code int, body string) bool { return code == 200 && body == "ok" })
			waitFor(t, 60*time.Second, "≥ 20 recycles", func() bool { return b.statusDoc().Restarts["max_requests"] >= 20 })
			r := stop()
			t.Logf("recycling every 20 requests (preload %v): %s, restarts %v", preload, r, b.statusDoc().Restarts)
			if r.failed != 0 || r.ok < 400 {
				t.Fatalf("failed requests while recycling: %s", r)
			}
		})
	}
}

const hangApp = `
import time
def hang_here_forever():
    time.sleep(300)
def application(environ, start_response):
    if environ["PATH_INFO"] == "/hang":
        hang_here_forever()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]
`

func TestTimeout504DumpsStackAndReplaces(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2, timeout: 1s}\n", app: map[string]string{"wsgi.py": hangApp}})
	before := b.statusDoc()
	start := time.Now()
	code, _ := b.get("/hang")
	if code != 504 {
		t.Fatalf("hung request: %d, want 504", code)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("504 after %s, want about the 1s timeout", took)
	}
	// Other requests are unaffected.
	for i := 0; i < 10; i++ {
		if code, body := b.get("/"); code != 200 || body != "fine" {
			t.Fatalf("other request: %d %q", code, body)
		}
	}
	b.waitLog("hang_here_forever", 10*time.Second)
	waitFor(t, 15*time.Second, "stuck worker killed and replaced", func() bool {
		st := b.statusDoc()
		ready := 0
		for _, w := range st.Workers {
			if w.State != "ready" {
				return false // the stuck one is still there
			}
			ready++
		}
		return st.Restarts["timeout"] == 1 && ready == 2 && st.State == "ready"
	})
	pids := map[int]bool{}
	for _, w := range b.statusDoc().Workers {
		pids[w.PID] = true
	}
	kept := 0
	for _, w := range before.Workers {
		if pids[w.PID] {
			kept++
		}
	}
	if kept != 1 {
		t.Fatalf("want exactly one of the two workers replaced; kept %d: before %+v after %+v", kept, before.Workers, b.statusDoc().Workers)
	}
}

func TestProxyKillRefusesNoConnection(t *testing.T) {
	b := startBerth(t, berthOpts{config: "workers: {count: 2}\nproxy: {access_log: off}\n", app: map[string]string{"wsgi.py": slowApp}})
	var mu sync.Mutex
	refused, other, ok := 0, 0, 0
	stopCh := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A new connection per request: a refused connect is what a
			// closed listening socket would cause.
			c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for {
				select {
				case <-stopCh:
					return
				default:
				}
				resp, err := c.Get(b.url("/"))
				mu.Lock()
				switch {
				case err != nil && strings.Contains(err.Error(), "refused"):
					refused++
				case err != nil:
					other++
				default:
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						ok++
					} else {
						other++
					}
				}
				mu.Unlock()
			}
		}()
	}
	for k := 0; k < 3; k++ {
		time.Sleep(300 * time.Millisecond) // let load build between kills
		st := b.statusDoc()
		if len(st.Proxies) == 0 {
			t.Fatal("no proxy in /status")
		}
		b.nsKill(st.Proxies[len(st.Proxies)-1].PID, syscall.SIGKILL)
		waitFor(t, 10*time.Second, "proxy restarted", func() bool {
			st2 := b.statusDoc()
			return len(st2.Proxies) == 1 && st2.Proxies[0].PID != st.Proxies[len(st.Proxies)-1].PID && st2.State == "ready"
		})
	}
	close(stopCh)
	wg.Wait()
	t.Logf("across 3 proxy kills: ok %d, refused %d, other errors (in flight at the kill) %d", ok, refused, other)
	if refused != 0 {
		t.Fatalf("%d connections refused across proxy kills", refused)
	}
	if ok < 100 {
		t.Fatalf("too little load to mean anything: %d ok", ok)
	}
}

func TestSdNotifyMessages(t *testing.T) {
	dir, _ := os.MkdirTemp("", "nt")
	defer os.RemoveAll(dir)
	sock := dir + "/notify.sock"
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var msgs []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			msgs = append(msgs, string(buf[:n]))
			mu.Unlock()
		}
	}()
	seen := func(substr string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				if strings.Contains(m, substr) {
					return true
				}
			}
			return false
		}
	}
	b := startBerth(t, berthOpts{env: []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"},
		config: "workers: {count: 1}\n", app: map[string]string{"wsgi.py": slowApp}})
	waitFor(t, 5*time.Second, "READY=1", seen("READY=1"))
	waitFor(t, 5*time.Second, "STATUS=", seen("STATUS="))
	waitFor(t, 5*time.Second, "WATCHDOG=1", seen("WATCHDOG=1"))
	// A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
	mu.Lock()
	msgs = nil
	mu.Unlock()
	cfg, _ := os.ReadFile(b.cfgPath)
	writeFileAtomic(t, b.cfgPath, string(cfg)+"proxy: {max_body_size: 2Mi}\n")
	b.signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "RELOADING=1", seen("RELOADING=1"))
	waitFor(t, 5*time.Second, "MONOTONIC_USEC", seen("MONOTONIC_USEC="))
	waitFor(t, 5*time.Second, "READY=1 after reload", seen("READY=1"))
	b.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "STOPPING=1", seen("STOPPING=1"))
	if code := b.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// Workers must not have talked to systemd's socket themselves.
	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		if strings.Contains(m, "BERTH_WORKER") {
			t.Fatalf("a worker's notify reached the outer NOTIFY_SOCKET: %q", m)
		}
	}
}

func TestSocketActivation(t *testing.T) {
	requireTool(t, "systemd-socket-activate")
	addr := freeAddr(t)
	bin := berthBinary(t)
	dir, _ := os.MkdirTemp("", "sa")
	defer os.RemoveAll(dir)
	os.WriteFile(dir+"/wsgi.py", []byte(slowApp), 0o644)
	admin := freeAddr(t)
	cfg := fmt.Sprintf("listen: [\"127.0.0.1:1\"]\nadmin: {listen: %q}\napp: {chdir: %s, python: %s}\nworkers: {count: 1}\n", admin, dir, systemPython)
	os.WriteFile(dir+"/berth.yaml", []byte(cfg), 0o644)
	cmd := exec.Command("systemd-socket-activate", "-l", addr, "--fdname=http", bin, "run", "--config", dir+"/berth.yaml")
	cmd.Env = append(os.Environ(), "BERTH_RUN_DIR="+dir+"/run")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	}()
	// systemd-socket-activate binds, then starts berth on the first
	// connection; that connection waits in the backlog and is answered
	// (the configured listen 127.0.0.1:1 is not used).
	waitFor(t, 5*time.Second, "activation socket bound", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET on the activated socket: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(st), "fd:http="+addr) {
		t.Fatalf("status does not show the activated listener: %s", st)
	}
}
