package tests

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestImportMailman3Web moves a real Debian site: mailman3-web (Postorius
// and HyperKitty, a Django project) as Debian ships it, with its own
// /etc/mailman3/uwsgi.ini and /etc/mailman3/nginx.conf. The old stack (nginx
// + uWSGI on those files, only sockets, ports and log paths moved into the
// test's directory) and berth (berth import of the two files, the listen
// address the only edit, berth check, berth run as PID 1) answer the same
// pages and static files with the same status, Location and body length,
// and berth runs the workers and the qcluster program as www-data.
func TestImportMailman3Web(t *testing.T) {
	const nginx = "/usr/sbin/nginx"
	requireFiles(t, nginx, "/usr/lib/uwsgi/plugins/python3_plugin.so", "/etc/mailman3/uwsgi.ini",
		"/etc/mailman3/nginx.conf", "/usr/share/mailman3-web/wsgi.py", "/etc/nginx/mime.types")
	if os.Geteuid() != 0 {
		t.Skip("the site runs as www-data: berth and uWSGI must start as root")
	}
	dir, err := os.MkdirTemp("", "mailman")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Debian's /run/mailman3-web belongs to www-data: uWSGI, dropped to
	// it, makes its socket there.
	if err := os.Chown(dir, 33, 33); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	ini, _ := os.ReadFile("/etc/mailman3/uwsgi.ini")
	vhost, _ := os.ReadFile("/etc/mailman3/nginx.conf")
	addr := freeAddr(t)
	sock := filepath.Join(dir, "uwsgi.sock")

	// The old stack, on Debian's files: uWSGI listens on a socket of the
	// test's, and nginx (as www-data, as Debian's does) includes the vhost
	// with its listen, upstream socket and log paths moved.
	oldIni := regexp.MustCompile(`(?m)^uwsgi-socket = .*$`).ReplaceAllString(string(ini), "uwsgi-socket = "+sock)
	oldIni = regexp.MustCompile(`(?m)^logto = .*$`).ReplaceAllString(oldIni, "logto = "+filepath.Join(dir, "uwsgi.log"))
	oldVhost := strings.NewReplacer(
		"listen 80;", "listen "+addr+";", "listen [::]:80;", "",
		"unix:/run/mailman3-web/uwsgi.sock", "unix:"+sock,
		"/var/log/nginx/mailman3/", dir+"/").Replace(string(vhost))
	mainConf := fmt.Sprintf("user www-data;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\n"+
		"http {\n  include /etc/nginx/mime.types;\n  include %s/vhost.conf;\n}\n", dir, dir, dir)
	for name, text := range map[string]string{"uwsgi.ini": oldIni, "vhost.conf": oldVhost, "nginx.conf": mainConf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	client := &http.Client{Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(t *testing.T, path string) (answer, []byte) {
		t.Helper()
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %s: body: %v", path, err)
		}
		a := answer{status: resp.StatusCode, location: resp.Header.Get("Location")}
		if resp.StatusCode < 400 {
			// Error pages differ in wording (nginx's HTML, berth's text);
			// what is served must match byte for byte in length.
			a.length = len(body)
		}
		return a, body
	}
	pages := []string{"/", "/postorius/lists/", "/hyperkitty/", "/admin/login/", "/accounts/login/",
		"/accounts/signup/", "/postorius/domains/", "/hyperkitty/list/nobody@example.com/",
		"/mailman3/static/favicon.ico", "/mailman3/static/postorius/img/favicon.ico",
		"/mailman3/static/admin/css/base.css", "/mailman3/static/no-such-file.css"}
	staticRef := regexp.MustCompile(`"(/mailman3/static/[^"?#]+)"`)
	ask := func(t *testing.T) map[string]answer {
		t.Helper()
		out := map[string]answer{}
		var refs []string
		for _, p := range pages {
			a, body := get(t, p)
			out[p] = a
			if p == "/accounts/login/" || p == "/hyperkitty/" {
				for _, m := range staticRef.FindAllSubmatch(body, -1) {
					refs = append(refs, string(m[1]))
				}
			}
		}
		// The CSS, scripts and images the pages link to.
		for _, p := range refs {
			if _, ok := out[p]; !ok {
				out[p], _ = get(t, p)
			}
		}
		return out
	}

	before := func() map[string]answer {
		uw := startPeer(t, "uwsgi", dir, "uwsgi", "--ini", filepath.Join(dir, "uwsgi.ini"))
		uw.stopSig = syscall.SIGINT // Debian's ini has no die-on-term
		waitUnixSocket(t, "uwsgi", sock, 60*time.Second, uw.exited, func() string {
			b, _ := os.ReadFile(filepath.Join(dir, "uwsgi.log"))
			return string(b)
		})
		ng := startPeer(t, "nginx", dir, nginx, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"),
			"-g", "daemon off;")
		waitTCP(t, "nginx", addr, 20*time.Second, ng.exited, func() string {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return string(b)
		})
		answers := ask(t)
		ng.stop(t)
		uw.stop(t)
		return answers
	}()
	if before["/hyperkitty/"].status != 200 || before["/"].status != 301 || before["/mailman3/static/favicon.ico"].status != 200 {
		t.Fatalf("nginx + uWSGI do not serve the site as the test expects: %+v", before)
	}

	// The move: berth import of Debian's two files; the listen address is
	// the only edit.
	cmd := exec.Command(berthBinary(t), "import", "/etc/mailman3/uwsgi.ini", "/etc/mailman3/nginx.conf")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("berth import: %v\n%s", err, stderr.String())
	}
	imported := stdout.String()
	for _, want := range []string{"user: www-data", "file: /var/lib/mailman3/web/static/postorius/img/favicon.ico",
		"name: qcluster", "process = 2", "not a uWSGI option", "the nearest option is processes"} {
		if !strings.Contains(imported, want) {
			t.Errorf("imported config lacks %q:\n%s", want, imported)
		}
	}
	edited := strings.Replace(imported, "  - :80 ", fmt.Sprintf("  - %q ", addr), 1)
	if edited == imported {
		t.Fatalf("no listen :80 to edit in the imported config:\n%s", imported)
	}
	cfgPath := filepath.Join(dir, "berth.yaml")
	if err := os.WriteFile(cfgPath, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(berthBinary(t), "check", "--config", cfgPath).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "as www-data (uid 33)") {
		t.Fatalf("berth check on the imported config: %v\n%s", err, out)
	}

	b := startBerth(t, berthOpts{config: edited, host: true})
	after := ask(t)
	keys := make([]string, 0, len(before))
	for p := range before {
		keys = append(keys, p)
	}
	sort.Strings(keys)
	for _, p := range keys {
		if before[p] != after[p] {
			t.Errorf("%s: nginx + uWSGI %+v, berth %+v", p, before[p], after[p])
		} else {
			t.Logf("%-70s %d %6d bytes %s", p, after[p].status, after[p].length, after[p].location)
		}
	}
	if len(keys) < 20 {
		t.Errorf("only %d pages and files compared; the pages should link to more static files", len(keys))
	}
	st := b.statusDoc()
	for _, w := range st.Workers {
		if uid := procUID(t, w.PID); uid != "33" {
			t.Errorf("worker %s runs as uid %s, want 33 (www-data)", w.ID, uid)
		}
	}
	var prog int
	waitFor(t, 20*time.Second, "the qcluster program running", func() bool {
		for _, p := range b.companions().Programs {
			if p.Name == "qcluster" && p.PID > 0 {
				prog = p.PID
				return true
			}
		}
		return false
	})
	if uid := procUID(t, prog); uid != "33" {
		t.Errorf("qcluster runs as uid %s, want 33 (www-data)", uid)
	}
}

// answer is what the side-by-side comparison holds of a response.
type answer struct {
	status   int
	location string
	length   int // of the body, for statuses below 400
}
