package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/control"
)

// adminServer serves /livez /readyz /status /metrics. Its handlers never
// read supervisor state directly: they ask the loop through adminCh and wait
// for the answer, so the loop stays the only owner of that state.
type adminServer struct {
	srv *http.Server
	ln  net.Listener
}

// startAdmin binds and serves the admin endpoint at addr; "" and "off" start
// nothing.
func (s *Supervisor) startAdmin(addr string) error {
	a, err := s.newAdmin(addr)
	if err != nil || a == nil {
		return err
	}
	a.serve()
	s.admin = a
	return nil
}

// newAdmin binds addr and builds the admin endpoint without serving it, so
// that a reload can hold it until it commits; nil for "" and "off".
func (s *Supervisor) newAdmin(addr string) (*adminServer, error) {
	if addr == "" || addr == "off" {
		return nil, nil
	}
	network, address := "tcp", addr
	if strings.HasPrefix(addr, "unix:") {
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("admin.listen %s: %w; free the port or change admin.listen", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) {
		// Alive means the loop answers: a wedged loop is exactly what a
		// liveness probe must catch.
		if _, ok := s.ask("ping", 2*time.Second); !ok {
			http.Error(w, "supervisor loop not answering\n", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		v, ok := s.ask("ready", 2*time.Second)
		if !ok {
			http.Error(w, "supervisor loop not answering\n", http.StatusServiceUnavailable)
			return
		}
		if why := v.(string); why != "" {
			http.Error(w, why+"\n", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		v, ok := s.ask("status", 2*time.Second)
		if !ok {
			http.Error(w, "supervisor loop not answering\n", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(v)
	})
	// No compression: the proxy's series are appended as plain text.
	own := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{DisableCompression: true})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		own.ServeHTTP(w, r)
		// The proxy's request metrics, from its own registry.
		if v, ok := s.ask("proxy-metrics", 2*time.Second); ok && v.(string) != "" {
			if b, err := fetchUnix(v.(string), "/metrics"); err == nil {
				w.Write(b)
			}
		}
	})
	// The response cache lives in the proxy: the purge goes to its
	// internal socket (POST /cache/purge?path=/page or ?prefix=/blog/).
	mux.HandleFunc("/cache/purge", func(w http.ResponseWriter, r *http.Request) {
		v, ok := s.ask("proxy-metrics", 2*time.Second)
		if !ok || v.(string) == "" {
			http.Error(w, "no proxy is ready\n", http.StatusServiceUnavailable)
			return
		}
		code, b, err := postUnix(v.(string), r.Method, "/cache/purge?"+r.URL.RawQuery)
		if err != nil {
			http.Error(w, "proxy: "+err.Error()+"\n", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write(b)
	})
	return &adminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

func (a *adminServer) serve() { go a.srv.Serve(a.ln) }

// close stops serving and releases the port, also when serve never ran
// (Shutdown closes only the listeners Serve was given).
func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
	a.ln.Close()
}

// ask sends a request to the loop and waits for the answer.
func (s *Supervisor) ask(what string, timeout time.Duration) (any, bool) {
	r := adminRequest{what: what, reply: make(chan any, 1)}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case s.adminCh <- r:
	case <-t.C:
		return nil, false
	}
	select {
	case v := <-r.reply:
		return v, true
	case <-t.C:
		return nil, false
	}
}

func fetchUnix(sock, path string) ([]byte, error) {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://proxy" + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// postUnix sends a request with method to the proxy's internal socket.
func postUnix(sock, method, path string) (int, []byte, error) {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	req, err := http.NewRequest(method, "http://proxy"+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Status is what /status returns and `berth status` prints.
type Status struct {
	PID         int              `json:"pid"`
	State       string           `json:"state"` // starting, ready, degraded, stopping
	Ready       bool             `json:"ready"`
	App         string           `json:"app"`
	Listen      []string         `json:"listen"`
	Generation  int              `json:"config_generation"`
	ConfigFile  string           `json:"config_file"`
	LastReload  *reloadStatus    `json:"last_reload,omitempty"`
	Roll        *RollStatus      `json:"roll,omitempty"` // a reload rolling in
	Workers     []WorkerStatus   `json:"workers"`
	WantWorkers int              `json:"workers_wanted"`
	Threads     int              `json:"threads"`
	Preload     bool             `json:"preload"`
	Queue       int              `json:"queue"`
	Restarts    map[string]int64 `json:"restarts"`
	Orphans     int64            `json:"orphans_reaped"`
	Proxies     []ProxyStatus    `json:"proxies"`
	Cgroup      *CgroupStatus    `json:"cgroup,omitempty"`
	// Tasks are the before-start tasks (and the last before-roll ones).
	Tasks    []TaskStatus    `json:"tasks,omitempty"`
	Programs []ProgramStatus `json:"programs"`
	Cron     []JobStatus     `json:"cron"`
	// Upstreams are each group's servers as the serving proxy sees them.
	Upstreams map[string][]control.UpstreamStats `json:"upstreams,omitempty"`
	// TLS is what the serving proxy says of its ACME certificates; nil
	// without tls.acme.
	TLS *TLSStatus `json:"tls,omitempty"`
}

// TLSStatus is the tls part of /status.
type TLSStatus struct {
	// ACME is each tls.acme domain's certificate (expiry, issuer, next
	// renewal) and last error, in config order.
	ACME []acme.DomainStatus `json:"acme"`
}

// WorkerStatus is one worker in /status.
type WorkerStatus struct {
	ID       string  `json:"id"`
	PID      int     `json:"pid"`
	State    string  `json:"state"`
	Requests int64   `json:"requests"`
	InFlight int     `json:"inflight"`
	RSS      int64   `json:"rss_bytes"`
	AgeSec   float64 `json:"age_seconds"`
	Gen      int     `json:"generation"`
	Retiring string  `json:"retiring,omitempty"`
	Memory   int64   `json:"cgroup_memory_bytes,omitempty"`
}

// ProxyStatus is one proxy process in /status.
type ProxyStatus struct {
	N        int  `json:"n"`
	PID      int  `json:"pid"`
	Ready    bool `json:"ready"`
	Stopping bool `json:"stopping"`
}

func (s *Supervisor) answerAdmin(what string) any {
	switch what {
	case "ping":
		return true
	case "ready":
		switch {
		case s.phase != running:
			return "shutting down"
		case s.fatal != nil:
			return s.fatal.Error()
		case !s.appStarted:
			return "not ready: the before-start tasks are running"
		case !s.ready:
			return fmt.Sprintf("not ready: %d of %d workers ready, proxy ready %v", s.readyWorkers(), s.activeSlots(), s.activeProxy() != nil && s.activeProxy().ready)
		}
		return ""
	case "proxy-metrics":
		if p := s.activeProxy(); p != nil && p.ready {
			return p.metrics
		}
		return ""
	case "status":
		return s.status()
	}
	return nil
}

func (s *Supervisor) status() Status {
	st := Status{
		PID: osGetpid(), Ready: s.ready, App: s.gen.module, Generation: s.generation,
		ConfigFile: s.opts.ConfigPath, WantWorkers: s.activeSlots(),
		Threads: s.cfg.Workers.Threads, Preload: s.cfg.Workers.Preload,
		Restarts: map[string]int64{}, Orphans: s.orphans,
	}
	for k, v := range s.restarts {
		st.Restarts[k] = v
	}
	switch {
	case s.phase != running:
		st.State = "stopping"
	case s.ready:
		st.State = "ready"
	case s.bootDone:
		st.State = "degraded"
	default:
		st.State = "starting"
	}
	if s.reloadState.Reason != "" {
		r := s.reloadState
		st.LastReload = &r
	}
	if p := s.pending; p != nil {
		st.Roll = &RollStatus{Generation: p.gen.n, Reason: p.reason, Since: p.started,
			Failures: p.failures, MaxFail: rollMaxFailures, LastFail: p.lastFail}
	}
	for _, l := range s.listeners {
		st.Listen = append(st.Listen, l.addr)
	}
	now := s.now()
	for _, w := range s.sortedWorkers() {
		ws := WorkerStatus{ID: w.id, PID: w.pid, State: w.state.String(), Requests: w.requests,
			RSS: w.rss, AgeSec: now.Sub(w.started).Seconds(), Gen: w.gen.n, Retiring: w.retiring}
		for _, p := range s.proxies {
			ws.InFlight += p.stats.Workers[w.id].InFlight
		}
		ws.Memory = s.workerMemory(w)
		st.Workers = append(st.Workers, ws)
	}
	if p := s.activeProxy(); p != nil {
		st.Upstreams = p.stats.Upstreams
		if p.stats.ACME != nil {
			st.TLS = &TLSStatus{ACME: p.stats.ACME}
		}
	}
	for _, p := range s.proxies {
		st.Queue += p.stats.Queue
		st.Proxies = append(st.Proxies, ProxyStatus{N: p.n, PID: p.pid, Ready: p.ready, Stopping: p.stopping})
	}
	st.Cgroup = s.cgroupStatus()
	for _, tr := range []*taskRun{s.bootTasks, s.rollTasks} {
		if tr != nil {
			st.Tasks = append(st.Tasks, tr.status(now)...)
		}
	}
	st.Programs = s.programStatus(now)
	st.Cron = s.jobStatus()
	return st
}

func (s *Supervisor) updateGauges() {
	counts := map[string]float64{}
	for _, st := range []workerState{wForking, wStarting, wReady, wDraining, wStopping} {
		counts[st.String()] = 0
	}
	for _, w := range s.workers {
		counts[w.state.String()]++
	}
	for k, v := range counts {
		s.metrics.workers.WithLabelValues(k).Set(v)
	}
	s.metrics.generation.Set(float64(s.generation))
	if s.pending != nil {
		s.metrics.rolling.Set(1)
	} else {
		s.metrics.rolling.Set(0)
	}
	if s.ready {
		s.metrics.ready.Set(1)
	} else {
		s.metrics.ready.Set(0)
	}
}
