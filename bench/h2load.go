package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"time"
)

// h2load (Debian's nghttp2-client) drives the HTTP/2 scenarios: wrk speaks
// HTTP/1.1 only.

// h2Streams is how many requests each connection keeps in flight, as a
// browser multiplexes a page's resources.
const h2Streams = 10

// runH2load runs h2load for d against url and parses its report into a
// wrkResult (requests, req/s, non-2xx, errors; h2load reports no
// percentiles, so P50 is its mean request time and P99 its max).
func runH2load(ctx context.Context, threads, conns int, d time.Duration, url string) (wrkResult, error) {
	c, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	secs := int((d + time.Second - 1) / time.Second)
	cmd := exec.CommandContext(c, "h2load", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-m", strconv.Itoa(h2Streams), "-D", strconv.Itoa(secs), url)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("h2load %s: %w: %s%s", url, err, errb.String(), out.String())
	}
	r, err := parseH2load(out.String())
	if err != nil {
		return r, fmt.Errorf("h2load %s: %w\n%s", url, err, out.String())
	}
	r.CPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return r, nil
}

var (
	h2Finished = regexp.MustCompile(`finished in [0-9.]+\w+, ([0-9.]+) req/s`)
	h2Requests = regexp.MustCompile(`requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Codes    = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
	h2Time     = regexp.MustCompile(`time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)`)
)

func parseH2load(s string) (wrkResult, error) {
	var r wrkResult
	m := h2Finished.FindStringSubmatch(s)
	q := h2Requests.FindStringSubmatch(s)
	c := h2Codes.FindStringSubmatch(s)
	if m == nil || q == nil || c == nil {
		return r, fmt.Errorf("cannot read the h2load report")
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	done, _ := strconv.ParseInt(q[2], 10, 64)
	failed, _ := strconv.ParseInt(q[4], 10, 64)
	errored, _ := strconv.ParseInt(q[5], 10, 64)
	timeout, _ := strconv.ParseInt(q[6], 10, 64)
	r.Requests = done
	for _, i := range []int{3, 4} {
		n, _ := strconv.ParseInt(c[i], 10, 64)
		r.Non2xx += n
	}
	// h2load counts 4xx/5xx answers as failed too: the rest broke.
	r.SockErrors = max(failed-r.Non2xx, 0) + errored + timeout
	if t := h2Time.FindStringSubmatch(s); t != nil {
		r.P99 = ms(t[3], t[4])
		r.P50 = ms(t[5], t[6])
	}
	return r, nil
}

func ms(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "us":
		return f / 1000
	case "s":
		return f * 1000
	}
	return f
}
