package tests

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestDjangoReloadEverySecond changes the config every second under load,
// each change rolling all workers (app.env), and compares throughput with a
// steady phase of the same length in the same run. Guarantee asserted:
// zero failed requests; the throughput share is reported.
func TestDjangoReloadEverySecond(t *testing.T) {
	site := djangoSite(t)
	b := startBerth(t, berthOpts{config: djangoConfig(site, "workers: {count: 4}\nproxy: {access_log: off}\n")})
	base, _ := os.ReadFile(b.cfgPath)
	check := func(code int, body string) bool { return code == 200 && body == "Hello from Django\n" }
	const phase = 6 * time.Second

	stop := runLoad(16, b.url("/hello"), check)
	time.Sleep(phase) // a measured phase, not a wait for readiness
	steady := stop()

	stop = runLoad(16, b.url("/hello"), check)
	deadline := time.Now().Add(phase)
	n := 0
	for time.Now().Before(deadline) {
		n++
		cfg := strings.Replace(string(base), "env: {DJANGO_SETTINGS_MODULE: mysite.settings}",
			fmt.Sprintf("env: {DJANGO_SETTINGS_MODULE: mysite.settings, RELOAD_N: \"%d\"}", n), 1)
		writeFileAtomic(t, b.cfgPath, cfg)
		time.Sleep(time.Second)
	}
	reloading := stop()
	// Every change is applied: the last one (changes during a roll are
	// coalesced into the next) serves on all workers once the edits stop.
	waitFor(t, 30*time.Second, "the last change serving on every worker", func() bool {
		st := b.statusDoc()
		if st.LastReload == nil || !st.LastReload.OK || len(st.Workers) != 4 {
			return false
		}
		for _, w := range st.Workers {
			if w.State != "ready" || w.Gen != st.Workers[0].Gen {
				return false
			}
		}
		return strings.Contains(b.logs.String(), fmt.Sprintf("generation %d serving on all", st.Workers[0].Gen))
	})
	st := b.statusDoc()
	share := float64(reloading.ok) / float64(steady.ok)
	t.Logf("Django, 4 workers, 16 clients, %s per phase: steady %d ok (%.0f rps); config change every second (%d changes, generation %d): %d ok, %d failed → %.0f%% of steady throughput",
		phase, steady.ok, float64(steady.ok)/phase.Seconds(), n, st.Generation, reloading.ok, reloading.failed, 100*share)
	if steady.failed != 0 || reloading.failed != 0 {
		t.Fatalf("failed requests: steady %s; reloading %s", steady, reloading)
	}
	rolls := strings.Count(b.logs.String(), "serving on all 4 workers")
	t.Logf("worker generations that served on all workers: %d (changes during a roll coalesce)", rolls)
	if rolls < 2 {
		t.Fatalf("workers rolled %d times during %d changes", rolls, n)
	}
}

// TestDjangoRecycleReplacementTime measures, from berth's own log, the time
// from a worker being due (max_requests) to its replacement being ready,
// with and without preload.
func TestDjangoRecycleReplacementTime(t *testing.T) {
	site := djangoSite(t)
	for _, preload := range []bool{true, false} {
		t.Run(fmt.Sprintf("preload=%v", preload), func(t *testing.T) {
			b := startBerth(t, berthOpts{config: djangoConfig(site,
				fmt.Sprintf("workers: {count: 2, max_requests: 50, preload: %v}\nproxy: {access_log: off}\n", preload))})
			stop := runLoad(8, b.url("/hello"), func(code int, body string) bool { return code == 200 })
			waitFor(t, 90*time.Second, "10 recycles", func() bool { return b.statusDoc().Restarts["max_requests"] >= 10 })
			r := stop()
			re := regexp.MustCompile(`ready in ([0-9.]+m?s), replacing worker \S+ \(max_requests`)
			var ds []time.Duration
			for _, m := range re.FindAllStringSubmatch(b.logs.String(), -1) {
				d, err := time.ParseDuration(m[1])
				if err == nil {
					ds = append(ds, d)
				}
			}
			if len(ds) == 0 {
				t.Fatalf("no replacement timings in the log:\n%s", b.logs.String())
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			t.Logf("Django, preload %v: due → replacement ready: median %s, max %s over %d recycles; load %s",
				preload, ds[len(ds)/2], ds[len(ds)-1], len(ds), r)
			if r.failed != 0 {
				t.Fatalf("failed requests while recycling: %s", r)
			}
		})
	}
}
