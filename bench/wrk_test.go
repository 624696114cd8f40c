package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// The testdata files are real wrk 4.1 reports: against a server answering
// 404 (wrk-errors), one closing 10% of connections mid-request
// (wrk-socket-errors), and one stalling 5% of requests for 1.2 s
// (wrk-seconds).
func TestParseWrk(t *testing.T) {
	tests := []struct {
		file string
		want wrkResult
	}{
		{"wrk-errors.txt", wrkResult{Requests: 1571, RPS: 1565.66, P50: 3.18, P99: 13.99, Non2xx: 1571}},
		{"wrk-socket-errors.txt", wrkResult{Requests: 15920, RPS: 15897.16, P50: 0.285, P99: 13.22, SockErrors: 1754}},
		{"wrk-seconds.txt", wrkResult{Requests: 1205, RPS: 602.10, P50: 0.295, P99: 1200}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseWrk(string(b))
			if err != nil {
				t.Fatal(err)
			}
			// Float fields parsed from text: compare with a tolerance.
			for _, f := range []struct {
				name      string
				got, want float64
			}{{"rps", got.RPS, tt.want.RPS}, {"p50", got.P50, tt.want.P50}, {"p99", got.P99, tt.want.P99}} {
				if d := f.got - f.want; d > 1e-9*f.want+1e-12 || d < -1e-9*f.want-1e-12 {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			got.RPS, got.P50, got.P99 = tt.want.RPS, tt.want.P50, tt.want.P99
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseWrk = %+v, want %+v", got, tt.want)
			}
			if e := got.Errors(); e != tt.want.Non2xx+tt.want.SockErrors {
				t.Errorf("Errors() = %d", e)
			}
		})
	}
}

func TestParseWrkRejectsIncompleteReports(t *testing.T) {
	for name, s := range map[string]string{
		"empty":          "",
		"no rps":         "  100 requests in 1.00s, 1KB read\n",
		"no latencies":   "  100 requests in 1.00s, 1KB read\nRequests/sec: 100.00\n",
		"refused stdout": "unable to connect to 127.0.0.1:1 Connection refused\n",
	} {
		if _, err := parseWrk(s); err == nil {
			t.Errorf("%s: parseWrk accepted %q", name, s)
		}
	}
}

func TestWrkArgs(t *testing.T) {
	got := wrkArgs(2, 32, 1500*time.Millisecond, "/x/upload.lua", "http://127.0.0.1:1/upload")
	want := []string{"-t2", "-c32", "-d2s", "--latency", "--timeout", "10s", "-s", "/x/upload.lua", "http://127.0.0.1:1/upload"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("wrkArgs = %q, want %q", got, want)
	}
}

func TestFmtMs(t *testing.T) {
	for in, want := range map[float64]string{0: "-", 0.5: "0.50ms", 13.22: "13.2ms", 1200: "1.20s"} {
		if got := fmtMs(in); got != want {
			t.Errorf("fmtMs(%v) = %q, want %q", in, got, want)
		}
	}
}
