package proxy

// openfiles.go: static files as raw descriptors, kept open between
// requests like nginx's open_file_cache, but never stale: every request
// stats the path (one fstatat) and uses the open descriptor only while the
// file is the same one (device, inode, size, modification time). A file
// replaced or rewritten is opened again. A hit costs fstatat and sendfile;
// nginx without open_file_cache does open, fstat, sendfile and close, and
// os.File added an lseek pair and a failing epoll_ctl per request.
//
// The descriptor is shared: reads are preads and sendfile is given its own
// offset, so the file position is never used.

import (
	"io"
	"io/fs"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxOpenFiles bounds the descriptors the cache keeps.
const maxOpenFiles = 1024

// openFile is one open regular file.
type openFile struct {
	fd   int
	st   unix.Stat_t
	name string
	// refs: requests using it, plus one while the cache holds it; the
	// descriptor closes at 0.
	refs atomic.Int32
	// The response fields of the file as it is, made once and shared by
	// every request (a header value slice is never written in place):
	// Content-Type, ETag, Last-Modified, Content-Length.
	ctype, etag, lastMod, length []string
}

func (of *openFile) release() {
	if of.refs.Add(-1) == 0 {
		unix.Close(of.fd)
	}
}

func sameFile(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim
}

type fileKey struct{ dir, rel string }

// openFiles is the cache.
type openFiles struct {
	mu sync.Mutex
	m  map[fileKey]*openFile
}

// open returns rel below m's directory, open and regular, for one
// request; the caller closes the staticFile.
func (c *openFiles) open(m *mount, rel string) (*staticFile, error) {
	h := m.handle()
	if h.fd < 0 {
		return nil, fs.ErrNotExist
	}
	defer runtime.KeepAlive(h)
	var st unix.Stat_t
	if err := unix.Fstatat(h.fd, rel, &st, 0); err != nil {
		return nil, statErr(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fs.ErrNotExist // directories, FIFOs, devices: never served
	}
	k := fileKey{m.dir, rel}
	c.mu.Lock()
	of := c.m[k]
	if of != nil && sameFile(&of.st, &st) {
		of.refs.Add(1)
		c.mu.Unlock()
		return newStaticFile(of), nil
	}
	c.mu.Unlock()

	fd, err := m.openFD(h, rel)
	if err != nil {
		return nil, err
	}
	of = &openFile{fd: fd, name: m.dir + "/" + rel}
	if err := unix.Fstat(fd, &of.st); err != nil || of.st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fs.ErrNotExist
	}
	of.refs.Store(2) // the cache's and this request's
	fi := fileInfo{of}
	of.ctype = []string{contentType(rel)}
	of.etag = []string{nginxETag(fi, "")}
	of.lastMod = []string{fi.ModTime().UTC().Format(http.TimeFormat)}
	of.length = []string{strconv.FormatInt(of.st.Size, 10)}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[fileKey]*openFile{}
	}
	if old := c.m[k]; old != nil {
		old.release()
	} else if len(c.m) >= maxOpenFiles {
		for ek, e := range c.m { // any one: map order is random enough
			delete(c.m, ek)
			e.release()
			break
		}
	}
	c.m[k] = of
	c.mu.Unlock()
	return newStaticFile(of), nil
}

// clear closes every cached descriptor not in use (Shutdown).
func (c *openFiles) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, of := range c.m {
		delete(c.m, k)
		of.release()
	}
}

func statErr(err error) error {
	switch err {
	case unix.EACCES:
		return fs.ErrPermission
	}
	return fs.ErrNotExist
}

// staticFile is a request's view of an openFile: an io.ReadSeeker with its
// own offset (for http.ServeContent), that the HTTP/1.1 writer sends with
// sendfile.
type staticFile struct {
	of  *openFile
	off int64
}

func newStaticFile(of *openFile) *staticFile { return &staticFile{of: of} }

func (f *staticFile) Read(p []byte) (int, error) {
	if f.off >= f.of.st.Size {
		return 0, io.EOF
	}
	n, err := unix.Pread(f.of.fd, p, f.off)
	if n > 0 {
		f.off += int64(n)
		return n, nil
	}
	if err == nil {
		return 0, io.EOF
	}
	return 0, err
}

func (f *staticFile) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += f.off
	case io.SeekEnd:
		offset += f.of.st.Size
	}
	if offset < 0 {
		return 0, fs.ErrInvalid
	}
	f.off = offset
	return offset, nil
}

func (f *staticFile) Close() error {
	if f.of != nil {
		f.of.release()
		f.of = nil
	}
	return nil
}

// Name is the file's path, for the compressed-variant cache's key.
func (f *staticFile) Name() string { return f.of.name }

// Stat describes the file as it was opened.
func (f *staticFile) Stat() fs.FileInfo { return fileInfo{f.of} }

type fileInfo struct{ of *openFile }

func (i fileInfo) Name() string       { return i.of.name }
func (i fileInfo) Size() int64        { return i.of.st.Size }
func (i fileInfo) Mode() fs.FileMode  { return fs.FileMode(i.of.st.Mode & 0o777) }
func (i fileInfo) ModTime() time.Time { return time.Unix(i.of.st.Mtim.Unix()) }
func (i fileInfo) IsDir() bool        { return false }
func (i fileInfo) Sys() any           { return &i.of.st }
