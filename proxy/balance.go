package proxy

// balance.go: how a group picks a server for a request, nginx's methods:
// smooth weighted round robin, least connections (per weight), and
// consistent hashing of a key built from request variables.

import (
	"hash/crc32"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Methods of a group.
const (
	methodRoundRobin uint8 = iota
	methodLeastConn
	methodHash
)

// ringPerWeight is the points each unit of weight puts on the hash ring
// (ketama's 160): enough for shares within a few percent, few enough that
// a ring of dozens of servers is rebuilt in microseconds.
const ringPerWeight = 160

// ringPoint is one point of the consistent hash ring.
type ringPoint struct {
	h uint32
	p *peer
}

// buildRing places each peer's points, keyed by its configured address and
// the address it resolved to, so adding or removing one server moves only
// the keys that were (or will be) its own.
func buildRing(peers []*peer) []ringPoint {
	var ring []ringPoint
	var buf []byte
	for _, p := range peers {
		if p.srv.cfg.Down {
			continue
		}
		n := p.weight * ringPerWeight
		for i := 0; i < n; i++ {
			buf = append(buf[:0], p.srv.cfg.Address...)
			buf = append(buf, '#')
			buf = append(buf, p.addr...)
			buf = append(buf, '-')
			buf = strconv.AppendInt(buf, int64(i), 10)
			ring = append(ring, ringPoint{h: crc32.ChecksumIEEE(buf), p: p})
		}
	}
	slices.SortFunc(ring, func(a, b ringPoint) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return strings.Compare(a.p.addr, b.p.addr)
	})
	return ring
}

// pickLocked chooses a server for one try: primary servers that can take
// a request, else backup ones. tried are the servers this request already
// failed on. It returns nil and whether some server was skipped only for
// its connection cap (503 rather than 502).
func (g *group) pickLocked(keyHash uint32, tried []*peer, now int64) (best *peer, capped bool) {
	single := len(g.peers) == 1
	ok := func(p *peer, backup bool) bool {
		if p.srv.cfg.Backup != backup || !p.usable(now, single) || slices.Contains(tried, p) {
			return false
		}
		if p.srv.cfg.MaxConns > 0 && p.inflight >= p.srv.cfg.MaxConns {
			capped = true
			return false
		}
		return true
	}
	for _, backup := range []bool{false, true} {
		switch g.method {
		case methodHash:
			if backup {
				return nil, capped // nginx: no backup servers with hash
			}
			best = g.pickHashLocked(keyHash, func(p *peer) bool { return ok(p, false) })
		case methodLeastConn:
			best = g.pickLeastConnLocked(func(p *peer) bool { return ok(p, backup) })
		default:
			best = g.pickRoundRobinLocked(func(p *peer) bool { return ok(p, backup) })
		}
		if best != nil {
			return best, false
		}
	}
	return nil, capped
}

// pickRoundRobinLocked is nginx's smooth weighted round robin: every
// candidate gains its weight, the one with the most is chosen and loses
// the total. Weights 5,1,1 give a a a b a c a, not a a a a a b c.
func (g *group) pickRoundRobinLocked(ok func(*peer) bool) *peer {
	var best *peer
	total := 0
	for _, p := range g.peers {
		if !ok(p) {
			continue
		}
		p.current += p.weight
		total += p.weight
		if best == nil || p.current > best.current {
			best = p
		}
	}
	if best != nil {
		best.current -= total
	}
	return best
}

// pickLeastConnLocked picks the candidate with the fewest requests in
// flight per weight; ties go round robin among the tied, as in nginx.
func (g *group) pickLeastConnLocked(ok func(*peer) bool) *peer {
	var best *peer
	ties := 0
	for _, p := range g.peers {
		if !ok(p) {
			continue
		}
		switch {
		case best == nil || p.inflight*best.weight < best.inflight*p.weight:
			best, ties = p, 1
		case p.inflight*best.weight == best.inflight*p.weight:
			ties++
		}
	}
	if ties <= 1 {
		return best
	}
	bi := best
	return g.pickRoundRobinLocked(func(p *peer) bool {
		return ok(p) && p.inflight*bi.weight == bi.inflight*p.weight
	})
}

// pickHashLocked walks the ring from the key's point to the first server
// that can take the request: a key keeps its server while that server is
// up, and moves only to the next one on the ring while it is not.
func (g *group) pickHashLocked(h uint32, ok func(*peer) bool) *peer {
	n := len(g.ring)
	if n == 0 {
		return nil
	}
	i, _ := slices.BinarySearchFunc(g.ring, h, func(rp ringPoint, h uint32) int {
		switch {
		case rp.h < h:
			return -1
		case rp.h > h:
			return 1
		}
		return 0
	})
	var last *peer
	for k := 0; k < n; k++ {
		p := g.ring[(i+k)%n].p
		if p == last {
			continue
		}
		last = p
		if ok(p) {
			return p
		}
	}
	return nil
}

// hashKey is a compiled hash key: literal text and request variables.
type hashKey []keyPart

type keyPart struct {
	lit  string
	kind uint8 // 0: lit only
	name string
}

const (
	keyLit uint8 = iota
	keyRemoteAddr
	keyRequestURI
	keyURI
	keyArgs
	keyHost
	keyScheme
	keyMethod
	keyHeader
	keyCookie
	keyArg
)

// compileKey parses a key such as "$remote_addr" or "$host$request_uri".
func compileKey(s string) (hashKey, bool) {
	var k hashKey
	for s != "" {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			k = append(k, keyPart{lit: s})
			break
		}
		if i > 0 {
			k = append(k, keyPart{lit: s[:i]})
		}
		s = s[i+1:]
		var name string
		if strings.HasPrefix(s, "{") {
			j := strings.IndexByte(s, '}')
			if j < 0 {
				return nil, false
			}
			name, s = s[1:j], s[j+1:]
		} else {
			j := 0
			for j < len(s) && (s[j] >= 'a' && s[j] <= 'z' || s[j] >= '0' && s[j] <= '9' || s[j] == '_') {
				j++
			}
			name, s = s[:j], s[j:]
		}
		var part keyPart
		switch {
		case name == "remote_addr" || name == "binary_remote_addr":
			part.kind = keyRemoteAddr
		case name == "request_uri":
			part.kind = keyRequestURI
		case name == "uri":
			part.kind = keyURI
		case name == "args":
			part.kind = keyArgs
		case name == "host":
			part.kind = keyHost
		case name == "scheme":
			part.kind = keyScheme
		case name == "request_method":
			part.kind = keyMethod
		case strings.HasPrefix(name, "http_") && len(name) > 5:
			part.kind, part.name = keyHeader, http.CanonicalHeaderKey(strings.ReplaceAll(name[5:], "_", "-"))
		case strings.HasPrefix(name, "cookie_") && len(name) > 7:
			part.kind, part.name = keyCookie, name[7:]
		case strings.HasPrefix(name, "arg_") && len(name) > 4:
			part.kind, part.name = keyArg, name[4:]
		default:
			return nil, false
		}
		k = append(k, part)
	}
	return k, true
}

// sum hashes the key's value for r without building it: FNV-1a over each
// part in turn, then mixed, so nearby keys land far apart on the ring.
func (k hashKey) sum(r *http.Request, in *reqInfo) uint32 {
	h := uint32(2166136261)
	add := func(s string) {
		for i := 0; i < len(s); i++ {
			h ^= uint32(s[i])
			h *= 16777619
		}
	}
	for _, p := range k {
		switch p.kind {
		case keyLit:
			add(p.lit)
		case keyRemoteAddr:
			add(in.RemoteAddr)
		case keyRequestURI:
			add(r.RequestURI)
		case keyURI:
			add(in.PathInfo)
		case keyArgs:
			add(r.URL.RawQuery)
		case keyHost:
			add(hostOnly(r.Host))
		case keyScheme:
			add(in.Scheme)
		case keyMethod:
			add(r.Method)
		case keyHeader:
			add(headerValue(r.Header, p.name))
		case keyCookie:
			if c, err := r.Cookie(p.name); err == nil {
				add(c.Value)
			}
		case keyArg:
			add(queryArg(r.URL.RawQuery, p.name))
		}
	}
	// murmur3's finalizer
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// value builds the key's text for r (a rate limit's key).
func (k hashKey) value(r *http.Request, in *reqInfo) string {
	if len(k) == 1 {
		if v, ok := k.part(&k[0], r, in); ok {
			return v
		}
	}
	var b strings.Builder
	for i := range k {
		v, _ := k.part(&k[i], r, in)
		b.WriteString(v)
	}
	return b.String()
}

// part is one part's text; ok false for a literal-free part with no value.
func (k hashKey) part(p *keyPart, r *http.Request, in *reqInfo) (string, bool) {
	switch p.kind {
	case keyLit:
		return p.lit, true
	case keyRemoteAddr:
		return in.RemoteAddr, true
	case keyRequestURI:
		return r.RequestURI, true
	case keyURI:
		return in.PathInfo, true
	case keyArgs:
		return r.URL.RawQuery, true
	case keyHost:
		return hostOnly(r.Host), true
	case keyScheme:
		return in.Scheme, true
	case keyMethod:
		return r.Method, true
	case keyHeader:
		return headerValue(r.Header, p.name), true
	case keyCookie:
		if c, err := r.Cookie(p.name); err == nil {
			return c.Value, true
		}
		return "", true
	case keyArg:
		return queryArg(r.URL.RawQuery, p.name), true
	}
	return "", false
}

// queryArg returns the raw value of the first name=value in q, as nginx's
// $arg_name (not percent-decoded).
func queryArg(q, name string) string {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == name {
			return v
		}
	}
	return ""
}
