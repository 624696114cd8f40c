package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/robfig/cron/v3"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

// The companions of the workers: commands berth runs beside them as PID 1,
// in place of an entrypoint script and a process manager. Each runs with the
// app's user, environment, working directory and Python unless it says
// otherwise.

// Tasks are commands run to completion, in order.
type Tasks struct {
	// BeforeStart run once at boot, before the first worker starts; a
	// failure stops the boot (exit 5).
	BeforeStart []Task `yaml:"before_start" json:"before_start"`
	// BeforeRoll run before each reload that starts a new worker
	// generation (a code or app change); a failure refuses the reload.
	BeforeRoll []Task `yaml:"before_roll" json:"before_roll"`
}

// Companion is what every companion has: a name and how to run it.
type Companion struct {
	// Name labels its log lines, its cgroup and its /status entry: letters,
	// digits, '.', '_', '-'; unique within its list.
	Name string `yaml:"name" json:"name"`
	// Command is the argv, run without a shell; a first word "python" or
	// "python3" is app.python, and app.python's directory leads PATH.
	Command []string `yaml:"command" json:"command"`
	// Env is laid over app.env.
	Env map[string]string `yaml:"env" json:"env"`
	// User: "" = app.user. Chdir: "" = app.chdir.
	User  string `yaml:"user" json:"user"`
	Chdir string `yaml:"chdir" json:"chdir"`
	// Resources are OCI runtime-spec LinuxResources for its own cgroup;
	// nil = no limit.
	Resources *specs.LinuxResources `yaml:"resources" json:"resources,omitempty"`
}

// Task is one command run to completion.
type Task struct {
	Companion `yaml:",inline"`
	// Timeout stops a run that takes longer (SIGTERM, SIGKILL 10s later)
	// and counts it failed; 0 = no limit.
	Timeout Duration `yaml:"timeout" json:"timeout"`
}

// Program is a companion process kept running beside the workers (a Celery
// or RQ worker, Celery beat).
type Program struct {
	Companion `yaml:",inline"`
	// Restart is always, on-failure (exit code not 0, or a signal) or never.
	Restart string `yaml:"restart" json:"restart"`
	// Required: berth stops (exit 6) when the program cannot be kept
	// running; false = it is restarted with backoff for ever.
	Required bool `yaml:"required" json:"required"`
	// StopSignal is sent first when it is stopped (SIGTERM, SIGINT,
	// SIGQUIT, …); SIGKILL follows StopTimeout later.
	StopSignal  string   `yaml:"stop_signal" json:"stop_signal"`
	StopTimeout Duration `yaml:"stop_timeout" json:"stop_timeout"`
}

// Job is a periodic command (cron).
type Job struct {
	Companion `yaml:",inline"`
	// Schedule is a 5-field cron expression ("0 3 * * *", in the
	// container's local time, UTC unless TZ is set), a descriptor such as
	// "@hourly", or an interval "@every 30s".
	Schedule string `yaml:"schedule" json:"schedule"`
	// Timeout stops a run that takes longer; 0 = no limit.
	Timeout Duration `yaml:"timeout" json:"timeout"`
	// RandomDelay delays each run by a random 0..RandomDelay, so replicas
	// do not all start it at the same second; 0 = none.
	RandomDelay Duration `yaml:"random_delay" json:"random_delay"`
}

// Restart policies of a Program.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Defaults of the companions' optional keys.
const (
	DefaultTaskTimeout = Duration(5 * time.Minute)
	DefaultStopTimeout = Duration(10 * time.Second)
	DefaultStopSignal  = "SIGTERM"
)

// ParseSchedule reads a cron schedule the way berth runs it: robfig/cron's
// standard parser (5 fields, descriptors, "@every D"). It never panics,
// whatever s holds.
func ParseSchedule(s string) (sched cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			// robfig/cron slices out of range on "TZ=Zone" with nothing after it.
			sched, err = nil, fmt.Errorf("a TZ= or CRON_TZ= prefix needs a space and the schedule after it")
		}
	}()
	return cron.ParseStandard(s)
}

// SignalNumber is the number of a signal name as stop_signal takes it:
// "SIGTERM" or "TERM", any case; 0 when it is not a signal.
func SignalNumber(name string) unix.Signal {
	n := strings.ToUpper(name)
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	return unix.SignalNum(n)
}

var companionName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// command decodes the keys every companion has, plus more for its kind.
func (d *decoder) companion(c *Companion, more ...field) []field {
	return append([]field{
		{"name", d.str(&c.Name)},
		{"command", d.strs(&c.Command)},
		{"env", d.env(&c.Env)},
		{"user", d.str(&c.User)},
		{"chdir", d.str(&c.Chdir)},
		{"resources", d.resources(&c.Resources)},
	}, more...)
}

// list decodes a list of entries, each usually a mapping; item decodes
// entry i at path p. example is one entry, for the message when n is not
// a list.
func (d *decoder) list(path string, n *yaml.Node, example string, item func(i int, p string, n *yaml.Node)) {
	d.listOf(path, n, "a list of entries such as "+example, item)
}

// listOf is list with the whole description of the expected list ("a list
// of {url: /static/, dir: /app/static} entries") for the message. It
// reports whether n was a list.
func (d *decoder) listOf(path string, n *yaml.Node, want string, item func(i int, p string, n *yaml.Node)) bool {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, path, "expected %s, got %s", want, describe(n))
		return false
	}
	for i, it := range n.Content {
		it = resolve(it)
		p := index(path, i)
		d.lines[p] = it.Line
		item(i, p, it)
	}
	return true
}

func (d *decoder) tasks(dst *[]Task) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Task{}
		d.list(path, n, "{name: migrate, command: [python3, manage.py, migrate, --noinput]}", func(i int, p string, it *yaml.Node) {
			t := Task{Timeout: DefaultTaskTimeout}
			d.section(p, it, d.companion(&t.Companion, field{"timeout", d.duration(&t.Timeout)}))
			t.normalize()
			out = append(out, t)
		})
		*dst = out
	}
}

func (d *decoder) programs(dst *[]Program) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Program{}
		d.list(path, n, "{name: celery, command: [python3, -m, celery, -A, mysite, worker]}", func(i int, p string, it *yaml.Node) {
			pr := Program{Restart: RestartAlways, StopSignal: DefaultStopSignal, StopTimeout: DefaultStopTimeout}
			d.section(p, it, d.companion(&pr.Companion,
				field{"restart", d.str(&pr.Restart)},
				field{"required", d.boolean(&pr.Required)},
				field{"stop_signal", d.str(&pr.StopSignal)},
				field{"stop_timeout", d.duration(&pr.StopTimeout)},
			))
			pr.normalize()
			if s := SignalNumber(pr.StopSignal); s != 0 {
				pr.StopSignal = unix.SignalName(s)
			}
			out = append(out, pr)
		})
		*dst = out
	}
}

func (d *decoder) jobs(dst *[]Job) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		out := []Job{}
		d.list(path, n, `{name: clearsessions, schedule: "0 3 * * *", command: [python3, manage.py, clearsessions]}`, func(i int, p string, it *yaml.Node) {
			j := Job{}
			d.section(p, it, d.companion(&j.Companion,
				field{"schedule", d.str(&j.Schedule)},
				field{"timeout", d.duration(&j.Timeout)},
				field{"random_delay", d.duration(&j.RandomDelay)},
			))
			j.normalize()
			out = append(out, j)
		})
		*dst = out
	}
}

// normalize makes an entry without env or command equal to its rendering
// ({} and []), so Effective's output parses back to the same Config.
func (c *Companion) normalize() {
	if c.Env == nil {
		c.Env = map[string]string{}
	}
	if c.Command == nil {
		c.Command = []string{}
	}
}

// validateCompanions checks tasks, programs and cron; bad reports one problem
// at a key path.
func (c *Config) validateCompanions(bad func(path, format string, args ...any)) {
	names := func(path string, n int, get func(i int) *Companion) {
		seen := map[string]int{}
		for i := range n {
			cmd, p := get(i), index(path, i)
			cmd.validate(p, bad)
			if first, dup := seen[cmd.Name]; dup && cmd.Name != "" {
				bad(join(p, "name"), "%q is already the name of %s; names must be unique", cmd.Name, index(path, first))
			} else {
				seen[cmd.Name] = i
			}
		}
	}
	for _, l := range []struct {
		path string
		list []Task
	}{{"tasks.before_start", c.Tasks.BeforeStart}, {"tasks.before_roll", c.Tasks.BeforeRoll}} {
		names(l.path, len(l.list), func(i int) *Companion { return &l.list[i].Companion })
		for i, t := range l.list {
			if t.Timeout < 0 {
				bad(join(index(l.path, i), "timeout"), "must not be negative (0 = no limit), got %s", t.Timeout)
			}
		}
	}
	names("programs", len(c.Programs), func(i int) *Companion { return &c.Programs[i].Companion })
	for i, pr := range c.Programs {
		p := index("programs", i)
		switch pr.Restart {
		case RestartAlways, RestartOnFailure, RestartNever:
		default:
			bad(join(p, "restart"), "must be one of always, on-failure, never; got %s", quoteShort(pr.Restart))
		}
		if SignalNumber(pr.StopSignal) == 0 {
			bad(join(p, "stop_signal"), "%s is not a signal name; use e.g. SIGTERM, SIGINT or SIGQUIT", quoteShort(pr.StopSignal))
		}
		if pr.StopTimeout < 0 {
			bad(join(p, "stop_timeout"), "must not be negative, got %s", pr.StopTimeout)
		}
	}
	names("cron", len(c.Cron), func(i int) *Companion { return &c.Cron[i].Companion })
	for i, j := range c.Cron {
		p := index("cron", i)
		if j.Schedule == "" {
			bad(join(p, "schedule"), `missing; give a cron expression such as "0 3 * * *", a descriptor such as "@hourly", or an interval such as "@every 30s"`)
		} else if _, err := ParseSchedule(j.Schedule); err != nil {
			bad(join(p, "schedule"), `%s is not a schedule (%v); use 5 fields "minute hour day-of-month month day-of-week" such as "0 3 * * *", "@hourly", or "@every 30s"`, quoteShort(j.Schedule), err)
		}
		if j.Timeout < 0 {
			bad(join(p, "timeout"), "must not be negative (0 = no limit), got %s", j.Timeout)
		}
		if j.RandomDelay < 0 {
			bad(join(p, "random_delay"), "must not be negative, got %s", j.RandomDelay)
		}
	}
}

func (c *Companion) validate(p string, bad func(path, format string, args ...any)) {
	switch {
	case c.Name == "":
		bad(join(p, "name"), "missing; every entry needs a name such as migrate or celery")
	case !companionName.MatchString(c.Name):
		bad(join(p, "name"), "%s: use up to 63 letters, digits, '.', '_' and '-', starting with a letter or digit", quoteShort(c.Name))
	}
	if len(c.Command) == 0 {
		bad(join(p, "command"), "missing; give the program and its arguments as a list, e.g. [python3, manage.py, migrate, --noinput] (no shell is involved)")
	}
	for i, a := range c.Command {
		if strings.ContainsRune(a, 0) || (i == 0 && a == "") {
			bad(index(join(p, "command"), i), "must not be empty or contain a NUL byte")
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			bad(join(join(p, "env"), k), "%s is not a valid environment variable name; use letters, digits and _", quoteShort(k))
		}
		if strings.ContainsRune(c.Env[k], 0) {
			bad(join(join(p, "env"), k), "the value must not contain a NUL byte")
		}
	}
	if c.Chdir != "" && !strings.HasPrefix(c.Chdir, "/") {
		bad(join(p, "chdir"), "%s must be an absolute path (or left out for app.chdir)", quoteShort(c.Chdir))
	}
}

// companionNodes renders tasks, programs and cron for Effective.
func (c *Config) companionNodes() (tasks, programs, jobs *yaml.Node, err error) {
	common := func(cmd Companion) ([]any, error) {
		res, err := resourceNode(cmd.Resources)
		if err != nil {
			return nil, err
		}
		env := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle}
		for _, k := range slices.Sorted(maps.Keys(cmd.Env)) {
			env.Content = append(env.Content, strNode(k), strNode(cmd.Env[k]))
		}
		return []any{"name", strNode(cmd.Name), "command", strList(cmd.Command), "env", env,
			"user", strNode(cmd.User), "chdir", strNode(cmd.Chdir), "resources", res}, nil
	}
	seq := func() *yaml.Node { return &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"} }
	taskList := func(ts []Task) (*yaml.Node, error) {
		n := seq()
		for _, t := range ts {
			kv, err := common(t.Companion)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, mapNode(append(kv, "timeout", strNode(t.Timeout.String()))...))
		}
		emptyFlow(n)
		return n, nil
	}
	before, err := taskList(c.Tasks.BeforeStart)
	if err != nil {
		return nil, nil, nil, err
	}
	roll, err := taskList(c.Tasks.BeforeRoll)
	if err != nil {
		return nil, nil, nil, err
	}
	tasks = mapNode("before_start", before, "before_roll", roll)
	programs = seq()
	for _, p := range c.Programs {
		kv, err := common(p.Companion)
		if err != nil {
			return nil, nil, nil, err
		}
		programs.Content = append(programs.Content, mapNode(append(kv,
			"restart", strNode(p.Restart),
			"required", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(p.Required)},
			"stop_signal", strNode(p.StopSignal),
			"stop_timeout", strNode(p.StopTimeout.String()))...))
	}
	emptyFlow(programs)
	jobs = seq()
	for _, j := range c.Cron {
		kv, err := common(j.Companion)
		if err != nil {
			return nil, nil, nil, err
		}
		sched := strNode(j.Schedule)
		sched.Style = yaml.DoubleQuotedStyle
		jobs.Content = append(jobs.Content, mapNode(append(kv,
			"schedule", sched,
			"timeout", strNode(j.Timeout.String()),
			"random_delay", strNode(j.RandomDelay.String()))...))
	}
	emptyFlow(jobs)
	return tasks, programs, jobs, nil
}
