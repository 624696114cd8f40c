package proxy

// events.go: the queue of messages for the supervisor (due, drained,
// timeout, stats) and the housekeeping tick that feeds it.

import (
	"reflect"
	"time"

	"github.com/berth-dev/berth/control"
)

// Events returns the channel of messages for the supervisor: TypeDue,
// TypeTimeout, TypeDrained (each once per worker) and TypeStats (at most
// once a second, only when changed). Events are queued without limit
// (there are few: stats coalesce to the latest), so a slow reader never
// slows requests. The channel is closed when Shutdown returns; events not
// taken within 100 ms of that are dropped.
func (s *Server) Events() <-chan control.Message { return s.events }

// emit queues an event; it never blocks.
func (s *Server) emit(m control.Message) {
	s.evMu.Lock()
	if m.Type == control.TypeStats {
		s.evStats = &m
	} else {
		s.evQueue = append(s.evQueue, m)
	}
	s.evMu.Unlock()
	select {
	case s.evNotify <- struct{}{}:
	default:
	}
}

func (s *Server) nextEvent() (control.Message, bool) {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if len(s.evQueue) > 0 {
		m := s.evQueue[0]
		s.evQueue = s.evQueue[1:]
		return m, true
	}
	if s.evStats != nil {
		m := *s.evStats
		s.evStats = nil
		return m, true
	}
	return control.Message{}, false
}

// pump moves queued events to the events channel.
func (s *Server) pump() {
	defer s.bg.Done()
	defer close(s.events)
	for {
		m, ok := s.nextEvent()
		if !ok {
			select {
			case <-s.evNotify:
				continue
			case <-s.stop:
				return
			}
		}
		select {
		case s.events <- m:
		case <-s.stop:
			s.flushEvents(m)
			return
		}
	}
}

func (s *Server) flushEvents(m control.Message) {
	for {
		select {
		case s.events <- m:
		case <-time.After(100 * time.Millisecond):
			return
		}
		var ok bool
		if m, ok = s.nextEvent(); !ok {
			return
		}
	}
}

// housekeeping flushes the access log every 100 ms and, every second,
// sends stats when they changed and closes long-idle worker connections.
func (s *Server) housekeeping() {
	defer s.bg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var last control.Stats
	for tick := 1; ; tick++ {
		select {
		case <-s.stop:
			s.alog.flush()
			if st := s.Stats(); !statsEqual(st, last) {
				s.emit(control.Message{Type: control.TypeStats, Stats: &st})
			}
			return
		case now := <-t.C:
			s.tickClock(now)
		}
		s.alog.flush()
		if tick%2 == 0 {
			s.h1.sweep(s.clock.Load(), s.manyConns)
		}
		for _, rt := range s.routers() {
			rt.kick()
		}
		s.sweepDrains()
		if tick%10 != 0 {
			continue
		}
		if st := s.Stats(); !statsEqual(st, last) {
			s.emit(control.Message{Type: control.TypeStats, Stats: &st})
			last = st
		}
		now := time.Now().UnixNano()
		for _, rt := range s.routers() {
			rt.reapIdle(now)
		}
		s.up.reapIdle(now)
	}
}

func statsEqual(a, b control.Stats) bool {
	if a.Queue != b.Queue || len(a.Workers) != len(b.Workers) || (a.Workers == nil) != (b.Workers == nil) {
		return false
	}
	for k, v := range a.Workers {
		if w, ok := b.Workers[k]; !ok || w != v {
			return false
		}
	}
	return (len(a.Upstreams) == 0 && len(b.Upstreams) == 0 || reflect.DeepEqual(a.Upstreams, b.Upstreams)) &&
		reflect.DeepEqual(a.ACME, b.ACME) // ACME
}
