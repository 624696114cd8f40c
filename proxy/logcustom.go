package proxy

// logcustom.go: access log lines in a format of the user's, nginx-style
// $variables compiled once per config (proxy/logformat) and appended here
// part by part, without parsing anything per request.

import (
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/berth-dev/berth/proxy/logformat"
)

// upTimes are the times spent with workers for one request: from sending
// the request to the end of its response, per worker tried (at most two:
// a request is retried once). Measured only when the log format shows them.
type upTimes struct {
	n     int8
	open  bool
	start time.Time
	d     [2]time.Duration
}

func (u *upTimes) begin(t time.Time) { u.start, u.open = t, true }

func (u *upTimes) end(t time.Time) {
	if u.open && int(u.n) < len(u.d) {
		u.d[u.n] = t.Sub(u.start)
		u.n++
	}
	u.open = false
}

func (u *upTimes) total() time.Duration {
	var t time.Duration
	for _, d := range u.d[:u.n] {
		t += d
	}
	return t
}

var (
	procPid     = strconv.Itoa(os.Getpid())
	hostname, _ = os.Hostname()
)

// appendCustom appends one line of format f for e.
func appendCustom(b []byte, f *logformat.Format, e *logEntry) []byte {
	esc := f.Escape
	for i := range f.Parts {
		p := &f.Parts[i]
		switch p.Var {
		case logformat.Lit:
			b = append(b, p.Text...)
		case logformat.RemoteAddr:
			b = appendVal(b, esc, e.remote, true)
		case logformat.RemotePort:
			b = appendVal(b, esc, e.in.RemotePort, e.in.RemotePort != "")
		case logformat.RemoteUser:
			b = appendVal(b, esc, e.user, e.user != "")
		case logformat.TimeLocal:
			b = e.when.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
		case logformat.TimeISO8601:
			b = e.when.AppendFormat(b, "2006-01-02T15:04:05-07:00")
		case logformat.Msec:
			b = appendSecs(b, time.Duration(e.when.UnixNano()))
		case logformat.Request:
			b = appendVal(b, esc, e.method, true)
			if e.uri != "" {
				b = append(b, ' ')
				b = appendVal(b, esc, e.uri, true)
			}
			if e.proto != "" {
				b = append(b, ' ')
				b = appendVal(b, esc, e.proto, true)
			}
		case logformat.RequestMethod:
			b = appendVal(b, esc, e.method, true)
		case logformat.RequestURI:
			b = appendVal(b, esc, e.uri, true)
		case logformat.URI:
			u := e.in.PathInfo
			if u == "" && e.r != nil {
				u = e.r.URL.Path
			}
			b = appendVal(b, esc, u, true)
		case logformat.Args:
			// nginx: no query, or an empty one after "?", is a missing value.
			if e.r != nil && e.r.URL.RawQuery != "" {
				b = appendVal(b, esc, e.r.URL.RawQuery, true)
			} else {
				b = appendVal(b, esc, "", false)
			}
		case logformat.IsArgs:
			if e.r != nil && e.r.URL.RawQuery != "" {
				b = append(b, '?')
			}
		case logformat.ServerProtocol:
			b = appendVal(b, esc, e.proto, e.proto != "")
		case logformat.Scheme:
			b = appendVal(b, esc, e.in.Scheme, e.in.Scheme != "")
		case logformat.Host:
			// The Host header's name, as nginx's $host with no server_name:
			// empty for an HTTP/1.0 request without one.
			start := len(b)
			b = appendVal(b, esc, hostOnly(e.r.Host), true)
			for j := start; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
		case logformat.ServerPort:
			b = appendVal(b, esc, e.in.ServerPort, e.in.ServerPort != "")
		case logformat.Status:
			b = strconv.AppendInt(b, int64(e.status), 10)
		case logformat.BodyBytesSent:
			b = strconv.AppendInt(b, e.bytes, 10)
		case logformat.RequestTime:
			b = appendSecs(b, e.dur)
		case logformat.UpstreamResponseTime:
			if e.up == nil || e.up.n == 0 {
				b = appendVal(b, esc, "", false)
				break
			}
			for j, d := range e.up.d[:e.up.n] {
				if j > 0 {
					b = append(b, ", "...)
				}
				b = appendSecs(b, d)
			}
		case logformat.UpstreamAddr:
			if e.wsock == "" {
				b = appendVal(b, esc, "", false)
				break
			}
			b = append(b, "unix:"...)
			b = appendVal(b, esc, e.wsock, true)
		case logformat.RequestID:
			b = appendVal(b, esc, e.reqID, e.reqID != "")
		case logformat.Worker:
			b = appendVal(b, esc, e.worker, e.worker != "")
		case logformat.Pid:
			b = append(b, procPid...)
		case logformat.Hostname:
			b = appendVal(b, esc, hostname, hostname != "")
		case logformat.HTTP:
			b = appendHeader(b, esc, e.r.Header, p.Text)
		case logformat.SentHTTP:
			b = appendHeader(b, esc, e.resp, p.Text)
		}
	}
	return append(b, '\n')
}

// appendHeader writes header name of h, its values joined by ", " as
// nginx 1.23+ does, or a missing value.
func appendHeader(b []byte, esc logformat.Escape, h http.Header, name string) []byte {
	vs := h[name]
	if len(vs) == 0 {
		return appendVal(b, esc, "", false)
	}
	for i, v := range vs {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = appendVal(b, esc, v, true)
	}
	return b
}

// appendVal writes a value that may be missing (found false): nginx writes "-"
// for it with default escaping, nothing with json or none.
func appendVal(b []byte, esc logformat.Escape, s string, found bool) []byte {
	if !found {
		if esc == logformat.EscapeDefault {
			return append(b, '-')
		}
		return b
	}
	switch esc {
	case logformat.EscapeJSON:
		return appendJSONEsc(b, s)
	case logformat.EscapeNone:
		return append(b, s...)
	}
	return appendNginxEsc(b, s)
}

// appendSecs writes d as seconds with milliseconds, as nginx's times:
// 0.012.
func appendSecs(b []byte, d time.Duration) []byte {
	ms := d.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	b = strconv.AppendInt(b, ms/1000, 10)
	f := ms % 1000
	return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
}
