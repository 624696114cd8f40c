package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// TestMain lets the test binary play `berth proxy` for TestMainProcess.
func TestMain(m *testing.M) {
	if os.Getenv("BERTH_PROXY_TEST_MAIN") == "1" {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

// proc is a `berth proxy` child process as the supervisor sees it.
type proc struct {
	cmd     *exec.Cmd
	ctrl    *control.Conn
	ctrlRaw net.Conn
	msgs    chan control.Message
	addr    string
	metrics string
	stdout  *syncBuf
	stderr  *syncBuf
	exited  chan error
}

func startProc(t *testing.T) *proc {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := os.NewFile(uintptr(fds[0]), "control")
	theirs := os.NewFile(uintptr(fds[1]), "control-child")
	cc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lf, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	dir := tempDir(t)
	p := &proc{
		ctrl: control.NewConn(cc), ctrlRaw: cc, msgs: make(chan control.Message, 64),
		addr: l.Addr().String(), metrics: filepath.Join(dir, "proxy-1.sock"),
		stdout: &syncBuf{}, stderr: &syncBuf{}, exited: make(chan error, 1),
	}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), "BERTH_PROXY_TEST_MAIN=1", "BERTH_CONTROL_FD=3", "BERTH_LISTEN_FDS=1",
		"BERTH_LISTEN_NAMES="+p.addr, "BERTH_METRICS_SOCKET="+p.metrics, "BERTH_PROXY_ID=1")
	p.cmd.ExtraFiles = []*os.File{theirs, lf}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	lf.Close()
	l.Close() // the child holds its own copy, as after a supervisor hands it over
	go func() { p.exited <- p.cmd.Wait() }()
	go func() {
		for {
			m, err := p.ctrl.Receive()
			if err != nil {
				close(p.msgs)
				return
			}
			p.msgs <- m
		}
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		cc.Close()
	})
	return p
}

// expect waits for a message of type typ, skipping stats.
func (p *proc) expect(t *testing.T, typ string) control.Message {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				t.Fatalf("control socket closed waiting for %s; stderr:\n%s", typ, p.stderr.String())
			}
			if m.Type == typ {
				return m
			}
			if m.Type != control.TypeStats {
				t.Fatalf("got %+v waiting for %s", m, typ)
			}
		case <-timeout:
			t.Fatalf("no %s message; stderr:\n%s", typ, p.stderr.String())
		}
	}
}

func (p *proc) waitExit(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-p.exited:
		return err
	case <-time.After(d):
		t.Fatalf("the proxy did not exit within %s; stderr:\n%s", d, p.stderr.String())
		return nil
	}
}

func TestMainProcess(t *testing.T) {
	for _, stop := range []string{"SIGTERM", "EOF", "SIGINT"} {
		t.Run(stop, func(t *testing.T) {
			release := make(chan struct{})
			fw := startFake(t, "w1", 1, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
				if req.vars["PATH_INFO"] == "/slow" {
					select {
					case <-release:
					case <-fw.done:
						return false
					}
				}
				respond(c, 200, nil, []byte("hello "+req.vars["PATH_INFO"]))
				return true
			})
			p := startProc(t)
			cfg := defaultConfig()
			cfg.AccessLog = "combined"
			p.ctrl.Send(control.Message{Type: control.TypeConfig, Config: &cfg})
			w := fw.worker()
			w.MaxRequests = 2
			p.ctrl.Send(control.Message{Type: control.TypeWorkers, Workers: []control.Worker{w}})
			p.expect(t, control.TypeReady)

			client := &http.Client{Timeout: 10 * time.Second}
			get := func(path string) (int, string) {
				resp, err := client.Get("http://" + p.addr + path)
				if err != nil {
					return 0, err.Error()
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return resp.StatusCode, string(b)
			}
			if code, body := get("/one"); code != 200 || body != "hello /one" {
				t.Fatalf("%d %q", code, body)
			}
			// A config swap through the control socket applies.
			cfg.MaxBodySize = 3
			p.ctrl.Send(control.Message{Type: control.TypeConfig, Config: &cfg})
			waitFor(t, "max_body_size to apply", 5*time.Second, func() bool {
				resp, err := client.Post("http://"+p.addr+"/", "text/plain", strings.NewReader("toolong"))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 413
			})
			// Events reach the supervisor.
			get("/two")
			if m := p.expect(t, control.TypeDue); m.Worker != "w1" {
				t.Fatalf("due for %q", m.Worker)
			}
			// Metrics on the unix socket.
			mc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return net.Dial("unix", p.metrics)
			}}}
			resp, err := mc.Get("http://proxy/metrics")
			if err != nil {
				t.Fatal(err)
			}
			mt, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(mt, []byte(`berth_http_requests_total{code="200"}`)) || !bytes.Contains(mt, []byte(`berth_http_requests_total{code="413"}`)) {
				t.Errorf("metrics:\n%s", mt)
			}

			before := fw.requests.Load()
			slow := make(chan string, 1)
			go func() {
				code, body := get("/slow")
				slow <- strings.TrimSpace(body) + " " + http.StatusText(code)
			}()
			waitFor(t, "the slow request at the worker", 5*time.Second, func() bool { return fw.requests.Load() == before+1 })
			switch stop {
			case "SIGTERM":
				p.cmd.Process.Signal(syscall.SIGTERM)
			case "EOF":
				p.ctrlRaw.Close()
			case "SIGINT":
				p.cmd.Process.Signal(syscall.SIGINT)
			}
			if stop == "SIGINT" {
				if err := p.waitExit(t, 5*time.Second); err != nil {
					t.Fatalf("exit: %v", err)
				}
				close(release)
				if got := <-slow; strings.Contains(got, "hello /slow") {
					t.Errorf("SIGINT waited for the in-flight request: %q", got)
				}
				return
			}
			// Graceful: the in-flight request finishes, then the process exits 0.
			select {
			case err := <-p.exited:
				t.Fatalf("exited (%v) with a request in flight", err)
			case <-time.After(200 * time.Millisecond):
			}
			close(release)
			if got := <-slow; got != "hello /slow OK" {
				t.Errorf("in-flight request: %q", got)
			}
			if err := p.waitExit(t, 5*time.Second); err != nil {
				t.Fatalf("exit: %v; stderr:\n%s", err, p.stderr.String())
			}
			if n := strings.Count(p.stdout.String(), "\n"); n < 4 {
				t.Errorf("access log has %d lines:\n%s", n, p.stdout.String())
			}
			if e := p.stderr.String(); e != "" {
				t.Errorf("a clean stop logged errors:\n%s", e)
			}
			if _, err := os.Stat(p.metrics); !os.IsNotExist(err) {
				t.Errorf("metrics socket left behind: %v", err)
			}
		})
	}
}
