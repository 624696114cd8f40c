package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/proxy"
)

// uwsgiPeerApp is a small WSGI app: hello, body echo, a 1 MiB response
// without Content-Length (close-delimited), and its environ as JSON.
const uwsgiPeerApp = `
import json

def application(environ, start_response):
    path = environ.get('PATH_INFO', '')
    if path == '/echo':
        n = int(environ.get('CONTENT_LENGTH') or 0)
        body = environ['wsgi.input'].read(n)
        start_response('200 OK', [('Content-Type', 'application/octet-stream'),
                                  ('Content-Length', str(len(body)))])
        return [body]
    if path == '/big':
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return (bytes([65 + i]) * 65536 for i in range(16))
    if path == '/env':
        keys = ('REQUEST_METHOD', 'PATH_INFO', 'QUERY_STRING', 'REMOTE_ADDR', 'SERVER_NAME',
                'SERVER_PORT', 'HTTP_X_TEST', 'wsgi.url_scheme')
        body = json.dumps({k: str(environ.get(k)) for k in keys}).encode()
        start_response('200 OK', [('Content-Type', 'application/json')])
        return [body]
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'hello from uwsgi']
`

// TestUwsgiPeer puts berth's proxy (in-process) in front of a real uWSGI,
// which ignores BERTH_KEEPALIVE: the proxy must take close-delimited
// responses and not reuse those connections.
func TestUwsgiPeer(t *testing.T) {
	const plugin = "/usr/lib/uwsgi/plugins/python3_plugin.so"
	_, lookErr := exec.LookPath("uwsgi")
	if _, err := os.Stat(plugin); lookErr == nil && err != nil {
		lookErr = err
	}
	if lookErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("uwsgi and uwsgi-plugin-python3 are needed in CI: %v", lookErr)
		}
		t.Skipf("uwsgi with the python3 plugin is not installed: %v", lookErr)
	}

	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	app := filepath.Join(dir, "app.py")
	if err := os.WriteFile(app, []byte(uwsgiPeerApp), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "u.sock")
	out := &syncBuffer{}
	cmd := exec.Command("uwsgi", "--plugin", "python3", "--socket", sock, "--wsgi-file", app,
		"--master", "--processes", "2", "--need-app", "--die-on-term", "--disable-logging")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	waitUnixSocket(t, "uwsgi", sock, 15*time.Second, exited, out.String)

	elog := &syncBuffer{}
	srv := proxy.New(proxy.Options{AccessLog: io.Discard, ErrorLog: elog})
	if err := srv.SetConfig(control.Proxy{
		AccessLog: "off", QueueSize: 64, QueueTimeout: control.Duration(10 * time.Second),
		Timeout: control.Duration(20 * time.Second), MaxBodySize: 4 << 20,
	}); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetWorkers([]control.Worker{{ID: "uwsgi", Socket: sock, Capacity: 2}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	base := "http://" + l.Addr().String()
	client := &http.Client{Timeout: 20 * time.Second}
	fetch := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("X-Test", "peer")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		return resp.StatusCode, b
	}

	t.Run("GET", func(t *testing.T) {
		for i := 0; i < 10; i++ { // back to back: no pooled connection may be reused
			if code, b := fetch("GET", "/", nil); code != 200 || string(b) != "hello from uwsgi" {
				t.Fatalf("request %d: %d %q", i, code, b)
			}
		}
	})
	t.Run("environ", func(t *testing.T) {
		code, b := fetch("GET", "/env?a=1", nil)
		var env map[string]string
		if code != 200 || json.Unmarshal(b, &env) != nil {
			t.Fatalf("%d %q", code, b)
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		want := map[string]string{"REQUEST_METHOD": "GET", "PATH_INFO": "/env", "QUERY_STRING": "a=1",
			"REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": port,
			"HTTP_X_TEST": "peer", "wsgi.url_scheme": "http"}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("%s = %q, want %q", k, env[k], v)
			}
		}
	})
	t.Run("POST echo", func(t *testing.T) {
		for _, size := range []int{0, 10, 200 << 10} {
			body := bytes.Repeat([]byte("0123456789"), size/10)
			for i := 0; i < 3; i++ {
				code, b := fetch("POST", "/echo", body)
				if code != 200 || !bytes.Equal(b, body) {
					t.Fatalf("size %d: %d, %d bytes back", size, code, len(b))
				}
			}
		}
	})
	t.Run("1 MiB response", func(t *testing.T) {
		var want bytes.Buffer
		for i := 0; i < 16; i++ {
			want.Write(bytes.Repeat([]byte{byte(65 + i)}, 65536))
		}
		code, b := fetch("GET", "/big", nil)
		if code != 200 || len(b) != 1<<20 || sha256.Sum256(b) != sha256.Sum256(want.Bytes()) {
			t.Fatalf("%d, %d bytes", code, len(b))
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan string, 16)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					body := []byte(fmt.Sprint("payload ", g, " ", i))
					resp, err := client.Post(base+"/echo", "text/plain", bytes.NewReader(body))
					if err != nil {
						errs <- err.Error()
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || !bytes.Equal(b, body) {
						errs <- fmt.Sprintf("%d %q", resp.StatusCode, b)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})
	if e := elog.String(); strings.Contains(e, "bad response") || strings.Contains(e, "connect") {
		t.Errorf("proxy errors:\n%s", e)
	}
	if t.Failed() {
		t.Logf("uwsgi output:\n%s", out.String())
	}
}
