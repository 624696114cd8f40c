package supervisor

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/config"
)

// CgroupStatus is the cgroup part of /status.
type CgroupStatus struct {
	Mode     string `json:"mode"`
	Writable bool   `json:"writable"`
}

func (s *Supervisor) placeWorker(w *worker)                  {}
func (s *Supervisor) placeProxy(p *proxyProc)                {}
func (s *Supervisor) workerCgroupProcs(w *worker) string     { return "" }
func (s *Supervisor) releaseWorkerCgroup(w *worker)          {}
func (s *Supervisor) oomKilled(w *worker) bool               { return false }
func (s *Supervisor) oomDetail(w *worker) string             { return "" }
func (s *Supervisor) workerMemory(w *worker) int64           { return 0 }
func (s *Supervisor) cgroupStatus() *CgroupStatus            { return nil }
func (s *Supervisor) updateCgroups(cfg *config.Config) error { return nil }

func (s *Supervisor) autoWorkers() (int, string) {
	var set unix.CPUSet
	n := runtime.NumCPU()
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		n = set.Count()
	}
	return n, fmt.Sprintf("workers.count auto: %d (usable CPUs %d)", n, n)
}

func osGetpid() int { return os.Getpid() }
