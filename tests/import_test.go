package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
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

	"github.com/berth-dev/berth/config"
)

// importUwsgiIni is the uWSGI side of the deployment TestImportSideBySide
// moves: the Django test site behind nginx's uwsgi_pass.
const importUwsgiIni = `[uwsgi]
plugin = python3
chdir = {{SITE}}
module = mysite.wsgi:application
env = DJANGO_SETTINGS_MODULE=mysite.settings
master = true
processes = 2
socket = {{DIR}}/uwsgi.sock
vacuum = true
die-on-term = true
need-app = true
harakiri = 30
disable-logging = true
`

// importNginxConf holds what nginx needs to run unprivileged in a test;
// the site itself is in an included file, as in sites-enabled.
const importNginxConf = `daemon off;
master_process off;
worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log info;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {{DIR}}/tmp/body;
    proxy_temp_path {{DIR}}/tmp/proxy;
    fastcgi_temp_path {{DIR}}/tmp/fastcgi;
    uwsgi_temp_path {{DIR}}/tmp/uwsgi;
    scgi_temp_path {{DIR}}/tmp/scgi;
    include {{DIR}}/site.conf;
}
`

const importSiteConf = `server {
    listen {{ADDR}};
    server_name localhost;
    client_max_body_size 64k;

    location /static/ {
        alias {{SITE}}/collected-static/;
    }

    location / {
        include /etc/nginx/uwsgi_params;
        uwsgi_pass unix:{{DIR}}/uwsgi.sock;
    }
}
`

// importProbe is one request both stacks must answer alike.
type importProbe struct {
	name, method, path string
	body               []byte
}

// importAnswer is what a probe compares: status, media type and, for
// successful answers, the body (error pages are each server's own).
type importAnswer struct {
	status    int
	mediaType string
	body      string
}

// TestImportSideBySide runs the Django test site under real nginx + uWSGI,
// imports their configs with `berth import`, runs berth on the imported
// berth.yaml as it came out, and sends the same requests to both stacks on
// the same address, one after the other: the same app, the same static
// mapping and the same body limit must answer the same.
func TestImportSideBySide(t *testing.T) {
	const nginx = "/usr/sbin/nginx"
	const plugin = "/usr/lib/uwsgi/plugins/python3_plugin.so"
	requireFiles(t, nginx, plugin, "/etc/nginx/uwsgi_params", "/etc/nginx/mime.types", systemPython)
	site := djangoSite(t)
	dir, err := os.MkdirTemp("", "imp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := freeAddr(t)
	fill := strings.NewReplacer("{{DIR}}", dir, "{{SITE}}", site, "{{ADDR}}", addr)
	for name, text := range map[string]string{"uwsgi.ini": importUwsgiIni, "nginx.conf": importNginxConf, "site.conf": importSiteConf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fill.Replace(text)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}

	limit := 64 << 10
	probes := []importProbe{
		{"django view", "GET", "/hello", nil},
		{"django template", "GET", "/template", nil},
		{"static file", "GET", "/static/css/site.css", nil},
		{"admin static file", "GET", "/static/admin/css/base.css", nil},
		{"missing static file", "GET", "/static/css/nope.css", nil},
		{"body at the limit", "POST", "/echo", bytes.Repeat([]byte("a"), limit)},
		{"body above the limit", "POST", "/echo", bytes.Repeat([]byte("a"), limit+1)},
	}
	ask := func(t *testing.T) []importAnswer {
		t.Helper()
		client := &http.Client{Timeout: 30 * time.Second}
		var out []importAnswer
		for _, p := range probes {
			req, err := http.NewRequest(p.method, "http://"+addr+p.path, bytes.NewReader(p.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("%s: body: %v", p.name, err)
			}
			a := importAnswer{status: resp.StatusCode}
			if resp.StatusCode == 200 {
				a.mediaType, _, _ = mime.ParseMediaType(resp.Header.Get("Content-Type"))
				a.body = string(body)
			}
			if a.mediaType == "application/json" {
				// Debian's uwsgi_params sets HTTP_HOST from $host, which
				// drops the port; berth passes Host as the client sent it
				// (as upstream nginx's uwsgi_params does). Compared apart.
				var m map[string]any
				if err := json.Unmarshal(body, &m); err != nil {
					t.Fatalf("%s: %v: %q", p.name, err, body)
				}
				if h, _ := m["host"].(string); h != "127.0.0.1" && h != addr {
					t.Errorf("%s: Host %q, want %q with or without the port", p.name, h, addr)
				}
				delete(m, "host")
				b, _ := json.Marshal(m)
				a.body = string(b)
			}
			out = append(out, a)
		}
		return out
	}

	// The old stack: uWSGI behind nginx.
	before := func() []importAnswer {
		uw := startPeer(t, "uwsgi", dir, "uwsgi", "--ini", filepath.Join(dir, "uwsgi.ini"))
		waitUnixSocket(t, "uwsgi", filepath.Join(dir, "uwsgi.sock"), 20*time.Second, uw.exited, uw.out.String)
		ng := startPeer(t, "nginx", dir, nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
		waitTCP(t, "nginx", addr, 20*time.Second, ng.exited, func() string {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return string(b)
		})
		answers := ask(t)
		ng.stop(t)
		uw.stop(t)
		return answers
	}()
	if before[0].status != 200 || before[2].status != 200 || before[5].status != 200 || before[6].status != 413 {
		t.Fatalf("nginx + uWSGI do not serve the site as the test expects: %+v", before)
	}

	// The move: one command.
	cmd := exec.Command(berthBinary(t), "import", "nginx.conf", "uwsgi.ini")
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("berth import: %v\n%s", err, stderr.String())
	}
	imported := stdout.String()
	if _, err := config.Parse("berth.yaml", []byte(imported)); err != nil {
		t.Fatalf("the imported config does not pass berth check: %v\n%s", err, imported)
	}
	for _, want := range []string{
		fmt.Sprintf("- %s ", addr),
		"module: mysite.wsgi:application",
		"url: /static/",
		"dir: " + site + "/collected-static ",
		"max_body_size: 64Ki",
		"python: " + systemPython,
	} {
		if !strings.Contains(imported, want) {
			t.Errorf("imported config lacks %q:\n%s", want, imported)
		}
	}

	// The new stack: berth alone, on the imported config as printed (the
	// harness only adds an admin address of its own).
	startBerth(t, berthOpts{config: imported})
	after := ask(t)
	for i, p := range probes {
		if before[i] != after[i] {
			t.Errorf("%s: nginx + uWSGI answered %d %s (%d bytes), berth %d %s (%d bytes)", p.name,
				before[i].status, before[i].mediaType, len(before[i].body), after[i].status, after[i].mediaType, len(after[i].body))
		}
	}
	if t.Failed() {
		t.Logf("imported config:\n%s\nberth import's summary: %s", imported, stderr.String())
	}
}

// peer is an nginx or uWSGI process the test started.
type peer struct {
	// stopSig ends it (zero: SIGTERM). uWSGI without die-on-term reloads
	// on SIGTERM; SIGINT stops it.
	stopSig  syscall.Signal
	cmd      *exec.Cmd
	out      *syncBuffer
	exited   chan error
	stopOnce sync.Once
}

// startPeer starts a process in its own process group, stopped at the
// latest when the test ends.
func startPeer(t *testing.T, name, dir string, argv ...string) *peer {
	t.Helper()
	p := &peer{cmd: exec.Command(argv[0], argv[1:]...), out: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A daemon the peer started in a session of its own (uWSGI's
	// attach-daemon) may hold the output pipe open after the peer is gone.
	p.cmd.WaitDelay = 3 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop ends the process group: SIGTERM, then SIGKILL after 10s. Only the
// first call acts.
func (p *peer) stop(t *testing.T) {
	p.stopOnce.Do(func() {
		sig := p.stopSig
		if sig == 0 {
			sig = syscall.SIGTERM
		}
		syscall.Kill(-p.cmd.Process.Pid, sig)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Logf("%s did not stop on %v within 10s; killing it", p.cmd.Path, sig)
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	})
}

// waitTCP polls addr until it accepts a connection.
func waitTCP(t testing.TB, name, addr string, d time.Duration, exited <-chan error, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
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
			t.Fatalf("%s not listening on %s after %s: %v\n%s", name, addr, d, err, logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
