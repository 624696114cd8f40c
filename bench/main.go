// Command bench measures berth against nginx + uWSGI and nginx + Gunicorn on
// this machine, in one run: `go run ./bench` from the module root.
//
// For every scenario it starts each stack on loopback, drives it with wrk,
// stops it, and moves on to the next stack, so the stacks alternate and never
// share the CPUs. The whole round is repeated (-repeat) and the table gives
// medians; a ratio berth/peer is the median of the per-round ratios, so it
// always compares figures taken minutes apart, never runs from different
// sessions. The stacks' configs are the templates in bench/stacks/; the
// scenarios and the reasoning behind each choice are in docs/benchmarks.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the command line. The zero value is not usable: parseFlags
// fills in every default.
type options struct {
	scenarios []string      // scenario names, in run order
	stacks    []string      // stack names, in alternation order
	repeat    int           // rounds
	duration  time.Duration // each measured wrk run
	warmup    time.Duration // unmeasured wrk run before each measurement
	threads   int           // wrk -t
	conns     int           // wrk -c
	workers   int           // worker processes per stack
	slow      int           // slow clients in the slowclients scenario
	berth     string        // prebuilt berth binary; "" = build one from the module
	out       string        // directory for results.json and chart.png; "" = none
	keep      bool          // keep the temp dir (configs, logs) for inspection
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	scen := fs.String("scenarios", strings.Join(scenarioNames(), ","), "comma-separated scenarios to run, in this order")
	stacks := fs.String("stacks", strings.Join(stackNames, ","), "comma-separated stacks, in alternation order")
	fs.IntVar(&o.repeat, "repeat", 3, "rounds; the table reports medians over them")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measured wrk run (whole seconds)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured wrk run before each measurement (whole seconds, 0 = none)")
	fs.IntVar(&o.threads, "threads", 2, "wrk threads (-t)")
	fs.IntVar(&o.conns, "connections", 32, "wrk connections (-c)")
	fs.IntVar(&o.workers, "workers", 4, "worker processes in every stack")
	fs.IntVar(&o.slow, "slow-clients", 500, "connections trickling headers in the slowclients scenario")
	fs.StringVar(&o.berth, "berth", "", "berth binary to use; empty builds one from the module root with CGO_ENABLED=0")
	fs.StringVar(&o.out, "out", "", "directory to write results.json and chart.png into (empty: print the table only)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir with every generated config and log")
	smoke := fs.Bool("smoke", false, "tiny run for tests: 1 round, 1s, hello and asgi-hello only (overrides -repeat, -duration, -warmup, -scenarios)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: every setting is a flag (see -h)", fs.Args())
	}
	o.scenarios = splitList(*scen)
	o.stacks = splitList(*stacks)
	if *smoke {
		o.repeat, o.duration, o.warmup, o.scenarios = 1, time.Second, time.Second, []string{"hello", "asgi-hello"}
	}
	for _, s := range o.scenarios {
		if findScenario(s) == nil {
			return o, fmt.Errorf("unknown scenario %q: pick from %s", s, strings.Join(scenarioNames(), ", "))
		}
	}
	for _, s := range o.stacks {
		if !validStack(s) {
			return o, fmt.Errorf("unknown stack %q: pick from %s", s, strings.Join(stackNames, ", "))
		}
	}
	switch {
	case len(o.scenarios) == 0 || len(o.stacks) == 0:
		return o, fmt.Errorf("nothing to run: -scenarios and -stacks must each name at least one")
	case o.repeat < 1:
		return o, fmt.Errorf("-repeat %d: need at least 1 round", o.repeat)
	case o.duration < time.Second:
		return o, fmt.Errorf("-duration %v: wrk counts whole seconds, use 1s or more", o.duration)
	case o.warmup != 0 && o.warmup < time.Second:
		return o, fmt.Errorf("-warmup %v: wrk counts whole seconds, use 0 or 1s or more", o.warmup)
	case o.workers < 1 || o.threads < 1 || o.conns < o.threads:
		return o, fmt.Errorf("-workers, -threads must be ≥ 1 and -connections ≥ -threads")
	case o.slow < 0:
		return o, fmt.Errorf("-slow-clients %d: must be ≥ 0", o.slow)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == goloadFlag {
		// The Go load generator's child (goload.go), not the bench.
		os.Exit(goloadChild(os.Args[2], os.Stdout, os.Stderr))
	}
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run does the whole benchmark: prepares the apps, runs every round, prints
// the tables to stdout (progress goes to logw) and writes -out files.
func run(ctx context.Context, o options, stdout, logw io.Writer) (*report, error) {
	env, err := prepare(ctx, o, logw)
	if err != nil {
		return nil, err
	}
	defer env.cleanup()
	start := time.Now()
	var results []runResult
	for r := 1; r <= o.repeat; r++ {
		for _, name := range o.scenarios {
			sc := findScenario(name)
			for _, stack := range o.stacks {
				if !sc.serves(stack) {
					continue
				}
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("interrupted: %w", err)
				}
				res := sc.run(ctx, env, stack, r)
				logResult(logw, o, res)
				results = append(results, res)
			}
		}
	}
	env.machine.LoadEnd = loadavg()
	rep := summarize(o, env.machine, results, time.Since(start))
	rep.printTables(stdout)
	if o.out != "" {
		if err := rep.write(o.out); err != nil {
			return rep, err
		}
		fmt.Fprintf(logw, "bench: wrote %s and %s\n", resultsFile(o.out), chartFile(o.out))
	}
	return rep, nil
}

func logResult(w io.Writer, o options, r runResult) {
	fmt.Fprintf(w, "bench: round %d/%d %-12s %-9s %s\n", r.Round, o.repeat, r.Scenario, r.Stack, r.brief())
}
