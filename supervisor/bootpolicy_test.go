package supervisor

import (
	"errors"
	"io"
	"log"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/config"
)

// refusingOS is the fake OS whose Python starts fail, as fork/exec does
// for an interpreter or directory the user cannot use.
type refusingOS struct {
	*fakeOS
	refused int
}

func (r *refusingOS) Start(s ProcSpec) (int, error) {
	if s.Args[len(s.Args)-1] != "proxy" {
		r.refused++
		return 0, errors.New("start python3: fork/exec /usr/bin/python3: permission denied")
	}
	return r.fakeOS.Start(s)
}

// newRefusingHarness is newHarness on a refusingOS.
func newRefusingHarness(t *testing.T, edit func(*config.Config)) (*harness, *refusingOS) {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Admin.Listen = "off"
	cfg.App.Python = "/bin/sh"
	cfg.App.Chdir = t.TempDir()
	cfg.Workers.Count = 2
	cfg.Workers.Preload = false
	if edit != nil {
		edit(cfg)
	}
	ro := &refusingOS{fakeOS: newFakeOS()}
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	s, err := newSupervisor(Options{Config: cfg, RunDir: t.TempDir(), OS: ro, CgroupRoot: "off", Now: clk.now, Log: log.New(io.Discard, "", 0)})
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
	return &harness{t: t, s: s, os: ro.fakeOS, clk: clk}, ro
}

// stopsWith checks that berth is stopping with code and exits once its
// children are gone.
func (h *harness) stopsWith(code int) {
	h.t.Helper()
	if h.s.fatal == nil || h.s.exitCode != code {
		h.t.Fatalf("fatal %v, exit code %d; want stopping with %d", h.s.fatal, h.s.exitCode, code)
	}
	for _, pid := range h.os.startsOf("proxy") {
		if !h.os.signalled(pid, syscall.SIGQUIT) {
			h.t.Errorf("proxy %d not told to stop at once", pid)
		}
	}
	for pid := range h.s.procs {
		h.killed(pid, syscall.SIGTERM)
	}
	if done, got := h.s.finished(); !done || got != code {
		h.t.Fatalf("finished %v with %d, want exit %d", done, got, code)
	}
}

func TestBootImportDeathStopsWithoutRespawn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		preload bool
		die     func(h *harness, pid int)
	}{
		{"zygote exits with code 1 (os._exit)", true, func(h *harness, pid int) { h.exit(pid, 1) }},
		{"zygote killed while importing", true, func(h *harness, pid int) { h.killed(pid, syscall.SIGKILL) }},
		{"worker without preload exits with code 1", false, func(h *harness, pid int) { h.exit(pid, 1) }},
		{"worker without preload killed while importing", false, func(h *harness, pid int) { h.killed(pid, syscall.SIGKILL) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Workers.Preload = tc.preload })
			mode := "serve"
			if tc.preload {
				mode = "zygote"
			}
			started := h.os.startsOf(mode)
			tc.die(h, started[0])
			h.tick(time.Minute)
			if n := len(h.os.startsOf(mode)); n != len(started) {
				t.Fatalf("%d %s processes started after the death, want none", n-len(started), mode)
			}
			h.stopsWith(ExitAppImport)
		})
	}
}

// Starts that fail (fork/exec refused) are retried with backoff, then end the
// boot with ExitStartFailed well within 30 s.
func TestBootStartFailuresEndTheBoot(t *testing.T) {
	for _, preload := range []bool{false, true} {
		t.Run(map[bool]string{false: "workers", true: "zygote"}[preload], func(t *testing.T) {
			h, ro := newRefusingHarness(t, func(c *config.Config) { c.Workers.Preload = preload })
			start := h.clk.now()
			for h.s.fatal == nil && h.clk.now().Sub(start) < time.Minute {
				h.tick(tick)
			}
			if took := h.clk.now().Sub(start); took > 30*time.Second {
				t.Fatalf("gave up after %s, want within 30s", took)
			}
			if ro.refused != bootStartLimit {
				t.Fatalf("%d starts tried, want %d", ro.refused, bootStartLimit)
			}
			h.stopsWith(ExitStartFailed)
		})
	}
}

// Forked workers that die before READY count as failed starts: the zygote
// imported the app, so this is not an import failure.
func TestBootForkedWorkersDyingBeforeReady(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Workers.Preload = true; c.Workers.Count = 1 })
	z := h.os.startsOf("zygote")[0]
	// The fake zygote's end of the command socket is closed: take the
	// commands on a pipe instead.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h.s.gen.zygote.conn.Close()
	h.s.gen.zygote.conn = w
	h.s.onNotify(map[string]string{"READY": "1", "BERTH_ZYGOTE": "1", "MAINPID": strconv.Itoa(z)})
	for i := 1; i <= bootStartLimit; i++ {
		wk := h.s.slots[0].cur
		if wk == nil {
			wk = h.s.slots[0].next
		}
		if wk == nil {
			t.Fatalf("failure %d: no worker started", i)
		}
		pid := 5000 + i
		h.s.onZygoteReply(zygoteReply{ID: wk.id, Pid: pid})
		h.exit(pid, 1)
		if i < bootStartLimit && h.s.fatal != nil {
			t.Fatalf("stopped after %d failures, want %d", i, bootStartLimit)
		}
		h.tick(backoffCap + tick)
	}
	h.stopsWith(ExitStartFailed)
}

// Once a worker has been ready, the boot policy no longer applies: a
// replacement that dies before READY is restarted.
func TestBootPolicyEndsWithTheFirstReadyWorker(t *testing.T) {
	h := newHarness(t, nil)
	h.ready("1.1")
	for i := 0; i < 2*bootStartLimit; i++ {
		var w *worker
		for _, x := range h.s.workers {
			if x.slot.n == 2 {
				w = x
			}
		}
		h.exit(w.pid, 1)
		if h.s.fatal != nil {
			t.Fatalf("crash %d of worker slot 2 stopped berth although worker 1.1 serves: %v", i+1, h.s.fatal)
		}
		h.tick(backoffCap + tick)
	}
}
