package main

import (
	"bytes"
	"image/png"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func wrkRun(sc, stack string, round int, rps float64, errs int64) runResult {
	return runResult{Scenario: sc, Stack: stack, Round: round, Main: &wrkResult{RPS: rps, Requests: int64(rps) * 10, P50: 1, P99: 2, SockErrors: errs},
		CPU: map[string]float64{roleFront: 1, roleApp: 2, "wrk": 0.5}}
}

// Ratios are medians of same-round ratios, not ratios of medians: here the
// rounds drift (a noisy neighbour), and only same-round ratios see berth
// steadily 1.5× ahead.
func TestSummarizeRatiosComeFromTheSameRound(t *testing.T) {
	o := options{scenarios: []string{"hello"}, stacks: []string{"berth", "uwsgi"}, repeat: 3, duration: 10 * time.Second}
	runs := []runResult{
		wrkRun("hello", "berth", 1, 300, 0), wrkRun("hello", "uwsgi", 1, 200, 0),
		wrkRun("hello", "berth", 2, 150, 0), wrkRun("hello", "uwsgi", 2, 100, 0),
		wrkRun("hello", "berth", 3, 30, 2), wrkRun("hello", "uwsgi", 3, 20, 1),
	}
	rep := summarize(o, machine{}, runs, time.Minute)
	b, u := rep.find("hello", "berth"), rep.find("hello", "uwsgi")
	if b.RPS != 150 || u.RPS != 100 {
		t.Errorf("median rps berth %v uwsgi %v, want 150 and 100", b.RPS, u.RPS)
	}
	if u.Ratio != 1.5 {
		t.Errorf("ratio = %v, want 1.5", u.Ratio)
	}
	if b.Errors != 2 || u.Errors != 1 {
		t.Errorf("errors berth %d uwsgi %d: want them summed over rounds (2, 1)", b.Errors, u.Errors)
	}
	if got := b.CPUPerReq[roleApp]; got != 1e6*2/1500 {
		t.Errorf("worker CPU per request = %v µs, want the median round's 2 s / 1500 requests", got)
	}
	if len(rep.Targets) != 1 || !rep.Targets[0].Met {
		t.Errorf("targets = %+v, want only hello-vs-uwsgi, met (1.5 ≥ 1.2)", rep.Targets)
	}
}

func TestSummarizeJudgesTargets(t *testing.T) {
	o := options{scenarios: []string{"hello", "reload", "memory"}, stacks: []string{"berth", "uwsgi"}, repeat: 1, duration: 10 * time.Second}
	reload := func(stack string, base, under float64, errs int64) runResult {
		r := wrkRun("reload", stack, 1, under, errs)
		r.Baseline = &wrkResult{RPS: base}
		r.Kept = under / base
		return r
	}
	runs := []runResult{
		wrkRun("hello", "berth", 1, 130, 0), wrkRun("hello", "uwsgi", 1, 100, 0),
		reload("berth", 100, 95, 1), reload("uwsgi", 100, 30, 0),
		{Scenario: "memory", Stack: "berth", Round: 1, PSSWorkersKiB: 1000, PSSTotalKiB: 2000, Workers: 4},
		{Scenario: "memory", Stack: "uwsgi", Round: 1, Err: "uwsgi exited before it was ready:\nlog"},
	}
	rep := summarize(o, machine{}, runs, time.Minute)
	got := map[string]bool{}
	for _, tg := range rep.Targets {
		got[strings.SplitN(tg.Goal, ":", 2)[0]] = tg.Met
	}
	// hello 1.3 ≥ 1.2: met. reload kept 95% but with 1 error: missed.
	// memory: uWSGI failed, so there is nothing to judge.
	want := map[string]bool{"hello": true, "reload": false}
	if len(got) != len(want) || got["hello"] != true || got["reload"] != false {
		t.Errorf("targets %+v, want %v", rep.Targets, want)
	}
	if u := rep.find("memory", "uwsgi"); u != nil {
		t.Errorf("a failed round counted: %+v", u)
	}
	var out bytes.Buffer
	rep.printTables(&out)
	for _, s := range []string{"| hello ", "1.30×", "MISSED — reload", "1 rounds failed: round 1: uwsgi exited before it was ready"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("tables lack %q:\n%s", s, out.String())
		}
	}
}

func TestChartIsAPNGWithEveryLabelInTheFont(t *testing.T) {
	o := options{scenarios: scenarioNames(), stacks: stackNames, repeat: 1, duration: 10 * time.Second, workers: 4, threads: 2, conns: 32}
	var runs []runResult
	for _, sc := range o.scenarios {
		for i, st := range o.stacks {
			r := wrkRun(sc, st, 1, float64(1000*(i+1)), 0)
			r.Baseline, r.Kept = &wrkResult{RPS: 2000}, 0.5
			r.PSSWorkersKiB, r.PSSTotalKiB, r.StartupS = 1024*50, 1024*80, 0.5
			runs = append(runs, r)
		}
	}
	rep := summarize(o, machine{CPUs: 2}, runs, time.Minute)
	var buf bytes.Buffer
	if err := drawChart(&buf, rep); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 4*panelW || b.Dy() < 3*panelH {
		t.Errorf("chart is %v, want room for 4×3 panels", b)
	}
	// Every character the chart can print must be in the font ('?' is the
	// fallback, which would make a label unreadable).
	texts := []string{"% OF STEADY REQ/S KEPT", "REQ/S, HIGHER IS BETTER", "PSS OF WORKERS, LOWER IS BETTER",
		"SECONDS TO READY, LOWER IS BETTER", "FAILED", "12.5K", "95%", "41 MIB", "1.23 S", "NGINX+UWSGI", "WRK -T2 -C32"}
	for _, sc := range scenarios {
		texts = append(texts, sc.Name)
	}
	for _, s := range texts {
		for _, r := range strings.ToUpper(s) {
			if _, ok := glyphs[r]; !ok {
				t.Errorf("glyph %q (in %q) missing from the font", r, s)
			}
		}
	}
	for r, g := range glyphs {
		for _, row := range g {
			if len(row) != glyphW {
				t.Errorf("glyph %q has a row %q of width %d", r, row, len(row))
			}
		}
	}
}

func TestCPUBetweenCountsReapedWorkers(t *testing.T) {
	// Worker 11 runs throughout; worker 12 (20 ticks at the first snapshot)
	// dies at 50 and is reaped by master 10; worker 13 starts in between.
	a := cpuSnapshot{
		ticks:  map[int]int64{10: 100, 11: 200, 12: 20},
		reaped: map[int]int64{10: 1000, 11: 0, 12: 0},
		roles:  map[int]string{10: roleMaster, 11: roleApp, 12: roleApp},
	}
	b := cpuSnapshot{
		ticks:  map[int]int64{10: 110, 11: 300, 13: 40},
		reaped: map[int]int64{10: 1050, 11: 0, 13: 0},
		roles:  map[int]string{10: roleMaster, 11: roleApp, 13: roleApp},
	}
	got := cpuBetween(a, b)
	// app: 100 (11) + 40 (13) + 50-20 (12, reaped) = 170 ticks.
	if got[roleMaster] != 0.1 || got[roleApp] != 1.7 {
		t.Errorf("cpuBetween = %v, want master 0.1 s, app 1.7 s", got)
	}
}

func TestParseStat(t *testing.T) {
	// comm with a space and a parenthesis, as Python's setproctitle-less
	// workers and nginx ("nginx: worker process") have.
	line := "123 (a b) c) S 7 123 123 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 1 0 5 1000 10 18446744073709551615\n"
	p, ok := parseStat([]byte(line))
	if !ok || p.ppid != 7 || p.ticks != 33 || p.childTicks != 77 {
		t.Errorf("parseStat = %+v, %v; want ppid 7, ticks 33, child ticks 77", p, ok)
	}
	if _, ok := parseStat([]byte("123 (x) S 1")); ok {
		t.Error("parseStat accepted a truncated line")
	}
}

// https-h3 has no peer: its rows are berth's alone, with no ratio, and the
// rest of the report (other scenarios' peers, the chart's legend) is as
// it would be without it.
func TestSummarizeCopesWithABerthOnlyScenario(t *testing.T) {
	o := options{scenarios: []string{"https-h3", "https-go-h2"}, stacks: []string{"berth", "uwsgi"}, repeat: 2, duration: 10 * time.Second, conns: 32}
	if sc := findScenario("https-h3"); !sc.serves("berth") || sc.serves("uwsgi") || sc.serves("gunicorn") || sc.serves("uvicorn") {
		t.Fatalf("https-h3 must be berth's alone")
	}
	var runs []runResult
	for round := 1; round <= 2; round++ {
		runs = append(runs, wrkRun("https-h3", "berth", round, 900, 0),
			wrkRun("https-go-h2", "berth", round, 1000, 0), wrkRun("https-go-h2", "uwsgi", round, 2000, 0))
	}
	rep := summarize(o, machine{CPUs: 2}, runs, time.Minute)
	h3 := rep.Scenarios[0]
	if len(h3.Stacks) != 1 || h3.Stacks[0].Stack != "berth" || h3.Stacks[0].RPS != 900 || fmtRatio(h3.Stacks[0]) != "-" {
		t.Errorf("https-h3 summary %+v, want berth alone at 900 req/s and no ratio", h3.Stacks)
	}
	if u := rep.find("https-go-h2", "uwsgi"); u == nil || u.Ratio != 0.5 {
		t.Errorf("https-go-h2 uwsgi %+v, want ratio 0.5", u)
	}
	if len(rep.Targets) != 0 {
		t.Errorf("targets %+v, want none", rep.Targets)
	}
	var out bytes.Buffer
	rep.printTables(&out)
	for _, s := range []string{"| https-h3    | berth |", "| https-go-h2 | uwsgi | 2000", "0.50×"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("tables lack %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "| https-h3    | uwsgi") {
		t.Errorf("a uwsgi row for https-h3:\n%s", out.String())
	}
	if got := chartStacks(rep); strings.Join(got, ",") != "berth,uwsgi" {
		t.Errorf("chart legend %v, want berth and uwsgi", got)
	}
	if err := drawChart(&bytes.Buffer{}, rep); err != nil {
		t.Error(err)
	}
}
