package proxy

import (
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// contentTypes fixes the types that matter for web assets, whatever the
// host's /etc/mime.types says; other extensions go to package mime, then
// application/octet-stream (nginx default_type).
var contentTypes = map[string]string{
	".html":  "text/html; charset=utf-8",
	".htm":   "text/html; charset=utf-8",
	".css":   "text/css; charset=utf-8",
	".js":    "text/javascript; charset=utf-8",
	".mjs":   "text/javascript; charset=utf-8",
	".json":  "application/json",
	".map":   "application/json",
	".txt":   "text/plain; charset=utf-8",
	".xml":   "text/xml; charset=utf-8",
	".svg":   "image/svg+xml",
	".wasm":  "application/wasm",
	".woff":  "font/woff",
	".woff2": "font/woff2",
	".ttf":   "font/ttf",
	".otf":   "font/otf",
	".png":   "image/png",
	".jpg":   "image/jpeg",
	".jpeg":  "image/jpeg",
	".gif":   "image/gif",
	".webp":  "image/webp",
	".avif":  "image/avif",
	".ico":   "image/vnd.microsoft.icon",
	".pdf":   "application/pdf",
	".mp4":   "video/mp4",
	".webm":  "video/webm",
	".mp3":   "audio/mpeg",
	".zip":   "application/zip",
	".gz":    "application/gzip",
}

func contentType(name string) string {
	ext := strings.ToLower(path.Ext(name))
	if t, ok := contentTypes[ext]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}

// serveStatic serves rel (the path after the mount's URL, already checked
// for dot segments and encoded slashes) from m.dir; mount.open confines the
// lookup to the directory, symlinks included. Directories are never listed
// and their index.html never served.
func (s *Server) serveStatic(rs *reqState, r *http.Request, st *settings, m *mount, rel string) response {
	w := &rs.rw
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return berthError(rs, http.StatusMethodNotAllowed, "berth: static files answer GET and HEAD only\n")
	}
	if m.file != "" {
		rel = filepath.Base(m.file) // dir is the file's directory
	} else {
		rel = strings.TrimLeft(rel, "/")
		if rel == "" || strings.HasSuffix(rel, "/") || strings.IndexByte(rel, 0) >= 0 {
			return berthError(rs, http.StatusNotFound, "404 page not found\n")
		}
	}
	f, err := s.files.open(m, rel)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return berthError(rs, http.StatusForbidden, "403 forbidden\n")
		}
		return berthError(rs, http.StatusNotFound, "404 page not found\n")
	}
	defer f.Close()
	fi := f.Stat()
	h := w.Header()
	ct := f.of.ctype[0]
	h["Content-Type"] = f.of.ctype
	if m.cacheControl != nil || isHashedName(rel) {
		cacheHeaders(h, m, rel)
	}
	if st.sidecarTypes.typeMatches(ct) && s.serveEncoded(w, r, st, m, rel, f, fi) {
		return response{src: srcNone}
	}
	h["Etag"] = f.of.etag
	if plainGet(r) {
		// What http.ServeContent answers a request with no condition
		// and no range, without its parsing and formatting.
		h["Last-Modified"] = f.of.lastMod
		h["Accept-Ranges"] = acceptRanges
		h["Content-Length"] = f.of.length
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			io.CopyN(w, f, fi.Size())
		}
		return response{src: srcNone}
	}
	http.ServeContent(w, r, "", fi.ModTime(), f)
	return response{src: srcNone}
}

var acceptRanges = []string{"bytes"}

// plainGet: a request without a condition or a range, which a file
// answers whole with 200.
func plainGet(r *http.Request) bool {
	h := r.Header
	return h["Range"] == nil && h["If-None-Match"] == nil && h["If-Modified-Since"] == nil &&
		h["If-Match"] == nil && h["If-Unmodified-Since"] == nil && h["If-Range"] == nil
}

// nginxETag is nginx's ETag: hex mtime seconds - hex size, and the
// encoding of a compressed variant.
func nginxETag(fi fs.FileInfo, suffix string) string {
	return `"` + strconv.FormatInt(fi.ModTime().Unix(), 16) + "-" + strconv.FormatInt(fi.Size(), 16) + suffix + `"`
}

// dirRefresh is how long a mount's directory handle is used before it is
// opened again, so a directory replaced by a deploy is picked up.
const dirRefresh = time.Second

// dirHandle is an O_PATH descriptor of a mount's directory, closed by a
// cleanup once no request uses it.
type dirHandle struct {
	fd     int // -1: the directory could not be opened
	opened int64
}

// openat2Usable turns false when the kernel (before 5.6) or a seccomp
// filter refuses openat2; os.Root is used from then on.
var openat2Usable atomic.Bool

func init() { openat2Usable.Store(true) }

// openFD opens rel below m.dir (whose handle is h) for reading. With
// openat2 and RESOLVE_BENEATH the kernel refuses, in one call, any ".." or
// symlink leading out of the directory; otherwise os.Root does the same
// component by component. O_NONBLOCK: opening a FIFO left in the tree must
// not hang.
func (m *mount) openFD(h *dirHandle, rel string) (int, error) {
	if openat2Usable.Load() {
		fd, err := unix.Openat2(h.fd, rel, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch {
		case err == nil:
			return fd, nil
		case err == unix.EINTR || err == unix.EAGAIN:
			return -1, fs.ErrNotExist
		case err == unix.EACCES:
			return -1, fs.ErrPermission
		case err != unix.ENOSYS && err != unix.EPERM:
			return -1, fs.ErrNotExist // ENOENT, ENOTDIR, ELOOP, EXDEV (escape)...
		}
		// ENOSYS, or EPERM that may be a seccomp filter: ask os.Root,
		// and stop using openat2 if it disagrees.
		fd, rerr := m.openRoot(rel)
		if err == unix.ENOSYS || rerr == nil {
			openat2Usable.Store(false)
		}
		return fd, rerr
	}
	return m.openRoot(rel)
}

// openRoot is openFD through os.Root; the descriptor is a copy, so the
// os.File (and its poller registration) ends here.
func (m *mount) openRoot(rel string) (int, error) {
	root, err := os.OpenRoot(m.dir)
	if err != nil {
		return -1, fs.ErrNotExist
	}
	defer root.Close()
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	rc.Control(func(raw uintptr) { fd, err = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) })
	return fd, err
}

// handle returns the mount's directory handle, reopened when older than
// dirRefresh.
func (m *mount) handle() *dirHandle {
	now := time.Now().UnixNano()
	h := m.h.Load()
	if h != nil && now-h.opened < int64(dirRefresh) {
		return h
	}
	nh := &dirHandle{fd: -1, opened: now}
	if fd, err := unix.Open(m.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		nh.fd = fd
		runtime.AddCleanup(nh, func(fd int) { unix.Close(fd) }, fd)
	}
	// A racing request may have stored its own: both work, one is dropped.
	m.h.Store(nh)
	return nh
}
