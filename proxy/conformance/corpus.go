// Package conformance reads the HTTP/1.1 front's conformance corpus
// (proxy/testdata/conformance.txt) and replays its raw requests on a
// connection. The proxy's unit test runs the corpus against berth; an
// integration test runs the same file against nginx, so the two can only
// be compared on the same bytes.
//
// The corpus is line-based. A '#' line is a comment; cases are blocks of
// "key: value" lines separated by blank lines:
//
//	name: CL.TE
//	raw: "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
//	raw: "0\r\n\r\n"
//	want: 400 closed
//	nginx: same
//
//	name: unknown expectation
//	raw: "POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 2\r\n\r\nok"
//	want: 417 closed
//	nginx: 200 open
//	nginx-served: "POST / ok"
//
// raw (one or more, concatenated) is a Go-quoted string (strconv.Unquote),
// optionally followed by "* N" to repeat it N times. want is the final
// (non-1xx) statuses in order, then "open" or "closed": whether the server
// closes the connection after them. served (zero or more) is what the app
// received, one "METHOD REQUEST_URI body" Go-quoted string per request.
// nginx is nginx's outcome in want's syntax, with its app's requests in
// nginx-served lines (none: the app got nothing), or "same": statuses,
// connection and app requests all as berth's.
package conformance

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Outcome is what a server did with a case's bytes. The zero value is "no
// response, connection left open, the app got nothing".
type Outcome struct {
	// Statuses are the final (non-1xx) responses, in order.
	Statuses []int
	// Closed: the server closed the connection after them.
	Closed bool
	// Served is what the app received, "METHOD REQUEST_URI body", in order.
	Served []string
}

// Case is one entry of the corpus.
type Case struct {
	Name string
	Raw  string
	// Line is where the case starts in the corpus, for messages.
	Line  int
	Berth Outcome
	Nginx Outcome
	// NginxSame: the corpus says "nginx: same" (Nginx is then a copy of
	// Berth).
	NginxSame bool
}

// String formats o's statuses and connection state as a want: or nginx:
// value, e.g. "200 400 closed".
func (o Outcome) String() string {
	var b strings.Builder
	for _, s := range o.Statuses {
		fmt.Fprintf(&b, "%d ", s)
	}
	if o.Closed {
		b.WriteString("closed")
	} else {
		b.WriteString("open")
	}
	return b.String()
}

// Load reads the corpus at path.
func Load(path string) ([]Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the conformance corpus: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a corpus from r; file names r in errors, which say
// "file:line: what is wrong".
func Parse(r io.Reader, file string) ([]Case, error) {
	p := parser{file: file, names: map[string]int{}}
	sc := bufio.NewScanner(r)
	// A raw line may hold a long request head.
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		p.line++
		if err := p.take(sc.Text()); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, p.line+1, err)
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	return p.cases, nil
}

type parser struct {
	file  string
	line  int
	cases []Case
	cur   *Case
	// seen keys of the current case: want and nginx are required once.
	want, nginx, nginxServed bool
	names                    map[string]int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", p.file, p.line, fmt.Sprintf(format, args...))
}

func (p *parser) take(text string) error {
	text = strings.TrimRight(text, " \t")
	if strings.HasPrefix(text, "#") {
		return nil
	}
	if text == "" {
		return p.finish()
	}
	key, value, ok := strings.Cut(text, ":")
	if !ok {
		return p.errorf("%q is not a \"key: value\" line (keys: name, raw, want, served, nginx, nginx-served)", text)
	}
	value = strings.TrimSpace(value)
	if p.cur == nil {
		if key != "name" {
			return p.errorf("a case must start with \"name:\", not %q", key)
		}
	}
	switch key {
	case "name":
		if p.cur != nil {
			return p.errorf("a second name: in case %q; separate cases with a blank line", p.cur.Name)
		}
		if value == "" {
			return p.errorf("empty name:")
		}
		if at, dup := p.names[value]; dup {
			return p.errorf("case %q is already defined at line %d", value, at)
		}
		p.names[value] = p.line
		p.cur = &Case{Name: value, Line: p.line}
		p.want, p.nginx, p.nginxServed = false, false, false
	case "raw":
		s, err := unquoteRepeat(value)
		if err != nil {
			return p.errorf("raw: %v", err)
		}
		p.cur.Raw += s
	case "want":
		if p.want {
			return p.errorf("a second want: in case %q", p.cur.Name)
		}
		if err := parseOutcome(value, &p.cur.Berth); err != nil {
			return p.errorf("want: %v", err)
		}
		p.want = true
	case "served":
		s, err := strconv.Unquote(value)
		if err != nil {
			return p.errorf("served: %s is not a Go-quoted string: %v", value, err)
		}
		p.cur.Berth.Served = append(p.cur.Berth.Served, s)
	case "nginx":
		if p.nginx {
			return p.errorf("a second nginx: in case %q", p.cur.Name)
		}
		p.nginx = true
		if value == "same" {
			p.cur.NginxSame = true
			break
		}
		if err := parseOutcome(value, &p.cur.Nginx); err != nil {
			return p.errorf("nginx: %v (or \"same\")", err)
		}
	case "nginx-served":
		s, err := strconv.Unquote(value)
		if err != nil {
			return p.errorf("nginx-served: %s is not a Go-quoted string: %v", value, err)
		}
		p.cur.Nginx.Served = append(p.cur.Nginx.Served, s)
		p.nginxServed = true
	default:
		return p.errorf("unknown key %q (keys: name, raw, want, served, nginx, nginx-served)", key)
	}
	return nil
}

// finish checks and keeps the case in progress, if any.
func (p *parser) finish() error {
	c := p.cur
	if c == nil {
		return nil
	}
	p.cur = nil
	at := fmt.Sprintf("%s:%d: case %q", p.file, c.Line, c.Name)
	switch {
	case c.Raw == "":
		return fmt.Errorf("%s has no raw: line", at)
	case !p.want:
		return fmt.Errorf("%s has no want: line", at)
	case !p.nginx:
		return fmt.Errorf("%s has no nginx: line (nginx's outcome, or \"same\")", at)
	case c.NginxSame && p.nginxServed:
		return fmt.Errorf("%s has nginx: same and nginx-served: lines; drop one", at)
	}
	if c.NginxSame {
		c.Nginx = c.Berth
	}
	p.cases = append(p.cases, *c)
	return nil
}

// parseOutcome reads "200 400 closed" into o's statuses and Closed.
func parseOutcome(v string, o *Outcome) error {
	f := strings.Fields(v)
	if len(f) == 0 {
		return fmt.Errorf("empty; want statuses then open or closed, e.g. \"200 open\"")
	}
	switch f[len(f)-1] {
	case "open":
	case "closed":
		o.Closed = true
	default:
		return fmt.Errorf("%q must end in open or closed", v)
	}
	for _, s := range f[:len(f)-1] {
		n, err := strconv.Atoi(s)
		if err != nil || n < 200 || n > 599 {
			return fmt.Errorf("%q is not a final HTTP status (200-599)", s)
		}
		o.Statuses = append(o.Statuses, n)
	}
	return nil
}

// unquoteRepeat reads `"text"` or `"text" * N`.
func unquoteRepeat(v string) (string, error) {
	times := 1
	if i := strings.LastIndex(v, "*"); !strings.HasSuffix(v, `"`) && i > 0 {
		n, err := strconv.Atoi(strings.TrimSpace(v[i+1:]))
		if err != nil || n < 1 || n > 1<<20 {
			return "", fmt.Errorf("%q: the repeat count after * must be 1..1048576", v)
		}
		v, times = strings.TrimSpace(v[:i]), n
	}
	s, err := strconv.Unquote(v)
	if err != nil {
		return "", fmt.Errorf("%s is not a Go-quoted string (optionally followed by * N): %v", v, err)
	}
	return strings.Repeat(s, times), nil
}
