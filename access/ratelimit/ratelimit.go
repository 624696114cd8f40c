// Package ratelimit is nginx's limit_req for berth's proxy: a leaky bucket
// per key (the client's address), computed with nginx's own integer
// arithmetic (ngx_http_limit_req_module.c) so a config moved from nginx
// refuses, delays and passes the same requests.
//
// The arithmetic, as nginx has it. A key's bucket holds an excess in
// thousandths of a request and the millisecond of its last accepted request.
// The rate is kept in thousandths of a request per second, rounded down:
// 5/m is 83, not 83.33, so a 1/m bucket drains one request in 62.5 s, as in
// nginx. A request at time now (whole milliseconds) computes
//
//	ms     = now - last                  (clamped: below -60000 → 1, below 0 → 0)
//	excess = max(0, excess - rate*ms/1000 + 1000)
//
// and is refused when excess > burst*1000, leaving the bucket as it was (a
// refused request is not counted and does not move last). Else the bucket
// takes the new excess (last moves only when ms > 0), and the request waits
// (excess - delay*1000)*1000/rate ms when its excess is above the delay
// threshold (0 by default: every request beyond the rate waits; nodelay: none
// does; delay=N: the first N of the burst do not). A key seen for the first
// time is passed with an excess of 0: its second request in the same
// millisecond already has 1000.
//
// Memory is bounded by Options.MaxKeys. Like nginx, every new key first
// drops up to two of the least recently used keys that have been idle for a
// minute and whose bucket has drained, and when the table is full it drops
// the least recently used key whatever its bucket holds (nginx does that when
// its zone's shared memory is full): that client starts again with an empty
// bucket. A key is "used" by every request, refused ones too, as in nginx.
//
// A table of 8192 keys or more is split into up to 16 shards by a seeded
// hash of the key, each with its own lock and LRU, and MaxKeys/16 keys: the
// least recently used key of the new key's shard is dropped, and the table
// may drop keys when it holds a little less than MaxKeys (99 565 of 100 000
// in TestBytesPerKey). On the 2-CPU machine this was written on, one lock
// and 16 shards measured the same (45 to 70 ns a Take from both CPUs, the
// spread of a shared machine); the shards are for proxies given more CPUs,
// where a flood of refused requests has every CPU taking the lock.
package ratelimit

import (
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"time"
)

// DefaultMaxKeys is the number of keys a Limiter holds when Options.MaxKeys
// is 0: 100 000 clients in about 10 MB (TestBytesPerKey measures 95 bytes a
// key for IPv4 addresses as text: the table's slot, the 40-byte entry, the
// key's bytes): what nginx keeps in a zone of about 6m (16 000 IPv4 states a
// megabyte, by its docs).
const DefaultMaxKeys = 100_000

// maxBurst bounds Burst and Delay: nginx keeps them times 1000 in a machine
// word; a million requests of burst is already no limit.
const maxBurst = 1_000_000

// Options are limit_req's parameters. The zero value is not a usable limit:
// Rate has no default (New refuses 0); every other field's zero is nginx's
// default.
type Options struct {
	// Rate is in requests per second, fractional: 5/m is 5.0/60 (see
	// ParseRate). nginx keeps it in whole thousandths of a request per
	// second, rounded down, and so does the Limiter; below 0.001 it is
	// refused, as nginx refuses rate=0.
	Rate float64
	// Burst is how many requests beyond the rate a key may have pending
	// before the next is refused; 0, nginx's default, refuses any request
	// that comes sooner than the rate allows.
	Burst int
	// NoDelay passes every request the burst allows at once instead of
	// spacing them out at the rate (nginx's nodelay).
	NoDelay bool
	// Delay is how many requests of the burst pass at once before the rest
	// are spaced out (nginx's delay=N, two-stage limiting); 0 with NoDelay
	// unset is nginx's default, where every request beyond the rate waits.
	// Setting both NoDelay and Delay is refused: nginx would keep whichever
	// came last on the line, which a config should not depend on.
	Delay int
	// MaxKeys bounds how many keys are remembered; 0 means DefaultMaxKeys.
	MaxKeys int
}

// Verdict is what nginx would do with one request.
type Verdict struct {
	// Allow is false when the request is refused (limit_req_status).
	Allow bool
	// Wait is how long to hold an allowed request before serving it (nginx
	// delays it); 0 serves it now, and is also Wait's value on a refusal.
	Wait time.Duration
}

// Limiter holds the buckets of one limit (one nginx zone with one limit_req
// on it). It is safe for concurrent use; Take takes a lock on one shard of
// the keys and allocates nothing for a key it already holds.
type Limiter struct {
	rate  int64 // thousandths of a request per second (nginx's ctx->rate)
	burst int64 // thousandths of a request (nginx's limit->burst)
	delay int64 // thousandths of a request (nginx's limit->delay)
	epoch time.Time
	seed  maphash.Seed
	mask  uint64
	shard []shard
}

type entry struct {
	key        string
	last       int64 // milliseconds since the Limiter's epoch
	excess     int64 // thousandths of a request
	prev, next int32 // LRU list, most recent at head; free list through next
}

const none = -1

type shard struct {
	mu         sync.Mutex
	idx        map[string]int32
	ents       []entry
	head, tail int32
	free       int32
	max        int
	_          [64]byte // keep two shards' locks off one cache line
}

// New returns a Limiter for the options, or an error naming the option that
// is out of range and the fix.
func New(o Options) (*Limiter, error) {
	rate, err := milliRate(o.Rate)
	if err != nil {
		return nil, err
	}
	if o.Burst < 0 || o.Burst > maxBurst {
		return nil, fmt.Errorf("burst %d: out of range: it is 0 (no burst) to %d requests", o.Burst, maxBurst)
	}
	if o.Delay < 0 || o.Delay > maxBurst {
		return nil, fmt.Errorf("delay %d: out of range: it is 0 (delay all of the burst) to %d requests", o.Delay, maxBurst)
	}
	if o.NoDelay && o.Delay != 0 {
		return nil, fmt.Errorf("nodelay with delay %d: they contradict each other: keep nodelay (pass the whole burst at once) or delay (pass the first %d at once)", o.Delay, o.Delay)
	}
	if o.MaxKeys < 0 {
		return nil, fmt.Errorf("max keys %d: negative: 0 means the default, %d", o.MaxKeys, DefaultMaxKeys)
	}
	maxKeys := o.MaxKeys
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}
	l := &Limiter{
		rate:  rate,
		burst: int64(o.Burst) * 1000,
		delay: int64(o.Delay) * 1000,
		epoch: time.Now(),
		seed:  maphash.MakeSeed(),
	}
	if o.NoDelay {
		l.delay = math.MaxInt64
	}
	l.setShards(shardCount(maxKeys), maxKeys)
	return l, nil
}

// milliRate converts requests per second to nginx's integer thousandths,
// rounding down as nginx's rate*1000/scale does, except where the float is
// a hair below a whole number it stands for (6/m is 100, not 99).
func milliRate(r float64) (int64, error) {
	if math.IsNaN(r) || r < 0.001 || r > maxRateN {
		return 0, fmt.Errorf("rate %g requests/s: out of range: it is 0.001/s (nginx's resolution; 1/m is 0.016) to %d/s", r, maxRateN)
	}
	m := r * 1000
	// A rate from ParseRate is N or N/60 requests a second: N*1000/60 is a
	// whole number or a third away from one, while float error at the
	// largest rate (1e12 thousandths) is a few 1e-4. An absolute tolerance
	// of 1e-3 lands on nginx's integer either way; a relative one did not.
	if near := math.Round(m); math.Abs(m-near) <= 1e-3 {
		m = near
	}
	return int64(math.Floor(m)), nil
}

// shardCount splits the table so a shard holds at least 4096 keys: a small
// table stays one exact LRU, a large one spreads the lock over 16.
func shardCount(maxKeys int) int {
	n := 1
	for n < 16 && maxKeys/(n*2) >= 4096 {
		n *= 2
	}
	return n
}

func (l *Limiter) setShards(n, maxKeys int) {
	l.shard = make([]shard, n)
	l.mask = uint64(n - 1)
	for i := range l.shard {
		s := &l.shard[i]
		s.idx = make(map[string]int32)
		s.head, s.tail, s.free = none, none, none
		s.max = maxKeys / n
		if i < maxKeys%n {
			s.max++
		}
	}
}

// Take accounts one request of key at now and says what nginx would do
// with it. An empty key is not limited (nginx skips a limit whose key is
// empty: a map that yields "" exempts a client), nor is one over 65535 bytes
// (nginx logs it and skips the limit). now is read to the millisecond; a now
// earlier than a key's last request is taken as no time passed, as nginx
// takes a clock that went back.
func (l *Limiter) Take(key string, now time.Time) Verdict {
	if key == "" || len(key) > 65535 {
		return Verdict{Allow: true}
	}
	t := l.tick(now)
	s := &l.shard[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	i, ok := s.idx[key]
	if !ok {
		s.insert(key, t, l.rate)
		s.mu.Unlock()
		return Verdict{Allow: true}
	}
	e := &s.ents[i]
	if s.head != i {
		s.unlink(i)
		s.pushFront(i)
	}
	ms := t - e.last
	if ms < -60000 {
		ms = 1
	} else if ms < 0 {
		ms = 0
	}
	excess := max(e.excess-drained(l.rate, ms)+1000, 0)
	if excess > l.burst {
		s.mu.Unlock()
		return Verdict{}
	}
	e.excess = excess
	if ms != 0 {
		e.last = t
	}
	s.mu.Unlock()
	if excess <= l.delay {
		return Verdict{Allow: true}
	}
	return Verdict{Allow: true, Wait: time.Duration((excess-l.delay)*1000/l.rate) * time.Millisecond}
}

// Len is the number of keys held.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shard {
		s := &l.shard[i]
		s.mu.Lock()
		n += len(s.idx)
		s.mu.Unlock()
	}
	return n
}

// tick is now in whole milliseconds since the epoch, rounded down (nginx's
// ngx_current_msec, a monotonic clock, is whole milliseconds too).
func (l *Limiter) tick(now time.Time) int64 {
	d := now.Sub(l.epoch)
	t := int64(d / time.Millisecond)
	if d < 0 && d%time.Millisecond != 0 {
		t--
	}
	return t
}

// drained is nginx's ctx->rate * ms / 1000, saturated where the product
// would overflow (any such bucket has long drained).
func drained(rate, ms int64) int64 {
	if ms > math.MaxInt64/rate {
		return math.MaxInt64 / 4
	}
	return rate * ms / 1000
}

// insert adds key with an empty bucket, after nginx's expiry: first up to
// two idle, drained keys from the LRU end; when the shard is still full, its
// least recently used key whatever it holds, then up to two more idle ones.
func (s *shard) insert(key string, t, rate int64) {
	s.expire(t, rate, 1)
	if len(s.idx) >= s.max {
		s.expire(t, rate, 0)
	}
	var i int32
	if s.free != none {
		i = s.free
		s.free = s.ents[i].next
	} else {
		s.ents = append(s.ents, entry{})
		i = int32(len(s.ents) - 1)
	}
	key = strings.Clone(key) // not a slice of the caller's request buffer, held for as long as the key
	s.ents[i] = entry{key: key, last: t}
	s.idx[key] = i
	s.pushFront(i)
}

// expire is ngx_http_limit_req_expire: n == 1 drops up to two entries at the
// LRU end that have been idle 60 s or more with a drained bucket; n == 0
// first drops the LRU entry by force.
func (s *shard) expire(t, rate int64, n int) {
	for ; n < 3; n++ {
		if s.tail == none {
			return
		}
		e := &s.ents[s.tail]
		if n != 0 {
			ms := t - e.last
			if ms < 0 {
				ms = -ms
			}
			if ms < 60000 || e.excess-drained(rate, ms) > 0 {
				return
			}
		}
		s.remove(s.tail)
	}
}

func (s *shard) remove(i int32) {
	s.unlink(i)
	e := &s.ents[i]
	delete(s.idx, e.key)
	*e = entry{prev: none, next: s.free}
	s.free = i
}

func (s *shard) unlink(i int32) {
	e := &s.ents[i]
	if e.prev != none {
		s.ents[e.prev].next = e.next
	} else {
		s.head = e.next
	}
	if e.next != none {
		s.ents[e.next].prev = e.prev
	} else {
		s.tail = e.prev
	}
}

func (s *shard) pushFront(i int32) {
	e := &s.ents[i]
	e.prev, e.next = none, s.head
	if s.head != none {
		s.ents[s.head].prev = i
	} else {
		s.tail = i
	}
	s.head = i
}

// With returns a Limiter with o's burst, delay and nodelay that shares l's
// buckets: a reload that changes only those keeps every client's bucket (a
// client in its burst stays in it). o's Rate and MaxKeys must be l's; a new
// rate or table size is a new Limiter (New), its buckets empty.
func (l *Limiter) With(o Options) (*Limiter, error) {
	n, err := New(Options{Rate: o.Rate, Burst: o.Burst, NoDelay: o.NoDelay, Delay: o.Delay, MaxKeys: 1})
	if err != nil {
		return nil, err
	}
	if n.rate != l.rate {
		return nil, fmt.Errorf("rate %g requests/s: not this limiter's (%g/s): make a new one", o.Rate, float64(l.rate)/1000)
	}
	c := *l // the shards are shared: the same slice
	c.burst, c.delay = n.burst, n.delay
	return &c, nil
}
