package tests

// ASGI apps through the real berth as PID 1 (issue 15): Starlette, FastAPI
// and Django's ASGI handler from Debian's packages, websockets with real
// clients (python3-websockets and coder/websocket), and rolls and SIGTERM
// with websockets open, counting every message.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// asgiApp returns the test apps' files for berthOpts.app.
func asgiApp(t testing.TB, names ...string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(repoRoot(), "tests/testdata/asgi", n))
		if err != nil {
			t.Fatal(err)
		}
		files[n] = string(b)
	}
	return files
}

func needPython(t *testing.T, modules ...string) {
	t.Helper()
	for _, m := range modules {
		if out, err := exec.Command(systemPython, "-c", "import "+m).CombinedOutput(); err != nil {
			t.Skipf("python3 module %s missing (tests/install-deps installs it): %s", m, out)
		}
	}
}

func getJSON(t testing.TB, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v in %q", url, err, b)
		}
	}
	return resp.StatusCode
}

func TestASGIStarlette(t *testing.T) {
	needPython(t, "starlette")
	marks := t.TempDir()
	b := startBerth(t, berthOpts{
		app: asgiApp(t, "starlette_app.py"),
		config: fmt.Sprintf(`app: {module: "starlette_app:app", chdir: $APP, python: $PY, env: {GEN: "1", MARKS: %q}}
workers: {count: 2}
proxy: {max_body_size: 4Mi}
`, marks),
	})
	// auto found the coroutine callable: the workers speak ASGI.
	var hello struct {
		Hello   string `json:"hello"`
		Gen     string `json:"gen"`
		Started int    `json:"started"`
		Query   string `json:"query"`
		Client  string `json:"client"`
	}
	if code := getJSON(t, b.url("/?a=1&b=%20x"), &hello); code != 200 || hello.Hello != "world" || hello.Gen != "1" ||
		hello.Started != 1 || hello.Query != "a=1&b=%20x" || hello.Client != "127.0.0.1" {
		t.Fatalf("GET /: %d %+v", code, hello)
	}

	resp, err := http.Post(b.url("/json"), "application/json", strings.NewReader(`{"a": [1, 2, "ü"]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != `{"got":{"a":[1,2,"ü"]},"gen":"1"}` {
		t.Fatalf("POST /json: %d %s", resp.StatusCode, body)
	}

	// A 3 MB body reaches the app in chunks (more_body), within the window.
	big := strings.Repeat("0123456789abcdef", 3<<20/16)
	resp, err = http.Post(b.url("/upload"), "application/octet-stream", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	var up struct{ Bytes, Chunks int }
	json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	if resp.StatusCode != 200 || up.Bytes != len(big) || up.Chunks < 2 {
		t.Fatalf("POST /upload: %d %+v, want %d bytes in several chunks", resp.StatusCode, up, len(big))
	}

	// Server-sent events, one a second, each relayed as it comes.
	start := time.Now()
	resp, err = http.Get(b.url("/events?n=3&every=1"))
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("events: Content-Type %q", ct)
	}
	var at []time.Duration
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			at = append(at, time.Since(start))
		}
	}
	resp.Body.Close()
	if len(at) != 3 || at[0] > 800*time.Millisecond || at[1]-at[0] < 800*time.Millisecond || at[2]-at[1] < 800*time.Millisecond {
		t.Fatalf("events arrived at %v, want 3 about a second apart, the first at once", at)
	}

	if code, _ := b.get("/fail"); code != 500 {
		t.Errorf("GET /fail: %d, want 500", code)
	}
	b.waitLog(`"GET /events?n=3&every=1 HTTP/1.1" 200`, 5*time.Second)

	// Lifespan: each worker ran startup before it was ready, and runs
	// shutdown when berth stops.
	if n := countMarks(t, marks, "startup."); n != 2 {
		t.Errorf("%d lifespan startups, want 2 (one per worker)", n)
	}
	b.signal(syscall.SIGTERM)
	if code := b.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if n := countMarks(t, marks, "shutdown."); n != 2 {
		t.Errorf("%d lifespan shutdowns, want 2", n)
	}
}

func countMarks(t testing.TB, dir, prefix string) int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			n++
		}
	}
	return n
}

func TestASGIFastAPI(t *testing.T) {
	needPython(t, "fastapi")
	b := startBerth(t, berthOpts{
		app:    asgiApp(t, "fastapi_app.py"),
		config: "app: {module: \"fastapi_app:app\", interface: asgi, chdir: $APP, python: $PY}\nworkers: {count: 1}\n",
	})
	var item map[string]any
	if code := getJSON(t, b.url("/items/42?q=hi"), &item); code != 200 || item["item_id"] != 42.0 || item["q"] != "hi" {
		t.Fatalf("GET /items/42: %d %v", code, item)
	}
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"name": "pen", "price": 2.5}`, 200, `{"name":"pen","price_with_tax":3.0}`},
		{`{"name": "pen"}`, 422, `"price"`},
	} {
		resp, err := http.Post(b.url("/items"), "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(got), c.want) {
			t.Errorf("POST /items %s: %d %s, want %d with %s", c.body, resp.StatusCode, got, c.code, c.want)
		}
	}
}

// TestASGIDjango serves a Django project that has asgi.py and no wsgi.py:
// found with no app.module, served through Django's ASGI handler.
func TestASGIDjango(t *testing.T) {
	needPython(t, "django")
	files := map[string]string{}
	for _, n := range []string{"__init__.py", "settings.py", "urls.py", "views.py", "asgi.py"} {
		for k, v := range asgiApp(t, "djasync/djasync/"+n) {
			files[strings.TrimPrefix(k, "djasync/")] = v
		}
	}
	b := startBerth(t, berthOpts{app: files, config: "workers: {count: 1}\n"})
	b.waitLog("djasync.asgi:application", 5*time.Second)
	var v map[string]any
	if code := getJSON(t, b.url("/hello?q=x"), &v); code != 200 || v["view"] != "async" || v["q"] != "x" || v["path"] != "/hello" {
		t.Fatalf("GET /hello: %d %v", code, v)
	}
	resp, err := http.Get(b.url("/stream?n=4"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "tick 0\ntick 1\ntick 2\ntick 3\n" || len(resp.TransferEncoding) == 0 {
		t.Fatalf("GET /stream: %d %v %q, want 4 ticks, chunked", resp.StatusCode, resp.TransferEncoding, body)
	}
	if !strings.Contains(b.logs.String(), "does not support the lifespan protocol") {
		t.Errorf("Django's handler refuses lifespan; the worker should say it goes on without it")
	}
}

// TestASGIWebsocketsPython drives the websockets with Debian's
// python3-websockets client: text, binary, a large message, a subprotocol,
// response headers from the app, closes with code and reason both ways,
// and a handshake the app refuses.
func TestASGIWebsocketsPython(t *testing.T) {
	needPython(t, "starlette", "websockets")
	b := startBerth(t, berthOpts{
		app:    asgiApp(t, "starlette_app.py"),
		config: "app: {module: \"starlette_app:app\", chdir: $APP, python: $PY, env: {GEN: \"7\"}}\nworkers: {count: 1}\n",
	})
	client := filepath.Join(repoRoot(), "tests/testdata/asgi/wsclient.py")
	out, err := exec.Command(systemPython, client, "ws://"+b.addr).CombinedOutput()
	if err != nil {
		t.Fatalf("wsclient: %v\n%s", err, out)
	}
	var got struct {
		Subprotocol string `json:"subprotocol"`
		XGen        string `json:"x_gen"`
		Hello       string `json:"hello"`
		Text        string `json:"text"`
		BinaryOK    bool   `json:"binary_ok"`
		BigLen      int    `json:"big_len"`
		AppClose    []any  `json:"app_close"`
		Refused     any    `json:"refused"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("wsclient output %q: %v", out, err)
	}
	if got.Subprotocol != "echo.v1" || got.XGen != "7" || got.Hello != "hello 7" || got.Text != "text message ü" ||
		!got.BinaryOK || got.BigLen != 300000 || fmt.Sprint(got.AppClose) != "[4001 app says bye]" || got.Refused != 403.0 {
		t.Fatalf("wsclient: %+v", got)
	}
	var last struct{ Close []any }
	getJSON(t, b.url("/ws-last"), &last)
	if fmt.Sprint(last.Close) != "[4002 client says bye]" {
		t.Fatalf("the app saw the client's close as %v, want [4002 client says bye]", last.Close)
	}
	b.waitLog(`"GET /ws HTTP/1.1" 101`, 5*time.Second)
}

// wsConn is one test websocket client counting its messages.
type wsConn struct {
	c   *websocket.Conn
	gen string
}

func dialWS(ctx context.Context, url string) (*wsConn, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	_, hello, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, err
	}
	return &wsConn{c: c, gen: strings.TrimPrefix(string(hello), "hello ")}, nil
}

// TestASGIThousandWebsockets holds 1,000 websockets open at once on two
// workers and has every one echo its messages.
func TestASGIThousandWebsockets(t *testing.T) {
	needPython(t, "starlette")
	const n = 1000
	b := startBerth(t, berthOpts{
		app:    asgiApp(t, "starlette_app.py"),
		config: "app: {module: \"starlette_app:app\", chdir: $APP, python: $PY}\nworkers: {count: 2, concurrency: 1000}\nproxy: {access_log: off}\n",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conns := make([]*wsConn, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 50)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialWS(ctx, "ws://"+b.addr+"/ws")
			if err != nil {
				if failed.Add(1) < 5 {
					t.Errorf("dial %d: %v", i, err)
				}
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d websockets failed to open", failed.Load(), n)
	}
	waitFor(t, 10*time.Second, "1000 websockets in berth_websockets_open", func() bool {
		return strings.Contains(adminMetrics(t, b), "berth_websockets_open 1000")
	})
	// Every socket, all open at once, echoes three messages.
	var echoed atomic.Int64
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 3; k++ {
				msg := fmt.Sprintf("%d/%d", i, k)
				if err := c.c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Errorf("write %s: %v", msg, err)
					return
				}
				_, got, err := c.c.Read(ctx)
				if err != nil || string(got) != msg {
					t.Errorf("echo of %s: %q %v", msg, got, err)
					return
				}
				echoed.Add(1)
			}
		}()
	}
	wg.Wait()
	if echoed.Load() != 3*n {
		t.Fatalf("%d messages echoed, want %d", echoed.Load(), 3*n)
	}
	for _, c := range conns {
		c.c.Close(websocket.StatusNormalClosure, "")
	}
	waitFor(t, 10*time.Second, "every websocket closed", func() bool {
		return strings.Contains(adminMetrics(t, b), "berth_websockets_open 0")
	})
}

func adminMetrics(t testing.TB, b *berthProc) string {
	resp, err := http.Get("http://" + b.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// echoClient keeps one websocket busy: send a message, wait for its echo,
// again. When the server closes, the message in flight (if any) is sent
// again on the next connection. Each connection is tagged; the app writes
// how many messages it was handed on it, and the test checks the client got
// an answer to every one: a drain hands the app no message it does not
// answer (one the client sent after the drain began is not handed over,
// and the close code says to send it again).
type echoClient struct {
	id       int
	url      string
	mu       sync.Mutex
	byConn   map[string]int64 // tag → answers received on it
	sent     atomic.Int64     // messages written
	answered atomic.Int64     // echoes received, each checked in order
	resent   atomic.Int64
	closes   sync.Map // close code → count
	gens     sync.Map // generation → connections
	err      atomic.Value
}

func (e *echoClient) fail(err error) { e.err.CompareAndSwap(nil, err) }

// run talks until stop is closed; with reconnect it dials again after a
// close, else it returns at the first close.
func (e *echoClient) run(ctx context.Context, stop <-chan struct{}, reconnect bool) {
	next := 0
	for conn := 0; ; conn++ {
		tag := fmt.Sprintf("%d.%d", e.id, conn)
		c, err := dialWS(ctx, e.url+"?tag="+tag)
		if err != nil {
			e.fail(fmt.Errorf("client %d: dial: %w", e.id, err))
			return
		}
		v, _ := e.gens.LoadOrStore(c.gen, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		closed := false
		for !closed {
			select {
			case <-stop:
				c.c.Close(websocket.StatusNormalClosure, "")
				return
			default:
			}
			msg := fmt.Sprintf("%d:%d", e.id, next)
			if err := c.c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				closed = e.closed(err)
				break
			}
			e.sent.Add(1)
			_, got, err := c.c.Read(ctx)
			if err != nil {
				closed = e.closed(err)
				e.resent.Add(1) // unanswered: sent again on the next connection
				break
			}
			if string(got) != msg {
				e.fail(fmt.Errorf("client %d: echo %q, want %q (a message lost or out of order)", e.id, got, msg))
				return
			}
			e.answered.Add(1)
			e.mu.Lock()
			if e.byConn == nil {
				e.byConn = map[string]int64{}
			}
			e.byConn[tag]++
			e.mu.Unlock()
			next++
			time.Sleep(20 * time.Millisecond)
		}
		c.c.CloseNow()
		if !reconnect {
			return
		}
	}
}

func (e *echoClient) closed(err error) bool {
	code := websocket.CloseStatus(err)
	v, _ := e.closes.LoadOrStore(int(code), new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	return true
}

// checkHanded compares, connection by connection, what the app was handed
// (its ws.TAG files in marks) with the answers the client got.
func checkHanded(t *testing.T, marks string, clients []*echoClient) {
	t.Helper()
	for _, c := range clients {
		c.mu.Lock()
		got := c.byConn
		c.mu.Unlock()
		for tag, answered := range got {
			var handed []byte
			waitFor(t, 10*time.Second, "the app's count for connection "+tag, func() bool {
				var err error
				handed, err = os.ReadFile(filepath.Join(marks, "ws."+tag))
				return err == nil
			})
			if string(handed) != fmt.Sprint(answered) {
				t.Errorf("connection %s: the app was handed %s messages, the client got %d answers", tag, handed, answered)
			}
		}
	}
}

func sumMap(m *sync.Map) map[any]int64 {
	out := map[any]int64{}
	m.Range(func(k, v any) bool {
		out[k] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// TestASGIRollAndSIGTERMWithOpenWebsockets reloads the config (a new
// worker generation) and then stops berth while 100 websockets exchange
// messages: every message handed to the app is answered, every socket ends
// with 1012 on the roll and 1001 on SIGTERM (never an abrupt drop), and the
// clients that reconnect land on the new generation.
func TestASGIRollAndSIGTERMWithOpenWebsockets(t *testing.T) {
	needPython(t, "starlette")
	const n = 100
	marks := t.TempDir()
	cfg := func(gen string) string {
		return fmt.Sprintf("app: {module: \"starlette_app:app\", chdir: $APP, python: $PY, env: {GEN: %q, MARKS: %q}}\n"+
			"workers: {count: 2, graceful_timeout: 10s, drain_timeout: 1s}\nproxy: {access_log: off}\n", gen, marks)
	}
	b := startBerth(t, berthOpts{app: asgiApp(t, "starlette_app.py"), config: cfg("1")})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// Phase 1: a roll. Clients reconnect after their close.
	clients := make([]*echoClient, n)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = &echoClient{id: i, url: "ws://" + b.addr + "/ws"}
		wg.Add(1)
		go func() { defer wg.Done(); clients[i].run(ctx, stop, true) }()
	}
	waitFor(t, 20*time.Second, "100 clients talking to generation 1", func() bool {
		for _, c := range clients {
			if c.answered.Load() < 3 {
				return false
			}
		}
		return true
	})
	rewrite := strings.ReplaceAll(strings.ReplaceAll(cfg("2"), "$APP", b.appDir), "$PY", systemPython)
	rewrite = fmt.Sprintf("listen: [%q]\nadmin: {listen: %q}\n", b.addr, b.admin) + rewrite
	if err := os.WriteFile(b.cfgPath, []byte(rewrite), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every client on generation 2", func() bool {
		for _, c := range clients {
			if v, ok := c.gens.Load("2"); !ok || v.(*atomic.Int64).Load() == 0 {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	var sent, answered, resent int64
	closes := map[any]int64{}
	for _, c := range clients {
		if err := c.err.Load(); err != nil {
			t.Fatal(err)
		}
		sent += c.sent.Load()
		answered += c.answered.Load()
		resent += c.resent.Load()
		for k, v := range sumMap(&c.closes) {
			closes[k] += v
		}
	}
	t.Logf("roll: %d messages sent, %d answered, %d sent again after the close; closes %v", sent, answered, resent, closes)
	if closes[1012] != n || len(closes) != 1 {
		t.Fatalf("closes on the roll: %v, want %d × 1012 and nothing else", closes, n)
	}
	if sent != answered+resent {
		t.Fatalf("%d sent, %d answered, %d unanswered at a close: a message went missing", sent, answered, resent)
	}
	checkHanded(t, marks, clients)

	// Phase 2: SIGTERM with 100 sockets open: each closes with 1001.
	clients = make([]*echoClient, n)
	stop = make(chan struct{})
	for i := range clients {
		clients[i] = &echoClient{id: i, url: "ws://" + b.addr + "/ws"}
		wg.Add(1)
		go func() { defer wg.Done(); clients[i].run(ctx, stop, false) }()
	}
	waitFor(t, 20*time.Second, "100 clients talking", func() bool {
		for _, c := range clients {
			if c.answered.Load() < 3 {
				return false
			}
		}
		return true
	})
	b.signal(syscall.SIGTERM)
	wg.Wait()
	closes = map[any]int64{}
	sent, answered, resent = 0, 0, 0
	for _, c := range clients {
		if err := c.err.Load(); err != nil {
			t.Fatal(err)
		}
		sent += c.sent.Load()
		answered += c.answered.Load()
		resent += c.resent.Load()
		for k, v := range sumMap(&c.closes) {
			closes[k] += v
		}
	}
	t.Logf("SIGTERM: %d messages sent, %d answered, %d unanswered at the close; closes %v", sent, answered, resent, closes)
	if closes[1001] != n || len(closes) != 1 {
		t.Fatalf("closes on SIGTERM: %v, want %d × 1001", closes, n)
	}
	if sent != answered+resent {
		t.Fatalf("%d sent, %d answered, %d unanswered: a message went missing", sent, answered, resent)
	}
	if code := b.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	checkHanded(t, marks, clients)
}

// TestASGIBesideWSGI mounts the Starlette app's websocket and events URLs
// on an ASGI pool of its own beside a WSGI app serving the rest.
func TestASGIBesideWSGI(t *testing.T) {
	needPython(t, "starlette")
	files := asgiApp(t, "starlette_app.py")
	files["wsgi.py"] = "def application(environ, start_response):\n" +
		"    start_response('200 OK', [('Content-Type', 'text/plain')])\n" +
		"    return [b'wsgi ' + environ['PATH_INFO'].encode()]\n"
	b := startBerth(t, berthOpts{app: files, config: `app: {module: "wsgi:application", chdir: $APP, python: $PY, env: {GEN: "m"}}
workers: {count: 2}
mounts:
  - name: realtime
    urls: [/ws, /events]
    module: "starlette_app:app"
    workers: {count: 1, concurrency: 50}
`})
	for path, want := range map[string]string{"/": "wsgi /", "/json": "wsgi /json", "/wsx": "wsgi /wsx"} {
		if code, body := b.get(path); code != 200 || body != want {
			t.Errorf("GET %s: %d %q, want the WSGI app's %q", path, code, body, want)
		}
	}
	if code, body := b.get("/events?n=2&every=0.1"); code != 200 || strings.Count(body, "data: ") != 2 {
		t.Errorf("GET /events: %d %q, want 2 events from the ASGI pool", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialWS(ctx, "ws://"+b.addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.c.Write(ctx, websocket.MessageText, []byte("over the mount")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.c.Read(ctx); err != nil || string(got) != "over the mount" || c.gen != "m" {
		t.Fatalf("echo: %q %v (gen %q)", got, err, c.gen)
	}
	c.c.Close(websocket.StatusNormalClosure, "")
	st := b.status()
	for _, id := range []string{`"id": "1.1"`, `"id": "2.1"`, `"id": "realtime.1.1"`} {
		if !strings.Contains(st, id) {
			t.Errorf("/status lacks worker %s:\n%s", id, st)
		}
	}
}
