package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportExitCodes: `berth import --check` is for scripts: exit 1 while
// anything is not translated, 0 when only settings berth does not need are
// left out, 2 for bad usage or an unreadable file.
func TestImportExitCodes(t *testing.T) {
	dir := t.TempDir()
	clean := filepath.Join(dir, "clean.ini")
	dirty := filepath.Join(dir, "dirty.ini")
	os.WriteFile(clean, []byte("[uwsgi]\nmaster = true\nmodule = mysite.wsgi\nprocesses = 2\n"), 0o644)
	os.WriteFile(dirty, []byte("[uwsgi]\nmodule = mysite.wsgi\nstatic-expires = /* 3600\n"), 0o644)
	tests := []struct {
		args       []string
		code       int
		stdout     string // a line the YAML must hold, "" for none
		stderrHint string
	}{
		{[]string{"import", clean}, 0, "module: mysite.wsgi:application", "1 not needed"},
		{[]string{"import", "--check", clean}, 0, "count: 2", "0 not translated"},
		{[]string{"import", dirty}, 0, "# NOT TRANSLATED (1)", "1 not translated"},
		{[]string{"import", "--check", dirty}, 1, "module: mysite.wsgi:application", "no equivalent in berth: berth's static cache is per static: entry"},
		{[]string{"import"}, 2, "", "usage: berth import"},
		{[]string{"import", filepath.Join(dir, "missing.ini")}, 2, "", "missing.ini"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, code, tc.code, stderr.String())
		}
		if tc.stdout != "" && !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%v: stdout lacks %q:\n%s", tc.args, tc.stdout, stdout.String())
		}
		if tc.stdout == "" && stdout.Len() > 0 {
			t.Errorf("%v: printed a config after an error:\n%s", tc.args, stdout.String())
		}
		if !strings.Contains(stderr.String(), tc.stderrHint) {
			t.Errorf("%v: stderr lacks %q:\n%s", tc.args, tc.stderrHint, stderr.String())
		}
	}
}
