package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCheckRefusesWhatRunRefuses: for each config, berth check and berth
// run on this machine agree: both accept it, or check exits 1 and run exits 4
// (pre-flight) with the same reason. berth check used to say "configuration
// is valid" for every one of these that run refused.
func TestCheckRefusesWhatRunRefuses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("app.user applies only when berth runs as root")
	}
	bin := berthBinary(t)
	certs := t.TempDir()
	writeCert(t, filepath.Join(certs, "a"), "a.test")
	writeCert(t, filepath.Join(certs, "b"), "b.test")
	closed, err := os.MkdirTemp("", "closed") // 0700, root: nobody cannot enter it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(closed) })
	for _, tc := range []struct {
		name, config, reason string // reason "": both accept
	}{
		{"valid", "workers: {count: 1}\n", ""},
		{"static dir is a file", "static:\n  - {url: /favicon.ico/, dir: $APP/favicon.ico}\n",
			"static[0].dir $APP/favicon.ico is a file, not a directory: to serve one file at /favicon.ico/, write {url: /favicon.ico, file: $APP/favicon.ico}"},
		{"unknown user", "app: {chdir: $APP, python: $PY, user: no-such-user-berth}\n", "unknown user no-such-user-berth"},
		{"chdir the user cannot enter", "app: {chdir: " + closed + ", python: $PY, user: nobody}\n",
			"app.chdir " + closed + ": user nobody (uid 65534) cannot enter " + closed},
		{"program command missing", "programs:\n  - {name: q, command: [no-such-command-berth, x]}\n",
			`programs[0] (q) command: "no-such-command-berth" not found in PATH`},
		{"program user unknown", "programs:\n  - {name: q, command: [sleep, '9'], user: no-such-user-berth}\n",
			"programs[0] (q) user: app.user: user: unknown user no-such-user-berth"},
		{"mismatched certificate pair", "tls:\n  certificates: [{cert: " + certs + "/a/tls.crt, key: " + certs + "/b/tls.key}]\n",
			"tls.certificates[0]: " + certs + "/a/tls.crt and " + certs + "/b/tls.key are not a usable pair"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBerth(t, berthOpts{config: tc.config, noReady: true,
				app: map[string]string{"wsgi.py": okApp, "favicon.ico": "icon"}})
			reason := strings.ReplaceAll(tc.reason, "$APP", b.appDir)
			out, err := exec.Command(bin, "check", "--config", b.cfgPath).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if reason == "" {
				if code != 0 || !strings.Contains(string(out), "checks passed") {
					t.Fatalf("berth check: exit %d, want 0 with the host checks passed:\n%s", code, out)
				}
				b.waitReady(30 * time.Second)
				return
			}
			if code != 1 || !strings.Contains(string(out), reason) || !strings.Contains(string(out), "berth run would refuse it on this machine") {
				t.Fatalf("berth check: exit %d, want 1 with %q:\n%s", code, reason, out)
			}
			if got := b.wait(20 * time.Second); got != 4 {
				t.Fatalf("berth run: exit %d, want 4 (pre-flight):\n%s", got, b.logs.String())
			}
			if !strings.Contains(b.logs.String(), reason) {
				t.Fatalf("berth run's log lacks %q:\n%s", reason, b.logs.String())
			}
			// --file-only checks the file alone: valid.
			if out, err := exec.Command(bin, "check", "--file-only", "--config", b.cfgPath).CombinedOutput(); err != nil ||
				!strings.Contains(string(out), "were not checked") {
				t.Fatalf("berth check --file-only: %v\n%s", err, out)
			}
		})
	}
}

// TestCheckAsNonRootSaysWhatItSkipped: berth check run by a user who may
// not read the private key (0600, root) cannot check the pair: it says so
// and which, and passes the rest; as root the same config passes whole.
func TestCheckAsNonRootSaysWhatItSkipped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run berth check as another user")
	}
	bin := berthBinary(t)
	dir, err := os.MkdirTemp("", "check")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	writeCert(t, filepath.Join(dir, "c"), "a.test")
	os.Chmod(filepath.Join(dir, "c"), 0o755)
	cfg := filepath.Join(dir, "berth.yaml")
	os.WriteFile(cfg, []byte("listen: [\"https://127.0.0.1:0\"]\napp: {chdir: "+dir+", python: /usr/bin/python3, user: nobody}\n"+
		"tls:\n  certificates: [{cert: "+dir+"/c/tls.crt, key: "+dir+"/c/tls.key}]\n"), 0o644)
	bcopy := filepath.Join(dir, "berth")
	if data, err := os.ReadFile(bin); err != nil || os.WriteFile(bcopy, data, 0o755) != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bcopy, "check", "--config", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("berth check as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "skipped here: tls.certificates[0].key: open "+dir+"/c/tls.key: permission denied") ||
		!strings.Contains(string(out), "run it as root to check the certificate pairs") || !strings.Contains(string(out), "1 skipped") {
		t.Fatalf("berth check as nobody does not say it skipped the key:\n%s", out)
	}
	out, err = exec.Command(bin, "check", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "0 skipped") {
		t.Fatalf("berth check as root: %v\n%s", err, out)
	}
}
