package tests

// pebble_test.go runs Let's Encrypt's test CA for the ACME tests, as
// acme/pebble_test.go does for the package's own: Pebble with
// pebble-challtestsrv as its DNS (every name is 127.0.0.1), built once per
// run from the versions go.mod pins as tools. A Pebble per test keeps
// orders countable and lets a test stop its CA.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pebbleBinaries builds Pebble into the test's temporary directory (the
// package has no TestMain to remove a shared one; Go's build cache makes
// the second build of a run about 2 s). A failed build skips the test on
// a developer's machine and fails it in CI.
func pebbleBinaries(t *testing.T) (bin, modDir string) {
	t.Helper()
	var b struct {
		bin, modDir string
		err         error
	}
	dir := t.TempDir()
	func() {
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
			"github.com/letsencrypt/pebble/v2/cmd/pebble", "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build of pebble: %v\n%s", err, out)
			return
		}
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
		if err != nil {
			b.err = fmt.Errorf("go list -m pebble: %v", err)
			return
		}
		b.bin, b.modDir = dir, strings.TrimSpace(string(out))
		t.Logf("built pebble in %s", time.Since(start).Round(time.Millisecond))
	}()
	if b.err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pebble is needed and does not build: %v", b.err)
		}
		t.Skipf("pebble does not build here (set CI to make this a failure): %v", b.err)
	}
	return b.bin, b.modDir
}

// pebbleCA is one running Pebble and its DNS server.
type pebbleCA struct {
	t        *testing.T
	dirURL   string
	mgmtURL  string
	rootsPEM string // the CA of Pebble's own HTTPS certificate: tls.acme.ca_roots
	client   *http.Client
	pebble   *exec.Cmd
	out      *syncBuffer
	stopped  atomic.Bool
}

// pebbleOpts: the ports the CA validates on (berth's listeners), how long
// its certificates live, and for a network namespace the command prefix
// and a dialer into it.
type pebbleOpts struct {
	httpPort, tlsPort int
	life              time.Duration
	prefix            []string
	dial              func(ctx context.Context, network, addr string) (net.Conn, error)
}

// loopbackPort is a free TCP port on 127.0.0.1 (in the test's own network
// namespace: one of the test's making starts with all of them free).
func loopbackPort(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

func startPebble(t *testing.T, o pebbleOpts) *pebbleCA {
	t.Helper()
	bin, modDir := pebbleBinaries(t)
	dir := t.TempDir()
	p := &pebbleCA{t: t, out: &syncBuffer{}}
	// Pebble's own ports (14000, 15000 as in its docs) in a namespace of
	// the test's, where every port is free; else free ones.
	dnsPort, dnsMgmt, listenPort, mgmtPort := 8053, 8055, 14000, 15000
	if o.prefix == nil {
		dnsPort, dnsMgmt, listenPort, mgmtPort = udpTCPPort(t), loopbackPort(t), loopbackPort(t), loopbackPort(t)
	}
	cmdOf := func(args ...string) *exec.Cmd {
		argv := append(append([]string{}, o.prefix...), args...)
		return exec.Command(argv[0], argv[1:]...)
	}
	dnsCmd := cmdOf(filepath.Join(bin, "pebble-challtestsrv"),
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", "127.0.0.1:"+strconv.Itoa(dnsPort),
		"-management", "127.0.0.1:"+strconv.Itoa(dnsMgmt),
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	dnsCmd.Stdout, dnsCmd.Stderr = p.out, p.out
	if err := dnsCmd.Start(); err != nil {
		t.Fatalf("starting pebble-challtestsrv: %v", err)
	}
	t.Cleanup(func() { dnsCmd.Process.Kill(); dnsCmd.Wait() })

	listen := "127.0.0.1:" + strconv.Itoa(listenPort)
	mgmt := "127.0.0.1:" + strconv.Itoa(mgmtPort)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             filepath.Join(modDir, "test/certs/localhost/cert.pem"),
		"privateKey":              filepath.Join(modDir, "test/certs/localhost/key.pem"),
		"httpPort":                o.httpPort,
		"tlsPort":                 o.tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		// One profile: Pebble picks one at random for an order that
		// names none, and berth names none.
		"profiles": map[string]any{"default": map[string]any{"description": "the test's", "validityPeriod": int(o.life / time.Second)}},
	}}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	p.pebble = cmdOf(filepath.Join(bin, "pebble"), "-config", cfgFile, "-dnsserver", "127.0.0.1:"+strconv.Itoa(dnsPort))
	p.pebble.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after a random 0-15 s
		"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce
		"PEBBLE_AUTHZREUSE=0",      // every order validates again: renewals answer challenges too
	)
	p.pebble.Stdout, p.pebble.Stderr = p.out, p.out
	if err := p.pebble.Start(); err != nil {
		t.Fatalf("starting pebble: %v", err)
	}
	t.Cleanup(p.stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble's log:\n%s", p.out.String())
		}
	})
	p.rootsPEM = filepath.Join(modDir, "test/certs/pebble.minica.pem")
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(p.rootsPEM)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("pebble's test root %s: %v", p.rootsPEM, err)
	}
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: o.dial}}
	p.dirURL = "https://" + listen + "/dir"
	p.mgmtURL = "https://" + mgmt
	waitFor(t, 30*time.Second, "pebble's directory to answer", func() bool {
		resp, err := p.client.Get(p.dirURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// stop kills Pebble: a CA that is down.
func (p *pebbleCA) stop() {
	if p.stopped.Swap(true) {
		return
	}
	p.pebble.Process.Kill()
	p.pebble.Wait()
}

// orders counts the orders Pebble received.
func (p *pebbleCA) orders() int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Added order") {
			n++
		}
	}
	return n
}

// issuingRoots is the root Pebble signs certificates under.
func (p *pebbleCA) issuingRoots() *x509.CertPool {
	p.t.Helper()
	resp, err := p.client.Get(p.mgmtURL + "/roots/0")
	if err != nil {
		p.t.Fatalf("pebble's root: %v", err)
	}
	defer resp.Body.Close()
	pem, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		p.t.Fatalf("pebble's root: no PEM in %q", pem)
	}
	return pool
}

// netns is a network namespace of the test's own, with loopback up: ports
// 80 and 443 are free there whatever the host runs.
type netns struct {
	name string
	path string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	requireTool(t, "ip")
	n := &netns{name: fmt.Sprintf("bt-acme-%d", time.Now().UnixNano()%1e9)}
	n.path = "/run/netns/" + n.name
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	if out, err := exec.Command("ip", "-n", n.name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v %s", err, out)
	}
	return n
}

// prefix runs a command inside the namespace.
func (n *netns) prefix() []string { return []string{"ip", "netns", "exec", n.name} }

// dial connects from inside the namespace: a socket belongs to the
// namespace of the thread that makes it, so the dial runs on a thread
// moved there and back. The thread is not thrown away (a goroutine ending
// locked would end it): a child the test started from that thread, berth
// with its Pdeathsig, would be killed with it.
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer home.Close()
		f, err := os.Open(n.path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", n.path, err)}
			return
		}
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		ch <- result{c, err}
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the goroutine ends locked and the thread goes with it
	}()
	r := <-ch
	return r.c, r.err
}
