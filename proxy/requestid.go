package proxy

// requestid.go: request IDs (proxy.request_id). Every request gets one: the
// X-Request-ID a trusted proxy sent, else a new one. The app gets it as
// HTTP_X_REQUEST_ID, the client in the response's X-Request-ID, and the
// access log and berth's own lines about the request carry it, so one ID
// joins the front's, berth's and the app's logs.

import (
	crand "crypto/rand"
	"encoding/binary"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// maxRequestID bounds an incoming X-Request-ID that is kept; a longer one
// is replaced, so a client cannot fill the logs through a trusted proxy.
const maxRequestID = 200

// idGen makes request IDs of 32 lower-case hex digits, the shape of
// nginx's $request_id: 16 drawn once per process, then 16 from a counter
// passed through a bijective mixer with a random key. No two IDs of one
// process are equal, those of two processes differ by their first half,
// and a request costs an atomic add, not a getrandom(2) call. The IDs are
// not secrets: they are unguessable only by accident.
type idGen struct {
	prefix [16]byte
	key    uint64
	n      atomic.Uint64
}

const hexDigits = "0123456789abcdef"

func newIDGen() *idGen {
	var seed [16]byte
	if _, err := crand.Read(seed[:]); err != nil {
		// Never on Linux 3.17+; the IDs must still differ between proxies.
		binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
		binary.LittleEndian.PutUint64(seed[8:], uint64(os.Getpid()))
	}
	g := &idGen{key: binary.LittleEndian.Uint64(seed[8:])}
	putHex(g.prefix[:], binary.LittleEndian.Uint64(seed[:]))
	return g
}

// next returns a new ID.
func (g *idGen) next() string {
	var b [32]byte
	copy(b[:16], g.prefix[:])
	putHex(b[16:], mix64(g.n.Add(1)+g.key))
	return string(b[:])
}

// mix64 is SplitMix64's finalizer: each step (xor with a shift of itself,
// multiplication by an odd constant) is invertible, so distinct inputs give
// distinct outputs, and consecutive counters look unrelated.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func putHex(b []byte, x uint64) {
	for i := 15; i >= 0; i-- {
		b[i] = hexDigits[x&0xf]
		x >>= 4
	}
}

// requestID is r's ID: its X-Request-ID when a trusted proxy sent exactly
// one that is fit to log, else a new one. A client that is not a trusted
// proxy cannot choose its ID (it could make its requests look like
// another's in the logs).
func (s *Server) requestID(r *http.Request, st *settings, ci *connInfo) string {
	if v := r.Header["X-Request-Id"]; len(v) == 1 && len(st.trusted) > 0 && validRequestID(v[0]) && st.isTrusted(ci.remoteIP) {
		return v[0]
	}
	return s.ids.next()
}

// validRequestID accepts 1 to maxRequestID visible ASCII characters other
// than '"', '\' and ',' (which would read as a list of IDs).
func validRequestID(v string) bool {
	if v == "" || len(v) > maxRequestID {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c > '~' || c == '"' || c == '\\' || c == ',' {
			return false
		}
	}
	return true
}

// reqLogf logs a line about one request, led by its ID when it has one, so
// the line can be found in the access log and the app's logs.
func (s *Server) reqLogf(rs *reqState, format string, args ...any) {
	if rs.reqID == "" {
		s.logf(format, args...)
		return
	}
	s.elog.Printf("request %s: "+format, append([]any{rs.reqID}, args...)...)
}

// log503 says why a request got 503. Under overload there may be
// thousands a second, and each is in the access log with its ID: at most
// one line a second is written, counting those left out.
func (s *Server) log503(rs *reqState, why string) {
	now := time.Now().UnixNano()
	last := s.last503.Load()
	if now-last < int64(time.Second) || !s.last503.CompareAndSwap(last, now) {
		s.more503.Add(1)
		return
	}
	if n := s.more503.Swap(0); n > 0 {
		s.reqLogf(rs, "503: %s (and %d more 503s since the last such line, not logged here: each is in the access log)", why, n)
		return
	}
	s.reqLogf(rs, "503: %s", why)
}
