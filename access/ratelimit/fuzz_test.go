package ratelimit

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var rateForm = regexp.MustCompile(`^([0-9]+)r?/([sm])$`)

// FuzzParseRate: no panic; an error names the value first; a rate accepted
// is of nginx's form, gives nginx's integer rate (N*1000/scale) and makes a
// Limiter. Seeds: testdata/fuzz/FuzzParseRate.
func FuzzParseRate(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			if want := fmt.Sprintf("rate %q: ", s); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			return
		}
		m := rateForm.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("%q accepted as %v: not N/s, N/m, Nr/s or Nr/m", s, r)
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		scale := int64(1)
		if m[2] == "m" {
			scale = 60
		}
		if got, err := milliRate(r); err != nil || got != n*1000/scale {
			t.Fatalf("%q: %d thousandths/s, %v; nginx has %d", s, got, err, n*1000/scale)
		}
		if _, err := New(Options{Rate: r}); err != nil {
			t.Fatalf("%q accepted, but New refuses it: %v", s, err)
		}
	})
}
