package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/{valid,invalid}/*.golden from the current output")

// checkGolden compares got with the golden file, or rewrites it with -update.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./config -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("output differs from %s (run with -update to accept)\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

func cases(t *testing.T, dir string, atLeast int) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < atLeast {
		t.Fatalf("found %d cases in testdata/%s, want at least %d", len(files), dir, atLeast)
	}
	return files
}

// TestGoldenValid renders every valid config with Effective and checks that
// the rendering parses back to the same Config.
func TestGoldenValid(t *testing.T) {
	for _, f := range cases(t, "valid", 8) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.Source != f {
				t.Errorf("Source = %q, want %q", c.Source, f)
			}
			out, err := c.Effective()
			if err != nil {
				t.Fatalf("Effective: %v", err)
			}
			checkGolden(t, strings.TrimSuffix(f, ".yaml")+".golden", out)

			back, err := Parse(f, out)
			if err != nil {
				t.Fatalf("Effective output does not parse: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(c, back) {
				t.Errorf("Effective output parses to a different config:\n got %+v\nwant %+v", back, c)
			}
		})
	}
}

// TestGoldenInvalid checks the exact error text of every invalid config,
// and that each of its lines has the FILE:LINE: form.
func TestGoldenInvalid(t *testing.T) {
	for _, f := range cases(t, "invalid", 15) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err == nil {
				t.Fatalf("Load succeeded, want an error; got config %+v", c)
			}
			if c != nil {
				t.Errorf("Load returned a config with its error")
			}
			located := regexp.MustCompile(`^` + regexp.QuoteMeta(f) + `:[1-9][0-9]*: \S`)
			for _, line := range strings.Split(err.Error(), "\n") {
				if !located.MatchString(line) {
					t.Errorf("error line lacks FILE:LINE: prefix: %q", line)
				}
			}
			checkGolden(t, strings.TrimSuffix(f, ".yaml")+".golden", []byte(err.Error()+"\n"))
		})
	}
}
