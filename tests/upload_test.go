package tests

// Uploads through the real binary: proxy.body_buffer_size decides which
// request bodies stay in the proxy's memory and which go to a temp file.
// The proxy's temp files are unlinked as soon as they are made, so they
// are counted by an inotify watch on its TMPDIR rather than by looking.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hashApp answers the sha256 and length of the request body it read.
const hashApp = `
import hashlib

def application(environ, start_response):
    h = hashlib.sha256()
    n = 0
    inp = environ["wsgi.input"]
    while True:
        chunk = inp.read(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    body = ("%s %d" % (h.hexdigest(), n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// spillWatch counts the request bodies the proxy writes to temp files in
// dir, from the files created there (berth-body-*).
type spillWatch struct {
	t  *testing.T
	fd int
}

func watchSpills(t *testing.T, dir string) *spillWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		t.Fatalf("inotify watch %s: %v", dir, err)
	}
	return &spillWatch{t: t, fd: fd}
}

// count returns the temp files created since the last call. The proxy
// makes the file before it sends the body on, so once the response has
// arrived its event is queued.
func (w *spillWatch) count() int {
	n := 0
	buf := make([]byte, 64<<10)
	for {
		got, err := unix.Read(w.fd, buf)
		if err == unix.EAGAIN {
			return n
		}
		if err != nil {
			w.t.Fatalf("inotify read: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= got; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
			if strings.HasPrefix(name, "berth-body-") {
				n++
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

func uploadBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>12)
	}
	return b
}

// upload posts body to url (chunked when chunked) and checks that the app
// read exactly those bytes.
func upload(c *http.Client, url string, body []byte, chunked bool) error {
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(bytes.NewReader(body[:len(body)/2]), bytes.NewReader(body[len(body)/2:]))
	}
	req, _ := http.NewRequest("POST", url, r)
	if chunked {
		req.ContentLength = -1
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	if want := fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), len(body)); resp.StatusCode != 200 || string(got) != want {
		return fmt.Errorf("%d bytes: %d %q, want 200 %q", len(body), resp.StatusCode, got, want)
	}
	return nil
}

func uploadConfig(bodyBuffer string) string {
	return fmt.Sprintf("workers: {count: 2}\napp: {chdir: $APP, python: $PY}\nproxy: {access_log: 'off', max_body_size: 8Mi, body_buffer_size: %s}\n", bodyBuffer)
}

func TestUploadBodyBuffer(t *testing.T) {
	tmp := t.TempDir()
	spills := watchSpills(t, tmp)
	b := startBerth(t, berthOpts{
		config: uploadConfig("2M"),
		app:    map[string]string{"wsgi.py": hashApp},
		env:    []string{"TMPDIR=" + tmp},
	})
	const limit = 2000000 // 2M: sizes with a unit are powers of 1000
	c := &http.Client{Timeout: 30 * time.Second}
	for _, tc := range []struct {
		size    int
		chunked bool
		spilled bool
	}{
		{1 << 10, false, false},
		{limit, false, false},
		{limit + 1, false, true},
		{3 << 20, false, true},
		{1 << 10, true, false},
		{limit, true, false},
		{limit + 1, true, true},
		{3 << 20, true, true},
	} {
		if err := upload(c, b.url("/"), uploadBody(tc.size), tc.chunked); err != nil {
			t.Fatalf("chunked %v: %v", tc.chunked, err)
		}
		want := 0
		if tc.spilled {
			want = 1
		}
		if got := spills.count(); got != want {
			t.Errorf("%d bytes (chunked %v): %d temp files made, want %d", tc.size, tc.chunked, got, want)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("files left in TMPDIR: %v", left)
	}
	if t.Failed() {
		return
	}

	// body_buffer_size reloads in the proxy: uploads under way through two
	// reloads all succeed, and the 100 KB body that fit 2M spills with 16Ki.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok int
	var failures []string
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := &http.Client{Timeout: 30 * time.Second}
			body := uploadBody(50000 + i*20000)
			for ctx.Err() == nil {
				err := upload(c, b.url("/"), body, i%2 == 1)
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					ok++
				}
				mu.Unlock()
			}
		}(i)
	}
	probe := uploadBody(100000)
	for _, step := range []struct {
		value   string
		spilled bool
	}{{"16Ki", true}, {"2M", false}} {
		t0 := time.Now()
		b.rewrite(uploadConfig(step.value))
		if st := b.waitReloadAfter(t0, "body_buffer_size "+step.value+" applied"); !st.LastReload.OK {
			t.Fatalf("reload to %s refused: %s", step.value, st.LastReload.Message)
		}
		time.Sleep(300 * time.Millisecond) // uploads run on the new value
		spills.count()
		if err := upload(c, b.url("/"), probe, false); err != nil {
			t.Fatal(err)
		}
		// The load's bodies spill too while the limit is 16Ki: only the
		// direction is checked.
		if got := spills.count(); (got > 0) != step.spilled {
			t.Errorf("with body_buffer_size %s: %d temp files around a 100000-byte upload; want spilled %v", step.value, got, step.spilled)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("uploads during the reloads: %d ok, %d failed", ok, len(failures))
	if len(failures) > 0 || ok == 0 {
		t.Fatalf("uploads failed during reloads: %d ok, failures %v", ok, failures[:min(len(failures), 5)])
	}
	if left, _ := os.ReadDir(filepath.Clean(tmp)); len(left) != 0 {
		t.Errorf("files left in TMPDIR: %v", left)
	}
}
