// Package testtool holds what the access packages' tests share.
package testtool

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Require skips the test, or fails it in CI (where tests/install-deps has
// installed everything), unless every one exists: a command on PATH, or a
// file given by its path. It is tests/'s requireFiles, which a package
// outside tests/ cannot import.
func Require(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var err error
		if strings.Contains(p, "/") {
			_, err = os.Stat(p)
		} else {
			_, err = exec.LookPath(p)
		}
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI: %v", p, err)
			}
			t.Skipf("%s not installed: %v", p, err)
		}
	}
}
