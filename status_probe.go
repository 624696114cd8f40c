package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
)

// probeBodyLimit caps what is read of a probe's answer: /livez and /readyz
// answer one short line (the reason when not ok), which goes into the error.
const probeBodyLimit = 512

// probeAdmin asks the admin endpoint at addr for path (/livez or /readyz)
// and returns nil when it answers 200. Otherwise the error says what
// happened: the endpoint not reachable, or its status and reason line.
// `berth status --live` and `--quiet` are the container probes (Kubernetes
// exec probes, podman's HEALTHCHECK): the image has no curl, and an exec
// probe reaches the admin endpoint on the container's loopback, so it need
// not listen on the pod IP.
func probeAdmin(client *http.Client, addr, path string) error {
	resp, err := client.Get("http://admin" + path)
	if err != nil {
		return fmt.Errorf("%s on the admin endpoint %s: %w (is berth running, and is admin.listen %s?)", path, addr, err, addr)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, probeBodyLimit))
	if resp.StatusCode != http.StatusOK {
		why := strings.TrimSpace(string(body))
		if why == "" {
			why = http.StatusText(resp.StatusCode)
		}
		return fmt.Errorf("%s on %s: %d %s", path, addr, resp.StatusCode, why)
	}
	return nil
}
