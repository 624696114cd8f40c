// Package connlimit is nginx's limit_conn for berth's proxy: at most Max
// requests in progress per key (the client's address), the rest refused.
//
// As in nginx, what is counted is a request from the moment it is taken
// until it is answered (nginx counts per request, in its preaccess phase,
// and releases at the request's end: an idle keep-alive connection holds
// nothing, and each HTTP/2 stream counts), a key's entry is removed when
// its count returns to 0, so memory follows the clients that have requests
// in progress, and a full table refuses a new key (nginx refuses when its
// zone's memory is full) rather than forget a count it would then let past
// the limit.
package connlimit

import (
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
)

// DefaultMaxKeys is the number of distinct keys with requests in progress
// a Limiter holds when Options.MaxKeys is 0: 100 000 clients, more than a
// proxy has connections open.
const DefaultMaxKeys = 100_000

// maxPerKey is nginx's bound: it keeps the count in 16 bits.
const maxPerKey = 65535

// maxKeyLen is nginx's: a longer key is logged and not limited.
const maxKeyLen = 255

// Options are limit_conn's parameters. The zero value is not a usable
// limit: Max has no default (New refuses 0).
type Options struct {
	// Max is how many requests one key may have in progress, 1 to 65535
	// as in nginx; 0 is refused, as it would refuse every request (to not
	// limit, make no Limiter).
	Max int
	// MaxKeys bounds how many keys with requests in progress are held;
	// 0 means DefaultMaxKeys. Past it, a request of a new key is refused.
	MaxKeys int
}

// Limiter counts requests in progress per key. It is safe for concurrent
// use.
type Limiter struct {
	max     int32
	maxKeys int64
	keys    atomic.Int64 // held across the shards
	seed    maphash.Seed
	mask    uint64
	shard   []shard
}

type shard struct {
	mu sync.Mutex
	n  map[string]int32
	_  [64]byte // keep two shards' locks off one cache line
}

// New returns a Limiter for the options, or an error naming the option that
// is out of range and the fix.
func New(o Options) (*Limiter, error) {
	if o.Max < 1 || o.Max > maxPerKey {
		return nil, fmt.Errorf("connections per client %d: out of range: it is 1 to %d (to not limit, leave it out)", o.Max, maxPerKey)
	}
	if o.MaxKeys < 0 {
		return nil, fmt.Errorf("max keys %d: negative: 0 means the default, %d", o.MaxKeys, DefaultMaxKeys)
	}
	maxKeys := o.MaxKeys
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}
	n := 1
	for n < 16 && maxKeys/(n*2) >= 4096 {
		n *= 2
	}
	l := &Limiter{max: int32(o.Max), maxKeys: int64(maxKeys), seed: maphash.MakeSeed(), mask: uint64(n - 1), shard: make([]shard, n)}
	for i := range l.shard {
		l.shard[i].n = make(map[string]int32)
	}
	return l, nil
}

// Acquire counts one request of key in progress, if key has fewer than Max
// and there is room for it. release ends it: call it once the request is
// answered; a second call does nothing. When ok is false nothing was
// counted and release is a no-op, so `defer release()` is right either way.
// An empty key is not limited (nginx skips a limit whose key is empty), nor
// is one over 255 bytes (nginx logs it and skips the limit).
func (l *Limiter) Acquire(key string) (release func(), ok bool) {
	if key == "" || len(key) > maxKeyLen {
		return noop, true
	}
	s := &l.shard[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	n, held := s.n[key]
	switch {
	case n >= l.max:
		s.mu.Unlock()
		return noop, false
	case !held:
		if l.keys.Add(1) > l.maxKeys {
			l.keys.Add(-1)
			s.mu.Unlock()
			return noop, false
		}
		key = strings.Clone(key) // not a slice of the caller's request buffer
	}
	s.n[key] = n + 1
	s.mu.Unlock()
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			return
		}
		s.mu.Lock()
		if n := s.n[key] - 1; n > 0 {
			s.n[key] = n
		} else {
			delete(s.n, key)
			l.keys.Add(-1)
		}
		s.mu.Unlock()
	}, true
}

// InProgress is the number of requests of key in progress.
func (l *Limiter) InProgress(key string) int {
	s := &l.shard[maphash.String(l.seed, key)&l.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.n[key])
}

// Len is the number of keys with requests in progress.
func (l *Limiter) Len() int { return int(l.keys.Load()) }

func noop() {}
