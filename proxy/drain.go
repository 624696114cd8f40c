package proxy

// drain.go: ending the websockets and streamed responses of ASGI workers
// that drain. A draining worker gets no new request; what it has open goes
// on for drain_timeout, then is told to end: websockets close with 1012
// (service restart) on a roll or a recycle, 1001 (going away) when the
// proxy stops, so clients reconnect to the next generation.

import (
	"context"
	"time"
)

// Close codes a drain ends websockets with (RFC 6455 §7.4.1, IANA registry).
const (
	closeServiceRestart = 1012
	closeGoingAway      = 1001
)

// sweepDrains ends the streams of workers that have drained longer than
// drain_timeout. housekeeping calls it on every tick.
func (s *Server) sweepDrains() {
	st := s.cfg.Load()
	now := time.Now().UnixNano()
	for _, rt := range s.routers() {
		for _, w := range rt.drainDue(now, st.drain) {
			if n := w.drainStreams(closeServiceRestart); n > 0 {
				s.metrics.drained.WithLabelValues("roll").Add(float64(n))
				s.logf("worker %s: drained for %s: %d websocket(s) and stream(s) told to end (1012)", w.id, st.drain, n)
			}
		}
	}
}

// drainDue returns the ASGI workers draining for at least d whose streams
// were not told to end yet, and marks them told.
func (rt *router) drainDue(now int64, d time.Duration) []*worker {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var due []*worker
	for _, w := range rt.list {
		if w.asgi && w.draining && !w.drainCut && now-w.drainAt >= int64(d) {
			w.drainCut = true
			due = append(due, w)
		}
	}
	return due
}

// asgiWorkers lists the ASGI workers in the set.
func (rt *router) asgiWorkers() []*worker {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var ws []*worker
	for _, w := range rt.list {
		if w.asgi {
			ws = append(ws, w)
		}
	}
	return ws
}

// drainAll tells every stream on every ASGI worker to end with code.
func (s *Server) drainAll(code uint16, reason string) {
	n := 0
	for _, rt := range s.routers() {
		for _, w := range rt.asgiWorkers() {
			n += w.drainStreams(code)
		}
	}
	if n > 0 {
		s.metrics.drained.WithLabelValues(reason).Add(float64(n))
		s.logf("stopping: %d websocket(s) and stream(s) told to end (%d)", n, code)
	}
}

// drainOnStop ends every ASGI stream drain_timeout after a stop began (or
// at once when ctx ends first). The returned function cancels it.
func (s *Server) drainOnStop(ctx context.Context) (cancel func()) {
	d := s.cfg.Load().drain
	stop := make(chan struct{})
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-stop:
			return
		}
		s.drainAll(closeGoingAway, "shutdown")
	}()
	return func() { close(stop) }
}

// waitWebsockets waits for every accepted websocket to end, or ctx.
func (s *Server) waitWebsockets(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.wsOpen.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
