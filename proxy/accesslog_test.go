package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// combinedApacheLog is Logstash's COMBINEDAPACHELOG grok pattern (the one
// Elastic, Graylog and most log pipelines apply to nginx's combined
// lines), expanded by hand from logstash-patterns-core's definitions into
// RE2: its atomic groups (?>…) become plain groups and its lookarounds are
// dropped, which changes what it backtracks over, not what it matches.
//
//	COMMONAPACHELOG %{IPORHOST:clientip} %{HTTPDUSER:ident} %{USER:auth} \[%{HTTPDATE:timestamp}\] "(?:%{WORD:verb} %{NOTSPACE:request}(?: HTTP/%{NUMBER:httpversion})?|%{DATA:rawrequest})" %{NUMBER:response} (?:%{NUMBER:bytes}|-)
//	COMBINEDAPACHELOG %{COMMONAPACHELOG} %{QS:referrer} %{QS:agent}
var combinedApacheLog = regexp.MustCompile(`^` +
	`(?P<clientip>[0-9A-Fa-f.:]+|[0-9A-Za-z][0-9A-Za-z.-]*) ` +
	`(?P<ident>[a-zA-Z0-9._-]+(?:@[0-9A-Za-z.-]+)?) ` +
	`(?P<auth>[a-zA-Z0-9._-]+) ` +
	`\[(?P<timestamp>(?:0[1-9]|[12][0-9]|3[01]|[1-9])/(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/(?:\d\d){1,2}:(?:2[0123]|[01]?[0-9]):[0-5][0-9]:(?:[0-5]?[0-9]|60) [+-]?[0-9]+)\] ` +
	`"(?:(?P<verb>\w+) (?P<request>\S+)(?: HTTP/(?P<httpversion>[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)))?|(?P<rawrequest>.*?))" ` +
	`(?P<response>[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)) ` +
	`(?:(?P<bytes>[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))|-) ` +
	`(?P<referrer>"(?:\\.|[^\\"])+"|"") ` +
	`(?P<agent>"(?:\\.|[^\\"])+"|"")$`)

// logTraffic sends requests of every kind a log line must survive: odd
// bytes in the target and headers, a body, a refused request line, a 413.
// It returns the access log's lines.
func logTraffic(t *testing.T, format string) []string {
	t.Helper()
	fw := startFake(t, "w1", 2, hello)
	cfg := defaultConfig()
	cfg.AccessLog = format
	cfg.RequestID = true
	cfg.MaxBodySize = 100
	h := startProxy(t, cfg, fw)
	h.get("/plain")
	h.get("/q?a=%22b%22&c=d%20e", "User-Agent", `agent "quoted" \ back`, "Referer", "http://ref.example/x?y=1")
	h.do("HEAD", "/head", nil)
	h.do("POST", "/post", strings.NewReader("a=1"), "Content-Type", "application/x-www-form-urlencoded")
	h.do("POST", "/big", strings.NewReader(strings.Repeat("x", 200)))
	rawRequest(t, h.addr, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nUser-Agent: \xfftab\there\r\n\r\n")
	rawRequest(t, h.addr, "GET /refused HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
	rawRequest(t, h.addr, "GET /http10 HTTP/1.0\r\n\r\n")
	const n = 8
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", h.alog.String())
		}
	}()
	waitFor(t, "8 log lines", 5*time.Second, func() bool { return strings.Count(h.alog.String(), "\n") >= n })
	lines := strings.Split(strings.TrimSuffix(h.alog.String(), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d log lines, want %d:\n%s", len(lines), n, h.alog.String())
	}
	return lines
}

// TestCombinedParsedByLogTools checks every combined line against the
// COMBINEDAPACHELOG pattern field by field, and, when GoAccess is
// installed, that GoAccess's COMBINED parser takes every line.
func TestCombinedParsedByLogTools(t *testing.T) {
	lines := logTraffic(t, "combined")
	want := []struct{ verb, request, status, agent, referrer, raw string }{
		{"GET", "/plain", "200", `"Go-http-client/1.1"`, `"-"`, ""},
		{"GET", "/q?a=%22b%22&c=d%20e", "200", `"agent \x22quoted\x22 \x5C back"`, `"http://ref.example/x?y=1"`, ""},
		{"HEAD", "/head", "200", `"Go-http-client/1.1"`, `"-"`, ""},
		{"POST", "/post", "200", `"Go-http-client/1.1"`, `"-"`, ""},
		{"POST", "/big", "413", `"Go-http-client/1.1"`, `"-"`, ""},
		{"GET", `/caf\xC3\xA9`, "200", `"\xFFtab\x09here"`, `"-"`, ""},
		{"GET", "/refused", "400", `"-"`, `"-"`, ""},
		{"GET", "/http10", "200", `"-"`, `"-"`, ""},
	}
	names := combinedApacheLog.SubexpNames()
	for i, l := range lines {
		m := combinedApacheLog.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("line %d does not match COMBINEDAPACHELOG: %q", i, l)
			continue
		}
		f := map[string]string{}
		for j, name := range names {
			f[name] = m[j]
		}
		w := want[i]
		if f["clientip"] != "127.0.0.1" || f["ident"] != "-" || f["auth"] != "-" || f["verb"] != w.verb || f["request"] != w.request ||
			f["response"] != w.status || f["agent"] != w.agent || f["referrer"] != w.referrer || f["rawrequest"] != w.raw {
			t.Errorf("line %d %q parsed as %v, want %+v", i, l, f, w)
		}
		if _, err := time.Parse("02/Jan/2006:15:04:05 -0700", f["timestamp"]); err != nil {
			t.Errorf("line %d: timestamp: %v", i, err)
		}
	}

	if _, err := exec.LookPath("goaccess"); err != nil {
		t.Log("goaccess is not installed (tests/install-deps installs it): only the grok pattern checked")
		return
	}
	dir := tempDir(t)
	logPath := filepath.Join(dir, "access.log")
	os.WriteFile(logPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	out, err := exec.Command("goaccess", logPath, "--log-format=COMBINED", "--no-global-config", "-o", filepath.Join(dir, "r.json")).CombinedOutput()
	if err != nil {
		t.Fatalf("goaccess: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "r.json"))
	var report struct {
		General struct {
			Total  int `json:"total_requests"`
			Valid  int `json:"valid_requests"`
			Failed int `json:"failed_requests"`
		} `json:"general"`
	}
	if err := json.Unmarshal(data, &report); err != nil {
		t.Fatalf("goaccess report: %v\n%s", err, data)
	}
	if g := report.General; g.Total != len(lines) || g.Failed != 0 {
		t.Errorf("goaccess: %+v for %d lines; it failed to parse some", g, len(lines))
	}
}

// jsonFields are the JSON log's documented field names (README "Access
// log"): a change here is a change users' parsers see.
var jsonFields = []string{"bytes", "duration_ms", "host", "method", "proto", "referer", "remote", "request_id",
	"status", "time", "ua", "upstream_duration_ms", "uri", "user", "worker"}

// TestJSONLogParsed decodes every JSON line with a strict JSON decoder and
// checks the stable field set and each field's type.
func TestJSONLogParsed(t *testing.T) {
	lines := logTraffic(t, "json")
	for i, l := range lines {
		dec := json.NewDecoder(strings.NewReader(l))
		dec.UseNumber()
		var e map[string]any
		if err := dec.Decode(&e); err != nil || dec.More() {
			t.Errorf("line %d is not one JSON object: %v: %q", i, err, l)
			continue
		}
		var keys []string
		for k := range e {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, jsonFields) {
			t.Errorf("line %d fields %v, want %v", i, keys, jsonFields)
		}
		if _, err := time.Parse(time.RFC3339Nano, e["time"].(string)); err != nil {
			t.Errorf("line %d time: %v", i, err)
		}
		for _, k := range []string{"status", "bytes", "duration_ms"} {
			if _, ok := e[k].(json.Number); !ok {
				t.Errorf("line %d %s = %#v, want a number", i, k, e[k])
			}
		}
		if id, _ := e["request_id"].(string); !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
			t.Errorf("line %d request_id %q", i, id)
		}
		// Workers answered the 200s; the proxy itself the 400 and the 413.
		up, isNum := e["upstream_duration_ms"].(json.Number)
		if fromWorker := e["worker"] != ""; fromWorker != isNum || (e["upstream_duration_ms"] != nil) != isNum {
			t.Errorf("line %d worker %q but upstream_duration_ms %#v", i, e["worker"], e["upstream_duration_ms"])
		} else if isNum {
			u, _ := up.Float64()
			d, _ := e["duration_ms"].(json.Number).Float64()
			if u < 0 || u > d+0.001 {
				t.Errorf("line %d upstream_duration_ms %v beyond duration_ms %v", i, u, d)
			}
		}
	}
	if !strings.Contains(lines[5], `"uri":"/café"`) || !strings.Contains(lines[5], `"ua":"\ufffdtab\there"`) {
		t.Errorf("non-ASCII line: %s", lines[5])
	}
}

// nginxLogFormat is a custom format using every variable berth and nginx
// both fill the same way for the same request.
const nginxLogFormat = `$remote_addr|$remote_user|"$request"|$request_method|$request_uri|$uri|$args|$is_args|` +
	`$server_protocol|$scheme|$host|$status|$body_bytes_sent|"$http_user_agent"|"$http_referer"|` +
	`$http_x_missing|$sent_http_content_type|$sent_http_x_app|$sent_http_x_missing|$query_string`

// TestCustomFormatMatchesNginx writes the same log_format with nginx
// (uwsgi_pass to a fake worker) and with berth (in front of the same
// worker), sends both the same requests, and compares the lines, with
// default and with JSON escaping. The variables whose values differ by
// nature (times, ports, pids) are checked for their shape.
func TestCustomFormatMatchesNginx(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("nginx is not installed (tests/install-deps installs it)")
	}
	fw := startFake(t, "w1", 4, func(fw *fakeWorker, c net.Conn, req *fakeReq) bool {
		body := "hello"
		if req.vars["REQUEST_METHOD"] == "HEAD" {
			body = ""
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nX-App: a\xc3\xa9\r\nContent-Length: 5\r\n\r\n%s", body)
		return req.vars["BERTH_KEEPALIVE"] == "1"
	})
	requests := []string{
		"GET /plain HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: ua\r\n\r\n",
		"GET /a/../b%20c/%22q%22?x=1&y=%22 HTTP/1.1\r\nHost: h\r\nUser-Agent: agent \"q\" \\ \xc3\xa9\r\nReferer: http://r/\r\n\r\n",
		"HEAD /head? HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"GET /http10 HTTP/1.0\r\n\r\n",
	}
	for _, esc := range []string{"", "escape=json "} {
		format := esc + nginxLogFormat
		t.Run("escape="+strings.TrimSuffix(strings.TrimPrefix(esc, "escape="), " "), func(t *testing.T) {
			nginxLog, nginxAddr := startNginxLogging(t, format, fw.path)
			cfg := defaultConfig()
			cfg.AccessLog = format
			h := startProxy(t, cfg, fw)
			for _, r := range requests {
				sendRaw(t, nginxAddr, r)
				sendRaw(t, h.addr, r)
			}
			var theirs []string
			waitFor(t, "nginx's log", 5*time.Second, func() bool {
				data, _ := os.ReadFile(nginxLog)
				theirs = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
				return len(theirs) == len(requests)
			})
			waitFor(t, "berth's log", 5*time.Second, func() bool { return strings.Count(h.alog.String(), "\n") == len(requests) })
			ours := strings.Split(strings.TrimSuffix(h.alog.String(), "\n"), "\n")
			for i := range requests {
				if ours[i] != theirs[i] {
					t.Errorf("request %d:\nberth %s\nnginx %s", i, ours[i], theirs[i])
				}
			}
		})
	}

	// The variables whose values differ by nature: their shape is nginx's.
	cfg := defaultConfig()
	cfg.AccessLog = `[$time_local] $time_iso8601 $msec $request_time $upstream_response_time $upstream_addr $remote_port $server_port $pid $hostname $worker $request_id`
	cfg.RequestID = true
	h := startProxy(t, cfg, fw)
	h.get("/x")
	cfg.RequestID = false
	h.srv.SetConfig(cfg)
	h.get("/y")
	waitFor(t, "2 lines", 5*time.Second, func() bool { return strings.Count(h.alog.String(), "\n") == 2 })
	shape := regexp.MustCompile(`^\[\d\d/[A-Z][a-z][a-z]/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ` +
		`\d{10}\.\d{3} \d+\.\d{3} \d+\.\d{3} unix:` + regexp.QuoteMeta(fw.path) + ` \d+ \d+ \d+ \S+ w1 ([0-9a-f]{32}|-)$`)
	lines := strings.Split(strings.TrimSuffix(h.alog.String(), "\n"), "\n")
	for _, l := range lines {
		if !shape.MatchString(l) {
			t.Errorf("line %q does not have nginx's shapes", l)
		}
	}
	if !strings.HasSuffix(lines[1], " -") || strings.HasSuffix(lines[0], " -") {
		t.Errorf("$request_id with request_id on, then off: %q", lines)
	}
}

// sendRaw sends one raw request and reads its whole answer, knowing that
// a HEAD answer has no body whatever its Content-Length says.
func sendRaw(t *testing.T, addr, raw string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s: %q: %v", addr, raw, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// startNginxLogging runs nginx with an access log in format, passing every
// request to the uwsgi socket; it returns the log's path and the address.
func startNginxLogging(t *testing.T, format, socket string) (string, string) {
	t.Helper()
	dir := tempDir(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	escape, text, _ := strings.Cut(format, " ")
	if !strings.HasPrefix(escape, "escape=") {
		escape, text = "", format
	}
	conf := fmt.Sprintf(`%s daemon off; master_process off; pid %s/nginx.pid; error_log %s/error.log;
events { worker_connections 64; }
http {
  log_format t %s '%s';
  access_log %s/access.log t;
  client_body_temp_path %s;
  server { listen %s; location / { include /etc/nginx/uwsgi_params; uwsgi_pass unix:%s; } }
}
`, user, dir, dir, escape, strings.ReplaceAll(text, "'", `\'`), dir, dir, addr, socket)
	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
	cmd := exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "nginx to listen", 5*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return filepath.Join(dir, "access.log"), addr
}

// TestAccessLogConfigRefused: a format the proxy cannot write is refused
// by SetConfig, and the running one stays.
func TestAccessLogConfigRefused(t *testing.T) {
	h := startProxy(t, defaultConfig())
	for _, f := range []string{"verbose", "$nope", "$remote_addr $bytes_sent", "escape=xml $status"} {
		if err := h.srv.SetConfig(control.Proxy{AccessLog: f}); err == nil {
			t.Errorf("SetConfig accepted access_log %q", f)
		}
	}
	if h.srv.cfg.Load().log != logOff {
		t.Errorf("a refused config changed the log")
	}
}
