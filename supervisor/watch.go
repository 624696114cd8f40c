// The file watcher that turns config and code edits into reload requests.
package supervisor

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce collapses the burst of events one save makes (an editor's write,
// rename and chmod; Kubernetes' symlink dance) into one reload.
const debounce = 300 * time.Millisecond

// watcher turns file system events into reload requests. It watches the
// config file's directory, not the file: editors replace the file by rename
// and Kubernetes swaps a `..data` symlink, and a watch on the file itself
// would die with the first such save.
type watcher struct {
	fs       *fsnotify.Watcher
	cfgDir   string
	cfgName  string
	codeDirs map[string]bool
	certs    map[string]bool // TLS certificate and key files
	certDirs map[string]bool
	out      chan<- reloadRequest
	log      *log.Logger
	done     chan struct{}
	once     sync.Once
}

func newWatcher(cfgPath string, reloadOn []string, chdir string, certs []string, out chan<- reloadRequest, lg *log.Logger) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w := &watcher{fs: fw, out: out, log: lg, done: make(chan struct{}), codeDirs: map[string]bool{},
		certs: map[string]bool{}, certDirs: map[string]bool{}}
	for _, c := range certs {
		// The directory, like the config: a Secret's files are symlinks
		// into a `..data` directory swapped at renewal.
		w.certs[c] = true
		if d := filepath.Dir(c); !w.certDirs[d] {
			if err := fw.Add(d); err != nil {
				fw.Close()
				return nil, fmt.Errorf("watch %s (tls.certificates): %w", d, err)
			}
			w.certDirs[d] = true
		}
	}
	if cfgPath != "" {
		abs, _ := filepath.Abs(cfgPath)
		w.cfgDir, w.cfgName = filepath.Dir(abs), filepath.Base(abs)
		if err := fw.Add(w.cfgDir); err != nil {
			fw.Close()
			return nil, fmt.Errorf("watch %s: %w", w.cfgDir, err)
		}
	}
	for _, p := range reloadOn {
		if !filepath.IsAbs(p) {
			p = filepath.Join(chdir, p)
		}
		w.addCode(p)
	}
	go w.run()
	return w, nil
}

// restartWatch (re)creates the watcher for the current config. A failure
// (inotify instances or watches exhausted, a directory gone) is logged and
// retried with backoff from the tick: the config must not go unwatched for
// good because of one failure.
func (s *Supervisor) restartWatch() {
	if s.watch != nil {
		s.watch.close()
		s.watch = nil
	}
	if s.opts.ConfigPath == "" && len(s.cfg.App.ReloadOn) == 0 && len(s.cfg.TLS.Certificates) == 0 {
		s.watchFails, s.watchRetryAt = 0, time.Time{}
		return
	}
	w, err := newWatcher(s.opts.ConfigPath, s.cfg.App.ReloadOn, s.cfg.App.Chdir, watchedFiles(s.cfg), s.reloadCh, s.log)
	if err != nil {
		s.watchFails++
		d := backoff(s.watchFails)
		s.log.Printf("config watch: %v; retrying in %s (SIGHUP still reloads)", err, d)
		s.watchRetryAt = s.now().Add(d)
		return
	}
	if s.watchFails > 0 {
		s.log.Printf("config watch: watching again after %d failures", s.watchFails)
	}
	s.watchFails, s.watchRetryAt = 0, time.Time{}
	s.watch = w
}

// addCode watches p: a directory recursively, a file through its directory.
func (w *watcher) addCode(p string) {
	st, err := os.Stat(p)
	if err != nil {
		w.log.Printf("app.reload_on: %s: %v (not watched)", p, err)
		return
	}
	if !st.IsDir() {
		w.codeDirs[p] = true // a file: matched by exact path
		_ = w.fs.Add(filepath.Dir(p))
		return
	}
	filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if ignoredName(d.Name()) && path != p {
			return filepath.SkipDir
		}
		w.codeDirs[path] = true
		_ = w.fs.Add(path)
		return nil
	})
}

// ignoredName is what Python and editors write on their own: reacting to
// __pycache__ would make every import trigger the next reload.
func ignoredName(name string) bool {
	return name == "__pycache__" || strings.HasSuffix(name, ".pyc") || strings.HasPrefix(name, ".#") ||
		strings.HasSuffix(name, "~") || strings.HasSuffix(name, ".swp") || strings.HasSuffix(name, ".swx") ||
		name == ".git"
}

func (w *watcher) run() {
	var cfgTimer, codeTimer, certTimer <-chan time.Time
	for {
		select {
		case <-w.done:
			return
		case err, ok := <-w.fs.Errors:
			if !ok {
				return
			}
			w.log.Printf("watch: %v", err)
		case ev, ok := <-w.fs.Events:
			if !ok {
				return
			}
			dir, name := filepath.Dir(ev.Name), filepath.Base(ev.Name)
			if w.certs[ev.Name] || w.certDirs[dir] && name == "..data" {
				certTimer = time.After(debounce)
			}
			if dir == w.cfgDir && (name == w.cfgName || name == "..data") {
				cfgTimer = time.After(debounce)
				continue
			}
			if ignoredName(name) {
				continue
			}
			if w.codeDirs[dir] || w.codeDirs[ev.Name] {
				if ev.Has(fsnotify.Create) {
					if st, err := os.Stat(ev.Name); err == nil && st.IsDir() && w.codeDirs[dir] {
						w.addCode(ev.Name)
					}
				}
				codeTimer = time.After(debounce)
			}
		case <-cfgTimer:
			cfgTimer = nil
			w.send(reloadRequest{reason: "config file changed"})
		case <-certTimer:
			certTimer = nil
			w.send(reloadRequest{reason: "certificate files changed", certs: true})
		case <-codeTimer:
			codeTimer = nil
			w.send(reloadRequest{reason: "code changed (app.reload_on)", code: true})
		}
	}
}

func (w *watcher) send(r reloadRequest) {
	select {
	case w.out <- r:
	case <-w.done:
	}
}

func (w *watcher) close() {
	w.once.Do(func() {
		close(w.done)
		w.fs.Close()
	})
}
