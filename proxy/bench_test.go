package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

// fastWorker is a hello-world uwsgi worker that allocates nothing per
// request, so allocation counts in a benchmark are the proxy's.
type fastWorker struct {
	path     string
	l        *net.UnixListener
	requests atomic.Int64
}

const helloResp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"

func startFastWorker(tb testing.TB, threads int) *fastWorker {
	tb.Helper()
	fw := &fastWorker{path: filepath.Join(tempDir(tb), "fast.sock")}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: fw.path, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	fw.l = l
	for i := 0; i < threads; i++ {
		go fw.thread()
	}
	tb.Cleanup(func() { l.Close() })
	return fw
}

func (fw *fastWorker) thread() {
	buf := make([]byte, 64<<10)
	for {
		c, err := fw.l.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReaderSize(c, 32<<10)
		for {
			if _, err := io.ReadFull(br, buf[:4]); err != nil {
				break
			}
			n := int(binary.LittleEndian.Uint16(buf[1:3]))
			if _, err := io.ReadFull(br, buf[:n]); err != nil {
				break
			}
			cl, keep := 0, false
			for v := buf[:n]; len(v) >= 4; {
				kl := int(binary.LittleEndian.Uint16(v))
				k := v[2 : 2+kl]
				vl := int(binary.LittleEndian.Uint16(v[2+kl:]))
				val := v[4+kl : 4+kl+vl]
				switch string(k) {
				case "CONTENT_LENGTH":
					if len(val) > 0 {
						cl, _ = strconv.Atoi(string(val))
					}
				case "BERTH_KEEPALIVE":
					keep = true
				}
				v = v[4+kl+vl:]
			}
			if cl > 0 {
				br.Discard(cl)
			}
			fw.requests.Add(1)
			if _, err := io.WriteString(c, helloResp); err != nil || !keep {
				break
			}
		}
		c.Close()
	}
}

func benchConfig() control.Proxy {
	cfg := defaultConfig()
	cfg.QueueSize = 4096
	cfg.AccessLog = "combined"
	return cfg
}

// BenchmarkServeHTTP measures the proxy's own handler (vars, pool,
// response parse and copy, access log line) without net/http's server:
// its allocs/op are what this package adds per request.
func BenchmarkServeHTTP(b *testing.B) { benchServeHTTP(b, benchConfig()) }

// BenchmarkServeHTTPRequestID is BenchmarkServeHTTP with proxy.request_id
// on (the config's default): what an ID costs per request.
func BenchmarkServeHTTPRequestID(b *testing.B) {
	cfg := benchConfig()
	cfg.RequestID = true
	benchServeHTTP(b, cfg)
}

// BenchmarkServeHTTPCustomLog writes a custom format with upstream times.
func BenchmarkServeHTTPCustomLog(b *testing.B) {
	cfg := benchConfig()
	cfg.RequestID = true
	cfg.AccessLog = `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_response_time $request_id $worker`
	benchServeHTTP(b, cfg)
}

func benchServeHTTP(b *testing.B, cfg control.Proxy) {
	fw := startFastWorker(b, 4)
	s := New(Options{AccessLog: io.Discard, ErrorLog: io.Discard})
	defer s.Shutdown(context.Background())
	if err := s.SetConfig(cfg); err != nil {
		b.Fatal(err)
	}
	s.SetWorkers([]control.Worker{{ID: "w1", Socket: fw.path, Capacity: 4}})
	req, _ := http.ReadRequest(bufio.NewReader(bytes.NewReader([]byte(
		"GET /hello?x=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"))))
	req.RemoteAddr = "127.0.0.1:5555"
	req = req.WithContext(context.WithValue(context.Background(), connKey{},
		newConnInfo(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80})))
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		clear(w.h)
		w.n = 0
		s.ServeHTTP(w, req)
		if w.code != 200 || w.n != 13 {
			b.Fatalf("%d, %d bytes", w.code, w.n)
		}
	}
}

type benchWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(c int)           { w.code = c }
func (w *benchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// BenchmarkProxy is the whole path over loopback: a keep-alive client,
// net/http's server, the proxy, a pooled worker connection.
func BenchmarkProxy(b *testing.B) {
	fw := startFastWorker(b, 8)
	s := New(Options{AccessLog: io.Discard, ErrorLog: io.Discard})
	s.SetConfig(benchConfig())
	s.SetWorkers([]control.Worker{{ID: "w1", Socket: fw.path, Capacity: 8}})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(l)
	defer s.Shutdown(context.Background())
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	client := &http.Client{Transport: tr}
	url := "http://" + l.Addr().String() + "/hello"
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

var wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func runWrk(t *testing.T, url string, d time.Duration) (float64, string) {
	t.Helper()
	out, err := exec.Command("wrk", "-t2", "-c64", "-d"+d.String(), url).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		t.Fatalf("wrk output:\n%s", out)
	}
	rps, _ := strconv.ParseFloat(string(m[1]), 64)
	return rps, string(out)
}

// TestWrk measures requests/s with wrk against an in-process Server and
// the zero-allocation worker, and (with nginx installed) nginx's uwsgi_pass
// in front of the same worker. Run it with BERTH_WRK=1 go test -run Wrk -v.
func TestWrk(t *testing.T) {
	if os.Getenv("BERTH_WRK") == "" {
		t.Skip("set BERTH_WRK=1 to run the wrk measurement")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed")
	}
	d := 5 * time.Second
	fw := startFastWorker(t, 8)
	s := New(Options{AccessLog: io.Discard, ErrorLog: io.Discard})
	s.SetConfig(benchConfig())
	s.SetWorkers([]control.Worker{{ID: "w1", Socket: fw.path, Capacity: 8}})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(l)
	defer s.Shutdown(context.Background())

	runWrk(t, "http://"+l.Addr().String()+"/hello", time.Second) // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n0 := fw.requests.Load()
	rps, out := runWrk(t, "http://"+l.Addr().String()+"/hello", d)
	runtime.ReadMemStats(&after)
	n := fw.requests.Load() - n0
	t.Logf("berth proxy (access log combined to io.Discard): %.0f req/s, %.1f allocs/req, %.0f B/req\n%s",
		rps, float64(after.Mallocs-before.Mallocs)/float64(n), float64(after.TotalAlloc-before.TotalAlloc)/float64(n), out)

	if _, err := exec.LookPath("nginx"); err != nil {
		t.Log("nginx not installed: no comparison")
		return
	}
	dir := tempDir(t)
	nl, _ := net.Listen("tcp", "127.0.0.1:0")
	port := nl.Addr().(*net.TCPAddr).Port
	nl.Close()
	user := "" // as root, nginx's workers would drop to nobody and not reach the 0700 temp dir
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf := fmt.Sprintf(`%s daemon off; worker_processes 2; pid %s/nginx.pid; error_log %s/error.log;
events { worker_connections 1024; }
http { access_log /dev/null combined; client_body_temp_path %s; keepalive_requests 100000;
  server { listen 127.0.0.1:%d; location / { include /etc/nginx/uwsgi_params; uwsgi_pass unix:%s; } } }
`, user, dir, dir, dir, port, fw.path)
	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
	cmd := exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	nurl := fmt.Sprintf("http://127.0.0.1:%d/hello", port)
	waitFor(t, "nginx", 5*time.Second, func() bool {
		r, err := http.Get(nurl)
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	runWrk(t, nurl, time.Second)
	nrps, nout := runWrk(t, nurl, d)
	t.Logf("nginx uwsgi_pass, 2 workers: %.0f req/s (berth/nginx = %.2f)\n%s", nrps, rps/nrps, nout)
}
