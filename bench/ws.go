package main

// ws.go: the websocket scenarios' client (github.com/coder/websocket):
// echo round trips on many connections, and idle connections held open
// for the memory figure.

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// runWSEcho opens conns websockets to url (http:// is turned into ws://)
// and has each send a 32-byte message and wait for its echo, again and
// again, for d. The result is shaped like wrk's: RPS is round trips per
// second, P50/P99 their latency, SockErrors the connections that failed.
func runWSEcho(ctx context.Context, conns int, d time.Duration, url string) (wrkResult, error) {
	url = "ws" + strings.TrimPrefix(url, "http")
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		lat     []float64
		trips   atomic.Int64
		errs    atomic.Int64
		firstEr atomic.Value
		wg      sync.WaitGroup
	)
	msg := []byte(strings.Repeat("m", 32))
	start := make(chan struct{})
	var end time.Time
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{}})
			if err != nil {
				errs.Add(1)
				firstEr.CompareAndSwap(nil, err)
				return
			}
			defer c.CloseNow()
			<-start
			local := make([]float64, 0, 4096)
			for time.Now().Before(end) {
				t0 := time.Now()
				if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
					errs.Add(1)
					firstEr.CompareAndSwap(nil, err)
					break
				}
				if _, _, err := c.Read(ctx); err != nil {
					errs.Add(1)
					firstEr.CompareAndSwap(nil, err)
					break
				}
				local = append(local, float64(time.Since(t0).Microseconds())/1000)
				trips.Add(1)
			}
			c.Close(websocket.StatusNormalClosure, "")
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	// Every connection is open (or failed) before the clock starts.
	time.Sleep(200 * time.Millisecond)
	t0 := time.Now()
	end = t0.Add(d)
	close(start)
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	if trips.Load() == 0 {
		if e, ok := firstEr.Load().(error); ok {
			return wrkResult{}, fmt.Errorf("websocket echo: %w", e)
		}
		return wrkResult{}, fmt.Errorf("websocket echo: no round trip")
	}
	sort.Float64s(lat)
	return wrkResult{Requests: trips.Load(), RPS: float64(trips.Load()) / elapsed, P50: percentile(lat, 0.50), P99: percentile(lat, 0.99), SockErrors: errs.Load()}, nil
}

// idleWebsockets opens n websockets to url, each echoing one message so
// the app has accepted it, and returns a function closing them all.
func idleWebsockets(ctx context.Context, n int, url string) (func(), error) {
	url = "ws" + strings.TrimPrefix(url, "http")
	return openMany(n, "idle websockets", func() (func(), error) {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err == nil {
			if err = c.Write(ctx, websocket.MessageText, []byte("hi")); err == nil {
				_, _, err = c.Read(ctx)
			}
		}
		if err != nil {
			if c != nil {
				c.CloseNow()
			}
			return nil, err
		}
		return func() { c.CloseNow() }, nil
	})
}
