package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what one wrk run measured. Latencies are in milliseconds.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	Non2xx     int64   `json:"non_2xx"`
	SockErrors int64   `json:"socket_errors"` // connect + read + write + timeout
	CPU        float64 `json:"wrk_cpu_s"`     // wrk's own user+system CPU seconds
}

// Errors is what the tables call errors: responses that were not 2xx or 3xx
// plus every socket error wrk saw.
func (w wrkResult) Errors() int64 { return w.Non2xx + w.SockErrors }

// wrkTimeout is wrk's per-request timeout. Longer than wrk's 2 s default so
// that a request stalled by a reload shows up in p99 rather than being cut
// off and counted only as an error.
const wrkTimeout = "10s"

// wrkArgs builds the command line; script is a Lua file or "".
func wrkArgs(threads, conns int, d time.Duration, script, url string) []string {
	secs := int((d + time.Second - 1) / time.Second)
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--latency", "--timeout", wrkTimeout}
	if script != "" {
		args = append(args, "-s", script)
	}
	return append(args, url)
}

// runWrk runs wrk to completion and parses its report.
func runWrk(ctx context.Context, threads, conns int, d time.Duration, script, url string) (wrkResult, error) {
	// wrk stops on its own after d; the margin only catches a hung wrk.
	c, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, "wrk", wrkArgs(threads, conns, d, script, url)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w: %s%s", url, err, errb.String(), out.String())
	}
	r, err := parseWrk(out.String())
	if err != nil {
		return r, fmt.Errorf("wrk %s: %w", url, err)
	}
	r.CPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return r, nil
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([\d.]+)`)
	reRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	reLatency  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses:\s+(\d+)`)
	reSocket   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// parseWrk reads the text wrk prints with --latency. A report without the
// Requests/sec line or the latency distribution is an error: a wrong figure
// is worse than none.
func parseWrk(s string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec line in wrk output:\n%s", s)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reRequests.FindStringSubmatch(s); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	got := 0
	for _, m := range reLatency.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		v *= map[string]float64{"us": 0.001, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m[3]]
		if m[1] == "50" {
			r.P50 = v
		} else {
			r.P99 = v
		}
		got++
	}
	if got != 2 {
		if r.Requests == 0 {
			// wrk prints no distribution when nothing completed.
			r.P50, r.P99 = 0, 0
		} else {
			return r, fmt.Errorf("no 50%%/99%% latency lines in wrk output (run with --latency):\n%s", s)
		}
	}
	if m := reNon2xx.FindStringSubmatch(s); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reSocket.FindStringSubmatch(s); m != nil {
		for _, f := range m[1:] {
			n, _ := strconv.ParseInt(f, 10, 64)
			r.SockErrors += n
		}
	}
	return r, nil
}

// fmtMs formats a latency for the tables.
func fmtMs(ms float64) string {
	switch {
	case ms == 0:
		return "-"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	default:
		return strconv.FormatFloat(ms/1000, 'f', 2, 64) + "s"
	}
}

// trimZeros is for labels: "12.0" → "12".
func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
