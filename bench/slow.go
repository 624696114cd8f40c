package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// slowClients hold n connections open, each sending its request headers one
// byte at a time, so the header never completes: the slowloris pattern a
// front server must absorb without starving normal clients.
type slowClients struct {
	connected  atomic.Int64 // connections currently open
	reconnects atomic.Int64 // connections the server closed, reopened
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// slowPrefix is sent at once; then one header byte per interval.
const slowPrefix = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

func startSlowClients(ctx context.Context, addr string, n int, interval time.Duration) *slowClients {
	ctx, cancel := context.WithCancel(ctx)
	s := &slowClients{cancel: cancel}
	for i := 0; i < n; i++ {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.trickle(ctx, addr, interval)
		}()
	}
	return s
}

func (s *slowClients) trickle(ctx context.Context, addr string, interval time.Duration) {
	d := net.Dialer{Timeout: 5 * time.Second}
	for first := true; ctx.Err() == nil; first = false {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if !first {
			s.reconnects.Add(1)
		}
		if _, err := c.Write([]byte(slowPrefix)); err != nil {
			c.Close()
			continue
		}
		s.connected.Add(1)
		// Spread the bytes over the interval so the 500 do not arrive in
		// one burst each second.
		next := time.Duration(rand.Int64N(int64(interval)))
		for ctx.Err() == nil {
			sleepCtx(ctx, next)
			next = interval
			c.SetWriteDeadline(time.Now().Add(interval))
			if _, err := c.Write([]byte("a")); err != nil {
				break
			}
		}
		s.connected.Add(-1)
		c.Close()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// waitConnected waits until want connections are open.
func (s *slowClients) waitConnected(ctx context.Context, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for s.connected.Load() < int64(want) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d slow clients connected after %v", s.connected.Load(), want, timeout)
		}
		sleepCtx(ctx, 20*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func (s *slowClients) stop() {
	s.cancel()
	s.wg.Wait()
}
