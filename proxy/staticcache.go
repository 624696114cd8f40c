package proxy

// staticcache.go: static files the way a CDN origin serves them. Names
// with a content hash (Django's ManifestStaticFilesStorage writes
// name.<12 hex>.ext) never change, so they are cached for a year and
// marked immutable; other files get the mapping's `cache` max-age.
// Compressible files are sent compressed: from a precompressed sidecar
// (file.br, file.gz, as WhiteNoise and build steps write them) when there
// is one not older than the file, else compressed once and kept in a
// bounded in-memory cache. Each variant has its own ETag, so conditional
// requests (304) work per encoding.

import (
	"bytes"
	"container/list"
	"io"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

const (
	// immutableCache is what a content-hashed name gets.
	immutableCache = "public, max-age=31536000, immutable"
	// staticZipMax: larger files are not compressed in memory (they
	// should have a sidecar); staticZipCacheSize bounds the cache.
	staticZipMax       = 8 << 20
	staticZipCacheSize = 64 << 20
)

var immutableValue = []string{immutableCache}

// isHashedName says whether a file name carries a content hash the way
// Django's ManifestStaticFilesStorage writes it: a dot, 12 lower-case hex
// digits, a dot, then the extension (app.3f2a9c0b1d4e.css).
func isHashedName(rel string) bool {
	name := path.Base(rel)
	for i := 0; i+14 <= len(name); i++ {
		if name[i] != '.' || name[i+13] != '.' || i == 0 {
			continue
		}
		hex := true
		for _, c := range []byte(name[i+1 : i+13]) {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				hex = false
				break
			}
		}
		if hex && i+14 < len(name) {
			return true
		}
	}
	return false
}

// cacheHeaders sets Cache-Control for a static file.
func cacheHeaders(h http.Header, m *mount, rel string) {
	if isHashedName(rel) {
		h["Cache-Control"] = immutableValue
		return
	}
	h["Cache-Control"] = m.cacheControl
}

// serveEncoded serves a compressible static file in an encoding the client
// takes, from a sidecar or the memory cache; false: serve the file as it is
// (Vary is set either way).
func (s *Server) serveEncoded(w http.ResponseWriter, r *http.Request, st *settings, m *mount, rel string, f *staticFile, fi fs.FileInfo) bool {
	h := w.Header()
	addVary(h)
	qBr, qGzip := acceptQ(r.Header["Accept-Encoding"])
	if qBr <= 0 && qGzip <= 0 {
		return false
	}
	order := [2]uint8{encBrotli, encGzip}
	if qGzip > qBr {
		order = [2]uint8{encGzip, encBrotli}
	}
	for _, enc := range order {
		if enc == encBrotli && qBr <= 0 || enc == encGzip && qGzip <= 0 {
			continue
		}
		if s.serveSidecar(w, r, m, rel, fi, enc) {
			return true
		}
	}
	cs := st.comp
	if cs == nil || fi.Size() < cs.minLength || fi.Size() > staticZipMax || !cs.typeMatches(h["Content-Type"][0]) {
		return false
	}
	enc := order[0]
	if enc == encBrotli && qBr <= 0 || enc == encGzip && qGzip <= 0 {
		enc = order[1]
	}
	data, ok := s.zips.get(f.Name(), fi, enc)
	if !ok {
		raw, err := io.ReadAll(io.LimitReader(f, staticZipMax+1))
		if err != nil || int64(len(raw)) != fi.Size() {
			return false // the file changed while read: send it as it is (ServeContent seeks back)
		}
		var sink byteSink
		e := getEncoder(enc, true, &sink)
		e.Write(raw)
		e.Close()
		putEncoder(enc, true, e)
		data = sink.b
		s.zips.put(f.Name(), fi, enc, data)
		s.edge.staticZipped.Set(float64(s.zips.size()))
	}
	h["Content-Encoding"] = []string{encNames[enc]}
	h["Etag"] = []string{nginxETag(fi, "-"+encNames[enc])}
	s.edge.compressed.WithLabelValues(encNames[enc], "static_memory").Inc()
	http.ServeContent(w, r, "", fi.ModTime(), bytes.NewReader(data))
	return true
}

// serveSidecar serves rel's .br or .gz sidecar when there is a regular one
// no older than the file itself.
func (s *Server) serveSidecar(w http.ResponseWriter, r *http.Request, m *mount, rel string, fi fs.FileInfo, enc uint8) bool {
	ext := ".br"
	if enc == encGzip {
		ext = ".gz"
	}
	sf, err := s.files.open(m, rel+ext)
	if err != nil {
		return false
	}
	defer sf.Close()
	sfi := sf.Stat()
	// Older than its file by more than a moment: left over from an earlier
	// build (the same build writes both within the same second or two).
	if sfi.ModTime().Before(fi.ModTime().Add(-2 * time.Second)) {
		return false
	}
	h := w.Header()
	h["Content-Encoding"] = []string{encNames[enc]}
	h["Etag"] = []string{nginxETag(sfi, "")}
	s.edge.compressed.WithLabelValues(encNames[enc], "static_sidecar").Inc()
	http.ServeContent(w, r, "", sfi.ModTime(), sf)
	return true
}

// acceptQ returns the q-values Accept-Encoding gives brotli and gzip
// (x-gzip counts as gzip; "*" stands for a coding not named; 0: not
// acceptable), in one pass over the field.
func acceptQ(vals []string) (qBr, qGzip float64) {
	qBr, qGzip, qStar := -1.0, -1.0, -1.0
	for _, v := range vals {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			name, params, _ := strings.Cut(item, ";")
			name = strings.TrimSpace(name)
			q := 1.0
			if params != "" {
				q = qValue(params)
			}
			switch {
			case strings.EqualFold(name, "gzip"), strings.EqualFold(name, "x-gzip"):
				qGzip = max(qGzip, q)
			case strings.EqualFold(name, "br"):
				qBr = max(qBr, q)
			case name == "*":
				qStar = max(qStar, q)
			}
		}
	}
	if qGzip < 0 {
		qGzip = qStar
	}
	if qBr < 0 {
		qBr = qStar
	}
	return max(qBr, 0), max(qGzip, 0)
}

// zipCache keeps compressed static files in memory, LRU by bytes. An
// entry is valid for the file's mtime and size it was made from.
type zipCache struct {
	mu    sync.Mutex
	ll    *list.List // front: most recently used
	items map[zipKey]*list.Element
	bytes int64
	limit int64
}

type zipKey struct {
	path string
	enc  uint8
}

type zipEntry struct {
	key   zipKey
	mtime time.Time
	size  int64
	data  []byte
}

func newZipCache(limit int64) *zipCache {
	return &zipCache{ll: list.New(), items: map[zipKey]*list.Element{}, limit: limit}
}

func (c *zipCache) get(p string, fi fs.FileInfo, enc uint8) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[zipKey{p, enc}]
	if !ok {
		return nil, false
	}
	e := el.Value.(*zipEntry)
	if !e.mtime.Equal(fi.ModTime()) || e.size != fi.Size() {
		c.remove(el)
		return nil, false
	}
	c.ll.MoveToFront(el)
	return e.data, true
}

func (c *zipCache) put(p string, fi fs.FileInfo, enc uint8, data []byte) {
	if int64(len(data)) > c.limit/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := zipKey{p, enc}
	if el, ok := c.items[k]; ok {
		c.remove(el)
	}
	e := &zipEntry{key: k, mtime: fi.ModTime(), size: fi.Size(), data: data}
	c.items[k] = c.ll.PushFront(e)
	c.bytes += int64(len(data))
	for c.bytes > c.limit {
		c.remove(c.ll.Back())
	}
}

func (c *zipCache) remove(el *list.Element) {
	e := el.Value.(*zipEntry)
	c.ll.Remove(el)
	delete(c.items, e.key)
	c.bytes -= int64(len(e.data))
}

func (c *zipCache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
