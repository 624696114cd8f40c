package main

// goload.go: the bench's own HTTPS load generator, in Go. Debian's h2load
// is built without QUIC and wrk speaks HTTP/1.1 only, so HTTP/3 needs a
// client of our own: quic-go's http3.Transport. The same generator speaks
// HTTP/1.1 and HTTP/2 (net/http) too, so that the https-go-* scenarios
// compare the three protocols with one client.
//
// The load runs in a child process, the bench binary re-executed with
// goloadFlag, for the same reason wrk and h2load are separate programs:
// the generator's CPU time is then its process's rusage (as wrkResult.CPU
// is for wrk), not a guess at which of the bench's goroutines did what,
// and the load's garbage and scheduling do not disturb the bench's own
// pollers (readiness, worker pids, slow clients).

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// goloadFlag, as the first argument, makes the bench binary (or the bench
// test binary, see TestMain) the load generator's child: the next argument
// is a loadSpec in JSON; it prints a loadReport in JSON on stdout.
const goloadFlag = "-goload-child"

// loadProto is the protocol the Go generator speaks.
type loadProto string

const (
	protoH1 loadProto = "h1" // HTTP/1.1 over TLS, one request at a time a connection
	protoH2 loadProto = "h2" // HTTP/2 over TLS
	protoH3 loadProto = "h3" // HTTP/3 over QUIC
)

// major is the ProtoMajor every response must have: a response that came
// over another protocol (a server that did not negotiate h2, say) would
// measure the wrong thing, so it counts as an error.
func (p loadProto) major() int {
	switch p {
	case protoH1:
		return 1
	case protoH2:
		return 2
	case protoH3:
		return 3
	}
	return 0
}

// loadTimeout is each request's timeout, as wrkTimeout is wrk's.
const loadTimeout = 10 * time.Second

// loadSpec is one run of the generator: Conns connections, each with
// Streams requests in flight (h2load's -c and -m), GET URL for Duration.
// HTTP/1.1 cannot have two requests in flight on a connection, so for h1
// the generator opens Conns×Streams connections with one request each:
// the three protocols then carry the same number of requests in flight,
// which is what makes their throughput and latency comparable.
type loadSpec struct {
	Proto    loadProto     `json:"proto"`
	Conns    int           `json:"conns"`
	Streams  int           `json:"streams"`
	Duration time.Duration `json:"duration"`
	Timeout  time.Duration `json:"timeout"`
	URL      string        `json:"url"`
}

func (s loadSpec) validate() error {
	switch {
	case s.Proto.major() == 0:
		return fmt.Errorf("unknown protocol %q: want h1, h2 or h3", s.Proto)
	case s.Conns < 1 || s.Streams < 1:
		return fmt.Errorf("need at least 1 connection and 1 stream, got %d and %d", s.Conns, s.Streams)
	case s.Duration <= 0 || s.Timeout <= 0:
		return fmt.Errorf("duration %v and timeout %v must be positive", s.Duration, s.Timeout)
	}
	return nil
}

// loadReport is what the child prints. Only responses completed within
// the measured window count, as with wrk: a request still in flight when
// the window closes is abandoned, neither a request nor an error.
type loadReport struct {
	Requests int64   `json:"requests"` // responses read whole, whatever their status
	ElapsedS float64 `json:"elapsed_s"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	Non2xx   int64   `json:"non_2xx"` // 4xx and 5xx, as wrk's "Non-2xx or 3xx"
	// Errors are requests that got no whole response (transport errors,
	// timeouts) or one over the wrong protocol.
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// runGoLoad runs the generator in a child process and returns its figures
// as a wrkResult, with the child's user+system CPU seconds in CPU.
func runGoLoad(ctx context.Context, spec loadSpec) (wrkResult, error) {
	if err := spec.validate(); err != nil {
		return wrkResult{}, fmt.Errorf("go load %s: %w", spec.URL, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return wrkResult{}, fmt.Errorf("go load: find the bench binary to re-run: %w", err)
	}
	arg, err := json.Marshal(spec)
	if err != nil {
		return wrkResult{}, err
	}
	// The child stops on its own after Duration (plus a request timeout at
	// most to open its connections); the margin only catches a hung one.
	c, cancel := context.WithTimeout(ctx, spec.Duration+2*spec.Timeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, exe, goloadFlag, string(arg))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("go load %s %s: %w: %s%s", spec.Proto, spec.URL, err, errb.String(), out.String())
	}
	r, err := parseGoLoad(out.Bytes())
	if err != nil {
		return r, fmt.Errorf("go load %s %s: %w%s", spec.Proto, spec.URL, err, errb.String())
	}
	r.CPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	if r.SockErrors > 0 {
		// The table counts errors; the log says what the first was, so a
		// peer's limit (or berth's bug) can be told from the client's.
		var rep loadReport
		if json.Unmarshal(bytes.TrimSpace(out.Bytes()), &rep) == nil && rep.FirstError != "" {
			fmt.Fprintf(os.Stderr, "bench: go load %s %s: %d errors, the first: %s\n", spec.Proto, spec.URL, rep.Errors, rep.FirstError)
		}
	}
	return r, nil
}

// parseGoLoad turns the child's report into a wrkResult. A run in which no
// request succeeded is an error, as wrk's report without figures is.
func parseGoLoad(b []byte) (wrkResult, error) {
	var rep loadReport
	if err := json.Unmarshal(bytes.TrimSpace(b), &rep); err != nil {
		return wrkResult{}, fmt.Errorf("read the generator's report %q: %w", b, err)
	}
	if rep.ElapsedS <= 0 {
		return wrkResult{}, fmt.Errorf("generator report without a measured time: %s", b)
	}
	if rep.Requests == 0 {
		if rep.FirstError != "" {
			return wrkResult{}, fmt.Errorf("no response in %.1fs, %d errors, the first: %s", rep.ElapsedS, rep.Errors, rep.FirstError)
		}
		return wrkResult{}, fmt.Errorf("no response in %.1fs", rep.ElapsedS)
	}
	return wrkResult{
		Requests:   rep.Requests,
		RPS:        float64(rep.Requests) / rep.ElapsedS,
		P50:        rep.P50,
		P99:        rep.P99,
		Non2xx:     rep.Non2xx,
		SockErrors: rep.Errors,
	}, nil
}

// goloadChild is the child's main: it reads the spec, runs the load and
// prints the report. It returns the exit code.
func goloadChild(arg string, stdout, stderr io.Writer) int {
	var spec loadSpec
	if err := json.Unmarshal([]byte(arg), &spec); err != nil {
		fmt.Fprintf(stderr, "go load: read the spec %q: %v\n", arg, err)
		return 2
	}
	if err := spec.validate(); err != nil {
		fmt.Fprintf(stderr, "go load: %v\n", err)
		return 2
	}
	rep := runLoad(context.Background(), spec)
	if err := json.NewEncoder(stdout).Encode(rep); err != nil {
		fmt.Fprintf(stderr, "go load: write the report: %v\n", err)
		return 1
	}
	return 0
}

// loadConn is one connection's client: a transport that keeps exactly one
// connection to the server, shared by its streams.
type loadConn struct {
	rt      http.RoundTripper
	streams int
	close   func()
}

// newLoadConns makes the clients for spec. Every connection has its own
// transport so that each holds one connection of its own (and for h3 one
// UDP socket, hence its own 4-tuple, as separate clients would).
func newLoadConns(spec loadSpec) []loadConn {
	// The bench's certificate is self-signed; what is measured is the
	// server's handshake and ciphers, not the client's trust store.
	tlsConf := func() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
	var out []loadConn
	switch spec.Proto {
	case protoH1:
		for range spec.Conns * spec.Streams {
			tr := &http.Transport{
				TLSClientConfig: tlsConf(),
				// A non-nil empty map turns HTTP/2 off.
				TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
				MaxConnsPerHost:     1,
				MaxIdleConnsPerHost: 1,
				// Neither wrk nor h2load asks for gzip: the same bytes.
				DisableCompression: true,
			}
			out = append(out, loadConn{rt: tr, streams: 1, close: tr.CloseIdleConnections})
		}
	case protoH2:
		for range spec.Conns {
			tr := &http.Transport{
				TLSClientConfig:   tlsConf(),
				ForceAttemptHTTP2: true,
				// One connection: the streams multiplex on it as h2load's do.
				MaxConnsPerHost:     1,
				MaxIdleConnsPerHost: 1,
				DisableCompression:  true,
			}
			out = append(out, loadConn{rt: tr, streams: spec.Streams, close: tr.CloseIdleConnections})
		}
	case protoH3:
		for range spec.Conns {
			tr := &http3.Transport{
				TLSClientConfig: tlsConf(),
				QUICConfig: &quic.Config{
					HandshakeIdleTimeout: spec.Timeout,
					MaxIdleTimeout:       30 * time.Second,
					KeepAlivePeriod:      10 * time.Second, // as http3's default config
				},
				DisableCompression: true,
			}
			out = append(out, loadConn{rt: tr, streams: spec.Streams, close: func() { tr.Close() }})
		}
	}
	return out
}

// streamResult is what one stream (one goroutine sending a request, then
// the next) saw in the measured window.
type streamResult struct {
	lat      []float64 // latency of each response, ms
	non2xx   int64
	errors   int64
	firstErr error
}

// runLoad opens the connections (one request on each, not measured, so
// the handshakes are not in the window: wrk and h2load connect inside
// theirs, but with 32 connections and 10 s that is noise either way), then
// runs every stream for spec.Duration.
func runLoad(ctx context.Context, spec loadSpec) loadReport {
	conns := newLoadConns(spec)
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	var primeErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			if _, err := doRequest(ctx, c.rt, spec); err != nil {
				mu.Lock()
				if primeErr == nil {
					primeErr = fmt.Errorf("open a connection: %w", err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	end := start.Add(spec.Duration)
	var results []streamResult
	for _, c := range conns {
		for range c.streams {
			wg.Go(func() {
				r := runStream(runCtx, c.rt, spec, end)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			})
		}
	}
	// At the end of the window, abandon what is in flight: runStream
	// counts nothing that completes after end.
	t := time.AfterFunc(spec.Duration, cancel)
	defer t.Stop()
	wg.Wait()
	rep := summarizeLoad(results, spec.Duration)
	if rep.FirstError == "" && rep.Requests == 0 && primeErr != nil {
		rep.FirstError = primeErr.Error()
	}
	return rep
}

// runStream sends one request after another until end.
func runStream(ctx context.Context, rt http.RoundTripper, spec loadSpec, end time.Time) streamResult {
	r := streamResult{lat: make([]float64, 0, 1024)}
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			return r
		}
		status, err := doRequest(ctx, rt, spec)
		t1 := time.Now()
		if t1.After(end) {
			return r // finished (or was cut off) after the window
		}
		switch {
		case err != nil:
			r.errors++
			if r.firstErr == nil {
				r.firstErr = err
			}
		default:
			r.lat = append(r.lat, float64(t1.Sub(t0).Nanoseconds())/1e6)
			if status >= 400 {
				r.non2xx++
			}
		}
	}
}

// doRequest GETs spec.URL and reads the whole body; it returns the status.
func doRequest(ctx context.Context, rt http.RoundTripper, spec loadSpec) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, spec.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("read the body: %w", err)
	}
	if resp.ProtoMajor != spec.Proto.major() {
		return 0, fmt.Errorf("response over %s, want %s", resp.Proto, spec.Proto)
	}
	return resp.StatusCode, nil
}

// summarizeLoad merges the streams' results into the report: requests,
// errors and the latency percentiles over every response of every stream.
func summarizeLoad(results []streamResult, elapsed time.Duration) loadReport {
	rep := loadReport{ElapsedS: elapsed.Seconds()}
	var lat []float64
	var first error
	for _, r := range results {
		lat = append(lat, r.lat...)
		rep.Non2xx += r.non2xx
		rep.Errors += r.errors
		if first == nil && r.firstErr != nil {
			first = r.firstErr
		}
	}
	rep.Requests = int64(len(lat))
	if first != nil {
		rep.FirstError = first.Error()
	}
	slices.Sort(lat)
	rep.P50, rep.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return rep
}

// percentile is the nearest-rank percentile of sorted values (0 if none):
// the smallest value that a share p of the values do not exceed.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
