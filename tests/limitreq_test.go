package tests

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// limitSchedule is when each request is sent, in ms after the start: a
// burst, one too soon, a pace a little slower than 5 r/s (250 ms apart), a
// pause, a burst. Under each limit tested every request stays 50 ms or more
// (a quarter of a request) from the boundary of its verdict, so scheduling
// jitter cannot turn it; requests sent at the same moment are compared as
// a group (they reach a server in any order).
var limitSchedule = []int{0, 0, 0, 0, 0, 0, 0, 0, 100, 350, 600, 850, 1100, 1350, 2500, 2500, 2500, 2500, 2500, 2500, 2500}

// sendSchedule sends one request per entry of at, each on its own
// connection at its time, and returns the statuses and how long each took.
func sendSchedule(t *testing.T, url string, at []int) ([]int, []time.Duration) {
	t.Helper()
	codes := make([]int, len(at))
	took := make([]time.Duration, len(at))
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now().Add(300 * time.Millisecond)
	var wg sync.WaitGroup
	for i, ms := range at {
		wg.Add(1)
		go func(i, ms int) {
			defer wg.Done()
			time.Sleep(time.Until(start.Add(time.Duration(ms) * time.Millisecond)))
			t0 := time.Now()
			resp, err := client.Get(url)
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[i], took[i] = resp.StatusCode, time.Since(t0)
		}(i, ms)
	}
	wg.Wait()
	return codes, took
}

// TestLimitReqLikeNginx sends the same request schedule, at the same
// moments, to a real nginx with limit_req and to berth with the same limit
// on a location: the status sequences are the same, request for request
// (and with a burst that is delayed rather than passed at once, the same
// requests are held back).
func TestLimitReqLikeNginx(t *testing.T) {
	const nginx = "/usr/sbin/nginx"
	requireFiles(t, nginx)
	dir, err := os.MkdirTemp("", "limitreq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "f"), []byte("file\n"), 0o644)
	for _, p := range []struct {
		name, nginx, berth string
	}{
		{"5r/s burst=5 nodelay", "burst=5 nodelay", "{rate: 5/s, burst: 5, nodelay: true}"},
		{"5r/s burst=3 (delayed)", "burst=3", "{rate: 5/s, burst: 3}"},
		{"5r/s no burst", "", "{rate: 5/s}"},
	} {
		t.Run(p.name, func(t *testing.T) {
			ngAddr := freeAddr(t)
			conf := fmt.Sprintf(`daemon off;
pid %[1]s/nginx-%[3]s.pid;
error_log %[1]s/error-%[3]s.log;
events {}
http {
  access_log off;
  limit_req_zone $binary_remote_addr zone=z:1m rate=5r/s;
  limit_req_status 429;
  server {
    listen %[2]s;
    location = /f { limit_req zone=z %[4]s; root %[1]s; }
  }
}
`, dir, ngAddr, strings.NewReplacer(" ", "", "/", "", "=", "").Replace(p.name), p.nginx)
			confPath := filepath.Join(dir, "nginx-"+strings.NewReplacer(" ", "", "/", "", "=", "").Replace(p.name)+".conf")
			os.WriteFile(confPath, []byte(conf), 0o644)
			ng := startPeer(t, "nginx", dir, nginx, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
			waitTCP(t, "nginx", ngAddr, 20*time.Second, ng.exited, ng.out.String)
			b := startBerth(t, berthOpts{config: fmt.Sprintf("workers: {count: 1}\nproxy: {access_log: off}\n"+
				"static: [{url: /f, file: %s/f}]\nlocations:\n  - {exact: /f, limit: %s}\n", dir, p.berth),
				app: map[string]string{"wsgi.py": okApp}})

			var ngCodes, bCodes []int
			var ngTook, bTook []time.Duration
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); ngCodes, ngTook = sendSchedule(t, "http://"+ngAddr+"/f", limitSchedule) }()
			go func() { defer wg.Done(); bCodes, bTook = sendSchedule(t, b.url("/f"), limitSchedule) }()
			wg.Wait()
			// Requests sent at the same moment reach a server in any
			// order: compared are, for each moment, how many of its
			// requests got each status and how many were held back.
			group := func(codes []int, took []time.Duration) string {
				var out []string
				for i := 0; i < len(limitSchedule); {
					j := i
					n := map[string]int{}
					for ; j < len(limitSchedule) && limitSchedule[j] == limitSchedule[i]; j++ {
						k := fmt.Sprint(codes[j])
						if took[j] > 100*time.Millisecond {
							k += " held"
						}
						n[k]++
					}
					out = append(out, fmt.Sprintf("%dms:%v", limitSchedule[i], n))
					i = j
				}
				return strings.Join(out, " ")
			}
			ngs, bgs := group(ngCodes, ngTook), group(bCodes, bTook)
			t.Logf("nginx %s\nberth %s", ngs, bgs)
			if ngs != bgs {
				t.Fatalf("the answers differ:\nnginx %s\nberth %s", ngs, bgs)
			}
		})
	}
}
