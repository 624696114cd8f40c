package worker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type zygoteReply struct {
	ID    string `json:"id"`
	PID   int    `json:"pid"`
	Error string `json:"error"`
}

// TestZygote plays the supervisor: it is child subreaper, starts a zygote, has it fork two
// workers, and checks they are double-forked (reparented to us, not the zygote), ready, serving,
// and reaped by us alone.
func TestZygote(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become child subreaper: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[1], &st); err != nil {
		t.Fatal(err)
	}
	zygoteEnd := fmt.Sprintf("socket:[%d]", st.Ino)
	ours, theirs := os.NewFile(uintptr(fds[0]), "zygote-supervisor"), os.NewFile(uintptr(fds[1]), "zygote")
	z := startWorker(t, workerOpts{mode: "zygote", threads: 2, extra: []*os.File{theirs},
		env: []string{"BERTH_ZYGOTE_FD=3"}})
	theirs.Close()
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	replies := bufio.NewScanner(conn)

	msg := z.waitNotify(t)
	if msg["READY"] != "1" || msg["BERTH_ZYGOTE"] != "1" || msg["MAINPID"] != strconv.Itoa(z.cmd.Process.Pid) {
		t.Fatalf("zygote notify %v", msg)
	}
	command := func(v any) zygoteReply {
		t.Helper()
		b, _ := json.Marshal(v)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		if !replies.Scan() {
			t.Fatalf("no reply from the zygote: %v\n%s", replies.Err(), z.stderrText())
		}
		var r zygoteReply
		if err := json.Unmarshal(replies.Bytes(), &r); err != nil {
			t.Fatalf("reply %q: %v", replies.Text(), err)
		}
		return r
	}

	// A bad command gets an error reply and the zygote carries on.
	if r := command(map[string]string{"id": "z.0"}); r.ID != "z.0" || r.Error == "" || r.PID != 0 {
		t.Fatalf("bad command: reply %+v", r)
	}

	type child struct {
		id, sock string
		pid      int
	}
	kids := []*child{
		{id: "z.1", sock: filepath.Join(z.dir, "z1.sock")},
		{id: "z.2", sock: filepath.Join(z.dir, "z2.sock")},
	}
	reaped := map[int]bool{}
	t.Cleanup(func() {
		for _, k := range kids {
			if k.pid > 0 && !reaped[k.pid] {
				unix.Kill(k.pid, unix.SIGKILL)
				var ws unix.WaitStatus
				unix.Wait4(k.pid, &ws, 0, nil)
			}
		}
	})
	for _, k := range kids {
		r := command(map[string]string{"id": k.id, "socket": k.sock})
		if r.ID != k.id || r.Error != "" || r.PID <= 0 {
			t.Fatalf("fork %s: reply %+v\n%s", k.id, r, z.stderrText())
		}
		k.pid = r.PID
	}
	ready := map[string]string{}
	for range kids {
		m := z.waitNotify(t)
		if m["READY"] != "1" {
			t.Fatalf("worker notify %v", m)
		}
		ready[m["BERTH_WORKER"]] = m["MAINPID"]
	}
	randoms := map[string]bool{}
	for _, k := range kids {
		if ready[k.id] != strconv.Itoa(k.pid) {
			t.Errorf("READY for %s has MAINPID %q, want %d", k.id, ready[k.id], k.pid)
		}
		if ppid := parentPID(t, k.pid); ppid != os.Getpid() || ppid == z.cmd.Process.Pid {
			t.Errorf("worker %s: parent pid %d, want us (%d), not the zygote (%d)", k.id, ppid, os.Getpid(), z.cmd.Process.Pid)
		}
		// The worker must not keep the zygote's socket open (it closes it after the fork).
		links, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", k.pid))
		for _, l := range links {
			if target, _ := os.Readlink(l); target == zygoteEnd {
				t.Errorf("worker %s holds the zygote socket as %s", k.id, l)
			}
		}
		if len(links) == 0 {
			t.Errorf("worker %s: no fds listed in /proc", k.id)
		}
		c := dialUwsgi(t, k.sock)
		resp, body := c.do(t, uwsgiRequest{URI: "/pid", KeepAlive: true})
		var got struct {
			PID, PPID int
			Random    float64
		}
		if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
			t.Fatalf("%s: %d %q", k.id, resp.StatusCode, body)
		}
		if got.PID != k.pid || got.PPID != os.Getpid() {
			t.Errorf("%s: app runs as pid %d (parent %d), want %d (parent %d)", k.id, got.PID, got.PPID, k.pid, os.Getpid())
		}
		randoms[fmt.Sprint(got.Random)] = true
		resp, body = c.do(t, uwsgiRequest{URI: "/hello", KeepAlive: true})
		if resp.StatusCode != 200 || body != "hello" {
			t.Errorf("%s: %d %q", k.id, resp.StatusCode, body)
		}
		c.Close()
	}
	if len(randoms) != len(kids) {
		t.Errorf("forked workers share their random state: %v", randoms)
	}

	// We, not the zygote, reap the workers: SIGTERM, then wait4 on each pid.
	for _, k := range kids {
		if err := unix.Kill(k.pid, unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range kids {
		ws := waitPID(t, k.pid, 10*time.Second)
		reaped[k.pid] = true
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("worker %s: wait status %v, want exit 0", k.id, ws)
		}
	}
	// EOF on its socket: the zygote exits 0.
	conn.Close()
	if code := z.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("zygote exit code %d", code)
	}
}

func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// waitPID reaps one child, polling with WNOHANG so a stuck worker fails the test in time.
func waitPID(t *testing.T, pid int, within time.Duration) unix.WaitStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil && err != syscall.EINTR {
			t.Fatalf("wait4(%d): %v", pid, err)
		}
		if got == pid {
			return ws
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d did not exit within %v", pid, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
