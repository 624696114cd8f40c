package conformance

import (
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const corpus = `# a comment

name: one
raw: "GET / HTTP/1.1\r\n"
raw: "X: " 
raw: "a" * 3
raw: "\r\n\r\n"
want: 200 400 closed
served: "GET / "
nginx: same

# nginx differs
name: two
raw: "OPTIONS * HTTP/1.1\r\n\r\n"
want: 200 open
nginx: 400 closed
`
	cases, err := Parse(strings.NewReader(corpus), "c.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 2 {
		t.Fatalf("%d cases, want 2", len(cases))
	}
	one, two := cases[0], cases[1]
	if one.Name != "one" || one.Line != 3 || one.Raw != "GET / HTTP/1.1\r\nX: aaa\r\n\r\n" {
		t.Errorf("case one: %+v", one)
	}
	if got := fmt.Sprintf("%v %v %q", one.Berth.Statuses, one.Berth.Closed, one.Berth.Served); got != `[200 400] true ["GET / "]` {
		t.Errorf("case one's want: %s", got)
	}
	if !one.NginxSame || fmt.Sprintf("%+v", one.Nginx) != fmt.Sprintf("%+v", one.Berth) {
		t.Errorf("nginx: same did not copy berth's outcome: %+v", one.Nginx)
	}
	if two.Raw != "OPTIONS * HTTP/1.1\r\n\r\n" || two.NginxSame || two.Nginx.String() != "400 closed" || two.Nginx.Served != nil {
		t.Errorf("case two: %+v", two)
	}
	if two.Berth.String() != "200 open" {
		t.Errorf("case two's want: %s", two.Berth)
	}
}

// TestParseErrors: a malformed entry is an error naming the file and line.
func TestParseErrors(t *testing.T) {
	const ok = "name: a\nraw: \"x\"\nwant: 200 open\nnginx: same\n"
	for _, tc := range []struct {
		name, corpus, want string
	}{
		{"no colon", "name: a\nraw \"x\"\n", `c.txt:2: "raw \"x\"" is not a "key: value" line`},
		{"unknown key", "name: a\nbody: \"x\"\n", `c.txt:2: unknown key "body"`},
		{"starts without name", "raw: \"x\"\n", `c.txt:1: a case must start with "name:"`},
		{"unquoted raw", "name: a\nraw: GET /\n", `c.txt:2: raw: GET / is not a Go-quoted string`},
		{"bad repeat", "name: a\nraw: \"x\" * lots\n", `c.txt:2: raw: "\"x\" * lots": the repeat count`},
		{"bad escape", "name: a\nraw: \"\\q\"\n", `c.txt:2: raw: "\q" is not a Go-quoted string`},
		{"want without state", "name: a\nraw: \"x\"\nwant: 200\n", `c.txt:3: want: "200" must end in open or closed`},
		{"want 1xx", "name: a\nraw: \"x\"\nwant: 100 open\n", `c.txt:3: want: "100" is not a final HTTP status`},
		{"want empty", "name: a\nraw: \"x\"\nwant:\n", `c.txt:3: want: empty`},
		{"two wants", "name: a\nraw: \"x\"\nwant: 200 open\nwant: 200 open\n", `c.txt:4: a second want: in case "a"`},
		{"bad served", "name: a\nraw: \"x\"\nwant: 200 open\nserved: GET\n", `c.txt:4: served: GET is not a Go-quoted string`},
		{"bad nginx", "name: a\nraw: \"x\"\nwant: 200 open\nnginx: like berth\n", `c.txt:4: nginx: "like berth" must end in open or closed`},
		{"same and served", "name: a\nraw: \"x\"\nwant: 200 open\nnginx: same\nnginx-served: \"GET / \"\n", `c.txt:1: case "a" has nginx: same and nginx-served: lines`},
		{"no raw", "name: a\nwant: 200 open\nnginx: same\n", `c.txt:1: case "a" has no raw: line`},
		{"no want", "name: a\nraw: \"x\"\nnginx: same\n", `c.txt:1: case "a" has no want: line`},
		{"no nginx", "name: a\nraw: \"x\"\nwant: 200 open\n", `c.txt:1: case "a" has no nginx: line`},
		{"no blank line", ok + "name: b\n", `c.txt:5: a second name: in case "a"`},
		{"duplicate name", ok + "\n" + ok, `c.txt:6: case "a" is already defined at line 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.corpus), "c.txt")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
