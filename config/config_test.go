package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		err  bool
	}{
		{"0", 0, false},
		{"1048576", 1048576, false},
		{"1k", 1000, false},
		{"1K", 1000, false},
		{"75M", 75_000_000, false},
		{"2G", 2_000_000_000, false},
		{"1T", 1_000_000_000_000, false},
		{"1Ki", 1024, false},
		{"512Mi", 512 << 20, false},
		{"3Gi", 3 << 30, false},
		{"2Ti", 2 << 40, false},
		{"1MB", 0, true},
		{"1.5M", 0, true},
		{"-1", 0, true},
		{"", 0, true},
		{"M", 0, true},
		{"1m", 0, true}, // milli in Kubernetes, mega elsewhere: refused
		{"1 M", 0, true},
		{"1Pi", 0, true},
		{"9223372036854775807", 9223372036854775807, false},
		{"9223372036854775808", 0, true},
		{"10000000T", 0, true}, // overflows int64
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), "Ki, Mi, Gi, Ti") && !strings.Contains(err.Error(), "too large") {
			t.Errorf("ParseSize(%q) error does not list the accepted forms: %v", tc.in, err)
		}
	}
}

// TestParseValues checks how single values decode, through Parse.
func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		yaml  string
		check func(*Config) bool
	}{
		{"workers: {count: auto}", func(c *Config) bool { return c.Workers.Count == 0 }},
		{"workers: {count: 7}", func(c *Config) bool { return c.Workers.Count == 7 }},
		{"workers: {timeout: 1m30s}", func(c *Config) bool { return c.Workers.Timeout.D() == 90*time.Second }},
		{"workers: {graceful_timeout: 0}", func(c *Config) bool { return c.Workers.GracefulTimeout == 0 }},
		{"workers: {max_rss: 0x100}", func(c *Config) bool { return c.Workers.MaxRSS == 256 }},
		{"workers: {preload: false}", func(c *Config) bool { return !c.Workers.Preload }},
		{"proxy: {max_body_size: 512Mi}", func(c *Config) bool { return c.Proxy.MaxBodySize == 512<<20 }},
		{"proxy: {max_body_size: 0}", func(c *Config) bool { return c.Proxy.MaxBodySize == 0 }},
		{"proxy: {}", func(c *Config) bool { return c.Proxy.BodyBufferSize == 64<<10 }},
		{"proxy: {body_buffer_size: 2M}", func(c *Config) bool { return c.Proxy.BodyBufferSize == 2000000 }},
		{"proxy: {body_buffer_size: 1}", func(c *Config) bool { return c.Proxy.BodyBufferSize == 1 }},
		{"proxy: {body_buffer_size: 1Gi}", func(c *Config) bool { return c.Proxy.BodyBufferSize == 1<<30 }},
		{"proxy: {trusted_proxies: [10.1.2.3/8, 192.0.2.7, '::1']}", func(c *Config) bool {
			return reflect.DeepEqual(c.Proxy.TrustedProxies, []string{"10.0.0.0/8", "192.0.2.7/32", "::1/128"})
		}},
		{"app: {user: 1000}", func(c *Config) bool { return c.App.User == "1000" }},
		{"app: {env: {N: 010, B: true}}", func(c *Config) bool { return c.App.Env["N"] == "010" && c.App.Env["B"] == "true" }},
		{"app: {chdir: ''}", func(c *Config) bool { return c.App.Chdir == "" }}, // explicit "": stay in the working directory
		{"app: {module: mysite.wsgi}", func(c *Config) bool { return c.App.Module == "mysite.wsgi" }},
		{"listen:", func(c *Config) bool { return reflect.DeepEqual(c.Listen, []string{":8080"}) }},
		{"listen: ['127.0.0.1:0', 'unix:/tmp/b/x.sock']", func(c *Config) bool { return len(c.Listen) == 2 }},
		{"admin: {listen: 'off'}\nlisten: ['127.0.0.1:9000']", func(c *Config) bool { return c.Admin.Listen == "off" }},
		{"admin: {listen: '127.0.0.1:0'}\nlisten: ['127.0.0.1:0']", func(c *Config) bool { return true }}, // port 0 never clashes
		{"resources: {worker: {memory: {limit: 256Mi}}}", func(c *Config) bool {
			return c.Resources.Worker != nil && *c.Resources.Worker.Memory.Limit == 256<<20 && c.Resources.Workers == nil
		}},
		{"resources: {proxy: {blockIO: {weightDevice: [{major: 8, minor: 0, weight: 500}]}}}", func(c *Config) bool {
			wd := c.Resources.Proxy.BlockIO.WeightDevice
			return len(wd) == 1 && wd[0].Major == 8 && *wd[0].Weight == 500
		}},
		{"resources: {workers: {devices: [{allow: false, access: rwm}]}}", func(c *Config) bool {
			d := c.Resources.Workers.Devices
			return len(d) == 1 && !d[0].Allow && d[0].Access == "rwm"
		}},
	} {
		c, err := Parse("t.yaml", []byte(tc.yaml))
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.yaml, err)
			continue
		}
		if !tc.check(c) {
			t.Errorf("Parse(%q) gave %+v", tc.yaml, c)
		}
	}
}

// TestParseErrors checks short documents whose single error is not covered
// by a golden file.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"workers: {count: -2}", `t.yaml:1: workers.count: expected a number of at least 1 or "auto", got -2`},
		{"workers: {threads: 1.5}", `t.yaml:1: workers.threads: expected a whole number, got 1.5`},
		{"workers: {max_requests: 99999999999999999999}", `t.yaml:1: workers.max_requests: 99999999999999999999 is too large`},
		{"app: {python: ''}", `t.yaml:1: app.python: must name the Python interpreter, e.g. python3 or /venv/bin/python`},
		{"app: {module: true}", `t.yaml:1: app.module: expected a string, got true; put it in quotes ("true") if you mean the text`},
		{"app: {module: 'a.b:c.d'}", `t.yaml:1: app.module: "a.b:c.d" is not a WSGI module`},
		{"listen: ':8080'", `t.yaml:1: listen: expected a list of strings such as ["a", "b"], got ":8080"`},
		{"listen: [':8080', '0.0.0.0:8080']", `t.yaml:1: listen[1]: "0.0.0.0:8080" binds the same address as listen[0] (":8080")`},
		{"listen: ['127.0.0.1:9000']", `t.yaml:1: listen[0]: "127.0.0.1:9000" is the admin endpoint's address`},
		{"listen: ['unix:/" + strings.Repeat("x", 110) + "']", `unix socket path is 111 bytes`},
		{"listen: ['host name:80']", `host "host name" is neither an IP address nor a host name`},
		{"admin: {listen: 9000}", `t.yaml:1: admin.listen: "9000" has no host part; did you mean ":9000"?; or "off"`},
		{"a: &x {b: 1}\n<<: *x", `t.yaml:1: unknown key "a"`},
		{"app:\n  <<: {module: x}", `t.yaml:2: app: YAML merge keys (<<) are not supported; write the keys out`},
		{"? [a]\n: 1", `t.yaml:1: a key must be a plain name, got a list as a key`},
		{"resources: {worker: {memory: {limit: 256MB}}}", `t.yaml:1: resources.worker.memory.limit: invalid size "256MB"`},
		{"resources: {worker: {cpu: {shares: 1Gi}}}", `t.yaml:1: resources.worker.cpu.shares: expected a whole number, got "1Gi"`},
		{"resources: {worker: {blockIO: {weight: 70000}}}", `t.yaml:1: resources.worker.blockIO.weight: 70000 is out of range for this field`},
		{"resources: {worker: {memroy: {}}}", `t.yaml:1: resources.worker: unknown key "memroy" (did you mean "memory"?); valid keys: devices, memory, cpu, pids, blockIO, hugepageLimits, network, rdma, unified`},
		{"resources: {worker: {memory: {disableOOMKiller: 1}}}", `t.yaml:1: resources.worker.memory.disableOOMKiller: expected true or false, got 1`},
		{"resources: [1]", `t.yaml:1: resources: expected a mapping with keys workers, worker, proxy, got a list`},
		{"static: [{url: /s/, dir: /d, extra: 1}]", `t.yaml:1: static[0]: unknown key "extra"; valid keys: url, dir`},
		{"static: /app/static", `t.yaml:1: static: expected a list of {url: /static/, dir: /app/static} entries, got "/app/static"`},
		{"proxy: {queue: {timeout: -1s}}", `t.yaml:1: proxy.queue.timeout: must not be negative, got -1s`},
		{"proxy: {body_buffer_size: 2Gi}", `t.yaml:1: proxy.body_buffer_size: must be from 1 to 1Gi (the bytes of a request body kept in memory before it goes to a temp file; the default is 64Ki), got 2147483648`},
		{"proxy: {body_buffer_size: 2MB}", `t.yaml:1: proxy.body_buffer_size: invalid size "2MB": use a whole number of bytes`},
		{"proxy: {body_buffer_size: -1}", `t.yaml:1: proxy.body_buffer_size: invalid size -1: use a whole number`},
		{"shutdown: {delay: -1s}", `t.yaml:1: shutdown.delay: must not be negative, got -1s`},
		{"workers: {timeout: [1]}", `t.yaml:1: workers.timeout: expected a duration such as 30s or 1m30s, got a list`},
		{"app: {env: {'A=B': x}}", `t.yaml:1: app.env.A=B: "A=B" is not a valid environment variable name`},
		{"app: {pythonpath: [a, ~]}", `t.yaml:1: app.pythonpath[1]: empty list entry; remove it or give it a value`},
		{"listen: [':8080']\n\x01", `t.yaml:2: YAML syntax error: control characters are not allowed; save the file as UTF-8 text without control characters`},
		{"app: {module: \xff}", `t.yaml:1: YAML syntax error:`},
		{"app: !custom x", `t.yaml:1: app: expected a mapping with keys module`},
		{"app: {module: !custom x}", `t.yaml:1: app.module: expected a string, got a value tagged !custom; remove the tag`},
	} {
		_, err := Parse("t.yaml", []byte(tc.yaml))
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error %q", tc.yaml, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error:\n  %v\nwant it to contain:\n  %s", tc.yaml, err, tc.want)
		}
	}
}

func TestEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n", "---\n", "~\n", "---\n# only a comment\n"} {
		c, err := Parse("e.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		want := Default()
		want.Source = "e.yaml"
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Parse(%q) = %+v, want the defaults %+v", doc, c, want)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}
}

func TestDefaultsAreFresh(t *testing.T) {
	a := Default()
	a.Listen[0] = "changed"
	a.App.Env["X"] = "1"
	if b := Default(); b.Listen[0] != ":8080" || len(b.App.Env) != 0 {
		t.Errorf("Default shares state between calls: %+v", b)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	c := Default()
	c.Workers.Threads = 0
	c.Proxy.TrustedProxies = []string{"10.9.8.7/16", "2001:db8::5"}
	err := c.Validate()
	if err == nil || err.Error() != "workers.threads: must be at least 1, got 0" {
		t.Fatalf("Validate() = %v, want the threads error without file or line", err)
	}
	c.Workers.Threads = 2
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(): %v", err)
	}
	if want := []string{"10.9.0.0/16", "2001:db8::5/128"}; !reflect.DeepEqual(c.Proxy.TrustedProxies, want) {
		t.Errorf("trusted proxies = %v, want normalized %v", c.Proxy.TrustedProxies, want)
	}
}

func TestErrorListUnwraps(t *testing.T) {
	_, err := Parse("x.yaml", []byte("workers:\n  threads: 0\n  count: lots\n"))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want an ErrorList of 2, got %#v", err)
	}
	// Sorted by line although validation (threads) ran after decoding (count).
	if list[0].Line != 2 || list[0].Path != "workers.threads" || list[1].Line != 3 || list[1].Path != "workers.count" {
		t.Errorf("errors not in line order: %v", err)
	}
	var one *Error
	if !errors.As(err, &one) || one.File != "x.yaml" {
		t.Errorf("errors.As(*Error) = %v", one)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
	path := filepath.Join(dir, "berth.yaml")
	if err := os.WriteFile(path, []byte("workers: {count: 2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil || c.Source != path || c.Workers.Count != 2 {
		t.Errorf("Load = %+v, %v", c, err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ body, want string }{
		{"", "configuration is valid (listen :8080, auto workers, app discovered in /app)"},
		{"app: {module: mysite.wsgi:application}\nworkers: {count: 4}\n",
			"configuration is valid (listen :8080, 4 workers, app mysite.wsgi:application)"},
		{"listen: [':80', 'unix:/run/b.sock']\napp: {chdir: ''}\nworkers: {count: 1}\n",
			"configuration is valid (listen :80 unix:/run/b.sock, 1 worker, app discovered in the working directory)"},
	} {
		p := write("berth.yaml", tc.body)
		got, err := Check(p)
		if err != nil || got != p+": "+tc.want {
			t.Errorf("Check(%q) = %q, %v; want %q", tc.body, got, err, p+": "+tc.want)
		}
	}
	p := write("bad.yaml", "workers:\n  count: lots\n")
	got, err := Check(p)
	if err == nil || got != "" || err.Error() != p+`:2: workers.count: expected a number or "auto", got "lots"` {
		t.Errorf("Check(bad) = %q, %v", got, err)
	}
}

func TestApplyEnv(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		admin     string
		want      []string
		err       string
	}{
		{"unset", "", "", []string{":8080"}, ""},
		{"one", ":9090", "", []string{":9090"}, ""},
		{"list", " :9090 , unix:/run/b.sock,", "", []string{":9090", "unix:/run/b.sock"}, ""},
		{"only commas", " , ", "", nil, "names no address"},
		{"bad", "9090", "", nil, `BERTH_LISTEN: "9090" has no host part; did you mean ":9090"?`},
		{"dup", ":80,0.0.0.0:80", "", nil, "binds the same address"},
		{"admin clash", "127.0.0.1:9000", "", nil, "admin endpoint's address"},
		{"admin off", "127.0.0.1:9000", "off", []string{"127.0.0.1:9000"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if tc.admin != "" {
				c.Admin.Listen = tc.admin
			}
			err := c.ApplyEnv(func(k string) string {
				if k == "BERTH_LISTEN" {
					return tc.env
				}
				return ""
			})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if !reflect.DeepEqual(c.Listen, []string{":8080"}) {
					t.Errorf("a failed ApplyEnv changed listen to %v", c.Listen)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(c.Listen, tc.want) {
				t.Errorf("listen = %v, %v; want %v", c.Listen, err, tc.want)
			}
		})
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"listen", "admin", "app", "workers", "static", "proxy", "shutdown", "resources"}
	for in, want := range map[string]string{
		"wrokers": "workers", "worker": "workers", "Listen": "listen", "lisen": "listen",
		"ap": "app", "proxies": "", "xyz": "", "static_files": "", "resource": "resources",
	} {
		if got := suggest(in, keys); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
	if got := suggest("max-requests", []string{"max_requests", "max_rss"}); got != "max_requests" {
		t.Errorf("suggest(max-requests) = %q", got)
	}
}

func TestDiff(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   Changes
	}{
		{"nothing", func(*Config) {}, Changes{}},
		{"source only", func(c *Config) { c.Source = "other.yaml" }, Changes{}},
		{"shutdown delay", func(c *Config) { c.Shutdown.Delay = Duration(time.Second) }, Changes{}},
		{"nil vs empty lists", func(c *Config) { c.Static, c.App.Env, c.App.PythonPath = nil, nil, nil }, Changes{}},
		{"static", func(c *Config) { c.Static = []Static{{URL: "/s/", Dir: "/d"}} }, Changes{Proxy: true}},
		{"static cache", func(c *Config) { c.Static = []Static{{URL: "/s/", Dir: "/d", Cache: Duration(time.Hour)}} }, Changes{Proxy: true}},
		{"nil vs empty edge lists", func(c *Config) { c.TLS.Certificates, c.Cache.Routes = nil, nil }, Changes{}},
		{"tls", func(c *Config) { c.TLS.Certificates = []Certificate{{Cert: "/c", Key: "/k"}} }, Changes{Proxy: true}},
		{"hsts", func(c *Config) { c.TLS.HSTS = Duration(time.Hour) }, Changes{Proxy: true}},
		{"compression", func(c *Config) { c.Proxy.Compression.Enabled = false }, Changes{Proxy: true}},
		{"cache", func(c *Config) { c.Cache.Routes = []CacheRoute{{URL: "/", MaxTTL: 1}} }, Changes{Proxy: true}},
		{"max body", func(c *Config) { c.Proxy.MaxBodySize = 5 }, Changes{Proxy: true}},
		{"body buffer", func(c *Config) { c.Proxy.BodyBufferSize = 2 << 20 }, Changes{Proxy: true}},
		{"trusted", func(c *Config) { c.Proxy.TrustedProxies = []string{"10.0.0.0/8"} }, Changes{Proxy: true}},
		{"access log", func(c *Config) { c.Proxy.AccessLog = "json" }, Changes{Proxy: true}},
		{"queue", func(c *Config) { c.Proxy.Queue.Size = 1 }, Changes{Proxy: true}},
		{"timeout", func(c *Config) { c.Workers.Timeout = Duration(time.Second) }, Changes{Proxy: true}},
		{"graceful", func(c *Config) { c.Workers.GracefulTimeout = 0 }, Changes{Proxy: true}},
		{"max requests", func(c *Config) { c.Workers.MaxRequests = 10 }, Changes{Proxy: true}},
		{"jitter", func(c *Config) { c.Workers.MaxRequestsJitter = 10 }, Changes{Proxy: true}},
		{"max rss", func(c *Config) { c.Workers.MaxRSS = 10 }, Changes{Proxy: true}},
		{"module", func(c *Config) { c.App.Module = "a:b" }, Changes{Workers: true}},
		{"chdir", func(c *Config) { c.App.Chdir = "/srv" }, Changes{Workers: true}},
		{"python", func(c *Config) { c.App.Python = "/venv/bin/python" }, Changes{Workers: true}},
		{"pythonpath", func(c *Config) { c.App.PythonPath = []string{"/lib"} }, Changes{Workers: true}},
		{"env", func(c *Config) { c.App.Env = map[string]string{"A": "1"} }, Changes{Workers: true}},
		{"user", func(c *Config) { c.App.User = "www-data" }, Changes{Workers: true}},
		{"threads", func(c *Config) { c.Workers.Threads = 4 }, Changes{Workers: true}},
		{"preload", func(c *Config) { c.Workers.Preload = false }, Changes{Workers: true}},
		{"count", func(c *Config) { c.Workers.Count = 3 }, Changes{WorkerCount: true}},
		{"count and threads", func(c *Config) { c.Workers.Count, c.Workers.Threads = 3, 2 }, Changes{Workers: true, WorkerCount: true}},
		{"reload_on", func(c *Config) { c.App.ReloadOn = []string{"/app/touch"} }, Changes{ReloadOn: true}},
		{"nil vs empty companions", func(c *Config) { c.Programs, c.Cron, c.Tasks.BeforeStart = nil, nil, nil }, Changes{}},
		{"a program", func(c *Config) {
			c.Programs = []Program{{Companion: Companion{Name: "celery", Command: []string{"celery"}}, Restart: RestartAlways}}
		}, Changes{Companions: true}},
		{"a task", func(c *Config) {
			c.Tasks.BeforeStart = []Task{{Companion: Companion{Name: "migrate", Command: []string{"python3", "manage.py", "migrate"}}}}
		}, Changes{Companions: true}},
		{"a job", func(c *Config) {
			c.Cron = []Job{{Companion: Companion{Name: "j", Command: []string{"true"}}, Schedule: "@every 2s"}}
		}, Changes{Companions: true}},
		{"resources", func(c *Config) {
			c.Resources.Worker = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}}
		}, Changes{Resources: true}},
		{"listen", func(c *Config) { c.Listen = []string{":8081"} }, Changes{Listen: true}},
		{"admin", func(c *Config) { c.Admin.Listen = "off" }, Changes{Admin: true}},
		{"several", func(c *Config) { c.Listen, c.Proxy.AccessLog = []string{":1"}, "off" }, Changes{Proxy: true, Listen: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, new := Default(), Default()
			tc.change(new)
			if got := Diff(old, new); got != tc.want {
				t.Errorf("Diff = %+v, want %+v", got, tc.want)
			}
			if got := Diff(new, old); got != tc.want {
				t.Errorf("Diff reversed = %+v, want %+v", got, tc.want)
			}
		})
	}
	// Equal resource limits behind different pointers are no change.
	a, b := Default(), Default()
	a.Resources.Proxy = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(5)}}
	b.Resources.Proxy = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(5)}}
	if Diff(a, b).Any() {
		t.Errorf("equal resources reported as changed")
	}
}

func TestChangesString(t *testing.T) {
	if s := (Changes{}).String(); s != "nothing" {
		t.Errorf("zero Changes = %q", s)
	}
	if s := (Changes{Proxy: true, WorkerCount: true, ReloadOn: true}).String(); s != "proxy, worker count, reload_on" {
		t.Errorf("Changes.String = %q", s)
	}
	if (Changes{}).Any() || !(Changes{Admin: true}).Any() {
		t.Errorf("Any is wrong")
	}
}

func TestApplyEnvUserDefault(t *testing.T) {
	for _, c := range []struct{ cfgUser, env, want string }{
		{"", "berth", "berth"},  // image default applies to a mounted config without app.user
		{"www", "berth", "www"}, // the config wins
		{"", "", ""},            // nothing set: stay as started
	} {
		cfg := Default()
		cfg.App.User = c.cfgUser
		if err := cfg.ApplyEnv(func(k string) string {
			if k == "BERTH_USER" {
				return c.env
			}
			return ""
		}); err != nil {
			t.Fatal(err)
		}
		if cfg.App.User != c.want {
			t.Errorf("app.user %q, BERTH_USER %q: got %q, want %q", c.cfgUser, c.env, cfg.App.User, c.want)
		}
	}
}
