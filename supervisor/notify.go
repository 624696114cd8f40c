// sd_notify both ways: the notify socket our children report READY on, and
// the messages berth itself sends to whoever started it (systemd, podman).
package supervisor

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// strayReady handles READY from a worker berth has given up on: forked by
// a zygote that died before replying, after forkGrace had passed. It is
// stopped if it is really our child (reparented to us when the zygote
// died); the notify socket is open to the app's user, so a datagram alone
// must never make PID 1 signal an arbitrary pid.
func (s *Supervisor) strayReady(n map[string]string) {
	pid, _ := strconv.Atoi(n["MAINPID"])
	if pid <= 0 || s.procs[pid] != nil || parentOf(pid) != os.Getpid() {
		return
	}
	s.log.Printf("worker %s (pid %d) said READY after it was given up on: stopping it", n["BERTH_WORKER"], pid)
	_ = s.os.Signal(pid, syscall.SIGTERM)
}

// parentOf is pid's parent pid from /proc, 0 when unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may itself hold spaces and ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

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

func (s *Supervisor) onNotify(n map[string]string) {
	if n["READY"] != "1" {
		if st, ok := n["STATUS"]; ok {
			s.log.Printf("worker %s: %s", n["BERTH_WORKER"], st)
		}
		return
	}
	if n["BERTH_ZYGOTE"] == "1" {
		pid, _ := strconv.Atoi(n["MAINPID"])
		if z, ok := s.procs[pid].(*zygote); ok {
			s.zygoteReady(z)
		}
		return
	}
	w := s.workers[n["BERTH_WORKER"]]
	if w == nil {
		s.strayReady(n)
		return
	}
	if w.state > wStarting {
		return
	}
	if w.pid == 0 {
		// READY overtook the zygote's reply: MAINPID says who it is.
		pid, _ := strconv.Atoi(n["MAINPID"])
		if pid > 0 {
			w.pid = pid
			s.procs[pid] = w
			s.placeWorker(w)
		}
	}
	if n["BERTH_INTERFACE"] == "asgi" {
		w.iface = "asgi"
	}
	s.workerReady(w)
}

// sdNotifier speaks sd_notify to whoever started berth (systemd, podman
// --sdnotify=container); without NOTIFY_SOCKET every call is a no-op.
type sdNotifier struct {
	watchdog_ time.Duration
}

func newSdNotifier() *sdNotifier {
	iv, _ := daemon.SdWatchdogEnabled(false)
	return &sdNotifier{watchdog_: iv}
}

func (n *sdNotifier) send(state string) { _, _ = daemon.SdNotify(false, state) }

func (n *sdNotifier) ready(status string) {
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

func (n *sdNotifier) reloading() {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Nano() / 1000
	n.send(fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, usec))
}

func (n *sdNotifier) stopping()       { n.send(daemon.SdNotifyStopping) }
func (n *sdNotifier) status(s string) { n.send("STATUS=" + s) }

func (n *sdNotifier) watchdog()                       { n.send(daemon.SdNotifyWatchdog) }
func (n *sdNotifier) watchdogInterval() time.Duration { return n.watchdog_ }
