package proxy

// pools.go: apps mounted on URL prefixes (config mounts), each with a
// worker pool of its own. Every pool has a router of its own (its queue,
// its least-busy choice); a worker knows its router, so everything after
// the choice of a worker is the same code for every pool. The main app's
// router is Server.rt.

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/berth-dev/berth/control"
)

// mountRoute sends a URL prefix to a pool.
type mountRoute struct {
	url  string // starts and ends with "/"
	pool string
}

// poolSet holds the mounted pools' routers, created when a pool is first
// named (by a route or a worker) and kept: a pool with no worker yet
// queues its requests, as the main pool does at boot.
type poolSet struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]*router] // copy on write: lookups take no lock
}

// poolRouter returns the router of pool name ("" = the main one).
func (s *Server) poolRouter(name string) *router {
	if name == "" {
		return s.rt
	}
	if m := s.pools.m.Load(); m != nil {
		if rt := (*m)[name]; rt != nil {
			return rt
		}
	}
	s.pools.mu.Lock()
	defer s.pools.mu.Unlock()
	old := s.pools.m.Load()
	if old != nil {
		if rt := (*old)[name]; rt != nil {
			return rt
		}
	}
	next := map[string]*router{}
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	rt := newRouter(s.metrics, s.emit, s.logf, s.handoff)
	next[name] = rt
	s.pools.m.Store(&next)
	return rt
}

// routers lists every router, the main one first.
func (s *Server) routers() []*router {
	out := []*router{s.rt}
	if m := s.pools.m.Load(); m != nil {
		for _, rt := range *m {
			out = append(out, rt)
		}
	}
	return out
}

// setPoolWorkers hands each router its pool's part of the whole set; a
// pool missing from it gets an empty set (its workers are gone).
func (s *Server) setPoolWorkers(ws []control.Worker) error {
	byPool := map[string][]control.Worker{}
	for _, w := range ws {
		byPool[w.Pool] = append(byPool[w.Pool], w)
	}
	var errs error
	errs = errors.Join(errs, s.rt.setWorkers(byPool[""]))
	for name := range byPool {
		if name != "" {
			s.poolRouter(name)
		}
	}
	if m := s.pools.m.Load(); m != nil {
		for name, rt := range *m {
			errs = errors.Join(errs, rt.setWorkers(byPool[name]))
		}
	}
	return errs
}

// poolStats merges every router's counters (worker ids are unique across
// pools: a mounted pool's are NAME.slot.n).
func (s *Server) poolStats() control.Stats {
	st := s.rt.stats()
	for _, rt := range s.routers()[1:] {
		o := rt.stats()
		st.Queue += o.Queue
		for id, w := range o.Workers {
			st.Workers[id] = w
		}
	}
	return st
}

// poolFor returns the pool serving the normalized path p ("" = main).
func (st *settings) poolFor(p string) string {
	for _, r := range st.pools {
		if !strings.HasPrefix(p, r.url) {
			continue
		}
		// Without a trailing slash a URL matches at a segment boundary:
		// /ws serves /ws and /ws/x, not /wsx (as static URLs do).
		if rest := p[len(r.url):]; rest == "" || r.url[len(r.url)-1] == '/' || rest[0] == '/' {
			return r.pool
		}
	}
	return ""
}
