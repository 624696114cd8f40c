package importer

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/berth-dev/berth/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*/berth.yaml.golden from the current output")

// needPython skips a test that evaluates gunicorn.conf.py where Debian's
// Python is missing (outside CI).
func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(DefaultPython); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed in CI: %v", DefaultPython, err)
		}
		t.Skipf("%s is missing: %v", DefaultPython, err)
	}
}

// sourceComment is the comment every translated setting carries.
var sourceComment = regexp.MustCompile(`  # (\S+):(\d+) \S|  # berth import --python:`)

// listedRE matches the first line of each setting listed as not translated.
var listedRE = regexp.MustCompile(`(?m)^#   \S`)

// TestGolden imports each testdata directory's files (named in its args
// file, in order) and compares the berth.yaml with berth.yaml.golden. The
// output must pass berth's own decoder and validator, and every line that
// sets a value must name its source.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/args")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 4 {
		t.Fatalf("found %d cases in testdata, want at least 4", len(dirs))
	}
	for _, argsFile := range dirs {
		dir := filepath.Dir(argsFile)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			data, err := os.ReadFile(argsFile)
			if err != nil {
				t.Fatal(err)
			}
			args := strings.Fields(string(data))
			for _, a := range args {
				if strings.HasSuffix(a, ".py") {
					needPython(t)
				}
			}
			golden, err := filepath.Abs(filepath.Join(dir, "berth.yaml.golden"))
			if err != nil {
				t.Fatal(err)
			}
			// Relative names, as a user in that directory would type them.
			t.Chdir(dir)
			// Paths the importer looks at on the machine are looked up
			// under the case's root/ (none: nothing exists).
			res, err := Import(args, Options{NginxPrefix: "/nonexistent", FSRoot: "root"})
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if *update {
				if err := os.WriteFile(golden, res.YAML, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./importer -update to create it)", err)
			}
			if string(res.YAML) != string(want) {
				t.Errorf("output differs from %s (run with -update to accept)\n--- got ---\n%s", golden, res.YAML)
			}

			cfg, err := config.Parse("berth.yaml", res.YAML)
			if err != nil {
				t.Fatalf("the output does not pass berth check: %v", err)
			}
			if cfg.Source != "berth.yaml" {
				t.Errorf("Source = %q", cfg.Source)
			}
			for i, l := range strings.Split(string(res.YAML), "\n") {
				text, _, _ := strings.Cut(l, "#")
				text = strings.TrimSpace(text)
				if text == "" || strings.HasSuffix(text, ":") {
					continue // a comment or a section header
				}
				if !sourceComment.MatchString(l) {
					t.Errorf("line %d sets a value without naming its source: %q", i+1, l)
				}
			}
			if got := len(listedRE.FindAll(res.YAML, -1)); got != len(res.Skipped) {
				t.Errorf("%d settings listed as not translated, Result.Skipped has %d", got, len(res.Skipped))
			}
		})
	}
}
