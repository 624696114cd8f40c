package control

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestMessagesRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ca, cb := NewConn(a), NewConn(b)
	sent := []Message{
		{Type: TypeConfig, Config: &Proxy{MaxBodySize: 1 << 20, QueueTimeout: Duration(30 * time.Second), Static: []Static{{URL: "/static/", Dir: "/app/static"}}}},
		{Type: TypeWorkers, Workers: []Worker{{ID: "1.1", Socket: "/run/berth/w-1.1.sock", Capacity: 2, MaxRequests: 120}, {ID: "2.1", Socket: "/x", Capacity: 1, Draining: true}}},
		{Type: TypeDue, Worker: "1.1"},
		{Type: TypeStats, Stats: &Stats{Workers: map[string]WorkerStats{"1.1": {Requests: 7, InFlight: 1}}, Queue: 3}},
	}
	go func() {
		for _, m := range sent {
			if err := ca.Send(m); err != nil {
				t.Error(err)
			}
		}
		a.Close()
	}()
	for i, want := range sent {
		got, err := cb.Receive()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got.Type != want.Type {
			t.Fatalf("message %d: type %q, want %q", i, got.Type, want.Type)
		}
	}
	if _, err := cb.Receive(); err != io.EOF {
		t.Fatalf("after close: %v, want io.EOF", err)
	}
}

func TestDurationIsAGoDurationString(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(struct {
		io.Reader
		io.Writer
	}{strings.NewReader(`{"type":"config","config":{"timeout":"1m30s","queue_timeout":"bad"}}` + "\n"), &buf})
	if err := c.Send(Message{Type: TypeConfig, Config: &Proxy{Timeout: Duration(90 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"timeout":"1m30s"`) {
		t.Fatalf("encoded %s", buf.String())
	}
	if _, err := c.Receive(); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("a bad duration must be an error naming it, got %v", err)
	}
}
