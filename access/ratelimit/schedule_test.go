package ratelimit

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The request schedules and limit_req settings TestSideBySideWithNginx sends
// to a real nginx. A schedule is a list of offsets in ms from its first
// request; requests at the same offset are a burst, sent together, and
// compared with nginx's as a group (which of them nginx took first is not
// the client's to choose). Distinct offsets are at least 2*jitter apart, so
// a request never overtakes the one before it.

// jitter is how late any request may reach nginx relative to the others
// without changing what nginx and the Limiter decide: every schedule is
// checked to keep its verdicts under that much (TestSchedulesHaveMargins),
// and a run whose arrivals at nginx (from its access log) spread more than
// that is sent again, not compared.
const jitter = 30 // ms

type limitParams struct {
	rate    string
	burst   int
	nodelay bool
	delay   int
}

func (p limitParams) String() string {
	s := "rate=" + p.rate
	if p.burst > 0 {
		s += fmt.Sprintf(" burst=%d", p.burst)
	}
	if p.nodelay {
		s += " nodelay"
	}
	if p.delay > 0 {
		s += fmt.Sprintf(" delay=%d", p.delay)
	}
	return s
}

func (p limitParams) options(t testing.TB) Options {
	t.Helper()
	r, err := ParseRate(p.rate)
	if err != nil {
		t.Fatal(err)
	}
	return Options{Rate: r, Burst: p.burst, NoDelay: p.nodelay, Delay: p.delay}
}

var nginxParams = func() []limitParams {
	var ps []limitParams
	for _, rate := range []string{"5r/s", "2r/s", "30r/m"} {
		ps = append(ps,
			limitParams{rate: rate},
			limitParams{rate: rate, burst: 5},
			limitParams{rate: rate, burst: 5, nodelay: true},
			limitParams{rate: rate, burst: 5, delay: 2},
		)
	}
	return ps
}()

type schedule struct {
	name string
	at   []int64 // ms from the first request, non-decreasing
}

// series is n offsets from start, step apart.
func series(start, step int64, n int) []int64 {
	at := make([]int64, n)
	for i := range at {
		at[i] = start + int64(i)*step
	}
	return at
}

// burst is n requests at one offset.
func burst(at int64, n int) []int64 { return slices.Repeat([]int64{at}, n) }

// The schedules were found by a search over these shapes for ones whose
// verdicts keep jitter ms of margin under all twelve settings.
var nginxSchedules = []schedule{
	{"burst, steady, burst, steady", slices.Concat(
		burst(0, 8), series(1250, 280, 7), burst(3860, 7), series(4510, 340, 8))},
	{"burst, faster than 5r/s, burst, steady", slices.Concat(
		burst(0, 9), series(750, 150, 5), burst(2700, 3), series(3250, 300, 13))},
	{"fours every 850 ms", slices.Concat(
		burst(0, 4), burst(850, 4), burst(1700, 4), burst(2550, 4),
		burst(3400, 4), burst(4250, 4), burst(5100, 4), burst(5950, 2))},
}

type outcome struct {
	status int   // 200 or 429
	wait   int64 // ms
}

func (o outcome) String() string {
	if o.status != 200 {
		return fmt.Sprint(o.status)
	}
	if o.wait == 0 {
		return "200"
	}
	return fmt.Sprintf("200+%dms", o.wait)
}

// simulate feeds a fresh Limiter one key's requests at the given ms, in
// the order of their times (ties in index order), and returns what it
// decides for each, in index order.
func simulate(t testing.TB, o Options, at []int64) []outcome {
	return simulateBy(t, o, at, at)
}

// simulateBy is simulate with ties of at broken by order, then by index.
func simulateBy(t testing.TB, o Options, at, order []int64) []outcome {
	t.Helper()
	idx := make([]int, len(at))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Or(cmp.Compare(at[a], at[b]), cmp.Compare(order[a], order[b]))
	})
	base := time.Now()
	l := newAt(t, o, base)
	out := make([]outcome, len(at))
	for _, i := range idx {
		v := l.Take("127.0.0.1", base.Add(time.Duration(at[i])*time.Millisecond))
		out[i] = outcome{status: 429}
		if v.Allow {
			out[i] = outcome{status: 200, wait: v.Wait.Milliseconds()}
		}
	}
	return out
}

// groups splits the indexes of requests into bursts: those at the same
// time (the order within one is not the client's, nor the log's, to tell),
// in the order of their times.
func groups(at []int64) [][]int {
	idx := make([]int, len(at))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(at[a], at[b]) })
	var gs [][]int
	for k, i := range idx {
		if k == 0 || at[i] != at[idx[k-1]] {
			gs = append(gs, nil)
		}
		gs[len(gs)-1] = append(gs[len(gs)-1], i)
	}
	return gs
}

// sameOutcomes compares two runs of a schedule burst by burst: within a
// burst as sorted lists, the statuses exactly and the waits within tol ms.
// It returns "" or a description of the first difference.
func sameOutcomes(at []int64, want, got []outcome, tol int64) string {
	for _, g := range groups(at) {
		w, o := pick(want, g), pick(got, g)
		for k := range w {
			if w[k].status != o[k].status || abs(w[k].wait-o[k].wait) > tol {
				return fmt.Sprintf("the burst at %d ms: %v, want %v (waits within %d ms)", at[g[0]], o, w, tol)
			}
		}
	}
	return ""
}

// describe writes outcomes burst by burst, each burst sorted (the order
// within one is nginx's to choose), repeats counted: "200 429×7 | 200+400ms".
func describe(at []int64, out []outcome) string {
	var b strings.Builder
	for k, g := range groups(at) {
		if k > 0 {
			b.WriteString(" | ")
		}
		p := pick(out, g)
		for i := 0; i < len(p); {
			j := i
			for j < len(p) && p[j] == p[i] {
				j++
			}
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(p[i].String())
			if j-i > 1 {
				fmt.Fprintf(&b, "×%d", j-i)
			}
			i = j
		}
	}
	return b.String()
}

func pick(out []outcome, idx []int) []outcome {
	p := make([]outcome, len(idx))
	for k, i := range idx {
		p[k] = out[i]
	}
	slices.SortFunc(p, func(a, b outcome) int {
		if a.status != b.status {
			return a.status - b.status
		}
		return int(a.wait - b.wait)
	})
	return p
}

func abs(x int64) int64 { return max(x, -x) }

// waitTolerance is how far a wait may move when each arrival moves by up
// to j ms: the excess it comes from moves by at most rate*j (the bucket is a
// max of linear terms in the difference of two arrival times), so the wait
// by j; plus 2 ms for nginx's whole milliseconds (its clock and ours tick at
// different instants), and a few thousandths of a request of rounding
// (rate*ms/1000 rounds down at each request, and different ms round
// differently), each 1000/rate ms of wait: 2 ms at 30r/m.
func waitTolerance(j int64, o Options) int64 {
	rate, _ := milliRate(o.Rate)
	return j + 2 + 4*1000/rate
}

// unsteady says whether the outcomes of requests at times (ms), compared
// burst by burst of at, change when each arrives up to j ms later: "" if
// they stay, else how they change. Requests keep their order where their
// times differ. It tries each request late alone, all but each one late,
// alternate ones late, and draws random delays with a fixed seed. As the
// Limiter only sees differences of times, that covers arrivals that spread
// by j ms either way.
func unsteady(t testing.TB, o Options, at, times []int64, j int64, draws int) string {
	want := simulate(t, o, times)
	try := func(late func(i int) int64) string {
		moved := make([]int64, len(times))
		for i := range moved {
			moved[i] = times[i] + late(i)
		}
		if d := sameOutcomes(at, want, simulateBy(t, o, moved, times), waitTolerance(j, o)); d != "" {
			lates := make([]string, len(moved))
			for i := range moved {
				lates[i] = fmt.Sprint(moved[i] - times[i])
			}
			return fmt.Sprintf("with arrivals late by [%s] ms, %s", strings.Join(lates, " "), d)
		}
		return ""
	}
	for k := range times {
		if d := try(func(i int) int64 { return j * b2i(i == k) }); d != "" {
			return d
		}
		if d := try(func(i int) int64 { return j * b2i(i != k) }); d != "" {
			return d
		}
	}
	for odd := range int64(2) {
		if d := try(func(i int) int64 { return j * (int64(i)%2 ^ odd) }); d != "" {
			return d
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range draws {
		if d := try(func(int) int64 { return rng.Int64N(j + 1) }); d != "" {
			return d
		}
	}
	return ""
}

// TestSchedulesHaveMargins checks the fixtures of the side-by-side test,
// with no nginx: distinct offsets far enough apart that requests keep their
// order, and each schedule's verdicts unchanged under every setting when
// arrivals spread by jitter ms.
func TestSchedulesHaveMargins(t *testing.T) {
	for _, s := range nginxSchedules {
		for i := 1; i < len(s.at); i++ {
			if d := s.at[i] - s.at[i-1]; d != 0 && d < 2*jitter {
				t.Fatalf("%s: offsets %d and %d are %d ms apart: at least %d, or equal (a burst)", s.name, s.at[i-1], s.at[i], d, 2*jitter)
			}
		}
		for _, p := range nginxParams {
			if d := unsteady(t, p.options(t), s.at, s.at, jitter, 3000); d != "" {
				t.Errorf("%s, %s: not %d ms from every bucket boundary: %s", s.name, p, jitter, d)
			}
		}
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
