package main

import "testing"

// h2load 1.52's report, as Debian bookworm's nghttp2-client prints it.
const h2loadReport = `starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 3.00s, 8601.33 req/s, 1.05MB/s
requests: 25804 total, 26124 started, 25804 done, 25790 succeeded, 14 failed, 0 errored, 0 timeout
status codes: 25790 2xx, 0 3xx, 14 4xx, 0 5xx
traffic: 3.14MB (3296552) total, 252.04KB (258090) headers (space savings 88.24%), 352.59KB (361056) data
                     min         max         mean         sd        +/- sd
time for request:      412us    146.03ms     31.90ms     12.10ms    71.20%
time for connect:     2.01ms      6.13ms      3.95ms      1.37ms    62.50%
time to 1st byte:    10.65ms     30.12ms     19.60ms      5.98ms    62.50%
req/s           :     260.12      278.49      268.75        5.13    62.50%
`

func TestParseH2load(t *testing.T) {
	r, err := parseH2load(h2loadReport)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 8601.33 || r.Requests != 25804 || r.Non2xx != 14 || r.SockErrors != 0 || r.P50 != 31.90 || r.P99 != 146.03 {
		t.Errorf("parsed %+v", r)
	}
	if _, err := parseH2load("garbage"); err == nil {
		t.Errorf("garbage parsed")
	}
}
