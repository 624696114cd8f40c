package main

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// systemPython is Debian's interpreter, the one with python3-django and
// gunicorn; the python3 first on PATH may be another build without them.
const systemPython = "/usr/bin/python3"

// staticSize is the static-file scenario's file: 100 KiB.
const staticSize = 100 << 10

//go:embed apps stacks wrk
var assets embed.FS

// benchEnv is what every run shares: binaries, the prepared apps, the
// machine description, and a temp dir that is removed at the end.
type benchEnv struct {
	o         options
	log       io.Writer
	dir       string // temp dir; every stack instance gets a subdir
	berth     string // berth binary
	helloDir  string // bench/apps copied here (hello.py)
	djangoDir string // the Django test site, migrated and collected
	staticDir string // holds staticName
	scripts   string // wrk Lua scripts
	certFile  string // self-signed certificate every stack's HTTPS listener serves
	keyFile   string
	user      string // nginx `user` (the current user)
	machine   machine
	seq       int // instance counter for subdir names
}

// machine describes where the figures were taken.
type machine struct {
	CPUs     int               `json:"cpus"`
	CPUModel string            `json:"cpu_model"`
	Kernel   string            `json:"kernel"`
	MemTotal string            `json:"mem_total"`
	Versions map[string]string `json:"versions"`
	Date     string            `json:"date"`
	// LoadStart and LoadEnd are /proc/loadavg before and after the run:
	// the machine may be shared, and other work skews every figure.
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end,omitempty"`
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

const staticName = "file-100k.bin"

// requiredTools lists what the stacks need, by stack, as commands that must
// succeed. missingTools runs them.
func missingTools(stacks []string) []string {
	type check struct {
		what string
		args []string
	}
	checks := []check{{"wrk", []string{"wrk", "-v"}}, {"python3 (" + systemPython + ")", []string{systemPython, "-c", "import sys"}}}
	for _, s := range stacks {
		switch s {
		case "uwsgi":
			checks = append(checks,
				check{"nginx", []string{"nginx", "-v"}},
				check{"uwsgi with the python3 plugin", []string{"uwsgi", "--plugin", "python3", "--help"}})
		case "gunicorn":
			checks = append(checks,
				check{"nginx", []string{"nginx", "-v"}},
				check{"gunicorn for " + systemPython, []string{systemPython, "-m", "gunicorn", "--version"}})
		case "uvicorn":
			checks = append(checks,
				check{"nginx", []string{"nginx", "-v"}},
				check{"uvicorn with uvloop and httptools for " + systemPython, []string{systemPython, "-c", "import uvicorn, uvloop, httptools, starlette"}})
		}
	}
	var missing []string
	seen := map[string]bool{}
	for _, c := range checks {
		if seen[c.what] {
			continue
		}
		seen[c.what] = true
		if _, err := exec.LookPath(c.args[0]); err != nil {
			missing = append(missing, c.what)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, c.args[0], c.args[1:]...)
		// wrk -v exits 1 after printing its version; only "not runnable" counts.
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil && (c.args[0] != "wrk" || !bytes.Contains(out, []byte("wrk"))) {
			missing = append(missing, c.what)
		}
	}
	return missing
}

func prepare(ctx context.Context, o options, logw io.Writer) (*benchEnv, error) {
	if m := missingTools(o.stacks); len(m) > 0 {
		return nil, fmt.Errorf("missing %s: install the Debian packages (nginx, uwsgi, uwsgi-plugin-python3, gunicorn, python3-django, wrk, python3-uvicorn, python3-uvloop, python3-httptools, python3-starlette) or drop the stack with -stacks", strings.Join(m, ", "))
	}
	dir, err := os.MkdirTemp("", "bench")
	if err != nil {
		return nil, fmt.Errorf("make a temp dir: %w", err)
	}
	e := &benchEnv{o: o, log: logw, dir: dir}
	ok := false
	defer func() {
		if !ok {
			e.cleanup()
		}
	}()
	if u, err := user.Current(); err == nil {
		e.user = u.Username
	} else {
		return nil, fmt.Errorf("who am I (nginx needs a user): %w", err)
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	if e.berth = o.berth; e.berth == "" && contains(o.stacks, "berth") {
		e.berth = filepath.Join(dir, "berth")
		fmt.Fprintf(logw, "bench: building berth (CGO_ENABLED=0 go build -o %s .)\n", e.berth)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", e.berth, ".")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build berth in %s: %w\n%s", root, err, out)
		}
	}
	// Apps and scripts from the embedded bench/ files.
	e.helloDir = filepath.Join(dir, "hello")
	e.scripts = filepath.Join(dir, "wrk")
	if err := copyEmbedded("apps", e.helloDir); err != nil {
		return nil, err
	}
	if err := copyEmbedded("wrk", e.scripts); err != nil {
		return nil, err
	}
	e.staticDir = filepath.Join(dir, "static")
	if err := os.MkdirAll(e.staticDir, 0o755); err != nil {
		return nil, err
	}
	// Deterministic, incompressible content: no stack can cheat with gzip.
	data := make([]byte, staticSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.UintN(256))
	}
	if err := os.WriteFile(filepath.Join(e.staticDir, staticName), data, 0o644); err != nil {
		return nil, err
	}
	e.certFile, e.keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeBenchCert(e.certFile, e.keyFile); err != nil {
		return nil, err
	}
	if needsDjango(o.scenarios) {
		if err := e.prepareDjango(ctx, root); err != nil {
			return nil, err
		}
	}
	e.machine = describeMachine(ctx, e.berth)
	ok = true
	return e, nil
}

func (e *benchEnv) cleanup() {
	if e.o.keep {
		fmt.Fprintf(e.log, "bench: kept %s\n", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// instanceDir is a fresh directory for one stack instance. Its path stays
// short: unix socket paths must fit in 108 bytes.
func (e *benchEnv) instanceDir(stack string) (string, error) {
	e.seq++
	d := filepath.Join(e.dir, fmt.Sprintf("%s%d", stack[:1], e.seq))
	return d, os.MkdirAll(d, 0o755)
}

// prepareDjango copies the Django test site and runs migrate and
// collectstatic, as a deployment would before starting any server.
func (e *benchEnv) prepareDjango(ctx context.Context, root string) error {
	src := filepath.Join(root, "tests", "testdata", "djangosite")
	e.djangoDir = filepath.Join(e.dir, "django")
	if err := copyDir(os.DirFS(src), ".", e.djangoDir); err != nil {
		return fmt.Errorf("copy the Django test site %s: %w", src, err)
	}
	for _, args := range [][]string{{"manage.py", "migrate", "--noinput", "-v0"}, {"manage.py", "collectstatic", "--noinput", "-v0"}} {
		cmd := exec.CommandContext(ctx, systemPython, args...)
		cmd.Dir = e.djangoDir
		cmd.Env = append(os.Environ(), "DJANGO_SETTINGS_MODULE=mysite.settings")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("django %s in %s: %w\n%s", args[1], e.djangoDir, err, out)
		}
	}
	return nil
}

// moduleRoot walks up from the working directory to berth's go.mod, so the
// bench works from the module root (`go run ./bench`) and from bench/ (tests).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/berth-dev/berth\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no berth go.mod above %s: run the bench from inside the berth module", dir)
		}
	}
}

func copyEmbedded(sub, dst string) error {
	return copyDir(assets, sub, dst)
}

func copyDir(fsys fs.FS, sub, dst string) error {
	return fs.WalkDir(fsys, sub, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(sub, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// describeMachine records the CPU, kernel and every peer's version; a tool
// that cannot say is recorded as "?" rather than failing the run.
func describeMachine(ctx context.Context, berthBin string) machine {
	m := machine{CPUs: runtime.NumCPU(), Versions: map[string]string{}, Date: time.Now().UTC().Format(time.RFC3339), LoadStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if mm := regexp.MustCompile(`(?m)^model name\s*:\s*(.+)$`).FindSubmatch(b); mm != nil {
			m.CPUModel = strings.TrimSpace(string(mm[1]))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if mm := regexp.MustCompile(`(?m)^MemTotal:\s*(.+)$`).FindSubmatch(b); mm != nil {
			m.MemTotal = strings.TrimSpace(string(mm[1]))
		}
	}
	version := func(name string, re string, args ...string) {
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(c, args[0], args[1:]...).CombinedOutput()
		if mm := regexp.MustCompile(re).FindSubmatch(out); mm != nil {
			m.Versions[name] = string(mm[1])
		} else {
			m.Versions[name] = "?"
		}
	}
	version("nginx", `nginx/(\S+)`, "nginx", "-v")
	version("uwsgi", `^(\S+)`, "uwsgi", "--version")
	version("gunicorn", `version ([\d.]+)`, systemPython, "-m", "gunicorn", "--version")
	version("uvicorn", `uvicorn ([\d.]+)`, systemPython, "-m", "uvicorn", "--version")
	version("python", `Python (\S+)`, systemPython, "--version")
	version("django", `^(\S+)`, systemPython, "-c", "import django; print(django.get_version())")
	version("wrk", `wrk (\S+)`, "wrk", "-v")
	if berthBin != "" {
		version("berth", `(?m)^(berth .+)$`, berthBin, "version")
	}
	m.Versions["go"] = runtime.Version()
	return m
}
