package proxy

// idlepool.go: the pooled-connection list both the local workers
// (router.go) and upstream servers (upstreams.go) keep, newest last.

// pooledConn is a connection that can sit in an idle list.
type pooledConn interface {
	comparable
	idleAt() int64 // unix nanos it was put back
	close()
}

// popIdle takes the warmest pooled connection (LIFO) off *idle, clearing
// its slot; the zero value when none is idle.
func popIdle[C pooledConn](idle *[]C) C {
	var zero C
	n := len(*idle)
	if n == 0 {
		return zero
	}
	c := (*idle)[n-1]
	(*idle)[n-1] = zero
	*idle = (*idle)[:n-1]
	return c
}

// reapIdle closes the connections of idle unused for longer than limit
// nanoseconds and returns the rest, in order, in the same backing array.
func reapIdle[C pooledConn](idle []C, now, limit int64) []C {
	var zero C
	keep := idle[:0]
	for _, c := range idle {
		if now-c.idleAt() > limit {
			c.close()
			continue
		}
		keep = append(keep, c)
	}
	for i := len(keep); i < len(idle); i++ {
		idle[i] = zero
	}
	return keep
}

func (u *upConn) idleAt() int64 { return u.idleSince }
func (c *pconn) idleAt() int64  { return c.idleSince }
