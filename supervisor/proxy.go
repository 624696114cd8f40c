package supervisor

import (
	"bufio"
	"encoding/json"
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
)

// proxyConfig is the part of cfg the proxy applies.
func proxyConfig(cfg *config.Config) *control.Proxy {
	p := &control.Proxy{
		MaxBodySize:     int64(cfg.Proxy.MaxBodySize),
		TrustedProxies:  cfg.Proxy.TrustedProxies,
		AccessLog:       cfg.Proxy.AccessLog,
		QueueSize:       cfg.Proxy.Queue.Size,
		QueueTimeout:    control.Duration(cfg.Proxy.Queue.Timeout),
		Timeout:         control.Duration(cfg.Workers.Timeout),
		GracefulTimeout: control.Duration(cfg.Workers.GracefulTimeout),
	}
	for _, st := range cfg.Static {
		p.Static = append(p.Static, control.Static{URL: st.URL, Dir: st.Dir})
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
	var names []string
	for _, l := range s.listeners {
		files = append(files, l.file)
		names = append(names, l.addr)
	}
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
	p.conn = conn
	p.ctl = control.NewConn(conn)
	s.procs[p.pid] = p
	s.proxies = append(s.proxies, p)
	s.placeProxy(p)
	go readControl(p, s.ctlCh)
	go writeControl(p)
	s.send(p, control.Message{Type: control.TypeConfig, Config: proxyConfig(s.cfg)})
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
func writeControl(p *proxyProc) {
	for m := range p.out {
		if err := p.ctl.Send(m); err != nil {
			for range p.out {
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
		if w := s.workers[m.Worker]; w != nil {
			s.replace(w, "max_requests")
		}
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
			_ = s.os.Signal(w.pid, syscall.SIGUSR2)
			w.state = wStopping
			w.deadline = s.now().Add(dumpGrace)
			s.sendWorkers()
		}
	case control.TypeDrained:
		if w := s.workers[m.Worker]; w != nil && w.state == wDraining {
			w.drainedBy[p.n] = true
			s.maybeStopDrained(w)
		}
	case control.TypeStats:
		if m.Stats != nil {
			p.stats = *m.Stats
			s.sumRequests()
		}
	}
}

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
	if p.stopping {
		return
	}
	p.stopping = true
	p.deadline = s.now().Add(s.cfg.Workers.GracefulTimeout.D() + time.Second)
	_ = s.os.Signal(p.pid, syscall.SIGTERM)
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

// ---- listeners ----

func openListeners(addrs []string) ([]*listener, error) {
	if fds := activationFiles(); len(fds) > 0 {
		return fds, nil
	}
	var out []*listener
	for _, a := range addrs {
		l, err := openListener(a)
		if err != nil {
			for _, o := range out {
				o.close()
			}
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func openListener(addr string) (*listener, error) {
	network, address := "tcp", addr
	if strings.HasPrefix(addr, "unix:") {
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
		// A socket file left by an earlier run would make bind fail;
		// nobody else can be listening on it if we are starting.
		if st, err := os.Lstat(address); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(address)
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w; free the port or change listen in the config", addr, err)
	}
	var f *os.File
	switch l := ln.(type) {
	case *net.TCPListener:
		f, err = l.File()
	case *net.UnixListener:
		l.SetUnlinkOnClose(true)
		f, err = l.File()
		os.Chmod(address, 0o666)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	name := addr
	if network == "tcp" {
		name = ln.Addr().String()
	}
	return &listener{addr: name, configured: addr, file: f, ln: ln}, nil
}

func (l *listener) close() {
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
}

func (s *Supervisor) closeListeners() {
	for _, l := range s.listeners {
		l.close()
	}
}

// ---- notify socket ----

func (s *Supervisor) openNotify() error {
	path := filepath.Join(s.runDir, "notify.sock")
	os.Remove(path)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("boot: notify socket %s: %w", path, err)
	}
	// Workers may run as app.user; they must be able to say READY.
	os.Chmod(path, 0o666)
	s.notify = c
	go readNotify(c, s.notifyCh)
	return nil
}

func readNotify(c *net.UnixConn, ch chan<- map[string]string) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		m := map[string]string{}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				m[k] = v
			}
		}
		ch <- m
	}
}

func readZygote(z *zygote, f *os.File, ch chan<- zygoteReply) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r zygoteReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		r.z = z
		ch <- r
	}
	ch <- zygoteReply{z: z, eof: true}
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
