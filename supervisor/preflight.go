package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/berth-dev/berth/config"
	pyworker "github.com/berth-dev/berth/worker"
)

// Pre-flight checks run once before the first process is started. A start
// that cannot succeed (an unknown app.user, an app.chdir that user cannot
// enter, an interpreter it cannot run) would otherwise fail in the child as a
// bare "fork/exec …: permission denied" that names neither the path nor the
// user, and be retried. Each failure here names the setting, the path, the
// user and a fix, and berth exits with ExitStartFailed.
//
// Permissions are checked the way the kernel checks them for the children:
// every path component must be searchable, symlinks are followed, and only
// one class of the mode applies (owner, else group, else others), for the
// uid and gid the children get. berth starts them with that user's primary
// group only (no supplementary groups), so that is the group checked. ACLs
// and LSMs are not modelled: a start they refuse is still caught by the boot
// policy (bootpolicy.go).

// preflightOS is what the checks ask of the system; tests inject a fake.
type preflightOS interface {
	// Lstat describes path without following a final symlink.
	Lstat(path string) (fileMeta, error)
	Readlink(path string) (string, error)
	// LookPath finds an executable as a child whose PATH is path would
	// ("" is berth's own PATH: how berth starts app.python).
	LookPath(file, path string) (string, error)
	// Identity is who berth's children run as for app.user user.
	Identity(user string) (identity, error)
	// UserName names uid for messages; "" when it has no name.
	UserName(uid int) string
}

// fileMeta is the part of a stat the checks use.
type fileMeta struct {
	mode     fs.FileMode // type and permission bits
	uid, gid int
}

// identity is a user as the permission checks see it.
type identity struct {
	name string // as the operator wrote it ("nobody", "10001"), or berth's own user
	uid  int
	gids []int // the groups the children have, primary first
	// switched: berth is root and drops the children to this user, so
	// changing app.user is a fix; false when berth runs as this user.
	switched bool
}

// preflightError marks a boot error that is the app's environment, not
// berth's: berth exits with ExitStartFailed.
type preflightError struct{ error }

func (e preflightError) Unwrap() error { return e.error }

// preflight checks cfg before the first start (and before a reload's).
// runDir holds the worker runtime the Python processes read. The error lists
// every failure, one per line.
func preflight(pos preflightOS, cfg *config.Config, runDir string) error {
	return checkHost(pos, cfg, runDir, false).err()
}

// hostReport is what the checks of one config against this machine found.
type hostReport struct {
	checked []string // what was checked and passed, for berth check
	skipped []string // what could not be checked here, each with why
	errs    []error
}

func (r *hostReport) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	msgs := make([]string, len(r.errs))
	for i, e := range r.errs {
		msgs[i] = "  " + e.Error()
	}
	return preflightError{fmt.Errorf("pre-flight check failed: the app's processes cannot start:\n%s", strings.Join(msgs, "\n"))}
}

// checkHost runs every pre-flight check of cfg. lenient is berth check's
// mode: a path the checking process itself may not look at (it is not
// root) is reported as skipped instead of failed, and runDir "" (no run
// directory yet) skips the runtime file berth run writes at start.
func checkHost(pos preflightOS, cfg *config.Config, runDir string, lenient bool) *hostReport {
	r := &hostReport{}
	id, err := pos.Identity(cfg.App.User)
	if err != nil {
		r.errs = append(r.errs, err)
		return r
	}
	c := &checker{pos: pos, id: id, report: r, lenient: lenient}
	r.checked = append(r.checked, fmt.Sprintf("app.user %s (uid %d)", id.name, id.uid))
	// In edge mode no worker runs: Python and the app's directories are
	// not needed.
	if !cfg.Edge() {
		if py, err := pos.LookPath(cfg.App.Python, ""); err != nil {
			c.fail(fmt.Errorf("app.python %q cannot be run: %w; install Python 3 or set app.python to an interpreter path (a venv's bin/python works)", cfg.App.Python, err))
		} else {
			c.need("app.python", py, needRun)
		}
		// A missing app.chdir is allowed: with no app.module berth serves its
		// demo app, and an installed module needs no directory.
		if cfg.App.Chdir != "" {
			if _, err := pos.Lstat(abs(cfg.App.Chdir)); err == nil {
				c.need("app.chdir", cfg.App.Chdir, needList)
			}
		}
		for i, p := range cfg.App.PythonPath {
			c.needExisting(fmt.Sprintf("app.pythonpath[%d]", i), p, needList, "create it or remove it from app.pythonpath")
		}
		if runDir != "" {
			c.need("run directory", filepath.Join(runDir, pyworker.RuntimeFile), needRead)
		}
	}
	for i, st := range cfg.Static {
		if st.File != "" {
			continue // one file: missing, it is a 404, as with nginx
		}
		if len(cfg.Tasks.BeforeStart) > 0 {
			// A before-start task (collectstatic) may create it: only
			// one that exists is checked now; appStart logs one that
			// is still missing after the tasks.
			if _, err := pos.Lstat(abs(st.Dir)); err != nil {
				continue
			}
		}
		if m, err := pos.Lstat(abs(st.Dir)); err == nil && m.mode.IsRegular() {
			c.fail(fmt.Errorf("static[%d].dir %s is a file, not a directory: to serve one file at %s, write {url: %s, file: %s}", i, st.Dir, st.URL, strings.TrimSuffix(st.URL, "/"), st.Dir))
			continue
		}
		// The proxy serves static files, as the same user.
		c.needExisting(fmt.Sprintf("static[%d].dir", i), st.Dir, needList, "create it (Django: manage.py collectstatic) or fix static.dir")
	}
	checkCompanions(pos, cfg, c)
	return r
}

// checkCompanions checks each task, program and job as its start would:
// its user exists, its command is found in its PATH and that user may run
// it, its directory may be entered.
func checkCompanions(pos preflightOS, cfg *config.Config, app *checker) {
	type comp struct {
		setting, kind string
		c             config.Companion
	}
	var all []comp
	for i, t := range cfg.Tasks.BeforeStart {
		all = append(all, comp{fmt.Sprintf("tasks.before_start[%d] (%s)", i, t.Name), kindTask, t.Companion})
	}
	for i, t := range cfg.Tasks.BeforeRoll {
		all = append(all, comp{fmt.Sprintf("tasks.before_roll[%d] (%s)", i, t.Name), kindTask, t.Companion})
	}
	for i, p := range cfg.Programs {
		all = append(all, comp{fmt.Sprintf("programs[%d] (%s)", i, p.Name), kindProgram, p.Companion})
	}
	for i, j := range cfg.Cron {
		all = append(all, comp{fmt.Sprintf("cron[%d] (%s)", i, j.Name), kindJob, j.Companion})
	}
	checkers := map[string]*checker{cfg.App.User: app}
	for _, cp := range all {
		sp := resolveUnit(cfg, cp.kind, cp.c)
		c := checkers[sp.user]
		if c == nil {
			id, err := pos.Identity(sp.user)
			if err != nil {
				app.fail(fmt.Errorf("%s user: %w", cp.setting, err))
				continue
			}
			c = &checker{pos: pos, id: id, report: app.report, lenient: app.lenient}
			checkers[sp.user] = c
		}
		if len(sp.argv) > 0 {
			if exe, err := pos.LookPath(sp.argv[0], envValue(sp.env, "PATH")); err != nil {
				c.fail(fmt.Errorf("%s command: %w; install it in the image or give its absolute path", cp.setting, err))
			} else {
				c.need(cp.setting+" command", exe, needRun)
			}
		}
		c.needExisting(cp.setting+" chdir", sp.dir, needList, "create it, or set chdir (or app.chdir) to the project's directory")
	}
}

// access is what a check needs of the final path.
type access int

const (
	needList access = iota // a directory to enter and read (chdir, sys.path)
	needRead               // a file to read
	needRun                // a file to execute
)

type checker struct {
	pos     preflightOS
	id      identity
	report  *hostReport
	lenient bool // berth check: what this process may not look at is skipped
}

func (c *checker) fail(err error) { c.report.errs = append(c.report.errs, err) }

// failOrSkip fails with err, or in lenient mode records a check this
// process could not make because it may not look at a path (not root).
func (c *checker) failOrSkip(setting, path string, err error) {
	if c.lenient && errors.Is(err, fs.ErrPermission) {
		c.report.skipped = append(c.report.skipped, fmt.Sprintf("%s %s: %v (berth check runs as uid %d; run it as root to check this)", setting, path, err, os.Geteuid()))
		return
	}
	c.fail(fmt.Errorf("%s %s: %w", setting, path, err))
}

// needExisting is need for a path that must exist; missing says how to fix
// its absence.
func (c *checker) needExisting(setting, path string, a access, missing string) {
	var me missingError
	if _, _, err := c.walk(abs(path)); errors.As(err, &me) && me.path == abs(path) {
		c.fail(fmt.Errorf("%s %s does not exist: %s", setting, path, missing))
		return
	} else if err != nil {
		c.failOrSkip(setting, path, err)
		return
	}
	c.need(setting, path, a)
}

// missingError is a path component that does not exist.
type missingError struct{ path string }

func (e missingError) Error() string { return e.path + " does not exist" }

// need checks that the user can reach path and use it as a says.
func (c *checker) need(setting, path string, a access) {
	final, meta, err := c.walk(abs(path))
	if err != nil {
		c.failOrSkip(setting, path, err)
		return
	}
	n := len(c.report.errs)
	defer func() {
		if len(c.report.errs) == n {
			c.report.checked = append(c.report.checked, setting+" "+path)
		}
	}()
	switch a {
	case needList:
		if !meta.mode.IsDir() {
			c.fail(fmt.Errorf("%s %s: %s is not a directory", setting, path, final))
		} else if !c.allowed(meta, 1) {
			letters := "x"
			if !c.allowed(meta, 4) {
				letters = "rx"
			}
			c.fail(fmt.Errorf("%s %s: %s", setting, path, c.denied("enter", final, meta, letters)))
		} else if !c.allowed(meta, 4) {
			c.fail(fmt.Errorf("%s %s: %s", setting, path, c.denied("list", final, meta, "r")))
		}
	case needRead, needRun:
		bit, verb, letter := 4, "read", "r"
		if a == needRun {
			bit, verb, letter = 1, "run", "x"
		}
		if meta.mode.IsDir() {
			c.fail(fmt.Errorf("%s %s: %s is a directory", setting, path, final))
		} else if !c.allowed(meta, bit) {
			c.fail(fmt.Errorf("%s %s: %s", setting, path, c.denied(verb, final, meta, letter)))
		}
	}
}

// maxSymlinks is the kernel's limit on symlinks followed in one lookup.
const maxSymlinks = 40

// walk resolves path (absolute, clean) component by component as the kernel
// does for the user, and returns the final path and what it is. It fails on
// the first directory the user cannot search, naming it.
func (c *checker) walk(path string) (string, fileMeta, error) {
	cur := "/"
	meta, err := c.pos.Lstat(cur)
	if err != nil {
		return "", fileMeta{}, err
	}
	comps := split(path)
	links := 0
	for len(comps) > 0 {
		name := comps[0]
		comps = comps[1:]
		if name == "." {
			continue
		}
		if !c.allowed(meta, 1) {
			return "", fileMeta{}, errors.New(c.denied("enter", cur, meta, "x"))
		}
		if name == ".." {
			cur = filepath.Dir(cur)
			if meta, err = c.pos.Lstat(cur); err != nil {
				return "", fileMeta{}, err
			}
			continue
		}
		next := filepath.Join(cur, name)
		m, err := c.pos.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fileMeta{}, missingError{next}
		}
		if err != nil {
			return "", fileMeta{}, err
		}
		if m.mode&fs.ModeSymlink != 0 {
			if links++; links > maxSymlinks {
				return "", fileMeta{}, fmt.Errorf("%s: too many levels of symbolic links", next)
			}
			target, err := c.pos.Readlink(next)
			if err != nil {
				return "", fileMeta{}, err
			}
			if filepath.IsAbs(target) {
				cur = "/"
				if meta, err = c.pos.Lstat(cur); err != nil {
					return "", fileMeta{}, err
				}
			}
			comps = append(split(target), comps...)
			continue
		}
		if len(comps) > 0 && !m.mode.IsDir() {
			return "", fileMeta{}, fmt.Errorf("%s is not a directory", next)
		}
		cur, meta = next, m
	}
	return cur, meta, nil
}

// class is the part of meta's mode that applies to the user: "u", "g" or
// "o", and its three bits.
func (c *checker) class(meta fileMeta) (string, int) {
	perm := int(meta.mode.Perm())
	if meta.uid == c.id.uid {
		return "u", perm >> 6 & 7
	}
	for _, g := range c.id.gids {
		if g == meta.gid {
			return "g", perm >> 3 & 7
		}
	}
	return "o", perm & 7
}

// allowed says whether the user has bit (4 read, 1 execute/search) on meta.
// Root may do anything except execute a file no one may execute.
func (c *checker) allowed(meta fileMeta, bit int) bool {
	if c.id.uid == 0 {
		return bit != 1 || meta.mode.IsDir() || meta.mode.Perm()&0o111 != 0
	}
	_, bits := c.class(meta)
	return bits&bit != 0
}

// denied says who cannot do what to path, and the fix.
func (c *checker) denied(verb, path string, meta fileMeta, letter string) string {
	owner := c.pos.UserName(meta.uid)
	if owner == "" {
		owner = strconv.Itoa(meta.uid)
	}
	who, _ := c.class(meta)
	if c.id.uid == 0 {
		who = "a" // no one may execute it
	}
	fix := fmt.Sprintf("chmod %s+%s %s", who, letter, path)
	if c.id.switched {
		fix += " or set app.user"
	}
	return fmt.Sprintf("user %s (uid %d) cannot %s %s (mode %04o, owner %s): %s",
		c.id.name, c.id.uid, verb, path, meta.mode.Perm(), owner, fix)
}

func abs(path string) string {
	if p, err := filepath.Abs(path); err == nil {
		return p
	}
	return filepath.Clean(path)
}

// split is path's components; an absolute path's first is not "".
func split(path string) []string {
	var out []string
	for _, s := range strings.Split(path, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// realPreflightOS asks the running system.
type realPreflightOS struct{}

func (realPreflightOS) Lstat(path string) (fileMeta, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileMeta{}, err
	}
	m := fileMeta{mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.uid, m.gid = int(st.Uid), int(st.Gid)
	}
	return m, nil
}

func (realPreflightOS) Readlink(path string) (string, error) { return os.Readlink(path) }
func (realPreflightOS) LookPath(file, path string) (string, error) {
	if path == "" {
		return exec.LookPath(file)
	}
	return lookPathIn(file, path)
}

// Identity mirrors credentialFor: as root, children drop to user with its
// primary group only; otherwise they run as berth does.
func (realPreflightOS) Identity(name string) (identity, error) {
	if os.Geteuid() == 0 {
		if name == "" {
			return identity{name: "root", uid: 0, gids: []int{0}}, nil
		}
		uid, gid, err := lookupUser(name)
		if err != nil {
			return identity{}, err
		}
		return identity{name: name, uid: uid, gids: []int{gid}, switched: true}, nil
	}
	id := identity{uid: os.Geteuid(), gids: []int{os.Getegid()}}
	if groups, err := os.Getgroups(); err == nil {
		id.gids = append(id.gids, groups...)
	}
	id.name = strconv.Itoa(id.uid)
	if u, err := user.LookupId(id.name); err == nil {
		id.name = u.Username
	}
	return id, nil
}

func (realPreflightOS) UserName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return ""
}

// HostCheck is what berth check found of a config on this machine.
type HostCheck struct {
	User    string   // who the workers would run as: "www-data (uid 33)"
	Checked []string // each check that passed: "app.chdir /srv/app"
	Skipped []string // each check that could not run here, with why
	Err     error    // nil, or every failure, one per line
}

// CheckHost runs for berth check the pre-flight checks berth run makes
// before it starts anything (users, interpreter, directories, companions'
// commands, certificate pairs), with the config's users and paths, as berth
// started as root would use them. What this process may not look at (it is
// not root) is skipped and said so, not failed.
func CheckHost(cfg *config.Config) HostCheck {
	r := checkHost(checkPreflightOS{}, cfg, "", true)
	var hc HostCheck
	if len(r.checked) > 0 && strings.HasPrefix(r.checked[0], "app.user ") {
		hc.User = strings.TrimPrefix(r.checked[0], "app.user ")
	}
	if _, err := loadCertificates(cfg); err != nil {
		if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
			r.skipped = append(r.skipped, fmt.Sprintf("%v (berth check runs as uid %d; run it as root to check the certificate pairs)", err, os.Geteuid()))
		} else {
			r.errs = append(r.errs, err)
		}
	} else if len(cfg.TLS.Certificates) > 0 {
		r.checked = append(r.checked, fmt.Sprintf("tls.certificates: %d usable pair(s)", len(cfg.TLS.Certificates)))
	}
	if _, err := loadAccessFiles(cfg); err != nil {
		if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
			r.skipped = append(r.skipped, fmt.Sprintf("%v (berth check runs as uid %d; run it as root to check the access rules' files)", err, os.Geteuid()))
		} else {
			r.errs = append(r.errs, err)
		}
	} else if n := len(accessFilePaths(cfg)); n > 0 {
		r.checked = append(r.checked, fmt.Sprintf("access rules: %d file(s) readable and valid", n))
	}
	if a := &cfg.TLS.ACME; a.Enabled() {
		if _, err := loadACMERoots(cfg); err != nil {
			if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
				r.skipped = append(r.skipped, fmt.Sprintf("%v (berth check runs as uid %d; run it as root)", err, os.Geteuid()))
			} else {
				r.errs = append(r.errs, err)
			}
		} else if len(a.CARoots) > 0 {
			r.checked = append(r.checked, fmt.Sprintf("tls.acme.ca_roots: %d PEM file(s)", len(a.CARoots)))
		}
		// Not changed here: berth run creates it (0700) and gives it to
		// the proxy's user as root (acme.PrepareStorage).
		r.checked = append(r.checked, fmt.Sprintf("tls.acme.storage %s: berth run creates it if missing and gives it to the proxy's user", a.Storage))
	}
	hc.Checked, hc.Skipped, hc.Err = r.checked, r.skipped, r.err()
	return hc
}

// checkPreflightOS is the running system as berth started as root sees it:
// app.user is looked up whoever runs berth check.
type checkPreflightOS struct{ realPreflightOS }

func (checkPreflightOS) Identity(name string) (identity, error) {
	if name == "" || os.Geteuid() == 0 {
		return realPreflightOS{}.Identity(name)
	}
	uid, gid, err := lookupUser(name)
	if err != nil {
		return identity{}, err
	}
	return identity{name: name, uid: uid, gids: []int{gid}, switched: true}, nil
}
