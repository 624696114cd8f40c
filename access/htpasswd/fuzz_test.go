package htpasswd

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var errLine = regexp.MustCompile(`^f:(?:([1-9][0-9]*):)? \S`)

// FuzzParse: for any bytes, Parse does not panic; each line of its error
// names the file, and a line of it when it is about one; a file it accepts
// has a user for each line that is neither blank nor a comment, checks
// passwords without panicking, and refuses users it does not have. Seeds:
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		file, err := Parse("f", data)
		lines := bytes.Count(data, []byte("\n")) + 1
		if err != nil {
			if file != nil {
				t.Fatal("a File returned with an error")
			}
			for _, l := range strings.Split(err.Error(), "\n") {
				m := errLine.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("error line %q is not f:N: … or f: …", l)
				}
				if m[1] != "" {
					if n, _ := strconv.Atoi(m[1]); n > lines {
						t.Fatalf("error line %q: the input has %d lines", l, lines)
					}
				}
			}
			return
		}
		users := 0
		for _, l := range bytes.Split(data, []byte("\n")) {
			l = bytes.TrimSuffix(l, []byte("\r"))
			if len(bytes.TrimSpace(l)) > 0 && l[0] != '#' {
				users++
			}
		}
		if file.Len() != users {
			t.Fatalf("%d users from %d user lines", file.Len(), users)
		}
		if file.dummy.scheme == schemeBcrypt && file.dummy.cost > 6 {
			return // a costly hash would make each input take seconds
		}
		for user := range file.users {
			file.Check(user, password)
			if file.Check(user+"\x00", password) {
				t.Fatalf("user %q accepted", user+"\x00")
			}
		}
	})
}
