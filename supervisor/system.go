package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// activationFiles returns the sockets systemd (or podman) passed us with
// LISTEN_FDS; they replace `listen`. The LISTEN_* variables are unset so a
// child can never mistake them for its own.
func activationFiles() []*listener {
	files := activation.Files(true)
	var out []*listener
	for _, f := range files {
		ln, err := net.FileListener(f)
		name := f.Name()
		if err == nil {
			if name == "" || strings.HasPrefix(name, "LISTEN_FD_") {
				name = ln.Addr().String()
			} else {
				name = name + "=" + ln.Addr().String()
			}
		}
		out = append(out, &listener{addr: "fd:" + name, file: f, ln: ln})
	}
	return out
}

// credentialFor returns the credential to drop children to app.user, or nil
// when no user is set or berth does not run as root (it cannot switch then,
// and running as the current user is what the operator asked for).
func credentialFor(name string) (*syscall.Credential, error) {
	if name == "" || os.Geteuid() != 0 {
		return nil, nil
	}
	uid, gid, err := lookupUser(name)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: false}, nil
}

func lookupUser(name string) (int, int, error) {
	if uid, err := strconv.Atoi(name); err == nil {
		return uid, uid, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("app.user: %w; create the user in the image or use a numeric uid", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid, nil
}

func chownForUser(path, name string) error {
	if name == "" || os.Geteuid() != 0 {
		return nil
	}
	uid, gid, err := lookupUser(name)
	if err != nil {
		return err
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("boot: chown %s to %s: %w", path, name, err)
	}
	return nil
}

// hashFile is the content hash that decides whether a watched config really
// changed: a touch, or a ConfigMap swap to identical content, changes nothing.
func hashFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read config %s: %w", path, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
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

func (n *sdNotifier) stopping()                       { n.send(daemon.SdNotifyStopping) }
func (n *sdNotifier) status(s string)                 { n.send("STATUS=" + s) }
func (n *sdNotifier) watchdog()                       { n.send(daemon.SdNotifyWatchdog) }
func (n *sdNotifier) watchdogInterval() time.Duration { return n.watchdog_ }

func unix_SignalName(s syscall.Signal) string { return unix.SignalName(s) }
