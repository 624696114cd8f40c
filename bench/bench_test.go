package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs `bench -smoke` against the real stacks (berth built from
// this module, nginx + uWSGI, nginx + Gunicorn): 1 round of the hello
// scenario, 1 s each. Its figures are not judged (shared machines are
// noisy); it checks the bench itself still works end to end: every stack
// starts, serves, is measured without errors, stops, and the report, JSON
// and chart come out.
func TestSmoke(t *testing.T) {
	if missing := missingTools(stackNames); len(missing) > 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but the peers are missing: %s", strings.Join(missing, ", "))
		}
		t.Skipf("missing %s (set CI to make this a failure)", strings.Join(missing, ", "))
	}
	o, err := parseFlags([]string{"-smoke", "-out", t.TempDir()}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	// A hang guard, not a budget: a warm run takes ~10 s, a cold berth build more.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, logs bytes.Buffer
	rep, err := run(ctx, o, &out, &logs)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, logs.String())
	}
	for _, stack := range stackNames {
		scenario := "hello"
		if stack == "uvicorn" {
			scenario = "asgi-hello" // nginx + Uvicorn serves the ASGI scenarios only
		}
		s := rep.find(scenario, stack)
		if s == nil {
			t.Errorf("%s: no successful round:\n%s", stack, logs.String())
			continue
		}
		if s.RPS < 100 || s.P50 <= 0 || s.P99 < s.P50 {
			t.Errorf("%s: implausible figures %+v", stack, s)
		}
		if s.Errors != 0 {
			t.Errorf("%s: %d errors serving hello", stack, s.Errors)
		}
		if s.CPUPerReq[roleApp] <= 0 || s.CPUPerReq[roleFront] <= 0 {
			t.Errorf("%s: CPU split not measured: %v", stack, s.CPUPerReq)
		}
		if stack != "berth" && s.Ratio <= 0 {
			t.Errorf("%s: no berth/peer ratio", stack)
		}
	}
	if !strings.Contains(out.String(), "| hello      | gunicorn |") {
		t.Errorf("table lacks the gunicorn hello row:\n%s", out.String())
	}
	b, err := os.ReadFile(resultsFile(o.out))
	if err != nil {
		t.Fatal(err)
	}
	var back report
	// hello on the three WSGI stacks, asgi-hello on berth and uvicorn.
	if err := json.Unmarshal(b, &back); err != nil || len(back.Runs) != len(stackNames)+1 {
		t.Errorf("results.json: %v, %d runs", err, len(back.Runs))
	}
	f, err := os.Open(chartFile(o.out))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("chart.png: %v", err)
	}
	if t.Failed() {
		t.Logf("output:\n%s\nprogress:\n%s", out.String(), logs.String())
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-scenarios", "hello, django", "-stacks", "berth,uwsgi", "-repeat", "5", "-duration", "3s"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.scenarios, ",") != "hello,django" || strings.Join(o.stacks, ",") != "berth,uwsgi" || o.repeat != 5 || o.duration != 3*time.Second {
		t.Errorf("parsed %+v", o)
	}
	o, err = parseFlags([]string{"-smoke", "-repeat", "9"}, os.Stderr)
	if err != nil || o.repeat != 1 || o.duration != time.Second || strings.Join(o.scenarios, ",") != "hello,asgi-hello" {
		t.Errorf("-smoke: %+v, %v", o, err)
	}
	var sink bytes.Buffer
	for _, bad := range [][]string{
		{"-scenarios", "nope"}, {"-stacks", "apache"}, {"-repeat", "0"}, {"-duration", "500ms"},
		{"-warmup", "300ms"}, {"-scenarios", ","}, {"extra"},
	} {
		if _, err := parseFlags(bad, &sink); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}
