package tests

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRequestIDDjango: the ID a Django view sees in request.META is the one
// in the response and in the access log; a client's own X-Request-ID is
// replaced unless it comes from a trusted proxy; traceparent reaches the
// view untouched.
func TestRequestIDDjango(t *testing.T) {
	site := djangoSite(t)
	b := startBerth(t, berthOpts{config: djangoConfig(site, `workers: {count: 1}
proxy:
  trusted_proxies: [127.0.0.1]
  access_log: 'id=$request_id "$request" $status worker=$worker'
`)})
	// The trusted proxy is 127.0.0.1; a client on 127.0.0.2 is not one.
	client := func(from string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
		}}
	}
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, tc := range []struct {
		name, from, sent string
		kept             bool
	}{
		{"none sent", "127.0.0.2", "", false},
		{"untrusted client's replaced", "127.0.0.2", "spoofed-id-1", false},
		{"trusted proxy's kept", "127.0.0.1", "edge-4711", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", b.url("/request-id"), nil)
			req.Header.Set("Traceparent", traceparent)
			if tc.sent != "" {
				req.Header.Set("X-Request-ID", tc.sent)
			}
			resp, err := client(tc.from).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var seen struct {
				RequestID   string `json:"request_id"`
				Traceparent string `json:"traceparent"`
			}
			err = json.NewDecoder(resp.Body).Decode(&seen)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%d: %v", resp.StatusCode, err)
			}
			id := resp.Header.Get("X-Request-Id")
			if seen.RequestID != id || id == "" {
				t.Errorf("the view saw X-Request-ID %q, the response says %q", seen.RequestID, id)
			}
			if tc.kept && id != tc.sent || !tc.kept && !generated.MatchString(id) {
				t.Errorf("sent %q from %s, got ID %q", tc.sent, tc.from, id)
			}
			if seen.Traceparent != traceparent {
				t.Errorf("traceparent reached the view as %q", seen.Traceparent)
			}
			b.waitLog(`id=`+id+` "GET /request-id HTTP/1.1" 200 worker=`, 5*time.Second)
		})
	}
	if strings.Contains(b.logs.String(), "spoofed-id-1") {
		t.Errorf("an untrusted client's ID reached the log:\n%s", b.logs.String())
	}
}
