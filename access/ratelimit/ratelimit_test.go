package ratelimit

import (
	"container/list"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// newAt returns a Limiter whose millisecond 0 is base, so a test's offsets
// in whole milliseconds are the ticks nginx's arithmetic sees.
func newAt(t testing.TB, o Options, base time.Time) *Limiter {
	t.Helper()
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	l.epoch = base
	return l
}

type step struct {
	at    int64 // ms
	allow bool
	wait  int64 // ms
}

// TestNginxArithmetic replays hand traces of ngx_http_limit_req_lookup and
// _account, each line's numbers worked out from the C.
func TestNginxArithmetic(t *testing.T) {
	cases := []struct {
		name  string
		o     Options
		steps []step
	}{
		{"5r/s burst=2", Options{Rate: 5, Burst: 2}, []step{
			{0, true, 0},        // new key: excess 0
			{0, true, 200},      // ms 0: 0+1000 = 1000 → 1000*1000/5000
			{100, true, 300},    // 1000 - 500 + 1000 = 1500
			{100, false, 0},     // 1500 + 1000 = 2500 > 2000: refused, bucket unchanged
			{300, true, 300},    // 1500 - 1000 + 1000 = 1500 (last was 100)
			{2000, true, 0},     // drained: clamped to 0
			{1990, true, 200},   // clock back 10 ms: ms 0, 0 + 1000; last stays 2000
			{2000, true, 400},   // 1000 + 1000 = 2000 ≤ 2000
			{2000, false, 0},    // 3000 > 2000
			{-100000, false, 0}, // clock back over a minute: ms = 1: 2000 - 5 + 1000 = 2995 > 2000
			{3000, true, 0},     // last is still 2000: 2000 - 5000 + 1000 < 0, clamped to 0
		}},
		{"5r/s burst=2 nodelay", Options{Rate: 5, Burst: 2, NoDelay: true}, []step{
			{0, true, 0}, {0, true, 0}, {0, true, 0}, {0, false, 0}, {199, false, 0}, {200, true, 0},
		}},
		{"5r/s burst=3 delay=1", Options{Rate: 5, Burst: 3, Delay: 1}, []step{
			{0, true, 0},     // 0
			{0, true, 0},     // 1000 ≤ delay 1000
			{0, true, 200},   // 2000: (2000-1000)*1000/5000
			{0, true, 400},   // 3000
			{0, false, 0},    // 4000 > 3000
			{50, false, 0},   // 3000 - 250 + 1000 = 3750 > 3000
			{250, true, 350}, // 3000 - 1250 + 1000 = 2750: (2750-1000)*1000/5000
		}},
		{"5r/m burst=0: 83 milli/s, so 12.049 s", Options{Rate: 5.0 / 60}, []step{
			{0, true, 0},
			{12000, false, 0}, // 0 - 83*12000/1000 + 1000 = 4 > 0
			{12048, false, 0}, // 83*12048/1000 = 999 → 1
			{12049, true, 0},  // 1000 → 0
		}},
		{"30r/m burst=1", Options{Rate: 0.5, Burst: 1}, []step{
			{0, true, 0},
			{1000, true, 1000}, // 0 - 500 + 1000 = 500 → 500*1000/500
			{1999, false, 0},   // 500 - 499 + 1000 = 1001 > 1000
			{2000, true, 2000}, // 500 - 500 + 1000 = 1000
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := time.Now()
			l := newAt(t, c.o, base)
			for i, s := range c.steps {
				got := l.Take("k", base.Add(time.Duration(s.at)*time.Millisecond))
				want := Verdict{Allow: s.allow, Wait: time.Duration(s.wait) * time.Millisecond}
				if got != want {
					t.Fatalf("step %d at %d ms: got %+v, want %+v", i, s.at, got, want)
				}
			}
		})
	}
}

func TestSubMillisecondIsTheSameTick(t *testing.T) {
	base := time.Now()
	l := newAt(t, Options{Rate: 1}, base)
	l.Take("k", base.Add(999*time.Millisecond+999*time.Microsecond))
	// 1999.9 ms and 999.999 ms are ticks 1999 and 999: 1000 ms apart, drained.
	if v := l.Take("k", base.Add(1999*time.Millisecond+900*time.Microsecond)); !v.Allow {
		t.Fatalf("got %+v, want allowed", v)
	}
	// 1 µs before base is tick -1, not 0.
	if got := l.tick(base.Add(-time.Microsecond)); got != -1 {
		t.Fatalf("tick(-1µs) = %d, want -1", got)
	}
}

func TestEmptyAndHugeKeysAreNotLimited(t *testing.T) {
	base := time.Now()
	l := newAt(t, Options{Rate: 1}, base)
	huge := string(make([]byte, 65536))
	for range 5 {
		for _, k := range []string{"", huge} {
			if v := l.Take(k, base); !v.Allow || v.Wait != 0 {
				t.Fatalf("key of %d bytes: got %+v, want allowed at once", len(k), v)
			}
		}
	}
	if n := l.Len(); n != 0 {
		t.Fatalf("Len = %d, want 0: those keys are not accounted", n)
	}
}

func TestMilliRateRoundsDownLikeNginx(t *testing.T) {
	for _, c := range []struct {
		rate string
		want int64
	}{
		{"1r/m", 16}, {"5r/m", 83}, {"6r/m", 100}, {"30r/m", 500}, {"7/m", 116},
		{"59/m", 983}, {"60/m", 1000}, {"1/s", 1000}, {"5r/s", 5000}, {"1000000000/s", 1e12},
	} {
		r, err := ParseRate(c.rate)
		if err != nil {
			t.Fatal(err)
		}
		got, err := milliRate(r)
		if err != nil || got != c.want {
			t.Errorf("%s: %d, %v; nginx's rate*1000/scale is %d", c.rate, got, err, c.want)
		}
	}
	// Every N/m nginx can be given, against its integer division.
	for n := int64(1); n <= 100000; n++ {
		got, err := milliRate(float64(n) / 60)
		if want := n * 1000 / 60; err != nil || got != want {
			t.Fatalf("%d/m: %d, %v; want %d", n, got, err, want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
	}{
		{"5r/s", 5}, {"5/s", 5}, {"10/s", 10}, {"30r/m", 0.5}, {"5/m", 5.0 / 60}, {"1/m", 1.0 / 60},
		{"007/s", 7}, {"1000000000r/s", 1e9},
	} {
		got, err := ParseRate(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, err string }{
		{"5", `rate "5": no unit: write it as N/s or N/m (5/s, 30/m)`},
		{"", `rate "": no unit: write it as N/s or N/m (5/s, 30/m)`},
		{"5r/h", `rate "5r/h": unit "h" is not s or m: write it as N/s or N/m (a rate per hour is N/m over 60)`},
		{"5/S", `rate "5/S": unit "S" is not s or m: write it as N/s or N/m (a rate per hour is N/m over 60)`},
		{"5/s/s", `rate "5/s/s": unit "s/s" is not s or m: write it as N/s or N/m (a rate per hour is N/m over 60)`},
		{"0.5/s", `rate "0.5/s": "0.5" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{"-5/s", `rate "-5/s": "-5" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{"+5/s", `rate "+5/s": "+5" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{" 5/s", `rate " 5/s": " 5" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{"r/s", `rate "r/s": "" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{"5rr/s", `rate "5rr/s": "5r" is not a whole number of requests: write it as N/s or N/m (5/s, 30/m)`},
		{"0/m", `rate "0/m": zero requests: a rate is at least 1/m (to refuse everything, deny the location)`},
		{"1000000001/s", `rate "1000000001/s": more than 1000000000 requests per unit`},
		{"99999999999999999999999/s", `rate "99999999999999999999999/s": more than 1000000000 requests per unit`},
	} {
		_, err := ParseRate(c.in)
		if err == nil || err.Error() != c.err {
			t.Errorf("ParseRate(%q): error %v\n want %s", c.in, err, c.err)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	for _, c := range []struct {
		o   Options
		err string
	}{
		{Options{}, "rate 0 requests/s: out of range: it is 0.001/s (nginx's resolution; 1/m is 0.016) to 1000000000/s"},
		{Options{Rate: 0.0009}, "rate 0.0009 requests/s: out of range: it is 0.001/s (nginx's resolution; 1/m is 0.016) to 1000000000/s"},
		{Options{Rate: -1}, "rate -1 requests/s: out of range: it is 0.001/s (nginx's resolution; 1/m is 0.016) to 1000000000/s"},
		{Options{Rate: 2e9}, "rate 2e+09 requests/s: out of range: it is 0.001/s (nginx's resolution; 1/m is 0.016) to 1000000000/s"},
		{Options{Rate: 1, Burst: -1}, "burst -1: out of range: it is 0 (no burst) to 1000000 requests"},
		{Options{Rate: 1, Delay: 1000001}, "delay 1000001: out of range: it is 0 (delay all of the burst) to 1000000 requests"},
		{Options{Rate: 1, Burst: 5, Delay: 2, NoDelay: true}, "nodelay with delay 2: they contradict each other: keep nodelay (pass the whole burst at once) or delay (pass the first 2 at once)"},
		{Options{Rate: 1, MaxKeys: -1}, "max keys -1: negative: 0 means the default, 100000"},
	} {
		_, err := New(c.o)
		if err == nil || err.Error() != c.err {
			t.Errorf("New(%+v): error %v\n want %s", c.o, err, c.err)
		}
	}
}

// model is ngx_http_limit_req_lookup and _expire transliterated with a
// container/list, the zone's size counted in entries: the reference the
// Limiter's slab and shards must agree with.
type model struct {
	rate, burst, delay int64
	max                int
	lru                *list.List // front: most recent
	idx                map[string]*list.Element
}

type mentry struct {
	key          string
	last, excess int64
}

func (m *model) take(key string, now int64) Verdict {
	if el, ok := m.idx[key]; ok {
		m.lru.MoveToFront(el)
		e := el.Value.(*mentry)
		ms := now - e.last
		if ms < -60000 {
			ms = 1
		} else if ms < 0 {
			ms = 0
		}
		excess := e.excess - m.rate*ms/1000 + 1000
		if excess < 0 {
			excess = 0
		}
		if excess > m.burst {
			return Verdict{}
		}
		e.excess = excess
		if ms != 0 {
			e.last = now
		}
		if excess <= m.delay {
			return Verdict{Allow: true}
		}
		return Verdict{Allow: true, Wait: time.Duration((excess-m.delay)*1000/m.rate) * time.Millisecond}
	}
	m.expire(now, 1)
	if len(m.idx) >= m.max {
		m.expire(now, 0)
	}
	m.idx[key] = m.lru.PushFront(&mentry{key: key, last: now})
	return Verdict{Allow: true}
}

func (m *model) expire(now int64, n int) {
	for n < 3 {
		el := m.lru.Back()
		if el == nil {
			return
		}
		e := el.Value.(*mentry)
		if n != 0 {
			ms := now - e.last
			if ms < 0 {
				ms = -ms
			}
			if ms < 60000 || e.excess-m.rate*ms/1000 > 0 {
				return
			}
		}
		n++
		m.lru.Remove(el)
		delete(m.idx, e.key)
	}
}

func TestAgreesWithModel(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		o := Options{Rate: []float64{5, 2, 0.5, 5.0 / 60, 100}[seed%5], Burst: int(seed % 4), MaxKeys: 1 + int(seed%9)}
		switch seed % 3 {
		case 1:
			o.NoDelay = true
		case 2:
			o.Delay = 1
		}
		base := time.Now()
		l := newAt(t, o, base)
		m := &model{rate: l.rate, burst: l.burst, delay: l.delay, max: o.MaxKeys, lru: list.New(), idx: map[string]*list.Element{}}
		now := int64(0)
		for i := range 20000 {
			switch r := rng.IntN(100); {
			case r < 60:
				now += rng.Int64N(300)
			case r < 63:
				now += 60000 + rng.Int64N(60000) // long idle: expiry
			case r < 64:
				now -= rng.Int64N(90000) // the clock goes back
			}
			key := strconv.Itoa(rng.IntN(12))
			got := l.Take(key, base.Add(time.Duration(now)*time.Millisecond))
			want := m.take(key, now)
			if got != want {
				t.Fatalf("seed %d, %+v, step %d: Take(%s, %d) = %+v, model %+v", seed, o, i, key, now, got, want)
			}
			if l.Len() != len(m.idx) {
				t.Fatalf("seed %d step %d: Len %d, model %d", seed, i, l.Len(), len(m.idx))
			}
		}
	}
}

func TestFullTableEvictsLeastRecentlyUsed(t *testing.T) {
	base := time.Now()
	l := newAt(t, Options{Rate: 1, MaxKeys: 3}, base)
	at := base
	for _, k := range []string{"a", "b", "c", "a", "d"} { // d pushes out b, the LRU
		l.Take(k, at)
	}
	// A key still held was used at base: refused within the second. b was
	// dropped and starts with an empty bucket (and, new, drops the LRU: a).
	for _, c := range []struct {
		key   string
		allow bool
	}{{"a", false}, {"c", false}, {"d", false}, {"b", true}, {"a", true}} {
		if v := l.Take(c.key, at.Add(10*time.Millisecond)); v.Allow != c.allow {
			t.Errorf("%s: got %+v, want Allow %v", c.key, v, c.allow)
		}
	}
}

func TestShardsBoundTheTotal(t *testing.T) {
	for _, max := range []int{1, 4095, 8192, 100_000, 100_001, 1 << 20} {
		l, err := New(Options{Rate: 1, MaxKeys: max})
		if err != nil {
			t.Fatal(err)
		}
		sum := 0
		for i := range l.shard {
			sum += l.shard[i].max
		}
		if sum != max {
			t.Errorf("MaxKeys %d: %d shards hold %d", max, len(l.shard), sum)
		}
		now := time.Now()
		for i := range max + 5000 {
			l.Take(strconv.Itoa(i), now)
		}
		if n := l.Len(); n > max {
			t.Errorf("MaxKeys %d: Len %d", max, n)
		}
	}
}

func TestTakeAllocatesNothingForAKnownKey(t *testing.T) {
	l, _ := New(Options{Rate: 10, Burst: 5})
	now := time.Now()
	key := "203.0.113.7"
	l.Take(key, now)
	if n := testing.AllocsPerRun(1000, func() { l.Take(key, now) }); n != 0 {
		t.Fatalf("%v allocations per Take", n)
	}
}

// TestBytesPerKey measures what a held key costs: the table's slot, the
// entry, and the key's own bytes (an IPv4 address as text, as the proxy has
// it). The package doc and DefaultMaxKeys quote the figure.
func TestBytesPerKey(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k keys")
	}
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	l, _ := New(Options{Rate: 1, MaxKeys: n})
	now := time.Now()
	for i := range n {
		l.Take(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255), now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per key (%d keys of 9 to 12 bytes, %d shards)", per, l.Len(), len(l.shard))
	if per > 128 {
		t.Errorf("%.0f bytes per key: more than the ~100 DefaultMaxKeys's doc promises", per)
	}
	runtime.KeepAlive(l)
}

func TestConcurrentTakes(t *testing.T) {
	l, _ := New(Options{Rate: 1000, Burst: 10, MaxKeys: 50})
	now := time.Now()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				l.Take(strconv.Itoa((g*31+i)%80), now.Add(time.Duration(i)*time.Millisecond))
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n > 50 {
		t.Fatalf("Len %d over MaxKeys 50", n)
	}
}

func BenchmarkTakeOneKey(b *testing.B) {
	l, _ := New(Options{Rate: 1e6, Burst: 1000})
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		l.Take("203.0.113.7", now)
	}
}

// BenchmarkTakeParallel compares one lock with the default 16 shards, all
// CPUs taking for 10 000 known clients.
func BenchmarkTakeParallel(b *testing.B) {
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = fmt.Sprintf("10.0.%d.%d", i>>8, i&255)
	}
	for _, shards := range []int{1, 16} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			l, _ := New(Options{Rate: 1e6, Burst: 1000})
			l.setShards(shards, DefaultMaxKeys)
			now := time.Now()
			for _, k := range keys {
				l.Take(k, now)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(keys))
				for pb.Next() {
					l.Take(keys[i], now)
					if i++; i == len(keys) {
						i = 0
					}
				}
			})
		})
	}
}

// With keeps the buckets: a key that used its burst under the old options
// is still over it under the new ones, and a larger burst lets it in.
func TestWithKeepsBuckets(t *testing.T) {
	l, err := New(Options{Rate: 1, Burst: 2, NoDelay: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := 0; i < 3; i++ {
		if !l.Take("k", now).Allow {
			t.Fatalf("request %d refused inside the burst", i)
		}
	}
	if l.Take("k", now).Allow {
		t.Fatal("the 4th request passed a burst of 2")
	}
	same, err := l.With(Options{Rate: 1, Burst: 2, NoDelay: true})
	if err != nil {
		t.Fatal(err)
	}
	if same.Take("k", now).Allow {
		t.Fatal("the bucket was emptied by With")
	}
	bigger, err := l.With(Options{Rate: 1, Burst: 5, NoDelay: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bigger.Take("k", now).Allow {
		t.Fatal("a larger burst did not let the key in")
	}
	if _, err := l.With(Options{Rate: 2, Burst: 5}); err == nil {
		t.Fatal("With took another rate")
	}
}
