//go:build linux

package ratelimit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/access/internal/testtool"
)

const nginxBin = "/usr/sbin/nginx"

// TestSideBySideWithNginx sends each schedule, under each limit_req setting,
// to a real nginx and checks that the Limiter, given the same timestamps,
// refuses the same requests and delays the others as long. Each run comes
// from a loopback address of its own (127.0.A.R: nginx's key is
// $binary_remote_addr), so it starts with an empty bucket; the 36 runs go in
// parallel. nginx's own logs say what it decided: its access log the status
// and when it read each request ($msec - $request_time: its clock, in whole
// ms), its error log the excess of each request it delayed, hence the delay
// it chose ((excess - delay)*1000/rate ms, before its timer fires late on a
// busy machine).
//
// Two comparisons per run:
//   - against the Limiter fed the times nginx read the requests at, in the
//     order it read them, requests read in the same ms compared as a group:
//     the statuses exactly, the delays within waitTolerance(1) (3 ms at
//     5r/s, 11 at 30r/m, where a thousandth of a request is 2 ms of delay).
//     nginx decides on its monotonic clock and logs its wall clock, read
//     at the same instant: differences of the two agree within 1 ms. A
//     send where a request read 1 ms later would change a verdict cannot be
//     judged and is sent again, up to five sends; the last one fails.
//   - against the Limiter fed the schedule itself, burst by burst (see
//     groups): the statuses exactly, the delays within
//     waitTolerance(jitter), when nginx read the requests within jitter ms
//     of the schedule (the margin every schedule keeps,
//     TestSchedulesHaveMargins); else the run is sent again, up to three
//     sends. A run that matched on nginx's times in each but was never on
//     schedule (a machine so loaded that nginx reads requests 100s of ms
//     late) passes on the first comparison alone, and the log says so.
func TestSideBySideWithNginx(t *testing.T) {
	if testing.Short() {
		t.Skip("real time against a real nginx: about 20 s")
	}
	testtool.Require(t, nginxBin)
	ng := startNginx(t, nginxParams)

	type run struct {
		s, p    int
		matched bool // on nginx's times, in an earlier send
		status  []int
		took    []time.Duration
		err     error
		query   string
	}
	var pending []*run
	for s := range nginxSchedules {
		for p := range nginxParams {
			pending = append(pending, &run{s: s, p: p})
		}
	}
	const sendsOffSchedule, sendsUnsteady = 3, 5
	onSchedule := 0
	for send := 1; len(pending) > 0; send++ {
		// The runs start 47 ms apart, so their bursts do not all land on
		// nginx at once, 2 s from now, once their connections are open.
		base := time.Now().Add(2 * time.Second)
		var wg sync.WaitGroup
		for k, r := range pending {
			r.query = fmt.Sprintf("a=%d&r=%d", send, k)
			ip := net.IPv4(127, 0, byte(10+send), byte(1+k))
			start := base.Add(time.Duration(k) * 47 * time.Millisecond)
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.status, r.took, r.err = ng.send(ip, r.p, r.query, start, nginxSchedules[r.s].at)
			}()
		}
		wg.Wait()
		logged := ng.readAccessLog(t)
		excess := ng.readDelays(t)
		var again []*run
		for _, r := range pending {
			s, p := nginxSchedules[r.s], nginxParams[r.p]
			name := fmt.Sprintf("%s, %s", s.name, p)
			if r.err != nil {
				t.Fatalf("%s: %v\nnginx's stderr:\n%s", name, r.err, ng.stderr())
			}
			o := p.options(t)
			milliRate, _ := milliRate(o.Rate)
			got := make([]outcome, len(s.at))
			read := make([]int64, len(s.at))
			for i := range s.at {
				q := fmt.Sprintf("%s&i=%d", r.query, i)
				e, ok := logged[q]
				switch {
				case !ok:
					t.Fatalf("%s: request %d is not in nginx's access log", name, i)
				case e.status != r.status[i]:
					t.Fatalf("%s: request %d: the client got %d, nginx logged %d", name, i, r.status[i], e.status)
				case e.status != 200 && e.status != 429:
					t.Fatalf("%s: request %d: status %d", name, i, e.status)
				}
				got[i] = outcome{status: e.status}
				if x, ok := excess[q]; ok {
					got[i].wait = (x - int64(p.delay)*1000) * 1000 / milliRate
				}
				if e.took < got[i].wait-1 || r.took[i] < time.Duration(got[i].wait-1)*time.Millisecond {
					t.Fatalf("%s: request %d: nginx chose to delay it %d ms, but answered it in %d ms (the client waited %v)",
						name, i, got[i].wait, e.took, r.took[i])
				}
				read[i] = e.start - logged[r.query+"&i=0"].start
			}
			if d := unsteady(t, o, read, read, 1, 300); d != "" {
				switch {
				case send < sendsUnsteady:
					t.Logf("%s: nginx read a request within 1 ms of a bucket boundary (%s): sending it again", name, d)
					again = append(again, r)
				case r.matched:
					t.Logf("%-40s %-28s nginx = Limiter on nginx's times in an earlier send, never on schedule", s.name, p)
				default:
					t.Errorf("%s: in %d sends nginx read a request within 1 ms of a bucket boundary every time; the last: %s", name, send, d)
				}
				continue
			}
			if d := sameOutcomes(read, simulate(t, o, read), got, waitTolerance(1, o)); d != "" {
				t.Errorf("%s: nginx differs from the Limiter fed the times nginx read the requests at %v: %s\nnginx:   %s\nLimiter: %s",
					name, read, d, describe(read, got), describe(read, simulate(t, o, read)))
				continue
			}
			r.matched = true
			if spread := spreadFrom(s.at, read); spread > jitter {
				if send < sendsOffSchedule {
					t.Logf("%s: nginx read the requests up to %d ms off the schedule: sending it again", name, spread)
					again = append(again, r)
					continue
				}
				t.Logf("%-40s %-28s nginx = Limiter on nginx's times (%d sends, the last read up to %d ms off the schedule): %s",
					s.name, p, send, spread, describe(s.at, got))
				continue
			}
			if d := sameOutcomes(s.at, simulate(t, o, s.at), got, waitTolerance(jitter, o)); d != "" {
				t.Errorf("%s: nginx differs from the Limiter fed the schedule: %s\nnginx:   %s\nLimiter: %s",
					name, d, describe(s.at, got), describe(s.at, simulate(t, o, s.at)))
				continue
			}
			onSchedule++
			t.Logf("%-40s %-28s nginx = Limiter: %s", s.name, p, describe(s.at, got))
		}
		pending = again
	}
	t.Logf("%d of %d runs compared with the schedule as well as with nginx's times",
		onSchedule, len(nginxSchedules)*len(nginxParams))
}

// spreadFrom is how far, at most, two requests' arrivals moved relative to
// each other against the schedule, in ms.
func spreadFrom(at, read []int64) int64 {
	lo, hi := int64(1<<62), int64(-1<<62)
	for i := range at {
		d := read[i] - at[i]
		lo, hi = min(lo, d), max(hi, d)
	}
	return hi - lo
}

type nginxProc struct {
	addr, prefix string
	errFile      string
}

// startNginx runs nginx in the foreground, one process, with a zone and a
// location /l<N>/ per setting, on a free loopback port, and stops it when
// the test ends.
func startNginx(t *testing.T, params []limitParams) *nginxProc {
	t.Helper()
	prefix := t.TempDir()
	for _, d := range []string{"html", "tmp"} {
		if err := os.Mkdir(filepath.Join(prefix, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(prefix, "html", "ok"), []byte("ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ng := &nginxProc{prefix: prefix, errFile: filepath.Join(prefix, "stderr")}
	for attempt := 0; ; attempt++ {
		ng.addr = freePort(t)
		conf := filepath.Join(prefix, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(prefix, ng.addr, params)), 0o644); err != nil {
			t.Fatal(err)
		}
		errf, err := os.Create(ng.errFile)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(nginxBin, "-p", prefix+"/", "-c", conf, "-e", "stderr")
		cmd.Stdout, cmd.Stderr = errf, errf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no nginx left behind by a killed test
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		errf.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		err = ng.waitReady(exited, 10*time.Second)
		if err == nil {
			t.Cleanup(func() {
				cmd.Process.Signal(syscall.SIGTERM) // fast shutdown of the one process
				select {
				case <-exited:
				case <-time.After(5 * time.Second):
					cmd.Process.Kill()
					<-exited
				}
			})
			return ng
		}
		cmd.Process.Kill()
		if strings.Contains(ng.stderr(), "Address already in use") && attempt < 3 {
			continue // the free port was taken meanwhile
		}
		t.Fatalf("nginx: %v\n%s", err, ng.stderr())
	}
}

func nginxConf(prefix, addr string, params []limitParams) string {
	var zones, locs strings.Builder
	for n, p := range params {
		fmt.Fprintf(&zones, "    limit_req_zone $binary_remote_addr zone=z%d:1m rate=%s;\n", n, p.rate)
		fmt.Fprintf(&locs, "        location /l%d/ { limit_req zone=z%d", n, n)
		if p.burst > 0 {
			fmt.Fprintf(&locs, " burst=%d", p.burst)
		}
		if p.nodelay {
			locs.WriteString(" nodelay")
		}
		if p.delay > 0 {
			fmt.Fprintf(&locs, " delay=%d", p.delay)
		}
		fmt.Fprintf(&locs, "; alias %s/html/; }\n", prefix)
	}
	return fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
    default_type text/plain;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    log_format side '$msec $request_time $status $remote_addr $request_uri';
    access_log %[1]s/access.log side;
    limit_req_status 429;
%[3]s    server {
        listen %[2]s;
%[4]s    }
}
`, prefix, addr, zones.String(), locs.String())
}

// freePort is a loopback address no one listened on a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady polls nginx's port until it accepts, nginx exits or the
// deadline passes.
func (ng *nginxProc) waitReady(exited <-chan error, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("exited before listening: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", ng.addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v", ng.addr, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (ng *nginxProc) stderr() string {
	b, _ := os.ReadFile(ng.errFile)
	return string(b)
}

// send makes one GET per offset of at to /l<loc>/ok from ip, each on a
// connection of its own opened now, each sent at its offset from start,
// and returns the statuses and how long each took.
func (ng *nginxProc) send(ip net.IP, loc int, query string, start time.Time, at []int64) ([]int, []time.Duration, error) {
	conns := make([]net.Conn, len(at))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	for i := range conns {
		c, err := d.Dial("tcp", ng.addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, nil, err
		}
		conns[i] = c
	}
	status := make([]int, len(at))
	took := make([]time.Duration, len(at))
	errs := make([]error, len(at))
	var wg sync.WaitGroup
	for i := range at {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[i]
			client := &http.Client{
				Timeout: 30 * time.Second,
				Transport: &http.Transport{
					DisableKeepAlives: true,
					DialContext: func(context.Context, string, string) (net.Conn, error) {
						if conn == nil {
							return nil, fmt.Errorf("a second dial for one request")
						}
						c := conn
						conn = nil
						return c, nil
					},
				},
			}
			u := fmt.Sprintf("http://%s/l%d/ok?%s&i=%d", ng.addr, loc, query, i)
			time.Sleep(time.Until(start.Add(time.Duration(at[i]) * time.Millisecond)))
			sent := time.Now()
			resp, err := client.Get(u)
			if err != nil {
				errs[i] = fmt.Errorf("request %d (%s): %w", i, u, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			status[i], took[i] = resp.StatusCode, time.Since(sent)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, nil, err
		}
	}
	return status, took, nil
}

type logEntry struct {
	start  int64 // ms, nginx's clock when it read the request
	took   int64 // ms, $request_time
	status int
}

// readAccessLog reads the access log, keyed by the request's query.
func (ng *nginxProc) readAccessLog(t *testing.T) map[string]logEntry {
	t.Helper()
	f, err := os.Open(filepath.Join(ng.prefix, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]logEntry{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var msec, reqTime, addr, uri string
		var status int
		if _, err := fmt.Sscan(sc.Text(), &msec, &reqTime, &status, &addr, &uri); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		end, err1 := millis(msec)
		took, err2 := millis(reqTime)
		u, err3 := url.Parse(uri)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("access log line %q: %v %v %v", sc.Text(), err1, err2, err3)
		}
		m[u.RawQuery] = logEntry{start: end - took, took: took, status: status}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// millis reads nginx's seconds with three decimals ("1712345678.123") as ms.
func millis(s string) (int64, error) {
	sec, frac, ok := strings.Cut(s, ".")
	if !ok || len(frac) != 3 {
		return 0, fmt.Errorf("%q is not seconds with 3 decimals", s)
	}
	return strconv.ParseInt(sec+frac, 10, 64)
}

// delayLine is what nginx logs, at warn, for a request it delays.
var delayLine = regexp.MustCompile(`delaying request, excess: (\d+)\.(\d{3}), by zone "z\d+".* request: "GET /l\d+/ok\?(\S+) HTTP/1\.1"`)

// readDelays reads the error log's "delaying request" lines: the excess, in
// thousandths, of each request nginx delayed, keyed by its query.
func (ng *nginxProc) readDelays(t *testing.T) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ng.prefix, "error.log"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		if sub := delayLine.FindStringSubmatch(line); sub != nil {
			x, _ := strconv.ParseInt(sub[1]+sub[2], 10, 64)
			m[sub[3]] = x
		} else if strings.Contains(line, "delaying request") {
			t.Fatalf("nginx's error log: a delay line this test does not read: %s", line)
		}
	}
	return m
}
