package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessLog is a buffered writer flushed by the server's housekeeping tick
// (every 100 ms) and when its buffer fills, so a log line costs a memcpy.
type accessLog struct {
	mu    sync.Mutex
	w     *bufio.Writer
	dirty bool
	onErr func(error)
	erred bool // report a failing log writer once, not per line
}

func newAccessLog(w io.Writer, onErr func(error)) *accessLog {
	return &accessLog{w: bufio.NewWriterSize(w, 64<<10), onErr: onErr}
}

func (a *accessLog) write(line []byte) {
	a.mu.Lock()
	_, err := a.w.Write(line)
	a.dirty = true
	a.noteLocked(err)
	a.mu.Unlock()
}

func (a *accessLog) flush() {
	a.mu.Lock()
	if a.dirty {
		a.noteLocked(a.w.Flush())
		a.dirty = false
	}
	a.mu.Unlock()
}

func (a *accessLog) noteLocked(err error) {
	if err != nil && !a.erred {
		a.erred = true
		a.onErr(err)
	}
}

// logEntry is what one access log line says.
type logEntry struct {
	when    time.Time
	remote  string
	method  string
	uri     string
	proto   string
	status  int
	bytes   int64
	dur     time.Duration
	worker  string
	referer string
	ua      string
	reqID   string   // "" when proxy.request_id is off
	user    string   // $remote_user: the basic-auth user, "" without one
	up      *upTimes // nil when the format shows no upstream time
	wsock   string   // the worker's socket; "" when no worker was asked
	in      *reqInfo // client address, scheme, host, path
	r       *http.Request
	resp    http.Header // the response's headers
}

// appendCombined formats nginx's "combined" log format exactly:
// $remote_addr - $remote_user [$time_local] "$request" $status
// $body_bytes_sent "$http_referer" "$http_user_agent"
func appendCombined(b []byte, e *logEntry) []byte {
	b = appendNginx(b, e.remote)
	b = append(b, " - "...)
	b = appendNginx(b, e.user)
	b = append(b, " ["...)
	b = e.when.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] \""...)
	b = appendNginxEsc(b, e.method)
	if e.uri != "" { // a refused request's line is all in method
		b = append(b, ' ')
		b = appendNginxEsc(b, e.uri)
	}
	if e.proto != "" {
		b = append(b, ' ')
		b = appendNginxEsc(b, e.proto)
	}
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.bytes, 10)
	b = append(b, " \""...)
	b = appendNginx(b, e.referer)
	b = append(b, "\" \""...)
	b = appendNginx(b, e.ua)
	return append(b, "\"\n"...)
}

// appendNginx writes a variable as nginx does: "-" when empty, else escaped.
func appendNginx(b []byte, s string) []byte {
	if s == "" {
		return append(b, '-')
	}
	return appendNginxEsc(b, s)
}

// appendNginxEsc escapes like nginx's default log escaping: '"', '\' and
// bytes outside printable ASCII become \xHH.
func appendNginxEsc(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' || c < 0x20 || c > 0x7e {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
			continue
		}
		b = append(b, c)
	}
	return b
}

// appendJSON formats one JSON object per line. Its field names are a
// contract (README, "Access log"): fields are added, never renamed or
// removed.
func appendJSON(b []byte, e *logEntry) []byte {
	b = append(b, `{"time":"`...)
	b = e.when.AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","remote":`...)
	b = appendJSONString(b, e.remote)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, e.method)
	b = append(b, `,"uri":`...)
	b = appendJSONString(b, e.uri)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, e.proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, e.bytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(e.dur.Microseconds())/1000, 'f', 3, 64)
	b = append(b, `,"worker":`...)
	b = appendJSONString(b, e.worker)
	b = append(b, `,"ua":`...)
	b = appendJSONString(b, e.ua)
	b = append(b, `,"referer":`...)
	b = appendJSONString(b, e.referer)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, e.in.ServerName)
	b = append(b, `,"request_id":`...)
	b = appendJSONString(b, e.reqID)
	b = append(b, `,"user":`...)
	b = appendJSONString(b, e.user)
	b = append(b, `,"upstream_duration_ms":`...)
	if e.up == nil || e.up.n == 0 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendFloat(b, float64(e.up.total().Microseconds())/1000, 'f', 3, 64)
	}
	return append(b, "}\n"...)
}

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONEsc(b, s)
	return append(b, '"')
}

// appendJSONEsc writes s escaped for the inside of a JSON string; bytes
// that are not UTF-8 become U+FFFD, so the line stays valid JSON.
func appendJSONEsc(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}
