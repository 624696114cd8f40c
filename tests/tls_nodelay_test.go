package tests

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestTLSClientWithoutNoDelay: a client that leaves Nagle on (no
// TCP_NODELAY, as many service-to-service clients do) gets its answer on a
// new TLS connection as fast as one that sets it. It used to wait about
// 44 ms more per connection: the request waited for the ACK of the client's
// Finished, which the server's kernel delayed (old tree: 45.8 ms, now 2.8).
func TestTLSClientWithoutNoDelay(t *testing.T) {
	certDir := t.TempDir()
	writeCert(t, certDir, "localhost")
	addr := freeAddr(t)
	startBerth(t, berthOpts{config: fmt.Sprintf("listen: [\"https://%s\"]\ntls:\n  certificates: [{cert: %s/tls.crt, key: %s/tls.key}]\nworkers: {count: 1}\n",
		addr, certDir, certDir), app: map[string]string{"wsgi.py": okApp}})
	mean := func(noDelay bool, proto string) time.Duration {
		const n = 10
		var total time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetNoDelay(noDelay)
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{proto}})
			req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
			if err := req.Write(tc); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(tc), req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			c.Close()
			total += time.Since(start)
		}
		return total / n
	}
	with, without := mean(true, "http/1.1"), mean(false, "http/1.1")
	t.Logf("new TLS connection + request: %s with TCP_NODELAY, %s without", with, without)
	if without > with+20*time.Millisecond {
		t.Errorf("without TCP_NODELAY a new TLS request takes %s, with it %s: a delayed ACK is in the way", without, with)
	}
}
