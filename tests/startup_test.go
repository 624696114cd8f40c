package tests

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Workers forked from the zygote are ready milliseconds after the app's
// import. A forked worker used to ask getppid() for its intermediate parent
// after that parent may already have exited; it then read the supervisor's
// pid and waited a full second for a reparenting that had already happened,
// so a start (and any replacement) took the import time plus a second.
func TestForkedWorkersAreReadyPromptly(t *testing.T) {
	berthBinary(t) // built before the clock starts
	start := time.Now()
	b := startBerth(t, berthOpts{
		config: "workers: {count: 4}\n",
		app:    map[string]string{"wsgi.py": "def application(e, sr):\n    sr('200 OK', [])\n    return [b'ok']\n"},
	})
	total := time.Since(start)
	m := regexp.MustCompile(`imported by the zygote \(pid \d+\) in ([0-9.]+)(ms|s)`).FindStringSubmatch(b.logs.String())
	if m == nil {
		t.Fatalf("no import line in the log:\n%s", b.logs.String())
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	imp := time.Duration(v * float64(time.Millisecond))
	if m[2] == "s" {
		imp = time.Duration(v * float64(time.Second))
	}
	t.Logf("ready %s after start; the import took %s", total.Round(time.Millisecond), imp)
	if rest := total - imp; rest > 700*time.Millisecond {
		t.Errorf("ready %s after start, %s of it not the import: forked workers are slow to report ready", total, rest)
	}
}
