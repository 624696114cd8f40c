package proxy

import (
	"testing"
	"time"

	"github.com/berth-dev/berth/control"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, out string
		ok      bool
	}{
		{"", "/", true},
		{"/", "/", true},
		{"/a/b", "/a/b", true},
		{"/a/b/", "/a/b/", true},
		{"//a///b", "/a/b", true},
		{"/a/./b", "/a/b", true},
		{"/a/.", "/a/", true},
		{"/a/b/..", "/a/", true},
		{"/a/b/../c", "/a/c", true},
		{"/a/../../b", "", false},
		{"/..", "", false},
		{"/.hidden/x", "/.hidden/x", true},
		{"/a/..b", "/a/..b", true},
		{"/a/b..", "/a/b..", true},
		{"*", "*", true},
		{"relative", "", false},
	}
	for _, tc := range tests {
		out, ok := normalizePath(tc.in)
		if ok != tc.ok || (ok && out != tc.out) {
			t.Errorf("normalizePath(%q) = %q, %v; want %q, %v", tc.in, out, ok, tc.out, tc.ok)
		}
	}
}

func TestHostOnly(t *testing.T) {
	for in, want := range map[string]string{
		"": "", "example.com": "example.com", "example.com:8080": "example.com",
		"[::1]:80": "[::1]", "[::1]": "[::1]", "1.2.3.4:5": "1.2.3.4",
	} {
		if got := hostOnly(in); got != want {
			t.Errorf("hostOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStaticMatch(t *testing.T) {
	st, err := compile(control.Proxy{Static: []control.Static{
		{URL: "/static/", Dir: "/srv/static"},
		{URL: "/static/img/", Dir: "/srv/img"},
		{URL: "/media", Dir: "/srv/media"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, dir, rel string }{
		{"/static/a.css", "/srv/static", "a.css"},
		{"/static/img/x.png", "/srv/img", "x.png"},
		{"/media/v.mp4", "/srv/media", "/v.mp4"},
		{"/media", "/srv/media", ""},
		{"/mediax", "", ""},
		{"/static", "", ""},
		{"/app", "", ""},
	}
	for _, tc := range tests {
		m, rel := st.match(tc.path)
		dir := ""
		if m != nil {
			dir = m.dir
		}
		if dir != tc.dir || rel != tc.rel {
			t.Errorf("match(%q) = %q %q, want %q %q", tc.path, dir, rel, tc.dir, tc.rel)
		}
	}
	for _, bad := range []control.Proxy{
		{Static: []control.Static{{URL: "static/", Dir: "/x"}}},
		{Static: []control.Static{{URL: "/s/", Dir: ""}}},
		{AccessLog: "verbose"},
		{TrustedProxies: []string{"10.0.0.0/33"}},
		{QueueSize: -1},
	} {
		if _, err := compile(bad); err == nil {
			t.Errorf("compile(%+v) accepted", bad)
		}
	}
}

// The packet is what readUwsgi (the fake worker's parser) reads back, and
// the size header is right.
func TestRealIP(t *testing.T) {
	st, _ := compile(control.Proxy{TrustedProxies: []string{"10.0.0.0/8", "::1"}})
	tests := []struct {
		vals []string
		want string
		ok   bool
	}{
		{[]string{"1.1.1.1"}, "1.1.1.1", true},
		{[]string{"1.1.1.1, 10.0.0.1"}, "1.1.1.1", true},
		{[]string{"9.9.9.9", "1.1.1.1, 10.0.0.1"}, "1.1.1.1", true}, // several header lines: the last is nearest
		{[]string{"10.0.0.2", "10.0.0.1"}, "10.0.0.2", true},
		{[]string{"1.1.1.1:8080"}, "1.1.1.1", true},
		{[]string{"x, 10.0.0.1"}, "", false},
		{[]string{" , "}, "", false},
	}
	for _, tc := range tests {
		got, ok := realIP(st, tc.vals)
		if got != tc.want || ok != tc.ok {
			t.Errorf("realIP(%q) = %q %v, want %q %v", tc.vals, got, ok, tc.want, tc.ok)
		}
	}
}

// The pool's measured service time, which admission divides the queue by:
// a few answers read late (a goroutine behind thousands in a burst) move it
// little, and a slower app still shows within a few dozen answers.
func TestRouterServiceTime(t *testing.T) {
	rt := &router{}
	for range 50 {
		rt.observe(300 * time.Microsecond)
	}
	for range 5 {
		rt.observe(80 * time.Millisecond)
	}
	if rt.svc > time.Millisecond {
		t.Errorf("five late answers lifted 300us to %v", rt.svc)
	}
	n := 0
	for rt.svc < 40*time.Millisecond {
		rt.observe(50 * time.Millisecond)
		n++
		if n > 100 {
			t.Fatalf("after 100 answers of 50ms the average is %v", rt.svc)
		}
	}
	if n > 60 {
		t.Errorf("%d answers of 50ms before the average passed 40ms", n)
	}
}
