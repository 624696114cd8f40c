// Command berth serves a Python WSGI app from one container: it is the
// container's PID 1 (supervisor), its HTTP front (proxy) and the launcher of
// its Python workers. See README.md for the commands, signals and exit codes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/supervisor"
)

// Set at build time by image/build: -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `berth serves a Python WSGI app: supervisor, HTTP proxy and workers in one binary.

Usage:
  berth run [--config PATH] [--app DIR]   run the server (the container's entrypoint)
  berth check [--config PATH] [--print] [--file-only]
                                          validate a config like nginx -t (exit 0 or 1), and
                                          this machine for it as berth run would (users, paths,
                                          commands, certificates) unless --file-only
  berth status [--config PATH] [--admin ADDR] [--json | --quiet | --live]
                                          ask the running server how it is
  berth import [--check] [--python PATH] FILE...
                                          translate uwsgi.ini, gunicorn.conf.py and nginx
                                          configs into one berth.yaml on stdout
  berth version                           print version, Go version and commit

The config is PATH, else $BERTH_CONFIG, else /etc/berth/berth.yaml if it exists,
else the built-in defaults (serve the WSGI app found in /app, or a demo app).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "import":
		return cmdImport(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "berth %s (commit %s, %s, %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "proxy":
		return proxy.Main()
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "berth: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// configPath resolves which file to use; "" means the built-in defaults.
// explicit reports whether the user named it (then it must exist).
func configPath(flagValue string) (path string, explicit bool) {
	if flagValue != "" {
		return flagValue, true
	}
	if env := os.Getenv("BERTH_CONFIG"); env != "" {
		return env, true
	}
	if _, err := os.Stat(config.DefaultPath); err == nil {
		return config.DefaultPath, false
	}
	return "", false
}

func loadConfig(flagValue string) (*config.Config, string, error) {
	path, _ := configPath(flagValue)
	var cfg *config.Config
	var err error
	if path == "" {
		cfg = config.Default()
	} else if cfg, err = config.Load(path); err != nil {
		return nil, path, err
	}
	if err := cfg.ApplyEnv(os.Getenv); err != nil {
		return nil, path, err
	}
	return cfg, path, nil
}

func cmdRun(args []string, stderr io.Writer) int {
	fl := flag.NewFlagSet("run", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgFlag := fl.String("config", "", "config file (default $BERTH_CONFIG, then "+config.DefaultPath+")")
	appDir := fl.String("app", "", "directory holding the WSGI app (overrides app.chdir)")
	if err := fl.Parse(args); err != nil {
		return supervisor.ExitConfig
	}
	cfg, path, err := loadConfig(*cfgFlag)
	if err != nil {
		fmt.Fprintf(stderr, "berth: %v\n", err)
		return supervisor.ExitConfig
	}
	override := func(c *config.Config) error {
		if *appDir != "" {
			c.App.Chdir = *appDir
		}
		return c.ApplyEnv(os.Getenv)
	}
	override(cfg)
	return supervisor.Run(supervisor.Options{
		Config:     cfg,
		ConfigPath: path,
		Override:   override,
		// Only the orphan-reaping test sets this, to show that its check
		// fails when nothing reaps.
		NoReap: os.Getenv("BERTH_TEST_NO_REAP") == "1",
	})
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("check", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgFlag := fl.String("config", "", "config file to check")
	print := fl.Bool("print", false, "print the effective config with every default filled in")
	fileOnly := fl.Bool("file-only", false, "check the file alone, not this machine's users, paths and certificates (a config meant for another machine or an image)")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	path, _ := configPath(*cfgFlag)
	if path == "" {
		fmt.Fprintf(stderr, "berth check: no config file: pass --config PATH or set BERTH_CONFIG (%s does not exist)\n", config.DefaultPath)
		return 1
	}
	summary, err := config.Check(path)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		fmt.Fprintf(stderr, "berth check: %s: configuration is invalid\n", path)
		return 1
	}
	if *print {
		cfg, err := config.Load(path)
		if err == nil {
			var b []byte
			if b, err = cfg.Effective(); err == nil {
				stdout.Write(b)
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "berth check: %v\n", err)
			return 1
		}
	}
	fmt.Fprintln(stderr, summary)
	if *fileOnly {
		fmt.Fprintln(stderr, "berth check: --file-only: this machine's users, paths and certificates were not checked")
		return 0
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "berth check: %v\n", err)
		return 1
	}
	hc := supervisor.CheckHost(cfg)
	for _, s := range hc.Skipped {
		fmt.Fprintf(stderr, "berth check: skipped here: %s\n", s)
	}
	if hc.Err != nil {
		fmt.Fprintf(stderr, "%v\n", hc.Err)
		fmt.Fprintf(stderr, "berth check: %s: the file is valid, but berth run would refuse it on this machine (exit 4); fix the above, or pass --file-only to check a config meant for another machine\n", path)
		return 1
	}
	fmt.Fprintf(stderr, "berth check: on this machine, as berth run would start it (app's processes as %s): %d checks passed, %d skipped\n", hc.User, len(hc.Checked), len(hc.Skipped))
	return 0
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	fl.SetOutput(stderr)
	cfgFlag := fl.String("config", "", "config file naming admin.listen")
	admin := fl.String("admin", "", "admin address (overrides the config's admin.listen)")
	asJSON := fl.Bool("json", false, "print the raw /status JSON")
	quiet := fl.Bool("quiet", false, "print nothing; exit 0 when ready (for HEALTHCHECK)")
	live := fl.Bool("live", false, "exit 0 when the supervisor answers /livez (a liveness probe); the reason on stderr when not")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *live && *asJSON {
		fmt.Fprintln(stderr, "berth status: --live and --json do not go together; use --json alone for the full status")
		return 2
	}
	addr := *admin
	if addr == "" {
		cfg, _, err := loadConfig(*cfgFlag)
		if err != nil {
			fmt.Fprintf(stderr, "berth status: %v\n", err)
			return 1
		}
		addr = cfg.Admin.Listen
	}
	if addr == "off" {
		fmt.Fprintln(stderr, "berth status: admin.listen is off; enable the admin endpoint to use berth status")
		return 1
	}
	client := adminClient(addr)
	if *live || *quiet {
		path := "/readyz"
		if *live {
			path = "/livez"
		}
		if err := probeAdmin(client, addr, path); err != nil {
			if !*quiet {
				fmt.Fprintf(stderr, "berth status: %v\n", err)
			}
			return 1
		}
		return 0
	}
	resp, err := client.Get("http://admin/status")
	if err != nil {
		fmt.Fprintf(stderr, "berth status: %v\nIs berth running? Its admin endpoint is %s (admin.listen).\n", err, addr)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var st supervisor.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "berth status: bad answer from %s: %v\n", addr, err)
		return 1
	}
	printStatus(stdout, st)
	if !st.Ready {
		return 1
	}
	return 0
}

func adminClient(addr string) *http.Client {
	network, address := "tcp", addr
	if strings.HasPrefix(addr, "unix:") {
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	} else if strings.HasPrefix(addr, ":") || strings.HasPrefix(addr, "0.0.0.0:") {
		address = "127.0.0.1:" + addr[strings.LastIndex(addr, ":")+1:]
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, address)
		}}}
}

func printStatus(w io.Writer, st supervisor.Status) {
	fmt.Fprintf(w, "berth (pid %d): %s\n", st.PID, st.State)
	fmt.Fprintf(w, "app:       %s\n", st.App)
	fmt.Fprintf(w, "listen:    %s\n", strings.Join(st.Listen, ", "))
	cfgFile := st.ConfigFile
	if cfgFile == "" {
		cfgFile = "(built-in defaults)"
	}
	fmt.Fprintf(w, "config:    %s, generation %d\n", cfgFile, st.Generation)
	if r := st.LastReload; r != nil {
		res := "ok"
		if !r.OK {
			res = "FAILED"
		}
		fmt.Fprintf(w, "reload:    %s %s ago (%s): %s\n", res, time.Since(r.At).Round(time.Second), r.Reason, r.Message)
	}
	fmt.Fprintf(w, "workers:   %d wanted × %d threads, preload %v, queue %d\n", st.WantWorkers, st.Threads, st.Preload, st.Queue)
	if len(st.Restarts) > 0 {
		var parts []string
		for k, v := range st.Restarts {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
		fmt.Fprintf(w, "restarts:  %s\n", strings.Join(parts, ", "))
	}
	if st.Cgroup != nil {
		fmt.Fprintf(w, "cgroup:    %s, writable %v\n", st.Cgroup.Mode, st.Cgroup.Writable)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nWORKER\tPID\tSTATE\tREQUESTS\tIN-FLIGHT\tRSS\tAGE\tGEN")
	for _, x := range st.Workers {
		state := x.State
		if x.Retiring != "" {
			state += " (" + x.Retiring + ")"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%s\t%d\n", x.ID, x.PID, state, x.Requests, x.InFlight,
			mib(x.RSS), time.Duration(x.AgeSec*float64(time.Second)).Round(time.Second), x.Gen)
	}
	tw.Flush()
	printUpstreams(w, st)
	printTLS(w, st, time.Now())
	printCompanions(w, st)
}

func mib(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fMi", float64(n)/(1<<20))
}
