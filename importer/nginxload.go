package importer

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	crossplane "github.com/nginxinc/nginx-go-crossplane"
)

// ndir is one nginx directive with its includes expanded in place.
type ndir struct {
	name  string
	args  []string
	file  string
	line  int
	block []*ndir // nil for a simple directive
	// params marks an include of a file holding only nginx's standard
	// *_param / proxy_set_header lines (uwsgi_params, proxy_params), kept
	// as one directive instead of a dozen.
	params bool
	// hostParam marks such an include that sets HTTP_HOST from $host
	// (Debian's uwsgi_params), which drops the port.
	hostParam bool
	// where names the block it sits in, for a directive whose translation
	// waits for the whole site (nginxImport.deferRule).
	where string
}

func (d *ndir) isBlock() bool { return d.block != nil }

// at is src with the block the directive was recorded in.
func (d *ndir) at() Source { return d.src(d.where) }

func (d *ndir) src(where string) Source {
	return Source{File: d.file, Line: d.line, Key: d.name, Where: where, raw: d.text()}
}

// text is the directive's arguments as written, for listings.
func (d *ndir) text() string {
	return strings.TrimSpace(strings.Join(d.args, " ") + " " + d.body())
}

// body names the directives of a block, "" for a simple directive.
func (d *ndir) body() string {
	if !d.isBlock() {
		return ""
	}
	var names []string
	for _, c := range d.block {
		names = append(names, c.name)
	}
	return "{ " + strings.Join(names, "; ") + " }"
}

// blockSrc names a block by its directive and arguments ("location
// /static/"), its value being the directives it holds.
func (d *ndir) blockSrc(where string) Source {
	s := d.src(where)
	s.Key = strings.TrimSpace(d.name + " " + strings.Join(d.args, " "))
	s.raw = d.body()
	return s
}

// loadNginx parses path with crossplane and expands its includes. A
// relative include that is not beside path is looked up in prefix, as
// nginx resolves it against its configuration prefix (/etc/nginx).
func loadNginx(path, prefix string) ([]*ndir, error) {
	dir := filepath.Dir(path)
	// real maps a path crossplane asked for to the file actually read.
	real := map[string]string{}
	fallback := func(p string) (string, bool) {
		rel, err := filepath.Rel(dir, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			return "", false
		}
		return filepath.Join(prefix, rel), true
	}
	opts := &crossplane.ParseOptions{
		// A site file holds server blocks at its top, outside http {}.
		SkipDirectiveContextCheck: true,
		StopParsingOnError:        true,
		Open: func(p string) (io.ReadCloser, error) {
			f, err := os.Open(p)
			if errors.Is(err, fs.ErrNotExist) {
				if alt, ok := fallback(p); ok {
					if f2, err2 := os.Open(alt); err2 == nil {
						real[p] = alt
						return f2, nil
					}
				}
			}
			return f, err
		},
		Glob: func(pattern string) ([]string, error) {
			m, err := filepath.Glob(pattern)
			if err == nil && len(m) == 0 {
				if alt, ok := fallback(pattern); ok {
					return filepath.Glob(alt)
				}
			}
			return m, err
		},
	}
	payload, err := crossplane.Parse(path, opts)
	if err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	if len(payload.Errors) > 0 {
		return nil, fmt.Errorf("nginx config: %w", payload.Errors[0].Error)
	}
	name := func(f string) string {
		if r, ok := real[f]; ok {
			return r
		}
		return f
	}
	var expand func(dirs crossplane.Directives, file string) []*ndir
	expand = func(dirs crossplane.Directives, file string) []*ndir {
		var out []*ndir
		for _, d := range dirs {
			if d.IsComment() {
				continue
			}
			if d.Directive == "include" {
				for _, i := range d.Includes {
					inc := payload.Config[i]
					if ok, host := standardParams(inc.Parsed); ok {
						out = append(out, &ndir{name: "include", args: d.Args, file: file, line: d.Line, params: true, hostParam: host})
						continue
					}
					out = append(out, expand(inc.Parsed, name(inc.File))...)
				}
				continue
			}
			n := &ndir{name: d.Directive, args: d.Args, file: file, line: d.Line}
			if d.IsBlock() {
				n.block = expand(d.Block, file)
				if n.block == nil {
					n.block = []*ndir{}
				}
			}
			out = append(out, n)
		}
		return out
	}
	return expand(payload.Config[0].Parsed, path), nil
}

// cgiParams are the variables nginx's uwsgi_params, fastcgi_params and
// scgi_params set, which berth's proxy sets the same way.
var cgiParams = map[string]bool{
	"QUERY_STRING": true, "REQUEST_METHOD": true, "CONTENT_TYPE": true, "CONTENT_LENGTH": true,
	"REQUEST_URI": true, "PATH_INFO": true, "DOCUMENT_ROOT": true, "SERVER_PROTOCOL": true,
	"REQUEST_SCHEME": true, "HTTPS": true, "REMOTE_ADDR": true, "REMOTE_PORT": true,
	"SERVER_PORT": true, "SERVER_NAME": true, "HTTP_HOST": true, "SCRIPT_FILENAME": true,
	"SCRIPT_NAME": true, "DOCUMENT_URI": true, "GATEWAY_INTERFACE": true, "SERVER_SOFTWARE": true,
	"SERVER_ADDR": true, "REDIRECT_STATUS": true,
}

// standardParams reports whether dirs are only the standard parameter
// lines of a *_params file: each a CGI variable set from nginx's variable
// of that meaning, or one of the usual proxy headers. host reports that
// HTTP_HOST is set from $host.
func standardParams(dirs crossplane.Directives) (ok, host bool) {
	n := 0
	for _, d := range dirs {
		if d.IsComment() {
			continue
		}
		n++
		switch d.Directive {
		case "uwsgi_param", "fastcgi_param", "scgi_param":
			if len(d.Args) < 2 || !cgiParams[d.Args[0]] || !strings.HasPrefix(d.Args[1], "$") {
				return false, false
			}
			if d.Args[0] == "SCRIPT_NAME" && d.Args[1] != "$fastcgi_script_name" {
				return false, false
			}
			host = host || d.Args[0] == "HTTP_HOST" && d.Args[1] == "$host"
		case "proxy_set_header":
			if len(d.Args) != 2 || standardHeader(d.Args[0], d.Args[1]) == "" {
				return false, false
			}
		default:
			return false, false
		}
	}
	return n > 0, host
}

// standardHeader says what berth does instead of proxy_set_header name
// value, or "" when that header is not one of the usual forwarding ones.
func standardHeader(name, value string) string {
	switch strings.ToLower(name) {
	case "host":
		if value == "$host" || value == "$http_host" || value == "$host:$server_port" {
			return "berth's workers get the client's Host header as it came"
		}
	case "x-forwarded-for", "x-real-ip":
		if value == "$proxy_add_x_forwarded_for" || value == "$remote_addr" {
			return "berth's workers get the client's address as REMOTE_ADDR (taken from X-Forwarded-For only when the peer is in proxy.trusted_proxies)"
		}
	case "x-forwarded-proto":
		if value == "$scheme" {
			return "berth's workers get the scheme as wsgi.url_scheme (taken from X-Forwarded-Proto only when the peer is in proxy.trusted_proxies)"
		}
	case "x-forwarded-host":
		if value == "$host" || value == "$http_host" || value == "$server_name" {
			return "berth's workers get the client's Host header as it came"
		}
	case "x-forwarded-port":
		if value == "$server_port" {
			return "berth's workers get SERVER_PORT from the port the client reached"
		}
	}
	return ""
}
