// Package logformat reads access log formats written with nginx-style
// variables ("$remote_addr - [$time_local] \"$request\" $status"), the way
// nginx's log_format does, into a list of parts the proxy appends one by
// one. It is its own package so that `berth check` (the config package)
// refuses an unknown variable with the same rules the proxy applies.
package logformat

import (
	"fmt"
	"maps"
	"net/textproto"
	"slices"
	"sort"
	"strings"
)

// Combined is nginx's predefined "combined" format, which proxy.access_log
// "combined" writes.
const Combined = `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`

// Var is what one part of a line writes. Lit is literal text; every other
// value is a variable.
type Var uint8

const (
	Lit                  Var = iota
	RemoteAddr               // $remote_addr: the client, after trusted X-Forwarded-For
	RemotePort               // $remote_port
	RemoteUser               // $remote_user: always "-": berth does no HTTP authentication
	TimeLocal                // $time_local: 09/Mar/2024:07:05:03 -0500
	TimeISO8601              // $time_iso8601: 2024-03-09T07:05:03-05:00
	Msec                     // $msec: Unix time in seconds, with milliseconds
	Request                  // $request: the request line
	RequestMethod            // $request_method
	RequestURI               // $request_uri: as sent, with the query
	URI                      // $uri: the decoded, normalized path
	Args                     // $args, $query_string
	IsArgs                   // $is_args: "?" when the URI has a query
	ServerProtocol           // $server_protocol
	Scheme                   // $scheme: after trusted X-Forwarded-Proto
	Host                     // $host: the Host header without its port, lower case
	ServerPort               // $server_port
	Status                   // $status
	BodyBytesSent            // $body_bytes_sent
	RequestTime              // $request_time: seconds, with milliseconds
	UpstreamResponseTime     // $upstream_response_time: seconds per worker tried, ", "-separated
	UpstreamAddr             // $upstream_addr: the worker's socket, unix:/path
	RequestID                // $request_id
	Worker                   // $worker: berth's worker id, e.g. 2.1
	Pid                      // $pid: the proxy's pid
	Hostname                 // $hostname
	HTTP                     // $http_NAME: a request header; Part.Text is its canonical name
	SentHTTP                 // $sent_http_NAME: a response header; Part.Text is its canonical name
)

// Escape is how values are escaped, nginx's log_format escape= parameter.
type Escape uint8

const (
	// EscapeDefault: '"', '\' and bytes outside printable ASCII become
	// \xHH; a missing value is written "-".
	EscapeDefault Escape = iota
	// EscapeJSON: JSON string escaping; a missing value is written empty.
	EscapeJSON
	// EscapeNone: values as they are; a missing value is written empty.
	EscapeNone
)

// Part is one piece of a line.
type Part struct {
	Var  Var
	Text string // the literal for Lit; the canonical header name for HTTP and SentHTTP
}

// Format is a parsed format: the parts of a line, in order, and how their
// values are escaped. Its zero value writes empty lines.
type Format struct {
	Escape Escape
	Parts  []Part
}

// Uses says whether the format writes v.
func (f *Format) Uses(v Var) bool {
	for _, p := range f.Parts {
		if p.Var == v {
			return true
		}
	}
	return false
}

// vars maps nginx's names onto berth's; several names may share a Var.
var vars = map[string]Var{
	"remote_addr": RemoteAddr, "remote_port": RemotePort, "remote_user": RemoteUser,
	"time_local": TimeLocal, "time_iso8601": TimeISO8601, "msec": Msec,
	"request": Request, "request_method": RequestMethod, "request_uri": RequestURI,
	"uri": URI, "document_uri": URI, "args": Args, "query_string": Args, "is_args": IsArgs,
	"server_protocol": ServerProtocol, "scheme": Scheme, "host": Host, "server_port": ServerPort,
	"status": Status, "body_bytes_sent": BodyBytesSent, "request_time": RequestTime,
	"upstream_response_time": UpstreamResponseTime, "upstream_addr": UpstreamAddr,
	"request_id": RequestID, "worker": Worker, "pid": Pid, "hostname": Hostname,
}

// unsupported are nginx variables people put in log formats that berth
// cannot fill honestly, each with why.
var unsupported = map[string]string{
	"bytes_sent":                "berth counts body bytes only: use $body_bytes_sent",
	"request_length":            "berth does not count the bytes of request heads",
	"upstream_status":           "the worker's status is the one relayed: use $status",
	"upstream_connect_time":     "workers are local unix sockets; use $upstream_response_time",
	"upstream_header_time":      "use $upstream_response_time",
	"upstream_cache_status":     "berth has no response cache",
	"connection":                "berth does not number connections",
	"connection_requests":       "berth does not number connections",
	"pipe":                      "berth does not number connections",
	"gzip_ratio":                "berth does not compress responses",
	"ssl_protocol":              "berth's listeners do not speak TLS",
	"ssl_cipher":                "berth's listeners do not speak TLS",
	"server_name":               "berth has no server names: use $host",
	"server_addr":               "berth does not log the local address",
	"binary_remote_addr":        "use $remote_addr",
	"realip_remote_addr":        "berth logs the client after trusted X-Forwarded-For as $remote_addr",
	"proxy_add_x_forwarded_for": "use $http_x_forwarded_for",
}

// Known lists the variable names Parse accepts, for messages and docs.
func Known() []string {
	names := make([]string, 0, len(vars)+2)
	for n := range vars {
		names = append(names, "$"+n)
	}
	names = append(names, "$http_NAME", "$sent_http_NAME")
	sort.Strings(names)
	return names
}

// Parse reads a format: literal text with $name or ${name} variables, as in
// nginx's log_format, optionally led by nginx's "escape=default",
// "escape=json" or "escape=none" and a space. An unknown variable, or a $
// that starts none, is an error naming it and where it is (1-based).
func Parse(s string) (*Format, error) {
	f := &Format{}
	if rest, ok := strings.CutPrefix(s, "escape="); ok {
		mode, text, _ := strings.Cut(rest, " ")
		switch mode {
		case "default":
			f.Escape = EscapeDefault
		case "json":
			f.Escape = EscapeJSON
		case "none":
			f.Escape = EscapeNone
		default:
			return nil, fmt.Errorf("escape=%s: use escape=default, escape=json or escape=none", mode)
		}
		s = text
	}
	lit := func(t string) {
		if t == "" {
			return
		}
		if n := len(f.Parts); n > 0 && f.Parts[n-1].Var == Lit {
			f.Parts[n-1].Text += t
			return
		}
		f.Parts = append(f.Parts, Part{Var: Lit, Text: t})
	}
	base := 0 // offset of s in the format, for messages
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			lit(s)
			break
		}
		lit(s[:i])
		at := base + i + 1
		s = s[i+1:]
		base = at
		var name string
		if strings.HasPrefix(s, "{") {
			j := strings.IndexByte(s, '}')
			if j < 0 {
				return nil, fmt.Errorf("${ at character %d of the format has no closing }", at)
			}
			name, s = s[1:j], s[j+1:]
			base += j + 1
		} else {
			j := 0
			for j < len(s) && isNameByte(s[j]) {
				j++
			}
			name, s = s[:j], s[j:]
			base += j
		}
		p, err := variable(name)
		if err != nil {
			return nil, fmt.Errorf("%w (character %d of the format)", err, at)
		}
		f.Parts = append(f.Parts, p)
	}
	return f, nil
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// variable resolves one name, as nginx does: lower-case names, $http_ and
// $sent_http_ followed by a header name with "_" for "-".
func variable(name string) (Part, error) {
	if name == "" {
		return Part{}, fmt.Errorf("a $ must start a variable name, e.g. $remote_addr (nginx has no escape for a literal $)")
	}
	for i := 0; i < len(name); i++ {
		if !isNameByte(name[i]) {
			return Part{}, fmt.Errorf("$%s is not a variable name: letters, digits and _ only", name)
		}
	}
	lower := strings.ToLower(name)
	if v, ok := vars[lower]; ok {
		return Part{Var: v}, nil
	}
	for _, h := range []struct {
		prefix string
		v      Var
	}{{"http_", HTTP}, {"sent_http_", SentHTTP}} {
		if hn, ok := strings.CutPrefix(lower, h.prefix); ok && hn != "" {
			return Part{Var: h.v, Text: textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(hn, "_", "-"))}, nil
		}
	}
	if why := unsupported[lower]; why != "" {
		return Part{}, fmt.Errorf("$%s is not supported: %s", name, why)
	}
	if near := nearest(lower); near != "" {
		return Part{}, fmt.Errorf("unknown variable $%s; did you mean $%s?", name, near)
	}
	return Part{}, fmt.Errorf("unknown variable $%s; berth knows %s", name, strings.Join(Known(), " "))
}

// nearest returns the known variable name at most 2 edits from name, or "".
func nearest(name string) string {
	best, bestD := "", 3
	for _, n := range slices.Sorted(maps.Keys(vars)) {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
