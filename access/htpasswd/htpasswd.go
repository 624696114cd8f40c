// Package htpasswd reads the user files of HTTP basic authentication, as
// Debian's htpasswd (apache2-utils) writes them and nginx's
// auth_basic_user_file and Apache read them, and checks passwords against
// them.
//
// A line is user:hash, or user:hash:comment (the comment is ignored, as by
// nginx and Apache); a line starting with # is a comment; blank lines and
// CRLF line ends are fine. The hashes accepted are bcrypt ($2y$, $2a$,
// $2b$: htpasswd -B), Apache's MD5-crypt ($apr1$: htpasswd -m, its default;
// and glibc's $1$, the same algorithm) and unsalted SHA-1 ({SHA}: htpasswd
// -s). Everything else is refused when the file is read, naming the file,
// the line and the fix, rather than a user being unable to log in later:
// plain text (htpasswd -p) and crypt(3) DES (htpasswd -d, which keeps only
// 8 characters of a password), and schemes berth does not implement
// (SHA-crypt $5$/$6$ from htpasswd -2/-5, {SSHA}, yescrypt, argon2).
package htpasswd

import (
	"bytes"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// maxErrors is how many bad lines one error lists; the rest are counted.
const maxErrors = 20

// maxBcryptCost is htpasswd's: a higher cost (18 is about 30 s a check on
// a 2020s CPU) would hold a request, and a CPU, for that long per attempt.
const maxBcryptCost = 17

type scheme uint8

const (
	schemeSHA scheme = iota + 1
	schemeMD5
	schemeBcrypt
)

type entry struct {
	scheme scheme
	hash   string // as written: bcrypt and MD5-crypt compare the whole string
	magic  string // MD5-crypt: "$apr1$" or "$1$"
	salt   string // MD5-crypt
	sum    []byte // {SHA}: the decoded digest
	cost   int    // bcrypt
}

// File is a parsed htpasswd file. It is read-only once made, so safe for
// concurrent use; to follow edits of the file, Load it again.
type File struct {
	users map[string]*entry
	// dummy is what a user not in the file is checked against: the entry
	// that costs most to check, so that an unknown user takes as long as
	// the slowest known one and the time of an answer does not tell which
	// users exist.
	dummy *entry
}

// Load reads and parses the file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("htpasswd file: %w", err)
	}
	return Parse(path, data)
}

// Parse parses the contents of an htpasswd file; name is its path, for the
// errors. The error lists every bad line (up to 20), one a line, each
// "name:N: user "bob": what is wrong: the fix".
func Parse(name string, data []byte) (*File, error) {
	f := &File{users: map[string]*entry{}}
	firstLine := map[string]int{}
	var errs []error
	bad := 0
	fail := func(n int, format string, args ...any) {
		bad++
		if len(errs) < maxErrors {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, n, fmt.Sprintf(format, args...)))
		}
	}
	for n, line := range bytes.Split(data, []byte("\n")) {
		n++
		line = bytes.TrimSuffix(line, []byte("\r"))
		if n == 1 && bytes.HasPrefix(line, []byte("\xef\xbb\xbf")) {
			fail(n, "the file starts with a byte-order mark, which would be part of the first user's name: save it without one (as htpasswd writes it)")
			continue
		}
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		user, rest, ok := strings.Cut(string(line), ":")
		hash, _, _ := strings.Cut(rest, ":") // a third field is a comment
		switch {
		case !ok:
			fail(n, "no ':' in the line: each line is user:hash (add one with htpasswd -B %s USER)", name)
			continue
		case user == "":
			fail(n, "no user name before the ':'")
			continue
		case strings.IndexFunc(user, isControl) >= 0:
			fail(n, "user %q: a control character in the name", user)
			continue
		}
		e, err := parseHash(hash)
		if err != nil {
			fail(n, "user %q: %v", user, err)
			continue
		}
		if first, dup := firstLine[user]; dup {
			fail(n, "user %q again (first on line %d): nginx and Apache would only ever use the first; remove one", user, first)
			continue
		}
		firstLine[user] = n
		f.users[user] = e
		if f.dummy == nil || costlier(e, f.dummy) {
			f.dummy = e
		}
	}
	if bad > len(errs) {
		errs = append(errs, fmt.Errorf("%s: %d more bad lines", name, bad-len(errs)))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(f.users) == 0 {
		return nil, fmt.Errorf("%s: no users: add one with htpasswd -B %s USER", name, name)
	}
	return f, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// costlier says whether checking a takes longer than checking b.
func costlier(a, b *entry) bool {
	if a.scheme != b.scheme {
		return a.scheme > b.scheme
	}
	return a.cost > b.cost
}

// reHint is added to the errors of hashes berth cannot check.
const reHint = "re-create it with htpasswd -B FILE USER (bcrypt)"

func parseHash(h string) (*entry, error) {
	switch {
	case h == "":
		return nil, errors.New("no password hash after the ':': " + reHint)
	case strings.HasPrefix(h, "$2y$"), strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"):
		return parseBcrypt(h)
	case strings.HasPrefix(h, "$apr1$"):
		return parseMD5(h, "$apr1$")
	case strings.HasPrefix(h, "$1$"):
		return parseMD5(h, "$1$")
	case strings.HasPrefix(h, "{SHA}"):
		sum, err := base64.StdEncoding.Strict().DecodeString(h[len("{SHA}"):])
		if err != nil || len(sum) != sha1.Size {
			return nil, fmt.Errorf("a {SHA} hash is 28 characters of base64 after {SHA}; this one is not%s: %s", spaceHint(h), reHint)
		}
		return &entry{scheme: schemeSHA, sum: sum}, nil
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return nil, fmt.Errorf("a SHA-crypt hash (%s, htpasswd -2 or -5), which berth does not check: %s", h[:3], reHint)
	case strings.HasPrefix(h, "{SSHA}"):
		return nil, errors.New("a salted SHA-1 hash ({SSHA}), which berth does not check: " + reHint)
	case strings.HasPrefix(h, "$y$"), strings.HasPrefix(h, "$gy$"), strings.HasPrefix(h, "$7$"):
		return nil, errors.New("a yescrypt or scrypt hash (as in /etc/shadow), which berth does not check: " + reHint)
	case strings.HasPrefix(h, "$argon2"):
		return nil, errors.New("an argon2 hash, which berth does not check: " + reHint)
	case strings.HasPrefix(h, "$2x$"):
		return nil, errors.New("a $2x$ bcrypt hash, the variant of a buggy crypt_blowfish that no other bcrypt reproduces: " + reHint)
	case strings.HasPrefix(h, "{PLAIN}"):
		return nil, errors.New("a plain-text password ({PLAIN}): anyone who reads the file has it; " + reHint)
	case len(h) == 13 && strings.Trim(h, itoa64) == "":
		return nil, errors.New("a crypt(3) DES hash (htpasswd -d), which uses only the first 8 characters of a password and falls to a search in hours: " + reHint)
	default:
		return nil, errors.New("not a password hash berth knows (bcrypt $2y$, MD5 $apr1$, {SHA}): plain text (htpasswd -p)? Anyone who reads the file has it; " + reHint)
	}
}

func parseBcrypt(h string) (*entry, error) {
	// $2y$NN$ then 22 characters of salt and 31 of hash.
	cost, err := strconv.Atoi(h[4:min(6, len(h))])
	if len(h) != 60 || h[6] != '$' || err != nil || strings.Trim(h[7:], itoa64) != "" {
		return nil, fmt.Errorf("a bcrypt hash is 60 characters, %s then 2 digits of cost, '$' and 53 of [./0-9A-Za-z]; this one is not%s: %s", h[:4], spaceHint(h), reHint)
	}
	if cost < bcrypt.MinCost || cost > maxBcryptCost {
		return nil, fmt.Errorf("bcrypt cost %d: out of htpasswd's range, 4 to %d (each step doubles the time a check takes): re-create it with htpasswd -B -C 10 FILE USER", cost, maxBcryptCost)
	}
	return &entry{scheme: schemeBcrypt, hash: h, cost: cost}, nil
}

func parseMD5(h, magic string) (*entry, error) {
	salt, sum, ok := strings.Cut(h[len(magic):], "$")
	if !ok || len(salt) > 8 || strings.Trim(salt, itoa64) != "" || len(sum) != 22 || strings.Trim(sum, itoa64) != "" {
		return nil, fmt.Errorf("an MD5-crypt hash is %s, up to 8 characters of salt, '$' and 22 of [./0-9A-Za-z]; this one is not%s: %s", magic, spaceHint(h), reHint)
	}
	return &entry{scheme: schemeMD5, hash: h, magic: magic, salt: salt}, nil
}

// spaceHint points at the usual cause of a malformed hash in a hand-edited
// file.
func spaceHint(h string) string {
	if strings.TrimSpace(h) != h {
		return " (it starts or ends with a space)"
	}
	return ""
}

// Check says whether password is user's. A user not in the file is checked
// against the file's costliest hash all the same, and refused, so that the
// answer takes as long either way; in a file that mixes schemes, a user
// with a cheaper hash than that answers sooner, so keep one (htpasswd -B for
// all). The comparisons of digests are constant-time.
func (f *File) Check(user, password string) bool {
	e, known := f.users[user]
	if !known {
		verify(f.dummy, password)
		return false
	}
	return verify(e, password)
}

// Len is the number of users.
func (f *File) Len() int { return len(f.users) }

// verifyHook, when set (by tests), sees every entry checked.
var verifyHook func(*entry)

func verify(e *entry, password string) bool {
	if verifyHook != nil {
		verifyHook(e)
	}
	switch e.scheme {
	case schemeBcrypt:
		return bcrypt.CompareHashAndPassword([]byte(e.hash), []byte(password)) == nil
	case schemeMD5:
		return subtle.ConstantTimeCompare([]byte(md5Crypt(password, e.magic, e.salt)), []byte(e.hash)) == 1
	case schemeSHA:
		sum := sha1.Sum([]byte(password))
		return subtle.ConstantTimeCompare(sum[:], e.sum) == 1
	}
	return false
}
