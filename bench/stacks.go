package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// stackNames are the stacks, in the order the rounds alternate them.
var stackNames = []string{"berth", "uwsgi", "gunicorn", "uvicorn"}

func validStack(s string) bool { return contains(stackNames, s) }

// appKind picks the WSGI app a scenario serves.
type appKind int

const (
	appHello     appKind = iota // bench/apps/hello.py
	appDjango                   // tests/testdata/djangosite
	appASGI                     // bench/apps/asgi_hello.py, the raw ASGI app
	appStarlette                // bench/apps/asgi_hello.py, the Starlette app
)

// stackSpec is what a scenario asks of a stack instance.
type stackSpec struct {
	app         appKind
	maxRequests int  // recycle each worker after this many requests; 0 = never
	reloadable  bool // uWSGI: add the touch-reload file the reload scenario touches
	workers     int  // worker processes; 0 = -workers
	http3       bool // berth: tls.http3 on the HTTPS listener's port (UDP)
}

// tmplData fills the templates in bench/stacks/.
type tmplData struct {
	Dir         string // the instance's directory
	User        string // nginx worker user
	Port        int    // public HTTP port on 127.0.0.1
	AdminPort   int    // berth admin port
	Socket      string // the app server's unix socket (peers)
	StaticDir   string
	AppDir      string
	Module      string
	Workers     int
	MaxRequests int
	TouchReload string
	Env         map[string]string
	Backends    []string // the edge scenario's upstream servers, host:port
	TLSPort     int      // HTTPS port on 127.0.0.1 (HTTP/1.1 and HTTP/2; HTTP/3 over UDP with HTTP3)
	HTTP3       bool     // berth: tls.http3
	Cert, Key   string   // the bench's self-signed certificate
}

// instance is one running stack.
type instance struct {
	e          *benchEnv
	stack      string
	data       tmplData
	url        string // http://127.0.0.1:PORT
	tlsURL     string // https://127.0.0.1:TLSPORT
	probe      string // path polled for readiness on peers
	cfgPath    string // berth's config file
	nginx      *proc
	app        *proc
	appStarted time.Time
}

// proc is a started process with its exit watched.
type proc struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

func startProc(name string, args []string, dir string, env []string, logPath string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so stop can sweep every worker it left behind;
	// Pdeathsig so an interrupted bench does not leave stacks running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, log: f, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// stop sends sig, waits up to grace for the process to exit, then kills
// whatever is left in its process group.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(grace):
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
	p.log.Close()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freeTCPUDPPort is a loopback port free for both TCP and UDP.
func freeTCPUDPPort() (int, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free udp port: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		pc.Close()
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("find a port free for both tcp and udp: 20 tries failed")
}

func render(name string, data tmplData, dst string) error {
	b, err := assets.ReadFile("stacks/" + name)
	if err != nil {
		return err
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(b))
	if err != nil {
		return fmt.Errorf("template %s: %w", name, err)
	}
	var out bytes.Buffer
	if err := t.Execute(&out, data); err != nil {
		return fmt.Errorf("template %s: %w", name, err)
	}
	// Write then rename: berth watches its config and must never read half
	// a file.
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// start starts a stack: nginx first (for peers, waiting until it accepts),
// then the app server, whose start time is appStarted. It does not wait for
// the app to be ready: see waitReady.
func start(ctx context.Context, e *benchEnv, stack string, spec stackSpec) (*instance, error) {
	dir, err := e.instanceDir(stack)
	if err != nil {
		return nil, err
	}
	inst := &instance{e: e, stack: stack}
	d := tmplData{Dir: dir, User: e.user, StaticDir: e.staticDir, Workers: e.o.workers,
		MaxRequests: spec.maxRequests, Env: map[string]string{"BENCH_GEN": "0"}}
	switch spec.app {
	case appHello:
		d.AppDir, d.Module, inst.probe = e.helloDir, "hello:application", "/"
	case appDjango:
		d.AppDir, d.Module, inst.probe = e.djangoDir, "mysite.wsgi:application", "/hello"
		d.Env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
	case appASGI:
		d.AppDir, d.Module, inst.probe = e.helloDir, "asgi_hello:application", "/"
	case appStarlette:
		d.AppDir, d.Module, inst.probe = e.helloDir, "asgi_hello:app", "/json"
	}
	if spec.workers > 0 {
		d.Workers = spec.workers
	}
	if d.Port, err = freePort(); err != nil {
		return nil, err
	}
	inst.url = "http://127.0.0.1:" + strconv.Itoa(d.Port)
	if spec.http3 {
		// HTTP/3 is served on the same port number over UDP.
		d.TLSPort, err = freeTCPUDPPort()
	} else {
		d.TLSPort, err = freePort()
	}
	if err != nil {
		return nil, err
	}
	d.HTTP3 = spec.http3
	inst.tlsURL = "https://127.0.0.1:" + strconv.Itoa(d.TLSPort)
	d.Cert, d.Key = e.certFile, e.keyFile
	ok := false
	defer func() {
		if !ok {
			inst.stop()
		}
	}()
	if stack != "berth" {
		for _, sub := range []string{"client_body", "uwsgi_temp", "proxy_temp", "fastcgi_temp", "scgi_temp"} {
			os.MkdirAll(filepath.Join(dir, sub), 0o700)
		}
		d.Socket = filepath.Join(dir, stack+".sock")
		conf := filepath.Join(dir, "nginx.conf")
		if err := render("nginx-"+stack+".conf.tmpl", d, conf); err != nil {
			return nil, err
		}
		inst.nginx, err = startProc("nginx", []string{"-p", dir, "-e", filepath.Join(dir, "nginx-error.log"), "-c", conf, "-g", "daemon off;"},
			dir, nil, filepath.Join(dir, "nginx.log"))
		if err != nil {
			return nil, err
		}
		if err := waitAccepting(ctx, inst.nginx, d.Port, 10*time.Second); err != nil {
			return nil, err
		}
	}
	switch stack {
	case "berth":
		if d.AdminPort, err = freePort(); err != nil {
			return nil, err
		}
		inst.cfgPath = filepath.Join(dir, "berth.yaml")
		if err := render("berth.yaml.tmpl", d, inst.cfgPath); err != nil {
			return nil, err
		}
		inst.appStarted = time.Now()
		inst.app, err = startProc(e.berth, []string{"run", "--config", inst.cfgPath}, dir,
			[]string{"BERTH_RUN_DIR=" + filepath.Join(dir, "run")}, filepath.Join(dir, "berth.log"))
	case "uwsgi":
		if spec.reloadable {
			d.TouchReload = filepath.Join(dir, "touch-reload")
			if err := os.WriteFile(d.TouchReload, nil, 0o644); err != nil {
				return nil, err
			}
		}
		ini := filepath.Join(dir, "uwsgi.ini")
		if err := render("uwsgi.ini.tmpl", d, ini); err != nil {
			return nil, err
		}
		inst.appStarted = time.Now()
		inst.app, err = startProc("uwsgi", []string{"--ini", ini}, dir, nil, filepath.Join(dir, "uwsgi.log"))
	case "uvicorn":
		// As its deployment guide runs it behind nginx: a unix socket,
		// N worker processes, uvloop and httptools (uvicorn[standard]).
		inst.appStarted = time.Now()
		inst.app, err = startProc(systemPython, []string{"-m", "uvicorn", "--uds", d.Socket, "--workers", strconv.Itoa(d.Workers),
			"--no-access-log", "--log-level", "warning", "--app-dir", d.AppDir, d.Module}, dir, nil, filepath.Join(dir, "uvicorn.log"))
	case "gunicorn":
		conf := filepath.Join(dir, "gunicorn.conf.py")
		if err := render("gunicorn.conf.py.tmpl", d, conf); err != nil {
			return nil, err
		}
		inst.appStarted = time.Now()
		inst.app, err = startProc(systemPython, []string{"-m", "gunicorn", "--config", conf, d.Module}, dir, nil, filepath.Join(dir, "gunicorn.log"))
	default:
		return nil, fmt.Errorf("unknown stack %q", stack)
	}
	if err != nil {
		return nil, err
	}
	inst.data = d
	ok = true
	return inst, nil
}

// waitAccepting polls until something accepts TCP connections on port.
func waitAccepting(ctx context.Context, p *proc, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before listening on %d:\n%s", p.cmd.Path, port, p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting on port %d after %v:\n%s", p.cmd.Path, port, timeout, p.tail())
		}
	}
}

var pollClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// waitReady polls until the stack is ready and returns when it became so:
// berth's admin /readyz answers 200; a peer answers 200 on its HTTP port.
func (in *instance) waitReady(ctx context.Context, timeout time.Duration) (time.Time, error) {
	url := in.url + in.probe
	if in.stack == "berth" {
		url = "http://127.0.0.1:" + strconv.Itoa(in.data.AdminPort) + "/readyz"
	}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := pollClient.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now(), nil
			}
		}
		select {
		case <-in.app.exited:
			return time.Time{}, fmt.Errorf("%s exited before it was ready:\n%s", in.stack, in.app.tail())
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s not ready after %v (polling %s):\n%s", in.stack, timeout, url, in.app.tail())
		}
	}
}

// stop stops the app server, then nginx. SIGTERM is each one's graceful
// stop (uWSGI through die-on-term); nothing is in flight by now.
func (in *instance) stop() {
	if in.app != nil {
		in.app.stop(syscall.SIGTERM, 20*time.Second)
	}
	if in.nginx != nil {
		in.nginx.stop(syscall.SIGTERM, 10*time.Second)
	}
}

// reload makes the stack reload its configuration, rolling every worker:
// berth gets its config rewritten with a new app.env value (a worker
// setting, so a new worker generation replaces the old one); Gunicorn gets
// SIGHUP; uWSGI gets its touch-reload file touched.
func (in *instance) reload(gen int) error {
	switch in.stack {
	case "berth":
		d := in.data
		d.Env = map[string]string{}
		for k, v := range in.data.Env {
			d.Env[k] = v
		}
		d.Env["BENCH_GEN"] = strconv.Itoa(gen)
		return render("berth.yaml.tmpl", d, in.cfgPath)
	case "gunicorn":
		return in.app.cmd.Process.Signal(syscall.SIGHUP)
	case "uwsgi":
		if in.data.TouchReload == "" {
			return errors.New("uwsgi was started without a touch-reload file")
		}
		// uWSGI reloads only when the mtime (in whole seconds) grows:
		// make it grow by a second per reload whatever the clock did.
		t := in.appStarted.Truncate(time.Second).Add(time.Duration(gen) * time.Second)
		return os.Chtimes(in.data.TouchReload, t, t)
	}
	return fmt.Errorf("unknown stack %q", in.stack)
}

// berthStatus is the part of berth's admin /status the bench reads.
type berthStatus struct {
	Generation int `json:"config_generation"`
	Workers    []struct {
		PID   int    `json:"pid"`
		State string `json:"state"`
	} `json:"workers"`
	Proxies []struct {
		PID int `json:"pid"`
	} `json:"proxies"`
}

func (in *instance) berthStatus() (berthStatus, error) {
	var st berthStatus
	resp, err := pollClient.Get("http://127.0.0.1:" + strconv.Itoa(in.data.AdminPort) + "/status")
	if err != nil {
		return st, fmt.Errorf("berth /status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("berth /status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("berth /status: %w", err)
	}
	return st, nil
}

// Process roles, for the CPU split.
const (
	roleFront  = "front"  // nginx, or berth's proxy
	roleMaster = "master" // uWSGI/Gunicorn master, berth supervisor + zygote
	roleApp    = "app"    // the Python workers
)

// roles maps every process of the stack to its role.
func (in *instance) roles() (map[int]string, error) {
	tab, err := procTable()
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	if in.nginx != nil {
		for _, pid := range append([]int{in.nginx.pid()}, descendants(tab, in.nginx.pid())...) {
			out[pid] = roleFront
		}
	}
	root := in.app.pid()
	out[root] = roleMaster
	if in.stack != "berth" {
		for _, pid := range descendants(tab, root) {
			out[pid] = roleApp
		}
		return out, nil
	}
	st, err := in.berthStatus()
	if err != nil {
		return nil, err
	}
	for _, pid := range descendants(tab, root) {
		out[pid] = roleMaster // zygote, and anything else berth runs
	}
	for _, p := range st.Proxies {
		out[p.PID] = roleFront
	}
	for _, w := range st.Workers {
		out[w.PID] = roleApp
	}
	return out, nil
}

// workerPIDs are the stack's serving workers: berth's from /status, a
// peer's as the children of its master.
func (in *instance) workerPIDs() ([]int, error) {
	if in.stack == "berth" {
		st, err := in.berthStatus()
		if err != nil {
			return nil, err
		}
		var pids []int
		for _, w := range st.Workers {
			if w.State == "ready" {
				pids = append(pids, w.PID)
			}
		}
		return pids, nil
	}
	tab, err := procTable()
	if err != nil {
		return nil, err
	}
	var pids []int
	for pid, p := range tab {
		if p.ppid == in.app.pid() {
			// Uvicorn's workers are multiprocessing children, beside
			// multiprocessing's resource tracker, which serves nothing.
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmd, []byte("resource_tracker")) {
				continue
			}
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// allPIDs is every process of the stack: front, master, workers.
func (in *instance) allPIDs() ([]int, error) {
	r, err := in.roles()
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(r))
	for pid := range r {
		pids = append(pids, pid)
	}
	return pids, nil
}

func (in *instance) String() string {
	return fmt.Sprintf("%s on %s (%s)", in.stack, in.url, strings.TrimPrefix(in.data.Dir, os.TempDir()))
}
