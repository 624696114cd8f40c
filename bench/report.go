package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the whole result: what results.json holds and what the tables
// and the chart are drawn from.
type report struct {
	Machine   machine           `json:"machine"`
	Settings  map[string]string `json:"settings"`
	Scenarios []scenarioSummary `json:"scenarios"`
	Targets   []target          `json:"targets"`
	Runs      []runResult       `json:"runs"`
	Elapsed   string            `json:"elapsed"`
}

type scenarioSummary struct {
	scenario
	Stacks []stackSummary `json:"stacks"`
}

// stackSummary holds medians over the rounds that succeeded. Errors are
// summed over every round, not medianed: one error anywhere is reported.
type stackSummary struct {
	Stack  string   `json:"stack"`
	Rounds int      `json:"rounds_ok"`
	Failed []string `json:"failures,omitempty"`

	RPS            float64 `json:"rps,omitempty"`
	P50            float64 `json:"p50_ms,omitempty"`
	P99            float64 `json:"p99_ms,omitempty"`
	Errors         int64   `json:"errors"`
	BaselineRPS    float64 `json:"baseline_rps,omitempty"`
	BaselineErrors int64   `json:"baseline_errors,omitempty"`
	Kept           float64 `json:"kept,omitempty"`
	WorkerPIDs     float64 `json:"worker_pids_seen,omitempty"`
	Reloads        float64 `json:"reloads,omitempty"`
	SlowConnected  float64 `json:"slow_connected,omitempty"`
	PSSWorkersMiB  float64 `json:"pss_workers_mib,omitempty"`
	PSSTotalMiB    float64 `json:"pss_total_mib,omitempty"`
	StartupS       float64 `json:"startup_s,omitempty"`
	// CPUPerReq is each role's median CPU time per request during the
	// measured run, in microseconds ("server" = front + master + app).
	CPUPerReq map[string]float64 `json:"cpu_us_per_request,omitempty"`
	// Cores is the median number of CPUs the stack's processes kept busy.
	Cores float64 `json:"server_cores_busy,omitempty"`
	// Ratio is the median over rounds of berth's figure divided by this
	// stack's figure from the same round: req/s for wrk scenarios (higher
	// is better for berth), PSS or start-up time otherwise (lower is
	// better for berth). 0 when no round has both.
	Ratio float64 `json:"berth_ratio,omitempty"`
}

// target is one of the goals, judged on this run.
type target struct {
	Goal   string `json:"goal"`
	Actual string `json:"actual"`
	Met    bool   `json:"met"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// metric is the figure a ratio compares, for a run of the given kind.
func metric(k kind, r runResult) (float64, bool) {
	if r.Err != "" {
		return 0, false
	}
	switch {
	case k.usesWrk():
		return r.Main.RPS, r.Main.RPS > 0
	case k == kindMemory:
		return float64(r.PSSWorkersKiB), r.PSSWorkersKiB > 0
	case k == kindStartup:
		return r.StartupS, r.StartupS > 0
	}
	return 0, false
}

func summarize(o options, m machine, runs []runResult, elapsed time.Duration) *report {
	rep := &report{Machine: m, Runs: runs, Elapsed: elapsed.Round(time.Second).String(), Settings: map[string]string{
		"repeat": fmt.Sprint(o.repeat), "duration": o.duration.String(), "warmup": o.warmup.String(),
		"wrk":     fmt.Sprintf("-t%d -c%d --latency --timeout %s", o.threads, o.conns, wrkTimeout),
		"h2load":  fmt.Sprintf("-t%d -c%d -m%d", o.threads, o.conns, h2Streams),
		"goload":  fmt.Sprintf("-c%d -m%d, timeout %v (h1: %d connections of 1 request)", o.conns, h2Streams, loadTimeout, o.conns*h2Streams),
		"workers": fmt.Sprint(o.workers), "slow_clients": fmt.Sprint(o.slow),
		"stacks": strings.Join(o.stacks, ","), "scenarios": strings.Join(o.scenarios, ","),
	}}
	type key struct{ sc, stack string }
	byRound := map[key]map[int]runResult{}
	for _, r := range runs {
		k := key{r.Scenario, r.Stack}
		if byRound[k] == nil {
			byRound[k] = map[int]runResult{}
		}
		byRound[k][r.Round] = r
	}
	for _, name := range o.scenarios {
		sc := findScenario(name)
		ss := scenarioSummary{scenario: *sc}
		for _, stack := range o.stacks {
			if !sc.serves(stack) {
				continue
			}
			st := stackSummary{Stack: stack}
			var rps, p50, p99, base, kept, pids, reloads, slow, pssW, pssT, startup, ratio, cores []float64
			cpu := map[string][]float64{}
			for round := 1; round <= o.repeat; round++ {
				r, ok := byRound[key{name, stack}][round]
				if !ok {
					continue
				}
				if r.Err != "" {
					st.Failed = append(st.Failed, fmt.Sprintf("round %d: %s", round, firstLine(r.Err)))
					continue
				}
				st.Rounds++
				if r.Main != nil {
					rps, p50, p99 = append(rps, r.Main.RPS), append(p50, r.Main.P50), append(p99, r.Main.P99)
					st.Errors += r.Main.Errors()
					if n := float64(r.Main.Requests); n > 0 && r.CPU != nil {
						server := 0.0
						for role, s := range r.CPU {
							cpu[role] = append(cpu[role], 1e6*s/n)
							if role != "wrk" {
								server += s
							}
						}
						cpu["server"] = append(cpu["server"], 1e6*server/n)
						cores = append(cores, server/o.duration.Seconds())
					}
				}
				if r.Baseline != nil {
					base = append(base, r.Baseline.RPS)
					st.BaselineErrors += r.Baseline.Errors()
					kept = append(kept, r.Kept)
				}
				if r.WorkerPIDs > 0 {
					pids = append(pids, float64(r.WorkerPIDs))
				}
				if r.Reloads > 0 {
					reloads = append(reloads, float64(r.Reloads))
				}
				if r.SlowConnected > 0 {
					slow = append(slow, float64(r.SlowConnected))
				}
				if r.PSSWorkersKiB > 0 {
					pssW, pssT = append(pssW, float64(r.PSSWorkersKiB)/1024), append(pssT, float64(r.PSSTotalKiB)/1024)
				}
				if r.StartupS > 0 {
					startup = append(startup, r.StartupS)
				}
				if b, ok := byRound[key{name, "berth"}][round]; ok {
					bv, ok1 := metric(sc.Kind, b)
					tv, ok2 := metric(sc.Kind, r)
					if ok1 && ok2 {
						ratio = append(ratio, bv/tv)
					}
				}
			}
			st.RPS, st.P50, st.P99 = median(rps), median(p50), median(p99)
			st.BaselineRPS, st.Kept = median(base), median(kept)
			st.WorkerPIDs, st.Reloads, st.SlowConnected = median(pids), median(reloads), median(slow)
			st.PSSWorkersMiB, st.PSSTotalMiB, st.StartupS = median(pssW), median(pssT), median(startup)
			st.Ratio = median(ratio)
			if len(cpu) > 0 {
				st.CPUPerReq = map[string]float64{}
				for role, v := range cpu {
					st.CPUPerReq[role] = median(v)
				}
				st.Cores = median(cores)
			}
			ss.Stacks = append(ss.Stacks, st)
		}
		rep.Scenarios = append(rep.Scenarios, ss)
	}
	rep.Targets = rep.judge()
	return rep
}

func (rep *report) find(sc, stack string) *stackSummary {
	for i := range rep.Scenarios {
		if rep.Scenarios[i].Name != sc {
			continue
		}
		for j := range rep.Scenarios[i].Stacks {
			if s := &rep.Scenarios[i].Stacks[j]; s.Stack == stack && s.Rounds > 0 {
				return s
			}
		}
	}
	return nil
}

// judge checks the targets against this run; a target whose
// scenario or stacks were not run is left out.
func (rep *report) judge() []target {
	var out []target
	ratio := func(sc, peer string, want float64) {
		b, p := rep.find(sc, "berth"), rep.find(sc, peer)
		if b == nil || p == nil {
			return
		}
		out = append(out, target{
			Goal:   fmt.Sprintf("%s: berth ≥ %.1f× nginx+%s req/s", sc, want, peer),
			Actual: fmt.Sprintf("%.2f× (%.0f vs %.0f req/s)", p.Ratio, b.RPS, p.RPS),
			Met:    p.Ratio >= want,
		})
	}
	ratio("hello", "uwsgi", 1.2)
	ratio("hello", "gunicorn", 2.5)
	ratio("django", "uwsgi", 1.1)
	kept := func(sc string, want float64, zeroErrors bool, what string) {
		b := rep.find(sc, "berth")
		if b == nil {
			return
		}
		goal := fmt.Sprintf("%s: berth keeps ≥ %.0f%% of steady req/s %s", sc, 100*want, what)
		met := b.Kept >= want
		if zeroErrors {
			goal += " with 0 errors"
			met = met && b.Errors == 0
		}
		out = append(out, target{Goal: goal, Actual: fmt.Sprintf("kept %.1f%%, %d errors", 100*b.Kept, b.Errors), Met: met})
	}
	kept("reload", 0.90, true, "while reloading every second")
	kept("maxreq", 0.95, true, "recycling every 100 requests")
	if b := rep.find("slowclients", "berth"); b != nil {
		out = append(out, target{
			Goal:   "slowclients: slow clients cost berth's normal clients < 10% req/s",
			Actual: fmt.Sprintf("cost %.1f%% (%.0f → %.0f req/s), %d errors", 100*(1-b.Kept), b.BaselineRPS, b.RPS, b.Errors),
			Met:    b.Kept > 0.90,
		})
	}
	if b, u := rep.find("memory", "berth"), rep.find("memory", "uwsgi"); b != nil && u != nil {
		out = append(out, target{
			Goal:   "memory: PSS of berth's Django workers ≤ uWSGI's",
			Actual: fmt.Sprintf("%.1f MiB vs %.1f MiB (%.2f×)", b.PSSWorkersMiB, u.PSSWorkersMiB, u.Ratio),
			Met:    u.Ratio <= 1,
		})
	}
	return out
}

func fmtRatio(s stackSummary) string {
	if s.Stack == "berth" || s.Ratio == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", s.Ratio)
}

func fmtErrors(s stackSummary) string {
	out := fmt.Sprint(s.Errors)
	if len(s.Failed) > 0 {
		out += fmt.Sprintf(" (%d rounds failed)", len(s.Failed))
	}
	return out
}

// printTables prints the tables, in GitHub markdown so they paste into
// docs/benchmarks.md as they are.
func (rep *report) printTables(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	row := func(cells ...string) { fmt.Fprintln(tw, "| "+strings.Join(cells, "\t ")+"\t") }
	rule := func(n int) {
		cells := make([]string, n)
		for i := range cells {
			cells[i] = "---"
		}
		row(cells...)
	}
	section := func(title string) {
		tw.Flush()
		fmt.Fprintf(w, "\n%s\n\n", title)
	}
	fix := func() { tw.Flush() }

	rounds := rep.Settings["repeat"]
	section(fmt.Sprintf("Throughput (medians of %s rounds; errors summed over all rounds; berth/peer = median of per-round ratios)", rounds))
	row("scenario", "stack", "req/s", "p50", "p99", "errors", "berth/peer")
	rule(7)
	for _, sc := range rep.Scenarios {
		if !sc.Kind.usesWrk() {
			continue
		}
		for _, s := range sc.Stacks {
			row(sc.Name, s.Stack, fmt.Sprintf("%.0f", s.RPS), fmtMs(s.P50), fmtMs(s.P99), fmtErrors(s), fmtRatio(s))
		}
	}
	fix()

	if rep.has(func(k kind) bool { return k.perturbed() }) {
		section("Under disturbance (steady = same instance before the disturbance; maxreq: a fresh instance without recycling)")
		row("scenario", "stack", "steady req/s", "disturbed req/s", "kept", "p99 disturbed", "errors steady/disturbed", "worker pids seen")
		rule(8)
		for _, sc := range rep.Scenarios {
			if !sc.Kind.perturbed() {
				continue
			}
			for _, s := range sc.Stacks {
				pids := "-"
				if s.WorkerPIDs > 0 {
					pids = fmt.Sprintf("%.0f", s.WorkerPIDs)
				}
				row(sc.Name, s.Stack, fmt.Sprintf("%.0f", s.BaselineRPS), fmt.Sprintf("%.0f", s.RPS), fmt.Sprintf("%.1f%%", 100*s.Kept),
					fmtMs(s.P99), fmt.Sprintf("%d/%s", s.BaselineErrors, fmtErrors(s)), pids)
			}
		}
		fix()
	}

	if rep.has(func(k kind) bool { return k == kindMemory || k == kindStartup }) {
		section("Memory and start-up (berth/peer: lower is better for berth)")
		row("scenario", "stack", "figure", "berth/peer", "notes")
		rule(5)
		for _, sc := range rep.Scenarios {
			for _, s := range sc.Stacks {
				switch sc.Kind {
				case kindMemory:
					note := fmt.Sprintf("PSS of all the stack's processes: %.1f MiB%s", s.PSSTotalMiB, failNote(s))
					if strings.HasPrefix(sc.Name, "idle") {
						note = fmt.Sprintf("front: %.1f KB per connection; all processes: %.1f MiB%s",
							s.PSSWorkersMiB*1024*1.024/idleConnCount, s.PSSTotalMiB, failNote(s))
					}
					row(sc.Name, s.Stack, fmt.Sprintf("%.1f MiB", s.PSSWorkersMiB), fmtRatio(s), note)
				case kindStartup:
					row(sc.Name, s.Stack, fmt.Sprintf("%.3f s", s.StartupS), fmtRatio(s), strings.TrimPrefix(failNote(s), "; "))
				}
			}
		}
		fix()
	}

	if rep.has(func(k kind) bool { return k.usesWrk() }) {
		section("CPU time per request during the measured run (µs, medians; under the disturbance for slowclients/reload/maxreq; front = nginx or berth's proxy, master = uWSGI/Gunicorn master or berth's supervisor + zygote, workers = Python)")
		row("scenario", "stack", "front", "master", "workers", "server total", "server cores busy", "wrk")
		rule(8)
		for _, sc := range rep.Scenarios {
			if !sc.Kind.usesWrk() {
				continue
			}
			for _, s := range sc.Stacks {
				if s.CPUPerReq == nil {
					continue
				}
				c := s.CPUPerReq
				row(sc.Name, s.Stack, us(c[roleFront]), us(c[roleMaster]), us(c[roleApp]), us(c["server"]), fmt.Sprintf("%.2f", s.Cores), us(c["wrk"]))
			}
		}
		fix()
	}

	if len(rep.Targets) > 0 {
		fmt.Fprintf(w, "\nTargets\n\n")
		for _, t := range rep.Targets {
			mark := "MISSED"
			if t.Met {
				mark = "met"
			}
			fmt.Fprintf(w, "- %s — %s: %s\n", mark, t.Goal, t.Actual)
		}
	}
	fmt.Fprintf(w, "\n%d CPUs (%s), kernel %s; %s; took %s; load average %s at the start, %s at the end\n",
		rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.Kernel, versions(rep.Machine), rep.Elapsed, rep.Machine.LoadStart, rep.Machine.LoadEnd)
}

func failNote(s stackSummary) string {
	if len(s.Failed) == 0 {
		return ""
	}
	return fmt.Sprintf("; %d rounds failed: %s", len(s.Failed), s.Failed[0])
}

func us(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func versions(m machine) string {
	var keys []string
	for k := range m.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+" "+m.Versions[k])
	}
	return strings.Join(parts, ", ")
}

func (rep *report) has(f func(kind) bool) bool {
	for _, sc := range rep.Scenarios {
		if f(sc.Kind) {
			return true
		}
	}
	return false
}

func resultsFile(dir string) string { return filepath.Join(dir, "results.json") }
func chartFile(dir string) string   { return filepath.Join(dir, "chart.png") }

// write saves results.json and chart.png into dir.
func (rep *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make -out dir: %w", err)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(resultsFile(dir), append(b, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(chartFile(dir))
	if err != nil {
		return err
	}
	if err := drawChart(f, rep); err != nil {
		f.Close()
		return fmt.Errorf("draw chart: %w", err)
	}
	return f.Close()
}
