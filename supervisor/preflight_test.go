package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-dev/berth/config"
)

// fakeFS is a file tree for preflight: path → entry. Directories not listed
// do not exist.
type fakeFS struct {
	files map[string]fakeEntry
	users map[string]identity
}

type fakeEntry struct {
	mode     fs.FileMode
	uid, gid int
	target   string // symlinks
}

func (f fakeFS) Lstat(path string) (fileMeta, error) {
	e, ok := f.files[path]
	if !ok {
		return fileMeta{}, &fs.PathError{Op: "lstat", Path: path, Err: fs.ErrNotExist}
	}
	return fileMeta{mode: e.mode, uid: e.uid, gid: e.gid}, nil
}

func (f fakeFS) Readlink(path string) (string, error) { return f.files[path].target, nil }

func (f fakeFS) LookPath(file, _ string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	if _, ok := f.files["/usr/bin/"+file]; ok {
		return "/usr/bin/" + file, nil
	}
	return "", errors.New("executable file not found in $PATH")
}

func (f fakeFS) Identity(name string) (identity, error) {
	id, ok := f.users[name]
	if !ok {
		return identity{}, fmt.Errorf("app.user: user: unknown user %s; create the user in the image or use a numeric uid", name)
	}
	return id, nil
}

func (f fakeFS) UserName(uid int) string {
	return map[int]string{0: "root", 65534: "nobody", 1000: "alice"}[uid]
}

const (
	dir     = fs.ModeDir
	symlink = fs.ModeSymlink
)

// baseTree is a small system where user nobody can start the app; each case
// changes a few entries.
func baseTree() map[string]fakeEntry {
	return map[string]fakeEntry{
		"/":                            {mode: dir | 0o755},
		"/usr":                         {mode: dir | 0o755},
		"/usr/bin":                     {mode: dir | 0o755},
		"/usr/bin/python3":             {mode: symlink | 0o777, target: "python3.11"},
		"/usr/bin/python3.11":          {mode: 0o755},
		"/srv":                         {mode: dir | 0o755},
		"/srv/app":                     {mode: dir | 0o755},
		"/srv/app/static":              {mode: dir | 0o755},
		"/run":                         {mode: dir | 0o755},
		"/run/berth":                   {mode: dir | 0o755, uid: 65534, gid: 65534},
		"/run/berth/berth_worker.py":   {mode: 0o644},
		"/opt":                         {mode: dir | 0o755},
		"/opt/venv":                    {mode: dir | 0o755, uid: 1000, gid: 1000},
		"/opt/venv/bin":                {mode: dir | 0o755, uid: 1000, gid: 1000},
		"/opt/venv/bin/python":         {mode: symlink | 0o777, target: "/usr/bin/python3"},
		"/opt/venv/lib":                {mode: dir | 0o755, uid: 1000, gid: 1000},
		"/loop":                        {mode: symlink | 0o777, target: "/loop"},
		"/srv/app/file-not-dir":        {mode: 0o644},
		"/srv/app/static-link":         {mode: symlink | 0o777, target: "../app/static"},
		"/srv/app/noexec-interpreter":  {mode: 0o644},
		"/srv/app/group-only":          {mode: dir | 0o750, gid: 65534},
		"/srv/app/owner-denied-others": {mode: dir | 0o007, uid: 65534},
	}
}

var users = map[string]identity{
	"nobody": {name: "nobody", uid: 65534, gids: []int{65534}, switched: true},
	"":       {name: "root", uid: 0, gids: []int{0}},
	"alice":  {name: "alice", uid: 1000, gids: []int{1000}}, // berth itself runs as alice
}

func TestPreflight(t *testing.T) {
	for _, tc := range []struct {
		name   string
		user   string
		change map[string]fakeEntry
		edit   func(*config.Config)
		want   []string // substrings of the error; none = passes
	}{
		{name: "usable by nobody", user: "nobody"},
		{name: "chdir 0700 owned by root",
			user: "nobody", change: map[string]fakeEntry{"/srv/app": {mode: dir | 0o700}},
			want: []string{"app.chdir /srv/app: user nobody (uid 65534) cannot enter /srv/app (mode 0700, owner root): chmod o+rx /srv/app or set app.user"}},
		{name: "chdir searchable but not readable",
			user: "nobody", change: map[string]fakeEntry{"/srv/app": {mode: dir | 0o711}},
			want: []string{"app.chdir /srv/app: user nobody (uid 65534) cannot list /srv/app (mode 0711, owner root): chmod o+r /srv/app"}},
		{name: "a parent of chdir is closed",
			user: "nobody", change: map[string]fakeEntry{"/srv": {mode: dir | 0o750}},
			want: []string{"app.chdir /srv/app: user nobody (uid 65534) cannot enter /srv (mode 0750, owner root): chmod o+x /srv"}},
		{name: "owned by the user, 0700",
			user: "nobody", change: map[string]fakeEntry{"/srv/app": {mode: dir | 0o700, uid: 65534}}},
		{name: "group access through the primary group",
			user: "nobody", edit: func(c *config.Config) { c.App.Chdir = "/srv/app/group-only" }},
		{name: "only the owner class applies to the owner",
			user: "nobody", edit: func(c *config.Config) { c.App.Chdir = "/srv/app/owner-denied-others" },
			want: []string{"cannot enter /srv/app/owner-denied-others (mode 0007, owner nobody): chmod u+rx"}},
		{name: "root may enter anything",
			user: "", change: map[string]fakeEntry{"/srv/app": {mode: dir | 0o700, uid: 1000}}},
		{name: "interpreter behind a symlink not executable by others",
			user: "nobody", change: map[string]fakeEntry{"/usr/bin/python3.11": {mode: 0o750}},
			want: []string{"app.python /usr/bin/python3: user nobody (uid 65534) cannot run /usr/bin/python3.11 (mode 0750, owner root): chmod o+x /usr/bin/python3.11"}},
		{name: "venv interpreter in a closed directory",
			user: "nobody", change: map[string]fakeEntry{"/opt/venv": {mode: dir | 0o700, uid: 1000, gid: 1000}},
			edit: func(c *config.Config) { c.App.Python = "/opt/venv/bin/python" },
			want: []string{"app.python /opt/venv/bin/python: user nobody (uid 65534) cannot enter /opt/venv (mode 0700, owner alice): chmod o+x /opt/venv or set app.user"}},
		{name: "not even root runs a file without x bits",
			user: "", edit: func(c *config.Config) { c.App.Python = "/srv/app/noexec-interpreter" },
			want: []string{"user root (uid 0) cannot run /srv/app/noexec-interpreter (mode 0644, owner root): chmod a+x"}},
		{name: "interpreter not found",
			user: "nobody", edit: func(c *config.Config) { c.App.Python = "python2" },
			want: []string{`app.python "python2" cannot be run`}},
		{name: "edge mode needs no interpreter",
			user: "nobody", edit: func(c *config.Config) {
				edgeConfig(c)
				c.App.Python = "/opt/venv/bin/python9"
				c.App.Chdir = "/srv/app/file-not-dir"
			}},
		{name: "interpreter missing",
			user: "nobody", edit: func(c *config.Config) { c.App.Python = "/opt/venv/bin/python9" },
			want: []string{"app.python /opt/venv/bin/python9: /opt/venv/bin/python9 does not exist"}},
		{name: "unknown user",
			user: "ghost", want: []string{"app.user", "ghost", "create the user in the image"}},
		{name: "berth not root: no app.user hint",
			user: "alice", change: map[string]fakeEntry{"/srv/app": {mode: dir | 0o700}},
			want: []string{"user alice (uid 1000) cannot enter /srv/app (mode 0700, owner root): chmod o+rx /srv/app\n"}},
		{name: "missing chdir is the demo app's case",
			user: "nobody", edit: func(c *config.Config) { c.App.Chdir = "/srv/none" }},
		{name: "chdir is a file",
			user: "nobody", edit: func(c *config.Config) { c.App.Chdir = "/srv/app/file-not-dir" },
			want: []string{"app.chdir /srv/app/file-not-dir: /srv/app/file-not-dir is not a directory"}},
		{name: "path through a file",
			user: "nobody", edit: func(c *config.Config) { c.App.PythonPath = []string{"/srv/app/file-not-dir/lib"} },
			want: []string{"app.pythonpath[0] /srv/app/file-not-dir/lib: /srv/app/file-not-dir is not a directory"}},
		{name: "missing pythonpath entry",
			user: "nobody", edit: func(c *config.Config) { c.App.PythonPath = []string{"/opt/venv/lib", "/opt/venv/lob"} },
			want: []string{"app.pythonpath[1] /opt/venv/lob does not exist: create it or remove it from app.pythonpath"}},
		{name: "symlink loop",
			user: "nobody", edit: func(c *config.Config) { c.App.PythonPath = []string{"/loop/x"} },
			want: []string{"/loop: too many levels of symbolic links"}},
		{name: "static dir through a relative symlink",
			user: "nobody", edit: func(c *config.Config) { c.Static = []config.Static{{URL: "/s/", Dir: "/srv/app/static-link"}} }},
		{name: "missing static dir",
			user: "nobody", edit: func(c *config.Config) { c.Static = []config.Static{{URL: "/s/", Dir: "/srv/app/collected"}} },
			want: []string{"static[0].dir /srv/app/collected does not exist: create it (Django: manage.py collectstatic)"}},
		{name: "missing static dir, a before-start task may create it",
			user: "nobody", edit: func(c *config.Config) {
				c.Static = []config.Static{{URL: "/s/", Dir: "/srv/app/collected"}}
				c.Tasks.BeforeStart = []config.Task{{Companion: config.Companion{Name: "collectstatic", Command: []string{"python3", "manage.py", "collectstatic"}}}}
			}},
		{name: "static dir is a file: the hint names static.file",
			user: "nobody", edit: func(c *config.Config) {
				c.Static = []config.Static{{URL: "/favicon.ico/", Dir: "/srv/app/file-not-dir"}}
			},
			want: []string{"static[0].dir /srv/app/file-not-dir is a file, not a directory: to serve one file at /favicon.ico/, write {url: /favicon.ico, file: /srv/app/file-not-dir}"}},
		{name: "a program's command not found",
			user: "nobody", edit: func(c *config.Config) {
				c.Programs = []config.Program{{Companion: config.Companion{Name: "q", Command: []string{"celery", "worker"}}}}
			},
			want: []string{`programs[0] (q) command: executable file not found in $PATH; install it in the image or give its absolute path`}},
		{name: "a job's command its user cannot run",
			user: "nobody", change: map[string]fakeEntry{"/usr/bin/python3.11": {mode: 0o750}},
			edit: func(c *config.Config) {
				c.App.Python = "/opt/venv/bin/python"
				c.Cron = []config.Job{{Companion: config.Companion{Name: "clear", Command: []string{"/usr/bin/python3", "manage.py"}}}}
			},
			want: []string{"cron[0] (clear) command /usr/bin/python3: user nobody (uid 65534) cannot run /usr/bin/python3.11"}},
		{name: "a program of its own user, who is unknown",
			user: "nobody", edit: func(c *config.Config) {
				c.Programs = []config.Program{{Companion: config.Companion{Name: "q", Command: []string{"/usr/bin/python3"}, User: "ghost"}}}
			},
			want: []string{"programs[0] (q) user: app.user: user: unknown user ghost"}},
		{name: "a task's own chdir is missing",
			user: "nobody", edit: func(c *config.Config) {
				c.Tasks.BeforeStart = []config.Task{{Companion: config.Companion{Name: "m", Command: []string{"/usr/bin/python3"}, Chdir: "/srv/gone"}}}
			},
			want: []string{"tasks.before_start[0] (m) chdir /srv/gone does not exist"}},
		{name: "static dir the proxy's user cannot list",
			user: "nobody", change: map[string]fakeEntry{"/srv/app/static": {mode: dir | 0o701}},
			edit: func(c *config.Config) { c.Static = []config.Static{{URL: "/s/", Dir: "/srv/app/static"}} },
			want: []string{"static[0].dir /srv/app/static: user nobody (uid 65534) cannot list /srv/app/static (mode 0701, owner root): chmod o+r"}},
		{name: "run directory under a closed one, every failure listed",
			user: "nobody", change: map[string]fakeEntry{"/run": {mode: dir | 0o700}, "/srv/app": {mode: dir | 0o700}},
			want: []string{"\n  app.chdir /srv/app: user nobody", "\n  run directory /run/berth/berth_worker.py: user nobody (uid 65534) cannot enter /run (mode 0700, owner root)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			for p, e := range tc.change {
				tree[p] = e
			}
			cfg := config.Default()
			cfg.App.User = tc.user
			cfg.App.Chdir = "/srv/app"
			cfg.App.Python = "python3"
			if tc.edit != nil {
				tc.edit(cfg)
			}
			err := preflight(fakeFS{files: tree, users: users}, cfg, "/run/berth")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("want no error, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error with %q, got none", tc.want)
			}
			var pe preflightError
			if !errors.As(err, &pe) {
				t.Errorf("error is not a preflightError: %T", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error()+"\n", w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// The real system: a fresh 0700 directory owned by root cannot be app.chdir
// for user nobody; after chmod 0755 it can.
func TestPreflightRealSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the check drops to app.user only when berth is root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	app, err := os.MkdirTemp("", "preflight-app")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(app)
	run, err := os.MkdirTemp("", "preflight-run")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	if err := os.Chmod(run, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(run, "berth_worker.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.App.User = "nobody"
	cfg.App.Chdir = app
	cfg.App.Python = "/usr/bin/python3"
	err = preflight(realPreflightOS{}, cfg, run)
	want := fmt.Sprintf("app.chdir %s: user nobody (uid %s) cannot enter %s (mode 0700, owner root): chmod o+rx %s or set app.user", app, nobody.Uid, app, app)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("0700 app dir: got %v, want %q", err, want)
	}
	if err := os.Chmod(app, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := preflight(realPreflightOS{}, cfg, run); err != nil {
		t.Fatalf("0755 app dir: %v", err)
	}
}
