package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// located is one line of an error from Parse("f.yaml", …).
var located = regexp.MustCompile(`^f\.yaml:([1-9][0-9]*): \S`)

// FuzzConfig: for any bytes, Parse does not panic; each line of its error
// names the file and a line of it (FILE:LINE: …, the form of `berth check`
// and nginx -t); and a config it accepts renders with Effective into YAML
// that parses back to the same Config and renders the same again.
func FuzzConfig(f *testing.F) {
	for _, dir := range []string{"valid", "invalid"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err != nil {
			if c != nil {
				t.Errorf("Parse returned a config with its error")
			}
			lines := yamlLines(data)
			for _, line := range strings.Split(err.Error(), "\n") {
				m := located.FindStringSubmatch(line)
				if m == nil {
					t.Fatalf("error line without FILE:LINE: %q\nfrom %q", line, data)
				}
				if n, _ := strconv.Atoi(m[1]); n > lines {
					t.Fatalf("error line %q points past the input's %d lines\nfrom %q", line, lines, data)
				}
			}
			return
		}
		out, err := c.Effective()
		if err != nil {
			t.Fatalf("Effective: %v", err)
		}
		back, err := Parse("f.yaml", out)
		if err != nil {
			t.Fatalf("Effective output does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, back) {
			t.Fatalf("round trip differs:\n%+v\n%+v", c, back)
		}
		if Diff(c, back).Any() {
			t.Fatalf("Diff sees a change in the round trip: %v", Diff(c, back))
		}
		again, err := back.Effective()
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("Effective is not stable (%v):\n%s\n---\n%s", err, out, again)
		}
	})
}

// yamlLines counts lines as YAML does (a break is CRLF, LF, CR, NEL, LS or
// PS), plus one: an error may point at the end of the input, after the
// last break.
func yamlLines(data []byte) int {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	n := 1
	for _, r := range s {
		switch r {
		case '\n', '\r', '\u0085', '\u2028', '\u2029':
			n++
		}
	}
	return n
}
