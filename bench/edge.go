package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// edgeBackends is how many berth backends the edge scenario puts behind
// the front; each gets a third of -workers (at least one).
const edgeBackends = 3

// edgeThroughput measures a front (the berth edge for stack "berth", nginx
// for any peer stack) in front of the same three berth backends, started
// afresh for each run, with keep-alive to them on both sides.
func (sc *scenario) edgeThroughput(ctx context.Context, e *benchEnv, stack string, res *runResult) error {
	var backs []*instance
	defer func() {
		for _, b := range backs {
			b.stop()
		}
	}()
	var addrs []string
	for i := 0; i < edgeBackends; i++ {
		b, err := start(ctx, e, "berth", stackSpec{app: sc.app, workers: max(1, e.o.workers/edgeBackends)})
		if err != nil {
			return fmt.Errorf("backend %d: %w", i+1, err)
		}
		backs = append(backs, b)
		if _, err := b.waitReady(ctx, readyTimeout); err != nil {
			return fmt.Errorf("backend %d: %w", i+1, err)
		}
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(b.data.Port))
	}
	front, err := startEdge(ctx, e, stack, addrs)
	if err != nil {
		return err
	}
	defer front.stop()
	if e.o.warmup > 0 {
		if _, err := sc.wrk(ctx, e, front, e.o.warmup); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	// CPU: the front's processes, and the backends' as the app's.
	snap := func() (cpuSnapshot, error) {
		tab, err := procTable()
		if err != nil {
			return cpuSnapshot{}, err
		}
		roles := map[int]string{}
		for _, b := range backs {
			for _, pid := range append([]int{b.app.pid()}, descendants(tab, b.app.pid())...) {
				roles[pid] = roleApp
			}
		}
		root := front.app
		for _, pid := range append([]int{root.pid()}, descendants(tab, root.pid())...) {
			roles[pid] = roleFront
		}
		s := cpuSnapshot{ticks: map[int]int64{}, reaped: map[int]int64{}, roles: roles}
		for pid := range roles {
			s.ticks[pid], s.reaped[pid] = tab[pid].ticks, tab[pid].childTicks
		}
		return s, nil
	}
	before, err := snap()
	if err != nil {
		return err
	}
	w, err := sc.wrk(ctx, e, front, e.o.duration)
	if err != nil {
		return err
	}
	after, err := snap()
	if err != nil {
		return err
	}
	res.Main = &w
	res.CPU = cpuBetween(before, after)
	res.CPU["wrk"] = w.CPU
	return nil
}

// startEdge starts the front on a free port and waits until it answers.
func startEdge(ctx context.Context, e *benchEnv, stack string, backends []string) (*instance, error) {
	dir, err := e.instanceDir("edge-" + stack)
	if err != nil {
		return nil, err
	}
	in := &instance{e: e, stack: stack, probe: "/"}
	d := tmplData{Dir: dir, User: e.user, Backends: backends}
	if d.Port, err = freePort(); err != nil {
		return nil, err
	}
	in.url = "http://127.0.0.1:" + strconv.Itoa(d.Port)
	in.data = d
	if stack == "berth" {
		if in.data.AdminPort, err = freePort(); err != nil {
			return nil, err
		}
		in.cfgPath = filepath.Join(dir, "berth.yaml")
		if err := render("berth-edge.yaml.tmpl", in.data, in.cfgPath); err != nil {
			return nil, err
		}
		in.appStarted = time.Now()
		if in.app, err = startProc(e.berth, []string{"run", "--config", in.cfgPath}, dir,
			[]string{"BERTH_RUN_DIR=" + filepath.Join(dir, "run")}, filepath.Join(dir, "berth.log")); err != nil {
			return nil, err
		}
	} else {
		in.stack = "nginx"
		for _, sub := range []string{"client_body", "uwsgi_temp", "proxy_temp", "fastcgi_temp", "scgi_temp"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
				return nil, err
			}
		}
		conf := filepath.Join(dir, "nginx.conf")
		if err := render("nginx-edge.conf.tmpl", d, conf); err != nil {
			return nil, err
		}
		// The front is the instance's only process: it is its "app".
		if in.app, err = startProc("nginx", []string{"-p", dir, "-e", filepath.Join(dir, "nginx-error.log"), "-c", conf, "-g", "daemon off;"},
			dir, nil, filepath.Join(dir, "nginx.log")); err != nil {
			return nil, err
		}
	}
	if _, err := in.waitReady(ctx, readyTimeout); err != nil {
		in.stop()
		return nil, err
	}
	return in, nil
}
