package supervisor

// accessfiles.go: the files the access rules read (issue 24): error pages
// and htpasswd files. The supervisor reads them (as root, like the
// certificates), checks them, and sends their contents to the proxy, which
// runs as app.user and may not be able to read /etc/berth; they are watched
// like the certificates, and a change is sent at once.

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"sort"
	"strings"

	"github.com/berth-dev/berth/access/htpasswd"
	"github.com/berth-dev/berth/config"
	"github.com/berth-dev/berth/control"
)

// accessFiles are the contents of the files a config's rules read. The zero
// value is a config that reads none.
type accessFiles struct {
	pages map[int][]byte    // proxy.error_pages, by status
	users map[string][]byte // htpasswd files, by path
}

// loadAccessFiles reads and checks every file cfg's rules name: an error
// page must be a regular file of at most 1 MiB, an htpasswd file must parse
// with only hashes berth verifies (a plain-text password is refused).
func loadAccessFiles(cfg *config.Config) (accessFiles, error) {
	var a accessFiles
	for status, path := range cfg.Proxy.ErrorPages {
		data, err := config.ReadErrorPage(path)
		if err != nil {
			return a, fmt.Errorf("proxy.error_pages.%d: %w", status, err)
		}
		if a.pages == nil {
			a.pages = map[int][]byte{}
		}
		a.pages[status] = data
	}
	for i, l := range cfg.Locations {
		if l.Auth == nil || l.Auth.Basic == nil {
			continue
		}
		path := l.Auth.Basic.Users
		if _, done := a.users[path]; done {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return a, fmt.Errorf("locations[%d] (%s) auth.basic.users: %w; create it with htpasswd -B -c %s USER", i, l.Label(), err, path)
		}
		if _, err := htpasswd.Parse(path, data); err != nil {
			return a, fmt.Errorf("locations[%d] (%s) auth.basic.users: %w", i, l.Label(), err)
		}
		if a.users == nil {
			a.users = map[string][]byte{}
		}
		a.users[path] = data
	}
	return a, nil
}

// equal says whether a and b hold the same contents.
func (a accessFiles) equal(b accessFiles) bool {
	return maps.EqualFunc(a.pages, b.pages, bytes.Equal) && maps.EqualFunc(a.users, b.users, bytes.Equal)
}

// accessFilePaths are the files whose change is sent to the proxies.
func accessFilePaths(cfg *config.Config) []string {
	var out []string
	for _, p := range cfg.Proxy.ErrorPages {
		out = append(out, p)
	}
	for _, l := range cfg.Locations {
		if l.Auth != nil && l.Auth.Basic != nil {
			out = append(out, l.Auth.Basic.Users)
		}
	}
	sort.Strings(out)
	return out
}

// reloadAccessFiles re-reads the access files after one changed: read and
// checked first (a broken one changes nothing, the old contents keep
// serving), then sent to the proxies.
func (s *Supervisor) reloadAccessFiles(reason string) {
	a, err := loadAccessFiles(s.cfg)
	if err != nil {
		s.log.Printf("access rules (%s): %v; the files in use keep serving", reason, err)
		s.reloadState = reloadStatus{At: s.now(), OK: false, Message: err.Error(), Reason: reason}
		s.metrics.reloads.WithLabelValues("failed").Inc()
		return
	}
	if st := s.pending; st != nil && !st.code {
		st.access = a // the roll's commit must not put back what it read before
	}
	if a.equal(s.access) {
		return
	}
	s.access = a
	for _, p := range s.proxies {
		s.send(p, control.Message{Type: control.TypeConfig, Config: s.proxyConfig(s.cfg)})
	}
	msg := "access files reloaded: " + strings.Join(accessFilePaths(s.cfg), ", ")
	s.log.Printf("access rules (%s): %s", reason, msg)
	s.reloadState = reloadStatus{At: s.now(), OK: true, Message: msg, Reason: reason}
	s.metrics.reloads.WithLabelValues("ok").Inc()
}

// accessConfig puts cfg's rules and the files read for them into p.
func (s *Supervisor) accessConfig(cfg *config.Config, p *control.Proxy) {
	p.Hosts = cfg.Hosts
	p.Locations = cfg.Locations
	p.Headers = cfg.Proxy.Headers
	p.ConnectionsPerClient = cfg.Proxy.Limits.ConnectionsPerClient
	p.ErrorPages = s.access.pages
	p.Htpasswd = s.access.users
}
