package htpasswd

import (
	"errors"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/access/internal/testtool"
)

// Hashes written by Debian's htpasswd 2.4 (apache2-utils) and by openssl
// passwd, kept here so the schemes are checked where neither is installed.
var vectors = []struct{ hash, password string }{
	{"$2y$05$3GFmKdC0dZEZXeosX58ZbuFMboURujLrPxMzDwZblJG.vnXkHqKGe", "correct horse"}, // htpasswd -B
	{"$2y$04$ggy08ZSru47XLYZqFh/4LeNDxtHIJiU7G60G3qB/dnMflTVEata/a", ""},              // htpasswd -B -C 4
	{"$2y$04$VoTUVCs58bEAP2Z06nZzjOtViJ/J2coRX7TXLA5rFVa78FxlTvcJi", "bcrypt b2"},
	{"$apr1$qGe.S.pf$ukbL2De3GTJauqLpwuYXL0", "s3cret"}, // htpasswd -m
	{"$apr1$SPALqLr2$1EVYfuP0GM9.MLowrSgzW1", ""},
	{"$apr1$gp/ly6DI$cxEyse0RjHldxgUwXWf9q.", "x"},
	{"$apr1$BhvYAUfN$NsAmLZ4Ogj3tv7LOpUGsi1", "correct horse battery staple, forty+ chars long!"},
	{"$apr1$hcLrHhdC$7cbjCVVUaKrcWCbXz9bi11", "pässwörd"},
	{"$apr1$DEtvtrEv$mbKFAXMdeMC73ycSCKm51.", "exactly16chars!!"},
	{"$apr1$AnOseCPf$iWsGn5ehSSYALrnEdhiyq.", "exactly32charsexactly32charsXYZ!"},
	{"$apr1$r6uNJzbm$46Ru12F1iT7IOBkfin98O.", "hello"},
	{"$apr1$abcdefgh$cy3DSYyOwfhsyu7QOMQzd.", "hello"}, // openssl passwd -apr1
	{"$apr1$ab$0HUwYcJ3DAPbHupdaC/tP1", "hello"},
	{"$1$abcdefgh$rwnEbRiN0agqVgZBovWNQ/", "hello"}, // openssl passwd -1
	{"$1$$/PWPe740uvaQxKzRH.Zxj1", "hello"},
	{"{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6Pc=", "pässwörd"}, // htpasswd -s
	{"{SHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g=", "a"},
	{"{SHA}Kq5sNclPz7QV2+lfQIuc6R7oRu0=", "hello world"},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		f, err := Parse("f", []byte("u:"+v.hash+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", v.hash, err)
		}
		if !f.Check("u", v.password) {
			t.Errorf("%s: %q refused", v.hash, v.password)
		}
		for _, wrong := range []string{v.password + "x", strings.ToUpper(v.password) + "!", ""} {
			if wrong != v.password && f.Check("u", wrong) {
				t.Errorf("%s: %q accepted", v.hash, wrong)
			}
		}
		if f.Check("v", v.password) {
			t.Errorf("%s: an unknown user accepted", v.hash)
		}
	}
}

func TestMD5CryptReproducesHtpasswd(t *testing.T) {
	for _, v := range vectors {
		for _, magic := range []string{"$apr1$", "$1$"} {
			if rest, ok := strings.CutPrefix(v.hash, magic); ok {
				salt, _, _ := strings.Cut(rest, "$")
				if got := md5Crypt(v.password, magic, salt); got != v.hash {
					t.Errorf("md5Crypt(%q, %s, %s) = %s, want %s", v.password, magic, salt, got, v.hash)
				}
			}
		}
	}
}

// htpasswdFile runs the real htpasswd to add each user to a new file.
func htpasswdFile(t *testing.T, users ...[3]string) string {
	t.Helper()
	testtool.Require(t, "htpasswd")
	path := filepath.Join(t.TempDir(), "htpasswd")
	for i, u := range users { // {flag, user, password}
		args := []string{"-b", u[0]}
		if i == 0 {
			args = append(args, "-c")
		}
		args = append(args, path, u[1], u[2])
		if out, err := exec.Command("htpasswd", args...).CombinedOutput(); err != nil {
			t.Fatalf("htpasswd %v: %v\n%s", args, err, out)
		}
	}
	return path
}

func TestFileFromRealHtpasswd(t *testing.T) {
	long := strings.Repeat("0123456789", 8) // 80 bytes: bcrypt uses 72
	path := htpasswdFile(t,
		[3]string{"-B", "alice", "correct horse"},
		[3]string{"-B", "long", long},
		[3]string{"-m", "bob", "s3cret pässwörd"},
		[3]string{"-m", "empty", ""},
		[3]string{"-s", "carol", "tr0ub4dor&3"},
		[3]string{"-B", "ann@example.com", "x"},
	)
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 6 {
		t.Fatalf("%d users, want 6", f.Len())
	}
	for _, c := range []struct {
		user, password string
		ok             bool
	}{
		{"alice", "correct horse", true},
		{"alice", "correct horse ", false},
		{"alice", "Correct horse", false},
		{"long", long, true},
		{"long", long[:72], true}, // as Apache and nginx: crypt_blowfish reads 72 bytes
		{"long", long[:71], false},
		{"bob", "s3cret pässwörd", true},
		{"bob", "s3cret passwort", false},
		{"empty", "", true},
		{"empty", " ", false},
		{"carol", "tr0ub4dor&3", true},
		{"carol", "tr0ub4dor&4", false},
		{"ann@example.com", "x", true},
		{"nobody", "correct horse", false},
		{"", "", false},
		{"Alice", "correct horse", false},
	} {
		if got := f.Check(c.user, c.password); got != c.ok {
			t.Errorf("Check(%q, %q) = %v, want %v", c.user, c.password, got, c.ok)
		}
	}
}

// TestRealHtpasswdSchemesRefused: what htpasswd writes with -p, -d, -2 and
// -5 is refused at load, each line named with its fix.
func TestRealHtpasswdSchemesRefused(t *testing.T) {
	path := htpasswdFile(t,
		[3]string{"-B", "ok", "x"},
		[3]string{"-p", "plain", "secret"},
		[3]string{"-d", "des", "password"},
		[3]string{"-2", "sha256", "x"},
		[3]string{"-5", "sha512", "x"},
	)
	_, err := Load(path)
	want := path + `:2: user "plain": not a password hash berth knows (bcrypt $2y$, MD5 $apr1$, {SHA}): plain text (htpasswd -p)? Anyone who reads the file has it; re-create it with htpasswd -B FILE USER (bcrypt)
` + path + `:3: user "des": a crypt(3) DES hash (htpasswd -d), which uses only the first 8 characters of a password and falls to a search in hours: re-create it with htpasswd -B FILE USER (bcrypt)
` + path + `:4: user "sha256": a SHA-crypt hash ($5$, htpasswd -2 or -5), which berth does not check: re-create it with htpasswd -B FILE USER (bcrypt)
` + path + `:5: user "sha512": a SHA-crypt hash ($6$, htpasswd -2 or -5), which berth does not check: re-create it with htpasswd -B FILE USER (bcrypt)`
	if err == nil || err.Error() != want {
		t.Fatalf("error:\n%v\nwant:\n%s", err, want)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatal("the error shows the plain-text password")
	}
}

func TestMalformed(t *testing.T) {
	const bc = "$2y$05$3GFmKdC0dZEZXeosX58ZbuFMboURujLrPxMzDwZblJG.vnXkHqKGe"
	for _, c := range []struct{ name, file, err string }{
		{"empty", "", "f: no users: add one with htpasswd -B f USER"},
		{"comments only", "# staff\n\n   \n", "f: no users: add one with htpasswd -B f USER"},
		{"no colon", "alice\n", "f:1: no ':' in the line: each line is user:hash (add one with htpasswd -B f USER)"},
		{"no user", ":" + bc, "f:1: no user name before the ':'"},
		{"no hash", "alice:", `f:1: user "alice": no password hash after the ':': re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"control in name", "al\tice:" + bc, `f:1: user "al\tice": a control character in the name`},
		{"bom", "\xef\xbb\xbfalice:" + bc, "f:1: the file starts with a byte-order mark, which would be part of the first user's name: save it without one (as htpasswd writes it)"},
		{"duplicate", "alice:" + bc + "\n#\nalice:{SHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g=\n", `f:3: user "alice" again (first on line 1): nginx and Apache would only ever use the first; remove one`},
		{"bcrypt short", "a:" + bc[:59], `f:1: user "a": a bcrypt hash is 60 characters, $2y$ then 2 digits of cost, '$' and 53 of [./0-9A-Za-z]; this one is not: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"bcrypt trailing space", "a:" + bc + " ", `f:1: user "a": a bcrypt hash is 60 characters, $2y$ then 2 digits of cost, '$' and 53 of [./0-9A-Za-z]; this one is not (it starts or ends with a space): re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"bcrypt bad char", "a:" + bc[:59] + "!", `f:1: user "a": a bcrypt hash is 60 characters, $2y$ then 2 digits of cost, '$' and 53 of [./0-9A-Za-z]; this one is not: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"bcrypt cost 3", "a:$2y$03" + bc[6:], `f:1: user "a": bcrypt cost 3: out of htpasswd's range, 4 to 17 (each step doubles the time a check takes): re-create it with htpasswd -B -C 10 FILE USER`},
		{"bcrypt cost 31", "a:$2b$31" + bc[6:], `f:1: user "a": bcrypt cost 31: out of htpasswd's range, 4 to 17 (each step doubles the time a check takes): re-create it with htpasswd -B -C 10 FILE USER`},
		{"bcrypt 2x", "a:$2x$05" + bc[6:], `f:1: user "a": a $2x$ bcrypt hash, the variant of a buggy crypt_blowfish that no other bcrypt reproduces: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"apr1 no sum", "a:$apr1$qGe.S.pf", `f:1: user "a": an MD5-crypt hash is $apr1$, up to 8 characters of salt, '$' and 22 of [./0-9A-Za-z]; this one is not: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"apr1 long salt", "a:$apr1$qGe.S.pfX$ukbL2De3GTJauqLpwuYXL0", `f:1: user "a": an MD5-crypt hash is $apr1$, up to 8 characters of salt, '$' and 22 of [./0-9A-Za-z]; this one is not: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"sha short", "a:{SHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g", `f:1: user "a": a {SHA} hash is 28 characters of base64 after {SHA}; this one is not: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"ssha", "a:{SSHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g=", `f:1: user "a": a salted SHA-1 hash ({SSHA}), which berth does not check: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"plain marked", "a:{PLAIN}hunter2", `f:1: user "a": a plain-text password ({PLAIN}): anyone who reads the file has it; re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"yescrypt", "a:$y$j9T$abc$def", `f:1: user "a": a yescrypt or scrypt hash (as in /etc/shadow), which berth does not check: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"argon2", "a:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", `f:1: user "a": an argon2 hash, which berth does not check: re-create it with htpasswd -B FILE USER (bcrypt)`},
		{"several, counted", strings.Repeat("x\n", 23), strings.TrimSuffix(strings.Repeat("f:N: no ':' in the line: each line is user:hash (add one with htpasswd -B f USER)\n", 20), "\n") + "\nf: 3 more bad lines"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("f", []byte(c.file))
			want := c.err
			if strings.Contains(want, "f:N:") {
				var lines []string
				for i, l := range strings.Split(want, "\n") {
					lines = append(lines, strings.Replace(l, "f:N:", "f:"+strconv.Itoa(i+1)+":", 1))
				}
				want = strings.Join(lines, "\n")
			}
			if err == nil || err.Error() != want {
				t.Fatalf("error:\n%v\nwant:\n%s", err, want)
			}
		})
	}
}

func TestAcceptedForms(t *testing.T) {
	f, err := Parse("f", []byte("# staff\r\nalice:{SHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g=:Alice Liddell\r\n\r\n  \nbob:$apr1$gp/ly6DI$cxEyse0RjHldxgUwXWf9q.\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Check("alice", "a") || !f.Check("bob", "x") || f.Len() != 2 {
		t.Fatal("CRLF, a comment field or blank lines got in the way")
	}
}

func TestLoadMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "htpasswd file: open "+path+": ") {
		t.Fatalf("error %v: want a wrapped not-exist naming %s", err, path)
	}
}

// TestUnknownUserChecksTheCostliest: an unknown user costs a check against
// the most expensive hash of the file, whichever line it is on.
func TestUnknownUserChecksTheCostliest(t *testing.T) {
	f, err := Parse("f", []byte("a:{SHA}hvfkN/qlp/zhXR3cuerq6jd2Z7g=\n"+
		"b:$2y$05$3GFmKdC0dZEZXeosX58ZbuFMboURujLrPxMzDwZblJG.vnXkHqKGe\n"+
		"c:$apr1$gp/ly6DI$cxEyse0RjHldxgUwXWf9q.\n"))
	if err != nil {
		t.Fatal(err)
	}
	var seen []*entry
	verifyHook = func(e *entry) { seen = append(seen, e) }
	defer func() { verifyHook = nil }()
	if f.Check("zed", "correct horse") {
		t.Fatal("an unknown user with b's password accepted")
	}
	if len(seen) != 1 || seen[0] != f.users["b"] {
		t.Fatalf("an unknown user was checked against %v, want b's bcrypt entry", seen)
	}
}

// TestUnknownUserTakesAsLong times both, each its fastest of five (the
// least disturbed by a busy machine).
func TestUnknownUserTakesAsLong(t *testing.T) {
	if testing.Short() {
		t.Skip("times bcrypt")
	}
	f, err := Parse("f", []byte("alice:$2y$08$zFPGKh/XidvFI0jITEEcqevVbB0287UWHQPIO2fBrEo8Ibr1CJ7Hm\n"))
	if err != nil {
		t.Fatal(err)
	}
	fastest := func(user string) time.Duration {
		best := time.Hour
		for range 5 {
			start := time.Now()
			f.Check(user, "wrong")
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown := fastest("alice"), fastest("mallory")
	t.Logf("known user %v, unknown %v", known, unknown)
	if unknown < known/2 {
		t.Fatalf("an unknown user answers in %v, a known one in %v: the time tells them apart", unknown, known)
	}
}
