package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports (sysconf would need cgo).
const clockTicks = 100

// procInfo is what the bench needs from /proc/PID/stat.
type procInfo struct {
	ppid       int
	ticks      int64 // utime + stime
	childTicks int64 // cutime + cstime: children it has reaped
}

// procTable reads every process's parent and CPU time. A process that exits
// while it is being read is skipped.
func procTable() (map[int]procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	tab := make(map[int]procInfo, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if p, ok := parseStat(b); ok {
			tab[pid] = p
		}
	}
	return tab, nil
}

// parseStat parses /proc/PID/stat. comm (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (procInfo, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	if len(f) < 15 {
		return procInfo{}, false
	}
	var n [4]int64
	for i, idx := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[idx], 10, 64)
		if err != nil {
			return procInfo{}, false
		}
		n[i] = v
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procInfo{}, false
	}
	return procInfo{ppid: ppid, ticks: n[0] + n[1], childTicks: n[2] + n[3]}, true
}

// descendants lists every process below root.
func descendants(tab map[int]procInfo, root int) []int {
	children := map[int][]int{}
	for pid, p := range tab {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// pssKiB reads a process's proportional set size: its private pages plus
// its share of the pages it shares (copy-on-write after fork, libraries).
// Summed over processes it counts every page once, unlike RSS.
func pssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, fmt.Errorf("read PSS of %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss line in /proc/%d/smaps_rollup", pid)
}

func sumPSS(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		k, err := pssKiB(pid)
		if err != nil {
			return 0, err
		}
		total += k
	}
	return total, nil
}

// cpuSnapshot is the CPU ticks of each process of a stack, with its role.
type cpuSnapshot struct {
	ticks  map[int]int64
	reaped map[int]int64 // childTicks
	roles  map[int]string
}

func (in *instance) cpuSnapshot() (cpuSnapshot, error) {
	roles, err := in.roles()
	if err != nil {
		return cpuSnapshot{}, err
	}
	tab, err := procTable()
	if err != nil {
		return cpuSnapshot{}, err
	}
	s := cpuSnapshot{ticks: map[int]int64{}, reaped: map[int]int64{}, roles: roles}
	for pid := range roles {
		s.ticks[pid] = tab[pid].ticks
		s.reaped[pid] = tab[pid].childTicks
	}
	return s, nil
}

// cpuBetween is the CPU seconds each role used between two snapshots.
// Processes that started in between count in full. A process that exited in
// between had its time added to its reaper's cutime/cstime; that time is
// counted as workers' (recycled and reloaded workers are what exits under
// load), less what the exited processes had used by the first snapshot.
// (Every process of a stack is reaped inside the stack: berth is the
// workers' subreaper, the peers' masters are their workers' parents.)
func cpuBetween(a, b cpuSnapshot) map[string]float64 {
	out := map[string]float64{}
	var reaped int64
	for pid, t := range b.ticks {
		out[b.roles[pid]] += float64(t-a.ticks[pid]) / clockTicks
		if r, ok := a.reaped[pid]; ok {
			reaped += b.reaped[pid] - r
		}
	}
	for pid, t := range a.ticks {
		if _, alive := b.ticks[pid]; !alive {
			reaped -= t
		}
	}
	if reaped > 0 {
		out[roleApp] += float64(reaped) / clockTicks
	}
	return out
}
