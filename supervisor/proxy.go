package supervisor

import (
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/cgroup"
	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
	"github.com/berth-dev/berth/proxy/quicsteer"
)

// proxyConfig is the part of cfg the proxy applies, with the certificates
// read for it.
func (s *Supervisor) proxyConfig(cfg *config.Config) *control.Proxy {
	p := &control.Proxy{
		MaxBodySize:     int64(cfg.Proxy.MaxBodySize),
		BodyBufferSize:  int64(cfg.Proxy.BodyBufferSize),
		TrustedProxies:  cfg.Proxy.TrustedProxies,
		AccessLog:       cfg.Proxy.AccessLog,
		RequestID:       cfg.Proxy.RequestID,
		QueueSize:       cfg.Proxy.Queue.Size,
		QueueTimeout:    control.Duration(cfg.Proxy.Queue.Timeout),
		Timeout:         control.Duration(cfg.Workers.Timeout),
		GracefulTimeout: control.Duration(cfg.Workers.GracefulTimeout),
		DrainTimeout:    control.Duration(cfg.Workers.DrainTimeout),
	}
	for _, st := range cfg.Static {
		p.Static = append(p.Static, control.Static{URL: st.URL, Dir: st.Dir, File: st.File, Cache: control.Duration(st.Cache)})
	}
	p.Upstreams, p.Routes = upstreamConfig(cfg)
	s.edgeConfig(cfg, p)
	s.accessConfig(cfg, p)
	for _, m := range cfg.Mounts {
		p.Mounts = append(p.Mounts, control.Mount{Pool: m.Name, URLs: m.URLs})
	}
	return p
}

// startProxy starts a proxy on the current listeners. Any proxy already
// running keeps serving until the new one says ready (see onControl).
func (s *Supervisor) startProxy() error {
	s.proxySeq++
	p := &proxyProc{n: s.proxySeq, out: make(chan control.Message, 256), listeners: s.listeners, started: s.now()}
	p.metrics = filepath.Join(s.runDir, fmt.Sprintf("proxy-%d.sock", p.n))
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("proxy: control socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "proxy-ctl")
	theirs := os.NewFile(uintptr(fds[1]), "proxy-ctl-child")
	defer theirs.Close()
	files := []*os.File{theirs}
	var names, tlsFlags []string
	for _, l := range s.listeners {
		files = append(files, l.file)
		names = append(names, l.addr)
		tlsFlags = append(tlsFlags, strconv.FormatBool(listenerTLS(s.cfg.Listen, l.configured, l.addr)))
	}
	// HTTP/3: a socket of its own in each https:// port's group (udp.go).
	for _, l := range s.listeners {
		if l.udp == nil || !s.cfg.TLS.HTTP3 {
			continue
		}
		u, err := l.udp.add(p.n)
		if err != nil {
			s.log.Printf("proxy %d: %v; it serves no HTTP/3 on %s", p.n, err, l.udp.addr)
			continue
		}
		p.udp = append(p.udp, u)
		files = append(files, u.file)
	}
	udpStarted := false
	defer func() {
		if !udpStarted {
			for _, u := range p.udp {
				u.close()
			}
		}
	}()
	cred, err := credentialFor(s.cfg.App.User)
	if err != nil {
		ours.Close()
		return err
	}
	spec := ProcSpec{
		Path: s.exe,
		Args: []string{"berth", "proxy"},
		Env: childEnv(map[string]string{
			"GOMAXPROCS":           s.proxyGOMAXPROCS(),
			"BERTH_CONTROL_FD":     "3",
			"BERTH_LISTEN_FDS":     strconv.Itoa(len(s.listeners)),
			"BERTH_LISTEN_NAMES":   strings.Join(names, ","),
			"BERTH_LISTEN_TLS":     strings.Join(tlsFlags, ","),
			"BERTH_UDP_FDS":        strconv.Itoa(len(p.udp)),
			"BERTH_QUIC_TAG":       strconv.Itoa(int(quicsteer.Tag(p.n))),
			"BERTH_METRICS_SOCKET": p.metrics,
			"BERTH_PROXY_ID":       strconv.Itoa(p.n),
		}),
		Dir:        "/",
		Files:      files,
		Credential: cred,
		CgroupFD:   -1,
	}
	p.pid, err = s.os.Start(spec)
	if err != nil {
		ours.Close()
		s.proxyFail++
		return fmt.Errorf("proxy: %w", err)
	}
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		_ = s.os.Signal(p.pid, syscall.SIGKILL)
		return fmt.Errorf("proxy: control socket: %w", err)
	}
	udpStarted = true // the proxy's now: closed when it exits
	p.conn = conn
	p.ctl = control.NewConn(conn)
	s.procs[p.pid] = p
	s.proxies = append(s.proxies, p)
	s.placeProxy(p)
	go readControl(p, s.ctlCh)
	go writeControl(p.ctl, p.out)
	s.send(p, control.Message{Type: control.TypeConfig, Config: s.proxyConfig(s.cfg)})
	s.sendWorkers()
	return nil
}

func readControl(p *proxyProc, ch chan<- ctlEvent) {
	for {
		m, err := p.ctl.Receive()
		if err != nil {
			if err != io.EOF {
				ch <- ctlEvent{p: p, err: err}
			}
			return
		}
		ch <- ctlEvent{p: p, msg: m}
	}
}

// writeControl sends from the proxy's outbox, so a proxy that stops reading
// can never block the loop.
// writeControl sends out's messages on ctl until out is closed. It takes
// the channel, not the proxyProc: proxyExited sets p.out to nil, and a
// failed send drains what is left of this channel, never a nil one.
func writeControl(ctl *control.Conn, out <-chan control.Message) {
	for m := range out {
		if err := ctl.Send(m); err != nil {
			for range out {
			}
			return
		}
	}
}

// send queues m for p. A proxy whose outbox is full is not reading its
// control socket; it is killed and restarted rather than left half-informed.
func (s *Supervisor) send(p *proxyProc, m control.Message) {
	if p.out == nil {
		return
	}
	select {
	case p.out <- m:
	default:
		s.log.Printf("proxy %d (pid %d) is not reading its control socket: killing it", p.n, p.pid)
		_ = s.os.Signal(p.pid, syscall.SIGKILL)
	}
}

func (s *Supervisor) onControl(ev ctlEvent) {
	p := ev.p
	if ev.err != nil {
		s.log.Printf("proxy %d: %v", p.n, ev.err)
		return
	}
	m := ev.msg
	switch m.Type {
	case control.TypeReady:
		if p.ready {
			return
		}
		p.ready = true
		// A new proxy serves: the ones it replaces stop gracefully.
		for _, old := range s.proxies {
			if old != p && !old.stopping {
				s.stopProxy(old, "replaced")
			}
		}
		if s.bootDone {
			s.log.Printf("proxy %d (pid %d) serving", p.n, p.pid)
		}
		s.checkReady()
		s.checkReload()
	case control.TypeDue:
		s.workerDue(m.Worker)
	case control.TypeTimeout:
		if w := s.workers[m.Worker]; w != nil && w.state <= wDraining && w.pid > 0 {
			s.log.Printf("worker %s (pid %d) ran a request past timeout %s: dumping its stack and replacing it", w.id, w.pid, w.gen.cfg.Workers.Timeout.D())
			if w.slot.cur == w && w.slot.next == nil && !w.slot.retired && s.phase == running {
				w.retiring = "timeout"
				w.slot.next = s.startWorker(w.slot, s.gen)
			}
			w.retiring = "timeout"
			s.metrics.restarts.WithLabelValues("timeout").Inc()
			s.restarts["timeout"]++
			// faulthandler prints every thread's stack on SIGUSR2; the
			// SIGKILL follows at the deadline, from the tick.
			w.state = wStopping
			s.stop(&w.stopSeq, w.pid, syscall.SIGUSR2, dumpGrace)
			s.sendWorkers()
		}
	case control.TypeDrained:
		s.workerDrained(m.Worker, p)
	case control.TypeStats:
		if m.Stats != nil {
			p.stats = *m.Stats
			s.sumRequests()
		}
	}
}

// workerDue handles a proxy's report that worker id has used up its
// max_requests budget: it is replaced, and serves until the replacement is
// ready.
func (s *Supervisor) workerDue(id string) {
	if w := s.workers[id]; w != nil {
		s.replace(w, "max_requests")
	}
}

// workerDrained handles proxy p's report that draining worker id has no
// request left there; the worker stops once every proxy has said so.
func (s *Supervisor) workerDrained(id string, p *proxyProc) {
	if w := s.workers[id]; w != nil && w.state == wDraining {
		w.drainedBy[p.n] = true
		s.maybeStopDrained(w)
	}
}

// maybeStopDrained stops w once every running proxy reported it drained.
func (s *Supervisor) maybeStopDrained(w *worker) {
	for _, p := range s.proxies {
		if !w.drainedBy[p.n] {
			return
		}
	}
	s.stopWorker(w)
}

func (s *Supervisor) sumRequests() {
	for _, w := range s.workers {
		var n int64
		for _, p := range s.proxies {
			n += p.stats.Workers[w.id].Requests
		}
		if n > w.requests {
			w.requests = n
		}
	}
}

func (s *Supervisor) stopProxy(p *proxyProc, why string) {
	if !s.stop(&p.stopSeq, p.pid, syscall.SIGTERM, s.cfg.Workers.GracefulTimeout.D()+time.Second) {
		return
	}
	// Draining workers no longer wait for this proxy.
	for _, w := range s.workers {
		if w.state == wDraining {
			s.maybeStopDrained(w)
		}
	}
}

func (s *Supervisor) proxyExited(p *proxyProc, e Exit) {
	for i, x := range s.proxies {
		if x == p {
			s.proxies = append(s.proxies[:i], s.proxies[i+1:]...)
			break
		}
	}
	close(p.out)
	p.out = nil
	p.conn.Close()
	for _, u := range p.udp {
		u.close() // its connections died with it; the group steers to the others
	}
	p.udp = nil
	os.Remove(p.metrics)
	for _, w := range s.workers {
		if w.state == wDraining {
			s.maybeStopDrained(w)
		}
	}
	if p.stopping {
		return
	}
	if s.phase > phaseDelay || s.fatal != nil {
		return
	}
	s.metrics.restarts.WithLabelValues("proxy").Inc()
	s.restarts["proxy"]++
	if s.now().Sub(p.started) >= healthyAfter {
		s.proxyFail = 0
	}
	s.proxyFail++
	if s.activeProxy() != nil {
		return
	}
	// The listening sockets are ours, so while no proxy runs, connections
	// wait in the kernel's accept queue: a restart refuses none of them.
	d := backoff(s.proxyFail - 1)
	s.log.Printf("proxy %d (pid %d) %s; restarting it in %s", p.n, p.pid, e.Describe(), d)
	s.ready = false
	if d == 0 {
		if err := s.startProxy(); err != nil {
			s.log.Printf("%v", err)
			s.proxyRestartAt = s.now().Add(backoff(s.proxyFail))
		}
		return
	}
	s.proxyRestartAt = s.now().Add(d)
}

// activeProxy is the proxy that is not stopping (the newest), or nil.
func (s *Supervisor) activeProxy() *proxyProc {
	for i := len(s.proxies) - 1; i >= 0; i-- {
		if !s.proxies[i].stopping {
			return s.proxies[i]
		}
	}
	return nil
}

// proxyGOMAXPROCS is the proxy's GOMAXPROCS: a quarter of the CPUs berth
// may use, at least 1, unless the operator set GOMAXPROCS. The proxy waits
// on sockets far more than it computes; with one P per CPU the Go
// scheduler's idle Ps spin and wake threads for every request, and on a
// 2-CPU container that churn took CPU from the Python workers: Django
// throughput rose from 2.3k to 3.8k requests/s with 1 P (docs/benchmarks.md).
func (s *Supervisor) proxyGOMAXPROCS() string {
	quota, quotaOK := 0.0, false
	if s.cg != nil && s.cg.m != nil {
		quota, quotaOK = cgroup.CPUQuota(s.cg.m)
	}
	return proxyProcs(s.operatorGOMAXPROCS, cgroup.UsableCPUs(), quota, quotaOK)
}

// proxyProcs computes proxyGOMAXPROCS from values only: operator is
// GOMAXPROCS as berth found it at start ("" = not set), usable the CPUs berth
// may run on, quota the cgroup CPU quota in CPUs when quotaOK.
func proxyProcs(operator string, usable int, quota float64, quotaOK bool) string {
	if operator != "" {
		return operator
	}
	cpus := float64(usable)
	if quotaOK && quota < cpus {
		cpus = quota
	}
	n := int(math.Ceil(cpus / 4))
	if n < 1 {
		n = 1
	}
	return strconv.Itoa(n)
}
