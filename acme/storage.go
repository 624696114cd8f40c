package acme

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// PrepareStorage gives the storage directory to the user the proxy runs
// as (app.user), for the supervisor to call as root before it starts the
// proxy. certmagic makes its directories 0700 and its files 0600 (they
// hold private keys), and takes its locks by creating and removing files,
// so the proxy's user must own everything there. The directory is created
// (0700) if missing. When it, or anything in it, belongs to someone else
// (a volume first used by root, or by another app.user) it is handed over
// with lchown, so a volume outlives a change of app.user. Not root: it
// only checks that this process can write there.
func PrepareStorage(dir string, uid, gid int) error {
	if dir == "" {
		dir = DefaultStorage
	}
	if os.Geteuid() != 0 {
		return checkStorage(dir)
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("acme: tls.acme.storage %q: give an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("acme: tls.acme.storage %s: %v: make the directory or mount a volume there", dir, err)
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if ok && int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("acme: tls.acme.storage %s: giving it to uid %d: %v (a volume mounted with root squashing: chown it to that uid where it is exported)", dir, uid, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("acme: tls.acme.storage %s: %v", dir, err)
	}
	return nil
}
