package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
)

// maxRateN bounds the N of "N/s" and "N/m": a billion requests a second is
// already no limit, and the bound keeps every product of nginx's arithmetic
// (milli-requests per second times milliseconds) far from overflowing.
const maxRateN = 1_000_000_000

// ParseRate reads a rate as nginx's limit_req_zone writes it ("5r/s",
// "30r/m") or as berth's config does ("5/s", "30/m"), and returns it in
// requests per second (30/m is 0.5). N is a whole number from 1, as nginx
// has it; a bare number ("5"), which nginx takes as 5r/s, is refused so a
// config says its unit, and so are units nginx does not know (/h, /d).
func ParseRate(s string) (float64, error) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("rate %q: no unit: write it as N/s or N/m (5/s, 30/m)", s)
	}
	num = strings.TrimSuffix(num, "r")
	var per float64
	switch unit {
	case "s":
		per = 1
	case "m":
		per = 60
	default:
		return 0, fmt.Errorf("rate %q: unit %q is not s or m: write it as N/s or N/m (a rate per hour is N/m over 60)", s, unit)
	}
	if num == "" || strings.TrimLeft(num, "0123456789") != "" {
		return 0, fmt.Errorf("rate %q: %q is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)", s, num)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > maxRateN {
		return 0, fmt.Errorf("rate %q: more than %d requests per unit", s, maxRateN)
	}
	if n == 0 {
		return 0, fmt.Errorf("rate %q: zero requests: a rate is at least 1/m (to refuse everything, deny the location)", s)
	}
	return float64(n) / per, nil
}
