package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy/conformance"
	"github.com/berth-dev/berth/worker"
)

// conformanceApp records every request it gets as one JSON string per
// line, "METHOD REQUEST_URI body" (body as latin-1), in served.log beside
// itself, and echoes the body. It writes the record before it answers, so
// the record is there once the response is.
const conformanceApp = `
import json, os

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'served.log')


def application(environ, start_response):
    body = environ['wsgi.input'].read()
    rec = environ['REQUEST_METHOD'] + ' ' + environ.get('REQUEST_URI', '') + ' ' + body.decode('latin-1')
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + '\n').encode())
    finally:
        os.close(fd)
    start_response('200 OK', [('Content-Type', 'application/octet-stream'), ('Content-Length', str(len(body)))])
    return [body]
`

// conformanceNginxConf is nginx as it is usually put in front of a WSGI
// server: defaults everywhere but the body limit, which is berth's default,
// and lingering_timeout. nginx waits that long (5 s by default) for the
// rest of a body it refused (413) before it closes; 1 s keeps that close
// well inside Replay's 5 s deadline without changing any outcome.
const conformanceNginxConf = `
daemon off;
master_process off;
worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path {{DIR}}/tmp/body;
    proxy_temp_path {{DIR}}/tmp/proxy;
    fastcgi_temp_path {{DIR}}/tmp/fastcgi;
    uwsgi_temp_path {{DIR}}/tmp/uwsgi;
    scgi_temp_path {{DIR}}/tmp/scgi;
    client_max_body_size 1m;
    lingering_timeout 1s;
    server {
        listen unix:{{DIR}}/http.sock;
        location / {
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{{DIR}}/app.sock;
        }
    }
}
`

// TestConformanceNginx replays every case of the proxy's conformance
// corpus (proxy/testdata/conformance.txt) against real nginx (uwsgi_pass
// to a berth worker running a recording app) and checks nginx's outcome
// against the case's nginx: line. The corpus's claim "where the RFC allows
// a choice, berth makes nginx's" rests on these lines, so they are
// measured, not remembered.
func TestConformanceNginx(t *testing.T) {
	const nginx = "/usr/sbin/nginx"
	requireFiles(t, nginx, "/etc/nginx/uwsgi_params")
	corpus := filepath.Join(repoRoot(), "proxy", "testdata", "conformance.txt")
	cases, err := conformance.Load(corpus)
	if err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	runtimePath, err := worker.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	apps := filepath.Join(dir, "apps")
	for path, data := range map[string]string{
		filepath.Join(apps, "recorder.py"): conformanceApp,
		filepath.Join(dir, "nginx.conf"):   strings.ReplaceAll(conformanceNginxConf, "{{DIR}}", dir),
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "n.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	startNginxWorker(t, notify, runtimePath, dir, apps, "app", "recorder", "")

	cmd := exec.Command(nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	httpSock := filepath.Join(dir, "http.sock")
	waitUnixSocket(t, "nginx", httpSock, 20*time.Second, exited, func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return string(b)
	})

	applog := &servedLog{path: filepath.Join(apps, "served.log")}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("unix", httpSock)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			applog.skip(t)
			c := dial(t)
			statuses, closed, err := conformance.Replay(c, tc.Raw, len(tc.Nginx.Statuses))
			c.Close()
			got := conformance.Outcome{Statuses: statuses, Closed: closed, Served: conformance.Strip(applog.take(t))}
			if err == nil && fmt.Sprint(got.Statuses) == fmt.Sprint(tc.Nginx.Statuses) && got.Closed == tc.Nginx.Closed &&
				fmt.Sprintf("%q", got.Served) == fmt.Sprintf("%q", tc.Nginx.Served) {
				return
			}
			if err != nil {
				t.Errorf("%s:%d: replaying %q: %v (statuses so far %v)", corpus, tc.Line, tc.Raw, err, statuses)
			} else {
				t.Errorf("%s:%d: nginx: %s, served %q; the corpus says nginx: %s, served %q",
					corpus, tc.Line, got, got.Served, tc.Nginx, tc.Nginx.Served)
			}
			// Say what nginx does in the corpus's syntax, measured again
			// without knowing how many responses to wait for.
			c = dial(t)
			defer c.Close()
			statuses, closed, err = conformance.Observe(c, tc.Raw, time.Second)
			seen := conformance.Outcome{Statuses: statuses, Closed: closed, Served: conformance.Strip(applog.take(t))}
			var b strings.Builder
			fmt.Fprintf(&b, "nginx: %s", seen)
			for _, s := range seen.Served {
				fmt.Fprintf(&b, "\nnginx-served: %s", strconv.Quote(s))
			}
			if err != nil {
				fmt.Fprintf(&b, "\n(then: %v)", err)
			}
			t.Logf("observed:\n%s", b.String())
		})
	}

	// The recorder must never have failed: a 500 of its own would pass for
	// nginx's outcome.
	if b, _ := os.ReadFile(filepath.Join(dir, "app.stderr")); bytes.Contains(b, []byte("Traceback")) {
		t.Errorf("the recording app failed:\n%s", b)
	}
	if t.Failed() {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Logf("nginx error.log:\n%s", b)
	}
}

// servedLog reads the recording app's log from where the last case left
// off.
type servedLog struct {
	path string
	off  int
}

// take returns the records added since the last take or skip, as the
// app's strings (latin-1 back to bytes).
func (l *servedLog) take(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(l.path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(b) < l.off {
		t.Fatalf("%s shrank", l.path)
	}
	lines := strings.SplitAfter(string(b[l.off:]), "\n")
	var out []string
	for _, line := range lines {
		if !strings.HasSuffix(line, "\n") {
			break // a record still being written: the next take gets it
		}
		l.off += len(line)
		var s string
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("%s: bad record %q: %v", l.path, line, err)
		}
		raw := make([]byte, 0, len(s))
		for _, r := range s {
			raw = append(raw, byte(r))
		}
		out = append(out, string(raw))
	}
	return out
}

// skip forgets records nobody waited for (a request the app got after
// its case had ended).
func (l *servedLog) skip(t *testing.T) { l.take(t) }
