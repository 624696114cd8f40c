package supervisor

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// fakeOS records starts and signals; no process is ever created. It
// reads each proxy's control socket as the proxy would (proxyInbox).
type fakeOS struct {
	next    int
	started []ProcSpec
	pids    []int
	signals []string // "pid:SIGNAME"
	exits   chan Exit
	inboxes map[int]*proxyInbox // by proxy pid
}

func newFakeOS() *fakeOS {
	return &fakeOS{next: 1000, exits: make(chan Exit, 16), inboxes: map[int]*proxyInbox{}}
}

func (f *fakeOS) Start(s ProcSpec) (int, error) {
	f.next++
	f.started = append(f.started, s)
	f.pids = append(f.pids, f.next)
	if len(s.Args) == 2 && s.Args[1] == "proxy" {
		f.inboxes[f.next] = readInbox(s.Files[0]) // fd 3: its control socket
	}
	return f.next, nil
}

// proxyInbox is every message a proxy was sent, in order, read off the
// proxy's end of its control socket.
type proxyInbox struct {
	mu   sync.Mutex
	msgs []control.Message
}

func readInbox(f *os.File) *proxyInbox {
	in := &proxyInbox{}
	conn, err := net.FileConn(f) // a dup: the supervisor closes f
	if err != nil {
		panic(err)
	}
	go func() {
		defer conn.Close()
		c := control.NewConn(conn)
		for {
			m, err := c.Receive()
			if err != nil {
				return
			}
			in.mu.Lock()
			in.msgs = append(in.msgs, m)
			in.mu.Unlock()
		}
	}()
	return in
}

func (f *fakeOS) Signal(pid int, sig syscall.Signal) error {
	f.signals = append(f.signals, fmt.Sprintf("%d:%s", pid, unix.SignalName(sig)))
	return nil
}

func (f *fakeOS) SignalGroup(pgid int, sig syscall.Signal) error {
	f.signals = append(f.signals, fmt.Sprintf("-%d:%s", pgid, unix.SignalName(sig)))
	return nil
}

func (f *fakeOS) Exits() <-chan Exit { return f.exits }

func (f *fakeOS) signalled(pid int, sig syscall.Signal) bool {
	want := fmt.Sprintf("%d:%s", pid, unix.SignalName(sig))
	for _, s := range f.signals {
		if s == want {
			return true
		}
	}
	return false
}

// startsOf returns the pids of started processes whose mode arg (python
// "serve"/"zygote", berth "proxy") is mode.
func (f *fakeOS) startsOf(mode string) []int {
	var out []int
	for i, s := range f.started {
		if s.Args[len(s.Args)-1] == mode {
			out = append(out, f.pids[i])
		}
	}
	return out
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type harness struct {
	t     *testing.T
	s     *Supervisor
	os    *fakeOS
	clk   *clock
	marks int // sentTo's
}

func newHarness(t *testing.T, edit func(*config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Admin.Listen = "off"
	cfg.App.Python = "/bin/sh" // any executable: nothing is run
	cfg.App.Chdir = t.TempDir()
	cfg.Workers.Count = 2
	cfg.Workers.Preload = false
	cfg.Workers.GracefulTimeout = config.Duration(5 * time.Second)
	if edit != nil {
		edit(cfg)
	}
	dir, err := os.MkdirTemp("", "bs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fo := newFakeOS()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	s, err := newSupervisor(Options{Config: cfg, RunDir: dir, OS: fo, CgroupRoot: "off", Now: clk.now, Log: log.New(io.Discard, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		s.log = log.New(os.Stderr, "berth-test: ", 0)
	}
	if err := s.boot(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.closeAll)
	return &harness{t: t, s: s, os: fo, clk: clk}
}

// sentTo returns every message proxy p was sent until now, as p read them:
// it sends p a mark and waits until p has read it.
func (h *harness) sentTo(p *proxyProc) []control.Message {
	h.t.Helper()
	const mark = "test: mark"
	h.marks++
	h.s.send(p, control.Message{Type: mark, Worker: fmt.Sprint(h.marks)})
	in := h.os.inboxes[p.pid]
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		in.mu.Lock()
		msgs := append([]control.Message(nil), in.msgs...)
		in.mu.Unlock()
		if n := len(msgs); n > 0 && msgs[n-1].Type == mark && msgs[n-1].Worker == fmt.Sprint(h.marks) {
			var out []control.Message
			for _, m := range msgs {
				if m.Type != mark {
					out = append(out, m)
				}
			}
			return out
		}
	}
	h.t.Fatalf("proxy %d did not read its control socket", p.n)
	return nil
}

func (h *harness) ready(id string) {
	h.s.onNotify(map[string]string{"READY": "1", "BERTH_WORKER": id})
}

func (h *harness) proxyReady() {
	p := h.s.activeProxy()
	h.s.onControl(ctlEvent{p: p, msg: control.Message{Type: control.TypeReady}})
}

func (h *harness) exit(pid int, code int) {
	h.s.onExit(Exit{Pid: pid, Status: unix.WaitStatus(code << 8)})
}

func (h *harness) killed(pid int, sig syscall.Signal) {
	h.s.onExit(Exit{Pid: pid, Status: unix.WaitStatus(sig)})
}

func (h *harness) tick(d time.Duration) {
	h.clk.advance(d)
	h.s.onTick()
}

func (h *harness) worker(id string) *worker {
	w := h.s.workers[id]
	if w == nil {
		h.t.Fatalf("no worker %s; have %v", id, h.ids())
	}
	return w
}

func (h *harness) ids() []string {
	var ids []string
	for _, w := range h.s.sortedWorkers() {
		ids = append(ids, w.id+"="+w.state.String())
	}
	return ids
}

func (h *harness) bootReady() {
	h.ready("1.1")
	h.ready("2.1")
	h.proxyReady()
	if !h.s.ready {
		h.t.Fatalf("not ready after workers and proxy said READY: %v", h.ids())
	}
}

func TestBootStartsWorkersAndProxyThenReady(t *testing.T) {
	h := newHarness(t, nil)
	if got := len(h.os.startsOf("serve")); got != 2 {
		t.Fatalf("started %d workers, want 2", got)
	}
	// The proxy starts with the workers, so no client waits in the
	// kernel's backlog during the import (bootpolicy.go).
	if got := len(h.os.startsOf("proxy")); got != 1 {
		t.Fatalf("started %d proxies at boot, want 1", got)
	}
	spec := h.os.started[1] // after the proxy
	env := strings.Join(spec.Env, "\n")
	for _, want := range []string{"BERTH_WORKER_ID=1.1", "BERTH_THREADS=1", "NOTIFY_SOCKET=" + h.s.runDir + "/notify.sock"} {
		if !strings.Contains(env, want) {
			t.Errorf("worker env lacks %q", want)
		}
	}
	h.ready("1.1")
	if got := len(h.os.startsOf("proxy")); got != 1 {
		t.Fatalf("started %d proxies after the first worker was ready, want still 1", got)
	}
	h.proxyReady()
	if h.s.ready {
		t.Fatal("ready with one of two workers")
	}
	h.ready("2.1")
	if !h.s.ready {
		t.Fatal("not ready with both workers and the proxy")
	}
}

func TestRecycleReplacesBeforeStopping(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	old := h.worker("1.1")
	p := h.s.activeProxy()
	h.s.onControl(ctlEvent{p: p, msg: control.Message{Type: control.TypeDue, Worker: "1.1"}})
	if old.state != wReady {
		t.Fatalf("due worker left routing before its replacement was ready: %s", old.state)
	}
	repl := h.worker("1.2")
	if repl.state != wStarting {
		t.Fatalf("replacement state %s", repl.state)
	}
	h.ready("1.2")
	if old.state != wDraining {
		t.Fatalf("old worker %s after replacement ready, want draining", old.state)
	}
	if h.os.signalled(old.pid, syscall.SIGTERM) {
		t.Fatal("SIGTERM before the proxy drained it")
	}
	h.s.onControl(ctlEvent{p: p, msg: control.Message{Type: control.TypeDrained, Worker: "1.1"}})
	if !h.os.signalled(old.pid, syscall.SIGTERM) {
		t.Fatal("drained worker not sent SIGTERM")
	}
	starts := len(h.os.started)
	h.exit(old.pid, 0)
	h.tick(time.Second)
	if len(h.os.started) != starts {
		t.Fatal("an orderly recycled exit started another worker")
	}
	if !h.s.ready || h.s.slots[0].cur != repl {
		t.Fatalf("slot 1 not served by the replacement: %v", h.ids())
	}
}

func TestCrashRestartsWithBackoff(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	for i, wantDelay := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		var w *worker
		for _, x := range h.s.workers {
			if x.slot.n == 1 {
				w = x
			}
		}
		starts := len(h.os.started)
		h.exit(w.pid, 1)
		h.tick(wantDelay / 2)
		if len(h.os.started) != starts {
			t.Fatalf("crash %d: restarted before the backoff of %s", i+1, wantDelay)
		}
		h.tick(wantDelay)
		if len(h.os.started) != starts+1 {
			t.Fatalf("crash %d: not restarted after %s", i+1, wantDelay)
		}
		h.ready(h.s.slots[0].next.id)
	}
	if h.s.restarts["crash"] != 3 {
		t.Fatalf("restarts by cause: %v", h.s.restarts)
	}
}

func TestImportFailureAtBootStops(t *testing.T) {
	h := newHarness(t, nil)
	h.exit(h.worker("1.1").pid, 4)
	if h.s.fatal == nil {
		t.Fatal("import failure at boot not fatal")
	}
	if !h.os.signalled(h.worker("2.1").pid, syscall.SIGTERM) {
		t.Fatal("other worker not stopped")
	}
	h.exit(h.worker("2.1").pid, 0)
	proxy := h.os.startsOf("proxy")[0]
	if !h.os.signalled(proxy, syscall.SIGQUIT) {
		t.Fatal("proxy not told to stop at once")
	}
	h.killed(proxy, syscall.SIGQUIT)
	done, code := h.s.finished()
	if !done || code != ExitAppImport {
		t.Fatalf("finished %v code %d, want exit %d", done, code, ExitAppImport)
	}
}

func TestGracefulShutdownSequence(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Shutdown.Delay = config.Duration(2 * time.Second) })
	h.bootReady()
	proxyPid := h.os.startsOf("proxy")[0]
	h.s.onSignal(syscall.SIGTERM)
	if v := h.s.answerAdmin("ready"); v == "" {
		t.Fatal("/readyz still ready after SIGTERM")
	}
	if h.os.signalled(proxyPid, syscall.SIGTERM) {
		t.Fatal("proxy stopped before shutdown.delay")
	}
	h.tick(2100 * time.Millisecond)
	if !h.os.signalled(proxyPid, syscall.SIGTERM) {
		t.Fatal("proxy not stopped after shutdown.delay")
	}
	w1, w2 := h.worker("1.1"), h.worker("2.1")
	if h.os.signalled(w1.pid, syscall.SIGTERM) {
		t.Fatal("workers stopped while the proxy still finishes requests")
	}
	h.exit(proxyPid, 0)
	if !h.os.signalled(w1.pid, syscall.SIGTERM) || !h.os.signalled(w2.pid, syscall.SIGTERM) {
		t.Fatal("workers not stopped once the proxy finished")
	}
	h.exit(w1.pid, 0)
	// w2 ignores SIGTERM: SIGKILL at the graceful deadline, not before.
	h.tick(4 * time.Second)
	if h.os.signalled(w2.pid, syscall.SIGKILL) {
		t.Fatal("SIGKILL before graceful_timeout")
	}
	h.tick(2 * time.Second)
	if !h.os.signalled(w2.pid, syscall.SIGKILL) {
		t.Fatal("no SIGKILL after graceful_timeout")
	}
	h.killed(w2.pid, syscall.SIGKILL)
	done, code := h.s.finished()
	if !done || code != 0 {
		t.Fatalf("finished %v code %d, want exit 0", done, code)
	}
}

func TestTimeoutDumpsThenKillsAndReplaces(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	w := h.worker("2.1")
	h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeTimeout, Worker: "2.1"}})
	if !h.os.signalled(w.pid, syscall.SIGUSR2) {
		t.Fatal("no SIGUSR2 stack dump")
	}
	if h.s.slots[1].next == nil {
		t.Fatal("no replacement started")
	}
	h.tick(100 * time.Millisecond)
	if h.os.signalled(w.pid, syscall.SIGKILL) {
		t.Fatal("killed before the stack could be written")
	}
	h.tick(300 * time.Millisecond)
	if !h.os.signalled(w.pid, syscall.SIGKILL) {
		t.Fatal("stuck worker not killed")
	}
	h.killed(w.pid, syscall.SIGKILL)
	h.ready("2.2")
	if h.s.slots[1].cur == nil || h.s.slots[1].cur.id != "2.2" || !h.s.ready {
		t.Fatalf("slot 2 not served by the replacement: %v", h.ids())
	}
}

func TestScaleSignals(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	h.s.onSignal(syscall.SIGTTIN)
	if h.s.activeSlots() != 3 {
		t.Fatalf("SIGTTIN: %d slots", h.s.activeSlots())
	}
	h.ready("3.1")
	h.s.onSignal(syscall.SIGTTOU)
	h.s.onSignal(syscall.SIGTTOU)
	if h.s.activeSlots() != 1 {
		t.Fatalf("2×SIGTTOU: %d slots", h.s.activeSlots())
	}
	h.s.onSignal(syscall.SIGTTOU)
	if h.s.activeSlots() != 1 {
		t.Fatal("scaled below one worker")
	}
}

func TestOrphansAreCounted(t *testing.T) {
	h := newHarness(t, nil)
	h.exit(424242, 0)
	if h.s.orphans != 1 {
		t.Fatal("orphan exit not counted")
	}
}

func TestBackoff(t *testing.T) {
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{0, 0}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {7, 6400 * time.Millisecond}, {8, 10 * time.Second}, {60, 10 * time.Second}} {
		if got := backoff(c.n); got != c.want {
			t.Errorf("backoff(%d) = %s, want %s", c.n, got, c.want)
		}
	}
}

func TestReloadOfMaxRequestsReachesRunningWorkers(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	path := filepath.Join(t.TempDir(), "berth.yaml")
	os.WriteFile(path, []byte("workers: {max_requests: 0}\n"), 0o644)
	h.s.opts.ConfigPath = path
	cfg := *h.s.cfg
	h.s.cfg = &cfg
	os.WriteFile(path, []byte(fmt.Sprintf("listen: [%q]\nadmin: {listen: \"off\"}\napp: {python: /bin/sh, chdir: %s}\nworkers: {count: 2, preload: false, max_requests: 50, graceful_timeout: 5s}\n",
		h.s.cfg.Listen[0], h.s.cfg.App.Chdir)), 0o644)
	h.s.reload(reloadRequest{reason: "test"})
	if !h.s.reloadState.OK {
		t.Fatalf("reload: %+v", h.s.reloadState)
	}
	for _, w := range h.s.workers {
		if w.budget != 50 {
			t.Fatalf("worker %s budget %d after reload, want 50", w.id, w.budget)
		}
	}
	if n := len(h.os.startsOf("serve")); n != 2 {
		t.Fatalf("a max_requests change started %d workers, want none beyond the first 2", n)
	}
	// A replacement started later also gets the new budget.
	h.s.onControl(ctlEvent{p: h.s.activeProxy(), msg: control.Message{Type: control.TypeDue, Worker: "1.1"}})
	if w := h.worker("1.2"); w.budget != 50 {
		t.Fatalf("replacement budget %d, want 50", w.budget)
	}
}

func TestPanicInAHandlerDoesNotStopPID1(t *testing.T) {
	h := newHarness(t, nil)
	h.bootReady()
	var logs strings.Builder
	h.s.log = log.New(&logs, "", 0)
	// A control event from no proxy: onControl dereferences it.
	h.s.ctlCh <- ctlEvent{err: fmt.Errorf("boom")}
	if done, _ := h.s.step(nil); done {
		t.Fatal("the supervisor stopped after a panic in a handler")
	}
	if !strings.Contains(logs.String(), "internal error") {
		t.Fatalf("panic not logged: %q", logs.String())
	}
	// And it still handles events.
	h.s.notifyCh <- map[string]string{"READY": "1", "BERTH_WORKER": "nope"}
	if done, _ := h.s.step(nil); done || !h.s.ready {
		t.Fatal("supervisor not working after the panic")
	}
}
