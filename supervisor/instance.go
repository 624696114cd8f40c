package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Each berth needs a run directory of its own: the worker sockets
// (w-1.1.sock, …), notify.sock and the proxies' metrics sockets have fixed
// names, so two instances sharing /run/berth would remove each other's
// sockets and one's proxy could reach the other's workers. The first berth
// holds an flock on <run dir>/berth.lock for its whole life (the kernel drops
// it when the process ends, so a crash leaves no stale claim); a second one
// is refused with a message that names the first from what the lock file
// says about it. The cgroup side of the same rule is in cgroup/instance.go.

// runLockName is the lock file in the run directory.
const runLockName = "berth.lock"

// lockRunDir claims dir for this berth and writes who holds it (self, one
// "key value" per line) into the lock file. The file stays open, and so
// locked, until the process ends or the returned file is closed.
func lockRunDir(dir string, self []string) (*os.File, error) {
	path := filepath.Join(dir, runLockName)
	// O_CLOEXEC (os.OpenFile's default): a child must not inherit the claim
	// and keep it after berth is gone.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("boot: run directory %s: open the lock file: %w; make the directory writable or set BERTH_RUN_DIR", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("boot: run directory %s is in use by another berth (%s); each berth needs a run directory of its own: set BERTH_RUN_DIR to another directory for this one",
				dir, describeHolder(path))
		}
		return nil, fmt.Errorf("boot: run directory %s: lock %s: %w", dir, path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strings.Join(self, "\n")+"\n"), 0)
	}
	if err != nil {
		// Only the description of the holder is lost; the lock holds.
		fmt.Fprintf(os.Stderr, "berth: write %s: %v\n", path, err)
	}
	return f, nil
}

// describeHolder is what the lock file says about the berth holding it, as
// "pid 12, config /etc/berth/berth.yaml, …".
func describeHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("it could not be named: %v", err)
	}
	var parts []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			parts = append(parts, line)
		}
	}
	if len(parts) == 0 {
		return "it is starting and has not written its pid yet"
	}
	return strings.Join(parts, ", ")
}

// instanceInfo is what this berth writes into its run directory's lock file.
func (s *Supervisor) instanceInfo() []string {
	cfg := s.opts.ConfigPath
	if cfg == "" {
		cfg = "built-in defaults"
	}
	return []string{
		"pid " + strconv.Itoa(os.Getpid()),
		"config " + cfg,
		"listen " + strings.Join(s.cfg.Listen, " "),
		"started " + s.now().Format(time.RFC3339),
	}
}
