// Command workerbench measures the CPU time one berth Python worker spends per
// request, with no proxy in between: `go run ./bench/workerbench` from the
// module root.
//
// It starts berth_worker.py the way the supervisor does (python -u
// berth_worker.py zygote, then a fork command over the zygote's socket; or
// serve mode with -mode serve), connects to the worker's unix socket and
// sends it the packets berth's proxy sends (proxy/uwsgi's encoder: compact
// vars, BERTH_KEEPALIVE=1, a request ID), one request at a time per
// connection, as the proxy does. The figure is the worker process's
// utime+stime delta (/proc/PID/stat, every thread) over the measured
// requests, divided by their number.
//
// -runtime takes several berth_worker.py files (say, the one at main and a
// modified one): each round runs every file once per -conns case, in an
// order that alternates between rounds, and the summary gives medians and
// the median of the per-round ratios to the first file, so that a shared or
// busy machine skews both sides alike.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/proxy/cgi"
	"github.com/berth-dev/berth/proxy/uwsgi"
	"github.com/berth-dev/berth/worker"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat (100 on
// every Linux architecture Go supports).
const clockTicks = 100

type options struct {
	runtimes []string // berth_worker.py files; "" = the one embedded in this module
	python   string
	apps     string // BERTH_CHDIR
	app      string // BERTH_APP
	mode     string // zygote or serve
	path     string
	headers  [][2]string
	n        int
	warmup   int
	conns    []int
	rounds   int
	plain    bool
	perf     string // command to attach to the worker during the measured requests
	keep     bool
	uwsgi    string // uWSGI binary for the reference row; "" = none
}

type headerFlag [][2]string

func (h *headerFlag) String() string { return fmt.Sprint(*h) }
func (h *headerFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("header %q: want Name: value", s)
	}
	*h = append(*h, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	return nil
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("workerbench", flag.ContinueOnError)
	var o options
	rt := fs.String("runtime", "", "comma-separated berth_worker.py files to compare (the first is the baseline); empty = this module's worker/berth_worker.py")
	fs.StringVar(&o.python, "python", "/usr/bin/python3", "interpreter (app.python)")
	fs.StringVar(&o.apps, "chdir", "bench/apps", "app directory (app.chdir)")
	fs.StringVar(&o.app, "app", "hello:application", "app module (app.module)")
	fs.StringVar(&o.mode, "mode", "zygote", "zygote (workers.preload: true, berth's default) or serve")
	fs.StringVar(&o.path, "path", "/", "request path (and ?query)")
	var hdr headerFlag
	fs.Var(&hdr, "header", "extra request header `Name: value` (repeatable); Host is always sent, as by wrk")
	fs.IntVar(&o.n, "n", 100000, "measured requests per run (over all connections)")
	fs.IntVar(&o.warmup, "warmup", 2000, "unmeasured requests before each measurement")
	conns := fs.String("conns", "1,4", "comma-separated connection counts; each run gives the worker as many threads (the proxy opens at most workers.threads connections to a worker)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; the summary reports medians over them")
	fs.BoolVar(&o.plain, "plain", false, "send uWSGI's length-prefixed vars (as nginx would) instead of berth's compact ones")
	fs.StringVar(&o.perf, "perf", "", "command run with -p PID appended during each measured run, stopped with SIGINT after it (e.g. \"perf record -g -o /tmp/w.data\")")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dirs (runtimes, worker stderr)")
	fs.StringVar(&o.uwsgi, "uwsgi", "", "also measure this uWSGI binary's worker (python3 plugin, one process, -conns threads), sent uWSGI's own vars on a new connection per request as nginx does (e.g. /usr/bin/uwsgi)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: every setting is a flag (see -h)", fs.Args())
	}
	o.headers = hdr
	o.runtimes = strings.Split(*rt, ",")
	for _, c := range strings.Split(*conns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-conns %q: want positive numbers", *conns)
		}
		o.conns = append(o.conns, n)
	}
	switch {
	case o.mode != "zygote" && o.mode != "serve":
		return o, fmt.Errorf("-mode %q: want zygote or serve", o.mode)
	case o.n < 1 || o.warmup < 0 || o.rounds < 1:
		return o, fmt.Errorf("-n and -rounds must be ≥ 1, -warmup ≥ 0")
	}
	abs, err := filepath.Abs(o.apps)
	if err != nil {
		return o, err
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return o, fmt.Errorf("-chdir %s: not a directory (run from the module root, or pass -chdir)", o.apps)
	}
	o.apps = abs
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "workerbench:", err)
		os.Exit(2)
	}
	// A zygote's worker is double-forked: as the supervisor, be the one it
	// is reparented to, so that it can be reaped.
	if o.mode == "zygote" {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Fprintln(os.Stderr, "workerbench: become child subreaper:", err)
			os.Exit(1)
		}
	}
	signal.Ignore(syscall.SIGPIPE)
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "workerbench:", err)
		os.Exit(1)
	}
}

// runtime is one berth_worker.py under test, written with its companions
// (berth_asgi.py) into a directory of its own.
type runtime struct {
	label string
	dir   string
	uwsgi bool // uWSGI's own worker, driven as nginx drives it
}

type result struct {
	round, conns int
	rt           int
	cpuUS        float64 // worker CPU µs per request
	sysUS        float64 // of which in the kernel (tick-sampled: a rough split)
	rps          float64
	ctxsw        float64 // voluntary + involuntary context switches per request
}

func run(o options) error {
	top, err := os.MkdirTemp("", "workerbench")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "workerbench: keeping", top)
	} else {
		defer os.RemoveAll(top)
	}
	var rts []runtime
	for i, src := range o.runtimes {
		dir := filepath.Join(top, fmt.Sprintf("rt%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if _, err := worker.WriteFiles(dir); err != nil {
			return err
		}
		label := "worker/berth_worker.py (this tree)"
		if src = strings.TrimSpace(src); src != "" {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, worker.RuntimeFile), b, 0o644); err != nil {
				return err
			}
			label = src
		}
		rts = append(rts, runtime{label: label, dir: dir})
	}
	if o.uwsgi != "" {
		dir := filepath.Join(top, "uwsgi")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		rts = append(rts, runtime{label: "uWSGI (a connection per request)", dir: dir, uwsgi: true})
	}
	var results []result
	for r := 1; r <= o.rounds; r++ {
		for _, c := range o.conns {
			order := make([]int, len(rts))
			for i := range order {
				order[i] = i
			}
			if r%2 == 0 {
				slices.Reverse(order)
			}
			for _, i := range order {
				res, err := runOne(o, rts[i], c)
				if err != nil {
					return fmt.Errorf("%s, %d conns: %w", rts[i].label, c, err)
				}
				res.round, res.rt = r, i
				fmt.Fprintf(os.Stderr, "round %d/%d conns %d  %-40s %7.2f µs CPU/req (%.2f sys)  %6.0f req/s  %.2f ctxsw/req\n",
					r, o.rounds, c, rts[i].label, res.cpuUS, res.sysUS, res.rps, res.ctxsw)
				results = append(results, res)
			}
		}
	}
	printSummary(os.Stdout, o, rts, results)
	return nil
}

func printSummary(w io.Writer, o options, rts []runtime, results []result) {
	fmt.Fprintf(w, "\nworker CPU per request, medians of %d rounds (%d requests each, app %s, mode %s)\n",
		o.rounds, o.n, o.app, o.mode)
	fmt.Fprintln(w, "(user: utime alone, what the Python code itself costs; the kernel's share grows with the machine's load)")
	fmt.Fprintf(w, "%-6s %-40s %8s %9s %8s %9s %8s %9s\n", "conns", "runtime", "µs/req", "vs first", "user µs", "vs first", "req/s", "ctxsw/req")
	for _, c := range o.conns {
		for i, rt := range rts {
			var cpu, user, rps, sw, ratio, uratio []float64
			for _, r := range results {
				if r.conns != c || r.rt != i {
					continue
				}
				cpu = append(cpu, r.cpuUS)
				user = append(user, r.cpuUS-r.sysUS)
				rps = append(rps, r.rps)
				sw = append(sw, r.ctxsw)
				for _, b := range results {
					if b.conns == c && b.rt == 0 && b.round == r.round {
						ratio = append(ratio, r.cpuUS/b.cpuUS)
						uratio = append(uratio, (r.cpuUS-r.sysUS)/(b.cpuUS-b.sysUS))
					}
				}
			}
			rs, us := "-", "-"
			if i > 0 {
				rs, us = fmt.Sprintf("%.3f×", median(ratio)), fmt.Sprintf("%.3f×", median(uratio))
			}
			fmt.Fprintf(w, "%-6d %-40s %8.2f %9s %8.2f %9s %8.0f %9.2f\n", c, rt.label, median(cpu), rs, median(user), us, median(rps), median(sw))
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// proc is one worker process under measurement.
type proc struct {
	pid     int
	uwsgi   bool // a connection per request, uWSGI's vars
	sock    string
	stop    func() // kills and reaps the worker (and its zygote)
	stderr  string
	started time.Time
}

// startWorker starts a worker with the given threads from rt and waits until
// it is READY.
func startWorker(o options, rt runtime, threads int) (*proc, error) {
	dir, err := os.MkdirTemp(rt.dir, "run")
	if err != nil {
		return nil, err
	}
	if rt.uwsgi {
		return startUwsgi(o, dir, threads)
	}
	nsock := filepath.Join(dir, "n.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsock, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer notify.Close()
	stderrPath := filepath.Join(dir, "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	wsock := filepath.Join(dir, "w.sock")
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"PYTHONUNBUFFERED=1",
		// Not in berth's environment, but it only spares the app's source
		// tree a __pycache__; the import is done before anything is measured.
		"PYTHONDONTWRITEBYTECODE=1",
		"BERTH_APP=" + o.app,
		"BERTH_CHDIR=" + o.apps,
		"BERTH_PYTHONPATH=",
		"BERTH_THREADS=" + strconv.Itoa(threads),
		"BERTH_INTERFACE=auto",
		"NOTIFY_SOCKET=" + nsock,
	}
	cmd := exec.Command(o.python, "-u", filepath.Join(rt.dir, worker.RuntimeFile), o.mode)
	cmd.Dir = o.apps
	cmd.Stdout, cmd.Stderr = stderr, stderr
	var ours *os.File
	if o.mode == "zygote" {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		ours = os.NewFile(uintptr(fds[0]), "zygote-supervisor")
		theirs := os.NewFile(uintptr(fds[1]), "zygote")
		defer theirs.Close()
		cmd.ExtraFiles = []*os.File{theirs}
		env = append(env, "BERTH_ZYGOTE_FD=3")
	} else {
		env = append(env, "BERTH_WORKER_ID=b.1", "BERTH_SOCKET="+wsock)
	}
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		if ours != nil {
			ours.Close()
		}
		return nil, err
	}
	p := &proc{sock: wsock, stderr: stderrPath, started: time.Now()}
	fail := func(err error) (*proc, error) {
		if p.stop != nil {
			p.stop()
		} else {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if ours != nil {
			ours.Close()
		}
		b, _ := os.ReadFile(stderrPath)
		return nil, fmt.Errorf("%w\nworker stderr:\n%s", err, b)
	}
	if o.mode == "serve" {
		p.pid = cmd.Process.Pid
		p.stop = func() {
			cmd.Process.Kill()
			cmd.Wait()
		}
	} else {
		if _, err := waitNotify(notify, "BERTH_ZYGOTE"); err != nil {
			return fail(fmt.Errorf("zygote: %w", err))
		}
		req := fmt.Sprintf(`{"id": "b.1", "socket": %q}`+"\n", wsock)
		if _, err := ours.Write([]byte(req)); err != nil {
			return fail(fmt.Errorf("zygote command: %w", err))
		}
		line, err := bufio.NewReader(ours).ReadBytes('\n')
		if err != nil {
			return fail(fmt.Errorf("zygote reply: %w", err))
		}
		var reply struct {
			PID   int    `json:"pid"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(line, &reply); err != nil || reply.PID <= 0 {
			return fail(fmt.Errorf("zygote reply %q: %v %s", line, err, reply.Error))
		}
		p.pid = reply.PID
		p.stop = func() {
			// The worker was reparented to us (child subreaper): we reap it.
			unix.Kill(p.pid, unix.SIGKILL)
			var ws unix.WaitStatus
			unix.Wait4(p.pid, &ws, 0, nil)
			ours.Close() // EOF on its fd: the zygote exits
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
	}
	if _, err := waitNotify(notify, "BERTH_WORKER"); err != nil {
		return fail(fmt.Errorf("worker: %w", err))
	}
	return p, nil
}

// startUwsgi starts uWSGI as bench/stacks/uwsgi.ini.tmpl does, with one
// worker process, and waits until that worker answers.
func startUwsgi(o options, dir string, threads int) (*proc, error) {
	sock := filepath.Join(dir, "u.sock")
	logPath := filepath.Join(dir, "uwsgi.log")
	// --opt=value: uWSGI takes some options' values as optional, and a
	// separate word would be read as a config file.
	args := []string{"--plugin=python3", "--master", "--processes=1", "--socket=" + sock,
		"--chmod-socket=600", "--chdir=" + o.apps, "--module=" + o.app, "--need-app", "--die-on-term",
		"--disable-logging", "--logto=" + logPath}
	if threads > 1 {
		args = append(args, "--threads="+strconv.Itoa(threads))
	}
	cmd := exec.Command(o.uwsgi, args...)
	cmd.Dir = o.apps
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{sock: sock, stderr: logPath, started: time.Now(), uwsgi: true}
	p.stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	pkt, err := packetFor(o, false)
	if err != nil {
		p.stop()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := (&client{sock: sock, pkt: pkt}).doOnce()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("uWSGI not answering: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The master's one child is the worker.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(cmd.Process.Pid) {
				p.pid = pid
			}
		}
	}
	if p.pid == 0 {
		p.stop()
		return nil, errors.New("uWSGI's worker process not found")
	}
	return p, nil
}

// waitNotify reads sd_notify datagrams until one with READY=1 and key.
func waitNotify(c *net.UnixConn, key string) (map[string]string, error) {
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		n, _, err := c.ReadFromUnix(buf)
		if err != nil {
			return nil, fmt.Errorf("no READY=1: %w", err)
		}
		m := map[string]string{}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				m[k] = v
			}
		}
		if m["READY"] == "1" && m[key] != "" {
			return m, nil
		}
	}
}

// packetFor is what the proxy would send for GET o.path with wrk's
// headers: compact vars, or (to a uWSGI server, -uwsgi) uWSGI's own.
func packetFor(o options, compact bool) ([]byte, error) {
	u, err := url.ParseRequestURI(o.path)
	if err != nil {
		return nil, err
	}
	r := &http.Request{Method: "GET", URL: u, RequestURI: o.path, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Host: "127.0.0.1:8080", Header: http.Header{}}
	for _, h := range o.headers {
		r.Header.Add(h[0], h[1])
	}
	in := &cgi.Vars{RemoteAddr: "127.0.0.1", RemotePort: "50312", Scheme: "http", PathInfo: u.Path,
		ServerName: "127.0.0.1", ServerPort: "8080", RequestID: "4f0c1e0b8a6d4c9e9a3b2f1d0c5e7a61"}
	return uwsgi.AppendPacket(nil, r, in, compact)
}

// client is one kept-alive connection, as the proxy pools them; with sock
// set, a new connection per request, as nginx talks to uWSGI.
type client struct {
	c    net.Conn
	br   *bufio.Reader
	pkt  []byte
	sock string
}

// doOnce is one request on a connection of its own, the response ending at
// the worker's close.
func (cl *client) doOnce() error {
	c, err := net.Dial("unix", cl.sock)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write(cl.pkt); err != nil {
		return err
	}
	if cl.br == nil {
		cl.br = bufio.NewReaderSize(nil, 64<<10)
	}
	cl.br.Reset(c)
	_, err = readOK(cl.br)
	return err
}

func (cl *client) do() error {
	if _, err := cl.c.Write(cl.pkt); err != nil {
		return err
	}
	resp, err := readOK(cl.br)
	if err != nil {
		return err
	}
	if resp.Close {
		return errors.New("the worker closed a kept-alive connection")
	}
	return nil
}

// readOK reads one response whole and wants it 200.
func readOK(br *bufio.Reader) (*http.Response, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return resp, nil
}

// drive sends n requests over the clients, each connection one request at a
// time.
func drive(clients []*client, n int) error {
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for i, cl := range clients {
		k := n / len(clients)
		if i < n%len(clients) {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			do := cl.do
			if cl.sock != "" {
				do = cl.doOnce
			}
			for j := 0; j < k; j++ {
				if err := do(); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

type usage struct {
	ticks int64 // utime + stime, every thread
	sys   int64 // stime
	ctxsw int64 // voluntary + involuntary, every thread
}

func readUsage(pid int) (usage, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return usage{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return usage{}, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return usage{}, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return usage{}, err
	}
	u := usage{ticks: ut + st, sys: st}
	// Context switches are per thread: add up every task's.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		s, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(s), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.ctxsw += n
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.ctxsw += n
			}
		}
	}
	return u, nil
}

func runOne(o options, rt runtime, conns int) (result, error) {
	pkt, err := packetFor(o, !o.plain && !rt.uwsgi)
	if err != nil {
		return result{}, err
	}
	p, err := startWorker(o, rt, conns)
	if err != nil {
		return result{}, err
	}
	defer p.stop()
	var clients []*client
	for i := 0; i < conns; i++ {
		if p.uwsgi {
			clients = append(clients, &client{sock: p.sock, pkt: pkt})
			continue
		}
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			return result{}, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Minute))
		clients = append(clients, &client{c: c, br: bufio.NewReaderSize(c, 64<<10), pkt: pkt})
	}
	if err := drive(clients, max(o.warmup, conns)); err != nil {
		return result{}, fmt.Errorf("warm-up: %w", err)
	}
	var perf *exec.Cmd
	if o.perf != "" {
		args := append(strings.Fields(o.perf), "-p", strconv.Itoa(p.pid))
		perf = exec.Command(args[0], args[1:]...)
		perf.Stdout, perf.Stderr = os.Stderr, os.Stderr
		if err := perf.Start(); err != nil {
			return result{}, fmt.Errorf("-perf: %w", err)
		}
		time.Sleep(500 * time.Millisecond) // let it attach
	}
	before, err := readUsage(p.pid)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	if err := drive(clients, o.n); err != nil {
		return result{}, err
	}
	elapsed := time.Since(start)
	after, err := readUsage(p.pid)
	if err != nil {
		return result{}, err
	}
	if perf != nil {
		perf.Process.Signal(os.Interrupt)
		perf.Wait()
	}
	n := float64(o.n)
	return result{
		conns: conns,
		cpuUS: float64(after.ticks-before.ticks) * 1e6 / clockTicks / n,
		sysUS: float64(after.sys-before.sys) * 1e6 / clockTicks / n,
		rps:   n / elapsed.Seconds(),
		ctxsw: float64(after.ctxsw-before.ctxsw) / n,
	}, nil
}
