package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// sizeForms is the list of accepted size spellings, quoted in every size error.
const sizeForms = `use a whole number of bytes (1048576) or a whole number with a unit: ` +
	`K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. 75M or 512Mi`

// sizeUnits maps a unit suffix to its multiplier, with Kubernetes' meaning.
// Lower-case "k" is Kubernetes' own spelling of kilo, so it is accepted too;
// "m" is not, because Kubernetes reads it as milli and everyone else as mega.
var sizeUnits = map[string]int64{
	"":   1,
	"k":  1000,
	"K":  1000,
	"M":  1000 * 1000,
	"G":  1000 * 1000 * 1000,
	"T":  1000 * 1000 * 1000 * 1000,
	"Ki": 1 << 10,
	"Mi": 1 << 20,
	"Gi": 1 << 30,
	"Ti": 1 << 40,
}

// ParseSize reads a size as written in the configuration: "1048576", "75M",
// "512Mi". Negative sizes, fractions and other units ("1MB", "1.5M") are
// errors whose message lists the accepted forms.
func ParseSize(s string) (Size, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	digits, unit := s[:i], s[i:]
	mult, ok := sizeUnits[unit]
	if digits == "" || !ok {
		return 0, fmt.Errorf("invalid size %q: %s", s, sizeForms)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large; the largest is %d bytes", s, int64(math.MaxInt64))
	}
	return Size(n * mult), nil
}

// parseDuration reads a Go duration string ("30s", "1m30s", "0s"). A bare
// number other than 0 is refused: "30" could mean seconds or milliseconds.
func parseDuration(s string) (Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use a Go duration with a unit, such as 30s, 1m30s or 500ms (units: ns, us, ms, s, m, h)", s)
	}
	return Duration(d), nil
}

// String returns d as a Go duration string, e.g. "30s"; "0s" for zero.
func (d Duration) String() string { return time.Duration(d).String() }

// quoteShort quotes s for an error message, cutting it if it is long so one
// bad value cannot flood the terminal.
func quoteShort(s string) string {
	const max = 60
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		return strconv.Quote(string(r[:max])) + "..."
	}
	return strconv.Quote(s)
}

// suggest returns the candidate closest to key when it is close enough to be
// a likely typo, else "".
func suggest(key string, candidates []string) string {
	best, bestDist := "", math.MaxInt
	k := strings.ToLower(strings.ReplaceAll(key, "-", "_"))
	for _, c := range candidates {
		d := editDistance(k, c)
		limit := 1
		if len(c) >= 5 {
			limit = 2
		}
		if d <= limit && d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours each cost 1, so
// "wrokers" is one edit from "workers".
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
