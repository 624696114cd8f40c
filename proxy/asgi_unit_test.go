package proxy

import (
	"net/http/httptest"
	"testing"

	"github.com/berth-dev/berth/control"
)

func TestMountRoutes(t *testing.T) {
	st, err := compile(control.Proxy{Mounts: []control.Mount{
		{Pool: "rt", URLs: []string{"/ws", "/events/"}},
		{Pool: "deep", URLs: []string{"/events/admin/"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/": "", "/ws": "rt", "/ws/": "rt", "/ws/x": "rt", "/wsx": "", "/events": "", "/events/": "rt",
		"/events/1": "rt", "/events/admin/x": "deep", "/static/ws": "",
	} {
		if got := st.poolFor(path); got != want {
			t.Errorf("route(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestIsWebsocket(t *testing.T) {
	for _, c := range []struct {
		method, upgrade, connection string
		want                        bool
	}{
		{"GET", "websocket", "Upgrade", true},
		{"GET", "WebSocket", "keep-alive, upgrade", true},
		{"POST", "websocket", "Upgrade", false},
		{"GET", "h2c", "Upgrade", false},
		{"GET", "websocket", "keep-alive", false},
	} {
		r := httptest.NewRequest(c.method, "/", nil)
		r.Header.Set("Upgrade", c.upgrade)
		r.Header.Set("Connection", c.connection)
		if got := isWebsocket(r); got != c.want {
			t.Errorf("%s Upgrade %q Connection %q: %v, want %v", c.method, c.upgrade, c.connection, got, c.want)
		}
	}
}
