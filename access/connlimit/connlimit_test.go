package connlimit

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func mustNew(t testing.TB, o Options) *Limiter {
	t.Helper()
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestMaxPerKey(t *testing.T) {
	l := mustNew(t, Options{Max: 2})
	r1, ok1 := l.Acquire("a")
	r2, ok2 := l.Acquire("a")
	_, ok3 := l.Acquire("a")
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("three of a with Max 2: %v %v %v, want true true false", ok1, ok2, ok3)
	}
	if _, ok := l.Acquire("b"); !ok {
		t.Fatal("b refused: keys are counted apart")
	}
	r1()
	if _, ok := l.Acquire("a"); !ok {
		t.Fatal("a refused after a release")
	}
	r2()
	if n := l.InProgress("a"); n != 1 {
		t.Fatalf("a in progress: %d, want 1", n)
	}
}

func TestReleaseTwiceCountsOnce(t *testing.T) {
	l := mustNew(t, Options{Max: 2})
	r, _ := l.Acquire("a")
	l.Acquire("a")
	r()
	r()
	if n := l.InProgress("a"); n != 1 {
		t.Fatalf("a in progress after releasing one twice: %d, want 1", n)
	}
}

func TestRefusedReleaseIsANoop(t *testing.T) {
	l := mustNew(t, Options{Max: 1})
	l.Acquire("a")
	r, ok := l.Acquire("a")
	if ok || r == nil {
		t.Fatalf("ok %v, release %p: want false and a non-nil no-op", ok, r)
	}
	r()
	if n := l.InProgress("a"); n != 1 {
		t.Fatalf("a in progress: %d, want 1", n)
	}
}

func TestEntriesGoAtZero(t *testing.T) {
	l := mustNew(t, Options{Max: 3})
	var rs []func()
	for i := range 100 {
		for range 3 {
			r, _ := l.Acquire(strconv.Itoa(i))
			rs = append(rs, r)
		}
	}
	if n := l.Len(); n != 100 {
		t.Fatalf("Len %d, want 100", n)
	}
	for _, r := range rs {
		r()
	}
	if n := l.Len(); n != 0 {
		t.Fatalf("Len %d after every release, want 0", n)
	}
	for i := range l.shard {
		if len(l.shard[i].n) != 0 {
			t.Fatalf("shard %d holds %d entries", i, len(l.shard[i].n))
		}
	}
}

func TestFullTableRefusesNewKeys(t *testing.T) {
	l := mustNew(t, Options{Max: 1, MaxKeys: 2})
	ra, _ := l.Acquire("a")
	l.Acquire("b")
	if _, ok := l.Acquire("c"); ok {
		t.Fatal("c taken past MaxKeys 2")
	}
	ra()
	if _, ok := l.Acquire("c"); !ok {
		t.Fatal("c refused once a's entry is gone")
	}
}

func TestFullShardedTableHoldsExactlyMaxKeys(t *testing.T) {
	const max = 20000
	l := mustNew(t, Options{Max: 1, MaxKeys: max})
	if len(l.shard) < 2 {
		t.Fatalf("%d shards for %d keys", len(l.shard), max)
	}
	taken := 0
	for i := range max + 100 {
		if _, ok := l.Acquire(strconv.Itoa(i)); ok {
			taken++
		}
	}
	if taken != max || l.Len() != max {
		t.Fatalf("took %d keys, Len %d: want %d", taken, l.Len(), max)
	}
}

func TestEmptyAndLongKeysAreNotLimited(t *testing.T) {
	l := mustNew(t, Options{Max: 1})
	long := strings.Repeat("x", 256)
	for range 3 {
		for _, k := range []string{"", long} {
			if _, ok := l.Acquire(k); !ok {
				t.Fatalf("key of %d bytes refused", len(k))
			}
		}
	}
	if n := l.Len(); n != 0 {
		t.Fatalf("Len %d: those keys are not counted", n)
	}
	if _, ok := l.Acquire(long[:255]); !ok {
		t.Fatal("a 255-byte key refused")
	}
	if _, ok := l.Acquire(long[:255]); ok {
		t.Fatal("a 255-byte key is limited like any other")
	}
}

func TestNewRefuses(t *testing.T) {
	for _, c := range []struct {
		o   Options
		err string
	}{
		{Options{}, "connections per client 0: out of range: it is 1 to 65535 (to not limit, leave it out)"},
		{Options{Max: 65536}, "connections per client 65536: out of range: it is 1 to 65535 (to not limit, leave it out)"},
		{Options{Max: 1, MaxKeys: -1}, "max keys -1: negative: 0 means the default, 100000"},
	} {
		_, err := New(c.o)
		if err == nil || err.Error() != c.err {
			t.Errorf("New(%+v): %v\n want %s", c.o, err, c.err)
		}
	}
}

// TestConcurrentNeverPastMax has goroutines take and release over a few
// keys, counting what they hold themselves: never more than Max of a key at
// once, and nothing left when they are done. Run with -race.
func TestConcurrentNeverPastMax(t *testing.T) {
	const max = 3
	l := mustNew(t, Options{Max: max, MaxKeys: 5})
	var held [8]atomic.Int32
	var refused atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3000 {
				k := (g + i) % len(held)
				r, ok := l.Acquire(strconv.Itoa(k))
				if !ok {
					refused.Add(1)
					continue
				}
				if n := held[k].Add(1); n > max {
					t.Errorf("key %d: %d held at once", k, n)
				}
				held[k].Add(-1)
				r()
				if i%3 == 0 {
					r() // a second release changes nothing
				}
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n != 0 {
		t.Fatalf("Len %d after every release", n)
	}
	t.Logf("%d refused of %d", refused.Load(), 16*3000)
}

func BenchmarkAcquireRelease(b *testing.B) {
	l := mustNew(b, Options{Max: 64})
	b.ReportAllocs()
	for b.Loop() {
		r, _ := l.Acquire("203.0.113.7")
		r()
	}
}
