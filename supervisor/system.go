package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

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

func unix_SignalName(s syscall.Signal) string { return unix.SignalName(s) }
