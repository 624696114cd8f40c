package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// accessApp answers its path; /slow waits, /die ends the worker without an
// answer (berth's 502).
const accessApp = `import os, time
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/slow"):
        time.sleep(1.5)
    if path.endswith("/die"):
        os._exit(1)
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Powered-By", "app")])
    return [("ok " + path).encode()]
`

// clientFrom is an HTTP client whose connections come from the loopback
// address src (127.0.0.2 is not 127.0.0.1: a client the config does not
// trust as a proxy).
func clientFrom(src string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Timeout: 20 * time.Second,
		Transport:     &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func fetch(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// htpasswdFile makes an htpasswd file with Debian's htpasswd: alice in
// bcrypt (-B), bob in apr1 (-m), carol in {SHA} (-s).
func htpasswdFile(t *testing.T, dir string) string {
	t.Helper()
	requireFiles(t, "htpasswd")
	path := filepath.Join(dir, "users")
	for i, u := range [][3]string{{"-B", "alice", "a-secret"}, {"-m", "bob", "b-secret"}, {"-s", "carol", "c-secret"}} {
		args := []string{"-b", u[0]}
		if i == 0 {
			args = append(args, "-c")
		}
		if out, err := exec.Command("htpasswd", append(args, path, u[1], u[2])...).CombinedOutput(); err != nil {
			t.Fatalf("htpasswd: %v\n%s", err, out)
		}
	}
	os.Chmod(path, 0o644)
	return path
}

// TestAccessRules runs each of nginx's protective duties through the real
// binary with real clients: headers on every response (berth's errors too),
// a canonical-host redirect, a path redirect, a fixed answer, allow/deny on
// the address a trusted proxy forwarded (and not on an untrusted client's
// X-Forwarded-For), a rate limit, basic auth with files Debian's htpasswd
// wrote in bcrypt, apr1 and SHA, the connection cap per client, and error
// pages on a killed worker and a queue timeout, as HTML to clients that
// accept it; each rejection counted by reason.
func TestAccessRules(t *testing.T) {
	dir, err := os.MkdirTemp("", "access")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	users := htpasswdFile(t, dir)
	page := filepath.Join(dir, "50x.html")
	os.WriteFile(page, []byte("<html><body>sorry, we are on it</body></html>\n"), 0o644)
	cfg := fmt.Sprintf(`workers: {count: 1, timeout: 10s}
proxy:
  trusted_proxies: [127.0.0.1/32]
  access_log: '$remote_addr $remote_user "$request" $status'
  headers: {X-Frame-Options: DENY, X-Powered-By: ""}
  limits: {connections_per_client: 2}
  queue: {timeout: 500ms}
  error_pages: {502: %[1]s, 503: %[1]s}
hosts:
  - {match: www.example.test, redirect: {to: "https://example.test$request_uri", status: 301}}
locations:
  - path: /admin/
    access: [{allow: 10.0.0.0/8}, {deny: all}]
  - exact: /login/
    limit: {rate: 1/s, burst: 1, nodelay: true}
  - path: /staging/
    auth: {basic: {realm: staff, users: %[2]s}}
    headers: {X-Robots-Tag: noindex}
  - path: /old/
    redirect: {to: "https://example.test/new/$rest$is_args$args", status: 301}
  - exact: /healthz
    return: {status: 200, body: "fine\n"}
`, page, users)
	b := startBerth(t, berthOpts{config: cfg, app: map[string]string{"wsgi.py": accessApp}})
	local := clientFrom("127.0.0.1")
	stranger := clientFrom("127.0.0.2")
	url := b.url

	t.Run("headers on every response", func(t *testing.T) {
		resp, _ := fetch(t, local, url("/hello"))
		if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Powered-By") != "" {
			t.Errorf("app response fields: %v", resp.Header)
		}
		resp, _ = fetch(t, local, url("/login/x/../../admin/"), "X-Forwarded-For", "192.0.2.9")
		if resp.StatusCode != 403 || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("berth's own 403: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("canonical host", func(t *testing.T) {
		resp, _ := fetch(t, local, url("/a?b=1"), "Host", "www.example.test")
		if resp.StatusCode != 301 || resp.Header.Get("Location") != "https://example.test/a?b=1" {
			t.Errorf("%d Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("path redirect", func(t *testing.T) {
		resp, _ := fetch(t, local, url("/old/a%20b/c?x=1"))
		if resp.StatusCode != 301 || resp.Header.Get("Location") != "https://example.test/new/a%20b/c?x=1" {
			t.Errorf("%d Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("fixed answer", func(t *testing.T) {
		resp, body := fetch(t, local, url("/healthz"))
		if resp.StatusCode != 200 || body != "fine\n" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})
	t.Run("allow and deny", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			client *http.Client
			xff    string
			want   int
		}{
			{"trusted proxy forwarding 10.1.2.3", local, "10.1.2.3", 200},
			{"trusted proxy forwarding 192.0.2.7", local, "192.0.2.7", 403},
			{"the trusted proxy itself", local, "", 403},
			{"untrusted client claiming 10.1.2.3", stranger, "10.1.2.3", 403},
		} {
			var hdr []string
			if c.xff != "" {
				hdr = []string{"X-Forwarded-For", c.xff}
			}
			if resp, _ := fetch(t, c.client, url("/admin/x"), hdr...); resp.StatusCode != c.want {
				t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.want)
			}
		}
	})
	t.Run("rate limit", func(t *testing.T) {
		var got []int
		for i := 0; i < 4; i++ {
			resp, _ := fetch(t, stranger, url("/login/"))
			got = append(got, resp.StatusCode)
		}
		if fmt.Sprint(got) != "[200 200 429 429]" {
			t.Errorf("4 requests at once with rate 1/s, burst 1, nodelay: %v, want [200 200 429 429]", got)
		}
	})
	t.Run("basic auth", func(t *testing.T) {
		resp, _ := fetch(t, local, url("/staging/x"))
		if resp.StatusCode != 401 || resp.Header.Get("Www-Authenticate") != `Basic realm="staff"` {
			t.Errorf("no credentials: %d %q", resp.StatusCode, resp.Header.Get("Www-Authenticate"))
		}
		for _, u := range [][2]string{{"alice", "a-secret"}, {"bob", "b-secret"}, {"carol", "c-secret"}} {
			req, _ := http.NewRequest("GET", url("/staging/x"), nil)
			req.SetBasicAuth(u[0], u[1])
			resp, err := local.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Robots-Tag") != "noindex" {
				t.Errorf("%s: %d %v", u[0], resp.StatusCode, resp.Header)
			}
			req.SetBasicAuth(u[0], "wrong")
			if resp, _ = local.Do(req); resp.StatusCode != 401 {
				t.Errorf("%s with a wrong password: %d", u[0], resp.StatusCode)
			}
		}
		b.waitLog(`127.0.0.1 alice "GET /staging/x HTTP/1.1" 200`, 5*time.Second)
	})
	t.Run("connections per client", func(t *testing.T) {
		var wg sync.WaitGroup
		var codes [3]atomic.Int64
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				time.Sleep(time.Duration(i) * 200 * time.Millisecond)
				resp, _ := fetch(t, stranger, url(fmt.Sprintf("/c%d/slow", i)))
				codes[i].Store(int64(resp.StatusCode))
			}(i)
		}
		wg.Wait()
		if codes[2].Load() != 503 {
			t.Errorf("the third request in progress from one client: %d, want 503 (statuses %d %d)", codes[2].Load(), codes[0].Load(), codes[1].Load())
		}
	})
	t.Run("error pages", func(t *testing.T) {
		resp, body := fetch(t, local, url("/die"), "Accept", "text/html,*/*;q=0.8")
		if resp.StatusCode != 502 || !strings.Contains(body, "sorry, we are on it") || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("killed worker, HTML client: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		waitFor(t, 15*time.Second, "the worker replaced", func() bool { return b.readyWorkers() == 1 })
		resp, body = fetch(t, local, url("/die"))
		if resp.StatusCode != 502 || strings.Contains(body, "sorry") {
			t.Errorf("killed worker, a client that takes no HTML: %d %q", resp.StatusCode, body)
		}
		waitFor(t, 15*time.Second, "the worker replaced", func() bool { return b.readyWorkers() == 1 })
		// The one worker busy for 1.5 s; a request queued behind it past
		// the queue timeout (500 ms) gets the 503 page.
		done := make(chan struct{})
		go func() { fetch(t, local, url("/q/slow")); close(done) }()
		time.Sleep(200 * time.Millisecond)
		resp, body = fetch(t, local, url("/q/next"), "Accept", "text/html")
		<-done
		if resp.StatusCode != 503 || !strings.Contains(body, "sorry, we are on it") {
			t.Errorf("queue timeout, HTML client: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("rejections counted", func(t *testing.T) {
		m := httpGet(t, "http://"+b.admin+"/metrics")
		for _, want := range []string{
			`berth_access_rejected_total{location="/admin/",reason="deny"}`,
			`berth_access_rejected_total{location="= /login/",reason="rate"}`,
			`berth_access_rejected_total{location="/staging/",reason="auth"}`,
			`berth_access_rejected_total{location="",reason="connections"}`,
		} {
			if !strings.Contains(m, want) {
				t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "berth_access"))
			}
		}
	})
}

// TestAccessReloadUnderLoad changes a rate limit and the headers with a
// live reload while clients hammer the limited location and another one:
// no request fails (only 200s and 429s), and the new limit takes effect.
func TestAccessReloadUnderLoad(t *testing.T) {
	cfg := func(rate string) string {
		return "workers: {count: 2, threads: 4}\nproxy: {access_log: off, headers: {X-Gen: \"" + rate + "\"}}\n" +
			"locations:\n  - {path: /limited/, limit: {rate: " + rate + ", burst: 10, nodelay: true, key: global}}\n"
	}
	b := startBerth(t, berthOpts{config: cfg("20/s"), app: map[string]string{"wsgi.py": okApp}})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	var ok, limited, failed, other atomic.Int64
	var newGen atomic.Bool
	var after429, after200 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			path := "/limited/x"
			if i%4 == 0 {
				path = "/other"
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(b.url(path))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				gen := resp.Header.Get("X-Gen") == "100000/s"
				if gen {
					newGen.Store(true)
				}
				switch {
				case resp.StatusCode == 200 && path == "/other":
					other.Add(1)
				case resp.StatusCode == 200:
					ok.Add(1)
					if gen {
						after200.Add(1)
					}
				case resp.StatusCode == 429:
					limited.Add(1)
					if gen {
						after429.Add(1)
					}
				default:
					failed.Add(1)
				}
			}
		}(i)
	}
	time.Sleep(time.Second)
	// A burst to match: nginx's arithmetic refills in whole milliseconds,
	// and this load sends more than 10 requests within one.
	writeFileAtomic(t, b.cfgPath, strings.ReplaceAll(strings.ReplaceAll(readFile(t, b.cfgPath), "burst: 10", "burst: 1000"), "20/s", "100000/s"))
	waitFor(t, 10*time.Second, "responses of the new config", newGen.Load)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("limited: %d × 200, %d × 429 (after the reload: %d × 200, %d × 429); other: %d × 200; failed: %d",
		ok.Load(), limited.Load(), after200.Load(), after429.Load(), other.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed across the reload", failed.Load())
	}
	if limited.Load() == 0 {
		t.Error("20/s under load never limited: the limit did not apply")
	}
	if after200.Load() < 10*after429.Load() {
		t.Errorf("after the reload to 100000/s: %d × 200, %d × 429: the new limit did not take", after200.Load(), after429.Load())
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
