package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a configuration, printed as FILE:LINE: KEY.PATH: MESSAGE
// the way `nginx -t` does. File is "" for a Config built in code, Line is 0
// when the problem has no line (a default value, or a Config built in code),
// and Path is "" for problems with the document as a whole (YAML syntax).
type Error struct {
	File string
	Line int
	Path string // dotted key path: "workers.count", "static[1].dir"
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one configuration, in line order, so a
// user fixes them all in one pass. Its text is one Error per line.
type ErrorList []*Error

func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find the individual *Error values.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// asError returns nil for an empty list (never a typed nil inside an error
// interface), else the list sorted by line.
func (l ErrorList) asError() error {
	if len(l) == 0 {
		return nil
	}
	slices.SortStableFunc(l, func(a, b *Error) int { return cmp.Compare(a.Line, b.Line) })
	return l
}
