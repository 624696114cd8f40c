package logformat

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want *Format
	}{
		{`$remote_addr - [$time_local]`, &Format{Parts: []Part{{Var: RemoteAddr}, {Text: " - ["}, {Var: TimeLocal}, {Text: "]"}}}},
		{`${status}x$Status`, &Format{Parts: []Part{{Var: Status}, {Text: "x"}, {Var: Status}}}},
		{`$http_user_agent $sent_http_content_type $HTTP_X_FORWARDED_FOR`, &Format{Parts: []Part{
			{Var: HTTP, Text: "User-Agent"}, {Text: " "}, {Var: SentHTTP, Text: "Content-Type"}, {Text: " "}, {Var: HTTP, Text: "X-Forwarded-For"}}}},
		{`escape=json {"a":"$request_id"}`, &Format{Escape: EscapeJSON, Parts: []Part{{Text: `{"a":"`}, {Var: RequestID}, {Text: `"}`}}}},
		{`escape=none $uri`, &Format{Escape: EscapeNone, Parts: []Part{{Var: URI}}}},
		{`escape=default $query_string$is_args`, &Format{Parts: []Part{{Var: Args}, {Var: IsArgs}}}},
		{`no variables`, &Format{Parts: []Part{{Text: "no variables"}}}},
		{Combined, &Format{Parts: []Part{{Var: RemoteAddr}, {Text: " - "}, {Var: RemoteUser}, {Text: " ["}, {Var: TimeLocal},
			{Text: `] "`}, {Var: Request}, {Text: `" `}, {Var: Status}, {Text: " "}, {Var: BodyBytesSent}, {Text: ` "`},
			{Var: HTTP, Text: "Referer"}, {Text: `" "`}, {Var: HTTP, Text: "User-Agent"}, {Text: `"`}}}},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`$remote_addr $reqest_time`, "unknown variable $reqest_time; did you mean $request_time? (character 14 of the format)"},
		{`$nonsense_here`, "unknown variable $nonsense_here; berth knows $args"},
		{`$bytes_sent`, "$bytes_sent is not supported: berth counts body bytes only"},
		{`price: 5$`, "a $ must start a variable name"},
		{`a $ b`, "a $ must start a variable name, e.g. $remote_addr (nginx has no escape for a literal $) (character 3 of the format)"},
		{`${status`, "${ at character 1 of the format has no closing }"},
		{`${sta-tus}`, "$sta-tus is not a variable name"},
		{`escape=xml $status`, "escape=xml: use escape=default, escape=json or escape=none"},
		{`$http_`, "unknown variable $http_"},
	} {
		_, err := Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestUses(t *testing.T) {
	f, _ := Parse(`$status $upstream_response_time`)
	if !f.Uses(UpstreamResponseTime) || f.Uses(RequestID) {
		t.Errorf("Uses is wrong for %+v", f)
	}
}
