package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// callableNames are the WSGI callable names Discover accepts, in order of preference.
var callableNames = []string{"application", "app"}

// Discover finds the WSGI app in dir (the app's chdir, /app in the image) and returns its
// module spec for BERTH_APP, such as "mysite.wsgi:application". In order:
//
//  1. a Django project: <pkg>/wsgi.py one level down → "<pkg>.wsgi:application";
//  2. wsgi.py, then app.py at the top → "wsgi:application", "app:app", …
//
// A file counts when it binds `application` or `app` at module level (assignment, def, class
// or from-import), found by line scanning, never by importing it. `application` wins over
// `app` in the same file. It returns ("", nil) when dir is missing or has no visible entries:
// the caller then serves the demo app. It returns an error when dir has files but no app, or
// several Django projects (the user must set app.module).
func Discover(dir string) (module string, err error) { return DiscoverInterface(dir, "auto") }

// DiscoverInterface is Discover for an app.interface: "wsgi" looks at
// wsgi.py files only, "asgi" at asgi.py ones (a Django project's
// <pkg>/asgi.py, then asgi.py, main.py or app.py at the top, FastAPI's
// habit being main.py), "auto" at both: a Django project's wsgi.py, else
// its asgi.py (a project with asgi.py and no wsgi.py is served as ASGI),
// then wsgi.py, app.py and asgi.py at the top.
func DiscoverInterface(dir, iface string) (module string, err error) {
	projectFiles, topFiles := []string{"wsgi"}, []string{"wsgi.py", "app.py"}
	switch iface {
	case "asgi":
		projectFiles, topFiles = []string{"asgi"}, []string{"asgi.py", "main.py", "app.py"}
	case "auto", "":
		projectFiles, topFiles = []string{"wsgi", "asgi"}, []string{"wsgi.py", "app.py", "asgi.py"}
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look for the WSGI app in %s: %w (set app.module and app.chdir, or fix the mount)", dir, err)
	}
	visible := 0
	var notes []string
	var django []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || name == "__pycache__" {
			continue
		}
		visible++
		if !isDir(dir, e) {
			continue
		}
		base, path := "", ""
		for _, b := range projectFiles {
			if p := filepath.Join(dir, name, b+".py"); isRegular(p) {
				base, path = b, p
				break
			}
		}
		if path == "" {
			continue
		}
		rel := name + "/" + base + ".py"
		if !identifierRe.MatchString(name) {
			notes = append(notes, fmt.Sprintf("%s, but %q is not an importable package name", rel, name))
			continue
		}
		callable, err := findCallable(path)
		if err != nil {
			return "", err
		}
		if callable == "" {
			notes = append(notes, rel+", but it binds neither application nor app")
			continue
		}
		django = append(django, name+"."+base+":"+callable)
	}
	if visible == 0 {
		return "", nil
	}
	switch len(django) {
	case 0:
	case 1:
		return django[0], nil
	default:
		sort.Strings(django)
		return "", fmt.Errorf("several WSGI apps found in %s: %s; set app.module in the config to the one to serve",
			dir, strings.Join(django, ", "))
	}
	for _, file := range topFiles {
		path := filepath.Join(dir, file)
		if !isRegular(path) {
			continue
		}
		callable, err := findCallable(path)
		if err != nil {
			return "", err
		}
		if callable != "" {
			return strings.TrimSuffix(file, ".py") + ":" + callable, nil
		}
		notes = append(notes, file+", but it binds neither application nor app at module level")
	}
	found := ""
	if len(notes) > 0 {
		found = " (found " + strings.Join(notes, "; ") + ")"
	}
	if iface == "wsgi" || iface == "auto" || iface == "" {
		if iface == "auto" || iface == "" {
			return "", fmt.Errorf("no WSGI app found in %s: looked for <package>/wsgi.py (Django), then wsgi.py or app.py "+
				"binding application or app, and for ASGI <package>/asgi.py, asgi.py%s; set app.module in the config, e.g. module: \"mysite.wsgi:application\"", dir, found)
		}
		return "", fmt.Errorf("no WSGI app found in %s: looked for <package>/wsgi.py (Django), then wsgi.py or app.py "+
			"binding application or app%s; set app.module in the config, e.g. module: \"mysite.wsgi:application\"", dir, found)
	}
	return "", fmt.Errorf("no ASGI app found in %s: looked for <package>/asgi.py (Django), then asgi.py, main.py or app.py "+
		"binding application or app%s; set app.module in the config, e.g. module: \"main:app\"", dir, found)
}

func isDir(dir string, e fs.DirEntry) bool {
	if e.IsDir() {
		return true
	}
	if e.Type()&fs.ModeSymlink == 0 {
		return false
	}
	fi, err := os.Stat(filepath.Join(dir, e.Name()))
	return err == nil && fi.IsDir()
}

func isRegular(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

var (
	identifierRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// name = …, name: Type = …   (one target; chained targets are matched one by one)
	assignRe = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=\s*`)
	defRe    = regexp.MustCompile(`^(?:async\s+def|def|class)\s+([A-Za-z_][A-Za-z0-9_]*)`)
	fromRe   = regexp.MustCompile(`^from\s+[A-Za-z0-9_.]+\s+import\s+(.*)$`)
)

// findCallable returns the preferred callable name bound at module level in a Python file,
// or "" when it binds none.
func findCallable(path string) (string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("look for the WSGI app: %w", err)
	}
	bound := moduleNames(src)
	for _, name := range callableNames {
		if bound[name] {
			return name, nil
		}
	}
	return "", nil
}

// moduleNames scans Python source for names bound at module level by unindented
// assignments, defs, classes and from-imports (also parenthesised multi-line ones). It skips
// comments and the insides of triple-quoted strings; it is a heuristic, not a parser.
func moduleNames(src []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	inString := "" // the open triple quote, if any
	importing := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		wasInString := inString != ""
		inString = tripleQuoteState(line, inString)
		if wasInString {
			continue
		}
		if importing {
			body, _, closed := strings.Cut(strings.TrimSpace(stripComment(line)), ")")
			addImported(names, body)
			importing = !closed
			continue
		}
		if line == "" || line[0] == ' ' || line[0] == '\t' || line[0] == '#' {
			continue
		}
		line = stripComment(line)
		if m := fromRe.FindStringSubmatch(line); m != nil {
			list := strings.TrimSpace(m[1])
			if rest, ok := strings.CutPrefix(list, "("); ok {
				body, _, closed := strings.Cut(rest, ")")
				addImported(names, body)
				importing = !closed
			} else {
				addImported(names, strings.TrimSuffix(list, "\\"))
			}
			continue
		}
		if m := defRe.FindStringSubmatch(line); m != nil {
			names[m[1]] = true
			continue
		}
		rest := line
		for {
			m := assignRe.FindStringSubmatch(rest)
			if m == nil {
				break
			}
			after := rest[len(m[0]):]
			if strings.HasPrefix(after, "=") {
				break // a comparison (==), not an assignment
			}
			names[m[1]] = true
			rest = after
		}
	}
	return names
}

// addImported records the names bound by "a, b as c" of a from-import.
func addImported(names map[string]bool, list string) {
	for _, item := range strings.Split(list, ",") {
		f := strings.Fields(item)
		switch {
		case len(f) == 1 && identifierRe.MatchString(f[0]):
			names[f[0]] = true
		case len(f) == 3 && f[1] == "as" && identifierRe.MatchString(f[2]):
			names[f[2]] = true
		}
	}
}

// stripComment drops a trailing # comment that is not inside a quoted string.
func stripComment(line string) string {
	quote := byte(0)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			return strings.TrimRight(line[:i], " \t")
		}
	}
	return line
}

// tripleQuoteState returns which triple quote is open after line, given the one open before.
func tripleQuoteState(line, open string) string {
	for {
		if open != "" {
			i := strings.Index(line, open)
			if i < 0 {
				return open
			}
			line = line[i+3:]
			open = ""
			continue
		}
		d, s := strings.Index(line, `"""`), strings.Index(line, `'''`)
		switch {
		case d < 0 && s < 0:
			return ""
		case s < 0 || (d >= 0 && d < s):
			open, line = `"""`, line[d+3:]
		default:
			open, line = `'''`, line[s+3:]
		}
	}
}
