package proxy

import (
	"net/http"
	"strings"
)

// normalizePath resolves "." and ".." segments and merges repeated slashes
// in a decoded URL path, as nginx does for $uri (merge_slashes on). A
// trailing slash is kept. ok is false when ".." climbs above the root, the
// path holds a NUL, or it is not absolute ("*" of OPTIONS * is passed as is).
func normalizePath(p string) (string, bool) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", false // %00: nginx refuses it too, and no var may hold a NUL (modCompact)
	}
	if p == "" {
		return "/", true
	}
	if p[0] != '/' {
		return p, p == "*"
	}
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p, true // the common case: nothing to do, nothing allocated
	}
	out := make([]byte, 0, len(p))
	trailing := false
	for rest := p[1:]; ; {
		seg := rest
		i := strings.IndexByte(rest, '/')
		if i >= 0 {
			seg, rest = rest[:i], rest[i+1:]
		}
		last := i < 0
		switch seg {
		case "":
			trailing = last
		case ".":
			trailing = true
		case "..":
			j := strings.LastIndexByte(string(out), '/')
			if j < 0 {
				return "", false
			}
			out = out[:j]
			trailing = true
		default:
			out = append(out, '/')
			out = append(out, seg...)
			trailing = false
		}
		if last {
			break
		}
	}
	if trailing || len(out) == 0 {
		out = append(out, '/')
	}
	return string(out), true
}

// hasDotDot says whether a decoded path has a ".." segment.
func hasDotDot(p string) bool {
	return strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") || p == ".." || strings.HasPrefix(p, "../")
}

// hasEncodedSlash says whether the raw path had %2F, which decoding turned
// into a separator the client did not write.
func hasEncodedSlash(r *http.Request) bool {
	raw := r.URL.RawPath
	return raw != "" && (strings.Contains(raw, "%2f") || strings.Contains(raw, "%2F"))
}
