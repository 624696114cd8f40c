package importer

// companions.go: the commands uWSGI ran beside the app, as berth's
// companions: attach-daemon → programs, cron → cron, hooks and exec-*
// options that ran before the app loaded → tasks.before_start.

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// companion is one translated task, program or periodic job.
type companion struct {
	name     string
	command  []string
	schedule string // cron only
	src      Source
	note     string
}

// companion lists, in the order berth's config reference has them.
const (
	listTasks    = "tasks.before_start"
	listPrograms = "programs"
	listCron     = "cron"
)

// addCompanion appends c to list under a name unique in that list.
func (b *builder) addCompanion(list string, c companion) {
	if b.companions == nil {
		b.companions = map[string][]companion{}
	}
	base, name := c.name, c.name
	for n := 2; ; n++ {
		taken := false
		for _, o := range b.companions[list] {
			taken = taken || o.name == name
		}
		if !taken {
			break
		}
		name = fmt.Sprintf("%s-%d", base, n)
	}
	c.name = name
	b.companions[list] = append(b.companions[list], c)
}

// shellMeta are the characters that make a command line need a shell.
const shellMeta = "|&;<>()$`\\\"'*?[]{}~#\n"

// argv splits a shell command line into berth's argv: words when it is
// plain words, else the line run by sh -c, as uWSGI ran it.
func argv(line string) []string {
	line = strings.TrimSpace(line)
	first, _, _ := strings.Cut(line, " ")
	if strings.ContainsAny(line, shellMeta) || strings.Contains(first, "=") { // FOO=bar cmd
		return []string{"sh", "-c", line}
	}
	return strings.Fields(line)
}

var nameJunk = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// commandName names a companion after what it runs: the manage.py
// command, the python -m module, celery's subcommand, else the program.
func commandName(cmd []string) string {
	if len(cmd) >= 3 && cmd[0] == "sh" && cmd[1] == "-c" {
		cmd = strings.Fields(cmd[2])
	}
	name := "command"
	words := cmd
	for len(words) > 0 {
		w := filepath.Base(words[0])
		rest := words[1:]
		switch {
		case strings.Contains(words[0], "=") && len(rest) > 0: // FOO=bar cmd
			words = rest
			continue
		case strings.HasPrefix(w, "python") && len(rest) >= 2 && rest[0] == "-m":
			words = rest[1:]
			continue
		case strings.HasPrefix(w, "python") && len(rest) >= 1 && !strings.HasPrefix(rest[0], "-"):
			words = rest
			continue
		case w == "manage.py" || w == "django-admin":
			if len(rest) > 0 {
				w = rest[0]
			}
		case w == "celery":
			for _, sub := range rest {
				if sub == "worker" || sub == "beat" || sub == "flower" {
					w = "celery-" + sub
					break
				}
			}
		}
		name = strings.TrimSuffix(w, ".py")
		break
	}
	name = strings.Trim(nameJunk.ReplaceAllString(name, "-"), "-.")
	if name == "" {
		name = "command"
	}
	if len(name) > 60 {
		name = name[:60]
	}
	return name
}

// daemonizes says whether a command detaches itself, which a supervised
// program must not do: berth would see it exit at once.
func daemonizes(cmd []string) bool {
	for _, f := range strings.Fields(strings.Join(cmd, " ")) {
		if f == "--detach" || f == "--daemon" || strings.HasPrefix(f, "--daemonize") {
			return true
		}
	}
	return false
}

// uwsgiDaemon translates attach-daemon, attach-daemon2, smart-attach-daemon
// and smart-attach-daemon2 into a program.
func uwsgiDaemon(b *builder, key, v, raw string, src Source) {
	cmdline, note := v, "kept running beside the workers, in app.chdir as app.user"
	switch key {
	case "smart-attach-daemon", "smart-attach-daemon2":
		// "PIDFILE COMMAND": uWSGI watched the pidfile of a command that
		// daemonized; berth supervises the process itself.
		_, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
		if !ok {
			b.skip(src, raw, NeedsDecision, "expected a pidfile and a command")
			return
		}
		cmdline, note = rest, "berth supervises the process itself: no pidfile needed"
	case "attach-daemon2":
		// key=value list; cmd= is the command.
		cmdline = ""
		for _, kv := range strings.Split(v, ",") {
			if c, ok := strings.CutPrefix(strings.TrimSpace(kv), "cmd="); ok {
				cmdline = c
			}
		}
		if cmdline == "" || strings.Contains(v, "pidfile=") || strings.Contains(v, "control") {
			b.skip(src, raw, NeedsDecision, "attach-daemon2's options (pidfile, control, freq, …) have no one-to-one equivalent; write a programs: entry by hand")
			return
		}
	}
	cmd := argv(cmdline)
	if len(cmd) == 0 {
		b.skip(src, raw, NeedsDecision, "no command")
		return
	}
	if daemonizes(cmd) {
		b.skip(src, raw, NeedsDecision, "the command detaches itself; berth supervises programs in the foreground: drop the detach/daemon option and add it to programs:")
		return
	}
	b.addCompanion(listPrograms, companion{name: commandName(cmd), command: cmd, src: src, note: note})
}

// uwsgiCron translates "cron = MIN HOUR DAY MONTH WEEKDAY COMMAND", where
// -1 means every and -N every N.
func uwsgiCron(b *builder, key, v, raw string, src Source) {
	f := strings.Fields(v)
	if key == "cron2" || len(f) < 6 {
		b.skip(src, raw, NeedsDecision, "expected MINUTE HOUR DAY MONTH WEEKDAY COMMAND; write a cron: entry by hand")
		return
	}
	fields := make([]string, 5)
	for i, s := range f[:5] {
		n, err := strconv.Atoi(s)
		switch {
		case err != nil:
			b.skip(src, raw, NeedsDecision, "%q is not a uWSGI cron number (-1 for every, -N for every N); write a cron: entry by hand", s)
			return
		case n == -1:
			fields[i] = "*"
		case n < -1:
			fields[i] = fmt.Sprintf("*/%d", -n)
		default:
			fields[i] = s
		}
	}
	// The command is the rest of the line as written.
	rest := strings.TrimSpace(v)
	for range 5 {
		rest = strings.TrimSpace(rest[len(strings.Fields(rest)[0]):])
	}
	cmd := argv(rest)
	note := "in the container's time zone; a run still going skips the next"
	if key == "unique-cron" {
		note = "berth's runs never overlap, as unique-cron's"
	}
	b.addCompanion(listCron, companion{name: commandName(cmd), command: cmd, schedule: strings.Join(fields, " "), src: src, note: note})
}

// uwsgiBeforeStart are the hook phases that run before the app is loaded,
// once per start of uWSGI: berth's before-start tasks.
var uwsgiBeforeStart = map[string]bool{"asap": true, "pre-app": true, "as-user": true, "post-jail": true}

// uwsgiHook translates hook-PHASE = ACTION:ARG, exec-PHASE = COMMAND and
// call-PHASE = FUNCTION.
func uwsgiHook(b *builder, kind, phase, v, raw string, src Source) {
	switch {
	case strings.Contains(phase, "post-app") || strings.Contains(phase, "accepting") || strings.Contains(phase, "atexit") || strings.Contains(phase, "reload"):
		b.skip(src, raw, NoEquivalent, "berth has no hook at this point of a worker's life")
		return
	case phase == "as-root" || phase == "pre-jail" || phase == "in-jail":
		b.skip(src, raw, NeedsDecision, "this ran as root before privileges were dropped; berth's tasks run as app.user unless a task sets user: root")
		return
	case !uwsgiBeforeStart[phase]:
		b.skip(src, raw, NeedsDecision, "berth import does not know the hook phase %q", phase)
		return
	case kind == "call":
		b.skip(src, raw, NoEquivalent, "berth calls no C functions; only commands (exec:) become tasks")
		return
	}
	cmdline := v
	if kind == "hook" {
		action, arg, _ := strings.Cut(v, ":")
		if action != "exec" && action != "safeexec" {
			b.skip(src, raw, NoEquivalent, "berth runs commands before the app starts (hook …= exec:COMMAND), not the %s: action", action)
			return
		}
		cmdline = arg
	}
	cmd := argv(cmdline)
	if len(cmd) == 0 {
		b.skip(src, raw, NeedsDecision, "no command")
		return
	}
	b.addCompanion(listTasks, companion{name: commandName(cmd), command: cmd, src: src,
		note: "run once before the first worker; a failure stops the boot (uWSGI also ran it on reloads: add it to tasks.before_roll for that)"})
}
