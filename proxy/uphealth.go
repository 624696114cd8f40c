package proxy

// uphealth.go: optional active health checks of upstream servers. Every
// interval each server gets one request for the check path; a server that
// fails `fails` checks in a row is out of rotation until it passes
// `passes` in a row. Passive health (max_fails) applies either way.

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/proxy/uwsgi"

	"github.com/berth-dev/berth/control"
)

func (g *group) healthLoop(stop chan struct{}, cfg control.Upstream) {
	defer g.bg.Done()
	every := time.Duration(cfg.HealthInterval)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		g.checkAll(cfg)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// checkAll checks every server of the group at once and applies the
// results.
func (g *group) checkAll(cfg control.Upstream) {
	g.mu.Lock()
	peers := make([]*peer, 0, len(g.peers))
	for _, p := range g.peers {
		if !p.removed && !p.srv.cfg.Down {
			peers = append(peers, p)
		}
	}
	g.mu.Unlock()
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = checkPeer(p, cfg)
		}()
	}
	wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	for i, p := range peers {
		if errs[i] == nil {
			p.hcFails = 0
			p.hcPasses++
			if p.unhealthy && p.hcPasses >= cfg.HealthPasses {
				p.unhealthy = false
				g.ups.logf("upstream %s: server %s passes its health check again: back in rotation", g.name, p.label)
			}
			continue
		}
		p.hcPasses = 0
		p.hcFails++
		if !p.unhealthy && p.hcFails >= cfg.HealthFails {
			p.unhealthy = true
			p.closeIdleLocked()
			g.ups.logf("upstream %s: server %s failed %d health check(s) in a row (%v): out of rotation", g.name, p.label, p.hcFails, errs[i])
		}
	}
}

// checkPeer sends one check request to p: GET the path, passing on a 2xx
// or 3xx answer within the timeout.
func checkPeer(p *peer, cfg control.Upstream) error {
	timeout := time.Duration(cfg.HealthTimeout)
	c, err := net.DialTimeout(p.network, p.addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	host := "localhost"
	if p.network == "tcp" {
		host = p.addr
	}
	path, query, _ := strings.Cut(cfg.HealthPath, "?")
	var req []byte
	if cfg.Protocol == "uwsgi" {
		req = append(req, 0, 0, 0, 0)
		for _, kv := range [][2]string{
			{"REQUEST_METHOD", "GET"}, {"REQUEST_URI", cfg.HealthPath}, {"PATH_INFO", path}, {"QUERY_STRING", query},
			{"SERVER_PROTOCOL", "HTTP/1.1"}, {"REQUEST_SCHEME", "http"}, {"HTTP_HOST", host},
			{"SERVER_NAME", hostOnly(host)}, {"SERVER_PORT", "80"}, {"REMOTE_ADDR", "127.0.0.1"},
			{"HTTP_USER_AGENT", "berth-health-check"},
		} {
			req = uwsgi.AppendVar(req, kv[0], kv[1])
		}
		if err := uwsgi.SetSize(req); err != nil {
			return err
		}
	} else {
		req = fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-health-check\r\nConnection: close\r\n\r\n", cfg.HealthPath, host)
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s answered %s", cfg.HealthPath, resp.Status)
	}
	return nil
}
