package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiscover(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir     string
		want    string
		wantErr []string // substrings of the error; nil means no error
	}{
		{dir: "django", want: "mysite.wsgi:application"},
		{dir: "django_and_app_py", want: "shop.wsgi:application"},
		{dir: "flask_app_py", want: "app:app"},
		{dir: "wsgi_py_def", want: "wsgi:application"},
		{dir: "wsgi_py_multiline_import", want: "wsgi:app"},
		{dir: "wsgi_preferred_over_app_py", want: "wsgi:app"},
		{dir: "application_preferred", want: "app:application"},
		{dir: "chained_assignment", want: "app:application"},
		{dir: "django_wsgi_without_callable", want: "app:app"},
		{dir: "empty", want: ""},
		{dir: "hidden_only", want: ""},
		{dir: "does-not-exist", want: ""},
		{dir: "no_app", wantErr: []string{"no WSGI app found", "<package>/wsgi.py", "wsgi.py or app.py",
			"application or app", "found app.py, but it binds neither", "set app.module"}},
		{dir: "bad_package_name", wantErr: []string{"no WSGI app found", `"my-site" is not an importable package name`}},
		{dir: "several", wantErr: []string{"several WSGI apps", "blog.wsgi:application, shop.wsgi:application", "set app.module"}},
		{dir: file, wantErr: []string{"look for the WSGI app in", "not a directory"}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.dir), func(t *testing.T) {
			dir := tt.dir
			if !filepath.IsAbs(dir) {
				dir = filepath.Join("testdata", "discover", dir)
			}
			got, err := Discover(dir)
			if tt.wantErr == nil {
				if err != nil || got != tt.want {
					t.Fatalf("Discover(%s) = %q, %v; want %q, nil", dir, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Discover(%s) = %q, nil; want an error", dir, got)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestModuleNames(t *testing.T) {
	tests := []struct {
		src  string
		want []string
		not  []string
	}{
		{src: "app = Flask(__name__)\n", want: []string{"app"}},
		{src: "app: Flask = Flask(__name__)  # typed\n", want: []string{"app"}},
		{src: "a = b = application = make()\n", want: []string{"a", "b", "application"}},
		{src: "def application(environ, start_response):\n    app = 1\n", want: []string{"application"}, not: []string{"app"}},
		{src: "async def app(scope):\n    pass\n", want: []string{"app"}},
		{src: "class application:\n    pass\n", want: []string{"application"}},
		{src: "from x import app\n", want: []string{"app"}},
		{src: "from x import make as application, other\n", want: []string{"application", "other"}},
		{src: "from x import (\n    a,\n    b as app,  # c\n)\nz = 1\n", want: []string{"a", "app", "z"}},
		{src: "from x import (a, application)\n", want: []string{"a", "application"}},
		{src: "import app\nimport y as application\n", not: []string{"app", "application"}},
		{src: "'''\napp = 1\n'''\nb = 2\n", want: []string{"b"}, not: []string{"app"}},
		{src: "s = \"\"\"x\napp = 1\n\"\"\"\n", want: []string{"s"}, not: []string{"app"}},
		{src: "# app = 1\nx = '# app = 2'\n", want: []string{"x"}, not: []string{"app"}},
		{src: "app == 1\n", not: []string{"app"}},
		{src: "if True:\n    app = 1\n", not: []string{"app"}},
	}
	for i, tt := range tests {
		got := moduleNames([]byte(tt.src))
		for _, n := range tt.want {
			if !got[n] {
				t.Errorf("case %d %q: %q not found in %v", i, tt.src, n, got)
			}
		}
		for _, n := range tt.not {
			if got[n] {
				t.Errorf("case %d %q: %q found, want not", i, tt.src, n)
			}
		}
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 2; i++ { // a second write replaces the files in place
		path, err := WriteFiles(dir)
		if err != nil {
			t.Fatal(err)
		}
		if path != filepath.Join(dir, RuntimeFile) {
			t.Fatalf("runtime path %s", path)
		}
	}
	for name, want := range map[string][]byte{RuntimeFile: Runtime, ASGIFile: ASGIRuntime, DemoFile: DemoApp} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) || len(want) == 0 {
			t.Errorf("%s: content differs from the embedded file", name)
		}
		fi, _ := os.Stat(filepath.Join(dir, name))
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", name, fi.Mode().Perm())
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("dir holds %d entries, want 3 (temp files left behind?)", len(ents))
	}
	if _, err := WriteFiles(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("WriteFiles(missing dir) = %v, want an error", err)
	}
}
