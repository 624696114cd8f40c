package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Two berth instances started from the same cgroup (two services on a v1 host
// without memory accounting per unit, two test runs, a `podman exec`) must not
// share groups: one's workers would land in the other's w-1.1, limits and OOM
// kills would mix, and removing a group would fail with "still holds
// processes". Each instance therefore holds an flock on the directory its
// groups live in, for as long as it runs (the kernel drops it when the process
// ends, so a crash leaves no stale claim):
//
//   - v1: the tree below own is "berth" for the first instance, "berth-2",
//     "berth-3", … for the next ones: each takes the first name that no live
//     berth holds in every managed hierarchy.
//   - v2: own itself. A second berth started in another berth's supervisor
//     group (from the shell the first was started from) has that group as
//     its own and builds its tree there; one started in the very same own
//     cgroup (possible only while own has no controllers enabled, or in the
//     race Setup retries) is refused with ErrInUse.

// ErrInUse marks a Setup error: another running berth manages the cgroup this
// one would put its groups in. The message names it and says what to do.
var ErrInUse = errors.New("cgroup: in use by another berth")

// inUseError is an ErrInUse whose message is only its own.
type inUseError struct{ msg string }

func (e inUseError) Error() string        { return e.msg }
func (e inUseError) Is(target error) bool { return target == ErrInUse }

// maxV1Trees bounds the v1 tree names tried: berth, berth-2, … berth-64.
const maxV1Trees = 64

// v1TreeName is the name of the n-th instance's v1 tree below own.
func v1TreeName(n int) string {
	if n == 1 {
		return "berth"
	}
	return fmt.Sprintf("berth-%d", n)
}

// claimV1 picks this instance's v1 tree and locks it in every writable
// hierarchy.
func (m *Manager) claimV1() error {
	for n := 1; n <= maxV1Trees; n++ {
		name := v1TreeName(n)
		locks, err := lockDirs(m.v1Dirs(name))
		if errors.Is(err, unix.EWOULDBLOCK) {
			continue
		}
		if err != nil {
			return err
		}
		m.tree, m.locks = name, locks
		return nil
	}
	return inUseError{fmt.Sprintf("cgroup: every tree from %s to %s is held by a running berth; stop one or set BERTH_CGROUP_ROOT=off",
		filepath.Join(m.v1Dirs("")[0], v1TreeName(1)), v1TreeName(maxV1Trees))}
}

// claimV2 locks own, or says which berth holds it.
func (m *Manager) claimV2() error {
	locks, err := lockDirs([]string{m.own})
	if err == nil {
		m.locks = locks
		return nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		return err
	}
	sup := filepath.Join(m.own, "supervisor")
	who := "its supervisor group " + sup
	if b, rerr := os.ReadFile(filepath.Join(sup, "cgroup.procs")); rerr == nil && len(strings.Fields(string(b))) > 0 {
		who = fmt.Sprintf("pid %s, in %s", strings.Join(strings.Fields(string(b)), ", "), sup)
	}
	return inUseError{fmt.Sprintf("cgroup: %s is managed by another berth (%s); start this one in a cgroup of its own (its own container, or systemd-run --scope) or set BERTH_CGROUP_ROOT=off",
		m.own, who)}
}

// lockDirs creates each directory (a cgroup) and takes an exclusive flock on
// it. When one is held elsewhere, the locks already taken are released and
// the error is EWOULDBLOCK.
func lockDirs(dirs []string) ([]*os.File, error) {
	var locks []*os.File
	release := func() {
		for _, f := range locks {
			f.Close()
		}
	}
	for _, d := range dirs {
		if err := mkdir(d); err != nil {
			release()
			return nil, err
		}
		// O_CLOEXEC (os.Open's default): a child must not inherit the
		// claim and keep it after berth is gone.
		f, err := os.Open(d)
		if err != nil {
			release()
			return nil, fmt.Errorf("cgroup: open %s to lock it: %w", d, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			release()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, unix.EWOULDBLOCK
			}
			return nil, fmt.Errorf("cgroup: lock %s: %w", d, err)
		}
		locks = append(locks, f)
	}
	return locks, nil
}

// Tree is the directory below own that holds this instance's groups: "" for
// v2 (own itself), "berth" or "berth-N" for v1 once Setup has run.
func (m *Manager) Tree() string { return m.tree }

// Close releases the claim Setup took, so another berth may use the same
// groups; the groups stay. Exiting releases it too.
func (m *Manager) Close() {
	for _, f := range m.locks {
		f.Close()
	}
	m.locks = nil
}
