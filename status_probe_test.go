package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeAdmin serves /livez and /readyz like berth's admin endpoint, with the
// answers a test sets: 200, or 503 and a reason line.
type fakeAdmin struct {
	live, ready atomic.Value // string: "" = 200, else the 503 reason
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var why any
	switch r.URL.Path {
	case "/livez":
		why = f.live.Load()
	case "/readyz":
		why = f.ready.Load()
	default:
		http.NotFound(w, r)
		return
	}
	if s, _ := why.(string); s != "" {
		http.Error(w, s, http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}

// serveFakeAdmin serves f on ln until the test ends.
func serveFakeAdmin(t *testing.T, f *fakeAdmin, ln net.Listener) {
	t.Helper()
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestStatusProbes: `berth status --live` and `--quiet` are the exec probes
// of the Kubernetes manifest (liveness and readiness) and the image's
// HEALTHCHECK. Exit 0 only on a 200; --live says why on stderr otherwise
// (the kubelet shows a probe's output in the pod's events), --quiet never
// prints.
func TestStatusProbes(t *testing.T) {
	f := &fakeAdmin{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveFakeAdmin(t, f, ln)
	tcp := ln.Addr().String()
	_, port, _ := net.SplitHostPort(tcp)

	sockDir, err := os.MkdirTemp("", "b") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	uln, err := net.Listen("unix", filepath.Join(sockDir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	serveFakeAdmin(t, f, uln)

	// An address nothing listens on: a listener closed at once.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	// A config that does not load (what a broken ConfigMap update leaves
	// in the volume while berth serves on with the old one), and one that
	// names the fake endpoint.
	cfgDir := t.TempDir()
	broken := filepath.Join(cfgDir, "broken.yaml")
	if err := os.WriteFile(broken, []byte("proxy:\n  max_body_size: lots\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(cfgDir, "good.yaml")
	if err := os.WriteFile(good, []byte("admin:\n  listen: \":"+port+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name        string
		live, ready string // the fake's answers: "" = 200, else the 503 reason
		args        []string
		code        int
		stderr      string // a substring stderr must hold; "" = stderr empty
	}{
		{"live", "", "", []string{"--live", "--admin", tcp}, 0, ""},
		{"live, not ready (draining)", "", "shutting down", []string{"--live", "--admin", tcp}, 0, ""},
		{"ready", "", "", []string{"--quiet", "--admin", tcp}, 0, ""},
		{"not ready is quiet", "", "shutting down", []string{"--quiet", "--admin", tcp}, 1, ""},
		{"loop wedged", "supervisor loop not answering", "", []string{"--live", "--admin", tcp}, 1, "/livez on " + tcp + ": 503 supervisor loop not answering"},
		{"loop wedged, --quiet too", "supervisor loop not answering", "", []string{"--live", "--quiet", "--admin", tcp}, 1, ""},
		{"nothing listening", "", "", []string{"--live", "--admin", deadAddr}, 1, "admin endpoint " + deadAddr},
		{"nothing listening, --quiet", "", "", []string{"--quiet", "--admin", deadAddr}, 1, ""},
		{"unix socket", "", "", []string{"--live", "--admin", "unix:" + filepath.Join(sockDir, "admin.sock")}, 0, ""},
		{"port only, from the config", "", "", []string{"--live", "--config", good}, 0, ""},
		// --admin skips the config: the probe keeps passing while a broken
		// ConfigMap sits in the volume (berth refused it and serves on).
		{"broken config, --admin given", "", "", []string{"--live", "--config", broken, "--admin", tcp}, 0, ""},
		{"broken config, no --admin", "", "", []string{"--live", "--config", broken}, 1, "broken.yaml"},
		{"--live with --json", "", "", []string{"--live", "--json", "--admin", tcp}, 2, "do not go together"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.live.Store(c.live)
			f.ready.Store(c.ready)
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"status"}, c.args...), &stdout, &stderr)
			if code != c.code {
				t.Errorf("berth status %s: exit %d, want %d; stderr %q", strings.Join(c.args, " "), code, c.code, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
			switch {
			case c.stderr == "" && stderr.Len() != 0:
				t.Errorf("stderr %q, want nothing", stderr.String())
			case c.stderr != "" && !strings.Contains(stderr.String(), c.stderr):
				t.Errorf("stderr %q, want it to hold %q", stderr.String(), c.stderr)
			}
		})
	}
}
